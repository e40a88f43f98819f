//! The node's ingress: one `wharf_proxy::Proxy` per listen address of the routing table the
//! master sends in every desired state (`NodeDesired::ingress`, the same on every node).
//!
//! A task owns the proxies and follows a watch channel of the table (`Agent::run` feeds it):
//! on every change it compiles one proxy config per listen address and applies it live
//! (`Proxy::update`; unchanged configs are left alone, so endpoints keep their health, counters
//! and pooled connections). A proxy's listeners are fixed once bound, hence one proxy per
//! address: a new address binds a new proxy, an address no route uses any more is closed (what
//! was accepted finishes). A listen port that cannot be bound (taken, privileged) is logged and
//! tried again every few seconds; the other addresses serve meanwhile.
//!
//! Endpoints are `address:port` of each route: the instance's IP (its address on the stack
//! network) and the route's container port. Draining endpoints take nothing new.
//!
//! A listen address is plain HTTP, HTTPS or TCP, fixed by the first route on it (in table
//! order); routes of another kind there are logged and skipped. The routes with `tls` on an
//! address become one HTTPS listener whose certificates are picked by SNI from the routes'
//! hosts; a `redirect_https` route answers with a redirect to its service's TLS listen port.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::watch;
use wharf_proxy::{
    Backend, Balance, Certificate, Config, Endpoint, EndpointState, HttpsListener, Pem, Proxy,
    Route, SecretPem, Sticky, TcpListener, Timeouts,
};
use wharf_types::{IngressBalance, IngressProtocol, IngressRoute, IngressService};

/// How often listen addresses that could not be bound are tried again.
const RETRY_BIND: Duration = Duration::from_secs(5);

/// Follow the routing table until its channel closes; then every listener is closed.
pub async fn run(mut table: watch::Receiver<Vec<IngressService>>) {
    let mut ingress = Ingress::default();
    loop {
        let current = table.borrow_and_update().clone();
        ingress.apply(&current).await;
        if ingress.unbound.is_empty() {
            if table.changed().await.is_err() {
                return;
            }
        } else {
            tokio::select! {
                r = table.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(RETRY_BIND) => {},
            }
        }
    }
}

/// The proxies of one node, by listen address.
#[derive(Default)]
pub struct Ingress {
    proxies: BTreeMap<SocketAddr, Proxy>,
    /// Addresses that could not be bound, with the error last logged for them.
    unbound: BTreeMap<SocketAddr, String>,
    /// Conflicts last logged, so that an unchanged table does not log them again.
    conflicts: BTreeSet<String>,
}

impl Ingress {
    /// Make the proxies match `table`.
    pub async fn apply(&mut self, table: &[IngressService]) {
        let (configs, conflicts) = configs(table);
        for c in &conflicts {
            if !self.conflicts.contains(c) {
                tracing::warn!("ingress: {c}");
            }
        }
        self.conflicts = conflicts.into_iter().collect();
        self.proxies.retain(|addr, _| {
            let keep = configs.contains_key(addr);
            if !keep {
                tracing::info!(%addr, "ingress: no route listens here any more; closing");
            }
            keep
        });
        self.unbound.retain(|addr, _| configs.contains_key(addr));
        for (addr, config) in configs {
            if let Some(proxy) = self.proxies.get(&addr) {
                if *proxy.config() == config {
                    continue;
                }
                match proxy.update(config.clone()) {
                    Ok(()) => continue,
                    Err(wharf_proxy::Error::ListenersChanged { .. }) => {
                        // HTTP became TCP or the other way round: listen again.
                        self.proxies.remove(&addr);
                    }
                    Err(e) => {
                        tracing::error!(%addr, error = %e, "ingress: cannot apply the routes; keeping the previous ones");
                        continue;
                    }
                }
            }
            let proxy = match Proxy::new(config) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(%addr, error = %e, "ingress: invalid routes; not listening");
                    continue;
                }
            };
            match proxy.bind().await {
                Ok(bound) => {
                    tracing::info!(%addr, ?bound, "ingress listening");
                    self.unbound.remove(&addr);
                    self.proxies.insert(addr, proxy);
                }
                Err(e) => {
                    let why = e.to_string();
                    if self.unbound.get(&addr) != Some(&why) {
                        tracing::warn!(%addr, error = %why, retry_in = ?RETRY_BIND, "ingress: cannot listen; its routes are not served on this node");
                    }
                    self.unbound.insert(addr, why);
                }
            }
        }
    }

    /// The addresses listened on.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.proxies.keys().copied().collect()
    }

    /// The config in force at `addr`.
    pub fn config(&self, addr: SocketAddr) -> Option<std::sync::Arc<Config>> {
        self.proxies.get(&addr).map(Proxy::config)
    }
}

