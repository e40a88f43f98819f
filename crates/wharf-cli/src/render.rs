//! Pure rendering: tables (docker-like, no borders), diffs, progress lines, sizes and ages.

use comfy_table::{ContentArrangement, Table};
use wharf_types::{
    ChangeKind, Health, InstanceInfo, InstanceState, NodeInfo, ServiceProgress, ServiceSummary,
    StackDiff, StackSummary,
};

/// A table without borders, columns separated by three spaces, no trailing spaces.
pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    let last = header.len().saturating_sub(1);
    for (i, col) in t.column_iter_mut().enumerate() {
        col.set_padding((0, if i == last { 0 } else { 3 }));
    }
    t.lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// One line per changed service; unchanged services are left out.
pub fn diff_lines(diff: &StackDiff) -> Vec<String> {
    diff.services
        .iter()
        .filter_map(|c| {
            let (sign, word) = match c.kind {
                ChangeKind::Unchanged => return None,
                ChangeKind::Create => ("+", "create"),
                ChangeKind::Remove => ("-", "remove"),
                ChangeKind::Update => ("~", "update"),
                ChangeKind::Scale => ("~", "scale"),
            };
            Some(match c.kind {
                ChangeKind::Update | ChangeKind::Scale if !c.details.is_empty() => {
                    format!("{sign} {}: {}", c.service, c.details.join(", "))
                }
                _ => format!("{sign} {} ({word})", c.service),
            })
        })
        .collect()
}

/// `2/3 updated, 1/3 ready` (and the error, if any).
pub fn progress_text(p: &ServiceProgress) -> String {
    let mut s = format!(
        "{u}/{d} updated, {r}/{d} ready",
        u = p.updated,
        r = p.ready,
        d = p.desired
    );
    if let Some(e) = &p.error {
        s.push_str(&format!(", error: {}", one_line(e, 120)));
    } else if let Some(n) = &p.note {
        s.push_str(&format!(" ({})", one_line(n, 120)));
    }
    s
}

/// One line per instance of a deployment: `web.1 g7 new running healthy monitoring`.
pub fn instance_progress_text(i: &wharf_types::InstanceProgress) -> String {
    let state = serde_json::to_value(i.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let health = serde_json::to_value(i.health)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    format!(
        "{} g{} {} {state} {health} {}",
        i.id,
        i.generation,
        if i.new { "new" } else { "old" },
        i.phase
    )
}

/// A service is done when every desired instance is updated and ready.
pub fn progress_done(p: &ServiceProgress) -> bool {
    p.updated >= p.desired && p.ready >= p.desired
}

pub fn stacks_table(stacks: &[StackSummary], now_ms: u64) -> String {
    let rows = stacks
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.revision.to_string(),
                s.services.to_string(),
                format!("{}/{}", s.instances_running, s.instances_desired),
                ago(now_ms, s.updated_at),
            ]
        })
        .collect();
    table(
        &["NAME", "REVISION", "SERVICES", "INSTANCES", "UPDATED"],
        rows,
    )
}

