//! Following a deployment (or a stack removal) to its end, with live progress.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use wharf_client::{Client, ClientError};
use wharf_types::{Backoff, Deployment, DeploymentState};

use crate::args::OutputFormat;
use crate::error::CliError;
use crate::render::{instance_progress_text, progress_done, progress_text};

const POLL: Duration = Duration::from_millis(250);
/// How long the API may hold a deployment poll open waiting for a change.
const LONG_POLL: Duration = Duration::from_secs(10);
/// A poll that has not answered after this long counts as a lost API (the client's own request
/// timeout is much longer).
const POLL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a follower keeps trying while the API is unreachable (the master restarting, say),
/// and how fast: the first retry after `backoff.base`, doubling up to `backoff.max` between tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub give_up_after: Duration,
    pub backoff: Backoff,
}

/// Up to 60 s, retrying after 250 ms, 500 ms, 1 s, then every 2 s.
pub const API_RETRY: RetryPolicy = RetryPolicy {
    give_up_after: Duration::from_secs(60),
    backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(2)),
};

/// What a follower does after a failed poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// The first failure of an outage: say that the API is lost, then try again after this.
    Announce(Duration),
    /// Try again after this (said already).
    Retry(Duration),
    /// The API has been gone for this long, the policy's limit: stop following.
    GiveUp(Duration),
}

/// The state of one outage of the API, pure: callers pass the time in.
#[derive(Clone, Debug)]
pub struct Outage {
    policy: RetryPolicy,
    /// When the current outage began (its first failed poll).
    since: Option<Instant>,
    failures: u32,
}

impl Outage {
    pub fn new(policy: RetryPolicy) -> Self {
        Outage {
            policy,
            since: None,
            failures: 0,
        }
    }

    /// A poll failed because the API could not be reached at `now`.
    pub fn failed(&mut self, now: Instant) -> AfterFailure {
        let since = *self.since.get_or_insert(now);
        self.failures += 1;
        let down = now.saturating_duration_since(since);
        if down >= self.policy.give_up_after {
            return AfterFailure::GiveUp(down);
        }
        let backoff = self.policy.backoff.delay(self.failures - 1);
        // The last try lands on the limit, not past it.
        let wait = backoff.min(self.policy.give_up_after - down);
        if self.failures == 1 {
            AfterFailure::Announce(wait)
        } else {
            AfterFailure::Retry(wait)
        }
    }

    /// A poll got an answer at `now`: the outage (if any) is over; returns how long it lasted.
    pub fn answered(&mut self, now: Instant) -> Option<Duration> {
        self.failures = 0;
        self.since
            .take()
            .map(|since| now.saturating_duration_since(since))
    }
}

/// Whether an error means the API is (for now) not there: nothing answers, the connection broke,
/// no answer in time, or the server failed (5xx, e.g. 503 while starting).
pub fn api_lost(e: &ClientError) -> bool {
    e.is_transient() || matches!(e.status(), Some(500..=599))
}

