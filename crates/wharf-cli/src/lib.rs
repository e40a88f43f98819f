//! The `wharf` client commands as a library: clap definitions, their implementations, tables
//! and progress. The `wharf` binary embeds it:
//!
//! ```ignore
//! #[derive(clap::Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     global: wharf_cli::GlobalOpts,
//!     #[command(subcommand)]
//!     cmd: Cmd,
//! }
//! #[derive(clap::Subcommand)]
//! enum Cmd {
//!     Up { file: Option<PathBuf> },
//!     #[command(flatten)]
//!     Client(wharf_cli::ClientCommand),
//! }
//! // `wharf completion SHELL`: call `wharf_cli::completion(&mut Cli::command(), shell)` so the
//! // script covers the binary's own commands too; `run` falls back to the client commands only.
//! ```
#![forbid(unsafe_code)]

mod args;
mod cmd;
mod compose;
mod error;
#[cfg(test)]
mod flow_tests;
mod follow;
mod render;
mod resolve;

use std::process::ExitCode;

use clap::{Args, Subcommand};

pub use args::{
    ClientCommand, DeployOpts, FileArg, GlobalOpts, NodeCmd, OutputFormat, ScaleTarget, ServiceCmd,
    StackCmd, parse_duration, parse_scale,
};
pub use cmd::{ClientFn, deploy_file};
pub use compose::{DEFAULT_FILES, find_stack_file};
pub use error::{CliError, Diagnostic, exit_code, print_error};
pub use resolve::{ServiceRef, resolve_service};

/// Runs a client command; prints errors on stderr; returns 0 ok, 1 failure, 2 bad input.
pub async fn run(cmd: ClientCommand, global: &GlobalOpts) -> ExitCode {
    match execute(cmd, global).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error(&e);
            exit_code(&e)
        }
    }
}

/// [`run`] without the printing: the error, for callers that handle it themselves.
pub async fn execute(cmd: ClientCommand, global: &GlobalOpts) -> Result<(), CliError> {
    execute_with(cmd, global, &cmd::client).await
}

/// [`execute`] with the client made by `client` (called only by commands that need the API)
/// instead of from the context file.
pub async fn execute_with(
    cmd: ClientCommand,
    global: &GlobalOpts,
    client: &ClientFn<'_>,
) -> Result<(), CliError> {
    let output = global.output;
    match cmd {
        ClientCommand::Stack(c) => cmd::stack(c, output, client).await,
        ClientCommand::Service(c) => cmd::service(c, output, client).await,
        ClientCommand::Node(c) => cmd::node(c, output, client).await,
        ClientCommand::Version => cmd::version(output, client).await,
        ClientCommand::Context => cmd::context(output),
        ClientCommand::Completion { shell } => {
            // Without the binary's top-level command, complete the client commands only.
            let mut command = ClientCommand::augment_subcommands(GlobalOpts::augment_args(
                clap::Command::new("wharf"),
            ));
            completion(&mut command, shell);
            Ok(())
        }
    }
}

/// Writes the completion script of `cmd` (the binary's top-level `clap::Command`, e.g.
/// `Cli::command()`) for `shell` to stdout.
pub fn completion(cmd: &mut clap::Command, shell: clap_complete::Shell) {
    let name = cmd
        .get_bin_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    clap_complete::generate(shell, cmd, name, &mut std::io::stdout());
}
