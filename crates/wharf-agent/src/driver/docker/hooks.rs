//! `post_start` and `pre_stop` hooks: commands run with exec in a container right after it
//! starts, and before it is sent its stop signal. The container's labels carry them
//! (`labels::HOOKS`, written by `container_body`), so an agent that restarted in between runs
//! the same ones.

use std::time::Duration;

use bollard::container::LogOutput;
use bollard::exec::StartExecResults;
use bollard::models::ExecConfig;
use futures::stream::StreamExt;
use serde::{Deserialize, Serialize};
use wharf_types::{ContainerOptions, Hook, labels};

use super::{DockerDriver, map_err, status};
use crate::driver::{DriverError, DriverErrorKind};

/// The longest a `post_start` hook may run before the start counts as failed.
const POST_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a failed hook's output its error quotes.
const OUTPUT_CHARS: usize = 400;

/// A container's hooks, as its label holds them.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Hooks {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    post_start: Vec<Hook>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pre_stop: Vec<Hook>,
}

impl Hooks {
    /// The hooks of a service, if it has any.
    pub(super) fn of(o: &ContainerOptions) -> Option<Hooks> {
        (!o.post_start.is_empty() || !o.pre_stop.is_empty()).then(|| Hooks {
            post_start: o.post_start.clone(),
            pre_stop: o.pre_stop.clone(),
        })
    }

    pub(super) fn label(&self) -> String {
        serde_json::to_string(self).expect("hooks always serialise")
    }
}

impl DockerDriver {
    /// The hooks container `handle` carries (none when it is gone).
    async fn hooks_of(&self, handle: &str) -> Result<Hooks, DriverError> {
        let c = match self.docker.inspect_container(handle, None).await {
            Ok(c) => c,
            Err(e) if status(&e) == Some(404) => return Ok(Hooks::default()),
            Err(e) => return Err(map_err(e, &format!("cannot inspect container {handle}"))),
        };
        let label = c
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get(labels::HOOKS).cloned());
        Ok(label
            .and_then(|l| serde_json::from_str(&l).ok())
            .unwrap_or_default())
    }

    /// Run the `post_start` hooks of a container that just started, in order. One that fails
    /// (or outlasts a minute) kills the container and fails the start.
    pub(super) async fn post_start(&self, handle: &str) -> Result<(), DriverError> {
        for hook in self.hooks_of(handle).await?.post_start {
            let ran = tokio::time::timeout(POST_START_TIMEOUT, self.run_hook(handle, &hook)).await;
            let why = match ran {
                Ok(Ok(())) => continue,
                Ok(Err(why)) => why,
                Err(_) => format!("still running after {}s", POST_START_TIMEOUT.as_secs()),
            };
            let _ = self.docker.kill_container(handle, None).await;
            return Err(DriverError::new(
                DriverErrorKind::Other,
                format!(
                    "the post_start hook {:?} of container {handle} failed: {why}",
                    hook.command.join(" ")
                ),
            )
            .with_hint(
                "fix the hook's command (services.<name>.post_start); the container was stopped",
            ));
        }
        Ok(())
    }

    /// Run the `pre_stop` hooks of a running container, within `grace` in all; how long they
    /// took. A failing hook does not keep the container from stopping.
    pub(super) async fn pre_stop(&self, handle: &str, grace: Duration) -> Duration {
        let started = tokio::time::Instant::now();
        let Ok(hooks) = self.hooks_of(handle).await else {
            return started.elapsed();
        };
        for hook in hooks.pre_stop {
            let left = grace.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, self.run_hook(handle, &hook)).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => {
                    tracing::warn!(container = handle, command = ?hook.command, "pre_stop hook failed: {why}")
                }
                Err(_) => {
                    tracing::warn!(container = handle, command = ?hook.command, "pre_stop hook outlasted the stop grace period");
                    break;
                }
            }
        }
        started.elapsed()
    }

    /// Run one hook with exec and wait for it; why it failed (exit code and output).
    async fn run_hook(&self, handle: &str, hook: &Hook) -> Result<(), String> {
        let config = ExecConfig {
            cmd: Some(hook.command.clone()),
            user: hook.user.clone(),
            working_dir: hook.working_dir.clone(),
            env: (!hook.environment.is_empty()).then(|| {
                hook.environment
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect()
            }),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let id = self
            .docker
            .create_exec(handle, config)
            .await
            .map_err(|e| e.to_string())?
            .id;
        let mut output = String::new();
        if let StartExecResults::Attached {
            output: mut out, ..
        } = self
            .docker
            .start_exec(&id, None)
            .await
            .map_err(|e| e.to_string())?
        {
            while let Some(Ok(chunk)) = out.next().await {
                let bytes = match chunk {
                    LogOutput::StdOut { message }
                    | LogOutput::StdErr { message }
                    | LogOutput::Console { message }
                    | LogOutput::StdIn { message } => message,
                };
                output.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        let done = self
            .docker
            .inspect_exec(&id)
            .await
            .map_err(|e| e.to_string())?;
        match done.exit_code {
            Some(0) => Ok(()),
            code => {
                let tail: String = {
                    let chars: Vec<char> = output.trim().chars().collect();
                    chars[chars.len().saturating_sub(OUTPUT_CHARS)..]
                        .iter()
                        .collect()
                };
                Err(format!(
                    "exit code {}: {tail}",
                    code.map_or("unknown".to_string(), |c| c.to_string())
                ))
            }
        }
    }
}
