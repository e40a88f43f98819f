//! Walks the located YAML tree and produces the normalised [`StackSpec`], collecting located
//! errors (with hints) and warnings for the Compose keys Wharf ignores.
//!
//! The work is split by section: `keys` (the known keys of each), `values` (typed readers),
//! `service`, `hardening` (capabilities, security options, sysctls, ulimits, tmpfs…), `ports`,
//! `mounts`, `objects` (secrets and configs), `deploy`, `ingress`, `segments` (`networks:` of
//! services, `internal`, `allow_from`), `runtime` (how the containers run: service-level
//! resources, logging, DNS, extra hosts, devices, platform, hooks…); this module holds the context
//! (`Cx`), the entry point and the stack's top level.

mod deploy;
mod hardening;
mod ingress;
pub(crate) mod keys;
mod mounts;
mod objects;
mod ports;
mod runtime;
mod segments;
mod service;
mod values;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use wharf_types::{NetworkSpec, ObjectKind, StackSpec, VolumeSpec};

use crate::compose::{Composed, Source};
use crate::interp::{DotenvError, Vars};
use crate::yaml::{Key, Kind, Node, Pos};
use crate::{ComposeError, ComposeErrors, LoadOptions, Loaded, Location, Warning};
use keys::*;

type Entries = [(Key, Node)];

struct Cx<'a> {
    /// The stack's files: `Pos::file` indexes them.
    files: &'a [Source],
    /// The first file's directory: what the stack reads must be under it (`confined`).
    base: PathBuf,
    vars: Vars<'a>,
    errors: Vec<ComposeError>,
    warnings: Vec<Warning>,
    /// Named volumes declared at top level.
    volumes: BTreeSet<String>,
    /// `depends_on` edges: (service, dependency, location of the entry).
    edges: Vec<(String, String, Pos)>,
    /// Networks services name: (service, network, location of the entry).
    network_refs: Vec<(String, String, Pos)>,
    /// `depends_on` entries with `required: false`: dropped when the service does not exist.
    optional_deps: BTreeSet<(String, String)>,
    /// Files and directories the stack reads must be under `base` (symbolic links followed).
    confined: bool,
    /// The values of the stack's own secrets and configs, base64, by top-level key.
    secret_values: BTreeMap<String, wharf_types::Secret>,
    config_values: BTreeMap<String, wharf_types::Secret>,
    /// Services' `secrets:`/`configs:` entries, checked once the top level is read.
    references: Vec<objects::Reference>,
    /// Where the fields the admission policy judges were written (`Loaded::sources`).
    sources: BTreeMap<String, String>,
}

