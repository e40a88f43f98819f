//! One service: its keys, build, environment files, health check, restart, `expose` and
//! `depends_on`, and the checks across services (dependency cycles, affinity).

use std::collections::BTreeMap;

use wharf_types::{
    BuildSpec, DependsOn, DriverKind, HealthCheck, ObjectKind, RestartCondition, RestartPolicy,
    ServiceSpec, StackSpec,
};

use crate::context::{absolutize, hash_dir};
use crate::interp::parse_dotenv;
use crate::units;
use crate::yaml::{Key, Kind, Node, Pos};

use super::keys::*;
use super::{Cx, fields, join, keyed, suggest};

impl Cx<'_> {
    pub(super) fn services(&mut self, n: &Node) -> BTreeMap<String, ServiceSpec> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.map(n, "services") else {
            return out;
        };
        if entries.is_empty() {
            self.error(
                n.pos,
                "services: the stack has no services".into(),
                "add at least one service under services:",
            );
        }
        for (k, v) in entries {
            if k.name.starts_with("x-") {
                continue;
            }
            if !crate::valid_service_name(&k.name) {
                self.error(
                    k.pos,
                    format!("services: invalid service name {:?}", k.name),
                    "use letters, digits, '_', '.' or '-', starting with a letter or digit",
                );
            }
            let svc = self.service(k, v);
            out.insert(k.name.clone(), svc);
        }
        let names: Vec<&str> = out.keys().map(String::as_str).collect();
        self.check_affinity(n, &names);
        self.check_ingress_ports(n, &out);
        out
    }

    // ---------------------------------------------------------------- services

    pub(super) fn service(&mut self, key: &Key, n: &Node) -> ServiceSpec {
        let name = key.name.as_str();
        let path = join("services", name);
        let mut s = ServiceSpec::default();
        let Some(entries) = self.map(n, &path) else {
            return s;
        };
        let mut restart_from_deploy = None;
        let mut levels = super::runtime::Levels::default();
        let mut positions: BTreeMap<&str, Pos> = BTreeMap::new();
        for (k, v, p) in keyed(entries, &path) {
            positions.insert(k.name.as_str(), k.pos);
            if POLICY_JUDGED.contains(&k.name.as_str()) {
                self.record_source(&p, k.pos, v);
            }
            if v.is_null() {
                if !SERVICE.supported.contains(&k.name.as_str()) && k.name != "x-wharf" {
                    self.other_key(k, &path, &SERVICE);
                }
                continue;
            }
            match k.name.as_str() {
                "image" => {
                    s.image = self.string(v, &p);
                    if s.image.as_deref().is_some_and(|i| i.trim().is_empty()) {
                        self.error(
                            v.pos,
                            format!("{p}: the image is empty"),
                            "write an image reference such as nginx:1.27",
                        );
                    }
                }
                "build" => s.build = self.build(v, &p),
                "command" => s.command = self.command(v, &p),
                "entrypoint" => s.entrypoint = self.command(v, &p),
                "environment" => {
                    let env = self.env_values(v, &p);
                    // `environment` wins over `env_file`, whatever their order in the file.
                    s.environment.extend(env);
                }
                "env_file" => {
                    let from_files = self.env_files(v, &p);
                    for (k, val) in from_files {
                        s.environment.entry(k).or_insert(val);
                    }
                }
                "ports" => s.ports = self.ports(v, &p),
                "expose" => s.expose = self.expose(v, &p),
                "labels" => s.labels = self.labels(v, &p),
                "volumes" => s.volumes = self.mounts(v, &p),
                "secrets" => s.secrets = self.file_refs(ObjectKind::Secret, v, &p),
                "configs" => s.configs = self.file_refs(ObjectKind::Config, v, &p),
                "healthcheck" => s.healthcheck = self.healthcheck(v, &p),
                "restart" => {
                    if let Some(r) = self.restart(v, &p) {
                        s.restart = r;
                    }
                }
                "depends_on" => s.depends_on = self.depends_on(name, v, &p),
                "stop_grace_period" => s.stop_grace_period_ms = self.duration(v, &p),
                "stop_signal" => s.stop_signal = self.string(v, &p),
                "user" => s.user = self.string(v, &p),
                "working_dir" => s.working_dir = self.string(v, &p),
                "hostname" => s.hostname = self.string(v, &p),
                "networks" => s.networks = self.service_networks(name, v, &p),
                "init" => s.init = self.bool(v, &p),
                "deploy" => {
                    let (d, rp) = self.deploy(v, &p);
                    s.deploy = d;
                    restart_from_deploy = rp;
                }
                "x-wharf" => {
                    if let Some(d) = self.x_wharf(v, &p, &mut s.wharf) {
                        s.driver = d;
                    }
                }
                _ if self.hardening_key(k, v, &p, &mut s.hardening, &mut s.network_mode) => {}
                _ if self.runtime_key(k, v, &p, &mut s, &mut levels) => {}
                _ => self.other_key(k, &path, &SERVICE),
            }
        }
        if let Some(rp) = restart_from_deploy {
            s.restart = rp;
        }
        self.merge_levels(&mut s, levels, n, &path);
        let runtime = crate::runtime::problems(&s);
        for (field, message, hint) in crate::hardening::problems(&s).into_iter().chain(runtime) {
            let top = field.split(['.', '[']).next().unwrap_or_default();
            let pos = positions.get(top).copied().unwrap_or(key.pos);
            self.error(pos, format!("{path}.{field}: {message}"), hint);
        }
        match s.driver {
            DriverKind::Docker => {
                if s.image.is_none() && s.build.is_none() {
                    self.error(
                        key.pos,
                        format!("{path}: the service has neither image nor build"),
                        "add `image: <reference>` or `build: <directory>` to the service",
                    );
                }
            }
            DriverKind::Process => {
                if s.command.as_ref().is_none_or(Vec::is_empty) {
                    self.error(
                        key.pos,
                        format!("{path}: a service with the process driver needs a command"),
                        "add `command: [program, args...]` to the service",
                    );
                }
            }
        }
        s
    }

    pub(super) fn build(&mut self, n: &Node, path: &str) -> Option<BuildSpec> {
        let mut context = ".".to_string();
        let mut context_pos = n.pos;
        let mut dockerfile_pos = n.pos;
        let mut spec = BuildSpec::default();
        match &n.kind {
            Kind::Scalar(s) => context = s.text.clone(),
            Kind::Map(entries) => {
                for (k, v, p) in fields(entries, path) {
                    match k.name.as_str() {
                        "context" => {
                            context = self.string(v, &p)?;
                            context_pos = v.pos;
                        }
                        "dockerfile" => {
                            spec.dockerfile = self.string(v, &p);
                            dockerfile_pos = v.pos;
                        }
                        "args" => spec.args = self.env_values(v, &p),
                        _ if self.build_option(k, v, &p, &mut spec) => {}
                        _ => self.other_key(k, path, &BUILD),
                    }
                }
            }
            Kind::Seq(_) => {
                self.type_error(
                    n,
                    path,
                    "a directory or a mapping",
                    "write `build: ./dir` or `build: {context: ./dir}`",
                );
                return None;
            }
        }
        if context.contains("://") || context.starts_with("git@") {
            self.error(
                context_pos,
                format!("{path}: remote build context {context:?} is not supported"),
                "clone the repository and point build at the local directory",
            );
            return None;
        }
        let dir = absolutize(&self.dir(context_pos), &context);
        if !self.inside(context_pos, path, "the build context", &dir) {
            return None;
        }
        if spec.dockerfile.is_some() && spec.dockerfile_inline.is_some() {
            self.error(
                dockerfile_pos,
                format!("{path}: both dockerfile and dockerfile_inline"),
                "keep one of them",
            );
            return None;
        }
        if let Some(f) = &spec.dockerfile
            && !self.inside(dockerfile_pos, path, "the Dockerfile", &absolutize(&dir, f))
        {
            return None;
        }
        if !dir.is_dir() {
            self.error(
                context_pos,
                format!("{path}: build context {} is not a directory", dir.display()),
                "the context is relative to the stack file's directory; check the path",
            );
            return None;
        }
        match hash_dir(&dir) {
            Ok(h) => spec.context_hash = Some(h),
            Err(e) => {
                self.error(
                    context_pos,
                    format!("{path}: {e}"),
                    "make the build context readable",
                );
                return None;
            }
        }
        spec.context = dir.to_string_lossy().into_owned();
        Some(spec)
    }

    /// The build keys besides `context`, `dockerfile` and `args`; false for any other.
    fn build_option(&mut self, k: &Key, v: &Node, p: &str, b: &mut BuildSpec) -> bool {
        match k.name.as_str() {
            "target" => b.target = self.string(v, p).filter(|t| !t.trim().is_empty()),
            "dockerfile_inline" => b.dockerfile_inline = self.string(v, p),
            "labels" => b.labels = self.labels(v, p),
            "network" => b.network = self.string(v, p),
            "extra_hosts" => b.extra_hosts = self.extra_hosts(v, p),
            "shm_size" => {
                b.shm_size_bytes = self.size(v, p);
                if b.shm_size_bytes.is_some_and(|s| s > i32::MAX as u64) {
                    self.error(
                        v.pos,
                        format!("{p}: the engine's builder takes at most {} bytes", i32::MAX),
                        "write a size below 2g",
                    );
                }
            }
            "cache_from" => b.cache_from = self.str_or_list(v, p),
            "no_cache" => b.no_cache = self.bool(v, p).unwrap_or(false),
            "pull" => b.pull = self.bool(v, p).unwrap_or(false),
            _ => return false,
        }
        true
    }

    pub(super) fn env_files(&mut self, n: &Node, path: &str) -> BTreeMap<String, String> {
        let mut files: Vec<(String, bool, Pos)> = Vec::new();
        match &n.kind {
            Kind::Scalar(s) => files.push((s.text.clone(), true, n.pos)),
            Kind::Seq(items) => {
                for (i, it) in items.iter().enumerate() {
                    let ip = format!("{path}[{i}]");
                    match &it.kind {
                        Kind::Map(entries) => {
                            let mut file = None;
                            let mut required = true;
                            for (k, v, p) in keyed(entries, &ip) {
                                match k.name.as_str() {
                                    "path" => file = self.string(v, &p).map(|f| (f, v.pos)),
                                    "required" => required = self.bool(v, &p).unwrap_or(true),
                                    _ => self.other_key(k, &ip, &ENV_FILE),
                                }
                            }
                            match file {
                                Some((f, pos)) => files.push((f, required, pos)),
                                None => self.error(
                                    it.pos,
                                    format!("{ip}: missing path"),
                                    "write `- path: ./file.env`",
                                ),
                            }
                        }
                        _ => {
                            if let Some(f) = self.string(it, &ip) {
                                files.push((f, true, it.pos));
                            }
                        }
                    }
                }
            }
            Kind::Map(_) => self.type_error(
                n,
                path,
                "a file name or a list",
                "write `env_file: ./app.env`",
            ),
        }
        let mut out = BTreeMap::new();
        for (f, required, pos) in files {
            let full = absolutize(&self.dir(pos), &f);
            if !self.inside(pos, path, "env_file", &full) {
                continue;
            }
            let text = match std::fs::read_to_string(&full) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
                Err(e) => {
                    let hint = "env_file paths are relative to the stack file; create the file or mark it `required: false`";
                    self.unreadable(pos, path, &full, &e, hint);
                    continue;
                }
            };
            match parse_dotenv(&text) {
                Ok(entries) => {
                    for (k, v) in entries {
                        let v = v.or_else(|| self.vars.get(&k).map(str::to_string));
                        if let Some(v) = v {
                            out.insert(k, v);
                        }
                    }
                }
                Err(e) => self.dotenv_error(&full, e),
            }
        }
        out
    }

    pub(super) fn expose(&mut self, n: &Node, path: &str) -> Vec<String> {
        let hint = "write a list such as [\"3000\"]";
        self.list(n, path, hint, |cx, it, ip, out| {
            let Some(s) = cx.string(it, ip) else {
                return;
            };
            match units::parse_expose(s.trim()) {
                Ok(v) => out.extend(v),
                Err(e) => cx.error(
                    it.pos,
                    format!("{ip}: {e}"),
                    "write a port such as 3000 or 3000/udp",
                ),
            }
        })
    }

    pub(super) fn healthcheck(&mut self, n: &Node, path: &str) -> Option<HealthCheck> {
        let entries = self.map(n, path)?;
        let mut test = None;
        let mut hc = HealthCheck {
            test: Vec::new(),
            interval_ms: HealthCheck::DEFAULT_INTERVAL_MS,
            timeout_ms: HealthCheck::DEFAULT_TIMEOUT_MS,
            retries: HealthCheck::DEFAULT_RETRIES,
            start_period_ms: 0,
            start_interval_ms: None,
        };
        let mut disabled = false;
        for (k, v, p) in fields(entries, path) {
            match k.name.as_str() {
                "test" => test = Some((v, p)),
                "interval" => hc.interval_ms = self.duration(v, &p).unwrap_or(hc.interval_ms),
                "timeout" => hc.timeout_ms = self.duration(v, &p).unwrap_or(hc.timeout_ms),
                "start_period" => hc.start_period_ms = self.duration(v, &p).unwrap_or(0),
                "start_interval" => hc.start_interval_ms = self.duration(v, &p),
                "retries" => hc.retries = self.u32(v, &p).unwrap_or(hc.retries),
                "disable" => disabled = self.bool(v, &p).unwrap_or(false),
                _ => self.other_key(k, path, &HEALTH),
            }
        }
        let hint = "write [\"CMD\", \"prog\", \"arg\"], [\"CMD-SHELL\", \"command line\"] or a command string";
        let Some((tn, tp)) = test else {
            if !disabled {
                self.error(
                    n.pos,
                    format!("{path}: missing test"),
                    "add `test: [\"CMD\", ...]` or `disable: true`",
                );
            }
            return None;
        };
        match &tn.kind {
            Kind::Scalar(s) => hc.test = vec!["CMD-SHELL".into(), s.text.clone()],
            _ => {
                let list = self.str_list(tn, &tp)?;
                match list.first().map(String::as_str) {
                    Some("NONE") => return None,
                    Some("CMD") | Some("CMD-SHELL") if list.len() > 1 => hc.test = list,
                    _ => {
                        self.error(tn.pos, format!("{tp}: the test must start with CMD, CMD-SHELL or NONE and have a command"), hint);
                        return None;
                    }
                }
            }
        }
        if disabled { None } else { Some(hc) }
    }

    pub(super) fn restart(&mut self, n: &Node, path: &str) -> Option<RestartPolicy> {
        let s = self.string(n, path)?;
        let mut rp = RestartPolicy::default();
        match s.as_str() {
            "no" => rp.condition = RestartCondition::None,
            "always" | "unless-stopped" => rp.condition = RestartCondition::Any,
            "on-failure" => rp.condition = RestartCondition::OnFailure,
            other => {
                let attempts = other
                    .strip_prefix("on-failure:")
                    .and_then(|n| n.parse::<u32>().ok());
                match attempts {
                    Some(a) => {
                        rp.condition = RestartCondition::OnFailure;
                        rp.max_attempts = a;
                    }
                    None => {
                        self.error(
                            n.pos,
                            format!("{path}: unknown restart policy {other:?}"),
                            "use \"no\", always, on-failure, on-failure:N or unless-stopped",
                        );
                        return None;
                    }
                }
            }
        }
        Some(rp)
    }

    pub(super) fn depends_on(
        &mut self,
        service: &str,
        n: &Node,
        path: &str,
    ) -> BTreeMap<String, DependsOn> {
        let mut out = BTreeMap::new();
        match &n.kind {
            Kind::Seq(items) => {
                for (i, it) in items.iter().enumerate() {
                    if let Some(dep) = self.string(it, &format!("{path}[{i}]")) {
                        self.edges.push((service.to_string(), dep.clone(), it.pos));
                        out.insert(dep, DependsOn::default());
                    }
                }
            }
            Kind::Map(entries) => {
                for (k, v, p) in keyed(entries, path) {
                    let mut d = DependsOn::default();
                    if let Some(fields) = self.map(v, &p) {
                        for (fk, fv, fp) in keyed(fields, &p) {
                            match fk.name.as_str() {
                                "condition" => {
                                    d.condition = self
                                        .one_of(fv, &fp, "unknown condition", DEPENDS_CONDITIONS)
                                        .unwrap_or(d.condition);
                                }
                                "required" => {
                                    if self.bool(fv, &fp) == Some(false) {
                                        self.optional_deps
                                            .insert((service.to_string(), k.name.clone()));
                                    }
                                }
                                "restart" => {
                                    self.bool(fv, &fp);
                                }
                                _ => self.other_key(fk, &p, &DEPENDS),
                            }
                        }
                    }
                    self.edges
                        .push((service.to_string(), k.name.clone(), k.pos));
                    out.insert(k.name.clone(), d);
                }
            }
            _ => self.type_error(
                n,
                path,
                "a list or a mapping",
                "write a list of service names",
            ),
        }
        out
    }

    pub(super) fn check_depends(&mut self, spec: &mut StackSpec) {
        let mut edges = std::mem::take(&mut self.edges);
        // A dependency marked `required: false` on a service that is not in the stack is dropped.
        edges.retain(|(from, to, _)| {
            let drop = !spec.services.contains_key(to)
                && self.optional_deps.contains(&(from.clone(), to.clone()));
            if drop && let Some(s) = spec.services.get_mut(from) {
                s.depends_on.remove(to);
            }
            !drop
        });
        for (from, to, pos) in &edges {
            if !spec.services.contains_key(to) {
                let hint = match suggest(
                    to,
                    &spec.services.keys().map(String::as_str).collect::<Vec<_>>(),
                ) {
                    Some(s) => format!("did you mean {s:?}?"),
                    None => "depend only on services defined in this stack".to_string(),
                };
                self.error(
                    *pos,
                    format!("services.{from}.depends_on: unknown service {to:?}"),
                    hint,
                );
            }
        }
        for cycle in crate::validate::find_cycles(&spec.services) {
            // Locate at the entry that closes the cycle.
            let n = cycle.len();
            let (from, to) = (&cycle[n - 2], &cycle[n - 1]);
            let pos = edges
                .iter()
                .find(|(f, t, _)| f == from && t == to)
                .map_or(Pos::START, |e| e.2);
            self.error(
                pos,
                format!("dependency cycle: {}", cycle.join(" -> ")),
                "remove one of the depends_on entries in the cycle",
            );
        }
    }

    /// x-wharf affinity and anti_affinity name services of this stack; located at the list item.
    pub(super) fn check_affinity(&mut self, services: &Node, names: &[&str]) {
        let Kind::Map(entries) = &services.kind else {
            return;
        };
        for (k, v) in entries {
            let Kind::Map(fields) = &v.kind else { continue };
            for (_, fv) in fields.iter().filter(|(fk, _)| fk.name == "x-wharf") {
                let Kind::Map(ext) = &fv.kind else { continue };
                for (ek, ev) in ext {
                    if ek.name != "affinity" && ek.name != "anti_affinity" {
                        continue;
                    }
                    let Kind::Seq(items) = &ev.kind else { continue };
                    for it in items {
                        let Kind::Scalar(name) = &it.kind else {
                            continue;
                        };
                        if names.contains(&name.text.as_str()) {
                            continue;
                        }
                        let hint = match suggest(&name.text, names) {
                            Some(s) => format!("did you mean {s:?}?"),
                            None => "name services defined in this stack".to_string(),
                        };
                        self.error(
                            it.pos,
                            format!(
                                "services.{}.x-wharf.{}: unknown service {:?}",
                                k.name, ek.name, name.text
                            ),
                            hint,
                        );
                    }
                }
            }
        }
    }
}
