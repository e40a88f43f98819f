//! The agent's end of the agent stream: joining a cluster once (token → node certificate), then
//! a mutual-TLS stream to the master that carries desired state in and reports and logs out,
//! reconnecting with backoff whenever it drops.
//!
//! The agent loop (`Agent::run`) is started once and keeps running across reconnects: while the
//! master is away nothing is started or stopped, because the desired state only changes on a real
//! `Desired` frame.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use wharf_link::frame::{read_frame, write_frame};
use wharf_link::tls::{join_client_config, master_name, node_client_config};
use wharf_link::tokio_rustls::TlsConnector;
use wharf_link::tokio_rustls::client::TlsStream;
use wharf_link::{JoinToken, NodeKey};
use wharf_types::{
    Backoff, JoinRequest, JoinResponse, LogQuery, NodeDesired, NodeReport, ToAgent, ToMaster,
};

use crate::driver::LogLines;
use crate::{Agent, ControlPlane};

/// Short: while a partition lasts, attempts fail fast and one soon after it heals gets through,
/// so the node is fenced (its stale instances stopped) within seconds of healing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A write that takes this long means the master (or the network to it) is gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Between attempts to reach the master: 100 ms doubling to 2 s, each delay jittered over its
/// upper half (`Backoff::jittered`).
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// Why joining, loading the identity, or a stream to the master failed. The messages are the
/// ones users see; a cause, where there is one, is the error's `source` (shown after a `: ` by
/// `{:#}` in the binary and by `Causes` in the link's log).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "the identity in {} is incomplete (expected {}); remove those files and join again with --token",
        .0.display(),
        FILES.join(", ")
    )]
    IncompleteIdentity(PathBuf),
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the identity in {} is not usable", .dir.display())]
    UnusableIdentity {
        dir: PathBuf,
        source: wharf_link::LinkError,
    },
    #[error("cannot create {}", .path.display())]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(std::io::Error),
    /// The link's building blocks (token, key, TLS configuration, frames), as they said it.
    #[error(transparent)]
    Link(#[from] wharf_link::LinkError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "cannot join (if the TLS handshake failed on the CA fingerprint, the token belongs to another cluster)"
    )]
    JoinConnect(#[source] ConnectError),
    #[error("cannot send the join request")]
    SendJoin(#[source] wharf_link::LinkError),
    #[error("the master did not answer the join request")]
    JoinUnanswered,
    #[error("cannot read the master's answer")]
    ReadAnswer(#[source] wharf_link::LinkError),
    #[error("the master closed the connection without answering the join request")]
    JoinClosed,
    #[error("the master refused to join: {message}{}", .hint.as_ref().map(|h| format!("\nhint: {h}")).unwrap_or_default())]
    Refused {
        message: String,
        hint: Option<String>,
    },
    /// The stored identity no longer makes a TLS configuration (its cause is in the message).
    #[error("the node identity is not usable: {0}")]
    NodeConfig(wharf_link::LinkError),
    #[error("sending hello timed out")]
    HelloTimeout(#[source] tokio::time::error::Elapsed),
    #[error(
        "no word from the master for {:?} (it beats four times a second)",
        MASTER_SILENCE
    )]
    MasterSilent,
    #[error("stream to the master: {0}")]
    Writer(WriterEnd),
    #[error("the master closed the stream")]
    Closed,
    #[error("stream from the master: {0}")]
    ReadStream(wharf_link::LinkError),
}

/// Why a connection to the master could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to the master at {0} timed out")]
    Timeout(String),
    #[error("cannot connect to the master at {addr}")]
    Tcp {
        addr: String,
        source: std::io::Error,
    },
    #[error("the TLS handshake with {0} timed out")]
    HandshakeTimeout(String),
    #[error("TLS handshake with the master at {addr} failed")]
    Handshake {
        addr: String,
        source: std::io::Error,
    },
}

/// Why the writer of a stream to the master stopped (its cause is in the message).
#[derive(Debug, thiserror::Error)]
pub enum WriterEnd {
    #[error("closed")]
    Closed,
    #[error("write failed: {0}")]
    Failed(wharf_link::LinkError),
    #[error("write timed out")]
    TimedOut,
    /// The writer task panicked or was cancelled.
    #[error("{0}")]
    Task(tokio::task::JoinError),
}

