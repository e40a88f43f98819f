//! The API's errors: `ApiFailure` (a status and an `ApiError` body), the master's `Error`s
//! mapped onto it, and `ApiJson` and `ApiQuery`, whose rejections are `ApiError`s too.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wharf_types::*;

use super::MAX_BODY_BYTES;
use crate::Error;

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
            Error::Unauthorized { hint, .. } => ApiFailure(
                StatusCode::UNAUTHORIZED,
                ApiError {
                    code: "unauthorized".into(),
                    message,
                    hint,
                    location: None,
                },
            ),
            Error::Store(wharf_store::StoreError::NoQuorum(detail)) => ApiFailure(
                StatusCode::SERVICE_UNAVAILABLE,
                ApiError {
                    code: "no_quorum".into(),
                    message: "the cluster store has no quorum: nothing was changed".into(),
                    hint: Some(format!(
                        "a majority of the etcd members must answer; bring the members back \
                         (`wharf master ls` shows which answer) and try again; running \
                         containers are not affected ({detail})"
                    )),
                    location: None,
                },
            ),
            Error::Store(wharf_store::StoreError::Fenced(_)) => {
                ApiFailure::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", message)
                    .hint("another master leads now; try again")
            }
            Error::Store(_) | Error::Corrupt(_) => {
                tracing::error!(error = %message, "internal error");
                ApiFailure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
                    .hint("see the server log")
            }
        }
    }
}

pub(crate) type ApiResult<T> = Result<Json<T>, ApiFailure>;

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

/// `axum::extract::Query`, whose rejection (a bad or out-of-range parameter) is a 400 `ApiError`
/// naming the parameter, with a hint, like every other error of the API.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for ApiQuery<T>
{
    type Rejection = ApiFailure;
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(rej) => Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                rej.body_text().replace(
                    "Failed to deserialize query string",
                    "invalid query parameter",
                ),
            )
            .hint("see the operation's parameters at /v1/openapi.json")),
        }
    }
}

pub(crate) fn json_rejection(rej: JsonRejection) -> ApiFailure {
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

pub(crate) fn not_found_stack(stack: &str) -> Error {
    Error::NotFound {
        what: format!("stack {stack}"),
        hint: Some("list stacks with `wharf stack ls`".into()),
    }
}

pub(crate) fn not_found_service(stack: &str, service: &str) -> Error {
    Error::NotFound {
        what: format!("service {service} in stack {stack}"),
        hint: Some("list services with `wharf service ls`".into()),
    }
}
