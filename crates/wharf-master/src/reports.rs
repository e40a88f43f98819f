//! The deployer's index of what agents report, kept from pass to pass and brought up to date one
//! node at a time: only nodes whose report changed (a new `Arc` from the store's cache) or whose
//! standing changed (lost or not) are looked at again. At 1,000 nodes and 10,000 instances a
//! deploy changes the reports of a few nodes per pass; rebuilding the whole index each pass (a
//! clone, a sort and two maps of every report) was the largest part of a pass (bench/scale).
//!
//! Reports of lost nodes (unreachable, down, removed, or whose driver is lost) are kept apart
//! (`by_node`, for fencing) and say nothing about what runs: they are not in `every` or
//! `newest`. Every report, lost or not, raises the generation floor of its service.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use wharf_types::{InstanceReport, NodeReport};

#[derive(Clone, Default)]
pub struct ReportIndex {
    /// Every node's last report (lost nodes included), and whether it counts (not lost).
    nodes: BTreeMap<String, (Arc<NodeReport>, bool)>,
    /// Every report of the nodes that count, by (instance id, generation, node).
    every: BTreeMap<(String, u64, String), InstanceReport>,
    /// The newest generation reported per instance id, among the nodes that count.
    newest: BTreeMap<String, InstanceReport>,
    /// Above every generation any report (lost nodes included) ever showed, by (stack, service).
    /// Only rises: a generation is never handed out twice, even if its report is gone.
    floor: BTreeMap<(String, String), u64>,
    /// Moves whenever a report of one of the service's instances may have changed, by (stack,
    /// service): a planner that saw the same version saw the same reports.
    versions: BTreeMap<(String, String), u64>,
    /// The last version handed out.
    version: u64,
}

