//! Load through the ingress with `wrk` (Debian package `wrk`): on a background thread, back-to-back
//! short segments, each two `wrk` runs at once: one on keep-alive connections and one with
//! `Connection: close`, so every request of it is a new connection. Each run's report is parsed
//! and summed; the load goes on until the test calls [`Load::stop`] (or [`Load::finish`]) and at
//! least [`LoadOptions::min_requests`] requests were made.
//!
//! Use with `#[path = "common/load.rs"] mod load;`. What counts as failed: every socket error
//! `wrk` reports (connect, read, write, timeout: a response slower than
//! [`LoadOptions::timeout`]) and every response with a status above 399.
#![allow(dead_code)]

use parking_lot::Mutex;
use std::fmt;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the traffic issue asks of every check: at least this many requests.
pub const MIN_REQUESTS: u64 = 50_000;

const WRK: &str = "wrk";
const KEEP_ALIVE: &str = "keep-alive";
/// Segments with failures an assertion message describes; beyond, only counted.
const MAX_NOTES: usize = 20;

/// How to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The URL every request GETs.
    pub url: String,
    /// Connections of the keep-alive run (one `wrk` thread).
    pub keep_alive: u32,
    /// Connections of the `Connection: close` run (one `wrk` thread).
    pub new_connections: u32,
    /// Length of one segment (whole seconds: `wrk -d` takes no fractions).
    pub segment: Duration,
    /// A response slower than this counts as a timeout (a failure); whole seconds.
    pub timeout: Duration,
    /// The load goes on until at least this many requests were made.
    pub min_requests: u64,
    /// After `stop`, at most this long to reach `min_requests`; below it then, `stop` panics.
    pub cap: Duration,
}

impl LoadOptions {
    pub fn new(url: &str) -> LoadOptions {
        LoadOptions {
            url: url.to_string(),
            keep_alive: 8,
            new_connections: 4,
            segment: Duration::from_secs(3),
            timeout: Duration::from_secs(5),
            min_requests: MIN_REQUESTS,
            cap: Duration::from_secs(120),
        }
    }

    /// Requests at most on the wire at once: one per connection.
    pub fn connections(&self) -> u64 {
        u64::from(self.keep_alive + self.new_connections)
    }
}

/// One `wrk` report, or the sum of several.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Responses (any status).
    pub responses: u64,
    /// Responses with a status above 399 (wrk: "Non-2xx or 3xx responses").
    pub non_2xx: u64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    /// Responses slower than the timeout (also counted in `responses`).
    pub timeout: u64,
}

impl Counts {
    pub fn socket_errors(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }

    /// Failed requests: socket errors and error statuses.
    pub fn failed(&self) -> u64 {
        self.socket_errors() + self.non_2xx
    }

    /// Requests made: every response, and every request that ended in a connect, read or write
    /// error (a timeout is a slow response, already counted).
    pub fn requests(&self) -> u64 {
        self.responses + self.connect + self.read + self.write
    }

    fn add(&mut self, o: &Counts) {
        self.responses += o.responses;
        self.non_2xx += o.non_2xx;
        self.connect += o.connect;
        self.read += o.read;
        self.write += o.write;
        self.timeout += o.timeout;
    }

    /// Parses wrk's report: "N requests in", "Socket errors: connect a, read b, write c,
    /// timeout d" (absent when all are 0), "Non-2xx or 3xx responses: N" (absent when 0).
    pub fn parse(report: &str) -> Option<Counts> {
        let mut c = Counts::default();
        let mut seen = false;
        for line in report.lines().map(str::trim) {
            if let Some((n, _)) = line.split_once(" requests in ") {
                c.responses = n.trim().parse().ok()?;
                seen = true;
            } else if let Some(rest) = line.strip_prefix("Socket errors:") {
                for part in rest.split(',') {
                    let (name, n) = part.trim().split_once(' ')?;
                    let n: u64 = n.trim().parse().ok()?;
                    match name {
                        "connect" => c.connect = n,
                        "read" => c.read = n,
                        "write" => c.write = n,
                        "timeout" => c.timeout = n,
                        _ => return None,
                    }
                }
            } else if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
                c.non_2xx = n.trim().parse().ok()?;
            }
        }
        seen.then_some(c)
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests: {} ok, {} failed (non-2xx {}; socket errors: connect {}, read {}, write {}, timeout {})",
            self.requests(),
            self.requests() - self.failed().min(self.requests()),
            self.failed(),
            self.non_2xx,
            self.connect,
            self.read,
            self.write,
            self.timeout
        )
    }
}

