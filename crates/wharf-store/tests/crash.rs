//! Crash safety with a real `kill -9`: every acknowledged write survives, nothing is torn.
//!
//! The test re-executes its own binary in "writer mode" (selected by an environment variable):
//! the child does CAS-incremented writes in a loop and prints each acknowledged revision; the
//! parent SIGKILLs it mid-flight and checks the reopened store.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{next_batch, temp_file};
use wharf_store::{Compare, EventKind, Op, SqliteStore, Store, Txn};

const WRITER_ENV: &str = "WHARF_STORE_CRASH_WRITER_DB";
const ACKS_BEFORE_KILL: usize = 300;

/// One writer step: counter n -> n + 1 and key `crash/item/{n+1}` = n + 1, atomically.
async fn writer(path: &Path) -> ! {
    let store = SqliteStore::open(path).expect("writer: open");
    let mut out = std::io::stdout().lock();
    loop {
        let current = store.get("crash/counter").await.expect("writer: get");
        let (n, rev) = match &current {
            Some(kv) => (parse(&kv.value), kv.mod_revision),
            None => (0, 0),
        };
        let next = n + 1;
        let txn = Txn::new()
            .when([Compare::unchanged_since("crash/counter", rev)])
            .then([
                Op::put("crash/counter", next.to_string()),
                Op::put(format!("crash/item/{next:08}"), next.to_string()),
            ]);
        let resp = store.txn(txn).await.expect("writer: txn");
        assert!(resp.succeeded, "writer: the only writer lost a CAS");
        writeln!(out, "ack {} {}", resp.revision, next).expect("writer: stdout");
        out.flush().expect("writer: flush");
    }
}

fn parse(v: &[u8]) -> u64 {
    std::str::from_utf8(v).unwrap().parse().unwrap()
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    if let Some(path) = std::env::var_os(WRITER_ENV) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(writer(&PathBuf::from(path)));
    }
    let (_dir, path) = temp_file("crash.db");
    // Two rounds: the second child starts from the state the first one left behind.
    let mut acks: Vec<(u64, u64)> = Vec::new();
    for _round in 0..2 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "acknowledged_writes_survive_kill_9",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WRITER_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut round = 0;
        while round < ACKS_BEFORE_KILL {
            let line = lines.next().expect("writer exited early").unwrap();
            let Some(rest) = line.strip_prefix("ack ") else {
                continue;
            };
            let (rev, n) = rest.split_once(' ').unwrap();
            acks.push((rev.parse().unwrap(), n.parse().unwrap()));
            round += 1;
        }
        // Child::kill is SIGKILL on Unix: no destructor, no flush, no clean close.
        child.kill().unwrap();
        child.wait().unwrap();
        // Acks printed between our last read and the kill are acknowledged too.
        for line in lines.map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("ack ")
                && let Some((rev, n)) = rest.split_once(' ')
                && let (Ok(rev), Ok(n)) = (rev.parse(), n.parse())
            {
                acks.push((rev, n));
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(check_after_crash(&path, &acks));
    }
}

async fn check_after_crash(path: &Path, acks: &[(u64, u64)]) {
    let store = SqliteStore::open(path).unwrap();
    let &(last_rev, last_n) = acks.last().unwrap();
    let head = store.current_revision().await.unwrap();
    assert!(
        head >= last_rev,
        "revision {head} is behind the last acknowledged {last_rev}"
    );
    // Every acknowledged write is present with the acknowledged revision.
    for &(rev, n) in acks {
        let kv = store
            .get(&format!("crash/item/{n:08}"))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged item {n} (revision {rev}) is missing"));
        assert_eq!(parse(&kv.value), n);
        assert_eq!(kv.mod_revision, rev, "item {n}");
    }
    // No torn state: the counter, the items and the revision agree.
    let counter = store.get("crash/counter").await.unwrap().unwrap();
    let n = parse(&counter.value);
    assert!(n >= last_n);
    assert_eq!(
        counter.mod_revision, head,
        "the last revision must be the last counter write"
    );
    assert_eq!(counter.version, n);
    let (items, _) = store.range("crash/item/").await.unwrap();
    assert_eq!(items.len() as u64, n, "items and counter disagree");
    for (i, kv) in items.iter().enumerate() {
        assert_eq!(parse(&kv.value), i as u64 + 1);
    }
    // The changelog is complete: every revision replays with both keys.
    let mut w = store.watch("crash/", 1).await.unwrap();
    for rev in 1..=head {
        let b = next_batch(&mut w, Duration::from_secs(10)).await;
        assert_eq!(b.revision, rev);
        assert_eq!(b.events.len(), 2);
        assert!(b.events.iter().all(|e| e.kind == EventKind::Put));
    }
}
