//! The Compose keys each section knows, and those it knows but Wharf ignores (a warning, not an
//! error); anything else is an error with a did-you-mean hint. Also the names each enum-valued
//! key accepts (`Cx::one_of` reads them, its hint comes from the table).

use wharf_types::{
    DependsCondition, DeployMode, DriverKind, FailureAction, IngressBalance, IngressProtocol,
    MountKind, RestartCondition, UpdateOrder,
};

pub(super) const TOP_KEYS: &[&str] = &[
    "version", "name", "services", "volumes", "networks", "secrets", "configs",
];
pub(super) const TOP_UNSUPPORTED: &[&str] = &["models"];
pub(super) const SECRET_KEYS: &[&str] = &["file", "environment", "external", "name"];
pub(super) const SECRET_UNSUPPORTED: &[&str] =
    &["driver", "driver_opts", "template_driver", "labels"];
pub(super) const CONFIG_KEYS: &[&str] = &["file", "content", "environment", "external", "name"];
pub(super) const CONFIG_UNSUPPORTED: &[&str] = &["template_driver", "labels"];
pub(super) const FILE_REF_KEYS: &[&str] = &["source", "target", "uid", "gid", "mode"];
pub(super) const SERVICE_KEYS: &[&str] = &[
    "image",
    "build",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "labels",
    "volumes",
    "healthcheck",
    "restart",
    "depends_on",
    "stop_grace_period",
    "stop_signal",
    "user",
    "working_dir",
    "hostname",
    "init",
    "deploy",
    "secrets",
    "configs",
    "cap_add",
    "cap_drop",
    "privileged",
    "read_only",
    "security_opt",
    "sysctls",
    "ulimits",
    "tmpfs",
    "pids_limit",
    "userns_mode",
    "network_mode",
    "networks",
];
/// The service keys the master's admission policy judges: their places in the file (and their
/// items') travel with a deploy (`DeployRequest::sources`), so a refusal names `file:line:column`.
pub(super) const POLICY_JUDGED: &[&str] = &[
    "privileged",
    "cap_add",
    "volumes",
    "network_mode",
    "userns_mode",
    "security_opt",
];
pub(super) const SERVICE_UNSUPPORTED: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cgroup",
    "cgroup_parent",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpus",
    "cpuset",
    "credential_spec",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "driver_opts",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "ipc",
    "isolation",
    "label_file",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "platform",
    "post_start",
    "pre_stop",
    "provider",
    "pull_policy",
    "runtime",
    "scale",
    "shm_size",
    "stdin_open",
    "storage_opt",
    "tty",
    "use_api_socket",
    "uts",
    "volumes_from",
];
pub(super) const BUILD_KEYS: &[&str] = &["context", "dockerfile", "args"];
pub(super) const BUILD_UNSUPPORTED: &[&str] = &[
    "additional_contexts",
    "cache_from",
    "cache_to",
    "dockerfile_inline",
    "entitlements",
    "extra_hosts",
    "isolation",
    "labels",
    "network",
    "no_cache",
    "platforms",
    "privileged",
    "pull",
    "secrets",
    "shm_size",
    "ssh",
    "tags",
    "target",
    "ulimits",
];
pub(super) const HEALTH_KEYS: &[&str] = &[
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "disable",
];
pub(super) const HEALTH_UNSUPPORTED: &[&str] = &["start_interval"];
pub(super) const PORT_KEYS: &[&str] = &["target", "published", "host_ip", "protocol", "mode"];
pub(super) const PORT_UNSUPPORTED: &[&str] = &["name", "app_protocol"];
pub(super) const MOUNT_KEYS: &[&str] = &["type", "source", "target", "read_only"];
pub(super) const MOUNT_UNSUPPORTED: &[&str] = &["bind", "volume", "tmpfs", "consistency", "image"];
pub(super) const DEPENDS_KEYS: &[&str] = &["condition", "required", "restart"];
pub(super) const ENV_FILE_KEYS: &[&str] = &["path", "required"];
pub(super) const ENV_FILE_UNSUPPORTED: &[&str] = &["format"];
pub(super) const DEPLOY_KEYS: &[&str] = &[
    "mode",
    "replicas",
    "resources",
    "restart_policy",
    "update_config",
    "rollback_config",
    "placement",
    "labels",
];
pub(super) const DEPLOY_UNSUPPORTED: &[&str] = &["endpoint_mode"];
pub(super) const RESOURCES_KEYS: &[&str] = &["limits", "reservations"];
pub(super) const AMOUNT_KEYS: &[&str] = &["cpus", "memory"];
pub(super) const AMOUNT_UNSUPPORTED: &[&str] = &["pids", "devices", "generic_resources"];
pub(super) const RESTART_POLICY_KEYS: &[&str] = &["condition", "delay", "max_attempts", "window"];
pub(super) const UPDATE_KEYS: &[&str] = &[
    "parallelism",
    "delay",
    "order",
    "failure_action",
    "monitor",
    "max_failure_ratio",
];
pub(super) const PLACEMENT_KEYS: &[&str] = &["constraints", "preferences", "max_replicas_per_node"];
pub(super) const VOLUME_KEYS: &[&str] = &["driver", "driver_opts", "labels", "external", "name"];
pub(super) const NETWORK_KEYS: &[&str] = &["driver", "external", "internal"];
pub(super) const NETWORK_UNSUPPORTED: &[&str] = &[
    "name",
    "driver_opts",
    "attachable",
    "enable_ipv4",
    "enable_ipv6",
    "ipam",
    "labels",
];
pub(super) const XWHARF_KEYS: &[&str] = &[
    "driver",
    "allow_from",
    "affinity",
    "anti_affinity",
    "move_with_volumes",
    "auto_rebalance",
    "at_most_once",
    "ingress",
    "drain_grace",
];
pub(super) const INGRESS_KEYS: &[&str] = &[
    "port",
    "listen",
    "listen_address",
    "protocol",
    "hosts",
    "paths",
    "balance",
    "sticky",
    "timeout",
    "redirect_https",
    "tls",
];
pub(super) const TLS_KEYS: &[&str] = &["certificate", "key"];

