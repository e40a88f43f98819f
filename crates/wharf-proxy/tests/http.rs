//! HTTP proxying through a real `Proxy` on 127.0.0.1 to in-process backends.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Empty;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wharf_proxy::{Balance, Config, EndpointState, PassiveHealth, Proxy, Route, Sticky, Timeouts};

async fn start(config: Config) -> (Proxy, std::net::SocketAddr) {
    let proxy = Proxy::new(config).expect("valid config");
    let bound = proxy.bind().await.expect("bind");
    (proxy, bound.http.unwrap())
}

/// The metrics of the endpoint `id` of the pool `web`.
fn web_endpoint(proxy: &Proxy, id: &str) -> wharf_proxy::EndpointMetrics {
    proxy.metrics().endpoint("web", id).cloned().unwrap()
}

fn counts(bodies: &[String]) -> BTreeMap<&str, usize> {
    let mut m = BTreeMap::new();
    for b in bodies {
        *m.entry(b.as_str()).or_default() += 1;
    }
    m
}

#[tokio::test]
async fn round_robin_spreads_evenly() {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    let cfg = web(vec![a.endpoint(), b.endpoint(), c.endpoint()]);
    let (_proxy, addr) = start(cfg).await;
    let mut bodies = Vec::new();
    for _ in 0..30 {
        let r = get(addr, "x.test", "/").await;
        assert_eq!(r.status, StatusCode::OK);
        bodies.push(r.body);
    }
    // Sequential requests: each endpoint in turn, so exactly a third each.
    assert_eq!(
        counts(&bodies),
        BTreeMap::from([("a", 10), ("b", 10), ("c", 10)])
    );
}

#[tokio::test]
async fn backend_connections_are_reused() {
    let a = TestBackend::start("a").await;
    let (proxy, addr) = start(web(vec![a.endpoint()])).await;
    for _ in 0..20 {
        assert_eq!(get(addr, "x.test", "/").await.body, "a");
    }
    // Sequential requests: one pooled connection serves them all.
    assert_eq!(web_endpoint(&proxy, "a").connections_opened, 1);
}

#[tokio::test]
async fn request_bodies_are_forwarded_over_http1_and_h2c() {
    let a = TestBackend::start("a").await;
    let (_proxy, addr) = start(web(vec![a.endpoint()])).await;
    // HTTP/1.1 with a length, then chunked (a streamed body of unknown length).
    let body = vec![b'x'; 100_000];
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut sender = http1(stream).await;
    let req = hyper::Request::post("/echo")
        .header("host", "x.test")
        .body(http_body_util::Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(&body_of(resp).await[..], b"a got 100000 bytes");
    let chunks = http_body_util::StreamBody::new(futures_lite_stream(vec![
        Bytes::from_static(b"abc"),
        Bytes::from_static(b"de"),
    ]));
    let req = hyper::Request::post("/echo")
        .header("host", "x.test")
        .body(chunks)
        .unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut sender = http1(stream).await;
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(&body_of(resp).await[..], b"a got 5 bytes");

    // HTTP/2 (h2c) to an HTTP/1.1 backend.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut sender = http2(stream).await;
    let req = hyper::Request::post("http://x.test/echo")
        .body(http_body_util::Full::new(Bytes::from(vec![1u8; 70_000])))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(&body_of(resp).await[..], b"a got 70000 bytes");
}

/// A finite stream of body frames.
fn futures_lite_stream(
    chunks: Vec<Bytes>,
) -> impl futures::Stream<Item = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> {
    futures::stream::iter(chunks.into_iter().map(|c| Ok(hyper::body::Frame::data(c))))
}

#[tokio::test]
async fn a_request_already_sent_is_never_retried() {
    let (hole, accepted) = black_hole().await;
    let b = TestBackend::start("b").await;
    let hole = serving("hole", hole);
    let (proxy, addr) = start(web(vec![hole, b.endpoint()])).await;
    // Round robin sends the first request to the black hole, which takes it and hangs up.
    let r = get(addr, "x.test", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        b.hits(),
        0,
        "the request was sent once; retrying it elsewhere could repeat its effect"
    );
    assert_eq!(accepted.load(SeqCst), 1);
    assert_eq!(proxy.metrics().backend_errors, 1);
}

#[tokio::test]
async fn least_requests_prefers_the_idle_endpoint() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let mut web = pool(vec![a.endpoint(), b.endpoint()]);
    web.balance = Balance::LeastRequests;
    let (_proxy, addr) = start(config(vec![route("web")], vec![("web", web)])).await;
    let slow = tokio::spawn(async move { get(addr, "x.test", "/slow").await });
    wait_for("the slow request to reach a backend", || {
        a.slow_started.load(SeqCst) + b.slow_started.load(SeqCst) == 1
    })
    .await;
    let busy = if a.slow_started.load(SeqCst) == 1 {
        "a"
    } else {
        "b"
    };
    for _ in 0..6 {
        let r = get(addr, "x.test", "/").await;
        assert_ne!(
            r.body, busy,
            "least requests sent a request to the busy endpoint"
        );
    }
    a.release();
    b.release();
    assert_eq!(slow.await.unwrap().body, busy);
}

