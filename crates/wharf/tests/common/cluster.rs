//! Cluster harness: a `wharf server` and `wharf agent` processes on loopback, each with its own
//! directories. Used with `#[path = "common/cluster.rs"] mod cluster;` next to `mod common;`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use wharf_client::Client;
use wharf_testkit::{free_port, wait_for};

use crate::common::{Harness, WHARF, kill, log_to, remove_containers, server_command, tail};

/// One `wharf server` (master only).
pub struct Server {
    pub dir: tempfile::TempDir,
    pub api_port: u16,
    pub agent_port: u16,
    pub child: Option<Child>,
    pub client: Client,
    pub stacks: Vec<String>,
}

crate::harness!(Server, "--- server log (tail) ---\n{}", |s| tail(
    &s.log(),
    40
));

impl Server {
    pub async fn start() -> Server {
        let mut s = Server {
            dir: tempfile::tempdir().expect("temp dir"),
            api_port: free_port(),
            agent_port: free_port(),
            child: None,
            client: Client::new(String::new(), String::new()),
            stacks: vec![],
        };
        s.launch().await;
        s
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
    pub fn agent_addr(&self) -> String {
        format!("127.0.0.1:{}", self.agent_port)
    }

    /// (Re)start the server with the same directories and ports.
    pub async fn launch(&mut self) {
        let mut cmd = server_command(
            &self.dir.path().join("data"),
            self.api_port,
            &self.agent_addr(),
            &self.config_dir(),
            "info",
        );
        // Every agent shares this machine and its engine: nothing to route between them.
        cmd.args(["--network-pool", "none"]);
        let (log, url) = (
            self.log_path(),
            format!("http://127.0.0.1:{}", self.api_port),
        );
        let (child, client) = self.spawn_api(&mut cmd, "wharf server", &log, &url).await;
        (self.child, self.client) = (Some(child), client);
    }

    pub fn kill9(&mut self) {
        kill(&mut self.child);
    }

    /// `wharf node token create ARGS…`: the token.
    pub fn token(&self, args: &[&str]) -> String {
        let mut all = vec!["node", "token", "create"];
        all.extend_from_slice(args);
        let (so, _) = self.cli_code(&all, 0);
        so.trim().to_string()
    }

    /// Start an agent named `name` with its own data directory under the server's test directory.
    pub fn agent(&self, name: &str, token: Option<&str>) -> AgentProc {
        let data = self.dir.path().join("agents").join(name);
        let log_path = self.dir.path().join(format!("agent-{name}.log"));
        let mut cmd = Command::new(WHARF);
        cmd.arg("agent")
            .arg("--join")
            .arg(self.agent_addr())
            .arg("--data-dir")
            .arg(&data)
            .arg("--name")
            .arg(name)
            .env("WHARF_LOG", "info");
        if let Some(t) = token {
            cmd.arg("--token").arg(t);
        }
        let child = log_to(&mut cmd, &log_path)
            .spawn()
            .expect("spawn wharf agent");
        AgentProc {
            name: name.to_string(),
            data,
            log_path,
            child: Some(child),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        remove_containers(vec![], std::mem::take(&mut self.stacks));
    }
}

/// One `wharf agent` process; killed on drop.
pub struct AgentProc {
    pub name: String,
    pub data: PathBuf,
    pub log_path: PathBuf,
    pub child: Option<Child>,
}

impl AgentProc {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The node id it joined as (once joined).
    pub fn node_id(&self) -> Option<String> {
        std::fs::read_to_string(self.data.join("node-id"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Wait for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let child = self.child.as_mut().expect("running");
        let status = wait_for("the agent to exit", timeout, || {
            let r = child.try_wait().ok().flatten();
            async move { r }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", tail(&self.log(), 30)));
        self.child = None;
        status.code()
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}
