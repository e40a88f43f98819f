//! Embedded SQLite backend: one OS thread owns the connection, async callers talk to it over a channel.
//!
//! Layout:
//! - `kv(key, value, create_rev, mod_rev, version, lease)`: the current state;
//! - `changelog(rev, key, kind, value, create_rev, version, lease)`: one row per key changed by a
//!   revision, kept for the last N revisions so that watchers can replay history;
//! - `leases(id, ttl_ms)`: granted leases (deadlines live in memory, a reopened store gives every
//!   lease a full fresh TTL, as etcd does after a restart);
//! - `meta(revision, compacted)`: the global revision and the highest revision dropped from the
//!   changelog.
//!
//! Every transaction is one SQLite transaction (WAL journal, `synchronous=FULL`): compares, the
//! branch, the revision bump and the changelog rows commit together, and the batch is published to
//! live watchers only after the commit. The same thread revokes expired leases: it waits for the
//! next request with a timeout equal to the nearest lease deadline.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{broadcast, oneshot};

use crate::{
    CmpOp, Compare, EventKind, KeyValue, LeaseId, Op, OpResponse, Revision, Store, StoreError, Txn,
    TxnResponse, WatchBatch, WatchEvent, WatchStream,
};

/// Revisions of change history kept for watchers unless configured otherwise.
pub const DEFAULT_HISTORY: u64 = 100_000;
/// Batches buffered per live watcher before it falls back to re-reading the changelog.
pub const DEFAULT_WATCH_BUFFER: usize = 1024;
/// Revisions read from the changelog per round trip while a watcher catches up.
const HISTORY_PAGE: u64 = 512;
/// Delay before retrying a lease revocation that failed (e.g. a full disk).
const EXPIRY_RETRY: Duration = Duration::from_secs(1);
const SCHEMA_VERSION: i64 = 1;

/// Tuning knobs of a [`SqliteStore`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Keep the changelog's last `history` revisions (at least 1); older ones are compacted on write.
    pub history: u64,
    /// Capacity of the live broadcast buffer; a watcher that falls further behind re-reads the
    /// changelog instead of losing events.
    pub watch_buffer: usize,
}

impl Default for SqliteOptions {
    fn default() -> SqliteOptions {
        SqliteOptions {
            history: DEFAULT_HISTORY,
            watch_buffer: DEFAULT_WATCH_BUFFER,
        }
    }
}

/// The embedded store. Cloning is cheap: clones share one connection thread.
///
/// A database file must be opened by one `SqliteStore` at a time (one writer process): watchers
/// only see the writes made through the store they watch.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

type Job = Box<dyn FnOnce(&mut Engine) + Send>;

struct Inner {
    label: String,
    /// `None` only while dropping.
    jobs: Option<std_mpsc::Sender<Job>>,
    events: broadcast::Sender<Arc<WatchBatch>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel stops the thread; joining makes a reopen right after a drop see a
        // closed connection (every acknowledged commit is durable either way).
        self.jobs = None;
        let handle = self.thread.lock().take();
        if let Some(handle) = handle
            && handle.thread().id() != std::thread::current().id()
        {
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.label)
            .finish_non_exhaustive()
    }
}