pub fn services_table(services: &[ServiceSummary], now_ms: u64) -> String {
    let rows = services
        .iter()
        .map(|s| {
            vec![
                format!("{}/{}", s.stack, s.name),
                lower(&s.mode),
                format!("{}/{}", s.running, s.replicas),
                s.healthy.to_string(),
                s.image.clone(),
                s.ports.join(", "),
                ago(now_ms, s.updated_at),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "MODE", "REPLICAS", "HEALTHY", "IMAGE", "PORTS", "UPDATED",
        ],
        rows,
    )
}

/// The instances; `wide` adds the slot, generation, spec hash and container id.
pub fn instances_table(instances: &[InstanceInfo], wide: bool) -> String {
    let rows = instances
        .iter()
        .map(|i| {
            let detail = match (&i.error, &i.health_output) {
                (Some(e), _) => e.clone(),
                (None, Some(h))
                    if i.health == Health::Unhealthy || i.health == Health::Starting =>
                {
                    h.clone()
                }
                _ => String::new(),
            };
            let mut row = vec![
                i.id.clone(),
                i.service.clone(),
                i.node.clone(),
                // Draining: still running, the proxies send it no new requests; stops soon.
                if i.draining && i.state == InstanceState::Running {
                    "draining".to_string()
                } else {
                    state_word(i.state).to_string()
                },
                health_word(i.health).to_string(),
                i.restarts.to_string(),
                i.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                one_line(&detail, if wide { 200 } else { 60 }),
            ];
            if wide {
                row.extend([
                    i.slot.to_string(),
                    i.generation.to_string(),
                    i.spec_hash.chars().take(12).collect(),
                    i.container_id
                        .as_deref()
                        .map(|c| c.chars().take(12).collect())
                        .unwrap_or_else(|| "-".into()),
                ]);
            }
            row
        })
        .collect();
    let mut header = vec![
        "ID", "SERVICE", "NODE", "STATE", "HEALTH", "RESTARTS", "EXIT", "ERROR",
    ];
    if wide {
        header.extend(["SLOT", "GENERATION", "SPEC", "CONTAINER"]);
    }
    table(&header, rows)
}

/// Whether an instance matches a `--filter` (state and health as `ps` prints them; node and
/// service by name).
pub fn instance_matches(i: &InstanceInfo, f: &crate::args::Filter) -> bool {
    use crate::args::FilterKey;
    let v = f.value.to_ascii_lowercase();
    match f.key {
        FilterKey::State => state_word(i.state) == v || (v == "draining" && i.draining),
        FilterKey::Health => health_word(i.health) == v,
        FilterKey::Node => i.node == f.value,
        FilterKey::Service => {
            i.service == f.value || format!("{}/{}", i.stack, i.service) == f.value
        }
    }
}

/// `wharf service history`: the revisions, the current one marked.
pub fn history_table(revisions: &[wharf_types::SpecRevisionInfo], now_ms: u64) -> String {
    let rows = revisions
        .iter()
        .map(|r| {
            vec![
                format!("{}{}", r.revision, if r.current { " *" } else { "" }),
                r.image.clone().unwrap_or_else(|| "-".into()),
                match r.restored {
                    Some(n) => format!("{} (of {n})", r.cause),
                    None => r.cause.clone(),
                },
                r.spec_hash.chars().take(12).collect(),
                ago(now_ms, r.created_at),
            ]
        })
        .collect();
    table(&["REVISION", "IMAGE", "CAUSE", "SPEC", "CREATED"], rows)
}

/// `wharf deployment ls`.
pub fn deployments_table(ds: &[wharf_types::Deployment], now_ms: u64) -> String {
    let rows = ds
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.stack.clone(),
                d.revision.to_string(),
                lower(&d.state),
                d.services
                    .iter()
                    .map(|s| s.service.clone())
                    .collect::<Vec<_>>()
                    .join(","),
                ago(now_ms, d.created_at),
            ]
        })
        .collect();
    table(
        &["ID", "STACK", "REVISION", "STATE", "SERVICES", "CREATED"],
        rows,
    )
}

/// `wharf image ls`: each tag of the cluster's registry and its scan's findings by severity.
pub fn images_table(images: &[wharf_types::ImageInfo], now_ms: u64) -> String {
    let rows = images
        .iter()
        .map(|i| {
            let count = |n: u64| if i.scanned { n.to_string() } else { "-".into() };
            vec![
                format!("{}:{}", i.repository, i.tag),
                i.digest.chars().take(19).collect(),
                ago(now_ms, i.pushed_at),
                count(i.critical),
                count(i.high),
                count(i.medium),
                count(i.low),
                if i.scanned {
                    i.packages.to_string()
                } else {
                    "scanning".into()
                },
            ]
        })
        .collect();
    table(
        &[
            "IMAGE", "DIGEST", "PUSHED", "CRITICAL", "HIGH", "MEDIUM", "LOW", "PACKAGES",
        ],
        rows,
    )
}

