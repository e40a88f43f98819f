//! The normalised stack spec: what a Compose file means once parsed, interpolated and validated.
//!
//! The CLI produces it (through `wharf-compose`) and sends it; the master validates it again and
//! stores it. Durations are milliseconds, sizes bytes, CPU in nano-CPUs, so values compare exactly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

/// A stack: a named set of services deployed together.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StackSpec {
    pub name: String,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceSpec>,
    /// Top-level named volumes (Compose `volumes:`).
    #[serde(default)]
    pub volumes: BTreeMap<String, VolumeSpec>,
    /// Top-level networks (Compose `networks:`): the stack's segments. Every stack gets one
    /// Docker network per node; a service reaches only the services it shares a segment with
    /// (enforced by each node's firewall and DNS), and an `internal` segment has no way out.
    #[serde(default)]
    pub networks: BTreeMap<String, NetworkSpec>,
    /// Top-level `secrets:`: where each one's value lives in the cluster (never the value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, ObjectSpec>,
    /// Top-level `configs:`, as `secrets`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub configs: BTreeMap<String, ObjectSpec>,
}

/// A top-level `secrets:` or `configs:` entry: the object of the cluster it names. Its value
/// (read by the client from `file:`, `environment:` or `content:`) travels beside the spec in
/// the deploy request, never in it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectSpec {
    /// The object's name in the cluster: `<stack>_<key>` unless the file says `name:`.
    pub name: String,
    /// `external: true`: made beforehand (`wharf secret create`); the stack only uses it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
}

/// Which kind of object a service mounts as a file.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Secret,
    Config,
}

impl ObjectKind {
    /// `secret` or `config`: for messages and API paths.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Secret => "secret",
            ObjectKind::Config => "config",
        }
    }
}

/// A service's use of a secret or config: a read-only file in each of its instances.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// The top-level `secrets:`/`configs:` key.
    pub source: String,
    /// Absolute path in the instance (`/run/secrets/<source>` for a secret by default,
    /// `/<source>` for a config).
    pub target: String,
    /// Owner of the file (numeric); 0 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Permission bits; 0444 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// The object's name in the cluster and the version the instances get: set by the master at
    /// deploy (what a client sends here is ignored). Part of the instance hash, so a new version
    /// replaces the instances that use it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl FileRef {
    /// The permission bits of the file.
    pub fn mode(&self) -> u32 {
        self.mode.unwrap_or(0o444)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `external: true`: Wharf neither creates nor removes it.
    #[serde(default)]
    pub external: bool,
    /// The engine's name of the volume (`name:`, or `external: {name:}`). Unset: `<stack>_<key>`,
    /// or the key itself for an external volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl VolumeSpec {
    /// What a service's mount of this volume (top-level key `key`) carries of it, so the agent,
    /// which sees services and not stacks, knows what to attach and whether to create it.
    pub fn mount_options(&self, key: &str) -> MountOptions {
        MountOptions {
            volume_name: if self.external {
                Some(self.name.clone().unwrap_or_else(|| key.to_string()))
            } else {
                self.name.clone()
            },
            external: self.external,
            driver: self.driver.clone(),
            driver_opts: self.driver_opts.clone(),
            ..MountOptions::default()
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default)]
    pub external: bool,
    /// No way out: its services reach only the services they share a segment with.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
}

/// A service on one of its stack's networks (Compose `services.<s>.networks.<n>`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceNetwork {
    /// More names the service answers to, for the services on this network only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The network is `internal: true` (copied from the top-level `networks:`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
}

/// The segment every service without `networks:` is on.
pub const DEFAULT_NETWORK: &str = "default";

/// Which driver runs a service's instances.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// A container on the Docker Engine (the default).
    #[default]
    Docker,
    /// A native process supervised by the agent (`x-wharf: {driver: process}`), for hosts without Docker.
    Process,
}

