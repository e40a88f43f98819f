//! Compose stack files to Wharf stack specs: parsing, interpolation, validation, located errors.
//!
//! [`load_file`] / [`load_str`] read a Compose file into a [`wharf_types::StackSpec`], with every
//! error located as `file:line:column` and carrying a hint; [`load_files`] / [`load_inputs`] read
//! several, merged in order (overrides). [`validate_spec`] re-checks an already-normalised spec
//! (what the master receives over the API).
//!
//! Code map: `yaml` (a located YAML tree with input budgets; positions name their file) →
//! `interp` (variables, `.env`) → `compose` (the stack's files as one tree: each read and
//! interpolated, `extends` and `include` resolved, files merged by the rules in `merge`,
//! services of disabled `profiles` removed) → `convert` (the tree to a `StackSpec`, with located errors and warnings; value syntaxes in
//! `units`, build contexts and their hash in `context`, ingress certificates in `tls`, the
//! checks of a service's hardening keys in `hardening`, and of its container options, mount
//! options and build keys in `runtime`, both shared with `validate`) →
//! `validate` (checks on a normalised spec, shared with the master). `schedule` parses and
//! evaluates the cron schedules of jobs (for the loader and the master's job planner). `testing` holds test helpers
//! (certificates) that the unit tests and `tests/load.rs` share.
#![forbid(unsafe_code)]

mod compose;
mod context;
mod convert;
mod hardening;
mod interp;
mod merge;
mod runtime;
pub mod schedule;
#[cfg(test)]
mod testing;
mod tls;
mod units;
mod validate;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

#[doc(hidden)]
pub use convert::keys::{SECTIONS, Section, Support, key_support};
pub use units::{parse_duration, parse_size};
pub use validate::{SpecError, replicas_problem, validate_spec};
pub use yaml::MAX_INPUT_BYTES;

/// The longest an error or warning about a stack file says, in characters: they quote keys and
/// values of the file, which may be of any size.
pub(crate) const MAX_MESSAGE_CHARS: usize = 400;

/// How to load a stack file.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Overrides the stack name (`name:` in the file, else the directory name).
    pub stack_name: Option<String>,
    /// The caller's environment, used for interpolation; wins over `.env`.
    pub env: BTreeMap<String, String>,
    /// Read `env_file`s, build contexts and Dockerfiles outside the stack file's directory.
    /// Refused by default: a stack file from elsewhere must not read `/etc/shadow` or send a
    /// context that links to `/etc`.
    pub allow_outside: bool,
    /// The enabled Compose profiles (`--profile`); when empty, `COMPOSE_PROFILES` of `env` (or
    /// `.env`), comma-separated. Services with `profiles:` none of which is enabled are not
    /// deployed; `*` enables all.
    pub profiles: Vec<String>,
}

/// One stack file to load: a path, or text read elsewhere (standard input).
#[derive(Clone, Debug)]
pub enum Input {
    File(PathBuf),
    /// `label` names it in locations; `dir` is where its relative paths resolve when it is the
    /// first input (later inputs' paths resolve against the first one's directory, as Compose's).
    Text {
        label: String,
        text: String,
        dir: PathBuf,
    },
}

/// A loaded stack and the warnings about what Wharf ignored.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub spec: wharf_types::StackSpec,
    pub warnings: Vec<Warning>,
    /// The values of the stack's own secrets (`file:`, `environment:`), base64, by top-level
    /// key: sent beside the spec, never in it.
    pub secret_values: std::collections::BTreeMap<String, wharf_types::Secret>,
    /// The same for configs (`file:`, `content:`, `environment:`).
    pub config_values: std::collections::BTreeMap<String, wharf_types::Secret>,
    /// Where the fields the admission policy judges were written: field path
    /// (`services.web.cap_add[0]`) -> `file:line:column` (`DeployRequest::sources`).
    pub sources: std::collections::BTreeMap<String, String>,
}

/// Something the stack file says that Wharf ignores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// A position in a file: 1-based line and column.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One problem in a stack file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ComposeError {
    pub location: Option<Location>,
    pub message: String,
    /// How to fix it; printed separately by the CLI.
    pub hint: Option<String>,
}

impl fmt::Display for ComposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(l) => write!(f, "{l}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// All the problems found in a stack file (at least one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComposeErrors(pub Vec<ComposeError>);

impl fmt::Display for ComposeErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ComposeErrors {}

impl From<ComposeError> for ComposeErrors {
    fn from(e: ComposeError) -> Self {
        ComposeErrors(vec![e])
    }
}

/// Load a stack file from disk. Relative paths in it (build contexts, bind mounts, `env_file`,
/// `.env`) are resolved against the file's directory.
pub fn load_file(path: &Path, opts: &LoadOptions) -> Result<Loaded, ComposeErrors> {
    load_files(&[path.to_path_buf()], opts)
}

/// Load several stack files, each merged over the ones before it as Compose merges `-f a.yml
/// -f b.yml`; relative paths in all of them resolve against the first one's directory.
pub fn load_files(paths: &[PathBuf], opts: &LoadOptions) -> Result<Loaded, ComposeErrors> {
    let inputs: Vec<Input> = paths.iter().cloned().map(Input::File).collect();
    load_inputs(&inputs, opts)
}

/// Load a stack from a string. `file_label` names it in locations; `base_dir` is the directory
/// relative paths resolve against (and where `.env` is looked up).
pub fn load_str(
    src: &str,
    file_label: &str,
    base_dir: &Path,
    opts: &LoadOptions,
) -> Result<Loaded, ComposeErrors> {
    let input = Input::Text {
        label: file_label.to_string(),
        text: src.to_string(),
        dir: base_dir.to_path_buf(),
    };
    load_inputs(&[input], opts)
}

/// Load stack files given as paths or text, merged in order (see [`load_files`]).
pub fn load_inputs(inputs: &[Input], opts: &LoadOptions) -> Result<Loaded, ComposeErrors> {
    let composed = compose::compose(inputs, opts)?;
    convert::load(composed, opts)
}

/// Check a stack name: `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn validate_stack_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid stack name {name:?}: use 1 to 63 lower-case letters, digits, '_' or '-', starting with a letter or digit"
        ))
    }
}

/// Check a service name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub(crate) fn valid_service_name(name: &str) -> bool {
    name.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Derive a stack name from a directory name: lower-cased, other characters dropped.
pub(crate) fn sanitize_stack_name(dir: &str) -> String {
    let s: String = dir
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    let s = s.trim_start_matches(['_', '-']);
    s.chars().take(63).collect()
}

/// `p` with symbolic links followed: canonical where it exists, else its nearest existing
/// ancestor made canonical with the rest appended (so a missing file under a linked directory is
/// still seen inside it, and reported as missing rather than outside).
pub(crate) fn real_path(p: &Path) -> std::path::PathBuf {
    if let Ok(c) = std::fs::canonicalize(p) {
        return c;
    }
    let mut rest = Vec::new();
    let mut cur = p;
    while let Some(parent) = cur.parent() {
        if let Some(name) = cur.file_name() {
            rest.push(name.to_os_string());
        }
        if let Ok(mut c) = std::fs::canonicalize(parent) {
            c.extend(rest.iter().rev());
            return c;
        }
        cur = parent;
    }
    p.to_path_buf()
}
