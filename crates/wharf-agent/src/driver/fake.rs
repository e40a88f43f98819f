//! An in-memory `Driver` for the reconciler's unit tests: records every call, injects failures,
//! and simulates crashes, health changes and output.
//!
//! Handles are `fake-<n>`; `create` is idempotent by instance name like the real drivers. Every
//! simulated change (create, start, stop, exit, health, remove) wakes `changes()` subscribers.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use wharf_types::{DriverKind, Health, LogQuery, LogStream};

use super::{
    Driver, DriverError, DriverErrorKind, DriverInfo, InstanceSpec, LogLines, Observed,
    ObservedState, Stop,
};

/// One recorded driver call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Info,
    List,
    /// Instance id (`<stack>.<service>.<slot>`).
    Prepare(String),
    /// Instance name (`InstanceSpec::name`).
    Create(String),
    Start(String),
    Stop(String),
    Remove(String),
    Logs(String),
    Changes,
    /// Stack, volumes.
    RemoveStackResources(String, bool),
    /// Handle, the command.
    Exec(String, Vec<String>),
    Stats(String),
}

/// An operation, for `fail_next`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Info,
    List,
    Prepare,
    Create,
    Start,
    Stop,
    Remove,
    Logs,
    Changes,
    RemoveStackResources,
    Exec,
}

/// What the fake holds for one instance.
#[derive(Clone, Debug)]
pub struct FakeInstance {
    pub spec: InstanceSpec,
    pub observed: Observed,
    pub logs: Vec<(LogStream, String)>,
    /// The last stop's grace and signal.
    pub last_stop: Option<Stop>,
}

#[derive(Default)]
struct State {
    /// What each instance (by name) had mounted at create: (target, the file's bytes then).
    mounted: HashMap<String, Vec<(String, Vec<u8>)>>,
    calls: Vec<Call>,
    instances: BTreeMap<String, FakeInstance>,
    by_name: HashMap<String, String>,
    next: u64,
    fail_next: HashMap<Op, VecDeque<DriverError>>,
    fail_prepare: HashMap<String, DriverError>,
    info: DriverInfo,
}

/// The in-memory driver. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct FakeDriver {
    state: Arc<Mutex<State>>,
    kind: DriverKind,
    changes: broadcast::Sender<()>,
    log_tx: broadcast::Sender<(String, LogStream, String)>,
}

