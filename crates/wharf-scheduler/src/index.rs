//! Indexes that make `Cluster::place` fast while giving exactly the reference scan's answer.
//!
//! The ranking key is (spread group counts, instances of the service on the node, affinity, tail),
//! where the tail is (packing room, instances overall, node index). The first three parts are the same
//! for almost every node: only nodes that run the service or one of its affinity services (the
//! *special* nodes, found through `hosts`) differ from (group counts, 0, 0). So:
//!
//! - per request *shape* (driver, constraints, spread preferences, packing order) the index caches
//!   which nodes pass the static filters (ready, draining, driver, constraints), their spread group,
//!   and per finest group an ordered set of tail keys of the nodes not full (below their
//!   `max_instances`), kept up to date on every placement;
//! - `place` sums the service's instances per group, walks the groups from the lowest counts and, in
//!   each, the ordered set from the first node with enough of the dominant resource, skipping special
//!   nodes and nodes failing the dynamic filters; the first hit is the best ordinary node;
//! - then it ranks the special nodes one by one with their full keys, skipping those whose group
//!   counts already lose.
//!
//! Cost per placement: O(shapes · log n) to keep the sets, plus O(groups + special nodes + skipped
//! nodes). Nodes are skipped one by one when they have enough of the dominant resource but not of the
//! other one, or hold a conflicting port or anti-affine service; a scan can degrade towards linear
//! when many nodes are in that state. Shapes are cached up to `MAX_SHAPES`; past it the cache is
//! cleared (deterministically) and rebuilt on demand, each build being one O(n) pass.

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use wharf_types::DriverKind;

use crate::filter::{self, Mode, Pack, RankKey, TailKey};
use crate::{NodeView, Request, Resources};

/// Request shapes whose indexes are kept at once. Each costs O(n) memory and O(log n) per placement.
const MAX_SHAPES: usize = 32;

#[derive(Clone, Debug)]
struct Shape {
    driver: DriverKind,
    constraints: Vec<String>,
    spread: Vec<String>,
    pack: Pack,
    /// Per spread level, the group of every node (all nodes: counts include unfeasible ones).
    level_gid: Vec<Vec<u32>>,
    /// Groups per level.
    level_len: Vec<usize>,
    /// Finest group of every node passing the static filters, `NONE` otherwise.
    fine_gid: Vec<u32>,
    /// For each finest group, its group at each level.
    fine_levels: Vec<Vec<u32>>,
    /// For each finest group, the tail keys of its statically feasible nodes that are not full
    /// (`filter::full`: a full node would otherwise be skipped one by one by every placement).
    sets: Vec<BTreeSet<TailKey>>,
}

const NONE: u32 = u32::MAX;

impl Shape {
    fn build(nodes: &[NodeView], req: &Request, pack: Pack) -> Shape {
        let parsed = filter::parse_all(req);
        let attrs = filter::spread_attrs(req);
        let mut level_gid = Vec::with_capacity(attrs.len());
        let mut level_len = Vec::with_capacity(attrs.len());
        for level in 0..attrs.len() {
            let mut ids: HashMap<Vec<Option<&str>>, u32> = HashMap::new();
            let gids: Vec<u32> = nodes
                .iter()
                .map(|n| {
                    let k: Vec<Option<&str>> = attrs[..=level]
                        .iter()
                        .map(|a| crate::constraint::attr_value(a, n))
                        .collect();
                    let next = ids.len() as u32;
                    *ids.entry(k).or_insert(next)
                })
                .collect();
            level_gid.push(gids);
            level_len.push(ids.len());
        }
        let fine_of = |i: usize| level_gid.last().map_or(0, |g: &Vec<u32>| g[i]);
        let fine_len = level_len.last().copied().unwrap_or(1);
        let mut fine_levels = vec![Vec::new(); fine_len];
        let mut sets = vec![BTreeSet::new(); fine_len];
        let mut fine_gid = vec![NONE; nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            let g = fine_of(i);
            if fine_levels[g as usize].is_empty() {
                fine_levels[g as usize] = level_gid.iter().map(|l| l[i]).collect();
            }
            if filter::static_check(n, req, &parsed).is_ok() {
                fine_gid[i] = g;
                if !filter::full(n) {
                    sets[g as usize].insert(filter::tail_key(n, i as u32, pack));
                }
            }
        }
        Shape {
            driver: req.driver,
            constraints: req.constraints.clone(),
            spread: req.spread.clone(),
            pack,
            level_gid,
            level_len,
            fine_gid,
            fine_levels,
            sets,
        }
    }

