//! bench/scale: one real `wharf server` (release binary, loopback, temp data dir) with N simulated
//! agents (default 1,000) heartbeating to it over the real agent protocol, holding S stacks x R
//! replicas (default 100 x 100 = 10,000 instances).
//!
//! The simulated agents are tasks of this one process. Each joins with the real handshake (its own
//! P-256 key and CSR, a `JoinRequest` over TLS pinned by the token's CA fingerprint), then keeps a
//! mutual-TLS stream: `Hello` with facts (docker driver, 16 CPUs, 64 GiB), then a full `Report`
//! every second and at once on every `Desired` frame, acknowledging that state: each assignment
//! running (healthy if its spec has a health check) at its generation. A fake node that instantly
//! runs what it is told, so everything measured is the master's side.
//!
//! Measured while the agents heartbeat: the master's resident memory and CPU (from /proc), the
//! latency of `GET /v1/services`, and of a small deploy (the PUT alone, and PUT to `succeeded`).
//! Run it with `bench/scale/run` (which builds in release mode); options: `--agents N --stacks S
//! --replicas R --join-concurrency C --get-calls G --deploys D --window-secs W --node-timeout T`.
//! Traffic stays on 127.0.0.1; the server is killed and the temp dir removed at the end.

use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use wharf_client::{Client, Context};
use wharf_link::frame::{read_frame, write_frame};
use wharf_link::rustls::ClientConfig;
use wharf_link::tls::{join_client_config, master_name, node_client_config};
use wharf_link::tokio_rustls::TlsConnector;
use wharf_link::tokio_rustls::client::TlsStream;
use wharf_link::{JoinToken, NodeKey};
use wharf_types::{
    DeployRequest, DeploySpec, DeploymentState, DriverKind, Health, InstanceReport, InstanceState,
    JoinRequest, JoinResponse, NodeDesired, NodeFacts, NodeReport, NodeState, ServiceSpec,
    StackSpec, ToAgent, ToMaster,
};

/// Time a simulated agent allows for a connection and TLS handshake (2 busy cores are slow).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// As the real agent (`wharf-agent/src/link.rs`): a beat five times a second, a full report only
/// when it changed.
const HEARTBEAT: Duration = Duration::from_millis(200);
/// Targets from the issue: at 1,000 agents / 10,000 instances, and at the Kubernetes envelope
/// (5,000 agents / 100,000 instances), where figures without a target are reported as they are.
struct Targets {
    get_p99_ms: Option<f64>,
    put_p99_ms: Option<f64>,
    done_p99_ms: f64,
    rss_mb: f64,
    cpu_pct: Option<f64>,
    converge_s: Option<f64>,
}

impl Targets {
    fn for_agents(agents: usize) -> Targets {
        if agents >= 5_000 {
            Targets {
                get_p99_ms: None,
                put_p99_ms: None,
                done_p99_ms: 1_000.0,
                rss_mb: 1_024.0,
                cpu_pct: None,
                converge_s: Some(60.0),
            }
        } else {
            Targets {
                get_p99_ms: Some(50.0),
                put_p99_ms: Some(100.0),
                done_p99_ms: 150.0,
                rss_mb: 200.0,
                cpu_pct: Some(15.0),
                converge_s: None,
            }
        }
    }
}

/// "< N unit" for a target, or nothing.
fn under(t: Option<f64>, unit: &str) -> String {
    t.map(|t| format!("< {t} {unit}")).unwrap_or_default()
}

struct Opts {
    agents: usize,
    stacks: usize,
    replicas: u32,
    join_concurrency: usize,
    get_calls: usize,
    deploys: usize,
    window_secs: u64,
    node_timeout: String,
}

