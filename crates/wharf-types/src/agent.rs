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
    pub spec: ServiceSpec,
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
}

/// An agent's full report: every instance it runs, and the purges it has finished.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    pub instances: Vec<InstanceReport>,
    pub purged: Vec<String>,
}
