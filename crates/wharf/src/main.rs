//! The one `wharf` binary: `wharf up` (master and agent in one process) and every client command.
//!
//! Code map: `up` (`wharf up`: master, API and agent in one process) · `server` (`wharf server`: the
//! master, its API and the agent listener) · `shared` (a store on etcd: the `--store` flags,
//! a master on it and its election) · `agent` (`wharf agent`: join a cluster and run) ·
//! `migrate` (`wharf store migrate`: a SQLite store to etcd, offline) · `githook` (the hook of
//! a stack's git repository: build, push, deploy a pushed commit) · `local` (the in-process link of `wharf up`'s agent to its master) · `supervise` (every long-lived
//! task has one owner; the first to end ends the process).
#![deny(unsafe_code)]

mod agent;
mod githook;
mod local;
mod migrate;
mod server;
mod shared;
mod supervise;
mod up;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

/// Wharf: deploy Compose stacks to Docker hosts with zero downtime.
#[derive(Parser, Debug)]
#[command(
    name = "wharf",
    version,
    about = "Wharf: run Compose stacks on Docker hosts, one machine or a cluster, with zero-downtime deploys",
    after_help = "\
Quick start:
  wharf up examples/hello/stack.yml     start Wharf on this machine and deploy the example
  wharf stack ps hello                  see its instances
  wharf service scale hello/web=3       run three of them

Every command but `up` talks to the API named by the context that `wharf up` writes
(see `wharf context`). Exit codes: 0 ok, 1 failure, 2 bad input."
)]
struct Cli {
    #[command(flatten)]
    global: wharf_cli::GlobalOpts,
    /// The log of `up`, `server`, `agent` and `store` on stderr: text (colours only on a
    /// terminal) or json (one object per line); WHARF_LOG filters it (e.g. info, debug)
    #[arg(
        long,
        global = true,
        value_enum,
        env = "WHARF_LOG_FORMAT",
        default_value = "text"
    )]
    log_format: up::LogFormat,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run Wharf on this machine (master and agent in one process) and optionally deploy a stack
    Up(up::UpArgs),
    /// Run the master of a cluster: the API, the store, and the listener agents connect to
    Server(server::ServerArgs),
    /// Run an agent on this host: join a cluster with a token once, then keep its stream to the master
    Agent(agent::AgentArgs),
    /// The store itself: move a single master's store to etcd for several masters
    #[command(subcommand)]
    Store(migrate::StoreCmd),
    /// The pre-receive hook of a stack's git repository (run by the master's git, not by hand)
    #[command(name = "git-hook", hide = true)]
    GitHook,
    #[command(flatten)]
    Client(wharf_cli::ClientCommand),
}

/// Client commands end quietly when their reader goes away (`wharf stack ps | head`), as other
/// Unix tools do, instead of panicking on a failed print. The servers keep ignoring SIGPIPE (a
/// closed socket must be an error, not death).
#[allow(unsafe_code)]
fn die_on_sigpipe() {
    // SAFETY: restores the default disposition of one signal before any thread is started;
    // no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// How long after Ctrl-C or SIGTERM `wharf up|server|agent` gives the runtime's tasks to end.
/// Dropping a runtime waits for its blocking tasks without bound, and with many container
/// operations in flight that took over 18 s; these tasks need no ending (below).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);
/// The bound on the whole stop, from the signal: past it the process exits whatever still runs.
const STOP_DEADLINE: Duration = Duration::from_millis(2500);

/// Ends the process `STOP_DEADLINE` after the first Ctrl-C or SIGTERM, if it is still running by
/// then: even when the main runtime is too busy to notice the signal at all (its own thread and
/// runtime see it; tokio delivers a signal to every runtime's listeners).
///
/// Ending at any moment is safe, which is what the rest of Wharf is built for: the store commits
/// each transaction atomically (SQLite, WAL, `synchronous=FULL`: an interrupted transaction is
/// rolled back on the next open, a committed one survives), the kernel releases the data
/// directory's lock with the process, an operation the engine was doing finishes there and its
/// container is adopted by name on the next start (no duplicates), and process-driver workloads
/// end with the agent as they always do.
fn stop_deadline() {
    let spawned = std::thread::Builder::new()
        .name("wharf-stop".into())
        .spawn(|| {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(_) => return, // the main runtime's own handling still applies
            };
            rt.block_on(async {
                up::shutdown_signal().await;
                tokio::time::sleep(STOP_DEADLINE).await;
            });
            eprintln!(
                "wharf: still stopping {} s after the signal; exiting now",
                STOP_DEADLINE.as_secs_f32()
            );
            std::process::exit(0);
        });
    if let Err(e) = spawned {
        eprintln!("warning: cannot start the stop watchdog: {e}");
    }
}

fn main() -> ExitCode {
    // A shell asking for completions (`COMPLETE=bash wharf -- wharf stack ps …`): answer, exit.
    wharf_cli::complete_from_env(Cli::command);
    let cli = Cli::parse();
    if matches!(cli.cmd, Command::Client(_)) {
        die_on_sigpipe();
    }
    let serves = matches!(
        cli.cmd,
        Command::Up(_) | Command::Server(_) | Command::Agent(_)
    );
    if serves {
        stop_deadline();
    }
    if serves || matches!(cli.cmd, Command::Store(_)) {
        up::init_tracing(cli.log_format);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = rt.block_on(async move {
        match cli.cmd {
            Command::Up(args) => up::run(args, &cli.global).await,
            Command::Server(args) => server::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Store(cmd) => migrate::run(cmd).await,
            Command::GitHook => githook::run().await,
            Command::Client(wharf_cli::ClientCommand::Completion { shell }) => {
                wharf_cli::completion(&mut Cli::command(), shell);
                ExitCode::SUCCESS
            }
            Command::Client(cmd) => wharf_cli::run(cmd, &cli.global).await,
        }
    });
    if serves {
        // The farewell is printed. What still runs (container operations, streams, the ingress)
        // is dropped, not awaited: see `stop_deadline` for why that is safe.
        rt.shutdown_timeout(SHUTDOWN_TIMEOUT);
    }
    code
}
