//! The deployer's step for one job (a service that runs to completion: `crate::jobs` decides
//! when), pure like `plan.rs`: the job record brought up to date with the reports, the runs that
//! start now placed (a task per replica, or per eligible node for `global-job`), each task an
//! instance record of its own slot, and the instance records of runs no longer kept removed.
//! The committer writes the job record with them in one transaction (`Deployer::commit`).

use wharf_scheduler::Request;
use wharf_store::Op;
use wharf_types::{JobRun, RunState, RunTask};

use crate::jobs;
use crate::model::{InstanceRecord, JobRecord, ServiceRecord, Watch, encode, keys};

use super::plan::{Context, Sched, ServicePlan, first_generation, put};
use super::snapshot::{Snapshot, eligible_nodes};

/// A job's step: the service plan (instance records, generation counter), the job record when
/// it changed, and when its schedule next comes due.
pub(super) struct JobPlan {
    pub(super) plan: ServicePlan,
    pub(super) record: Option<JobRecord>,
    pub(super) wake_at: Option<u64>,
}

/// The next step of job `svc`, from the snapshot and the clock alone.
pub(super) fn plan_job(
    snap: &Snapshot,
    svc: &ServiceRecord,
    ctx: &Context,
    sched: &mut Sched,
) -> JobPlan {
    let key = (svc.stack.clone(), svc.name.clone());
    let stored = snap.jobs.get(&key).map(|(r, _)| r);
    let requested = snap.job_requests.get(&key).copied().unwrap_or(0);
    let mut rec = stored
        .cloned()
        .unwrap_or_else(|| jobs::new_record(ctx.now, requested));
    let id_of = |slot: u32| format!("{}.{}.{slot}", svc.stack, svc.name);
    jobs::observe(&svc.spec, &mut rec, |slot, generation| {
        snap.reports.of_generation(&id_of(slot), generation)
    });
    // A running run's instance not reported yet, or only by a node that has not reported to
    // this master (a report stored before a crash): under `forbid`, due times wait for it.
    let unsure = rec
        .runs
        .iter()
        .filter(|r| r.state == RunState::Running)
        .flat_map(|r| &r.tasks)
        .any(|t| {
            t.exit_code.is_none()
                && (!snap.reporting.contains(&t.node)
                    || snap
                        .reports
                        .of_generation(&id_of(t.slot), t.generation)
                        .is_none())
        });
    let decided = jobs::decide(
        &svc.spec,
        &svc.spec_hash,
        &mut rec,
        requested,
        ctx.now,
        unsure,
    );
    let mut next_gen = first_generation(snap, svc);
    let mut ops = Vec::new();
    let mut unplaceable = None;
    for (trigger, scheduled_at) in decided.starts {
        let id = rec.next_run;
        rec.next_run += 1;
        let (tasks, why) = new_run(snap, svc, id, ctx.now, sched, &mut next_gen, &mut ops);
        let ended = tasks.is_empty().then_some(ctx.now);
        let state = match (&why, tasks.is_empty()) {
            (Some(_), true) => RunState::Failed,
            (None, true) => RunState::Succeeded,
            _ => RunState::Running,
        };
        unplaceable = unplaceable.or(why.clone());
        rec.runs.push(JobRun {
            id,
            trigger,
            scheduled_at,
            created_at: ctx.now,
            started_at: None,
            ended_at: ended,
            state,
            exit_code: None,
            message: why,
            tasks,
        });
    }
    jobs::trim(
        &mut rec,
        svc.spec
            .wharf
            .history
            .unwrap_or(wharf_types::DEFAULT_JOB_HISTORY),
    );
    // Level-triggered: every instance record of the job that no kept run names goes (replaced
    // runs, runs past the history, leftovers of a crash).
    let kept = jobs::kept_slots(&rec);
    for i in snap.of(&svc.stack, &svc.name) {
        if !kept.contains(&(i.slot, i.generation)) {
            ops.push(Op::delete(keys::instance(&svc.stack, &svc.name, i.slot)));
        }
    }
    JobPlan {
        record: (stored != Some(&rec)).then_some(rec),
        plan: ServicePlan {
            ops,
            service: None,
            next_generation: next_gen,
            unplaceable,
        },
        wake_at: decided.wake_at,
    }
}

