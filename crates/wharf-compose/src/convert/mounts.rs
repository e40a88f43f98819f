//! `volumes:` of a service: bind mounts, named volumes and tmpfs, short and long form.

use std::path::Path;

use wharf_types::{MountKind, VolumeMount};

use crate::context::absolutize;
use crate::yaml::{Kind, Node, Pos};

use super::keys::*;
use super::{Cx, Entries, fields};

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
        for (k, v, p) in fields(entries, path) {
            match k.name.as_str() {
                "type" => {
                    kind = Some(self.one_of(v, &p, "unsupported mount type", MOUNT_TYPES)?);
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
}
