//! The event log's derivations, cursors, and the decorator writing events with their change.

use std::sync::Arc;

use wharf_store::{Op, SqliteStore, Store, Txn};
use wharf_types::{
    Deployment, DeploymentState, Health, InstanceReport, InstanceState, NodeReport, ServiceProgress,
};

use super::store::{Evented, prune};
use super::*;

/// An instance in a report: id, generation, state, health, restarts.
type Seen<'a> = (&'a str, u64, InstanceState, Health, u32);
/// A change of a record (before, after) and the events it should tell, in order.
type Case<'a> = (Option<Vec<u8>>, Option<Vec<u8>>, &'a [&'a str]);
/// A deployment before (if any) and after, and the events it should tell.
type DeployCase<'a> = (Option<Vec<u8>>, Vec<u8>, &'a [&'a str]);

fn report(insts: &[Seen]) -> Vec<u8> {
    let r = NodeReport {
        instances: insts
            .iter()
            .map(|(id, generation, state, health, restarts)| InstanceReport {
                id: id.to_string(),
                generation: *generation,
                spec_hash: "h".into(),
                state: *state,
                health: *health,
                container_id: None,
                exit_code: (*state == InstanceState::Exited).then_some(3),
                error: None,
                health_output: None,
                restarts: *restarts,
                started_at: None,
                finished_at: None,
                address: None,
            })
            .collect(),
        ..NodeReport::default()
    };
    serde_json::to_vec(&r).unwrap()
}

fn kinds(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.kind.clone()).collect()
}

#[test]
fn an_instance_report_tells_each_step_once() {
    use Health::*;
    use InstanceState::*;
    let steps: &[(&[Seen], &[&str])] = &[
        (&[("s.web.1", 1, Pending, None, 0)], &["instance.created"]),
        (
            &[("s.web.1", 1, Running, Starting, 0)],
            &["instance.started"],
        ),
        (&[("s.web.1", 1, Running, Starting, 0)], &[]),
        (
            &[("s.web.1", 1, Running, Healthy, 0)],
            &["instance.healthy"],
        ),
        (
            &[("s.web.1", 1, Running, Unhealthy, 0)],
            &["instance.unhealthy"],
        ),
        (
            &[("s.web.1", 1, Exited, Unhealthy, 0)],
            &["instance.exited"],
        ),
        (
            &[("s.web.1", 1, Running, Starting, 1)],
            &["instance.restarted", "instance.started"],
        ),
        // A new generation beside the old one, then the old one gone.
        (
            &[
                ("s.web.1", 1, Stopping, None, 1),
                ("s.web.1", 2, Running, None, 0),
            ],
            &["instance.stopping", "instance.started"],
        ),
        (&[("s.web.1", 2, Running, None, 0)], &["instance.removed"]),
    ];
    let mut old: Option<Vec<u8>> = Option::None;
    for (i, (now, want)) in steps.iter().enumerate() {
        let new = report(now);
        let events = of_change("/status/n1", old.as_deref(), Some(&new));
        assert_eq!(kinds(&events), *want, "step {i}: {now:?}");
        for e in &events {
            assert_eq!(e.stack.as_deref(), Some("s"));
            assert_eq!(e.service.as_deref(), Some("web"));
            assert_eq!(e.instance.as_deref(), Some("s.web.1"));
            assert_eq!(e.node.as_deref(), Some("n1"));
        }
        old = Some(new);
    }
    let exited = of_change(
        "/status/n1",
        Some(&report(&[("s.web.1", 1, Running, None, 0)])),
        Some(&report(&[("s.web.1", 1, Exited, None, 0)])),
    );
    assert_eq!(exited[0].message, "exited with code 3");
}

fn instance(node: &str, generation: u64, draining: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "stack": "s", "service": "web", "slot": 2, "node": node, "generation": generation,
        "spec_hash": "h", "restart_nonce": 0, "spec": {"image": "x"}, "created_at": 1,
        "draining_since": if draining { Some(5) } else { None },
    }))
    .unwrap()
}

