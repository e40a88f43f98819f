//! Composition: the files a stack is made of become one located YAML tree, the Compose way,
//! before conversion.
//!
//! The stages, in Compose's order (compose-go's loader): each file is read (within the input
//! budgets), parsed and interpolated with its own project's variables (interpolation is textual,
//! so it must come before anything moves values between files); then its services' `extends`
//! are resolved (a service may only extend what its own file, or the file it names, declares);
//! then its `include`s are loaded as sub-projects and added (an included file may itself extend
//! and include); then it is merged over the files before it (`merge`). Last, services whose
//! profiles are not enabled are removed, so nothing later sees them.
//!
//! Every node keeps its place: `Pos::file` indexes the [`Source`]s, so an error names the file a
//! value came from, and a relative path resolves against that file's directory: an extended
//! file's own, an included project's `project_directory`, the first file's for the stack files
//! and overrides (Compose's rule for `-f a.yml -f b.yml`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::context::absolutize;
use crate::interp::{Vars, interpolate, parse_dotenv};
use crate::merge;
use crate::yaml::{self, Key, Kind, Node, Pos, Scalar};
use crate::{ComposeError, ComposeErrors, Input, LoadOptions, Location, Warning};

/// The most files one stack may be composed of (stack files, overrides, extended and included
/// files), each at most `yaml::MAX_INPUT_BYTES`.
pub const MAX_FILES: usize = 64;

/// The top-level sections whose entries an included file adds (and may not redefine).
const RESOURCES: [&str; 5] = ["services", "volumes", "networks", "secrets", "configs"];

const OUTSIDE_HINT: &str =
    "move it next to the stack file, or pass --allow-outside if you trust this stack file";

/// One file of the stack.
pub struct Source {
    /// How locations name it: the path as given (or as found from the file naming it).
    pub label: String,
    /// The directory its relative paths resolve against.
    pub dir: PathBuf,
}

/// The stack's files as one tree, ready for conversion.
pub struct Composed {
    pub root: Node,
    pub files: Vec<Source>,
    /// The first file's directory: the default stack name comes from it, and what the stack
    /// reads must be under it unless `allow_outside`.
    pub base: PathBuf,
    /// The variables of the first file's `.env`.
    pub dotenv: BTreeMap<String, String>,
    /// Problems that do not stop conversion (duplicate keys, interpolation errors).
    pub errors: Vec<ComposeError>,
    pub warnings: Vec<Warning>,
}

struct Loader<'o> {
    opts: &'o LoadOptions,
    base: PathBuf,
    files: Vec<Source>,
    /// Each file's tree as read and interpolated, by file index.
    trees: Vec<Node>,
    /// The project variables (`.env` and the like) each file was interpolated with: an index
    /// into `projects`.
    file_project: Vec<usize>,
    projects: Vec<BTreeMap<String, String>>,
    /// Files already read: (real path, directory, project) -> file index.
    loaded: HashMap<(PathBuf, PathBuf, usize), u32>,
    /// Services with their `extends` resolved: (file, service) -> service.
    resolved: HashMap<(u32, String), Option<Node>>,
    /// The services being resolved, outermost first, with their `extends` node: cycle detection.
    extending: Vec<(u32, String, Pos)>,
    /// The files being included, outermost first: cycle detection.
    including: Vec<(PathBuf, String)>,
    /// Problems that stop the load before conversion.
    errors: Vec<ComposeError>,
    soft: Vec<ComposeError>,
    warnings: Vec<Warning>,
}

