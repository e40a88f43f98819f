//! `wharf service exec` (a command in an instance over the exec stream: output out, input in,
//! a raw terminal with `-t`, window sizes followed, the command's exit code as wharf's) and
//! `wharf service stats` / `wharf top` (the instances' resource usage, refreshed).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use wharf_client::{Client, ClientError};
use wharf_types::{ExecFrame, ExecQuery, MAX_EXEC_CHUNK, StatsResponse, TtySize};

use crate::args::OutputFormat;
use crate::error::CliError;
use crate::render;

/// What `wharf service exec` was asked.
pub struct ExecArgs {
    pub service: String,
    pub interactive: bool,
    pub tty: bool,
    pub command: Vec<String>,
}

/// Run the command; Ok when it exited 0, else `CliError::Exited` with its code.
pub async fn exec(client: &Client, a: ExecArgs) -> Result<(), CliError> {
    let (r, slot) = crate::resolve::resolve_with_slot(client, &a.service).await?;
    let size = if a.tty { window_size() } else { None };
    let q = ExecQuery {
        command: serde_json::to_string(&a.command).expect("strings always serialise"),
        slot,
        stdin: a.interactive,
        tty: a.tty,
        cols: size.map(|s| s.cols),
        rows: size.map(|s| s.rows),
    };
    let conn = client
        .exec(&r.stack, &r.service, &q)
        .await
        .map_err(refused)?;
    // Raw only when keys go to the command (else Ctrl-C must still stop wharf) and there is a
    // terminal to make raw; restored however this ends.
    let _raw = (a.tty && a.interactive && std::io::stdin().is_terminal())
        .then(RawMode::enable)
        .flatten();
    let (mut rd, mut wr) = tokio::io::split(conn);
    let (frames, mut queued) = mpsc::channel::<ExecFrame>(4);
    if a.interactive {
        read_stdin(frames.clone());
    }
    let resizes = a.tty.then(|| tokio::spawn(follow_resizes(frames.clone())));
    drop(frames);
    let writer = tokio::spawn(async move {
        while let Some(f) = queued.recv().await {
            if wr.write_all(&f.encode()).await.is_err() {
                return;
            }
        }
    });
    let end = print_output(&mut rd).await;
    writer.abort();
    if let Some(r) = resizes {
        r.abort();
    }
    match end? {
        0 => Ok(()),
        code => Err(CliError::Exited(u8::try_from(code).unwrap_or(1).max(1))),
    }
}

/// An API refusal (any 4xx: the command, the instance, the token's role) is bad input: exit 2.
fn refused(e: ClientError) -> CliError {
    match (&e, e.status()) {
        (ClientError::Api { error, .. }, Some(400..=499)) => {
            let message = match &error.location {
                Some(l) => format!("{l}: {}", error.message),
                None => error.message.clone(),
            };
            CliError::bad_input(message, e.hint())
        }
        _ => CliError::Client(e),
    }
}

/// Write the command's output where it belongs until its exit code (or its error) comes.
async fn print_output<R>(rd: &mut R) -> Result<i64, CliError>
where
    R: tokio::io::AsyncRead + Unpin,
{
    loop {
        let frame = wharf_link::frame::read_exec_frame(rd)
            .await
            .map_err(|e| CliError::failed(format!("the exec stream failed: {e}")))?;
        let written = match frame {
            Some(ExecFrame::Stdout(d)) => {
                let mut out = std::io::stdout().lock();
                out.write_all(&d).and_then(|_| out.flush())
            }
            Some(ExecFrame::Stderr(d)) => {
                let mut err = std::io::stderr().lock();
                err.write_all(&d).and_then(|_| err.flush())
            }
            Some(ExecFrame::Exit(code)) => return Ok(code),
            Some(ExecFrame::Error(e)) => {
                return Err(CliError::Failed {
                    message: e.message,
                    details: Vec::new(),
                    hint: e.hint,
                });
            }
            Some(other) => {
                return Err(CliError::failed(format!(
                    "the master sent an exec frame of kind {} a client never gets",
                    other.kind()
                )));
            }
            None => {
                return Err(CliError::Failed {
                    message: "the exec stream ended before the command's exit code".into(),
                    details: Vec::new(),
                    hint: Some("the master or the node went away; run the command again".into()),
                });
            }
        };
        if written.is_err() {
            // Our reader went away (`| head`): stop quietly, as the command would.
            return Ok(0);
        }
    }
}

/// Standard input into `frames`, then its end. A thread of its own, not a task: a blocking
/// read of a terminal must never keep the process from exiting once the command ended.
fn read_stdin(frames: mpsc::Sender<ExecFrame>) {
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; MAX_EXEC_CHUNK];
        loop {
            let frame = match stdin.read(&mut buf) {
                Ok(0) | Err(_) => ExecFrame::StdinEof,
                Ok(n) => ExecFrame::Stdin(buf[..n].to_vec()),
            };
            let end = frame == ExecFrame::StdinEof;
            if frames.blocking_send(frame).is_err() || end {
                return;
            }
        }
    });
}

/// Each new size of the terminal (SIGWINCH) into `frames`.
async fn follow_resizes(frames: mpsc::Sender<ExecFrame>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut winch) = signal(SignalKind::window_change()) else {
        return;
    };
    while winch.recv().await.is_some() {
        if let Some(size) = window_size()
            && frames.send(ExecFrame::Resize(size)).await.is_err()
        {
            return;
        }
    }
}

