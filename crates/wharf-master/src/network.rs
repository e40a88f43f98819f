//! Cross-host container networking, the host-gateway way (flannel's `host-gw`): every node gets a
//! block of the cluster's pool (`wharf server --network-pool`, a /20 per node by default), and
//! each stack with instances on the node a subnet of that block (a /25). The node's agent creates
//! the stack network with that subnet; every other node routes the node's block through its host
//! address and lets that traffic through its firewall (`wharf-agent/src/hostnet.rs`). Container
//! addresses are then unique cluster-wide and reachable from any host, with no encapsulation, and
//! a node needs one route per peer, however many stacks there are.
//!
//! Isolation: on one host, Docker keeps stack networks apart; across hosts each node's firewall
//! lets into a stack's subnet only that stack's subnets (`NodeNetwork::stack_subnets`),
//! and Compose `networks:` narrow it to segments (`wharf-agent/src/segments.rs`). Encryption (on unless
//! `wharf server --encryption off`): each node's agent sends its WireGuard public key, and every
//! peer's block is routed through the WireGuard interface to that peer instead of via its host
//! address, with the same blocks. Needs hosts that reach each other's addresses directly (one L2
//! segment, or routers that know the pool); see ARCHITECTURE.md.
//!
//! The allocation is pure (`plan`); the deployer applies it each pass, after placement and before
//! publishing, so an instance never reaches a node before its stack's subnet there. Lowest free
//! first; a block goes with its node's record, a subnet with its stack or node. A subnet stays
//! with its pair as long as both exist, so a network never changes under running containers.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use wharf_types::{NodeNetwork, PeerBlock, StackSubnet};

/// The size of a node's block: 32 stack subnets.
pub const BLOCK_LEN: u8 = 20;
/// The size of a (stack, node) subnet: 126 containers.
pub const SUBNET_LEN: u8 = 25;
/// The default pool: 1,024 nodes, clear of Docker's default pools (172.17/16.., 192.168/16).
pub const DEFAULT_POOL: &str = "10.64.0.0/10";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub block: Ipv4Net,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetRecord {
    pub subnet: Ipv4Net,
}

/// The allocations: node → block, (stack, node) → subnet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocations {
    pub blocks: BTreeMap<String, Ipv4Net>,
    pub subnets: BTreeMap<(String, String), Ipv4Net>,
}

/// What to change in the allocations.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub add_blocks: Vec<(String, Ipv4Net)>,
    pub add_subnets: Vec<((String, String), Ipv4Net)>,
    pub release_blocks: Vec<String>,
    pub release_subnets: Vec<(String, String)>,
    /// Pairs that need a subnet but the pool (or the node's block) is full.
    pub exhausted: Vec<(String, String)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.add_blocks.is_empty()
            && self.add_subnets.is_empty()
            && self.release_blocks.is_empty()
            && self.release_subnets.is_empty()
    }
}

