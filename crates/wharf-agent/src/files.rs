//! Secret and config files of the node's instances. The values come with the desired state
//! (only those the node's instances mount) and stay in memory; before an instance is created
//! its files are written to a directory of its own on a tmpfs (never the disk), which the docker
//! driver bind-mounts read-only at each target and the process driver names in
//! `WHARF_SECRETS_DIR`. The directory goes when the instance goes (`retain`).
//!
//! The tmpfs is `/dev/shm` (a RAM file system every Linux host has), under a directory of this
//! agent's only (mode 0700), checked to be a tmpfs before anything is written there.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use wharf_types::{FileValue, ObjectKind, ServiceSpec};

use crate::driver::{DriverError, DriverErrorKind, MountedFile};

/// Where the agents' directories are made: the RAM file system every Linux host has.
fn tmpfs() -> &'static Path {
    Path::new("/dev/shm")
}

/// The values the node's instances mount, by (kind, name, version).
pub type Values = BTreeMap<(ObjectKind, String, u64), Vec<u8>>;

/// The values of a desired state, decoded.
pub fn values(files: &[FileValue]) -> Values {
    files
        .iter()
        .filter_map(|f| {
            let v = base64::engine::general_purpose::STANDARD
                .decode(f.data.expose())
                .ok()?;
            Some(((f.kind, f.name.clone(), f.version), v))
        })
        .collect()
}

/// This agent's directory on the tmpfs, with one directory per instance (by its name).
pub struct Files {
    root: PathBuf,
    /// Made for this agent alone (no data directory): removed when it goes.
    ephemeral: bool,
}

impl Files {
    /// The directory of the agent whose data directory is `data_dir` (the same after a restart,
    /// so what a killed agent left is found and cleared), or one of its own.
    pub fn new(data_dir: Option<&Path>) -> Files {
        use sha2::{Digest, Sha256};
        match data_dir {
            Some(d) => {
                let abs = std::path::absolute(d).unwrap_or_else(|_| d.to_path_buf());
                let digest = Sha256::digest(abs.as_os_str().as_encoded_bytes());
                Files {
                    root: tmpfs().join(format!("wharf-{}", hex::encode(&digest[..8]))),
                    ephemeral: false,
                }
            }
            None => Files {
                root: tmpfs().join(format!("wharf-{:016x}", rand::random::<u64>())),
                ephemeral: true,
            },
        }
    }

    #[cfg(test)]
    fn at(root: PathBuf) -> Files {
        Files {
            root,
            ephemeral: true,
        }
    }

