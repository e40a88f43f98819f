//! An in-process test cluster: a real master (SQLite store in a temp dir, controllers, HTTP API on
//! loopback with an admin token) and N real agents, each on its own recording fake driver, linked
//! through the master's hub as `wharf up` links its one agent (`crates/wharf/src/local.rs`). No
//! Docker engine, no TLS, no processes: a deploy, a rollout, a failover take milliseconds, so
//! tests can race operations by the hundred (`tests/races.rs`) and kill nodes (`tests/inproc.rs`).
//!
//! Every driver call goes through the fake (`wharf_agent::driver::fake`); creates are also logged
//! cluster-wide with the spec hash the agent asked for and the one the fake holds under that name
//! afterwards, so a test can tell an adoption across specs from a plain re-create.
//!
//! Everything waits on conditions with a timeout and a message (`wait_for_every`), never a sleep.
//! Background tasks live on the test's runtime and end with it (one runtime per test).

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::task::JoinHandle;
use wharf_agent::driver::fake::{FakeDriver, FakeInstance};
use wharf_agent::driver::{
    Driver, DriverError, DriverErrorKind, DriverInfo, InstanceSpec, LogLines, Observed,
    ObservedState, Stop,
};
use wharf_agent::{Agent, ControlPlane};
use wharf_client::{Client, ClientError};
use wharf_master::hub::NodeLogLines;
use wharf_master::mutate::Actor;
use wharf_master::{Master, MasterConfig, NodeLink};
use wharf_store::SqliteStore;
use wharf_types::{
    DeployRequest, DeployResponse, Deployment, DeploymentState, DriverKind, InstanceInfo, LogQuery,
    NodeReport, NodeState,
};

use crate::wait_for_every;

/// How often waits poll: in-process checks are cheap.
pub const POLL: Duration = Duration::from_millis(10);

/// Settings of an in-process cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The master's settings. The default has a node timeout of 1 s, for failover tests.
    pub master: MasterConfig,
    /// Each agent re-sends its last report this often (any report is a heartbeat), as `wharf up`.
    pub heartbeat: Duration,
    /// Every mutating driver call (prepare, create, start, stop, remove) first waits a random time
    /// up to this long, so operations overlap as on a real engine. Zero: no wait.
    pub driver_delay: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            master: MasterConfig {
                node_timeout: Duration::from_secs(1),
                ..Default::default()
            },
            heartbeat: Duration::from_millis(250),
            driver_delay: Duration::ZERO,
        }
    }
}

/// One create, as the agent asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateRecord {
    pub node: String,
    /// `InstanceSpec::name`: `wharf-{stack}-{service}-{slot}-g{generation}`.
    pub name: String,
    pub stack: String,
    pub service: String,
    pub slot: u32,
    pub generation: u64,
    /// The spec hash the agent asked for.
    pub spec_hash: String,
    /// The spec hash of what the fake holds under that name after the call: differs from
    /// `spec_hash` when the create adopted an existing instance of another spec. `None` when the
    /// create failed.
    pub got_spec_hash: Option<String>,
}

/// What a driver call did to an instance, in the cluster-wide event log (`InProcCluster::events`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriverOp {
    /// Logged once the create returned.
    Create,
    /// Logged once the start returned: the instance runs from here on.
    Start,
    /// Logged before the stop is called: the instance ran until here. With the grace asked for.
    Stop { grace: Duration },
    /// Logged once the remove returned.
    Remove,
}

/// One mutating driver call of any node, in the order they happened cluster-wide (one lock), so
/// a test can tell across nodes whether a replacement ran before the instance it replaces
/// stopped. Only calls that succeeded are logged, stops excepted (logged as asked).
#[derive(Clone, Debug)]
pub struct DriverEvent {
    pub at: Instant,
    pub node: String,
    pub op: DriverOp,
    /// `InstanceSpec::name`: `wharf-{stack}-{service}-{slot}-g{generation}`.
    pub name: String,
    pub service: String,
    pub slot: u32,
    pub generation: u64,
    pub spec_hash: String,
}

/// An instance one node's fake driver holds.
#[derive(Clone, Debug)]
pub struct NodeInstance {
    pub node: String,
    pub handle: String,
    pub instance: FakeInstance,
}

