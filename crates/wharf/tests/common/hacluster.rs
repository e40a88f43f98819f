//! HA harness: three etcd members (real etcd, on loopback), three `wharf server --store etcd://…`
//! masters in the root namespace, and agents in network namespaces (`netcluster::Net`) that know
//! every master. Each master reaches etcd through a forwarder of its own, which the test can cut:
//! the master's link to the store drops while the rest of the cluster goes on.
//!
//! Use with `mod common; #[path = "common/netcluster.rs"] mod netcluster;
//! #[path = "common/hacluster.rs"] mod hacluster;`. Needs root (namespaces) and etcd.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wharf_client::Client;
use wharf_store::testing::EtcdCluster;
use wharf_testkit::{Check, free_port, not_yet, wait_for};
use wharf_types::NodeState;

use crate::common::{Harness, WHARF, kill, log_to, remove_containers, server_command, tail};
use crate::netcluster::Net;

/// TCP forwarders from loopback ports to the etcd members, for one master: `cut` drops every
/// connection and refuses new ones until `heal`.
pub struct Forwarder {
    pub ports: Vec<u16>,
    cut: watch::Sender<bool>,
}

impl Forwarder {
    pub async fn start(targets: &[String]) -> Forwarder {
        let (cut, _) = watch::channel(false);
        let mut ports = Vec::new();
        for target in targets {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a forwarder port");
            ports.push(listener.local_addr().unwrap().port());
            let (target, cut_rx) = (target.clone(), cut.subscribe());
            tokio::spawn(async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    if *cut_rx.borrow() {
                        drop(inbound);
                        continue;
                    }
                    let (target, mut cut_rx) = (target.clone(), cut_rx.clone());
                    tokio::spawn(async move {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = cut_rx.wait_for(|c| *c) => {}
                        }
                    });
                }
            });
        }
        Forwarder { ports, cut }
    }

    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    pub fn url(&self) -> String {
        let list: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("etcd://{}", list.join(","))
    }
}

pub struct MasterProc {
    pub data: PathBuf,
    pub log_path: PathBuf,
    pub api_port: u16,
    pub agent_port: u16,
    pub child: Option<Child>,
    pub fwd: Forwarder,
}

impl MasterProc {
    pub fn id(&self) -> String {
        std::fs::read_to_string(self.data.join("master.id"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }
}

pub struct HaCluster {
    pub dir: tempfile::TempDir,
    pub etcd: EtcdCluster,
    pub masters: Vec<MasterProc>,
    /// Agents: (namespace host index, process, data dir, log).
    pub agents: Vec<(String, Option<Child>, PathBuf, PathBuf)>,
    /// Knows every master (a context URL listing them).
    pub client: Client,
    pub stacks: Vec<String>,
    pub net: Net,
}

crate::harness!(HaCluster, "{}", HaCluster::all_logs);

impl HaCluster {
    /// Three etcd members, `masters` masters, `agents` agents; returns once every node is ready.
    pub async fn start(masters: usize, agents: usize) -> HaCluster {
        wharf_testkit::testapp_image().await.expect("test image");
        let etcd = EtcdCluster::start(3);
        let mut c = HaCluster {
            dir: tempfile::tempdir().expect("temp dir"),
            etcd,
            masters: vec![],
            agents: vec![],
            client: Client::new(String::new(), String::new()),
            stacks: vec![],
            net: Net::create(),
        };
        for i in 0..masters {
            let data = c.dir.path().join(format!("m{i}"));
            std::fs::create_dir_all(&data).unwrap();
            if i > 0 {
                // Every master of a shared store opens its data key with the same key file.
                std::fs::copy(
                    c.masters[0].data.join("master.key"),
                    data.join("master.key"),
                )
                .expect("copy master.key");
            }
            let fwd = Forwarder::start(&c.etcd.endpoints()).await;
            c.masters.push(MasterProc {
                log_path: c.dir.path().join(format!("m{i}.log")),
                data,
                api_port: free_port(),
                agent_port: free_port(),
                child: None,
                fwd,
            });
            c.launch_master(i).await;
        }
        let urls: Vec<String> = c.masters.iter().map(MasterProc::url).collect();
        let token = c.client.token().to_string();
        c.client = Client::new(urls.join(","), token);
        for _ in 0..agents {
            c.spawn_agent();
        }
        c.wait_nodes_ready(agents).await;
        c
    }

    fn all_logs(&self) -> String {
        let mut s = String::new();
        for (i, m) in self.masters.iter().enumerate() {
            let log = m.log();
            let events: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains("liveness changed") || l.contains("leads") || l.contains("lease")
                })
                .collect();
            s.push_str(&format!(
                "--- master m{i} ({}): leadership and liveness ---\n{}\n--- its log (tail) ---\n{}\n",
                m.id(),
                events.join("\n"),
                tail(&log, 30)
            ));
        }
        for (name, _, _, log) in &self.agents {
            s.push_str(&format!(
                "--- agent {name} log (tail) ---\n{}\n",
                tail(&std::fs::read_to_string(log).unwrap_or_default(), 12)
            ));
        }
        s
    }