/// New blocks and subnets for the `needed` (stack, node) pairs that lack them (lowest free
/// first), and the release of what belongs to a stack not in `stacks` or a node not in `nodes`.
/// Released space is reused on a later pass, once the release is written. Releases are looked
/// for only when `releases` (a caller that knows the allocations, stacks and nodes unchanged
/// since a plan that found none skips the scan of every subnet: 10,000 at bench/scale's size).
pub fn plan(
    pool: Ipv4Net,
    have: &Allocations,
    needed: &BTreeSet<(String, String)>,
    stacks: &BTreeSet<String>,
    nodes: &BTreeSet<String>,
    releases: bool,
) -> Plan {
    let mut plan = Plan::default();
    if releases {
        plan.release_blocks = have
            .blocks
            .keys()
            .filter(|n| !nodes.contains(*n))
            .cloned()
            .collect();
        plan.release_subnets = have
            .subnets
            .keys()
            .filter(|(s, n)| !stacks.contains(s) || !nodes.contains(n))
            .cloned()
            .collect();
    }
    let missing: Vec<&(String, String)> = needed
        .iter()
        .filter(|pair| !have.subnets.contains_key(*pair) && nodes.contains(&pair.1))
        .collect();
    if missing.is_empty() {
        return plan;
    }
    let used_blocks: BTreeSet<Ipv4Net> = have.blocks.values().copied().collect();
    let mut free_blocks = pool
        .subnets(BLOCK_LEN.max(pool.prefix_len()))
        .into_iter()
        .flatten()
        .filter(|b| !used_blocks.contains(b));
    let mut blocks = have.blocks.clone();
    let used_subnets: BTreeSet<Ipv4Net> = have.subnets.values().copied().collect();
    let mut taken: BTreeSet<Ipv4Net> = BTreeSet::new();
    for pair in missing {
        let block = match blocks.get(&pair.1) {
            Some(b) => *b,
            None => match free_blocks.next() {
                Some(b) => {
                    plan.add_blocks.push((pair.1.clone(), b));
                    blocks.insert(pair.1.clone(), b);
                    b
                }
                None => {
                    plan.exhausted.push(pair.clone());
                    continue;
                }
            },
        };
        let free = block
            .subnets(SUBNET_LEN.max(block.prefix_len()))
            .into_iter()
            .flatten()
            .find(|s| !used_subnets.contains(s) && !taken.contains(s));
        match free {
            Some(s) => {
                taken.insert(s);
                plan.add_subnets.push((pair.clone(), s));
            }
            None => plan.exhausted.push(pair.clone()),
        }
    }
    plan
}

/// How a node is reached: its host address and its end of the encrypted tunnel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    pub address: String,
    /// Its WireGuard public key and port, once its agent sent them.
    pub public_key: Option<String>,
    pub port: u16,
    /// Its key is to be replaced once older than this (`wharf node rotate-keys`).
    pub key_epoch: u64,
}

/// The nodes' shares of one allocation state, computed once for all nodes (`bench/scale`: a
/// thousand nodes must not cost a million copies per deployer pass).
pub struct Shares {
    pool: Ipv4Net,
    /// Every routable node's block, shared by all nodes' desired states.
    peers: std::sync::Arc<Vec<PeerBlock>>,
    subnets: BTreeMap<String, Vec<StackSubnet>>,
    encryption: bool,
    epochs: BTreeMap<String, u64>,
    /// Each stack's subnets on every node, one shared list per stack.
    by_stack: BTreeMap<String, std::sync::Arc<Vec<StackSubnet>>>,
}

impl Shares {
    /// `reach`: node → how it is reached (a node without an address cannot be routed to).
    /// `previous`: the peer list of the last pass, reused when nothing changed so that comparing
    /// desired states stays cheap. `encryption`: traffic between nodes goes through WireGuard.
    pub fn new(
        pool: Ipv4Net,
        have: &Allocations,
        reach: &BTreeMap<String, Reach>,
        encryption: bool,
        previous: Option<&std::sync::Arc<Vec<PeerBlock>>>,
    ) -> Shares {
        let peers: Vec<PeerBlock> = have
            .blocks
            .iter()
            .filter_map(|(n, b)| {
                let r = reach.get(n)?;
                Some(PeerBlock {
                    node: n.clone(),
                    block: b.to_string(),
                    via: r.address.clone(),
                    public_key: if encryption {
                        r.public_key.clone()
                    } else {
                        None
                    },
                    port: if encryption { r.port } else { 0 },
                })
            })
            .collect();
        let peers = match previous {
            Some(p) if **p == peers => p.clone(),
            _ => std::sync::Arc::new(peers),
        };
        let mut subnets: BTreeMap<String, Vec<StackSubnet>> = BTreeMap::new();
        let mut by_stack: BTreeMap<String, Vec<StackSubnet>> = BTreeMap::new();
        for ((stack, node), subnet) in &have.subnets {
            let s = StackSubnet {
                stack: stack.clone(),
                subnet: subnet.to_string(),
            };
            by_stack.entry(stack.clone()).or_default().push(s.clone());
            subnets.entry(node.clone()).or_default().push(s);
        }
        let by_stack = by_stack
            .into_iter()
            .map(|(stack, list)| (stack, std::sync::Arc::new(list)))
            .collect();
        let epochs = reach
            .iter()
            .filter(|(_, r)| r.key_epoch > 0)
            .map(|(n, r)| (n.clone(), r.key_epoch))
            .collect();
        Shares {
            pool,
            peers,
            subnets,
            encryption,
            epochs,
            by_stack,
        }
    }

