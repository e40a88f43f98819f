//! The one `wharf` binary: `wharf up` (master and agent in one process) and every client command.
#![deny(unsafe_code)]

mod agent;
mod local;
mod server;
mod up;

use std::process::ExitCode;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Command::Client(_)) {
        die_on_sigpipe();
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
    rt.block_on(async move {
        match cli.cmd {
            Command::Up(args) => up::run(args, &cli.global).await,
            Command::Server(args) => server::run(args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Client(wharf_cli::ClientCommand::Completion { shell }) => {
                wharf_cli::completion(&mut Cli::command(), shell);
                ExitCode::SUCCESS
            }
            Command::Client(cmd) => wharf_cli::run(cmd, &cli.global).await,
        }
    })
}
