//! Autolock (issue 10, check 4, second half): `wharf server --autolock` prints an unlock key
//! once; every later start serves nothing but `POST /v1/unlock` (on this host) until `wharf
//! unlock` gives the key; a wrong key is refused and audited; a start without --autolock on an
//! autolocked store is refused with what to do.

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;

/// Start `wharf server --autolock` (or without it) on `data`, its output appended to `log`.
fn start(data: &Path, port: u16, config: &Path, log: &Path, autolock: bool) -> Child {
    let agent = format!("127.0.0.1:{}", free_port());
    let mut cmd: Command = server_command(data, port, &agent, config, "debug");
    cmd.args(["--network-pool", "none"]);
    if autolock {
        cmd.arg("--autolock");
    }
    log_to(&mut cmd, log).spawn().expect("wharf server")
}

/// Wait until the file at `log` holds `what`; its text.
fn wait_log(log: &Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the server never said {what:?}; its log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_autolocked_master_waits_for_its_unlock_key_and_refuses_a_wrong_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, config) = (dir.path().join("data"), dir.path().join("config"));
    let port = free_port();
    let first_log = dir.path().join("first.log");
    let mut child = Some(start(&data, port, &config, &first_log, true));
    let text = wait_log(&first_log, "wharf server is up");
    let key = text
        .split_whitespace()
        .find(|w| w.starts_with("WUK1-"))
        .unwrap_or_else(|| panic!("no unlock key printed:\n{text}"))
        .to_string();
    // Unlocked at its first start: the API works.
    let (so, _) = expect_code(
        &cli_command(&config, &["node", "token", "create"])
            .output()
            .expect("cli"),
        0,
        "a join token",
    );
    assert!(so.trim().starts_with("WJT1-"), "{so}");
    assert!(
        !data.join("master.key").exists(),
        "an autolocked store keeps no key file"
    );
    kill(&mut child);

    // Without --autolock: refused, saying what to do.
    let plain_log = dir.path().join("plain.log");
    let mut plain = start(&data, port, &config, &plain_log, false);
    let status = plain.wait().expect("wait");
    let said = std::fs::read_to_string(&plain_log).unwrap_or_default();
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        said.contains("autolocked") && said.contains("wharf unlock"),
        "{said}"
    );

    // Locked: the API answers nothing but the unlock.
    let log = dir.path().join("locked.log");
    let mut child = Some(start(&data, port, &config, &log, true));
    wait_log(&log, "is locked");
    let out = cli_command(&config, &["stack", "ls"])
        .output()
        .expect("cli");
    let (_, se) = expect_code(&out, 1, "stack ls while locked");
    assert!(se.contains("locked") && se.contains("wharf unlock"), "{se}");

    let wrong = cli_with_stdin(&config, &["unlock", "--key-stdin"], "WUK1-not-the-key\n");
    let (_, se) = expect_code(&wrong, 1, "unlock with a wrong key");
    assert!(se.contains("wrong unlock key"), "{se}");
    let right = cli_with_stdin(&config, &["unlock", "--key-stdin"], &format!("{key}\n"));
    expect_code(&right, 0, "unlock with the key");
    wait_log(&log, "wharf server is up");

    let out = cli_command(&config, &["audit", "ls", "-o", "json"])
        .output()
        .expect("cli");
    let (so, _) = expect_code(&out, 0, "audit ls");
    let records: Vec<serde_json::Value> = serde_json::from_str(&so).expect("json");
    let unlocks: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["action"] == "keys.unlock")
        .map(|r| {
            (
                r["outcome"].as_str().unwrap_or(""),
                r["actor"].as_str().unwrap_or(""),
            )
        })
        .collect();
    // Made and unlocked by the first start, then a wrong key and the right one.
    let want = [
        ("ok", "wharf server"),
        ("denied", "unlock"),
        ("ok", "unlock"),
    ];
    assert_eq!(unlocks, want, "{so}");
    let out = cli_command(&config, &["audit", "verify"])
        .output()
        .expect("cli");
    expect_code(&out, 0, "audit verify");
    // A new unlock key: shown once; after a restart the old one is refused, the new one works.
    let out = cli_command(&config, &["key", "rotate"])
        .output()
        .expect("cli");
    let (so, _) = expect_code(&out, 0, "key rotate on an autolocked store");
    let new_key = so
        .split_whitespace()
        .find(|w| w.starts_with("WUK1-"))
        .unwrap_or_else(|| panic!("no new unlock key: {so}"))
        .to_string();
    assert_ne!(new_key, key);
    // The keys went through the server at debug level: they are in no line of its log.
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!said.contains(&key), "the unlock key in the server's log");
    assert!(
        !said.contains(&new_key),
        "the new unlock key in the server's log"
    );
    kill(&mut child);

    let log = dir.path().join("rotated.log");
    let mut child = Some(start(&data, port, &config, &log, true));
    wait_log(&log, "is locked");
    let old = cli_with_stdin(&config, &["unlock", "--key-stdin"], &format!("{key}\n"));
    let (_, se) = expect_code(&old, 1, "unlock with the old key");
    assert!(se.contains("wrong unlock key"), "{se}");
    let new = cli_with_stdin(&config, &["unlock", "--key-stdin"], &format!("{new_key}\n"));
    expect_code(&new, 0, "unlock with the new key");
    wait_log(&log, "wharf server is up");
    kill(&mut child);
}
