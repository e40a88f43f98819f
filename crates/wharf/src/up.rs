//! `wharf up`: the master and an agent in one process, an embedded store in a data directory, the
//! API on loopback, and a CLI context so that every later `wharf …` command just works.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use wharf_agent::Agent;
use wharf_agent::driver::Driver;
use wharf_agent::driver::docker::DockerDriver;
use wharf_agent::driver::process::ProcessDriver;
use wharf_client::{Client, Context};
use wharf_master::Master;
use wharf_master::mutate::Actor;
use wharf_store::SqliteStore;
use wharf_types::DriverKind;

use crate::local::{LocalControl, LocalLink};
use crate::shared::hostname;

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  wharf up                                  start with an empty cluster of one node
  wharf up examples/hello/stack.yml         start and deploy a stack, following its progress
  wharf up --data-dir /var/lib/wharf --listen 127.0.0.1:7700

State (stacks, tokens) lives in DATA_DIR/wharf.db and survives restarts; containers keep running
while Wharf is stopped and are adopted when it starts again.")]
pub struct UpArgs {
    /// Stack file to deploy once Wharf is up
    pub file: Option<PathBuf>,
    /// Stack name for FILE [default: the file's `name:` or its directory name]
    #[arg(long)]
    pub name: Option<String>,
    /// Where the store and process logs live [default: $XDG_DATA_HOME/wharf or ~/.local/share/wharf]
    #[arg(long, env = "WHARF_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the API (loopback by default: the API is for this machine only; beyond
    /// loopback it serves HTTPS only, with a certificate from the cluster CA)
    #[arg(long, env = "WHARF_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// A node silent this long is unreachable and its instances move elsewhere. Nodes beat five
    /// times a second; raise it (e.g. 5s) on links that stall for seconds
    #[arg(long, env = "WHARF_NODE_TIMEOUT", value_name = "DURATION", default_value = "1s",
          value_parser = wharf_cli::parse_duration)]
    pub node_timeout: std::time::Duration,
    #[command(flatten)]
    pub capacity: Capacity,
    /// Allow `build:` contexts under DIR (repeatable) [default: the current directory, $HOME
    /// and the temporary directory]
    #[arg(long = "build-root", value_name = "DIR", value_delimiter = ',')]
    #[arg(env = "WHARF_BUILD_ROOTS")]
    pub build_roots: Vec<PathBuf>,
    /// Also append every audit record to FILE as a JSON line
    #[arg(long, env = "WHARF_AUDIT_LOG", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    #[command(flatten)]
    pub registry: crate::shared::RegistryArgs,
    /// The admission policy (YAML, see examples/policy.yaml) [default: as `wharf server`'s,
    /// but bind mounts are allowed from the build roots]
    #[arg(long, env = "WHARF_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// If the store (DATA_DIR/wharf.db) is corrupt, move it aside to wharf.db.corrupt-<unix
    /// seconds> and start with an empty store (it knows none of the stacks or running containers;
    /// the node holds back, leaving them running, unless --accept-store is given too)
    #[arg(long)]
    pub reset_store: bool,
    /// Let the store in DATA_DIR take over this node even though it is not the cluster the node
    /// belongs to (new, emptied, restored from an old backup): what it does not know is removed.
    /// Without it, Wharf holds back and leaves every container running
    #[arg(long)]
    pub accept_store: bool,
    #[command(flatten)]
    pub deploy: wharf_cli::DeployOpts,
    #[command(flatten)]
    pub store: crate::shared::StoreArgs,
}

/// The build roots of `wharf up`: those given, else where a user's stack files live (the
/// directory of the stack file it deploys, the current directory, the home directory, the
/// temporary directory).
fn build_roots(given: &[PathBuf], file: Option<&Path>) -> Vec<PathBuf> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or(p.to_path_buf());
    if !given.is_empty() {
        return given.iter().map(|p| absolute(p)).collect();
    }
    let mut roots: Vec<PathBuf> = file
        .and_then(|f| absolute(f).parent().map(Path::to_path_buf))
        .into_iter()
        .collect();
    roots.extend(std::env::current_dir());
    roots.extend(std::env::var_os("HOME").map(PathBuf::from));
    roots.push(std::env::temp_dir());
    roots
}

