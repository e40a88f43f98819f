//! Deploy by digest and redeploy on push (issue 15, acceptance check 4), with the real parts:
//! the real `docker` CLI pushes two versions of an image to `wharf up`'s registry under one tag;
//! a stack naming that tag deploys it pinned by digest (`wharf.local/NAME:TAG@DIGEST`), the
//! engine pulling it through the node's mirror on loopback; with `x-wharf: {auto_deploy: true}`
//! pushing the next version to the tag rolls the service within 5 s of the push; a rollback
//! goes back to the previous digest and stays there (the tag did not move since); a tag the
//! registry does not have refuses the deploy with the place and a hint. On a cluster
//! (`wharf server` + `wharf agent`), the agent's mirror fetches over the agent port with its
//! node certificate and keeps what it fetched by digest.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::docker::{Images, push, rand_nonce, run, stdout};
use common::{Harness, Wharf, container_env, containers};
use wharf_testkit::wait_for;

/// Build `tag` from the test app with `VERSION=version` and a file unique to it (a layer the
/// engine has no other copy of).
fn build_version(dir: &Path, base: &str, tag: &str, version: &str) {
    std::fs::write(dir.join("version"), format!("{version} {}\n", rand_nonce())).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {base}\nENV VERSION={version}\nCOPY version /version\n"),
    )
    .unwrap();
    run(
        "docker",
        &["build", "-q", "-t", tag, &dir.to_string_lossy()],
        &[],
        None,
    );
}

/// `docker login HOST` with `token`, in a config directory of the test's own.
fn login(host: &str, token: &str) -> tempfile::TempDir {
    let config = tempfile::tempdir().unwrap();
    let out = run(
        "docker",
        &["login", host, "-u", "x", "--password-stdin"],
        &[("DOCKER_CONFIG", config.path())],
        Some(token),
    );
    assert!(stdout(&out).contains("Login Succeeded"), "{out:?}");
    config
}

/// The stack file of service `web` running `image`, following its tag when `auto`.
fn stack(name: &str, image: &str, auto: bool) -> String {
    format!(
        "name: {name}\nservices:\n  web:\n    image: {image}\n    stop_grace_period: 1s\n    x-wharf:\n      auto_deploy: {auto}\n      drain_grace: 0s\n"
    )
}

