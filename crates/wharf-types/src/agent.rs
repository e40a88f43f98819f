//! Messages between the master and an agent: the node's desired state (master → agent) and what the
//! agent observes (agent → master). In `wharf up` they cross a channel; in a cluster, one stream.
//!
//! Both are full snapshots, never deltas: a lost or repeated message only delays convergence.

use serde::{Deserialize, Serialize};

use crate::{Health, InstanceState, ServiceSpec};

/// One instance the master wants running on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// `<stack>.<service>.<slot>`
    pub id: String,
    pub stack: String,
    pub service: String,
    pub slot: u32,
    /// Bumped whenever the instance must be replaced; old generations are stopped.
    pub generation: u64,
    pub spec_hash: String,
    /// Shared by every assignment of the service (the master holds one per service).
    pub spec: std::sync::Arc<ServiceSpec>,
}

impl Assignment {
    /// The container (or process) name: unique per generation, so creating twice is detected by the
    /// engine (a name conflict) and never yields a duplicate.
    pub fn name(&self) -> String {
        instance_name(&self.stack, &self.service, self.slot, self.generation)
    }

    /// The labels every instance carries, from which the agent adopts it after a restart.
    pub fn labels(&self) -> std::collections::BTreeMap<String, String> {
        use crate::labels::*;
        std::collections::BTreeMap::from([
            (MANAGED.to_string(), "true".to_string()),
            (STACK.to_string(), self.stack.clone()),
            (SERVICE.to_string(), self.service.clone()),
            (INSTANCE.to_string(), self.id.clone()),
            (SLOT.to_string(), self.slot.to_string()),
            (GENERATION.to_string(), self.generation.to_string()),
            (SPEC_HASH.to_string(), self.spec_hash.clone()),
        ])
    }
}

/// The container (or process) name of generation `generation` of slot `slot` of a service.
pub fn instance_name(stack: &str, service: &str, slot: u32, generation: u64) -> String {
    format!("wharf-{stack}-{service}-{slot}-g{generation}")
}

/// A stack the agent must clean up after (network, and named volumes when asked), once none of its
/// instances run on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackPurge {
    pub stack: String,
    pub volumes: bool,
}

/// Everything a node should run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDesired {
    pub assignments: Vec<Assignment>,
    pub purges: Vec<StackPurge>,
    /// The routing table of the node's ingress: every service with ingress routes, cluster-wide.
    /// Shared by every node's desired state (the same table goes to every node).
    #[serde(default, skip_serializing_if = "none_routed")]
    pub ingress: std::sync::Arc<Vec<IngressService>>,
    /// Service discovery: the names the node's DNS server answers.
    #[serde(default)]
    pub discovery: Discovery,
    /// The node's part of cross-host container networking (shared with the master's memo of
    /// it: not copied for each desired state).
    #[serde(default)]
    pub network: std::sync::Arc<NodeNetwork>,
    /// The identity of the cluster (of its store) this desired state comes from. An agent
    /// remembers the cluster it belongs to and acts only on desired states of that cluster: a
    /// new, foreign or lost store must never make it retire what it cannot account for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster: String,
    /// The store revision this desired state was computed at. Never lower than one the agent
    /// saw before, unless the store was restored from an older backup (the agent then holds).
    #[serde(default)]
    pub revision: u64,
    /// Instance generations this node still runs that were replaced elsewhere while the node was
    /// lost: stopped at once (no grace, no drain), so they never run beside their replacements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fence: Vec<InstanceRef>,
    /// The master's node timeout (ms): an agent that has not heard from the master for this long
    /// stops its `at_most_once` instances itself, before the master replaces them elsewhere.
    #[serde(default)]
    pub node_timeout_ms: u64,
    /// The secret and config versions the node's assignments mount, with their values: only
    /// those, only to this node, over the mutual-TLS link. The agent keeps them in memory and
    /// on a tmpfs, never on disk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileValue>,
}

fn none_routed(ingress: &std::sync::Arc<Vec<IngressService>>) -> bool {
    ingress.is_empty()
}

/// One version of a secret or config, with its value (base64; never shown by `Debug`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileValue {
    pub kind: crate::ObjectKind,
    pub name: String,
    pub version: u64,
    pub data: crate::Secret,
}

