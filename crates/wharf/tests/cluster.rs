//! Cluster acceptance tests: a master and agents on separate "hosts" (network namespaces with
//! their own addresses, see `common/netcluster.rs`) running real containers. Placement (spread,
//! global, reservations), failover of a killed host, fencing of a cut-off host, master restarts,
//! zero-downtime drain and rebalance.

mod common;
#[path = "common/netcluster.rs"]
mod netcluster;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{container_started_at, summary, unique_stack};
use netcluster::{Cluster, Ctr, Harness, ctr_summary, stack_containers, web_stack};
use wharf_testkit::{Check, not_yet, wait_for};
use wharf_types::{InstanceInfo, NodeState};

const ZONES_AAB: &[&[&str]] = &[&["zone=a"], &["zone=a"], &["zone=b"]];

/// Running containers of the stack on the given nodes.
fn running_on<'a>(ctrs: &'a [Ctr], nodes: &BTreeSet<String>) -> Vec<&'a Ctr> {
    ctrs.iter()
        .filter(|c| c.running && nodes.contains(&c.node))
        .collect()
}

// 1. Join: three agents on three hosts are ready nodes with their own addresses.
#[tokio::test]
async fn three_hosts_join_and_show_their_addresses() {
    let c = Cluster::start(3, ZONES_AAB).await;
    let nodes = c.nodes();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for i in 0..3 {
        let id = c.node_id(i);
        let (so, _) = c.cli_code(&["node", "inspect", &id, "-o", "json"], 0);
        let n: wharf_types::NodeInfo = serde_json::from_str(&so).expect("node inspect json");
        assert_eq!(n.state, NodeState::Ready, "{n:?}");
        assert_eq!(n.name, format!("h{i}"));
        let addr = n.address.clone().unwrap_or_default();
        assert!(
            addr == c.host_ip(i) || addr.starts_with(&format!("{}:", c.host_ip(i))),
            "node {id} should show the address of host {i} ({}), shows {addr:?}",
            c.host_ip(i)
        );
        assert_eq!(
            n.labels.get("zone").map(String::as_str),
            Some(["a", "a", "b"][i])
        );
        assert!(n.memory_bytes > 0 && n.cpus > 0, "{n:?}");
    }
}

// 2a. Spread over a label: 4 replicas over zones a, a, b → 2 per zone, on every node.
#[tokio::test]
async fn spread_preference_balances_zones_then_nodes() {
    let mut c = Cluster::start(3, ZONES_AAB).await;
    let stack = unique_stack("spread");
    let spread = "      placement:\n        preferences:\n          - spread: node.labels.zone\n";
    let yaml = web_stack(&stack, 4, spread, "");
    let insts = c
        .deploy_ready(&stack, &yaml, "web", 4, Duration::from_secs(60))
        .await;
    let per_host = c.per_host(&insts);
    let mut per_zone: BTreeMap<&str, usize> = BTreeMap::new();
    for (h, n) in &per_host {
        let zone = ["a", "a", "b"].get(*h).copied().unwrap_or("?");
        *per_zone.entry(zone).or_default() += n;
    }
    assert_eq!(
        per_zone,
        BTreeMap::from([("a", 2), ("b", 2)]),
        "2 per zone expected; per host {per_host:?}: {}",
        summary(&insts)
    );
    assert_eq!(
        per_host,
        BTreeMap::from([(0, 1), (1, 1), (2, 2)]),
        "spread over the nodes of zone a expected: {}",
        summary(&insts)
    );
    // Docker agrees: each container runs on the node the master shows.
    let ctrs = stack_containers(&stack).await;
    assert_eq!(
        ctrs.iter().filter(|x| x.running).count(),
        4,
        "{}",
        ctr_summary(&ctrs)
    );
    for i in &insts {
        let id = i.container_id.clone().unwrap_or_default();
        let ctr = ctrs
            .iter()
            .find(|x| x.id.starts_with(&id) || id.starts_with(&x.id));
        assert_eq!(
            ctr.map(|x| x.node.as_str()),
            Some(i.node.as_str()),
            "{}",
            ctr_summary(&ctrs)
        );
    }
}

