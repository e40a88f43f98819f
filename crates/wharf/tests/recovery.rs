//! Crash safety (acceptance check 6): `kill -9` of `wharf up` in the middle of a deploy, then a
//! fresh start on the same data directory. The deploy completes, each service has exactly its
//! replicas as containers (no duplicates, no orphans of old generations), stacks and tokens survive.

mod common;

use std::time::Duration;

use common::*;
use wharf_client::Context;
use wharf_testkit::{Check, not_yet, wait_for};
use wharf_types::DeploymentState;

/// Slow starters need a start period, or they turn unhealthy before they listen.
/// The service keys of a web with `environment` (lines of `KEY: value`) and a health check
/// with a long start period (slow starters are not failed while wharf is down).
fn slow_web(environment: &[&str]) -> String {
    let env: String = environment.iter().map(|e| format!("      {e}\n")).collect();
    format!("    environment:\n{env}{HEALTHCHECK}      start_period: 20s\n")
}

async fn wait_succeeded(w: &Wharf, id: &str) {
    wait_for(
        &format!("deployment {id} to succeed after the restart"),
        Duration::from_secs(90),
        || async {
            match w.client.deployment(id).await {
                Ok(d) if d.state == DeploymentState::Succeeded => Check::Done(()),
                Ok(d) if d.state == DeploymentState::Failed => panic!("deployment failed: {d:?}"),
                other => not_yet(other.map(|d| (d.state, d.services))),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", tail(&w.log(), 60)));
}

/// Every container of the stack is running, one per slot, on the current generation.
async fn assert_exactly_replicas(w: &Wharf, stack: &str, service: &str, replicas: usize) {
    let insts = w.instances(stack, service).await;
    let cs: Vec<_> = containers(stack)
        .await
        .into_iter()
        .filter(|(n, _, _)| n.contains(&format!("-{service}-")))
        .collect();
    assert_eq!(
        cs.len(),
        replicas,
        "containers of {stack}/{service}: {cs:?}\ninstances: {}",
        summary(&insts)
    );
    assert!(
        cs.iter().all(|(_, _, running)| *running),
        "all containers running: {cs:?}"
    );
    for i in &insts {
        let name = format!("wharf-{stack}-{service}-{}-g{}", i.slot, i.generation);
        assert!(
            cs.iter().any(|(n, _, _)| *n == name),
            "container {name} of the current generation exists: {cs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_first_deploy_then_restart_completes_it() {
    let (mut w, stack) = Wharf::start_for("crash1").await;
    // Slow starters (5 s before they listen), so the deploy is surely still in progress when
    // wharf is killed right after the first container appears.
    let extra = slow_web(&["START_DELAY_MS: \"5000\""]);
    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 5, &extra));
    let token_before = Context::load_from(&w.config_dir().join("context.json"))
        .unwrap()
        .unwrap()
        .token;
    let id = w.deploy_detached(&file);
    // Kill as soon as the engine has some of the containers, before the deployment is done.
    wait_for(
        "some containers to be created",
        Duration::from_secs(30),
        || async {
            let n = containers(&stack).await.len();
            (n >= 1).then_some(())
        },
    )
    .await
    .unwrap();
    let d = w.client.deployment(&id).await.expect("deployment");
    assert_eq!(
        d.state,
        DeploymentState::InProgress,
        "the kill must land mid-deploy"
    );
    w.kill9();

    w.launch(&[]).await;
    let token_after = Context::load_from(&w.config_dir().join("context.json"))
        .unwrap()
        .unwrap()
        .token;
    assert_eq!(
        token_before, token_after,
        "the admin token survives the restart"
    );
    wait_succeeded(&w, &id).await;
    assert_exactly_replicas(&w, &stack, "web", 5).await;
    let stacks = w.client.list_stacks().await.expect("stacks");
    assert!(
        stacks.iter().any(|s| s.name == stack),
        "stack survives: {stacks:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_rolling_update_then_restart_completes_it_without_orphans() {
    let (mut w, stack) = Wharf::start_for("crash2").await;
    let v1 = slow_web(&["VERSION: v1", "START_DELAY_MS: \"1000\""]);
    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 4, &v1));
    w.deploy(&file, 0);
    let v2 = v1.replace("VERSION: v1", "VERSION: v2");
    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 4, &v2));
    let id = w.deploy_detached(&file);
    // One slot at a time (parallelism 1): kill once the first replacement is done and others are not.
    wait_for(
        "the rolling update to be part-way",
        Duration::from_secs(60),
        || async {
            let d = w.client.deployment(&id).await.ok()?;
            let s = d.services.first()?;
            (s.ready >= 1 && s.updated < 4).then_some(()).or_else(|| {
                assert!(
                    d.state == DeploymentState::InProgress,
                    "update finished before the kill: {d:?}"
                );
                None
            })
        },
    )
    .await
    .unwrap();
    w.kill9();

    w.launch(&[]).await;
    wait_succeeded(&w, &id).await;
    // Old-generation containers must be gone too (they may still be stopping for a moment).
    wait_for(
        "only the current generation to remain",
        Duration::from_secs(30),
        || async {
            let n = containers(&stack).await.len();
            if n == 4 {
                Check::Done(())
            } else {
                not_yet(containers(&stack).await)
            }
        },
    )
    .await
    .unwrap();
    assert_exactly_replicas(&w, &stack, "web", 4).await;
}