pub(super) const DRIVERS: &[(&str, DriverKind)] = &[
    ("docker", DriverKind::Docker),
    ("process", DriverKind::Process),
];
pub(super) const PROTOCOLS: &[(&str, IngressProtocol)] = &[
    ("http", IngressProtocol::Http),
    ("tcp", IngressProtocol::Tcp),
];
pub(super) const BALANCES: &[(&str, IngressBalance)] = &[
    ("round_robin", IngressBalance::RoundRobin),
    ("least_requests", IngressBalance::LeastRequests),
];
pub(super) const MOUNT_TYPES: &[(&str, MountKind)] = &[
    ("volume", MountKind::Volume),
    ("bind", MountKind::Bind),
    ("tmpfs", MountKind::Tmpfs),
];
pub(super) const DEPENDS_CONDITIONS: &[(&str, DependsCondition)] = &[
    ("service_started", DependsCondition::ServiceStarted),
    ("service_healthy", DependsCondition::ServiceHealthy),
    (
        "service_completed_successfully",
        DependsCondition::ServiceCompletedSuccessfully,
    ),
];
pub(super) const DEPLOY_MODES: &[(&str, DeployMode)] = &[
    ("replicated", DeployMode::Replicated),
    ("global", DeployMode::Global),
];
pub(super) const RESTART_CONDITIONS: &[(&str, RestartCondition)] = &[
    ("none", RestartCondition::None),
    ("on-failure", RestartCondition::OnFailure),
    ("any", RestartCondition::Any),
];
pub(super) const UPDATE_ORDERS: &[(&str, UpdateOrder)] = &[
    ("stop-first", UpdateOrder::StopFirst),
    ("start-first", UpdateOrder::StartFirst),
];
pub(super) const FAILURE_ACTIONS: &[(&str, FailureAction)] = &[
    ("pause", FailureAction::Pause),
    ("continue", FailureAction::Continue),
    ("rollback", FailureAction::Rollback),
];
