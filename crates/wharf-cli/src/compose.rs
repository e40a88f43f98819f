//! Finding and loading stack files through `wharf-compose`.

use std::path::{Path, PathBuf};

use wharf_types::StackSpec;

use crate::args::FileArg;
use crate::error::{CliError, Diagnostic};

use wharf_compose as api;

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
#[derive(Debug)]
pub struct LoadedStack {
    pub spec: StackSpec,
    /// `file:line:column: message`
    pub warnings: Vec<String>,
    /// The values of the stack's own secrets and configs (base64, by key), sent beside the spec.
    pub secret_values: std::collections::BTreeMap<String, wharf_types::Secret>,
    pub config_values: std::collections::BTreeMap<String, wharf_types::Secret>,
    /// Where the fields the admission policy judges were written (`DeployRequest::sources`).
    pub sources: std::collections::BTreeMap<String, String>,
}

/// Loads a stack file, interpolating from the process environment.
pub fn load_stack(
    file: &Path,
    stack: Option<String>,
    allow_outside: bool,
) -> Result<LoadedStack, CliError> {
    let opts = api::LoadOptions {
        stack_name: stack,
        env: std::env::vars().collect(),
        allow_outside,
    };
    match api::load_file(file, &opts) {
        Ok(loaded) => Ok(LoadedStack {
            spec: loaded.spec,
            warnings: loaded
                .warnings
                .iter()
                .map(|w| format!("{}: {}", w.location, w.message))
                .collect(),
            secret_values: loaded.secret_values,
            config_values: loaded.config_values,
            sources: loaded.sources,
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
pub fn load_and_warn(file: &FileArg, stack: Option<String>) -> Result<LoadedStack, CliError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let path = find_stack_file(file.file.as_deref(), &cwd)?;
    let loaded = load_stack(&path, stack, file.allow_outside)?;
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

    #[test]
    fn loads_through_wharf_compose() {
        let dir = std::env::temp_dir().join(format!("wharf-cli-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.yml");
        std::fs::write(
            &good,
            "services:\n  web:\n    image: nginx:1.27\n  api:\n    image: api:1\n",
        )
        .unwrap();
        let loaded = load_stack(&good, Some("shop".into()), false).unwrap();
        assert_eq!(loaded.spec.name, "shop");
        assert_eq!(loaded.spec.services.len(), 2);

        let bad = dir.join("bad.yml");
        std::fs::write(&bad, "services:\n  web:\n    image: [\n").unwrap();
        let e = load_stack(&bad, Some("shop".into()), false).unwrap_err();
        assert_eq!(e.exit_status(), 2);
        let lines = e.render();
        assert!(lines[0].starts_with("error: "), "{lines:?}");
        assert!(lines[0].contains("bad.yml:"), "{lines:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
