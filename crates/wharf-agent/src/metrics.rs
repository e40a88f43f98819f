//! The agent's Prometheus metrics, recorded through the `metrics` facade (the process's
//! recorder exports them: `wharf agent --metrics-listen`, or the master's `/metrics` in
//! `wharf up`): instances by service and state, restarts per instance, link connections and
//! DNS queries. The ingress records its own (`wharf_proxy::metrics`).

use std::collections::{BTreeMap, BTreeSet};

use parking_lot::Mutex;
use wharf_types::NodeReport;

/// The label sets set last time, so that a series whose instances are gone goes to zero
/// instead of keeping its last value.
#[derive(Default)]
pub struct Recorded {
    counts: Mutex<BTreeSet<(String, String, String)>>,
    /// The instances whose engine statistics were exported last time.
    sampled: Mutex<BTreeSet<(String, String, String)>>,
}

fn split(id: &str) -> (String, String) {
    let mut parts = id.splitn(3, '.');
    let stack = parts.next().unwrap_or_default().to_string();
    let service = parts.next().unwrap_or_default().to_string();
    (stack, service)
}

fn state_name(s: wharf_types::InstanceState) -> &'static str {
    use wharf_types::InstanceState::*;
    match s {
        Pending => "pending",
        Running => "running",
        Exited => "exited",
        Failed => "failed",
        Stopping => "stopping",
    }
}

impl Recorded {
    /// Brings the instance gauges and restart counters up to date with a report.
    pub fn report(&self, report: &NodeReport) {
        let mut counts: BTreeMap<(String, String, String), f64> = BTreeMap::new();
        for i in &report.instances {
            let (stack, service) = split(&i.id);
            let state = state_name(i.state).to_string();
            *counts
                .entry((stack.clone(), service.clone(), state))
                .or_default() += 1.0;
            metrics::counter!("wharf_agent_instance_restarts_total",
                "stack" => stack, "service" => service, "instance_id" => i.id.clone())
            .absolute(u64::from(i.restarts));
        }
        let mut last = self.counts.lock();
        for gone in last.iter().filter(|k| !counts.contains_key(*k)) {
            gauge(gone).set(0.0);
        }
        for (k, n) in &counts {
            gauge(k).set(*n);
        }
        *last = counts.into_keys().collect();
    }
}

impl Recorded {
    /// Exports the engine's statistics of the instances running here (`Agent::stats`): CPU,
    /// memory, network and block I/O per instance. An instance no longer sampled reads 0.
    pub fn stats(&self, rows: &[wharf_types::InstanceStats]) {
        let mut now = BTreeSet::new();
        for r in rows.iter().filter(|r| r.error.is_none()) {
            let key = (r.stack.clone(), r.service.clone(), r.instance.clone());
            let labels = labels(&key);
            metrics::gauge!("wharf_instance_cpu_ratio", labels.clone()).set(r.cpu_percent / 100.0);
            metrics::gauge!("wharf_instance_memory_usage_bytes", labels.clone())
                .set(r.memory_bytes as f64);
            metrics::gauge!("wharf_instance_memory_limit_bytes", labels.clone())
                .set(r.memory_limit_bytes as f64);
            metrics::counter!("wharf_instance_network_receive_bytes_total", labels.clone())
                .absolute(r.net_rx_bytes);
            metrics::counter!(
                "wharf_instance_network_transmit_bytes_total",
                labels.clone()
            )
            .absolute(r.net_tx_bytes);
            metrics::counter!("wharf_instance_block_read_bytes_total", labels.clone())
                .absolute(r.block_read_bytes);
            metrics::counter!("wharf_instance_block_write_bytes_total", labels.clone())
                .absolute(r.block_write_bytes);
            now.insert(key);
        }
        let mut last = self.sampled.lock();
        for gone in last.difference(&now) {
            let labels = labels(gone);
            metrics::gauge!("wharf_instance_cpu_ratio", labels.clone()).set(0.0);
            metrics::gauge!("wharf_instance_memory_usage_bytes", labels.clone()).set(0.0);
        }
        *last = now;
    }
}

fn labels((stack, service, instance): &(String, String, String)) -> Vec<metrics::Label> {
    vec![
        metrics::Label::new("stack", stack.clone()),
        metrics::Label::new("service", service.clone()),
        metrics::Label::new("instance_id", instance.clone()),
    ]
}

fn gauge((stack, service, state): &(String, String, String)) -> metrics::Gauge {
    metrics::gauge!("wharf_agent_instances",
        "stack" => stack.clone(), "service" => service.clone(), "state" => state.clone())
}

/// The stream to the master was (re)established.
pub fn link_connected() {
    metrics::counter!("wharf_agent_link_connections_total").increment(1);
}

/// A DNS query answered here (`local`), by the upstreams (`forwarded`), or refused (`error`).
pub fn dns_query(outcome: &'static str) {
    metrics::counter!("wharf_dns_queries_total", "outcome" => outcome).increment(1);
}

/// What the metrics are, for the exporter's `# HELP` lines.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "wharf_agent_instances",
        "Instances this node runs, by stack, service and state (as its agent reports them)."
    );
    describe_counter!(
        "wharf_agent_mirror_fetched_bytes_total",
        metrics::Unit::Bytes,
        "Bytes of registry content this node's mirror fetched (and kept) for its engine."
    );
    describe_counter!(
        "wharf_agent_mirror_peer_served_bytes_total",
        metrics::Unit::Bytes,
        "Bytes of blobs this node's mirror served to other nodes' mirrors."
    );
    describe_counter!(
        "wharf_agent_instance_restarts_total",
        "Restarts of each instance on this node since its generation started."
    );
    describe_counter!(
        "wharf_agent_link_connections_total",
        "Times this agent's stream to a master was established (reconnects count again)."
    );
    use metrics::Unit;
    describe_gauge!(
        "wharf_instance_cpu_ratio",
        "CPU used by each instance on this node, in cores (the engine's last sample)."
    );
    describe_gauge!(
        "wharf_instance_memory_usage_bytes",
        Unit::Bytes,
        "Memory used by each instance on this node (the engine's figure, cache excluded)."
    );
    describe_gauge!(
        "wharf_instance_memory_limit_bytes",
        Unit::Bytes,
        "Memory limit of each instance on this node."
    );
    describe_counter!(
        "wharf_instance_network_receive_bytes_total",
        Unit::Bytes,
        "Bytes each instance on this node received."
    );
    describe_counter!(
        "wharf_instance_network_transmit_bytes_total",
        Unit::Bytes,
        "Bytes each instance on this node sent."
    );
    describe_counter!(
        "wharf_instance_block_read_bytes_total",
        Unit::Bytes,
        "Bytes each instance on this node read from block devices."
    );
    describe_counter!(
        "wharf_instance_block_write_bytes_total",
        Unit::Bytes,
        "Bytes each instance on this node wrote to block devices."
    );
    describe_counter!(
        "wharf_dns_queries_total",
        "Service-discovery DNS queries on this node, by outcome (local, forwarded, error)."
    );
}
