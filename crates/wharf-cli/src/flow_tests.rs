//! Whole commands against a canned HTTP server (a raw TCP listener): deploy, follow, scale, rm.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use wharf_client::Client;

use crate::{CliError, execute_with};

/// Status and body of one canned reply.
type Reply = (u16, String);

/// The "status" of a reply that is no reply: the connection is closed unanswered.
const HANG_UP: u16 = 0;

/// Replies per `METHOD /path?query`; each request takes the next reply, the last one repeats.
/// Status [`HANG_UP`] closes the connection without answering (a master that died mid-request).
#[derive(Clone, Default)]
struct Canned {
    routes: Arc<Mutex<HashMap<String, Vec<Reply>>>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Canned {
    fn on(self, route: &str, status: u16, body: serde_json::Value) -> Self {
        self.routes
            .lock()
            .entry(route.to_string())
            .or_default()
            .push((status, body.to_string()));
        self
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().clone()
    }

    /// Deployment d1 as the successive polls see it.
    fn deployment_d1(self, polls: Vec<serde_json::Value>) -> Self {
        polls
            .into_iter()
            .fold(self, |me, d| me.on("GET /v1/deployments/d1", 200, d))
    }

    /// How many requests took `route`.
    fn times(&self, route: &str) -> usize {
        self.seen().iter().filter(|r| *r == route).count()
    }

    async fn start(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 8192];
                    let head_end = loop {
                        let n = sock.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        req.extend_from_slice(&buf[..n]);
                        if let Some(p) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p;
                        }
                    };
                    let head = String::from_utf8_lossy(&req[..head_end]).to_string();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    while req.len() < head_end + 4 + len {
                        let n = sock.read(&mut buf).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        req.extend_from_slice(&buf[..n]);
                    }
                    let mut parts = head.split_whitespace();
                    // A route names the query when it matters (`?volumes=true`); otherwise it
                    // matches the path alone (a long poll's `after` and `wait_ms`: this server
                    // answers at once, as an API that does not wait would).
                    let method = parts.next().unwrap();
                    let target = parts.next().unwrap();
                    let full = format!("{method} {target}");
                    let route = if me.routes.lock().contains_key(&full) {
                        full
                    } else {
                        format!("{method} {}", target.split('?').next().unwrap_or_default())
                    };
                    me.seen.lock().push(route.clone());
                    let (status, body) = {
                        let mut routes = me.routes.lock();
                        match routes.get_mut(&route) {
                            Some(replies) if replies.len() > 1 => replies.remove(0),
                            Some(replies) => replies[0].clone(),
                            None => (404, json!({"code": "not_found", "message": format!("no route {route}")}).to_string()),
                        }
                    };
                    if status == HANG_UP {
                        return;
                    }
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        url
    }
}

async fn wharf(url: &str, args: &[&str]) -> Result<(), CliError> {
    let cli = crate::args::tests::parse(args).unwrap();
    let url = url.to_string();
    execute_with(cli.cmd, &cli.global, &move || {
        Ok(Client::new(url.clone(), "tok"))
    })
    .await
}

fn deployment(state: &str, updated: u32, ready: u32, error: Option<&str>) -> serde_json::Value {
    json!({
        "id": "d1", "stack": "shop", "revision": 2, "state": state,
        "message": error.map(|_| "1 service failed"),
        "services": [{"service": "web", "desired": 2, "updated": updated, "ready": ready, "error": error}],
        "created_at": 1, "updated_at": 2
    })
}

fn services() -> serde_json::Value {
    let s = |stack: &str, name: &str| {
        json!({"stack": stack, "name": name, "image": "i", "mode": "replicated", "replicas": 1,
               "running": 1, "healthy": 0, "ports": [], "updated_at": 0})
    };
    json!([s("shop", "web"), s("shop", "worker"), s("blog", "web")])
}

/// `wharf service scale worker=…` starts deployment d1.
fn scaling_worker() -> Canned {
    Canned::default()
        .on("GET /v1/services", 200, services())
        .on(
            "POST /v1/services/shop/worker/scale",
            200,
            json!({"deployment_id": "d1"}),
        )
}

#[tokio::test]
async fn scale_follows_the_deployment_to_success() {
    let server = scaling_worker().deployment_d1(vec![
        deployment("in_progress", 1, 0, None),
        deployment("in_progress", 2, 1, None),
        deployment("succeeded", 2, 2, None),
    ]);
    let url = server.start().await;
    wharf(&url, &["service", "scale", "worker=2"])
        .await
        .unwrap();
    assert_eq!(
        server.times("GET /v1/deployments/d1"),
        3,
        "{:?}",
        server.seen()
    );
}

