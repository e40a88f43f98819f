//! The Compose keys of each section, in three explicit lists: those Wharf supports, those it
//! refuses (an error saying why and what to do instead: each changes what runs, and Wharf
//! cannot do it), and those it warns about and ignores (each says why ignoring it changes
//! nothing that runs). Anything else is an error with a did-you-mean hint. `tests/schema.rs`
//! walks the Compose specification's JSON schema and fails for a key in none of the lists.
//! Also the names each enum-valued key accepts (`Cx::one_of` reads them, its hint comes from
//! the table).

use wharf_types::{
    Concurrency, DependsCondition, DeployMode, DriverKind, FailureAction, IngressBalance,
    IngressProtocol, MountKind, PullPolicy, RestartCondition, UpdateOrder,
};

/// The keys of one section of a stack file.
pub struct Section {
    /// `service`, `service.build`, `deploy.resources.limits`… (what [`key_support`] takes).
    pub name: &'static str,
    pub supported: &'static [&'static str],
    /// Key, why Wharf refuses it, what to do instead.
    pub refused: &'static [(&'static str, &'static str, &'static str)],
    /// Key, why ignoring it changes nothing that runs.
    pub warned: &'static [(&'static str, &'static str)],
}

/// What Wharf does with a Compose key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    Supported,
    /// An error: why, and what to do instead.
    Refused {
        why: &'static str,
        instead: &'static str,
    },
    /// A warning: why ignoring it changes nothing that runs.
    Warned {
        why: &'static str,
    },
}

impl Section {
    pub fn support(&self, key: &str) -> Option<Support> {
        if self.supported.contains(&key) {
            return Some(Support::Supported);
        }
        if let Some((_, why, instead)) = self.refused.iter().find(|(k, _, _)| *k == key) {
            return Some(Support::Refused { why, instead });
        }
        let warned = self.warned.iter().find(|(k, _)| *k == key);
        warned.map(|(_, why)| Support::Warned { why })
    }

    /// Every key the section knows, supported first: for did-you-mean hints.
    pub fn all(&self) -> Vec<&'static str> {
        let refused = self.refused.iter().map(|(k, _, _)| *k);
        let warned = self.warned.iter().map(|(k, _)| *k);
        self.supported
            .iter()
            .copied()
            .chain(refused)
            .chain(warned)
            .collect()
    }
}

/// What Wharf does with `key` in the section named `section` (see [`SECTIONS`]); `None` for a
/// key, or a section, it does not know.
pub fn key_support(section: &str, key: &str) -> Option<Support> {
    SECTIONS.iter().find(|s| s.name == section)?.support(key)
}

/// Every section, for [`key_support`].
pub const SECTIONS: &[&Section] = &[
    &TOP,
    &INCLUDE,
    &SERVICE,
    &EXTENDS,
    &BUILD,
    &HEALTH,
    &PORT,
    &MOUNT,
    &MOUNT_BIND,
    &MOUNT_VOLUME,
    &MOUNT_TMPFS,
    &DEPENDS,
    &ENV_FILE,
    &LOGGING,
    &ULIMIT,
    &DEVICE,
    &HOOK,
    &SERVICE_NETWORK,
    &FILE_REF,
    &DEPLOY,
    &RESOURCES,
    &LIMITS,
    &RESERVATIONS,
    &RESTART_POLICY,
    &UPDATE,
    &PLACEMENT,
    &PREFERENCE,
    &VOLUME,
    &VOLUME_EXTERNAL,
    &NETWORK,
    &NETWORK_EXTERNAL,
    &SECRET,
    &CONFIG,
    &OBJECT_EXTERNAL,
    &XWHARF,
    &INGRESS,
    &TLS,
];

const BUILDKIT: &str = "it needs BuildKit, and Wharf builds with the engine's classic builder";
const BUILD_ELSEWHERE: &str = "build the image with docker buildx build and deploy it with image:";
const WINDOWS: &str = "it applies to Windows containers only";
const LEAVE_OUT: &str = "remove the key";

pub const TOP: Section = Section {
    name: "top",
    // `include` is read by the composition stage (`compose.rs`) before conversion.
    supported: &[
        "version", "name", "services", "volumes", "networks", "secrets", "configs", "include",
    ],
    refused: &[(
        "models",
        "AI models (Docker Model Runner) are not supported",
        "run the model server as a service",
    )],
    warned: &[],
};

/// An item of `include:` (long form), read by the composition stage (`compose.rs`).
pub const INCLUDE: Section = Section {
    name: "include",
    supported: &["path", "env_file", "project_directory"],
    refused: &[],
    warned: &[],
};

