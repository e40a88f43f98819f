//! The deployer: the controller that makes placed instances match the services in the store, drives
//! rollouts one step at a time (`rollout::plan`), removes stacks, and keeps deployment records up to
//! date. Level-triggered: each pass reads everything it needs (from the master's store cache) and
//! acts on the difference, on every store change or nudge, else every half second (every 5 s when
//! the cluster is quiet), so it resumes after any crash.
//!
//! - `snapshot.rs`: what a pass reads, and how a node stands for the instances on it.
//! - `plan.rs`: the planner, pure: the next step of one service from the snapshot and the clock
//!   (`plan_service`), tested on hand-made snapshots.
//! - this file: the pass, the committer (`Deployer::commit`: a plan in one guarded
//!   transaction), which services a pass may skip (`Settled`), stack removal, deployments.
//! - `jobs.rs`: the planner of a job (a service that runs to completion), pure as `plan.rs`;
//!   its job record commits with its instance records.
//! - `publish.rs`: each node's desired state, built only when its inputs changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use wharf_store::{Compare, Op, Txn};
use wharf_types::{DeployMode, Deployment, DeploymentState, NodeState, ServiceProgress};

use crate::model::{self, InstanceRecord, Removal, ServiceRecord, StackRecord, encode, keys};
use crate::mutate::Actor;
use crate::network;
use crate::placement::NodeFit;
use crate::reports::ReportIndex;
use crate::rollout::{self};
use crate::{Error, Master, now_ms};

mod jobs;
mod plan;
mod publish;
mod snapshot;

use plan::{Context, ServicePlan, plan_service};
use plan::{Sched, remove_drained};
use publish::Made;
use snapshot::{Snapshot, eligible_nodes};

