//! git push to production (issue 15, acceptance check 3), with the real parts: the real `git`
//! pushes a repository with a Dockerfile and a stack file to `wharf up` over smart HTTP
//! (`/git/STACK.git`, a Wharf token as the password); the stack's hook builds the image on the
//! engine, pushes it to the built-in registry and deploys the stack file at that commit pinned
//! by digest, and the pusher sees the progress as `remote:` lines. The new version serves through
//! the ingress within 60 s of the push; a second push rolls under load (wrk) without a failed
//! request; a push whose version fails its health check exits non-zero and the old version still
//! serves. `wharf stack history` lists the deploys with their commits, images and pusher.

mod common;
#[path = "common/load.rs"]
mod load;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use load::{Load, answers};
use wharf_testkit::wait_for;

/// `git ARGS…` in `dir`; its output (not checked).
fn git(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.invalid")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.invalid")
        .output()
        .expect("run git")
}

fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The repository's files at `version` (`failing`: its health check never passes); committed.
fn commit(dir: &Path, base: &str, version: &str, failing: bool, listen: u16) -> String {
    let fail = if failing { "ENV FAIL_HEALTH=1\n" } else { "" };
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {base}\nENV VERSION={version}\n{fail}"),
    )
    .unwrap();
    std::fs::write(
        dir.join("wharf.yml"),
        format!(
            "services:\n  web:\n    build: .\n    stop_grace_period: 1s\n{HEALTHCHECK}    deploy:\n      replicas: 2\n      update_config:\n        parallelism: 1\n        order: start-first\n        monitor: 0s\n        failure_action: rollback\n    x-wharf:\n      drain_grace: 1s\n      ingress:\n        - port: 8080\n          listen: {listen}\n          listen_address: 127.0.0.1\n"
        ),
    )
    .unwrap();
    git_ok(dir, &["add", "-A"]);
    git_ok(dir, &["commit", "-q", "-m", version]);
    git_ok(dir, &["rev-parse", "HEAD"]).trim().to_string()
}

/// `git push REMOTE main` off the runtime; its output.
async fn push(dir: &Path, remote: &str) -> Output {
    let (dir, remote) = (dir.to_path_buf(), remote.to_string());
    tokio::task::spawn_blocking(move || git(&dir, &["push", &remote, "main"]))
        .await
        .unwrap()
}

/// Every one of 50 requests to `url` answered `version`.
async fn only(url: &str, version: &str) -> bool {
    answers(url, 50).await == BTreeMap::from([(version.to_string(), 50)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn git_push_builds_deploys_and_a_failing_push_keeps_the_old_version() {
    let (mut w, stack) = Wharf::start_for("gitpush").await;
    w.stacks_mut().push(stack.clone());
    let base = testapp_image().await.expect("test image");
    let listen = free_port();
    let url = format!("http://127.0.0.1:{listen}/");
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path();
    git_ok(dir, &["init", "-q", "-b", "main"]);
    let remote = format!(
        "http://x:{}@127.0.0.1:{}/git/{stack}.git",
        w.client.token(),
        w.port
    );

    // A wrong token: refused before anything is received.
    commit(dir, &base, "v1", false, listen);
    let bad = push(
        dir,
        &format!("http://x:nope@127.0.0.1:{}/git/{stack}.git", w.port),
    )
    .await;
    assert!(!bad.status.success(), "a push with a wrong token succeeded");

    // v1: built, pushed, deployed; serving through the ingress within 60 s of the push.
    let started = Instant::now();
    let out = push(dir, &remote).await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "the first push failed:\n{err}\n{}",
        w.logs()
    );
    for line in [
        "remote: wharf: web: building",
        "remote: wharf: web: pushing",
        "deployed in",
    ] {
        assert!(
            err.contains(line),
            "no {line:?} among the push's lines:\n{err}"
        );
    }
    wait_for(
        "v1 to serve through the ingress",
        Duration::from_secs(60),
        || async { only(&url, "v1").await.then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    let took = started.elapsed();
    eprintln!("push to serving: {took:?}");
    assert!(
        took < Duration::from_secs(60),
        "v1 served {took:?} after the push"
    );
    let svc = w.client.get_service(&stack, "web").await.unwrap();
    let image = svc.spec.image.clone().unwrap_or_default();
    assert!(
        image.starts_with(&format!("wharf.local/{stack}/web:")) && image.contains("@sha256:"),
        "deployed pinned by digest: {image}"
    );

    // v2 under load: no request fails.
    let v2 = commit(dir, &base, "v2", false, listen);
    let load = Load::start(&url);
    let out = push(dir, &remote).await;
    let figures = load.finish().await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "the second push failed:\n{err}\n{}",
        w.logs()
    );
    assert_eq!(
        figures.failed(),
        0,
        "no request fails during the push: {figures}"
    );
    assert!(only(&url, "v2").await, "v2 serves after its push");

    // v3 never gets healthy: the push fails, and v2 still serves.
    commit(dir, &base, "v3", true, listen);
    let out = push(dir, &remote).await;
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "a push whose version fails its health check succeeded:\n{err}"
    );
    assert!(
        err.contains("remote: wharf: push refused"),
        "says why:\n{err}"
    );
    assert!(
        only(&url, "v2").await,
        "v2 still serves after the refused push"
    );
    // The branch keeps the commit that deployed.
    let remote_head = git_ok(dir, &["ls-remote", &remote, "refs/heads/main"]);
    assert!(
        remote_head.starts_with(&v2),
        "the branch is at v2: {remote_head}"
    );

    // The history: the commits, who pushed, the images.
    let (so, _) = w.cli_code(&["stack", "history", &stack], 0);
    assert!(so.contains(&format!("git push of {}", &v2[..12])), "{so}");
    assert!(so.contains("admin") && so.contains("@sha256:"), "{so}");
}
