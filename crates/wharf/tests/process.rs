//! Acceptance check 11: without a reachable Docker engine, `wharf up` still runs process services
//! (`x-wharf: {driver: process}`): deploy, health, restart after a crash, logs; docker services are
//! refused with a clear error.

mod common;

use std::time::{Duration, Instant};

use common::follow::Follower;
use common::*;
use wharf_testkit::{Check, not_yet, wait_for};

async fn get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let r = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(3))
        .send()
        .await?;
    Ok((r.status().as_u16(), r.text().await?))
}

async fn post(port: u16, path: &str) -> Result<u16, reqwest::Error> {
    reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .map(|r| r.status().as_u16())
}

fn process_stack(stack: &str, bin: &str, port: u16) -> String {
    format!(
        "name: {stack}
services:
  app:
    x-wharf:
      driver: process
    command: [\"{bin}\"]
    environment:
      PORT: \"{port}\"
      VERSION: proc-v1
    stop_grace_period: 2s
    healthcheck:
      test: [\"CMD\", \"{bin}\", \"check\", \"http://127.0.0.1:{port}/healthz\"]
      interval: 500ms
      timeout: 2s
      retries: 2
"
    )
}

/// Acceptance check 11.
#[tokio::test(flavor = "multi_thread")]
async fn process_services_run_without_docker() {
    let bin = wharf_testkit::build_testapp()
        .await
        .expect("static testapp");
    let bin = std::fs::canonicalize(&bin).expect("absolute testapp path");
    let bin = bin.to_str().expect("utf-8 path").to_string();
    let mut w = Wharf::start_with_env(vec![(
        "DOCKER_HOST".into(),
        "unix:///nonexistent/docker.sock".into(),
    )])
    .await;
    let log = w.log();
    assert!(
        log.contains("Docker engine is not reachable"),
        "wharf up should say the Docker engine is not reachable; log:\n{log}"
    );

    // A process service deploys and serves.
    let stack = unique_stack("proc");
    let port = free_port();
    let yaml = process_stack(&stack, &bin, port);
    let insts = w
        .deploy_ready(&stack, &yaml, "app", 1, Duration::from_secs(30))
        .await;
    assert_eq!(
        insts[0].health,
        wharf_types::Health::Healthy,
        "instance health: {}",
        summary(&insts)
    );
    let (status, body) = get(port, "/").await.expect("GET / on the process service");
    assert_eq!(
        (status, body.trim()),
        (200, "proc-v1"),
        "GET / on the process service"
    );

    // A crash is followed by a restart.
    let restarts_before = insts[0].restarts;
    let _ = post(port, "/crash").await; // the connection may drop as the process exits
    let what = format!("{stack}/app restarted after POST /crash and healthy again");
    let insts = wait_for(&what, Duration::from_secs(30), || async {
        let insts = w.instances(&stack, "app").await;
        let restarted =
            insts.len() == 1 && insts[0].restarts > restarts_before && insts[0].is_ready();
        if restarted
            && get(port, "/")
                .await
                .is_ok_and(|(s, b)| s == 200 && b.trim() == "proc-v1")
        {
            Check::Done(insts)
        } else {
            not_yet(summary(&insts))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- wharf up log (tail) ---\n{}", tail(&w.log(), 40)));
    assert!(insts[0].restarts >= 1, "restarts: {}", summary(&insts));

    // Logs: the startup line, then a followed new line.
    let target = format!("{stack}/app");
    let (stdout, _) = w.cli_code(&["service", "logs", &target], 0);
    let prefix = format!("{} | ", insts[0].id);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&prefix) && l.contains("listening on 0.0.0.0:")),
        "no `listening on` line prefixed {prefix:?} in:\n{stdout}"
    );
    let mut f = Follower::spawn(&w.config_dir(), &target);
    f.wait_line("listening on", Instant::now() + Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("logs -f of {target}: {e}"));
    let marker = format!("proc-marker-{}", std::process::id());
    assert_eq!(
        post(port, &format!("/log?msg={marker}")).await.ok(),
        Some(200),
        "POST /log"
    );
    let (_, line) = f
        .wait_line(&marker, Instant::now() + Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("logs -f of {target}: {e}"));
    assert!(
        line.starts_with(&prefix),
        "followed line {line:?} is not prefixed {prefix:?}"
    );
    drop(f);

    // A docker service cannot deploy here, and says why.
    let dstack = unique_stack("nodocker");
    let dfile = w.stack_file(&dstack, &testapp_stack(&dstack, "web", 1, ""));
    // Bounded: a deployment that cannot place its instance must fail, not wait out the default 5m.
    let (dout, derr) = w.cli_code(
        &["stack", "deploy", "--timeout", "60s", "-c", utf8(&dfile)],
        1,
    );
    assert!(
        !derr.contains("timed out"),
        "the docker deploy timed out instead of failing:\n{derr}"
    );
    let all = format!("{dout}{derr}").to_lowercase();
    assert!(
        all.contains("docker engine") && all.contains("not reachable"),
        "the docker deploy should fail saying the Docker engine is not reachable:\n--- stdout ---\n{dout}\n--- stderr ---\n{derr}"
    );
    // The process service is unaffected.
    let (status, body) = get(port, "/").await.expect("GET / after the docker deploy");
    assert_eq!((status, body.trim()), (200, "proc-v1"));
}