    fn matches(&self, req: &Request, pack: Pack) -> bool {
        self.driver == req.driver
            && self.pack == pack
            && self.constraints == req.constraints
            && self.spread == req.spread
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Index {
    /// Nodes running each service ("stack/service" → node index → instances).
    hosts: HashMap<String, BTreeMap<u32, u32>>,
    shapes: Vec<Shape>,
    /// Shape hash → positions in `shapes`.
    by_hash: HashMap<u64, Vec<usize>>,
}

fn shape_hash(req: &Request, pack: Pack) -> u64 {
    // DefaultHasher::new() has fixed keys: deterministic.
    let mut h = DefaultHasher::new();
    (req.driver, &req.constraints, &req.spread, pack).hash(&mut h);
    h.finish()
}

impl Index {
    pub(crate) fn new(nodes: &[NodeView]) -> Index {
        let mut hosts: HashMap<String, BTreeMap<u32, u32>> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for (svc, &c) in &n.per_service {
                if c > 0 {
                    hosts.entry(svc.clone()).or_default().insert(i as u32, c);
                }
            }
        }
        Index {
            hosts,
            ..Index::default()
        }
    }

    fn shape(&mut self, nodes: &[NodeView], req: &Request, pack: Pack) -> usize {
        let h = shape_hash(req, pack);
        if let Some(&s) = self
            .by_hash
            .get(&h)
            .and_then(|found| found.iter().find(|&&s| self.shapes[s].matches(req, pack)))
        {
            return s;
        }
        if self.shapes.len() >= MAX_SHAPES {
            self.shapes.clear();
            self.by_hash.clear();
        }
        self.shapes.push(Shape::build(nodes, req, pack));
        let s = self.shapes.len() - 1;
        self.by_hash.entry(h).or_default().push(s);
        s
    }

    /// The best node for `req`, or `None` when no node fits (the caller then asks the reference scan
    /// for the explanation).
    pub(crate) fn place(
        &mut self,
        nodes: &[NodeView],
        req: &Request,
        total: Resources,
    ) -> Option<u32> {
        if nodes.is_empty() || req.max_per_node == Some(0) {
            return None;
        }
        let pack = filter::pack_order(req, total);
        let s = self.shape(nodes, req, pack);
        let shape = &self.shapes[s];
        let empty = BTreeMap::new();
        let own = self.hosts.get(&req.service).unwrap_or(&empty);

        // Instances of the service per spread group, at each level.
        let mut counts: Vec<Vec<u32>> = shape.level_len.iter().map(|&n| vec![0; n]).collect();
        for (&idx, &c) in own {
            for (level, count) in counts.iter_mut().enumerate() {
                count[shape.level_gid[level][idx as usize] as usize] += c;
            }
        }
        let group_counts = |g: usize| -> Vec<u32> {
            shape.fine_levels[g]
                .iter()
                .zip(&counts)
                .map(|(&gid, c)| c[gid as usize])
                .collect()
        };

        let mut special: Vec<u32> = own.keys().copied().collect();
        for a in &req.affinity {
            if let Some(h) = self.hosts.get(a) {
                special.extend(h.keys().copied());
            }
        }
        special.sort_unstable();
        special.dedup();

        // Ordinary nodes: groups from the lowest counts; in each, the first feasible node in tail order.
        let mut groups: Vec<(Vec<u32>, usize)> = (0..shape.sets.len())
            .filter(|&g| !shape.sets[g].is_empty())
            .map(|g| (group_counts(g), g))
            .collect();
        groups.sort_unstable();
        let start: TailKey = match pack {
            Pack::None => (0, 0, 0, 0),
            Pack::MemoryFirst => (req.reservation.memory_bytes, 0, 0, 0),
            Pack::CpuFirst => (req.reservation.nano_cpus, 0, 0, 0),
        };
        let mut best: Option<(RankKey, u32)> = None;
        let mut i = 0;
        while i < groups.len() && best.is_none() {
            let mut j = i;
            while j < groups.len() && groups[j].0 == groups[i].0 {
                let g = groups[j].1;
                let hit = shape.sets[g].range(start..).find(|k| {
                    special.binary_search(&k.3).is_err()
                        && filter::dynamic_check(&nodes[k.3 as usize], req, Mode::New).is_ok()
                });
                if let Some(&k) = hit
                    && best.as_ref().is_none_or(|(b, _)| k < b.3)
                {
                    best = Some(((groups[j].0.clone(), 0, Reverse(0), k), k.3));
                }
                j += 1;
            }
            i = j;
        }

        // Special nodes: their full keys, unless their group counts already lose.
        for &idx in &special {
            let g = shape.fine_gid[idx as usize];
            if g == NONE {
                continue;
            }
            let spread = group_counts(g as usize);
            if best.as_ref().is_some_and(|(b, _)| spread > b.0) {
                continue;
            }
            let node = &nodes[idx as usize];
            if filter::dynamic_check(node, req, Mode::New).is_err() {
                continue;
            }
            let key = (
                spread,
                own.get(&idx).copied().unwrap_or(0),
                Reverse(filter::affinity_score(node, req)),
                filter::tail_key(node, idx, shape.pack),
            );
            if best.as_ref().is_none_or(|(b, _)| key < *b) {
                best = Some((key, idx));
            }
        }
        best.map(|(_, idx)| idx)
    }

    /// Takes a node out of the ordered sets, before its view changes.
    pub(crate) fn remove_node(&mut self, node: &NodeView, idx: u32) {
        for shape in &mut self.shapes {
            let g = shape.fine_gid[idx as usize];
            if g != NONE {
                shape.sets[g as usize].remove(&filter::tail_key(node, idx, shape.pack));
            }
        }
    }

    /// Puts a node back in the ordered sets, after its view changed; a full node stays out (its
    /// instance count changes only through `remove_node`/`insert_node`, so it comes back when
    /// an instance is released).
    pub(crate) fn insert_node(&mut self, node: &NodeView, idx: u32) {
        if filter::full(node) {
            return;
        }
        for shape in &mut self.shapes {
            let g = shape.fine_gid[idx as usize];
            if g != NONE {
                shape.sets[g as usize].insert(filter::tail_key(node, idx, shape.pack));
            }
        }
    }

    /// Counts one instance of `service` more (`add`) or less on the node.
    pub(crate) fn count(&mut self, service: &str, idx: u32, add: bool) {
        if add {
            *self
                .hosts
                .entry(service.to_string())
                .or_default()
                .entry(idx)
                .or_default() += 1;
        } else if let Some(h) = self.hosts.get_mut(service) {
            if let Some(c) = h.get_mut(&idx) {
                *c -= 1;
                if *c == 0 {
                    h.remove(&idx);
                }
            }
            if h.is_empty() {
                self.hosts.remove(service);
            }
        }
    }
}