/// One service of a stack, normalised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    #[serde(default)]
    pub driver: DriverKind,
    /// Image reference. For a service with `build`, the image Wharf builds and tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildSpec>,
    /// Overrides the image's CMD (or, for the process driver, the program and its arguments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Environment after merging `env_file`s and `environment` (environment wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// Ports exposed to other services only (`expose`), as "port" or "port/proto".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheck>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub depends_on: BTreeMap<String, DependsOn>,
    /// Milliseconds between the stop signal and SIGKILL. Default 10 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    /// `network_mode: host`; unset: the stack's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_mode: Option<crate::NetworkMode>,
    /// Capabilities, privileges, seccomp and AppArmor, sysctls, ulimits, tmpfs, pids limit,
    /// user namespace: what the container asks of the kernel beyond the defaults.
    #[serde(default, skip_serializing_if = "crate::Hardening::is_default")]
    pub hardening: crate::Hardening,
    /// Memory swap, CPU shares, shared memory, logging, DNS, extra hosts, TTY, devices,
    /// platform, hooks…: how the container runs beyond the above (`runtime.rs`).
    #[serde(default, skip_serializing_if = "crate::ContainerOptions::is_default")]
    pub container: crate::ContainerOptions,
    #[serde(default)]
    pub deploy: DeploySpec,
    /// Secrets mounted as files (`secrets:` of the service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileRef>,
    /// Configs mounted as files (`configs:` of the service).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileRef>,
    /// Wharf-only placement and lifecycle settings (`x-wharf:` in the stack file).
    #[serde(default, skip_serializing_if = "WharfExt::is_default")]
    pub wharf: WharfExt,
    /// The stack's networks (segments) the service is on; empty: `default` only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, ServiceNetwork>,
}

impl ServiceSpec {
    /// The segments the service is on (`default` when it names none).
    pub fn segments(&self) -> Vec<&str> {
        if self.networks.is_empty() {
            vec![DEFAULT_NETWORK]
        } else {
            self.networks.keys().map(String::as_str).collect()
        }
    }

    /// A job: it runs to completion (a job mode, or a schedule), and the job controller, not
    /// the rollout, makes its instances.
    pub fn is_job(&self) -> bool {
        self.wharf.schedule.is_some()
            || matches!(
                self.deploy.mode,
                DeployMode::ReplicatedJob | DeployMode::GlobalJob
            )
    }

    /// The restart condition the agent applies: a job's instance that exits 0 is done, so
    /// `any` means `on-failure` for jobs (as Swarm's jobs).
    pub fn restart_condition(&self) -> RestartCondition {
        match self.restart.condition {
            RestartCondition::Any if self.is_job() => RestartCondition::OnFailure,
            c => c,
        }
    }

    /// Every file the service mounts, with its kind.
    pub fn files(&self) -> impl Iterator<Item = (ObjectKind, &FileRef)> {
        let secrets = self.secrets.iter().map(|f| (ObjectKind::Secret, f));
        secrets.chain(self.configs.iter().map(|f| (ObjectKind::Config, f)))
    }
}

/// Settings under a service's `x-wharf:` besides `driver`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WharfExt {
    /// Services of the same stack whose instances this one wants on the same nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity: Vec<String>,
    /// Services of the same stack this one must not share a node with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anti_affinity: Vec<String>,
    /// Move instances that use local named volumes when their node is lost (their data stays
    /// behind). Off by default: such instances wait for their node.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub move_with_volumes: bool,
    /// Spread instances again on their own when nodes join (otherwise `wharf service rebalance`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_rebalance: bool,
    /// Never run two instances of a slot at once, even across a partition (a singleton, a leader
    /// job): an agent cut off from the master for the node timeout stops these instances itself,
    /// and the master replaces them only after twice the node timeout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub at_most_once: bool,
    /// How long an instance drains (no new requests from the proxies, requests in flight finish)
    /// before it is stopped: `x-wharf: {drain_grace: 5s}`. Unset: 2 s. Not part of the instance
    /// hash: changing it replaces nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_grace_ms: Option<u64>,
    /// Routes from the ingress every node runs to this service's instances (`x-wharf: ingress:`).
    /// Not part of the instance hash: changing routes replaces nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRoute>,
    /// Services of other stacks (`stack/service`) let in besides the service's own segments
    /// (`x-wharf: {allow_from: [monitoring/prometheus]}`). Not part of the instance hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
    /// Refuse a deploy whose image has findings this bad or worse (`x-wharf: {scan: {block:
    /// critical}}`): the master has the image scanned on a node before it accepts the deploy.
    /// Not part of the instance hash: a policy, not what runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_block: Option<crate::Severity>,
    /// Roll this service (with its `update_config`) when the tag its image names moves in the
    /// cluster's registry (`x-wharf: {auto_deploy: true}`). Not part of the instance hash.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_deploy: bool,
    /// Run as a job on a cron schedule (`x-wharf: {schedule: "*/5 * * * *"}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<JobSchedule>,
    /// How many finished runs of a job are kept, with their instances and logs
    /// (`x-wharf: {history: 5}`); unset: [`DEFAULT_JOB_HISTORY`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<u32>,
}

