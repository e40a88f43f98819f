//! `/v1/services` and instance listings: services with their instances and what agents report of
//! them, and the service operations (scale, restart, rollback, rebalance, logs).

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use wharf_store::{Compare, Op, Txn};
use wharf_types::*;

use super::commit_guarded;
use super::deployments::supersede;
use super::error::{ApiFailure, ApiJson, ApiQuery, ApiResult, not_found_service, not_found_stack};
use crate::model::{InstanceRecord, ServiceRecord, encode, keys};
use crate::mutate::Actor;
use crate::policy::Caller;
use crate::{Error, Master, new_id, now_ms, rollout};

/// Instance records joined with what agents report about them.
pub(crate) async fn instance_infos(m: &Master, prefix: &str) -> Result<Vec<InstanceInfo>, Error> {
    let insts = m.instances(prefix).await?;
    let reports = m.reports().await?;
    Ok(insts.iter().map(|i| instance_info(i, &reports)).collect())
}

pub(crate) fn instance_info(
    i: &InstanceRecord,
    reports: &BTreeMap<String, InstanceReport>,
) -> InstanceInfo {
    let r = rollout::report_of(i, reports);
    InstanceInfo {
        id: i.id(),
        stack: i.stack.clone(),
        service: i.service.clone(),
        slot: i.slot,
        node: i.node.clone(),
        generation: i.generation,
        spec_hash: i.spec_hash.clone(),
        state: r.map(|r| r.state).unwrap_or_default(),
        health: r.map(|r| r.health).unwrap_or_default(),
        container_id: r.and_then(|r| r.container_id.clone()),
        exit_code: r.and_then(|r| r.exit_code),
        error: r.and_then(|r| r.error.clone()),
        health_output: r.and_then(|r| r.health_output.clone()),
        restarts: r.map(|r| r.restarts).unwrap_or(0),
        started_at: r.and_then(|r| r.started_at),
        updated_at: i.created_at,
        draining: crate::drain::is_draining(i),
    }
}

#[utoipa::path(get, path = "/v1/stacks/{stack}/instances", params(("stack" = String, Path)),
    responses((status = 200, body = [InstanceInfo]), (status = 404, body = ApiError)))]
pub(crate) async fn stack_instances(
    State(m): State<Master>,
    Path(stack): Path<String>,
) -> ApiResult<Vec<InstanceInfo>> {
    m.stack(&stack)
        .await?
        .ok_or_else(|| not_found_stack(&stack))?;
    Ok(Json(
        instance_infos(&m, &keys::instances_of_stack(&stack)).await?,
    ))
}

pub(crate) fn ports(spec: &ServiceSpec) -> Vec<String> {
    spec.ports
        .iter()
        .map(|p| {
            let proto = match p.protocol {
                Protocol::Tcp => "tcp",
                Protocol::Udp => "udp",
            };
            match (&p.host_ip, p.published) {
                (Some(ip), Some(h)) => format!("{ip}:{h}:{}/{proto}", p.target),
                (None, Some(h)) => format!("{h}:{}/{proto}", p.target),
                _ => format!("{}/{proto}", p.target),
            }
        })
        .collect()
}

pub(crate) fn service_summary(
    s: &ServiceRecord,
    insts: &[InstanceRecord],
    reports: &BTreeMap<String, InstanceReport>,
) -> ServiceSummary {
    let mine: Vec<&InstanceRecord> = insts
        .iter()
        .filter(|i| i.stack == s.stack && i.service == s.name)
        .collect();
    summary_of(s, &mine, &|i| rollout::report_of(i, reports))
}