fn opts() -> anyhow::Result<Opts> {
    let mut o = Opts {
        agents: 1000,
        stacks: 100,
        replicas: 100,
        join_concurrency: 200,
        get_calls: 200,
        deploys: 30,
        window_secs: 10,
        node_timeout: "30s".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--bench" {
            continue; // passed by `cargo bench`
        }
        let mut val = || args.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--agents" => o.agents = val()?.parse()?,
            "--stacks" => o.stacks = val()?.parse()?,
            "--replicas" => o.replicas = val()?.parse()?,
            "--join-concurrency" => o.join_concurrency = val()?.parse::<usize>()?.max(1),
            "--get-calls" => o.get_calls = val()?.parse::<usize>()?.max(1),
            "--deploys" => o.deploys = val()?.parse::<usize>()?.max(1),
            "--window-secs" => o.window_secs = val()?.parse::<u64>()?.max(1),
            "--node-timeout" => o.node_timeout = val()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

// ---------------------------------------------------------------------------------------------
// The server process and /proc.

/// The `wharf server` child: stopped (TERM, then KILL) when dropped, whatever happened.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of the man page, utime 14 and stime 15.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn start_server(wharf: &Path, dir: &Path, opts: &Opts) -> anyhow::Result<(Server, String, String)> {
    let help = Command::new(wharf)
        .args(["server", "--help"])
        .output()
        .context("cannot run the wharf binary")?;
    let has_timeout = String::from_utf8_lossy(&help.stdout).contains("--node-timeout");
    let (api, agents) = (free_port()?, free_port()?);
    // WHARF_BENCH_LISTEN=0.0.0.0: the API beyond loopback, so HTTPS (the client reaches it on
    // 127.0.0.1 through the context the server writes, its CA pinned).
    let listen = std::env::var("WHARF_BENCH_LISTEN").unwrap_or_else(|_| "127.0.0.1".into());
    let api_addr = format!("{listen}:{api}");
    let agent_addr = format!("127.0.0.1:{agents}");
    let log = dir.join("server.log");
    let mut cmd = Command::new(wharf);
    cmd.args(["server", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen", &api_addr, "--agent-listen", &agent_addr])
        .env("WHARF_CONFIG_DIR", dir.join("config"))
        // WHARF_BENCH_LOG (e.g. `warn,wharf_master::deployer=debug`): the server's log filter;
        // with WHARF_BENCH_KEEP_LOG=FILE its log is copied there at the end.
        .env(
            "WHARF_LOG",
            std::env::var("WHARF_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    // WHARF_BENCH_STORE=etcd://…: the master's store on etcd (issue 11) instead of SQLite.
    if let Ok(store) = std::env::var("WHARF_BENCH_STORE") {
        cmd.args(["--store", &store]);
        println!("server: store {store}");
    }
    if has_timeout {
        cmd.args(["--node-timeout", &opts.node_timeout]);
        println!(
            "server: --node-timeout {} (slow simulated agents on a busy machine are not declared unreachable)",
            opts.node_timeout
        );
    } else {
        println!(
            "server: this wharf has no --node-timeout flag: the master's default node timeout applies"
        );
    }
    let child = cmd.spawn().context("cannot start wharf server")?;
    Ok((Server { child, log }, api_addr, agent_addr))
}

async fn wait_ready(server: &mut Server, dir: &Path) -> anyhow::Result<Client> {
    let ctx_path = dir.join("config").join("context.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!("wharf server exited ({status}):\n{}", server.log_tail());
        }
        if let Ok(Some(ctx)) = Context::load_from(&ctx_path) {
            let client = Client::from_context(&ctx).expect("a client of the context");
            if client.healthz().await.is_ok() {
                return Ok(client);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "wharf server did not come up in 30 s:\n{}",
                server.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn create_token(wharf: &Path, dir: &Path, uses: usize) -> anyhow::Result<String> {
    let out = Command::new(wharf)
        .args(["node", "token", "create", "--uses"])
        .arg(uses.to_string())
        .args(["--ttl", "1h", "-o", "json"])
        .env("WHARF_CONFIG_DIR", dir.join("config"))
        .output()
        .context("cannot run wharf node token create")?;
    if !out.status.success() {
        bail!(
            "wharf node token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["token"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no token in {v}"))
}

// ---------------------------------------------------------------------------------------------
// Simulated agents.

#[derive(Default)]
struct Stats {
    connected: AtomicUsize,
    reports: AtomicU64,
    beats: AtomicU64,
    desired_frames: AtomicU64,
    disconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
}

async fn connect(addr: &str, config: Arc<ClientConfig>) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
    let _ = tcp.set_nodelay(true);
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(config).connect(master_name(), tcp),
    )
    .await
    .map_err(|_| anyhow!("TLS handshake timed out"))?
    .context("TLS handshake")
}

/// The real join: a fresh key, a CSR, a `JoinRequest` on a connection pinned to the CA.
async fn join(
    addr: &str,
    token: &str,
    pinned: Arc<ClientConfig>,
    host: &str,
) -> anyhow::Result<Arc<ClientConfig>> {
    let key = NodeKey::generate()?;
    let csr_pem = key.csr(host)?;
    let mut tls = connect(addr, pinned).await?;
    let req = JoinRequest {
        token: token.to_string(),
        csr_pem,
        hostname: host.to_string(),
    };
    write_frame(&mut tls, &req).await?;
    let resp: JoinResponse = tokio::time::timeout(CONNECT_TIMEOUT, read_frame(&mut tls))
        .await
        .map_err(|_| anyhow!("no join response in time"))??
        .ok_or_else(|| anyhow!("closed without a join response"))?;
    match resp {
        JoinResponse::Accepted {
            cert_pem, ca_pem, ..
        } => Ok(node_client_config(&ca_pem, &cert_pem, &key.key_pem())?),
        JoinResponse::Refused { message, .. } => bail!("join refused: {message}"),
    }
}

fn facts(host: &str) -> NodeFacts {
    NodeFacts {
        name: host.to_string(),
        drivers: vec![DriverKind::Docker],
        docker_version: Some("27.0.0-sim".into()),
        cpus: 16,
        memory_bytes: 64 << 30,
        os: "linux".into(),
        storage_driver: Some("overlay2".into()),
        kernel: "6.0.0-sim".into(),
        max_instances: 0,
    }
}

/// What a node that instantly runs its desired state reports. `started` keeps each generation's
/// start time, so an unchanged desired state gives an identical report.
fn acknowledge(d: &NodeDesired, started: &mut HashMap<(String, u64), u64>) -> NodeReport {
    let now = now_ms() / 1000;
    let mut next = HashMap::with_capacity(d.assignments.len());
    let instances = d
        .assignments
        .iter()
        .map(|a| {
            let key = (a.id.clone(), a.generation);
            let at = started.get(&key).copied().unwrap_or(now);
            next.insert(key, at);
            InstanceReport {
                id: a.id.clone(),
                generation: a.generation,
                spec_hash: a.spec_hash.clone(),
                state: InstanceState::Running,
                health: if a.spec.healthcheck.is_some() {
                    Health::Healthy
                } else {
                    Health::None
                },
                container_id: Some(format!("sim{:012x}", a.generation)),
                exit_code: None,
                error: None,
                health_output: None,
                restarts: 0,
                started_at: Some(at),
                finished_at: None,
                address: None,
            }
        })
        .collect();
    *started = next;
    NodeReport {
        instances,
        purged: d.purges.iter().map(|p| p.stack.clone()).collect(),
        ..Default::default()
    }
}

/// One simulated agent: keeps its stream open (reconnecting after a second if it drops) until
/// `stop`. `gate` bounds how many agents handshake at once.
async fn agent(
    idx: usize,
    addr: String,
    config: Arc<ClientConfig>,
    gate: Arc<Semaphore>,
    stats: Arc<Stats>,
    mut stop: watch::Receiver<bool>,
) {
    let host = format!("sim-{idx:04}");
    // Heartbeats of different agents spread over the second, like independent hosts.
    let phase = Duration::from_millis((idx as u64 * 7919) % HEARTBEAT.as_millis() as u64);
    loop {
        let r = session(&addr, &config, &host, phase, &gate, &stats, &mut stop).await;
        if *stop.borrow() {
            return;
        }
        stats.disconnects.fetch_add(1, Ordering::Relaxed);
        let why = match r {
            Ok(()) => "closed".to_string(),
            Err(e) => format!("{e:#}"),
        };
        *stats.last_error.lock() = Some(format!("{host}: {why}"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn session(
    addr: &str,
    config: &Arc<ClientConfig>,
    host: &str,
    phase: Duration,
    gate: &Semaphore,
    stats: &Stats,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let tls = {
        let _permit = gate.acquire().await?;
        let mut tls = connect(addr, config.clone()).await?;
        let hello = ToMaster::Hello {
            facts: facts(host),
            labels: BTreeMap::new(),
            log_credits: false,
            heartbeats: true,
            seen_revision: 0,
            exec: false,
            scan: false,
        };
        tokio::time::timeout(WRITE_TIMEOUT, write_frame(&mut tls, &hello))
            .await
            .map_err(|_| anyhow!("hello timed out"))??;
        tls
    };
    stats.connected.fetch_add(1, Ordering::Relaxed);
    let r = stream(tls, phase, stats, stop).await;
    stats.connected.fetch_sub(1, Ordering::Relaxed);
    r
}

async fn stream(
    tls: TlsStream<TcpStream>,
    phase: Duration,
    stats: &Stats,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (mut rd, mut wr) = tokio::io::split(tls);
    let (dtx, mut drx) = watch::channel::<Option<NodeDesired>>(None);
    // The master beats: it takes `ToMaster::Heartbeat` too.
    let beats = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let master_beats = beats.clone();
    let reader = tokio::spawn(async move {
        loop {
            match read_frame::<_, ToAgent>(&mut rd).await {
                Ok(Some(ToAgent::Desired(d))) => {
                    dtx.send_replace(Some(*d));
                }
                Ok(Some(ToAgent::Heartbeat)) => master_beats.store(true, Ordering::Relaxed),
                Ok(Some(_)) => {} // log requests: nothing runs here
                Ok(None) => return "the master closed the stream".to_string(),
                Err(e) => return format!("read: {e}"),
            }
        }
    });
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut started = HashMap::new();
    // Like the real agent: nothing is reported before the master's first desired state.
    let mut report: Option<NodeReport> = None;
    // Whether the master has the current report already.
    let mut sent = false;
    let result = loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = drx.changed() => {
                if r.is_err() {
                    break Err(anyhow!("stream ended"));
                }
                let d = drx.borrow_and_update().clone();
                if let Some(d) = d {
                    stats.desired_frames.fetch_add(1, Ordering::Relaxed);
                    let r = acknowledge(&d, &mut started);
                    if report.as_ref() != Some(&r) {
                        report = Some(r);
                        sent = false;
                    }
                }
            }
            _ = stop.changed() => break Ok(()),
        }
        let Some(r) = &report else { continue };
        let beat = sent && beats.load(Ordering::Relaxed);
        let frame = if beat {
            ToMaster::Heartbeat
        } else {
            ToMaster::Report(r.clone())
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write_frame(&mut wr, &frame)).await {
            Ok(Ok(())) => {
                sent = true;
                if beat {
                    stats.beats.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.reports.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => break Err(anyhow!("write: {e}")),
            Err(_) => break Err(anyhow!("write timed out")),
        }
    };
    reader.abort();
    match (&result, reader.await) {
        (Err(_), Ok(why)) => Err(anyhow!("{why}")),
        _ => result,
    }
}

// ---------------------------------------------------------------------------------------------
// Workload and measurements.

fn stack(name: &str, replicas: u32, env: Option<(&str, String)>) -> StackSpec {
    let mut svc = ServiceSpec {
        image: Some("bench/app:1".into()),
        deploy: DeploySpec {
            replicas,
            ..Default::default()
        },
        ..Default::default()
    };
    if let Some((k, v)) = env {
        // The probe stack: no monitor window and no drain grace, so PUT->succeeded is the
        // master's own latency (the default window of 5 s and grace of 2 s per replaced
        // instance would dominate it).
        svc.environment.insert(k.to_string(), v);
        svc.deploy.update_config.monitor_ms = 0;
        svc.wharf.drain_grace_ms = Some(0);
    }
    StackSpec {
        name: name.to_string(),
        services: BTreeMap::from([("app".to_string(), svc)]),
        ..Default::default()
    }
}

async fn running_total(client: &Client) -> anyhow::Result<(u64, u64)> {
    let list = client.list_services(None).await?;
    Ok(list.iter().fold((0, 0), |(r, d), s| {
        (r + u64::from(s.running), d + u64::from(s.replicas))
    }))
}

async fn wait_deployment(client: &Client, id: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let d = client.deployment(id).await?;
        match d.state {
            DeploymentState::Succeeded => return Ok(()),
            DeploymentState::InProgress if Instant::now() < deadline => {}
            DeploymentState::InProgress => {
                bail!("deployment {id} still in progress after {limit:?}")
            }
            other => bail!("deployment {id} ended {other:?}: {:?}", d.message),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Nearest-rank percentile of sorted samples, in milliseconds.
fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

struct Row {
    what: String,
    value: String,
    target: String,
    met: String,
}

fn row(what: &str, value: String, target: &str, met: Option<bool>) -> Row {
    Row {
        what: what.into(),
        value,
        target: target.into(),
        met: match met {
            Some(true) => "yes".into(),
            Some(false) => "NO".into(),
            None => "-".into(),
        },
    }
}

fn print_table(rows: &[Row]) {
    let w = |f: fn(&Row) -> &String, h: &str| {
        rows.iter()
            .map(|r| f(r).len())
            .max()
            .unwrap_or(0)
            .max(h.len())
    };
    let (a, b, c) = (
        w(|r| &r.what, "measure"),
        w(|r| &r.value, "value"),
        w(|r| &r.target, "target"),
    );
    println!("{:<a$}  {:>b$}  {:<c$}  met", "measure", "value", "target");
    println!("{}", "-".repeat(a + b + c + 9));
    for r in rows {
        println!(
            "{:<a$}  {:>b$}  {:<c$}  {}",
            r.what, r.value, r.target, r.met
        );
    }
}

fn main() -> anyhow::Result<()> {
    let opts = opts()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(opts))
}

async fn run(opts: Opts) -> anyhow::Result<()> {
    let wharf = std::env::var_os("WHARF_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_wharf")));
    let dir = tempfile::Builder::new().prefix("wharf-scale-").tempdir()?;
    let instances = opts.stacks as u64 * u64::from(opts.replicas);
    println!(
        "bench/scale: {} simulated agents, {} stacks x {} replicas = {instances} instances; {} cores; all on 127.0.0.1",
        opts.agents,
        opts.stacks,
        opts.replicas,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let (mut server, _api, agent_addr) = start_server(&wharf, dir.path(), &opts)?;
    let client = wait_ready(&mut server, dir.path()).await?;
    let pid = server.pid();
    let idle_rss = rss_mb(pid);

    // Peak resident memory, sampled twice a second for the whole run.
    let peak = Arc::new(Mutex::new(idle_rss));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                let r = rss_mb(pid);
                {
                    let mut p = peak.lock();
                    *p = p.max(r);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    // WHARF_BENCH_OBSERVE=1 (issue 14): the master observed as operators do, for the whole run:
    // its /metrics scraped every 5 s (as a Prometheus would) and one event stream open.
    let observers = if std::env::var("WHARF_BENCH_OBSERVE").is_ok_and(|v| v == "1") {
        println!("observed: /metrics scraped every 5 s, one event stream followed");
        let (c1, c2) = (client.clone(), client.clone());
        vec![
            tokio::spawn(async move {
                loop {
                    if let Err(e) = c1.metrics_text().await {
                        eprintln!("scrape failed: {e}");
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }),
            tokio::spawn(async move {
                use futures::StreamExt;
                match c2.events(None, None, None, true).await {
                    Ok(mut s) => while s.next().await.is_some() {},
                    Err(e) => eprintln!("event stream failed: {e}"),
                }
            }),
        ]
    } else {
        vec![]
    };
    let outcome = measure(
        &opts,
        &wharf,
        dir.path(),
        &mut server,
        &client,
        &agent_addr,
        idle_rss,
        &peak,
    )
    .await;
    sampler.abort();
    observers.iter().for_each(|o| o.abort());
    if outcome.is_err() {
        eprintln!("server log (tail):\n{}", server.log_tail());
    }
    if let Some(keep) = std::env::var_os("WHARF_BENCH_KEEP_LOG") {
        let _ = std::fs::copy(&server.log, &keep);
    }
    drop(server);
    drop(dir);
    println!("cleaned up: server stopped, temp dir removed");
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    opts: &Opts,
    wharf: &Path,
    dir: &Path,
    server: &mut Server,
    client: &Client,
    agent_addr: &str,
    idle_rss: f64,
    peak: &Arc<Mutex<f64>>,
) -> anyhow::Result<()> {
    let pid = server.pid();
    let instances = opts.stacks as u64 * u64::from(opts.replicas);
    let token = create_token(wharf, dir, opts.agents)?;
    let fingerprint = JoinToken::parse(&token)?.ca_fingerprint;
    let pinned = join_client_config(&fingerprint)?;

    // 1. Join: the real handshake, a bounded number at a time.
    let t = Instant::now();
    let gate = Arc::new(Semaphore::new(opts.join_concurrency));
    let mut joins = Vec::with_capacity(opts.agents);
    let conflicts = Arc::new(AtomicU64::new(0));
    for i in 0..opts.agents {
        let (gate, addr, token, pinned) = (
            gate.clone(),
            agent_addr.to_string(),
            token.clone(),
            pinned.clone(),
        );
        let conflicts = conflicts.clone();
        joins.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            let host = format!("sim-{i:04}");
            // A master may refuse a join that raced others for the token's use count: like an
            // operator would, try again after a short pause (counted and reported).
            let mut attempt = 0u64;
            loop {
                match join(&addr, &token, pinned.clone(), &host).await {
                    Err(e) if attempt < 100 && format!("{e}").contains("several nodes at once") => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                        attempt += 1;
                        let pause = 20 + (i as u64 * 7919 + attempt * 104_729) % 200;
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                    r => return r,
                }
            }
        }));
    }
    let mut configs = Vec::with_capacity(opts.agents);
    for j in joins {
        configs.push(j.await?.context("a simulated agent could not join")?);
    }
    let join_time = t.elapsed();
    let join_conflicts = conflicts.load(Ordering::Relaxed);
    println!(
        "joined {} agents in {:.1} s ({} at a time; key + CSR + TLS + signed certificate each); \
         {join_conflicts} joins refused for racing on the token and retried",
        opts.agents,
        join_time.as_secs_f64(),
        opts.join_concurrency
    );

    // 2. Connect: mutual TLS, hello, then heartbeats for the rest of the run.
    let t = Instant::now();
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(opts.agents);
    for (i, config) in configs.into_iter().enumerate() {
        tasks.push(tokio::spawn(agent(
            i,
            agent_addr.to_string(),
            config,
            gate.clone(),
            stats.clone(),
            stop_rx.clone(),
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let nodes = client.list_nodes().await?;
        let ready = nodes.iter().filter(|n| n.state == NodeState::Ready).count();
        if stats.connected.load(Ordering::Relaxed) >= opts.agents && ready >= opts.agents {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {} agents connected ({ready} ready) after 300 s; last error: {:?}",
                stats.connected.load(Ordering::Relaxed),
                opts.agents,
                stats.last_error.lock()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let connect_time = t.elapsed();
    println!(
        "connected {} agents (mutual TLS + hello) in {:.1} s; all ready",
        opts.agents,
        connect_time.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let nodes_rss = rss_mb(pid);

    // 3. The workload: S stacks x 1 service x R replicas, then wait until every one runs.
    let t = Instant::now();
    let mut first_deployments = Vec::new();
    for s in 0..opts.stacks {
        let name = format!("bench{s:03}");
        let r = client
            .deploy_stack(&name, &DeployRequest::of(stack(&name, opts.replicas, None)))
            .await?;
        first_deployments.extend(r.deployment_id);
    }
    let put_all = t.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (running, desired) = running_total(client).await?;
        if desired >= instances && running >= instances {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {running} of {instances} instances running after 600 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let converge = t.elapsed();
    println!(
        "deployed {} stacks ({:.1} s of PUTs); all {instances} instances reported running after {:.1} s",
        opts.stacks,
        put_all.as_secs_f64(),
        converge.as_secs_f64()
    );
    // The deployments end once their monitor windows (the default 5 s) are over: until then
    // the deployer watches 10,000 new instances, which is not the steady state measured next.
    // 120 s at 10,000 instances, more in proportion beyond.
    let limit = Duration::from_secs(120.max(instances / 80));
    for id in &first_deployments {
        wait_deployment(client, id, limit).await?;
    }
    let settled = t.elapsed();
    println!(
        "all {} deployments succeeded after {:.1} s (monitor windows over)",
        first_deployments.len(),
        settled.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 4. Steady state: CPU and memory of the master over a window of heartbeats only.
    let hz = clock_ticks_per_sec();
    let me = std::process::id().to_string();
    let (s0, b0, r0, t0) = (
        cpu_ticks(&pid.to_string()),
        cpu_ticks(&me),
        stats.reports.load(Ordering::Relaxed) + stats.beats.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(opts.window_secs)).await;
    let (s1, b1, r1, el) = (
        cpu_ticks(&pid.to_string()),
        cpu_ticks(&me),
        stats.reports.load(Ordering::Relaxed) + stats.beats.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    );
    let server_cpu = (s1 - s0) as f64 / hz / el * 100.0;
    let bench_cpu = (b1 - b0) as f64 / hz / el * 100.0;
    let reports_per_s = (r1 - r0) as f64 / el;
    let steady_rss = rss_mb(pid);

    // 5. GET /v1/services, sequentially.
    let mut gets = Vec::with_capacity(opts.get_calls);
    for _ in 0..opts.get_calls {
        let t = Instant::now();
        let list = client.list_services(None).await?;
        gets.push(t.elapsed());
        if list.len() != opts.stacks {
            bail!("GET /v1/services listed {} services", list.len());
        }
    }
    gets.sort();

    // 6. Small deploys: one service of 2 replicas (replaced one at a time, no monitor window), a
    //    changed environment variable each time.
    let probe = "probe";
    let r = client
        .deploy_stack(
            probe,
            &DeployRequest::of(stack(probe, 2, Some(("ROUND", "0".into())))),
        )
        .await?;
    if let Some(id) = &r.deployment_id {
        wait_deployment(client, id, Duration::from_secs(60)).await?;
    }
    let (mut puts, mut dones) = (Vec::new(), Vec::new());
    for round in 1..=opts.deploys {
        let req = DeployRequest::of(stack(probe, 2, Some(("ROUND", round.to_string()))));
        let t = Instant::now();
        let r = client.deploy_stack(probe, &req).await?;
        puts.push(t.elapsed());
        let id = r
            .deployment_id
            .ok_or_else(|| anyhow!("a changed stack started no deployment"))?;
        wait_deployment(client, &id, Duration::from_secs(60)).await?;
        dones.push(t.elapsed());
    }
    puts.sort();
    dones.sort();
    let final_rss = rss_mb(pid);
    let peak_rss = *peak.lock();

    // Health of the run: every agent still connected, every node still ready.
    let nodes = client.list_nodes().await?;
    let not_ready = nodes.iter().filter(|n| n.state != NodeState::Ready).count();
    let disconnects = stats.disconnects.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if let Some(status) = server.child.try_wait()? {
        bail!("wharf server exited during the run ({status})");
    }

    println!();
    let targets = Targets::for_agents(opts.agents);
    let mut rows = vec![
        row(
            "agents joined (s)",
            format!("{:.1}", join_time.as_secs_f64()),
            "",
            None,
        ),
        row(
            "  join attempts refused (token race), retried",
            join_conflicts.to_string(),
            "0",
            Some(join_conflicts == 0),
        ),
        row(
            "agents connected, mTLS (s)",
            format!("{:.1}", connect_time.as_secs_f64()),
            "",
            None,
        ),
        row(
            &format!("{instances} instances running (s)"),
            format!("{:.1}", converge.as_secs_f64()),
            &under(targets.converge_s, "s"),
            targets.converge_s.map(|t| converge.as_secs_f64() < t),
        ),
        row("master RSS idle (MB)", format!("{idle_rss:.0}"), "", None),
        row(
            &format!("master RSS, {} nodes (MB)", opts.agents),
            format!("{nodes_rss:.0}"),
            "",
            None,
        ),
        row(
            "master RSS steady (MB)",
            format!("{steady_rss:.0}"),
            &under(Some(targets.rss_mb), "MB"),
            Some(steady_rss < targets.rss_mb),
        ),
        row(
            "master RSS peak (MB)",
            format!("{peak_rss:.0}"),
            &under(Some(targets.rss_mb), "MB"),
            Some(peak_rss < targets.rss_mb),
        ),
        row(
            "master RSS at end (MB)",
            format!("{final_rss:.0}"),
            &under(Some(targets.rss_mb), "MB"),
            Some(final_rss < targets.rss_mb),
        ),
        row(
            &format!(
                "master CPU, {} s of heartbeats (% of 1 core)",
                opts.window_secs
            ),
            format!("{server_cpu:.0}"),
            &under(targets.cpu_pct, "%"),
            targets.cpu_pct.map(|t| server_cpu < t),
        ),
        row(
            "  bench process CPU, same window (%)",
            format!("{bench_cpu:.0}"),
            "",
            None,
        ),
        row(
            "  reports received (/s)",
            format!("{reports_per_s:.0}"),
            "",
            None,
        ),
    ];
    let n = opts.get_calls;
    rows.push(row(
        &format!("GET /v1/services p50 (ms, {n} calls)"),
        format!("{:.1}", pct(&gets, 50.0)),
        "",
        None,
    ));
    let p = pct(&gets, 99.0);
    rows.push(row(
        &format!("GET /v1/services p99 (ms, {n} calls)"),
        format!("{p:.1}"),
        &under(targets.get_p99_ms, "ms"),
        targets.get_p99_ms.map(|t| p < t),
    ));
    let n = opts.deploys;
    rows.push(row(
        &format!("deploy PUT p50 (ms, {n} deploys)"),
        format!("{:.1}", pct(&puts, 50.0)),
        "",
        None,
    ));
    let p = pct(&puts, 99.0);
    rows.push(row(
        &format!("deploy PUT p99 (ms, {n} deploys)"),
        format!("{p:.1}"),
        &under(targets.put_p99_ms, "ms"),
        targets.put_p99_ms.map(|t| p < t),
    ));
    rows.push(row(
        "deploy PUT->succeeded p50 (ms)",
        format!("{:.1}", pct(&dones, 50.0)),
        "",
        None,
    ));
    let p = pct(&dones, 99.0);
    rows.push(row(
        "deploy PUT->succeeded p99 (ms)",
        format!("{p:.1}"),
        &under(Some(targets.done_p99_ms), "ms"),
        Some(p < targets.done_p99_ms),
    ));
    rows.push(row(
        "agent reconnects / nodes not ready at end",
        format!("{disconnects} / {not_ready}"),
        "0 / 0",
        Some(disconnects == 0 && not_ready == 0),
    ));
    print_table(&rows);
    println!();
    println!(
        "notes: p99 of {} deploys is about their maximum. PUT->succeeded is polled every 10 ms; the CLI polls every 250 ms, so it sees up to 250 ms more. \
         The simulated agents share the 2 cores with the master (bench CPU above).",
        opts.deploys
    );
    println!(
        "peer ratio: no peer (Swarm, Nomad, Kubernetes) runs in this benchmark, so no ratio is computed; \
         bench/deploy compares against Docker Swarm on one engine."
    );
    if disconnects > 0 {
        println!("last agent error: {:?}", stats.last_error.lock());
    }
    Ok(())
}