/// `wharf stack history`: each deployment, what started it, who, and its images.
pub fn stack_history_table(ds: &[wharf_types::Deployment], now_ms: u64) -> String {
    let rows = ds
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                ago(now_ms, d.created_at),
                lower(&d.state),
                d.by.clone().unwrap_or_else(|| "-".into()),
                d.trigger.clone().unwrap_or_else(|| "deploy".into()),
                d.images
                    .iter()
                    .map(|(s, i)| format!("{s}={i}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    table(&["ID", "CREATED", "STATE", "BY", "TRIGGER", "IMAGES"], rows)
}

/// `wharf deployment status`: the deployment and each service's progress.
pub fn deployment_text(d: &wharf_types::Deployment, now_ms: u64) -> String {
    let mut out = vec![
        format!("deployment: {}", d.id),
        format!("stack:      {} (revision {})", d.stack, d.revision),
        format!("state:      {}", lower(&d.state)),
        format!("started:    {}", ago(now_ms, d.created_at)),
    ];
    if let Some(t) = &d.trigger {
        out.push(format!("trigger:    {t}"));
    }
    if let Some(m) = &d.message {
        out.push(format!("message:    {m}"));
    }
    out.extend(d.services.iter().map(|p| format!("  {}", progress_text(p))));
    out.join("\n")
}

/// `wharf context ls`: name (current marked), URL, file.
pub fn contexts_table(rows: &[serde_json::Value]) -> String {
    let rows = rows
        .iter()
        .map(|r| {
            let name = r["name"].as_str().unwrap_or_default();
            vec![
                if r["current"].as_bool() == Some(true) {
                    format!("{name} *")
                } else {
                    name.to_string()
                },
                r["url"].as_str().unwrap_or("-").to_string(),
                r["file"].as_str().unwrap_or_default().to_string(),
            ]
        })
        .collect();
    table(&["NAME", "URL", "FILE"], rows)
}

/// `wharf node inspect`: one node, field per line.
pub fn node_text(n: &NodeInfo, now_ms: u64) -> String {
    let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let drivers: Vec<String> = n
        .drivers
        .iter()
        .map(|d| format!("{d:?}").to_lowercase())
        .collect();
    let seen = if n.last_seen == 0 {
        "-".to_string()
    } else {
        format!("{}s ago", now_ms.saturating_sub(n.last_seen) / 1000)
    };
    [
        format!("id:          {}", n.id),
        format!("name:        {}", n.name),
        format!(
            "state:       {:?} since {}s ago",
            n.state,
            now_ms.saturating_sub(n.since) / 1000
        )
        .to_lowercase(),
        format!("last seen:   {seen}"),
        format!("address:     {}", n.address.as_deref().unwrap_or("-")),
        format!(
            "encryption:  {}{}",
            or_dash(&n.encryption),
            n.public_key
                .as_deref()
                .map(|k| format!(" (key {k})"))
                .unwrap_or_default()
        ),
        format!("drivers:     {}", drivers.join(",")),
        format!(
            "docker:      {} ({})",
            n.docker_version.as_deref().unwrap_or("-"),
            n.storage_driver.as_deref().unwrap_or("-")
        ),
        format!("os, kernel:  {} {}", n.os, n.kernel),
        format!("cpus:        {}", n.cpus),
        format!("memory:      {} MiB", n.memory_bytes / (1024 * 1024)),
        format!("instances:   {}", n.instances),
        format!(
            "labels:      {}",
            if labels.is_empty() {
                "-".to_string()
            } else {
                labels.join(" ")
            }
        ),
    ]
    .into_iter()
    .chain(
        n.drivers_down
            .iter()
            .map(|d| format!("down:        {}: {}", lower(&d.driver), d.error)),
    )
    .chain(n.held.iter().map(|h| format!("held:        {h}")))
    .collect::<Vec<_>>()
    .join("\n")
}

pub fn audit_table(records: &[wharf_types::AuditRecord], now_ms: u64) -> String {
    let rows = records
        .iter()
        .map(|r| {
            let who = match r.role {
                Some(role) => format!("{} ({role})", r.actor),
                None => r.actor.clone(),
            };
            let row = [r.id.to_string(), ago(now_ms, r.at), who, r.action.clone()];
            let mut row = row.to_vec();
            row.extend([r.target.clone(), r.outcome.clone()]);
            row.push(r.source.clone().unwrap_or_else(|| "-".into()));
            row
        })
        .collect();
    table(
        &["ID", "WHEN", "ACTOR", "ACTION", "TARGET", "OUTCOME", "FROM"],
        rows,
    )
}

/// A token's role and scope in words: `deployer of shop, shop-*`, `admin`.
pub fn token_scope(t: &wharf_types::TokenInfo) -> String {
    if t.stacks.is_empty() {
        t.role.to_string()
    } else {
        format!("{} of {}", t.role, t.stacks.join(", "))
    }
}

pub fn tokens_table(tokens: &[wharf_types::TokenInfo], now_ms: u64) -> String {
    let when = |t: Option<u64>| t.map_or("-".to_string(), |t| ago(now_ms, t));
    let expires = |t: Option<u64>| match t {
        None => "never".to_string(),
        Some(t) if t <= now_ms => "expired".to_string(),
        Some(t) => format!("in {}", span((t - now_ms) / 1000)),
    };
    let rows = tokens
        .iter()
        .map(|t| {
            let stacks = if t.stacks.is_empty() {
                "*".to_string()
            } else {
                t.stacks.join(",")
            };
            let row = [
                t.name.clone(),
                t.role.to_string(),
                stacks,
                ago(now_ms, t.created_at),
            ];
            let mut row = row.to_vec();
            row.extend([expires(t.expires_at), when(t.last_used_at)]);
            row
        })
        .collect();
    table(
        &["NAME", "ROLE", "STACKS", "CREATED", "EXPIRES", "LAST USED"],
        rows,
    )
}

/// A duration in seconds, to the largest whole unit: `45s`, `12m`, `5h`, `90d`.
fn span(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// `wharf master ls`: the masters (the leader first), then the store's members.
/// `wharf policy show`: where the policy comes from, then one row per rule.
pub fn policy_text(p: &wharf_types::PolicyInfo) -> String {
    let rows = p
        .rules
        .iter()
        .map(|r| {
            let stacks = if r.stacks.is_empty() {
                "-".to_string()
            } else {
                r.stacks.join("; ")
            };
            vec![
                r.rule.as_str().to_string(),
                r.refuses.clone(),
                r.allowed.clone(),
                stacks,
                r.allow_key.clone(),
            ]
        })
        .collect();
    format!(
        "policy: {}\ncap_add may always name: {}\n\n{}\n",
        p.source,
        p.safe_capabilities.join(", "),
        table(
            &["RULE", "REFUSES", "ALLOWED", "STACKS", "ALLOWED BY"],
            rows
        )
    )
}

pub fn masters_table(s: &wharf_types::MastersStatus) -> String {
    let mut masters = s.masters.clone();
    masters.sort_by_key(|m| (!m.leader, m.info.id.clone()));
    let rows = masters
        .iter()
        .map(|m| {
            vec![
                format!("{}{}", m.info.id, if m.answering { " *" } else { "" }),
                if m.leader { "leader" } else { "follower" }.to_string(),
                dash(&m.info.api_url),
                dash(&m.info.agent_addr),
                m.nodes.to_string(),
            ]
        })
        .collect();
    let mut out = table(&["MASTER", "ROLE", "API", "AGENTS AT", "NODES"], rows);
    if s.store_members.is_empty() {
        out.push_str(&format!("\nstore: {}", s.store));
    } else {
        let rows = s
            .store_members
            .iter()
            .map(|e| {
                vec![
                    e.name.clone(),
                    e.url.clone(),
                    if e.healthy {
                        "healthy"
                    } else if e.name != "-" {
                        "no leader"
                    } else {
                        "unreachable"
                    }
                    .to_string(),
                    if e.leader { "leader" } else { "" }.to_string(),
                ]
            })
            .collect();
        let healthy = s.store_members.iter().filter(|e| e.healthy).count();
        let quorum = s.store_members.len() / 2 + 1;
        out.push_str(&format!(
            "\n\nstore: {} ({healthy} of {} members healthy; {})\n",
            s.store,
            s.store_members.len(),
            if healthy >= quorum {
                "quorum".to_string()
            } else {
                format!("NO QUORUM: {quorum} needed")
            }
        ));
        out.push_str(&table(&["ETCD MEMBER", "URL", "HEALTH", ""], rows));
    }
    out
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

/// `-` for an empty text.
fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

pub fn nodes_table(nodes: &[NodeInfo], now_ms: u64) -> String {
    let rows = nodes
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                match &n.held {
                    Some(_) => "held (see node inspect)".to_string(),
                    None => format!("{} ({})", lower(&n.state), ago(now_ms, n.since)),
                },
                n.drivers.iter().map(lower).collect::<Vec<_>>().join(","),
                if n.drivers_down
                    .iter()
                    .any(|d| d.driver == wharf_types::DriverKind::Docker)
                {
                    "down".to_string()
                } else {
                    n.docker_version.clone().unwrap_or_else(|| "-".into())
                },
                n.cpus.to_string(),
                bytes(n.memory_bytes),
                n.instances.to_string(),
                or_dash(&n.encryption).to_string(),
                n.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "DRIVERS",
            "DOCKER",
            "CPUS",
            "MEMORY",
            "INSTANCES",
            "ENCRYPTION",
            "LABELS",
        ],
        rows,
    )
}

pub fn state_word(s: InstanceState) -> &'static str {
    match s {
        InstanceState::Pending => "pending",
        InstanceState::Running => "running",
        InstanceState::Exited => "exited",
        InstanceState::Failed => "failed",
        InstanceState::Stopping => "stopping",
    }
}

pub fn health_word(h: Health) -> &'static str {
    match h {
        Health::None => "-",
        Health::Starting => "starting",
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
    }
}

