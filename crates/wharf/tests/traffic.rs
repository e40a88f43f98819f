//! Zero-downtime under load, the acceptance checks of the traffic issue: at least 50,000 requests
//! through the ingress each (wrk, on keep-alive and on new connections, see `common/load.rs`)
//! against a 10-instance service of the test workload while
//! 1. it rolls start-first to a new version: no request fails, and afterwards only the new
//!    version answers;
//! 2. it rolls to a version whose health never passes: no request fails, the update is rolled
//!    back automatically and the old version still serves;
//! 3. it scales down from 10 to 3 (here), or a node is drained (`traffic_drain.rs`): no request
//!    fails;
//! 4. one instance's container is killed: failures at most one per load connection (the
//!    requests already on that instance), and none once the instance is out of the rotation.

mod common;
#[path = "common/load.rs"]
mod load;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use load::{Load, answers};
use wharf_testkit::{Check, not_yet, wait_for};

/// The service `web`: 10 instances of the test workload behind the ingress on 127.0.0.1:`listen`,
/// `VERSION: version` (and `FAIL_HEALTH=1` if `failing`) in its environment, `update` lines (6 spaces)
/// under `deploy:`.
fn stack_yaml(stack: &str, listen: u16, version: &str, failing: bool, update: &str) -> String {
    let mut web = Service::testapp("web").env("VERSION", version);
    if failing {
        web = web.env("FAIL_HEALTH", "\"1\"");
    }
    let web = web.replicas(10).deploy(update).healthcheck().extra(&format!(
        "    x-wharf:\n      drain_grace: 1s\n      ingress:\n        - port: 8080\n          listen: {listen}\n          listen_address: 127.0.0.1\n"
    ));
    Stack::new(stack).service(web).yaml()
}

const START_FIRST: &str = "      update_config:
        parallelism: 2
        order: start-first
        monitor: 0s
";

/// A `wharf up` running the 10-instance service at `version`, every instance behind the
/// ingress; the stack's name and the ingress URL.
async fn web_behind_ingress(w: &mut Wharf, prefix: &str, update: &str) -> (String, u16) {
    testapp_image().await.expect("test image");
    let stack = unique_stack(prefix);
    let listen = free_port();
    let yaml = stack_yaml(&stack, listen, "v1", false, update);
    w.deploy_ready(&stack, &yaml, "web", 10, Duration::from_secs(90))
        .await;
    // The ingress picks up endpoints right after they are ready: wait until all 10 answer.
    let hostnames = format!("http://127.0.0.1:{listen}/env/HOSTNAME");
    load::wait_all_answer(
        &hostnames,
        10,
        "all 10 instances to answer through the ingress",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&w.log(), 40)));
    (stack, listen)
}

/// `wharf up`, logging what master and agent decide (node liveness, placements, ingress
/// ejections) for failure messages, but not the ingress access log.
async fn start() -> Wharf {
    Wharf::start_with_env(vec![(
        "WHARF_LOG".to_string(),
        "wharf=info,wharf_master=info,wharf_agent=info,warn".to_string(),
    )])
    .await
}

/// 100 requests to `url` all answered by `version`.
async fn only_version_answers(url: &str, version: &str, when: &str) {
    let seen = answers(url, 100).await;
    let want = BTreeMap::from([(version.to_string(), 100)]);
    assert_eq!(seen, want, "only {version} answers {when}");
}

/// Runs `wharf ARGS` while `url` is under load (`what` names it in messages): it must exit
/// with `code` and no request may fail meanwhile. Its stdout and stderr.
async fn under_load(
    w: &Wharf,
    url: &str,
    what: &str,
    args: &[&str],
    code: i32,
) -> (String, String) {
    let load = Load::start(url);
    let started = Instant::now();
    let out = w.cli_async(args).await;
    let took = started.elapsed();
    let figures = load.finish().await;
    eprintln!("{what} took {took:?}; load: {figures}");
    let (so, se) = text(&out);
    let log = tail(&w.log(), 40);
    let all = format!("--- stdout ---\n{so}\n--- stderr ---\n{se}\n{log}");
    assert_eq!(out.status.code(), Some(code), "{what}:\n{all}");
    assert_eq!(
        figures.failed(),
        0,
        "no request failed during {what} ({took:?}): {figures}\n{log}"
    );
    (so, se)
}

/// Check 1: a start-first rolling update of the 10 instances under load fails no request, and
/// afterwards only the new version answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_start_first_rolling_update_under_load_fails_no_request() {
    let mut w = start().await;
    let (stack, listen) = web_behind_ingress(&mut w, "traffic", START_FIRST).await;
    let url = format!("http://127.0.0.1:{listen}/");

    let v2 = w.stack_file(
        &stack,
        &stack_yaml(&stack, listen, "v2", false, START_FIRST),
    );
    let deploy = ["stack", "deploy", "-c", utf8(&v2)];
    under_load(&w, &url, "the update", &deploy, 0).await;

    only_version_answers(&url, "v2", "after the update").await;
}

/// Check 2: an update to a version whose health check never passes, with `failure_action:
/// rollback`, under load: no request fails (the new instances never get any), the deploy fails
/// saying it rolled back, and the service ends on the old version, 10 instances, only it
/// answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_that_never_gets_healthy_rolls_back_under_load_failing_no_request() {
    const UPDATE: &str = "      update_config:
        parallelism: 2
        order: start-first
        monitor: 1s
        failure_action: rollback
      rollback_config:
        parallelism: 2
        order: start-first
        monitor: 0s