/// The size of the terminal on stdout (or stdin), if there is one.
fn window_size() -> Option<TtySize> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdin()))
        .ok()?;
    (ws.ws_col > 0 && ws.ws_row > 0).then_some(TtySize {
        cols: ws.ws_col,
        rows: ws.ws_row,
    })
}

/// The terminal in raw mode (keys go to the command as typed, Ctrl-C included) until dropped.
struct RawMode(rustix::termios::Termios);

impl RawMode {
    fn enable() -> Option<RawMode> {
        use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
        let saved = tcgetattr(std::io::stdin()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(std::io::stdin(), OptionalActions::Now, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use rustix::termios::{OptionalActions, tcsetattr};
        let _ = tcsetattr(std::io::stdin(), OptionalActions::Now, &self.0);
    }
}

/// How often `wharf service stats` and `wharf top` ask again (each answer takes the engine's
/// one-second sample too).
const REFRESH: Duration = Duration::from_secs(1);

/// `wharf service stats SERVICE` (`service: Some`) or `wharf top`: a table, refreshed until
/// interrupted; once with `no_stream`, and once as a document with `-o json|yaml`.
pub async fn stats(
    client: &Client,
    service: Option<String>,
    no_stream: bool,
    output: OutputFormat,
) -> Result<(), CliError> {
    let r = match &service {
        Some(s) => Some(crate::resolve::resolve_service(
            s,
            &client.list_services(None).await?,
        )?),
        None => None,
    };
    loop {
        let stats = match &r {
            Some(r) => client.service_stats(&r.stack, &r.service).await?,
            None => client.stats().await?,
        };
        if output.is_document() {
            crate::output::emit(output, &stats, |_| {});
            return Ok(());
        }
        let text = stats_text(&stats);
        let mut out = std::io::stdout().lock();
        let screen = if no_stream || !std::io::stdout().is_terminal() {
            "" // one table after the other, for a file or a pipe
        } else {
            "\x1b[H\x1b[2J" // to the top, and clear: a table in place, as `docker stats`
        };
        if write!(out, "{screen}{text}")
            .and_then(|_| out.flush())
            .is_err()
            || no_stream
        {
            return Ok(());
        }
        drop(out);
        tokio::time::sleep(REFRESH).await;
    }
}

/// The usage table (as `docker stats`), then the nodes that did not answer.
pub fn stats_text(s: &StatsResponse) -> String {
    let rows = s
        .instances
        .iter()
        .map(|i| {
            let mem_pct = if i.memory_limit_bytes > 0 {
                format!(
                    "{:.2}%",
                    i.memory_bytes as f64 / i.memory_limit_bytes as f64 * 100.0
                )
            } else {
                "-".into()
            };
            vec![
                format!("{}/{}.{}", i.stack, i.service, i.slot),
                i.node.clone(),
                format!("{:.2}%", i.cpu_percent),
                format!(
                    "{} / {}",
                    render::bytes(i.memory_bytes),
                    render::bytes(i.memory_limit_bytes)
                ),
                mem_pct,
                format!(
                    "{} / {}",
                    render::bytes(i.net_rx_bytes),
                    render::bytes(i.net_tx_bytes)
                ),
                format!(
                    "{} / {}",
                    render::bytes(i.block_read_bytes),
                    render::bytes(i.block_write_bytes)
                ),
                i.pids.to_string(),
                i.error
                    .as_deref()
                    .map_or(String::new(), |e| render::one_line(e, 60)),
            ]
        })
        .collect();
    let mut text = render::table(
        &[
            "INSTANCE",
            "NODE",
            "CPU %",
            "MEM USAGE / LIMIT",
            "MEM %",
            "NET I/O (RX / TX)",
            "BLOCK I/O (R / W)",
            "PIDS",
            "ERROR",
        ],
        rows,
    );
    if s.instances.is_empty() {
        text.push_str("no running instances\n");
    }
    for e in &s.errors {
        text.push_str(&format!("warning: {e}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::InstanceStats;

    #[test]
    fn a_stats_row_shows_usage_as_docker_stats_does() {
        let s = StatsResponse {
            instances: vec![InstanceStats {
                stack: "shop".into(),
                service: "web".into(),
                slot: 2,
                node: "n2".into(),
                cpu_percent: 12.345,
                memory_bytes: 512 << 20,
                memory_limit_bytes: 2 << 30,
                net_rx_bytes: 2048,
                net_tx_bytes: 1024,
                pids: 3,
                ..InstanceStats::default()
            }],
            errors: vec!["node n3: not connected to this master".into()],
        };
        let text = stats_text(&s);
        let row = text
            .lines()
            .find(|l| l.contains("shop/web.2"))
            .expect(&text);
        for want in [
            "n2",
            "12.35%",
            "512 MiB / 2 GiB",
            "25.00%",
            "2 KiB / 1 KiB",
            " 3",
        ] {
            assert!(row.contains(want), "{want:?} in {row:?}");
        }
        assert!(text.contains("warning: node n3: not connected"), "{text}");
    }

    #[test]
    fn refusals_are_bad_input_and_other_failures_are_not() {
        let api = |status, code: &str| ClientError::Api {
            status,
            error: wharf_types::ApiError {
                code: code.into(),
                message: "permission exec is needed".into(),
                hint: Some("use a token with a role that has it".into()),
                location: None,
            },
        };
        let e = refused(api(403, "forbidden"));
        assert_eq!(e.exit_status(), 2);
        assert!(
            e.render()[1].contains("a role that has it"),
            "{:?}",
            e.render()
        );
        assert_eq!(refused(api(503, "unavailable")).exit_status(), 1);
    }
}
