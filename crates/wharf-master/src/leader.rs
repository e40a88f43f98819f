//! Leadership among the masters that share a store (several on etcd, one on SQLite).
//!
//! Every master holds a lease (`LEASE_TTL`) and keeps it alive; on it hang its member record
//! (`/masters/members/{id}`, for `wharf master ls`) and the presence keys of the agents connected
//! to it. The first to create `/masters/leader` (its id, on its lease) leads: only the leader runs
//! the controllers that write (the deployer's steps, liveness, subnet allocation). Every other
//! master serves the API, takes agent streams and publishes desired states to its agents.
//!
//! **Fencing.** A term is the leader key's create revision. Every controller write goes through
//! [`Fenced`], which adds the compare "the leader key still has this create revision" to the
//! transaction: a deposed leader that still runs (cut off from etcd, paused) cannot write, even
//! after its lease expired and another took over. A leader also stops acting on its own once its
//! lease may have expired (no keep-alive answered for `LEASE_TTL` minus a margin). Each fenced
//! write also records its writer and term at `/masters/written-by`, so the store's history shows
//! whose writes landed.
//!
//! A master restarted with the same id (the data directory's `master.id`) takes the leader key
//! of its previous run over at once: that process is gone (the data directory is locked), and
//! waiting out its lease would hold every restart of `wharf up` for two seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wharf_store::{
    CmpOp, Compare, KeyValue, LeaseId, Op, OpResponse, Revision, Store, StoreError, Txn,
    TxnResponse, WatchStream,
};
use wharf_types::MasterInfo;

use crate::model::{decode, encode, keys};
use crate::{Error, Master};

/// A master's lease: how long after it dies (or is cut off from the store) another may lead.
/// etcd does not grant less than about 2 s with its default election timeout.
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// How often the lease is kept alive and leadership looked at.
const TICK: Duration = Duration::from_millis(250);
/// A leader stops acting this long before its lease could expire (clocks and a slow answer).
const MARGIN: Duration = Duration::from_millis(500);

/// One term of leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    /// The create revision of the leader key; 0: a lone master that needs no fence (tests).
    pub revision: Revision,
    /// When this master began to lead (nodes get a grace period to reconnect from then).
    pub since: Instant,
}

/// Whether this master leads, shared by the controllers, the API and the election.
#[derive(Debug)]
pub struct Role {
    id: String,
    term: watch::Sender<Option<Term>>,
    lease: watch::Sender<Option<LeaseId>>,
    /// Runs the election (several masters); a sole master always has the store.
    elected: bool,
}

impl Role {
    /// A master that leads without an election (in-process tests): no fence.
    pub fn sole(id: &str) -> Role {
        let (term, _) = watch::channel(Some(Term {
            revision: 0,
            since: Instant::now(),
        }));
        Role {
            id: id.to_string(),
            term,
            lease: watch::channel(None).0,
            elected: false,
        }
    }

