//! What the master keeps in the store: record types and the key layout.
//!
//! Desired state (stacks, services, instances, deployments, tokens) and observed state (one status
//! key per node, written from agent reports) live under separate prefixes, so a controller can watch
//! exactly what it reacts to.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wharf_types::{NodeFacts, NodeState, Role, ServiceSpec, StackSpec, UpdateConfig};

/// The key layout. Every key starts with `/`; prefixes end with `/`.
pub mod keys {
    use wharf_types::ObjectKind;

    pub const STACKS: &str = "/stacks/";
    pub const SERVICES: &str = "/services/";
    pub const INSTANCES: &str = "/instances/";
    pub const DEPLOYMENTS: &str = "/deployments/";
    /// API tokens: `/tokens/{sha256(token)}` → `TokenRecord`.
    pub const TOKENS: &str = "/tokens/";
    /// `/token-names/{name}` → the token's hash: names are unique, and revoke finds a token by it.
    pub const TOKEN_NAMES: &str = "/token-names/";
    /// Secrets' metadata: `/secrets/{name}` → `secrets::SecretRecord`.
    pub const SECRETS: &str = "/secrets/";
    /// Their sealed values: `/secret-values/{name}/{version:010}` → `seal::Sealed`.
    pub const SECRET_VALUES: &str = "/secret-values/";
    /// Configs' metadata, as secrets': `/configs/{name}` → `secrets::SecretRecord`.
    pub const CONFIGS: &str = "/configs/";
    /// Their sealed values: `/config-values/{name}/{version:010}` → `seal::Sealed`.
    pub const CONFIG_VALUES: &str = "/config-values/";
    /// The data key, sealed under the master key (`seal`).
    pub const DATA_KEY: &str = "/keys/data";
    /// Present when the store is autolocked: `seal::Autolock` (the unlock key's salt).
    pub const AUTOLOCK: &str = "/keys/autolock";
    /// Named users: `/users/{name}` → `users::UserRecord`.
    pub const USERS: &str = "/users/";
    pub const NODES: &str = "/nodes/";
    pub const STATUS: &str = "/status/";
    pub const PURGES: &str = "/purges/";
    /// The audit trail: `/audit/{id:020}` → `AuditRecord`, hash-chained (see `audit`).
    pub const AUDIT: &str = "/audit/";
    /// The trail's head (`audit::Head`): the last record's id and hash.
    pub const AUDIT_HEAD: &str = "/audit-head";
    /// The vulnerability database: `/advisories/{family}/{package}` → the OSV advisories of
    /// that package (`Vec<wharf_scan::Advisory>`), imported by `wharf scan db import`.
    pub const ADVISORIES: &str = "/advisories/";
    /// What the last import of advisories brought (`wharf_types::AdvisoryDbInfo`).
    pub const ADVISORIES_INFO: &str = "/advisories-info";
    /// The event log: `/events/{unix_ms:013}-{writer:016x}-{index:04}` → `wharf_types::Event`
    /// (without its cursor, which is the revision it committed at and its index). Written in the
    /// transaction of the change it tells of (`events::Evented`); pruned by age and count.
    pub const EVENTS: &str = "/events/";
    /// Controller-owned: the next instance generation of each service (`GenerationRecord`).
    pub const GENERATIONS: &str = "/generations/";
    /// The cluster's identity (made with the store; see `Master::cluster_id`).
    pub const CLUSTER_ID: &str = "/cluster/id";
    /// The cluster CA certificate and key (`agents::CaRecord`), made by the first master start.
    pub const CA: &str = "/cluster/ca";
    /// Join tokens: `/join-tokens/{sha256(secret)}`.
    pub const JOIN_TOKENS: &str = "/join-tokens/";
    /// `/netblocks/{node}` → `network::BlockRecord`.
    pub const BLOCKS: &str = "/netblocks/";
    /// `/subnets/{stack}/{node}` → `network::SubnetRecord`.
    pub const SUBNETS: &str = "/subnets/";
    /// The leading master's id, on its lease (`leader.rs`): controllers' writes are fenced on
    /// this key's create revision.
    pub const LEADER: &str = "/masters/leader";
    /// `/masters/members/{id}`: each running master (`MasterInfo`), on its lease.
    pub const MASTERS: &str = "/masters/members/";
    /// The master and term of the last fenced (controller) write: `{id} term {revision}`.
    pub const WRITTEN_BY: &str = "/masters/written-by";
    /// `/presence/{node}`: the id of the master a node's agent is connected to, on that
    /// master's lease (`leader.rs`): how the leader hears of nodes connected to the others.
    pub const PRESENCE: &str = "/presence/";
    /// Controller-owned: `/jobs/{stack}/{service}` → `JobRecord`, a job's runs and schedule.
    pub const JOBS: &str = "/jobs/";
    /// `/job-requests/{stack}/{service}` → `JobRequest`: runs asked for by `wharf job run`.
    pub const JOB_REQUESTS: &str = "/job-requests/";
    /// `/registry/manifests/{repo}@{digest}` → `registry::ManifestRecord`.
    pub const REGISTRY_MANIFESTS: &str = "/registry/manifests/";
    /// `/registry/tags/{repo}:{tag}` → `registry::TagRecord` (`:` is in no repository name).
    pub const REGISTRY_TAGS: &str = "/registry/tags/";
    /// `/registry/blobs/{repo}@{digest}` → `registry::BlobLink`: the repository may use the blob.
    pub const REGISTRY_BLOBS: &str = "/registry/blobs/";

