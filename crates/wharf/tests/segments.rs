//! Segments (issue 12, check 3), on two hosts that each run their own Docker engine: services
//! `a`, `b` on network `front`, `b`, `c` on `back`, `d` alone on an `internal: true` network, one
//! instance of each on each host. a reaches b, not c; c reaches b, not a; d reaches nothing
//! outside its network; a container of another stack reaches none of them, except the one path
//! `allow_from` opens (its `x` to `c`). Each "cannot" is a refused or timed-out TCP connect, and
//! the name does not resolve; b's alias `db` on `back` resolves for c, not for a.

mod common;
#[path = "common/netcluster.rs"]
mod netcluster;

use std::time::Duration;

use common::{Service, Stack, unique_stack};
use netcluster::{Cluster, Harness};
use wharf_testkit::{Check, not_yet, wait_for};

const ONE_PER_NODE: &str = "      placement:\n        max_replicas_per_node: 1\n";

fn on(name: &str, networks: &str, more: &str) -> Service {
    Service::testapp(name)
        .default_grace()
        .replicas(2)
        .deploy(ONE_PER_NODE)
        .extra(&format!("    networks: {networks}\n{more}"))
}

fn segmented(stack: &str, other: &str) -> String {
    let y = Stack::new(stack)
        .service(on("a", "[front]", ""))
        .service(on("b", "\n      front:\n      back: {aliases: [db]}", ""))
        .service(on(
            "c",
            "[back]",
            &format!("    x-wharf:\n      allow_from: [{other}/x]\n"),
        ))
        .service(on("d", "[inner]", ""))
        .yaml();
    format!("{y}networks:\n  front: {{}}\n  back: {{}}\n  inner: {{internal: true}}\n")
}

fn other(stack: &str) -> String {
    let one = |n: &str| {
        Service::testapp(n)
            .default_grace()
            .replicas(2)
            .deploy(ONE_PER_NODE)
    };
    Stack::new(stack).service(one("x")).service(one("y")).yaml()
}

/// What one probe saw: reached (HTTP answered), or how it failed.
fn reach(c: &Cluster, host: usize, from: &str, url: &str) -> Result<(), String> {
    let (ok, out) = c.exec_on(host, from, &["check", url]);
    if ok {
        Ok(())
    } else {
        Err(out.trim().to_string())
    }
}

/// A cannot: a refused or timed-out connect (not some other failure).
fn refused(r: &Result<(), String>) -> bool {
    matches!(r, Err(e) if e.contains("cannot connect"))
}

/// Each host's firewall, for a failure's message.
fn firewalls(c: &Cluster) -> String {
    (0..2)
        .map(|h| {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &c.hosts[h].ns, "iptables-save"])
                .output()
                .expect("iptables");
            format!(
                "--- host {h} iptables ---\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
        .collect()
}

#[tokio::test]
async fn services_reach_only_who_shares_a_network_and_what_allow_from_opens() {
    let mut c = Cluster::start_with_engines(2, &[]).await;
    let (stack, mon) = (unique_stack("seg"), unique_stack("mon"));
    let file = c.stack_file(&mon, &other(&mon));
    c.deploy(&file, 0);
    let file = c.stack_file(&stack, &segmented(&stack, &mon));
    c.deploy(&file, 0);
    let services = [
        (&stack, "a"),
        (&stack, "b"),
        (&stack, "c"),
        (&stack, "d"),
        (&mon, "x"),
        (&mon, "y"),
    ];
    for (st, svc) in services {
        c.wait_ready(st, svc, 2, Duration::from_secs(120)).await;
    }
    let ctr = |host: usize, st: &str, svc: &str| {
        c.container_on(host, st, svc)
            .unwrap_or_else(|| panic!("no {svc} of {st} on host {host}\n{}", c.logs()))
    };
    let mut ip = std::collections::BTreeMap::new();
    let mut id = std::collections::BTreeMap::new();
    for host in 0..2 {
        for (st, svc) in services {
            let (i, addr) = ctr(host, st, svc);
            id.insert((host, svc), i);
            ip.insert((host, svc), addr);
        }
    }
    // Every (caller on host 0, callee on host 0 or 1) pair and whether it may connect.
    let matrix: Vec<(&str, &str, bool)> = vec![
        ("a", "b", true),
        ("a", "c", false),
        ("c", "b", true),
        ("c", "a", false),
        ("b", "a", true),
        ("b", "c", true),
        ("d", "a", false),
        ("d", "b", false),
        ("a", "d", false),
        ("x", "c", true),
        ("x", "a", false),
        ("x", "b", false),
        ("x", "d", false),
        ("y", "c", false),
    ];
    let gateway = c.net.gateway();
    let outside = format!("http://{gateway}:{}/", c.agent_port);
    wait_for(
        "the segment matrix to hold, from host 0 to both hosts",
        Duration::from_secs(60),
        || async {
            let mut wrong = Vec::new();
            std::thread::scope(|s| {
                let probes: Vec<_> = matrix
                    .iter()
                    .flat_map(|&(from, to, may)| (0..2).map(move |h| (from, to, h, may)))
                    .map(|(from, to, h, may)| {
                        let url = format!("http://{}:8080/", ip[&(h, to)]);
                        let caller = id[&(0, from)].clone();
                        let c = &c;
                        (
                            from,
                            to,
                            h,
                            may,
                            s.spawn(move || reach(c, 0, &caller, &url)),
                        )
                    })
                    .collect();
                for (from, to, h, may, p) in probes {
                    let r = p.join().expect("probe");
                    if may != r.is_ok() || (!may && !refused(&r)) {
                        wrong.push(format!("{from} -> {to} on host {h}: {r:?}"));
                    }
                }
            });
            // d has no way out: the master's agent port on the hosts' network takes no
            // connection from it, while a's connection gets through (and fails as HTTP).
            let from_d = reach(&c, 0, &id[&(0, "d")], &outside);
            let from_a = reach(&c, 0, &id[&(0, "a")], &outside);
            if !refused(&from_d) || refused(&from_a) {
                wrong.push(format!("outside: d {from_d:?}, a {from_a:?}"));
            }
            anyhow::Ok(if wrong.is_empty() {
                Check::Done(())
            } else {
                not_yet(wrong)
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", firewalls(&c), c.logs()));

    // Names: only what the asker may reach resolves.
    let resolves = |host: usize, from: &str, name: &str| {
        let (_, out) = c.exec_on(host, &id[&(host, from)], &["resolve", name]);
        out.lines()
            .any(|l| l.trim().parse::<std::net::Ipv4Addr>().is_ok())
    };
    let names: Vec<(&str, String, bool)> = vec![
        ("a", "b".into(), true),
        ("a", "c".into(), false),
        ("c", "a".into(), false),
        ("c", "db".into(), true),
        ("a", "db".into(), false),
        ("d", "b".into(), false),
        ("x", format!("c.{stack}"), true),
        ("x", format!("a.{stack}"), false),
        ("y", format!("c.{stack}"), false),
    ];
    wait_for(
        "names to resolve exactly for who may reach them",
        Duration::from_secs(30),
        || async {
            let wrong: Vec<String> = names
                .iter()
                .filter(|(from, name, may)| resolves(0, from, name) != *may)
                .map(|(from, name, may)| format!("{from} resolving {name}: expected {may}"))
                .collect();
            anyhow::Ok(if wrong.is_empty() {
                Check::Done(())
            } else {
                not_yet(wrong)
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}
