//! The Wharf master: the API, authentication and the audit trail, and the controllers that turn
//! stacks into placed instances (the deployer). It owns the store; agents only talk to it.
//!
//! Code map: `model` (records and keys) · `read` (typed reads of the store) · `mutate` (the one path
//! every change takes, with its audit record) · `audit` (the trail's hash chain and its check) · `diff`, `rollout`, `drain`, `placement`,
//! `network`, `ingress`, `discovery` (pure planning: what changes, how a rollout proceeds, when a
//! placement may drop, where instances go after a failure or drain, subnets, the routing table,
//! the DNS records) · `jobs` (pure: when a job's runs start, skipped times, how a run stands)
//! · `deployer` (the controller loop) · `leader` (which master leads: the
//! election on a lease, fenced controller writes, agents' presence) · `reports` (the deployer's index of agent
//! reports) · `liveness` (node states from their beats) · `hub` (per-node desired state out, agent
//! reports in) · `agents` (the agent listener: joins and mutual-TLS streams) · `execs` (exec and
//! stats requests on an agent's stream, with credits both ways) · `auth` (API tokens)
//! · `seal` (encryption at rest: the data key under the master key file) · `secrets` (sealed,
//! versioned values) · `users` (named users: argon2id passwords, invitations, sessions) · `policy` (roles,
//! permissions and the one table that decides every API operation) · `admission` (the
//! cluster's admission policy: what a deploy may ask of the hosts) · `advisories` (the
//! vulnerability database: imported OSV advisories, for scanning images) · `api` (the
//! HTTP API) · `registry` (the built-in OCI registry: names, ranges, manifests, blobs on disk,
//! its metadata in the store, garbage collection; a deploy pins tags to digests, nodes' mirrors
//! fetch from it) · `autodeploy` (`x-wharf: {auto_deploy: true}`: a tag pushed anew rolls the
//! services that follow it) · `metrics` (Prometheus metrics: what is recorded where it happens, the state gauges
//! at each scrape, a store that times its transactions) · `events` (the event log: what each change means,
//! written in the change's own transaction; `events::store::Evented` adds them to every write)
//! · `git` (each stack's git repository: `git push` builds, pushes and deploys through its
//! hook) · `hooks` (webhooks: signatures and push payloads, pure; `hooks::dispatch` sends the events
//! outgoing hooks want, from a cursor on the event log) · `testdata` (records for tests).
#![forbid(unsafe_code)]

pub mod admission;
pub mod advisories;
pub mod agents;
pub mod api;
pub mod audit;
pub mod auth;
pub mod autodeploy;
pub mod deployer;
pub mod diff;
pub mod discovery;
pub mod drain;
pub mod events;
mod execs;
pub mod git;
pub mod hooks;
pub mod hub;
pub mod ingress;
pub mod jobs;
pub mod leader;
pub mod liveness;
pub mod metrics;
pub mod model;
pub mod mutate;
pub mod network;
pub mod placement;
pub mod policy;
pub mod read;
pub mod registry;
pub mod reports;
pub mod rollout;
pub mod seal;
pub mod secrets;
#[cfg(test)]
mod testdata;
pub mod users;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use wharf_store::{Store, StoreError};

pub use hub::{Hub, NodeLink};

/// Errors of the master's operations. The API turns them into `ApiError` bodies.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt record {0}")]
    Corrupt(String),
    #[error("{what} not found")]
    NotFound { what: String, hint: Option<String> },
    #[error("{message}")]
    Conflict {
        message: String,
        hint: Option<String>,
    },
    #[error("{message}")]
    Invalid {
        message: String,
        location: Option<String>,
        hint: Option<String>,
    },
    #[error("{0}")]
    Unavailable(String),
    /// Credentials that do not check out (a login).
    #[error("{message}")]
    Unauthorized {
        message: String,
        hint: Option<String>,
    },
}

/// Wall-clock milliseconds since the Unix epoch. Read at the edges (API, controllers) and passed in.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A short random id (hex), for deployments and audit records.
pub fn new_id(prefix: &str) -> String {
    let n: u64 = rand::random();
    format!("{prefix}{n:016x}")
}