    pub fn registry_manifest(repo: &str, digest: &str) -> String {
        format!("{REGISTRY_MANIFESTS}{repo}@{digest}")
    }
    pub fn registry_tag(repo: &str, tag: &str) -> String {
        format!("{REGISTRY_TAGS}{repo}:{tag}")
    }
    pub fn registry_tags_of(repo: &str) -> String {
        format!("{REGISTRY_TAGS}{repo}:")
    }
    pub fn registry_blob(repo: &str, digest: &str) -> String {
        format!("{REGISTRY_BLOBS}{repo}@{digest}")
    }
    /// `/registry/scans/{repo}@{digest}` → `wharf_types::ImageScan`: the scan of a pushed
    /// manifest (made after the push), what `wharf image ls` counts.
    pub const REGISTRY_SCANS: &str = "/registry/scans/";
    pub fn registry_scan(repo: &str, digest: &str) -> String {
        format!("{REGISTRY_SCANS}{repo}@{digest}")
    }

    /// Webhooks: `/hooks/{id}` → `hooks::HookRecord` (the secret sealed).
    pub const HOOKS: &str = "/hooks/";
    /// Outgoing deliveries: `/hook-deliveries/{hook}/{revision:020}.{index:06}` →
    /// `hooks::DeliveryRecord`, the last `hooks::KEEP_DELIVERIES` per hook.
    pub const HOOK_DELIVERIES: &str = "/hook-deliveries/";
    /// How far the outgoing-hook dispatcher has read the event log (`events::Cursor`).
    pub const HOOK_CURSOR: &str = "/hook-cursor";

    pub fn hook(id: &str) -> String {
        format!("{HOOKS}{id}")
    }
    pub fn hook_deliveries(hook: &str) -> String {
        format!("{HOOK_DELIVERIES}{hook}/")
    }
    pub fn hook_delivery(hook: &str, revision: u64, index: u32) -> String {
        format!("{HOOK_DELIVERIES}{hook}/{revision:020}.{index:06}")
    }

    pub fn job(stack: &str, service: &str) -> String {
        format!("{JOBS}{stack}/{service}")
    }
    pub fn job_request(stack: &str, service: &str) -> String {
        format!("{JOB_REQUESTS}{stack}/{service}")
    }

