//! Rollout planning, pure: from a service's desired state and what its instances report, decide the
//! next step (create, replace or remove slots) and judge how a deployment stands.
//!
//! The deployer calls `plan` on every pass. It is level-triggered: it looks only at the current
//! records and reports, never at what happened before, so a restart of the master mid-rollout just
//! continues from where the records are.

use std::collections::BTreeMap;

use wharf_types::{FailureAction, Health, InstanceReport, InstanceState, RestartCondition};

use crate::model::{InstanceRecord, ServiceRecord};

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

/// The next actions for one service. `deps_ready`: its `depends_on` conditions hold, so new slots may
/// be created (replacements and removals never wait on dependencies).
pub fn plan(
    svc: &ServiceRecord,
    instances: &[InstanceRecord],
    reports: &BTreeMap<String, InstanceReport>,
    deps_ready: bool,
) -> Vec<Action> {
    let want = svc.replicas;
    let mut actions = Vec::new();
    let by_slot: BTreeMap<u32, &InstanceRecord> = instances.iter().map(|i| (i.slot, i)).collect();

    for inst in instances.iter().filter(|i| i.slot >= want) {
        actions.push(Action::Remove { slot: inst.slot });
    }
    if deps_ready {
        for slot in (0..want).filter(|s| !by_slot.contains_key(s)) {
            actions.push(Action::Create { slot });
        }
    }

    // Rolling replacement of outdated slots, `parallelism` at a time. Instances already on the
    // current spec but not ready yet are "in flight" and use up the allowance.
    let update = &svc.spec.deploy.update_config;
    let current: Vec<&InstanceRecord> = by_slot
        .values()
        .filter(|i| i.slot < want && i.is_current(svc))
        .copied()
        .collect();
    let failed = current
        .iter()
        .filter(|i| failure(i, report_of(i, reports)).is_some())
        .count();
    if failed > 0 && update.failure_action != FailureAction::Continue {
        return actions; // paused (rollback comes with the rollout work of the traffic issue)
    }
    let in_flight = current
        .iter()
        .filter(|i| !is_ready(report_of(i, reports)) && failure(i, report_of(i, reports)).is_none())
        .count() as u32;
    let parallelism = if update.parallelism == 0 {
        want
    } else {
        update.parallelism
    };
    let allowance = parallelism.saturating_sub(in_flight);
    let outdated = by_slot
        .values()
        .filter(|i| i.slot < want && !i.is_current(svc));
    for inst in outdated.take(allowance as usize) {
        actions.push(Action::Replace { slot: inst.slot });
    }
    actions
}

/// How one service of a deployment stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub desired: u32,
    pub updated: u32,
    pub ready: u32,
    /// Instances still to be removed (scale down, old generations not yet gone).
    pub leftover: u32,
    pub failure: Option<String>,
}

impl Progress {
    pub fn done(&self) -> bool {
        self.updated == self.desired && self.ready == self.desired && self.leftover == 0
    }
}