impl NodeDesired {
    /// Whether `self` asks the node for the same as `other`: everything but the revision it was
    /// computed at. A master sends a node a new desired state only when this changes, not on
    /// every store write elsewhere in the cluster (1,000 nodes: one write made 1,000 frames).
    pub fn same_content(&self, other: &NodeDesired) -> bool {
        // Destructured, so that a new field cannot be forgotten here.
        let NodeDesired {
            assignments,
            purges,
            ingress,
            discovery,
            network,
            cluster,
            revision: _,
            fence,
            node_timeout_ms,
            files,
        } = self;
        *assignments == other.assignments
            && *purges == other.purges
            && *ingress == other.ingress
            && *discovery == other.discovery
            && *network == other.network
            && *cluster == other.cluster
            && *fence == other.fence
            && *node_timeout_ms == other.node_timeout_ms
            && *files == other.files
    }
}

/// One instance generation.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceRef {
    /// `<stack>.<service>.<slot>`
    pub id: String,
    pub generation: u64,
}

/// What the node's DNS server answers: the services of every stack with instances on the node,
/// each with its running, healthy instances (none draining).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discovery {
    /// The cluster domain (`<service>.<stack>.<domain>`); empty: the default, `wharf.internal`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Shared: every node with instances of a stack gets the same records (cheap to hand out to
    /// a thousand nodes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<std::sync::Arc<DiscoveryService>>,
}

/// One service's records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryService {
    pub stack: String,
    pub service: String,
    /// The container ports the service declares (`expose`, `ports` targets, ingress ports),
    /// sorted: one SRV record per port and instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Healthy instances, in slot order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<DiscoveryEndpoint>,
    /// The stack's segments (Compose `networks:`) the service is on; empty: it declares none
    /// (`default`). Only services that share a segment reach each other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
    /// Network aliases: segment -> more names of the service there.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub aliases: std::collections::BTreeMap<String, Vec<String>>,
    /// Every running instance's address, healthy or not: who the service's callers are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// Only on `internal` segments: no way out of them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub internal: bool,
    /// Services of other stacks let in (`stack/service`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<String>,
}

impl DiscoveryService {
    /// Whether the service takes part in segments (it names networks, or lets other stacks
    /// in): then its stack's instances are guarded one by one, else by the stack's subnets.
    pub fn segmented(&self) -> bool {
        !self.segments.is_empty() || !self.allow_from.is_empty()
    }

    /// The segments the service is on.
    pub fn on(&self) -> Vec<&str> {
        if self.segments.is_empty() {
            vec![crate::DEFAULT_NETWORK]
        } else {
            self.segments.iter().map(String::as_str).collect()
        }
    }

    /// Whether `caller` may reach this service: the same stack and a shared segment, or named
    /// by `allow_from`.
    pub fn reachable_from(&self, caller: &DiscoveryService) -> bool {
        if caller.stack == self.stack {
            let theirs = caller.on();
            return self.on().iter().any(|s| theirs.contains(s));
        }
        let name = format!("{}/{}", caller.stack, caller.service);
        self.allow_from.contains(&name)
    }
}

/// One healthy instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryEndpoint {
    pub slot: u32,
    /// The instance's IP address on its stack network.
    pub address: String,
}

/// Cross-host container networking, the host-gateway way: every node has a block of the cluster's
/// pool, and each stack network on the node a subnet of that block; a node routes the blocks of
/// its peers through their host addresses and lets that traffic through its firewall.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNetwork {
    /// The cluster's pool (CIDR); empty: no cross-host networking.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pool: String,
    /// This node's block of the pool (CIDR).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub block: String,
    /// The subnet of each stack network on this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<StackSubnet>,
    /// Every node's block (this node's too: skip it) and the host address to route it via.
    /// Shared: the same list goes to every node.
    #[serde(default)]
    pub peers: std::sync::Arc<Vec<PeerBlock>>,
    /// The subnets the node's stacks have on every node (this node's too: skip them): traffic
    /// into a stack's subnet here is let in from those only (stacks are isolated from each other
    /// across hosts too). One list per stack, shared by the desired states of all its nodes.
    #[serde(default, skip_serializing_if = "StackSubnets::is_empty")]
    pub stack_subnets: StackSubnets,
    /// Traffic to other nodes' blocks goes only through the encrypted tunnel (WireGuard) to
    /// peers that sent a public key; never in the clear. False only with `wharf server
    /// --encryption off`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encryption: bool,
    /// The node's key is to be replaced once its own is older than this (`wharf node
    /// rotate-keys`); 0: never asked.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub key_epoch: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Stack subnets in shared lists (one per stack, `Arc`: a thousand nodes running a stack of a