/// `extends:` of a service (long form), read by the composition stage (`compose.rs`).
pub const EXTENDS: Section = Section {
    name: "service.extends",
    supported: &["service", "file"],
    refused: &[],
    warned: &[],
};

pub const SERVICE: Section = Section {
    name: "service",
    // `extends` and `profiles` are read by the composition stage before conversion.
    supported: &[
        "extends",
        "profiles",
        "image",
        "build",
        "command",
        "entrypoint",
        "environment",
        "env_file",
        "ports",
        "expose",
        "labels",
        "label_file",
        "volumes",
        "healthcheck",
        "restart",
        "depends_on",
        "stop_grace_period",
        "stop_signal",
        "user",
        "working_dir",
        "hostname",
        "domainname",
        "init",
        "deploy",
        "scale",
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
        "mem_limit",
        "memswap_limit",
        "mem_reservation",
        "mem_swappiness",
        "cpus",
        "cpu_shares",
        "cpu_period",
        "cpu_quota",
        "cpuset",
        "shm_size",
        "oom_kill_disable",
        "oom_score_adj",
        "logging",
        "extra_hosts",
        "dns",
        "dns_search",
        "dns_opt",
        "tty",
        "stdin_open",
        "devices",
        "group_add",
        "ipc",
        "runtime",
        "storage_opt",
        "platform",
        "pull_policy",
        "post_start",
        "pre_stop",
    ],
    refused: &[
        (
            "annotations",
            "OCI annotations need Docker Engine API 1.43, newer than the 1.41 Wharf supports",
            "use labels: for metadata",
        ),
        (
            "blkio_config",
            "block IO weights and limits are not supported yet",
            "limit IO on the nodes' cgroups, or remove the key",
        ),
        (
            "cgroup",
            "the cgroup namespace mode is not supported (host is host access no admission rule judges)",
            LEAVE_OUT,
        ),
        (
            "cgroup_parent",
            "containers stay under the engine's cgroup parent, which is the node's configuration",
            "set the engine's --cgroup-parent on the nodes",
        ),
        ("cpu_count", WINDOWS, "use cpus:"),
        ("cpu_percent", WINDOWS, "use cpus:"),
        (
            "cpu_rt_period",
            "real-time CPU scheduling needs engines and kernels set up for it",
            LEAVE_OUT,
        ),
        (
            "cpu_rt_runtime",
            "real-time CPU scheduling needs engines and kernels set up for it",
            LEAVE_OUT,
        ),
        ("credential_spec", WINDOWS, LEAVE_OUT),
        (
            "device_cgroup_rules",
            "cgroup rules give access to host devices without naming them",
            "name the devices with devices: (judged by the devices admission rule)",
        ),
        (
            "external_links",
            "containers outside the stack cannot be linked",
            "reach other stacks' services by their DNS names, let in with x-wharf allow_from",
        ),
        (
            "gpus",
            "GPU device requests are not supported yet",
            "pass the device nodes with devices:",
        ),
        ("isolation", WINDOWS, LEAVE_OUT),
        (
            "links",
            "links are legacy: every service of the stack reaches the others by name through Wharf's DNS, and a link would also order starts",
            "remove links:; use depends_on for order and networks: aliases for other names",
        ),
        (
            "mac_address",
            "one fixed MAC address cannot be given to several instances",
            LEAVE_OUT,
        ),
        (
            "models",
            "AI models (Docker Model Runner) are not supported",
            "run the model server as a service",
        ),
        (
            "pid",
            "sharing the host's or another container's process namespace is not supported: no admission rule judges it",
            "run the processes in one container",
        ),
        (
            "pre_start",
            "pre_start hooks run a container of their own before the service's; not supported",
            "run the step in the image's entrypoint, or as a service others depend on with condition service_completed_successfully",
        ),
        (
            "provider",
            "services run by external providers are not supported",
            "run it as a container",
        ),
        (
            "pull_refresh_after",
            "pull refresh intervals are not supported",
            "use pull_policy: always",
        ),
        (
            "use_api_socket",
            "it gives the container the Docker socket and the caller's credentials",
            "mount /var/run/docker.sock with volumes: (judged by the docker-socket admission rule)",
        ),
        (
            "uts",
            "the host's UTS namespace is host access no admission rule judges",
            "set hostname: instead",
        ),
        (
            "volumes_from",
            "the instances of another service may run on other nodes",
            "share a named volume",
        ),
    ],
    warned: &[
        (
            "attach",
            "it only decides whose logs `docker compose up` shows; read them with wharf logs",
        ),
        (
            "container_name",
            "container names are Wharf's (wharf-<stack>-<service>-<slot>-g<generation>), and other services reach this one by its service name",
        ),
        (
            "develop",
            "it configures docker compose watch for development; a deploy runs what the file says",
        ),
    ],
};

