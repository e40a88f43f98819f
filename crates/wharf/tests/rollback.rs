//! Rolling-update semantics end to end on the real engine: automatic rollback of a version that
//! never gets healthy, `wharf service rollback`, and start-first updates that never lose capacity.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use wharf_testkit::{Check, not_yet, wait_for};
use wharf_types::DeploymentState;

/// One service `web` of the test workload with a health check, `MODE` in its environment plus
/// `env_extra` lines, and `deploy_extra` lines under `deploy:`.
fn stack_yaml(
    stack: &str,
    replicas: u32,
    mode: &str,
    env_extra: &str,
    deploy_extra: &str,
) -> String {
    format!(
        "name: {stack}\nservices:\n  web:\n    image: wharf-testapp:latest\n    stop_grace_period: 2s\n    environment:\n      MODE: \"{mode}\"\n{env_extra}    deploy:\n      replicas: {replicas}\n{deploy_extra}{HEALTHCHECK}"
    )
}

/// Every instance ready, on `hash`, with `MODE=mode` in the engine.
async fn assert_all_on(w: &Wharf, stack: &str, n: usize, hash: &str, mode: &str) {
    let insts = w.wait_ready(stack, "web", n, Duration::from_secs(30)).await;
    for i in &insts {
        assert_eq!(
            i.spec_hash,
            hash,
            "instance {} spec: {}",
            i.id,
            summary(&insts)
        );
        let env = container_env(i.container_id.as_deref().expect("container")).await;
        assert!(
            env.iter().any(|e| *e == format!("MODE={mode}")),
            "instance {} env: {env:?}",
            i.id
        );
        assert!(
            !env.iter().any(|e| e == "FAIL_HEALTH=1"),
            "instance {} runs the failing version: {env:?}",
            i.id
        );
    }
}

/// An update to a version whose health check never passes, with `failure_action: rollback`:
/// the deploy fails saying it rolled back and why, and every slot runs the old spec again.
#[tokio::test(flavor = "multi_thread")]
async fn a_version_that_never_gets_healthy_is_rolled_back() {
    testapp_image().await.expect("test image");
    let mut w = Wharf::start().await;
    let stack = unique_stack("autorb");
    let deploy = "      update_config:\n        parallelism: 1\n        monitor: 1s\n        failure_action: rollback\n      rollback_config:\n        parallelism: 2\n        monitor: 0s\n";
    let file = w.stack_file(&stack, &stack_yaml(&stack, 2, "one", "", deploy));
    w.deploy(&file, 0);
    w.wait_ready(&stack, "web", 2, Duration::from_secs(30))
        .await;
    let old_hash = w.service(&stack, "web").await.expect("web").spec_hash;

    w.stack_file(
        &stack,
        &stack_yaml(&stack, 2, "two", "      FAIL_HEALTH: \"1\"\n", deploy),
    );
    let (so, se) = tokio::task::block_in_place(|| w.deploy(&file, 1));
    let all = format!("--- stdout ---\n{so}\n--- stderr ---\n{se}");
    assert!(se.contains("rolled back"), "says it rolled back:\n{all}");
    assert!(
        se.contains("status 503: unhealthy: FAIL_HEALTH=1"),
        "says why, with the health check's output:\n{all}"
    );

    let svc = w.service(&stack, "web").await.expect("web");
    assert_eq!(
        svc.spec_hash, old_hash,
        "the service is back on the old spec"
    );
    assert_all_on(&w, &stack, 2, &old_hash, "one").await;
    // Only the two old-version containers are left in the engine.
    wait_for(
        "no leftover containers",
        Duration::from_secs(20),
        || async {
            let cs = containers(&stack).await;
            if cs.len() == 2 && cs.iter().all(|(_, _, running)| *running) {
                Check::Done(())
            } else {
                not_yet(format!("{cs:?}"))
            }
        },
    )
    .await
    .expect("leftovers removed");
}

