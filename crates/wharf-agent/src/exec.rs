//! Commands run in instances (`wharf service exec`) and their resource usage (`wharf service
//! stats`), as the agent serves them: `run` turns a driver's running command into two bounded
//! channels, and `Execs` serves the master's exec and stats frames on the agent stream.
//!
//! Memory stays bounded both ways: output goes out only as the master credits it (at most its
//! window ahead), input comes in only as this agent credits it (one credit per input frame taken
//! into the command); a master that overruns its input window ends the exec.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};
use wharf_types::{ExecEvent, ExecInput, ExecSpec, ToAgent, ToMaster};

use crate::Agent;
use crate::driver::{EXEC_CHUNK, ExecControl, ExecProcess};

/// The most chunks a master may ask to have in flight each way, whatever it says.
const MAX_WINDOW: u32 = 1024;

/// A running command, as two channels: input in, output (then one end event) out. Dropping
/// both ends lets go of the command's streams.
pub struct ExecIo {
    pub input: mpsc::Sender<ExecInput>,
    pub output: mpsc::Receiver<ExecEvent>,
}

/// Pump a driver's running command through bounded channels: output chunks of at most
/// `EXEC_CHUNK` bytes, then `Exit` with the command's code (or `Failed`).
pub fn run(process: ExecProcess) -> ExecIo {
    let (in_tx, mut in_rx) = mpsc::channel::<ExecInput>(1);
    let (out_tx, out_rx) = mpsc::channel::<ExecEvent>(4);
    let ExecProcess {
        mut output,
        mut input,
        control,
    } = process;
    let control: Arc<dyn ExecControl> = Arc::from(control);
    let ctl = control.clone();
    tokio::spawn(async move {
        let writer = tokio::spawn(async move {
            while let Some(i) = in_rx.recv().await {
                match i {
                    ExecInput::Data(d) => {
                        if input.write_all(&d).await.is_err() || input.flush().await.is_err() {
                            return;
                        }
                    }
                    ExecInput::Eof => {
                        let _ = input.shutdown().await;
                    }
                    ExecInput::Resize(size) => {
                        if let Err(e) = ctl.resize(size).await {
                            tracing::debug!(error = %e, "exec: resize failed");
                        }
                    }
                }
            }
        });
        let end = loop {
            match output.next().await {
                Some(Ok((stream, data))) => {
                    for chunk in data.chunks(EXEC_CHUNK) {
                        let ev = ExecEvent::Output(stream, chunk.to_vec());
                        if out_tx.send(ev).await.is_err() {
                            writer.abort();
                            return; // nobody reads any more
                        }
                    }
                }
                Some(Err(e)) => break ExecEvent::Failed(e.describe()),
                None => {
                    break match control.exit_code().await {
                        Ok(code) => ExecEvent::Exit(code),
                        Err(e) => ExecEvent::Failed(e.describe()),
                    };
                }
            }
        };
        writer.abort();
        let _ = out_tx.send(end).await;
    });
    ExecIo {
        input: in_tx,
        output: out_rx,
    }
}

/// One exec the master started on this stream.
struct Running {
    task: tokio::task::AbortHandle,
    /// Input frames not yet taken into the command (at most the window: the master's credit).
    input: mpsc::Sender<ExecInput>,
    /// Output chunks the master's reader has room for.
    credit: Arc<Semaphore>,
}

/// The exec and stats requests of one agent stream; dropping it ends them all.
pub struct Execs {
    agent: Arc<Agent>,
    tx: mpsc::Sender<ToMaster>,
    running: HashMap<u64, Running>,
}

impl Execs {
    pub fn new(agent: Arc<Agent>, tx: mpsc::Sender<ToMaster>) -> Execs {
        Execs {
            agent,
            tx,
            running: HashMap::new(),
        }
    }