/// The serde name of a unit enum (`replicated`, `docker`, ...).
pub fn lower<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".to_string(),
    }
}

/// Newlines folded, cut to `max` characters with `...`.
pub fn one_line(s: &str, max: usize) -> String {
    let folded = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if folded.chars().count() <= max {
        folded
    } else {
        let mut t: String = folded.chars().take(max.saturating_sub(3)).collect();
        t.push_str("...");
        t
    }
}

/// `5s ago`, `3m ago`, `2h ago`, `4d ago`; `-` for an unknown time.
/// One event as `wharf events` prints it: `2026-12-07T15:04:05.123Z instance.started
/// shop.web.1 (node n1): running`.
pub fn event_line(e: &wharf_types::Event) -> String {
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.time) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| e.time.to_string());
    let what = match (&e.instance, &e.service, &e.stack) {
        (Some(i), _, _) => i.clone(),
        (None, Some(svc), Some(stack)) => format!("{stack}/{svc}"),
        (None, None, Some(stack)) => stack.clone(),
        _ => e.node.clone().unwrap_or_default(),
    };
    let mut line = format!("{time} {:<20} {what}", e.kind);
    if let (Some(node), Some(_)) = (&e.node, &e.instance) {
        line.push_str(&format!(" (node {node})"));
    }
    if let Some(d) = e
        .deployment
        .as_deref()
        .filter(|_| e.kind == "deploy.started")
    {
        line.push_str(&format!(" (deployment {d})"));
    }
    format!("{line}: {}", e.message)
}

