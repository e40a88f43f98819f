//! The hub: where nodes meet the master. It hands each registered node its desired state (a full
//! snapshot, republished whenever the deployer recomputes it) and takes in the agents' reports,
//! writing them to the store only when they changed.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use tokio::sync::{Notify, watch};
use wharf_store::{Op, Store, Txn};
use wharf_types::{LogQuery, LogStream, NodeDesired, NodeFacts, NodeReport, NodeState};

use crate::model::{NodeRecord, encode, keys};
use crate::{Error, now_ms};

/// How many times registering a node reads and writes its record when it moved in between.
const REGISTER_ATTEMPTS: u32 = 5;

/// Serials of connections, unique within the process.
static SERIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// When a node was last heard from on one connection: set by the connection with every frame
/// (thousands a second at bench/scale's size) without taking the hub's lock or looking the
/// node up, read by the hub.
#[derive(Debug)]
pub struct Seen(std::sync::atomic::AtomicU64);

/// The instant `Seen` counts from.
fn seen_base() -> std::time::Instant {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now)
}

impl Seen {
    fn now() -> Arc<Seen> {
        let s = Arc::new(Seen(Default::default()));
        s.touch();
        s
    }

    /// Heard from now.
    pub fn touch(&self) {
        let nanos = seen_base().elapsed().as_nanos() as u64;
        self.0
            .fetch_max(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    fn at(&self) -> std::time::Instant {
        seen_base()
            + std::time::Duration::from_nanos(self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

pub type NodeLogLines = BoxStream<'static, Result<(LogStream, String), String>>;

/// A command running in an instance on a node: input in, output (then one end) out. Dropping
/// both ends lets the command go.
pub struct NodeExec {
    pub input: tokio::sync::mpsc::Sender<wharf_types::ExecInput>,
    pub output: tokio::sync::mpsc::Receiver<wharf_types::ExecEvent>,
}

/// What the master can ask of a connected node besides its desired state.
#[async_trait::async_trait]
pub trait NodeLink: Send + Sync + 'static {
    /// Output of the newest generation of `instance` on this node.
    async fn logs(&self, instance: &str, q: LogQuery) -> Result<NodeLogLines, String>;

    /// Run a command in the newest running generation of `instance` on this node.
    async fn exec(
        &self,
        _instance: &str,
        _spec: wharf_types::ExecSpec,
    ) -> Result<NodeExec, String> {
        Err(OLD_AGENT.into())
    }

    /// The resource usage of every instance running on this node.
    async fn stats(&self) -> Result<Vec<wharf_types::InstanceStats>, String> {
        Err(OLD_AGENT.into())
    }

    /// What the node's local image `image` installs, and the image's id (`wharf image scan`).
    async fn inventory(&self, _image: &str) -> Result<(wharf_types::Inventory, String), String> {
        Err(OLD_AGENT.into())
    }
}

/// Why a node cannot run a command or measure its instances.
pub(crate) const OLD_AGENT: &str = "the node's agent is older than exec and stats: upgrade it (the same wharf binary as the master)";

struct Conn {
    desired: watch::Sender<NodeDesired>,
    /// Nothing was published yet: the first publish always notifies, even when empty, because
    /// the agent waits for it before acting (the channel's initial value is not a real snapshot).
    fresh: bool,
    link: Arc<dyn NodeLink>,
    /// Which connection of the node this is (`Hub::connections`): a new one after a reconnect.
    serial: u64,
    last_report: Option<NodeReport>,
    /// When the node was last heard from on this connection (any frame is a heartbeat).
    seen: Arc<Seen>,
    /// Drivers the node reports down, with their error and since when (this master's clock).
    down: BTreeMap<wharf_types::DriverKind, (String, std::time::Instant)>,
    /// The newest store revision the node saw (its hello): older desired states are not sent.
    min_revision: u64,
}

#[derive(Clone)]
pub struct Hub {
    store: Arc<dyn Store>,
    nodes: Arc<Mutex<BTreeMap<String, Conn>>>,
    /// When disconnected nodes last reported: a node whose stream ended is silent since then, not
    /// "never seen" (which would give it the startup grace, or make it unreachable at once).
    gone: Arc<Mutex<BTreeMap<String, std::time::Instant>>>,
    /// Nodes this master let go (it lost the store), and when: their agents reconnect, here or
    /// to another master, so their presence keys stay meanwhile (`leader::keep_presence`).
    let_go: Arc<Mutex<BTreeMap<String, std::time::Instant>>>,
    nudge: Arc<Notify>,
}

/// A WireGuard public key as agents send it: empty (none yet) or 32 bytes of base64.
fn check_tunnel_key(key: &str) -> Result<(), Error> {
    use base64::Engine as _;
    let ok = key.is_empty()
        || base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|b| b.len() == 32);
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            message: format!("{key:?} is not a WireGuard public key (32 bytes of base64)"),
            location: None,
            hint: None,
        })
    }
}

