//! A bad query parameter is a 400 `ApiError` (JSON, naming the parameter, with a hint), as every
//! other bad input of the API, and changes nothing.

mod common;

use std::sync::Arc;

use axum::http::StatusCode;
use common::{call_json, token};
use wharf_master::Master;
use wharf_store::SqliteStore;
use wharf_types::{ApiError, Role};

#[tokio::test]
async fn bad_query_parameters_are_api_errors_naming_the_parameter() {
    let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let admin = token(&m, "ci", Role::Admin, &[]).await;
    let spec =
        serde_json::json!({"spec": {"name": "shop", "services": {"web": {"image": "nginx"}}}});
    assert_eq!(
        call_json(&m, "PUT", "/v1/stacks/shop", &admin, &spec)
            .await
            .0,
        StatusCode::OK
    );
    for (method, path, param) in [
        ("POST", "/v1/services/shop/web/rollback?to=-1", "to"),
        (
            "POST",
            "/v1/services/shop/web/rollback?to=99999999999999999999999",
            "to",
        ),
        (
            "GET",
            "/v1/deployments?limit=999999999999999999999",
            "limit",
        ),
        ("GET", "/v1/services/shop/web/logs?since=yesterday", "since"),
        (
            "GET",
            "/v1/services?stack=shop&x=1&stack=a&stack=b",
            "stack",
        ),
        ("DELETE", "/v1/stacks/shop?volumes=perhaps", "volumes"),
    ] {
        let (status, body) = call_json(&m, method, path, &admin, &()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}");
        let e: ApiError = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: not an ApiError ({e}): {body:?}"));
        assert!(
            e.message.contains(param) && e.hint.is_some(),
            "{method} {path}: {e:?}"
        );
    }
    // The stack is still there: nothing changed.
    assert_eq!(
        call_json(&m, "GET", "/v1/stacks/shop", &admin, &()).await.0,
        StatusCode::OK
    );
}
