//! The context: which wharf API the CLI talks to and with which token, kept in a 0600 JSON file.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ClientError;

/// The context kept in `context.json` (what `wharf up` and `wharf login` wrote before contexts
/// had names).
pub const DEFAULT_NAME: &str = "default";
/// The file naming the current context, in the configuration directory.
const CURRENT_FILE: &str = "current-context";

/// Checks a context name: 1 to 63 of `a-z 0-9 _ . -`, starting with a letter or digit.
pub fn valid_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid context name {name:?}: use 1 to 63 of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
        ))
    }
}

/// Where the API is and the bearer token to use. `Debug` never shows the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub url: String,
    pub token: String,
    /// The SHA-256 of the API's CA certificate, pinned at login (an `https` URL needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
}

impl Context {
    /// A context of a plain HTTP API (loopback).
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Context {
        Context {
            url: url.into(),
            token: token.into(),
            ca_fingerprint: None,
        }
    }
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Context {
    /// The file of the current context: `context.json` in the configuration directory for
    /// the context named `default`, else `contexts/NAME.json` there (see [`Context::current`]).
    pub fn path() -> PathBuf {
        Self::path_of(&Self::current())
    }

    /// The configuration directory: `$WHARF_CONFIG_DIR`, else `$HOME/.config/wharf` (else
    /// `.wharf` in the current directory when neither is set).
    pub fn config_dir() -> PathBuf {
        let default = Self::path_from(
            std::env::var_os("WHARF_CONFIG_DIR"),
            std::env::var_os("HOME"),
        );
        default
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    }

    /// The name of the current context: `$WHARF_CONTEXT`, else what `wharf context use` wrote
    /// (`current-context` in the configuration directory), else `default`.
    pub fn current() -> String {
        if let Some(name) = std::env::var("WHARF_CONTEXT")
            .ok()
            .filter(|v| !v.is_empty())
        {
            return name;
        }
        fs::read_to_string(Self::config_dir().join(CURRENT_FILE))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_NAME.to_string())
    }

    /// The file of the context `name`.
    pub fn path_of(name: &str) -> PathBuf {
        Self::path_in(&Self::config_dir(), name)
    }

    /// The file of the context `name` in the configuration directory `dir`.
    pub fn path_in(dir: &Path, name: &str) -> PathBuf {
        if name == DEFAULT_NAME {
            dir.join("context.json")
        } else {
            dir.join("contexts").join(format!("{name}.json"))
        }
    }

    /// The contexts that exist in `dir`, by name (`default` first when it exists).
    pub fn names_in(dir: &Path) -> Vec<String> {
        let mut names = Vec::new();
        if dir.join("context.json").is_file() {
            names.push(DEFAULT_NAME.to_string());
        }
        let mut others: Vec<String> = fs::read_dir(dir.join("contexts"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".json"))
                    .filter(|n| valid_name(n).is_ok())
                    .map(str::to_string)
            })
            .collect();
        others.sort();
        names.extend(others);
        names
    }

    /// Makes `name` the current context (`wharf context use`); it must exist.
    pub fn set_current_in(dir: &Path, name: &str) -> Result<(), ClientError> {
        valid_name(name).map_err(|m| file_error(&Self::path_in(dir, name), m))?;
        let path = Self::path_in(dir, name);
        if !path.is_file() {
            return Err(file_error(&path, format!("no context named {name}")));
        }
        let file = dir.join(CURRENT_FILE);
        if name == DEFAULT_NAME {
            return match fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(file_error(&file, format!("cannot remove: {e}")))
                }
                _ => Ok(()),
            };
        }
        write_private(&file, format!("{name}\n").as_bytes())
    }

    /// [`Context::path`] with the environment passed in.
    pub fn path_from(config_dir: Option<OsString>, home: Option<OsString>) -> PathBuf {
        match (
            config_dir.filter(|d| !d.is_empty()),
            home.filter(|h| !h.is_empty()),
        ) {
            (Some(dir), _) => PathBuf::from(dir).join("context.json"),
            (None, Some(home)) => PathBuf::from(home).join(".config/wharf/context.json"),
            (None, None) => PathBuf::from(".wharf/context.json"),
        }
    }

    /// The context file at [`Context::path`], with `WHARF_URL` and `WHARF_TOKEN` overriding its fields.
    /// Both variables set: the file is not needed.
    pub fn load() -> Result<Context, ClientError> {
        let path = Self::path();
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let (url, token) = (env("WHARF_URL"), env("WHARF_TOKEN"));
        let file = if url.is_some() && token.is_some() {
            None
        } else {
            Self::load_from(&path)?
        };
        let mut ctx = Self::resolve(file, url, token).ok_or(ClientError::NoContext { path })?;
        if let Some(fp) = env("WHARF_CA_FINGERPRINT") {
            ctx.ca_fingerprint = Some(fp);
        }
        Ok(ctx)
    }

    /// Combines a context file (if any) with the environment overrides.
    pub fn resolve(
        file: Option<Context>,
        env_url: Option<String>,
        env_token: Option<String>,
    ) -> Option<Context> {
        match (file, env_url, env_token) {
            (_, Some(url), Some(token)) => Some(Context::new(url, token)),
            (Some(f), url, token) => Some(Context {
                // The pinned CA goes with the file's URL only.
                ca_fingerprint: f
                    .ca_fingerprint
                    .filter(|_| url.as_ref().is_none_or(|u| *u == f.url)),
                url: url.unwrap_or(f.url),
                token: token.unwrap_or(f.token),
            }),
            (None, _, _) => None,
        }
    }

    /// Reads a context file; `Ok(None)` when it does not exist.
    pub fn load_from(path: &Path) -> Result<Option<Context>, ClientError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(file_error(path, format!("cannot read: {e}"))),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| file_error(path, format!("not a valid context: {e}")))
    }

    /// Writes the context to [`Context::path`]; returns that path.
    pub fn save(&self) -> Result<PathBuf, ClientError> {
        let path = Self::path();
        self.save_to(&path)?;
        Ok(path)
    }

    /// Writes the context file atomically: the directory is created with mode 0700, the file is
    /// written with mode 0600 to a temporary name next to it, then renamed into place.
    pub fn save_to(&self, path: &Path) -> Result<(), ClientError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        create_private_dir(&dir).map_err(|e| {
            file_error(
                path,
                format!("cannot create directory {}: {e}", dir.display()),
            )
        })?;
        let mut json = serde_json::to_vec_pretty(self).expect("a context always serialises");
        json.push(b'\n');
        write_private(path, &json)
    }
}

