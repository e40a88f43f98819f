//! The HTTP API under `/v1`: JSON in and out, a bearer token on every route but `/healthz`, bodies
//! limited in size, and every error an `ApiError` with a code, a message and a hint.
//!
//! Handlers only read the store or commit one transaction through `Master::mutate`; the work itself
//! (placing, starting, stopping) is the controllers' job.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use utoipa::OpenApi;
use wharf_store::{Compare, Op, Txn};
use wharf_types::*;

use crate::diff::stack_diff;
use crate::model::{InstanceRecord, Removal, ServiceRecord, StackRecord, encode, keys};
use crate::mutate::Actor;
use crate::{Error, Master, new_id, now_ms, rollout};

/// Largest accepted request body: a stack spec of several hundred services fits easily.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// An API error response.
pub struct ApiFailure(pub StatusCode, pub ApiError);

impl ApiFailure {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiFailure {
        ApiFailure(
            status,
            ApiError {
                code: code.into(),
                message: message.into(),
                hint: None,
                location: None,
            },
        )
    }
    pub fn hint(mut self, hint: impl Into<String>) -> ApiFailure {
        self.1.hint = Some(hint.into());
        self
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.0, Json(self.1)).into_response()
    }
}

impl From<Error> for ApiFailure {
    fn from(e: Error) -> ApiFailure {
        let message = e.to_string();
        match e {
            Error::NotFound { hint, .. } => ApiFailure(
                StatusCode::NOT_FOUND,
                ApiError {
                    code: "not_found".into(),
                    message,
                    hint,
                    location: None,
                },
            ),
            Error::Conflict { hint, .. } => ApiFailure(
                StatusCode::CONFLICT,
                ApiError {
                    code: "conflict".into(),
                    message,
                    hint,
                    location: None,
                },
            ),
            Error::Invalid { location, hint, .. } => ApiFailure(
                StatusCode::UNPROCESSABLE_ENTITY,
                ApiError {
                    code: "invalid".into(),
                    message,
                    hint,
                    location,
                },
            ),
            Error::Unavailable(_) => {
                ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            Error::Store(_) | Error::Corrupt(_) => {
                tracing::error!(error = %message, "internal error");
                ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
                    .hint("see the server log")
            }
        }
    }
}

type ApiResult<T> = Result<Json<T>, ApiFailure>;

/// `Json` whose rejections (malformed, wrong type, too large, wrong content type) are `ApiError`s.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiFailure;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ApiFailure {
    let status = rej.status();
    let (code, hint) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too_large",
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send Content-Type: application/json".into(),
        ),
        _ => (
            "bad_request",
            "the body must be JSON matching the schema at /v1/openapi.json".into(),
        ),
    };
    ApiFailure::new(status, code, rej.body_text()).hint(hint)
}

/// Build the router. `/healthz` is open; everything else needs a valid bearer token.
pub fn router(m: Master) -> Router {
    let v1 = Router::new()
        .route("/v1/version", get(version))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/stacks", get(list_stacks))
        .route(
            "/v1/stacks/{stack}",
            get(get_stack).put(deploy).delete(remove_stack),
        )
        .route("/v1/stacks/{stack}/diff", post(diff))
        .route("/v1/stacks/{stack}/instances", get(stack_instances))
        .route("/v1/services", get(list_services))
        .route("/v1/services/{stack}/{service}", get(get_service))
        .route(
            "/v1/services/{stack}/{service}/instances",
            get(service_instances),
        )
        .route("/v1/services/{stack}/{service}/scale", post(scale))
        .route("/v1/services/{stack}/{service}/restart", post(restart))
        .route("/v1/services/{stack}/{service}/rollback", post(rollback))
        .route("/v1/services/{stack}/{service}/logs", get(logs))
        .route("/v1/deployments/{id}", get(get_deployment))
        .route("/v1/nodes", get(crate::nodes::list_nodes))
        .route(
            "/v1/nodes/{node}",
            get(crate::nodes::get_node).delete(crate::nodes::remove_node),
        )
        .route("/v1/nodes/{node}/labels", post(crate::nodes::label_node))
        .route("/v1/nodes/{node}/drain", post(crate::nodes::drain_node))
        .route(
            "/v1/nodes/{node}/activate",
            post(crate::nodes::activate_node),
        )
        .route("/v1/services/{stack}/{service}/rebalance", post(rebalance))
        .route("/v1/join-tokens", post(create_join_token))
        .route("/v1/audit", get(list_audit))
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(m.clone(), authenticate));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(v1)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(access_log))
        .with_state(m)
}

