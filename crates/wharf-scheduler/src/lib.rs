//! Pure placement: a view of the cluster's nodes in, a node for each new instance out.
//!
//! Architecture invariant: no IO, no clock, no randomness. The same view and requests always give
//! the same placements, so the scheduler is tested with plain data.
//!
//! The pipeline follows Nomad's feasibility → ranking split:
//!
//! - feasibility ([`filter`]): ready, draining, driver, constraints, max replicas per node,
//!   anti-affinity, host ports, cpu, memory, instances (the node's capacity) — cheapest and most
//!   static first, see the module doc;
//! - ranking: spread preferences (the label value with the fewest instances of the service wins;
//!   nodes lacking the label form their own group), then fewest instances of the service on the node,
//!   then affinity (nodes running more of the affinity services), then bin packing when the request
//!   reserves resources (the node left with the least free room of the request's dominant resource),
//!   then fewest instances overall, then node id.
//!
//! Code map: `constraint.rs` matches constraints (parsed in `wharf_types::constraint`); `filter.rs` holds the filters, the
//! ranking key and the reference implementation (a scan of every node); `index.rs` makes `place`
//! fast with per-request-shape ordered sets and gives exactly the reference's answer.
#![forbid(unsafe_code)]

mod constraint;
mod filter;
mod index;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use wharf_types::{DriverKind, Protocol, ServiceSpec};

pub use wharf_types::constraint::{
    ACCEPTED_FORMS, Constraint, ConstraintOp, NodeAttr, parse_constraint,
};

use filter::Mode;

pub type NodeId = String;

/// Reservable resources. Zero capacity means the node did not report it: unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub nano_cpus: u64,
    pub memory_bytes: u64,
}

/// What the scheduler knows about a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: NodeId,
    pub hostname: String,
    /// "worker" or "manager".
    pub role: String,
    pub labels: BTreeMap<String, String>,
    /// Heartbeating.
    pub ready: bool,
    /// False while draining.
    pub schedulable: bool,
    pub drivers: Vec<DriverKind>,
    pub capacity: Resources,
    /// Sum of the reservations of the instances on the node.
    pub reserved: Resources,
    /// Host ports taken by the instances on the node. A `HashSet`, not the `BTreeSet` first asked
    /// for: `wharf_types::Protocol` is not `Ord`.
    pub host_ports: HashSet<(Protocol, u16)>,
    /// Instances of any service on the node.
    pub instances: u32,
    /// The most instances the node takes (from the agent's `--max-instances`); 0: no limit.
    pub max_instances: u32,
    /// Instances on the node by "stack/service".
    pub per_service: BTreeMap<String, u32>,
}

/// One instance to place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// "stack/service".
    pub service: String,
    pub driver: DriverKind,
    /// Compose syntax: "node.labels.zone == a", "node.hostname != h1", "node.role == manager".
    pub constraints: Vec<String>,
    /// Spread preferences, outermost first: "node.labels.zone" spreads over its values, then over nodes.
    pub spread: Vec<String>,
    pub max_per_node: Option<u32>,
    pub reservation: Resources,
    pub host_ports: Vec<(Protocol, u16)>,
    /// "stack/service" keys whose nodes this service prefers.
    pub affinity: Vec<String>,
    /// "stack/service" keys this service must not share a node with.
    pub anti_affinity: Vec<String>,
}

impl Request {
    /// The request for one instance of `stack`'s service `name`. Ports with `published` set are
    /// host ports; affinity names are services of the same stack.
    pub fn for_service(stack: &str, name: &str, spec: &ServiceSpec) -> Request {
        let r = &spec.deploy.resources.reservations;
        let key = |s: &String| format!("{stack}/{s}");
        Request {
            service: format!("{stack}/{name}"),
            driver: spec.driver,
            constraints: spec.deploy.placement.constraints.clone(),
            spread: spec.deploy.placement.preferences.clone(),
            max_per_node: spec.deploy.placement.max_replicas_per_node,
            reservation: Resources {
                nano_cpus: r.nano_cpus.unwrap_or(0),
                memory_bytes: r.memory_bytes.unwrap_or(0),
            },
            host_ports: spec
                .ports
                .iter()
                .filter_map(|p| p.published.map(|h| (p.protocol, h)))
                .collect(),
            affinity: spec.wharf.affinity.iter().map(key).collect(),
            anti_affinity: spec.wharf.anti_affinity.iter().map(key).collect(),
        }
    }
}