pub const BUILD: Section = Section {
    name: "service.build",
    supported: &[
        "context",
        "dockerfile",
        "dockerfile_inline",
        "args",
        "target",
        "labels",
        "network",
        "extra_hosts",
        "shm_size",
        "cache_from",
        "no_cache",
        "pull",
    ],
    refused: &[
        (
            "secrets",
            BUILDKIT,
            "build the image with docker buildx build --secret and deploy it with image:; a build arg would leave the value in the image",
        ),
        (
            "ssh",
            BUILDKIT,
            "build the image with docker buildx build --ssh and deploy it with image:",
        ),
        ("additional_contexts", BUILDKIT, BUILD_ELSEWHERE),
        ("cache_to", BUILDKIT, BUILD_ELSEWHERE),
        ("entitlements", BUILDKIT, BUILD_ELSEWHERE),
        (
            "no_cache_filter",
            BUILDKIT,
            "use no_cache: true, or build the image with docker buildx build",
        ),
        (
            "platforms",
            BUILDKIT,
            "set platform: on the service to build for the nodes' own platform, or build with docker buildx build",
        ),
        ("privileged", BUILDKIT, BUILD_ELSEWHERE),
        ("isolation", WINDOWS, LEAVE_OUT),
        (
            "ulimits",
            "Wharf's builder cannot pass ulimits to the engine's build",
            "build the image with docker build --ulimit and deploy it with image:",
        ),
    ],
    warned: &[
        (
            "tags",
            "Wharf tags the image it builds with the service's image only; more tags change nothing that runs",
        ),
        (
            "provenance",
            "attestations need BuildKit and change nothing that runs",
        ),
        (
            "sbom",
            "attestations need BuildKit and change nothing that runs",
        ),
    ],
};

pub const HEALTH: Section = Section {
    name: "service.healthcheck",
    supported: &[
        "test",
        "interval",
        "timeout",
        "retries",
        "start_period",
        "start_interval",
        "disable",
    ],
    refused: &[],
    warned: &[],
};

pub const PORT: Section = Section {
    name: "service.ports",
    supported: &["target", "published", "host_ip", "protocol", "mode"],
    refused: &[],
    warned: &[
        (
            "name",
            "a port's name is metadata for tools; the port is published the same",
        ),
        (
            "app_protocol",
            "a port's application protocol is metadata for tools; the port is published the same",
        ),
    ],
};

pub const MOUNT: Section = Section {
    name: "service.volumes",
    supported: &[
        "type",
        "source",
        "target",
        "read_only",
        "bind",
        "volume",
        "tmpfs",
    ],
    refused: &[(
        "image",
        "image mounts need Docker Engine API 1.47, newer than the 1.41 Wharf supports",
        "copy the files into the service's image, or into a named volume",
    )],
    warned: &[(
        "consistency",
        "it matters to Docker Desktop on macOS only; Linux mounts are always consistent",
    )],
};

pub const MOUNT_BIND: Section = Section {
    name: "service.volumes.bind",
    supported: &["propagation", "create_host_path"],
    refused: &[
        (
            "recursive",
            "read-only recursion modes need Docker Engine API 1.44, newer than the 1.41 Wharf supports",
            LEAVE_OUT,
        ),
        (
            "selinux",
            "SELinux relabelling of host paths is not supported",
            "relabel the host directory (chcon) on the nodes",
        ),
    ],
    warned: &[],
};

pub const MOUNT_VOLUME: Section = Section {
    name: "service.volumes.volume",
    supported: &["nocopy", "subpath"],
    refused: &[],
    warned: &[(
        "labels",
        "labels of the volume made for the mount are metadata; the mount is the same",
    )],
};

pub const MOUNT_TMPFS: Section = Section {
    name: "service.volumes.tmpfs",
    supported: &["size", "mode"],
    refused: &[],
    warned: &[],
};

pub const DEPENDS: Section = Section {
    name: "service.depends_on",
    supported: &["condition", "required", "restart"],
    refused: &[],
    warned: &[],
};