#[test]
fn instance_records_tell_the_masters_decisions() {
    let key = "/instances/s/web/000002";
    let cases: &[Case] = &[
        (None, Some(instance("a", 1, false)), &["instance.scheduled"]),
        (
            Some(instance("a", 1, false)),
            Some(instance("a", 1, false)),
            &[],
        ),
        (
            Some(instance("a", 1, false)),
            Some(instance("a", 2, false)),
            &["instance.scheduled"],
        ),
        (
            Some(instance("a", 1, false)),
            Some(instance("b", 2, false)),
            &["instance.moved"],
        ),
        (
            Some(instance("a", 1, false)),
            Some(instance("a", 1, true)),
            &["instance.draining"],
        ),
        (
            Some(instance("a", 1, true)),
            None,
            &["instance.unscheduled"],
        ),
    ];
    for (old, new, want) in cases {
        let events = of_change(key, old.as_deref(), new.as_deref());
        assert_eq!(kinds(&events), *want, "{old:?} -> {new:?}");
        assert!(
            events
                .iter()
                .all(|e| e.instance.as_deref() == Some("s.web.2"))
        );
    }
}

fn deployment(state: DeploymentState, updated: u32, message: Option<&str>) -> Vec<u8> {
    serde_json::to_vec(&Deployment {
        id: "d1".into(),
        stack: "s".into(),
        revision: 4,
        state,
        message: message.map(str::to_string),
        services: vec![ServiceProgress {
            service: "web".into(),
            desired: 3,
            updated,
            ready: updated,
            error: None,
            note: None,
            instances: vec![],
        }],
        created_at: 1,
        updated_at: 2,
        trigger: None,
        images: Default::default(),
        by: None,
    })
    .unwrap()
}

#[test]
fn deployments_tell_their_start_progress_and_outcome() {
    use DeploymentState::*;
    let key = "/deployments/d1";
    let cases: &[DeployCase] = &[
        (None, deployment(InProgress, 0, None), &["deploy.started"]),
        (
            Some(deployment(InProgress, 0, None)),
            deployment(InProgress, 0, Some("note")),
            &[],
        ),
        (
            Some(deployment(InProgress, 0, None)),
            deployment(InProgress, 2, None),
            &["deploy.progress"],
        ),
        (
            Some(deployment(InProgress, 2, None)),
            deployment(Succeeded, 3, None),
            &["deploy.progress", "deploy.succeeded"],
        ),
        (
            Some(deployment(InProgress, 2, None)),
            deployment(Failed, 2, Some("rolled back to the previous version: boom")),
            &["deploy.rolled_back"],
        ),
        (
            Some(deployment(InProgress, 2, None)),
            deployment(Failed, 2, Some("service web: boom")),
            &["deploy.failed"],
        ),
    ];
    for (old, new, want) in cases {
        let events = of_change(key, old.as_deref(), Some(new));
        assert_eq!(kinds(&events), *want);
        assert!(events.iter().all(|e| e.deployment.as_deref() == Some("d1")));
    }
    let progress = of_change(
        key,
        Some(&deployment(InProgress, 0, None)),
        Some(&deployment(InProgress, 2, None)),
    );
    assert_eq!(progress[0].message, "2 of 3 updated, 2 ready");
}

#[test]
fn a_deployment_ends_once_with_its_outcome_and_duration() {
    use DeploymentState::*;
    let key = "/deployments/d1";
    // (before, after, the outcome it ends with)
    type EndCase<'a> = (Option<Vec<u8>>, Vec<u8>, Option<&'a str>);
    let cases: &[EndCase] = &[
        (None, deployment(InProgress, 0, None), None),
        (
            Some(deployment(InProgress, 2, None)),
            deployment(InProgress, 3, None),
            None,
        ),
        (
            Some(deployment(InProgress, 2, None)),
            deployment(Succeeded, 3, None),
            Some("succeeded"),
        ),
        // Written again once it ended (a note, a compaction): not a second end.
        (
            Some(deployment(Succeeded, 3, None)),
            deployment(Succeeded, 3, Some("n")),
            None,
        ),
        (
            Some(deployment(InProgress, 2, None)),
            deployment(Failed, 2, Some("rolled back to the previous version: boom")),
            Some("rolled_back"),
        ),
        (
            Some(deployment(InProgress, 2, None)),
            deployment(Failed, 2, Some("boom")),
            Some("failed"),
        ),
    ];
    for (old, new, want) in cases {
        let told = of_change(key, old.as_deref(), Some(new));
        let got = super::ended(key, new, &told);
        assert_eq!(got.as_ref().map(|e| e.outcome), *want, "{told:?}");
        if let Some(e) = got {
            // created_at 1 ms, updated_at 2 ms (`deployment`).
            assert_eq!(e.took, std::time::Duration::from_millis(1));
        }
    }
    // Other keys end nothing, whatever they tell.
    let told = of_change(key, None, Some(&deployment(Succeeded, 3, None)));
    assert!(super::ended("/nodes/n1", &deployment(Succeeded, 3, None), &told).is_none());
}

