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

// ---------------------------------------------------------------- the admission policy (issue 12)

use std::path::Path;
use wharf_master::admission::Admission;
use wharf_types::{ApiError, PolicyInfo, PolicyRule};

/// A master whose admission policy is `policy` (a policy file's text; `None`: the defaults),
/// and an admin token.
async fn master_with(policy: Option<&str>) -> (Master, String) {
    let admission = match policy {
        Some(text) => Admission::parse(text, "policy.yaml").expect("a valid policy"),
        None => Admission::default(),
    };
    let config = MasterConfig {
        admission,
        ..MasterConfig::default()
    };
    let m = Master::with_config(Arc::new(SqliteStore::open_in_memory().unwrap()), config);
    let token = m
        .create_admin_token(&Actor::named("test"), "admin")
        .await
        .unwrap();
    (m, token)
}

/// Stack `name` with the service `web` (busybox) whose further keys are `body` (lines indented
/// by four), loaded as `stack.yml` the way the CLI loads it: the request carries where each
/// judged field was written.
fn request_for(name: &str, body: &str) -> DeployRequest {
    let src = format!("name: {name}\nservices:\n  web:\n    image: busybox\n{body}");
    let l = wharf_compose::load_str(
        &src,
        "stack.yml",
        Path::new("/srv/stacks"),
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{e}\n{src}"));
    DeployRequest {
        sources: l.sources,
        ..DeployRequest::of(l.spec)
    }
}

/// PUT the request: the status and the error, if any.
async fn put(m: &Master, token: &str, req: &DeployRequest) -> (StatusCode, Option<ApiError>) {
    let path = format!("/v1/stacks/{}", req.spec.name);
    let (status, bytes) = common::call_json(m, "PUT", &path, token, req).await;
    (
        status,
        serde_json::from_slice(&bytes)
            .ok()
            .filter(|_| !status.is_success()),
    )
}

/// One row per default rule: its name, what a stack file writes to break it (at line 5 on),
/// where the refusal must point, and the policy file that lets it through.
const RULES: &[(&str, &str, &str, &str)] = &[
    (
        "privileged",
        "    privileged: true\n",
        "stack.yml:5:5",
        "allow: {privileged: true}",
    ),
    (
        "host-bind-mount",
        "    volumes:\n      - /etc:/host/etc:ro\n",
        "stack.yml:6:9",
        "allow: {host_paths: [/etc]}",
    ),
    (
        "docker-socket",
        "    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n",
        "stack.yml:6:9",
        "allow: {docker_socket: true}",
    ),
    (
        "host-network",
        "    network_mode: host\n",
        "stack.yml:5:5",
        "allow: {host_network: true}",
    ),
    (
        "capabilities",
        "    cap_add: [CHOWN, NET_ADMIN]\n",
        "stack.yml:5:22",
        "allow: {capabilities: [NET_ADMIN]}",
    ),
    (
        "userns-host",
        "    userns_mode: host\n",
        "stack.yml:5:5",
        "allow: {userns_host: true}",
    ),
    (
        "unconfined-seccomp",
        "    security_opt: [seccomp=unconfined]\n",
        "stack.yml:5:5",
        "allow: {unconfined_seccomp: true}",
    ),
    (
        "unconfined-apparmor",
        "    security_opt: [apparmor=unconfined]\n",
        "stack.yml:5:5",
        "allow: {unconfined_apparmor: true}",
    ),
    (
        "devices",
        "    devices: [/dev/fuse]\n",
        "stack.yml:5:15",
        "allow: {devices: true}",
    ),
];

/// Every default rule refuses its stack at deploy with the rule's name, the field and where the
/// stack file says it, a hint naming the policy key; nothing is written, the refusal is
/// audited; the admin's allowance (for every stack, or for the stack by name) lets it through.
#[tokio::test]
async fn every_default_rule_refuses_with_its_location_and_the_admin_override_lets_it_through() {
    for (rule, body, at, allow) in RULES {
        let req = request_for("shop", body);
        let (m, token) = master_with(None).await;
        let (status, e) = put(&m, &token, &req).await;
        let e = e.unwrap_or_else(|| panic!("{rule}: not refused ({status})"));
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{rule}: {e:?}");
        assert_eq!(e.code, "policy_refused", "{rule}");
        assert_eq!(e.location.as_deref(), Some(*at), "{rule}: {e:?}");
        assert!(
            e.message.contains(&format!("(rule {rule}: "))
                && e.message.starts_with("services.web."),
            "{rule}: {}",
            e.message
        );
        let key = allow.trim_start_matches("allow: {").trim_end_matches('}');
        let hint = e.hint.unwrap_or_default();
        assert!(
            hint.contains(key) && hint.contains("--policy"),
            "{rule}: {hint}"
        );
        let (status, _) = common::call_json(&m, "GET", "/v1/stacks/shop", &token, &()).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{rule}: a refused deploy wrote the stack"
        );
        let last = m.audit_records().await.unwrap().pop().expect("audited");
        assert_eq!(
            (last.action.as_str(), last.outcome.as_str()),
            ("stack.deploy", "denied")
        );
        assert!(
            last.summary.as_deref().is_some_and(|s| s.contains(rule)),
            "{rule}: {last:?}"
        );
        // A preview is refused the same way.
        let (status, _) = common::call_json(&m, "POST", "/v1/stacks/shop/diff", &token, &req).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{rule}: diff");

        let (m, token) = master_with(Some(allow)).await;
        let (status, e) = put(&m, &token, &req).await;
        assert_eq!(status, StatusCode::OK, "{rule} allowed by {allow}: {e:?}");

        let per_stack = format!("stacks:\n  - names: [shop, 'shop-*']\n    {allow}\n");
        let (m, token) = master_with(Some(&per_stack)).await;
        let (status, e) = put(&m, &token, &req).await;
        assert_eq!(status, StatusCode::OK, "{rule} allowed for shop: {e:?}");
        let (status, _) = put(&m, &token, &request_for("other", body)).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{rule}: only shop is allowed"
        );
    }
}