/// hundred replicas hold one copy of its hundred subnets, not a thousand); on the wire one flat
/// list, as a `Vec<StackSubnet>` would be.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackSubnets(pub Vec<std::sync::Arc<Vec<StackSubnet>>>);

impl StackSubnets {
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|l| l.is_empty())
    }

    pub fn iter(&self) -> impl Iterator<Item = &StackSubnet> {
        self.0.iter().flat_map(|l| l.iter())
    }
}

impl From<Vec<StackSubnet>> for StackSubnets {
    fn from(list: Vec<StackSubnet>) -> StackSubnets {
        if list.is_empty() {
            StackSubnets::default()
        } else {
            StackSubnets(vec![std::sync::Arc::new(list)])
        }
    }
}

impl Serialize for StackSubnets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for StackSubnets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StackSubnets, D::Error> {
        Vec::<StackSubnet>::deserialize(d).map(StackSubnets::from)
    }
}

/// What a node's agent tells the master about its end of the encrypted tunnel between hosts, on
/// its mutual-TLS stream (so the key is bound to the node's certificate). Sent after the hello
/// and again whenever it changes (a new key, the tunnel up or failing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TunnelFacts {
    /// The node's WireGuard public key (base64); the private key never leaves the node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub public_key: String,
    /// The UDP port its WireGuard interface listens on.
    #[serde(default)]
    pub port: u16,
    /// The key's epoch (raised by each rotation).
    #[serde(default)]
    pub epoch: u64,
    /// How the tunnel runs: `kernel` or `wireguard-go` (userspace); empty: not up.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub implementation: String,
    /// Why the tunnel is not up, when it is not (no WireGuard on the host, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A stack network's subnet on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackSubnet {
    pub stack: String,
    /// CIDR, e.g. `10.64.3.0/25`.
    pub subnet: String,
}

/// A node's block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerBlock {
    pub node: String,
    pub block: String,
    /// The peer's host address.
    pub via: String,
    /// The peer's WireGuard public key; none: it has not sent one (with encryption on, its
    /// block is then not reachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The UDP port of the peer's WireGuard interface.
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub port: u16,
}

fn is_zero_u16(n: &u16) -> bool {
    *n == 0
}

/// A service behind the ingress: its routes and the instances that take its traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressService {
    pub stack: String,
    pub service: String,
    pub routes: Vec<crate::IngressRoute>,
    /// Running, healthy instances with an address, in a stable order.
    pub endpoints: Vec<IngressEndpoint>,
}

/// One instance generation behind the ingress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressEndpoint {
    /// `<stack>.<service>.<slot>`
    pub instance: String,
    pub generation: u64,
    /// The instance's IP address; each route's `port` is added to it.
    pub address: String,
    /// Takes no new requests or connections; what is in flight finishes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

/// What an agent observes of one instance generation it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    pub id: String,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_output: Option<String>,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// When it last exited (ms since the epoch), while it is exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// The IP address the ingress reaches the instance at (docker: on its stack network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Facts about a node and its drivers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub name: String,
    pub drivers: Vec<crate::DriverKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_version: Option<String>,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_driver: Option<String>,
    #[serde(default)]
    pub kernel: String,
    /// The most instances the node takes (`--max-instances`); 0 (an agent that does not say):
    /// [`crate::DEFAULT_MAX_INSTANCES`]. See [`NodeFacts::instance_capacity`].
    #[serde(default)]
    pub max_instances: u32,
}

impl NodeFacts {
    /// The most instances the scheduler places on the node.
    pub fn instance_capacity(&self) -> u32 {
        if self.max_instances == 0 {
            crate::DEFAULT_MAX_INSTANCES
        } else {
            self.max_instances
        }
    }
}