/// Finished runs of a job kept when `x-wharf: history` is unset.
pub const DEFAULT_JOB_HISTORY: u32 = 10;

impl WharfExt {
    pub fn is_default(&self) -> bool {
        *self == WharfExt::default()
    }
}

impl WharfExt {
    /// The port the `redirect_https` route `i` sends clients to: the `listen` port of the
    /// service's first TLS route that shares one of its hosts (either without hosts counts as
    /// sharing), else of its first TLS route. `None` when the service has no TLS route.
    pub fn redirect_port(&self, i: usize) -> Option<u16> {
        redirect_port(&self.ingress, i)
    }
}

/// [`WharfExt::redirect_port`] over a service's routes.
pub fn redirect_port(routes: &[IngressRoute], i: usize) -> Option<u16> {
    let route = routes.get(i)?;
    let shares = |other: &IngressRoute| {
        route.hosts.is_empty()
            || other.hosts.is_empty()
            || other.hosts.iter().any(|h| route.hosts.contains(h))
    };
    let tls = || routes.iter().filter(|r| r.tls.is_some());
    tls()
        .find(|r| shares(r))
        .or_else(|| tls().next())
        .map(|r| r.listen)
}

/// One ingress route: the ingress of every node listens on `listen` and forwards to `port` of
/// the service's running, healthy instances.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressRoute {
    /// The container port traffic goes to.
    pub port: u16,
    /// The port the ingress of every node listens on.
    pub listen: u16,
    /// The IP address the ingress listens on. `None`: all interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_address: Option<String>,
    #[serde(default)]
    pub protocol: IngressProtocol,
    /// Host names (`a.example`, `*.example`) this route answers (HTTP). Empty: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Path prefixes this route answers (HTTP). Empty: every path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default)]
    pub balance: IngressBalance,
    /// Pin each client to an instance with a cookie of this name (HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
    /// How long to wait for a response head (HTTP), in milliseconds. `None`: 60 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Answer plain HTTP with a permanent redirect (308) to `https://<host><path>`, on the port
    /// of the service's TLS route ([`WharfExt::redirect_port`]). Only on routes without `tls`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect_https: bool,
    /// Terminate TLS on this route's listen port with this certificate (HTTP routes only).
    /// Routes sharing a listen port either all have TLS or none; the certificate is chosen per
    /// connection by the host name the client asks for (SNI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<IngressTls>,
}

/// A route's certificate and key, as PEM text. The client reads the files the stack file names
/// (`tls: {certificate: FILE, key: FILE}`), so the content travels in the spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressTls {
    /// The certificate chain, PEM, leaf first.
    pub certificate: String,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1). A secret: stored with the spec and sent
    /// to the agents, but the API returns `redacted sha256:<fingerprint>` in its place
    /// ([`StackSpec::redact_secrets`]).
    pub key: Secret,
}

/// A secret value, such as a private key. Serialised as is (the store and the agents need it),
/// but never shown by `Debug`; the API redacts it before answering
/// ([`StackSpec::redact_secrets`]).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct Secret(pub String);

/// What a redacted secret starts with.
pub const REDACTED_PREFIX: &str = "redacted sha256:";

