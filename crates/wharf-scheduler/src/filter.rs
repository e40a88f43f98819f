//! The feasibility pipeline and the ranking key, shared by the indexed placement and the reference scan.
//!
//! Filters run cheapest first, and a node is blamed on the first filter that rejects it:
//!
//! 1. `node not ready`: one bool, and the most common reason (a node that stopped heartbeating).
//! 2. `node draining`: one bool; an operator took the node out.
//! 3. driver (`docker engine not reachable`, `driver process unavailable`): a scan of one or two entries.
//! 4. `constraint <c>`: string comparisons against the node's id, hostname, role or labels.
//!
//! Those four only read what the node *is*, so the index caches their outcome per request shape. The
//! rest read what the node *runs*, which changes with every placement:
//!
//! 5. `max replicas per node`: one map lookup.
//! 6. `anti-affinity with <svc>`, then `host port <port>/<proto>`: map and set lookups.
//! 7. `cpu`, `memory`: arithmetic. Late, although cheap, so that "memory: 3 of 4 nodes exhausted"
//!    counts only nodes that would otherwise take the instance: the operator can act on that number.
//! 8. `instances`: the node runs as many instances as it takes (`NodeView::max_instances`, from the
//!    agent's `--max-instances`). Last for the same reason: "instances: 2 of 3 nodes full" names
//!    nodes that are only full.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use wharf_types::{DriverKind, Protocol};

use crate::constraint::{attr_value, matches};
use crate::{NodeView, Request, Resources};
use wharf_types::constraint::{Constraint, NodeAttr, parse_constraint};

/// Why a node was filtered out. The order of variants is the order of the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Reject {
    NotReady,
    Draining,
    Driver,
    /// Index into the request's constraints.
    Constraint(usize),
    MaxPerNode,
    /// Index into the request's anti-affinity list.
    AntiAffinity(usize),
    /// Index into the request's host ports.
    HostPort(usize),
    Cpu,
    Memory,
    /// The node runs `max_instances` instances already.
    Instances,
}

impl Reject {
    pub(crate) fn name(self, req: &Request, parsed: &[Result<Constraint, String>]) -> String {
        match self {
            Reject::NotReady => "node not ready".into(),
            Reject::Draining => "node draining".into(),
            Reject::Driver => match req.driver {
                DriverKind::Docker => "docker engine not reachable".into(),
                DriverKind::Process => "driver process unavailable".into(),
            },
            Reject::Constraint(i) => match &parsed[i] {
                Ok(c) => format!("constraint {c}"),
                Err(_) => format!("constraint {} (invalid)", req.constraints[i]),
            },
            Reject::MaxPerNode => "max replicas per node".into(),
            Reject::AntiAffinity(i) => format!("anti-affinity with {}", req.anti_affinity[i]),
            Reject::HostPort(i) => {
                let (proto, port) = req.host_ports[i];
                format!("host port {port}/{}", proto_name(proto))
            }
            Reject::Cpu => "cpu".into(),
            Reject::Memory => "memory".into(),
            Reject::Instances => "instances".into(),
        }
    }
}

/// Position of a filter name in the pipeline, for printing explanations in pipeline order.
pub(crate) fn stage(name: &str) -> u8 {
    const STAGES: [&str; 10] = [
        "node not ready",
        "node draining",
        "driver",
        "constraint",
        "max replicas",
        "anti-affinity",
        "host port",
        "cpu",
        "memory",
        "instances",
    ];
    if name == "docker engine not reachable" {
        return 2;
    }
    STAGES
        .iter()
        .position(|s| name.starts_with(s))
        .unwrap_or(STAGES.len()) as u8
}

pub(crate) fn proto_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// What the instance being checked is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A new replica.
    New,
    /// An instance of a global service: `max_per_node` does not apply.
    Global,
    /// An instance already on the node (already counted in its reservations, ports and counts).
    Existing,
}

pub(crate) fn parse_all(req: &Request) -> Vec<Result<Constraint, String>> {
    req.constraints
        .iter()
        .map(|c| parse_constraint(c))
        .collect()
}

