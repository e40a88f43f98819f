//! Overload is refused, not amplified (issue 8, defect 5): one replica limit on every path, a
//! per-node instance capacity the scheduler explains, and a stop within seconds of SIGTERM
//! whatever is in flight.

mod common;

use std::time::{Duration, Instant};

use common::*;
use wharf_types::{DeployRequest, DeploySpec, ServiceSpec, StackSpec};

/// (a) `deploy.replicas: 100000` is refused by the CLI at its place in the file with the limit,
/// by the API for a spec sent directly, and by `service scale`; nothing is created.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_over_the_limit_are_refused_on_every_path() {
    let mut w = Wharf::start().await;
    let stack = unique_stack("overmax");
    let yaml = testapp_stack(&stack, "web", 100_000, "");
    let file = w.stack_file(&stack, &yaml);
    // Where the count stands in the file, as the error must name it (line:column, from 1).
    let (line, col) = yaml
        .lines()
        .enumerate()
        .find_map(|(i, l)| {
            l.trim_start()
                .starts_with("replicas:")
                .then(|| (i + 1, l.find("100000").expect("the count") + 1))
        })
        .expect("a replicas line in the stack file");
    let out = w.cli(&["stack", "deploy", "-c", file.to_str().expect("utf-8 path")]);
    let (so, se) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "deploy of 100000 replicas\n--- stdout ---\n{so}\n--- stderr ---\n{se}"
    );
    let want = format!(
        "stack.yml:{line}:{col}: services.web.deploy.replicas: 100000 replicas is more than the limit of 10000"
    );
    assert!(
        se.lines()
            .any(|l| l.starts_with("error: ") && l.contains(&want)),
        "no error line containing {want:?}:\n{se}"
    );
    assert!(
        se.lines()
            .any(|l| l.trim_start().starts_with("hint: ") && l.contains("at most 10000")),
        "no hint naming the limit:\n{se}"
    );
    let stacks = w.client.list_stacks().await.expect("list stacks");
    assert!(stacks.is_empty(), "a stack was stored: {stacks:?}");

    // The same limit at the API, for a spec that did not come through the CLI.
    let spec = |replicas: u32| StackSpec {
        name: stack.clone(),
        services: [(
            "web".to_string(),
            ServiceSpec {
                image: Some("wharf-testapp:latest".into()),
                deploy: DeploySpec {
                    replicas,
                    ..DeploySpec::default()
                },
                ..ServiceSpec::default()
            },
        )]
        .into(),
        ..StackSpec::default()
    };
    let err = w
        .client
        .deploy_stack(&stack, &DeployRequest::of(spec(100_000)))
        .await
        .expect_err("the API accepted 100000 replicas");
    let api = err.api_error().expect("an API error");
    assert_eq!(err.status(), Some(422), "{api:?}");
    assert!(
        api.message.contains("services.web.deploy.replicas")
            && api
                .message
                .contains("100000 replicas is more than the limit of 10000"),
        "{api:?}"
    );
    assert!(
        api.hint
            .as_deref()
            .unwrap_or_default()
            .contains("at most 10000"),
        "{api:?}"
    );

    // And for `service scale`, on a service of 0 replicas (which creates nothing).
    w.client
        .deploy_stack(&stack, &DeployRequest::of(spec(0)))
        .await
        .expect("deploy of 0 replicas");
    let out = w.cli(&["service", "scale", &format!("{stack}/web=100000")]);
    let (so, se) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "scale to 100000\n--- stdout ---\n{so}\n--- stderr ---\n{se}"
    );
    assert!(
        se.contains("replicas: 100000 replicas is more than the limit of 10000")
            && se.contains("at most 10000"),
        "scale error without the limit and hint:\n{se}"
    );
    let svc = w.service(&stack, "web").await.expect("the service");
    assert_eq!(
        svc.summary.replicas, 0,
        "the scale changed the service: {svc:?}"
    );
    let cs = containers(&stack).await;
    assert!(cs.is_empty(), "containers were created: {cs:?}");
}

