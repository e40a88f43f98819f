//! `GET /metrics` of the master: the requests it served by route and status, store and
//! deployer timings, the state gauges (instances by service, state and health; deployments by
//! state), in a text `promtool check metrics` (Debian `prometheus`) accepts; a token is needed.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use axum::http::StatusCode;
use common::{call_json, token};
use wharf_master::Master;
use wharf_store::SqliteStore;
use wharf_types::{NodeState, Role};

fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): install it with `apt-get install prometheus`")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The value of the sample `name{labels}` where every `(k, v)` of `want` is among its labels.
fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_and_state_and_pass_promtool() {
    let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
    common::put_node(&m, "n1", NodeState::Ready).await;
    let admin = token(&m, "ci", Role::Admin, &[]).await;
    let spec = serde_json::json!({"spec": {"name": "shop", "services": {"web": {
        "image": "nginx", "deploy": {"replicas": 2}}}}});
    let (status, _) = call_json(&m, "PUT", "/v1/stacks/shop", &admin, &spec).await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..3 {
        call_json(&m, "GET", "/v1/stacks", &admin, &()).await;
    }
    call_json(&m, "GET", "/v1/stacks/nope", &admin, &()).await;
    // One pass of the deployer places both instances on n1.
    let d = wharf_master::deployer::Deployer::new(m.clone());
    d.pass().await.expect("a pass");

    let (status, _) = call_json(&m, "GET", "/metrics", "not-a-token", &()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a token is needed");
    let (status, body) = call_json(&m, "GET", "/metrics", &admin, &()).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();

    let (ok, out) = promtool_check(&text);
    assert!(
        ok,
        "promtool check metrics:\n{out}\n--- metrics ---\n{text}"
    );
    let get_stacks = [
        ("method", "GET"),
        ("route", "/v1/stacks"),
        ("status", "200"),
    ];
    assert!(
        sample(&text, "wharf_api_requests_total", &get_stacks).is_some_and(|v| v >= 3.0),
        "3 GET /v1/stacks:\n{text}"
    );
    let not_found = [("route", "/v1/stacks/{stack}"), ("status", "404")];
    assert_eq!(
        sample(&text, "wharf_api_requests_total", &not_found),
        Some(1.0),
        "by the route, not the path:\n{text}"
    );
    assert!(
        !text.contains("/v1/stacks/nope"),
        "no concrete path as a label"
    );
    assert!(
        text.contains("wharf_api_request_duration_seconds_bucket{"),
        "a latency histogram:\n{text}"
    );
    assert!(
        text.contains("wharf_store_transaction_duration_seconds_bucket{"),
        "store transactions timed"
    );
    let deployments = sample(&text, "wharf_deployments", &[("state", "in_progress")]);
    assert_eq!(deployments, Some(1.0), "the deploy's deployment:\n{text}");
    let pending: f64 = text
        .lines()
        .filter(|l| l.starts_with("wharf_instances{") && l.contains("service=\"web\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        pending, 2.0,
        "two instances of web, whatever their state:\n{text}"
    );
    assert_eq!(
        sample(&text, "wharf_nodes", &[("state", "ready")]),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("wharf_deployer_pass_duration_seconds"),
        "the deployer's pass timed:\n{text}"
    );
}
