//! An informer in front of a store: every key (but those under the prefixes left out) held in
//! memory, kept current from the store's own watch, so reads cost no trip to the backend and
//! no decoding twice.
//!
//! - Reads (`get`, `range`) are answered from memory at one consistent revision: the cache
//!   applies the store's watch one whole transaction at a time.
//! - Writes go to the store; `txn` returns only once the cache has applied the transaction's
//!   revision, so a caller always reads its own writes (and every write before them).
//! - `decoded` hands out each value decoded once per revision (`Arc`), whatever the number of
//!   readers and passes: the controllers' snapshot and the API's lists share the work.
//! - Everything else (watches, leases, compaction, keys under a left-out prefix such as an
//!   ever-growing audit log) goes to the store unchanged, so a cached store passes the same
//!   conformance suite as its backend.
//!
//! The cache loads on first use (a range read of everything), then follows the watch from the
//! revision after it; if the watch breaks (the history it needs was compacted, the stream
//! ended) it loads again.

use parking_lot::RwLock;
use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{OnceCell, watch};

use crate::{
    EventKind, KeyValue, LeaseId, Revision, Store, StoreError, Txn, TxnResponse, WatchBatch,
    WatchStream,
};

/// How long a write waits for the cache to apply it before the store is taken to be broken.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many changed keys the cache remembers for `refresh`. A mirror further behind loads its
/// prefix again, which is always right, only slower (the tests keep it short to go that way).
#[cfg(not(test))]
const LOG_CAP: usize = 65_536;
#[cfg(test)]
const LOG_CAP: usize = 8;

pub struct CachedStore {
    inner: Arc<dyn Store>,
    /// Prefixes read and written straight through (never held in memory).
    skip: Vec<String>,
    shared: OnceCell<Arc<Shared>>,
    /// The runtime the cache was made on, which follows the watch: not whichever runtime
    /// happens to read first (a controller on its own thread would hold up every write).
    runtime: Option<tokio::runtime::Handle>,
}

struct Shared {
    state: RwLock<State>,
    /// The revision the cache has applied.
    applied: watch::Sender<Revision>,
    /// The watch broke and the store cannot be loaded again yet (etcd without a quorum): reads
    /// are answered from what the cache last had, which may be behind.
    stale: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct State {
    revision: Revision,
    kvs: BTreeMap<String, Entry>,
    /// The keys written or deleted, with the revision of each change, oldest first: every change
    /// after `log_floor` is in it (what `refresh` hands a mirror).
    log: VecDeque<(Revision, String)>,
    log_floor: Revision,
}

impl State {
    fn loaded(revision: Revision, kvs: BTreeMap<String, Entry>) -> State {
        State {
            revision,
            kvs,
            log: VecDeque::new(),
            log_floor: revision,
        }
    }

    fn logged(&mut self, revision: Revision, key: String) {
        self.log.push_back((revision, key));
        while self.log.len() > LOG_CAP {
            if let Some((r, _)) = self.log.pop_front() {
                self.log_floor = self.log_floor.max(r);
            }
        }
    }
}

struct Entry {
    kv: KeyValue,
    /// The value decoded, by whoever asked first (one type per key in practice).
    decoded: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl Entry {
    fn new(kv: KeyValue) -> Entry {
        Entry {
            kv,
            decoded: OnceLock::new(),
        }
    }

    /// The value decoded as `T`: by the first reader of this revision, shared with the rest.
    fn value<T, E>(&self, decode: &impl Fn(&KeyValue) -> Result<T, E>) -> Result<Arc<T>, E>
    where
        T: Send + Sync + 'static,
    {
        if let Some(v) = self
            .decoded
            .get()
            .and_then(|d| d.clone().downcast::<T>().ok())
        {
            return Ok(v);
        }
        let v = Arc::new(decode(&self.kv)?);
        let _ = self.decoded.set(v.clone());
        Ok(v)
    }
}

/// The decoded values under one prefix, kept by a reader from one read to the next and brought
/// up to date by `CachedStore::refresh` with only the keys that changed in between: a controller
/// that looks at 10,000 records every pass decodes, copies and groups only what moved.
pub struct Mirror<T> {
    prefix: String,
    /// The cache revision the mirror is current at (0: never filled).
    revision: Revision,
    items: BTreeMap<String, (Arc<T>, Revision)>,
}

/// What a `refresh` changed in a mirror.
#[derive(Debug, PartialEq, Eq)]
pub enum Refreshed<T> {
    /// Everything was read again (the first time, or the mirror fell behind the cache's log).
    All,
    /// These keys were written or deleted since the last refresh (none: nothing changed), each
    /// with the value the mirror held before (none: the key is new to it).
    Keys(BTreeMap<String, Option<Arc<T>>>),
}

impl<T> Refreshed<T> {
    pub fn is_empty(&self) -> bool {
        matches!(self, Refreshed::Keys(k) if k.is_empty())
    }
}

impl<T> Mirror<T> {
    pub fn new(prefix: &str) -> Mirror<T> {
        Mirror {
            prefix: prefix.to_string(),
            revision: 0,
            items: BTreeMap::new(),
        }
    }

