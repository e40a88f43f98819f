//! Jobs, pure: when a job's runs start (its cron schedule, `wharf job run`, a new spec of a
//! `replicated-job`/`global-job`), what a scheduled time that cannot run becomes (skipped:
//! the previous run still runs under `concurrency: forbid`, or its `deadline` passed while the
//! master was down), how a run stands from its instances' reports, and which runs are kept.
//! The deployer (`deployer/jobs.rs`) places the runs and commits the `JobRecord` with their
//! instance records in one transaction; everything here is a function of the record, the spec
//! and the clock.
//!
//! **Crash safety.** `JobRecord::scheduled_through` says which scheduled times are decided.
//! A master that was down finds the times in `(scheduled_through, now]` undecided: only the
//! latest counts (several missed times collapse into one run), it runs if it is within the
//! deadline, and `scheduled_through` moves to it in the same transaction that creates the run,
//! so it never runs twice.

use wharf_compose::schedule::Schedule;
use wharf_types::{
    Concurrency, DeployMode, InstanceReport, InstanceState, JobRun, RestartCondition, RunState,
    RunTrigger, ServiceSpec,
};

use crate::model::JobRecord;

/// What `decide` asks for: the runs to start now, and when to look again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decided {
    /// Runs to start, each with its trigger and scheduled time.
    pub starts: Vec<(RunTrigger, Option<u64>)>,
    /// The next scheduled time after now: the deployer wakes then.
    pub wake_at: Option<u64>,
}

/// How long a due time waits for reports of a running run (see `decide`): a node that does
/// not report within it is taken as it last reported.
pub const UNSURE_WAIT_MS: u64 = 10_000;

/// The slot of task `task` of run `run`: runs of a job never share slots (so overlapping runs
/// and the kept history of runs each have their own instance records and containers).
pub fn slot(run: u64, task: u32) -> u32 {
    ((run % 4_000_000) * 1_000) as u32 + task.min(999)
}

/// A job record for a job first seen at `now`: its schedule counts from now on, and requests
/// made before it existed (`requested`) are not run again.
pub fn new_record(now: u64, requested: u64) -> JobRecord {
    JobRecord {
        scheduled_through: now,
        requests_seen: requested,
        ran_spec: None,
        next_run: 1,
        runs: Vec::new(),
    }
}

/// Decide what starts now. Updates `rec`: the scheduled times up to now are decided (a time
/// that cannot run is recorded as a skipped run), the requests are seen, the spec is run, and
/// runs replaced by a new one end.
///
/// `unsure`: some running run's instance has no report yet (just created, or the master just
/// started and the agents have not reported): under `forbid` a due time then waits for the
/// reports (at most `UNSURE_WAIT_MS`) rather than be skipped for a run that may have ended while
/// the master was down.
pub fn decide(
    spec: &ServiceSpec,
    spec_hash: &str,
    rec: &mut JobRecord,
    requested: u64,
    now: u64,
    unsure: bool,
) -> Decided {
    let mut d = Decided::default();
    if let Some(js) = &spec.wharf.schedule {
        let active = rec.runs.iter().any(|r| r.state == RunState::Running);
        // Checked at deploy; a spec that somehow fails to parse runs nothing on schedule.
        if let Ok(schedule) = Schedule::parse(&js.cron, js.timezone.as_deref()) {
            let wait = unsure
                && active
                && js.concurrency == Concurrency::Forbid
                && schedule
                    .latest_in(rec.scheduled_through, now)
                    .is_some_and(|at| now - at <= UNSURE_WAIT_MS);
            if wait {
                // Decided once the reports are in (a report wakes the deployer).
            } else if let Some(at) = schedule.latest_in(rec.scheduled_through, now) {
                rec.scheduled_through = at;
                let late = now - at;
                if js.deadline_ms.is_some_and(|dl| late > dl) {
                    skip(
                        rec,
                        at,
                        now,
                        format!("missed by {}, past the deadline", secs(late)),
                    );
                } else if active && js.concurrency == Concurrency::Forbid {
                    skip(rec, at, now, "the previous run was still running".into());
                } else {
                    if js.concurrency == Concurrency::Replace {
                        replace_running(rec, now, "replaced by the next scheduled run");
                    }
                    d.starts.push((RunTrigger::Schedule, Some(at)));
                }
            }
            d.wake_at = schedule.next_after(rec.scheduled_through.max(now));
        }
    } else if matches!(
        spec.deploy.mode,
        DeployMode::ReplicatedJob | DeployMode::GlobalJob
    ) && rec.ran_spec.as_deref() != Some(spec_hash)
    {
        // A new spec runs once (as Swarm's jobs on a service update); what still ran of the
        // old one stops.
        rec.ran_spec = Some(spec_hash.to_string());
        replace_running(rec, now, "replaced by a run of a new spec");
        d.starts.push((RunTrigger::Deploy, None));
    }
    if requested > rec.requests_seen {
        // However many were asked since the last look: one run (they asked for "now").
        rec.requests_seen = requested;
        d.starts.push((RunTrigger::Manual, None));
    }
    d
}