/// The running containers of `stack` whose `VERSION` is `version`.
async fn running_version(stack: &str, version: &str) -> usize {
    let mut n = 0;
    for (_, id, running) in containers(stack).await {
        if running
            && container_env(&id)
                .await
                .contains(&format!("VERSION={version}"))
        {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_pins_the_digest_and_a_push_to_the_tag_rolls_an_auto_deploy_service() {
    let mut w = Wharf::start().await;
    let base = common::testapp_image().await.expect("test image");
    let host = format!("127.0.0.1:{}", w.port);
    let name = format!("dl{}", rand_nonce() % 1_000_000);
    let repo = format!("{host}/{name}/web");
    let live = format!("{repo}:live");
    let (v1, v2) = (format!("{repo}:v1"), format!("{repo}:v2"));
    let _images = Images(vec![live.clone(), v1.clone(), v2.clone()]);
    let build = tempfile::tempdir().unwrap();
    let docker = login(&host, w.client.token());
    let env = [("DOCKER_CONFIG", docker.path())];

    // Version 1 under `live`; deployed by that tag.
    build_version(build.path(), &base, &v1, "v1");
    run("docker", &["tag", &v1, &live], &[], None);
    let d1 = push(&live, &env);
    let file = w.stack_file(&name, &stack(&name, &live, true));
    w.deploy(&file, 0);
    let svc = w.client.get_service(&name, "web").await.unwrap();
    assert_eq!(
        svc.spec.image.as_deref(),
        Some(format!("wharf.local/{name}/web:live@{d1}").as_str()),
        "the deploy pinned the tag's digest"
    );
    wait_for("version 1 to run", Duration::from_secs(30), || async {
        (running_version(&name, "v1").await == 1).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    // The engine pulled it through the node's mirror, by digest.
    let (_, id, _) = containers(&name).await.remove(0);
    let inspect = stdout(&run(
        "docker",
        &["inspect", "--format", "{{.Config.Image}}", &id],
        &[],
        None,
    ));
    assert!(
        inspect.trim().starts_with("127.0.0.1:")
            && inspect.trim().ends_with(&format!("/{name}/web@{d1}")),
        "the container's image is the mirror's, by digest: {inspect}"
    );
    // Deploying the same file again changes nothing: the tag still names what runs.
    let (so, _) = w.deploy(&file, 0);
    assert!(
        so.contains("no changes"),
        "an unchanged tag redeploys nothing:\n{so}"
    );

    // Version 2 pushed to `live`: the service rolls within 5 s of the push.
    build_version(build.path(), &base, &v2, "v2");
    run("docker", &["tag", &v2, &live], &[], None);
    let d2 = push(&live, &env);
    let pushed = Instant::now();
    assert_ne!(d1, d2);
    wait_for(
        "version 2 to run after the push",
        Duration::from_secs(5),
        || async { (running_version(&name, "v2").await == 1).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    eprintln!("rolled {:?} after the push", pushed.elapsed());
    let svc = w.client.get_service(&name, "web").await.unwrap();
    assert_eq!(
        svc.spec.image.as_deref(),
        Some(format!("wharf.local/{name}/web:live@{d2}").as_str())
    );
    let deployments = w.client.list_deployments(Some(&name)).await.unwrap();
    let trigger = deployments[0].trigger.clone().unwrap_or_default();
    assert!(
        trigger.contains(&d2) && trigger.contains("live"),
        "the deployment says the push started it: {trigger:?}"
    );
    wait_for("version 1 to be gone", Duration::from_secs(30), || async {
        (running_version(&name, "v1").await == 0).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));

    // A rollback goes back to the previous digest, and stays (the tag did not move since).
    w.cli_code(&["service", "rollback", &format!("{name}/web")], 0);
    let svc = w.client.get_service(&name, "web").await.unwrap();
    assert_eq!(
        svc.spec.image.as_deref(),
        Some(format!("wharf.local/{name}/web:live@{d1}").as_str())
    );
    wait_for(
        "version 1 to run again",
        Duration::from_secs(30),
        || async { (running_version(&name, "v1").await == 1).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    tokio::time::sleep(Duration::from_secs(2)).await; // several passes of the follower
    let svc = w.client.get_service(&name, "web").await.unwrap();
    assert!(
        svc.spec.image.as_deref().is_some_and(|i| i.ends_with(&d1)),
        "the follower undid the rollback: {:?}",
        svc.spec.image
    );

    // A tag the registry does not have: refused, with the place and what to do; nothing changes.
    let bad = w.stack_file(&name, &stack(&name, &format!("{repo}:nope"), true));
    let (_, se) = w.deploy(&bad, 2);
    assert!(
        se.contains("services.web.image") && se.contains("no tag nope") && se.contains("push"),
        "{se}"
    );
    let svc = w.client.get_service(&name, "web").await.unwrap();
    assert!(svc.spec.image.as_deref().is_some_and(|i| i.ends_with(&d1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_agent_pulls_through_its_mirror_with_its_node_certificate() {
    let mut s = cluster::Server::start().await;
    let token = s.token(&[]);
    let mut agent = s.agent("mirror-a", Some(&token));
    let base = common::testapp_image().await.expect("test image");
    let host = format!("127.0.0.1:{}", s.api_port);
    let name = format!("dm{}", rand_nonce() % 1_000_000);
    let image = format!("{host}/{name}/web:1");
    let images = Images(vec![image.clone()]);
    let build = tempfile::tempdir().unwrap();
    build_version(build.path(), &base, &image, "c1");
    let docker = login(&host, s.client.token());
    let digest = push(&image, &[("DOCKER_CONFIG", docker.path())]);
    // The engine forgets the image and its own layer: the pull must bring them.
    drop(images);
    wait_for("the agent to be ready", Duration::from_secs(30), || async {
        let nodes = s.client.list_nodes().await.ok()?;
        nodes
            .iter()
            .any(|n| n.state == wharf_types::NodeState::Ready)
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", s.logs(), agent.log()));
    let file = s.stack_file(&name, &stack(&name, &image, false));
    s.deploy(&file, 0);
    wait_for("the service to run", Duration::from_secs(60), || async {
        (running_version(&name, "c1").await == 1).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", s.logs(), agent.log()));
    // What the mirror fetched is kept by digest in the agent's data directory: the manifest
    // and every blob it names.
    let kept = agent.data.join("mirror").join("sha256");
    assert!(
        kept.join(digest.trim_start_matches("sha256:")).exists(),
        "the manifest {digest} is kept in {}",
        kept.display()
    );
    let files = std::fs::read_dir(&kept).unwrap().count();
    assert!(
        files >= 3 * 2,
        "manifest, config and layers (each with its type): {files}"
    );
    let _ = agent.child.take().map(|mut c| c.kill());
}
