//! Following a deployment (or a stack removal) to its end, with live progress.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use wharf_client::Client;
use wharf_types::{Deployment, DeploymentState};

use crate::args::OutputFormat;
use crate::error::CliError;
use crate::render::{instance_progress_text, progress_done, progress_text};

const POLL: Duration = Duration::from_millis(250);
/// Consecutive transport failures tolerated while polling (about 5 s).
const MAX_POLL_FAILURES: u32 = 20;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Nothing (JSON output).
    Quiet,
    /// One line per change, for logs and pipes.
    Plain,
    /// Live bars, for a terminal.
    Bars,
}

impl ProgressMode {
    pub fn for_output(output: OutputFormat) -> Self {
        match output {
            OutputFormat::Json => ProgressMode::Quiet,
            OutputFormat::Table if std::io::stdout().is_terminal() => ProgressMode::Bars,
            OutputFormat::Table => ProgressMode::Plain,
        }
    }
}

/// Prints the progress of a deployment as it changes.
pub struct DeploymentProgress {
    mode: ProgressMode,
    last: BTreeMap<String, String>,
    /// Last line shown per instance generation (plain mode).
    last_instances: BTreeMap<(String, u64), String>,
    width: usize,
    multi: Option<MultiProgress>,
    bars: BTreeMap<String, ProgressBar>,
}

impl DeploymentProgress {
    pub fn new(mode: ProgressMode) -> Self {
        DeploymentProgress {
            mode,
            last: BTreeMap::new(),
            last_instances: BTreeMap::new(),
            width: 0,
            multi: None,
            bars: BTreeMap::new(),
        }
    }

    /// The plain lines this update adds (also printed, in plain mode).
    pub fn update(&mut self, d: &Deployment) -> Vec<String> {
        self.width = self.width.max(
            d.services
                .iter()
                .map(|p| p.service.len())
                .max()
                .unwrap_or(0),
        );
        let mut lines = Vec::new();
        for p in &d.services {
            if self.mode == ProgressMode::Plain {
                // Instances whose state changed, old and new, indented under the services.
                for i in &p.instances {
                    let line = instance_progress_text(i);
                    let key = (i.id.clone(), i.generation);
                    if self.last_instances.get(&key) != Some(&line) {
                        self.last_instances.insert(key, line.clone());
                        lines.push(format!("  {line}"));
                    }
                }
            }
            let text = progress_text(p);
            if self.last.get(&p.service) == Some(&text) {
                continue;
            }
            self.last.insert(p.service.clone(), text.clone());
            match self.mode {
                ProgressMode::Quiet => {}
                ProgressMode::Plain => {
                    lines.push(format!("{:<w$}  {text}", p.service, w = self.width));
                }
                ProgressMode::Bars => {
                    let multi = self.multi.get_or_insert_with(|| {
                        MultiProgress::with_draw_target(ProgressDrawTarget::stdout())
                    });
                    let width = self.width;
                    let bar = self.bars.entry(p.service.clone()).or_insert_with(|| {
                        let style = ProgressStyle::with_template(&format!(
                            "{{prefix:<{width}}}  [{{bar:20}}] {{msg}}"
                        ))
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> ");
                        let bar = multi.add(ProgressBar::new(u64::from(p.desired.max(1))));
                        bar.set_style(style);
                        bar.set_prefix(p.service.clone());
                        bar
                    });
                    bar.set_length(u64::from(p.desired.max(1)));
                    bar.set_position(u64::from(p.ready.min(p.desired)));
                    bar.set_message(text);
                }
            }
        }
        if self.mode == ProgressMode::Plain {
            let mut out = std::io::stdout().lock();
            for l in &lines {
                let _ = writeln!(out, "{l}");
            }
            let _ = out.flush();
        }
        lines
    }

    /// Leaves the bars on screen, final.
    pub fn finish(&mut self) {
        for bar in self.bars.values() {
            bar.finish();
        }
    }
}

