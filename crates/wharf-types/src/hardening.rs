//! What a service asks of the kernel beyond the defaults (Compose `cap_add`, `cap_drop`,
//! `privileged`, `read_only`, `security_opt`, `sysctls`, `ulimits`, `tmpfs`, `pids_limit`,
//! `userns_mode`; `network_mode: host` is [`crate::ServiceSpec::network_mode`]), typed, and the
//! names each accepts. The Docker driver applies it to the container's `HostConfig`; the
//! master's admission policy judges it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A service's hardening keys, normalised. The default asks for nothing (Docker's defaults).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Hardening {
    /// Capabilities added to Docker's default set, upper case without `CAP_` (`NET_ADMIN`), or
    /// `ALL`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities dropped, as `cap_add`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Every capability, every device, no seccomp or AppArmor confinement.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// The container's root filesystem is mounted read-only (`read_only: true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// `security_opt: [no-new-privileges]`: setuid binaries gain nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
    /// `security_opt: [seccomp=…]`; unset: the engine's default profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<Seccomp>,
    /// `security_opt: [apparmor=NAME]`: the AppArmor profile (loaded on the hosts), or
    /// `unconfined`; unset: the engine's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apparmor: Option<String>,
    /// Namespaced kernel parameters (`net.core.somaxconn: 1024`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Resource limits by name (`nofile`), soft and hard.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    /// Service-level `tmpfs:` mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<TmpfsMount>,
    /// The most processes (and threads) the container may have; `-1`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    /// `userns_mode: host`: no user-namespace remapping for this container (on engines with
    /// `userns-remap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns_mode: Option<UsernsMode>,
}

impl Hardening {
    pub fn is_default(&self) -> bool {
        *self == Hardening::default()
    }

    /// The Compose keys set, for messages (`cap_add, read_only`).
    pub fn keys_set(&self) -> Vec<&'static str> {
        let h = self;
        [
            ("cap_add", !h.cap_add.is_empty()),
            ("cap_drop", !h.cap_drop.is_empty()),
            ("privileged", h.privileged),
            ("read_only", h.read_only),
            (
                "security_opt",
                h.no_new_privileges || h.seccomp.is_some() || h.apparmor.is_some(),
            ),
            ("sysctls", !h.sysctls.is_empty()),
            ("ulimits", !h.ulimits.is_empty()),
            ("tmpfs", !h.tmpfs.is_empty()),
            ("pids_limit", h.pids_limit.is_some()),
            ("userns_mode", h.userns_mode.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }
}

/// A seccomp profile other than the engine's default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Seccomp {
    /// `seccomp=unconfined`: no system call filter.
    Unconfined,
    /// `seccomp=FILE`: the profile's JSON, read by the client from the file next to the stack
    /// file (nodes need no file).
    Profile(String),
}

/// A resource limit (`setrlimit`); `-1` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

/// A `tmpfs:` entry of a service: `/run` or `/run:size=64m,mode=1777,noexec`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TmpfsMount {
    /// Absolute path in the container.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Permission bits of the mount's root (octal in the file: `1777`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Mount flags from [`TMPFS_FLAGS`] (`noexec`, `nosuid`, `ro`…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl TmpfsMount {
    /// The options the engine takes (`size=67108864,mode=1777,noexec`).
    pub fn engine_options(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        if let Some(s) = self.size_bytes {
            out.push(format!("size={s}"));
        }
        if let Some(m) = self.mode {
            out.push(format!("mode={m:o}"));
        }
        out.extend(self.options.iter().cloned());
        out.join(",")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsernsMode {
    Host,
}

/// `network_mode:` values Wharf runs (`none`, `bridge`, `service:…` are warned about and the
/// service joins its stack network).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The host's network stack: no stack network, no published ports, no service discovery.
    Host,
}

/// Mount flags a service `tmpfs:` entry may carry besides `size=` and `mode=`.
pub const TMPFS_FLAGS: &[&str] = &[
    "ro", "rw", "noexec", "exec", "nosuid", "suid", "nodev", "dev",
];

/// The Linux capabilities (without `CAP_`), and `ALL`.
pub const CAPABILITIES: &[&str] = &[
    "ALL",
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

/// The capabilities Docker gives every container: adding one of them (after a `cap_drop`)
/// grants nothing new, so the admission policy allows it.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// The resource names `ulimits:` takes.
pub const ULIMITS: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// A capability as written (`net_admin`, `CAP_NET_ADMIN`) in its normal form (`NET_ADMIN`), if
/// it is one.
pub fn capability(name: &str) -> Option<String> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITIES.contains(&bare).then(|| bare.to_string())
}

/// Whether the engine runs `sysctl` inside the container's own namespaces (what Docker
/// accepts): `net.*` (not with the host's network), IPC (`kernel.msg*`, `kernel.sem`,
/// `kernel.shm*`) and `fs.mqueue.*`.
pub fn namespaced_sysctl(name: &str) -> bool {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    IPC.contains(&name) || name.starts_with("fs.mqueue.") || name.starts_with("net.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_normalised_and_unknown_ones_refused() {
        assert_eq!(capability("net_admin").as_deref(), Some("NET_ADMIN"));
        assert_eq!(capability("CAP_SYS_PTRACE").as_deref(), Some("SYS_PTRACE"));
        assert_eq!(capability("all").as_deref(), Some("ALL"));
        assert_eq!(capability("NET_ADMINS"), None);
        assert!(
            DEFAULT_CAPABILITIES
                .iter()
                .all(|c| CAPABILITIES.contains(c))
        );
    }

    #[test]
    fn tmpfs_options_are_what_the_engine_takes() {
        let t = TmpfsMount {
            target: "/run".into(),
            size_bytes: Some(64 << 20),
            mode: Some(0o1777),
            options: vec!["noexec".into()],
        };
        assert_eq!(t.engine_options(), "size=67108864,mode=1777,noexec");
        assert_eq!(TmpfsMount::default().engine_options(), "");
    }
}
