//! Following a deployment without polling (issue 9): `GET /v1/deployments/{id}?after=&wait_ms=`
//! answers when the deployment changed after `after`, or ended, and not before.

mod common;

use std::time::{Duration, Instant};

use common::*;
use wharf_types::DeploymentState;

#[tokio::test(flavor = "multi_thread")]
async fn a_long_poll_answers_with_the_next_change_and_at_once_once_ended() {
    let (mut w, stack) = Wharf::start_for("longpoll").await;
    // Slow starters: the deployment stays in progress for several seconds.
    let web = Service::testapp("web")
        .replicas(2)
        .healthcheck_with("      start_period: 20s\n")
        .env("START_DELAY_MS", "\"3000\"");
    let file = w.stack_file(&stack, &Stack::new(&stack).service(web).yaml());
    let id = w.deploy_detached(&file);

    // Each answer is a change (or the end): updated_at moves on, or the state is final.
    let mut seen = w.client.deployment(&id).await.expect("deployment");
    let mut answers = 0;
    while seen.state == DeploymentState::InProgress {
        let t0 = Instant::now();
        let d = w
            .client
            .deployment_after(&id, seen.updated_at, Duration::from_secs(20))
            .await
            .expect("long poll");
        assert!(
            d.updated_at > seen.updated_at || d.state != DeploymentState::InProgress,
            "the long poll answered without a change after {:?}: {d:?}\n{}",
            t0.elapsed(),
            tail(&w.log(), 60)
        );
        assert!(t0.elapsed() < Duration::from_secs(21), "held past its wait");
        seen = d;
        answers += 1;
        assert!(answers < 200, "too many answers for one deployment");
    }
    assert_eq!(
        seen.state,
        DeploymentState::Succeeded,
        "{seen:?}\n{}",
        tail(&w.log(), 30)
    );
    // Ended: answered at once, whatever `after` says.
    let t0 = Instant::now();
    let d = w
        .client
        .deployment_after(&id, u64::MAX, Duration::from_secs(20))
        .await
        .expect("long poll of an ended deployment");
    assert_eq!(d.state, DeploymentState::Succeeded);
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "an ended deployment was held {:?}",
        t0.elapsed()
    );
}
