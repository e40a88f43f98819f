//! The configuration model: listeners, routes and backend pools, as plain serde types.
//!
//! This is the one serialisable boundary of the crate. The agent builds a [`Config`] from the
//! services it runs and hands it to [`crate::Proxy::update`]; everything else is derived from it
//! and compiled into a [`crate::table`] when the config is applied.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The whole proxy configuration. Applied atomically by [`crate::Proxy::update`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where to listen. Fixed for the life of a [`crate::Proxy`]: an update must keep them.
    #[serde(default)]
    pub listeners: Listeners,
    /// HTTP routes, matched by host then by the longest path prefix.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Backend pools by name, referred to by routes and TCP listeners.
    #[serde(default)]
    pub backends: BTreeMap<String, Backend>,
    /// Passive health checking: when an endpoint is taken out after connect failures.
    #[serde(default)]
    pub health: PassiveHealth,
}

/// The listening sockets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// Plain HTTP (HTTP/1.1, and HTTP/2 with prior knowledge).
    pub http: Option<SocketAddr>,
    /// HTTPS with TLS termination (HTTP/2 negotiated by ALPN).
    pub https: Option<HttpsListener>,
    /// Plain TCP ports, each forwarded to one backend pool.
    #[serde(default)]
    pub tcp: Vec<TcpListener>,
}

/// The HTTPS listener and its certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsListener {
    /// Address to bind.
    pub addr: SocketAddr,
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A TCP port forwarded to a backend pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpListener {
    /// Address to bind.
    pub addr: SocketAddr,
    /// Name of the backend pool in [`Config::backends`].
    pub backend: String,
    /// How long to wait for a backend connection, in milliseconds.
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
}

/// An HTTP route: which requests go to which backend pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Host names (`app.example.com`, or `*.example.com` for exactly one more label). Empty
    /// means any host. Matched case-insensitively, without the port.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path prefix, matched on segment boundaries (`/api` matches `/api` and `/api/x`, not
    /// `/apix`). Defaults to `/`.
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// Name of the backend pool in [`Config::backends`].
    pub backend: String,
    /// Answer plain-HTTP requests with a permanent redirect (308) to HTTPS.
    #[serde(default)]
    pub redirect_https: bool,
    /// Timeouts for requests on this route.
    #[serde(default)]
    pub timeouts: Timeouts,
}

/// Per-route timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// How long to wait for a TCP connection to an endpoint, in milliseconds. A connect timeout
    /// counts as a connect failure: the request is tried on another endpoint.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// How long sending the request (body included) and waiting for the response head may
    /// take, in milliseconds. Exceeding it answers 504. Streaming the response body is not
    /// limited (nor is a WebSocket after its upgrade).
    #[serde(default = "default_request_ms")]
    pub request_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: default_connect_ms(),
            request_ms: default_request_ms(),
        }
    }
}

impl Timeouts {
    /// The connect timeout.
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    /// The request (time to response head) timeout.
    pub fn request(&self) -> Duration {
        Duration::from_millis(self.request_ms)
    }
}

/// A pool of endpoints and how to spread requests over them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// The endpoints (container addresses).
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// How to choose an endpoint for a new request or connection.
    #[serde(default)]
    pub balance: Balance,
    /// Pin clients to an endpoint with a cookie (HTTP only).
    #[serde(default)]
    pub sticky: Option<Sticky>,
    /// How long an idle pooled connection to an endpoint is kept, in milliseconds. Keep it below
    /// the backend's own keep-alive timeout; 0 disables pooling.
    #[serde(default = "default_idle_ms")]
    pub idle_timeout_ms: u64,
}

impl Default for Backend {
    fn default() -> Self {
        Backend {
            endpoints: Vec::new(),
            balance: Balance::default(),
            sticky: None,
            idle_timeout_ms: default_idle_ms(),
        }
    }
}

/// One endpoint of a pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Stable id (e.g. the container name); the value of the sticky cookie, and the key that
    /// keeps health and metrics across updates.
    pub id: String,
    /// Address to connect to.
    pub addr: SocketAddr,
    /// Whether it takes new requests.
    #[serde(default)]
    pub state: EndpointState,
}

