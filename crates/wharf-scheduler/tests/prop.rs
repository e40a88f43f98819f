//! The indexed `place` against the reference scan, on random clusters and random sequences of
//! placements and releases: the same node (so the same spread and count keys), and a refusal with
//! the same explanation exactly when the reference finds no node.

use std::collections::BTreeMap;

use proptest::prelude::*;
use wharf_scheduler::{Cluster, NodeView, Request, Resources};
use wharf_types::{DriverKind, Protocol};

const GIB: u64 = 1 << 30;
const CPU: u64 = 1_000_000_000;

fn arb_node(i: usize) -> impl Strategy<Value = NodeView> {
    (
        prop::option::of(0..3u8),
        prop::option::of(0..2u8),
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.9),
        prop::bool::weighted(0.2),
        (0..5u64, 0..5u64),
        // Mostly no limit; small limits so that full nodes are common.
        prop::sample::select(vec![0u32, 0, 1, 2, 4]),
    )
        .prop_map(
            move |(zone, rack, ready, schedulable, docker, manager, (cpus, mem), max_instances)| {
                let mut labels = BTreeMap::new();
                if let Some(z) = zone {
                    labels.insert("zone".to_string(), format!("z{z}"));
                }
                if let Some(r) = rack {
                    labels.insert("rack".to_string(), format!("r{r}"));
                }
                NodeView {
                    id: format!("n{i:02}"),
                    hostname: format!("h{i}"),
                    role: if manager { "manager" } else { "worker" }.to_string(),
                    labels,
                    ready,
                    schedulable,
                    drivers: if docker {
                        vec![DriverKind::Docker]
                    } else {
                        vec![DriverKind::Process]
                    },
                    capacity: Resources {
                        nano_cpus: cpus * 2 * CPU,
                        memory_bytes: mem * 2 * GIB,
                    },
                    reserved: Resources::default(),
                    host_ports: Default::default(),
                    instances: 0,
                    max_instances,
                    per_service: BTreeMap::new(),
                }
            },
        )
}

fn arb_request() -> impl Strategy<Value = Request> {
    let constraint = prop::sample::select(vec![
        "node.labels.zone == z0",
        "node.labels.zone != z1",
        "node.role == worker",
        "node.hostname != h1",
        "node.labels.rack == r1",
    ]);
    let spread = prop::sample::select(vec![
        vec![],
        vec!["node.labels.zone"],
        vec!["node.labels.rack"],
        vec!["node.labels.zone", "node.labels.rack"],
    ]);
    let service = || prop::sample::select(vec!["s/a", "s/b", "s/c", "s/d"]);
    (
        service(),
        prop::collection::vec(constraint, 0..2),
        spread,
        prop::option::of(0..3u32),
        (
            prop::sample::select(vec![0, CPU / 2, CPU]),
            prop::sample::select(vec![0, GIB / 2, GIB, 3 * GIB]),
        ),
        prop::collection::vec(
            prop::sample::select(vec![(Protocol::Tcp, 80), (Protocol::Udp, 53)]),
            0..2,
        ),
        prop::collection::vec(service(), 0..2),
        prop::collection::vec(service(), 0..2),
        prop::bool::weighted(0.95),
    )
        .prop_map(
            |(service, constraints, spread, max, (cpu, mem), ports, aff, anti, docker)| Request {
                service: service.to_string(),
                driver: if docker {
                    DriverKind::Docker
                } else {
                    DriverKind::Process
                },
                constraints: constraints.into_iter().map(String::from).collect(),
                spread: spread.into_iter().map(String::from).collect(),
                max_per_node: max,
                reservation: Resources {
                    nano_cpus: cpu,
                    memory_bytes: mem,
                },
                host_ports: ports,
                affinity: aff.into_iter().map(String::from).collect(),
                anti_affinity: anti.into_iter().map(String::from).collect(),
            },
        )
}

#[derive(Clone, Debug)]
enum Op {
    Place(Request),
    /// Release the n-th placement made so far (modulo), if any.
    Release(usize),
}

fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
    // Each service keeps one request shape per run, as in a real deploy; requests vary across runs.
    let pool = prop::collection::vec(arb_request(), 1..5);
    (
        pool,
        prop::collection::vec((0..10usize, any::<prop::sample::Index>()), 1..60),
    )
        .prop_map(|(pool, picks)| {
            picks
                .into_iter()
                .map(|(kind, i)| {
                    if kind < 8 {
                        Op::Place(pool[i.index(pool.len())].clone())
                    } else {
                        Op::Release(i.index(1000))
                    }
                })
                .collect()
        })
}

fn arb_cluster() -> impl Strategy<Value = Vec<NodeView>> {
    (0..10usize).prop_flat_map(|n| (0..n).map(arb_node).collect::<Vec<_>>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn indexed_place_matches_reference(nodes in arb_cluster(), ops in arb_ops()) {
        let mut cluster = Cluster::new(nodes);
        let mut placed: Vec<(String, Request)> = Vec::new();
        for op in ops {
            match op {
                Op::Place(req) => {
                    let reference = cluster.reference_place(&req);
                    let got = cluster.place(&req);
                    match (got, reference) {
                        (Ok(n), Ok(idx)) => {
                            prop_assert_eq!(&cluster.nodes()[idx as usize].id, &n);
                            placed.push((n, req));
                        }
                        (Err(e), Err(r)) => prop_assert_eq!(e, r),
                        (got, reference) => prop_assert!(false, "index {got:?}, reference {reference:?}"),
                    }
                }
                Op::Release(i) => {
                    if !placed.is_empty() {
                        let (node, req) = placed.remove(i % placed.len());
                        cluster.release(&node, &req);
                    }
                }
            }
        }
        // Every recorded placement still adds up.
        let total: u32 = cluster.nodes().iter().map(|n| n.instances).sum();
        prop_assert_eq!(total as usize, placed.len());
    }
}
