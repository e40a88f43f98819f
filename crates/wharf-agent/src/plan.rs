//! The agent's reconciliation plan, pure: from the assignments of the node, what the drivers
//! observe and the restart memory, decide what to do to each instance now.
//!
//! Order within a pass: stale instances are stopped before new ones are created (stop-first), except
//! where the new spec asks for start-first and the replacement is not ready yet.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use wharf_types::{Assignment, Backoff, Health, RestartCondition, UpdateOrder};

use crate::driver::{Observed, ObservedState, Stop};

/// What the agent remembers about one instance generation between passes (lost on restart, which
/// only resets backoff).
#[derive(Clone, Debug, Default)]
pub struct Memo {
    /// Restarts done for this generation.
    pub restarts: u32,
    /// Consecutive quick failures, for the exponential backoff.
    pub consecutive: u32,
    /// When the next restart may happen, once an exit was seen.
    pub next_start_at: Option<Instant>,
    /// The last error of prepare/create/start, and when to try again.
    pub error: Option<String>,
    pub retry_at: Option<Instant>,
    /// The exit (by finished_at) already accounted for, so one exit is counted once.
    pub exit_seen: Option<u64>,
    /// Gave up restarting (max_attempts reached, or the restart condition says no).
    pub gave_up: bool,
    /// How the instance's own spec says to stop it (grace, signal): it is retired with these
    /// once no assignment wants it, even when no assignment of its service is left here.
    pub stop: Option<Stop>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Prepare, create and start a new instance.
    Launch { id: String, generation: u64 },
    /// Start an existing instance again (after an exit, or created but never started).
    Start {
        id: String,
        generation: u64,
        handle: String,
        restart: bool,
    },
    /// Stop and remove an instance that is no longer wanted.
    Retire { handle: String, stop: Stop },
}

/// An instance runs long enough to reset its backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

pub fn key(id: &str, generation: u64) -> (String, u64) {
    (id.to_string(), generation)
}

/// Decide the steps of one pass. `busy` holds handles and `(id, generation)` keys with an operation
/// in flight; they are left alone. Updates `memo` (backoff bookkeeping).
pub fn plan(
    assignments: &[Assignment],
    observed: &[Observed],
    memo: &mut BTreeMap<(String, u64), Memo>,
    busy: &BTreeSet<String>,
    fence: &BTreeSet<(String, u64)>,
    now: Instant,
    now_ms: u64,
) -> Vec<Step> {
    let wanted: BTreeMap<(String, u64), &Assignment> = assignments
        .iter()
        .map(|a| (key(&a.id, a.generation), a))
        .collect();

    // 1. Retire what no assignment wants (old generations, removed instances).
    let mut steps = retire_steps(assignments, observed, &wanted, memo, busy, fence);

    // 2. Launch or restart what is wanted.
    for a in assignments {
        let k = key(&a.id, a.generation);
        if busy.contains(&format!("{}@{}", a.id, a.generation)) {
            continue;
        }
        let m = memo.entry(k.clone()).or_default();
        m.stop = Some(Stop::of(&a.spec));
        let mine: Vec<&Observed> = observed
            .iter()
            .filter(|o| o.instance == a.id && o.generation == a.generation)
            .collect();
        // Stop-first: the replacement starts only once every older generation of the instance that
        // is no longer assigned is gone (retired above, in the background), so it can take over
        // the old one's host ports. An older generation still assigned (the master keeps it while
        // it drains, or as a start-first predecessor) runs alongside: waiting for it would wait
        // for the master, which waits for the new one.
        let predecessor_left = a.spec.deploy.update_config.order == UpdateOrder::StopFirst
            && observed.iter().any(|o| {
                o.instance == a.id
                    && o.generation < a.generation
                    && !wanted.contains_key(&key(&o.instance, o.generation))
            });
        let Some(o) = mine.first() else {
            if !predecessor_left && m.retry_at.is_none_or(|t| now >= t) {
                steps.push(Step::Launch {
                    id: a.id.clone(),
                    generation: a.generation,
                });
            }
            continue;
        };
        if busy.contains(&o.handle) {
            continue;
        }
        match o.state {
            ObservedState::Created => {
                if !predecessor_left && m.retry_at.is_none_or(|t| now >= t) {
                    steps.push(Step::Start {
                        id: a.id.clone(),
                        generation: a.generation,
                        handle: o.handle.clone(),
                        restart: false,
                    });
                }
            }
            ObservedState::Running => {
                if o.started_at
                    .is_some_and(|s| now_ms.saturating_sub(s) >= STABLE_AFTER.as_millis() as u64)
                {
                    m.consecutive = 0;
                }
                m.next_start_at = None;
            }
            ObservedState::Exited => steps.extend(restart_step(a, o, m, now)),
            ObservedState::Other => {}
        }
    }
    // Kept while wanted, and while the instance still exists (its stop settings are needed
    // until it is retired).
    memo.retain(|k, m| {
        if wanted.contains_key(k) {
            return true;
        }
        // Unwanted: nothing more to start or retry.
        m.next_start_at = None;
        m.retry_at = None;
        observed
            .iter()
            .any(|o| o.instance == k.0 && o.generation == k.1)
    });
    steps
}

