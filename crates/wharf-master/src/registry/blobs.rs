//! The registry's content on disk: blobs by digest under `DIR/blobs/sha256/XX/HEX`, uploads in
//! progress under `DIR/uploads/ID` (with the repository they are for in `ID.repo`).
//!
//! **A blob is visible only once complete and verified:** an upload is written to its own file;
//! finishing it fsyncs the file, hashes it, and only if the digest is the one the client named
//! renames it into place and fsyncs the directory. A crash at any point leaves either no blob or
//! the whole blob; an interrupted upload stays an upload, resumable from its length.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::path::{Digest, valid_upload_id};

/// Why finishing an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error("the upload's content has digest {actual}, not {expected}")]
    Mismatch { expected: Digest, actual: Digest },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The blob store of one master's data directory.
pub struct Blobs {
    root: PathBuf,
    /// One writer per upload at a time: a chunk sent again after a broken one waits for the
    /// broken one's request to end.
    locks: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Blobs {
    /// The store under `root`, its directories made.
    pub fn open(root: &Path) -> std::io::Result<Blobs> {
        std::fs::create_dir_all(root.join("blobs").join("sha256"))?;
        std::fs::create_dir_all(root.join("uploads"))?;
        Ok(Blobs {
            root: root.to_path_buf(),
            locks: Default::default(),
        })
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join("sha256")
            .join(&d.hex()[..2])
            .join(d.hex())
    }

    fn upload_path(&self, id: &str) -> PathBuf {
        debug_assert!(valid_upload_id(id));
        self.root.join("uploads").join(id)
    }

    /// The size of blob `d`, if it is stored.
    pub async fn size(&self, d: &Digest) -> Option<u64> {
        tokio::fs::metadata(self.blob_path(d))
            .await
            .ok()
            .map(|m| m.len())
    }

    /// Open blob `d` for reading.
    pub async fn open_blob(&self, d: &Digest) -> std::io::Result<tokio::fs::File> {
        tokio::fs::File::open(self.blob_path(d)).await
    }

    /// Start an upload to `repo`; its id.
    pub async fn start(&self, repo: &str) -> std::io::Result<String> {
        let id = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        tokio::fs::write(self.upload_path(&id).with_extension("repo"), repo).await?;
        tokio::fs::File::create(self.upload_path(&id)).await?;
        Ok(id)
    }

    /// Hold upload `id` for writing.
    pub async fn lock(&self, id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self.locks.lock().entry(id.to_string()).or_default().clone();
        m.lock_owned().await
    }

    /// The length of upload `id` to `repo`, or `None` when there is no such upload (another
    /// repository's upload is none too).
    pub async fn upload_size(&self, id: &str, repo: &str) -> Option<u64> {
        let owner = tokio::fs::read_to_string(self.upload_path(id).with_extension("repo"))
            .await
            .ok()?;
        if owner != repo {
            return None;
        }
        tokio::fs::metadata(self.upload_path(id))
            .await
            .ok()
            .map(|m| m.len())
    }

    /// Append `body` to upload `id` (held with `lock`); the new length. A body that breaks
    /// off leaves what arrived written, and the error.
    pub async fn append(
        &self,
        id: &str,
        body: axum::body::Body,
    ) -> Result<u64, (u64, std::io::Error)> {
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(self.upload_path(id))
            .await
            .map_err(|e| (0, e))?;
        let mut stream = body.into_data_stream();
        let mut failure = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    if let Err(e) = file.write_all(&bytes).await {
                        failure = Some(e);
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(std::io::Error::other(e));
                    break;
                }
            }
        }
        let flushed = file.flush().await;
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        match (failure, flushed) {
            (Some(e), _) | (None, Err(e)) => Err((len, e)),
            (None, Ok(())) => Ok(len),
        }
    }

    /// Finish upload `id` as blob `expected`: fsync, verify, rename, fsync the directory. On a
    /// mismatch the upload is removed and nothing is stored.
    pub async fn finish(&self, id: &str, expected: &Digest) -> Result<u64, FinishError> {
        let upload = self.upload_path(id);
        let target = self.blob_path(expected);
        let expected = expected.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<u64, FinishError> {
            // Written now, for the collection's grace, however long the upload sat idle.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&upload)?;
            file.set_modified(std::time::SystemTime::now())?;
            file.sync_all()?;
            let (actual, len) = hash_file(file)?;
            if actual != expected {
                remove_upload(&upload);
                return Err(FinishError::Mismatch { expected, actual });
            }
            let dir = target.parent().expect("a blob has a directory");
            if !dir.exists() {
                // A new shard: its own entry must be durable too.
                std::fs::create_dir_all(dir)?;
                let shards = dir.parent().expect("a shard has a directory");
                std::fs::File::open(shards)?.sync_all()?;
            }
            std::fs::rename(&upload, &target)?;
            std::fs::File::open(dir)?.sync_all()?;
            remove_upload(&upload);
            Ok(len)
        })
        .await
        .map_err(|e| FinishError::Io(std::io::Error::other(e)))?;
        self.locks.lock().remove(id);
        result
    }

    /// Drop upload `id`.
    pub async fn cancel(&self, id: &str) {
        remove_upload(&self.upload_path(id));
        self.locks.lock().remove(id);
    }

    /// Store `bytes` (a manifest) as a blob, the same crash-safe way; its digest.
    pub async fn put(&self, bytes: &[u8]) -> Result<Digest, FinishError> {
        let digest = Digest::of(bytes);
        if self.size(&digest).await.is_some() {
            return Ok(digest);
        }
        let id = self.start("").await?;
        let _held = self.lock(&id).await;
        tokio::fs::write(self.upload_path(&id), bytes).await?;
        self.finish(&id, &digest).await?;
        Ok(digest)
    }

    /// Remove every blob not in `keep` last written before `before`, and uploads untouched
    /// since `stale_uploads`; the blobs removed.
    pub async fn sweep(
        &self,
        keep: HashSet<Digest>,
        before: SystemTime,
        stale_uploads: SystemTime,
    ) -> std::io::Result<Vec<Digest>> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || sweep(&root, &keep, before, stale_uploads))
            .await
            .map_err(std::io::Error::other)?
    }
}

