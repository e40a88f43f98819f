//! End-to-end harness: runs the real `wharf` binary (`wharf up`) against the real Docker engine,
//! each test in its own data directory, CLI context and API port, and cleans its stacks up.
#![allow(dead_code)]

pub mod engines;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use wharf_client::{Client, Context};
use wharf_testkit::wait_for;
use wharf_types::{InstanceInfo, ServiceInfo};

#[allow(unused_imports)]
pub use wharf_testkit::{free_port, testapp_image, unique_stack};

pub const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

/// A client command of the binary that talks to the wharf whose CLI context is in `config_dir`
/// (and to no other: `WHARF_URL` and `WHARF_TOKEN` are cleared), with no stdin.
pub fn cli_command(config_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(WHARF);
    cmd.args(args)
        .env("WHARF_CONFIG_DIR", config_dir)
        .env_remove("WHARF_URL")
        .env_remove("WHARF_TOKEN")
        .stdin(Stdio::null());
    cmd
}

/// One running `wharf up`, with its own directories.
pub struct Wharf {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
    pub client: Client,
    /// Stacks to clean up from Docker when the test ends.
    pub stacks: Vec<String>,
    /// Extra environment for `wharf up` (e.g. DOCKER_HOST to hide the engine).
    pub env: Vec<(String, String)>,
}

impl Wharf {
    /// Start `wharf up` and wait until its API answers with the token it wrote to the context.
    pub async fn start() -> Wharf {
        Self::start_with_env(vec![]).await
    }

    pub async fn start_with_env(env: Vec<(String, String)>) -> Wharf {
        Self::start_full(env, &[]).await
    }

