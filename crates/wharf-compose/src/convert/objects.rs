//! Secrets and configs: the top-level `secrets:` and `configs:` (where each value comes from:
//! `file:`, `environment:`, `content:`, or `external: true`) and a service's `secrets:` and
//! `configs:` (short and long syntax). Values are read here, by the client, and travel beside
//! the spec (`Loaded::secret_values`), never in it.

use std::collections::BTreeMap;

use base64::Engine;
use wharf_types::{FileRef, ObjectKind, ObjectSpec, Secret};

use crate::context::absolutize;
use crate::yaml::{Kind, Node, Pos};

use super::keys::*;
use super::{Cx, fields, keyed};

/// The largest value a secret or config may hold (as Docker Swarm's); the master checks again.
pub const MAX_VALUE_BYTES: u64 = 500 * 1024;

/// A service's reference, remembered with its place until the top level is known.
pub(super) struct Reference {
    pub kind: ObjectKind,
    pub source: String,
    pub pos: Pos,
    pub path: String,
}

fn section(kind: ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Secret => "secrets",
        ObjectKind::Config => "configs",
    }
}

impl Cx<'_> {
    /// A top-level `secrets:` or `configs:` section. Names are completed with the stack's name
    /// once it is known (`name_objects`).
    pub(super) fn top_objects(
        &mut self,
        kind: ObjectKind,
        n: &Node,
    ) -> BTreeMap<String, ObjectSpec> {
        let sec = section(kind);
        let mut out = BTreeMap::new();
        let Some(entries) = self.map(n, sec) else {
            return out;
        };
        for (k, v, path) in keyed(entries, sec) {
            if !crate::valid_service_name(&k.name) {
                self.error(
                    k.pos,
                    format!("{sec}: invalid name {:?}", k.name),
                    "use letters, digits, '_', '.' or '-', starting with a letter or digit",
                );
                continue;
            }
            let Some(fields_of) = self.map(v, &path) else {
                continue;
            };
            let mut spec = ObjectSpec::default();
            let mut value: Option<Vec<u8>> = None;
            let mut sources = 0;
            let section = match kind {
                ObjectKind::Secret => &SECRET,
                ObjectKind::Config => &CONFIG,
            };
            let known = section.supported;
            let mut external_name = None;
            for (fk, fv, fpath) in fields(fields_of, &path) {
                match fk.name.as_str() {
                    "file" if known.contains(&"file") => {
                        sources += 1;
                        value = self.object_file(fv, &fpath);
                    }
                    "environment" if known.contains(&"environment") => {
                        sources += 1;
                        value = self.object_env(fv, &fpath);
                    }
                    "content" if known.contains(&"content") => {
                        sources += 1;
                        value = self.string(fv, &fpath).map(String::into_bytes);
                    }
                    "external" => {
                        let (external, name) = self.external(fv, &fpath, &OBJECT_EXTERNAL);
                        spec.external = external;
                        external_name = name.map(|n| (n, fv.pos));
                    }
                    "name" => {
                        if let Some(s) = self.string(fv, &fpath) {
                            spec.name = s;
                        }
                    }
                    _ => self.other_key(fk, &path, section),
                }
            }
            if let Some((name, pos)) = external_name {
                if !spec.name.is_empty() && spec.name != name {
                    self.error(
                        pos,
                        format!(
                            "{path}: external.name {name:?} differs from name {:?}",
                            spec.name
                        ),
                        "keep one: name: is enough",
                    );
                }
                spec.name = name;
            }
            let what = kind.as_str();
            let from = if kind == ObjectKind::Config {
                "file:, content: or environment:"
            } else {
                "file: or environment:"
            };
            if spec.external && sources > 0 {
                self.error(
                    v.pos,
                    format!("{path}: an external {what} takes no {from}"),
                    format!("remove external: true, or make the {what} with `wharf {what} create`"),
                );
            } else if !spec.external && sources == 0 {
                self.error(
                    v.pos,
                    format!("{path}: the {what} has no value"),
                    format!("give it one of {from}, or say external: true for one made with `wharf {what} create`"),
                );
            } else if sources > 1 {
                self.error(
                    v.pos,
                    format!("{path}: more than one of {from}"),
                    "keep one",
                );
            }
            if let Some(value) = value.filter(|_| sources == 1 && !spec.external) {
                if value.len() as u64 > MAX_VALUE_BYTES {
                    self.error(
                        v.pos,
                        format!(
                            "{path}: the value is {} bytes, more than the {MAX_VALUE_BYTES} a {what} may hold",
                            value.len()
                        ),
                        "keep large files in a volume; secrets are for keys and passwords",
                    );
                } else {
                    let data = Secret(base64::engine::general_purpose::STANDARD.encode(value));
                    let values = match kind {
                        ObjectKind::Secret => &mut self.secret_values,
                        ObjectKind::Config => &mut self.config_values,
                    };
                    values.insert(k.name.clone(), data);
                }
            }
            out.insert(k.name.clone(), spec);
        }
        out
    }

    /// `file:` of a secret or config: its bytes, read from under the stack file's directory.
    fn object_file(&mut self, n: &Node, path: &str) -> Option<Vec<u8>> {
        let rel = self.string(n, path)?;
        let file = absolutize(&self.dir(n.pos), &rel);
        if !self.inside(n.pos, path, "the file", &file) {
            return None;
        }
        let hint = "give a path relative to the stack file's directory";
        match std::fs::metadata(&file) {
            Ok(m) if m.len() > MAX_VALUE_BYTES => {
                self.error(
                    n.pos,
                    format!(
                        "{path}: {} is {} bytes, more than the {MAX_VALUE_BYTES} a secret or config may hold",
                        file.display(),
                        m.len()
                    ),
                    "keep large files in a volume",
                );
                return None;
            }
            Ok(_) => {}
            Err(e) => {
                self.unreadable(n.pos, path, &file, &e, hint);
                return None;
            }
        }
        match std::fs::read(&file) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                self.unreadable(n.pos, path, &file, &e, hint);
                None
            }
        }
    }

    /// `environment:` of a secret or config: the value of that variable of the caller's
    /// environment (or `.env`).
    fn object_env(&mut self, n: &Node, path: &str) -> Option<Vec<u8>> {
        let var = self.string(n, path)?;
        match self.vars.get(&var) {
            Some(v) => Some(v.as_bytes().to_vec()),
            None => {
                self.error(
                    n.pos,
                    format!("{path}: the environment variable {var} is not set"),
                    format!("export {var}=... before deploying, or put it in .env"),
                );
                None
            }
        }
    }

    /// Give every top-level entry that has no `name:` the name `<stack>_<key>`.
    pub(super) fn name_objects(spec: &mut wharf_types::StackSpec) {
        let stack = spec.name.clone();
        for (key, obj) in spec.secrets.iter_mut().chain(spec.configs.iter_mut()) {
            if obj.name.is_empty() {
                obj.name = if obj.external {
                    key.clone()
                } else {
                    format!("{stack}_{key}")
                };
            }
        }
    }

    /// A service's `secrets:` or `configs:`: a list of names, or of mappings (`source`, `target`,
    /// `uid`, `gid`, `mode`).
    pub(super) fn file_refs(&mut self, kind: ObjectKind, n: &Node, path: &str) -> Vec<FileRef> {
        let hint = "write a list of names, or of {source: NAME, target: PATH, mode: 0400}";
        self.list(n, path, hint, |cx, it, ip, out| {
            let r = match &it.kind {
                Kind::Scalar(s) => Some(FileRef {
                    source: s.text.clone(),
                    ..FileRef::default()
                }),
                Kind::Map(entries) => cx.file_ref_long(entries, it.pos, ip),
                Kind::Seq(_) => {
                    cx.type_error(it, ip, "a name or a mapping", hint);
                    None
                }
            };
            let Some(mut r) = r else { return };
            if r.target.is_empty() {
                r.target = match kind {
                    ObjectKind::Secret => format!("/run/secrets/{}", r.source),
                    ObjectKind::Config => format!("/{}", r.source),
                };
            } else if kind == ObjectKind::Secret && !r.target.starts_with('/') {
                r.target = format!("/run/secrets/{}", r.target);
            }
            let plain = std::path::Path::new(&r.target).components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            });
            if !plain || r.target.ends_with('/') {
                cx.error(
                    it.pos,
                    format!(
                        "{ip}: the target {:?} is not a plain path to a file",
                        r.target
                    ),
                    "write a file name, or an absolute path without . or .. such as /etc/app.conf",
                );
                return;
            }
            cx.references.push(Reference {
                kind,
                source: r.source.clone(),
                pos: it.pos,
                path: ip.to_string(),
            });
            out.push(r);
        })
    }

    fn file_ref_long(&mut self, entries: &super::Entries, pos: Pos, path: &str) -> Option<FileRef> {
        let mut r = FileRef::default();
        for (k, v, p) in fields(entries, path) {
            match k.name.as_str() {
                "source" => r.source = self.string(v, &p)?,
                "target" => r.target = self.string(v, &p)?,
                "uid" => r.uid = self.numeric_id(v, &p),
                "gid" => r.gid = self.numeric_id(v, &p),
                "mode" => r.mode = self.file_mode(v, &p),
                _ => self.other_key(k, path, &FILE_REF),
            }
        }
        if r.source.is_empty() {
            self.error(pos, format!("{path}: missing source"), "add `source: NAME`");
            return None;
        }
        Some(r)
    }

    /// A uid or gid: a number, written as a number or a string (`"103"`).
    fn numeric_id(&mut self, n: &Node, path: &str) -> Option<u32> {
        let s = self.string(n, path)?;
        match s.trim().parse::<u32>() {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(
                    n.pos,
                    format!("{path}: {s:?} is not a numeric id"),
                    "write the number, such as \"1000\"",
                );
                None
            }
        }
    }

    /// Permission bits: octal when written with a leading 0 (`0440`, `0o440`), as Compose reads
    /// them, else decimal.
    fn file_mode(&mut self, n: &Node, path: &str) -> Option<u32> {
        let s = self.string(n, path)?;
        let t = s.trim();
        let parsed = if let Some(o) = t.strip_prefix("0o") {
            u32::from_str_radix(o, 8)
        } else if t.len() > 1 && t.starts_with('0') {
            u32::from_str_radix(&t[1..], 8)
        } else {
            t.parse::<u32>()
        };
        match parsed {
            Ok(m) if m <= 0o777 => Some(m),
            _ => {
                self.error(
                    n.pos,
                    format!("{path}: {s:?} is not a file mode"),
                    "write permission bits in octal, such as 0440",
                );
                None
            }
        }
    }

    /// Every service's reference names a top-level entry.
    pub(super) fn check_references(&mut self, spec: &wharf_types::StackSpec) {
        for r in std::mem::take(&mut self.references) {
            let defined = match r.kind {
                ObjectKind::Secret => &spec.secrets,
                ObjectKind::Config => &spec.configs,
            };
            if !defined.contains_key(&r.source) {
                let sec = section(r.kind);
                let hint = match super::suggest(
                    &r.source,
                    &defined.keys().map(String::as_str).collect::<Vec<_>>(),
                ) {
                    Some(s) => format!("did you mean {s:?}?"),
                    None => format!("define it under the top-level {sec}:"),
                };
                self.error(
                    r.pos,
                    format!(
                        "{}: {} {:?} is not defined",
                        r.path,
                        r.kind.as_str(),
                        r.source
                    ),
                    hint,
                );
            }
        }
    }
}