/// Whether an endpoint takes new requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    /// Takes new requests and connections.
    #[default]
    Serving,
    /// Takes nothing new (sticky cookies included); what is in flight finishes.
    Draining,
}

/// Balancing algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint with the fewest requests in flight (ties broken round robin).
    LeastRequests,
}

/// Sticky sessions by cookie: the cookie's value is the endpoint id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sticky {
    /// Cookie name.
    pub cookie: String,
}

/// Passive health checking settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    /// Consecutive connect failures that eject an endpoint (at least 1).
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// How long an ejected endpoint is left out, in milliseconds.
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
    /// How many other endpoints a request or connection may be tried on after a connect failure.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            failures: default_failures(),
            cooldown_ms: default_cooldown_ms(),
            retries: default_retries(),
        }
    }
}

fn default_connect_ms() -> u64 {
    3_000
}
fn default_request_ms() -> u64 {
    60_000
}
fn default_idle_ms() -> u64 {
    30_000
}
fn default_prefix() -> String {
    "/".to_owned()
}
fn default_failures() -> u32 {
    3
}
fn default_cooldown_ms() -> u64 {
    10_000
}
fn default_retries() -> u32 {
    2
}

impl Config {
    /// Checks references and value syntax; [`crate::Proxy::new`] and [`crate::Proxy::update`]
    /// call it, so a bad config is refused before anything changes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let known = |name: &str, user: String| {
            if self.backends.contains_key(name) {
                Ok(())
            } else {
                Err(ConfigError::UnknownBackend {
                    backend: name.to_owned(),
                    user,
                    known: self.backends.keys().cloned().collect::<Vec<_>>().join(", "),
                })
            }
        };
        for (i, route) in self.routes.iter().enumerate() {
            known(&route.backend, format!("route {i}"))?;
            if !route.path_prefix.starts_with('/') {
                return Err(ConfigError::BadPathPrefix {
                    route: i,
                    prefix: route.path_prefix.clone(),
                });
            }
            for host in &route.hosts {
                let name = host.strip_prefix("*.").unwrap_or(host);
                let bad = name.is_empty()
                    || name.contains('*')
                    || name.contains(':')
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if bad {
                    return Err(ConfigError::BadHost {
                        route: i,
                        host: host.clone(),
                    });
                }
            }
            if route.timeouts.connect_ms == 0 || route.timeouts.request_ms == 0 {
                return Err(ConfigError::ZeroTimeout {
                    what: format!("route {i}"),
                });
            }
            if route.redirect_https && self.listeners.https.is_none() {
                return Err(ConfigError::RedirectWithoutHttps { route: i });
            }
        }
        for tcp in &self.listeners.tcp {
            known(&tcp.backend, format!("tcp listener {}", tcp.addr))?;
            if tcp.connect_timeout_ms == 0 {
                return Err(ConfigError::ZeroTimeout {
                    what: format!("tcp listener {}", tcp.addr),
                });
            }
        }
        for (name, backend) in &self.backends {
            let mut ids = std::collections::HashSet::new();
            for ep in &backend.endpoints {
                if !ids.insert(ep.id.as_str()) {
                    return Err(ConfigError::DuplicateEndpoint {
                        backend: name.clone(),
                        id: ep.id.clone(),
                    });
                }
                if ep.id.is_empty()
                    || !ep
                        .id
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
                {
                    return Err(ConfigError::BadEndpointId {
                        backend: name.clone(),
                        id: ep.id.clone(),
                    });
                }
            }
            if let Some(sticky) = &backend.sticky {
                let ok = !sticky.cookie.is_empty()
                    && sticky
                        .cookie
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    return Err(ConfigError::BadCookieName {
                        backend: name.clone(),
                        cookie: sticky.cookie.clone(),
                    });
                }
            }
        }
        if self.health.failures == 0 {
            return Err(ConfigError::ZeroFailures);
        }
        Ok(())
    }
}