/// The retire steps of one pass: the observed instances no assignment wants and no operation
/// holds (fenced ones at once with no grace; start-first predecessors once their replacement is
/// ready), each with its own spec's stop settings.
fn retire_steps(
    assignments: &[Assignment],
    observed: &[Observed],
    wanted: &BTreeMap<(String, u64), &Assignment>,
    memo: &BTreeMap<(String, u64), Memo>,
    busy: &BTreeSet<String>,
    fence: &BTreeSet<(String, u64)>,
) -> Vec<Step> {
    let mut steps = Vec::new();
    for o in observed {
        if wanted.contains_key(&key(&o.instance, o.generation)) || busy.contains(&o.handle) {
            continue;
        }
        // Fenced (replaced elsewhere while this node was lost): stopped at once, no grace.
        if fence.contains(&key(&o.instance, o.generation)) {
            steps.push(Step::Retire {
                handle: o.handle.clone(),
                stop: Stop::NOW,
            });
            continue;
        }
        let newer = assignments
            .iter()
            .find(|a| a.id == o.instance && a.generation > o.generation);
        if let Some(a) = newer
            && a.spec.deploy.update_config.order == UpdateOrder::StartFirst
            && o.state == ObservedState::Running
        {
            let replacement_ready = observed.iter().any(|n| {
                n.instance == a.id
                    && n.generation == a.generation
                    && n.state == ObservedState::Running
                    && matches!(n.health, Health::None | Health::Healthy)
            });
            if !replacement_ready {
                continue; // start-first: keep serving until the replacement is ready
            }
        }
        // Its own spec's stop settings (remembered while it was assigned), else those of its
        // service's current assignment here, else the defaults (an agent restarted since).
        let stop = memo
            .get(&key(&o.instance, o.generation))
            .and_then(|m| m.stop.clone())
            .or_else(|| {
                assignments
                    .iter()
                    .find(|a| a.stack == o.stack && a.service == o.service)
                    .map(|a| Stop::of(&a.spec))
            })
            .unwrap_or(Stop::DEFAULT);
        steps.push(Step::Retire {
            handle: o.handle.clone(),
            stop,
        });
    }
    steps
}

/// The restart step for an exited instance, per its restart policy: none when the policy does
/// not restart it (or its attempts are used up), or before its backoff (scheduled at a new exit)
/// has passed.
fn restart_step(a: &Assignment, o: &Observed, m: &mut Memo, now: Instant) -> Option<Step> {
    let policy = &a.spec.restart;
    let code = o.exit_code.unwrap_or(0);
    let wants_restart = match a.spec.restart_condition() {
        RestartCondition::Any => true,
        RestartCondition::OnFailure => code != 0,
        RestartCondition::None => false,
    };
    let exhausted = policy.max_attempts > 0 && m.restarts >= policy.max_attempts;
    if !wants_restart || exhausted {
        m.gave_up = wants_restart && exhausted;
        return None;
    }
    if m.exit_seen != o.finished_at || m.next_start_at.is_none() {
        // A new exit: schedule the restart with exponential backoff.
        let ran = match (o.started_at, o.finished_at) {
            (Some(s), Some(f)) => Duration::from_millis(f.saturating_sub(s)),
            _ => Duration::ZERO,
        };
        if ran >= STABLE_AFTER {
            m.consecutive = 0;
        }
        let backoff = Backoff::new(
            Duration::from_millis(policy.delay_ms),
            Duration::from_millis(policy.max_delay_ms),
        );
        let delay = backoff.delay(m.consecutive);
        m.consecutive = m.consecutive.saturating_add(1);
        m.next_start_at = Some(now + delay);
        m.exit_seen = o.finished_at;
    }
    if m.next_start_at.is_none_or(|t| now < t) {
        return None;
    }
    m.next_start_at = None;
    Some(Step::Start {
        id: a.id.clone(),
        generation: a.generation,
        handle: o.handle.clone(),
        restart: true,
    })
}