/// Polls a deployment every 250 ms until it ends or `timeout` passes; shows progress.
/// Returns the final deployment whatever its state; errors on timeout or a lost API.
pub async fn follow_deployment(
    client: &Client,
    id: &str,
    timeout: Duration,
    mode: ProgressMode,
) -> Result<Deployment, CliError> {
    let deadline = Instant::now() + timeout;
    let mut progress = DeploymentProgress::new(mode);
    let mut failures = 0;
    let mut last: Option<Deployment> = None;
    loop {
        match client.deployment(id).await {
            Ok(d) => {
                failures = 0;
                progress.update(&d);
                if d.state != DeploymentState::InProgress {
                    progress.finish();
                    return Ok(d);
                }
                last = Some(d);
            }
            Err(e) if e.is_transient() && failures < MAX_POLL_FAILURES => failures += 1,
            Err(e) => {
                progress.finish();
                return Err(e.into());
            }
        }
        if Instant::now() >= deadline {
            progress.finish();
            return Err(timed_out(id, last.as_ref(), timeout));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn timed_out(id: &str, d: Option<&Deployment>, timeout: Duration) -> CliError {
    let stack = d.map(|d| d.stack.as_str()).unwrap_or("?");
    let details = d
        .map(|d| {
            d.services
                .iter()
                .filter(|p| !progress_done(p))
                .map(|p| format!("still pending: {}: {}", p.service, progress_text(p)))
                .collect()
        })
        .unwrap_or_default();
    CliError::Failed {
        message: format!(
            "timed out after {} waiting for deployment {id} of stack {stack}",
            human_duration(timeout)
        ),
        details,
        hint: Some(format!(
            "the deployment goes on in the background; watch it with `wharf stack ps {stack}`"
        )),
    }
}

/// Turns a finished deployment into success or the error to print.
pub fn outcome(d: &Deployment) -> Result<(), CliError> {
    match d.state {
        DeploymentState::Succeeded | DeploymentState::InProgress => Ok(()),
        DeploymentState::Failed => {
            let mut message = format!("deployment {} of stack {} failed", d.id, d.stack);
            if let Some(m) = &d.message {
                message.push_str(": ");
                message.push_str(m);
            }
            Err(CliError::Failed {
                message,
                details: d
                    .services
                    .iter()
                    .filter_map(|p| p.error.as_ref().map(|e| format!("{}: {e}", p.service)))
                    .collect(),
                hint: Some(format!(
                    "see the instances with `wharf stack ps {}` and their logs with `wharf service logs {}/SERVICE`",
                    d.stack, d.stack
                )),
            })
        }
        DeploymentState::Superseded => Err(CliError::Failed {
            message: format!(
                "deployment {} of stack {} was superseded by a newer deployment",
                d.id, d.stack
            ),
            details: Vec::new(),
            hint: Some(format!("see the stack with `wharf stack ps {}`", d.stack)),
        }),
    }
}

/// `4.2s`, `2m`, `1m30s`.
pub fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 60_000 {
        if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{:.1}s", d.as_secs_f64())
        }
    } else {
        let s = d.as_secs();
        match (s / 3600, (s % 3600) / 60, s % 60) {
            (0, m, 0) => format!("{m}m"),
            (0, m, s) => format!("{m}m{s}s"),
            (h, 0, _) => format!("{h}h"),
            (h, m, _) => format!("{h}h{m}m"),
        }
    }
}

/// A spinner (terminal) or changed-lines printer (pipe) for waits without a total.
pub struct Waiting {
    mode: ProgressMode,
    spinner: Option<ProgressBar>,
    last: String,
}

impl Waiting {
    pub fn new(mode: ProgressMode) -> Self {
        let spinner = (mode == ProgressMode::Bars).then(|| {
            let s = ProgressBar::new_spinner();
            s.enable_steady_tick(Duration::from_millis(120));
            s
        });
        Waiting {
            mode,
            spinner,
            last: String::new(),
        }
    }

    pub fn set(&mut self, msg: String) {
        if msg == self.last {
            return;
        }
        if let Some(s) = &self.spinner {
            s.set_message(msg.clone());
        } else if self.mode == ProgressMode::Plain {
            println!("{msg}");
        }
        self.last = msg;
    }

    pub fn finish(&mut self) {
        if let Some(s) = self.spinner.take() {
            s.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::ServiceProgress;

    fn dep(state: DeploymentState, services: Vec<ServiceProgress>) -> Deployment {
        Deployment {
            id: "d1".into(),
            stack: "shop".into(),
            revision: 3,
            state,
            message: None,
            services,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn p(service: &str, desired: u32, updated: u32, ready: u32) -> ServiceProgress {
        ServiceProgress {
            service: service.into(),
            desired,
            updated,
            ready,
            error: None,
            note: None,
            instances: vec![],
        }
    }

    #[test]
    fn plain_progress_prints_only_changes() {
        let mut quiet = DeploymentProgress::new(ProgressMode::Quiet);
        let mut plain = DeploymentProgress::new(ProgressMode::Plain);
        let d1 = dep(
            DeploymentState::InProgress,
            vec![p("web", 3, 1, 0), p("api", 1, 0, 0)],
        );
        assert_eq!(
            plain.update(&d1),
            vec!["web  1/3 updated, 0/3 ready", "api  0/1 updated, 0/1 ready"]
        );
        assert!(plain.update(&d1).is_empty());
        let d2 = dep(
            DeploymentState::InProgress,
            vec![p("web", 3, 2, 1), p("api", 1, 0, 0)],
        );
        assert_eq!(plain.update(&d2), vec!["web  2/3 updated, 1/3 ready"]);
        assert!(quiet.update(&d2).is_empty());
    }

    #[test]
    fn outcomes() {
        assert!(outcome(&dep(DeploymentState::Succeeded, vec![])).is_ok());
        let mut failing = p("web", 2, 2, 0);
        failing.error = Some("image not found".into());
        let mut d = dep(DeploymentState::Failed, vec![failing, p("api", 1, 1, 1)]);
        d.message = Some("2 instances failed to start".into());
        let e = outcome(&d).unwrap_err();
        assert_eq!(e.exit_status(), 1);
        let lines = e.render();
        assert_eq!(
            lines[0],
            "error: deployment d1 of stack shop failed: 2 instances failed to start"
        );
        assert_eq!(lines[1], "  web: image not found");
        assert!(lines[2].starts_with("  hint: "));
        assert!(outcome(&dep(DeploymentState::Superseded, vec![])).is_err());
    }

    #[test]
    fn timeouts_say_what_is_pending() {
        let d = dep(
            DeploymentState::InProgress,
            vec![p("web", 3, 3, 3), p("api", 2, 1, 0)],
        );
        let e = timed_out("d1", Some(&d), Duration::from_secs(300));
        assert_eq!(
            e.render()[..2],
            [
                "error: timed out after 5m waiting for deployment d1 of stack shop".to_string(),
                "  still pending: api: 1/2 updated, 0/2 ready".to_string(),
            ]
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(human_duration(Duration::from_secs(120)), "2m");
        assert_eq!(human_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(human_duration(Duration::from_secs(3600)), "1h");
    }
}
