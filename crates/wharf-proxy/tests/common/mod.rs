//! Test harness: tiny in-process backends that answer their id, a one-shot HTTP client, config
//! builders and `wait_for`.

#![allow(dead_code)]

use parking_lot::Mutex;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::{http1, http2};
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use wharf_proxy::{Backend, Config, Endpoint, EndpointState, Listeners, Route};

/// Every test is bounded: a hang fails with a message instead of stalling the suite.
pub const LIMIT: Duration = Duration::from_secs(10);

/// An HTTP backend: `/slow` waits for [`TestBackend::release`], `/ws` upgrades and echoes
/// bytes, anything else answers the id at once.
pub struct TestBackend {
    pub id: String,
    pub addr: SocketAddr,
    pub hits: AtomicUsize,
    pub slow_started: AtomicUsize,
    pub last_headers: Mutex<Option<HeaderMap>>,
    gate: watch::Sender<bool>,
}

impl TestBackend {
    pub async fn start(id: &str) -> Arc<TestBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Arc::new(TestBackend {
            id: id.to_owned(),
            addr: listener.local_addr().unwrap(),
            hits: AtomicUsize::new(0),
            slow_started: AtomicUsize::new(0),
            last_headers: Mutex::new(None),
            gate: watch::channel(false).0,
        });
        let b = backend.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let b = b.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| b.clone().answer(req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        backend
    }

    /// Lets every `/slow` request (waiting or future) answer.
    pub fn release(&self) {
        self.gate.send_replace(true);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(SeqCst)
    }

    pub fn endpoint(&self) -> Endpoint {
        serving(&self.id, self.addr)
    }

    async fn answer(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        self.hits.fetch_add(1, SeqCst);
        *self.last_headers.lock() = Some(req.headers().clone());
        match req.uri().path() {
            "/echo" => {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let reply = format!("{} got {} bytes", self.id, body.len());
                return Ok(Response::new(Full::new(Bytes::from(reply))));
            }
            "/slow" => {
                self.slow_started.fetch_add(1, SeqCst);
                let mut gate = self.gate.subscribe();
                let _ = gate.wait_for(|open| *open).await;
            }
            "/ws" => {
                let upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let mut io = TokioIo::new(upgrade.await.unwrap());
                    let mut buf = [0u8; 1024];
                    loop {
                        let n = io.read(&mut buf).await.unwrap_or(0);
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let resp = Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header("connection", "upgrade")
                    .header("upgrade", "websocket")
                    .body(Full::default())
                    .unwrap();
                return Ok(resp);
            }
            _ => {}
        }
        Ok(Response::new(Full::new(Bytes::from(self.id.clone()))))
    }
}

/// A TCP backend that writes its id and a newline, then echoes.
pub async fn tcp_echo(id: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hello = format!("{id}\n").into_bytes();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let hello = hello.clone();
            tokio::spawn(async move {
                stream.write_all(&hello).await.unwrap();
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A backend that reads a request and closes the connection without answering; counts the
/// connections it accepted.
pub async fn black_hole() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            n.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    (addr, accepted)
}

/// An address where nothing listens: connecting is refused.
pub async fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// A response, read to the end.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// An HTTP/1.1 client connection over `io` (a TCP or TLS stream), its driver spawned.
pub async fn http1<B, T>(io: T) -> http1::SendRequest<B>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// An HTTP/2 client connection over `io` (prior knowledge, or negotiated by ALPN), its driver
/// spawned.
pub async fn http2<B, T>(io: T) -> http2::SendRequest<B>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// A response's body, read to the end.
pub async fn body_of(resp: Response<Incoming>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

/// Sends one request on a new HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, req: Request<Empty<Bytes>>) -> Resp {
    let fut = async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut sender = http1(stream).await;
        let resp = sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Resp {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    };
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("request through the proxy did not finish in time")
}

pub fn req(host: &str, path: &str) -> hyper::http::request::Builder {
    Request::builder().uri(path).header("host", host)
}

/// GET `path` with `Host: host`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Resp {
    send(addr, req(host, path).body(Empty::new()).unwrap()).await
}

/// Waits until `cond` holds, polling; panics with `what` after [`LIMIT`].
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A config with an HTTP listener on a free port, the given routes and backends.
pub fn config(routes: Vec<Route>, backends: Vec<(&str, Backend)>) -> Config {
    Config {
        listeners: Listeners {
            http: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        },
        routes,
        backends: backends
            .into_iter()
            .map(|(n, b)| (n.to_owned(), b))
            .collect(),
        health: Default::default(),
    }
}

/// A config whose one route (any host and path) leads to the pool `web` of `endpoints`.
pub fn web(endpoints: Vec<Endpoint>) -> Config {
    config(vec![route("web")], vec![("web", pool(endpoints))])
}

/// A route for any host and path.
pub fn route(backend: &str) -> Route {
    Route {
        hosts: vec![],
        path_prefix: "/".into(),
        backend: backend.into(),
        redirect_https: false,
        redirect_port: None,
        timeouts: Default::default(),
    }
}

/// A serving endpoint `id` at `addr` (one that is not a [`TestBackend`]).
pub fn serving(id: &str, addr: SocketAddr) -> Endpoint {
    Endpoint {
        id: id.into(),
        addr,
        state: EndpointState::Serving,
    }
}

/// A round-robin backend pool over `endpoints`.
pub fn pool(endpoints: Vec<Endpoint>) -> Backend {
    Backend {
        endpoints,
        ..Default::default()
    }
}