/// One segment: when it started (since the load's start) and what each run counted.
#[derive(Clone, Debug, Default)]
pub struct Segment {
    pub start: Duration,
    pub keep_alive: Counts,
    pub new_connections: Counts,
}

/// What a load did, segment by segment.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub segments: Vec<Segment>,
    /// From the load's start to the end of its last segment.
    pub elapsed: Duration,
}

impl Figures {
    pub fn keep_alive(&self) -> Counts {
        let mut t = Counts::default();
        for s in &self.segments {
            t.add(&s.keep_alive);
        }
        t
    }
    pub fn new_connections(&self) -> Counts {
        let mut t = Counts::default();
        for s in &self.segments {
            t.add(&s.new_connections);
        }
        t
    }
    pub fn total(&self) -> Counts {
        let mut t = self.keep_alive();
        t.add(&self.new_connections());
        t
    }
    pub fn requests(&self) -> u64 {
        self.total().requests()
    }
    pub fn failed(&self) -> u64 {
        self.total().failed()
    }

    /// The segments that started at or after `t` (since the load's start, see
    /// [`Load::elapsed`]).
    pub fn since(&self, t: Duration) -> Figures {
        Figures {
            segments: self
                .segments
                .iter()
                .filter(|s| s.start >= t)
                .cloned()
                .collect(),
            elapsed: self.elapsed,
        }
    }
}

impl fmt::Display for Figures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in {} segments over {:.1?} [keep-alive: {}] [new connections: {}]",
            self.total(),
            self.segments.len(),
            self.elapsed,
            self.keep_alive(),
            self.new_connections()
        )?;
        let failing: Vec<(usize, &Segment)> = self
            .segments
            .iter()
            .enumerate()
            .filter(|(_, s)| s.keep_alive.failed() + s.new_connections.failed() > 0)
            .collect();
        for (n, s) in failing.iter().take(MAX_NOTES) {
            write!(
                f,
                "; failures in segment {} at +{:.1?}: keep-alive: {}, new connections: {}",
                n + 1,
                s.start,
                s.keep_alive,
                s.new_connections
            )?;
        }
        if failing.len() > MAX_NOTES {
            write!(
                f,
                "; {} more segments with failures",
                failing.len() - MAX_NOTES
            )?;
        }
        Ok(())
    }
}

/// A load running on a background thread; [`Load::stop`] ends it.
pub struct Load {
    opts: LoadOptions,
    stop: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    so_far: Arc<Mutex<Figures>>,
    t0: Instant,
    thread: Option<JoinHandle<Result<Figures, String>>>,
}

/// Panics unless `wrk` runs.
fn require_wrk() {
    match Command::new(WRK)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    {
        Ok(_) => {}
        Err(e) => panic!(
            "cannot run `{WRK}` ({e}): the traffic tests use it as load generator; install wrk: \
             apt-get install wrk"
        ),
    }
}

impl Load {
    /// Starts the default load (8 keep-alive connections, 4 with a new connection per request,
    /// 3 s segments, at least 50,000 requests) on `url`.
    pub fn start(url: &str) -> Load {
        Self::start_with(LoadOptions::new(url))
    }

