//! The `Driver` seam: how an agent runs instances on its host. Docker and native processes implement
//! it; `fake::FakeDriver` records calls and injects failures for the reconciler's unit tests.
//!
//! A driver is stateless towards the agent: everything the agent needs to adopt an instance after a
//! restart is in the instance's labels (`wharf_types::labels`), so `list` after a crash tells the truth.

pub mod docker;
pub mod fake;
pub mod process;

use std::time::Duration;

use futures::stream::BoxStream;
use wharf_types::{DriverKind, Health, LogQuery, LogStream, ServiceSpec};

/// Everything a driver needs to run one instance: what the master assigned, as it assigned it
/// (`Assignment::name` and `Assignment::labels` name and label what runs it).
pub type InstanceSpec = wharf_types::Assignment;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObservedState {
    /// Created, never started.
    Created,
    Running,
    /// Exited (or killed). `exit_code` is set.
    Exited,
    /// Paused, restarting, being removed: the driver is busy with it.
    Other,
}

/// What a driver sees of one instance it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Container id, or for the process driver the instance name.
    pub handle: String,
    pub instance: String,
    pub stack: String,
    pub service: String,
    pub slot: u32,
    pub generation: u64,
    pub spec_hash: String,
    pub state: ObservedState,
    pub exit_code: Option<i64>,
    /// Why it exited or could not run (OOM-killed, engine error), when the driver knows.
    pub error: Option<String>,
    pub health: Health,
    /// Output of the last health check when it failed.
    pub health_output: Option<String>,
    /// Unix ms.
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// The IP address the ingress reaches the instance at, while it runs (docker: its address on
    /// the stack network; process: 127.0.0.1).
    pub address: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriverInfo {
    pub kind: Option<DriverKind>,
    /// Engine version, e.g. "20.10.24" (docker only).
    pub version: Option<String>,
    pub os: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// The engine's storage driver, e.g. "overlay2" (docker only).
    pub storage_driver: Option<String>,
    /// Kernel release of the host, e.g. "6.1.0-28-amd64".
    pub kernel: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverErrorKind {
    /// The engine cannot be reached.
    Unavailable,
    /// The image does not exist locally and cannot be pulled or built.
    ImageMissing,
    /// A build failed.
    BuildFailed,
    /// A published host port is already taken.
    PortTaken,
    /// The handle does not exist (already removed).
    NotFound,
    /// The spec cannot run on this driver (bad mount, unknown user...).
    InvalidSpec,
    Other,
}

/// A driver failure, with a message for people and, where possible, a hint of what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DriverError {
    pub kind: DriverErrorKind,
    pub message: String,
    pub hint: Option<String>,
}

impl DriverError {
    pub fn new(kind: DriverErrorKind, message: impl Into<String>) -> Self {
        DriverError {
            kind,
            message: message.into(),
            hint: None,
        }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
    /// Message and hint in one line, for instance status.
    pub fn describe(&self) -> String {
        match &self.hint {
            Some(h) => format!("{}; hint: {h}", self.message),
            None => self.message.clone(),
        }
    }
}

/// One file an instance mounts (a secret or a config): where it is on the agent's tmpfs
/// (`files.rs` writes it), and where it goes in the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountedFile {
    pub kind: wharf_types::ObjectKind,
    pub host: std::path::PathBuf,
    pub target: String,
}

/// How an instance is stopped: `signal` (SIGTERM when `None`), then killed after `grace`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stop {
    pub grace: Duration,
    pub signal: Option<String>,
}

impl Stop {
    /// What a spec without stop settings gets: SIGTERM, then 10 s.
    pub const DEFAULT: Stop = Stop::after(Duration::from_secs(10));
    /// SIGTERM and no grace (fenced instances).
    pub const NOW: Stop = Stop::after(Duration::ZERO);

    pub const fn after(grace: Duration) -> Stop {
        Stop {
            grace,
            signal: None,
        }
    }

    /// The signal to send, then the grace to wait.
    pub fn with_signal(grace: Duration, signal: &str) -> Stop {
        Stop {
            grace,
            signal: Some(signal.to_string()),
        }
    }

    /// How a spec says to stop its instances (`stop_grace_period`, `stop_signal`).
    pub fn of(spec: &ServiceSpec) -> Stop {
        Stop {
            grace: spec
                .stop_grace_period_ms
                .map_or(Stop::DEFAULT.grace, Duration::from_millis),
            signal: spec.stop_signal.clone(),
        }
    }
}

pub type LogLines = BoxStream<'static, Result<(LogStream, String), DriverError>>;

/// The most bytes of output one exec chunk carries ([`wharf_types::MAX_EXEC_CHUNK`]).
pub(crate) const EXEC_CHUNK: usize = wharf_types::MAX_EXEC_CHUNK;

/// A command running in an instance (`Driver::exec`): its output until it ends, its standard
/// input, and what may be asked of it while it runs.
pub struct ExecProcess {
    /// Output chunks as the engine sends them; ends when the command ends.
    pub output: BoxStream<'static, Result<(LogStream, Vec<u8>), DriverError>>,
    /// The command's standard input (a sink when it was not asked for).
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    pub control: Box<dyn ExecControl>,
}

