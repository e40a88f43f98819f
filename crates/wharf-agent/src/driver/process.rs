//! The process driver: runs instances as native processes supervised by the agent, for hosts
//! without Docker (`x-wharf: {driver: process}`).
//!
//! Each instance runs `entrypoint + command` in a process group of its own, with the parent-death
//! signal set to SIGKILL, so that when the agent dies (even with `kill -9`) its processes die too and
//! nothing runs twice after a restart. State lives in memory only: after an agent restart `list` is
//! empty and the reconciler starts instances afresh.
//!
//! Caveat: Linux delivers the parent-death signal when the *thread* that spawned the child exits. The
//! driver spawns from the calling task's thread, so call it from a runtime whose worker threads live
//! as long as the agent (any tokio runtime does; `spawn_blocking` threads do not).
#![deny(unsafe_code)]

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{BoxStream, StreamExt};
use rustix::process::{Pid, Signal};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{broadcast, watch};
use tokio_stream::wrappers::BroadcastStream;
use wharf_types::{DriverKind, Health, HealthCheck, LogQuery, LogStream, ServiceSpec};

use super::{
    Driver, DriverError, DriverErrorKind, DriverInfo, InstanceSpec, LogLines, Observed,
    ObservedState, Stop,
};

/// Lines of output kept per instance.
pub const LOG_RING_LINES: usize = 2000;
const HEALTH_OUTPUT_MAX: usize = 500;

/// Runs instances as native processes.
#[derive(Clone)]
pub struct ProcessDriver {
    inner: Arc<Inner>,
}

struct Inner {
    instances: Mutex<HashMap<String, Arc<Instance>>>,
    changes: broadcast::Sender<()>,
}

struct Instance {
    spec: InstanceSpec,
    /// The directory of its secret and config files on the agent's tmpfs, when it has any:
    /// named to it by `WHARF_SECRETS_DIR`.
    files_dir: Option<std::path::PathBuf>,
    state: Mutex<RunState>,
    logs: Mutex<VecDeque<(LogStream, String)>>,
    log_tx: broadcast::Sender<LogEvent>,
    /// Serialises starts, so two concurrent starts spawn one process.
    start_lock: tokio::sync::Mutex<()>,
}

#[derive(Clone, Debug)]
enum LogEvent {
    Line(LogStream, String),
    /// The process of the current run exited and its output is drained.
    Exited,
}

struct RunState {
    state: ObservedState,
    /// Incremented on each start; a run's tasks stop when it changes.
    run: u64,
    pid: Option<Pid>,
    exit_code: Option<i64>,
    error: Option<String>,
    health: Health,
    health_output: Option<String>,
    started_at: Option<u64>,
    finished_at: Option<u64>,
    /// Becomes true when the current run's process has exited.
    exited: Option<watch::Receiver<bool>>,
    removed: bool,
}

impl Default for ProcessDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessDriver {
    pub fn new() -> Self {
        let (changes, _) = broadcast::channel(256);
        ProcessDriver {
            inner: Arc::new(Inner {
                instances: Mutex::default(),
                changes,
            }),
        }
    }

    fn get(&self, handle: &str) -> Option<Arc<Instance>> {
        self.inner.instances.lock().get(handle).cloned()
    }

    fn get_or_not_found(&self, handle: &str) -> Result<Arc<Instance>, DriverError> {
        self.get(handle).ok_or_else(|| {
            DriverError::new(
                DriverErrorKind::NotFound,
                format!("process instance {handle} not found"),
            )
        })
    }

    fn notify(&self) {
        let _ = self.inner.changes.send(());
    }

