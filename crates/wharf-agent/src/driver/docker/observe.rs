//! Observing containers: inspecting them into what the agent sees (state, health, address,
//! times) and turning the engine's log stream into lines.

use std::collections::{HashMap, VecDeque};

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum};
use bollard::query_parameters::InspectContainerOptions;
use futures::stream::{BoxStream, StreamExt};
use wharf_types::{Health, LogStream, labels};

use super::network::network_name;
use super::{DockerDriver, map_err, status};
use crate::driver::{DriverError, LogLines, Observed, ObservedState};

const HEALTH_OUTPUT_MAX: usize = 500;

impl DockerDriver {
    pub(super) async fn inspect(
        &self,
        handle: &str,
    ) -> Result<Option<ContainerInspectResponse>, DriverError> {
        match self
            .docker
            .inspect_container(handle, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(map_err(e, &format!("cannot inspect container {handle}"))),
        }
    }

    pub(super) async fn is_running(&self, handle: &str) -> Result<bool, DriverError> {
        Ok(self
            .inspect(handle)
            .await?
            .and_then(|c| c.state)
            .and_then(|s| s.running)
            .unwrap_or(false))
    }
}

/// Turn an inspected container into what the agent sees. Fails on missing or malformed labels.
pub(super) fn observe(id: &str, c: &ContainerInspectResponse) -> Result<Observed, String> {
    let empty = HashMap::new();
    let l = c
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .unwrap_or(&empty);
    let get = |k: &str| {
        l.get(k)
            .cloned()
            .ok_or_else(|| format!("label {k} is missing"))
    };
    let slot = get(labels::SLOT)?
        .parse::<u32>()
        .map_err(|e| format!("label {}: {e}", labels::SLOT))?;
    let generation = get(labels::GENERATION)?
        .parse::<u64>()
        .map_err(|e| format!("label {}: {e}", labels::GENERATION))?;
    let st = c.state.clone().unwrap_or_default();
    let state = match st.status {
        Some(ContainerStateStatusEnum::CREATED) => ObservedState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => ObservedState::Running,
        Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
            ObservedState::Exited
        }
        _ => ObservedState::Other,
    };
    let exit_code = (state == ObservedState::Exited).then(|| st.exit_code.unwrap_or(0));
    let error = if st.oom_killed == Some(true) {
        Some("out of memory (OOM-killed)".to_string())
    } else {
        st.error.clone().filter(|e| !e.trim().is_empty())
    };
    let (health, health_output) = match &st.health {
        None => (Health::None, None),
        Some(h) => {
            let health = match h.status {
                Some(HealthStatusEnum::STARTING) => Health::Starting,
                Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
                Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
                _ => Health::None,
            };
            let last = h.log.as_ref().and_then(|log| log.last());
            let failing =
                health == Health::Unhealthy || last.is_some_and(|r| r.exit_code.unwrap_or(0) != 0);
            let output = last
                .filter(|_| failing)
                .and_then(|r| r.output.as_deref())
                .map(|o| truncate(o.trim(), HEALTH_OUTPUT_MAX))
                .filter(|o| !o.is_empty());
            (health, output)
        }
    };
    Ok(Observed {
        handle: id.to_string(),
        instance: get(labels::INSTANCE)?,
        stack: get(labels::STACK)?,
        service: get(labels::SERVICE)?,
        slot,
        generation,
        spec_hash: get(labels::SPEC_HASH)?,
        state,
        exit_code,
        error,
        health,
        health_output,
        started_at: st.started_at.as_deref().and_then(parse_rfc3339_ms),
        finished_at: st.finished_at.as_deref().and_then(parse_rfc3339_ms),
        address: (state == ObservedState::Running)
            .then(|| stack_address(c, &get(labels::STACK).unwrap_or_default()))
            .flatten(),
    })
}

