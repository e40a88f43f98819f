//! Multi-host harness: a `wharf server` in the root network namespace and one `wharf agent` per
//! "host", each host a Linux network namespace with its own address on a per-test bridge. The
//! workloads are real containers on the shared Docker engine, told apart by `io.wharf.node`.
//!
//! Use with `mod common; #[path = "common/netcluster.rs"] mod netcluster;`. Needs root (or
//! CAP_NET_ADMIN + CAP_SYS_ADMIN) and `ip` from iproute2.
//!
//! Layout per test (`<t>` = pid % 10000 and a per-process counter):
//! - bridge `wb<t>` with 10.<a>.<b>.1/24 in the root namespace (a in 200..=254);
//! - host i: netns `wharf-<t>-h<i>`, veth `wv<t>h<i>` on the bridge, `eth0` in the netns with
//!   10.<a>.<b>.<i+2>/24 and a default route via .1;
//! - the master's agent listener on 10.<a>.<b>.1, its API on 127.0.0.1.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use wharf_client::Client;
use wharf_testkit::{Check, free_port, not_yet, wait_for};
use wharf_types::{InstanceInfo, NodeInfo, NodeState};

pub use crate::common::{Harness, remove_node_containers, web_stack};
use crate::common::{
    WHARF, container_name, is_running, kill, list_stack, log_to, remove_containers, server_command,
    tail, unique_stack,
};

/// Run `ip ARGS…`; its output (never panics).
fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (is iproute2 installed?): {e}"))
}

/// Run `ip ARGS…` and panic with its stderr if it fails.
fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// The per-test network: a bridge and, per host, a netns and a veth pair.
pub struct Net {
    pub tag: String,
    pub bridge: String,
    /// 10.<a>.<b>.0/24
    pub prefix: String,
    pub namespaces: Vec<String>,
    pub veths: Vec<String>,
    /// Whether `forward_to_containers` added its iptables rule (removed on drop).
    pub forwarding: bool,
}