    pub fn stack(stack: &str) -> String {
        format!("{STACKS}{stack}")
    }
    pub fn service(stack: &str, service: &str) -> String {
        format!("{SERVICES}{stack}/{service}")
    }
    pub fn services_of(stack: &str) -> String {
        format!("{SERVICES}{stack}/")
    }
    /// Slots are zero-padded so that a prefix read returns them in slot order.
    pub fn instance(stack: &str, service: &str, slot: u32) -> String {
        format!("{INSTANCES}{stack}/{service}/{slot:06}")
    }
    pub fn instances_of_service(stack: &str, service: &str) -> String {
        format!("{INSTANCES}{stack}/{service}/")
    }
    pub fn instances_of_stack(stack: &str) -> String {
        format!("{INSTANCES}{stack}/")
    }
    pub fn deployment(id: &str) -> String {
        format!("{DEPLOYMENTS}{id}")
    }
    pub fn token(hash: &str) -> String {
        format!("{TOKENS}{hash}")
    }
    /// Where the metadata of secrets or configs lives.
    pub fn objects(kind: ObjectKind) -> &'static str {
        match kind {
            ObjectKind::Secret => SECRETS,
            ObjectKind::Config => CONFIGS,
        }
    }
    pub fn object(kind: ObjectKind, name: &str) -> String {
        format!("{}{name}", objects(kind))
    }
    pub fn object_values(kind: ObjectKind, name: &str) -> String {
        let prefix = match kind {
            ObjectKind::Secret => SECRET_VALUES,
            ObjectKind::Config => CONFIG_VALUES,
        };
        format!("{prefix}{name}/")
    }
    pub fn object_value(kind: ObjectKind, name: &str, version: u64) -> String {
        format!("{}{version:010}", object_values(kind, name))
    }
    pub fn user(name: &str) -> String {
        format!("{USERS}{name}")
    }
    pub fn token_name(name: &str) -> String {
        format!("{TOKEN_NAMES}{name}")
    }
    pub fn node(id: &str) -> String {
        format!("{NODES}{id}")
    }
    pub fn status(node: &str) -> String {
        format!("{STATUS}{node}")
    }
    pub fn purge(stack: &str) -> String {
        format!("{PURGES}{stack}")
    }
    pub fn generation(stack: &str, service: &str) -> String {
        format!("{GENERATIONS}{stack}/{service}")
    }
    pub fn event(unix_ms: u64, writer: u64, index: usize) -> String {
        format!("{EVENTS}{unix_ms:013}-{writer:016x}-{index:04}")
    }
    pub fn advisories(family: &str, package: &str) -> String {
        format!("{ADVISORIES}{family}/{package}")
    }
    pub fn audit(id: u64) -> String {
        format!("{AUDIT}{id:020}")
    }
    pub fn join_token(secret_hash: &str) -> String {
        format!("{JOIN_TOKENS}{secret_hash}")
    }
    pub fn block(node: &str) -> String {
        format!("{BLOCKS}{node}")
    }
    pub fn master(id: &str) -> String {
        format!("{MASTERS}{id}")
    }
    pub fn presence(node: &str) -> String {
        format!("{PRESENCE}{node}")
    }
    pub fn subnet(stack: &str, node: &str) -> String {
        format!("{SUBNETS}{stack}/{node}")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackRecord {
    pub name: String,
    pub spec: StackSpec,
    /// Deploys of this stack so far.
    pub revision: u64,
    pub updated_at: u64,
    #[serde(default)]
    pub last_deployment: Option<String>,
    /// Set by `stack rm`: the deployer removes everything, then the record.
    #[serde(default)]
    pub removing: Option<Removal>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removal {
    pub volumes: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub stack: String,
    pub name: String,
    pub spec: Arc<ServiceSpec>,
    pub spec_hash: String,
    /// Desired instances. Starts at `spec.deploy.replicas`; `service scale` changes it.
    pub replicas: u32,
    /// Bumped by `service restart`: instances created under an older nonce are replaced.
    pub restart_nonce: u64,
    pub updated_at: u64,
    /// `wharf service rebalance` asked to spread the instances again; cleared once even.
    #[serde(default)]
    pub rebalance: bool,
    /// The spec before the last change of `spec` (a deploy, a rollback): what a rollback restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<Arc<ServiceSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec_hash: Option<String>,
    /// `restart_nonce` when `spec` last changed. An update started by a restart (the nonce moved
    /// on since) has no previous spec of its own, so it is never rolled back automatically.
    #[serde(default)]
    pub changed_at_nonce: u64,
    /// Set while (and after) `spec` is the result of a rollback; cleared by the next deploy or
    /// restart. It lives in the record, so a master restarted mid-rollback carries on with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// The revisions of `spec`, oldest first, the last one current; at most [`HISTORY_LEN`]:
    /// what `service history` lists and `service rollback --to` restores.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<SpecRevision>,
}

/// What the job controller (the deployer) keeps of a job: which scheduled times are decided and
/// its runs. The decision to start a run is recorded here in the same transaction that creates
/// the run's instance records, so a master killed at any moment neither repeats nor skips one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Every scheduled time up to this one (ms) is decided: run, or recorded as skipped.
    pub scheduled_through: u64,
    /// The `JobRequest::count` acted on.
    #[serde(default)]
    pub requests_seen: u64,
    /// The spec hash a `replicated-job`/`global-job` last ran for (a new spec runs again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ran_spec: Option<String>,
    /// The number of the next run.
    pub next_run: u64,
    /// Runs, oldest first: those still running and the last `history` that ended.
    #[serde(default)]
    pub runs: Vec<wharf_types::JobRun>,
}

/// Runs of a job asked for (`wharf job run`): a counter the API raises and the deployer
/// compares with `JobRecord::requests_seen`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRequest {
    pub count: u64,
    pub at: u64,
}