fn remove_upload(upload: &Path) {
    let _ = std::fs::remove_file(upload);
    let _ = std::fs::remove_file(upload.with_extension("repo"));
}

fn hash_file(mut file: std::fs::File) -> std::io::Result<(Digest, u64)> {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((Digest::from_sha256(h.finalize().into()), len))
}

fn sweep(
    root: &Path,
    keep: &HashSet<Digest>,
    before: SystemTime,
    stale_uploads: SystemTime,
) -> std::io::Result<Vec<Digest>> {
    let older = |p: &Path, t: SystemTime| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m < t)
    };
    let mut removed = Vec::new();
    for shard in std::fs::read_dir(root.join("blobs").join("sha256"))? {
        let shard = shard?.path();
        for blob in std::fs::read_dir(&shard)? {
            let path = blob?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let Ok(d) = Digest::parse(&format!("sha256:{name}")) else {
                continue; // not ours: left alone
            };
            if !keep.contains(&d) && older(&path, before) {
                std::fs::remove_file(&path)?;
                removed.push(d);
            }
        }
    }
    for upload in std::fs::read_dir(root.join("uploads"))? {
        let path = upload?.path();
        if path.extension().is_none() && older(&path, stale_uploads) {
            remove_upload(&path);
        }
    }
    removed.sort();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blob_is_stored_only_once_its_digest_checks_out() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let id = blobs.start("shop/web").await.unwrap();
        let held = blobs.lock(&id).await;
        let len = blobs
            .append(&id, axum::body::Body::from("hello "))
            .await
            .unwrap();
        assert_eq!(len, 6);
        let len = blobs
            .append(&id, axum::body::Body::from("world"))
            .await
            .unwrap();
        assert_eq!(len, 11);
        assert_eq!(blobs.upload_size(&id, "shop/web").await, Some(11));
        assert_eq!(
            blobs.upload_size(&id, "other").await,
            None,
            "another repository's upload"
        );
        let good = Digest::of(b"hello world");
        let wrong = Digest::of(b"something else");
        let e = blobs.finish(&id, &wrong).await.unwrap_err();
        assert!(
            matches!(e, FinishError::Mismatch { ref actual, .. } if *actual == good),
            "{e}"
        );
        assert_eq!(blobs.size(&wrong).await, None);
        assert_eq!(
            blobs.size(&good).await,
            None,
            "nothing stored under any digest"
        );
        assert_eq!(
            blobs.upload_size(&id, "shop/web").await,
            None,
            "the upload is gone"
        );
        drop(held);

        assert_eq!(blobs.put(b"hello world").await.unwrap(), good);
        assert_eq!(blobs.size(&good).await, Some(11));
        let uploads: Vec<_> = std::fs::read_dir(dir.path().join("uploads"))
            .unwrap()
            .collect();
        assert!(uploads.is_empty(), "no upload left behind: {uploads:?}");
    }

    #[tokio::test]
    async fn a_sweep_removes_only_unkept_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = Blobs::open(dir.path()).unwrap();
        let a = blobs.put(b"a").await.unwrap();
        let b = blobs.put(b"b").await.unwrap();
        let future = SystemTime::now() + std::time::Duration::from_secs(60);
        let removed = blobs
            .sweep(HashSet::from([a.clone()]), SystemTime::UNIX_EPOCH, future)
            .await
            .unwrap();
        assert!(
            removed.is_empty(),
            "nothing older than the grace: {removed:?}"
        );
        let removed = blobs
            .sweep(HashSet::from([a.clone()]), future, future)
            .await
            .unwrap();
        assert_eq!(removed, vec![b.clone()]);
        assert!(blobs.size(&a).await.is_some() && blobs.size(&b).await.is_none());
    }
}