/// What a node offers the scheduler (`wharf up` and `wharf agent`).
#[derive(Debug, clap::Args)]
pub struct Capacity {
    /// The most instances the scheduler places on this node; a deploy asking for more fails
    /// with the reason. Each instance is a container: past a few hundred the engine slows down
    /// (Kubernetes allows 110 pods per node by default)
    #[arg(long, env = "WHARF_MAX_INSTANCES", value_name = "N",
          default_value_t = wharf_types::DEFAULT_MAX_INSTANCES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_instances: u32,
}

pub async fn run(args: UpArgs, global: &wharf_cli::GlobalOpts) -> ExitCode {
    exit_code(up(args, global).await)
}

/// The exit code of a command's run: its own, or 1 after printing the error.
pub(crate) fn exit_code(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(1)
    })
}

/// How the server processes (`up`, `server`, `agent`, `store`) write their log on stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One line per event for people; colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line (time, level, target, fields), for log collectors.
    Json,
}

/// The log on stderr: `WHARF_LOG` filters it (default `warn`), `format` shapes it.
pub(crate) fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let spec = std::env::var("WHARF_LOG").unwrap_or_else(|_| "warn".to_string());
    // The DNS server logs every query at info: quiet unless asked for by name.
    let spec = if spec.contains("hickory") {
        spec
    } else {
        format!("{spec},hickory_server=warn")
    };
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        // No ANSI escape codes in a file or a pipe (`wharf up 2> wharf.log`).
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

pub(crate) fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("wharf");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/wharf"),
        None => PathBuf::from(".wharf-data"),
    }
}

/// The node's id: made once, kept in the data directory, so a restart is the same node.
fn node_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let id = format!("node-{:08x}", rand_u32());
    std::fs::write(&path, &id).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// This node's agent: the Docker driver (or, with the engine out of reach, a warning, then
/// `docker_hint` when given), the process driver, and service discovery on every stack network
/// (`host` adds, in a cluster, the routes and the WireGuard tunnel to the other nodes; the key
/// pair is kept in `data_dir`).
pub(crate) async fn node_agent(
    node: &str,
    host: Option<(
        Box<dyn wharf_agent::hostnet::Host>,
        wharf_agent::tunnel::Setup,
    )>,
    data_dir: &Path,
    accept_store: bool,
    docker_hint: Option<&str>,
    registry: Arc<dyn wharf_agent::mirror::Source>,
    peers: Option<(
        tokio::net::TcpListener,
        Arc<wharf_link::rustls::ServerConfig>,
    )>,
) -> anyhow::Result<Arc<Agent>> {
    wharf_agent::metrics::describe();
    let dns = Arc::new(wharf_agent::dns::Dns::new(
        wharf_agent::dns::host_upstreams(),
    ));
    let networks = match host {
        // A cluster node: routes, firewall and the WireGuard tunnel to the other nodes.
        Some((host, setup)) => {
            let keys = wharf_agent::tunnel::Keys::load_or_create(data_dir)
                .map_err(|e| anyhow::anyhow!("the node's WireGuard key: {e}"))?;
            wharf_agent::stacknet::StackNetworks::with_tunnel(Some(dns), Some(host), setup, keys)
        }
        None => wharf_agent::stacknet::StackNetworks::new(Some(dns), None),
    };
    let mut drivers: Vec<Arc<dyn Driver>> = Vec::new();
    let mut unavailable = BTreeMap::new();
    // The node's mirror of the cluster's registry, on loopback, for the engine's pulls.
    let mirror_dir = data_dir.join("mirror");
    let mirror = wharf_agent::mirror::Mirror::open(&mirror_dir, registry).with_context(|| {
        format!(
            "cannot keep the registry mirror in {}",
            mirror_dir.display()
        )
    })?;
    let listener = wharf_agent::mirror::Mirror::bind(&mirror_dir)
        .await
        .context("cannot listen on loopback for the registry mirror")?;
    let mirror_addr = listener.local_addr()?.to_string();
    if let Some((listener, tls)) = peers {
        tokio::spawn(wharf_agent::mirror::peer::serve(
            mirror.clone(),
            listener,
            tls,
        ));
    }
    tokio::spawn(mirror.serve(listener));
    match DockerDriver::connect().await {
        Ok(d) => drivers.push(Arc::new(
            d.for_node(node)
                .with_networks(networks.clone())
                .with_mirror(mirror_addr),
        )),
        Err(e) => {
            eprintln!(
                "warning: the Docker engine is not reachable: {}",
                e.describe()
            );
            if let Some(hint) = docker_hint {
                eprintln!("{hint}");
            }
            unavailable.insert(
                DriverKind::Docker,
                format!("docker engine not reachable on this node: {}", e.message),
            );
        }
    }
    drivers.push(Arc::new(ProcessDriver::new()));
    Ok(Agent::build(
        drivers,
        unavailable,
        Some(networks),
        membership(data_dir, accept_store)?,
    ))
}

