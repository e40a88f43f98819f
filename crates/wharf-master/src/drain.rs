//! Draining, pure: before the master takes a placement of an instance out of the desired state
//! (scale down, stop-first replacement, the old generation of a start-first replacement or a
//! relocation, a removed service or stack), it marks it draining in the instance record, keeps it
//! assigned (so it keeps running while the proxies stop sending it new requests and the requests
//! in flight finish), and lets the step go ahead only once the drain grace has passed since the
//! mark. The mark is a timestamp in the record, so a master restarted mid-drain carries on; the
//! deployer never sleeps.
//!
//! Placements that serve nothing need no drain: not running, not ready (crashed, unhealthy,
//! still starting), or on a lost node.
//!
//! The ingress and discovery read the marks through `generation_draining` (one assigned
//! generation: current or previous), the API through `is_draining`: a draining endpoint gets no
//! new requests.

use wharf_types::ServiceSpec;

use crate::model::{InstanceRecord, Previous};

/// The drain grace when the service does not set `x-wharf: {drain_grace: ...}`.
pub const DEFAULT_GRACE_MS: u64 = 2_000;

/// How long instances of this spec drain before they stop.
pub fn grace_ms(spec: &ServiceSpec) -> u64 {
    spec.wharf.drain_grace_ms.unwrap_or(DEFAULT_GRACE_MS)
}

/// The instance's current placement (`node`, `generation`) is draining.
pub fn is_draining(inst: &InstanceRecord) -> bool {
    inst.draining_since.is_some()
}

/// The instance's previous placement (old generation of a relocation or start-first
/// replacement) is draining. The tests' view; the ingress asks `generation_draining`.
#[cfg(test)]
pub fn is_previous_draining(inst: &InstanceRecord) -> bool {
    inst.previous
        .as_ref()
        .is_some_and(|p| p.draining_since.is_some())
}

/// Whether the assigned `generation` of the instance (current or previous) is draining.
pub fn generation_draining(inst: &InstanceRecord, generation: u64) -> bool {
    if generation == inst.generation {
        return is_draining(inst);
    }
    inst.previous
        .as_ref()
        .is_some_and(|p| p.generation == generation && p.draining_since.is_some())
}

/// Which placements of an instance a step takes out of the desired state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    pub current: bool,
    pub previous: bool,
}

impl Drops {
    /// Both (removal, stop-first replacement).
    pub const ALL: Drops = Drops {
        current: true,
        previous: true,
    };
    /// The previous placement only (relocation over, start-first replacement).
    pub const PREVIOUS: Drops = Drops {
        current: false,
        previous: true,
    };
    pub const NONE: Drops = Drops {
        current: false,
        previous: false,
    };
}

/// What a start-first replacement keeps assigned (as the new record's `previous`) until the new
/// generation is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The current generation serves: it stays, and the previous placement (if any) drains out.
    Current,
    /// The current generation serves nothing (a failed update replaced again) but an older one
    /// still runs as the previous placement: that one stays, the current goes at once.
    Previous,
    /// Nothing serves: both go.
    Nothing,
}

impl Keep {
    /// What the replacement drops.
    pub fn drops(self) -> Drops {
        match self {
            Keep::Current => Drops::PREVIOUS,
            Keep::Previous => Drops {
                current: true,
                previous: false,
            },
            Keep::Nothing => Drops::ALL,
        }
    }
}

/// What a start-first replacement of `inst` keeps. `serving` as for `gate`.
pub fn start_first_keeps(inst: &InstanceRecord, serving: &dyn Fn(&str, u64) -> bool) -> Keep {
    if serving(&inst.node, inst.generation) {
        Keep::Current
    } else if inst.previous.is_some() {
        Keep::Previous
    } else {
        Keep::Nothing
    }
}

/// The `previous` of the replacement record (whose spec is `spec_hash`/`spec`): the kept
/// placement with its own spec where it differs, not draining.
pub fn kept_previous(
    inst: &InstanceRecord,
    keep: Keep,
    spec_hash: &str,
    spec: &ServiceSpec,
) -> Option<Previous> {
    let (node, generation, (h, sp)) = match keep {
        Keep::Current => (
            inst.node.clone(),
            inst.generation,
            (inst.spec_hash.as_str(), &inst.spec),
        ),
        Keep::Previous => {
            let p = inst.previous.as_ref()?;
            (p.node.clone(), p.generation, inst.previous_spec()?)
        }
        Keep::Nothing => return None,
    };
    Some(Previous {
        node,
        generation,
        draining_since: None,
        spec_hash: (h != spec_hash).then(|| h.to_string()),
        spec: (**sp != *spec).then(|| sp.clone()),
    })
}

