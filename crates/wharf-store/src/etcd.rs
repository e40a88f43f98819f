//! The etcd backend: several masters share one etcd cluster (`wharf server --store etcd://…`).
//!
//! The [`Store`] trait is etcd's shape, so most calls map one to one. What this module adds:
//! - prefix reads are paginated (pages of keys at one revision), so a long prefix never meets
//!   gRPC's message limit; a page that is still too large is read again in smaller pages;
//! - `watch(_, from)` with a compacted `from` fails at the call, as the trait says (etcd only
//!   cancels the watch after it was created);
//! - every request carries etcd's "require leader" flag and a deadline, so a member without a
//!   quorum answers at once and a dead one does not hang a caller: both are
//!   [`StoreError::NoQuorum`], which the API turns into a 503 with a hint.
//!
//! etcd's limits apply to one transaction: its `--max-txn-ops` (128 by default) and
//! `--max-request-bytes` (1.5 MiB). A transaction over them fails with an error naming the flag;
//! `scripts/etcd-cluster` starts etcd with room for a large deploy.

use std::time::Duration;

use etcd_client::{
    Client, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    TxnOpResponse, WatchOptions,
};
use futures::StreamExt;

use crate::{
    CmpOp, Compare, EventKind, KeyValue, LeaseId, Op, OpResponse, Revision, Store, StoreError, Txn,
    TxnResponse, WatchBatch, WatchEvent, WatchStream,
};

/// Keys read per round trip of a prefix read.
const PAGE: i64 = 1_000;
/// The largest answer the client takes (etcd's own limit on what it sends is far higher).
const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Where the etcd cluster is and how to reach it.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// `host:port` (or `http(s)://host:port`) of each member.
    pub endpoints: Vec<String>,
    /// TLS to etcd: the CA that signed the members' certificates, and the client certificate
    /// and key when etcd asks for one (`--client-cert-auth`).
    pub tls: Option<EtcdTls>,
    /// How long one request may take before it counts as failed (the member may be cut off).
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    /// Certificate and key (PEM), when etcd checks client certificates.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdOptions {
    /// Parse `etcd://h1:2379,h2:2379` (plain) or `etcds://…` (TLS; certificates set apart).
    pub fn parse(url: &str) -> Result<(EtcdOptions, bool), String> {
        let (rest, tls) = if let Some(r) = url.strip_prefix("etcd://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("etcds://") {
            (r, true)
        } else {
            return Err(format!(
                "`{url}` is not an etcd address: expected etcd://host:port[,host:port...]"
            ));
        };
        let endpoints: Vec<String> = rest
            .trim_end_matches('/')
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(format!(
                "`{url}` names no etcd member: expected etcd://host:port[,host:port...]"
            ));
        }
        for e in &endpoints {
            let hostport = e.rsplit_once(':').map(|(_, p)| p);
            if hostport.is_none_or(|p| p.parse::<u16>().is_err()) {
                return Err(format!(
                    "etcd member `{e}` in `{url}` has no port: write host:port, e.g. 127.0.0.1:2379"
                ));
            }
        }
        Ok((
            EtcdOptions {
                endpoints,
                tls: None,
                timeout: Duration::from_secs(5),
            },
            tls,
        ))
    }
}