#[tokio::test]
async fn a_failed_deployment_exits_1_with_the_service_errors() {
    let server = Canned::default()
        .on("GET /v1/services", 200, services())
        .on(
            "POST /v1/services/shop/worker/restart",
            200,
            json!({"deployment_id": "d1"}),
        )
        .deployment_d1(vec![deployment("failed", 2, 0, Some("image not found"))]);
    let url = server.start().await;
    let e = wharf(&url, &["service", "restart", "shop/worker"])
        .await
        .unwrap_err();
    assert_eq!(e.exit_status(), 1);
    let lines = e.render();
    assert_eq!(
        lines[0],
        "error: deployment d1 of stack shop failed: 1 service failed"
    );
    assert_eq!(lines[1], "  web: image not found");
}

#[tokio::test]
async fn following_times_out_naming_what_is_pending() {
    let server = scaling_worker().deployment_d1(vec![deployment("in_progress", 1, 0, None)]);
    let url = server.start().await;
    let e = wharf(
        &url,
        &["service", "scale", "worker=2", "--timeout", "600ms"],
    )
    .await
    .unwrap_err();
    assert_eq!(e.exit_status(), 1);
    let lines = e.render();
    assert!(
        lines[0].starts_with("error: timed out after 0.6s"),
        "{lines:?}"
    );
    assert_eq!(lines[1], "  still pending: web: 1/2 updated, 0/2 ready");
}

#[tokio::test]
async fn following_rides_out_a_lost_api_and_ends_with_the_real_outcome() {
    // The master goes away mid-deploy (connections dropped, then 503 while it starts), then
    // answers again: the follower keeps going and reports how the deployment ended.
    let mut server = scaling_worker().deployment_d1(vec![deployment("in_progress", 1, 0, None)]);
    for _ in 0..2 {
        server = server.on("GET /v1/deployments/d1", HANG_UP, json!(null));
    }
    for status in [503, 500] {
        server = server.on(
            "GET /v1/deployments/d1",
            status,
            json!({"code": "unavailable", "message": "starting"}),
        );
    }
    let server = server.deployment_d1(vec![deployment("failed", 2, 1, Some("exit code 3"))]);
    let url = server.start().await;
    let e = wharf(&url, &["service", "scale", "worker=2"])
        .await
        .expect_err("the deployment failed, and the follower must say so");
    assert_eq!(e.exit_status(), 1);
    assert_eq!(
        e.render()[0],
        "error: deployment d1 of stack shop failed: 1 service failed"
    );
    let polls = server.times("GET /v1/deployments/d1");
    assert_eq!(polls, 6, "{:?}", server.seen());
}

/// Removing stack shop (`--volumes` or not) is accepted; it is there, without instances, until
/// the next replies to `GET /v1/stacks/shop` say otherwise.
fn removing_shop(volumes: bool) -> Canned {
    let stack = json!({
        "summary": {"name": "shop", "revision": 1, "services": 1, "instances_desired": 0,
                    "instances_running": 1, "updated_at": 0},
        "spec": {"name": "shop"}
    });
    Canned::default()
        .on(
            &format!("DELETE /v1/stacks/shop?volumes={volumes}"),
            200,
            json!({"deployment_id": null}),
        )
        .on("GET /v1/stacks/shop", 200, stack)
        .on("GET /v1/stacks/shop/instances", 200, json!([]))
}

/// The API's 404 for stack shop.
fn no_stack_shop() -> serde_json::Value {
    json!({"code": "not_found", "message": "no stack named shop"})
}

#[tokio::test]
async fn stack_rm_rides_out_a_lost_api() {
    let server = removing_shop(false)
        .on("GET /v1/stacks/shop", HANG_UP, json!(null))
        .on("GET /v1/stacks/shop", HANG_UP, json!(null))
        .on(
            "GET /v1/stacks/shop",
            502,
            json!({"code": "bad_gateway", "message": "restarting"}),
        )
        .on("GET /v1/stacks/shop", 404, no_stack_shop());
    let url = server.start().await;
    wharf(&url, &["stack", "rm", "shop"]).await.unwrap();
    let polls = server.times("GET /v1/stacks/shop");
    assert_eq!(polls, 5, "{:?}", server.seen());
}

