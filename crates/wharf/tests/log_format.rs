//! The log of `wharf up` in a file: no ANSI escape codes (stderr is not a terminal), and with
//! `--log-format json` (`WHARF_LOG_FORMAT=json`) one JSON object per event line.

mod common;

use std::time::Duration;

use common::*;
use wharf_testkit::{Check, not_yet, wait_for};

/// Waits until the log of `w` holds an event line of the tracing log (`INFO` or `"level"`).
async fn wait_for_events(w: &Wharf) -> String {
    wait_for(
        "an info event in the log of wharf up",
        Duration::from_secs(30),
        || async {
            let log = w.log();
            if log.contains("INFO") || log.contains("\"level\"") {
                Check::Done(log)
            } else {
                not_yet(tail(&log, 10))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_in_a_file_has_no_colour_codes_and_json_lines_parse() {
    let w = Wharf::start_with_env(vec![("WHARF_LOG".into(), "info".into())]).await;
    let log = wait_for_events(&w).await;
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a log file:\n{}",
        tail(&log, 20)
    );
    drop(w);

    let w = Wharf::start_with_env(vec![
        ("WHARF_LOG".into(), "info".into()),
        ("WHARF_LOG_FORMAT".into(), "json".into()),
    ])
    .await;
    let log = wait_for_events(&w).await;
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        !events.is_empty(),
        "no JSON event lines:\n{}",
        tail(&log, 20)
    );
    for e in &events {
        assert!(
            e["level"].is_string() && e["timestamp"].is_string() && e["fields"].is_object(),
            "an event without level, time and fields: {e}"
        );
    }
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes:\n{}",
        tail(&log, 20)
    );
}
