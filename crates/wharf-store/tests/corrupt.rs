//! A damaged store file is refused at open with `StoreError::Corrupt`, naming the file and what to
//! do, instead of failing some write later on; an empty file is a new store.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::temp_file;
use wharf_store::{SqliteStore, Store, StoreError};

/// A store file with enough keys to span many pages, closed cleanly (the WAL is checkpointed
/// into the file and removed).
async fn populated(path: &Path) {
    let store = SqliteStore::open(path).unwrap();
    for i in 0..200u32 {
        store
            .put(&format!("k/{i:04}"), vec![i as u8; 512])
            .await
            .unwrap();
    }
    drop(store);
    assert!(
        std::fs::metadata(path).unwrap().len() > 16 * 4096,
        "the store spans many pages"
    );
    assert!(
        !path.with_extension("db-wal").exists(),
        "closing checkpointed the WAL into the file"
    );
}

/// Overwrite `len` bytes at `offset` with a pattern no page has.
fn scribble(path: &Path, offset: u64, len: usize) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let garbage: Vec<u8> = (0..len).map(|i| (i * 7 + 13) as u8 | 0x80).collect();
    f.write_all(&garbage).unwrap();
    f.sync_all().unwrap();
}

fn expect_corrupt(path: &Path) -> String {
    match SqliteStore::open(path) {
        Err(StoreError::Corrupt { path: p, detail }) => {
            assert_eq!(p, path, "the error names the file");
            let msg = StoreError::Corrupt {
                path: p,
                detail: detail.clone(),
            }
            .to_string();
            assert!(
                msg.starts_with(&format!("the store {} is corrupt (", path.display())),
                "{msg}"
            );
            assert!(
                msg.contains("backup") && msg.contains("--reset-store"),
                "{msg}"
            );
            detail
        }
        Err(e) => panic!("expected StoreError::Corrupt, got {e:?}"),
        Ok(_) => panic!("expected opening a corrupt store to fail"),
    }
}

#[tokio::test]
async fn a_garbage_page_is_refused_at_open_as_corrupt() {
    let (_dir, path) = temp_file("wharf.db");
    populated(&path).await;
    // Page 2 (pages are 4 KiB): a b-tree page of the schema's first table.
    scribble(&path, 4096, 4096);
    let detail = expect_corrupt(&path);
    assert!(
        detail.starts_with("checking the database: ") && detail.contains("page 2"),
        "the detail is quick_check's report: {detail}"
    );
    // Refused again: nothing was "repaired" by the first attempt.
    expect_corrupt(&path);
}

#[tokio::test]
async fn a_garbage_header_is_refused_as_corrupt() {
    let (_dir, path) = temp_file("wharf.db");
    populated(&path).await;
    // The file header ("SQLite format 3\0", page size, ...): SQLITE_NOTADB.
    scribble(&path, 0, 100);
    expect_corrupt(&path);
}

#[tokio::test]
async fn a_file_that_is_no_database_is_refused_as_corrupt() {
    let (_dir, path) = temp_file("wharf.db");
    std::fs::write(
        &path,
        "this is not a database, just text that is long enough\n".repeat(200),
    )
    .unwrap();
    expect_corrupt(&path);
}

#[tokio::test]
async fn an_empty_file_opens_as_a_new_store() {
    let (_dir, path) = temp_file("wharf.db");
    std::fs::File::create(&path).unwrap();
    let store = SqliteStore::open(&path).expect("a zero-length file is a new, empty store");
    assert_eq!(store.current_revision().await.unwrap(), 0);
    assert!(store.range("").await.unwrap().0.is_empty());
    assert_eq!(store.put("k", b"v".to_vec()).await.unwrap(), 1);
}

#[tokio::test]
async fn a_sound_store_passes_the_check_and_keeps_its_keys() {
    let (_dir, path) = temp_file("wharf.db");
    populated(&path).await;
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.range("k/").await.unwrap().0.len(), 200);
}
