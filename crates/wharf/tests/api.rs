//! Acceptance check 9: the API is closed without a token, refuses bad bodies with `ApiError`s and
//! the right 4xx, never answers 5xx to garbage, and the token never shows up in logs or output.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

fn token(w: &Wharf) -> String {
    let text = std::fs::read_to_string(w.config_dir().join("context.json")).expect("context file");
    let v: Value = serde_json::from_str(&text).expect("context is JSON");
    let t = v["token"]
        .as_str()
        .expect("context has a token")
        .to_string();
    assert!(
        t.len() >= 16,
        "the token is suspiciously short: {} chars",
        t.len()
    );
    t
}

/// Every (METHOD, path) of the OpenAPI document that needs a token (all but those documented with
/// an empty security requirement: the login and /healthz), path parameters replaced by dummy
/// values.
async fn endpoints(w: &Wharf, token: &str) -> Vec<(reqwest::Method, String)> {
    let resp = http()
        .get(format!("{}/v1/openapi.json", w.url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /v1/openapi.json");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "GET /v1/openapi.json with the token"
    );
    let doc: Value = resp.json().await.expect("the OpenAPI document is JSON");
    let paths = doc["paths"].as_object().expect("the document has paths");
    let mut out = Vec::new();
    for (path, item) in paths {
        let concrete = fill_params(path);
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            let public = item
                .get(method)
                .and_then(|op| op["security"].as_array())
                .is_some_and(|reqs| {
                    reqs.iter()
                        .any(|r| r.as_object().is_some_and(|o| o.is_empty()))
                });
            if public {
                // A hook's push is authenticated by its signature, not a token: without one it
                // is refused all the same (401), which `tests/hooks.rs` shows with a forged one.
                assert!(
                    matches!(
                        (method, path.as_str()),
                        ("post", "/v1/login") | ("get", "/healthz") | ("post", "/v1/hooks/{id}")
                    ),
                    "only the login, the liveness check and hooks' signed pushes are open, not {method} {path}"
                );
                continue;
            }
            if item.get(method).is_some() {
                let m =
                    reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
                out.push((m, concrete.clone()));
            }
        }
    }
    out
}

/// `/v1/services/{stack}/{service}` → `/v1/services/dummy-stack/dummy-service`.
fn fill_params(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let j = rest[i..].find('}').map(|j| i + j).expect("closing brace");
        out.push_str(&format!("dummy-{}", &rest[i + 1..j]));
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    out
}