/// Serve the API on an already-bound listener (bind first, so startup errors surface at once).
pub async fn serve(m: Master, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(m).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

async fn access_log(req: Request, next: Next) -> Response {
    // Method and path only: headers (the token) and bodies (secrets) are never logged.
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
    resp
}

async fn authenticate(State(m): State<Master>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let unauthorized = |msg: &str| {
        ApiFailure::new(StatusCode::UNAUTHORIZED, "unauthorized", msg)
            .hint("send Authorization: Bearer <token>; `wharf up` writes an admin token to the CLI context")
            .into_response()
    };
    let Some(token) = token else {
        return unauthorized("missing bearer token");
    };
    match m.authenticate(token).await {
        Ok(Some(rec)) => {
            req.extensions_mut().insert(Actor(rec.name));
            next.run(req).await
        }
        Ok(None) => unauthorized("invalid token"),
        Err(e) => ApiFailure::from(e).into_response(),
    }
}

async fn not_found() -> ApiFailure {
    ApiFailure::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        .hint("see /v1/openapi.json")
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Wharf API", description = "Deploy and operate stacks of containers. Every endpoint but /healthz needs `Authorization: Bearer <token>`."),
    paths(version, openapi, list_stacks, get_stack, deploy, remove_stack, diff, stack_instances, list_services,
          get_service, service_instances, scale, restart, rollback, rebalance, logs, get_deployment, list_audit,
          crate::nodes::list_nodes, crate::nodes::get_node, crate::nodes::label_node, crate::nodes::drain_node,
          crate::nodes::activate_node, crate::nodes::remove_node,
          create_join_token),
    components(schemas(ApiError, StackSpec, ServiceSpec, DeployRequest, DeployResponse, StackDiff, StackSummary,
                        StackInfo, ServiceSummary, ServiceInfo, InstanceInfo, Deployment, ScaleRequest,
                        OperationResponse, InstanceProgress, NodeInfo, NodeLabelsRequest, LogLine, AuditRecord, VersionInfo,
                        JoinTokenRequest, JoinTokenResponse)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "this document")))]
async fn openapi() -> Response {
    match ApiDoc::openapi().to_json() {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            .into_response(),
    }
}

#[utoipa::path(get, path = "/v1/version", responses((status = 200, body = VersionInfo)))]
async fn version() -> Json<VersionInfo> {
    Json(VersionInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        api: "v1".into(),
    })
}

fn not_found_stack(stack: &str) -> Error {
    Error::NotFound {
        what: format!("stack {stack}"),
        hint: Some("list stacks with `wharf stack ls`".into()),
    }
}

fn not_found_service(stack: &str, service: &str) -> Error {
    Error::NotFound {
        what: format!("service {service} in stack {stack}"),
        hint: Some("list services with `wharf service ls`".into()),
    }
}

async fn summary(m: &Master, rec: &StackRecord) -> Result<StackSummary, Error> {
    let services = m.services(&rec.name).await?;
    let insts = m.instances(&keys::instances_of_stack(&rec.name)).await?;
    let reports = m.reports().await?;
    let running = insts
        .iter()
        .filter(|i| rollout::is_ready(rollout::report_of(i, &reports)))
        .count();
    Ok(StackSummary {
        name: rec.name.clone(),
        revision: rec.revision,
        services: services.len() as u32,
        instances_desired: services.values().map(|s| s.replicas).sum(),
        instances_running: running as u32,
        updated_at: rec.updated_at,
    })
}