";
    let mut w = start().await;
    let (stack, listen) = web_behind_ingress(&mut w, "trafficrb", UPDATE).await;
    let url = format!("http://127.0.0.1:{listen}/");
    let old_hash = w.service(&stack, "web").await.expect("web").spec_hash;

    let v2 = w.stack_file(&stack, &stack_yaml(&stack, listen, "v2", true, UPDATE));
    let deploy = ["stack", "deploy", "-c", utf8(&v2)];
    let what = "the failed update and its rollback";
    let (so, se) = under_load(&w, &url, what, &deploy, 1).await;
    let all = format!("--- stdout ---\n{so}\n--- stderr ---\n{se}");
    assert!(se.contains("rolled back"), "says it rolled back:\n{all}");

    let svc = w.service(&stack, "web").await.expect("web");
    assert_eq!(
        svc.spec_hash, old_hash,
        "the service is back on the old spec"
    );
    let insts = w
        .wait_ready(&stack, "web", 10, Duration::from_secs(30))
        .await;
    assert!(
        insts.iter().all(|i| i.spec_hash == old_hash),
        "every instance on the old spec: {}",
        summary(&insts)
    );
    only_version_answers(&url, "v1", "after the rollback").await;
}

/// Check 3, scale down: `wharf service scale STACK/web=3` under load fails no request (the
/// removed instances drain first).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scale_down_from_10_to_3_under_load_fails_no_request() {
    let mut w = start().await;
    let (stack, listen) = web_behind_ingress(&mut w, "trafficscale", START_FIRST).await;
    let url = format!("http://127.0.0.1:{listen}/");

    let scale = ["service", "scale", &format!("{stack}/web=3")];
    under_load(&w, &url, "the scale down", &scale, 0).await;
    w.wait_ready(&stack, "web", 3, Duration::from_secs(20))
        .await;
    let hostnames = answers(&format!("http://127.0.0.1:{listen}/env/HOSTNAME"), 30).await;
    assert_eq!(hostnames.len(), 3, "3 instances answer: {hostnames:?}");
}

/// Check 4: one instance's container killed under load. The requests already on it may fail, at
/// most one per load connection; every load segment that starts once the master has seen the
/// instance die (and takes it out of the rotation) fails no request, also while the container,
/// restarted in place, comes back into the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instance_fails_only_the_requests_already_on_it() {
    let mut w = start().await;
    let (stack, listen) = web_behind_ingress(&mut w, "traffickill", START_FIRST).await;
    let url = format!("http://127.0.0.1:{listen}/");
    let insts = w.instances(&stack, "web").await;
    let victim = insts
        .iter()
        .find(|i| i.slot == 4)
        .unwrap_or_else(|| panic!("slot 4: {}", summary(&insts)))
        .clone();
    let container = victim.container_id.clone().expect("a container");

    let load = Load::start(&url);
    // Kill while the load is steady: after its first segment.
    wait_for("a first load segment", Duration::from_secs(30), || async {
        if load.so_far().segments.is_empty() {
            not_yet("no segment done")
        } else {
            Check::Done(())
        }
    })
    .await
    .expect("the load runs");
    docker_kill(&container).await;
    let killed = Instant::now();
    // The master saw it die: restarted, or not running, or not healthy.
    let seen = wait_for(
        "the master to see the killed instance die",
        Duration::from_secs(30),
        || async {
            let insts = w.instances(&stack, "web").await;
            match insts.iter().find(|i| i.slot == victim.slot) {
                Some(i) if i.restarts > victim.restarts || !i.is_ready() => {
                    Check::Done(summary(std::slice::from_ref(i)))
                }
                _ => not_yet(summary(&insts)),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&w.log(), 40)));
    let noticed = killed.elapsed();
    let ejected = load.elapsed();
    // It comes back: restarted in place, healthy, in the rotation again.
    let insts = w
        .wait_ready(&stack, "web", 10, Duration::from_secs(30))
        .await;
    let back = insts
        .iter()
        .find(|i| i.slot == victim.slot)
        .expect("the slot");
    assert_eq!(
        back.generation,
        victim.generation,
        "the killed container restarts in place: {}",
        summary(&insts)
    );
    assert!(back.restarts > victim.restarts, "{}", summary(&insts));
    let back_at = killed.elapsed();
    let back_in = load.elapsed();
    // Segments after the ejection: at least 3, at least one after the instance was back.
    wait_for(
        "3 load segments after the ejection, one after the return",
        Duration::from_secs(60),
        || async {
            let so_far = load.so_far();
            let (after, back) = (
                so_far.since(ejected).segments.len(),
                so_far.since(back_in).segments.len(),
            );
            if after >= 3 && back >= 1 {
                Check::Done(())
            } else {
                not_yet((after, back))
            }
        },
    )
    .await
    .expect("the load goes on");
    let connections = load.options().connections();
    let figures = load.finish().await;
    let after = figures.since(ejected);
    eprintln!(
        "killed {container}; the master saw it after {noticed:?} ({seen}), ready again after \
         {back_at:?}; load: {figures}; after the ejection: {after}"
    );
    assert!(
        figures.failed() <= connections,
        "at most the {connections} requests already on the killed instance failed: {figures}\n{}",
        tail(&w.log(), 40)
    );
    assert_eq!(
        after.failed(),
        0,
        "no request failed in the segments after the master saw the instance die: {after}\n{}",
        tail(&w.log(), 40)
    );
}