    /// The values by key, in key order, each with its modification revision.
    pub fn items(&self) -> &BTreeMap<String, (Arc<T>, Revision)> {
        &self.items
    }

    /// The cache revision the mirror was last brought up to.
    pub fn revision(&self) -> Revision {
        self.revision
    }
}

/// One value of `CachedStore::decoded`.
pub struct Decoded<T> {
    pub key: String,
    pub value: Arc<T>,
    pub mod_revision: Revision,
}

impl CachedStore {
    /// A cache in front of `inner`; keys under any of `skip` are not cached.
    pub fn new(inner: Arc<dyn Store>, skip: &[&str]) -> CachedStore {
        CachedStore {
            inner,
            skip: skip.iter().map(|s| s.to_string()).collect(),
            shared: OnceCell::new(),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Whether `prefix` may cover a key the cache does not hold.
    fn passes_through(&self, prefix: &str) -> bool {
        self.skip
            .iter()
            .any(|s| prefix.starts_with(s.as_str()) || s.starts_with(prefix))
    }

    fn cached_key(&self, key: &str) -> bool {
        !self.skip.iter().any(|s| key.starts_with(s.as_str()))
    }

    async fn shared(&self) -> Result<&Arc<Shared>, StoreError> {
        self.shared
            .get_or_try_init(|| async {
                let state = load(&*self.inner, &self.skip).await?;
                let revision = state.revision;
                let (applied, _) = watch::channel(revision);
                let shared = Arc::new(Shared {
                    state: RwLock::new(state),
                    applied,
                    stale: Default::default(),
                });
                let task = follow(
                    self.inner.clone(),
                    self.skip.clone(),
                    Arc::downgrade(&shared),
                );
                match &self.runtime {
                    Some(rt) => rt.spawn(task),
                    None => tokio::spawn(task),
                };
                Ok(shared)
            })
            .await
    }

    /// The values under `prefix`, in key order, each decoded once per revision by `decode` (the
    /// same `T` for a key every time: a different type decodes afresh); and the revision they
    /// are read at.
    pub async fn decoded<T, E>(
        &self,
        prefix: &str,
        decode: impl Fn(&KeyValue) -> Result<T, E>,
    ) -> Result<(Vec<Decoded<T>>, Revision), E>
    where
        T: Send + Sync + 'static,
        E: From<StoreError>,
    {
        if self.passes_through(prefix) {
            let (kvs, rev) = self.inner.range(prefix).await?;
            let out = kvs
                .iter()
                .map(|kv| {
                    Ok(Decoded {
                        key: kv.key.clone(),
                        value: Arc::new(decode(kv)?),
                        mod_revision: kv.mod_revision,
                    })
                })
                .collect::<Result<_, E>>()?;
            return Ok((out, rev));
        }
        let shared = self.shared().await?;
        let state = shared.state.read();
        let mut out = Vec::new();
        for (key, e) in state
            .kvs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            out.push(Decoded {
                key: key.clone(),
                value: e.value(&decode)?,
                mod_revision: e.kv.mod_revision,
            });
        }
        Ok((out, state.revision))
    }

    /// Bring `mirror` up to the cache's current revision: only the keys under its prefix that
    /// changed since its last refresh are decoded (once per revision, shared like `decoded`)
    /// and replaced or removed. A mirror never filled, or further behind than the cache's log
    /// of changes reaches, is filled again from everything under its prefix.
    pub async fn refresh<T, E>(
        &self,
        mirror: &mut Mirror<T>,
        decode: impl Fn(&KeyValue) -> Result<T, E>,
    ) -> Result<Refreshed<T>, E>
    where
        T: Send + Sync + 'static,
        E: From<StoreError>,
    {
        if self.passes_through(&mirror.prefix) {
            let (list, revision) = self.decoded(&mirror.prefix, decode).await?;
            mirror.items = list
                .into_iter()
                .map(|d| (d.key, (d.value, d.mod_revision)))
                .collect();
            mirror.revision = revision;
            return Ok(Refreshed::All);
        }
        let shared = self.shared().await?;
        let state = shared.state.read();
        let prefix = mirror.prefix.as_str();
        if mirror.revision == 0 || mirror.revision < state.log_floor {
            let mut items = BTreeMap::new();
            for (key, e) in state
                .kvs
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
            {
                items.insert(key.clone(), (e.value(&decode)?, e.kv.mod_revision));
            }
            mirror.items = items;
            mirror.revision = state.revision;
            return Ok(Refreshed::All);
        }
        let since = state.log.partition_point(|(r, _)| *r <= mirror.revision);
        let keys: BTreeSet<&String> = state
            .log
            .range(since..)
            .filter(|(_, k)| k.starts_with(prefix))
            .map(|(_, k)| k)
            .collect();
        let mut changed = BTreeMap::new();
        for key in keys {
            let old = match state.kvs.get(key) {
                Some(e) => mirror
                    .items
                    .insert(key.clone(), (e.value(&decode)?, e.kv.mod_revision)),
                None => mirror.items.remove(key),
            };
            changed.insert(key.clone(), old.map(|(v, _)| v));
        }
        mirror.revision = state.revision;
        Ok(Refreshed::Keys(changed))
    }

    /// A stamp of what is under `prefix`: how many keys, and the newest modification revision
    /// among them. Any write under the prefix changes it (a put raises the revision, a delete
    /// lowers the count or, with a put, raises the revision), so a reader that kept what it
    /// derived from the keys can tell, without copying a key, whether it still holds. Read at
    /// the cache's current revision, like `decoded`.
    pub async fn stamp(&self, prefix: &str) -> Result<(usize, Revision), StoreError> {
        if self.passes_through(prefix) {
            let (kvs, _) = self.inner.range(prefix).await?;
            let newest = kvs.iter().map(|kv| kv.mod_revision).max().unwrap_or(0);
            return Ok((kvs.len(), newest));
        }
        let shared = self.shared().await?;
        let state = shared.state.read();
        let mut count = 0;
        let mut newest = 0;
        for (_, e) in state
            .kvs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            count += 1;
            newest = newest.max(e.kv.mod_revision);
        }
        Ok((count, newest))
    }

