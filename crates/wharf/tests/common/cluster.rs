//! Cluster harness: a `wharf server` and `wharf agent` processes on loopback, each with its own
//! directories. Used with `#[path = "common/cluster.rs"] mod cluster;` next to `mod common;`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use wharf_client::{Client, Context};
use wharf_testkit::{free_port, wait_for};

use crate::common::{WHARF, tail};

/// One `wharf server` (master only).
pub struct Server {
    pub dir: tempfile::TempDir,
    pub api_port: u16,
    pub agent_port: u16,
    pub child: Option<Child>,
    pub client: Client,
    pub stacks: Vec<String>,
}

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

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(WHARF)
            .arg("server")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.api_port))
            .arg("--agent-listen")
            .arg(self.agent_addr())
            // Every agent shares this machine and its engine: nothing to route between them.
            .args(["--network-pool", "none"])
            .env("WHARF_CONFIG_DIR", self.config_dir())
            .env("WHARF_LOG", "info")
            .env_remove("WHARF_URL")
            .env_remove("WHARF_TOKEN")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn wharf server");
        self.child = Some(child);
        let ctx_path = self.config_dir().join("context.json");
        let url = format!("http://127.0.0.1:{}", self.api_port);
        let ctx = wait_for(
            "wharf server to write its context and answer",
            Duration::from_secs(30),
            || {
                let (ctx_path, url) = (ctx_path.clone(), url.clone());
                async move {
                    let ctx = Context::load_from(&ctx_path).ok().flatten()?;
                    let c = Client::new(url, ctx.token.clone());
                    c.version().await.ok().map(|_| ctx)
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- server log ---\n{}", self.log()));
        self.client = Client::new(url, ctx.token);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        crate::common::cli_command(&self.config_dir(), args)
            .output()
            .expect("run wharf")
    }

    /// `wharf node token create ARGS…`: the token.
    pub fn token(&self, args: &[&str]) -> String {
        let mut all = vec!["node", "token", "create"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "wharf node token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_string()
    }

    /// Write a stack file into the test directory and remember the stack for cleanup.
    pub fn stack_file(&mut self, stack: &str, yaml: &str) -> PathBuf {
        let dir = self.dir.path().join("stacks").join(stack);
        std::fs::create_dir_all(&dir).expect("stack dir");
        let path = dir.join("stack.yml");
        std::fs::write(&path, yaml).expect("write stack file");
        self.stacks.push(stack.to_string());
        path
    }

    /// Start an agent named `name` with its own data directory under the server's test directory.
    pub fn agent(&self, name: &str, token: Option<&str>) -> AgentProc {
        let data = self.dir.path().join("agents").join(name);
        let log_path = self.dir.path().join(format!("agent-{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("log file");
        let mut cmd = Command::new(WHARF);
        cmd.arg("agent")
            .arg("--join")
            .arg(self.agent_addr())
            .arg("--data-dir")
            .arg(&data)
            .arg("--name")
            .arg(name)
            .env("WHARF_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(t) = token {
            cmd.arg("--token").arg(t);
        }
        AgentProc {
            name: name.to_string(),
            data,
            log_path,
            child: Some(cmd.spawn().expect("spawn wharf agent")),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        let stacks = std::mem::take(&mut self.stacks);
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    for s in stacks {
                        wharf_testkit::remove_stack_containers(&s).await;
                    }
                });
            }
        })
        .join();
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
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