/// What to do about a step that drops placements of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Nothing (more) to drain: the step goes ahead.
    Go,
    /// Write this record (placements marked draining now), and wait.
    Mark(Box<InstanceRecord>),
    /// Draining until `until` (ms, master clock).
    Wait { until: u64 },
}

/// Decide whether a step that drops `drops` of `inst` may go ahead at `now`.
/// `serving(node, generation)`: that placement runs and is ready, on a node that is not lost.
pub fn gate(
    inst: &InstanceRecord,
    drops: Drops,
    serving: &dyn Fn(&str, u64) -> bool,
    grace_ms: u64,
    now: u64,
) -> Gate {
    // No grace: nothing to wait out, so no mark either (it would cost a write and a pass per
    // step for nothing: the placement leaves the routing tables in the same desired state that
    // stops it).
    if grace_ms == 0 {
        return Gate::Go;
    }
    let mut marked = inst.clone();
    let mut mark = false;
    let mut until = None::<u64>;
    let mut check = |since: &mut Option<u64>, live: bool| {
        if !live {
            return; // serves nothing: nothing to drain
        }
        match *since {
            None => {
                *since = Some(now);
                mark = true;
            }
            Some(t) if now < t.saturating_add(grace_ms) => {
                until = until.max(Some(t.saturating_add(grace_ms)));
            }
            Some(_) => {}
        }
    };
    if drops.current {
        check(
            &mut marked.draining_since,
            serving(&inst.node, inst.generation),
        );
    }
    if drops.previous
        && let Some(p) = marked.previous.as_mut()
    {
        let live = serving(&p.node, p.generation);
        check(&mut p.draining_since, live);
    }
    if mark {
        Gate::Mark(Box::new(marked))
    } else if let Some(until) = until {
        Gate::Wait { until }
    } else {
        Gate::Go
    }
}

