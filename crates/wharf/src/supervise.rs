//! One owner for every long-lived task of a process: the controllers, the agent listener, the
//! agent loop. They are meant to run for as long as the process does; the first one to end
//! (returned, or panicked) ends the process with a message that names it and a non-zero exit, so
//! that a supervisor (systemd, Docker's restart policy) starts Wharf again. A process that keeps
//! accepting deploys while its deployer is dead would never converge (issue 8, defect 8).
//!
//! Restarting a task in place was the alternative: a panic means a bug whose state may be bad,
//! and a restart of the whole process is what the crash-safety of the store and the agents'
//! adoption of running containers are built for.

use futures::future::select_all;
use tokio::task::JoinHandle;

/// A task that must never end, with the name it is reported by.
pub type Essential = (&'static str, JoinHandle<()>);

/// Wait until the first of `tasks` ends, and say which and how. Never returns if `tasks` is
/// empty.
pub async fn first_to_end(tasks: Vec<Essential>) -> String {
    if tasks.is_empty() {
        return std::future::pending().await;
    }
    let waits = tasks
        .into_iter()
        .map(|(name, handle)| Box::pin(async move { describe(name, handle.await) }));
    select_all(waits).await.0
}

/// How the task `name` ended.
pub fn describe(name: &str, end: Result<(), tokio::task::JoinError>) -> String {
    match end {
        Ok(()) => format!("the {name} stopped"),
        Err(e) if e.is_panic() => {
            let p = e.into_panic();
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            format!("the {name} panicked: {msg}")
        }
        Err(e) => format!("the {name} was cancelled: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_task_to_end_is_named_with_how_it_ended() {
        let forever = || tokio::spawn(std::future::pending::<()>());
        let panics = tokio::spawn(async {
            tokio::task::yield_now().await;
            panic!("boom in the pass");
        });
        let why = first_to_end(vec![("deployer", panics), ("liveness checker", forever())]).await;
        assert_eq!(why, "the deployer panicked: boom in the pass");
        let returns = tokio::spawn(async {});
        let why = first_to_end(vec![("agent listener", forever()), ("agent loop", returns)]).await;
        assert_eq!(why, "the agent loop stopped");
    }
}
