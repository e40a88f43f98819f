//! Issue 8, "never lose, never duplicate", on one node with the real binary and engine:
//! - defect 1: an emptied store (`wharf.db` truncated to zero bytes) must not make the node
//!   remove its running containers; `--accept-store` lets the new store take over;
//! - defect 3: a service without a health check that exits 200 ms after each start must fail
//!   its first deploy instead of deploying "successfully".

mod common;

use std::time::Duration;

use common::*;
use wharf_testkit::{Check, not_yet, wait_for};

/// Wait until the node reports that it holds back; its reason.
async fn wait_held(w: &Wharf) -> String {
    wait_for(
        "the node to report that it holds back",
        Duration::from_secs(20),
        || async {
            match w.client.list_nodes().await {
                Ok(nodes) => match nodes.iter().find_map(|n| n.held.clone()) {
                    Some(h) => Check::Done(h),
                    None => not_yet(format!("{nodes:?}")),
                },
                Err(e) => not_yet(e.to_string()),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", tail(&w.log(), 40)))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_emptied_store_holds_the_node_back_and_keeps_every_container() {
    let (mut w, stack, _) =
        Wharf::start_web("empty", 2, |s| testapp_stack(s, "web", 2, HEALTHCHECK)).await;
    let before = containers(&stack).await;
    assert_eq!(before.len(), 2, "{before:?}");

    // Stop, empty the store (as a lost disk, a wrong backup or an operator would), start again.
    w.kill9();
    let db = w.data_dir().join("wharf.db");
    std::fs::write(&db, b"").expect("truncate wharf.db");
    for ext in ["wharf.db-wal", "wharf.db-shm"] {
        let _ = std::fs::remove_file(w.data_dir().join(ext));
    }
    w.launch(&[]).await;

    // The node says it holds back, and why, in the log and on the node.
    let held = wait_held(&w).await;
    assert!(held.contains("belongs to cluster"), "{held}");
    assert!(held.contains("--accept-store"), "says what to do: {held}");
    assert!(
        w.log().contains("holding back"),
        "the log says so: {}",
        tail(&w.log(), 20)
    );
    // Three more seconds of agent passes (the defect removed everything within 2 s), seen by
    // the master as reports from the held node; then the containers must still be the same.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    wait_for(
        "3 s of reports from the held node",
        Duration::from_secs(20),
        || async {
            match w.client.list_nodes().await {
                Ok(nodes) if nodes.iter().all(|n| n.last_seen >= since + 3_000) => Check::Done(()),
                other => not_yet(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- log ---\n{}", tail(&w.log(), 40)));
    let after = containers(&stack).await;
    assert_eq!(
        after,
        before,
        "an emptied store removed or changed running containers\n--- log ---\n{}",
        tail(&w.log(), 40)
    );

    // The operator accepts the new store: it knows no stacks, so the node is cleared.
    w.kill9();
    w.launch(&["--accept-store"]).await;
    let what = "the accepted store's (empty) desired state to be carried out";
    w.wait_containers(&stack, what, Duration::from_secs(60), <[_]>::is_empty)
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_that_crashes_right_after_each_start_fails_its_first_deploy() {
    let (mut w, stack) = Wharf::start_for("crashy").await;
    // No health check; exits with code 7 200 ms after every start; restarted by policy.
    let file = w.stack_file(
        &stack,
        &testapp_stack(
            &stack,
            "worker",
            2,
            "    environment:\n      CRASH_AFTER_MS: \"200\"\n      CRASH_CODE: \"7\"\n",
        ),
    );
    let (so, se) = w.deploy(&file, 1);
    let all = format!("{so}\n{se}");
    assert!(
        all.contains("exited") && (all.contains("code 7") || all.contains("restarted")),
        "the deploy says why it failed:\n{all}"
    );
    assert!(
        !all.contains("2/2 ready") || all.contains("failed"),
        "not reported as a success:\n{all}"
    );
}

/// A store restored from an older backup (same cluster, older revision) holds the node back too:
/// its desired state knows nothing of what was deployed since.
#[tokio::test(flavor = "multi_thread")]
async fn a_store_restored_from_an_older_backup_holds_the_node_back() {
    let (mut w, stack, _) =
        Wharf::start_web("backup", 1, |s| testapp_stack(s, "web", 1, HEALTHCHECK)).await;
    // The backup: a copy of the stopped store.
    w.kill9();
    let data = w.data_dir();
    let backup = w.dir.path().join("backup");
    std::fs::create_dir_all(&backup).unwrap();
    for f in ["wharf.db", "wharf.db-wal", "wharf.db-shm"] {
        let _ = std::fs::copy(data.join(f), backup.join(f));
    }
    // Later: a second service, seen by the node (its remembered revision moves on).
    w.launch(&[]).await;
    let later = Stack::new(&stack)
        .service(Service::testapp("web").replicas(1).extra(HEALTHCHECK))
        .service(Service::testapp("extra"))
        .yaml();
    w.deploy_ready(&stack, &later, "extra", 1, Duration::from_secs(60))
        .await;
    let remembered = data.join("cluster.json");
    let before: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&remembered).expect("cluster.json")).unwrap();
    // Let the node write down what it saw (at most once a second), then restore the backup.
    wait_for(
        "the node to remember a newer revision",
        Duration::from_secs(10),
        || async {
            let now: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&remembered).unwrap_or_default())
                    .unwrap_or_default();
            if now["revision"].as_u64() > before["revision"].as_u64() {
                Check::Done(())
            } else {
                not_yet(now)
            }
        },
    )
    .await
    .ok();
    let before = containers(&stack).await;
    assert_eq!(before.len(), 2, "{before:?}");
    w.kill9();
    for f in ["wharf.db", "wharf.db-wal", "wharf.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
        let _ = std::fs::copy(backup.join(f), data.join(f));
    }
    w.launch(&[]).await;
    let held = wait_held(&w).await;
    assert!(held.contains("older than what this node saw"), "{held}");
    assert_eq!(
        containers(&stack).await,
        before,
        "the old store's desired state (no `extra`) removed a container"
    );
}
