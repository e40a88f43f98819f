//! Deploys end to end on the real engine: idempotence, one-at-a-time replacement, scaling.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use wharf_testkit::{Check, not_yet, wait_for};
use wharf_types::{Health, InstanceInfo, StackSummary};

/// The stack's containers in the engine: name → id.
async fn container_ids(stack: &str) -> BTreeMap<String, String> {
    containers(stack)
        .await
        .into_iter()
        .map(|(n, id, _)| (n, id))
        .collect()
}

/// Acceptance check 2: the same file twice changes nothing, not even a container id.
#[tokio::test(flavor = "multi_thread")]
async fn deploying_the_same_file_twice_changes_nothing() {
    let (mut w, stack) = Wharf::start_for("idem").await;
    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 2, HEALTHCHECK));
    w.deploy(&file, 0);
    let before = container_ids(&stack).await;
    assert_eq!(
        before.len(),
        2,
        "two containers after the first deploy: {before:?}"
    );

    let (out, _) = w.deploy(&file, 0);
    assert!(
        out.contains("no changes"),
        "second deploy should report no changes, got:\n{out}"
    );
    let after = container_ids(&stack).await;
    assert_eq!(
        before, after,
        "container ids changed on an idempotent deploy"
    );
}

/// Acceptance check 3: changing one service's environment replaces its instances one at a time
/// (default update_config: parallelism 1, stop-first) and leaves the other service alone.
#[tokio::test(flavor = "multi_thread")]
async fn an_env_change_rolls_one_slot_at_a_time_and_leaves_other_services_alone() {
    let (mut w, stack) = Wharf::start_for("roll").await;
    let yaml = |mode: &str| {
        Stack::new(&stack)
            .service(
                Service::testapp("a")
                    .replicas(3)
                    .env("MODE", mode)
                    .healthcheck(),
            )
            .service(Service::testapp("b"))
            .yaml()
    };
    let a_before = w
        .deploy_ready(&stack, &yaml("one"), "a", 3, Duration::from_secs(30))
        .await;
    let b_before = w.wait_ready(&stack, "b", 1, Duration::from_secs(30)).await;
    let b_container = b_before[0].container_id.clone().expect("b has a container");
    let old_hash = w.service(&stack, "a").await.expect("service a").spec_hash;
    let old_gens: BTreeMap<u32, u64> = a_before.iter().map(|i| (i.slot, i.generation)).collect();

    let file = w.stack_file(&stack, &yaml("two"));
    // Watch a's instances every 50 ms while the CLI deploys.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (client, stack, stop) = (w.client.clone(), stack.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Ok(insts) = client.service_instances(&stack, "a").await {
                    seen.push(insts);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen
        })
    };
    let (out, _) = tokio::task::block_in_place(|| w.deploy(&file, 0));
    stop.store(true, Ordering::SeqCst);
    let seen = poller.await.expect("poller");
    let new_hash = w.service(&stack, "a").await.expect("service a").spec_hash;
    assert_ne!(old_hash, new_hash, "the env change changes a's spec hash");

    // A slot is settled when it still runs its original instance, ready, or runs the new spec,
    // ready; anything else (old one stopping, new one pending or starting) is being replaced.
    let replacing = |insts: &[InstanceInfo]| -> Vec<u32> {
        insts
            .iter()
            .filter(|i| {
                let original =
                    i.spec_hash == old_hash && old_gens.get(&i.slot) == Some(&i.generation);
                let updated = i.spec_hash == new_hash;
                !((original || updated) && i.is_ready())
            })
            .map(|i| i.slot)
            .collect()
    };
    let mut replaced_order: Vec<u32> = Vec::new();
    for (n, insts) in seen.iter().enumerate() {
        assert_eq!(
            insts.len(),
            3,
            "observation {n}: a always has 3 slots: {}",
            summary(insts)
        );
        let r = replacing(insts);
        assert!(
            r.len() <= 1,
            "observation {n}: slots {r:?} replaced at once (parallelism 1): {}",
            summary(insts)
        );
        if let Some(s) = r.first()
            && replaced_order.last() != Some(s)
        {
            replaced_order.push(*s);
        }
    }
    // The poller did see the rollout (else the check above proves nothing): each slot in turn.
    replaced_order.sort();
    replaced_order.dedup();
    assert_eq!(
        replaced_order,
        vec![0, 1, 2],
        "every slot seen being replaced, in {} observations",
        seen.len()
    );

    // Afterwards all 3 run the new environment, in the engine too.
    let a_after = w.wait_ready(&stack, "a", 3, Duration::from_secs(10)).await;
    for i in &a_after {
        assert_eq!(i.spec_hash, new_hash, "{}", summary(&a_after));
        assert_ne!(
            Some(&i.generation),
            old_gens.get(&i.slot),
            "slot {} replaced",
            i.slot
        );
        let env = container_env(i.container_id.as_deref().expect("container")).await;
        assert!(
            env.iter().any(|e| e == "MODE=two"),
            "instance {} env: {env:?}",
            i.id
        );
    }
    // b was not touched.
    let b_after = w.wait_ready(&stack, "b", 1, Duration::from_secs(10)).await;
    assert_eq!(
        b_after[0].container_id.as_deref(),
        Some(b_container.as_str()),
        "b's container id changed"
    );
    assert!(
        containers(&stack)
            .await
            .iter()
            .any(|(_, id, running)| *id == b_container && *running),
        "b's container still runs in the engine"
    );
    // The deploy printed the env diff of a, and nothing for b.
    assert!(
        out.lines()
            .any(|l| l == "~ a: environment.MODE: \"one\" -> \"two\""),
        "env diff line of a:\n{out}"
    );
    assert!(
        !out.lines()
            .any(|l| l.starts_with("~ b") || l.starts_with("+ b")),
        "b is unchanged:\n{out}"
    );
}

