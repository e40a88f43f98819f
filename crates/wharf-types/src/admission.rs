//! The cluster's admission policy as the policy file (`wharf server --policy FILE`) and
//! `GET /v1/policy` write it: what stacks may ask of the hosts beyond the safe defaults, for
//! every stack (`allow`) and for stacks by name (`stacks`). The master judges every deploy
//! against it (`wharf-master/src/admission.rs`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The policy file. Everything not allowed here is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdmissionPolicy {
    /// What every stack may ask for.
    #[serde(default)]
    pub allow: Allowances,
    /// What the stacks a rule names may ask for besides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<StackAllowances>,
    /// The cluster-wide image-scan rule (`scan: {block: critical}`): a deploy whose image has
    /// findings this bad or worse is refused, as with a service's own `x-wharf: {scan:}` (the
    /// stricter of the two applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<ScanRule>,
}

/// `scan:` of the policy file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanRule {
    pub block: crate::Severity,
}

/// What is allowed beyond the defaults. Lists add up, flags are either.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Allowances {
    /// `privileged: true`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Host directories bind mounts may come from (each with everything under it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_paths: Vec<String>,
    /// A bind mount of the Docker socket (or a directory holding it): root on the host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub docker_socket: bool,
    /// `network_mode: host`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// Capabilities `cap_add` may name beyond Docker's default set (`NET_ADMIN`, or `ALL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// `userns_mode: host`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub userns_host: bool,
    /// `security_opt: [seccomp=unconfined]`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unconfined_seccomp: bool,
    /// `security_opt: [apparmor=unconfined]`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unconfined_apparmor: bool,
    /// `devices:`: host devices in containers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub devices: bool,
}

/// Allowances for the stacks whose names match one of `names` (`*` for any run of characters).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StackAllowances {
    pub names: Vec<String>,
    pub allow: Allowances,
}

/// A rule of the admission policy: what it refuses unless allowed.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyRule {
    Privileged,
    HostBindMount,
    DockerSocket,
    HostNetwork,
    Capabilities,
    UsernsHost,
    UnconfinedSeccomp,
    UnconfinedApparmor,
    Devices,
}

impl PolicyRule {
    pub const ALL: [PolicyRule; 9] = [
        PolicyRule::Privileged,
        PolicyRule::HostBindMount,
        PolicyRule::DockerSocket,
        PolicyRule::HostNetwork,
        PolicyRule::Capabilities,
        PolicyRule::UsernsHost,
        PolicyRule::UnconfinedSeccomp,
        PolicyRule::UnconfinedApparmor,
        PolicyRule::Devices,
    ];

    /// The rule's stable name (`host-bind-mount`).
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyRule::Privileged => "privileged",
            PolicyRule::HostBindMount => "host-bind-mount",
            PolicyRule::DockerSocket => "docker-socket",
            PolicyRule::HostNetwork => "host-network",
            PolicyRule::Capabilities => "capabilities",
            PolicyRule::UsernsHost => "userns-host",
            PolicyRule::UnconfinedSeccomp => "unconfined-seccomp",
            PolicyRule::UnconfinedApparmor => "unconfined-apparmor",
            PolicyRule::Devices => "devices",
        }
    }

    /// The key of `allow:` that lets it through, as the policy file writes it.
    pub fn allow_key(self) -> &'static str {
        match self {
            PolicyRule::Privileged => "privileged: true",
            PolicyRule::HostBindMount => "host_paths: [DIR]",
            PolicyRule::DockerSocket => "docker_socket: true",
            PolicyRule::HostNetwork => "host_network: true",
            PolicyRule::Capabilities => "capabilities: [CAP]",
            PolicyRule::UsernsHost => "userns_host: true",
            PolicyRule::UnconfinedSeccomp => "unconfined_seccomp: true",
            PolicyRule::UnconfinedApparmor => "unconfined_apparmor: true",
            PolicyRule::Devices => "devices: true",
        }
    }

    /// What it refuses, in short.
    pub fn refuses(self) -> &'static str {
        match self {
            PolicyRule::Privileged => "privileged containers",
            PolicyRule::HostBindMount => "bind mounts of host paths outside host_paths",
            PolicyRule::DockerSocket => "mounts of the Docker socket or a directory holding it",
            PolicyRule::HostNetwork => "network_mode: host",
            PolicyRule::Capabilities => "cap_add beyond Docker's default set",
            PolicyRule::UsernsHost => "userns_mode: host",
            PolicyRule::UnconfinedSeccomp => "security_opt seccomp=unconfined",
            PolicyRule::UnconfinedApparmor => "security_opt apparmor=unconfined",
            PolicyRule::Devices => "devices: host devices in containers",
        }
    }
}

/// `GET /v1/policy`: the policy in force, where it came from, and its rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyInfo {
    /// The policy file, or `built-in defaults`.
    pub source: String,
    pub policy: AdmissionPolicy,
    /// Capabilities `cap_add` may always name (Docker's default set).
    pub safe_capabilities: Vec<String>,
    pub rules: Vec<PolicyRuleInfo>,
}

/// One rule as `wharf policy show` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PolicyRuleInfo {
    pub rule: PolicyRule,
    pub refuses: String,
    /// What the policy allows of it for every stack (`no`, `yes`, or the list).
    pub allowed: String,
    /// Allowances for stacks by name (`shop-*: yes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stacks: Vec<String>,
    /// The `allow:` key that lets it through.
    pub allow_key: String,
}

/// One file of OSV advisories, as `wharf scan db import` sends it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdvisoryFile {
    /// The file's name, for errors (`DSA-5532-1.json`).
    pub name: String,
    /// Its text: one OSV record, or an array of them.
    pub text: String,
}

/// `POST /v1/scan/db`: files of OSV advisories to add to the vulnerability database (an
/// advisory already there, by id and release, is replaced).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdvisoryImport {
    pub files: Vec<AdvisoryFile>,
}

/// The vulnerability database: what it holds and what the last import brought.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AdvisoryDbInfo {
    /// Advisories held, one per affected package.
    pub advisories: u64,
    /// Packages with at least one advisory.
    pub packages: u64,
    /// Advisories the last import added or replaced.
    pub last_added: u64,
    /// Affected packages of ecosystems Wharf does not scan (npm, PyPI, ...), left out.
    pub last_skipped: u64,
    /// When the last import was (ms since the epoch); 0: never.
    pub imported_at: u64,
}