/// Settings of a master.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// A node that has not reported for this long is `unreachable` and its instances move.
    pub node_timeout: std::time::Duration,
    /// The pool of (stack, node) subnets for cross-host container networking (`network.rs`).
    /// `None` (single node, `wharf up`): the engine picks each stack network's subnet.
    pub network_pool: Option<ipnet::Ipv4Net>,
    /// Container traffic between nodes goes through WireGuard (`--encryption`, on by default);
    /// off only on a trusted network, by an explicit `--encryption off`.
    pub encryption: bool,
    /// The cluster domain of service discovery: `<service>.<stack>.<domain>`.
    pub cluster_domain: String,
    /// A node whose driver (the Docker engine) has been down this long loses that driver's
    /// instances to other nodes, and takes no new ones until it is back.
    pub engine_timeout: std::time::Duration,
    /// Build contexts a deploy may name must be under one of these directories (on the nodes):
    /// an API client must not have a node pack `/etc` into an image. Empty: no builds.
    pub build_roots: Vec<std::path::PathBuf>,
    /// Also append every audit record to this file, as a JSON line (`--audit-log`).
    pub audit_log: Option<std::path::PathBuf>,
    /// What a deploy may ask of the hosts (`--policy FILE`; default: refuse every rule).
    pub admission: admission::Admission,
    /// The built-in OCI registry (`/v2/`); `None`: no registry.
    pub registry: Option<registry::RegistryConfig>,
    /// The stacks' git repositories (`/git/STACK.git`, `git push` deploys); `None`: none.
    pub git: Option<git::GitConfig>,
}

/// The default `engine_timeout`: long enough for an engine restart (`systemctl restart docker`).
pub const DEFAULT_ENGINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The default cluster domain (`.internal` is reserved for private use).
pub const DEFAULT_CLUSTER_DOMAIN: &str = "wharf.internal";

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            node_timeout: std::time::Duration::from_secs(1),
            network_pool: None,
            encryption: true,
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_string(),
            engine_timeout: DEFAULT_ENGINE_TIMEOUT,
            build_roots: Vec::new(),
            audit_log: None,
            admission: admission::Admission::default(),
            registry: None,
            git: None,
        }
    }
}

/// The master: shared by the API handlers and the controllers.
#[derive(Clone)]
pub struct Master {
    /// The store, read through `cache` (every read is in memory; see `wharf_store::CachedStore`).
    pub store: Arc<dyn Store>,
    /// The same store, for decoded reads (`Master::decoded`).
    pub cache: Arc<wharf_store::CachedStore>,
    pub hub: Hub,
    pub config: Arc<MasterConfig>,
    /// When this master started: nodes get a grace period to reconnect after a master restart,
    /// so restarting the master never moves (restarts) a workload.
    pub started: std::time::Instant,
    /// Held while an audit record is appended: one at a time, in order (`mutate`).
    audit_lock: Arc<tokio::sync::Mutex<()>>,
    /// Failed authentications per source address (`auth::FailureBudget`).
    pub auth_failures: Arc<auth::FailureBudget>,
    /// The audit trail's copy in a file, once `open_audit_trail` opened it.
    audit_sink: Arc<std::sync::OnceLock<audit::Sink>>,
    /// Seals what the store must not hold in the clear, once `open_keys` opened the data key.
    sealer: Arc<std::sync::OnceLock<seal::Sealer>>,
    /// Where the master key file is (`open_keys`).
    key_dir: Arc<std::sync::OnceLock<std::path::PathBuf>>,
    /// Whether this master leads (`leader.rs`): only the leader's controllers write.
    pub role: Arc<leader::Role>,
    /// The etcd cluster, when the store is one (`wharf master ls` shows its members' health).
    pub etcd: Option<wharf_store::EtcdStore>,
    /// The built-in registry, when `MasterConfig::registry` asks for one (and its directory
    /// could be made: else a warning, and none).
    pub registry: Option<Arc<registry::Registry>>,
}

impl Master {
    pub fn new(store: Arc<dyn Store>) -> Master {
        Self::with_config(store, MasterConfig::default())
    }

