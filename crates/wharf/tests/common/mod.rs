//! End-to-end harness: runs the real `wharf` binary (`wharf up`) against the real Docker engine,
//! each test in its own data directory, CLI context and API port, and cleans its stacks up.
#![allow(dead_code)]

pub mod docker;
pub mod engines;
pub mod follow;
pub mod stack;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bollard::models::ContainerSummary;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use wharf_client::{Client, Context};
use wharf_testkit::{Check, not_yet, wait_for};
use wharf_types::{Deployment, DeploymentState, InstanceInfo, ServiceInfo};

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

/// `wharf ARGS…` with the CLI context in `config_dir` and `input` on its standard input.
pub fn cli_with_stdin(config_dir: &Path, args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut child = cli_command(config_dir, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wharf");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wharf output")
}

/// Asserts that `out` (of `what`) exited with `code`; its stdout and stderr.
pub fn expect_code(out: &Output, code: i32, what: &str) -> (String, String) {
    let (so, se) = text(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit code\n--- stdout ---\n{so}\n--- stderr ---\n{se}"
    );
    (so, se)
}

/// No stdin; stdout and stderr appended to the log file at `path`.
pub fn log_to<'a>(cmd: &'a mut Command, path: &Path) -> &'a mut Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
}

/// SIGKILL the process, if it runs, and reap it.
pub fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `wharf server` on `data_dir` with its API on loopback port `api_port`, agents joining at
/// `agent_addr`, its CLI context in `config_dir`, logging at `log_filter`.
pub fn server_command(
    data_dir: &Path,
    api_port: u16,
    agent_addr: &str,
    config_dir: &Path,
    log_filter: &str,
) -> Command {
    let mut cmd = Command::new(WHARF);
    cmd.arg("server")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{api_port}"))
        .arg("--agent-listen")
        .arg(agent_addr)
        .env("WHARF_CONFIG_DIR", config_dir)
        .env("WHARF_LOG", log_filter)
        .env_remove("WHARF_URL")
        .env_remove("WHARF_TOKEN");
    cmd
}

/// Remove the containers of `nodes` (by `io.wharf.node`), then of `stacks`, on a fresh runtime:
/// a harness's Drop may run inside or outside one.
pub fn remove_containers(nodes: Vec<String>, stacks: Vec<String>) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(async {
                for n in nodes {
                    remove_node_containers(&n).await;
                }
                for s in stacks {
                    wharf_testkit::remove_stack_containers(&s).await;
                }
            });
        }
    })
    .join();
}

/// Force-remove every container labelled `io.wharf.node=<node>`.
pub async fn remove_node_containers(node: &str) {
    let Ok(docker) = wharf_testkit::docker().await else {
        return;
    };
    let filters = HashMap::from([("label", vec![format!("io.wharf.node={node}")])]);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    for c in docker.list_containers(Some(opts)).await.unwrap_or_default() {
        if let Some(id) = c.id {
            let rm = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            let _ = docker.remove_container(&id, Some(rm)).await;
        }
    }
}

/// What every harness (`wharf up`; a server with agents; a cluster of hosts) offers a test: its
/// directory, its API and CLI context, the stacks it cleans up, and the logs for failure messages.
#[allow(async_fn_in_trait)]
pub trait Harness {
    /// The test's directory (stack files, logs, data).
    fn test_dir(&self) -> &Path;
    /// A client of the API.
    fn client(&self) -> &Client;
    /// The stacks to clean up from Docker when the test ends.
    fn stacks_mut(&mut self) -> &mut Vec<String>;
    /// The tails of the logs, for failure messages.
    fn logs(&self) -> String;

    fn config_dir(&self) -> PathBuf {
        self.test_dir().join("config")
    }

