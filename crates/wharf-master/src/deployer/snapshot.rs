//! What one pass of the deployer looks at: read from the store's cache at its start, with the
//! report index kept from pass to pass (`crate::reports`), and how a node stands for the
//! instances on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use wharf_types::{InstanceReport, NodeState};

use crate::Error;
use crate::model::{self, InstanceRecord, ServiceRecord, StackRecord, keys};
use crate::network;
use crate::placement::NodeFit;
use crate::reports::ReportIndex;
use wharf_store::{Mirror, Refreshed};

use super::Deployer;

/// Everything one pass looks at, read once at its start.
pub(super) struct Snapshot {
    pub(super) stacks: Vec<StackRecord>,
    /// Each service's record and its revision (shared from pass to pass while none changes).
    pub(super) services: Arc<Services>,
    /// Every instance record in key order, shared with the store's cache and kept from pass to
    /// pass while none changes (never copied per pass).
    pub(super) instances: Arc<Vec<Arc<InstanceRecord>>>,
    /// The instances of each service, in slot order.
    pub(super) of_service: Arc<OfService>,
    /// What runs on each node (its instances and previous placements), by node.
    pub(super) by_node: Arc<ByNode>,
    /// What the agents report (kept from pass to pass: `reports.rs`).
    pub(super) reports: Arc<ReportIndex>,
    /// Sorted by id; the same `Arc` from pass to pass while no node record changes.
    pub(super) nodes: Arc<Vec<model::NodeRecord>>,
    /// The node blocks and (stack, node) subnets of cross-host networking (`network.rs`).
    pub(super) subnets: Arc<network::Allocations>,
    /// The stored next generation of each service, and the record's revision (0: none yet).
    pub(super) counters: BTreeMap<(String, String), (u64, u64)>,
    /// The lowest generation each service may hand out next: above every generation an instance
    /// record, a previous placement or any report (lost nodes included) knows of.
    pub(super) generation_floor: BTreeMap<(String, String), u64>,
    /// The store revision the services were read at (the instances at least that).
    pub(super) revision: u64,
    /// (node, driver) pairs reported down for longer than the engine timeout: that driver's
    /// instances on the node count as lost, and it takes no new ones.
    pub(super) drivers_lost: BTreeSet<(String, wharf_types::DriverKind)>,
    /// Each job's record and its revision (`deployer/jobs.rs`).
    pub(super) jobs: BTreeMap<(String, String), (model::JobRecord, u64)>,
    /// Runs asked for per job (`JobRequest::count`).
    pub(super) job_requests: BTreeMap<(String, String), u64>,
    /// Nodes that reported to this master since it started (`Hub::reporting`): a job's run
    /// on another node may have ended while the master was down, whatever its stored report.
    pub(super) reporting: BTreeSet<String>,
}

impl Snapshot {
    /// The newest generation reported per instance id (on nodes not lost).
    pub(super) fn newest(&self) -> &BTreeMap<String, InstanceReport> {
        self.reports.newest()
    }

    /// The instances of services that are gone (removed from their stack file), by service:
    /// one lookup per service, not per instance.
    pub(super) fn orphans(&self) -> impl Iterator<Item = &Arc<InstanceRecord>> {
        self.of_service
            .iter()
            .filter(|(key, _)| !self.services.contains_key(*key))
            .flat_map(|(_, list)| list)
    }

