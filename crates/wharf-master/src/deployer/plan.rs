//! The deployer's planner: the next step of one service from the snapshot alone (pure: the
//! clock is an input), and the scheduler view one pass places with. The committer
//! (`Deployer::commit`) writes a plan in one guarded transaction.

use std::collections::{BTreeMap, BTreeSet};

use wharf_scheduler::{NodeView, Request};
use wharf_store::Op;
use wharf_types::{
    DependsCondition, DeployMode, InstanceReport, InstanceState, NodeState, UpdateOrder,
};

use crate::drain::{self, Drops, Gate, Keep};
use crate::model::{self, InstanceRecord, Previous, ServiceRecord, encode, keys};
use crate::placement::{self, GlobalAction, Move, NodeFit};
use crate::rollout::{self, Action};

use super::snapshot::*;

/// What a pass of the deployer plans with besides the snapshot.
pub(super) struct Context {
    /// The clock (ms since the epoch): monitor windows, drain graces, how long a node is lost.
    pub(super) now: u64,
    /// How long a node is lost before its `at_most_once` instances move.
    pub(super) node_timeout_ms: u64,
    /// Moves whenever the cluster's nodes (or lost drivers) change (`Deployer::nodes_seen`).
    pub(super) nodes_epoch: u64,
}

/// What one service needs next: the instance records to write (one op per key), the service
/// record when the plan changes it (a rollback swap, a rebalance done), the generation counter
/// after the instances it hands out, and why instances could not be placed, if so.
#[derive(Debug)]
pub(super) struct ServicePlan {
    pub(super) ops: Vec<Op>,
    pub(super) service: Option<ServiceRecord>,
    pub(super) next_generation: u64,
    pub(super) unplaceable: Option<String>,
}

impl ServicePlan {
    /// Nothing to write and nothing in the way.
    pub(super) fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.service.is_none() && self.unplaceable.is_none()
    }
}

/// The next step of one service, decided from the snapshot alone: pure (the clock is
/// `ctx.now`); `sched` is the pass's scheduler view, which records what this plan places.
pub(super) fn plan_service(
    snap: &Snapshot,
    svc: &ServiceRecord,
    ctx: &Context,
    sched: &mut Sched,
) -> ServicePlan {
    let now = ctx.now;
    let mut unplaceable = None;
    let mut insts: Vec<InstanceRecord> = snap
        .of(&svc.stack, &svc.name)
        .iter()
        .map(|i| (**i).clone())
        .collect();
    let mut next = svc.clone();
    let mut ops = Vec::new();
    let mut next_gen = first_generation(snap, svc);

    let grace = drain::grace_ms(&svc.spec);
    // Placements steps of this pass take out of the desired state, by slot.
    let mut dropping: BTreeMap<u32, Drops> = BTreeMap::new();
    finish_relocations(snap, svc, &mut insts, grace, now, &mut ops, &mut dropping);

    let (mut steps, rolled, mut rollout_plan) = steps_for(snap, svc, &insts, ctx, &mut next);

    settle_rollout(
        snap,
        svc,
        &mut rollout_plan,
        &mut next,
        &mut steps,
        &mut insts,
        &mut ops,
        now,
    );

    let monitor_ms = rollout::config(svc).monitor_ms;
    let start_first = rollout::config(svc).order == UpdateOrder::StartFirst;
    let req = Request::for_service(&svc.stack, &svc.name, &svc.spec);
    let stepped: BTreeSet<u32> = steps.iter().map(Step::slot).collect();
    let mut cannot_place = false;
    for step in steps {
        let slot = step.slot();
        let old = insts.iter().find(|i| i.slot == slot);
        let Some(keep) = gate_step(
            snap,
            svc,
            &step,
            old,
            &rolled,
            start_first,
            grace,
            now,
            &mut ops,
            &mut dropping,
        ) else {
            continue;
        };
        if let Step::Remove { .. } = step {
            ops.push(Op::delete(keys::instance(&svc.stack, &svc.name, slot)));
            continue;
        }
        let Some((node, previous)) = destination(
            snap,
            svc,
            &step,
            old,
            &req,
            sched,
            &mut cannot_place,
            &mut unplaceable,
        ) else {
            continue;
        };
        let previous = match old {
            Some(i) if keep != Keep::Nothing => {
                drain::kept_previous(i, keep, &svc.spec_hash, &svc.spec)
            }
            _ => previous,
        };
        if !matches!(
            step,
            Step::Create { .. } | Step::Relocate { .. } | Step::Replace { .. }
        ) || old.is_some_and(|i| i.node == node)
        {
            // Placed without the scheduler (global, or a replacement in place): counted too.
            sched.record(&node, &req);
        }
        let rec = new_record(
            snap, svc, &step, old, node, previous, next_gen, monitor_ms, now,
        );
        next_gen += 1;
        put(
            &mut ops,
            keys::instance(&svc.stack, &svc.name, slot),
            encode(&rec),
        );
    }
    // Marks no step stands behind any more (scaled up again, the update paused): serve again.
    for inst in insts
        .iter()
        .filter(|i| !stepped.contains(&i.slot) && !dropping.contains_key(&i.slot))
    {
        if let Some(rec) = drain::unmark(inst, Drops::NONE) {
            put(
                &mut ops,
                keys::instance(&svc.stack, &svc.name, inst.slot),
                encode(&rec),
            );
        }
    }
    ServicePlan {
        ops,
        service: (next != *svc).then_some(next),
        next_generation: next_gen,
        unplaceable,
    }
}

