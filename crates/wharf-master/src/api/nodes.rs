//! Node operations of the API: list, inspect, label, drain, activate, remove; and service
//! rebalance. Drain and rebalance only set flags; the deployer moves the instances.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use wharf_store::{Compare, Op, Txn};
use wharf_types::{
    MasterState, MastersStatus, NodeInfo, NodeLabelsRequest, NodeState, OperationResponse,
    StoreMember,
};

use super::commit_guarded;
use super::error::{ApiFailure, ApiJson, ApiQuery, ApiResult};
use crate::model::{self, NodeRecord, encode, keys};
use crate::mutate::Actor;
use crate::{Error, Master, now_ms};

/// A node as the API shows it: a draining node that is alive is `draining`.
pub fn node_info(m: &Master, n: NodeRecord, instances: u32) -> NodeInfo {
    let state = match n.state {
        NodeState::Ready if n.drain => NodeState::Draining,
        s => s,
    };
    let last_seen = m
        .hub
        .last_seen()
        .get(&n.id)
        .map(|t| now_ms().saturating_sub(t.elapsed().as_millis() as u64));
    let report = m.hub.last_report(&n.id);
    let (encryption, public_key) = encryption_state(m, &n);
    NodeInfo {
        encryption,
        public_key,
        drivers_down: report
            .as_ref()
            .map(|r| r.drivers_down.clone())
            .unwrap_or_default(),
        held: report.and_then(|r| r.held),
        instances,
        name: n.facts.name.clone(),
        state,
        since: n.since,
        drivers: n.facts.drivers.clone(),
        docker_version: n.facts.docker_version.clone(),
        cpus: n.facts.cpus,
        memory_bytes: n.facts.memory_bytes,
        os: n.facts.os.clone(),
        kernel: n.facts.kernel.clone(),
        storage_driver: n.facts.storage_driver.clone(),
        address: n.address.clone(),
        last_seen: last_seen.unwrap_or(0),
        labels: n.labels,
        id: n.id,
    }
}

/// What `node ls` says of a node's encryption, and its public key.
fn encryption_state(m: &Master, n: &NodeRecord) -> (String, Option<String>) {
    let key = n
        .tunnel
        .as_ref()
        .map(|t| t.public_key.clone())
        .filter(|k| !k.is_empty());
    let state = if m.config.network_pool.is_none() {
        "none".to_string()
    } else if !m.config.encryption {
        "off".to_string()
    } else {
        match &n.tunnel {
            Some(t) if t.error.is_some() => {
                format!("unavailable: {}", t.error.as_deref().unwrap_or_default())
            }
            Some(t) if !t.implementation.is_empty() => format!("wireguard ({})", t.implementation),
            _ => "pending".to_string(),
        }
    };
    (state, key)
}

/// Instances per node, counting relocations' previous placements on their old node.
async fn instance_counts(m: &Master) -> Result<BTreeMap<String, u32>, Error> {
    let mut counts = BTreeMap::new();
    for i in m.instances(keys::INSTANCES).await? {
        *counts.entry(i.node.clone()).or_default() += 1;
        if let Some(p) = &i.previous {
            *counts.entry(p.node.clone()).or_default() += 1;
        }
    }
    Ok(counts)
}

/// Find a node by id or by name.
async fn find(m: &Master, node: &str) -> Result<(NodeRecord, u64), Error> {
    let (kvs, _) = m.store.range(keys::NODES).await?;
    let mut by_name = Vec::new();
    for kv in kvs {
        let rec: NodeRecord = model::decode(&kv.key, &kv.value)?;
        if rec.id == node {
            return Ok((rec, kv.mod_revision));
        }
        if rec.facts.name == node {
            by_name.push((rec, kv.mod_revision));
        }
    }
    match by_name.len() {
        1 => Ok(by_name.remove(0)),
        0 => Err(Error::NotFound {
            what: format!("node {node}"),
            hint: Some("list nodes with `wharf node ls`".into()),
        }),
        _ => Err(Error::Conflict {
            message: format!("{} nodes are named {node}", by_name.len()),
            hint: Some("use the node id from `wharf node ls`".into()),
        }),
    }
}