impl NodeInstance {
    pub fn spec(&self) -> &InstanceSpec {
        &self.instance.spec
    }
    pub fn state(&self) -> ObservedState {
        self.instance.observed.state
    }
    pub fn is_running(&self) -> bool {
        self.state() == ObservedState::Running
    }
}

/// A real master and `n` real agents in this process.
pub struct InProcCluster {
    pub master: Master,
    /// A client of the master's API with an admin token.
    pub client: Client,
    config: ClusterConfig,
    nodes: Vec<Node>,
    creates: Arc<Mutex<Vec<CreateRecord>>>,
    events: Arc<Mutex<Vec<DriverEvent>>>,
    /// Images whose prepare fails on every node (a pull that fails), with the error.
    failing_images: Arc<Mutex<BTreeMap<String, String>>>,
    /// The API and the controllers, by name: a wait gives up at once when one of them ended.
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    dir: tempfile::TempDir,
}

struct Node {
    id: String,
    driver: FakeDriver,
    running: Option<RunningAgent>,
}

struct RunningAgent {
    task: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    control: Arc<InProcControl>,
}

impl InProcCluster {
    /// Start a master and `n_agents` agents (nodes `node-0` … `node-{n-1}`), and wait until every
    /// node is registered and ready. With `WHARF_LOG` set (e.g. `wharf_master=debug`), the
    /// master's and agents' logs go to the test's output.
    pub async fn start(n_agents: usize, config: ClusterConfig) -> anyhow::Result<InProcCluster> {
        if let Ok(spec) = std::env::var("WHARF_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(spec))
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().context("cannot make the cluster's temp dir")?;
        let store = SqliteStore::open(&dir.path().join("wharf.db"))
            .context("cannot open the store of the in-process cluster")?;
        let master = Master::with_config(Arc::new(store), config.master.clone());
        let token = master
            .create_admin_token(&Actor::named("inproc"), "admin")
            .await
            .context("cannot create the admin token")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the API on 127.0.0.1:0")?;
        let url = format!("http://{}", listener.local_addr()?);
        let api = tokio::spawn({
            let m = master.clone();
            async move {
                if let Err(e) = wharf_master::api::serve(m, listener).await {
                    eprintln!("in-process cluster: the API stopped: {e}");
                }
            }
        });
        let mut cluster = InProcCluster {
            client: Client::new(url, token),
            master,
            config,
            nodes: Vec::new(),
            creates: Arc::default(),
            events: Arc::default(),
            failing_images: Arc::default(),
            tasks: vec![("API", api)],
            dir,
        };
        for i in 0..n_agents {
            cluster.nodes.push(Node {
                id: format!("node-{i}"),
                driver: FakeDriver::new(),
                running: None,
            });
            cluster.start_agent(i).await?;
        }
        cluster.tasks.extend(cluster.master.spawn_controllers());
        cluster
            .client
            .healthz()
            .await
            .context("the API does not answer")?;
        let ids = cluster.node_ids();
        cluster
            .wait("every node ready", Duration::from_secs(5), || {
                let client = cluster.client.clone();
                let ids = ids.clone();
                async move {
                    let nodes = client.list_nodes().await?;
                    let ready = ids.iter().all(|id| {
                        nodes
                            .iter()
                            .any(|n| &n.id == id && n.state == NodeState::Ready)
                    });
                    let seen: Vec<_> = nodes.iter().map(|n| (&n.id, n.state)).collect();
                    anyhow::Ok(if ready {
                        crate::Check::Done(())
                    } else {
                        crate::not_yet(seen)
                    })
                }
            })
            .await?;
        Ok(cluster)
    }

    /// The ids of the nodes, by index.
    pub fn node_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    /// The id of node `i`.
    pub fn node(&self, i: usize) -> &str {
        &self.nodes[i].id
    }

    /// The fake driver of node `i` (clones share its state).
    pub fn driver(&self, i: usize) -> &FakeDriver {
        &self.nodes[i].driver
    }

    /// Every node's id and fake driver.
    pub fn drivers(&self) -> Vec<(String, FakeDriver)> {
        self.nodes
            .iter()
            .map(|n| (n.id.clone(), n.driver.clone()))
            .collect()
    }

    /// Whether node `i`'s agent runs (not killed).
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].running.is_some()
    }

    /// Where the master keeps its store.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Every create of every node so far, in the order they happened (per node).
    pub fn creates(&self) -> Vec<CreateRecord> {
        self.creates.lock().clone()
    }

    /// Every create, start, stop and remove of every node so far, in the order they happened
    /// (see `DriverEvent`).
    pub fn events(&self) -> Vec<DriverEvent> {
        self.events.lock().clone()
    }

    /// Make every `prepare` of an instance of `image`, on every node, fail with `error` (as a
    /// pull that fails), until `unfail_image`.
    pub fn fail_image(&self, image: &str, error: &str) {
        self.failing_images
            .lock()
            .insert(image.to_string(), error.to_string());
    }

    pub fn unfail_image(&self, image: &str) {
        self.failing_images.lock().remove(image);
    }

    /// A shared handle on the create log, for samplers running beside the test.
    pub fn create_log(&self) -> CreateLog {
        CreateLog(self.creates.clone())
    }

    /// Stop node `i`'s agent (its loop and heartbeat) and disconnect it from the hub, as a crash
    /// of the agent process would; its fake's instances keep running. Liveness makes the node
    /// unreachable after the node timeout.
    pub async fn kill_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let Some(r) = node.running.take() else {
            bail!("the agent of {} is not running", node.id);
        };
        r.control.dead.store(true, Ordering::SeqCst);
        r.task.abort();
        r.heartbeat.abort();
        let _ = r.task.await;
        let _ = r.heartbeat.await;
        // A report in flight holds this lock: once we have it, none is left.
        drop(r.control.last.lock().await);
        self.master.hub.disconnect(&node.id);
        Ok(())
    }

    /// Start a new agent for node `i` on the same fake driver and node id (killing the running one
    /// first, if any): it must adopt what the fake runs.
    pub async fn restart_agent(&mut self, i: usize) -> anyhow::Result<()> {
        if self.is_up(i) {
            self.kill_agent(i).await?;
        }
        self.start_agent(i).await
    }

    async fn start_agent(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let driver: Arc<dyn Driver> = Arc::new(Recorded {
            node: node.id.clone(),
            inner: node.driver.clone(),
            creates: self.creates.clone(),
            events: self.events.clone(),
            failing_images: self.failing_images.clone(),
            delay: self.config.driver_delay,
        });
        let agent = Agent::new(vec![driver], BTreeMap::new());
        let facts = agent.facts(&node.id).await;
        let link: Arc<dyn NodeLink> = Arc::new(InProcLink(agent.clone()));
        // Registering is a compare-and-swap of the node record, which liveness also writes.
        let mut attempt = 0;
        let desired = loop {
            attempt += 1;
            match self
                .master
                .hub
                .register(&node.id, facts.clone(), link.clone())
                .await
            {
                Ok(rx) => break rx,
                Err(e) if attempt < 20 => {
                    note(&format!("register {} again: {e}", node.id));
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => return Err(anyhow!("cannot register {}: {e}", node.id)),
            }
        };
        let control = Arc::new(InProcControl {
            master: self.master.clone(),
            node: node.id.clone(),
            last: Default::default(),
            dead: AtomicBool::new(false),
        });
        let task = tokio::spawn(agent.run(desired, control.clone()));
        let heartbeat = tokio::spawn(heartbeat(control.clone(), self.config.heartbeat));
        self.nodes[i].running = Some(RunningAgent {
            task,
            heartbeat,
            control,
        });
        Ok(())
    }

    /// Load a stack file (as `wharf stack deploy` does: `wharf_compose`, name from `name:`) and
    /// PUT it. Returns the API's answer (`deployment_id` is `None` when nothing changed).
    pub async fn deploy(&self, stack_yaml: &str) -> anyhow::Result<DeployResponse> {
        let loaded = wharf_compose::load_str(
            stack_yaml,
            "stack.yml",
            self.dir.path(),
            &wharf_compose::LoadOptions::default(),
        )
        .map_err(|e| anyhow!("the stack file does not load:\n{e}"))?;
        let spec = loaded.spec;
        let name = spec.name.clone();
        Ok(self
            .client
            .deploy_stack(&name, &DeployRequest::of(spec))
            .await?)
    }

    /// `deploy`, then wait for its deployment to end; fails unless it succeeded.
    pub async fn deploy_and_wait(
        &self,
        stack_yaml: &str,
        timeout: Duration,
    ) -> anyhow::Result<Deployment> {
        let r = self.deploy(stack_yaml).await?;
        let id = r
            .deployment_id
            .ok_or_else(|| anyhow!("the deploy changed nothing: no deployment"))?;
        let d = self.wait_deployment(&id, timeout).await?;
        if d.state != DeploymentState::Succeeded {
            bail!("deployment {id} ended {:?}: {d:#?}", d.state);
        }
        Ok(d)
    }

    /// Wait until deployment `id` is no longer in progress; returns it as it ended.
    pub async fn wait_deployment(&self, id: &str, timeout: Duration) -> anyhow::Result<Deployment> {
        let client = &self.client;
        self.wait(&format!("deployment {id} to end"), timeout, || async move {
            ended(client.deployment(id).await?)
        })
        .await
    }

    /// Wait until the stack's last deployment has ended (a newer one may start meanwhile: the
    /// wait follows it); returns it as it ended.
    pub async fn wait_last_deployment(
        &self,
        stack: &str,
        timeout: Duration,
    ) -> anyhow::Result<Deployment> {
        let client = &self.client;
        let what = format!("the last deployment of stack {stack} to end");
        self.wait(&what, timeout, || async move {
            let info = client.get_stack(stack).await?;
            ended(
                info.deployment
                    .ok_or_else(|| anyhow!("stack {stack} has no deployment"))?,
            )
        })
        .await
    }

    /// The stack's instances as the API shows them (`wharf stack ps`).
    pub async fn instances(&self, stack: &str) -> anyhow::Result<Vec<InstanceInfo>> {
        Ok(self.client.stack_instances(stack).await?)
    }

    /// What every node's fake holds, in any state (killed nodes included).
    pub fn fake_instances(&self) -> Vec<NodeInstance> {
        fake_instances(&self.drivers())
    }

    /// `fake_instances` of the nodes whose agent runs.
    pub fn live_instances(&self) -> Vec<NodeInstance> {
        let live: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| n.running.is_some())
            .map(|n| (n.id.clone(), n.driver.clone()))
            .collect();
        fake_instances(&live)
    }

    /// Poll `f` every `POLL` until it is done (see `crate::wait_for`); fails at once if the API
    /// or a controller ended (a panic), which no wait would survive.
    pub async fn wait<T, C, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: F,
    ) -> anyhow::Result<T>
    where
        C: crate::IntoCheck<T>,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = C>,
    {
        let tasks = &self.tasks;
        let dead = || tasks.iter().find(|(_, t)| t.is_finished()).map(|(n, _)| *n);
        let r = wait_for_every(what, timeout, POLL, || {
            let poll = dead().is_none().then(&mut f);
            async move {
                match poll {
                    Some(p) => match p.await.into_check() {
                        crate::Check::Done(v) => crate::Check::Done(Some(v)),
                        crate::Check::NotYet(o) => crate::Check::NotYet(o),
                    },
                    None => crate::Check::Done(None),
                }
            }
        })
        .await?;
        match r {
            Some(v) => Ok(v),
            None => bail!(
                "the master's {} ended while waiting for {what} (see the panic above)",
                dead().unwrap_or("task")
            ),
        }
    }
}

