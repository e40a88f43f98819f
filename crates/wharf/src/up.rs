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
    /// Address of the API (loopback by default: the API is for this machine only)
    #[arg(long, env = "WHARF_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// A node silent this long is unreachable and its instances move elsewhere (e.g. 5s, 2s)
    #[arg(long, env = "WHARF_NODE_TIMEOUT", value_name = "DURATION", default_value = "5s",
          value_parser = wharf_cli::parse_duration)]
    pub node_timeout: std::time::Duration,
    /// The most instances the scheduler places on this node; a deploy asking for more fails
    /// with the reason. Each instance is a container: past a few hundred the engine slows down
    /// (Kubernetes allows 110 pods per node by default)
    #[arg(long, env = "WHARF_MAX_INSTANCES", value_name = "N",
          default_value_t = wharf_types::DEFAULT_MAX_INSTANCES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_instances: u32,
    #[command(flatten)]
    pub deploy: wharf_cli::DeployOpts,
}

pub async fn run(args: UpArgs, global: &wharf_cli::GlobalOpts) -> ExitCode {
    init_tracing();
    match up(args, global).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

pub(crate) fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let spec = std::env::var("WHARF_LOG").unwrap_or_else(|_| "warn".to_string());
    // The DNS server logs every query at info: quiet unless asked for by name.
    let spec = if spec.contains("hickory") {
        spec
    } else {
        format!("{spec},hickory_server=warn")
    };
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
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

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
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
/// `url`. Returns the master and where the context file is.
pub(crate) async fn open_master(
    data_dir: &Path,
    config: wharf_master::MasterConfig,
    url: &str,
) -> anyhow::Result<(Master, PathBuf)> {
    let store = SqliteStore::open(&data_dir.join("wharf.db"))
        .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
    let master = Master::with_config(Arc::new(store), config);
    let ctx_path = ensure_context(&master, url).await?;
    Ok((master, ctx_path))
}

async fn up(args: UpArgs, global: &wharf_cli::GlobalOpts) -> anyhow::Result<ExitCode> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let lock = lock_data_dir(&data_dir)?;

    // Bind first: a taken port must stop startup before anything else happens.
    let listener = tokio::net::TcpListener::bind(args.listen).await.with_context(|| {
        format!("cannot listen on {} (is another `wharf up` running? choose another address with --listen)", args.listen)
    })?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");

    let config = wharf_master::MasterConfig {
        node_timeout: args.node_timeout,
        ..Default::default()
    };
    let (master, ctx_path) = open_master(&data_dir, config, &url).await?;

    // Service discovery on every stack network (and, in a cluster, routes to the other nodes).
    let dns = Arc::new(wharf_agent::dns::Dns::new(
        wharf_agent::dns::host_upstreams(),
    ));
    let networks = wharf_agent::stacknet::StackNetworks::new(Some(dns), None);
    let mut drivers: Vec<Arc<dyn Driver>> = Vec::new();
    let mut unavailable = BTreeMap::new();
    let node = node_id(&data_dir)?;
    match DockerDriver::connect().await {
        Ok(d) => drivers.push(Arc::new(d.for_node(&node).with_networks(networks.clone()))),
        Err(e) => {
            eprintln!(
                "warning: the Docker engine is not reachable: {}",
                e.describe()
            );
            eprintln!(
                "         docker services will not start; process services (x-wharf: {{driver: process}}) still run"
            );
            unavailable.insert(
                DriverKind::Docker,
                format!("docker engine not reachable on this node: {}", e.message),
            );
        }
    }
    drivers.push(Arc::new(ProcessDriver::new()));
    let agent = Agent::with_networks(drivers, unavailable, Some(networks));

    let mut facts = agent.facts(&hostname()).await;
    facts.max_instances = args.max_instances;
    let desired = master
        .hub
        .register(&node, facts, Arc::new(LocalLink(agent.clone())))
        .await?;
    tokio::spawn(
        agent
            .clone()
            .run(desired, LocalControl::start(master.clone(), node.clone())),
    );
    master.spawn_controllers();
    let api = tokio::spawn(wharf_master::api::serve(master.clone(), listener));

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
        // Ctrl-C while following the first deploy stops Wharf, as it does later.
        let deployed = tokio::select! {
            r = wharf_cli::deploy_file(&client, file, args.name.clone(), &opts) => r,
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

    serve_until_shutdown(api, lock, FAREWELL).await
}

const FAREWELL: &str = "wharf is stopping; containers keep running and are adopted on the next start";

/// Hold the data-dir lock while the API serves; stop on Ctrl-C or SIGTERM with `farewell`.
pub(crate) async fn serve_until_shutdown(
    api: tokio::task::JoinHandle<std::io::Result<()>>,
    lock: std::fs::File,
    farewell: &str,
) -> anyhow::Result<ExitCode> {
    let _lock = lock;
    tokio::select! {
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

/// Make sure the CLI context points at this API with a valid token; mint an admin token when the
/// context is missing or its token is not known here. The token is written to the 0600 context file
/// and never printed.
pub(crate) async fn ensure_context(master: &Master, url: &str) -> anyhow::Result<PathBuf> {
    let path = Context::path();
    if let Ok(Some(ctx)) = Context::load_from(&path)
        && master.authenticate(&ctx.token).await?.is_some()
    {
        if ctx.url != url {
            Context {
                url: url.to_string(),
                token: ctx.token,
            }
            .save_to(&path)?;
        }
        return Ok(path);
    }
    let token = master
        .create_token(&Actor("wharf-up".into()), "admin", "admin")
        .await?;
    Context {
        url: url.to_string(),
        token,
    }
    .save_to(&path)?;
    Ok(path)
}