/// The first generation this pass hands out: after the stored counter, and after every
/// generation the pass's floor (or, without one, any agent's report) knows of, so that none
/// repeats.
pub(super) fn first_generation(snap: &Snapshot, svc: &ServiceRecord) -> u64 {
    let svc_key = (svc.stack.clone(), svc.name.clone());
    let (stored_gen, _) = snap.counters.get(&svc_key).copied().unwrap_or((0, 0));
    stored_gen.max(
        snap.generation_floor
            .get(&svc_key)
            .copied()
            .unwrap_or_else(|| snap.reports.floor(&svc.stack, &svc.name)),
    )
}

/// Where a step puts the slot, and the previous placement a relocation keeps: a global slot
/// on its node, a replacement in place while its node takes new instances, else the
/// scheduler's choice. `None`: nowhere (a relocation with nowhere better to go, or nothing
/// fits: then none of the service's other placements this pass either, and `unplaceable`
/// says why).
#[allow(clippy::too_many_arguments)]
fn destination(
    snap: &Snapshot,
    svc: &ServiceRecord,
    step: &Step,
    old: Option<&InstanceRecord>,
    req: &Request,
    sched: &mut Sched,
    cannot_place: &mut bool,
    unplaceable: &mut Option<String>,
) -> Option<(String, Option<Previous>)> {
    let slot = step.slot();
    Some(match step {
        Step::Remove { .. } => return None,
        Step::CreateOn { node, .. } => (node.clone(), None),
        // A replacement stays where the slot is, if that node still takes new instances.
        Step::Replace { .. } if old.is_some_and(|i| node_usable(snap, &i.node, svc)) => {
            (old.map(|i| i.node.clone()).unwrap_or_default(), None)
        }
        // Nowhere to go for one instance of the service: none of its others this pass.
        Step::Create { .. } | Step::Replace { .. } | Step::Relocate { .. } if *cannot_place => {
            return None;
        }
        Step::Create { .. } | Step::Replace { .. } | Step::Relocate { .. } => {
            match sched.place(snap, req) {
                Ok(n)
                    if matches!(step, Step::Relocate { .. })
                        && old.is_some_and(|i| i.node == n) =>
                {
                    sched.release(&n, req);
                    return None; // nowhere better to go
                }
                Ok(n) => {
                    let previous = match (step, old) {
                        (Step::Relocate { .. }, Some(i)) => Some(Previous {
                            node: i.node.clone(),
                            generation: i.generation,
                            draining_since: None,
                            spec_hash: None,
                            spec: None,
                        }),
                        _ => None,
                    };
                    (n, previous)
                }
                Err(reason) => {
                    *cannot_place = true;
                    tracing::warn!(service = %svc.name, stack = %svc.stack, %reason, "cannot place instance");
                    *unplaceable = Some(format!(
                        "cannot place instance {}.{}.{slot}: {reason}",
                        svc.stack, svc.name
                    ));
                    return None;
                }
            }
        }
    })
}

