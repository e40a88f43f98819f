//! Dynamic completion: stack, service and node names asked of the API of the current context
//! while the shell completes (`source <(wharf completion bash)`). Any failure (no context, the
//! API away, 2 s passed) completes nothing rather than blocking the shell.

use std::ffi::OsStr;
use std::future::Future;
use std::time::Duration;

use clap_complete::engine::{ArgValueCompleter, CompletionCandidate};
use wharf_client::{Client, ClientError, Context};

/// How long a completion may wait for the API.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Names of stacks.
pub fn stacks() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        candidates(current, |c| async move {
            Ok(c.list_stacks().await?.into_iter().map(|s| s.name).collect())
        })
    })
}

/// `stack/service` of every service, and `service` alone where only one stack has it.
pub fn services() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        candidates(current, |c| async move {
            let services = c.list_services(None).await?;
            let mut names: Vec<String> = services
                .iter()
                .map(|s| format!("{}/{}", s.stack, s.name))
                .collect();
            for s in &services {
                if services.iter().filter(|o| o.name == s.name).count() == 1 {
                    names.push(s.name.clone());
                }
            }
            Ok(names)
        })
    })
}

/// Names of nodes.
pub fn nodes() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        candidates(current, |c| async move {
            Ok(c.list_nodes().await?.into_iter().map(|n| n.name).collect())
        })
    })
}

/// Names of contexts (no API needed).
pub fn contexts() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        let prefix = current.to_string_lossy();
        Context::names_in(&Context::config_dir())
            .into_iter()
            .filter(|n| n.starts_with(prefix.as_ref()))
            .map(CompletionCandidate::new)
            .collect()
    })
}

/// The names `ask` gets from the API that start with `current`, sorted.
fn candidates<F, Fut>(current: &OsStr, ask: F) -> Vec<CompletionCandidate>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<Vec<String>, ClientError>>,
{
    let prefix = current.to_string_lossy();
    let Ok(client) = Context::load().and_then(|ctx| Client::from_context(&ctx)) else {
        return Vec::new();
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let names = rt
        .block_on(async { tokio::time::timeout(ASK_TIMEOUT, ask(client)).await })
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let mut names: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with(prefix.as_ref()))
        .collect();
    names.sort();
    names.dedup();
    names.into_iter().map(CompletionCandidate::new).collect()
}
