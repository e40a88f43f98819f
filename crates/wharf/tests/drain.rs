//! Drain before stop, end to end on the real engine: an instance the master takes out of the
//! desired state (scale down, stop-first update) is first marked draining (`wharf service ps`
//! shows it) and keeps running for its drain grace; only then does its container stop.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use wharf_types::{Deployment, DeploymentState};

/// The drain grace the tests set (`x-wharf: {drain_grace: 3s}`).
const GRACE: Duration = Duration::from_secs(3);
/// What polling every 100 ms on a loaded machine may cost between seeing the mark and the stop.
const SLACK: Duration = Duration::from_millis(600);

fn stack_yaml(stack: &str, replicas: u32, mode: &str) -> String {
    let web = Service::testapp("web")
        .env("MODE", &format!("\"{mode}\""))
        .extra("    x-wharf:\n      drain_grace: 3s\n")
        .replicas(replicas)
        .deploy("      update_config:\n        parallelism: 1\n        monitor: 0s\n")
        .healthcheck();
    Stack::new(stack).service(web).yaml()
}

/// (slot, generation) from a container name `wharf-{stack}-web-{slot}-g{generation}`.
fn slot_gen(name: &str) -> Option<(u32, u64)> {
    let (rest, g) = name.rsplit_once("-g")?;
    let (_, slot) = rest.rsplit_once('-')?;
    Some((slot.parse().ok()?, g.parse().ok()?))
}

/// What the poller saw, per (slot, generation): when the API first showed it draining, when its
/// container was first seen running, and when it was first seen not running any more.
#[derive(Debug, Default)]
struct Seen {
    draining: BTreeMap<(u32, u64), Instant>,
    running: BTreeMap<(u32, u64), Instant>,
    stopped: BTreeMap<(u32, u64), Instant>,
    deployment: Option<Deployment>,
    /// Rows of `wharf service ps` that said `draining`, the first time the API showed any.
    ps_draining: Option<usize>,
}

/// Poll the API (draining marks) and the engine (running containers) every 100 ms until the
/// deployment ends and `containers` containers of the stack are left, all running.
async fn watch(w: &Wharf, stack: &str, deployment: &str, containers_left: usize) -> Seen {
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let now = Instant::now();
        let insts = w.instances(stack, "web").await;
        for i in &insts {
            if i.draining {
                seen.draining.entry((i.slot, i.generation)).or_insert(now);
            }
        }
        if seen.ps_draining.is_none() && insts.iter().any(|i| i.draining) {
            let target = format!("{stack}/web");
            let out = tokio::task::block_in_place(|| w.cli(&["service", "ps", &target]));
            let table = String::from_utf8_lossy(&out.stdout).to_string();
            let rows = table
                .lines()
                .filter(|l| l.split_whitespace().nth(3) == Some("draining"))
                .count();
            seen.ps_draining = Some(rows);
        }
        let cs = containers(stack).await;
        let up: BTreeSet<(u32, u64)> = cs
            .iter()
            .filter(|(_, _, running)| *running)
            .filter_map(|(name, _, _)| slot_gen(name))
            .collect();
        for k in &up {
            seen.running.entry(*k).or_insert(now);
        }
        for k in seen.running.keys() {
            if !up.contains(k) {
                seen.stopped.entry(*k).or_insert(now);
            }
        }
        if let Ok(d) = w.client.deployment(deployment).await
            && d.state != DeploymentState::InProgress
        {
            seen.deployment = Some(d);
        }
        if seen.deployment.is_some() && cs.len() == containers_left && up.len() == containers_left {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "no end in 40 s: {seen:?}\ncontainers: {cs:?}\n--- log ---\n{}",
            tail(&w.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each of `gone` was marked draining and kept running for the grace after the mark.
fn assert_drained(seen: &Seen, gone: &[(u32, u64)]) {
    for k in gone {
        let marked = seen
            .draining
            .get(k)
            .unwrap_or_else(|| panic!("{k:?} never showed draining: {seen:?}"));
        let stopped = seen
            .stopped
            .get(k)
            .unwrap_or_else(|| panic!("{k:?} never stopped: {seen:?}"));
        let ran = stopped.saturating_duration_since(*marked);
        assert!(
            ran + SLACK >= GRACE,
            "{k:?} stopped {ran:?} after it was marked draining (grace {GRACE:?}): {seen:?}"
        );
    }
}

/// Scale 4 → 1: the three removed instances show draining, and each container keeps running for
/// the drain grace after that; the one kept never drains.
#[tokio::test(flavor = "multi_thread")]
async fn scale_down_drains_the_removed_instances_before_stopping_them() {
    let (w, stack, insts) = Wharf::start_web("drainscale", 4, |s| stack_yaml(s, 4, "one")).await;
    assert!(insts.iter().all(|i| !i.draining), "{}", summary(&insts));
    let gone: Vec<(u32, u64)> = insts
        .iter()
        .filter(|i| i.slot >= 1)
        .map(|i| (i.slot, i.generation))
        .collect();

    let started = Instant::now();
    let op = w
        .client
        .scale_service(&stack, "web", 1)
        .await
        .expect("scale");
    let id = op.deployment_id.expect("a deployment");
    let seen = watch(&w, &stack, &id, 1).await;
    let d = seen.deployment.as_ref().expect("ended");
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    assert_drained(&seen, &gone);
    assert_eq!(
        seen.ps_draining,
        Some(3),
        "`wharf service ps` shows the three draining: {seen:?}"
    );
    assert!(
        seen.draining.keys().all(|(slot, _)| *slot >= 1),
        "only removed slots drain: {seen:?}"
    );
    assert!(
        started.elapsed() + SLACK >= GRACE,
        "the scale down waited out the grace"
    );
    let left = w.instances(&stack, "web").await;
    assert_eq!(left.len(), 1, "{}", summary(&left));
    assert!(!left[0].draining, "{}", summary(&left));
}

/// A stop-first update, one at a time: each old instance drains for the grace before it stops, so
/// the update takes at least the grace per batch.
#[tokio::test(flavor = "multi_thread")]
async fn stop_first_update_drains_each_batch() {
    let (mut w, stack, insts) = Wharf::start_web("drainupd", 2, |s| stack_yaml(s, 2, "one")).await;
    let old: Vec<(u32, u64)> = insts.iter().map(|i| (i.slot, i.generation)).collect();

    let file = w.stack_file(&stack, &stack_yaml(&stack, 2, "two"));
    let started = Instant::now();
    let id = w.deploy_detached_text(&file);
    let seen = watch(&w, &stack, &id, 2).await;
    let took = started.elapsed();
    let d = seen.deployment.as_ref().expect("ended");
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}");
    assert_drained(&seen, &old);
    assert!(
        took + SLACK >= GRACE * 2,
        "two batches took {took:?}, less than the grace twice: {seen:?}"
    );
    // One at a time: the second old instance was marked only after the first one's replacement
    // ran, so the drains did not overlap.
    let (a, b) = (seen.draining[&old[0]], seen.draining[&old[1]]);
    let (first, second) = if a <= b {
        (old[0], old[1])
    } else {
        (old[1], old[0])
    };
    assert!(
        seen.draining[&second] >= seen.stopped[&first],
        "{second:?} drained before {first:?} was gone: {seen:?}"
    );
    let now = w
        .wait_ready(&stack, "web", 2, Duration::from_secs(10))
        .await;
    assert!(now.iter().all(|i| !i.draining), "{}", summary(&now));
}