/// The masters of the cluster, which one leads, and the health of the store's members.
#[utoipa::path(get, path = "/v1/masters", responses((status = 200, body = MastersStatus)))]
pub async fn list_masters(State(m): State<Master>) -> ApiResult<MastersStatus> {
    let (infos, leader) = crate::leader::masters(&m).await?;
    let presence = m.store.range(keys::PRESENCE).await.map_err(Error::from)?.0;
    let nodes_of = |id: &str| {
        presence
            .iter()
            .filter(|kv| kv.value == id.as_bytes())
            .count() as u32
    };
    let me = m.role.id();
    let mut masters: Vec<MasterState> = infos
        .into_iter()
        .map(|info| MasterState {
            leader: leader.as_deref() == Some(info.id.as_str()),
            answering: info.id == me,
            nodes: nodes_of(&info.id),
            info,
        })
        .collect();
    if masters.is_empty() {
        // One master on its own store (SQLite): it leads, and holds every agent.
        masters.push(MasterState {
            info: wharf_types::MasterInfo {
                id: me.to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                ..Default::default()
            },
            leader: m.role.leading(),
            answering: true,
            nodes: m.hub.connections().len() as u32,
        });
    }
    let (store, store_members) = match &m.etcd {
        Some(etcd) => (
            "etcd".to_string(),
            etcd.members()
                .await
                .into_iter()
                .map(|e| StoreMember {
                    name: e.name,
                    url: e.client_url,
                    healthy: e.healthy,
                    leader: e.leader,
                })
                .collect(),
        ),
        None => ("sqlite".to_string(), Vec::new()),
    };
    Ok(Json(MastersStatus {
        masters,
        store,
        store_members,
    }))
}

#[utoipa::path(get, path = "/v1/nodes", responses((status = 200, body = [NodeInfo])))]
pub async fn list_nodes(State(m): State<Master>) -> ApiResult<Vec<NodeInfo>> {
    let counts = instance_counts(&m).await?;
    let out = m
        .nodes()
        .await?
        .into_iter()
        .map(|n| {
            let c = counts.get(&n.id).copied().unwrap_or(0);
            node_info(&m, n, c)
        })
        .collect();
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/nodes/{node}", params(("node" = String, Path, description = "node id or name")),
    responses((status = 200, body = NodeInfo), (status = 404, body = wharf_types::ApiError)))]
pub async fn get_node(State(m): State<Master>, Path(node): Path<String>) -> ApiResult<NodeInfo> {
    let (rec, _) = find(&m, &node).await?;
    let c = instance_counts(&m)
        .await?
        .get(&rec.id)
        .copied()
        .unwrap_or(0);
    Ok(Json(node_info(&m, rec, c)))
}

/// Change a node record in one audited transaction, if nobody changed it meanwhile.
async fn update(
    m: &Master,
    actor: &Actor,
    action: &str,
    node: &str,
    change: impl FnOnce(&mut NodeRecord) -> Result<(), ApiFailure>,
) -> ApiResult<NodeInfo> {
    let (mut rec, rev) = find(m, node).await?;
    change(&mut rec)?;
    let key = keys::node(&rec.id);
    let txn = Txn::new()
        .when([Compare::unchanged_since(key.clone(), rev)])
        .then([Op::put(key, encode(&rec))]);
    commit_guarded(
        m,
        actor,
        action,
        &rec.id,
        now_ms(),
        txn,
        &format!("node {node}"),
    )
    .await?;
    m.hub.nudge();
    let c = instance_counts(m).await?.get(&rec.id).copied().unwrap_or(0);
    Ok(Json(node_info(m, rec, c)))
}

fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
}

#[utoipa::path(post, path = "/v1/nodes/{node}/labels", params(("node" = String, Path)), request_body = NodeLabelsRequest,
    responses((status = 200, body = NodeInfo), (status = 404, body = wharf_types::ApiError), (status = 422, body = wharf_types::ApiError)))]
