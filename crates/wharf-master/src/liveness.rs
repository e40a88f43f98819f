//! Node liveness: a node that has not reported for `node_timeout` is `unreachable` (its instances
//! move elsewhere), one unreachable for `DOWN_AFTER` is `down`; a report makes it `ready` again.
//!
//! After a master (re)start nothing has reported yet, so ready nodes get a grace period to
//! reconnect: restarting the master must never move, and so restart, a workload. The same holds
//! for a master that begins to lead, and for the nodes of a master that died (their agents
//! move to another master within seconds).
//!
//! Only the leader judges; it hears of the nodes connected to other masters through their
//! presence keys (`leader::keep_presence`, kept by every master for its own agents): present
//! counts as heard now; a key its (live) master took away means silent for the node timeout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use wharf_store::{Compare, Op, Txn};
use wharf_types::NodeState;

use crate::model::{NodeRecord, encode, keys};
use crate::{Error, Master, now_ms};

/// Unreachable this long: down.
pub const DOWN_AFTER: Duration = Duration::from_secs(60);

/// How long after a master start ready nodes may take to reconnect before they are unreachable.
pub fn startup_grace(node_timeout: Duration) -> Duration {
    (node_timeout * 3).max(Duration::from_secs(15))
}

/// The node's next liveness state, if it changes. Pure: every input is passed in.
pub fn judge(
    state: NodeState,
    since_ms: u64,
    last_seen: Option<Instant>,
    now: Instant,
    now_ms: u64,
    node_timeout: Duration,
    master_started: Instant,
) -> Option<NodeState> {
    let alive = last_seen.is_some_and(|t| now.saturating_duration_since(t) < node_timeout);
    let next = if alive {
        NodeState::Ready
    } else {
        match state {
            NodeState::Ready | NodeState::Draining => {
                let in_grace = now.saturating_duration_since(master_started)
                    < startup_grace(node_timeout)
                    && last_seen.is_none();
                if in_grace {
                    NodeState::Ready
                } else {
                    NodeState::Unreachable
                }
            }
            NodeState::Unreachable
                if now_ms.saturating_sub(since_ms) >= DOWN_AFTER.as_millis() as u64 =>
            {
                NodeState::Down
            }
            other => other,
        }
    };
    (next != state).then_some(next)
}

/// Who holds a presence key, or a member record: a master's id and the lease it is on.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Holder {
    master: String,
    lease: Option<wharf_store::LeaseId>,
}

/// What this master knows of the nodes connected to other masters, kept from tick to tick.
#[derive(Debug, Default, PartialEq)]
struct Elsewhere {
    /// Node -> who its presence key names (another master).
    present: BTreeMap<String, Holder>,
    /// When each node was last heard of through another master (may lie ahead: the reconnect
    /// grace of the nodes of a master that died).
    seen: BTreeMap<String, Instant>,
}

impl Elsewhere {
    /// Bring the view up to date with the presence keys and the live masters (id -> lease).
    fn update(
        &mut self,
        m: &Master,
        now: Instant,
        presence: BTreeMap<String, Holder>,
        live: &BTreeMap<String, Option<wharf_store::LeaseId>>,
    ) {
        let me = m.role.id();
        let present: BTreeMap<String, Holder> = presence
            .into_iter()
            .filter(|(_, h)| h.master != me && live.contains_key(&h.master))
            .collect();
        for node in present.keys() {
            self.seen.insert(node.clone(), now);
        }
        let timeout = m.config.node_timeout;
        for (node, h) in &self.present {
            if present.contains_key(node) {
                continue;
            }
            let at = if live.get(&h.master) == Some(&h.lease) {
                // Its master, on the same lease, took the key away: silent for the node
                // timeout already.
                now.checked_sub(timeout).unwrap_or(now)
            } else {
                // Its master died, or lost the store and let its agents go (the key went with
                // its lease): the agent reconnects elsewhere; the grace of a restart. (Found
                // when etcd lost its quorum: every master dropped its agents, and the nodes
                // were judged dead before they could reconnect.)
                now + startup_grace(timeout).saturating_sub(timeout)
            };
            self.seen.insert(node.clone(), at);
        }
        self.present = present;
    }
}