impl ReportIndex {
    /// Bring the index up to `reports` (every node's report, by node), where `counts` says
    /// whether a node's reports count (it is not lost). Returns how many nodes were looked at.
    pub fn update<'a>(
        &mut self,
        reports: impl IntoIterator<Item = (&'a str, &'a Arc<NodeReport>)>,
        counts: impl Fn(&str) -> bool,
    ) -> usize {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut changed = 0;
        for (node, report) in reports {
            seen.insert(node);
            let count = counts(node);
            if let Some((old, old_count)) = self.nodes.get(node)
                && Arc::ptr_eq(old, report)
                && *old_count == count
            {
                continue;
            }
            changed += 1;
            // Only the instances whose own report changed are touched: a node reports all its
            // instances at once, and one changed instance must not make every other service
            // on that node look changed (bench/scale: each such report remade the discovery
            // records, and so the desired states, of every stack on the node).
            let old: Option<Arc<NodeReport>> = match self.nodes.get(node) {
                Some((old, true)) => Some(old.clone()),
                _ => None,
            };
            let before: BTreeMap<(&str, u64), &InstanceReport> = old
                .iter()
                .flat_map(|o| o.instances.iter())
                .map(|r| ((r.id.as_str(), r.generation), r))
                .collect();
            let mut after: BTreeMap<(&str, u64), &InstanceReport> = BTreeMap::new();
            for r in &report.instances {
                self.raise_floor(r);
                if count {
                    after.insert((r.id.as_str(), r.generation), r);
                }
            }
            for (&(id, generation), old) in &before {
                if after.get(&(id, generation)) != Some(old) {
                    self.every
                        .remove(&(id.to_string(), generation, node.to_string()));
                    touched.insert(id.to_string());
                }
            }
            for (&(id, generation), r) in &after {
                if before.get(&(id, generation)) != Some(r) {
                    self.every
                        .insert((id.to_string(), generation, node.to_string()), (*r).clone());
                    touched.insert(id.to_string());
                }
            }
            self.nodes.insert(node.to_string(), (report.clone(), count));
        }
        let gone: Vec<String> = self
            .nodes
            .keys()
            .filter(|n| !seen.contains(n.as_str()))
            .cloned()
            .collect();
        for node in gone {
            changed += 1;
            self.forget(&node, &mut touched);
            self.nodes.remove(&node);
        }
        if !touched.is_empty() {
            self.version += 1;
        }
        for id in touched {
            if let Some(key) = service_of(&id) {
                self.versions.insert(key, self.version);
            }
            match self.of_id(&id).last() {
                Some(r) => {
                    let r = r.clone();
                    self.newest.insert(id, r);
                }
                None => {
                    self.newest.remove(&id);
                }
            }
        }
        changed
    }

    /// Take a node's counted reports out of `every`, noting the ids they touch.
    fn forget(&mut self, node: &str, touched: &mut BTreeSet<String>) {
        let Some((old, true)) = self.nodes.get(node) else {
            return;
        };
        for r in &old.instances {
            self.every
                .remove(&(r.id.clone(), r.generation, node.to_string()));
            touched.insert(r.id.clone());
        }
    }

    fn raise_floor(&mut self, r: &InstanceReport) {
        if let Some(key) = service_of(&r.id) {
            let f = self.floor.entry(key).or_insert(1);
            *f = (*f).max(r.generation + 1);
        }
    }

    /// The version of the reports of a service's instances (see `versions`).
    pub fn version(&self, stack: &str, service: &str) -> u64 {
        self.versions
            .get(&(stack.to_string(), service.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// The newest generation reported per instance id (nodes that count).
    pub fn newest(&self) -> &BTreeMap<String, InstanceReport> {
        &self.newest
    }

    /// The report of generation `generation` of instance `id`, if a node that counts has one.
    pub fn of_generation(&self, id: &str, generation: u64) -> Option<&InstanceReport> {
        self.every
            .range((id.to_string(), generation, String::new())..)
            .next()
            .filter(|((i, g, _), _)| i == id && *g == generation)
            .map(|(_, r)| r)
    }

    /// Every reported generation of instance `id` (nodes that count), oldest first.
    pub fn of_id<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a InstanceReport> + 'a {
        let id = id.to_string();
        self.every
            .range((id.clone(), 0, String::new())..)
            .take_while(move |((i, _, _), _)| *i == id)
            .map(|(_, r)| r)
    }

    /// Every report of the nodes that count, by instance id and generation.
    pub fn every(&self) -> impl Iterator<Item = &InstanceReport> {
        self.every.values()
    }

    /// The reports (nodes that count) of instances whose id starts with `prefix`.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &str,
    ) -> impl Iterator<Item = &'a InstanceReport> + 'a {
        let prefix = prefix.to_string();
        self.every
            .range((prefix.clone(), 0, String::new())..)
            .take_while(move |((id, _, _), _)| id.starts_with(&prefix))
            .map(|(_, r)| r)
    }

    /// Every node's last report, lost nodes included (for fencing).
    pub fn of_node(&self, node: &str) -> Option<&Arc<NodeReport>> {
        self.nodes.get(node).map(|(r, _)| r)
    }

    /// The generation floor of a service from reports alone.
    pub fn floor(&self, stack: &str, service: &str) -> u64 {
        self.floor
            .get(&(stack.to_string(), service.to_string()))
            .copied()
            .unwrap_or(1)
    }
}