    /// Starts a load; returns once the first segment's `wrk` runs are under way.
    pub fn start_with(opts: LoadOptions) -> Load {
        require_wrk();
        assert!(
            opts.segment >= Duration::from_secs(1) && opts.segment.subsec_nanos() == 0,
            "segments are whole seconds: {:?}",
            opts.segment
        );
        assert!(
            opts.timeout >= Duration::from_secs(1) && opts.timeout.subsec_nanos() == 0,
            "the timeout is whole seconds: {:?}",
            opts.timeout
        );
        let stop = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let so_far = Arc::new(Mutex::new(Figures::default()));
        let started = Arc::new((Mutex::new(false), parking_lot::Condvar::new()));
        let t0 = Instant::now();
        let thread = {
            let (opts, stop, abort, so_far, started) = (
                opts.clone(),
                stop.clone(),
                abort.clone(),
                so_far.clone(),
                started.clone(),
            );
            std::thread::spawn(move || run(t0, &opts, &stop, &abort, &so_far, &started))
        };
        let (lock, cvar) = &*started;
        let mut s = lock.lock();
        while !*s && !thread.is_finished() {
            cvar.wait_for(&mut s, Duration::from_millis(100));
        }
        drop(s);
        Load {
            opts,
            stop,
            abort,
            so_far,
            t0,
            thread: Some(thread),
        }
    }

    /// Runs a load of its own: starts it and stops it at once, so it makes the minimum of
    /// requests and ends.
    pub fn run(opts: LoadOptions) -> Figures {
        Self::start_with(opts).stop()
    }

    pub fn options(&self) -> &LoadOptions {
        &self.opts
    }

    /// Time since the load started, to compare with [`Segment::start`] (see [`Figures::since`]).
    pub fn elapsed(&self) -> Duration {
        self.t0.elapsed()
    }

    /// The figures of the segments done so far.
    pub fn so_far(&self) -> Figures {
        self.so_far.lock().clone()
    }

    /// Ends the load once the minimum of requests is reached (after the current segment); the
    /// figures. Blocks: from async code use [`Load::finish`]. Panics if `wrk` could not run, or
    /// if the cap ran out below the minimum.
    pub fn stop(mut self) -> Figures {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take().expect("running");
        let figures = match thread.join() {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("the load thread panicked"),
        };
        eprintln!("load on {}: {figures}", self.opts.url);
        assert!(
            figures.requests() >= self.opts.min_requests,
            "the load made fewer than {} requests within {:?} after stop: {figures}",
            self.opts.min_requests,
            self.opts.cap
        );
        figures
    }

