//! Scanning images of the cluster's registry from its own blobs: the manifest's layers, lowest
//! first, stacked by `wharf_scan::inventory::Layers` (whiteouts applied) and matched against the
//! imported advisories. Every manifest pushed is scanned (in the background, after the push
//! answered); the result is kept at `/registry/scans/{repo}@{digest}` for `wharf image ls`, and
//! a scan that finds something is an event (`scan.found`) outgoing webhooks can follow.

use std::path::PathBuf;

use wharf_store::{Op, Txn};
use wharf_types::{ImageInfo, ImageScan};

use super::path::Digest;
use crate::model::{decode, encode, keys};
use crate::{Error, Master};

impl Master {
    /// Scan manifest `digest` of `repo` (an index: its first image) and keep the result.
    pub async fn scan_registry(&self, repo: &str, digest: &str) -> Result<ImageScan, Error> {
        let reg = self.registry.clone().ok_or_else(super::registry_off)?;
        let not_found = || Error::NotFound {
            what: format!("manifest {digest} in the cluster's registry ({repo})"),
            hint: Some("push the image first (docker push)".into()),
        };
        let d = Digest::parse(digest).map_err(|_| not_found())?;
        let rec = self
            .registry_manifest(repo, &d)
            .await?
            .ok_or_else(not_found)?;
        let image = match rec.manifests.first() {
            Some(child) => Digest::parse(child).map_err(|_| not_found())?,
            None => d.clone(),
        };
        let text = tokio::fs::read(reg.blobs.blob_path(&image))
            .await
            .map_err(|e| Error::Unavailable(format!("cannot read manifest {image}: {e}")))?;
        let manifest: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| Error::Invalid {
                message: format!("manifest {image} is not JSON: {e}"),
                location: None,
                hint: None,
            })?;
        let layers: Vec<PathBuf> = manifest["layers"]
            .as_array()
            .map(|ls| {
                ls.iter()
                    .filter_map(|l| l["digest"].as_str())
                    .filter_map(|l| Digest::parse(l).ok())
                    .map(|l| reg.blobs.blob_path(&l))
                    .collect()
            })
            .unwrap_or_default();
        let inventory = tokio::task::spawn_blocking(move || {
            let mut stacked = wharf_scan::inventory::Layers::default();
            for path in layers {
                let f = std::fs::File::open(&path)
                    .map_err(|e| format!("cannot read layer {}: {e}", path.display()))?;
                stacked.add(f).map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(stacked.inventory())
        })
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?
        .map_err(Error::Unavailable)?;
        let db = self.advisory_database().await?;
        let scan = ImageScan {
            image: format!("{repo}@{digest}"),
            id: digest.to_string(),
            node: "registry".into(),
            os: inventory.os.clone(),
            packages: inventory.packages.len() as u64,
            findings: wharf_scan::scan(&inventory, &db),
        };
        let key = keys::registry_scan(repo, digest);
        self.store
            .txn(Txn::new().then([Op::put(key, encode(&scan))]))
            .await?;
        Ok(scan)
    }

    /// The kept scan of manifest `digest` of `repo`, if it was scanned.
    pub async fn registry_scan(
        &self,
        repo: &str,
        digest: &str,
    ) -> Result<Option<ImageScan>, Error> {
        let key = keys::registry_scan(repo, digest);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    /// Every tag of the registry, with its scan's counts (sorted by repository and tag).
    pub async fn registry_images(&self) -> Result<Vec<ImageInfo>, Error> {
        let (kvs, _) = self.store.range(keys::REGISTRY_TAGS).await?;
        let mut out = vec![];
        for kv in kvs {
            let name = &kv.key[keys::REGISTRY_TAGS.len()..];
            let Some((repo, tag)) = name.rsplit_once(':') else {
                continue;
            };
            let rec: super::TagRecord = decode(&kv.key, &kv.value)?;
            let mut row = ImageInfo {
                repository: repo.to_string(),
                tag: tag.to_string(),
                digest: rec.digest.clone(),
                pushed_at: rec.pushed_at,
                ..Default::default()
            };
            if let Some(scan) = self.registry_scan(repo, &rec.digest).await? {
                row.count(&scan);
            }
            out.push(row);
        }
        out.sort_by(|a, b| (&a.repository, &a.tag).cmp(&(&b.repository, &b.tag)));
        Ok(out)
    }
}
