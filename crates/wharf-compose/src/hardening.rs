//! Checks of a service's hardening keys and `network_mode` on the typed spec, shared by the
//! converter (which locates each at its key) and `validate_spec` (which names the field path):
//! one list of what is wrong, so a hand-made spec is held to what a stack file is.

use wharf_types::{
    DriverKind, NetworkMode, Seccomp, ServiceSpec, TMPFS_FLAGS, ULIMITS, capability,
    namespaced_sysctl,
};

/// One problem: the field under the service (`cap_add[1]`, `sysctls.kernel.domainname`), the
/// message and the hint.
pub(crate) type Problem = (String, String, String);

/// The largest seccomp profile a stack may send (Docker's default profile is about 20 KiB).
pub(crate) const MAX_SECCOMP_BYTES: u64 = 256 * 1024;

/// What is wrong with `s`'s hardening keys and network mode.
pub(crate) fn problems(s: &ServiceSpec) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::new();
    let mut push = |field: String, message: String, hint: &str| {
        out.push((field, message, hint.to_string()));
    };
    let h = &s.hardening;
    if s.driver == DriverKind::Process {
        let mut keys = h.keys_set();
        if s.network_mode.is_some() {
            keys.push("network_mode");
        }
        if let Some(first) = keys.first() {
            push(
                first.to_string(),
                format!(
                    "the process driver runs a native process and cannot apply {}",
                    keys.join(", ")
                ),
                "remove them, or run the service in a container (x-wharf: {driver: docker})",
            );
        }
    }
    for (key, caps) in [("cap_add", &h.cap_add), ("cap_drop", &h.cap_drop)] {
        for (i, c) in caps.iter().enumerate() {
            if capability(c).as_deref() != Some(c.as_str()) {
                push(
                    format!("{key}[{i}]"),
                    format!("unknown capability {c:?}"),
                    "name a Linux capability such as NET_ADMIN (see capabilities(7)), or ALL",
                );
            }
        }
    }
    for name in h.sysctls.keys() {
        if !namespaced_sysctl(name) {
            push(
                format!("sysctls.{name}"),
                format!("{name:?} is not a namespaced sysctl: it would change the host"),
                "containers may set only net.*, kernel.shm*, kernel.msg*, kernel.sem and fs.mqueue.*",
            );
        } else if name.starts_with("net.") && s.network_mode == Some(NetworkMode::Host) {
            push(
                format!("sysctls.{name}"),
                format!("{name:?} would change the host's network with network_mode: host"),
                "remove the net.* sysctls, or the network_mode",
            );
        }
    }
    for (name, u) in &h.ulimits {
        if !ULIMITS.contains(&name.as_str()) {
            push(
                format!("ulimits.{name}"),
                format!("unknown ulimit {name:?}"),
                "use one of core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack",
            );
        }
        let bad = u.soft < -1 || u.hard < -1 || (u.hard != -1 && (u.soft == -1 || u.soft > u.hard));
        if bad {
            push(
                format!("ulimits.{name}"),
                format!("soft {} and hard {} do not make a limit", u.soft, u.hard),
                "the soft limit must not exceed the hard one (-1 is unlimited)",
            );
        }
    }
    tmpfs_problems(s, &mut push);
    if let Some(p) = h.pids_limit
        && p != -1
        && p <= 0
    {
        push(
            "pids_limit".into(),
            format!("{p} is not a process limit"),
            "write a positive number, or -1 for no limit",
        );
    }
    if let Some(Seccomp::Profile(json)) = &h.seccomp {
        let object = serde_json::from_str::<serde_json::Value>(json).is_ok_and(|v| v.is_object());
        if !object || json.len() as u64 > MAX_SECCOMP_BYTES {
            push(
                "security_opt".into(),
                "the seccomp profile is not a JSON object (or is over 256 KiB)".into(),
                "write a profile as Docker's default one (moby/profiles/seccomp/default.json)",
            );
        }
    }
    if let Some(a) = &h.apparmor
        && !valid_profile_name(a)
    {
        push(
            "security_opt".into(),
            format!(
                "invalid AppArmor profile name {:?}",
                wharf_types::excerpt(a, 80)
            ),
            "name a profile loaded on the hosts (letters, digits, '_', '-', '.', '/')",
        );
    }
    host_network_problems(s, &mut push);
    out
}

/// The service `tmpfs:` entries: absolute targets, once each, known flags, a file mode.
fn tmpfs_problems(s: &ServiceSpec, push: &mut impl FnMut(String, String, &str)) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, t) in s.hardening.tmpfs.iter().enumerate() {
        let plain = std::path::Path::new(&t.target)
            .components()
            .all(|c| !matches!(c, std::path::Component::ParentDir));
        if !t.target.starts_with('/') || !plain || t.target.contains([',', ':', '\0']) {
            push(
                format!("tmpfs[{i}]"),
                format!("the target {:?} is not an absolute path", t.target),
                "the path inside the container must start with /",
            );
        }
        if !seen.insert(t.target.as_str()) {
            push(
                format!("tmpfs[{i}]"),
                format!("two tmpfs mounts at {}", t.target),
                "mount each path once",
            );
        }
        if let Some(o) = t
            .options
            .iter()
            .find(|o| !TMPFS_FLAGS.contains(&o.as_str()))
        {
            push(
                format!("tmpfs[{i}]"),
                format!("unknown tmpfs option {o:?}"),
                "use size=64m, mode=1777 and the flags ro, rw, noexec, exec, nosuid, suid, nodev, dev",
            );
        }
        if t.mode.is_some_and(|m| m > 0o7777) {
            push(
                format!("tmpfs[{i}]"),
                format!("mode {:o} is not a file mode", t.mode.unwrap_or_default()),
                "write octal permission bits such as 1777",
            );
        }
    }
}

/// What `network_mode: host` rules out: a hostname, published ports, ingress routes (the
/// service has no address of its own).
fn host_network_problems(s: &ServiceSpec, push: &mut impl FnMut(String, String, &str)) {
    if s.network_mode != Some(NetworkMode::Host) {
        return;
    }
    if s.hostname.is_some() {
        push(
            "hostname".into(),
            "a service on the host's network has the host's name".into(),
            "remove hostname, or the network_mode",
        );
    }
    if !s.ports.is_empty() {
        push(
            "ports".into(),
            "a service on the host's network publishes nothing: it listens on the host's ports"
                .into(),
            "remove ports, or the network_mode",
        );
    }
    if !s.wharf.ingress.is_empty() {
        push(
            "x-wharf.ingress".into(),
            "the ingress cannot route to a service on the host's network".into(),
            "remove the routes, or the network_mode",
        );
    }
}

/// An AppArmor profile name: what `apparmor_parser` profiles are usually called.
fn valid_profile_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
}