/// Writes a file with mode 0600 atomically (a temporary name next to it, then renamed); its
/// directory must exist.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "context.json".to_string());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = open_private(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(file_error(path, format!("cannot write: {e}")));
    }
    Ok(())
}

fn file_error(path: &Path, message: String) -> ClientError {
    ClientError::ContextFile {
        path: path.to_path_buf(),
        message,
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // The mode above only applies on creation; a stale temp file keeps its own.
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<fs::File> {
    fs::File::create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context::new("http://127.0.0.1:7400", "s3cret")
    }

    #[test]
    fn round_trip_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("nested/wharf/context.json");
        assert_eq!(Context::load_from(&path).unwrap(), None);
        ctx().save_to(&path).unwrap();
        assert_eq!(Context::load_from(&path).unwrap(), Some(ctx()));
        // Overwrite keeps working and leaves no temp file behind.
        let other = Context::new("http://10.0.0.1:7400", "t2");
        other.save_to(&path).unwrap();
        assert_eq!(Context::load_from(&path).unwrap(), Some(other));
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("context.json")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(path.parent().unwrap()), 0o700);
        }
    }

    #[test]
    fn named_contexts_live_beside_the_default_and_one_is_current() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(Context::names_in(dir).is_empty());
        ctx().save_to(&Context::path_in(dir, "default")).unwrap();
        let prod = Context::new("https://10.0.0.1:7400", "p");
        prod.save_to(&Context::path_in(dir, "prod")).unwrap();
        assert_eq!(Context::names_in(dir), vec!["default", "prod"]);
        assert_eq!(
            Context::path_in(dir, "prod"),
            dir.join("contexts/prod.json")
        );
        Context::set_current_in(dir, "prod").unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(CURRENT_FILE)).unwrap().trim(),
            "prod"
        );
        let e = Context::set_current_in(dir, "staging").unwrap_err();
        assert!(e.to_string().contains("no context named staging"), "{e}");
        assert!(Context::set_current_in(dir, "../etc").is_err());
        Context::set_current_in(dir, "default").unwrap();
        assert!(!dir.join(CURRENT_FILE).exists());
    }

    #[test]
    fn garbage_file_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("context.json");
        fs::write(&path, "{").unwrap();
        let e = Context::load_from(&path).unwrap_err();
        assert!(e.to_string().contains("context.json"), "{e}");
        assert!(e.hint().is_some());
    }

    #[test]
    fn path_prefers_config_dir() {
        assert_eq!(
            Context::path_from(Some("/c".into()), Some("/h".into())),
            PathBuf::from("/c/context.json")
        );
        assert_eq!(
            Context::path_from(None, Some("/h".into())),
            PathBuf::from("/h/.config/wharf/context.json")
        );
        assert_eq!(
            Context::path_from(Some("".into()), Some("/h".into())),
            PathBuf::from("/h/.config/wharf/context.json")
        );
    }

    #[test]
    fn env_overrides_the_file() {
        let u = |s: &str| Some(s.to_string());
        assert_eq!(Context::resolve(None, None, None), None);
        assert_eq!(Context::resolve(None, u("http://x"), None), None);
        assert_eq!(
            Context::resolve(None, u("http://x"), u("t")),
            Some(Context::new("http://x", "t"))
        );
        assert_eq!(
            Context::resolve(Some(ctx()), u("http://x"), None),
            Some(Context::new("http://x", "s3cret"))
        );
        assert_eq!(
            Context::resolve(Some(ctx()), None, u("t")),
            Some(Context::new(ctx().url, "t"))
        );
    }

    #[test]
    fn debug_hides_the_token() {
        assert!(!format!("{:?}", ctx()).contains("s3cret"));
    }
}
