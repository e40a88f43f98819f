//! Records for the unit tests of the pure modules (`ingress.rs`, `discovery.rs`): one stack `s`,
//! instances on node `n1` (a previous placement on `n2`), reports addressed `10.0.0.<generation>`.

use wharf_types::{Health, InstanceReport, InstanceState, ServiceSpec};

use crate::model::{InstanceRecord, ServiceRecord};

/// Service `name` of stack `s`.
pub fn service(name: &str, spec: ServiceSpec) -> ServiceRecord {
    serde_json::from_value(serde_json::json!({
        "stack": "s", "name": name, "spec": spec, "spec_hash": "h", "replicas": 1,
        "restart_nonce": 0, "updated_at": 0,
    }))
    .expect("a service record")
}

/// Instance `s.<service>.<slot>` at `generation` on `n1`, relocating or replacing `previous` on `n2`.
pub fn instance(
    service: &str,
    slot: u32,
    generation: u64,
    previous: Option<u64>,
) -> InstanceRecord {
    let mut v = serde_json::json!({
        "stack": "s", "service": service, "slot": slot, "node": "n1",
        "generation": generation, "spec_hash": "h", "restart_nonce": 0,
        "spec": ServiceSpec::default(), "created_at": 0,
    });
    if let Some(g) = previous {
        v["previous"] = serde_json::json!({"node": "n2", "generation": g});
    }
    serde_json::from_value(v).expect("an instance record")
}

/// A report of instance `id` at `generation`, with address `10.0.0.<generation>`.
pub fn report(id: &str, generation: u64, state: InstanceState, health: Health) -> InstanceReport {
    serde_json::from_value(serde_json::json!({
        "id": id, "generation": generation, "spec_hash": "h", "state": state,
        "health": health, "restarts": 0, "address": format!("10.0.0.{generation}"),
    }))
    .expect("a report")
}

/// The report of generation `generation` of instance `id` among `reports`.
pub fn report_in<'a>(
    reports: &'a [InstanceReport],
    id: &str,
    generation: u64,
) -> Option<&'a InstanceReport> {
    reports
        .iter()
        .find(|r| r.id == id && r.generation == generation)
}