/// Make the database file (if missing) and its `-wal` and `-shm` files (if there) readable and
/// writable by their owner only (0600): the store holds token hashes, keys and the audit trail.
fn private_files(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Open (or create, with its parent directory) the store at `path` with default options.
    ///
    /// Blocking (file I/O and schema setup); call it at startup or from `spawn_blocking`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, SqliteOptions::default())
    }

    pub fn open_with(path: &Path, options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let label = path.display().to_string();
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Backend(format!("creating directory {}: {e}", dir.display()))
            })?;
        }
        private_files(path).map_err(|e| StoreError::Backend(format!("{label}: {e}")))?;
        let conn = Connection::open(path).map_err(backend("opening database", &label))?;
        let store = SqliteStore::start(conn, label.clone(), options)?;
        // The write-ahead log and its index exist now: private too (SQLite makes them with the
        // database file's mode; a store made by an older Wharf had 0644).
        private_files(path).map_err(|e| StoreError::Backend(format!("{label}: {e}")))?;
        Ok(store)
    }

    /// A store that lives in memory only (tests, dry runs).
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        SqliteStore::open_in_memory_with(SqliteOptions::default())
    }

    pub fn open_in_memory_with(options: SqliteOptions) -> Result<SqliteStore, StoreError> {
        let label = ":memory:".to_string();
        let conn = Connection::open_in_memory().map_err(backend("opening database", &label))?;
        SqliteStore::start(conn, label, options)
    }

    /// Keep the changelog's last `n` revisions (at least 1) from now on.
    pub fn with_history(self, n: u64) -> SqliteStore {
        // Queued before any later request, so it applies to every write that follows. If the
        // thread is gone the store is closed and every later call reports it.
        let _ = self.send(Box::new(move |engine: &mut Engine| {
            engine.history = n.max(1)
        }));
        self
    }

    fn start(
        conn: Connection,
        label: String,
        options: SqliteOptions,
    ) -> Result<SqliteStore, StoreError> {
        let (events, _) = broadcast::channel(options.watch_buffer.max(1));
        let mut engine = Engine::new(conn, label.clone(), events.clone(), options.history.max(1))?;
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("wharf-store".into())
            .spawn(move || engine.run(rx))
            .map_err(|e| StoreError::Backend(format!("spawning the store thread: {e}")))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                label,
                jobs: Some(jobs),
                events,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        let jobs = self.inner.jobs.as_ref().ok_or(StoreError::Closed)?;
        jobs.send(job).map_err(|_| StoreError::Closed)
    }

    /// Run `f` on the store thread and await its result.
    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Engine) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.send(Box::new(move |engine: &mut Engine| {
            // The caller may have given up waiting; the work is done either way.
            let _ = tx.send(f(engine));
        }))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = key.to_string();
        self.call(move |e| get_kv(&e.conn, &e.label, &key)).await
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let prefix = prefix.to_string();
        self.call(move |e| {
            let label = e.label.clone();
            let tx = e
                .conn
                .transaction()
                .map_err(backend("beginning range", &label))?;
            let kvs = range_kv(&tx, &label, &prefix)?;
            let (rev, _) = read_meta(&tx, &label)?;
            tx.commit().map_err(backend("ending range", &label))?;
            Ok((kvs, rev))
        })
        .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.call(move |e| e.txn(txn)).await
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.call(|e| Ok(read_meta(&e.conn, &e.label)?.0)).await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        // Subscribe before reading anything: every batch committed after this point is either in
        // the history read below or arrives on `rx` (possibly both; duplicates are skipped).
        let rx = self.inner.events.subscribe();
        let (next, catching_up) = if from == 0 {
            (self.current_revision().await? + 1, false)
        } else {
            let compacted = self.call(|e| Ok(read_meta(&e.conn, &e.label)?.1)).await?;
            if from <= compacted {
                return Err(StoreError::Compacted {
                    requested: from,
                    oldest: compacted + 1,
                });
            }
            (from, true)
        };
        let state = WatchState {
            store: Arc::downgrade(&self.inner),
            rx,
            prefix: prefix.to_string(),
            next,
            catching_up,
            queue: VecDeque::new(),
            finished: false,
        };
        Ok(futures::stream::unfold(state, WatchState::step).boxed())
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.call(move |e| e.lease_grant(ttl)).await
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.call(move |e| e.lease_keep_alive(lease)).await
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.call(move |e| e.lease_revoke(lease)).await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.call(move |e| e.compact_to(revision)).await
    }
}

/// The state of one watch stream. It holds the store weakly: an open watch does not keep a
/// dropped store alive, it ends with `StoreError::Closed` instead.
struct WatchState {
    store: Weak<Inner>,
    rx: broadcast::Receiver<Arc<WatchBatch>>,
    prefix: String,
    /// Every revision below `next` has been delivered or did not concern this watcher.
    next: Revision,
    /// Read the changelog from `next` before listening to live batches again.
    catching_up: bool,
    queue: VecDeque<WatchBatch>,
    finished: bool,
}

