//! Test harness shared by Wharf's integration tests: a negotiated Docker client, the test workload
//! (`wharf-testapp`) as a local image (no registry needed), polling with diagnostics, and cleanup;
//! with the `inproc` feature, an in-process cluster of a real master and agents on fake drivers.

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bollard::Docker;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListContainersOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptions, RemoveVolumeOptionsBuilder,
    TagImageOptionsBuilder,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

#[cfg(feature = "inproc")]
pub mod inproc;

/// The label every Wharf container carries with its stack name.
pub const STACK_LABEL: &str = "io.wharf.stack";
/// The repository of the test workload image.
pub const TESTAPP_REPO: &str = "wharf-testapp";

/// A Docker client on the local socket, with the API version negotiated (Docker 20.10 speaks 1.41).
pub async fn docker() -> anyhow::Result<Docker> {
    let docker =
        Docker::connect_with_local_defaults().context("cannot connect to the docker engine")?;
    docker
        .negotiate_version()
        .await
        .context("cannot negotiate the docker api version (is the engine running?)")
}

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| here.to_path_buf())
}

/// A TCP port that was free a moment ago on 127.0.0.1 (bound to port 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free port: {e}"))
}

/// Path of the static testapp binary built by `build_testapp` (and `scripts/build-testapp`).
pub fn testapp_binary_path() -> PathBuf {
    workspace_root().join("target/static/x86_64-unknown-linux-gnu/release/testapp")
}

/// Build the static testapp binary (`scripts/build-testapp` does the same) and return its path.
/// Cargo's own lock on `target/static` serialises concurrent callers.
pub async fn build_testapp() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let out = tokio::process::Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "wharf-testapp",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
            "target/static",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {cargo} to build the testapp"))?;
    if !out.status.success() {
        bail!(
            "building the static testapp failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bin = testapp_binary_path();
    if !bin.is_file() {
        bail!(
            "the testapp build succeeded but {} is missing",
            bin.display()
        );
    }
    Ok(bin)
}

static TESTAPP_IMAGE: OnceCell<String> = OnceCell::const_new();

/// The test workload as a local image `wharf-testapp:<sha256 of the binary, 12 hex>` (also tagged
/// `wharf-testapp:latest`), built `FROM scratch` with the static binary at `/testapp` as entrypoint.
/// Builds the binary and the image once; safe to call from many tests and processes at once.
pub async fn testapp_image() -> anyhow::Result<String> {
    TESTAPP_IMAGE
        .get_or_try_init(build_testapp_image)
        .await
        .cloned()
}

async fn build_testapp_image() -> anyhow::Result<String> {
    let bin = build_testapp().await?;
    let binary = tokio::fs::read(&bin)
        .await
        .with_context(|| format!("cannot read {}", bin.display()))?;
    let digest = hex::encode(Sha256::digest(&binary));
    let tag = format!("{TESTAPP_REPO}:{}", &digest[..12]);
    let docker = docker().await?;
    // Serialise image builds across test processes; tolerate a missing lock (races are harmless).
    let lock = lock_file(&workspace_root().join("target/static/testapp-image.lock")).await;
    if docker.inspect_image(&tag).await.is_err() {
        let context = image_context(&binary).context("cannot pack the testapp image context")?;
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(&tag)
            .rm(true)
            .forcerm(true)
            .build();
        let mut build = docker.build_image(options, None, Some(bollard::body_full(context.into())));
        let mut output = Vec::new();
        while let Some(item) = build.next().await {
            let info = item.with_context(|| format!("building image {tag} failed"))?;
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                bail!("building image {tag} failed: {err}\n{}", output.join(""));
            }
            if let Some(s) = info.stream {
                output.push(s);
            }
        }
        docker
            .inspect_image(&tag)
            .await
            .with_context(|| format!("image {tag} missing after its build"))?;
    }
    docker
        .tag_image(
            &tag,
            Some(
                TagImageOptionsBuilder::default()
                    .repo(TESTAPP_REPO)
                    .tag("latest")
                    .build(),
            ),
        )
        .await
        .with_context(|| format!("cannot tag {tag} as {TESTAPP_REPO}:latest"))?;
    drop(lock);
    Ok(tag)
}

async fn lock_file(path: &Path) -> Option<std::fs::File> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ok()?;
        file.lock().ok()?;
        Some(file)
    })
    .await
    .ok()
    .flatten()
}