impl Drop for InProcCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(r) = n.running.take() {
                r.control.dead.store(true, Ordering::SeqCst);
                r.task.abort();
                r.heartbeat.abort();
            }
        }
        for (_, t) in &self.tasks {
            t.abort();
        }
    }
}

/// The create log of a cluster, shared with samplers.
#[derive(Clone)]
pub struct CreateLog(Arc<Mutex<Vec<CreateRecord>>>);

impl CreateLog {
    /// Every create so far.
    pub fn all(&self) -> Vec<CreateRecord> {
        self.0.lock().clone()
    }
    /// The creates from index `from` on, and the index to read from next time.
    pub fn since(&self, from: usize) -> (Vec<CreateRecord>, usize) {
        let log = self.0.lock();
        let from = from.min(log.len());
        (log[from..].to_vec(), log.len())
    }
}

/// What the given fakes hold, in any state.
pub fn fake_instances(drivers: &[(String, FakeDriver)]) -> Vec<NodeInstance> {
    let mut out = Vec::new();
    for (node, d) in drivers {
        for state in [
            ObservedState::Created,
            ObservedState::Running,
            ObservedState::Exited,
            ObservedState::Other,
        ] {
            for handle in d.handles_in(state) {
                if let Some(instance) = d.instance(&handle) {
                    out.push(NodeInstance {
                        node: node.clone(),
                        handle,
                        instance,
                    });
                }
            }
        }
    }
    out
}