/// An error and its causes, `: ` between them, as `anyhow` shows them with `{:#}`.
struct Causes<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// Who this agent is in its cluster: kept in its data directory (files 0600).
#[derive(Clone)]
pub struct NodeIdentity {
    pub node_id: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIdentity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

const FILES: [&str; 4] = ["node-id", "node.crt", "node.key", "ca.crt"];

impl NodeIdentity {
    /// The identity stored in `data_dir`, if the agent joined before.
    pub fn load(data_dir: &Path) -> Result<Option<NodeIdentity>, LinkError> {
        let path = |f: &str| data_dir.join(f);
        let present: Vec<bool> = FILES.iter().map(|f| path(f).exists()).collect();
        if present.iter().all(|p| !p) {
            return Ok(None);
        }
        if !present.iter().all(|p| *p) {
            return Err(LinkError::IncompleteIdentity(data_dir.to_path_buf()));
        }
        let read = |f: &str| {
            std::fs::read_to_string(path(f)).map_err(|source| LinkError::Read {
                path: path(f),
                source,
            })
        };
        let id = NodeIdentity {
            node_id: read("node-id")?.trim().to_string(),
            cert_pem: read("node.crt")?,
            key_pem: read("node.key")?,
            ca_pem: read("ca.crt")?,
        };
        // Fail now, not at every reconnect.
        node_client_config(&id.ca_pem, &id.cert_pem, &id.key_pem).map_err(|source| {
            LinkError::UnusableIdentity {
                dir: data_dir.to_path_buf(),
                source,
            }
        })?;
        Ok(Some(id))
    }

    fn save(&self, data_dir: &Path) -> Result<(), LinkError> {
        std::fs::create_dir_all(data_dir).map_err(|source| LinkError::Create {
            path: data_dir.to_path_buf(),
            source,
        })?;
        // The certificate last: `load` only trusts a complete set.
        for (name, content) in [
            ("node.key", &self.key_pem),
            ("ca.crt", &self.ca_pem),
            ("node.crt", &self.cert_pem),
            ("node-id", &self.node_id),
        ] {
            write_private(&data_dir.join(name), content)?;
        }
        Ok(())
    }
}

fn write_private(path: &PathBuf, content: &str) -> Result<(), LinkError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|source| LinkError::Write {
            path: tmp.clone(),
            source,
        })?;
    f.write_all(content.as_bytes()).map_err(LinkError::Io)?;
    f.sync_all().map_err(LinkError::Io)?;
    std::fs::rename(&tmp, path).map_err(|source| LinkError::Write {
        path: path.clone(),
        source,
    })
}

pub(crate) async fn connect(
    addr: &str,
    config: Arc<wharf_link::rustls::ClientConfig>,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(addr.to_string()))?
        .map_err(|source| ConnectError::Tcp {
            addr: addr.to_string(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(config).connect(master_name(), tcp),
    )
    .await
    .map_err(|_| ConnectError::HandshakeTimeout(addr.to_string()))?
    .map_err(|source| ConnectError::Handshake {
        addr: addr.to_string(),
        source,
    })
}

/// Join the cluster whose master listens for agents at `addr`, with a join token; stores the new
/// identity in `data_dir`.
pub async fn join(
    addr: &str,
    token: &str,
    data_dir: &Path,
    hostname: &str,
) -> Result<NodeIdentity, LinkError> {
    let parsed = JoinToken::parse(token)?;
    let key = NodeKey::generate()?;
    let csr_pem = key.csr(hostname)?;
    let config = join_client_config(&parsed.ca_fingerprint)?;
    let mut tls = None;
    let mut failed = None;
    for a in master_addrs(addr) {
        match connect(&a, config.clone()).await {
            Ok(t) => {
                tls = Some(t);
                break;
            }
            Err(e) => failed = Some(e),
        }
    }
    let Some(mut tls) = tls else {
        return Err(LinkError::JoinConnect(failed.expect("at least one master")));
    };
    write_frame(
        &mut tls,
        &JoinRequest {
            token: token.trim().to_string(),
            csr_pem,
            hostname: hostname.to_string(),
        },
    )
    .await
    .map_err(LinkError::SendJoin)?;
    let resp: JoinResponse = tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut tls))
        .await
        .map_err(|_| LinkError::JoinUnanswered)?
        .map_err(LinkError::ReadAnswer)?
        .ok_or(LinkError::JoinClosed)?;
    match resp {
        JoinResponse::Accepted {
            node_id,
            cert_pem,
            ca_pem,
        } => {
            let id = NodeIdentity {
                node_id,
                cert_pem,
                key_pem: key.key_pem(),
                ca_pem,
            };
            id.save(data_dir)?;
            Ok(id)
        }
        JoinResponse::Refused { message, hint } => Err(LinkError::Refused { message, hint }),
    }
}