impl Hub {
    pub fn new(store: Arc<dyn Store>) -> Hub {
        Hub {
            store,
            nodes: Arc::default(),
            gone: Arc::default(),
            let_go: Arc::default(),
            nudge: Arc::new(Notify::new()),
        }
    }

    /// Register (or re-register after a reconnect) a node; returns the channel of its desired state.
    /// Its initial value is a placeholder: wait for the first change before acting on it.
    pub async fn register(
        &self,
        id: &str,
        facts: NodeFacts,
        link: Arc<dyn NodeLink>,
    ) -> Result<watch::Receiver<NodeDesired>, Error> {
        self.register_with(id, facts, BTreeMap::new(), None, link, 0)
            .await
    }

    /// `register` for a remote agent: `labels` (from `wharf agent --label`) are merged into the
    /// node's labels, `address` is where it connects from. Labels set with `wharf node label` and
    /// the drain flag survive re-registration.
    pub async fn register_with(
        &self,
        id: &str,
        facts: NodeFacts,
        labels: BTreeMap<String, String>,
        address: Option<String>,
        link: Arc<dyn NodeLink>,
        min_revision: u64,
    ) -> Result<watch::Receiver<NodeDesired>, Error> {
        crate::metrics::agent_connected();
        let key = keys::node(id);
        for attempt in 1..=REGISTER_ATTEMPTS {
            let now = now_ms();
            let existing = self.store.get(&key).await?;
            let (mut rec, rev) = match &existing {
                Some(kv) => (
                    crate::model::decode::<NodeRecord>(&key, &kv.value)?,
                    kv.mod_revision,
                ),
                None => (
                    NodeRecord {
                        id: id.to_string(),
                        facts: facts.clone(),
                        labels: BTreeMap::new(),
                        state: NodeState::Ready,
                        since: now,
                        drain: false,
                        address: None,
                        tunnel: None,
                        key_epoch: 0,
                    },
                    0,
                ),
            };
            rec.facts = facts.clone();
            rec.labels.extend(labels.clone());
            rec.address = address.clone();
            if rec.state != NodeState::Ready {
                rec.state = NodeState::Ready;
                rec.since = now;
            }
            let txn = Txn::new()
                .when([wharf_store::Compare::unchanged_since(key.clone(), rev)])
                .then([Op::put(key.clone(), encode(&rec))]);
            if self.store.txn(txn).await?.succeeded {
                break;
            }
            // Moved under us (liveness judging the node from a frame of its old connection, a
            // label): read it again at once rather than send the agent into its backoff, which
            // kept a healed node's stale instances running seconds longer.
            if attempt == REGISTER_ATTEMPTS {
                return Err(Error::Conflict {
                    message: format!(
                        "node {id} changed while registering, {REGISTER_ATTEMPTS} times"
                    ),
                    hint: Some("the agent reconnects and tries again".into()),
                });
            }
        }
        let (tx, rx) = watch::channel(NodeDesired::default());
        self.nodes.lock().insert(
            id.to_string(),
            Conn {
                desired: tx,
                fresh: true,
                link,
                serial: SERIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                last_report: None,
                seen: Seen::now(),
                down: BTreeMap::new(),
                min_revision,
            },
        );
        self.nudge();
        Ok(rx)
    }

