//! `/git/STACK.git/…`: smart HTTP for git (`git push wharf main`), served by `git http-backend`
//! as a CGI program, behind Basic authentication with a Wharf token (as the registry's: any user
//! name, the token as the password). A push needs `deploy` on the stack, a fetch `read`. The
//! token goes to the repository's `pre-receive` hook (`WHARF_TOKEN`), so the build, the
//! registry push and the deploy it makes are the pusher's, with the pusher's rights, audited as
//! the pusher. See `crate::git`.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::git::{cgi_head, ensure_repo, route};
use crate::policy::{self, Caller};
use crate::{Master, now_ms};

pub fn routes() -> Router<Master> {
    Router::new().route("/git/{*path}", any(serve))
}

fn plain(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain")],
        format!("{}\n", message.into()),
    )
        .into_response()
}

fn challenge(message: &str) -> Response {
    let mut r = plain(StatusCode::UNAUTHORIZED, message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"wharf\""),
    );
    r
}

/// The caller and the token it sent (Basic: the token is the password).
async fn caller(m: &Master, req: &Parts) -> Result<(Caller, String), Response> {
    let basic = req
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|d| String::from_utf8(d).ok());
    let Some(secret) = basic.and_then(|b| b.split_once(':').map(|(_, p)| p.to_string())) else {
        return Err(challenge("a Wharf token is needed (as the password)"));
    };
    match m.authenticate(&secret).await {
        Ok(Ok(c)) => Ok((c, secret)),
        Ok(Err(_)) => {
            let source = req
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip());
            if let Some(ip) = source
                && !m.auth_failures.spend(ip, std::time::Instant::now())
            {
                return Err(plain(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed authentications",
                ));
            }
            Err(challenge(
                "the token is not valid (git push needs a token, not a user's password: wharf token create)",
            ))
        }
        Err(e) => Err(plain(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
    }
}

async fn serve(State(m): State<Master>, req: Request) -> Response {
    let Some(git) = m.config.git.clone() else {
        return plain(
            StatusCode::NOT_FOUND,
            "this master serves no git repositories",
        );
    };
    let query = req.uri().query().unwrap_or("").to_string();
    let Some((stack, backend_path, push)) = route(req.uri().path(), &query) else {
        return plain(
            StatusCode::NOT_FOUND,
            "not a smart-HTTP git path: use https://MASTER/git/STACK.git",
        );
    };
    if let Err(e) = wharf_compose::validate_stack_name(&stack) {
        return plain(
            StatusCode::NOT_FOUND,
            format!("{stack:?} is not a stack name: {e}"),
        );
    }
    // Nothing borrowed from the request across an await: its body is not `Sync`.
    let mut actor = super::actor_of(&req, &Caller::admin(""));
    let (parts, body) = req.into_parts();
    let (caller, token) = match caller(&m, &parts).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let op_path = if push {
        "/git/{stack}.git/git-receive-pack"
    } else {
        "/git/{stack}.git/git-upload-pack"
    };
    let Some(op) = policy::operation("POST", op_path) else {
        return plain(StatusCode::FORBIDDEN, "no policy for git");
    };
    (actor.name, actor.role) = (caller.name.clone(), Some(caller.role));
    if let Err(denied) = policy::decide(&caller, op, Some(&stack)) {
        let action = if push { "git push" } else { "git fetch" };
        if let Err(e) = m.audit_denied(&actor, action, &stack, now_ms()).await {
            tracing::warn!(error = %e, "could not audit a refused request");
        }
        return plain(
            StatusCode::FORBIDDEN,
            format!("{}\nhint: {}", denied.message, denied.hint),
        );
    }
    let repo = if push {
        ensure_repo(&git, &stack).await
    } else {
        let r = crate::git::repo_path(&git, &stack);
        if r.join("HEAD").exists() {
            Ok(r)
        } else {
            return plain(
                StatusCode::NOT_FOUND,
                format!("stack {stack} has no repository yet: push to it first"),
            );
        }
    };
    if let Err(e) = repo {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot make the repository: {e}"),
        );
    }
    // An HTTPS API (beyond loopback) presents a certificate of the cluster CA: the hook pins it.
    let ca = match git.api_url.starts_with("https://") {
        true => match m.cluster_ca().await {
            Ok((ca, _)) => Some(ca.fingerprint()),
            Err(e) => return plain(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        false => None,
    };
    let who = (stack.as_str(), caller.name.as_str(), token.as_str(), ca);
    backend(&git, (&parts, body), &backend_path, &query, who).await
}

/// Run `git http-backend` for `req`: the request body to its input, its answer streamed back.
async fn backend(
    git: &crate::git::GitConfig,
    (req, body): (&Parts, Body),
    path: &str,
    query: &str,
    (stack, pusher, token, ca): (&str, &str, &str, Option<String>),
) -> Response {
    let h = |n: header::HeaderName| {
        req.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &git.dir)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", req.method.as_str())
        .env("CONTENT_TYPE", h(header::CONTENT_TYPE))
        .env("HTTP_CONTENT_ENCODING", h(header::CONTENT_ENCODING))
        .env(
            "GIT_PROTOCOL",
            req.headers
                .get("git-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        )
        .env("REMOTE_USER", pusher)
        .env("REMOTE_ADDR", "127.0.0.1")
        // For the hook: who pushes, with what right, to which stack, through which API.
        .env("WHARF_URL", &git.api_url)
        .env("WHARF_TOKEN", token)
        .env("WHARF_GIT_STACK", stack)
        .env("WHARF_GIT_PUSHER", pusher)
        .env("WHARF_CA_FINGERPRINT", ca.unwrap_or_default())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot run git http-backend: {e} (is git installed?)"),
            );
        }
    };
    let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "git http-backend has no pipes",
        );
    };
    let mut body = body.into_data_stream();
    tokio::spawn(async move {
        while let Some(Ok(chunk)) = body.next().await {
            if stdin.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = stdin.shutdown().await;
    });
    // The head, then the rest as it comes (a push's progress arrives while the hook runs).
    let mut buf = Vec::new();
    let head = loop {
        let mut chunk = vec![0u8; 16 * 1024];
        match stdout.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                return plain(StatusCode::BAD_GATEWAY, "git http-backend answered nothing");
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(head) = cgi_head(&buf) {
            break head;
        }
        if buf.len() > 64 * 1024 {
            return plain(
                StatusCode::BAD_GATEWAY,
                "git http-backend's answer has no end of headers",
            );
        }
    };
    let first = Bytes::copy_from_slice(&buf[head.body_at..]);
    let rest = futures::stream::unfold((stdout, child), |(mut out, child)| async move {
        let mut chunk = vec![0u8; 16 * 1024];
        match out.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                chunk.truncate(n);
                Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), (out, child)))
            }
        }
    });
    let stream = futures::stream::once(async move { Ok(first) }).chain(rest);
    let mut r = Response::new(Body::from_stream(stream));
    *r.status_mut() = StatusCode::from_u16(head.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in head.headers {
        if let (Ok(k), Ok(v)) = (header::HeaderName::try_from(k), HeaderValue::from_str(&v)) {
            r.headers_mut().insert(k, v);
        }
    }
    r
}
