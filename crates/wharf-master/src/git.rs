//! git push to production: each stack has a bare repository, `DATA_DIR/git/STACK.git`, served
//! by git itself (`git http-backend`, smart HTTP, behind `api/git.rs`'s authentication). Its
//! `pre-receive` hook runs `wharf git-hook` (the `wharf` binary's hidden command): it builds
//! the pushed commit's images, pushes them to the registry, deploys the stack file at that
//! commit pinned by digest and follows the deployment, printing progress that git shows the
//! pusher as `remote:` lines; a failed build or deployment exits non-zero, so the push is
//! refused and the branch keeps the last commit that deployed. Here: where repositories live,
//! making one, and reading what `git http-backend` answers (pure).

use std::path::{Path, PathBuf};

/// Where the repositories are and what their hook runs.
#[derive(Clone, Debug)]
pub struct GitConfig {
    /// `DATA_DIR/git`.
    pub dir: PathBuf,
    /// The API as the hook reaches it (on this host).
    pub api_url: String,
    /// The `wharf` binary, which the hook runs as `wharf git-hook`.
    pub program: PathBuf,
}

/// The repository of `stack` (a stack name: no `/`, no `..`).
pub fn repo_path(config: &GitConfig, stack: &str) -> PathBuf {
    config.dir.join(format!("{stack}.git"))
}

/// Make the bare repository of `stack` with its hook, if it is not there; an existing one gets
/// its hook rewritten (the binary may have moved).
pub async fn ensure_repo(config: &GitConfig, stack: &str) -> std::io::Result<PathBuf> {
    let repo = repo_path(config, stack);
    if !repo.join("HEAD").exists() {
        tokio::fs::create_dir_all(&config.dir).await?;
        let out = tokio::process::Command::new("git")
            .args(["init", "--bare", "--quiet", "--initial-branch=main"])
            .arg(&repo)
            .output()
            .await?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "git init failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        for (k, v) in [
            ("http.receivepack", "true"),
            ("receive.fsckObjects", "true"),
        ] {
            tokio::process::Command::new("git")
                .arg("--git-dir")
                .arg(&repo)
                .args(["config", k, v])
                .output()
                .await?;
        }
    }
    write_hook(&repo, &config.program).await?;
    Ok(repo)
}

async fn write_hook(repo: &Path, program: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let hook = repo.join("hooks").join("pre-receive");
    tokio::fs::create_dir_all(hook.parent().unwrap_or(repo)).await?;
    let quoted = program.display().to_string().replace('\'', r"'\''");
    let text = format!(
        "#!/bin/sh\n# Written by wharf: build, push and deploy what is pushed.\nexec '{quoted}' git-hook\n"
    );
    let tmp = hook.with_extension("tmp");
    tokio::fs::write(&tmp, text).await?;
    tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).await?;
    tokio::fs::rename(&tmp, &hook).await
}

/// The head of a CGI answer.
#[derive(Debug, PartialEq, Eq)]
pub struct CgiHead {
    /// `Status:`, else 200.
    pub status: u16,
    /// The other headers.
    pub headers: Vec<(String, String)>,
    /// Where the body starts.
    pub body_at: usize,
}

/// The head of the CGI answer in `buf`; `None` until the blank line that ends it is there.
pub fn cgi_head(buf: &[u8]) -> Option<CgiHead> {
    let (end, sep) = match (find(buf, b"\r\n\r\n"), find(buf, b"\n\n")) {
        (Some(a), Some(b)) if b < a => (b, 2),
        (Some(a), _) => (a, 4),
        (None, Some(b)) => (b, 2),
        (None, None) => return None,
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut status = 200;
    let mut headers = vec![];
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("status") {
            status = v
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(500);
        } else {
            headers.push((k.to_string(), v.to_string()));
        }
    }
    Some(CgiHead {
        status,
        headers,
        body_at: end + sep,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What a request under `/git/` asks: the stack, the path for `git http-backend`, and whether
/// it writes (a push) — `None` for anything that is not smart HTTP on a stack's repository.
pub fn route(path: &str, query: &str) -> Option<(String, String, bool)> {
    let rest = path.strip_prefix("/git/")?;
    let (repo, tail) = rest.split_once('/')?;
    let stack = repo.strip_suffix(".git")?;
    let push = match tail {
        "info/refs" => query.split('&').any(|p| p == "service=git-receive-pack"),
        "git-receive-pack" => true,
        "git-upload-pack" => false,
        _ => return None,
    };
    if !query.is_empty() && tail == "info/refs" && !query.starts_with("service=git-") {
        return None;
    }
    Some((stack.to_string(), format!("/{stack}.git/{tail}"), push))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_http_paths_name_a_stack_and_whether_they_push() {
        let cases = [
            (
                "/git/shop.git/info/refs",
                "service=git-receive-pack",
                Some(("shop", true)),
            ),
            (
                "/git/shop.git/info/refs",
                "service=git-upload-pack",
                Some(("shop", false)),
            ),
            ("/git/shop.git/git-receive-pack", "", Some(("shop", true))),
            ("/git/shop.git/git-upload-pack", "", Some(("shop", false))),
            ("/git/shop.git/objects/info/packs", "", None), // dumb HTTP: not served
            ("/git/shop/info/refs", "", None),
            ("/git/shop.git/info/refs", "x=1", None),
            ("/v2/shop.git/info/refs", "", None),
        ];
        for (path, query, want) in cases {
            let got = route(path, query);
            assert_eq!(
                got.as_ref().map(|(s, _, p)| (s.as_str(), *p)),
                want,
                "{path}?{query}"
            );
        }
        let (_, backend, _) = route("/git/shop.git/git-receive-pack", "").unwrap();
        assert_eq!(backend, "/shop.git/git-receive-pack");
    }

    #[test]
    fn a_cgi_head_ends_at_its_blank_line() {
        let h = cgi_head(b"Status: 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nno").unwrap();
        assert_eq!((h.status, h.body_at), (403, 51));
        assert_eq!(
            h.headers,
            vec![("Content-Type".into(), "text/plain".into())]
        );
        let h = cgi_head(b"Content-Type: x\n\nbody").unwrap();
        assert_eq!((h.status, h.body_at), (200, 17));
        assert!(cgi_head(b"Content-Type: x\r\n").is_none());
    }
}
