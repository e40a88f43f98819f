//! The agent listener: one mutual-TLS stream per remote agent, plus the join handshake.
//!
//! - A client **with** a certificate signed by the cluster CA is node `CN`. It must still have a
//!   `/nodes/{id}` record (removing a node revokes it). It sends `Hello`, is registered with the
//!   hub, then gets `Desired` on every change of its desired state and sends `Report`s (also its
//!   heartbeat) and the output of log requests.
//! - A client **without** a certificate may only join: one `JoinRequest` (token + CSR), one
//!   `JoinResponse`. The token's use is counted in a compare-and-swap transaction with its audit
//!   record and the new node's record; the CSR is signed with the node id as CN.
//!
//! The cluster CA and the master's server certificate live in the store (`/cluster/ca`), created
//! once in one compare-and-swap transaction, so masters sharing a store share the CA.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use wharf_link::frame::{read_frame, write_frame};
use wharf_link::rustls::ServerConfig;
use wharf_link::tokio_rustls::TlsAcceptor;
use wharf_link::{Ca, JoinToken, MASTER_NAME};
use wharf_store::{Compare, Op, Txn};
use wharf_types::{
    JoinRequest, JoinResponse, JoinTokenResponse, LogQuery, LogStream, NodeFacts, NodeReport,
    NodeState, ToAgent, ToMaster, TunnelFacts,
};

use crate::hub::NodeLogLines;
use crate::model::{NodeRecord, decode, encode, keys};
use crate::mutate::Actor;
use crate::seal::{Sealed, Sealer};
use crate::{Error, Master, NodeLink, now_ms};

/// How long node certificates are valid.
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Joins of this process, one at a time (see `try_join`).
static JOIN_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Time a client gets for the TLS handshake and its first frame.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Agents beat five times a second; a stream silent this long is dead (its host vanished). Liveness
/// judges the node long before (`liveness.rs`); this only closes the stream.
const SILENCE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the master tells each agent it is there (`ToAgent::Heartbeat`).
pub const MASTER_HEARTBEAT: Duration = Duration::from_millis(250);
/// Lines of one logs request held for its reader at most. An agent with `log_credits` sends no
/// more than that ahead of what the reader took (it is granted more as the reader goes on), so a
/// slow reader slows the agent; an older agent that overruns it is told to stop.
const LOG_WINDOW: u32 = 256;

/// The CA and the master's server certificate (PEM), as the master uses them.
#[derive(Clone, Debug)]
pub struct CaRecord {
    pub cert_pem: String,
    pub key_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

/// `/cluster/ca` as stored: the private keys sealed (`seal`). A store from before sealing has
/// them in the clear (`key_pem`, `server_key_pem`): they are sealed at the next start.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct StoredCa {
    cert_pem: String,
    server_cert_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_key: Option<Sealed>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    key_pem: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    server_key_pem: String,
}

const CA_KEY_ITEM: &str = "cluster CA key";
const SERVER_KEY_ITEM: &str = "master server key";

impl StoredCa {
    fn seal(rec: &CaRecord, sealer: &Sealer) -> StoredCa {
        StoredCa {
            cert_pem: rec.cert_pem.clone(),
            server_cert_pem: rec.server_cert_pem.clone(),
            key: Some(sealer.seal(CA_KEY_ITEM, 1, rec.key_pem.as_bytes())),
            server_key: Some(sealer.seal(SERVER_KEY_ITEM, 1, rec.server_key_pem.as_bytes())),
            ..StoredCa::default()
        }
    }

    /// The record, and whether it was stored in the clear (to be sealed).
    fn open(self, sealer: &Sealer) -> Result<(CaRecord, bool), Error> {
        let text = |item: &str, s: &Option<Sealed>, clear: String| match s {
            Some(s) => String::from_utf8(sealer.open(item, 1, s)?)
                .map_err(|_| Error::Corrupt(format!("{item}: not text"))),
            None => Ok(clear),
        };
        let clear = self.key.is_none();
        Ok((
            CaRecord {
                key_pem: text(CA_KEY_ITEM, &self.key, self.key_pem)?,
                server_key_pem: text(SERVER_KEY_ITEM, &self.server_key, self.server_key_pem)?,
                cert_pem: self.cert_pem,
                server_cert_pem: self.server_cert_pem,
            },
            clear,
        ))
    }
}

/// `/join-tokens/{hash}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub created_at: u64,
    pub expires_at: u64,
    pub uses: u32,
    pub uses_left: u32,
}

fn pki_error(e: wharf_link::LinkError) -> Error {
    Error::Unavailable(format!("cluster CA: {e}"))
}