/// Acceptance check 7: an instance that never gets healthy fails the deploy, which names the service,
/// says unhealthy and shows the health check's output; `wharf service ps` shows it too.
#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_service_fails_the_deploy_with_the_health_check_output() {
    let (mut w, stack) = Wharf::start_for("sick").await;
    let extra = format!("    environment:\n      FAIL_HEALTH: \"1\"\n{HEALTHCHECK}");
    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 1, &extra));
    let (so, se) = w.deploy(&file, 1);
    let all = format!("{so}\n{se}");
    // The testapp check prints `status 503: unhealthy: FAIL_HEALTH=1` (status and /healthz body).
    assert!(
        se.contains("service web"),
        "the error names the service:\n{all}"
    );
    assert!(se.contains("unhealthy"), "the error says unhealthy:\n{all}");
    assert!(
        se.contains("status 503: unhealthy: FAIL_HEALTH=1"),
        "the error has the check's output:\n{all}"
    );

    let target = format!("{stack}/web");
    let out = w.cli(&["service", "ps", &target]);
    let (table, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "service ps: {err}");
    let row = line_with(&table, &format!("{stack}.web.0 "));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols.get(3..5),
        Some(&["running", "unhealthy"][..]),
        "state and health:\n{table}"
    );
    assert!(
        row.contains("status 503: unhealthy: FAIL_HEALTH=1"),
        "the check's output:\n{table}"
    );

    let out = w.cli(&["service", "ps", &target, "-o", "json"]);
    let (json, err) = text(&out);
    assert_eq!(out.status.code(), Some(0), "service ps -o json: {err}");
    let infos: Vec<InstanceInfo> =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(infos.len(), 1, "{json}");
    assert_eq!(infos[0].health, Health::Unhealthy, "{json}");
    let output = infos[0].health_output.as_deref().unwrap_or_default();
    assert!(output.contains("unhealthy"), "health_output: {json}");
}

/// A missing image (no registry reachable) fails the deploy with a message naming the image.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_image_fails_the_deploy_naming_the_image() {
    let mut w = Wharf::start().await;
    let stack = unique_stack("noimg");
    let yaml = format!("name: {stack}\nservices:\n  web:\n    image: wharf-absent:nope\n");
    let file = w.stack_file(&stack, &yaml);
    let started = std::time::Instant::now();
    let (so, se) = w.cli_code(
        &["stack", "deploy", "--timeout", "60s", "-c", utf8(&file)],
        1,
    );
    let all = format!(
        "--- stdout ---\n{so}\n--- stderr ---\n{se}\n--- log ---\n{}",
        tail(&w.log(), 20)
    );
    assert!(
        !se.contains("timed out after"),
        "the deploy should fail, not time out: {all}"
    );
    assert!(
        se.contains("image wharf-absent:nope not found locally"),
        "names the image and says it is missing: {all}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "failed within the pull timeout: {all}"
    );
    assert!(containers(&stack).await.is_empty(), "no container created");
    // The failed stack can still be removed.
    w.cli_code(&["stack", "rm", "--timeout", "30s", &stack], 0);
    assert!(
        w.client.get_stack(&stack).await.is_err(),
        "the stack is gone after rm"
    );
}

/// A published host port that something else holds fails the deploy with the port in the message.
#[tokio::test(flavor = "multi_thread")]
async fn a_taken_host_port_fails_the_deploy_naming_the_port() {
    let (mut w, stack) = Wharf::start_for("port").await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let extra = format!("    ports:\n      - \"127.0.0.1:{port}:8080\"\n");
    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 1, &extra));
    let (so, se) = w.deploy(&file, 1);
    assert!(
        se.contains(&format!("host port {port} is already taken")),
        "the error names the port:\n{so}\n{se}"
    );
    drop(listener);
}