/// Relocations whose replacement is ready (or whose old node is gone) are over: their previous
/// placement is dropped (once it drained), so its agent stops the old instance.
fn finish_relocations(
    snap: &Snapshot,
    svc: &ServiceRecord,
    insts: &mut [InstanceRecord],
    grace: u64,
    now: u64,
    ops: &mut Vec<Op>,
    dropping: &mut BTreeMap<u32, Drops>,
) {
    let fit = |node: &str| fit_for(snap, node, svc.spec.driver);
    for inst in insts.iter_mut() {
        if placement::relocation_done(inst, snap.newest(), &fit) {
            dropping.insert(inst.slot, Drops::PREVIOUS);
            match drain_gate(snap, inst, Drops::PREVIOUS, grace, now) {
                Gate::Go => inst.previous = None,
                Gate::Mark(rec) => *inst = *rec,
                Gate::Wait { .. } => continue,
            }
            put(
                ops,
                keys::instance(&svc.stack, &svc.name, inst.slot),
                encode(&*inst),
            );
        }
    }
}

/// The steps a service needs, slot by slot (global: a slot per eligible node; replicated: node
/// moves first, then the rollout's creates, replacements and removals, then a rebalance move),
/// the slots the rollout replaces (monitored, unlike node moves), and the rollout's plan.
/// Clears `next.rebalance` when a requested rebalance has nothing left to move.
fn steps_for(
    snap: &Snapshot,
    svc: &ServiceRecord,
    insts: &[InstanceRecord],
    ctx: &Context,
    next: &mut ServiceRecord,
) -> (Vec<Step>, BTreeSet<u32>, rollout::Plan) {
    let now = ctx.now;
    let fit = |node: &str| fit_for(snap, node, svc.spec.driver);
    let mut steps: Vec<Step> = Vec::new();
    // Slots the rollout replaces (monitored), as opposed to node moves.
    let mut rolled: BTreeSet<u32> = BTreeSet::new();
    let global = svc.spec.deploy.mode == DeployMode::Global;
    let plan = if global {
        let eligible = eligible_nodes(snap, svc);
        for a in placement::plan_global(insts, &eligible, &fit) {
            steps.push(match a {
                GlobalAction::CreateOn { slot, node } => Step::CreateOn { slot, node },
                GlobalAction::Remove { slot } => Step::Remove { slot },
            });
        }
        // Rolling replacement only: every slot that exists is wanted.
        let mut as_replicated = svc.clone();
        as_replicated.replicas = insts.iter().map(|i| i.slot + 1).max().unwrap_or(0);
        let p = rollout::plan(&as_replicated, insts, snap.newest(), false, now);
        for a in &p.actions {
            if let Action::Replace { slot } = a {
                steps.push(Step::Replace { slot: *slot });
                rolled.insert(*slot);
            }
        }
        p
    } else {
        let timeout_ms = ctx.node_timeout_ms;
        let lost_long = |node: &str| match snap.nodes.binary_search_by(|n| n.id.as_str().cmp(node))
        {
            Ok(i) => now.saturating_sub(snap.nodes[i].since) >= timeout_ms,
            Err(_) => true, // removed
        };
        for m in placement::node_moves(svc, insts, &fit, &lost_long) {
            steps.push(match m {
                Move::Evacuate { slot } => Step::Replace { slot },
                Move::Relocate { slot } => Step::Relocate { slot },
            });
        }
        let moving: Vec<u32> = steps.iter().map(Step::slot).collect();
        let p = rollout::plan(svc, insts, snap.newest(), deps_ready(snap, svc), now);
        for a in &p.actions {
            let step = match *a {
                Action::Create { slot } => Step::Create { slot },
                Action::Replace { slot } => Step::Replace { slot },
                Action::Remove { slot } => Step::Remove { slot },
            };
            if !moving.contains(&step.slot()) {
                if let Step::Replace { slot } = step {
                    rolled.insert(slot);
                }
                steps.push(step);
            }
        }
        if (svc.rebalance || svc.spec.wharf.auto_rebalance) && steps.is_empty() {
            match placement::rebalance_move(insts, &eligible_nodes(snap, svc)) {
                Some(slot) => steps.push(Step::Relocate { slot }),
                None if svc.rebalance && insts.iter().all(|i| i.previous.is_none()) => {
                    next.rebalance = false; // even: the request is done
                }
                None => {}
            }
        }
        p
    };
    (steps, rolled, plan)
}

