//! Issue 8, "never lose, never duplicate", on clusters of hosts made of network namespaces,
//! with the real binary and engine:
//! - defect 2: a host killed in the middle of a rolling update must not keep the deployment
//!   `in_progress` until it returns;
//! - defect 6: after a partition heals, the stale copies stop within 2 s of the node being back;
//!   `x-wharf: {at_most_once: true}` never runs two instances of a slot, even across the cut;
//! - defect 7: a node whose Docker engine is down says so and loses its instances to other nodes
//!   after `--engine-timeout`.

mod common;
#[path = "common/netcluster.rs"]
mod netcluster;

use std::time::{Duration, Instant};

use common::{summary, unique_stack};
use netcluster::{Cluster, Ctr, Harness, ctr_summary, stack_containers, web_stack};
use wharf_testkit::{Check, not_yet, wait_for};
use wharf_types::{DeploymentState, NodeState};

// Defect 2: 6 replicas, parallelism 1; a host dies after two batches; the deployment ends
// while the host stays down, with all 6 on the new version on the survivors.
#[tokio::test]
async fn a_host_killed_mid_update_does_not_keep_the_deployment_in_progress() {
    let mut c = Cluster::start_with(3, &[], &["--node-timeout", "2s"]).await;
    let stack = unique_stack("midkill");
    let update = "      update_config:\n        parallelism: 1\n        monitor: 1s\n";
    let v1 = web_stack(&stack, 6, update, "");
    c.deploy_ready(&stack, &v1, "web", 6, Duration::from_secs(90))
        .await;
    let v2 = web_stack(&stack, 6, update, "    environment:\n      VERSION: v2\n");
    let file = c.stack_file(&stack, &v2);
    let id = c.deploy_detached(&file);
    // Two batches done: two instances on the new spec, ready.
    let new_hash = wait_for(
        "two batches of the update",
        Duration::from_secs(60),
        || async {
            let Ok(svc) = c.client.get_service(&stack, "web").await else {
                return not_yet("no service".to_string());
            };
            let insts = c.instances(&stack, "web").await;
            let updated = insts
                .iter()
                .filter(|i| i.spec_hash == svc.spec_hash && i.is_ready())
                .count();
            if updated >= 2 {
                Check::Done(svc.spec_hash.clone())
            } else {
                not_yet(summary(&insts))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // Kill the host with the most instances still on the old spec.
    let insts = c.instances(&stack, "web").await;
    let victim = (0..3)
        .max_by_key(|h| {
            insts
                .iter()
                .filter(|i| i.node == c.node_id(*h) && i.spec_hash != new_hash)
                .count()
        })
        .unwrap();
    let victim_id = c.node_id(victim);
    c.kill_host(victim).await;
    let t0 = Instant::now();
    let d = c
        .wait_deployment_end(
            &id,
            "the deployment to end while the killed host stays down",
            Duration::from_secs(90),
        )
        .await;
    eprintln!(
        "deployment ended {:?} after the host was killed",
        t0.elapsed()
    );
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}\n{}", c.logs());
    let insts = c.instances(&stack, "web").await;
    assert_eq!(insts.len(), 6, "{}", summary(&insts));
    assert!(
        insts
            .iter()
            .all(|i| i.spec_hash == new_hash && i.is_ready() && i.node != victim_id),
        "all 6 on the new version, on the survivors: {}",
        summary(&insts)
    );
    let nodes = c.client.list_nodes().await.expect("nodes");
    assert!(
        nodes
            .iter()
            .any(|n| n.id == victim_id && n.state != NodeState::Ready),
        "the killed host is still down: {nodes:?}"
    );
}

// Defect 6: a partition of 20 s; after it heals, the stale copies stop within 2 s of the node
// being ready again (they were replaced on the other hosts meanwhile).
#[tokio::test]
async fn stale_instances_are_fenced_within_2s_of_the_partition_healing() {
    let mut c = Cluster::start_with(3, &[], &["--node-timeout", "2s"]).await;
    let (stack, insts) = c.deploy_web("fence", 4).await;
    let (victim, survivors) = c.busiest(&insts);
    let victim_id = c.node_id(victim);
    c.cut_off(victim);
    let cut_at = Instant::now();
    wait_for(
        "the cut-off host's instances to run on the others",
        Duration::from_secs(40),
        || async {
            let insts = c.instances(&stack, "web").await;
            let ok = insts.len() == 4
                && insts
                    .iter()
                    .all(|i| i.is_ready() && survivors.contains(&i.node));
            if ok {
                Check::Done(())
            } else {
                not_yet(summary(&insts))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let stale = stack_containers(&stack)
        .await
        .into_iter()
        .filter(|x| x.running && x.node == victim_id)
        .count();
    assert!(stale > 0, "the partitioned host still runs its copies");
    // Keep it cut off for 20 s in all (as in the defect), then heal.
    let rest = Duration::from_secs(20).saturating_sub(cut_at.elapsed());
    tokio::time::sleep(rest).await;
    c.heal(victim);
    let healed = Instant::now();
    let ready_at = wait_for(
        "the node to be ready again",
        Duration::from_secs(30),
        || async {
            let nodes = c.client.list_nodes().await.unwrap_or_default();
            if nodes
                .iter()
                .any(|n| n.id == victim_id && n.state == NodeState::Ready)
            {
                Check::Done(Instant::now())
            } else {
                not_yet(format!("{nodes:?}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    c.wait_none_running_on(&stack, &victim_id, "the stale copies to stop", "")
        .await;
    let gone_at = Instant::now();
    let after_ready = gone_at.saturating_duration_since(ready_at);
    eprintln!(
        "healed: ready after {:?}, stale copies gone {:?} after healing ({after_ready:?} after ready)",
        ready_at - healed,
        gone_at - healed
    );
    assert!(
        after_ready <= Duration::from_secs(2),
        "stale copies ran {after_ready:?} (> 2 s) beside their replacements after the node was back\n{}",
        c.logs()
    );
    let running = stack_containers(&stack)
        .await
        .into_iter()
        .filter(|x| x.running)
        .count();
    assert_eq!(running, 4);
}

// Defect 6, at_most_once: the slot never runs twice, not even while the host is cut off.
#[tokio::test]
async fn an_at_most_once_service_never_runs_twice_across_a_partition() {
    let mut c = Cluster::start_with(2, &[], &["--node-timeout", "2s"]).await;
    let stack = unique_stack("once");
    let yaml = web_stack(&stack, 1, "", "    x-wharf:\n      at_most_once: true\n");
    let insts = c
        .deploy_ready(&stack, &yaml, "web", 1, Duration::from_secs(60))
        .await;
    let (victim, victim_id) = (
        c.host_of(&insts[0].node).expect("host"),
        insts[0].node.clone(),
    );
    c.cut_off(victim);
    // Sample the engine until the replacement runs on the other host: never two at once.
    let mut max_running = 0;
    let mut samples = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    let moved = loop {
        let ctrs = stack_containers(&stack).await;
        let running: Vec<&Ctr> = ctrs.iter().filter(|x| x.running).collect();
        max_running = max_running.max(running.len());
        samples += 1;
        if running.len() == 1 && running[0].node != victim_id {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        moved,
        "the instance did not move to the other host\n{}",
        c.logs()
    );
    assert_eq!(
        max_running,
        1,
        "two instances ran at once ({samples} samples)\n{}",
        c.logs()
    );
    c.heal(victim);
    c.wait_nodes_ready(&[victim], Duration::from_secs(30)).await;
    let ctrs = stack_containers(&stack).await;
    assert_eq!(
        ctrs.iter().filter(|x| x.running).count(),
        1,
        "{}",
        ctr_summary(&ctrs)
    );
}

// Defect 7: the engine of a host stops; the node says so, and after --engine-timeout its
// instances run on the other host.
#[tokio::test]
async fn a_node_whose_engine_is_down_says_so_and_its_instances_move() {
    let mut c = Cluster::start_with_engines(2, &["--engine-timeout", "3s"]).await;
    let stack = unique_stack("engine");
    let yaml = web_stack(&stack, 2, "", "");
    let insts = c
        .deploy_ready(&stack, &yaml, "web", 2, Duration::from_secs(90))
        .await;
    let (victim, victim_id) = (
        c.host_of(&insts[0].node).expect("host"),
        insts[0].node.clone(),
    );
    let other_id = c.node_id(1 - victim);
    c.hosts[victim].engine.as_mut().expect("own engine").stop();
    wait_for(
        "node ls to say the engine is down",
        Duration::from_secs(20),
        || async {
            let out = c.cli(&["node", "ls"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("h{victim} ")))
                .unwrap_or_default()
                .to_string();
            if line.contains(" down ") {
                Check::Done(())
            } else {
                not_yet(text)
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    wait_for(
        "both instances to run on the other host",
        Duration::from_secs(60),
        || async {
            let insts = c.instances(&stack, "web").await;
            if insts.len() == 2 && insts.iter().all(|i| i.is_ready() && i.node == other_id) {
                Check::Done(())
            } else {
                not_yet(summary(&insts))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let node = c.client.get_node(&victim_id).await.expect("node");
    assert_eq!(node.state, NodeState::Ready, "the host itself is fine");
    assert!(
        node.drivers_down
            .iter()
            .any(|d| d.driver == wharf_types::DriverKind::Docker),
        "{node:?}"
    );
}
