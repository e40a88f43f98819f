//! Requests and responses of the HTTP API under `/v1`. Times are Unix milliseconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Secret, StackSpec};

/// Every error body of the API. `code` is stable and machine-readable; `message` is for people.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    pub code: String,
    pub message: String,
    /// What to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Where: a field path (`services.web.ports[0]`) or `file:line:column`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    pub version: String,
    pub api: String,
}

/// Body of `PUT /v1/stacks/{name}` and `POST /v1/stacks/{name}/diff`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeployRequest {
    pub spec: StackSpec,
    /// The values of the stack's own secrets (not `external`), base64, by top-level key: each
    /// becomes a new version of the secret when it differs from the current one. A secret
    /// without a value here keeps its current version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_values: BTreeMap<String, Secret>,
    /// The same for the stack's own configs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config_values: BTreeMap<String, Secret>,
    /// Where fields of the spec were written, by field path as the stack file names it
    /// (`services.web.cap_add[0]` -> `stack.yml:9:9`): the client fills it from the file, so a
    /// refusal by the admission policy can say `file:line:column`. Not part of the spec: it
    /// is neither stored nor compared, and a spec without it deploys the same.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, String>,
    /// What started this deploy, kept in the deployment (`Deployment::trigger`): `wharf
    /// git-hook` says which commit of which branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

