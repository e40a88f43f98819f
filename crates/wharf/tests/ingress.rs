//! The ingress end to end on the real engine: `wharf up` runs the node's ingress proxy, which
//! follows the routing table the master publishes. A 3-replica service behind it answers
//! round robin, an instance that turns unhealthy stops getting traffic, and an update ends with
//! only the new version answering.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use wharf_testkit::{Check, not_yet, wait_for};
use wharf_types::InstanceInfo;

fn stack_yaml(stack: &str, version: &str, listen: u16) -> String {
    let web = Service::testapp("web")
        .replicas(3)
        .deploy("      update_config:\n        parallelism: 3\n")
        .env("VERSION", version)
        .healthcheck()
        .extra(&ingress(listen));
    Stack::new(stack).service(web).yaml()
}

/// `x-wharf:` with the ingress of port 8080 on 127.0.0.1:`listen`.
fn ingress(listen: u16) -> String {
    format!(
        "    x-wharf:\n      ingress:\n        - port: 8080\n          listen: {listen}\n          listen_address: 127.0.0.1\n"
    )
}

/// `wharf up` with 3 ready instances of `web` (v1) behind the ingress on 127.0.0.1:`listen`;
/// the stack's name, the port and the instances.
async fn start_behind_ingress(prefix: &str) -> (Wharf, String, u16, Vec<InstanceInfo>) {
    let (mut w, stack) = Wharf::start_for(prefix).await;
    let listen = free_port();
    let yaml = stack_yaml(&stack, "v1", listen);
    let insts = w
        .deploy_ready(&stack, &yaml, "web", 3, Duration::from_secs(30))
        .await;
    (w, stack, listen, insts)
}

/// GET `url`: (status, trimmed body), or why not.
async fn get(http: &reqwest::Client, url: &str) -> Result<(u16, String), String> {
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    Ok((status, body.trim().to_string()))
}

/// `n` requests in a row; the bodies, or the first failure.
async fn burst(http: &reqwest::Client, url: &str, n: usize) -> Result<Vec<String>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        match get(http, url).await? {
            (200, body) => out.push(body),
            (status, body) => return Err(format!("{status}: {body}")),
        }
    }
    Ok(out)
}

fn counts(bodies: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for b in bodies {
        *m.entry(b.clone()).or_default() += 1;
    }
    m
}

/// The container's IP on its stack network and its hostname (what `/env/HOSTNAME` answers).
async fn container_addr(id: &str, stack: &str) -> (String, String) {
    let docker = wharf_testkit::docker().await.expect("docker");
    let c = docker
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap_or_else(|e| panic!("inspect container {id}: {e}"));
    let ip = c
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|n| n.get(&format!("wharf_{stack}")).cloned())
        .and_then(|n| n.ip_address)
        .expect("an address on the stack network");
    let hostname = c.config.and_then(|c| c.hostname).expect("a hostname");
    (ip, hostname)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ingress_balances_skips_unhealthy_instances_and_follows_updates() {
    let (mut w, stack, listen, insts) = start_behind_ingress("ingress").await;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let base = format!("http://127.0.0.1:{listen}");
    let hostnames = format!("{base}/env/HOSTNAME");
    let log = |w: &Wharf| tail(&w.log(), 30);

    // Round robin over the three instances: 9 requests in a row spread 3/3/3 (once the table
    // has all three endpoints).
    wait_for(
        "9 requests through the ingress spread 3/3/3 over the instances",
        Duration::from_secs(15),
        || async {
            match burst(&http, &hostnames, 9).await {
                Ok(b) if counts(&b).len() == 3 && counts(&b).values().all(|n| *n == 3) => {
                    Check::Done(())
                }
                Ok(b) => not_yet(counts(&b)),
                Err(e) => not_yet(e),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- wharf up log ---\n{}", log(&w)));

    // One instance turns unhealthy: it gets no more traffic.
    let victim = insts[0].container_id.clone().expect("a container id");
    let (ip, victim_host) = container_addr(&victim, &stack).await;
    let r = http
        .post(format!("http://{ip}:8080/fail-health"))
        .send()
        .await
        .expect("fail-health sent to the instance directly");
    assert_eq!(r.status().as_u16(), 200);
    let left = wait_for(
        "50 requests in a row that never reach the unhealthy instance",
        Duration::from_secs(20),
        || async {
            match burst(&http, &hostnames, 50).await {
                Ok(b) if !b.contains(&victim_host) => Check::Done(counts(&b)),
                Ok(b) => not_yet(counts(&b)),
                Err(e) => not_yet(e),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- wharf up log ---\n{}", log(&w)));
    assert!(
        left.len() >= 2,
        "the two healthy instances share the traffic: {left:?}"
    );

    // An update: only the new version answers in the end.
    let file = w.stack_file(&stack, &stack_yaml(&stack, "v2", listen));
    w.cli_code_async(&["stack", "deploy", "-c", utf8(&file)], 0)
        .await;
    wait_for(
        "only v2 answering through the ingress",
        Duration::from_secs(20),
        || async {
            match burst(&http, &base, 30).await {
                Ok(b) if b.iter().all(|v| v == "v2") => Check::Done(()),
                Ok(b) => not_yet(counts(&b)),
                Err(e) => not_yet(e),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- wharf up log ---\n{}", log(&w)));
}

/// Scaling down drains the instances it removes (the master marks them draining, the ingress
/// sends them nothing new, they stop after the drain grace): a client looping through the
/// ingress meanwhile sees no failed request.
#[tokio::test(flavor = "multi_thread")]
async fn a_scale_down_through_the_ingress_fails_no_request() {
    let (w, stack, listen, _) = start_behind_ingress("ingscale").await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let hostnames = format!("http://127.0.0.1:{listen}/env/HOSTNAME");
    // Until a burst of requests sees `n` instances answer.
    let serving = |n: usize, what: &'static str, timeout: u64| {
        let (http, hostnames, w) = (&http, &hostnames, &w);
        async move {
            wait_for(what, Duration::from_secs(timeout), || async {
                match burst(http, hostnames, 10).await {
                    Ok(b) if counts(&b).len() == n => Check::Done(()),
                    Ok(b) => not_yet(counts(&b)),
                    Err(e) => not_yet(e),
                }
            })
            .await
            .unwrap_or_else(|e| panic!("{e}\n--- wharf up log ---\n{}", tail(&w.log(), 30)));
        }
    };
    serving(3, "all 3 instances behind the ingress", 15).await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (http, url, stop) = (http.clone(), hostnames.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match get(&http, &url).await {
                    Ok((200, _)) => ok += 1,
                    Ok((status, body)) => failed.push(format!("{status}: {body}")),
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        })
    };
    w.client
        .scale_service(&stack, "web", 1)
        .await
        .expect("scale to 1");
    serving(1, "one instance left behind the ingress", 20).await;
    w.wait_ready(&stack, "web", 1, Duration::from_secs(20))
        .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = client.await.expect("client loop");
    assert!(
        failed.is_empty(),
        "requests failed while scaling down ({ok} answered): {failed:?}"
    );
    assert!(ok > 20, "the client kept going: {ok} answers");
}