#[utoipa::path(get, path = "/v1/stacks", responses((status = 200, body = [StackSummary])))]
async fn list_stacks(State(m): State<Master>) -> ApiResult<Vec<StackSummary>> {
    let mut out = Vec::new();
    for rec in m.stacks().await? {
        out.push(summary(&m, &rec).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/stacks/{stack}", params(("stack" = String, Path)),
    responses((status = 200, body = StackInfo), (status = 404, body = ApiError)))]
async fn get_stack(State(m): State<Master>, Path(stack): Path<String>) -> ApiResult<StackInfo> {
    let (rec, _) = m
        .stack(&stack)
        .await?
        .ok_or_else(|| not_found_stack(&stack))?;
    let deployment = match &rec.last_deployment {
        Some(id) => m.deployment(id).await?,
        None => None,
    };
    let mut spec = rec.spec.clone();
    spec.redact_secrets(); // private keys never leave the master
    Ok(Json(StackInfo {
        summary: summary(&m, &rec).await?,
        spec,
        deployment,
    }))
}

fn validate(stack: &str, spec: &StackSpec) -> Result<(), ApiFailure> {
    if let Err(msg) = wharf_compose::validate_stack_name(stack) {
        return Err(ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", msg).hint(
            "stack names are lower-case letters, digits, '-' and '_', starting with a letter or digit",
        ));
    }
    if spec.name != stack {
        return Err(ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!(
                "stack name in the path ({stack}) differs from spec.name ({})",
                spec.name
            ),
        )
        .hint("send the spec to /v1/stacks/<spec.name>"));
    }
    if let Err(errs) = wharf_compose::validate_spec(spec) {
        let first = &errs[0];
        let message = errs
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut f = ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message);
        f.1.location = Some(first.path.clone());
        f.1.hint = first.hint.clone();
        return Err(f);
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/stacks/{stack}/diff", params(("stack" = String, Path)), request_body = DeployRequest,
    responses((status = 200, body = StackDiff), (status = 422, body = ApiError)))]
