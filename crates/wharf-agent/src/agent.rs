//! The agent loop: on every change of the node's desired state, every driver event, and at least
//! once a second, observe the drivers, plan (`plan::plan`), start the planned operations in the
//! background, and report a full snapshot of what runs to the master.
//!
//! Operations run as tasks, one at a time per instance, so a slow stop (grace period) or image
//! build never holds up the others; the `busy` set keeps a pass from starting a second operation on
//! an instance that has one in flight.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use wharf_types::{
    Assignment, Backoff, DriverKind, InstanceReport, InstanceState, LogQuery, NodeDesired,
    NodeFacts, NodeReport,
};

use crate::driver::{Driver, DriverError, LogLines, Observed, ObservedState, Stop};
use crate::plan::{self, Memo, Step, key};

/// Where the agent sends its reports: the master, in process or over the network.
#[async_trait::async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    async fn report(&self, report: NodeReport) -> Result<(), String>;
}

#[derive(Default)]
struct State {
    memo: BTreeMap<(String, u64), Memo>,
    /// Handles and `id@generation` keys with an operation in flight.
    busy: BTreeSet<String>,
    /// Handles being retired (reported as stopping).
    retiring: BTreeSet<String>,
    /// Stacks whose purge is done, until the master stops asking.
    purged: BTreeSet<String>,
    /// Launch failures per `(id, generation)`, to back off retries.
    launch_failures: BTreeMap<(String, u64), u32>,
    /// What the last pass planned for: an operation still waiting for its turn checks that its
    /// instance is wanted still, so a removal cancels pending creates at once.
    wanted: BTreeSet<(String, u64)>,
    /// Cut off from the master past the node timeout: `at_most_once` instances are stopped.
    cut_off: bool,
}

/// Engine operations (prepare, create, start) in flight at once per agent; stops have as many
/// of their own, so a burst of creates never holds up stopping. Beyond it operations queue, and
/// a queued create whose instance is no longer wanted is dropped (issue 8, defect 5: the agent
/// kept creating containers until the engine timed out).
pub const MAX_ENGINE_OPS: usize = 8;

/// Before trying a failed operation (prepare, create, start) of an instance again: 1 s, doubling
/// with each failure in a row up to 30 s.
const LAUNCH_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));

pub struct Agent {
    drivers: BTreeMap<DriverKind, Arc<dyn Driver>>,
    /// Drivers that could not be set up, and why (e.g. no Docker engine).
    unavailable: BTreeMap<DriverKind, String>,
    state: Mutex<State>,
    wake: Notify,
    /// The instance series last exported (`metrics::Recorded`).
    recorded: crate::metrics::Recorded,
    /// Subnets, service discovery and host routes of the stack networks, when the node has them.
    networks: Option<Arc<crate::stacknet::StackNetworks>>,
    /// The cluster this node belongs to (`membership.rs`).
    membership: crate::membership::Membership,
    /// When the master was last heard from, for agents whose link can be cut (`link.rs`).
    /// `None`: in process with the master, never cut off.
    contact: Mutex<Option<Instant>>,
    launches: Arc<tokio::sync::Semaphore>,
    stops: Arc<tokio::sync::Semaphore>,
    /// The secret and config files of the node's instances, on a tmpfs (`files.rs`).
    files: Arc<crate::files::Files>,
    /// The values of the last desired state's secrets and configs (in memory only).
    values: Mutex<Arc<crate::files::Values>>,
}

/// Instances sampled at once by `Agent::stats`.
const STATS_AT_ONCE: usize = 16;

impl Agent {
    pub fn new(
        drivers: Vec<Arc<dyn Driver>>,
        unavailable: BTreeMap<DriverKind, String>,
    ) -> Arc<Agent> {
        Self::with_networks(drivers, unavailable, None)
    }

    /// An agent that also keeps the stack networks' subnets, DNS and host routes in line with
    /// every desired state (`stacknet.rs`).
    pub fn with_networks(
        drivers: Vec<Arc<dyn Driver>>,
        unavailable: BTreeMap<DriverKind, String>,
        networks: Option<Arc<crate::stacknet::StackNetworks>>,
    ) -> Arc<Agent> {
        Self::build(
            drivers,
            unavailable,
            networks,
            crate::membership::Membership::none(),
        )
    }

