//! Placement planning, pure: which instances must move because of their node (lost, draining),
//! which move to even out a service after nodes joined (rebalance), and the instances of global
//! services (one on every eligible node).
//!
//! Two kinds of move:
//! - **evacuate**: the node is lost (unreachable, down, removed). The instance is replaced on
//!   another node at once; when the lost node comes back, its agent no longer finds the old
//!   generation in its desired state and stops it (fencing by generation).
//! - **relocate**: the node is alive but draining, or the service is being rebalanced. Start-first:
//!   the replacement starts elsewhere while the old instance keeps serving (`previous`), and the old
//!   one stops only once the replacement is ready.

use std::collections::{BTreeMap, BTreeSet};

use wharf_types::{InstanceReport, MountKind};

use crate::model::{InstanceRecord, ServiceRecord};
use crate::rollout::{is_ready, report_of};

/// What a node means for the instances on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeFit {
    Ok,
    Draining,
    /// Unreachable, down, or no longer registered.
    Lost,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Move {
    Evacuate { slot: u32 },
    Relocate { slot: u32 },
}

/// Whether the service keeps data in local named volumes (which do not move with it).
pub fn uses_local_volumes(svc: &ServiceRecord) -> bool {
    svc.spec
        .volumes
        .iter()
        .any(|v| v.kind == MountKind::Volume && !v.source.is_empty())
}

/// Moves forced by nodes: evacuate instances of lost nodes (unless their data would be left
/// behind and the stack did not allow it), relocate instances of draining nodes `parallelism` at
/// a time (relocations in flight count).
///
/// `at_most_once` services are evacuated only once `lost_long` says their node has been lost for
/// a further node timeout: by then its agent, cut off as long, has stopped them itself, so two
/// instances of a slot never run at once.
pub fn node_moves(
    svc: &ServiceRecord,
    instances: &[InstanceRecord],
    fit: &dyn Fn(&str) -> NodeFit,
    lost_long: &dyn Fn(&str) -> bool,
) -> Vec<Move> {
    let mut moves = Vec::new();
    let may_evacuate = !uses_local_volumes(svc) || svc.spec.wharf.move_with_volumes;
    let may_evacuate_from = |node: &str| !svc.spec.wharf.at_most_once || lost_long(node);
    let parallelism = match svc.spec.deploy.update_config.parallelism {
        0 => u32::MAX,
        n => n,
    };
    let mut in_flight = instances.iter().filter(|i| i.previous.is_some()).count() as u32;
    for inst in instances.iter().filter(|i| i.slot < svc.replicas) {
        match fit(&inst.node) {
            NodeFit::Lost if may_evacuate && may_evacuate_from(&inst.node) => {
                moves.push(Move::Evacuate { slot: inst.slot })
            }
            NodeFit::Draining if inst.previous.is_none() && in_flight < parallelism => {
                in_flight += 1;
                moves.push(Move::Relocate { slot: inst.slot });
            }
            _ => {}
        }
    }
    moves
}

/// The instance to relocate to even out a service over `eligible` nodes, if it is uneven by more
/// than one instance and no relocation is in flight: the highest slot on the most loaded node.
pub fn rebalance_move(instances: &[InstanceRecord], eligible: &[String]) -> Option<u32> {
    if eligible.len() < 2 || instances.iter().any(|i| i.previous.is_some()) {
        return None;
    }
    let mut counts: BTreeMap<&str, u32> = eligible.iter().map(|n| (n.as_str(), 0)).collect();
    for i in instances {
        if let Some(c) = counts.get_mut(i.node.as_str()) {
            *c += 1;
        }
    }
    let (max_node, max) = counts
        .iter()
        .max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)))?;
    let min = counts.values().min().copied().unwrap_or(0);
    if max.saturating_sub(min) <= 1 {
        return None;
    }
    instances
        .iter()
        .filter(|i| i.node == *max_node)
        .map(|i| i.slot)
        .max()
}