    /// Start `wharf up` with extra arguments (e.g. a stack file to deploy).
    pub async fn start_full(env: Vec<(String, String)>, args: &[&str]) -> Wharf {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut w = Wharf {
            dir,
            port,
            child: None,
            client: Client::new(String::new(), String::new()),
            stacks: vec![],
            env,
        };
        w.launch(args).await;
        w
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("wharf-up.log")
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `wharf up` command line, for tests that run it themselves.
    pub fn up_command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new(WHARF);
        cmd.arg("up")
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(extra)
            .env("WHARF_CONFIG_DIR", self.config_dir())
            .env_remove("WHARF_URL")
            .env_remove("WHARF_TOKEN")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// (Re)start `wharf up` with the same directories, logging to `wharf-up.log`.
    pub async fn launch(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let mut cmd = self.up_command(extra);
        if !self.env.iter().any(|(k, _)| k == "WHARF_LOG") {
            // `WHARF_TEST_LOG` (a tracing filter) turns up what the servers log, to debug a test.
            let filter = std::env::var("WHARF_TEST_LOG").unwrap_or("wharf=info,warn".into());
            cmd.env("WHARF_LOG", filter);
        }
        let child = cmd
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn wharf up");
        self.child = Some(child);
        let ctx_path = self.config_dir().join("context.json");
        let url = self.url();
        let ctx = wait_for(
            "wharf up to write its context and answer /healthz",
            Duration::from_secs(30),
            || {
                let ctx_path = ctx_path.clone();
                let url = url.clone();
                async move {
                    let ctx = Context::load_from(&ctx_path).ok().flatten()?;
                    let c = Client::new(url, ctx.token.clone());
                    c.version().await.ok().map(|_| ctx)
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- wharf up log ---\n{}", self.log()));
        self.client = Client::new(self.url(), ctx.token);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL the `wharf up` process (no cleanup of any kind).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Write a stack file into the test directory and remember the stack for cleanup.
    pub fn stack_file(&mut self, stack: &str, yaml: &str) -> PathBuf {
        let dir = self.dir.path().join("stacks").join(stack);
        std::fs::create_dir_all(&dir).expect("stack dir");
        let path = dir.join("stack.yml");
        std::fs::write(&path, yaml).expect("write stack file");
        if !self.stacks.iter().any(|s| s == stack) {
            self.stacks.push(stack.to_string());
        }
        path
    }

    /// Run a client command of the binary against this wharf.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_command(&self.config_dir(), args)
            .output()
            .expect("run wharf")
    }

    /// `wharf stack deploy -c FILE`, asserting the exit code; returns (stdout, stderr).
    pub fn deploy(&self, file: &Path, expect_code: i32) -> (String, String) {
        let out = self.cli(&["stack", "deploy", "-c", file.to_str().expect("utf-8 path")]);
        let (so, se) = (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        );
        assert_eq!(
            out.status.code(),
            Some(expect_code),
            "wharf stack deploy exit code\n--- stdout ---\n{so}\n--- stderr ---\n{se}\n--- wharf up log (tail) ---\n{}",
            tail(&self.log(), 40)
        );
        (so, se)
    }

    /// `wharf stack deploy --detach -o json -c FILE`, asserting success; the deployment id.
    pub fn deploy_detached(&self, file: &Path) -> String {
        let out = self.cli(&[
            "stack",
            "deploy",
            "--detach",
            "-o",
            "json",
            "-c",
            file.to_str().expect("utf-8 path"),
        ]);
        let (so, se) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "deploy --detach failed: {so}\n{se}"
        );
        deployment_id(&so)
    }

    pub async fn instances(&self, stack: &str, service: &str) -> Vec<InstanceInfo> {
        self.client
            .service_instances(stack, service)
            .await
            .unwrap_or_default()
    }

    pub async fn service(&self, stack: &str, service: &str) -> Option<ServiceInfo> {
        self.client.get_service(stack, service).await.ok()
    }

    /// Wait until `n` instances of the service are running and ready (healthy where checked).
    pub async fn wait_ready(
        &self,
        stack: &str,
        service: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<InstanceInfo> {
        let what = format!("{n} ready instances of {stack}/{service}");
        wait_for(&what, timeout, || async {
            let insts = self.instances(stack, service).await;
            let ready = insts.iter().filter(|i| i.is_ready()).count();
            if insts.len() == n && ready == n {
                wharf_testkit::Check::Done(insts)
            } else {
                wharf_testkit::not_yet(summary(&insts))
            }
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{e}\n--- wharf up log (tail) ---\n{}",
                tail(&self.log(), 40)
            )
        })
    }
}

impl Drop for Wharf {
    fn drop(&mut self) {
        self.kill9();
        let stacks = std::mem::take(&mut self.stacks);
        if stacks.is_empty() {
            return;
        }
        // Clean up on a fresh runtime: Drop may run inside or outside one.
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

pub fn summary(insts: &[InstanceInfo]) -> String {
    insts
        .iter()
        .map(|i| {
            format!(
                "{} g{} {:?}/{:?} exit={:?} err={:?} health={:?}",
                i.id, i.generation, i.state, i.health, i.exit_code, i.error, i.health_output
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Containers of a stack as the engine sees them: (name, id, running).
pub async fn containers(stack: &str) -> Vec<(String, String, bool)> {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let docker = wharf_testkit::docker().await.expect("docker");
    let filters = std::collections::HashMap::from([(
        "label".to_string(),
        vec![format!("io.wharf.stack={stack}")],
    )]);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(opts))
        .await
        .expect("list containers")
        .into_iter()
        .map(|c| {
            let name = c
                .names
                .and_then(|n| n.first().cloned())
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string();
            let running = c.state.map(|s| s.to_string() == "running").unwrap_or(false);
            (name, c.id.unwrap_or_default(), running)
        })
        .collect()
}

/// A stack file with one service of the test workload. `extra` is YAML appended inside the service.
pub fn testapp_stack(stack: &str, service: &str, replicas: u32, extra: &str) -> String {
    format!(
        "name: {stack}\nservices:\n  {service}:\n    image: wharf-testapp:latest\n    deploy:\n      replicas: {replicas}\n    stop_grace_period: 2s\n{extra}"
    )
}

/// The health check block used by most tests: fast interval so tests converge quickly.
pub const HEALTHCHECK: &str = "    healthcheck:\n      test: [\"CMD\", \"/testapp\", \"check\", \"http://127.0.0.1:8080/healthz\"]\n      interval: 500ms\n      timeout: 2s\n      retries: 2\n";

/// The `deployment_id` of a `wharf stack deploy --detach -o json` answer (its first JSON value).
pub fn deployment_id(stdout: &str) -> String {
    serde_json::Deserializer::from_str(stdout)
        .into_iter::<serde_json::Value>()
        .next()
        .and_then(|v| v.ok())
        .and_then(|v| v["deployment_id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no deployment id in {stdout}"))
}

/// A finished command's stdout and stderr, as text.
pub fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The environment of a container as the engine has it (`KEY=value` entries).
pub async fn container_env(id: &str) -> Vec<String> {
    let docker = wharf_testkit::docker().await.expect("docker");
    docker
        .inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap_or_else(|e| panic!("inspect container {id}: {e}"))
        .config
        .and_then(|c| c.env)
        .unwrap_or_default()
}