    /// The instances of one service, in slot order.
    pub(super) fn of(&self, stack: &str, service: &str) -> &[Arc<InstanceRecord>] {
        self.of_service
            .get(&(stack.to_string(), service.to_string()))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

/// The records a pass reads, kept from pass to pass and brought up to date with only the keys
/// that changed (`wharf_store::Mirror`), with what is derived from them: a pass during a
/// rollout at 1,000 nodes and 10,000 instances regroups the one service that moved, not all.
pub(super) struct World {
    services: Mirror<ServiceRecord>,
    nodes: Mirror<model::NodeRecord>,
    instances: Mirror<InstanceRecord>,
    services_map: Arc<Services>,
    nodes_list: Arc<Vec<model::NodeRecord>>,
    instances_list: Arc<Vec<Arc<InstanceRecord>>>,
    of_service: Arc<OfService>,
    /// Each node's placements by (instance key, generation): an instance on its node, and a
    /// relocating instance's previous placement on its own (it runs until the replacement is
    /// ready).
    placements: HashMap<String, BTreeMap<(String, u64), Arc<InstanceRecord>>>,
    by_node: Arc<ByNode>,
}

/// What runs on each node (`World::placements` in order), a new `Arc` for a node whenever its
/// list changes: the publisher compares them by pointer.
pub(super) type ByNode = HashMap<String, Arc<Placed>>;
pub(super) type Placed = Vec<(Arc<InstanceRecord>, u64)>;

type JobRecords = BTreeMap<(String, String), (model::JobRecord, u64)>;
type Services = BTreeMap<(String, String), (Arc<ServiceRecord>, u64)>;
type OfService = BTreeMap<(String, String), Vec<Arc<InstanceRecord>>>;

impl Default for World {
    fn default() -> World {
        World {
            services: Mirror::new(keys::SERVICES),
            nodes: Mirror::new(keys::NODES),
            instances: Mirror::new(keys::INSTANCES),
            services_map: Default::default(),
            nodes_list: Default::default(),
            instances_list: Default::default(),
            of_service: Default::default(),
            placements: Default::default(),
            by_node: Default::default(),
        }
    }
}

impl World {
    /// Bring every mirror up to the cache's revision and what derives from them up to date.
    /// Stacks are read before (see `Deployer::snapshot`), services before instances.
    async fn refresh(&mut self, m: &crate::Master) -> Result<(), Error> {
        if !m
            .cache
            .refresh(&mut self.services, decode::<ServiceRecord>)
            .await?
            .is_empty()
        {
            self.services_map = Arc::new(
                self.services
                    .items()
                    .values()
                    .map(|(s, rev)| ((s.stack.clone(), s.name.clone()), (s.clone(), *rev)))
                    .collect(),
            );
        }
        if !m
            .cache
            .refresh(&mut self.nodes, decode::<model::NodeRecord>)
            .await?
            .is_empty()
        {
            let mut nodes: Vec<model::NodeRecord> = self
                .nodes
                .items()
                .values()
                .map(|(n, _)| (**n).clone())
                .collect();
            nodes.sort_by(|a, b| a.id.cmp(&b.id)); // `node_fit` searches by id
            self.nodes_list = Arc::new(nodes);
        }
        match m
            .cache
            .refresh(&mut self.instances, decode::<InstanceRecord>)
            .await?
        {
            Refreshed::Keys(k) if k.is_empty() => {}
            Refreshed::All => self.regroup_all(),
            Refreshed::Keys(changed) => self.regroup_changed(&changed),
        }
        Ok(())
    }

    /// Every instance grouped afresh, by service and by node.
    fn regroup_all(&mut self) {
        // Records come in key order (`/instances/{stack}/{service}/{slot}`), so a
        // service's are one run: grouped in one pass, one key made per service.
        let all: Vec<Arc<InstanceRecord>> = self
            .instances
            .items()
            .values()
            .map(|(i, _)| i.clone())
            .collect();
        let mut of_service = OfService::new();
        for run in all.chunk_by(|a, b| a.stack == b.stack && a.service == b.service) {
            let first = &run[0];
            of_service
                .entry((first.stack.clone(), first.service.clone()))
                .or_default()
                .extend(run.iter().cloned());
        }
        self.placements.clear();
        for (key, (i, _)) in self.instances.items() {
            for (node, g) in placed(i) {
                self.placements
                    .entry(node.to_string())
                    .or_default()
                    .insert((key.clone(), g), i.clone());
            }
        }
        self.by_node = Arc::new(
            self.placements
                .iter()
                .map(|(n, p)| {
                    (
                        n.clone(),
                        Arc::new(p.iter().map(|((_, g), i)| (i.clone(), *g)).collect()),
                    )
                })
                .collect(),
        );
        self.instances_list = Arc::new(all);
        self.of_service = Arc::new(of_service);
    }

    /// Only the nodes and services of the instance keys that changed are grouped again
    /// (`changed`: each key with what it held before).
    fn regroup_changed(&mut self, changed: &BTreeMap<String, Option<Arc<InstanceRecord>>>) {
        // Only the nodes and services of the keys that changed are grouped again.
        let mut nodes = BTreeSet::new();
        for (key, old) in changed {
            for (node, g) in old.iter().flat_map(|o| placed(o)) {
                if let Some(p) = self.placements.get_mut(node) {
                    p.remove(&(key.clone(), g));
                }
                nodes.insert(node.to_string());
            }
            if let Some((i, _)) = self.instances.items().get(key) {
                for (node, g) in placed(i) {
                    self.placements
                        .entry(node.to_string())
                        .or_default()
                        .insert((key.clone(), g), i.clone());
                    nodes.insert(node.to_string());
                }
            }
        }
        let by_node = Arc::make_mut(&mut self.by_node);
        for node in nodes {
            match self.placements.get(&node) {
                Some(p) if !p.is_empty() => {
                    let list = p.iter().map(|((_, g), i)| (i.clone(), *g)).collect();
                    by_node.insert(node, Arc::new(list));
                }
                _ => {
                    self.placements.remove(&node);
                    by_node.remove(&node);
                }
            }
        }
        let dirty: BTreeSet<(String, String)> = changed
            .keys()
            .filter_map(|k| {
                let mut parts = k.strip_prefix(keys::INSTANCES)?.split('/');
                Some((parts.next()?.to_string(), parts.next()?.to_string()))
            })
            .collect();
        let of_service = Arc::make_mut(&mut self.of_service);
        for (st, sv) in dirty {
            let prefix = keys::instances_of_service(&st, &sv);
            let list: Vec<Arc<InstanceRecord>> = self
                .instances
                .items()
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(_, (i, _))| i.clone())
                .collect();
            if list.is_empty() {
                of_service.remove(&(st, sv));
            } else {
                of_service.insert((st, sv), list);
            }
        }
        self.instances_list = Arc::new(
            self.instances
                .items()
                .values()
                .map(|(i, _)| i.clone())
                .collect(),
        );
    }
}

fn decode<T: serde::de::DeserializeOwned>(kv: &wharf_store::KeyValue) -> Result<T, Error> {
    model::decode(&kv.key, &kv.value)
}

/// Where an instance record places it: its node at its generation, and a relocating instance's
/// previous node at the previous generation.
fn placed(i: &InstanceRecord) -> impl Iterator<Item = (&str, u64)> {
    std::iter::once((i.node.as_str(), i.generation))
        .chain(i.previous.as_ref().map(|p| (p.node.as_str(), p.generation)))
}

impl Deployer {
    /// The job records (with their revisions) and the runs asked for, by (stack, service):
    /// few keys, read whole each pass as the generation counters are.
    async fn jobs(&self) -> Result<(JobRecords, BTreeMap<(String, String), u64>), Error> {
        let split = |key: &str, prefix: &str| {
            key[prefix.len()..]
                .split_once('/')
                .map(|(st, sv)| (st.to_string(), sv.to_string()))
        };
        let mut jobs = BTreeMap::new();
        for kv in self.m.store.range(keys::JOBS).await?.0 {
            let r: model::JobRecord = model::decode(&kv.key, &kv.value)?;
            if let Some(k) = split(&kv.key, keys::JOBS) {
                jobs.insert(k, (r, kv.mod_revision));
            }
        }
        let mut requests = BTreeMap::new();
        for kv in self.m.store.range(keys::JOB_REQUESTS).await?.0 {
            let r: model::JobRequest = model::decode(&kv.key, &kv.value)?;
            if let Some(k) = split(&kv.key, keys::JOB_REQUESTS) {
                requests.insert(k, r.count);
            }
        }
        Ok((jobs, requests))
    }

