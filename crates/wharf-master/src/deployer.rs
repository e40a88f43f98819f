//! The deployer: the controller that makes placed instances match the services in the store, drives
//! rollouts one step at a time (`rollout::plan`), removes stacks, and keeps deployment records up to
//! date. Level-triggered: each pass reads everything it needs (from the master's store cache) and
//! acts on the difference, on every store change or nudge, else every half second (every 5 s when
//! the cluster is quiet), so it resumes after any crash.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use wharf_scheduler::{NodeView, Request};
use wharf_store::{Compare, Op, Txn};
use wharf_types::{
    DependsCondition, DeployMode, Deployment, DeploymentState, InstanceReport, InstanceState,
    NodeDesired, NodeState, ServiceProgress, StackPurge, UpdateOrder,
};

use crate::drain::{self, Drops, Gate, Keep};
use crate::model::{
    self, InstanceRecord, Previous, Removal, ServiceRecord, StackRecord, encode, keys,
};
use crate::mutate::Actor;
use crate::network;
use crate::placement::{self, GlobalAction, Move, NodeFit};
use crate::reports::ReportIndex;
use crate::rollout::{self, Action};
use crate::{Error, Master, now_ms};

pub struct Deployer {
    m: Master,
    /// Why instances of a service could not be placed at the last try, by (stack, service).
    /// Observed state, not desired state: recomputed on every pass, so it lives in memory.
    /// With when (master clock) the service first could not be placed, in a row of passes.
    unplaceable: std::sync::Mutex<BTreeMap<(String, String), (String, u64)>>,
    /// (stack, node) pairs already warned about for a full network pool.
    exhausted: std::sync::Mutex<BTreeSet<(String, String)>>,
    /// The peer list of the last publish, shared again while it stays the same.
    peers: std::sync::Mutex<Option<std::sync::Arc<Vec<wharf_types::PeerBlock>>>>,
    /// The cluster's identity, read (or made) on the first pass.
    cluster: tokio::sync::OnceCell<String>,
    /// What agents report, kept from pass to pass (`reports.rs`).
    reports: std::sync::Mutex<Arc<ReportIndex>>,
    /// What each connected node's desired state was made of at the last publish.
    made: std::sync::Mutex<BTreeMap<String, Made>>,
    /// When the last pass published desired states (see `PUBLISH_EVERY`).
    published: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often a quiet cluster is looked at without a change (a level-triggered resync).
const QUIET_RESYNC: Duration = Duration::from_secs(5);

/// The longest agents wait for a new desired state while every pass writes (a pass that wrote
/// leaves publishing to the next one, which reads its writes).
const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// What a pass did.
pub struct Pass {
    /// It wrote to the store.
    pub wrote: bool,
    /// Nothing in the cluster waits on time: no deployment in progress, no instance being
    /// watched, drained or relocated, nothing unplaceable, no stack being removed, no driver down.
    pub quiet: bool,
}

/// Everything one pass looks at, read once at its start.
struct Snapshot {
    stacks: Vec<StackRecord>,
    services: BTreeMap<(String, String), (ServiceRecord, u64)>,
    /// Every instance record, shared with the store's cache (never copied per pass).
    instances: Vec<Arc<InstanceRecord>>,
    /// The instances of each service, in slot order.
    of_service: BTreeMap<(String, String), Vec<Arc<InstanceRecord>>>,
    /// What the agents report (kept from pass to pass: `reports.rs`).
    reports: Arc<ReportIndex>,
    nodes: Vec<model::NodeRecord>,
    /// The node blocks and (stack, node) subnets of cross-host networking (`network.rs`).
    subnets: network::Allocations,
    /// The stored next generation of each service, and the record's revision (0: none yet).
    counters: BTreeMap<(String, String), (u64, u64)>,
    /// The lowest generation each service may hand out next: above every generation an instance
    /// record, a previous placement or any report (lost nodes included) knows of.
    generation_floor: BTreeMap<(String, String), u64>,
    /// The store revision the snapshot was read at (at least).
    revision: u64,
    /// (node, driver) pairs reported down for longer than the engine timeout: that driver's
    /// instances on the node count as lost, and it takes no new ones.
    drivers_lost: BTreeSet<(String, wharf_types::DriverKind)>,
}

impl Snapshot {
    /// The newest generation reported per instance id (on nodes not lost).
    fn newest(&self) -> &BTreeMap<String, InstanceReport> {
        self.reports.newest()
    }

    /// The instances of services that are gone (removed from their stack file), by service:
    /// one lookup per service, not per instance.
    fn orphans(&self) -> impl Iterator<Item = &Arc<InstanceRecord>> {
        self.of_service
            .iter()
            .filter(|(key, _)| !self.services.contains_key(*key))
            .flat_map(|(_, list)| list)
    }