    async fn spawn(&self, inst: &Arc<Instance>) -> Result<(), DriverError> {
        let argv = argv(&inst.spec)?;
        let spec = &inst.spec.spec;
        let mut cmd = command(&argv, spec);
        if let Some(dir) = &inst.files_dir {
            cmd.env(SECRETS_DIR_VAR, dir);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let parent = rustix::process::getpid();
        #[allow(unsafe_code)]
        // SAFETY: the closure runs between fork and exec and only makes raw syscalls (prctl, getppid),
        // which are async-signal-safe; it allocates nothing and touches no locks.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
                // The agent may have died before prctl took effect: then do not run at all.
                if rustix::process::getppid() != Some(parent) {
                    return Err(std::io::Error::other("the agent exited"));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound
                || e.kind() == std::io::ErrorKind::PermissionDenied
            {
                DriverErrorKind::InvalidSpec
            } else {
                DriverErrorKind::Other
            };
            DriverError::new(kind, format!("cannot start {}: {e}", argv[0]))
        })?;
        let pid = child.id().and_then(|p| Pid::from_raw(p as i32));
        let (exit_tx, exit_rx) = watch::channel(false);
        let run = {
            let mut st = inst.state.lock();
            st.run += 1;
            st.state = ObservedState::Running;
            st.pid = pid;
            st.exit_code = None;
            st.error = None;
            st.health = if health_enabled(spec.healthcheck.as_ref()) {
                Health::Starting
            } else {
                Health::None
            };
            st.health_output = None;
            st.started_at = Some(now_ms());
            st.finished_at = None;
            st.exited = Some(exit_rx);
            st.run
        };
        tracing::info!(instance = inst.spec.id, pid = ?pid.map(Pid::as_raw_pid), "process started");
        let readers: Vec<_> = [
            child
                .stdout
                .take()
                .map(|s| spawn_reader(inst.clone(), LogStream::Stdout, s)),
            child
                .stderr
                .take()
                .map(|s| spawn_reader(inst.clone(), LogStream::Stderr, s)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let Some(hc) = spec.healthcheck.clone().filter(|h| health_enabled(Some(h))) {
            tokio::spawn(health_loop(self.clone(), inst.clone(), run, hc));
        }
        let driver = self.clone();
        let inst2 = inst.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            // Whatever the main process left behind in its group goes with it.
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            }
            for r in readers {
                let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
            }
            let (code, error) = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (s.code(), s.signal()) {
                        (Some(c), _) => (i64::from(c), None),
                        (None, Some(sig)) => (128 + i64::from(sig), None),
                        (None, None) => (-1, Some("exited without a code".to_string())),
                    }
                }
                Err(e) => (-1, Some(format!("cannot wait for the process: {e}"))),
            };
            {
                let mut st = inst2.state.lock();
                if st.run == run {
                    st.state = ObservedState::Exited;
                    st.pid = None;
                    st.exit_code = Some(code);
                    st.error = error;
                    st.finished_at = Some(now_ms());
                }
            }
            tracing::info!(instance = inst2.spec.id, code, "process exited");
            {
                let _logs = inst2.logs.lock();
                let _ = inst2.log_tx.send(LogEvent::Exited);
            }
            let _ = exit_tx.send(true);
            driver.notify();
        });
        self.notify();
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The variable that names an instance's directory of secret and config files (each by its
/// target's file name: `$WHARF_SECRETS_DIR/db_password`).
pub const SECRETS_DIR_VAR: &str = "WHARF_SECRETS_DIR";

/// A command running `argv` (not empty) in the directory and environment of `spec` (of the
/// agent's own, only `PATH` and `HOME`), with no stdin.
fn command(argv: &[String], spec: &ServiceSpec) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(inherited_env())
        .envs(&spec.environment)
        .stdin(Stdio::null());
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }
    cmd
}

