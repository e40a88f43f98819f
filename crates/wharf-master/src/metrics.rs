//! Prometheus metrics of the master (`GET /metrics`, text format 0.0.4): API requests by route
//! and status with latency histograms, store transaction latency, deployer pass durations, agent
//! stream connections; and, computed at each scrape from the master's copy of the store,
//! instances by service, state and health, nodes by state and deployments by state. Names
//! follow Prometheus' conventions (`_total` counters, `_seconds` base units); `promtool check
//! metrics` passes on the output (`tests/metrics.rs`).
//!
//! The recorder is the `metrics` facade's global one (`metrics-exporter-prometheus` without its
//! HTTP listener): code records where things happen, the API renders.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use wharf_store::{KeyValue, LeaseId, Revision, Store, StoreError, Txn, TxnResponse, WatchStream};

use crate::Master;
use crate::model::keys;

/// Histogram buckets of every `_seconds` metric: 1 ms to 60 s.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0,
];

/// How often the recorder folds waiting histogram samples into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process's recorder, installed on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Only this module installs one; a second master in the same process shares it.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        // Histogram samples wait in the recorder until they are folded into their buckets: at
        // a scrape, or here, so that a process nobody scrapes does not keep every sample.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("wharf-metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "wharf_api_requests_total",
        "API requests by method, route and status code."
    );
    describe_histogram!(
        "wharf_api_request_duration_seconds",
        Unit::Seconds,
        "Time to answer an API request (long polls and streams included), by method and route."
    );
    describe_histogram!(
        "wharf_store_transaction_duration_seconds",
        Unit::Seconds,
        "Time of a store transaction, durable on return, by outcome (succeeded, failed, error)."
    );
    describe_histogram!(
        "wharf_deployer_pass_duration_seconds",
        Unit::Seconds,
        "Time of one reconciliation pass of the deployer over every stack."
    );
    describe_counter!(
        "wharf_deployer_pass_errors_total",
        "Deployer passes that failed (retried)."
    );
    describe_counter!(
        "wharf_registry_node_fetch_bytes_total",
        Unit::Bytes,
        "Bytes of registry content (manifests and blobs) this master sent to nodes' mirrors."
    );
    describe_counter!(
        "wharf_agent_connections_total",
        "Agent streams accepted by this master (a reconnect counts again)."
    );
    describe_gauge!(
        "wharf_instances",
        "Instances by stack, service, state and health, as the master knows them."
    );
    describe_gauge!("wharf_nodes", "Nodes by state.");
    describe_counter!(
        "wharf_ingress_requests_total",
        "HTTP requests the ingress of this process answered, by service and status code."
    );
    describe_histogram!(
        "wharf_ingress_request_duration_seconds",
        Unit::Seconds,
        "Time for the ingress of this process to answer an HTTP request, by service."
    );
    describe_counter!(
        "wharf_ingress_upstream_connect_errors_total",
        "Connects of the ingress of this process to an instance that failed, by service."
    );
    describe_counter!(
        "wharf_ingress_ejections_total",
        "Instances the ingress of this process left out after connect failures, by service."
    );
    describe_gauge!(
        "wharf_ingress_active_connections",
        "Client connections open on the ingress of this process, by protocol."
    );
    describe_gauge!(
        "wharf_deployments",
        "Deployments kept in the store, by state."
    );
    describe_counter!(
        "wharf_deployments_total",
        "Deployments that ended, committed by this master, by outcome (succeeded, failed, rolled_back)."
    );
    describe_histogram!(
        "wharf_deployment_duration_seconds",
        Unit::Seconds,
        "Time from a deployment's creation to its end, by outcome."
    );
}

/// Counts and times every request by the route it matched (`/v1/stacks/{stack}`, never the
/// concrete path: the label set stays bounded whatever clients ask for).
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("wharf_api_requests_total",
        "method" => method.clone(), "route" => route.clone(), "status" => status)
    .increment(1);
    metrics::histogram!("wharf_api_request_duration_seconds",
        "method" => method, "route" => route)
    .record(started.elapsed().as_secs_f64());
    resp
}

/// `GET /metrics`: the state gauges brought up to date, then everything rendered.
pub(crate) async fn scrape(State(m): State<Master>) -> Response {
    let h = handle();
    if let Err(e) = observe(&m).await {
        tracing::warn!(error = %e, "metrics: cannot read the state for the gauges");
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        h.render(),
    )
        .into_response()
}

