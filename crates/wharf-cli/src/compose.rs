//! Finding and loading stack files through `wharf-compose`.

use std::path::{Path, PathBuf};

use wharf_types::StackSpec;

use crate::error::{CliError, Diagnostic};

// TODO(wharf-compose): temporary shim with the announced public API of `wharf-compose`, until
// that crate lands. Then delete `mod shim` and change the `use` below to `use wharf_compose as api;`.
mod shim {
    #![allow(dead_code)]
    use std::collections::BTreeMap;
    use std::fmt;
    use std::path::Path;

    pub struct LoadOptions {
        pub stack_name: Option<String>,
        pub env: BTreeMap<String, String>,
    }
    pub struct Loaded {
        pub spec: wharf_types::StackSpec,
        pub warnings: Vec<Warning>,
    }
    pub struct Warning {
        pub location: Location,
        pub message: String,
    }
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
    pub struct ComposeError {
        pub location: Option<Location>,
        pub message: String,
        pub hint: Option<String>,
    }
    pub struct ComposeErrors(pub Vec<ComposeError>);

    pub fn load_file(path: &Path, _opts: &LoadOptions) -> Result<Loaded, ComposeErrors> {
        Err(ComposeErrors(vec![ComposeError {
            location: None,
            message: format!(
                "cannot load {}: compose support is not built into this wharf yet",
                path.display()
            ),
            hint: None,
        }]))
    }
}
use shim as api;

/// The files tried, in order, when no `-c FILE` is given.
pub const DEFAULT_FILES: [&str; 5] = [
    "stack.yml",
    "stack.yaml",
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
];

/// The stack file to use: the given one, else the first default that exists in `dir`.
pub fn find_stack_file(given: Option<&Path>, dir: &Path) -> Result<PathBuf, CliError> {
    if let Some(p) = given {
        if !p.exists() {
            return Err(CliError::bad_input(
                format!("stack file {} does not exist", p.display()),
                None,
            ));
        }
        return Ok(p.to_path_buf());
    }
    DEFAULT_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .map(|p| p.strip_prefix(dir).map(Path::to_path_buf).unwrap_or(p))
        .ok_or_else(|| {
            CliError::bad_input(
                format!(
                    "no stack file in {}: looked for {}",
                    dir.display(),
                    DEFAULT_FILES.join(", ")
                ),
                Some("name one with -c FILE".to_string()),
            )
        })
}

/// A loaded stack file: the spec and the warnings to print.
pub struct LoadedStack {
    pub spec: StackSpec,
    /// `file:line:column: message`
    pub warnings: Vec<String>,
}

/// Loads a stack file, interpolating from the process environment.
pub fn load_stack(file: &Path, stack: Option<String>) -> Result<LoadedStack, CliError> {
    let opts = api::LoadOptions {
        stack_name: stack,
        env: std::env::vars().collect(),
    };
    match api::load_file(file, &opts) {
        Ok(loaded) => Ok(LoadedStack {
            spec: loaded.spec,
            warnings: loaded
                .warnings
                .iter()
                .map(|w| format!("{}: {}", w.location, w.message))
                .collect(),
        }),
        Err(errors) => Err(CliError::Compose(
            errors
                .0
                .into_iter()
                .map(|e| Diagnostic {
                    location: e.location.as_ref().map(|l| l.to_string()),
                    message: e.message,
                    hint: e.hint,
                })
                .collect(),
        )),
    }
}

/// Finds, loads and prints the warnings of the stack file.
pub fn load_and_warn(file: Option<&Path>, stack: Option<String>) -> Result<LoadedStack, CliError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let path = find_stack_file(file, &cwd)?;
    let loaded = load_stack(&path, stack)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_files_in_order() {
        let dir = std::env::temp_dir().join(format!("wharf-cli-find-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = find_stack_file(None, &dir).unwrap_err();
        assert!(e.to_string().contains("looked for stack.yml"), "{e}");
        assert_eq!(e.exit_status(), 2);
        std::fs::write(dir.join("docker-compose.yml"), "").unwrap();
        assert_eq!(
            find_stack_file(None, &dir).unwrap(),
            PathBuf::from("docker-compose.yml")
        );
        std::fs::write(dir.join("compose.yaml"), "").unwrap();
        assert_eq!(
            find_stack_file(None, &dir).unwrap(),
            PathBuf::from("compose.yaml")
        );
        std::fs::write(dir.join("stack.yml"), "").unwrap();
        assert_eq!(
            find_stack_file(None, &dir).unwrap(),
            PathBuf::from("stack.yml")
        );
        let missing = dir.join("nope.yml");
        assert!(find_stack_file(Some(&missing), &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