/// Reports go to the current connection, if any; while disconnected they are dropped (the next
/// pass after reconnecting sends a fresh full snapshot). A changed report rings the connection's
/// bell (capacity 1): its writer then sends the newest report, before any queued log line, so a
/// node streaming logs at full speed still reports (and looks alive), and never with a stale
/// report.
#[derive(Default)]
struct LinkControl {
    current: Mutex<Option<mpsc::Sender<()>>>,
    /// The last report, numbered: the number changes only when the report does, so the writer
    /// knows whether the master has it already (then a beat is a small `ToMaster::Heartbeat`).
    last: Arc<Mutex<Option<(u64, NodeReport)>>>,
}

/// How often the link beats. A report is a beat too, but a reconciliation pass can take longer
/// than that on a busy host (it lists the engine's containers); the link's own beat keeps a slow
/// engine from making the node look dead and its workloads move. Five beats fit in the default
/// node timeout (1 s, `wharf server --node-timeout`).
const HEARTBEAT: Duration = Duration::from_millis(200);
/// Silence from the master after which the link counts as cut (no TCP reset needed): the master
/// beats four times a second (`wharf-master/src/agents.rs`, `MASTER_HEARTBEAT`).
const MASTER_SILENCE: Duration = Duration::from_secs(3);

#[async_trait::async_trait]
impl ControlPlane for LinkControl {
    async fn report(&self, report: NodeReport) -> Result<(), String> {
        {
            let mut last = self.last.lock();
            match &*last {
                // Unchanged: the master has it (or gets it on connecting); the beat says the rest.
                Some((_, r)) if *r == report => return Ok(()),
                Some((n, _)) => *last = Some((n + 1, report)),
                None => *last = Some((0, report)),
            }
        }
        let tx = self.current.lock().clone();
        match tx {
            Some(tx) => {
                // Full: a report is due already, and it will be this one.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(()) {
                    tracing::debug!("report dropped: the stream to the master is closed");
                }
            }
            None => tracing::debug!("not connected to the master; report dropped"),
        }
        Ok(())
    }
}

/// Run the agent linked to the master at `addr`, for good: starts `agent.run` once, then keeps a
/// stream to the master open, reconnecting with exponential backoff (100 ms doubling to 2 s, with
/// jitter) whenever it drops. `max_instances` goes into the node's facts (0: the default).
pub async fn run_link(
    agent: Arc<Agent>,
    addr: String,
    identity: NodeIdentity,
    labels: BTreeMap<String, String>,
    name: String,
    max_instances: u32,
) -> Result<(), tokio::task::JoinError> {
    let (desired_tx, desired_rx) = watch::channel(NodeDesired::default());
    let control = Arc::new(LinkControl::default());
    // The agent loop runs on its own task (a slow pass never holds up the stream); the link
    // owns it and ends when it ends, so the process can say so instead of linking on for nothing.
    let mut agent_loop = tokio::spawn(agent.clone().run(desired_rx, control.clone()));
    tokio::select! {
        r = &mut agent_loop => r,
        never = links(&agent, &addr, &identity, &labels, &name, max_instances, &desired_tx, &control) => never,
    }
}

/// The masters' agent addresses of `--join` (comma-separated).
pub fn master_addrs(join: &str) -> Vec<String> {
    let list: Vec<String> = join
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if list.is_empty() {
        vec![join.to_string()]
    } else {
        list
    }
}

