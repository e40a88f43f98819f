//! What the API tests of the master share: a token of a role and a scope, and a JSON call
//! through the router (no socket).

#![allow(dead_code)] // each test file uses its part

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;
use wharf_master::Master;
use wharf_master::api::router;
use wharf_master::model::{NodeRecord, encode, keys};
use wharf_master::mutate::Actor;
use wharf_types::{DriverKind, NodeFacts, NodeState, Role, TokenRequest};

/// Writes node `id` in `state`, with room for a few instances of the Docker driver.
pub async fn put_node(m: &Master, id: &str, state: NodeState) {
    let node = NodeRecord {
        id: id.into(),
        facts: NodeFacts {
            name: id.into(),
            drivers: vec![DriverKind::Docker],
            cpus: 2,
            memory_bytes: 1 << 30,
            os: "linux".into(),
            ..NodeFacts::default()
        },
        labels: Default::default(),
        state,
        since: 0,
        drain: false,
        address: None,
        tunnel: None,
        key_epoch: 0,
    };
    m.store.put(&keys::node(id), encode(&node)).await.unwrap();
}

/// A new API token named `name` of `role`, scoped to `stacks` (none: every stack).
pub async fn token(m: &Master, name: &str, role: Role, stacks: &[&str]) -> String {
    let req = TokenRequest {
        name: name.into(),
        role,
        stacks: stacks.iter().map(|s| s.to_string()).collect(),
        ttl_secs: None,
    };
    m.create_token(&Actor::named("test"), &req).await.unwrap().0
}

/// `method path` with `body` as JSON and `token`: the status and the answer's bytes.
pub async fn call_json(
    m: &Master,
    method: &str,
    path: &str,
    token: &str,
    body: &impl serde::Serialize,
) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    let resp = router(m.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, bytes.to_vec())
}
