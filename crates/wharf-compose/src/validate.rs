//! Server-side re-validation of an already-normalised [`StackSpec`] (what the API receives).

use std::collections::BTreeMap;
use std::fmt;

use wharf_types::{DriverKind, IngressProtocol, IngressRoute, MountKind, ServiceSpec, StackSpec};

/// One problem in a spec, named by its field path (`services.web.ports[0].published`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecError {
    pub path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for SpecError {}

struct V(Vec<SpecError>);

impl V {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>, hint: &str) {
        self.0.push(SpecError {
            path: path.into(),
            message: message.into(),
            hint: Some(hint.to_string()),
        });
    }
}

/// What is wrong with a replica count, as (message, hint): above [`wharf_types::MAX_REPLICAS`].
/// The same words from the converter, the master's validation of a deploy and `service scale`.
pub fn replicas_problem(replicas: u32) -> Option<(String, String)> {
    let max = wharf_types::MAX_REPLICAS;
    (replicas > max).then(|| {
        (
            format!("{replicas} replicas is more than the limit of {max}"),
            format!(
                "ask for at most {max} replicas; a service that needs more runs as several services"
            ),
        )
    })
}

/// Check what [`crate::load_str`] guarantees, on a spec that came from elsewhere.
pub fn validate_spec(spec: &StackSpec) -> Result<(), Vec<SpecError>> {
    let mut v = V(Vec::new());
    if let Err(e) = crate::validate_stack_name(&spec.name) {
        v.err(
            "name",
            e,
            "use 1 to 63 lower-case letters, digits, '_' or '-'",
        );
    }
    if spec.services.is_empty() {
        v.err(
            "services",
            "the stack has no services",
            "add at least one service",
        );
    }
    for name in spec.volumes.keys() {
        if !crate::valid_service_name(name) {
            v.err(
                format!("volumes.{name}"),
                format!("invalid volume name {name:?}"),
                "use letters, digits, '_', '.' or '-', starting with a letter or digit",
            );
        }
    }
    for (key, obj) in spec.secrets.iter().chain(&spec.configs) {
        if !crate::valid_service_name(key) || !crate::valid_service_name(&obj.name) {
            v.err(
                format!("secrets/configs.{key}"),
                format!("invalid name {:?} (named {:?})", key, obj.name),
                "use letters, digits, '_', '.' or '-', starting with a letter or digit",
            );
        }
    }
    for (name, s) in &spec.services {
        let p = format!("services.{name}");
        if !crate::valid_service_name(name) {
            v.err(
                &p,
                format!("invalid service name {name:?}"),
                "use letters, digits, '_', '.' or '-', starting with a letter or digit",
            );
        }
        v.image_and_command(&p, s);
        v.ports(&p, s);
        v.mounts(spec, &p, s);
        v.files(spec, &p, s);
        v.health_and_deps(spec, &p, s);
        v.deploy(&p, s);
        v.wharf_ext(spec, &p, s);
        let runtime = crate::runtime::problems(s);
        let mounts = crate::runtime::mount_and_build_problems(spec, s);
        for (field, message, hint) in crate::hardening::problems(s)
            .into_iter()
            .chain(runtime)
            .chain(mounts)
        {
            v.err(format!("{p}.{field}"), message, &hint);
        }
    }
    for c in ingress_conflicts(&spec.services) {
        v.err(
            format!(
                "services.{}.wharf.ingress[{}].{}",
                c.service, c.index, c.field
            ),
            c.message,
            c.hint,
        );
    }
    for cycle in find_cycles(&spec.services) {
        v.err(
            format!("services.{}.depends_on", cycle[0]),
            format!("dependency cycle: {}", cycle.join(" -> ")),
            "remove one of the depends_on entries in the cycle",
        );
    }
    if v.0.is_empty() { Ok(()) } else { Err(v.0) }
}

