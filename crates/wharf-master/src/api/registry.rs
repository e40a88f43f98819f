//! The registry's HTTP side (`/v2/`, the OCI Distribution API) on the API's listener: Docker's
//! Basic authentication (password = a Wharf token, or a user's name and password), every route
//! decided against `policy::OPERATIONS` with the repository's stack as the `{stack}`, errors in
//! the spec's `{"errors": [...]}` form, and blob bodies streamed both ways. Parsing is
//! `registry::path`/`range`/`manifest`; the content is `registry::blobs`; metadata and audit
//! records go through `Master` (`registry/mod.rs`).

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use wharf_types::Role;

use crate::mutate::Actor;
use crate::policy::{self, Caller, Operation, Permission};
use crate::registry::blobs::FinishError;
use crate::registry::manifest::{self, MAX_MANIFEST};
use crate::registry::path::{Digest, Reference, Route, stack_of, valid_name};
use crate::registry::{ManifestRecord, Registry, range};
use crate::{Error, Master, now_ms};

/// The routes: every path under `/v2`, parsed by `Route::parse`.
pub fn routes() -> Router<Master> {
    Router::new()
        .route("/v2", any(serve))
        .route("/v2/", any(serve))
        .route("/v2/{*path}", any(serve))
}

const API_VERSION: &str = "registry/2.0";

/// An error in the spec's form; `hint` goes in `detail`.
fn oci(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body =
        serde_json::json!({"errors": [{"code": code, "message": message.into(), "detail": null}]});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn oci_hint(status: StatusCode, code: &str, message: impl Into<String>, hint: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message.into(), "detail": {"hint": hint}}]});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn challenge(message: &str) -> Response {
    let mut r = oci_hint(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        message,
        "`docker login HOST:PORT` with a Wharf token as the password (`wharf token create`), or a user's name and password",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"wharf\""),
    );
    r
}

fn failed(e: Error) -> Response {
    let f = super::ApiFailure::from(e);
    let code = match f.0 {
        StatusCode::NOT_FOUND => "NAME_UNKNOWN",
        StatusCode::SERVICE_UNAVAILABLE => "UNAVAILABLE",
        _ => "UNKNOWN",
    };
    oci(f.0, code, f.1.message)
}

fn io_failed(what: &str, e: std::io::Error) -> Response {
    tracing::warn!(error = %e, "registry: {what}");
    oci(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        format!("{what}: {e}"),
    )
}

/// One request: route, authenticate, authorise, then the operation.
async fn serve(State(m): State<Master>, req: Request) -> Response {
    let mut resp = route(m, req).await;
    resp.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    resp
}