/// Acceptance check 9a: every endpoint of the OpenAPI document answers 401 without a token and with
/// a wrong one (429 once the address has failed too often); `/healthz` is open.
#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_needs_the_token() {
    let w = Wharf::start().await;
    let token = token(&w);
    let eps = endpoints(&w, &token).await;
    assert!(
        eps.len() >= 15,
        "the OpenAPI document lists only {} endpoints: {eps:?}",
        eps.len()
    );
    let c = http();
    let mut fails = Vec::new();
    for (method, path) in &eps {
        let url = format!("{}{path}", w.url());
        for (what, auth) in [
            ("no token", None),
            ("a wrong token", Some("Bearer wrong-token-0123456789")),
            ("an empty bearer", Some("Bearer ")),
            ("the token without Bearer", Some(token.as_str())),
        ] {
            let mut req = c.request(method.clone(), &url);
            if let Some(a) = auth {
                req = req.header("Authorization", a);
            }
            if *method == reqwest::Method::PUT || *method == reqwest::Method::POST {
                req = req.header("Content-Type", "application/json").body("{}");
            }
            // Refused: 401, or 429 once this address has spent its budget of failures.
            let refused = [
                (StatusCode::UNAUTHORIZED, "unauthorized"),
                (StatusCode::TOO_MANY_REQUESTS, "too_many_failures"),
            ];
            match req.send().await {
                Ok(r) if refused.iter().any(|(s, _)| *s == r.status()) => {
                    let code = refused.iter().find(|(s, _)| *s == r.status()).unwrap().1;
                    let body = r.text().await.unwrap_or_default();
                    let v: Option<Value> = serde_json::from_str(&body).ok();
                    if v.as_ref().and_then(|v| v["code"].as_str()) != Some(code) {
                        fails.push(format!(
                            "{method} {path} with {what}: refused but not an ApiError: {body}"
                        ));
                    }
                }
                Ok(r) => fails.push(format!(
                    "{method} {path} with {what}: {} (expected 401)",
                    r.status()
                )),
                Err(e) => fails.push(format!("{method} {path} with {what}: {e}")),
            }
        }
    }
    assert!(
        fails.is_empty(),
        "endpoints open without a valid token:\n{}",
        fails.join("\n")
    );

    let r = c
        .get(format!("{}/healthz", w.url()))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(r.status(), StatusCode::OK, "/healthz without a token");
    // The token does open the door (so the 401s above are about the token, not the routes).
    let r = c
        .get(format!("{}/v1/stacks", w.url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET /v1/stacks");
    assert_eq!(r.status(), StatusCode::OK, "GET /v1/stacks with the token");
}

/// Send `body` to PUT /v1/stacks/x; return (status, ApiError JSON or the raw body as an error).
async fn put_stack(
    w: &Wharf,
    token: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Result<Value, String>) {
    let r = http()
        .put(format!("{}/v1/stacks/x", w.url()))
        .bearer_auth(token)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .expect("PUT /v1/stacks/x");
    let status = r.status();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = r.text().await.unwrap_or_default();
    let parsed = serde_json::from_str::<Value>(&text).ok().filter(|v| {
        v["code"].is_string() && v["message"].is_string() && ct.starts_with("application/json")
    });
    (
        status,
        parsed.ok_or(format!("not a JSON ApiError (content-type {ct:?}): {text}")),
    )
}

/// Acceptance check 9b: malformed, wrong-typed, oversized and mistyped bodies get 4xx `ApiError`s
/// (400/422, 413, 415) and change nothing.
#[tokio::test(flavor = "multi_thread")]
async fn bad_bodies_are_refused_with_api_errors() {
    let w = Wharf::start().await;
    let token = token(&w);
    let mut fails = Vec::new();

    let cases: Vec<(&str, &str, Vec<u8>, Option<StatusCode>)> = vec![
        (
            "malformed JSON",
            "application/json",
            b"{\"spec\": {".to_vec(),
            None,
        ),
        (
            "not JSON at all",
            "application/json",
            b"hello".to_vec(),
            None,
        ),
        (
            "wrong-typed JSON",
            "application/json",
            br#"{"spec": {"name": 5, "services": "many"}}"#.to_vec(),
            None,
        ),
        (
            "a JSON array",
            "application/json",
            b"[1,2,3]".to_vec(),
            None,
        ),
        (
            "3 MiB body",
            "application/json",
            big_body(3 * 1024 * 1024),
            Some(StatusCode::PAYLOAD_TOO_LARGE),
        ),
        (
            "wrong content type",
            "text/plain",
            br#"{"spec": {"name": "x", "services": {}}}"#.to_vec(),
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ),
    ];
    for (what, ct, body, expect) in cases {
        let (status, err) = put_stack(&w, &token, ct, body).await;
        let status_ok = match expect {
            Some(s) => status == s,
            None => status.is_client_error(),
        };
        if !status_ok {
            fails.push(format!(
                "{what}: status {status}, expected {}",
                expect.map_or("4xx".to_string(), |s| s.to_string())
            ));
        }
        if let Err(e) = err {
            fails.push(format!("{what}: {e}"));
        }
    }
    assert!(fails.is_empty(), "bad bodies:\n{}", fails.join("\n"));
    let stacks = w.client.list_stacks().await.expect("list stacks");
    assert!(
        stacks.is_empty(),
        "a bad body changed something: {stacks:?}"
    );
    let r = http()
        .get(format!("{}/healthz", w.url()))
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "wharf still answers after the bad bodies"
    );
}

/// A syntactically valid JSON document of `n` bytes (a long string inside a spec).
fn big_body(n: usize) -> Vec<u8> {
    let prefix = br#"{"spec": {"name": "x", "services": {}, "padding": ""#;
    let suffix = br#""}}"#;
    let mut b = Vec::with_capacity(n);
    b.extend_from_slice(prefix);
    b.resize(n - suffix.len(), b'a');
    b.extend_from_slice(suffix);
    b
}