    pub(super) async fn snapshot(&self) -> Result<Snapshot, Error> {
        // Stacks first: each read sees at least every write the previous one saw, so the services
        // and instances read next include all that the stack records promise (judging a
        // deployment relies on it: see `update_deployments`).
        let t0 = std::time::Instant::now();
        let stacks = self.m.stacks().await?;
        // Taken out for the pass's reads and put back after; a pass that fails on the way
        // leaves an empty one, which the next pass fills from everything again.
        let mut world = std::mem::take(&mut *self.world.lock());
        world.refresh(&self.m).await?;
        let revision = world.services.revision();
        let services = world.services_map.clone();
        let nodes = world.nodes_list.clone();
        let instances = world.instances_list.clone();
        let of_service = world.of_service.clone();
        let by_node = world.by_node.clone();
        *self.world.lock() = world;
        let t_records = t0.elapsed();
        // Reports of lost nodes (unreachable, down, removed) say nothing about what runs: their
        // instances count as gone, so a deployment never waits for a dead host (issue 8, defect
        // 2). They are kept apart per node, for fencing when the node comes back.
        let (reps, _) = self
            .m
            .decoded::<wharf_types::NodeReport>(keys::STATUS)
            .await?;
        let mut index = std::mem::take(&mut *self.reports.lock());
        let looked_at = Arc::make_mut(&mut index).update(
            reps.iter()
                .map(|d| (&d.key[keys::STATUS.len()..], &d.value)),
            |node| fit_of(&nodes, node) != NodeFit::Lost,
        );
        *self.reports.lock() = index.clone();
        let t_reports = t0.elapsed();
        let (kvs, _) = self.m.store.range(keys::GENERATIONS).await?;
        let mut counters = BTreeMap::new();
        for kv in kvs {
            let r: model::GenerationRecord = model::decode(&kv.key, &kv.value)?;
            if let Some((st, sv)) = kv.key[keys::GENERATIONS.len()..].split_once('/') {
                counters.insert((st.to_string(), sv.to_string()), (r.next, kv.mod_revision));
            }
        }
        // Above every generation an instance record or a previous placement knows of, and any
        // report (lost nodes included) ever showed: one look per service.
        let generation_floor: BTreeMap<(String, String), u64> = of_service
            .iter()
            .map(|((st, sv), list)| {
                let known = list
                    .iter()
                    .flat_map(|i| {
                        std::iter::once(i.generation)
                            .chain(i.previous.as_ref().map(|p| p.generation))
                    })
                    .max()
                    .map_or(1, |g| g + 1);
                ((st.clone(), sv.clone()), known.max(index.floor(st, sv)))
            })
            .collect();
        let t_floor = t0.elapsed();
        let (jobs, job_requests) = self.jobs().await?;
        // Only jobs ask (bench/scale has thousands of nodes and no job).
        let reporting = if jobs.is_empty() {
            BTreeSet::new()
        } else {
            self.m.hub.reporting()
        };
        let snap = Snapshot {
            stacks,
            services,
            instances,
            of_service,
            counters,
            generation_floor,
            revision,
            drivers_lost: self.m.hub.drivers_down_for(self.m.config.engine_timeout),
            jobs,
            job_requests,
            reporting,
            reports: index,
            nodes,
            by_node,
            subnets: self.allocations().await?,
        };
        tracing::debug!(
            records = ?t_records,
            reports = ?t_reports,
            floor = ?t_floor,
            done = ?t0.elapsed(),
            looked_at,
            "deployer snapshot"
        );
        Ok(snap)
    }

