//! `Evented`: a store decorator that adds, to every transaction, the events its writes tell
//! of (`super::of_change`), so they commit with the change or not at all.
//!
//! The value before a write is read from the store it wraps (the master's cache: memory). That
//! is the value the write replaces as long as writes of one key do not race, which holds for
//! the keys that tell events: a node's report is written by its one connection, instance records
//! by the leader's deployer only, deployments and nodes under a compare of their revision.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use wharf_store::{
    KeyValue, LeaseId, Op, Revision, Store, StoreError, Txn, TxnResponse, WatchStream,
};

use crate::model::{encode, keys};

pub struct Evented {
    inner: Arc<dyn Store>,
    /// This writer's part of every event key (with `seq`), so two writers, or two
    /// transactions of one writer in the same millisecond, never write the same key.
    writer: u32,
    seq: AtomicU32,
}

impl Evented {
    pub fn new(inner: Arc<dyn Store>) -> Evented {
        Evented {
            inner,
            writer: rand::random(),
            seq: AtomicU32::new(0),
        }
    }

    /// The event puts for the writes of one branch of a transaction, and the deployments they
    /// end (recorded in the metrics once the transaction commits).
    async fn events_of(&self, ops: &[Op]) -> Result<(Vec<Op>, Vec<super::Ended>), StoreError> {
        let mut events = vec![];
        let mut ended = vec![];
        for op in ops {
            match op {
                Op::Put { key, value, .. } if super::tells(key) => {
                    let old = self.inner.get(key).await?;
                    let old = old.as_ref().map(|kv| kv.value.as_slice());
                    let told = super::of_change(key, old, Some(value));
                    ended.extend(super::ended(key, value, &told));
                    events.extend(told);
                }
                Op::Delete { key } if super::tells(key) => {
                    if let Some(old) = self.inner.get(key).await? {
                        events.extend(super::of_change(key, Some(&old.value), None));
                    }
                }
                Op::DeletePrefix { prefix } if overlaps(prefix) => {
                    let (kvs, _) = self.inner.range(prefix).await?;
                    for kv in kvs.iter().filter(|kv| super::tells(&kv.key)) {
                        events.extend(super::of_change(&kv.key, Some(&kv.value), None));
                    }
                }
                _ => {}
            }
        }
        if events.is_empty() {
            return Ok((vec![], ended));
        }
        let now = crate::now_ms();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let writer = (u64::from(self.writer) << 32) | u64::from(seq);
        let puts = events
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e.time = now;
                Op::put(keys::event(now, writer, i), encode(&e))
            })
            .collect();
        Ok((puts, ended))
    }
}

/// Whether deleting everything under `prefix` may delete keys that tell events.
fn overlaps(prefix: &str) -> bool {
    [
        keys::STATUS,
        keys::INSTANCES,
        keys::DEPLOYMENTS,
        keys::NODES,
    ]
    .iter()
    .any(|p| prefix.starts_with(p) || p.starts_with(prefix))
}

#[async_trait::async_trait]
impl Store for Evented {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.inner.range(prefix).await
    }
    async fn txn(&self, mut txn: Txn) -> Result<TxnResponse, StoreError> {
        let (on_success, on_failure) = (txn.success.len(), txn.failure.len());
        let (success, ended_on_success) = self.events_of(&txn.success).await?;
        let (failure, ended_on_failure) = self.events_of(&txn.failure).await?;
        txn.success.extend(success);
        txn.failure.extend(failure);
        let mut r = self.inner.txn(txn).await?;
        let ended = if r.succeeded {
            ended_on_success
        } else {
            ended_on_failure
        };
        for e in ended {
            crate::metrics::deployment_ended(e.outcome, e.took);
        }
        // The caller sees the responses of its own operations only.
        r.responses
            .truncate(if r.succeeded { on_success } else { on_failure });
        Ok(r)
    }
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix, from).await
    }
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.lease_keep_alive(lease).await
    }
    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.lease_revoke(lease).await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
}

/// How long events are kept, and how many at most.
pub const KEEP_FOR_MS: u64 = 24 * 3600 * 1000;
pub const KEEP_AT_MOST: usize = 100_000;

/// How many deletes go in one transaction of the pruner.
const PRUNE_BATCH: usize = 1_000;

/// Delete the events older than `KEEP_FOR_MS` and beyond the newest `KEEP_AT_MOST`. The keys
/// start with the time, so the oldest come first. How many were deleted.
pub async fn prune(store: &dyn Store, now_ms: u64) -> Result<usize, StoreError> {
    let (kvs, _) = store.range(keys::EVENTS).await?;
    let cutoff = now_ms.saturating_sub(KEEP_FOR_MS);
    let beyond = kvs.len().saturating_sub(KEEP_AT_MOST);
    let old: Vec<&str> = kvs
        .iter()
        .enumerate()
        .filter(|(i, kv)| *i < beyond || time_of(&kv.key).is_some_and(|t| t < cutoff))
        .map(|(_, kv)| kv.key.as_str())
        .collect();
    for chunk in old.chunks(PRUNE_BATCH) {
        store
            .txn(Txn::new().then(chunk.iter().map(|k| Op::delete(*k))))
            .await?;
    }
    Ok(old.len())
}

/// The time an event was written, from its key.
fn time_of(key: &str) -> Option<u64> {
    key.strip_prefix(keys::EVENTS)?
        .split('-')
        .next()?
        .parse()
        .ok()
}