impl DeployRequest {
    /// A deploy of `spec` that sends no values.
    pub fn of(spec: StackSpec) -> Self {
        DeployRequest {
            spec,
            secret_values: BTreeMap::new(),
            config_values: BTreeMap::new(),
            sources: BTreeMap::new(),
            trigger: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Create,
    Update,
    Scale,
    Remove,
    Unchanged,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceChange {
    pub service: String,
    pub kind: ChangeKind,
    /// Human-readable field changes, e.g. `environment.MODE: "a" -> "b"`, `replicas: 1 -> 3`.
    #[serde(default)]
    pub details: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StackDiff {
    pub stack: String,
    pub services: Vec<ServiceChange>,
}

impl StackDiff {
    pub fn is_empty(&self) -> bool {
        self.services
            .iter()
            .all(|c| c.kind == ChangeKind::Unchanged)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeployResponse {
    /// `None` when nothing changed: no deployment was started.
    pub deployment_id: Option<String>,
    pub revision: u64,
    pub diff: StackDiff,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StackSummary {
    pub name: String,
    pub revision: u64,
    pub services: u32,
    pub instances_desired: u32,
    pub instances_running: u32,
    pub updated_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StackInfo {
    pub summary: StackSummary,
    pub spec: StackSpec,
    /// The last deployment of this stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<Deployment>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceSummary {
    pub stack: String,
    pub name: String,
    pub image: String,
    pub mode: crate::DeployMode,
    pub replicas: u32,
    pub running: u32,
    pub healthy: u32,
    /// Published ports as `host:container/proto`.
    pub ports: Vec<String>,
    pub updated_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceInfo {
    pub summary: ServiceSummary,
    pub spec: crate::ServiceSpec,
    pub spec_hash: String,
    pub instances: Vec<InstanceInfo>,
}

/// What the agent last saw of an instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Assigned, not started yet (image being built or pulled, waiting on a dependency, backing off).
    #[default]
    Pending,
    Running,
    /// Exited; `exit_code` says how. Will be restarted per restart policy.
    Exited,
    /// Could not be started, or gave up restarting; `error` says why.
    Failed,
    Stopping,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The service has no health check.
    #[default]
    None,
    Starting,
    Healthy,
    Unhealthy,
}

/// One instance (slot) of a service: desired by the master, observed by an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceInfo {
    /// `<stack>.<service>.<slot>`
    pub id: String,
    pub stack: String,
    pub service: String,
    pub slot: u32,
    pub node: String,
    pub generation: u64,
    pub spec_hash: String,
    pub state: InstanceState,
    pub health: Health,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Output of the last failed health check, trimmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_output: Option<String>,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    pub updated_at: u64,
    /// Draining: the proxies send it no new requests; it stops once its drain grace is over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

impl InstanceInfo {
    /// Running, and healthy if the service has a health check.
    pub fn is_ready(&self) -> bool {
        self.state == InstanceState::Running
            && matches!(self.health, Health::None | Health::Healthy)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    InProgress,
    Succeeded,
    Failed,
    /// Replaced by a newer deployment of the same stack before it finished.
    Superseded,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceProgress {
    pub service: String,
    pub desired: u32,
    /// Instances on the new spec.
    pub updated: u32,
    /// Instances on the new spec that are running and healthy.
    pub ready: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the rollout is doing besides replacing, e.g. `rolling back: <why>`, `monitoring 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Every instance of the service, old and new, while the deployment is in progress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceProgress>,
}

impl ServiceProgress {
    /// A service at the start of a deployment: `desired` instances, none updated yet.
    pub fn starting(service: &str, desired: u32) -> ServiceProgress {
        ServiceProgress {
            service: service.to_string(),
            desired,
            updated: 0,
            ready: 0,
            error: None,
            note: None,
            instances: Vec::new(),
        }
    }
}

/// One instance as a deployment sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceProgress {
    pub id: String,
    pub generation: u64,
    /// Runs the spec being rolled out (else the old one).
    pub new: bool,
    pub state: InstanceState,
    pub health: Health,
    /// `starting`, `monitoring`, `done`, `failed`, `old`.
    pub phase: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    pub id: String,
    pub stack: String,
    pub revision: u64,
    pub state: DeploymentState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub services: Vec<ServiceProgress>,
    pub created_at: u64,
    pub updated_at: u64,
    /// What started it when no command did: a webhook's push (`push of COMMIT to REF by
    /// PUSHER (hook ID)`), a `git push` (`git push of COMMIT to REF`), a registry push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// The image each changed service deploys (pinned by digest when it is the cluster's
    /// registry's): what `wharf stack history` lists.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, String>,
    /// Who started it (the token or user; `registry` for `auto_deploy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl Deployment {
    /// Deployment `id` of `stack` at `revision`, in progress from `now`, for `services`; started
    /// by `by`, and by `trigger` when no command did.
    pub fn started(
        (id, stack, revision): (&str, &str, u64),
        services: Vec<ServiceProgress>,
        (by, trigger): (&str, Option<String>),
        now: u64,
    ) -> Deployment {
        Deployment {
            id: id.to_string(),
            stack: stack.to_string(),
            revision,
            state: DeploymentState::InProgress,
            message: None,
            services,
            created_at: now,
            updated_at: now,
            trigger,
            images: BTreeMap::new(),
            by: Some(by.to_string()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScaleRequest {
    pub replicas: u32,
}

/// Body of `POST /v1/services/{stack}/{service}/update`: a new revision of the service's spec
/// with another image or environment (`wharf service update`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ServiceUpdateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Variables to set (added or replaced).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_add: BTreeMap<String, String>,
    /// Variables to remove.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_rm: Vec<String>,
}

impl ServiceUpdateRequest {
    /// Asks for nothing.
    pub fn is_empty(&self) -> bool {
        self.image.is_none() && self.env_add.is_empty() && self.env_rm.is_empty()
    }
}

/// `?to=REVISION` of `POST /v1/services/{stack}/{service}/rollback`.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct RollbackQuery {
    /// The revision to go back to (`service history`); unset: the one before the running one.
    #[serde(default)]
    pub to: Option<u64>,
}

/// One revision of a service's spec, as `GET /v1/services/{stack}/{service}/history` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SpecRevisionInfo {
    pub revision: u64,
    /// The one running (or rolling out) now.
    pub current: bool,
    pub image: Option<String>,
    pub spec_hash: String,
    /// What made it: `deploy`, `update`, `rollback`, `automatic rollback`.
    pub cause: String,
    /// The revision a rollback restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<u64>,
    pub created_at: u64,
}

/// Reply of `POST /v1/keys/rotate`: the new master key file, or for an autolocked store the new
/// unlock key, shown this once (the old one no longer unlocks the store).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyRotation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock_key: Option<Secret>,
}

/// `POST /v1/registry/gc`: how long an unreferenced blob must have been on disk before it goes
/// (a push in progress has blobs whose manifest is not there yet).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct RegistryGcQuery {
    /// Seconds; default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_secs: Option<u64>,
}

/// Reply of `POST /v1/registry/gc`: the blobs removed (no manifest referred to them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegistryGc {
    pub removed: Vec<String>,
    /// How many blobs manifests refer to (kept).
    pub kept: usize,
}

/// Reply of scale and restart: the deployment that carries the change out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OperationResponse {
    pub deployment_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Ready,
    Unreachable,
    Down,
    Draining,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeInfo {
    pub id: String,
    pub name: String,
    pub state: NodeState,
    pub since: u64,
    /// Drivers available on the node and, for docker, whether the engine answers.
    pub drivers: Vec<crate::DriverKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub os: String,
    #[serde(default)]
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_driver: Option<String>,
    /// The address the node's agent connects from (cluster nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Last report or heartbeat, Unix ms.
    #[serde(default)]
    pub last_seen: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub instances: u32,
    /// Drivers that cannot work right now (the Docker engine is down), as the agent reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drivers_down: Vec<crate::DriverDown>,
    /// Why the node's agent holds back (acts on nothing), if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// Encryption of container traffic to and from the node: `wireguard (kernel)`,
    /// `wireguard (wireguard-go)`, `off` (the cluster runs with `--encryption off`), `none`
    /// (a single node: nothing crosses hosts), or what keeps it from working.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub encryption: String,
    /// The node's WireGuard public key, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// Body of `POST /v1/nodes/{node}/labels`: labels to set, and label keys to remove.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeLabelsRequest {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Body of `POST /v1/join-tokens`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenRequest {
    /// Seconds the token stays valid (default 1 hour).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// The token can be used this many times (default 1).
    #[serde(default)]
    pub uses: Option<u32>,
}

/// Reply of `POST /v1/join-tokens`: the token is shown once and never stored in clear.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenResponse {
    pub token: String,
    pub expires_at: u64,
    pub uses: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// Which output lines to read: the last `tail` of each instance (all when `None`), then, if
/// `follow`, new ones as they come.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::IntoParams,
)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Keep streaming new lines; with it, instances that start later (a rolling update, a
    /// reschedule) join the stream.
    #[serde(default)]
    pub follow: bool,
    /// Only the last N lines of each instance.
    pub tail: Option<u64>,
    /// Only lines written at or after this time (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// Only lines written before this time (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// Each line with the time the engine took it (`LogLine::time`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timestamps: bool,
    /// Only the instance of this slot (`wharf service logs web.2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
}

impl LogQuery {
    /// The last `n` lines, not following.
    pub fn last(n: u64) -> LogQuery {
        LogQuery {
            tail: Some(n),
            ..LogQuery::default()
        }
    }

    /// The same lines, then new ones as they come.
    pub fn following(self) -> LogQuery {
        LogQuery {
            follow: true,
            ..self
        }
    }
}

/// One change in the cluster, as `GET /v1/events` streams it (newline-delimited JSON, or
/// Server-Sent Events with the cursor as the event id).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Where the stream stands after this event: `?after=CURSOR` (or SSE's `Last-Event-ID`)
    /// resumes after it, losing and repeating nothing. `REVISION.INDEX`: the store revision the
    /// change committed at and the event's place among that revision's events.
    #[serde(default)]
    pub cursor: String,
    /// When the change was committed (Unix milliseconds, the writing master's clock).
    pub time: u64,
    /// What happened: `deploy.started|progress|succeeded|failed|rolled_back`,
    /// `instance.scheduled|moved|draining|unscheduled` (the master's decisions),
    /// `instance.created|started|healthy|unhealthy|exited|failed|restarted|stopping|removed`
    /// (what the node's agent saw), `node.joined|ready|unreachable|down|drained|activated|removed`,
    /// `image.pushed` (a tag of the cluster's registry pushed or moved), `scan.found` (a pushed
    /// image's scan found advisories).
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The instance (`STACK.SERVICE.SLOT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// For people: what happened, in a sentence.
    pub message: String,
}

/// One line of `GET /v1/services/{stack}/{service}/logs`, sent as newline-delimited JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    pub instance: String,
    pub stream: LogStream,
    pub line: String,
    /// The node the instance runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When the engine took the line (RFC 3339), with `?timestamps=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// What a caller may do: each role holds a set of permissions (the master's `policy` module).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Run the cluster: deploy, scale, remove stacks, drain and label nodes, read logs and the
    /// audit trail; no token or user administration.
    Operator,
    /// What a CI job gets: deploy, update, roll back, scale and read the status and logs of the
    /// stacks its scope names.
    Deployer,
    /// Read only (status and logs; never secret values, which nobody reads back anyway).
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Deployer, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Deployer => "deployer",
            Role::Viewer => "viewer",
        }
    }

    /// The role named `s`, or an error listing the roles there are.
    pub fn parse(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?}: the roles are admin, operator, deployer and viewer")
            })
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `PUT /v1/secrets/{name}`: a secret's new value (its first, or a new version). The value is
/// sealed at rest and never read back.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRequest {
    /// The value, base64 (at most 500 KiB once decoded).
    pub value_base64: String,
}

impl std::fmt::Debug for SecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretRequest(<redacted>)")
    }
}

/// One version of a secret: metadata only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretVersion {
    pub version: u64,
    pub created_at: u64,
    /// Who made it.
    pub created_by: String,
    pub size: u64,
}

