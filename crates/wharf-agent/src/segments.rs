//! Segments, pure: who may open a connection to each container of this node, and where a
//! container on `internal` segments only may go (`guards`), from the node's network share and
//! the discovery records (`hostnet::plan` writes them as firewall rules).
//!
//! A stack without segments (no service names `networks:` or `allow_from`) is guarded by its
//! subnet here: only the same stack's subnets (here and on the other nodes) get in, so stacks are
//! isolated from each other across hosts as Docker keeps them apart on one. A stack with segments
//! is guarded instance by instance: a service's callers are the running instances of the
//! services it shares a segment with, and of those its `allow_from` names; its subnet then lets
//! nothing else in (an instance not reported yet included).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use wharf_types::{DiscoveryService, NodeNetwork};

/// One destination's rules.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Guard {
    /// A container (`a.b.c.d/32`) or a stack's subnet here.
    pub dest: String,
    /// Who may open connections to it (CIDRs).
    pub from: Vec<String>,
    /// Where it may open connections, when it is on `internal` segments only (CIDRs).
    pub egress: Option<Vec<String>>,
}

/// `a.b.c.d/len` as (network, mask).
fn cidr(s: &str) -> Option<(u32, u32)> {
    let (ip, len) = s.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some((u32::from(ip) & mask, mask))
}

fn within(addr: &str, net: (u32, u32)) -> bool {
    addr.parse::<Ipv4Addr>()
        .is_ok_and(|a| u32::from(a) & net.1 == net.0)
}

fn host(addr: &str) -> String {
    format!("{addr}/32")
}

/// The guards of this node's stacks, destinations one by one before whole subnets.
pub fn guards(net: &NodeNetwork, services: &[std::sync::Arc<DiscoveryService>]) -> Vec<Guard> {
    let mut out = BTreeSet::new();
    let mut subnets = BTreeSet::new();
    for local in &net.subnets {
        let Some(range) = cidr(&local.subnet) else {
            continue;
        };
        let stack: Vec<&DiscoveryService> = services
            .iter()
            .map(|s| &**s)
            .filter(|s| s.stack == local.stack)
            .collect();
        if !stack.iter().any(|s| s.segmented()) {
            let from = std::iter::once(local.subnet.clone())
                .chain(
                    net.stack_subnets
                        .iter()
                        .filter(|s| s.stack == local.stack && s.subnet != local.subnet)
                        .map(|s| s.subnet.clone()),
                )
                .collect();
            subnets.insert(Guard {
                dest: local.subnet.clone(),
                from,
                egress: None,
            });
            continue;
        }
        for t in &stack {
            let from: Vec<String> = services
                .iter()
                .filter(|c| t.reachable_from(c))
                .flat_map(|c| c.members.iter().map(|m| host(m)))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let egress = t.internal.then(|| {
                services
                    .iter()
                    .filter(|d| d.reachable_from(t))
                    .flat_map(|d| d.members.iter().map(|m| host(m)))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            });
            for m in t.members.iter().filter(|m| within(m, range)) {
                out.insert(Guard {
                    dest: host(m),
                    from: from.clone(),
                    egress: egress.clone(),
                });
            }
        }
        // Whatever else is in the subnet (an instance not reported yet) takes nothing.
        subnets.insert(Guard {
            dest: local.subnet.clone(),
            from: Vec::new(),
            egress: None,
        });
    }
    out.into_iter().chain(subnets).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use wharf_types::StackSubnet;

    fn svc(stack: &str, name: &str, segments: &[&str], members: &[&str]) -> DiscoveryService {
        DiscoveryService {
            stack: stack.into(),
            service: name.into(),
            segments: segments.iter().map(|s| s.to_string()).collect(),
            members: members.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn net(subnets: &[(&str, &str)], elsewhere: &[(&str, &str)]) -> NodeNetwork {
        let list = |l: &[(&str, &str)]| {
            l.iter()
                .map(|(stack, subnet)| StackSubnet {
                    stack: stack.to_string(),
                    subnet: subnet.to_string(),
                })
                .collect()
        };
        NodeNetwork {
            subnets: list(subnets),
            stack_subnets: list(elsewhere).into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_stack_without_segments_takes_only_its_own_subnets() {
        // The master's list has the stack's subnets on every node, this one's and other stacks'
        // included: its own is not repeated, the other stack's not let in.
        let n = net(
            &[("shop", "10.64.0.0/25")],
            &[
                ("shop", "10.64.0.0/25"),
                ("shop", "10.64.16.0/25"),
                ("blog", "10.64.16.128/25"),
            ],
        );
        let web = Arc::new(svc("shop", "web", &[], &["10.64.0.2"]));
        assert_eq!(
            guards(&n, &[web]),
            [Guard {
                dest: "10.64.0.0/25".into(),
                from: vec!["10.64.0.0/25".into(), "10.64.16.0/25".into()],
                egress: None
            }]
        );
    }

    /// The matrix of the issue: a, b on front; b, c on back; d alone on an internal network;
    /// `allow_from` lets exactly one service of another stack in.
    #[test]
    fn segments_let_in_only_who_shares_one_and_internal_ones_go_nowhere_else() {
        let n = net(&[("s", "10.64.0.0/25")], &[("s", "10.64.16.0/25")]);
        let a = svc("s", "a", &["front"], &["10.64.0.2"]);
        let b = svc("s", "b", &["front", "back"], &["10.64.16.3"]);
        let mut c = svc("s", "c", &["back"], &["10.64.0.4"]);
        c.allow_from = vec!["mon/probe".into()];
        let mut d = svc("s", "d", &["inner"], &["10.64.0.5"]);
        d.internal = true;
        let probe = svc("mon", "probe", &[], &["10.64.32.9"]);
        let other = svc("mon", "other", &[], &["10.64.32.10"]);
        let all: Vec<Arc<DiscoveryService>> = [a, b, c, d, probe, other]
            .into_iter()
            .map(Arc::new)
            .collect();
        let g = guards(&n, &all);
        let of = |dest: &str| g.iter().find(|g| g.dest == dest).cloned().unwrap();
        // a (here): from a and b only.
        assert_eq!(of("10.64.0.2/32").from, ["10.64.0.2/32", "10.64.16.3/32"]);
        // c: b, itself, and the one service of the other stack it names.
        assert_eq!(
            of("10.64.0.4/32").from,
            ["10.64.0.4/32", "10.64.16.3/32", "10.64.32.9/32"]
        );
        // d: itself only, and may go nowhere but itself.
        assert_eq!(of("10.64.0.5/32").from, ["10.64.0.5/32"]);
        assert_eq!(of("10.64.0.5/32").egress, Some(vec!["10.64.0.5/32".into()]));
        // b runs elsewhere: no guard here for it; the subnet takes nothing else, last.
        assert!(g.iter().all(|x| x.dest != "10.64.16.3/32"));
        assert_eq!(
            g.last().unwrap(),
            &Guard {
                dest: "10.64.0.0/25".into(),
                from: vec![],
                egress: None
            }
        );
    }
}