    /// [`Load::stop`] off the async runtime.
    pub async fn finish(self) -> Figures {
        match tokio::task::spawn_blocking(move || self.stop()).await {
            Ok(f) => f,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

impl Drop for Load {
    /// A test that panics with a load running: end it after the current segment.
    fn drop(&mut self) {
        self.abort.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The load thread: segments until stopped (with enough requests), aborted or capped.
fn run(
    t0: Instant,
    opts: &LoadOptions,
    stop: &AtomicBool,
    abort: &AtomicBool,
    so_far: &Mutex<Figures>,
    started: &(Mutex<bool>, parking_lot::Condvar),
) -> Result<Figures, String> {
    let mut stopped_at: Option<Instant> = None;
    let mut figures = Figures::default();
    loop {
        if abort.load(Ordering::SeqCst) {
            break;
        }
        if stop.load(Ordering::SeqCst) {
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if figures.requests() >= opts.min_requests || at.elapsed() >= opts.cap {
                break;
            }
        }
        let seg_start = t0.elapsed();
        let secs = format!("{}s", opts.segment.as_secs());
        // wrk takes whole seconds (or minutes, hours): no `ms`.
        let timeout = format!("{}s", opts.timeout.as_secs().max(1));
        let spawn = |conns: u32, close: bool| {
            let mut cmd = Command::new(WRK);
            cmd.args(["-t1", "-c", &conns.to_string(), "-d", &secs])
                .args(["--timeout", &timeout]);
            if close {
                cmd.args(["-H", "Connection: close"]);
            }
            cmd.arg(&opts.url)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("cannot run {WRK}: {e}; install wrk: apt-get install wrk"))
        };
        let ka = spawn(opts.keep_alive, false)?;
        let nc = spawn(opts.new_connections, true)?;
        {
            let (lock, cvar) = started;
            *lock.lock() = true;
            cvar.notify_all();
        }
        let results = [
            (ka.wait_with_output(), KEEP_ALIVE),
            (nc.wait_with_output(), "new connections"),
        ];
        let mut seg = Segment {
            start: seg_start,
            ..Segment::default()
        };
        for (out, kind) in results {
            let out = out.map_err(|e| format!("waiting for {WRK}: {e}"))?;
            let counts = segment_counts(&out).map_err(|e| {
                format!(
                    "segment {} at +{seg_start:.1?} ({kind}): {e}\nso far: {figures}",
                    figures.segments.len() + 1
                )
            })?;
            match kind {
                KEEP_ALIVE => seg.keep_alive = counts,
                _ => seg.new_connections = counts,
            }
        }
        figures.segments.push(seg);
        figures.elapsed = t0.elapsed();
        *so_far.lock() = figures.clone();
    }
    figures.elapsed = t0.elapsed();
    Ok(figures)
}

/// A run's counts, or why it gave none (wrk refused its arguments, or could not connect at all
/// and gave up: the load ends there, and `stop` panics with this).
fn segment_counts(out: &Output) -> Result<Counts, String> {
    let report = String::from_utf8_lossy(&out.stdout);
    match Counts::parse(&report) {
        Some(c) if out.status.success() => Ok(c),
        _ => Err(format!(
            "{WRK} gave no report ({}):\n{}\n{}",
            out.status,
            report.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// A few requests by hand (no wrk): how many of `n` GETs of `url` answered each body (trimmed);
/// failed requests count under `error: …`.
pub async fn answers(url: &str, n: usize) -> std::collections::BTreeMap<String, usize> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..n {
        let key = match client.get(url).send().await {
            Ok(r) if r.status().is_success() => match r.text().await {
                Ok(body) => body.trim().to_string(),
                Err(e) => format!("error: {e}"),
            },
            Ok(r) => format!("error: status {}", r.status()),
            Err(e) => format!("error: {e}"),
        };
        *seen.entry(key).or_default() += 1;
    }
    seen
}

/// Wait until `n` different instances answer `hostnames` (an ingress URL of `/env/HOSTNAME`) and
/// none fails: the ingress has picked up every endpoint. The error says what was seen.
pub async fn wait_all_answer(hostnames: &str, n: usize, what: &str) -> Result<(), String> {
    wharf_testkit::wait_for(what, Duration::from_secs(30), || async {
        let seen = answers(hostnames, 3 * n).await;
        if seen.len() == n && !seen.keys().any(|k| k.starts_with("error")) {
            wharf_testkit::Check::Done(())
        } else {
            wharf_testkit::not_yet(seen)
        }
    })
    .await
    .map_err(|e| e.to_string())
}

#[test]
fn wrk_reports_parse() {
    let clean = "Running 3s test @ http://127.0.0.1:1/\n  1 threads and 8 connections\n  \
                 Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     4.99ms    \
                 6.62ms  77.95ms   89.37%\n  7184 requests in 3.04s, 1.10MB read\n\
                 Requests/sec:   2362.50\nTransfer/sec:    369.14KB\n";
    assert_eq!(
        Counts::parse(clean),
        Some(Counts {
            responses: 7184,
            ..Counts::default()
        })
    );
    let bad = "  16514 requests in 10.04s, 2.52MB read\n  Socket errors: connect 1, read 2, write \
               3, timeout 4\n  Non-2xx or 3xx responses: 5\nRequests/sec:   1644.83\n";
    let c = Counts::parse(bad).expect("parses");
    assert_eq!(
        c,
        Counts {
            responses: 16514,
            non_2xx: 5,
            connect: 1,
            read: 2,
            write: 3,
            timeout: 4
        }
    );
    assert_eq!(c.failed(), 15);
    assert_eq!(c.requests(), 16520);
    assert_eq!(
        Counts::parse("unable to connect to 127.0.0.1:1 Connection refused"),
        None
    );
}
