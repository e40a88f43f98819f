//! `GET /v1/services/{stack}/{service}/exec` (a command run in an instance, over an HTTP/1.1
//! upgrade to the exec stream, `wharf_types::ExecFrame`) and the resource usage of instances
//! (`GET /v1/services/{stack}/{service}/stats`, `GET /v1/stats`), both through the instances'
//! nodes' links.
//!
//! Everything that can be refused is refused before the upgrade, as an ordinary `ApiError`
//! (the command, the instance, the node), and recorded as refused; the exec is audited (who,
//! which instance, the command) before it starts. Memory per exec stays bounded: one frame at a time each way,
//! within the node link's windows (`execs.rs`).

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncWriteExt;
use wharf_types::*;

use super::error::{ApiFailure, ApiQuery, not_found_service};
use crate::hub::NodeExec;
use crate::model::{InstanceRecord, keys};
use crate::mutate::Actor;
use crate::policy::Caller;
use crate::{Master, now_ms, rollout};

/// How the exec stream works, for the OpenAPI document.
const EXEC_PROTOCOL_DOC: &str = "Runs a command in a running instance of the service (`wharf service exec`). \
The request must ask to upgrade the connection: `Connection: Upgrade`, `Upgrade: wharf-exec.v1` (HTTP/1.1). \
Everything that can be refused (the command, the instance, the caller) is refused before the upgrade, as an ApiError. \
After `101 Switching Protocols` both sides send frames: one byte of kind, four bytes of big-endian payload length, then the payload (at most 32768 bytes; an error frame up to 131072). \
Client to master: 0 stdin (bytes), 3 stdin ended (no payload), 4 terminal resized (columns and rows, two big-endian bytes each). \
Master to client: 1 stdout (bytes), 2 stderr (bytes; with a TTY all output is stdout), then exactly one of 5 exit (the command's exit code, eight bytes, big-endian, signed) or 6 error (an ApiError as JSON); then the master closes. \
A frame too large, of an unknown kind or malformed ends the stream with an error frame naming it. \
Output is flow-controlled end to end: a client that stops reading stops the command's output at the node.";

#[utoipa::path(get, path = "/v1/services/{stack}/{service}/exec", description = EXEC_PROTOCOL_DOC,
    params(("stack" = String, Path), ("service" = String, Path), ExecQuery),
    responses((status = 101, description = "Switched to the exec stream (see the description)."),
        (status = 400, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "No running instance (of the slot asked for).", body = ApiError),
        (status = 426, description = "The request did not ask to upgrade to `wharf-exec.v1`.", body = ApiError),
        (status = 503, body = ApiError)))]
pub(crate) async fn exec(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path((stack, service)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<ExecQuery>,
    mut req: Request,
) -> Result<Response, ApiFailure> {
    let on_upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(EXEC_PROTOCOL));
    let prepared = prepare(&m, &stack, &service, &q, on_upgrade.filter(|_| upgrade)).await;
    let (inst, spec, on_upgrade, link) = match prepared {
        Ok(p) => p,
        Err(f) => {
            // Refused before anything ran: recorded too, with why.
            let why = format!("{}: {}", f.1.code, f.1.message);
            let target = format!("{stack}/{service}");
            if let Err(e) = m
                .audit_refused(&actor, "service.exec", &target, now_ms(), why)
                .await
            {
                tracing::warn!(error = %e, "could not audit a refused exec");
            }
            return Err(f);
        }
    };
    let target = format!("{stack}/{service}.{}", inst.slot);
    let summary = format!("on node {}: {}", inst.node, shell_words(&spec.command));
    m.audit_done(&actor, "service.exec", &target, now_ms(), summary)
        .await?;
    let node_exec = link.exec(&inst.id(), spec).await.map_err(|e| {
        ApiFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("node {}: {e}", inst.node),
        )
    })?;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => pump(hyper_util::rt::TokioIo::new(upgraded), node_exec).await,
            Err(e) => tracing::debug!(error = %e, "exec: the upgrade failed"),
        }
    });
    Ok((
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, "upgrade"),
            (header::UPGRADE, EXEC_PROTOCOL),
        ],
    )
        .into_response())
}