/// What the rollout decided besides steps: failures beyond the tolerance with `failure_action:
/// rollback` swap the service back to its previous spec (one transaction, so a restart of the
/// master continues the rollback) and nothing else happens this pass; watches that moved on
/// (ready, done, failed) are written for the slots this pass does not rewrite.
#[allow(clippy::too_many_arguments)]
fn settle_rollout(
    snap: &Snapshot,
    svc: &ServiceRecord,
    rollout_plan: &mut rollout::Plan,
    next: &mut ServiceRecord,
    steps: &mut Vec<Step>,
    insts: &mut [InstanceRecord],
    ops: &mut Vec<Op>,
    now: u64,
) {
    // Failures beyond the tolerance with `failure_action: rollback`: swap back to the previous
    // spec (one transaction, so a restart of the master continues the rollback), nothing else.
    if let Some(reason) = rollout_plan.rollback.take() {
        let deployment = snap
            .stacks
            .iter()
            .find(|s| s.name == svc.stack)
            .and_then(|s| s.last_deployment.clone());
        if let Some(rb) = rollout::roll_back(next, true, Some(reason.clone()), deployment, now) {
            tracing::warn!(service = %svc.name, stack = %svc.stack, %reason, "update failed; rolling back");
            *next = rb;
            steps.clear();
        }
    }
    // Watches that moved on (ready, done, failed), for slots this pass does not rewrite.
    for (slot, watch) in std::mem::take(&mut rollout_plan.marks) {
        if steps.iter().any(|s| s.slot() == slot) {
            continue;
        }
        if let Some(inst) = insts.iter_mut().find(|i| i.slot == slot) {
            inst.watch = watch;
            let key = keys::instance(&svc.stack, &svc.name, slot);
            // One put per key: the record may be rewritten above already (relocation over).
            ops.retain(|op| !matches!(op, Op::Put { key: k, .. } if *k == key));
            ops.push(Op::put(key, encode(&*inst)));
        }
    }
}

/// Whether a step may go ahead this pass, and what it keeps of the old instance: what it takes
/// out of the desired state drains first (`drain::gate`); a start-first rolling replacement
/// keeps the old generation assigned while the new one starts. `None`: not yet (the drain mark
/// is written, or the grace runs).
#[allow(clippy::too_many_arguments)]
fn gate_step(
    snap: &Snapshot,
    svc: &ServiceRecord,
    step: &Step,
    old: Option<&InstanceRecord>,
    rolled: &BTreeSet<u32>,
    start_first: bool,
    grace: u64,
    now: u64,
    ops: &mut Vec<Op>,
    dropping: &mut BTreeMap<u32, Drops>,
) -> Option<Keep> {
    let slot = step.slot();
    // A start-first rolling replacement keeps the old generation assigned (as the
    // previous placement, even on the same node) while it runs, so it can drain once the
    // new one is ready; the agent runs both because both are assigned.
    let keep = match (step, old) {
        (Step::Replace { .. }, Some(i)) if start_first && rolled.contains(&slot) => {
            drain::start_first_keeps(i, &|node, g| serving(snap, i, node, g))
        }
        _ => Keep::Nothing,
    };
    // What the step takes out of the desired state drains first.
    let drops = match (step, old) {
        (Step::Remove { .. }, Some(_)) => Drops::ALL,
        (Step::Replace { .. }, Some(_)) => keep.drops(),
        _ => Drops::NONE,
    };
    if let Some(i) = old
        && drops != Drops::NONE
    {
        dropping.insert(slot, drops);
        match drain_gate(snap, i, drops, grace, now) {
            Gate::Go => {}
            Gate::Mark(rec) => {
                put(
                    ops,
                    keys::instance(&svc.stack, &svc.name, slot),
                    encode(&rec),
                );
                return None;
            }
            Gate::Wait { .. } => return None,
        }
    }
    Some(keep)
}

/// The record a step writes: the slot at `node` with the next generation; a relocation moves the
/// instance as it is, everything else brings it to the current spec and is watched through the
/// monitor window. Lost placements it replaces are kept for fencing.
#[allow(clippy::too_many_arguments)]
fn new_record(
    snap: &Snapshot,
    svc: &ServiceRecord,
    step: &Step,
    old: Option<&InstanceRecord>,
    node: String,
    previous: Option<Previous>,
    generation: u64,
    monitor_ms: u64,
    now: u64,
) -> InstanceRecord {
    let slot = step.slot();
    // A relocation moves the instance as it is; everything else brings it to the current spec.
    let (spec_hash, restart_nonce, spec) = match (step, old) {
        (Step::Relocate { .. }, Some(i)) => (i.spec_hash.clone(), i.restart_nonce, i.spec.clone()),
        _ => (svc.spec_hash.clone(), svc.restart_nonce, svc.spec.clone()),
    };
    // The placements this one replaces because their node is lost, for fencing.
    let mut lost = old.map(|i| i.lost.clone()).unwrap_or_default();
    if let Some(i) = old {
        let gone = [(i.node.as_str(), i.generation)]
            .into_iter()
            .chain(i.previous.as_ref().map(|p| (p.node.as_str(), p.generation)));
        for (n, generation) in gone {
            if fit_for(snap, n, svc.spec.driver) == NodeFit::Lost && n != node {
                lost.push(model::Placement {
                    node: n.to_string(),
                    generation,
                });
            }
        }
        let over = lost.len().saturating_sub(model::MAX_LOST);
        lost.drain(..over);
    }
    InstanceRecord {
        stack: svc.stack.clone(),
        service: svc.name.clone(),
        slot,
        node,
        generation,
        spec_hash,
        restart_nonce,
        spec,
        created_at: now,
        previous,
        draining_since: None,
        // Every instance that brings a slot to the current spec (created, replaced,
        // evacuated) is watched through the monitor window, first deploys included; a
        // relocation moves an instance that already proved itself.
        watch: model::Watch {
            monitor_ms: if matches!(step, Step::Relocate { .. }) {
                0
            } else {
                monitor_ms
            },
            ..Default::default()
        },
        lost,
    }
}