    /// The instances of one service, in slot order.
    fn of(&self, stack: &str, service: &str) -> &[Arc<InstanceRecord>] {
        self.of_service
            .get(&(stack.to_string(), service.to_string()))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

impl Deployer {
    pub fn new(m: Master) -> Deployer {
        Deployer {
            m,
            unplaceable: Default::default(),
            exhausted: Default::default(),
            peers: Default::default(),
            cluster: Default::default(),
            published: Default::default(),
            made: Default::default(),
            reports: Default::default(),
        }
    }

    pub async fn run(self) {
        let nudge = self.m.hub.nudged();
        // Every change to the store wakes the deployer (the cache applied a transaction): it
        // never waits for a timer to see a write. The timer only catches what changes with
        // time alone (monitor windows, drain graces, a node lost for long enough).
        let mut revisions = loop {
            match self.m.cache.revisions().await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!(error = %e, "deployer: cannot follow the store; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        loop {
            revisions.borrow_and_update();
            // A pass that wrote (a drain mark, a rollback swap, a step) is followed by another
            // straight away: what it wrote may enable the next step, and no agent report needs
            // to come first. The short pause bounds a pass that keeps writing. A quiet cluster
            // (nothing rolling, draining, waiting for room or being removed) is looked at again
            // only every few seconds unless something changes.
            let idle = match self.pass().await {
                Ok(Pass { wrote: true, .. }) => Duration::from_millis(20),
                Ok(Pass { quiet: true, .. }) => QUIET_RESYNC,
                Ok(_) => Duration::from_millis(500),
                Err(e) => {
                    tracing::warn!(error = %e, "deployer pass failed; retrying");
                    Duration::from_millis(500)
                }
            };
            tokio::select! {
                _ = nudge.notified() => {}
                _ = revisions.changed() => {
                    // Coalesce a burst (reports of many nodes) into one pass.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                _ = tokio::time::sleep(idle) => {}
            }
        }
    }

    async fn snapshot(&self) -> Result<Snapshot, Error> {
        // Stacks first: each read sees at least every write the previous one saw, so the services
        // and instances read next include all that the stack records promise (judging a
        // deployment relies on it: see `update_deployments`).
        let t0 = std::time::Instant::now();
        let stacks = self.m.stacks().await?;
        let (list, revision) = self.m.decoded::<ServiceRecord>(keys::SERVICES).await?;
        let mut services = BTreeMap::new();
        for d in list {
            let s = &d.value;
            services.insert(
                (s.stack.clone(), s.name.clone()),
                ((**s).clone(), d.mod_revision),
            );
        }
        let t_services = t0.elapsed();
        let mut nodes = self.m.nodes().await?;
        nodes.sort_by(|a, b| a.id.cmp(&b.id)); // `node_fit` searches by id
        let t_nodes = t0.elapsed();
        // Reports of lost nodes (unreachable, down, removed) say nothing about what runs: their
        // instances count as gone, so a deployment never waits for a dead host (issue 8, defect
        // 2). They are kept apart per node, for fencing when the node comes back.
        let (reps, _) = self
            .m
            .decoded::<wharf_types::NodeReport>(keys::STATUS)
            .await?;
        let mut index = std::mem::take(&mut *self.reports.lock().expect("deployer lock"));
        let looked_at = Arc::make_mut(&mut index).update(
            reps.iter()
                .map(|d| (&d.key[keys::STATUS.len()..], &d.value)),
            |node| fit_of(&nodes, node) != NodeFit::Lost,
        );
        *self.reports.lock().expect("deployer lock") = index.clone();
        let t_reports = t0.elapsed();
        let (decoded, _) = self.m.decoded::<InstanceRecord>(keys::INSTANCES).await?;
        let instances: Vec<Arc<InstanceRecord>> = decoded.into_iter().map(|d| d.value).collect();
        // Grouped under borrowed keys (no two strings per instance), then owned once per service.
        let mut grouped: BTreeMap<(&str, &str), Vec<Arc<InstanceRecord>>> = BTreeMap::new();
        for i in &instances {
            grouped
                .entry((i.stack.as_str(), i.service.as_str()))
                .or_default()
                .push(i.clone());
        }
        let of_service: BTreeMap<(String, String), Vec<Arc<InstanceRecord>>> = grouped
            .into_iter()
            .map(|((st, sv), list)| ((st.to_string(), sv.to_string()), list))
            .collect();
        let (kvs, _) = self.m.store.range(keys::GENERATIONS).await?;
        let mut counters = BTreeMap::new();
        for kv in kvs {
            let r: model::GenerationRecord = model::decode(&kv.key, &kv.value)?;
            if let Some((st, sv)) = kv.key[keys::GENERATIONS.len()..].split_once('/') {
                counters.insert((st.to_string(), sv.to_string()), (r.next, kv.mod_revision));
            }
        }
        let t_instances = t0.elapsed();
        // Above every generation an instance record or a previous placement knows of, and any
        // report (lost nodes included) ever showed: one look per service.
        let generation_floor: BTreeMap<(String, String), u64> = of_service
            .iter()
            .map(|((st, sv), list)| {
                let known = list
                    .iter()
                    .flat_map(|i| {
                        std::iter::once(i.generation)
                            .chain(i.previous.as_ref().map(|p| p.generation))
                    })
                    .max()
                    .map_or(1, |g| g + 1);
                ((st.clone(), sv.clone()), known.max(index.floor(st, sv)))
            })
            .collect();
        let t_floor = t0.elapsed();
        let snap = Snapshot {
            stacks,
            services,
            instances,
            of_service,
            counters,
            generation_floor,
            revision,
            drivers_lost: self.m.hub.drivers_down_for(self.m.config.engine_timeout),
            reports: index,
            nodes,
            subnets: {
                let mut a = network::Allocations::default();
                let (blocks, _) = self
                    .m
                    .decoded::<network::BlockRecord>(network::BLOCKS)
                    .await?;
                for d in blocks {
                    a.blocks
                        .insert(d.key[network::BLOCKS.len()..].to_string(), d.value.block);
                }
                let (subnets, _) = self
                    .m
                    .decoded::<network::SubnetRecord>(network::SUBNETS)
                    .await?;
                for d in subnets {
                    if let Some((stack, node)) = d.key[network::SUBNETS.len()..].split_once('/') {
                        a.subnets
                            .insert((stack.to_string(), node.to_string()), d.value.subnet);
                    }
                }
                a
            },
        };
        tracing::debug!(
            services = ?t_services,
            nodes = ?t_nodes,
            reports = ?t_reports,
            instances = ?t_instances,
            floor = ?t_floor,
            done = ?t0.elapsed(),
            looked_at,
            "deployer snapshot"
        );
        Ok(snap)
    }

    /// One reconciliation pass over every stack.
    pub async fn pass(&self) -> Result<Pass, Error> {
        let t0 = std::time::Instant::now();
        let snap = self.snapshot().await?;
        let t_snap = t0.elapsed();
        let now = now_ms();
        let mut wrote = false;
        // One scheduler view for the whole pass, built on the first placement and kept current
        // with every placement the pass makes (`Sched`), not one per placement.
        let mut sched = Sched::default();
        for stack in &snap.stacks {
            if let Some(removal) = &stack.removing {
                wrote |= self.remove_stack(&snap, stack, removal).await?;
                continue;
            }
            for ((st, _), (svc, rev)) in snap
                .services
                .iter()
                .filter(|((st, _), _)| st == &stack.name)
            {
                debug_assert_eq!(st, &stack.name);
                wrote |= self
                    .reconcile_service(&snap, svc, *rev, now, &mut sched)
                    .await?;
            }
        }
        // Instances whose service is gone (removed from its stack file) are removed, once drained.
        let orphans: Vec<Op> = snap
            .orphans()
            .filter_map(|i| remove_drained(&snap, i, now))
            .collect();
        if !orphans.is_empty() {
            self.m.store.txn(Txn::new().then(orphans)).await?;
            wrote = true;
        }
        let t_plan = t0.elapsed();
        // A pass that wrote ends here: the next one, a moment later (`run`), reads what it wrote
        // and judges deployments and publishes from that. Doing it here would need everything
        // read again (bench/scale: a third of a pass). Only when writes keep coming does a pass
        // read again and publish, so agents are never kept waiting longer than `PUBLISH_EVERY`.
        let overdue = || {
            self.published
                .lock()
                .expect("deployer lock")
                .is_none_or(|t| t.elapsed() >= PUBLISH_EVERY)
        };
        if wrote && !overdue() {
            return Ok(Pass {
                wrote,
                quiet: false,
            });
        }
        // The old snapshot goes before a new one is read: it shares the report index, which the
        // new one updates in place.
        let mut snap = snap;
        if wrote {
            drop(snap);
            snap = self.snapshot().await?;
        }
        // After placement, before publishing: a node gets an instance of a stack only together
        // with the stack's subnet there, so the network is created with it.
        if self.allocate_subnets(&snap).await? {
            wrote = true;
            if !overdue() {
                return Ok(Pass {
                    wrote,
                    quiet: false,
                });
            }
            drop(snap);
            snap = self.snapshot().await?;
        }
        let t_resnap = t0.elapsed();
        self.update_deployments(&snap, now).await?;
        let t_deploy = t0.elapsed();
        self.publish(&snap).await?;
        *self.published.lock().expect("deployer lock") = Some(std::time::Instant::now());
        tracing::debug!(
            wrote,
            snapshot = ?t_snap,
            planned = ?t_plan,
            resnapshot = ?t_resnap,
            deployments = ?t_deploy,
            published = ?t0.elapsed(),
            "deployer pass"
        );
        let quiet = !wrote && self.quiet(&snap).await?;
        Ok(Pass { wrote, quiet })
    }

    /// Whether nothing in `snap` waits on time alone (see `Pass::quiet`).
    async fn quiet(&self, snap: &Snapshot) -> Result<bool, Error> {
        if !self.unplaceable.lock().expect("deployer lock").is_empty()
            || !snap.drivers_lost.is_empty()
            || !self
                .m
                .hub
                .drivers_down_for(Duration::ZERO)
                .is_empty()
            || snap.stacks.iter().any(|s| s.removing.is_some())
            // A lost node's instances move after time alone (`at_most_once` waits a further
            // node timeout).
            || snap.nodes.iter().any(|n| n.state == NodeState::Unreachable)
        {
            return Ok(false);
        }
        let settled = |i: &InstanceRecord| {
            i.previous.is_none()
                && i.draining_since.is_none()
                && (i.watch.is_empty() || i.watch.done_at.is_some())
        };
        if snap.orphans().next().is_some() || !snap.instances.iter().all(|i| settled(i)) {
            return Ok(false);
        }
        let (deployments, _) = self.m.decoded::<Deployment>(keys::DEPLOYMENTS).await?;
        Ok(deployments
            .iter()
            .all(|d| d.value.state != DeploymentState::InProgress))
    }

    async fn reconcile_service(
        &self,
        snap: &Snapshot,
        svc: &ServiceRecord,
        rev: u64,
        now: u64,
        sched: &mut Sched,
    ) -> Result<bool, Error> {
        let insts: Vec<InstanceRecord> = snap
            .of(&svc.stack, &svc.name)
            .iter()
            .map(|i| (**i).clone())
            .collect();
        let fit = |node: &str| fit_for(snap, node, svc.spec.driver);
        let mut next = svc.clone();
        let mut ops = Vec::new();
        let svc_key = (svc.stack.clone(), svc.name.clone());
        let (stored_gen, gen_rev) = snap.counters.get(&svc_key).copied().unwrap_or((0, 0));
        let first_gen = stored_gen.max(
            snap.generation_floor
                .get(&svc_key)
                .copied()
                .unwrap_or_else(|| snap.reports.floor(&svc.stack, &svc.name)),
        );
        let mut next_gen = first_gen;
        let unplaceable_since = self
            .unplaceable
            .lock()
            .expect("deployer lock")
            .remove(&svc_key)
            .map(|(_, since)| since);

        // Relocations whose replacement is ready (or whose old node is gone) are over: drop the
        // previous placement, so its agent stops the old instance.
        // The previous placement drains first (`drain::gate`).
        let grace = drain::grace_ms(&svc.spec);
        // Placements steps of this pass take out of the desired state, by slot.
        let mut dropping: BTreeMap<u32, Drops> = BTreeMap::new();
        let mut insts = insts;
        for inst in insts.iter_mut() {
            if placement::relocation_done(inst, snap.newest(), &fit) {
                dropping.insert(inst.slot, Drops::PREVIOUS);
                match drain_gate(snap, inst, Drops::PREVIOUS, grace, now) {
                    Gate::Go => inst.previous = None,
                    Gate::Mark(rec) => *inst = *rec,
                    Gate::Wait { .. } => continue,
                }
                put(
                    &mut ops,
                    keys::instance(&svc.stack, &svc.name, inst.slot),
                    encode(&*inst),
                );
            }
        }

        let mut steps: Vec<Step> = Vec::new();
        // Slots the rollout replaces (monitored), as opposed to node moves.
        let mut rolled: BTreeSet<u32> = BTreeSet::new();
        let mut rollout_plan: rollout::Plan;
        let global = svc.spec.deploy.mode == DeployMode::Global;
        if global {
            let eligible = eligible_nodes(snap, svc);
            for a in placement::plan_global(&insts, &eligible, &fit) {
                steps.push(match a {
                    GlobalAction::CreateOn { slot, node } => Step::CreateOn { slot, node },
                    GlobalAction::Remove { slot } => Step::Remove { slot },
                });
            }
            // Rolling replacement only: every slot that exists is wanted.
            let mut as_replicated = svc.clone();
            as_replicated.replicas = insts.iter().map(|i| i.slot + 1).max().unwrap_or(0);
            let p = rollout::plan(&as_replicated, &insts, snap.newest(), false, now);
            for a in &p.actions {
                if let Action::Replace { slot } = a {
                    steps.push(Step::Replace { slot: *slot });
                    rolled.insert(*slot);
                }
            }
            rollout_plan = p;
        } else {
            let timeout_ms = self.m.config.node_timeout.as_millis() as u64;
            let lost_long =
                |node: &str| match snap.nodes.binary_search_by(|n| n.id.as_str().cmp(node)) {
                    Ok(i) => now.saturating_sub(snap.nodes[i].since) >= timeout_ms,
                    Err(_) => true, // removed
                };
            for m in placement::node_moves(svc, &insts, &fit, &lost_long) {
                steps.push(match m {
                    Move::Evacuate { slot } => Step::Replace { slot },
                    Move::Relocate { slot } => Step::Relocate { slot },
                });
            }
            let moving: Vec<u32> = steps.iter().map(Step::slot).collect();
            let p = rollout::plan(svc, &insts, snap.newest(), deps_ready(snap, svc), now);
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
            rollout_plan = p;
            if (svc.rebalance || svc.spec.wharf.auto_rebalance) && steps.is_empty() {
                match placement::rebalance_move(&insts, &eligible_nodes(snap, svc)) {
                    Some(slot) => steps.push(Step::Relocate { slot }),
                    None if svc.rebalance && insts.iter().all(|i| i.previous.is_none()) => {
                        next.rebalance = false; // even: the request is done
                    }
                    None => {}
                }
            }
        }

        // Failures beyond the tolerance with `failure_action: rollback`: swap back to the previous
        // spec (one transaction, so a restart of the master continues the rollback), nothing else.
        if let Some(reason) = rollout_plan.rollback.take() {
            let deployment = snap
                .stacks
                .iter()
                .find(|s| s.name == svc.stack)
                .and_then(|s| s.last_deployment.clone());
            if let Some(rb) = rollout::roll_back(&next, true, Some(reason.clone()), deployment, now)
            {
                tracing::warn!(service = %svc.name, stack = %svc.stack, %reason, "update failed; rolling back");
                next = rb;
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

        let monitor_ms = rollout::config(svc).monitor_ms;
        let start_first = rollout::config(svc).order == UpdateOrder::StartFirst;
        let req = Request::for_service(&svc.stack, &svc.name, &svc.spec);
        let stepped: BTreeSet<u32> = steps.iter().map(Step::slot).collect();
        let mut cannot_place = false;
        for step in steps {
            let slot = step.slot();
            let old = insts.iter().find(|i| i.slot == slot);
            // A start-first rolling replacement keeps the old generation assigned (as the
            // previous placement, even on the same node) while it runs, so it can drain once the
            // new one is ready; the agent runs both because both are assigned.
            let keep = match (&step, old) {
                (Step::Replace { .. }, Some(i)) if start_first && rolled.contains(&slot) => {
                    drain::start_first_keeps(i, &|node, g| serving(snap, i, node, g))
                }
                _ => Keep::Nothing,
            };
            // What the step takes out of the desired state drains first.
            let drops = match (&step, old) {
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
                            &mut ops,
                            keys::instance(&svc.stack, &svc.name, slot),
                            encode(&rec),
                        );
                        continue;
                    }
                    Gate::Wait { .. } => continue,
                }
            }
            let (node, previous) = match &step {
                Step::Remove { .. } => {
                    ops.push(Op::delete(keys::instance(&svc.stack, &svc.name, slot)));
                    continue;
                }
                Step::CreateOn { node, .. } => (node.clone(), None),
                // A replacement stays where the slot is, if that node still takes new instances.
                Step::Replace { .. } if old.is_some_and(|i| node_usable(snap, &i.node, svc)) => {
                    (old.map(|i| i.node.clone()).unwrap_or_default(), None)
                }
                // Nowhere to go for one instance of the service: none of its others this pass.
                Step::Create { .. } | Step::Replace { .. } | Step::Relocate { .. }
                    if cannot_place =>
                {
                    continue;
                }
                Step::Create { .. } | Step::Replace { .. } | Step::Relocate { .. } => {
                    match sched.place(snap, &req) {
                        Ok(n)
                            if matches!(step, Step::Relocate { .. })
                                && old.is_some_and(|i| i.node == n) =>
                        {
                            sched.release(&n, &req);
                            continue; // nowhere better to go
                        }
                        Ok(n) => {
                            let previous = match (&step, old) {
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
                            cannot_place = true;
                            tracing::warn!(service = %svc.name, stack = %svc.stack, %reason, "cannot place instance");
                            self.unplaceable.lock().expect("deployer lock").insert(
                                svc_key.clone(),
                                (
                                    format!(
                                        "cannot place instance {}.{}.{slot}: {reason}",
                                        svc.stack, svc.name
                                    ),
                                    unplaceable_since.unwrap_or(now),
                                ),
                            );
                            continue;
                        }
                    }
                }
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
            // A relocation moves the instance as it is; everything else brings it to the current spec.
            let (spec_hash, restart_nonce, spec) = match (&step, old) {
                (Step::Relocate { .. }, Some(i)) => {
                    (i.spec_hash.clone(), i.restart_nonce, i.spec.clone())
                }
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
            let rec = InstanceRecord {
                stack: svc.stack.clone(),
                service: svc.name.clone(),
                slot,
                node,
                generation: next_gen,
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
            };
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
        if ops.is_empty() && next == *svc {
            return Ok(false);
        }
        if next != *svc {
            ops.push(Op::put(keys::service(&svc.stack, &svc.name), encode(&next)));
        }
        // Only if nobody changed the service since the snapshot (a deploy, a scale), and the
        // generation counter is the one this pass counted from: else next pass.
        let mut guards = vec![Compare::unchanged_since(
            keys::service(&svc.stack, &svc.name),
            rev,
        )];
        if next_gen != stored_gen {
            let key = keys::generation(&svc.stack, &svc.name);
            guards.push(Compare::unchanged_since(key.clone(), gen_rev));
            ops.push(Op::put(
                key,
                encode(&model::GenerationRecord { next: next_gen }),
            ));
        }
        let txn = Txn::new().when(guards).then(ops);
        Ok(self.m.store.txn(txn).await?.succeeded)
    }

    /// Remove a stack: its instances first, then, once no agent reports any of them and the
    /// purge is acknowledged, the stack and its services.
    async fn remove_stack(
        &self,
        snap: &Snapshot,
        stack: &StackRecord,
        _r: &Removal,
    ) -> Result<bool, Error> {
        let has_instances = snap.instances.iter().any(|i| i.stack == stack.name);
        if has_instances {
            // Each instance drains first; the removal goes on once they are all gone.
            let now = now_ms();
            let ops: Vec<Op> = snap
                .instances
                .iter()
                .filter(|i| i.stack == stack.name)
                .filter_map(|i| remove_drained(snap, i, now))
                .collect();
            if ops.is_empty() {
                return Ok(false);
            }
            self.m.store.txn(Txn::new().then(ops)).await?;
            return Ok(true);
        }
        let prefix = format!("{}.", stack.name);
        let running = snap.reports.with_prefix(&prefix).next().is_some();
        let purge_pending = self.m.store.get(&keys::purge(&stack.name)).await?.is_some();
        if running || purge_pending {
            return Ok(false);
        }
        let mut ops = vec![
            Op::delete(keys::stack(&stack.name)),
            Op::DeletePrefix {
                prefix: keys::services_of(&stack.name),
            },
        ];
        if let Some(id) = &stack.last_deployment
            && let Some(mut d) = self.m.deployment(id).await?
            && d.state == DeploymentState::InProgress
        {
            d.state = DeploymentState::Succeeded;
            d.message = Some("stack removed".into());
            d.updated_at = now_ms();
            ops.push(Op::put(keys::deployment(id), encode(&d)));
        }
        self.m
            .mutate(
                &Actor("system".into()),
                "stack.removed",
                &stack.name,
                now_ms(),
                Txn::new().then(ops),
            )
            .await?;
        Ok(true)
    }

    /// Judge every deployment in progress and write down how it stands.
    async fn update_deployments(&self, snap: &Snapshot, now: u64) -> Result<(), Error> {
        let (list, _) = self.m.decoded::<Deployment>(keys::DEPLOYMENTS).await?;
        for kv in list {
            if kv.value.state != DeploymentState::InProgress {
                continue;
            }
            let d: Deployment = (*kv.value).clone();
            // Judge a deployment only against a snapshot that already holds its stack revision:
            // deployments are read after the snapshot, and a deployment newer than the snapshot
            // would look like its services were removed, i.e. instantly done.
            match snap.stacks.iter().find(|s| s.name == d.stack) {
                Some(s) if s.removing.is_none() && s.revision >= d.revision => {}
                _ => continue,
            }
            let mut next = d.clone();
            let mut all_done = true;
            let mut failures = Vec::new();
            let mut notes = Vec::new();
            for sp in next.services.iter_mut() {
                let svc = snap
                    .services
                    .get(&(d.stack.clone(), sp.service.clone()))
                    .map(|(s, _)| s);
                let insts: Vec<InstanceRecord> = snap
                    .of(&d.stack, &sp.service)
                    .iter()
                    .map(|i| (**i).clone())
                    .collect();
                let leftover = leftover_reports(snap, &d.stack, &sp.service, &insts);
                let mut p = match svc {
                    // Global: every existing slot is wanted; one per eligible node is the goal.
                    Some(g) if g.spec.deploy.mode == DeployMode::Global => {
                        let mut eff = g.clone();
                        eff.replicas = insts.iter().map(|i| i.slot + 1).max().unwrap_or(0);
                        let mut p = rollout::progress(
                            Some(&eff),
                            &insts,
                            snap.newest(),
                            leftover,
                            &d.id,
                            now,
                        );
                        p.desired = eligible_nodes(snap, g).len() as u32;
                        if p.done() && (p.updated != p.desired || p.ready != p.desired) {
                            p.verdict = rollout::Verdict::Running;
                        }
                        p
                    }
                    _ => rollout::progress(svc, &insts, snap.newest(), leftover, &d.id, now),
                };
                if p.failure.is_none() {
                    // Nowhere to place an instance: a failure once it lasted `UNPLACEABLE_FOR`
                    // (a node that flaps, a drain under way must not end the deployment),
                    // a note until then.
                    let key = (d.stack.clone(), sp.service.clone());
                    let stuck = self
                        .unplaceable
                        .lock()
                        .expect("deployer lock")
                        .get(&key)
                        .cloned();
                    match stuck {
                        Some((why, since)) if now.saturating_sub(since) >= UNPLACEABLE_FOR_MS => {
                            p.failure = Some(why)
                        }
                        Some((why, _)) => p.note = Some(format!("waiting for room: {why}")),
                        None => {}
                    }
                }
                // A rebalance is done once the deployer cleared its flag (the spread is even).
                all_done &= p.done() && !svc.is_some_and(|s| s.rebalance);
                if let Some(f) = &p.failure {
                    failures.push(format!("service {}: {f}", sp.service));
                }
                if let Some(n) = &p.note {
                    notes.push(format!("service {}: {n}", sp.service));
                }
                *sp = ServiceProgress {
                    service: sp.service.clone(),
                    desired: p.desired,
                    updated: p.updated,
                    ready: p.ready,
                    error: p.failure,
                    note: p.note,
                    instances: instance_progress(svc, &insts, snap),
                };
            }
            if !failures.is_empty() {
                next.state = DeploymentState::Failed;
                next.message = Some(failures.join("; "));
            } else if all_done {
                next.state = DeploymentState::Succeeded;
                next.message = (!notes.is_empty()).then(|| notes.join("; "));
            } else {
                next.message = (!notes.is_empty()).then(|| notes.join("; "));
            }
            if next != d {
                // Strictly later than what readers have seen: the pass's clock was read before
                // the record may have been written, and followers wait on `updated_at` moving.
                next.updated_at = now.max(d.updated_at + 1);
                let txn = Txn::new()
                    .when([Compare::unchanged_since(kv.key.clone(), kv.mod_revision)])
                    .then([Op::put(kv.key.clone(), encode(&next))]);
                self.m.store.txn(txn).await?;
            }
        }
        Ok(())
    }

    /// Give every (stack, node) pair with instances a subnet of the pool, and release the pairs
    /// whose stack or node is gone (`network.rs`). Whether it wrote.
    async fn allocate_subnets(&self, snap: &Snapshot) -> Result<bool, Error> {
        let Some(pool) = self.m.config.network_pool else {
            return Ok(false);
        };
        let mut needed = BTreeSet::new();
        let mut stacks: BTreeSet<String> = snap.stacks.iter().map(|s| s.name.clone()).collect();
        for i in &snap.instances {
            stacks.insert(i.stack.clone());
            needed.insert((i.stack.clone(), i.node.clone()));
            if let Some(prev) = &i.previous {
                needed.insert((i.stack.clone(), prev.node.clone()));
            }
        }
        let nodes = snap.nodes.iter().map(|n| n.id.clone()).collect();
        let plan = network::plan(pool, &snap.subnets, &needed, &stacks, &nodes);
        {
            let mut logged = self.exhausted.lock().expect("exhausted");
            for (stack, node) in &plan.exhausted {
                if logged.insert((stack.clone(), node.clone())) {
                    tracing::warn!(%stack, %node, %pool, "the network pool (or the node's block) is \
                        full: the stack's network on the node gets a subnet of the engine's \
                        choosing, which other nodes cannot route to; widen `--network-pool`");
                }
            }
            logged.retain(|p| plan.exhausted.contains(p));
        }
        if plan.is_empty() {
            return Ok(false);
        }
        let mut txn = Txn::new();
        for (node, block) in &plan.add_blocks {
            let key = network::block_key(node);
            txn = txn.when([Compare::missing(key.clone())]).then([Op::put(
                key,
                encode(&network::BlockRecord { block: *block }),
            )]);
        }
        for ((stack, node), subnet) in &plan.add_subnets {
            let key = network::subnet_key(stack, node);
            txn = txn.when([Compare::missing(key.clone())]).then([Op::put(
                key,
                encode(&network::SubnetRecord { subnet: *subnet }),
            )]);
        }
        for node in &plan.release_blocks {
            txn = txn.then([Op::delete(network::block_key(node))]);
        }
        for (stack, node) in &plan.release_subnets {
            txn = txn.then([Op::delete(network::subnet_key(stack, node))]);
        }
        // A lost race (another writer allocated first) is retried on the next pass.
        self.m.store.txn(txn).await?;
        Ok(true)
    }

    /// Hand every connected node its desired state.
    async fn publish(&self, snap: &Snapshot) -> Result<(), Error> {
        let t0 = std::time::Instant::now();
        let (purge_kvs, _) = self.m.store.range(keys::PURGES).await?;
        let mut purges = Vec::new();
        for kv in purge_kvs {
            let r: Removal = model::decode(&kv.key, &kv.value)?;
            purges.push(StackPurge {
                stack: kv.key[keys::PURGES.len()..].to_string(),
                volumes: r.volumes,
            });
        }
        // Each instance on its node, and a relocating instance's previous placement too (it
        // keeps running until the replacement is ready). Grouped by node in one pass over the
        // instances, not one pass per node (bench/scale: 1,000 nodes x 10,000 instances).
        let mut by_node: BTreeMap<&str, Vec<(&Arc<InstanceRecord>, u64)>> = BTreeMap::new();
        for i in &snap.instances {
            by_node
                .entry(i.node.as_str())
                .or_default()
                .push((i, i.generation));
            if let Some(prev) = &i.previous {
                by_node
                    .entry(prev.node.as_str())
                    .or_default()
                    .push((i, prev.generation));
            }
        }
        let t_grouped = t0.elapsed();
        // Every node's ingress gets the same routing table (`ingress.rs`).
        let ingress = crate::ingress::table(
            snap.services.values().map(|(s, _)| s),
            snap.instances.iter().map(|i| &**i),
            &|id, g| snap.reports.of_generation(id, g),
            &crate::drain::generation_draining,
        );
        // Discovery: each node gets the services of the stacks it runs instances of.
        let discovery: Vec<std::sync::Arc<wharf_types::DiscoveryService>> =
            crate::discovery::services(
                snap.services.values().map(|(s, _)| s),
                snap.instances.iter().map(|i| &**i),
                &|id, g| snap.reports.of_generation(id, g),
                &crate::drain::generation_draining,
            )
            .into_iter()
            .map(std::sync::Arc::new)
            .collect();
        let t_tables = t0.elapsed();
        let addresses: BTreeMap<String, String> = snap
            .nodes
            .iter()
            .filter_map(|n| Some((n.id.clone(), n.address.clone()?)))
            .collect();
        let cluster = self
            .cluster
            .get_or_try_init(|| self.m.cluster_id())
            .await?
            .clone();
        // Fencing looks records up by id; only worth building when some placement was lost.
        let records: BTreeMap<String, &InstanceRecord> = snap
            .instances
            .iter()
            .filter(|i| !i.lost.is_empty())
            .map(|i| (i.id(), &**i))
            .collect();
        let shares = self.m.config.network_pool.map(|pool| {
            let mut cache = self.peers.lock().expect("peers");
            let shares = network::Shares::new(pool, &snap.subnets, &addresses, cache.as_ref());
            *cache = Some(shares.peers().clone());
            shares
        });
        let t_shared = t0.elapsed();
        // The shared parts are kept from the last publish while they stay equal, so a node's
        // inputs compare by pointer (`Made`).
        let mut made = self.made.lock().expect("deployer lock");
        let ingress = match made.values().next() {
            Some(m) if *m.ingress == ingress => m.ingress.clone(),
            _ => Arc::new(ingress),
        };
        let purges = match made.values().next() {
            Some(m) if *m.purges == purges => m.purges.clone(),
            _ => Arc::new(purges),
        };
        let discovery: Vec<Arc<wharf_types::DiscoveryService>> = {
            let before: BTreeMap<(&str, &str), &Arc<wharf_types::DiscoveryService>> = made
                .values()
                .flat_map(|m| &m.discovery)
                .map(|d| ((d.stack.as_str(), d.service.as_str()), d))
                .collect();
            discovery
                .into_iter()
                .map(
                    |d| match before.get(&(d.stack.as_str(), d.service.as_str())) {
                        Some(old) if ***old == *d => (*old).clone(),
                        _ => d,
                    },
                )
                .collect()
        };
        let mut sent = 0usize;
        let connections = self.m.hub.connections();
        let mut next_made = BTreeMap::new();
        for (node, serial) in connections {
            let on_node: Vec<(Arc<InstanceRecord>, u64)> = by_node
                .get(node.as_str())
                .map(|list| list.iter().map(|(i, g)| ((*i).clone(), *g)).collect())
                .unwrap_or_default();
            let stacks: BTreeSet<&str> = on_node.iter().map(|(i, _)| i.stack.as_str()).collect();
            let inputs = Made {
                serial,
                discovery: discovery
                    .iter()
                    .filter(|s| stacks.contains(s.stack.as_str()))
                    .cloned()
                    .collect(),
                instances: on_node,
                ingress: ingress.clone(),
                purges: purges.clone(),
                network: shares
                    .as_ref()
                    .map(|s| s.node(&node, &snap.subnets))
                    .unwrap_or_default(),
                fence: fence(&node, snap, &records),
            };
            if made.get(&node).is_some_and(|m| m.same(&inputs)) {
                let kept = made.remove(&node).expect("just seen");
                next_made.insert(node, kept);
                continue;
            }
            let assign = |i: &InstanceRecord, generation: u64| {
                // The previous placement of a start-first replacement runs the old spec.
                let (spec_hash, spec) = match i.previous_spec() {
                    Some(old) if generation != i.generation => old,
                    _ => (i.spec_hash.as_str(), &i.spec),
                };
                wharf_types::Assignment {
                    id: i.id(),
                    stack: i.stack.clone(),
                    service: i.service.clone(),
                    slot: i.slot,
                    generation,
                    spec_hash: spec_hash.to_string(),
                    spec: spec.clone(),
                }
            };
            sent += 1;
            self.m.hub.publish(
                &node,
                NodeDesired {
                    assignments: inputs
                        .instances
                        .iter()
                        .map(|(i, g)| assign(i, *g))
                        .collect(),
                    purges: (*inputs.purges).clone(),
                    ingress: (*inputs.ingress).clone(),
                    discovery: wharf_types::Discovery {
                        domain: self.m.config.cluster_domain.clone(),
                        services: inputs.discovery.clone(),
                    },
                    network: inputs.network.clone(),
                    cluster: cluster.clone(),
                    revision: snap.revision,
                    fence: inputs.fence.clone(),
                    node_timeout_ms: self.m.config.node_timeout.as_millis() as u64,
                },
            );
            next_made.insert(node, inputs);
        }
        *made = next_made;
        drop(made);
        tracing::debug!(
            grouped = ?t_grouped,
            tables = ?t_tables,
            shared = ?t_shared,
            nodes = ?t0.elapsed(),
            sent,
            "deployer publish"
        );
        Ok(())
    }
}

/// What a node's desired state is made of. The same inputs make the same desired state, so a
/// node whose inputs did not change since the last publish gets nothing built, compared or sent
/// (bench/scale: a pass built and compared 1,000 desired states for the few nodes a deploy
/// touches). Records and shared tables compare by pointer: the cache hands out one `Arc` per
/// record version, and the publisher keeps the tables of the last publish while they stay equal.
struct Made {
    /// The node's connection: a reconnect is sent everything again.
    serial: u64,
    instances: Vec<(Arc<InstanceRecord>, u64)>,
    ingress: Arc<Vec<wharf_types::IngressService>>,
    purges: Arc<Vec<StackPurge>>,
    discovery: Vec<Arc<wharf_types::DiscoveryService>>,
    network: wharf_types::NodeNetwork,
    fence: Vec<wharf_types::InstanceRef>,
}

impl Made {
    fn same(&self, other: &Made) -> bool {
        // Destructured, so that a new input cannot be forgotten here.
        let Made {
            serial,
            instances,
            ingress,
            purges,
            discovery,
            network,
            fence,
        } = self;
        *serial == other.serial
            && instances.len() == other.instances.len()
            && instances
                .iter()
                .zip(&other.instances)
                .all(|((a, ga), (b, gb))| Arc::ptr_eq(a, b) && ga == gb)
            && Arc::ptr_eq(ingress, &other.ingress)
            && Arc::ptr_eq(purges, &other.purges)
            && discovery.len() == other.discovery.len()
            && discovery
                .iter()
                .zip(&other.discovery)
                .all(|(a, b)| Arc::ptr_eq(a, b))
            && *network == other.network
            && *fence == other.fence
    }
}

/// What `node` still runs (by its last report) that was replaced on another node while it was
/// lost: the slot's current placement, and its previous one, are elsewhere. Those are fenced:
/// stopped at once, without the drain and grace a planned stop gets, since their replacements
/// already serve (issue 8, defect 6: stale instances ran 10 s beside their replacements).
fn fence(
    node: &str,
    snap: &Snapshot,
    records: &BTreeMap<String, &InstanceRecord>,
) -> Vec<wharf_types::InstanceRef> {
    let Some(reports) = snap.reports.of_node(node) else {
        return Vec::new();
    };
    let mut out: Vec<wharf_types::InstanceRef> = reports
        .instances
        .iter()
        .filter(|r| {
            records.get(&r.id).is_some_and(|i| {
                i.lost
                    .iter()
                    .any(|l| l.node == node && r.generation <= l.generation)
            })
        })
        .map(|r| wharf_types::InstanceRef {
            id: r.id.clone(),
            generation: r.generation,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// How long instances of a service must have been unplaceable before a deployment fails on it.
pub const UNPLACEABLE_FOR_MS: u64 = 3_000;

/// Put `value` at `key`, replacing what this pass queued for the key already: one op per key.
fn put(ops: &mut Vec<Op>, key: String, value: Vec<u8>) {
    ops.retain(|op| !matches!(op, Op::Put { key: k, .. } if *k == key));
    ops.push(Op::put(key, value));
}

/// `drain::gate` for `inst`: a placement serves when its generation is reported ready on a node
/// that is not lost.
fn drain_gate(snap: &Snapshot, inst: &InstanceRecord, drops: Drops, grace: u64, now: u64) -> Gate {
    drain::gate(inst, drops, &|n, g| serving(snap, inst, n, g), grace, now)
}

/// Whether a placement of `inst` (node, generation) may be serving requests: reported ready on a
/// node that is not lost.
fn serving(snap: &Snapshot, inst: &InstanceRecord, node: &str, generation: u64) -> bool {
    node_fit(snap, node) != NodeFit::Lost
        && rollout::is_ready(snap.reports.of_generation(&inst.id(), generation))
}

/// The op that removes an instance whose service or stack is gone: a mark while it drains, the
/// delete once drained, nothing while it waits. Its own spec says how long it drains.
fn remove_drained(snap: &Snapshot, inst: &InstanceRecord, now: u64) -> Option<Op> {
    let key = keys::instance(&inst.stack, &inst.service, inst.slot);
    match drain_gate(snap, inst, Drops::ALL, drain::grace_ms(&inst.spec), now) {
        Gate::Go => Some(Op::delete(key)),
        Gate::Mark(rec) => Some(Op::put(key, encode(&*rec))),
        Gate::Wait { .. } => None,
    }
}

/// One step of a service's reconciliation, whatever planner asked for it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Create { slot: u32 },
    CreateOn { slot: u32, node: String },
    Replace { slot: u32 },
    Relocate { slot: u32 },
    Remove { slot: u32 },
}

impl Step {
    fn slot(&self) -> u32 {
        match self {
            Step::Create { slot }
            | Step::CreateOn { slot, .. }
            | Step::Replace { slot }
            | Step::Relocate { slot }
            | Step::Remove { slot } => *slot,
        }
    }
}

/// What a node means for the instances on it.
fn node_fit(snap: &Snapshot, node: &str) -> NodeFit {
    fit_of(&snap.nodes, node)
}

/// `node_fit` for instances of `driver`: lost too where that driver has been down too long.
fn fit_for(snap: &Snapshot, node: &str, driver: wharf_types::DriverKind) -> NodeFit {
    if snap.drivers_lost.contains(&(node.to_string(), driver)) {
        return NodeFit::Lost;
    }
    node_fit(snap, node)
}

/// `node_fit` over `nodes` sorted by id.
fn fit_of(nodes: &[model::NodeRecord], node: &str) -> NodeFit {
    // `snapshot` sorts nodes by id: a binary search, not a scan per instance (bench/scale).
    let found = nodes.binary_search_by(|n| n.id.as_str().cmp(node)).ok();
    match found.map(|i| &nodes[i]) {
        Some(n) if n.state == NodeState::Ready && n.drain => NodeFit::Draining,
        Some(n) if n.state == NodeState::Ready => NodeFit::Ok,
        _ => NodeFit::Lost,
    }
}

/// Ready and not draining: takes new instances.
fn node_usable(snap: &Snapshot, node: &str, svc: &ServiceRecord) -> bool {
    fit_for(snap, node, svc.spec.driver) == NodeFit::Ok
}

/// Nodes where the service may run (for global services and rebalancing).
fn eligible_nodes(snap: &Snapshot, svc: &ServiceRecord) -> Vec<String> {
    snap.nodes
        .iter()
        .filter(|n| {
            n.state == NodeState::Ready
                && !n.drain
                && n.facts.drivers.contains(&svc.spec.driver)
                && !snap.drivers_lost.contains(&(n.id.clone(), svc.spec.driver))
        })
        .map(|n| n.id.clone())
        .collect()
}

/// The scheduler's view of the cluster during one pass: built from the snapshot on the first
/// placement (nodes, and every instance that runs, so reservations, ports and counts hold), then
/// kept current with what the pass places. Placements recorded before it is built wait in
/// `pending`.
#[derive(Default)]
struct Sched {
    cluster: Option<wharf_scheduler::Cluster>,
    pending: Vec<(String, Request)>,
}

impl Sched {
    fn cluster(&mut self, snap: &Snapshot) -> &mut wharf_scheduler::Cluster {
        let pending = &mut self.pending;
        self.cluster.get_or_insert_with(|| {
            let mut c = scheduler_view(snap);
            for (node, req) in pending.drain(..) {
                c.record(&node, &req);
            }
            c
        })
    }

    fn place(
        &mut self,
        snap: &Snapshot,
        req: &Request,
    ) -> Result<String, wharf_scheduler::Unplaceable> {
        self.cluster(snap).place(req)
    }

    fn record(&mut self, node: &str, req: &Request) {
        match &mut self.cluster {
            Some(c) => {
                c.record(node, req);
            }
            None => self.pending.push((node.to_string(), req.clone())),
        }
    }

    fn release(&mut self, node: &str, req: &Request) {
        if let Some(c) = &mut self.cluster {
            c.release(node, req);
        }
    }
}

fn scheduler_view(snap: &Snapshot) -> wharf_scheduler::Cluster {
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
    for i in &snap.instances {
        cluster.record(
            &i.node,
            &Request::for_service(&i.stack, &i.service, &i.spec),
        );
    }
    cluster
}

/// Every instance of a service as a deployment shows it: the current records (new spec or not
/// yet replaced) and the old generations agents still report (stopping, or kept running by
/// start-first until their replacement is ready).
fn instance_progress(
    svc: Option<&ServiceRecord>,
    insts: &[InstanceRecord],
    snap: &Snapshot,
) -> Vec<wharf_types::InstanceProgress> {
    let Some(svc) = svc else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in insts {
        let id = i.id();
        let new = i.is_current(svc);
        let rep = rollout::report_of(i, snap.newest());
        let phase = match (&i.watch.failure, i.watch.done_at, i.watch.ready_at) {
            _ if !new => "old",
            (Some(_), _, _) => "failed",
            (None, Some(_), _) => "done",
            (None, None, Some(_)) => "monitoring",
            (None, None, None) => "starting",
        };
        out.push(wharf_types::InstanceProgress {
            id: id.clone(),
            generation: i.generation,
            new,
            state: rep.map(|r| r.state).unwrap_or_default(),
            health: rep.map(|r| r.health).unwrap_or_default(),
            phase: phase.into(),
        });
        // Older generations of the slot still reported: the old version, on its way out.
        for r in snap
            .reports
            .of_id(&id)
            .filter(|r| r.generation < i.generation)
        {
            out.push(wharf_types::InstanceProgress {
                id: id.clone(),
                generation: r.generation,
                new: false,
                state: r.state,
                health: r.health,
                phase: "old".into(),
            });
        }
    }
    out
}

/// Reports of this service's instances that no current instance record accounts for: old
/// generations still stopping, removed slots still running.
fn leftover_reports(snap: &Snapshot, stack: &str, service: &str, insts: &[InstanceRecord]) -> u32 {
    let prefix = format!("{stack}.{service}.");
    let current: BTreeSet<(String, u64)> = insts.iter().map(|i| (i.id(), i.generation)).collect();
    snap.reports
        .with_prefix(&prefix)
        .filter(|r| {
            r.id.strip_prefix(&prefix)
                .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|r| !current.contains(&(r.id.clone(), r.generation)))
        .count() as u32
}

/// Whether the `depends_on` conditions of a service hold, so its instances may be created.
fn deps_ready(snap: &Snapshot, svc: &ServiceRecord) -> bool {
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