fn ended(d: Deployment) -> anyhow::Result<crate::Check<Deployment>> {
    Ok(if d.state == DeploymentState::InProgress {
        crate::not_yet(brief(&d))
    } else {
        crate::Check::Done(d)
    })
}

/// A deployment in one line per service, for timeout messages.
pub fn brief(d: &Deployment) -> String {
    let mut s = format!("{} {:?}", d.id, d.state);
    if let Some(m) = &d.message {
        s.push_str(&format!(" ({m})"));
    }
    for p in &d.services {
        s.push_str(&format!(
            "; {}: {}/{} updated, {} ready",
            p.service, p.updated, p.desired, p.ready
        ));
        if let Some(e) = &p.error {
            s.push_str(&format!(", error: {e}"));
        }
        if let Some(n) = &p.note {
            s.push_str(&format!(", {n}"));
        }
        for i in &p.instances {
            s.push_str(&format!(" [{i:?}]"));
        }
    }
    s
}

/// Whether an error is the API's 409 (a conflict: the operation raced another, or a rollback has
/// no previous spec).
pub fn is_conflict(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::Api { status: 409, .. })
    )
}

/// Something worth knowing when a test fails oddly: on stderr with `WHARF_INPROC_VERBOSE` set.
fn note(msg: &str) {
    if std::env::var_os("WHARF_INPROC_VERBOSE").is_some() {
        eprintln!("in-process cluster: {msg}");
    }
}