/// Put `value` at `key`, replacing what this pass queued for the key already: one op per key.
pub(super) fn put(ops: &mut Vec<Op>, key: String, value: Vec<u8>) {
    ops.retain(|op| !matches!(op, Op::Put { key: k, .. } if *k == key));
    ops.push(Op::put(key, value));
}

/// `drain::gate` for `inst`: a placement serves when its generation is reported ready on a node
/// that is not lost.
pub(super) fn drain_gate(
    snap: &Snapshot,
    inst: &InstanceRecord,
    drops: Drops,
    grace: u64,
    now: u64,
) -> Gate {
    drain::gate(inst, drops, &|n, g| serving(snap, inst, n, g), grace, now)
}

/// Whether a placement of `inst` (node, generation) may be serving requests: reported ready on a
/// node that is not lost.
pub(super) fn serving(snap: &Snapshot, inst: &InstanceRecord, node: &str, generation: u64) -> bool {
    node_fit(snap, node) != NodeFit::Lost
        && rollout::is_ready(snap.reports.of_generation(&inst.id(), generation))
}

/// The op that removes an instance whose service or stack is gone: a mark while it drains, the
/// delete once drained, nothing while it waits. Its own spec says how long it drains.
pub(super) fn remove_drained(snap: &Snapshot, inst: &InstanceRecord, now: u64) -> Option<Op> {
    let key = keys::instance(&inst.stack, &inst.service, inst.slot);
    match drain_gate(snap, inst, Drops::ALL, drain::grace_ms(&inst.spec), now) {
        Gate::Go => Some(Op::delete(key)),
        Gate::Mark(rec) => Some(Op::put(key, encode(&*rec))),
        Gate::Wait { .. } => None,
    }
}

/// One step of a service's reconciliation, whatever planner asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    Create { slot: u32 },
    CreateOn { slot: u32, node: String },
    Replace { slot: u32 },
    Relocate { slot: u32 },
    Remove { slot: u32 },
}

impl Step {
    pub(super) fn slot(&self) -> u32 {
        match self {
            Step::Create { slot }
            | Step::CreateOn { slot, .. }
            | Step::Replace { slot }
            | Step::Relocate { slot }
            | Step::Remove { slot } => *slot,
        }
    }
}

/// The scheduler's view of the cluster during one pass: built from the snapshot on the first
/// placement (nodes, and every instance that runs, so reservations, ports and counts hold), then
/// kept current with what the pass places. Placements recorded before it is built wait in
/// `pending`.
#[derive(Default)]
pub(super) struct Sched {
    cluster: Option<wharf_scheduler::Cluster>,
    pending: Vec<(String, Request)>,
}

impl Sched {
    pub(super) fn cluster(&mut self, snap: &Snapshot) -> &mut wharf_scheduler::Cluster {
        let pending = &mut self.pending;
        self.cluster.get_or_insert_with(|| {
            let mut c = scheduler_view(snap);
            for (node, req) in pending.drain(..) {
                c.record(&node, &req);
            }
            c
        })
    }

    pub(super) fn place(
        &mut self,
        snap: &Snapshot,
        req: &Request,
    ) -> Result<String, wharf_scheduler::Unplaceable> {
        self.cluster(snap).place(req)
    }

    pub(super) fn record(&mut self, node: &str, req: &Request) {
        match &mut self.cluster {
            Some(c) => {
                c.record(node, req);
            }
            None => self.pending.push((node.to_string(), req.clone())),
        }
    }