async fn diff(
    State(m): State<Master>,
    Path(stack): Path<String>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> ApiResult<StackDiff> {
    validate(&stack, &req.spec)?;
    let services = m.services(&stack).await?;
    Ok(Json(stack_diff(&services, &req.spec)))
}

#[utoipa::path(put, path = "/v1/stacks/{stack}", params(("stack" = String, Path)), request_body = DeployRequest,
    responses((status = 200, body = DeployResponse), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
async fn deploy(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(stack): Path<String>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> ApiResult<DeployResponse> {
    validate(&stack, &req.spec)?;
    // Every record the deploy rewrites is guarded by its revision; a controller write in between
    // (a rollback, a cleared rebalance flag) makes the transaction fail, and it is rebuilt from a
    // fresh read: never a lost update.
    for attempt in 1..=DEPLOY_ATTEMPTS {
        if let Some(resp) = deploy_once(&m, &actor, &stack, &req.spec, attempt).await? {
            m.hub.nudge();
            return Ok(Json(resp));
        }
    }
    Err(ApiFailure::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("stack {stack} changed while deploying"),
    )
    .hint("someone else deployed it at the same time; run the deploy again"))
}

/// How often a deploy is rebuilt when a record it rewrites changed under it.
const DEPLOY_ATTEMPTS: u32 = 5;

/// One try of a deploy: `None` when a guarded record changed meanwhile.
async fn deploy_once(
    m: &Master,
    actor: &Actor,
    stack: &str,
    spec: &StackSpec,
    attempt: u32,
) -> Result<Option<DeployResponse>, ApiFailure> {
    let stack = stack.to_string();
    let spec = spec.clone();
    let now = now_ms();
    let current = m.stack(&stack).await?;
    let (prev, rev) = match &current {
        Some((rec, rev)) => (Some(rec), *rev),
        None => (None, 0),
    };
    if prev.is_some_and(|p| p.removing.is_some()) {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("stack {stack} is being removed"),
        )
        .hint("wait until `wharf stack ls` no longer lists it, then deploy again"));
    }
    let with_revs = m.services_with_revisions(&stack).await?;
    let services: BTreeMap<String, ServiceRecord> = with_revs
        .iter()
        .map(|(n, (s, _))| (n.clone(), s.clone()))
        .collect();
    let mut guards = vec![Compare::unchanged_since(keys::stack(&stack), rev)];
    let diff = stack_diff(&services, &spec);
    if diff.is_empty() && prev.is_some_and(|p| p.spec == spec) {
        let revision = prev.map(|p| p.revision).unwrap_or(0);
        return Ok(Some(DeployResponse {
            deployment_id: None,
            revision,
            diff,
        }));
    }

    let revision = prev.map(|p| p.revision).unwrap_or(0) + 1;
    let changed: Vec<&ServiceChange> = diff
        .services
        .iter()
        .filter(|c| c.kind != ChangeKind::Unchanged)
        .collect();
    let deployment_id = (!changed.is_empty()).then(|| new_id("d-"));
    let mut ops = Vec::new();
    for (name, svc_spec) in &spec.services {
        let old = services.get(name);
        // The spec before a change is what `service rollback` (or failure_action: rollback)
        // restores; a deploy that changes only the replica count keeps the rollback state.
        let spec_changed = old.is_some_and(|o| *o.spec != *svc_spec);
        let record = ServiceRecord {
            stack: stack.clone(),
            name: name.clone(),
            spec: std::sync::Arc::new(svc_spec.clone()),
            spec_hash: svc_spec.instance_hash(),
            replicas: svc_spec.deploy.replicas,
            restart_nonce: old.map(|o| o.restart_nonce).unwrap_or(0),
            updated_at: now,
            rebalance: false,
            previous_spec: match old {
                Some(o) if spec_changed => Some(o.spec.clone()),
                _ => old.and_then(|o| o.previous_spec.clone()),
            },
            previous_spec_hash: match old {
                Some(o) if spec_changed => Some(o.spec_hash.clone()),
                _ => old.and_then(|o| o.previous_spec_hash.clone()),
            },
            changed_at_nonce: match old {
                Some(o) if !spec_changed => o.changed_at_nonce,
                _ => old.map(|o| o.restart_nonce).unwrap_or(0),
            },
            rollback: old
                .filter(|_| !spec_changed)
                .and_then(|o| o.rollback.clone()),
        };
        if old.is_some_and(|o| o.spec == record.spec && o.replicas == record.replicas) {
            continue; // unchanged: not rewritten, so nothing is replaced
        }
        let svc_rev = with_revs.get(name).map(|(_, r)| *r).unwrap_or(0);
        guards.push(Compare::unchanged_since(
            keys::service(&stack, name),
            svc_rev,
        ));
        ops.push(Op::put(keys::service(&stack, name), encode(&record)));
    }
    for (name, (_, svc_rev)) in with_revs
        .iter()
        .filter(|(n, _)| !spec.services.contains_key(*n))
    {
        guards.push(Compare::unchanged_since(
            keys::service(&stack, name),
            *svc_rev,
        ));
        ops.push(Op::delete(keys::service(&stack, name)));
    }
    if let Some(id) = &deployment_id {
        ops.extend(supersede(m, prev).await?);
        let d = Deployment {
            id: id.clone(),
            stack: stack.clone(),
            revision,
            state: DeploymentState::InProgress,
            message: None,
            services: changed
                .iter()
                .map(|c| ServiceProgress {
                    service: c.service.clone(),
                    desired: spec
                        .services
                        .get(&c.service)
                        .map(|s| s.deploy.replicas)
                        .unwrap_or(0),
                    updated: 0,
                    ready: 0,
                    error: None,
                    note: None,
                    instances: Vec::new(),
                })
                .collect(),
            created_at: now,
            updated_at: now,
        };
        ops.push(Op::put(keys::deployment(id), encode(&d)));
    }
    let record = StackRecord {
        name: stack.clone(),
        spec,
        revision,
        updated_at: now,
        last_deployment: deployment_id
            .clone()
            .or_else(|| prev.and_then(|p| p.last_deployment.clone())),
        removing: None,
    };
    ops.push(Op::put(keys::stack(&stack), encode(&record)));
    let txn = Txn::new().when(guards).then(ops);
    let resp = m.mutate(actor, "stack.deploy", &stack, now, txn).await?;
    if !resp.succeeded {
        tracing::debug!(%stack, attempt, "a record the deploy rewrites changed meanwhile; again");
        return Ok(None);
    }
    Ok(Some(DeployResponse {
        deployment_id,
        revision,
        diff,
    }))
}