impl Master {
    /// The cluster CA and the master's server certificate, created on first use.
    pub async fn cluster_ca(&self) -> Result<(Ca, CaRecord), Error> {
        for _ in 0..3 {
            if let Some(kv) = self.store.get(keys::CA).await? {
                let stored: StoredCa = decode(keys::CA, &kv.value)?;
                let (rec, clear) = stored.open(self.sealer())?;
                if clear {
                    // Sealed from now on (if another master did it first, theirs stands).
                    let sealed = encode(&StoredCa::seal(&rec, self.sealer()));
                    let txn = Txn::new()
                        .when([Compare::unchanged_since(keys::CA, kv.mod_revision)])
                        .then([Op::put(keys::CA, sealed)]);
                    self.store.txn(txn).await?;
                }
                let ca = Ca::from_pem(&rec.cert_pem, &rec.key_pem).map_err(pki_error)?;
                return Ok((ca, rec));
            }
            let ca = Ca::generate().map_err(pki_error)?;
            let (server_cert_pem, server_key_pem) =
                ca.server_cert(MASTER_NAME).map_err(pki_error)?;
            let rec = CaRecord {
                cert_pem: ca.cert_pem().to_string(),
                key_pem: ca.key_pem().to_string(),
                server_cert_pem,
                server_key_pem,
            };
            let txn = Txn::new().when([Compare::missing(keys::CA)]).then([Op::put(
                keys::CA,
                encode(&StoredCa::seal(&rec, self.sealer())),
            )]);
            let r = self
                .mutate(
                    &Actor::named("system"),
                    "cluster.ca.create",
                    keys::CA,
                    now_ms(),
                    txn,
                )
                .await?;
            if r.succeeded {
                return Ok((ca, rec));
            }
            // Another master made it first: use theirs.
        }
        Err(Error::Unavailable("cannot create the cluster CA".into()))
    }

    /// The TLS configuration of the API when it listens beyond loopback: a certificate from the
    /// cluster CA for the master's name, `names` and `ips` (with the CA certificate in the chain,
    /// which clients pin), or the operator's `own` certificate chain and key (PEM).
    pub async fn api_tls(
        &self,
        names: &[String],
        ips: &[std::net::IpAddr],
        own: Option<(String, String)>,
    ) -> Result<Arc<ServerConfig>, Error> {
        let (chain, key) = match own {
            Some(pair) => pair,
            None => {
                let (ca, rec) = self.cluster_ca().await?;
                let mut all = vec![MASTER_NAME.to_string()];
                all.extend(names.iter().cloned());
                let (cert, key) = ca.server_cert_for(&all, ips).map_err(pki_error)?;
                (format!("{cert}{}", rec.cert_pem), key)
            }
        };
        wharf_link::tls::api_server_config(&chain, &key).map_err(pki_error)
    }

    /// The TLS configuration of the agent listener.
    pub async fn agent_tls(&self) -> Result<Arc<ServerConfig>, Error> {
        let (ca, rec) = self.cluster_ca().await?;
        wharf_link::tls::server_config(&ca, &rec.server_cert_pem, &rec.server_key_pem)
            .map_err(pki_error)
    }

    /// A new join token valid for `ttl` and `uses` joins. Only the hash of its secret is stored.
    pub async fn create_join_token(
        &self,
        actor: &Actor,
        ttl: Duration,
        uses: u32,
    ) -> Result<JoinTokenResponse, Error> {
        if uses == 0 {
            return Err(Error::Invalid {
                message: "a join token needs at least one use".into(),
                location: None,
                hint: Some("use --uses 1 or more".into()),
            });
        }
        if ttl.is_zero() {
            return Err(Error::Invalid {
                message: "a join token needs a lifetime".into(),
                location: None,
                hint: Some("use --ttl 1m or more".into()),
            });
        }
        let (ca, _) = self.cluster_ca().await?;
        let token = JoinToken::generate(&ca.fingerprint());
        let now = now_ms();
        self.remove_expired_join_tokens(now).await?;
        let rec = JoinTokenRecord {
            created_at: now,
            expires_at: now.saturating_add(ttl.as_millis() as u64),
            uses,
            uses_left: uses,
        };
        let key = keys::join_token(&token.secret_hash());
        let txn = Txn::new()
            .when([Compare::missing(key.clone())])
            .then([Op::put(key, encode(&rec))]);
        let target = format!("join-token {}", &token.secret_hash()[..12]);
        let r = self
            .mutate(actor, "node.token.create", &target, now, txn)
            .await?;
        if !r.succeeded {
            return Err(Error::Conflict {
                message: "join token collision".into(),
                hint: Some("try again".into()),
            });
        }
        Ok(JoinTokenResponse {
            token: token.to_string(),
            expires_at: rec.expires_at,
            uses,
        })
    }

    /// Forget the join tokens whose lifetime is over (they admit nobody anyway).
    async fn remove_expired_join_tokens(&self, now: u64) -> Result<(), Error> {
        let (kvs, _) = self.store.range(keys::JOIN_TOKENS).await?;
        let mut ops = Vec::new();
        for kv in &kvs {
            let rec: JoinTokenRecord = decode(&kv.key, &kv.value)?;
            if rec.expires_at <= now {
                ops.push(Op::delete(kv.key.clone()));
            }
        }
        if !ops.is_empty() {
            self.store.txn(Txn::new().then(ops)).await?;
        }
        Ok(())
    }

