//! The outgoing-webhook dispatcher resumes from its cursor: events told while it was stopped
//! (a master restart) are delivered when it runs again, and those delivered before are not
//! sent again. A receiver that does not answer keeps the delivery pending, and it is delivered
//! once the receiver is back.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use wharf_master::Master;
use wharf_master::model::{encode, keys};
use wharf_store::SqliteStore;
use wharf_types::{Deployment, DeploymentState, HookCreated, HookRequest, Role};

type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Records (delivery id, deployment) of each signed request; 200.
async fn receive(
    State((seen, secret)): State<(Seen, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let sig = headers
        .get("x-wharf-signature-256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if sig != wharf_master::hooks::sign(secret.as_bytes(), &body) {
        return StatusCode::UNAUTHORIZED;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let delivery = v["delivery"].as_str().unwrap_or_default().to_string();
    let deployment = v["event"]["deployment"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    seen.lock().push((delivery, deployment));
    StatusCode::OK
}

/// Serve the receiver on `listener`.
fn serve(listener: tokio::net::TcpListener, seen: Seen, secret: String) {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state((seen, secret));
    tokio::spawn(async move { axum::serve(listener, app).await });
}

/// A deployment record written as the API does: its creation tells `deploy.started`.
async fn start_deployment(m: &Master, id: &str) {
    let d = Deployment {
        id: id.into(),
        stack: "shop".into(),
        revision: 1,
        state: DeploymentState::InProgress,
        message: None,
        services: vec![],
        created_at: wharf_master::now_ms(),
        updated_at: wharf_master::now_ms(),
        trigger: None,
        images: Default::default(),
        by: None,
    };
    m.store
        .put(&keys::deployment(id), encode(&d))
        .await
        .unwrap();
}

/// Wait until the receiver has seen the deployments `want`, each once as a receiver counts them:
/// by delivery id. Delivery is at least once: a dispatcher stopped between a send and its record
/// sends that delivery again, with the same id, which a receiver drops (as this one does).
async fn wait_seen(seen: &Seen, want: &[&str], what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut ids = std::collections::HashSet::new();
        let got: Vec<String> = seen
            .lock()
            .iter()
            .filter(|(id, _)| ids.insert(id.clone()))
            .map(|(_, d)| d.clone())
            .collect();
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: the receiver saw {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_resume_from_the_cursor_after_a_restart_and_wait_for_the_receiver() {
    let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let admin = common::token(&m, "admin", Role::Admin, &[]).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let req = HookRequest {
        url: Some(format!("http://{addr}/hook")),
        events: vec!["deploy.started".into()],
        ..HookRequest::default()
    };
    let (status, body) = common::call_json(&m, "POST", "/v1/hooks", &admin, &req).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let hook: HookCreated = serde_json::from_slice(&body).unwrap();
    let seen: Seen = Arc::default();
    serve(listener, seen.clone(), hook.secret.clone());

    let dispatcher = tokio::spawn(wharf_master::hooks::dispatch::run(m.clone()));
    // Its first start begins at the present: wait until it has written its cursor.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while m.store.get(keys::HOOK_CURSOR).await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no cursor written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start_deployment(&m, "d-1").await;
    wait_seen(&seen, &["d-1"], "before the restart").await;

    // Stopped (as a master killed), an event told meanwhile, started again.
    dispatcher.abort();
    let _ = dispatcher.await;
    start_deployment(&m, "d-2").await;
    let dispatcher = tokio::spawn(wharf_master::hooks::dispatch::run(m.clone()));
    wait_seen(&seen, &["d-1", "d-2"], "after the restart").await;
    dispatcher.abort();
    let _ = dispatcher.await;

    // A receiver that is gone: the delivery stays pending with its failed tries, and is
    // delivered by the next dispatcher once the receiver answers again (the same id).
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let req = HookRequest {
        url: Some(format!("http://{gone_addr}/hook")),
        events: vec!["deploy.started".into()],
        ..HookRequest::default()
    };
    let (_, body) = common::call_json(&m, "POST", "/v1/hooks", &admin, &req).await;
    let late: HookCreated = serde_json::from_slice(&body).unwrap();
    let dispatcher = tokio::spawn(wharf_master::hooks::dispatch::run(m.clone()));
    start_deployment(&m, "d-3").await;
    wait_seen(&seen, &["d-1", "d-2", "d-3"], "the first hook").await;
    let path = format!("/v1/hooks/{}/deliveries", late.info.id);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let pending = loop {
        let (_, body) = common::call_json(&m, "GET", &path, &admin, &()).await;
        let ds: Vec<wharf_types::HookDelivery> = serde_json::from_slice(&body).unwrap();
        if let Some(d) = ds.into_iter().find(|d| !d.attempts.is_empty()) {
            break d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed try recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(pending.state, "pending", "{pending:?}");
    let error = pending.attempts[0].error.clone().unwrap_or_default();
    assert!(error.contains("could not connect"), "{pending:?}");
    assert!(
        !error.contains(&gone_addr.to_string()),
        "the URL stays out: {error}"
    );
    dispatcher.abort();
    let _ = dispatcher.await;
    let back = tokio::net::TcpListener::bind(gone_addr).await.unwrap();
    let late_seen: Seen = Arc::default();
    serve(back, late_seen.clone(), late.secret.clone());
    let _dispatcher = tokio::spawn(wharf_master::hooks::dispatch::run(m.clone()));
    wait_seen(&late_seen, &["d-3"], "the receiver that came back").await;
    assert_eq!(late_seen.lock()[0].0, pending.id, "the same delivery id");
}
