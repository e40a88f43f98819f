//! The conformance suite against the SQLite backend, in memory and on disk.

use wharf_store::{SqliteOptions, SqliteStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_in_memory() {
    let store = SqliteStore::open_in_memory().unwrap();
    conformance::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("nested/dir/store.db")).unwrap();
    conformance::run_all(&store).await;
    // Twice against the same store: checks use fresh prefixes.
    conformance::run_all(&store).await;
}

#[tokio::test(flavor = "current_thread")]
async fn conformance_with_tiny_buffers() {
    // A one-slot broadcast buffer forces watchers through the lag/re-read path.
    let options = SqliteOptions {
        history: 1_000,
        watch_buffer: 1,
    };
    let store = SqliteStore::open_in_memory_with(options).unwrap();
    conformance::run_all(&store).await;
}