/// The earliest instant at which a pass has something to do that no event will announce.
pub fn next_wake(memo: &BTreeMap<(String, u64), Memo>) -> Option<Instant> {
    memo.values()
        .flat_map(|m| [m.next_start_at, m.retry_at])
        .flatten()
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::ServiceSpec;

    fn assignment(slot: u32, generation: u64, order: UpdateOrder) -> Assignment {
        let mut spec = ServiceSpec::default();
        spec.deploy.update_config.order = order;
        Assignment {
            id: format!("s.web.{slot}"),
            stack: "s".into(),
            service: "web".into(),
            slot,
            generation,
            spec_hash: "h".into(),
            spec: spec.into(),
        }
    }

    fn observed(slot: u32, generation: u64, state: ObservedState) -> Observed {
        Observed {
            handle: format!("c{slot}g{generation}"),
            instance: format!("s.web.{slot}"),
            stack: "s".into(),
            service: "web".into(),
            slot,
            generation,
            spec_hash: "h".into(),
            state,
            exit_code: (state == ObservedState::Exited).then_some(137),
            error: None,
            health: Health::None,
            health_output: None,
            started_at: Some(1_000),
            finished_at: (state == ObservedState::Exited).then_some(1_500),
            address: None,
        }
    }

    fn retire(handle: &str, stop: Stop) -> Step {
        Step::Retire {
            handle: handle.into(),
            stop,
        }
    }

    fn run(
        a: &[Assignment],
        o: &[Observed],
        memo: &mut BTreeMap<(String, u64), Memo>,
        now: Instant,
    ) -> Vec<Step> {
        plan(a, o, memo, &BTreeSet::new(), &BTreeSet::new(), now, 2_000)
    }

    #[test]
    fn a_retired_instance_stops_as_its_own_spec_says() {
        let now = Instant::now();
        let mut memo = BTreeMap::new();
        let mut a = assignment(0, 1, UpdateOrder::StopFirst);
        std::sync::Arc::make_mut(&mut a.spec).stop_grace_period_ms = Some(7_000);
        std::sync::Arc::make_mut(&mut a.spec).stop_signal = Some("SIGINT".into());
        let o = [observed(0, 1, ObservedState::Running)];
        assert!(run(std::slice::from_ref(&a), &o, &mut memo, now).is_empty());
        // No assignment of the service left here (drained, removed): still its own settings.
        assert_eq!(
            run(&[], &o, &mut memo, now),
            vec![retire(
                "c0g1",
                Stop::with_signal(Duration::from_millis(7_000), "SIGINT")
            )]
        );
    }

    #[test]
    fn fenced_instances_are_killed_at_once() {
        let now = Instant::now();
        let mut memo = BTreeMap::new();
        let o = [
            observed(0, 1, ObservedState::Running),
            observed(1, 1, ObservedState::Running),
        ];
        let fence = BTreeSet::from([key("s.web.0", 1)]);
        let steps = plan(&[], &o, &mut memo, &BTreeSet::new(), &fence, now, 2_000);
        assert_eq!(
            steps,
            vec![retire("c0g1", Stop::NOW), retire("c1g1", Stop::DEFAULT),]
        );
    }

    #[test]
    fn launches_missing_and_retires_unwanted() {
        let now = Instant::now();
        let mut memo = BTreeMap::new();
        let steps = run(
            &[assignment(0, 2, UpdateOrder::StopFirst)],
            &[
                observed(0, 1, ObservedState::Running),
                observed(5, 1, ObservedState::Running),
            ],
            &mut memo,
            now,
        );
        assert_eq!(
            steps,
            vec![retire("c0g1", Stop::DEFAULT), retire("c5g1", Stop::DEFAULT),]
        );
        // Stop-first: generation 2 is launched once generation 1 is gone, not alongside its stop.
        let steps = run(
            &[assignment(0, 2, UpdateOrder::StopFirst)],
            &[],
            &mut memo,
            now,
        );
        assert_eq!(
            steps,
            vec![Step::Launch {
                id: "s.web.0".into(),
                generation: 2
            }]
        );
    }

    #[test]
    fn start_first_keeps_the_old_generation_until_the_new_one_is_ready() {
        let now = Instant::now();
        let mut memo = BTreeMap::new();
        let a = [assignment(0, 2, UpdateOrder::StartFirst)];
        let mut starting = observed(0, 2, ObservedState::Running);
        starting.health = Health::Starting;
        let steps = run(
            &a,
            &[observed(0, 1, ObservedState::Running), starting.clone()],
            &mut memo,
            now,
        );
        assert_eq!(steps, vec![]);
        starting.health = Health::Healthy;
        let steps = run(
            &a,
            &[observed(0, 1, ObservedState::Running), starting],
            &mut memo,
            now,
        );
        assert_eq!(steps, vec![retire("c0g1", Stop::DEFAULT)]);
    }

    #[test]
    fn both_generations_assigned_run_side_by_side() {
        let now = Instant::now();
        let mut memo = BTreeMap::new();
        for order in [UpdateOrder::StartFirst, UpdateOrder::StopFirst] {
            // The master holds generation 1 (the previous placement, draining) and assigns 2.
            let a = [assignment(0, 1, order), assignment(0, 2, order)];
            let old = observed(0, 1, ObservedState::Running);
            assert_eq!(
                run(&a, std::slice::from_ref(&old), &mut memo, now),
                vec![Step::Launch {
                    id: "s.web.0".into(),
                    generation: 2
                }],
                "{order:?}: the new generation starts at once, the old one keeps running"
            );
            let both = [old.clone(), observed(0, 2, ObservedState::Running)];
            assert_eq!(run(&a, &both, &mut memo, now), vec![], "{order:?}");
            // The master drops generation 1 once drained: it is retired.
            assert_eq!(
                run(&a[1..], &both, &mut memo, now),
                vec![retire("c0g1", Stop::DEFAULT)],
                "{order:?}"
            );
        }
    }

    #[test]
    fn exits_restart_with_exponential_backoff() {
        let t0 = Instant::now();
        let mut memo = BTreeMap::new();
        let a = [assignment(0, 1, UpdateOrder::StopFirst)];
        let mut o = observed(0, 1, ObservedState::Exited);
        // First exit: restart after the base delay (100 ms), not before.
        assert_eq!(run(&a, std::slice::from_ref(&o), &mut memo, t0), vec![]);
        let start = Step::Start {
            id: "s.web.0".into(),
            generation: 1,
            handle: "c0g1".into(),
            restart: true,
        };
        assert_eq!(
            run(
                &a,
                std::slice::from_ref(&o),
                &mut memo,
                t0 + Duration::from_millis(100)
            ),
            vec![start.clone()]
        );
        // Each further quick exit doubles the delay: 200 ms, then 400 ms.
        for (i, delay) in [(1u64, 200u64), (2, 400)] {
            o.finished_at = Some(1_500 + i);
            // The delay counts from when the exit is first seen.
            let t = t0 + Duration::from_secs(i);
            assert_eq!(run(&a, std::slice::from_ref(&o), &mut memo, t), vec![]);
            assert_eq!(
                run(
                    &a,
                    std::slice::from_ref(&o),
                    &mut memo,
                    t + Duration::from_millis(delay - 1)
                ),
                vec![]
            );
            assert_eq!(
                run(
                    &a,
                    std::slice::from_ref(&o),
                    &mut memo,
                    t + Duration::from_millis(delay)
                ),
                vec![start.clone()]
            );
        }
    }

    #[test]
    fn restart_condition_none_never_restarts() {
        let mut memo = BTreeMap::new();
        let mut a = assignment(0, 1, UpdateOrder::StopFirst);
        std::sync::Arc::make_mut(&mut a.spec).restart.condition = RestartCondition::None;
        let o = observed(0, 1, ObservedState::Exited);
        let later = Instant::now() + Duration::from_secs(60);
        assert_eq!(run(&[a], &[o], &mut memo, later), vec![]);
    }
}