    /// The node blocks and stack subnets, kept from the last pass while nothing under their
    /// prefixes changed (`CachedStore::stamp`): 10,000 subnets at bench/scale's size.
    async fn allocations(&self) -> Result<Arc<network::Allocations>, Error> {
        let stamp = (
            self.m.cache.stamp(keys::BLOCKS).await?,
            self.m.cache.stamp(keys::SUBNETS).await?,
        );
        if let Some((was, a)) = &*self.allocations.lock()
            && *was == stamp
        {
            return Ok(a.clone());
        }
        let a = Arc::new({
            let mut a = network::Allocations::default();
            let (blocks, _) = self.m.decoded::<network::BlockRecord>(keys::BLOCKS).await?;
            for d in blocks {
                a.blocks
                    .insert(d.key[keys::BLOCKS.len()..].to_string(), d.value.block);
            }
            let (subnets, _) = self
                .m
                .decoded::<network::SubnetRecord>(keys::SUBNETS)
                .await?;
            for d in subnets {
                if let Some((stack, node)) = d.key[keys::SUBNETS.len()..].split_once('/') {
                    a.subnets
                        .insert((stack.to_string(), node.to_string()), d.value.subnet);
                }
            }
            a
        });
        *self.allocations.lock() = Some((stamp, a.clone()));
        Ok(a)
    }
}

/// What a node means for the instances on it.
pub(super) fn node_fit(snap: &Snapshot, node: &str) -> NodeFit {
    fit_of(&snap.nodes, node)
}

/// `node_fit` for instances of `driver`: lost too where that driver has been down too long.
pub(super) fn fit_for(snap: &Snapshot, node: &str, driver: wharf_types::DriverKind) -> NodeFit {
    if snap.drivers_lost.contains(&(node.to_string(), driver)) {
        return NodeFit::Lost;
    }
    node_fit(snap, node)
}

/// `node_fit` over `nodes` sorted by id.
pub(super) fn fit_of(nodes: &[model::NodeRecord], node: &str) -> NodeFit {
    // `snapshot` sorts nodes by id: a binary search, not a scan per instance (bench/scale).
    let found = nodes.binary_search_by(|n| n.id.as_str().cmp(node)).ok();
    match found.map(|i| &nodes[i]) {
        Some(n) if n.state == NodeState::Ready && n.drain => NodeFit::Draining,
        Some(n) if n.state == NodeState::Ready => NodeFit::Ok,
        _ => NodeFit::Lost,
    }
}

/// Ready and not draining: takes new instances.
pub(super) fn node_usable(snap: &Snapshot, node: &str, svc: &ServiceRecord) -> bool {
    fit_for(snap, node, svc.spec.driver) == NodeFit::Ok
}

/// Nodes where the service may run (for global services and rebalancing).
pub(super) fn eligible_nodes(snap: &Snapshot, svc: &ServiceRecord) -> Vec<String> {
    snap.nodes
        .iter()
        .filter(|n| {
            n.state == NodeState::Ready
                && !n.drain
                && n.facts.drivers.contains(&svc.spec.driver)
                && !snap.drivers_lost.contains(&(n.id.clone(), svc.spec.driver))
        })
        .map(|n| n.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wharf_store::{Op, SqliteStore, Txn};

    use super::World;
    use crate::Master;
    use crate::model::{NodeRecord, encode, keys};
    use crate::testdata;

    /// What a world derives, in plain values: (services, nodes, instances, per service,
    /// per node).
    type View = (
        Vec<(String, String, u64)>,
        Vec<String>,
        Vec<String>,
        Vec<(String, String, Vec<String>)>,
        Vec<(String, Vec<(String, u64)>)>,
    );

    fn view(w: &World) -> View {
        let mut by_node: Vec<(String, Vec<(String, u64)>)> = w
            .by_node
            .iter()
            .map(|(n, p)| (n.clone(), p.iter().map(|(i, g)| (i.id(), *g)).collect()))
            .collect();
        by_node.sort();
        (
            w.services_map
                .iter()
                .map(|((st, sv), (_, rev))| (st.clone(), sv.clone(), *rev))
                .collect(),
            w.nodes_list.iter().map(|n| n.id.clone()).collect(),
            w.instances_list.iter().map(|i| i.id()).collect(),
            w.of_service
                .iter()
                .map(|((st, sv), l)| (st.clone(), sv.clone(), l.iter().map(|i| i.id()).collect()))
                .collect(),
            by_node,
        )
    }

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            facts: wharf_types::NodeFacts {
                name: id.into(),
                ..Default::default()
            },
            labels: Default::default(),
            state: wharf_types::NodeState::Ready,
            since: 0,
            drain: false,
            address: None,
            tunnel: None,
            key_epoch: 0,
        }
    }

