//! Scenarios on the in-process cluster (`wharf_testkit::inproc`): failover of a dead node's
//! instances, updates while the node stays down, fencing when it comes back, and adoption by a
//! restarted agent. Each takes a second or two: the node timeout is 1 s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use wharf_agent::driver::fake::Call;
use wharf_testkit::Check;
use wharf_testkit::inproc::{ClusterConfig, InProcCluster, NodeInstance};
use wharf_types::NodeState;

const STACK: &str = "fo";

fn stack_yaml(version: &str, replicas: u32) -> String {
    format!(
        "name: {STACK}\nservices:\n  web:\n    image: app:1\n    environment:\n      VERSION: \"{version}\"\n    \
         x-wharf:\n      drain_grace: 0s\n    deploy:\n      replicas: {replicas}\n      update_config:\n        \
         parallelism: 2\n        order: start-first\n        monitor: 0s\n"
    )
}

/// The running instances of `web`, by slot, in `insts`: `(node, generation, spec hash)`.
fn by_slot(insts: &[NodeInstance]) -> BTreeMap<u32, Vec<(String, u64, String)>> {
    let mut out: BTreeMap<u32, Vec<_>> = BTreeMap::new();
    for i in insts.iter().filter(|i| i.is_running()) {
        let s = i.spec();
        out.entry(s.slot)
            .or_default()
            .push((i.node.clone(), s.generation, s.spec_hash.clone()));
    }
    out
}

/// Wait until the live nodes run exactly one instance of each of `replicas` slots, all on the
/// service's current spec and at their record's generation; returns them by slot.
async fn wait_one_per_slot(
    c: &InProcCluster,
    replicas: u32,
    what: &str,
) -> anyhow::Result<BTreeMap<u32, Vec<(String, u64, String)>>> {
    c.wait(what, Duration::from_secs(5), || async {
        let (svc, _) = c
            .master
            .service(STACK, "web")
            .await?
            .ok_or_else(|| anyhow::anyhow!("no service web"))?;
        let records = c
            .master
            .instances(&wharf_master::model::keys::instances_of_service(
                STACK, "web",
            ))
            .await?;
        let live = by_slot(&c.live_instances());
        let ok = live.len() == replicas as usize
            && (0..replicas).all(|slot| {
                live.get(&slot).is_some_and(|v| {
                    v.len() == 1
                        && v[0].2 == svc.spec_hash
                        && records
                            .iter()
                            .any(|r| r.slot == slot && r.generation == v[0].1 && r.node == v[0].0)
                })
            });
        anyhow::Ok(if ok {
            Check::Done(live)
        } else {
            wharf_testkit::not_yet(format!("live: {live:?}; current spec {}", svc.spec_hash))
        })
    })
    .await
}