    /// `with_networks`, remembering the node's cluster (`membership.rs`).
    pub fn build(
        drivers: Vec<Arc<dyn Driver>>,
        unavailable: BTreeMap<DriverKind, String>,
        networks: Option<Arc<crate::stacknet::StackNetworks>>,
        membership: crate::membership::Membership,
    ) -> Arc<Agent> {
        let files = Arc::new(crate::files::Files::new(membership.data_dir()));
        Arc::new(Agent {
            files,
            values: Mutex::default(),
            drivers: drivers.into_iter().map(|d| (d.kind(), d)).collect(),
            unavailable,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            recorded: Default::default(),
            networks,
            membership,
            contact: Mutex::new(None),
            launches: Arc::new(tokio::sync::Semaphore::new(MAX_ENGINE_OPS)),
            stops: Arc::new(tokio::sync::Semaphore::new(MAX_ENGINE_OPS)),
        })
    }

    /// A frame from the master arrived (the link calls this on every frame, heartbeats too).
    pub fn heard_from_master(&self) {
        *self.contact.lock() = Some(Instant::now());
    }

    /// Whether the master has been silent for longer than `timeout_ms` (0: never cut off).
    fn is_cut_off(&self, timeout_ms: u64) -> bool {
        let last = *self.contact.lock();
        timeout_ms > 0 && last.is_some_and(|t| t.elapsed() > Duration::from_millis(timeout_ms))
    }

    /// Facts about this node, from its drivers.
    /// The newest store revision this node acted on (its hello tells the master).
    /// What the master is to be told of this node's end of the encrypted tunnel, as it
    /// changes (`ToMaster::Tunnel`); `None`: the node has no stack networks to speak of.
    pub fn tunnel_facts(
        &self,
    ) -> Option<tokio::sync::watch::Receiver<Option<wharf_types::TunnelFacts>>> {
        self.networks.as_ref().map(|n| n.tunnel_facts())
    }

    pub fn seen_revision(&self) -> u64 {
        self.membership.revision()
    }

    pub async fn facts(&self, name: &str) -> NodeFacts {
        let mut facts = NodeFacts {
            name: name.to_string(),
            ..Default::default()
        };
        for (kind, d) in &self.drivers {
            facts.drivers.push(*kind);
            if let Ok(info) = d.info().await {
                if *kind == DriverKind::Docker {
                    facts.docker_version = info.version;
                    facts.storage_driver = info.storage_driver;
                }
                if facts.kernel.is_empty() {
                    facts.kernel = info.kernel.unwrap_or_default();
                }
                facts.cpus = facts.cpus.max(info.cpus);
                facts.memory_bytes = facts.memory_bytes.max(info.memory_bytes);
                if facts.os.is_empty() {
                    facts.os = info.os;
                }
            }
        }
        facts
    }