fn secs(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

/// Record scheduled time `at` as a skipped run.
fn skip(rec: &mut JobRecord, at: u64, now: u64, why: String) {
    let id = rec.next_run;
    rec.next_run += 1;
    rec.runs.push(JobRun {
        id,
        trigger: RunTrigger::Schedule,
        scheduled_at: Some(at),
        created_at: now,
        started_at: None,
        ended_at: Some(now),
        state: RunState::Skipped,
        exit_code: None,
        message: Some(why),
        tasks: Vec::new(),
    });
}

/// End every running run as replaced (its instance records go: see `kept_slots`).
fn replace_running(rec: &mut JobRecord, now: u64, why: &str) {
    for r in rec.runs.iter_mut().filter(|r| r.state == RunState::Running) {
        r.state = RunState::Replaced;
        r.ended_at = Some(now);
        r.message = Some(why.to_string());
    }
}

/// Bring the running runs up to date with their instances' reports (`report` finds the report
/// of a slot's generation): start and end times, exit codes; a run ends once every instance is
/// done, succeeded when all exited 0. An instance is done when it exited 0, or exited non-zero
/// with no restart coming (its restart condition is `none`, or the agent gave up).
pub fn observe<'a>(
    spec: &ServiceSpec,
    rec: &mut JobRecord,
    report: impl Fn(u32, u64) -> Option<&'a InstanceReport>,
) {
    let never_restarts = spec.restart_condition() == RestartCondition::None;
    for run in rec.runs.iter_mut().filter(|r| r.state == RunState::Running) {
        for t in run.tasks.iter_mut().filter(|t| t.exit_code.is_none()) {
            let Some(r) = report(t.slot, t.generation) else {
                continue;
            };
            t.started_at = t.started_at.or(r.started_at);
            t.restarts = r.restarts;
            let done = match (r.state, r.exit_code) {
                (InstanceState::Exited, Some(0)) => true,
                (InstanceState::Exited, Some(_)) => never_restarts,
                (InstanceState::Failed, Some(_)) => true,
                _ => false,
            };
            if done {
                t.exit_code = r.exit_code;
                t.ended_at = r.finished_at.or(t.started_at);
            }
        }
        run.started_at = run.tasks.iter().filter_map(|t| t.started_at).min();
        if !run.tasks.is_empty() && run.tasks.iter().all(|t| t.exit_code.is_some()) {
            let failed = run
                .tasks
                .iter()
                .find_map(|t| t.exit_code.filter(|c| *c != 0));
            run.exit_code = Some(failed.unwrap_or(0));
            run.state = if failed.is_some() {
                RunState::Failed
            } else {
                RunState::Succeeded
            };
            run.ended_at = run.tasks.iter().filter_map(|t| t.ended_at).max();
        }
    }
}

/// Keep the runs still running and the last `history` that ended (oldest go first).
pub fn trim(rec: &mut JobRecord, history: u32) {
    let ended = rec
        .runs
        .iter()
        .filter(|r| r.state != RunState::Running)
        .count();
    let mut drop = ended.saturating_sub(history as usize);
    rec.runs.retain(|r| {
        if drop > 0 && r.state != RunState::Running {
            drop -= 1;
            false
        } else {
            true
        }
    });
}

