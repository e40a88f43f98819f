//! Placement cases through one `check`: a cluster, requests placed in turn, and the nodes they land
//! on (or the explanation of the first refusal).

use std::collections::BTreeMap;

use wharf_scheduler::{Cluster, NodeView, Request, Resources};
use wharf_types::{DriverKind, Protocol, ServiceSpec};

const GIB: u64 = 1 << 30;
const CPU: u64 = 1_000_000_000;

/// A ready, schedulable Docker worker; `labels` like "zone=a,disk=ssd".
fn node(id: &str, labels: &str) -> NodeView {
    NodeView {
        id: id.to_string(),
        hostname: format!("host-{id}"),
        role: "worker".to_string(),
        labels: labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect(),
        ready: true,
        schedulable: true,
        drivers: vec![DriverKind::Docker],
        capacity: Resources::default(),
        reserved: Resources::default(),
        host_ports: Default::default(),
        instances: 0,
        max_instances: 0,
        per_service: BTreeMap::new(),
    }
}

fn sized(mut n: NodeView, cpus: u64, mem_gib: u64) -> NodeView {
    n.capacity = Resources {
        nano_cpus: cpus * CPU,
        memory_bytes: mem_gib * GIB,
    };
    n
}

fn req(service: &str) -> Request {
    Request {
        service: format!("s/{service}"),
        driver: DriverKind::Docker,
        constraints: vec![],
        spread: vec![],
        max_per_node: None,
        reservation: Resources::default(),
        host_ports: vec![],
        affinity: vec![],
        anti_affinity: vec![],
    }
}

/// Places each request in turn into `cluster` and compares the nodes chosen, space-separated,
/// with `expect`; a refusal prints as `! <explanation>` and ends the run.
fn check(cluster: &mut Cluster, reqs: &[Request], expect: &str) {
    let mut got = Vec::new();
    for r in reqs {
        // The indexed placement must agree with the reference scan at every step.
        let reference = cluster.reference_place(r);
        match cluster.place(r) {
            Ok(n) => {
                let idx = reference.expect("reference refused what the index placed");
                assert_eq!(
                    cluster.nodes()[idx as usize].id,
                    n,
                    "index and reference differ"
                );
                got.push(n);
            }
            Err(e) => {
                assert_eq!(reference.unwrap_err(), e);
                got.push(format!("! {e}"));
                break;
            }
        }
    }
    assert_eq!(got.join(" "), expect);
}

fn times(r: Request, n: usize) -> Vec<Request> {
    vec![r; n]
}

#[test]
fn spread_over_zones_then_nodes() {
    let nodes = ["a1", "a2", "b1", "b2", "c1", "c2"]
        .map(|id| node(id, &format!("zone={}", &id[..1])))
        .to_vec();
    let mut r = req("web");
    r.spread = vec!["node.labels.zone".into()];
    // 6 replicas over 3 zones × 2 nodes: one per zone, then the second node of each.
    check(
        &mut Cluster::new(nodes.clone()),
        &times(r.clone(), 6),
        "a1 b1 c1 a2 b2 c2",
    );
    // Nodes lacking the label form their own group: c takes the second replica.
    let nodes = vec![node("a", "zone=x"), node("b", "zone=x"), node("c", "")];
    check(&mut Cluster::new(nodes), &times(r, 3), "a c b");
    // Without spread, replicas still spread over nodes, then by instances overall.
    let mut busy = node("a", "");
    busy.instances = 3;
    let nodes = vec![busy, node("b", ""), node("c", "")];
    check(&mut Cluster::new(nodes), &times(req("web"), 4), "b c a b");
}

#[test]
fn spread_nested_preferences() {
    // zone first, then rack within the zone.
    let nodes = vec![
        node("n1", "zone=a,rack=1"),
        node("n2", "zone=a,rack=1"),
        node("n3", "zone=a,rack=2"),
        node("n4", "zone=b,rack=1"),
    ];
    let mut r = req("web");
    r.spread = vec!["node.labels.zone".into(), "node.labels.rack".into()];
    // The third replica: zones tie at 1, rack a/2 is empty. The fourth: zone b has fewer.
    check(&mut Cluster::new(nodes), &times(r, 4), "n1 n4 n3 n4");
}