/// The record without the marks of placements no step drops any more (scaled up again, the
/// update paused), or `None` when nothing changes.
pub fn unmark(inst: &InstanceRecord, dropping: Drops) -> Option<InstanceRecord> {
    let mut out = inst.clone();
    if !dropping.current {
        out.draining_since = None;
    }
    if !dropping.previous
        && let Some(p) = out.previous.as_mut()
    {
        p.draining_since = None;
    }
    (out != *inst).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Previous;

    fn inst(draining_since: Option<u64>, previous: Option<Option<u64>>) -> InstanceRecord {
        InstanceRecord {
            stack: "s".into(),
            service: "web".into(),
            slot: 0,
            node: "a".into(),
            generation: 2,
            spec_hash: "h".into(),
            restart_nonce: 0,
            spec: Default::default(),
            created_at: 0,
            previous: previous.map(|since| Previous {
                node: "b".into(),
                generation: 1,
                draining_since: since,
                spec_hash: None,
                spec: None,
            }),
            draining_since,
            watch: Default::default(),
            lost: Vec::new(),
        }
    }

    /// Which placements serve: (node, generation).
    fn serving(live: &'static [(&'static str, u64)]) -> impl Fn(&str, u64) -> bool {
        move |n, g| live.contains(&(n, g))
    }

    const BOTH: &[(&str, u64)] = &[("a", 2), ("b", 1)];
    const NONE: &[(&str, u64)] = &[];

    #[test]
    fn gate_table() {
        let g = 2_000;
        #[allow(clippy::type_complexity)]
        let cases: &[(&str, InstanceRecord, Drops, &[(&str, u64)], u64, Gate)] = &[
            (
                "a ready instance is marked first, and does not go",
                inst(None, None),
                Drops::ALL,
                BOTH,
                100,
                Gate::Mark(Box::new(inst(Some(100), None))),
            ),
            (
                "inside the grace: wait until the mark plus the grace",
                inst(Some(100), None),
                Drops::ALL,
                BOTH,
                2_099,
                Gate::Wait { until: 2_100 },
            ),
            (
                "grace over: go",
                inst(Some(100), None),
                Drops::ALL,
                BOTH,
                2_100,
                Gate::Go,
            ),
            (
                "not ready (crashed, unhealthy, starting) or on a lost node: go at once",
                inst(None, None),
                Drops::ALL,
                NONE,
                100,
                Gate::Go,
            ),
            (
                "crashed mid-drain: go without waiting out the grace",
                inst(Some(100), None),
                Drops::ALL,
                NONE,
                200,
                Gate::Go,
            ),
            (
                "relocation over: only the previous placement drains",
                inst(None, Some(None)),
                Drops::PREVIOUS,
                BOTH,
                100,
                Gate::Mark(Box::new(inst(None, Some(Some(100))))),
            ),
            (
                "removal of a relocating instance drains both placements",
                inst(None, Some(None)),
                Drops::ALL,
                BOTH,
                100,
                Gate::Mark(Box::new(inst(Some(100), Some(Some(100))))),
            ),
            (
                "a placement that got ready mid-drain is marked too (and keeps the others' marks)",
                inst(Some(100), Some(None)),
                Drops::ALL,
                BOTH,
                500,
                Gate::Mark(Box::new(inst(Some(100), Some(Some(500))))),
            ),
            (
                "the latest mark decides how long to wait",
                inst(Some(100), Some(Some(500))),
                Drops::ALL,
                BOTH,
                2_200,
                Gate::Wait { until: 2_500 },
            ),
            (
                "nothing dropped: go",
                inst(None, Some(None)),
                Drops::NONE,
                BOTH,
                100,
                Gate::Go,
            ),
        ];
        for (name, i, drops, live, now, want) in cases {
            assert_eq!(gate(i, *drops, &serving(live), g, *now), *want, "{name}");
        }
    }

    #[test]
    fn without_a_grace_a_step_goes_at_once_unmarked() {
        for (i, drops) in [
            (inst(None, None), Drops::ALL),
            (inst(None, Some(None)), Drops::PREVIOUS),
            (inst(Some(100), Some(None)), Drops::ALL),
        ] {
            assert_eq!(gate(&i, drops, &serving(BOTH), 0, 100), Gate::Go, "{i:?}");
        }
    }

    #[test]
    fn a_restarted_master_continues_the_drain_from_the_stored_mark() {
        // Marked at 1_000 with a 5 s grace; the master restarts and reads the record back.
        let rec = inst(Some(1_000), None);
        let rec: InstanceRecord =
            serde_json::from_slice(&crate::model::encode(&rec)).expect("record round-trips");
        assert!(is_draining(&rec));
        let live = serving(BOTH);
        assert_eq!(
            gate(&rec, Drops::ALL, &live, 5_000, 3_000),
            Gate::Wait { until: 6_000 },
            "not marked again: the grace counts from the first mark"
        );
        assert_eq!(gate(&rec, Drops::ALL, &live, 5_000, 6_000), Gate::Go);
        // Records written before draining existed read as not draining.
        let old = r#"{"stack":"s","service":"web","slot":0,"node":"a","generation":2,
            "spec_hash":"h","restart_nonce":0,"spec":{},"created_at":0,
            "previous":{"node":"b","generation":1}}"#;
        let old: InstanceRecord = serde_json::from_str(old).expect("old record");
        assert!(!is_draining(&old) && !is_previous_draining(&old));
    }

    #[test]
    fn unmark_clears_only_placements_no_longer_dropped() {
        let both = inst(Some(100), Some(Some(100)));
        assert_eq!(unmark(&both, Drops::ALL), None);
        assert_eq!(
            unmark(&both, Drops::PREVIOUS),
            Some(inst(None, Some(Some(100))))
        );
        assert_eq!(unmark(&both, Drops::NONE), Some(inst(None, Some(None))));
        assert_eq!(unmark(&inst(None, None), Drops::NONE), None);
    }

    #[test]
    fn start_first_keeps_what_serves() {
        let new_spec = ServiceSpec {
            image: Some("app:new".into()),
            ..Default::default()
        };
        #[allow(clippy::type_complexity)]
        let cases: &[(
            &str,
            InstanceRecord,
            &[(&str, u64)],
            Keep,
            Option<(&str, u64)>,
        )] = &[
            (
                "the ready current generation stays; its previous drains out",
                inst(None, Some(None)),
                BOTH,
                Keep::Current,
                Some(("a", 2)),
            ),
            (
                "a current that serves nothing goes at once; the older one that runs stays",
                inst(None, Some(None)),
                &[("b", 1)],
                Keep::Previous,
                Some(("b", 1)),
            ),
            (
                "nothing serves, nothing kept",
                inst(None, None),
                NONE,
                Keep::Nothing,
                None,
            ),
        ];
        for (name, i, live, keep, kept) in cases {
            let k = start_first_keeps(i, &serving(live));
            assert_eq!(k, *keep, "{name}");
            let p = kept_previous(i, k, "new", &new_spec);
            assert_eq!(
                p.as_ref().map(|p| (p.node.as_str(), p.generation)),
                *kept,
                "{name}"
            );
            if let Some(p) = p {
                // The old generation keeps running its own spec; nothing is draining yet.
                assert_eq!(p.spec_hash.as_deref(), Some("h"), "{name}");
                assert_eq!(p.spec.as_deref(), Some(&ServiceSpec::default()), "{name}");
                assert_eq!(p.draining_since, None, "{name}");
            }
        }
        assert_eq!(Keep::Current.drops(), Drops::PREVIOUS);
        assert_eq!(Keep::Nothing.drops(), Drops::ALL);
        // Same spec (a restart): the previous placement reads the record's spec.
        let p = kept_previous(
            &inst(None, None),
            Keep::Current,
            "h",
            &ServiceSpec::default(),
        )
        .expect("kept");
        assert_eq!((p.spec_hash, p.spec), (None, None));
    }

    #[test]
    fn helpers_tell_which_generation_drains() {
        let i = inst(None, Some(Some(100)));
        assert!(!is_draining(&i) && is_previous_draining(&i));
        assert!(generation_draining(&i, 1) && !generation_draining(&i, 2));
        assert!(!generation_draining(&i, 7));
        let mut s = ServiceSpec::default();
        assert_eq!(grace_ms(&s), DEFAULT_GRACE_MS);
        s.wharf.drain_grace_ms = Some(5_000);
        assert_eq!(grace_ms(&s), 5_000);
    }
}