    /// Admit a new node: check and count the token, record the node, sign its CSR.
    pub async fn join_node(&self, req: &JoinRequest, peer: Option<SocketAddr>) -> JoinResponse {
        match self.try_join(req, peer).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "join failed");
                refused(
                    format!("the master could not complete the join: {e}"),
                    "try again; if it persists, check the master's log",
                )
            }
        }
    }

    async fn try_join(
        &self,
        req: &JoinRequest,
        peer: Option<SocketAddr>,
    ) -> Result<JoinResponse, Error> {
        const NEW_TOKEN: &str = "create a new token on the master with `wharf node token create`";
        let token = match JoinToken::parse(&req.token) {
            Ok(t) => t,
            Err(e) => return Ok(refused(e.to_string(), NEW_TOKEN)),
        };
        let (ca, _) = self.cluster_ca().await?;
        if token.ca_fingerprint != ca.fingerprint() {
            return Ok(refused(
                "the join token belongs to another cluster (its CA fingerprint differs)".into(),
                NEW_TOKEN,
            ));
        }
        let key = keys::join_token(&token.secret_hash());
        // Joins with one multi-use token race for its use count: taken one at a time here, the
        // compare-and-swap below stays the guard (another master may share the store) but no
        // longer fails hundreds of agents joining at once (found by bench/scale).
        let _one_at_a_time = JOIN_LOCK.lock().await;
        for _ in 0..5 {
            let now = now_ms();
            let Some(kv) = self.store.get(&key).await? else {
                return Ok(refused(
                    "the join token is not known to this cluster (it was never issued, or was revoked)"
                        .into(),
                    NEW_TOKEN,
                ));
            };
            let mut rec: JoinTokenRecord = decode(&key, &kv.value)?;
            if now >= rec.expires_at {
                let ago = (now - rec.expires_at) / 1000;
                return Ok(refused(
                    format!("the join token expired {ago}s ago"),
                    NEW_TOKEN,
                ));
            }
            if rec.uses_left == 0 {
                return Ok(refused(
                    format!(
                        "the join token was already used (it allowed {} join{})",
                        rec.uses,
                        if rec.uses == 1 { "" } else { "s" }
                    ),
                    "a node that joined once reconnects with the identity in its data directory; \
                     for a new node, create a new token with `wharf node token create` (--uses N for several)",
                ));
            }
            let node_id = format!("node-{:08x}", rand::random::<u32>());
            let cert_pem = match ca.sign_node_csr(&req.csr_pem, &node_id, NODE_CERT_VALIDITY) {
                Ok(c) => c,
                Err(e) => {
                    return Ok(refused(
                        e.to_string(),
                        "the agent sends a CSR for its own key; upgrade the agent to match the master",
                    ));
                }
            };
            rec.uses_left -= 1;
            let node_key = keys::node(&node_id);
            let node = NodeRecord {
                id: node_id.clone(),
                facts: NodeFacts {
                    name: req.hostname.clone(),
                    ..Default::default()
                },
                labels: BTreeMap::new(),
                state: NodeState::Ready,
                since: now,
                drain: false,
                address: peer.map(|p| p.ip().to_string()),
                tunnel: None,
                key_epoch: 0,
            };
            let txn = Txn::new()
                .when([
                    Compare::unchanged_since(key.clone(), kv.mod_revision),
                    Compare::missing(node_key.clone()),
                ])
                .then([
                    Op::put(key.clone(), encode(&rec)),
                    Op::put(node_key, encode(&node)),
                ]);
            let actor = Actor::named(format!("join-token {}", &token.secret_hash()[..12]));
            if self
                .mutate(&actor, "node.join", &node_id, now, txn)
                .await?
                .succeeded
            {
                tracing::info!(node = %node_id, hostname = %req.hostname, "node joined");
                return Ok(JoinResponse::Accepted {
                    node_id,
                    cert_pem,
                    ca_pem: ca.cert_pem().to_string(),
                });
            }
            // Another join used the token at the same time (or the id collided): look again.
        }
        Err(Error::Conflict {
            message: "the join token is being used by several nodes at once".into(),
            hint: Some("try again".into()),
        })
    }
}

fn refused(message: String, hint: &str) -> JoinResponse {
    JoinResponse::Refused {
        message,
        hint: Some(hint.to_string()),
    }
}

/// Accept agent connections until the listener fails.
pub async fn serve_agents(m: Master, listener: TcpListener, tls: Arc<ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = crate::accept(&listener, "agent listener").await;
        let _ = tcp.set_nodelay(true);
        let (m, acceptor) = (m.clone(), acceptor.clone());
        tokio::spawn(async move {
            if let Err(why) = connection(m, acceptor, tcp, peer).await {
                tracing::warn!(%peer, "agent connection closed: {why}");
            }
        });
    }
}

