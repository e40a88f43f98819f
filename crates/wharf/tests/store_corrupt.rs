//! A corrupt store is refused with a clear message (issue 8, "never lose, never duplicate"):
//! `wharf up` and `wharf server` on a `wharf.db` with a garbage page exit 1 with
//! `error: the store … is corrupt (…)` and a hint, never a panic; `--reset-store` moves the file
//! aside and starts with an empty store, and leaves a sound store alone.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use wharf_store::{SqliteStore, StoreError};

/// Run `cmd` to its end; a command still running after `timeout` is killed and fails the test.
async fn run_to_exit(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wharf");
    let started = std::time::Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "wharf did not exit within {timeout:?} on a corrupt store (it must refuse it)\n\
                 --- stderr ---\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Overwrite the store's second page (bytes 4096..8192) with garbage.
fn scribble_page_2(db: &Path) {
    let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    f.seek(SeekFrom::Start(4096)).unwrap();
    let garbage: Vec<u8> = (0..4096).map(|i| (i * 7 + 13) as u8 | 0x80).collect();
    f.write_all(&garbage).unwrap();
    f.sync_all().unwrap();
}

fn corrupt_files(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("wharf.db.corrupt-"))
        })
        .collect();
    v.sort();
    v
}

fn assert_refused(out: &Output, db: &Path, what: &str) {
    let (_, se) = expect_code(out, 1, &format!("{what} on a corrupt store"));
    assert!(!se.contains("panicked"), "{what} must not panic:\n{se}");
    let lines: Vec<&str> = se.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{what} prints an error line:\n{se}"));
    assert!(
        lines[at].starts_with(&format!("error: the store {} is corrupt (", db.display())),
        "{what}: the error names the corrupt store first:\n{se}"
    );
    let hint = lines.get(at + 1).copied().unwrap_or_default();
    assert!(
        hint.starts_with("  hint: ")
            && hint.contains("backup")
            && hint.contains("--reset-store")
            && hint.contains("wharf.db.corrupt-"),
        "{what}: a hint says to restore a backup or start fresh with --reset-store:\n{se}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_store_is_refused_and_reset_store_starts_fresh() {
    // A real store, written by a real `wharf up` (tokens, the node), then checkpointed into the
    // file and damaged.
    let mut w = Wharf::start().await;
    let old_client = w.client.clone();
    w.kill9();
    let data = w.data_dir();
    let db = data.join("wharf.db");
    drop(SqliteStore::open(&db).expect("the store is sound before the damage"));
    assert!(
        !data.join("wharf.db-wal").exists(),
        "closing checkpointed the WAL into the file"
    );
    scribble_page_2(&db);
    let damaged = std::fs::read(&db).unwrap();

    let out = run_to_exit(w.up_command(&[]), Duration::from_secs(30)).await;
    assert_refused(&out, &db, "wharf up");
    let mut server = Command::new(WHARF);
    server
        .args(["server", "--data-dir"])
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--agent-listen", &format!("127.0.0.1:{}", free_port())])
        .env("WHARF_CONFIG_DIR", w.config_dir())
        .stdin(Stdio::null());
    let out = run_to_exit(server, Duration::from_secs(30)).await;
    assert_refused(&out, &db, "wharf server");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        damaged,
        "a refused store is left untouched"
    );
    assert!(
        corrupt_files(&data).is_empty(),
        "nothing moved without the flag"
    );

    // --reset-store: the damaged file goes aside and Wharf starts with an empty store.
    w.launch(&["--reset-store"]).await;
    let log = w.log();
    let aside = corrupt_files(&data);
    let [aside] = aside.as_slice() else {
        panic!(
            "one wharf.db.corrupt-<secs> in {}: {aside:?}\n{log}",
            data.display()
        );
    };
    let secs = aside.to_str().unwrap().rsplit("corrupt-").next().unwrap();
    assert!(
        secs.parse::<u64>().is_ok_and(|s| s > 1_600_000_000),
        "named by unix seconds: {}",
        aside.display()
    );
    assert_eq!(
        std::fs::read(aside).unwrap(),
        damaged,
        "the moved file is the damaged store"
    );
    assert!(
        log.contains(&format!("moved it aside to {}", aside.display())),
        "wharf up says where the store went:\n{log}"
    );
    match SqliteStore::open(aside) {
        Err(StoreError::Corrupt { .. }) => {}
        other => panic!("the file moved aside is still the corrupt one: {other:?}"),
    }
    assert!(
        w.client
            .list_stacks()
            .await
            .expect("the API answers")
            .is_empty(),
        "a fresh store"
    );
    assert!(
        old_client.list_stacks().await.is_err(),
        "the old admin token is unknown to the fresh store"
    );

    // On a sound store the flag changes nothing.
    w.kill9();
    w.launch(&["--reset-store"]).await;
    assert_eq!(
        corrupt_files(&data).len(),
        1,
        "a sound store is not moved aside"
    );
    assert!(
        w.log()
            .contains("is sound: --reset-store leaves it as it is"),
        "{}",
        w.log()
    );
    w.client.list_stacks().await.expect("the API answers");
}