impl WatchState {
    async fn step(mut self) -> Option<(Result<WatchBatch, StoreError>, WatchState)> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(batch) = self.queue.pop_front() {
                return Some((Ok(batch), self));
            }
            if self.catching_up {
                let Some(inner) = self.store.upgrade() else {
                    return self.fail(StoreError::Closed);
                };
                let store = SqliteStore { inner };
                let (prefix, from) = (self.prefix.clone(), self.next);
                let page = store.call(move |e| e.history(&prefix, from)).await;
                drop(store);
                match page {
                    Ok(page) => {
                        self.queue.extend(page.batches);
                        self.next = self.next.max(page.scanned_to + 1);
                        if page.scanned_to >= page.head {
                            self.catching_up = false;
                        }
                    }
                    Err(e) => return self.fail(e),
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(batch) => {
                    if batch.revision < self.next {
                        continue;
                    }
                    self.next = batch.revision + 1;
                    let events: Vec<WatchEvent> = batch
                        .events
                        .iter()
                        .filter(|ev| ev.kv.key.starts_with(&self.prefix))
                        .cloned()
                        .collect();
                    if !events.is_empty() {
                        return Some((
                            Ok(WatchBatch {
                                revision: batch.revision,
                                events,
                            }),
                            self,
                        ));
                    }
                }
                // Batches were dropped from the buffer: the changelog still has them.
                Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => return self.fail(StoreError::Closed),
            }
        }
    }

    fn fail(mut self, e: StoreError) -> Option<(Result<WatchBatch, StoreError>, WatchState)> {
        self.finished = true;
        Some((Err(e), self))
    }
}

struct HistoryPage {
    /// Batches with revision in `from..=scanned_to` having events under the prefix.
    batches: Vec<WatchBatch>,
    scanned_to: Revision,
    /// The store revision when the page was read.
    head: Revision,
}

struct LeaseState {
    ttl: Duration,
    deadline: Instant,
}

/// Owned by the store thread.
struct Engine {
    conn: Connection,
    label: String,
    events: broadcast::Sender<Arc<WatchBatch>>,
    leases: HashMap<LeaseId, LeaseState>,
    history: u64,
}

impl Engine {
    fn new(
        mut conn: Connection,
        label: String,
        events: broadcast::Sender<Arc<WatchBatch>>,
        history: u64,
    ) -> Result<Engine, StoreError> {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(backend("enabling the WAL journal", &label))?;
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            return Err(StoreError::Backend(format!(
                "enabling the WAL journal in {label}: journal mode is {mode}"
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(backend("setting synchronous=FULL", &label))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(backend("setting busy timeout", &label))?;
        // A damaged file is refused here, with a clear error, rather than failing some write
        // later on.
        quick_check(&conn, &label)?;
        let tx = begin(&mut conn, "beginning schema setup", &label)?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(backend("reading schema version", &label))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Backend(format!(
                "opening {label}: schema version {version} is newer than supported {SCHEMA_VERSION}"
            )));
        }
        tx.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (
                key TEXT PRIMARY KEY NOT NULL,
                value BLOB NOT NULL,
                create_rev INTEGER NOT NULL,
                mod_rev INTEGER NOT NULL,
                version INTEGER NOT NULL,
                lease INTEGER
            ) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS kv_lease ON kv (lease) WHERE lease IS NOT NULL;
            CREATE TABLE IF NOT EXISTS changelog (
                rev INTEGER NOT NULL,
                key TEXT NOT NULL,
                kind INTEGER NOT NULL,
                value BLOB NOT NULL,
                create_rev INTEGER NOT NULL,
                version INTEGER NOT NULL,
                lease INTEGER,
                PRIMARY KEY (rev, key)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS leases (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                ttl_ms INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS meta (
                id INTEGER PRIMARY KEY CHECK (id = 0),
                revision INTEGER NOT NULL,
                compacted INTEGER NOT NULL
            );
            INSERT OR IGNORE INTO meta (id, revision, compacted) VALUES (0, 0, 0);",
        )
        .map_err(backend("creating the schema", &label))?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(backend("writing schema version", &label))?;
        tx.commit()
            .map_err(backend("committing schema setup", &label))?;

        // Every persisted lease gets a full fresh TTL.
        let now = Instant::now();
        let mut leases = HashMap::new();
        {
            let mut stmt = conn
                .prepare("SELECT id, ttl_ms FROM leases")
                .map_err(backend("loading leases", &label))?;
            let rows = stmt
                .query_map([], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, u64>(1)?)))
                .map_err(backend("loading leases", &label))?;
            for row in rows {
                let (id, ttl_ms) = row.map_err(backend("loading leases", &label))?;
                let ttl = Duration::from_millis(ttl_ms);
                leases.insert(
                    id,
                    LeaseState {
                        ttl,
                        deadline: now + ttl,
                    },
                );
            }
        }
        tracing::debug!(store = %label, leases = leases.len(), "store opened");
        Ok(Engine {
            conn,
            label,
            events,
            leases,
            history,
        })
    }

