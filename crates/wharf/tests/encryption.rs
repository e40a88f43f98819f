//! Encrypted container traffic between hosts (issue 12, checks 1 and 2), on hosts that each run
//! their own Docker engine in their own network namespace: a capture on the link between the two
//! hosts while a container on one fetches a page with a known marker from a container on the
//! other shows only WireGuard (UDP) packets and never the marker; with `--encryption off` the
//! marker is on the wire (so the check can fail). After `wharf node rm` of a host, its old key
//! reaches no container on the others.

mod common;
#[path = "common/netcluster.rs"]
mod netcluster;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Service, Stack, unique_stack};
use netcluster::{Cluster, Harness};
use wharf_testkit::{Check, not_yet, wait_for};

/// `web` (with the marker in its environment) and `client`, one of each per host.
fn stack_yaml(stack: &str, marker: &str) -> String {
    let one_per_node = "      placement:\n        max_replicas_per_node: 1\n";
    let web = Service::testapp("web")
        .default_grace()
        .env("MARKER", marker)
        .replicas(2)
        .deploy(one_per_node)
        .healthcheck();
    let client = Service::testapp("client")
        .default_grace()
        .env("PORT", "\"8081\"")
        .replicas(2)
        .deploy(one_per_node);
    Stack::new(stack).service(web).service(client).yaml()
}

/// A packet capture of the traffic between two addresses on an interface, written to `file`.
struct Capture {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStderr>>,
}

