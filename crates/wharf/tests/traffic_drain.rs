//! Check 3 of the traffic issue on a cluster (`common/netcluster.rs`: hosts are network
//! namespaces, every agent runs the ingress): at least 50,000 requests through the ingress of
//! one host (wrk, keep-alive and new connections, see `common/load.rs`) while another host with
//! instances of the 10-instance service is drained: no request fails, and the drained node ends
//! with no instance.

mod common;
#[path = "common/load.rs"]
mod load;
#[path = "common/netcluster.rs"]
mod netcluster;

use std::time::{Duration, Instant};

use common::*;
use load::Load;
use netcluster::{Cluster, Harness, web_stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_drain_under_load_fails_no_request() {
    let mut c = Cluster::start(3, &[]).await;
    // The ingress of one host sends requests to the instances on all of them.
    c.net.forward_to_containers();
    let stack = unique_stack("trafficdrain");
    let listen = free_port();
    let extra = format!(
        "    x-wharf:\n      drain_grace: 1s\n      ingress:\n        - port: 8080\n          listen: {listen}\n"
    );
    // The drain relocates `parallelism` instances at a time.
    let update = "      update_config:\n        parallelism: 2\n";
    let yaml = web_stack(&stack, 10, update, &extra);
    let insts = c
        .deploy_ready(&stack, &yaml, "web", 10, Duration::from_secs(90))
        .await;
    let per_host = c.per_host(&insts);
    // Load through host 0; drain the other host with the most instances.
    let entry = 0;
    let victim = (1..3)
        .max_by_key(|h| per_host.get(h).copied().unwrap_or(0))
        .expect("a host");
    let victim_id = c.node_id(victim);
    assert!(
        per_host.get(&victim).copied().unwrap_or(0) > 0,
        "the drained host runs instances: {per_host:?}"
    );
    let url = format!("http://{}:{listen}/", c.host_ip(entry));
    let hostnames = format!("http://{}:{listen}/env/HOSTNAME", c.host_ip(entry));
    load::wait_all_answer(
        &hostnames,
        10,
        "all 10 instances to answer through the ingress of host 0",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));

    let load = Load::start(&url);
    let started = Instant::now();
    let name = c.hosts[victim].name.clone();
    let (so, se) = c
        .cli_code_async(&["node", "drain", &name, "--timeout", "90s"], 0)
        .await;
    let took = started.elapsed();
    let figures = load.finish().await;
    eprintln!(
        "draining {name} ({per_host:?} instances per host) took {took:?}: {so}{se}; load: {figures}"
    );
    assert_eq!(
        figures.failed(),
        0,
        "no request failed during the drain of {name} ({took:?}): {figures}\n{}",
        c.logs()
    );
    let n = c.client.get_node(&victim_id).await.expect("node");
    assert_eq!(n.instances, 0, "the drained node has no instance: {n:?}");
    c.wait_ready_off(&stack, 10, &victim_id, Duration::from_secs(30))
        .await;
    let what = "the drained node's containers to stop";
    c.wait_none_running_on(&stack, &victim_id, what, "").await;
}