/// The cluster this node belongs to, remembered in its data directory (`--accept-store` forgets
/// it first, so the store at hand is adopted).
pub(crate) fn membership(
    data_dir: &Path,
    accept_store: bool,
) -> anyhow::Result<wharf_agent::membership::Membership> {
    use wharf_agent::membership::Membership;
    if accept_store {
        Membership::forget(data_dir).with_context(|| {
            format!(
                "cannot forget the cluster remembered in {}",
                data_dir.display()
            )
        })?;
    }
    Membership::load(data_dir).map_err(|e| anyhow::anyhow!(e))
}

/// Create the data directory (mode 0700: it holds the store, keys and certificates) and take its
/// lock: one process per data directory, since the store has a single owner. The kernel releases
/// the lock when the process dies, even by kill -9.
pub(crate) fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let lock_path = data_dir.join("lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        anyhow::bail!(
            "another wharf is using the data directory {} (stop it first, or choose another with --data-dir)",
            data_dir.display()
        );
    }
    Ok(lock)
}

/// Open the store in `data_dir`, make the master, and make sure the CLI context reaches it at
/// `url`. Returns the master and where the context file is. A corrupt store is refused with what
/// to do, or, with `reset_store`, moved aside for an empty one. The keys are opened with the key
/// file, unless the store is `autolock`ed (the caller unlocks it).
pub(crate) async fn open_master(
    data_dir: &Path,
    config: wharf_master::MasterConfig,
    url: &str,
    reset_store: bool,
    autolock: bool,
) -> anyhow::Result<(Master, PathBuf)> {
    let store = open_store(&data_dir.join("wharf.db"), reset_store)?;
    open_master_on(
        Master::with_config(Arc::new(store), config),
        data_dir,
        url,
        autolock,
    )
    .await
}

/// [`open_master`] for a master made on any store (`wharf server --store etcd://…`).
pub(crate) async fn open_master_on(
    master: Master,
    data_dir: &Path,
    url: &str,
    autolock: bool,
) -> anyhow::Result<(Master, PathBuf)> {
    if !autolock {
        master.open_keys(data_dir).await.map_err(hinted)?;
    }
    master.open_audit_trail().await?;
    let ctx_path = ensure_context(&master, url, None).await?;
    Ok((master, ctx_path))
}

/// A master's error with its hint on a line of its own.
pub(crate) fn hinted(e: wharf_master::Error) -> anyhow::Error {
    match &e {
        wharf_master::Error::Invalid { hint: Some(h), .. }
        | wharf_master::Error::Unauthorized { hint: Some(h), .. } => {
            anyhow::anyhow!("{e}\n  hint: {h}")
        }
        _ => e.into(),
    }
}

