//! The HTTP request path, one stage after the other:
//!
//! 1. **route**: host and path to a route of the current config (404 if none); a route with
//!    `redirect_https` answers plain-HTTP requests with 308 here, before any backend work;
//! 2. **rewrite**: hop-by-hop headers out, `X-Forwarded-*` in, HTTP/2 requests turned into
//!    HTTP/1.1 ones (origin-form URI, `Host`, cookies joined);
//! 3. **pick and send**: the sticky endpoint or the balancer's choice; a pooled or new
//!    connection; a connect failure marks the endpoint (passive health) and moves on to
//!    another endpoint, since nothing was sent yet; once sent, never retried;
//! 4. **respond**: hop-by-hop headers out, sticky cookie in, the body streamed while the
//!    endpoint counts the request in flight; `101 Switching Protocols` splices both upgraded
//!    connections together.
//!
//! The config is read once per request (stage 1); the request then holds its route and
//! endpoint, so a live update never disturbs it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use crate::backend::{ConnectError, EndpointRt, InFlight, Tried};
use crate::metrics::Counters;
use crate::runtime::{RouteRt, Shared};

/// What the accept loop knows about a client connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Serves one request: the service of every client connection.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    Counters::inc(&shared.counters.requests);
    let start = Instant::now();
    if !tracing::enabled!(target: "wharf_proxy::access", tracing::Level::INFO) {
        let (resp, backend) = proxy(&shared, conn, req).await;
        crate::metrics::record_request(resp.status().as_u16(), backend.as_deref(), start);
        return Ok(resp);
    }
    let method = req.method().clone();
    let uri = req.uri().clone();
    let host = req.headers().get(header::HOST).cloned();
    let (resp, backend) = proxy(&shared, conn, req).await;
    crate::metrics::record_request(resp.status().as_u16(), backend.as_deref(), start);
    let host = uri
        .host()
        .or_else(|| host.as_ref().and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    tracing::info!(
        target: "wharf_proxy::access",
        client = %conn.peer.ip(),
        %method,
        host,
        path = uri.path(),
        status = resp.status().as_u16(),
        backend = backend.as_deref().unwrap_or("-"),
        duration_us = start.elapsed().as_micros() as u64,
    );
    Ok(resp)
}

/// What a request's handling ends with: the response, and the endpoint id that answered (for
/// the access log).
type Answer = (Response<ProxyBody>, Option<Arc<str>>);

/// The response, and the endpoint id that answered. Four stages: route (or redirect), rewrite
/// the request for the backend, pick an endpoint and send, respond (or hand over an upgrade).
async fn proxy(shared: &Shared, conn: ConnInfo, mut req: Request<Incoming>) -> Answer {
    let (route, pinned) = match route(shared, conn, &req) {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let client_upgrade = is_upgrade(&req).then(|| hyper::upgrade::on(&mut req));
    let req = rewrite(req, conn, client_upgrade.is_some());
    let sent = match send(shared, &route, pinned, req).await {
        Ok(sent) => sent,
        Err(answer) => return answer,
    };
    respond(&route, pinned, sent, client_upgrade)
}

/// Stage 1: the route for the request's host and path, and the endpoint its sticky cookie pins
/// (if any); or the answer when there is no route or the route redirects to HTTPS.
// The error is the response itself, handed straight to the client once: boxing it would only
// add an allocation to every 404 and redirect.
#[allow(clippy::result_large_err)]
fn route<B>(
    shared: &Shared,
    conn: ConnInfo,
    req: &Request<B>,
) -> Result<(Arc<RouteRt>, Option<usize>), Answer> {
    let host = request_host(req);
    let route: Arc<RouteRt> = {
        let rt = shared.runtime.load();
        match rt.table.find(host, req.uri().path()) {
            Some(route) => route.clone(),
            None => {
                Counters::inc(&shared.counters.no_route);
                return Err((
                    simple(StatusCode::NOT_FOUND, "no route for this host and path\n"),
                    None,
                ));
            }
        }
    };
    if route.redirect_https && !conn.tls {
        Counters::inc(&shared.counters.redirects);
        let port = route
            .redirect_port
            .unwrap_or_else(|| shared.https_port.load(Relaxed));
        return Err((redirect(host, port, req.uri()), None));
    }
    let pool = &route.pool;
    let pinned = pool
        .sticky
        .as_deref()
        .and_then(|name| cookie(req.headers(), name))
        .and_then(|id| pool.by_id(id));
    Ok((route, pinned))
}

/// Stage 2: the request as the backend gets it: hop-by-hop headers out (the upgrade kept when
/// the client asked for one), `X-Forwarded-*` in, HTTP/2 cookies joined, origin-form URI,
/// HTTP/1.1.
fn rewrite<B>(req: Request<B>, conn: ConnInfo, upgrade: bool) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    let forwarded_host = match parts.uri.authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    let upgrade_proto = parts.headers.remove(header::UPGRADE);
    strip_hop_by_hop(&mut parts.headers);
    if let (Some(proto), true) = (upgrade_proto, upgrade) {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto);
    }
    if let Some(fh) = forwarded_host {
        if !parts.headers.contains_key(header::HOST) {
            parts.headers.insert(header::HOST, fh.clone());
        }
        parts.headers.insert(X_FORWARDED_HOST.clone(), fh);
    }
    append_forwarded_for(&mut parts.headers, conn.peer);
    let proto = if conn.tls { "https" } else { "http" };
    parts
        .headers
        .insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if parts.version == Version::HTTP_2 {
        join_cookies(&mut parts.headers);
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri = match parts.uri.path_and_query() {
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        };
    }
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, body)
}