/// The most precise words for why the API was lost: the innermost cause of a transport error
/// (`Connection refused (os error 111)`), or the server's message.
pub fn lost_cause(e: &ClientError) -> String {
    if e.status().is_some() {
        return e.to_string();
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

/// Follows the API through outages: says once that it is lost, says when it is back, and tells
/// when to give up. `goes_on` names what carries on meanwhile (`the deploy`, `the removal`).
pub(crate) struct Reconnect {
    outage: Outage,
    url: String,
    goes_on: &'static str,
    /// Why the API was last lost.
    pub cause: String,
}

/// The API stayed away for the whole retry window.
pub(crate) struct ApiGone {
    pub url: String,
    pub down_for: Duration,
    pub cause: String,
}

impl ApiGone {
    /// How long the API was gone, for people (`9.3s`, `1m`).
    pub fn down_for_text(&self) -> String {
        human_duration(round_tenths(self.down_for))
    }
}

impl Reconnect {
    pub fn new(url: &str, goes_on: &'static str) -> Self {
        Reconnect {
            outage: Outage::new(API_RETRY),
            url: url.to_string(),
            goes_on,
            cause: String::new(),
        }
    }

    /// A poll answered; says (through `say`) that the API is back if it was lost.
    pub fn answered(&mut self, say: impl FnOnce(&str)) {
        if let Some(down) = self.outage.answered(Instant::now()) {
            say(&format!(
                "the API at {} is back after {}",
                self.url,
                human_duration(round_tenths(down))
            ));
        }
    }

    /// A poll could not reach the API because of `cause`: how long to wait before the next try,
    /// or that the API is gone for good.
    pub fn lost(&mut self, cause: String, say: impl FnOnce(&str)) -> Result<Duration, ApiGone> {
        self.cause = cause;
        match self.outage.failed(Instant::now()) {
            AfterFailure::Announce(wait) => {
                say(&format!(
                    "lost the API at {} ({}); retrying for up to {} s — {} goes on on the master",
                    self.url,
                    self.cause,
                    self.outage.policy.give_up_after.as_secs(),
                    self.goes_on
                ));
                Ok(wait)
            }
            AfterFailure::Retry(wait) => Ok(wait),
            AfterFailure::GiveUp(down_for) => Err(ApiGone {
                url: self.url.clone(),
                down_for,
                cause: self.cause.clone(),
            }),
        }
    }
}

fn round_tenths(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis().div_ceil(100) as u64 * 100)
}

/// One poll of the deployment, bounded by [`POLL_TIMEOUT`]: `Err(cause)` when the API is lost;
/// an answer, or any other error, comes back as `Ok`.
async fn poll_deployment(
    client: &Client,
    id: &str,
    seen: Option<&Deployment>,
) -> Result<Result<Deployment, ClientError>, String> {
    // A long poll: the API answers when the deployment changes (or after `LONG_POLL`).
    let call = async {
        match seen {
            Some(d) => client.deployment_after(id, d.updated_at, LONG_POLL).await,
            None => client.deployment(id).await,
        }
    };
    match tokio::time::timeout(LONG_POLL + POLL_TIMEOUT, call).await {
        Err(_) => Err(format!("no answer in {}", human_duration(POLL_TIMEOUT))),
        Ok(Err(e)) if api_lost(&e) => Err(lost_cause(&e)),
        Ok(r) => Ok(r),
    }
}

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
            o if o.is_document() => ProgressMode::Quiet,
            _ if std::io::stdout().is_terminal() => ProgressMode::Bars,
            _ => ProgressMode::Plain,
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

    /// Prints a note on stderr, without tearing the bars.
    pub fn note(&self, msg: &str) {
        match &self.multi {
            Some(multi) => multi.suspend(|| eprintln!("{msg}")),
            None => eprintln!("{msg}"),
        }
    }

    /// Leaves the bars on screen, final.
    pub fn finish(&mut self) {
        for bar in self.bars.values() {
            bar.finish();
        }
    }
}

