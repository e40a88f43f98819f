//! How a service's containers run beyond image, command and hardening: the Compose keys that
//! tune the engine's create body (memory swap, CPU shares and sets, shared memory, logging,
//! DNS, extra hosts, TTY, devices, platform, lifecycle hooks…), typed. The Docker driver applies
//! them; the process driver cannot (`validate_spec` refuses a process service that sets one);
//! the master's admission policy judges `devices`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A service's container options, normalised. The default asks for nothing (the engine's
/// defaults); it is left out of the serialised spec, so specs without these keys hash as before.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContainerOptions {
    /// `memswap_limit`: memory plus swap, bytes; `-1`: unlimited swap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memswap_limit: Option<i64>,
    /// `mem_swappiness`: 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_swappiness: Option<u8>,
    /// `cpu_shares`: relative CPU weight (the engine's default is 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u64>,
    /// `cpu_period`, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_period_us: Option<u64>,
    /// `cpu_quota`, microseconds per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota_us: Option<u64>,
    /// `cpuset`: the CPUs the container may use (`0-3`, `0,2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
    /// `shm_size`: size of `/dev/shm`, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size_bytes: Option<u64>,
    /// `oom_kill_disable: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_kill_disable: bool,
    /// `oom_score_adj`: -1000 to 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
    /// `logging`: the engine's log driver and its options. `wharf logs` reads only drivers the
    /// engine can read back (json-file, local, journald).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    /// `extra_hosts`, as `host:address` lines of the container's /etc/hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// `dns`: name servers for the names Wharf's service discovery does not answer (its DNS
    /// server forwards this container's other questions to them instead of the host's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    /// `dns_search`: search domains after the stack's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// `dns_opt`: resolver options (`ndots:2`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_opt: Vec<String>,
    /// `tty: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    /// `stdin_open: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin_open: bool,
    /// `devices`: host devices in the container (the `devices` admission rule).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// `group_add`: more groups of the container's user (names or ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_add: Vec<String>,
    /// `domainname`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domainname: Option<String>,
    /// `ipc`: `private`, `shareable` or `none` (the host's and other containers' are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipc: Option<String>,
    /// `runtime`: the engine's OCI runtime (`runc`, `runsc`), which the nodes must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// `storage_opt`: the storage driver's per-container options (`size: 20G`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_opt: BTreeMap<String, String>,
    /// `platform`: `os/arch[/variant]` the image must be for; an agent whose engine is another
    /// refuses the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// `pull_policy`; unset: `missing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
    /// `post_start`: commands run in the container (exec) right after it starts; one failing
    /// fails the start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_start: Vec<Hook>,
    /// `pre_stop`: commands run in the container (exec) before it is sent its stop signal,
    /// within its stop grace period.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_stop: Vec<Hook>,
}

impl ContainerOptions {
    pub fn is_default(&self) -> bool {
        *self == ContainerOptions::default()
    }

    /// The Compose keys set, for messages (`logging, tty`).
    pub fn keys_set(&self) -> Vec<&'static str> {
        let o = self;
        [
            ("memswap_limit", o.memswap_limit.is_some()),
            ("mem_swappiness", o.mem_swappiness.is_some()),
            ("cpu_shares", o.cpu_shares.is_some()),
            ("cpu_period", o.cpu_period_us.is_some()),
            ("cpu_quota", o.cpu_quota_us.is_some()),
            ("cpuset", o.cpuset.is_some()),
            ("shm_size", o.shm_size_bytes.is_some()),
            ("oom_kill_disable", o.oom_kill_disable),
            ("oom_score_adj", o.oom_score_adj.is_some()),
            ("logging", o.logging.is_some()),
            ("extra_hosts", !o.extra_hosts.is_empty()),
            ("dns", !o.dns.is_empty()),
            ("dns_search", !o.dns_search.is_empty()),
            ("dns_opt", !o.dns_opt.is_empty()),
            ("tty", o.tty),
            ("stdin_open", o.stdin_open),
            ("devices", !o.devices.is_empty()),
            ("group_add", !o.group_add.is_empty()),
            ("domainname", o.domainname.is_some()),
            ("ipc", o.ipc.is_some()),
            ("runtime", o.runtime.is_some()),
            ("storage_opt", !o.storage_opt.is_empty()),
            ("platform", o.platform.is_some()),
            ("pull_policy", o.pull_policy.is_some()),
            ("post_start", !o.post_start.is_empty()),
            ("pre_stop", !o.pre_stop.is_empty()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }
}

/// `logging:` of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// The engine's log driver (`json-file`, `local`, `syslog`…); empty: the engine's default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub driver: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

/// A host device in the container (`/dev/fuse`, `/dev/sda:/dev/xvda:r`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// The device on the host (absolute path).
    pub source: String,
    /// Where it appears in the container (absolute path).
    pub target: String,
    /// cgroup permissions, of `r`, `w` and `m`.
    pub permissions: String,
}

/// When the agent pulls the service's image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Only when no image of that reference is on the node (the default).
    Missing,
    /// Before each instance is created; the local image if the pull fails.
    Always,
    /// Never: the image must be on the node.
    Never,
    /// Build it (the service has `build:`) even when an image of that reference exists.
    Build,
}

/// A `post_start` or `pre_stop` command, run with exec in the container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// The program and its arguments.
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
}