/// A request an endpoint answered: its response, the connection (back to the pool when the
/// body ends), the in-flight mark, and the endpoint's index in the pool.
struct Sent {
    resp: Response<Incoming>,
    sender: hyper::client::conn::http1::SendRequest<Incoming>,
    flight: InFlight,
    chosen: usize,
}

/// Stage 3: the pinned endpoint first, then the pool's picks: connect failures are retried on
/// another endpoint (up to the pool's `retries`); once sent, a request is never sent again
/// (only a pooled connection that closed meanwhile gives it back unsent).
async fn send(
    shared: &Shared,
    route: &RouteRt,
    pinned: Option<usize>,
    mut req: Request<Incoming>,
) -> Result<Sent, Answer> {
    let pool = &route.pool;
    let health = pool.health;
    let mut tried = Tried::default();
    let mut failures = 0u32;
    let mut saw_timeout = false;
    let mut next = pinned;
    'endpoints: while let Some(i) = next.take().or_else(|| pool.pick(tried)) {
        tried.add(i);
        let ep = &pool.endpoints[i];
        let flight = InFlight::new(ep.clone());
        // A pooled connection may have been closed by the backend meanwhile; hyper then gives
        // the request back unsent and we try the next one, ending with a fresh connection.
        let mut fresh_failures = 0;
        loop {
            let pooled = ep.checkout();
            let fresh = pooled.is_none();
            let mut sender = match pooled {
                Some(s) => s,
                None => match ep.connect_http(route.timeouts.connect()).await {
                    Ok(s) => {
                        ep.connect_succeeded();
                        s
                    }
                    Err(e) => {
                        saw_timeout |= matches!(e, ConnectError::Timeout);
                        ep.connect_failed(&health, &e);
                        tracing::debug!(backend = %pool.name, endpoint = %ep.id, error = %e, "connect failed");
                        failures += 1;
                        if failures > health.retries {
                            break 'endpoints;
                        }
                        continue 'endpoints;
                    }
                },
            };
            match tokio::time::timeout(route.timeouts.request(), sender.try_send_request(req)).await
            {
                Ok(Ok(resp)) => {
                    return Ok(Sent {
                        resp,
                        sender,
                        flight,
                        chosen: i,
                    });
                }
                Ok(Err(mut e)) => match e.take_message() {
                    Some(r) if !fresh || fresh_failures < 2 => {
                        fresh_failures += u32::from(fresh);
                        req = r;
                    }
                    _ => {
                        ep.errors.fetch_add(1, Relaxed);
                        Counters::inc(&shared.counters.backend_errors);
                        tracing::debug!(backend = %pool.name, endpoint = %ep.id, error = %e.into_error(), "backend failed");
                        return Err((
                            simple(StatusCode::BAD_GATEWAY, "backend failed\n"),
                            Some(ep.id.clone()),
                        ));
                    }
                },
                Err(_) => {
                    ep.errors.fetch_add(1, Relaxed);
                    Counters::inc(&shared.counters.timeouts);
                    return Err((
                        simple(StatusCode::GATEWAY_TIMEOUT, "backend timed out\n"),
                        Some(ep.id.clone()),
                    ));
                }
            }
        }
    }
    Err(if saw_timeout {
        Counters::inc(&shared.counters.timeouts);
        (
            simple(StatusCode::GATEWAY_TIMEOUT, "backend connect timed out\n"),
            None,
        )
    } else {
        Counters::inc(&shared.counters.no_endpoint);
        (
            simple(StatusCode::BAD_GATEWAY, "no backend endpoint available\n"),
            None,
        )
    })
}

