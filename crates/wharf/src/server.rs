//! `wharf server`: the master of a cluster, without an agent. The API (loopback by default), the
//! store in a data directory, the cluster CA, and the listener that agents join and connect to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use crate::shared::{StoreArgs, election, shared_master};
use crate::up::default_data_dir;

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  wharf server                                         API on 127.0.0.1:7700, agents on :7701
  wharf server --data-dir /var/lib/wharf --agent-listen 10.0.0.5:7701
  wharf node token create                              then, on each new host:
  wharf agent --join MASTER:7701 --token TOKEN

Agents connect with mutual TLS under the cluster CA, which is made on the first start and kept
in the store. Workloads keep running while the server is stopped; agents reconnect on their own.")]
pub struct ServerArgs {
    /// Where the store lives [default: $XDG_DATA_HOME/wharf or ~/.local/share/wharf]
    #[arg(long, env = "WHARF_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the API (loopback by default: the API is for this machine only)
    #[arg(long, env = "WHARF_LISTEN", default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Address agents join and connect to (mutual TLS)
    #[arg(long, env = "WHARF_AGENT_LISTEN", default_value = "0.0.0.0:7701")]
    pub agent_listen: SocketAddr,
    /// A node silent this long is unreachable and its instances move elsewhere. Nodes beat five
    /// times a second; raise it (e.g. 5s) on links that stall for seconds
    #[arg(long, env = "WHARF_NODE_TIMEOUT", value_name = "DURATION", default_value = "1s",
          value_parser = wharf_cli::parse_duration)]
    pub node_timeout: std::time::Duration,
    /// Container addresses: each node gets a /20 block of this pool (a /25 per stack), routed between nodes
    /// (the hosts must reach each other directly). Keep it clear of the hosts' own networks.
    /// `none`: no cross-host container networking (each engine picks its own subnets)
    #[arg(long, env = "WHARF_NETWORK_POOL", value_name = "CIDR|none", default_value = wharf_master::network::DEFAULT_POOL,
          value_parser = parse_pool)]
    pub network_pool: Pool,
    /// Container traffic between nodes: `on` (the default) sends it only through WireGuard
    /// tunnels between the hosts; `off` sends it in the clear, for trusted networks only
    #[arg(long, env = "WHARF_ENCRYPTION", value_name = "on|off", default_value = "on",
          value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub encryption: bool,
    /// Service discovery answers `<service>.<stack>.<DOMAIN>` (and `<service>.<stack>`)
    #[arg(long, env = "WHARF_CLUSTER_DOMAIN", value_name = "DOMAIN",
          default_value = wharf_master::DEFAULT_CLUSTER_DOMAIN, value_parser = parse_domain)]
    pub cluster_domain: String,
    /// A node whose Docker engine has been down this long loses its docker instances to other
    /// nodes, and takes no new ones until the engine is back (e.g. 30s, 2m)
    #[arg(long, env = "WHARF_ENGINE_TIMEOUT", value_name = "DURATION", default_value = "30s",
          value_parser = wharf_cli::parse_duration)]
    pub engine_timeout: std::time::Duration,
    /// Allow `build:` contexts under DIR (on the nodes; repeatable). None by default: a client
    /// of the API must not have a node pack any directory it names into an image
    #[arg(long = "build-root", value_name = "DIR", value_delimiter = ',')]
    #[arg(env = "WHARF_BUILD_ROOTS")]
    pub build_roots: Vec<PathBuf>,
    /// Also append every audit record to FILE as a JSON line (for a log shipper, or to keep the
    /// trail off this host); what it lacks after a crash is appended at the next start
    #[arg(long, env = "WHARF_AUDIT_LOG", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    #[command(flatten)]
    pub registry: crate::shared::RegistryArgs,
    /// The admission policy (YAML, see examples/policy.yaml): what stacks may ask of the hosts.
    /// [default: refuse privileged containers, host bind mounts, the Docker socket, the host's
    /// network and user namespace, added capabilities beyond Docker's default set, unconfined
    /// seccomp and AppArmor]
    #[arg(long, env = "WHARF_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The API's certificate chain (PEM, the server certificate first, its CA last) when it
    /// listens beyond loopback [default: one from the cluster CA]
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    #[arg(env = "WHARF_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    #[arg(env = "WHARF_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// If the store (DATA_DIR/wharf.db) is corrupt, move it aside to wharf.db.corrupt-<unix
    /// seconds> and start with an empty store (a new cluster CA: every agent must join again)
    #[arg(long)]
    pub reset_store: bool,
    /// Keep the store's keys locked while the server is stopped (as Swarm's autolock): the first
    /// start prints an unlock key, and every later start serves nothing until `wharf unlock`
    /// on this host gives it. There is no key file: lose the unlock key and the sealed keys
    /// are lost. Chosen when the store is made
    #[arg(long, env = "WHARF_AUTOLOCK")]
    pub autolock: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `--network-pool`: a CIDR, or none.
#[derive(Clone, Copy, Debug)]
pub struct Pool(Option<ipnet::Ipv4Net>);

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("\"{s}\" is neither on nor off")),
    }
}