    pub(super) fn release(&mut self, node: &str, req: &Request) {
        if let Some(c) = &mut self.cluster {
            c.release(node, req);
        }
    }
}

pub(super) fn scheduler_view(snap: &Snapshot) -> wharf_scheduler::Cluster {
    let views: Vec<NodeView> = snap
        .nodes
        .iter()
        .map(|n| NodeView {
            id: n.id.clone(),
            hostname: n.facts.name.clone(),
            role: "worker".to_string(),
            labels: n.labels.clone(),
            ready: matches!(n.state, NodeState::Ready | NodeState::Draining),
            // Draining is the `drain` flag; the record's state never says so.
            schedulable: !n.drain,
            // A driver down past the engine timeout takes no new instances.
            drivers: n
                .facts
                .drivers
                .iter()
                .copied()
                .filter(|d| !snap.drivers_lost.contains(&(n.id.clone(), *d)))
                .collect(),
            capacity: wharf_scheduler::Resources {
                nano_cpus: u64::from(n.facts.cpus) * 1_000_000_000,
                memory_bytes: n.facts.memory_bytes,
            },
            reserved: Default::default(),
            host_ports: Default::default(),
            instances: 0,
            // 0 in the facts (an agent that does not say) is the default capacity, never unlimited.
            max_instances: n.facts.instance_capacity(),
            per_service: Default::default(),
        })
        .collect();
    let mut cluster = wharf_scheduler::Cluster::new(views);
    // What already runs, then what this pass placed so far, so reservations, ports and counts hold.
    for i in snap.instances.iter() {
        cluster.record(
            &i.node,
            &Request::for_service(&i.stack, &i.service, &i.spec),
        );
    }
    cluster
}

/// Whether the `depends_on` conditions of a service hold, so its instances may be created.
pub(super) fn deps_ready(snap: &Snapshot, svc: &ServiceRecord) -> bool {
    svc.spec.depends_on.iter().all(|(dep, cond)| {
        let Some((dep_svc, _)) = snap.services.get(&(svc.stack.clone(), dep.clone())) else {
            return true; // not part of this stack: nothing to wait for
        };
        let insts: Vec<&InstanceRecord> = snap.of(&svc.stack, dep).iter().map(|i| &**i).collect();
        let reps: Vec<Option<&InstanceReport>> = insts
            .iter()
            .map(|i| rollout::report_of(i, snap.newest()))
            .collect();
        match cond.condition {
            DependsCondition::ServiceStarted => reps
                .iter()
                .any(|r| r.is_some_and(|r| r.state == InstanceState::Running)),
            DependsCondition::ServiceHealthy => {
                insts.len() as u32 >= dep_svc.replicas && reps.iter().all(|r| rollout::is_ready(*r))
            }
            DependsCondition::ServiceCompletedSuccessfully => reps.iter().any(|r| {
                r.is_some_and(|r| r.state == InstanceState::Exited && r.exit_code == Some(0))
            }),
        }
    })
}

#[cfg(test)]
pub(super) mod tests {
    //! The planner on hand-made snapshots with an injected clock: no store, no agents, no time
    //! passing. Each case is a cluster as the deployer would read it and what one plan must do.

    use super::*;
    use crate::reports::ReportIndex;
    use crate::testdata;
    use std::sync::Arc;
    use wharf_types::{
        DriverKind, FailureAction, Health, InstanceState, NodeFacts, NodeReport, ServiceSpec,
    };

    const TIMEOUT_MS: u64 = 1_000;

    /// Service `s.web`, 3 replicas at spec hash `hash`: parallelism 1, start-first, a 5 s
    /// monitor window, no drain grace.
    fn web(hash: &str) -> ServiceRecord {
        let mut spec = ServiceSpec::default();
        spec.deploy.update_config.parallelism = 1;
        spec.deploy.update_config.order = UpdateOrder::StartFirst;
        spec.deploy.update_config.monitor_ms = 5_000;
        spec.deploy.update_config.failure_action = FailureAction::Pause;
        spec.wharf.drain_grace_ms = Some(0);
        let mut s = testdata::service("web", spec);
        s.spec_hash = hash.into();
        s.replicas = 3;
        s
    }

    pub(in crate::deployer) fn node(id: &str, state: NodeState, since: u64) -> model::NodeRecord {
        model::NodeRecord {
            id: id.into(),
            facts: NodeFacts {
                name: id.into(),
                drivers: vec![DriverKind::Docker],
                docker_version: None,
                cpus: 2,
                memory_bytes: 1 << 30,
                os: "linux".into(),
                storage_driver: None,
                kernel: String::new(),
                max_instances: 0,
            },
            labels: Default::default(),
            state,
            since,
            drain: false,
            address: None,
            tunnel: None,
            key_epoch: 0,
        }
    }

