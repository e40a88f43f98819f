//! Issue 14, acceptance check 2: the event stream of a deploy shows every instance's steps in
//! order; a stream resumed from a cursor after a disconnect loses and repeats nothing.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use wharf_types::Event;

use common::stack::{Service, Stack};
use common::*;

/// Reads `stream` until `done` holds for the events read so far, or the deadline passes.
async fn read_until(
    stream: &mut wharf_client::Events,
    seen: &mut Vec<Event>,
    within: Duration,
    what: &str,
    done: impl Fn(&[Event]) -> bool,
) {
    let deadline = Instant::now() + within;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Ok(Some(Ok(e))) => seen.push(e),
            Ok(Some(Err(e))) => panic!("the event stream failed while waiting for {what}: {e}"),
            Ok(None) => panic!("the event stream ended while waiting for {what}"),
            Err(_) => panic!(
                "no {what} within {within:?}; events seen:\n{}",
                kinds(seen).join("\n")
            ),
        }
    }
}

fn kinds(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e.cursor,
                e.kind,
                e.instance.as_deref().unwrap_or("")
            )
        })
        .collect()
}

fn ended(events: &[Event], deployment: &str) -> bool {
    events.iter().any(|e| {
        e.deployment.as_deref() == Some(deployment)
            && matches!(e.kind.as_str(), "deploy.succeeded" | "deploy.failed")
    })
}

/// The steps each instance generation went through, in stream order.
fn steps(events: &[Event]) -> BTreeMap<(String, u64), Vec<String>> {
    let mut out: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
    for e in events {
        if let (Some(i), Some(g)) = (&e.instance, e.generation) {
            out.entry((i.clone(), g)).or_default().push(e.kind.clone());
        }
    }
    out
}

/// Whether `want` appears in `got` in this order (other steps may come between).
fn in_order(got: &[String], want: &[&str]) -> bool {
    let mut it = got.iter();
    want.iter().all(|w| it.any(|g| g == w))
}

fn cursors(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.cursor.clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_streams_every_instance_step_and_a_resumed_stream_loses_nothing() {
    let (mut w, stack) = Wharf::start_for("events").await;
    let client = w.client().clone();
    let mut live = client
        .events(None, None, Some(&stack), true)
        .await
        .expect("open the event stream");

    let yaml = Stack::new(&stack)
        .service(Service::testapp("web").replicas(3).healthcheck())
        .yaml();
    let file = w.stack_file(&stack, &yaml);
    let first = w.deploy_detached(&file);
    let mut seen = vec![];
    read_until(
        &mut live,
        &mut seen,
        Duration::from_secs(60),
        "the first deploy's end",
        |s| ended(s, &first),
    )
    .await;
    let outcome = seen
        .iter()
        .find(|e| {
            e.deployment.as_deref() == Some(first.as_str())
                && e.kind.starts_with("deploy.")
                && e.kind != "deploy.started"
                && e.kind != "deploy.progress"
        })
        .map(|e| e.kind.clone());
    assert_eq!(
        outcome.as_deref(),
        Some("deploy.succeeded"),
        "{}",
        kinds(&seen).join("\n")
    );
    // Every instance went scheduled -> started -> healthy, in that order, in the stream.
    let per_instance = steps(&seen);
    assert_eq!(per_instance.len(), 3, "three instances: {per_instance:?}");
    for ((id, generation), got) in &per_instance {
        assert!(
            in_order(
                got,
                &["instance.scheduled", "instance.started", "instance.healthy"]
            ),
            "{id} generation {generation}: steps {got:?}"
        );
        assert!(id.starts_with(&format!("{stack}.web.")), "{id}");
    }
    // The deploy's own events frame them: started first, succeeded after every healthy.
    let pos = |pred: &dyn Fn(&Event) -> bool| seen.iter().position(pred).expect("an event");
    let started = pos(&|e| e.kind == "deploy.started");
    let succeeded = pos(&|e| e.kind == "deploy.succeeded");
    let last_healthy = seen
        .iter()
        .rposition(|e| e.kind == "instance.healthy")
        .unwrap();
    assert!(
        started < last_healthy && last_healthy < succeeded,
        "{}",
        kinds(&seen).join("\n")
    );

    // Disconnect part-way (after the first few events of a second deploy), let the rest happen
    // while nobody reads, and resume from the last cursor read.
    let mut before = seen.clone();
    let yaml2 = Stack::new(&stack)
        .service(
            Service::testapp("web")
                .replicas(3)
                .healthcheck()
                .env("VERSION", "2"),
        )
        .yaml();
    let file = w.stack_file(&stack, &yaml2);
    let second = w.deploy_detached(&file);
    read_until(
        &mut live,
        &mut before,
        Duration::from_secs(30),
        "the second deploy's start",
        |s| {
            s.iter().any(|e| {
                e.kind == "deploy.started" && e.deployment.as_deref() == Some(second.as_str())
            })
        },
    )
    .await;
    drop(live);
    let cursor = before.last().unwrap().cursor.clone();
    let d = w
        .wait_deployment_end(&second, "the second deploy", Duration::from_secs(60))
        .await;
    assert_eq!(d.state, wharf_types::DeploymentState::Succeeded, "{d:?}");

    let mut resumed = client
        .events(Some(&cursor), None, Some(&stack), true)
        .await
        .expect("resume the event stream");
    let mut after = vec![];
    read_until(
        &mut resumed,
        &mut after,
        Duration::from_secs(30),
        "the second deploy's end",
        |s| ended(s, &second),
    )
    .await;
    // Everything the log holds up to there, read in one go without following.
    let mut all = client
        .events(None, None, Some(&stack), false)
        .await
        .expect("read the event log");
    let mut whole = vec![];
    while let Some(e) = all.next().await {
        whole.push(e.expect("an event"));
    }
    let joined: Vec<String> = cursors(&before)
        .into_iter()
        .chain(cursors(&after))
        .collect();
    let upto = whole
        .iter()
        .position(|e| e.cursor == *joined.last().unwrap())
        .expect("the last resumed event is in the log");
    assert_eq!(
        joined,
        cursors(&whole[..=upto]),
        "the stream read before the disconnect plus the resumed one is the log, nothing lost \
         or repeated\nbefore:\n{}\nafter:\n{}",
        kinds(&before).join("\n"),
        kinds(&after).join("\n")
    );
    // The rolling update's new generations went through their steps too.
    let updated: Vec<_> = steps(&whole)
        .into_iter()
        .filter(|(_, got)| {
            got.first().map(String::as_str) == Some("instance.scheduled")
                && got.iter().any(|k| k == "instance.healthy")
        })
        .collect();
    assert!(
        updated.len() >= 6,
        "3 first and 3 new generations went scheduled..healthy: {updated:?}"
    );

    // The CLI: a line per event, and `-o json` the same events as the API.
    let (text, _) = w.cli_code(&["events", "--stack", &stack], 0);
    assert!(
        text.lines()
            .any(|l| l.contains("instance.healthy") && l.contains(&format!("{stack}.web."))),
        "`wharf events` lines:\n{text}"
    );
    let (json, _) = w.cli_code(
        &[
            "events",
            "--stack",
            &stack,
            "-o",
            "json",
            "--after",
            &whole[upto].cursor,
        ],
        0,
    );
    let tail: Vec<Event> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    // (Events may have come since the log was read: they can only follow.)
    assert!(
        cursors(&tail).starts_with(&cursors(&whole[upto + 1..])),
        "`--after` resumes right after"
    );
    let (_, err) = w.cli_code(&["events", "--after", "nonsense"], 2);
    assert!(err.contains("after") && err.contains("cursor"), "{err}");
}