    /// Take an exec or stats frame from the master. Never waits: the stream also carries the
    /// master's beat and desired states.
    pub fn take(&mut self, frame: ToAgent) {
        let (id, input) = match frame {
            ToAgent::ExecStart {
                id,
                instance,
                spec,
                window,
            } => return self.start(id, instance, spec, window),
            ToAgent::ExecCredit { id, chunks } => {
                if let Some(r) = self.running.get(&id) {
                    let room = Semaphore::MAX_PERMITS - r.credit.available_permits();
                    r.credit.add_permits((chunks as usize).min(room));
                }
                return;
            }
            ToAgent::ExecCancel { id } => {
                if let Some(r) = self.running.remove(&id) {
                    r.task.abort();
                }
                return;
            }
            ToAgent::StatsRequest { id } => {
                let (agent, tx) = (self.agent.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let instances = agent.stats().await;
                    let _ = tx
                        .send(ToMaster::Stats {
                            id,
                            instances,
                            error: None,
                        })
                        .await;
                });
                return;
            }
            ToAgent::InventoryRequest { id, image } => {
                let (agent, tx) = (self.agent.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let (inventory, image_id, error) = match agent.inventory(&image).await {
                        Ok((inv, id)) => (Some(inv), id, None),
                        Err(e) => (None, String::new(), Some(e)),
                    };
                    let _ = tx
                        .send(ToMaster::Inventory {
                            id,
                            inventory,
                            image_id,
                            error,
                        })
                        .await;
                });
                return;
            }
            ToAgent::ExecInput { id, data } => (id, ExecInput::Data(data)),
            ToAgent::ExecEof { id } => (id, ExecInput::Eof),
            ToAgent::ExecResize { id, size } => (id, ExecInput::Resize(size)),
            _ => return,
        };
        let Some(r) = self.running.get(&id) else {
            return; // ended; the master hears of it
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = r.input.try_send(input) {
            // More than the credit granted: end it rather than hold more.
            if let Some(r) = self.running.remove(&id) {
                r.task.abort();
            }
            let tx = self.tx.clone();
            tokio::spawn(async move {
                let error = Some("the master sent more input than its window".to_string());
                let _ = tx
                    .send(ToMaster::ExecEnd {
                        id,
                        exit_code: None,
                        error,
                    })
                    .await;
            });
        }
    }

    fn start(&mut self, id: u64, instance: String, spec: ExecSpec, window: u32) {
        self.running.retain(|_, r| !r.task.is_finished());
        let window = window.clamp(1, MAX_WINDOW);
        let (in_tx, in_rx) = mpsc::channel(window as usize);
        let credit = Arc::new(Semaphore::new(window as usize));
        let (agent, tx, c) = (self.agent.clone(), self.tx.clone(), credit.clone());
        let task = tokio::spawn(async move {
            let end = match agent.exec(&instance, &spec).await {
                Err(error) => ToMaster::ExecEnd {
                    id,
                    exit_code: None,
                    error: Some(error),
                },
                Ok(io) => serve(id, io, in_rx, &tx, &c, window).await,
            };
            let _ = tx.send(end).await;
        });
        self.running.insert(
            id,
            Running {
                task: task.abort_handle(),
                input: in_tx,
                credit,
            },
        );
    }
}

impl Drop for Execs {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.task.abort();
        }
    }
}