    /// (Re)start master i on its data directory and ports.
    pub async fn launch_master(&mut self, i: usize) {
        let m = &self.masters[i];
        let agent_addr = format!("{}:{}", self.net.gateway(), m.agent_port);
        let mut cmd = server_command(
            &m.data,
            m.api_port,
            &agent_addr,
            &self.config_dir(),
            &std::env::var("WHARF_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        cmd.args(["--network-pool", "none", "--store", &m.fwd.url()]);
        let (log, url) = (m.log_path.clone(), m.url());
        let (child, client) = self.spawn_api(&mut cmd, "wharf server", &log, &url).await;
        self.masters[i].child = Some(child);
        if self.client.token().is_empty() {
            self.client = client;
        }
    }

    pub fn kill_master(&mut self, i: usize) {
        kill(&mut self.masters[i].child);
    }

    /// Every master's agent address, for `--join`.
    pub fn join_list(&self) -> String {
        let list: Vec<String> = self
            .masters
            .iter()
            .map(|m| format!("{}:{}", self.net.gateway(), m.agent_port))
            .collect();
        list.join(",")
    }

    fn spawn_agent(&mut self) {
        let i = self.agents.len();
        let (so, _) = self.cli_code(&["node", "token", "create"], 0);
        let token = so.trim().to_string();
        let ns = self.net.add_host(i);
        let name = format!("h{i}");
        let data = self.dir.path().join("agents").join(&name);
        let log_path = self.dir.path().join(format!("agent-{name}.log"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, WHARF, "agent", "--join"])
            .arg(self.join_list())
            .arg("--token")
            .arg(&token)
            .arg("--data-dir")
            .arg(&data)
            .arg("--name")
            .arg(&name)
            .env("WHARF_LOG", "info");
        let child = log_to(&mut cmd, &log_path)
            .spawn()
            .expect("spawn wharf agent");
        self.agents.push((name, Some(child), data, log_path));
    }

    pub async fn wait_nodes_ready(&self, n: usize) {
        wait_for(
            &format!("{n} nodes to be ready"),
            Duration::from_secs(60),
            || async {
                let nodes = self.client.list_nodes().await?;
                let ready = nodes.iter().filter(|n| n.state == NodeState::Ready).count();
                anyhow::Ok(if ready >= n {
                    Check::Done(())
                } else {
                    not_yet(format!("{ready} ready of {}", nodes.len()))
                })
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()));
    }

    /// The index of the master that leads now, as the store says.
    pub async fn leader(&self) -> Option<usize> {
        let status = self.client.masters().await.ok()?;
        let id = status.masters.iter().find(|m| m.leader)?.info.id.clone();
        self.masters.iter().position(|m| m.id() == id)
    }

    /// Wait until a master other than `not` leads; its index.
    pub async fn wait_leader(&self, not: Option<usize>, within: Duration) -> usize {
        wait_for("a master to lead", within, || async {
            match self.leader().await {
                Some(i) if Some(i) != not => Check::Done(i),
                other => not_yet(format!("leader now: {other:?}")),
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// A store client straight to etcd (not through any master).
    pub async fn store(&self) -> Arc<wharf_store::EtcdStore> {
        let (options, _) = wharf_store::EtcdOptions::parse(&self.etcd.url()).unwrap();
        Arc::new(wharf_store::EtcdStore::connect(&options).await.unwrap())
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        for m in &mut self.masters {
            kill(&mut m.child);
        }
        for a in &mut self.agents {
            kill(&mut a.1);
        }
        remove_containers(vec![], std::mem::take(&mut self.stacks));
    }
}
