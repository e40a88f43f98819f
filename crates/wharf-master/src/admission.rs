//! The cluster's admission policy (pure): what a deploy may ask of the hosts. Each rule
//! (`wharf_types::PolicyRule`) refuses one way out of the container — privileged containers,
//! host bind mounts outside the allowed paths, the Docker socket, the host's network, added
//! capabilities beyond Docker's default set, the host's user namespace, unconfined seccomp and
//! AppArmor — unless the policy file (`wharf server --policy FILE`) allows it, for every stack
//! or for stacks by name. The API judges every deploy with [`judge`] before anything is
//! written; the spec alone decides, so a hand-made spec is judged as a stack file is.

use std::path::{Component, Path, PathBuf};

use wharf_types::{
    AdmissionPolicy, Allowances, DEFAULT_CAPABILITIES, MountKind, NetworkMode, PolicyInfo,
    PolicyRule, PolicyRuleInfo, Seccomp, ServiceSpec, StackSpec, UsernsMode, capability,
};

use crate::policy::glob_match;

/// Where the Docker engine's socket lives on a host; a mount of it, or of a directory that
/// holds it, is root on the host.
pub const DOCKER_SOCKETS: &[&str] = &["/var/run/docker.sock", "/run/docker.sock"];

/// The policy in force and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The policy file, or `built-in defaults`.
    pub source: String,
    pub policy: AdmissionPolicy,
}

impl Default for Admission {
    /// Everything refused: what `wharf server` runs without `--policy`.
    fn default() -> Self {
        Admission {
            source: "built-in defaults".into(),
            policy: AdmissionPolicy::default(),
        }
    }
}

impl Admission {
    /// `wharf up` without `--policy`: the defaults, with bind mounts allowed from `roots` (the
    /// directories it builds from: the stack file's, the current and home directories, the
    /// temporary directory), as on a workstation a stack mounts its own files.
    pub fn local(roots: &[PathBuf]) -> Admission {
        let mut a = Admission {
            source: "built-in defaults (wharf up: bind mounts from its build roots)".into(),
            ..Admission::default()
        };
        a.policy.allow.host_paths = roots.iter().map(|r| r.display().to_string()).collect();
        a
    }

    /// A policy file's text (YAML; JSON is YAML too), checked: unknown keys, unknown
    /// capabilities, relative host paths and empty stack rules are refused with the reason.
    pub fn parse(text: &str, source: &str) -> Result<Admission, String> {
        let mut policy: AdmissionPolicy = if text.trim().is_empty() {
            AdmissionPolicy::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| {
                format!(
                    "{source}: {}",
                    wharf_types::excerpt(&e.to_string().replace('\n', " "), 300)
                )
            })?
        };
        check_allowances(&mut policy.allow, source, "allow")?;
        for (i, s) in policy.stacks.iter_mut().enumerate() {
            let at = format!("stacks[{i}]");
            if s.names.is_empty() || s.names.iter().any(|n| n.trim().is_empty()) {
                return Err(format!(
                    "{source}: {at}.names: name the stacks the rule is for (`shop`, `shop-*`)"
                ));
            }
            check_allowances(&mut s.allow, source, &format!("{at}.allow"))?;
        }
        Ok(Admission {
            source: source.to_string(),
            policy,
        })
    }

    /// What `GET /v1/policy` answers.
    pub fn info(&self) -> PolicyInfo {
        let p = &self.policy;
        let rules = PolicyRule::ALL
            .iter()
            .map(|&rule| PolicyRuleInfo {
                rule,
                refuses: rule.refuses().to_string(),
                allowed: allowed_text(&p.allow, rule),
                stacks: p
                    .stacks
                    .iter()
                    .map(|s| (s.names.join(", "), allowed_text(&s.allow, rule)))
                    .filter(|(_, a)| a != "no")
                    .map(|(names, a)| format!("{names}: {a}"))
                    .collect(),
                allow_key: format!("allow.{}", rule.allow_key()),
            })
            .collect();
        PolicyInfo {
            source: self.source.clone(),
            policy: p.clone(),
            safe_capabilities: DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            rules,
        }
    }
}

