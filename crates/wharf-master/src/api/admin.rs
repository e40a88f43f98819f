//! Cluster administration: join tokens for new nodes, API tokens, and the audit trail.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use wharf_types::*;

use super::error::{ApiFailure, ApiJson, ApiQuery, ApiResult};
use crate::Master;
use crate::mutate::Actor;
use crate::policy::Caller;

#[utoipa::path(post, path = "/v1/join-tokens", request_body = JoinTokenRequest,
    responses((status = 200, body = JoinTokenResponse), (status = 422, body = ApiError)))]
pub(crate) async fn create_join_token(
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

/// Which audit records to list.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Only records at or after this time (Unix ms).
    since: Option<u64>,
    /// Only records of this actor.
    actor: Option<String>,
    /// Only records about this stack (or its services).
    stack: Option<String>,
}

#[utoipa::path(get, path = "/v1/audit", params(AuditQuery), responses((status = 200, body = [AuditRecord])))]
pub(crate) async fn list_audit(
    State(m): State<Master>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Vec<AuditRecord>> {
    let about = |target: &str, stack: &str| {
        target == stack
            || target
                .strip_prefix(stack)
                .is_some_and(|r| r.starts_with('/'))
    };
    let out = m
        .audit_records()
        .await?
        .into_iter()
        .filter(|r| q.since.is_none_or(|t| r.at >= t))
        .filter(|r| q.actor.as_ref().is_none_or(|a| &r.actor == a))
        .filter(|r| q.stack.as_ref().is_none_or(|s| about(&r.target, s)))
        .collect();
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/audit/verify", responses((status = 200, body = AuditVerification)))]
pub(crate) async fn verify_audit(State(m): State<Master>) -> ApiResult<AuditVerification> {
    let records = m.audit_records().await?;
    let (head, _) = m.audit_head().await?;
    let broken = crate::audit::verify(&records, &head).err();
    Ok(Json(AuditVerification {
        records: records.len() as u64,
        head_id: head.seq,
        head_hash: head.hash,
        broken_at: broken.as_ref().map(|b| b.seq),
        problem: broken.map(|b| b.why),
    }))
}

#[utoipa::path(get, path = "/v1/tokens", responses((status = 200, body = [TokenInfo])))]
pub(crate) async fn list_tokens(State(m): State<Master>) -> ApiResult<Vec<TokenInfo>> {
    Ok(Json(m.list_tokens().await?))
}

#[utoipa::path(post, path = "/v1/tokens", request_body = TokenRequest,
    responses((status = 200, body = TokenCreated), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub(crate) async fn create_token(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> ApiResult<TokenCreated> {
    let (token, info) = m.create_token(&actor, &req).await?;
    Ok(Json(TokenCreated { token, info }))
}

#[utoipa::path(delete, path = "/v1/tokens/{name}", params(("name" = String, Path)),
    responses((status = 200, body = OperationResponse), (status = 404, body = ApiError)))]
pub(crate) async fn revoke_token(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> ApiResult<OperationResponse> {
    m.revoke_token(&actor, &name).await?;
    Ok(Json(OperationResponse {
        deployment_id: None,
    }))
}

#[utoipa::path(get, path = "/v1/users", responses((status = 200, body = [UserInfo])))]
pub(crate) async fn list_users(State(m): State<Master>) -> ApiResult<Vec<UserInfo>> {
    Ok(Json(m.list_users().await?))
}

#[utoipa::path(post, path = "/v1/users", request_body = UserRequest,
    responses((status = 200, body = UserCreated), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub(crate) async fn add_user(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<UserRequest>,
) -> ApiResult<UserCreated> {
    Ok(Json(m.add_user(&actor, &req).await?))
}

#[utoipa::path(delete, path = "/v1/users/{name}", params(("name" = String, Path)),
    responses((status = 200, body = OperationResponse), (status = 404, body = ApiError)))]
pub(crate) async fn remove_user(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> ApiResult<OperationResponse> {
    m.remove_user(&actor, &name).await?;
    Ok(Json(OperationResponse {
        deployment_id: None,
    }))
}

#[utoipa::path(post, path = "/v1/users/{name}/password", params(("name" = String, Path)), request_body = PasswordRequest,
    responses((status = 200, body = OperationResponse), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub(crate) async fn set_password(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PasswordRequest>,
) -> ApiResult<OperationResponse> {
    m.set_password(&actor, &name, &req.password).await?;
    Ok(Json(OperationResponse {
        deployment_id: None,
    }))
}

/// `POST /v1/me/password`: the caller's own password, from a user's session. A wrong current
/// password spends the address's failure budget, as a failed login does.
#[utoipa::path(post, path = "/v1/me/password", request_body = OwnPasswordRequest,
    responses((status = 200, body = OperationResponse), (status = 401, body = ApiError), (status = 422, body = ApiError), (status = 429, body = ApiError)))]
pub(crate) async fn change_own_password(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Extension(caller): Extension<crate::policy::Caller>,
    connect: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    ApiJson(req): ApiJson<OwnPasswordRequest>,
) -> ApiResult<OperationResponse> {
    let Some(user) = caller.user else {
        return Err(crate::Error::Invalid {
            message: format!(
                "{:?} is a machine token: it has no password to change",
                caller.name
            ),
            location: None,
            hint: Some(
                "log in as the user (`wharf login`), or have an administrator run `wharf user passwd NAME`"
                    .into(),
            ),
        }
        .into());
    };
    let source = connect.map(|Extension(c)| c.0.ip());
    budgeted(&m, source, "failed authentications", async {
        let session = caller.session.as_deref().unwrap_or_default();
        m.change_own_password(&actor, (&user, session), &req.current, &req.password)
            .await
            .map(|()| OperationResponse {
                deployment_id: None,
            })
    })
    .await
}

/// Run `check` (a password check) unless the address `source` spent its failure budget
/// (`auth::FailureBudget`; then 429 without checking); a refusal (401) spends from it.
pub(super) async fn budgeted<T>(
    m: &Master,
    source: Option<std::net::IpAddr>,
    what: &str,
    check: impl std::future::Future<Output = Result<T, crate::Error>>,
) -> ApiResult<T> {
    let now = std::time::Instant::now();
    if let Some(ip) = source
        && !m.auth_failures.has_left(ip, now)
    {
        return Err(ApiFailure::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            format!("too many {what} from {ip}"),
        )
        .hint("wait a few seconds before trying again"));
    }
    match check.await {
        Ok(r) => Ok(Json(r)),
        Err(e) => {
            if let (Some(ip), crate::Error::Unauthorized { .. }) = (source, &e) {
                m.auth_failures.spend(ip, now);
            }
            Err(e.into())
        }
    }
}

/// `POST /v1/login` needs no token: a user's password (or invitation) buys a session. Failures
/// spend the caller's address's budget (`auth::FailureBudget`); past it, 429 without checking.
#[utoipa::path(post, path = "/v1/login", request_body = LoginRequest, security(()),
    responses((status = 200, body = LoginResponse), (status = 401, body = ApiError), (status = 429, body = ApiError)))]