impl V {
    /// Image, command, build context and environment of one service.
    fn image_and_command(&mut self, p: &str, s: &ServiceSpec) {
        match &s.image {
            Some(i) if i.trim().is_empty() || i.chars().any(char::is_whitespace) => self.err(
                format!("{p}.image"),
                format!("invalid image reference {i:?}"),
                "write an image reference such as nginx:1.27",
            ),
            None if s.driver == DriverKind::Docker && s.build.is_none() => self.err(
                format!("{p}.image"),
                "the service has neither image nor build",
                "set image or build",
            ),
            _ => {}
        }
        if s.driver == DriverKind::Process && s.command.as_ref().is_none_or(Vec::is_empty) {
            self.err(
                format!("{p}.command"),
                "a service with the process driver needs a command",
                "set command to the program and its arguments",
            );
        }
        if let Some(b) = &s.build
            && !b.context.starts_with('/')
        {
            self.err(
                format!("{p}.build.context"),
                format!("the build context {:?} is not an absolute path", b.context),
                "the client resolves the context against the stack file's directory",
            );
        }
        for k in s.environment.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                self.err(
                    format!("{p}.environment"),
                    format!("invalid variable name {k:?}"),
                    "names cannot be empty or contain '='",
                );
            }
        }
    }

    /// Published and target ports of one service.
    fn ports(&mut self, p: &str, s: &ServiceSpec) {
        for (i, port) in s.ports.iter().enumerate() {
            if port.target == 0 {
                self.err(
                    format!("{p}.ports[{i}].target"),
                    "port 0 is not a valid target",
                    "use a port between 1 and 65535",
                );
            }
            if port.published == Some(0) {
                self.err(
                    format!("{p}.ports[{i}].published"),
                    "port 0 is not a valid published port",
                    "use a port between 1 and 65535, or leave it unset to let the engine pick one",
                );
            }
            if let Some(ip) = &port.host_ip
                && ip.parse::<std::net::IpAddr>().is_err()
            {
                self.err(
                    format!("{p}.ports[{i}].host_ip"),
                    format!("{ip:?} is not an IP address"),
                    "write an address such as 127.0.0.1",
                );
            }
        }
    }

    /// The mounts of one service, against the stack's volumes.
    fn mounts(&mut self, spec: &StackSpec, p: &str, s: &ServiceSpec) {
        for (i, m) in s.volumes.iter().enumerate() {
            let mp = format!("{p}.volumes[{i}]");
            if !m.target.starts_with('/') {
                self.err(
                    format!("{mp}.target"),
                    format!("the target {:?} is not an absolute path", m.target),
                    "the path inside the container must start with /",
                );
            }
            match m.kind {
                MountKind::Volume => {
                    if !m.source.is_empty() && !spec.volumes.contains_key(&m.source) {
                        self.err(
                            format!("{mp}.source"),
                            format!("volume {:?} is not declared", m.source),
                            "declare it under top-level volumes:",
                        );
                    }
                }
                MountKind::Bind => {
                    if !m.source.starts_with('/') {
                        self.err(
                            format!("{mp}.source"),
                            format!("the bind source {:?} is not an absolute path", m.source),
                            "the client resolves host paths against the stack file's directory",
                        );
                    }
                }
                MountKind::Tmpfs => {
                    if !m.source.is_empty() {
                        self.err(
                            format!("{mp}.source"),
                            "a tmpfs mount takes no source",
                            "leave source empty",
                        );
                    }
                }
            }
        }
    }

    /// The secrets and configs one service mounts: defined at the top level, each at its own
    /// absolute target.
    fn files(&mut self, spec: &StackSpec, p: &str, s: &ServiceSpec) {
        let mut targets = std::collections::BTreeSet::new();
        for (kind, f) in s.files() {
            let sec = format!("{}s", kind.as_str());
            let fp = format!("{p}.{sec}");
            let defined = match kind {
                wharf_types::ObjectKind::Secret => &spec.secrets,
                wharf_types::ObjectKind::Config => &spec.configs,
            };
            if !defined.contains_key(&f.source) {
                self.err(
                    &fp,
                    format!("{} {:?} is not defined", kind.as_str(), f.source),
                    "define it under the top-level secrets: or configs:",
                );
            }
            let target = std::path::Path::new(&f.target);
            let plain = target.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            });
            if !f.target.starts_with('/') || !plain || f.target == "/" || f.target.contains('\0') {
                self.err(
                    format!("{fp}.target"),
                    format!("{:?} is not an absolute path to a file", f.target),
                    "write a path such as /run/secrets/db_password",
                );
            }
            if !targets.insert(f.target.clone()) {
                self.err(
                    format!("{fp}.target"),
                    format!("two files are mounted at {}", f.target),
                    "give each secret and config its own target",
                );
            }
            if f.mode() > 0o777 {
                self.err(
                    format!("{fp}.mode"),
                    format!("{:o} is not a file mode", f.mode()),
                    "write permission bits, such as 0440",
                );
            }
        }
    }

    /// The health check and dependencies of one service.
    fn health_and_deps(&mut self, spec: &StackSpec, p: &str, s: &ServiceSpec) {
        if let Some(h) = &s.healthcheck
            && !(h.test.len() > 1 && matches!(h.test[0].as_str(), "CMD" | "CMD-SHELL"))
        {
            self.err(
                format!("{p}.healthcheck.test"),
                "the test must start with CMD or CMD-SHELL and have a command",
                "write [\"CMD\", \"prog\", \"arg\"] or [\"CMD-SHELL\", \"command line\"]",
            );
        }
        for dep in s.depends_on.keys() {
            if !spec.services.contains_key(dep) {
                self.err(
                    format!("{p}.depends_on.{dep}"),
                    format!("unknown service {dep:?}"),
                    "depend only on services defined in this stack",
                );
            }
        }
    }

    /// `deploy:` of one service: resources, update configs, constraints, replicas.
    fn deploy(&mut self, p: &str, s: &ServiceSpec) {
        let d = &s.deploy;
        for (which, a) in [
            ("limits", &d.resources.limits),
            ("reservations", &d.resources.reservations),
        ] {
            if a.nano_cpus == Some(0) {
                self.err(
                    format!("{p}.deploy.resources.{which}.nano_cpus"),
                    "cpus must be greater than 0",
                    "leave it unset for no limit",
                );
            }
            if a.memory_bytes == Some(0) {
                self.err(
                    format!("{p}.deploy.resources.{which}.memory_bytes"),
                    "memory must be greater than 0",
                    "leave it unset for no limit",
                );
            }
        }
        for (which, u) in [
            ("update_config", &d.update_config),
            ("rollback_config", &d.rollback_config),
        ] {
            if u.max_failure_ratio_permille > 1000 {
                self.err(
                    format!("{p}.deploy.{which}.max_failure_ratio_permille"),
                    "the ratio must be between 0 and 1000 per mille",
                    "write a ratio between 0 and 1 in the stack file",
                );
            }
        }
        for (i, c) in d.placement.constraints.iter().enumerate() {
            if let Err(e) = wharf_types::constraint::parse_constraint(c) {
                self.err(
                    format!("{p}.deploy.placement.constraints[{i}]"),
                    format!("invalid constraint: {e}"),
                    &format!("write one of: {}", wharf_types::constraint::ACCEPTED_FORMS),
                );
            }
        }
        if let Some((message, hint)) = replicas_problem(d.replicas) {
            self.err(format!("{p}.deploy.replicas"), message, &hint);
        }
        if d.placement.max_replicas_per_node == Some(0) {
            self.err(
                format!("{p}.deploy.placement.max_replicas_per_node"),
                "max_replicas_per_node must be greater than 0",
                "leave it unset for no limit",
            );
        }
    }

    /// Affinity names and ingress routes of one service.
    fn wharf_ext(&mut self, spec: &StackSpec, p: &str, s: &ServiceSpec) {
        for (which, names) in [
            ("affinity", &s.wharf.affinity),
            ("anti_affinity", &s.wharf.anti_affinity),
        ] {
            for (i, other) in names.iter().enumerate() {
                if !spec.services.contains_key(other) {
                    self.err(
                        format!("{p}.wharf.{which}[{i}]"),
                        format!("unknown service {other:?}"),
                        "name services defined in this stack",
                    );
                }
            }
        }
        for (i, r) in s.wharf.ingress.iter().enumerate() {
            for (field, message, hint) in ingress_route_problems(r) {
                self.err(format!("{p}.wharf.ingress[{i}].{field}"), message, hint);
            }
            if let Some((field, message, hint)) = r.tls.as_ref().and_then(ingress_tls_problems) {
                self.err(format!("{p}.wharf.ingress[{i}].{field}"), message, hint);
            }
        }
        for (i, field, message, hint) in ingress_service_problems(&s.wharf) {
            self.err(format!("{p}.wharf.ingress[{i}].{field}"), message, hint);
        }
        if let Some(j) = &s.wharf.schedule
            && let Err(e) = crate::schedule::Schedule::parse(&j.cron, j.timezone.as_deref())
        {
            self.err(format!("{p}.wharf.schedule"), e.message, &e.hint);
        }
        if s.wharf.history == Some(0) {
            self.err(
                format!("{p}.wharf.history"),
                "history must keep at least one run",
                "write 1 or more",
            );
        }
    }
}

