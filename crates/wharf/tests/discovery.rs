//! Service discovery and cross-host container networking (acceptance check 5 of the traffic
//! issue), on hosts that each run their own Docker engine in their own network namespace (so
//! nothing but Wharf connects containers on different hosts): a container of one service reaches
//! another service of its stack by its bare name, on its own host and across hosts, and stops
//! resolving an instance once that instance is unhealthy.

mod common;
#[path = "common/netcluster.rs"]
mod netcluster;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Service, Stack, unique_stack};
use netcluster::{Cluster, Harness};
use wharf_testkit::{Check, not_yet, wait_for};

fn stack_yaml(stack: &str, listen: u16) -> String {
    let one_per_node = "      placement:\n        max_replicas_per_node: 1\n";
    let web = Service::testapp("web")
        .default_grace()
        .env("VERSION", "web")
        .replicas(2)
        .deploy(one_per_node)
        .healthcheck()
        .extra(&format!(
            "    x-wharf:\n      ingress:\n        - port: 8080\n          listen: {listen}\n"
        ));
    let client = Service::testapp("client")
        .default_grace()
        .env("PORT", "\"8081\"")
        .replicas(2)
        .deploy(one_per_node);
    Stack::new(stack).service(web).service(client).yaml()
}

/// One container of a service on host `i`: (id, address on the stack network).
fn container(c: &Cluster, i: usize, stack: &str, service: &str) -> Option<(String, String)> {
    c.container_on(i, stack, service)
}

/// `docker exec <id> /testapp ARGS…` on host `i`: (success, stdout + stderr).
fn exec(c: &Cluster, i: usize, id: &str, args: &[&str]) -> (bool, String) {
    c.exec_on(i, id, args)
}

/// What `name` resolves to inside container `id` on host `i` (empty: nothing).
fn resolve(c: &Cluster, i: usize, id: &str, name: &str) -> BTreeSet<String> {
    let (_, out) = exec(c, i, id, &["resolve", name]);
    out.lines()
        .map(str::trim)
        .filter(|l| l.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
        .collect()
}

/// Wait until `name` resolves to exactly `want` inside container `id` on host `i`.
async fn wait_resolves(
    c: &Cluster,
    i: usize,
    id: &str,
    name: &str,
    want: &BTreeSet<String>,
    what: &str,
) {
    wait_for(what, Duration::from_secs(20), || async {
        let got = resolve(c, i, id, name);
        anyhow::Ok(if &got == want {
            Check::Done(())
        } else {
            not_yet(got)
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

fn subnet24(ip: &str) -> String {
    ip.rsplit_once('.')
        .map(|(net, _)| net.to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn services_find_each_other_by_name_across_hosts_and_only_while_healthy() {
    let mut c = Cluster::start_with_engines(2, &[]).await;
    let stack = unique_stack("disco");
    let listen = wharf_testkit::free_port();
    let file = c.stack_file(&stack, &stack_yaml(&stack, listen));
    c.deploy(&file, 0);
    c.wait_ready(&stack, "web", 2, Duration::from_secs(90))
        .await;
    c.wait_ready(&stack, "client", 2, Duration::from_secs(90))
        .await;

    let find = |i: usize, service: &str| {
        container(&c, i, &stack, service)
            .unwrap_or_else(|| panic!("no {service} container on host {i}\n{}", c.logs()))
    };
    let (web0, web0_ip) = find(0, "web");
    let (web1, web1_ip) = find(1, "web");
    let (client0, _) = find(0, "client");
    let (client1, _) = find(1, "client");
    // Each host's containers live in the stack's subnet for that host, out of the default pool.
    assert_ne!(
        subnet24(&web0_ip),
        subnet24(&web1_ip),
        "each host has its own subnet of the stack ({web0_ip}, {web1_ip})"
    );
    for ip in [&web0_ip, &web1_ip] {
        let second: u8 = ip
            .split('.')
            .nth(1)
            .and_then(|o| o.parse().ok())
            .unwrap_or(0);
        assert!(
            ip.starts_with("10.") && (64..128).contains(&second),
            "{ip} is in the network pool 10.64.0.0/10"
        );
    }
    let both: BTreeSet<String> = [web0_ip.clone(), web1_ip.clone()].into();

    // By bare name, by <service>.<stack> and under the cluster domain, from both hosts: every
    // healthy instance, wherever it runs.
    for (i, client) in [(0, &client0), (1, &client1)] {
        for name in [
            "web".to_string(),
            format!("web.{stack}"),
            format!("web.{stack}.wharf.internal"),
        ] {
            let what = format!("{name} to resolve to both web instances from host {i}");
            wait_resolves(&c, i, client, &name, &both, &what).await;
        }
    }
    // Reachable by name and at each address, on the same host and across hosts.
    for (i, client) in [(0, &client0), (1, &client1)] {
        for url in [
            "http://web:8080/".to_string(),
            format!("http://{web0_ip}:8080/"),
            format!("http://{web1_ip}:8080/"),
        ] {
            let (ok, out) = exec(&c, i, client, &["check", &url]);
            assert!(ok, "{url} from the client on host {i}: {out}\n{}", c.logs());
        }
    }

    // The ingress of each host reaches the instances of both hosts (the remote one through the
    // route to its host): every instance answers with its own container host name.
    // (Docker sets HOSTNAME to the short container id.)
    let want: BTreeSet<String> = [&web0, &web1]
        .iter()
        .map(|id| id[..12].to_string())
        .collect();
    let http = reqwest::Client::new();
    for i in 0..2 {
        let url = format!("http://{}:{listen}/env/HOSTNAME", c.host_ip(i));
        wait_for(
            &format!("the ingress of host {i} to reach both web instances"),
            Duration::from_secs(20),
            || async {
                let mut seen = BTreeSet::new();
                for _ in 0..8 {
                    if let Ok(r) = http.get(&url).send().await
                        && r.status().is_success()
                    {
                        seen.insert(r.text().await.unwrap_or_default().trim().to_string());
                    }
                }
                anyhow::Ok(if seen == want {
                    Check::Done(())
                } else {
                    not_yet(seen)
                })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }

    // web on host 1 turns unhealthy: it stops resolving, on both hosts; the other still does.
    let (ok, out) = exec(&c, 1, &web1, &["post", "http://127.0.0.1:8080/fail-health"]);
    assert!(ok, "fail-health: {out}");
    for (i, client) in [(0, &client0), (1, &client1)] {
        let what = format!("web to resolve to the healthy instance only, from host {i}");
        let healthy = BTreeSet::from([web0_ip.clone()]);
        wait_resolves(&c, i, client, "web", &healthy, &what).await;
    }
    // It recovers: it resolves again.
    let (ok, out) = exec(&c, 1, &web1, &["post", "http://127.0.0.1:8080/recover"]);
    assert!(ok, "recover: {out}");
    let what = "web to resolve to both instances again once web on host 1 recovered";
    wait_resolves(&c, 0, &client0, "web", &both, what).await;

    // Names outside the cluster are not ours: a made-up one fails (forwarded, not invented).
    let got = resolve(&c, 0, &client0, "no-such-service");
    assert!(
        got.is_empty(),
        "an unknown bare name resolves to nothing: {got:?}"
    );
}
