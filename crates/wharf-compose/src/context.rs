//! Build contexts: path resolution and the content hash that makes a changed context a changed spec.

use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

/// `base.join(p)` with `.` and `..` resolved lexically (no symlink resolution, no I/O).
pub fn absolutize(base: &Path, p: &str) -> PathBuf {
    let joined = base.join(p);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Largest number of files hashed in one context.
const MAX_FILES: usize = 200_000;

/// A hex sha256 over the sorted relative paths and contents of the files under `dir`
/// (`.git` skipped; symbolic links hashed by their target, not followed).
pub fn hash_dir(dir: &Path) -> Result<String, String> {
    let mut files: Vec<(String, PathBuf, bool)> = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, rel)) = stack.pop() {
        let entries = std::fs::read_dir(&path).map_err(|e| {
            format!(
                "cannot read {}: {}",
                path.display(),
                e.to_string().to_lowercase()
            )
        })?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                format!(
                    "cannot read {}: {}",
                    path.display(),
                    e.to_string().to_lowercase()
                )
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == ".git" {
                continue;
            }
            let child_rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let ft = entry.file_type().map_err(|e| {
                format!(
                    "cannot read {}: {}",
                    entry.path().display(),
                    e.to_string().to_lowercase()
                )
            })?;
            if ft.is_dir() {
                stack.push((entry.path(), child_rel));
            } else {
                files.push((child_rel, entry.path(), ft.is_symlink()));
                if files.len() > MAX_FILES {
                    return Err(format!(
                        "the build context {} has more than {MAX_FILES} files",
                        dir.display()
                    ));
                }
            }
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for (rel, path, symlink) in files {
        let content = if symlink {
            std::fs::read_link(&path).map(|t| t.to_string_lossy().into_owned().into_bytes())
        } else {
            std::fs::read(&path)
        }
        .map_err(|e| {
            format!(
                "cannot read {}: {}",
                path.display(),
                e.to_string().to_lowercase()
            )
        })?;
        h.update((rel.len() as u64).to_le_bytes());
        h.update(rel.as_bytes());
        h.update((content.len() as u64).to_le_bytes());
        h.update(&content);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolutize_is_lexical() {
        let b = Path::new("/srv/app");
        assert_eq!(absolutize(b, "./web"), PathBuf::from("/srv/app/web"));
        assert_eq!(absolutize(b, "../x/./y"), PathBuf::from("/srv/x/y"));
        assert_eq!(absolutize(b, "/abs"), PathBuf::from("/abs"));
    }

    #[test]
    fn hash_changes_with_content_and_skips_git() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("a"), "1").expect("write");
        std::fs::create_dir(d.path().join("sub")).expect("mkdir");
        std::fs::write(d.path().join("sub/b"), "2").expect("write");
        let h1 = hash_dir(d.path()).expect("hash");
        std::fs::create_dir(d.path().join(".git")).expect("mkdir");
        std::fs::write(d.path().join(".git/HEAD"), "x").expect("write");
        assert_eq!(hash_dir(d.path()).expect("hash"), h1);
        std::fs::write(d.path().join("sub/b"), "3").expect("write");
        assert_ne!(hash_dir(d.path()).expect("hash"), h1);
        assert_eq!(h1.len(), 64);
    }
}
