//! Service discovery on one node (`wharf up`): containers resolve the other services of their
//! stack by bare name, `<service>.<stack>` and under the cluster domain, through the DNS server
//! Wharf runs on the stack network's gateway; an unhealthy instance stops resolving; after
//! `kill -9` and a restart of `wharf up`, the running containers resolve names again without
//! being replaced. (Across hosts: `discovery.rs`.)

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use wharf_testkit::{Check, not_yet, wait_for};

fn stack_yaml(stack: &str) -> String {
    let web = Service::testapp("web")
        .default_grace()
        .replicas(2)
        .healthcheck();
    let client = Service::testapp("client")
        .default_grace()
        .env("PORT", "\"8081\"");
    Stack::new(stack).service(web).service(client).yaml()
}

/// `docker exec <id> /testapp ARGS…`: (success, stdout + stderr).
fn exec(id: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("docker")
        .args(["exec", id, "/testapp"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run docker exec");
    let (so, se) = text(&out);
    (out.status.success(), format!("{so}{se}"))
}

fn resolve(id: &str, name: &str) -> BTreeSet<String> {
    let (_, out) = exec(id, &["resolve", name]);
    out.lines()
        .map(str::trim)
        .filter(|l| l.parse::<std::net::Ipv4Addr>().is_ok())
        .map(str::to_string)
        .collect()
}

async fn wait_resolves(w: &Wharf, id: &str, name: &str, want: &BTreeSet<String>, what: &str) {
    wait_for(what, Duration::from_secs(20), || async {
        let got = resolve(id, name);
        anyhow::Ok(if &got == want {
            Check::Done(())
        } else {
            not_yet(got)
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&w.log(), 40)));
}

/// (container id, address) of each running container of a service.
async fn containers_of(stack: &str, service: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, id, running) in containers(stack).await {
        if !running || !name.contains(&format!("-{service}-")) {
            continue;
        }
        let o = std::process::Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &id,
            ])
            .output()
            .expect("docker inspect");
        out.push((id, text(&o).0.trim().to_string()));
    }
    out
}

#[tokio::test]
async fn containers_resolve_their_stack_services_and_only_healthy_instances() {
    let (mut w, stack) = Wharf::start_for("dns").await;
    w.deploy_ready(
        &stack,
        &stack_yaml(&stack),
        "web",
        2,
        Duration::from_secs(60),
    )
    .await;
    w.wait_ready(&stack, "client", 1, Duration::from_secs(60))
        .await;
    let webs = containers_of(&stack, "web").await;
    let clients = containers_of(&stack, "client").await;
    assert_eq!(webs.len(), 2, "{webs:?}");
    let client = clients.first().expect("a client container").0.clone();
    let both: BTreeSet<String> = webs.iter().map(|(_, ip)| ip.clone()).collect();

    for name in [
        "web".to_string(),
        format!("web.{stack}"),
        format!("web.{stack}.wharf.internal"),
    ] {
        wait_resolves(
            &w,
            &client,
            &name,
            &both,
            &format!("{name} to resolve to both web instances"),
        )
        .await;
    }
    let (ok, out) = exec(&client, &["check", "http://web:8080/"]);
    assert!(ok, "http://web:8080/ from the client: {out}");

    // One instance turns unhealthy: it stops resolving; healthy again: it is back.
    let (sick, sick_ip) = webs[0].clone();
    let (ok, out) = exec(&sick, &["post", "http://127.0.0.1:8080/fail-health"]);
    assert!(ok, "fail-health: {out}");
    let rest: BTreeSet<String> = both.iter().filter(|ip| **ip != sick_ip).cloned().collect();
    wait_resolves(
        &w,
        &client,
        "web",
        &rest,
        "web to drop the unhealthy instance",
    )
    .await;
    let (ok, out) = exec(&sick, &["post", "http://127.0.0.1:8080/recover"]);
    assert!(ok, "recover: {out}");
    wait_resolves(&w, &client, "web", &both, "web to resolve to both again").await;

    // kill -9 and restart: the same containers resolve again (the DNS server is back on the
    // network's gateway without any instance being replaced).
    w.kill9();
    w.launch(&[]).await;
    wait_resolves(
        &w,
        &client,
        "web",
        &both,
        "web to resolve after a restart of wharf up",
    )
    .await;
    let after: BTreeSet<String> = containers_of(&stack, "web")
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let before: BTreeSet<String> = webs.into_iter().map(|(id, _)| id).collect();
    assert_eq!(before, after, "no instance was replaced by the restart");
}