/// What may be asked of a running command.
#[async_trait::async_trait]
pub trait ExecControl: Send + Sync + 'static {
    /// Its terminal has a new size.
    async fn resize(&self, size: wharf_types::TtySize) -> Result<(), DriverError>;
    /// Its exit code, once its output ended (none when the engine does not know it).
    async fn exit_code(&self) -> Result<Option<i64>, DriverError>;
}

/// How many of `len` kept log lines to skip to give the last `tail` (all when `None`).
fn tail_skip(len: usize, tail: Option<u64>) -> usize {
    tail.map_or(0, |t| {
        len.saturating_sub(usize::try_from(t).unwrap_or(usize::MAX))
    })
}

/// How an agent runs instances. Implementations must be idempotent where noted: the reconciler
/// may call again after a crash between the call and its effect.
#[async_trait::async_trait]
pub trait Driver: Send + Sync + 'static {
    fn kind(&self) -> DriverKind;
    /// Facts about the host and engine. Fails with `Unavailable` when the engine cannot be reached.
    async fn info(&self) -> Result<DriverInfo, DriverError>;
    /// Every instance this driver runs that Wharf created (by label), in any state. Observes
    /// only: it changes nothing (the agent lists on every pass, and to find an instance's logs).
    async fn list(&self) -> Result<Vec<Observed>, DriverError>;
    /// Make sure what the instance needs exists: its image (built when `spec.build` is set and the
    /// image is missing), the stack's network, its named volumes. Idempotent.
    async fn prepare(&self, inst: &InstanceSpec) -> Result<(), DriverError>;
    /// Create the instance (not started). Idempotent: when one with `inst.name()` exists already,
    /// returns its handle. A driver implements this or `create_with_files`.
    async fn create(&self, inst: &InstanceSpec) -> Result<String, DriverError> {
        self.create_with_files(inst, &[]).await
    }
    /// `create`, with the instance's secret and config files (on the agent's tmpfs) mounted
    /// read-only at their targets. A driver that cannot mount files refuses a spec with any.
    async fn create_with_files(
        &self,
        inst: &InstanceSpec,
        files: &[MountedFile],
    ) -> Result<String, DriverError> {
        if files.is_empty() {
            return self.create(inst).await;
        }
        Err(DriverError::new(
            DriverErrorKind::InvalidSpec,
            format!(
                "the {:?} driver cannot mount secrets or configs",
                self.kind()
            ),
        ))
    }
    /// Start (or start again after an exit). Starting a running instance is not an error.
    async fn start(&self, handle: &str) -> Result<(), DriverError>;
    /// Stop as `how` says: its signal, then a kill after its grace. Stopping a stopped one is fine.
    async fn stop(&self, handle: &str, how: &Stop) -> Result<(), DriverError>;
    /// Remove a stopped instance. Removing a missing one is not an error.
    async fn remove(&self, handle: &str) -> Result<(), DriverError>;
    /// Output lines as `q` asks: the last `tail` (all when `None`), then new ones if it follows.
    async fn logs(&self, handle: &str, q: LogQuery) -> Result<LogLines, DriverError>;
    /// A stream that yields whenever an instance changed state (started, died, health changed), so
    /// the reconciler reacts at once instead of at its next tick. May end; the agent re-subscribes.
    async fn changes(&self) -> Result<BoxStream<'static, ()>, DriverError>;
    /// Remove what `prepare` created for a stack: its network and, when `volumes`, its named volumes.
    async fn remove_stack_resources(&self, stack: &str, volumes: bool) -> Result<(), DriverError>;
    /// Run a command in the running instance `handle` (`wharf service exec`). A driver that
    /// cannot refuses.
    async fn exec(
        &self,
        _handle: &str,
        _spec: &wharf_types::ExecSpec,
    ) -> Result<ExecProcess, DriverError> {
        Err(DriverError::new(
            DriverErrorKind::InvalidSpec,
            format!(
                "the {:?} driver cannot run commands in its instances",
                self.kind()
            ),
        )
        .with_hint("exec works in docker instances; run the command on the node itself"))
    }
    /// What the local image `image` installs (its OS packages, from its layers) and the
    /// engine's id of it (`wharf image scan`, a deploy whose stack blocks on findings).
    async fn inventory(
        &self,
        image: &str,
    ) -> Result<(wharf_types::Inventory, String), DriverError> {
        Err(DriverError::new(
            DriverErrorKind::InvalidSpec,
            format!(
                "the {:?} driver has no images to scan ({image})",
                self.kind()
            ),
        ))
    }
    /// The resource usage of the instance `handle` now: only the usage fields of the row.
    async fn stats(&self, _handle: &str) -> Result<wharf_types::InstanceStats, DriverError> {
        Err(DriverError::new(
            DriverErrorKind::InvalidSpec,
            format!(
                "the {:?} driver does not measure its instances",
                self.kind()
            ),
        ))
    }
}