/// Why no node could take an instance: for each filter, how many nodes it removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unplaceable {
    /// Nodes considered.
    pub nodes: usize,
    /// Nodes removed, by filter name ("memory", "constraint node.labels.zone==b", ...).
    pub filtered: BTreeMap<String, usize>,
    /// The `max_instances` of the nodes the "instances" filter removed (full nodes).
    pub full_at: BTreeSet<u32>,
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return write!(f, "no nodes registered");
        }
        let mut parts: Vec<(&String, &usize)> = self.filtered.iter().collect();
        parts.sort_by_key(|(name, _)| filter::stage(name));
        let parts: Vec<String> = parts
            .into_iter()
            .map(|(name, n)| {
                if name == "cpu" || name == "memory" {
                    format!("{name}: {n} of {} nodes exhausted", self.nodes)
                } else if name == "instances" {
                    let each = match (self.full_at.first(), self.full_at.last()) {
                        (Some(lo), Some(hi)) if lo != hi => format!("{lo} to {hi} instances"),
                        (Some(1), _) => "1 instance each".to_string(),
                        (Some(lo), _) => format!("{lo} instances each"),
                        _ => "at their instance limit".to_string(),
                    };
                    format!("{name}: {n} of {} nodes full ({each})", self.nodes)
                } else {
                    let s = if *n == 1 { "" } else { "s" };
                    format!("{name}: {n} node{s} filtered")
                }
            })
            .collect();
        write!(f, "no node fits: {}", parts.join("; "))
    }
}

impl std::error::Error for Unplaceable {}

/// The nodes, what runs on them, and indexes that make placement fast.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// Sorted by id, so that a node's index orders like its id.
    nodes: Vec<NodeView>,
    by_id: HashMap<NodeId, u32>,
    /// Sum of the reported capacities, for choosing the dominant resource of a request.
    total: Resources,
    index: index::Index,
}