/// The deployer with the drain, over an in-memory store: records and reports are written as the
/// API and the agents would, and each `pass` is one reconciliation.
#[cfg(test)]
mod deployer_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use wharf_store::{Op, SqliteStore, Txn};
    use wharf_types::{NodeState, ServiceSpec, StackSpec, UpdateOrder};

    use crate::deployer::Deployer;
    use crate::model::{InstanceRecord, NodeRecord, ServiceRecord, StackRecord, encode, keys};
    use crate::{Master, now_ms};

    const GRACE_MS: u64 = 1_500;

    async fn put<T: serde::Serialize>(m: &Master, key: String, v: &T) {
        m.store
            .txn(Txn::new().then([Op::put(key, encode(v))]))
            .await
            .expect("put");
    }

    async fn setup(replicas: u32, order: UpdateOrder) -> (Master, ServiceRecord) {
        let store = SqliteStore::open_in_memory().expect("store");
        let m = Master::new(Arc::new(store));
        let node = NodeRecord {
            id: "n1".into(),
            facts: wharf_types::NodeFacts {
                name: "n1".into(),
                drivers: vec![wharf_types::DriverKind::Docker],
                cpus: 4,
                memory_bytes: 1 << 33,
                ..Default::default()
            },
            labels: Default::default(),
            state: NodeState::Ready,
            since: 0,
            drain: false,
            address: None,
            tunnel: None,
            key_epoch: 0,
        };
        put(&m, keys::node("n1"), &node).await;
        let stack = StackRecord {
            name: "s".into(),
            spec: StackSpec {
                name: "s".into(),
                ..Default::default()
            },
            revision: 1,
            updated_at: 0,
            last_deployment: None,
            removing: None,
        };
        put(&m, keys::stack("s"), &stack).await;
        let mut spec = ServiceSpec {
            image: Some("app:1".into()),
            ..Default::default()
        };
        spec.wharf.drain_grace_ms = Some(GRACE_MS);
        spec.deploy.update_config.order = order;
        spec.deploy.update_config.monitor_ms = 0;
        let svc = ServiceRecord {
            spec_hash: "h1".into(),
            replicas,
            ..crate::testdata::service("web", spec)
        };
        put(&m, keys::service("s", "web"), &svc).await;
        (m, svc)
    }

    /// Change the service's image (a new spec `hash`): a rolling update.
    async fn update(m: &Master, image: &str, hash: &str) {
        let mut svc = service(m).await;
        std::sync::Arc::make_mut(&mut svc.spec).image = Some(image.into());
        svc.spec_hash = hash.into();
        put(m, keys::service("s", "web"), &svc).await;
    }

    async fn service(m: &Master) -> ServiceRecord {
        m.service("s", "web")
            .await
            .expect("read")
            .expect("service")
            .0
    }

    async fn instances(m: &Master) -> Vec<InstanceRecord> {
        m.instances(&keys::instances_of_service("s", "web"))
            .await
            .expect("instances")
    }

    /// The agent of n1 reports these (slot, generation, running and ready).
    async fn report(m: &Master, list: &[(u32, u64, bool)]) {
        report_on(m, "n1", list).await
    }

    async fn report_on(m: &Master, node: &str, list: &[(u32, u64, bool)]) {
        let instances: Vec<serde_json::Value> = list
            .iter()
            .map(|(slot, g, up)| {
                serde_json::json!({
                    "id": format!("s.web.{slot}"), "generation": g, "spec_hash": "h",
                    "state": if *up { "running" } else { "exited" }, "health": "none",
                    "exit_code": if *up { None } else { Some(1) }, "restarts": 0,
                })
            })
            .collect();
        let rep: wharf_types::NodeReport =
            serde_json::from_value(serde_json::json!({"instances": instances, "purged": []}))
                .expect("report");
        put(m, keys::status(node), &rep).await;
    }

    async fn pass(m: &Master) {
        Deployer::new(m.clone()).pass().await.expect("pass");
    }

    /// (slot, generation, draining) of every record.
    async fn marks(m: &Master) -> Vec<(u32, u64, bool)> {
        instances(m)
            .await
            .iter()
            .map(|i| (i.slot, i.generation, super::is_draining(i)))
            .collect()
    }

    #[tokio::test]
    async fn scale_down_marks_waits_out_the_grace_then_removes() {
        let (m, _) = setup(3, UpdateOrder::StopFirst).await;
        pass(&m).await;
        assert_eq!(
            marks(&m).await,
            vec![(0, 1, false), (1, 2, false), (2, 3, false)]
        );
        // Slot 2 crashed: it serves nothing, so it needs no drain.
        report(&m, &[(0, 1, true), (1, 2, true), (2, 3, false)]).await;
        let mut svc = service(&m).await;
        svc.replicas = 1;
        put(&m, keys::service("s", "web"), &svc).await;

        let before = now_ms();
        pass(&m).await;
        assert_eq!(
            marks(&m).await,
            vec![(0, 1, false), (1, 2, true)],
            "the ready one is marked and kept, the crashed one removed at once"
        );
        let since = instances(&m).await[1].draining_since.expect("marked");
        assert!(since >= before);

        // A master restarted mid-drain (a new deployer reading the records) carries on: the
        // mark is not renewed, and the slot stays until the grace is over.
        pass(&m).await;
        assert_eq!(instances(&m).await[1].draining_since, Some(since));
        tokio::time::sleep(Duration::from_millis(GRACE_MS + 100)).await;
        pass(&m).await;
        assert_eq!(
            marks(&m).await,
            vec![(0, 1, false)],
            "removed after the grace"
        );
    }

    #[tokio::test]
    async fn scaling_up_again_mid_drain_clears_the_mark() {
        let (m, _) = setup(2, UpdateOrder::StopFirst).await;
        pass(&m).await;
        report(&m, &[(0, 1, true), (1, 2, true)]).await;
        let mut svc = service(&m).await;
        svc.replicas = 1;
        put(&m, keys::service("s", "web"), &svc).await;
        pass(&m).await;
        assert_eq!(marks(&m).await, vec![(0, 1, false), (1, 2, true)]);
        let mut svc = service(&m).await;
        svc.replicas = 2;
        put(&m, keys::service("s", "web"), &svc).await;
        pass(&m).await;
        assert_eq!(
            marks(&m).await,
            vec![(0, 1, false), (1, 2, false)],
            "serves again, same generation"
        );
    }

    #[tokio::test]
    async fn stop_first_replacement_drains_the_old_generation_first() {
        let (m, _) = setup(1, UpdateOrder::StopFirst).await;
        pass(&m).await;
        report(&m, &[(0, 1, true)]).await;
        update(&m, "app:2", "h2").await;
        pass(&m).await;
        assert_eq!(marks(&m).await, vec![(0, 1, true)], "marked, not replaced");
        tokio::time::sleep(Duration::from_millis(GRACE_MS + 100)).await;
        pass(&m).await;
        let i = instances(&m).await;
        assert_eq!(
            (i[0].generation, i[0].spec_hash.as_str(), &i[0].previous),
            (2, "h2", &None),
            "replaced after the grace"
        );
        assert!(!super::is_draining(&i[0]));
    }

    #[tokio::test]
    async fn start_first_keeps_the_old_generation_assigned_and_drains_it_once_the_new_is_ready() {
        let (m, _) = setup(1, UpdateOrder::StartFirst).await;
        pass(&m).await;
        report(&m, &[(0, 1, true)]).await;
        update(&m, "app:2", "h2").await;
        pass(&m).await;
        let i = instances(&m).await.remove(0);
        assert_eq!((i.generation, i.spec_hash.as_str()), (2, "h2"));
        let prev = i
            .previous
            .clone()
            .expect("the old generation stays assigned");
        assert_eq!((prev.node.as_str(), prev.generation), ("n1", 1));
        assert_eq!(
            i.previous_spec().map(|(h, s)| (h, s.image.as_deref())),
            Some(("h1", Some("app:1"))),
            "it keeps running its own spec"
        );
        assert!(
            !super::is_previous_draining(&i),
            "not before the new one is ready"
        );

        report(&m, &[(0, 1, true), (0, 2, true)]).await;
        pass(&m).await;
        let i = instances(&m).await.remove(0);
        assert!(
            super::is_previous_draining(&i),
            "new one ready: the old drains"
        );
        assert!(super::generation_draining(&i, 1) && !super::generation_draining(&i, 2));
        pass(&m).await;
        assert!(
            instances(&m).await[0].previous.is_some(),
            "inside the grace"
        );
        tokio::time::sleep(Duration::from_millis(GRACE_MS + 100)).await;
        pass(&m).await;
        assert_eq!(
            instances(&m).await[0].previous,
            None,
            "dropped after the grace"
        );
    }

    #[tokio::test]
    async fn a_removed_stack_drains_its_instances_first() {
        let (m, _) = setup(1, UpdateOrder::StopFirst).await;
        pass(&m).await;
        report(&m, &[(0, 1, true)]).await;
        let (mut st, _) = m.stack("s").await.expect("read").expect("stack");
        st.removing = Some(crate::model::Removal { volumes: false });
        put(&m, keys::stack("s"), &st).await;
        pass(&m).await;
        assert_eq!(marks(&m).await, vec![(0, 1, true)]);
        tokio::time::sleep(Duration::from_millis(GRACE_MS + 100)).await;
        pass(&m).await;
        assert_eq!(marks(&m).await, vec![]);
    }

    #[tokio::test]
    async fn a_service_removed_from_the_stack_drains_its_instances_first() {
        let (m, _) = setup(2, UpdateOrder::StopFirst).await;
        pass(&m).await;
        report(&m, &[(0, 1, true), (1, 2, true)]).await;
        m.store
            .txn(Txn::new().then([Op::delete(keys::service("s", "web"))]))
            .await
            .expect("delete");
        pass(&m).await;
        assert_eq!(marks(&m).await, vec![(0, 1, true), (1, 2, true)]);
        tokio::time::sleep(Duration::from_millis(GRACE_MS + 100)).await;
        pass(&m).await;
        assert_eq!(marks(&m).await, vec![]);
    }

    #[tokio::test]
    async fn a_node_drain_relocates_and_drains_the_old_placement_once_the_new_is_ready() {
        let (m, _) = setup(1, UpdateOrder::StopFirst).await;
        pass(&m).await;
        report(&m, &[(0, 1, true)]).await;
        let (kvs, _) = m.store.range(&keys::node("n1")).await.expect("nodes");
        let mut n1: NodeRecord = crate::model::decode("n1", &kvs[0].value).expect("node");
        let mut n2 = n1.clone();
        n2.id = "n2".into();
        put(&m, keys::node("n2"), &n2).await;
        n1.drain = true;
        put(&m, keys::node("n1"), &n1).await;

        pass(&m).await;
        let i = instances(&m).await.remove(0);
        let prev = i.previous.clone().expect("relocating");
        assert_eq!(
            (
                i.node.as_str(),
                i.generation,
                prev.node.as_str(),
                prev.generation
            ),
            ("n2", 2, "n1", 1)
        );
        assert!(
            !super::is_previous_draining(&i),
            "serves until the new one is ready"
        );

        report_on(&m, "n2", &[(0, 2, true)]).await;
        pass(&m).await;
        assert!(super::is_previous_draining(&instances(&m).await[0]));
        tokio::time::sleep(Duration::from_millis(GRACE_MS + 100)).await;
        pass(&m).await;
        assert_eq!(instances(&m).await[0].previous, None);
    }
}
