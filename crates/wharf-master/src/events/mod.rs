//! The event log: every change in the cluster, told once, in commit order.
//!
//! Events are not a second source of truth: they are what a change of a record means, derived
//! from the record before and after it (`of_change`) and written **in the transaction of the
//! change** (`store::Evented`, a store decorator every writer goes through), so an event exists
//! exactly when its change committed: none lost when a process dies after a write, none twice
//! when a write is retried. A reader's cursor is the store revision of the change and the
//! event's index within it (`Cursor`), so a stream resumed from a cursor goes on with the very
//! next event.
//!
//! What is derived: deployments (started, each service's progress, the outcome), instance
//! records (the master's decisions: scheduled, moved, draining, unscheduled), nodes' reports
//! (what the agent saw: created, started, healthy, unhealthy, exited, failed, restarted,
//! stopping, removed) and node records (joined, ready, unreachable, down, drained, activated,
//! removed).

pub mod store;

use serde::Deserialize;
use wharf_types::{
    Deployment, DeploymentState, Event, Health, InstanceReport, InstanceState, NodeReport,
    NodeState,
};

use crate::model::keys;

/// A position in the event stream: after the event at `index` of revision `revision`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub revision: u64,
    pub index: u32,
}

impl Cursor {
    /// `REVISION.INDEX`, or a bare revision (after everything of that revision).
    pub fn parse(s: &str) -> Option<Cursor> {
        let (rev, index) = match s.split_once('.') {
            Some((r, i)) => (r, i.parse().ok()?),
            None => (s, u32::MAX),
        };
        Some(Cursor {
            revision: rev.parse().ok()?,
            index,
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.revision, self.index)
    }
}

/// The index of an event within its revision, from its key (`keys::event`).
pub fn index_of(key: &str) -> Option<u32> {
    key.rsplit('-').next()?.parse().ok()
}

/// The events a change of `key` from `old` to `new` (absent: created or deleted) tells of.
/// Keys that tell nothing give none; a value that does not decode gives none (the change itself
/// is judged by whoever reads it, not here).
pub fn of_change(key: &str, old: Option<&[u8]>, new: Option<&[u8]>) -> Vec<Event> {
    if let Some(node) = key.strip_prefix(keys::STATUS) {
        let old = old.and_then(decode::<NodeReport>);
        let new = new.and_then(decode::<NodeReport>);
        return of_report(node, old.as_ref(), new.as_ref());
    }
    if key.starts_with(keys::INSTANCES) {
        let old = old.and_then(decode::<InstanceFacts>);
        let new = new.and_then(decode::<InstanceFacts>);
        return of_instance(old.as_ref(), new.as_ref());
    }
    if key.starts_with(keys::DEPLOYMENTS) {
        let old = old.and_then(decode::<Deployment>);
        return match new.and_then(decode::<Deployment>) {
            Some(new) => of_deployment(old.as_ref(), &new),
            None => vec![],
        };
    }
    if let Some(id) = key.strip_prefix(keys::NODES) {
        let old = old.and_then(decode::<NodeFacts>);
        let new = new.and_then(decode::<NodeFacts>);
        return of_node(id, old.as_ref(), new.as_ref());
    }
    if let Some(name) = key.strip_prefix(keys::REGISTRY_TAGS) {
        return of_tag(name, old.and_then(decode), new.and_then(decode));
    }
    if let Some(name) = key.strip_prefix(keys::REGISTRY_SCANS) {
        return new
            .and_then(decode::<wharf_types::ImageScan>)
            .map(|scan| of_scan(name, &scan))
            .unwrap_or_default();
    }
    vec![]
}

/// The stack a registry repository belongs to: its first component.
fn repo_stack(repo: &str) -> Option<String> {
    repo.split('/').next().map(str::to_string)
}

/// `image.pushed`: a tag was pushed anew or moved (`repo:tag`).
fn of_tag(
    name: &str,
    old: Option<crate::registry::TagRecord>,
    new: Option<crate::registry::TagRecord>,
) -> Vec<Event> {
    let Some(new) = new else {
        return vec![];
    };
    if old.is_some_and(|o| o.digest == new.digest) {
        return vec![];
    }
    let repo = name.rsplit_once(':').map_or(name, |(r, _)| r);
    vec![Event {
        kind: "image.pushed".into(),
        stack: repo_stack(repo),
        message: format!("{name} pushed: {}", new.digest),
        ..Default::default()
    }]
}

/// `scan.found`: a pushed image's scan found advisories (`repo@digest`).
fn of_scan(name: &str, scan: &wharf_types::ImageScan) -> Vec<Event> {
    if scan.findings.is_empty() {
        return vec![];
    }
    let worst = scan
        .findings
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or_default();
    let repo = name.rsplit_once('@').map_or(name, |(r, _)| r);
    vec![Event {
        kind: "scan.found".into(),
        stack: repo_stack(repo),
        message: format!(
            "{name}: {} finding(s), the worst {}",
            scan.findings.len(),
            worst.word()
        ),
        ..Default::default()
    }]
}

/// Whether changes under `key` can tell of events (the decorator looks only at those).
pub fn tells(key: &str) -> bool {
    [
        keys::STATUS,
        keys::INSTANCES,
        keys::DEPLOYMENTS,
        keys::NODES,
        keys::REGISTRY_TAGS,
        keys::REGISTRY_SCANS,
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    serde_json::from_slice(bytes).ok()
}

/// What an instance record says that events tell of (the spec is skipped, not decoded).
#[derive(Debug, Deserialize)]
struct InstanceFacts {
    stack: String,
    service: String,
    slot: u32,
    node: String,
    generation: u64,
    #[serde(default)]
    draining_since: Option<u64>,
}

/// What a node record says that events tell of.
#[derive(Debug, Deserialize)]
struct NodeFacts {
    state: NodeState,
    #[serde(default)]
    drain: bool,
    #[serde(default)]
    facts: Named,
}

#[derive(Debug, Default, Deserialize)]
struct Named {
    #[serde(default)]
    name: String,
}

fn instance_event(kind: &str, id: &str, generation: u64, node: &str, message: String) -> Event {
    let mut parts = id.splitn(3, '.');
    Event {
        kind: kind.into(),
        stack: parts.next().map(str::to_string),
        service: parts.next().map(str::to_string),
        instance: Some(id.to_string()),
        generation: Some(generation),
        node: Some(node.to_string()),
        message,
        ..Event::default()
    }
}

fn of_instance(old: Option<&InstanceFacts>, new: Option<&InstanceFacts>) -> Vec<Event> {
    let id = |f: &InstanceFacts| format!("{}.{}.{}", f.stack, f.service, f.slot);
    match (old, new) {
        (None, Some(n)) => vec![instance_event(
            "instance.scheduled",
            &id(n),
            n.generation,
            &n.node,
            format!("scheduled on node {} (generation {})", n.node, n.generation),
        )],
        (Some(o), None) => vec![instance_event(
            "instance.unscheduled",
            &id(o),
            o.generation,
            &o.node,
            format!("no longer wanted on node {}", o.node),
        )],
        (Some(o), Some(n)) => {
            let mut out = vec![];
            if o.generation != n.generation && o.node != n.node {
                out.push(instance_event(
                    "instance.moved",
                    &id(n),
                    n.generation,
                    &n.node,
                    format!("moved from node {} to node {}", o.node, n.node),
                ));
            } else if o.generation != n.generation {
                out.push(instance_event(
                    "instance.scheduled",
                    &id(n),
                    n.generation,
                    &n.node,
                    format!(
                        "generation {} scheduled on node {} (replacing generation {})",
                        n.generation, n.node, o.generation
                    ),
                ));
            }
            if o.draining_since.is_none() && n.draining_since.is_some() {
                out.push(instance_event(
                    "instance.draining",
                    &id(n),
                    n.generation,
                    &n.node,
                    "draining: taken out of the ingress and DNS before it stops".into(),
                ));
            }
            out
        }
        (None, None) => vec![],
    }
}

fn of_report(node: &str, old: Option<&NodeReport>, new: Option<&NodeReport>) -> Vec<Event> {
    let empty = NodeReport::default();
    let old = old.unwrap_or(&empty);
    let new = new.unwrap_or(&empty);
    let find = |r: &NodeReport, i: &InstanceReport| {
        r.instances
            .iter()
            .find(|o| o.id == i.id && o.generation == i.generation)
            .cloned()
    };
    let mut out = vec![];
    for i in &new.instances {
        out.extend(of_instance_report(node, find(old, i).as_ref(), i));
    }
    for o in &old.instances {
        if find(new, o).is_none() {
            out.push(instance_event(
                "instance.removed",
                &o.id,
                o.generation,
                node,
                "its container is gone from the node".into(),
            ));
        }
    }
    out
}

fn of_instance_report(
    node: &str,
    old: Option<&InstanceReport>,
    new: &InstanceReport,
) -> Vec<Event> {
    let ev =
        |kind: &str, message: String| instance_event(kind, &new.id, new.generation, node, message);
    let mut out = vec![];
    let was = old.map(|o| o.state);
    let restarts = old.map_or(0, |o| o.restarts);
    if new.restarts > restarts {
        out.push(ev(
            "instance.restarted",
            format!("restarted (restart {})", new.restarts),
        ));
    }
    if was != Some(new.state) {
        match new.state {
            InstanceState::Pending if was.is_none() => {
                out.push(ev("instance.created", format!("assigned to node {node}")))
            }
            InstanceState::Pending => {}
            InstanceState::Running => out.push(ev("instance.started", "running".into())),
            InstanceState::Exited => out.push(ev(
                "instance.exited",
                match new.exit_code {
                    Some(code) => format!("exited with code {code}"),
                    None => "exited".into(),
                },
            )),
            InstanceState::Failed => out.push(ev(
                "instance.failed",
                match &new.error {
                    Some(e) => format!("failed: {}", wharf_types::excerpt(e, 200)),
                    None => "failed".into(),
                },
            )),
            InstanceState::Stopping => out.push(ev("instance.stopping", "stopping".into())),
        }
    }
    let health = old.map_or(Health::None, |o| o.health);
    if health != new.health {
        match new.health {
            Health::Healthy => out.push(ev("instance.healthy", "health check passes".into())),
            Health::Unhealthy => out.push(ev(
                "instance.unhealthy",
                match &new.health_output {
                    Some(o) => format!("health check fails: {}", wharf_types::excerpt(o, 200)),
                    None => "health check fails".into(),
                },
            )),
            Health::None | Health::Starting => {}
        }
    }
    out
}

fn of_deployment(old: Option<&Deployment>, new: &Deployment) -> Vec<Event> {
    let ev = |kind: &str, service: Option<&str>, message: String| Event {
        kind: kind.into(),
        stack: Some(new.stack.clone()),
        service: service.map(str::to_string),
        deployment: Some(new.id.clone()),
        message,
        ..Event::default()
    };
    let mut out = vec![];
    if old.is_none() {
        out.push(ev(
            "deploy.started",
            None,
            format!("deploy of revision {} started", new.revision),
        ));
    }
    for s in &new.services {
        let before = old.and_then(|o| o.services.iter().find(|p| p.service == s.service));
        let moved = before.is_none_or(|b| b.updated != s.updated || b.ready != s.ready);
        if old.is_some() && moved {
            out.push(ev(
                "deploy.progress",
                Some(&s.service),
                format!("{} of {} updated, {} ready", s.updated, s.desired, s.ready),
            ));
        }
    }
    let was = old.map(|o| o.state);
    if was != Some(new.state) {
        let message = new.message.clone().unwrap_or_default();
        match new.state {
            DeploymentState::Succeeded => {
                out.push(ev("deploy.succeeded", None, or(message, "succeeded")))
            }
            DeploymentState::Failed if message.starts_with("rolled back") => {
                out.push(ev("deploy.rolled_back", None, message))
            }
            DeploymentState::Failed => out.push(ev("deploy.failed", None, or(message, "failed"))),
            _ if old.is_some() => out.push(ev(
                "deploy.progress",
                None,
                format!("now {:?}", new.state).to_lowercase(),
            )),
            _ => {}
        }
    }
    out
}

/// A deployment that a write ends: its outcome (the event's kind without `deploy.`) and how long
/// it took from its creation.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    pub outcome: &'static str,
    pub took: std::time::Duration,
}

/// The deployment the write of `value` to `key` ends, if the events it told (`told`) say so.
pub fn ended(key: &str, value: &[u8], told: &[Event]) -> Option<Ended> {
    if !key.starts_with(keys::DEPLOYMENTS) {
        return None;
    }
    let outcome = told.iter().find_map(|e| match e.kind.as_str() {
        "deploy.succeeded" => Some("succeeded"),
        "deploy.failed" => Some("failed"),
        "deploy.rolled_back" => Some("rolled_back"),
        _ => None,
    })?;
    let d = decode::<Deployment>(value)?;
    Some(Ended {
        outcome,
        took: std::time::Duration::from_millis(d.updated_at.saturating_sub(d.created_at)),
    })
}

fn or(message: String, default: &str) -> String {
    if message.is_empty() {
        default.to_string()
    } else {
        message
    }
}

fn of_node(id: &str, old: Option<&NodeFacts>, new: Option<&NodeFacts>) -> Vec<Event> {
    let ev = |kind: &str, name: &str, message: String| Event {
        kind: kind.into(),
        node: Some(id.to_string()),
        message: if name.is_empty() || name == id {
            message
        } else {
            format!("{message} ({name})")
        },
        ..Event::default()
    };
    match (old, new) {
        (None, Some(n)) => vec![ev(
            "node.joined",
            &n.facts.name,
            "joined the cluster".into(),
        )],
        (Some(o), None) => vec![ev(
            "node.removed",
            &o.facts.name,
            "removed from the cluster".into(),
        )],
        (Some(o), Some(n)) => {
            let mut out = vec![];
            if o.state != n.state {
                let (kind, message) = match n.state {
                    NodeState::Ready => ("node.ready", "ready"),
                    NodeState::Unreachable => ("node.unreachable", "unreachable: no beat heard"),
                    NodeState::Down => ("node.down", "down: its instances are placed elsewhere"),
                    NodeState::Draining => ("node.drained", "draining"),
                };
                out.push(ev(kind, &n.facts.name, message.into()));
            }
            if !o.drain && n.drain && n.state != NodeState::Draining {
                out.push(ev(
                    "node.drained",
                    &n.facts.name,
                    "drained: its instances move elsewhere".into(),
                ));
            }
            if o.drain && !n.drain {
                out.push(ev(
                    "node.activated",
                    &n.facts.name,
                    "activated: takes instances again".into(),
                ));
            }
            out
        }
        (None, None) => vec![],
    }
}

#[cfg(test)]
mod tests;