async fn route(m: Master, req: Request) -> Response {
    let Some(reg) = m.registry.clone() else {
        return oci_hint(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            "this master serves no registry",
            "start it with a data directory",
        );
    };
    let raw = req.uri().path().replace("%3A", ":").replace("%3a", ":");
    let path = raw
        .strip_prefix("/v2")
        .unwrap_or("")
        .trim_start_matches('/');
    let route = match Route::parse(path) {
        Ok(r) => r,
        Err((code, message)) => {
            let status = match code {
                "NOT_FOUND" | "BLOB_UPLOAD_UNKNOWN" => StatusCode::NOT_FOUND,
                _ => StatusCode::BAD_REQUEST,
            };
            return oci(status, code, message);
        }
    };
    let method = req.method().as_str().to_string();
    let Some(op) = policy::operation(&method, route.pattern()) else {
        return oci(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("{method} is not an operation of {}", route.pattern()),
        );
    };
    // Nothing borrowed from the request across an await: its body is not `Sync`.
    let mut actor = super::actor_of(&req, &Caller::admin(""));
    let (parts, body) = req.into_parts();
    let caller = match authenticate(&m, &reg, &parts, op).await {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    (actor.name, actor.role) = (caller.name.clone(), Some(caller.role));
    if let Err(denied) = policy::decide(&caller, op, route.name().map(stack_of)) {
        if caller.name == ANONYMOUS {
            return challenge("credentials are needed for this");
        }
        let target = route.name().unwrap_or("registry").to_string();
        let action = format!("{method} {}", route.pattern());
        if let Err(e) = m.audit_denied(&actor, &action, &target, now_ms()).await {
            tracing::warn!(error = %e, "could not audit a refused request");
        }
        return oci_hint(
            StatusCode::FORBIDDEN,
            "DENIED",
            denied.message,
            &denied.hint,
        );
    }
    let cx = Cx {
        m,
        reg,
        caller,
        actor,
    };
    dispatch(cx, route, parts, body).await
}

/// The caller's name when pulls need no credentials and none were sent.
const ANONYMOUS: &str = "anonymous";

/// The caller of `req`: Basic (password = a token, else a user's password) or Bearer; none
/// sent is an anonymous viewer for pulls when the registry allows them, else a challenge.
async fn authenticate(
    m: &Master,
    reg: &Registry,
    req: &Parts,
    op: &Operation,
) -> Result<Caller, Response> {
    let source = req
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let auth = req
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let Some(auth) = auth else {
        if reg.anonymous_pull && op.needs == Some(Permission::Read) {
            let mut c = Caller::admin(ANONYMOUS);
            c.role = Role::Viewer;
            return Ok(c);
        }
        return Err(challenge("credentials are needed"));
    };
    let (user, secret) = if let Some(b) = auth.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .unwrap_or_default();
        match decoded.split_once(':') {
            Some((u, p)) => (u.to_string(), p.to_string()),
            None => (String::new(), String::new()),
        }
    } else if let Some(t) = auth.strip_prefix("Bearer ") {
        (String::new(), t.trim().to_string())
    } else {
        (String::new(), String::new())
    };
    let found = match m.authenticate(&secret).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(_)) if !user.is_empty() => match m.password_caller(&user, &secret).await {
            Ok(c) => c,
            Err(e) => return Err(failed(e)),
        },
        Ok(Err(_)) => None,
        Err(e) => return Err(failed(e)),
    };
    match found {
        Some(c) => Ok(c),
        None => {
            if let Some(ip) = source
                && !m.auth_failures.spend(ip, std::time::Instant::now())
            {
                return Err(oci(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TOOMANYREQUESTS",
                    format!("too many failed authentications from {ip}"),
                ));
            }
            Err(challenge(
                "the token, or user name and password, are not valid",
            ))
        }
    }
}

/// What every operation needs.
struct Cx {
    m: Master,
    reg: Arc<Registry>,
    caller: Caller,
    actor: Actor,
}