/// Ops that mark the stack's running deployment as superseded by a new one.
async fn supersede(m: &Master, prev: Option<&StackRecord>) -> Result<Vec<Op>, Error> {
    let Some(id) = prev.and_then(|p| p.last_deployment.as_ref()) else {
        return Ok(vec![]);
    };
    match m.deployment(id).await? {
        Some(mut d) if d.state == DeploymentState::InProgress => {
            d.state = DeploymentState::Superseded;
            d.updated_at = now_ms();
            Ok(vec![Op::put(keys::deployment(id), encode(&d))])
        }
        _ => Ok(vec![]),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
struct RemoveQuery {
    /// Also remove the stack's named volumes.
    #[serde(default)]
    volumes: bool,
}

#[utoipa::path(delete, path = "/v1/stacks/{stack}", params(("stack" = String, Path), RemoveQuery),
    responses((status = 200, body = OperationResponse), (status = 404, body = ApiError)))]
async fn remove_stack(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(stack): Path<String>,
    Query(q): Query<RemoveQuery>,
) -> ApiResult<OperationResponse> {
    let (mut rec, rev) = m
        .stack(&stack)
        .await?
        .ok_or_else(|| not_found_stack(&stack))?;
    let now = now_ms();
    let removal = Removal {
        volumes: q.volumes || rec.removing.as_ref().is_some_and(|r| r.volumes),
    };
    rec.removing = Some(removal.clone());
    rec.updated_at = now;
    let mut ops = supersede(&m, Some(&rec)).await?;
    ops.push(Op::put(keys::stack(&stack), encode(&rec)));
    ops.push(Op::put(keys::purge(&stack), encode(&removal)));
    let txn = Txn::new()
        .when([Compare::unchanged_since(keys::stack(&stack), rev)])
        .then(ops);
    if !m
        .mutate(&actor, "stack.remove", &stack, now, txn)
        .await?
        .succeeded
    {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("stack {stack} changed meanwhile"),
        )
        .hint("run the command again"));
    }
    m.hub.nudge();
    Ok(Json(OperationResponse {
        deployment_id: None,
    }))
}

/// Instance records joined with what agents report about them.
async fn instance_infos(m: &Master, prefix: &str) -> Result<Vec<InstanceInfo>, Error> {
    let insts = m.instances(prefix).await?;
    let reports = m.reports().await?;
    Ok(insts.iter().map(|i| instance_info(i, &reports)).collect())
}