pub const ENV_FILE: Section = Section {
    name: "service.env_file",
    supported: &["path", "required"],
    refused: &[(
        "format",
        "only the KEY=value format of .env files is read",
        "write the file as KEY=value lines",
    )],
    warned: &[],
};

pub const LOGGING: Section = Section {
    name: "service.logging",
    supported: &["driver", "options"],
    refused: &[],
    warned: &[],
};

pub const ULIMIT: Section = Section {
    name: "service.ulimits",
    supported: &["soft", "hard"],
    refused: &[],
    warned: &[],
};

pub const DEVICE: Section = Section {
    name: "service.devices",
    supported: &["source", "target", "permissions"],
    refused: &[],
    warned: &[],
};

pub const HOOK: Section = Section {
    name: "service.hook",
    supported: &[
        "command",
        "user",
        "working_dir",
        "environment",
        "privileged",
    ],
    refused: &[],
    warned: &[],
};

pub const SERVICE_NETWORK: Section = Section {
    name: "service.networks",
    supported: &["aliases"],
    refused: &[
        (
            "ipv4_address",
            "instances get their addresses from the stack's subnet, and one fixed address cannot be given to several",
            "reach the service by its name",
        ),
        (
            "ipv6_address",
            "stack networks are IPv4 only, their addresses given by Wharf",
            "reach the service by its name",
        ),
        (
            "link_local_ips",
            "instances get their addresses from the stack's subnet",
            LEAVE_OUT,
        ),
        (
            "mac_address",
            "one fixed MAC address cannot be given to several instances",
            LEAVE_OUT,
        ),
        (
            "driver_opts",
            "segments are enforced by Wharf's firewall and DNS on one network per stack; no driver option applies",
            LEAVE_OUT,
        ),
        (
            "interface_name",
            "a container has one interface, on its stack's network",
            LEAVE_OUT,
        ),
    ],
    warned: &[
        (
            "priority",
            "a container is on one network, its stack's; the order of segments changes nothing",
        ),
        (
            "gw_priority",
            "a container is on one network, its stack's; the order of segments changes nothing",
        ),
    ],
};

pub const FILE_REF: Section = Section {
    name: "service.file_ref",
    supported: &["source", "target", "uid", "gid", "mode"],
    refused: &[],
    warned: &[],
};

pub const DEPLOY: Section = Section {
    name: "deploy",
    supported: &[
        "mode",
        "replicas",
        "resources",
        "restart_policy",
        "update_config",
        "rollback_config",
        "placement",
        "labels",
    ],
    refused: &[],
    warned: &[(
        "endpoint_mode",
        "Wharf's DNS always answers a service's name with its instances' addresses (as dnsrr); the instances run the same",
    )],
};

pub const RESOURCES: Section = Section {
    name: "deploy.resources",
    supported: &["limits", "reservations"],
    refused: &[],
    warned: &[],
};

pub const LIMITS: Section = Section {
    name: "deploy.resources.limits",
    supported: &["cpus", "memory", "pids"],
    refused: &[],
    warned: &[],
};

pub const RESERVATIONS: Section = Section {
    name: "deploy.resources.reservations",
    supported: &["cpus", "memory"],
    refused: &[
        (
            "devices",
            "device reservations (GPUs) are not supported yet",
            "pass the device nodes with devices: and place the service with constraints",
        ),
        (
            "generic_resources",
            "generic resources are not supported",
            "place the service with constraints on node labels",
        ),
    ],
    warned: &[],
};

pub const RESTART_POLICY: Section = Section {
    name: "deploy.restart_policy",
    supported: &["condition", "delay", "max_attempts", "window"],
    refused: &[],
    warned: &[],
};

pub const UPDATE: Section = Section {
    name: "deploy.update_config",
    supported: &[
        "parallelism",
        "delay",
        "order",
        "failure_action",
        "monitor",
        "max_failure_ratio",
    ],
    refused: &[],
    warned: &[],
};

pub const PLACEMENT: Section = Section {
    name: "deploy.placement",
    supported: &["constraints", "preferences", "max_replicas_per_node"],
    refused: &[],
    warned: &[],
};

pub const PREFERENCE: Section = Section {
    name: "deploy.placement.preferences",
    supported: &["spread"],
    refused: &[],
    warned: &[],
};

pub const VOLUME: Section = Section {
    name: "volume",
    supported: &["driver", "driver_opts", "labels", "external", "name"],
    refused: &[],
    warned: &[],
};

pub const VOLUME_EXTERNAL: Section = Section {
    name: "volume.external",
    supported: &["name"],
    refused: &[],
    warned: &[],
};

