//! Checks of a service's container options (`wharf_types::ContainerOptions`), mount options
//! and build keys on the typed spec, shared by the converter (which locates each at its key)
//! and `validate_spec` (which names the field path), as `hardening` does for the hardening
//! keys: a hand-made spec is held to what a stack file is.

use std::net::IpAddr;

use wharf_types::{DriverKind, MountKind, PROPAGATIONS, ServiceSpec, StackSpec};

use crate::hardening::Problem;

/// `ipc:` values Wharf runs: the container's own namespace (`host` and another container's
/// are refused: host access, and another service's instances may be on other nodes).
pub(crate) const IPC_MODES: &[&str] = &["private", "shareable", "none"];

/// An `extra_hosts` address: an IP address or Docker's `host-gateway`.
pub(crate) fn valid_host_address(a: &str) -> bool {
    a == "host-gateway" || a.parse::<IpAddr>().is_ok()
}

/// `platform: os/arch[/variant]`, lower case.
pub(crate) fn valid_platform(p: &str) -> bool {
    let part = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    let parts: Vec<&str> = p.split('/').collect();
    (2..=3).contains(&parts.len()) && parts.iter().all(|s| part(s))
}

/// `cpuset: 0-3` or `0,2`.
pub(crate) fn valid_cpuset(s: &str) -> bool {
    s.split(',').all(|p| {
        let mut ends = p.splitn(2, '-');
        ends.all(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_digit()))
    })
}

/// What is wrong with `s`'s container options (fields under the service: `dns[0]`).
pub(crate) fn problems(s: &ServiceSpec) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::new();
    let mut push = |field: String, message: String, hint: &str| {
        out.push((field, message, hint.to_string()));
    };
    let o = &s.container;
    if s.driver == DriverKind::Process
        && let Some(first) = o.keys_set().first()
    {
        push(
            first.to_string(),
            format!(
                "the process driver runs a native process and cannot apply {}",
                o.keys_set().join(", ")
            ),
            "remove them, or run the service in a container (x-wharf: {driver: docker})",
        );
    }
    for (i, h) in o.extra_hosts.iter().enumerate() {
        let ok = h
            .split_once(':')
            .is_some_and(|(n, a)| !n.is_empty() && valid_host_address(a));
        if !ok {
            push(
                format!("extra_hosts[{i}]"),
                format!("invalid extra host {h:?}"),
                "write host:address, such as db:10.0.0.5",
            );
        }
    }
    for (i, a) in o.dns.iter().enumerate() {
        if a.parse::<IpAddr>().is_err() {
            push(
                format!("dns[{i}]"),
                format!("{a:?} is not an IP address"),
                "write name servers as IP addresses, such as 10.0.0.2",
            );
        }
    }
    for (i, d) in o.devices.iter().enumerate() {
        let perms = !d.permissions.is_empty() && d.permissions.chars().all(|c| "rwm".contains(c));
        if !d.source.starts_with('/') || !d.target.starts_with('/') || !perms {
            push(
                format!("devices[{i}]"),
                format!("invalid device {:?}", d.source),
                "write host:container[:permissions], such as /dev/fuse or /dev/sda:/dev/xvda:r",
            );
        }
    }
    if o.mem_swappiness.is_some_and(|v| v > 100) {
        push(
            "mem_swappiness".into(),
            "swappiness is from 0 to 100".into(),
            "write a number from 0 to 100",
        );
    }
    if o.oom_score_adj
        .is_some_and(|v| !(-1000..=1000).contains(&v))
    {
        push(
            "oom_score_adj".into(),
            "the OOM score adjustment is from -1000 to 1000".into(),
            "write a number from -1000 to 1000",
        );
    }
    out.extend(setting_problems(s));
    out
}

/// What is wrong with `s`'s memory, CPU, platform, IPC, logging, DNS, pull and hook settings.
fn setting_problems(s: &ServiceSpec) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::new();
    let mut push = |field: String, message: String, hint: &str| {
        out.push((field, message, hint.to_string()));
    };
    let o = &s.container;
    let memory = s.deploy.resources.limits.memory_bytes;
    match (o.memswap_limit, memory) {
        (Some(swap), None) if swap != -1 => push(
            "memswap_limit".into(),
            "a swap limit needs a memory limit".into(),
            "set mem_limit (or deploy.resources.limits.memory) too",
        ),
        (Some(swap), Some(m)) if swap != -1 && (swap < 0 || (swap as u64) < m) => push(
            "memswap_limit".into(),
            format!("memory plus swap ({swap}) is less than the memory limit ({m})"),
            "memswap_limit counts memory and swap together: make it at least mem_limit, or -1",
        ),
        _ => {}
    }
    if let Some(c) = o.cpuset.as_deref().filter(|c| !valid_cpuset(c)) {
        push(
            "cpuset".into(),
            format!("invalid CPU set {c:?}"),
            "write CPU numbers and ranges such as 0-3 or 0,2",
        );
    }
    if let Some(p) = o.platform.as_deref().filter(|p| !valid_platform(p)) {
        push(
            "platform".into(),
            format!("invalid platform {p:?}"),
            "write os/arch[/variant], such as linux/amd64",
        );
    }
    if let Some(i) = o.ipc.as_deref().filter(|i| !IPC_MODES.contains(i)) {
        push(
            "ipc".into(),
            format!("ipc {i:?} is not supported"),
            "use private, shareable or none",
        );
    }
    if o.logging
        .as_ref()
        .is_some_and(|l| l.driver.is_empty() && !l.options.is_empty())
    {
        push(
            "logging".into(),
            "options without a driver".into(),
            "name the driver the options are for, such as driver: json-file",
        );
    }
    let host_network = s.network_mode == Some(wharf_types::NetworkMode::Host);
    if host_network && !(o.dns.is_empty() && o.dns_search.is_empty() && o.dns_opt.is_empty()) {
        push(
            "dns".into(),
            "a service on the host's network uses the host's resolver settings".into(),
            "remove dns, dns_search and dns_opt, or the network_mode",
        );
    }
    if o.pull_policy == Some(wharf_types::PullPolicy::Build) && s.build.is_none() {
        push(
            "pull_policy".into(),
            "pull_policy build needs build:".into(),
            "add build: to the service, or use pull_policy missing or always",
        );
    }
    for (key, hooks) in [("post_start", &o.post_start), ("pre_stop", &o.pre_stop)] {
        for (i, h) in hooks.iter().enumerate() {
            if h.command.is_empty() {
                push(
                    format!("{key}[{i}].command"),
                    "missing command".into(),
                    "add command: [prog, args...]",
                );
            }
        }
    }
    out
}

