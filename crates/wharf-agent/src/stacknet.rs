//! What the node's stack networks need beyond the driver: the subnet the master gave each
//! (cross-host networking), the DNS server listening on each network's gateway (service
//! discovery), and the host's routes and firewall rules (`hostnet`).
//!
//! Driven from one place: the agent's feed task calls `follow` on every desired state, and again
//! every `RECHECK` (so host networking drift is repaired and failed DNS listeners are tried
//! again); the agent loop only waits for it (`wait_followed`) before a pass that may create a
//! stack network. `follow` sets the subnets, the discovery table, a DNS listener for every stack
//! with Docker instances here whose network exists (found through the `Gateways` seam, which the
//! Docker driver fills in; so after an agent restart the running containers' DNS server comes back
//! without waiting for a new instance), and the host's routes and firewall. The Docker driver asks
//! for a stack's subnet before creating its network (`subnet`), right after it for the listener
//! (`ensure_dns`, the same step `follow` takes), and then whether the containers get Wharf's DNS
//! server (`dns_for`). Listing instances changes nothing.
//!
//! A container resolves names through Docker's embedded resolver, which forwards what it does not
//! know to the container's name servers. With Wharf's DNS listening on the stack network's
//! gateway, containers get that address as name server and `<stack>.<domain>` as search domain,
//! and no network alias (an alias would make Docker answer the service name itself, with the
//! containers of this host only, healthy or not). Without it (the agent cannot bind port 53 on
//! the gateway: not root, or the network lives in another network namespace), containers keep
//! the service name as alias: same-host discovery by Docker, as before.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wharf_types::{DriverKind, NodeDesired, TunnelFacts};

use crate::dns::Dns;
use crate::hostnet::{self, Host};
use crate::tunnel::{Keys, Setup};

/// How long a stack network whose DNS listener failed waits before the next try.
const DNS_RETRY: Duration = Duration::from_secs(30);
/// How often the feed task follows the same desired state again (host networking is read back
/// every `hostnet::PERIOD` of those calls).
pub const RECHECK: Duration = Duration::from_secs(5);

/// Where the stack networks' gateways are: the driver that makes the networks (Docker) knows.
#[async_trait::async_trait]
pub trait Gateways: Send + Sync {
    /// The gateway address of `stack`'s network on this host; `None` when there is no such
    /// network (yet) or it has no gateway.
    async fn gateway(&self, stack: &str) -> Option<IpAddr>;
}

pub struct StackNetworks {
    dns: Option<Arc<Dns>>,
    /// The port the DNS listeners bind: `dns::PORT`; 0 (any free port) in tests.
    dns_port: u16,
    host: Option<Box<dyn Host>>,
    gateways: Mutex<Option<Arc<dyn Gateways>>>,
    /// The subnets of the desired state last followed; watched by `wait_followed`.
    subnets: watch::Sender<BTreeMap<String, String>>,
    /// Stacks whose network has Wharf's DNS server listening, and where.
    dns_at: Mutex<BTreeMap<String, IpAddr>>,
    /// Stacks whose DNS listener could not be set up, and when to try again.
    dns_failed: Mutex<BTreeMap<String, Instant>>,
    /// One listener set up at a time: `follow` and a launch may want the same one at once.
    attaching: tokio::sync::Mutex<()>,
    /// Routes and firewall: applied on change, checked for drift every `hostnet::PERIOD`.
    hostnet: tokio::sync::Mutex<hostnet::Converger>,
    /// This agent's end of the encrypted tunnel, when it runs one: how, and its keys.
    tunnel: Option<(Setup, Mutex<Keys>)>,
    /// What the master is told of the tunnel (`ToMaster::Tunnel`), newest only.
    tunnel_facts: watch::Sender<Option<TunnelFacts>>,
}

fn subnets_of(want: &NodeDesired) -> BTreeMap<String, String> {
    want.network
        .subnets
        .iter()
        .map(|s| (s.stack.clone(), s.subnet.clone()))
        .collect()
}

impl StackNetworks {
    /// `dns`: serve discovery names (else containers keep Docker's aliases); `host`: apply routes
    /// and firewall rules (else only same-host container traffic works).
    pub fn new(dns: Option<Arc<Dns>>, host: Option<Box<dyn Host>>) -> Arc<StackNetworks> {
        Arc::new(Self::with_dns_port(dns, host, crate::dns::PORT))
    }

