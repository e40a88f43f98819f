//! The stack networks: `wharf_<stack>` created once per engine (deduplicated), its gateway,
//! and pointing a container body at it (by id, with Wharf's DNS server).

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, Ipam, IpamConfig, NetworkCreateRequest};
use bollard::query_parameters::ListNetworksOptionsBuilder;
use wharf_types::labels;

use super::{DockerDriver, engine_message, map_err, status};
use crate::driver::DriverError;

#[async_trait::async_trait]
impl crate::stacknet::Gateways for DockerDriver {
    /// The gateway of the stack network (the oldest, if the engine has several of that name).
    async fn gateway(&self, stack: &str) -> Option<std::net::IpAddr> {
        let name = network_name(stack);
        let Ok(Some((_, id))) = self
            .networks_named(&name)
            .await
            .map(|l| l.into_iter().next())
        else {
            return None;
        };
        match self.docker.inspect_network(&id, None).await {
            Ok(n) => n
                .ipam
                .and_then(|i| i.config)
                .into_iter()
                .flatten()
                .filter_map(|c| match c.gateway {
                    Some(g) => g.parse().ok(),
                    // A network made with only a subnet: Docker takes its first address.
                    None => first_host(c.subnet.as_deref()?),
                })
                .next(),
            Err(e) => {
                tracing::debug!(network = name, error = %e, "cannot inspect the stack network");
                None
            }
        }
    }
}

impl DockerDriver {
    pub(super) async fn ensure_network(&self, stack: &str) -> Result<(), DriverError> {
        let name = network_name(stack);
        let lock = self.lock_for(&format!("network:{name}"));
        let _guard = lock.lock().await;
        // Network names are not unique on API 1.41, and a container's networks are looked up by
        // name when it starts: two agents sharing one engine (on one machine) must not both
        // create the stack network. A machine-wide file lock makes "find, else create" atomic
        // across processes; agents on separate hosts never share an engine.
        let _host_guard = host_network_lock().await;
        let existing = self.networks_named(&name).await?;
        if !existing.is_empty() {
            self.dedupe_networks(&name, existing).await;
            return Ok(());
        }
        let subnet = self.networks.as_ref().and_then(|n| n.subnet(stack));
        let request = |subnet: Option<&String>| NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".to_string()),
            labels: Some(HashMap::from([
                (labels::MANAGED.to_string(), "true".to_string()),
                (labels::STACK.to_string(), stack.to_string()),
            ])),
            ipam: subnet.map(|s| Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(s.clone()),
                    gateway: first_host(s).map(|g| g.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut result = self.docker.create_network(request(subnet.as_ref())).await;
        if let (Err(e), Some(subnet)) = (&result, &subnet)
            && status(e) == Some(403)
        {
            // "Pool overlaps with other one on this address space": another network on this
            // engine (not Wharf's, or another cluster's) has the subnet. Run anyway; only
            // cross-host traffic to this stack's containers on this node is lost.
            tracing::warn!(network = name, %subnet, error = %engine_message(e), "the subnet the master gave this stack network is taken on this engine; using one of the engine's choosing (other nodes cannot reach these containers)");
            result = self.docker.create_network(request(None)).await;
        }
        match result {
            Ok(_) => {}
            Err(e) if status(&e) == Some(409) => {}
            Err(e) => return Err(map_err(e, &format!("cannot create network {name}"))),
        }
        // Another agent process (or a restart race) may have created one too: keep a single one.
        let existing = self.networks_named(&name).await?;
        self.dedupe_networks(&name, existing).await;
        Ok(())
    }

    /// The endpoints on network `id`: (container id, endpoint name, whether the container
    /// still exists).
    pub(super) async fn attached(&self, id: &str) -> Vec<(String, String, bool)> {
        let Ok(net) = self.docker.inspect_network(id, None).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (container, ep) in net.containers.unwrap_or_default() {
            let gone = self.docker.inspect_container(&container, None).await;
            let exists = !matches!(gone, Err(e) if status(&e) == Some(404));
            out.push((container, ep.name.unwrap_or_default(), exists));
        }
        out
    }

    /// Force-disconnect the endpoints of `attached` whose container is gone; how many.
    pub(super) async fn drop_stale_endpoints(
        &self,
        id: &str,
        attached: &[(String, String, bool)],
    ) -> usize {
        let mut dropped = 0;
        for (container, name, _) in attached.iter().filter(|(_, _, exists)| !exists) {
            let req = bollard::models::NetworkDisconnectRequest {
                container: container.clone(),
                force: Some(true),
            };
            match self.docker.disconnect_network(id, req).await {
                Ok(()) => {
                    tracing::info!(network = id, endpoint = %name, "dropped the stale endpoint of a removed container");
                    dropped += 1;
                }
                Err(e) => {
                    tracing::debug!(network = id, endpoint = %name, error = %e, "cannot drop a stale endpoint")
                }
            }
        }
        dropped
    }

    /// Networks whose name is exactly `name`, oldest first.
    pub(super) async fn networks_named(
        &self,
        name: &str,
    ) -> Result<Vec<(String, String)>, DriverError> {
        let filters = HashMap::from([("name", vec![name.to_string()])]);
        let list = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| map_err(e, &format!("cannot list networks named {name}")))?;
        let mut found: Vec<(String, String)> = list
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| Some((n.created.unwrap_or_default(), n.id?)))
            .collect();
        found.sort();
        Ok(found)
    }

