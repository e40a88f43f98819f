//! `wharf service exec` and `wharf service stats` on Docker: a command run with the engine's
//! exec (attached, with a TTY when asked), and one sample of a container's resource usage.

use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{ContainerStatsResponse, ExecConfig};
use bollard::query_parameters::{ResizeExecOptionsBuilder, StatsOptionsBuilder};
use futures::stream::StreamExt;
use wharf_types::{ExecSpec, InstanceStats, LogStream, TtySize};

use super::{DockerDriver, map_err};
use crate::driver::{DriverError, DriverErrorKind, ExecControl, ExecProcess};

impl DockerDriver {
    pub(super) async fn start_exec(
        &self,
        handle: &str,
        spec: &ExecSpec,
    ) -> Result<ExecProcess, DriverError> {
        let running = self
            .inspect(handle)
            .await?
            .is_some_and(|c| c.state.as_ref().and_then(|s| s.running) == Some(true));
        if !running {
            return Err(DriverError::new(
                DriverErrorKind::NotFound,
                format!("container {handle} is not running"),
            )
            .with_hint("exec runs in a running instance; see `wharf service ps`"));
        }
        let config = ExecConfig {
            cmd: Some(spec.command.clone()),
            attach_stdin: Some(spec.stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(spec.tty),
            ..Default::default()
        };
        let what = format!("cannot run {:?} in container {handle}", spec.command[0]);
        let id = self
            .docker
            .create_exec(handle, config)
            .await
            .map_err(|e| map_err(e, &what))?
            .id;
        let options = StartExecOptions {
            detach: false,
            tty: spec.tty,
            output_capacity: Some(crate::driver::EXEC_CHUNK),
        };
        let started = self
            .docker
            .start_exec(&id, Some(options))
            .await
            .map_err(|e| map_err(e, &what))?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(DriverError::new(
                DriverErrorKind::Other,
                format!("{what}: the engine detached it"),
            ));
        };
        let control = DockerExec {
            docker: self.docker.clone(),
            id,
        };
        if let Some(size) = spec.size {
            // The command may have ended already: a failed first resize is no failure.
            let _ = control.resize(size).await;
        }
        let output = output
            .map(move |item| {
                item.map_err(|e| map_err(e, "exec output"))
                    .map(|out| match out {
                        LogOutput::StdErr { message } => (LogStream::Stderr, message.to_vec()),
                        LogOutput::StdOut { message }
                        | LogOutput::Console { message }
                        | LogOutput::StdIn { message } => (LogStream::Stdout, message.to_vec()),
                    })
            })
            .boxed();
        Ok(ExecProcess {
            output,
            input,
            control: Box::new(control),
        })
    }

    pub(super) async fn sample(&self, handle: &str) -> Result<InstanceStats, DriverError> {
        // Not streaming and not one-shot: the engine samples twice, a second apart, so the
        // CPU use has a "before" to compare with (as `docker stats --no-stream`).
        let options = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(false)
            .build();
        let mut samples = self.docker.stats(handle, Some(options));
        let s = match samples.next().await {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                return Err(map_err(
                    e,
                    &format!("cannot read stats of container {handle}"),
                ));
            }
            None => {
                return Err(DriverError::new(
                    DriverErrorKind::NotFound,
                    format!("no stats of container {handle}"),
                ));
            }
        };
        Ok(usage(handle, &s))
    }
}

/// A running exec on the engine.
struct DockerExec {
    docker: Docker,
    id: String,
}

#[async_trait::async_trait]
impl ExecControl for DockerExec {
    async fn resize(&self, size: TtySize) -> Result<(), DriverError> {
        let options = ResizeExecOptionsBuilder::default()
            .w(i32::from(size.cols))
            .h(i32::from(size.rows))
            .build();
        self.docker
            .resize_exec(&self.id, options)
            .await
            .map_err(|e| map_err(e, "cannot resize the exec's terminal"))
    }

    async fn exit_code(&self) -> Result<Option<i64>, DriverError> {
        // The output can end a moment before the engine records the exit.
        for _ in 0..50 {
            let done = self
                .docker
                .inspect_exec(&self.id)
                .await
                .map_err(|e| map_err(e, "cannot inspect the exec"))?;
            if done.running != Some(true) {
                return Ok(done.exit_code);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(None)
    }
}

/// The usage fields of a stats sample, as `docker stats` computes them.
fn usage(handle: &str, s: &ContainerStatsResponse) -> InstanceStats {
    let cpu = s.cpu_stats.as_ref();
    let pre = s.precpu_stats.as_ref();
    let total = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.and_then(|c| c.cpu_usage.as_ref())
            .and_then(|u| u.total_usage)
            .unwrap_or(0)
    };
    let system = |c: Option<&bollard::models::ContainerCpuStats>| {
        c.and_then(|c| c.system_cpu_usage).unwrap_or(0)
    };
    let cpu_delta = total(cpu).saturating_sub(total(pre)) as f64;
    let system_delta = system(cpu).saturating_sub(system(pre)) as f64;
    let cpus = cpu
        .and_then(|c| c.online_cpus)
        .filter(|n| *n > 0)
        .map(f64::from)
        .or_else(|| {
            cpu.and_then(|c| c.cpu_usage.as_ref())
                .and_then(|u| u.percpu_usage.as_ref())
                .map(|p| p.len() as f64)
        })
        .unwrap_or(1.0);
    let cpu_percent = if system_delta > 0.0 {
        cpu_delta / system_delta * cpus * 100.0
    } else {
        0.0
    };
    let mem = s.memory_stats.as_ref();
    // As the docker CLI: the page cache is not the container's use (cgroup v1: `cache`, v2:
    // `inactive_file`).
    let cache = mem
        .and_then(|m| m.stats.as_ref())
        .and_then(|st| st.get("total_inactive_file").or(st.get("inactive_file")))
        .copied()
        .unwrap_or(0);
    let memory_bytes = mem.and_then(|m| m.usage).unwrap_or(0).saturating_sub(cache);
    let (mut rx, mut tx) = (0, 0);
    for n in s.networks.iter().flat_map(|n| n.values()) {
        rx += n.rx_bytes.unwrap_or(0);
        tx += n.tx_bytes.unwrap_or(0);
    }
    let (mut read, mut write) = (0, 0);
    let entries = s
        .blkio_stats
        .as_ref()
        .and_then(|b| b.io_service_bytes_recursive.as_ref());
    for e in entries.into_iter().flatten() {
        match e.op.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("read") => read += e.value.unwrap_or(0),
            Some("write") => write += e.value.unwrap_or(0),
            _ => {}
        }
    }
    InstanceStats {
        container_id: Some(handle.to_string()),
        cpu_percent,
        memory_bytes,
        memory_limit_bytes: mem.and_then(|m| m.limit).unwrap_or(0),
        net_rx_bytes: rx,
        net_tx_bytes: tx,
        block_read_bytes: read,
        block_write_bytes: write,
        pids: s.pids_stats.as_ref().and_then(|p| p.current).unwrap_or(0),
        ..InstanceStats::default()
    }
}