/// Capabilities in normal form; host paths absolute and normalised.
fn check_allowances(a: &mut Allowances, source: &str, at: &str) -> Result<(), String> {
    for c in a.capabilities.iter_mut() {
        *c = capability(c).ok_or_else(|| {
            format!(
                "{source}: {at}.capabilities: unknown capability {c:?} (write NET_ADMIN, or ALL)"
            )
        })?;
    }
    for p in a.host_paths.iter_mut() {
        if !p.starts_with('/') {
            return Err(format!(
                "{source}: {at}.host_paths: {p:?} is not an absolute path"
            ));
        }
        *p = normal(p).display().to_string();
    }
    Ok(())
}

fn allowed_text(a: &Allowances, rule: PolicyRule) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    let list = |l: &[String]| {
        if l.is_empty() {
            "no".to_string()
        } else {
            l.join(", ")
        }
    };
    match rule {
        PolicyRule::Privileged => yes(a.privileged),
        PolicyRule::HostBindMount => list(&a.host_paths),
        PolicyRule::DockerSocket => yes(a.docker_socket),
        PolicyRule::HostNetwork => yes(a.host_network),
        PolicyRule::Capabilities => list(&a.capabilities),
        PolicyRule::UsernsHost => yes(a.userns_host),
        PolicyRule::UnconfinedSeccomp => yes(a.unconfined_seccomp),
        PolicyRule::UnconfinedApparmor => yes(a.unconfined_apparmor),
        PolicyRule::Devices => yes(a.devices),
    }
}

/// What a stack may ask for: the policy's `allow`, and that of every `stacks` rule naming it.
pub fn allowances(policy: &AdmissionPolicy, stack: &str) -> Allowances {
    let mut a = policy.allow.clone();
    for s in &policy.stacks {
        if !s.names.iter().any(|n| glob_match(n, stack)) {
            continue;
        }
        let b = &s.allow;
        a.privileged |= b.privileged;
        a.docker_socket |= b.docker_socket;
        a.host_network |= b.host_network;
        a.userns_host |= b.userns_host;
        a.unconfined_seccomp |= b.unconfined_seccomp;
        a.unconfined_apparmor |= b.unconfined_apparmor;
        a.devices |= b.devices;
        a.host_paths.extend(b.host_paths.iter().cloned());
        a.capabilities.extend(b.capabilities.iter().cloned());
    }
    a
}

/// One thing a deploy asked for that the policy refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub rule: PolicyRule,
    pub service: String,
    /// The field as the stack file names it: `services.web.cap_add[0]`, the key of
    /// `DeployRequest::sources`.
    pub field: String,
    /// What was asked for (`privileged: true`, `bind mount of /etc`).
    pub asked: String,
    /// The `allow:` entry that would let it through (`capabilities: [NET_ADMIN]`).
    pub allow: String,
}

/// Everything in `spec` the policy refuses, service by service in name order.
pub fn judge(policy: &AdmissionPolicy, spec: &StackSpec) -> Vec<Refusal> {
    let allowed = allowances(policy, &spec.name);
    let mut out = Vec::new();
    for (name, s) in &spec.services {
        judge_service(&allowed, spec, name, s, &mut out);
    }
    out
}