    /// Slot `slot` of `s.web` at `generation` and spec hash `hash` on `node`.
    fn inst(slot: u32, generation: u64, hash: &str, node: &str) -> InstanceRecord {
        let mut i = testdata::instance("web", slot, generation, None);
        i.spec_hash = hash.into();
        i.node = node.into();
        i
    }

    fn running(id: &str, generation: u64) -> wharf_types::InstanceReport {
        testdata::report(id, generation, InstanceState::Running, Health::None)
    }

    /// Slots 0-2 of spec `hash`, generations 1-3, on n1-n3.
    fn three(hash: &str) -> Vec<InstanceRecord> {
        vec![
            inst(0, 1, hash, "n1"),
            inst(1, 2, hash, "n2"),
            inst(2, 3, hash, "n3"),
        ]
    }

    /// What the nodes report of `three`: each instance running.
    fn three_running() -> Vec<(&'static str, Vec<wharf_types::InstanceReport>)> {
        vec![
            ("n1", vec![running("s.web.0", 1)]),
            ("n2", vec![running("s.web.1", 2)]),
            ("n3", vec![running("s.web.2", 3)]),
        ]
    }

    /// The snapshot a pass would read: one service, its instances, the nodes' reports.
    pub(in crate::deployer) fn snapshot(
        svc: &ServiceRecord,
        instances: Vec<InstanceRecord>,
        nodes: Vec<model::NodeRecord>,
        reports: Vec<(&str, Vec<wharf_types::InstanceReport>)>,
    ) -> Snapshot {
        let reports: Vec<(String, Arc<NodeReport>)> = reports
            .into_iter()
            .map(|(n, list)| {
                let rep = NodeReport {
                    instances: list,
                    ..Default::default()
                };
                (n.to_string(), Arc::new(rep))
            })
            .collect();
        let mut index = ReportIndex::default();
        index.update(reports.iter().map(|(n, r)| (n.as_str(), r)), |n| {
            fit_of(&nodes, n) != NodeFit::Lost
        });
        let instances: Vec<Arc<InstanceRecord>> = instances.into_iter().map(Arc::new).collect();
        let key = (svc.stack.clone(), svc.name.clone());
        let floor = instances
            .iter()
            .map(|i| i.generation + 1)
            .max()
            .unwrap_or(1)
            .max(index.floor(&svc.stack, &svc.name));
        Snapshot {
            stacks: Vec::new(),
            services: Arc::new([(key.clone(), (Arc::new(svc.clone()), 1))].into()),
            of_service: Arc::new([(key.clone(), instances.clone())].into()),
            instances: Arc::new(instances),
            reports: Arc::new(index),
            nodes: Arc::new(nodes),
            by_node: Default::default(),
            subnets: Default::default(),
            counters: Default::default(),
            generation_floor: [(key, floor)].into(),
            revision: 1,
            drivers_lost: Default::default(),
            jobs: Default::default(),
            job_requests: Default::default(),
            reporting: ["n1", "n2", "n3"].map(String::from).into(),
        }
    }

    fn plan_at(snap: &Snapshot, svc: &ServiceRecord, now: u64) -> ServicePlan {
        let ctx = Context {
            now,
            node_timeout_ms: TIMEOUT_MS,
            nodes_epoch: 0,
        };
        plan_service(snap, svc, &ctx, &mut Sched::default())
    }

    /// The instance records a plan writes, by slot.
    fn written(plan: &ServicePlan) -> BTreeMap<u32, InstanceRecord> {
        plan.ops
            .iter()
            .filter_map(|op| match op {
                Op::Put { key, value, .. } if key.starts_with(keys::INSTANCES) => {
                    let i: InstanceRecord = model::decode(key, value).expect("a record");
                    Some((i.slot, i))
                }
                _ => None,
            })
            .collect()
    }

    fn ready_nodes() -> Vec<model::NodeRecord> {
        ["n1", "n2", "n3"]
            .iter()
            .map(|n| node(n, NodeState::Ready, 0))
            .collect()
    }