    /// `new`, with this agent's end of the encrypted tunnel between hosts.
    pub fn with_tunnel(
        dns: Option<Arc<Dns>>,
        host: Option<Box<dyn Host>>,
        setup: Setup,
        keys: Keys,
    ) -> Arc<StackNetworks> {
        let mut n = Self::with_dns_port(dns, host, crate::dns::PORT);
        n.tunnel_facts.send_replace(Some(TunnelFacts {
            public_key: keys.public().to_string(),
            port: setup.port,
            epoch: keys.epoch(),
            ..TunnelFacts::default()
        }));
        n.tunnel = Some((setup, Mutex::new(keys)));
        Arc::new(n)
    }

    /// What the master is to be told of this node's end of the tunnel, as it changes.
    pub fn tunnel_facts(&self) -> watch::Receiver<Option<TunnelFacts>> {
        self.tunnel_facts.subscribe()
    }

    fn with_dns_port(dns: Option<Arc<Dns>>, host: Option<Box<dyn Host>>, port: u16) -> Self {
        StackNetworks {
            tunnel: None,
            tunnel_facts: watch::Sender::new(None),
            dns,
            dns_port: port,
            host,
            gateways: Mutex::default(),
            subnets: watch::Sender::new(BTreeMap::new()),
            dns_at: Mutex::default(),
            dns_failed: Mutex::default(),
            attaching: tokio::sync::Mutex::default(),
            hostnet: tokio::sync::Mutex::default(),
        }
    }

    /// Where to find the stack networks' gateways (the Docker driver registers itself).
    pub fn set_gateways(&self, gateways: Arc<dyn Gateways>) {
        *self.gateways.lock() = Some(gateways);
    }

    /// Follow a desired state: subnets, discovery table, DNS listeners, routes and firewall.
    /// Called from one task only (the agent's feed), on every change and every `RECHECK`.
    pub async fn follow(&self, want: &NodeDesired) {
        // First: the agent loop waits for these (`wait_followed`).
        self.subnets.send_replace(subnets_of(want));
        if let Some(dns) = &self.dns {
            dns.update(&want.discovery);
        }
        let stacks: BTreeSet<&str> = want
            .assignments
            .iter()
            .filter(|a| a.spec.driver == DriverKind::Docker)
            .map(|a| a.stack.as_str())
            .collect();
        for stack in stacks {
            self.ensure_dns(stack).await;
        }
        if let Some(host) = &self.host {
            let tunnel = self.tunnel_keys(want.network.key_epoch);
            let guards = crate::segments::guards(&want.network, &want.discovery.services);
            let out = self
                .hostnet
                .lock()
                .await
                .step(
                    host.as_ref(),
                    &want.network,
                    &guards,
                    tunnel.as_ref().map(|(s, k)| (s, k)),
                    Instant::now(),
                )
                .await;
            if let (Some(out), Some((setup, keys))) = (out, tunnel) {
                let facts = TunnelFacts {
                    public_key: keys.public().to_string(),
                    port: setup.port,
                    epoch: keys.epoch(),
                    implementation: out.tunnel.clone().unwrap_or_default(),
                    error: match (&out.tunnel, want.network.encryption) {
                        (None, true) => out.problems.first().cloned(),
                        _ => None,
                    },
                };
                self.tunnel_facts.send_if_modified(|f| {
                    let changed = f.as_ref() != Some(&facts);
                    *f = Some(facts);
                    changed
                });
            }
        }
    }

    /// The tunnel's setup and keys, the keys first replaced when the master asks for a newer
    /// epoch (`wharf node rotate-keys`).
    fn tunnel_keys(&self, epoch: u64) -> Option<(Setup, Keys)> {
        let (setup, keys) = self.tunnel.as_ref()?;
        let mut keys = keys.lock();
        if epoch > keys.epoch() {
            match keys.rotate(epoch) {
                Ok(()) => tracing::info!(epoch, "rotated this node's WireGuard key"),
                Err(e) => tracing::warn!(error = %e, "cannot rotate this node's WireGuard key"),
            }
        }
        Some((setup.clone(), keys.clone()))
    }