    /// Start the server `cmd` (`what`: `wharf up`, `wharf server`) logging to `log`, and wait until
    /// it has written its CLI context to the harness's config directory and answers at `url` with
    /// that token; the process and a client of it. Panics with the log.
    async fn spawn_api(
        &self,
        cmd: &mut Command,
        what: &str,
        log: &Path,
        url: &str,
    ) -> (Child, Client) {
        let child = log_to(cmd, log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let ctx_path = self.config_dir().join("context.json");
        let waited = format!("{what} to write its context and answer");
        let ctx = wait_for(&waited, Duration::from_secs(30), || {
            let (ctx_path, url) = (ctx_path.clone(), url.to_string());
            async move {
                let ctx = Context::load_from(&ctx_path).ok().flatten()?;
                let c = Client::new(url, ctx.token.clone());
                c.version().await.ok().map(|_| ctx)
            }
        })
        .await
        .unwrap_or_else(|e| {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{e}\n--- {what} log ---\n{log}")
        });
        (child, Client::new(url.to_string(), ctx.token))
    }

    /// Waits up to `timeout` until `ok` holds of the stack's containers (`containers`); them.
    /// Panics saying `what` was waited for, with the logs.
    async fn wait_containers(
        &self,
        stack: &str,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&[(String, String, bool)]) -> bool,
    ) -> Vec<(String, String, bool)> {
        wait_for(what, timeout, || async {
            let cs = containers(stack).await;
            if ok(&cs) {
                Check::Done(cs)
            } else {
                not_yet(cs)
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// `wait_ready`, and none of them on the node `gone` (drained, lost).
    async fn wait_ready_off(
        &self,
        stack: &str,
        n: usize,
        gone: &str,
        timeout: Duration,
    ) -> Vec<InstanceInfo> {
        let insts = self.wait_ready(stack, "web", n, timeout).await;
        let on_gone: Vec<_> = insts.iter().filter(|i| i.node == gone).collect();
        assert!(
            on_gone.is_empty(),
            "instances on {gone}: {}",
            summary(&insts)
        );
        insts
    }

    /// Write a stack file into the test directory and remember the stack for cleanup.
    fn stack_file(&mut self, stack: &str, yaml: &str) -> PathBuf {
        let dir = self.test_dir().join("stacks").join(stack);
        std::fs::create_dir_all(&dir).expect("stack dir");
        let path = dir.join("stack.yml");
        std::fs::write(&path, yaml).expect("write stack file");
        let stacks = self.stacks_mut();
        if !stacks.iter().any(|s| s == stack) {
            stacks.push(stack.to_string());
        }
        path
    }

    /// Run a client command of the binary against this harness's API.
    fn cli(&self, args: &[&str]) -> Output {
        cli_command(&self.config_dir(), args)
            .output()
            .expect("run wharf")
    }

    /// `cli` off the async runtime (other tasks go on while it runs).
    async fn cli_async(&self, args: &[&str]) -> Output {
        let mut cmd = cli_command(&self.config_dir(), args);
        tokio::task::spawn_blocking(move || cmd.output().expect("run wharf"))
            .await
            .expect("cli task")
    }

    /// Run a client command, assert its exit code; (stdout, stderr).
    fn cli_code(&self, args: &[&str], code: i32) -> (String, String) {
        self.check_code(args, &self.cli(args), code)
    }

    /// `cli_code` off the async runtime.
    async fn cli_code_async(&self, args: &[&str], code: i32) -> (String, String) {
        self.check_code(args, &self.cli_async(args).await, code)
    }

    /// Assert the exit code of `wharf ARGS…`; (stdout, stderr).
    fn check_code(&self, args: &[&str], out: &Output, code: i32) -> (String, String) {
        let what = format!("`wharf {}`\n{}", args.join(" "), self.logs());
        expect_code(out, code, &what)
    }

    /// `wharf stack deploy -c FILE`, asserting the exit code; (stdout, stderr).
    fn deploy(&self, file: &Path, code: i32) -> (String, String) {
        self.cli_code(&["stack", "deploy", "-c", utf8(file)], code)
    }

    /// `wharf stack deploy --detach -o json -c FILE`, asserting success; the deployment id.
    fn deploy_detached(&self, file: &Path) -> String {
        let args = [
            "stack",
            "deploy",
            "--detach",
            "-o",
            "json",
            "-c",
            utf8(file),
        ];
        let (so, _) = self.cli_code(&args, 0);
        deployment_id(&so)
    }

    /// `wharf stack deploy --detach -c FILE` (its text output), asserting success; the
    /// deployment id it prints.
    fn deploy_detached_text(&self, file: &Path) -> String {
        let (so, _) = self.cli_code(&["stack", "deploy", "--detach", "-c", utf8(file)], 0);
        so.split_whitespace()
            .find(|t| t.starts_with("d-"))
            .unwrap_or_else(|| panic!("a deployment id in:\n{so}"))
            .to_string()
    }

    /// Write the stack file, deploy it (off the runtime) and wait until `n` instances of
    /// `service` are ready; they.
    async fn deploy_ready(
        &mut self,
        stack: &str,
        yaml: &str,
        service: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<InstanceInfo> {
        let file = self.stack_file(stack, yaml);
        self.cli_code_async(&["stack", "deploy", "-c", utf8(&file)], 0)
            .await;
        self.wait_ready(stack, service, n, timeout).await
    }

    async fn instances(&self, stack: &str, service: &str) -> Vec<InstanceInfo> {
        self.client()
            .service_instances(stack, service)
            .await
            .unwrap_or_default()
    }

    async fn service(&self, stack: &str, service: &str) -> Option<ServiceInfo> {
        self.client().get_service(stack, service).await.ok()
    }

    /// Wait until the service has exactly `n` instances, all running and ready (healthy where
    /// checked); they.
    async fn wait_ready(
        &self,
        stack: &str,
        service: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<InstanceInfo> {
        let what = format!("{n} ready instances of {stack}/{service}");
        wait_for(&what, timeout, || async {
            let insts = self.instances(stack, service).await;
            if insts.len() == n && insts.iter().all(|i| i.is_ready()) {
                Check::Done(insts)
            } else {
                not_yet(summary(&insts))
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }

    /// Wait until deployment `id` ends (succeeded, failed, superseded); `what` names the wait.
    async fn wait_deployment_end(&self, id: &str, what: &str, timeout: Duration) -> Deployment {
        wait_for(what, timeout, || async {
            match self.client().deployment(id).await {
                Ok(d) if d.state != DeploymentState::InProgress => Check::Done(d),
                other => not_yet(format!("{other:?}")),
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", self.logs()))
    }
}

/// `impl Harness` for a harness struct with the fields `dir: TempDir`, `client: Client` and
/// `stacks: Vec<String>`; its `logs` are `format!(FORMAT, TAILS(&self))`.
#[macro_export]
macro_rules! harness {
    ($t:ty, $format:literal, $tails:expr) => {
        impl $crate::common::Harness for $t {
            fn test_dir(&self) -> &std::path::Path {
                self.dir.path()
            }
            fn client(&self) -> &wharf_client::Client {
                &self.client
            }
            fn stacks_mut(&mut self) -> &mut Vec<String> {
                &mut self.stacks
            }
            fn logs(&self) -> String {
                let tails: fn(&$t) -> String = $tails;
                format!($format, tails(self))
            }
        }
    };
}

/// A path as the UTF-8 argument of a command.
pub fn utf8(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
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

crate::harness!(Wharf, "--- wharf up log (tail) ---\n{}", |w| tail(
    &w.log(),
    40
));

impl Wharf {
    /// Start `wharf up` and wait until its API answers with the token it wrote to the context.
    pub async fn start() -> Wharf {
        Self::start_with_env(vec![]).await
    }

    /// The test image built, `wharf up` started, and a fresh stack name with `prefix`.
    pub async fn start_for(prefix: &str) -> (Wharf, String) {
        testapp_image().await.expect("test image");
        (Self::start().await, unique_stack(prefix))
    }

    /// `start_for(prefix)`, then the stack `yaml(stack)` deployed with its `n` instances of
    /// `web` ready; them.
    pub async fn start_web(
        prefix: &str,
        n: usize,
        yaml: impl FnOnce(&str) -> String,
    ) -> (Wharf, String, Vec<InstanceInfo>) {
        let (mut w, stack) = Self::start_for(prefix).await;
        let insts = w
            .deploy_ready(&stack, &yaml(&stack), "web", n, Duration::from_secs(60))
            .await;
        (w, stack, insts)
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
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("wharf-up.log")
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `wharf up` command line, for tests that run it themselves.
    pub fn up_command(&self, extra: &[&str]) -> Command {
        let mut cmd = cli_command(&self.config_dir(), &["up"]);
        cmd.arg("--data-dir")
            .arg(self.data_dir())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(extra);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// (Re)start `wharf up` with the same directories, logging to `wharf-up.log`.
    pub async fn launch(&mut self, extra: &[&str]) {
        let mut cmd = self.up_command(extra);
        if !self.env.iter().any(|(k, _)| k == "WHARF_LOG") {
            // `WHARF_TEST_LOG` (a tracing filter) turns up what the servers log, to debug a test.
            let filter = std::env::var("WHARF_TEST_LOG").unwrap_or("wharf=info,warn".into());
            cmd.env("WHARF_LOG", filter);
        }
        let (log, url) = (self.log_path(), self.url());
        let (child, client) = self.spawn_api(&mut cmd, "wharf up", &log, &url).await;
        (self.child, self.client) = (Some(child), client);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// SIGKILL the `wharf up` process (no cleanup of any kind).
    pub fn kill9(&mut self) {
        kill(&mut self.child);
    }
}

impl Drop for Wharf {
    fn drop(&mut self) {
        self.kill9();
        let stacks = std::mem::take(&mut self.stacks);
        if !stacks.is_empty() {
            remove_containers(vec![], stacks);
        }
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

/// The containers of a stack (all, running or not), as the engine lists them.
pub async fn list_stack(stack: &str) -> Vec<ContainerSummary> {
    let docker = wharf_testkit::docker().await.expect("docker");
    let filters = HashMap::from([("label", vec![format!("io.wharf.stack={stack}")])]);
    let opts = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    docker
        .list_containers(Some(opts))
        .await
        .expect("list containers")
}

/// A listed container's name (without the leading `/`).
pub fn container_name(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first().cloned())
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string()
}

/// Whether a listed container is running.
pub fn is_running(c: &ContainerSummary) -> bool {
    c.state.as_ref().is_some_and(|s| s.to_string() == "running")
}

/// SIGKILL a container behind Wharf's back, as the engine's `docker kill` does.
pub async fn docker_kill(id: &str) {
    let docker = wharf_testkit::docker().await.expect("docker");
    docker
        .kill_container(id, None::<bollard::query_parameters::KillContainerOptions>)
        .await
        .unwrap_or_else(|e| panic!("docker kill {id}: {e}"));
}

/// Containers of a stack as the engine sees them: (name, id, running).
pub async fn containers(stack: &str) -> Vec<(String, String, bool)> {
    list_stack(stack)
        .await
        .into_iter()
        .map(|c| {
            (
                container_name(&c),
                c.id.clone().unwrap_or_default(),
                is_running(&c),
            )
        })
        .collect()
}

/// When the engine last started the container (its `State.StartedAt`).
pub async fn container_started_at(id: &str) -> String {
    let docker = wharf_testkit::docker().await.expect("docker");
    docker
        .inspect_container(id, None)
        .await
        .expect("inspect")
        .state
        .and_then(|s| s.started_at)
        .unwrap_or_default()
}

#[allow(unused_imports)]
pub use stack::{Service, Stack, testapp_stack, web_stack};

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
/// The first line of `text` that contains `needle`; panics showing `text` when none does.
pub fn line_with<'t>(text: &'t str, needle: &str) -> &'t str {
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
}

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