/// A secret as `secret ls` and `secret inspect` show it: never its value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SecretInfo {
    pub name: String,
    /// The newest version's number.
    pub current: u64,
    /// Every version kept, oldest first.
    pub versions: Vec<SecretVersion>,
    /// After a new version: the stacks whose services were rolled to it, with the deployment
    /// that does (`shop (deployment d-…)`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolled: Vec<String>,
}

/// `POST /v1/tokens`: a new API token for a machine (a CI job, a script).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Unique among the tokens: it names the token in `token ls`, `token revoke` and the audit
    /// trail.
    pub name: String,
    pub role: Role,
    /// Stack name patterns (`shop`, `shop-*`) the token may act on; empty: every stack and the
    /// cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<String>,
    /// Lifetime in seconds; absent: the token does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// An API token as `token ls` shows it: never the token itself.
/// A password or one-time code in a request: never shown by `Debug` (a log line, a panic).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `POST /v1/users`: a named user. Without a password, the answer carries a one-time
/// invitation code the user exchanges for a session (`wharf login --invitation`), setting one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRequest {
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Password>,
}

/// A user as `user ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    pub created_at: u64,
    /// Whether the user has set a password (else an invitation waits).
    pub password_set: bool,
}

/// The answer to `POST /v1/users`: the invitation code, shown this once, when no password was
/// given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UserCreated {
    #[serde(flatten)]
    pub info: UserInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation: Option<Password>,
}