    fn run(&mut self, rx: std_mpsc::Receiver<Job>) {
        loop {
            let next = self.leases.values().map(|l| l.deadline).min();
            let job = match next {
                None => rx
                    .recv()
                    .map_err(|_| std_mpsc::RecvTimeoutError::Disconnected),
                Some(deadline) => {
                    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                }
            };
            match job {
                Ok(job) => {
                    // Expire first, so no request ever sees a lease past its deadline.
                    self.expire_due();
                    job(self);
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => self.expire_due(),
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        tracing::debug!(store = %self.label, "store thread stopped");
    }

    fn expire_due(&mut self) {
        let now = Instant::now();
        let mut due: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        for id in due {
            match self.lease_revoke(id) {
                Ok(()) | Err(StoreError::LeaseNotFound(_)) => {
                    tracing::debug!(store = %self.label, lease = id, "lease expired");
                }
                Err(e) => {
                    tracing::error!(store = %self.label, lease = id, error = %e, "revoking an expired lease failed; retrying");
                    if let Some(l) = self.leases.get_mut(&id) {
                        l.deadline = now + EXPIRY_RETRY;
                    }
                }
            }
        }
    }

    fn publish(&self, batch: WatchBatch) {
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(Arc::new(batch));
    }

    fn txn(&mut self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let label = self.label.clone();
        let tx = begin(&mut self.conn, "beginning txn", &label)?;
        let (rev, _) = read_meta(&tx, &label)?;
        let new_rev = rev + 1;
        let mut succeeded = true;
        for c in &txn.compares {
            if !eval_compare(&tx, &label, c)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        let mut changes: BTreeMap<String, WatchEvent> = BTreeMap::new();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let resp = match op {
                Op::Put { key, value, lease } => {
                    if let Some(id) = lease
                        && !lease_exists(&tx, &label, *id)?
                    {
                        // Dropping `tx` rolls back whatever this txn already did.
                        return Err(StoreError::LeaseNotFound(*id));
                    }
                    let prev = get_kv(&tx, &label, key)?;
                    let kv = KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision: prev.as_ref().map_or(new_rev, |p| p.create_revision),
                        mod_revision: new_rev,
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        lease: *lease,
                    };
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO kv (key, value, create_rev, mod_rev, version, lease)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            kv.key,
                            kv.value,
                            kv.create_revision,
                            kv.mod_revision,
                            kv.version,
                            kv.lease
                        ])
                    })
                    .map_err(backend("writing key", &label))?;
                    changes.insert(
                        key.clone(),
                        WatchEvent {
                            kind: EventKind::Put,
                            kv,
                        },
                    );
                    OpResponse::Put { prev }
                }
                Op::Delete { key } => {
                    let deleted = if get_kv(&tx, &label, key)?.is_some() {
                        delete_key(&tx, &label, key)?;
                        changes.insert(key.clone(), delete_event(key, new_rev));
                        1
                    } else {
                        0
                    };
                    OpResponse::Delete { deleted }
                }
                Op::DeletePrefix { prefix } => {
                    let doomed = range_kv(&tx, &label, prefix)?;
                    for kv in &doomed {
                        delete_key(&tx, &label, &kv.key)?;
                        changes.insert(kv.key.clone(), delete_event(&kv.key, new_rev));
                    }
                    OpResponse::Delete {
                        deleted: doomed.len() as u64,
                    }
                }
                Op::Get { key } => OpResponse::Get(get_kv(&tx, &label, key)?),
                Op::Range { prefix } => OpResponse::Range(range_kv(&tx, &label, prefix)?),
            };
            responses.push(resp);
        }
        let batch = if changes.is_empty() {
            None
        } else {
            let events: Vec<WatchEvent> = changes.into_values().collect();
            record(&tx, &label, new_rev, &events)?;
            Some(WatchBatch {
                revision: new_rev,
                events,
            })
        };
        tx.commit().map_err(backend("committing txn", &label))?;
        let revision = if let Some(batch) = batch {
            self.publish(batch);
            self.compact_on_write(new_rev);
            new_rev
        } else {
            rev
        };
        Ok(TxnResponse {
            succeeded,
            revision,
            responses,
        })
    }

    /// Drop changelog revisions beyond the configured history, in batches of 1/16th of it so that
    /// most writes do not pay for a delete.
    fn compact_on_write(&mut self, revision: Revision) {
        let label = self.label.clone();
        let compacted = match read_meta(&self.conn, &label) {
            Ok((_, c)) => c,
            Err(e) => {
                tracing::warn!(store = %label, error = %e, "reading compaction state failed");
                return;
            }
        };
        let slack = (self.history / 16).max(1);
        if revision.saturating_sub(compacted) > self.history + slack
            && let Err(e) = self.compact_to(revision + 1 - self.history)
        {
            tracing::warn!(store = %label, error = %e, "compacting the changelog failed");
        }
    }

    /// Drop changelog revisions below `oldest` (clamped to the current revision).
    fn compact_to(&mut self, oldest: Revision) -> Result<(), StoreError> {
        let label = self.label.clone();
        let tx = begin(&mut self.conn, "beginning compaction", &label)?;
        let (rev, compacted) = read_meta(&tx, &label)?;
        let target = oldest.min(rev).saturating_sub(1);
        if target <= compacted {
            return Ok(());
        }
        tx.execute("DELETE FROM changelog WHERE rev <= ?1", params![target])
            .map_err(backend("compacting changelog", &label))?;
        tx.execute(
            "UPDATE meta SET compacted = ?1 WHERE id = 0",
            params![target],
        )
        .map_err(backend("compacting changelog", &label))?;
        tx.commit()
            .map_err(backend("committing compaction", &label))?;
        Ok(())
    }

    fn history(&mut self, prefix: &str, from: Revision) -> Result<HistoryPage, StoreError> {
        let label = self.label.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(backend("beginning history read", &label))?;
        let (head, compacted) = read_meta(&tx, &label)?;
        if from <= compacted {
            return Err(StoreError::Compacted {
                requested: from,
                oldest: compacted + 1,
            });
        }
        if from > head {
            return Ok(HistoryPage {
                batches: Vec::new(),
                scanned_to: head,
                head,
            });
        }
        let upto = head.min(from + HISTORY_PAGE - 1);
        let end = prefix_end(prefix);
        let sql = if end.is_some() {
            "SELECT rev, key, kind, value, create_rev, version, lease FROM changelog
             WHERE rev >= ?1 AND rev <= ?2 AND key >= ?3 AND key < ?4 ORDER BY rev, key"
        } else {
            "SELECT rev, key, kind, value, create_rev, version, lease FROM changelog
             WHERE rev >= ?1 AND rev <= ?2 AND key >= ?3 ORDER BY rev, key"
        };
        let mut batches: Vec<WatchBatch> = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(sql)
                .map_err(backend("reading changelog", &label))?;
            let map = |row: &rusqlite::Row<'_>| -> rusqlite::Result<WatchEvent> {
                let rev: Revision = row.get(0)?;
                let kind: i64 = row.get(2)?;
                Ok(WatchEvent {
                    kind: if kind == KIND_DELETE {
                        EventKind::Delete
                    } else {
                        EventKind::Put
                    },
                    kv: KeyValue {
                        key: row.get(1)?,
                        value: row.get(3)?,
                        create_revision: row.get(4)?,
                        mod_revision: rev,
                        version: row.get(5)?,
                        lease: row.get(6)?,
                    },
                })
            };
            let rows = match &end {
                Some(end) => stmt.query_map(params![from, upto, prefix, end], map),
                None => stmt.query_map(params![from, upto, prefix], map),
            }
            .map_err(backend("reading changelog", &label))?;
            for row in rows {
                let ev = row.map_err(backend("reading changelog", &label))?;
                match batches.last_mut() {
                    Some(b) if b.revision == ev.kv.mod_revision => b.events.push(ev),
                    _ => batches.push(WatchBatch {
                        revision: ev.kv.mod_revision,
                        events: vec![ev],
                    }),
                }
            }
        }
        tx.commit()
            .map_err(backend("ending history read", &label))?;
        Ok(HistoryPage {
            batches,
            scanned_to: upto,
            head,
        })
    }

    fn lease_grant(&mut self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let label = self.label.clone();
        let ttl_ms = u64::try_from(ttl.as_millis())
            .unwrap_or(u64::MAX)
            .min(i64::MAX as u64);
        self.conn
            .execute("INSERT INTO leases (ttl_ms) VALUES (?1)", params![ttl_ms])
            .map_err(backend("granting lease", &label))?;
        let id = self.conn.last_insert_rowid();
        let ttl = Duration::from_millis(ttl_ms);
        let deadline = Instant::now().checked_add(ttl).unwrap_or_else(far_future);
        self.leases.insert(id, LeaseState { ttl, deadline });
        Ok(id)
    }

    fn lease_keep_alive(&mut self, id: LeaseId) -> Result<(), StoreError> {
        let lease = self
            .leases
            .get_mut(&id)
            .ok_or(StoreError::LeaseNotFound(id))?;
        lease.deadline = Instant::now()
            .checked_add(lease.ttl)
            .unwrap_or_else(far_future);
        Ok(())
    }

    /// Delete the lease's keys in one revision (none if it has no keys) and the lease itself.
    fn lease_revoke(&mut self, id: LeaseId) -> Result<(), StoreError> {
        let label = self.label.clone();
        let tx = begin(&mut self.conn, "beginning lease revoke", &label)?;
        if !lease_exists(&tx, &label, id)? {
            self.leases.remove(&id);
            return Err(StoreError::LeaseNotFound(id));
        }
        let keys: Vec<String> = {
            let mut stmt = tx
                .prepare_cached("SELECT key FROM kv WHERE lease = ?1 ORDER BY key")
                .map_err(backend("listing lease keys", &label))?;
            let rows = stmt
                .query_map(params![id], |row| row.get(0))
                .map_err(backend("listing lease keys", &label))?;
            rows.collect::<Result<_, _>>()
                .map_err(backend("listing lease keys", &label))?
        };
        let mut batch = None;
        if !keys.is_empty() {
            let (rev, _) = read_meta(&tx, &label)?;
            let new_rev = rev + 1;
            tx.execute("DELETE FROM kv WHERE lease = ?1", params![id])
                .map_err(backend("deleting lease keys", &label))?;
            let events: Vec<WatchEvent> = keys.iter().map(|k| delete_event(k, new_rev)).collect();
            record(&tx, &label, new_rev, &events)?;
            batch = Some(WatchBatch {
                revision: new_rev,
                events,
            });
        }
        tx.execute("DELETE FROM leases WHERE id = ?1", params![id])
            .map_err(backend("deleting lease", &label))?;
        tx.commit()
            .map_err(backend("committing lease revoke", &label))?;
        self.leases.remove(&id);
        if let Some(batch) = batch {
            let rev = batch.revision;
            self.publish(batch);
            self.compact_on_write(rev);
        }
        Ok(())
    }
}

