//! The HTTP API under `/v1`: JSON in and out, a bearer token on every route but `/healthz`, bodies
//! limited in size, and every error an `ApiError` with a code, a message and a hint.
//!
//! Handlers only read the store or commit one transaction through `Master::mutate`; the work itself
//! (placing, starting, stopping) is the controllers' job.

mod admin;
mod deployments;
mod error;
mod events;
mod exec;
mod git;
mod hooks;
mod jobs;
mod locked;
mod logs;
mod nodes;
mod objects;
mod registry;
pub(crate) mod services;
mod stacks;
pub mod tls;
mod ui;

pub use locked::serve_locked;
pub use stacks::roll_stale_consumers;

use std::net::SocketAddr;

use axum::RequestExt;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::extract::{MatchedPath, RawPathParams};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use utoipa::OpenApi;
use wharf_store::Txn;
use wharf_types::*;

use crate::mutate::Actor;
use crate::policy::{self, Caller};
use crate::{Master, now_ms};

pub use error::{ApiFailure, ApiJson};

/// Largest accepted request body: a stack spec of several hundred services fits easily.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Build the router. `/healthz` is open; everything else needs a valid bearer token.
pub fn router(m: Master) -> Router {
    if cfg!(feature = "bench-unsecured") {
        tracing::warn!(
            "this wharf was built with the bench-unsecured feature: no authentication, \
             authorisation or audit; for benchmarks only"
        );
    }
    let v1 = Router::new()
        .route("/v1/version", get(version))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/stacks", get(stacks::list_stacks))
        .route(
            "/v1/stacks/{stack}",
            get(stacks::get_stack)
                .put(stacks::deploy)
                .delete(stacks::remove_stack),
        )
        .route("/v1/stacks/{stack}/diff", post(stacks::diff))
        .route(
            "/v1/stacks/{stack}/instances",
            get(services::stack_instances),
        )
        .route("/v1/services", get(services::list_services))
        .route("/v1/services/{stack}/{service}", get(services::get_service))
        .route(
            "/v1/services/{stack}/{service}/instances",
            get(services::service_instances),
        )
        .route(
            "/v1/services/{stack}/{service}/scale",
            post(services::scale),
        )
        .route(
            "/v1/services/{stack}/{service}/restart",
            post(services::restart),
        )
        .route(
            "/v1/services/{stack}/{service}/rollback",
            post(services::rollback),
        )
        .route(
            "/v1/services/{stack}/{service}/update",
            post(services::update),
        )
        .route(
            "/v1/services/{stack}/{service}/history",
            get(services::history),
        )
        .route("/v1/services/{stack}/{service}/logs", get(services::logs))
        .merge(jobs::routes())
        .merge(exec_routes())
        .route("/v1/deployments", get(deployments::list_deployments))
        .route("/v1/events", get(events::events))
        .route("/v1/deployments/{id}", get(deployments::get_deployment))
        .route("/v1/nodes", get(nodes::list_nodes))
        .route("/v1/masters", get(nodes::list_masters))
        .route(
            "/v1/nodes/{node}",
            get(nodes::get_node).delete(nodes::remove_node),
        )
        .route("/v1/nodes/{node}/labels", post(nodes::label_node))
        .route("/v1/nodes/{node}/drain", post(nodes::drain_node))
        .route(
            "/v1/nodes/{node}/rotate-keys",
            post(nodes::rotate_node_keys),
        )
        .route("/v1/nodes/{node}/activate", post(nodes::activate_node))
        .route(
            "/v1/services/{stack}/{service}/rebalance",
            post(services::rebalance),
        )
        .route("/v1/join-tokens", post(admin::create_join_token))
        .route("/v1/audit", get(admin::list_audit))
        .route("/v1/audit/verify", get(admin::verify_audit))
        .route(
            "/v1/tokens",
            get(admin::list_tokens).post(admin::create_token),
        )
        .route("/v1/tokens/{name}", delete(admin::revoke_token))
        .route("/v1/users", get(admin::list_users).post(admin::add_user))
        .route("/v1/users/{name}", delete(admin::remove_user))
        .route("/v1/users/{name}/password", post(admin::set_password))
        .route("/v1/me/password", post(admin::change_own_password))
        .route("/v1/keys/rotate", post(admin::rotate_keys))
        .route("/v1/policy", get(admin::get_policy))
        .route(
            "/v1/scan/db",
            get(admin::advisory_db).post(admin::import_advisories),
        )
        .route("/v1/images/scan", post(admin::scan_image))
        .route("/v1/images", get(admin::list_images))
        .route("/v1/secrets", get(objects::list_secrets))
        .route(
            "/v1/secrets/{name}",
            get(objects::inspect_secret)
                .put(objects::put_secret)
                .delete(objects::remove_secret),
        )
        .route("/metrics", get(metrics))
        .merge(hook_routes())
        .route("/v1/configs", get(objects::list_configs))
        .route(
            "/v1/configs/{name}",
            get(objects::inspect_config)
                .put(objects::put_config)
                .delete(objects::remove_config),
        )
        .fallback(not_found)
        // Outermost last: authenticate, then authorise against the policy table.
        .route_layer(middleware::from_fn_with_state(m.clone(), authorize))
        .route_layer(middleware::from_fn_with_state(m.clone(), authenticate));
    public_routes()
        .merge(v1)
        // Innermost of the outer layers, outermost of the routes': sees the matched route.
        .route_layer(middleware::from_fn(crate::metrics::track))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(m.clone(), stale_warning))
        .layer(middleware::from_fn(access_log))
        .with_state(m)
}

