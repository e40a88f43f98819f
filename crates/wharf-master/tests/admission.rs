//! What a deploy may ask of the nodes (issue 10, hardened edges): a build context must lie under
//! one of the master's build roots, so a client of the API cannot have a node pack `/etc` into
//! an image.

use std::sync::Arc;

mod common;

use axum::http::StatusCode;
use wharf_master::mutate::Actor;
use wharf_master::{Master, MasterConfig};
use wharf_store::SqliteStore;
use wharf_types::{BuildSpec, DeployRequest, ServiceSpec, StackSpec};

/// PUT the stack `shop` with one service built from `context`: the status and the body.
async fn deploy_built_from(m: &Master, token: &str, context: &str) -> (StatusCode, String) {
    let spec = StackSpec {
        name: "shop".into(),
        services: [(
            "web".to_string(),
            ServiceSpec {
                image: Some("shop-web:latest".into()),
                build: Some(BuildSpec {
                    context: context.into(),
                    ..BuildSpec::default()
                }),
                ..ServiceSpec::default()
            },
        )]
        .into(),
        ..StackSpec::default()
    };
    let (status, bytes) =
        common::call_json(m, "PUT", "/v1/stacks/shop", token, &DeployRequest::of(spec)).await;
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn build_contexts_outside_the_build_roots_are_refused() {
    let config = MasterConfig {
        build_roots: vec!["/srv/stacks".into()],
        ..MasterConfig::default()
    };
    let m = Master::with_config(Arc::new(SqliteStore::open_in_memory().unwrap()), config);
    let token = m
        .create_admin_token(&Actor::named("test"), "admin")
        .await
        .unwrap();
    for context in ["/etc", "/srv/stacks/../../etc", "/srv/stacksy"] {
        let (status, body) = deploy_built_from(&m, &token, context).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{context}: {body}"
        );
        assert!(
            body.contains("services.web.build.context") && body.contains("/srv/stacks"),
            "{context}: {body}"
        );
    }
    let (status, body) = deploy_built_from(&m, &token, "/srv/stacks/shop/web").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // A master without build roots allows no builds.
    let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
    let token = m
        .create_admin_token(&Actor::named("test"), "admin")
        .await
        .unwrap();
    let (status, body) = deploy_built_from(&m, &token, "/srv/stacks/shop/web").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.contains("allows no builds"), "{body}");
}