/// The stream to the master, again and again.
#[allow(clippy::too_many_arguments)]
async fn links(
    agent: &Arc<Agent>,
    addr: &str,
    identity: &NodeIdentity,
    labels: &BTreeMap<String, String>,
    name: &str,
    max_instances: u32,
    desired_tx: &watch::Sender<NodeDesired>,
    control: &Arc<LinkControl>,
) -> ! {
    let name = name.to_string();
    // Several masters (`--join a:7701,b:7701`): each attempt the next one, so a master that
    // went away is left for another at once.
    let masters = master_addrs(addr);
    let mut which = 0usize;
    // Attempts since the master last accepted a stream.
    let mut attempt = 0u32;
    loop {
        let addr = masters[which % masters.len()].clone();
        which = which.wrapping_add(1);
        let config = node_client_config(&identity.ca_pem, &identity.cert_pem, &identity.key_pem);
        let result = match config {
            Ok(config) => {
                session(
                    agent,
                    &addr,
                    config,
                    labels,
                    (&name, max_instances),
                    desired_tx,
                    control,
                    &mut attempt,
                )
                .await
            }
            Err(e) => Err(LinkError::NodeConfig(e)),
        };
        *control.current.lock() = None;
        if let Err(e) = result {
            tracing::warn!(node = %identity.node_id, "link to the master at {addr}: {}; reconnecting", Causes(&e));
        }
        tokio::time::sleep(RECONNECT.jittered(attempt, rand::random::<f64>())).await;
        attempt = attempt.saturating_add(1);
    }
}

#[allow(clippy::too_many_arguments)]
async fn session(
    agent: &Arc<Agent>,
    addr: &str,
    config: Arc<wharf_link::rustls::ClientConfig>,
    labels: &BTreeMap<String, String>,
    (name, max_instances): (&str, u32),
    desired_tx: &watch::Sender<NodeDesired>,
    control: &LinkControl,
    attempt: &mut u32,
) -> Result<(), LinkError> {
    let mut tls = connect(addr, config).await?;
    let mut facts = agent.facts(name).await;
    facts.max_instances = max_instances;
    let hello = ToMaster::Hello {
        facts,
        labels: labels.clone(),
        log_credits: true,
        heartbeats: true,
        seen_revision: agent.seen_revision(),
        exec: true,
        scan: true,
    };
    tokio::time::timeout(WRITE_TIMEOUT, write_frame(&mut tls, &hello))
        .await
        .map_err(LinkError::HelloTimeout)??;
    let (mut rd, wr) = tokio::io::split(tls);
    // Log frames: bounded, their senders wait (and the master's credits bound each request).
    let (tx, rx) = mpsc::channel::<ToMaster>(256);
    // The report bell (see `LinkControl`).
    let (bell, rung) = mpsc::channel::<()>(1);
    // Set once the master beats: it then takes `ToMaster::Heartbeat` too.
    let master_beats = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writer = spawn_writer(wr, rx, rung, control.last.clone(), master_beats.clone());
    *control.current.lock() = Some(bell.clone());
    let heartbeat = spawn_heartbeat(bell);
    let tunnel = agent
        .tunnel_facts()
        .map(|facts| spawn_tunnel_sender(facts, tx.clone(), master_beats.clone()));
    // Running logs requests, with the credit each may still use (`None`: no window).
    let mut logs: HashMap<u64, (tokio::task::AbortHandle, Option<Arc<Semaphore>>)> = HashMap::new();
    // Running execs and stats requests (ended with the stream, when this is dropped).
    let mut execs = crate::exec::Execs::new(agent.clone(), tx.clone());
    let mut first = true;
    let result = loop {
        let frame = tokio::select! {
            f = tokio::time::timeout(MASTER_SILENCE, read_frame::<_, ToAgent>(&mut rd)) => match f {
                Ok(f) => f,
                Err(_) => break Err(LinkError::MasterSilent),
            },
            why = &mut writer => break Err(LinkError::Writer(why.unwrap_or_else(WriterEnd::Task))),
        };
        let frame = match frame {
            Ok(Some(f)) => f,
            Ok(None) => break Err(LinkError::Closed),
            Err(e) => break Err(LinkError::ReadStream(e)),
        };
        agent.heard_from_master();
        if first {
            // The master accepted us: a later drop starts the backoff from the beginning.
            first = false;
            *attempt = 0;
            tracing::info!("connected to the master at {addr}");
            crate::metrics::link_connected();
        }
        match frame {
            ToAgent::Desired(d) => {
                desired_tx.send_replace(*d);
            }
            ToAgent::Heartbeat => master_beats.store(true, std::sync::atomic::Ordering::Relaxed),
            ToAgent::LogsStart {
                id,
                instance,
                follow,
                tail,
                since,
                until,
                timestamps,
                window,
            } => {
                logs.retain(|_, (h, _)| !h.is_finished());
                let credit = window.map(|w| Arc::new(Semaphore::new(w as usize)));
                let (agent, tx, c) = (agent.clone(), tx.clone(), credit.clone());
                let task = tokio::spawn(async move {
                    let q = LogQuery {
                        follow,
                        tail,
                        since,
                        until,
                        timestamps,
                        slot: None,
                    };
                    let lines = agent.logs(&instance, q).await;
                    send_logs(lines, id, &tx, c.as_deref()).await;
                });
                logs.insert(id, (task.abort_handle(), credit));
            }
            ToAgent::LogsCancel { id } => {
                if let Some((h, _)) = logs.remove(&id) {
                    h.abort();
                }
            }
            ToAgent::LogsCredit { id, lines } => {
                if let Some((_, Some(c))) = logs.get(&id) {
                    let room = Semaphore::MAX_PERMITS - c.available_permits();
                    c.add_permits((lines as usize).min(room));
                }
            }
            f => execs.take(f),
        }
    };
    for (h, _) in logs.values() {
        h.abort();
    }
    writer.abort();
    heartbeat.abort();
    if let Some(t) = tunnel {
        t.abort();
    }
    result
}