/// An agent's full report: every instance it runs, and the purges it has finished.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub instances: Vec<InstanceReport>,
    pub purged: Vec<String>,
    /// Drivers that cannot work right now (the Docker engine is down or unreachable), and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drivers_down: Vec<DriverDown>,
    /// Why the agent holds back (acts on nothing, leaves every instance running), if it does: the
    /// desired state comes from a store that is not its cluster's, or older than one it saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

/// A driver that cannot work right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DriverDown {
    pub driver: crate::DriverKind,
    pub error: String,
}

/// Frames from the master to an agent on the agent stream (JSON, length-prefixed, over mutual TLS).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToAgent {
    /// The node's full desired state. Sent on connect and whenever it changes. Boxed: it is
    /// far larger than the other frames.
    Desired(Box<NodeDesired>),
    /// Start streaming the output of an instance under request `id`.
    LogsStart {
        id: u64,
        instance: String,
        follow: bool,
        tail: Option<u64>,
        /// Lines from this time on (Unix seconds); absent: all (and from a master before it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<i64>,
        /// Lines before this time (Unix seconds).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        until: Option<i64>,
        /// Each line prefixed with the engine's RFC 3339 time and a space, as Docker writes it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        timestamps: bool,
        /// Send at most this many lines ahead of the `LogsCredit`s granted, so a slow reader
        /// slows the agent instead of filling the master's memory. Sent only to agents whose
        /// hello says `log_credits`; absent: no limit (from a master before credits).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<u32>,
    },
    /// Stop streaming request `id` (the API client went away).
    LogsCancel { id: u64 },
    /// The reader of request `id` took `lines` more lines: the agent may send that many more.
    LogsCredit { id: u64, lines: u32 },
    /// Run a command in the newest running generation of `instance` under exec `id` (only to
    /// agents whose hello says `exec`). The agent sends at most `window` output chunks ahead of
    /// the `ExecCredit`s granted, and grants input credit itself (`ToMaster::ExecInputCredit`),
    /// the first `window` chunks at once.
    ExecStart {
        id: u64,
        instance: String,
        spec: crate::ExecSpec,
        window: u32,
    },
    /// Bytes for exec `id`'s standard input (at most [`crate::MAX_EXEC_CHUNK`]).
    ExecInput {
        id: u64,
        #[serde(with = "crate::exec::base64_bytes")]
        data: Vec<u8>,
    },
    /// Exec `id`'s standard input ended.
    ExecEof { id: u64 },
    /// Exec `id`'s terminal has a new size.
    ExecResize { id: u64, size: crate::TtySize },
    /// The reader of exec `id` took `chunks` more output chunks.
    ExecCredit { id: u64, chunks: u32 },
    /// Stop exec `id` (its client went away): the agent drops its end of the command's streams.
    ExecCancel { id: u64 },
    /// Tell me the resource usage of every instance the node runs, under request `id`.
    StatsRequest { id: u64 },
    /// Tell me what the local image `image` installs, under request `id` (only to an agent
    /// whose hello said `scan`).
    InventoryRequest { id: u64, image: String },
    /// Sent four times a second: an agent that hears nothing for a few seconds knows its link is cut
    /// (even when no TCP reset ever comes) and reconnects; `at_most_once` needs to know it too.
    /// It also tells the agent that this master takes `ToMaster::Heartbeat`.
    Heartbeat,
}