/// How many revisions of a service's spec are kept (as Kubernetes' revisionHistoryLimit).
pub const HISTORY_LEN: usize = 10;

/// One revision of a service's spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecRevision {
    pub revision: u64,
    pub spec: Arc<ServiceSpec>,
    pub spec_hash: String,
    /// `deploy`, `update`, `rollback`, `automatic rollback`.
    pub cause: String,
    /// The revision a rollback restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<u64>,
    pub created_at: u64,
}

/// What the controller (the deployer) owns of a service, apart from what users write: the next
/// instance generation to hand out. Generations never repeat within a service, so a container
/// name (which carries the generation) is never reused. Only the deployer writes it, guarded by
/// its revision; the API never does, so a deploy racing a rollout cannot bring it back (the lost
/// update of issue 8). Kept after the service or stack is removed: a service of the same name
/// deployed again later goes on counting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRecord {
    pub next: u64,
}

/// A rollback of a service to its previous spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// Started by the deployer (`failure_action: rollback`) rather than asked for.
    pub automatic: bool,
    /// Why (automatic): the failure that triggered it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The deployment whose update is rolled back (automatic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<String>,
    /// The settings of the rollback: `rollback_config` of the spec rolled back from.
    pub config: UpdateConfig,
    pub started_at: u64,
}

impl ServiceRecord {
    /// Records the current `spec` as a new revision (after it changed), trimming the oldest.
    /// A record from before histories first gets its `old` spec as revision 1.
    pub fn push_revision(
        &mut self,
        old: Option<(&Arc<ServiceSpec>, &str)>,
        cause: &str,
        restored: Option<u64>,
        now: u64,
    ) {
        if self.history.is_empty()
            && let Some((spec, hash)) = old
        {
            self.history.push(SpecRevision {
                revision: 1,
                spec: spec.clone(),
                spec_hash: hash.to_string(),
                cause: "deploy".into(),
                restored: None,
                created_at: self.updated_at,
            });
        }
        let revision = self.history.last().map_or(1, |r| r.revision + 1);
        self.history.push(SpecRevision {
            revision,
            spec: self.spec.clone(),
            spec_hash: self.spec_hash.clone(),
            cause: cause.to_string(),
            restored,
            created_at: now,
        });
        let extra = self.history.len().saturating_sub(HISTORY_LEN);
        self.history.drain(..extra);
    }

    /// The revision a plain `service rollback` goes back to: the one before the revision the
    /// running one came from (so a second rollback goes further back instead of undoing the
    /// first). `None` when there is none left.
    pub fn rollback_target(&self) -> Option<&SpecRevision> {
        let current = self.history.last()?;
        let origin = current.restored.unwrap_or(current.revision);
        self.history
            .iter()
            .rev()
            .find(|r| r.revision < origin && r.spec_hash != current.spec_hash)
    }

    /// Whether a failing update of this service may be rolled back automatically: there is a
    /// previous spec, the update is the spec change itself, and it is not a rollback already.
    pub fn may_roll_back(&self) -> bool {
        self.previous_spec.is_some()
            && self.rollback.is_none()
            && self.changed_at_nonce == self.restart_nonce
    }
}