/// The in-process control plane of one agent: reports go straight into the hub; the last one is
/// re-sent as the heartbeat (as `LocalControl` of `wharf up`).
struct InProcControl {
    master: Master,
    node: String,
    /// Held while sending, so a re-sent report never overtakes a newer one.
    last: tokio::sync::Mutex<Option<NodeReport>>,
    /// Killed: report nothing more.
    dead: AtomicBool,
}

#[async_trait::async_trait]
impl ControlPlane for InProcControl {
    async fn report(&self, report: NodeReport) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if self.dead.load(Ordering::SeqCst) {
            return Err(format!("the agent of {} was killed", self.node));
        }
        *last = Some(report.clone());
        self.master
            .hub
            .report(&self.node, report)
            .await
            .map_err(|e| e.to_string())
    }
}

async fn heartbeat(control: Arc<InProcControl>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let last = control.last.lock().await;
        if control.dead.load(Ordering::SeqCst) {
            return;
        }
        if let Some(r) = last.as_ref() {
            // A failure (not registered) is the kill or a race with it: nothing to do.
            let _ = control.master.hub.report(&control.node, r.clone()).await;
        }
    }
}

/// What the master may ask of an in-process node besides its desired state: logs.
struct InProcLink(Arc<Agent>);

#[async_trait::async_trait]
impl NodeLink for InProcLink {
    async fn logs(&self, instance: &str, q: LogQuery) -> Result<NodeLogLines, String> {
        let lines = self.0.logs(instance, q).await?;
        Ok(lines.map(|r| r.map_err(|e| e.describe())).boxed())
    }
}

/// The fake driver of a node, with every create logged cluster-wide (and every mutating call in
/// the event log), images that fail to prepare and, optionally, a random delay before each
/// mutating call.
struct Recorded {
    node: String,
    inner: FakeDriver,
    creates: Arc<Mutex<Vec<CreateRecord>>>,
    events: Arc<Mutex<Vec<DriverEvent>>>,
    failing_images: Arc<Mutex<BTreeMap<String, String>>>,
    delay: Duration,
}

