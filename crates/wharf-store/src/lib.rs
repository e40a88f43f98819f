//! Wharf's store: an etcd-shaped key-value interface and its backends.
//!
//! The shape follows etcd v3 so that an etcd backend drops in without changing callers:
//! - every successful write transaction bumps one global `revision`;
//! - each key remembers `create_revision`, `mod_revision` and `version` (writes since creation);
//! - transactions compare-and-swap: `if all compares hold { success ops } else { failure ops }`, atomically;
//! - `watch(prefix, from)` replays every change with revision >= `from` then streams new ones, in order;
//! - leases: keys attached to a lease are deleted when it expires or is revoked.
//!
//! Architecture invariant: the store knows nothing of stacks, services or HTTP. Values are bytes.
//! Writes are deterministic: callers pass ids and timestamps in; only lease expiry reads a clock.
//!
//! Code map: `sqlite` (the embedded backend: one thread owns the connection, WAL, a changelog for
//! watches) · `etcd` (the clustered backend: several masters share an etcd cluster) · `cache` (`CachedStore`: the informer every master read goes through, and `Mirror`s
//! refreshed with what changed) · `conformance` (the suite every backend passes) · `testing` (a real etcd cluster for tests).

#![forbid(unsafe_code)]

mod cache;
pub mod conformance;
mod etcd;
mod sqlite;
pub mod testing;

use std::time::Duration;

use futures::stream::BoxStream;

pub use cache::{CachedStore, Decoded, Mirror, Refreshed};
pub use etcd::{EtcdMember, EtcdOptions, EtcdStore, EtcdTls};
pub use sqlite::{DEFAULT_HISTORY, DEFAULT_WATCH_BUFFER, SqliteOptions, SqliteStore};

pub type Revision = u64;
pub type LeaseId = i64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    /// Number of writes since the key was (re)created; 1 after the first put.
    pub version: u64,
    pub lease: Option<LeaseId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// One condition of a transaction. A missing key has version 0, mod_revision 0, create_revision 0,
/// and its value compares as absent (never equal to any bytes).
///
/// As in etcd, a `Value` compare on a missing key never holds, whatever the operator (`NotEqual`
/// included); `Less`/`Greater` on values compare bytes lexicographically. The compare holds when
/// `actual <op> target`, e.g. `Version(k, Less, 3)` holds when the key's version is below 3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    Version(String, CmpOp, u64),
    ModRevision(String, CmpOp, Revision),
    CreateRevision(String, CmpOp, Revision),
    Value(String, CmpOp, Vec<u8>),
}

impl Compare {
    /// The key does not exist.
    pub fn missing(key: impl Into<String>) -> Compare {
        Compare::Version(key.into(), CmpOp::Equal, 0)
    }
    /// The key exists.
    pub fn exists(key: impl Into<String>) -> Compare {
        Compare::Version(key.into(), CmpOp::Greater, 0)
    }
    /// The key was not modified since `rev` (0: the key does not exist).
    pub fn unchanged_since(key: impl Into<String>, rev: Revision) -> Compare {
        Compare::ModRevision(key.into(), CmpOp::Equal, rev)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
    Get {
        key: String,
    },
    Range {
        prefix: String,
    },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }
    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete { key: key.into() }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Txn {
    pub fn new() -> Txn {
        Txn::default()
    }
    pub fn when(mut self, c: impl IntoIterator<Item = Compare>) -> Txn {
        self.compares.extend(c);
        self
    }
    pub fn then(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.success.extend(ops);
        self
    }
    pub fn otherwise(mut self, ops: impl IntoIterator<Item = Op>) -> Txn {
        self.failure.extend(ops);
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    Put {
        prev: Option<KeyValue>,
    },
    /// Keys deleted.
    Delete {
        deleted: u64,
    },
    Get(Option<KeyValue>),
    Range(Vec<KeyValue>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    pub succeeded: bool,
    /// The store revision after the transaction (unchanged when it wrote nothing).
    pub revision: Revision,
    /// One response per op of the branch that ran.
    pub responses: Vec<OpResponse>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub kind: EventKind,
    /// For a delete: the key, an empty value, and `mod_revision` = the revision of the delete
    /// (`create_revision` and `version` 0, no lease, as in etcd).
    pub kv: KeyValue,
}

/// Events of one revision (one transaction), in key order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    pub revision: Revision,
    pub events: Vec<WatchEvent>,
}

pub type WatchStream = BoxStream<'static, Result<WatchBatch, StoreError>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "revision {requested} has been compacted (oldest available is {oldest}); list again and watch from the revision the list returned"
    )]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    #[error("store backend failed: {0}")]
    Backend(String),
    /// The database file is damaged (SQLite reports it corrupt or not a database at all). Wharf
    /// cannot go on with it: restore it from a backup, or move it aside and start empty.
    #[error(
        "the store {} is corrupt ({detail}); restore it from a backup, or start fresh with \
         --reset-store (which moves it aside)",
        .path.display()
    )]
    Corrupt {
        path: std::path::PathBuf,
        /// What SQLite said, and during what.
        detail: String,
    },
    /// The store cannot be reached with a quorum (etcd: no leader, no member answers, or a
    /// deadline passed). Nothing was written; the request may be tried again.
    #[error(
        "the cluster store has no quorum ({0}); writes wait until a majority of the etcd \
         members is back (check them with `wharf master ls` or `etcdctl endpoint health`)"
    )]
    NoQuorum(String),
    /// A fenced write (`wharf-master`'s `leader::Fenced`) found that its writer no longer
    /// holds the fence: another took over. Nothing was written.
    #[error("{0}")]
    Fenced(String),
    #[error("store is closed")]
    Closed,
}

/// The store interface. Every backend passes `conformance::run_all`.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// All keys starting with `prefix`, in key order, and the revision they were read at.
    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError>;
    /// Atomically: if every compare holds run `success`, otherwise `failure`. Durable on return.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError>;
    async fn current_revision(&self) -> Result<Revision, StoreError>;
    /// Every change under `prefix` with revision >= `from` (0: from now on), then new ones as they commit.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError>;
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// Restart the lease's countdown.
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// Revoke the lease and delete its keys (one revision).
    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Discard change history before `revision` (clamped to the current revision): afterwards
    /// `watch(_, from)` with `0 < from < revision` fails with `StoreError::Compacted`. Current
    /// keys are not affected. Backends that cannot compact keep the default, which fails.
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let _ = revision;
        Err(StoreError::Backend(
            "compaction is not supported by this backend".to_string(),
        ))
    }

    /// Shorthand: unconditional put.
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<Revision, StoreError> {
        Ok(self
            .txn(Txn::new().then([Op::put(key, value)]))
            .await?
            .revision)
    }
    /// Shorthand: unconditional delete; returns whether the key existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let r = self.txn(Txn::new().then([Op::delete(key)])).await?;
        Ok(matches!(r.responses.first(), Some(OpResponse::Delete { deleted }) if *deleted > 0))
    }
}