/// One proxy config per listen address, and the routes left out because they conflict with an
/// earlier one (the table is sorted by stack and service, so the first comer wins everywhere).
pub fn configs(table: &[IngressService]) -> (BTreeMap<SocketAddr, Config>, Vec<String>) {
    let mut out: BTreeMap<SocketAddr, Config> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for s in table {
        for (i, r) in s.routes.iter().enumerate() {
            let ip = match r.listen_address.as_deref().map(str::parse::<IpAddr>) {
                None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Some(Ok(ip)) => ip,
                Some(Err(_)) => {
                    conflicts.push(format!(
                        "{}/{} route {i}: listen_address {:?} is not an IP address; skipped",
                        s.stack,
                        s.service,
                        r.listen_address.as_deref().unwrap_or_default()
                    ));
                    continue;
                }
            };
            let addr = SocketAddr::new(ip, r.listen);
            let name = format!("{}.{}#{i}", s.stack, s.service);
            let config = out.entry(addr).or_default();
            if let Some(kind) = taken_by(config, r) {
                conflicts.push(format!(
                    "{}/{} route {i}: {addr} is already taken by another service's {kind} route; skipped",
                    s.stack, s.service,
                ));
                continue;
            }
            let redirect_port = match (r.redirect_https, r.tls.is_some()) {
                (true, false) => match wharf_types::redirect_port(&s.routes, i) {
                    Some(port) => Some(port),
                    None => {
                        conflicts.push(format!(
                            "{}/{} route {i}: redirect_https without a tls route to redirect to; proxying instead",
                            s.stack, s.service,
                        ));
                        None
                    }
                },
                _ => None,
            };
            add_route(config, addr, &name, r, redirect_port);
            config.backends.insert(name, backend(s, r));
        }
    }
    // An address whose routes were all skipped has nothing to serve.
    out.retain(|_, c| {
        c.listeners.http.is_some() || c.listeners.https.is_some() || !c.listeners.tcp.is_empty()
    });
    (out, conflicts)
}

/// The backend of route `r` of service `s`: its endpoints at the route's container port.
fn backend(s: &IngressService, r: &IngressRoute) -> Backend {
    let endpoints = s
        .endpoints
        .iter()
        .filter_map(|e| {
            let ip: IpAddr = e.address.parse().ok()?;
            Some(Endpoint {
                id: format!("{}@{}", e.instance, e.generation),
                addr: SocketAddr::new(ip, r.port),
                state: if e.draining {
                    EndpointState::Draining
                } else {
                    EndpointState::Serving
                },
            })
        })
        .collect();
    Backend {
        endpoints,
        balance: match r.balance {
            IngressBalance::RoundRobin => Balance::RoundRobin,
            IngressBalance::LeastRequests => Balance::LeastRequests,
        },
        sticky: r.sticky.clone().map(|cookie| Sticky { cookie }),
        ..Backend::default()
    }
}

/// The kind of listener already on the address of `config` that route `r` cannot share it
/// with (a TCP listener takes an address alone; plain HTTP and HTTPS do not mix).
fn taken_by(config: &Config, r: &IngressRoute) -> Option<&'static str> {
    let is_tcp = !config.listeners.tcp.is_empty();
    let is_http = config.listeners.http.is_some();
    let is_https = config.listeners.https.is_some();
    let taken = match (r.protocol, r.tls.is_some()) {
        (IngressProtocol::Tcp, _) => is_tcp || is_http || is_https,
        (IngressProtocol::Http, false) => is_tcp || is_https,
        (IngressProtocol::Http, true) => is_tcp || is_http,
    };
    if !taken {
        return None;
    }
    Some(match (is_tcp, is_https) {
        (true, _) => "tcp",
        (false, true) => "https (tls)",
        (false, false) => "plain http",
    })
}