/// Follows a deployment until it ends or `timeout` passes, showing progress: long polls (the API
/// answers as soon as it changed), or every 250 ms from an API that answers at once.
/// Rides out an outage of the API (a master restarting) for up to [`API_RETRY`], saying so on
/// stderr. Returns the final deployment whatever its state; errors on timeout or a lost API.
pub async fn follow_deployment(
    client: &Client,
    id: &str,
    timeout: Duration,
    mode: ProgressMode,
) -> Result<Deployment, CliError> {
    let deadline = Instant::now() + timeout;
    let mut progress = DeploymentProgress::new(mode);
    let mut api = Reconnect::new(&client.url(), "the deploy");
    let mut last: Option<Deployment> = None;
    loop {
        let wait = match poll_deployment(client, id, last.as_ref()).await {
            Ok(Ok(d)) => {
                api.answered(|m| progress.note(m));
                progress.update(&d);
                if d.state != DeploymentState::InProgress {
                    progress.finish();
                    return Ok(d);
                }
                // Changed: ask again at once (the API waits for the next change). Unchanged (a
                // long poll that timed out, or an API that does not wait): poll again shortly.
                let changed = last.as_ref().is_none_or(|l| l.updated_at != d.updated_at);
                last = Some(d);
                if changed { Duration::ZERO } else { POLL }
            }
            Ok(Err(e)) => {
                progress.finish();
                return Err(e.into());
            }
            Err(cause) => match api.lost(cause, |m| progress.note(m)) {
                Ok(wait) => wait,
                Err(gone) => {
                    progress.finish();
                    return Err(api_gone_while_following(id, last.as_ref(), &gone));
                }
            },
        };
        if Instant::now() >= deadline {
            progress.finish();
            return Err(timed_out(id, last.as_ref(), timeout));
        }
        tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// The API did not come back while following deployment `id`: the deploy may well go on.
fn api_gone_while_following(id: &str, d: Option<&Deployment>, gone: &ApiGone) -> CliError {
    let stack = d.map(|d| d.stack.as_str()).unwrap_or("STACK");
    CliError::Failed {
        message: format!(
            "lost the API at {} for {} while following deployment {id} of stack {stack} ({})",
            gone.url,
            gone.down_for_text(),
            gone.cause
        ),
        details: d.map(pending).unwrap_or_default(),
        hint: Some(format!(
            "the deploy may still be going on on the master; once the API is back, check it with \
             `wharf stack ps {stack}`, or run `wharf stack deploy` again (it is idempotent: it \
             changes nothing that is already deployed)"
        )),
    }
}

/// `still pending: SERVICE: progress` for each service not done yet.
fn pending(d: &Deployment) -> Vec<String> {
    d.services
        .iter()
        .filter(|p| !progress_done(p))
        .map(|p| format!("still pending: {}: {}", p.service, progress_text(p)))
        .collect()
}

fn timed_out(id: &str, d: Option<&Deployment>, timeout: Duration) -> CliError {
    let stack = d.map(|d| d.stack.as_str()).unwrap_or("?");
    let details = d.map(pending).unwrap_or_default();
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

    /// Prints a note on stderr, without tearing the spinner.
    pub fn note(&self, msg: &str) {
        match &self.spinner {
            Some(s) => s.suspend(|| eprintln!("{msg}")),
            None => eprintln!("{msg}"),
        }
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
            trigger: None,
            images: Default::default(),
            by: None,
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
    fn outages_back_off_then_give_up_after_the_limit() {
        let t0 = Instant::now();
        let mut o = Outage::new(API_RETRY);
        let ms = Duration::from_millis;
        // Said once, then retried after 250 ms, 500 ms, 1 s, then every 2 s.
        assert_eq!(o.failed(t0), AfterFailure::Announce(ms(250)));
        assert_eq!(o.failed(t0 + ms(250)), AfterFailure::Retry(ms(500)));
        assert_eq!(o.failed(t0 + ms(750)), AfterFailure::Retry(ms(1000)));
        assert_eq!(o.failed(t0 + ms(1750)), AfterFailure::Retry(ms(2000)));
        assert_eq!(o.failed(t0 + ms(3750)), AfterFailure::Retry(ms(2000)));
        // Far beyond the old 5 s limit it still retries; the last try lands on the limit.
        assert_eq!(o.failed(t0 + ms(30_000)), AfterFailure::Retry(ms(2000)));
        assert_eq!(o.failed(t0 + ms(59_500)), AfterFailure::Retry(ms(500)));
        assert_eq!(
            o.failed(t0 + ms(60_000)),
            AfterFailure::GiveUp(Duration::from_secs(60))
        );
    }

    #[test]
    fn an_answer_ends_the_outage_and_the_next_one_starts_afresh() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut o = Outage::new(API_RETRY);
        assert_eq!(o.answered(t0), None, "no outage, nothing to say");
        assert!(matches!(o.failed(t0), AfterFailure::Announce(_)));
        assert!(matches!(o.failed(t0 + ms(250)), AfterFailure::Retry(_)));
        assert_eq!(o.answered(t0 + ms(9300)), Some(ms(9300)));
        assert_eq!(o.answered(t0 + ms(9550)), None);
        // A second outage is announced again, with the backoff and the limit from its start.
        let t1 = t0 + ms(50_000);
        assert_eq!(o.failed(t1), AfterFailure::Announce(ms(250)));
        assert_eq!(o.failed(t1 + ms(20_000)), AfterFailure::Retry(ms(500)));
    }

    #[test]
    fn lost_api_means_transport_failures_and_server_errors() {
        let api = |status| ClientError::Api {
            status,
            error: wharf_types::ApiError {
                code: "x".into(),
                message: "m".into(),
                hint: None,
                location: None,
            },
        };
        assert!(api_lost(&api(503)));
        assert!(api_lost(&api(500)));
        assert!(!api_lost(&api(404)));
        assert!(!api_lost(&api(401)));
        assert!(!api_lost(&api(422)));
    }

    #[test]
    fn giving_up_says_the_deploy_may_go_on_and_how_to_check() {
        let d = dep(DeploymentState::InProgress, vec![p("web", 2, 2, 1)]);
        let gone = ApiGone {
            url: "http://127.0.0.1:7700".into(),
            down_for: Duration::from_millis(60_100),
            cause: "Connection refused (os error 111)".into(),
        };
        let e = api_gone_while_following("d1", Some(&d), &gone);
        assert_eq!(e.exit_status(), 1);
        let lines = e.render();
        assert_eq!(
            lines[0],
            "error: lost the API at http://127.0.0.1:7700 for 1m while following deployment d1 \
             of stack shop (Connection refused (os error 111))"
        );
        assert_eq!(lines[1], "  still pending: web: 2/2 updated, 1/2 ready");
        assert!(lines[2].contains("may still be going on"), "{lines:?}");
        assert!(lines[2].contains("`wharf stack ps shop`"), "{lines:?}");
        assert!(lines[2].contains("`wharf stack deploy` again"), "{lines:?}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(Duration::from_millis(4200)), "4.2s");
        assert_eq!(human_duration(Duration::from_secs(120)), "2m");
        assert_eq!(human_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(human_duration(Duration::from_secs(3600)), "1h");
    }
}