    /// Record what a node's agent says of its end of the encrypted tunnel (its public key, the
    /// implementation, or why it is not up), if that changed; the next pass hands it to peers.
    pub async fn set_tunnel(
        &self,
        id: &str,
        tunnel: wharf_types::TunnelFacts,
    ) -> Result<(), Error> {
        check_tunnel_key(&tunnel.public_key)?;
        // A key another node holds would take that node's place in every peer's interface.
        if !tunnel.public_key.is_empty() {
            let (kvs, _) = self.store.range(keys::NODES).await?;
            for kv in kvs {
                let other: NodeRecord = crate::model::decode(&kv.key, &kv.value)?;
                let same = other
                    .tunnel
                    .as_ref()
                    .is_some_and(|t| t.public_key == tunnel.public_key);
                if other.id != id && same {
                    return Err(Error::Invalid {
                        message: format!(
                            "node {id} sent the WireGuard key of node {}: refused",
                            other.id
                        ),
                        location: None,
                        hint: Some("rotate the node's key (`wharf node rotate-keys`)".into()),
                    });
                }
            }
        }
        let key = keys::node(id);
        for _ in 0..REGISTER_ATTEMPTS {
            let Some(kv) = self.store.get(&key).await? else {
                return Err(Error::Unavailable(format!("node {id} is not a member")));
            };
            let mut rec = crate::model::decode::<NodeRecord>(&key, &kv.value)?;
            if rec.tunnel.as_ref() == Some(&tunnel) {
                return Ok(());
            }
            rec.tunnel = Some(tunnel.clone());
            let txn = Txn::new()
                .when([wharf_store::Compare::unchanged_since(
                    key.clone(),
                    kv.mod_revision,
                )])
                .then([Op::put(key.clone(), encode(&rec))]);
            if self.store.txn(txn).await?.succeeded {
                self.nudge();
                return Ok(());
            }
        }
        Err(Error::Conflict {
            message: format!("node {id} changed while its tunnel key was recorded"),
            hint: Some("the agent sends it again".into()),
        })
    }

    /// Take a node's report: store it if it changed, acknowledge finished purges, wake the deployer.
    pub async fn report(&self, node: &str, report: NodeReport) -> Result<(), Error> {
        let changed = {
            let mut nodes = self.nodes.lock();
            match nodes.get_mut(node) {
                Some(c) if c.last_report.as_ref() == Some(&report) => {
                    c.seen.touch();
                    false
                }
                Some(c) => {
                    c.seen.touch();
                    let was_held = c.last_report.as_ref().and_then(|r| r.held.clone());
                    if report.held.is_some() && report.held != was_held {
                        tracing::error!(
                            %node,
                            reason = report.held.as_deref().unwrap_or_default(),
                            "the node holds back: it does not act on this store's desired state"
                        );
                    }
                    let now = std::time::Instant::now();
                    let down = &report.drivers_down;
                    c.down.retain(|k, _| down.iter().any(|d| d.driver == *k));
                    for d in down {
                        let entry = c.down.entry(d.driver).or_insert_with(|| {
                            tracing::warn!(%node, driver = ?d.driver, error = %d.error, "a driver of the node is down");
                            (d.error.clone(), now)
                        });
                        entry.0 = d.error.clone();
                    }
                    c.last_report = Some(report.clone());
                    true
                }
                None => return Err(Error::Unavailable(format!("node {node} is not registered"))),
            }
        };
        if !changed {
            return Ok(());
        }
        let mut ops = vec![Op::put(keys::status(node), encode(&report))];
        ops.extend(report.purged.iter().map(|s| Op::delete(keys::purge(s))));
        self.store.txn(Txn::new().then(ops)).await?;
        self.nudge();
        Ok(())
    }

    /// What the node's connection `link` touches with every frame that arrives: the node is
    /// alive now, whatever the frame (reports are stored later, on their own task). None when
    /// `link` is no longer the node's connection.
    pub fn seen(&self, node: &str, link: &Arc<dyn NodeLink>) -> Option<Arc<Seen>> {
        self.nodes
            .lock()
            .get(node)
            .filter(|c| Arc::ptr_eq(&c.link, link))
            .map(|c| c.seen.clone())
    }

    /// A frame arrived from the in-process node of `wharf up`, which has one connection for good.
    pub fn alive(&self, node: &str) {
        if let Some(c) = self.nodes.lock().get(node) {
            c.seen.touch();
        }
    }

    /// Publish a node's desired state; agents only wake up when it differs.
    pub fn publish(&self, node: &str, desired: NodeDesired) {
        if let Some(c) = self.nodes.lock().get_mut(node) {
            if desired.revision < c.min_revision {
                return;
            }
            if std::mem::take(&mut c.fresh) {
                c.desired.send_replace(desired);
                return;
            }
            // Unchanged but for the store revision: not sent. The revision the node holds is
            // older, but it was computed from a store that asked for the same, and the agent
            // checks only that revisions never go back.
            c.desired.send_if_modified(|cur| {
                if cur.same_content(&desired) {
                    false
                } else {
                    *cur = desired;
                    true
                }
            });
        }
    }