async fn wait_node_state(c: &InProcCluster, node: &str, state: NodeState) -> anyhow::Result<()> {
    c.wait(
        &format!("node {node} to be {state:?}"),
        Duration::from_secs(5),
        || async {
            let n = c.client.get_node(node).await?;
            anyhow::Ok(if n.state == state {
                Check::Done(())
            } else {
                wharf_testkit::not_yet(n.state)
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_instances_move_and_later_updates_succeed_while_it_stays_down()
-> anyhow::Result<()> {
    let start = Instant::now();
    let mut c = InProcCluster::start(3, ClusterConfig::default()).await?;
    c.deploy_and_wait(&stack_yaml("1", 6), Duration::from_secs(5))
        .await?;
    let before = wait_one_per_slot(&c, 6, "6 instances of v1").await?;

    // The victim: a node that runs some of them (spread puts two on each).
    let victim = (0..3)
        .max_by_key(|i| before.values().filter(|v| v[0].0 == c.node(*i)).count())
        .expect("three nodes");
    let victim_id = c.node(victim).to_string();
    let stranded: Vec<u32> = before
        .iter()
        .filter(|(_, v)| v[0].0 == victim_id)
        .map(|(slot, _)| *slot)
        .collect();
    assert!(
        !stranded.is_empty(),
        "nothing runs on {victim_id}: {before:?}"
    );
    c.kill_agent(victim).await?;
    let killed = Instant::now();

    wait_node_state(&c, &victim_id, NodeState::Unreachable).await?;
    let after = wait_one_per_slot(&c, 6, "the 6 instances on the two live nodes").await?;
    let moved = killed.elapsed();
    for slot in &stranded {
        let (node, generation, _) = &after[slot][0];
        assert_ne!(
            node, &victim_id,
            "slot {slot} still placed on the dead node"
        );
        assert!(
            *generation > before[slot][0].1,
            "slot {slot} moved without a new generation: {:?} -> {:?}",
            before[slot],
            after[slot]
        );
    }
    // Nobody stopped the dead node's instances: its agent is gone (the fake keeps them running).
    let left = by_slot(
        &c.fake_instances()
            .into_iter()
            .filter(|i| i.node == victim_id)
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        left.keys().copied().collect::<Vec<_>>(),
        stranded,
        "the dead node's fake"
    );

    // An update while the node stays down: it must not wait for the dead host.
    let update = Instant::now();
    let d = c
        .deploy_and_wait(&stack_yaml("2", 6), Duration::from_secs(5))
        .await?;
    let update_took = update.elapsed();
    let v2 = wait_one_per_slot(&c, 6, "6 instances of v2 on the live nodes").await?;
    assert!(
        v2.values().all(|v| v[0].0 != victim_id),
        "placed on the dead node: {v2:?}"
    );
    assert!(!c.is_up(victim));
    assert_eq!(
        c.client.get_node(&victim_id).await?.state,
        NodeState::Unreachable,
        "the killed node came back by itself"
    );

    // When it comes back, its agent stops the stale generations (fencing by generation).
    c.restart_agent(victim).await?;
    wait_node_state(&c, &victim_id, NodeState::Ready).await?;
    c.wait(
        "the returning node to stop its stale instances",
        Duration::from_secs(5),
        || async {
            let stale: Vec<_> = c
                .fake_instances()
                .into_iter()
                .filter(|i| i.node == victim_id && stranded.contains(&i.spec().slot))
                .filter(|i| {
                    !v2[&i.spec().slot]
                        .iter()
                        .any(|r| r.1 == i.spec().generation)
                })
                .map(|i| i.spec().name())
                .collect();
            if stale.is_empty() {
                Check::Done(())
            } else {
                wharf_testkit::not_yet(stale)
            }
        },
    )
    .await?;
    wait_one_per_slot(&c, 6, "still 6 instances of v2, one per slot").await?;
    eprintln!(
        "moved in {:.2}s after the kill, update {} took {:.2}s, whole test {:.2}s",
        moved.as_secs_f64(),
        d.id,
        update_took.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_adopts_what_runs() -> anyhow::Result<()> {
    let mut c = InProcCluster::start(2, ClusterConfig::default()).await?;
    c.deploy_and_wait(&stack_yaml("1", 4), Duration::from_secs(5))
        .await?;
    let before = wait_one_per_slot(&c, 4, "4 instances").await?;
    for i in 0..2 {
        c.driver(i).clear_calls();
    }
    c.restart_agent(0).await?;
    // Two passes of the new agent (each lists its driver) after the master's first desired state.
    c.wait(
        "two passes of the restarted agent",
        Duration::from_secs(5),
        || async {
            let lists = c
                .driver(0)
                .calls()
                .iter()
                .filter(|call| **call == Call::List)
                .count();
            (lists >= 2).then_some(())
        },
    )
    .await?;
    let after = wait_one_per_slot(&c, 4, "the same 4 instances").await?;
    assert_eq!(before, after, "the restart replaced instances");
    let touched: Vec<_> = c
        .driver(0)
        .mutations()
        .into_iter()
        .filter(|call| matches!(call, Call::Stop(_) | Call::Remove(_) | Call::Create(_)))
        .collect();
    assert!(
        touched.is_empty(),
        "the restarted agent touched {touched:?}"
    );
    Ok(())
}

/// A deployment's `updated_at` moves strictly forward with every change, even when a deployer
/// pass read its clock before the record was last written (followers long-poll on it: a write
/// that moved it back made `GET /v1/deployments/{id}?after=` answer "no change").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployments_updated_at_only_moves_forward() -> anyhow::Result<()> {
    use wharf_master::model::{decode, encode, keys};
    let mut c = InProcCluster::start(1, ClusterConfig::default()).await?;
    // The only agent is down: the deployment stays in progress until it is back.
    c.kill_agent(0).await?;
    let id = c
        .deploy(&stack_yaml("1", 2))
        .await?
        .deployment_id
        .ok_or_else(|| anyhow::anyhow!("no deployment"))?;
    // Its record as if written by a clock a minute ahead of the deployer's.
    let key = keys::deployment(&id);
    let kv = c
        .master
        .store
        .get(&key)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no record {key}"))?;
    let mut d: wharf_types::Deployment = decode(&key, &kv.value)?;
    assert_eq!(d.state, wharf_types::DeploymentState::InProgress, "{d:?}");
    let ahead = d.updated_at + 60_000;
    d.updated_at = ahead;
    c.master.store.put(&key, encode(&d)).await?;
    c.restart_agent(0).await?;
    let done = c.wait_deployment(&id, Duration::from_secs(10)).await?;
    assert_eq!(
        done.state,
        wharf_types::DeploymentState::Succeeded,
        "{done:?}"
    );
    assert!(
        done.updated_at > ahead,
        "the deployment ended with updated_at {} after it was {ahead}",
        done.updated_at
    );
    Ok(())
}

/// `GET /v1/services` counts each service's own instances, running and healthy, and filters
/// by stack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_list_counts_each_services_own_instances() -> anyhow::Result<()> {
    let c = InProcCluster::start(2, ClusterConfig::default()).await?;
    c.deploy_and_wait(&stack_yaml("1", 3), Duration::from_secs(5))
        .await?;
    let other = "name: other\nservices:\n  api:\n    image: app:1\n    deploy:\n      replicas: 2\n      \
                 update_config:\n        monitor: 0s\n";
    c.deploy_and_wait(other, Duration::from_secs(5)).await?;
    let all = c.client.list_services(None).await?;
    let counts: Vec<_> = all
        .iter()
        .map(|s| {
            (
                s.stack.as_str(),
                s.name.as_str(),
                s.replicas,
                s.running,
                s.healthy,
            )
        })
        .collect();
    assert_eq!(
        counts,
        [("fo", "web", 3, 3, 3), ("other", "api", 2, 2, 2)],
        "{all:?}"
    );
    let only = c.client.list_services(Some("other")).await?;
    assert_eq!(only.len(), 1, "{only:?}");
    assert_eq!(only[0].name, "api");
    Ok(())
}
