//! The [`Proxy`]: compiles a [`Config`] into a runtime, binds the listeners, runs the accept
//! loops and swaps the runtime live on [`Proxy::update`].
//!
//! The runtime sits behind an `ArcSwap`: every request or TCP connection reads it once and keeps
//! what it read, so an update only affects what starts after it.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::backend::{self, EndpointRt};
use crate::config::{Config, Listeners};
use crate::error::Error;
use crate::http::{self, ConnInfo};
use crate::metrics::{Counters, EndpointMetrics, Metrics};
use crate::runtime::{Shared, builder, compile};
use crate::tcp;

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Listen backlog: bursts of new connections (the bench opens thousands) must not be refused.
const BACKLOG: u32 = 4096;

/// An ingress proxy: HTTP, HTTPS and TCP listeners in front of backend pools.
///
/// Create it with [`Proxy::new`], start it with [`Proxy::bind`], change routes and endpoints
/// with [`Proxy::update`]. Dropping it stops the listeners; connections already accepted
/// finish on their own.
pub struct Proxy {
    shared: Arc<Shared>,
    listeners: Listeners,
    update_lock: Mutex<()>,
    tasks: Mutex<Option<Tasks>>,
}

/// The addresses really bound (port 0 resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// The HTTP listener.
    pub http: Option<SocketAddr>,
    /// The HTTPS listener.
    pub https: Option<SocketAddr>,
    /// The TCP listeners, in config order.
    pub tcp: Vec<SocketAddr>,
}

impl Proxy {
    /// Validates and compiles `config` (TLS files are read here). Nothing is bound yet.
    pub fn new(config: Config) -> Result<Proxy, Error> {
        config.validate()?;
        let listeners = config.listeners.clone();
        let runtime = compile(config, None)?;
        let shared = Arc::new(Shared {
            runtime: ArcSwap::from_pointee(runtime),
            counters: Counters::default(),
            https_port: AtomicU16::new(0),
            auto: builder(),
            h1: builder().http1_only(),
            h2: builder().http2_only(),
        });
        Ok(Proxy {
            shared,
            listeners,
            update_lock: Mutex::new(()),
            tasks: Mutex::new(None),
        })
    }

    /// Binds every listener, and only then starts serving on the current tokio runtime, so
    /// that any bind error fails the whole start. Returns the addresses really bound.
    pub async fn bind(&self) -> Result<Bound, Error> {
        if self.lock_tasks().is_some() {
            return Err(Error::AlreadyBound);
        }
        let (listeners, bound) = bind_all(&self.listeners, None, false)?;
        self.set_bound(&bound);
        let tasks = listeners
            .into_iter()
            .map(|(l, kind)| tokio::spawn(accept_loop(l, kind, self.shared.clone())))
            .collect();
        self.install(Tasks::Runtime(tasks))?;
        tracing::info!(?bound, "proxy listening");
        Ok(bound)
    }

