//! Typed errors: a bad config, a listener that cannot be bound, a certificate that cannot be read.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can fail when creating, binding or updating a [`crate::Proxy`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config is invalid; nothing was changed.
    #[error("invalid proxy config: {0}")]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error(
        "cannot listen on {addr} ({what}): {source}; hint: is another process using the port, or is it below 1024 without the privilege?"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A certificate or key could not be used.
    #[error(
        "cannot use TLS {what} {path}: {detail}; hint: PEM is expected, the key as PKCS#8, PKCS#1 or SEC1"
    )]
    Tls {
        /// "certificate" or "key".
        what: &'static str,
        /// The file, or `(inline, for HOSTS)` for PEM text.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// `bind` was called twice.
    #[error("the proxy is already bound; hint: call bind once per Proxy")]
    AlreadyBound,
    /// A serving thread ended before it reported its sockets.
    #[error("proxy worker thread {worker} ended while binding; hint: look for a panic above")]
    WorkerDied {
        /// Index of the thread.
        worker: usize,
    },
    /// An update changed the listeners, which are fixed once bound.
    #[error(
        "an update cannot change listeners ({detail}); hint: create a new Proxy to listen elsewhere"
    )]
    ListenersChanged {
        /// What differs.
        detail: String,
    },
}

/// Why a [`crate::Config`] was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A route or TCP listener names a backend that is not defined.
    #[error("{user} refers to backend `{backend}`, which is not defined (defined: {known})")]
    UnknownBackend {
        /// The missing backend.
        backend: String,
        /// Who refers to it.
        user: String,
        /// The backends that exist.
        known: String,
    },
    /// A path prefix does not start with `/`.
    #[error("route {route}: path prefix `{prefix}` must start with `/`")]
    BadPathPrefix {
        /// Index of the route.
        route: usize,
        /// The prefix.
        prefix: String,
    },
    /// A host name is malformed.
    #[error(
        "route {route}: host `{host}` is not a host name; hint: write `app.example.com` or `*.example.com`, without port or scheme"
    )]
    BadHost {
        /// Index of the route.
        route: usize,
        /// The host.
        host: String,
    },
    /// A timeout of zero would fail every request.
    #[error("{what}: timeouts must be greater than zero")]
    ZeroTimeout {
        /// Which route or listener.
        what: String,
    },
    /// `redirect_https` without an HTTPS listener or a redirect port.
    #[error(
        "route {route} redirects to HTTPS but no HTTPS listener is configured; hint: add one, or set the route's redirect_port"
    )]
    RedirectWithoutHttps {
        /// Index of the route.
        route: usize,
    },
    /// Two endpoints of a backend share an id.
    #[error(
        "backend `{backend}`: endpoint id `{id}` appears twice; ids must be unique within a backend"
    )]
    DuplicateEndpoint {
        /// The backend.
        backend: String,
        /// The id.
        id: String,
    },
    /// An endpoint id cannot be a cookie value.
    #[error(
        "backend `{backend}`: endpoint id `{id}` must be non-empty visible ASCII without `;` or `,`"
    )]
    BadEndpointId {
        /// The backend.
        backend: String,
        /// The id.
        id: String,
    },
    /// A sticky cookie name is not a token.
    #[error(
        "backend `{backend}`: sticky cookie name `{cookie}` must be letters, digits, `-`, `_` or `.`"
    )]
    BadCookieName {
        /// The backend.
        backend: String,
        /// The name.
        cookie: String,
    },
    /// An HTTPS listener without certificates.
    #[error("the HTTPS listener has no certificate; hint: give it at least one")]
    NoCertificate,
    /// A certificate's host name is malformed.
    #[error(
        "certificate host `{host}` is not a host name; hint: write `app.example.com` or `*.example.com`, without port or scheme"
    )]
    BadCertificateHost {
        /// The host.
        host: String,
    },
    /// `health.failures` is zero.
    #[error("health.failures must be at least 1")]
    ZeroFailures,
}
