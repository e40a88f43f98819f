//! Publishing: every connected node's desired state, built only for the nodes whose inputs
//! changed since the last publish (`Made`), and the fencing of what a node ran while it was
//! lost.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use base64::Engine;
use wharf_types::{NodeDesired, ObjectKind, StackPurge};

/// Opened secret and config values by (kind, name, version), base64.
pub(super) type FileValues =
    std::collections::HashMap<(ObjectKind, String, u64), wharf_types::Secret>;

use crate::Error;
use crate::model::{self, InstanceRecord, Removal, keys};
use crate::network;

use super::Deployer;
use super::snapshot::*;

impl Deployer {
    /// Hand every connected node its desired state.
    pub(super) async fn publish(&self, snap: &Snapshot) -> Result<(), Error> {
        let t0 = std::time::Instant::now();
        let purges = self.purges().await?;
        // What runs on each node comes grouped from the snapshot (`World::by_node`), a new `Arc`
        // only for the nodes whose placements changed.
        let t_grouped = t0.elapsed();
        self.open_files(snap).await;
        // Every node's ingress gets the same routing table (`ingress.rs`), with the routes'
        // private keys opened.
        let mut ingress = crate::ingress::table(
            snap.services.values().map(|(s, _)| &**s),
            snap.instances.iter().map(|i| &**i),
            &|id, g| snap.reports.of_generation(id, g),
            &crate::drain::generation_draining,
        );
        self.open_keys(&mut ingress);
        let discovery = self.discovery(snap);
        let t_tables = t0.elapsed();
        let addresses = reach_of(snap);
        let cluster = self
            .cluster
            .get_or_try_init(|| self.m.cluster_id())
            .await?
            .clone();
        // Fencing looks records up by id; only worth building when some placement was lost.
        let records: BTreeMap<String, &InstanceRecord> = snap
            .instances
            .iter()
            .filter(|i| !i.lost.is_empty())
            .map(|i| (i.id(), &**i))
            .collect();
        let networks = self.networks(snap, &addresses);
        let no_network: Arc<wharf_types::NodeNetwork> = Arc::default();
        let t_shared = t0.elapsed();
        // The shared parts are kept from the last publish while they stay equal, so a node's
        // inputs compare by pointer (`Made`).
        let mut made = self.made.lock();
        let ingress = match made.values().next() {
            Some(m) if *m.ingress == ingress => m.ingress.clone(),
            _ => Arc::new(ingress),
        };
        let purges = match made.values().next() {
            Some(m) if *m.purges == purges => m.purges.clone(),
            _ => Arc::new(purges),
        };
        let mut sent = 0usize;
        let connections = self.m.hub.connections();
        // Kept in place for the nodes whose inputs are the same (most of them), replaced for
        // the others; nodes no longer connected are dropped at the end.
        let mut connected = std::collections::HashSet::with_capacity(connections.len());
        let nothing: Arc<Placed> = Arc::default();
        for (node, serial) in connections {
            let placed = snap.by_node.get(&node).unwrap_or(&nothing);
            let network = networks
                .as_ref()
                .and_then(|n| n.get(&node))
                .unwrap_or(&no_network);
            let fence = fence(&node, snap, &records);
            // The same inputs as last time: nothing built, compared or sent. Discovery is
            // compared in place, from the stacks the node's placements had then.
            let now = Inputs {
                serial,
                instances: placed,
                ingress: &ingress,
                purges: &purges,
                network,
                fence: &fence,
                discovery: &discovery,
            };
            if made.get(&node).is_some_and(|m| m.same(&now)) {
                connected.insert(node);
                continue;
            }
            let stacks: BTreeSet<&str> = placed.iter().map(|(i, _)| i.stack.as_str()).collect();
            let inputs = Made {
                serial,
                discovery: stacks
                    .iter()
                    .filter_map(|st| discovery.get(st))
                    .flatten()
                    .cloned()
                    .collect(),
                stacks: stacks.iter().map(|s| s.to_string()).collect(),
                instances: placed.clone(),
                ingress: ingress.clone(),
                purges: purges.clone(),
                network: network.clone(),
                fence,
            };
            sent += 1;
            self.m
                .hub
                .publish(&node, self.desired(&inputs, &cluster, snap.revision));
            made.insert(node.clone(), inputs);
            connected.insert(node);
        }
        made.retain(|n, _| connected.contains(n));
        drop(made);
        tracing::debug!(
            grouped = ?t_grouped,
            tables = ?t_tables,
            shared = ?t_shared,
            nodes = ?t0.elapsed(),
            sent,
            "deployer publish"
        );
        Ok(())
    }

