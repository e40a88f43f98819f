//! The built-in OCI registry (`/v2/`, the OCI Distribution API) of the master: pure parts
//! (`path`: names, references, digests, routes; `range`: byte ranges; `manifest`: media types
//! and what a manifest refers to), the blob store on disk (`blobs`), and here the metadata in
//! Wharf's store (repositories, tags, manifests, which blobs a repository may use) and garbage
//! collection. The HTTP side is `api/registry.rs`. Delivery: `pin` (a deploy pins tags to
//! digests), `fetch` (what a node's mirror asks the master for, over the agent port), `scan`
//! (pushed images scanned from their layers); a moved
//! tag rolls its `auto_deploy` services in `crate::autodeploy`.

pub mod blobs;
pub mod fetch;
pub mod manifest;
pub mod path;
pub mod pin;
pub mod range;
pub mod scan;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use wharf_store::{Op, Txn};

use crate::model::{decode, encode, keys};
use crate::mutate::Actor;
use crate::{Error, Master};
use path::Digest;

/// Where the registry keeps its content, and who may pull (`MasterConfig::registry`).
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// `DATA_DIR/registry`.
    pub dir: PathBuf,
    /// Pull without credentials (`--registry-anonymous-pull`); pushes always need a token.
    pub anonymous_pull: bool,
    /// The hosts that name this registry in image references besides `wharf.local` (the
    /// API's address as users push to it, `--registry-host`): a deploy pins their images.
    pub hosts: Vec<String>,
}

/// The registry of a running master.
pub struct Registry {
    pub blobs: blobs::Blobs,
    /// Which nodes hold which blobs (peer-to-peer pulls).
    pub holders: fetch::Holders,
    pub anonymous_pull: bool,
    pub hosts: Vec<String>,
}

impl Registry {
    pub fn open(config: &RegistryConfig) -> std::io::Result<Registry> {
        Ok(Registry {
            blobs: blobs::Blobs::open(&config.dir)?,
            holders: Default::default(),
            anonymous_pull: config.anonymous_pull,
            hosts: config.hosts.clone(),
        })
    }
}

/// `/registry/manifests/{repo}@{digest}`: a manifest of a repository (its bytes are the blob
/// of the same digest).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    /// Config and layers.
    pub blobs: Vec<String>,
    /// An index's manifests.
    pub manifests: Vec<String>,
    pub pushed_at: u64,
}

/// `/registry/tags/{repo}:{tag}`: the manifest a tag names. Watch this prefix to see a tag move.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagRecord {
    pub digest: String,
    pub pushed_at: u64,
}

/// `/registry/blobs/{repo}@{digest}`: the repository may use the blob (pushed or mounted there).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobLink {
    pub size: u64,
}

/// The blobs `manifests` refer to, each manifest's own bytes included: what a collection keeps.
pub fn referenced<'a>(
    manifests: impl IntoIterator<Item = (&'a str, &'a ManifestRecord)>,
) -> HashSet<Digest> {
    let mut keep = HashSet::new();
    for (digest, m) in manifests {
        let all = std::iter::once(digest)
            .chain(m.blobs.iter().map(String::as_str))
            .chain(m.manifests.iter().map(String::as_str));
        keep.extend(all.filter_map(|d| Digest::parse(d).ok()));
    }
    keep
}

/// The `(repository, rest)` of a registry key after its prefix: `repo@digest` or `repo:tag`.
fn split_key(rest: &str, sep: char) -> Option<(&str, &str)> {
    rest.rsplit_once(sep)
}