pub(crate) async fn login(
    State(m): State<Master>,
    connect: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<LoginResponse> {
    let source = connect.map(|Extension(c)| c.0.ip());
    let actor = Actor {
        name: req.user.clone(),
        source: source.map(|ip| ip.to_string()),
        ..Actor::default()
    };
    budgeted(&m, source, "failed logins", m.login(&actor, &req)).await
}

#[utoipa::path(post, path = "/v1/keys/rotate",
    responses((status = 200, body = KeyRotation), (status = 503, body = ApiError)))]
pub(crate) async fn rotate_keys(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<KeyRotation> {
    Ok(Json(m.rotate_keys(&actor).await?))
}

/// Add OSV advisories to the vulnerability database (`wharf scan db import DIR`); a bad file
/// changes nothing.
#[utoipa::path(post, path = "/v1/scan/db", request_body = AdvisoryImport,
    responses((status = 200, body = AdvisoryDbInfo), (status = 400, body = ApiError)))]
pub(crate) async fn import_advisories(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<AdvisoryImport>,
) -> ApiResult<AdvisoryDbInfo> {
    Ok(Json(m.import_advisories(&actor, &req.files).await?))
}

/// Scan an image: a node whose engine has it reads its packages, which are matched against the
/// vulnerability database (findings worst first).
#[utoipa::path(post, path = "/v1/images/scan", request_body = ImageScanRequest,
    responses((status = 200, body = ImageScan), (status = 404, body = ApiError), (status = 422, body = ApiError)))]
pub(crate) async fn scan_image(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<ImageScanRequest>,
) -> ApiResult<ImageScan> {
    // It has a node export the image: on the trail, as an exec is.
    let scan = m.scan_image(&req.image).await;
    let summary = match &scan {
        Ok(s) => format!(
            "{} findings, {} packages, on {}",
            s.findings.len(),
            s.packages,
            s.node
        ),
        Err(e) => format!("failed: {e}"),
    };
    let target = wharf_types::excerpt(&req.image, 200);
    m.audit_done(&actor, "image.scan", &target, crate::now_ms(), summary)
        .await?;
    Ok(Json(scan?))
}

/// The tags of the cluster's registry the caller's stacks may see, with their scans' counts.
#[utoipa::path(get, path = "/v1/images", responses((status = 200, body = Vec<ImageInfo>)))]
pub(crate) async fn list_images(
    State(m): State<Master>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Vec<ImageInfo>> {
    let all = m.registry_images().await?;
    Ok(Json(
        all.into_iter()
            .filter(|i| caller.sees(crate::registry::path::stack_of(&i.repository)))
            .collect(),
    ))
}

/// What the vulnerability database holds and when it was last imported into.
#[utoipa::path(get, path = "/v1/scan/db", responses((status = 200, body = AdvisoryDbInfo)))]
pub(crate) async fn advisory_db(State(m): State<Master>) -> ApiResult<AdvisoryDbInfo> {
    Ok(Json(m.advisory_db_info().await?))
}

/// The admission policy in force: where it came from, what it allows, and its rules.
#[utoipa::path(get, path = "/v1/policy", responses((status = 200, body = PolicyInfo)))]
pub(crate) async fn get_policy(State(m): State<Master>) -> Json<PolicyInfo> {
    Json(m.config.admission.info())
}