async fn connection(
    m: Master,
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) -> Result<(), String> {
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let node = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| wharf_link::pki::common_name(c));
    let Some(node) = node else {
        // No certificate: this client may only join.
        return join_over(&m, tls, peer).await;
    };
    let node = node.ok_or("the client certificate has no common name")?;
    still_member(&m, &mut tls, &node).await?;
    let first = first_frame(&mut tls, &node).await?;
    if let ToMaster::Fetch(req) = first {
        let from = req.peer_port.map(|p| SocketAddr::new(peer.ip(), p));
        return fetch_over(&m, tls, &req, (&node, from)).await;
    }
    let hello = admit(&m, first, &node).await?;

    // Frames the master itself makes for this agent (not fed by the agent): one start and one
    // cancel per logs request, one credit per half window a reader took; the same for execs,
    // whose input is bounded by the agent's credit. Unbounded, because a cancel is sent from
    // `Drop`; desired states go through the watch, newest only.
    let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel::<ToAgent>();
    let (link, pending, requests) =
        remote_link(ctrl_tx.clone(), hello.log_credits, hello.exec, hello.scan);
    let desired = m
        .hub
        .register_with(
            &node,
            hello.facts,
            hello.labels,
            Some(peer.ip().to_string()),
            link.clone(),
            hello.seen_revision,
        )
        .await
        .map_err(|e| format!("node {node}: cannot register: {e}"))?;
    tracing::info!(%node, %peer, "agent connected");

    let (mut rd, wr) = tokio::io::split(tls);
    let writer = spawn_writer(wr, desired, ctrl_rx, hello.heartbeats);

    // Reports are taken on their own task (`spawn_taker`).
    let (report_tx, report_rx) = watch::channel::<Option<NodeReport>>(None);
    let mut taker = spawn_taker(m.clone(), node.clone(), report_rx);
    // The tunnel facts too (rare: a new key, the tunnel up or failing), newest last.
    let (tunnel_tx, tunnel_taker) = spawn_tunnel_taker(m.clone(), node.clone());
    // Touched with every frame, without the hub's lock (`hub::Seen`).
    let seen = m.hub.seen(&node, &link);
    let mut store_lost = false;
    let why = loop {
        let read = tokio::time::timeout(SILENCE_TIMEOUT, read_frame::<_, ToMaster>(&mut rd));
        let frame = tokio::select! {
            r = read => match r {
                Err(_) => break format!("node {node}: silent for {SILENCE_TIMEOUT:?}"),
                Ok(Err(e)) => break format!("node {node}: {e}"),
                Ok(Ok(None)) => break format!("node {node}: the agent closed the stream"),
                Ok(Ok(Some(f))) => f,
            },
            why = &mut taker => break why.unwrap_or_else(|e| format!("node {node}: report task: {e}")),
            _ = m.role.store_lost() => {
                store_lost = true;
                break format!("node {node}: this master lost the store; the agent moves to another");
            }
        };
        match &seen {
            Some(s) => s.touch(),
            None => break format!("node {node}: replaced by a newer connection"),
        }
        match frame {
            ToMaster::Report(r) => {
                report_tx.send_replace(Some(r));
            }
            ToMaster::Heartbeat => {}
            f @ (ToMaster::LogLine { .. } | ToMaster::LogEnd { .. }) => {
                take_log_frame(&pending, &ctrl_tx, f)
            }
            f @ (ToMaster::ExecOutput { .. }
            | ToMaster::ExecInputCredit { .. }
            | ToMaster::ExecEnd { .. }
            | ToMaster::Stats { .. }
            | ToMaster::Inventory { .. }) => requests.take(f),
            ToMaster::Hello { .. } => tracing::debug!(%node, "ignoring a repeated hello"),
            ToMaster::Tunnel(t) => drop(tunnel_tx.send_replace(Some(t))),
            ToMaster::Fetch(_) => break format!("node {node}: a fetch on the agent stream"),
        }
    };
    taker.abort();
    tunnel_taker.abort();
    writer.abort();
    if store_lost {
        // Let go on purpose: not silent, but reconnecting (to another master, or to this one
        // once it has the store again, with the grace of a new term).
        m.hub.forget_link(&node, &link);
    } else {
        m.hub.disconnect_link(&node, &link);
    }
    // Log, exec and stats requests in flight end with the stream.
    pending.lock().clear();
    requests.clear();
    tracing::info!(%node, "agent disconnected");
    Err(why)
}

/// Refuse (and close) the certificate of a node the cluster no longer has a record of.
async fn still_member<S>(m: &Master, tls: &mut S, node: &str) -> Result<(), String>
where
    S: tokio::io::AsyncWrite + Unpin,
{
    let known = m
        .store
        .get(&keys::node(node))
        .await
        .map_err(|e| e.to_string())?;
    if known.is_none() {
        use tokio::io::AsyncWriteExt;
        let _ = tls.shutdown().await;
        return Err(format!(
            "node {node} is not a member of the cluster (it was removed): refusing its certificate"
        ));
    }
    Ok(())
}

/// A member's first frame: its hello (the agent stream), or a fetch of its mirror.
async fn first_frame<S>(tls: &mut S, node: &str) -> Result<ToMaster, String>
where
    S: tokio::io::AsyncRead + Unpin,
{
    tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(tls))
        .await
        .map_err(|_| format!("node {node}: no first frame in time"))?
        .map_err(|e| format!("node {node}: {e}"))?
        .ok_or_else(|| format!("node {node}: closed before its first frame"))
}

