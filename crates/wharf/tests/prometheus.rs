//! Issue 14, check 1 (the part on one machine): a real Prometheus server (Debian `prometheus`)
//! scrapes `wharf up`'s `/metrics` with a bearer token; PromQL counts the running instances of
//! the service and the requests its ingress answered after some load; `promtool check metrics`
//! passes on what it scraped. And in a cluster: the master and two agents (hosts in network
//! namespaces, `--metrics-listen`) scraped together.

mod common;
#[path = "common/netcluster.rs"]
mod netcluster;

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
    start_prometheus_jobs(
        dir,
        &[("wharf", vec![target.to_string()], Some(token_file))],
    )
}

/// Starts Prometheus scraping every second each job (name, targets, the file of its bearer
/// token if it needs one).
fn start_prometheus_jobs(
    dir: &std::path::Path,
    jobs: &[(&str, Vec<String>, Option<&std::path::Path>)],
) -> Prometheus {
    let port = free_port();
    let config = dir.join("prometheus.yml");
    let mut yaml =
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n".to_string();
    for (job, targets, token) in jobs {
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        yaml.push_str(&format!(
            "  - job_name: {job}\n    metrics_path: /metrics\n    static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        ));
        if let Some(token) = token {
            yaml.push_str(&format!(
                "    authorization: {{credentials_file: {}}}\n",
                token.display()
            ));
        }
    }
    std::fs::write(&config, yaml).unwrap();
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

/// `n` requests to `url` (through an ingress), each answered with a success.
async fn load(http: &reqwest::Client, url: &str, n: usize) {
    for i in 0..n {
        let r = http
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} to {url}: {e}"));
        assert!(r.status().is_success(), "request {i}: {}", r.status());
    }
}

/// A token that may read the cluster (a viewer), in a file Prometheus reads: the directory
/// holding it, the token, the file.
fn viewer_token(h: &impl Harness) -> (tempfile::TempDir, String, std::path::PathBuf) {
    let (token, _) = h.cli_code(&["token", "create", "prometheus", "--role", "viewer"], 0);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token.trim()).unwrap();
    (dir, token, token_file)
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
    load(&http, &format!("http://127.0.0.1:{listen}/"), 10).await;
    let (dir, token, token_file) = viewer_token(&w);
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
    promtool_check(&text);
}

/// `promtool check metrics` passes on `text`.
fn promtool_check(text: &str) {
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

/// The value of `query`, waited for until `want` holds.
async fn wait_value(
    http: &reqwest::Client,
    prom: &Prometheus,
    log: &dyn Fn() -> String,
    what: &str,
    q: &str,
    want: impl Fn(f64) -> bool,
) -> f64 {
    wait_for(what, Duration::from_secs(60), || async {
        match query(http, &prom.url, q).await {
            Ok(v) if want(v) => Check::Done(v),
            other => not_yet(format!("{q}: {other:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- prometheus log ---\n{}", tail(&log(), 20)))
}

/// Check 1 in a cluster: Prometheus scrapes the master (with a token) and both agents (their
/// `--metrics-listen`); PromQL counts the running instances per service from the master and
/// from the agents alike, and the requests the ingress of host 0 answered after load.
#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_master_and_two_agents() {
    let metrics_port = free_port();
    let listen_flag = format!("0.0.0.0:{metrics_port}");
    let mut c =
        netcluster::Cluster::start_with_agent_args(2, &["--metrics-listen", &listen_flag]).await;
    // The ingress of host 0 sends requests to the instances (on the engine's bridges).
    c.net.forward_to_containers();
    let stack = unique_stack("promc");
    let listen = free_port();
    let yaml = Stack::new(&stack)
        .service(
            Service::testapp("web")
                .replicas(4)
                .healthcheck()
                .extra(&format!(
                    "    x-wharf:\n      ingress:\n        - port: 8080\n          listen: {listen}\n"
                )),
        )
        .service(Service::testapp("api").replicas(2).healthcheck())
        .yaml();
    c.deploy_ready(&stack, &yaml, "web", 4, Duration::from_secs(90))
        .await;
    c.wait_ready(&stack, "api", 2, Duration::from_secs(60))
        .await;
    let http = reqwest::Client::new();
    let entry = format!("http://{}:{listen}/", c.host_ip(0));
    // The ingress of host 0 takes its routes from the next desired state: wait until it answers.
    wait_for(
        "the ingress of host 0 to answer",
        Duration::from_secs(30),
        || async {
            match http
                .get(&entry)
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => Check::Done(()),
                other => not_yet(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    load(&http, &entry, 20).await;
    let (dir, token, token_file) = viewer_token(&c);
    let agents: Vec<String> = (0..2)
        .map(|i| format!("{}:{metrics_port}", c.host_ip(i)))
        .collect();
    let prom = start_prometheus_jobs(
        dir.path(),
        &[
            (
                "master",
                vec![format!("127.0.0.1:{}", c.api_port)],
                Some(&token_file),
            ),
            ("agents", agents.clone(), None),
        ],
    );
    let log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();

    wait_value(&http, &prom, &log, "all three targets up", "sum(up)", |v| {
        v == 3.0
    })
    .await;
    for (service, n) in [("web", 4.0), ("api", 2.0)] {
        let from_master = format!(
            "sum(wharf_instances{{job=\"master\",stack=\"{stack}\",service=\"{service}\",state=\"running\"}})"
        );
        wait_value(
            &http,
            &prom,
            &log,
            &format!("the master to count {n} running {service}"),
            &from_master,
            |v| v == n,
        )
        .await;
        let from_agents = format!(
            "sum(wharf_agent_instances{{job=\"agents\",stack=\"{stack}\",service=\"{service}\",state=\"running\"}})"
        );
        wait_value(
            &http,
            &prom,
            &log,
            &format!("the agents to count {n} running {service}"),
            &from_agents,
            |v| v == n,
        )
        .await;
    }
    // The deploy that started them ended, counted and timed by outcome.
    wait_value(
        &http,
        &prom,
        &log,
        "the master to count a succeeded deployment and its duration",
        "sum(wharf_deployments_total{job=\"master\",outcome=\"succeeded\"}) \
         * sum(wharf_deployment_duration_seconds_count{job=\"master\",outcome=\"succeeded\"})",
        |v| v >= 1.0,
    )
    .await;
    // Both agents run some: the instances are spread.
    let per_agent = format!(
        "count(sum by (instance) (wharf_agent_instances{{stack=\"{stack}\",state=\"running\"}}) > 0)"
    );
    wait_value(
        &http,
        &prom,
        &log,
        "instances on both agents",
        &per_agent,
        |v| v == 2.0,
    )
    .await;
    let answered = format!(
        "sum(wharf_ingress_requests_total{{job=\"agents\",instance=\"{}\",service=\"{stack}.web\",status=\"200\"}})",
        agents[0]
    );
    wait_value(
        &http,
        &prom,
        &log,
        "the ingress of host 0 to count the requests",
        &answered,
        |v| v >= 20.0,
    )
    .await;
    wait_value(
        &http,
        &prom,
        &log,
        "the agents' link connections",
        "sum(wharf_agent_link_connections_total)",
        |v| v >= 2.0,
    )
    .await;
    // The engine's statistics of every instance, from the agents that run them.
    let sampled =
        format!("count(wharf_instance_memory_usage_bytes{{job=\"agents\",stack=\"{stack}\"}} > 0)");
    wait_value(
        &http,
        &prom,
        &log,
        "memory figures of the 6 instances",
        &sampled,
        |v| v == 6.0,
    )
    .await;
    let received = format!(
        "sum(wharf_instance_network_receive_bytes_total{{job=\"agents\",stack=\"{stack}\",service=\"web\"}})"
    );
    wait_value(
        &http,
        &prom,
        &log,
        "bytes received by web's instances",
        &received,
        |v| v > 0.0,
    )
    .await;

    // Every endpoint passes promtool.
    let master = http
        .get(format!("{}/metrics", c.url()))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    promtool_check(&master);
    for a in &agents {
        let text = http
            .get(format!("http://{a}/metrics"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET http://{a}/metrics: {e}"))
            .text()
            .await
            .unwrap();
        assert!(text.contains("wharf_agent_instances"), "agent {a}:\n{text}");
        promtool_check(&text);
    }
}