#[tokio::test]
async fn sticky_cookie_pins_to_one_endpoint() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let mut web = pool(vec![a.endpoint(), b.endpoint()]);
    web.sticky = Some(Sticky {
        cookie: "wharf_sticky".into(),
    });
    let (proxy, addr) = start(config(vec![route("web")], vec![("web", web)])).await;
    let first = get(addr, "x.test", "/").await;
    let set = first.headers["set-cookie"].to_str().unwrap().to_owned();
    assert_eq!(
        set,
        format!("wharf_sticky={}; Path=/; HttpOnly", first.body)
    );
    for _ in 0..8 {
        let r = send(
            addr,
            req("x.test", "/")
                .header("cookie", format!("other=1; wharf_sticky={}", first.body))
                .body(Empty::new())
                .unwrap(),
        )
        .await;
        assert_eq!(r.body, first.body, "the cookie did not pin the endpoint");
        assert!(
            r.headers.get("set-cookie").is_none(),
            "a pinned request needs no new cookie"
        );
    }
    // An unknown id is balanced as usual and gets a fresh cookie.
    let r = send(
        addr,
        req("x.test", "/")
            .header("cookie", "wharf_sticky=gone")
            .body(Empty::new())
            .unwrap(),
    )
    .await;
    assert!(r.headers.contains_key("set-cookie"));

    // A pinned endpoint that starts draining loses its clients to another, which re-pins them.
    let mut next = proxy.config().as_ref().clone();
    let web = next.backends.get_mut("web").unwrap();
    let pinned = web
        .endpoints
        .iter_mut()
        .find(|e| e.id == first.body)
        .unwrap();
    pinned.state = EndpointState::Draining;
    proxy.update(next).unwrap();
    let cookie = format!("wharf_sticky={}", first.body);
    let r = send(
        addr,
        req("x.test", "/")
            .header("cookie", cookie)
            .body(Empty::new())
            .unwrap(),
    )
    .await;
    assert_ne!(r.body, first.body);
    let want = format!("wharf_sticky={}; Path=/; HttpOnly", r.body);
    assert_eq!(r.headers["set-cookie"].to_str().unwrap(), want);
}