fn judge_service(
    a: &Allowances,
    spec: &StackSpec,
    name: &str,
    s: &ServiceSpec,
    out: &mut Vec<Refusal>,
) {
    let mut refuse = |rule, field: String, asked: String, allow: String| {
        out.push(Refusal {
            rule,
            service: name.to_string(),
            field: format!("services.{name}.{field}"),
            asked,
            allow,
        });
    };
    let h = &s.hardening;
    if h.privileged && !a.privileged {
        refuse(
            PolicyRule::Privileged,
            "privileged".into(),
            "privileged: true".into(),
            "privileged: true".into(),
        );
    }
    if s.network_mode == Some(NetworkMode::Host) && !a.host_network {
        refuse(
            PolicyRule::HostNetwork,
            "network_mode".into(),
            "network_mode: host".into(),
            "host_network: true".into(),
        );
    }
    if h.userns_mode == Some(UsernsMode::Host) && !a.userns_host {
        refuse(
            PolicyRule::UsernsHost,
            "userns_mode".into(),
            "userns_mode: host".into(),
            "userns_host: true".into(),
        );
    }
    if h.seccomp == Some(Seccomp::Unconfined) && !a.unconfined_seccomp {
        refuse(
            PolicyRule::UnconfinedSeccomp,
            "security_opt".into(),
            "seccomp=unconfined".into(),
            "unconfined_seccomp: true".into(),
        );
    }
    if h.apparmor.as_deref() == Some("unconfined") && !a.unconfined_apparmor {
        refuse(
            PolicyRule::UnconfinedApparmor,
            "security_opt".into(),
            "apparmor=unconfined".into(),
            "unconfined_apparmor: true".into(),
        );
    }
    for (i, d) in s.container.devices.iter().enumerate() {
        if !a.devices {
            refuse(
                PolicyRule::Devices,
                format!("devices[{i}]"),
                format!("device {}", d.source),
                "devices: true".into(),
            );
        }
    }
    let all = a.capabilities.iter().any(|c| c == "ALL");
    for (i, c) in h.cap_add.iter().enumerate() {
        let safe = DEFAULT_CAPABILITIES.contains(&c.as_str());
        if !safe && !all && !a.capabilities.contains(c) {
            refuse(
                PolicyRule::Capabilities,
                format!("cap_add[{i}]"),
                format!("cap_add {c}"),
                format!("capabilities: [{c}]"),
            );
        }
    }
    for (i, source) in host_sources(spec, s) {
        let path = normal(&source);
        for (rule, allow) in judge_host_path(a, &path) {
            refuse(
                rule,
                format!("volumes[{i}]"),
                format!("a bind mount of {}", path.display()),
                allow,
            );
        }
    }
}

/// The host paths a service's mounts expose, by mount index: bind sources, and the `device` of
/// a named volume the local driver binds (`driver_opts: {type: none, o: bind, device: /etc}`,
/// a bind mount by another name).
fn host_sources(spec: &StackSpec, s: &ServiceSpec) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, m) in s.volumes.iter().enumerate() {
        match m.kind {
            MountKind::Bind => out.push((i, m.source.clone())),
            MountKind::Volume => {
                let Some(v) = spec.volumes.get(&m.source) else {
                    continue;
                };
                let opts = &v.driver_opts;
                let binds = opts
                    .get("o")
                    .is_some_and(|o| o.split(',').any(|x| x == "bind"))
                    || opts.get("type").is_some_and(|t| t == "none");
                if let Some(device) = opts.get("device").filter(|_| binds) {
                    out.push((i, device.clone()));
                }
            }
            MountKind::Tmpfs => {}
        }
    }
    out
}

/// The rules a bind mount of `path` breaks, each with the allowance that lifts it: the Docker
/// socket itself needs `docker_socket`; a directory that holds it needs that and a host path;
/// anything else a host path that holds it.
fn judge_host_path(a: &Allowances, path: &Path) -> Vec<(PolicyRule, String)> {
    let mut out = Vec::new();
    let socket = DOCKER_SOCKETS
        .iter()
        .map(Path::new)
        .find(|s| s.starts_with(path));
    let named_socket = path.file_name().is_some_and(|f| f == "docker.sock");
    if (socket.is_some() || named_socket) && !a.docker_socket {
        out.push((PolicyRule::DockerSocket, "docker_socket: true".to_string()));
    }
    let is_socket = socket == Some(path) || named_socket;
    let under = a.host_paths.iter().any(|h| path.starts_with(h));
    if !is_socket && !under {
        out.push((
            PolicyRule::HostBindMount,
            format!("host_paths: [{}]", path.display()),
        ));
    }
    out
}

