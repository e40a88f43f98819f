//! Exec and stats requests on one remote agent's stream (`wharf service exec`, `wharf service
//! stats`): the requests in flight, and the credits that bound them both ways.
//!
//! Output: the agent sends at most `EXEC_WINDOW` chunks ahead of what the reader took (this
//! master credits it back by half windows). Input: this master sends at most as many chunks
//! as the agent credited (it grants a window at the start, then one per chunk the command
//! took). Frames from the agent are taken without waiting: the stream also carries its reports.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use wharf_types::{ExecEvent, ExecInput, ExecSpec, InstanceStats, ToAgent, ToMaster};

use crate::hub::NodeExec;

/// Output chunks (of at most `MAX_EXEC_CHUNK` bytes) of one exec held for its reader at most,
/// and input chunks the agent is asked to hold.
pub(crate) const EXEC_WINDOW: u32 = 64;

/// How long a node has to answer a stats request (the engine samples for a second).
const STATS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node has to read an image's packages (it exports the whole image first).
const INVENTORY_TIMEOUT: Duration = Duration::from_secs(300);

/// One exec in flight: where its output goes (bounded: the window, and one place kept for how
/// it ends), and the input credit the agent granted.
struct Pending {
    output: mpsc::Sender<ExecEvent>,
    end: mpsc::OwnedPermit<ExecEvent>,
    input_credit: Arc<Semaphore>,
}

type StatsReply = oneshot::Sender<Result<Vec<InstanceStats>, String>>;
type InventoryReply = oneshot::Sender<Result<(wharf_types::Inventory, String), String>>;

/// The exec and stats requests of one agent stream.
#[derive(Clone)]
pub(crate) struct Requests {
    ctrl: mpsc::UnboundedSender<ToAgent>,
    execs: Arc<Mutex<HashMap<u64, Pending>>>,
    stats: Arc<Mutex<HashMap<u64, StatsReply>>>,
    inventories: Arc<Mutex<HashMap<u64, InventoryReply>>>,
    next_id: Arc<AtomicU64>,
}

impl Requests {
    pub(crate) fn new(ctrl: mpsc::UnboundedSender<ToAgent>) -> Requests {
        Requests {
            ctrl,
            execs: Arc::default(),
            stats: Arc::default(),
            inventories: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Start `spec` in `instance` on the node.
    pub(crate) fn exec(&self, instance: &str, spec: ExecSpec) -> Result<NodeExec, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(EXEC_WINDOW as usize + 1);
        let end = tx
            .clone()
            .try_reserve_owned()
            .expect("a new channel has room");
        let credit = Arc::new(Semaphore::new(0));
        self.execs.lock().insert(
            id,
            Pending {
                output: tx,
                end,
                input_credit: credit.clone(),
            },
        );
        let start = ToAgent::ExecStart {
            id,
            instance: instance.to_string(),
            spec,
            window: EXEC_WINDOW,
        };
        if self.ctrl.send(start).is_err() {
            self.execs.lock().remove(&id);
            return Err("the node is not connected".into());
        }
        let (in_tx, in_rx) = mpsc::channel(1);
        let (out_tx, out_rx) = mpsc::channel(1);
        tokio::spawn(self.clone().carry(id, rx, out_tx, in_rx, credit));
        Ok(NodeExec {
            input: in_tx,
            output: out_rx,
        })
    }

    /// Carry exec `id` between its reader and the stream until it ends or the reader goes.
    async fn carry(
        self,
        id: u64,
        mut rx: mpsc::Receiver<ExecEvent>,
        out: mpsc::Sender<ExecEvent>,
        mut input: mpsc::Receiver<ExecInput>,
        credit: Arc<Semaphore>,
    ) {
        let ctrl = self.ctrl.clone();
        let feed = async {
            while let Some(i) = input.recv().await {
                match credit.acquire().await {
                    Ok(p) => p.forget(),
                    Err(_) => return,
                }
                let frame = match i {
                    ExecInput::Data(data) => ToAgent::ExecInput { id, data },
                    ExecInput::Eof => ToAgent::ExecEof { id },
                    ExecInput::Resize(size) => ToAgent::ExecResize { id, size },
                };
                if ctrl.send(frame).is_err() {
                    return;
                }
            }
            // The reader sends no more: the output still comes.
            std::future::pending::<()>().await
        };
        let drain = async {
            let mut uncredited = 0;
            loop {
                let Some(ev) = rx.recv().await else {
                    let gone = "the connection to the node ended".to_string();
                    let _ = out.send(ExecEvent::Failed(gone)).await;
                    return;
                };
                let last = !matches!(ev, ExecEvent::Output(..));
                if out.send(ev).await.is_err() || last {
                    return;
                }
                uncredited += 1;
                if uncredited >= EXEC_WINDOW / 2 {
                    let chunks = std::mem::take(&mut uncredited);
                    let _ = ctrl.send(ToAgent::ExecCredit { id, chunks });
                }
            }
        };
        tokio::select! {
            () = drain => {}
            () = feed => {}
        }
        // Still open: the reader went away before the end; the agent lets the command go.
        if self.execs.lock().remove(&id).is_some() {
            let _ = self.ctrl.send(ToAgent::ExecCancel { id });
        }
    }

    /// The resource usage of every instance on the node.
    pub(crate) async fn stats(&self) -> Result<Vec<InstanceStats>, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.stats.lock().insert(id, tx);
        if self.ctrl.send(ToAgent::StatsRequest { id }).is_err() {
            self.stats.lock().remove(&id);
            return Err("the node is not connected".into());
        }
        let answer = tokio::time::timeout(STATS_TIMEOUT, rx).await;
        self.stats.lock().remove(&id);
        match answer {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the connection to the node ended".into()),
            Err(_) => Err(format!(
                "the node did not answer within {}s",
                STATS_TIMEOUT.as_secs()
            )),
        }
    }

