//! Jobs end to end on the real engine (issue "Operability", check 5): a cron job every 5 s
//! with `concurrency: forbid` whose runs take 2.5 to 6.5 s (longer than the interval about
//! half the time) starts each run on time and never overlaps two; `wharf up` killed -9 across
//! scheduled times runs the latest missed one exactly once when it is back; a `replicated-job`
//! of 3 completes 3 runs that exit 0 and are not restarted, and a job that exits 5 shows 5.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use wharf_testkit::{Check, not_yet, testapp_image, unique_stack, wait_for};
use wharf_types::{JobRun, RunState};

/// How late a run may start after its scheduled time: the deployer wakes at the time, plans,
/// publishes, and the engine creates and starts the container (about 0.5 s here; the rest is
/// room for a loaded machine).
const ON_TIME_MS: u64 = 2_000;

/// The test's stack: `cron` every 5 s (forbid, runs of 2.5 to 6.5 s), `batch` a replicated-job
/// of 3 exiting 0 after 300 ms, `each` a global-job (one node here), `bad` a job exiting 5
/// with no restart.
fn stack_file(image: &str) -> String {
    format!(
        "services:
  cron:
    image: {image}
    environment: {{CRASH_AFTER_MS: '2500', CRASH_JITTER_MS: '4000', CRASH_CODE: '0'}}
    x-wharf:
      schedule: '*/5 * * * * *'
      concurrency: forbid
      deadline: 20s
      history: 30
  batch:
    image: {image}
    environment: {{CRASH_AFTER_MS: '300', CRASH_CODE: '0'}}
    deploy:
      mode: replicated-job
      replicas: 3
  each:
    image: {image}
    environment: {{CRASH_AFTER_MS: '300', CRASH_CODE: '0'}}
    deploy:
      mode: global-job
  bad:
    image: {image}
    environment: {{CRASH_AFTER_MS: '300', CRASH_CODE: '5'}}
    deploy:
      mode: replicated-job
      restart_policy: {{condition: none}}
"
    )
}

/// The runs of a job, as `wharf job ps -o json` prints them.
async fn runs_of(w: &Wharf, stack: &str, service: &str) -> Vec<JobRun> {
    let (out, _) = w
        .cli_code_async(
            &["job", "ps", &format!("{stack}/{service}"), "-o", "json"],
            0,
        )
        .await;
    serde_json::from_str(&out).expect("job ps -o json: runs")
}