    /// Wait until `follow` has taken the subnets of `want`, or a newer desired state than `want`
    /// has arrived on `desired` (the pass on `want` is stale then; the next one has its own wait).
    /// Never hangs: the feed task follows every desired state, the newest last.
    pub async fn wait_followed(&self, want: &NodeDesired, desired: &watch::Receiver<NodeDesired>) {
        let wanted = subnets_of(want);
        let mut followed = self.subnets.subscribe();
        loop {
            if *followed.borrow_and_update() == wanted || desired.has_changed().unwrap_or(true) {
                return;
            }
            // Every `follow` notifies, equal subnets or not, so a newer state is noticed too.
            if followed.changed().await.is_err() {
                return;
            }
        }
    }

    /// The subnet the master gave `stack`'s network on this node, if any.
    pub fn subnet(&self, stack: &str) -> Option<String> {
        self.subnets.borrow().get(stack).cloned()
    }

    /// Make Wharf's DNS server listen on the gateway of `stack`'s network, if the network exists
    /// and the listener is not there yet (nor failed a moment ago). The one place listeners are
    /// set up: from `follow`, and from the Docker driver right after creating the network.
    pub async fn ensure_dns(&self, stack: &str) {
        let Some(dns) = &self.dns else {
            return;
        };
        let _one = self.attaching.lock().await;
        if !self.needs_dns(stack) {
            return;
        }
        let gateways = self.gateways.lock().clone();
        let Some(gateway) = (match gateways {
            Some(g) => g.gateway(stack).await,
            None => None,
        }) else {
            return;
        };
        match dns
            .listen_on(stack, SocketAddr::new(gateway, self.dns_port))
            .await
        {
            Ok(_) => {
                self.dns_failed.lock().remove(stack);
                self.dns_at.lock().insert(stack.to_string(), gateway);
            }
            Err(e) => {
                tracing::debug!(%stack, error = %e, "no service discovery DNS on this stack network; containers use Docker's aliases");
                self.dns_failed
                    .lock()
                    .insert(stack.to_string(), Instant::now() + DNS_RETRY);
            }
        }
    }

    /// The name server and search domain of `stack`'s containers, if Wharf's DNS serves them.
    /// Where the DNS server forwards each container's questions outside the cluster when its
    /// service names its own servers (by the container's address; the Docker driver's
    /// observation, every pass).
    pub fn set_asker_upstreams(
        &self,
        by_asker: std::collections::HashMap<IpAddr, Vec<std::net::SocketAddr>>,
    ) {
        if let Some(dns) = &self.dns {
            dns.set_asker_upstreams(by_asker);
        }
    }

    pub fn dns_for(&self, stack: &str) -> Option<(IpAddr, String)> {
        let dns = self.dns.as_ref()?;
        let at = *self.dns_at.lock().get(stack)?;
        Some((at, dns.search_domain(stack)))
    }

    /// Whether `stack`'s network should get a DNS listener that it lacks; not again right after a
    /// failed try.
    fn needs_dns(&self, stack: &str) -> bool {
        self.dns.is_some()
            && !self.dns_at.lock().contains_key(stack)
            && self
                .dns_failed
                .lock()
                .get(stack)
                .is_none_or(|at| *at <= Instant::now())
    }