// 2b. A global service runs once on every ready node, and on a host that joins later.
#[tokio::test]
async fn global_service_runs_once_per_node_including_new_hosts() {
    let mut c = Cluster::start(2, &[&["zone=a"], &["zone=b"]]).await;
    let stack = unique_stack("global");
    let yaml = web_stack(&stack, 1, "", "").replace("      replicas: 1\n", "      mode: global\n");
    let insts = c
        .deploy_ready(&stack, &yaml, "web", 2, Duration::from_secs(60))
        .await;
    assert_per_host(&c, &insts, &[(0, 1), (1, 1)]);
    let h = c.add_host(&["zone=c"]).await;
    let insts = c
        .wait_ready(&stack, "web", 3, Duration::from_secs(30))
        .await;
    assert_per_host(&c, &insts, &[(0, 1), (1, 1), (h, 1)]);
    let ctrs = stack_containers(&stack).await;
    let nodes: BTreeSet<String> = ctrs
        .iter()
        .filter(|x| x.running)
        .map(|x| x.node.clone())
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "one container per node: {}",
        ctr_summary(&ctrs)
    );
    assert_eq!(
        ctrs.iter().filter(|x| x.running).count(),
        3,
        "{}",
        ctr_summary(&ctrs)
    );
}

// 2c. Reservations: hosts report their real memory; 45% each → 2 per host; the 7th is refused
// with the per-filter explanation.
#[tokio::test]
async fn memory_reservations_limit_placement_and_explain_why() {
    let mut c = Cluster::start(3, ZONES_AAB).await;
    let min_mem = c.nodes().iter().map(|n| n.memory_bytes).min().unwrap();
    assert!(min_mem > 0);
    let mib = min_mem / (1024 * 1024) * 45 / 100;
    let stack = unique_stack("reserve");
    let file = c.stack_file(
        &stack,
        &web_stack(
            &stack,
            7,
            &format!("      resources:\n        reservations:\n          memory: {mib}M\n"),
            "",
        ),
    );
    let (so, se) = c.deploy(&file, 1);
    let text = format!("{so}\n{se}");
    assert!(
        text.contains("memory:") && text.contains("nodes exhausted"),
        "the failure should explain the memory filter:\n{text}"
    );
    let insts = wait_for("6 ready instances", Duration::from_secs(60), || async {
        let insts = c.instances(&stack, "web").await;
        let ready = insts.iter().filter(|i| i.is_ready()).count();
        if ready == 6 {
            Check::Done(insts)
        } else {
            not_yet(summary(&insts))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(insts.len(), 6, "{}", summary(&insts));
    assert_per_host(&c, &insts, &[(0, 2), (1, 2), (2, 2)]);
}

/// Exactly `n` containers of the stack run.
async fn assert_running(stack: &str, n: usize) {
    let ctrs = stack_containers(stack).await;
    assert_eq!(
        ctrs.iter().filter(|x| x.running).count(),
        n,
        "{}",
        ctr_summary(&ctrs)
    );
}

/// The instances per host are exactly `expected` (host index, count).
fn assert_per_host(c: &Cluster, insts: &[InstanceInfo], expected: &[(usize, usize)]) {
    assert_eq!(
        c.per_host(insts),
        expected.iter().copied().collect::<BTreeMap<_, _>>(),
        "{}",
        summary(insts)
    );
}

/// Wait until `replicas` instances are ready on `nodes` per the API and exactly `replicas`
/// healthy containers run there per Docker.
async fn wait_replaced(
    c: &Cluster,
    stack: &str,
    replicas: usize,
    nodes: &BTreeSet<String>,
    timeout: Duration,
) -> Vec<InstanceInfo> {
    wait_for(
        "the lost instances to run on the survivors",
        timeout,
        || async {
            let insts = c.instances(stack, "web").await;
            let ok_api = insts.len() == replicas
                && insts
                    .iter()
                    .all(|i| i.is_ready() && nodes.contains(&i.node));
            let ctrs = stack_containers(stack).await;
            let on = running_on(&ctrs, nodes);
            let ok_docker = on.len() == replicas && on.iter().all(|x| x.healthy);
            if ok_api && ok_docker {
                Check::Done(insts)
            } else {
                not_yet(format!(
                    "api: {} | docker: {}",
                    summary(&insts),
                    ctr_summary(&ctrs)
                ))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()))
}

// 3. Kill a host: within 10 s its instances run (healthy) on the survivors, replicas exactly.
#[tokio::test]
async fn killed_host_instances_run_elsewhere_within_10s() {
    let mut c = Cluster::start(3, ZONES_AAB).await;
    let (stack, insts) = c.deploy_web("kill", 5).await;
    let (victim, survivors) = c.busiest(&insts);
    let lost = c.per_host(&insts)[&victim];
    let t0 = Instant::now();
    c.kill_host(victim).await;
    let insts = wait_replaced(&c, &stack, 5, &survivors, Duration::from_secs(30)).await;
    let took = t0.elapsed();
    eprintln!("{lost} instances of a killed host ran elsewhere after {took:?}");
    assert!(
        took <= Duration::from_secs(10),
        "the {lost} lost instances took {took:?} (> 10 s) to run on the survivors: {}\n{}",
        summary(&insts),
        c.logs()
    );
    let nodes = c.client.list_nodes().await.expect("nodes");
    let dead = nodes
        .iter()
        .find(|n| n.id == c.node_id(victim))
        .expect("node");
    assert!(
        matches!(dead.state, NodeState::Unreachable | NodeState::Down),
        "{dead:?}"
    );
    // And it stays that way: no extra instances appear.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_running(&stack, 5).await;
    assert_eq!(c.instances(&stack, "web").await.len(), 5);
}

// 4. Cut a host off, let its instances be replaced, heal: the stale copies are stopped by its
// own agent (fencing by generation), the node is ready again, replicas exactly.
#[tokio::test]
async fn cut_off_host_is_fenced_after_healing() {
    let mut c = Cluster::start(3, ZONES_AAB).await;
    let (stack, insts) = c.deploy_web("cut", 5).await;
    let per_host = c.per_host(&insts);
    let (victim, survivors) = c.busiest(&insts);
    let victim_id = c.node_id(victim);
    let t0 = Instant::now();
    c.cut_off(victim);
    wait_replaced(&c, &stack, 5, &survivors, Duration::from_secs(30)).await;
    // The figure to beat (median < 3 s with the default 2 s node timeout) is bench/failover's;
    // a loaded CI machine gets slack, but not the 5 s timeout of old plus a slow start.
    let took = t0.elapsed();
    eprintln!("the instances of a cut-off host ran elsewhere after {took:?}");
    assert!(
        took <= Duration::from_secs(8),
        "a host cut off without a reset took {took:?} (> 8 s) to be replaced\n{}",
        c.logs()
    );
    // The cut-off host's containers still run: it is partitioned, not dead.
    let ctrs = stack_containers(&stack).await;
    let stale = ctrs
        .iter()
        .filter(|x| x.running && x.node == victim_id)
        .count();
    assert_eq!(stale, per_host[&victim], "{}", ctr_summary(&ctrs));
    assert_eq!(ctrs.iter().filter(|x| x.running).count(), 5 + stale);

    c.heal(victim);
    wait_for(
        "the stale copies to stop and the node to be ready",
        Duration::from_secs(40),
        || async {
            let ctrs = stack_containers(&stack).await;
            let running = ctrs.iter().filter(|x| x.running).count();
            let nodes = c.client.list_nodes().await.unwrap_or_default();
            let ready = nodes
                .iter()
                .any(|n| n.id == victim_id && n.state == NodeState::Ready);
            if running == 5 && ready {
                Check::Done(())
            } else {
                not_yet(format!(
                    "ready={ready} running={running}: {}",
                    ctr_summary(&ctrs)
                ))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_running(&stack, 5).await;
    let insts = c.instances(&stack, "web").await;
    assert_eq!(insts.len(), 5, "{}", summary(&insts));
    assert!(insts.iter().all(|i| i.is_ready()), "{}", summary(&insts));
}

// 5. Restart the master: agents reconnect on their own, no workload container restarts.
#[tokio::test]
async fn master_restart_restarts_no_container() {
    let mut c = Cluster::start(3, ZONES_AAB).await;
    let (stack, _) = c.deploy_web("restart", 4).await;
    let mut before = BTreeMap::new();
    for x in stack_containers(&stack).await {
        before.insert(x.id.clone(), container_started_at(&x.id).await);
    }
    assert_eq!(before.len(), 4);
    c.restart_master().await;
    let restarted_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ids: Vec<String> = (0..3).map(|i| c.node_id(i)).collect();
    wait_for(
        "the agents to reconnect",
        Duration::from_secs(30),
        || async {
            let nodes = c.client.list_nodes().await?;
            let back = ids.iter().all(|id| {
                nodes.iter().any(|n| {
                    &n.id == id && n.state == NodeState::Ready && n.last_seen >= restarted_ms
                })
            });
            anyhow::Ok(if back {
                Check::Done(())
            } else {
                not_yet(
                    nodes
                        .iter()
                        .map(|n| (n.name.clone(), n.state, n.last_seen))
                        .collect::<Vec<_>>(),
                )
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut after = BTreeMap::new();
    for x in stack_containers(&stack).await {
        assert!(x.running, "{x:?}");
        after.insert(x.id.clone(), container_started_at(&x.id).await);
    }
    assert_eq!(
        before,
        after,
        "containers were replaced or restarted\n{}",
        c.logs()
    );
    let insts = c.instances(&stack, "web").await;
    assert!(
        insts.len() == 4 && insts.iter().all(|i| i.is_ready()),
        "{}",
        summary(&insts)
    );
}

/// Watches a stack while instances move: every 100 ms, Docker's containers and the API's
/// instances. A container that stops (or vanishes) must have, by then, a replacement of the same
/// slot with a newer generation that the API reported ready and Docker showed healthy.
struct MoveWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<MoveReport>,
}

#[derive(Debug, Default)]
struct MoveReport {
    /// (slot, generation, node) of containers that stopped while watched.
    stopped: Vec<(u32, u64, String)>,
    violations: Vec<String>,
    /// Fewest healthy running containers seen at once.
    min_healthy: usize,
}

impl MoveWatch {
    fn start(c: &Cluster, stack: &str) -> MoveWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let client = c.client.clone();
        let stack = stack.to_string();
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut report = MoveReport {
                min_healthy: usize::MAX,
                ..Default::default()
            };
            // (slot, generation) → when first ready per the API / healthy per Docker (poll number).
            let mut api_ready: BTreeMap<(u32, u64), u64> = BTreeMap::new();
            let mut docker_healthy: BTreeMap<(u32, u64), u64> = BTreeMap::new();
            let mut alive: BTreeMap<String, Ctr> = BTreeMap::new();
            let mut tick = 0u64;
            while !flag.load(Ordering::SeqCst) {
                tick += 1;
                let (insts, ctrs) = tokio::join!(
                    client.service_instances(&stack, "web"),
                    stack_containers(&stack)
                );
                for i in insts.unwrap_or_default().iter().filter(|i| i.is_ready()) {
                    api_ready.entry((i.slot, i.generation)).or_insert(tick);
                }
                for x in ctrs.iter().filter(|x| x.running && x.healthy) {
                    docker_healthy.entry((x.slot, x.generation)).or_insert(tick);
                }
                report.min_healthy = report
                    .min_healthy
                    .min(ctrs.iter().filter(|x| x.running && x.healthy).count());
                let now: BTreeMap<String, Ctr> = ctrs
                    .into_iter()
                    .filter(|x| x.running)
                    .map(|x| (x.id.clone(), x))
                    .collect();
                for (id, old) in &alive {
                    if now.contains_key(id) {
                        continue;
                    }
                    report
                        .stopped
                        .push((old.slot, old.generation, old.node.clone()));
                    let newer = |m: &BTreeMap<(u32, u64), u64>| {
                        m.iter()
                            .any(|((s, g), t)| *s == old.slot && *g > old.generation && *t <= tick)
                    };
                    if !newer(&api_ready) || !newer(&docker_healthy) {
                        report.violations.push(format!(
                            "{} (slot {} g{} on {}) stopped at poll {tick} before a replacement \
                             was ready (api ready: {:?}; docker healthy: {:?})",
                            old.name, old.slot, old.generation, old.node, api_ready, docker_healthy
                        ));
                    }
                }
                alive = now;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            report
        });
        MoveWatch { stop, task }
    }

    async fn finish(self) -> MoveReport {
        // Let it poll once more after what the caller waited for.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("watcher")
    }
}

// 6. Drain: every instance moves start-first (replacement healthy before the old one stops), the
// command waits until the node is empty; activate brings the node back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_every_instance_start_first() {
    let mut c = Cluster::start(3, ZONES_AAB).await;
    let (stack, insts) = c.deploy_web("drain", 6).await;
    assert_per_host(&c, &insts, &[(0, 2), (1, 2), (2, 2)]);
    // Drain the node with the smallest id: ties in ranking go to it.
    let victim = (0..3).min_by_key(|&i| c.node_id(i)).unwrap();
    let victim_id = c.node_id(victim);
    let watch = MoveWatch::start(&c, &stack);
    let t0 = Instant::now();
    let (so, se) = c.cli_code(
        &["node", "drain", &c.hosts[victim].name, "--timeout", "90s"],
        0,
    );
    let took = t0.elapsed();
    // The old copies stop once their replacements are ready: watch until they are gone.
    let what = "the drained node's containers to stop";
    c.wait_none_running_on(&stack, &victim_id, what, &format!("{so}{se}\n"))
        .await;
    let report = watch.finish().await;
    eprintln!("drain took {took:?}: {so}{se}; {report:?}");
    assert!(
        report.violations.is_empty(),
        "{:#?}\n{}",
        report.violations,
        c.logs()
    );
    let moved: Vec<_> = report.stopped.iter().filter(|s| s.2 == victim_id).collect();
    assert_eq!(
        moved.len(),
        2,
        "two instances should have moved: {report:?}"
    );
    assert!(
        report.min_healthy >= 6,
        "fewer than 6 healthy containers at some point: {report:?}"
    );
    let n = c.client.get_node(&victim_id).await.expect("node");
    assert_eq!(n.instances, 0, "{n:?}");
    assert_eq!(n.state, NodeState::Draining, "{n:?}");
    let ctrs = stack_containers(&stack).await;
    assert!(
        !ctrs.iter().any(|x| x.running && x.node == victim_id),
        "{}",
        ctr_summary(&ctrs)
    );
    c.wait_ready_off(&stack, 6, &victim_id, Duration::from_secs(10))
        .await;

    // Activate: the node takes instances again (scale up lands there: it has the fewest).
    c.cli_code(&["node", "activate", &victim_id], 0);
    let n = c.client.get_node(&victim_id).await.expect("node");
    assert_eq!(n.state, NodeState::Ready, "{n:?}");
    let yaml = web_stack(&stack, 8, "", "");
    let insts = c
        .deploy_ready(&stack, &yaml, "web", 8, Duration::from_secs(60))
        .await;
    assert_eq!(
        c.per_host(&insts).get(&victim),
        Some(&2),
        "{}",
        summary(&insts)
    );
}

// 7. Rebalance after a host joins: 4 replicas on 2 hosts, a third joins, rebalance → 2/1/1, every
// move start-first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_spreads_onto_a_new_host_start_first() {
    let mut c = Cluster::start(2, &[&["zone=a"], &["zone=b"]]).await;
    let (stack, insts) = c.deploy_web("rebal", 4).await;
    assert_per_host(&c, &insts, &[(0, 2), (1, 2)]);
    let h = c.add_host(&["zone=c"]).await;
    // Joining alone moves nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let insts = c.instances(&stack, "web").await;
    assert_eq!(c.per_host(&insts).get(&h), None, "{}", summary(&insts));

    let watch = MoveWatch::start(&c, &stack);
    let (so, se) = c.cli_code(&["service", "rebalance", &format!("{stack}/web")], 0);
    // Let the old copy stop, then stop watching.
    wait_for(
        "4 running containers on 3 nodes",
        Duration::from_secs(30),
        || async {
            let ctrs = stack_containers(&stack).await;
            let running: Vec<&Ctr> = ctrs.iter().filter(|x| x.running).collect();
            let nodes: BTreeSet<&str> = running.iter().map(|x| x.node.as_str()).collect();
            if running.len() == 4 && nodes.len() == 3 {
                Check::Done(())
            } else {
                not_yet(ctr_summary(&ctrs))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{so}{se}\n{}", c.logs()));
    let report = watch.finish().await;
    eprintln!("{report:?}");
    let insts = c
        .wait_ready(&stack, "web", 4, Duration::from_secs(10))
        .await;
    assert!(
        report.violations.is_empty(),
        "{:#?}\n{}",
        report.violations,
        c.logs()
    );
    assert!(!report.stopped.is_empty(), "nothing moved: {report:?}");
    assert!(report.min_healthy >= 4, "{report:?}");
    let per_host = c.per_host(&insts);
    let mut counts: Vec<usize> = per_host.values().copied().collect();
    counts.sort();
    assert_eq!(
        per_host.len(),
        3,
        "every host should run an instance: {}",
        summary(&insts)
    );
    assert_eq!(counts, vec![1, 1, 2], "{}", summary(&insts));
}

// bench/failover: seconds from killing a host to all its instances running and healthy
// elsewhere, median of 5 runs. `bench/failover/run` runs it.
/// With every core busy for 60 s (a spinning thread per core, beside the master, three agents
/// and the engine), no node is declared unreachable and nothing moves: the node timeout (2 s by
/// default) is judged on when beats arrive, and a saturated machine still delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_machine_declares_no_node_unreachable_and_moves_nothing() {
    let mut c = Cluster::start(3, ZONES_AAB).await;
    let (stack, insts) = c.deploy_web("hog", 6).await;
    let before: BTreeSet<(String, u64, String)> = insts
        .iter()
        .map(|i| (i.id.clone(), i.generation, i.node.clone()))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..cores)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    let mut not_ready = Vec::new();
    while t0.elapsed() < Duration::from_secs(60) {
        if let Ok(nodes) = c.client.list_nodes().await {
            for n in nodes.iter().filter(|n| n.state != NodeState::Ready) {
                not_ready.push(format!("{:?} {} {:?}", t0.elapsed(), n.id, n.state));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        h.join().expect("hog thread");
    }
    let log = c.master_log();
    let changes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("node liveness changed"))
        .collect();
    assert!(
        not_ready.is_empty() && changes.is_empty(),
        "a node was judged unreachable under a CPU hog on {cores} cores: {not_ready:?} {changes:?}\n{}",
        c.logs()
    );
    let after: BTreeSet<(String, u64, String)> = c
        .instances(&stack, "web")
        .await
        .iter()
        .map(|i| (i.id.clone(), i.generation, i.node.clone()))
        .collect();
    assert_eq!(
        after,
        before,
        "instances moved under a CPU hog\n{}",
        c.logs()
    );
}

#[tokio::test]
#[ignore = "benchmark: run with bench/failover/run"]
async fn failover_bench() {
    // Default settings unless asked otherwise (bench/failover/run NODE_TIMEOUT).
    let timeout = std::env::var("WHARF_BENCH_NODE_TIMEOUT").unwrap_or_default();
    let args: Vec<&str> = if timeout.is_empty() {
        vec![]
    } else {
        vec!["--node-timeout", &timeout]
    };
    let replicas = 6usize;
    // Each host runs its own engine, as separate machines do: the replacements of a lost host
    // start on the survivors' engines side by side, not one after the other on a shared one.
    let mut c = Cluster::start_with_engines(3, &args).await;
    let stack = unique_stack("failover");
    let file = c.stack_file(&stack, &web_stack(&stack, replicas as u32, "", ""));
    c.deploy(&file, 0);
    // Running containers of the stack on host i (only healthy ones: `healthy`), per its own
    // engine.
    let count_on = |i: usize, healthy: bool| -> usize {
        let engine = c.hosts[i].engine.as_ref().expect("own engine");
        let label = format!("label=io.wharf.stack={stack}");
        let mut args = vec!["ps", "-q", "--filter", &label];
        if healthy {
            args.extend(["--filter", "health=healthy"]);
        }
        let out = engine.cli(&args);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .count()
    };
    let mut times = Vec::new();
    for run in 0..5 {
        let insts = c
            .wait_ready(&stack, "web", replicas, Duration::from_secs(120))
            .await;
        let per_host = c.per_host(&insts);
        let victim = *per_host.iter().max_by_key(|(_, n)| **n).unwrap().0;
        let lost = per_host[&victim];
        let alive: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
        let survivors: BTreeSet<String> = alive.iter().map(|&i| c.node_id(i)).collect();
        let victim_id = c.node_id(victim);
        // The host's link is dropped, not its process killed: no TCP reset, no goodbye.
        let t0 = Instant::now();
        c.cut_off(victim);
        // Where the time goes: the node judged unreachable, the replacements placed on the
        // survivors, running, then healthy per the API and per the survivors' engines.
        let mut marks: [Option<f64>; 4] = [None; 4];
        while marks.iter().any(Option::is_none) && t0.elapsed() < Duration::from_secs(120) {
            let at = t0.elapsed().as_secs_f64();
            let nodes = c.client.list_nodes().await.unwrap_or_default();
            if marks[0].is_none()
                && nodes
                    .iter()
                    .any(|n| n.id == victim_id && n.state != NodeState::Ready)
            {
                marks[0] = Some(at);
            }
            let insts = c.instances(&stack, "web").await;
            let on: Vec<_> = insts
                .iter()
                .filter(|i| survivors.contains(&i.node))
                .collect();
            let all = on.len() == replicas;
            if marks[1].is_none() && all {
                marks[1] = Some(at);
            }
            if marks[2].is_none()
                && all
                && on
                    .iter()
                    .all(|i| i.state == wharf_types::InstanceState::Running)
            {
                marks[2] = Some(at);
            }
            if marks[3].is_none()
                && all
                && on.iter().all(|i| i.is_ready())
                && alive.iter().map(|&i| count_on(i, true)).sum::<usize>() == replicas
            {
                marks[3] = Some(at);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mark = |m: Option<f64>| m.map_or("?".to_string(), |t| format!("{t:.2}"));
        eprintln!(
            "run {}: {lost} instances of a cut-off host replaced and healthy in {} s \
             (unreachable at {}, placed at {}, running at {})",
            run + 1,
            mark(marks[3]),
            mark(marks[0]),
            mark(marks[1]),
            mark(marks[2]),
        );
        let took = marks[3].unwrap_or_else(|| panic!("not replaced in 120 s\n{}", c.logs()));
        times.push(took);
        // Heal: the host comes back, its stale copies are fenced, and it is ready for the next run.
        c.heal(victim);
        wait_for(
            "the healed host to be ready with its stale copies stopped",
            Duration::from_secs(60),
            || async {
                let stale = count_on(victim, false);
                let ready = c
                    .client
                    .list_nodes()
                    .await
                    .unwrap_or_default()
                    .iter()
                    .any(|n| n.id == victim_id && n.state == NodeState::Ready);
                if ready && stale == 0 {
                    Check::Done(())
                } else {
                    not_yet(format!("ready={ready} stale={stale}"))
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    if std::env::var_os("WHARF_TEST_LOG").is_some() {
        for h in &c.hosts {
            eprintln!("--- agent {} ---\n{}", h.name, h.log());
        }
        eprintln!("--- server ---\n{}", c.master_log());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[times.len() / 2];
    let setting = if timeout.is_empty() {
        "default node timeout".to_string()
    } else {
        format!("node timeout {timeout}")
    };
    println!(
        "failover of a cut-off host ({setting}, {replicas} replicas over 3 hosts with their own \
         engines, health check every 500ms)"
    );
    println!(
        "  runs: {}",
        times
            .iter()
            .map(|t| format!("{t:.2}s"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let verdict = if median < 3.0 { "met" } else { "MISSED" };
    println!("  median: {median:.2} s  (target < 3 s: {verdict})");
    println!(
        "  for scale: Docker Swarm ~15 s to mark a node down; Nomad 10 s heartbeat + 10 s grace;"
    );
    println!("             Kubernetes 40 s node-monitor-grace + 300 s default eviction toleration");
    assert!(
        median < 3.0,
        "failover median {median:.2} s is not under 3 s"
    );
}