pub fn ago(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "-".to_string();
    }
    format!("{} ago", span(now_ms.saturating_sub(then_ms) / 1000))
}

/// `512 MiB`, `7.6 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `wharf scan db info`: what the vulnerability database holds.
pub fn advisory_db_text(i: &wharf_types::AdvisoryDbInfo) -> String {
    if i.imported_at == 0 {
        return "the vulnerability database is empty: import OSV advisories with `wharf scan db import DIR`\n".into();
    }
    format!(
        "{} advisories for {} packages\nlast import: {} advisories added or replaced, {} of other ecosystems left out, {}\n",
        i.advisories,
        i.packages,
        i.last_added,
        i.last_skipped,
        ago(now_ms(), i.imported_at),
    )
}

/// `wharf image scan`: the findings as a table, worst first, with a summary line.
pub fn image_scan_text(s: &wharf_types::ImageScan) -> String {
    let os = if s.os.is_empty() {
        "no OS packages found"
    } else {
        &s.os
    };
    let mut out = format!(
        "{} ({}) on {}: {os}, {} packages\n",
        s.image,
        short_id(&s.id),
        s.node,
        s.packages
    );
    if s.findings.is_empty() {
        out.push_str("no known vulnerabilities\n");
        return out;
    }
    let rows = s
        .findings
        .iter()
        .map(|f| {
            vec![
                f.id.clone(),
                f.package.clone(),
                f.installed.clone(),
                f.fixed.clone().unwrap_or_else(|| "-".into()),
                f.severity.word().to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["ID", "PACKAGE", "INSTALLED", "FIXED IN", "SEVERITY"],
        rows,
    ));
    out.push('\n');
    let mut counts = std::collections::BTreeMap::new();
    for f in &s.findings {
        *counts.entry(std::cmp::Reverse(f.severity)).or_insert(0) += 1;
    }
    let counts: Vec<String> = counts
        .iter()
        .map(|(s, n)| format!("{n} {}", s.0.word()))
        .collect();
    out.push_str(&format!(
        "{} findings: {}\n",
        s.findings.len(),
        counts.join(", ")
    ));
    out
}

/// `sha256:0123456789ab…` as its first 12 hex digits.
fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use wharf_types::{DeployMode, DriverKind, NodeState, ServiceChange};

    fn change(service: &str, kind: ChangeKind, details: &[&str]) -> ServiceChange {
        ServiceChange {
            service: service.into(),
            kind,
            details: details.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn the_policy_shows_a_row_per_rule_with_the_key_that_allows_it() {
        let p = wharf_types::PolicyInfo {
            source: "/etc/wharf/policy.yaml".into(),
            policy: wharf_types::AdmissionPolicy::default(),
            safe_capabilities: vec!["CHOWN".into(), "KILL".into()],
            rules: vec![wharf_types::PolicyRuleInfo {
                rule: wharf_types::PolicyRule::Privileged,
                refuses: "privileged containers".into(),
                allowed: "no".into(),
                stacks: vec!["mon-*: yes".into()],
                allow_key: "allow.privileged: true".into(),
            }],
        };
        let text = policy_text(&p);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "policy: /etc/wharf/policy.yaml");
        assert_eq!(lines[1], "cap_add may always name: CHOWN, KILL");
        assert!(
            lines[3].starts_with("RULE") && lines[3].ends_with("ALLOWED BY"),
            "{text}"
        );
        assert!(
            lines[4].starts_with("privileged")
                && lines[4].contains("mon-*: yes")
                && lines[4].ends_with("allow.privileged: true"),
            "{text}"
        );
    }

    #[test]
    fn diff_renders_one_line_per_changed_service() {
        let diff = StackDiff {
            stack: "shop".into(),
            services: vec![
                change(
                    "api",
                    ChangeKind::Update,
                    &["environment.MODE: \"a\" -> \"b\""],
                ),
                change("cache", ChangeKind::Unchanged, &[]),
                change("db", ChangeKind::Update, &[]),
                change("old", ChangeKind::Remove, &[]),
                change("web", ChangeKind::Create, &[]),
                change(
                    "worker",
                    ChangeKind::Scale,
                    &["replicas: 1 -> 3", "image: a -> b"],
                ),
            ],
        };
        assert_eq!(
            diff_lines(&diff),
            vec![
                "~ api: environment.MODE: \"a\" -> \"b\"",
                "~ db (update)",
                "- old (remove)",
                "+ web (create)",
                "~ worker: replicas: 1 -> 3, image: a -> b",
            ]
        );
        assert!(diff_lines(&StackDiff::default()).is_empty());
    }

    #[test]
    fn stacks_table_is_borderless_and_aligned() {
        let now = 10_000_000;
        let s = |name: &str, rev, run, want, at| StackSummary {
            name: name.into(),
            revision: rev,
            services: 2,
            instances_desired: want,
            instances_running: run,
            updated_at: at,
        };
        let out = stacks_table(
            &[
                s("shop", 12, 3, 3, now - 5_000),
                s("a", 1, 0, 1, now - 7_200_000),
            ],
            now,
        );
        assert_eq!(
            out,
            "\
NAME   REVISION   SERVICES   INSTANCES   UPDATED
shop   12         2          3/3         5s ago
a      1          2          0/1         2h ago"
        );
        assert_eq!(
            stacks_table(&[], now),
            "NAME   REVISION   SERVICES   INSTANCES   UPDATED"
        );
    }

    #[test]
    fn instances_table_truncates_errors() {
        let i = InstanceInfo {
            id: "shop.web.1".into(),
            stack: "shop".into(),
            service: "web".into(),
            slot: 1,
            node: "n1".into(),
            generation: 1,
            spec_hash: "h".into(),
            state: InstanceState::Failed,
            health: Health::None,
            container_id: None,
            exit_code: Some(137),
            error: Some(format!("pull access denied\nfor {}", "x".repeat(100))),
            health_output: None,
            restarts: 4,
            started_at: None,
            updated_at: 0,
            draining: false,
        };
        let mut healthy = i.clone();
        healthy.id = "shop.web.2".into();
        healthy.state = InstanceState::Running;
        healthy.health = Health::Unhealthy;
        healthy.error = None;
        healthy.exit_code = None;
        healthy.restarts = 0;
        healthy.health_output = Some("curl: (7) refused".into());
        let out = instances_table(&[i, healthy], false);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "ID           SERVICE   NODE   STATE     HEALTH      RESTARTS   EXIT   ERROR"
        );
        assert!(lines[1].starts_with("shop.web.1   web       n1     failed    -           4          137    pull access denied for xxx"), "{}", lines[1]);
        assert!(lines[1].ends_with("x..."), "{}", lines[1]);
        let detail = &lines[1][lines[1].find("pull").unwrap()..];
        assert_eq!(detail.chars().count(), 60);
        assert_eq!(
            lines[2],
            "shop.web.2   web       n1     running   unhealthy   0                 curl: (7) refused"
        );
        let mut draining = running_instance();
        draining.draining = true;
        let out = instances_table(&[draining], false);
        assert!(
            out.lines().nth(1).is_some_and(|l| l.contains(" draining ")),
            "{out}"
        );
    }

    fn running_instance() -> InstanceInfo {
        InstanceInfo {
            id: "shop.web.3".into(),
            stack: "shop".into(),
            service: "web".into(),
            slot: 3,
            node: "n1".into(),
            generation: 1,
            spec_hash: "h".into(),
            state: InstanceState::Running,
            health: Health::None,
            container_id: None,
            exit_code: None,
            error: None,
            health_output: None,
            restarts: 0,
            started_at: None,
            updated_at: 0,
            draining: false,
        }
    }

    #[test]
    fn services_and_nodes_tables() {
        let s = ServiceSummary {
            stack: "shop".into(),
            name: "web".into(),
            image: "nginx:1.27".into(),
            mode: DeployMode::Replicated,
            replicas: 3,
            running: 2,
            healthy: 2,
            ports: vec!["8080:80/tcp".into()],
            updated_at: 0,
        };
        assert_eq!(
            services_table(&[s], 0),
            "\
NAME       MODE         REPLICAS   HEALTHY   IMAGE        PORTS         UPDATED
shop/web   replicated   2/3        2         nginx:1.27   8080:80/tcp   -"
        );
        let n = NodeInfo {
            id: "id1".into(),
            name: "node-1".into(),
            state: NodeState::Ready,
            since: 1_000,
            drivers: vec![DriverKind::Docker, DriverKind::Process],
            docker_version: Some("27.1".into()),
            cpus: 8,
            memory_bytes: 8 * 1024 * 1024 * 1024,
            os: "linux".into(),
            kernel: "6.1.0".into(),
            storage_driver: Some("overlay2".into()),
            address: None,
            last_seen: 60_500,
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            instances: 5,
            drivers_down: vec![],
            held: None,
            encryption: "wireguard (wireguard-go)".into(),
            public_key: Some("K1=".into()),
        };
        assert_eq!(
            nodes_table(std::slice::from_ref(&n), 61_000),
            "\
NAME     STATE            DRIVERS          DOCKER   CPUS   MEMORY   INSTANCES   ENCRYPTION                 LABELS
node-1   ready (1m ago)   docker,process   27.1     8      8 GiB    5           wireguard (wireguard-go)   zone=a"
        );
        // The engine down, the agent holding back: both show.
        let mut n = n;
        n.drivers_down = vec![wharf_types::DriverDown {
            driver: DriverKind::Docker,
            error: "cannot reach the engine".into(),
        }];
        n.held = Some("another cluster".into());
        assert_eq!(
            nodes_table(&[n], 61_000),
            "\
NAME     STATE                     DRIVERS          DOCKER   CPUS   MEMORY   INSTANCES   ENCRYPTION                 LABELS
node-1   held (see node inspect)   docker,process   down     8      8 GiB    5           wireguard (wireguard-go)   zone=a"
        );
    }

    #[test]
    fn small_formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536 * 1024 * 1024), "1.5 GiB");
        assert_eq!(ago(100_000, 40_000), "1m ago");
        assert_eq!(ago(100_000_000_000, 1), "1157d ago");
        let p = ServiceProgress {
            service: "web".into(),
            desired: 3,
            updated: 2,
            ready: 1,
            error: None,
            note: None,
            instances: vec![],
        };
        assert_eq!(progress_text(&p), "2/3 updated, 1/3 ready");
        assert!(!progress_done(&p));
    }
}