/// Filters 1–4: what the node is.
pub(crate) fn static_check(
    node: &NodeView,
    req: &Request,
    parsed: &[Result<Constraint, String>],
) -> Result<(), Reject> {
    if !node.ready {
        return Err(Reject::NotReady);
    }
    if !node.schedulable {
        return Err(Reject::Draining);
    }
    if !node.drivers.contains(&req.driver) {
        return Err(Reject::Driver);
    }
    for (i, c) in parsed.iter().enumerate() {
        if !c.as_ref().is_ok_and(|c| matches(c, node)) {
            return Err(Reject::Constraint(i));
        }
    }
    Ok(())
}

/// Whether `request` more fits in `capacity` with `reserved` taken. Capacity 0: not reported, unlimited.
pub(crate) fn fits(capacity: u64, reserved: u64, request: u64) -> bool {
    capacity == 0 || reserved.saturating_add(request) <= capacity
}

/// Whether the node runs as many instances as it takes (0: no limit).
pub(crate) fn full(node: &NodeView) -> bool {
    node.max_instances != 0 && node.instances >= node.max_instances
}

/// Filters 5–8: what the node runs.
pub(crate) fn dynamic_check(node: &NodeView, req: &Request, mode: Mode) -> Result<(), Reject> {
    let own = node.per_service.get(&req.service).copied().unwrap_or(0);
    // An existing instance is one of `own`.
    match (mode, req.max_per_node) {
        (Mode::New, Some(max)) if own >= max => return Err(Reject::MaxPerNode),
        (Mode::Existing, Some(max)) if own > max => return Err(Reject::MaxPerNode),
        _ => {}
    }
    for (i, other) in req.anti_affinity.iter().enumerate() {
        let mut n = node.per_service.get(other).copied().unwrap_or(0);
        if mode == Mode::Existing && *other == req.service {
            n = n.saturating_sub(1);
        }
        if n > 0 {
            return Err(Reject::AntiAffinity(i));
        }
    }
    // An existing instance holds its own ports and reservation already.
    let reserved = if mode == Mode::Existing {
        Resources {
            nano_cpus: node
                .reserved
                .nano_cpus
                .saturating_sub(req.reservation.nano_cpus),
            memory_bytes: node
                .reserved
                .memory_bytes
                .saturating_sub(req.reservation.memory_bytes),
        }
    } else {
        for (i, p) in req.host_ports.iter().enumerate() {
            if node.host_ports.contains(p) {
                return Err(Reject::HostPort(i));
            }
        }
        node.reserved
    };
    if !fits(
        node.capacity.nano_cpus,
        reserved.nano_cpus,
        req.reservation.nano_cpus,
    ) {
        return Err(Reject::Cpu);
    }
    if !fits(
        node.capacity.memory_bytes,
        reserved.memory_bytes,
        req.reservation.memory_bytes,
    ) {
        return Err(Reject::Memory);
    }
    // An existing instance is one of `instances`; a global service runs on every node that passes
    // the other filters, as `max_per_node` does not apply to it either.
    match mode {
        Mode::New if full(node) => return Err(Reject::Instances),
        Mode::Existing if node.max_instances != 0 && node.instances > node.max_instances => {
            return Err(Reject::Instances);
        }
        _ => {}
    }
    Ok(())
}

pub(crate) fn check(
    node: &NodeView,
    req: &Request,
    parsed: &[Result<Constraint, String>],
    mode: Mode,
) -> Result<(), Reject> {
    static_check(node, req, parsed)?;
    dynamic_check(node, req, mode)
}

/// How bin packing orders nodes for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Pack {
    /// The request reserves nothing: no packing.
    None,
    /// Least free memory first, then least free cpu.
    MemoryFirst,
    /// Least free cpu first, then least free memory.
    CpuFirst,
}

/// Packing looks first at the request's dominant resource: the one of which it asks the larger
/// share of the cluster's reported capacity (memory on a tie). Packing on it first keeps the scan of
/// the index short: nodes without enough of it are skipped by a range, not one by one.
pub(crate) fn pack_order(req: &Request, total: Resources) -> Pack {
    let r = req.reservation;
    if r == Resources::default() {
        return Pack::None;
    }
    let share = |want: u64, total: u64| {
        if total == 0 {
            0
        } else {
            (u128::from(want) << 32) / u128::from(total)
        }
    };
    if share(r.nano_cpus, total.nano_cpus) > share(r.memory_bytes, total.memory_bytes) {
        Pack::CpuFirst
    } else {
        Pack::MemoryFirst
    }
}

