//! Clusters: `wharf server` and `wharf agent` processes on loopback. Agents join with tokens
//! (single use, expiring), connect with mutual TLS, run what the master assigns, serve logs, and
//! ride out a master restart without touching their containers.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cluster::Server;
use common::*;
use wharf_testkit::{Check, not_yet, wait_for};
use wharf_types::{NodeInfo, NodeState};

async fn nodes(s: &Server) -> Vec<NodeInfo> {
    let out = s.cli(&["node", "ls", "-o", "json"]);
    assert!(out.status.success(), "wharf node ls failed");
    serde_json::from_slice(&out.stdout).expect("node ls json")
}

async fn wait_ready_nodes(s: &Server, ids: &BTreeSet<String>) {
    wait_for(
        "the agents to be ready nodes",
        Duration::from_secs(30),
        || async {
            let ns = nodes(s).await;
            let ready: BTreeSet<String> = ns
                .iter()
                .filter(|n| n.state == NodeState::Ready)
                .map(|n| n.id.clone())
                .collect();
            if ids.is_subset(&ready) && s.client.list_nodes().await.is_ok() {
                Check::Done(())
            } else {
                not_yet(ns.iter().map(|n| (&n.id, n.state)).collect::<Vec<_>>())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- server log ---\n{}", tail(&s.log(), 40)));
}

#[tokio::test]
async fn tokens_are_single_use_expire_and_certificates_must_come_from_the_ca() {
    let s = Server::start().await;

    // A single-use token admits one agent…
    let token = s.token(&[]);
    assert!(token.starts_with("WJT1-"), "{token}");
    let first = s.agent("first", Some(&token));
    let id = wait_for("the first agent to join", Duration::from_secs(20), || {
        let id = first.node_id();
        async move { id }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", first.log()));
    wait_ready_nodes(&s, &BTreeSet::from([id.clone()])).await;

    // …and is refused the second time, with a clear message.
    let mut second = s.agent("second", Some(&token));
    let code = second.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(code, Some(1), "{}", second.log());
    let log = second.log();
    assert!(log.contains("the join token was already used"), "{log}");
    assert!(log.contains("hint:"), "{log}");
    assert!(second.node_id().is_none());

    // An expired token is refused.
    let expired = s.token(&["--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut third = s.agent("third", Some(&expired));
    assert_eq!(third.wait_exit(Duration::from_secs(20)).await, Some(1));
    assert!(third.log().contains("expired"), "{}", third.log());

    // A token of another cluster: the agent refuses the master (CA fingerprint pinning).
    let foreign = format!("WJT1-{}-{}", "ab".repeat(32), "cd".repeat(16));
    let mut fourth = s.agent("fourth", Some(&foreign));
    assert_eq!(fourth.wait_exit(Duration::from_secs(20)).await, Some(1));
    assert!(fourth.log().contains("fingerprint"), "{}", fourth.log());

    // A self-signed client certificate cannot open the agent stream.
    let before = nodes(&s).await.len();
    let ca_pem = std::fs::read_to_string(first.data.join("ca.crt")).expect("ca.crt");
    let refused = self_signed_client(&s.agent_addr(), &ca_pem).await;
    assert!(
        refused.is_err(),
        "a self-signed client got a reply: {refused:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = nodes(&s).await;
    assert_eq!(after.len(), before, "{after:?}");
    assert!(!after.iter().any(|n| n.id == "node-5e1f5167"));
    assert!(
        s.log().contains("TLS handshake failed"),
        "{}",
        tail(&s.log(), 20)
    );
    drop(first);
}

/// Connect with a self-signed certificate claiming to be a node, say hello, and read the answer.
async fn self_signed_client(addr: &str, ca_pem: &str) -> Result<(), String> {
    use wharf_link::rcgen;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "node-5e1f5167");
    let cert = p.self_signed(&key).unwrap();
    let config =
        wharf_link::tls::node_client_config(ca_pem, &cert.pem(), &key.serialize_pem()).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = wharf_link::tokio_rustls::TlsConnector::from(Arc::clone(&config))
        .connect(wharf_link::tls::master_name(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let hello = wharf_types::ToMaster::Hello {
        facts: Default::default(),
        labels: BTreeMap::new(),
        log_credits: false,
        heartbeats: false,
        seen_revision: 0,
        exec: false,
        scan: false,
    };
    wharf_link::frame::write_frame(&mut tls, &hello)
        .await
        .map_err(|e| format!("write: {e}"))?;
    match tokio::time::timeout(
        Duration::from_secs(5),
        wharf_link::frame::read_frame::<_, wharf_types::ToAgent>(&mut tls),
    )
    .await
    {
        Ok(Ok(Some(_))) => Ok(()),
        Ok(Ok(None)) => Err("closed".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("no answer".into()),
    }
}

async fn create_stack_network(stack: &str) {
    let docker = wharf_testkit::docker().await.expect("docker");
    docker
        .create_network(bollard::models::NetworkCreateRequest {
            name: format!("wharf_{stack}"),
            driver: Some("bridge".into()),
            labels: Some(std::collections::HashMap::from([
                (wharf_types::labels::MANAGED.to_string(), "true".to_string()),
                (wharf_types::labels::STACK.to_string(), stack.to_string()),
            ])),
            ..Default::default()
        })
        .await
        .expect("create the stack network");
}

#[tokio::test]
async fn three_agents_run_a_stack_serve_logs_and_survive_a_master_restart() {
    wharf_testkit::testapp_image().await.expect("test image");
    let mut s = Server::start().await;
    let token = s.token(&["--uses", "3"]);
    let agents: Vec<_> = ["a1", "a2", "a3"]
        .iter()
        .map(|n| s.agent(n, Some(&token)))
        .collect();
    let ids: BTreeSet<String> = wait_for("three agents to join", Duration::from_secs(30), || {
        let ids: Vec<Option<String>> = agents.iter().map(|a| a.node_id()).collect();
        async move { ids.into_iter().collect::<Option<BTreeSet<_>>>() }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agents[0].log()));
    assert_eq!(ids.len(), 3);
    wait_ready_nodes(&s, &ids).await;
    let names: BTreeSet<String> = nodes(&s).await.into_iter().map(|n| n.name).collect();
    assert_eq!(
        names,
        BTreeSet::from(["a1".into(), "a2".into(), "a3".into()])
    );

    // Deploy three replicas: one on each agent's node, running.
    let stack = unique_stack("join");
    let file = s.stack_file(&stack, &testapp_stack(&stack, "web", 3, ""));
    // The three agents share this machine's engine, which allows duplicate network names: make the
    // stack network first so they do not race to create it (on real hosts each has its own engine).
    create_stack_network(&stack).await;
    let out = s.cli(&["stack", "deploy", "-c", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "deploy failed: {}\n{}\n--- server log ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&s.log(), 40)
    );
    let insts = wait_for("3 running instances", Duration::from_secs(60), || async {
        let insts = s
            .client
            .service_instances(&stack, "web")
            .await
            .unwrap_or_default();
        if insts.len() == 3
            && insts
                .iter()
                .all(|i| i.is_ready() && i.container_id.is_some())
        {
            Check::Done(insts)
        } else {
            not_yet(summary(&insts))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- server log ---\n{}", tail(&s.log(), 40)));
    let on: BTreeSet<String> = insts.iter().map(|i| i.node.clone()).collect();
    assert_eq!(on, ids, "one instance per agent node: {}", summary(&insts));
    let running = containers(&stack).await;
    assert_eq!(running.iter().filter(|c| c.2).count(), 3, "{running:?}");

    // Logs come through the remote links.
    let target = format!("{stack}/web");
    let out = s.cli(&["service", "logs", "--tail", "20", &target]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "service logs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sources: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        sources.len() >= 3,
        "lines from every instance expected:\n{text}"
    );

    // Kill the master and start it again: the agents reconnect by themselves and no container
    // restarts.
    let before: BTreeMap<String, String> = {
        let mut m = BTreeMap::new();
        for (_, id, _) in containers(&stack).await {
            m.insert(id.clone(), container_started_at(&id).await);
        }
        m
    };
    s.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    s.launch().await;
    wait_for(
        "the agents to reconnect",
        Duration::from_secs(30),
        || async {
            // Only what the restarted server logged; fields may carry colour codes.
            let log = s.log();
            let since = log.rsplit("wharf server is up").next().unwrap_or("");
            let n = ids
                .iter()
                .filter(|id| {
                    since
                        .lines()
                        .any(|l| l.contains("agent connected") && l.contains(id.as_str()))
                })
                .count();
            if n == 3 { Check::Done(()) } else { not_yet(n) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- server log ---\n{}", tail(&s.log(), 40)));
    wait_ready_nodes(&s, &ids).await;
    // Give the master time to act on anything it would (wrongly) change.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let insts = s
        .client
        .service_instances(&stack, "web")
        .await
        .expect("instances");
    assert!(insts.iter().all(|i| i.is_ready()), "{}", summary(&insts));
    let mut after = BTreeMap::new();
    for (_, id, running) in containers(&stack).await {
        assert!(running, "container {id} is not running");
        after.insert(id.clone(), container_started_at(&id).await);
    }
    assert_eq!(before, after, "containers were replaced or restarted");
    drop(agents);
}