/// Acceptance check 9c: garbage in path parameters and queries never gets a 5xx (or a panic).
#[tokio::test(flavor = "multi_thread")]
async fn garbage_path_params_never_get_a_5xx() {
    let w = Wharf::start().await;
    let token = token(&w);
    let long = "a".repeat(10_000);
    let paths = vec![
        ("GET", "/v1/services/%00/x".to_string()),
        ("GET", "/v1/services/%00/x/instances".to_string()),
        ("GET", "/v1/services/%FF%FE/x".to_string()),
        ("GET", "/v1/services/x/%00/logs".to_string()),
        ("GET", "/v1/services/x/y/logs?tail=-1".to_string()),
        ("GET", "/v1/services/x/y/logs?follow=maybe".to_string()),
        ("GET", "/v1/stacks/%00".to_string()),
        ("GET", "/v1/stacks/%FF".to_string()),
        ("GET", "/v1/stacks/..%2F..%2Fetc".to_string()),
        ("GET", "/v1/stacks/%2F%2F/instances".to_string()),
        ("GET", format!("/v1/stacks/{long}")),
        ("DELETE", "/v1/stacks/%00?volumes=notabool".to_string()),
        ("DELETE", "/v1/stacks/%E2%80%AE".to_string()),
        ("GET", "/v1/deployments/%00".to_string()),
        ("GET", "/v1/deployments/%25".to_string()),
        ("GET", "/v1/services?stack=%00".to_string()),
        ("POST", "/v1/services/%00/x/restart".to_string()),
        ("POST", "/v1/services/%00/x/scale".to_string()),
        ("PUT", "/v1/stacks/%00".to_string()),
        ("POST", "/v1/stacks/%00/diff".to_string()),
        ("GET", "/v1/%00".to_string()),
        ("GET", "/v1/stacks/a/b/c/d/e".to_string()),
    ];
    let c = http();
    let mut fails = Vec::new();
    for (method, path) in &paths {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = c
            .request(m, format!("{}{path}", w.url()))
            .bearer_auth(&token);
        if *method == "PUT" || *method == "POST" {
            let body = if path.ends_with("/scale") {
                r#"{"replicas": 2}"#.to_string()
            } else {
                r#"{"spec": {"name": "\u0000", "services": {}}}"#.to_string()
            };
            req = req.header("Content-Type", "application/json").body(body);
        }
        let shown = if path.len() > 80 {
            format!("{}…", &path[..80])
        } else {
            path.clone()
        };
        match req.send().await {
            Ok(r) if r.status().is_server_error() => {
                let s = r.status();
                fails.push(format!(
                    "{method} {shown}: {s}: {}",
                    r.text().await.unwrap_or_default()
                ));
            }
            Ok(_) => {}
            Err(e) => fails.push(format!("{method} {shown}: {e}")),
        }
    }
    let r = c.get(format!("{}/healthz", w.url())).send().await;
    if !r.as_ref().is_ok_and(|r| r.status() == StatusCode::OK) {
        fails.push(format!("/healthz after the garbage: {r:?}"));
    }
    let log = w.log();
    if log.contains("panicked") {
        fails.push("the log shows a panic".to_string());
    }
    assert!(
        fails.is_empty(),
        "garbage requests got 5xx or broke wharf:\n{}\n--- wharf up log (tail) ---\n{}",
        fails.join("\n"),
        tail(&log, 40)
    );
    assert!(
        w.client
            .list_stacks()
            .await
            .expect("list stacks")
            .is_empty(),
        "garbage created a stack"
    );
}

/// Acceptance check 9d: with debug logging, authenticated and unauthenticated requests and a deploy
/// never write the token to the log or to any command's output; the context file is 0600.
#[tokio::test(flavor = "multi_thread")]
async fn the_token_never_shows_up_in_logs_or_output() {
    use std::os::unix::fs::PermissionsExt;
    testapp_image().await.expect("test image");
    let mut w = Wharf::start_with_env(vec![("WHARF_LOG".into(), "debug".into())]).await;
    let token = token(&w);
    let c = http();
    // A near-miss token: a log line about it would show most of the real one.
    let wrong = format!("{}x", &token[..token.len() - 1]);
    for path in ["/v1/stacks", "/v1/nodes", "/v1/version", "/v1/audit"] {
        let url = format!("{}{path}", w.url());
        for (bearer, want, with) in [
            (Some(&token), StatusCode::OK, "the token"),
            (None, StatusCode::UNAUTHORIZED, "no token"),
            (Some(&wrong), StatusCode::UNAUTHORIZED, "a wrong token"),
        ] {
            let mut req = c.get(&url);
            if let Some(t) = bearer {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.expect("request");
            assert_eq!(r.status(), want, "GET {path} with {with}");
        }
    }
    let stack = unique_stack("token");
    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 1, HEALTHCHECK));
    let (dep_out, dep_err) = w.deploy(&file, 0);

    let mut outputs = vec![(
        "wharf stack deploy".to_string(),
        format!("{dep_out}{dep_err}"),
    )];
    for args in [
        vec!["context"],
        vec!["-o", "json", "context"],
        vec!["version"],
        vec!["stack", "ls"],
        vec!["stack", "ps", stack.as_str()],
        vec!["node", "ls"],
    ] {
        let out = w.cli(&args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "wharf {} failed:\n{text}",
            args.join(" ")
        );
        outputs.push((format!("wharf {}", args.join(" ")), text));
    }
    let log = w.log();
    assert!(
        log.contains("request") && log.contains("DEBUG"),
        "WHARF_LOG=debug did not reach wharf up (no debug request lines); log tail:\n{}",
        tail(&log, 20)
    );
    assert!(
        !log.contains(&token),
        "the token appears in the wharf up log"
    );
    // Nor a large piece of it (e.g. a truncated or prefixed form).
    let piece = &token[..token.len() / 2];
    assert!(
        !log.contains(piece),
        "half of the token appears in the wharf up log"
    );
    for (cmd, text) in &outputs {
        assert!(
            !text.contains(piece),
            "the token appears in the output of `{cmd}`:\n{text}"
        );
    }
    let mode = std::fs::metadata(w.config_dir().join("context.json"))
        .expect("context file")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "context file mode is {:o}",
        mode & 0o777
    );
}