/// The tasks of run `id`, each an instance record of its own slot (put into `ops`), with
/// generations from `next_gen` on; and why some could not be placed.
fn new_run(
    snap: &Snapshot,
    svc: &ServiceRecord,
    id: u64,
    now: u64,
    sched: &mut Sched,
    next_gen: &mut u64,
    ops: &mut Vec<Op>,
) -> (Vec<RunTask>, Option<String>) {
    let (nodes, why) = targets(snap, svc, sched);
    let mut tasks = Vec::new();
    for (k, node) in nodes.into_iter().enumerate() {
        let slot = jobs::slot(id, k as u32);
        let inst = InstanceRecord {
            stack: svc.stack.clone(),
            service: svc.name.clone(),
            slot,
            node: node.clone(),
            generation: *next_gen,
            spec_hash: svc.spec_hash.clone(),
            restart_nonce: svc.restart_nonce,
            spec: svc.spec.clone(),
            created_at: now,
            previous: None,
            draining_since: None,
            watch: Watch::default(),
            lost: Vec::new(),
        };
        put(
            ops,
            keys::instance(&svc.stack, &svc.name, slot),
            encode(&inst),
        );
        tasks.push(RunTask {
            slot,
            generation: *next_gen,
            node,
            started_at: None,
            ended_at: None,
            exit_code: None,
            restarts: 0,
        });
        *next_gen += 1;
    }
    (tasks, why)
}

