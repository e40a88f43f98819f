//! Concurrency: CAS increments are never lost; watchers see every revision exactly once.

mod common;

use std::time::Duration;

use common::{next_batch, temp_file};
use futures::StreamExt;
use wharf_store::{Compare, Op, SqliteOptions, SqliteStore, Store, Txn};

async fn cas_increment(store: &SqliteStore, key: &str) -> u64 {
    loop {
        let current = store.get(key).await.unwrap();
        let (n, rev) = match &current {
            Some(kv) => (
                String::from_utf8(kv.value.clone())
                    .unwrap()
                    .parse::<u64>()
                    .unwrap(),
                kv.mod_revision,
            ),
            None => (0, 0),
        };
        let txn = Txn::new()
            .when([Compare::unchanged_since(key, rev)])
            .then([Op::put(key, (n + 1).to_string())]);
        if store.txn(txn).await.unwrap().succeeded {
            return n + 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cas_increments_lose_nothing() {
    let (_dir, path) = temp_file("store.db");
    let store = SqliteStore::open(&path).unwrap();
    const TASKS: u64 = 8;
    const EACH: u64 = 50;
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..EACH {
                seen.push(cas_increment(&store, "counter").await);
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort_unstable();
    // Every increment returned a distinct value: no two tasks "won" the same CAS.
    assert_eq!(all, (1..=TASKS * EACH).collect::<Vec<_>>());
    let kv = store.get("counter").await.unwrap().unwrap();
    assert_eq!(kv.value, (TASKS * EACH).to_string().into_bytes());
    assert_eq!(kv.version, TASKS * EACH);
}

async fn watch_sees_every_revision_once(store: SqliteStore) {
    for i in 0..20 {
        store
            .put(&format!("load/pre/{i}"), b"x".to_vec())
            .await
            .unwrap();
    }
    let from = store.current_revision().await.unwrap() - 5;
    let mut watch = store.watch("load/", from).await.unwrap();
    const WRITERS: usize = 4;
    const EACH: usize = 150;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let ops = [
                    Op::put(format!("load/{w}/{i}"), "v"),
                    Op::put(format!("load/{w}/last"), i.to_string()),
                ];
                store.txn(Txn::new().then(ops)).await.unwrap();
                // Writes outside the prefix must not show up.
                store
                    .put(&format!("other/{w}/{i}"), b"v".to_vec())
                    .await
                    .unwrap();
            }
        }));
    }
    let mut revisions = Vec::new();
    let mut last_event_rev = 0;
    let expected_under_prefix = 6 + WRITERS * EACH;
    while revisions.len() < expected_under_prefix {
        let batch = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("watch stalled")
            .expect("watch ended")
            .expect("watch failed");
        assert!(
            batch.revision > last_event_rev,
            "revisions out of order or repeated"
        );
        last_event_rev = batch.revision;
        assert!(batch.events.iter().all(|e| e.kv.key.starts_with("load/")));
        assert!(
            batch
                .events
                .iter()
                .all(|e| e.kv.mod_revision == batch.revision)
        );
        revisions.push(batch.revision);
        // A slow consumer now and then, so the broadcast buffer overflows.
        if revisions.len() % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    // Every revision from `from` on that touched "load/" was seen exactly once, in order.
    let mut expected = Vec::new();
    let head = store.current_revision().await.unwrap();
    let mut replay = store.watch("load/", from).await.unwrap();
    while expected.last() != Some(&last_event_rev) {
        let b = next_batch(&mut replay, Duration::from_secs(30)).await;
        expected.push(b.revision);
    }
    assert_eq!(revisions, expected);
    assert_eq!(revisions.first(), Some(&from));
    // Every revision in from..=head is either a "load/" batch or an "other/" write.
    let (others, _) = store.range("other/").await.unwrap();
    assert_eq!(revisions.len() + others.len(), (head - from + 1) as usize);
    // Nothing more arrives for the prefix.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watch.next())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_under_load() {
    watch_sees_every_revision_once(SqliteStore::open_in_memory().unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_under_load_with_lagging_watcher() {
    let options = SqliteOptions {
        watch_buffer: 4,
        ..SqliteOptions::default()
    };
    watch_sees_every_revision_once(SqliteStore::open_in_memory_with(options).unwrap()).await;
}

#[tokio::test]
async fn lagging_live_watcher_rereads_the_changelog() {
    let options = SqliteOptions {
        watch_buffer: 2,
        ..SqliteOptions::default()
    };
    let store = SqliteStore::open_in_memory_with(options).unwrap();
    let start = store.put("lag/first", b"x".to_vec()).await.unwrap();
    let mut watch = store.watch("lag/", 0).await.unwrap();
    // Far more batches than the buffer holds, before the watcher reads any.
    for i in 0..100 {
        store.put(&format!("lag/{i}"), b"x".to_vec()).await.unwrap();
        store
            .put(&format!("skip/{i}"), b"x".to_vec())
            .await
            .unwrap();
    }
    for i in 0..100u64 {
        let b = next_batch(&mut watch, Duration::from_secs(10)).await;
        assert_eq!(b.revision, start + 1 + 2 * i);
        assert_eq!(b.events[0].kv.key, format!("lag/{i}"));
    }
    let last = store.put("lag/live", b"x".to_vec()).await.unwrap();
    let b = next_batch(&mut watch, Duration::from_secs(10)).await;
    assert_eq!(b.revision, last);
}

#[tokio::test]
async fn lagging_watcher_past_compaction_gets_compacted() {
    let options = SqliteOptions {
        watch_buffer: 2,
        history: 10,
    };
    let store = SqliteStore::open_in_memory_with(options).unwrap();
    let mut watch = store.watch("c/", 0).await.unwrap();
    for i in 0..100 {
        store.put(&format!("c/{i}"), b"x".to_vec()).await.unwrap();
    }
    // The watcher missed revisions that are no longer in the changelog: it must say so.
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            first,
            Err(wharf_store::StoreError::Compacted { requested: 1, .. })
        ),
        "{first:?}"
    );
    assert!(watch.next().await.is_none());
}

#[tokio::test]
async fn watch_ends_when_store_is_dropped() {
    let store = SqliteStore::open_in_memory().unwrap();
    let mut watch = store.watch("", 0).await.unwrap();
    drop(store);
    let end = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap();
    assert!(
        matches!(end, Some(Err(wharf_store::StoreError::Closed))),
        "{end:?}"
    );
}