    /// What the node's image `image` installs, and the image's id.
    pub(crate) async fn inventory(
        &self,
        image: &str,
    ) -> Result<(wharf_types::Inventory, String), String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inventories.lock().insert(id, tx);
        let ask = ToAgent::InventoryRequest {
            id,
            image: image.to_string(),
        };
        if self.ctrl.send(ask).is_err() {
            self.inventories.lock().remove(&id);
            return Err("the node is not connected".into());
        }
        let answer = tokio::time::timeout(INVENTORY_TIMEOUT, rx).await;
        self.inventories.lock().remove(&id);
        match answer {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the connection to the node ended".into()),
            Err(_) => Err(format!(
                "the node did not read the image within {}s",
                INVENTORY_TIMEOUT.as_secs()
            )),
        }
    }

    /// Take an exec, stats or inventory frame from the agent. Never waits.
    pub(crate) fn take(&self, frame: ToMaster) {
        match frame {
            ToMaster::ExecOutput { id, stream, data } => {
                let mut execs = self.execs.lock();
                let Some(p) = execs.get(&id) else {
                    return; // cancelled; the agent has not heard yet
                };
                if let Err(mpsc::error::TrySendError::Full(_)) =
                    p.output.try_send(ExecEvent::Output(stream, data))
                    && let Some(p) = execs.remove(&id)
                {
                    p.end.send(ExecEvent::Failed(format!(
                        "the node sent more than {EXEC_WINDOW} chunks of output ahead of the reader"
                    )));
                    let _ = self.ctrl.send(ToAgent::ExecCancel { id });
                }
            }
            ToMaster::ExecInputCredit { id, chunks } => {
                if let Some(p) = self.execs.lock().get(&id) {
                    let c = &p.input_credit;
                    let room = (EXEC_WINDOW as usize).saturating_sub(c.available_permits());
                    c.add_permits((chunks as usize).min(room));
                }
            }
            ToMaster::ExecEnd {
                id,
                exit_code,
                error,
            } => {
                if let Some(p) = self.execs.lock().remove(&id) {
                    p.end.send(match error {
                        Some(e) => ExecEvent::Failed(e),
                        None => ExecEvent::Exit(exit_code),
                    });
                }
            }
            ToMaster::Stats {
                id,
                instances,
                error,
            } => {
                if let Some(tx) = self.stats.lock().remove(&id) {
                    let _ = tx.send(error.map_or(Ok(instances), Err));
                }
            }
            ToMaster::Inventory {
                id,
                inventory,
                image_id,
                error,
            } => {
                if let Some(tx) = self.inventories.lock().remove(&id) {
                    let _ = tx.send(match (inventory, error) {
                        (Some(inv), None) => Ok((inv, image_id)),
                        (_, e) => Err(e.unwrap_or_else(|| "the node sent no inventory".into())),
                    });
                }
            }
            _ => {}
        }
    }

    /// The stream ended: every request in flight ends with it.
    pub(crate) fn clear(&self) {
        self.execs.lock().clear();
        self.stats.lock().clear();
        self.inventories.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::LogStream;

    fn requests() -> (Requests, mpsc::UnboundedReceiver<ToAgent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Requests::new(tx), rx)
    }

    fn output(id: u64) -> ToMaster {
        ToMaster::ExecOutput {
            id,
            stream: LogStream::Stdout,
            data: b"x".to_vec(),
        }
    }

    #[tokio::test]
    async fn input_goes_out_only_as_the_agent_credits_it() {
        let (r, mut ctrl) = requests();
        let exec = r.exec("s.web.1", ExecSpec::default()).expect("started");
        let Some(ToAgent::ExecStart { id, window, .. }) = ctrl.recv().await else {
            panic!("no start");
        };
        assert_eq!(window, EXEC_WINDOW);
        exec.input
            .send(ExecInput::Data(b"a".to_vec()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(ctrl.try_recv().is_err(), "input sent without credit");
        r.take(ToMaster::ExecInputCredit { id, chunks: 1 });
        let sent = tokio::time::timeout(Duration::from_secs(5), ctrl.recv()).await;
        assert!(
            matches!(&sent, Ok(Some(ToAgent::ExecInput { data, .. })) if data == b"a"),
            "the credited input was not sent: {sent:?}"
        );
    }

    #[tokio::test]
    async fn output_beyond_the_window_ends_the_exec_and_the_reader_is_told() {
        let (r, mut ctrl) = requests();
        let mut exec = r.exec("s.web.1", ExecSpec::default()).expect("started");
        let Some(ToAgent::ExecStart { id, .. }) = ctrl.recv().await else {
            panic!("no start");
        };
        // The reader takes nothing while the agent overruns its window.
        for _ in 0..EXEC_WINDOW * 3 {
            r.take(output(id));
        }
        let mut outputs = 0;
        let last = loop {
            match tokio::time::timeout(Duration::from_secs(5), exec.output.recv()).await {
                Ok(Some(ExecEvent::Output(..))) => outputs += 1,
                Ok(other) => break other,
                Err(_) => panic!("the exec did not end after an overrun"),
            }
        };
        assert!(
            matches!(&last, Some(ExecEvent::Failed(e)) if e.contains("ahead of the reader")),
            "{last:?}"
        );
        assert!(outputs <= EXEC_WINDOW as usize + 2, "held {outputs} chunks");
        let mut cancelled = false;
        while let Ok(f) = ctrl.try_recv() {
            cancelled |= matches!(f, ToAgent::ExecCancel { id: i } if i == id);
        }
        assert!(cancelled, "the agent was not told to stop");
    }

    #[tokio::test]
    async fn the_exit_code_ends_the_output() {
        let (r, mut ctrl) = requests();
        let mut exec = r.exec("s.web.1", ExecSpec::default()).expect("started");
        let Some(ToAgent::ExecStart { id, .. }) = ctrl.recv().await else {
            panic!("no start");
        };
        r.take(output(id));
        r.take(ToMaster::ExecEnd {
            id,
            exit_code: Some(3),
            error: None,
        });
        let mut got = Vec::new();
        while let Some(ev) = exec.output.recv().await {
            got.push(ev);
        }
        assert_eq!(
            got,
            [
                ExecEvent::Output(LogStream::Stdout, b"x".to_vec()),
                ExecEvent::Exit(Some(3))
            ]
        );
    }
}
