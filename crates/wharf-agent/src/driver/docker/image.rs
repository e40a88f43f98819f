//! Images: present locally, pulled (with a timeout) or built from the stack's build context
//! (again when the context hash label differs).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::query_parameters::{BuildImageOptionsBuilder, CreateImageOptionsBuilder};
use futures::stream::StreamExt;
use wharf_types::{PullPolicy, labels};

use super::{DockerDriver, engine_message, is_unavailable, map_err, status, unavailable};
use crate::driver::{DriverError, DriverErrorKind, InstanceSpec};

/// The image label holding the build context hash the image was built from.
pub const CONTEXT_HASH_LABEL: &str = "io.wharf.context-hash";

pub(super) const IMAGE_MISSING_HINT: &str =
    "build it (build: in the stack file) or load it with docker load; no registry may be reachable";
pub(super) const PULL_TIMEOUT: Duration = Duration::from_secs(20);
const BUILD_TAIL_LINES: usize = 20;

/// The engine's name for an image the deploy pinned in the cluster's registry
/// (`wharf.local/name:tag@digest` → `MIRROR/name@digest`); other images as they are.
pub fn engine_ref(image: &str, mirror: Option<&str>) -> String {
    let (Some(mirror), Some(r)) = (mirror, wharf_types::ImageRef::parse(image)) else {
        return image.to_string();
    };
    if !r.in_cluster_registry(&[]) {
        return image.to_string();
    }
    match &r.digest {
        Some(d) => format!("{mirror}/{}@{d}", r.name),
        None => format!("{mirror}/{}:{}", r.name, r.tag_or_latest()),
    }
}