/// Stage 4: the backend's response to the client: an accepted upgrade is spliced both ways;
/// otherwise hop-by-hop headers out, the sticky cookie set when another endpoint than the
/// pinned one answered, and the body streamed with the connection leased until it ends.
fn respond(
    route: &RouteRt,
    pinned: Option<usize>,
    sent: Sent,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Answer {
    let Sent {
        mut resp,
        sender,
        flight,
        chosen,
    } = sent;
    let ep_id = flight.0.id.clone();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let backend_upgrade = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let _keep = (flight, sender);
            match tokio::try_join!(client_upgrade, backend_upgrade) {
                Ok((client, backend)) => {
                    let _ = tokio::io::copy_bidirectional(
                        &mut TokioIo::new(client),
                        &mut TokioIo::new(backend),
                    )
                    .await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        let (parts, _) = resp.into_parts();
        return (Response::from_parts(parts, ProxyBody::empty()), Some(ep_id));
    }
    strip_hop_by_hop(resp.headers_mut());
    if let Some(name) = route.pool.sticky.as_deref()
        && pinned != Some(chosen)
        && let Ok(v) = HeaderValue::from_str(&format!("{name}={ep_id}; Path=/; HttpOnly"))
    {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
    let resp = resp.map(|body| {
        ProxyBody(Kind::Upstream {
            body,
            _lease: Lease {
                sender: Some(sender),
                flight,
            },
        })
    });
    (resp, Some(ep_id))
}

/// The host the client asked for, without the port: the URI's (HTTP/2, absolute-form) or the
/// `Host` header's.
fn request_host<B>(req: &Request<B>) -> &str {
    if let Some(h) = req.uri().host() {
        return h;
    }
    let Some(h) = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    else {
        return "";
    };
    if h.starts_with('[') {
        return h.split_inclusive(']').next().unwrap_or(h);
    }
    h.rsplit_once(':').map_or(h, |(host, _)| host)
}

/// An HTTP/1.1 upgrade request (`Connection: upgrade` plus `Upgrade`).
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes the headers that concern one connection only (RFC 9110 section 7.6.1), including
/// those named by `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// Appends the client address to `X-Forwarded-For`, keeping what earlier proxies wrote.
fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.is_empty() => format!("{prior}, {ip}"),
        _ => ip.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// HTTP/2 may split `Cookie` into several fields; HTTP/1.1 backends expect one (RFC 9113 8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let joined: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if let Ok(v) = HeaderValue::from_str(&joined.join("; ")) {
        headers.insert(header::COOKIE, v);
    }
}

/// The value of cookie `name`, if sent.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

fn redirect(host: &str, https_port: u16, uri: &Uri) -> Response<ProxyBody> {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = if https_port == 443 || https_port == 0 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{https_port}{pq}")
    };
    let mut resp = simple(StatusCode::PERMANENT_REDIRECT, "redirecting to https\n");
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn simple(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody(Kind::Full(Some(Bytes::from_static(
        body.as_bytes(),
    )))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A response body: streamed from a backend, or a short one made by the proxy.
pub(crate) struct ProxyBody(Kind);

enum Kind {
    Upstream { body: Incoming, _lease: Lease },
    Full(Option<Bytes>),
}

/// Holds the endpoint's in-flight count and the connection until the body is done; the
/// connection then goes back to the pool.
struct Lease {
    sender: Option<SendRequest<Incoming>>,
    flight: InFlight,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            Arc::<EndpointRt>::clone(&self.flight.0).checkin(sender);
        }
    }
}

impl ProxyBody {
    fn empty() -> Self {
        ProxyBody(Kind::Full(None))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().0 {
            Kind::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Upstream { body, .. } => body.is_end_stream(),
            Kind::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Upstream { body, .. } => body.size_hint(),
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_go_including_those_named_by_connection() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-end-to-end", "kept"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-end-to-end"]);
    }

    #[test]
    fn forwarded_for_appends_to_prior_proxies() {
        let peer: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        let mut h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        append_forwarded_for(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 10.0.0.9");
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
    }

    #[test]
    fn cookies_are_found_and_joined() {
        let mut h = headers(&[("cookie", "a=1; wharf=web-2"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, "wharf"), Some("web-2"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "wh"), None);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; wharf=web-2; b=2");
    }

    #[test]
    fn host_without_port() {
        let req = |host: &str| {
            Request::builder()
                .uri("/")
                .header("host", host)
                .body(())
                .unwrap()
        };
        assert_eq!(request_host(&req("a.test:8080")), "a.test");
        assert_eq!(request_host(&req("a.test")), "a.test");
        assert_eq!(request_host(&req("[::1]:80")), "[::1]");
        let h2 = Request::builder()
            .uri("https://b.test:8443/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&h2), "b.test");
    }
}