#[tokio::test]
async fn forwarded_headers_are_set() {
    let a = TestBackend::start("a").await;
    let (_proxy, addr) = start(web(vec![a.endpoint()])).await;
    let r = send(
        addr,
        req("app.test:8080", "/p?q=1")
            .header("x-forwarded-for", "203.0.113.7")
            .header("x-forwarded-proto", "https")
            .header("connection", "keep-alive, x-secret-hop")
            .header("x-secret-hop", "must not pass")
            .body(Empty::new())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let h = a.last_headers.lock().clone().unwrap();
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(
        h["x-forwarded-proto"], "http",
        "the client's claim is replaced"
    );
    assert_eq!(h["x-forwarded-host"], "app.test:8080");
    assert_eq!(h["host"], "app.test:8080");
    assert!(
        !h.contains_key("x-secret-hop"),
        "a header named by Connection is hop-by-hop"
    );
}

#[tokio::test]
async fn routes_by_host_and_path_prefix() {
    let ids = ["app", "api", "wild", "default"];
    let mut backends = Vec::new();
    for id in ids {
        backends.push(TestBackend::start(id).await);
    }
    let r = |hosts: &[&str], prefix: &str, backend: &str| Route {
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        path_prefix: prefix.into(),
        ..route(backend)
    };
    let routes = vec![
        r(&["app.test"], "/", "app"),
        r(&["app.test"], "/api", "api"),
        r(&["*.wild.test"], "/", "wild"),
        r(&[], "/", "default"),
    ];
    let pools = ids
        .iter()
        .zip(&backends)
        .map(|(id, b)| (*id, pool(vec![b.endpoint()])))
        .collect();
    let (_proxy, addr) = start(config(routes, pools)).await;
    let cases = [
        ("app.test", "/", "app"),
        ("App.Test:80", "/api/users", "api"),
        ("app.test", "/apiary", "app"),
        ("x.wild.test", "/api", "wild"),
        ("x.y.wild.test", "/", "default"),
        ("other.test", "/", "default"),
    ];
    for (host, path, want) in cases {
        assert_eq!(
            get(addr, host, path).await.body,
            want,
            "host {host} path {path}"
        );
    }

    let only = TestBackend::start("only").await;
    let cfg = config(
        vec![r(&["only.test"], "/", "only")],
        vec![("only", pool(vec![only.endpoint()]))],
    );
    let (_proxy2, addr2) = start(cfg).await;
    let miss = get(addr2, "else.test", "/").await;
    assert_eq!(miss.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn slow_backend_times_out_with_504() {
    let a = TestBackend::start("a").await;
    let timeouts = Timeouts {
        connect_ms: 1000,
        request_ms: 150,
    };
    let (proxy, addr) = start(config(
        vec![Route {
            timeouts,
            ..route("web")
        }],
        vec![("web", pool(vec![a.endpoint()]))],
    ))
    .await;
    let t0 = Instant::now();
    let r = get(addr, "x.test", "/slow").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        t0.elapsed() >= Duration::from_millis(150) && t0.elapsed() < Duration::from_secs(5),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(proxy.metrics().timeouts, 1);
    a.release();
    // The endpoint is fine for fast requests afterwards.
    assert_eq!(get(addr, "x.test", "/").await.body, "a");
}

/// A proxy over the pool `web` of an endpoint `dead` that refuses connections, then `a`; ejected
/// after `failures` connect failures for `cooldown_ms`, two retries.
async fn with_dead_endpoint(
    a: &TestBackend,
    failures: u32,
    cooldown_ms: u64,
) -> (Proxy, std::net::SocketAddr) {
    let dead = serving("dead", refused_addr().await);
    let mut cfg = web(vec![dead, a.endpoint()]);
    cfg.health = PassiveHealth {
        failures,
        cooldown_ms,
        retries: 2,
    };
    start(cfg).await
}

#[tokio::test]
async fn refused_endpoint_is_retried_on_another_and_ejected() {
    let a = TestBackend::start("a").await;
    let (proxy, addr) = with_dead_endpoint(&a, 2, 60_000).await;
    for i in 0..10 {
        let r = get(addr, "x.test", "/").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "a"),
            "request {i}"
        );
    }
    let m = proxy.metrics();
    let d = m.endpoint("web", "dead").unwrap();
    // Round robin tried it on requests 1 and 2; the second failure ejected it for a minute.
    assert_eq!(d.connect_failures, 2, "{m:?}");
    assert!(d.ejected);
    assert_eq!(a.hits(), 10);
}

#[tokio::test]
async fn ejected_endpoint_is_readmitted_after_the_cooldown() {
    let a = TestBackend::start("a").await;
    let (proxy, addr) = with_dead_endpoint(&a, 1, 200).await;
    assert_eq!(get(addr, "x.test", "/").await.body, "a");
    assert!(web_endpoint(&proxy, "dead").ejected);
    wait_for("the cooldown to end", || {
        !web_endpoint(&proxy, "dead").ejected
    })
    .await;
    for _ in 0..2 {
        assert_eq!(get(addr, "x.test", "/").await.body, "a");
    }
    assert_eq!(
        web_endpoint(&proxy, "dead").connect_failures,
        2,
        "re-admitted and tried again"
    );
}

#[tokio::test]
async fn no_available_endpoint_is_502() {
    let a = TestBackend::start("a").await;
    let mut ep = a.endpoint();
    ep.state = EndpointState::Draining;
    let (proxy, addr) = start(web(vec![ep])).await;
    let r = get(addr, "x.test", "/").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.body, "no backend endpoint available\n");
    assert_eq!(a.hits(), 0);
    assert_eq!(proxy.metrics().no_endpoint, 1);
}