/// What is wrong with one ingress route on its own, as (field, message, hint). The same rules as
/// the proxy's config checks, so that a route accepted here is never refused by an agent.
pub(crate) fn ingress_route_problems(
    r: &IngressRoute,
) -> Vec<(&'static str, String, &'static str)> {
    let mut out = Vec::new();
    let port_hint = "use a port number between 1 and 65535";
    if r.port == 0 {
        out.push((
            "port",
            "port 0 is not a valid container port".into(),
            port_hint,
        ));
    }
    if r.listen == 0 {
        out.push((
            "listen",
            "port 0 is not a valid listen port".into(),
            port_hint,
        ));
    }
    if let Some(a) = &r.listen_address
        && a.parse::<std::net::IpAddr>().is_err()
    {
        out.push((
            "listen_address",
            format!("{a:?} is not an IP address"),
            "write an address such as 127.0.0.1 (leave it out to listen on every interface)",
        ));
    }
    for h in &r.hosts {
        let name = h.strip_prefix("*.").unwrap_or(h);
        let bad = name.is_empty()
            || name.contains('*')
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if bad {
            out.push((
                "hosts",
                format!("{h:?} is not a host name"),
                "write a name such as app.example.com, or *.example.com for its subdomains (no port)",
            ));
        }
    }
    for path in &r.paths {
        if !path.starts_with('/') {
            out.push((
                "paths",
                format!("the path {path:?} does not start with /"),
                "write a path prefix such as /api",
            ));
        }
    }
    if let Some(c) = &r.sticky {
        let ok = !c.is_empty()
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !ok {
            out.push((
                "sticky",
                format!("{c:?} is not a valid cookie name"),
                "use letters, digits, '-', '_' or '.'",
            ));
        }
    }
    if r.timeout_ms == Some(0) {
        out.push((
            "timeout",
            "the timeout must be greater than 0".into(),
            "write a duration such as 30s, or leave it out for 60 s",
        ));
    }
    if r.redirect_https && r.tls.is_some() {
        out.push((
            "redirect_https",
            "this route terminates TLS; redirect_https belongs on a plain-HTTP route".into(),
            "remove redirect_https here and add a route without tls that redirects, e.g. {port: 8080, listen: 80, redirect_https: true}",
        ));
    }
    if r.protocol == IngressProtocol::Tcp {
        let http_only = [
            ("hosts", !r.hosts.is_empty()),
            ("paths", !r.paths.is_empty()),
            ("sticky", r.sticky.is_some()),
            ("timeout", r.timeout_ms.is_some()),
            ("redirect_https", r.redirect_https),
        ];
        for (field, set) in http_only {
            if set {
                out.push((
                    field,
                    format!("{field} applies to HTTP routes, not to protocol: tcp"),
                    "remove it, or use protocol: http",
                ));
            }
        }
        if r.tls.is_some() {
            out.push((
                "tls",
                "the ingress terminates TLS for HTTP routes only, not for protocol: tcp".into(),
                "use protocol: http, or remove tls and terminate TLS in the service itself",
            ));
        }
    }
    out
}

