//! Rollout planning, pure: from a service's desired state and what its instances report, decide the
//! next step (create, replace or remove slots) and judge how a deployment stands.
//!
//! The deployer calls `plan` on every pass. It is level-triggered: it looks only at the current
//! records and reports, never at what happened before, so a restart of the master mid-rollout just
//! continues from where the records are.

use std::collections::BTreeMap;

use wharf_types::{
    FailureAction, Health, InstanceReport, InstanceState, RestartCondition, UpdateConfig,
};

use crate::model::{InstanceRecord, Rollback, ServiceRecord, SpecRevision, Watch};

/// Restarts after which an instance that keeps exiting counts as failed for a deployment.
pub const CRASH_LOOP_RESTARTS: u32 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the missing slot.
    Create { slot: u32 },
    /// Give the slot a new generation with the current spec (the agent replaces the instance).
    Replace { slot: u32 },
    /// Remove the slot (scale down, service removed).
    Remove { slot: u32 },
}

/// The report of the instance's current generation, if the agent sent one.
pub fn report_of<'a>(
    inst: &InstanceRecord,
    reports: &'a BTreeMap<String, InstanceReport>,
) -> Option<&'a InstanceReport> {
    reports
        .get(&inst.id())
        .filter(|r| r.generation == inst.generation)
}

/// Running, and healthy when there is a health check.
pub fn is_ready(report: Option<&InstanceReport>) -> bool {
    report.is_some_and(|r| {
        r.state == InstanceState::Running && matches!(r.health, Health::None | Health::Healthy)
    })
}