/// The routes served without a token: each authenticates its caller itself, or needs none.
fn public_routes() -> Router<Master> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/login", post(admin::login))
        // A git host's push: authenticated by its signature under the hook's secret.
        .route("/v1/hooks/{id}", post(hooks::push))
        // The dashboard: its pages authenticate by the session cookie themselves.
        .route("/ui", get(ui::overview))
        .route("/ui/login", get(ui::login_page).post(ui::login))
        .route("/ui/logout", post(ui::logout))
        .route("/ui/stacks/{stack}", get(ui::stack))
        // Docker's Basic authentication: the registry authorises each request itself.
        .merge(registry::routes())
        // git's Basic authentication, as the registry's: the git routes authorise themselves.
        .merge(git::routes())
}

/// The routes of `exec.rs`: commands run in instances, and their resource usage; and the
/// registry's collection (`registry.rs`).
fn exec_routes() -> Router<Master> {
    Router::new()
        .route("/v1/registry/gc", post(registry::gc))
        .route("/v1/services/{stack}/{service}/exec", get(exec::exec))
        .route(
            "/v1/services/{stack}/{service}/stats",
            get(exec::service_stats),
        )
        .route("/v1/stats", get(exec::all_stats))
}

/// The routes of `hooks.rs` that need a token (a push is authenticated by its signature).
fn hook_routes() -> Router<Master> {
    Router::new()
        .route("/v1/hooks", get(hooks::list_hooks).post(hooks::create_hook))
        .route("/v1/hooks/{id}", delete(hooks::remove_hook))
        .route("/v1/hooks/{id}/deliveries", get(hooks::hook_deliveries))
}

/// What every answer carries while the store cannot be read (etcd without a quorum): it came
/// from this master's copy, which may be behind.
pub const STALE_WARNING: &str = "199 wharf \"the cluster store has no quorum: this answer comes from this master's copy and may be behind\"";

/// Say so on every answer while reads may be stale (`CachedStore::is_stale`).
async fn stale_warning(State(m): State<Master>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if m.cache.is_stale() {
        resp.headers_mut().insert(
            axum::http::header::WARNING,
            axum::http::HeaderValue::from_static(STALE_WARNING),
        );
    }
    resp
}

/// Commit a guarded change through `Master::mutate` (with its audit record): a guard that no
/// longer holds (`what` changed between the read and the write) is a conflict, and the user
/// runs the command again.
pub(super) async fn commit_guarded(
    m: &Master,
    actor: &Actor,
    action: &str,
    target: &str,
    now: u64,
    txn: Txn,
    what: &str,
) -> Result<(), ApiFailure> {
    if m.mutate(actor, action, target, now, txn).await?.succeeded {
        return Ok(());
    }
    Err(ApiFailure::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("{what} changed meanwhile"),
    )
    .hint("run the command again"))
}