impl DockerDriver {
    pub(super) async fn ensure_image(&self, inst: &InstanceSpec) -> Result<(), DriverError> {
        let image = self.engine_image(inst);
        let lock = self.lock_for(&format!("image:{image}"));
        let _guard = lock.lock().await;
        let present = match self.docker.inspect_image(&image).await {
            Ok(i) => Some(i),
            Err(e) if status(&e) == Some(404) => None,
            Err(e) => return Err(map_err(e, &format!("cannot inspect image {image}"))),
        };
        let policy = inst.spec.container.pull_policy;
        let platform = inst.spec.container.platform.as_deref();
        match (&inst.spec.build, present) {
            (None, Some(_)) if policy == Some(PullPolicy::Always) => {
                // The local image serves when the registry cannot be reached.
                if let Err(e) = self.pull_image(&image, platform).await {
                    tracing::warn!(image, error = %e.message, "pull_policy always: the pull failed, using the local image");
                }
                Ok(())
            }
            (None, Some(_)) => Ok(()),
            (Some(build), Some(img)) => {
                let have = img
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(CONTEXT_HASH_LABEL).cloned());
                match build.fingerprint() {
                    Some(want) if have.as_ref() != Some(&want) => {
                        self.build_image(&image, build, platform).await
                    }
                    _ => Ok(()),
                }
            }
            (Some(build), None) => self.build_image(&image, build, platform).await,
            (None, None) if policy == Some(PullPolicy::Never) => Err(DriverError::new(
                DriverErrorKind::ImageMissing,
                format!("image {image} is not on this node and pull_policy is never"),
            )
            .with_hint("load it on the node (docker load), or change pull_policy")),
            (None, None) => self.pull_image(&image, platform).await,
        }
    }

    async fn pull_image(&self, image: &str, platform: Option<&str>) -> Result<(), DriverError> {
        let missing = || {
            DriverError::new(
                DriverErrorKind::ImageMissing,
                format!("image {image} not found locally and could not be pulled"),
            )
            .with_hint(IMAGE_MISSING_HINT)
        };
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .platform(platform.unwrap_or_default())
            .build();
        let pull = async {
            let mut stream = self.docker.create_image(Some(options), None, None);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                            return Err(msg);
                        }
                    }
                    Err(e) if is_unavailable(&e) => return Err(format!("engine unavailable: {e}")),
                    Err(e) => return Err(engine_message(&e)),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.pull_timeout, pull).await {
            Ok(Ok(())) => match self.docker.inspect_image(image).await {
                Ok(_) => Ok(()),
                Err(_) => Err(missing()),
            },
            Ok(Err(reason)) => {
                tracing::info!(image, reason, "pull failed");
                let mut err = missing();
                err.message = format!("{} ({})", err.message, first_line(&reason));
                Err(err)
            }
            Err(_) => {
                let mut err = missing();
                err.message = format!(
                    "{} (pull timed out after {}s)",
                    err.message,
                    self.pull_timeout.as_secs()
                );
                Err(err)
            }
        }
    }

    /// Build `image` from `build` on this engine (what `prepare` does for a `build:` service;
    /// `wharf git-hook` builds a pushed commit's images with it).
    pub async fn build_image(
        &self,
        image: &str,
        build: &wharf_types::BuildSpec,
        platform: Option<&str>,
    ) -> Result<(), DriverError> {
        let context = PathBuf::from(&build.context);
        let ctx = context.clone();
        let inline = build.dockerfile_inline.clone();
        let tar = tokio::task::spawn_blocking(move || tar_context(&ctx, inline.as_deref()))
            .await
            .map_err(|e| {
                DriverError::new(
                    DriverErrorKind::Other,
                    format!("context packing task failed: {e}"),
                )
            })?
            .map_err(|e| {
                DriverError::new(
                    DriverErrorKind::BuildFailed,
                    format!("cannot read build context {}: {e}", context.display()),
                )
                .with_hint("check that build.context exists on this host and is readable")
            })?;
        let dockerfile = match (&build.dockerfile_inline, &build.dockerfile) {
            (Some(_), _) => INLINE_DOCKERFILE.to_string(),
            (None, Some(f)) => f.clone(),
            (None, None) => "Dockerfile".to_string(),
        };
        let mut image_labels: HashMap<String, String> = build.labels.clone().into_iter().collect();
        image_labels.insert(labels::MANAGED.to_string(), "true".to_string());
        if let Some(h) = build.fingerprint() {
            image_labels.insert(CONTEXT_HASH_LABEL.to_string(), h);
        }
        let args: HashMap<String, String> = build.args.clone().into_iter().collect();
        let mut options = BuildImageOptionsBuilder::default()
            .dockerfile(&dockerfile)
            .t(image)
            .rm(true)
            .forcerm(true)
            .buildargs(&args)
            .labels(&image_labels)
            .nocache(build.no_cache)
            .platform(platform.unwrap_or_default());
        if let Some(t) = &build.target {
            options = options.target(t);
        }
        if let Some(n) = &build.network {
            options = options.networkmode(n);
        }
        if !build.extra_hosts.is_empty() {
            options = options.extrahosts(&build.extra_hosts.join(","));
        }
        if let Some(s) = build.shm_size_bytes.and_then(|s| i32::try_from(s).ok()) {
            options = options.shmsize(s);
        }
        if !build.cache_from.is_empty() {
            options = options.cachefrom(&build.cache_from);
        }
        if build.pull {
            options = options.pull("1");
        }
        let options = options.build();
        tracing::info!(image, context = %context.display(), "building image");
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(tar.into())));
        let mut tail: VecDeque<String> = VecDeque::new();
        let failed = |msg: String, tail: &VecDeque<String>| {
            let mut message = format!("building image {image} failed: {}", msg.trim());
            if !tail.is_empty() {
                message.push('\n');
                message.push_str(&tail.iter().cloned().collect::<Vec<_>>().join("\n"));
            }
            DriverError::new(DriverErrorKind::BuildFailed, message)
                .with_hint("fix the Dockerfile or the build context; the engine output is above")
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(s) = info.stream {
                        for line in s.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                            if tail.len() == BUILD_TAIL_LINES {
                                tail.pop_front();
                            }
                            tail.push_back(line.to_string());
                        }
                    }
                    if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                        return Err(failed(msg, &tail));
                    }
                }
                Err(e) if is_unavailable(&e) => return Err(unavailable(&e)),
                Err(e) => return Err(failed(engine_message(&e), &tail)),
            }
        }
        Ok(())
    }
}

