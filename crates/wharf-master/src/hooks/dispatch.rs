//! The outgoing-webhook dispatcher, a controller run by the leading master: it tails the event
//! log from a cursor kept in the store (`keys::HOOK_CURSOR`), turns each event an outgoing hook
//! wants into a pending delivery (written with the cursor's advance, in one transaction), and
//! sends the deliveries that are due, each try recorded.
//!
//! Crash-safe and at least once: a delivery exists before it is tried and is marked delivered
//! only after the receiver's 2xx, so a master killed in between (or a new leader) sends it
//! again, with the same `X-Wharf-Delivery` id for the receiver to dedupe on. Level-triggered:
//! what is due is read from the store at every tick, not remembered.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use wharf_store::{Compare, EventKind, KeyValue, Op, Txn};
use wharf_types::Event;

use super::{DeliveryRecord, HookKind, HookRecord};
use crate::events::{Cursor, index_of};
use crate::model::{encode, keys};
use crate::{Error, Master, now_ms};

/// How often due deliveries are looked for.
const TICK: Duration = Duration::from_millis(250);
/// How long one try may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries sent at once.
const AT_ONCE: usize = 32;
/// How often the cursor is written when no delivery was made (a write per event batch would
/// double the store's writes for nothing; reading a few events twice after a restart is free).
const CURSOR_EVERY_MS: u64 = 30_000;