    /// Writes, one step after another: after each, a world kept from step to step (refreshed
    /// with the keys that changed) derives the same as one filled from everything.
    #[tokio::test]
    async fn a_world_refreshed_with_what_changed_derives_the_same_as_one_filled_afresh() {
        let m = Master::new(Arc::new(SqliteStore::open_in_memory().expect("store")));
        let inst = |svc: &str, slot: u32, generation: u64, node: &str, prev: Option<u64>| {
            let mut i = testdata::instance(svc, slot, generation, prev);
            i.node = node.to_string();
            (keys::instance("s", svc, slot), encode(&i))
        };
        let put = |(k, v): (String, Vec<u8>)| Op::put(k, v);
        let steps: Vec<(&str, Vec<Op>)> = vec![
            (
                "first records",
                vec![
                    Op::put(keys::node("n1"), encode(&node("n1"))),
                    Op::put(keys::node("n2"), encode(&node("n2"))),
                    Op::put(
                        keys::service("s", "web"),
                        encode(&testdata::service("web", Default::default())),
                    ),
                    put(inst("web", 0, 1, "n1", None)),
                    put(inst("web", 1, 1, "n2", None)),
                    put(inst("db", 0, 1, "n1", None)),
                ],
            ),
            (
                "a slot replaced on another node",
                vec![put(inst("web", 0, 2, "n2", Some(1)))],
            ),
            (
                "the previous placement dropped",
                vec![put(inst("web", 0, 2, "n2", None))],
            ),
            (
                "a service's instances gone, a node added",
                vec![
                    Op::delete(keys::instance("s", "db", 0)),
                    Op::put(keys::node("n3"), encode(&node("n3"))),
                ],
            ),
            (
                "a new service on the new node",
                vec![
                    Op::put(
                        keys::service("s", "api"),
                        encode(&testdata::service("api", Default::default())),
                    ),
                    put(inst("api", 0, 1, "n3", None)),
                    put(inst("api", 1, 1, "n3", None)),
                ],
            ),
            (
                "a node and its instances removed",
                vec![
                    Op::delete(keys::node("n3")),
                    Op::delete(keys::instance("s", "api", 0)),
                    Op::delete(keys::instance("s", "api", 1)),
                    Op::delete(keys::service("s", "api")),
                ],
            ),
        ];
        let mut kept = World::default();
        for (what, ops) in steps {
            m.store.txn(Txn::new().then(ops)).await.expect("write");
            kept.refresh(&m).await.expect("refresh");
            let mut fresh = World::default();
            fresh.refresh(&m).await.expect("fill");
            assert_eq!(view(&kept), view(&fresh), "after: {what}");
        }
        // What the last step left: both web slots on n2, nothing on n1.
        let (_, nodes, instances, _, by_node) = view(&kept);
        assert_eq!(nodes, ["n1", "n2"]);
        assert_eq!(instances, ["s.web.0", "s.web.1"]);
        assert_eq!(
            by_node,
            [(
                "n2".to_string(),
                vec![("s.web.0".to_string(), 2), ("s.web.1".to_string(), 1)]
            )]
        );
    }
}