pub async fn label_node(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(node): Path<String>,
    ApiJson(req): ApiJson<NodeLabelsRequest>,
) -> ApiResult<NodeInfo> {
    if let Some(k) = req
        .set
        .keys()
        .chain(req.remove.iter())
        .find(|k| !valid_label_key(k))
    {
        return Err(ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("label key {k:?} is not valid"),
        )
        .hint("label keys are 1-128 characters of letters, digits, '.', '-', '_' and '/'"));
    }
    update(&m, &actor, "node.label", &node, |rec| {
        for k in &req.remove {
            rec.labels.remove(k);
        }
        rec.labels.extend(req.set.clone());
        Ok(())
    })
    .await
}

#[utoipa::path(post, path = "/v1/nodes/{node}/drain", params(("node" = String, Path)),
    responses((status = 200, body = NodeInfo), (status = 404, body = wharf_types::ApiError)))]
pub async fn drain_node(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(node): Path<String>,
) -> ApiResult<NodeInfo> {
    set_drain(&m, &actor, &node, true).await
}

#[utoipa::path(post, path = "/v1/nodes/{node}/activate", params(("node" = String, Path)),
    responses((status = 200, body = NodeInfo), (status = 404, body = wharf_types::ApiError)))]
pub async fn activate_node(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(node): Path<String>,
) -> ApiResult<NodeInfo> {
    set_drain(&m, &actor, &node, false).await
}

#[utoipa::path(post, path = "/v1/nodes/{node}/rotate-keys", params(("node" = String, Path)),
    responses((status = 200, body = NodeInfo), (status = 404, body = wharf_types::ApiError)))]
/// Have the node replace its WireGuard key: its agent makes a new pair and sends the public key,
/// and every peer takes it with the next desired state.
pub async fn rotate_node_keys(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(node): Path<String>,
) -> ApiResult<NodeInfo> {
    update(&m, &actor, "node.rotate_keys", &node, |rec| {
        let current = rec.tunnel.as_ref().map_or(0, |t| t.epoch);
        rec.key_epoch = rec.key_epoch.max(current) + 1;
        Ok(())
    })
    .await
}

/// Drain a node (`true`: its instances move, it takes no new ones) or make it active again.
async fn set_drain(m: &Master, actor: &Actor, node: &str, drain: bool) -> ApiResult<NodeInfo> {
    let action = if drain { "node.drain" } else { "node.activate" };
    update(m, actor, action, node, |rec| {
        rec.drain = drain;
        Ok(())
    })
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveNodeQuery {
    /// Remove a node that is still ready (its agent is cut off for good).
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, path = "/v1/nodes/{node}", params(("node" = String, Path), RemoveNodeQuery),
    responses((status = 200, body = OperationResponse), (status = 404, body = wharf_types::ApiError), (status = 409, body = wharf_types::ApiError)))]
pub async fn remove_node(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(node): Path<String>,
    ApiQuery(q): ApiQuery<RemoveNodeQuery>,
) -> ApiResult<OperationResponse> {
    let (rec, rev) = find(&m, &node).await?;
    if rec.state == NodeState::Ready && !q.force {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("node {} is ready", rec.id),
        )
        .hint("drain it first (`wharf node drain`), stop its agent, or pass --force"));
    }
    // Removing the record revokes the node: its certificate no longer opens a stream, and its
    // instances count as lost, so they move.
    let key = keys::node(&rec.id);
    let txn = Txn::new()
        .when([Compare::unchanged_since(key.clone(), rev)])
        .then([Op::delete(key), Op::delete(keys::status(&rec.id))]);
    commit_guarded(
        &m,
        &actor,
        "node.remove",
        &rec.id,
        now_ms(),
        txn,
        &format!("node {node}"),
    )
    .await?;
    m.hub.disconnect(&rec.id);
    m.hub.nudge();
    Ok(Json(OperationResponse {
        deployment_id: None,
    }))
}