/// What a fresh store means, said wherever one is offered or made.
const FRESH_STORE: &str = "an empty store does not know the stacks, tokens, nodes or running \
    containers: deploy the stacks again";

/// The error a corrupt store is refused with: exactly one `error:` line (printed by the caller)
/// and a hint. Not wrapped in more context, so it reads `error: the store … is corrupt (…)`.
#[derive(Debug)]
struct CorruptStore {
    path: PathBuf,
    detail: String,
}

impl std::fmt::Display for CorruptStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = self.path.display();
        write!(
            f,
            "the store {file} is corrupt ({})\n  hint: restore {file} from a backup (with Wharf \
             stopped), or start fresh with --reset-store, which moves it and its -wal/-shm aside \
             to {file}.corrupt-<unix seconds>; {FRESH_STORE}",
            self.detail
        )
    }
}

impl std::error::Error for CorruptStore {}

/// Open the store at `path`; see [`open_master`].
fn open_store(path: &Path, reset_store: bool) -> anyhow::Result<SqliteStore> {
    use wharf_store::StoreError;
    match SqliteStore::open(path) {
        Ok(store) => {
            if reset_store {
                eprintln!(
                    "the store {} is sound: --reset-store leaves it as it is",
                    path.display()
                );
            }
            Ok(store)
        }
        Err(StoreError::Corrupt { detail, .. }) if reset_store => {
            let aside = move_store_aside(path)?;
            eprintln!(
                "warning: the store {} is corrupt ({detail}); moved it aside to {} and started \
                 an empty store; {FRESH_STORE}",
                path.display(),
                aside.display()
            );
            SqliteStore::open(path).with_context(|| cannot_open(path))
        }
        // No context around it: the message is the whole story, and it names the file.
        Err(StoreError::Corrupt { path, detail }) => {
            Err(anyhow::Error::new(CorruptStore { path, detail }))
        }
        Err(e) => Err(anyhow::Error::new(e).context(cannot_open(path))),
    }
}

fn cannot_open(path: &Path) -> String {
    let dir = path.parent().unwrap_or(path);
    format!("cannot open the store in {}", dir.display())
}

/// Rename the store file and its `-wal` and `-shm` to `<file>.corrupt-<unix seconds>[-wal|-shm]`
/// (the journal first: a journal left behind would be replayed into the new store). Returns the
/// new name of the store file.
fn move_store_aside(path: &Path) -> anyhow::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let with_suffix = |p: &Path, suffix: &str| {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    let aside = with_suffix(path, &format!(".corrupt-{secs}"));
    anyhow::ensure!(
        !aside.exists(),
        "cannot move the corrupt store aside: {} already exists",
        aside.display()
    );
    for suffix in ["-wal", "-shm", ""] {
        let (from, to) = (with_suffix(path, suffix), with_suffix(&aside, suffix));
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !suffix.is_empty() => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot move {} aside to {}", from.display(), to.display())
                });
            }
        }
    }
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        // The renames survive a crash (best effort: a reset store is a fresh start anyway).
        let _ = d.sync_all();
    }
    Ok(aside)
}