/// A store on an etcd cluster. Cloning is cheap (the connections are shared).
///
/// One connection per member; requests go to one member (the pinned one) and move to the next
/// when it does not answer or has no leader, as etcd's own client does. (etcd-client's
/// balanced channel kept sending to a killed member until the request deadline: *found by
/// `lost_quorum_is_a_clear_error_and_passes`, a write 5 s late with one member of three down*.)
#[derive(Clone)]
pub struct EtcdStore {
    members: std::sync::Arc<Vec<Client>>,
    /// The same connections without the require-leader flag: for `members`.
    probes: std::sync::Arc<Vec<Client>>,
    urls: std::sync::Arc<Vec<String>>,
    pinned: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    label: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.label)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connect to the members of `options` (a member that is down is tried again later).
    pub async fn connect(options: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let endpoints: Vec<String> = options
            .endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("{scheme}://{e}")
                }
            })
            .collect();
        let (mut members, mut probes) = (Vec::new(), Vec::new());
        for url in &endpoints {
            let mut e = tonic::transport::Endpoint::from_shared(url.clone())
                .map_err(|e| StoreError::Backend(format!("etcd member {url}: {e}")))?
                .timeout(options.timeout)
                .connect_timeout(Duration::from_secs(2))
                .http2_keep_alive_interval(Duration::from_secs(2))
                .keep_alive_timeout(Duration::from_secs(2))
                .keep_alive_while_idle(true);
            if let Some(tls) = &options.tls {
                let mut t = etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca_pem));
                if let Some((cert, key)) = &tls.identity {
                    t = t.identity(etcd_client::Identity::from_pem(cert, key));
                }
                e = e
                    .tls_config(t)
                    .map_err(|e| StoreError::Backend(format!("etcd member {url}: TLS: {e}")))?;
            }
            let channel = e.connect_lazy();
            let client = Client::from_channel(
                etcd_client::Channel::Tonic(channel.clone()),
                Some(ConnectOptions::new().with_require_leader(true)),
            )
            .await
            .map_err(|e| StoreError::Backend(format!("etcd member {url}: {e}")))?;
            members.push(client);
            let probe = Client::from_channel(etcd_client::Channel::Tonic(channel), None)
                .await
                .map_err(|e| StoreError::Backend(format!("etcd member {url}: {e}")))?;
            probes.push(probe);
        }
        let store = EtcdStore {
            members: std::sync::Arc::new(members),
            probes: std::sync::Arc::new(probes),
            urls: std::sync::Arc::new(endpoints),
            pinned: Default::default(),
            label: options.endpoints.join(","),
        };
        // Fail now, with the reason, rather than at the first request.
        store.current_revision().await?;
        Ok(store)
    }

    /// Run `f` against the pinned member; when it cannot answer (down, cut off, no leader),
    /// against the next ones in turn. A write whose fate is unknown is tried again too: every
    /// transaction Wharf makes either compares what it read (a second try fails its compare) or
    /// writes the same values again.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        use std::sync::atomic::Ordering;
        let n = self.members.len();
        let start = self.pinned.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            match f(self.members[at].clone()).await {
                Ok(v) => {
                    if i > 0 {
                        self.pinned.store(at, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) if matches!(classify(&self.label, &e), StoreError::NoQuorum(_)) => {
                    last = Some(e)
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one member"))
    }

    /// Each member this store was given, and whether it answers and knows a leader (`wharf
    /// master ls`). Asked one by one without etcd's require-leader flag, so that it works, and
    /// says what is wrong, when the cluster has no quorum.
    pub async fn members(&self) -> Vec<EtcdMember> {
        let mut out = Vec::new();
        for (probe, url) in self.probes.iter().zip(self.urls.iter()) {
            let mut probe = probe.clone();
            let status = tokio::time::timeout(Duration::from_secs(2), probe.status())
                .await
                .ok()
                .and_then(Result::ok);
            let me = status
                .as_ref()
                .and_then(|s| s.header().map(|h| h.member_id()));
            out.push(EtcdMember {
                name: status
                    .as_ref()
                    .map(|_| format!("{:x}", me.unwrap_or_default()))
                    .unwrap_or_else(|| "-".into()),
                client_url: url.clone(),
                healthy: status.as_ref().is_some_and(|s| s.leader() != 0),
                leader: status
                    .as_ref()
                    .is_some_and(|s| s.leader() != 0 && Some(s.leader()) == me),
            });
        }
        out
    }

    fn err(&self, e: etcd_client::Error) -> StoreError {
        classify(&self.label, &e)
    }

    async fn range_page(
        &self,
        from: &[u8],
        end: &[u8],
        revision: i64,
        limit: i64,
    ) -> Result<etcd_client::GetResponse, StoreError> {
        let mut opts = GetOptions::new().with_range(end.to_vec()).with_limit(limit);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        self.call(|c| {
            let opts = opts.clone();
            async move {
                c.kv_client()
                    .max_decoding_message_size(MAX_MESSAGE)
                    .get(from.to_vec(), Some(opts))
                    .await
            }
        })
        .await
        .map_err(|e| self.err(e))
    }
}

/// One member of the etcd cluster as seen from a master: `healthy` when it answers and knows a
/// leader (it is part of a quorum).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdMember {
    pub name: String,
    pub client_url: String,
    pub healthy: bool,
    pub leader: bool,
}

/// A transport failure, a member without a leader, a deadline: the store cannot be reached
/// with a quorum.
fn unavailable(label: &str, e: &etcd_client::Error) -> StoreError {
    StoreError::NoQuorum(format!("etcd {label}: {e}"))
}

fn classify(label: &str, e: &etcd_client::Error) -> StoreError {
    use tonic::Code;
    let status = match e {
        etcd_client::Error::GRpcStatus(s) => s,
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            return unavailable(label, e);
        }
        etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found") => {
            return StoreError::LeaseNotFound(0);
        }
        _ => return StoreError::Backend(format!("etcd {label}: {e}")),
    };
    let msg = status.message();
    if msg.contains("lease not found") {
        return StoreError::LeaseNotFound(0);
    }
    if msg.contains("too many operations in txn") {
        return StoreError::Backend(format!(
            "etcd {label} refused a transaction with more operations than its --max-txn-ops \
             allows: start etcd with a higher --max-txn-ops (scripts/etcd-cluster uses 100000)"
        ));
    }
    if msg.contains("request is too large") {
        return StoreError::Backend(format!(
            "etcd {label} refused a request over its --max-request-bytes: start etcd with a \
             higher --max-request-bytes (scripts/etcd-cluster uses 32 MiB)"
        ));
    }
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
            if !msg.contains("compacted") =>
        {
            unavailable(label, e)
        }
        _ => StoreError::Backend(format!("etcd {label}: {e}")),
    }
}