/// A node's mirror fetching registry content (`registry::fetch`): the answer, the bytes, close.
async fn fetch_over<S>(
    m: &Master,
    mut tls: S,
    req: &wharf_types::FetchRequest,
    (node, peer): (&str, Option<SocketAddr>),
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    match m.registry_fetch(req, peer.map(|p| (node, p))).await {
        crate::registry::fetch::Fetched::Not(answer) => {
            write_frame(&mut tls, &answer)
                .await
                .map_err(|e| e.to_string())?;
        }
        crate::registry::fetch::Fetched::Content {
            media_type,
            digest,
            size,
            file,
        } => {
            let answer = wharf_types::FetchAnswer::Content {
                media_type,
                digest,
                size,
            };
            write_frame(&mut tls, &answer)
                .await
                .map_err(|e| e.to_string())?;
            let sent = tokio::io::copy(&mut file.take(size), &mut tls)
                .await
                .map_err(|e| format!("fetch of {}: {e}", req.repo))?;
            if sent != size {
                return Err(format!(
                    "fetch of {}: the file ended at {sent} of {size} bytes",
                    req.repo
                ));
            }
            if let (Some(reg), wharf_types::FetchWhat::Blob { digest }) = (&m.registry, &req.what) {
                reg.holders.done(digest, node);
            }
        }
    }
    tls.flush().await.map_err(|e| e.to_string())?;
    let _ = tls.shutdown().await;
    Ok(())
}

/// A client without a certificate: read its join request, answer it, close.
async fn join_over<S>(m: &Master, mut tls: S, peer: SocketAddr) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req: JoinRequest = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_frame(&mut tls))
        .await
        .map_err(|_| "no join request in time".to_string())?
        .map_err(|e| format!("bad join request: {e}"))?
        .ok_or("closed before its join request")?;
    let resp = m.join_node(&req, Some(peer)).await;
    if let JoinResponse::Refused { message, .. } = &resp {
        tracing::warn!(%peer, hostname = %req.hostname, "join refused: {message}");
    }
    write_frame(&mut tls, &resp)
        .await
        .map_err(|e| e.to_string())?;
    use tokio::io::AsyncWriteExt;
    let _ = tls.shutdown().await;
    Ok(())
}

/// A member's hello, if this master can take its stream: it has the store (else the agent's
/// reports would go nowhere: it tries the next master), and its view of the store has caught
/// up with what the node saw (several masters: it may trail the one the node came from).
async fn admit(m: &Master, first: ToMaster, node: &str) -> Result<Hello, String> {
    let hello = hello(first, node)?;
    if !m.role.has_store() {
        return Err(format!(
            "node {node}: this master has lost the store; refusing the stream"
        ));
    }
    let seen_revision = hello.seen_revision;
    tokio::time::timeout(HANDSHAKE_TIMEOUT, m.cache.caught_up(seen_revision))
        .await
        .map_err(|_| {
            format!("node {node}: this master's store is behind revision {seen_revision}, which the node saw")
        })?
        .map_err(|e| format!("node {node}: {e}"))?;
    Ok(hello)
}

/// What an agent's hello says (`ToMaster::Hello`: what each field means).
struct Hello {
    facts: wharf_types::NodeFacts,
    labels: BTreeMap<String, String>,
    log_credits: bool,
    heartbeats: bool,
    seen_revision: u64,
    exec: bool,
    scan: bool,
}

/// A member's first frame on its stream, its hello.
fn hello(first: ToMaster, node: &str) -> Result<Hello, String> {
    match first {
        ToMaster::Hello {
            facts,
            labels,
            log_credits,
            heartbeats,
            seen_revision,
            exec,
            scan,
        } => Ok(Hello {
            facts,
            labels,
            log_credits,
            heartbeats,
            seen_revision,
            exec,
            scan,
        }),
        _ => Err(format!("node {node}: the first frame was not a hello")),
    }
}

/// The connection's writer: the newest desired state, the master's own frames (log requests
/// and credits), and a beat when the agent asked for them.
fn spawn_writer<W>(
    mut wr: W,
    mut desired: watch::Receiver<wharf_types::NodeDesired>,
    mut ctrl_rx: mpsc::UnboundedReceiver<ToAgent>,
    heartbeats: bool,
) -> tokio::task::JoinHandle<()>
where
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(MASTER_HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let frame = tokio::select! {
                _ = beat.tick(), if heartbeats => ToAgent::Heartbeat,
                r = desired.changed() => match r {
                    Ok(()) => ToAgent::Desired(Box::new(desired.borrow_and_update().clone())),
                    Err(_) => return, // replaced by a newer connection, or disconnected
                },
                f = ctrl_rx.recv() => match f {
                    Some(f) => f,
                    None => return,
                },
            };
            if let Err(e) = write_frame(&mut wr, &frame).await {
                tracing::debug!(error = %e, "agent stream: write failed");
                return;
            }
        }
    })
}

