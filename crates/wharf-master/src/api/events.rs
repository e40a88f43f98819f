//! `GET /v1/events`: the event log (`crate::events`) as a stream, from a cursor, optionally
//! following new events as they commit. Newline-delimited JSON, or Server-Sent Events when the
//! client accepts `text/event-stream` (each event's id is its cursor, so a browser's
//! `EventSource` resumes by itself with `Last-Event-ID`).

use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;
use wharf_store::{EventKind, KeyValue};
use wharf_types::Event;

use super::error::{ApiFailure, ApiQuery};
use crate::events::{Cursor, index_of};
use crate::model::keys;
use crate::policy::Caller;
use crate::{Error, Master};

/// Events buffered between the store and a slow reader (the stream waits when it is full).
const BUFFERED: usize = 256;

/// A followed Server-Sent Events stream sends a comment this often, so that proxies and
/// browsers keep an idle stream open.
const KEEPALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventQuery {
    /// Resume after this cursor (an event's `cursor`): nothing lost, nothing repeated. Absent:
    /// from the oldest event kept (events older than the retention are pruned). The
    /// `Last-Event-ID` header does the same for Server-Sent Events.
    after: Option<String>,
    /// Only events at or after this time (Unix seconds).
    since: Option<i64>,
    /// Only events of this stack.
    stack: Option<String>,
    /// Keep the stream open and send new events as they commit.
    #[serde(default)]
    follow: bool,
}

/// Which events a stream sends.
struct Filter {
    after: Option<Cursor>,
    since_ms: Option<u64>,
    stack: Option<String>,
    caller: Caller,
}

impl Filter {
    fn passes(&self, cursor: Cursor, e: &Event) -> bool {
        self.after.is_none_or(|a| cursor > a)
            && self.since_ms.is_none_or(|s| e.time >= s)
            && self.stack.as_ref().is_none_or(|s| e.stack.as_ref() == Some(s))
            // A caller scoped to some stacks sees their events only (none of the nodes).
            && match &e.stack {
                Some(stack) => self.caller.sees(stack),
                None => self.caller.scope.is_empty(),
            }
    }
}

/// An event record as the stream sends it: with its cursor. None for a key that is not an event.
fn event_of(kv: &KeyValue, revision: u64) -> Option<(Cursor, Event)> {
    let index = index_of(&kv.key)?;
    let mut e: Event = serde_json::from_slice(&kv.value).ok()?;
    let cursor = Cursor { revision, index };
    e.cursor = cursor.to_string();
    Some((cursor, e))
}

#[utoipa::path(get, path = "/v1/events", params(EventQuery),
    responses((status = 200, description = "newline-delimited JSON Event objects, oldest first (or Server-Sent Events, with `Accept: text/event-stream`)", content_type = "application/x-ndjson", body = Event),
        (status = 400, description = "a bad cursor", body = wharf_types::ApiError)))]
pub(crate) async fn events(
    State(m): State<Master>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> Result<Response, ApiFailure> {
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let after = match q.after.clone().or(last_id) {
        Some(s) => Some(Cursor::parse(&s).ok_or_else(|| Error::Invalid {
            message: format!(
                "after: {:?} is not an event cursor",
                wharf_types::excerpt(&s, 40)
            ),
            location: None,
            hint: Some("pass the `cursor` of the last event you read, e.g. `after=1234.0`".into()),
        })?),
        None => None,
    };
    let sse = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let filter = Filter {
        after,
        since_ms: q.since.map(|s| (s.max(0) as u64).saturating_mul(1000)),
        stack: q.stack.clone(),
        caller,
    };
    let (kvs, revision) = m.store.range(keys::EVENTS).await.map_err(Error::from)?;
    let mut backlog: Vec<(Cursor, Event)> = kvs
        .iter()
        .filter_map(|kv| event_of(kv, kv.mod_revision))
        .filter(|(c, e)| filter.passes(*c, e))
        .collect();
    backlog.sort_by_key(|(c, _)| *c);
    let (tx, rx) = mpsc::channel(BUFFERED);
    tokio::spawn(pump(m, backlog, revision, q.follow, filter, sse, tx));
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let kind = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

type Chunk = Result<Vec<u8>, std::io::Error>;

fn render(e: &Event, sse: bool) -> Vec<u8> {
    let json = serde_json::to_string(e).unwrap_or_default();
    if sse {
        format!("id: {}\ndata: {json}\n\n", e.cursor).into_bytes()
    } else {
        format!("{json}\n").into_bytes()
    }
}

/// Sends the backlog, then (following) every event committed after `revision`, until the
/// reader goes away or the store's history cannot go on (which ends the stream with an error:
/// the reader resumes from its last cursor).
async fn pump(
    m: Master,
    backlog: Vec<(Cursor, Event)>,
    revision: u64,
    follow: bool,
    filter: Filter,
    sse: bool,
    tx: mpsc::Sender<Chunk>,
) {
    for (_, e) in &backlog {
        if tx.send(Ok(render(e, sse))).await.is_err() {
            return;
        }
    }
    if !follow {
        return;
    }
    let mut changes = match m.store.watch(keys::EVENTS, revision + 1).await {
        Ok(w) => w,
        Err(e) => {
            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            return;
        }
    };
    loop {
        let batch = tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(KEEPALIVE), if sse => {
                if tx.send(Ok(b": keepalive\n\n".to_vec())).await.is_err() {
                    return;
                }
                continue;
            }
            b = changes.next() => b,
        };
        let batch = match batch {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return;
            }
            None => return,
        };
        let mut events: Vec<(Cursor, Event)> = batch
            .events
            .iter()
            .filter(|w| w.kind == EventKind::Put)
            .filter_map(|w| event_of(&w.kv, batch.revision))
            .filter(|(c, e)| filter.passes(*c, e))
            .collect();
        events.sort_by_key(|(c, _)| *c);
        for (_, e) in &events {
            if tx.send(Ok(render(e, sse))).await.is_err() {
                return;
            }
        }
    }
}
