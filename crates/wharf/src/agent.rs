//! `wharf agent`: the agent of one host in a cluster. Joins once with a token (the identity is
//! kept in its data directory), then keeps a mutual-TLS stream to the master and runs what the
//! master assigns to this node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use wharf_agent::link::{NodeIdentity, join, run_link};

use crate::shared::hostname;
use crate::up::shutdown_signal;

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  wharf agent --join 10.0.0.5:7701 --token WJT1-…       join the cluster, then run
  wharf agent --join 10.0.0.5:7701                       later starts: the identity is kept
  wharf agent --join 10.0.0.5:7701 --token WJT1-… --label zone=a --label disk=ssd

The token comes from `wharf node token create` on the master. The node's key, certificate and id,
and its WireGuard key, are kept in DATA_DIR (mode 0600). Container traffic to other nodes goes
through WireGuard (the kernel's, else wireguard-go): open UDP --wireguard-port between the hosts.
Workloads keep running while the master is away.")]
pub struct AgentArgs {
    /// The master's agent address, HOST:PORT (its --agent-listen)
    #[arg(long, value_name = "HOST:PORT", env = "WHARF_JOIN")]
    pub join: String,
    /// Join token, needed only for the first start (from `wharf node token create`)
    #[arg(
        long,
        value_name = "TOKEN",
        env = "WHARF_JOIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Where the node's identity lives [default: ~/.local/share/wharf-agent]
    #[arg(long, env = "WHARF_AGENT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// A node label for placement constraints, KEY=VALUE (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// The node's name as shown by `wharf node ls` [default: the hostname]
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub capacity: crate::up::Capacity,
    /// The WireGuard interface of the encrypted tunnel to the other nodes (one per host)
    #[arg(long, env = "WHARF_WIREGUARD_INTERFACE", value_name = "NAME",
          default_value = wharf_agent::tunnel::DEFAULT_INTERFACE, value_parser = parse_interface)]
    pub wireguard_interface: String,
    /// The UDP port the WireGuard interface listens on (open it between the hosts)
    #[arg(long, env = "WHARF_WIREGUARD_PORT", value_name = "PORT",
          default_value_t = wharf_agent::tunnel::DEFAULT_PORT)]
    pub wireguard_port: u16,
    /// Let the master's store take over this node even though it is not the one the node last
    /// saw (restored from an older backup): what it does not know is removed. Without it, the
    /// agent holds back and leaves every instance running
    #[arg(long)]
    pub accept_store: bool,
    /// Serve Prometheus metrics (instances, ingress, DNS, the link to the master) at
    /// http://ADDR/metrics, without authentication: bind it to an address only your
    /// Prometheus reaches [default: off]
    #[arg(long, env = "WHARF_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Serve the blobs this node's registry mirror holds to the other nodes here (mutual TLS
    /// with node certificates; the master tells the others where), so the master serves each
    /// blob about once however many nodes pull it; `off` to serve none [default: any free port]
    #[arg(
        long,
        env = "WHARF_PEER_LISTEN",
        value_name = "ADDR|off",
        default_value = "0.0.0.0:0"
    )]
    pub peer_listen: String,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!(
            "invalid label \"{s}\": expected KEY=VALUE, e.g. zone=a"
        )),
    }
}

fn parse_interface(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "\"{s}\" is not an interface name: 1 to 15 letters, digits, '-', '_' or '.'"
        ))
    }
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/wharf-agent"),
        None => PathBuf::from(".wharf-agent"),
    }
}

pub async fn run(args: AgentArgs) -> ExitCode {
    crate::up::exit_code(agent(args).await)
}

