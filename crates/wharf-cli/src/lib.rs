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
//!
//! Code map: `args` (the clap definitions and their value parsers) · `cmd` (each command: context,
//! API call, output) · `complete` (names of stacks, services, nodes and contexts for the shell's
//! completion, from the API) · `hook` (`wharf hook`: webhooks and their deliveries) · `compose` (finding and loading stack files) · `follow` (a deployment or
//! removal followed to its end) · `job` (`wharf job`: jobs, their runs and a run's logs) · `output` (a result as JSON with `-o json`, else as text) ·
//! `render` (pure: tables, diffs, progress lines) · `resolve` (`web` or `shop/web` to a stack and
//! service) · `error` (`CliError` and its exit codes) · `exec` (`service exec` over the exec
//! stream, a raw terminal; `service stats` and `top`) · `flow_tests` (the commands against a
//! recording API, in tests only).
#![forbid(unsafe_code)]

mod args;
mod cmd;
mod complete;
mod compose;
mod error;
mod exec;
#[cfg(test)]
mod flow_tests;
mod follow;
mod hook;
mod job;
mod output;
mod render;
mod resolve;

use std::process::ExitCode;

use clap::{Args, Subcommand};

pub use args::{
    ClientCommand, DeployOpts, FileArg, GlobalOpts, NodeCmd, OutputFormat, ScaleTarget, ServiceCmd,
    StackCmd, parse_duration, parse_scale,
};
pub use cmd::{ClientFn, deploy_file};
pub use compose::{DEFAULT_FILES, OVERRIDE_FILES, find_stack_files};
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
    let list = output::Listing {
        output,
        quiet: global.quiet,
    };
    match cmd {
        ClientCommand::Stack(c) => cmd::stack(c, list, client).await,
        ClientCommand::Service(c) => cmd::service(c, list, client).await,
        ClientCommand::Node(c) => cmd::node(c, list, client).await,
        ClientCommand::Job(c) => job::job(c, list, client).await,
        ClientCommand::Deployment(c) => cmd::deployment(c, list, client).await,
        ClientCommand::Master(crate::args::MasterCmd::Ls) => {
            let status = client()?.masters().await?;
            output::emit(output, &status, |s| {
                println!("{}", render::masters_table(s))
            });
            Ok(())
        }
        ClientCommand::Token(c) => cmd::token(c, output, client).await,
        ClientCommand::Hook(c) => hook::hook(c, list, client).await,
        ClientCommand::Audit(c) => cmd::audit(c, output, client).await,
        ClientCommand::Events {
            follow,
            since,
            stack,
            after,
        } => {
            let events = client()?
                .events(after.as_deref(), since, stack.as_deref(), follow)
                .await?;
            cmd::events(events, output.is_document()).await
        }
        ClientCommand::Secret(c) => {
            cmd::object(wharf_types::ObjectKind::Secret, c, output, client).await
        }
        ClientCommand::Config(c) => {
            cmd::object(wharf_types::ObjectKind::Config, c, output, client).await
        }
        ClientCommand::Registry(crate::args::RegistryCmd::Gc { grace }) => {
            let r = client()?.registry_gc(grace.as_secs()).await?;
            output::emit(output, &r, |r| {
                for d in &r.removed {
                    println!("removed {d}");
                }
                println!("{} blob(s) removed, {} referenced", r.removed.len(), r.kept);
            });
            Ok(())
        }
        ClientCommand::Key(crate::args::KeyCmd::Rotate) => {
            let r = client()?.rotate_keys().await?;
            output::emit(output, &r, |r| match (&r.unlock_key, &r.key_file) {
                (Some(key), _) => println!(
                    "new unlock key: {}\nkeep it safe: the old one no longer unlocks this store, and `wharf unlock` asks for this one at every start",
                    key.expose()
                ),
                (None, Some(file)) => {
                    println!("the master key is new ({file}); back it up with the store")
                }
                (None, None) => println!("the master key is new"),
            });
            Ok(())
        }
        ClientCommand::Policy(crate::args::PolicyCmd::Show) => {
            let p = client()?.policy().await?;
            output::emit(output, &p, |p| print!("{}", render::policy_text(p)));
            Ok(())
        }
        ClientCommand::Scan(crate::args::ScanCmd::Db(c)) => cmd::scan_db(c, output, client).await,
        ClientCommand::Image(crate::args::ImageCmd::Ls) => {
            let images = client()?.list_images().await?;
            list.print(
                "image",
                &images,
                |i| format!("{}:{}", i.repository, i.tag),
                |i, _| render::images_table(i, render::now_ms()),
            );
            Ok(())
        }
        ClientCommand::Image(crate::args::ImageCmd::Scan { image, fail_on }) => {
            cmd::image_scan(&image, fail_on.as_deref(), output, client).await
        }
        ClientCommand::User(c) => cmd::user(c, output, client).await,
        ClientCommand::Login {
            url,
            user,
            invitation,
            password_stdin,
            ca_fingerprint,
        } => {
            let creds = cmd::Credentials {
                user,
                invitation,
                password_stdin,
            };
            cmd::login(&url, creds, ca_fingerprint, output).await
        }
        ClientCommand::Unlock { key_stdin } => cmd::unlock(key_stdin, output).await,
        ClientCommand::Version => cmd::version(output, client).await,
        ClientCommand::Top { no_stream } => exec::stats(&client()?, None, no_stream, output).await,
        ClientCommand::Context { cmd } => cmd::context(cmd, list),
        ClientCommand::Completion { shell } => {
            // Without the binary's top-level command, complete the client commands only.
            completion(&mut client_command(), shell);
            Ok(())
        }
    }
}