    /// Like [`Proxy::bind`], but serves on `threads` dedicated OS threads, each with its own
    /// single-threaded tokio runtime and its own `SO_REUSEPORT` sockets: the kernel spreads
    /// connections over the threads and a connection, its requests and (mostly) its backend
    /// connections stay on one thread, as in HAProxy or nginx. On a loaded 2-core machine this
    /// served about 1.3x the requests of a 2-worker work-stealing runtime.
    ///
    /// Blocks the caller until every thread has bound its sockets (milliseconds). Dropping the
    /// proxy or [`Proxy::shutdown`] stops the threads and their connections.
    pub fn bind_threads(&self, threads: usize) -> Result<Bound, Error> {
        if self.lock_tasks().is_some() {
            return Err(Error::AlreadyBound);
        }
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut handles = Vec::new();
        let mut bound: Option<Bound> = None;
        for worker in 0..threads.max(1) {
            let (report_tx, report_rx) = std::sync::mpsc::channel();
            let (shared, listeners, fixed) =
                (self.shared.clone(), self.listeners.clone(), bound.clone());
            let mut stop_rx = stop.subscribe();
            let thread = std::thread::Builder::new()
                .name(format!("wharf-proxy-{worker}"))
                .spawn(move || {
                    backend::set_worker(worker);
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let addr = listeners
                                .http
                                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                            let _ = report_tx.send(Err(Error::Bind {
                                addr,
                                what: "runtime",
                                source: e,
                            }));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let (socks, bound) = match bind_all(&listeners, fixed.as_ref(), true) {
                            Ok(x) => x,
                            Err(e) => return drop(report_tx.send(Err(e))),
                        };
                        let _ = report_tx.send(Ok(bound));
                        for (l, kind) in socks {
                            tokio::spawn(accept_loop(l, kind, shared.clone()));
                        }
                        let _ = stop_rx.wait_for(|stop| *stop).await;
                    });
                });
            let thread = thread.map_err(|source| Error::Bind {
                addr: self
                    .listeners
                    .http
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                what: "thread",
                source,
            })?;
            handles.push(thread);
            match report_rx.recv() {
                Ok(Ok(b)) => bound = Some(b),
                Ok(Err(e)) => {
                    stop.send_replace(true);
                    return Err(e);
                }
                Err(_) => {
                    stop.send_replace(true);
                    return Err(Error::WorkerDied { worker });
                }
            }
        }
        let bound = bound.expect("at least one worker bound");
        self.set_bound(&bound);
        self.install(Tasks::Threads { stop, handles })?;
        tracing::info!(?bound, threads, "proxy listening");
        Ok(bound)
    }

    fn lock_tasks(&self) -> parking_lot::MutexGuard<'_, Option<Tasks>> {
        self.tasks.lock()
    }

    fn set_bound(&self, bound: &Bound) {
        if let Some(addr) = bound.https {
            self.shared.https_port.store(addr.port(), Relaxed);
        }
    }

    fn install(&self, tasks: Tasks) -> Result<(), Error> {
        let mut slot = self.lock_tasks();
        if slot.is_some() {
            tasks.stop();
            return Err(Error::AlreadyBound);
        }
        *slot = Some(tasks);
        Ok(())
    }

    /// Applies a new config atomically. Requests and connections in flight finish on the
    /// endpoint they have; new ones follow `config`. Endpoints keep their health, counters and
    /// pooled connections when their backend name, id and address are unchanged. Listener
    /// addresses must stay the same (certificate files may change: they are read again).
    pub fn update(&self, config: Config) -> Result<(), Error> {
        config.validate()?;
        let (old, new) = (&self.listeners, &config.listeners);
        let detail = if old.http != new.http {
            Some(format!("http {:?} -> {:?}", old.http, new.http))
        } else if old.https.as_ref().map(|h| h.addr) != new.https.as_ref().map(|h| h.addr) {
            Some("https address".to_owned())
        } else if old
            .tcp
            .iter()
            .map(|t| t.addr)
            .ne(new.tcp.iter().map(|t| t.addr))
        {
            Some("tcp addresses".to_owned())
        } else {
            None
        };
        if let Some(detail) = detail {
            return Err(Error::ListenersChanged { detail });
        }
        let _serial = self.update_lock.lock();
        let previous = self.shared.runtime.load_full();
        let runtime = compile(config, Some(&previous))?;
        let kept: std::collections::HashSet<*const EndpointRt> = runtime
            .pools
            .values()
            .flat_map(|p| p.endpoints.iter().map(Arc::as_ptr))
            .collect();
        self.shared.runtime.store(Arc::new(runtime));
        for ep in previous.pools.values().flat_map(|p| p.endpoints.iter()) {
            if !kept.contains(&Arc::as_ptr(ep)) {
                ep.clear_idle();
            }
        }
        Ok(())
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.shared.runtime.load().config.clone()
    }

    /// A snapshot of the counters, with one entry per endpoint of the current config.
    pub fn metrics(&self) -> Metrics {
        let c = &self.shared.counters;
        let rt = self.shared.runtime.load();
        let endpoints = rt
            .pools
            .values()
            .flat_map(|p| p.endpoints.iter())
            .map(|e| EndpointMetrics {
                backend: e.backend.to_string(),
                id: e.id.to_string(),
                addr: e.addr,
                requests: e.requests.load(Relaxed),
                errors: e.errors.load(Relaxed),
                connect_failures: e.connect_failures.load(Relaxed),
                connections_opened: e.connects.load(Relaxed),
                in_flight: e.in_flight.load(Relaxed) as u64,
                ejected: e.is_ejected(),
                draining: e.draining.load(Relaxed),
            })
            .collect();
        Metrics {
            requests: c.requests.load(Relaxed),
            no_route: c.no_route.load(Relaxed),
            no_endpoint: c.no_endpoint.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
            backend_errors: c.backend_errors.load(Relaxed),
            redirects: c.redirects.load(Relaxed),
            tcp_connections: c.tcp_connections.load(Relaxed),
            endpoints,
        }
    }

    /// Stops accepting connections. With [`Proxy::bind`], connections already accepted finish
    /// on their own; with [`Proxy::bind_threads`], the threads end and take theirs along.
    pub fn shutdown(&self) {
        if let Some(tasks) = self.lock_tasks().take() {
            tasks.stop();
        }
    }
}