#[tokio::test]
async fn draining_endpoint_takes_nothing_new_but_finishes_in_flight() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let cfg = web(vec![a.endpoint(), b.endpoint()]);
    let (proxy, addr) = start(cfg.clone()).await;
    let slow = tokio::spawn(async move { get(addr, "x.test", "/slow").await });
    wait_for("the slow request to reach backend a", || {
        a.slow_started.load(SeqCst) == 1
    })
    .await;

    let mut next = cfg.clone();
    next.backends.get_mut("web").unwrap().endpoints[0].state = EndpointState::Draining;
    proxy.update(next).unwrap();
    for _ in 0..6 {
        assert_eq!(get(addr, "x.test", "/").await.body, "b");
    }
    assert_eq!(web_endpoint(&proxy, "a").in_flight, 1);
    a.release();
    let r = slow.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "a"));
    wait_for("a's in-flight count to drop", || {
        web_endpoint(&proxy, "a").in_flight == 0
    })
    .await;
    assert_eq!(a.hits(), 1);
}

#[tokio::test]
async fn live_update_keeps_in_flight_requests_and_routes_new_ones() {
    let (old, new) = (
        TestBackend::start("old").await,
        TestBackend::start("new").await,
    );
    let cfg = web(vec![old.endpoint()]);
    let (proxy, addr) = start(cfg).await;
    let slow = tokio::spawn(async move { get(addr, "x.test", "/slow").await });
    wait_for("the slow request to reach the old backend", || {
        old.slow_started.load(SeqCst) == 1
    })
    .await;

    // The old endpoint leaves the config entirely, and a route moves to another pool.
    let mut api = route("api");
    api.path_prefix = "/api".into();
    let next = config(
        vec![route("web"), api],
        vec![
            ("web", pool(vec![new.endpoint()])),
            ("api", pool(vec![old.endpoint()])),
        ],
    );
    let mut next = next;
    next.listeners = proxy.config().listeners.clone();
    proxy.update(next).unwrap();
    for _ in 0..5 {
        assert_eq!(get(addr, "x.test", "/").await.body, "new");
    }
    assert_eq!(get(addr, "x.test", "/api/x").await.body, "old");
    old.release();
    let r = slow.await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "old"),
        "the in-flight request must finish"
    );
}

#[tokio::test]
async fn update_refuses_new_listeners_and_bad_configs() {
    let a = TestBackend::start("a").await;
    let cfg = web(vec![a.endpoint()]);
    let (proxy, _addr) = start(cfg.clone()).await;
    let mut moved = cfg.clone();
    moved.listeners.http = Some("127.0.0.1:1".parse().unwrap());
    let err = proxy.update(moved).unwrap_err();
    assert!(
        matches!(err, wharf_proxy::Error::ListenersChanged { .. }),
        "{err}"
    );
    let bad = config(vec![route("nope")], vec![("web", pool(vec![a.endpoint()]))]);
    let err = proxy.update(bad).unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid proxy config: route 0 refers to backend `nope`, which is not defined (defined: web)"
    );
    assert_eq!(*proxy.config(), cfg, "a refused update changes nothing");
}