fn parse_pool(s: &str) -> Result<Pool, String> {
    if s == "none" {
        return Ok(Pool(None));
    }
    let net: ipnet::Ipv4Net = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv4 CIDR; write it like 10.64.0.0/10, or none"))?;
    if net.prefix_len() > wharf_master::network::BLOCK_LEN {
        return Err(format!(
            "{s} is smaller than one node block (/{}); give a pool of /{} or larger, like 10.64.0.0/10, or none",
            wharf_master::network::BLOCK_LEN,
            wharf_master::network::BLOCK_LEN
        ));
    }
    Ok(Pool(Some(net.trunc())))
}

fn parse_domain(s: &str) -> Result<String, String> {
    let d = s.trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(d)
    } else {
        Err(format!(
            "{s:?} is not a DNS domain; use labels of letters, digits and '-', like wharf.internal"
        ))
    }
}

/// The agent address as agents reach it: this host's name for a wildcard listener.
fn advertised(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("{}:{}", crate::shared::hostname(), addr.port())
    } else {
        addr.to_string()
    }
}

/// Listen on `addr` for `what`; the error names the address and the `flag` that chooses another.
async fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for {what} (choose another address with {flag})")
    })
}

/// `--autolock`: a new store gets an unlock key (printed once); an autolocked store waits,
/// serving only `POST /v1/unlock` to callers on this host, until `wharf unlock` gives the key.
/// Returns the API listener for the unlocked server.
async fn unlock(
    master: &wharf_master::Master,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    use wharf_master::mutate::Actor;
    if !wharf_master::seal::is_autolocked(master.store.as_ref()).await? {
        let key = wharf_master::seal::new_unlock_key();
        master
            .unlock_keys(&Actor::named("wharf server"), &key)
            .await
            .map_err(crate::up::hinted)?;
        eprintln!(
            "autolock is on. The unlock key, shown this once (keep it safe, in a password manager):\n\n    {key}\n\nevery start of this server waits for `wharf unlock`, which asks for it"
        );
        return Ok(listener);
    }
    eprintln!(
        "wharf server is locked (autolock): run `wharf unlock` on this host; it asks for the unlock key"
    );
    let listener = listener.into_std()?;
    let locked = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
    wharf_master::api::serve_locked(master.clone(), locked, addr.ip()).await?;
    eprintln!("wharf server is unlocked");
    Ok(tokio::net::TcpListener::from_std(listener)?)
}

pub async fn run(args: ServerArgs) -> ExitCode {
    crate::up::exit_code(server(args).await)
}

async fn server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let lock = crate::up::lock_data_dir(&data_dir)?;

    let listener = bind(args.listen, "the API", "--listen").await?;
    let agent_listener = bind(args.agent_listen, "agents", "--agent-listen").await?;
    let addr = listener.local_addr()?;
    let agent_addr = agent_listener.local_addr()?;
    let url = crate::up::api_url(addr);

    let registry = crate::shared::registry(&data_dir, &args.registry, addr)?;
    let config = wharf_master::MasterConfig {
        node_timeout: args.node_timeout,
        network_pool: args.network_pool.0,
        encryption: args.encryption,
        cluster_domain: args.cluster_domain.clone(),
        engine_timeout: args.engine_timeout,
        build_roots: args.build_roots.clone(),
        audit_log: args.audit_log.clone(),
        registry: Some(registry),
        git: Some(crate::shared::git(&data_dir, &url)?),
        admission: crate::shared::admission(args.policy.as_deref(), Default::default())?,
    };
    let shared = shared_master(&args.store, &data_dir, config.clone()).await?;
    let (master, ctx_path) = match shared.clone() {
        Some(master) => crate::up::open_master_on(master, &data_dir, &url, args.autolock).await?,
        None => {
            crate::up::open_master(&data_dir, config, &url, args.reset_store, args.autolock).await?
        }
    };
    let listener = if args.autolock {
        unlock(&master, listener, addr).await?
    } else {
        listener
    };
    let (ca, _) = master
        .cluster_ca()
        .await
        .context("cannot set up the cluster CA")?;
    let tls = master.agent_tls().await?;
    let mut essentials = master.spawn_controllers();
    if shared.is_some() {
        essentials.push(election(&master, &url, &advertised(agent_addr)));
    }
    crate::up::roll_stale_consumers(&master);
    essentials.push((
        "agent listener",
        tokio::spawn(wharf_master::agents::serve_agents(
            master.clone(),
            agent_listener,
            tls,
        )),
    ));
    let own = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some((
            std::fs::read_to_string(c).with_context(|| format!("cannot read {}", c.display()))?,
            std::fs::read_to_string(k).with_context(|| format!("cannot read {}", k.display()))?,
        )),
        _ => None,
    };
    let api = crate::up::spawn_api(&master, listener, &url, own).await?;

    eprintln!(
        "wharf server is up: API {url}, agents on {agent_addr}, data in {}, CLI context in {}",
        data_dir.display(),
        ctx_path.display()
    );
    eprintln!("cluster CA fingerprint (sha256): {}", ca.fingerprint());
    eprintln!(
        "add a node: `wharf node token create`, then on the node `wharf agent --join <this host>:{} --token <token>`",
        agent_addr.port()
    );

    crate::up::serve_until_shutdown(
        api,
        essentials,
        lock,
        "wharf server is stopping; workloads keep running and agents reconnect when it is back",
    )
    .await
}