impl Capture {
    /// Start `tcpdump` with `filter` and wait until it listens. Immediate mode: each packet is
    /// written as it comes (else a stop within the buffer timeout writes none).
    fn start(iface: &str, filter: &str, file: &Path) -> Capture {
        let mut child = Command::new("tcpdump")
            .args(["-i", iface, "--immediate-mode", "-U", "-n", "-w"])
            .arg(file)
            .arg(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tcpdump (Debian: apt install tcpdump)");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut said = String::new();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("listening on") => break,
                Some(Ok(l)) => said.push_str(&l),
                _ => panic!("tcpdump did not start listening on {iface}: {said}"),
            }
        }
        Capture { child, lines }
    }

    /// Stop it as an operator would (SIGINT: it writes out what it holds); what it said.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.lines
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Each captured packet as tshark sees it: "IP protocol number, UDP destination port".
fn packets(file: &Path) -> Vec<String> {
    let out = Command::new("tshark")
        .args(["-r"])
        .arg(file)
        .args(["-T", "fields", "-e", "ip.proto", "-e", "udp.dstport"])
        .stdin(Stdio::null())
        .output()
        .expect("run tshark (Debian: apt install tshark)");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// Whether `needle` occurs in the bytes of `file`.
fn holds(file: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(file).expect("read the capture");
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Wait until `node ls -o json` says `want` of every node's encryption.
async fn wait_encryption(c: &Cluster, want: &str) {
    wait_for(
        &format!("every node's encryption to be {want}"),
        Duration::from_secs(30),
        || async {
            let nodes = c.client.list_nodes().await?;
            let states: Vec<String> = nodes.iter().map(|n| n.encryption.clone()).collect();
            anyhow::Ok(if states.iter().all(|s| s.starts_with(want)) {
                Check::Done(())
            } else {
                not_yet(states)
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

/// Deploy the stack; (web's id and address on host 1, client's id on host 0), once the client
/// reaches web across the hosts.
async fn deploy(c: &mut Cluster, marker: &str) -> (String, String, String) {
    let stack = unique_stack("enc");
    let file = c.stack_file(&stack, &stack_yaml(&stack, marker));
    c.deploy(&file, 0);
    c.wait_ready(&stack, "web", 2, Duration::from_secs(90))
        .await;
    c.wait_ready(&stack, "client", 2, Duration::from_secs(90))
        .await;
    let (web1, web1_ip) = c
        .container_on(1, &stack, "web")
        .unwrap_or_else(|| panic!("no web container on host 1\n{}", c.logs()));
    let (client0, _) = c
        .container_on(0, &stack, "client")
        .unwrap_or_else(|| panic!("no client container on host 0\n{}", c.logs()));
    let url = format!("http://{web1_ip}:8080/env/MARKER");
    wait_for(
        "the client on host 0 to reach web on host 1",
        Duration::from_secs(30),
        || async {
            let (ok, out) = c.exec_on(0, &client0, &["check", &url]);
            anyhow::Ok(if ok { Check::Done(()) } else { not_yet(out) })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    (web1, web1_ip, client0)
}

/// Fetch the marker page across the hosts five times under a capture of the link between them.
fn capture_fetches(c: &Cluster, web1_ip: &str, client0: &str, file: &Path) {
    // On host 0's link to the bridge (the bridge device itself sees only its own traffic):
    // everything but ARP and the agent's stream to the master. In the clear, container packets
    // carry the containers' own addresses, so no filter on the hosts' addresses.
    let filter = format!("ip and not host {}", c.net.gateway());
    let capture = Capture::start(&c.net.veths[0], &filter, file);
    let url = format!("http://{web1_ip}:8080/env/MARKER");
    for _ in 0..5 {
        let (ok, out) = c.exec_on(0, client0, &["check", &url]);
        assert!(ok, "the page across hosts: {out}\n{}", c.logs());
    }
    let said = capture.stop();
    eprintln!("tcpdump: {said}");
}

#[tokio::test]
async fn container_traffic_between_hosts_is_only_wireguard_on_the_wire() {
    let mut c = Cluster::start_with_engines(2, &[]).await;
    let marker = format!("marker-{}-{}", std::process::id(), unique_stack("m"));
    let (_, web1_ip, client0) = deploy(&mut c, &marker).await;
    // The tunnel comes up with a node's first stack network.
    wait_encryption(&c, "wireguard").await;
    let file = c.dir.path().join("encrypted.pcap");
    capture_fetches(&c, &web1_ip, &client0, &file);

    let seen = packets(&file);
    assert!(
        !seen.is_empty(),
        "the capture saw no packet between the hosts at all"
    );
    // 17: UDP, to WireGuard's port; nothing else crossed between the two hosts.
    let other: Vec<&String> = seen.iter().filter(|p| *p != "17 51820").collect();
    assert!(
        other.is_empty(),
        "packets between the hosts that are not WireGuard: {other:?} (of {})",
        seen.len()
    );
    assert!(
        !holds(&file, &marker),
        "the marker crossed the link in the clear"
    );
}

#[tokio::test]
async fn with_encryption_off_the_marker_is_on_the_wire() {
    let mut c = Cluster::start_with_engines(2, &["--encryption", "off"]).await;
    wait_encryption(&c, "off").await;
    let marker = format!("marker-{}-{}", std::process::id(), unique_stack("m"));
    let (_, web1_ip, client0) = deploy(&mut c, &marker).await;
    let file = c.dir.path().join("plain.pcap");
    capture_fetches(&c, &web1_ip, &client0, &file);
    assert!(
        holds(&file, &marker),
        "in the clear, the marker is in the capture ({} packets)",
        packets(&file).len()
    );
}

#[tokio::test]
async fn a_removed_nodes_key_reaches_no_container_on_the_others() {
    let mut c = Cluster::start_with_engines(2, &[]).await;
    let marker = format!("marker-{}-{}", std::process::id(), unique_stack("m"));
    let (_, web1_ip, _) = deploy(&mut c, &marker).await;
    wait_encryption(&c, "wireguard").await;
    let stack = c.stacks.last().cloned().expect("a stack");
    let (web0, web0_ip) = c.container_on(0, &stack, "web").expect("web on host 0");
    let (client1, _) = c
        .container_on(1, &stack, "client")
        .expect("client on host 1");
    let url = format!("http://{web0_ip}:8080/");
    let (ok, out) = c.exec_on(1, &client1, &["check", &url]);
    assert!(ok, "before: host 1 reaches web on host 0: {out}");

    // Host 1 is removed while its agent and tunnel still run with its old key and peers.
    let id = c.node_id(1);
    c.cli_code(&["node", "rm", "--force", &id], 0);
    let iface0 = c.wireguard_interface(0);
    let ns0 = c.hosts[0].ns.clone();
    wait_for(
        "host 0 to drop host 1's key from its WireGuard interface",
        Duration::from_secs(20),
        || async {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns0, "wg", "show", &iface0, "peers"])
                .output()?;
            let peers = String::from_utf8_lossy(&out.stdout).trim().to_string();
            anyhow::Ok(if peers.is_empty() {
                Check::Done(())
            } else {
                not_yet(peers)
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    // Its key no longer reaches the container on host 0, by the tunnel or around it.
    let (ok, out) = c.exec_on(1, &client1, &["check", &url]);
    assert!(
        !ok,
        "the removed host still reaches web on host 0 ({web0}): {out}"
    );
    let _ = web1_ip;
}

/// The peers host 0's WireGuard interface has.
fn peers_of_host0(c: &Cluster) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &c.hosts[0].ns, "wg", "show"])
        .arg(c.wireguard_interface(0))
        .arg("peers")
        .output()
        .expect("run wg");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn a_rotated_key_takes_over_on_every_peer_and_traffic_carries_on() {
    let mut c = Cluster::start_with_engines(2, &[]).await;
    let marker = format!("marker-{}-{}", std::process::id(), unique_stack("m"));
    let (_, web1_ip, client0) = deploy(&mut c, &marker).await;
    wait_encryption(&c, "wireguard").await;
    let key_of_1 = |nodes: &[wharf_types::NodeInfo]| {
        nodes
            .iter()
            .find(|n| n.name == "h1")
            .and_then(|n| n.public_key.clone())
            .unwrap_or_default()
    };
    let old = key_of_1(&c.client.list_nodes().await.expect("nodes"));
    assert!(
        peers_of_host0(&c).contains(&old),
        "host 0 has host 1's key {old}"
    );

    let (out, _) = c.cli_code(&["node", "rotate-keys", "h1"], 0);
    assert!(out.contains("new WireGuard key"), "{out}");
    // The agent makes the key, the master hands it to host 0, host 0 sets it.
    let new = wait_for(
        "host 1's new key on host 0's interface",
        Duration::from_secs(20),
        || async {
            let new = key_of_1(&c.client.list_nodes().await?);
            let peers = peers_of_host0(&c);
            anyhow::Ok(
                if new != old && peers.contains(&new) && !peers.contains(&old) {
                    Check::Done(new)
                } else {
                    not_yet((new, peers))
                },
            )
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let on_disk = std::fs::read_to_string(c.hosts[1].data.join("wireguard.json")).unwrap();
    assert!(
        !on_disk.contains(&new),
        "the key file holds the private key, not the public one"
    );
    // Traffic across the hosts goes on with the new keys.
    let url = format!("http://{web1_ip}:8080/env/MARKER");
    wait_for(
        "the client on host 0 to reach web on host 1 with the new key",
        Duration::from_secs(10),
        || async {
            let (ok, out) = c.exec_on(0, &client0, &["check", &url]);
            anyhow::Ok(if ok { Check::Done(()) } else { not_yet(out) })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
}

/// The process id of a container on host `i` (own engines), to enter its network namespace.
fn pid_of(c: &Cluster, i: usize, id: &str) -> String {
    let engine = c.hosts[i].engine.as_ref().expect("own engine");
    let out = engine.cli(&["inspect", "-f", "{{.State.Pid}}", id]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Busy and total jiffies of the whole machine (`/proc/stat`).
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let total: u64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// One path's figures: (Gbit/s, cores busy per Gbit/s, median TCP connect ms).
async fn measure_path(server_args: &[&str]) -> (f64, f64, f64) {
    let mut c = Cluster::start_with_engines(2, server_args).await;
    let marker = format!("marker-{}", unique_stack("m"));
    let (web1, web1_ip, client0) = deploy(&mut c, &marker).await;
    let (server_pid, client_pid) = (pid_of(&c, 1, &web1), pid_of(&c, 0, &client0));
    // iperf3 (Debian's) run inside the containers' own network namespaces.
    let mut server = Command::new("nsenter")
        .args(["-t", &server_pid, "-n", "iperf3", "-s", "-1", "-p", "5201"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run iperf3 (Debian: apt install iperf3)");
    // Its banner sits in stdio's buffer until it exits: wait for the socket instead.
    wait_for("iperf3 to listen", Duration::from_secs(10), || async {
        let out = Command::new("nsenter")
            .args(["-t", &server_pid, "-n", "ss", "-Hltn", "sport = :5201"])
            .output()?;
        anyhow::Ok(if out.stdout.is_empty() {
            not_yet("")
        } else {
            Check::Done(())
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (busy0, total0) = cpu_jiffies();
    let out = Command::new("nsenter")
        .args([
            "-t",
            &client_pid,
            "-n",
            "iperf3",
            "-c",
            &web1_ip,
            "-p",
            "5201",
        ])
        .args(["-t", "8", "-J"])
        .output()
        .expect("run iperf3");
    let (busy1, total1) = cpu_jiffies();
    if !out.status.success() {
        let _ = server.kill();
    }
    let _ = server.wait();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success() && report["end"]["sum_received"].is_object(),
        "iperf3 from host 0 to {web1_ip} failed: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    let gbits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let busy_cores = (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64 * cores;
    // Latency: TCP connects from the client's namespace to web on the other host.
    let mut connects: Vec<f64> = (0..40)
        .filter_map(|_| {
            let out = Command::new("nsenter")
                .args(["-t", &client_pid, "-n", "curl", "-s", "-o", "/dev/null"])
                .args(["-w", "%{time_connect}"])
                .arg(format!("http://{web1_ip}:8080/"))
                .output()
                .ok()?;
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .collect();
    connects.sort_by(f64::total_cmp);
    let median_ms = connects.get(connects.len() / 2).copied().unwrap_or(0.0) * 1000.0;
    if !server_args.contains(&"off") {
        let gap = rotation_gap(&c, &client_pid, &web1_ip);
        println!("key rotation of the serving host: longest time without an answer {gap:.3} s");
    }
    (gbits, busy_cores / gbits.max(1e-9), median_ms)
}

/// Requests from the client's namespace every 20 ms for 6 s, the serving host's key rotated
/// after 2 s: the longest time between two answered requests, in seconds.
fn rotation_gap(c: &Cluster, client_pid: &str, web1_ip: &str) -> f64 {
    let url = format!("http://{web1_ip}:8080/");
    let start = std::time::Instant::now();
    let answered = std::thread::scope(|s| {
        let probe = s.spawn(|| {
            let mut answered = Vec::new();
            while start.elapsed() < Duration::from_secs(6) {
                let ok = Command::new("nsenter")
                    .args(["-t", client_pid, "-n", "curl", "-s", "-o", "/dev/null"])
                    .args(["-m", "1", "-w", "%{http_code}", &url])
                    .output()
                    .is_ok_and(|o| o.stdout == b"200");
                if ok {
                    answered.push(start.elapsed().as_secs_f64());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            answered
        });
        while start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
        c.cli_code(&["node", "rotate-keys", "h1"], 0);
        probe.join().expect("probe")
    });
    answered.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

/// `bench/network`: throughput (iperf3) and latency between containers on two hosts, host
/// routing in the clear against the WireGuard tunnel (userspace: wireguard-go), side by side.
#[tokio::test]
#[ignore]
async fn network_bench() {
    let plain = measure_path(&["--encryption", "off"]).await;
    let wg = measure_path(&[]).await;
    println!("bench/network: container to container across two hosts (iperf3, 8 s, one stream)");
    println!(
        "{:<28} {:>10} {:>18} {:>16}",
        "path", "Gbit/s", "cores per Gbit/s", "TCP connect ms"
    );
    for (name, (g, cpu, ms)) in [
        ("host routing (in the clear)", plain),
        ("WireGuard (wireguard-go)", wg),
    ] {
        println!("{name:<28} {g:>10.2} {cpu:>18.2} {ms:>16.3}");
    }
    println!(
        "ratio encrypted / plain: throughput {:.2} (target >= 0.5), latency {:.2}",
        wg.0 / plain.0.max(1e-9),
        wg.2 / plain.2.max(1e-9)
    );
}