fn image_context(binary: &[u8]) -> anyhow::Result<Vec<u8>> {
    let dockerfile = b"FROM scratch\nCOPY testapp /testapp\nENTRYPOINT [\"/testapp\"]\n";
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data, mode) in [
        ("Dockerfile", &dockerfile[..], 0o644),
        ("testapp", binary, 0o755),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, name, data)?;
    }
    Ok(tar.into_inner()?)
}

/// The repository of the shell image ([`shell_image`]).
pub const SHELL_REPO: &str = "wharf-shell";

static SHELL_IMAGE: OnceCell<String> = OnceCell::const_new();

/// An image with a shell for tests that run commands in containers (`wharf service exec`):
/// the host's busybox (`$WHARF_TEST_BUSYBOX`, else `/bin/busybox`; static, or with the shared
/// libraries `ldd` names) at `/bin/busybox`, linked as `sh`, `tty`, `stty`, `cat`, `echo`,
/// `sleep` and `head`; it sleeps. Tagged `wharf-shell:<hash>` and `wharf-shell:latest`; built
/// once, no registry needed.
pub async fn shell_image() -> anyhow::Result<String> {
    SHELL_IMAGE
        .get_or_try_init(build_shell_image)
        .await
        .cloned()
}

async fn build_shell_image() -> anyhow::Result<String> {
    let busybox = std::env::var("WHARF_TEST_BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into());
    let mut files = vec![(busybox.clone(), "bin/busybox".to_string())];
    let ldd = std::process::Command::new("ldd").arg(&busybox).output();
    if let Ok(out) = ldd {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            if let Some(p) = path.filter(|p| p.starts_with('/')) {
                files.push((p.to_string(), p.trim_start_matches('/').to_string()));
            }
        }
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut digest = Sha256::new();
    let dockerfile = b"FROM scratch\nCOPY . /\nCMD [\"/bin/sleep\", \"1000000\"]\n";
    let mut add = |tar: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8], mode| {
        digest.update(name.as_bytes());
        digest.update(data);
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, name, data)
    };
    add(&mut tar, "Dockerfile", dockerfile, 0o644)?;
    for (from, to) in &files {
        let data = std::fs::read(from).with_context(|| {
            format!("cannot read {from} for the shell test image (install busybox, or set WHARF_TEST_BUSYBOX)")
        })?;
        add(&mut tar, to, &data, 0o755)?;
    }
    for tool in ["sh", "tty", "stty", "cat", "echo", "sleep", "head"] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        header.set_mode(0o777);
        header.set_mtime(0);
        tar.append_link(&mut header, format!("bin/{tool}"), "busybox")?;
    }
    let context = tar.into_inner()?;
    let tag = format!("{SHELL_REPO}:{}", &hex::encode(digest.finalize())[..12]);
    let docker = docker().await?;
    let lock = lock_file(&workspace_root().join("target/static/shell-image.lock")).await;
    if docker.inspect_image(&tag).await.is_err() {
        let options = BuildImageOptionsBuilder::default()
            .dockerfile("Dockerfile")
            .t(&tag)
            .rm(true)
            .forcerm(true)
            .build();
        let mut build = docker.build_image(options, None, Some(bollard::body_full(context.into())));
        while let Some(item) = build.next().await {
            let info = item.with_context(|| format!("building image {tag} failed"))?;
            if let Some(err) = info.error_detail.and_then(|d| d.message) {
                bail!("building image {tag} failed: {err}");
            }
        }
    }
    let latest = TagImageOptionsBuilder::default()
        .repo(SHELL_REPO)
        .tag("latest")
        .build();
    docker
        .tag_image(&tag, Some(latest))
        .await
        .with_context(|| format!("cannot tag {tag} as {SHELL_REPO}:latest"))?;
    drop(lock);
    Ok(tag)
}

/// What one poll of `wait_for` saw: the value waited for, or not yet (with what was seen instead).
#[derive(Debug)]
pub enum Check<T> {
    Done(T),
    /// Not there yet; the text (usually a `Debug` of the observation) goes into the timeout error.
    NotYet(Option<String>),
}

/// "Not yet", remembering what was observed for the timeout message.
pub fn not_yet<T>(observed: impl Debug) -> Check<T> {
    Check::NotYet(Some(format!("{observed:?}")))
}