/// What is wrong with `s`'s mount options and build keys, against the stack's volumes.
pub(crate) fn mount_and_build_problems(spec: &StackSpec, s: &ServiceSpec) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::new();
    for (i, m) in s.volumes.iter().enumerate() {
        let o = &m.options;
        let field = |k: &str| format!("volumes[{i}].options.{k}");
        if let Some(p) = o
            .propagation
            .as_deref()
            .filter(|p| !PROPAGATIONS.contains(p))
        {
            out.push((
                field("propagation"),
                format!("unknown propagation {p:?}"),
                format!("use one of {}", PROPAGATIONS.join(", ")),
            ));
        }
        let only = |ok: bool, key: &str, kind: &str, out: &mut Vec<Problem>| {
            if !ok {
                out.push((
                    field(key),
                    format!("only a {kind} mount takes {key}"),
                    format!("remove it, or make the mount a {kind}"),
                ));
            }
        };
        let bind = m.kind == MountKind::Bind;
        let volume = m.kind == MountKind::Volume;
        let tmpfs = m.kind == MountKind::Tmpfs;
        only(
            bind || o.propagation.is_none(),
            "propagation",
            "bind",
            &mut out,
        );
        only(
            bind || o.create_host_path.is_none(),
            "create_host_path",
            "bind",
            &mut out,
        );
        only(volume || !o.nocopy, "nocopy", "volume", &mut out);
        only(volume || o.subpath.is_none(), "subpath", "volume", &mut out);
        only(
            tmpfs || o.tmpfs_size_bytes.is_none(),
            "tmpfs_size_bytes",
            "tmpfs",
            &mut out,
        );
        only(
            tmpfs || o.tmpfs_mode.is_none(),
            "tmpfs_mode",
            "tmpfs",
            &mut out,
        );
        if let Some(sp) = &o.subpath
            && (sp.starts_with('/') || sp.split('/').any(|c| c == ".."))
        {
            out.push((
                field("subpath"),
                format!("{sp:?} is not a relative path inside the volume"),
                "write a directory of the volume such as data/app".into(),
            ));
        }
        if o.tmpfs_mode.is_some_and(|m| m > 0o7777) {
            out.push((
                field("tmpfs_mode"),
                "not a file mode".into(),
                "write octal permission bits such as 1777".into(),
            ));
        }
        // What the top-level volume says must be what the mount carries: the agent acts on the
        // mount alone (attach or create, under which name).
        if volume
            && !m.source.is_empty()
            && let Some(v) = spec.volumes.get(&m.source)
        {
            let want = v.mount_options(&m.source);
            // A spec from a client before mount options carries none: the agent then names
            // the volume `<stack>_<source>` as it always did.
            let unset = o.volume_name.is_none()
                && !o.external
                && o.driver.is_none()
                && o.driver_opts.is_empty();
            let same = unset
                || o.volume_name == want.volume_name
                    && o.external == want.external
                    && o.driver == want.driver
                    && o.driver_opts == want.driver_opts;
            if !same {
                out.push((
                    format!("volumes[{i}].options"),
                    format!(
                        "the mount's volume name, external flag or driver differ from volumes.{}",
                        m.source
                    ),
                    "copy them from the top-level volume (VolumeSpec::mount_options)".into(),
                ));
            }
        }
    }
    if let Some(b) = &s.build {
        out.extend(build_problems(b));
    }
    out
}

/// What is wrong with a service's build keys.
fn build_problems(b: &wharf_types::BuildSpec) -> Vec<Problem> {
    let mut out: Vec<Problem> = Vec::new();
    if b.dockerfile.is_some() && b.dockerfile_inline.is_some() {
        out.push((
            "build.dockerfile_inline".into(),
            "both dockerfile and dockerfile_inline".into(),
            "keep one of them".into(),
        ));
    }
    if b.shm_size_bytes.is_some_and(|v| v > i32::MAX as u64) {
        out.push((
            "build.shm_size_bytes".into(),
            format!("the engine's builder takes at most {} bytes", i32::MAX),
            "write a size below 2g".into(),
        ));
    }
    if b.target.as_deref().is_some_and(|t| t.trim().is_empty()) {
        out.push((
            "build.target".into(),
            "the target stage is empty".into(),
            "name a stage of the Dockerfile (FROM … AS name)".into(),
        ));
    }
    for (i, h) in b.extra_hosts.iter().enumerate() {
        if !h
            .split_once(':')
            .is_some_and(|(n, a)| !n.is_empty() && valid_host_address(a))
        {
            out.push((
                format!("build.extra_hosts[{i}]"),
                format!("invalid extra host {h:?}"),
                "write host:address, such as db:10.0.0.5".into(),
            ));
        }
    }
    out
}