/// One desired instance: a slot of a service, placed on a node, at a generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub stack: String,
    pub service: String,
    pub slot: u32,
    pub node: String,
    pub generation: u64,
    pub spec_hash: String,
    pub restart_nonce: u64,
    /// Shared with the service record it was made from and with every node's desired state
    /// (one spec per service in memory, whatever the number of replicas).
    pub spec: Arc<ServiceSpec>,
    pub created_at: u64,
    /// While relocating start-first (drain, rebalance): the placement being replaced, which keeps
    /// running until this one is ready. Same spec as this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
    /// Draining since (master clock): this placement is about to leave the desired state (scale
    /// down, stop-first replacement, removal). It keeps running, the proxies send it no new
    /// requests, and the step that takes it out waits until its drain grace is over
    /// (`drain::gate`). Cleared if the step no longer applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_since: Option<u64>,
    /// Rollout bookkeeping (master clock), written by the deployer as it observes the instance.
    #[serde(default, skip_serializing_if = "Watch::is_empty")]
    pub watch: Watch,
    /// Placements of this slot given up because their node was lost (the newest last, at most
    /// `MAX_LOST`): when such a node comes back, what it still runs of them is fenced (stopped
    /// at once, see `NodeDesired::fence`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lost: Vec<Placement>,
}

/// How many lost placements an instance record remembers.
pub const MAX_LOST: usize = 8;

/// A node and a generation of one slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub node: String,
    pub generation: u64,
}

/// How an instance fared in the rollout that created it. Kept in the record (not in memory) so
/// monitor windows, delays and failures survive a restart of the master.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// How long it is watched after it gets ready before it counts as done: the update's
    /// `monitor` for rolling replacements, 0 otherwise.
    #[serde(default)]
    pub monitor_ms: u64,
    /// First seen ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<u64>,
    /// Left the rollout: ready through its monitor window, or failed. Never unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_at: Option<u64>,
    /// Why it failed the update (sticky: a failure counts even if the instance recovers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl Watch {
    pub fn is_empty(&self) -> bool {
        *self == Watch::default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    pub node: String,
    pub generation: u64,
    /// Draining since (master clock): about to be dropped (see `InstanceRecord::draining_since`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_since: Option<u64>,
    /// A start-first replacement keeps the old generation running on its node as the previous
    /// placement: its spec hash and spec, when they differ from the record's (a relocation moves
    /// an instance as it is, so they are the record's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Arc<ServiceSpec>>,
}

impl InstanceRecord {
    pub fn id(&self) -> String {
        format!("{}.{}.{}", self.stack, self.service, self.slot)
    }
    /// The spec hash and spec the previous placement runs, if there is one.
    pub fn previous_spec(&self) -> Option<(&str, &Arc<ServiceSpec>)> {
        let p = self.previous.as_ref()?;
        Some((
            p.spec_hash.as_deref().unwrap_or(&self.spec_hash),
            p.spec.as_ref().unwrap_or(&self.spec),
        ))
    }
    /// Runs the service's current spec.
    pub fn is_current(&self, svc: &ServiceRecord) -> bool {
        self.spec_hash == svc.spec_hash && self.restart_nonce == svc.restart_nonce
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub facts: NodeFacts,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// Liveness: `Ready` while heartbeating, `Unreachable` after the node timeout, `Down` after
    /// `DOWN_AFTER` unreachable. Never `Draining`: that is `drain`, which the API shows as a state.
    pub state: NodeState,
    pub since: u64,
    /// Set by `wharf node drain`: no new instances, and existing ones move away (start-first).
    #[serde(default)]
    pub drain: bool,
    /// Where the node's agent connects from, when it is remote.
    #[serde(default)]
    pub address: Option<String>,
    /// The node's end of the encrypted tunnel, as its agent last told (on its own mutual-TLS
    /// stream, so the key is bound to the node's identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<wharf_types::TunnelFacts>,
    /// Raised by `wharf node rotate-keys`: the node replaces a key of an older epoch.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub key_epoch: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    pub created_at: u64,
    /// Stack name patterns the token may act on; empty: every stack and the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<String>,
    /// Unix ms after which the token is refused; none: it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// When it last authenticated a request (written at most once a minute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<u64>,
    /// A session of this user (`users::login`), acting as the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// Records are JSON in the store.
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records always serialise")
}

pub fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, crate::Error> {
    serde_json::from_slice(bytes).map_err(|e| crate::Error::Corrupt(format!("{key}: {e}")))
}