/// Add route `r` (through backend `name`) to the listeners and routes of `config` at `addr`.
fn add_route(
    config: &mut Config,
    addr: SocketAddr,
    name: &str,
    r: &IngressRoute,
    redirect_port: Option<u16>,
) {
    match r.protocol {
        IngressProtocol::Tcp => config.listeners.tcp.push(TcpListener {
            addr,
            backend: name.to_string(),
            connect_timeout_ms: Timeouts::default().connect_ms,
        }),
        IngressProtocol::Http => {
            match &r.tls {
                None => config.listeners.http = Some(addr),
                Some(tls) => config
                    .listeners
                    .https
                    .get_or_insert_with(|| HttpsListener {
                        addr,
                        certificates: Vec::new(),
                    })
                    .certificates
                    .push(Certificate {
                        hosts: r.hosts.clone(),
                        pem: Pem::Inline {
                            cert: tls.certificate.clone(),
                            key: SecretPem(tls.key.expose().to_owned()),
                        },
                    }),
            }
            let mut timeouts = Timeouts::default();
            if let Some(ms) = r.timeout_ms.filter(|ms| *ms > 0) {
                timeouts.request_ms = ms;
            }
            let prefixes = if r.paths.is_empty() {
                vec!["/".to_string()]
            } else {
                r.paths.clone()
            };
            for path_prefix in prefixes {
                config.routes.push(Route {
                    hosts: r.hosts.clone(),
                    path_prefix,
                    backend: name.to_string(),
                    redirect_https: redirect_port.is_some(),
                    redirect_port,
                    timeouts,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::{IngressEndpoint, IngressRoute};

    fn route(port: u16, listen: u16, protocol: IngressProtocol) -> IngressRoute {
        IngressRoute {
            port,
            listen,
            listen_address: Some("127.0.0.1".into()),
            protocol,
            hosts: vec![],
            paths: vec![],
            balance: IngressBalance::RoundRobin,
            sticky: None,
            timeout_ms: None,
            redirect_https: false,
            tls: None,
        }
    }

    fn service(name: &str, routes: Vec<IngressRoute>, eps: &[(&str, bool)]) -> IngressService {
        IngressService {
            stack: "s".into(),
            service: name.into(),
            routes,
            endpoints: eps
                .iter()
                .enumerate()
                .map(|(i, (ip, draining))| IngressEndpoint {
                    instance: format!("s.{name}.{i}"),
                    generation: 1,
                    address: ip.to_string(),
                    draining: *draining,
                })
                .collect(),
        }
    }

    #[test]
    fn routes_become_one_config_per_listen_address() {
        let mut web = route(8080, 8000, IngressProtocol::Http);
        web.paths = vec!["/api".into(), "/v2".into()];
        web.hosts = vec!["a.example".into()];
        web.sticky = Some("ID".into());
        web.timeout_ms = Some(30_000);
        let table = vec![
            service(
                "api",
                vec![web, route(5432, 15432, IngressProtocol::Tcp)],
                &[("10.0.0.2", false), ("10.0.0.3", true), ("bad", false)],
            ),
            service("www", vec![route(80, 8000, IngressProtocol::Http)], &[]),
            // Conflicts: TCP on an HTTP port, HTTP on a TCP port.
            service("x", vec![route(1, 8000, IngressProtocol::Tcp)], &[]),
            service("y", vec![route(1, 15432, IngressProtocol::Http)], &[]),
        ];
        let (configs, conflicts) = configs(&table);
        assert_eq!(conflicts.len(), 2, "{conflicts:?}");
        let http: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let tcp: SocketAddr = "127.0.0.1:15432".parse().unwrap();
        assert_eq!(configs.keys().copied().collect::<Vec<_>>(), vec![http, tcp]);
        let c = &configs[&http];
        c.validate().expect("a valid config");
        let routes: Vec<(&str, &str)> = c
            .routes
            .iter()
            .map(|r| (r.path_prefix.as_str(), r.backend.as_str()))
            .collect();
        assert_eq!(
            routes,
            vec![("/api", "s.api#0"), ("/v2", "s.api#0"), ("/", "s.www#0")]
        );
        assert_eq!(c.routes[0].timeouts.request_ms, 30_000);
        let b = &c.backends["s.api#0"];
        let eps: Vec<(String, String, EndpointState)> = b
            .endpoints
            .iter()
            .map(|e| (e.id.clone(), e.addr.to_string(), e.state))
            .collect();
        assert_eq!(
            eps,
            vec![
                (
                    "s.api.0@1".into(),
                    "10.0.0.2:8080".into(),
                    EndpointState::Serving
                ),
                (
                    "s.api.1@1".into(),
                    "10.0.0.3:8080".into(),
                    EndpointState::Draining
                ),
            ]
        );
        assert_eq!(b.sticky.as_ref().map(|s| s.cookie.as_str()), Some("ID"));
        let t = &configs[&tcp];
        t.validate().expect("a valid config");
        assert_eq!(t.listeners.tcp.len(), 1);
        assert_eq!(
            t.backends["s.api#1"].endpoints[0].addr.to_string(),
            "10.0.0.2:5432"
        );
    }

    #[test]
    fn tls_routes_share_an_https_listener_and_redirects_name_its_port() {
        let tls = |cert: &str| wharf_types::IngressTls {
            certificate: cert.into(),
            key: wharf_types::Secret(format!("KEY OF {cert}")),
        };
        let with = |listen: u16, hosts: &[&str], cert: Option<&str>, redirect: bool| IngressRoute {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            tls: cert.map(tls),
            redirect_https: redirect,
            ..route(8080, listen, IngressProtocol::Http)
        };
        let table = vec![
            service(
                "shop",
                vec![
                    with(8443, &["shop.example"], Some("SHOP"), false),
                    with(8080, &["shop.example"], None, true),
                ],
                &[("10.0.0.2", false)],
            ),
            service(
                "admin",
                vec![with(8443, &["admin.example"], Some("ADMIN"), false)],
                &[("10.0.0.3", false)],
            ),
            // Plain HTTP on the HTTPS port, and TLS on the plain one: skipped.
            service("x", vec![with(8443, &["x.example"], None, false)], &[]),
            service("y", vec![with(8080, &["y.example"], Some("Y"), false)], &[]),
        ];
        let (configs, conflicts) = configs(&table);
        assert_eq!(conflicts.len(), 2, "{conflicts:?}");
        assert!(conflicts[0].contains("https (tls)"), "{conflicts:?}");
        let https: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        let http: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let c = &configs[&https];
        c.validate().expect("a valid config");
        assert_eq!(c.listeners.http, None);
        let certs: Vec<(Vec<String>, Pem)> = c
            .listeners
            .https
            .as_ref()
            .expect("an https listener")
            .certificates
            .iter()
            .map(|c| (c.hosts.clone(), c.pem.clone()))
            .collect();
        let pem = |cert: &str| Pem::Inline {
            cert: cert.into(),
            key: SecretPem(format!("KEY OF {cert}")),
        };
        assert_eq!(
            certs,
            vec![
                (vec!["shop.example".to_string()], pem("SHOP")),
                (vec!["admin.example".to_string()], pem("ADMIN")),
            ]
        );
        assert!(!format!("{c:?}").contains("KEY OF"), "no key in Debug");
        let c = &configs[&http];
        c.validate().expect("a valid config");
        assert_eq!(c.listeners.https, None);
        let r = &c.routes[0];
        assert_eq!((r.redirect_https, r.redirect_port), (true, Some(8443)));
    }

    #[tokio::test]
    async fn listeners_follow_the_table_live() {
        // A free port on loopback, for the ingress to listen on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut ingress = Ingress::default();
        let mut table = vec![service(
            "web",
            vec![route(8080, port, IngressProtocol::Http)],
            &[("10.0.0.2", false)],
        )];
        ingress.apply(&table).await;
        assert_eq!(ingress.listening(), vec![addr]);
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());

        // A new endpoint: the same proxy, updated.
        table[0].endpoints.push(IngressEndpoint {
            instance: "s.web.1".into(),
            generation: 2,
            address: "10.0.0.3".into(),
            draining: false,
        });
        ingress.apply(&table).await;
        let c = ingress.config(addr).expect("still listening");
        assert_eq!(c.backends["s.web#0"].endpoints.len(), 2);

        // A port taken by someone else: not listened on, retried later.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let taken_port = taken.local_addr().unwrap().port();
        table.push(service(
            "db",
            vec![route(5432, taken_port, IngressProtocol::Tcp)],
            &[],
        ));
        ingress.apply(&table).await;
        assert_eq!(ingress.listening(), vec![addr]);
        assert_eq!(ingress.unbound.len(), 1);
        drop(taken);
        ingress.apply(&table).await;
        assert_eq!(ingress.listening().len(), 2, "bound once the port is free");

        // No routes: nothing listens.
        ingress.apply(&[]).await;
        assert!(ingress.listening().is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