pub const NETWORK: Section = Section {
    name: "network",
    supported: &["driver", "external", "internal"],
    refused: &[
        (
            "driver_opts",
            "segments are enforced by Wharf's firewall and DNS on one network per stack; no driver option applies",
            LEAVE_OUT,
        ),
        ("enable_ipv6", "stack networks are IPv4 only", LEAVE_OUT),
        ("ipam", "the master gives each stack its subnets", LEAVE_OUT),
    ],
    warned: &[
        (
            "name",
            "segments are Wharf's firewall and DNS rules, not engine networks, so they have no engine name",
        ),
        (
            "attachable",
            "it only lets standalone containers attach; the stack's network is Wharf's",
        ),
        ("enable_ipv4", "stack networks are always IPv4"),
        (
            "labels",
            "labels of a segment are metadata; it is enforced the same",
        ),
    ],
};

pub const NETWORK_EXTERNAL: Section = Section {
    name: "network.external",
    supported: &[],
    refused: &[(
        "name",
        "segments are Wharf's firewall and DNS rules, not engine networks; another stack's cannot be joined by an engine name",
        "let the other stack's services in with x-wharf allow_from",
    )],
    warned: &[],
};

pub const SECRET: Section = Section {
    name: "secret",
    supported: &["file", "environment", "external", "name"],
    refused: &[
        (
            "driver",
            "secret store drivers are not supported: Wharf keeps secrets sealed in its own store",
            "create it with wharf secret create and mark it external",
        ),
        (
            "driver_opts",
            "secret store drivers are not supported: Wharf keeps secrets sealed in its own store",
            "create it with wharf secret create and mark it external",
        ),
        (
            "template_driver",
            "templated secrets are not supported",
            "render the file before the deploy",
        ),
    ],
    warned: &[(
        "labels",
        "labels of a secret are metadata; its value and mounts are the same",
    )],
};

pub const CONFIG: Section = Section {
    name: "config",
    supported: &["file", "content", "environment", "external", "name"],
    refused: &[(
        "template_driver",
        "templated configs are not supported",
        "render the file before the deploy",
    )],
    warned: &[(
        "labels",
        "labels of a config are metadata; its value and mounts are the same",
    )],
};

pub const OBJECT_EXTERNAL: Section = Section {
    name: "object.external",
    supported: &["name"],
    refused: &[],
    warned: &[],
};

/// The service keys the master's admission policy judges: their places in the file (and their
/// items') travel with a deploy (`DeployRequest::sources`), so a refusal names `file:line:column`.
pub(super) const POLICY_JUDGED: &[&str] = &[
    "privileged",
    "cap_add",
    "volumes",
    "network_mode",
    "userns_mode",
    "security_opt",
    "devices",
];

pub const XWHARF: Section = Section {
    name: "service.x-wharf",
    supported: &[
        "driver",
        "allow_from",
        "affinity",
        "anti_affinity",
        "move_with_volumes",
        "auto_rebalance",
        "at_most_once",
        "ingress",
        "drain_grace",
        "schedule",
        "timezone",
        "concurrency",
        "deadline",
        "history",
        "scan",
        "auto_deploy",
    ],
    refused: &[],
    warned: &[],
};

pub const SCAN: Section = Section {
    name: "service.x-wharf.scan",
    supported: &["block"],
    refused: &[],
    warned: &[],
};

pub const INGRESS: Section = Section {
    name: "service.x-wharf.ingress",
    supported: &[
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
    ],
    refused: &[],
    warned: &[],
};

pub const TLS: Section = Section {
    name: "service.x-wharf.ingress.tls",
    supported: &["certificate", "key"],
    refused: &[],
    warned: &[],
};

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
    ("replicated-job", DeployMode::ReplicatedJob),
    ("global-job", DeployMode::GlobalJob),
];
pub(super) const CONCURRENCIES: &[(&str, Concurrency)] = &[
    ("allow", Concurrency::Allow),
    ("forbid", Concurrency::Forbid),
    ("replace", Concurrency::Replace),
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
pub(super) const PULL_POLICIES: &[(&str, PullPolicy)] = &[
    ("missing", PullPolicy::Missing),
    ("if_not_present", PullPolicy::Missing),
    ("always", PullPolicy::Always),
    ("never", PullPolicy::Never),
    ("build", PullPolicy::Build),
];
pub(super) const FAILURE_ACTIONS: &[(&str, FailureAction)] = &[
    ("pause", FailureAction::Pause),
    ("continue", FailureAction::Continue),
    ("rollback", FailureAction::Rollback),
];
