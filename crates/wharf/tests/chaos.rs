//! Chaos (issue 8): rolling updates of a 6-replica service on 4 hosts while the master is
//! killed and restarted, a host is partitioned and healed, and a host dies for good, each at a
//! moment drawn from a seed (`WHARF_CHAOS_SEED`, printed in every failure). Throughout, the
//! engine is sampled: no slot ever runs twice outside a partition (stop-first updates; the
//! partitioned host is left out while cut off and for the fencing bound after). Every
//! deployment ends (succeeded, failed or rolled back) within `DEPLOY_BOUND` of the fault's end,
//! and the run ends with exactly 6 instances of the last version.

mod common;
#[path = "common/netcluster.rs"]
mod netcluster;

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{summary, unique_stack};
use netcluster::{Cluster, Harness, stack_containers, web_stack};
use wharf_testkit::{Check, not_yet, wait_for};
use wharf_types::DeploymentState;

/// How long a deployment may take once the fault that hit it is over.
const DEPLOY_BOUND: Duration = Duration::from_secs(90);
/// How long after a partition heals its host's stale copies may still run.
const FENCE_BOUND: Duration = Duration::from_secs(5);
const REPLICAS: usize = 6;

/// A tiny deterministic generator (xorshift64*): the seed decides every choice.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// Hosts whose containers do not count right now (cut off, or just healed), by node id.
type Excused = Arc<Mutex<BTreeMap<String, Option<Instant>>>>;

#[tokio::test]
async fn rolling_updates_survive_master_kills_partitions_and_dead_hosts() {
    let seed: u64 = std::env::var("WHARF_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe);
    let mut rng = Rng(seed | 1);
    let mut c = Cluster::start_with(4, &[], &["--node-timeout", "2s"]).await;
    let stack = unique_stack("chaos");
    let update = "      update_config:\n        parallelism: 2\n        monitor: 1s\n";
    let version = |v: u32| {
        web_stack(
            &stack,
            REPLICAS as u32,
            update,
            &format!("    environment:\n      VERSION: v{v}\n"),
        )
    };
    let file = c.stack_file(&stack, &version(1));
    c.deploy(&file, 0);
    c.wait_ready(&stack, "web", REPLICAS, Duration::from_secs(90))
        .await;

    // The sampler: a slot running twice on hosts that are not excused is a violation.
    let excused: Excused = Arc::default();
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let sampler = {
        let (stack, excused, violations) = (stack.clone(), excused.clone(), violations.clone());
        tokio::spawn(async move {
            loop {
                let ctrs = stack_containers(&stack).await;
                let now = Instant::now();
                let mut per_slot: BTreeMap<u32, Vec<String>> = BTreeMap::new();
                {
                    let ex = excused.lock();
                    for x in ctrs.iter().filter(|x| x.running) {
                        let skip = ex.get(&x.node).is_some_and(|until| {
                            until.is_none_or(|t| now < t) // cut off, or within the fence bound
                        });
                        if !skip {
                            per_slot.entry(x.slot).or_default().push(x.name.clone());
                        }
                    }
                }
                for (slot, names) in per_slot.into_iter().filter(|(_, n)| n.len() > 1) {
                    violations
                        .lock()
                        .push(format!("slot {slot} ran twice: {names:?}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let faults = ["master", "partition", "dead host"];
    let mut dead: Option<usize> = None;
    for (round, fault) in faults.iter().enumerate() {
        let v = round as u32 + 2;
        std::fs::write(&file, version(v)).expect("write stack file");
        let id = c.deploy_detached(&file);
        tokio::time::sleep(rng.millis(300, 3_000)).await;
        let alive: Vec<usize> = (0..4).filter(|h| Some(*h) != dead).collect();
        let host = alive[(rng.next() % alive.len() as u64) as usize];
        eprintln!("seed {seed} round {round}: v{v}, fault: {fault} (host h{host})");
        match *fault {
            "master" => {
                c.kill_master();
                tokio::time::sleep(rng.millis(500, 3_000)).await;
                c.restart_master().await;
            }
            "partition" => {
                let node = c.node_id(host);
                excused.lock().insert(node.clone(), None);
                c.cut_off(host);
                tokio::time::sleep(rng.millis(3_000, 8_000)).await;
                c.heal(host);
                excused
                    .lock()
                    .insert(node, Some(Instant::now() + FENCE_BOUND));
            }
            _ => {
                c.kill_host(host).await;
                dead = Some(host);
            }
        }
        let fault_over = Instant::now();
        let d = c
            .wait_deployment_end(
                &id,
                &format!("seed {seed}: deployment {id} (round {round}) to end"),
                DEPLOY_BOUND,
            )
            .await;
        eprintln!(
            "seed {seed} round {round}: deployment {:?} {:?} after the fault",
            d.state,
            fault_over.elapsed()
        );
        assert!(
            matches!(
                d.state,
                DeploymentState::Succeeded | DeploymentState::Failed
            ),
            "seed {seed}: {d:?}"
        );
    }

    // The end: exactly 6 ready instances of the last version, 6 containers on live hosts.
    let last = c
        .client
        .get_service(&stack, "web")
        .await
        .expect("service")
        .spec_hash;
    let dead_id = dead.map(|h| c.node_id(h));
    wait_for(
        &format!("seed {seed}: exactly {REPLICAS} instances of the last version"),
        Duration::from_secs(60),
        || async {
            let insts = c.instances(&stack, "web").await;
            let ctrs = stack_containers(&stack).await;
            let live: Vec<_> = ctrs
                .iter()
                .filter(|x| x.running && Some(&x.node) != dead_id.as_ref())
                .collect();
            let ok = insts.len() == REPLICAS
                && insts.iter().all(|i| i.is_ready() && i.spec_hash == last)
                && live.len() == REPLICAS;
            if ok {
                Check::Done(())
            } else {
                not_yet(format!(
                    "{} | {} live containers",
                    summary(&insts),
                    live.len()
                ))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    sampler.abort();
    let v = violations.lock().clone();
    assert!(v.is_empty(), "seed {seed}: {v:?}\n{}", c.logs());
}
