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

/// The HTTPS listener and its certificates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsListener {
    /// Address to bind.
    pub addr: SocketAddr,
    /// The certificates (at least one), chosen per connection by the name the client asks for
    /// (SNI): an exact host, then a wildcard, then a certificate without hosts; a client that
    /// asks for no name or an unknown one gets the certificate without hosts, else the first.
    pub certificates: Vec<Certificate>,
}

impl HttpsListener {
    /// A listener with one certificate for every name, from PEM files.
    pub fn from_files(addr: SocketAddr, cert: PathBuf, key: PathBuf) -> HttpsListener {
        HttpsListener {
            addr,
            certificates: vec![Certificate {
                hosts: Vec::new(),
                pem: Pem::Files { cert, key },
            }],
        }
    }
}

/// One certificate of an HTTPS listener and the host names it is served for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// Host names (`app.example.com`, `*.example.com`) whose connections get this certificate.
    /// Empty: the default certificate.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The certificate chain and key.
    pub pem: Pem,
}

/// Where a certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1) come
/// from. Read and checked whenever a config is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Pem {
    /// PEM files.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// PEM text.
    Inline {
        /// The certificate chain.
        cert: String,
        /// The private key: never shown by `Debug`.
        key: SecretPem,
    },
}

/// A private key as PEM text. `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretPem(pub String);

impl std::fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretPem(<{} bytes>)", self.0.len())
    }
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
    /// The port of the redirect's location (443 is left out of it). `None`: the port of this
    /// proxy's HTTPS listener, which must then exist.
    #[serde(default)]
    pub redirect_port: Option<u16>,
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
        let check_host = |host: &String, route: usize| {
            let name = host.strip_prefix("*.").unwrap_or(host);
            let bad = name.is_empty()
                || name.contains('*')
                || name.contains(':')
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if bad {
                return Err(ConfigError::BadHost {
                    route,
                    host: host.clone(),
                });
            }
            Ok(())
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
                check_host(host, i)?;
            }
            if route.timeouts.connect_ms == 0 || route.timeouts.request_ms == 0 {
                return Err(ConfigError::ZeroTimeout {
                    what: format!("route {i}"),
                });
            }
            if route.redirect_https
                && self.listeners.https.is_none()
                && route.redirect_port.is_none()
            {
                return Err(ConfigError::RedirectWithoutHttps { route: i });
            }
        }
        if let Some(https) = &self.listeners.https {
            if https.certificates.is_empty() {
                return Err(ConfigError::NoCertificate);
            }
            for c in &https.certificates {
                for host in &c.hosts {
                    check_host(host, usize::MAX)
                        .map_err(|_| ConfigError::BadCertificateHost { host: host.clone() })?;
                }
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