/// What is wrong with a service's routes taken together, as (route index, field, message,
/// hint): a `redirect_https` route needs a TLS route of the same service to redirect to.
pub(crate) fn ingress_service_problems(
    ext: &wharf_types::WharfExt,
) -> Vec<(usize, &'static str, String, &'static str)> {
    let mut out = Vec::new();
    for (i, r) in ext.ingress.iter().enumerate() {
        if r.redirect_https && r.tls.is_none() && ext.redirect_port(i).is_none() {
            out.push((
                i,
                "redirect_https",
                "redirect_https needs a route with tls in the same service, to redirect to".into(),
                "add a route with `tls: {certificate: FILE, key: FILE}` to this service (its listen port is where clients are sent)",
            ));
        }
    }
    out
}

/// What is wrong with a route's certificate and key, as (field, message, hint), for specs that
/// arrive over the API (the loader checks the files with their locations).
pub(crate) fn ingress_tls_problems(
    tls: &wharf_types::IngressTls,
) -> Option<(&'static str, String, &'static str)> {
    if tls.key.is_redacted() {
        return Some((
            "tls.key",
            "the key is the API's redacted fingerprint, not a private key".into(),
            "deploy from the stack file: `wharf stack deploy` reads the key file",
        ));
    }
    crate::tls::check(&tls.certificate, tls.key.expose())
        .err()
        .map(|p| {
            let field = if p.field == "key" {
                "tls.key"
            } else {
                "tls.certificate"
            };
            (field, p.message, p.hint)
        })
}