/// Load `inputs` (the first is the stack file, the others override it in order) into one tree.
pub fn compose(inputs: &[Input], opts: &LoadOptions) -> Result<Composed, ComposeErrors> {
    let Some(first) = inputs.first() else {
        return Err(unlocated("no stack file given".into(), "name a stack file").into());
    };
    let dir = match first {
        Input::File(p) => absolute(p)
            .parent()
            .map_or_else(|| "/".into(), Path::to_path_buf),
        Input::Text { dir, .. } => absolute(dir),
    };
    let mut l = Loader {
        opts,
        base: dir.clone(),
        files: Vec::new(),
        trees: Vec::new(),
        file_project: Vec::new(),
        projects: Vec::new(),
        loaded: HashMap::new(),
        resolved: HashMap::new(),
        extending: Vec::new(),
        including: Vec::new(),
        errors: Vec::new(),
        soft: Vec::new(),
        warnings: Vec::new(),
    };
    let dotenv = l.dotenv(&[dir.join(".env")], false);
    l.projects.push(dotenv.clone());
    let mut root: Option<Node> = None;
    for (i, input) in inputs.iter().enumerate() {
        let Some((idx, real)) = l.read_input(input, &dir) else {
            continue;
        };
        if i == 0 && l.trees[idx as usize].is_null() {
            let at = Pos {
                file: idx,
                ..Pos::START
            };
            let hint = "add a services: section with at least one service";
            l.error(at, "the stack file is empty".into(), hint);
            continue;
        }
        l.including
            .push((real, l.files[idx as usize].label.clone()));
        let tree = l.file(idx);
        l.including.pop();
        root = Some(match root {
            None => tree,
            Some(r) => merge::merge_top(r, tree),
        });
    }
    let mut root = match root {
        Some(r) if l.errors.is_empty() => r,
        _ => return Err(l.failed()),
    };
    l.profiles(&mut root);
    if !l.errors.is_empty() {
        return Err(l.failed());
    }
    Ok(Composed {
        root,
        files: l.files,
        base: dir,
        dotenv,
        errors: l.soft,
        warnings: l.warnings,
    })
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The path with symbolic links followed.
fn real(p: &Path) -> PathBuf {
    crate::real_path(p)
}

fn unlocated(message: String, hint: &str) -> ComposeError {
    ComposeError {
        location: None,
        message: short(&message),
        hint: Some(hint.to_string()),
    }
}

/// A file reference Wharf cannot read: a URL, `git@…`, or another loader's `scheme:path`.
fn remote(f: &str) -> bool {
    let scheme = f.split_once(':').map(|(s, _)| s);
    f.starts_with("git@")
        || scheme.is_some_and(|s| {
            s.len() > 1
                && s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        })
}

fn strings(n: &Node) -> Option<Vec<(String, Pos)>> {
    match &n.kind {
        Kind::Scalar(s) if !n.is_null() => Some(vec![(s.text.clone(), n.pos)]),
        Kind::Seq(items) => items
            .iter()
            .map(|it| it.text().map(|t| (t.to_string(), it.pos)))
            .collect(),
        _ => None,
    }
}

fn remove_key(n: &mut Node, key: &str) -> Option<Node> {
    let Kind::Map(entries) = &mut n.kind else {
        return None;
    };
    let i = entries.iter().position(|(k, _)| k.name == key)?;
    Some(entries.remove(i).1)
}

fn entries_mut(n: &mut Node) -> Option<&mut Vec<(Key, Node)>> {
    match &mut n.kind {
        Kind::Map(entries) => Some(entries),
        _ => None,
    }
}

impl Loader<'_> {
    fn loc(&self, pos: Pos) -> Location {
        Location {
            file: self.files[pos.file as usize].label.clone(),
            line: pos.line,
            column: pos.col,
        }
    }

    fn error(&mut self, pos: Pos, message: String, hint: impl Into<String>) {
        self.errors.push(ComposeError {
            location: Some(self.loc(pos)),
            message: short(&message),
            hint: Some(hint.into()),
        });
    }

    /// An error at `at`, or unlocated (a file named on the command line).
    fn error_at(&mut self, at: Option<Pos>, message: String, hint: &str) {
        match at {
            Some(pos) => self.error(pos, message, hint),
            None => self.errors.push(unlocated(message, hint)),
        }
    }

    fn failed(mut self) -> ComposeErrors {
        self.errors.append(&mut self.soft);
        self.errors.sort_by(|a, b| a.location.cmp(&b.location));
        ComposeErrors(self.errors)
    }

    /// The label of a file found at `full`: relative to the first file's label where it is under
    /// the stack's directory, else absolute.
    fn label_for(&self, full: &Path) -> String {
        let first = Path::new(&self.files[0].label);
        match full.strip_prefix(&self.base) {
            Ok(rel) => first
                .parent()
                .map_or_else(|| rel.to_path_buf(), |p| p.join(rel))
                .display()
                .to_string(),
            Err(_) => full.display().to_string(),
        }
    }

    /// Whether the stack may read `full` (named at `pos` by `path`): under the stack's directory
    /// once links are followed, unless `allow_outside`.
    fn inside(&mut self, pos: Pos, path: &str, what: &str, full: &Path) -> bool {
        if self.opts.allow_outside || real(full).starts_with(real(&self.base)) {
            return true;
        }
        let message = format!(
            "{path}: {what} {} is outside the stack file's directory {}",
            real(full).display(),
            self.base.display()
        );
        self.error(pos, message, OUTSIDE_HINT);
        false
    }

    fn remote_refused(&mut self, pos: Pos, path: &str, f: &str) -> bool {
        if !remote(f) {
            return false;
        }
        let message = format!("{path}: remote file {f:?} is not supported");
        let hint = "download the file next to the stack file and name the local copy";
        self.error(pos, message, hint);
        true
    }

    /// The variables of `.env`-style files, the first ones winning; missing files are skipped
    /// unless `required`.
    fn dotenv(&mut self, files: &[PathBuf], required: bool) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for f in files {
            let text = match read_at_most(f, yaml::MAX_INPUT_BYTES as u64) {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(_) if !required => continue,
                Err(e) => {
                    let message = format!("cannot read {}: {}", f.display(), lower(&e));
                    self.errors
                        .push(unlocated(message, "check the env_file of the include"));
                    continue;
                }
            };
            match parse_dotenv(&text) {
                Ok(entries) => {
                    for (k, v) in entries {
                        if let Some(v) = v {
                            out.entry(k).or_insert(v);
                        }
                    }
                }
                Err(e) => self.soft.push(ComposeError {
                    location: Some(Location {
                        file: f.display().to_string(),
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

    /// A file of the command line (its relative paths resolve against `dir`, the first one's
    /// directory), and its real path.
    fn read_input(&mut self, input: &Input, dir: &Path) -> Option<(u32, PathBuf)> {
        match input {
            Input::File(p) => {
                let label = p.display().to_string();
                let idx = self.read(&absolute(p), label, dir.to_path_buf(), 0, None)?;
                Some((idx, real(&absolute(p))))
            }
            Input::Text { label, text, .. } => {
                let idx = self.parse(text, label.clone(), dir.to_path_buf(), 0)?;
                Some((idx, PathBuf::from(label)))
            }
        }
    }

    /// Read and parse the file at `full` (named at `at`, if in a file), once per directory and
    /// project.
    fn read(
        &mut self,
        full: &Path,
        label: String,
        dir: PathBuf,
        project: usize,
        at: Option<(Pos, &str)>,
    ) -> Option<u32> {
        let key = (real(full), dir.clone(), project);
        if let Some(&idx) = self.loaded.get(&key) {
            return Some(idx);
        }
        let (pos, prefix) = match at {
            Some((pos, path)) => (Some(pos), format!("{path}: ")),
            None => (None, String::new()),
        };
        if self.files.len() >= MAX_FILES {
            let message = format!("{prefix}more than {MAX_FILES} files make up the stack");
            self.error_at(pos, message, "merge some of the files");
            return None;
        }
        let text = match read_at_most(full, yaml::MAX_INPUT_BYTES as u64) {
            Ok(b) => String::from_utf8(b).map_err(|_| "it is not UTF-8 text".to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("not found".into()),
            Err(e) => Err(lower(&e)),
        };
        let text = match text {
            Ok(t) => t,
            Err(reason) => {
                let message = format!("{prefix}cannot read {label}: {reason}");
                let hint = match at {
                    Some(_) => "the path is relative to the file naming it; check it",
                    None => "check the path of the stack file",
                };
                self.error_at(pos, message, hint);
                return None;
            }
        };
        let idx = self.parse(&text, label, dir, project)?;
        self.loaded.insert(key, idx);
        Some(idx)
    }

    /// Parse a file's text and interpolate it; its tree is `self.trees[index]`.
    fn parse(&mut self, src: &str, label: String, dir: PathBuf, project: usize) -> Option<u32> {
        let idx = self.files.len() as u32;
        self.files.push(Source { label, dir });
        self.file_project.push(project);
        let at = |p: Pos| Pos { file: idx, ..p };
        let (root, yaml_errors) = match yaml::parse(src) {
            Ok(x) => x,
            Err(e) => {
                self.error(at(e.pos), e.message, e.hint);
                self.trees.push(null(at(Pos::START)));
                return None;
            }
        };
        for e in yaml_errors {
            let location = Some(self.loc(at(e.pos)));
            let hint = Some(e.hint.to_string());
            let message = e.message;
            self.soft.push(ComposeError {
                location,
                message,
                hint,
            });
        }
        let mut root = root.unwrap_or_else(|| null(Pos::START));
        root.set_file(idx);
        let dotenv = self.projects[project].clone();
        let vars = Vars {
            env: &self.opts.env,
            dotenv,
        };
        let mut unset = BTreeSet::new();
        self.interpolate(&mut root, &vars, &mut unset);
        self.trees.push(root);
        Some(idx)
    }

    fn interpolate(&mut self, node: &mut Node, vars: &Vars<'_>, unset: &mut BTreeSet<String>) {
        match &mut node.kind {
            Kind::Map(entries) => {
                for (_, v) in entries.iter_mut() {
                    self.interpolate(v, vars, unset);
                }
            }
            Kind::Seq(items) => {
                for v in items.iter_mut() {
                    self.interpolate(v, vars, unset);
                }
            }
            Kind::Scalar(s) => {
                if !s.text.contains('$') {
                    return;
                }
                match interpolate(&s.text, vars) {
                    Ok(r) => {
                        s.text = r.value;
                        for name in r.unset {
                            if unset.insert(name.clone()) {
                                let message = format!(
                                    "variable {name} is not set, defaulting to an empty string"
                                );
                                let location = self.loc(node.pos);
                                let message = short(&message);
                                self.warnings.push(Warning { location, message });
                            }
                        }
                    }
                    Err(e) => {
                        let location = Some(self.loc(node.pos));
                        self.soft.push(ComposeError {
                            location,
                            message: short(&e.message),
                            hint: Some(e.hint),
                        });
                    }
                }
            }
        }
    }

    /// File `idx` with its services' `extends` resolved and its `include`s added.
    fn file(&mut self, idx: u32) -> Node {
        let names: Vec<String> = match self.trees[idx as usize].get("services") {
            Some(Node {
                kind: Kind::Map(entries),
                ..
            }) => entries
                .iter()
                .filter(|(_, v)| v.get("extends").is_some())
                .map(|(k, _)| k.name.clone())
                .collect(),
            _ => Vec::new(),
        };
        let mut resolved = Vec::new();
        for name in names {
            if let Some(svc) = self.resolve(idx, &name, None) {
                resolved.push((name, svc));
            }
        }
        let mut tree = self.trees[idx as usize].clone();
        if let Some(top) = entries_mut(&mut tree)
            && let Some((_, services)) = top.iter_mut().find(|(k, _)| k.name == "services")
            && let Some(services) = entries_mut(services)
        {
            for (k, v) in services.iter_mut() {
                if let Some((_, svc)) = resolved.iter().find(|(n, _)| *n == k.name) {
                    *v = svc.clone();
                }
            }
        }
        if let Some(include) = remove_key(&mut tree, "include") {
            self.includes(&mut tree, &include, idx);
        }
        tree
    }
}

/// A file the stack names, refused when larger than `max` bytes (said in the error).
pub(crate) fn read_at_most(full: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let len = std::fs::metadata(full)?.len();
    if len > max {
        return Err(std::io::Error::other(format!(
            "it is {len} bytes, more than {max}"
        )));
    }
    std::fs::read(full)
}

fn null(pos: Pos) -> Node {
    Node::new(
        Kind::Scalar(Scalar {
            text: String::new(),
            quoted: false,
        }),
        pos,
    )
}

/// A message cut to `MAX_MESSAGE_CHARS`: messages quote the files' keys and values.
fn short(message: &str) -> String {
    wharf_types::excerpt(message, crate::MAX_MESSAGE_CHARS)
}

fn lower(e: &std::io::Error) -> String {
    e.to_string().to_lowercase()
}

/// `extends`: resolving a service against the one it names, recursively.
impl Loader<'_> {
    /// Service `name` of file `idx`, its `extends` resolved; `at` is where it is named from
    /// (an `extends` node and its path), to say it is missing.
    fn resolve(&mut self, idx: u32, name: &str, at: Option<(Pos, &str)>) -> Option<Node> {
        if let Some(i) = self
            .extending
            .iter()
            .position(|(f, n, _)| *f == idx && n == name)
        {
            self.cycle(i, idx, name);
            return None;
        }
        let key = (idx, name.to_string());
        if let Some(done) = self.resolved.get(&key) {
            return done.clone();
        }
        let found = self.trees[idx as usize]
            .get("services")
            .and_then(|s| s.get(name))
            .filter(|s| !s.is_null())
            .cloned();
        let Some(svc) = found else {
            if let Some((pos, path)) = at {
                let label = self.files[idx as usize].label.clone();
                let message = format!("{path}: service {name:?} not found in {label}");
                self.error(pos, message, "name a service that file defines");
            }
            return None;
        };
        let out = match svc.get("extends").cloned() {
            None => Some(svc),
            Some(ext) => self.extend(idx, name, svc, &ext),
        };
        self.resolved.insert(key, out.clone());
        out
    }

    /// The error for a cycle: the services from `extending[i]` back to `name`.
    fn cycle(&mut self, i: usize, idx: u32, name: &str) {
        let show = |f: u32, n: &str| {
            if f == idx {
                n.to_string()
            } else {
                format!("{n} ({})", self.files[f as usize].label)
            }
        };
        let mut chain: Vec<String> = self.extending[i..]
            .iter()
            .map(|(f, n, _)| show(*f, n))
            .collect();
        chain.push(show(idx, name));
        let (_, from, pos) = self.extending.last().cloned().expect("a cycle has a link");
        let message = format!(
            "services.{from}.extends: extends cycle: {}",
            chain.join(" -> ")
        );
        let hint = "a service cannot extend itself, directly or through others: remove one of these extends";
        self.error(pos, message, hint);
    }

    fn extend(&mut self, idx: u32, name: &str, svc: Node, ext: &Node) -> Option<Node> {
        let path = format!("services.{name}.extends");
        let (file, (target, target_pos)) = self.extends_ref(ext, &path)?;
        let from = match file {
            None => idx,
            Some((f, fpos)) => self.extended_file(idx, &f, fpos, &path)?,
        };
        self.extending.push((idx, name.to_string(), ext.pos));
        let base = self.resolve(from, &target, Some((target_pos, &path)));
        self.extending.pop();
        let mut over = svc;
        remove_key(&mut over, "extends");
        Some(merge::merge_service(base?, over))
    }

    /// `extends: name` or `{service: name, file: path}`: the file and the service, each with
    /// where it is written.
    fn extends_ref(&mut self, ext: &Node, path: &str) -> Option<(Option<Named>, Named)> {
        let hint = "write `extends: service` or `extends: {service: name, file: other.yml}`";
        match &ext.kind {
            Kind::Scalar(s) if !ext.is_null() => Some((None, (s.text.clone(), ext.pos))),
            Kind::Map(entries) => {
                let mut file = None;
                let mut service = None;
                for (k, v) in entries {
                    let text = v.text().filter(|_| !v.is_null());
                    match (k.name.as_str(), text) {
                        ("file", Some(t)) => file = Some((t.to_string(), v.pos)),
                        ("service", Some(t)) => service = Some((t.to_string(), v.pos)),
                        ("file" | "service", None) => {
                            let message = format!(
                                "{path}.{}: expected a string, found {}",
                                k.name,
                                v.describe()
                            );
                            self.error(v.pos, message, hint);
                            return None;
                        }
                        _ => {
                            let message = format!("unknown key {:?} in {path}", k.name);
                            self.error(k.pos, message, "the keys allowed here are: service, file");
                            return None;
                        }
                    }
                }
                let Some(service) = service else {
                    self.error(ext.pos, format!("{path}: missing service"), hint);
                    return None;
                };
                Some((file, service))
            }
            _ => {
                let message = format!(
                    "{path}: expected a service name or a mapping, found {}",
                    ext.describe()
                );
                self.error(ext.pos, message, hint);
                None
            }
        }
    }

    /// The file an `extends` in file `idx` names, read with the same project variables.
    fn extended_file(&mut self, idx: u32, f: &str, pos: Pos, path: &str) -> Option<u32> {
        let path = format!("{path}.file");
        if self.remote_refused(pos, &path, f) {
            return None;
        }
        let full = absolutize(&self.files[idx as usize].dir, f);
        if !self.inside(pos, &path, "the file", &full) {
            return None;
        }
        let dir = full.parent().map_or_else(|| "/".into(), Path::to_path_buf);
        let project = self.file_project[idx as usize];
        let label = self.label_for(&full);
        self.read(&full, label, dir, project, Some((pos, &path)))
    }
}

/// A name or path and where it is written.
type Named = (String, Pos);

/// One `include` entry.
struct Include {
    paths: Vec<(String, Pos)>,
    project_directory: Option<(String, Pos)>,
    env_file: Vec<(String, Pos)>,
}

/// `include`: sub-projects added to the file naming them.
impl Loader<'_> {
    fn includes(&mut self, tree: &mut Node, include: &Node, idx: u32) {
        let Kind::Seq(items) = &include.kind else {
            let message = format!("include: expected a list, found {}", include.describe());
            self.error(
                include.pos,
                message,
                "write `include: [other/compose.yaml]`",
            );
            return;
        };
        for (i, it) in items.iter().enumerate() {
            let path = format!("include[{i}]");
            let Some(entry) = self.include_entry(it, &path) else {
                continue;
            };
            if let Some(sub) = self.included(idx, &entry, &path) {
                self.add_included(tree, sub, it.pos);
            }
        }
    }

    fn include_entry(&mut self, it: &Node, path: &str) -> Option<Include> {
        let hint = "write `- other/compose.yaml` or `- path: other/compose.yaml` (with optional project_directory and env_file)";
        let mut entry = Include {
            paths: Vec::new(),
            project_directory: None,
            env_file: Vec::new(),
        };
        match &it.kind {
            Kind::Scalar(s) if !it.is_null() => entry.paths.push((s.text.clone(), it.pos)),
            Kind::Map(entries) => {
                for (k, v) in entries {
                    let kp = format!("{path}.{}", k.name);
                    let list = strings(v);
                    match (k.name.as_str(), list) {
                        ("path", Some(l)) => entry.paths = l,
                        ("env_file", Some(l)) => entry.env_file = l,
                        ("project_directory", Some(mut l)) if l.len() == 1 => {
                            entry.project_directory = l.pop();
                        }
                        ("path" | "env_file" | "project_directory", _) => {
                            let message = format!("{kp}: expected a path, found {}", v.describe());
                            self.error(v.pos, message, hint);
                            return None;
                        }
                        _ => {
                            let message = format!("unknown key {:?} in {path}", k.name);
                            let hint =
                                "the keys allowed here are: path, project_directory, env_file";
                            self.error(k.pos, message, hint);
                            return None;
                        }
                    }
                }
            }
            _ => {
                let message = format!(
                    "{path}: expected a path or a mapping, found {}",
                    it.describe()
                );
                self.error(it.pos, message, hint);
                return None;
            }
        }
        if entry.paths.is_empty() {
            self.error(it.pos, format!("{path}: missing path"), hint);
            return None;
        }
        Some(entry)
    }

    /// The files of one `include` entry as one tree: their own project, interpolated with their
    /// `env_file` (default: the project directory's `.env`) under the including project's
    /// variables (the including project's win, as Compose's).
    fn included(&mut self, idx: u32, entry: &Include, path: &str) -> Option<Node> {
        let dir = self.files[idx as usize].dir.clone();
        let mut fulls = Vec::new();
        for (p, pos) in &entry.paths {
            let pp = format!("{path}.path");
            if self.remote_refused(*pos, &pp, p) {
                return None;
            }
            let full = absolutize(&dir, p);
            if !self.inside(*pos, &pp, "the included file", &full) {
                return None;
            }
            fulls.push((full, *pos));
        }
        let project_dir = match &entry.project_directory {
            Some((d, pos)) => {
                let full = absolutize(&dir, d);
                let pp = format!("{path}.project_directory");
                if !self.inside(*pos, &pp, "the project directory", &full) {
                    return None;
                }
                full
            }
            None => fulls[0]
                .0
                .parent()
                .map_or_else(|| "/".into(), Path::to_path_buf),
        };
        let env_files: Vec<PathBuf> = if entry.env_file.is_empty() {
            vec![project_dir.join(".env")]
        } else {
            entry
                .env_file
                .iter()
                .map(|(f, _)| absolutize(&dir, f))
                .collect()
        };
        let mut vars = self.projects[self.file_project[idx as usize]].clone();
        for (k, v) in self.dotenv(&env_files, !entry.env_file.is_empty()) {
            vars.entry(k).or_insert(v);
        }
        self.projects.push(vars);
        let project = self.projects.len() - 1;
        let mut acc: Option<Node> = None;
        for (full, pos) in fulls {
            let label = self.label_for(&full);
            let r = real(&full);
            if let Some(i) = self.including.iter().position(|(p, _)| *p == r) {
                let mut chain: Vec<&str> = self.including[i..]
                    .iter()
                    .map(|(_, l)| l.as_str())
                    .collect();
                chain.push(&label);
                let message = format!("{path}: include cycle: {}", chain.join(" -> "));
                let hint = "a file cannot include itself, directly or through others: remove one of these includes";
                self.error(pos, message, hint);
                return None;
            }
            let pp = format!("{path}.path");
            let fi = self.read(
                &full,
                label.clone(),
                project_dir.clone(),
                project,
                Some((pos, &pp)),
            )?;
            self.including.push((r, label));
            let tree = self.file(fi);
            self.including.pop();
            acc = Some(match acc {
                None => tree,
                Some(a) => merge::merge_top(a, tree),
            });
        }
        acc
    }

    /// Add what an included project defines to `tree`; a name defined in both is an error.
    fn add_included(&mut self, tree: &mut Node, sub: Node, at: Pos) {
        let Kind::Map(sections) = sub.kind else {
            return;
        };
        for (sk, sv) in sections {
            if !RESOURCES.contains(&sk.name.as_str()) {
                continue;
            }
            let Kind::Map(items) = sv.kind else {
                continue;
            };
            let Some(top) = entries_mut(tree) else {
                return;
            };
            let i = match top.iter().position(|(k, _)| k.name == sk.name) {
                Some(i) => i,
                None => {
                    let key = Key {
                        name: sk.name.clone(),
                        pos: at,
                    };
                    top.push((key, Node::new(Kind::Map(Vec::new()), at)));
                    top.len() - 1
                }
            };
            if top[i].1.is_null() {
                top[i].1 = Node::new(Kind::Map(Vec::new()), at);
            }
            let mut conflicts = Vec::new();
            if let Some(have) = entries_mut(&mut top[i].1) {
                for (k, v) in items {
                    match have.iter().find(|(e, _)| e.name == k.name) {
                        Some((e, _)) => conflicts.push((e.pos, k.pos)),
                        None => have.push((k, v)),
                    }
                }
            }
            for (here, there) in conflicts {
                let name = &sk.name;
                let key = match &top_key(tree, name, here) {
                    Some(k) => k.clone(),
                    None => continue,
                };
                let message = format!(
                    "{name}.{key} is defined both here and in the included file {}",
                    self.loc(there)
                );
                let hint = "rename one of them, or remove one definition: an included project's resources cannot be overridden";
                self.error(here, message, hint);
            }
        }
    }
}

/// The name of the entry of section `name` whose key is at `pos`.
fn top_key(tree: &Node, name: &str, pos: Pos) -> Option<String> {
    match &tree.get(name)?.kind {
        Kind::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.pos == pos)
            .map(|(k, _)| k.name.clone()),
        _ => None,
    }
}

/// `profiles`: removing the services no enabled profile names.
impl Loader<'_> {
    /// The enabled profiles: `LoadOptions::profiles`, else `COMPOSE_PROFILES` from the
    /// environment or `.env`.
    fn enabled(&self) -> BTreeSet<String> {
        if !self.opts.profiles.is_empty() {
            return self.opts.profiles.iter().cloned().collect();
        }
        let var = self
            .opts
            .env
            .get("COMPOSE_PROFILES")
            .or_else(|| self.projects[0].get("COMPOSE_PROFILES"));
        var.map(|v| {
            v.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect()
        })
        .unwrap_or_default()
    }

    fn profiles(&mut self, root: &mut Node) {
        let enabled = self.enabled();
        let all = enabled.contains("*");
        let Some(services) = root.get("services").cloned() else {
            return;
        };
        let Kind::Map(entries) = services.kind else {
            return;
        };
        let mut kept = Vec::new();
        let mut disabled: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, mut v) in entries {
            let Some(p) = remove_key(&mut v, "profiles") else {
                kept.push((k, v));
                continue;
            };
            let Some(names) = strings(&p).or_else(|| p.is_null().then(Vec::new)) else {
                let path = format!("services.{}.profiles", k.name);
                let message = format!(
                    "{path}: expected a list of profile names, found {}",
                    p.describe()
                );
                self.error(p.pos, message, "write `profiles: [debug]`");
                continue;
            };
            let names: Vec<String> = names.into_iter().map(|(n, _)| n).collect();
            if names.is_empty() || all || names.iter().any(|n| enabled.contains(n)) {
                kept.push((k, v));
            } else {
                disabled.insert(k.name, names);
            }
        }
        for (k, v) in &kept {
            self.check_depends(&k.name, v, &disabled);
        }
        if let Some(top) = entries_mut(root)
            && let Some((_, s)) = top.iter_mut().find(|(k, _)| k.name == "services")
        {
            s.kind = Kind::Map(kept);
        }
    }

    /// A `depends_on` on a disabled service is an error unless it is `required: false`.
    fn check_depends(&mut self, name: &str, svc: &Node, disabled: &BTreeMap<String, Vec<String>>) {
        let Some(deps) = svc.get("depends_on") else {
            return;
        };
        let listed: Vec<(String, Pos, bool)> = match &deps.kind {
            Kind::Seq(items) => items
                .iter()
                .filter_map(|it| Some((it.text()?.to_string(), it.pos, true)))
                .collect(),
            Kind::Map(entries) => entries
                .iter()
                .map(|(k, v)| {
                    let required = v
                        .get("required")
                        .and_then(Node::text)
                        .and_then(yaml::plain_bool)
                        != Some(false);
                    (k.name.clone(), k.pos, required)
                })
                .collect(),
            Kind::Scalar(_) => Vec::new(),
        };
        for (dep, pos, required) in listed {
            let Some(profiles) = disabled.get(&dep).filter(|_| required) else {
                continue;
            };
            let message = format!(
                "services.{name}.depends_on: service {dep:?} is not enabled: its profiles are {}",
                profiles.join(", ")
            );
            let hint = format!(
                "enable one with --profile {} (or COMPOSE_PROFILES), or mark the dependency `required: false`",
                profiles[0]
            );
            self.error(pos, message, hint);
        }
    }
}