/// The master judges the spec, not the client: a hand-made spec (no places) is refused all the
/// same, located by its field path; every refusal is listed; safe requests pass.
#[tokio::test]
async fn a_hand_made_spec_cannot_bypass_the_policy() {
    let (m, token) = master_with(Some("allow: {host_paths: [/srv/data]}\n")).await;
    let mut req = request_for(
        "shop",
        "    privileged: true\n    cap_add: [SYS_ADMIN]\n    volumes: [\"/srv/data/../../etc:/x\"]\n",
    );
    req.sources.clear();
    let (status, e) = put(&m, &token, &req).await;
    let e = e.expect("refused");
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(e.location.as_deref(), Some("services.web.privileged"));
    assert!(
        e.message
            .contains("services.web.cap_add[0]: cap_add SYS_ADMIN (rule capabilities)")
            && e.message.contains("a bind mount of /etc"),
        "{}",
        e.message
    );
    // A named volume the local driver binds to a host path is a bind mount too.
    let src = "name: shop\nservices:\n  web:\n    image: busybox\n    volumes: [\"etc:/x\"]\nvolumes:\n  etc:\n    driver_opts: {type: none, o: bind, device: /etc}\n";
    let l =
        wharf_compose::load_str(src, "stack.yml", Path::new("/srv"), &Default::default()).unwrap();
    let (status, e) = put(&m, &token, &DeployRequest::of(l.spec)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{e:?}");
    assert!(e.unwrap().message.contains("rule host-bind-mount"));

    let ok = request_for(
        "shop",
        "    cap_drop: [ALL]\n    cap_add: [NET_BIND_SERVICE]\n    read_only: true\n    security_opt: [no-new-privileges]\n    volumes: [\"/srv/data/app:/data\"]\n",
    );
    let (status, e) = put(&m, &token, &ok).await;
    assert_eq!(status, StatusCode::OK, "{e:?}");
}

/// `GET /v1/policy` shows the policy in force, its source and every rule with its key.
#[tokio::test]
async fn the_policy_is_shown_with_its_rules() {
    let (m, token) = master_with(Some(
        "allow: {capabilities: [NET_ADMIN]}\nstacks:\n  - names: [mon-*]\n    allow: {privileged: true}\n",
    ))
    .await;
    let (status, bytes) = common::call_json(&m, "GET", "/v1/policy", &token, &()).await;
    assert_eq!(status, StatusCode::OK);
    let info: PolicyInfo = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(info.source, "policy.yaml");
    assert_eq!(info.rules.len(), PolicyRule::ALL.len());
    let privileged = &info.rules[0];
    assert_eq!(
        (
            privileged.allowed.as_str(),
            privileged.stacks.as_slice(),
            privileged.allow_key.as_str()
        ),
        (
            "no",
            &["mon-*: yes".to_string()][..],
            "allow.privileged: true"
        )
    );
    let caps = info
        .rules
        .iter()
        .find(|r| r.rule.as_str() == "capabilities")
        .unwrap();
    assert_eq!(caps.allowed, "NET_ADMIN");
    assert!(info.safe_capabilities.contains(&"CHOWN".to_string()));
}