fn inherited_env() -> Vec<(String, String)> {
    ["PATH", "HOME"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect()
}

fn argv(inst: &InstanceSpec) -> Result<Vec<String>, DriverError> {
    let spec = &inst.spec;
    let mut argv = spec.entrypoint.clone().unwrap_or_default();
    argv.extend(spec.command.clone().unwrap_or_default());
    if argv.is_empty() || argv[0].is_empty() {
        return Err(DriverError::new(
            DriverErrorKind::InvalidSpec,
            format!("service {} has no command to run with the process driver", inst.service),
        )
        .with_hint("set command: (the program and its arguments) for services with x-wharf: {driver: process}"));
    }
    Ok(argv)
}

fn health_enabled(hc: Option<&HealthCheck>) -> bool {
    hc.is_some_and(|h| !h.test.is_empty() && h.test[0] != "NONE")
}

fn spawn_reader(
    inst: Arc<Instance>,
    stream: LogStream,
    pipe: impl AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buf.pop();
                    }
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    let mut ring = inst.logs.lock();
                    if ring.len() == LOG_RING_LINES {
                        ring.pop_front();
                    }
                    ring.push_back((stream, line.clone()));
                    let _ = inst.log_tx.send(LogEvent::Line(stream, line));
                }
            }
        }
    })
}

/// Run the health check of one run of an instance until that run ends.
async fn health_loop(driver: ProcessDriver, inst: Arc<Instance>, run: u64, hc: HealthCheck) {
    let interval = Duration::from_millis(hc.interval_ms.max(1));
    let timeout = Duration::from_millis(hc.timeout_ms.max(1));
    let start_period = Duration::from_millis(hc.start_period_ms);
    let retries = hc.retries.max(1);
    let started = Instant::now();
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(interval).await;
        {
            let st = inst.state.lock();
            if st.run != run || st.state != ObservedState::Running || st.removed {
                return;
            }
        }
        let (ok, output) = run_probe(&inst, &hc.test, timeout).await;
        let changed = {
            let mut st = inst.state.lock();
            if st.run != run || st.state != ObservedState::Running {
                return;
            }
            let before = (st.health, st.health_output.clone());
            if ok {
                failures = 0;
                st.health = Health::Healthy;
                st.health_output = None;
            } else {
                st.health_output = Some(output);
                let in_start_period =
                    started.elapsed() < start_period && st.health == Health::Starting;
                if !in_start_period {
                    failures += 1;
                    if failures >= retries {
                        st.health = Health::Unhealthy;
                    }
                }
            }
            before.0 != st.health
        };
        if changed {
            driver.notify();
        }
    }
}

/// Run one health probe: (passed, output).
async fn run_probe(inst: &Instance, test: &[String], timeout: Duration) -> (bool, String) {
    let argv: Vec<String> = match test.first().map(String::as_str) {
        Some("CMD") => test[1..].to_vec(),
        Some("CMD-SHELL") => vec!["sh".to_string(), "-c".to_string(), test[1..].join(" ")],
        _ => test.to_vec(),
    };
    if argv.is_empty() {
        return (false, "empty health check command".to_string());
    }
    let mut cmd = command(&argv, &inst.spec.spec);
    cmd.kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => (
            false,
            format!("health check timed out after {}ms", timeout.as_millis()),
        ),
        Ok(Err(e)) => (false, format!("cannot run health check {}: {e}", argv[0])),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let text = text.trim();
            let text = if text.len() > HEALTH_OUTPUT_MAX {
                let mut end = HEALTH_OUTPUT_MAX;
                while !text.is_char_boundary(end) {
                    end -= 1;
                }
                format!("{}…", &text[..end])
            } else {
                text.to_string()
            };
            let text = if out.status.success() || !text.is_empty() {
                text
            } else {
                format!("health check exited with {}", out.status)
            };
            (out.status.success(), text)
        }
    }
}

/// Parse a signal name ("SIGTERM", "TERM", "term") or number.
pub fn parse_signal(name: &str) -> Option<Signal> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    let raw = match n {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ABRT" => libc::SIGABRT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "ALRM" => libc::SIGALRM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "WINCH" => libc::SIGWINCH,
        other => other.parse().ok()?,
    };
    Signal::from_named_raw(raw)
}

/// Whether `program` can be run: an existing path, or a name found on `PATH`.
fn find_program(program: &str, working_dir: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = match working_dir {
            Some(dir) if !program.starts_with('/') => Path::new(dir).join(program),
            _ => PathBuf::from(program),
        };
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| executable(p))
}

fn read_meminfo_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|kb| kb.parse::<u64>().ok())
                        .map(|kb| kb * 1024)
                })
        })
        .unwrap_or(0)
}

