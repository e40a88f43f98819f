//! `volumes:` of a service: bind mounts, named volumes and tmpfs, short and long form.

use std::path::Path;

use wharf_types::{MountKind, MountOptions, PROPAGATIONS, StackSpec, VolumeMount};

use crate::context::absolutize;
use crate::yaml::{Kind, Node, Pos};

use super::keys::*;
use super::{Cx, Entries, fields, join};

impl Cx<'_> {
    pub(super) fn mounts(&mut self, n: &Node, path: &str) -> Vec<VolumeMount> {
        let hint = "write a list such as [\"data:/var/lib/data\"]";
        self.list(n, path, hint, |cx, it, ip, out| {
            let m = match &it.kind {
                Kind::Scalar(s) => cx.mount_short(&s.text, it.pos, ip),
                Kind::Map(entries) => cx.mount_long(entries, it.pos, ip),
                Kind::Seq(_) => {
                    cx.type_error(
                        it,
                        ip,
                        "a string or a mapping",
                        "write \"name:/path\" or {type: volume, source: name, target: /path}",
                    );
                    None
                }
            };
            if let Some(m) = m {
                if !m.target.starts_with('/') {
                    cx.error(
                        it.pos,
                        format!("{ip}: the target {:?} is not an absolute path", m.target),
                        "the path inside the container must start with /",
                    );
                    return;
                }
                out.push(m);
            }
        })
    }

    /// Resolve a mount source: host paths become absolute binds, anything else names a volume.
    pub(super) fn mount_source(
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
                    absolutize(&self.dir(pos), src)
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

    pub(super) fn mount_short(&mut self, s: &str, pos: Pos, path: &str) -> Option<VolumeMount> {
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
        let mut options = MountOptions::default();
        if let Some(m) = mode {
            for opt in m.split(',') {
                match opt {
                    "ro" => read_only = true,
                    "rw" => read_only = false,
                    "nocopy" => options.nocopy = true,
                    // Docker Desktop on macOS only.
                    "cached" | "delegated" | "consistent" => {}
                    p if PROPAGATIONS.contains(&p) => options.propagation = Some(p.to_string()),
                    "z" | "Z" => {
                        self.error(
                            pos,
                            format!("{path}: SELinux relabelling ({opt}) of host paths is not supported by Wharf"),
                            "relabel the host directory (chcon) on the nodes, and remove the option",
                        );
                        return None;
                    }
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
        self.check_mount_options(kind, &options, pos, path);
        Some(VolumeMount {
            kind,
            source,
            target: target.to_string(),
            read_only,
            options,
        })
    }

    pub(super) fn mount_long(
        &mut self,
        entries: &Entries,
        pos: Pos,
        path: &str,
    ) -> Option<VolumeMount> {
        let mut kind = None;
        let mut source: Option<(String, Pos)> = None;
        let mut target = None;
        let mut read_only = false;
        let mut options = MountOptions::default();
        // Which of bind:, volume:, tmpfs: was written, for the check against the type.
        let mut sub: Vec<(&str, Pos)> = Vec::new();
        for (k, v, p) in fields(entries, path) {
            match k.name.as_str() {
                "type" => {
                    kind = Some(self.one_of(v, &p, "unsupported mount type", MOUNT_TYPES)?);
                }
                "source" => source = self.string(v, &p).map(|s| (s, v.pos)),
                "target" => target = self.string(v, &p),
                "read_only" => read_only = self.bool(v, &p).unwrap_or(false),
                "bind" | "volume" | "tmpfs" => {
                    sub.push((k.name.as_str(), k.pos));
                    self.mount_sub(k.name.as_str(), v, &p, &mut options);
                }
                _ => self.other_key(k, path, &MOUNT),
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
        for (name, at) in sub {
            let fits = matches!(
                (name, kind),
                ("bind", MountKind::Bind)
                    | ("volume", MountKind::Volume)
                    | ("tmpfs", MountKind::Tmpfs)
            );
            if !fits {
                self.error(
                    at,
                    format!("{path}.{name}: the mount is not of type {name}"),
                    format!("set type: {name}, or remove {name}:"),
                );
            }
        }
        let (kind, source) = self.mount_source(&src, src_pos, path, Some(kind))?;
        self.check_mount_options(kind, &options, pos, path);
        Some(VolumeMount {
            kind,
            source,
            target,
            read_only,
            options,
        })
    }

    /// `bind:`, `volume:` or `tmpfs:` of a long-form mount.
    fn mount_sub(&mut self, name: &str, n: &Node, path: &str, o: &mut MountOptions) {
        let Some(entries) = self.map(n, path) else {
            return;
        };
        let section = match name {
            "bind" => &MOUNT_BIND,
            "volume" => &MOUNT_VOLUME,
            _ => &MOUNT_TMPFS,
        };
        for (k, v, p) in fields(entries, path) {
            match (name, k.name.as_str()) {
                ("bind", "propagation") => {
                    let Some(s) = self.string(v, &p) else {
                        continue;
                    };
                    if PROPAGATIONS.contains(&s.as_str()) {
                        o.propagation = Some(s);
                    } else {
                        self.error(
                            v.pos,
                            format!("{p}: unknown propagation {s:?}"),
                            format!("use one of {}", PROPAGATIONS.join(", ")),
                        );
                    }
                }
                ("bind", "create_host_path") => o.create_host_path = self.bool(v, &p),
                ("volume", "nocopy") => o.nocopy = self.bool(v, &p).unwrap_or(false),
                ("volume", "subpath") => o.subpath = self.string(v, &p),
                ("tmpfs", "size") => o.tmpfs_size_bytes = self.size(v, &p),
                ("tmpfs", "mode") => o.tmpfs_mode = self.tmpfs_mode(v, &p),
                _ => self.other_key(k, path, section),
            }
        }
    }

    /// `tmpfs.mode`: permission bits, in octal whether or not written with a leading 0
    /// (`1777`, `0o755`), as the service-level `tmpfs: /run:mode=1777`.
    fn tmpfs_mode(&mut self, n: &Node, path: &str) -> Option<u32> {
        let s = self.string(n, path)?;
        let t = s.trim();
        let digits = t.strip_prefix("0o").unwrap_or(t);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if m <= 0o7777 => Some(m),
            _ => {
                self.error(
                    n.pos,
                    format!("{path}: {s:?} is not a file mode"),
                    "write permission bits in octal, such as 1777 or 755",
                );
                None
            }
        }
    }

    /// Options that do not fit the mount: a relative or escaping `subpath`.
    fn check_mount_options(&mut self, kind: MountKind, o: &MountOptions, pos: Pos, path: &str) {
        if let Some(sp) = &o.subpath
            && (kind != MountKind::Volume
                || sp.starts_with('/')
                || sp.split('/').any(|c| c == ".."))
        {
            self.error(
                pos,
                format!(
                    "{}: {sp:?} must be a relative path inside a named volume",
                    join(path, "volume.subpath")
                ),
                "write a directory of the volume such as data/app",
            );
        }
    }
}

/// Copy into every named-volume mount what the stack's top-level `volumes:` says of its volume
/// (engine name, external, driver): the agent sees only services.
pub(super) fn resolve_volumes(spec: &mut StackSpec) {
    for s in spec.services.values_mut() {
        for m in &mut s.volumes {
            if m.kind != MountKind::Volume || m.source.is_empty() {
                continue;
            }
            if let Some(v) = spec.volumes.get(&m.source) {
                let o = v.mount_options(&m.source);
                m.options.volume_name = o.volume_name;
                m.options.external = o.external;
                m.options.driver = o.driver;
                m.options.driver_opts = o.driver_opts;
            }
        }
    }
}