/// What an exec needs, or why it is refused: the service, the command, the upgrade, the
/// instance and its node's link.
async fn prepare(
    m: &Master,
    stack: &str,
    service: &str,
    q: &ExecQuery,
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<
    (
        InstanceRecord,
        ExecSpec,
        hyper::upgrade::OnUpgrade,
        std::sync::Arc<dyn crate::NodeLink>,
    ),
    ApiFailure,
> {
    m.service(stack, service)
        .await?
        .ok_or_else(|| not_found_service(stack, service))?;
    let spec = q.spec().map_err(|(field, message, hint)| {
        let mut f = ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("{field}: {message}"),
        )
        .hint(hint);
        f.1.location = Some(field.to_string());
        f
    })?;
    let Some(on_upgrade) = on_upgrade else {
        return Err(ApiFailure::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            format!("exec needs the connection upgraded to {EXEC_PROTOCOL}"),
        )
        .hint(format!(
            "use `wharf service exec`, or send Connection: Upgrade and Upgrade: {EXEC_PROTOCOL} over HTTP/1.1"
        )));
    };
    let inst = running_instance(m, stack, service, q.slot).await?;
    let Some(link) = m.hub.link(&inst.node) else {
        return Err(ApiFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!(
                "node {} of instance {} is not connected to this master",
                inst.node,
                inst.id()
            ),
        )
        .hint(
            "check `wharf node ls`; with several masters, ask the one the node is connected to",
        ));
    };
    Ok((inst, spec, on_upgrade, link))
}

/// The instance of the service to run a command in: the one of `slot`, else the first running
/// one (by slot), as its node reports it.
async fn running_instance(
    m: &Master,
    stack: &str,
    service: &str,
    slot: Option<u32>,
) -> Result<InstanceRecord, ApiFailure> {
    let insts = m
        .instances(&keys::instances_of_service(stack, service))
        .await?;
    let reports = m.reports().await?;
    let running = |i: &&&InstanceRecord| {
        rollout::report_of(i, &reports).is_some_and(|r| r.state == InstanceState::Running)
    };
    let mut candidates: Vec<&InstanceRecord> = insts
        .iter()
        .filter(|i| slot.is_none_or(|s| s == i.slot))
        .collect();
    candidates.sort_by_key(|i| i.slot);
    if let Some(i) = candidates.iter().find(running) {
        return Ok((*i).clone());
    }
    let message = match slot {
        Some(s) if candidates.is_empty() => format!("service {stack}/{service} has no slot {s}"),
        Some(s) => format!("instance {stack}/{service}.{s} is not running"),
        None => format!("service {stack}/{service} has no running instance"),
    };
    let status = if slot.is_some() && candidates.is_empty() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::CONFLICT
    };
    let code = if status == StatusCode::NOT_FOUND {
        "not_found"
    } else {
        "not_running"
    };
    Err(ApiFailure::new(status, code, message)
        .hint(format!("see `wharf service ps {stack}/{service}`")))
}