/// The summary of `s` whose instances are `mine`; `report` finds an instance's report of its
/// current generation.
pub(crate) fn summary_of<'r>(
    s: &ServiceRecord,
    mine: &[&InstanceRecord],
    report: &dyn Fn(&InstanceRecord) -> Option<&'r InstanceReport>,
) -> ServiceSummary {
    // One look-up per instance (10,000 at bench/scale's size).
    let (mut running, mut healthy) = (0u32, 0u32);
    for i in mine {
        let r = report(i);
        running += u32::from(r.is_some_and(|r| r.state == InstanceState::Running));
        healthy += u32::from(rollout::is_ready(r));
    }
    ServiceSummary {
        stack: s.stack.clone(),
        name: s.name.clone(),
        image: s.spec.image_ref(&s.stack, &s.name),
        mode: s.spec.deploy.mode,
        replicas: s.replicas,
        running,
        healthy,
        ports: ports(&s.spec),
        updated_at: s.updated_at,
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ServicesQuery {
    /// Only services of this stack.
    stack: Option<String>,
}

#[utoipa::path(get, path = "/v1/services", params(ServicesQuery), responses((status = 200, body = [ServiceSummary])))]
pub(crate) async fn list_services(
    State(m): State<Master>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ServicesQuery>,
) -> ApiResult<Vec<ServiceSummary>> {
    // Read as the cache holds them (shared, decoded once): no copy of 10,000 records a call.
    let (insts, _) = m.decoded::<InstanceRecord>(keys::INSTANCES).await?;
    let (reps, _) = m.decoded::<wharf_types::NodeReport>(keys::STATUS).await?;
    let (services, _) = m.decoded::<ServiceRecord>(keys::SERVICES).await?;
    // The newest reported generation of each instance: hashed, for one look-up per instance.
    let mut newest: std::collections::HashMap<&str, &wharf_types::InstanceReport> =
        std::collections::HashMap::with_capacity(insts.len());
    for r in reps.iter().flat_map(|d| &d.value.instances) {
        match newest.get(r.id.as_str()) {
            Some(cur) if cur.generation >= r.generation => {}
            _ => {
                newest.insert(&r.id, r);
            }
        }
    }
    let mut of_service: BTreeMap<(&str, &str), Vec<&InstanceRecord>> = BTreeMap::new();
    for i in &insts {
        of_service
            .entry((i.value.stack.as_str(), i.value.service.as_str()))
            .or_default()
            .push(&i.value);
    }
    let report = |i: &InstanceRecord| {
        newest
            .get(i.id().as_str())
            .copied()
            .filter(|r| r.generation == i.generation)
    };
    let out = services
        .iter()
        .map(|d| &*d.value)
        .filter(|s| q.stack.as_ref().is_none_or(|st| &s.stack == st) && caller.sees(&s.stack))
        .map(|s| {
            let mine = of_service
                .get(&(s.stack.as_str(), s.name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            summary_of(s, mine, &report)
        })
        .collect();
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/services/{stack}/{service}", params(("stack" = String, Path), ("service" = String, Path)),
    responses((status = 200, body = ServiceInfo), (status = 404, body = ApiError)))]
pub(crate) async fn get_service(
    State(m): State<Master>,
    Path((stack, service)): Path<(String, String)>,
) -> ApiResult<ServiceInfo> {
    let (s, _) = m
        .service(&stack, &service)
        .await?
        .ok_or_else(|| not_found_service(&stack, &service))?;
    let insts = m
        .instances(&keys::instances_of_service(&stack, &service))
        .await?;
    let reports = m.reports().await?;
    Ok(Json(ServiceInfo {
        summary: service_summary(&s, &insts, &reports),
        spec_hash: s.spec_hash.clone(),
        instances: insts.iter().map(|i| instance_info(i, &reports)).collect(),
        spec: {
            let mut spec = std::sync::Arc::unwrap_or_clone(s.spec);
            spec.redact_secrets(); // private keys never leave the master
            spec
        },
    }))
}

#[utoipa::path(get, path = "/v1/services/{stack}/{service}/instances", params(("stack" = String, Path), ("service" = String, Path)),
    responses((status = 200, body = [InstanceInfo]), (status = 404, body = ApiError)))]
pub(crate) async fn service_instances(
    State(m): State<Master>,
    Path((stack, service)): Path<(String, String)>,
) -> ApiResult<Vec<InstanceInfo>> {
    m.service(&stack, &service)
        .await?
        .ok_or_else(|| not_found_service(&stack, &service))?;
    Ok(Json(
        instance_infos(&m, &keys::instances_of_service(&stack, &service)).await?,
    ))
}

/// Commit a change to one service together with a deployment that tracks it.
pub(crate) async fn service_operation(
    m: &Master,
    actor: &Actor,
    action: &str,
    stack: &str,
    service: &str,
    change: impl FnOnce(&mut ServiceRecord) -> bool,
) -> ApiResult<OperationResponse> {
    service_operation_by(m, actor, action, (stack, service), None, change).await
}

/// `service_operation`, saying what started it when no command did (`Deployment::trigger`).
pub(crate) async fn service_operation_by(
    m: &Master,
    actor: &Actor,
    action: &str,
    (stack, service): (&str, &str),
    trigger: Option<String>,
    change: impl FnOnce(&mut ServiceRecord) -> bool,
) -> ApiResult<OperationResponse> {
    let (mut s, rev) = m
        .service(stack, service)
        .await?
        .ok_or_else(|| not_found_service(stack, service))?;
    let (mut st, st_rev) = m
        .stack(stack)
        .await?
        .ok_or_else(|| not_found_stack(stack))?;
    if st.removing.is_some() {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("stack {stack} is being removed"),
        ));
    }
    if !change(&mut s) {
        return Ok(Json(OperationResponse {
            deployment_id: None,
        }));
    }
    let now = now_ms();
    s.updated_at = now;
    let id = new_id("d-");
    let mut d = Deployment::started(
        (&id, stack, st.revision),
        vec![ServiceProgress::starting(service, s.replicas)],
        (&actor.name, trigger),
        now,
    );
    d.images = BTreeMap::from([(service.to_string(), s.spec.image_ref(stack, service))]);
    let mut ops = supersede(m, Some(&st)).await?;
    st.last_deployment = Some(id.clone());
    ops.push(Op::put(keys::stack(stack), encode(&st)));
    ops.push(Op::put(keys::service(stack, service), encode(&s)));
    ops.push(Op::put(keys::deployment(&id), encode(&d)));
    let txn = Txn::new()
        .when([
            Compare::unchanged_since(keys::service(stack, service), rev),
            Compare::unchanged_since(keys::stack(stack), st_rev),
        ])
        .then(ops);
    commit_guarded(
        m,
        actor,
        action,
        &format!("{stack}/{service}"),
        now,
        txn,
        &format!("service {service}"),
    )
    .await?;
    m.hub.nudge();
    Ok(Json(OperationResponse {
        deployment_id: Some(id),
    }))
}