/// Convert the composed tree; its errors and warnings come first.
pub fn load(composed: Composed, opts: &LoadOptions) -> Result<Loaded, ComposeErrors> {
    let Composed {
        root,
        files,
        base,
        dotenv,
        errors,
        warnings,
    } = composed;
    let mut cx = Cx {
        files: &files,
        base,
        vars: Vars {
            env: &opts.env,
            dotenv,
        },
        errors,
        warnings,
        volumes: BTreeSet::new(),
        edges: Vec::new(),
        network_refs: Vec::new(),
        optional_deps: BTreeSet::new(),
        confined: !opts.allow_outside,
        secret_values: BTreeMap::new(),
        config_values: BTreeMap::new(),
        references: Vec::new(),
        sources: BTreeMap::new(),
    };
    let spec = cx.stack(&root, opts);
    // Report in file order (stable: same-position problems keep their order).
    cx.warnings.sort_by(|a, b| a.location.cmp(&b.location));
    cx.errors.sort_by(|a, b| a.location.cmp(&b.location));
    if cx.errors.is_empty() {
        Ok(Loaded {
            spec,
            warnings: cx.warnings,
            secret_values: cx.secret_values,
            config_values: cx.config_values,
            sources: cx.sources,
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
    // Only names within reach of one (edit distances cost length times length).
    let lower = name.to_ascii_lowercase();
    known
        .iter()
        .filter(|k| lower.len() <= 2 * k.len() + 2)
        .map(|k| (strsim::damerau_levenshtein(&lower, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The entries of a mapping that have a value (null ones are skipped), each with its path: what
/// the sections' key loops walk.
fn fields<'n>(
    entries: &'n Entries,
    path: &'n str,
) -> impl Iterator<Item = (&'n Key, &'n Node, String)> {
    keyed(entries, path).filter(|(_, v, _)| !v.is_null())
}

/// The entries of a mapping, each with its path.
fn keyed<'n>(
    entries: &'n Entries,
    path: &'n str,
) -> impl Iterator<Item = (&'n Key, &'n Node, String)> {
    entries
        .iter()
        .map(move |(k, v)| (k, v, join(path, &k.name)))
}

/// The items of a list, each with its path (`path[i]`).
fn items<'n>(items: &'n [Node], path: &'n str) -> impl Iterator<Item = (&'n Node, String)> {
    items
        .iter()
        .enumerate()
        .map(move |(i, it)| (it, format!("{path}[{i}]")))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn valid_volume_name(name: &str) -> bool {
    crate::valid_service_name(name)
}

impl Cx<'_> {
    pub(super) fn loc(&self, pos: Pos) -> Location {
        Location {
            file: self.files[pos.file as usize].label.clone(),
            line: pos.line,
            column: pos.col,
        }
    }

    /// The directory relative paths written at `pos` resolve against: their file's.
    pub(super) fn dir(&self, pos: Pos) -> PathBuf {
        self.files[pos.file as usize].dir.clone()
    }

    pub(super) fn error(&mut self, pos: Pos, message: String, hint: impl Into<String>) {
        let location = Some(self.loc(pos));
        self.errors.push(ComposeError {
            location,
            message: wharf_types::excerpt(&message, crate::MAX_MESSAGE_CHARS),
            hint: Some(hint.into()),
        });
    }

    /// Remember where the field `path` (and each item of a list) was written.
    pub(super) fn record_source(&mut self, path: &str, pos: Pos, value: &Node) {
        let at = self.loc(pos).to_string();
        self.sources.insert(path.to_string(), at);
        if let Kind::Seq(list) = &value.kind {
            for (it, ip) in items(list, path) {
                let at = self.loc(it.pos).to_string();
                self.sources.insert(ip, at);
            }
        }
    }

    pub(super) fn warn(&mut self, pos: Pos, message: String) {
        let location = self.loc(pos);
        let message = wharf_types::excerpt(&message, crate::MAX_MESSAGE_CHARS);
        self.warnings.push(Warning { location, message });
    }

    /// A syntax error in a `.env` or `env_file` file, located in that file.
    pub(super) fn dotenv_error(&mut self, file: &Path, e: DotenvError) {
        self.errors.push(ComposeError {
            location: Some(Location {
                file: file.display().to_string(),
                line: e.line,
                column: 1,
            }),
            message: e.message,
            hint: Some("write one KEY=value per line".into()),
        });
    }

    /// A file the stack file names that cannot be read (`{path}: cannot read {file}: {reason}`).
    /// Whether the stack may read `file` (the `what` of `path`): under the stack file's
    /// directory, once symbolic links are followed, unless `allow_outside`. Else an error at
    /// `pos` naming the path, and false.
    pub(super) fn inside(&mut self, pos: Pos, path: &str, what: &str, file: &Path) -> bool {
        if !self.confined {
            return true;
        }
        let real = crate::real_path;
        if real(file).starts_with(real(&self.base)) {
            return true;
        }
        self.error(
            pos,
            format!(
                "{path}: {what} {} is outside the stack file's directory {}",
                real(file).display(),
                self.base.display()
            ),
            "move it next to the stack file, or pass --allow-outside if you trust this stack file",
        );
        false
    }

    pub(super) fn unreadable(
        &mut self,
        pos: Pos,
        path: &str,
        file: &Path,
        e: &std::io::Error,
        hint: &str,
    ) {
        let reason = if e.kind() == std::io::ErrorKind::NotFound {
            "not found".to_string()
        } else {
            e.to_string().to_lowercase()
        };
        self.error(
            pos,
            format!("{path}: cannot read {}: {reason}", file.display()),
            hint,
        );
    }

    /// Handle a key the section does not convert itself: ignore `x-*`; a refused key is an
    /// error saying why and what to do instead, a warned one a warning saying why nothing that
    /// runs changes; anything else is an error with a did-you-mean hint.
    pub(super) fn other_key(&mut self, key: &Key, path: &str, section: &Section) {
        if key.name.starts_with("x-") {
            return;
        }
        let full = join(path, &key.name);
        match section.support(&key.name) {
            Some(Support::Refused { why, instead }) => {
                self.error(
                    key.pos,
                    format!("{full} is not supported by Wharf: {why}"),
                    instead,
                );
                return;
            }
            Some(Support::Warned { why }) => {
                self.warn(key.pos, format!("{full} is ignored: {why}"));
                return;
            }
            // A supported key no converter read: say so rather than run without it.
            Some(Support::Supported) => {
                self.error(
                    key.pos,
                    format!("{full}: Wharf lists this key as supported but did not read it"),
                    "this is a bug in Wharf; please report it",
                );
                return;
            }
            None => {}
        }
        let hint = match suggest(&key.name, &section.all()) {
            Some(s) => format!("did you mean {s:?}?"),
            None => format!(
                "the keys allowed here are: {}",
                section.supported.join(", ")
            ),
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

    pub(super) fn type_error(&mut self, n: &Node, path: &str, expected: &str, hint: &str) {
        self.error(
            n.pos,
            format!("{path}: expected {expected}, found {}", n.describe()),
            hint,
        );
    }

    pub(super) fn stack(&mut self, root: &Node, opts: &LoadOptions) -> StackSpec {
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
                "secrets" => spec.secrets = self.top_objects(ObjectKind::Secret, v),
                "configs" => spec.configs = self.top_objects(ObjectKind::Config, v),
                _ => self.other_key(k, "", &TOP),
            }
        }
        spec.name = self.stack_name(opts, name);
        match services {
            Some((_, v)) => spec.services = self.services(v),
            None => self.error(
                root.pos,
                "the stack file has no services section".into(),
                "add a services: mapping with at least one service",
            ),
        }
        self.check_depends(&mut spec);
        self.check_networks(&mut spec);
        mounts::resolve_volumes(&mut spec);
        Cx::name_objects(&mut spec);
        self.check_references(&spec);
        spec
    }

    pub(super) fn stack_name(
        &mut self,
        opts: &LoadOptions,
        from_file: Option<(String, Pos)>,
    ) -> String {
        let file = self.files[0].label.clone();
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

    pub(super) fn top_volumes(&mut self, n: &Node) -> BTreeMap<String, VolumeSpec> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.map(n, "volumes") else {
            return out;
        };
        for (k, v, path) in keyed(entries, "volumes") {
            if !valid_volume_name(&k.name) {
                self.error(
                    k.pos,
                    format!("volumes: invalid volume name {:?}", k.name),
                    "use letters, digits, '_', '.' or '-', starting with a letter or digit",
                );
            }
            let mut spec = VolumeSpec::default();
            let mut external_name = None;
            if let Some(entries) = self.map(v, &path) {
                for (fk, fv, fpath) in fields(entries, &path) {
                    match fk.name.as_str() {
                        "driver" => spec.driver = self.string(fv, &fpath),
                        "driver_opts" => spec.driver_opts = self.labels(fv, &fpath),
                        "labels" => spec.labels = self.labels(fv, &fpath),
                        "external" => {
                            let (external, name) = self.external(fv, &fpath, &VOLUME_EXTERNAL);
                            spec.external = external;
                            external_name = name.map(|n| (n, fv.pos));
                        }
                        "name" => {
                            spec.name = self.string(fv, &fpath);
                            self.check_volume_name(spec.name.as_deref(), fv.pos, &fpath);
                        }
                        _ => self.other_key(fk, &path, &VOLUME),
                    }
                }
            }
            if let Some((name, pos)) = external_name {
                let fpath = format!("{path}.external.name");
                self.check_volume_name(Some(&name), pos, &fpath);
                if spec.name.as_ref().is_some_and(|n| *n != name) {
                    self.error(
                        pos,
                        format!(
                            "{fpath}: {name:?} differs from name {:?}",
                            spec.name.as_deref().unwrap_or_default()
                        ),
                        "keep one: name: is enough",
                    );
                }
                spec.name = Some(name);
            }
            if spec.external && (spec.driver.is_some() || !spec.driver_opts.is_empty()) {
                self.error(
                    v.pos,
                    format!("{path}: an external volume takes no driver or driver_opts"),
                    "Wharf never creates an external volume: create it with the options you need, or drop external",
                );
            }
            self.volumes.insert(k.name.clone());
            out.insert(k.name.clone(), spec);
        }
        out
    }

    /// `external:` of a top-level volume, network, secret or config: a boolean, or a mapping
    /// (`{name: ...}`, the keys of `section`), which means true; with the name it gives.
    pub(super) fn external(
        &mut self,
        n: &Node,
        path: &str,
        section: &Section,
    ) -> (bool, Option<String>) {
        match &n.kind {
            Kind::Map(entries) => {
                let mut name = None;
                for (k, v, p) in fields(entries, path) {
                    match k.name.as_str() {
                        "name" if section.supported.contains(&"name") => {
                            name = self.string(v, &p);
                        }
                        _ => self.other_key(k, path, section),
                    }
                }
                (true, name)
            }
            _ => (self.bool(n, path).unwrap_or(false), None),
        }
    }

    /// A volume's engine name (`name:`, `external.name`): what `docker volume create` accepts.
    fn check_volume_name(&mut self, name: Option<&str>, pos: Pos, path: &str) {
        if let Some(n) = name
            && !valid_volume_name(n)
        {
            self.error(
                pos,
                format!("{path}: invalid volume name {n:?}"),
                "use letters, digits, '_', '.' or '-', starting with a letter or digit",
            );
        }
    }

    pub(super) fn top_networks(&mut self, n: &Node) -> BTreeMap<String, NetworkSpec> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.map(n, "networks") else {
            return out;
        };
        for (k, v, path) in keyed(entries, "networks") {
            let mut spec = NetworkSpec::default();
            if let Some(entries) = self.map(v, &path) {
                for (fk, fv, fpath) in fields(entries, &path) {
                    match fk.name.as_str() {
                        "driver" => spec.driver = self.string(fv, &fpath),
                        "external" => {
                            spec.external = self.external(fv, &fpath, &NETWORK_EXTERNAL).0;
                        }
                        "internal" => spec.internal = self.bool(fv, &fpath).unwrap_or(false),
                        _ => self.other_key(fk, &path, &NETWORK),
                    }
                }
            }
            out.insert(k.name.clone(), spec);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::values::shell_split;
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

    /// An enum-valued key's error names the closest accepted value when there is one, and all of
    /// them otherwise, from the same table that maps them.
    #[test]
    fn a_value_not_in_the_table_is_refused_with_a_hint_from_the_table() {
        let load = |mode: &str| {
            let src =
                format!("services:\n  web:\n    image: nginx\n    deploy:\n      mode: {mode}\n");
            let opts = LoadOptions::default();
            match crate::load_str(&src, "stack.yaml", Path::new("/tmp"), &opts) {
                Ok(l) => Ok(l.spec.services["web"].deploy.mode),
                Err(e) => Err(e.0.into_iter().next().expect("one error")),
            }
        };
        assert_eq!(load("global"), Ok(wharf_types::DeployMode::Global));
        let e = load("globl").unwrap_err();
        assert_eq!(
            e.message,
            "services.web.deploy.mode: unsupported mode \"globl\""
        );
        assert_eq!(e.hint.as_deref(), Some("did you mean \"global\"?"));
        let at = e.location.expect("located");
        assert_eq!((at.line, at.column), (5, 13));
        let e = load("everywhere").unwrap_err();
        assert_eq!(
            e.hint.as_deref(),
            Some("use replicated, global, replicated-job or global-job")
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("imgae", SERVICE.supported), Some("image"));
        assert_eq!(
            suggest("enviroment", SERVICE.supported),
            Some("environment")
        );
        assert_eq!(suggest("zzzzzzzz", SERVICE.supported), None);
    }
}
