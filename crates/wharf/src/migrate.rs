//! `wharf store migrate`: move a single master's SQLite store to etcd, offline, keeping every
//! stack, token, user, secret, node and audit record; then start the masters with `--store`.
//!
//! Offline means the data directory's lock is taken: a running `wharf server` or `wharf up` on
//! it refuses the migration. The target must be empty (a cluster's store is never merged into
//! another's). Keys are copied in transactions of at most `BATCH` operations, then every key is
//! compared; an audit record `store.migrate` closes the copy, chained to the records before it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use wharf_store::{KeyValue, Op, SqliteStore, Store, Txn};

use crate::shared::{StoreArgs, etcd_options};
use crate::up::default_data_dir;

/// Operations per transaction of the copy: well under the `--max-txn-ops` Wharf asks of etcd,
/// and under etcd's default (128) too.
const BATCH: usize = 100;
/// Bytes per transaction of the copy (etcd refuses requests over `--max-request-bytes`,
/// 1.5 MiB by default).
const BATCH_BYTES: usize = 1024 * 1024;

#[derive(Subcommand, Debug)]
pub enum StoreCmd {
    /// Copy a stopped master's SQLite store (DATA_DIR/wharf.db) to an empty etcd cluster
    #[command(after_help = "\
Examples:
  wharf store migrate --data-dir /var/lib/wharf --store etcd://10.0.0.5:2379,10.0.0.6:2379,10.0.0.7:2379

Stop the master first (the data directory must not be in use). Afterwards start it, and every
other master, with the same --store, each with a copy of DATA_DIR/master.key in its data
directory; agents keep running throughout and reconnect on their own.")]
    Migrate(MigrateArgs),
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The stopped master's data directory (its wharf.db and master.key)
    /// [default: $XDG_DATA_HOME/wharf or ~/.local/share/wharf]
    #[arg(long, env = "WHARF_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Keys that belong to running masters, not to the cluster: never copied.
fn copied(kv: &KeyValue) -> bool {
    use wharf_master::model::keys;
    kv.lease.is_none()
        && kv.key != keys::LEADER
        && kv.key != keys::WRITTEN_BY
        && !kv.key.starts_with(keys::MASTERS)
        && !kv.key.starts_with(keys::PRESENCE)
}

pub async fn run(cmd: StoreCmd) -> ExitCode {
    let StoreCmd::Migrate(args) = cmd;
    match migrate(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let Some(url) = args.store.store.clone() else {
        anyhow::bail!(
            "name the etcd cluster to copy to with --store etcd://HOST:PORT[,HOST:PORT...]"
        );
    };
    let db = data_dir.join("wharf.db");
    if !db.exists() {
        anyhow::bail!(
            "{} has no store (wharf.db) to migrate; give the master's --data-dir",
            data_dir.display()
        );
    }
    let _lock = crate::up::lock_data_dir(&data_dir)?;
    let from = SqliteStore::open(&db).with_context(|| format!("cannot open {}", db.display()))?;
    let options = etcd_options(&args.store, &url)?;
    let to = wharf_store::EtcdStore::connect(&options)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the store {url}: {e}"))?;
    let (existing, _) = to.range("/").await?;
    if let Some(kv) = existing.iter().find(|kv| copied(kv)) {
        anyhow::bail!(
            "the etcd store {url} is not empty ({} keys, e.g. {}): a cluster's store is never \
             merged into another's; use an empty etcd cluster (or delete its keys with \
             `etcdctl del --prefix /` if they are a failed migration's)",
            existing.len(),
            kv.key
        );
    }
    let (all, revision) = from.range("").await?;
    let keys: Vec<KeyValue> = all.into_iter().filter(copied).collect();
    eprintln!(
        "copying {} keys of {} (revision {revision}) to {url}",
        keys.len(),
        db.display()
    );
    let mut done = 0;
    for batch in batches(&keys) {
        let ops: Vec<Op> = batch
            .iter()
            .map(|kv| Op::put(kv.key.clone(), kv.value.clone()))
            .collect();
        to.txn(Txn::new().then(ops)).await?;
        done += batch.len();
        eprintln!("  {done}/{} keys", keys.len());
    }
    // Every key, compared.
    let (copy, _) = to.range("/").await?;
    let copy: BTreeMap<&str, &[u8]> = copy
        .iter()
        .map(|kv| (kv.key.as_str(), kv.value.as_slice()))
        .collect();
    for kv in &keys {
        if copy.get(kv.key.as_str()) != Some(&kv.value.as_slice()) {
            anyhow::bail!(
                "{} did not arrive intact; the SQLite store is unchanged: delete the copy \
                 (`etcdctl del --prefix /`) and run the migration again",
                kv.key
            );
        }
    }
    // The trail records the move, chained to the records before it.
    let master = wharf_master::Master::new(Arc::new(to));
    master
        .mutate(
            &wharf_master::mutate::Actor::named("wharf store migrate"),
            "store.migrate",
            &format!("{} -> {url}", db.display()),
            wharf_master::now_ms(),
            Txn::new(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("cannot record the migration in the audit trail: {e}"))?;
    println!("{}", summary(&keys));
    println!(
        "migrated. Next: start this master with `wharf server --data-dir {} --store {url}` \
         (and every other master with the same --store and a copy of {}); {} is left as it \
         was, as a backup",
        data_dir.display(),
        data_dir.join("master.key").display(),
        db.display()
    );
    Ok(())
}

/// The copy's transactions: at most `BATCH` keys and about `BATCH_BYTES` each.
fn batches(keys: &[KeyValue]) -> Vec<&[KeyValue]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, kv) in keys.iter().enumerate() {
        let size = kv.key.len() + kv.value.len();
        if i > start && (i - start >= BATCH || bytes + size > BATCH_BYTES) {
            out.push(&keys[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < keys.len() {
        out.push(&keys[start..]);
    }
    out
}

/// What was copied, by kind: `stacks 3, tokens 2, ...`.
fn summary(keys: &[KeyValue]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for kv in keys {
        let kind = kv
            .key
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        *counts.entry(kind).or_default() += 1;
    }
    let parts: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!("copied: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, size: usize) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: vec![0; size],
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: None,
        }
    }

    #[test]
    fn batches_keep_within_the_operation_and_byte_limits() {
        let keys: Vec<KeyValue> = (0..250).map(|i| kv(&format!("/k/{i}"), 10)).collect();
        let sizes: Vec<usize> = batches(&keys).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let big: Vec<KeyValue> = (0..5).map(|i| kv(&format!("/b/{i}"), 600_000)).collect();
        let sizes: Vec<usize> = batches(&big).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [1, 1, 1, 1, 1], "two would pass a MiB");
        assert!(batches(&[]).is_empty());
    }

    #[test]
    fn what_running_masters_own_is_not_copied() {
        assert!(copied(&kv("/stacks/a", 1)));
        use wharf_master::model::keys;
        assert!(!copied(&kv(keys::LEADER, 1)));
        assert!(!copied(&kv(&keys::presence("n1"), 1)));
        assert!(!copied(&kv(&keys::master("m1"), 1)));
        let mut leased = kv("/x", 1);
        leased.lease = Some(7);
        assert!(!copied(&leased));
        assert_eq!(
            summary(&[kv("/stacks/a", 1), kv("/stacks/b", 1), kv("/audit/1", 1)]),
            "copied: audit 1, stacks 2"
        );
    }
}