    pub fn peers(&self) -> &std::sync::Arc<Vec<PeerBlock>> {
        &self.peers
    }

    /// Node `node`'s share: its block, its stack subnets, the same stacks' subnets on every
    /// node and every node's block to route (its own included in both: the agent skips it).
    pub fn node(&self, node: &str, have: &Allocations) -> NodeNetwork {
        let Some(block) = have.blocks.get(node) else {
            return NodeNetwork::default();
        };
        let subnets = self.subnets.get(node).cloned().unwrap_or_default();
        // Shared lists, not copies: a stack's list is the same for all its nodes.
        let stack_subnets = wharf_types::StackSubnets(
            subnets
                .iter()
                .filter_map(|s| self.by_stack.get(&s.stack))
                .cloned()
                .collect(),
        );
        NodeNetwork {
            pool: self.pool.to_string(),
            block: block.to_string(),
            stack_subnets,
            subnets,
            peers: self.peers.clone(),
            encryption: self.encryption,
            key_epoch: self.epochs.get(node).copied().unwrap_or(0),
        }
    }
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
    fn nodes_get_blocks_and_stacks_get_subnets_of_them_lowest_first() {
        let pool = net("10.64.0.0/17");
        let have = Allocations {
            blocks: [("n1".to_string(), net("10.64.16.0/20"))].into(),
            subnets: [(pair("a", "n1"), net("10.64.16.0/25"))].into(),
        };
        let needed: BTreeSet<_> = [pair("a", "n1"), pair("a", "n2"), pair("b", "n1")].into();
        let p = plan(
            pool,
            &have,
            &needed,
            &set(&["a", "b"]),
            &set(&["n1", "n2"]),
            true,
        );
        assert_eq!(p.add_blocks, [("n2".to_string(), net("10.64.0.0/20"))]);
        assert_eq!(
            p.add_subnets,
            [
                (pair("a", "n2"), net("10.64.0.0/25")),
                (pair("b", "n1"), net("10.64.16.128/25")),
            ]
        );
        assert!(p.release_blocks.is_empty() && p.release_subnets.is_empty());
        assert!(p.exhausted.is_empty());
    }