/// Reports are taken (written to the store) on their own task, newest first: a slow store
/// write must never keep the reader from the next frame, which is what tells liveness that
/// the node is alive (a node is judged by when its frames arrive, not by when they are stored).
/// Ends, with why, when the node is no longer registered.
fn spawn_taker(
    m: Master,
    node: String,
    mut report_rx: watch::Receiver<Option<NodeReport>>,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        while report_rx.changed().await.is_ok() {
            let Some(r) = report_rx.borrow_and_update().clone() else {
                continue;
            };
            if let Err(e) = m.hub.report(&node, r).await {
                tracing::warn!(%node, error = %e, "cannot take the agent's report");
                if matches!(e, Error::Unavailable(_)) {
                    return format!("node {node}: no longer registered");
                }
            }
        }
        String::new()
    })
}

/// Records the node's tunnel facts sent on the returned channel, each after the one before.
fn spawn_tunnel_taker(
    m: Master,
    node: String,
) -> (
    watch::Sender<Option<TunnelFacts>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = watch::channel::<Option<TunnelFacts>>(None);
    let task = tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let Some(t) = rx.borrow_and_update().clone() else {
                continue;
            };
            if let Err(e) = m.hub.set_tunnel(&node, t).await {
                tracing::warn!(%node, error = %e, "cannot record the node's tunnel key");
            }
        }
    });
    (tx, task)
}

enum LogItem {
    Line(LogStream, String),
    Failed(String),
}

/// A logs request in flight: where its lines go (a bounded channel: `LOG_WINDOW` lines, and one
/// place kept for how it ends, so the end is never lost to a full channel).
struct PendingLogs {
    lines: mpsc::Sender<LogItem>,
    end: mpsc::OwnedPermit<LogItem>,
}

type Pending = Arc<Mutex<HashMap<u64, PendingLogs>>>;

/// Hand a `LogLine` or `LogEnd` from the agent to its request's reader. Never waits: the stream
/// also carries the agent's reports (its heartbeat), which one slow reader must not hold up.
fn take_log_frame(pending: &Pending, ctrl: &mpsc::UnboundedSender<ToAgent>, frame: ToMaster) {
    let mut pending = pending.lock();
    match frame {
        ToMaster::LogLine { id, stream, line } => {
            let Some(p) = pending.get(&id) else {
                return; // cancelled; the agent has not heard yet
            };
            match p.lines.try_send(LogItem::Line(stream, line)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // An agent without credits, and a reader `LOG_WINDOW` lines behind: stop the
                    // agent rather than hold more, and say so to the reader after what it has.
                    if let Some(p) = pending.remove(&id) {
                        p.end.send(LogItem::Failed(format!(
                            "the output was cut: the reader fell {LOG_WINDOW} lines behind the node"
                        )));
                    }
                    let _ = ctrl.send(ToAgent::LogsCancel { id });
                }
                // The reader went away; its `Drop` cancels the request.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        ToMaster::LogEnd { id, error } => {
            if let (Some(p), Some(e)) = (pending.remove(&id), error) {
                p.end.send(LogItem::Failed(e));
            }
        }
        _ => {}
    }
}

/// The master's handle on a remote node: log requests travel on its stream.
struct RemoteLink {
    ctrl: mpsc::UnboundedSender<ToAgent>,
    pending: Pending,
    next_id: AtomicU64,
    /// The agent sends lines only as credited (`ToMaster::Hello::log_credits`).
    credits: bool,
    /// Exec and stats requests, when the agent takes them (`ToMaster::Hello::exec`).
    requests: Option<crate::execs::Requests>,
    /// The agent reads images' packages (`ToMaster::Hello::scan`).
    scan: bool,
}

/// The handle on a remote node whose stream takes the master's frames from `ctrl`; its logs
/// requests and its exec and stats requests (those answer nothing when the agent is too old).
fn remote_link(
    ctrl: mpsc::UnboundedSender<ToAgent>,
    log_credits: bool,
    exec: bool,
    scan: bool,
) -> (Arc<dyn NodeLink>, Pending, crate::execs::Requests) {
    let pending: Pending = Arc::default();
    let requests = crate::execs::Requests::new(ctrl.clone());
    let link = Arc::new(RemoteLink {
        ctrl,
        pending: pending.clone(),
        next_id: AtomicU64::new(1),
        credits: log_credits,
        requests: exec.then(|| requests.clone()),
        scan,
    });
    (link, pending, requests)
}

#[async_trait::async_trait]
impl NodeLink for RemoteLink {
    async fn exec(
        &self,
        instance: &str,
        spec: wharf_types::ExecSpec,
    ) -> Result<crate::hub::NodeExec, String> {
        match &self.requests {
            Some(r) => r.exec(instance, spec),
            None => Err(crate::hub::OLD_AGENT.into()),
        }
    }

    async fn stats(&self) -> Result<Vec<wharf_types::InstanceStats>, String> {
        match &self.requests {
            Some(r) => r.stats().await,
            None => Err(crate::hub::OLD_AGENT.into()),
        }
    }

    async fn inventory(&self, image: &str) -> Result<(wharf_types::Inventory, String), String> {
        match &self.requests {
            Some(r) if self.scan => r.inventory(image).await,
            _ => Err(crate::hub::OLD_AGENT.into()),
        }
    }

