//! Issue 13 (Compose keys that change what runs), against the real engine: `build.target`
//! builds the named stage; a volume `external: {name: X}` attaches X with its data and survives
//! `stack rm --volumes`; `mem_limit`, `cpus`, `logging`, `extra_hosts`, `dns` and a tmpfs
//! mount's size and mode reach the container the engine created (inspected). The conversion
//! and the errors for bad values are tested in process (`crates/wharf-compose`).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, DownloadFromContainerOptionsBuilder, InspectContainerOptions,
    RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use futures::StreamExt;

use common::*;

/// Two stages that answer differently: `a` sets STAGE=a, `b` (the last, what a build without
/// a target makes) STAGE=b.
const TWO_STAGES: &str =
    "FROM wharf-testapp:latest AS a\nENV STAGE=a\n\nFROM wharf-testapp:latest AS b\nENV STAGE=b\n";

/// `build: {target: a}` runs stage `a`, though `b` is the last stage.
#[tokio::test(flavor = "multi_thread")]
async fn build_target_builds_the_named_stage() {
    let (mut w, stack) = Wharf::start_for("target").await;
    let dir = w.test_dir().join("stacks").join(&stack);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), TWO_STAGES).unwrap();
    let yaml = format!(
        "name: {stack}\nservices:\n  web:\n    build: {{context: ., target: a}}\n{HEALTHCHECK}"
    );
    w.deploy_ready(&stack, &yaml, "web", 1, Duration::from_secs(90))
        .await;
    let (_, id, _) = containers(&stack).await.pop().expect("a container");
    let env = container_env(&id).await;
    assert!(
        env.iter().any(|e| e == "STAGE=a") && !env.iter().any(|e| e == "STAGE=b"),
        "the container runs stage a: {env:?}"
    );
}