/// `wharf stack diff` changes nothing; `wharf stack rm` removes containers and network but keeps
/// named volumes unless `--volumes`; `wharf stack ls` forgets the stack.
#[tokio::test(flavor = "multi_thread")]
async fn diff_changes_nothing_and_rm_removes_the_stack_keeping_volumes_unless_asked() {
    let (mut w, stack) = Wharf::start_for("rm").await;
    let yaml = |version: &str| {
        let web = Service::testapp("web")
            .replicas(2)
            .env("VERSION", version)
            .extra("    volumes:\n      - data:/data\n")
            .healthcheck();
        Stack::new(&stack).service(web).volume("data").yaml()
    };
    w.deploy_ready(&stack, &yaml("v1"), "web", 2, Duration::from_secs(30))
        .await;
    let before = container_ids(&stack).await;
    assert_eq!(before.len(), 2, "{before:?}");
    let hash = w.service(&stack, "web").await.expect("web").spec_hash;

    // diff: shows the change, applies nothing.
    let file = w.stack_file(&stack, &yaml("v2"));
    let (so, _) = w.cli_code(&["stack", "diff", "-c", utf8(&file)], 0);
    assert!(
        so.lines()
            .any(|l| l == "~ web: environment.VERSION: \"v1\" -> \"v2\""),
        "the diff line:\n{so}"
    );
    assert_eq!(
        w.service(&stack, "web").await.expect("web").spec_hash,
        hash,
        "diff stored the new spec"
    );
    let insts = w.wait_ready(&stack, "web", 2, Duration::from_secs(5)).await;
    assert!(
        insts.iter().all(|i| i.spec_hash == hash),
        "{}",
        summary(&insts)
    );
    assert_eq!(
        container_ids(&stack).await,
        before,
        "container ids changed after a diff"
    );

    let docker = wharf_testkit::docker().await.expect("docker");
    let network = format!("wharf_{stack}");
    let volume = format!("{stack}_data");
    let no_options = None::<bollard::query_parameters::InspectNetworkOptions>;
    docker
        .inspect_network(&network, no_options)
        .await
        .expect("the stack network exists");
    docker
        .inspect_volume(&volume)
        .await
        .expect("the named volume exists");

    // rm: containers and network go, the named volume stays.
    let rm = |extra: &[&str]| {
        let mut args = vec!["stack", "rm", stack.as_str()];
        args.extend_from_slice(extra);
        w.cli_code(&args, 0);
    };
    rm(&[]);
    wait_gone(&w, &docker, &stack, &network).await;
    docker
        .inspect_volume(&volume)
        .await
        .expect("the named volume is kept by stack rm");
    let listed = |w: &Wharf| {
        let (so, _) = w.cli_code(&["stack", "ls", "-o", "json"], 0);
        let stacks: Vec<StackSummary> =
            serde_json::from_str(&so).unwrap_or_else(|e| panic!("{e}: {so}"));
        stacks.iter().any(|s| s.name == stack)
    };
    assert!(!listed(&w), "stack ls still lists {stack}");

    // Deploy again, then rm --volumes: the volume goes too.
    w.deploy(&file, 0);
    w.wait_ready(&stack, "web", 2, Duration::from_secs(30))
        .await;
    assert!(listed(&w), "stack ls lists {stack} again");
    rm(&["--volumes"]);
    wait_gone(&w, &docker, &stack, &network).await;
    wait_for("the named volume removed", Duration::from_secs(10), || {
        let (docker, volume) = (docker.clone(), volume.clone());
        async move { docker.inspect_volume(&volume).await.is_err().then_some(()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", tail(&w.log(), 30)));
    assert!(!listed(&w), "stack ls still lists {stack}");
}

/// Wait until the stack's containers and its network are gone.
async fn wait_gone(w: &Wharf, docker: &bollard::Docker, stack: &str, network: &str) {
    wait_for(
        "containers and network of the stack gone",
        Duration::from_secs(20),
        || async {
            let left = containers(stack).await;
            let net = docker
                .inspect_network(
                    network,
                    None::<bollard::query_parameters::InspectNetworkOptions>,
                )
                .await
                .is_ok();
            if left.is_empty() && !net {
                Check::Done(())
            } else {
                not_yet((left, net))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", tail(&w.log(), 30)));
}

/// Stop-first (the default order) on a fixed published port: the old instance must be gone before
/// the replacement starts, else the replacement cannot bind the port. The old one ignores its stop
/// signal (SIGUSR1 has no handler in PID 1), so it holds the port for the whole 2 s grace period.
#[tokio::test(flavor = "multi_thread")]
async fn stop_first_frees_a_fixed_published_port_before_starting_the_replacement() {
    let (mut w, stack) = Wharf::start_for("stopfirst").await;
    let port = free_port();
    let yaml = |version: &str| {
        let extra = format!(
            "    stop_signal: SIGUSR1\n    environment:\n      VERSION: {version}\n    ports:\n      - \"127.0.0.1:{port}:8080\"\n{HEALTHCHECK}"
        );
        testapp_stack(&stack, "web", 1, &extra)
    };
    w.deploy_ready(&stack, &yaml("v1"), "web", 1, Duration::from_secs(30))
        .await;
    let url = format!("http://127.0.0.1:{port}/");
    let get = || async { reqwest::get(&url).await?.text().await };
    assert_eq!(get().await.expect("GET /").trim(), "v1");

    let insts = w
        .deploy_ready(&stack, &yaml("v2"), "web", 1, Duration::from_secs(10))
        .await;
    assert_eq!(
        insts[0].restarts,
        0,
        "the replacement started cleanly: {}",
        summary(&insts)
    );
    assert_eq!(
        get().await.expect("GET /").trim(),
        "v2",
        "the published port serves the new version"
    );
}