impl Master {
    /// The repository's link to blob `d`, if it may use it.
    pub async fn registry_link(&self, repo: &str, d: &Digest) -> Result<Option<BlobLink>, Error> {
        let key = keys::registry_blob(repo, d.as_str());
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    /// The manifest `d` of `repo`.
    pub async fn registry_manifest(
        &self,
        repo: &str,
        d: &Digest,
    ) -> Result<Option<ManifestRecord>, Error> {
        let key = keys::registry_manifest(repo, d.as_str());
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    /// The digest tag `tag` of `repo` names.
    pub async fn registry_tag(&self, repo: &str, tag: &str) -> Result<Option<TagRecord>, Error> {
        let key = keys::registry_tag(repo, tag);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    /// The tags of `repo`, sorted.
    pub async fn registry_tags(&self, repo: &str) -> Result<Vec<String>, Error> {
        let prefix = keys::registry_tags_of(repo);
        let (kvs, _) = self.store.range(&prefix).await?;
        let mut tags: Vec<String> = kvs
            .iter()
            .map(|kv| kv.key[prefix.len()..].to_string())
            .collect();
        tags.sort();
        Ok(tags)
    }

    /// Every repository with a manifest, sorted.
    pub async fn registry_repositories(&self) -> Result<Vec<String>, Error> {
        let (kvs, _) = self.store.range(keys::REGISTRY_MANIFESTS).await?;
        let repos: BTreeSet<String> = kvs
            .iter()
            .filter_map(|kv| split_key(&kv.key[keys::REGISTRY_MANIFESTS.len()..], '@'))
            .map(|(repo, _)| repo.to_string())
            .collect();
        Ok(repos.into_iter().collect())
    }

    /// Record that `repo` may use blob `d` (a finished upload or a mount), audited.
    pub async fn registry_link_blob(
        &self,
        actor: &Actor,
        repo: &str,
        d: &Digest,
        size: u64,
        action: &str,
    ) -> Result<(), Error> {
        let txn = Txn::new().then([Op::put(
            keys::registry_blob(repo, d.as_str()),
            encode(&BlobLink { size }),
        )]);
        let target = format!("{repo}@{d}");
        self.mutate(actor, action, &target, crate::now_ms(), txn)
            .await?;
        Ok(())
    }

    /// Store manifest `d` of `repo` (and point `tag` at it), audited.
    pub async fn registry_put_manifest(
        &self,
        actor: &Actor,
        repo: &str,
        d: &Digest,
        record: &ManifestRecord,
        tag: Option<&str>,
    ) -> Result<(), Error> {
        let mut ops = vec![Op::put(
            keys::registry_manifest(repo, d.as_str()),
            encode(record),
        )];
        if let Some(tag) = tag {
            let t = TagRecord {
                digest: d.to_string(),
                pushed_at: record.pushed_at,
            };
            ops.push(Op::put(keys::registry_tag(repo, tag), encode(&t)));
        }
        let target = match tag {
            Some(t) => format!("{repo}:{t}@{d}"),
            None => format!("{repo}@{d}"),
        };
        let txn = Txn::new().then(ops);
        self.mutate(
            actor,
            "registry push manifest",
            &target,
            record.pushed_at,
            txn,
        )
        .await?;
        Ok(())
    }

    /// Delete manifest `d` of `repo` and every tag naming it, audited. `false`: no such manifest.
    pub async fn registry_delete_manifest(
        &self,
        actor: &Actor,
        repo: &str,
        d: &Digest,
    ) -> Result<bool, Error> {
        let key = keys::registry_manifest(repo, d.as_str());
        if self.store.get(&key).await?.is_none() {
            return Ok(false);
        }
        let prefix = keys::registry_tags_of(repo);
        let (tags, _) = self.store.range(&prefix).await?;
        let mut ops = vec![
            Op::delete(key),
            Op::delete(keys::registry_scan(repo, d.as_str())),
        ];
        for kv in tags {
            let t: TagRecord = decode(&kv.key, &kv.value)?;
            if t.digest == d.as_str() {
                ops.push(Op::delete(kv.key));
            }
        }
        let target = format!("{repo}@{d}");
        self.mutate(
            actor,
            "registry delete manifest",
            &target,
            crate::now_ms(),
            Txn::new().then(ops),
        )
        .await?;
        Ok(true)
    }

    /// Delete tag `tag` of `repo` (the manifest stays), audited. `false`: no such tag.
    pub async fn registry_delete_tag(
        &self,
        actor: &Actor,
        repo: &str,
        tag: &str,
    ) -> Result<bool, Error> {
        let key = keys::registry_tag(repo, tag);
        if self.store.get(&key).await?.is_none() {
            return Ok(false);
        }
        let target = format!("{repo}:{tag}");
        let txn = Txn::new().then([Op::delete(key)]);
        self.mutate(actor, "registry delete tag", &target, crate::now_ms(), txn)
            .await?;
        Ok(true)
    }

    /// Delete `repo`'s link to blob `d` (the file goes at the next collection), audited.
    pub async fn registry_unlink_blob(
        &self,
        actor: &Actor,
        repo: &str,
        d: &Digest,
    ) -> Result<bool, Error> {
        let key = keys::registry_blob(repo, d.as_str());
        if self.store.get(&key).await?.is_none() {
            return Ok(false);
        }
        let target = format!("{repo}@{d}");
        let txn = Txn::new().then([Op::delete(key)]);
        self.mutate(actor, "registry delete blob", &target, crate::now_ms(), txn)
            .await?;
        Ok(true)
    }

    /// Remove the blobs no manifest refers to (last written more than `grace` ago: a push in
    /// progress has blobs whose manifest is not there yet), and the links to them; audited.
    pub async fn registry_gc(
        &self,
        actor: &Actor,
        grace: std::time::Duration,
    ) -> Result<wharf_types::RegistryGc, Error> {
        let Some(registry) = self.registry.as_ref() else {
            return Err(registry_off());
        };
        let (kvs, _) = self.store.range(keys::REGISTRY_MANIFESTS).await?;
        let mut manifests = Vec::new();
        for kv in &kvs {
            let rec: ManifestRecord = decode(&kv.key, &kv.value)?;
            if let Some((_, d)) = split_key(&kv.key[keys::REGISTRY_MANIFESTS.len()..], '@') {
                manifests.push((d.to_string(), rec));
            }
        }
        let keep = referenced(manifests.iter().map(|(d, m)| (d.as_str(), m)));
        let kept = keep.len();
        let now = std::time::SystemTime::now();
        let stale_uploads = now - std::time::Duration::from_secs(24 * 3600).max(grace);
        let removed = registry
            .blobs
            .sweep(keep, now - grace, stale_uploads)
            .await
            .map_err(|e| Error::Unavailable(format!("cannot sweep the registry's blobs: {e}")))?;
        let gone: HashSet<&str> = removed.iter().map(Digest::as_str).collect();
        let (links, _) = self.store.range(keys::REGISTRY_BLOBS).await?;
        let ops: Vec<Op> = links
            .into_iter()
            .filter(|kv| split_key(&kv.key, '@').is_some_and(|(_, d)| gone.contains(d)))
            .map(|kv| Op::delete(kv.key))
            .collect();
        let summary = format!("removed {} blob(s), kept {kept}", removed.len());
        if ops.is_empty() {
            self.audit_done(actor, "registry gc", "registry", crate::now_ms(), summary)
                .await?;
        } else {
            self.mutate(
                actor,
                "registry gc",
                "registry",
                crate::now_ms(),
                Txn::new().then(ops),
            )
            .await?;
        }
        Ok(wharf_types::RegistryGc {
            removed: removed.iter().map(|d| d.to_string()).collect(),
            kept,
        })
    }
}

/// The error of a registry route on a master without one.
pub fn registry_off() -> Error {
    Error::NotFound {
        what: "the registry".into(),
        hint: Some("this master serves no registry (it has no data directory)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_collection_keeps_what_manifests_and_indexes_refer_to() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let image = ManifestRecord {
            media_type: manifest::OCI_MANIFEST.into(),
            size: 1,
            blobs: vec![d('a'), d('b')],
            manifests: vec![],
            pushed_at: 0,
        };
        let index = ManifestRecord {
            media_type: manifest::OCI_INDEX.into(),
            size: 1,
            blobs: vec![],
            manifests: vec![d('c')],
            pushed_at: 0,
        };
        let (m1, m2) = (d('c'), d('e'));
        let keep = referenced([(m1.as_str(), &image), (m2.as_str(), &index)]);
        let mut keep: Vec<String> = keep.iter().map(|x| x.to_string()).collect();
        keep.sort();
        assert_eq!(keep, vec![d('a'), d('b'), d('c'), d('e')]);
    }
}