/// A route that cannot share its listen port with earlier routes of the stack.
pub(crate) struct Conflict {
    pub service: String,
    pub index: usize,
    /// `listen` or `tls`.
    pub field: &'static str,
    pub message: String,
    pub hint: &'static str,
}

/// Routes of a stack that cannot share their listen port with an earlier route: a TCP route
/// takes its port alone; routes sharing a port agree on protocol, listen address and whether
/// they terminate TLS; on a TLS port, one host (or the hostless default) has one certificate.
pub(crate) fn ingress_conflicts(services: &BTreeMap<String, ServiceSpec>) -> Vec<Conflict> {
    let mut first: BTreeMap<u16, (&str, usize, &IngressRoute)> = BTreeMap::new();
    // (listen port, host or "" for the default) -> the first route with a certificate for it.
    let mut certs: BTreeMap<(u16, &str), (&str, usize, &wharf_types::IngressTls)> = BTreeMap::new();
    let mut out = Vec::new();
    let ports_hint = "give each TCP route its own listen port, and routes sharing a port the same protocol and listen_address";
    for (name, s) in services {
        for (i, r) in s.wharf.ingress.iter().enumerate() {
            let Some((other, j, o)) = first.get(&r.listen).copied() else {
                first.insert(r.listen, (name, i, r));
                out.extend(cert_conflicts(&mut certs, name, i, r));
                continue;
            };
            let (why, hint) = if o.protocol == IngressProtocol::Tcp
                || r.protocol == IngressProtocol::Tcp
            {
                ("a TCP route needs its listen port to itself", ports_hint)
            } else if o.listen_address != r.listen_address {
                (
                    "routes on the same listen port must have the same listen_address",
                    ports_hint,
                )
            } else if o.tls.is_some() != r.tls.is_some() {
                (
                    "routes on the same listen port must all have tls (HTTPS) or none (plain HTTP)",
                    "add tls to this route, or give it another listen port",
                )
            } else {
                out.extend(cert_conflicts(&mut certs, name, i, r));
                continue;
            };
            out.push(Conflict {
                service: name.clone(),
                index: i,
                field: "listen",
                message: format!(
                    "listen port {} is already used by services.{other}.x-wharf.ingress[{j}]: {why}",
                    r.listen
                ),
                hint,
            });
        }
    }
    out
}

