//! The API of a locked master (`wharf server --autolock`, until `wharf unlock`): one route,
//! `POST /v1/unlock`, for callers on the master's own host; every other request gets 503 saying
//! what to do. Nothing else runs before the data key is open.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use tokio::sync::Notify;
use wharf_types::{OperationResponse, UnlockRequest};

use super::error::{ApiFailure, ApiJson, ApiResult};
use crate::Master;
use crate::mutate::Actor;

#[derive(Clone)]
struct Locked {
    m: Master,
    unlocked: Arc<Notify>,
    /// The address the API listens on: a caller from it is on this host too.
    host: IpAddr,
}

/// Serve the locked API on `listener` until the master is unlocked (`host`: the address the API
/// listens on).
pub async fn serve_locked(
    m: Master,
    listener: tokio::net::TcpListener,
    host: IpAddr,
) -> std::io::Result<()> {
    let unlocked = Arc::new(Notify::new());
    let app = locked_router(m, unlocked.clone(), host);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { unlocked.notified().await })
    .await
}

/// The locked API; `unlocked` is notified once the data key is open. It answers only callers on
/// this host (served with their address, as `serve_locked` does).
fn locked_router(m: Master, unlocked: Arc<Notify>, host: IpAddr) -> Router {
    Router::new()
        .route("/v1/unlock", post(unlock))
        .fallback(|| async {
            ApiFailure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "locked",
                "the master is locked (autolock): it serves nothing until it is unlocked",
            )
            .hint("run `wharf unlock` on the master's host; it asks for the unlock key")
            .into_response()
        })
        .with_state(Locked { m, unlocked, host })
}

async fn unlock(
    State(l): State<Locked>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<UnlockRequest>,
) -> ApiResult<OperationResponse> {
    let ip = peer.ip();
    if !(ip.is_loopback() || ip == l.host) {
        return Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            "not_local",
            format!("an unlock from {ip}: only callers on the master's host may unlock it"),
        )
        .hint("run `wharf unlock` on the master's host"));
    }
    let user_agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(200).collect());
    let actor = Actor {
        name: "unlock".into(),
        source: Some(ip.to_string()),
        user_agent,
        request_id: Some(crate::new_id("req-")),
        ..Actor::default()
    };
    super::admin::budgeted(&l.m, Some(ip), "failed unlocks", async {
        l.m.unlock_keys(&actor, &req.key.0).await?;
        l.unlocked.notify_one();
        Ok(OperationResponse {
            deployment_id: None,
        })
    })
    .await
}
