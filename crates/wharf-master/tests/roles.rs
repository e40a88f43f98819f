//! The role matrix, generated from the OpenAPI document: every operation, called by a token of
//! every role, in and out of a stack scope, and by no token and a revoked one, gets what this
//! file expects (written here, apart from the policy table it checks): 401 without a valid token,
//! 403 where the role or the scope does not allow it, and otherwise an answer past authorisation.
//! An operation of the document without a row here, or without a row in the policy, fails.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::token;
use tower::ServiceExt;
use utoipa::OpenApi;
use wharf_master::Master;
use wharf_master::api::{ApiDoc, router};
use wharf_master::mutate::Actor;
use wharf_store::SqliteStore;
use wharf_types::Role;

/// Who may call an operation, as the roles say.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Who {
    /// Any valid token (the version, the API document).
    Anyone,
    /// Read state: every role; scoped tokens see their stacks (lists are filtered).
    Readers,
    /// Deploy, update, roll back, scale: admin, operator, deployer.
    Deployers,
    /// Run the cluster: admin and operator, never a scoped token.
    Operators,
    /// Tokens and users: admin only, never a scoped token.
    Admins,
}

/// What each operation is, by `METHOD path`, and whether it acts on the `{stack}` of its path
/// (scope checked), on the whole cluster (scoped tokens refused), or on neither.
fn expectations() -> BTreeMap<&'static str, (Who, Acts)> {
    use Acts::*;
    use Who::*;
    BTreeMap::from([
        ("GET /v1/version", (Anyone, Nothing)),
        ("GET /v1/openapi.json", (Anyone, Nothing)),
        ("GET /v1/stacks", (Readers, Nothing)),
        ("GET /v1/stacks/{stack}", (Readers, OnStack)),
        ("PUT /v1/stacks/{stack}", (Deployers, OnStack)),
        ("DELETE /v1/stacks/{stack}", (Operators, OnStack)),
        ("POST /v1/stacks/{stack}/diff", (Deployers, OnStack)),
        ("GET /v1/stacks/{stack}/instances", (Readers, OnStack)),
        ("GET /v1/services", (Readers, Nothing)),
        ("GET /v1/services/{stack}/{service}", (Readers, OnStack)),
        (
            "GET /v1/services/{stack}/{service}/instances",
            (Readers, OnStack),
        ),
        (
            "POST /v1/services/{stack}/{service}/scale",
            (Deployers, OnStack),
        ),
        (
            "POST /v1/services/{stack}/{service}/restart",
            (Deployers, OnStack),
        ),
        (
            "POST /v1/services/{stack}/{service}/rollback",
            (Deployers, OnStack),
        ),
        (
            "POST /v1/services/{stack}/{service}/rebalance",
            (Deployers, OnStack),
        ),
        (
            "POST /v1/services/{stack}/{service}/update",
            (Deployers, OnStack),
        ),
        (
            "GET /v1/services/{stack}/{service}/history",
            (Readers, OnStack),
        ),
        (
            "GET /v1/services/{stack}/{service}/logs",
            (Readers, OnStack),
        ),
        ("GET /v1/jobs", (Readers, Nothing)),
        ("GET /v1/jobs/{stack}/{service}", (Readers, OnStack)),
        ("POST /v1/jobs/{stack}/{service}/run", (Deployers, OnStack)),
        // Running a command in an instance: whoever may deploy the stack.
        (
            "GET /v1/services/{stack}/{service}/exec",
            (Deployers, OnStack),
        ),
        (
            "GET /v1/services/{stack}/{service}/stats",
            (Readers, OnStack),
        ),
        ("GET /v1/stats", (Readers, Nothing)),
        ("GET /v1/deployments", (Readers, Nothing)),
        ("GET /v1/events", (Readers, Nothing)),
        ("GET /v1/deployments/{id}", (Readers, Nothing)),
        ("GET /v1/nodes", (Readers, OnCluster)),
        ("GET /v1/masters", (Readers, OnCluster)),
        ("GET /v1/nodes/{node}", (Readers, OnCluster)),
        ("DELETE /v1/nodes/{node}", (Operators, OnCluster)),
        ("POST /v1/nodes/{node}/labels", (Operators, OnCluster)),
        ("POST /v1/nodes/{node}/drain", (Operators, OnCluster)),
        ("POST /v1/nodes/{node}/rotate-keys", (Operators, OnCluster)),
        ("POST /v1/nodes/{node}/activate", (Operators, OnCluster)),
        ("POST /v1/join-tokens", (Operators, OnCluster)),
        ("GET /v1/audit", (Operators, OnCluster)),
        ("GET /v1/audit/verify", (Operators, OnCluster)),
        ("GET /v1/tokens", (Admins, OnCluster)),
        ("POST /v1/tokens", (Admins, OnCluster)),
        ("DELETE /v1/tokens/{name}", (Admins, OnCluster)),
        ("GET /v1/users", (Admins, OnCluster)),
        ("POST /v1/users", (Admins, OnCluster)),
        ("DELETE /v1/users/{name}", (Admins, OnCluster)),
        ("POST /v1/users/{name}/password", (Admins, OnCluster)),
        ("POST /v1/keys/rotate", (Admins, OnCluster)),
        ("POST /v1/registry/gc", (Operators, OnCluster)),
        ("GET /v1/policy", (Readers, Nothing)),
        ("GET /v1/scan/db", (Readers, Nothing)),
        ("POST /v1/scan/db", (Admins, OnCluster)),
        ("POST /v1/images/scan", (Deployers, Nothing)),
        ("GET /v1/images", (Readers, Nothing)),
        ("GET /v1/secrets", (Readers, OnCluster)),
        ("GET /v1/secrets/{name}", (Readers, OnCluster)),
        ("PUT /v1/secrets/{name}", (Operators, OnCluster)),
        ("DELETE /v1/secrets/{name}", (Operators, OnCluster)),
        ("GET /v1/configs", (Readers, OnCluster)),
        ("GET /v1/configs/{name}", (Readers, OnCluster)),
        ("PUT /v1/configs/{name}", (Operators, OnCluster)),
        ("DELETE /v1/configs/{name}", (Operators, OnCluster)),
        ("GET /v1/hooks", (Admins, OnCluster)),
        ("POST /v1/hooks", (Admins, OnCluster)),
        ("DELETE /v1/hooks/{id}", (Admins, OnCluster)),
        ("GET /v1/hooks/{id}/deliveries", (Admins, OnCluster)),
        // A git host's push: its signature, not a token (an unknown hook is 404 to anyone).
        ("POST /v1/hooks/{id}", (Anyone, Public)),
        ("POST /v1/login", (Anyone, Public)),
        ("GET /healthz", (Anyone, Public)),
        ("GET /metrics", (Readers, OnCluster)),
        // Past authorisation for every token; the handler then wants a user's session.
        ("POST /v1/me/password", (Anyone, Nothing)),
    ])
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Acts {
    Nothing,
    OnStack,
    OnCluster,
    /// Served without a token (a login): no 401 for want of one.
    Public,
}