/// Room left on a node in one dimension; unreported capacity is unlimited.
pub(crate) fn free(capacity: u64, reserved: u64) -> u64 {
    if capacity == 0 {
        u64::MAX
    } else {
        capacity.saturating_sub(reserved)
    }
}

/// The tail of the ranking key, which the index keeps nodes ordered by:
/// (packing primary, packing secondary, instances overall, node index). Node indexes follow node ids.
pub(crate) type TailKey = (u64, u64, u32, u32);

pub(crate) fn tail_key(node: &NodeView, idx: u32, pack: Pack) -> TailKey {
    let mem = free(node.capacity.memory_bytes, node.reserved.memory_bytes);
    let cpu = free(node.capacity.nano_cpus, node.reserved.nano_cpus);
    match pack {
        Pack::None => (0, 0, node.instances, idx),
        Pack::MemoryFirst => (mem, cpu, node.instances, idx),
        Pack::CpuFirst => (cpu, mem, node.instances, idx),
    }
}

/// The full ranking key; the smallest wins: spread group counts (one per preference, outermost
/// first), instances of this service on the node, affinity (more is better), then the tail.
pub(crate) type RankKey = (Vec<u32>, u32, Reverse<u32>, TailKey);

pub(crate) fn affinity_score(node: &NodeView, req: &Request) -> u32 {
    req.affinity
        .iter()
        .filter(|s| node.per_service.get(*s).is_some_and(|n| *n > 0))
        .count() as u32
}

pub(crate) fn spread_attrs(req: &Request) -> Vec<NodeAttr> {
    req.spread
        .iter()
        .map(|s| NodeAttr::parse(s).unwrap_or_else(|| NodeAttr::Label(s.clone())))
        .collect()
}

/// Why the reference scan found no node: for each filter how many nodes it removed, and the
/// `max_instances` of the nodes the instances filter removed.
pub(crate) type Refusal = (BTreeMap<String, usize>, BTreeSet<u32>);

/// The reference implementation: a straightforward scan of every node. Returns the index of the
/// winner, or why there is none.
pub(crate) fn reference_place(
    nodes: &[NodeView],
    req: &Request,
    total: Resources,
    mode: Mode,
) -> Result<u32, Refusal> {
    let parsed = parse_all(req);
    let attrs = spread_attrs(req);
    let pack = pack_order(req, total);
    // Instances of this service per spread group, at each preference level.
    let mut groups: Vec<BTreeMap<Vec<Option<&str>>, u32>> = vec![BTreeMap::new(); attrs.len()];
    for n in nodes {
        let own = n.per_service.get(&req.service).copied().unwrap_or(0);
        for (level, map) in groups.iter_mut().enumerate() {
            let k: Vec<Option<&str>> = attrs[..=level].iter().map(|a| attr_value(a, n)).collect();
            *map.entry(k).or_default() += own;
        }
    }
    let mut filtered: BTreeMap<Reject, usize> = BTreeMap::new();
    let mut full_at = BTreeSet::new();
    let mut best: Option<(RankKey, u32)> = None;
    for (idx, n) in nodes.iter().enumerate() {
        if let Err(r) = check(n, req, &parsed, mode) {
            *filtered.entry(r).or_default() += 1;
            if r == Reject::Instances {
                full_at.insert(n.max_instances);
            }
            continue;
        }
        let spread = (0..attrs.len())
            .map(|level| {
                let k: Vec<Option<&str>> =
                    attrs[..=level].iter().map(|a| attr_value(a, n)).collect();
                groups[level][&k]
            })
            .collect();
        let key = (
            spread,
            n.per_service.get(&req.service).copied().unwrap_or(0),
            Reverse(affinity_score(n, req)),
            tail_key(n, idx as u32, pack),
        );
        if best.as_ref().is_none_or(|(b, _)| key < *b) {
            best = Some((key, idx as u32));
        }
    }
    match best {
        Some((_, idx)) => Ok(idx),
        None => Err((
            filtered
                .into_iter()
                .map(|(r, n)| (r.name(req, &parsed), n))
                .fold(BTreeMap::new(), |mut m, (k, n)| {
                    *m.entry(k).or_default() += n;
                    m
                }),
            full_at,
        )),
    }
}