fn instance_info(i: &InstanceRecord, reports: &BTreeMap<String, InstanceReport>) -> InstanceInfo {
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
async fn stack_instances(
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

fn ports(spec: &ServiceSpec) -> Vec<String> {
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

fn service_summary(
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
fn summary_of<'r>(
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
struct ServicesQuery {
    /// Only services of this stack.
    stack: Option<String>,
}

#[utoipa::path(get, path = "/v1/services", params(ServicesQuery), responses((status = 200, body = [ServiceSummary])))]
async fn list_services(
    State(m): State<Master>,
    Query(q): Query<ServicesQuery>,
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
        .filter(|s| q.stack.as_ref().is_none_or(|st| &s.stack == st))
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
async fn get_service(
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
async fn service_instances(
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
async fn service_operation(
    m: &Master,
    actor: &Actor,
    action: &str,
    stack: &str,
    service: &str,
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
    let d = Deployment {
        id: id.clone(),
        stack: stack.to_string(),
        revision: st.revision,
        state: DeploymentState::InProgress,
        message: None,
        services: vec![ServiceProgress {
            service: service.to_string(),
            desired: s.replicas,
            updated: 0,
            ready: 0,
            error: None,
            note: None,
            instances: Vec::new(),
        }],
        created_at: now,
        updated_at: now,
    };
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
    if !m
        .mutate(actor, action, &format!("{stack}/{service}"), now, txn)
        .await?
        .succeeded
    {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("service {service} changed meanwhile"),
        )
        .hint("run the command again"));
    }
    m.hub.nudge();
    Ok(Json(OperationResponse {
        deployment_id: Some(id),
    }))
}

#[utoipa::path(post, path = "/v1/services/{stack}/{service}/scale", params(("stack" = String, Path), ("service" = String, Path)),
    request_body = ScaleRequest, responses((status = 200, body = OperationResponse), (status = 404, body = ApiError)))]
async fn scale(
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
async fn restart(
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

#[utoipa::path(post, path = "/v1/services/{stack}/{service}/rollback", params(("stack" = String, Path), ("service" = String, Path)),
    responses((status = 200, body = OperationResponse), (status = 404, body = ApiError),
              (status = 409, body = ApiError, description = "the service has no previous spec")))]
async fn rollback(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path((stack, service)): Path<(String, String)>,
) -> ApiResult<OperationResponse> {
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

#[utoipa::path(post, path = "/v1/services/{stack}/{service}/rebalance", params(("stack" = String, Path), ("service" = String, Path)),
    responses((status = 200, body = OperationResponse), (status = 404, body = ApiError)))]
async fn rebalance(
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

#[derive(Deserialize, utoipa::IntoParams)]
struct LogsQuery {
    /// Keep streaming new lines.
    #[serde(default)]
    follow: bool,
    /// Only the last N lines of each instance.
    tail: Option<u64>,
}

#[utoipa::path(get, path = "/v1/services/{stack}/{service}/logs", params(("stack" = String, Path), ("service" = String, Path), LogsQuery),
    responses((status = 200, description = "newline-delimited JSON LogLine objects", content_type = "application/x-ndjson", body = LogLine)))]
async fn logs(
    State(m): State<Master>,
    Path((stack, service)): Path<(String, String)>,
    Query(q): Query<LogsQuery>,
) -> Result<Response, ApiFailure> {
    m.service(&stack, &service)
        .await?
        .ok_or_else(|| not_found_service(&stack, &service))?;
    let insts = m
        .instances(&keys::instances_of_service(&stack, &service))
        .await?;
    let mut streams = Vec::new();
    for inst in insts {
        let Some(link) = m.hub.link(&inst.node) else {
            continue;
        };
        let id = inst.id();
        match link.logs(&id, q.follow, q.tail).await {
            Ok(s) => streams.push(
                s.map(move |r| match r {
                    Ok((stream, line)) => {
                        let mut bytes = serde_json::to_vec(&LogLine {
                            instance: id.clone(),
                            stream,
                            line,
                        })
                        .unwrap_or_default();
                        bytes.push(b'\n');
                        Ok::<_, std::io::Error>(bytes)
                    }
                    Err(e) => Err(std::io::Error::other(e)),
                })
                .boxed(),
            ),
            Err(e) => tracing::debug!(instance = %id, error = %e, "no logs"),
        }
    }
    let body = Body::from_stream(futures::stream::select_all(streams));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// Long-polling a deployment: `?after=UPDATED_AT&wait_ms=N` answers as soon as the deployment
/// changed after `after` (its `updated_at`) or ended, or after `wait_ms` (at most 30 s) with it
/// as it is. Without them it answers at once.
#[derive(Deserialize, utoipa::IntoParams)]
struct WaitQuery {
    /// The `updated_at` the caller has seen.
    after: Option<u64>,
    /// How long to wait for a change, in milliseconds (at most 30,000).
    wait_ms: Option<u64>,
}

/// The longest a long-poll waits.
const MAX_WAIT_MS: u64 = 30_000;

#[utoipa::path(get, path = "/v1/deployments/{id}", params(("id" = String, Path), WaitQuery),
    responses((status = 200, body = Deployment), (status = 404, body = ApiError)))]