    /// When each node last reported (connected, or disconnected since this master started).
    pub fn last_seen(&self) -> BTreeMap<String, std::time::Instant> {
        let mut seen = self.gone.lock().clone();
        let nodes = self.nodes.lock();
        seen.extend(nodes.iter().map(|(id, c)| (id.clone(), c.seen.at())));
        seen
    }

    /// How many nodes the hub knows of (connected, or disconnected since this master started),
    /// and which of them were silent for `timeout` at `now`: what liveness compares ten times
    /// a second, without copying a thousand names when all are heard from.
    pub fn silent(
        &self,
        now: std::time::Instant,
        timeout: std::time::Duration,
    ) -> (usize, std::collections::BTreeSet<String>) {
        let quiet = |t: std::time::Instant| now.saturating_duration_since(t) >= timeout;
        let gone = self.gone.lock();
        let nodes = self.nodes.lock();
        let mut silent: std::collections::BTreeSet<String> = gone
            .iter()
            .filter(|(id, t)| !nodes.contains_key(*id) && quiet(**t))
            .map(|(id, _)| id.clone())
            .collect();
        silent.extend(
            nodes
                .iter()
                .filter(|(_, c)| quiet(c.seen.at()))
                .map(|(id, _)| id.clone()),
        );
        let known = nodes.len() + gone.keys().filter(|id| !nodes.contains_key(*id)).count();
        (known, silent)
    }

    /// Forget a node's connection (its stream ended). Liveness turns it unreachable after the
    /// node timeout unless it reconnects first.
    pub fn disconnect(&self, id: &str) {
        if let Some(c) = self.nodes.lock().remove(id) {
            self.gone.lock().insert(id.to_string(), c.seen.at());
        }
    }

    /// `disconnect`, but only if the node's current connection is still `link`: a stream that
    /// ends after its agent reconnected must not forget the new connection.
    pub fn disconnect_link(&self, id: &str, link: &Arc<dyn NodeLink>) {
        let mut nodes = self.nodes.lock();
        if nodes.get(id).is_some_and(|c| Arc::ptr_eq(&c.link, link))
            && let Some(c) = nodes.remove(id)
        {
            self.gone.lock().insert(id.to_string(), c.seen.at());
        }
    }

    /// Drop the node's connection `link` without remembering when it was last heard: this
    /// master let it go (it lost the store), so its silence says nothing of the node.
    pub fn forget_link(&self, id: &str, link: &Arc<dyn NodeLink>) {
        let mut nodes = self.nodes.lock();
        if nodes.get(id).is_some_and(|c| Arc::ptr_eq(&c.link, link)) {
            nodes.remove(id);
            self.gone.lock().remove(id);
            self.let_go
                .lock()
                .insert(id.to_string(), std::time::Instant::now());
        }
    }

    /// The nodes this master let go less than `within` ago and that have not come back to it.
    pub fn let_go_within(&self, within: std::time::Duration) -> std::collections::BTreeSet<String> {
        // `nodes` first and alone, as `forget_link` takes them (nodes, then let_go).
        let connected: std::collections::BTreeSet<String> =
            self.nodes.lock().keys().cloned().collect();
        let mut let_go = self.let_go.lock();
        let_go.retain(|id, at| at.elapsed() < within && !connected.contains(id));
        let_go.keys().cloned().collect()
    }

    /// The last report of a connected node.
    pub fn last_report(&self, node: &str) -> Option<NodeReport> {
        self.nodes
            .lock()
            .get(node)
            .and_then(|c| c.last_report.clone())
    }

    /// Drivers of connected nodes that have been reported down for at least `after`.
    pub fn drivers_down_for(
        &self,
        after: std::time::Duration,
    ) -> std::collections::BTreeSet<(String, wharf_types::DriverKind)> {
        let nodes = self.nodes.lock();
        nodes
            .iter()
            .flat_map(|(id, c)| {
                c.down
                    .iter()
                    .filter(|(_, (_, since))| since.elapsed() >= after)
                    .map(|(k, _)| (id.clone(), *k))
            })
            .collect()
    }

    /// Every connected node with the serial of its connection: a publisher that remembers what
    /// it sent on a connection knows when a reconnect needs it sent again.
    pub fn connections(&self) -> Vec<(String, u64)> {
        self.nodes
            .lock()
            .iter()
            .map(|(id, c)| (id.clone(), c.serial))
            .collect()
    }