/// `POST /v1/users/{name}/password`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    pub password: Password,
}

/// `POST /v1/me/password`: a user changes its own password (from a session, not a machine
/// token), giving the current one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnPasswordRequest {
    pub current: Password,
    pub password: Password,
}

/// `POST /v1/unlock` (a locked master only): the unlock key `wharf server --autolock` printed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnlockRequest {
    pub key: Password,
}

/// `POST /v1/login`: a user's password, or an invitation code and the password to set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Password>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation: Option<Password>,
    /// With an invitation: the password the user sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_password: Option<Password>,
}

/// A session: a bearer token of the user's role that expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    pub user: String,
    pub role: Role,
    pub token: String,
    pub expires_at: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<String>,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// When it last authenticated a request (to the minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<u64>,
}

/// The answer to `POST /v1/tokens`: the token, shown this once (the master keeps only its hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// One record of the audit trail: a change, or a refused attempt. Records are hash-chained:
/// `prev` is the `hash` of the record before, `hash` covers `prev` and this record's content,
/// so `wharf audit verify` finds a record changed, removed or moved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    /// The record's place in the trail: 1, 2, 3... without gaps.
    pub id: u64,
    /// Unix ms.
    pub at: u64,
    /// The token or user that acted (`system` for the controllers).
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The address the request came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The request's `x-request-id` (made by the master when the client sent none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub action: String,
    pub target: String,
    /// `ok`, or `denied` for a refused attempt.
    pub outcome: String,
    /// What changed, in short (never a secret value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    pub prev: String,
    pub hash: String,
}