    async fn logs(&self, instance: &str, q: LogQuery) -> Result<NodeLogLines, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(LOG_WINDOW as usize + 1);
        let end = tx
            .clone()
            .try_reserve_owned()
            .expect("a new channel has room");
        self.pending
            .lock()
            .insert(id, PendingLogs { lines: tx, end });
        let start = ToAgent::LogsStart {
            id,
            instance: instance.to_string(),
            follow: q.follow,
            tail: q.tail,
            since: q.since,
            until: q.until,
            timestamps: q.timestamps,
            window: self.credits.then_some(LOG_WINDOW),
        };
        if self.ctrl.send(start).is_err() {
            self.pending.lock().remove(&id);
            return Err("the node is not connected".into());
        }
        Ok(Box::pin(RemoteLogs {
            id,
            rx,
            ctrl: self.ctrl.clone(),
            pending: self.pending.clone(),
            seen_line: false,
            uncredited: self.credits.then_some(0),
        }))
    }
}

/// The lines of one remote log request; dropping it cancels the request on the agent.
struct RemoteLogs {
    id: u64,
    rx: mpsc::Receiver<LogItem>,
    ctrl: mpsc::UnboundedSender<ToAgent>,
    pending: Pending,
    seen_line: bool,
    /// With credits: lines taken and not yet credited back to the agent (granted by half windows).
    uncredited: Option<u32>,
}