    /// Open the secret and config versions the assigned instances mount that are not open yet,
    /// and forget those no longer mounted. One that cannot be opened (removed meanwhile) is left
    /// out: its instances fail to start, saying which.
    async fn open_files(&self, snap: &Snapshot) {
        let mut wanted = std::collections::HashSet::new();
        for (svc, _) in snap.services.values() {
            for tls in svc.spec.wharf.ingress.iter().filter_map(|r| r.tls.as_ref()) {
                if let Some((name, version)) = crate::secrets::parse_key_ref(tls.key.expose()) {
                    wanted.insert((ObjectKind::Secret, name.to_string(), version));
                }
            }
        }
        for i in snap.instances.iter() {
            let previous = i.previous_spec().map(|(_, s)| s);
            for spec in std::iter::once(&i.spec).chain(previous) {
                for (kind, f) in spec.files() {
                    wanted.insert((kind, f.name.clone(), f.version));
                }
            }
        }
        let missing: Vec<_> = {
            let mut open = self.files.lock();
            open.retain(|k, _| wanted.contains(k));
            wanted
                .into_iter()
                .filter(|k| !open.contains_key(k))
                .collect()
        };
        for (kind, name, version) in missing {
            match self.m.object_value(kind, &name, version).await {
                Ok(v) => {
                    let data =
                        wharf_types::Secret(base64::engine::general_purpose::STANDARD.encode(v));
                    self.files.lock().insert((kind, name, version), data);
                }
                Err(e) => tracing::warn!(
                    "{} {name} version {version}: cannot be delivered: {e}",
                    kind.as_str()
                ),
            }
        }
    }

    /// Put the private keys into the routes of the ingress table in place of the references
    /// the specs hold (`secrets::key_ref`).
    fn open_keys(&self, table: &mut [wharf_types::IngressService]) {
        let open = self.files.lock();
        let routes = table.iter_mut().flat_map(|s| s.routes.iter_mut());
        for tls in routes.filter_map(|r| r.tls.as_mut()) {
            let Some((name, version)) = crate::secrets::parse_key_ref(tls.key.expose()) else {
                continue;
            };
            let pem = open
                .get(&(ObjectKind::Secret, name.to_string(), version))
                .and_then(|b64| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b64.expose())
                        .ok()
                })
                .and_then(|v| String::from_utf8(v).ok());
            if let Some(pem) = pem {
                tls.key = wharf_types::Secret(pem);
            }
        }
    }

    /// The stack removals agents are to clean up after.
    async fn purges(&self) -> Result<Vec<StackPurge>, Error> {
        let (purge_kvs, _) = self.m.store.range(keys::PURGES).await?;
        let mut purges = Vec::new();
        for kv in purge_kvs {
            let r: Removal = model::decode(&kv.key, &kv.value)?;
            purges.push(StackPurge {
                stack: kv.key[keys::PURGES.len()..].to_string(),
                volumes: r.volumes,
            });
        }
        Ok(purges)
    }

    /// Discovery: each node gets the services of the stacks it runs instances of. A service's
    /// records are made again only when what they are made of changed (`Settled`: its
    /// record, its instance records, its reports); else the same `Arc` as last time.
    fn discovery<'s>(
        &self,
        snap: &'s Snapshot,
    ) -> BTreeMap<&'s str, Vec<Arc<wharf_types::DiscoveryService>>> {
        let mut discovery: BTreeMap<&str, Vec<Arc<wharf_types::DiscoveryService>>> =
            BTreeMap::new();
        let mut memo = self.discovered.lock();
        let mut next = BTreeMap::new();
        for (key, (svc, rev)) in snap.services.iter() {
            let insts = snap.of(&svc.stack, &svc.name);
            let inputs = super::Settled {
                rev: *rev,
                instances: insts.to_vec(),
                reports: snap.reports.version(&svc.stack, &svc.name),
                nodes: 0,
            };
            let made = match memo.remove(key) {
                Some((was, d)) if was.same(&inputs) => d,
                old => {
                    let fresh = crate::discovery::services(
                        [&**svc],
                        insts.iter().map(|i| &**i),
                        &|id, g| snap.reports.of_generation(id, g),
                        &crate::drain::generation_draining,
                    )
                    .into_iter()
                    .next()
                    .expect("one service in, one out");
                    // Made again but the same (a report changed in a way discovery does
                    // not show): the old `Arc`, so the nodes of the stack get nothing new.
                    match old {
                        Some((_, d)) if *d == fresh => d,
                        _ => Arc::new(fresh),
                    }
                }
            };
            discovery
                .entry(svc.stack.as_str())
                .or_default()
                .push(made.clone());
            next.insert(key.clone(), (inputs, made));
        }
        *memo = next;
        cross_stack(&mut discovery);
        discovery
    }

    /// Each node's share of the network, made again only when the allocations (the same
    /// `Arc` while their prefixes are unchanged) or the nodes' addresses changed: making them
    /// all was a third of a publish at 1,000 nodes (bench/scale).
    fn networks(
        &self,
        snap: &Snapshot,
        addresses: &BTreeMap<String, network::Reach>,
    ) -> Option<Arc<BTreeMap<String, Arc<wharf_types::NodeNetwork>>>> {
        self.m.config.network_pool.map(|pool| {
            let mut memo = self.networks.lock();
            match memo.take() {
                Some(n)
                    if Arc::ptr_eq(&n.allocations, &snap.subnets) && n.addresses == *addresses =>
                {
                    memo.insert(n).per_node.clone()
                }
                old => {
                    let peers = old.as_ref().map(|n| &n.peers);
                    let shares = network::Shares::new(
                        pool,
                        &snap.subnets,
                        addresses,
                        self.m.config.encryption,
                        peers,
                    );
                    let per_node: Arc<BTreeMap<String, Arc<wharf_types::NodeNetwork>>> = Arc::new(
                        snap.subnets
                            .blocks
                            .keys()
                            .map(|n| (n.clone(), Arc::new(shares.node(n, &snap.subnets))))
                            .collect(),
                    );
                    *memo = Some(Networks {
                        allocations: snap.subnets.clone(),
                        addresses: addresses.clone(),
                        peers: shares.peers().clone(),
                        per_node: per_node.clone(),
                    });
                    per_node
                }
            }
        })
    }

    /// A node's desired state from what it was made of.
    fn desired(&self, inputs: &Made, cluster: &str, revision: u64) -> NodeDesired {
        let assignments: Vec<_> = inputs
            .instances
            .iter()
            .map(|(i, g)| assignment(i, *g))
            .collect();
        // The values of what these instances mount: only this node's.
        let mut files = BTreeMap::new();
        let open = self.files.lock();
        for (kind, f) in assignments.iter().flat_map(|a| a.spec.files()) {
            let key = (kind, f.name.clone(), f.version);
            if let Some(data) = open.get(&key) {
                files.entry(key).or_insert_with(|| data.clone());
            }
        }
        drop(open);
        NodeDesired {
            files: files
                .into_iter()
                .map(|((kind, name, version), data)| wharf_types::FileValue {
                    kind,
                    name,
                    version,
                    data,
                })
                .collect(),
            assignments,
            purges: (*inputs.purges).clone(),
            ingress: inputs.ingress.clone(),
            discovery: wharf_types::Discovery {
                domain: self.m.config.cluster_domain.clone(),
                services: inputs.discovery.clone(),
            },
            network: inputs.network.clone(),
            cluster: cluster.to_string(),
            revision,
            fence: inputs.fence.clone(),
            node_timeout_ms: self.m.config.node_timeout.as_millis() as u64,
        }
    }
}

