//! Rolling-update semantics end to end on the real engine: automatic rollback of a version that
//! never gets healthy, `wharf service rollback`, and start-first updates that never lose capacity.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use wharf_testkit::{Check, not_yet, wait_for};
use wharf_types::DeploymentState;

/// One service `web` of the test workload (2 replicas) with a health check, `MODE` in its
/// environment (and `FAIL_HEALTH=1` if `failing`), and `deploy_extra` lines under `deploy:`.
fn stack_yaml(stack: &str, mode: &str, failing: bool, deploy_extra: &str) -> String {
    let mut web = Service::testapp("web").env("MODE", &format!("\"{mode}\""));
    if failing {
        web = web.env("FAIL_HEALTH", "\"1\"");
    }
    let web = web.replicas(2).deploy(deploy_extra).healthcheck();
    Stack::new(stack).service(web).yaml()
}

/// `wharf up` with 2 ready instances of `web` at `MODE=one`; the stack's name.
async fn start_with_web(prefix: &str, deploy: &str) -> (Wharf, String) {
    let (w, stack, _) = Wharf::start_web(prefix, 2, |s| stack_yaml(s, "one", false, deploy)).await;
    (w, stack)
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
    let deploy = "      update_config:\n        parallelism: 1\n        monitor: 1s\n        failure_action: rollback\n      rollback_config:\n        parallelism: 2\n        monitor: 0s\n";
    let (mut w, stack) = start_with_web("autorb", deploy).await;
    let old_hash = w.service(&stack, "web").await.expect("web").spec_hash;

    let file = w.stack_file(&stack, &stack_yaml(&stack, "two", true, deploy));
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
    let deploy = "      update_config:\n        parallelism: 2\n        monitor: 0s\n      rollback_config:\n        parallelism: 2\n        monitor: 0s\n";
    let (mut w, stack) = start_with_web("manrb", deploy).await;
    let target = format!("{stack}/web");

    // Nothing to roll back to yet.
    let out = w.cli(&["service", "rollback", &target]);
    let (so, se) = text(&out);
    assert_ne!(out.status.code(), Some(0), "refused:\n{so}\n{se}");
    assert!(se.contains("no previous spec"), "says why:\n{se}");
    assert!(se.contains("hint:"), "with a hint:\n{se}");

    let old_hash = w.service(&stack, "web").await.expect("web").spec_hash;
    let file = w.stack_file(&stack, &stack_yaml(&stack, "two", false, deploy));
    tokio::task::block_in_place(|| w.deploy(&file, 0));
    let new_hash = w.service(&stack, "web").await.expect("web").spec_hash;
    assert_ne!(old_hash, new_hash);
    assert_all_on(&w, &stack, 2, &new_hash, "two").await;

    let (so, _) = w.cli_code_async(&["service", "rollback", &target], 0).await;
    assert!(so.contains("rolled back"), "{so}");
    assert_all_on(&w, &stack, 2, &old_hash, "one").await;
}

/// Containers of the stack the engine reports running and healthy.
async fn healthy_containers(stack: &str) -> (usize, usize) {
    let cs = list_stack(stack).await;
    let healthy = cs
        .iter()
        .filter(|c| is_running(c) && c.status.as_deref().is_some_and(|s| s.contains("(healthy)")))
        .count();
    (healthy, cs.len())
}

/// `order: start-first`: the old instance keeps serving until its replacement is healthy, so the
/// number of ready instances never drops below the replica count. Deployed with `--detach`, the
/// printed deployment id is followed through `GET /v1/deployments/{id}`.
#[tokio::test(flavor = "multi_thread")]
async fn start_first_updates_never_drop_below_the_replica_count() {
    let deploy = "      update_config:\n        parallelism: 1\n        order: start-first\n        monitor: 0s\n";
    let (mut w, stack) = start_with_web("sfirst", deploy).await;
    let two_healthy = |what: &'static str| {
        let stack = stack.clone();
        async move {
            wait_for(what, Duration::from_secs(20), || async {
                match healthy_containers(&stack).await {
                    (2, 2) => Check::Done(()),
                    other => not_yet(format!("{other:?}")),
                }
            })
            .await
            .expect(what)
        }
    };
    two_healthy("2 healthy containers before the update").await;

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
    let file = w.stack_file(&stack, &stack_yaml(&stack, "two", false, deploy));
    let id = w.deploy_detached_text(&file);
    let d = w
        .wait_deployment_end(&id, "the deployment to end", Duration::from_secs(60))
        .await;
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    let new_hash = w.service(&stack, "web").await.expect("web").spec_hash;
    assert_all_on(&w, &stack, 2, &new_hash, "two").await;
    // Until the old containers are gone too.
    two_healthy("the old containers gone, 2 healthy left").await;
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
