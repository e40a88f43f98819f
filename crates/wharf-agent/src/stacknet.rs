//! What the node's stack networks need beyond the driver: the subnet the master gave each
//! (cross-host networking), the DNS server listening on each network's gateway (service
//! discovery), and the host's routes and firewall rules (`hostnet`).
//!
//! Shared by the agent loop, which feeds it every desired state (`follow`), and the Docker
//! driver, which asks it for a stack's subnet before creating the network (`subnet`) and, once
//! the network exists, whether the containers get Wharf's DNS server (`attach_dns`).
//!
//! A container resolves names through Docker's embedded resolver, which forwards what it does not
//! know to the container's name servers. With Wharf's DNS listening on the stack network's
//! gateway, containers get that address as name server and `<stack>.<domain>` as search domain,
//! and no network alias (an alias would make Docker answer the service name itself, with the
//! containers of this host only, healthy or not). Without it (the agent cannot bind port 53 on
//! the gateway: not root, or the network lives in another network namespace), containers keep
//! the service name as alias: same-host discovery by Docker, as before.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use wharf_types::NodeDesired;

use crate::dns::Dns;
use crate::hostnet::{self, Host, Wanted};

#[derive(Default)]
struct Applied {
    last: Option<Wanted>,
    problems: Vec<String>,
    /// After a failure, when to try the same state again (not on every pass).
    retry_at: Option<std::time::Instant>,
}

/// How long a host state that could not be applied waits before it is tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(15);
/// How long a stack network whose DNS listener failed waits before the next try.
const DNS_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

pub struct StackNetworks {
    dns: Option<Arc<Dns>>,
    host: Option<Box<dyn Host>>,
    subnets: Mutex<BTreeMap<String, String>>,
    /// Stacks whose network has Wharf's DNS server listening, and where.
    dns_at: Mutex<BTreeMap<String, IpAddr>>,
    /// Stacks whose DNS listener could not be set up, and when to try again.
    dns_failed: Mutex<BTreeMap<String, std::time::Instant>>,
    /// The host state last applied, and the last problems logged (each logged once).
    applied: tokio::sync::Mutex<Applied>,
}

impl StackNetworks {
    /// `dns`: serve discovery names (else containers keep Docker's aliases); `host`: apply routes
    /// and firewall rules (else only same-host container traffic works).
    pub fn new(dns: Option<Arc<Dns>>, host: Option<Box<dyn Host>>) -> Arc<StackNetworks> {
        Arc::new(StackNetworks {
            dns,
            host,
            subnets: Mutex::default(),
            dns_at: Mutex::default(),
            dns_failed: Mutex::default(),
            applied: tokio::sync::Mutex::default(),
        })
    }

    /// Follow a desired state: subnets, discovery table, routes and firewall.
    pub async fn follow(&self, want: &NodeDesired) {
        *self.subnets.lock().expect("subnets") = want
            .network
            .subnets
            .iter()
            .map(|s| (s.stack.clone(), s.subnet.clone()))
            .collect();
        if let Some(dns) = &self.dns {
            dns.update(&want.discovery);
        }
        if let Some(host) = &self.host {
            let mut a = self.applied.lock().await;
            let now = std::time::Instant::now();
            if a.retry_at.is_some_and(|at| at <= now) {
                a.last = None;
                a.retry_at = None;
            }
            let problems = hostnet::apply(host.as_ref(), &want.network, &mut a.last).await;
            if !problems.is_empty() {
                for p in &problems {
                    if !a.problems.contains(p) {
                        tracing::warn!(problem = %p, "cannot set up cross-host container networking; will retry");
                    }
                }
                // Not on every pass: the state counts as applied until the retry.
                a.last = Some(hostnet::plan(&want.network));
                a.retry_at = Some(now + RETRY);
            }
            a.problems = problems;
        }
    }

    /// The subnet the master gave `stack`'s network on this node, if any.
    pub fn subnet(&self, stack: &str) -> Option<String> {
        self.subnets.lock().expect("subnets").get(stack).cloned()
    }

    /// The stack network exists with `gateway`: make Wharf's DNS server listen there. Returns the
    /// name server and search domain its containers get, or `None` (keep Docker's aliases).
    pub async fn attach_dns(
        &self,
        stack: &str,
        gateway: Option<IpAddr>,
    ) -> Option<(IpAddr, String)> {
        let dns = self.dns.as_ref()?;
        let gateway = gateway?;
        if self.dns_at.lock().expect("dns_at").get(stack) != Some(&gateway) {
            if let Err(e) = dns.listen(stack, gateway).await {
                tracing::debug!(%stack, error = %e, "no service discovery DNS on this stack network; containers use Docker's aliases");
                self.dns_failed
                    .lock()
                    .expect("dns_failed")
                    .insert(stack.to_string(), std::time::Instant::now() + DNS_RETRY);
                return None;
            }
            self.dns_failed.lock().expect("dns_failed").remove(stack);
            self.dns_at
                .lock()
                .expect("dns_at")
                .insert(stack.to_string(), gateway);
        }
        Some((gateway, dns.search_domain(stack)))
    }

    /// The name server and search domain of `stack`'s containers, if Wharf's DNS serves them.
    pub fn dns_for(&self, stack: &str) -> Option<(IpAddr, String)> {
        let dns = self.dns.as_ref()?;
        let at = *self.dns_at.lock().expect("dns_at").get(stack)?;
        Some((at, dns.search_domain(stack)))
    }

    /// Whether `stack`'s network should get a DNS listener that it lacks (after a restart); not
    /// again right after a failed try.
    pub fn needs_dns(&self, stack: &str) -> bool {
        self.dns.is_some()
            && !self.dns_at.lock().expect("dns_at").contains_key(stack)
            && self
                .dns_failed
                .lock()
                .expect("dns_failed")
                .get(stack)
                .is_none_or(|at| *at <= std::time::Instant::now())
    }

    /// The stack's network is gone: stop its DNS listener.
    pub fn forget(&self, stack: &str) {
        if let Some(dns) = &self.dns {
            dns.unlisten(stack);
        }
        self.dns_at.lock().expect("dns_at").remove(stack);
        self.dns_failed.lock().expect("dns_failed").remove(stack);
    }
}
