//! `/v1/hooks`: webhooks. Create (the secret shown once), list, remove, the delivery log of an
//! outgoing hook, and `POST /v1/hooks/{id}`, where a git host's push arrives: authenticated by
//! its signature under the hook's secret (no token), refused (401) and audited when it does not
//! check out; a push to the hook's ref deploys its stack again.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use wharf_store::{Compare, Op, Txn};
use wharf_types::*;

use super::deployments::supersede;
use super::error::{ApiFailure, ApiJson, ApiResult, not_found_stack};
use super::stacks::DEPLOY_ATTEMPTS;
use crate::hooks::{self, DeliveryRecord, HookKind, HookRecord};
use crate::model::{encode, keys};
use crate::mutate::Actor;
use crate::{Error, Master, new_id, now_ms};

/// Largest push payload read (GitHub caps theirs at 25 MB; a push's summary is far smaller).
const MAX_PUSH_BYTES: usize = super::MAX_BODY_BYTES;

fn not_found_hook(id: &str) -> Error {
    Error::NotFound {
        what: format!("hook {id}"),
        hint: Some("list hooks with `wharf hook ls`".into()),
    }
}

fn invalid(field: &str, message: impl Into<String>, hint: &str) -> ApiFailure {
    let mut f = ApiFailure::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid",
        format!("{field}: {}", message.into()),
    )
    .hint(hint);
    f.1.location = Some(field.to_string());
    f
}

/// The hook a request describes: incoming (`stack`) or outgoing (`url`), checked.
async fn kind_of(m: &Master, req: &HookRequest) -> Result<HookKind, ApiFailure> {
    match (&req.stack, &req.url) {
        (Some(stack), None) => {
            m.stack(stack)
                .await?
                .ok_or_else(|| not_found_stack(stack))?;
            let git_ref = req.git_ref.clone().unwrap_or(hooks::DEFAULT_REF.into());
            if git_ref.is_empty() || git_ref.len() > 256 {
                return Err(invalid(
                    "ref",
                    "a ref filter is 1 to 256 characters",
                    "e.g. refs/heads/main",
                ));
            }
            Ok(HookKind::Incoming {
                stack: stack.clone(),
                git_ref,
                provider: req.provider.unwrap_or_default(),
            })
        }
        (None, Some(url)) => {
            hooks::check_url(url)
                .map_err(|e| invalid("url", e, "e.g. https://ci.example.com/wharf"))?;
            hooks::check_events(&req.events).map_err(|e| {
                invalid("events", e, "e.g. --events deploy.succeeded,deploy.failed")
            })?;
            if req.git_ref.is_some() || req.provider.is_some() {
                return Err(invalid(
                    "ref",
                    "ref and provider are for incoming hooks (--stack)",
                    "leave them out of an outgoing hook",
                ));
            }
            Ok(HookKind::Outgoing {
                url: url.clone(),
                events: req.events.clone(),
            })
        }
        _ => Err(invalid(
            "stack",
            "give either stack (an incoming hook) or url (an outgoing one)",
            "`wharf hook create --stack S` or `wharf hook create --url URL --events ...`",
        )),
    }
}

#[utoipa::path(post, path = "/v1/hooks", request_body = HookRequest,
    responses((status = 200, body = HookCreated, description = "The hook, with its secret: shown only this once."),
        (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub(crate) async fn create_hook(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<HookRequest>,
) -> ApiResult<HookCreated> {
    let kind = kind_of(&m, &req).await?;
    let id = new_id("h-");
    let secret = hooks::new_secret();
    let now = now_ms();
    let record = HookRecord {
        id: id.clone(),
        kind,
        secret: m
            .sealer()
            .seal(&hooks::seal_item(&id), 1, secret.as_bytes()),
        created_at: now,
        created_by: actor.name.clone(),
    };
    let txn = Txn::new()
        .when([Compare::missing(keys::hook(&id))])
        .then([Op::put(keys::hook(&id), encode(&record))]);
    super::commit_guarded(&m, &actor, "hook.create", &id, now, txn, "the hook").await?;
    let info = record.info();
    let path = (info.direction == "incoming").then(|| format!("/v1/hooks/{id}"));
    Ok(Json(HookCreated { info, secret, path }))
}

#[utoipa::path(get, path = "/v1/hooks", responses((status = 200, body = [HookInfo])))]
pub(crate) async fn list_hooks(State(m): State<Master>) -> ApiResult<Vec<HookInfo>> {
    let (hooks, _) = m.decoded::<HookRecord>(keys::HOOKS).await?;
    Ok(Json(hooks.iter().map(|h| h.value.info()).collect()))
}

#[utoipa::path(delete, path = "/v1/hooks/{id}", params(("id" = String, Path)),
    responses((status = 200, body = OperationResponse), (status = 404, body = ApiError)))]