pub struct Deployer {
    m: Master,
    /// Why instances of a service could not be placed at the last try, by (stack, service).
    /// Observed state, not desired state: recomputed on every pass, so it lives in memory.
    /// With when (master clock) the service first could not be placed, in a row of passes.
    unplaceable: parking_lot::Mutex<BTreeMap<(String, String), (String, u64)>>,
    /// (node, stack) pairs short of a subnet in a full network pool (warned once per node).
    exhausted: parking_lot::Mutex<BTreeSet<(String, String)>>,
    /// Each node's network share of the last publish, kept while the allocations and the
    /// nodes' addresses stay the same (`publish::Networks`).
    networks: parking_lot::Mutex<Option<publish::Networks>>,
    /// The cluster's identity, read (or made) on the first pass.
    cluster: tokio::sync::OnceCell<String>,
    /// Services whose last plan was empty and that wait on nothing (`waits_on_nothing`), with
    /// what that plan was made from: skipped while it stays the same.
    settled: parking_lot::Mutex<BTreeMap<(String, String), Settled>>,
    /// The allocations and records of the last subnet plan that found nothing to do.
    subnets_planned: parking_lot::Mutex<Option<SubnetsPlanned>>,
    /// The allocations, nodes and stacks of the last subnet plan that found nothing to release.
    releases_checked: parking_lot::Mutex<Option<ReleasesChecked>>,
    /// The network allocations of the last pass, with the stamps of their prefixes.
    allocations: parking_lot::Mutex<Option<(Stamps, Arc<network::Allocations>)>>,
    /// Each service's discovery records of the last publish, with what they were made of.
    discovered: parking_lot::Mutex<BTreeMap<(String, String), Discovered>>,
    /// The nodes (and lost drivers) of the last pass, and a number that moves when they change.
    nodes_seen: parking_lot::Mutex<NodesSeen>,
    /// What agents report, kept from pass to pass (`reports.rs`).
    reports: parking_lot::Mutex<Arc<ReportIndex>>,
    /// The records a pass reads, kept from pass to pass (`snapshot::World`).
    world: parking_lot::Mutex<snapshot::World>,
    /// What each connected node's desired state was made of at the last publish.
    made: parking_lot::Mutex<BTreeMap<String, Made>>,
    /// The opened values of the secret and config versions that assigned instances mount
    /// (versions never change), for the desired states of the nodes that run them.
    files: parking_lot::Mutex<publish::FileValues>,
    /// When the last pass published desired states (see `PUBLISH_EVERY`).
    published: parking_lot::Mutex<Option<std::time::Instant>>,
    /// The earliest time (ms since the epoch) a job's schedule comes due, from the last pass:
    /// the loop wakes then, not at its next tick.
    job_due: parking_lot::Mutex<Option<u64>>,
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

impl Deployer {
    pub fn new(m: Master) -> Deployer {
        Deployer {
            m,
            unplaceable: Default::default(),
            exhausted: Default::default(),
            networks: Default::default(),
            cluster: Default::default(),
            published: Default::default(),
            made: Default::default(),
            files: Default::default(),
            reports: Default::default(),
            world: Default::default(),
            settled: Default::default(),
            nodes_seen: Default::default(),
            discovered: Default::default(),
            allocations: Default::default(),
            subnets_planned: Default::default(),
            releases_checked: Default::default(),
            job_due: Default::default(),
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
            // A job's schedule comes due with time alone: wake at its time, not at the tick.
            let idle = match *self.job_due.lock() {
                Some(due) => idle.min(Duration::from_millis(due.saturating_sub(now_ms()))),
                None => idle,
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

    /// One reconciliation pass over every stack, timed (`wharf_deployer_pass_duration_seconds`).
    pub async fn pass(&self) -> Result<Pass, Error> {
        let started = std::time::Instant::now();
        let pass = self.reconcile().await;
        crate::metrics::deployer_pass(started.elapsed(), pass.is_err());
        pass
    }

    async fn reconcile(&self) -> Result<Pass, Error> {
        if !self.m.role.leading() {
            return self.follow().await;
        }
        let t0 = std::time::Instant::now();
        let snap = self.snapshot().await?;
        let t_snap = t0.elapsed();
        let now = now_ms();
        let nodes_epoch = {
            let mut seen = self.nodes_seen.lock();
            let same_nodes = Arc::ptr_eq(&seen.0, &snap.nodes) || seen.0 == snap.nodes;
            if !same_nodes || seen.1 != snap.drivers_lost {
                seen.0 = snap.nodes.clone();
                seen.1 = snap.drivers_lost.clone();
                seen.2 += 1;
            }
            seen.2
        };
        let ctx = Context {
            now,
            node_timeout_ms: self.m.config.node_timeout.as_millis() as u64,
            nodes_epoch,
        };
        let mut wrote = false;
        *self.job_due.lock() = None;
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
                    .reconcile_service(&snap, svc, *rev, &ctx, &mut sched)
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
        wrote |= self.forget_jobs(&snap).await?;
        let t_plan = t0.elapsed();
        // A pass that wrote ends here: the next one, a moment later (`run`), reads what it wrote
        // and judges deployments and publishes from that. Doing it here would need everything
        // read again (bench/scale: a third of a pass). Only when writes keep coming does a pass
        // read again and publish, so agents are never kept waiting longer than `PUBLISH_EVERY`.
        let overdue = || {
            self.published
                .lock()
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
        *self.published.lock() = Some(std::time::Instant::now());
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

    /// The pass of a master that does not lead: no step, no write; only the desired states of
    /// the agents connected to it, made from what the leader wrote.
    async fn follow(&self) -> Result<Pass, Error> {
        let snap = self.snapshot().await?;
        self.publish(&snap).await?;
        *self.published.lock() = Some(std::time::Instant::now());
        Ok(Pass {
            wrote: false,
            quiet: false,
        })
    }

    /// Whether nothing in `snap` waits on time alone (see `Pass::quiet`).
    async fn quiet(&self, snap: &Snapshot) -> Result<bool, Error> {
        if !self.unplaceable.lock().is_empty()
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

    /// Plan one service and commit the plan; whether it wrote.
    async fn reconcile_service(
        &self,
        snap: &Snapshot,
        svc: &ServiceRecord,
        rev: u64,
        ctx: &Context,
        sched: &mut Sched,
    ) -> Result<bool, Error> {
        if svc.spec.is_job() {
            return self.reconcile_job(snap, svc, rev, ctx, sched).await;
        }
        let key = (svc.stack.clone(), svc.name.clone());
        let inputs = Settled {
            rev,
            instances: snap.of(&svc.stack, &svc.name).to_vec(),
            reports: snap.reports.version(&svc.stack, &svc.name),
            nodes: ctx.nodes_epoch,
        };
        {
            let settled = self.settled.lock();
            if settled.get(&key).is_some_and(|s| s.same(&inputs)) {
                return Ok(false);
            }
        }
        let since = self.unplaceable.lock().remove(&key).map(|(_, since)| since);
        let plan = plan_service(snap, svc, ctx, sched);
        {
            let mut settled = self.settled.lock();
            if plan.is_empty() && waits_on_nothing(snap, svc) {
                settled.insert(key.clone(), inputs);
            } else {
                settled.remove(&key);
            }
        }
        if let Some(why) = &plan.unplaceable {
            self.unplaceable
                .lock()
                .insert(key, (why.clone(), since.unwrap_or(ctx.now)));
        }
        self.commit(snap, svc, rev, plan, None).await
    }

    /// Plan one job and commit the plan with its job record: the decision to start a run (the
    /// scheduled times it settles) is written in the same transaction as the run's instance
    /// records, guarded by the job record's revision. Whether it wrote.
    async fn reconcile_job(
        &self,
        snap: &Snapshot,
        svc: &ServiceRecord,
        rev: u64,
        ctx: &Context,
        sched: &mut Sched,
    ) -> Result<bool, Error> {
        let key = (svc.stack.clone(), svc.name.clone());
        let plan = jobs::plan_job(snap, svc, ctx, sched);
        if let Some(due) = plan.wake_at {
            let mut next = self.job_due.lock();
            *next = Some(next.map_or(due, |n| n.min(due)));
        }
        if let Some(why) = &plan.plan.unplaceable {
            tracing::warn!(stack = %svc.stack, service = %svc.name, %why, "job run not placed");
        }
        let job_key = keys::job(&svc.stack, &svc.name);
        let job_rev = snap.jobs.get(&key).map_or(0, |(_, r)| *r);
        let mut service_plan = plan.plan;
        service_plan.unplaceable = None;
        if let Some(rec) = &plan.record {
            service_plan.ops.push(Op::put(job_key.clone(), encode(rec)));
        }
        let guard = Compare::unchanged_since(job_key, job_rev);
        self.commit(snap, svc, rev, service_plan, Some(guard)).await
    }

    /// Job records (and run requests) of services that are gone go.
    async fn forget_jobs(&self, snap: &Snapshot) -> Result<bool, Error> {
        let gone = |k: &(String, String)| !snap.services.contains_key(k);
        let ops: Vec<Op> = snap
            .jobs
            .keys()
            .filter(|k| gone(k))
            .map(|(st, sv)| Op::delete(keys::job(st, sv)))
            .chain(
                snap.job_requests
                    .keys()
                    .filter(|k| gone(k))
                    .map(|(st, sv)| Op::delete(keys::job_request(st, sv))),
            )
            .collect();
        if ops.is_empty() {
            return Ok(false);
        }
        self.m.store.txn(Txn::new().then(ops)).await?;
        Ok(true)
    }

    /// Write a service's plan in one transaction, guarded by the revisions of the service record
    /// and of its generation counter the plan was made from (and `extra`, a job record's): if
    /// either moved (a deploy, a scale, another writer), nothing is written and the next pass
    /// plans again. Whether it wrote.
    async fn commit(
        &self,
        snap: &Snapshot,
        svc: &ServiceRecord,
        rev: u64,
        plan: ServicePlan,
        extra: Option<Compare>,
    ) -> Result<bool, Error> {
        let ServicePlan {
            mut ops,
            service,
            next_generation,
            unplaceable: _,
        } = plan;
        if ops.is_empty() && service.is_none() {
            return Ok(false);
        }
        if let Some(next) = &service {
            ops.push(Op::put(keys::service(&svc.stack, &svc.name), encode(next)));
        }
        let mut guards = vec![Compare::unchanged_since(
            keys::service(&svc.stack, &svc.name),
            rev,
        )];
        guards.extend(extra);
        let (stored_gen, gen_rev) = snap
            .counters
            .get(&(svc.stack.clone(), svc.name.clone()))
            .copied()
            .unwrap_or((0, 0));
        if next_generation != stored_gen {
            let key = keys::generation(&svc.stack, &svc.name);
            guards.push(Compare::unchanged_since(key.clone(), gen_rev));
            ops.push(Op::put(
                key,
                encode(&model::GenerationRecord {
                    next: next_generation,
                }),
            ));
        }
        let txn = Txn::new().when(guards).then(ops);
        Ok(self.m.store.txn(txn).await?.succeeded)
    }
}

impl Deployer {
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
        ops.extend(self.m.own_objects_ops(&stack.name, &stack.spec).await?);
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
                &Actor::named("system"),
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
        let mut writes = Vec::new();
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
                let (progress, done) = self.service_progress(snap, &d, &sp.service, now);
                all_done &= done;
                if let Some(f) = &progress.error {
                    failures.push(format!("service {}: {f}", sp.service));
                }
                if let Some(n) = &progress.note {
                    notes.push(format!("service {}: {n}", sp.service));
                }
                *sp = progress;
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
                writes.push((
                    Compare::unchanged_since(kv.key.clone(), kv.mod_revision),
                    Op::put(kv.key.clone(), encode(&next)),
                ));
            }
        }
        self.write_guarded(writes).await
    }

    /// How one service of a deployment stands (`rollout::progress`, global services against their
    /// eligible nodes, an instance nowhere to place a failure once it lasted
    /// `UNPLACEABLE_FOR_MS`), and whether it is done.
    fn service_progress(
        &self,
        snap: &Snapshot,
        d: &Deployment,
        service: &str,
        now: u64,
    ) -> (ServiceProgress, bool) {
        let svc = snap
            .services
            .get(&(d.stack.clone(), service.to_string()))
            .map(|(s, _)| &**s);
        let insts: Vec<InstanceRecord> = snap
            .of(&d.stack, service)
            .iter()
            .map(|i| (**i).clone())
            .collect();
        if svc.is_some_and(|s| s.spec.is_job()) {
            // A job is deployed once its record is stored: its runs are its own business
            // (`wharf job ps`), not the deployment's.
            return (ServiceProgress::starting(service, 0), true);
        }
        let leftover = leftover_reports(snap, &d.stack, service, &insts);
        let mut p = match svc {
            // Global: every existing slot is wanted; one per eligible node is the goal.
            Some(g) if g.spec.deploy.mode == DeployMode::Global => {
                let mut eff = g.clone();
                eff.replicas = insts.iter().map(|i| i.slot + 1).max().unwrap_or(0);
                let mut p =
                    rollout::progress(Some(&eff), &insts, snap.newest(), leftover, &d.id, now);
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
            let key = (d.stack.clone(), service.to_string());
            let stuck = self.unplaceable.lock().get(&key).cloned();
            match stuck {
                Some((why, since)) if now.saturating_sub(since) >= UNPLACEABLE_FOR_MS => {
                    p.failure = Some(why)
                }
                Some((why, _)) => p.note = Some(format!("waiting for room: {why}")),
                None => {}
            }
        }
        // A rebalance is done once the deployer cleared its flag (the spread is even).
        let done = p.done() && !svc.is_some_and(|s| s.rebalance);
        let progress = ServiceProgress {
            service: service.to_string(),
            desired: p.desired,
            updated: p.updated,
            ready: p.ready,
            error: p.failure,
            note: p.note,
            instances: instance_progress(svc, &insts, snap),
        };
        (progress, done)
    }

    /// Guarded writes, 64 to a transaction; a batch where a record moved is written one by one.
    async fn write_guarded(&self, writes: Vec<(Compare, Op)>) -> Result<(), Error> {
        // Written together (one sync of the store per 64, not one per deployment: 200 initial
        // deployments at bench/scale's 5,000-node size took seconds a pass; 64 stays inside
        // etcd's default of 128 operations a transaction). Each write is guarded by its
        // record's revision; if any record of a batch moved meanwhile, the batch is written
        // one by one, so one busy record does not hold back the others.
        for batch in writes.chunks(64) {
            if batch.len() > 1 {
                let txn = Txn::new()
                    .when(batch.iter().map(|(c, _)| c.clone()))
                    .then(batch.iter().map(|(_, o)| o.clone()));
                if self.m.store.txn(txn).await?.succeeded {
                    continue;
                }
            }
            for (c, o) in batch {
                let txn = Txn::new().when([c.clone()]).then([o.clone()]);
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
        // Only records that changed since a plan that found nothing to do (against the same
        // allocations) can need a new subnet: the others' pairs were all allocated then.
        // Releases depend on the stacks and nodes alone. Anything else (a write, a full pool,
        // allocations changed under us) makes the next plan look at every record again.
        let stack_names: Vec<String> = snap.stacks.iter().map(|s| s.name.clone()).collect();
        let plan = {
            let mut memo = self.subnets_planned.lock();
            // Nothing it was made of changed (the same `Arc`s): still nothing to do.
            if let Some(was) = &*memo
                && Arc::ptr_eq(&was.subnets, &snap.subnets)
                && Arc::ptr_eq(&was.instances, &snap.instances)
                && Arc::ptr_eq(&was.nodes, &snap.nodes)
                && was.stacks == stack_names
            {
                return Ok(false);
            }
            let known: std::collections::HashSet<usize> = match &*memo {
                Some(was) if Arc::ptr_eq(&was.subnets, &snap.subnets) => was
                    .instances
                    .iter()
                    .map(|r| Arc::as_ptr(r) as usize)
                    .collect(),
                _ => Default::default(),
            };
            let mut needed = BTreeSet::new();
            for i in snap
                .instances
                .iter()
                .filter(|i| !known.contains(&(Arc::as_ptr(i) as usize)))
            {
                needed.insert((i.stack.clone(), i.node.clone()));
                if let Some(prev) = &i.previous {
                    needed.insert((i.stack.clone(), prev.node.clone()));
                }
            }
            let mut stacks: BTreeSet<String> = stack_names.iter().cloned().collect();
            stacks.extend(snap.of_service.keys().map(|(st, _)| st.clone()));
            let nodes = snap.nodes.iter().map(|n| n.id.clone()).collect();
            // Releases depend on the allocations, the stacks and the nodes alone: looked for
            // again only when one of them changed since a plan that found none.
            let mut checked = self.releases_checked.lock();
            let releases = !checked.as_ref().is_some_and(|(a, n, s)| {
                Arc::ptr_eq(a, &snap.subnets) && Arc::ptr_eq(n, &snap.nodes) && *s == stacks
            });
            let plan = network::plan(pool, &snap.subnets, &needed, &stacks, &nodes, releases);
            *checked = (plan.release_blocks.is_empty() && plan.release_subnets.is_empty())
                .then(|| (snap.subnets.clone(), snap.nodes.clone(), stacks.clone()));
            // A plan that only found the pool short is kept too: room comes back only with a
            // release, which changes the allocations (and with them this memo's key).
            *memo = plan.is_empty().then(|| SubnetsPlanned {
                subnets: snap.subnets.clone(),
                instances: snap.instances.clone(),
                nodes: snap.nodes.clone(),
                stacks: stack_names,
            });
            plan
        };
        {
            // Warned once per node (a full pool at 5,000 nodes is thousands of pairs), and
            // forgotten once the pair is no longer short: one hashed look-up per pair, not a
            // scan of the plan's list per logged pair (that was quadratic, minutes a pass).
            let mut logged = self.exhausted.lock();
            for (stack, node) in &plan.exhausted {
                let node_warned = logged
                    .range((node.clone(), String::new())..)
                    .next()
                    .is_some_and(|(n, _)| n == node);
                if logged.insert((node.clone(), stack.clone())) && !node_warned {
                    tracing::warn!(%stack, %node, %pool, "the network pool (or the node's block) is \
                        full: the stack's network on the node (and those of any other stack short \
                        of room there) gets a subnet of the engine's choosing, which other nodes \
                        cannot route to; widen `--network-pool`");
                }
            }
            let short: std::collections::HashSet<(&str, &str)> = plan
                .exhausted
                .iter()
                .map(|(s, n)| (n.as_str(), s.as_str()))
                .collect();
            logged.retain(|(n, s)| short.contains(&(n.as_str(), s.as_str())));
        }
        if plan.is_empty() {
            return Ok(false);
        }
        let mut txn = Txn::new();
        for (node, block) in &plan.add_blocks {
            let key = keys::block(node);
            txn = txn.when([Compare::missing(key.clone())]).then([Op::put(
                key,
                encode(&network::BlockRecord { block: *block }),
            )]);
        }
        for ((stack, node), subnet) in &plan.add_subnets {
            let key = keys::subnet(stack, node);
            txn = txn.when([Compare::missing(key.clone())]).then([Op::put(
                key,
                encode(&network::SubnetRecord { subnet: *subnet }),
            )]);
        }
        for node in &plan.release_blocks {
            txn = txn.then([Op::delete(keys::block(node))]);
        }
        for (stack, node) in &plan.release_subnets {
            txn = txn.then([Op::delete(keys::subnet(stack, node))]);
        }
        // A lost race (another writer allocated first) is retried on the next pass.
        self.m.store.txn(txn).await?;
        Ok(true)
    }
}

/// A service's discovery records and what they were made of.
type Discovered = (Settled, Arc<wharf_types::DiscoveryService>);

/// What a subnet plan that found nothing to do was made of: the allocations, the instance
/// records, the nodes and the stacks' names.
struct SubnetsPlanned {
    subnets: Arc<network::Allocations>,
    instances: Arc<Vec<Arc<InstanceRecord>>>,
    nodes: Arc<Vec<model::NodeRecord>>,
    stacks: Vec<String>,
}

type ReleasesChecked = (
    Arc<network::Allocations>,
    Arc<Vec<model::NodeRecord>>,
    BTreeSet<String>,
);

/// `CachedStore::stamp` of the node blocks and of the stack subnets.
type Stamps = ((usize, u64), (usize, u64));

type NodesSeen = (
    Arc<Vec<model::NodeRecord>>,
    BTreeSet<(String, wharf_types::DriverKind)>,
    u64,
);

/// What a service's plan was made from. A plan is a function of the snapshot and the clock; for
/// a service that waits on nothing (no time-driven step can come due) and whose record,
/// instance records (by pointer), reports (by version) and the cluster's nodes are the same, it
/// is the same empty plan, so the pass skips the service (bench/scale: 100 services planned
/// every pass for the one a deploy changes).
struct Settled {
    rev: u64,
    instances: Vec<Arc<InstanceRecord>>,
    reports: u64,
    nodes: u64,
}

impl Settled {
    fn same(&self, other: &Settled) -> bool {
        let Settled {
            rev,
            instances,
            reports,
            nodes,
        } = self;
        *rev == other.rev
            && *reports == other.reports
            && *nodes == other.nodes
            && instances.len() == other.instances.len()
            && instances
                .iter()
                .zip(&other.instances)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// Whether nothing about a service can come due with time alone: every slot it wants runs the
/// current spec on a node that is fine, past its monitor window, with nothing draining,
/// relocating, failed or waiting, and the service needs nothing else (global services, those
/// with `depends_on`, rebalancing: always planned).
fn waits_on_nothing(snap: &Snapshot, svc: &ServiceRecord) -> bool {
    let insts = snap.of(&svc.stack, &svc.name);
    svc.spec.deploy.mode != DeployMode::Global
        && svc.spec.depends_on.is_empty()
        && !svc.rebalance
        && !svc.spec.wharf.auto_rebalance
        && insts.len() == svc.replicas as usize
        && insts.iter().all(|i| {
            i.is_current(svc)
                && i.slot < svc.replicas
                && i.previous.is_none()
                && i.draining_since.is_none()
                && i.watch.failure.is_none()
                && (i.watch.is_empty() || i.watch.done_at.is_some())
                && snapshot::fit_for(snap, &i.node, svc.spec.driver) == NodeFit::Ok
        })
}

/// How long instances of a service must have been unplaceable before a deployment fails on it.
pub const UNPLACEABLE_FOR_MS: u64 = 3_000;

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
