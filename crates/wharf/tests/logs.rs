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
