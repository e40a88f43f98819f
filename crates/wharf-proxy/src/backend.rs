//! Backend pools: endpoint selection (round robin, least requests, sticky), passive health
//! (ejection after consecutive connect failures), per-endpoint counters and the pool of idle
//! HTTP/1.1 connections to each endpoint.
//!
//! An [`EndpointRt`] outlives config updates as long as its backend name, id and address stay
//! the same, so health, counters and pooled connections carry over; requests in flight hold an
//! `Arc` to theirs and finish on it whatever the new config says.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::{Balance, PassiveHealth};

/// Milliseconds since the first call, never 0 (0 means "not ejected").
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Idle connections kept per endpoint and worker thread; more are closed when returned.
const MAX_IDLE: usize = 512;
/// Idle pools per endpoint: one per worker thread of [`crate::Proxy::bind_threads`] (modulo),
/// so that a request reuses a connection driven by its own thread.
const SLOTS: usize = 8;

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as serving worker `n` (its idle-connection slot).
pub(crate) fn set_worker(n: usize) {
    WORKER.with(|w| w.set(n % SLOTS));
}

fn slot() -> usize {
    WORKER.with(|w| w.get())
}

type Idle = Mutex<Vec<(SendRequest<Incoming>, u64)>>;

/// One endpoint: its address, state, health, counters and idle connections.
pub(crate) struct EndpointRt {
    pub(crate) backend: Arc<str>,
    pub(crate) id: Arc<str>,
    pub(crate) addr: SocketAddr,
    pub(crate) draining: AtomicBool,
    idle_timeout_ms: AtomicU64,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) requests: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) connects: AtomicU64,
    consecutive_failures: AtomicU32,
    ejected_until: AtomicU64,
    idle: [Idle; SLOTS],
}