/// Run the dispatcher for as long as the process does; it acts only while this master leads.
pub async fn run(m: Master) {
    let client = client();
    loop {
        if m.role.leading()
            && let Err(e) = follow(&m, &client).await
        {
            tracing::warn!(error = %e, "outgoing webhooks: reading the event log failed; again in a second");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The HTTP client of deliveries: no redirects (a receiver must answer itself), the host's CA
/// bundle for https when there is one.
fn client() -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(SEND_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")));
    for bundle in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ] {
        if let Ok(pem) = std::fs::read(bundle)
            && let Ok(certs) = reqwest::Certificate::from_pem_bundle(&pem)
        {
            for c in certs {
                b = b.add_root_certificate(c);
            }
            break;
        }
    }
    b.build().unwrap_or_default()
}

/// The event of an event-log entry, with its cursor.
fn event_of(kv: &KeyValue, revision: u64) -> Option<(Cursor, Event)> {
    let index = index_of(&kv.key)?;
    let e: Event = serde_json::from_slice(&kv.value).ok()?;
    Some((Cursor { revision, index }, e))
}

/// Read the log from the stored cursor, then follow the store's watch; send what is due at
/// every tick. Returns when this master no longer leads or the watch ends.
async fn follow(m: &Master, client: &reqwest::Client) -> Result<(), Error> {
    let (kvs, revision) = m.store.range(keys::EVENTS).await?;
    let stored = match m.store.get(keys::HOOK_CURSOR).await? {
        Some(kv) => Cursor::parse(&String::from_utf8_lossy(&kv.value)),
        None => None,
    };
    // The first start begins at the present: hooks made later want nothing older anyway.
    let from = stored.unwrap_or(Cursor {
        revision,
        index: u32::MAX,
    });
    let mut backlog: Vec<(Cursor, Event)> = kvs
        .iter()
        .filter_map(|kv| event_of(kv, kv.mod_revision))
        .filter(|(c, _)| *c > from)
        .collect();
    backlog.sort_by_key(|(c, _)| *c);
    let mut written = if stored.is_some() { now_ms() } else { 0 };
    let upto = Cursor {
        revision,
        index: u32::MAX,
    };
    written = enqueue(m, &backlog, upto, written).await?;
    let mut watch = m.store.watch(keys::EVENTS, revision + 1).await?;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if !m.role.leading() {
            return Ok(());
        }
        tokio::select! {
            batch = watch.next() => {
                let batch = match batch {
                    Some(b) => b?,
                    None => return Ok(()),
                };
                let mut events: Vec<(Cursor, Event)> = batch
                    .events
                    .iter()
                    .filter(|w| w.kind == EventKind::Put)
                    .filter_map(|w| event_of(&w.kv, batch.revision))
                    .collect();
                events.sort_by_key(|(c, _)| *c);
                let upto = Cursor { revision: batch.revision, index: u32::MAX };
                written = enqueue(m, &events, upto, written).await?;
            }
            _ = tick.tick() => send_due(m, client).await?,
        }
    }
}

/// The outgoing hooks, by id.
async fn outgoing(m: &Master) -> Result<BTreeMap<String, HookRecord>, Error> {
    let (hooks, _) = m.decoded::<HookRecord>(keys::HOOKS).await?;
    Ok(hooks
        .into_iter()
        .filter(|h| matches!(h.value.kind, HookKind::Outgoing { .. }))
        .map(|h| (h.value.id.clone(), (*h.value).clone()))
        .collect())
}

/// Make the deliveries `events` call for and move the cursor to `upto`, in one transaction
/// (the cursor alone only every `CURSOR_EVERY_MS`). Returns when the cursor was last written.
async fn enqueue(
    m: &Master,
    events: &[(Cursor, Event)],
    upto: Cursor,
    written: u64,
) -> Result<u64, Error> {
    let hooks = outgoing(m).await?;
    let now = now_ms();
    let mut ops = Vec::new();
    for (c, e) in events {
        for h in hooks.values().filter(|h| super::wants(h, e)) {
            let key = keys::hook_delivery(&h.id, c.revision, c.index);
            // Read again after a restart: the delivery made then stands (it may have tries).
            if m.store.get(&key).await?.is_some() {
                continue;
            }
            let d = super::new_delivery(&h.id, &c.to_string(), e, now);
            ops.push(Op::put(key, encode(&d)));
        }
    }
    if ops.is_empty() && now.saturating_sub(written) < CURSOR_EVERY_MS {
        return Ok(written);
    }
    ops.push(Op::put(keys::HOOK_CURSOR, upto.to_string().into_bytes()));
    m.store.txn(Txn::new().then(ops)).await?;
    Ok(now)
}

/// Try every delivery that is due (at most `AT_ONCE` at a time), record each try, and drop
/// what goes beyond each hook's log (and the deliveries of removed hooks).
async fn send_due(m: &Master, client: &reqwest::Client) -> Result<(), Error> {
    let (all, _) = m.decoded::<DeliveryRecord>(keys::HOOK_DELIVERIES).await?;
    if all.is_empty() {
        return Ok(());
    }
    let hooks = outgoing(m).await?;
    let now = now_ms();
    let due: Vec<_> = all
        .iter()
        .filter(|d| super::due(&d.value.delivery, now))
        .filter_map(|d| Some((d, hooks.get(&d.value.delivery.hook)?)))
        .take(AT_ONCE)
        .collect();
    let tries = due.iter().map(|(d, h)| attempt(m, client, h, &d.value));
    let results = futures::future::join_all(tries).await;
    for ((d, _), (status, error)) in due.iter().zip(results) {
        let next = super::after_attempt((*d.value).clone(), now_ms(), status, error);
        let txn = Txn::new()
            .when([Compare::unchanged_since(d.key.clone(), d.mod_revision)])
            .then([Op::put(d.key.clone(), encode(&next))]);
        m.store.txn(txn).await?;
    }
    let mut by_hook: BTreeMap<&str, Vec<(&str, &wharf_types::HookDelivery)>> = BTreeMap::new();
    let mut orphans = Vec::new();
    for d in &all {
        if hooks.contains_key(&d.value.delivery.hook) {
            by_hook
                .entry(&d.value.delivery.hook)
                .or_default()
                .push((&d.key, &d.value.delivery));
        } else {
            orphans.push(Op::delete(d.key.clone()));
        }
    }
    let mut drop: Vec<Op> = by_hook
        .values()
        .flat_map(|ds| super::to_trim(ds))
        .map(Op::delete)
        .collect();
    drop.extend(orphans);
    if !drop.is_empty() {
        m.store.txn(Txn::new().then(drop)).await?;
    }
    Ok(())
}

/// One try: the receiver's status, or why there was none.
async fn attempt(
    m: &Master,
    client: &reqwest::Client,
    hook: &HookRecord,
    d: &DeliveryRecord,
) -> (Option<u16>, Option<String>) {
    let HookKind::Outgoing { url, .. } = &hook.kind else {
        return (None, Some("not an outgoing hook".into()));
    };
    let secret = match m
        .sealer()
        .open(&super::seal_item(&hook.id), 1, &hook.secret)
    {
        Ok(s) => s,
        Err(e) => return (None, Some(format!("the hook's secret does not open: {e}"))),
    };
    let body = super::body_of(d);
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-wharf-event", &d.delivery.event)
        .header("x-wharf-delivery", &d.delivery.id)
        .header("x-wharf-hook", &hook.id)
        .header("x-wharf-signature-256", super::sign(&secret, &body))
        .body(body)
        .send()
        .await;
    match sent {
        Ok(r) => (Some(r.status().as_u16()), None),
        // Without the URL: it may carry a token of the receiver's.
        Err(e) => (None, Some(describe(&e))),
    }
}

/// A failed send, in words, without the URL.
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "the request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut why = String::new();
    while let Some(s) = source {
        why = s.to_string();
        source = s.source();
    }
    if why.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {}", wharf_types::excerpt(&why, 200))
    }
}