#[test]
fn global_eligibility() {
    let mut drained = node("c", "zone=a");
    drained.schedulable = false;
    let mut cluster = Cluster::new(vec![node("a", "zone=a"), node("b", "zone=b"), drained]);
    let mut r = req("agent");
    r.constraints = vec!["node.labels.zone != b".into()];
    r.max_per_node = Some(0); // ignored for global services
    assert_eq!(cluster.eligible(&r), vec!["a"]);
    // A node added later is eligible as soon as it is in the view.
    cluster.upsert_node(node("d", ""));
    assert_eq!(cluster.eligible(&r), vec!["a", "d"]);
    assert_eq!(cluster.node("d").unwrap().hostname, "host-d");
}

#[test]
fn reservations_pack_and_refuse() {
    let mut r1 = req("one");
    r1.reservation = Resources {
        nano_cpus: CPU,
        memory_bytes: GIB,
    };
    let mut r2 = r1.clone();
    r2.service = "s/two".into();
    let r3 = req("free");
    // Packing: "two" joins "one" on a (less room left); "free" reserves nothing, so no packing:
    // the node with fewer instances wins.
    let nodes = vec![sized(node("a", ""), 4, 4), sized(node("b", ""), 4, 4)];
    check(
        &mut Cluster::new(nodes),
        &[r1.clone(), r2.clone(), r3],
        "a a b",
    );
    // A bigger node has more room left: the smaller one is filled first.
    let nodes = vec![sized(node("big", ""), 8, 8), sized(node("small", ""), 4, 4)];
    check(
        &mut Cluster::new(nodes),
        &[r1.clone(), r2.clone()],
        "small small",
    );
    // Capacity 0 means not reported: unlimited, and last for packing.
    let nodes = vec![node("unknown", ""), sized(node("z", ""), 4, 4)];
    check(&mut Cluster::new(nodes), &[r1.clone()], "z");
    // Refusal names every filter, in pipeline order.
    let mut big = req("big");
    big.constraints = vec!["node.labels.zone == b".into()];
    big.reservation.memory_bytes = 3 * GIB;
    let mut full = sized(node("a", "zone=b"), 4, 4);
    full.reserved.memory_bytes = 2 * GIB;
    let nodes = vec![
        full,
        sized(node("b", "zone=b"), 4, 2),
        sized(node("c", "zone=b"), 4, 1),
        sized(node("d", "zone=a"), 4, 64),
    ];
    check(
        &mut Cluster::new(nodes),
        &[big],
        "! no node fits: constraint node.labels.zone==b: 1 node filtered; memory: 3 of 4 nodes exhausted",
    );
    // cpu: two instances of 3 cpus do not fit one 4-cpu node; the second is refused.
    let mut cpu = req("cpu");
    cpu.reservation.nano_cpus = 3 * CPU;
    let nodes = vec![sized(node("a", ""), 4, 0)];
    check(
        &mut Cluster::new(nodes),
        &times(cpu, 2),
        "a ! no node fits: cpu: 1 of 1 nodes exhausted",
    );
}

#[test]
fn constraints() {
    let nodes = || {
        let mut m = node("m", "zone=a");
        m.role = "manager".into();
        Cluster::new(vec![m, node("w1", "zone=b"), node("w2", "")])
    };
    let with = |c: &str| {
        let mut r = req("web");
        r.constraints = vec![c.to_string()];
        times(r, 2)
    };
    check(&mut nodes(), &with("node.labels.zone == b"), "w1 w1");
    // A missing label never equals, so != holds on w2.
    check(&mut nodes(), &with("node.labels.zone != b"), "m w2");
    check(&mut nodes(), &with("node.role == manager"), "m m");
    check(&mut nodes(), &with("node.role != manager"), "w1 w2");
    check(&mut nodes(), &with("node.hostname == host-w2"), "w2 w2");
    check(&mut nodes(), &with("node.id != m"), "w1 w2");
    check(
        &mut nodes(),
        &with("node.labels.disk == ssd"),
        "! no node fits: constraint node.labels.disk==ssd: 3 nodes filtered",
    );
    check(
        &mut nodes(),
        &with("zone = a"),
        "! no node fits: constraint zone = a (invalid): 3 nodes filtered",
    );
}