fn node(state: &str, drain: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": "n1", "facts": {"name": "host-1", "drivers": [], "cpus": 1, "memory_bytes": 1, "os": "linux"},
        "state": state, "since": 1, "drain": drain,
    }))
    .unwrap()
}

#[test]
fn nodes_tell_joins_states_drains_and_removal() {
    let key = "/nodes/n1";
    let cases: &[Case] = &[
        (None, Some(node("ready", false)), &["node.joined"]),
        (
            Some(node("ready", false)),
            Some(node("unreachable", false)),
            &["node.unreachable"],
        ),
        (
            Some(node("unreachable", false)),
            Some(node("down", false)),
            &["node.down"],
        ),
        (
            Some(node("down", false)),
            Some(node("ready", false)),
            &["node.ready"],
        ),
        (
            Some(node("ready", false)),
            Some(node("ready", true)),
            &["node.drained"],
        ),
        (
            Some(node("ready", true)),
            Some(node("ready", false)),
            &["node.activated"],
        ),
        (Some(node("ready", false)), None, &["node.removed"]),
    ];
    for (old, new, want) in cases {
        let events = of_change(key, old.as_deref(), new.as_deref());
        assert_eq!(kinds(&events), *want);
        assert!(events.iter().all(|e| e.node.as_deref() == Some("n1")));
    }
    assert_eq!(
        of_change(key, None, Some(&node("ready", false)))[0].message,
        "joined the cluster (host-1)"
    );
}

#[test]
fn cursors_parse_and_order() {
    assert_eq!(
        Cursor::parse("12.3"),
        Some(Cursor {
            revision: 12,
            index: 3
        })
    );
    assert_eq!(Cursor::parse("12").map(|c| c.index), Some(u32::MAX));
    assert_eq!(Cursor::parse("x.1"), None);
    assert_eq!(Cursor::parse("1.-1"), None);
    assert!(
        Cursor {
            revision: 2,
            index: 0
        } > Cursor {
            revision: 1,
            index: 9
        }
    );
    assert_eq!(index_of(&keys::event(1, 2, 7)), Some(7));
}

#[tokio::test]
async fn events_commit_with_their_change_or_not_at_all() {
    let base: Arc<dyn Store> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let store = Evented::new(base.clone());
    let r = store
        .txn(Txn::new().then([
            Op::put(
                "/status/n1",
                report(&[("s.web.1", 1, InstanceState::Running, Health::None, 0)]),
            ),
            Op::put("/other", b"x".to_vec()),
        ]))
        .await
        .unwrap();
    assert_eq!(
        r.responses.len(),
        2,
        "the caller sees only its own responses"
    );
    let (events, _) = base.range(keys::EVENTS).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].mod_revision, r.revision,
        "the event commits with the change"
    );
    // A transaction whose compare fails writes no event of its success branch.
    let r = store
        .txn(
            Txn::new()
                .when([wharf_store::Compare::missing("/other")])
                .then([Op::put("/status/n1", report(&[]))]),
        )
        .await
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!(base.range(keys::EVENTS).await.unwrap().0.len(), 1);
    // Two transactions of one writer in the same millisecond write two events.
    for state in [InstanceState::Exited, InstanceState::Running] {
        store
            .txn(Txn::new().then([Op::put(
                "/status/n1",
                report(&[("s.web.1", 1, state, Health::None, 0)]),
            )]))
            .await
            .unwrap();
    }
    assert_eq!(base.range(keys::EVENTS).await.unwrap().0.len(), 3);
    // Pruning keeps what is younger than the retention.
    assert_eq!(prune(&store, crate::now_ms()).await.unwrap(), 0);
    assert_eq!(
        prune(&store, crate::now_ms() + super::store::KEEP_FOR_MS + 1000)
            .await
            .unwrap(),
        3
    );
    assert!(base.range(keys::EVENTS).await.unwrap().0.is_empty());
}