/// Tell the master this node's end of the tunnel on this stream, then every change: once the
/// master is known to beat (an older one would take the unknown frame for a broken stream).
fn spawn_tunnel_sender(
    mut facts: watch::Receiver<Option<wharf_types::TunnelFacts>>,
    tx: mpsc::Sender<ToMaster>,
    beats: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !beats.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loop {
            let now = facts.borrow_and_update().clone();
            if let Some(f) = now
                && tx.send(ToMaster::Tunnel(f)).await.is_err()
            {
                return;
            }
            if facts.changed().await.is_err() {
                return;
            }
        }
    })
}

/// The writer of the stream to the master, until a write fails (its reason) or both sources
/// close: on the bell `rung` the newest report in `last` (a `ToMaster::Heartbeat` instead when the
/// master has it already and `beats`), else the queued log frames of `rx`.
fn spawn_writer(
    mut wr: tokio::io::WriteHalf<TlsStream<TcpStream>>,
    mut rx: mpsc::Receiver<ToMaster>,
    mut rung: mpsc::Receiver<()>,
    last: Arc<Mutex<Option<(u64, NodeReport)>>>,
    beats: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<WriterEnd> {
    tokio::spawn(async move {
        // The number of the last report sent on this stream.
        let mut sent: Option<u64> = None;
        loop {
            let frame = tokio::select! {
                biased;
                Some(()) = rung.recv() => {
                    let last = last.lock();
                    match &*last {
                        Some((n, _)) if sent == Some(*n) && beats.load(std::sync::atomic::Ordering::Relaxed) => ToMaster::Heartbeat,
                        Some((n, r)) => {
                            sent = Some(*n);
                            ToMaster::Report(r.clone())
                        }
                        None => continue,
                    }
                },
                Some(f) = rx.recv() => f,
                else => return WriterEnd::Closed,
            };
            match tokio::time::timeout(WRITE_TIMEOUT, write_frame(&mut wr, &frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return WriterEnd::Failed(e),
                Err(_) => return WriterEnd::TimedOut,
            }
        }
    })
}

/// Ring the report bell every `HEARTBEAT`, until the writer is gone.
fn spawn_heartbeat(bell: mpsc::Sender<()>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(mpsc::error::TrySendError::Closed(_)) = bell.try_send(()) {
                return;
            }
        }
    })
}

