//! Issue 12 (hardening keys and the admission policy), against the real engine: a service with
//! every hardening key runs in a container the engine created with each of them (inspected),
//! under a `wharf up --policy FILE` that allows what it asks for; the default-refused asks are
//! refused at deploy with `file:line:column`, the rule and the policy key. The rules themselves
//! are tested in process (`crates/wharf-master/tests/admission.rs`).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;

/// A seccomp profile that allows every call (the engine inspects as given).
const PROFILE: &str = "{\"defaultAction\": \"SCMP_ACT_ALLOW\"}\n";

fn hardened_stack(stack: &str, host_port: u16) -> String {
    format!(
        "name: {stack}
services:
  web:
    image: wharf-testapp:latest
{HEALTHCHECK}    cap_drop: [MKNOD]
    cap_add: [NET_ADMIN]
    read_only: true
    security_opt:
      - no-new-privileges:true
      - seccomp=seccomp.json
    sysctls:
      net.core.somaxconn: 1024
    ulimits:
      nofile: {{soft: 1024, hard: 2048}}
      nproc: 512
    tmpfs:
      - /tmp:size=16m,mode=1777,noexec
    pids_limit: 64
    init: true
  root:
    image: wharf-testapp:latest
    environment:
      PORT: \"{host_port}\"
    privileged: true
    userns_mode: host
    network_mode: host
"
    )
}

/// The engine's view of each hardening key, for every key a stack may set.
#[tokio::test(flavor = "multi_thread")]
async fn every_hardening_key_reaches_the_container() {
    testapp_image().await.expect("test image");
    let policy_dir = tempfile::tempdir().expect("temp dir");
    let policy = policy_dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "allow:\n  capabilities: [NET_ADMIN]\nstacks:\n  - names: ['harden-*']\n    allow: {privileged: true, userns_host: true, host_network: true}\n",
    )
    .unwrap();
    let mut w =
        Wharf::start_with_env(vec![("WHARF_POLICY".into(), utf8(&policy).to_string())]).await;
    let stack = unique_stack("harden");
    let dir = w.test_dir().join("stacks").join(&stack);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("seccomp.json"), PROFILE).unwrap();
    let file = w.stack_file(&stack, &hardened_stack(&stack, free_port()));
    w.deploy_detached(&file);
    w.wait_ready(&stack, "web", 1, Duration::from_secs(60))
        .await;
    // `root` need not start: an engine that itself runs without every capability (CI in a
    // container) cannot give a privileged container all of them ("unable to apply caps").
    // What the engine was told is what is checked.
    w.wait_containers(
        &stack,
        "both containers created",
        Duration::from_secs(30),
        |cs| cs.len() == 2,
    )
    .await;

    let docker = wharf_testkit::docker().await.expect("docker");
    let mut by_service = HashMap::new();
    for (name, id, _) in containers(&stack).await {
        let service = if name.contains("-web-") {
            "web"
        } else {
            "root"
        };
        let c = docker
            .inspect_container(
                &id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .expect("inspect");
        by_service.insert(service, c.host_config.expect("host config"));
    }
    let web = &by_service["web"];
    let caps = |v: &Option<Vec<String>>| -> Vec<String> {
        v.clone()
            .unwrap_or_default()
            .iter()
            .map(|c| c.trim_start_matches("CAP_").to_string())
            .collect()
    };
    assert_eq!(caps(&web.cap_add), ["NET_ADMIN"], "{web:?}");
    assert_eq!(caps(&web.cap_drop), ["MKNOD"]);
    assert_eq!(web.readonly_rootfs, Some(true));
    let opts = web.security_opt.clone().unwrap_or_default();
    assert_eq!(opts.len(), 2, "{opts:?}");
    assert_eq!(opts[0], "no-new-privileges");
    assert!(
        opts[1].starts_with("seccomp=") && opts[1].contains("SCMP_ACT_ALLOW"),
        "the profile's content, read by the CLI: {opts:?}"
    );
    let sysctls = web.sysctls.clone().unwrap_or_default();
    assert_eq!(
        sysctls.get("net.core.somaxconn").map(String::as_str),
        Some("1024")
    );
    let mut ulimits: Vec<(String, i64, i64)> = web
        .ulimits
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|u| {
            (
                u.name.unwrap_or_default(),
                u.soft.unwrap_or(0),
                u.hard.unwrap_or(0),
            )
        })
        .collect();
    ulimits.sort();
    assert_eq!(
        ulimits,
        [
            ("nofile".to_string(), 1024, 2048),
            ("nproc".to_string(), 512, 512)
        ]
    );
    let tmpfs = web.tmpfs.clone().unwrap_or_default();
    assert_eq!(
        tmpfs.get("/tmp").map(String::as_str),
        Some("size=16777216,mode=1777,noexec")
    );
    assert_eq!(web.pids_limit, Some(64));
    assert_eq!(web.init, Some(true));
    assert_eq!(web.privileged, Some(false));
    assert_eq!(
        web.network_mode.as_deref().map(|m| m == "host"),
        Some(false)
    );

    let root = &by_service["root"];
    assert_eq!(root.privileged, Some(true), "{root:?}");
    assert_eq!(root.userns_mode.as_deref(), Some("host"));
    assert_eq!(root.network_mode.as_deref(), Some("host"));

    // The policy in force, as `wharf policy show` prints it.
    let (out, _) = w.cli_code(&["policy", "show"], 0);
    assert!(
        out.starts_with(&format!("policy: {}", policy.display())),
        "{out}"
    );
    assert!(
        line_with(&out, "privileged").contains("harden-*: yes"),
        "{out}"
    );
}

/// What the default policy refuses is refused at deploy by the CLI, with where the stack file
/// asks for it, the rule, and the key an admin sets; nothing runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_stack_names_its_place_the_rule_and_the_policy_key() {
    let mut w = Wharf::start().await;
    let stack = unique_stack("refused");
    let yaml = format!(
        "name: {stack}\nservices:\n  web:\n    image: wharf-testapp:latest\n    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n"
    );
    let file = w.stack_file(&stack, &yaml);
    let (_, err) = w.deploy(&file, 2);
    let first = line_with(&err, "error:");
    assert!(
        first.starts_with(&format!(
            "error: {}:6:9: services.web.volumes[0]",
            file.display()
        )) && first.contains("rule docker-socket"),
        "{err}"
    );
    assert!(
        line_with(&err, "hint:").contains("docker_socket: true"),
        "{err}"
    );
    assert!(containers(&stack).await.is_empty());
}