impl Secret {
    /// `redacted sha256:<first 16 hex digits of the SHA-256 of the value>`: tells two secrets
    /// apart without revealing either.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        format!("{REDACTED_PREFIX}{}", hex::encode(&digest[..8]))
    }

    /// Whether this is the API's redacted form rather than a secret.
    pub fn is_redacted(&self) -> bool {
        self.0.starts_with(REDACTED_PREFIX)
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({})", self.fingerprint())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IngressProtocol {
    /// HTTP/1.1 and HTTP/2, routed by host and path.
    #[default]
    Http,
    /// Plain TCP: the whole listen port goes to the service.
    Tcp,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IngressBalance {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// The instance with the fewest requests in flight.
    LeastRequests,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    /// Absolute path of the build context on the deploying machine.
    pub context: String,
    /// Dockerfile path relative to the context. Default `Dockerfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// Content hash of the context, computed by the client, so a changed context means a changed spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_hash: Option<String>,
    /// The stage of a multi-stage Dockerfile to build (`target:`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The Dockerfile itself (`dockerfile_inline:`), in place of `dockerfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_inline: Option<String>,
    /// Labels of the built image.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The network the build's `RUN` steps use (`host`, `none`, `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `host:address` lines of the build containers' /etc/hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// Size of the build containers' /dev/shm, bytes (at most 2 GiB - 1: the engine's limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size_bytes: Option<u64>,
    /// Images whose layers the build may reuse.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache_from: Vec<String>,
    /// `no_cache: true`: build every step again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_cache: bool,
    /// `pull: true`: pull the base images again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pull: bool,
}

impl BuildSpec {
    /// What the agent labels a built image with, to know when to build it again: the context
    /// hash, and when any option besides the context and Dockerfile is set, a hash of those too
    /// (a changed `target` or `args` must build again even when the files are the same).
    pub fn fingerprint(&self) -> Option<String> {
        let hash = self.context_hash.as_ref()?;
        let mut options = self.clone();
        options.context = String::new();
        options.context_hash = None;
        options.dockerfile = None;
        if options == BuildSpec::default() {
            return Some(hash.clone());
        }
        let bytes = serde_json::to_vec(&options).expect("a build spec always serialises");
        let digest = Sha256::digest(&bytes);
        Some(format!("{hash}+{}", hex::encode(&digest[..8])))
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// A published port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub target: u16,
    /// Host port. `None`: the engine picks one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<u16>,
    /// Host IP to bind. `None`: all addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A named volume (declared at top level) or an anonymous one.
    Volume,
    /// A host path.
    Bind,
    Tmpfs,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    pub kind: MountKind,
    /// Volume name (as written in the stack, not prefixed) or absolute host path. Empty for tmpfs.
    #[serde(default)]
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    /// Propagation, host path creation, tmpfs size, the named volume's engine name…
    #[serde(default, skip_serializing_if = "MountOptions::is_default")]
    pub options: MountOptions,
}

/// A mount's options beyond kind, source and target. For a named volume, also what the
/// stack's top-level `volumes:` says of it (`VolumeSpec::mount_options`), copied by the
/// client: the agent sees only services.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MountOptions {
    /// The engine's name of the named volume when it is not `<stack>_<source>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    /// The named volume is external: attached, never created nor removed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// The named volume's driver and options, used when the agent creates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub driver_opts: BTreeMap<String, String>,
    /// `volume.nocopy: true`: the image's files at the target are not copied into a new volume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nocopy: bool,
    /// `volume.subpath`: mount this directory of the volume (engine API 1.45 and later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subpath: Option<String>,
    /// `bind.propagation`: `private`, `rprivate`, `shared`, `rshared`, `slave` or `rslave`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub propagation: Option<String>,
    /// `bind.create_host_path`: `true` creates a missing host directory, `false` refuses the
    /// instance when it is missing; unset: the engine refuses a missing one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_host_path: Option<bool>,
    /// `tmpfs.size`, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size_bytes: Option<u64>,
    /// `tmpfs.mode`: permission bits of the mount's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_mode: Option<u32>,
}

impl MountOptions {
    pub fn is_default(&self) -> bool {
        *self == MountOptions::default()
    }
}

/// The mount propagations `bind.propagation` accepts.
pub const PROPAGATIONS: &[&str] = &[
    "private", "rprivate", "shared", "rshared", "slave", "rslave",
];

/// The Compose healthcheck, normalised. `test` is the exec form: `["CMD", ...]` or `["CMD-SHELL", "..."]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub test: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
    /// Interval between checks during the start period (engine API 1.44 and later; older
    /// engines check at `interval_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval_ms: Option<u64>,
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL_MS: u64 = 30_000;
    pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
    pub const DEFAULT_RETRIES: u32 = 3;
}