    /// The revision the cache has applied, changing with every transaction it applies: a
    /// controller waits on it to learn that anything changed (loads the cache if need be).
    pub async fn revisions(&self) -> Result<watch::Receiver<Revision>, StoreError> {
        Ok(self.shared().await?.applied.subscribe())
    }

    /// Whether reads may be behind the store: its watch broke and loading it again fails (an
    /// etcd without a quorum). The API says so on every answer meanwhile.
    pub fn is_stale(&self) -> bool {
        self.shared
            .get()
            .is_some_and(|s| s.stale.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Wait until the cache has applied `revision`.
    pub async fn caught_up(&self, revision: Revision) -> Result<(), StoreError> {
        match self.shared.get() {
            Some(shared) => applied(shared, revision).await,
            None => Ok(()), // not loaded yet: the load will see the write
        }
    }
}

/// Wait until `shared` has applied `revision`.
async fn applied(shared: &Shared, revision: Revision) -> Result<(), StoreError> {
    let mut rx = shared.applied.subscribe();
    match tokio::time::timeout(APPLY_TIMEOUT, rx.wait_for(|r| *r >= revision)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(StoreError::Closed),
        Err(_) => Err(StoreError::Backend(format!(
            "the store's watch did not deliver revision {revision} within {APPLY_TIMEOUT:?}"
        ))),
    }
}

/// Everything but the left-out prefixes, at one revision.
async fn load(inner: &dyn Store, skip: &[String]) -> Result<State, StoreError> {
    let (kvs, revision) = inner.range("").await?;
    let kvs = kvs
        .into_iter()
        .filter(|kv| !skip.iter().any(|s| kv.key.starts_with(s.as_str())))
        .map(|kv| (kv.key.clone(), Entry::new(kv)))
        .collect();
    Ok(State::loaded(revision, kvs))
}

/// Keep the cache current from the store's watch, for as long as the cache lives.
async fn follow(inner: Arc<dyn Store>, skip: Vec<String>, shared: Weak<Shared>) {
    loop {
        let from = match shared.upgrade() {
            Some(s) => s.state.read().revision + 1,
            None => return,
        };
        let mut stream: WatchStream = match inner.watch("", from).await {
            Ok(s) => s,
            Err(StoreError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "store cache: cannot watch; loading everything again");
                if !reload(&*inner, &skip, &shared).await {
                    return;
                }
                continue;
            }
        };
        while let Some(batch) = stream.next().await {
            let Some(s) = shared.upgrade() else {
                return;
            };
            match batch {
                Ok(b) => apply(&s, &skip, b),
                Err(StoreError::Closed) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "store cache: the watch broke; loading everything again");
                    s.stale.store(true, std::sync::atomic::Ordering::Relaxed);
                    drop(s);
                    if !reload(&*inner, &skip, &shared).await {
                        return;
                    }
                    break;
                }
            }
        }
    }
}

/// Load everything again (the watch cannot resume); false when the cache or the store is gone.
async fn reload(inner: &dyn Store, skip: &[String], shared: &Weak<Shared>) -> bool {
    loop {
        match load(inner, skip).await {
            Ok(state) => {
                let Some(s) = shared.upgrade() else {
                    return false;
                };
                let revision = state.revision;
                *s.state.write() = state;
                s.applied.send_replace(revision);
                s.stale.store(false, std::sync::atomic::Ordering::Relaxed);
                return true;
            }
            Err(StoreError::Closed) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "store cache: cannot load; retrying");
                if shared.strong_count() == 0 {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn apply(shared: &Shared, skip: &[String], batch: WatchBatch) {
    let mut state = shared.state.write();
    if batch.revision <= state.revision {
        return; // seen (a reload overtook the stream)
    }
    for ev in batch.events {
        if skip.iter().any(|s| ev.kv.key.starts_with(s.as_str())) {
            continue;
        }
        let key = ev.kv.key.clone();
        match ev.kind {
            EventKind::Put => {
                state.kvs.insert(key.clone(), Entry::new(ev.kv));
            }
            EventKind::Delete => {
                state.kvs.remove(&key);
            }
        }
        state.logged(batch.revision, key);
    }
    state.revision = batch.revision;
    drop(state);
    shared.applied.send_replace(batch.revision);
}

#[async_trait::async_trait]
impl Store for CachedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        if !self.cached_key(key) {
            return self.inner.get(key).await;
        }
        let shared = self.shared().await?;
        let state = shared.state.read();
        Ok(state.kvs.get(key).map(|e| e.kv.clone()))
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        if self.passes_through(prefix) {
            return self.inner.range(prefix).await;
        }
        let shared = self.shared().await?;
        let state = shared.state.read();
        let kvs = state
            .kvs
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.kv.clone())
            .collect();
        Ok((kvs, state.revision))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let r = self.inner.txn(txn).await?;
        self.caught_up(r.revision).await?;
        Ok(r)
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let stream = self.inner.watch(prefix, from).await?;
        if self.passes_through(prefix) {
            return Ok(stream); // its keys are read from the store too
        }
        // A batch is handed on only once the cache has applied its revision: whoever reads
        // after an event (a long poll reading the record that changed) sees at least that
        // write, never the value from before it.
        let shared = self.shared().await?.clone();
        Ok(stream
            .then(move |batch| {
                let shared = shared.clone();
                async move {
                    let b = batch?;
                    applied(&shared, b.revision).await?;
                    Ok(b)
                }
            })
            .boxed())
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.lease_grant(ttl).await
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.lease_keep_alive(lease).await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let r = self.inner.lease_revoke(lease).await;
        if r.is_ok() {
            let rev = self.inner.current_revision().await?;
            self.caught_up(rev).await?;
        }
        r
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Op, SqliteStore};

    fn cached() -> CachedStore {
        CachedStore::new(
            Arc::new(SqliteStore::open_in_memory().expect("store")),
            &["/audit/"],
        )
    }

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        crate::conformance::run_all(&cached()).await;
    }