/// The slots whose instance records a job keeps: the tasks of its running runs and of the
/// ended ones kept (their exited containers keep their logs), but not of replaced runs.
pub fn kept_slots(rec: &JobRecord) -> std::collections::BTreeSet<(u32, u64)> {
    rec.runs
        .iter()
        .filter(|r| r.state != RunState::Replaced)
        .flat_map(|r| r.tasks.iter().map(|t| (t.slot, t.generation)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::{JobSchedule, RunTask};

    /// 2026-03-29 00:00:00 UTC.
    const T0: u64 = 1_774_742_400_000;
    const S: u64 = 1_000;

    fn every_4s(concurrency: Concurrency, deadline_ms: Option<u64>) -> ServiceSpec {
        let mut spec = ServiceSpec::default();
        spec.wharf.schedule = Some(JobSchedule {
            cron: "*/4 * * * * *".into(),
            timezone: None,
            concurrency,
            deadline_ms,
        });
        spec
    }

    fn running(id: u64) -> JobRun {
        JobRun {
            id,
            trigger: RunTrigger::Schedule,
            scheduled_at: Some(T0),
            created_at: T0,
            started_at: None,
            ended_at: None,
            state: RunState::Running,
            exit_code: None,
            message: None,
            tasks: vec![RunTask {
                slot: slot(id, 0),
                generation: id,
                node: "n1".into(),
                started_at: None,
                ended_at: None,
                exit_code: None,
                restarts: 0,
            }],
        }
    }

    /// One case: a record whose times are decided through `through` (with a run still running
    /// or not), looked at `now`: what starts, what is recorded, when it wakes.
    struct Case {
        concurrency: Concurrency,
        deadline_ms: Option<u64>,
        through: u64,
        active: bool,
        now: u64,
        starts: &'static [Option<u64>],
        skipped: &'static [(u64, &'static str)],
        replaced: bool,
        through_after: u64,
        wake_at: u64,
    }

    fn check(c: Case) {
        let spec = every_4s(c.concurrency, c.deadline_ms);
        let mut rec = new_record(c.through, 0);
        if c.active {
            rec.runs.push(running(1));
            rec.next_run = 2;
        }
        let d = decide(&spec, "h", &mut rec, 0, c.now, false);
        let starts: Vec<Option<u64>> = d.starts.iter().map(|(_, at)| *at).collect();
        assert_eq!(starts, c.starts, "starts");
        let skipped: Vec<(u64, String)> = rec
            .runs
            .iter()
            .filter(|r| r.state == RunState::Skipped)
            .map(|r| (r.scheduled_at.unwrap(), r.message.clone().unwrap()))
            .collect();
        assert_eq!(skipped.len(), c.skipped.len(), "skipped: {skipped:?}");
        for ((at, why), (want_at, want_why)) in skipped.iter().zip(c.skipped) {
            assert_eq!(at, want_at);
            assert!(why.contains(want_why), "{why} should say {want_why}");
        }
        let replaced = rec.runs.iter().any(|r| r.state == RunState::Replaced);
        assert_eq!(replaced, c.replaced, "replaced");
        assert_eq!(rec.scheduled_through, c.through_after, "scheduled_through");
        assert_eq!(d.wake_at, Some(c.wake_at), "wake_at");
        // Looking again at the same moment decides nothing more: never twice.
        let again = decide(&spec, "h", &mut rec, 0, c.now, false);
        assert!(
            again.starts.is_empty(),
            "a second look started {:?}",
            again.starts
        );
    }

    const BASE: Case = Case {
        concurrency: Concurrency::Forbid,
        deadline_ms: None,
        through: T0,
        active: false,
        now: T0 + 4 * S,
        starts: &[Some(T0 + 4 * S)],
        skipped: &[],
        replaced: false,
        through_after: T0 + 4 * S,
        wake_at: T0 + 8 * S,
    };

    #[test]
    fn a_due_time_starts_a_run_and_the_next_one_wakes_the_deployer() {
        check(BASE);
        // A moment late (the pass came 300 ms after the time): still that time.
        check(Case {
            now: T0 + 4 * S + 300,
            ..BASE
        });
        // Nothing due yet: nothing starts, wake at the next time.
        check(Case {
            now: T0 + 3 * S,
            starts: &[],
            through_after: T0,
            wake_at: T0 + 4 * S,
            ..BASE
        });
    }

    #[test]
    fn missed_times_collapse_into_one_run() {
        // Down from T0 to T0+21s: 4, 8, 12, 16, 20 were missed; one run, for 20.
        check(Case {
            now: T0 + 21 * S,
            starts: &[Some(T0 + 20 * S)],
            through_after: T0 + 20 * S,
            wake_at: T0 + 24 * S,
            ..BASE
        });
    }

    #[test]
    fn a_time_past_its_deadline_is_skipped() {
        check(Case {
            deadline_ms: Some(500),
            now: T0 + 21 * S,
            starts: &[],
            skipped: &[(T0 + 20 * S, "past the deadline")],
            through_after: T0 + 20 * S,
            wake_at: T0 + 24 * S,
            ..BASE
        });
        // Within it: runs.
        check(Case {
            deadline_ms: Some(2_000),
            now: T0 + 21 * S,
            starts: &[Some(T0 + 20 * S)],
            through_after: T0 + 20 * S,
            wake_at: T0 + 24 * S,
            ..BASE
        });
    }

    #[test]
    fn concurrency_forbid_replace_allow() {
        check(Case {
            active: true,
            starts: &[],
            skipped: &[(T0 + 4 * S, "still running")],
            ..BASE
        });
        check(Case {
            concurrency: Concurrency::Replace,
            active: true,
            replaced: true,
            ..BASE
        });
        check(Case {
            concurrency: Concurrency::Allow,
            active: true,
            ..BASE
        });
    }

    #[test]
    fn under_forbid_a_due_time_waits_for_the_reports_of_the_running_run() {
        // The master just came back: run 1 may have ended while it was down. Skipping the due
        // time for it would lose the missed run; the time stays undecided until reports come.
        let spec = every_4s(Concurrency::Forbid, None);
        let mut rec = new_record(T0, 0);
        rec.runs.push(running(1));
        rec.next_run = 2;
        let d = decide(&spec, "h", &mut rec, 0, T0 + 9 * S, true);
        assert!(d.starts.is_empty());
        assert_eq!(rec.scheduled_through, T0, "nothing decided");
        assert_eq!(rec.runs.len(), 1, "nothing skipped");
        // No report for longer than the wait: decided on what is known (skipped).
        let mut minutely = spec.clone();
        minutely.wharf.schedule.as_mut().unwrap().cron = "0 * * * * *".into();
        let mut late = new_record(T0 - 1, 0);
        late.runs.push(running(1));
        late.next_run = 2;
        decide(&minutely, "h", &mut late, 0, T0 + UNSURE_WAIT_MS, true);
        assert_eq!(late.runs.len(), 1, "within the wait: nothing decided");
        decide(&minutely, "h", &mut late, 0, T0 + UNSURE_WAIT_MS + 1, true);
        assert_eq!(late.runs[1].state, RunState::Skipped);
        // The report says it ended: the latest missed time runs.
        rec.runs[0].state = RunState::Succeeded;
        let d = decide(&spec, "h", &mut rec, 0, T0 + 9 * S + 500, false);
        assert_eq!(d.starts, vec![(RunTrigger::Schedule, Some(T0 + 8 * S))]);
    }

    #[test]
    fn schedules_are_read_in_their_time_zone() {
        // 03:00 every day in Berlin: on 2026-03-29 that is 01:00 UTC (before the clocks move).
        let mut spec = ServiceSpec::default();
        spec.wharf.schedule = Some(JobSchedule {
            cron: "0 0 3 * * *".into(),
            timezone: Some("Europe/Berlin".into()),
            ..Default::default()
        });
        let mut rec = new_record(T0, 0);
        let d = decide(&spec, "h", &mut rec, 0, T0, false);
        assert_eq!(d.wake_at, Some(T0 + 3_600 * S));
        let d = decide(&spec, "h", &mut rec, 0, T0 + 3_600 * S + 10, false);
        assert_eq!(d.starts, vec![(RunTrigger::Schedule, Some(T0 + 3_600 * S))]);
    }

    #[test]
    fn requests_and_new_specs_start_one_run_each() {
        let mut spec = ServiceSpec::default();
        spec.deploy.mode = DeployMode::ReplicatedJob;
        // A request made before the job existed is not run again.
        let mut rec = new_record(T0, 2);
        let d = decide(&spec, "h1", &mut rec, 2, T0, false);
        assert_eq!(d.starts, vec![(RunTrigger::Deploy, None)]);
        assert_eq!(d.wake_at, None);
        // Two requests since: one run. The same spec: no run of its own.
        let d = decide(&spec, "h1", &mut rec, 4, T0, false);
        assert_eq!(d.starts, vec![(RunTrigger::Manual, None)]);
        let d = decide(&spec, "h1", &mut rec, 4, T0, false);
        assert!(d.starts.is_empty());
        // A new spec replaces what still runs of the old one.
        rec.runs.push(running(1));
        let d = decide(&spec, "h2", &mut rec, 4, T0 + S, false);
        assert_eq!(d.starts, vec![(RunTrigger::Deploy, None)]);
        assert_eq!(rec.runs[0].state, RunState::Replaced);
    }

    fn report(state: InstanceState, exit_code: Option<i64>) -> InstanceReport {
        let mut r = crate::testdata::report("s.j.1000", 1, state, wharf_types::Health::None);
        r.exit_code = exit_code;
        r.started_at = Some(T0 + 100);
        r.finished_at = exit_code.map(|_| T0 + 900);
        r
    }

    #[test]
    fn a_run_ends_when_its_instances_are_done() {
        // (restart condition, report, run state after, exit code)
        let cases = [
            (
                RestartCondition::Any,
                report(InstanceState::Running, None),
                RunState::Running,
                None,
            ),
            (
                RestartCondition::Any,
                report(InstanceState::Exited, Some(0)),
                RunState::Succeeded,
                Some(0),
            ),
            // on-failure (what `any` means for a job): a failure is retried, the run goes on.
            (
                RestartCondition::Any,
                report(InstanceState::Exited, Some(5)),
                RunState::Running,
                None,
            ),
            (
                RestartCondition::OnFailure,
                report(InstanceState::Failed, Some(5)),
                RunState::Failed,
                Some(5),
            ),
            (
                RestartCondition::None,
                report(InstanceState::Exited, Some(5)),
                RunState::Failed,
                Some(5),
            ),
        ];
        for (condition, rep, state, code) in cases {
            let mut spec = ServiceSpec::default();
            spec.deploy.mode = DeployMode::ReplicatedJob;
            spec.restart.condition = condition;
            let mut rec = new_record(T0, 0);
            rec.runs.push(running(1));
            observe(&spec, &mut rec, |_, _| Some(&rep));
            let run = &rec.runs[0];
            assert_eq!(
                (run.state, run.exit_code),
                (state, code),
                "{condition:?} {rep:?}"
            );
            assert_eq!(run.started_at, Some(T0 + 100));
            if state != RunState::Running {
                assert_eq!(run.ended_at, Some(T0 + 900));
                assert_eq!(run.duration_ms(), Some(800));
            }
        }
    }

    #[test]
    fn history_keeps_the_last_ended_runs_and_every_running_one() {
        let mut rec = new_record(T0, 0);
        for id in 1..=5 {
            let mut r = running(id);
            if id != 2 {
                r.state = RunState::Succeeded;
            }
            rec.runs.push(r);
        }
        rec.runs[3].state = RunState::Replaced;
        trim(&mut rec, 2);
        let ids: Vec<u64> = rec.runs.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![2, 4, 5]);
        // Replaced runs keep no instance.
        let kept: Vec<u32> = kept_slots(&rec).into_iter().map(|(s, _)| s).collect();
        assert_eq!(kept, vec![slot(2, 0), slot(5, 0)]);
    }
}