/// What serves the listeners.
enum Tasks {
    /// Accept loops on the caller's runtime.
    Runtime(Vec<JoinHandle<()>>),
    /// Dedicated threads, each with its runtime, ended by `stop`.
    Threads {
        stop: tokio::sync::watch::Sender<bool>,
        handles: Vec<std::thread::JoinHandle<()>>,
    },
}

impl Tasks {
    fn stop(self) {
        match self {
            Tasks::Runtime(tasks) => tasks.iter().for_each(|t| t.abort()),
            Tasks::Threads { stop, handles } => {
                stop.send_replace(true);
                // Not joined: a thread may be the caller's own (drop from inside a handler).
                drop(handles);
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Which listener a socket serves.
#[derive(Clone, Copy)]
enum Kind {
    Http,
    Https,
    Tcp(usize),
}

/// Binds every configured listener, at `fixed` addresses if given (further `SO_REUSEPORT`
/// sockets on ports already resolved).
fn bind_all(
    l: &Listeners,
    fixed: Option<&Bound>,
    reuseport: bool,
) -> Result<(Vec<(TcpListener, Kind)>, Bound), Error> {
    let mut out = Vec::new();
    if let Some(addr) = l.http {
        let addr = fixed.and_then(|b| b.http).unwrap_or(addr);
        out.push((listen(addr, "http", reuseport)?, Kind::Http));
    }
    if let Some(h) = &l.https {
        let addr = fixed.and_then(|b| b.https).unwrap_or(h.addr);
        out.push((listen(addr, "https", reuseport)?, Kind::Https));
    }
    for (i, t) in l.tcp.iter().enumerate() {
        let addr = fixed.and_then(|b| b.tcp.get(i).copied()).unwrap_or(t.addr);
        out.push((listen(addr, "tcp", reuseport)?, Kind::Tcp(i)));
    }
    let mut bound = Bound {
        http: None,
        https: None,
        tcp: Vec::new(),
    };
    for (listener, kind) in &out {
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        match kind {
            Kind::Http => bound.http = Some(addr),
            Kind::Https => bound.https = Some(addr),
            Kind::Tcp(_) => bound.tcp.push(addr),
        }
    }
    Ok((out, bound))
}

fn listen(addr: SocketAddr, what: &'static str, reuseport: bool) -> Result<TcpListener, Error> {
    let bind_err = |source| Error::Bind { addr, what, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(bind_err)?;
    socket.set_reuseaddr(true).map_err(bind_err)?;
    if reuseport {
        socket.set_reuseport(true).map_err(bind_err)?;
    }
    socket.bind(addr).map_err(bind_err)?;
    socket.listen(BACKLOG).map_err(bind_err)
}

async fn accept_loop(listener: TcpListener, kind: Kind, shared: Arc<Shared>) {
    match kind {
        Kind::Http => accept_http(listener, shared, false).await,
        Kind::Https => accept_http(listener, shared, true).await,
        Kind::Tcp(i) => accept_tcp(listener, shared, i).await,
    }
}

/// Accepts; on errors such as running out of file descriptors, waits a moment and goes on.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; hint: raise the open files limit (ulimit -n) if it says too many open files");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn accept_http(listener: TcpListener, shared: Arc<Shared>, tls: bool) {
    loop {
        let (stream, peer) = accept(&listener).await;
        let shared = shared.clone();
        let info = ConnInfo { peer, tls };
        let open = crate::metrics::Open::connection(if tls { "https" } else { "http" });
        tokio::spawn(async move {
            let _open = open;
            if !tls {
                return serve(&shared.auto, shared.clone(), TokioIo::new(stream), info).await;
            }
            let Some(acceptor) = shared.runtime.load().tls.clone() else {
                return;
            };
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let builder = if h2 { &shared.h2 } else { &shared.h1 };
            serve(builder, shared.clone(), TokioIo::new(stream), info).await
        });
    }
}

async fn serve<I>(
    builder: &auto::Builder<TokioExecutor>,
    shared: Arc<Shared>,
    io: TokioIo<I>,
    info: ConnInfo,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| http::handle(shared.clone(), info, req));
    if let Err(e) = builder.serve_connection_with_upgrades(io, svc).await {
        tracing::debug!(peer = %info.peer, error = %e, "client connection ended with an error");
    }
}

async fn accept_tcp(listener: TcpListener, shared: Arc<Shared>, index: usize) {
    loop {
        let (stream, peer) = accept(&listener).await;
        Counters::inc(&shared.counters.tcp_connections);
        let route = shared.runtime.load().tcp[index].clone();
        let open = crate::metrics::Open::connection("tcp");
        tokio::spawn(async move {
            let _open = open;
            tcp::serve(route, stream, peer).await
        });
    }
}