fn os_name() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("PRETTY_NAME=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

#[async_trait::async_trait]
impl Driver for ProcessDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Process
    }

    async fn info(&self) -> Result<DriverInfo, DriverError> {
        Ok(DriverInfo {
            kind: Some(DriverKind::Process),
            version: None,
            os: os_name(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            memory_bytes: read_meminfo_total(),
            storage_driver: None,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
        })
    }

    async fn list(&self) -> Result<Vec<Observed>, DriverError> {
        let all: Vec<Arc<Instance>> = self.inner.instances.lock().values().cloned().collect();
        let mut out: Vec<Observed> = all
            .iter()
            .map(|i| {
                let st = i.state.lock();
                Observed {
                    handle: i.spec.name(),
                    instance: i.spec.id.clone(),
                    stack: i.spec.stack.clone(),
                    service: i.spec.service.clone(),
                    slot: i.spec.slot,
                    generation: i.spec.generation,
                    spec_hash: i.spec.spec_hash.clone(),
                    state: st.state,
                    exit_code: st.exit_code,
                    error: st.error.clone(),
                    health: st.health,
                    health_output: st.health_output.clone(),
                    started_at: st.started_at,
                    finished_at: st.finished_at,
                    address: (st.state == ObservedState::Running).then(|| "127.0.0.1".to_string()),
                }
            })
            .collect();
        out.sort_by(|a, b| a.handle.cmp(&b.handle));
        Ok(out)
    }

    async fn prepare(&self, inst: &InstanceSpec) -> Result<(), DriverError> {
        let argv = argv(inst)?;
        let wd = inst.spec.working_dir.as_deref();
        if let Some(dir) = wd
            && !Path::new(dir).is_dir()
        {
            return Err(DriverError::new(
                DriverErrorKind::InvalidSpec,
                format!("working directory {dir} does not exist on this host"),
            )
            .with_hint("create it or change working_dir:"));
        }
        if find_program(&argv[0], wd).is_none() {
            return Err(DriverError::new(
                DriverErrorKind::InvalidSpec,
                format!(
                    "program {} not found or not executable on this host",
                    argv[0]
                ),
            )
            .with_hint(
                "install it, or give its absolute path in command: (the agent's PATH is searched)",
            ));
        }
        if inst.spec.user.is_some() {
            tracing::warn!(instance = inst.id, "user: is ignored by the process driver");
        }
        Ok(())
    }

    async fn create_with_files(
        &self,
        inst: &InstanceSpec,
        files: &[crate::driver::MountedFile],
    ) -> Result<String, DriverError> {
        argv(inst)?;
        let name = inst.name();
        let mut all = self.inner.instances.lock();
        if !all.contains_key(&name) {
            let (log_tx, _) = broadcast::channel(1024);
            all.insert(
                name.clone(),
                Arc::new(Instance {
                    spec: inst.clone(),
                    files_dir: files
                        .first()
                        .and_then(|f| f.host.parent())
                        .map(std::path::Path::to_path_buf),
                    state: Mutex::new(RunState {
                        state: ObservedState::Created,
                        run: 0,
                        pid: None,
                        exit_code: None,
                        error: None,
                        health: Health::None,
                        health_output: None,
                        started_at: None,
                        finished_at: None,
                        exited: None,
                        removed: false,
                    }),
                    logs: Mutex::new(VecDeque::new()),
                    log_tx,
                    start_lock: tokio::sync::Mutex::new(()),
                }),
            );
            drop(all);
            self.notify();
        }
        Ok(name)
    }

    async fn start(&self, handle: &str) -> Result<(), DriverError> {
        let inst = self.get_or_not_found(handle)?;
        let _guard = inst.start_lock.lock().await;
        if inst.state.lock().state == ObservedState::Running {
            return Ok(());
        }
        self.spawn(&inst).await
    }

    async fn stop(&self, handle: &str, how: &Stop) -> Result<(), DriverError> {
        let Some(inst) = self.get(handle) else {
            return Ok(());
        };
        let sig = match (how.signal.as_deref()).filter(|s| !s.is_empty()).or(inst
            .spec
            .spec
            .stop_signal
            .as_deref())
        {
            Some(name) => parse_signal(name).ok_or_else(|| {
                DriverError::new(
                    DriverErrorKind::InvalidSpec,
                    format!("unknown stop signal {name}"),
                )
                .with_hint("use a name such as SIGTERM, SIGINT, SIGQUIT or SIGKILL")
            })?,
            None => Signal::TERM,
        };
        let (pid, exited) = {
            let st = inst.state.lock();
            if st.state != ObservedState::Running {
                return Ok(());
            }
            (st.pid, st.exited.clone())
        };
        let (Some(pid), Some(mut exited)) = (pid, exited) else {
            return Ok(());
        };
        let _ = rustix::process::kill_process_group(pid, sig);
        if tokio::time::timeout(how.grace, exited.wait_for(|e| *e))
            .await
            .is_err()
        {
            tracing::info!(instance = inst.spec.id, "grace period over: killing");
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
            if tokio::time::timeout(Duration::from_secs(10), exited.wait_for(|e| *e))
                .await
                .is_err()
            {
                return Err(DriverError::new(
                    DriverErrorKind::Other,
                    format!("process {} did not exit after SIGKILL", pid.as_raw_pid()),
                ));
            }
        }
        Ok(())
    }

    async fn remove(&self, handle: &str) -> Result<(), DriverError> {
        let Some(inst) = self.get(handle) else {
            return Ok(());
        };
        self.stop(handle, &Stop::with_signal(Duration::ZERO, "SIGKILL"))
            .await?;
        inst.state.lock().removed = true;
        self.inner.instances.lock().remove(handle);
        self.notify();
        Ok(())
    }

    async fn logs(&self, handle: &str, q: LogQuery) -> Result<LogLines, DriverError> {
        let inst = self.get_or_not_found(handle)?;
        // Snapshot and subscription under the ring's lock: no line is lost or repeated.
        let (snapshot, rx) = {
            let ring = inst.logs.lock();
            let skip = super::tail_skip(ring.len(), q.tail);
            let snapshot: Vec<_> = ring.iter().skip(skip).cloned().collect();
            let running = inst.state.lock().state == ObservedState::Running;
            (
                snapshot,
                (q.follow && running).then(|| inst.log_tx.subscribe()),
            )
        };
        let head = futures::stream::iter(snapshot.into_iter().map(Ok));
        let Some(rx) = rx else {
            return Ok(head.boxed());
        };
        let live = BroadcastStream::new(rx)
            .filter_map(|ev| async move {
                match ev {
                    Ok(LogEvent::Line(s, l)) => Some(Some((s, l))),
                    Ok(LogEvent::Exited) => Some(None),
                    // Lagged: lines were dropped for this slow reader; carry on.
                    Err(_) => None,
                }
            })
            .take_while(|ev| futures::future::ready(ev.is_some()))
            .filter_map(|ev| async move { ev.map(Ok) });
        Ok(head.chain(live).boxed())
    }

    async fn changes(&self) -> Result<BoxStream<'static, ()>, DriverError> {
        let rx = self.inner.changes.subscribe();
        Ok(BroadcastStream::new(rx).map(|_| ()).boxed())
    }

    async fn remove_stack_resources(
        &self,
        _stack: &str,
        _volumes: bool,
    ) -> Result<(), DriverError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signal_names() {
        assert_eq!(parse_signal("SIGINT"), Some(Signal::INT));
        assert_eq!(parse_signal("int"), Some(Signal::INT));
        assert_eq!(parse_signal("TERM"), Some(Signal::TERM));
        assert_eq!(parse_signal("9"), Some(Signal::KILL));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }

    #[test]
    fn finds_programs_on_path() {
        assert!(find_program("sh", None).is_some());
        assert!(find_program("/bin/sh", None).is_some());
        assert!(find_program("wharf-no-such-program", None).is_none());
    }
}