/// The most files a build context may have: it is packed in memory.
const MAX_CONTEXT_FILES: u64 = 100_000;
/// The most bytes a build context may hold.
const MAX_CONTEXT_BYTES: u64 = 512 * 1024 * 1024;

/// Files and bytes under `dir` (symbolic links counted, not followed), or an error as soon as
/// either passes its limit.
impl DockerDriver {
    /// The image's packages, read from the engine's export of it (`docker save`), spooled to a
    /// temporary file (an image may be larger than memory should hold) and read off the tokio
    /// threads.
    pub(super) async fn image_inventory(
        &self,
        image: &str,
    ) -> Result<(wharf_types::Inventory, String), DriverError> {
        use std::io::Write;
        let what = format!("cannot export image {image}");
        let file = tempfile::tempfile().map_err(|e| {
            DriverError::new(
                DriverErrorKind::Other,
                format!("{what}: a temporary file: {e}"),
            )
        })?;
        let mut out = std::io::BufWriter::new(file);
        let mut stream = self.docker.export_image(image);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                let mut err = map_err(e, &what);
                if err.kind == DriverErrorKind::NotFound {
                    err.kind = DriverErrorKind::ImageMissing;
                    err = err.with_hint("build or pull it on this node first");
                }
                err
            })?;
            out.write_all(&chunk)
                .map_err(|e| DriverError::new(DriverErrorKind::Other, format!("{what}: {e}")))?;
        }
        let file = out
            .into_inner()
            .map_err(|e| DriverError::new(DriverErrorKind::Other, format!("{what}: {e}")))?;
        tokio::task::spawn_blocking(move || wharf_scan::inventory::docker_save(file))
            .await
            .map_err(|e| DriverError::new(DriverErrorKind::Other, format!("{what}: {e}")))?
            .map_err(|e| DriverError::new(DriverErrorKind::Other, format!("image {image}: {e}")))
    }
}

fn measure_context(dir: &Path, files: &mut u64, bytes: &mut u64) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?; // of the link itself: not followed
        *files += 1;
        *bytes += meta.len();
        if *files > MAX_CONTEXT_FILES || *bytes > MAX_CONTEXT_BYTES {
            return Err(std::io::Error::other(format!(
                "it holds more than {MAX_CONTEXT_FILES} files or {} MiB, the most a build context may",
                MAX_CONTEXT_BYTES / (1024 * 1024)
            )));
        }
        if meta.is_dir() {
            measure_context(&entry.path(), files, bytes)?;
        }
    }
    Ok(())
}

/// Where an inline Dockerfile (`dockerfile_inline`) goes in the context sent to the engine.
const INLINE_DOCKERFILE: &str = ".wharf.inline.Dockerfile";

/// Pack a build context directory into a tar archive (symlinks kept as links), within the
/// limits above; with the inline Dockerfile, when there is one, as [`INLINE_DOCKERFILE`].
fn tar_context(dir: &Path, inline: Option<&str>) -> std::io::Result<Vec<u8>> {
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not a directory",
        ));
    }
    measure_context(dir, &mut 0, &mut 0)?;
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)?;
    if let Some(text) = inline {
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, INLINE_DOCKERFILE, text.as_bytes())?;
    }
    tar.into_inner()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_past_the_file_limit_is_refused_before_packing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        assert!(tar_context(dir.path(), None).is_ok());
        let mut files = MAX_CONTEXT_FILES - 1;
        assert!(measure_context(dir.path(), &mut files, &mut 0).is_ok());
        let mut files = MAX_CONTEXT_FILES;
        let e = measure_context(dir.path(), &mut files, &mut 0).unwrap_err();
        assert!(
            e.to_string().contains("the most a build context may"),
            "{e}"
        );
        let mut bytes = MAX_CONTEXT_BYTES;
        let e = measure_context(dir.path(), &mut 0, &mut bytes).unwrap_err();
        assert!(e.to_string().contains("MiB"), "{e}");
    }
}
