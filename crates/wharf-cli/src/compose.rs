//! Finding and loading stack files through `wharf-compose`.

use std::io::Read;
use std::path::{Path, PathBuf};

use wharf_types::StackSpec;

use crate::args::FileArg;
use crate::error::{CliError, Diagnostic};

use wharf_compose as api;

/// The files tried, in order, when no `-c FILE` is given.
pub const DEFAULT_FILES: [&str; 6] = [
    "stack.yml",
    "stack.yaml",
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// Override files, merged over the default file found beside them (as Compose): the one with
/// the default file's name first, else the first of these that exists.
pub const OVERRIDE_FILES: [&str; 6] = [
    "stack.override.yml",
    "stack.override.yaml",
    "compose.override.yaml",
    "compose.override.yml",
    "docker-compose.override.yaml",
    "docker-compose.override.yml",
];

/// The stack files to load, in order: the given ones (`-` is standard input), else the first
/// default file in `dir` and its override file if there is one.
pub fn find_stack_files(given: &[PathBuf], dir: &Path) -> Result<Vec<PathBuf>, CliError> {
    if !given.is_empty() {
        if given.iter().filter(|p| p.as_os_str() == "-").count() > 1 {
            return Err(CliError::bad_input(
                "standard input (-c -) can be read only once".to_string(),
                None,
            ));
        }
        if let Some(p) = given.iter().find(|p| p.as_os_str() != "-" && !p.exists()) {
            return Err(CliError::bad_input(
                format!("stack file {} does not exist", p.display()),
                None,
            ));
        }
        return Ok(given.to_vec());
    }
    let relative = |p: PathBuf| p.strip_prefix(dir).map(Path::to_path_buf).unwrap_or(p);
    let Some(first) = DEFAULT_FILES.iter().find(|f| dir.join(f).is_file()) else {
        return Err(CliError::bad_input(
            format!(
                "no stack file in {}: looked for {}",
                dir.display(),
                DEFAULT_FILES.join(", ")
            ),
            Some("name one with -c FILE".to_string()),
        ));
    };
    let stem = first.rsplit_once('.').map_or(*first, |(s, _)| s);
    let matching = OVERRIDE_FILES
        .iter()
        .filter(|o| o.starts_with(&format!("{stem}.")));
    let over = matching
        .chain(OVERRIDE_FILES.iter())
        .find(|o| dir.join(o).is_file());
    let mut files = vec![relative(dir.join(first))];
    files.extend(over.map(|o| relative(dir.join(o))));
    Ok(files)
}

/// The files as inputs of `wharf-compose`: `-` is read from `stdin` (its relative paths
/// resolve against `dir`).
pub fn stack_inputs(
    files: &[PathBuf],
    dir: &Path,
    stdin: impl std::io::Read,
) -> Result<Vec<api::Input>, CliError> {
    let mut stdin = Some(stdin);
    let mut out = Vec::new();
    for f in files {
        if f.as_os_str() != "-" {
            out.push(api::Input::File(f.clone()));
            continue;
        }
        let Some(r) = stdin.take() else {
            continue;
        };
        let mut bytes = Vec::new();
        let limit = api::MAX_INPUT_BYTES as u64 + 1;
        let read = r.take(limit).read_to_end(&mut bytes);
        let text = read
            .ok()
            .and_then(|_| String::from_utf8(bytes).ok())
            .ok_or_else(|| {
                CliError::bad_input(
                    "cannot read the stack file from standard input: it must be UTF-8 text",
                    None,
                )
            })?;
        out.push(api::Input::Text {
            label: "-".into(),
            text,
            dir: dir.to_path_buf(),
        });
    }
    Ok(out)
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

/// Loads the stack files (merged in order), interpolating from the process environment.
pub fn load_stack(
    inputs: &[api::Input],
    stack: Option<String>,
    allow_outside: bool,
    profiles: &[String],
) -> Result<LoadedStack, CliError> {
    let opts = api::LoadOptions {
        stack_name: stack,
        env: std::env::vars().collect(),
        allow_outside,
        profiles: profiles.to_vec(),
    };
    match api::load_inputs(inputs, &opts) {
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
    let files = find_stack_files(&file.file, &cwd)?;
    let inputs = stack_inputs(&files, &cwd, std::io::stdin().lock())?;
    let loaded = load_stack(&inputs, stack, file.allow_outside, &file.profile)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tempdir() -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("wharf-cli-compose-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn find(dir: &Path) -> Vec<String> {
        let files = find_stack_files(&[], dir).unwrap();
        files.iter().map(|p| p.display().to_string()).collect()
    }

    #[test]
    fn default_files_in_order() {
        let dir = tempdir();
        let dir = dir.path();
        let e = find_stack_files(&[], dir).unwrap_err();
        assert!(e.to_string().contains("looked for stack.yml"), "{e}");
        assert_eq!(e.exit_status(), 2);
        for (f, want) in [
            ("docker-compose.yml", "docker-compose.yml"),
            ("docker-compose.yaml", "docker-compose.yaml"),
            ("compose.yaml", "compose.yaml"),
            ("stack.yml", "stack.yml"),
        ] {
            std::fs::write(dir.join(f), "").unwrap();
            assert_eq!(find(dir), [want]);
        }
        let missing = dir.join("nope.yml");
        assert!(find_stack_files(&[missing], dir).is_err());
        let two_stdins = [PathBuf::from("-"), PathBuf::from("-")];
        assert!(find_stack_files(&two_stdins, dir).is_err());
        let given = [PathBuf::from("-"), dir.join("stack.yml")];
        assert_eq!(find_stack_files(&given, dir).unwrap(), given);
    }

    /// As Compose: the default file's own override if present, else any override beside it;
    /// nothing when a file is named.
    #[test]
    fn override_files_are_picked_up() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["compose.yaml"], &["compose.yaml"]),
            (
                &["compose.yaml", "compose.override.yaml"],
                &["compose.yaml", "compose.override.yaml"],
            ),
            (
                &[
                    "compose.yml",
                    "compose.override.yml",
                    "docker-compose.override.yml",
                ],
                &["compose.yml", "compose.override.yml"],
            ),
            (
                &["docker-compose.yml", "docker-compose.override.yml"],
                &["docker-compose.yml", "docker-compose.override.yml"],
            ),
            (
                &["stack.yml", "stack.override.yml", "compose.override.yaml"],
                &["stack.yml", "stack.override.yml"],
            ),
            (
                &["docker-compose.yml", "compose.override.yaml"],
                &["docker-compose.yml", "compose.override.yaml"],
            ),
        ];
        for (present, want) in cases {
            let dir = tempdir();
            for f in *present {
                std::fs::write(dir.path().join(f), "").unwrap();
            }
            assert_eq!(find(dir.path()), *want, "with {present:?}");
            let named = [dir.path().join(present[0])];
            assert_eq!(find_stack_files(&named, dir.path()).unwrap().len(), 1);
        }
    }

    /// The override found is merged over the default file.
    #[test]
    fn default_file_and_override_load_merged() {
        let dir = tempdir();
        std::fs::write(
            dir.path().join("compose.yaml"),
            "services:\n  web:\n    image: nginx:1\n    environment: {A: '1'}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("compose.override.yaml"),
            "services:\n  web:\n    environment: {B: '2'}\n  debug:\n    image: busybox\n    profiles: [debug]\n",
        )
        .unwrap();
        let files: Vec<PathBuf> = find_stack_files(&[], dir.path())
            .unwrap()
            .into_iter()
            .map(|f| dir.path().join(f))
            .collect();
        let inputs = stack_inputs(&files, dir.path(), std::io::empty()).unwrap();
        let loaded = load_stack(&inputs, Some("shop".into()), false, &[]).unwrap();
        let web = &loaded.spec.services["web"];
        assert_eq!(web.environment.len(), 2, "{:?}", web.environment);
        assert!(!loaded.spec.services.contains_key("debug"));
        let loaded = load_stack(&inputs, Some("shop".into()), false, &["debug".into()]).unwrap();
        assert!(loaded.spec.services.contains_key("debug"));
    }

    /// `-c -`: the stack file from standard input, relative paths against the directory.
    #[test]
    fn stack_file_from_standard_input() {
        let dir = tempdir();
        let src = "services:\n  web:\n    image: nginx\n    volumes: ['./html:/html']\n";
        let inputs = stack_inputs(&[PathBuf::from("-")], dir.path(), src.as_bytes()).unwrap();
        let loaded = load_stack(&inputs, Some("shop".into()), false, &[]).unwrap();
        let source = &loaded.spec.services["web"].volumes[0].source;
        assert_eq!(*source, dir.path().join("html").display().to_string());

        let bad = "services:\n  web:\n    image: [\n";
        let inputs = stack_inputs(&[PathBuf::from("-")], dir.path(), bad.as_bytes()).unwrap();
        let e = load_stack(&inputs, Some("shop".into()), false, &[]).unwrap_err();
        assert!(e.render()[0].contains("error: -:"), "{:?}", e.render());
    }

    /// `-c` repeats (and keeps its `--compose-file` alias), `--profile` repeats, on deploy,
    /// validate and diff.
    #[test]
    fn file_flags_parse() {
        use crate::args::{ClientCommand, StackCmd};
        for cmd in ["deploy", "validate", "diff"] {
            let args = [
                "stack",
                cmd,
                "-c",
                "a.yml",
                "--compose-file",
                "-",
                "--profile",
                "debug",
                "--profile",
                "ci",
            ];
            let cli = crate::args::tests::parse(&args).unwrap();
            let file = match cli.cmd {
                ClientCommand::Stack(StackCmd::Deploy { file, .. })
                | ClientCommand::Stack(StackCmd::Validate { file, .. })
                | ClientCommand::Stack(StackCmd::Diff { file, .. }) => file,
                _ => panic!("not a stack command"),
            };
            assert_eq!(file.file, [PathBuf::from("a.yml"), PathBuf::from("-")]);
            assert_eq!(file.profile, ["debug", "ci"]);
        }
    }

    #[test]
    fn loads_through_wharf_compose() {
        let dir = tempdir();
        let good = dir.path().join("good.yml");
        std::fs::write(
            &good,
            "services:\n  web:\n    image: nginx:1.27\n  api:\n    image: api:1\n",
        )
        .unwrap();
        let inputs = [api::Input::File(good)];
        let loaded = load_stack(&inputs, Some("shop".into()), false, &[]).unwrap();
        assert_eq!(loaded.spec.name, "shop");
        assert_eq!(loaded.spec.services.len(), 2);

        let bad = dir.path().join("bad.yml");
        std::fs::write(&bad, "services:\n  web:\n    image: [\n").unwrap();
        let e = load_stack(&[api::Input::File(bad)], Some("shop".into()), false, &[]).unwrap_err();
        assert_eq!(e.exit_status(), 2);
        let lines = e.render();
        assert!(lines[0].starts_with("error: "), "{lines:?}");
        assert!(lines[0].contains("bad.yml:"), "{lines:?}");
    }
}