/// The command as a shell would show it (for the audit trail).
fn shell_words(command: &[String]) -> String {
    command
        .iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Carry the exec stream between the client and the node until the command ends (its exit code
/// or its error is the last frame) or the client goes away.
async fn pump<S>(io: S, exec: NodeExec)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(io);
    let NodeExec { input, mut output } = exec;
    // What the client sends, until it is gone (`None`) or sent a bad frame (why).
    let mut reader = tokio::spawn(read_input(rd, input));
    let mut reading = true;
    loop {
        let ev = tokio::select! {
            ev = output.recv() => ev,
            bad = &mut reader, if reading => {
                reading = false;
                if let Ok(Some(e)) = bad {
                    let f = failure("invalid", e, Some("send frames as the API document describes (at most 32768 bytes each)"));
                    let _ = wr.write_all(&f.encode()).await;
                    break;
                }
                continue; // the output still goes to the client
            }
        };
        let Some(ev) = ev else { break };
        let (frame, last) = match ev {
            ExecEvent::Output(stream, data) => (ExecFrame::output(stream, data), false),
            ExecEvent::Exit(Some(code)) => (ExecFrame::Exit(code), true),
            ExecEvent::Exit(None) => (
                failure(
                    "exec_failed",
                    "the command ended; the engine does not know its exit code".into(),
                    None,
                ),
                true,
            ),
            ExecEvent::Failed(e) => (
                failure(
                    "exec_failed",
                    e,
                    Some("see `wharf service ps` and the node's agent log"),
                ),
                true,
            ),
        };
        if wr.write_all(&frame.encode()).await.is_err() || last {
            break;
        }
    }
    reader.abort();
    let _ = wr.shutdown().await;
}

/// The client's frames into the command, until the client is gone or the command ended
/// (`None`), or the client sent a frame it may not (why).
async fn read_input<R>(mut rd: R, input: tokio::sync::mpsc::Sender<ExecInput>) -> Option<String>
where
    R: tokio::io::AsyncRead + Unpin,
{
    loop {
        let i = match wharf_link::frame::read_exec_frame(&mut rd).await {
            Ok(Some(ExecFrame::Stdin(d))) => ExecInput::Data(d),
            Ok(Some(ExecFrame::StdinEof)) => ExecInput::Eof,
            Ok(Some(ExecFrame::Resize(s))) => ExecInput::Resize(s),
            Ok(Some(f)) => {
                return Some(format!(
                    "a client sends only stdin (0), stdin ended (3) and resize (4) frames, not kind {}",
                    f.kind()
                ));
            }
            Ok(None) => return None,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Some(e.to_string()),
            Err(_) => return None,
        };
        if input.send(i).await.is_err() {
            return None;
        }
    }
}

fn failure(code: &str, message: String, hint: Option<&str>) -> ExecFrame {
    ExecFrame::Error(ApiError {
        code: code.into(),
        message,
        hint: hint.map(str::to_string),
        location: None,
    })
}

#[utoipa::path(get, path = "/v1/services/{stack}/{service}/stats",
    params(("stack" = String, Path), ("service" = String, Path)),
    responses((status = 200, body = StatsResponse), (status = 404, body = ApiError)))]
pub(crate) async fn service_stats(
    State(m): State<Master>,
    Path((stack, service)): Path<(String, String)>,
) -> Result<Json<StatsResponse>, ApiFailure> {
    m.service(&stack, &service)
        .await?
        .ok_or_else(|| not_found_service(&stack, &service))?;
    let insts = m
        .instances(&keys::instances_of_service(&stack, &service))
        .await?;
    let mut nodes: Vec<String> = insts.iter().map(|i| i.node.clone()).collect();
    nodes.sort();
    nodes.dedup();
    let mut r = gather(&m, nodes).await;
    r.instances
        .retain(|s| s.stack == stack && s.service == service);
    Ok(Json(r))
}

#[utoipa::path(get, path = "/v1/stats",
    responses((status = 200, description = "Every running instance the caller's scope names.", body = StatsResponse)))]
