//! `x-wharf`: the driver, placement extensions and the ingress routes with their TLS material
//! (read and checked at load time).

use std::collections::BTreeMap;

use wharf_types::{
    Concurrency, DriverKind, IngressBalance, IngressProtocol, IngressRoute, IngressTls,
    JobSchedule, Secret, ServiceSpec, Severity, WharfExt,
};

use crate::context::absolutize;
use crate::units;
use crate::yaml::{Kind, Node, Pos};

use super::keys::*;
use super::{Cx, Entries, fields, find, items, join, keyed};

/// The job keys of `x-wharf`, as read (with the places of those an error may point at).
#[derive(Default)]
struct JobKeys {
    cron: Option<(String, Pos)>,
    timezone: Option<(String, Pos)>,
    concurrency: Option<Concurrency>,
    deadline_ms: Option<u64>,
}

/// Largest certificate or key file read (a chain of a few certificates is a few KB).
pub(super) const MAX_PEM_BYTES: u64 = 1 << 20;

impl Cx<'_> {
    pub(super) fn x_wharf(
        &mut self,
        n: &Node,
        path: &str,
        ext: &mut WharfExt,
    ) -> Option<DriverKind> {
        let entries = self.map(n, path)?;
        let mut driver = None;
        let mut job = JobKeys::default();
        for (k, v, p) in keyed(entries, path) {
            match k.name.as_str() {
                "driver" => {
                    driver = self.one_of(v, &p, "unknown driver", DRIVERS);
                }
                "affinity" => ext.affinity = self.str_list(v, &p).unwrap_or_default(),
                "anti_affinity" => ext.anti_affinity = self.str_list(v, &p).unwrap_or_default(),
                "move_with_volumes" => ext.move_with_volumes = self.bool(v, &p).unwrap_or(false),
                "auto_rebalance" => ext.auto_rebalance = self.bool(v, &p).unwrap_or(false),
                "at_most_once" => ext.at_most_once = self.bool(v, &p).unwrap_or(false),
                "allow_from" => ext.allow_from = self.allow_from(v, &p),
                "ingress" => ext.ingress = self.ingress(v, &p),
                "drain_grace" => ext.drain_grace_ms = self.duration(v, &p),
                "scan" => ext.scan_block = self.scan(v, &p),
                "auto_deploy" => ext.auto_deploy = self.bool(v, &p).unwrap_or(false),
                "schedule" => job.cron = self.string(v, &p).map(|s| (s, v.pos)),
                "timezone" => job.timezone = self.string(v, &p).map(|s| (s, v.pos)),
                "concurrency" => {
                    job.concurrency = self.one_of(v, &p, "unknown concurrency", CONCURRENCIES)
                }
                "deadline" => job.deadline_ms = self.duration(v, &p),
                "history" => {
                    ext.history = self.u32(v, &p);
                    if ext.history == Some(0) {
                        self.error(
                            v.pos,
                            format!("{p}: must keep at least one run"),
                            "write 1 or more",
                        );
                    }
                }
                _ => self.other_key(k, path, &XWHARF),
            }
        }
        ext.schedule = self.job_schedule(job, n, path);
        driver
    }

    /// `x-wharf: {scan: {block: critical}}`: the least severity that refuses a deploy.
    fn scan(&mut self, n: &Node, path: &str) -> Option<Severity> {
        const BLOCKS: &[(&str, Severity)] = &[
            ("critical", Severity::Critical),
            ("high", Severity::High),
            ("medium", Severity::Medium),
            ("low", Severity::Low),
        ];
        let entries = self.map(n, path)?;
        let mut block = None;
        for (k, v, p) in keyed(entries, path) {
            match k.name.as_str() {
                "block" => block = self.one_of(v, &p, "unknown severity", BLOCKS),
                _ => self.other_key(k, path, &SCAN),
            }
        }
        block
    }

    /// `x-wharf: {schedule, timezone, concurrency, deadline}`: the schedule checked with the
    /// cron parser the master runs it with, its errors located at the value that is wrong.
    fn job_schedule(&mut self, job: JobKeys, n: &Node, path: &str) -> Option<JobSchedule> {
        let Some((cron, cron_pos)) = job.cron else {
            if job.timezone.is_some() || job.concurrency.is_some() || job.deadline_ms.is_some() {
                self.error(
                    n.pos,
                    format!("{path}: timezone, concurrency and deadline need a schedule"),
                    "add `schedule: \"*/5 * * * *\"`, or remove them",
                );
            }
            return None;
        };
        let timezone = job.timezone.as_ref().map(|(t, _)| t.as_str());
        if let Err(e) = crate::schedule::Schedule::parse(&cron, timezone) {
            let (pos, key) = match (&job.timezone, e.message.starts_with("unknown time zone")) {
                (Some((_, tz_pos)), true) => (*tz_pos, "timezone"),
                _ => (cron_pos, "schedule"),
            };
            self.error(pos, format!("{path}.{key}: {}", e.message), e.hint);
            return None;
        }
        Some(JobSchedule {
            cron,
            timezone: job.timezone.map(|(t, _)| t),
            concurrency: job.concurrency.unwrap_or_default(),
            deadline_ms: job.deadline_ms,
        })
    }

    /// `x-wharf: ingress:`, a list of routes; each problem located at its value.
    pub(super) fn ingress(&mut self, n: &Node, path: &str) -> Vec<IngressRoute> {
        let hint = "write `- {port: 8080, listen: 8000}` lines";
        let Some(routes) = self.seq(n, path, "a list of routes", hint) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut all_ok = true;
        for (it, ip) in items(routes, path) {
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
                let pos = find(&routes[i], &[field]).map_or(routes[i].pos, |n| n.pos);
                self.error(pos, format!("{path}[{i}].{field}: {message}"), hint);
            }
            out = ext.ingress;
        }
        out
    }

    pub(super) fn ingress_route(
        &mut self,
        entries: &Entries,
        pos: Pos,
        path: &str,
    ) -> Option<IngressRoute> {
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
        for (k, v, p) in fields(entries, path) {
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
                "protocol" => match self.one_of(v, &p, "unknown protocol", PROTOCOLS) {
                    Some(protocol) => r.protocol = protocol,
                    None => ok = false,
                },
                "hosts" => r.hosts = self.str_list(v, &p).unwrap_or_default(),
                "paths" => r.paths = self.str_list(v, &p).unwrap_or_default(),
                "balance" => match self.one_of(v, &p, "unknown balance", BALANCES) {
                    Some(balance) => r.balance = balance,
                    None => ok = false,
                },
                "sticky" => r.sticky = self.string(v, &p),
                "timeout" => r.timeout_ms = self.duration(v, &p),
                "redirect_https" => r.redirect_https = self.bool(v, &p).unwrap_or(false),
                "tls" => match self.ingress_tls(v, &p) {
                    Some(tls) => r.tls = Some(tls),
                    None => ok = false,
                },
                _ => {
                    ok = false;
                    self.other_key(k, path, &INGRESS);
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
    pub(super) fn ingress_tls(&mut self, n: &Node, path: &str) -> Option<IngressTls> {
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
        for (k, v, p) in keyed(entries, path) {
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
                    self.other_key(k, path, &TLS);
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
    pub(super) fn read_pem(&mut self, file: &str, pos: Pos, path: &str) -> Option<String> {
        let full = absolutize(&self.dir(pos), file);
        let read = crate::compose::read_at_most(&full, MAX_PEM_BYTES);
        let bytes = match read {
            Ok(b) => b,
            Err(e) => {
                let hint =
                    "certificate and key paths are relative to the stack file; check the path";
                self.unreadable(pos, path, &full, &e, hint);
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
    pub(super) fn check_ingress_ports(
        &mut self,
        services: &Node,
        specs: &BTreeMap<String, ServiceSpec>,
    ) {
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
}