    /// The connected nodes that sent this master a report: what the store holds of the others
    /// may date from before this master started.
    pub fn reporting(&self) -> std::collections::BTreeSet<String> {
        self.nodes
            .lock()
            .iter()
            .filter(|(_, c)| c.last_report.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn link(&self, node: &str) -> Option<Arc<dyn NodeLink>> {
        self.nodes.lock().get(node).map(|c| c.link.clone())
    }

    /// Wake the controllers: something they react to changed.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    pub fn nudged(&self) -> Arc<Notify> {
        self.nudge.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoLogs;

    #[async_trait::async_trait]
    impl NodeLink for NoLogs {
        async fn logs(&self, _: &str, _: LogQuery) -> Result<NodeLogLines, String> {
            Err("no logs here".into())
        }
    }

    #[tokio::test]
    async fn a_node_let_go_is_remembered_for_the_grace_until_it_comes_back() {
        let store = Arc::new(wharf_store::SqliteStore::open_in_memory().expect("store"));
        let hub = Hub::new(store);
        let link: Arc<dyn NodeLink> = Arc::new(NoLogs);
        hub.register_with(
            "n1",
            NodeFacts::default(),
            BTreeMap::new(),
            None,
            link.clone(),
            0,
        )
        .await
        .expect("register");
        let grace = std::time::Duration::from_secs(15);
        assert!(hub.let_go_within(grace).is_empty());
        hub.forget_link("n1", &link);
        assert!(
            hub.let_go_within(grace).contains("n1"),
            "let go: its key stays"
        );
        let again: Arc<dyn NodeLink> = Arc::new(NoLogs);
        hub.register_with(
            "n1",
            NodeFacts::default(),
            BTreeMap::new(),
            None,
            again.clone(),
            0,
        )
        .await
        .expect("back");
        assert!(hub.let_go_within(grace).is_empty(), "back here");
        hub.forget_link("n1", &again);
        assert!(hub.let_go_within(grace).contains("n1"));
        assert!(
            hub.let_go_within(std::time::Duration::ZERO).is_empty(),
            "the grace is over"
        );
    }

    #[tokio::test]
    async fn a_node_keeps_its_own_tunnel_key_and_cannot_take_another_nodes() {
        let store = Arc::new(wharf_store::SqliteStore::open_in_memory().expect("store"));
        let hub = Hub::new(store.clone());
        for n in ["n1", "n2"] {
            hub.register(n, NodeFacts::default(), Arc::new(NoLogs))
                .await
                .expect("register");
        }
        let facts = |key: &str| wharf_types::TunnelFacts {
            public_key: key.into(),
            port: 51820,
            ..Default::default()
        };
        let k1 = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
        hub.set_tunnel("n1", facts(k1)).await.expect("n1's key");
        let e = hub.set_tunnel("n2", facts(k1)).await.unwrap_err();
        assert!(
            e.to_string().contains("the WireGuard key of node n1"),
            "{e}"
        );
        let e = hub.set_tunnel("n2", facts("not a key")).await.unwrap_err();
        assert!(e.to_string().contains("not a WireGuard public key"), "{e}");
        let rec = |n: &str| {
            let store = store.clone();
            let key = keys::node(n);
            async move {
                let kv = store.get(&key).await.unwrap().unwrap();
                crate::model::decode::<NodeRecord>(&key, &kv.value).unwrap()
            }
        };
        assert_eq!(rec("n1").await.tunnel.unwrap().public_key, k1);
        assert_eq!(rec("n2").await.tunnel, None, "nothing recorded for n2");
    }

    #[tokio::test]
    async fn a_node_is_sent_a_desired_state_only_when_what_it_asks_for_changed() {
        let store = Arc::new(wharf_store::SqliteStore::open_in_memory().expect("store"));
        let hub = Hub::new(store);
        let mut rx = hub
            .register("n1", NodeFacts::default(), Arc::new(NoLogs))
            .await
            .expect("register");
        let desired = |revision, cluster: &str| NodeDesired {
            cluster: cluster.into(),
            revision,
            ..Default::default()
        };
        hub.publish("n1", desired(5, "c"));
        assert!(
            rx.has_changed().expect("open"),
            "the first state is always sent"
        );
        rx.borrow_and_update();
        // Another node's change moved the store on: nothing new for this one.
        hub.publish("n1", desired(9, "c"));
        assert!(
            !rx.has_changed().expect("open"),
            "resent for a new revision alone"
        );
        assert_eq!(rx.borrow().revision, 5);
        hub.publish("n1", desired(12, "other"));
        assert!(rx.has_changed().expect("open"), "a change was not sent");
        assert_eq!(rx.borrow_and_update().revision, 12);
    }
}