async fn dispatch(cx: Cx, route: Route, req: Parts, body: Body) -> Response {
    let method = req.method.clone();
    let query = Query::of(&req);
    match (method, route) {
        (_, Route::Base) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response(),
        (_, Route::Catalog) => catalog(&cx, &query).await,
        (_, Route::Tags { name }) => tags(&cx, &name, &query).await,
        (Method::PUT, Route::Manifest { name, reference }) => {
            put_manifest(&cx, &name, reference, &req, body).await
        }
        (Method::DELETE, Route::Manifest { name, reference }) => {
            delete_manifest(&cx, &name, reference).await
        }
        (m, Route::Manifest { name, reference }) => {
            get_manifest(&cx, &name, reference, &req.headers, m == Method::HEAD).await
        }
        (Method::DELETE, Route::Blob { name, digest }) => {
            match cx.m.registry_unlink_blob(&cx.actor, &name, &digest).await {
                Ok(true) => StatusCode::ACCEPTED.into_response(),
                Ok(false) => oci(
                    StatusCode::NOT_FOUND,
                    "BLOB_UNKNOWN",
                    format!("{name} has no blob {digest}"),
                ),
                Err(e) => failed(e),
            }
        }
        (m, Route::Blob { name, digest }) => {
            get_blob(&cx, &name, &digest, &req.headers, m == Method::HEAD).await
        }
        (_, Route::Uploads { name }) => start_upload(&cx, &name, &query, body).await,
        (Method::GET, Route::Upload { name, id }) => {
            // Not held: a status read answers while a chunk is arriving (what is written so
            // far), so a client can see how much of a chunk that broke off arrived.
            match cx.reg.blobs.upload_size(&id, &name).await {
                Some(size) => upload_status(StatusCode::NO_CONTENT, &name, &id, size),
                None => upload_unknown(),
            }
        }
        (Method::PATCH, Route::Upload { name, id }) => {
            patch_upload(&cx, &name, &id, &req, body).await
        }
        (Method::PUT, Route::Upload { name, id }) => {
            put_upload(&cx, &name, &id, &query, &req, body).await
        }
        (_, Route::Upload { name, id }) => {
            let _held = cx.reg.blobs.lock(&id).await;
            if cx.reg.blobs.upload_size(&id, &name).await.is_none() {
                return upload_unknown();
            }
            cx.reg.blobs.cancel(&id).await;
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// The query parameters the registry reads.
#[derive(Default)]
struct Query {
    digest: Option<String>,
    mount: Option<String>,
    from: Option<String>,
    n: Option<usize>,
    last: Option<String>,
}

impl Query {
    fn of(req: &Parts) -> Query {
        let mut q = Query::default();
        for (k, v) in form_urlencoded::parse(req.uri.query().unwrap_or("").as_bytes()) {
            match &*k {
                "digest" => q.digest = Some(v.into_owned()),
                "mount" => q.mount = Some(v.into_owned()),
                "from" => q.from = Some(v.into_owned()),
                "n" => q.n = v.parse().ok(),
                "last" => q.last = Some(v.into_owned()),
                _ => {}
            }
        }
        q
    }
}

/// `n` entries after `last` of sorted `all`, and whether more follow.
fn page(all: Vec<String>, q: &Query) -> (Vec<String>, bool) {
    let rest: Vec<String> = all
        .into_iter()
        .filter(|x| q.last.as_ref().is_none_or(|l| x > l))
        .collect();
    let n = q.n.unwrap_or(usize::MAX);
    let more = rest.len() > n;
    (rest.into_iter().take(n).collect(), more)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_start_after_last_and_hold_n() {
        let all = || ["a", "b", "c"].map(String::from).to_vec();
        for (n, last, want, more) in [
            (None, None, vec!["a", "b", "c"], false),
            (Some(2), None, vec!["a", "b"], true),
            (Some(2), Some("b"), vec!["c"], false),
            (Some(3), None, vec!["a", "b", "c"], false),
            (Some(0), None, vec![], true),
            (None, Some("c"), vec![], false),
        ] {
            let q = Query {
                n,
                last: last.map(String::from),
                ..Query::default()
            };
            let (got, next) = page(all(), &q);
            assert_eq!(
                (got, next),
                (want.iter().map(|s| s.to_string()).collect(), more),
                "n={n:?} last={last:?}"
            );
        }
    }
}

fn paged(json: serde_json::Value, next: Option<String>) -> Response {
    let mut r = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response();
    if let Some(link) = next.and_then(|l| HeaderValue::from_str(&l).ok()) {
        r.headers_mut().insert(header::LINK, link);
    }
    r
}

async fn catalog(cx: &Cx, q: &Query) -> Response {
    let all = match cx.m.registry_repositories().await {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let seen: Vec<String> = all
        .into_iter()
        .filter(|r| cx.caller.sees(stack_of(r)))
        .collect();
    let (repos, more) = page(seen, q);
    let next = more.then(|| {
        let last = repos.last().cloned().unwrap_or_default();
        format!("</v2/_catalog?n={}&last={last}>; rel=\"next\"", repos.len())
    });
    paged(serde_json::json!({ "repositories": repos }), next)
}

async fn tags(cx: &Cx, name: &str, q: &Query) -> Response {
    let all = match cx.m.registry_tags(name).await {
        Ok(t) => t,
        Err(e) => return failed(e),
    };
    if all.is_empty() {
        // A repository of untagged manifests has an empty list; one of nothing is unknown.
        match cx.m.registry_repositories().await {
            Ok(repos) if repos.iter().any(|r| r == name) => {}
            Ok(_) => {
                let unknown = format!("no repository {name}");
                return oci(StatusCode::NOT_FOUND, "NAME_UNKNOWN", unknown);
            }
            Err(e) => return failed(e),
        }
    }
    let (tags, more) = page(all, q);
    let next = more.then(|| {
        let last = tags.last().cloned().unwrap_or_default();
        format!(
            "</v2/{name}/tags/list?n={}&last={last}>; rel=\"next\"",
            tags.len()
        )
    });
    paged(serde_json::json!({ "name": name, "tags": tags }), next)
}

/// The digest `reference` names in `name`, with its manifest record.
async fn resolve(
    cx: &Cx,
    name: &str,
    reference: &Reference,
) -> Result<(Digest, ManifestRecord), Response> {
    let unknown = || {
        oci(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("{name} has no manifest {reference:?}"),
        )
    };
    let digest = match reference {
        Reference::Digest(d) => d.clone(),
        Reference::Tag(t) => match cx.m.registry_tag(name, t).await {
            Ok(Some(t)) => Digest::parse(&t.digest).map_err(|_| unknown())?,
            Ok(None) => return Err(unknown()),
            Err(e) => return Err(failed(e)),
        },
    };
    match cx.m.registry_manifest(name, &digest).await {
        Ok(Some(rec)) => Ok((digest, rec)),
        Ok(None) => Err(unknown()),
        Err(e) => Err(failed(e)),
    }
}

async fn get_manifest(
    cx: &Cx,
    name: &str,
    reference: Reference,
    headers: &HeaderMap,
    head: bool,
) -> Response {
    let (digest, rec) = match resolve(cx, name, &reference).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let accept: Vec<&str> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !manifest::acceptable(&accept, &rec.media_type) {
        // As the reference registry: no conversion between formats, so a client that cannot
        // read this type finds none (Docker and skopeo name all four).
        return oci_hint(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!(
                "{name} has {reference:?} as {}, which Accept does not name",
                rec.media_type
            ),
            "ask with that media type in Accept",
        );
    }
    let bytes = if head {
        Vec::new()
    } else {
        let read = async {
            let mut f = cx.reg.blobs.open_blob(&digest).await?;
            let mut v = Vec::new();
            f.read_to_end(&mut v).await?;
            Ok::<_, std::io::Error>(v)
        };
        match read.await {
            Ok(v) => v,
            Err(e) => return io_failed("cannot read a manifest", e),
        }
    };
    let mut r = Response::new(Body::from(bytes));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(&rec.media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(rec.size));
    h.insert("docker-content-digest", hv(digest.as_str()));
    h.insert(header::ETAG, hv(&format!("\"{digest}\"")));
    r
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

async fn put_manifest(
    cx: &Cx,
    name: &str,
    reference: Reference,
    req: &Parts,
    body: Body,
) -> Response {
    let content_type = req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match axum::body::to_bytes(body, MAX_MANIFEST).await {
        Ok(b) => b,
        Err(_) => {
            return oci(
                StatusCode::PAYLOAD_TOO_LARGE,
                "SIZE_INVALID",
                format!("a manifest is at most {MAX_MANIFEST} bytes"),
            );
        }
    };
    let parsed = match manifest::parse(content_type.as_deref(), &body) {
        Ok(p) => p,
        Err(e) => return oci(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e),
    };
    let digest = Digest::of(&body);
    if let Reference::Digest(d) = &reference
        && *d != digest
    {
        return oci(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("the manifest's digest is {digest}, not {d}"),
        );
    }
    for b in &parsed.blobs {
        if !blob_present(cx, name, b).await {
            return oci(
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
                format!("blob {b} is not in {name}: push it first"),
            );
        }
    }
    for c in &parsed.manifests {
        if !matches!(cx.m.registry_manifest(name, c).await, Ok(Some(_))) {
            return oci(
                StatusCode::BAD_REQUEST,
                "MANIFEST_BLOB_UNKNOWN",
                format!("manifest {c} is not in {name}: push it first"),
            );
        }
    }
    if let Err(e) = cx.reg.blobs.put(&body).await {
        return io_failed("cannot store a manifest", std::io::Error::other(e));
    }
    let record = ManifestRecord {
        media_type: parsed.media_type,
        size: body.len() as u64,
        blobs: parsed.blobs.iter().map(|d| d.to_string()).collect(),
        manifests: parsed.manifests.iter().map(|d| d.to_string()).collect(),
        pushed_at: now_ms(),
    };
    let tag = match &reference {
        Reference::Tag(t) => Some(t.as_str()),
        Reference::Digest(_) => None,
    };
    if let Err(e) =
        cx.m.registry_put_manifest(&cx.actor, name, &digest, &record, tag)
            .await
    {
        return failed(e);
    }
    // Every pushed image is scanned, after the push answered (`registry::scan`).
    let (m, repo, d) = (cx.m.clone(), name.to_string(), digest.to_string());
    tokio::spawn(async move {
        if let Err(e) = m.scan_registry(&repo, &d).await {
            tracing::info!(%repo, digest = %d, error = %e, "registry: the pushed image could not be scanned");
        }
    });
    let mut r = StatusCode::CREATED.into_response();
    r.headers_mut().insert(
        header::LOCATION,
        hv(&format!("/v2/{name}/manifests/{digest}")),
    );
    r.headers_mut()
        .insert("docker-content-digest", hv(digest.as_str()));
    r
}

async fn delete_manifest(cx: &Cx, name: &str, reference: Reference) -> Response {
    let done = match &reference {
        Reference::Digest(d) => cx.m.registry_delete_manifest(&cx.actor, name, d).await,
        Reference::Tag(t) => cx.m.registry_delete_tag(&cx.actor, name, t).await,
    };
    match done {
        Ok(true) => StatusCode::ACCEPTED.into_response(),
        Ok(false) => oci(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!("{name} has no manifest {reference:?}"),
        ),
        Err(e) => failed(e),
    }
}

/// Whether `name` may use blob `d` and it is on disk.
async fn blob_present(cx: &Cx, name: &str, d: &Digest) -> bool {
    matches!(cx.m.registry_link(name, d).await, Ok(Some(_))) && cx.reg.blobs.size(d).await.is_some()
}

async fn get_blob(cx: &Cx, name: &str, d: &Digest, headers: &HeaderMap, head: bool) -> Response {
    let size = match cx.reg.blobs.size(d).await {
        Some(s) if matches!(cx.m.registry_link(name, d).await, Ok(Some(_))) => s,
        _ => {
            return oci(
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                format!("{name} has no blob {d}"),
            );
        }
    };
    let asked = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, end) = match range::read(asked, size) {
        Ok(None) => (StatusCode::OK, 0, size.saturating_sub(1)),
        Ok(Some((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e),
        Err(range::Unsatisfiable) => {
            let mut r = oci(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "BLOB_UNKNOWN",
                "the range is not in the blob",
            );
            r.headers_mut()
                .insert(header::CONTENT_RANGE, hv(&format!("bytes */{size}")));
            return r;
        }
    };
    let len = if size == 0 { 0 } else { end - start + 1 };
    let body = if head || len == 0 {
        Body::empty()
    } else {
        match stream_file(cx, d, start, len).await {
            Ok(b) => b,
            Err(e) => return io_failed("cannot read a blob", e),
        }
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert("docker-content-digest", hv(d.as_str()));
    h.insert(header::ETAG, hv(&format!("\"{d}\"")));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            hv(&format!("bytes {start}-{end}/{size}")),
        );
    }
    r
}

/// `len` bytes of blob `d` from `start`, read in 64 KiB chunks as the client takes them.
async fn stream_file(cx: &Cx, d: &Digest, start: u64, len: u64) -> std::io::Result<Body> {
    let mut file = cx.reg.blobs.open_blob(d).await?;
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let reader = Some(file.take(len));
    let stream = futures::stream::unfold(reader, |reader| async move {
        let mut r = reader?;
        let mut buf = vec![0u8; 64 * 1024];
        match r.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(r)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok(Body::from_stream(stream))
}

fn upload_unknown() -> Response {
    oci(
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
        "no such upload (finished, cancelled or never started)",
    )
}

/// An upload's answer: where to send the next chunk and what the registry holds.
fn upload_status(status: StatusCode, name: &str, id: &str, size: u64) -> Response {
    let mut r = status.into_response();
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        hv(&format!("/v2/{name}/blobs/uploads/{id}")),
    );
    h.insert(header::RANGE, hv(&range::upload_range(size)));
    h.insert("docker-upload-uuid", hv(id));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r
}

fn blob_created(name: &str, d: &Digest) -> Response {
    let mut r = StatusCode::CREATED.into_response();
    r.headers_mut()
        .insert(header::LOCATION, hv(&format!("/v2/{name}/blobs/{d}")));
    r.headers_mut()
        .insert("docker-content-digest", hv(d.as_str()));
    r
}

async fn start_upload(cx: &Cx, name: &str, q: &Query, body: Body) -> Response {
    if let (Some(mount), Some(from)) = (&q.mount, &q.from)
        && let Ok(d) = Digest::parse(mount)
        && let Some(size) = mountable(cx, from, &d).await
    {
        return match cx
            .m
            .registry_link_blob(&cx.actor, name, &d, size, "registry mount blob")
            .await
        {
            Ok(()) => blob_created(name, &d),
            Err(e) => failed(e),
        };
    }
    let digest = match q.digest.as_deref().map(Digest::parse) {
        Some(Err(e)) => return oci(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e),
        Some(Ok(d)) => Some(d),
        None => None,
    };
    let id = match cx.reg.blobs.start(name).await {
        Ok(id) => id,
        Err(e) => return io_failed("cannot start an upload", e),
    };
    let Some(digest) = digest else {
        return upload_status(StatusCode::ACCEPTED, name, &id, 0);
    };
    // Monolithic: the whole blob in this request.
    let _held = cx.reg.blobs.lock(&id).await;
    if let Err((_, e)) = cx.reg.blobs.append(&id, body).await {
        cx.reg.blobs.cancel(&id).await;
        return oci(
            StatusCode::BAD_REQUEST,
            "BLOB_UPLOAD_INVALID",
            format!("the body broke off: {e}"),
        );
    }
    finish(cx, name, &id, &digest).await
}

/// The size of blob `d` when `from` may lend it to the caller: the caller may pull `from`, and
/// `from` may use the blob.
async fn mountable(cx: &Cx, from: &str, d: &Digest) -> Option<u64> {
    let pull = policy::operation("GET", "/v2/{name}/blobs/{digest}")?;
    if !valid_name(from) || policy::decide(&cx.caller, pull, Some(stack_of(from))).is_err() {
        return None;
    }
    cx.m.registry_link(from, d).await.ok().flatten()?;
    cx.reg.blobs.size(d).await
}

async fn finish(cx: &Cx, name: &str, id: &str, digest: &Digest) -> Response {
    match cx.reg.blobs.finish(id, digest).await {
        Ok(size) => match cx
            .m
            .registry_link_blob(&cx.actor, name, digest, size, "registry push blob")
            .await
        {
            Ok(()) => blob_created(name, digest),
            Err(e) => failed(e),
        },
        Err(FinishError::Mismatch { expected, actual }) => oci_hint(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("the upload's content has digest {actual}, not {expected}"),
            "nothing was stored; upload the blob again",
        ),
        Err(FinishError::Io(e)) => io_failed("cannot store a blob", e),
    }
}

async fn patch_upload(cx: &Cx, name: &str, id: &str, req: &Parts, body: Body) -> Response {
    let _held = cx.reg.blobs.lock(id).await;
    let Some(size) = cx.reg.blobs.upload_size(id, name).await else {
        return upload_unknown();
    };
    let header = |h: header::HeaderName| req.headers.get(h).and_then(|v| v.to_str().ok());
    let length = header(header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
    if let Err(e) = range::chunk(header(header::CONTENT_RANGE), size, length) {
        let mut r = oci(StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID", e);
        r.headers_mut()
            .insert(header::RANGE, hv(&range::upload_range(size)));
        r.headers_mut().insert(
            header::LOCATION,
            hv(&format!("/v2/{name}/blobs/uploads/{id}")),
        );
        return r;
    }
    match cx.reg.blobs.append(id, body).await {
        Ok(size) => upload_status(StatusCode::ACCEPTED, name, id, size),
        Err((size, e)) => {
            tracing::debug!(error = %e, size, "an upload's chunk broke off; it resumes from its length");
            oci(
                StatusCode::BAD_REQUEST,
                "BLOB_UPLOAD_INVALID",
                format!("the chunk broke off at {size} bytes: {e}"),
            )
        }
    }
}

async fn put_upload(cx: &Cx, name: &str, id: &str, q: &Query, req: &Parts, body: Body) -> Response {
    let _held = cx.reg.blobs.lock(id).await;
    let Some(size) = cx.reg.blobs.upload_size(id, name).await else {
        return upload_unknown();
    };
    let digest = match q.digest.as_deref().map(Digest::parse) {
        Some(Ok(d)) => d,
        Some(Err(e)) => return oci(StatusCode::BAD_REQUEST, "DIGEST_INVALID", e),
        None => {
            return oci(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                "PUT of an upload needs ?digest=",
            );
        }
    };
    let header = |h: header::HeaderName| req.headers.get(h).and_then(|v| v.to_str().ok());
    let length = header(header::CONTENT_LENGTH).and_then(|v| v.parse().ok());
    if let Err(e) = range::chunk(header(header::CONTENT_RANGE), size, length) {
        return oci(StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID", e);
    }
    if length != Some(0)
        && let Err((_, e)) = cx.reg.blobs.append(id, body).await
    {
        return oci(
            StatusCode::BAD_REQUEST,
            "BLOB_UPLOAD_INVALID",
            format!("the last chunk broke off: {e}"),
        );
    }
    finish(cx, name, id, &digest).await
}

/// Remove the registry's blobs no manifest refers to (and older than the grace), audited.
#[utoipa::path(post, path = "/v1/registry/gc", params(wharf_types::RegistryGcQuery),
    responses((status = 200, body = wharf_types::RegistryGc), (status = 404, body = wharf_types::ApiError)))]
pub(super) async fn gc(
    State(m): State<Master>,
    axum::Extension(actor): axum::Extension<Actor>,
    super::error::ApiQuery(q): super::error::ApiQuery<wharf_types::RegistryGcQuery>,
) -> Result<axum::Json<wharf_types::RegistryGc>, super::ApiFailure> {
    let grace = std::time::Duration::from_secs(q.grace_secs.unwrap_or(3600));
    Ok(axum::Json(m.registry_gc(&actor, grace).await?))
}