/// Why a connection to an endpoint could not be made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Timeout,
    Io(std::io::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => f.write_str("connect timed out"),
            ConnectError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl EndpointRt {
    pub(crate) fn new(backend: Arc<str>, id: &str, addr: SocketAddr) -> Self {
        EndpointRt {
            backend,
            id: id.into(),
            addr,
            draining: AtomicBool::new(false),
            idle_timeout_ms: AtomicU64::new(30_000),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            idle: std::array::from_fn(|_| Mutex::new(Vec::new())),
        }
    }

    pub(crate) fn set_idle_timeout(&self, ms: u64) {
        self.idle_timeout_ms.store(ms, Relaxed);
    }

    pub(crate) fn is_ejected(&self) -> bool {
        let until = self.ejected_until.load(Relaxed);
        until != 0 && now_ms() < until
    }

    fn available(&self) -> bool {
        !self.draining.load(Relaxed) && !self.is_ejected()
    }

    /// Records a failed connect; ejects the endpoint after `health.failures` in a row.
    pub(crate) fn connect_failed(&self, health: &PassiveHealth, err: &ConnectError) {
        self.connect_failures.fetch_add(1, Relaxed);
        self.errors.fetch_add(1, Relaxed);
        crate::metrics::connect_failed(&self.id, false);
        let n = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if n >= health.failures {
            self.consecutive_failures.store(0, Relaxed);
            self.ejected_until
                .store(now_ms() + health.cooldown_ms, Relaxed);
            crate::metrics::connect_failed(&self.id, true);
            tracing::warn!(backend = %self.backend, endpoint = %self.id, addr = %self.addr, failures = n,
                cooldown_ms = health.cooldown_ms, error = %err, "endpoint ejected after connect failures");
        }
    }

    pub(crate) fn connect_succeeded(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    /// Opens a TCP connection with `TCP_NODELAY`.
    pub(crate) async fn connect_tcp(&self, timeout: Duration) -> Result<TcpStream, ConnectError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Err(_) => return Err(ConnectError::Timeout),
            Ok(Err(e)) => return Err(ConnectError::Io(e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// A new HTTP/1.1 connection; its driver task runs until the connection closes.
    pub(crate) async fn connect_http(
        &self,
        timeout: Duration,
    ) -> Result<SendRequest<Incoming>, ConnectError> {
        let stream = self.connect_tcp(timeout).await?;
        self.connects.fetch_add(1, Relaxed);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError::Io(std::io::Error::other(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// An idle pooled connection that looks usable, most recently used first.
    pub(crate) fn checkout(&self) -> Option<SendRequest<Incoming>> {
        let oldest = now_ms().saturating_sub(self.idle_timeout_ms.load(Relaxed));
        let mut idle = self.idle[slot()].lock();
        while let Some((sender, since)) = idle.pop() {
            if since >= oldest && sender.is_ready() {
                return Some(sender);
            }
            if since < oldest {
                // Everything below is older still.
                idle.clear();
            }
        }
        None
    }

    /// Returns a connection to the pool once it can take another request.
    pub(crate) fn checkin(self: Arc<Self>, mut sender: SendRequest<Incoming>) {
        if sender.is_ready() {
            self.put_idle(sender);
        } else if !sender.is_closed() {
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    self.put_idle(sender);
                }
            });
        }
    }

    fn put_idle(&self, sender: SendRequest<Incoming>) {
        let mut idle = self.idle[slot()].lock();
        if idle.len() < MAX_IDLE {
            idle.push((sender, now_ms()));
        }
    }

    /// Closes pooled connections (the endpoint left the config).
    pub(crate) fn clear_idle(&self) {
        for idle in &self.idle {
            idle.lock().clear();
        }
    }
}

/// Counts a request or connection in flight on an endpoint until dropped.
pub(crate) struct InFlight(pub(crate) Arc<EndpointRt>);

impl InFlight {
    pub(crate) fn new(ep: Arc<EndpointRt>) -> Self {
        ep.in_flight.fetch_add(1, Relaxed);
        ep.requests.fetch_add(1, Relaxed);
        InFlight(ep)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A backend pool as compiled from one config.
pub(crate) struct PoolRt {
    pub(crate) name: Arc<str>,
    pub(crate) endpoints: Vec<Arc<EndpointRt>>,
    pub(crate) balance: Balance,
    pub(crate) sticky: Option<Box<str>>,
    pub(crate) health: PassiveHealth,
    rr: AtomicUsize,
}

/// Endpoints already tried by one request (by index in the pool; beyond 128 not tracked).
#[derive(Default, Clone, Copy)]
pub(crate) struct Tried(u128);

impl Tried {
    fn has(self, i: usize) -> bool {
        i < 128 && self.0 & (1 << i) != 0
    }
    pub(crate) fn add(&mut self, i: usize) {
        if i < 128 {
            self.0 |= 1 << i;
        }
    }
}

impl PoolRt {
    pub(crate) fn new(
        name: Arc<str>,
        endpoints: Vec<Arc<EndpointRt>>,
        balance: Balance,
        sticky: Option<Box<str>>,
        health: PassiveHealth,
    ) -> Self {
        PoolRt {
            name,
            endpoints,
            balance,
            sticky,
            health,
            rr: AtomicUsize::new(0),
        }
    }

    /// The endpoint with this id if it may take a new request (for sticky cookies).
    pub(crate) fn by_id(&self, id: &str) -> Option<usize> {
        self.endpoints
            .iter()
            .position(|e| &*e.id == id && e.available())
    }

    /// Chooses an endpoint for a new request: serving, not ejected, not tried yet.
    pub(crate) fn pick(&self, tried: Tried) -> Option<usize> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.rr.fetch_add(1, Relaxed) % n;
        let candidates = (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| !tried.has(i) && self.endpoints[i].available());
        match self.balance {
            Balance::RoundRobin => candidates.into_iter().next(),
            Balance::LeastRequests => {
                candidates.min_by_key(|&i| self.endpoints[i].in_flight.load(Relaxed))
            }
        }
    }
}
