//! The service keys that say how its containers run beyond hardening, read into
//! [`wharf_types::ContainerOptions`]: service-level resources (`mem_limit`, `cpus`,
//! `mem_reservation` and `scale`, merged with `deploy:` after the service is read, a conflict
//! being an error), swap, CPU shares and sets, shared memory, OOM settings, `logging`, DNS,
//! `extra_hosts`, TTY, `devices`, `ipc`, `platform`, `pull_policy`, the `post_start` and
//! `pre_stop` hooks, and `label_file`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use wharf_types::{ContainerOptions, Device, Hook, Logging, ServiceSpec};

use crate::context::absolutize;
use crate::interp::parse_dotenv;
use crate::runtime::{IPC_MODES, valid_cpuset, valid_host_address, valid_platform};
use crate::units;
use crate::yaml::{Key, Kind, Node, Pos};

use super::keys::*;
use super::{Cx, fields, find, items, join};

/// Service-level values that `deploy:` may also set, with where they were written: merged
/// once the service is read (`merge_levels`), whatever the order of the keys.
#[derive(Default)]
pub(super) struct Levels {
    mem_limit: Option<(u64, Pos)>,
    mem_reservation: Option<(u64, Pos)>,
    cpus: Option<(u64, Pos)>,
    scale: Option<(u32, Pos)>,
    /// Labels from `label_file`s: `labels:` wins over them.
    label_files: BTreeMap<String, String>,
}