/// A `wharf` command with only the client commands and global options.
pub fn client_command() -> clap::Command {
    ClientCommand::augment_subcommands(GlobalOpts::augment_args(clap::Command::new("wharf")))
}

/// Writes the completion script of `cmd` (the binary's top-level `clap::Command`, e.g.
/// `Cli::command()`) for `shell` to stdout. The script asks the binary itself (with
/// `COMPLETE=SHELL` set: see [`complete_from_env`]) at each TAB, so names of stacks, services
/// and nodes come from the API.
pub fn completion(cmd: &mut clap::Command, shell: clap_complete::Shell) {
    completion_to(cmd, shell, &mut std::io::stdout());
}

/// [`completion`] into any writer.
pub fn completion_to(
    cmd: &mut clap::Command,
    shell: clap_complete::Shell,
    out: &mut dyn std::io::Write,
) {
    use clap_complete::env::EnvCompleter;
    let name = cmd
        .get_bin_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let registered = match shell {
        clap_complete::Shell::Bash => {
            clap_complete::env::Bash.write_registration(COMPLETE_VAR, &name, &name, &name, out)
        }
        clap_complete::Shell::Zsh => {
            clap_complete::env::Zsh.write_registration(COMPLETE_VAR, &name, &name, &name, out)
        }
        clap_complete::Shell::Fish => {
            clap_complete::env::Fish.write_registration(COMPLETE_VAR, &name, &name, &name, out)
        }
        clap_complete::Shell::Elvish => {
            clap_complete::env::Elvish.write_registration(COMPLETE_VAR, &name, &name, &name, out)
        }
        // PowerShell, and any shell clap adds later: the static script (commands and flags).
        _ => {
            clap_complete::generate(shell, cmd, name, out);
            Ok(())
        }
    };
    if let Err(e) = registered {
        eprintln!("error: cannot write the completion script: {e}");
    }
}

/// The variable the completion scripts set when they ask the binary for candidates.
pub const COMPLETE_VAR: &str = "COMPLETE";

/// Answers a shell's completion request and exits, when `COMPLETE` is set (the scripts of
/// [`completion`] set it); else returns. Call it first in `main`, with the binary's command.
pub fn complete_from_env(factory: fn() -> clap::Command) {
    clap_complete::CompleteEnv::with_factory(factory)
        .var(COMPLETE_VAR)
        .complete();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_scripts_ask_the_binary_and_complete_commands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            completion_to(&mut client_command(), shell, &mut out);
            let script = String::from_utf8(out).unwrap();
            assert!(script.contains("wharf"), "{shell}: {script}");
            assert!(script.contains(COMPLETE_VAR), "{shell}: {script}");
        }
        let complete = |args: &[&str]| -> Vec<String> {
            let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
            let index = args.len() - 1;
            clap_complete::engine::complete(&mut client_command(), args, index, None)
                .unwrap()
                .iter()
                .map(|c| c.get_value().to_string_lossy().into_owned())
                .collect()
        };
        let stack = complete(&["wharf", "stack", "d"]);
        assert!(
            stack.contains(&"deploy".to_string()) && stack.contains(&"diff".to_string()),
            "{stack:?}"
        );
        let output = complete(&["wharf", "stack", "ls", "-o", ""]);
        for f in ["table", "wide", "json", "yaml", "name"] {
            assert!(output.contains(&f.to_string()), "{f} in {output:?}");
        }
        // Names come from the API: without a context there are none, and nothing blocks.
        let none = complete(&["wharf", "stack", "ps", ""]);
        assert!(none.iter().all(|c| c.starts_with('-')), "{none:?}");
    }

    #[tokio::test]
    async fn validate_needs_no_context() {
        let dir = std::env::temp_dir().join(format!("wharf-cli-validate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("stack.yml");
        std::fs::write(&file, "services:\n  web:\n    image: nginx\n").unwrap();
        let cmd = ClientCommand::Stack(StackCmd::Validate {
            file: FileArg {
                file: vec![file],
                ..FileArg::default()
            },
            name: Some("shop".into()),
            stack: None,
        });
        let no_client =
            || -> Result<wharf_client::Client, CliError> { panic!("validate asked for a client") };
        execute_with(cmd, &GlobalOpts::default(), &no_client)
            .await
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