/// `path` without `.` and with `..` taken back (lexically: the master cannot see the node's
/// links), so `/srv/data/../../etc` is judged as `/etc`.
fn normal(path: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The refusal's message, location and hint, for the API's error: the first refusal in full
/// (where the file says it, when the request carries the place), the others in short.
pub fn explain(
    refusals: &[Refusal],
    stack: &str,
    sources: &std::collections::BTreeMap<String, String>,
) -> (String, String, String) {
    let place = |r: &Refusal| {
        sources
            .get(&r.field)
            .cloned()
            .unwrap_or_else(|| r.field.clone())
    };
    let first = &refusals[0];
    let mut message = format!(
        "{}: {} is refused by the admission policy (rule {}: {})",
        first.field,
        first.asked,
        first.rule.as_str(),
        first.rule.refuses()
    );
    if refusals.len() > 1 {
        let rest: Vec<String> = refusals[1..]
            .iter()
            .map(|r| match place(r) {
                p if p == r.field => format!("{p}: {} (rule {})", r.asked, r.rule.as_str()),
                p => format!("{p}: {} ({}, rule {})", r.asked, r.field, r.rule.as_str()),
            })
            .collect();
        message.push_str(&format!("; also refused: {}", rest.join("; ")));
    }
    let hint = format!(
        "an admin allows it in the policy file (wharf server --policy FILE): `allow: {{{}}}` for \
         every stack, or `stacks: [{{names: [{stack}], allow: {{{}}}}}]` for this one; \
         `wharf policy show` lists the rules",
        first.allow, first.allow
    );
    (message, place(first), hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_judged_after_dot_dot_is_taken_back() {
        assert_eq!(normal("/srv/data/../../etc/"), PathBuf::from("/etc"));
        assert_eq!(normal("/../.."), PathBuf::from("/"));
        let a = Allowances {
            host_paths: vec!["/srv/data".into()],
            ..Allowances::default()
        };
        assert!(judge_host_path(&a, &normal("/srv/data/x")).is_empty());
        assert_eq!(
            judge_host_path(&a, &normal("/srv/data/../../etc"))[0].0,
            PolicyRule::HostBindMount
        );
        assert_eq!(
            judge_host_path(&a, Path::new("/srv/database"))[0].0,
            PolicyRule::HostBindMount,
            "a sibling with the same prefix is not under it"
        );
        // The socket, a directory holding it, and a socket by another path.
        let rules = |p: &str| -> Vec<PolicyRule> {
            judge_host_path(&a, Path::new(p))
                .into_iter()
                .map(|r| r.0)
                .collect()
        };
        assert_eq!(rules("/var/run/docker.sock"), [PolicyRule::DockerSocket]);
        assert_eq!(
            rules("/var/run"),
            [PolicyRule::DockerSocket, PolicyRule::HostBindMount]
        );
        assert_eq!(
            rules("/"),
            [PolicyRule::DockerSocket, PolicyRule::HostBindMount]
        );
        assert_eq!(rules("/srv/data/docker.sock"), [PolicyRule::DockerSocket]);
    }

    #[test]
    fn a_policy_file_is_checked_when_read() {
        let a = Admission::parse(
            "allow:\n  capabilities: [net_admin]\n  host_paths: [/srv/data/]\nstacks:\n  - names: [mon-*]\n    allow: {privileged: true}\n",
            "p.yaml",
        )
        .unwrap();
        assert_eq!(a.policy.allow.capabilities, ["NET_ADMIN"]);
        assert_eq!(a.policy.allow.host_paths, ["/srv/data"]);
        assert!(allowances(&a.policy, "mon-1").privileged);
        assert!(!allowances(&a.policy, "shop").privileged);
        for (text, want) in [
            ("allow: {privilegd: true}\n", "unknown field"),
            ("allow: {capabilities: [NET_ADMN]}\n", "unknown capability"),
            ("allow: {host_paths: [srv]}\n", "not an absolute path"),
            ("stacks: [{names: [], allow: {}}]\n", "name the stacks"),
        ] {
            let e = Admission::parse(text, "p.yaml").unwrap_err();
            assert!(e.starts_with("p.yaml: ") && e.contains(want), "{text}: {e}");
        }
        assert_eq!(
            Admission::parse("", "p.yaml").unwrap().policy,
            AdmissionPolicy::default()
        );
        // The example the README points to.
        let example = include_str!("../../../examples/policy.yaml");
        let a = Admission::parse(example, "examples/policy.yaml").expect("the example parses");
        assert!(allowances(&a.policy, "monitoring-eu").host_network);
        assert!(allowances(&a.policy, "ci-runner").docker_socket);
        assert!(!allowances(&a.policy, "shop").docker_socket);
    }
}