impl Stream for RemoteLogs {
    type Item = Result<(LogStream, String), String>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(LogItem::Line(s, l))) => {
                self.seen_line = true;
                if let Some(n) = self.uncredited.as_mut() {
                    *n += 1;
                    if *n >= LOG_WINDOW / 2 {
                        let lines = std::mem::take(n);
                        let _ = self.ctrl.send(ToAgent::LogsCredit { id: self.id, lines });
                    }
                }
                Poll::Ready(Some(Ok((s, l))))
            }
            // Like a local node, an instance without output here (no container on this node)
            // adds nothing rather than failing the whole response.
            Poll::Ready(Some(LogItem::Failed(e))) if !self.seen_line => {
                tracing::debug!(error = %e, "no logs from the node");
                Poll::Ready(None)
            }
            Poll::Ready(Some(LogItem::Failed(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for RemoteLogs {
    fn drop(&mut self) {
        let still_open = self.pending.lock().remove(&self.id).is_some();
        if still_open {
            let _ = self.ctrl.send(ToAgent::LogsCancel { id: self.id });
        }
    }
}

#[cfg(test)]
mod tests {
    use wharf_link::NodeKey;
    use wharf_store::SqliteStore;

    use super::*;

    fn master() -> Master {
        Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()))
    }

    fn request(token: &str) -> JoinRequest {
        JoinRequest {
            token: token.to_string(),
            csr_pem: NodeKey::generate().unwrap().csr("host-a").unwrap(),
            hostname: "host-a".into(),
        }
    }

    fn refusal(r: JoinResponse) -> String {
        match r {
            JoinResponse::Refused { message, hint } => {
                assert!(hint.is_some());
                message
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn remote(credits: bool) -> (RemoteLink, mpsc::UnboundedReceiver<ToAgent>) {
        let (ctrl, rx) = mpsc::unbounded_channel();
        let link = RemoteLink {
            ctrl,
            pending: Arc::default(),
            next_id: AtomicU64::new(1),
            credits,
            requests: None,
            scan: false,
        };
        (link, rx)
    }

    fn line(id: u64, i: u32) -> ToMaster {
        ToMaster::LogLine {
            id,
            stream: LogStream::Stdout,
            line: format!("line {i}"),
        }
    }

    async fn start(
        link: &RemoteLink,
        ctrl: &mut mpsc::UnboundedReceiver<ToAgent>,
    ) -> (NodeLogLines, u64, Option<u32>) {
        let logs = link
            .logs("s.web.1", LogQuery::default().following())
            .await
            .unwrap();
        let Ok(ToAgent::LogsStart { id, window, .. }) = ctrl.try_recv() else {
            panic!("no start frame");
        };
        (logs, id, window)
    }

    #[tokio::test]
    async fn a_slow_log_reader_holds_one_window_and_credits_the_agent_as_it_reads() {
        use futures::StreamExt;
        let (link, mut ctrl) = remote(true);
        let (mut logs, id, window) = start(&link, &mut ctrl).await;
        assert_eq!(window, Some(LOG_WINDOW));
        // The agent sends its whole window; the reader has taken nothing yet: all of it is held,
        // nothing more is granted.
        for i in 0..LOG_WINDOW {
            take_log_frame(&link.pending, &link.ctrl, line(id, i));
        }
        assert!(ctrl.try_recv().is_err(), "no credit, no cancel");
        // Half a window read: that much is granted back, once.
        for i in 0..LOG_WINDOW / 2 {
            assert_eq!(logs.next().await.unwrap().unwrap().1, format!("line {i}"));
        }
        assert_eq!(
            ctrl.try_recv().unwrap(),
            ToAgent::LogsCredit {
                id,
                lines: LOG_WINDOW / 2
            }
        );
        assert!(ctrl.try_recv().is_err());
        // The agent uses it; the request then fails on the node: the end still gets through,
        // after every line.
        for i in LOG_WINDOW..LOG_WINDOW + LOG_WINDOW / 2 {
            take_log_frame(&link.pending, &link.ctrl, line(id, i));
        }
        let end = ToMaster::LogEnd {
            id,
            error: Some("the container was removed".into()),
        };
        take_log_frame(&link.pending, &link.ctrl, end);
        let rest: Vec<_> = logs.collect().await;
        assert_eq!(rest.len() as u32, LOG_WINDOW + 1);
        assert_eq!(
            rest[rest.len() - 2].as_ref().unwrap().1,
            format!("line {}", LOG_WINDOW + LOG_WINDOW / 2 - 1)
        );
        assert_eq!(
            rest.last().unwrap().as_ref().unwrap_err(),
            "the container was removed"
        );
        assert!(link.pending.lock().is_empty());
    }

    #[tokio::test]
    async fn an_agent_without_credits_overrunning_a_slow_reader_is_stopped_and_the_reader_told() {
        use futures::StreamExt;
        let (link, mut ctrl) = remote(false);
        let (logs, id, window) = start(&link, &mut ctrl).await;
        assert_eq!(window, None, "an older agent is sent no window");
        for i in 0..LOG_WINDOW {
            take_log_frame(&link.pending, &link.ctrl, line(id, i));
        }
        assert!(ctrl.try_recv().is_err());
        // One line too many: the agent is told to stop, what else it sends is dropped.
        take_log_frame(&link.pending, &link.ctrl, line(id, LOG_WINDOW));
        assert_eq!(ctrl.try_recv().unwrap(), ToAgent::LogsCancel { id });
        take_log_frame(&link.pending, &link.ctrl, line(id, LOG_WINDOW + 1));
        let end = ToMaster::LogEnd { id, error: None };
        take_log_frame(&link.pending, &link.ctrl, end);
        assert!(link.pending.lock().is_empty());
        // The reader gets the window, then the reason it ends there.
        let all: Vec<_> = logs.collect().await;
        assert_eq!(all.len() as u32, LOG_WINDOW + 1);
        assert!(all[..LOG_WINDOW as usize].iter().all(|l| l.is_ok()));
        let why = all.last().unwrap().as_ref().unwrap_err();
        assert!(why.contains("output was cut"), "{why}");
        assert!(ctrl.try_recv().is_err(), "no second cancel on drop");
    }

    #[tokio::test]
    async fn the_ca_is_made_once() {
        let m = master();
        let (a, _) = m.cluster_ca().await.unwrap();
        let (b, _) = m.cluster_ca().await.unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        m.agent_tls().await.unwrap();
    }

    #[tokio::test]
    async fn a_single_use_token_admits_one_node() {
        let m = master();
        let actor = Actor::named("admin");
        let t = m
            .create_join_token(&actor, Duration::from_secs(60), 1)
            .await
            .unwrap();
        let JoinResponse::Accepted {
            node_id, cert_pem, ..
        } = m.join_node(&request(&t.token), None).await
        else {
            panic!("first join refused")
        };
        assert!(
            node_id.starts_with("node-") && node_id.len() == 13,
            "{node_id}"
        );
        let der = wharf_link::pki::cert_der(&cert_pem).unwrap();
        assert_eq!(wharf_link::pki::common_name(&der), Some(node_id.clone()));
        let rec: NodeRecord = decode(
            "",
            &m.store
                .get(&keys::node(&node_id))
                .await
                .unwrap()
                .unwrap()
                .value,
        )
        .unwrap();
        assert_eq!(rec.facts.name, "host-a");
        let again = refusal(m.join_node(&request(&t.token), None).await);
        assert!(again.contains("already used"), "{again}");
    }

    #[tokio::test]
    async fn expired_unknown_and_foreign_tokens_are_refused() {
        let m = master();
        let actor = Actor::named("admin");
        let t = m
            .create_join_token(&actor, Duration::from_millis(1), 1)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(refusal(m.join_node(&request(&t.token), None).await).contains("expired"));

        let (ca, _) = m.cluster_ca().await.unwrap();
        let unknown = JoinToken::generate(&ca.fingerprint()).to_string();
        assert!(refusal(m.join_node(&request(&unknown), None).await).contains("not known"));
        let foreign = JoinToken::generate(&"00".repeat(32)).to_string();
        assert!(refusal(m.join_node(&request(&foreign), None).await).contains("another cluster"));
        assert!(refusal(m.join_node(&request("nope"), None).await).contains("invalid join token"));
    }

    #[tokio::test]
    async fn a_zero_lifetime_is_refused_and_expired_tokens_are_removed() {
        let m = master();
        let actor = Actor::named("admin");
        let e = m
            .create_join_token(&actor, Duration::ZERO, 1)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("needs a lifetime"), "{e}");
        m.create_join_token(&actor, Duration::from_millis(1), 1)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        m.create_join_token(&actor, Duration::from_secs(60), 1)
            .await
            .unwrap();
        let (left, _) = m.store.range(keys::JOIN_TOKENS).await.unwrap();
        assert_eq!(left.len(), 1, "the expired one is gone: {left:?}");
    }
}