async fn up(args: UpArgs, global: &wharf_cli::GlobalOpts) -> anyhow::Result<ExitCode> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let lock = lock_data_dir(&data_dir)?;

    // Bind first: a taken port must stop startup before anything else happens.
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| {
        format!("cannot listen on {} (is another `wharf up` running? choose another address with --listen)", args.listen)
    })?;
    let addr = listener.local_addr()?;
    // Beyond loopback, HTTPS only (as `wharf server`).
    let url = api_url(addr);

    let roots = build_roots(&args.build_roots, args.file.as_deref());
    let local = wharf_master::admission::Admission::local(&roots);
    let registry = crate::shared::registry(&data_dir, &args.registry, addr)?;
    let config = wharf_master::MasterConfig {
        node_timeout: args.node_timeout,
        admission: crate::shared::admission(args.policy.as_deref(), local)?,
        build_roots: roots,
        audit_log: args.audit_log.clone(),
        registry: Some(registry),
        git: Some(crate::shared::git(&data_dir, &url)?),
        ..Default::default()
    };
    let shared = crate::shared::shared_master(&args.store, &data_dir, config.clone()).await?;
    let (master, ctx_path) = match shared.clone() {
        Some(master) => open_master_on(master, &data_dir, &url, false).await?,
        None => open_master(&data_dir, config, &url, args.reset_store, false).await?,
    };

    let node = node_id(&data_dir)?;
    let agent = node_agent(
        &node,
        None,
        &data_dir,
        args.accept_store,
        Some(
            "         docker services will not start; process services (x-wharf: {driver: process}) still run",
        ),
        Arc::new(crate::local::LocalRegistry(master.clone())),
        None,
    )
    .await?;

    let mut facts = agent.facts(&hostname()).await;
    facts.max_instances = args.capacity.max_instances;
    let desired = master
        .hub
        .register(&node, facts, Arc::new(LocalLink(agent.clone())))
        .await?;
    let mut essentials = master.spawn_controllers();
    if shared.is_some() {
        essentials.push(crate::shared::election(&master, &url, "-"));
    }
    crate::up::roll_stale_consumers(&master);
    essentials.push((
        "agent loop",
        tokio::spawn(
            agent
                .clone()
                .run(desired, LocalControl::start(master.clone(), node.clone())),
        ),
    ));
    let api = spawn_api(&master, listener, &url, None).await?;

    eprintln!(
        "wharf is up: API {url}, data in {}, CLI context in {}",
        data_dir.display(),
        ctx_path.display()
    );

    if let Some(file) = &args.file {
        let client = Client::new(
            url.clone(),
            Context::load().map(|c| c.token).unwrap_or_default(),
        );
        let mut opts = args.deploy.clone();
        opts.output = global.output;
        let file_arg = wharf_cli::FileArg {
            file: vec![file.clone()],
            ..wharf_cli::FileArg::default()
        };
        // Ctrl-C while following the first deploy stops Wharf, as it does later.
        let deployed = tokio::select! {
            r = wharf_cli::deploy_file(&client, &file_arg, args.name.clone(), &opts) => r,
            why = crate::supervise::first_to_end(std::mem::take(&mut essentials)) => {
                return Ok(internal_failure(&why));
            }
            _ = shutdown_signal() => {
                eprintln!("{FAREWELL}");
                return Ok(ExitCode::SUCCESS);
            }
        };
        match deployed {
            Ok(()) => {}
            Err(e) => {
                wharf_cli::print_error(&e);
                if matches!(wharf_cli::exit_code(&e), c if c == ExitCode::from(2)) {
                    return Ok(ExitCode::from(2));
                }
                eprintln!("wharf keeps running; inspect with `wharf stack ps`, stop with Ctrl-C");
            }
        }
    }

    serve_until_shutdown(api, essentials, lock, FAREWELL).await
}

/// A task that must run for as long as the process ended: say so and exit 1, so that whatever
/// supervises Wharf starts it again (the store and the running containers are safe at any stop).
pub(crate) fn internal_failure(why: &str) -> ExitCode {
    tracing::error!("{why}");
    eprintln!(
        "error: internal failure: {why}\n  hint: wharf stops so that it can be started again \
         (by systemd, a restart policy, or by hand); containers keep running and are adopted"
    );
    ExitCode::from(1)
}

const FAREWELL: &str =
    "wharf is stopping; containers keep running and are adopted on the next start";

/// The API's URL for the local CLI: HTTPS when the API listens beyond loopback (reached on
/// 127.0.0.1 when it listens on every address), else plain HTTP.
pub(crate) fn api_url(addr: std::net::SocketAddr) -> String {
    let local = if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    };
    let https = !addr.ip().is_loopback();
    format!("{}://{local}", if https { "https" } else { "http" })
}

