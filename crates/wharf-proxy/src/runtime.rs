//! A config compiled for serving: the route table, the backend pools with their live endpoints,
//! the TCP listeners' pools and the TLS acceptor (`Runtime`), and the state every accept loop and
//! request shares (`Shared`). Sits between `config` and the listeners (`proxy`), which `http` and
//! `tcp` serve from.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio_rustls::TlsAcceptor;

use crate::backend::{EndpointRt, PoolRt};
use crate::config::{Config, EndpointState, Timeouts};
use crate::error::Error;
use crate::metrics::Counters;
use crate::table::RouteTable;
use crate::tls;

/// State shared by the accept loops and request handlers.
pub(crate) struct Shared {
    pub(crate) runtime: ArcSwap<Runtime>,
    pub(crate) counters: Counters,
    /// The bound HTTPS port, for redirects.
    pub(crate) https_port: AtomicU16,
    /// Plain HTTP: HTTP/1.1 or HTTP/2 prior knowledge, detected from the first bytes.
    pub(crate) auto: auto::Builder<TokioExecutor>,
    /// TLS with ALPN `http/1.1` (or none).
    pub(crate) h1: auto::Builder<TokioExecutor>,
    /// TLS with ALPN `h2`.
    pub(crate) h2: auto::Builder<TokioExecutor>,
}

/// One config, compiled.
pub(crate) struct Runtime {
    pub(crate) config: Arc<Config>,
    pub(crate) table: RouteTable<Arc<RouteRt>>,
    pub(crate) pools: BTreeMap<String, Arc<PoolRt>>,
    pub(crate) tcp: Vec<Arc<TcpRt>>,
    pub(crate) tls: Option<TlsAcceptor>,
}

/// A compiled route.
pub(crate) struct RouteRt {
    pub(crate) pool: Arc<PoolRt>,
    pub(crate) timeouts: Timeouts,
    pub(crate) redirect_https: bool,
    pub(crate) redirect_port: Option<u16>,
}

/// A compiled TCP listener.
pub(crate) struct TcpRt {
    pub(crate) pool: Arc<PoolRt>,
    pub(crate) connect_timeout: Duration,
}

pub(crate) fn builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .writev(false);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    b
}

/// Builds the runtime; endpoints of `previous` with the same backend, id and address are reused.
pub(crate) fn compile(config: Config, previous: Option<&Runtime>) -> Result<Runtime, Error> {
    // Fallible work first: a failed update must change nothing.
    let tls = match &config.listeners.https {
        Some(h) => Some(TlsAcceptor::from(tls::server_config(h)?)),
        None => None,
    };
    let mut reuse: HashMap<(&str, &str), &Arc<EndpointRt>> = HashMap::new();
    if let Some(prev) = previous {
        for (name, pool) in &prev.pools {
            for ep in &pool.endpoints {
                reuse.insert((name.as_str(), &ep.id), ep);
            }
        }
    }
    let mut pools = BTreeMap::new();
    for (name, backend) in &config.backends {
        let pool_name: Arc<str> = name.as_str().into();
        let endpoints = backend
            .endpoints
            .iter()
            .map(|e| {
                let ep = match reuse.get(&(name.as_str(), e.id.as_str())) {
                    Some(old) if old.addr == e.addr => Arc::clone(old),
                    _ => Arc::new(EndpointRt::new(pool_name.clone(), &e.id, e.addr)),
                };
                ep.draining
                    .store(e.state == EndpointState::Draining, Relaxed);
                ep.set_idle_timeout(backend.idle_timeout_ms);
                ep
            })
            .collect();
        let sticky = backend.sticky.as_ref().map(|s| s.cookie.as_str().into());
        let pool = PoolRt::new(pool_name, endpoints, backend.balance, sticky, config.health);
        pools.insert(name.clone(), Arc::new(pool));
    }
    let routes: Vec<_> = config
        .routes
        .iter()
        .map(|r| {
            let rt = RouteRt {
                pool: pools[&r.backend].clone(),
                timeouts: r.timeouts,
                redirect_https: r.redirect_https,
                redirect_port: r.redirect_port,
            };
            (r.hosts.as_slice(), r.path_prefix.as_str(), Arc::new(rt))
        })
        .collect();
    let table = RouteTable::new(routes);
    let tcp = config
        .listeners
        .tcp
        .iter()
        .map(|t| {
            let connect_timeout = Duration::from_millis(t.connect_timeout_ms);
            Arc::new(TcpRt {
                pool: pools[&t.backend].clone(),
                connect_timeout,
            })
        })
        .collect();
    Ok(Runtime {
        config: Arc::new(config),
        table,
        pools,
        tcp,
        tls,
    })
}
