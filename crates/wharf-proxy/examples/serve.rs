//! Runs a `wharf-proxy` from a JSON config file or from flags (used by `bench/ingress/run`).
//!
//! ```text
//! serve --config proxy.json
//! serve --listen 127.0.0.1:8080 --backend 127.0.0.1:9001 --backend 127.0.0.1:9002 \
//!       [--balance least_requests] [--threads 2 | --workers 2]
//! ```
//! `--threads N` serves on N threads with one single-threaded runtime each
//! ([`Proxy::bind_threads`], the default, with one thread per core); `--workers N` on one
//! work-stealing runtime with N workers ([`Proxy::bind`]; 0 = single-threaded runtime).
//! Logs go to stderr, filtered by `RUST_LOG` (default `warn`; `wharf_proxy::access=info` for
//! the access log). Prints `listening <addrs>` on stdout once bound.

use anyhow::{Context, bail};
use wharf_proxy::{Backend, Balance, Config, Endpoint, EndpointState, Listeners, Proxy, Route};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut config: Option<Config> = None;
    let mut listen = None;
    let mut endpoints = Vec::new();
    let mut balance = Balance::RoundRobin;
    let mut workers = None;
    let mut threads = None;
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => {
                let path = value()?;
                let text =
                    std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
                config =
                    Some(serde_json::from_str(&text).with_context(|| format!("parsing {path}"))?);
            }
            "--listen" => listen = Some(value()?.parse().context("--listen")?),
            "--backend" => {
                let addr = value()?.parse().context("--backend")?;
                let id = format!("b{}", endpoints.len() + 1);
                endpoints.push(Endpoint {
                    id,
                    addr,
                    state: EndpointState::Serving,
                });
            }
            "--balance" => {
                balance = serde_json::from_value(serde_json::Value::String(value()?))
                    .context("--balance")?
            }
            "--workers" => workers = Some(value()?.parse::<usize>().context("--workers")?),
            "--threads" => threads = Some(value()?.parse::<usize>().context("--threads")?),
            other => bail!("unknown flag {other}; see the module docs of examples/serve.rs"),
        }
    }
    let config = match (config, listen) {
        (Some(c), None) => c,
        (None, Some(addr)) => Config {
            listeners: Listeners {
                http: Some(addr),
                ..Default::default()
            },
            routes: vec![Route {
                hosts: vec![],
                path_prefix: "/".into(),
                backend: "app".into(),
                redirect_https: false,
                redirect_port: None,
                timeouts: Default::default(),
            }],
            backends: [(
                "app".to_owned(),
                Backend {
                    endpoints,
                    balance,
                    ..Default::default()
                },
            )]
            .into(),
            health: Default::default(),
        },
        _ => bail!("give either --config FILE or --listen ADDR with --backend ADDR..."),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if workers.is_none() {
        let threads =
            threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let proxy = Proxy::new(config)?;
        let bound = proxy.bind_threads(threads)?;
        println!("listening {bound:?} on {threads} threads");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(tokio::signal::ctrl_c())?;
        proxy.shutdown();
        return Ok(());
    }
    let mut rt = if workers == Some(0) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if let Some(n) = workers.filter(|n| *n > 0) {
        rt.worker_threads(n);
    }
    rt.enable_all().build()?.block_on(async {
        let proxy = Proxy::new(config)?;
        let bound = proxy.bind().await?;
        println!("listening {bound:?}");
        tokio::signal::ctrl_c().await?;
        proxy.shutdown();
        Ok(())
    })
}