impl Default for FakeDriver {
    fn default() -> Self {
        Self::new()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn not_found(handle: &str) -> DriverError {
    DriverError::new(
        DriverErrorKind::NotFound,
        format!("fake instance {handle} not found"),
    )
}

impl FakeDriver {
    /// A fake docker driver.
    pub fn new() -> Self {
        Self::with_kind(DriverKind::Docker)
    }

    /// A fake of the given kind.
    pub fn with_kind(kind: DriverKind) -> Self {
        let (changes, _) = broadcast::channel(1024);
        let (log_tx, _) = broadcast::channel(1024);
        let info = DriverInfo {
            kind: Some(kind),
            version: Some("fake".to_string()),
            os: "fake".to_string(),
            cpus: 4,
            memory_bytes: 8 << 30,
            storage_driver: None,
            kernel: None,
        };
        FakeDriver {
            state: Arc::new(Mutex::new(State {
                info,
                ..Default::default()
            })),
            kind,
            changes,
            log_tx,
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    fn notify(&self) {
        let _ = self.changes.send(());
    }

    /// Record `call`, then fail if a failure was injected for `op`.
    fn enter(&self, call: Call, op: Op) -> Result<(), DriverError> {
        let mut st = self.lock();
        st.calls.push(call);
        match st.fail_next.get_mut(&op).and_then(VecDeque::pop_front) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Calls so far except the read-only ones (`Info`, `List`, `Logs`, `Changes`).
    pub fn mutations(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| {
                !matches!(
                    c,
                    Call::Info | Call::List | Call::Logs(_) | Call::Changes | Call::Stats(_)
                )
            })
            .collect()
    }

    /// Forget the calls recorded so far.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Make the next call of `op` fail with `err` (queued: call it twice for two failures).
    pub fn fail_next(&self, op: Op, err: DriverError) {
        self.lock().fail_next.entry(op).or_default().push_back(err);
    }

    /// Make every `prepare` of the instance with this id fail with `err` until cleared.
    pub fn fail_prepare_for(&self, instance: &str, err: DriverError) {
        self.lock().fail_prepare.insert(instance.to_string(), err);
    }

    pub fn clear_prepare_failure(&self, instance: &str) {
        self.lock().fail_prepare.remove(instance);
    }

    /// Put an instance in place as if it had been there before (an agent restart adopting it).
    /// Returns its handle.
    pub fn insert(&self, inst: &InstanceSpec, state: ObservedState) -> String {
        let handle = self.create_inner(inst);
        {
            let mut st = self.lock();
            if let Some(i) = st.instances.get_mut(&handle) {
                i.observed.state = state;
                match state {
                    ObservedState::Running => i.observed.started_at = Some(now_ms()),
                    ObservedState::Exited => {
                        i.observed.exit_code = Some(0);
                        i.observed.finished_at = Some(now_ms());
                    }
                    _ => {}
                }
            }
        }
        self.notify();
        handle
    }

    /// Simulate the instance's process exiting with `code` (a crash when non-zero).
    pub fn exit(&self, handle: &str, code: i64) {
        self.update(handle, |o| {
            o.state = ObservedState::Exited;
            o.exit_code = Some(code);
            o.finished_at = Some(now_ms());
        });
    }

    /// Simulate a health check result.
    pub fn set_health(&self, handle: &str, health: Health, output: Option<&str>) {
        self.update(handle, |o| {
            o.health = health;
            o.health_output = output.map(str::to_string);
        });
    }

    /// Simulate a line of output.
    pub fn push_log(&self, handle: &str, stream: LogStream, line: &str) {
        let mut st = self.lock();
        if let Some(i) = st.instances.get_mut(handle) {
            i.logs.push((stream, line.to_string()));
            let _ = self
                .log_tx
                .send((handle.to_string(), stream, line.to_string()));
        }
    }

    /// What the fake holds for a handle.
    pub fn instance(&self, handle: &str) -> Option<FakeInstance> {
        self.lock().instances.get(handle).cloned()
    }

    /// The files the instance named `name` had mounted when it was created: (target, bytes).
    pub fn mounted(&self, name: &str) -> Vec<(String, Vec<u8>)> {
        self.lock().mounted.get(name).cloned().unwrap_or_default()
    }

    /// What `list` would show for a handle.
    pub fn observed(&self, handle: &str) -> Option<Observed> {
        self.instance(handle).map(|i| i.observed)
    }

    /// Handles of the instances in `state`.
    pub fn handles_in(&self, state: ObservedState) -> Vec<String> {
        self.lock()
            .instances
            .iter()
            .filter(|(_, i)| i.observed.state == state)
            .map(|(h, _)| h.clone())
            .collect()
    }

    fn update(&self, handle: &str, f: impl FnOnce(&mut Observed)) {
        let found = {
            let mut st = self.lock();
            match st.instances.get_mut(handle) {
                Some(i) => {
                    f(&mut i.observed);
                    true
                }
                None => false,
            }
        };
        if found {
            self.notify();
        }
    }

    fn create_inner(&self, inst: &InstanceSpec) -> String {
        let name = inst.name();
        let mut st = self.lock();
        if let Some(h) = st.by_name.get(&name) {
            return h.clone();
        }
        st.next += 1;
        let handle = format!("fake-{}", st.next);
        let observed = Observed {
            handle: handle.clone(),
            instance: inst.id.clone(),
            stack: inst.stack.clone(),
            service: inst.service.clone(),
            slot: inst.slot,
            generation: inst.generation,
            spec_hash: inst.spec_hash.clone(),
            state: ObservedState::Created,
            exit_code: None,
            error: None,
            health: Health::None,
            health_output: None,
            started_at: None,
            finished_at: None,
            address: None,
        };
        st.instances.insert(
            handle.clone(),
            FakeInstance {
                spec: inst.clone(),
                observed,
                logs: Vec::new(),
                last_stop: None,
            },
        );
        st.by_name.insert(name, handle.clone());
        handle
    }
}

#[async_trait::async_trait]
impl Driver for FakeDriver {
    fn kind(&self) -> DriverKind {
        self.kind
    }

    async fn info(&self) -> Result<DriverInfo, DriverError> {
        self.enter(Call::Info, Op::Info)?;
        Ok(self.lock().info.clone())
    }

    async fn list(&self) -> Result<Vec<Observed>, DriverError> {
        self.enter(Call::List, Op::List)?;
        Ok(self
            .lock()
            .instances
            .values()
            .map(|i| i.observed.clone())
            .collect())
    }

    async fn prepare(&self, inst: &InstanceSpec) -> Result<(), DriverError> {
        self.enter(Call::Prepare(inst.id.clone()), Op::Prepare)?;
        match self.lock().fail_prepare.get(&inst.id) {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    async fn create(&self, inst: &InstanceSpec) -> Result<String, DriverError> {
        self.enter(Call::Create(inst.name()), Op::Create)?;
        let existed = self.lock().by_name.contains_key(&inst.name());
        let handle = self.create_inner(inst);
        if !existed {
            self.notify();
        }
        Ok(handle)
    }

    async fn create_with_files(
        &self,
        inst: &InstanceSpec,
        files: &[crate::driver::MountedFile],
    ) -> Result<String, DriverError> {
        let seen = files
            .iter()
            .map(|f| (f.target.clone(), std::fs::read(&f.host).unwrap_or_default()))
            .collect();
        let h = self.create(inst).await?;
        self.lock().mounted.insert(inst.name(), seen);
        Ok(h)
    }

    async fn start(&self, handle: &str) -> Result<(), DriverError> {
        self.enter(Call::Start(handle.to_string()), Op::Start)?;
        let changed = {
            let mut st = self.lock();
            let i = st
                .instances
                .get_mut(handle)
                .ok_or_else(|| not_found(handle))?;
            if i.observed.state == ObservedState::Running {
                false
            } else {
                let checked = i
                    .spec
                    .spec
                    .healthcheck
                    .as_ref()
                    .is_some_and(|h| h.test.first().is_some_and(|t| t != "NONE"));
                let o = &mut i.observed;
                o.state = ObservedState::Running;
                o.exit_code = None;
                o.error = None;
                o.health = if checked {
                    Health::Starting
                } else {
                    Health::None
                };
                o.health_output = None;
                o.started_at = Some(now_ms());
                o.finished_at = None;
                true
            }
        };
        if changed {
            self.notify();
        }
        Ok(())
    }

    async fn stop(&self, handle: &str, how: &Stop) -> Result<(), DriverError> {
        self.enter(Call::Stop(handle.to_string()), Op::Stop)?;
        let changed = {
            let mut st = self.lock();
            let Some(i) = st.instances.get_mut(handle) else {
                return Ok(());
            };
            i.last_stop = Some(how.clone());
            if i.observed.state == ObservedState::Running {
                let sig = (how.signal.as_deref())
                    .and_then(super::process::parse_signal)
                    .map(|s| i64::from(s.as_raw()))
                    .unwrap_or(i64::from(libc::SIGTERM));
                i.observed.state = ObservedState::Exited;
                i.observed.exit_code = Some(128 + sig);
                i.observed.finished_at = Some(now_ms());
                true
            } else {
                false
            }
        };
        if changed {
            self.notify();
        }
        Ok(())
    }

    async fn remove(&self, handle: &str) -> Result<(), DriverError> {
        self.enter(Call::Remove(handle.to_string()), Op::Remove)?;
        let removed = {
            let mut st = self.lock();
            match st.instances.remove(handle) {
                Some(i) => {
                    st.by_name.remove(&i.spec.name());
                    true
                }
                None => false,
            }
        };
        if removed {
            self.notify();
        }
        Ok(())
    }

    async fn logs(&self, handle: &str, q: LogQuery) -> Result<LogLines, DriverError> {
        self.enter(Call::Logs(handle.to_string()), Op::Logs)?;
        let st = self.lock();
        let i = st.instances.get(handle).ok_or_else(|| not_found(handle))?;
        let skip = super::tail_skip(i.logs.len(), q.tail);
        let head: Vec<_> = i.logs[skip..].iter().cloned().map(Ok).collect();
        let head = futures::stream::iter(head);
        if !q.follow {
            return Ok(head.boxed());
        }
        let h = handle.to_string();
        let live = BroadcastStream::new(self.log_tx.subscribe()).filter_map(move |item| {
            let h = h.clone();
            async move {
                match item {
                    Ok((handle, stream, line)) if handle == h => Some(Ok((stream, line))),
                    _ => None,
                }
            }
        });
        Ok(head.chain(live).boxed())
    }

    async fn changes(&self) -> Result<BoxStream<'static, ()>, DriverError> {
        self.enter(Call::Changes, Op::Changes)?;
        Ok(BroadcastStream::new(self.changes.subscribe())
            .map(|_| ())
            .boxed())
    }

    async fn remove_stack_resources(&self, stack: &str, volumes: bool) -> Result<(), DriverError> {
        self.enter(
            Call::RemoveStackResources(stack.to_string(), volumes),
            Op::RemoveStackResources,
        )
    }

    /// Records the command; its output is the command line, then what its input was (up to
    /// its end), and it exits 0.
    async fn exec(
        &self,
        handle: &str,
        spec: &wharf_types::ExecSpec,
    ) -> Result<super::ExecProcess, DriverError> {
        self.enter(
            Call::Exec(handle.to_string(), spec.command.clone()),
            Op::Exec,
        )?;
        let running = self
            .lock()
            .instances
            .get(handle)
            .is_some_and(|i| i.observed.state == ObservedState::Running);
        if !running {
            return Err(not_found(handle));
        }
        let (input, mut echo) = tokio::io::duplex(64 * 1024);
        let line = format!("{}\n", spec.command.join(" ")).into_bytes();
        let stdin = spec.stdin;
        let output = futures::stream::once(async move { Ok((LogStream::Stdout, line)) })
            .chain(
                futures::stream::once(async move {
                    use tokio::io::AsyncReadExt;
                    let mut read = Vec::new();
                    if stdin {
                        let _ = echo.read_to_end(&mut read).await;
                    }
                    Ok((LogStream::Stdout, read))
                })
                .filter(|r| futures::future::ready(!matches!(r, Ok((_, d)) if d.is_empty()))),
            )
            .boxed();
        Ok(super::ExecProcess {
            output,
            input: Box::pin(input),
            control: Box::new(FakeExec),
        })
    }

    async fn stats(&self, handle: &str) -> Result<wharf_types::InstanceStats, DriverError> {
        self.enter(Call::Stats(handle.to_string()), Op::Info)?;
        if !self.lock().instances.contains_key(handle) {
            return Err(not_found(handle));
        }
        Ok(wharf_types::InstanceStats {
            container_id: Some(handle.to_string()),
            cpu_percent: 1.5,
            memory_bytes: 4 << 20,
            memory_limit_bytes: 8 << 30,
            pids: 1,
            ..Default::default()
        })
    }
}

/// A fake command: no terminal to resize, always exits 0.
struct FakeExec;

#[async_trait::async_trait]
impl super::ExecControl for FakeExec {
    async fn resize(&self, _: wharf_types::TtySize) -> Result<(), DriverError> {
        Ok(())
    }
    async fn exit_code(&self) -> Result<Option<i64>, DriverError> {
        Ok(Some(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::ServiceSpec;

    fn inst(slot: u32) -> InstanceSpec {
        let spec = ServiceSpec {
            image: Some("app:1".to_string()),
            ..Default::default()
        };
        InstanceSpec {
            id: format!("s.web.{slot}"),
            stack: "s".to_string(),
            service: "web".to_string(),
            slot,
            generation: 1,
            spec_hash: spec.instance_hash(),
            spec: spec.into(),
        }
    }

    #[tokio::test]
    async fn records_calls_and_simulates() {
        let d = FakeDriver::new();
        let mut changes = d.changes().await.unwrap();
        let i = inst(0);
        d.prepare(&i).await.unwrap();
        let h = d.create(&i).await.unwrap();
        assert_eq!(h, "fake-1");
        assert_eq!(d.create(&i).await.unwrap(), h);
        d.start(&h).await.unwrap();
        assert!(changes.next().await.is_some());
        assert_eq!(d.observed(&h).unwrap().state, ObservedState::Running);
        d.exit(&h, 3);
        let o = d.observed(&h).unwrap();
        assert_eq!((o.state, o.exit_code), (ObservedState::Exited, Some(3)));
        d.start(&h).await.unwrap();
        d.set_health(&h, Health::Unhealthy, Some("503"));
        assert_eq!(
            d.observed(&h).unwrap().health_output.as_deref(),
            Some("503")
        );
        d.stop(&h, &Stop::after(std::time::Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!(d.observed(&h).unwrap().exit_code, Some(143));
        d.remove(&h).await.unwrap();
        d.remove(&h).await.unwrap();
        assert!(d.list().await.unwrap().is_empty());
        assert_eq!(
            d.mutations(),
            vec![
                Call::Prepare("s.web.0".into()),
                Call::Create(i.name()),
                Call::Create(i.name()),
                Call::Start(h.clone()),
                Call::Start(h.clone()),
                Call::Stop(h.clone()),
                Call::Remove(h.clone()),
                Call::Remove(h.clone()),
            ]
        );
    }

    #[tokio::test]
    async fn injects_failures() {
        let d = FakeDriver::new();
        let i = inst(1);
        d.fail_next(Op::Create, DriverError::new(DriverErrorKind::Other, "boom"));
        assert_eq!(d.create(&i).await.unwrap_err().message, "boom");
        assert!(d.create(&i).await.is_ok());
        d.fail_prepare_for(
            "s.web.1",
            DriverError::new(DriverErrorKind::ImageMissing, "no image"),
        );
        assert_eq!(
            d.prepare(&i).await.unwrap_err().kind,
            DriverErrorKind::ImageMissing
        );
        assert_eq!(
            d.prepare(&i).await.unwrap_err().kind,
            DriverErrorKind::ImageMissing
        );
        d.clear_prepare_failure("s.web.1");
        assert!(d.prepare(&i).await.is_ok());
        assert_eq!(
            d.start("fake-99").await.unwrap_err().kind,
            DriverErrorKind::NotFound
        );
    }

    #[tokio::test]
    async fn logs_tail_and_follow() {
        let d = FakeDriver::new();
        let h = d.insert(&inst(2), ObservedState::Running);
        d.push_log(&h, LogStream::Stdout, "a");
        d.push_log(&h, LogStream::Stderr, "b");
        let tail: Vec<_> = d.logs(&h, LogQuery::last(1)).await.unwrap().collect().await;
        assert_eq!(tail, vec![Ok((LogStream::Stderr, "b".to_string()))]);
        let mut follow = d.logs(&h, LogQuery::last(0).following()).await.unwrap();
        d.push_log(&h, LogStream::Stdout, "c");
        assert_eq!(
            follow.next().await,
            Some(Ok((LogStream::Stdout, "c".to_string())))
        );
    }
}