async fn agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let lock = crate::up::lock_data_dir(&data_dir)?;
    let name = args.name.clone().unwrap_or_else(hostname);
    let identity = match NodeIdentity::load(&data_dir)? {
        Some(id) => {
            if args.token.is_some() {
                eprintln!(
                    "note: this agent already joined as {}; --token is not needed and was ignored",
                    id.node_id
                );
            }
            id
        }
        None => {
            let Some(token) = &args.token else {
                anyhow::bail!(
                    "this agent has not joined a cluster yet: pass --token (create one on the master with `wharf node token create`)"
                );
            };
            let id = join(&args.join, token, &data_dir, &name).await?;
            eprintln!("joined the cluster as {}", id.node_id);
            id
        }
    };

    // The mirror's peer port, and the master told where it is with every fetch.
    let peers = match args.peer_listen.as_str() {
        "off" => None,
        addr => {
            let addr: std::net::SocketAddr = addr.parse().map_err(|e| {
                anyhow::anyhow!(
                    "--peer-listen {addr:?}: {e} (an address like 0.0.0.0:7702, or off)"
                )
            })?;
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for peers (choose another with --peer-listen)")
            })?;
            let tls = wharf_link::tls::peer_server_config(
                &identity.ca_pem,
                &identity.cert_pem,
                &identity.key_pem,
            )
            .map_err(|e| anyhow::anyhow!("the node's certificate, to serve peers: {e}"))?;
            Some((listener, tls))
        }
    };
    let peer_port = match &peers {
        Some((l, _)) => Some(l.local_addr()?.port()),
        None => None,
    };
    // Service discovery on every stack network, and routes to the other nodes.
    let agent = crate::up::node_agent(
        &identity.node_id,
        Some((
            Box::new(wharf_agent::hostnet::SystemHost),
            wharf_agent::tunnel::Setup {
                interface: args.wireguard_interface.clone(),
                port: args.wireguard_port,
            },
        )),
        &data_dir,
        args.accept_store,
        None,
        Arc::new(
            wharf_agent::mirror::LinkSource::new(&args.join, &identity, peer_port)
                .map_err(|e| anyhow::anyhow!("the node's certificate: {e}"))?,
        ),
        peers,
    )
    .await?;
    eprintln!(
        "wharf agent {} ({name}) is up; master at {}, identity in {}",
        identity.node_id,
        args.join,
        data_dir.display()
    );
    let labels: BTreeMap<String, String> = args.labels.into_iter().collect();
    let _lock = lock;
    let metrics = match args.metrics_listen {
        Some(addr) => Some(serve_metrics(addr, agent.clone()).await?),
        None => None,
    };
    let metrics = async move {
        match metrics {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        end = run_link(agent, args.join.clone(), identity, labels, name, args.capacity.max_instances) => {
            Ok(crate::up::internal_failure(&crate::supervise::describe("agent loop", end)))
        }
        end = metrics => {
            Ok(crate::up::internal_failure(&crate::supervise::describe("metrics listener", end)))
        }
        _ = shutdown_signal() => {
            eprintln!("wharf agent is stopping; workloads keep running and are adopted on the next start");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// How often scrapes have the engine's statistics sampled, at most.
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Binds `addr` and serves `GET /metrics` there (the process's recorder, rendered); the task.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    agent: std::sync::Arc<wharf_agent::Agent>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for --metrics-listen"))?;
    let handle = wharf_master::metrics::handle();
    wharf_agent::metrics::describe();
    let last_sample = std::sync::Arc::new(parking_lot::Mutex::new(None));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            // The engine's statistics of each instance take the engine a second or two: they
            // are sampled in the background (a scrape starts one at most every
            // `SAMPLE_EVERY`), and a scrape renders the last ones without waiting.
            let due = {
                let mut last = last_sample.lock();
                let due = last.is_none_or(|t: std::time::Instant| t.elapsed() >= SAMPLE_EVERY);
                if due {
                    *last = Some(std::time::Instant::now());
                }
                due
            };
            if due {
                let agent = agent.clone();
                tokio::spawn(async move { agent.export_stats().await });
            }
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    handle.render(),
                )
            }
        }),
    );
    eprintln!("metrics at http://{addr}/metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the metrics listener stopped");
        }
    }))
}
