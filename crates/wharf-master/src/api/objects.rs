//! `/v1/secrets` and `/v1/configs`: metadata and new versions (which roll the services that
//! mount them), never a value back.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use wharf_types::*;

use super::error::{ApiJson, ApiResult};
use crate::Master;
use crate::mutate::Actor;

async fn put(
    m: &Master,
    actor: &Actor,
    kind: ObjectKind,
    name: &str,
    req: &SecretRequest,
) -> ApiResult<SecretInfo> {
    let mut info = m.put_object(actor, kind, name, &req.value_base64).await?;
    info.rolled = super::stacks::roll_consumers(m, actor, kind, name).await?;
    Ok(Json(info))
}

async fn remove(
    m: &Master,
    actor: &Actor,
    kind: ObjectKind,
    name: &str,
) -> ApiResult<OperationResponse> {
    m.remove_object(actor, kind, name).await?;
    Ok(Json(OperationResponse {
        deployment_id: None,
    }))
}

#[utoipa::path(get, path = "/v1/secrets", responses((status = 200, body = [SecretInfo])))]
pub(crate) async fn list_secrets(State(m): State<Master>) -> ApiResult<Vec<SecretInfo>> {
    Ok(Json(m.list_objects(ObjectKind::Secret).await?))
}

#[utoipa::path(get, path = "/v1/secrets/{name}", params(("name" = String, Path)),
    responses((status = 200, body = SecretInfo), (status = 404, body = ApiError)))]
pub(crate) async fn inspect_secret(
    State(m): State<Master>,
    Path(name): Path<String>,
) -> ApiResult<SecretInfo> {
    Ok(Json(m.inspect_object(ObjectKind::Secret, &name).await?))
}

#[utoipa::path(put, path = "/v1/secrets/{name}", params(("name" = String, Path)), request_body = SecretRequest,
    responses((status = 200, body = SecretInfo), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub(crate) async fn put_secret(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SecretRequest>,
) -> ApiResult<SecretInfo> {
    put(&m, &actor, ObjectKind::Secret, &name, &req).await
}

#[utoipa::path(delete, path = "/v1/secrets/{name}", params(("name" = String, Path)),
    responses((status = 200, body = OperationResponse), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn remove_secret(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> ApiResult<OperationResponse> {
    remove(&m, &actor, ObjectKind::Secret, &name).await
}

#[utoipa::path(get, path = "/v1/configs", responses((status = 200, body = [SecretInfo])))]
pub(crate) async fn list_configs(State(m): State<Master>) -> ApiResult<Vec<SecretInfo>> {
    Ok(Json(m.list_objects(ObjectKind::Config).await?))
}

#[utoipa::path(get, path = "/v1/configs/{name}", params(("name" = String, Path)),
    responses((status = 200, body = SecretInfo), (status = 404, body = ApiError)))]
pub(crate) async fn inspect_config(
    State(m): State<Master>,
    Path(name): Path<String>,
) -> ApiResult<SecretInfo> {
    Ok(Json(m.inspect_object(ObjectKind::Config, &name).await?))
}

#[utoipa::path(put, path = "/v1/configs/{name}", params(("name" = String, Path)), request_body = SecretRequest,
    responses((status = 200, body = SecretInfo), (status = 409, body = ApiError), (status = 422, body = ApiError)))]
pub(crate) async fn put_config(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<SecretRequest>,
) -> ApiResult<SecretInfo> {
    put(&m, &actor, ObjectKind::Config, &name, &req).await
}

#[utoipa::path(delete, path = "/v1/configs/{name}", params(("name" = String, Path)),
    responses((status = 200, body = OperationResponse), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
pub(crate) async fn remove_config(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> ApiResult<OperationResponse> {
    remove(&m, &actor, ObjectKind::Config, &name).await
}
