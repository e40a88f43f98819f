//! Issue 14, check 1 (the part on one machine): a real Prometheus server (Debian `prometheus`)
//! scrapes `wharf up`'s `/metrics` with a bearer token; PromQL counts the running instances of
//! the service and the requests its ingress answered after some load; `promtool check metrics`
//! passes on what it scraped.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use wharf_testkit::{Check, not_yet, wait_for};

/// The Prometheus server, killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus scraping `target` every second with the token in `token_file`.
fn start_prometheus(
    dir: &std::path::Path,
    target: &str,
    token_file: &std::path::Path,
) -> Prometheus {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: wharf\n    metrics_path: /metrics\n\
             \x20   authorization: {{credentials_file: {}}}\n\
             \x20   static_configs: [{{targets: ['{target}']}}]\n",
            token_file.display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start prometheus ({e}): install it with `apt-get install prometheus`")
        });
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// The value of the PromQL `query` (a single-sample vector), if it has one.
async fn query(http: &reqwest::Client, url: &str, query: &str) -> Result<f64, String> {
    let v: serde_json::Value = http
        .get(format!("{url}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    v["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no sample: {v}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_counts_running_instances_and_ingress_requests() {
    let (mut w, stack) = Wharf::start_for("prom").await;
    let listen = free_port();
    let web = Service::testapp("web").replicas(2).healthcheck().extra(&format!(
        "    x-wharf:\n      ingress:\n        - port: 8080\n          listen: {listen}\n          listen_address: 127.0.0.1\n"
    ));
    let yaml = Stack::new(&stack).service(web).yaml();
    w.deploy_ready(&stack, &yaml, "web", 2, Duration::from_secs(60))
        .await;
    let http = reqwest::Client::new();
    for i in 0..10 {
        let r = http
            .get(format!("http://127.0.0.1:{listen}/"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} through the ingress: {e}"));
        assert!(r.status().is_success(), "request {i}: {}", r.status());
    }

    // A token that may read the cluster (a viewer), in a file Prometheus reads.
    let (token, _) = w.cli_code(&["token", "create", "prometheus", "--role", "viewer"], 0);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token.trim()).unwrap();
    let prom = start_prometheus(dir.path(), &format!("127.0.0.1:{}", w.port), &token_file);
    let log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    let running =
        format!("sum(wharf_instances{{stack=\"{stack}\",service=\"web\",state=\"running\"}})");
    wait_for(
        "Prometheus to count 2 running instances of web",
        Duration::from_secs(60),
        || async {
            match query(&http, &prom.url, &running).await {
                Ok(2.0) => Check::Done(()),
                other => not_yet(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- prometheus log ---\n{}", tail(&log(), 20)));
    let answered =
        format!("sum(wharf_ingress_requests_total{{service=\"{stack}.web\",status=\"200\"}})");
    let n = query(&http, &prom.url, &answered)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        n >= 10.0,
        "the ingress answered {n} requests, at least 10 were sent"
    );
    let up = query(&http, &prom.url, "up{job=\"wharf\"}").await.unwrap();
    assert_eq!(up, 1.0, "the scrape succeeds");

    // What Prometheus scraped passes promtool.
    let text = http
        .get(format!("{}/metrics", w.url()))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