    #[test]
    fn gone_stacks_and_nodes_are_released_and_a_full_pool_says_so() {
        // A pool of exactly one block, of 32 subnets.
        let pool = net("10.64.0.0/20");
        let mut have = Allocations {
            blocks: [
                ("n1".to_string(), net("10.64.0.0/20")),
                ("gone".to_string(), net("10.64.16.0/20")),
            ]
            .into(),
            subnets: [
                (pair("x", "gone"), net("10.64.16.0/25")),
                (pair("old", "n1"), net("10.64.0.0/25")),
            ]
            .into(),
        };
        let needed: BTreeSet<_> = [pair("a", "n1"), pair("a", "n2")].into();
        let p = plan(
            pool,
            &have,
            &needed,
            &set(&["a", "x"]),
            &set(&["n1", "n2"]),
            true,
        );
        // Told nothing it releases from changed, the plan does not look.
        let skipped = plan(
            pool,
            &have,
            &needed,
            &set(&["a", "x"]),
            &set(&["n1", "n2"]),
            false,
        );
        assert!(skipped.release_blocks.is_empty() && skipped.release_subnets.is_empty());
        assert_eq!(p.release_blocks, ["gone"]);
        assert_eq!(p.release_subnets, [pair("old", "n1"), pair("x", "gone")]);
        assert_eq!(p.add_subnets, [(pair("a", "n1"), net("10.64.0.128/25"))]);
        assert_eq!(p.exhausted, [pair("a", "n2")], "no block left for n2");
        // A full block: 32 stacks on n1 already.
        have.subnets = (0..32u32)
            .map(|i| {
                let s = Ipv4Net::new(std::net::Ipv4Addr::from(0x0A40_0000 + i * 128), 25)
                    .expect("subnet");
                (pair(&format!("s{i}"), "n1"), s)
            })
            .collect();
        let stacks: BTreeSet<String> = (0..32)
            .map(|i| format!("s{i}"))
            .chain(["a".into()])
            .collect();
        let p = plan(
            pool,
            &have,
            &[pair("a", "n1")].into(),
            &stacks,
            &set(&["n1"]),
            true,
        );
        assert_eq!(p.exhausted, [pair("a", "n1")]);
    }

    #[test]
    fn a_node_gets_its_subnets_and_every_routable_block() {
        let have = Allocations {
            blocks: [
                ("n1".to_string(), net("10.64.0.0/20")),
                ("n2".to_string(), net("10.64.16.0/20")),
                ("n3".to_string(), net("10.64.32.0/20")),
            ]
            .into(),
            subnets: [
                (pair("a", "n1"), net("10.64.0.0/25")),
                (pair("a", "n2"), net("10.64.16.0/25")),
            ]
            .into(),
        };
        let reach = |address: &str, key: Option<&str>, key_epoch: u64| Reach {
            address: address.into(),
            public_key: key.map(String::from),
            port: 51820,
            key_epoch,
        };
        let addresses: BTreeMap<String, Reach> = [
            ("n1".to_string(), reach("192.0.2.1", Some("k1"), 0)),
            ("n2".to_string(), reach("192.0.2.2", None, 3)),
        ]
        .into();
        let pool = net(DEFAULT_POOL);
        let shares = Shares::new(pool, &have, &addresses, true, None);
        let n1 = shares.node("n1", &have);
        assert_eq!(n1.block, "10.64.0.0/20");
        assert_eq!(n1.pool, "10.64.0.0/10");
        assert_eq!(
            n1.subnets,
            [StackSubnet {
                stack: "a".into(),
                subnet: "10.64.0.0/25".into()
            }]
        );
        // n3 has no address: not routable.
        let blocks: Vec<(&str, &str)> = n1
            .peers
            .iter()
            .map(|p| (p.block.as_str(), p.via.as_str()))
            .collect();
        assert_eq!(
            blocks,
            [
                ("10.64.0.0/20", "192.0.2.1"),
                ("10.64.16.0/20", "192.0.2.2")
            ]
        );
        // Each peer's key as its agent sent it (n2 has sent none yet), and the rotation asked of
        // each node in its own share only.
        let keys: Vec<Option<&str>> = n1.peers.iter().map(|p| p.public_key.as_deref()).collect();
        assert_eq!(keys, [Some("k1"), None]);
        assert!(n1.encryption);
        assert_eq!((n1.key_epoch, shares.node("n2", &have).key_epoch), (0, 3));
        assert_eq!(shares.node("n9", &have), NodeNetwork::default());
        // Nothing changed: the next pass shares the same list (cheap to compare).
        let again = Shares::new(pool, &have, &addresses, true, Some(shares.peers()));
        assert!(std::sync::Arc::ptr_eq(again.peers(), shares.peers()));
        // `--encryption off`: no keys handed out, and the agents route in the clear.
        let plain = Shares::new(pool, &have, &addresses, false, None).node("n1", &have);
        assert!(!plain.encryption && plain.peers.iter().all(|p| p.public_key.is_none()));
    }
}
