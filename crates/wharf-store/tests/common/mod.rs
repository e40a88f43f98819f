//! Helpers shared by the store's integration tests: a store file in a fresh directory, the next
//! watch batch within a time limit.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use wharf_store::{WatchBatch, WatchStream};

/// A fresh temporary directory and the path of the file `name` in it (not created yet).
pub fn temp_file(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

/// The next batch of `w`; panics when none comes `within`, the stream ends or fails.
pub async fn next_batch(w: &mut WatchStream, within: Duration) -> WatchBatch {
    tokio::time::timeout(within, w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}