#[test]
fn max_replicas_per_node() {
    let mut r = req("web");
    r.max_per_node = Some(1);
    check(
        &mut Cluster::new(vec![node("a", ""), node("b", "")]),
        &times(r, 3),
        "a b ! no node fits: max replicas per node: 2 nodes filtered",
    );
}

fn capped(mut n: NodeView, max_instances: u32) -> NodeView {
    n.max_instances = max_instances;
    n
}

#[test]
fn instance_capacity() {
    // Instances of any service count: "db" fills a, so "web" goes to b and then nowhere.
    let mut cluster = Cluster::new(vec![capped(node("a", ""), 2), capped(node("b", ""), 1)]);
    check(&mut cluster, &[req("db"), req("db")], "a b");
    check(
        &mut cluster,
        &times(req("web"), 2),
        "a ! no node fits: instances: 2 of 2 nodes full (1 to 2 instances)",
    );
    // One node at its limit, named as in the deploy's failure; 0 is no limit.
    check(
        &mut Cluster::new(vec![capped(node("a", ""), 256)]),
        &times(req("web"), 257)[..],
        &format!(
            "{} ! no node fits: instances: 1 of 1 nodes full (256 instances each)",
            vec!["a"; 256].join(" ")
        ),
    );
    check(
        &mut Cluster::new(vec![node("a", "")]),
        &times(req("web"), 300),
        &vec!["a"; 300].join(" "),
    );
    // A full node is blamed only when nothing else removed it, and it spills to the next node even
    // when it would rank first (bin packing prefers the fuller node).
    let mut r = req("web");
    r.reservation.memory_bytes = GIB;
    let mut down = capped(node("c", ""), 1);
    down.ready = false;
    let nodes = vec![
        capped(sized(node("a", ""), 0, 2), 1),
        sized(node("b", ""), 0, 64),
        down,
    ];
    check(
        &mut Cluster::new(nodes.clone()),
        &times(r.clone(), 2),
        "a b",
    );
    let mut small = nodes;
    small[1] = sized(node("b", ""), 0, 1);
    check(
        &mut Cluster::new(small),
        &times(r.clone(), 3),
        "b a ! no node fits: node not ready: 1 node filtered; memory: 1 of 3 nodes exhausted; instances: 1 of 3 nodes full (1 instance each)",
    );
    // Released room is usable again; a node already over its limit (lowered) keeps nothing more.
    let mut cluster = Cluster::new(vec![capped(node("a", ""), 1)]);
    check(&mut cluster, &[req("web")], "a");
    assert!(cluster.fits_existing("a", &req("web")));
    cluster.release("a", &req("web"));
    check(&mut cluster, &[req("db")], "a");
    let mut over = capped(node("a", ""), 1);
    over.instances = 2;
    let cluster = Cluster::new(vec![over]);
    assert!(!cluster.fits_existing("a", &req("web")));
    // A global service is not held to it (as max_replicas_per_node).
    assert_eq!(cluster.eligible(&req("agent")), vec!["a"]);
}

#[test]
fn affinity_and_anti_affinity() {
    let nodes = || {
        let mut c = Cluster::new(vec![node("a", ""), node("b", ""), node("c", "")]);
        c.record("b", &req("db"));
        c
    };
    let mut web = req("web");
    web.affinity = vec!["s/db".into()];
    // Affinity ranks after spread over nodes: first b, then the others.
    check(&mut nodes(), &times(web.clone(), 3), "b a c");
    // Affinity beats packing and instance counts.
    let mut cache = req("cache");
    cache.affinity = vec!["s/db".into(), "s/web".into()];
    let mut c = nodes();
    c.record("c", &req("web"));
    c.record("b", &req("web"));
    check(&mut c, &[cache], "b");
    let mut web = req("web");
    web.anti_affinity = vec!["s/db".into()];
    check(&mut nodes(), &times(web.clone(), 3), "a c a");
    let mut c = Cluster::new(vec![node("a", "")]);
    c.record("a", &req("db"));
    check(
        &mut c,
        &[web],
        "! no node fits: anti-affinity with s/db: 1 node filtered",
    );
}