#[utoipa::path(post, path = "/v1/services/{stack}/{service}/scale", params(("stack" = String, Path), ("service" = String, Path)),
    request_body = ScaleRequest, responses((status = 200, body = OperationResponse), (status = 404, body = ApiError)))]
pub(crate) async fn scale(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path((stack, service)): Path<(String, String)>,
    ApiJson(req): ApiJson<ScaleRequest>,
) -> ApiResult<OperationResponse> {
    // The one limit of every path (wharf_types::MAX_REPLICAS), in the same words.
    if let Some((message, hint)) = wharf_compose::replicas_problem(req.replicas) {
        return Err(ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("replicas: {message}"),
        )
        .hint(hint));
    }
    service_operation(&m, &actor, "service.scale", &stack, &service, |s| {
        let changed = s.replicas != req.replicas;
        s.replicas = req.replicas;
        changed
    })
    .await
}

#[utoipa::path(post, path = "/v1/services/{stack}/{service}/restart", params(("stack" = String, Path), ("service" = String, Path)),
    responses((status = 200, body = OperationResponse), (status = 404, body = ApiError)))]
pub(crate) async fn restart(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path((stack, service)): Path<(String, String)>,
) -> ApiResult<OperationResponse> {
    service_operation(&m, &actor, "service.restart", &stack, &service, |s| {
        s.restart_nonce += 1;
        s.rollback = None; // a restart rolls out with update_config
        true
    })
    .await
}

#[utoipa::path(post, path = "/v1/services/{stack}/{service}/rollback", params(("stack" = String, Path), ("service" = String, Path), RollbackQuery),
    responses((status = 200, body = OperationResponse), (status = 404, body = ApiError),
              (status = 409, body = ApiError, description = "the service has no previous spec")))]