    pub fn with_config(store: Arc<dyn Store>, config: MasterConfig) -> Master {
        // The audit trail, the event log and the vulnerability database are large and read
        // rarely (`wharf audit`, a stream's start, a scan): left out of the cache.
        metrics::handle(); // the recorder, before anything is recorded
        let store: Arc<dyn Store> = Arc::new(metrics::Metered(store));
        let cache = Arc::new(wharf_store::CachedStore::new(
            store,
            &[
                model::keys::AUDIT,
                model::keys::EVENTS,
                model::keys::ADVISORIES,
            ],
        ));
        // Every write goes through `Evented`, which adds the events it tells of.
        let store: Arc<dyn Store> = Arc::new(events::store::Evented::new(cache.clone()));
        let hub = Hub::new(store.clone());
        let registry = config.registry.as_ref().and_then(|c| match registry::Registry::open(c) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                tracing::warn!(dir = %c.dir.display(), error = %e, "no registry: cannot make its directory");
                None
            }
        });
        Master {
            store,
            cache,
            hub,
            config: Arc::new(config),
            started: std::time::Instant::now(),
            audit_lock: Arc::default(),
            auth_failures: Arc::default(),
            audit_sink: Arc::default(),
            sealer: Arc::default(),
            key_dir: Arc::default(),
            role: Arc::new(leader::Role::sole("master")),
            etcd: None,
            registry,
        }
    }

    /// This master on the etcd cluster `etcd` (its store): for the members' health.
    pub fn with_etcd(mut self, etcd: wharf_store::EtcdStore) -> Master {
        self.etcd = Some(etcd);
        self
    }

    /// This master with `role` (`leader::Role::elected` for a master that runs the election).
    pub fn with_role(mut self, role: leader::Role) -> Master {
        self.role = Arc::new(role);
        self
    }

    /// This master as its controllers see it: every write fenced on the current term.
    fn for_controllers(&self) -> Master {
        let mut m = self.clone();
        m.store = Arc::new(leader::Fenced::new(self.store.clone(), self.role.clone()));
        m
    }

    /// Open the store's data key with the master key file of `data_dir` (made for a new store);
    /// refused, saying what to do, when the file is missing or does not open it.
    pub async fn open_keys(&self, data_dir: &std::path::Path) -> Result<(), Error> {
        let sealer = seal::open(self.store.as_ref(), data_dir).await?;
        let _ = self.sealer.set(sealer);
        let _ = self.key_dir.set(data_dir.to_path_buf());
        Ok(())
    }

    /// Open the data key of an autolocked store with its unlock key (made, with the key, for a
    /// new store). A wrong key is refused (`Error::Unauthorized`) and audited as denied.
    pub async fn unlock_keys(&self, actor: &mutate::Actor, key: &str) -> Result<(), Error> {
        match seal::unlock(self.store.as_ref(), key).await {
            Ok(sealer) => {
                let _ = self.sealer.set(sealer);
                let txn = wharf_store::Txn::new();
                self.mutate(actor, "keys.unlock", "the data key", now_ms(), txn)
                    .await?;
                Ok(())
            }
            Err(e @ Error::Unauthorized { .. }) => {
                self.audit_denied(actor, "keys.unlock", "the data key", now_ms())
                    .await?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// A new master key file, the data key re-sealed under it (`wharf key rotate`).
    pub async fn rotate_keys(
        &self,
        actor: &mutate::Actor,
    ) -> Result<wharf_types::KeyRotation, Error> {
        let mut done = wharf_types::KeyRotation {
            key_file: None,
            unlock_key: None,
        };
        let target = if seal::is_autolocked(self.store.as_ref()).await? {
            let key = seal::rotate_unlock(self.store.as_ref(), self.sealer()).await?;
            done.unlock_key = Some(wharf_types::Secret(key));
            "the unlock key".to_string()
        } else {
            let dir = self.key_dir.get().ok_or_else(|| {
                Error::Unavailable(
                    "this master keeps no master key file (an in-memory store)".into(),
                )
            })?;
            seal::rotate(self.store.as_ref(), dir, self.sealer()).await?;
            let file = seal::key_file(dir).display().to_string();
            done.key_file = Some(file.clone());
            file
        };
        self.mutate(
            actor,
            "keys.rotate",
            &target,
            now_ms(),
            wharf_store::Txn::new(),
        )
        .await?;
        Ok(done)
    }

    /// The sealer of the store (a key of its own when no key file was opened: in-memory tests).
    pub fn sealer(&self) -> &seal::Sealer {
        self.sealer.get_or_init(seal::Sealer::ephemeral)
    }

    /// The cluster's identity: made with the store (the first start of a master on it), kept at
    /// `/cluster/id`. Every desired state carries it; agents remember it and act only on desired
    /// states of their own cluster (a new, restored or foreign store holds them back).
    pub async fn cluster_id(&self) -> Result<String, Error> {
        for _ in 0..3 {
            if let Some(kv) = self.store.get(model::keys::CLUSTER_ID).await? {
                return String::from_utf8(kv.value)
                    .map_err(|_| Error::Corrupt(format!("{}: not text", model::keys::CLUSTER_ID)));
            }
            let id = format!(
                "{:016x}{:016x}",
                rand::random::<u64>(),
                rand::random::<u64>()
            );
            let txn = wharf_store::Txn::new()
                .when([wharf_store::Compare::missing(model::keys::CLUSTER_ID)])
                .then([wharf_store::Op::put(
                    model::keys::CLUSTER_ID,
                    id.clone().into_bytes(),
                )]);
            if self.store.txn(txn).await?.succeeded {
                return Ok(id);
            }
        }
        Err(Error::Unavailable(
            "the cluster id keeps changing under this master".into(),
        ))
    }

    /// Start the controllers (liveness, the deployer) in the background. They run for as long
    /// as the process does: the caller owns them and ends the process if one ends (`wharf`'s
    /// `supervise.rs`).
    pub fn spawn_controllers(&self) -> Vec<(&'static str, tokio::task::JoinHandle<()>)> {
        let liveness = self.spawn_liveness();
        let d = deployer::Deployer::new(self.for_controllers());
        // The deployer's passes are CPU work that grows with the cluster (hundreds of ms at
        // 10,000 instances): on a thread of their own, so they never hold up the tasks that read
        // the agents' beats (a node must not look silent because the master was busy).
        let deployer = on_own_thread("wharf-deployer", d.run());
        let m = self.for_controllers();
        let pruner = tokio::spawn(async move {
            loop {
                if m.role.leading()
                    && let Err(e) = events::store::prune(m.store.as_ref(), now_ms()).await
                {
                    tracing::warn!(error = %e, "pruning old events failed; tried again in a minute");
                }
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            }
        });
        let hooks = tokio::spawn(hooks::dispatch::run(self.for_controllers()));
        let follow = tokio::spawn(autodeploy::run(self.for_controllers()));
        vec![
            ("liveness checker", liveness),
            ("deployer", deployer),
            ("event pruner", pruner),
            ("webhook dispatcher", hooks),
            ("auto_deploy follower", follow),
        ]
    }
}

/// The next connection of `listener`; accept errors (out of file descriptors, a connection
/// reset before it was taken) are logged as `what`'s and retried after a pause.
pub(crate) async fn accept(
    listener: &tokio::net::TcpListener,
    what: &str,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(error = %e, "{what}: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Run `task` on a thread of its own (with its own single-threaded runtime). The handle ends
/// when the task does, with its panic if it panicked; dropping or aborting the handle's task (or
/// the runtime it runs on) stops the thread.
fn on_own_thread(
    name: &str,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the thread");
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rt.block_on(async {
                    tokio::select! {
                        _ = task => {}
                        _ = stop_rx => {}
                    }
                })
            }));
            rt.shutdown_background();
            let _ = done_tx.send(ended);
        });
    tokio::spawn(async move {
        let _stop = stop_tx;
        if spawned.is_err() {
            panic!("cannot start a thread for the controller");
        }
        if let Ok(Err(panic)) = done_rx.await {
            std::panic::resume_unwind(panic);
        }
    })
}
