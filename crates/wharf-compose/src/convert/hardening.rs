//! A service's hardening keys (`cap_add`, `cap_drop`, `privileged`, `read_only`,
//! `security_opt`, `sysctls`, `ulimits`, `tmpfs`, `pids_limit`, `userns_mode`) and
//! `network_mode`, read into [`Hardening`]; the checks on the typed values are
//! `crate::hardening`'s, located here at their keys.

use wharf_types::{
    CAPABILITIES, Hardening, NetworkMode, Seccomp, TMPFS_FLAGS, TmpfsMount, ULIMITS, Ulimit,
    UsernsMode, capability,
};

use crate::context::absolutize;
use crate::units;
use crate::yaml::{Key, Kind, Node, Pos};

use super::{Cx, fields, items, suggest};

/// `userns_mode:` values.
const USERNS_MODES: &[(&str, UsernsMode)] = &[("host", UsernsMode::Host)];

impl Cx<'_> {
    /// Read one hardening key of a service into `h`; false when `key` is not one.
    pub(super) fn hardening_key(
        &mut self,
        key: &Key,
        v: &Node,
        p: &str,
        h: &mut Hardening,
        network: &mut Option<NetworkMode>,
    ) -> bool {
        match key.name.as_str() {
            "cap_add" => h.cap_add = self.capabilities(v, p),
            "cap_drop" => h.cap_drop = self.capabilities(v, p),
            "privileged" => h.privileged = self.bool(v, p).unwrap_or(false),
            "read_only" => h.read_only = self.bool(v, p).unwrap_or(false),
            "security_opt" => self.security_opt(v, p, h),
            "sysctls" => {
                for (k, val, pos) in self.key_values(v, p) {
                    match val {
                        Some(val) => {
                            h.sysctls.insert(k, val);
                        }
                        None => self.error(
                            pos,
                            format!("{p}: {k} has no value"),
                            "write `name: value`, such as net.core.somaxconn: 1024",
                        ),
                    }
                }
            }
            "ulimits" => self.ulimits(v, p, h),
            "tmpfs" => h.tmpfs = self.tmpfs(v, p),
            "pids_limit" => h.pids_limit = self.int(v, p),
            "userns_mode" => {
                h.userns_mode = self.one_of(v, p, "unsupported userns_mode", USERNS_MODES);
            }
            "network_mode" => *network = self.network_mode(v, p),
            _ => return false,
        }
        true
    }

    /// A signed integer.
    fn int(&mut self, n: &Node, path: &str) -> Option<i64> {
        if let Kind::Scalar(s) = &n.kind
            && let Ok(v) = s.text.trim().parse::<i64>()
        {
            return Some(v);
        }
        self.type_error(
            n,
            path,
            "an integer",
            "write a whole number, e.g. 100 or -1",
        );
        None
    }

    fn capabilities(&mut self, n: &Node, path: &str) -> Vec<String> {
        let hint = "write a list such as [NET_ADMIN, SYS_TIME]";
        self.list(n, path, hint, |cx, it, ip, out| {
            let Some(s) = cx.string(it, ip) else { return };
            match capability(&s) {
                Some(c) if !out.contains(&c) => out.push(c),
                Some(_) => {}
                None => {
                    let upper = s.to_ascii_uppercase();
                    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
                    let lower: Vec<String> = CAPABILITIES
                        .iter()
                        .map(|c| c.to_ascii_lowercase())
                        .collect();
                    let names: Vec<&str> = lower.iter().map(String::as_str).collect();
                    let hint = match suggest(bare, &names) {
                        Some(c) => format!("did you mean {:?}?", c.to_ascii_uppercase()),
                        None => {
                            "name a Linux capability such as NET_ADMIN (capabilities(7)), or ALL"
                                .into()
                        }
                    };
                    cx.error(it.pos, format!("{ip}: unknown capability {s:?}"), hint);
                }
            }
        })
    }

    fn security_opt(&mut self, n: &Node, path: &str, h: &mut Hardening) {
        let Some(list) = self.seq(n, path, "a list", "write [no-new-privileges:true]") else {
            return;
        };
        for (it, ip) in items(list, path) {
            let Some(s) = self.string(it, &ip) else {
                continue;
            };
            // Docker takes `key=value` and the older `key:value`.
            let (key, value) = match s.find(['=', ':']) {
                Some(i) => (&s[..i], Some(&s[i + 1..])),
                None => (s.as_str(), None),
            };
            match (key, value) {
                ("no-new-privileges", None | Some("true")) => h.no_new_privileges = true,
                ("no-new-privileges", Some("false")) => h.no_new_privileges = false,
                ("seccomp", Some("unconfined")) => h.seccomp = Some(Seccomp::Unconfined),
                ("seccomp", Some(file)) if !file.is_empty() => {
                    h.seccomp = self.seccomp_profile(file, it.pos, &ip).map(Seccomp::Profile);
                }
                ("apparmor", Some(name)) if !name.is_empty() => {
                    h.apparmor = Some(name.to_string());
                }
                ("label", _) => self.error(
                    it.pos,
                    format!("{ip}: SELinux labels ({s:?}) are not supported by Wharf"),
                    "remove it: containers get the engine's default SELinux label",
                ),
                _ => self.error(
                    it.pos,
                    format!("{ip}: unsupported security option {:?}", wharf_types::excerpt(&s, 80)),
                    "use no-new-privileges[:true|false], seccomp=unconfined|FILE.json or apparmor=PROFILE",
                ),
            }
        }
    }

    /// A seccomp profile file next to the stack file, as compact JSON.
    fn seccomp_profile(&mut self, file: &str, pos: Pos, path: &str) -> Option<String> {
        let full = absolutize(&self.dir(pos), file);
        if !self.inside(pos, path, "the seccomp profile", &full) {
            return None;
        }
        let max = crate::hardening::MAX_SECCOMP_BYTES;
        let read = crate::compose::read_at_most(&full, max);
        let bytes = match read {
            Ok(b) => b,
            Err(e) => {
                let hint = "the profile's path is relative to the stack file; check it";
                self.unreadable(pos, path, &full, &e, hint);
                return None;
            }
        };
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) if v.is_object() => Some(v.to_string()),
            Ok(_) | Err(_) => {
                self.error(
                    pos,
                    format!("{path}: {} is not a JSON seccomp profile", full.display()),
                    "write a JSON object as Docker's default profile (moby/profiles/seccomp/default.json)",
                );
                None
            }
        }
    }

    fn ulimits(&mut self, n: &Node, path: &str, h: &mut Hardening) {
        let Some(entries) = self.map(n, path) else {
            return;
        };
        for (k, v, p) in fields(entries, path) {
            if !ULIMITS.contains(&k.name.as_str()) {
                let hint = match suggest(&k.name, ULIMITS) {
                    Some(s) => format!("did you mean {s:?}?"),
                    None => format!("use one of {}", ULIMITS.join(", ")),
                };
                self.error(k.pos, format!("{path}: unknown ulimit {:?}", k.name), hint);
                continue;
            }
            let limit = match &v.kind {
                Kind::Map(pair) => {
                    let (mut soft, mut hard) = (None, None);
                    for (fk, fv, fp) in fields(pair, &p) {
                        match fk.name.as_str() {
                            "soft" => soft = self.int(fv, &fp),
                            "hard" => hard = self.int(fv, &fp),
                            _ => self.other_key(fk, &p, &super::keys::ULIMIT),
                        }
                    }
                    match (soft, hard) {
                        (Some(soft), Some(hard)) => Some(Ulimit { soft, hard }),
                        _ => {
                            self.error(
                                v.pos,
                                format!("{p}: needs both soft and hard"),
                                "write {soft: 1024, hard: 4096}, or one number for both",
                            );
                            None
                        }
                    }
                }
                _ => self.int(v, &p).map(|n| Ulimit { soft: n, hard: n }),
            };
            if let Some(u) = limit {
                h.ulimits.insert(k.name.clone(), u);
            }
        }
    }

    fn tmpfs(&mut self, n: &Node, path: &str) -> Vec<TmpfsMount> {
        let one = |cx: &mut Self, it: &Node, ip: &str, out: &mut Vec<TmpfsMount>| {
            let Some(s) = cx.string(it, ip) else { return };
            if let Some(t) = cx.tmpfs_entry(&s, it.pos, ip) {
                out.push(t);
            }
        };
        let mut out = Vec::new();
        match &n.kind {
            Kind::Scalar(_) => one(self, n, path, &mut out),
            _ => out = self.list(n, path, "write /run or [/run, \"/tmp:size=64m\"]", one),
        }
        out
    }

    /// `/run` or `/run:size=64m,mode=1777,noexec`.
    fn tmpfs_entry(&mut self, s: &str, pos: Pos, path: &str) -> Option<TmpfsMount> {
        let (target, opts) = s.split_once(':').unwrap_or((s, ""));
        let mut t = TmpfsMount {
            target: target.to_string(),
            ..TmpfsMount::default()
        };
        let hint = "write /path[:size=64m,mode=1777,noexec]";
        for o in opts.split(',').filter(|o| !o.is_empty()) {
            match o.split_once('=') {
                Some(("size", v)) => match units::parse_size(v) {
                    Ok(b) => t.size_bytes = Some(b),
                    Err(e) => {
                        self.error(pos, format!("{path}: {e}"), "write a size such as 64m");
                        return None;
                    }
                },
                Some(("mode", v)) => match u32::from_str_radix(v, 8) {
                    Ok(m) => t.mode = Some(m),
                    Err(_) => {
                        self.error(
                            pos,
                            format!("{path}: invalid mode {v:?}"),
                            "write octal bits such as 1777",
                        );
                        return None;
                    }
                },
                _ if TMPFS_FLAGS.contains(&o) => t.options.push(o.to_string()),
                _ => {
                    self.error(
                        pos,
                        format!("{path}: unknown tmpfs option {o:?} in {s:?}"),
                        hint,
                    );
                    return None;
                }
            }
        }
        if !t.target.starts_with('/') {
            self.error(
                pos,
                format!("{path}: the target {:?} is not an absolute path", t.target),
                "the path inside the container must start with /",
            );
            return None;
        }
        Some(t)
    }

    /// `host` runs on the host's network; `none`, `bridge` and `service:`/`container:` are
    /// warned about (the service joins its stack network, as before).
    fn network_mode(&mut self, n: &Node, path: &str) -> Option<NetworkMode> {
        let s = self.string(n, path)?;
        match s.as_str() {
            "host" => Some(NetworkMode::Host),
            "none" | "bridge" | "default" => {
                self.ignored_network_mode(n.pos, path, &s);
                None
            }
            other if other.starts_with("service:") || other.starts_with("container:") => {
                self.ignored_network_mode(n.pos, path, &s);
                None
            }
            _ => {
                self.error(
                    n.pos,
                    format!(
                        "{path}: unknown network_mode {:?}",
                        wharf_types::excerpt(&s, 80)
                    ),
                    "use host (or leave it out: the service joins its stack's network)",
                );
                None
            }
        }
    }

    fn ignored_network_mode(&mut self, pos: Pos, path: &str, mode: &str) {
        self.warn(
            pos,
            format!(
                "{path} {mode:?} is not supported by Wharf yet and is ignored: the service joins its stack's network"
            ),
        );
    }
}
