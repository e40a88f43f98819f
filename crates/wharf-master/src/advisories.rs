//! The vulnerability database in the store: OSV advisories an operator imports (`wharf scan db
//! import DIR`; no internet is assumed), kept per package family and package
//! (`keys::advisories`), left out of the master's cache (read only when scanning).
//!
//! An import is parsed and checked whole before anything is written (a bad file changes
//! nothing); it is then merged into the packages' records in batches (an advisory already
//! there, by id and release, is replaced: importing again is harmless), and its summary is
//! written last with the audit record.

use wharf_scan::{Advisory, Database, Family};
use wharf_store::{Op, Txn};
use wharf_types::{AdvisoryDbInfo, AdvisoryFile, ImageScan, Severity, StackSpec};

use crate::model::{decode, encode, keys};
use crate::mutate::Actor;
use crate::{Error, Master};

/// How many packages' records go in one transaction of an import (etcd's default limit on the
/// operations of a transaction is 128).
const BATCH: usize = 100;

/// An image reference as a service names it: not empty, printable, no spaces.
fn check_image(image: &str) -> Result<(), Error> {
    if !image.is_empty() && image.len() <= 512 && image.chars().all(|c| c.is_ascii_graphic()) {
        return Ok(());
    }
    Err(Error::Invalid {
        message: format!(
            "image {:?}: not an image reference",
            wharf_types::excerpt(image, 60)
        ),
        location: Some("image".into()),
        hint: Some(
            "name it as a service does: `debian:12`, `registry:5000/team/app@sha256:…`".into(),
        ),
    })
}

/// A package name that can be a key's last part (`libssl3`, `g++-12`, `py3-setuptools`).
fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-._~:@".contains(c));
    if ok {
        return Ok(());
    }
    Err(Error::Invalid {
        message: format!(
            "advisory for package {:?}: not a package name",
            wharf_types::excerpt(name, 60)
        ),
        location: Some("affected[].package.name".into()),
        hint: Some("package names are letters, digits and + - . _ ~ : @ (at most 200)".into()),
    })
}

impl Master {
    /// Add the advisories of `files` to the database. Nothing is written if any file is bad.
    pub async fn import_advisories(
        &self,
        actor: &Actor,
        files: &[AdvisoryFile],
    ) -> Result<AdvisoryDbInfo, Error> {
        let mut incoming = Database::default();
        let (mut added, mut skipped) = (0u64, 0u64);
        for f in files {
            let a = incoming
                .add_file(&f.name, &f.text)
                .map_err(|e| Error::Invalid {
                    message: e.message.clone(),
                    location: Some(e.place.clone()),
                    hint: Some(
                        "OSV records are JSON objects with `id` and `affected`, one per file or an array (https://ossf.github.io/osv-schema/)".into(),
                    ),
                })?;
            added += a.advisories as u64;
            skipped += a.skipped as u64;
        }
        for name in incoming.packages.values().flat_map(|p| p.keys()) {
            check_name(name)?;
        }
        let mut puts = vec![];
        for (family, packages) in incoming.packages {
            for (name, advisories) in packages {
                let key = keys::advisories(family.word(), &name);
                let mut current: Vec<Advisory> = match self.store.get(&key).await? {
                    Some(kv) => decode(&kv.key, &kv.value)?,
                    None => vec![],
                };
                for a in advisories {
                    current.retain(|x| !(x.id == a.id && x.release == a.release));
                    current.push(a);
                }
                puts.push(Op::put(key, encode(&current)));
            }
        }
        for chunk in puts.chunks(BATCH) {
            self.store.txn(Txn::new().then(chunk.to_vec())).await?;
        }
        let db = self.advisory_database().await?;
        let info = AdvisoryDbInfo {
            advisories: db.len() as u64,
            packages: db.packages.values().map(|p| p.len() as u64).sum(),
            last_added: added,
            last_skipped: skipped,
            imported_at: crate::now_ms(),
        };
        let txn = Txn::new().then([Op::put(keys::ADVISORIES_INFO, encode(&info))]);
        self.mutate(actor, "scan.db.import", "advisories", info.imported_at, txn)
            .await?;
        Ok(info)
    }

    /// Scan `image`: the first connected node whose engine has it reads its packages (the
    /// master holds no images), and they are matched against the database.
    pub async fn scan_image(&self, image: &str) -> Result<ImageScan, Error> {
        check_image(image)?;
        // An image of the cluster's registry is read from the registry's own blobs.
        if let Ok(Ok(Some(pinned))) = self.pin_image("image", image).await
            && let Some(r) = wharf_types::ImageRef::parse(&pinned)
            && let Some(digest) = r.digest
        {
            let mut scan = self.scan_registry(&r.name, &digest).await?;
            scan.image = image.to_string();
            return Ok(scan);
        }
        let mut nodes: Vec<String> = self.hub.connections().into_iter().map(|(n, _)| n).collect();
        nodes.sort();
        let mut tried = vec![];
        for node in nodes {
            let Some(link) = self.hub.link(&node) else {
                continue;
            };
            match link.inventory(image).await {
                Ok((inventory, id)) => {
                    let db = self.advisory_database().await?;
                    return Ok(ImageScan {
                        image: image.to_string(),
                        id,
                        node,
                        os: inventory.os.clone(),
                        packages: inventory.packages.len() as u64,
                        findings: wharf_scan::scan(&inventory, &db),
                    });
                }
                Err(e) => tried.push(format!("{node}: {e}")),
            }
        }
        let why = if tried.is_empty() {
            "no node is connected".to_string()
        } else {
            tried.join("; ")
        };
        Err(Error::NotFound {
            what: format!("image {image} on a connected node ({why})"),
            hint: Some("build or pull the image on a node first (a scan reads it there)".into()),
        })
    }