#[tokio::test]
async fn ambiguous_and_unknown_services_are_bad_input_without_calls() {
    let server = Canned::default().on("GET /v1/services", 200, services());
    let url = server.start().await;
    let e = wharf(&url, &["service", "restart", "web"])
        .await
        .unwrap_err();
    assert_eq!(e.exit_status(), 2);
    assert!(e.render()[1].contains("blog/web, shop/web"));
    let e = wharf(&url, &["service", "scale", "worker=1", "wbe=2"])
        .await
        .unwrap_err();
    assert_eq!(e.exit_status(), 2);
    assert!(
        server.seen().iter().all(|r| r == "GET /v1/services"),
        "{:?}",
        server.seen()
    );
}

#[tokio::test]
async fn api_errors_map_to_exit_codes() {
    let server = Canned::default()
        .on(
            "GET /v1/stacks/nope/instances",
            404,
            json!({"code": "not_found", "message": "no stack named nope"}),
        )
        .on(
            "GET /v1/stacks",
            500,
            json!({"code": "internal", "message": "store is down"}),
        )
        .on(
            "GET /v1/nodes",
            401,
            json!({"code": "unauthorized", "message": "bad token"}),
        );
    let url = server.start().await;
    let e = wharf(&url, &["stack", "ps", "nope"]).await.unwrap_err();
    assert_eq!(
        (e.exit_status(), e.to_string().as_str()),
        (2, "no stack named nope")
    );
    let e = wharf(&url, &["stack", "ls"]).await.unwrap_err();
    assert_eq!(e.exit_status(), 1);
    let e = wharf(&url, &["node", "ls", "-o", "json"])
        .await
        .unwrap_err();
    assert_eq!(e.exit_status(), 1);
    assert!(e.render()[1].contains("token"));
}

#[tokio::test]
async fn stack_rm_waits_until_the_stack_is_gone() {
    let server = removing_shop(true).on("GET /v1/stacks/shop", 404, no_stack_shop());
    let url = server.start().await;
    wharf(&url, &["stack", "rm", "shop", "--volumes"])
        .await
        .unwrap();
    assert_eq!(server.times("GET /v1/stacks/shop"), 2);
}

#[tokio::test]
async fn version_reports_an_unreachable_server_as_failure() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let e = wharf(&url, &["version"]).await.unwrap_err();
    assert_eq!(e.exit_status(), 1);
    assert!(e.to_string().starts_with("cannot reach the wharf API at "));
}

fn stack_file(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wharf-cli-flow-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("stack.yml");
    std::fs::write(&path, "services:\n  web:\n    image: nginx:1.27\n").unwrap();
    path
}

fn deploy_reply(id: Option<&str>, kind: &str) -> serde_json::Value {
    json!({"deployment_id": id, "revision": 2,
           "diff": {"stack": "shop", "services": [{"service": "web", "kind": kind, "details": []}]}})
}

#[tokio::test]
async fn deploy_file_puts_the_stack_and_follows_it() {
    let server = Canned::default()
        .on(
            "PUT /v1/stacks/shop",
            200,
            deploy_reply(Some("d1"), "create"),
        )
        .deployment_d1(vec![
            deployment("in_progress", 0, 0, None),
            deployment("succeeded", 2, 2, None),
        ]);
    let url = server.start().await;
    let file = stack_file("deploy");
    let client = Client::new(url, "tok");
    let arg = crate::FileArg {
        file: vec![file.clone()],
        ..crate::FileArg::default()
    };
    crate::deploy_file(
        &client,
        &arg,
        Some("shop".into()),
        &crate::DeployOpts::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        server.seen(),
        vec![
            "PUT /v1/stacks/shop",
            "GET /v1/deployments/d1",
            "GET /v1/deployments/d1"
        ]
    );
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn deploy_without_changes_does_not_follow() {
    let server = Canned::default().on("PUT /v1/stacks/shop", 200, deploy_reply(None, "unchanged"));
    let url = server.start().await;
    let file = stack_file("nochange");
    let path = file.to_str().unwrap();
    wharf(
        &url,
        &[
            "stack", "deploy", "-c", path, "--name", "shop", "-o", "json",
        ],
    )
    .await
    .unwrap();
    assert_eq!(server.seen(), vec!["PUT /v1/stacks/shop"]);
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn invalid_files_are_bad_input_and_never_sent() {
    let server = Canned::default();
    let url = server.start().await;
    let file = stack_file("invalid");
    std::fs::write(&file, "services:\n  web: {}\n").unwrap();
    let path = file.to_str().unwrap();
    let e = wharf(&url, &["stack", "deploy", "-c", path, "--name", "shop"])
        .await
        .unwrap_err();
    assert_eq!(e.exit_status(), 2, "{e}");
    assert!(server.seen().is_empty());
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}