/// Why an instance counts as failed for a deployment, if it does.
pub fn failure(inst: &InstanceRecord, report: Option<&InstanceReport>) -> Option<String> {
    let r = report?;
    let id = inst.id();
    if r.health == Health::Unhealthy {
        let out = r.health_output.as_deref().unwrap_or("no output").trim();
        return Some(format!(
            "instance {id} is unhealthy: health check failed: {out}"
        ));
    }
    match r.state {
        InstanceState::Failed => Some(format!(
            "instance {id} failed: {}",
            r.error.as_deref().unwrap_or("unknown error")
        )),
        InstanceState::Exited | InstanceState::Pending if r.exit_code.is_some() => {
            let code = r.exit_code.unwrap_or_default();
            let gives_up = inst.spec.restart.condition == RestartCondition::None
                || (inst.spec.restart.condition == RestartCondition::OnFailure && code == 0);
            if gives_up {
                (code != 0).then(|| format!("instance {id} exited with code {code}"))
            } else if r.restarts >= CRASH_LOOP_RESTARTS {
                Some(format!(
                    "instance {id} is crash-looping: exited with code {code} after {} restarts",
                    r.restarts
                ))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The update settings in force: the rollback's while rolling back, else `update_config`.
pub fn config(svc: &ServiceRecord) -> &UpdateConfig {
    svc.rollback
        .as_ref()
        .map(|r| &r.config)
        .unwrap_or(&svc.spec.deploy.update_config)
}

/// What happens once failures exceed `max_failure_ratio`: a rollback only when there is something
/// to roll back to (and never a rollback of a rollback); else pause.
pub fn on_failure(svc: &ServiceRecord) -> FailureAction {
    match config(svc).failure_action {
        FailureAction::Rollback if !svc.may_roll_back() => FailureAction::Pause,
        a => a,
    }
}

/// Failures beyond the tolerated fraction of replicas (`failed / replicas > ratio`, as Swarm).
pub fn exceeded(failed: usize, replicas: u32, permille: u32) -> bool {
    failed > 0 && failed as u64 * 1000 > u64::from(permille) * u64::from(replicas)
}

/// The instance's watch after looking at its report now: first ready, done once ready through its
/// monitor window, failed (sticky) when it fails before that. Done watches never change.
pub fn observe(inst: &InstanceRecord, report: Option<&InstanceReport>, now: u64) -> Watch {
    let mut w = inst.watch.clone();
    if w.done_at.is_some() {
        return w;
    }
    let fail = failure(inst, report).or_else(|| {
        // Until the instance is done (started, and ready through its monitor window) any exit
        // counts, restarted or not: a service that crashes 200 ms after each start must not
        // deploy "successfully" because it was seen running in between. Only a one-shot task
        // that ends as its restart policy allows (code 0, no restart) is not a failure.
        let r = report?;
        let id = inst.id();
        if r.restarts > 0 {
            return Some(format!(
                "instance {id} exited and was restarted {} time{} before it was done (monitor {})",
                r.restarts,
                if r.restarts == 1 { "" } else { "s" },
                millis(w.monitor_ms),
            ));
        }
        let exited = r.exit_code.is_some()
            && matches!(r.state, InstanceState::Exited | InstanceState::Pending);
        let code = r.exit_code.unwrap_or_default();
        let as_planned = code == 0 && inst.spec.restart.condition != RestartCondition::Any;
        (exited && !as_planned).then(|| {
            format!(
                "instance {id} exited with code {code} within its monitor window ({})",
                millis(w.monitor_ms),
            )
        })
    });
    if let Some(f) = fail {
        w.failure = Some(f);
        w.done_at = Some(now);
    } else if is_ready(report) {
        let at = *w.ready_at.get_or_insert(now);
        if now >= at.saturating_add(w.monitor_ms) {
            w.done_at = Some(now);
        }
    }
    w
}

/// A duration as people write it in stack files: `5s`, `1.5s`, `300ms`.
fn millis(ms: u64) -> String {
    match ms {
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ if ms > 1000 => format!("{}s", ms as f64 / 1000.0),
        _ => format!("{ms}ms"),
    }
}

/// The next step of one service, decided from its records alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Watches that changed, by slot, to write back to the instance records.
    pub marks: Vec<(u32, Watch)>,
    /// Failures exceeded the tolerance and `failure_action` is rollback: roll back, for this reason.
    pub rollback: Option<String>,
}

/// The next actions for one service at `now` (ms). `deps_ready`: its `depends_on` conditions hold,
/// so new slots may be created (replacements and removals never wait on dependencies).
///
/// Outdated slots are replaced `parallelism` at a time, as Docker Swarm's updater does: an
/// instance on the current spec uses up the allowance until it is running and healthy (ready),
/// and the next batch starts `delay` after the last instance got ready. The `monitor` window does
/// not hold the next batch: it decides which failures count against `max_failure_ratio` (any
/// exit, restart or failed health check within `monitor` of getting ready), and the deployment
/// ends once the last window is over, so a rollout takes one monitor window at its end rather
/// than one per batch. When more instances failed than `max_failure_ratio` tolerates,
/// `failure_action` decides: pause (replace no more), continue, or rollback (see
/// `Plan::rollback`).
pub fn plan(
    svc: &ServiceRecord,
    instances: &[InstanceRecord],
    reports: &BTreeMap<String, InstanceReport>,
    deps_ready: bool,
    now: u64,
) -> Plan {
    let want = svc.replicas;
    let mut out = Plan::default();
    let by_slot: BTreeMap<u32, &InstanceRecord> = instances.iter().map(|i| (i.slot, i)).collect();

    for inst in instances.iter().filter(|i| i.slot >= want) {
        out.actions.push(Action::Remove { slot: inst.slot });
    }
    if deps_ready {
        for slot in (0..want).filter(|s| !by_slot.contains_key(s)) {
            out.actions.push(Action::Create { slot });
        }
    }

    let cfg = config(svc);
    let mut failures = Vec::new();
    let mut in_flight = 0u32;
    let mut last_ready = None;
    for inst in by_slot
        .values()
        .filter(|i| i.slot < want && i.is_current(svc))
    {
        let w = observe(inst, report_of(inst, reports), now);
        if w != inst.watch {
            out.marks.push((inst.slot, w.clone()));
        }
        match (&w.failure, w.ready_at, w.done_at) {
            (Some(f), _, _) => failures.push(f.clone()),
            (None, None, None) => in_flight += 1, // starting: not ready yet
            _ => {}                               // ready (monitored or done)
        }
        last_ready = last_ready.max(w.ready_at);
    }
    if exceeded(failures.len(), want, cfg.max_failure_ratio_permille) {
        match on_failure(svc) {
            FailureAction::Pause => return out,
            FailureAction::Rollback => {
                out.rollback = failures.into_iter().next();
                return out;
            }
            FailureAction::Continue => {}
        }
    }
    let parallelism = if cfg.parallelism == 0 {
        want
    } else {
        cfg.parallelism
    };
    let mut allowance = parallelism.saturating_sub(in_flight);
    if last_ready.is_some_and(|t| now < t.saturating_add(cfg.delay_ms)) {
        allowance = 0; // `delay` after the last instance got ready
    }
    let mut outdated: Vec<&InstanceRecord> = by_slot
        .values()
        .copied()
        .filter(|i| i.slot < want && !i.is_current(svc))
        .collect();
    // Slots already draining for their replacement go first, so a drain started is finished.
    outdated.sort_by_key(|i| i.draining_since.is_none());
    for inst in outdated.into_iter().take(allowance as usize) {
        out.actions.push(Action::Replace { slot: inst.slot });
    }
    out
}

/// The service record that rolls `svc` back to its previous spec (they swap, so rolling back
/// again returns to this one), or `None` when there is no previous spec. Pure: the deployer
/// commits it for an automatic rollback, the API for `wharf service rollback`.
pub fn roll_back(
    svc: &ServiceRecord,
    automatic: bool,
    reason: Option<String>,
    deployment: Option<String>,
    now: u64,
) -> Option<ServiceRecord> {
    let prev = svc.previous_spec.clone()?;
    let mut next = svc.clone();
    next.spec_hash = svc
        .previous_spec_hash
        .clone()
        .unwrap_or_else(|| prev.instance_hash());
    if prev.deploy.mode == wharf_types::DeployMode::Replicated {
        next.replicas = prev.deploy.replicas;
    }
    next.rollback = Some(Rollback {
        automatic,
        reason,
        deployment,
        config: svc.spec.deploy.rollback_config.clone(),
        started_at: now,
    });
    next.previous_spec = Some(std::mem::replace(&mut next.spec, prev));
    next.previous_spec_hash = Some(svc.spec_hash.clone());
    next.changed_at_nonce = svc.restart_nonce;
    next.updated_at = now;
    // The revision restored: the newest earlier one with that spec.
    let restored = svc
        .history
        .iter()
        .rev()
        .skip(1)
        .find(|r| r.spec_hash == next.spec_hash)
        .map(|r| r.revision);
    let cause = if automatic {
        "automatic rollback"
    } else {
        "rollback"
    };
    next.push_revision(Some((&svc.spec, &svc.spec_hash)), cause, restored, now);
    Some(next)
}

/// A manual rollback to `target` (a revision of the service's history): it rolls out with the
/// running spec's rollback_config, and the replica count stays as it is (a scale made since is
/// kept). The old spec becomes the previous one, as for any change.
pub fn roll_back_to(svc: &ServiceRecord, target: &SpecRevision, now: u64) -> ServiceRecord {
    let mut next = svc.clone();
    next.rollback = Some(Rollback {
        automatic: false,
        reason: None,
        deployment: None,
        config: svc.spec.deploy.rollback_config.clone(),
        started_at: now,
    });
    next.previous_spec = Some(std::mem::replace(&mut next.spec, target.spec.clone()));
    next.previous_spec_hash = Some(svc.spec_hash.clone());
    next.spec_hash = target.spec_hash.clone();
    next.changed_at_nonce = svc.restart_nonce;
    next.updated_at = now;
    next.push_revision(None, "rollback", Some(target.revision), now);
    next
}

/// How a deployment judges a service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    #[default]
    Running,
    Done,
    Failed,
}

/// How one service of a deployment stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub desired: u32,
    pub updated: u32,
    pub ready: u32,
    /// Instances still to be removed (scale down, old generations not yet gone).
    pub leftover: u32,
    /// Ready instances of the current spec still inside their monitor window.
    pub monitoring: u32,
    /// Instances of the current spec that failed the update.
    pub failed: u32,
    pub verdict: Verdict,
    /// Why it failed (verdict `Failed`).
    pub failure: Option<String>,
    /// What goes on besides replacing (rolling back, failures tolerated).
    pub note: Option<String>,
}

impl Progress {
    pub fn done(&self) -> bool {
        self.verdict == Verdict::Done
    }
}

/// Progress of a service towards its current spec, judged for `deployment`. `svc` is `None` for a
/// service being removed. `leftover_reports`: reports of this service no instance record accounts
/// for (old generations still stopping).
pub fn progress(
    svc: Option<&ServiceRecord>,
    instances: &[InstanceRecord],
    reports: &BTreeMap<String, InstanceReport>,
    leftover_reports: u32,
    deployment: &str,
    now: u64,
) -> Progress {
    let Some(svc) = svc else {
        let leftover = instances.len() as u32 + leftover_reports;
        return Progress {
            leftover,
            verdict: if leftover == 0 {
                Verdict::Done
            } else {
                Verdict::Running
            },
            ..Default::default()
        };
    };
    let mut p = Progress {
        desired: svc.replicas,
        leftover: leftover_reports,
        ..Default::default()
    };
    let mut failures = Vec::new();
    let mut late_failure = None;
    let mut unsettled = 0u32;
    let mut slots = 0u32;
    for inst in instances {
        if inst.slot >= svc.replicas {
            p.leftover += 1;
            continue;
        }
        slots += 1;
        if !inst.is_current(svc) {
            unsettled += 1;
            continue;
        }
        p.updated += 1;
        let rep = report_of(inst, reports);
        let w = observe(inst, rep, now);
        let ready = is_ready(rep);
        p.ready += u32::from(ready);
        match (&w.failure, w.done_at) {
            (Some(f), _) => failures.push(f.clone()),
            (None, None) => {
                unsettled += 1;
                p.monitoring += u32::from(ready);
            }
            // Done, yet failing now: past its monitor window, so not a failure of the update,
            // but the deployment cannot finish with it.
            (None, Some(_)) if !ready => match failure(inst, rep) {
                Some(f) => late_failure = late_failure.or(Some(f)),
                None => unsettled += 1,
            },
            (None, Some(_)) => {}
        }
    }
    unsettled += svc.replicas.saturating_sub(slots); // slots not created yet
    p.failed = failures.len() as u32;
    let finished = unsettled == 0 && p.leftover == 0;
    let rolled_back = svc
        .rollback
        .as_ref()
        .filter(|r| r.automatic && r.deployment.as_deref() == Some(deployment));
    let why = rolled_back
        .and_then(|r| r.reason.clone())
        .unwrap_or_default();
    let fail = |p: &mut Progress, msg: String| {
        p.verdict = Verdict::Failed;
        p.failure = Some(match rolled_back {
            Some(_) => format!("rolled back after: {why}; the rollback failed too: {msg}"),
            None => msg,
        });
    };
    if let Some(f) = late_failure {
        fail(&mut p, f);
    } else if exceeded(
        failures.len(),
        svc.replicas,
        config(svc).max_failure_ratio_permille,
    ) {
        let first = failures[0].clone();
        match on_failure(svc) {
            FailureAction::Pause => fail(&mut p, first),
            FailureAction::Rollback => p.note = Some(format!("rolling back: {first}")),
            FailureAction::Continue if finished => {
                let n = failures.len();
                fail(
                    &mut p,
                    format!("{n} of {} instances failed: {first}", svc.replicas),
                );
            }
            FailureAction::Continue => {
                p.note = Some(format!("{} failed, continuing: {first}", failures.len()))
            }
        }
    } else if finished {
        if rolled_back.is_some() {
            p.verdict = Verdict::Failed;
            p.failure = Some(format!("rolled back to the previous version: {why}"));
        } else {
            p.verdict = Verdict::Done;
            if !failures.is_empty() {
                p.note = Some(format!(
                    "{} failed (tolerated by max_failure_ratio): {}",
                    failures.len(),
                    failures[0]
                ));
            }
        }
    } else if rolled_back.is_some() {
        p.note = Some(format!("rolling back: {why}"));
    } else if p.monitoring > 0 {
        p.note = Some(format!("monitoring {}", p.monitoring));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use InstanceState::*;
    use wharf_types::ServiceSpec;

    /// A service on spec `hash` (its previous spec is `old`, set when `hash` is not "old").
    fn svc(replicas: u32, hash: &str, cfg: impl FnOnce(&mut UpdateConfig)) -> ServiceRecord {
        let mut spec = ServiceSpec::default();
        spec.deploy.replicas = replicas;
        cfg(&mut spec.deploy.update_config);
        let mut previous = ServiceSpec::default();
        previous.deploy.replicas = replicas;
        previous.image = Some("app:old".into());
        ServiceRecord {
            spec_hash: hash.into(),
            replicas,
            previous_spec: (hash != "old").then_some(previous.into()),
            previous_spec_hash: (hash != "old").then(|| "old".into()),
            ..crate::testdata::service("web", spec)
        }
    }

    fn inst(slot: u32, hash: &str, generation: u64) -> InstanceRecord {
        InstanceRecord {
            stack: "s".into(),
            service: "web".into(),
            slot,
            node: "n".into(),
            generation,
            spec_hash: hash.into(),
            restart_nonce: 0,
            spec: Default::default(),
            created_at: 0,
            previous: None,
            draining_since: None,
            watch: Watch::default(),
            lost: Vec::new(),
        }
    }

    /// `inst` with a watch: (monitor_ms, ready_at, done_at, failure).
    fn watched(
        slot: u32,
        hash: &str,
        generation: u64,
        w: (u64, Option<u64>, Option<u64>, Option<&str>),
    ) -> InstanceRecord {
        let mut i = inst(slot, hash, generation);
        i.watch = Watch {
            monitor_ms: w.0,
            ready_at: w.1,
            done_at: w.2,
            failure: w.3.map(str::to_string),
        };
        i
    }

    /// A settled instance (ready and done at t=1).
    fn done(slot: u32, hash: &str, generation: u64) -> InstanceRecord {
        watched(slot, hash, generation, (0, Some(1), Some(1), None))
    }

    fn rep(slot: u32, generation: u64, state: InstanceState, health: Health) -> InstanceReport {
        InstanceReport {
            id: format!("s.web.{slot}"),
            generation,
            spec_hash: String::new(),
            state,
            health,
            container_id: None,
            exit_code: None,
            error: None,
            health_output: Some("connection refused".into()),
            restarts: 0,
            started_at: None,
            finished_at: None,
            address: None,
        }
    }

    fn ok(slot: u32, generation: u64) -> InstanceReport {
        rep(slot, generation, Running, Health::Healthy)
    }

    fn exited(slot: u32, generation: u64, code: i64) -> InstanceReport {
        let mut r = rep(slot, generation, Pending, Health::None);
        r.exit_code = Some(code);
        r
    }

    struct Case<'a> {
        svc: &'a ServiceRecord,
        insts: &'a [InstanceRecord],
        reports: &'a [InstanceReport],
        now: u64,
        deps_ready: bool,
    }

    /// What a pass decides and how deployment `d-1` stands, as one comparable value:
    /// (actions, rollback reason, changed watches by slot, verdict, failure or note).
    type Outcome = (
        Vec<Action>,
        Option<String>,
        Vec<(u32, Watch)>,
        Verdict,
        Option<String>,
    );

    /// Nothing to do yet: no actions, no marks, running.
    fn waiting() -> Outcome {
        running(vec![])
    }

    /// `actions`, no marks, running, no failure or note.
    fn running(actions: Vec<Action>) -> Outcome {
        (actions, None, vec![], Verdict::Running, None)
    }

    fn check(name: &str, c: Case, want: Outcome) {
        let reports: BTreeMap<String, InstanceReport> = c
            .reports
            .iter()
            .map(|r| (r.id.clone(), r.clone()))
            .collect();
        let p = plan(c.svc, c.insts, &reports, c.deps_ready, c.now);
        let g = progress(Some(c.svc), c.insts, &reports, 0, "d-1", c.now);
        let got = (
            p.actions,
            p.rollback,
            p.marks,
            g.verdict,
            g.failure.or(g.note),
        );
        assert_eq!(got, want, "case: {name}");
    }

    fn case<'a>(
        svc: &'a ServiceRecord,
        insts: &'a [InstanceRecord],
        reports: &'a [InstanceReport],
        now: u64,
    ) -> Case<'a> {
        Case {
            svc,
            insts,
            reports,
            now,
            deps_ready: true,
        }
    }

    fn watch(monitor: u64, ready: Option<u64>, done: Option<u64>, failure: Option<&str>) -> Watch {
        Watch {
            monitor_ms: monitor,
            ready_at: ready,
            done_at: done,
            failure: failure.map(str::to_string),
        }
    }

    const UNHEALTHY: &str =
        "instance s.web.0 is unhealthy: health check failed: connection refused";

    #[test]
    fn creates_and_removes() {
        let s = svc(3, "h", |_| {});
        let i = [done(1, "h", 1)];
        let r = [ok(1, 1)];
        let mut c = case(&s, &i, &r, 10);
        check(
            "missing slots are created",
            case(&s, &i, &r, 10),
            running(vec![Create { slot: 0 }, Create { slot: 2 }]),
        );
        c.deps_ready = false;
        check("not before the dependencies are ready", c, waiting());
        let s = svc(1, "h", |_| {});
        let i = [done(0, "h", 1), done(1, "h", 2), done(2, "h", 3)];
        check(
            "scale down removes the highest slots",
            case(&s, &i, &[ok(0, 1)], 10),
            running(vec![Remove { slot: 1 }, Remove { slot: 2 }]),
        );
    }

    #[test]
    fn rolling_replacement_waits_for_readiness_and_parallelism() {
        let s = svc(3, "new", |c| c.monitor_ms = 0);
        let olds = [done(0, "old", 1), done(1, "old", 2), done(2, "old", 3)];
        check(
            "nothing replaced yet: the first slot goes",
            case(&s, &olds, &[], 10),
            running(vec![Replace { slot: 0 }]),
        );
        let i = [inst(0, "new", 4), done(1, "old", 2), done(2, "old", 3)];
        check(
            "replaced, still starting: wait",
            case(&s, &i, &[rep(0, 4, Running, Health::Starting)], 10),
            waiting(),
        );
        check(
            "a report of an older generation does not count",
            case(&s, &i, &[ok(0, 1)], 10),
            waiting(),
        );
        check(
            "ready (no monitor): done, and the next slot goes",
            case(&s, &i, &[ok(0, 4)], 10),
            (
                vec![Replace { slot: 1 }],
                None,
                vec![(0, watch(0, Some(10), Some(10), None))],
                Verdict::Running,
                None,
            ),
        );
        let s2 = svc(3, "new", |c| c.parallelism = 2);
        check(
            "parallelism 2 replaces two at a time",
            case(&s2, &olds, &[], 10),
            running(vec![Replace { slot: 0 }, Replace { slot: 1 }]),
        );
        let all = [done(0, "new", 4), done(1, "new", 5), done(2, "new", 6)];
        check(
            "every slot new, ready and done: succeeded",
            case(&s, &all, &[ok(0, 4), ok(1, 5), ok(2, 6)], 10),
            (vec![], None, vec![], Verdict::Done, None),
        );
    }

    #[test]
    fn a_slot_draining_for_its_replacement_goes_first() {
        // Parallelism 1: slot 2 was chosen (and marked draining) before; slots 0 and 1 became
        // outdated since. The drain that started is the one finished.
        let s = svc(3, "new", |_| {});
        let mut draining = done(2, "old", 3);
        draining.draining_since = Some(5);
        let i = [done(0, "old", 1), done(1, "old", 2), draining];
        check(
            "the draining slot is replaced first",
            case(&s, &i, &[ok(0, 1), ok(1, 2), ok(2, 3)], 10),
            running(vec![Replace { slot: 2 }]),
        );
    }

    /// Docker Swarm's semantics (issue 9): `monitor` does not hold the next batch; it decides
    /// which failures count. monitor 5 s, parallelism 1, 3 replicas.
    #[test]
    fn the_next_batch_starts_when_the_first_is_healthy_and_the_window_judges_failures() {
        let s = svc(3, "new", |c| c.monitor_ms = 5_000);
        let first = [
            watched(0, "new", 4, (5_000, None, None, None)),
            done(1, "old", 2),
            done(2, "old", 3),
        ];
        check(
            "the first new instance starting: wait",
            case(&s, &first, &[rep(0, 4, Running, Health::Starting)], 500),
            waiting(),
        );
        check(
            "the first new instance healthy: the second batch starts now, not 5 s later",
            case(&s, &first, &[ok(0, 4)], 1_000),
            (
                vec![Replace { slot: 1 }],
                None,
                vec![(0, watch(5_000, Some(1_000), None, None))],
                Verdict::Running,
                Some("monitoring 1".into()),
            ),
        );
        // Slot 0 ready since 1 s and watched; slot 1 replaced and starting.
        let seen = [
            watched(0, "new", 4, (5_000, Some(1_000), None, None)),
            watched(1, "new", 5, (5_000, None, None, None)),
            done(2, "old", 3),
        ];
        let why = "instance s.web.0 exited with code 2 within its monitor window (5s)";
        check(
            "a failure 3 s after start counts (pause: the update stops)",
            case(&s, &seen, &[exited(0, 4, 2), ok(1, 5)], 4_000),
            (
                vec![],
                None,
                vec![
                    (0, watch(5_000, Some(1_000), Some(4_000), Some(why))),
                    (1, watch(5_000, Some(4_000), None, None)),
                ],
                Verdict::Failed,
                Some(why.into()),
            ),
        );
        // Slot 0 done (its window ended at 6 s); it fails at 7 s, 6 s after its start.
        let later = [
            watched(0, "new", 4, (5_000, Some(1_000), Some(6_000), None)),
            watched(1, "new", 5, (5_000, Some(4_000), None, None)),
            done(2, "old", 3),
        ];
        check(
            "a failure 6 s after start does not count against the update",
            case(&s, &later, &[exited(0, 4, 2), ok(1, 5)], 7_000),
            (
                vec![Replace { slot: 2 }],
                None,
                vec![],
                Verdict::Running,
                Some("monitoring 1".into()),
            ),
        );
        let failed = [
            watched(0, "new", 4, (5_000, Some(1_000), Some(3_000), Some(why))),
            done(1, "old", 2),
            done(2, "old", 3),
        ];
        check(
            "the failure is sticky: running again does not resume the update",
            case(&s, &failed, &[ok(0, 4)], 9_000),
            (vec![], None, vec![], Verdict::Failed, Some(why.into())),
        );
        // One monitor window at the end: every slot replaced, the last ready at 8 s.
        let end = [
            watched(0, "new", 4, (5_000, Some(1_000), Some(6_000), None)),
            watched(1, "new", 5, (5_000, Some(4_000), Some(9_000), None)),
            watched(2, "new", 6, (5_000, Some(8_000), None, None)),
        ];
        let reps = [ok(0, 4), ok(1, 5), ok(2, 6)];
        check(
            "done only once the last window is over",
            case(&s, &end, &reps, 12_999),
            (
                vec![],
                None,
                vec![],
                Verdict::Running,
                Some("monitoring 1".into()),
            ),
        );
        check(
            "the last window over: the deployment succeeds",
            case(&s, &end, &reps, 13_000),
            (
                vec![],
                None,
                vec![(2, watch(5_000, Some(8_000), Some(13_000), None))],
                Verdict::Done,
                None,
            ),
        );
    }

    /// Issue 8, defect 3: a service without a health check that exits 200 ms after each start
    /// deployed "successfully" (`2/2 ready`) because it was seen running in between.
    #[test]
    fn a_crash_loop_inside_the_window_fails_a_first_deploy() {
        // A first deploy (no previous spec, so the failure pauses: the deploy fails).
        let s = svc(2, "old", |c| c.monitor_ms = 5_000);
        let created = [
            watched(0, "old", 1, (5_000, Some(1_000), None, None)),
            watched(1, "old", 2, (5_000, Some(1_000), None, None)),
        ];
        let mut restarted = ok(0, 1);
        restarted.restarts = 1;
        let why =
            "instance s.web.0 exited and was restarted 1 time before it was done (monitor 5s)";
        check(
            "seen running again after a restart: the restart counts",
            case(&s, &created, &[restarted, ok(1, 2)], 1_500),
            (
                vec![],
                None,
                vec![(0, watch(5_000, Some(1_000), Some(1_500), Some(why)))],
                Verdict::Failed,
                Some(why.into()),
            ),
        );
        let starting = [
            watched(0, "old", 1, (5_000, None, None, None)),
            watched(1, "old", 2, (5_000, None, None, None)),
        ];
        let why = "instance s.web.0 exited with code 7 within its monitor window (5s)";
        check(
            "an exit before it was ever seen ready counts too",
            case(&s, &starting, &[exited(0, 1, 7), ok(1, 2)], 500),
            (
                vec![],
                None,
                vec![
                    (0, watch(5_000, None, Some(500), Some(why))),
                    (1, watch(5_000, Some(500), None, None)),
                ],
                Verdict::Failed,
                Some(why.into()),
            ),
        );
        // A one-shot task that ends as its restart policy allows is not a failure.
        let mut oneshot = svc(1, "old", |c| c.monitor_ms = 5_000);
        std::sync::Arc::make_mut(&mut oneshot.spec)
            .restart
            .condition = RestartCondition::None;
        let mut i = watched(0, "old", 1, (5_000, Some(100), None, None));
        std::sync::Arc::make_mut(&mut i.spec).restart.condition = RestartCondition::None;
        check(
            "a one-shot task exiting 0 does not fail",
            case(&oneshot, &[i], &[exited(0, 1, 0)], 500),
            waiting(),
        );
    }

    #[test]
    fn delay_between_batches() {
        let s = svc(3, "new", |c| {
            c.monitor_ms = 0;
            c.delay_ms = 2_000;
        });
        let i = [
            watched(0, "new", 4, (0, Some(1_000), Some(1_000), None)),
            done(1, "old", 2),
            done(2, "old", 3),
        ];
        let r = [ok(0, 4)];
        check(
            "before the delay is over: wait",
            case(&s, &i, &r, 2_999),
            waiting(),
        );
        check(
            "delay over: the next batch",
            case(&s, &i, &r, 3_000),
            running(vec![Replace { slot: 1 }]),
        );
        let olds = [done(0, "old", 1), done(1, "old", 2), done(2, "old", 3)];
        check(
            "the first batch does not wait",
            case(&s, &olds, &[], 0),
            running(vec![Replace { slot: 0 }]),
        );
    }

    #[test]
    fn failure_actions_and_max_failure_ratio() {
        let failing = |slot, g| watched(slot, "new", g, (0, None, None, None));
        let sick = |slot, g| rep(slot, g, Running, Health::Unhealthy);
        let i = [
            failing(0, 4),
            done(1, "old", 2),
            done(2, "old", 3),
            done(3, "old", 5),
        ];
        let r = [sick(0, 4)];
        let mark = vec![(0, watch(0, None, Some(10), Some(UNHEALTHY)))];

        let pause = svc(4, "new", |_| {});
        check(
            "pause: no more replacements, the deployment fails",
            case(&pause, &i, &r, 10),
            (
                vec![],
                None,
                mark.clone(),
                Verdict::Failed,
                Some(UNHEALTHY.into()),
            ),
        );
        let cont = svc(4, "new", |c| c.failure_action = FailureAction::Continue);
        check(
            "continue: carries on",
            case(&cont, &i, &r, 10),
            (
                vec![Replace { slot: 1 }],
                None,
                mark.clone(),
                Verdict::Running,
                Some(format!("1 failed, continuing: {UNHEALTHY}")),
            ),
        );
        let ended = [
            watched(0, "new", 4, (0, None, Some(5), Some(UNHEALTHY))),
            done(1, "new", 6),
            done(2, "new", 7),
            done(3, "new", 8),
        ];
        check(
            "continue: once everything is replaced, the deployment fails with the count",
            case(
                &cont,
                &ended,
                &[sick(0, 4), ok(1, 6), ok(2, 7), ok(3, 8)],
                10,
            ),
            (
                vec![],
                None,
                vec![],
                Verdict::Failed,
                Some(format!("1 of 4 instances failed: {UNHEALTHY}")),
            ),
        );
        let ratio = svc(4, "new", |c| c.max_failure_ratio_permille = 250);
        check(
            "max_failure_ratio 0.25 of 4 tolerates one failure",
            case(&ratio, &i, &r, 10),
            (
                vec![Replace { slot: 1 }],
                None,
                mark.clone(),
                Verdict::Running,
                None,
            ),
        );
        check(
            "tolerated failures let the deployment succeed",
            case(
                &ratio,
                &ended,
                &[sick(0, 4), ok(1, 6), ok(2, 7), ok(3, 8)],
                10,
            ),
            (
                vec![],
                None,
                vec![],
                Verdict::Done,
                Some(format!(
                    "1 failed (tolerated by max_failure_ratio): {UNHEALTHY}"
                )),
            ),
        );
        let two = [
            failing(0, 4),
            failing(1, 6),
            done(2, "old", 3),
            done(3, "old", 5),
        ];
        let ratio2 = svc(4, "new", |c| {
            c.max_failure_ratio_permille = 250;
            c.parallelism = 2;
        });
        let reports: BTreeMap<_, _> = [sick(0, 4), sick(1, 6)]
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let p = plan(&ratio2, &two, &reports, true, 10);
        let g = progress(Some(&ratio2), &two, &reports, 0, "d-1", 10);
        assert_eq!(
            (p.actions, g.verdict),
            (vec![], Verdict::Failed),
            "two of four exceed 0.25: paused"
        );

        let rollback = svc(4, "new", |c| c.failure_action = FailureAction::Rollback);
        check(
            "rollback: asks for it, and the deployment goes on (rolling back)",
            case(&rollback, &i, &r, 10),
            (
                vec![],
                Some(UNHEALTHY.into()),
                mark.clone(),
                Verdict::Running,
                Some(format!("rolling back: {UNHEALTHY}")),
            ),
        );
        let mut first = rollback.clone();
        first.previous_spec = None;
        check(
            "rollback without a previous spec pauses",
            case(&first, &i, &r, 10),
            (
                vec![],
                None,
                mark.clone(),
                Verdict::Failed,
                Some(UNHEALTHY.into()),
            ),
        );
        let mut restarted = rollback.clone();
        restarted.restart_nonce = 1;
        let i_restart: Vec<InstanceRecord> = i
            .iter()
            .cloned()
            .map(|mut x| {
                x.restart_nonce = u64::from(x.spec_hash == "new");
                x
            })
            .collect();
        check(
            "an update started by a restart is not rolled back to an older spec",
            case(&restarted, &i_restart, &r, 10),
            (
                vec![],
                None,
                mark.clone(),
                Verdict::Failed,
                Some(UNHEALTHY.into()),
            ),
        );
    }

    #[test]
    fn history_keeps_revisions_and_a_second_rollback_goes_further_back() {
        let spec = |image: &str| {
            let mut s = (*svc(3, "x", |_| {}).spec).clone();
            s.image = Some(image.to_string());
            std::sync::Arc::new(s)
        };
        // Deploys of v1, v2, v3, then a scale to 7.
        let mut s = svc(3, "v1", |_| {});
        s.spec = spec("v1");
        s.previous_spec = None;
        s.push_revision(None, "deploy", None, 1);
        for (n, v) in [(2, "v2"), (3, "v3")] {
            let old = (s.spec.clone(), s.spec_hash.clone());
            s.spec = spec(v);
            s.spec_hash = v.to_string();
            s.push_revision(Some((&old.0, &old.1)), "deploy", None, n);
        }
        s.replicas = 7;
        let revs: Vec<u64> = s.history.iter().map(|r| r.revision).collect();
        assert_eq!(revs, vec![1, 2, 3]);
        // A plain rollback: to 2; the scale is kept.
        let target = s.rollback_target().expect("an earlier revision").clone();
        assert_eq!(target.revision, 2);
        let once = roll_back_to(&s, &target, 10);
        assert_eq!((once.spec_hash.as_str(), once.replicas), ("v2", 7));
        assert_eq!(
            once.history.last().map(|r| (r.revision, r.restored)),
            Some((4, Some(2)))
        );
        assert!(once.rollback.as_ref().is_some_and(|r| !r.automatic));
        // A second one goes to 1, not back to 3.
        let target = once.rollback_target().expect("revision 1").clone();
        assert_eq!(target.revision, 1);
        let twice = roll_back_to(&once, &target, 20);
        assert_eq!((twice.spec_hash.as_str(), twice.replicas), ("v1", 7));
        assert_eq!(twice.rollback_target(), None, "nothing before revision 1");
        // --to 3 goes forward again; the history is capped.
        let three = twice
            .history
            .iter()
            .find(|r| r.revision == 3)
            .unwrap()
            .clone();
        let mut s = roll_back_to(&twice, &three, 30);
        assert_eq!(s.spec_hash, "v3");
        for n in 0..20 {
            let old = (s.spec.clone(), s.spec_hash.clone());
            s.spec_hash = format!("h{n}");
            s.push_revision(Some((&old.0, &old.1)), "update", None, 40 + n);
        }
        assert_eq!(s.history.len(), crate::model::HISTORY_LEN);
        assert_eq!(s.history.last().map(|r| r.revision), Some(26));
    }

    #[test]
    fn roll_back_swaps_specs_and_uses_rollback_config() {
        let mut s = svc(3, "new", |c| c.failure_action = FailureAction::Rollback);
        std::sync::Arc::make_mut(&mut s.spec)
            .deploy
            .rollback_config
            .parallelism = 2;
        std::sync::Arc::make_mut(&mut s.spec)
            .deploy
            .rollback_config
            .monitor_ms = 0;
        let rb =
            roll_back(&s, true, Some("boom".into()), Some("d-1".into()), 50).expect("previous");
        assert_eq!(rb.spec_hash, "old");
        assert_eq!(rb.spec.image.as_deref(), Some("app:old"));
        assert_eq!(rb.previous_spec_hash.as_deref(), Some("new"));
        assert_eq!(rb.previous_spec.as_ref(), Some(&s.spec));
        assert_eq!(config(&rb).parallelism, 2);
        assert!(!rb.may_roll_back(), "never a rollback of a rollback");
        let back = roll_back(&rb, false, None, None, 60).expect("again");
        assert_eq!((back.spec_hash.as_str(), &back.spec), ("new", &s.spec));
        let mut none = s.clone();
        none.previous_spec = None;
        assert_eq!(roll_back(&none, false, None, None, 0), None);

        // The records survive a master restart: the planner sees only them (through the store's
        // JSON), and carries on with the rollback_config's parallelism.
        let rb: ServiceRecord =
            serde_json::from_slice(&crate::model::encode(&rb)).expect("record round-trips");
        let i = [
            watched(0, "new", 4, (0, None, Some(5), Some(UNHEALTHY))),
            done(1, "new", 5),
            done(2, "new", 6),
        ];
        let r = [rep(0, 4, Running, Health::Unhealthy), ok(1, 5), ok(2, 6)];
        check(
            "rolling back two at a time (rollback_config)",
            case(&rb, &i, &r, 100),
            (
                vec![Replace { slot: 0 }, Replace { slot: 1 }],
                None,
                vec![],
                Verdict::Running,
                Some("rolling back: boom".into()),
            ),
        );
        let mid = [inst(0, "old", 101), inst(1, "old", 102), done(2, "new", 6)];
        check(
            "mid-rollback after a restart: one in flight of two, so one more goes",
            case(
                &rb,
                &mid,
                &[ok(0, 101), rep(1, 102, Running, Health::Starting), ok(2, 6)],
                200,
            ),
            (
                vec![Replace { slot: 2 }],
                None,
                vec![(0, watch(0, Some(200), Some(200), None))],
                Verdict::Running,
                Some("rolling back: boom".into()),
            ),
        );
        let back = [
            done(0, "old", 101),
            done(1, "old", 102),
            done(2, "old", 103),
        ];
        check(
            "rolled back everywhere: the deployment fails, saying so and why",
            case(&rb, &back, &[ok(0, 101), ok(1, 102), ok(2, 103)], 300),
            (
                vec![],
                None,
                vec![],
                Verdict::Failed,
                Some("rolled back to the previous version: boom".into()),
            ),
        );
        // A manual rollback (no deployment of its own to fail) just succeeds.
        let manual = roll_back(&s, false, None, None, 50).expect("previous");
        check(
            "manual rollback done",
            case(&manual, &back, &[ok(0, 101), ok(1, 102), ok(2, 103)], 300),
            (vec![], None, vec![], Verdict::Done, None),
        );
    }

    #[test]
    fn a_done_instance_that_fails_later_fails_the_deployment_without_failure_action() {
        let s = svc(2, "new", |c| c.failure_action = FailureAction::Rollback);
        let i = [done(0, "new", 4), done(1, "new", 5)];
        let mut crash = rep(0, 4, Exited, Health::None);
        crash.exit_code = Some(3);
        crash.restarts = 3;
        check(
            "late crash loop",
            case(&s, &i, &[crash, ok(1, 5)], 10),
            (
                vec![],
                None,
                vec![],
                Verdict::Failed,
                Some(
                    "instance s.web.0 is crash-looping: exited with code 3 after 3 restarts".into(),
                ),
            ),
        );
    }

    #[test]
    fn crash_loop_counts_as_failure_after_three_restarts() {
        let i = inst(0, "h", 1);
        let mut r = rep(0, 1, Exited, Health::None);
        r.exit_code = Some(3);
        r.restarts = 2;
        assert_eq!(failure(&i, Some(&r)), None);
        r.restarts = 3;
        assert_eq!(
            failure(&i, Some(&r)).as_deref(),
            Some("instance s.web.0 is crash-looping: exited with code 3 after 3 restarts")
        );
    }

    #[test]
    fn progress_counts_updated_ready_and_leftovers() {
        let s = svc(2, "h", |_| {});
        let i = [done(0, "h", 1), done(1, "h", 2), done(2, "h", 3)];
        let reps: BTreeMap<_, _> = [rep(0, 1, Running, Health::None), ok(1, 2)]
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        let p = progress(Some(&s), &i, &reps, 0, "d", 0);
        assert_eq!((p.desired, p.updated, p.ready, p.leftover), (2, 2, 2, 1));
        assert!(!p.done());
        assert!(progress(Some(&s), &i[..2], &reps, 0, "d", 0).done());
        assert!(
            !progress(Some(&s), &i[..2], &reps, 1, "d", 0).done(),
            "old generation still reported"
        );
    }
}