#[tokio::test]
async fn websocket_upgrade_is_passed_through() {
    let a = TestBackend::start("a").await;
    let (_proxy, addr) = start(web(vec![a.endpoint()])).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let handshake = "GET /ws HTTP/1.1\r\nHost: x.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                     Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let fut = async {
        s.write_all(handshake.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            s.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: websocket"), "{head}");
        // A masked text frame "hello" (RFC 6455 5.7); the backend echoes the bytes back.
        let frame = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        for _ in 0..3 {
            s.write_all(&frame).await.unwrap();
            let mut back = [0u8; 11];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(back, frame);
        }
    };
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("websocket echo timed out");
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let a = TestBackend::start("a").await;
    let (_proxy, addr) = start(web(vec![a.endpoint()])).await;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut sender = http2(stream).await;
    for _ in 0..3 {
        let req = hyper::Request::builder()
            .uri("http://h2c.test/x")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.version(), hyper::Version::HTTP_2);
        assert_eq!(&body_of(resp).await[..], b"a");
    }
    let h = a.last_headers.lock().clone().unwrap();
    assert_eq!(h["host"], "h2c.test");
}

#[test]
fn config_reads_from_json() {
    let json = r#"{
        "listeners": {"http": "0.0.0.0:80", "tcp": [{"addr": "0.0.0.0:5432", "backend": "db"}]},
        "routes": [{"hosts": ["*.example.com"], "path_prefix": "/api", "backend": "web",
                    "timeouts": {"request_ms": 5000}}],
        "backends": {
            "web": {"balance": "least_requests", "sticky": {"cookie": "srv"},
                    "endpoints": [{"id": "web-1", "addr": "10.0.0.2:8080"},
                                  {"id": "web-2", "addr": "10.0.0.3:8080", "state": "draining"}]},
            "db": {"endpoints": [{"id": "db-1", "addr": "10.0.0.4:5432"}]}
        },
        "health": {"failures": 5}
    }"#;
    let cfg: Config = serde_json::from_str(json).unwrap();
    cfg.validate().unwrap();
    assert_eq!(
        cfg.routes[0].timeouts,
        Timeouts {
            connect_ms: 3000,
            request_ms: 5000
        }
    );
    assert_eq!(
        cfg.backends["web"].endpoints[1].state,
        EndpointState::Draining
    );
    assert_eq!(cfg.health.failures, 5);
    assert_eq!(cfg.health.cooldown_ms, 10_000);
}

/// Regression: `Backend::default()` once had `idle_timeout_ms: 0` (derived) while serde used
/// 30 s, so configs built in Rust silently disabled connection pooling (5x slower in the bench).
#[test]
fn rust_defaults_match_serde_defaults() {
    assert_eq!(
        serde_json::from_str::<wharf_proxy::Backend>("{}").unwrap(),
        wharf_proxy::Backend::default()
    );
    assert_eq!(
        serde_json::from_str::<Timeouts>("{}").unwrap(),
        Timeouts::default()
    );
    assert_eq!(
        serde_json::from_str::<PassiveHealth>("{}").unwrap(),
        PassiveHealth::default()
    );
    assert_eq!(
        serde_json::from_str::<Config>("{}").unwrap(),
        Config::default()
    );
}

#[tokio::test]
async fn thread_per_core_mode_serves_updates_and_stops() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let cfg = web(vec![a.endpoint(), b.endpoint()]);
    let proxy = Proxy::new(cfg.clone()).unwrap();
    let bound = proxy.bind_threads(2).unwrap();
    let addr = bound.http.unwrap();
    assert_ne!(addr.port(), 0);
    let mut bodies = Vec::new();
    for _ in 0..20 {
        bodies.push(get(addr, "x.test", "/").await.body);
    }
    // Connections land on either thread; each endpoint still gets requests.
    let c = counts(&bodies);
    assert!(
        c.get("a").copied().unwrap_or(0) > 0 && c.get("b").copied().unwrap_or(0) > 0,
        "{c:?}"
    );
    let mut next = cfg;
    next.backends.get_mut("web").unwrap().endpoints.remove(0);
    proxy.update(next).unwrap();
    for _ in 0..6 {
        assert_eq!(get(addr, "x.test", "/").await.body, "b");
    }
    assert!(matches!(
        proxy.bind_threads(1),
        Err(wharf_proxy::Error::AlreadyBound)
    ));
    proxy.shutdown();
    wait_for("the threads to close the listeners", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
}