    pub(super) async fn dedupe_networks(&self, name: &str, found: Vec<(String, String)>) {
        for (_, id) in found.iter().skip(1) {
            tracing::warn!(network = name, id, "removing a duplicate network");
            if let Err(e) = self.docker.remove_network(id).await {
                tracing::warn!(network = name, id, error = %e, "cannot remove a duplicate network");
            }
        }
    }
}

/// `wharf_<stack>`: the network every container of a stack joins.
pub fn network_name(stack: &str) -> String {
    format!("wharf_{stack}")
}

/// The machine-wide lock around stack network creation (see `ensure_network`). Held while the
/// returned file is open. `None` when the lock file cannot be used: then only the in-process lock
/// applies, as before.
async fn host_network_lock() -> Option<std::fs::File> {
    let path = std::env::temp_dir().join("wharf-docker-networks.lock");
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ok()?;
        f.lock().ok()?;
        Some(f)
    })
    .await
    .ok()
    .flatten()
}

/// The first host address of an IPv4 subnet (`10.96.3.0/24` → `10.96.3.1`): a bridge's gateway.
fn first_host(subnet: &str) -> Option<std::net::IpAddr> {
    let (net, len) = subnet.split_once('/')?;
    let net: std::net::Ipv4Addr = net.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 30)?;
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    Some(std::net::Ipv4Addr::from((u32::from(net) & mask) + 1).into())
}

/// Resolve names through Wharf's DNS server instead of Docker's alias for the service name (see
/// `stacknet.rs`).
pub(super) fn use_dns(
    body: &mut ContainerCreateBody,
    network: &str,
    server: std::net::IpAddr,
    search: String,
) {
    if let Some(hc) = body.host_config.as_mut() {
        // The service's own `dns` servers stay out: Wharf's server forwards this container's
        // other questions to them (the `labels::DNS` label, `Dns::set_asker_upstreams`).
        hc.dns = Some(vec![server.to_string()]);
        let mut domains = vec![search];
        domains.extend(hc.dns_search.take().unwrap_or_default());
        hc.dns_search = Some(domains);
    }
    if let Some(ep) = body
        .networking_config
        .as_mut()
        .and_then(|n| n.endpoints_config.as_mut())
        .and_then(|e| e.get_mut(network))
    {
        ep.aliases = None;
    }
}

/// Point a container body built for the network `name` at the network `id` instead.
pub(super) fn attach_to(body: &mut ContainerCreateBody, name: &str, id: &str) {
    if let Some(hc) = body.host_config.as_mut()
        && hc.network_mode.as_deref() == Some(name)
    {
        hc.network_mode = Some(id.to_string());
    }
    if let Some(endpoints) = body
        .networking_config
        .as_mut()
        .and_then(|n| n.endpoints_config.as_mut())
        && let Some(ep) = endpoints.remove(name)
    {
        endpoints.insert(id.to_string(), ep);
    }
}

/// The engine's "network <id> not found" when starting a container whose network is gone.
pub(super) fn is_lost_network(msg: &str) -> bool {
    msg.starts_with("network ") && msg.ends_with(" not found")
}

/// The network named in the engine's "network NAME is ambiguous (N matches found on name)".
pub(super) fn ambiguous_network(msg: &str) -> Option<String> {
    let rest = msg.split("network ").nth(1)?;
    let (name, tail) = rest.split_once(' ')?;
    tail.starts_with("is ambiguous").then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::container::container_body;
    use super::*;
    use crate::driver::InstanceSpec;

    #[test]
    fn containers_attach_to_the_network_by_id() {
        let inst = InstanceSpec {
            id: "s.web.0".into(),
            stack: "s".into(),
            service: "web".into(),
            slot: 0,
            generation: 1,
            spec_hash: "h".into(),
            spec: wharf_types::ServiceSpec {
                image: Some("app:1".into()),
                ..Default::default()
            }
            .into(),
        };
        let mut body = container_body(&inst, &[]).expect("a body");
        attach_to(&mut body, "wharf_s", "abc123");
        let hc = body.host_config.expect("host config");
        assert_eq!(hc.network_mode.as_deref(), Some("abc123"));
        let eps = body
            .networking_config
            .and_then(|n| n.endpoints_config)
            .expect("endpoints");
        assert_eq!(eps.keys().collect::<Vec<_>>(), vec!["abc123"]);
        assert_eq!(
            eps["abc123"].aliases.as_deref(),
            Some(&["web".to_string()][..])
        );
    }

    #[test]
    fn the_gateway_is_the_first_host_of_the_subnet() {
        for (subnet, want) in [
            ("10.96.3.0/24", Some("10.96.3.1")),
            ("10.96.3.77/24", Some("10.96.3.1")),
            ("172.18.0.0/16", Some("172.18.0.1")),
            ("10.0.0.0/31", None),
            ("nonsense", None),
        ] {
            assert_eq!(
                first_host(subnet).map(|g| g.to_string()).as_deref(),
                want,
                "{subnet}"
            );
        }
    }

    #[test]
    fn recognises_a_lost_network() {
        assert!(is_lost_network("network b34548c13d8c not found"));
        assert!(!is_lost_network("No such image: app:1"));
    }

    #[test]
    fn finds_the_ambiguous_network() {
        assert_eq!(
            ambiguous_network("network wharf_s-1 is ambiguous (2 matches found on name)"),
            Some("wharf_s-1".to_string())
        );
        assert_eq!(ambiguous_network("network wharf_s not found"), None);
    }
}
