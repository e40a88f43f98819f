//! High availability on etcd: three masters share a real three-member etcd cluster; agents in
//! network namespaces know every master. Kill any master, cut the leader off the store, kill
//! etcd members: the cluster carries on, and nothing acknowledged is lost.

mod common;
#[path = "common/hacluster.rs"]
mod hacluster;
#[path = "common/netcluster.rs"]
#[allow(unused_imports)]
mod netcluster;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Harness, containers, unique_stack, utf8, web_stack};
use hacluster::HaCluster;
use wharf_store::Store;
use wharf_testkit::{Check, not_yet, wait_for};
use wharf_types::ObjectKind;

/// Running containers of `stack`: name -> id.
async fn running(stack: &str) -> BTreeMap<String, String> {
    containers(stack)
        .await
        .into_iter()
        .filter(|(_, _, up)| *up)
        .map(|(name, id, _)| (name, id))
        .collect()
}

/// Check 2: `kill -9` of the leader in the middle of a deploy of 20 replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_deploy_loses_and_duplicates_nothing() {
    let mut c = HaCluster::start(3, 3).await;
    // A service that runs all along: none of its containers may restart.
    let other = unique_stack("ha-other");
    c.deploy_ready(
        &other,
        &web_stack(&other, 3, "", ""),
        "web",
        3,
        Duration::from_secs(90),
    )
    .await;
    let before = running(&other).await;
    assert_eq!(before.len(), 3, "{before:?}");

    let stack = unique_stack("ha-big");
    let file = c.stack_file(
        &stack,
        &web_stack(
            &stack,
            20,
            "      update_config:\n        parallelism: 4\n",
            "",
        ),
    );
    // The CLI follows the deploy; it knows every master.
    let mut follow = common::cli_command(&c.config_dir(), &["stack", "deploy", "-c", utf8(&file)]);
    follow
        .env("WHARF_URL", c.client.url_list())
        .env("WHARF_TOKEN", c.client.token())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cli = follow.spawn().expect("wharf stack deploy");
    let started = wait_for(
        "a few of the 20 to run",
        Duration::from_secs(60),
        || async {
            let n = running(&stack).await.len();
            if n >= 3 {
                Check::Done(())
            } else {
                not_yet(format!("{n} running"))
            }
        },
    )
    .await;
    if let Err(e) = started {
        let _ = cli.kill();
        let out = cli.wait_with_output().unwrap();
        panic!(
            "{e}\nthe CLI said:\n{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            c.logs()
        );
    }
    let leader = c.leader().await.expect("a leader");
    c.kill_master(leader);
    let killed = Instant::now();
    let next = c.wait_leader(Some(leader), Duration::from_secs(10)).await;
    let took = killed.elapsed();
    eprintln!("new leader m{next} {took:?} after the leader was killed");
    // The lease is 2 s; the target is 3 s. The bench (bench/failover) measures it on a quiet
    // machine; here a busy one gets some slack.
    assert!(
        took < Duration::from_secs(5),
        "a new leader took {took:?}\n{}",
        c.logs()
    );

    let out = tokio::task::spawn_blocking(move || cli.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "the following CLI did not end with success\nstdout:\n{so}\nstderr:\n{se}\n{}",
        c.logs()
    );
    // Exactly 20: every slot once, no duplicate container left behind.
    let insts = c
        .wait_ready(&stack, "web", 20, Duration::from_secs(60))
        .await;
    assert_eq!(insts.len(), 20, "{insts:?}");
    wait_for("exactly 20 containers", Duration::from_secs(30), || async {
        let n = running(&stack).await.len();
        if n == 20 {
            Check::Done(())
        } else {
            not_yet(format!("{n} running"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let mut slots: Vec<u32> = insts.iter().map(|i| i.slot).collect();
    slots.sort();
    assert_eq!(slots, (0..20).collect::<Vec<_>>());
    assert_eq!(
        running(&other).await,
        before,
        "a container of another service restarted"
    );
}

/// What the writer did: acknowledged names, and names whose write failed.
#[derive(Default)]
struct Written {
    acked: Vec<String>,
    failed: Vec<(String, String)>,
}

/// Checks 3, 4 and 5: the leader cut off from etcd stops and none of its writes land; one etcd
/// member down changes nothing; two down fail writes with a clear 503 and leave containers
/// running; members back, everything resumes. A writer issues mutations through all of it;
/// every acknowledged one is there afterwards, none is half there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_of_the_store_lose_no_acknowledged_write() {
    let mut c = HaCluster::start(3, 2).await;
    let stack = unique_stack("ha-faults");
    c.deploy_ready(
        &stack,
        &web_stack(&stack, 4, "", ""),
        "web",
        4,
        Duration::from_secs(90),
    )
    .await;
    let store = c.store().await;

    // The writer: a config per write, through whichever master answers.
    let written = Arc::new(parking_lot::Mutex::new(Written::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, written, stop) = (c.client.clone(), written.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let name = format!("w{i:05}");
                match client
                    .put_object(ObjectKind::Config, &name, name.as_bytes())
                    .await
                {
                    Ok(_) => written.lock().acked.push(name),
                    Err(e) => written.lock().failed.push((name, e.to_string())),
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        })
    };
    let acked = || written.lock().acked.len();

    // Check 3: the leader's link to etcd drops.
    let old = c.leader().await.expect("a leader");
    let old_id = c.masters[old].id();
    let cut_at = store.current_revision().await.unwrap();
    c.masters[old].fwd.cut();
    let next = c.wait_leader(Some(old), Duration::from_secs(10)).await;
    wait_for(
        "the cut-off leader to stop acting",
        Duration::from_secs(5),
        || async {
            let log = c.masters[old].log();
            if log.contains("this master no longer leads") {
                Check::Done(())
            } else {
                not_yet("")
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // The new leader acts: a scale is carried out while the old one is cut off.
    c.cli_code_async(&["service", "scale", &format!("{stack}/web=5")], 0)
        .await;
    c.wait_ready(&stack, "web", 5, Duration::from_secs(60))
        .await;
    let n = acked();
    wait_for("writes to go on", Duration::from_secs(20), || async {
        if acked() > n + 5 {
            Check::Done(())
        } else {
            not_yet(format!("{} acked", acked()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    c.masters[old].fwd.heal();
    // Healed, it follows.
    wait_for(
        "the healed master to follow",
        Duration::from_secs(20),
        || async {
            let st = c.client.masters().await?;
            let me = st.masters.iter().find(|m| m.info.id == old_id);
            anyhow::Ok(match me {
                Some(m) if !m.leader => Check::Done(()),
                other => not_yet(format!("{other:?}")),
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert_eq!(c.leader().await, Some(next), "leadership moved back");
    // None of the old leader's writes landed after the cut: every controller write since names
    // its writer (`/masters/written-by`), and the history shows only the new leader's.
    let mut history = store.watch("/masters/written-by", cut_at).await.unwrap();
    let now = store.current_revision().await.unwrap();
    let mut writers = std::collections::BTreeSet::new();
    use futures::StreamExt;
    while let Ok(Some(Ok(batch))) =
        tokio::time::timeout(Duration::from_secs(2), history.next()).await
    {
        for e in &batch.events {
            let w = String::from_utf8_lossy(&e.kv.value).to_string();
            writers.insert(w.split(" term ").next().unwrap_or_default().to_string());
        }
        if batch.revision >= now {
            break;
        }
    }
    let next_id = c.masters[next].id();
    assert!(
        writers.contains(&next_id),
        "the new leader's writes are not in the history: {writers:?}"
    );
    assert!(
        !writers.contains(&old_id),
        "the deposed leader {old_id} wrote after it was cut off: {writers:?}"
    );

    // Check 4: one etcd member down: no visible effect.
    c.etcd.kill(2);
    let (so, _) = c.cli_code_async(&["master", "ls"], 0).await;
    assert!(
        so.contains("2 of 3 members healthy; quorum") && so.contains("unreachable"),
        "{so}"
    );
    let n = acked();
    let failed_before = written.lock().failed.len();
    wait_for(
        "writes with a member down",
        Duration::from_secs(20),
        || async {
            if acked() > n + 10 {
                Check::Done(())
            } else {
                not_yet(format!("{} acked", acked()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let failed: Vec<_> = written.lock().failed[failed_before..].to_vec();
    assert!(
        failed.is_empty(),
        "writes failed with one member of three down: {failed:?}"
    );

    // Two down: writes fail with 503 and the message; containers keep running.
    c.etcd.kill(1);
    let probe = c.dir.path().join("probe.txt");
    std::fs::write(&probe, "probe").unwrap();
    let (so, se) = wait_for("a write to be refused", Duration::from_secs(20), || async {
        let out = c
            .cli_async(&["config", "create", "q-probe", "-f", utf8(&probe)])
            .await;
        if out.status.code() == Some(1) || out.status.code() == Some(2) {
            let se = String::from_utf8_lossy(&out.stderr).to_string();
            if se.contains("no quorum") {
                return Check::Done((String::from_utf8_lossy(&out.stdout).to_string(), se));
            }
        }
        not_yet(String::from_utf8_lossy(&out.stderr).to_string())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    assert!(se.contains("the cluster store has no quorum"), "{so}\n{se}");
    assert!(se.contains("hint:"), "no hint: {se}");
    // `wharf master ls` tells what is wrong.
    wait_for(
        "master ls to show no quorum",
        Duration::from_secs(20),
        || async {
            let out = c.cli_async(&["master", "ls"]).await;
            let so = String::from_utf8_lossy(&out.stdout).to_string();
            if out.status.success() && so.contains("NO QUORUM") {
                Check::Done(())
            } else {
                not_yet(so)
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // Reads are answered from the masters' copies, and say so.
    wait_for(
        "a read to say it may be behind",
        Duration::from_secs(20),
        || async {
            let out = c.cli_async(&["stack", "ls"]).await;
            let (so, se) = (
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            );
            if out.status.success() && so.contains(&stack) && se.contains("may be behind") {
                Check::Done(())
            } else {
                not_yet(format!("{:?}\n{so}\n{se}", out.status.code()))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let before = running(&stack).await;
    assert_eq!(before.len(), 5);
    tokio::time::sleep(Duration::from_secs(3)).await; // containers must not move meanwhile
    assert_eq!(
        running(&stack).await,
        before,
        "containers changed without quorum"
    );

    // Members back: writes resume by themselves.
    c.etcd.start_member(1);
    c.etcd.start_member(2);
    let n = acked();
    wait_for("writes to resume", Duration::from_secs(60), || async {
        if acked() > n + 10 {
            Check::Done(())
        } else {
            not_yet(format!("{} acked", acked()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    // Check 5: every acknowledged write is there; none is half there.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    let w = std::mem::take(&mut *written.lock());
    assert!(
        w.acked.len() > 30,
        "too few writes to mean anything: {}",
        w.acked.len()
    );
    let (configs, _) = store.range("/configs/").await.unwrap();
    let (values, _) = store.range("/config-values/").await.unwrap();
    let has = |name: &str| {
        configs
            .iter()
            .any(|kv| kv.key == format!("/configs/{name}"))
    };
    let has_value = |name: &str| {
        values
            .iter()
            .any(|kv| kv.key.starts_with(&format!("/config-values/{name}/")))
    };
    for name in &w.acked {
        assert!(
            has(name) && has_value(name),
            "acknowledged write {name} is lost"
        );
    }
    for (name, why) in &w.failed {
        assert_eq!(
            has(name),
            has_value(name),
            "unacknowledged write {name} ({why}) is half applied"
        );
    }
    assert_eq!(running(&stack).await, before, "containers restarted");
}

/// bench/failover, the master section: `kill -9` of the leader, then seconds until a change
/// (a scale down by one, without a drain grace: what is timed is the control plane, not the
/// service's own windows) is accepted and carried out again; median of 5. Not a test
/// (`#[ignore]`): run by `bench/failover/run`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn master_failover_bench() {
    let mut c = HaCluster::start(3, 2).await;
    let stack = unique_stack("ha-bench");
    let no_grace = "    x-wharf:\n      drain_grace: 0s\n";
    c.deploy_ready(
        &stack,
        &web_stack(&stack, 7, "", no_grace),
        "web",
        7,
        Duration::from_secs(90),
    )
    .await;
    let (mut leaders, mut deploys) = (Vec::new(), Vec::new());
    for round in 0..5u32 {
        let old = c.leader().await.expect("a leader");
        c.kill_master(old);
        let t0 = Instant::now();
        let next = c.wait_leader(Some(old), Duration::from_secs(30)).await;
        let leader_after = t0.elapsed();
        let replicas = 6 - round;
        loop {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no deploy within 60 s"
            );
            let Ok(op) = c.client.scale_service(&stack, "web", replicas).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Some(id) = op.deployment_id else { break };
            let end = c
                .wait_deployment_end(&id, "the scale after a failover", Duration::from_secs(60))
                .await;
            if end.state == wharf_types::DeploymentState::Succeeded {
                break;
            }
        }
        let deploy_after = t0.elapsed();
        eprintln!(
            "round {}: leader m{old} killed; m{next} leads after {:.2} s; a deploy succeeded after {:.2} s",
            round + 1,
            leader_after.as_secs_f64(),
            deploy_after.as_secs_f64()
        );
        leaders.push(leader_after.as_secs_f64());
        deploys.push(deploy_after.as_secs_f64());
        c.launch_master(old).await;
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!(
        "\nbench/failover (masters): 3 masters on a 3-member etcd, kill -9 of the leader, median of 5:\n  \
         new leader after        {:.2} s\n  a deploy succeeds after {:.2} s   (target < 3 s)\n  \
         for scale: Swarm's manager election defaults to 10 s (raft election ticks); Nomad's server \
         raft leader lease 500 ms + heartbeats, typically a few seconds",
        median(&mut leaders),
        median(&mut deploys)
    );
}