fn rev(r: i64) -> Revision {
    r.max(0) as u64
}

fn kv_of(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        create_revision: rev(kv.create_revision()),
        mod_revision: rev(kv.mod_revision()),
        version: rev(kv.version()),
        lease: (kv.lease() != 0).then_some(kv.lease()),
    }
}

fn cmp_op(op: CmpOp) -> CompareOp {
    match op {
        CmpOp::Equal => CompareOp::Equal,
        CmpOp::NotEqual => CompareOp::NotEqual,
        CmpOp::Less => CompareOp::Less,
        CmpOp::Greater => CompareOp::Greater,
    }
}

fn compare(c: &Compare) -> etcd_client::Compare {
    match c {
        Compare::Version(k, op, v) => {
            etcd_client::Compare::version(k.as_str(), cmp_op(*op), *v as i64)
        }
        Compare::ModRevision(k, op, r) => {
            etcd_client::Compare::mod_revision(k.as_str(), cmp_op(*op), *r as i64)
        }
        Compare::CreateRevision(k, op, r) => {
            etcd_client::Compare::create_revision(k.as_str(), cmp_op(*op), *r as i64)
        }
        Compare::Value(k, op, v) => etcd_client::Compare::value(k.as_str(), cmp_op(*op), v.clone()),
    }
}

/// The first key of a prefix read: etcd has no empty key, `"\0"` is the least one.
fn range_start(prefix: &str) -> Vec<u8> {
    if prefix.is_empty() {
        vec![0]
    } else {
        prefix.as_bytes().to_vec()
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix);
/// `[0]` (every key) for the empty prefix.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn txn_op(op: &Op) -> etcd_client::TxnOp {
    match op {
        Op::Put { key, value, lease } => {
            let mut o = PutOptions::new().with_prev_key();
            if let Some(l) = lease {
                o = o.with_lease(*l);
            }
            etcd_client::TxnOp::put(key.as_str(), value.clone(), Some(o))
        }
        Op::Delete { key } => etcd_client::TxnOp::delete(key.as_str(), None),
        Op::DeletePrefix { prefix } => etcd_client::TxnOp::delete(
            range_start(prefix),
            Some(DeleteOptions::new().with_range(prefix_end(prefix.as_bytes()))),
        ),
        Op::Get { key } => etcd_client::TxnOp::get(key.as_str(), None),
        Op::Range { prefix } => etcd_client::TxnOp::get(
            range_start(prefix),
            Some(GetOptions::new().with_range(prefix_end(prefix.as_bytes()))),
        ),
    }
}

fn op_response(op: &Op, r: &TxnOpResponse) -> OpResponse {
    match (op, r) {
        (_, TxnOpResponse::Put(p)) => OpResponse::Put {
            prev: p.prev_key().map(kv_of),
        },
        (_, TxnOpResponse::Delete(d)) => OpResponse::Delete {
            deleted: d.deleted().max(0) as u64,
        },
        (Op::Get { .. }, TxnOpResponse::Get(g)) => OpResponse::Get(g.kvs().first().map(kv_of)),
        (_, TxnOpResponse::Get(g)) => OpResponse::Range(g.kvs().iter().map(kv_of).collect()),
        (_, TxnOpResponse::Txn(_)) => OpResponse::Range(Vec::new()),
    }
}