/// When an instance that exited is started again. Compose `restart` and `deploy.restart_policy`
/// both land here (`deploy.restart_policy` wins).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// First delay before a restart; doubles on each consecutive failure up to `max_delay_ms`.
    pub delay_ms: u64,
    pub max_delay_ms: u64,
    /// Give up after this many restarts within `window_ms` (0: never give up).
    pub max_attempts: u32,
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            condition: RestartCondition::Any,
            delay_ms: 100,
            max_delay_ms: 30_000,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Restart whatever the exit code (`always`, `unless-stopped`, `any`).
    #[default]
    Any,
    OnFailure,
    /// Never restart (`no`, `none`).
    None,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DependsCondition {
    #[default]
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DependsOn {
    #[serde(default)]
    pub condition: DependsCondition,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeployMode {
    #[default]
    Replicated,
    Global,
    /// Runs to completion: `replicas` instances that exit 0 (a failed one is retried per the
    /// restart policy), once per deploy of a new spec and on `wharf job run`.
    #[serde(rename = "replicated-job")]
    ReplicatedJob,
    /// Runs to completion: one instance per eligible node.
    #[serde(rename = "global-job")]
    GlobalJob,
}

impl DeployMode {
    /// One instance per eligible node (`global`, `global-job`).
    pub fn is_global(self) -> bool {
        matches!(self, DeployMode::Global | DeployMode::GlobalJob)
    }
}

/// Whether a scheduled job's run may overlap the previous one (`x-wharf: {concurrency: …}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    /// Runs may overlap.
    Allow,
    /// A scheduled time that comes while the previous run still runs is skipped (recorded so).
    #[default]
    Forbid,
    /// The running one is stopped and the new one starts.
    Replace,
}

/// When a job runs on its own: `x-wharf: {schedule, timezone, concurrency, deadline}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSchedule {
    /// A cron expression: five fields, or six with seconds first (`*/5 * * * * *`).
    pub cron: String,
    /// An IANA time zone (`Europe/Berlin`); unset: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default)]
    pub concurrency: Concurrency,
    /// A run missed (the master was down) starts late only within this long of its scheduled
    /// time; unset: however late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploySpec {
    #[serde(default)]
    pub mode: DeployMode,
    /// Desired instances (replicated mode). Default 1.
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub update_config: UpdateConfig,
    #[serde(default)]
    pub rollback_config: UpdateConfig,
    #[serde(default)]
    pub placement: Placement,
    /// `deploy.labels`: labels of the service, not of its containers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

impl Default for DeploySpec {
    fn default() -> Self {
        DeploySpec {
            mode: DeployMode::Replicated,
            replicas: 1,
            resources: Resources::default(),
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
            placement: Placement::default(),
            labels: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub limits: ResourceAmounts,
    #[serde(default)]
    pub reservations: ResourceAmounts,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceAmounts {
    /// CPU in billionths of a CPU (`cpus: "0.5"` is 500_000_000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

/// Compose `deploy.update_config` / `rollback_config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// Instances replaced at a time. Default 1.
    pub parallelism: u32,
    pub delay_ms: u64,
    pub order: UpdateOrder,
    pub failure_action: FailureAction,
    pub monitor_ms: u64,
    /// Parts per thousand of failed instances tolerated (Compose `max_failure_ratio` x 1000).
    pub max_failure_ratio_permille: u32,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::StopFirst,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_ratio_permille: 0,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Compose placement constraints, kept as written (`node.labels.zone == a`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Spread preferences: label names (`node.labels.zone`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferences: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_replicas_per_node: Option<u32>,
}

impl StackSpec {
    /// Replace every secret by its fingerprint ([`Secret::fingerprint`]): what the API returns
    /// and the CLI prints. A redacted spec cannot be deployed (`validate_spec` refuses it).
    pub fn redact_secrets(&mut self) {
        self.services
            .values_mut()
            .for_each(ServiceSpec::redact_secrets);
    }
}

impl ServiceSpec {
    /// Replace every secret by its fingerprint (see [`StackSpec::redact_secrets`]).
    pub fn redact_secrets(&mut self) {
        for tls in self.wharf.ingress.iter_mut().filter_map(|r| r.tls.as_mut()) {
            if !tls.key.is_redacted() {
                tls.key = Secret(tls.key.fingerprint());
            }
        }
    }

    /// Hash of everything that, when changed, means the instances must be replaced.
    /// Replica count and deploy-only settings are excluded: scaling never replaces instances.
    pub fn instance_hash(&self) -> String {
        let mut s = self.clone();
        s.deploy.replicas = 0;
        s.deploy.update_config = UpdateConfig::default();
        s.deploy.rollback_config = UpdateConfig::default();
        s.deploy.labels.clear();
        s.depends_on.clear();
        s.wharf.ingress.clear();
        s.wharf.drain_grace_ms = None;
        s.wharf.scan_block = None;
        s.wharf.auto_deploy = false;
        s.wharf.at_most_once = false; // how the master places it, not what runs
        // Segments are the nodes' firewall and DNS: changing them replaces nothing.
        s.networks.clear();
        s.wharf.allow_from.clear();
        // When a job runs is the job controller's business, not what runs.
        s.wharf.schedule = None;
        s.wharf.history = None;
        let bytes = serde_json::to_vec(&s).expect("a service spec always serialises");
        let digest = Sha256::digest(&bytes);
        hex::encode(&digest[..8])
    }

    /// The image this service runs: `image`, or for a built service without one `<stack>-<service>`.
    pub fn image_ref(&self, stack: &str, service: &str) -> String {
        match &self.image {
            Some(i) => i.clone(),
            None => format!("{stack}-{service}:latest"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n";

    fn tls_route(listen: u16, hosts: &[&str]) -> IngressRoute {
        IngressRoute {
            port: 8080,
            listen,
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            tls: Some(IngressTls {
                certificate: "CERT".into(),
                key: Secret(KEY.into()),
            }),
            ..IngressRoute::default()
        }
    }

    #[test]
    fn secrets_never_show_in_debug_and_are_redacted_to_a_fingerprint() {
        let mut svc = ServiceSpec::default();
        svc.wharf.ingress = vec![tls_route(8443, &["a.example"])];
        assert!(!format!("{svc:?}").contains("MC4CAQAw"), "{svc:?}");
        // Serialised in full: the store and the agents need the key.
        assert!(serde_json::to_string(&svc).unwrap().contains("MC4CAQAw"));

        let mut stack = StackSpec::default();
        stack.services.insert("web".into(), svc.clone());
        stack.redact_secrets();
        let json = serde_json::to_string(&stack).unwrap();
        assert!(!json.contains("MC4CAQAw"), "{json}");
        let key = &stack.services["web"].wharf.ingress[0]
            .tls
            .as_ref()
            .unwrap()
            .key;
        assert!(key.is_redacted());
        assert_eq!(key.0, Secret(KEY.into()).fingerprint());
        // Redacting twice changes nothing; the certificate (public) stays.
        let once = stack.clone();
        stack.redact_secrets();
        assert_eq!(stack, once);
        assert_eq!(
            stack.services["web"].wharf.ingress[0]
                .tls
                .as_ref()
                .unwrap()
                .certificate,
            "CERT"
        );
    }

    #[test]
    fn a_redirect_goes_to_the_tls_route_sharing_a_host() {
        let ext = WharfExt {
            ingress: vec![
                IngressRoute {
                    redirect_https: true,
                    hosts: vec!["b.example".into()],
                    listen: 80,
                    ..IngressRoute::default()
                },
                tls_route(8443, &["a.example"]),
                tls_route(9443, &["b.example"]),
                IngressRoute {
                    redirect_https: true,
                    hosts: vec!["c.example".into()],
                    listen: 80,
                    ..IngressRoute::default()
                },
            ],
            ..WharfExt::default()
        };
        assert_eq!(ext.redirect_port(0), Some(9443));
        assert_eq!(
            ext.redirect_port(3),
            Some(8443),
            "no shared host: the first"
        );
        assert_eq!(WharfExt::default().redirect_port(0), None);
    }
}
