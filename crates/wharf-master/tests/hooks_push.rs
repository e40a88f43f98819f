//! `POST /v1/hooks/{id}` through the router, one row per provider and case: each git host's
//! headers and payload as it sends them deploy the hook's stack; a wrong secret is 401; what is
//! not a push, or another ref, is 202 and deploys nothing.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;
use wharf_master::Master;
use wharf_master::api::router;
use wharf_master::hooks::sign;
use wharf_store::SqliteStore;
use wharf_types::{HookCreated, HookProvider, HookRequest, Role};

async fn push(m: &Master, path: &str, headers: &[(&str, String)], body: &[u8]) -> StatusCode {
    let mut req = Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req.body(Body::from(body.to_vec())).unwrap();
    router(m.clone()).oneshot(req).await.unwrap().status()
}

const GITLAB: &str =
    r#"{"object_kind":"push","ref":"refs/heads/main","after":"da15608","user_username":"jsmith"}"#;
const GITEA: &str = r#"{"ref":"refs/heads/main","after":"bffeb74","pusher":{"login":"gitea"}}"#;
const GITHUB_DEV: &str = r#"{"ref":"refs/heads/dev","after":"abc","pusher":{"name":"octocat"}}"#;

#[tokio::test]
async fn each_provider_signs_as_it_does_and_only_a_push_to_the_ref_deploys() {
    let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let admin = common::token(&m, "admin", Role::Admin, &[]).await;
    let stack =
        serde_json::json!({"spec": {"name": "shop", "services": {"web": {"image": "nginx"}}}});
    let (s, _) = common::call_json(&m, "PUT", "/v1/stacks/shop", &admin, &stack).await;
    assert_eq!(s, StatusCode::OK);
    let mut hooks = Vec::new();
    for p in [
        HookProvider::Github,
        HookProvider::Gitlab,
        HookProvider::Gitea,
    ] {
        let req = HookRequest {
            stack: Some("shop".into()),
            provider: Some(p),
            ..HookRequest::default()
        };
        let (s, body) = common::call_json(&m, "POST", "/v1/hooks", &admin, &req).await;
        assert_eq!(s, StatusCode::OK);
        let h: HookCreated = serde_json::from_slice(&body).unwrap();
        hooks.push((p, h.path.unwrap(), h.secret));
    }
    let (gh, gl, gt) = (&hooks[0], &hooks[1], &hooks[2]);
    let hmac = |secret: &str, body: &str| sign(secret.as_bytes(), body.as_bytes());
    let bare = |secret: &str, body: &str| hmac(secret, body).replace("sha256=", "");
    // (what, path, headers, body, status, deploys?)
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, String)>,
        &'a str,
        StatusCode,
        bool,
    );
    let cases: Vec<Case> = vec![
        (
            "gitlab: the token",
            &gl.1,
            vec![
                ("x-gitlab-token", gl.2.clone()),
                ("x-gitlab-event", "Push Hook".into()),
            ],
            GITLAB,
            StatusCode::OK,
            true,
        ),
        (
            "gitlab: another hook's token",
            &gl.1,
            vec![
                ("x-gitlab-token", gt.2.clone()),
                ("x-gitlab-event", "Push Hook".into()),
            ],
            GITLAB,
            StatusCode::UNAUTHORIZED,
            false,
        ),
        (
            "gitea: the HMAC, bare hex",
            &gt.1,
            vec![
                ("x-gitea-signature", bare(&gt.2, GITEA)),
                ("x-gitea-event", "push".into()),
            ],
            GITEA,
            StatusCode::OK,
            true,
        ),
        (
            "gitea: GitHub's header instead",
            &gt.1,
            vec![("x-hub-signature-256", hmac(&gt.2, GITEA))],
            GITEA,
            StatusCode::UNAUTHORIZED,
            false,
        ),
        (
            "github: a ping",
            &gh.1,
            vec![
                ("x-hub-signature-256", hmac(&gh.2, "{}")),
                ("x-github-event", "ping".into()),
            ],
            "{}",
            StatusCode::ACCEPTED,
            false,
        ),
        (
            "github: another ref",
            &gh.1,
            vec![
                ("x-hub-signature-256", hmac(&gh.2, GITHUB_DEV)),
                ("x-github-event", "push".into()),
            ],
            GITHUB_DEV,
            StatusCode::ACCEPTED,
            false,
        ),
        (
            "github: not JSON",
            &gh.1,
            vec![
                ("x-hub-signature-256", hmac(&gh.2, "ref=main")),
                ("x-github-event", "push".into()),
            ],
            "ref=main",
            StatusCode::BAD_REQUEST,
            false,
        ),
        (
            "no such hook",
            "/v1/hooks/h-0000000000000000",
            vec![("x-hub-signature-256", hmac(&gh.2, GITHUB_DEV))],
            GITHUB_DEV,
            StatusCode::NOT_FOUND,
            false,
        ),
    ];
    for (what, path, headers, body, want, deploys) in cases {
        let before = m.stack("shop").await.unwrap().unwrap().0.last_deployment;
        let got = push(&m, path, &headers, body.as_bytes()).await;
        assert_eq!(got, want, "{what}");
        let after = m.stack("shop").await.unwrap().unwrap().0.last_deployment;
        assert_eq!(
            before != after,
            deploys,
            "{what}: deployed {before:?} -> {after:?}"
        );
    }
}