impl Master {
    /// One liveness pass over every node, with what is known of the nodes of other masters;
    /// returns whether any state changed.
    async fn judge_nodes(&self, elsewhere: &Elsewhere) -> Result<bool, Error> {
        let Some(term) = self.role.term() else {
            return Ok(false);
        };
        let started = self.started.max(term.since);
        let mut seen = self.hub.last_seen();
        for (node, at) in &elsewhere.seen {
            let e = seen.entry(node.clone()).or_insert(*at);
            *e = (*e).max(*at);
        }
        // Decoded once per revision and shared (`CachedStore`); only a record that changes
        // state is copied.
        let (list, _) = self.decoded::<NodeRecord>(keys::NODES).await?;
        let (now, now_ms) = (Instant::now(), now_ms());
        let mut changed = false;
        for d in list {
            let rec = &d.value;
            let Some(next) = judge(
                rec.state,
                rec.since,
                seen.get(&rec.id).copied(),
                now,
                now_ms,
                self.config.node_timeout,
                started,
            ) else {
                continue;
            };
            tracing::info!(node = %rec.id, from = ?rec.state, to = ?next, "node liveness changed");
            let mut rec = (**rec).clone();
            rec.state = next;
            rec.since = now_ms;
            let txn = Txn::new()
                .when([Compare::unchanged_since(d.key.clone(), d.mod_revision)])
                .then([Op::put(d.key.clone(), encode(&rec))]);
            changed |= self.store.txn(txn).await?.succeeded;
        }
        if changed {
            self.hub.nudge();
        }
        Ok(changed)
    }

    /// Run liveness in the background: ten times a second on what the hub knows (in memory),
    /// with a pass over the store when a node's silence crossed the timeout either way, and
    /// once a second regardless (the startup grace and `down` are judged on time alone). Every
    /// master keeps its agents' presence keys; only the leader judges, with its writes fenced.
    pub fn spawn_liveness(&self) -> tokio::task::JoinHandle<()> {
        let m = self.clone();
        let judge = self.for_controllers();
        tokio::spawn(async move {
            // (nodes known, nodes silent) at the last pass over the store.
            let mut alive_before = (0, Default::default());
            let mut full_at: Option<Instant> = None;
            let mut elsewhere = Elsewhere::default();
            loop {
                let now = Instant::now();
                if let Err(e) = crate::leader::keep_presence(
                    &m,
                    m.config.node_timeout,
                    startup_grace(m.config.node_timeout),
                )
                .await
                {
                    tracing::warn!(error = %e, "cannot record which nodes this master hears");
                }
                let before = elsewhere.present.clone();
                match m.presence().await {
                    Ok((presence, live)) => elsewhere.update(&m, now, presence, &live),
                    Err(e) => tracing::warn!(error = %e, "cannot read the other masters' nodes"),
                }
                let alive = m.hub.silent(now, m.config.node_timeout);
                let due = full_at.is_none_or(|t| now.saturating_duration_since(t) >= FULL_PASS);
                if m.role.leading() && (due || alive != alive_before || before != elsewhere.present)
                {
                    match judge.judge_nodes(&elsewhere).await {
                        Ok(_) => {
                            alive_before = alive;
                            full_at = Some(now);
                        }
                        Err(e) => tracing::warn!(error = %e, "liveness check failed; retrying"),
                    }
                }
                tokio::time::sleep(TICK).await;
            }
        })
    }

    /// Which master each node's agent is connected to (presence keys), and the live masters
    /// with their leases.
    async fn presence(
        &self,
    ) -> Result<
        (
            BTreeMap<String, Holder>,
            BTreeMap<String, Option<wharf_store::LeaseId>>,
        ),
        Error,
    > {
        let (kvs, _) = self.store.range(keys::PRESENCE).await?;
        let presence = kvs
            .into_iter()
            .map(|kv| {
                let holder = Holder {
                    master: String::from_utf8_lossy(&kv.value).into_owned(),
                    lease: kv.lease,
                };
                (
                    kv.key.trim_start_matches(keys::PRESENCE).to_string(),
                    holder,
                )
            })
            .collect();
        let (kvs, _) = self.store.range(keys::MASTERS).await?;
        let live = kvs
            .into_iter()
            .map(|kv| {
                (
                    kv.key.trim_start_matches(keys::MASTERS).to_string(),
                    kv.lease,
                )
            })
            .collect();
        Ok((presence, live))
    }
}