    /// The stack's network is gone: stop its DNS listener.
    pub fn forget(&self, stack: &str) {
        if let Some(dns) = &self.dns {
            dns.unlisten(stack);
        }
        self.dns_at.lock().remove(stack);
        self.dns_failed.lock().remove(stack);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use wharf_types::{Assignment, ServiceSpec, StackSubnet};

    /// Gateways of the networks that exist, and who asked for which.
    #[derive(Default)]
    struct FakeGateways {
        networks: Mutex<BTreeMap<String, IpAddr>>,
        asked: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Gateways for FakeGateways {
        async fn gateway(&self, stack: &str) -> Option<IpAddr> {
            self.asked.lock().push(stack.to_string());
            self.networks.lock().get(stack).copied()
        }
    }

    fn assignment(stack: &str, driver: DriverKind) -> Assignment {
        let spec = ServiceSpec {
            driver,
            ..Default::default()
        };
        Assignment {
            id: format!("{stack}.web.1"),
            stack: stack.into(),
            service: "web".into(),
            slot: 1,
            generation: 1,
            spec_hash: "h".into(),
            spec: spec.into(),
        }
    }

    fn desired(stacks: &[(&str, DriverKind)]) -> NodeDesired {
        let mut d = NodeDesired {
            assignments: stacks.iter().map(|(s, k)| assignment(s, *k)).collect(),
            ..Default::default()
        };
        std::sync::Arc::make_mut(&mut d.network).subnets = stacks
            .iter()
            .enumerate()
            .map(|(i, (s, _))| StackSubnet {
                stack: s.to_string(),
                subnet: format!("10.64.0.{}/25", i * 128),
            })
            .collect();
        d
    }

    fn setup() -> (Arc<StackNetworks>, Arc<Dns>, Arc<FakeGateways>) {
        let dns = Arc::new(Dns::new(Vec::new()));
        let n = Arc::new(StackNetworks::with_dns_port(Some(dns.clone()), None, 0));
        let g = Arc::new(FakeGateways::default());
        n.set_gateways(g.clone());
        (n, dns, g)
    }

    fn listening(dns: &Dns) -> Vec<String> {
        dns.listening().into_iter().map(|(s, _)| s).collect()
    }

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn listeners_follow_the_desired_state_for_networks_that_exist() {
        let (n, dns, g) = setup();
        // After a restart: stack `a`'s network already runs containers; `b`'s is not made yet;
        // `p` runs processes (no network: never looked up).
        g.networks.lock().insert("a".into(), LOCAL);
        let want = desired(&[
            ("a", DriverKind::Docker),
            ("b", DriverKind::Docker),
            ("p", DriverKind::Process),
        ]);
        n.follow(&want).await;
        assert_eq!(listening(&dns), ["a"]);
        assert_eq!(n.dns_for("a").map(|(ip, _)| ip), Some(LOCAL));
        assert_eq!(n.dns_for("b"), None);
        assert_eq!(*g.asked.lock(), ["a", "b"]);
        assert_eq!(n.subnet("b").as_deref(), Some("10.64.0.128/25"));
        // The driver makes `b`'s network for a launch and sets its listener up at once.
        g.networks.lock().insert("b".into(), LOCAL);
        n.ensure_dns("b").await;
        assert_eq!(listening(&dns), ["a", "b"]);
        // Following again looks nothing up: both listen.
        g.asked.lock().clear();
        n.follow(&want).await;
        assert!(g.asked.lock().is_empty());
        // `a`'s network is removed (purge): its listener goes, and comes back with the network.
        n.forget("a");
        assert_eq!(listening(&dns), ["b"]);
        n.follow(&want).await;
        assert_eq!(listening(&dns), ["a", "b"]);
    }

    #[tokio::test]
    async fn a_listener_that_cannot_bind_is_not_tried_on_every_follow() {
        let (n, dns, g) = setup();
        // Not an address of this host: binding fails.
        g.networks
            .lock()
            .insert("a".into(), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 250)));
        let want = desired(&[("a", DriverKind::Docker)]);
        n.follow(&want).await;
        assert!(listening(&dns).is_empty());
        assert_eq!(n.dns_for("a"), None, "containers keep Docker's aliases");
        n.follow(&want).await;
        n.ensure_dns("a").await;
        assert_eq!(*g.asked.lock(), ["a"], "retried after DNS_RETRY only");
    }

    #[tokio::test]
    async fn the_loop_waits_for_the_subnets_of_its_desired_state() {
        let (n, _, _) = setup();
        let (tx, mut rx) = watch::channel(NodeDesired::default());
        let want = desired(&[("a", DriverKind::Docker)]);
        tx.send_replace(want.clone());
        rx.borrow_and_update();
        let waiting = tokio::spawn({
            let (n, want, rx) = (n.clone(), want.clone(), rx.clone());
            async move { n.wait_followed(&want, &rx).await }
        });
        // Not before the feed followed `want`.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        n.follow(&want).await;
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("returns once followed")
            .unwrap();
        assert_eq!(n.subnet("a").as_deref(), Some("10.64.0.0/25"));
        // Followed already: no wait.
        n.wait_followed(&want, &rx).await;

        // A newer state supersedes the one waited for (the feed skipped it): no hang.
        let stale = desired(&[("b", DriverKind::Docker)]);
        let waiting = tokio::spawn({
            let (n, rx) = (n.clone(), rx.clone());
            async move { n.wait_followed(&stale, &rx).await }
        });
        let newer = desired(&[("c", DriverKind::Docker)]);
        tx.send_replace(newer.clone());
        n.follow(&newer).await;
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("returns when superseded")
            .unwrap();
    }
}