#[test]
fn host_ports() {
    let mut web = req("web");
    web.host_ports = vec![(Protocol::Tcp, 80)];
    let mut other = req("other");
    other.host_ports = vec![(Protocol::Udp, 80), (Protocol::Tcp, 80)];
    let mut dns = req("dns");
    dns.host_ports = vec![(Protocol::Udp, 80)];
    check(
        &mut Cluster::new(vec![node("a", ""), node("b", "")]),
        &[web.clone(), dns, web, other],
        // dns goes to b (fewer instances), so the second web has to as well; `other` finds a port
        // taken on each node.
        "a b b ! no node fits: host port 80/tcp: 1 node filtered; host port 80/udp: 1 node filtered",
    );
}

#[test]
fn draining_and_not_ready() {
    let mut down = node("a", "");
    down.ready = false;
    let mut draining = node("b", "");
    draining.schedulable = false;
    let mut process_only = node("c", "");
    process_only.drivers = vec![DriverKind::Process];
    check(
        &mut Cluster::new(vec![down.clone(), draining.clone(), process_only]),
        &[req("web")],
        "! no node fits: node not ready: 1 node filtered; node draining: 1 node filtered; docker engine not reachable: 1 node filtered",
    );
    let mut cluster = Cluster::new(vec![down, draining, node("d", "")]);
    check(&mut cluster, &times(req("web"), 2), "d d");
    check(
        &mut Cluster::new(vec![]),
        &[req("web")],
        "! no nodes registered",
    );
}

#[test]
fn release_frees_room() {
    let mut r = req("web");
    r.reservation.memory_bytes = 2 * GIB;
    r.host_ports = vec![(Protocol::Tcp, 8080)];
    let mut cluster = Cluster::new(vec![sized(node("a", ""), 0, 2)]);
    check(
        &mut cluster,
        &times(r.clone(), 2),
        "a ! no node fits: host port 8080/tcp: 1 node filtered",
    );
    cluster.release("a", &r);
    let a = cluster.node("a").unwrap();
    assert_eq!(
        (a.reserved, a.instances, a.host_ports.len()),
        (Resources::default(), 0, 0)
    );
    assert!(a.per_service.is_empty());
    check(&mut cluster, &[r.clone()], "a");
    // Releasing what is not there changes nothing.
    cluster.release("a", &req("other"));
    cluster.release("nowhere", &r);
    assert_eq!(cluster.node("a").unwrap().instances, 1);
}

#[test]
fn fits_existing() {
    let mut r = req("web");
    r.reservation.memory_bytes = 2 * GIB;
    r.max_per_node = Some(1);
    r.host_ports = vec![(Protocol::Tcp, 80)];
    r.anti_affinity = vec!["s/web".into()];
    let mut cluster = Cluster::new(vec![sized(node("a", "zone=a"), 0, 2)]);
    check(&mut cluster, &[r.clone()], "a");
    // Its own reservation, port, count and anti-affinity are not held against it.
    assert!(cluster.fits_existing("a", &r));
    let mut moved = r.clone();
    moved.constraints = vec!["node.labels.zone == b".into()];
    assert!(!cluster.fits_existing("a", &moved));
    assert!(!cluster.fits_existing("nowhere", &r));
    let mut a = cluster.node("a").unwrap().clone();
    a.schedulable = false;
    cluster.upsert_node(a);
    assert!(!cluster.fits_existing("a", &r));
}

#[test]
fn request_for_service() {
    let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
        "image": "nginx",
        "ports": [{"target": 80, "published": 8080}, {"target": 443}, {"target": 53, "published": 53, "protocol": "udp"}],
        "deploy": {
            "placement": {"constraints": ["node.labels.zone == a"], "preferences": ["node.labels.zone"], "max_replicas_per_node": 2},
            "resources": {"reservations": {"nano_cpus": 500000000, "memory_bytes": 1024}}
        },
        "wharf": {"affinity": ["db"], "anti_affinity": ["web"]}
    }))
    .unwrap();
    let r = Request::for_service("shop", "api", &spec);
    assert_eq!(
        r,
        Request {
            service: "shop/api".into(),
            driver: DriverKind::Docker,
            constraints: vec!["node.labels.zone == a".into()],
            spread: vec!["node.labels.zone".into()],
            max_per_node: Some(2),
            reservation: Resources {
                nano_cpus: 500_000_000,
                memory_bytes: 1024
            },
            host_ports: vec![(Protocol::Tcp, 8080), (Protocol::Udp, 53)],
            affinity: vec!["shop/db".into()],
            anti_affinity: vec!["shop/web".into()],
        }
    );
}