/// Frames from an agent to the master on the agent stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToMaster {
    /// First frame after connecting: who the agent is and what its node offers.
    Hello {
        facts: NodeFacts,
        labels: std::collections::BTreeMap<String, String>,
        /// The agent understands `LogsStart::window` and `LogsCredit` (absent: an agent from
        /// before them, which must never be sent a `LogsCredit`).
        #[serde(default)]
        log_credits: bool,
        /// The agent understands `ToAgent::Heartbeat` (absent: an agent from before it, which
        /// would take the unknown frame for a broken stream).
        #[serde(default)]
        heartbeats: bool,
        /// The newest store revision this node acted on (0: none): a master whose store view
        /// is older waits until it caught up before it sends a desired state, which the node
        /// would take for a store restored from an older backup (several masters on etcd).
        #[serde(default)]
        seen_revision: u64,
        /// The agent understands `ExecStart` and `StatsRequest` (absent: an agent from before
        /// them, which would take the unknown frame for a broken stream).
        #[serde(default)]
        exec: bool,
        /// The agent understands `InventoryRequest` (absent: an agent from before it).
        #[serde(default)]
        scan: bool,
    },
    /// A full report; also a heartbeat.
    Report(NodeReport),
    /// "Still here, nothing changed since my last report": the agent's beat (five times a second),
    /// sent only to a master that sends `ToAgent::Heartbeat` itself (an older one would take the
    /// unknown frame for a broken stream); to others the last report is re-sent instead.
    Heartbeat,
    /// One output line of logs request `id`.
    LogLine {
        id: u64,
        stream: crate::LogStream,
        line: String,
    },
    /// Logs request `id` ended (`error` says why, when it failed).
    LogEnd { id: u64, error: Option<String> },
    /// Output of exec `id` (at most [`crate::MAX_EXEC_CHUNK`]).
    ExecOutput {
        id: u64,
        stream: crate::LogStream,
        #[serde(with = "crate::exec::base64_bytes")]
        data: Vec<u8>,
    },
    /// The agent took `chunks` more input chunks of exec `id` into the command: the master may
    /// send that many more.
    ExecInputCredit { id: u64, chunks: u32 },
    /// Exec `id` ended: the command's exit code, or why it could not run (the last frame of it).
    ExecEnd {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The answer to `StatsRequest` `id`: one row per instance the node runs (or why not).
    Stats {
        id: u64,
        instances: Vec<crate::InstanceStats>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The answer to `InventoryRequest` `id`: what the image installs and its id, or why not.
    Inventory {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inventory: Option<crate::Inventory>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        image_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The node's end of the encrypted tunnel: sent after the hello and whenever it changes
    /// (only to a master that sends `ToAgent::Heartbeat`: older ones do not know the frame).
    Tunnel(TunnelFacts),
    /// The first and only frame of a fetch connection (not the agent stream): the node's mirror
    /// asks for a manifest or blob of the cluster's registry; the master answers with one
    /// `FetchAnswer` frame and the content's bytes, then closes.
    Fetch(crate::FetchRequest),
}

/// The join handshake, sent on a TLS connection without a client certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token: String,
    /// PEM certificate signing request for the agent's own key.
    pub csr_pem: String,
    pub hostname: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum JoinResponse {
    Accepted {
        node_id: String,
        cert_pem: String,
        ca_pem: String,
    },
    Refused {
        message: String,
        hint: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(stack: &str, cidr: &str) -> StackSubnet {
        StackSubnet {
            stack: stack.into(),
            subnet: cidr.into(),
        }
    }

    /// Shared lists go on the wire as the one flat list agents always read.
    #[test]
    fn stack_subnets_are_one_flat_list_on_the_wire() {
        let shop = std::sync::Arc::new(vec![
            subnet("shop", "10.64.0.0/25"),
            subnet("shop", "10.64.16.0/25"),
        ]);
        let blog = std::sync::Arc::new(vec![subnet("blog", "10.64.0.128/25")]);
        let shared = StackSubnets(vec![shop, blog]);
        let json = serde_json::to_value(&shared).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"stack": "shop", "subnet": "10.64.0.0/25"},
                {"stack": "shop", "subnet": "10.64.16.0/25"},
                {"stack": "blog", "subnet": "10.64.0.128/25"},
            ])
        );
        let back: StackSubnets = serde_json::from_value(json).unwrap();
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            shared.iter().collect::<Vec<_>>()
        );
        // Empty lists are left out of a node's network share, as an empty Vec was.
        let net = NodeNetwork {
            stack_subnets: StackSubnets(vec![std::sync::Arc::new(vec![])]),
            ..NodeNetwork::default()
        };
        assert!(
            serde_json::to_value(&net)
                .unwrap()
                .get("stack_subnets")
                .is_none()
        );
        let none: NodeNetwork = serde_json::from_str("{}").unwrap();
        assert!(none.stack_subnets.is_empty());
    }
}
