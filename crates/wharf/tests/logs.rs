//! Acceptance check 10: `wharf service logs -f` streams a new line within a second, prefixed by its
//! instance; `--tail 1` prints exactly the last line.

mod common;

use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// `wharf service logs -f …` running as a child; its stdout lines arrive on a channel with the
/// time they were read. Killed on drop.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<String>,
}

impl Follower {
    fn spawn(w: &Wharf, target: &str) -> Follower {
        let mut child = cli_command(&w.config_dir(), &["service", "logs", "-f", target])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wharf service logs -f");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        Follower {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line containing `needle` read before `deadline`, with the time it was read.
    fn wait_line(&mut self, needle: &str, deadline: Instant) -> Result<(Instant, String), String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok((at, line));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no line containing {needle:?}; lines so far: {:#?}",
                        self.seen
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait();
                    return Err(format!(
                        "the log stream ended ({status:?}) before a line containing {needle:?}; lines: {:#?}",
                        self.seen
                    ));
                }
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A marker unlikely to be seen anywhere else.
fn marker(tag: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("marker-{tag}-{:016x}", h.finish())
}

async fn post_log(port: u16, msg: &str) {
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/log?msg={msg}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST /log to the testapp on port {port}: {e}"));
    assert!(r.status().is_success(), "POST /log answered {}", r.status());
}

/// Acceptance check 10: a line the workload writes reaches `wharf service logs -f` within 1 s,
/// prefixed by its instance id; `--tail 1` prints exactly the last line and exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_streams_new_lines_within_a_second() {
    testapp_image().await.expect("test image");
    let mut w = Wharf::start().await;
    let stack = unique_stack("logs");
    let port = free_port();
    let extra = format!("    ports:\n      - \"127.0.0.1:{port}:8080\"\n{HEALTHCHECK}");
    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 1, &extra));
    w.deploy(&file, 0);
    let insts = w
        .wait_ready(&stack, "web", 1, Duration::from_secs(30))
        .await;
    let prefix = format!("{} | ", insts[0].id);
    assert!(
        insts[0].id.starts_with(&format!("{stack}.web.")),
        "instance id {:?} is not <stack>.web.<slot>",
        insts[0].id
    );

    let target = format!("{stack}/web");
    let mut f = Follower::spawn(&w, &target);
    // The stream is open once the startup line (already in the log) has come through.
    let (_, first) = f
        .wait_line("listening on", Instant::now() + Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("waiting for the startup line of {target}: {e}"));
    assert!(
        first.starts_with(&prefix),
        "line {first:?} is not prefixed by {prefix:?}"
    );

    let m = marker("follow");
    let posted = Instant::now();
    post_log(port, &m).await;
    let (at, line) = f
        .wait_line(&m, posted + Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("waiting for the marker line: {e}"));
    let delay = at.saturating_duration_since(posted);
    assert!(
        delay <= Duration::from_secs(1),
        "the marker line took {delay:?} to arrive (limit 1 s)"
    );
    assert_eq!(line, format!("{prefix}{m}"), "the marker line");

    // A second marker, so the last line is known; wait for it to be in the log first.
    let last = marker("tail");
    post_log(port, &last).await;
    f.wait_line(&last, Instant::now() + Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("waiting for the second marker: {e}"));
    drop(f);

    let out = w.cli(&["service", "logs", "--tail", "1", &target]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "wharf service logs --tail 1\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![format!("{prefix}{last}")],
        "--tail 1 must print exactly the last line; stderr:\n{stderr}"
    );
}