/// (stack, service) of an instance id `stack.service.slot`.
fn service_of(id: &str) -> Option<(String, String)> {
    let mut parts = id.split('.');
    match (parts.next(), parts.next()) {
        (Some(st), Some(sv)) => Some((st.to_string(), sv.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::report;
    use wharf_types::{Health, InstanceState};

    fn rep(id: &str, generation: u64) -> InstanceReport {
        report(id, generation, InstanceState::Running, Health::None)
    }

    fn node(list: &[(&str, u64)]) -> Arc<NodeReport> {
        Arc::new(NodeReport {
            instances: list.iter().map(|(id, g)| rep(id, *g)).collect(),
            ..Default::default()
        })
    }

    /// The index after any sequence of updates equals one built from scratch from the last
    /// reports: `every`, `newest` and lookups; the floor only rises.
    #[test]
    fn an_updated_index_equals_one_built_afresh() {
        let a1 = node(&[("s.web.0", 1), ("s.web.1", 2)]);
        let b1 = node(&[("s.web.0", 3)]);
        let c1 = node(&[("s.db.0", 7)]);
        let a2 = node(&[("s.web.1", 2), ("s.web.2", 4)]);
        type Step<'a> = (Vec<(&'a str, &'a Arc<NodeReport>)>, BTreeSet<&'a str>);
        let steps: Vec<Step> = vec![
            (vec![("a", &a1), ("b", &b1), ("c", &c1)], ["b"].into()),
            (vec![("a", &a1), ("b", &b1), ("c", &c1)], [].into()),
            (vec![("a", &a2), ("b", &b1)], ["c"].into()),
            (vec![("a", &a2)], [].into()),
            (vec![("a", &a1), ("b", &b1), ("c", &c1)], ["a"].into()),
        ];
        let mut idx = ReportIndex::default();
        for (n, (reports, lost)) in steps.iter().enumerate() {
            idx.update(reports.iter().copied(), |node| !lost.contains(node));
            let mut fresh = ReportIndex::default();
            fresh.update(reports.iter().copied(), |node| !lost.contains(node));
            let every = |i: &ReportIndex| {
                i.every()
                    .map(|r| (r.id.clone(), r.generation))
                    .collect::<Vec<_>>()
            };
            assert_eq!(every(&idx), every(&fresh), "step {n}: every");
            assert_eq!(idx.newest(), fresh.newest(), "step {n}: newest");
            for (id, g) in [
                ("s.web.0", 1),
                ("s.web.0", 3),
                ("s.web.1", 2),
                ("s.db.0", 7),
            ] {
                assert_eq!(
                    idx.of_generation(id, g).map(|r| r.generation),
                    fresh.of_generation(id, g).map(|r| r.generation),
                    "step {n}: {id} generation {g}"
                );
            }
        }
        // Step 1: b counted again; the newest of s.web.0 is b's generation 3.
        // Last step: a is lost, so s.web.1 is reported by nobody that counts.
        assert_eq!(idx.newest().get("s.web.0").map(|r| r.generation), Some(3));
        assert!(!idx.newest().contains_key("s.web.1"));
        assert!(
            idx.of_node("a").is_some(),
            "a lost node's report is kept for fencing"
        );
        // The floor remembers generation 4 of s.web.2, whose report is gone.
        assert_eq!(idx.floor("s", "web"), 5);
        assert_eq!(idx.floor("s", "db"), 8);
        assert_eq!(idx.floor("s", "none"), 1);
        assert_eq!(idx.with_prefix("s.db.").count(), 1);
        assert_eq!(idx.with_prefix("t.").count(), 0);
    }

    #[test]
    fn an_unchanged_node_is_not_looked_at_again() {
        let a = node(&[("s.web.0", 1)]);
        let b = node(&[("s.web.1", 1)]);
        let mut idx = ReportIndex::default();
        assert_eq!(idx.update([("a", &a), ("b", &b)], |_| true), 2);
        assert_eq!(idx.update([("a", &a), ("b", &b)], |_| true), 0);
        let b2 = node(&[("s.web.1", 2)]);
        assert_eq!(idx.update([("a", &a), ("b", &b2)], |_| true), 1);
        assert_eq!(
            idx.update([("a", &a), ("b", &b2)], |n| n != "a"),
            1,
            "standing changed"
        );
        assert_eq!(idx.newest().get("s.web.1").map(|r| r.generation), Some(2));
        assert!(idx.newest().get("s.web.0").is_none());
        let v = idx.version("s", "web");
        assert!(v > 0);
        assert_eq!(idx.update([("a", &a), ("b", &b2)], |n| n != "a"), 0);
        assert_eq!(
            idx.version("s", "web"),
            v,
            "nothing changed: the same version"
        );
        assert_eq!(idx.version("s", "db"), 0, "never reported");
    }

    /// A node reports all its instances at once: a change to one of them moves the version of
    /// its service only, not of every service with an instance on that node.
    #[test]
    fn a_change_on_a_node_moves_only_the_changed_service() {
        let a1 = node(&[("s.web.0", 1), ("t.db.0", 1)]);
        let mut idx = ReportIndex::default();
        idx.update([("a", &a1)], |_| true);
        let (web, db) = (idx.version("s", "web"), idx.version("t", "db"));
        let a2 = node(&[("s.web.0", 2), ("t.db.0", 1)]);
        assert_eq!(idx.update([("a", &a2)], |_| true), 1);
        assert!(idx.version("s", "web") > web, "web's report changed");
        assert_eq!(idx.version("t", "db"), db, "db's report is the same");
        assert_eq!(
            idx.of_generation("s.web.0", 1),
            None,
            "the old generation is gone"
        );
        assert!(idx.of_generation("s.web.0", 2).is_some());
        // The same instance in another state is a change too.
        let mut a3 = (*a2).clone();
        a3.instances[1].restarts = 1;
        idx.update([("a", &Arc::new(a3))], |_| true);
        assert!(idx.version("t", "db") > db, "db's report changed");
        assert_eq!(idx.of_generation("t.db.0", 1).map(|r| r.restarts), Some(1));
    }
}