impl Cluster {
    pub fn new(mut nodes: Vec<NodeView>) -> Cluster {
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        nodes.dedup_by(|a, b| a.id == b.id);
        let by_id = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i as u32))
            .collect();
        let total = nodes.iter().fold(Resources::default(), |t, n| Resources {
            nano_cpus: t.nano_cpus.saturating_add(n.capacity.nano_cpus),
            memory_bytes: t.memory_bytes.saturating_add(n.capacity.memory_bytes),
        });
        let index = index::Index::new(&nodes);
        Cluster {
            nodes,
            by_id,
            total,
            index,
        }
    }

    /// Adds a node or replaces the one with the same id (a node joined, drained, lost its heartbeat).
    /// Rebuilds the indexes: meant for membership changes, not for every placement.
    pub fn upsert_node(&mut self, node: NodeView) {
        let mut nodes = std::mem::take(&mut self.nodes);
        nodes.retain(|n| n.id != node.id);
        nodes.push(node);
        *self = Cluster::new(nodes);
    }

    /// Place one instance; on success the placement is recorded in the view (reserved, ports, counts).
    pub fn place(&mut self, req: &Request) -> Result<NodeId, Unplaceable> {
        let found = self.index.place(&self.nodes, req, self.total);
        let idx = match found {
            Some(idx) => idx,
            None => match self.reference_place(req) {
                // The index found nothing, so neither does the scan: it only explains why. Were
                // they to disagree, the scan's answer is the right one (checked in tests).
                Ok(idx) => {
                    debug_assert!(
                        false,
                        "the index missed a feasible node for {}",
                        req.service
                    );
                    idx
                }
                Err(e) => return Err(e),
            },
        };
        self.apply(idx, req, true);
        Ok(self.nodes[idx as usize].id.clone())
    }

    /// The reference implementation of `place` (a scan of every node), without recording anything.
    /// For tests and the benchmark.
    pub fn reference_place(&self, req: &Request) -> Result<u32, Unplaceable> {
        filter::reference_place(&self.nodes, req, self.total, Mode::New).map_err(
            |(filtered, full_at)| Unplaceable {
                nodes: self.nodes.len(),
                filtered,
                full_at,
            },
        )
    }

    /// Records an instance of `req` on the node at `idx` (`add`), or removes one.
    fn apply(&mut self, idx: u32, req: &Request, add: bool) {
        let i = idx as usize;
        self.index.remove_node(&self.nodes[i], idx);
        let node = &mut self.nodes[i];
        let r = req.reservation;
        if add {
            node.reserved.nano_cpus = node.reserved.nano_cpus.saturating_add(r.nano_cpus);
            node.reserved.memory_bytes = node.reserved.memory_bytes.saturating_add(r.memory_bytes);
            node.host_ports.extend(req.host_ports.iter().copied());
            node.instances += 1;
            *node.per_service.entry(req.service.clone()).or_default() += 1;
        } else {
            node.reserved.nano_cpus = node.reserved.nano_cpus.saturating_sub(r.nano_cpus);
            node.reserved.memory_bytes = node.reserved.memory_bytes.saturating_sub(r.memory_bytes);
            for p in &req.host_ports {
                node.host_ports.remove(p);
            }
            node.instances = node.instances.saturating_sub(1);
            if let Some(n) = node.per_service.get_mut(&req.service) {
                *n -= 1;
                if *n == 0 {
                    node.per_service.remove(&req.service);
                }
            }
        }
        self.index.insert_node(&self.nodes[i], idx);
        self.index.count(&req.service, idx, add);
    }

    /// Records an instance already placed on `node` (for building the view from the instances
    /// that run). Returns false when the node is unknown.
    pub fn record(&mut self, node: &str, req: &Request) -> bool {
        let Some(&idx) = self.by_id.get(node) else {
            return false;
        };
        self.apply(idx, req, true);
        true
    }

    /// Undo a placement (an instance moved away or removed) so later placements see the freed room.
    /// Does nothing when the node is unknown or runs no instance of the service.
    pub fn release(&mut self, node: &str, req: &Request) {
        let Some(&idx) = self.by_id.get(node) else {
            return;
        };
        if !self.nodes[idx as usize]
            .per_service
            .contains_key(&req.service)
        {
            return;
        }
        self.apply(idx, req, false);
    }

    /// Nodes where a global service must run: every node passing all filters (max_per_node ignored).
    pub fn eligible(&self, req: &Request) -> Vec<NodeId> {
        let parsed = filter::parse_all(req);
        self.nodes
            .iter()
            .filter(|n| filter::check(n, req, &parsed, Mode::Global).is_ok())
            .map(|n| n.id.clone())
            .collect()
    }

    /// Whether `node` still passes the filters for an instance already on it (for rebalance/drain
    /// decisions). The instance's own reservation, ports and count are not held against it.
    pub fn fits_existing(&self, node: &str, req: &Request) -> bool {
        let parsed = filter::parse_all(req);
        self.node(node)
            .is_some_and(|n| filter::check(n, req, &parsed, Mode::Existing).is_ok())
    }

    pub fn node(&self, id: &str) -> Option<&NodeView> {
        self.by_id.get(id).map(|&i| &self.nodes[i as usize])
    }

    /// All nodes, sorted by id.
    pub fn nodes(&self) -> &[NodeView] {
        &self.nodes
    }
}