pub(crate) async fn remove_hook(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<OperationResponse> {
    let kv = m
        .store
        .get(&keys::hook(&id))
        .await
        .map_err(Error::from)?
        .ok_or_else(|| not_found_hook(&id))?;
    let (deliveries, _) = m
        .store
        .range(&keys::hook_deliveries(&id))
        .await
        .map_err(Error::from)?;
    let mut ops = vec![Op::delete(keys::hook(&id))];
    ops.extend(deliveries.into_iter().map(|d| Op::delete(d.key)));
    let txn = Txn::new()
        .when([Compare::unchanged_since(keys::hook(&id), kv.mod_revision)])
        .then(ops);
    super::commit_guarded(&m, &actor, "hook.remove", &id, now_ms(), txn, "the hook").await?;
    Ok(Json(OperationResponse {
        deployment_id: None,
    }))
}

#[utoipa::path(get, path = "/v1/hooks/{id}/deliveries", params(("id" = String, Path)),
    responses((status = 200, body = [HookDelivery], description = "The hook's last deliveries, oldest first, with their tries."),
        (status = 404, body = ApiError)))]
pub(crate) async fn hook_deliveries(
    State(m): State<Master>,
    Path(id): Path<String>,
) -> ApiResult<Vec<HookDelivery>> {
    if m.store
        .get(&keys::hook(&id))
        .await
        .map_err(Error::from)?
        .is_none()
    {
        return Err(not_found_hook(&id).into());
    }
    let (ds, _) = m
        .decoded::<DeliveryRecord>(&keys::hook_deliveries(&id))
        .await?;
    Ok(Json(ds.iter().map(|d| d.value.delivery.clone()).collect()))
}

/// Who a push is, for the audit trail: the hook, the sender's address and user agent, and the
/// provider's delivery id as the request id when it sent one.
fn push_actor(id: &str, req: &Request) -> Actor {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(200).collect::<String>())
    };
    Actor {
        name: format!("hook {id}"),
        role: Some(Role::Deployer),
        source: req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string()),
        user_agent: header("user-agent"),
        request_id: Some(
            header("x-request-id")
                .or_else(|| header("x-github-delivery"))
                .or_else(|| header("x-gitea-delivery"))
                .unwrap_or_else(|| new_id("req-")),
        ),
    }
}

fn header_of<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A push from a git host (GitHub, GitLab or Gitea push payload). Authenticated by the hook's
/// signature, not a token: `X-Hub-Signature-256: sha256=HEX` (GitHub), `X-Gitea-Signature: HEX`
/// (Gitea), HMAC-SHA256 of the body under the hook's secret, or `X-Gitlab-Token: SECRET`
/// (GitLab). A bad or missing signature is refused (401) and audited. A push to the hook's ref
/// deploys its stack again (200, with the deployment); anything else is acknowledged and
/// ignored (202, with why).
#[utoipa::path(post, path = "/v1/hooks/{id}", params(("id" = String, Path)), security(()),
    request_body(content = Object, description = "The git host's push payload (`ref`, `after`, the pusher)."),
    responses((status = 200, body = HookPushResponse, description = "The push matched: its stack is deploying."),
        (status = 202, body = HookPushResponse, description = "Acknowledged and ignored: another ref, or not a push."),
        (status = 400, body = ApiError),
        (status = 401, body = ApiError, description = "The signature does not check out under the hook's secret (audited)."),
        (status = 404, body = ApiError), (status = 409, body = ApiError),
        (status = 429, body = ApiError)))]