const KIND_PUT: i64 = 0;
const KIND_DELETE: i64 = 1;

fn far_future() -> Instant {
    // About 30 years: no lease with a representable TTL outlives this in practice.
    Instant::now() + Duration::from_secs(60 * 60 * 24 * 365 * 30)
}

/// Maps an SQLite error of `op` on the store `label` to a `StoreError`: a damaged database
/// (`SQLITE_CORRUPT`, `SQLITE_NOTADB`) is [`StoreError::Corrupt`], anything else `Backend`.
fn backend<'a>(op: &'static str, label: &'a str) -> impl Fn(rusqlite::Error) -> StoreError + 'a {
    move |e| {
        if is_corruption(&e) {
            StoreError::Corrupt {
                path: label.into(),
                detail: format!("{op}: {e}"),
            }
        } else {
            StoreError::Backend(format!("{op} in {label}: {e}"))
        }
    }
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// `PRAGMA quick_check`: the b-trees of every table and index are well formed (cheaper than
/// `integrity_check`, which also cross-checks indexes against tables). Problems it lists are
/// [`StoreError::Corrupt`].
fn quick_check(conn: &Connection, label: &str) -> Result<(), StoreError> {
    let problems: Vec<String> = {
        let mut stmt = conn
            .prepare("PRAGMA quick_check(5)")
            .map_err(backend("checking the database", label))?;
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(backend("checking the database", label))?;
        rows.collect::<Result<_, _>>()
            .map_err(backend("checking the database", label))?
    };
    if matches!(problems.as_slice(), [ok] if ok == "ok") {
        return Ok(());
    }
    // One line: SQLite's report is multi-line, headed by `*** in database main ***`.
    let report: Vec<&str> = problems
        .iter()
        .flat_map(|p| p.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("***"))
        .collect();
    Err(StoreError::Corrupt {
        path: label.into(),
        detail: format!("checking the database: {}", report.join("; ")),
    })
}

fn delete_event(key: &str, rev: Revision) -> WatchEvent {
    WatchEvent {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: key.to_string(),
            value: Vec::new(),
            create_revision: 0,
            mod_revision: rev,
            version: 0,
            lease: None,
        },
    }
}

