//! Acceptance check 10: `wharf service logs -f` streams a new line within a second, prefixed by its
//! instance; `--tail 1` prints exactly the last line.

mod common;

use std::time::{Duration, Instant};

use common::follow::Follower;
use common::*;

/// A marker unlikely to be seen anywhere else: unique to this process (`unique_stack`) and run.
fn marker(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("marker-{}-{nanos:09}", unique_stack(tag))
}

async fn post_log(port: u16, msg: &str) {
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/log?msg={msg}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /log to the testapp on port {port}: {e}"));
    assert!(r.status().is_success(), "POST /log answered {}", r.status());
}

/// Acceptance check 10: a line the workload writes reaches `wharf service logs -f` within 1 s,
/// prefixed by its instance id; `--tail 1` prints exactly the last line and exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_streams_new_lines_within_a_second() {
    let (mut w, stack) = Wharf::start_for("logs").await;
    let port = free_port();
    let extra = format!("    ports:\n      - \"127.0.0.1:{port}:8080\"\n{HEALTHCHECK}");
    let yaml = testapp_stack(&stack, "web", 1, &extra);
    let insts = w
        .deploy_ready(&stack, &yaml, "web", 1, Duration::from_secs(30))
        .await;
    let prefix = format!("{} | ", insts[0].id);
    assert!(
        insts[0].id.starts_with(&format!("{stack}.web.")),
        "instance id {:?} is not <stack>.web.<slot>",
        insts[0].id
    );

    let target = format!("{stack}/web");
    let mut f = Follower::spawn(&w.config_dir(), &target);
    // The stream is open once the startup line (already in the log) has come through.
    let (_, first) = f
        .wait_line("listening on", Instant::now() + Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("waiting for the startup line of {target}: {e}"));
    assert!(
        first.starts_with(&prefix),
        "line {first:?} is not prefixed by {prefix:?}"
    );

    let m = marker("follow");
    let posted = Instant::now();
    post_log(port, &m).await;
    let (at, line) = f
        .wait_line(&m, posted + Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("waiting for the marker line: {e}"));
    let delay = at.saturating_duration_since(posted);
    assert!(
        delay <= Duration::from_secs(1),
        "the marker line took {delay:?} to arrive (limit 1 s)"
    );
    assert_eq!(line, format!("{prefix}{m}"), "the marker line");

    // A second marker, so the last line is known; wait for it to be in the log first.
    let last = marker("tail");
    post_log(port, &last).await;
    f.wait_line(&last, Instant::now() + Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("waiting for the second marker: {e}"));
    drop(f);

    let (stdout, stderr) = w.cli_code(&["service", "logs", "--tail", "1", &target], 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![format!("{prefix}{last}")],
        "--tail 1 must print exactly the last line; stderr:\n{stderr}"
    );
}

/// Issue 14, check 4: `logs -f` started before a rolling update shows the lines of the new
/// instances after it; `-o json` carries the node and, with `-t`, the engine's time; `web.1`
/// reads one slot.
#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_carries_on_across_a_rolling_update() {
    let (mut w, stack) = Wharf::start_for("logsroll").await;
    let yaml = |mode: &str| {
        Stack::new(&stack)
            .service(
                Service::testapp("web")
                    .env("MODE", &format!("\"{mode}\""))
                    .replicas(2)
                    .deploy(
                        "      update_config:\n        monitor: 0s\n        order: start-first\n",
                    )
                    .healthcheck(),
            )
            .yaml()
    };
    let old = w
        .deploy_ready(&stack, &yaml("one"), "web", 2, Duration::from_secs(60))
        .await;
    let target = format!("{stack}/web");
    let mut f = Follower::spawn(&w.config_dir(), &target);
    f.wait_line("listening on", Instant::now() + Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("waiting for the startup line of {target}: {e}"));
    let old_hash = old[0].spec_hash.clone();

    // The rolling update: every slot gets a new generation, started after the stream began.
    let file = w.stack_file(&stack, &yaml("two"));
    w.cli_code_async(&["stack", "deploy", "-c", utf8(&file)], 0)
        .await;
    let new = w
        .wait_ready(&stack, "web", 2, Duration::from_secs(60))
        .await;
    assert!(
        new.iter().all(|i| i.spec_hash != old_hash),
        "{}",
        summary(&new)
    );
    // Each new generation's startup line comes through the stream opened before the update:
    // four in all (two old, two new), one of them already read.
    let mut starts = 1;
    while starts < 4 {
        f.wait_line("listening on", Instant::now() + Duration::from_secs(20))
            .unwrap_or_else(|e| {
                panic!("{starts} startup lines so far; the new instances' did not come: {e}")
            });
        starts += 1;
    }
    drop(f);

    // One slot, with the engine's times, as JSON lines.
    let (so, _) = w.cli_code(
        &[
            "service",
            "logs",
            &format!("{target}.1"),
            "-t",
            "-o",
            "json",
        ],
        0,
    );
    let lines: Vec<serde_json::Value> = so
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty(), "no lines of slot 1");
    for l in &lines {
        assert_eq!(l["instance"], format!("{stack}.web.1"), "{l}");
        assert!(l["node"].is_string(), "the node: {l}");
        assert!(
            l["time"]
                .as_str()
                .is_some_and(|t| t.starts_with("20") && t.contains('T')),
            "the engine's time: {l}"
        );
    }
    // Nothing written in the future.
    let (so, _) = w.cli_code(
        &[
            "service",
            "logs",
            &target,
            "--since",
            "2100-01-01T00:00:00Z",
        ],
        0,
    );
    assert_eq!(so, "", "no line after 2100");
}