/// (b) A node takes `--max-instances` instances: a deploy of 5 on a node of 3 runs exactly 3 and
/// fails with the capacity reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_node_takes_no_more_and_the_deploy_says_why() {
    testapp_image().await.expect("test image");
    let mut w = Wharf::start_full(vec![], &["--max-instances", "3"]).await;
    let stack = unique_stack("capacity");
    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 5, ""));
    let (so, se) = w.deploy(&file, 1);
    let all = format!("{so}\n{se}");
    let want = "no node fits: instances: 1 of 1 nodes full (3 instances each)";
    assert!(
        all.contains(want),
        "no {want:?} in the deploy's output:\n{all}"
    );

    let what = "3 running containers of the stack";
    let running = w
        .wait_containers(&stack, what, Duration::from_secs(60), |cs| {
            cs.iter().filter(|c| c.2).count() == 3
        })
        .await;
    assert_eq!(running.len(), 3, "containers: {running:?}");
    // Only 3 slots were ever placed, so no fourth container can come later.
    let insts = w.instances(&stack, "web").await;
    assert_eq!(insts.len(), 3, "instances: {}", summary(&insts));
    let svc = w.service(&stack, "web").await.expect("the service");
    assert_eq!(svc.summary.replicas, 5, "{svc:?}");
}

/// (c) SIGTERM to `wharf up` while 40 containers are being created: it exits within the bound,
/// releases the data directory, and a restart carries on without duplicates.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_deploy_stops_within_seconds() {
    let (mut w, stack) = Wharf::start_for("sigterm").await;
    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 40, ""));
    w.deploy_detached(&file);
    // In flight: the agent has started creating containers and is far from done.
    let what = "the first container of the stack to exist";
    w.wait_containers(&stack, what, Duration::from_secs(60), |cs| !cs.is_empty())
        .await;
    let running = containers(&stack).await.iter().filter(|c| c.2).count();
    assert!(
        running < 40,
        "the deploy finished before the signal: not a test of in-flight work"
    );

    let mut child = w.child.take().expect("wharf up runs");
    let pid = i32::try_from(child.id()).expect("pid");
    let sent = Instant::now();
    // SAFETY: sends a signal to the child process this test started and still owns.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill(SIGTERM) failed");
    const BOUND: Duration = Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for wharf up") {
            break Some(status);
        }
        if sent.elapsed() > BOUND {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "wharf up did not exit within {BOUND:?} of SIGTERM\n--- wharf up log ---\n{}",
            tail(&w.log(), 40)
        );
    };
    let took = sent.elapsed();
    assert!(
        status.success(),
        "wharf up exited with {status} after SIGTERM"
    );
    eprintln!("wharf up exited {took:?} after SIGTERM");
    let log = w.log();
    assert!(
        log.contains("wharf is stopping"),
        "no farewell in the log:\n{}",
        tail(&log, 40)
    );

    // The data directory is free and the store intact: the restart takes the lock, finds the
    // stack, and finishes the deploy with one container per slot (adopted, never duplicated).
    w.launch(&[]).await;
    let stacks = w.client.list_stacks().await.expect("list stacks");
    assert!(
        stacks.iter().any(|s| s.name == stack),
        "the stack is gone after the restart: {stacks:?}"
    );
    w.wait_ready(&stack, "web", 40, Duration::from_secs(180))
        .await;
    let cs = containers(&stack).await;
    assert_eq!(cs.len(), 40, "containers after the restart: {cs:?}");
}

/// `stack rm` while a large deploy is still creating containers: the creates that wait for
/// their turn are dropped (the agent runs at most `MAX_ENGINE_OPS` engine operations at once),
/// so the removal ends within seconds and no container appears after it.
#[tokio::test(flavor = "multi_thread")]
async fn stack_rm_mid_deploy_cancels_the_pending_creates() {
    let (mut w, stack) = Wharf::start_for("rmmid").await;
    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 80, ""));
    let out = w.cli(&["stack", "deploy", "--detach", "-c", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));
    let what = "the first container of the stack to exist";
    w.wait_containers(&stack, what, Duration::from_secs(60), |cs| !cs.is_empty())
        .await;
    let started = Instant::now();
    let out = w.cli(&["stack", "rm", &stack]);
    let took = started.elapsed();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stack rm: {:?}\n{}",
        text(&out),
        tail(&w.log(), 40)
    );
    eprintln!("stack rm of an 80-replica deploy in flight took {took:?}");
    assert!(
        took < Duration::from_secs(45),
        "stack rm took {took:?}: pending creates were not cancelled\n{}",
        tail(&w.log(), 40)
    );
    // Nothing of the stack is left, and nothing appears afterwards (creates already queued
    // would show up here within a few seconds).
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let cs = containers(&stack).await;
        assert!(cs.is_empty(), "containers after stack rm: {cs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