/// Serve the API on an already-bound listener (bind first, so startup errors surface at once).
pub async fn serve(m: Master, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(m).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// Serve the API over TLS with `config` (when it listens beyond loopback).
pub async fn serve_tls(
    m: Master,
    listener: tokio::net::TcpListener,
    config: std::sync::Arc<wharf_link::rustls::ServerConfig>,
) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    // Handlers read the client's address as over plain TCP.
    let app = router(m).layer(middleware::map_request(|mut req: Request| async move {
        if let Some(&ConnectInfo(tls::TlsPeer(peer))) = req.extensions().get() {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        req
    }));
    axum::serve(
        tls::TlsListener::new(listener, config)?,
        app.into_make_service_with_connect_info::<tls::TlsPeer>(),
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
    if cfg!(feature = "bench-unsecured") {
        // A benchmark's second binary: everybody is an administrator.
        let caller = Caller::admin("bench-unsecured");
        let actor = actor_of(&req, &caller);
        req.extensions_mut().insert(actor);
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let source = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let unauthorized = |msg: &str| {
        if let Some(ip) = source
            && !m.auth_failures.spend(ip, std::time::Instant::now())
        {
            return ApiFailure::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_failures",
                format!("too many failed authentications from {ip}"),
            )
            .hint("wait a few seconds, and check the token (`wharf context`)")
            .into_response();
        }
        ApiFailure::new(StatusCode::UNAUTHORIZED, "unauthorized", msg)
            .hint("send Authorization: Bearer <token>; `wharf up` writes an admin token to the CLI context")
            .into_response()
    };
    // The dashboard's session cookie stands for a bearer token; a change made with it must
    // carry the dashboard's header, which another site's page cannot send (no CORS here).
    let cookie = token
        .is_none()
        .then(|| ui::session_token(req.headers()))
        .flatten();
    if cookie.is_some()
        && !matches!(req.method().as_str(), "GET" | "HEAD")
        && !req.headers().contains_key(ui::UI_HEADER)
    {
        return ApiFailure::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a change made with the dashboard's session cookie needs the x-wharf-ui header",
        )
        .hint("scripts send Authorization: Bearer <token> instead")
        .into_response();
    }
    let Some(token) = token.map(str::to_string).or(cookie) else {
        return unauthorized("missing bearer token");
    };
    let token = token.as_str();
    match m.authenticate(token).await {
        Ok(Ok(caller)) => {
            let actor = actor_of(&req, &caller);
            req.extensions_mut().insert(actor);
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Ok(Err(crate::auth::Refused::Unknown)) => unauthorized("invalid token"),
        Ok(Err(crate::auth::Refused::Expired)) => unauthorized("the token has expired"),
        Err(e) => ApiFailure::from(e).into_response(),
    }
}

/// The caller as the audit trail records it: name and role, the client's address and user agent,
/// and the request id (the client's `x-request-id`, else a new one).
fn actor_of(req: &Request, caller: &Caller) -> Actor {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(200).collect::<String>())
    };
    let source = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    Actor {
        name: caller.name.clone(),
        role: Some(caller.role),
        source,
        user_agent: header("user-agent"),
        request_id: Some(header("x-request-id").unwrap_or_else(|| crate::new_id("req-"))),
    }
}

/// Decide the request against `policy::OPERATIONS` (an operation without a row is refused to
/// everybody). A refusal is 403 naming the missing permission or the stack outside the scope,
/// with the caller's role and scope, and leaves an audit record.
async fn authorize(State(m): State<Master>, mut req: Request, next: Next) -> Response {
    if cfg!(feature = "bench-unsecured") {
        return next.run(req).await;
    }
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "not authenticated",
        )
        .into_response();
    };
    let stack = match req.extract_parts::<RawPathParams>().await {
        Ok(params) => params
            .iter()
            .find(|(k, _)| *k == "stack")
            .map(|(_, v)| v.to_string()),
        Err(_) => None,
    };
    let decision = match policy::operation(&method, &route) {
        Some(op) => policy::decide(&caller, op, stack.as_deref()),
        None => Err(policy::Denial {
            message: format!("{method} {route} has no entry in the policy table"),
            hint: "this is a bug in Wharf: every operation needs a policy row".into(),
        }),
    };
    match decision {
        Ok(()) => next.run(req).await,
        Err(denial) => {
            let target = stack.unwrap_or_else(|| req.uri().path().to_string());
            let action = format!("{method} {route}");
            let actor = req
                .extensions()
                .get::<Actor>()
                .cloned()
                .unwrap_or_else(|| Actor::named(caller.name.clone()));
            let audit = m.audit_denied(&actor, &action, &target, now_ms());
            if let Err(e) = audit.await {
                tracing::warn!(error = %e, "could not audit a refused request");
            }
            ApiFailure::new(StatusCode::FORBIDDEN, "forbidden", denial.message)
                .hint(denial.hint)
                .into_response()
        }
    }
}

