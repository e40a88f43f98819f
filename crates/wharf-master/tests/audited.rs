//! Issue 10, check 5: every mutating operation of the OpenAPI document leaves exactly one audit
//! record when it succeeds, and a refused one exactly one record with outcome `denied`; reads
//! (and the diff, which changes nothing) leave none.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use tower::ServiceExt;
use utoipa::OpenApi;
use wharf_master::Master;
use wharf_master::api::{ApiDoc, router};
use wharf_master::mutate::Actor;
use wharf_store::SqliteStore;
use wharf_types::{NodeState, Role, TokenRequest};

/// The stack deployed by the calls below, at `version`.
fn stack(version: &str) -> serde_json::Value {
    serde_json::json!({"spec": {"name": "shop", "services": {"web": {
        "image": "nginx", "environment": {"VERSION": version}},
        "backup": {"image": "busybox", "deploy": {"mode": "replicated-job"}}}}})
}

/// Every mutating call, in an order where each can succeed: (method, route, concrete path,
/// body, records it leaves).
fn calls() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    serde_json::Value,
    usize,
)> {
    let none = serde_json::Value::Null;
    vec![
        (
            "PUT",
            "/v1/stacks/{stack}",
            "/v1/stacks/shop",
            stack("1"),
            1,
        ),
        (
            "PUT",
            "/v1/stacks/{stack}",
            "/v1/stacks/shop",
            stack("2"),
            1,
        ),
        (
            "POST",
            "/v1/stacks/{stack}/diff",
            "/v1/stacks/shop/diff",
            stack("3"),
            0,
        ),
        (
            "POST",
            "/v1/services/{stack}/{service}/scale",
            "/v1/services/shop/web/scale",
            serde_json::json!({"replicas": 2}),
            1,
        ),
        (
            "POST",
            "/v1/services/{stack}/{service}/restart",
            "/v1/services/shop/web/restart",
            none.clone(),
            1,
        ),
        (
            "POST",
            "/v1/services/{stack}/{service}/rollback",
            "/v1/services/shop/web/rollback",
            none.clone(),
            1,
        ),
        (
            "POST",
            "/v1/services/{stack}/{service}/rebalance",
            "/v1/services/shop/web/rebalance",
            none.clone(),
            1,
        ),
        (
            "POST",
            "/v1/services/{stack}/{service}/update",
            "/v1/services/shop/web/update",
            serde_json::json!({"image": "web:2"}),
            1,
        ),
        (
            "POST",
            "/v1/jobs/{stack}/{service}/run",
            "/v1/jobs/shop/backup/run",
            none.clone(),
            1,
        ),
        (
            "POST",
            "/v1/nodes/{node}/labels",
            "/v1/nodes/n1/labels",
            serde_json::json!({"set": {"zone": "a"}}),
            1,
        ),
        (
            "POST",
            "/v1/nodes/{node}/drain",
            "/v1/nodes/n1/drain",
            none.clone(),
            1,
        ),
        (
            "POST",
            "/v1/nodes/{node}/rotate-keys",
            "/v1/nodes/n1/rotate-keys",
            none.clone(),
            1,
        ),
        (
            "POST",
            "/v1/nodes/{node}/activate",
            "/v1/nodes/n1/activate",
            none.clone(),
            1,
        ),
        (
            "DELETE",
            "/v1/nodes/{node}",
            "/v1/nodes/n1?force=true",
            none.clone(),
            1,
        ),
        (
            "POST",
            "/v1/join-tokens",
            "/v1/join-tokens",
            serde_json::json!({}),
            1,
        ),
        (
            "POST",
            "/v1/tokens",
            "/v1/tokens",
            serde_json::json!({"name": "ci", "role": "deployer"}),
            1,
        ),
        (
            "DELETE",
            "/v1/tokens/{name}",
            "/v1/tokens/ci",
            none.clone(),
            1,
        ),
        (
            "POST",
            "/v1/users",
            "/v1/users",
            serde_json::json!({"name": "ann", "role": "viewer", "password": "a long passphrase"}),
            1,
        ),
        (
            "POST",
            "/v1/users/{name}/password",
            "/v1/users/ann/password",
            serde_json::json!({"password": "another long passphrase"}),
            1,
        ),
        (
            "POST",
            "/v1/login",
            "/v1/login",
            serde_json::json!({"user": "ann", "password": "another long passphrase"}),
            1,
        ),
        (
            "POST",
            "/v1/me/password",
            "/v1/me/password",
            serde_json::json!({"current": "another long passphrase", "password": "a third long passphrase"}),
            1,
        ),
        (
            "DELETE",
            "/v1/users/{name}",
            "/v1/users/ann",
            none.clone(),
            1,
        ),
        (
            "PUT",
            "/v1/secrets/{name}",
            "/v1/secrets/db_password",
            serde_json::json!({"value_base64": "aHVudGVyMg=="}),
            1,
        ),
        (
            "DELETE",
            "/v1/secrets/{name}",
            "/v1/secrets/db_password",
            none.clone(),
            1,
        ),
        (
            "PUT",
            "/v1/configs/{name}",
            "/v1/configs/nginx_conf",
            serde_json::json!({"value_base64": "bGlzdGVuIDgw"}),
            1,
        ),
        (
            "DELETE",
            "/v1/configs/{name}",
            "/v1/configs/nginx_conf",
            none.clone(),
            1,
        ),
        (
            "POST",
            "/v1/registry/gc",
            "/v1/registry/gc",
            serde_json::json!({}),
            1,
        ),
        (
            "POST",
            "/v1/keys/rotate",
            "/v1/keys/rotate",
            serde_json::json!({}),
            1,
        ),
        (
            "POST",
            "/v1/scan/db",
            "/v1/scan/db",
            serde_json::json!({"files": [{"name": "dsa.json", "text": r#"{"id": "DSA-1", "affected": [{"package": {"ecosystem": "Debian:12", "name": "openssl"}}]}"#}]}),
            1,
        ),
        (
            "POST",
            "/v1/hooks",
            "/v1/hooks",
            serde_json::json!({"url": "http://127.0.0.1:9/", "events": ["deploy.succeeded"]}),
            1,
        ),
        ("DELETE", "/v1/stacks/{stack}", "/v1/stacks/shop", none, 1),
    ]
}

async fn call(
    m: &Master,
    token: &str,
    method: &str,
    path: &str,
    body: &serde_json::Value,
) -> StatusCode {
    let req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json");
    let body = if body.is_null() {
        Body::empty()
    } else {
        Body::from(serde_json::to_vec(body).unwrap())
    };
    router(m.clone())
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap()
        .status()
}

async fn records(m: &Master) -> Vec<wharf_types::AuditRecord> {
    m.audit_records().await.unwrap()
}

#[tokio::test]
async fn every_mutation_and_every_refusal_is_one_audit_record() {
    // With a registry, for its garbage collection.
    let registry = tempfile::tempdir().unwrap();
    let config = wharf_master::MasterConfig {
        registry: Some(wharf_master::registry::RegistryConfig {
            dir: registry.path().to_path_buf(),
            anonymous_pull: false,
            hosts: vec![],
        }),
        ..Default::default()
    };
    let m = Master::with_config(Arc::new(SqliteStore::open_in_memory().unwrap()), config);
    common::put_node(&m, "n1", NodeState::Down).await;
    // As a server does at start: the keys opened, the cluster CA made once, by the master.
    let keys = tempfile::tempdir().unwrap();
    m.open_keys(keys.path()).await.unwrap();
    m.cluster_ca().await.unwrap();
    let admin = m
        .create_admin_token(&Actor::named("t"), "admin")
        .await
        .unwrap();
    let viewer = TokenRequest {
        name: "viewer".into(),
        role: Role::Viewer,
        stacks: vec![],
        ttl_secs: None,
    };
    let (viewer, _) = m.create_token(&Actor::named("t"), &viewer).await.unwrap();

    // Every mutating operation of the document is called below.
    let doc = ApiDoc::openapi();
    let mut documented = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
        ] {
            if op.is_some() {
                documented.push(format!("{method} {path}"));
            }
        }
    }
    let mut called: Vec<String> = calls().iter().map(|c| format!("{} {}", c.0, c.1)).collect();
    // A hook's id is made at its creation: `hook_mutations_and_pushes_are_audited` calls these.
    called.extend([
        "DELETE /v1/hooks/{id}".to_string(),
        "POST /v1/hooks/{id}".to_string(),
    ]);
    // A scan needs a node whose engine has the image: `crates/wharf/tests/scan.rs` checks its
    // record.
    called.push("POST /v1/images/scan".to_string());
    let missing: Vec<&String> = documented.iter().filter(|d| !called.contains(d)).collect();
    assert!(
        missing.is_empty(),
        "mutating operations this test does not call: {missing:?}"
    );

    for (method, route, path, body, leaves) in calls() {
        // A login needs no token, and a user changes its own password from its session: nobody
        // is refused either for their role.
        let own = route == "/v1/me/password";
        let public = route == "/v1/login" || own;
        if leaves == 1 && !public {
            // Refused first: one record, denied, and nothing else changes.
            let before = records(&m).await.len();
            let status = call(&m, &viewer, method, path, &body).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{method} {route} as a viewer"
            );
            let after = records(&m).await;
            assert_eq!(
                after.len(),
                before + 1,
                "{method} {route} refused: one record"
            );
            let r = after.last().unwrap();
            let seen = (r.actor.as_str(), r.outcome.as_str());
            assert_eq!(seen, ("viewer", "denied"), "{r:?}");
        }
        let token = if own {
            let login = wharf_types::LoginRequest {
                user: "ann".into(),
                password: Some(wharf_types::Password("another long passphrase".into())),
                invitation: None,
                new_password: None,
            };
            m.login(&Actor::named("ann"), &login).await.unwrap().token
        } else {
            admin.clone()
        };
        let before = records(&m).await.len();
        let status = call(&m, &token, method, path, &body).await;
        assert!(status.is_success(), "{method} {path}: {status}");
        let after = records(&m).await;
        assert_eq!(
            after.len() - before,
            leaves,
            "{method} {route}: records {:?}",
            &after[before..]
        );
        if leaves == 1 {
            let r = after.last().unwrap();
            let actor = if public { "ann" } else { "admin" };
            assert_eq!(
                (r.actor.as_str(), r.outcome.as_str()),
                (actor, "ok"),
                "{r:?}"
            );
        }
    }
    let (head, _) = m.audit_head().await.unwrap();
    wharf_master::audit::verify(&records(&m).await, &head).expect("a whole trail");
}

/// `GET .../exec` changes nothing, yet runs a command: a refused one is one `denied` record,
/// refused by the policy or by the handler (the accepted one is audited with its command before
/// it starts: `crates/wharf/tests/exec.rs`, through the real binary).
#[tokio::test]
async fn a_refused_exec_is_one_denied_record() {
    let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let viewer = TokenRequest {
        name: "viewer".into(),
        role: Role::Viewer,
        stacks: vec![],
        ttl_secs: None,
    };
    let (viewer, _) = m.create_token(&Actor::named("t"), &viewer).await.unwrap();
    let before = records(&m).await.len();
    let path = "/v1/services/shop/web/exec?command=%5B%22id%22%5D";
    let status = call(&m, &viewer, "GET", path, &serde_json::Value::Null).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let after = records(&m).await;
    assert_eq!(after.len(), before + 1, "one record: {after:?}");
    let r = after.last().unwrap();
    assert_eq!(
        (r.actor.as_str(), r.outcome.as_str(), r.target.as_str()),
        ("viewer", "denied", "shop"),
        "{r:?}"
    );
    assert!(r.action.ends_with("/exec"), "{r:?}");

    // Allowed, but refused by the handler (no such service): recorded as refused, with why.
    let admin = m
        .create_admin_token(&Actor::named("t"), "admin")
        .await
        .unwrap();
    let before = records(&m).await.len();
    let status = call(&m, &admin, "GET", path, &serde_json::Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let after = records(&m).await;
    assert_eq!(after.len(), before + 1, "one record: {after:?}");
    let r = after.last().unwrap();
    assert_eq!(
        (r.action.as_str(), r.outcome.as_str(), r.target.as_str()),
        ("service.exec", "denied", "shop/web"),
        "{r:?}"
    );
    assert!(
        r.summary
            .as_deref()
            .unwrap_or_default()
            .contains("not_found"),
        "{r:?}"
    );
}

/// The body of `method path` as JSON, with `headers`.
async fn call_with(
    m: &Master,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = router(m.clone())
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// A hook's removal is one record (refused to a viewer: one `denied`); a push with a bad
/// signature is refused (401) and one `denied` record naming the hook; a good one deploys and
/// leaves one record with the commit and the pusher; a push to another ref changes nothing.
#[tokio::test]
async fn hook_mutations_and_pushes_are_audited() {
    let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let admin = m
        .create_admin_token(&Actor::named("t"), "admin")
        .await
        .unwrap();
    let viewer = common::token(&m, "viewer", Role::Viewer, &[]).await;
    let bearer = format!("Bearer {admin}");
    let auth = [("authorization", bearer.as_str())];
    let body = serde_json::to_vec(&stack("1")).unwrap();
    let (s, _) = call_with(&m, "PUT", "/v1/stacks/shop", &auth, body).await;
    assert_eq!(s, StatusCode::OK);
    let req = serde_json::json!({"stack": "shop"});
    let (s, created) = call_with(
        &m,
        "POST",
        "/v1/hooks",
        &auth,
        serde_json::to_vec(&req).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["secret"].as_str().unwrap().to_string();
    assert_eq!(created["path"], format!("/v1/hooks/{id}"));
    assert_eq!(created["ref"], "refs/heads/main");

    let push = |git_ref: &str| {
        serde_json::to_vec(
            &serde_json::json!({"ref": git_ref, "after": "c0ffee", "pusher": {"name": "octocat"}}),
        )
        .unwrap()
    };
    let path = format!("/v1/hooks/{id}");
    let before = records(&m).await.len();
    let wrong = wharf_master::hooks::sign(b"not the secret", &push("refs/heads/main"));
    let headers = [
        ("x-hub-signature-256", wrong.as_str()),
        ("x-github-event", "push"),
    ];
    let (s, e) = call_with(&m, "POST", &path, &headers, push("refs/heads/main")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{e}");
    let after = records(&m).await;
    assert_eq!(
        after.len(),
        before + 1,
        "one record: {:?}",
        &after[before..]
    );
    let r = after.last().unwrap();
    assert_eq!(
        (
            r.actor.as_str(),
            r.action.as_str(),
            r.outcome.as_str(),
            r.target.as_str()
        ),
        (format!("hook {id}").as_str(), "hook.push", "denied", "shop"),
        "{r:?}"
    );

    let before = records(&m).await.len();
    let good = wharf_master::hooks::sign(secret.as_bytes(), &push("refs/heads/dev"));
    let headers = [
        ("x-hub-signature-256", good.as_str()),
        ("x-github-event", "push"),
    ];
    let (s, answer) = call_with(&m, "POST", &path, &headers, push("refs/heads/dev")).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{answer}");
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{answer}"
    );
    assert_eq!(
        records(&m).await.len(),
        before,
        "an ignored push changes nothing"
    );

    let good = wharf_master::hooks::sign(secret.as_bytes(), &push("refs/heads/main"));
    let headers = [
        ("x-hub-signature-256", good.as_str()),
        ("x-github-event", "push"),
    ];
    let (s, answer) = call_with(&m, "POST", &path, &headers, push("refs/heads/main")).await;
    assert_eq!(s, StatusCode::OK, "{answer}");
    let d = answer["deployment_id"].as_str().expect("a deployment");
    let after = records(&m).await;
    assert_eq!(after.len(), before + 1);
    let r = after.last().unwrap();
    assert_eq!(
        (r.action.as_str(), r.outcome.as_str()),
        ("stack.deploy", "ok")
    );
    let summary = r.summary.clone().unwrap_or_default();
    assert!(
        summary.contains("c0ffee") && summary.contains("octocat"),
        "{r:?}"
    );
    let dep = m.deployment(d).await.unwrap().unwrap();
    assert_eq!(dep.trigger.as_deref(), Some(summary.as_str()));
    assert_eq!(dep.services.len(), 1, "the job is not restarted: {dep:?}");

    let vbearer = format!("Bearer {viewer}");
    let before = records(&m).await.len();
    let (s, _) = call_with(
        &m,
        "DELETE",
        &path,
        &[("authorization", vbearer.as_str())],
        vec![],
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call_with(&m, "DELETE", &path, &auth, vec![]).await;
    assert_eq!(s, StatusCode::OK);
    let after = records(&m).await;
    let seen: Vec<(&str, &str)> = after[before..]
        .iter()
        .map(|r| (r.actor.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(seen, [("viewer", "denied"), ("admin", "ok")]);
    let (s, _) = call_with(&m, "POST", &path, &headers, push("refs/heads/main")).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "a removed hook deploys nothing");
}