    /// The services of `spec` that block on findings, each with its scan's findings at or
    /// above its block (none: the deploy may go on). A service whose image cannot be scanned
    /// blocks too: a policy that cannot be checked does not pass.
    pub async fn scan_blocks(
        &self,
        spec: &StackSpec,
    ) -> Result<Vec<(String, Severity, ImageScan)>, Error> {
        let mut out = vec![];
        let cluster = self.config.admission.policy.scan.as_ref().map(|r| r.block);
        for (name, svc) in &spec.services {
            // The stricter of the service's rule and the cluster's.
            let block = match (svc.wharf.scan_block, cluster) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(x) => x,
                    None => continue,
                },
            };
            let Some(image) = svc.image.as_deref() else {
                return Err(Error::Invalid {
                    message: format!("services.{name}: no image to scan (it is built on the node)"),
                    location: Some(format!("services.{name}.x-wharf.scan")),
                    hint: Some("build and tag the image first and name it with `image:`".into()),
                });
            };
            let mut scan = self.scan_image(image).await?;
            scan.findings.retain(|f| f.severity >= block);
            if !scan.findings.is_empty() {
                out.push((name.clone(), block, scan));
            }
        }
        Ok(out)
    }

    /// What the database holds and what the last import brought.
    pub async fn advisory_db_info(&self) -> Result<AdvisoryDbInfo, Error> {
        match self.store.get(keys::ADVISORIES_INFO).await? {
            Some(kv) => decode(&kv.key, &kv.value),
            None => Ok(AdvisoryDbInfo::default()),
        }
    }

    /// The whole database, read from the store (for a scan).
    pub async fn advisory_database(&self) -> Result<Database, Error> {
        let (kvs, _) = self.store.range(keys::ADVISORIES).await?;
        let mut db = Database::default();
        for kv in kvs {
            let Some((family, name)) = kv
                .key
                .strip_prefix(keys::ADVISORIES)
                .and_then(|k| k.split_once('/'))
            else {
                continue;
            };
            let Some(family) = Family::of_word(family) else {
                continue;
            };
            let list: Vec<Advisory> = decode(&kv.key, &kv.value)?;
            db.packages
                .entry(family)
                .or_default()
                .insert(name.to_string(), list);
        }
        Ok(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_are_checked_before_they_become_keys() {
        for ok in ["libssl3", "g++-12", "py3-setuptools", "libc6:amd64"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../../audit", "a/b", "x y", &"a".repeat(201)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    fn file(name: &str, text: &str) -> AdvisoryFile {
        AdvisoryFile {
            name: name.into(),
            text: text.into(),
        }
    }

    const DSA: &str = r#"{"id": "DSA-1", "affected": [
        {"package": {"ecosystem": "Debian:12", "name": "openssl"}, "database_specific": {"severity": "critical"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}]}]},
        {"package": {"ecosystem": "Alpine:v3.19", "name": "openssl"}},
        {"package": {"ecosystem": "PyPI", "name": "requests"}}]}"#;

    #[tokio::test]
    async fn an_import_is_kept_by_package_and_again_replaces_not_doubles() {
        let m = Master::new(std::sync::Arc::new(
            wharf_store::SqliteStore::open_in_memory().unwrap(),
        ));
        let actor = Actor::named("test");
        let info = m
            .import_advisories(&actor, &[file("dsa.json", DSA)])
            .await
            .unwrap();
        assert_eq!((info.advisories, info.packages), (2, 2));
        assert_eq!((info.last_added, info.last_skipped), (2, 1));
        let info = m
            .import_advisories(&actor, &[file("dsa.json", DSA)])
            .await
            .unwrap();
        assert_eq!(info.advisories, 2, "imported twice: replaced");
        assert_eq!(m.advisory_db_info().await.unwrap(), info);
        let db = m.advisory_database().await.unwrap();
        assert_eq!(db.advisories(Family::Debian, "openssl")[0].id, "DSA-1");
        // A bad file among good ones: refused with its place, nothing written.
        let e = m
            .import_advisories(
                &actor,
                &[
                    file("new.json", &DSA.replace("DSA-1", "DSA-2")),
                    file("bad.json", "{\n  oops"),
                ],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { location: Some(l), .. } if l.starts_with("bad.json:2:")),
            "{e:?}"
        );
        assert_eq!(m.advisory_database().await.unwrap().len(), 2);
        // A package name that would escape its key: refused too.
        let hostile = DSA.replace("\"openssl\"", "\"../audit\"");
        assert!(
            m.import_advisories(&actor, &[file("h.json", &hostile)])
                .await
                .is_err()
        );
        assert_eq!(m.advisory_database().await.unwrap().len(), 2);
        // The import is audited.
        let records = m.audit_records().await.unwrap();
        assert_eq!(
            records
                .iter()
                .filter(|r| r.action == "scan.db.import")
                .count(),
            2
        );
    }
}
