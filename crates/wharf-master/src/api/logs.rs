//! The lines of a service's instances (`GET /v1/services/{stack}/{service}/logs`), merged as
//! NDJSON. Following, the instances that start later (a rolling update, a reschedule) join the
//! stream. Memory stays bounded whatever the reader's speed: one bounded channel here, and each
//! agent sends at most its credit window ahead of what was read.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use wharf_types::{LogLine, LogQuery};

use crate::Master;
use crate::hub::NodeLogLines;
use crate::model::keys;

/// Lines buffered between the instances' streams and the response.
pub(crate) const LINES_BUFFERED: usize = 256;

/// How often a followed stream looks for instances that started since.
const REFRESH: Duration = Duration::from_secs(1);

/// What the response body is made of: a line (JSON and a newline), or the error that ends it.
type Chunk = Result<Vec<u8>, std::io::Error>;

/// Streams the lines of the service's instances into `tx` until they end (not following) or the
/// reader goes away (following).
pub(crate) async fn pump(
    m: Master,
    stack: String,
    service: String,
    q: LogQuery,
    tx: mpsc::Sender<Chunk>,
) {
    let prefix = keys::instances_of_service(&stack, &service);
    // Each generation of a slot is read once: a rolling update's replacement keeps the id.
    let mut reading: HashSet<(String, u64)> = HashSet::new();
    let mut forwards = JoinSet::new();
    let mut first = true;
    loop {
        let (Ok(insts), Ok(reports)) = (m.instances(&prefix).await, m.reports().await) else {
            break;
        };
        for inst in insts.iter().filter(|i| q.slot.is_none_or(|s| s == i.slot)) {
            let id = inst.id();
            let key = (id.clone(), inst.generation);
            // Later, a generation is read once its node reported it (its container exists:
            // the agent reads the newest generation of the slot it has).
            let reported = crate::rollout::report_of(inst, &reports).is_some();
            if reading.contains(&key) || (!first && !reported) {
                continue;
            }
            let Some(link) = m.hub.link(&inst.node) else {
                continue; // its node is not connected (yet): looked at again next time
            };
            // An instance that started after the stream began is read from its first line.
            let iq = if first {
                q
            } else {
                LogQuery { tail: None, ..q }
            };
            match link.logs(&id, iq).await {
                Ok(lines) => {
                    reading.insert(key);
                    let node = inst.node.clone();
                    forwards.spawn(forward(lines, id, node, q.timestamps, tx.clone()));
                }
                // Not created yet, or gone: looked at again next time when following.
                Err(e) => tracing::debug!(instance = %id, error = %e, "no logs"),
            }
        }
        first = false;
        if !q.follow {
            break;
        }
        tokio::select! {
            _ = tx.closed() => break,
            _ = tokio::time::sleep(REFRESH) => {}
        }
    }
    drop(tx);
    if q.follow {
        forwards.abort_all(); // the reader went away
    }
    while forwards.join_next().await.is_some() {}
}

/// One instance's lines into the response, until they end, fail (which ends the response, as
/// an error the client reports) or the reader goes away.
async fn forward(
    mut lines: NodeLogLines,
    instance: String,
    node: String,
    timestamps: bool,
    tx: mpsc::Sender<Chunk>,
) {
    while let Some(r) = lines.next().await {
        let chunk = match r {
            Ok((stream, text)) => {
                let (time, line) = if timestamps {
                    split_time(text)
                } else {
                    (None, text)
                };
                let mut bytes = serde_json::to_vec(&LogLine {
                    instance: instance.clone(),
                    stream,
                    line,
                    node: Some(node.clone()),
                    time,
                })
                .unwrap_or_default();
                bytes.push(b'\n');
                Ok(bytes)
            }
            Err(e) => Err(std::io::Error::other(e)),
        };
        let failed = chunk.is_err();
        if tx.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

/// `2026-12-07T13:20:43.123456789Z text` (the engine's timestamp) into the time and the text.
fn split_time(text: String) -> (Option<String>, String) {
    match text.split_once(' ') {
        Some((t, rest))
            if t.len() >= 20
                && t.as_bytes()[0].is_ascii_digit()
                && t.contains('T')
                && (t.ends_with('Z') || t.contains('+')) =>
        {
            (Some(t.to_string()), rest.to_string())
        }
        _ => (None, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_timestamps_split_from_the_text() {
        assert_eq!(
            split_time("2026-12-07T13:20:43.123456789Z starting in 0 ms".into()),
            (
                Some("2026-12-07T13:20:43.123456789Z".into()),
                "starting in 0 ms".into()
            )
        );
        assert_eq!(split_time("plain line".into()), (None, "plain line".into()));
        assert_eq!(split_time("".into()), (None, String::new()));
    }
}
