//! Issue 15, acceptance check 5: webhooks through a real `wharf up`. An incoming push with a bad
//! signature is refused (401) and audited; a GitHub push signed with the hook's secret deploys
//! its stack again (a new deployment that succeeds, naming the commit and the pusher); a push to
//! another ref is acknowledged and ignored. Outgoing hooks reach receivers on 127.0.0.1 that check
//! the HMAC signature; one that answers 500 twice gets the same delivery on the third try, and
//! `wharf hook deliveries` shows the three tries.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use wharf_testkit::{Check, not_yet, wait_for};
use wharf_types::{DeploymentState, HookCreated, HookDelivery};

use common::stack::{Service, Stack};
use common::*;

/// One request a receiver got.
#[derive(Clone, Debug)]
struct Got {
    delivery: String,
    event: String,
    /// The deployment of the event in the body.
    deployment: Option<String>,
    signed: bool,
    answered: u16,
}

/// A webhook receiver on 127.0.0.1: checks `X-Wharf-Signature-256` against the secret (set once
/// the hook exists), answers 500 to the first `fail` tries of each delivery, then 200.
#[derive(Clone)]
struct Receiver {
    secret: Arc<Mutex<Option<String>>>,
    fail: usize,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receiver {
    async fn start(fail: usize) -> (Receiver, String) {
        let r = Receiver {
            secret: Arc::default(),
            fail,
            got: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (r, url)
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().clone()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let signed = r.secret.lock().as_ref().is_some_and(|s| {
        header("x-wharf-signature-256") == wharf_master::hooks::sign(s.as_bytes(), &body)
    });
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let delivery = header("x-wharf-delivery");
    let mut got = r.got.lock();
    let before = got.iter().filter(|g| g.delivery == delivery).count();
    let answered = if before < r.fail { 500 } else { 200 };
    got.push(Got {
        delivery: delivery.clone(),
        event: header("x-wharf-event"),
        deployment: v["event"]["deployment"].as_str().map(str::to_string),
        signed,
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

fn created(out: &str) -> HookCreated {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("a created hook ({e}):\n{out}"))
}

/// A GitHub push payload of `commit` to `git_ref` by `octocat`.
fn github_push(git_ref: &str, commit: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ref": git_ref,
        "before": "0000000000000000000000000000000000000000",
        "after": commit,
        "repository": {"full_name": "octo/shop"},
        "pusher": {"name": "octocat", "email": "octocat@example.com"},
        "sender": {"login": "octocat"},
    }))
    .unwrap()
}

async fn post_push(url: &str, signature: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "push")
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .expect("post the push");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_push_deploys_and_outgoing_hooks_are_delivered_signed_and_retried() {
    let (mut w, stack) = Wharf::start_for("hooks").await;
    let yaml = Stack::new(&stack)
        .service(Service::testapp("web").replicas(1))
        .yaml();
    w.deploy_ready(&stack, &yaml, "web", 1, Duration::from_secs(60))
        .await;

    // Two outgoing hooks: a receiver that takes every delivery, one that fails each twice.
    let (good, good_url) = Receiver::start(0).await;
    let (flaky, flaky_url) = Receiver::start(2).await;
    let events = "deploy.started,deploy.succeeded,deploy.failed";
    let mut outgoing = BTreeMap::new();
    for (r, url) in [(&good, &good_url), (&flaky, &flaky_url)] {
        let args = [
            "hook", "create", "--url", url, "--events", events, "-o", "json",
        ];
        let (so, _) = w.cli_code(&args, 0);
        let h = created(&so);
        *r.secret.lock() = Some(h.secret.clone());
        outgoing.insert(url.clone(), h.info.id);
    }

    let (so, _) = w.cli_code(&["hook", "create", "--stack", &stack, "-o", "json"], 0);
    let incoming = created(&so);
    let path = incoming.path.clone().expect("an incoming hook's path");
    let hook_url = format!("{}{path}", w.url());
    assert_eq!(incoming.info.git_ref.as_deref(), Some("refs/heads/main"));
    let (text, _) = w.cli_code(&["hook", "ls"], 0);
    for id in outgoing.values().chain([&incoming.info.id]) {
        assert!(text.contains(id.as_str()), "{id} in:\n{text}");
    }
    assert!(
        !text.contains(&incoming.secret),
        "`hook ls` shows no secret:\n{text}"
    );

    // A bad signature: refused, and on the audit trail.
    let commit = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
    let body = github_push("refs/heads/main", commit);
    let forged = wharf_master::hooks::sign(b"a guess", &body);
    let (status, answer) = post_push(&hook_url, &forged, body.clone()).await;
    assert_eq!(status, 401, "a forged push: {answer}");
    let refused = w.client().audit().await.expect("the audit trail");
    let r = refused
        .iter()
        .rev()
        .find(|r| r.action == "hook.push")
        .unwrap_or_else(|| panic!("a hook.push record in {refused:?}"));
    assert_eq!(
        (r.outcome.as_str(), r.target.as_str(), r.actor.as_str()),
        (
            "denied",
            stack.as_str(),
            format!("hook {}", incoming.info.id).as_str()
        ),
        "{r:?}"
    );

    // Another ref: acknowledged and ignored.
    let other = github_push("refs/heads/feature", commit);
    let signature = wharf_master::hooks::sign(incoming.secret.as_bytes(), &other);
    let (status, answer) = post_push(&hook_url, &signature, other).await;
    assert_eq!(status, 202, "{answer}");
    assert!(
        answer["ignored"]
            .as_str()
            .unwrap_or_default()
            .contains("refs/heads/feature"),
        "{answer}"
    );

    // The hook's ref, signed: a new deployment of the stack, which succeeds.
    let signature = wharf_master::hooks::sign(incoming.secret.as_bytes(), &body);
    let (status, answer) = post_push(&hook_url, &signature, body).await;
    assert_eq!(status, 200, "{answer}");
    let id = answer["deployment_id"]
        .as_str()
        .expect("a deployment id")
        .to_string();
    let d = w
        .wait_deployment_end(&id, "the pushed deployment's end", Duration::from_secs(60))
        .await;
    assert_eq!(d.state, DeploymentState::Succeeded, "{d:?}\n{}", w.logs());
    let trigger = d.trigger.clone().unwrap_or_default();
    assert!(
        trigger.contains(commit)
            && trigger.contains("octocat")
            && trigger.contains("refs/heads/main"),
        "{d:?}"
    );
    let (status_text, _) = w.cli_code(&["deployment", "status", &id], 0);
    assert!(
        status_text.contains(&format!("trigger:    {trigger}")),
        "{status_text}"
    );
    let deployed = w.client().audit().await.unwrap();
    assert!(
        deployed.iter().any(|r| r.action == "stack.deploy"
            && r.outcome == "ok"
            && r.summary.as_deref().is_some_and(|s| s.contains(commit))),
        "the deploy's audit record names the commit"
    );

    // Each receiver gets the deployment's start and success, signed; the flaky one the same
    // delivery three times, the third answered 200.
    let ours = |r: &Receiver, event: &str| -> Vec<Got> {
        r.got()
            .into_iter()
            .filter(|g| g.deployment.as_deref() == Some(id.as_str()) && g.event == event)
            .collect()
    };
    let waited = wait_for(
        "the deliveries of the pushed deployment",
        Duration::from_secs(60),
        || async {
            let g = ours(&good, "deploy.succeeded");
            let f = ours(&flaky, "deploy.succeeded");
            if g.iter().any(|x| x.answered == 200) && f.iter().any(|x| x.answered == 200) {
                Check::Done((g, f))
            } else {
                not_yet((good.got(), flaky.got()))
            }
        },
    )
    .await;
    let (g, f) = waited.unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    assert_eq!(g.len(), 1, "one delivery, taken at once: {g:?}");
    assert!(g[0].signed, "signed with the hook's secret: {g:?}");
    assert!(
        !ours(&good, "deploy.started").is_empty(),
        "{:?}",
        good.got()
    );
    let answers: Vec<u16> = f.iter().map(|x| x.answered).collect();
    assert_eq!(answers, [500, 500, 200], "{f:?}");
    assert!(
        f.iter().all(|x| x.signed && x.delivery == f[0].delivery),
        "one stable, signed delivery: {f:?}"
    );

    // The delivery log shows the three tries.
    let flaky_id = &outgoing[&flaky_url];
    let log = wait_for(
        "the flaky delivery recorded as delivered",
        Duration::from_secs(10),
        || async {
            let (so, _) = w
                .cli_code_async(&["hook", "deliveries", flaky_id, "-o", "json"], 0)
                .await;
            let ds: Vec<HookDelivery> = serde_json::from_str(&so).unwrap_or_default();
            match ds.into_iter().find(|d| d.id == f[0].delivery) {
                Some(d) if d.state == "delivered" => Check::Done(d),
                other => not_yet(other),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    let statuses: Vec<Option<u16>> = log.attempts.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [Some(500), Some(500), Some(200)], "{log:?}");
    let (table, _) = w.cli_code(&["hook", "deliveries", flaky_id], 0);
    let row = line_with(&table, &f[0].delivery);
    assert!(row.contains("delivered") && row.contains(" 3 "), "{table}");

    // Removed: a push is 404 and the hook is gone from the list.
    w.cli_code(&["hook", "rm", &incoming.info.id], 0);
    let again = github_push("refs/heads/main", commit);
    let signature = wharf_master::hooks::sign(incoming.secret.as_bytes(), &again);
    let (status, _) = post_push(&hook_url, &signature, again).await;
    assert_eq!(status, 404);
    let (text, _) = w.cli_code(&["hook", "ls"], 0);
    assert!(!text.contains(&incoming.info.id), "{text}");
}