/// Append `events` to the changelog as revision `rev` and make `rev` the store revision.
fn record(
    conn: &Connection,
    label: &str,
    rev: Revision,
    events: &[WatchEvent],
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO changelog (rev, key, kind, value, create_rev, version, lease)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(backend("appending to changelog", label))?;
    for ev in events {
        let kind = match ev.kind {
            EventKind::Put => KIND_PUT,
            EventKind::Delete => KIND_DELETE,
        };
        stmt.execute(params![
            rev,
            ev.kv.key,
            kind,
            ev.kv.value,
            ev.kv.create_revision,
            ev.kv.version,
            ev.kv.lease
        ])
        .map_err(backend("appending to changelog", label))?;
    }
    conn.execute("UPDATE meta SET revision = ?1 WHERE id = 0", params![rev])
        .map_err(backend("bumping revision", label))?;
    Ok(())
}

/// Begins a write transaction for `op` on the store `label`: `IMMEDIATE`, so it takes the write
/// lock at once.
fn begin<'c>(
    conn: &'c mut Connection,
    op: &'static str,
    label: &str,
) -> Result<rusqlite::Transaction<'c>, StoreError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend(op, label))
}

/// `(revision, compacted)`.
fn read_meta(conn: &Connection, label: &str) -> Result<(Revision, Revision), StoreError> {
    conn.prepare_cached("SELECT revision, compacted FROM meta WHERE id = 0")
        .and_then(|mut s| s.query_row([], |row| Ok((row.get(0)?, row.get(1)?))))
        .map_err(backend("reading revision", label))
}