/// How often liveness looks at the hub's clock of each node (in memory).
const TICK: Duration = Duration::from_millis(100);
/// How often liveness reads every node from the store even when nothing crossed the timeout.
const FULL_PASS: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;
    use NodeState::*;

    const T: Duration = Duration::from_secs(5);

    fn check(
        state: NodeState,
        since_ms: u64,
        seen_ago: Option<u64>,
        master_age: u64,
        now_ms: u64,
        expect: Option<NodeState>,
    ) {
        let now = Instant::now() + Duration::from_secs(1000);
        let last_seen = seen_ago.map(|s| now - Duration::from_millis(s));
        let started = now - Duration::from_millis(master_age);
        assert_eq!(
            judge(state, since_ms, last_seen, now, now_ms, T, started),
            expect,
            "state {state:?}, seen {seen_ago:?} ms ago, master up {master_age} ms"
        );
    }

    #[tokio::test]
    async fn nodes_of_other_masters_are_heard_through_presence() {
        let store = std::sync::Arc::new(wharf_store::SqliteStore::open_in_memory().unwrap());
        let m = Master::new(store).with_role(crate::leader::Role::elected("a"));
        let timeout = m.config.node_timeout;
        let now = Instant::now() + Duration::from_secs(100);
        let held = |pairs: &[(&str, &str, i64)]| -> BTreeMap<String, Holder> {
            pairs
                .iter()
                .map(|(n, m, l)| {
                    let h = Holder {
                        master: m.to_string(),
                        lease: Some(*l),
                    };
                    (n.to_string(), h)
                })
                .collect()
        };
        let live = |ids: &[(&str, i64)]| -> BTreeMap<String, Option<i64>> {
            ids.iter().map(|(m, l)| (m.to_string(), Some(*l))).collect()
        };
        let mut e = Elsewhere::default();
        // n1 on live master b: heard now; n2 on this master: not this view's business; n3 on a
        // master that is gone already: not heard.
        let both = live(&[("a", 1), ("b", 2)]);
        e.update(
            &m,
            now,
            held(&[("n1", "b", 2), ("n2", "a", 1), ("n3", "z", 9)]),
            &both,
        );
        assert_eq!(e.seen.get("n1"), Some(&now));
        assert!(!e.seen.contains_key("n2") && !e.seen.contains_key("n3"));
        // b took n1's key away on its lease (n1 went silent there): silent for the timeout.
        let later = now + Duration::from_millis(500);
        e.update(&m, later, held(&[]), &both);
        assert_eq!(e.seen.get("n1"), Some(&(later - timeout)));
        // n1 back on b; b loses the store, its key goes with its lease, b comes back on a new
        // one: n1 reconnects somewhere, so the grace of a restart.
        e.update(&m, later, held(&[("n1", "b", 2)]), &both);
        let end = later + Duration::from_secs(1);
        e.update(&m, end, held(&[]), &live(&[("a", 1), ("b", 3)]));
        let grace_end = *e.seen.get("n1").unwrap();
        assert_eq!(grace_end, end + startup_grace(timeout) - timeout);
        // The same when b died.
        e.update(
            &m,
            end,
            held(&[("n1", "b", 3)]),
            &live(&[("a", 1), ("b", 3)]),
        );
        e.update(&m, end, held(&[]), &live(&[("a", 1)]));
        assert_eq!(*e.seen.get("n1").unwrap(), grace_end);
        let long_ago = now - Duration::from_secs(60);
        assert_eq!(
            judge(
                Ready,
                0,
                Some(grace_end),
                end + Duration::from_secs(5),
                0,
                timeout,
                long_ago
            ),
            None,
            "still ready within the grace"
        );
        assert_eq!(
            judge(
                Ready,
                0,
                Some(grace_end),
                grace_end + timeout,
                0,
                timeout,
                long_ago
            ),
            Some(Unreachable),
            "unreachable once it is over"
        );
    }

    #[test]
    fn liveness_cases() {
        // Reporting: ready (and unreachable/down nodes come back).
        check(Ready, 0, Some(100), 100_000, 0, None);
        check(Unreachable, 0, Some(100), 100_000, 0, Some(Ready));
        check(Down, 0, Some(100), 100_000, 0, Some(Ready));
        // Silent past the timeout: unreachable; just under it: still ready.
        check(Ready, 0, Some(5_000), 100_000, 0, Some(Unreachable));
        check(Ready, 0, Some(4_900), 100_000, 0, None);
        // Never connected to this master, master just started: grace (15 s for a 5 s timeout).
        check(Ready, 0, None, 14_000, 0, None);
        check(Ready, 0, None, 15_000, 0, Some(Unreachable));
        // Connected, then silent: no grace even right after the start.
        check(Ready, 0, Some(6_000), 7_000, 0, Some(Unreachable));
        // Unreachable for a minute: down.
        check(Unreachable, 1_000, None, 100_000, 60_999, None);
        check(Unreachable, 1_000, None, 100_000, 61_000, Some(Down));
    }
}