fn role_may(who: Who, role: Role) -> bool {
    match who {
        Who::Anyone | Who::Readers => true,
        Who::Deployers => role != Role::Viewer,
        Who::Operators => matches!(role, Role::Admin | Role::Operator),
        Who::Admins => role == Role::Admin,
    }
}

/// The operations of the OpenAPI document, as `METHOD path`.
fn documented() -> Vec<String> {
    let doc = ApiDoc::openapi();
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
            ("HEAD", &item.head),
        ];
        for (method, op) in ops {
            if op.is_some() {
                out.push(format!("{method} {path}"));
            }
        }
    }
    out
}

/// The request path with its parameters filled in; `{stack}` is `stack`.
fn concrete(path: &str, stack: &str) -> String {
    path.replace("{stack}", stack)
        .replace("{service}", "web")
        .replace("{node}", "no-such-node")
        .replace("{id}", "no-such-deployment")
        .replace("{name}", "no-such-token")
}

async fn call(m: &Master, method: &str, path: &str, token: Option<&str>) -> StatusCode {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let body = if matches!(method, "POST" | "PUT") {
        Body::from("{}")
    } else {
        Body::empty()
    };
    router(m.clone())
        .oneshot(req.body(body).unwrap())
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn every_operation_by_every_role_in_and_out_of_scope_gets_what_the_policy_says() {
    let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let expected = expectations();
    let ops = documented();
    let mut failures = Vec::new();
    for op in &ops {
        let (method, path) = op.split_once(' ').unwrap();
        if wharf_master::policy::operation(method, path).is_none() {
            failures.push(format!("{op}: no row in policy::OPERATIONS"));
        }
        if !expected.contains_key(op.as_str()) {
            failures.push(format!("{op}: no row in this test's expectations"));
        }
    }
    let revoked = token(&m, "revoked", Role::Admin, &[]).await;
    m.revoke_token(&Actor::named("test"), "revoked")
        .await
        .unwrap();
    for (op, (who, acts)) in &expected {
        let (method, path) = op.split_once(' ').unwrap();
        if !ops.iter().any(|o| o == op) {
            failures.push(format!(
                "{op}: expected here but not in the OpenAPI document"
            ));
            continue;
        }
        let tokens_needed = if *acts == Acts::Public {
            vec![]
        } else {
            vec![
                (None, "no token"),
                (Some(revoked.as_str()), "a revoked token"),
            ]
        };
        for (t, what) in tokens_needed {
            let got = call(&m, method, &concrete(path, "shop"), t).await;
            if got != StatusCode::UNAUTHORIZED {
                failures.push(format!("{op} with {what}: {got}, want 401"));
            }
        }
        for role in Role::ALL {
            for scoped in [false, true] {
                // Made afresh for each operation and revoked after it.
                let name = format!("{role}-{}", if scoped { "shop" } else { "all" });
                let stacks: &[&str] = if scoped { &["shop"] } else { &[] };
                let t = token(&m, &name, role, stacks).await;
                for stack in ["shop", "other"] {
                    let in_scope = !scoped || stack == "shop";
                    let allowed = role_may(*who, role)
                        && match acts {
                            Acts::Nothing | Acts::Public => true,
                            Acts::OnStack => in_scope,
                            Acts::OnCluster => !scoped,
                        };
                    let got = call(&m, method, &concrete(path, stack), Some(&t)).await;
                    let ok = if allowed {
                        got != StatusCode::UNAUTHORIZED && got != StatusCode::FORBIDDEN
                    } else {
                        got == StatusCode::FORBIDDEN
                    };
                    if !ok {
                        let want = if allowed { "past authorisation" } else { "403" };
                        failures.push(format!(
                            "{op} on {stack} as {role} (scoped: {scoped}): {got}, want {want}"
                        ));
                    }
                }
                m.revoke_token(&Actor::named("test"), &name).await.unwrap();
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

async fn call_from(m: &Master, from: [u8; 4], token: &str) -> StatusCode {
    let addr = std::net::SocketAddr::from((from, 40_000));
    let req = Request::builder()
        .uri("/v1/stacks")
        .header("authorization", format!("Bearer {token}"))
        .extension(axum::extract::ConnectInfo(addr))
        .body(Body::empty())
        .unwrap();
    router(m.clone()).oneshot(req).await.unwrap().status()
}

#[tokio::test]
async fn failed_authentications_are_limited_per_address_without_slowing_the_others() {
    let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let good = token(&m, "good", Role::Viewer, &[]).await;
    let mut seen = BTreeMap::new();
    let started = std::time::Instant::now();
    for _ in 0..50 {
        *seen
            .entry(call_from(&m, [10, 0, 0, 1], "wharf_guess").await)
            .or_insert(0) += 1;
    }
    // The budget comes back at 2 a second: a slow machine may see a few more 401s (found in
    // CI: 21 of 50, the burst having taken over half a second).
    let refilled = (started.elapsed().as_secs_f64() * 2.0).ceil() as usize;
    let (n401, n429) = (
        seen.get(&StatusCode::UNAUTHORIZED).copied().unwrap_or(0),
        seen.get(&StatusCode::TOO_MANY_REQUESTS)
            .copied()
            .unwrap_or(0),
    );
    assert!(
        (20..=20 + refilled).contains(&n401) && n401 + n429 == 50 && n429 > 0,
        "a burst of 401s, then 429s: {seen:?} ({refilled} refilled)"
    );
    assert_eq!(call_from(&m, [10, 0, 0, 2], &good).await, StatusCode::OK);
    assert_eq!(
        call_from(&m, [10, 0, 0, 3], "wharf_typo").await,
        StatusCode::UNAUTHORIZED,
        "another address has its own budget"
    );
    // The limited address with a valid token is served: only failures are limited.
    assert_eq!(call_from(&m, [10, 0, 0, 1], &good).await, StatusCode::OK);
}

/// A master with one user, `ann` (a viewer), whose password is "correct horse battery".
async fn master_with_ann() -> Master {
    let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let ann = wharf_types::UserRequest {
        name: "ann".into(),
        role: Role::Viewer,
        password: Some(wharf_types::Password("correct horse battery".into())),
    };
    m.add_user(&Actor::named("admin"), &ann).await.unwrap();
    m
}

async fn login_from(m: &Master, from: [u8; 4], user: &str, password: &str) -> StatusCode {
    let body = serde_json::json!({"user": user, "password": password});
    post_json(m, "/v1/login", None, from, &body).await
}

/// POST `body` to `path` from the address `from`, with `token` if given.
async fn post_json(
    m: &Master,
    path: &str,
    token: Option<&str>,
    from: [u8; 4],
    body: &serde_json::Value,
) -> StatusCode {
    let addr = std::net::SocketAddr::from((from, 40_000));
    let mut req = Request::post(path)
        .header("content-type", "application/json")
        .extension(axum::extract::ConnectInfo(addr));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap();
    router(m.clone()).oneshot(req).await.unwrap().status()
}

#[tokio::test]
async fn failed_logins_are_limited_per_address_and_the_others_log_in() {
    let m = master_with_ann().await;
    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    for _ in 0..40 {
        seen.push(login_from(&m, [10, 0, 0, 1], "ann", "guess guess guess").await);
    }
    // A burst of 20 checked and refused, then 429s, save the 2 a second the budget regains
    // while the checks run.
    let regained = (started.elapsed().as_secs_f64() * 2.0).ceil() as usize;
    assert!(
        seen[..20].iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "{seen:?}"
    );
    let refused = seen
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert!(
        refused <= 20 + regained,
        "{refused} checked in {:?}: {seen:?}",
        started.elapsed()
    );
    // Which of the later ones the regained budget let through depends on the machine's speed
    // (each check hashes a password); that the burst is followed by refusals unchecked does not.
    assert!(
        seen[20..].contains(&StatusCode::TOO_MANY_REQUESTS),
        "no 429 after the burst of 20: {seen:?}"
    );
    let s = login_from(&m, [10, 0, 0, 2], "ann", "correct horse battery").await;
    assert_eq!(s, StatusCode::OK, "another address logs in");
}

async fn own_password(m: &Master, token: &str, current: &str, new: &str) -> StatusCode {
    let body = serde_json::json!({"current": current, "password": new});
    post_json(m, "/v1/me/password", Some(token), [10, 0, 0, 9], &body).await
}

#[tokio::test]
async fn a_user_changes_its_own_password_given_the_current_one_and_a_machine_token_cannot() {
    let m = master_with_ann().await;
    let login = |password: &str| wharf_types::LoginRequest {
        user: "ann".into(),
        password: Some(wharf_types::Password(password.into())),
        invitation: None,
        new_password: None,
    };
    let session = m
        .login(&Actor::named("ann"), &login("correct horse battery"))
        .await
        .unwrap()
        .token;
    let wrong = own_password(&m, &session, "guess guess guess", "a brand new passphrase").await;
    assert_eq!(wrong, StatusCode::UNAUTHORIZED, "a wrong current password");
    let short = own_password(&m, &session, "correct horse battery", "short").await;
    assert_eq!(
        short,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a too short password"
    );
    let ok = own_password(
        &m,
        &session,
        "correct horse battery",
        "a brand new passphrase",
    )
    .await;
    assert_eq!(ok, StatusCode::OK);
    assert!(
        m.login(&Actor::named("ann"), &login("correct horse battery"))
            .await
            .is_err()
    );
    assert!(
        m.login(&Actor::named("ann"), &login("a brand new passphrase"))
            .await
            .is_ok()
    );

    let ci = token(&m, "ci", Role::Admin, &[]).await;
    let machine = own_password(&m, &ci, "whatever it is", "a brand new passphrase").await;
    assert_eq!(
        machine,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a machine token has no password"
    );
    let records = m.audit_records().await.unwrap();
    let changed: Vec<_> = records
        .iter()
        .filter(|r| r.action == "user.password")
        .collect();
    assert_eq!(changed.len(), 1, "one change, one record: {changed:?}");
    assert_eq!(changed[0].actor, "ann");
}
