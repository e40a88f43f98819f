//! What `wharf server`, `wharf up` and `wharf store migrate` share about a store on etcd: the
//! `--store` flags, a master made on it (with the election), and the election task; and the
//! admission policy file of `--policy`; the built-in registry's settings.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;

/// Where a shared store is and how to reach it (`wharf server`, `wharf store migrate`).
#[derive(Args, Debug)]
pub struct StoreArgs {
    /// Keep the cluster's state in etcd, shared by several masters (high availability):
    /// etcd://HOST:PORT[,HOST:PORT...] (etcds:// for TLS). The masters elect a leader; every
    /// one serves the API and takes agents. [default: SQLite in DATA_DIR, one master]
    #[arg(long, env = "WHARF_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// The CA that signed the etcd members' certificates (PEM), for etcds://
    #[arg(long, env = "WHARF_STORE_CA", value_name = "FILE", requires = "store")]
    pub store_ca: Option<PathBuf>,
    /// A client certificate for etcd (PEM), when etcd checks them (--client-cert-auth)
    #[arg(
        long,
        env = "WHARF_STORE_CERT",
        value_name = "FILE",
        requires = "store_key"
    )]
    pub store_cert: Option<PathBuf>,
    /// The key of --store-cert (PEM)
    #[arg(
        long,
        env = "WHARF_STORE_KEY",
        value_name = "FILE",
        requires = "store_cert"
    )]
    pub store_key: Option<PathBuf>,
}

/// `--store`: the etcd cluster to share, with its TLS files read.
pub(crate) fn etcd_options(
    args: &StoreArgs,
    url: &str,
) -> anyhow::Result<wharf_store::EtcdOptions> {
    let (mut options, tls) =
        wharf_store::EtcdOptions::parse(url).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    let read =
        |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let identity = match (&args.store_cert, &args.store_key) {
        (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
        _ => None,
    };
    if tls || args.store_ca.is_some() || identity.is_some() {
        let Some(ca) = &args.store_ca else {
            anyhow::bail!(
                "--store {url} asks for TLS: give the CA of the etcd members with --store-ca FILE"
            );
        };
        options.tls = Some(wharf_store::EtcdTls {
            ca_pem: read(ca)?,
            identity,
        });
    }
    Ok(options)
}

/// A master on the shared (etcd) store of `--store`, which runs the election; `None` without
/// `--store` (SQLite in the data directory, one master).
pub(crate) async fn shared_master(
    args: &StoreArgs,
    data_dir: &std::path::Path,
    config: wharf_master::MasterConfig,
) -> anyhow::Result<Option<wharf_master::Master>> {
    let Some(store_url) = &args.store else {
        return Ok(None);
    };
    let options = etcd_options(args, store_url)?;
    let store = wharf_store::EtcdStore::connect(&options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the store {store_url}: {e}"))?;
    let id = wharf_master::leader::master_id(data_dir)
        .with_context(|| format!("cannot keep this master's id in {}", data_dir.display()))?;
    Ok(Some(
        wharf_master::Master::with_config(Arc::new(store.clone()), config)
            .with_role(wharf_master::leader::Role::elected(&id))
            .with_etcd(store),
    ))
}

/// The election task of a master on a shared store, announcing where it answers.
pub(crate) fn election(
    master: &wharf_master::Master,
    api_url: &str,
    agent_addr: &str,
) -> crate::supervise::Essential {
    let info = wharf_types::MasterInfo {
        id: master.role.id().to_string(),
        api_url: api_url.to_string(),
        agent_addr: agent_addr.to_string(),
        started: wharf_master::now_ms(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    };
    (
        "election",
        tokio::spawn(wharf_master::leader::run(master.clone(), info)),
    )
}

/// The admission policy of `--policy FILE` (checked now: a bad file stops the start, naming
/// what is wrong), else `default`.
pub fn admission(
    file: Option<&std::path::Path>,
    default: wharf_master::admission::Admission,
) -> anyhow::Result<wharf_master::admission::Admission> {
    let Some(file) = file else {
        return Ok(default);
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the policy file {}", file.display()))?;
    let a = wharf_master::admission::Admission::parse(&text, &file.display().to_string()).map_err(
        |e| {
            anyhow::anyhow!(
                "{e}\n  hint: see examples/policy.yaml for the keys a policy file takes"
            )
        },
    )?;
    tracing::info!(policy = %file.display(), "admission policy");
    Ok(a)
}

/// The built-in registry's flags (`wharf up`, `wharf server`).
#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Let anyone who reaches the API pull from the built-in registry (`/v2/`) without
    /// credentials; pushes always need a token
    #[arg(long, env = "WHARF_REGISTRY_ANONYMOUS_PULL")]
    pub registry_anonymous_pull: bool,
    /// Another name users push to the built-in registry under (`host:port`, repeatable), besides
    /// the API's address and `wharf.local`: a deploy pins images of these hosts by digest
    #[arg(
        long = "registry-host",
        value_name = "HOST:PORT",
        env = "WHARF_REGISTRY_HOSTS",
        value_delimiter = ','
    )]
    pub registry_hosts: Vec<String>,
}

/// The built-in registry's settings: its directory (made now: a registry that cannot keep its
/// blobs is a startup error, not a warning) and the hosts that name it in image references (the
/// API's address as users reach it, and `extra`).
pub(crate) fn registry(
    data_dir: &std::path::Path,
    args: &RegistryArgs,
    api: std::net::SocketAddr,
) -> anyhow::Result<wharf_master::registry::RegistryConfig> {
    std::fs::create_dir_all(data_dir.join("registry").join("uploads")).with_context(|| {
        format!(
            "cannot make the registry's directory in {}",
            data_dir.display()
        )
    })?;
    let port = api.port();
    let mut hosts = vec![];
    if api.ip().is_unspecified() || api.ip().is_loopback() {
        hosts.push(format!("127.0.0.1:{port}"));
        hosts.push(format!("localhost:{port}"));
    }
    if api.ip().is_unspecified() {
        hosts.push(format!("{}:{port}", hostname()));
    } else {
        hosts.push(api.to_string());
    }
    hosts.extend(args.registry_hosts.iter().cloned());
    hosts.dedup();
    Ok(wharf_master::registry::RegistryConfig {
        dir: data_dir.join("registry"),
        anonymous_pull: args.registry_anonymous_pull,
        hosts,
    })
}

/// This host's name (`/proc/sys/kernel/hostname`; `localhost` when it cannot be read).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The stacks' git repositories (`DATA_DIR/git`), whose hook runs this very binary and reaches
/// the API at `url`.
pub(crate) fn git(
    data_dir: &std::path::Path,
    url: &str,
) -> anyhow::Result<wharf_master::git::GitConfig> {
    let program = std::env::current_exe().context("cannot tell where the wharf binary is")?;
    Ok(wharf_master::git::GitConfig {
        dir: data_dir.join("git"),
        api_url: url.to_string(),
        program,
    })
}