fn row_to_kv(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyValue> {
    Ok(KeyValue {
        key: row.get(0)?,
        value: row.get(1)?,
        create_revision: row.get(2)?,
        mod_revision: row.get(3)?,
        version: row.get(4)?,
        lease: row.get(5)?,
    })
}

fn get_kv(conn: &Connection, label: &str, key: &str) -> Result<Option<KeyValue>, StoreError> {
    conn.prepare_cached(
        "SELECT key, value, create_rev, mod_rev, version, lease FROM kv WHERE key = ?1",
    )
    .and_then(|mut s| s.query_row(params![key], row_to_kv).optional())
    .map_err(backend("reading key", label))
}

fn range_kv(conn: &Connection, label: &str, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
    let end = prefix_end(prefix);
    let run = || -> rusqlite::Result<Vec<KeyValue>> {
        match &end {
            Some(end) => conn
                .prepare_cached(
                    "SELECT key, value, create_rev, mod_rev, version, lease FROM kv
                     WHERE key >= ?1 AND key < ?2 ORDER BY key",
                )?
                .query_map(params![prefix, end], row_to_kv)?
                .collect(),
            None => conn
                .prepare_cached(
                    "SELECT key, value, create_rev, mod_rev, version, lease FROM kv
                     WHERE key >= ?1 ORDER BY key",
                )?
                .query_map(params![prefix], row_to_kv)?
                .collect(),
        }
    };
    run().map_err(backend("reading range", label))
}

fn delete_key(conn: &Connection, label: &str, key: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM kv WHERE key = ?1")
        .and_then(|mut s| s.execute(params![key]))
        .map(|_| ())
        .map_err(backend("deleting key", label))
}

fn lease_exists(conn: &Connection, label: &str, id: LeaseId) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT 1 FROM leases WHERE id = ?1")
        .and_then(|mut s| s.exists(params![id]))
        .map_err(backend("reading lease", label))
}

