//! Cluster administration: join tokens for new nodes, API tokens, and the audit trail.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use wharf_types::*;

use super::error::{ApiFailure, ApiJson, ApiResult};
use crate::model::keys;
use crate::mutate::Actor;
use crate::{Error, Master};

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

#[utoipa::path(get, path = "/v1/audit", responses((status = 200, body = [AuditRecord])))]
pub(crate) async fn list_audit(State(m): State<Master>) -> ApiResult<Vec<AuditRecord>> {
    let (kvs, _) = m.store.range(keys::AUDIT).await.map_err(Error::from)?;
    let mut out = Vec::new();
    for kv in kvs {
        let mut r: AuditRecord = crate::model::decode(&kv.key, &kv.value)?;
        r.id = kv.mod_revision;
        out.push(r);
    }
    Ok(Json(out))
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