/// An instance as a node is assigned it; the previous placement of a start-first replacement
/// runs the old spec.
fn assignment(i: &InstanceRecord, generation: u64) -> wharf_types::Assignment {
    let (spec_hash, spec) = match i.previous_spec() {
        Some(old) if generation != i.generation => old,
        _ => (i.spec_hash.as_str(), &i.spec),
    };
    wharf_types::Assignment {
        id: i.id(),
        stack: i.stack.clone(),
        service: i.service.clone(),
        slot: i.slot,
        generation,
        spec_hash: spec_hash.to_string(),
        spec: spec.clone(),
    }
}

/// How each node with an address is reached: its address and its end of the tunnel.
fn reach_of(snap: &Snapshot) -> BTreeMap<String, network::Reach> {
    snap.nodes
        .iter()
        .filter_map(|n| {
            let tunnel = n.tunnel.as_ref().filter(|t| !t.public_key.is_empty());
            Some((
                n.id.clone(),
                network::Reach {
                    address: n.address.clone()?,
                    public_key: tunnel.map(|t| t.public_key.clone()),
                    port: tunnel.map_or(0, |t| t.port),
                    key_epoch: n.key_epoch,
                },
            ))
        })
        .collect()
}

/// `allow_from` across stacks: a service T letting in S of another stack puts S's records with
/// T's stack (T's nodes let S's instances in) and T's with S's (S's nodes resolve T's name).
fn cross_stack(discovery: &mut BTreeMap<&str, Vec<Arc<wharf_types::DiscoveryService>>>) {
    let by_name: BTreeMap<String, Arc<wharf_types::DiscoveryService>> = discovery
        .values()
        .flatten()
        .map(|d| (format!("{}/{}", d.stack, d.service), d.clone()))
        .collect();
    let mut extra: Vec<(String, Arc<wharf_types::DiscoveryService>)> = Vec::new();
    for t in by_name.values() {
        for s in t.allow_from.iter().filter_map(|n| by_name.get(n)) {
            if s.stack != t.stack {
                extra.push((t.stack.clone(), s.clone()));
                extra.push((s.stack.clone(), t.clone()));
            }
        }
    }
    for (stack, d) in extra {
        if let Some(list) = discovery.get_mut(stack.as_str())
            && !list.iter().any(|x| Arc::ptr_eq(x, &d))
        {
            list.push(d);
        }
    }
}

