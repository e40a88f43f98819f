//! Pulls that scale with the cluster (issue 15, acceptance check 2), with the real parts: ten
//! hosts (network namespaces, each with its own Docker engine and `wharf agent`) pull the same
//! 100 MB image at once through their nodes' mirrors; every pull succeeds and the master serves
//! at most twice the image's bytes (the mirrors fetch each blob from a peer that has it, or is
//! fetching it, before asking the master). The time is printed next to the same ten engines
//! pulling the image directly from Debian's `docker-registry` (the reference registry) in the
//! same run. `registry_bench` (ignored; `bench/registry/run`) measures push and pull throughput
//! and small-manifest latency of Wharf's registry against the reference registry.

mod common;
#[path = "common/netcluster.rs"]
mod netcluster;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::docker::{Images, push, rand_nonce, run, stdout};
use common::{Harness, free_port};
use netcluster::Cluster;

const MB: f64 = 1024.0 * 1024.0;

/// Debian's `docker-registry` (the reference registry) on `0.0.0.0:port`, storing under `dir`.
struct Reference {
    child: Child,
    port: u16,
}

impl Reference {
    fn start(dir: &Path) -> Reference {
        let port = free_port();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 0.0.0.0:{port}\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run docker-registry (Debian package docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Reference { child, port }
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An image of `mb` MB of random bytes (incompressible) in one layer and a small second one,
/// tagged `tag`.
fn build_big(dir: &Path, tag: &str, mb: usize) {
    let mut bytes = vec![0u8; mb * 1024 * 1024];
    let mut f = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut f, &mut bytes).unwrap();
    std::fs::write(dir.join("big"), &bytes).unwrap();
    std::fs::write(dir.join("small"), format!("{}\n", rand_nonce())).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY big /big\nCOPY small /small\n",
    )
    .unwrap();
    run(
        "docker",
        &["build", "-q", "-t", tag, &dir.to_string_lossy()],
        &[],
        None,
    );
}

/// `docker login HOST` with `token`, in a config directory of the caller's.
fn login(host: &str, token: &str, config: &Path) {
    let out = run(
        "docker",
        &["login", host, "-u", "x", "--password-stdin"],
        &[("DOCKER_CONFIG", config)],
        Some(token),
    );
    assert!(stdout(&out).contains("Login Succeeded"), "{out:?}");
}

/// The bytes the master has sent nodes' mirrors (`wharf_registry_node_fetch_bytes_total`).
async fn master_sent(c: &Cluster) -> f64 {
    let text = c.client.metrics_text().await.expect("the master's metrics");
    text.lines()
        .find(|l| l.starts_with("wharf_registry_node_fetch_bytes_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The compressed size of the pushed image: what a pull moves (`docker manifest`-free: the
/// registry's manifest lists every blob with its size).
async fn image_bytes(url: &str, token: &str, repo: &str, digest: &str) -> f64 {
    let m: serde_json::Value = reqwest::Client::new()
        .get(format!("{url}/v2/{repo}/manifests/{digest}"))
        .basic_auth("x", Some(token))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let layers: f64 = m["layers"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x["size"].as_f64()).sum())
        .unwrap_or(0.0);
    layers + m["config"]["size"].as_f64().unwrap_or(0.0)
}

/// Every host's engine pulls its own reference of the image at once; the seconds it took, or
/// the first failure.
fn pull_all(c: &Cluster, refs: &[String]) -> Result<f64, String> {
    let started = Instant::now();
    let results: Vec<(usize, std::process::Output)> = std::thread::scope(|s| {
        let pulls: Vec<_> = c
            .hosts
            .iter()
            .zip(refs)
            .map(|(h, r)| {
                let engine = h.engine.as_ref().expect("own engine");
                s.spawn(move || (h.index, engine.cli(&["pull", "-q", r])))
            })
            .collect();
        pulls.into_iter().map(|p| p.join().unwrap()).collect()
    });
    let took = started.elapsed().as_secs_f64();
    for (i, out) in results {
        if !out.status.success() {
            return Err(format!(
                "host {i}'s pull of {} failed: {}",
                refs[i],
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    Ok(took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_nodes_pull_one_image_at_once_and_the_master_serves_it_about_once() {
    const NODES: usize = 10;
    let c = Cluster::start_with_engines(NODES, &["--network-pool", "none"]).await;
    c.wait_nodes_ready(&(0..NODES).collect::<Vec<_>>(), Duration::from_secs(60))
        .await;
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = Reference::start(reference_dir.path());

    // The image, pushed to Wharf's registry and to the reference registry.
    let host = format!("127.0.0.1:{}", c.api_port);
    let repo = "fan/big";
    let tag = format!("{host}/{repo}:1");
    let ref_tag = format!("127.0.0.1:{}/{repo}:1", reference.port);
    let _images = Images(vec![tag.clone(), ref_tag.clone()]);
    let build = tempfile::tempdir().unwrap();
    build_big(build.path(), &tag, 100);
    let docker = tempfile::tempdir().unwrap();
    login(&host, c.client.token(), docker.path());
    let env = [("DOCKER_CONFIG", docker.path())];
    let digest = push(&tag, &env);
    run("docker", &["tag", &tag, &ref_tag], &[], None);
    let ref_digest = push(&ref_tag, &[]);
    let size = image_bytes(&c.url(), c.client.token(), repo, &digest).await;
    assert!(size > 100.0 * MB, "the image moves {size} bytes");

    // The ten engines at once from the reference registry, directly; then the image is removed
    // from every engine again.
    let direct: Vec<String> = (0..NODES)
        .map(|_| format!("{}:{}/{repo}@{ref_digest}", c.net.gateway(), reference.port))
        .collect();
    let from_reference = pull_all(&c, &direct).unwrap_or_else(|e| panic!("{e}"));
    for (h, r) in c.hosts.iter().zip(&direct) {
        let out = h.engine.as_ref().expect("own engine").cli(&["rmi", r]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Ten engines at once through their nodes' mirrors (each on its host's loopback).
    let refs: Vec<String> = c
        .hosts
        .iter()
        .map(|h| {
            let port = std::fs::read_to_string(h.data.join("mirror").join("port"))
                .unwrap_or_else(|e| panic!("host {}: no mirror port: {e}", h.index));
            format!("127.0.0.1:{}/{repo}@{digest}", port.trim())
        })
        .collect();
    let before = master_sent(&c).await;
    let through_mirrors = pull_all(&c, &refs).unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let served = master_sent(&c).await - before;

    eprintln!(
        "fan-out of a {:.1} MB image to {NODES} nodes at once: through the mirrors {through_mirrors:.1} s, \
         the master served {:.1} MB ({:.2}x the image); directly from docker-registry {from_reference:.1} s \
         (it served {NODES}x the image); time ratio mirrors / reference {:.2}",
        size / MB,
        served / MB,
        served / size,
        through_mirrors / from_reference,
    );
    assert!(
        served <= 2.0 * size,
        "the master served {:.1} MB for a {:.1} MB image pulled by {NODES} nodes (at most 2x)",
        served / MB,
        size / MB
    );
}

/// Push and pull throughput and small-manifest latency: Wharf's registry against the reference
/// registry, the same image and client (the machine's engine) in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/registry/run"]
async fn registry_bench() {
    let w = common::Wharf::start().await;
    let reference_dir = tempfile::tempdir().unwrap();
    let reference = Reference::start(reference_dir.path());
    let build = tempfile::tempdir().unwrap();
    let wharf_host = format!("127.0.0.1:{}", w.port);
    let ref_host = format!("127.0.0.1:{}", reference.port);
    let docker = tempfile::tempdir().unwrap();
    login(&wharf_host, w.client.token(), docker.path());
    let env = [("DOCKER_CONFIG", docker.path())];
    let mut rows = vec![];
    for (name, host) in [("wharf", &wharf_host), ("docker-registry", &ref_host)] {
        let tag = format!("{host}/bench/big:{}", rand_nonce());
        let _images = Images(vec![tag.clone()]);
        build_big(build.path(), &tag, 200);
        let t = Instant::now();
        let digest = push(&tag, &env);
        let push_s = t.elapsed().as_secs_f64();
        run("docker", &["rmi", &tag], &[], None);
        // The layers stay in the engine unless the image is gone: pull by digest into a
        // fresh name after removing every reference.
        let t = Instant::now();
        let by_digest = format!("{host}/bench/big@{digest}");
        run("docker", &["pull", "-q", &by_digest], &env, None);
        let pull_s = t.elapsed().as_secs_f64();
        run("docker", &["rmi", &by_digest], &[], None);
        // Small manifests: 200 HEADs by digest, sequential.
        let client = reqwest::Client::new();
        let mut lat = vec![];
        for _ in 0..200 {
            let t = Instant::now();
            let r = client
                .head(format!("http://{host}/v2/bench/big/manifests/{digest}"))
                .basic_auth("x", Some(w.client.token()))
                .header(
                    "accept",
                    "application/vnd.docker.distribution.manifest.v2+json",
                )
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{name}: {}", r.status());
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        rows.push((name, 200.0 / push_s, 200.0 / pull_s, lat[100], lat[198]));
    }
    for (name, push, pull, p50, p99) in &rows {
        eprintln!(
            "{name:16} push {push:7.1} MB/s  pull {pull:7.1} MB/s  manifest HEAD p50 {p50:.2} ms p99 {p99:.2} ms"
        );
    }
    let (w, r) = (&rows[0], &rows[1]);
    eprintln!(
        "ratio wharf / docker-registry: push {:.2}  pull {:.2}  manifest p50 {:.2}",
        w.1 / r.1,
        w.2 / r.2,
        w.3 / r.3
    );
}