/// The lease a put of `txn` names, for a "lease not found" error.
fn lease_of(txn: &Txn) -> LeaseId {
    txn.success
        .iter()
        .chain(&txn.failure)
        .find_map(|op| match op {
            Op::Put { lease: Some(l), .. } => Some(*l),
            _ => None,
        })
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let r = self
            .call(|c| async move {
                c.kv_client()
                    .max_decoding_message_size(MAX_MESSAGE)
                    .get(key, None)
                    .await
            })
            .await
            .map_err(|e| self.err(e))?;
        Ok(r.kvs().first().map(kv_of))
    }

    async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision), StoreError> {
        let end = prefix_end(prefix.as_bytes());
        let mut from = range_start(prefix);
        let mut revision = 0i64;
        let mut limit = PAGE;
        let mut out = Vec::new();
        loop {
            let page = match self.range_page(&from, &end, revision, limit).await {
                // A page over the message limit (huge values): smaller pages.
                Err(StoreError::Backend(m))
                    if m.contains("message length too large") && limit > 1 =>
                {
                    limit = (limit / 8).max(1);
                    continue;
                }
                r => r?,
            };
            if revision == 0 {
                revision = page.header().map(|h| h.revision()).unwrap_or(0);
            }
            out.extend(page.kvs().iter().map(kv_of));
            match page.kvs().last() {
                Some(last) if page.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((out, rev(revision))),
            }
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let t = etcd_client::Txn::new()
            .when(txn.compares.iter().map(compare).collect::<Vec<_>>())
            .and_then(txn.success.iter().map(txn_op).collect::<Vec<_>>())
            .or_else(txn.failure.iter().map(txn_op).collect::<Vec<_>>());
        let r = match self
            .call(|c| {
                let t = t.clone();
                async move { c.kv_client().txn(t).await }
            })
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Err(match self.err(e) {
                    StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(lease_of(&txn)),
                    other => other,
                });
            }
        };
        let branch = if r.succeeded() {
            &txn.success
        } else {
            &txn.failure
        };
        let responses = branch
            .iter()
            .zip(r.op_responses().iter())
            .map(|(op, resp)| op_response(op, resp))
            .collect();
        Ok(TxnResponse {
            succeeded: r.succeeded(),
            revision: rev(r.header().map(|h| h.revision()).unwrap_or(0)),
            responses,
        })
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let r = self
            .call(|c| async move {
                c.kv_client()
                    .get("\0", Some(GetOptions::new().with_count_only()))
                    .await
            })
            .await
            .map_err(|e| self.err(e))?;
        Ok(rev(r.header().map(|h| h.revision()).unwrap_or(0)))
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let mut opts = WatchOptions::new().with_range(prefix_end(prefix.as_bytes()));
        if from > 0 {
            opts = opts.with_start_revision(from as i64);
        }
        let (sender, mut stream) = self
            .call(|c| {
                let opts = opts.clone();
                async move {
                    c.watch_client()
                        .watch(range_start(prefix), Some(opts))
                        .await
                }
            })
            .await
            .map_err(|e| self.err(e))?
            .split();
        // The first answer says the watch was made; a compacted start shows in the next one,
        // which a probe read at `from` tells us to wait for.
        let first = stream.message().await.map_err(|e| self.err(e))?;
        if first.as_ref().is_none_or(|r| !r.created()) {
            return Err(StoreError::Backend(format!(
                "etcd {}: the watch was not created",
                self.label
            )));
        }
        if from > 0 && self.compacted_at(prefix, from).await? {
            let oldest = loop {
                match stream.message().await.map_err(|e| self.err(e))? {
                    Some(r) if r.compact_revision() > 0 => break rev(r.compact_revision()),
                    Some(_) => continue,
                    None => break from + 1,
                }
            };
            return Err(StoreError::Compacted {
                requested: from,
                oldest,
            });
        }
        let label = self.label.clone();
        let batches = futures::stream::unfold(
            (stream, sender, std::collections::VecDeque::new(), label),
            |(mut stream, sender, mut ready, label)| async move {
                loop {
                    if let Some(b) = ready.pop_front() {
                        return Some((Ok(b), (stream, sender, ready, label)));
                    }
                    let msg = match stream.message().await {
                        Ok(Some(m)) => m,
                        Ok(None) => return None,
                        Err(e) => {
                            return Some((
                                Err(classify(&label, &e)),
                                (stream, sender, ready, label),
                            ));
                        }
                    };
                    if msg.compact_revision() > 0 {
                        let e = StoreError::Compacted {
                            requested: 0,
                            oldest: rev(msg.compact_revision()),
                        };
                        return Some((Err(e), (stream, sender, ready, label)));
                    }
                    if msg.canceled() {
                        let e = StoreError::Backend(format!(
                            "etcd {label}: the watch was cancelled ({})",
                            msg.cancel_reason()
                        ));
                        return Some((Err(e), (stream, sender, ready, label)));
                    }
                    ready.extend(batches_of(msg.events()));
                }
            },
        );
        Ok(batches.boxed())
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = ttl.as_millis().div_ceil(1000).max(1) as i64;
        let r = self
            .call(|c| async move { c.lease_client().grant(secs, None).await })
            .await
            .map_err(|e| self.err(e))?;
        Ok(r.id())
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        // One round trip: the client sends the first keep-alive and waits for its answer.
        match self
            .call(|c| async move { c.lease_client().keep_alive(lease).await })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(match self.err(e) {
                StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(lease),
                other => other,
            }),
        }
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self
            .call(|c| async move { c.lease_client().revoke(lease).await })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(match self.err(e) {
                StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(lease),
                other => other,
            }),
        }
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let current = self.current_revision().await?;
        let target = revision.min(current) as i64;
        match self
            .call(|c| async move {
                c.kv_client()
                    .compact(
                        target,
                        Some(etcd_client::CompactionOptions::new().with_physical()),
                    )
                    .await
            })
            .await
        {
            Ok(_) => Ok(()),
            // Compacted there already.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("compacted") => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}

impl EtcdStore {
    /// Whether a read of `prefix` at `from` meets a compaction.
    async fn compacted_at(&self, prefix: &str, from: Revision) -> Result<bool, StoreError> {
        let opts = GetOptions::new()
            .with_range(prefix_end(prefix.as_bytes()))
            .with_revision(from as i64)
            .with_count_only();
        match self
            .call(|c| {
                let opts = opts.clone();
                async move { c.kv_client().get(range_start(prefix), Some(opts)).await }
            })
            .await
        {
            Ok(_) => Ok(false),
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("compacted") => Ok(true),
            // A future revision: nothing compacted.
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("future") => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }
}

/// The events of one watch answer, one batch per revision (etcd never splits a revision
/// across answers), each in key order.
fn batches_of(events: &[etcd_client::Event]) -> Vec<WatchBatch> {
    let mut out: Vec<WatchBatch> = Vec::new();
    for e in events {
        let Some(kv) = e.kv() else { continue };
        let mut kv = kv_of(kv);
        let kind = match e.event_type() {
            EventType::Put => EventKind::Put,
            EventType::Delete => {
                kv.value.clear();
                kv.create_revision = 0;
                kv.version = 0;
                kv.lease = None;
                EventKind::Delete
            }
        };
        let revision = kv.mod_revision;
        let event = WatchEvent { kind, kv };
        match out.last_mut() {
            Some(b) if b.revision == revision => b.events.push(event),
            _ => out.push(WatchBatch {
                revision,
                events: vec![event],
            }),
        }
    }
    for b in &mut out {
        b.events.sort_by(|a, c| a.kv.key.cmp(&c.kv.key));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_members_with_ports() {
        let (o, tls) = EtcdOptions::parse("etcd://a:2379,b:2380/").unwrap();
        assert_eq!(o.endpoints, ["a:2379", "b:2380"]);
        assert!(!tls);
        assert!(EtcdOptions::parse("etcds://a:1").unwrap().1);
        for bad in ["http://a:1", "etcd://", "etcd://a", "etcd://a:x"] {
            let e = EtcdOptions::parse(bad).unwrap_err();
            assert!(e.contains(bad) || e.contains("a"), "{bad}: {e}");
        }
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"a/"), b"a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