    /// A master that leads only once [`run`] wins the election.
    pub fn elected(id: &str) -> Role {
        let (term, _) = watch::channel(None);
        Role {
            id: id.to_string(),
            term,
            lease: watch::channel(None).0,
            elected: true,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn term(&self) -> Option<Term> {
        *self.term.borrow()
    }

    pub fn leading(&self) -> bool {
        self.term().is_some()
    }

    /// Told of every change of term (leading, deposed).
    pub fn changes(&self) -> watch::Receiver<Option<Term>> {
        self.term.subscribe()
    }

    /// The lease this master's keys hang on (none before the election granted one).
    pub fn lease(&self) -> Option<LeaseId> {
        *self.lease.borrow()
    }

    /// Whether this master holds its lease in the store (a sole master always does): one that
    /// lost it cannot record what its agents report, so it lets them go to another master.
    pub fn has_store(&self) -> bool {
        !self.elected || self.lease().is_some()
    }

    /// Resolves when this master loses its lease (never for a sole master).
    pub async fn store_lost(&self) {
        if !self.elected {
            return std::future::pending().await;
        }
        let mut rx = self.lease.subscribe();
        let _ = rx.wait_for(Option::is_none).await;
    }

    fn set(&self, term: Option<Term>) {
        self.term.send_if_modified(|t| {
            let changed = t.map(|t| t.revision) != term.map(|t| t.revision);
            if changed {
                match term {
                    Some(t) => {
                        tracing::info!(master = %self.id, term = t.revision, "this master leads")
                    }
                    None => tracing::warn!(master = %self.id, "this master no longer leads"),
                }
                *t = term;
            }
            changed
        });
    }

    /// A fenced write found another term: stop acting at once.
    fn deposed(&self, revision: Revision) {
        if self.term().is_some_and(|t| t.revision == revision) {
            self.set(None);
        }
    }
}

/// The store as the controllers see it: every transaction is fenced on the current term.
pub struct Fenced {
    inner: Arc<dyn Store>,
    role: Arc<Role>,
}

impl Fenced {
    pub fn new(inner: Arc<dyn Store>, role: Arc<Role>) -> Fenced {
        Fenced { inner, role }
    }
}

#[async_trait::async_trait]
impl Store for Fenced {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.inner.range(prefix).await
    }
    async fn txn(&self, mut txn: Txn) -> Result<TxnResponse, StoreError> {
        let Some(term) = self.role.term() else {
            return Err(StoreError::Fenced(
                "this master does not lead: only the leader's controllers write".into(),
            ));
        };
        if term.revision == 0 {
            return self.inner.txn(txn).await;
        }
        txn.compares.push(Compare::CreateRevision(
            keys::LEADER.to_string(),
            CmpOp::Equal,
            term.revision,
        ));
        txn.failure.push(Op::Get {
            key: keys::LEADER.to_string(),
        });
        // Who wrote: the trail that shows a deposed leader's writes never landed.
        if !txn.success.is_empty() {
            txn.success.push(Op::put(
                keys::WRITTEN_BY,
                format!("{} term {}", self.role.id, term.revision),
            ));
        }
        let stamped = !txn.success.is_empty();
        let mut r = self.inner.txn(txn).await?;
        if r.succeeded && stamped {
            r.responses.pop();
        }
        if !r.succeeded {
            match r.responses.pop() {
                Some(OpResponse::Get(Some(kv))) if kv.create_revision == term.revision => {}
                _ => {
                    self.role.deposed(term.revision);
                    return Err(StoreError::Fenced(format!(
                        "this master's term {} is over: another master leads",
                        term.revision
                    )));
                }
            }
        }
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

/// Run the election for good: keep a lease, announce `info` on it, lead when the leader key is
/// free (or held by this master's previous run), step down when the lease may have run out.
pub async fn run(m: Master, info: MasterInfo) {
    let role = m.role.clone();
    loop {
        let lease = match m.store.lease_grant(LEASE_TTL).await {
            Ok(l) => l,
            Err(e) => {
                role.set(None);
                tracing::warn!(error = %e, "cannot take a lease in the store; retrying");
                tokio::time::sleep(TICK * 2).await;
                continue;
            }
        };
        role.lease.send_replace(Some(lease));
        let why = hold(&m, &info, lease).await;
        role.set(None);
        role.lease.send_replace(None);
        tracing::warn!(reason = %why, "this master's lease is lost; taking a new one");
        let _ = m.store.lease_revoke(lease).await;
    }
}

/// Keep `lease` alive and campaign on it until it may have expired; returns why it ended.
async fn hold(m: &Master, info: &MasterInfo, lease: LeaseId) -> String {
    let role = &m.role;
    // The moment the last keep-alive that was answered was sent: the lease lives at least
    // `LEASE_TTL` from then.
    let mut alive_from = Instant::now();
    let mut announced = false;
    let mut revisions = m.cache.revisions().await.ok();
    let mut last_beat = Instant::now() - TICK;
    loop {
        if last_beat.elapsed() >= TICK {
            let sent = Instant::now();
            last_beat = sent;
            // Bounded: a store that hangs must not keep a leader acting past its lease.
            match tokio::time::timeout(TICK * 2, m.store.lease_keep_alive(lease)).await {
                Ok(Ok(())) => alive_from = sent,
                Ok(Err(StoreError::LeaseNotFound(_))) => return "the lease expired".into(),
                Ok(Err(e)) => tracing::debug!(error = %e, "lease keep-alive failed"),
                Err(_) => tracing::debug!("lease keep-alive: no answer in time"),
            }
        }
        if alive_from.elapsed() + MARGIN >= LEASE_TTL {
            return format!("no keep-alive answered for {:?}", alive_from.elapsed());
        }
        if !announced {
            announced = matches!(
                tokio::time::timeout(TICK * 2, announce(m, info, lease)).await,
                Ok(Ok(()))
            );
        }
        match tokio::time::timeout(TICK * 2, campaign(m, lease)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "campaign failed"),
            Err(_) => tracing::debug!("campaign: no answer in time"),
        }
        if role.leading() && alive_from.elapsed() + MARGIN >= LEASE_TTL {
            role.set(None);
        }
        // Woken by any store change (the leader key vanishing) or the next beat.
        let wait = TICK.saturating_sub(last_beat.elapsed());
        match revisions.as_mut() {
            Some(r) => {
                tokio::select! {
                    _ = r.changed() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            None => tokio::time::sleep(wait).await,
        }
    }
}

async fn announce(m: &Master, info: &MasterInfo, lease: LeaseId) -> Result<(), Error> {
    let op = Op::Put {
        key: keys::master(&info.id),
        value: encode(info),
        lease: Some(lease),
    };
    m.store.txn(Txn::new().then([op])).await?;
    Ok(())
}

/// One look at the leader key: take it when free, take it over from this master's previous run,
/// follow another.
async fn campaign(m: &Master, lease: LeaseId) -> Result<(), Error> {
    let role = &m.role;
    let current = m.store.get(keys::LEADER).await?;
    match current {
        Some(kv) if kv.value == role.id.as_bytes() && kv.lease == Some(lease) => {
            if !role.leading() {
                role.set(Some(Term {
                    revision: kv.create_revision,
                    since: Instant::now(),
                }));
            }
        }
        Some(kv) if kv.value == role.id.as_bytes() => {
            // This master's previous run (or lease): delete, and take it on the next look.
            role.set(None);
            let txn = Txn::new()
                .when([Compare::unchanged_since(keys::LEADER, kv.mod_revision)])
                .then([Op::delete(keys::LEADER)]);
            m.store.txn(txn).await?;
        }
        Some(_) => role.set(None),
        None => {
            let txn = Txn::new()
                .when([Compare::missing(keys::LEADER)])
                .then([Op::Put {
                    key: keys::LEADER.to_string(),
                    value: role.id.as_bytes().to_vec(),
                    lease: Some(lease),
                }]);
            let r = m.store.txn(txn).await?;
            if r.succeeded {
                role.set(Some(Term {
                    revision: r.revision,
                    since: Instant::now(),
                }));
            }
        }
    }
    Ok(())
}

/// The masters announced in the store, and the id of the one that leads.
pub async fn masters(m: &Master) -> Result<(Vec<MasterInfo>, Option<String>), Error> {
    let (kvs, _) = m.store.range(keys::MASTERS).await?;
    let list = kvs
        .iter()
        .map(|kv| decode::<MasterInfo>(&kv.key, &kv.value))
        .collect::<Result<Vec<_>, _>>()?;
    let leader = m
        .store
        .get(keys::LEADER)
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
    Ok((list, leader))
}

/// The master id kept in `data_dir` (made on the first start).
pub fn master_id(data_dir: &std::path::Path) -> std::io::Result<String> {
    let path = data_dir.join("master.id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = format!("master-{:08x}", rand::random::<u32>());
            std::fs::create_dir_all(data_dir)?;
            std::fs::write(&path, &id)?;
            Ok(id)
        }
    }
}

/// Keep this master's presence keys true: each connected node that is heard from has
/// `/presence/{node}` = this master's id on its lease; a node silent for `timeout`, or gone,
/// loses the key this master wrote, unless this master let the node go (it lost the store)
/// less than `grace` ago. Writes only what changed.
pub async fn keep_presence(m: &Master, timeout: Duration, grace: Duration) -> Result<(), Error> {
    let Some(lease) = m.role.lease() else {
        return Ok(());
    };
    let me = m.role.id.as_bytes();
    let (present, _) = m.store.range(keys::PRESENCE).await?;
    let present: std::collections::BTreeMap<&str, &KeyValue> = present
        .iter()
        .map(|kv| (kv.key.trim_start_matches(keys::PRESENCE), kv))
        .collect();
    let (_, silent) = m.hub.silent(Instant::now(), timeout);
    let connected: std::collections::BTreeSet<String> =
        m.hub.connections().into_iter().map(|(id, _)| id).collect();
    let mut ops = Vec::new();
    let mut compares = Vec::new();
    for node in &connected {
        let mine = present
            .get(node.as_str())
            .is_some_and(|kv| kv.value == me && kv.lease == Some(lease));
        if !silent.contains(node) && !mine {
            ops.push(Op::Put {
                key: keys::presence(node),
                value: me.to_vec(),
                lease: Some(lease),
            });
        }
    }
    // Nodes this master let go when it lost the store keep their keys for the reconnect grace:
    // deleted on this master's lease, a key would tell the leader the node fell silent (found
    // when quorum came back: nodes still reconnecting were judged unreachable at once).
    let let_go = m.hub.let_go_within(grace);
    for (node, kv) in &present {
        let gone = !connected.contains(*node) || silent.contains(*node);
        if gone && kv.value == me && !let_go.contains(*node) {
            compares.push(Compare::unchanged_since(kv.key.clone(), kv.mod_revision));
            ops.push(Op::delete(kv.key.clone()));
        }
    }
    if ops.is_empty() {
        return Ok(());
    }
    match m.store.txn(Txn::new().when(compares).then(ops)).await {
        Ok(_) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> Master {
        let store = Arc::new(wharf_store::SqliteStore::open_in_memory().unwrap());
        Master::new(store)
    }

    #[tokio::test]
    async fn a_deposed_leader_cannot_write_through_the_fence() {
        let m = master();
        let role = Arc::new(Role::elected("a"));
        let lease = m.store.lease_grant(LEASE_TTL * 30).await.unwrap();
        let r = m
            .store
            .txn(
                Txn::new()
                    .when([Compare::missing(keys::LEADER)])
                    .then([Op::Put {
                        key: keys::LEADER.into(),
                        value: b"a".to_vec(),
                        lease: Some(lease),
                    }]),
            )
            .await
            .unwrap();
        role.set(Some(Term {
            revision: r.revision,
            since: Instant::now(),
        }));
        let fenced = Fenced::new(m.store.clone(), role.clone());
        fenced
            .put("/x", b"1".to_vec())
            .await
            .expect("the leader writes");
        // A compare of the caller that fails is still the caller's: not a lost term.
        let r = fenced
            .txn(
                Txn::new()
                    .when([Compare::missing("/x")])
                    .then([Op::put("/x", "2")]),
            )
            .await
            .unwrap();
        assert!(!r.succeeded);
        assert!(r.responses.is_empty(), "the fence's own read is not shown");
        assert!(role.leading());
        // Another master takes over (the lease expired, a new leader key).
        m.store.lease_revoke(lease).await.unwrap();
        m.store.put(keys::LEADER, b"b".to_vec()).await.unwrap();
        let err = fenced.put("/x", b"3".to_vec()).await.unwrap_err();
        assert!(matches!(err, StoreError::Fenced(_)), "{err:?}");
        assert!(!role.leading(), "a fenced write deposes the master");
        assert_eq!(m.store.get("/x").await.unwrap().unwrap().value, b"1");
        // Not leading: refused without a round trip.
        assert!(matches!(
            fenced.put("/x", b"4".to_vec()).await,
            Err(StoreError::Fenced(_))
        ));
    }

    #[tokio::test]
    async fn one_of_two_masters_leads_and_the_other_takes_over_when_it_goes() {
        let store: Arc<dyn Store> = Arc::new(wharf_store::SqliteStore::open_in_memory().unwrap());
        let a = Master::new(store.clone()).with_role(Role::elected("a"));
        let b = Master::new(store.clone()).with_role(Role::elected("b"));
        let info = |id: &str| MasterInfo {
            id: id.into(),
            ..Default::default()
        };
        let ta = tokio::spawn(run(a.clone(), info("a")));
        let tb = tokio::spawn(run(b.clone(), info("b")));
        let deadline = Instant::now() + Duration::from_secs(10);
        while a.role.leading() == b.role.leading() {
            assert!(Instant::now() < deadline, "no single leader within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (leader, follower, task) = if a.role.leading() {
            (a, b, ta)
        } else {
            (b, a, tb)
        };
        let (list, lead) = masters(&follower).await.unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(lead.as_deref(), Some(leader.role.id()));
        // The leader dies (its task stops: no more keep-alives): the other leads within the
        // lease time and a bit.
        task.abort();
        let since = Instant::now();
        while !follower.role.leading() {
            assert!(
                since.elapsed() < LEASE_TTL * 3,
                "no takeover within {:?}",
                LEASE_TTL * 3
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
