//! Cross-host container networking, the host-gateway way (flannel's `host-gw`): every (stack,
//! node) pair gets its own /24 out of the cluster's pool (`wharf server --network-pool`). The
//! node's agent creates the stack network with that subnet; every other node with the same stack
//! routes the subnet through the node's host address and lets that traffic through its firewall
//! (`wharf-agent/src/hostnet.rs`). Container addresses are then unique cluster-wide and reachable
//! from any host, with no encapsulation.
//!
//! Encryption slots in at the route: a route "via the peer's host address" becomes "via the
//! encrypted tunnel to the peer" (a WireGuard or QUIC interface per node) with the same subnets.
//! Needs: hosts that reach each other's addresses directly (one L2 segment, or routers that know
//! the pool); see ARCHITECTURE.md.
//!
//! The allocation is pure (`plan`); the deployer applies it each pass: new pairs get the lowest
//! free /24, pairs whose stack or node is gone are released. A subnet stays with its pair as
//! long as both exist, so a network never changes under running containers.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use wharf_types::{NodeNetwork, PeerSubnet, StackSubnet};

/// `/subnets/{stack}/{node}` → `SubnetRecord`.
pub const SUBNETS: &str = "/subnets/";
/// The size of one (stack, node) subnet.
pub const PREFIX_LEN: u8 = 24;
/// The default pool: 8,192 subnets, clear of Docker's default pools (172.17/16.. and 192.168/16).
pub const DEFAULT_POOL: &str = "10.96.0.0/11";

pub fn subnet_key(stack: &str, node: &str) -> String {
    format!("{SUBNETS}{stack}/{node}")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetRecord {
    pub subnet: Ipv4Net,
}

/// (stack, node) → subnet.
pub type Allocations = BTreeMap<(String, String), Ipv4Net>;

/// What to change in the allocations.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub add: Vec<((String, String), Ipv4Net)>,
    pub release: Vec<(String, String)>,
    /// Pairs that need a subnet but the pool is full.
    pub exhausted: Vec<(String, String)>,
}

/// New allocations for the `needed` pairs that have none (lowest free subnets first) and the
/// release of pairs whose stack is not in `stacks` or whose node is not in `nodes`.
pub fn plan(
    pool: Ipv4Net,
    existing: &Allocations,
    needed: &BTreeSet<(String, String)>,
    stacks: &BTreeSet<String>,
    nodes: &BTreeSet<String>,
) -> Plan {
    let mut plan = Plan::default();
    for pair in existing.keys() {
        if !stacks.contains(&pair.0) || !nodes.contains(&pair.1) {
            plan.release.push(pair.clone());
        }
    }
    let used: BTreeSet<Ipv4Net> = existing.values().copied().collect();
    let mut free = pool
        .subnets(PREFIX_LEN.max(pool.prefix_len()))
        .into_iter()
        .flatten()
        .filter(|s| !used.contains(s));
    for pair in needed {
        if existing.contains_key(pair) {
            continue;
        }
        match free.next() {
            Some(subnet) => plan.add.push((pair.clone(), subnet)),
            None => plan.exhausted.push(pair.clone()),
        }
    }
    plan
}

/// Node `node`'s share: its own subnets, and for each of its stacks the subnets of the same stack
/// on the other nodes, routed via their addresses (`addresses`: node → host address; a node
/// without one cannot be routed to and is left out).
pub fn node_network(
    node: &str,
    allocations: &Allocations,
    addresses: &BTreeMap<String, String>,
) -> NodeNetwork {
    let mine: BTreeSet<&str> = allocations
        .keys()
        .filter(|(_, n)| n == node)
        .map(|(s, _)| s.as_str())
        .collect();
    let mut out = NodeNetwork::default();
    for ((stack, n), subnet) in allocations {
        if !mine.contains(stack.as_str()) {
            continue;
        }
        if n == node {
            out.subnets.push(StackSubnet {
                stack: stack.clone(),
                subnet: subnet.to_string(),
            });
        } else if let Some(via) = addresses.get(n) {
            out.peers.push(PeerSubnet {
                stack: stack.clone(),
                subnet: subnet.to_string(),
                node: n.clone(),
                via: via.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(s: &str, n: &str) -> (String, String) {
        (s.to_string(), n.to_string())
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("cidr")
    }

    #[test]
    fn new_pairs_get_the_lowest_free_subnets_and_keep_theirs() {
        let pool = net("10.96.0.0/22");
        let existing: Allocations = [(pair("a", "n1"), net("10.96.1.0/24"))].into();
        let needed: BTreeSet<_> = [pair("a", "n1"), pair("a", "n2"), pair("b", "n1")].into();
        let p = plan(
            pool,
            &existing,
            &needed,
            &set(&["a", "b"]),
            &set(&["n1", "n2"]),
        );
        assert_eq!(
            p.add,
            [
                (pair("a", "n2"), net("10.96.0.0/24")),
                (pair("b", "n1"), net("10.96.2.0/24")),
            ]
        );
        assert!(p.release.is_empty() && p.exhausted.is_empty());
    }

    #[test]
    fn pairs_of_removed_stacks_or_nodes_are_released_and_a_full_pool_says_so() {
        let pool = net("10.96.0.0/23");
        let existing: Allocations = [
            (pair("a", "n1"), net("10.96.0.0/24")),
            (pair("gone", "n1"), net("10.96.1.0/24")),
            (pair("a", "gone"), net("10.96.2.0/24")),
        ]
        .into();
        let needed: BTreeSet<_> = [pair("a", "n1"), pair("a", "n2"), pair("b", "n2")].into();
        let p = plan(
            pool,
            &existing,
            &needed,
            &set(&["a", "b"]),
            &set(&["n1", "n2"]),
        );
        assert_eq!(p.release, [pair("a", "gone"), pair("gone", "n1")]);
        // Released subnets are reused only on a later pass, once the release is written.
        assert!(p.add.is_empty());
        assert_eq!(p.exhausted, [pair("a", "n2"), pair("b", "n2")]);
    }

    #[test]
    fn a_node_routes_the_subnets_of_its_own_stacks_on_other_nodes() {
        let allocations: Allocations = [
            (pair("a", "n1"), net("10.96.0.0/24")),
            (pair("a", "n2"), net("10.96.1.0/24")),
            (pair("a", "n3"), net("10.96.2.0/24")),
            (pair("b", "n2"), net("10.96.3.0/24")),
        ]
        .into();
        let addresses: BTreeMap<String, String> = [
            ("n1".to_string(), "192.0.2.1".to_string()),
            ("n2".to_string(), "192.0.2.2".to_string()),
        ]
        .into();
        let n1 = node_network("n1", &allocations, &addresses);
        assert_eq!(
            n1.subnets,
            [StackSubnet {
                stack: "a".into(),
                subnet: "10.96.0.0/24".into()
            }]
        );
        // n3 has no address: not routable. Stack b is not on n1: not routed.
        assert_eq!(
            n1.peers,
            [PeerSubnet {
                stack: "a".into(),
                subnet: "10.96.1.0/24".into(),
                node: "n2".into(),
                via: "192.0.2.2".into()
            }]
        );
    }
}