    /// Write the files `spec` mounts for the instance `name` from `values`, each with its
    /// owner and mode. Fails, naming the file, when a value did not come or the tmpfs cannot
    /// be used.
    pub fn materialize(
        &self,
        name: &str,
        spec: &ServiceSpec,
        values: &Values,
    ) -> Result<Vec<MountedFile>, DriverError> {
        let mut out = Vec::new();
        if spec.files().next().is_none() {
            return Ok(out);
        }
        let fail = |what: String| {
            DriverError::new(DriverErrorKind::Other, what)
                .with_hint("the agent keeps secrets on a tmpfs at /dev/shm; check that it is mounted and writable")
        };
        self.make_root().map_err(fail)?;
        let dir = self.root.join(name);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(fail(format!("cannot clear {}: {e}", dir.display())));
            }
            _ => {}
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| fail(format!("cannot make {}: {e}", dir.display())))?;
        // Each file by its target's file name (what the process driver's instances look up in
        // `WHARF_SECRETS_DIR`), numbered when two share one.
        let base = |t: &str| t.rsplit('/').next().unwrap_or_default().to_string();
        let mut seen = HashSet::new();
        let shared: HashSet<String> = spec
            .files()
            .map(|(_, f)| base(&f.target))
            .filter(|b| !seen.insert(b.clone()))
            .collect();
        for (i, (kind, f)) in spec.files().enumerate() {
            let Some(value) = values.get(&(kind, f.name.clone(), f.version)) else {
                return Err(DriverError::new(
                    DriverErrorKind::InvalidSpec,
                    format!(
                        "{} {} version {} was not delivered to this node",
                        kind.as_str(),
                        f.name,
                        f.version
                    ),
                )
                .with_hint("the master sends it with the node's desired state; it may have been removed: check `wharf secret ls`"));
            };
            let file = base(&f.target);
            let file = if shared.contains(&file) || file.is_empty() {
                format!("{i}-{file}")
            } else {
                file
            };
            let host = dir.join(file);
            write_file(
                &host,
                value,
                f.uid.unwrap_or(0),
                f.gid.unwrap_or(0),
                f.mode(),
            )
            .map_err(|e| fail(format!("cannot write {}: {e}", host.display())))?;
            out.push(MountedFile {
                kind,
                host,
                target: f.target.clone(),
            });
        }
        Ok(out)
    }

    /// The directory of the instance named `name`.
    pub fn dir_of(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Remove the directories of instances not in `keep` (by name).
    pub fn retain(&self, keep: &HashSet<String>) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name)
                && let Err(err) = std::fs::remove_dir_all(e.path())
            {
                tracing::warn!(dir = %e.path().display(), error = %err, "cannot remove an instance's secret files");
            }
        }
    }

    /// The agent's directory: made 0700 on a tmpfs, refused anywhere else.
    fn make_root(&self) -> Result<(), String> {
        let parent = self.root.parent().unwrap_or(Path::new("/"));
        if !is_tmpfs(parent) {
            return Err(format!(
                "{} is not a tmpfs: secrets are never written to a disk",
                parent.display()
            ));
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&self.root) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| format!("cannot restrict {}: {e}", self.root.display()))
            }
            Err(e) => Err(format!("cannot make {}: {e}", self.root.display())),
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        if self.ephemeral {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// Write `value` to a new file at `path` with `mode`, owned by `uid`:`gid` (when the agent may
/// give files away: it runs as root where it runs containers).
fn write_file(path: &Path, value: &[u8], uid: u32, gid: u32, mode: u32) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(value)?;
    drop(f);
    match std::os::unix::fs::chown(path, Some(uid), Some(gid)) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            tracing::debug!(path = %path.display(), "not root: the file keeps the agent's owner");
        }
        r => r?,
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Whether `path` is on a tmpfs.
fn is_tmpfs(path: &Path) -> bool {
    rustix::fs::statfs(path).is_ok_and(|s| s.f_type == libc::TMPFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::{FileRef, Secret};

    fn spec() -> ServiceSpec {
        ServiceSpec {
            secrets: vec![FileRef {
                source: "db".into(),
                target: "/run/secrets/db".into(),
                uid: Some(1000),
                gid: Some(1001),
                mode: Some(0o400),
                name: "shop_db".into(),
                version: 2,
            }],
            configs: vec![FileRef {
                source: "site".into(),
                target: "/etc/site.conf".into(),
                name: "shop_site".into(),
                version: 1,
                ..FileRef::default()
            }],
            ..ServiceSpec::default()
        }
    }

    fn delivered() -> Values {
        let b64 = |v: &str| Secret(base64::engine::general_purpose::STANDARD.encode(v));
        values(&[
            FileValue {
                kind: ObjectKind::Secret,
                name: "shop_db".into(),
                version: 2,
                data: b64("hunter2"),
            },
            FileValue {
                kind: ObjectKind::Config,
                name: "shop_site".into(),
                version: 1,
                data: b64("listen 80;"),
            },
        ])
    }

    #[test]
    fn files_are_written_on_the_tmpfs_with_owner_and_mode_and_removed_with_the_instance() {
        let files = Files::new(None);
        let got = files
            .materialize("wharf-shop-web-1-g1", &spec(), &delivered())
            .expect("written");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].target, "/run/secrets/db");
        assert!(
            got[0].host.ends_with("wharf-shop-web-1-g1/db"),
            "{:?}",
            got[0].host
        );
        assert!(
            got[1].host.ends_with("wharf-shop-web-1-g1/site.conf"),
            "{:?}",
            got[1].host
        );
        assert!(is_tmpfs(&got[0].host), "{}", got[0].host.display());
        assert_eq!(std::fs::read(&got[0].host).unwrap(), b"hunter2");
        let meta = std::fs::metadata(&got[0].host).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.mode() & 0o777, 0o400);
        if rustix::process::geteuid().is_root() {
            assert_eq!((meta.uid(), meta.gid()), (1000, 1001));
        }
        assert_eq!(
            std::fs::metadata(&got[1].host).unwrap().mode() & 0o777,
            0o444
        );
        assert_eq!(
            std::fs::metadata(&files.root).unwrap().mode() & 0o777,
            0o700
        );
        files.retain(&HashSet::new());
        assert!(!got[0].host.exists());
    }

    #[test]
    fn a_value_not_delivered_fails_the_instance_saying_which() {
        let files = Files::new(None);
        let e = files
            .materialize("wharf-shop-web-1-g1", &spec(), &Values::new())
            .unwrap_err();
        assert!(
            e.message
                .contains("secret shop_db version 2 was not delivered"),
            "{e:?}"
        );
    }

    #[test]
    fn a_directory_that_is_not_a_tmpfs_is_refused() {
        let disk = std::env::temp_dir().join(format!("wharf-files-{}", std::process::id()));
        let files = Files::at(disk.join("agent"));
        let e = files.materialize("x", &spec(), &delivered()).unwrap_err();
        assert!(e.message.contains("is not a tmpfs"), "{e:?}");
    }
}