pub(crate) async fn rollback(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path((stack, service)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<RollbackQuery>,
) -> ApiResult<OperationResponse> {
    let (s, _) = m
        .service(&stack, &service)
        .await?
        .ok_or_else(|| not_found_service(&stack, &service))?;
    if q.to.is_some() || !s.history.is_empty() {
        return rollback_to_revision(&m, &actor, &s, q.to).await;
    }
    let no_previous = || {
        ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("service {service} of stack {stack} has no previous spec to roll back to"),
        )
        .hint("a service gets a previous spec when a deploy changes it; deploy the version you want instead")
    };
    let (s, _) = m
        .service(&stack, &service)
        .await?
        .ok_or_else(|| not_found_service(&stack, &service))?;
    if s.previous_spec.is_none() {
        return Err(no_previous());
    }
    // The previous spec swaps in and rolls out with the current spec's rollback_config.
    let r = service_operation(&m, &actor, "service.rollback", &stack, &service, |s| {
        match rollout::roll_back(s, false, None, None, now_ms()) {
            Some(next) => {
                *s = next;
                true
            }
            None => false,
        }
    })
    .await?;
    if r.deployment_id.is_none() {
        return Err(no_previous()); // lost its previous spec meanwhile
    }
    Ok(r)
}

/// A rollback to a revision of the history: `to`, else the one before the revision the running
/// spec came from. The replica count stays.
async fn rollback_to_revision(
    m: &Master,
    actor: &Actor,
    s: &ServiceRecord,
    to: Option<u64>,
) -> ApiResult<OperationResponse> {
    let (stack, service) = (&s.stack, &s.name);
    let kept: Vec<String> = s.history.iter().map(|r| r.revision.to_string()).collect();
    let target = match to {
        Some(n) => s.history.iter().find(|r| r.revision == n).ok_or_else(|| {
            ApiFailure::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("service {service} of stack {stack} has no revision {n}"),
            )
            .hint(format!(
                "the revisions kept are {}; see `wharf service history {stack}/{service}`",
                kept.join(", ")
            ))
        })?,
        None => s.rollback_target().ok_or_else(|| {
            ApiFailure::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "service {service} of stack {stack} has no previous spec to roll back to: no revision before the running one"
                ),
            )
            .hint("see `wharf service history`; deploy the version you want instead")
        })?,
    }
    .clone();
    service_operation(m, actor, "service.rollback", stack, service, |s| {
        if s.spec_hash == target.spec_hash {
            return false; // already runs it
        }
        *s = rollout::roll_back_to(s, &target, now_ms());
        true
    })
    .await
}

#[utoipa::path(post, path = "/v1/services/{stack}/{service}/update", params(("stack" = String, Path), ("service" = String, Path)),
    request_body = ServiceUpdateRequest,
    responses((status = 200, body = OperationResponse), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub(crate) async fn update(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path((stack, service)): Path<(String, String)>,
    ApiJson(req): ApiJson<ServiceUpdateRequest>,
) -> ApiResult<OperationResponse> {
    if let Some((field, message)) = update_problem(&req) {
        return Err(ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("{field}: {message}"),
        )
        .hint("e.g. {\"image\": \"shop/web:1.4\", \"env_add\": {\"LOG_LEVEL\": \"debug\"}}"));
    }
    // An image of the cluster's registry is pinned to its tag's digest now, as a deploy does.
    let image = match &req.image {
        Some(i) => Some(
            m.pin_image(&service, i)
                .await?
                .map_err(super::stacks::unpinned)?
                .unwrap_or_else(|| i.clone()),
        ),
        None => None,
    };
    service_operation(&m, &actor, "service.update", &stack, &service, |s| {
        let mut spec = (*s.spec).clone();
        if let Some(image) = image {
            spec.image = Some(image);
        }
        for k in &req.env_rm {
            spec.environment.remove(k);
        }
        spec.environment.extend(req.env_add.clone());
        change_spec(s, spec, "update")
    })
    .await
}