/// A relocation is over once its replacement is ready, or its old node is gone.
pub fn relocation_done(
    inst: &InstanceRecord,
    reports: &BTreeMap<String, InstanceReport>,
    fit: &dyn Fn(&str) -> NodeFit,
) -> bool {
    match &inst.previous {
        Some(prev) => is_ready(report_of(inst, reports)) || fit(&prev.node) == NodeFit::Lost,
        None => false,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GlobalAction {
    CreateOn { slot: u32, node: String },
    Remove { slot: u32 },
}

/// Global services: one instance on every eligible node. Instances on nodes that are no longer
/// eligible are removed, except on lost nodes (nothing else can run them; they return with it).
pub fn plan_global(
    instances: &[InstanceRecord],
    eligible: &[String],
    fit: &dyn Fn(&str) -> NodeFit,
) -> Vec<GlobalAction> {
    let mut actions = Vec::new();
    let mut covered: BTreeSet<&str> = BTreeSet::new();
    for inst in instances {
        let keep = eligible.contains(&inst.node) || fit(&inst.node) == NodeFit::Lost;
        if keep && covered.insert(inst.node.as_str()) {
            continue;
        }
        actions.push(GlobalAction::Remove { slot: inst.slot });
    }
    let used: BTreeSet<u32> = instances.iter().map(|i| i.slot).collect();
    let mut free = (0..).filter(|s| !used.contains(s));
    for node in eligible.iter().filter(|n| !covered.contains(n.as_str())) {
        let slot = free.next().expect("slots are unbounded");
        actions.push(GlobalAction::CreateOn {
            slot,
            node: node.clone(),
        });
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Previous;
    use wharf_types::VolumeMount;

    fn svc(replicas: u32) -> ServiceRecord {
        ServiceRecord {
            replicas,
            ..crate::testdata::service("web", Default::default())
        }
    }

    fn inst(slot: u32, node: &str) -> InstanceRecord {
        InstanceRecord {
            stack: "s".into(),
            service: "web".into(),
            slot,
            node: node.into(),
            generation: slot as u64 + 1,
            spec_hash: "h".into(),
            restart_nonce: 0,
            spec: Default::default(),
            created_at: 0,
            previous: None,
            draining_since: None,
            watch: Default::default(),
            lost: Vec::new(),
        }
    }

    fn fit(node: &str) -> NodeFit {
        match node {
            "lost" => NodeFit::Lost,
            "drain" => NodeFit::Draining,
            _ => NodeFit::Ok,
        }
    }

    #[test]
    fn lost_nodes_are_evacuated_at_once() {
        let i = [inst(0, "a"), inst(1, "lost"), inst(2, "lost")];
        assert_eq!(
            node_moves(&svc(3), &i, &fit, &|_| true),
            vec![Move::Evacuate { slot: 1 }, Move::Evacuate { slot: 2 }]
        );
    }

    #[test]
    fn services_with_local_volumes_wait_for_their_node_unless_allowed() {
        let mut s = svc(1);
        std::sync::Arc::make_mut(&mut s.spec)
            .volumes
            .push(VolumeMount {
                kind: MountKind::Volume,
                source: "data".into(),
                target: "/data".into(),
                read_only: false,
                options: Default::default(),
            });
        assert_eq!(node_moves(&s, &[inst(0, "lost")], &fit, &|_| true), vec![]);
        std::sync::Arc::make_mut(&mut s.spec)
            .wharf
            .move_with_volumes = true;
        assert_eq!(
            node_moves(&s, &[inst(0, "lost")], &fit, &|_| true),
            vec![Move::Evacuate { slot: 0 }]
        );
    }

    #[test]
    fn at_most_once_waits_until_the_node_was_lost_long_enough() {
        let mut s = svc(1);
        std::sync::Arc::make_mut(&mut s.spec).wharf.at_most_once = true;
        let i = [inst(0, "lost")];
        assert_eq!(node_moves(&s, &i, &fit, &|_| false), vec![]);
        assert_eq!(
            node_moves(&s, &i, &fit, &|_| true),
            vec![Move::Evacuate { slot: 0 }]
        );
        // Other services do not wait.
        assert_eq!(
            node_moves(&svc(1), &i, &fit, &|_| false),
            vec![Move::Evacuate { slot: 0 }]
        );
    }

    #[test]
    fn draining_relocates_parallelism_at_a_time() {
        let i = [inst(0, "drain"), inst(1, "drain"), inst(2, "drain")];
        assert_eq!(
            node_moves(&svc(3), &i, &fit, &|_| true),
            vec![Move::Relocate { slot: 0 }]
        );
        // One relocation in flight (slot 0 moved, old copy still draining): wait.
        let mut moving = inst(0, "b");
        moving.previous = Some(Previous {
            node: "drain".into(),
            generation: 1,
            draining_since: None,
            spec_hash: None,
            spec: None,
        });
        assert_eq!(
            node_moves(
                &svc(3),
                &[moving, inst(1, "drain"), inst(2, "drain")],
                &fit,
                &|_| true
            ),
            vec![]
        );
    }

    #[test]
    fn rebalance_moves_from_the_most_loaded_node_when_uneven() {
        let nodes = ["a".to_string(), "b".to_string(), "c".to_string()];
        // 3 on a, 0 on b and c: move a's highest slot.
        assert_eq!(
            rebalance_move(&[inst(0, "a"), inst(1, "a"), inst(2, "a")], &nodes),
            Some(2)
        );
        // 2/1/0: a has two more than c, move one of them.
        assert_eq!(
            rebalance_move(&[inst(0, "a"), inst(1, "a"), inst(2, "b")], &nodes),
            Some(1)
        );
        // 1/1/1: balanced.
        assert_eq!(
            rebalance_move(&[inst(0, "a"), inst(1, "b"), inst(2, "c")], &nodes),
            None
        );
        // 2/1 over two nodes: within one, balanced.
        assert_eq!(
            rebalance_move(&[inst(0, "a"), inst(1, "a"), inst(2, "b")], &nodes[..2]),
            None
        );
    }

    #[test]
    fn global_runs_once_per_eligible_node() {
        let eligible = ["a".to_string(), "b".to_string(), "c".to_string()];
        // a has one, "lost" keeps its own, "gone" (not eligible, not lost) loses it; b and c get one.
        let i = [inst(0, "a"), inst(1, "lost"), inst(2, "gone")];
        assert_eq!(
            plan_global(&i, &eligible, &fit),
            vec![
                GlobalAction::Remove { slot: 2 },
                GlobalAction::CreateOn {
                    slot: 3,
                    node: "b".into()
                },
                GlobalAction::CreateOn {
                    slot: 4,
                    node: "c".into()
                },
            ]
        );
        // A duplicate on one node is removed.
        assert_eq!(
            plan_global(&[inst(0, "a"), inst(1, "a")], &eligible[..1], &fit),
            vec![GlobalAction::Remove { slot: 1 }]
        );
    }
}