/// Create volume `name` holding `hello.txt`, written through a container that mounts it
/// (the test image has no shell: the file is uploaded as an archive).
async fn volume_with_file(docker: &bollard::Docker, name: &str, text: &str) {
    docker
        .create_volume(VolumeCreateRequest {
            name: Some(name.to_string()),
            ..Default::default()
        })
        .await
        .expect("create volume");
    let body = ContainerCreateBody {
        image: Some("wharf-testapp:latest".into()),
        host_config: Some(HostConfig {
            mounts: Some(vec![Mount {
                target: Some("/data".into()),
                source: Some(name.to_string()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let filler = format!("{name}-filler");
    let options = CreateContainerOptionsBuilder::default()
        .name(&filler)
        .build();
    docker
        .create_container(Some(options), body)
        .await
        .expect("create the filler container");
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(text.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "hello.txt", text.as_bytes())
        .unwrap();
    let archive = tar.into_inner().unwrap();
    let to = UploadToContainerOptionsBuilder::default()
        .path("/data")
        .build();
    docker
        .upload_to_container(&filler, Some(to), bollard::body_full(archive.into()))
        .await
        .expect("upload into the volume");
    let rm = RemoveContainerOptionsBuilder::default().force(true).build();
    docker
        .remove_container(&filler, Some(rm))
        .await
        .expect("remove the filler");
}

/// The content of `path` in container `id` (one file, read from the archive the engine sends).
async fn file_in(docker: &bollard::Docker, id: &str, path: &str) -> String {
    let options = DownloadFromContainerOptionsBuilder::default()
        .path(path)
        .build();
    let mut bytes = Vec::new();
    let mut stream = docker.download_from_container(id, Some(options));
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.unwrap_or_else(|e| panic!("read {path} in {id}: {e}")));
    }
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut entry = archive
        .entries()
        .expect("a tar archive")
        .next()
        .expect("one entry")
        .expect("an entry");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut entry, &mut text).expect("utf-8");
    text
}

/// A service with an external volume, resource limits, a log driver, extra hosts, its own
/// name server and a sized tmpfs: the engine created the container with each.
#[tokio::test(flavor = "multi_thread")]
async fn service_keys_and_an_external_volume_reach_the_container() {
    let (mut w, stack) = Wharf::start_for("keys").await;
    let docker = wharf_testkit::docker().await.expect("docker");
    let external = format!("{stack}-kept");
    volume_with_file(&docker, &external, "made before the stack\n").await;

    let yaml = format!(
        "name: {stack}
services:
  web:
    image: wharf-testapp:latest
{HEALTHCHECK}    mem_limit: 64m
    cpus: 0.5
    logging:
      driver: json-file
      options: {{max-size: 1m, max-file: \"2\"}}
    extra_hosts: [\"db.example:10.1.2.3\"]
    dns: 10.0.0.53
    volumes:
      - kept:/data
      - type: tmpfs
        target: /scratch
        tmpfs: {{size: 8m, mode: 1777}}
volumes:
  kept:
    external: {{name: {external}}}
"
    );
    w.deploy_ready(&stack, &yaml, "web", 1, Duration::from_secs(60))
        .await;
    let (_, id, _) = containers(&stack).await.pop().expect("a container");
    let c = docker
        .inspect_container(&id, None::<InspectContainerOptions>)
        .await
        .expect("inspect");
    let hc = c.host_config.clone().expect("host config");
    assert_eq!(hc.memory, Some(64 << 20), "mem_limit");
    assert_eq!(hc.nano_cpus, Some(500_000_000), "cpus");
    let log = hc.log_config.clone().expect("log config");
    assert_eq!(log.typ.as_deref(), Some("json-file"));
    let log_opts = log.config.unwrap_or_default();
    assert_eq!(
        (log_opts.get("max-size"), log_opts.get("max-file")),
        (Some(&"1m".to_string()), Some(&"2".to_string()))
    );
    assert_eq!(
        hc.extra_hosts.clone().unwrap_or_default(),
        ["db.example:10.1.2.3"]
    );
    // The name server: the container's own where Wharf's DNS does not serve the stack network
    // (the shared-engine harness); else Wharf's DNS first, forwarding the container's other
    // questions to it (the label it reads).
    let dns = hc.dns.clone().unwrap_or_default();
    let labels: HashMap<String, String> = c
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    assert!(
        dns == ["10.0.0.53"]
            || (dns.len() == 1
                && labels.get("io.wharf.dns").map(String::as_str) == Some("10.0.0.53")),
        "dns {dns:?}, labels {labels:?}"
    );
    let mounts = hc.mounts.clone().unwrap_or_default();
    let tmpfs = mounts
        .iter()
        .find(|m| m.target.as_deref() == Some("/scratch"))
        .unwrap_or_else(|| panic!("the tmpfs mount: {mounts:?}"));
    assert_eq!(tmpfs.typ, Some(MountType::TMPFS));
    let t = tmpfs.tmpfs_options.clone().expect("tmpfs options");
    assert_eq!((t.size_bytes, t.mode), (Some(8 << 20), Some(0o1777)));
    let data = c
        .mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.destination.as_deref() == Some("/data"))
        .expect("the /data mount");
    assert_eq!(data.name.as_deref(), Some(external.as_str()), "{data:?}");
    assert_eq!(
        file_in(&docker, &id, "/data/hello.txt").await,
        "made before the stack\n",
        "the external volume's data is in the container"
    );
    assert!(
        docker
            .inspect_volume(&format!("{stack}_kept"))
            .await
            .is_err(),
        "Wharf made a volume of its own for the external one"
    );

    // `stack rm --volumes` leaves the external volume.
    w.cli_code(&["stack", "rm", "--volumes", &stack], 0);
    w.wait_containers(
        &stack,
        "the stack's containers gone",
        Duration::from_secs(30),
        |cs| cs.is_empty(),
    )
    .await;
    let kept = docker.inspect_volume(&external).await;
    let _ = docker
        .remove_volume(
            &external,
            None::<bollard::query_parameters::RemoveVolumeOptions>,
        )
        .await;
    assert!(
        kept.is_ok(),
        "stack rm --volumes removed the external volume"
    );
}