fn eval_compare(conn: &Connection, label: &str, c: &Compare) -> Result<bool, StoreError> {
    let key = match c {
        Compare::Version(k, ..)
        | Compare::ModRevision(k, ..)
        | Compare::CreateRevision(k, ..)
        | Compare::Value(k, ..) => k,
    };
    let kv = get_kv(conn, label, key)?;
    Ok(compare_holds(kv.as_ref(), c))
}

/// Whether `c` holds for `kv` (`None`: the key does not exist).
pub(crate) fn compare_holds(kv: Option<&KeyValue>, c: &Compare) -> bool {
    fn cmp<T: Ord + ?Sized>(actual: &T, op: CmpOp, target: &T) -> bool {
        match op {
            CmpOp::Equal => actual == target,
            CmpOp::NotEqual => actual != target,
            CmpOp::Less => actual < target,
            CmpOp::Greater => actual > target,
        }
    }
    match c {
        Compare::Version(_, op, t) => cmp(&kv.map_or(0, |kv| kv.version), *op, t),
        Compare::ModRevision(_, op, t) => cmp(&kv.map_or(0, |kv| kv.mod_revision), *op, t),
        Compare::CreateRevision(_, op, t) => cmp(&kv.map_or(0, |kv| kv.create_revision), *op, t),
        // As in etcd: comparing the value of a missing key never holds, whatever the operator.
        Compare::Value(_, op, t) => {
            kv.is_some_and(|kv| cmp(kv.value.as_slice(), *op, t.as_slice()))
        }
    }
}

/// The smallest string greater than every string starting with `prefix` (`None`: no bound).
/// SQLite compares TEXT bytewise and UTF-8 byte order is code point order, so
/// `prefix <= key < prefix_end(prefix)` selects exactly the keys starting with `prefix`.
fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(c) = chars.pop() {
        let next = match c as u32 {
            0xD7FF => Some('\u{E000}'),
            n => char::from_u32(n + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_bounds_exactly_the_prefix() {
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("a/"), Some("a0".to_string()));
        assert_eq!(prefix_end("a\u{10FFFF}"), Some("b".to_string()));
        assert_eq!(prefix_end("\u{D7FF}"), Some("\u{E000}".to_string()));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        let end = prefix_end("ab").unwrap();
        for k in ["ab", "ab\u{10FFFF}", "abz"] {
            assert!(k >= "ab" && k < end.as_str(), "{k}");
        }
        for k in ["aa", "ac", "b"] {
            assert!(!(k >= "ab" && k < end.as_str()), "{k}");
        }
    }

    #[test]
    fn missing_value_never_compares() {
        for op in [CmpOp::Equal, CmpOp::NotEqual, CmpOp::Less, CmpOp::Greater] {
            assert!(!compare_holds(
                None,
                &Compare::Value("k".into(), op, b"x".to_vec())
            ));
        }
        assert!(compare_holds(None, &Compare::missing("k")));
    }

    #[test]
    fn corruption_at_run_time_is_the_typed_error() {
        let sqlite = |code, msg: &str| {
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some(msg.into()))
        };
        let e = backend("appending to changelog", "/d/wharf.db")(sqlite(
            rusqlite::ffi::SQLITE_CORRUPT,
            "database disk image is malformed",
        ));
        match &e {
            StoreError::Corrupt { path, detail } => {
                assert_eq!(path, std::path::Path::new("/d/wharf.db"));
                assert_eq!(
                    detail,
                    "appending to changelog: database disk image is malformed"
                );
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(
            e.to_string()
                .starts_with("the store /d/wharf.db is corrupt (appending to changelog: "),
            "{e}"
        );
        let e = backend("reading key", "/d/wharf.db")(sqlite(
            rusqlite::ffi::SQLITE_NOTADB,
            "file is not a database",
        ));
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
        // Other failures stay backend errors.
        let e = backend("writing key", "/d/wharf.db")(sqlite(
            rusqlite::ffi::SQLITE_FULL,
            "database or disk is full",
        ));
        assert!(matches!(e, StoreError::Backend(_)), "{e:?}");
    }

    #[test]
    fn file_store_uses_wal_and_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let conn = Connection::open(&path).unwrap();
        let (events, _) = broadcast::channel(1);
        let engine = Engine::new(conn, "test".into(), events, 10).unwrap();
        let mode: String = engine
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        // 2 = FULL.
        let sync: i64 = engine
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2);
    }
}
