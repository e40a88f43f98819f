//! Pure placement: a snapshot of nodes in, a node for each new instance out.
//!
//! Architecture invariant: no IO, no clock, no randomness. The same snapshot and request always give
//! the same plan, so the scheduler is tested with plain data.
//!
//! Stages, in order: feasibility filters (cheapest first: node ready, then driver available), then
//! ranking (fewest instances of the same service, then fewest instances overall, then node id as a
//! stable tie-break). When nothing fits, `Unplaceable` says how many nodes each filter removed.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;

use wharf_types::DriverKind;

/// What the scheduler needs to know about a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub ready: bool,
    pub drivers: Vec<DriverKind>,
    /// Instances of any service on the node.
    pub instances: u32,
    /// Instances of the service being placed on the node.
    pub service_instances: u32,
}

/// One instance to place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub driver: DriverKind,
}

/// Why no node could take an instance: for each filter, how many nodes it removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unplaceable {
    pub nodes: usize,
    pub filtered: BTreeMap<&'static str, usize>,
}

impl fmt::Display for Unplaceable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nodes == 0 {
            return write!(f, "no nodes registered");
        }
        let parts: Vec<String> = self
            .filtered
            .iter()
            .map(|(filter, n)| format!("{filter}: {n} of {} nodes filtered", self.nodes))
            .collect();
        write!(f, "no node fits: {}", parts.join("; "))
    }
}

impl std::error::Error for Unplaceable {}

/// Choose a node for one instance of `req`.
pub fn place(nodes: &[NodeView], req: &Request) -> Result<String, Unplaceable> {
    let mut filtered: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut feasible: Vec<&NodeView> = Vec::new();
    for node in nodes {
        // Not ready: cheapest check and the most common reason, so it goes first.
        if !node.ready {
            *filtered.entry("node not ready").or_default() += 1;
            continue;
        }
        if !node.drivers.contains(&req.driver) {
            let name = match req.driver {
                DriverKind::Docker => "docker engine not reachable",
                DriverKind::Process => "driver process unavailable",
            };
            *filtered.entry(name).or_default() += 1;
            continue;
        }
        feasible.push(node);
    }
    feasible
        .into_iter()
        .min_by(|a, b| {
            (a.service_instances, a.instances, &a.id).cmp(&(
                b.service_instances,
                b.instances,
                &b.id,
            ))
        })
        .map(|n| n.id.clone())
        .ok_or(Unplaceable {
            nodes: nodes.len(),
            filtered,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(
        id: &str,
        ready: bool,
        drivers: &[DriverKind],
        instances: u32,
        service: u32,
    ) -> NodeView {
        NodeView {
            id: id.to_string(),
            ready,
            drivers: drivers.to_vec(),
            instances,
            service_instances: service,
        }
    }

    fn check(nodes: &[NodeView], driver: DriverKind, expect: Result<&str, &str>) {
        let got = place(nodes, &Request { driver });
        match (got, expect) {
            (Ok(n), Ok(e)) => assert_eq!(n, e),
            (Err(u), Err(e)) => assert_eq!(u.to_string(), e),
            (got, expect) => panic!("placement: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn placement_cases() {
        use DriverKind::*;
        // Spread: the node with fewer instances of the service wins, then fewer overall.
        check(
            &[
                node("a", true, &[Docker], 1, 1),
                node("b", true, &[Docker], 5, 0),
            ],
            Docker,
            Ok("b"),
        );
        check(
            &[
                node("a", true, &[Docker], 3, 0),
                node("b", true, &[Docker], 1, 0),
            ],
            Docker,
            Ok("b"),
        );
        // Stable tie-break on id.
        check(
            &[
                node("b", true, &[Docker], 0, 0),
                node("a", true, &[Docker], 0, 0),
            ],
            Docker,
            Ok("a"),
        );
        // Filters explain themselves.
        check(
            &[
                node("a", false, &[Docker], 0, 0),
                node("b", true, &[Process], 0, 0),
            ],
            Docker,
            Err(
                "no node fits: docker engine not reachable: 1 of 2 nodes filtered; node not ready: 1 of 2 nodes filtered",
            ),
        );
        check(&[], Process, Err("no nodes registered"));
    }
}