    /// Run until the desired-state channel closes (the master went away for good).
    pub async fn run(
        self: Arc<Self>,
        desired: watch::Receiver<NodeDesired>,
        cp: Arc<dyn ControlPlane>,
    ) {
        // The loop's helper tasks: owned here, so that one that dies (a panic) takes the loop
        // with it and whoever owns the loop learns of it (`wharf`'s `supervise.rs`), instead of
        // a node that runs on without its ingress or its networks.
        let mut helpers: Vec<tokio::task::JoinHandle<()>> = Vec::new();
        for d in self.drivers.values() {
            let (d, me) = (d.clone(), Arc::downgrade(&self));
            helpers.push(tokio::spawn(async move {
                use futures::StreamExt;
                loop {
                    match d.changes().await {
                        Ok(mut s) => {
                            while s.next().await.is_some() {
                                match me.upgrade() {
                                    Some(a) => a.wake.notify_one(),
                                    None => return,
                                }
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "driver events unavailable"),
                    }
                    if me.strong_count() == 0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }));
        }
        // The node's ingress follows the routing table of every desired state, on its own task so
        // that a slow pass never holds up taking an unhealthy endpoint out (`ingress.rs`).
        let (table_tx, table_rx) = watch::channel(Vec::new());
        helpers.push(tokio::spawn(crate::ingress::run(table_rx)));
        // The stack networks follow every desired state here and only here (the loop below waits
        // for it), so two states are never applied out of order; and the same state again every
        // `RECHECK`, so a deleted route or flushed chain is repaired and a DNS listener that
        // failed is tried again (`stacknet.rs`, `hostnet.rs`).
        let mut feed = desired.clone();
        let networks = self.networks.clone();
        helpers.push(tokio::spawn(async move {
            let recheck = crate::stacknet::RECHECK;
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + recheck, recheck);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Not the placeholder (see below).
            if feed.changed().await.is_err() {
                return;
            }
            loop {
                let want = feed.borrow_and_update().clone();
                if let Some(n) = &networks {
                    n.follow(&want).await;
                }
                let table = (*want.ingress).clone();
                table_tx.send_if_modified(|t| {
                    let changed = *t != table;
                    *t = table;
                    changed
                });
                tokio::select! {
                    r = feed.changed() => if r.is_err() { return },
                    _ = tick.tick() => {},
                }
            }
        }));
        let helper_died = async move {
            // Helpers end on their own only when the loop is ending anyway (the desired-state
            // channel closed, the agent dropped); a panic is passed on as the loop's own.
            let (end, _, _) = futures::future::select_all(helpers).await;
            if let Err(e) = end
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        };
        tokio::select! {
            _ = self.main_loop(desired, cp) => {}
            _ = helper_died => {}
        }
    }

    /// The passes: on every change of the desired state, every driver event, and once a second.
    async fn main_loop(
        self: &Arc<Self>,
        mut desired: watch::Receiver<NodeDesired>,
        cp: Arc<dyn ControlPlane>,
    ) {
        // The channel's initial value is a placeholder, not the master's word: acting on it would
        // retire every running instance after a restart. Wait for the first real snapshot.
        if desired.changed().await.is_err() {
            return;
        }
        loop {
            let want = desired.borrow_and_update().clone();
            // Subnets before the pass that may create a stack network: the feed task above is the
            // one that follows (so a health change reaches the DNS server without waiting for a
            // pass); wait until it has taken this state's subnets, or a newer state came.
            if let Some(n) = &self.networks {
                n.wait_followed(&want, &desired).await;
            }
            let report = self.pass(&want).await;
            self.recorded.report(&report);
            if let Err(e) = cp.report(report).await {
                tracing::warn!(error = %e, "report to master failed");
            }
            let wake_at = {
                let st = self.state.lock();
                plan::next_wake(&st.memo)
            };
            let max = Instant::now() + Duration::from_secs(1);
            let at = wake_at.map_or(max, |w| w.min(max));
            tokio::select! {
                r = desired.changed() => if r.is_err() { return },
                _ = self.wake.notified() => {},
                _ = tokio::time::sleep_until(at.into()) => {},
            }
            // Coalesce bursts of events (30 containers starting) into one pass.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Observe, plan, act, and return the report of what runs.
    pub async fn pass(self: &Arc<Self>, want: &NodeDesired) -> NodeReport {
        let mut observed = Vec::new();
        let mut blind: BTreeMap<DriverKind, String> = BTreeMap::new();
        for (kind, d) in &self.drivers {
            match d.list().await {
                Ok(list) => observed.extend(list.into_iter().map(|o| (*kind, o))),
                Err(e) => {
                    tracing::warn!(driver = ?kind, error = %e, "cannot list instances; skipping this driver for now");
                    blind.insert(*kind, e.describe());
                }
            }
        }
        let obs: Vec<Observed> = observed.iter().map(|(_, o)| o.clone()).collect();
        // A desired state this node cannot trust (another cluster's store, or an older one) is
        // not acted on: everything keeps running and is reported as it is.
        if let Err(why) = self.membership.check(&want.cluster, want.revision) {
            let mut report = self.report(&NodeDesired::default(), &obs, &blind);
            report.held = Some(format!("{why}; {}", crate::membership::HOLD_HINT));
            return report;
        }
        *self.values.lock() = Arc::new(crate::files::values(&want.files));
        let cut_off = self.is_cut_off(want.node_timeout_ms);
        {
            let mut st = self.state.lock();
            if cut_off != st.cut_off {
                st.cut_off = cut_off;
                if cut_off {
                    tracing::warn!(
                        "no word from the master for the node timeout: stopping at_most_once                          instances before the master replaces them elsewhere"
                    );
                }
            }
        }
        // Only plan for assignments whose driver we can see: never launch what may already run.
        let plannable: Vec<Assignment> = want
            .assignments
            .iter()
            .filter(|a| {
                self.drivers.contains_key(&a.spec.driver) && !blind.contains_key(&a.spec.driver)
            })
            .filter(|a| !(cut_off && a.spec.wharf.at_most_once))
            .cloned()
            .collect();
        let fence: BTreeSet<(String, u64)> = want
            .fence
            .iter()
            .map(|f| key(&f.id, f.generation))
            .collect();
        let fenced: Vec<&str> = obs
            .iter()
            .filter(|o| fence.contains(&key(&o.instance, o.generation)))
            .map(|o| o.instance.as_str())
            .collect();
        if !fenced.is_empty() {
            tracing::info!(
                instances = ?fenced,
                "fencing: replaced on other nodes while this node was lost; stopping them now"
            );
        }
        let now = Instant::now();
        let steps = {
            let mut st = self.state.lock();
            st.wanted = plannable.iter().map(|a| key(&a.id, a.generation)).collect();
            let State { memo, busy, .. } = &mut *st;
            plan::plan(&plannable, &obs, memo, busy, &fence, now, crate::now_ms())
        };
        for step in steps {
            self.spawn_step(step, &plannable, &observed);
        }
        // The files of instances neither wanted nor running any more go.
        let keep: std::collections::HashSet<String> =
            plannable
                .iter()
                .map(Assignment::name)
                .chain(obs.iter().map(|o| {
                    wharf_types::instance_name(&o.stack, &o.service, o.slot, o.generation)
                }))
                .collect();
        self.files.retain(&keep);
        self.purge(want, &obs).await;
        self.report(want, &obs, &blind)
    }

    /// Whether the last pass still wanted this instance generation.
    fn wanted(&self, id: &str, generation: u64) -> bool {
        self.state.lock().wanted.contains(&key(id, generation))
    }

    /// Run one planned step as a background task.
    fn spawn_step(
        self: &Arc<Self>,
        step: Step,
        assignments: &[Assignment],
        observed: &[(DriverKind, Observed)],
    ) {
        match step {
            Step::Launch { id, generation } => self.spawn_launch(id, generation, assignments),
            Step::Start {
                id,
                generation,
                handle,
                restart,
            } => self.spawn_start(id, generation, handle, restart, observed),
            Step::Retire { handle, stop } => self.spawn_retire(handle, stop, observed),
        }
    }

    /// The driver running the observed instance `handle`.
    fn driver_of(
        &self,
        handle: &str,
        observed: &[(DriverKind, Observed)],
    ) -> Option<Arc<dyn Driver>> {
        let (kind, _) = observed.iter().find(|(_, o)| o.handle == handle)?;
        self.drivers.get(kind).cloned()
    }

    /// Prepare, create and start a new instance, when its turn comes and it is wanted still.
    fn spawn_launch(self: &Arc<Self>, id: String, generation: u64, assignments: &[Assignment]) {
        let Some(a) = assignments
            .iter()
            .find(|a| a.id == id && a.generation == generation)
        else {
            return;
        };
        let Some(d) = self.drivers.get(&a.spec.driver).cloned() else {
            return;
        };
        let inst = a.clone();
        let busy_key = format!("{id}@{generation}");
        self.state.lock().busy.insert(busy_key.clone());
        let instance = id.clone();
        let (files, values) = (self.files.clone(), self.values.lock().clone());
        let launch = async move {
            let t0 = Instant::now();
            d.prepare(&inst).await?;
            let t1 = t0.elapsed();
            let mounted = files.materialize(&inst.name(), &inst.spec, &values)?;
            let h = d.create_with_files(&inst, &mounted).await?;
            let t2 = t0.elapsed();
            d.start(&h).await?;
            tracing::debug!(%instance, generation, prepared = ?t1, created = ?t2,
                started = ?t0.elapsed(), "launched");
            Ok(())
        };
        self.spawn_engine_op(busy_key, id, generation, launch);
    }

    /// Start an existing instance again (counting a restart), when its turn comes and it is
    /// wanted still.
    fn spawn_start(
        self: &Arc<Self>,
        id: String,
        generation: u64,
        handle: String,
        restart: bool,
        observed: &[(DriverKind, Observed)],
    ) {
        let Some(d) = self.driver_of(&handle, observed) else {
            return;
        };
        {
            let mut st = self.state.lock();
            st.busy.insert(handle.clone());
            if restart && let Some(m) = st.memo.get_mut(&key(&id, generation)) {
                m.restarts += 1;
            }
        }
        let h = handle.clone();
        self.spawn_engine_op(handle, id, generation, async move { d.start(&h).await });
    }

    /// Run engine operation `op` on instance `id` `generation` (busy under `busy_key`) as a task,
    /// once one of the `MAX_ENGINE_OPS` permits is free and if the instance is wanted still (one
    /// removed while it waited is never touched); record how it went (`finish`).
    fn spawn_engine_op(
        self: &Arc<Self>,
        busy_key: String,
        id: String,
        generation: u64,
        op: impl Future<Output = Result<(), DriverError>> + Send + 'static,
    ) {
        let me = self.clone();
        let permits = self.launches.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            if !me.wanted(&id, generation) {
                me.finish(&busy_key, &key(&id, generation), None);
                return;
            }
            let result = op.await;
            me.finish(
                &busy_key,
                &key(&id, generation),
                result.err().map(|e| e.describe()),
            );
        });
    }

    /// Stop and remove an instance no longer wanted (reported as stopping meanwhile).
    fn spawn_retire(
        self: &Arc<Self>,
        handle: String,
        stop: Stop,
        observed: &[(DriverKind, Observed)],
    ) {
        let me = self.clone();
        let Some(d) = self.driver_of(&handle, observed) else {
            return;
        };
        {
            let mut st = self.state.lock();
            st.busy.insert(handle.clone());
            st.retiring.insert(handle.clone());
        }
        let permits = self.stops.clone();
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let r = async {
                d.stop(&handle, &stop).await?;
                d.remove(&handle).await
            }
            .await;
            if let Err(e) = &r {
                tracing::warn!(%handle, error = %e, "could not retire instance; will retry");
            }
            let mut st = me.state.lock();
            st.busy.remove(&handle);
            st.retiring.remove(&handle);
            drop(st);
            me.wake.notify_one();
        });
    }

    /// An operation finished: record its error (with a backoff before the next try) or clear it.
    fn finish(&self, busy_key: &str, k: &(String, u64), error: Option<String>) {
        let mut st = self.state.lock();
        st.busy.remove(busy_key);
        let failures = st.launch_failures.entry(k.clone()).or_default();
        let delay = match &error {
            Some(_) => {
                *failures += 1;
                Some(LAUNCH_RETRY.delay(*failures - 1))
            }
            None => {
                *failures = 0;
                None
            }
        };
        if let Some(m) = st.memo.get_mut(k) {
            if let Some(e) = &error {
                tracing::warn!(instance = %k.0, generation = k.1, error = %e, "instance operation failed");
            }
            m.error = error;
            m.retry_at = delay.map(|d| Instant::now() + d);
        }
        st.launch_failures.retain(|_, n| *n > 0);
        drop(st);
        self.wake.notify_one();
    }

    /// Clean up after removed stacks once nothing of theirs runs here.
    async fn purge(&self, want: &NodeDesired, observed: &[Observed]) {
        let todo: Vec<_> = {
            let mut st = self.state.lock();
            st.purged
                .retain(|s| want.purges.iter().any(|p| &p.stack == s));
            want.purges
                .iter()
                .filter(|p| !st.purged.contains(&p.stack))
                .filter(|p| !observed.iter().any(|o| o.stack == p.stack))
                .filter(|p| !want.assignments.iter().any(|a| a.stack == p.stack))
                .cloned()
                .collect()
        };
        for p in todo {
            let mut ok = true;
            for d in self.drivers.values() {
                if let Err(e) = d.remove_stack_resources(&p.stack, p.volumes).await {
                    tracing::warn!(stack = %p.stack, error = %e, "cleanup failed; will retry");
                    ok = false;
                }
            }
            if ok {
                self.state.lock().purged.insert(p.stack.clone());
            }
        }
    }

    fn report(
        &self,
        want: &NodeDesired,
        observed: &[Observed],
        blind: &BTreeMap<DriverKind, String>,
    ) -> NodeReport {
        let st = self.state.lock();
        let mut instances = Vec::new();
        for o in observed {
            let m = st.memo.get(&key(&o.instance, o.generation));
            let error = m.and_then(|m| m.error.clone()).or_else(|| o.error.clone());
            let state = if st.retiring.contains(&o.handle) {
                InstanceState::Stopping
            } else {
                match o.state {
                    ObservedState::Running => InstanceState::Running,
                    ObservedState::Exited if m.is_some_and(|m| m.gave_up) => InstanceState::Failed,
                    ObservedState::Exited => InstanceState::Exited,
                    ObservedState::Created if m.is_some_and(|m| m.error.is_some()) => {
                        InstanceState::Failed
                    }
                    ObservedState::Created | ObservedState::Other => InstanceState::Pending,
                }
            };
            instances.push(InstanceReport {
                id: o.instance.clone(),
                generation: o.generation,
                spec_hash: o.spec_hash.clone(),
                state,
                // A stopped container keeps its last health status (often "unhealthy" from the
                // stop itself); it says nothing about the instance any more.
                health: if o.state == ObservedState::Running {
                    o.health
                } else {
                    Default::default()
                },
                container_id: Some(o.handle.clone()),
                exit_code: o.exit_code,
                error: if state == InstanceState::Running {
                    None
                } else {
                    error
                },
                health_output: o.health_output.clone(),
                restarts: m.map(|m| m.restarts).unwrap_or(0),
                started_at: o.started_at,
                finished_at: o.finished_at.filter(|_| o.state == ObservedState::Exited),
                address: o.address.clone(),
            });
        }
        for a in &want.assignments {
            if observed
                .iter()
                .any(|o| o.instance == a.id && o.generation == a.generation)
            {
                continue;
            }
            let (state, error) = if let Some(why) = self.unavailable.get(&a.spec.driver) {
                (InstanceState::Failed, Some(why.clone()))
            } else if !self.drivers.contains_key(&a.spec.driver) {
                (
                    InstanceState::Failed,
                    Some(
                        format!("driver {:?} is not available on this node", a.spec.driver)
                            .to_lowercase(),
                    ),
                )
            } else if blind.contains_key(&a.spec.driver) {
                (
                    InstanceState::Pending,
                    Some("the driver cannot list instances right now".to_string()),
                )
            } else {
                let e = st
                    .memo
                    .get(&key(&a.id, a.generation))
                    .and_then(|m| m.error.clone());
                (
                    if e.is_some() {
                        InstanceState::Failed
                    } else {
                        InstanceState::Pending
                    },
                    e,
                )
            };
            instances.push(InstanceReport {
                id: a.id.clone(),
                generation: a.generation,
                spec_hash: a.spec_hash.clone(),
                state,
                health: Default::default(),
                container_id: None,
                exit_code: None,
                error,
                health_output: None,
                restarts: 0,
                started_at: None,
                finished_at: None,
                address: None,
            });
        }
        let mut drivers_down: Vec<wharf_types::DriverDown> = self
            .unavailable
            .iter()
            .chain(blind)
            .map(|(driver, error)| wharf_types::DriverDown {
                driver: *driver,
                error: error.clone(),
            })
            .collect();
        drivers_down.dedup_by(|a, b| a.driver == b.driver);
        NodeReport {
            instances,
            purged: st.purged.iter().cloned().collect(),
            drivers_down,
            held: None,
        }
    }

    /// Output of the newest generation of `instance` on this node.
    pub async fn logs(&self, instance: &str, q: LogQuery) -> Result<LogLines, String> {
        for d in self.drivers.values() {
            let Ok(list) = d.list().await else { continue };
            if let Some(o) = list
                .iter()
                .filter(|o| o.instance == instance)
                .max_by_key(|o| o.generation)
            {
                return d.logs(&o.handle, q).await.map_err(|e| e.describe());
            }
        }
        Err(format!("instance {instance} has no container on this node"))
    }

    /// Run a command in the newest running generation of `instance` (`wharf service exec`).
    pub async fn exec(
        &self,
        instance: &str,
        spec: &wharf_types::ExecSpec,
    ) -> Result<crate::exec::ExecIo, String> {
        for d in self.drivers.values() {
            let Ok(list) = d.list().await else { continue };
            if let Some(o) = list
                .iter()
                .filter(|o| o.instance == instance && o.state == ObservedState::Running)
                .max_by_key(|o| o.generation)
            {
                let process = d.exec(&o.handle, spec).await.map_err(|e| e.describe())?;
                return Ok(crate::exec::run(process));
            }
        }
        Err(format!("instance {instance} is not running on this node"))
    }

    /// The resource usage of every running instance of the node, one row each (a row says why
    /// when its driver could not measure it).
    /// Samples the engine's statistics of what runs here into the process's metrics (a scrape
    /// of `wharf agent --metrics-listen`).
    pub async fn export_stats(&self) {
        let rows = self.stats().await;
        self.recorded.stats(&rows);
    }

    /// What the local image `image` installs, from the first driver that has it, and its id.
    pub async fn inventory(&self, image: &str) -> Result<(wharf_types::Inventory, String), String> {
        let mut why = vec![];
        for d in self.drivers.values() {
            match d.inventory(image).await {
                Ok(found) => return Ok(found),
                // A driver without images says so; what the others said matters more.
                Err(e) if e.kind == crate::driver::DriverErrorKind::InvalidSpec => {}
                Err(e) => why.push(e.describe()),
            }
        }
        if why.is_empty() {
            why.push(format!("no driver on this node has images ({image})"));
        }
        Err(why.join("; "))
    }

    pub async fn stats(&self) -> Vec<wharf_types::InstanceStats> {
        let mut rows = Vec::new();
        for d in self.drivers.values() {
            let Ok(list) = d.list().await else { continue };
            let running = list
                .into_iter()
                .filter(|o| o.state == ObservedState::Running);
            let samples = running.map(|o| {
                let d = d.clone();
                async move {
                    let mut row = match d.stats(&o.handle).await {
                        Ok(row) => row,
                        Err(e) => wharf_types::InstanceStats {
                            error: Some(e.describe()),
                            ..Default::default()
                        },
                    };
                    row.instance = o.instance;
                    row.stack = o.stack;
                    row.service = o.service;
                    row.slot = o.slot;
                    row.generation = o.generation;
                    row.container_id.get_or_insert(o.handle);
                    row
                }
            });
            // A few at a time: each is a second-long sample on the engine.
            use futures::StreamExt;
            let sampled: Vec<_> = futures::stream::iter(samples)
                .buffer_unordered(STATS_AT_ONCE)
                .collect()
                .await;
            rows.extend(sampled);
        }
        rows.sort_by(|a, b| (&a.instance, a.generation).cmp(&(&b.instance, b.generation)));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wait (up to 5 s) until `cond` holds, else fail saying `what`.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < end, "within 5 s: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn an_instance_gets_its_secret_files_and_they_go_with_it() {
        use base64::Engine;
        use wharf_types::{FileRef, FileValue, ObjectKind, Secret, ServiceSpec};
        let fake = Arc::new(crate::driver::fake::FakeDriver::new());
        let agent = Agent::new(vec![fake.clone()], BTreeMap::new());
        let spec = ServiceSpec {
            image: Some("app".into()),
            secrets: vec![FileRef {
                source: "db".into(),
                target: "/run/secrets/db".into(),
                name: "shop_db".into(),
                version: 3,
                ..FileRef::default()
            }],
            ..ServiceSpec::default()
        };
        let a = Assignment {
            id: "shop.web.1".into(),
            stack: "shop".into(),
            service: "web".into(),
            slot: 1,
            generation: 1,
            spec_hash: spec.instance_hash(),
            spec: Arc::new(spec),
        };
        let want = NodeDesired {
            assignments: vec![a.clone()],
            files: vec![FileValue {
                kind: ObjectKind::Secret,
                name: "shop_db".into(),
                version: 3,
                data: Secret(base64::engine::general_purpose::STANDARD.encode("hunter2")),
            }],
            ..NodeDesired::default()
        };
        agent.pass(&want).await;
        let name = a.name();
        until("the instance is created with its secret mounted", || {
            !fake.mounted(&name).is_empty()
        })
        .await;
        assert_eq!(
            fake.mounted(&name),
            [("/run/secrets/db".to_string(), b"hunter2".to_vec())]
        );
        let dir = agent.files.dir_of(&name);
        assert!(dir.exists());
        // Unassigned: retired, and once gone, its files go too.
        let none = NodeDesired::default();
        for _ in 0..500 {
            agent.pass(&none).await;
            if !dir.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !dir.exists(),
            "the files of a retired instance stay on the tmpfs"
        );
    }

    #[test]
    fn failed_operations_are_tried_again_after_1s_doubling_to_30s() {
        let secs: Vec<u64> = (0..7).map(|n| LAUNCH_RETRY.delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
    }
}