/// Make `spec` the service's spec, rolled out with its `update_config` and recorded in its
/// history with `cause`; `false` when it is the spec already.
pub(crate) fn change_spec(s: &mut ServiceRecord, spec: ServiceSpec, cause: &str) -> bool {
    if spec == *s.spec {
        return false;
    }
    let now = now_ms();
    let old = (s.spec.clone(), s.spec_hash.clone());
    s.spec_hash = spec.instance_hash();
    s.previous_spec = Some(std::mem::replace(&mut s.spec, std::sync::Arc::new(spec)));
    s.previous_spec_hash = Some(old.1.clone());
    s.changed_at_nonce = s.restart_nonce;
    s.rollback = None; // a new spec rolls out with update_config
    s.push_revision(Some((&old.0, &old.1)), cause, None, now);
    true
}

/// What is wrong with a `service update` request: the field and why.
fn update_problem(req: &ServiceUpdateRequest) -> Option<(String, String)> {
    if req.is_empty() {
        return Some((
            "body".into(),
            "nothing to update: give image, env_add or env_rm".into(),
        ));
    }
    if let Some(image) = &req.image
        && (image.is_empty()
            || image.len() > 512
            || image.contains(|c: char| c.is_whitespace() || c.is_control()))
    {
        return Some((format!("image {image:?}"), "not an image reference".into()));
    }
    let bad_key = |k: &String| {
        k.is_empty() || k.len() > 256 || k.contains(['=', '\0']) || k.contains(char::is_whitespace)
    };
    if let Some(k) = req.env_add.keys().chain(&req.env_rm).find(|k| bad_key(k)) {
        return Some((
            format!("environment variable {k:?}"),
            "a name may not be empty or hold '=', spaces or NUL".into(),
        ));
    }
    if let Some((k, _)) = req
        .env_add
        .iter()
        .find(|(_, v)| v.contains('\0') || v.len() > 64 * 1024)
    {
        return Some((
            format!("env_add.{k}"),
            "a value may not hold NUL or exceed 64 KiB".into(),
        ));
    }
    None
}

#[utoipa::path(get, path = "/v1/services/{stack}/{service}/history", params(("stack" = String, Path), ("service" = String, Path)),
    responses((status = 200, body = [SpecRevisionInfo]), (status = 404, body = ApiError)))]
pub(crate) async fn history(
    State(m): State<Master>,
    Path((stack, service)): Path<(String, String)>,
) -> ApiResult<Vec<SpecRevisionInfo>> {
    let (s, _) = m
        .service(&stack, &service)
        .await?
        .ok_or_else(|| not_found_service(&stack, &service))?;
    let last = s.history.last().map(|r| r.revision);
    Ok(Json(
        s.history
            .iter()
            .map(|r| SpecRevisionInfo {
                revision: r.revision,
                current: Some(r.revision) == last && r.spec_hash == s.spec_hash,
                image: r.spec.image.clone(),
                spec_hash: r.spec_hash.clone(),
                cause: r.cause.clone(),
                restored: r.restored,
                created_at: r.created_at,
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/v1/services/{stack}/{service}/rebalance", params(("stack" = String, Path), ("service" = String, Path)),
    responses((status = 200, body = OperationResponse), (status = 404, body = ApiError)))]
pub(crate) async fn rebalance(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path((stack, service)): Path<(String, String)>,
) -> ApiResult<OperationResponse> {
    service_operation(&m, &actor, "service.rebalance", &stack, &service, |s| {
        s.rebalance = true;
        true
    })
    .await
}

#[utoipa::path(get, path = "/v1/services/{stack}/{service}/logs", params(("stack" = String, Path), ("service" = String, Path), LogQuery),
    responses((status = 200, description = "newline-delimited JSON LogLine objects", content_type = "application/x-ndjson", body = LogLine)))]
pub(crate) async fn logs(
    State(m): State<Master>,
    Path((stack, service)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response, ApiFailure> {
    m.service(&stack, &service)
        .await?
        .ok_or_else(|| not_found_service(&stack, &service))?;
    let (tx, rx) = tokio::sync::mpsc::channel(super::logs::LINES_BUFFERED);
    tokio::spawn(super::logs::pump(m, stack, service, q, tx));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}
