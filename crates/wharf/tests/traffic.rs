//! Zero-downtime under load (first acceptance check of the traffic issue, single node): at least
//! 50,000 requests through the ingress, on keep-alive and on new connections, while a 10-instance
//! service rolls start-first to a new version: no request fails, and afterwards only the new
//! version answers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

fn stack_yaml(stack: &str, version: &str, listen: u16) -> String {
    format!(
        "name: {stack}
services:
  web:
    image: wharf-testapp:latest
    environment:
      VERSION: {version}
    stop_grace_period: 2s
    deploy:
      replicas: 10
      update_config:
        parallelism: 2
        order: start-first
        monitor: 0s
{HEALTHCHECK}    x-wharf:
      drain_grace: 1s
      ingress:
        - port: 8080
          listen: {listen}
          listen_address: 127.0.0.1
"
    )
}

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    /// The first few failures, for the assertion message.
    samples: std::sync::Mutex<Vec<String>>,
}

impl Counts {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut s = self.samples.lock().expect("samples");
        if s.len() < 10 {
            s.push(what);
        }
    }
}

/// One load task: GET / in a loop until `stop`, on one keep-alive client, or on a new
/// connection per request.
async fn load(url: String, keep_alive: bool, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let client = if keep_alive {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
    } else {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(0)
            .build()
    }
    .expect("http client");
    while !stop.load(Ordering::Relaxed) {
        match client.get(&url).send().await {
            Ok(r) if r.status().is_success() => match r.text().await {
                Ok(_) => {
                    counts.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => counts.fail(format!("body: {e}")),
            },
            Ok(r) => counts.fail(format!("status {}", r.status())),
            Err(e) => counts.fail(format!("error: {e}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_first_rolling_update_under_load_fails_no_request() {
    testapp_image().await.expect("test image");
    let mut w = Wharf::start().await;
    let stack = unique_stack("traffic");
    let listen = free_port();
    let file = w.stack_file(&stack, &stack_yaml(&stack, "v1", listen));
    w.deploy(&file, 0);
    w.wait_ready(&stack, "web", 10, Duration::from_secs(90))
        .await;
    let url = format!("http://127.0.0.1:{listen}/");
    // The ingress picks up the endpoints right after they are ready: wait until it answers.
    wharf_testkit::wait_for("the ingress to answer", Duration::from_secs(20), || async {
        let r = reqwest::get(&url).await.ok()?;
        r.status().is_success().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&w.log(), 40)));

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut tasks = Vec::new();
    for i in 0..12 {
        // Mostly keep-alive, a few new connections per request.
        tasks.push(tokio::spawn(load(
            url.clone(),
            i % 4 != 0,
            stop.clone(),
            counts.clone(),
        )));
    }

    let v2 = w.stack_file(&stack, &stack_yaml(&stack, "v2", listen));
    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let (config_dir, v2) = (w.config_dir(), v2.clone());
        move || {
            cli_command(
                &config_dir,
                &["stack", "deploy", "-c", v2.to_str().expect("utf-8")],
            )
            .output()
            .expect("run wharf")
        }
    })
    .await
    .expect("deploy task");
    let (so, se) = text(&out);
    let update_took = started.elapsed();
    // Keep the load on until at least 50,000 requests were made (and a little after the update).
    let deadline = Instant::now() + Duration::from_secs(120);
    tokio::time::sleep(Duration::from_secs(2)).await;
    while counts.ok.load(Ordering::Relaxed) + counts.failed.load(Ordering::Relaxed) < 50_000
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("load task");
    }
    let (ok, failed) = (
        counts.ok.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
    );
    let samples = counts.samples.lock().expect("samples").clone();
    eprintln!("requests: {ok} ok, {failed} failed; the update took {update_took:?}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "the update deployed\n{so}\n{se}\n{}",
        tail(&w.log(), 40)
    );
    assert!(
        ok + failed >= 50_000,
        "at least 50,000 requests were made: {ok} ok, {failed} failed"
    );
    assert_eq!(
        failed, 0,
        "no request failed during the update ({update_took:?}, {ok} ok); first failures: {samples:?}"
    );

    // Afterwards only the new version answers.
    let client = reqwest::Client::new();
    for _ in 0..100 {
        let body = client
            .get(&url)
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body");
        assert_eq!(
            body.trim(),
            "v2",
            "only the new version answers after the update"
        );
    }
    w.stacks.retain(|s| s != &stack);
    w.stacks.push(stack);
}