/// Serve the API on `listener` at `url` (`api_url`): beyond loopback HTTPS only, with a
/// certificate from the cluster CA (or `own`, PEM certificate and key), the CLI context pinning
/// the CA; on loopback plain HTTP.
pub(crate) async fn spawn_api(
    master: &wharf_master::Master,
    listener: tokio::net::TcpListener,
    url: &str,
    own: Option<(String, String)>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    if !url.starts_with("https://") {
        return Ok(tokio::spawn(wharf_master::api::serve(
            master.clone(),
            listener,
        )));
    }
    let addr = listener.local_addr()?;
    let (ca, _) = master
        .cluster_ca()
        .await
        .context("cannot set up the cluster CA")?;
    // The host's name, when it is one a certificate can carry.
    let host = Some(hostname()).filter(|h| {
        !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
    });
    let mut ips = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    if !addr.ip().is_unspecified() {
        ips.push(addr.ip());
    }
    let names: Vec<String> = ["localhost".to_string()].into_iter().chain(host).collect();
    let config = master.api_tls(&names, &ips, own).await?;
    ensure_context(master, url, Some(ca.fingerprint())).await?;
    Ok(tokio::spawn(wharf_master::api::serve_tls(
        master.clone(),
        listener,
        config,
    )))
}

/// Hold the data-dir lock while the API serves; stop on Ctrl-C or SIGTERM with `farewell`.
/// In the background: roll the services that mount an older version of a secret or config
/// than the current one (a master killed between storing a version and rolling them).
pub(crate) fn roll_stale_consumers(master: &wharf_master::Master) {
    let m = master.clone();
    tokio::spawn(async move {
        match wharf_master::api::roll_stale_consumers(&m).await {
            Ok(rolled) if !rolled.is_empty() => tracing::info!(
                ?rolled,
                "rolled services to the current versions of their secrets and configs"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %e.1.message,
                "cannot roll services to the current versions of their secrets and configs"
            ),
        }
    });
}

pub(crate) async fn serve_until_shutdown(
    api: tokio::task::JoinHandle<std::io::Result<()>>,
    essentials: Vec<crate::supervise::Essential>,
    lock: std::fs::File,
    farewell: &str,
) -> anyhow::Result<ExitCode> {
    let _lock = lock;
    tokio::select! {
        why = crate::supervise::first_to_end(essentials) => Ok(internal_failure(&why)),
        r = api => {
            r.context("the API task failed")?.context("the API server stopped")?;
            Ok(ExitCode::from(1))
        }
        _ = shutdown_signal() => {
            eprintln!("{farewell}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Make sure the CLI context points at this API (its CA pinned by `ca_fingerprint` when it
/// serves HTTPS) with a valid token; mint an admin token when the context is missing or its
/// token is not known here. The token is written to the 0600 context file and never printed.
pub(crate) async fn ensure_context(
    master: &Master,
    url: &str,
    ca_fingerprint: Option<String>,
) -> anyhow::Result<PathBuf> {
    let path = Context::path();
    let shared = master.etcd.is_some();
    let token = match Context::load_from(&path) {
        Ok(Some(ctx)) if master.authenticate(&ctx.token).await?.is_ok() => {
            let listed = ctx.url.split(',').any(|u| u.trim() == url);
            if (ctx.url == url || (shared && listed)) && ctx.ca_fingerprint == ca_fingerprint {
                return Ok(path);
            }
            // Another master of the same cluster (a shared store, the same CA): the context
            // lists every master, and the CLI moves to the next when one is away.
            if shared && ctx.ca_fingerprint == ca_fingerprint {
                Context {
                    url: format!("{},{url}", ctx.url),
                    ..ctx
                }
                .save_to(&path)?;
                return Ok(path);
            }
            ctx.token
        }
        _ => {
            master
                .create_admin_token(&Actor::named("wharf-up"), "admin")
                .await?
        }
    };
    Context {
        ca_fingerprint,
        ..Context::new(url, token)
    }
    .save_to(&path)?;
    Ok(path)
}