/// What a `wait_for` closure may return: `Option<T>`, `anyhow::Result<Option<T>>`, `Check<T>` or
/// `anyhow::Result<Check<T>>`. Errors count as "not yet" and are reported on timeout.
pub trait IntoCheck<T> {
    fn into_check(self) -> Check<T>;
}

impl<T> IntoCheck<T> for Check<T> {
    fn into_check(self) -> Check<T> {
        self
    }
}

impl<T> IntoCheck<T> for Option<T> {
    fn into_check(self) -> Check<T> {
        match self {
            Some(v) => Check::Done(v),
            None => Check::NotYet(None),
        }
    }
}

impl<T, C: IntoCheck<T>> IntoCheck<T> for anyhow::Result<C> {
    fn into_check(self) -> Check<T> {
        match self {
            Ok(c) => c.into_check(),
            Err(e) => Check::NotYet(Some(format!("error: {e:#}"))),
        }
    }
}

/// Poll `f` every 100 ms until it yields a value, or fail after `timeout` with
/// `timed out after Xs waiting for <what>` and the last observation.
pub async fn wait_for<T, C, F, Fut>(what: &str, timeout: Duration, f: F) -> anyhow::Result<T>
where
    C: IntoCheck<T>,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    wait_for_every(what, timeout, Duration::from_millis(100), f).await
}

/// `wait_for`, polling every `interval` (in-process checks are cheap: poll often).
pub async fn wait_for_every<T, C, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut f: F,
) -> anyhow::Result<T>
where
    C: IntoCheck<T>,
    F: FnMut() -> Fut,
    Fut: Future<Output = C>,
{
    let start = Instant::now();
    let mut last: Option<String> = None;
    loop {
        match f().await.into_check() {
            Check::Done(v) => return Ok(v),
            Check::NotYet(obs) => {
                if obs.is_some() {
                    last = obs;
                }
            }
        }
        if start.elapsed() >= timeout {
            let secs = timeout.as_secs_f64();
            return Err(match last {
                Some(obs) => {
                    anyhow!("timed out after {secs}s waiting for {what}; last observed: {obs}")
                }
                None => anyhow!("timed out after {secs}s waiting for {what}"),
            });
        }
        tokio::time::sleep(interval).await;
    }
}

/// Test cleanup: force-remove the containers labelled `io.wharf.stack=<stack>` (with their anonymous
/// volumes), the network `wharf_<stack>` and the volumes labelled with the stack. Never fails; problems
/// are printed to stderr.
pub async fn remove_stack_containers(stack: &str) {
    let docker = match docker().await {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cleanup of stack {stack}: {e:#}");
            return;
        }
    };
    let filters = HashMap::from([("label", vec![format!("{STACK_LABEL}={stack}")])]);
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await;
    match list {
        Ok(containers) => {
            for c in containers {
                let Some(id) = c.id else { continue };
                let opts = RemoveContainerOptionsBuilder::default()
                    .force(true)
                    .v(true)
                    .build();
                if let Err(e) = docker.remove_container(&id, Some(opts)).await
                    && !is_not_found(&e)
                {
                    eprintln!("cleanup of stack {stack}: cannot remove container {id}: {e}");
                }
            }
        }
        Err(e) => eprintln!("cleanup of stack {stack}: cannot list containers: {e}"),
    }
    let network = format!("wharf_{stack}");
    if let Err(e) = docker.remove_network(&network).await
        && !is_not_found(&e)
    {
        eprintln!("cleanup of stack {stack}: cannot remove network {network}: {e}");
    }
    match docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::default()
                .filters(&filters)
                .build(),
        ))
        .await
    {
        Ok(list) => {
            for v in list.volumes.unwrap_or_default() {
                let opts: RemoveVolumeOptions =
                    RemoveVolumeOptionsBuilder::default().force(true).build();
                if let Err(e) = docker.remove_volume(&v.name, Some(opts)).await
                    && !is_not_found(&e)
                {
                    eprintln!(
                        "cleanup of stack {stack}: cannot remove volume {}: {e}",
                        v.name
                    );
                }
            }
        }
        Err(e) => eprintln!("cleanup of stack {stack}: cannot list volumes: {e}"),
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A stack name unique to this process and call, for tests that must not collide: `<prefix>-<pid>-<n>`.
pub fn unique_stack(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}
