//! Durability: everything acknowledged survives closing and reopening the store.

mod common;

use std::time::Duration;

use common::{next_batch, temp_file};
use wharf_store::{Op, SqliteStore, Store, StoreError, Txn};

#[tokio::test]
async fn keys_and_revisions_survive_reopen() {
    let (_dir, path) = temp_file("store.db");
    let mut expected = Vec::new();
    {
        let store = SqliteStore::open(&path).unwrap();
        for i in 0..200u32 {
            let key = format!("k/{i:04}");
            let rev = store.put(&key, i.to_be_bytes().to_vec()).await.unwrap();
            expected.push((key, rev));
        }
        // Overwrite some keys so versions differ from 1.
        for (key, rev) in expected.iter_mut().take(10) {
            *rev = store.put(key, b"again".to_vec()).await.unwrap();
        }
        assert!(store.delete("k/0199").await.unwrap());
        expected.pop();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), 211);
    let (kvs, rev) = store.range("k/").await.unwrap();
    assert_eq!(rev, 211);
    assert_eq!(kvs.len(), expected.len());
    for (kv, (key, rev)) in kvs.iter().zip(&expected) {
        assert_eq!(&kv.key, key);
        assert_eq!(kv.mod_revision, *rev);
        assert_eq!(kv.version, if kv.value == b"again" { 2 } else { 1 });
    }
    // History survives too: replay from the first revision.
    let mut w = store.watch("k/", 1).await.unwrap();
    for want in 1..=211 {
        let b = next_batch(&mut w, Duration::from_secs(10)).await;
        assert_eq!(b.revision, want);
    }
    // And writes continue from the persisted revision.
    assert_eq!(store.put("k/new", b"x".to_vec()).await.unwrap(), 212);
}

#[tokio::test]
async fn leases_survive_reopen() {
    let (_dir, path) = temp_file("store.db");
    let (long, short);
    {
        let store = SqliteStore::open(&path).unwrap();
        long = store.lease_grant(Duration::from_secs(600)).await.unwrap();
        short = store.lease_grant(Duration::from_millis(200)).await.unwrap();
        let put = |k: &str, lease| Op::Put {
            key: k.to_string(),
            value: b"v".to_vec(),
            lease: Some(lease),
        };
        store
            .txn(Txn::new().then([put("l/long", long), put("l/short", short)]))
            .await
            .unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.get("l/long").await.unwrap().unwrap().lease,
        Some(long)
    );
    store.lease_keep_alive(long).await.unwrap();
    // The short lease got a fresh TTL on reopen and then expires.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while store.get("l/short").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "short lease never expired after reopen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(
        store.lease_keep_alive(short).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    // Lease ids are never reused after reopen.
    let fresh = store.lease_grant(Duration::from_secs(1)).await.unwrap();
    assert!(fresh > long && fresh > short);
    store.lease_revoke(long).await.unwrap();
    assert!(store.get("l/long").await.unwrap().is_none());
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert!(matches!(
        store.lease_keep_alive(long).await,
        Err(StoreError::LeaseNotFound(_))
    ));
}

#[tokio::test]
async fn history_is_compacted_to_the_configured_window() {
    let store = SqliteStore::open_in_memory().unwrap().with_history(50);
    for i in 0..300u32 {
        store.put("h/k", i.to_string().into_bytes()).await.unwrap();
    }
    let head = store.current_revision().await.unwrap();
    // At least the last 50 revisions are kept...
    assert!(store.watch("h/", head - 49).await.is_ok());
    // ...and old ones are gone.
    match store.watch("h/", 1).await {
        Err(StoreError::Compacted {
            requested: 1,
            oldest,
        }) => assert!(oldest > 1 && oldest <= head - 49),
        Err(e) => panic!("expected Compacted, got {e}"),
        Ok(_) => panic!("expected Compacted, got a stream"),
    }
}

#[tokio::test]
async fn backend_errors_name_the_file() {
    // A directory where the database file should be.
    let (_dir, path) = temp_file("taken");
    std::fs::create_dir(&path).unwrap();
    match SqliteStore::open(&path) {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("taken"), "{msg}"),
        Err(e) => panic!("expected a backend error, got {e}"),
        Ok(_) => panic!("expected opening a directory to fail"),
    }
}

/// The database and its write-ahead files are readable by their owner only, also when an older
/// Wharf made them 0644.
#[tokio::test]
async fn store_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, path) = common::temp_file("wharf.db");
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = SqliteStore::open(&path).unwrap();
    store.put("/a", b"1".to_vec()).await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{}{suffix}", path.display());
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{p}: {mode:o}");
    }
}