impl Net {
    pub fn create() -> Net {
        static N: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = N.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{}", pid % 10000, n);
        let bridge = format!("wb{tag}");
        // Pick a /24 in 10.200-254.x nobody on this machine uses (parallel test processes too).
        let used = String::from_utf8_lossy(&ip(&["-4", "-o", "addr", "show"]).stdout).to_string();
        let start = (pid as usize * 7 + n as usize * 131) % (55 * 256);
        let prefix = (0..55 * 256)
            .map(|k| (start + k) % (55 * 256))
            .map(|k| format!("10.{}.{}", 200 + k / 256, k % 256))
            .find(|p| !used.contains(&format!(" {p}.")))
            .expect("a free 10.200-254.x.0/24");
        let net = Net {
            tag,
            bridge,
            prefix,
            namespaces: vec![],
            veths: vec![],
            forwarding: false,
        };
        // Leftovers of a crashed run of the same name.
        let _ = ip(&["link", "del", &net.bridge]);
        let probe = format!("wharf-{}-probe", net.tag);
        let _ = ip(&["netns", "del", &probe]);
        let out = ip(&["netns", "add", &probe]);
        if !out.status.success() {
            panic!(
                "cannot create network namespaces (`ip netns add` failed: {}); the cluster tests \
                 need root or CAP_SYS_ADMIN + CAP_NET_ADMIN",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let _ = ip(&["netns", "del", &probe]);
        ip_ok(&["link", "add", &net.bridge, "type", "bridge"]);
        // A fixed MAC: else the bridge takes the lowest MAC of its ports and changes it as hosts
        // are added, and hosts that cached the old one lose the master until their ARP entry ages.
        let octets: Vec<u8> = net
            .prefix
            .split('.')
            .map(|o| o.parse().expect("octet"))
            .collect();
        let mac = format!("02:57:48:{:02x}:{:02x}:01", octets[1], octets[2]);
        ip_ok(&["link", "set", &net.bridge, "address", &mac]);
        ip_ok(&[
            "addr",
            "add",
            &format!("{}.1/24", net.prefix),
            "dev",
            &net.bridge,
        ]);
        ip_ok(&["link", "set", &net.bridge, "up"]);
        net
    }

    pub fn gateway(&self) -> String {
        format!("{}.1", self.prefix)
    }

    pub fn host_ip(&self, i: usize) -> String {
        format!("{}.{}", self.prefix, i + 2)
    }

    fn ns_name(&self, i: usize) -> String {
        format!("wharf-{}-h{i}", self.tag)
    }

    fn veth_name(&self, i: usize) -> String {
        format!("wv{}h{i}", self.tag)
    }

    /// Create host i's namespace, wired to the bridge.
    pub fn add_host(&mut self, i: usize) -> String {
        let (ns, veth) = (self.ns_name(i), self.veth_name(i));
        let _ = ip(&["netns", "del", &ns]);
        let _ = ip(&["link", "del", &veth]);
        ip_ok(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ip_ok(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        self.veths.push(veth.clone());
        ip_ok(&["link", "set", &veth, "master", &self.bridge, "up"]);
        let addr = format!("{}/24", self.host_ip(i));
        ip_ok(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
        ip_ok(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);
        ip_ok(&["-n", &ns, "route", "add", "default", "via", &self.gateway()]);
        ns
    }
}

impl Net {
    /// The iptables rule that lets the hosts reach the containers of the shared engine.
    fn forward_rule(&self, op: &str) -> Vec<String> {
        [op, "DOCKER-USER", "-i", &self.bridge, "-j", "ACCEPT"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Lets the hosts reach the containers (as an overlay network would across real hosts):
    /// Docker's FORWARD policy drops traffic from other bridges into its networks, so accept
    /// what comes from this test's bridge in Docker's `DOCKER-USER` chain.
    pub fn forward_to_containers(&mut self) {
        if self.forwarding {
            return;
        }
        let out = Command::new("iptables")
            .args(self.forward_rule("-I"))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `iptables`: {e}"));
        assert!(
            out.status.success(),
            "`iptables {}` failed: {}",
            self.forward_rule("-I").join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        self.forwarding = true;
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if self.forwarding {
            let _ = Command::new("iptables")
                .args(self.forward_rule("-D"))
                .stdin(Stdio::null())
                .output();
        }
        for ns in &self.namespaces {
            let _ = ip(&["netns", "del", ns]);
        }
        for v in &self.veths {
            let _ = ip(&["link", "del", v]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// One host: a namespace and the agent running in it.
pub struct Host {
    pub index: usize,
    pub name: String,
    pub ns: String,
    pub ip: String,
    pub labels: Vec<String>,
    pub data: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
    pub node_id: Option<String>,
    /// The host's own Docker engine (`Cluster::start_with_engines`); `None`: the shared one.
    pub engine: Option<crate::common::engines::Engine>,
}

impl Host {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// A Docker container of a test stack, as the engine sees it.
#[derive(Clone, Debug)]
pub struct Ctr {
    pub name: String,
    pub id: String,
    pub node: String,
    pub slot: u32,
    pub generation: u64,
    pub running: bool,
    pub healthy: bool,
    /// The engine's status text, e.g. "Up 3 seconds (healthy)".
    pub status: String,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub api_port: u16,
    pub agent_port: u16,
    pub master: Option<Child>,
    pub client: Client,
    pub hosts: Vec<Host>,
    pub stacks: Vec<String>,
    /// Extra arguments of `wharf server` (e.g. `--node-timeout 2s`).
    pub server_args: Vec<String>,
    /// Every host runs its own Docker engine in its namespace.
    pub own_engines: bool,
    /// Extra arguments of every `wharf agent` (e.g. `--metrics-listen 0.0.0.0:9464`).
    pub agent_args: Vec<String>,
    // Last: dropped after the processes and containers are gone.
    pub net: Net,
}

crate::harness!(Cluster, "{}", Cluster::all_logs);

impl Cluster {
    /// A master and `n` hosts, host i with the labels `labels[i]` (KEY=VALUE; missing: none).
    /// Returns once every node is ready.
    pub async fn start(n: usize, labels: &[&[&str]]) -> Cluster {
        Self::start_with(n, labels, &[]).await
    }

    pub async fn start_with(n: usize, labels: &[&[&str]], server_args: &[&str]) -> Cluster {
        // All hosts share one engine (one host, really): nothing to route between them.
        let mut args = vec!["--network-pool", "none"];
        args.extend_from_slice(server_args);
        Self::launch(n, labels, &args, false, &[]).await
    }

    /// Like `start_with`, every agent with the extra arguments `agent_args`.
    pub async fn start_with_agent_args(n: usize, agent_args: &[&str]) -> Cluster {
        Self::launch(n, &[], &["--network-pool", "none"], false, agent_args).await
    }

    /// Like `start_with`, but every host runs its own Docker engine in its namespace (with the
    /// test image loaded): container addresses, bridges and firewalls are per host, as on
    /// separate machines, and containers on different hosts reach each other only through
    /// Wharf's cross-host networking.
    pub async fn start_with_engines(n: usize, server_args: &[&str]) -> Cluster {
        Self::launch(n, &[], server_args, true, &[]).await
    }

    async fn launch(
        n: usize,
        labels: &[&[&str]],
        server_args: &[&str],
        own_engines: bool,
        agent_args: &[&str],
    ) -> Cluster {
        wharf_testkit::testapp_image().await.expect("test image");
        let mut net = Net::create();
        if own_engines {
            // Host-to-host traffic crosses the test bridge, which the root namespace's firewall
            // (br_netfilter, Docker's FORWARD policy) would drop.
            net.forward_to_containers();
        }
        let mut c = Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            api_port: free_port(),
            agent_port: free_port(),
            master: None,
            client: Client::new(String::new(), String::new()),
            hosts: vec![],
            stacks: vec![],
            server_args: server_args.iter().map(|s| s.to_string()).collect(),
            own_engines,
            agent_args: agent_args.iter().map(|s| s.to_string()).collect(),
            net,
        };
        c.launch_master().await;
        for i in 0..n {
            let l = labels.get(i).copied().unwrap_or(&[]);
            c.spawn_host(l);
        }
        for i in 0..n {
            c.wait_joined(i).await;
        }
        c
    }

    pub fn master_log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
    pub fn master_log(&self) -> String {
        std::fs::read_to_string(self.master_log_path()).unwrap_or_default()
    }
    pub fn agent_addr(&self) -> String {
        format!("{}:{}", self.net.gateway(), self.agent_port)
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }
    pub fn host_ip(&self, i: usize) -> String {
        self.net.host_ip(i)
    }

    /// The tails of every log, for failure messages.
    fn all_logs(&self) -> String {
        let mut s = format!(
            "--- server log (tail) ---\n{}\n",
            tail(&self.master_log(), 40)
        );
        for h in &self.hosts {
            s.push_str(&format!(
                "--- agent {} ({}) log (tail) ---\n{}\n",
                h.name,
                h.node_id.as_deref().unwrap_or("?"),
                tail(&h.log(), 15)
            ));
        }
        s
    }

    async fn launch_master(&mut self) {
        let mut cmd = server_command(
            &self.dir.path().join("data"),
            self.api_port,
            &self.agent_addr(),
            &self.config_dir(),
            &log_filter(),
        );
        cmd.args(&self.server_args);
        let (log, url) = (self.master_log_path(), self.url());
        let (child, client) = self.spawn_api(&mut cmd, "wharf server", &log, &url).await;
        (self.master, self.client) = (Some(child), client);
    }

    /// SIGKILL the master and start it again on the same data directory and ports.
    pub async fn restart_master(&mut self) {
        self.kill_master();
        self.launch_master().await;
    }

    pub fn kill_master(&mut self) {
        kill(&mut self.master);
    }

    /// `wharf node token create` (single use).
    pub fn token(&self) -> String {
        let (so, _) = self.cli_code(&["node", "token", "create"], 0);
        so.trim().to_string()
    }

    fn spawn_host(&mut self, labels: &[&str]) -> usize {
        let i = self.hosts.len();
        let token = self.token();
        let ns = self.net.add_host(i);
        let name = format!("h{i}");
        let data = self.dir.path().join("agents").join(&name);
        let log_path = self.dir.path().join(format!("agent-{name}.log"));
        let engine = self.own_engines.then(|| {
            crate::common::engines::Engine::start(
                &ns,
                &self.dir.path().join("engines").join(&name),
                &["wharf-testapp:latest"],
            )
        });
        let mut cmd = Command::new("ip");
        if let Some(e) = &engine {
            cmd.env("DOCKER_HOST", e.docker_host());
        }
        cmd.args(["netns", "exec", &ns, WHARF, "agent", "--join"])
            .arg(self.agent_addr())
            .arg("--token")
            .arg(&token)
            .arg("--data-dir")
            .arg(&data)
            .arg("--name")
            .arg(&name)
            // The hosts share one filesystem: each its own WireGuard interface name (its
            // control socket is /var/run/wireguard/<name>.sock).
            .arg("--wireguard-interface")
            .arg(self.wireguard_interface(i));
        for l in labels {
            cmd.arg("--label").arg(l);
        }
        cmd.args(&self.agent_args);
        cmd.env("WHARF_LOG", log_filter());
        // `ip netns exec` execs the agent: the child is the agent itself.
        let child = log_to(&mut cmd, &log_path)
            .spawn()
            .expect("spawn wharf agent");
        self.hosts.push(Host {
            index: i,
            name,
            ns,
            ip: self.net.host_ip(i),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            data,
            log_path,
            child: Some(child),
            node_id: None,
            engine,
        });
        i
    }

    /// One container of a service on host `i` (own engines): (id, address on the stack network).
    pub fn container_on(&self, i: usize, stack: &str, service: &str) -> Option<(String, String)> {
        let engine = self.hosts[i].engine.as_ref().expect("own engine");
        let out = engine.cli(&[
            "ps",
            "--filter",
            &format!("label=io.wharf.stack={stack}"),
            "--filter",
            &format!("label=io.wharf.service={service}"),
            "--format",
            "{{.ID}}",
        ]);
        let id = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()?
            .to_string();
        let out = engine.cli(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &id,
        ]);
        let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!ip.is_empty()).then_some((id, ip))
    }

    /// `docker exec <id> /testapp ARGS…` on host `i` (own engines): (success, stdout + stderr).
    pub fn exec_on(&self, i: usize, id: &str, args: &[&str]) -> (bool, String) {
        let engine = self.hosts[i].engine.as_ref().expect("own engine");
        let mut all = vec!["exec", id, "/testapp"];
        all.extend_from_slice(args);
        let out = engine.cli(&all);
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Host i's WireGuard interface.
    pub fn wireguard_interface(&self, i: usize) -> String {
        format!("wg{}h{i}", self.net.tag)
    }

    /// Wait until host i is a ready node; remember its id.
    async fn wait_joined(&mut self, i: usize) {
        let name = self.hosts[i].name.clone();
        let what = format!("host {name} to join and be ready");
        let id = wait_for(&what, Duration::from_secs(30), || async {
            let nodes = self.client.list_nodes().await?;
            match nodes.iter().find(|n| n.name == name) {
                // Ready, and connected (joining alone makes a node ready).
                Some(n) if n.state == NodeState::Ready && n.last_seen > 0 => {
                    anyhow::Ok(Check::Done(n.id.clone()))
                }
                _ => anyhow::Ok(not_yet(node_states(&nodes))),
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
        self.hosts[i].node_id = Some(id);
    }

    /// A new host joining later; its index once it is ready.
    pub async fn add_host(&mut self, labels: &[&str]) -> usize {
        let i = self.spawn_host(labels);
        self.wait_joined(i).await;
        i
    }

    pub fn node_id(&self, i: usize) -> String {
        self.hosts[i].node_id.clone().expect("joined")
    }

    /// Host index of a node id.
    pub fn host_of(&self, node: &str) -> Option<usize> {
        self.hosts
            .iter()
            .position(|h| h.node_id.as_deref() == Some(node))
    }

    /// The nodes as `wharf node ls -o json` shows them.
    pub fn nodes(&self) -> Vec<NodeInfo> {
        let (so, _) = self.cli_code(&["node", "ls", "-o", "json"], 0);
        serde_json::from_str(&so).unwrap_or_else(|e| panic!("node ls json: {e}\n{so}"))
    }

    /// Wait until the given hosts are ready nodes.
    pub async fn wait_nodes_ready(&self, hosts: &[usize], timeout: Duration) {
        let ids: Vec<String> = hosts.iter().map(|&i| self.node_id(i)).collect();
        wait_for("the nodes to be ready", timeout, || async {
            let nodes = self.client.list_nodes().await?;
            let ok = ids.iter().all(|id| {
                nodes
                    .iter()
                    .any(|n| &n.id == id && n.state == NodeState::Ready)
            });
            anyhow::Ok(if ok {
                Check::Done(())
            } else {
                not_yet(node_states(&nodes))
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// The host is gone: SIGKILL its agent and force-remove every container of its node.
    pub async fn kill_host(&mut self, i: usize) {
        kill(&mut self.hosts[i].child);
        let id = self.node_id(i);
        remove_node_containers(&id).await;
    }

    /// Cut the host off the network: its agent cannot reach the master, its containers keep running.
    pub fn cut_off(&self, i: usize) {
        ip_ok(&["link", "set", &self.net.veth_name(i), "down"]);
    }

    /// Undo `cut_off`.
    pub fn heal(&self, i: usize) {
        ip_ok(&["link", "set", &self.net.veth_name(i), "up"]);
    }

    /// A stack of `replicas` of `web` (`web_stack`, no extras) deployed, all ready; its name and
    /// the instances.
    pub async fn deploy_web(&mut self, prefix: &str, replicas: u32) -> (String, Vec<InstanceInfo>) {
        let stack = unique_stack(prefix);
        let yaml = web_stack(&stack, replicas, "", "");
        let insts = self
            .deploy_ready(
                &stack,
                &yaml,
                "web",
                replicas as usize,
                Duration::from_secs(60),
            )
            .await;
        (stack, insts)
    }

    /// The host running most of `insts` and the node ids of all the others.
    pub fn busiest(&self, insts: &[InstanceInfo]) -> (usize, BTreeSet<String>) {
        let per_host = self.per_host(insts);
        let victim = *per_host
            .iter()
            .max_by_key(|(_, n)| **n)
            .expect("instances")
            .0;
        let others = (0..self.hosts.len())
            .filter(|&i| i != victim)
            .map(|i| self.node_id(i))
            .collect();
        (victim, others)
    }

    /// Wait until no container of the stack runs on `node`; `what` names the wait, `note` goes
    /// before the logs in the failure message.
    pub async fn wait_none_running_on(&self, stack: &str, node: &str, what: &str, note: &str) {
        wait_for(what, Duration::from_secs(30), || async {
            let ctrs = stack_containers(stack).await;
            if ctrs.iter().any(|x| x.running && x.node == node) {
                not_yet(ctr_summary(&ctrs))
            } else {
                Check::Done(())
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{note}{}", self.logs()));
    }

    /// Instances per host index (instances on unknown nodes under `usize::MAX`).
    pub fn per_host(&self, insts: &[InstanceInfo]) -> BTreeMap<usize, usize> {
        let mut m = BTreeMap::new();
        for i in insts {
            *m.entry(self.host_of(&i.node).unwrap_or(usize::MAX))
                .or_default() += 1;
        }
        m
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            kill(&mut h.child);
        }
        self.kill_master();
        let nodes = self
            .hosts
            .iter()
            .filter_map(|h| h.node_id.clone())
            .collect();
        remove_containers(nodes, std::mem::take(&mut self.stacks));
        // wireguard-go detaches from the agent (a tunnel outlives an agent restart): stop it.
        let _ = Command::new("pkill")
            .args(["-f", &format!("wireguard-go wg{}h", self.net.tag)])
            .status();
        // `net` drops after this: namespaces, veths, bridge.
    }
}

fn node_states(nodes: &[NodeInfo]) -> Vec<(String, String, NodeState)> {
    nodes
        .iter()
        .map(|n| (n.name.clone(), n.id.clone(), n.state))
        .collect()
}

/// The containers of a stack (all, running or not) with their wharf labels.
pub async fn stack_containers(stack: &str) -> Vec<Ctr> {
    list_stack(stack)
        .await
        .into_iter()
        .map(|c| {
            let labels = c.labels.clone().unwrap_or_default();
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            let status = c.status.clone().unwrap_or_default();
            Ctr {
                name: container_name(&c),
                id: c.id.clone().unwrap_or_default(),
                node: label("io.wharf.node"),
                slot: label("io.wharf.slot").parse().unwrap_or(u32::MAX),
                generation: label("io.wharf.generation").parse().unwrap_or(0),
                running: is_running(&c),
                healthy: status.contains("(healthy)"),
                status,
            }
        })
        .collect()
}

/// Containers for a failure message: name, node and status of each.
pub fn ctr_summary(ctrs: &[Ctr]) -> String {
    ctrs.iter()
        .map(|c| format!("{} on {} [{}]", c.name, c.node, c.status))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The log filter of the cluster's processes: `WHARF_TEST_LOG` (e.g. `info,wharf_agent=debug`
/// to see where a slow test spends its time), `info` by default.
fn log_filter() -> String {
    std::env::var("WHARF_TEST_LOG").unwrap_or_else(|_| "info".to_string())
}