pub(crate) async fn push(
    State(m): State<Master>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiFailure> {
    let actor = push_actor(&id, &req);
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), MAX_PUSH_BYTES)
        .await
        .map_err(|e| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
    let record = match m.store.get(&keys::hook(&id)).await.map_err(Error::from)? {
        Some(kv) => crate::model::decode::<HookRecord>(&kv.key, &kv.value)?,
        None => return Err(not_found_hook(&id).into()),
    };
    let HookKind::Incoming {
        stack,
        git_ref,
        provider,
    } = &record.kind
    else {
        return Err(not_found_hook(&id).into());
    };
    let secret = m.sealer().open(&hooks::seal_item(&id), 1, &record.secret)?;
    let signature = header_of(&headers, hooks::signature_header(*provider));
    if let Err(why) = hooks::verify(*provider, &secret, signature, &body) {
        return Err(refuse(&m, &actor, stack, why).await);
    }
    let event = header_of(&headers, hooks::event_header(*provider));
    if !hooks::is_push(*provider, event) {
        let why = format!("not a push ({} event)", excerpt(event.unwrap_or("?"), 40));
        return Ok(accepted(ignored(why)));
    }
    let p = hooks::parse_push(*provider, &body)
        .map_err(|e| ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", e))?;
    let mut answer = ignored(String::new());
    answer.git_ref = Some(p.git_ref.clone());
    answer.commit = Some(p.commit.clone());
    answer.pusher = Some(p.pusher.clone());
    if !hooks::ref_matches(git_ref, &p.git_ref) {
        answer.ignored = Some(format!(
            "{} does not match the hook's ref {git_ref}",
            p.git_ref
        ));
        return Ok(accepted(answer));
    }
    let trigger = format!(
        "push of {} to {} by {} (hook {id})",
        p.commit, p.git_ref, p.pusher
    );
    let deployment = redeploy(&m, &actor, stack, &trigger).await?;
    answer.ignored = None;
    answer.deployment_id = Some(deployment);
    Ok(Json(answer).into_response())
}

fn accepted(r: HookPushResponse) -> Response {
    (StatusCode::ACCEPTED, Json(r)).into_response()
}

/// A push whose signature does not check out: audited as denied, 401 (429 once the address
/// has spent its budget of failures).
async fn refuse(m: &Master, actor: &Actor, stack: &str, why: String) -> ApiFailure {
    if let Err(e) = m
        .audit_refused(actor, "hook.push", stack, now_ms(), why.clone())
        .await
    {
        tracing::warn!(error = %e, "could not audit a refused webhook");
    }
    let ip = actor.source.as_deref().and_then(|s| s.parse().ok());
    if let Some(ip) = ip
        && !m.auth_failures.spend(ip, std::time::Instant::now())
    {
        return ApiFailure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            format!("too many failed authentications from {ip}"),
        )
        .hint("wait a few seconds, and check the hook's secret");
    }
    ApiFailure::new(StatusCode::UNAUTHORIZED, "unauthorized", why).hint(
        "sign the body with the secret `wharf hook create` printed (the git host's webhook secret)",
    )
}

/// An answer that deployed nothing, saying why.
fn ignored(why: String) -> HookPushResponse {
    HookPushResponse {
        deployment_id: None,
        ignored: Some(why),
        git_ref: None,
        commit: None,
        pusher: None,
    }
}

/// Deploy the stored spec of `stack` again as a new deployment that replaces every instance of
/// its (non-job) services, so each image reference is resolved again; the deployment and the
/// audit record say which push did it. One guarded transaction, rebuilt when a record moved.
async fn redeploy(
    m: &Master,
    actor: &Actor,
    stack: &str,
    trigger: &str,
) -> Result<String, ApiFailure> {
    for _ in 0..DEPLOY_ATTEMPTS {
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
        let now = now_ms();
        let id = new_id("d-");
        let mut guards = vec![Compare::unchanged_since(keys::stack(stack), st_rev)];
        let mut ops = supersede(m, Some(&st)).await?;
        let mut progress = Vec::new();
        for (name, (mut s, rev)) in m.services_with_revisions(stack).await? {
            if s.spec.is_job() {
                continue;
            }
            s.restart_nonce += 1;
            s.rollback = None;
            s.updated_at = now;
            progress.push(ServiceProgress::starting(&name, s.replicas));
            guards.push(Compare::unchanged_since(keys::service(stack, &name), rev));
            ops.push(Op::put(keys::service(stack, &name), encode(&s)));
        }
        let d = Deployment::started(
            (&id, stack, st.revision),
            progress,
            (&actor.name, Some(trigger.to_string())),
            now,
        );
        st.last_deployment = Some(id.clone());
        ops.push(Op::put(keys::stack(stack), encode(&st)));
        ops.push(Op::put(keys::deployment(&id), encode(&d)));
        let txn = Txn::new().when(guards).then(ops);
        let summary = trigger.to_string();
        if m.mutate_noted(actor, "stack.deploy", stack, now, summary, txn)
            .await?
            .succeeded
        {
            m.hub.nudge();
            return Ok(id);
        }
    }
    Err(ApiFailure::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("stack {stack} changed while deploying"),
    )
    .hint("the git host retries a failed delivery; or deploy with `wharf stack deploy`"))
}