impl Recorded {
    fn log(&self, op: DriverOp, inst: &InstanceSpec) {
        self.events.lock().push(DriverEvent {
            at: Instant::now(),
            node: self.node.clone(),
            op,
            name: inst.name(),
            service: inst.service.clone(),
            slot: inst.slot,
            generation: inst.generation,
            spec_hash: inst.spec_hash.clone(),
        });
    }

    /// What the fake holds under `handle`, if anything.
    fn spec_of(&self, handle: &str) -> Option<InstanceSpec> {
        self.inner.instance(handle).map(|i| i.spec)
    }

    async fn pause(&self) {
        if !self.delay.is_zero() {
            let max = u64::try_from(self.delay.as_micros()).unwrap_or(u64::MAX);
            tokio::time::sleep(Duration::from_micros(rand::random_range(0..=max))).await;
        }
    }
}

#[async_trait::async_trait]
impl Driver for Recorded {
    fn kind(&self) -> DriverKind {
        self.inner.kind()
    }

    async fn info(&self) -> Result<DriverInfo, DriverError> {
        self.inner.info().await
    }

    async fn list(&self) -> Result<Vec<Observed>, DriverError> {
        self.inner.list().await
    }

    async fn prepare(&self, inst: &InstanceSpec) -> Result<(), DriverError> {
        self.pause().await;
        let failing = inst
            .spec
            .image
            .as_ref()
            .and_then(|image| self.failing_images.lock().get(image).cloned());
        // The fake records the call either way.
        let r = self.inner.prepare(inst).await;
        match failing {
            Some(error) => Err(DriverError::new(DriverErrorKind::ImageMissing, error)),
            None => r,
        }
    }

    async fn create_with_files(
        &self,
        inst: &InstanceSpec,
        _files: &[wharf_agent::driver::MountedFile],
    ) -> Result<String, DriverError> {
        self.create(inst).await
    }

    async fn create(&self, inst: &InstanceSpec) -> Result<String, DriverError> {
        self.pause().await;
        let r = self.inner.create(inst).await;
        let got = r
            .as_ref()
            .ok()
            .and_then(|h| self.inner.instance(h))
            .map(|i| i.spec.spec_hash);
        self.creates.lock().push(CreateRecord {
            node: self.node.clone(),
            name: inst.name(),
            stack: inst.stack.clone(),
            service: inst.service.clone(),
            slot: inst.slot,
            generation: inst.generation,
            spec_hash: inst.spec_hash.clone(),
            got_spec_hash: got,
        });
        if r.is_ok() {
            self.log(DriverOp::Create, inst);
        }
        r
    }

    async fn start(&self, handle: &str) -> Result<(), DriverError> {
        self.pause().await;
        let r = self.inner.start(handle).await;
        if r.is_ok()
            && let Some(inst) = self.spec_of(handle)
        {
            self.log(DriverOp::Start, &inst);
        }
        r
    }

    async fn stop(&self, handle: &str, how: &Stop) -> Result<(), DriverError> {
        self.pause().await;
        if let Some(inst) = self.spec_of(handle) {
            self.log(DriverOp::Stop { grace: how.grace }, &inst);
        }
        self.inner.stop(handle, how).await
    }

    async fn remove(&self, handle: &str) -> Result<(), DriverError> {
        self.pause().await;
        let inst = self.spec_of(handle);
        let r = self.inner.remove(handle).await;
        if r.is_ok()
            && let Some(inst) = inst
        {
            self.log(DriverOp::Remove, &inst);
        }
        r
    }

    async fn logs(&self, handle: &str, q: LogQuery) -> Result<LogLines, DriverError> {
        self.inner.logs(handle, q).await
    }

    async fn changes(&self) -> Result<BoxStream<'static, ()>, DriverError> {
        self.inner.changes().await
    }

    async fn remove_stack_resources(&self, stack: &str, volumes: bool) -> Result<(), DriverError> {
        self.inner.remove_stack_resources(stack, volumes).await
    }
}