async fn not_found() -> ApiFailure {
    ApiFailure::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        .hint("see /v1/openapi.json")
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Wharf API", description = "Deploy and operate stacks of containers. Every endpoint but /healthz, /v1/login and a webhook's push (`POST /v1/hooks/{id}`, authenticated by its HMAC signature) needs `Authorization: Bearer <token>`."),
    paths(healthz, metrics, version, openapi, stacks::list_stacks, stacks::get_stack, stacks::deploy, stacks::remove_stack, stacks::diff, services::stack_instances, services::list_services,
          services::get_service, services::service_instances, services::scale, services::restart, services::rollback, services::update, services::history, services::rebalance, services::logs, deployments::list_deployments, deployments::get_deployment, exec::exec, exec::service_stats, exec::all_stats, events::events, jobs::list_jobs, jobs::get_job, jobs::run_job, admin::list_audit, admin::verify_audit,
          nodes::list_nodes, nodes::list_masters, nodes::get_node, nodes::label_node, nodes::drain_node, nodes::rotate_node_keys,
          nodes::activate_node, nodes::remove_node,
          admin::create_join_token, admin::list_tokens, admin::create_token, admin::revoke_token,
          admin::list_users, admin::add_user, admin::remove_user, admin::set_password, admin::change_own_password, admin::login,
          admin::rotate_keys, admin::get_policy, admin::advisory_db, admin::import_advisories, admin::scan_image, admin::list_images, objects::list_secrets, objects::inspect_secret, objects::put_secret, objects::remove_secret,
          objects::list_configs, objects::inspect_config, objects::put_config, objects::remove_config,
          hooks::create_hook, hooks::list_hooks, hooks::remove_hook, hooks::hook_deliveries, hooks::push, registry::gc),
    components(schemas(ApiError, StackSpec, ServiceSpec, DeployRequest, DeployResponse, StackDiff, StackSummary,
                        StackInfo, ServiceSummary, ServiceInfo, InstanceInfo, Deployment, ScaleRequest, ServiceUpdateRequest, RollbackQuery, SpecRevisionInfo,
                        OperationResponse, KeyRotation, InstanceProgress, NodeInfo, MastersStatus, MasterState, MasterInfo, StoreMember, NodeLabelsRequest, LogLine, Event, AuditRecord, VersionInfo,
                        JoinTokenRequest, JoinTokenResponse, Role, TokenRequest, TokenInfo, TokenCreated, AuditVerification,
                        Password, UserRequest, UserInfo, UserCreated, PasswordRequest, OwnPasswordRequest, LoginRequest, LoginResponse,
                        SecretRequest, SecretVersion, SecretInfo, ObjectSpec, ObjectKind, FileRef, InstanceStats, StatsResponse,
                        Hardening, Seccomp, Ulimit, TmpfsMount, UsernsMode, NetworkMode,
                        PolicyInfo, PolicyRuleInfo, PolicyRule, AdmissionPolicy, Allowances, StackAllowances,
                        JobInfo, JobRun, RunTask, RunState, RunTrigger, JobRunRequested, JobSchedule, Concurrency, DeployMode,
                        HookRequest, HookInfo, HookCreated, HookProvider, HookPushResponse, HookDelivery, DeliveryAttempt, RegistryGc)),
    modifiers(&BearerAuth, &Described),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

/// Every response described (OpenAPI requires it), and the answers every authenticated
/// operation may give (401 without a valid token, 403 outside its role or scope) on each.
struct Described;

impl utoipa::Modify for Described {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, ResponseBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        utoipa::openapi::ContentBuilder::new()
                            .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                                "ApiError",
                            ))))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                // `security(())` on the operation: served without a token.
                let public = op
                    .security
                    .as_ref()
                    .is_some_and(|s| s.iter().all(|r| r == &Default::default()));
                let responses = &mut op.responses.responses;
                if !public {
                    for (code, what) in [
                        (
                            "401",
                            "No valid token: send `Authorization: Bearer <token>` (`wharf login`, `wharf token create`).",
                        ),
                        (
                            "403",
                            "The token's role or stack scope does not allow this; the error names the missing permission.",
                        ),
                    ] {
                        responses
                            .entry(code.to_string())
                            .or_insert_with(|| error(what));
                    }
                }
                for (code, r) in responses.iter_mut() {
                    if let RefOr::T(r) = r
                        && r.description.is_empty()
                    {
                        r.description = status_description(code).to_string();
                    }
                }
            }
        }
    }
}

/// What a status code of this API means, for responses documented without words.
fn status_description(code: &str) -> &'static str {
    match code {
        "200" => "Success.",
        "201" => "Created.",
        "202" => "Accepted: carried out in the background.",
        "204" => "Done; no content.",
        "400" => "The request is malformed; the error says where.",
        "404" => "No such resource; the error names it.",
        "409" => {
            "Conflicts with the current state (a concurrent change, a stack being removed); the error says what to do."
        }
        "413" => "The body is larger than the limit.",
        "422" => "Invalid input; the error names the field, the value and a hint.",
        "429" => "Too many attempts from this address; retry later.",
        "503" => {
            "Not available now: the cluster store has no quorum, or this master is locked or not ready."
        }
        _ => "See the error's `code`, `message` and `hint`.",
    }
}

/// Prometheus metrics of this master (text format 0.0.4): a token that may read the cluster.
#[utoipa::path(get, path = "/metrics",
    responses((status = 200, description = "The metrics, in Prometheus' text format.", body = String, content_type = "text/plain")))]
async fn metrics(state: State<Master>) -> Response {
    crate::metrics::scrape(state).await
}

/// Liveness: answers `ok` without a token while the process serves.
#[utoipa::path(get, path = "/healthz", security(()),
    responses((status = 200, description = "The master process serves its API.", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

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
