//! Keys at rest (issue 10, check 4): the store file never holds the cluster CA's private keys in
//! the clear; without the master key file a restart is refused with what to do, and nothing
//! starts; `wharf key rotate` replaces the key file and the store still opens.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::time::{Duration, Instant};

use cluster::Server;
use common::*;

/// Whether any store file in `data` holds `needle`.
fn store_holds(data: &std::path::Path, needle: &[u8]) -> bool {
    ["wharf.db", "wharf.db-wal"].iter().any(|f| {
        std::fs::read(data.join(f))
            .map(|bytes| bytes.windows(needle.len()).any(|x| x == needle))
            .unwrap_or(false)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn private_keys_are_sealed_and_a_missing_key_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = Server::start().await;
    let data = s.dir.path().join("data");
    // The cluster CA exists (a join token is signed for it); its keys are sealed.
    s.token(&[]);
    assert!(s.log().contains("cluster CA fingerprint"), "{}", s.log());
    // A rotation, then a restart: the store opens with the new key file.
    s.cli_code(&["key", "rotate"], 0);
    s.kill9();
    let key = data.join("master.key");
    let mode = std::fs::metadata(&key)
        .expect("master.key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        !store_holds(&data, b"PRIVATE KEY"),
        "a private key in the clear in the store file"
    );
    s.launch().await;
    s.token(&[]);
    s.kill9();

    std::fs::remove_file(&key).expect("remove master.key");
    let mut cmd = server_command(&data, s.api_port, &s.agent_addr(), &s.config_dir(), "info");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("wharf server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "wharf server did not refuse to start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let (_, se) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{se}");
    assert!(
        se.contains("master.key") && se.contains("is missing") && se.contains("restore"),
        "says what is missing and what to do: {se}"
    );
}