/// The nodes of a new run's tasks: one per eligible node (`global-job`), else `replicas`
/// placed by the scheduler; with why some could not be placed.
fn targets(
    snap: &Snapshot,
    svc: &ServiceRecord,
    sched: &mut Sched,
) -> (Vec<String>, Option<String>) {
    let req = Request::for_service(&svc.stack, &svc.name, &svc.spec);
    if svc.spec.deploy.mode.is_global() {
        let nodes = eligible_nodes(snap, svc);
        for n in &nodes {
            sched.record(n, &req);
        }
        let why = nodes
            .is_empty()
            .then(|| "no eligible node to run on".to_string());
        return (nodes, why);
    }
    let mut nodes = Vec::new();
    for _ in 0..svc.replicas.min(1_000) {
        match sched.place(snap, &req) {
            Ok(n) => nodes.push(n),
            Err(reason) => {
                return (
                    nodes,
                    Some(format!(
                        "cannot place a run of {}.{}: {reason}",
                        svc.stack, svc.name
                    )),
                );
            }
        }
    }
    (nodes, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployer::plan::tests::{node, snapshot};
    use crate::testdata;
    use wharf_types::{DeployMode, Health, InstanceState, NodeState, ServiceSpec};

    fn job(mode: DeployMode, replicas: u32) -> ServiceRecord {
        let mut spec = ServiceSpec::default();
        spec.deploy.mode = mode;
        spec.restart.condition = wharf_types::RestartCondition::None;
        let mut svc = testdata::service("j", spec);
        svc.replicas = replicas;
        svc
    }

    fn nodes(ids: &[&str]) -> Vec<crate::model::NodeRecord> {
        ids.iter().map(|id| node(id, NodeState::Ready, 0)).collect()
    }

    fn ctx(now: u64) -> Context {
        Context {
            now,
            node_timeout_ms: 1_000,
            nodes_epoch: 0,
        }
    }

    /// The instance records of a run's tasks, as the committer wrote them.
    fn instances(svc: &ServiceRecord, run: &JobRun) -> Vec<InstanceRecord> {
        run.tasks
            .iter()
            .map(|t| {
                let mut i = testdata::instance("j", t.slot, t.generation, None);
                i.node = t.node.clone();
                i.spec = svc.spec.clone();
                i
            })
            .collect()
    }

    #[test]
    fn a_replicated_job_runs_its_replicas_once_and_records_exit_codes() {
        let svc = job(DeployMode::ReplicatedJob, 3);
        let snap = snapshot(&svc, vec![], nodes(&["n1", "n2"]), vec![]);
        let p = plan_job(&snap, &svc, &ctx(1_000), &mut Sched::default());
        let rec = p.record.expect("a job record");
        assert_eq!(rec.runs.len(), 1);
        let run = rec.runs[0].clone();
        assert_eq!(run.state, RunState::Running);
        assert_eq!(run.tasks.len(), 3);
        assert_eq!(p.plan.ops.len(), 3, "an instance record per task");
        assert_eq!(p.plan.next_generation, 4);

        // Their instances report: two exit 0, one 5 (restart condition none).
        let mut by_node: std::collections::BTreeMap<String, Vec<_>> = Default::default();
        for (k, t) in run.tasks.iter().enumerate() {
            let mut r = testdata::report(
                &format!("s.j.{}", t.slot),
                t.generation,
                InstanceState::Exited,
                Health::None,
            );
            r.exit_code = Some(if k == 1 { 5 } else { 0 });
            r.started_at = Some(1_100);
            r.finished_at = Some(1_500 + k as u64);
            by_node.entry(t.node.clone()).or_default().push(r);
        }
        let reports: Vec<(&str, Vec<_>)> = by_node
            .iter()
            .map(|(n, l)| (n.as_str(), l.clone()))
            .collect();
        let mut snap = snapshot(&svc, instances(&svc, &run), nodes(&["n1", "n2"]), reports);
        snap.jobs = [(("s".into(), "j".into()), (rec, 1))].into();
        let p = plan_job(&snap, &svc, &ctx(2_000), &mut Sched::default());
        let rec = p.record.expect("the run ended");
        let run = &rec.runs[0];
        assert_eq!(run.state, RunState::Failed);
        assert_eq!(run.exit_code, Some(5));
        assert_eq!((run.started_at, run.ended_at), (Some(1_100), Some(1_502)));
        let codes: Vec<_> = run.tasks.iter().map(|t| t.exit_code).collect();
        assert_eq!(codes, vec![Some(0), Some(5), Some(0)]);
        assert!(p.plan.ops.is_empty(), "nothing restarted, nothing removed");

        // The same spec does not run again.
        snap.jobs = [(("s".into(), "j".into()), (rec, 2))].into();
        let p = plan_job(&snap, &svc, &ctx(3_000), &mut Sched::default());
        assert!(p.record.is_none());
        assert!(p.plan.ops.is_empty());
    }

    #[test]
    fn a_global_job_runs_once_per_eligible_node() {
        let svc = job(DeployMode::GlobalJob, 1);
        let snap = snapshot(&svc, vec![], nodes(&["n1", "n2", "n3"]), vec![]);
        let p = plan_job(&snap, &svc, &ctx(1_000), &mut Sched::default());
        let rec = p.record.expect("a job record");
        let on: Vec<&str> = rec.runs[0].tasks.iter().map(|t| t.node.as_str()).collect();
        assert_eq!(on, vec!["n1", "n2", "n3"]);
    }

    #[test]
    fn runs_past_the_history_take_their_instances_with_them() {
        let mut svc = job(DeployMode::ReplicatedJob, 1);
        std::sync::Arc::make_mut(&mut svc.spec).wharf.history = Some(1);
        let snap = snapshot(&svc, vec![], nodes(&["n1"]), vec![]);
        let p = plan_job(&snap, &svc, &ctx(1_000), &mut Sched::default());
        let mut rec = p.record.unwrap();
        rec.runs[0].state = RunState::Succeeded;
        let first = rec.runs[0].clone();
        // A second run (asked for): the first ends up past the history of 1 once it ends.
        let mut snap = snapshot(&svc, instances(&svc, &first), nodes(&["n1"]), vec![]);
        snap.jobs = [(("s".into(), "j".into()), (rec, 1))].into();
        snap.job_requests = [(("s".into(), "j".into()), 1)].into();
        let p = plan_job(&snap, &svc, &ctx(2_000), &mut Sched::default());
        let rec = p.record.unwrap();
        assert_eq!(
            rec.runs.len(),
            2,
            "a running run is kept whatever the history"
        );
        assert!(p.plan.ops.iter().all(|op| !matches!(op, Op::Delete { .. })));
        let mut rec = rec;
        rec.runs[1].state = RunState::Succeeded;
        snap.jobs = [(("s".into(), "j".into()), (rec, 2))].into();
        let p = plan_job(&snap, &svc, &ctx(3_000), &mut Sched::default());
        let rec = p.record.unwrap();
        assert_eq!(rec.runs.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2]);
        let deleted: Vec<&Op> = p
            .plan
            .ops
            .iter()
            .filter(|op| matches!(op, Op::Delete { .. }))
            .collect();
        assert_eq!(
            deleted,
            vec![&Op::delete(keys::instance("s", "j", jobs::slot(1, 0)))]
        );
    }
}