/// Progress of a service towards its current spec. `svc` is `None` for a service being removed.
/// `node_reports` are every report the agents sent for this service's instance ids.
pub fn progress(
    svc: Option<&ServiceRecord>,
    instances: &[InstanceRecord],
    reports: &BTreeMap<String, InstanceReport>,
    leftover_reports: u32,
) -> Progress {
    let Some(svc) = svc else {
        return Progress {
            leftover: instances.len() as u32 + leftover_reports,
            ..Default::default()
        };
    };
    let mut p = Progress {
        desired: svc.replicas,
        leftover: leftover_reports,
        ..Default::default()
    };
    for inst in instances {
        if inst.slot >= svc.replicas {
            p.leftover += 1;
            continue;
        }
        if !inst.is_current(svc) {
            continue;
        }
        p.updated += 1;
        let rep = report_of(inst, reports);
        if is_ready(rep) {
            p.ready += 1;
        } else if p.failure.is_none() {
            p.failure = failure(inst, rep);
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::ServiceSpec;

    fn svc(replicas: u32, hash: &str, parallelism: u32) -> ServiceRecord {
        let mut spec = ServiceSpec::default();
        spec.deploy.update_config.parallelism = parallelism;
        ServiceRecord {
            stack: "s".into(),
            name: "web".into(),
            spec,
            spec_hash: hash.into(),
            replicas,
            restart_nonce: 0,
            next_generation: 100,
            updated_at: 0,
            rebalance: false,
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
            spec: ServiceSpec::default(),
            created_at: 0,
            previous: None,
        }
    }

    fn rep(
        slot: u32,
        generation: u64,
        state: InstanceState,
        health: Health,
    ) -> (String, InstanceReport) {
        let id = format!("s.web.{slot}");
        let r = InstanceReport {
            id: id.clone(),
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
        };
        (id, r)
    }

    use Action::*;
    use InstanceState::*;

    #[test]
    fn creates_missing_slots_only_when_dependencies_are_ready() {
        let s = svc(3, "h", 1);
        let i = [inst(1, "h", 1)];
        assert_eq!(
            plan(&s, &i, &BTreeMap::new(), true),
            vec![Create { slot: 0 }, Create { slot: 2 }]
        );
        assert_eq!(plan(&s, &i, &BTreeMap::new(), false), vec![]);
    }

    #[test]
    fn scale_down_removes_the_highest_slots() {
        let s = svc(1, "h", 1);
        let i = [inst(0, "h", 1), inst(1, "h", 2), inst(2, "h", 3)];
        assert_eq!(
            plan(&s, &i, &BTreeMap::new(), true),
            vec![Remove { slot: 1 }, Remove { slot: 2 }]
        );
    }

    #[test]
    fn rolling_update_replaces_one_at_a_time_and_waits_for_readiness() {
        let s = svc(3, "new", 1);
        // Nothing replaced yet: the first slot goes.
        let i = [inst(0, "old", 1), inst(1, "old", 2), inst(2, "old", 3)];
        assert_eq!(
            plan(&s, &i, &BTreeMap::new(), true),
            vec![Replace { slot: 0 }]
        );
        // Slot 0 replaced but not ready yet: wait.
        let i = [inst(0, "new", 4), inst(1, "old", 2), inst(2, "old", 3)];
        let starting: BTreeMap<_, _> = [rep(0, 4, Running, Health::Starting)].into();
        assert_eq!(plan(&s, &i, &starting, true), vec![]);
        // A report of an older generation does not count as ready.
        let stale: BTreeMap<_, _> = [rep(0, 1, Running, Health::Healthy)].into();
        assert_eq!(plan(&s, &i, &stale, true), vec![]);
        // Ready: next slot.
        let ready: BTreeMap<_, _> = [rep(0, 4, Running, Health::Healthy)].into();
        assert_eq!(plan(&s, &i, &ready, true), vec![Replace { slot: 1 }]);
    }

    #[test]
    fn parallelism_two_replaces_two_at_a_time() {
        let s = svc(3, "new", 2);
        let i = [inst(0, "old", 1), inst(1, "old", 2), inst(2, "old", 3)];
        assert_eq!(
            plan(&s, &i, &BTreeMap::new(), true),
            vec![Replace { slot: 0 }, Replace { slot: 1 }]
        );
    }

    #[test]
    fn a_failed_new_instance_pauses_the_rollout() {
        let s = svc(3, "new", 1);
        let i = [inst(0, "new", 4), inst(1, "old", 2), inst(2, "old", 3)];
        let bad: BTreeMap<_, _> = [rep(0, 4, Running, Health::Unhealthy)].into();
        assert_eq!(plan(&s, &i, &bad, true), vec![]);
        let p = progress(Some(&s), &i, &bad, 0);
        assert_eq!(
            p.failure.as_deref(),
            Some("instance s.web.0 is unhealthy: health check failed: connection refused")
        );
        assert!(!p.done());
    }

    #[test]
    fn progress_counts_updated_ready_and_leftovers() {
        let s = svc(2, "h", 1);
        let i = [inst(0, "h", 1), inst(1, "h", 2), inst(2, "h", 3)];
        let reps: BTreeMap<_, _> = [
            rep(0, 1, Running, Health::None),
            rep(1, 2, Running, Health::Healthy),
        ]
        .into();
        let p = progress(Some(&s), &i, &reps, 0);
        assert_eq!((p.desired, p.updated, p.ready, p.leftover), (2, 2, 2, 1));
        assert!(!p.done());
        let p = progress(Some(&s), &i[..2], &reps, 0);
        assert!(p.done());
    }

    #[test]
    fn crash_loop_counts_as_failure_after_three_restarts() {
        let i = inst(0, "h", 1);
        let (_, mut r) = rep(0, 1, Exited, Health::None);
        r.exit_code = Some(3);
        r.restarts = 2;
        assert_eq!(failure(&i, Some(&r)), None);
        r.restarts = 3;
        assert_eq!(
            failure(&i, Some(&r)).as_deref(),
            Some("instance s.web.0 is crash-looping: exited with code 3 after 3 restarts")
        );
    }
}
