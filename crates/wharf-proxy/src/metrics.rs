//! In-memory counters, read as a [`Metrics`] snapshot (for the agent's status and exporters);
//! and each HTTP request recorded through the `metrics` facade (`wharf_ingress_requests_total`,
//! `wharf_ingress_request_duration_seconds`, by service and status), which the process's
//! Prometheus recorder exports where one is installed (the master's `/metrics` in `wharf up`,
//! `wharf agent --metrics-listen`); so are upstream connect errors, ejections (by service) and
//! open client connections (by protocol).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

/// Records one answered HTTP request: its status and the service of the endpoint that answered
/// (the endpoint id `stack.service.slot` without its slot; `none` when no endpoint did).
pub(crate) fn record_request(status: u16, endpoint: Option<&str>, started: std::time::Instant) {
    let service = endpoint.map_or("none", |e| e.rsplit_once('.').map_or(e, |(s, _)| s));
    metrics::counter!("wharf_ingress_requests_total",
        "service" => service.to_string(), "status" => status.to_string())
    .increment(1);
    metrics::histogram!("wharf_ingress_request_duration_seconds", "service" => service.to_string())
        .record(started.elapsed().as_secs_f64());
}

/// The service of an endpoint id (`stack.service.slot`).
fn service_of(endpoint: &str) -> String {
    endpoint
        .rsplit_once('.')
        .map_or(endpoint, |(s, _)| s)
        .to_string()
}

/// A connect to an endpoint failed (`ejected`: and it was ejected for it).
pub(crate) fn connect_failed(endpoint: &str, ejected: bool) {
    let service = service_of(endpoint);
    if ejected {
        metrics::counter!("wharf_ingress_ejections_total", "service" => service).increment(1);
    } else {
        metrics::counter!("wharf_ingress_upstream_connect_errors_total", "service" => service)
            .increment(1);
    }
}

/// One open client connection, counted in `wharf_ingress_active_connections` while it lives.
pub(crate) struct Open(metrics::Gauge);

impl Open {
    pub(crate) fn connection(protocol: &'static str) -> Open {
        let g = metrics::gauge!("wharf_ingress_active_connections", "protocol" => protocol);
        g.increment(1.0);
        Open(g)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Proxy-wide counters (endpoint counters live with the endpoints).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) no_route: AtomicU64,
    pub(crate) no_endpoint: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) backend_errors: AtomicU64,
    pub(crate) redirects: AtomicU64,
    pub(crate) tcp_connections: AtomicU64,
}

impl Counters {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
}

/// A snapshot of the proxy's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Metrics {
    /// HTTP requests received.
    pub requests: u64,
    /// Requests answered 404 because no route matched.
    pub no_route: u64,
    /// Requests answered 502 because no endpoint could be connected.
    pub no_endpoint: u64,
    /// Requests answered 504 (connect or response timeout).
    pub timeouts: u64,
    /// Requests answered 502 because the backend failed after the request was sent.
    pub backend_errors: u64,
    /// Requests redirected to HTTPS.
    pub redirects: u64,
    /// TCP connections accepted on TCP listeners.
    pub tcp_connections: u64,
    /// Per endpoint of the current config, ordered by backend then config order.
    pub endpoints: Vec<EndpointMetrics>,
}

impl Metrics {
    /// The counters of one endpoint, if it is in the current config.
    pub fn endpoint(&self, backend: &str, id: &str) -> Option<&EndpointMetrics> {
        self.endpoints
            .iter()
            .find(|e| e.backend == backend && e.id == id)
    }
}

/// Counters and state of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointMetrics {
    /// Backend pool name.
    pub backend: String,
    /// Endpoint id.
    pub id: String,
    /// Address.
    pub addr: SocketAddr,
    /// Requests (HTTP) or connections (TCP) sent to it, retries included.
    pub requests: u64,
    /// Connect failures plus failures after the request was sent.
    pub errors: u64,
    /// Connect failures (refused, unreachable, timed out).
    pub connect_failures: u64,
    /// HTTP connections opened to it (few, thanks to keep-alive pooling).
    pub connections_opened: u64,
    /// Requests or connections in flight now.
    pub in_flight: u64,
    /// Taken out by passive health checking now.
    pub ejected: bool,
    /// Draining per the config.
    pub draining: bool,
}