    #[tokio::test]
    async fn reads_its_own_writes_and_decodes_once_per_revision() {
        let c = cached();
        c.put("/a/1", b"1".to_vec()).await.unwrap();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let decode = |kv: &KeyValue| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, StoreError>(String::from_utf8(kv.value.clone()).unwrap())
        };
        let (v, _) = c.decoded("/a/", decode).await.unwrap();
        assert_eq!(*v[0].value, "1");
        assert_eq!(v[0].key, "/a/1");
        let (_, _) = c.decoded("/a/", decode).await.unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        // A write is visible as soon as `txn` returns, and decoded afresh.
        let r = c
            .txn(Txn::new().then([
                Op::put("/a/1", b"2".to_vec()),
                Op::put("/a/2", b"3".to_vec()),
            ]))
            .await
            .unwrap();
        let (v, rev) = c.decoded("/a/", decode).await.unwrap();
        assert_eq!(rev, r.revision);
        let got: Vec<&str> = v.iter().map(|d| d.value.as_str()).collect();
        assert_eq!(got, ["2", "3"]);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 3);
        // Deletes too.
        c.delete("/a/1").await.unwrap();
        assert!(c.get("/a/1").await.unwrap().is_none());
        assert_eq!(c.range("/a/").await.unwrap().0.len(), 1);
    }

    #[tokio::test]
    async fn a_mirror_is_refreshed_with_the_keys_that_changed_only() {
        let c = cached();
        c.put("/a/1", b"1".to_vec()).await.unwrap();
        c.put("/a/2", b"2".to_vec()).await.unwrap();
        c.put("/b/1", b"x".to_vec()).await.unwrap();
        let decode =
            |kv: &KeyValue| Ok::<_, StoreError>(String::from_utf8(kv.value.clone()).unwrap());
        let values = |m: &Mirror<String>| -> Vec<(String, String)> {
            m.items()
                .iter()
                .map(|(k, (v, _))| (k.clone(), (**v).clone()))
                .collect()
        };
        let mut m = Mirror::new("/a/");
        assert_eq!(c.refresh(&mut m, decode).await.unwrap(), Refreshed::All);
        assert_eq!(
            values(&m),
            [("/a/1".into(), "1".into()), ("/a/2".into(), "2".into())]
        );
        let kept = m.items()["/a/2"].0.clone();
        // Nothing changed: nothing handed over, the same values.
        assert!(c.refresh(&mut m, decode).await.unwrap().is_empty());
        // A put, a delete, a new key, and a write elsewhere (not reported).
        c.txn(Txn::new().then([
            Op::put("/a/1", b"one".to_vec()),
            Op::delete("/a/2"),
            Op::put("/a/3", b"3".to_vec()),
            Op::put("/b/1", b"y".to_vec()),
        ]))
        .await
        .unwrap();
        let Refreshed::Keys(changed) = c.refresh(&mut m, decode).await.unwrap() else {
            panic!("a mirror one write behind is not filled again");
        };
        let was: Vec<(&str, Option<&str>)> = changed
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref().map(String::as_str)))
            .collect();
        assert_eq!(
            was,
            [("/a/1", Some("1")), ("/a/2", Some("2")), ("/a/3", None)]
        );
        assert_eq!(
            values(&m),
            [("/a/1".into(), "one".into()), ("/a/3".into(), "3".into())]
        );
        assert_eq!(m.revision(), c.current_revision().await.unwrap());
        // A value that did not change is the same `Arc` (not decoded again).
        c.put("/a/2", b"2".to_vec()).await.unwrap();
        c.refresh(&mut m, decode).await.unwrap();
        c.put("/a/1", b"1".to_vec()).await.unwrap();
        c.refresh(&mut m, decode).await.unwrap();
        assert!(
            !Arc::ptr_eq(&kept, &m.items()["/a/2"].0),
            "a rewritten key is decoded again"
        );
        let three = m.items()["/a/3"].0.clone();
        c.put("/a/1", b"2".to_vec()).await.unwrap();
        c.refresh(&mut m, decode).await.unwrap();
        assert!(Arc::ptr_eq(&three, &m.items()["/a/3"].0));
    }

    #[tokio::test]
    async fn a_mirror_further_behind_than_the_log_is_filled_again() {
        let c = cached();
        let decode =
            |kv: &KeyValue| Ok::<_, StoreError>(String::from_utf8(kv.value.clone()).unwrap());
        let mut m = Mirror::new("/a/");
        c.put("/a/gone", b"0".to_vec()).await.unwrap();
        c.refresh(&mut m, decode).await.unwrap();
        c.delete("/a/gone").await.unwrap();
        for i in 0..LOG_CAP + 2 {
            c.put(&format!("/a/{i:02}"), i.to_string().into_bytes())
                .await
                .unwrap();
        }
        assert_eq!(c.refresh(&mut m, decode).await.unwrap(), Refreshed::All);
        assert_eq!(m.items().len(), LOG_CAP + 2);
        assert!(
            !m.items().contains_key("/a/gone"),
            "a delete the log lost is not missed"
        );
        assert_eq!(*m.items()["/a/03"].0, "3");
    }

    /// A store whose watches of the whole key space (the cache's own) deliver late.
    struct LaggingFollow(SqliteStore);

    #[async_trait::async_trait]
    impl Store for LaggingFollow {
        async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
            self.0.get(key).await
        }
        async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
            self.0.range(prefix).await
        }
        async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
            self.0.txn(txn).await
        }
        async fn current_revision(&self) -> Result<Revision, StoreError> {
            self.0.current_revision().await
        }
        async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
            let stream = self.0.watch(prefix, from).await?;
            if !prefix.is_empty() {
                return Ok(stream);
            }
            Ok(stream
                .then(|b| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    b
                })
                .boxed())
        }
        async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
            self.0.lease_grant(ttl).await
        }
        async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
            self.0.lease_keep_alive(lease).await
        }
        async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
            self.0.lease_revoke(lease).await
        }
    }

    /// The long poll of a deployment (issue 9) stalled on this: the watch told of a write the
    /// cache had not applied yet, so reading the record gave the value from before it.
    #[tokio::test]
    async fn a_watch_event_is_readable_from_the_cache_when_it_arrives() {
        let inner = Arc::new(LaggingFollow(SqliteStore::open_in_memory().expect("store")));
        let c = CachedStore::new(inner.clone(), &["/audit/"]);
        c.put("/d/1", b"old".to_vec()).await.unwrap();
        assert_eq!(c.get("/d/1").await.unwrap().expect("the key").value, b"old");
        let from = c.current_revision().await.unwrap() + 1;
        let mut w = c.watch("/d/", from).await.unwrap();
        // Written behind the cache's back: nothing waits for the cache to apply it.
        inner.put("/d/1", b"new".to_vec()).await.unwrap();
        let b = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("no watch event within 5 s")
            .expect("the watch ended")
            .expect("watch error");
        assert_eq!(b.events[0].kv.value, b"new");
        let kv = c.get("/d/1").await.unwrap().expect("the key");
        assert_eq!(
            kv.value, b"new",
            "the cache answered with the value before the event"
        );
    }

    #[tokio::test]
    async fn a_stamp_moves_with_every_write_under_its_prefix_and_only_then() {
        let c = cached();
        c.put("/a/1", b"1".to_vec()).await.unwrap();
        c.put("/a/2", b"2".to_vec()).await.unwrap();
        let s0 = c.stamp("/a/").await.unwrap();
        assert_eq!(s0.0, 2);
        c.put("/b/1", b"x".to_vec()).await.unwrap();
        assert_eq!(c.stamp("/a/").await.unwrap(), s0, "a write elsewhere");
        c.put("/a/1", b"1".to_vec()).await.unwrap();
        let s1 = c.stamp("/a/").await.unwrap();
        assert_ne!(s1, s0, "a put, even of the same value");
        c.delete("/a/2").await.unwrap();
        let s2 = c.stamp("/a/").await.unwrap();
        assert_ne!(s2, s1, "a delete");
        c.txn(Txn::new().then([Op::delete("/a/1"), Op::put("/a/3", b"3".to_vec())]))
            .await
            .unwrap();
        assert_ne!(c.stamp("/a/").await.unwrap(), s2, "a delete and a put");
        assert_eq!(
            c.stamp("/audit/").await.unwrap(),
            (0, 0),
            "left out: from the store"
        );
    }

    #[tokio::test]
    async fn left_out_prefixes_are_read_from_the_store() {
        let c = cached();
        c.put("/audit/1", b"x".to_vec()).await.unwrap();
        c.put("/b", b"y".to_vec()).await.unwrap();
        assert_eq!(c.range("/audit/").await.unwrap().0.len(), 1);
        // A range that spans a left-out prefix goes to the store as a whole.
        assert_eq!(c.range("/").await.unwrap().0.len(), 2);
        let shared = c.shared().await.unwrap();
        assert!(!shared.state.read().kvs.contains_key("/audit/1"));
    }

    #[tokio::test]
    async fn a_write_behind_its_back_is_seen_once_the_watch_delivers_it() {
        let inner: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().expect("store"));
        let c = CachedStore::new(inner.clone(), &[]);
        assert!(c.get("/k").await.unwrap().is_none());
        let rev = inner.put("/k", b"v".to_vec()).await.unwrap();
        c.caught_up(rev).await.unwrap();
        assert_eq!(c.get("/k").await.unwrap().unwrap().value, b"v");
    }
}