/// `GET /v1/audit/verify`: whether the trail is whole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditVerification {
    /// Records read.
    pub records: u64,
    /// The head: the last record's number and hash (keep it elsewhere to compare later).
    pub head_id: u64,
    pub head_hash: String,
    /// The first bad record, when the trail is not whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One master of the cluster, as it announces itself in the store (`wharf master ls`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MasterInfo {
    pub id: String,
    /// Where its API answers (what a CLI context names).
    pub api_url: String,
    /// Where agents connect to it (its --agent-listen, as agents reach it).
    pub agent_addr: String,
    /// When it started, Unix ms.
    pub started: u64,
    pub version: String,
}

/// Reply of `GET /v1/masters`: every running master, which one leads, and the store's health.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MastersStatus {
    pub masters: Vec<MasterState>,
    /// The store: `sqlite` (one master) or `etcd`.
    pub store: String,
    /// The etcd members and whether each answers (an etcd store).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub store_members: Vec<StoreMember>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MasterState {
    #[serde(flatten)]
    pub info: MasterInfo,
    pub leader: bool,
    /// This is the master that answered.
    #[serde(default)]
    pub answering: bool,
    /// Agents connected to it.
    #[serde(default)]
    pub nodes: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StoreMember {
    pub name: String,
    pub url: String,
    pub healthy: bool,
    pub leader: bool,
}

/// Why a job run started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunTrigger {
    /// Its schedule came due.
    Schedule,
    /// `wharf job run`.
    Manual,
    /// A deploy of a new spec of a `replicated-job` or `global-job` service.
    Deploy,
}

/// How a job run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    /// Every instance exited 0.
    Succeeded,
    /// An instance failed for good (exited non-zero with no restart left); `exit_code` says how.
    Failed,
    /// Its scheduled time was not run: the previous run still ran (`concurrency: forbid`), or
    /// the master came back after the `deadline`; `message` says which.
    Skipped,
    /// Stopped for the next run (`concurrency: replace`) or a new spec.
    Replaced,
}

/// One instance of a job run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunTask {
    pub slot: u32,
    pub generation: u64,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    /// Set once it is done (exited 0, or failed for good).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default)]
    pub restarts: u32,
}

/// One run of a job (times in ms since the epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobRun {
    /// Numbered from 1 per job.
    pub id: u64,
    pub trigger: RunTrigger,
    /// The schedule's time this run is for (scheduled runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<u64>,
    /// When the master decided to start it.
    pub created_at: u64,
    /// When its first instance started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// When its last instance ended (or it was replaced, or skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    pub state: RunState,
    /// The first non-zero exit code of its instances, else 0, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<RunTask>,
}

impl JobRun {
    /// Milliseconds from start to end, once both are known.
    pub fn duration_ms(&self) -> Option<u64> {
        Some(self.ended_at?.saturating_sub(self.started_at?))
    }
}

/// A job as `wharf job ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobInfo {
    pub stack: String,
    pub service: String,
    pub mode: crate::DeployMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<crate::JobSchedule>,
    /// The next time the schedule fires (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run_at: Option<u64>,
    /// The newest run, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<JobRun>,
    /// Runs kept, oldest first: those still running and the last `history` that ended
    /// (only in the answer for one job).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<JobRun>,
}

/// The answer to `POST /v1/jobs/{stack}/{service}/run`: the run was asked for and starts at the
/// deployer's next pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobRunRequested {
    /// How many runs were asked for this job so far (this one included).
    pub requested: u64,
}
