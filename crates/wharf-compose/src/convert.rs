//! Walks the located YAML tree and produces the normalised [`StackSpec`], collecting located
//! errors (with hints) and warnings for the Compose keys Wharf ignores.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use wharf_types::{
    BuildSpec, DependsCondition, DependsOn, DeployMode, DeploySpec, DriverKind, FailureAction,
    HealthCheck, IngressBalance, IngressProtocol, IngressRoute, IngressTls, MountKind, NetworkSpec,
    Placement, PortSpec, ResourceAmounts, RestartCondition, RestartPolicy, Secret, ServiceSpec,
    StackSpec, UpdateConfig, UpdateOrder, VolumeMount, VolumeSpec, WharfExt,
};

use crate::context::{absolutize, hash_dir};
use crate::interp::{Vars, interpolate, parse_dotenv};
use crate::units;
use crate::yaml::{self, Key, Kind, Node, Pos, plain_bool};
use crate::{ComposeError, ComposeErrors, LoadOptions, Loaded, Location, Warning};

const TOP_KEYS: &[&str] = &["version", "name", "services", "volumes", "networks"];
const TOP_UNSUPPORTED: &[&str] = &["configs", "secrets", "include", "models"];

const SERVICE_KEYS: &[&str] = &[
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
];
const SERVICE_UNSUPPORTED: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "configs",
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
    "extends",
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
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "provider",
    "pull_policy",
    "read_only",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "use_api_socket",
    "userns_mode",
    "uts",
    "volumes_from",
];
const BUILD_KEYS: &[&str] = &["context", "dockerfile", "args"];
const BUILD_UNSUPPORTED: &[&str] = &[
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
const HEALTH_KEYS: &[&str] = &[
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "disable",
];
const HEALTH_UNSUPPORTED: &[&str] = &["start_interval"];
const PORT_KEYS: &[&str] = &["target", "published", "host_ip", "protocol", "mode"];
const PORT_UNSUPPORTED: &[&str] = &["name", "app_protocol"];
const MOUNT_KEYS: &[&str] = &["type", "source", "target", "read_only"];
const MOUNT_UNSUPPORTED: &[&str] = &["bind", "volume", "tmpfs", "consistency", "image"];
const DEPENDS_KEYS: &[&str] = &["condition", "required", "restart"];
const ENV_FILE_KEYS: &[&str] = &["path", "required"];
const ENV_FILE_UNSUPPORTED: &[&str] = &["format"];
const DEPLOY_KEYS: &[&str] = &[
    "mode",
    "replicas",
    "resources",
    "restart_policy",
    "update_config",
    "rollback_config",
    "placement",
    "labels",
];
const DEPLOY_UNSUPPORTED: &[&str] = &["endpoint_mode"];
const RESOURCES_KEYS: &[&str] = &["limits", "reservations"];
const AMOUNT_KEYS: &[&str] = &["cpus", "memory"];
const AMOUNT_UNSUPPORTED: &[&str] = &["pids", "devices", "generic_resources"];
const RESTART_POLICY_KEYS: &[&str] = &["condition", "delay", "max_attempts", "window"];
const UPDATE_KEYS: &[&str] = &[
    "parallelism",
    "delay",
    "order",
    "failure_action",
    "monitor",
    "max_failure_ratio",
];
const PLACEMENT_KEYS: &[&str] = &["constraints", "preferences", "max_replicas_per_node"];
const VOLUME_KEYS: &[&str] = &["driver", "driver_opts", "labels", "external", "name"];
const NETWORK_KEYS: &[&str] = &["driver", "external"];
const NETWORK_UNSUPPORTED: &[&str] = &[
    "name",
    "driver_opts",
    "attachable",
    "enable_ipv4",
    "enable_ipv6",
    "ipam",
    "internal",
    "labels",
];
const XWHARF_KEYS: &[&str] = &[
    "driver",
    "affinity",
    "anti_affinity",
    "move_with_volumes",
    "auto_rebalance",
    "at_most_once",
    "ingress",
    "drain_grace",
];

const INGRESS_KEYS: &[&str] = &[
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
const TLS_KEYS: &[&str] = &["certificate", "key"];
/// Largest certificate or key file read (a chain of a few certificates is a few KB).
const MAX_PEM_BYTES: u64 = 1 << 20;

type Entries = [(Key, Node)];

struct Cx<'a> {
    file: &'a str,
    base: PathBuf,
    vars: Vars<'a>,
    errors: Vec<ComposeError>,
    warnings: Vec<Warning>,
    /// Named volumes declared at top level.
    volumes: BTreeSet<String>,
    /// `depends_on` edges: (service, dependency, location of the entry).
    edges: Vec<(String, String, Pos)>,
    /// `depends_on` entries with `required: false`: dropped when the service does not exist.
    optional_deps: BTreeSet<(String, String)>,
}

pub fn load(
    src: &str,
    file: &str,
    base_dir: &Path,
    opts: &LoadOptions,
) -> Result<Loaded, ComposeErrors> {
    let base = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
    let mut cx = Cx {
        file,
        base,
        vars: Vars {
            env: &opts.env,
            dotenv: BTreeMap::new(),
        },
        errors: Vec::new(),
        warnings: Vec::new(),
        volumes: BTreeSet::new(),
        edges: Vec::new(),
        optional_deps: BTreeSet::new(),
    };
    cx.read_dotenv();

    let (root, yaml_errors) = match yaml::parse(src) {
        Ok(x) => x,
        Err(e) => {
            cx.error(e.pos, e.message, e.hint);
            return Err(ComposeErrors(cx.errors));
        }
    };
    for e in yaml_errors {
        cx.error(e.pos, e.message, e.hint);
    }
    let Some(mut root) = root.filter(|r| !r.is_null()) else {
        cx.error(
            Pos { line: 1, col: 1 },
            "the stack file is empty".into(),
            "add a services: section with at least one service",
        );
        return Err(ComposeErrors(cx.errors));
    };
    let mut unset = BTreeSet::new();
    cx.interpolate(&mut root, &mut unset);

    let spec = cx.stack(&root, opts, file);
    // Report in file order (stable: same-position problems keep their order).
    cx.warnings.sort_by(|a, b| a.location.cmp(&b.location));
    cx.errors.sort_by(|a, b| a.location.cmp(&b.location));
    if cx.errors.is_empty() {
        Ok(Loaded {
            spec,
            warnings: cx.warnings,
        })
    } else {
        Err(ComposeErrors(cx.errors))
    }
}

/// The node at `path` (mapping keys) under `n`.
fn find<'n>(n: &'n Node, path: &[&str]) -> Option<&'n Node> {
    path.iter().try_fold(n, |n, key| match &n.kind {
        Kind::Map(entries) => entries.iter().find(|(k, _)| k.name == *key).map(|(_, v)| v),
        _ => None,
    })
}