async fn get_deployment(
    State(m): State<Master>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Deployment> {
    let not_found = || -> ApiFailure {
        Error::NotFound {
            what: format!("deployment {id}"),
            hint: None,
        }
        .into()
    };
    let key = keys::deployment(&id);
    // The record now, and the revision it was written at.
    let fetch = || async {
        let kv = m
            .store
            .get(&key)
            .await
            .map_err(Error::from)?
            .ok_or_else(not_found)?;
        let d: Deployment = crate::model::decode(&key, &kv.value)?;
        Ok::<_, ApiFailure>((kv.mod_revision, d))
    };
    let (rev, mut d) = fetch().await?;
    let (Some(after), Some(wait)) = (q.after, q.wait_ms) else {
        return Ok(Json(d));
    };
    let answers = |d: &Deployment| d.updated_at > after || d.state != DeploymentState::InProgress;
    if answers(&d) {
        return Ok(Json(d));
    }
    // Wait for a write of the record that moves `updated_at` on or ends it: a write can also
    // land in the same millisecond, or change nothing the caller sees.
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(wait.min(MAX_WAIT_MS));
    let mut changes = m.store.watch(&key, rev + 1).await.map_err(Error::from)?;
    // Until timed out, or the watch ended: then the record as it is now.
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, changes.next()).await {
        d = fetch().await?.1;
        if answers(&d) {
            return Ok(Json(d));
        }
    }
    Ok(Json(fetch().await?.1))
}

#[utoipa::path(post, path = "/v1/join-tokens", request_body = JoinTokenRequest,
    responses((status = 200, body = JoinTokenResponse), (status = 422, body = ApiError)))]
async fn create_join_token(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<JoinTokenRequest>,
) -> ApiResult<JoinTokenResponse> {
    const MAX_TTL_SECS: u64 = 365 * 24 * 3600;
    let ttl = req.ttl_secs.unwrap_or(3600);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("ttl_secs: {ttl} is not between 1 and {MAX_TTL_SECS}"),
        ));
    }
    let uses = req.uses.unwrap_or(1);
    let r = m
        .create_join_token(&actor, std::time::Duration::from_secs(ttl), uses)
        .await?;
    Ok(Json(r))
}

#[utoipa::path(get, path = "/v1/audit", responses((status = 200, body = [AuditRecord])))]
async fn list_audit(State(m): State<Master>) -> ApiResult<Vec<AuditRecord>> {
    let (kvs, _) = m.store.range(keys::AUDIT).await.map_err(Error::from)?;
    let mut out = Vec::new();
    for kv in kvs {
        let mut r: AuditRecord = crate::model::decode(&kv.key, &kv.value)?;
        r.id = kv.mod_revision;
        out.push(r);
    }
    Ok(Json(out))
}

impl Master {
    pub async fn deployment(&self, id: &str) -> Result<Option<Deployment>, Error> {
        let key = keys::deployment(id);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(crate::model::decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }
}