/// `wharf service rollback` after a successful update brings the old environment back on every
/// instance; without a previous spec it is refused with a hint.
#[tokio::test(flavor = "multi_thread")]
async fn service_rollback_restores_the_previous_spec() {
    testapp_image().await.expect("test image");
    let mut w = Wharf::start().await;
    let stack = unique_stack("manrb");
    let deploy = "      update_config:\n        parallelism: 2\n        monitor: 0s\n      rollback_config:\n        parallelism: 2\n        monitor: 0s\n";
    let file = w.stack_file(&stack, &stack_yaml(&stack, 2, "one", "", deploy));
    w.deploy(&file, 0);
    w.wait_ready(&stack, "web", 2, Duration::from_secs(30))
        .await;
    let target = format!("{stack}/web");

    // Nothing to roll back to yet.
    let out = w.cli(&["service", "rollback", &target]);
    let (so, se) = text(&out);
    assert_ne!(out.status.code(), Some(0), "refused:\n{so}\n{se}");
    assert!(se.contains("no previous spec"), "says why:\n{se}");
    assert!(se.contains("hint:"), "with a hint:\n{se}");

    let old_hash = w.service(&stack, "web").await.expect("web").spec_hash;
    w.stack_file(&stack, &stack_yaml(&stack, 2, "two", "", deploy));
    tokio::task::block_in_place(|| w.deploy(&file, 0));
    let new_hash = w.service(&stack, "web").await.expect("web").spec_hash;
    assert_ne!(old_hash, new_hash);
    assert_all_on(&w, &stack, 2, &new_hash, "two").await;

    let out = tokio::task::block_in_place(|| w.cli(&["service", "rollback", &target]));
    let (so, se) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "service rollback:\n{so}\n{se}\n--- log ---\n{}",
        tail(&w.log(), 30)
    );
    assert!(so.contains("rolled back"), "{so}");
    assert_all_on(&w, &stack, 2, &old_hash, "one").await;
}

/// Containers of the stack the engine reports running and healthy.
async fn healthy_containers(stack: &str) -> (usize, usize) {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let docker = wharf_testkit::docker().await.expect("docker");
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("io.wharf.stack={stack}")],
    )]);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    let cs = docker.list_containers(Some(opts)).await.unwrap_or_default();
    let healthy = cs
        .iter()
        .filter(|c| {
            c.state.as_ref().is_some_and(|s| s.to_string() == "running")
                && c.status.as_deref().is_some_and(|s| s.contains("(healthy)"))
        })
        .count();
    (healthy, cs.len())
}

/// `order: start-first`: the old instance keeps serving until its replacement is healthy, so the
/// number of ready instances never drops below the replica count. Deployed with `--detach`, the
/// printed deployment id is followed through `GET /v1/deployments/{id}`.
#[tokio::test(flavor = "multi_thread")]
async fn start_first_updates_never_drop_below_the_replica_count() {
    testapp_image().await.expect("test image");
    let mut w = Wharf::start().await;
    let stack = unique_stack("sfirst");
    let deploy = "      update_config:\n        parallelism: 1\n        order: start-first\n        monitor: 0s\n";
    let file = w.stack_file(&stack, &stack_yaml(&stack, 2, "one", "", deploy));
    w.deploy(&file, 0);
    w.wait_ready(&stack, "web", 2, Duration::from_secs(30))
        .await;
    wait_for("2 healthy containers", Duration::from_secs(20), || async {
        match healthy_containers(&stack).await {
            (2, 2) => Check::Done(()),
            other => not_yet(format!("{other:?}")),
        }
    })
    .await
    .expect("healthy before the update");

    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (stack, stop) = (stack.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                seen.push(healthy_containers(&stack).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };
    w.stack_file(&stack, &stack_yaml(&stack, 2, "two", "", deploy));
    let out = w.cli(&[
        "stack",
        "deploy",
        "--detach",
        "-c",
        file.to_str().expect("utf-8"),
    ]);
    let (so, se) = text(&out);
    assert_eq!(out.status.code(), Some(0), "deploy --detach:\n{so}\n{se}");
    let id = so
        .split_whitespace()
        .find(|t| t.starts_with("d-"))
        .unwrap_or_else(|| panic!("a deployment id in:\n{so}"))
        .to_string();
    let d = wait_for("the deployment to end", Duration::from_secs(60), || async {
        match w.client.deployment(&id).await {
            Ok(d) if d.state != DeploymentState::InProgress => Check::Done(d),
            Ok(d) => not_yet(format!("{d:?}")),
            Err(e) => not_yet(e.to_string()),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", tail(&w.log(), 30)));
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    let new_hash = w.service(&stack, "web").await.expect("web").spec_hash;
    assert_all_on(&w, &stack, 2, &new_hash, "two").await;
    // Until the old containers are gone too.
    wait_for("old containers gone", Duration::from_secs(20), || async {
        match healthy_containers(&stack).await {
            (2, 2) => Check::Done(()),
            other => not_yet(format!("{other:?}")),
        }
    })
    .await
    .expect("old containers removed");
    stop.store(true, Ordering::SeqCst);
    let seen = poller.await.expect("poller");

    let min = seen.iter().map(|(h, _)| *h).min().unwrap_or(0);
    let max_total = seen.iter().map(|(_, t)| *t).max().unwrap_or(0);
    assert!(
        min >= 2,
        "ready instances dropped to {min} during the update ({} observations): {seen:?}",
        seen.len()
    );
    assert!(
        max_total > 2,
        "start-first runs old and new side by side at some point: {seen:?}"
    );
}
