//! The ingress load balancer of Wharf: routes HTTP/1.1, HTTP/2 (h2 over TLS, h2c by prior
//! knowledge), WebSocket and plain TCP traffic to the endpoints (containers) of backend pools,
//! with a config that is swapped live.
//!
//! Code map:
//! - [`config`]: the serde config model (listeners, routes, backends, passive health);
//! - `table`: host and path prefix to route;
//! - `backend`: endpoint selection, passive health, per-endpoint connection pool;
//! - `http`: the request path (route → rewrite → pick and send → respond);
//! - `tcp`: TCP proxying;
//! - `tls`: rustls server config from PEM files or text, a certificate chosen by SNI;
//! - `runtime`: a config compiled for serving (route table, pools, TLS acceptor) and the state
//!   the accept loops share;
//! - `proxy`: [`Proxy`], listeners, accept loops, live update;
//! - `error`: the proxy's errors.
//!
//! Names run one way: config → runtime → proxy (listeners) → http | tcp → backend.
//! - [`metrics`]: the counters snapshot.
//!
//! **Invariant:** a request reads the config once; once sent to an endpoint it is never sent
//! again (only connect failures are retried, on another endpoint).

mod backend;
pub mod config;
mod error;
mod http;
pub mod metrics;
mod proxy;
mod runtime;
mod table;
mod tcp;
mod tls;

pub use config::{
    Backend, Balance, Certificate, Config, Endpoint, EndpointState, HttpsListener, Listeners,
    PassiveHealth, Pem, Route, SecretPem, Sticky, TcpListener, Timeouts,
};
pub use error::{ConfigError, Error};
pub use metrics::{EndpointMetrics, Metrics};
pub use proxy::{Bound, Proxy};