/// Carry exec `id` between the stream and the command until it ends; its last frame.
async fn serve(
    id: u64,
    io: ExecIo,
    mut in_rx: mpsc::Receiver<ExecInput>,
    tx: &mpsc::Sender<ToMaster>,
    credit: &Semaphore,
    window: u32,
) -> ToMaster {
    let ExecIo { input, mut output } = io;
    let feed = async {
        if tx
            .send(ToMaster::ExecInputCredit { id, chunks: window })
            .await
            .is_err()
        {
            return;
        }
        while let Some(i) = in_rx.recv().await {
            if input.send(i).await.is_err() {
                return;
            }
            let more = ToMaster::ExecInputCredit { id, chunks: 1 };
            if tx.send(more).await.is_err() {
                return;
            }
        }
    };
    let drain = async {
        while let Some(ev) = output.recv().await {
            match ev {
                ExecEvent::Output(stream, data) => {
                    match credit.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => break,
                    }
                    if tx
                        .send(ToMaster::ExecOutput { id, stream, data })
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                ExecEvent::Exit(exit_code) => {
                    return ToMaster::ExecEnd {
                        id,
                        exit_code,
                        error: None,
                    };
                }
                ExecEvent::Failed(e) => {
                    return ToMaster::ExecEnd {
                        id,
                        exit_code: None,
                        error: Some(e),
                    };
                }
            }
        }
        ToMaster::ExecEnd {
            id,
            exit_code: None,
            error: Some("the command's output ended without an exit code".into()),
        }
    };
    tokio::pin!(drain);
    tokio::select! {
        end = &mut drain => end,
        () = feed => drain.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::fake::FakeDriver;
    use crate::driver::{Driver, ObservedState};
    use wharf_types::LogStream;

    fn assignment() -> wharf_types::Assignment {
        wharf_types::Assignment {
            id: "s.web.1".into(),
            stack: "s".into(),
            service: "web".into(),
            slot: 1,
            generation: 1,
            spec_hash: "h".into(),
            spec: Default::default(),
        }
    }

    async fn frame(rx: &mut mpsc::Receiver<ToMaster>) -> ToMaster {
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("a frame within 5 s")
            .expect("the stream is open")
    }

    /// Serve `cat` under exec 1 with `window`; the frames to the master.
    async fn cat(window: u32) -> (Execs, mpsc::Receiver<ToMaster>) {
        let d = FakeDriver::new();
        d.insert(&assignment(), ObservedState::Running);
        let agent = Agent::new(vec![Arc::new(d)], Default::default());
        let (tx, rx) = mpsc::channel(256);
        let mut execs = Execs::new(agent, tx);
        let spec = ExecSpec {
            command: vec!["cat".into()],
            stdin: true,
            ..ExecSpec::default()
        };
        execs.take(ToAgent::ExecStart {
            id: 1,
            instance: "s.web.1".into(),
            spec,
            window,
        });
        (execs, rx)
    }

    #[tokio::test]
    async fn input_and_output_go_only_as_far_as_each_side_credited() {
        let (mut execs, mut rx) = cat(2).await;
        let credit = |f: ToMaster| match f {
            ToMaster::ExecInputCredit { id: 1, chunks } => chunks,
            other => panic!("not an input credit: {other:?}"),
        };
        assert_eq!(
            credit(frame(&mut rx).await),
            2,
            "the input window at the start"
        );
        let chunk = || ToAgent::ExecInput {
            id: 1,
            data: vec![b'x'; wharf_types::MAX_EXEC_CHUNK],
        };
        execs.take(chunk());
        execs.take(chunk());
        // One credit per input chunk taken into the command, and one output chunk (`cat`'s
        // first line) within the output window of 2.
        let mut credits = 0;
        let mut outputs = 0;
        while credits < 2 || outputs < 1 {
            match frame(&mut rx).await {
                ToMaster::ExecInputCredit { chunks, .. } => credits += chunks,
                ToMaster::ExecOutput { .. } => outputs += 1,
                other => panic!("{other:?}"),
            }
        }
        execs.take(chunk());
        execs.take(ToAgent::ExecEof { id: 1 });
        // The echo of the input is more output: one more chunk, then nothing without credit.
        let mut more = 0;
        while outputs + more < 2 {
            match frame(&mut rx).await {
                ToMaster::ExecInputCredit { .. } => {}
                ToMaster::ExecOutput { .. } => more += 1,
                other => panic!("{other:?}"),
            }
        }
        let idle = tokio::time::timeout(std::time::Duration::from_millis(200), rx.recv()).await;
        assert!(
            !matches!(
                idle,
                Ok(Some(ToMaster::ExecOutput { .. }) | Some(ToMaster::ExecEnd { .. }))
            ),
            "output beyond the window: {idle:?}"
        );
        execs.take(ToAgent::ExecCredit { id: 1, chunks: 64 });
        let end = loop {
            if let f @ ToMaster::ExecEnd { .. } = frame(&mut rx).await {
                break f;
            }
        };
        assert!(
            matches!(
                end,
                ToMaster::ExecEnd {
                    id: 1,
                    exit_code: Some(0),
                    error: None
                }
            ),
            "{end:?}"
        );
    }

    #[tokio::test]
    async fn input_beyond_the_window_ends_the_exec() {
        let (mut execs, mut rx) = cat(1).await;
        let _ = frame(&mut rx).await; // the input window
        for _ in 0..8 {
            execs.take(ToAgent::ExecEof { id: 1 });
        }
        let end = loop {
            if let f @ ToMaster::ExecEnd { .. } = frame(&mut rx).await {
                break f;
            }
        };
        assert!(
            matches!(&end, ToMaster::ExecEnd { error: Some(e), .. } if e.contains("more input than its window")),
            "{end:?}"
        );
    }

    #[tokio::test]
    async fn a_command_gives_its_output_then_its_exit_code_and_takes_its_input() {
        let d = FakeDriver::new();
        let spec = assignment();
        let h = d.insert(&spec, ObservedState::Running);
        let exec = ExecSpec {
            command: vec!["cat".into()],
            stdin: true,
            ..ExecSpec::default()
        };
        let mut io = run(d.exec(&h, &exec).await.expect("exec"));
        io.input
            .send(ExecInput::Data(b"typed".to_vec()))
            .await
            .unwrap();
        io.input.send(ExecInput::Eof).await.unwrap();
        let mut got = Vec::new();
        while let Some(ev) = io.output.recv().await {
            got.push(ev);
        }
        assert_eq!(
            got,
            [
                ExecEvent::Output(LogStream::Stdout, b"cat\n".to_vec()),
                ExecEvent::Output(LogStream::Stdout, b"typed".to_vec()),
                ExecEvent::Exit(Some(0)),
            ]
        );
        assert!(
            d.calls()
                .contains(&crate::driver::fake::Call::Exec(h, vec!["cat".into()]))
        );
    }
}