/// One gauge's label sets seen at the last scrape: a set that is gone reads 0, not its old value.
type Seen = Mutex<BTreeMap<&'static str, BTreeSet<Vec<(&'static str, String)>>>>;

fn set_gauges(name: &'static str, values: BTreeMap<Vec<(&'static str, String)>, f64>) {
    static SEEN: OnceLock<Seen> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    let before = seen.entry(name).or_default();
    for gone in before.iter().filter(|l| !values.contains_key(*l)) {
        metrics::gauge!(name, labels(gone)).set(0.0);
    }
    *before = values.keys().cloned().collect();
    for (l, v) in values {
        metrics::gauge!(name, labels(&l)).set(v);
    }
}

fn labels(l: &[(&'static str, String)]) -> Vec<metrics::Label> {
    l.iter()
        .map(|(k, v)| metrics::Label::new(*k, v.clone()))
        .collect()
}

/// The state gauges from the master's copy of the store.
async fn observe(m: &Master) -> Result<(), crate::Error> {
    let reports = m.reports().await?;
    let mut instances: BTreeMap<Vec<(&'static str, String)>, f64> = BTreeMap::new();
    for i in m.instances(keys::INSTANCES).await? {
        // As the API shows it: what the agent reported of this generation, else pending.
        let r = crate::rollout::report_of(&i, &reports);
        let key = vec![
            ("stack", i.stack.clone()),
            ("service", i.service.clone()),
            ("state", word(&r.map(|r| r.state).unwrap_or_default())),
            ("health", word(&r.map(|r| r.health).unwrap_or_default())),
        ];
        *instances.entry(key).or_default() += 1.0;
    }
    set_gauges("wharf_instances", instances);
    let mut nodes: BTreeMap<Vec<(&'static str, String)>, f64> = BTreeMap::new();
    for n in m.nodes().await? {
        *nodes.entry(vec![("state", word(&n.state))]).or_default() += 1.0;
    }
    set_gauges("wharf_nodes", nodes);
    let (kvs, _) = m.store.range(keys::DEPLOYMENTS).await?;
    let mut deployments: BTreeMap<Vec<(&'static str, String)>, f64> = BTreeMap::new();
    for kv in kvs {
        let d: wharf_types::Deployment = crate::model::decode(&kv.key, &kv.value)?;
        *deployments
            .entry(vec![("state", word(&d.state))])
            .or_default() += 1.0;
    }
    set_gauges("wharf_deployments", deployments);
    Ok(())
}

/// An enum as its API word (`running`, `healthy`).
fn word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Records the time of a deployer pass.
pub(crate) fn deployer_pass(took: Duration, failed: bool) {
    metrics::histogram!("wharf_deployer_pass_duration_seconds").record(took.as_secs_f64());
    if failed {
        metrics::counter!("wharf_deployer_pass_errors_total").increment(1);
    }
}

/// Counts and times a deployment that ended (`succeeded`, `failed`, `rolled_back`).
pub(crate) fn deployment_ended(outcome: &'static str, took: Duration) {
    metrics::counter!("wharf_deployments_total", "outcome" => outcome).increment(1);
    metrics::histogram!("wharf_deployment_duration_seconds", "outcome" => outcome)
        .record(took.as_secs_f64());
}

/// Counts an accepted agent stream.
pub(crate) fn agent_connected() {
    metrics::counter!("wharf_agent_connections_total").increment(1);
}

/// A store that times its transactions; everything else passes through.
pub struct Metered(pub Arc<dyn Store>);

#[async_trait::async_trait]
impl Store for Metered {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.0.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        self.0.range(prefix).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let started = Instant::now();
        let r = self.0.txn(txn).await;
        let outcome = match &r {
            Ok(t) if t.succeeded => "succeeded",
            Ok(_) => "failed",
            Err(_) => "error",
        };
        metrics::histogram!("wharf_store_transaction_duration_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        r
    }
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.0.current_revision().await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        self.0.watch(prefix, from).await
    }
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.0.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.0.lease_keep_alive(lease).await
    }
    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.0.lease_revoke(lease).await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.0.compact(revision).await
    }
}