/// Records the certificate of route `i` of `service` for each of its hosts; a host that already
/// has a different certificate on the port is a conflict (a client asking for that name could
/// get only one of them).
fn cert_conflicts<'a>(
    certs: &mut BTreeMap<(u16, &'a str), (&'a str, usize, &'a wharf_types::IngressTls)>,
    service: &'a str,
    i: usize,
    r: &'a IngressRoute,
) -> Option<Conflict> {
    let tls = r.tls.as_ref()?;
    let hosts: Vec<&str> = if r.hosts.is_empty() {
        vec![""]
    } else {
        r.hosts.iter().map(String::as_str).collect()
    };
    let mut conflict = None;
    for host in hosts {
        match certs.get(&(r.listen, host)) {
            None => {
                certs.insert((r.listen, host), (service, i, tls));
            }
            Some((other, j, o)) if conflict.is_none() && *o != tls => {
                let what = if host.is_empty() {
                    "the default certificate (routes without hosts)".to_string()
                } else {
                    format!("host {host}")
                };
                conflict = Some(Conflict {
                    service: service.to_string(),
                    index: i,
                    field: "tls",
                    message: format!(
                        "listen port {} already has another certificate for {what} (services.{other}.x-wharf.ingress[{j}])",
                        r.listen
                    ),
                    hint: "use the same certificate and key for one host on one port, or different hosts",
                });
            }
            Some(_) => {}
        }
    }
    conflict
}

/// Dependency cycles, each as a path `a -> b -> a`, found in a deterministic order.
pub(crate) fn find_cycles(services: &BTreeMap<String, ServiceSpec>) -> Vec<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        White,
        Gray,
        Black,
    }
    let mut marks: BTreeMap<&str, Mark> =
        services.keys().map(|k| (k.as_str(), Mark::White)).collect();
    let mut cycles = Vec::new();
    for start in services.keys() {
        if marks.get(start.as_str()) != Some(&Mark::White) {
            continue;
        }
        // Iterative DFS: (node, remaining dependencies).
        let mut stack: Vec<(&str, Vec<&str>)> = Vec::new();
        let deps = |n: &str| -> Vec<&str> {
            services
                .get(n)
                .map(|s| s.depends_on.keys().rev().map(String::as_str).collect())
                .unwrap_or_default()
        };
        marks.insert(start, Mark::Gray);
        stack.push((start, deps(start)));
        while let Some((node, rest)) = stack.last_mut() {
            let node = *node;
            match rest.pop() {
                Some(next) => match marks.get(next).copied() {
                    Some(Mark::White) => {
                        marks.insert(next, Mark::Gray);
                        let d = deps(next);
                        stack.push((next, d));
                    }
                    Some(Mark::Gray) => {
                        let from = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut cycle: Vec<String> =
                            stack[from..].iter().map(|(n, _)| n.to_string()).collect();
                        cycle.push(next.to_string());
                        cycles.push(cycle);
                    }
                    _ => {}
                },
                None => {
                    marks.insert(node, Mark::Black);
                    stack.pop();
                }
            }
        }
    }
    cycles
}