impl Cx<'_> {
    /// Read `k` if it is one of this module's keys (true), else leave it (false).
    pub(super) fn runtime_key(
        &mut self,
        k: &Key,
        v: &Node,
        p: &str,
        s: &mut ServiceSpec,
        lv: &mut Levels,
    ) -> bool {
        let o = &mut s.container;
        match k.name.as_str() {
            "mem_limit" => lv.mem_limit = self.memory(v, p).map(|b| (b, v.pos)),
            "mem_reservation" => lv.mem_reservation = self.memory(v, p).map(|b| (b, v.pos)),
            "cpus" => lv.cpus = self.cpus(v, p).map(|c| (c, v.pos)),
            "scale" => lv.scale = self.u32(v, p).map(|n| (n, v.pos)),
            "label_file" => lv.label_files = self.label_files(v, p),
            "memswap_limit" => o.memswap_limit = self.swap(v, p),
            "mem_swappiness" => o.mem_swappiness = self.bounded(v, p, 0, 100).map(|n| n as u8),
            "cpu_shares" => o.cpu_shares = self.uint(v, p),
            "cpu_period" => o.cpu_period_us = self.micros(v, p),
            "cpu_quota" => o.cpu_quota_us = self.micros(v, p),
            "cpuset" => o.cpuset = self.cpuset(v, p),
            "shm_size" => o.shm_size_bytes = self.size(v, p),
            "oom_kill_disable" => o.oom_kill_disable = self.bool(v, p).unwrap_or(false),
            "oom_score_adj" => {
                o.oom_score_adj = self.bounded(v, p, -1000, 1000).map(|n| n as i32);
            }
            _ => return self.container_key(k, v, p, &mut s.container),
        }
        true
    }

    /// The keys of [`ContainerOptions`] that are not resources.
    fn container_key(&mut self, k: &Key, v: &Node, p: &str, o: &mut ContainerOptions) -> bool {
        match k.name.as_str() {
            "logging" => o.logging = self.logging(v, p),
            "extra_hosts" => o.extra_hosts = self.extra_hosts(v, p),
            "dns" => o.dns = self.name_servers(v, p),
            "dns_search" => o.dns_search = self.str_or_list(v, p),
            "dns_opt" => o.dns_opt = self.str_or_list(v, p),
            "tty" => o.tty = self.bool(v, p).unwrap_or(false),
            "stdin_open" => o.stdin_open = self.bool(v, p).unwrap_or(false),
            "devices" => o.devices = self.devices(v, p),
            "group_add" => o.group_add = self.str_list(v, p).unwrap_or_default(),
            "domainname" => o.domainname = self.string(v, p),
            "ipc" => o.ipc = self.ipc(v, p),
            "runtime" => o.runtime = self.string(v, p),
            "storage_opt" => o.storage_opt = self.labels(v, p),
            "platform" => o.platform = self.platform(v, p),
            "pull_policy" => {
                let every = |s: &str| matches!(s, "daily" | "weekly") || s.starts_with("every_");
                match &v.kind {
                    Kind::Scalar(s) if every(&s.text) => self.error(
                        v.pos,
                        format!(
                            "{p}: refresh intervals ({}) are not supported by Wharf",
                            s.text
                        ),
                        "use pull_policy: always, or missing",
                    ),
                    _ => o.pull_policy = self.one_of(v, p, "unknown pull policy", PULL_POLICIES),
                }
            }
            "post_start" => o.post_start = self.hooks(v, p),
            "pre_stop" => o.pre_stop = self.hooks(v, p),
            _ => return false,
        }
        true
    }

    /// Merge the service-level values into `deploy:`; both set and different is an error.
    pub(super) fn merge_levels(&mut self, s: &mut ServiceSpec, lv: Levels, n: &Node, path: &str) {
        for (k, v) in lv.label_files {
            s.labels.entry(k).or_insert(v);
        }
        let res = &mut s.deploy.resources;
        let pairs = [
            (
                "mem_limit",
                lv.mem_limit,
                &mut res.limits.memory_bytes,
                "limits.memory",
            ),
            ("cpus", lv.cpus, &mut res.limits.nano_cpus, "limits.cpus"),
            (
                "mem_reservation",
                lv.mem_reservation,
                &mut res.reservations.memory_bytes,
                "reservations.memory",
            ),
        ];
        let mut conflicts = Vec::new();
        for (key, level, field, deploy_key) in pairs {
            let Some((value, pos)) = level else { continue };
            match field {
                Some(d) if *d != value => conflicts.push((key, pos, deploy_key, *d, value)),
                _ => *field = Some(value),
            }
        }
        for (key, pos, deploy_key, d, value) in conflicts {
            self.error(
                pos,
                format!(
                    "{}: {value} differs from deploy.resources.{deploy_key} ({d})",
                    join(path, key)
                ),
                format!("keep one of {key} and deploy.resources.{deploy_key}"),
            );
        }
        if let Some((pids, pos)) = self.deploy_pids(n, path) {
            match s.hardening.pids_limit {
                Some(p) if p != pids => self.error(
                    pos,
                    format!(
                        "{path}.deploy.resources.limits.pids: {pids} differs from pids_limit ({p})"
                    ),
                    "keep one of pids_limit and deploy.resources.limits.pids",
                ),
                _ => s.hardening.pids_limit = Some(pids),
            }
        }
        if let Some((scale, pos)) = lv.scale {
            let replicas = find(n, &["deploy", "replicas"]).filter(|r| !r.is_null());
            if replicas.is_some() && s.deploy.replicas != scale {
                self.error(
                    pos,
                    format!(
                        "{path}.scale: {scale} differs from deploy.replicas ({})",
                        s.deploy.replicas
                    ),
                    "keep one of scale and deploy.replicas",
                );
            } else {
                s.deploy.replicas = scale;
                if let Some((msg, hint)) = crate::replicas_problem(scale) {
                    self.error(pos, format!("{path}.scale: {msg}"), hint);
                }
            }
        }
    }

    /// `deploy.resources.limits.pids`: the same as `pids_limit`.
    fn deploy_pids(&mut self, n: &Node, path: &str) -> Option<(i64, Pos)> {
        let v = find(n, &["deploy", "resources", "limits", "pids"]).filter(|v| !v.is_null())?;
        let p = format!("{path}.deploy.resources.limits.pids");
        self.bounded(v, &p, -1, i64::MAX).map(|n| (n, v.pos))
    }

    fn memory(&mut self, n: &Node, path: &str) -> Option<u64> {
        match self.size(n, path)? {
            0 => {
                self.error(
                    n.pos,
                    format!("{path}: memory must be greater than 0"),
                    "write a size such as 512m or 1g",
                );
                None
            }
            b => Some(b),
        }
    }

    fn cpus(&mut self, n: &Node, path: &str) -> Option<u64> {
        let s = self.string(n, path)?;
        match units::parse_nano_cpus(&s) {
            Ok(c) => Some(c),
            Err(e) => {
                let hint = "write a number of CPUs such as 0.5 or 2";
                self.error(n.pos, format!("{path}: {e}"), hint);
                None
            }
        }
    }

    /// `memswap_limit`: a size, or -1 for unlimited swap.
    fn swap(&mut self, n: &Node, path: &str) -> Option<i64> {
        if let Kind::Scalar(s) = &n.kind
            && s.text.trim() == "-1"
        {
            return Some(-1);
        }
        let b = self.size(n, path)?;
        i64::try_from(b).ok()
    }

    /// An integer within `min..=max`.
    fn bounded(&mut self, n: &Node, path: &str, min: i64, max: i64) -> Option<i64> {
        let s = self.string(n, path)?;
        match s.trim().parse::<i64>() {
            Ok(v) if (min..=max).contains(&v) => Some(v),
            _ => {
                self.error(
                    n.pos,
                    format!("{path}: {s:?} is not a whole number from {min} to {max}"),
                    format!("write a number from {min} to {max}"),
                );
                None
            }
        }
    }

    /// `cpu_period`, `cpu_quota`: microseconds, or a duration (`100ms`).
    fn micros(&mut self, n: &Node, path: &str) -> Option<u64> {
        let s = self.string(n, path)?;
        if let Ok(us) = s.trim().parse::<u64>() {
            return Some(us);
        }
        match units::parse_duration(&s) {
            Ok(d) => u64::try_from(d.as_micros()).ok(),
            Err(e) => {
                let hint = "write microseconds (100000) or a duration (100ms)";
                self.error(n.pos, format!("{path}: {e}"), hint);
                None
            }
        }
    }

    /// `cpuset: 0-3` or `0,2`.
    fn cpuset(&mut self, n: &Node, path: &str) -> Option<String> {
        let s = self.string(n, path)?;
        if valid_cpuset(&s) {
            Some(s)
        } else {
            self.error(
                n.pos,
                format!("{path}: invalid CPU set {s:?}"),
                "write CPU numbers and ranges such as 0-3 or 0,2",
            );
            None
        }
    }

    fn logging(&mut self, n: &Node, path: &str) -> Option<Logging> {
        let entries = self.map(n, path)?;
        let mut l = Logging::default();
        for (k, v, p) in fields(entries, path) {
            match k.name.as_str() {
                "driver" => l.driver = self.string(v, &p).unwrap_or_default(),
                "options" => l.options = self.labels(v, &p),
                _ => self.other_key(k, path, &LOGGING),
            }
        }
        if l.driver.is_empty() && !l.options.is_empty() {
            self.error(
                n.pos,
                format!("{path}: options without a driver"),
                "name the driver the options are for, such as driver: json-file",
            );
            return None;
        }
        Some(l)
    }

    /// `extra_hosts`: a list of `host:address` or `host=address`, or a mapping of host to an
    /// address (or a list of them); normalised to `host:address`.
    pub(super) fn extra_hosts(&mut self, n: &Node, path: &str) -> Vec<String> {
        let mut pairs: Vec<(String, String, Pos, String)> = Vec::new();
        match &n.kind {
            Kind::Map(entries) => {
                for (k, v, p) in fields(entries, path) {
                    for a in self.str_or_list(v, &p) {
                        pairs.push((k.name.clone(), a, v.pos, p.clone()));
                    }
                }
            }
            _ => {
                let hint = "write [\"host:10.0.0.5\"] or {host: 10.0.0.5}";
                let list = self.seq(n, path, "a list or a mapping", hint);
                for (it, ip) in items(list.unwrap_or_default(), path) {
                    let Some(s) = self.string(it, &ip) else {
                        continue;
                    };
                    let at = s.find(['=', ':']);
                    match at.map(|i| (s[..i].to_string(), s[i + 1..].to_string())) {
                        Some((h, a)) => pairs.push((h, a, it.pos, ip)),
                        None => self.error(
                            it.pos,
                            format!("{ip}: {s:?} has no address"),
                            "write host:address, such as db:10.0.0.5",
                        ),
                    }
                }
            }
        }
        let mut out = Vec::new();
        for (host, addr, pos, p) in pairs {
            let bare = addr.trim().trim_start_matches('[').trim_end_matches(']');
            let valid_host = !host.is_empty() && !host.contains(char::is_whitespace);
            if valid_host && valid_host_address(bare) {
                out.push(format!("{host}:{bare}"));
            } else {
                self.error(
                    pos,
                    format!("{p}: invalid extra host {host:?} -> {addr:?}"),
                    "write a host name and an IP address (or host-gateway), such as db:10.0.0.5",
                );
            }
        }
        out
    }

    /// `dns`: IP addresses of name servers.
    fn name_servers(&mut self, n: &Node, path: &str) -> Vec<String> {
        let mut list = self.str_or_list(n, path);
        list.retain(|a| {
            let ok = a.parse::<IpAddr>().is_ok();
            if !ok {
                self.error(
                    n.pos,
                    format!("{path}: {a:?} is not an IP address"),
                    "write name servers as IP addresses, such as 10.0.0.2",
                );
            }
            ok
        });
        list
    }

    /// `devices`: `/dev/x`, `/dev/x:/dev/y`, `/dev/x:/dev/y:rw`, or `{source, target,
    /// permissions}`.
    fn devices(&mut self, n: &Node, path: &str) -> Vec<Device> {
        let hint = "write host:container[:permissions], such as /dev/fuse or /dev/sda:/dev/xvda:r";
        self.list(n, path, hint, |cx, it, ip, out| {
            let d = match &it.kind {
                Kind::Map(entries) => {
                    let mut d = Device::default();
                    for (k, v, p) in fields(entries, ip) {
                        match k.name.as_str() {
                            "source" => d.source = cx.string(v, &p).unwrap_or_default(),
                            "target" => d.target = cx.string(v, &p).unwrap_or_default(),
                            "permissions" => d.permissions = cx.string(v, &p).unwrap_or_default(),
                            _ => cx.other_key(k, ip, &DEVICE),
                        }
                    }
                    d
                }
                _ => {
                    let Some(s) = cx.string(it, ip) else { return };
                    let mut parts = s.splitn(3, ':').map(str::to_string);
                    Device {
                        source: parts.next().unwrap_or_default(),
                        target: parts.next().unwrap_or_default(),
                        permissions: parts.next().unwrap_or_default(),
                    }
                }
            };
            let mut d = d;
            if d.target.is_empty() {
                d.target = d.source.clone();
            }
            if d.permissions.is_empty() {
                d.permissions = "rwm".into();
            }
            let perms_ok = d.permissions.chars().all(|c| "rwm".contains(c));
            if !d.source.starts_with('/') || !d.target.starts_with('/') || !perms_ok {
                let msg = if d.source.contains('=') {
                    format!("{ip}: CDI device {:?} needs Docker Engine API 1.44, newer than the 1.41 Wharf supports", d.source)
                } else {
                    format!("{ip}: invalid device {:?}", d.source)
                };
                cx.error(it.pos, msg, hint);
                return;
            }
            out.push(d);
        })
    }

    fn ipc(&mut self, n: &Node, path: &str) -> Option<String> {
        let s = self.string(n, path)?;
        if IPC_MODES.contains(&s.as_str()) {
            return Some(s);
        }
        let why = if s == "host" {
            "the host's IPC namespace is host access no admission rule judges"
        } else {
            "another service's instances may run on other nodes"
        };
        self.error(
            n.pos,
            format!("{path}: {s:?} is not supported by Wharf: {why}"),
            format!("use one of {}, or remove the key", IPC_MODES.join(", ")),
        );
        None
    }

    /// `platform: os/arch[/variant]`, lower case (`linux/amd64`, `linux/arm64/v8`).
    fn platform(&mut self, n: &Node, path: &str) -> Option<String> {
        let s = self.string(n, path)?;
        if valid_platform(&s) {
            return Some(s);
        }
        self.error(
            n.pos,
            format!("{path}: invalid platform {s:?}"),
            "write os/arch[/variant], such as linux/amd64 or linux/arm64/v8",
        );
        None
    }

    /// `post_start`, `pre_stop`: a list of `{command, user, working_dir, environment}`.
    fn hooks(&mut self, n: &Node, path: &str) -> Vec<Hook> {
        let hint = "write a list of {command: [prog, args...]}";
        self.list(n, path, hint, |cx, it, ip, out| {
            let Some(entries) = cx.map(it, ip) else { return };
            let mut h = Hook::default();
            for (k, v, p) in fields(entries, ip) {
                match k.name.as_str() {
                    "command" => h.command = cx.command(v, &p).unwrap_or_default(),
                    "user" => h.user = cx.string(v, &p),
                    "working_dir" => h.working_dir = cx.string(v, &p),
                    "environment" => h.environment = cx.env_values(v, &p),
                    "privileged" => {
                        if cx.bool(v, &p) == Some(true) {
                            cx.error(
                                v.pos,
                                format!("{p}: privileged hooks are not supported by Wharf: the command would get every capability, beyond the container's own"),
                                "give the container what the hook needs with cap_add (judged by the admission policy)",
                            );
                        }
                    }
                    _ => cx.other_key(k, ip, &HOOK),
                }
            }
            if h.command.is_empty() {
                cx.error(it.pos, format!("{ip}: missing command"), "add command: [prog, args...]");
                return;
            }
            out.push(h);
        })
    }

    /// `label_file`: files of `KEY=value` lines, relative to the stack file.
    fn label_files(&mut self, n: &Node, path: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for f in self.str_or_list(n, path) {
            let full = absolutize(&self.base, &f);
            if !self.inside(n.pos, path, "label_file", &full) {
                continue;
            }
            let text = match std::fs::read_to_string(&full) {
                Ok(t) => t,
                Err(e) => {
                    let hint = "label_file paths are relative to the stack file";
                    self.unreadable(n.pos, path, &full, &e, hint);
                    continue;
                }
            };
            match parse_dotenv(&text) {
                Ok(entries) => {
                    out.extend(entries.into_iter().map(|(k, v)| (k, v.unwrap_or_default())))
                }
                Err(e) => self.dotenv_error(&full, e),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::LoadOptions;

    /// The service `web` of a stack with `body` under it, or the first error (message, hint,
    /// line:column).
    fn load(body: &str) -> Result<wharf_types::ServiceSpec, (String, String, String)> {
        let src = format!("services:\n  web:\n    image: app\n{body}");
        match crate::load_str(
            &src,
            "stack.yml",
            Path::new("/tmp/t"),
            &LoadOptions::default(),
        ) {
            Ok(l) => Ok(l.spec.services["web"].clone()),
            Err(e) => {
                let e = e.0.into_iter().next().expect("one error");
                let at = e.location.map(|l| format!("{}:{}", l.line, l.column));
                Err((
                    e.message,
                    e.hint.unwrap_or_default(),
                    at.unwrap_or_default(),
                ))
            }
        }
    }

    fn err(body: &str) -> (String, String, String) {
        load(body).expect_err(body)
    }

    #[test]
    fn resources_at_the_service_level_land_where_deploy_resources_do() {
        let s = load("    mem_limit: 512m\n    cpus: 1.5\n    mem_reservation: 128m\n    memswap_limit: 1g\n    cpu_shares: 512\n    cpuset: 0-1\n    shm_size: 64m\n    oom_score_adj: -500\n    cpu_period: 100ms\n    cpu_quota: 50000\n").unwrap();
        let r = &s.deploy.resources;
        assert_eq!(r.limits.memory_bytes, Some(512 << 20));
        assert_eq!(r.limits.nano_cpus, Some(1_500_000_000));
        assert_eq!(r.reservations.memory_bytes, Some(128 << 20));
        let o = &s.container;
        assert_eq!(o.memswap_limit, Some(1 << 30));
        assert_eq!(o.cpu_shares, Some(512));
        assert_eq!(o.cpuset.as_deref(), Some("0-1"));
        assert_eq!(o.shm_size_bytes, Some(64 << 20));
        assert_eq!(o.oom_score_adj, Some(-500));
        assert_eq!(
            (o.cpu_period_us, o.cpu_quota_us),
            (Some(100_000), Some(50_000))
        );
        // The same value in both places is fine; different ones are refused at the service key.
        let same = load("    mem_limit: 1g\n    deploy: {resources: {limits: {memory: 1024m}}}\n");
        assert_eq!(
            same.unwrap().deploy.resources.limits.memory_bytes,
            Some(1 << 30)
        );
        let (m, h, at) = err("    deploy: {resources: {limits: {cpus: '2'}}}\n    cpus: 1\n");
        assert_eq!(
            m,
            "services.web.cpus: 1000000000 differs from deploy.resources.limits.cpus (2000000000)"
        );
        assert_eq!(
            (h.as_str(), at.as_str()),
            ("keep one of cpus and deploy.resources.limits.cpus", "5:11")
        );
        let (m, _, _) = err("    pids_limit: 10\n    deploy: {resources: {limits: {pids: 20}}}\n");
        assert!(
            m.contains("limits.pids: 20 differs from pids_limit (10)"),
            "{m}"
        );
        assert_eq!(
            load("    deploy: {resources: {limits: {pids: 20}}}\n")
                .unwrap()
                .hardening
                .pids_limit,
            Some(20)
        );
    }

    #[test]
    fn bad_resource_values_are_located_with_a_hint() {
        for (body, at, msg) in [
            ("    mem_limit: lots\n", "4:16", "invalid size"),
            (
                "    mem_limit: 0\n",
                "4:16",
                "memory must be greater than 0",
            ),
            ("    cpus: none\n", "4:11", "invalid cpus value"),
            ("    cpuset: 0-a\n", "4:13", "invalid CPU set"),
            (
                "    oom_score_adj: 5000\n",
                "4:20",
                "is not a whole number from -1000 to 1000",
            ),
            ("    mem_swappiness: 101\n", "4:21", "from 0 to 100"),
            ("    cpu_period: soon\n", "4:17", "invalid duration"),
        ] {
            let (m, h, got) = err(body);
            assert!(m.contains(msg), "{body}: {m}");
            assert_eq!(got, at, "{body}");
            assert!(!h.is_empty(), "{body}");
        }
    }

    #[test]
    fn scale_is_replicas_and_a_different_deploy_replicas_is_refused() {
        assert_eq!(load("    scale: 3\n").unwrap().deploy.replicas, 3);
        assert_eq!(
            load("    scale: 3\n    deploy: {replicas: 3}\n")
                .unwrap()
                .deploy
                .replicas,
            3
        );
        let (m, h, at) = err("    deploy: {replicas: 2}\n    scale: 3\n");
        assert_eq!(m, "services.web.scale: 3 differs from deploy.replicas (2)");
        assert_eq!(
            (h.as_str(), at.as_str()),
            ("keep one of scale and deploy.replicas", "5:12")
        );
    }

    #[test]
    fn logging_hosts_and_dns_are_read_and_checked() {
        let s = load("    logging: {driver: json-file, options: {max-size: 10m}}\n    extra_hosts: [\"db:10.0.0.5\", \"v6=::1\", \"gw:host-gateway\"]\n    dns: 10.0.0.2\n    dns_search: [corp.example]\n    dns_opt: [ndots:2]\n").unwrap();
        let o = &s.container;
        let l = o.logging.as_ref().unwrap();
        assert_eq!(
            (l.driver.as_str(), l.options["max-size"].as_str()),
            ("json-file", "10m")
        );
        assert_eq!(o.extra_hosts, ["db:10.0.0.5", "v6:::1", "gw:host-gateway"]);
        assert_eq!(
            (o.dns.clone(), o.dns_search.clone(), o.dns_opt.clone()),
            (
                vec!["10.0.0.2".to_string()],
                vec!["corp.example".to_string()],
                vec!["ndots:2".to_string()]
            )
        );
        let map =
            load("    extra_hosts:\n      db: 10.0.0.5\n      two: [\"10.0.0.6\", \"10.0.0.7\"]\n")
                .unwrap();
        assert_eq!(
            map.container.extra_hosts,
            ["db:10.0.0.5", "two:10.0.0.6", "two:10.0.0.7"]
        );
        let (m, h, at) = err("    extra_hosts: [\"db:nowhere\"]\n");
        assert_eq!(
            m,
            "services.web.extra_hosts[0]: invalid extra host \"db\" -> \"nowhere\""
        );
        assert!(h.contains("IP address"), "{h}");
        assert_eq!(at, "4:19");
        let (m, _, at) = err("    dns: [dns.example]\n");
        assert!(m.contains("\"dns.example\" is not an IP address"), "{m}");
        assert_eq!(at, "4:10");
        let (m, _, _) = err("    logging: {options: {a: b}}\n");
        assert!(m.contains("options without a driver"), "{m}");
        let (m, _, _) = err("    logging: {drivr: x}\n");
        assert!(m.contains("unknown key \"drivr\""), "{m}");
    }

    #[test]
    fn devices_platform_ipc_pull_policy_and_hooks() {
        let s = load("    devices: [/dev/fuse, \"/dev/sda:/dev/xvda:r\", {source: /dev/kvm, target: /dev/kvm, permissions: rw}]\n    platform: linux/arm64/v8\n    ipc: shareable\n    pull_policy: never\n    tty: true\n    stdin_open: true\n    post_start: [{command: touch /ready, user: root}]\n    pre_stop: [{command: [\"sh\", \"-c\", \"sleep 1\"], environment: {A: b}}]\n").unwrap();
        let o = &s.container;
        let d: Vec<_> = o
            .devices
            .iter()
            .map(|d| format!("{}:{}:{}", d.source, d.target, d.permissions))
            .collect();
        assert_eq!(
            d,
            [
                "/dev/fuse:/dev/fuse:rwm",
                "/dev/sda:/dev/xvda:r",
                "/dev/kvm:/dev/kvm:rw"
            ]
        );
        assert_eq!(o.platform.as_deref(), Some("linux/arm64/v8"));
        assert_eq!(o.ipc.as_deref(), Some("shareable"));
        assert_eq!(o.pull_policy, Some(wharf_types::PullPolicy::Never));
        assert!(o.tty && o.stdin_open);
        assert_eq!(o.post_start[0].command, ["touch", "/ready"]);
        assert_eq!(o.post_start[0].user.as_deref(), Some("root"));
        assert_eq!(o.pre_stop[0].environment["A"], "b");
        for (body, msg) in [
            (
                "    devices: [\"/dev/sda:/dev/xvda:rwx\"]\n",
                "invalid device",
            ),
            ("    devices: [vendor.com/gpu=all]\n", "CDI device"),
            ("    platform: linux\n", "invalid platform"),
            ("    ipc: host\n", "host access"),
            ("    ipc: service:db\n", "other nodes"),
            ("    pull_policy: daily\n", "refresh intervals"),
            ("    pull_policy: sometimes\n", "unknown pull policy"),
            ("    post_start: [{user: root}]\n", "missing command"),
            (
                "    pre_stop: [{command: x, privileged: true}]\n",
                "privileged hooks",
            ),
        ] {
            let (m, h, _) = err(body);
            assert!(m.contains(msg), "{body}: {m}");
            assert!(!h.is_empty(), "{body}");
        }
    }

    #[test]
    fn refused_and_warned_keys_say_why() {
        let (m, h, at) = err("    pid: host\n");
        assert!(
            m.starts_with("services.web.pid is not supported by Wharf: "),
            "{m}"
        );
        assert_eq!(
            (h.as_str(), at.as_str()),
            ("run the processes in one container", "4:5")
        );
        let (m, h, _) = err("    build: {ssh: [default], context: .}\n");
        assert!(
            m.contains("services.web.build.ssh is not supported by Wharf: it needs BuildKit"),
            "{m}"
        );
        assert!(h.contains("docker buildx build --ssh"), "{h}");
        let src = "services:\n  web:\n    image: app\n    container_name: web1\n";
        let l = crate::load_str(
            src,
            "stack.yml",
            Path::new("/tmp/t"),
            &LoadOptions::default(),
        )
        .unwrap();
        let w: Vec<String> = l.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].starts_with(
                "stack.yml:4:5: services.web.container_name is ignored: container names are Wharf's"
            ),
            "{w:?}"
        );
    }
}
