//! A stack's secrets and configs through the API (issue 10): a deploy stores each value the
//! client sends as a version (a new one only when it changed) and gives the services' files
//! that version; a `deployer` may use only its stack's own secrets (`<stack>_…`, and not those
//! of a stack whose name merely starts like its own); a secret in use cannot be removed, and a
//! new version rolls the stacks that use it.

use std::sync::Arc;

mod common;

use axum::http::StatusCode;
use base64::Engine;
use common::{call_json, token};
use wharf_master::Master;
use wharf_master::mutate::Actor;
use wharf_store::SqliteStore;
use wharf_types::*;

fn b64(v: &str) -> Secret {
    Secret(base64::engine::general_purpose::STANDARD.encode(v))
}

/// Stack `name` whose service `web` mounts the secret `db` (named `object` in the cluster,
/// external or not).
fn request(name: &str, object: &str, external: bool, value: Option<&str>) -> DeployRequest {
    let web = ServiceSpec {
        image: Some("app:1".into()),
        secrets: vec![FileRef {
            source: "db".into(),
            target: "/run/secrets/db".into(),
            ..FileRef::default()
        }],
        ..ServiceSpec::default()
    };
    let mut spec = StackSpec {
        name: name.into(),
        ..StackSpec::default()
    };
    spec.services.insert("web".into(), web);
    spec.secrets.insert(
        "db".into(),
        ObjectSpec {
            name: object.into(),
            external,
        },
    );
    let mut req = DeployRequest::of(spec);
    if let Some(v) = value {
        req.secret_values.insert("db".into(), b64(v));
    }
    req
}

async fn send(
    m: &Master,
    method: &str,
    path: &str,
    token: &str,
    body: &impl serde::Serialize,
) -> (StatusCode, serde_json::Value) {
    let (status, bytes) = call_json(m, method, path, token, body).await;
    (status, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// `PUT /v1/stacks/{stack}` of `request(stack, object, external, value)` with `token`.
async fn deploy(
    m: &Master,
    token: &str,
    stack: &str,
    object: &str,
    external: bool,
    value: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let path = format!("/v1/stacks/{stack}");
    send(
        m,
        "PUT",
        &path,
        token,
        &request(stack, object, external, value),
    )
    .await
}

async fn mounted(m: &Master, stack: &str) -> (String, u64) {
    let (_, info) = send(
        m,
        "GET",
        &format!("/v1/services/{stack}/web"),
        &token(m, &format!("r{}", rand_suffix()), Role::Viewer, &[]).await,
        &(),
    )
    .await;
    let f = &info["spec"]["secrets"][0];
    (
        f["name"].as_str().unwrap_or_default().to_string(),
        f["version"].as_u64().unwrap_or(0),
    )
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn a_deploy_versions_the_stacks_secrets_and_a_deployer_uses_only_its_own() {
    let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let admin = token(&m, "admin", Role::Admin, &[]).await;
    let ci = token(&m, "ci", Role::Deployer, &["shop"]).await;

    // The stack's own secret: stored sealed as version 1, mounted at version 1.
    let (status, body) = deploy(&m, &ci, "shop", "shop_db", false, Some("pw-one")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(mounted(&m, "shop").await, ("shop_db".into(), 1));
    // The same value again: nothing new.
    let (status, body) = deploy(&m, &ci, "shop", "shop_db", false, Some("pw-one")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["deployment_id"].is_null(), "{body}");
    // A changed value: version 2, and the diff says so.
    let (status, body) = deploy(&m, &ci, "shop", "shop_db", false, Some("pw-two")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.to_string().contains("secret db: version 1 -> 2"),
        "{body}"
    );
    assert_eq!(mounted(&m, "shop").await, ("shop_db".into(), 2));
    assert_eq!(
        m.object_value(ObjectKind::Secret, "shop_db", 2)
            .await
            .unwrap(),
        b"pw-two"
    );
    let (all, _) = m.store.range("/").await.unwrap();
    assert!(
        !all.iter()
            .any(|kv| String::from_utf8_lossy(&kv.value).contains("pw-two")),
        "a value in the clear in the store"
    );

    // Another team's secret: refused to the deployer, allowed to an operator.
    m.put_object(
        &Actor::named("admin"),
        ObjectKind::Secret,
        "prod_db",
        &b64("prod").0,
    )
    .await
    .unwrap();
    let (status, body) = deploy(&m, &ci, "shop", "prod_db", true, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("manage_secrets"),
        "{body}"
    );
    // A stack whose name starts like `shop_`: its secrets are not shop's.
    let (status, _) = deploy(&m, &admin, "shop_eu", "shop_eu_db", false, Some("eu")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = deploy(&m, &ci, "shop", "shop_eu_db", true, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let denied = m.audit_records().await.unwrap();
    assert!(
        denied
            .iter()
            .filter(|r| r.outcome == "denied" && r.action == "stack.deploy")
            .count()
            >= 2
    );
    // An external secret that does not exist: a located error that says how to make it.
    let (status, body) = deploy(&m, &admin, "shop", "nope", true, None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["hint"]
            .as_str()
            .unwrap()
            .contains("wharf secret create nope"),
        "{body}"
    );

    // In use: not removed. A new version rolls the stack.
    let (status, body) = send(&m, "DELETE", "/v1/secrets/shop_db", &admin, &()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("in use by shop/web"),
        "{body}"
    );
    let (status, body) = send(
        &m,
        "PUT",
        "/v1/secrets/shop_db",
        &admin,
        &SecretRequest {
            value_base64: b64("pw-three").0,
        },
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["rolled"][0]
            .as_str()
            .unwrap()
            .starts_with("shop (deployment d-"),
        "{body}"
    );
    assert_eq!(mounted(&m, "shop").await, ("shop_db".into(), 3));

    // A version stored without its roll (a master killed in between): the start's sweep
    // rolls the stack.
    m.put_object(
        &Actor::named("admin"),
        ObjectKind::Secret,
        "shop_db",
        &b64("pw-four").0,
    )
    .await
    .unwrap();
    assert_eq!(mounted(&m, "shop").await, ("shop_db".into(), 3));
    let sweep = || async {
        match wharf_master::api::roll_stale_consumers(&m).await {
            Ok(rolled) => rolled,
            Err(e) => panic!("{}", e.1.message),
        }
    };
    let rolled = sweep().await;
    assert!(
        rolled.iter().any(|r| r.starts_with("shop (deployment")),
        "{rolled:?}"
    );
    assert_eq!(mounted(&m, "shop").await, ("shop_db".into(), 4));
    assert!(sweep().await.is_empty(), "nothing stale once rolled");
}
