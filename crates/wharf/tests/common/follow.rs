//! `wharf service logs -f …` as a child process whose stdout lines arrive on a channel with the
//! time they were read; killed on drop.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Instant;

pub struct Follower {
    child: Child,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<String>,
}

impl Follower {
    /// Follow the logs of `target` (`STACK/SERVICE`) through the CLI context in `config_dir`.
    pub fn spawn(config_dir: &Path, target: &str) -> Follower {
        let mut child = super::cli_command(config_dir, &["service", "logs", "-f", target])
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
    pub fn wait_line(
        &mut self,
        needle: &str,
        deadline: Instant,
    ) -> Result<(Instant, String), String> {
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
