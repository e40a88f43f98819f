//! Placement throughput: 1,000 services × 100 replicas over 10,000 nodes in 10 zones, spread over
//! zones, a constraint excluding a tenth of the nodes, reservations. One thread.
//!
//! The indexed `Cluster::place` places all 100,000 instances. The naive baseline (the reference
//! scan of every node, as used in the tests) is timed on the first `NAIVE` placements of the same
//! workload only, since all of them would take minutes; its answers are checked against the index.

use std::collections::BTreeMap;
use std::time::Instant;

use wharf_scheduler::{Cluster, NodeView, Request, Resources};
use wharf_types::DriverKind;

const NODES: usize = 10_000;
const SERVICES: usize = 1_000;
const REPLICAS: usize = 100;
const NAIVE: usize = 2_000;
const GIB: u64 = 1 << 30;
const CPU: u64 = 1_000_000_000;

fn nodes() -> Vec<NodeView> {
    (0..NODES)
        .map(|i| NodeView {
            id: format!("node-{i:05}"),
            hostname: format!("host-{i:05}"),
            role: "worker".into(),
            labels: BTreeMap::from([
                ("zone".to_string(), format!("z{}", i % 10)),
                (
                    "tier".to_string(),
                    if (i / 10) % 10 == 0 { "db" } else { "app" }.to_string(),
                ),
            ]),
            ready: true,
            schedulable: true,
            drivers: vec![DriverKind::Docker],
            capacity: Resources {
                nano_cpus: 16 * CPU,
                memory_bytes: 64 * GIB,
            },
            reserved: Resources::default(),
            host_ports: Default::default(),
            instances: 0,
            max_instances: 0,
            per_service: BTreeMap::new(),
        })
        .collect()
}

fn requests() -> Vec<Request> {
    (0..SERVICES)
        .map(|k| Request {
            service: format!("stack{}/svc{k}", k % 20),
            driver: DriverKind::Docker,
            constraints: vec!["node.labels.tier != db".into()],
            spread: vec!["node.labels.zone".into()],
            max_per_node: None,
            reservation: Resources {
                nano_cpus: (k as u64 % 4 + 1) * CPU / 10,
                memory_bytes: (k as u64 % 8 + 1) * (128 << 20),
            },
            host_ports: vec![],
            affinity: vec![],
            anti_affinity: vec![],
        })
        .collect()
}

fn main() {
    let reqs = requests();
    let workload = || reqs.iter().flat_map(|r| std::iter::repeat_n(r, REPLICAS));

    let mut fast = Cluster::new(nodes());
    let t = Instant::now();
    let mut placed = Vec::with_capacity(SERVICES * REPLICAS);
    for r in workload() {
        placed.push(fast.place(r).expect("the cluster has room"));
    }
    let fast_secs = t.elapsed().as_secs_f64();
    let fast_rate = placed.len() as f64 / fast_secs;

    let mut naive = Cluster::new(nodes());
    let t = Instant::now();
    for (i, r) in workload().take(NAIVE).enumerate() {
        let idx = naive.reference_place(r).expect("the cluster has room");
        let id = naive.nodes()[idx as usize].id.clone();
        naive.record(&id, r);
        assert_eq!(id, placed[i], "placement {i}: reference and index differ");
    }
    let naive_secs = t.elapsed().as_secs_f64();
    let naive_rate = NAIVE as f64 / naive_secs;

    let zones = placed
        .iter()
        .take(REPLICAS)
        .fold(BTreeMap::new(), |mut m, id| {
            let z = fast.node(id).unwrap().labels["zone"].clone();
            *m.entry(z).or_insert(0) += 1;
            m
        });
    println!(
        "workload: {} placements ({SERVICES} services x {REPLICAS} replicas), {NODES} nodes, 10 zones, spread over zone, constraint, reservations",
        placed.len()
    );
    println!(
        "indexed: {:>10.0} placements/s ({} in {:.3} s)",
        fast_rate,
        placed.len(),
        fast_secs
    );
    println!(
        "naive:   {:>10.0} placements/s (first {NAIVE} in {:.3} s, same answers)",
        naive_rate, naive_secs
    );
    println!("ratio:   {:>10.1}x", fast_rate / naive_rate);
    println!("first service per zone: {zones:?}");
}