/// The closest known key, for a did-you-mean hint.
fn suggest<'k>(name: &str, known: &[&'k str]) -> Option<&'k str> {
    let lower = name.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(&lower, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Cx<'_> {
    fn loc(&self, pos: Pos) -> Location {
        Location {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.col,
        }
    }

    fn error(&mut self, pos: Pos, message: String, hint: impl Into<String>) {
        let location = Some(self.loc(pos));
        self.errors.push(ComposeError {
            location,
            message,
            hint: Some(hint.into()),
        });
    }

    fn warn(&mut self, pos: Pos, message: String) {
        let location = self.loc(pos);
        self.warnings.push(Warning { location, message });
    }

    fn read_dotenv(&mut self) {
        let path = self.base.join(".env");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        match parse_dotenv(&text) {
            Ok(entries) => {
                for (k, v) in entries {
                    if let Some(v) = v {
                        self.vars.dotenv.insert(k, v);
                    }
                }
            }
            Err(e) => self.errors.push(ComposeError {
                location: Some(Location {
                    file: path.display().to_string(),
                    line: e.line,
                    column: 1,
                }),
                message: e.message,
                hint: Some("write one KEY=value per line".into()),
            }),
        }
    }

    fn interpolate(&mut self, node: &mut Node, unset: &mut BTreeSet<String>) {
        match &mut node.kind {
            Kind::Map(entries) => {
                for (_, v) in entries.iter_mut() {
                    self.interpolate(v, unset);
                }
            }
            Kind::Seq(items) => {
                for v in items.iter_mut() {
                    self.interpolate(v, unset);
                }
            }
            Kind::Scalar(s) => {
                if !s.text.contains('$') {
                    return;
                }
                match interpolate(&s.text, &self.vars) {
                    Ok(r) => {
                        s.text = r.value;
                        for name in r.unset {
                            if unset.insert(name.clone()) {
                                self.warn(
                                    node.pos,
                                    format!(
                                        "variable {name} is not set, defaulting to an empty string"
                                    ),
                                );
                            }
                        }
                    }
                    Err(e) => self.error(node.pos, e.message, e.hint),
                }
            }
        }
    }

    /// Handle a key that is not one this mapping supports: ignore `x-*`, warn about Compose keys
    /// Wharf does not support, reject anything else with a did-you-mean hint.
    fn other_key(&mut self, key: &Key, path: &str, known: &[&str], unsupported: &[&str]) {
        if key.name.starts_with("x-") {
            return;
        }
        let full = join(path, &key.name);
        if unsupported.contains(&key.name.as_str()) {
            self.warn(
                key.pos,
                format!("{full} is not supported by Wharf yet and is ignored"),
            );
            return;
        }
        let all: Vec<&str> = known.iter().chain(unsupported).copied().collect();
        let hint = match suggest(&key.name, &all) {
            Some(s) => format!("did you mean {s:?}?"),
            None => format!("the keys allowed here are: {}", known.join(", ")),
        };
        let place = if path.is_empty() {
            "the top level"
        } else {
            path
        };
        self.error(
            key.pos,
            format!("unknown key {:?} in {place}", key.name),
            hint,
        );
    }

    fn type_error(&mut self, n: &Node, path: &str, expected: &str, hint: &str) {
        self.error(
            n.pos,
            format!("{path}: expected {expected}, found {}", n.describe()),
            hint,
        );
    }

    fn map<'n>(&mut self, n: &'n Node, path: &str) -> Option<&'n Entries> {
        match &n.kind {
            Kind::Map(e) => Some(e),
            _ if n.is_null() => Some(&[]),
            _ => {
                self.type_error(
                    n,
                    path,
                    "a mapping",
                    "write it as indented `key: value` lines",
                );
                None
            }
        }
    }

    fn string(&mut self, n: &Node, path: &str) -> Option<String> {
        match &n.kind {
            Kind::Scalar(s) if !n.is_null() => Some(s.text.clone()),
            _ => {
                self.type_error(
                    n,
                    path,
                    "a string",
                    "write a single value, quoted if needed",
                );
                None
            }
        }
    }

    fn uint(&mut self, n: &Node, path: &str) -> Option<u64> {
        if let Kind::Scalar(s) = &n.kind
            && !n.is_null()
            && let Ok(v) = s.text.trim().parse::<u64>()
        {
            return Some(v);
        }
        self.type_error(n, path, "an integer", "write a whole number, e.g. 3");
        None
    }

    fn u32(&mut self, n: &Node, path: &str) -> Option<u32> {
        let v = self.uint(n, path)?;
        match u32::try_from(v) {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(
                    n.pos,
                    format!("{path}: {v} is too large"),
                    "use a smaller number",
                );
                None
            }
        }
    }

    fn bool(&mut self, n: &Node, path: &str) -> Option<bool> {
        if let Kind::Scalar(s) = &n.kind
            && let Some(b) = plain_bool(&s.text)
        {
            return Some(b);
        }
        self.type_error(n, path, "a boolean", "write true or false");
        None
    }

    fn duration(&mut self, n: &Node, path: &str) -> Option<u64> {
        let s = self.string(n, path)?;
        match units::parse_duration_ms(&s) {
            Ok(v) => Some(v),
            Err(e) => {
                self.error(
                    n.pos,
                    format!("{path}: {e}"),
                    "write a duration such as 10s, 1m30s, 500ms or 2h",
                );
                None
            }
        }
    }

    fn str_list(&mut self, n: &Node, path: &str) -> Option<Vec<String>> {
        match &n.kind {
            Kind::Seq(items) => {
                let mut out = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    if let Some(s) = self.string(it, &format!("{path}[{i}]")) {
                        out.push(s);
                    }
                }
                Some(out)
            }
            _ => {
                self.type_error(
                    n,
                    path,
                    "a list",
                    "write a YAML list: [a, b] or `- a` lines",
                );
                None
            }
        }
    }

    /// A string (split shell-like) or a list of strings.
    fn command(&mut self, n: &Node, path: &str) -> Option<Vec<String>> {
        match &n.kind {
            Kind::Seq(_) => self.str_list(n, path),
            Kind::Scalar(s) => match shell_split(&s.text) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.error(
                        n.pos,
                        format!("{path}: {e}"),
                        "balance the quotes, or write the command as a list",
                    );
                    None
                }
            },
            Kind::Map(_) => {
                self.type_error(
                    n,
                    path,
                    "a string or a list",
                    "write a command line or a list",
                );
                None
            }
        }
    }

    /// A `KEY: value` mapping or a `KEY=value` list; `None` values are `KEY` without a value.
    fn key_values(&mut self, n: &Node, path: &str) -> Vec<(String, Option<String>, Pos)> {
        let mut out = Vec::new();
        match &n.kind {
            Kind::Map(entries) => {
                for (k, v) in entries {
                    let val = match &v.kind {
                        _ if v.is_null() => None,
                        Kind::Scalar(s) => Some(s.text.clone()),
                        _ => {
                            self.type_error(
                                v,
                                &join(path, &k.name),
                                "a string, number, boolean or null",
                                "write a single value, quoted if needed",
                            );
                            continue;
                        }
                    };
                    out.push((k.name.clone(), val, k.pos));
                }
            }
            Kind::Seq(items) => {
                for (i, it) in items.iter().enumerate() {
                    let Some(s) = self.string(it, &format!("{path}[{i}]")) else {
                        continue;
                    };
                    match s.split_once('=') {
                        Some((k, v)) => out.push((k.to_string(), Some(v.to_string()), it.pos)),
                        None => out.push((s, None, it.pos)),
                    }
                }
            }
            _ if n.is_null() => {}
            _ => self.type_error(
                n,
                path,
                "a mapping or a list",
                "write `KEY: value` lines or a list of KEY=value",
            ),
        }
        for (k, _, pos) in &out {
            if k.is_empty() || k.chars().any(char::is_whitespace) {
                let msg = format!("{path}: invalid name {k:?}");
                self.error(*pos, msg, "names cannot be empty or contain spaces");
            }
        }
        out
    }

    /// Labels and similar string maps: `KEY` alone means an empty value.
    fn labels(&mut self, n: &Node, path: &str) -> BTreeMap<String, String> {
        self.key_values(n, path)
            .into_iter()
            .map(|(k, v, _)| (k, v.unwrap_or_default()))
            .collect()
    }

    /// Environment-like maps: `KEY` alone (or a null value) takes the value from the caller's
    /// environment and is omitted when unset.
    fn env_values(&mut self, n: &Node, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v, _) in self.key_values(n, path) {
            let v = v.or_else(|| self.vars.get(&k).map(str::to_string));
            if let Some(v) = v {
                out.insert(k, v);
            }
        }
        out
    }

    // ---------------------------------------------------------------- top level

    fn stack(&mut self, root: &Node, opts: &LoadOptions, file: &str) -> StackSpec {
        let mut spec = StackSpec::default();
        let Some(entries) = self.map(root, "the top level") else {
            return spec;
        };
        let mut name = None;
        let mut services = None;
        for (k, v) in entries {
            match k.name.as_str() {
                "version" => {}
                "name" => {
                    if let Some(n) = self.string(v, "name") {
                        name = Some((n, v.pos));
                    }
                }
                "services" => services = Some((k, v)),
                "volumes" => spec.volumes = self.top_volumes(v),
                "networks" => spec.networks = self.top_networks(v),
                _ => self.other_key(k, "", TOP_KEYS, TOP_UNSUPPORTED),
            }
        }
        spec.name = self.stack_name(opts, name, file);
        match services {
            Some((_, v)) => spec.services = self.services(v),
            None => self.error(
                root.pos,
                "the stack file has no services section".into(),
                "add a services: mapping with at least one service",
            ),
        }
        self.check_depends(&mut spec);
        spec
    }

    fn stack_name(
        &mut self,
        opts: &LoadOptions,
        from_file: Option<(String, Pos)>,
        file: &str,
    ) -> String {
        if let Some(n) = &opts.stack_name {
            if let Err(e) = crate::validate_stack_name(n) {
                self.errors.push(ComposeError {
                    location: None,
                    message: e,
                    hint: Some("pass a name such as my-app".into()),
                });
            }
            return n.clone();
        }
        if let Some((n, pos)) = from_file {
            if let Err(e) = crate::validate_stack_name(&n) {
                self.error(pos, format!("name: {e}"), "use a name such as my-app");
            }
            return n;
        }
        let dir = self
            .base
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let n = crate::sanitize_stack_name(&dir);
        if crate::validate_stack_name(&n).is_err() {
            self.errors.push(ComposeError {
                location: None,
                message: format!(
                    "cannot derive a stack name for {file} from the directory name {dir:?}"
                ),
                hint: Some("set name: at the top of the file, or pass a stack name".into()),
            });
        }
        n
    }

    fn top_volumes(&mut self, n: &Node) -> BTreeMap<String, VolumeSpec> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.map(n, "volumes") else {
            return out;
        };
        for (k, v) in entries {
            let path = join("volumes", &k.name);
            if !valid_volume_name(&k.name) {
                self.error(
                    k.pos,
                    format!("volumes: invalid volume name {:?}", k.name),
                    "use letters, digits, '_', '.' or '-', starting with a letter or digit",
                );
            }
            let mut spec = VolumeSpec::default();
            if let Some(fields) = self.map(v, &path) {
                for (fk, fv) in fields {
                    let fpath = join(&path, &fk.name);
                    if fv.is_null() {
                        continue;
                    }
                    match fk.name.as_str() {
                        "driver" => spec.driver = self.string(fv, &fpath),
                        "driver_opts" => spec.driver_opts = self.labels(fv, &fpath),
                        "labels" => spec.labels = self.labels(fv, &fpath),
                        "external" => match &fv.kind {
                            Kind::Map(_) => spec.external = true,
                            _ => spec.external = self.bool(fv, &fpath).unwrap_or(false),
                        },
                        "name" => {
                            if let Some(s) = self.string(fv, &fpath)
                                && s != k.name
                            {
                                self.warn(
                                    fk.pos,
                                    format!(
                                        "{fpath} is not supported by Wharf yet and is ignored: the volume is named {:?}",
                                        k.name
                                    ),
                                );
                            }
                        }
                        _ => self.other_key(fk, &path, VOLUME_KEYS, &[]),
                    }
                }
            }
            self.volumes.insert(k.name.clone());
            out.insert(k.name.clone(), spec);
        }
        out
    }

    fn top_networks(&mut self, n: &Node) -> BTreeMap<String, NetworkSpec> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.map(n, "networks") else {
            return out;
        };
        for (k, v) in entries {
            let path = join("networks", &k.name);
            let mut spec = NetworkSpec::default();
            if let Some(fields) = self.map(v, &path) {
                for (fk, fv) in fields {
                    let fpath = join(&path, &fk.name);
                    if fv.is_null() {
                        continue;
                    }
                    match fk.name.as_str() {
                        "driver" => spec.driver = self.string(fv, &fpath),
                        "external" => match &fv.kind {
                            Kind::Map(_) => spec.external = true,
                            _ => spec.external = self.bool(fv, &fpath).unwrap_or(false),
                        },
                        _ => self.other_key(fk, &path, NETWORK_KEYS, NETWORK_UNSUPPORTED),
                    }
                }
            }
            out.insert(k.name.clone(), spec);
        }
        out
    }

    fn services(&mut self, n: &Node) -> BTreeMap<String, ServiceSpec> {
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

    fn service(&mut self, key: &Key, n: &Node) -> ServiceSpec {
        let name = key.name.as_str();
        let path = join("services", name);
        let mut s = ServiceSpec::default();
        let Some(entries) = self.map(n, &path) else {
            return s;
        };
        let mut restart_from_deploy = None;
        for (k, v) in entries {
            let p = join(&path, &k.name);
            if v.is_null() {
                if !SERVICE_KEYS.contains(&k.name.as_str()) && k.name != "x-wharf" {
                    self.other_key(k, &path, SERVICE_KEYS, SERVICE_UNSUPPORTED);
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
                _ => self.other_key(k, &path, SERVICE_KEYS, SERVICE_UNSUPPORTED),
            }
        }
        if let Some(rp) = restart_from_deploy {
            s.restart = rp;
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

    fn x_wharf(&mut self, n: &Node, path: &str, ext: &mut WharfExt) -> Option<DriverKind> {
        let entries = self.map(n, path)?;
        let mut driver = None;
        for (k, v) in entries {
            let p = join(path, &k.name);
            match k.name.as_str() {
                "driver" => {
                    let s = self.string(v, &p)?;
                    driver = match s.as_str() {
                        "docker" => Some(DriverKind::Docker),
                        "process" => Some(DriverKind::Process),
                        other => {
                            self.error(
                                v.pos,
                                format!("{p}: unknown driver {other:?}"),
                                "use docker or process",
                            );
                            None
                        }
                    };
                }
                "affinity" => ext.affinity = self.str_list(v, &p).unwrap_or_default(),
                "anti_affinity" => ext.anti_affinity = self.str_list(v, &p).unwrap_or_default(),
                "move_with_volumes" => ext.move_with_volumes = self.bool(v, &p).unwrap_or(false),
                "auto_rebalance" => ext.auto_rebalance = self.bool(v, &p).unwrap_or(false),
                "at_most_once" => ext.at_most_once = self.bool(v, &p).unwrap_or(false),
                "ingress" => ext.ingress = self.ingress(v, &p),
                "drain_grace" => ext.drain_grace_ms = self.duration(v, &p),
                _ => self.other_key(k, path, XWHARF_KEYS, &[]),
            }
        }
        driver
    }

    /// `x-wharf: ingress:`, a list of routes; each problem located at its value.
    fn ingress(&mut self, n: &Node, path: &str) -> Vec<IngressRoute> {
        let mut out = Vec::new();
        let Kind::Seq(items) = &n.kind else {
            self.type_error(
                n,
                path,
                "a list of routes",
                "write `- {port: 8080, listen: 8000}` lines",
            );
            return out;
        };
        let mut all_ok = true;
        for (i, it) in items.iter().enumerate() {
            let ip = format!("{path}[{i}]");
            let Kind::Map(entries) = &it.kind else {
                all_ok = false;
                self.type_error(
                    it,
                    &ip,
                    "a mapping",
                    "write a route such as {port: 8080, listen: 8000}",
                );
                continue;
            };
            match self.ingress_route(entries, it.pos, &ip) {
                Some(r) => out.push(r),
                None => all_ok = false,
            }
        }
        // The routes taken together (indices hold only when every route was read).
        if all_ok {
            let ext = WharfExt {
                ingress: out,
                ..WharfExt::default()
            };
            for (i, field, message, hint) in crate::validate::ingress_service_problems(&ext) {
                let pos = find(&items[i], &[field]).map_or(items[i].pos, |n| n.pos);
                self.error(pos, format!("{path}[{i}].{field}: {message}"), hint);
            }
            out = ext.ingress;
        }
        out
    }

    fn ingress_route(&mut self, entries: &Entries, pos: Pos, path: &str) -> Option<IngressRoute> {
        let mut r = IngressRoute {
            port: 0,
            listen: 0,
            listen_address: None,
            protocol: IngressProtocol::default(),
            hosts: Vec::new(),
            paths: Vec::new(),
            balance: IngressBalance::default(),
            sticky: None,
            timeout_ms: None,
            redirect_https: false,
            tls: None,
        };
        let (mut port, mut listen) = (None, None);
        let mut at: BTreeMap<&str, Pos> = BTreeMap::new();
        let mut ok = true;
        for (k, v) in entries {
            let p = join(path, &k.name);
            if v.is_null() {
                continue;
            }
            at.insert(k.name.as_str(), v.pos);
            match k.name.as_str() {
                "port" | "listen" => {
                    let Some(s) = self.string(v, &p) else {
                        ok = false;
                        continue;
                    };
                    match units::parse_port_number(s.trim(), &k.name) {
                        Ok(n) if k.name == "port" => port = Some(n),
                        Ok(n) => listen = Some(n),
                        Err(e) => {
                            ok = false;
                            self.error(
                                v.pos,
                                format!("{p}: {e}"),
                                "use a port number between 1 and 65535",
                            );
                        }
                    }
                }
                "listen_address" => r.listen_address = self.string(v, &p),
                "protocol" => {
                    let s = self.string(v, &p).unwrap_or_default();
                    match s.as_str() {
                        "http" => r.protocol = IngressProtocol::Http,
                        "tcp" => r.protocol = IngressProtocol::Tcp,
                        other => {
                            ok = false;
                            let hint = match suggest(other, &["http", "tcp"]) {
                                Some(s) => format!("did you mean {s:?}?"),
                                None => "use http or tcp".to_string(),
                            };
                            self.error(v.pos, format!("{p}: unknown protocol {other:?}"), hint);
                        }
                    }
                }
                "hosts" => r.hosts = self.str_list(v, &p).unwrap_or_default(),
                "paths" => r.paths = self.str_list(v, &p).unwrap_or_default(),
                "balance" => {
                    let s = self.string(v, &p).unwrap_or_default();
                    match s.as_str() {
                        "round_robin" => r.balance = IngressBalance::RoundRobin,
                        "least_requests" => r.balance = IngressBalance::LeastRequests,
                        other => {
                            ok = false;
                            let known = ["round_robin", "least_requests"];
                            let hint = match suggest(other, &known) {
                                Some(s) => format!("did you mean {s:?}?"),
                                None => "use round_robin or least_requests".to_string(),
                            };
                            self.error(v.pos, format!("{p}: unknown balance {other:?}"), hint);
                        }
                    }
                }
                "sticky" => r.sticky = self.string(v, &p),
                "timeout" => r.timeout_ms = self.duration(v, &p),
                "redirect_https" => r.redirect_https = self.bool(v, &p).unwrap_or(false),
                "tls" => match self.ingress_tls(v, &p) {
                    Some(tls) => r.tls = Some(tls),
                    None => ok = false,
                },
                _ => {
                    ok = false;
                    self.other_key(k, path, INGRESS_KEYS, &[]);
                }
            }
        }
        for (what, found) in [("port", port), ("listen", listen)] {
            if found.is_none() && !at.contains_key(what) {
                ok = false;
                let hint = if what == "port" {
                    "add `port: <container port>`, the port the service listens on"
                } else {
                    "add `listen: <port>`, the port the ingress of every node listens on"
                };
                self.error(pos, format!("{path}: missing {what}"), hint);
            }
        }
        r.port = port.unwrap_or(0);
        r.listen = listen.unwrap_or(0);
        for (field, message, hint) in crate::validate::ingress_route_problems(&r) {
            if matches!(field, "port" | "listen") && (port.is_none() || listen.is_none()) {
                continue;
            }
            ok = false;
            let p = at.get(field).copied().unwrap_or(pos);
            self.error(p, format!("{}: {message}", join(path, field)), hint);
        }
        if let (true, Some(tls)) = (ok, &r.tls) {
            let uncovered = crate::tls::uncovered_hosts(&tls.certificate, &r.hosts);
            if !uncovered.is_empty() {
                let p = at.get("tls").copied().unwrap_or(pos);
                self.warn(
                    p,
                    format!(
                        "{}: the certificate is not valid for {}; clients will refuse it for that name",
                        join(path, "tls.certificate"),
                        uncovered.join(", ")
                    ),
                );
            }
        }
        ok.then_some(r)
    }

    /// `tls: {certificate: FILE, key: FILE}`: both files read now (relative to the stack file)
    /// and checked, so that their content travels in the spec.
    fn ingress_tls(&mut self, n: &Node, path: &str) -> Option<IngressTls> {
        let Kind::Map(entries) = &n.kind else {
            self.type_error(
                n,
                path,
                "a mapping",
                "write `tls: {certificate: ./cert.pem, key: ./key.pem}`",
            );
            return None;
        };
        let (mut cert, mut key) = (None, None);
        let mut ok = true;
        for (k, v) in entries {
            let p = join(path, &k.name);
            match k.name.as_str() {
                "certificate" | "key" => {
                    let Some(file) = self.string(v, &p) else {
                        ok = false;
                        continue;
                    };
                    match self.read_pem(&file, v.pos, &p) {
                        Some(text) if k.name == "certificate" => cert = Some((text, v.pos)),
                        Some(text) => key = Some((text, v.pos)),
                        None => ok = false,
                    }
                }
                _ => {
                    ok = false;
                    self.other_key(k, path, TLS_KEYS, &[]);
                }
            }
        }
        for (what, found) in [("certificate", cert.is_some()), ("key", key.is_some())] {
            if !found && !entries.iter().any(|(k, _)| k.name == what) {
                ok = false;
                self.error(
                    n.pos,
                    format!("{path}: missing {what}"),
                    format!("add `{what}: <file>`, a PEM file relative to the stack file"),
                );
            }
        }
        let ((cert, cert_pos), (key, key_pos)) = (cert?, key?);
        if !ok {
            return None;
        }
        if let Err(problem) = crate::tls::check(&cert, &key) {
            let (pos, file) = if problem.field == "certificate" {
                (cert_pos, find(n, &["certificate"]))
            } else {
                (key_pos, find(n, &["key"]))
            };
            let file = file.and_then(|f| match &f.kind {
                Kind::Scalar(s) => Some(s.text.clone()),
                _ => None,
            });
            self.error(
                pos,
                format!(
                    "{}: {} {}",
                    join(path, problem.field),
                    file.unwrap_or_default(),
                    problem.message
                ),
                problem.hint,
            );
            return None;
        }
        Some(IngressTls {
            certificate: cert,
            key: Secret(key),
        })
    }

    /// A certificate or key file (relative to the stack file), as text.
    fn read_pem(&mut self, file: &str, pos: Pos, path: &str) -> Option<String> {
        let full = absolutize(&self.base, file);
        let read = std::fs::metadata(&full).and_then(|m| {
            if m.len() > MAX_PEM_BYTES {
                Err(std::io::Error::other(format!(
                    "it is {} bytes, more than {MAX_PEM_BYTES}",
                    m.len()
                )))
            } else {
                std::fs::read(&full)
            }
        });
        let bytes = match read {
            Ok(b) => b,
            Err(e) => {
                let reason = if e.kind() == std::io::ErrorKind::NotFound {
                    "not found".to_string()
                } else {
                    e.to_string().to_lowercase()
                };
                self.error(
                    pos,
                    format!("{path}: cannot read {}: {reason}", full.display()),
                    "certificate and key paths are relative to the stack file; check the path",
                );
                return None;
            }
        };
        match String::from_utf8(bytes) {
            Ok(text) => Some(text),
            Err(_) => {
                let (message, hint) = if path.ends_with(".key") {
                    ("is not a private key: not PEM text", crate::tls::KEY_HINT)
                } else {
                    ("is not a PEM certificate: not text", crate::tls::CERT_HINT)
                };
                self.error(
                    pos,
                    format!("{path}: {} {message}", full.display()),
                    format!("{hint} (DER files convert with `openssl x509 -inform der`)"),
                );
                None
            }
        }
    }

    /// Routes sharing a listen port must agree (see `validate::ingress_conflicts`); located at the
    /// later route's `listen`.
    fn check_ingress_ports(&mut self, services: &Node, specs: &BTreeMap<String, ServiceSpec>) {
        for c in crate::validate::ingress_conflicts(specs) {
            let pos = find(services, &[&c.service, "x-wharf", "ingress"])
                .and_then(|n| match &n.kind {
                    Kind::Seq(items) => items.get(c.index),
                    _ => None,
                })
                .map(|route| find(route, &[c.field]).unwrap_or(route).pos)
                .unwrap_or(services.pos);
            self.error(
                pos,
                format!(
                    "services.{}.x-wharf.ingress[{}].{}: {}",
                    c.service, c.index, c.field, c.message
                ),
                c.hint,
            );
        }
    }

    /// x-wharf affinity and anti_affinity name services of this stack; located at the list item.
    fn check_affinity(&mut self, services: &Node, names: &[&str]) {
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

    fn build(&mut self, n: &Node, path: &str) -> Option<BuildSpec> {
        let mut context = ".".to_string();
        let mut context_pos = n.pos;
        let mut spec = BuildSpec::default();
        match &n.kind {
            Kind::Scalar(s) => context = s.text.clone(),
            Kind::Map(entries) => {
                for (k, v) in entries {
                    let p = join(path, &k.name);
                    if v.is_null() {
                        continue;
                    }
                    match k.name.as_str() {
                        "context" => {
                            context = self.string(v, &p)?;
                            context_pos = v.pos;
                        }
                        "dockerfile" => spec.dockerfile = self.string(v, &p),
                        "args" => spec.args = self.env_values(v, &p),
                        _ => self.other_key(k, path, BUILD_KEYS, BUILD_UNSUPPORTED),
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
        let dir = absolutize(&self.base, &context);
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

    fn env_files(&mut self, n: &Node, path: &str) -> BTreeMap<String, String> {
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
                            for (k, v) in entries {
                                let p = join(&ip, &k.name);
                                match k.name.as_str() {
                                    "path" => file = self.string(v, &p).map(|f| (f, v.pos)),
                                    "required" => required = self.bool(v, &p).unwrap_or(true),
                                    _ => {
                                        self.other_key(k, &ip, ENV_FILE_KEYS, ENV_FILE_UNSUPPORTED)
                                    }
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
            let full = absolutize(&self.base, &f);
            let text = match std::fs::read_to_string(&full) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => continue,
                Err(e) => {
                    let reason = if e.kind() == std::io::ErrorKind::NotFound {
                        "not found".to_string()
                    } else {
                        e.to_string().to_lowercase()
                    };
                    self.error(
                        pos,
                        format!("{path}: cannot read {}: {reason}", full.display()),
                        "env_file paths are relative to the stack file; create the file or mark it `required: false`",
                    );
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
                Err(e) => self.errors.push(ComposeError {
                    location: Some(Location {
                        file: full.display().to_string(),
                        line: e.line,
                        column: 1,
                    }),
                    message: e.message,
                    hint: Some("write one KEY=value per line".into()),
                }),
            }
        }
        out
    }

    fn ports(&mut self, n: &Node, path: &str) -> Vec<PortSpec> {
        let mut out = Vec::new();
        let Kind::Seq(items) = &n.kind else {
            self.type_error(n, path, "a list", "write a list such as [\"8080:80\"]");
            return out;
        };
        for (i, it) in items.iter().enumerate() {
            let ip = format!("{path}[{i}]");
            match &it.kind {
                Kind::Scalar(s) => match units::parse_port_short(s.text.trim()) {
                    Ok(v) => out.extend(v),
                    Err(e) => self.error(
                        it.pos,
                        format!("{ip}: {e}"),
                        "write [[host_ip:]published:]target[/tcp|udp] with ports 1-65535, e.g. \"8080:80\"",
                    ),
                },
                Kind::Map(entries) => {
                    if let Some(p) = self.port_long(entries, it.pos, &ip) {
                        out.push(p);
                    }
                }
                Kind::Seq(_) => self.type_error(it, &ip, "a port string or a mapping", "write \"8080:80\" or {target: 80, published: 8080}"),
            }
        }
        out
    }

    fn port_long(&mut self, entries: &Entries, pos: Pos, path: &str) -> Option<PortSpec> {
        let mut target = None;
        let mut port = PortSpec {
            target: 0,
            published: None,
            host_ip: None,
            protocol: Default::default(),
        };
        let hint = "use a port number between 1 and 65535";
        for (k, v) in entries {
            let p = join(path, &k.name);
            if v.is_null() {
                continue;
            }
            match k.name.as_str() {
                "target" => {
                    let n = self.uint(v, &p)?;
                    match units::parse_port_number(&n.to_string(), "target") {
                        Ok(t) => target = Some(t),
                        Err(e) => self.error(v.pos, format!("{p}: {e}"), hint),
                    }
                }
                "published" => {
                    let s = self.string(v, &p)?;
                    match units::parse_port_number(s.trim(), "published") {
                        Ok(t) => port.published = Some(t),
                        Err(e) => self.error(v.pos, format!("{p}: {e}"), hint),
                    }
                }
                "host_ip" => {
                    let s = self.string(v, &p)?;
                    if s.parse::<std::net::IpAddr>().is_err() {
                        self.error(
                            v.pos,
                            format!("{p}: {s:?} is not an IP address"),
                            "write an address such as 127.0.0.1",
                        );
                    }
                    port.host_ip = Some(s);
                }
                "protocol" => {
                    let s = self.string(v, &p)?;
                    match units::parse_protocol(&s, &s) {
                        Ok(pr) => port.protocol = pr,
                        Err(_) => self.error(
                            v.pos,
                            format!("{p}: unsupported protocol {s:?}"),
                            "use tcp or udp",
                        ),
                    }
                }
                "mode" => {
                    let s = self.string(v, &p)?;
                    if !matches!(s.as_str(), "host" | "ingress") {
                        self.error(
                            v.pos,
                            format!("{p}: unknown mode {s:?}"),
                            "use host or ingress",
                        );
                    }
                }
                _ => self.other_key(k, path, PORT_KEYS, PORT_UNSUPPORTED),
            }
        }
        match target {
            Some(t) => {
                port.target = t;
                Some(port)
            }
            None => {
                self.error(
                    pos,
                    format!("{path}: missing target"),
                    "add `target: <container port>`",
                );
                None
            }
        }
    }

    fn expose(&mut self, n: &Node, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        let Kind::Seq(items) = &n.kind else {
            self.type_error(n, path, "a list", "write a list such as [\"3000\"]");
            return out;
        };
        for (i, it) in items.iter().enumerate() {
            let ip = format!("{path}[{i}]");
            let Some(s) = self.string(it, &ip) else {
                continue;
            };
            match units::parse_expose(s.trim()) {
                Ok(v) => out.extend(v),
                Err(e) => self.error(
                    it.pos,
                    format!("{ip}: {e}"),
                    "write a port such as 3000 or 3000/udp",
                ),
            }
        }
        out
    }

    fn mounts(&mut self, n: &Node, path: &str) -> Vec<VolumeMount> {
        let mut out = Vec::new();
        let Kind::Seq(items) = &n.kind else {
            self.type_error(
                n,
                path,
                "a list",
                "write a list such as [\"data:/var/lib/data\"]",
            );
            return out;
        };
        for (i, it) in items.iter().enumerate() {
            let ip = format!("{path}[{i}]");
            let m = match &it.kind {
                Kind::Scalar(s) => self.mount_short(&s.text, it.pos, &ip),
                Kind::Map(entries) => self.mount_long(entries, it.pos, &ip),
                Kind::Seq(_) => {
                    self.type_error(
                        it,
                        &ip,
                        "a string or a mapping",
                        "write \"name:/path\" or {type: volume, source: name, target: /path}",
                    );
                    None
                }
            };
            if let Some(m) = m {
                if !m.target.starts_with('/') {
                    self.error(
                        it.pos,
                        format!("{ip}: the target {:?} is not an absolute path", m.target),
                        "the path inside the container must start with /",
                    );
                    continue;
                }
                out.push(m);
            }
        }
        out
    }

    /// Resolve a mount source: host paths become absolute binds, anything else names a volume.
    fn mount_source(
        &mut self,
        src: &str,
        pos: Pos,
        path: &str,
        kind: Option<MountKind>,
    ) -> Option<(MountKind, String)> {
        let is_path = src.starts_with('/') || src.starts_with('.') || src.starts_with('~');
        let kind = kind.unwrap_or(if is_path {
            MountKind::Bind
        } else {
            MountKind::Volume
        });
        match kind {
            MountKind::Bind => {
                let resolved = if let Some(rest) = src.strip_prefix('~') {
                    let Some(home) = self.vars.get("HOME").map(str::to_string) else {
                        self.error(
                            pos,
                            format!("{path}: cannot expand ~ because HOME is not set"),
                            "write an absolute path",
                        );
                        return None;
                    };
                    absolutize(Path::new(&home), rest.trim_start_matches('/'))
                } else {
                    absolutize(&self.base, src)
                };
                Some((MountKind::Bind, resolved.to_string_lossy().into_owned()))
            }
            MountKind::Volume => {
                if src.is_empty() {
                    return Some((MountKind::Volume, String::new()));
                }
                if !self.volumes.contains(src) {
                    self.error(
                        pos,
                        format!("{path}: volume {src:?} is not declared"),
                        format!("declare it under top-level volumes: (`volumes: {{{src}: {{}}}}`), or use ./{src} for a host directory"),
                    );
                    return None;
                }
                Some((MountKind::Volume, src.to_string()))
            }
            MountKind::Tmpfs => Some((MountKind::Tmpfs, String::new())),
        }
    }

    fn mount_short(&mut self, s: &str, pos: Pos, path: &str) -> Option<VolumeMount> {
        let parts: Vec<&str> = s.split(':').collect();
        let hint = "write [source:]target[:ro|rw], e.g. data:/var/lib/data or ./conf:/etc/app:ro";
        let (src, target, mode) = match parts.as_slice() {
            [t] => (None, *t, None),
            [src, t] => (Some(*src), *t, None),
            [src, t, m] => (Some(*src), *t, Some(*m)),
            _ => {
                self.error(pos, format!("{path}: invalid volume {s:?}"), hint);
                return None;
            }
        };
        let mut read_only = false;
        if let Some(m) = mode {
            for opt in m.split(',') {
                match opt {
                    "ro" => read_only = true,
                    "rw" => read_only = false,
                    "z" | "Z" | "nocopy" | "cached" | "delegated" | "consistent" | "rprivate"
                    | "private" | "rshared" | "shared" | "rslave" | "slave" => {}
                    other => {
                        self.error(
                            pos,
                            format!("{path}: unknown volume mode {other:?} in {s:?}"),
                            "use ro or rw",
                        );
                        return None;
                    }
                }
            }
        }
        let (kind, source) = match src {
            None => (MountKind::Volume, String::new()),
            Some("") => {
                self.error(pos, format!("{path}: empty source in {s:?}"), hint);
                return None;
            }
            Some(src) => self.mount_source(src, pos, path, None)?,
        };
        Some(VolumeMount {
            kind,
            source,
            target: target.to_string(),
            read_only,
        })
    }

    fn mount_long(&mut self, entries: &Entries, pos: Pos, path: &str) -> Option<VolumeMount> {
        let mut kind = None;
        let mut source: Option<(String, Pos)> = None;
        let mut target = None;
        let mut read_only = false;
        for (k, v) in entries {
            let p = join(path, &k.name);
            if v.is_null() {
                continue;
            }
            match k.name.as_str() {
                "type" => {
                    let t = self.string(v, &p)?;
                    kind = Some(match t.as_str() {
                        "volume" => MountKind::Volume,
                        "bind" => MountKind::Bind,
                        "tmpfs" => MountKind::Tmpfs,
                        other => {
                            self.error(
                                v.pos,
                                format!("{p}: unsupported mount type {other:?}"),
                                "use volume, bind or tmpfs",
                            );
                            return None;
                        }
                    });
                }
                "source" => source = self.string(v, &p).map(|s| (s, v.pos)),
                "target" => target = self.string(v, &p),
                "read_only" => read_only = self.bool(v, &p).unwrap_or(false),
                _ => self.other_key(k, path, MOUNT_KEYS, MOUNT_UNSUPPORTED),
            }
        }
        let Some(target) = target else {
            self.error(
                pos,
                format!("{path}: missing target"),
                "add `target: /path/in/container`",
            );
            return None;
        };
        let (src, src_pos) = source.unwrap_or((String::new(), pos));
        let kind = kind.unwrap_or(MountKind::Volume);
        if kind == MountKind::Bind && src.is_empty() {
            self.error(
                pos,
                format!("{path}: a bind mount needs a source"),
                "add `source: ./host/dir`",
            );
            return None;
        }
        if kind == MountKind::Tmpfs && !src.is_empty() {
            self.error(
                src_pos,
                format!("{path}: a tmpfs mount takes no source"),
                "remove source:",
            );
            return None;
        }
        let (kind, source) = self.mount_source(&src, src_pos, path, Some(kind))?;
        Some(VolumeMount {
            kind,
            source,
            target,
            read_only,
        })
    }

    fn healthcheck(&mut self, n: &Node, path: &str) -> Option<HealthCheck> {
        let entries = self.map(n, path)?;
        let mut test = None;
        let mut hc = HealthCheck {
            test: Vec::new(),
            interval_ms: HealthCheck::DEFAULT_INTERVAL_MS,
            timeout_ms: HealthCheck::DEFAULT_TIMEOUT_MS,
            retries: HealthCheck::DEFAULT_RETRIES,
            start_period_ms: 0,
        };
        let mut disabled = false;
        for (k, v) in entries {
            let p = join(path, &k.name);
            if v.is_null() {
                continue;
            }
            match k.name.as_str() {
                "test" => test = Some((v, p)),
                "interval" => hc.interval_ms = self.duration(v, &p).unwrap_or(hc.interval_ms),
                "timeout" => hc.timeout_ms = self.duration(v, &p).unwrap_or(hc.timeout_ms),
                "start_period" => hc.start_period_ms = self.duration(v, &p).unwrap_or(0),
                "retries" => hc.retries = self.u32(v, &p).unwrap_or(hc.retries),
                "disable" => disabled = self.bool(v, &p).unwrap_or(false),
                _ => self.other_key(k, path, HEALTH_KEYS, HEALTH_UNSUPPORTED),
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

    fn restart(&mut self, n: &Node, path: &str) -> Option<RestartPolicy> {
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

    fn depends_on(&mut self, service: &str, n: &Node, path: &str) -> BTreeMap<String, DependsOn> {
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
                for (k, v) in entries {
                    let p = join(path, &k.name);
                    let mut d = DependsOn::default();
                    if let Some(fields) = self.map(v, &p) {
                        for (fk, fv) in fields {
                            let fp = join(&p, &fk.name);
                            match fk.name.as_str() {
                                "condition" => {
                                    let Some(c) = self.string(fv, &fp) else {
                                        continue;
                                    };
                                    d.condition = match c.as_str() {
                                        "service_started" => DependsCondition::ServiceStarted,
                                        "service_healthy" => DependsCondition::ServiceHealthy,
                                        "service_completed_successfully" => {
                                            DependsCondition::ServiceCompletedSuccessfully
                                        }
                                        other => {
                                            self.error(fv.pos, format!("{fp}: unknown condition {other:?}"), "use service_started, service_healthy or service_completed_successfully");
                                            continue;
                                        }
                                    };
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
                                _ => self.other_key(fk, &p, DEPENDS_KEYS, &[]),
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

    fn check_depends(&mut self, spec: &mut StackSpec) {
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
        for cycle in find_cycles(&spec.services) {
            // Locate at the entry that closes the cycle.
            let n = cycle.len();
            let (from, to) = (&cycle[n - 2], &cycle[n - 1]);
            let pos = edges
                .iter()
                .find(|(f, t, _)| f == from && t == to)
                .map_or(Pos { line: 1, col: 1 }, |e| e.2);
            self.error(
                pos,
                format!("dependency cycle: {}", cycle.join(" -> ")),
                "remove one of the depends_on entries in the cycle",
            );
        }
    }

    fn deploy(&mut self, n: &Node, path: &str) -> (DeploySpec, Option<RestartPolicy>) {
        let mut d = DeploySpec::default();
        let mut rp = None;
        let Some(entries) = self.map(n, path) else {
            return (d, rp);
        };
        let mut replicas_pos = None;
        for (k, v) in entries {
            let p = join(path, &k.name);
            if v.is_null() {
                continue;
            }
            match k.name.as_str() {
                "mode" => {
                    let Some(m) = self.string(v, &p) else {
                        continue;
                    };
                    match m.as_str() {
                        "replicated" => d.mode = DeployMode::Replicated,
                        "global" => d.mode = DeployMode::Global,
                        other => self.error(
                            v.pos,
                            format!("{p}: unsupported mode {other:?}"),
                            "use replicated or global",
                        ),
                    }
                }
                "replicas" => {
                    if let Some(r) = self.u32(v, &p) {
                        d.replicas = r;
                        replicas_pos = Some(k.pos);
                        if let Some((msg, hint)) = crate::replicas_problem(r) {
                            self.error(v.pos, format!("{p}: {msg}"), hint);
                        }
                    }
                }
                "resources" => {
                    let Some(res) = self.map(v, &p) else { continue };
                    for (rk, rv) in res {
                        let rpth = join(&p, &rk.name);
                        match rk.name.as_str() {
                            "limits" => d.resources.limits = self.amounts(rv, &rpth),
                            "reservations" => d.resources.reservations = self.amounts(rv, &rpth),
                            _ => self.other_key(rk, &p, RESOURCES_KEYS, &[]),
                        }
                    }
                }
                "restart_policy" => rp = self.restart_policy(v, &p),
                "update_config" => d.update_config = self.update_config(v, &p),
                "rollback_config" => d.rollback_config = self.update_config(v, &p),
                "placement" => d.placement = self.placement(v, &p),
                "labels" => d.labels = self.labels(v, &p),
                _ => self.other_key(k, path, DEPLOY_KEYS, DEPLOY_UNSUPPORTED),
            }
        }
        if d.mode == DeployMode::Global
            && let Some(pos) = replicas_pos
        {
            self.warn(pos, format!("{path}.replicas is ignored in global mode"));
        }
        (d, rp)
    }

    fn amounts(&mut self, n: &Node, path: &str) -> ResourceAmounts {
        let mut a = ResourceAmounts::default();
        let Some(entries) = self.map(n, path) else {
            return a;
        };
        for (k, v) in entries {
            let p = join(path, &k.name);
            if v.is_null() {
                continue;
            }
            match k.name.as_str() {
                "cpus" => {
                    let Some(s) = self.string(v, &p) else {
                        continue;
                    };
                    match units::parse_nano_cpus(&s) {
                        Ok(c) => a.nano_cpus = Some(c),
                        Err(e) => self.error(
                            v.pos,
                            format!("{p}: {e}"),
                            "write a number of CPUs such as 0.5 or \"2\"",
                        ),
                    }
                }
                "memory" => {
                    let Some(s) = self.string(v, &p) else {
                        continue;
                    };
                    match units::parse_bytes(&s) {
                        Ok(0) => self.error(
                            v.pos,
                            format!("{p}: memory must be greater than 0"),
                            "write a size such as 512M or 1g",
                        ),
                        Ok(b) => a.memory_bytes = Some(b),
                        Err(e) => self.error(
                            v.pos,
                            format!("{p}: {e}"),
                            "write a size such as 512M, 1g, 1024k or a number of bytes",
                        ),
                    }
                }
                _ => self.other_key(k, path, AMOUNT_KEYS, AMOUNT_UNSUPPORTED),
            }
        }
        a
    }

    fn restart_policy(&mut self, n: &Node, path: &str) -> Option<RestartPolicy> {
        let entries = self.map(n, path)?;
        let mut rp = RestartPolicy::default();
        for (k, v) in entries {
            let p = join(path, &k.name);
            if v.is_null() {
                continue;
            }
            match k.name.as_str() {
                "condition" => {
                    let Some(c) = self.string(v, &p) else {
                        continue;
                    };
                    rp.condition = match c.as_str() {
                        "none" => RestartCondition::None,
                        "on-failure" => RestartCondition::OnFailure,
                        "any" => RestartCondition::Any,
                        other => {
                            self.error(
                                v.pos,
                                format!("{p}: unknown condition {other:?}"),
                                "use none, on-failure or any",
                            );
                            continue;
                        }
                    };
                }
                "delay" => {
                    if let Some(ms) = self.duration(v, &p) {
                        rp.delay_ms = ms;
                        rp.max_delay_ms = rp.max_delay_ms.max(ms);
                    }
                }
                "max_attempts" => rp.max_attempts = self.u32(v, &p).unwrap_or(0),
                "window" => rp.window_ms = self.duration(v, &p).unwrap_or(0),
                _ => self.other_key(k, path, RESTART_POLICY_KEYS, &[]),
            }
        }
        Some(rp)
    }

    fn update_config(&mut self, n: &Node, path: &str) -> UpdateConfig {
        let mut u = UpdateConfig::default();
        let Some(entries) = self.map(n, path) else {
            return u;
        };
        for (k, v) in entries {
            let p = join(path, &k.name);
            if v.is_null() {
                continue;
            }
            match k.name.as_str() {
                "parallelism" => u.parallelism = self.u32(v, &p).unwrap_or(u.parallelism),
                "delay" => u.delay_ms = self.duration(v, &p).unwrap_or(u.delay_ms),
                "monitor" => u.monitor_ms = self.duration(v, &p).unwrap_or(u.monitor_ms),
                "order" => {
                    let Some(o) = self.string(v, &p) else {
                        continue;
                    };
                    match o.as_str() {
                        "stop-first" => u.order = UpdateOrder::StopFirst,
                        "start-first" => u.order = UpdateOrder::StartFirst,
                        other => self.error(
                            v.pos,
                            format!("{p}: unknown order {other:?}"),
                            "use stop-first or start-first",
                        ),
                    }
                }
                "failure_action" => {
                    let Some(o) = self.string(v, &p) else {
                        continue;
                    };
                    match o.as_str() {
                        "pause" => u.failure_action = FailureAction::Pause,
                        "continue" => u.failure_action = FailureAction::Continue,
                        "rollback" => u.failure_action = FailureAction::Rollback,
                        other => self.error(
                            v.pos,
                            format!("{p}: unknown failure action {other:?}"),
                            "use pause, continue or rollback",
                        ),
                    }
                }
                "max_failure_ratio" => {
                    let Some(s) = self.string(v, &p) else {
                        continue;
                    };
                    match units::parse_permille(&s) {
                        Ok(r) => u.max_failure_ratio_permille = r,
                        Err(e) => self.error(
                            v.pos,
                            format!("{p}: {e}"),
                            "write a ratio between 0 and 1, e.g. 0.1",
                        ),
                    }
                }
                _ => self.other_key(k, path, UPDATE_KEYS, &[]),
            }
        }
        u
    }

    fn placement(&mut self, n: &Node, path: &str) -> Placement {
        let mut pl = Placement::default();
        let Some(entries) = self.map(n, path) else {
            return pl;
        };
        for (k, v) in entries {
            let p = join(path, &k.name);
            if v.is_null() {
                continue;
            }
            match k.name.as_str() {
                "constraints" => {
                    pl.constraints = self.str_list(v, &p).unwrap_or_default();
                    if let Kind::Seq(items) = &v.kind {
                        for (i, it) in items.iter().enumerate() {
                            let Kind::Scalar(c) = &it.kind else { continue };
                            if let Err(e) = wharf_scheduler::parse_constraint(&c.text) {
                                self.error(
                                    it.pos,
                                    format!("{p}[{i}]: invalid constraint: {e}"),
                                    format!("write one of: {}", wharf_scheduler::ACCEPTED_FORMS),
                                );
                            }
                        }
                    }
                }
                "max_replicas_per_node" => pl.max_replicas_per_node = self.u32(v, &p),
                "preferences" => {
                    let Kind::Seq(items) = &v.kind else {
                        self.type_error(v, &p, "a list", "write `- spread: node.labels.zone`");
                        continue;
                    };
                    for (i, it) in items.iter().enumerate() {
                        let ip = format!("{p}[{i}]");
                        let Some(fields) = self.map(it, &ip) else {
                            continue;
                        };
                        for (fk, fv) in fields {
                            match fk.name.as_str() {
                                "spread" => {
                                    if let Some(s) = self.string(fv, &join(&ip, "spread")) {
                                        pl.preferences.push(s);
                                    }
                                }
                                _ => self.other_key(fk, &ip, &["spread"], &[]),
                            }
                        }
                    }
                }
                _ => self.other_key(k, path, PLACEMENT_KEYS, &[]),
            }
        }
        pl
    }
}

fn valid_volume_name(name: &str) -> bool {
    crate::valid_service_name(name)
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

/// Split a command line like a POSIX shell would (quotes and backslashes; no expansion).
pub(crate) fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated single quote in {s:?}")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(format!("unterminated double quote in {s:?}")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(format!("unterminated double quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => cur.push(c),
                    None => return Err(format!("trailing backslash in {s:?}")),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        assert_eq!(
            shell_split(r#"sh -c 'echo "hi there"' a\ b "x\"y""#),
            Ok(vec![
                "sh".into(),
                "-c".into(),
                "echo \"hi there\"".into(),
                "a b".into(),
                "x\"y".into()
            ])
        );
        assert_eq!(shell_split("  "), Ok(vec![]));
        assert_eq!(shell_split("''"), Ok(vec![String::new()]));
        assert!(shell_split("'open").is_err());
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("imgae", SERVICE_KEYS), Some("image"));
        assert_eq!(suggest("enviroment", SERVICE_KEYS), Some("environment"));
        assert_eq!(suggest("zzzzzzzz", SERVICE_KEYS), None);
    }
}