    #[test]
    fn an_update_replaces_one_slot_at_a_time_and_keeps_the_old_one_until_the_new_is_ready() {
        let svc = web("new");
        let insts = three("old");
        let reports = three_running();
        let snap = snapshot(&svc, insts, ready_nodes(), reports);
        let plan = plan_at(&snap, &svc, 10_000);
        let w = written(&plan);
        assert_eq!(
            w.keys().copied().collect::<Vec<_>>(),
            [0],
            "one slot: parallelism 1"
        );
        let slot0 = &w[&0];
        assert_eq!((slot0.generation, slot0.spec_hash.as_str()), (4, "new"));
        assert_eq!(
            slot0.node, "n1",
            "a replacement stays on its node while it fits"
        );
        let prev = slot0
            .previous
            .as_ref()
            .expect("start-first keeps the old generation");
        assert_eq!((prev.node.as_str(), prev.generation), ("n1", 1));
        assert_eq!(slot0.watch.monitor_ms, 5_000);
        assert_eq!(plan.next_generation, 5);
        assert!(plan.unplaceable.is_none() && plan.service.is_none());
    }

    #[test]
    fn the_next_batch_starts_when_the_new_instance_is_ready_not_after_its_monitor_window() {
        let svc = web("new");
        let mut slot0 = inst(0, 4, "new", "n1");
        slot0.created_at = 10_000;
        slot0.watch.monitor_ms = 5_000;
        slot0.previous = Some(Previous {
            node: "n1".into(),
            generation: 1,
            draining_since: None,
            spec_hash: Some("old".into()),
            spec: None,
        });
        let insts = vec![slot0, inst(1, 2, "old", "n2"), inst(2, 3, "old", "n3")];
        let reports = vec![
            ("n1", vec![running("s.web.0", 1), running("s.web.0", 4)]),
            ("n2", vec![running("s.web.1", 2)]),
            ("n3", vec![running("s.web.2", 3)]),
        ];
        let snap = snapshot(&svc, insts, ready_nodes(), reports);
        // 600 ms after the start, well inside slot 0's 5 s window.
        let plan = plan_at(&snap, &svc, 10_600);
        let w = written(&plan);
        assert_eq!(w.keys().copied().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(w[&0].watch.ready_at, Some(10_600), "slot 0 is ready now");
        assert!(
            w[&0].previous.is_none(),
            "its old generation is let go (no drain grace)"
        );
        assert_eq!((w[&1].generation, w[&1].spec_hash.as_str()), (5, "new"));
    }

    #[test]
    fn an_instance_on_a_lost_node_is_replaced_elsewhere_and_the_lost_placement_remembered() {
        let svc = web("h");
        let insts = three("h");
        let mut nodes = ready_nodes();
        nodes[1] = node("n2", NodeState::Unreachable, 9_000);
        let reports = three_running();
        let snap = snapshot(&svc, insts, nodes, reports);
        let plan = plan_at(&snap, &svc, 10_000);
        let w = written(&plan);
        for slot in [0, 2] {
            // Written only for their watch marks: same node, same generation.
            if let Some(i) = w.get(&slot) {
                assert_eq!(i.generation, slot as u64 + 1, "slot {slot} is not replaced");
            }
        }
        assert_ne!(w[&1].node, "n2", "not on the lost node");
        assert_eq!(w[&1].generation, 4);
        let lost: Vec<(&str, u64)> = w[&1]
            .lost
            .iter()
            .map(|l| (l.node.as_str(), l.generation))
            .collect();
        assert_eq!(lost, [("n2", 2)], "kept for fencing when n2 comes back");
    }

    #[test]
    fn with_nowhere_to_go_the_plan_says_why_and_writes_nothing() {
        let svc = web("h");
        let nodes = vec![node("n1", NodeState::Unreachable, 0)];
        let snap = snapshot(&svc, Vec::new(), nodes, Vec::new());
        let plan = plan_at(&snap, &svc, 10_000);
        assert!(plan.ops.is_empty(), "{:?}", plan.ops);
        let why = plan.unplaceable.expect("a reason");
        assert!(why.starts_with("cannot place instance s.web.0: "), "{why}");
    }

    #[test]
    fn a_settled_service_plans_nothing() {
        let svc = web("h");
        let mut insts = three("h");
        for i in &mut insts {
            i.watch.monitor_ms = 5_000;
            i.watch.ready_at = Some(1_000);
            i.watch.done_at = Some(6_000);
        }
        let reports = three_running();
        let snap = snapshot(&svc, insts, ready_nodes(), reports);
        let plan = plan_at(&snap, &svc, 10_000);
        assert!(plan.ops.is_empty() && plan.service.is_none(), "{plan:?}");
    }
}