/// Send the lines of logs request `id`, then how it ended. With `credit` (the master's window),
/// each line waits for a permit, which the master grants as its reader takes lines: a slow
/// reader stops the agent reading the engine's log, rather than anything piling up in between.
async fn send_logs(
    lines: Result<LogLines, String>,
    id: u64,
    tx: &mpsc::Sender<ToMaster>,
    credit: Option<&Semaphore>,
) {
    let end = match lines {
        Err(e) => Some(e),
        Ok(mut lines) => loop {
            match lines.next().await {
                Some(Ok((stream, line))) => {
                    if let Some(c) = credit {
                        match c.acquire().await {
                            Ok(permit) => permit.forget(),
                            Err(_) => return,
                        }
                    }
                    let f = ToMaster::LogLine { id, stream, line };
                    if tx.send(f).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => break Some(e.describe()),
                None => break None,
            }
        },
    };
    let _ = tx.send(ToMaster::LogEnd { id, error: end }).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::LogStream;

    fn lines(n: u32) -> LogLines {
        futures::stream::iter((0..n).map(|i| Ok((LogStream::Stdout, format!("l{i}"))))).boxed()
    }

    async fn next_line(rx: &mut mpsc::Receiver<ToMaster>) -> String {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(ToMaster::LogLine { id: 7, line, .. })) => line,
            other => panic!("expected a line of request 7, got {other:?}"),
        }
    }

    #[test]
    fn reconnects_back_off_from_100ms_to_2s_over_the_upper_half() {
        let ms: Vec<u128> = (0..7).map(|n| RECONNECT.delay(n).as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(RECONNECT.jittered(0, 0.0), Duration::from_millis(50));
        assert_eq!(RECONNECT.jittered(6, 0.5), Duration::from_millis(1500));
    }

    #[test]
    fn errors_say_what_they_said_with_their_causes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("node-id"), "n1").unwrap();
        let e = NodeIdentity::load(dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the identity in {} is incomplete (expected node-id, node.crt, node.key, ca.crt); \
                 remove those files and join again with --token",
                dir.path().display()
            )
        );
        let refused = |hint: Option<&str>| LinkError::Refused {
            message: "the token has expired".into(),
            hint: hint.map(Into::into),
        };
        assert_eq!(
            refused(None).to_string(),
            "the master refused to join: the token has expired"
        );
        assert_eq!(
            refused(Some("create a new one")).to_string(),
            "the master refused to join: the token has expired\nhint: create a new one"
        );
        let e = LinkError::JoinConnect(ConnectError::Tcp {
            addr: "10.0.0.1:7947".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
        assert_eq!(
            Causes(&e).to_string(),
            "cannot join (if the TLS handshake failed on the CA fingerprint, the token belongs to \
             another cluster): cannot connect to the master at 10.0.0.1:7947: connection refused"
        );
        let e = LinkError::Writer(WriterEnd::TimedOut);
        assert_eq!(
            Causes(&e).to_string(),
            "stream to the master: write timed out"
        );
        assert_eq!(
            LinkError::MasterSilent.to_string(),
            "no word from the master for 3s (it beats four times a second)"
        );
    }

    #[tokio::test]
    async fn log_lines_go_out_only_as_the_master_credits_them() {
        let (tx, mut rx) = mpsc::channel(16);
        let credit = Arc::new(Semaphore::new(2));
        let task = tokio::spawn({
            let credit = credit.clone();
            async move { send_logs(Ok(lines(5)), 7, &tx, Some(&credit)).await }
        });
        assert_eq!(next_line(&mut rx).await, "l0");
        assert_eq!(next_line(&mut rx).await, "l1");
        // The window is used up: the task waits for credit (one thread: it has run until it
        // blocked), though the channel has room.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(rx.try_recv().is_err(), "nothing beyond the window");
        assert!(!task.is_finished());
        credit.add_permits(3);
        for i in 2..5 {
            assert_eq!(next_line(&mut rx).await, format!("l{i}"));
        }
        assert_eq!(
            rx.recv().await,
            Some(ToMaster::LogEnd { id: 7, error: None })
        );
        task.await.unwrap();
    }

    #[tokio::test]
    async fn without_a_window_lines_go_out_as_the_stream_has_room() {
        let (tx, mut rx) = mpsc::channel(16);
        send_logs(Ok(lines(3)), 7, &tx, None).await;
        for i in 0..3 {
            assert_eq!(next_line(&mut rx).await, format!("l{i}"));
        }
        assert_eq!(
            rx.recv().await,
            Some(ToMaster::LogEnd { id: 7, error: None })
        );
        send_logs(Err("no such instance".into()), 8, &tx, None).await;
        assert_eq!(
            rx.recv().await,
            Some(ToMaster::LogEnd {
                id: 8,
                error: Some("no such instance".into())
            })
        );
    }
}