/// Wait until `service`'s runs satisfy `ok`; its runs.
async fn wait_runs(
    w: &Wharf,
    stack: &str,
    service: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&[JobRun]) -> bool,
) -> Vec<JobRun> {
    wait_for(what, timeout, || async {
        let runs = runs_of(w, stack, service).await;
        if ok(&runs) {
            Check::Done(runs)
        } else {
            not_yet(table(&runs))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()))
}

fn table(runs: &[JobRun]) -> String {
    runs.iter()
        .map(|r| {
            format!(
                "run {} {:?} scheduled {:?} started {:?} ended {:?} exit {:?} {}",
                r.id,
                r.state,
                r.scheduled_at,
                r.started_at,
                r.ended_at,
                r.exit_code,
                r.message.as_deref().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ended(runs: &[JobRun]) -> Vec<&JobRun> {
    runs.iter()
        .filter(|r| matches!(r.state, RunState::Succeeded | RunState::Failed))
        .collect()
}

/// Every run that started, started within `ON_TIME_MS` of its time (`late_ok`: scheduled times
/// whose runs may be late, the master being down); none overlaps the next; no scheduled time
/// was decided twice.
fn check_schedule(runs: &[JobRun], late_ok: &BTreeSet<u64>) {
    let all = table(runs);
    let times: Vec<u64> = runs.iter().filter_map(|r| r.scheduled_at).collect();
    let distinct: BTreeSet<u64> = times.iter().copied().collect();
    assert_eq!(distinct.len(), times.len(), "a time decided twice:\n{all}");
    let mut started: Vec<&JobRun> = runs.iter().filter(|r| r.started_at.is_some()).collect();
    started.sort_by_key(|r| r.started_at);
    for r in &started {
        let (at, start) = (r.scheduled_at.unwrap(), r.started_at.unwrap());
        assert!(
            start + 200 >= at,
            "run {} started before its time:\n{all}",
            r.id
        );
        if !late_ok.contains(&at) {
            assert!(
                start <= at + ON_TIME_MS,
                "run {} started {} ms after its time:\n{all}",
                r.id,
                start - at
            );
        }
    }
    for pair in started.windows(2) {
        let end = pair[0].ended_at.expect("an earlier run ended");
        assert!(
            pair[1].started_at.unwrap() >= end,
            "runs {} and {} overlap:\n{all}",
            pair[0].id,
            pair[1].id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cron_jobs_run_on_time_never_overlap_and_survive_a_master_kill() {
    let image = testapp_image().await.expect("test image");
    let mut w = Wharf::start().await;
    let stack = unique_stack("jobs");
    let file = w.stack_file(&stack, &stack_file(&image));
    w.cli_code_async(&["stack", "deploy", "-c", utf8(&file)], 0)
        .await;

    // The replicated-job: 3 runs' worth of instances, all exit 0, none restarted.
    let batch = wait_runs(
        &w,
        &stack,
        "batch",
        "the batch job's run to succeed",
        Duration::from_secs(30),
        |r| r.len() == 1 && r[0].state == RunState::Succeeded,
    )
    .await;
    let codes: Vec<Option<i64>> = batch[0].tasks.iter().map(|t| t.exit_code).collect();
    assert_eq!(codes, vec![Some(0); 3], "{}", table(&batch));
    assert!(batch[0].tasks.iter().all(|t| t.restarts == 0));
    let each = wait_runs(
        &w,
        &stack,
        "each",
        "the global job's run to succeed",
        Duration::from_secs(30),
        |r| r.len() == 1 && r[0].state == RunState::Succeeded,
    )
    .await;
    assert_eq!(each[0].tasks.len(), 1, "one per node: {}", table(&each));
    let bad = wait_runs(
        &w,
        &stack,
        "bad",
        "the bad job's run to fail",
        Duration::from_secs(30),
        |r| r.len() == 1 && r[0].state == RunState::Failed,
    )
    .await;
    assert_eq!(bad[0].exit_code, Some(5), "{}", table(&bad));

    // About 30 s of the cron job: runs on time, never two at once, forbid skips some times.
    let runs = wait_runs(
        &w,
        &stack,
        "cron",
        "5 ended runs of the cron job",
        Duration::from_secs(45),
        |r| ended(r).len() >= 5,
    )
    .await;
    check_schedule(&runs, &BTreeSet::new());
    assert!(
        runs.iter().all(|r| r.state != RunState::Failed),
        "{}",
        table(&runs)
    );

    // Kill -9 just after a run started; stay down across the next two scheduled times (the
    // run ends meanwhile); back, the latest missed time runs once, the earlier one never.
    // A run that started, caught within 2.5 s of its time (before the next time comes).
    let before = wait_runs(
        &w,
        &stack,
        "cron",
        "a run of the cron job to start",
        Duration::from_secs(30),
        |r| {
            r.last().is_some_and(|l| {
                l.state == RunState::Running
                    && l.started_at.is_some()
                    && now_ms() < l.scheduled_at.unwrap_or(0) + 2_500
            })
        },
    )
    .await;
    let last = before.last().unwrap().clone();
    w.kill9();
    let at = last.scheduled_at.unwrap();
    let (missed_1, missed_2) = (at + 5_000, at + 10_000);
    // Back just after the second missed time (the run, 6.5 s at most, ended before): the
    // master is up and has its reports well before the next time (at + 15 s).
    tokio::time::sleep(Duration::from_millis(
        (missed_2 + 300).saturating_sub(now_ms()),
    ))
    .await;
    w.launch(&[]).await;
    let runs = wait_runs(
        &w,
        &stack,
        "cron",
        "the missed time to run once the master is back",
        Duration::from_secs(20),
        |r| {
            r.iter()
                .any(|x| x.scheduled_at == Some(missed_2) && x.ended_at.is_some())
        },
    )
    .await;
    let all = table(&runs);
    let of = |t: u64| runs.iter().filter(|r| r.scheduled_at == Some(t)).count();
    assert_eq!(
        of(missed_2),
        1,
        "the latest missed time decided once:\n{all}"
    );
    let missed = runs
        .iter()
        .find(|r| r.scheduled_at == Some(missed_2))
        .unwrap();
    assert_eq!(
        missed.state,
        RunState::Succeeded,
        "the latest missed time ran (the run before it ended while the master was down):\n{all}"
    );
    assert_eq!(
        of(missed_1),
        0,
        "an earlier missed time collapses into it:\n{all}"
    );
    let interrupted = runs.iter().find(|r| r.id == last.id).unwrap();
    assert_eq!(interrupted.state, RunState::Succeeded, "{all}");
    check_schedule(&runs, &BTreeSet::from([missed_2]));
    eprintln!(
        "runs of the cron job (killed after run {}):\n{all}",
        last.id
    );

    // The replicated-job did not run again with the master's restart.
    let batch = runs_of(&w, &stack, "batch").await;
    assert_eq!(batch.len(), 1, "{}", table(&batch));

    // `wharf job ls` and `wharf job logs` show it for people.
    let (ls, _) = w.cli_code_async(&["job", "ls", &stack], 0).await;
    assert!(
        ls.contains(&format!("{stack}/cron")) && ls.contains("*/5 * * * * *"),
        "{ls}"
    );
    assert!(ls.contains("failed (5)"), "the bad job's outcome in:\n{ls}");
    let (logs, _) = w
        .cli_code_async(&["job", "logs", &format!("{stack}/bad")], 0)
        .await;
    assert!(logs.contains("crashing with exit code 5"), "{logs}");
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