/// Every node's network share, and what they were made from.
pub(super) struct Networks {
    allocations: Arc<network::Allocations>,
    addresses: BTreeMap<String, network::Reach>,
    /// The peer list, shared again by the next shares while it stays the same.
    peers: Arc<Vec<wharf_types::PeerBlock>>,
    per_node: Arc<BTreeMap<String, Arc<wharf_types::NodeNetwork>>>,
}

/// What a node's desired state is made of. The same inputs make the same desired state, so a
/// node whose inputs did not change since the last publish gets nothing built, compared or sent
/// (bench/scale: a pass built and compared 1,000 desired states for the few nodes a deploy
/// touches). Records and shared tables compare by pointer: the cache hands out one `Arc` per
/// record version, and the publisher keeps the tables of the last publish while they stay equal.
pub(super) struct Made {
    /// The node's connection: a reconnect is sent everything again.
    serial: u64,
    /// What runs on the node (`Snapshot::by_node`: a new `Arc` whenever it changes).
    instances: Arc<Placed>,
    /// The stacks of those instances, whose discovery records the node gets.
    stacks: Vec<String>,
    ingress: Arc<Vec<wharf_types::IngressService>>,
    purges: Arc<Vec<StackPurge>>,
    discovery: Vec<Arc<wharf_types::DiscoveryService>>,
    network: Arc<wharf_types::NodeNetwork>,
    fence: Vec<wharf_types::InstanceRef>,
}

/// A node's inputs at this publish, to compare with what its last desired state was made of.
struct Inputs<'a> {
    serial: u64,
    instances: &'a Arc<Placed>,
    ingress: &'a Arc<Vec<wharf_types::IngressService>>,
    purges: &'a Arc<Vec<StackPurge>>,
    network: &'a Arc<wharf_types::NodeNetwork>,
    fence: &'a [wharf_types::InstanceRef],
    /// Every stack's discovery records.
    discovery: &'a BTreeMap<&'a str, Vec<Arc<wharf_types::DiscoveryService>>>,
}

impl Made {
    /// Whether `now` makes the same desired state. Records and shared tables compare by
    /// pointer; discovery in place, over the stacks the node's placements had (the same
    /// placements have the same stacks).
    fn same(&self, now: &Inputs) -> bool {
        // Destructured, so that a new input cannot be forgotten here.
        let Made {
            serial,
            instances,
            stacks,
            ingress,
            purges,
            discovery,
            network,
            fence,
        } = self;
        *serial == now.serial
            && Arc::ptr_eq(instances, now.instances)
            && Arc::ptr_eq(ingress, now.ingress)
            && Arc::ptr_eq(purges, now.purges)
            && (Arc::ptr_eq(network, now.network) || **network == **now.network)
            && fence.as_slice() == now.fence
            && discovery.iter().map(Arc::as_ptr).eq(stacks
                .iter()
                .filter_map(|st| now.discovery.get(st.as_str()))
                .flatten()
                .map(Arc::as_ptr))
    }
}

/// What `node` still runs (by its last report) that was replaced on another node while it was
/// lost: the slot's current placement, and its previous one, are elsewhere. Those are fenced:
/// stopped at once, without the drain and grace a planned stop gets, since their replacements
/// already serve (issue 8, defect 6: stale instances ran 10 s beside their replacements).
pub(super) fn fence(
    node: &str,
    snap: &Snapshot,
    records: &BTreeMap<String, &InstanceRecord>,
) -> Vec<wharf_types::InstanceRef> {
    if records.is_empty() {
        return Vec::new();
    }
    let Some(reports) = snap.reports.of_node(node) else {
        return Vec::new();
    };
    let mut out: Vec<wharf_types::InstanceRef> = reports
        .instances
        .iter()
        .filter(|r| {
            records.get(&r.id).is_some_and(|i| {
                i.lost
                    .iter()
                    .any(|l| l.node == node && r.generation <= l.generation)
            })
        })
        .map(|r| wharf_types::InstanceRef {
            id: r.id.clone(),
            generation: r.generation,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}