/// The container's IP address on its stack's network (`wharf_<stack>`).
fn stack_address(c: &ContainerInspectResponse, stack: &str) -> Option<String> {
    c.network_settings
        .as_ref()?
        .networks
        .as_ref()?
        .get(&network_name(stack))?
        .ip_address
        .clone()
        .filter(|ip| !ip.is_empty())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Parse an RFC 3339 timestamp ("2026-11-26T14:49:53.123456789Z", or with an offset) into unix ms.
/// The zero time ("0001-01-01T00:00:00Z") and anything before 1970 give `None`.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let (clock, offset_secs) = if let Some(t) = time.strip_suffix(['Z', 'z']) {
        (t, 0i64)
    } else {
        let idx = time.rfind(['+', '-'])?;
        let (t, off) = time.split_at(idx);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (
            t,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let m: i64 = t.next()?.parse().ok()?;
    let sec: i64 = t.next()?.parse().ok()?;
    let millis: i64 = if frac.is_empty() {
        0
    } else {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut f = frac[..frac.len().min(3)].to_string();
        while f.len() < 3 {
            f.push('0');
        }
        f.parse().ok()?
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + h * 3600 + m * 60 + sec - offset_secs;
    let ms = secs.checked_mul(1000)?.checked_add(millis)?;
    u64::try_from(ms).ok().filter(|ms| *ms > 0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Split raw output chunks into complete lines per stream (a partial line waits for its end; what
/// is left when the stream ends is flushed). Trailing `\r\n` is stripped.
pub(super) fn split_lines(
    raw: BoxStream<'static, Result<(LogStream, Vec<u8>), DriverError>>,
) -> LogLines {
    struct St {
        raw: BoxStream<'static, Result<(LogStream, Vec<u8>), DriverError>>,
        out: Vec<u8>,
        err: Vec<u8>,
        ready: VecDeque<Result<(LogStream, String), DriverError>>,
        done: bool,
    }
    fn line(stream: LogStream, mut bytes: Vec<u8>) -> (LogStream, String) {
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        (stream, String::from_utf8_lossy(&bytes).into_owned())
    }
    let st = St {
        raw,
        out: Vec::new(),
        err: Vec::new(),
        ready: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(item) = st.ready.pop_front() {
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            match st.raw.next().await {
                Some(Ok((stream, chunk))) => {
                    let buf = if stream == LogStream::Stderr {
                        &mut st.err
                    } else {
                        &mut st.out
                    };
                    buf.extend_from_slice(&chunk);
                    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                        let rest = buf.split_off(pos + 1);
                        let full = std::mem::replace(buf, rest);
                        st.ready.push_back(Ok(line(stream, full)));
                    }
                }
                Some(Err(e)) => {
                    st.ready.push_back(Err(e));
                    st.done = true;
                }
                None => {
                    st.done = true;
                    for (stream, buf) in [
                        (LogStream::Stdout, &mut st.out),
                        (LogStream::Stderr, &mut st.err),
                    ] {
                        if !buf.is_empty() {
                            st.ready.push_back(Ok(line(stream, std::mem::take(buf))));
                        }
                    }
                }
            }
        }
    })
    .boxed()
}

/// Poll `stream` from a task of its own from now on, so the engine request goes out at once (bollard
/// streams are lazy: a follow started later would miss what is written in between). The task ends
/// when the stream ends or the returned stream is dropped.
pub(super) fn eager<T: Send + 'static>(mut stream: BoxStream<'static, T>) -> BoxStream<'static, T> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                item = stream.next() => match item {
                    Some(item) => {
                        if tx.send(item).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_rfc3339_ms("0001-01-01T00:00:00Z"), None);
        assert_eq!(
            parse_rfc3339_ms("2026-11-26T14:49:53.123456789Z"),
            Some(1_795_704_593_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-26T15:49:53.5+01:00"),
            Some(1_795_704_593_500)
        );
        assert_eq!(parse_rfc3339_ms("garbage"), None);
    }

    #[tokio::test]
    async fn splits_lines_per_stream() {
        let chunks: Vec<Result<(LogStream, Vec<u8>), DriverError>> = vec![
            Ok((LogStream::Stdout, b"a\r\nb".to_vec())),
            Ok((LogStream::Stderr, b"e1\n".to_vec())),
            Ok((LogStream::Stdout, b"c\nd".to_vec())),
        ];
        let lines: Vec<_> = split_lines(futures::stream::iter(chunks).boxed())
            .collect()
            .await;
        let lines: Vec<_> = lines.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            lines,
            vec![
                (LogStream::Stdout, "a".to_string()),
                (LogStream::Stderr, "e1".to_string()),
                (LogStream::Stdout, "bc".to_string()),
                (LogStream::Stdout, "d".to_string()),
            ]
        );
    }
}