pub(crate) async fn all_stats(
    State(m): State<Master>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<StatsResponse>, ApiFailure> {
    let nodes = m.hub.connections().into_iter().map(|(n, _)| n).collect();
    let mut r = gather(&m, nodes).await;
    r.instances.retain(|s| caller.sees(&s.stack));
    Ok(Json(r))
}

/// Ask `nodes` for their instances' usage, all at once; the rows in instance order, and why a
/// node could not answer.
async fn gather(m: &Master, nodes: Vec<String>) -> StatsResponse {
    let asks = nodes.into_iter().map(|node| {
        let link = m.hub.link(&node);
        async move {
            let answer = match link {
                Some(l) => l.stats().await,
                None => Err("not connected to this master".into()),
            };
            (node, answer)
        }
    });
    let mut r = StatsResponse::default();
    for (node, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(rows) => r.instances.extend(rows.into_iter().map(|mut s| {
                s.node = node.clone();
                s
            })),
            Err(e) => r.errors.push(format!("node {node}: {e}")),
        }
    }
    r.instances
        .sort_by(|a, b| (&a.stack, &a.service, a.slot).cmp(&(&b.stack, &b.service, b.slot)));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_trail_shows_the_command_as_a_shell_would_take_it() {
        let cmd = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(shell_words(&cmd(&["ls", "-la", "/tmp"])), "ls -la /tmp");
        assert_eq!(
            shell_words(&cmd(&["sh", "-c", "echo hi; exit 3"])),
            "sh -c 'echo hi; exit 3'"
        );
        assert_eq!(
            shell_words(&cmd(&["echo", "it's", ""])),
            r"echo 'it'\''s' ''"
        );
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::sync::mpsc;

    /// The pump on one end of a pipe, a node exec whose channels the test holds, and the
    /// client's end of the pipe.
    fn pumped() -> (
        tokio::io::DuplexStream,
        mpsc::Receiver<ExecInput>,
        mpsc::Sender<ExecEvent>,
    ) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (in_tx, in_rx) = mpsc::channel(4);
        let (out_tx, out_rx) = mpsc::channel(4);
        let exec = NodeExec {
            input: in_tx,
            output: out_rx,
        };
        tokio::spawn(pump(server, exec));
        (client, in_rx, out_tx)
    }

    async fn next(client: &mut tokio::io::DuplexStream) -> Option<ExecFrame> {
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            wharf_link::frame::read_exec_frame(client),
        )
        .await
        .expect("a frame in time")
        .expect("a well-formed frame")
    }

    #[tokio::test]
    async fn input_goes_in_and_output_then_the_exit_code_come_out() {
        let (mut client, mut input, output) = pumped();
        client
            .write_all(&ExecFrame::Stdin(b"ls\n".to_vec()).encode())
            .await
            .unwrap();
        let size = TtySize { cols: 80, rows: 24 };
        client
            .write_all(&ExecFrame::Resize(size).encode())
            .await
            .unwrap();
        assert_eq!(input.recv().await, Some(ExecInput::Data(b"ls\n".to_vec())));
        assert_eq!(input.recv().await, Some(ExecInput::Resize(size)));
        output
            .send(ExecEvent::Output(LogStream::Stderr, b"x".to_vec()))
            .await
            .unwrap();
        output.send(ExecEvent::Exit(Some(3))).await.unwrap();
        assert_eq!(
            next(&mut client).await,
            Some(ExecFrame::Stderr(b"x".to_vec()))
        );
        assert_eq!(next(&mut client).await, Some(ExecFrame::Exit(3)));
        assert_eq!(next(&mut client).await, None, "closed after the exit code");
    }

    #[tokio::test]
    async fn a_huge_or_wrong_frame_from_the_client_ends_the_stream_with_an_error_naming_it() {
        for (bytes, says) in [
            (vec![0, 0x7f, 0xff, 0xff, 0xff], "at most 32768"),
            (ExecFrame::Exit(1).encode(), "not kind 5"),
            (vec![9, 0, 0, 0, 0], "unknown exec frame kind 9"),
        ] {
            let (mut client, _input, _output) = pumped();
            client.write_all(&bytes).await.unwrap();
            match next(&mut client).await {
                Some(ExecFrame::Error(e)) => {
                    assert!(e.message.contains(says), "{says}: {e:?}");
                    assert!(e.hint.is_some(), "{e:?}");
                }
                other => panic!("{says}: {other:?}"),
            }
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty(), "nothing after the error");
        }
    }
}
