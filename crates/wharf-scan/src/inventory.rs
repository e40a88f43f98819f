//! The OS packages an image installs, from its layers read in order (lowest first), as the
//! engine would stack them: a later layer's file replaces an earlier one, a whiteout
//! (`.wh.NAME`) removes one, an opaque marker (`.wh..wh..opq`) empties a directory.
//!
//! Read: Debian's dpkg database (`var/lib/dpkg/status`, and `var/lib/dpkg/status.d/*` as
//! distroless images keep it), Alpine's (`lib/apk/db/installed`), and `os-release` for the
//! distribution and its release. Layers may be gzip-compressed (as a registry keeps them) or
//! plain tar (as `docker save` writes them).

use std::collections::BTreeMap;
use std::io::Read;

use crate::{Family, Inventory, Package};

/// The most a file of the package databases may hold (a hostile image must not make the
/// scanner hold gigabytes).
pub const MAX_FILE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error(
        "layer {layer}: not a tar archive: {message} (hint: layers are tar files, plain or gzip-compressed)"
    )]
    Layer { layer: usize, message: String },
    #[error(
        "layer {layer}: {path} is {size} bytes, more than the {MAX_FILE} read of a package database"
    )]
    TooBig {
        layer: usize,
        path: String,
        size: u64,
    },
}

const DPKG_STATUS: &str = "var/lib/dpkg/status";
const DPKG_STATUS_D: &str = "var/lib/dpkg/status.d/";
const APK_INSTALLED: &str = "lib/apk/db/installed";
const OS_RELEASE: [&str; 2] = ["etc/os-release", "usr/lib/os-release"];

fn wanted(path: &str) -> bool {
    path == DPKG_STATUS
        || path == APK_INSTALLED
        || OS_RELEASE.contains(&path)
        || path
            .strip_prefix(DPKG_STATUS_D)
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
}

/// A path inside a layer, without `./` or `/` in front.
fn clean(path: &str) -> &str {
    path.trim_start_matches("./").trim_start_matches('/')
}

/// The files of the package databases, as the layers added so far stack them.
#[derive(Debug, Default)]
pub struct Layers {
    files: BTreeMap<String, Vec<u8>>,
    added: usize,
}

impl Layers {
    /// Stack the next layer (a tar stream, plain or gzip-compressed) on those added before.
    pub fn add<R: Read>(&mut self, reader: R) -> Result<(), InventoryError> {
        let layer = self.added;
        self.added += 1;
        let bad = |e: std::io::Error| InventoryError::Layer {
            layer,
            message: e.to_string(),
        };
        let mut reader = std::io::BufReader::new(reader);
        let gzip = {
            use std::io::BufRead;
            reader.fill_buf().map_err(bad)?.starts_with(&[0x1f, 0x8b])
        };
        let reader: Box<dyn Read + '_> = if gzip {
            Box::new(flate2::read::GzDecoder::new(reader))
        } else {
            Box::new(reader)
        };
        let mut archive = tar::Archive::new(reader);
        // This layer's own files go in after its whiteouts took effect on the layers below.
        let mut added: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for entry in archive.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let raw = entry.path().map_err(bad)?.to_string_lossy().into_owned();
            let path = clean(&raw).to_string();
            let (dir, base) = match path.rsplit_once('/') {
                Some((d, b)) => (format!("{d}/"), b),
                None => (String::new(), path.as_str()),
            };
            if base == ".wh..wh..opq" {
                self.files.retain(|p, _| !p.starts_with(&dir));
                continue;
            }
            if let Some(gone) = base.strip_prefix(".wh.") {
                let gone = format!("{dir}{gone}");
                let under = format!("{gone}/");
                self.files
                    .retain(|p, _| *p != gone && !p.starts_with(&under));
                continue;
            }
            if !wanted(&path) || !entry.header().entry_type().is_file() {
                continue;
            }
            let size = entry.size();
            if size > MAX_FILE {
                return Err(InventoryError::TooBig { layer, path, size });
            }
            let mut data = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut data).map_err(bad)?;
            added.insert(path, data);
        }
        self.files.extend(added);
        Ok(())
    }

    /// What the layers stacked so far install.
    pub fn inventory(&self) -> Inventory {
        of_files(&self.files)
    }
}

/// The inventory of an image from its layers, lowest first.
pub fn read<R: Read>(layers: impl IntoIterator<Item = R>) -> Result<Inventory, InventoryError> {
    let mut stacked = Layers::default();
    for layer in layers {
        stacked.add(layer)?;
    }
    Ok(stacked.inventory())
}

/// The inventory of an image exported by `docker save` (a tar of `manifest.json`, the image's
/// config and its layers), and the image's id (`sha256:…`, from its config's name).
pub fn docker_save<F: Read + std::io::Seek>(
    mut file: F,
) -> Result<(Inventory, String), InventoryError> {
    let bad = |message: String| InventoryError::Layer { layer: 0, message };
    // From the start, wherever the writer of the file left it.
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| bad(e.to_string()))?;
    let image = save_manifest(&mut file)?;
    let mut stacked = Layers::default();
    for layer in &image.layers {
        file.seek(std::io::SeekFrom::Start(0))
            .map_err(|e| bad(e.to_string()))?;
        let mut archive = tar::Archive::new(&mut file);
        let entries = archive.entries().map_err(|e| bad(e.to_string()))?;
        let mut found = false;
        for entry in entries {
            let entry = entry.map_err(|e| bad(e.to_string()))?;
            let path = entry.path().map_err(|e| bad(e.to_string()))?;
            if clean(&path.to_string_lossy()) == layer {
                stacked.add(entry)?;
                found = true;
                break;
            }
        }
        if !found {
            return Err(bad(format!(
                "{layer}: listed in manifest.json, not in the archive"
            )));
        }
    }
    let id = image
        .config
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .trim_end_matches(".json");
    Ok((stacked.inventory(), format!("sha256:{id}")))
}

/// The first image of a `docker save` archive's `manifest.json`.
fn save_manifest<F: Read>(file: F) -> Result<SaveManifest, InventoryError> {
    let bad = |message: String| InventoryError::Layer { layer: 0, message };
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?;
        if clean(&path.to_string_lossy()) != "manifest.json" {
            continue;
        }
        if entry.size() > MAX_FILE {
            return Err(bad("manifest.json is too large".into()));
        }
        let mut text = String::new();
        entry
            .read_to_string(&mut text)
            .map_err(|e| bad(e.to_string()))?;
        let images: Vec<SaveManifest> =
            serde_json::from_str(&text).map_err(|e| bad(format!("manifest.json: {e}")))?;
        return images
            .into_iter()
            .next()
            .ok_or_else(|| bad("manifest.json lists no image".into()));
    }
    Err(bad(
        "no manifest.json: not the output of `docker save`".into()
    ))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveManifest {
    config: String,
    layers: Vec<String>,
}

/// The inventory from the stacked files of the package databases.
pub fn of_files(files: &BTreeMap<String, Vec<u8>>) -> Inventory {
    let text = |p: &str| {
        files
            .get(p)
            .map(|d| String::from_utf8_lossy(d).into_owned())
    };
    let os = OS_RELEASE.iter().find_map(|p| text(p)).unwrap_or_default();
    let os = os_release(&os);
    let mut packages = vec![];
    let mut family = None;
    let dpkg: Vec<String> = text(DPKG_STATUS)
        .into_iter()
        .chain(
            files
                .range(DPKG_STATUS_D.to_string()..)
                .take_while(|(p, _)| p.starts_with(DPKG_STATUS_D))
                .map(|(_, d)| String::from_utf8_lossy(d).into_owned()),
        )
        .collect();
    if !dpkg.is_empty() {
        family = Some(Family::Debian);
        packages.extend(dpkg.iter().flat_map(|t| dpkg_packages(t)));
    }
    if let Some(apk) = text(APK_INSTALLED) {
        family = family.or(Some(Family::Alpine));
        packages.extend(apk_packages(&apk));
    }
    packages.sort();
    packages.dedup();
    let release = match (family, os.get("VERSION_ID")) {
        (Some(Family::Alpine), Some(v)) => {
            // Advisories name Alpine's branch: `v3.19` of 3.19.1.
            let branch: Vec<&str> = v.split('.').take(2).collect();
            Some(format!("v{}", branch.join(".")))
        }
        (_, v) => v.cloned(),
    };
    Inventory {
        family,
        release,
        os: os.get("PRETTY_NAME").cloned().unwrap_or_default(),
        packages,
    }
}

/// `KEY=value` lines, quotes removed.
fn os_release(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim().trim_matches('"').trim_matches('\'');
            (k.trim().to_string(), v.to_string())
        })
        .collect()
}

/// Paragraphs of `Field: value` lines (continuation lines start with a space and are skipped).
fn paragraphs(text: &str, separator: char) -> Vec<BTreeMap<&str, &str>> {
    let mut out = vec![];
    let mut current = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        if let Some((k, v)) = line.split_once(separator) {
            current.insert(k.trim(), v.trim());
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The installed packages of a dpkg status file.
fn dpkg_packages(text: &str) -> Vec<Package> {
    paragraphs(text, ':')
        .into_iter()
        .filter(|p| {
            // Distroless status.d files have no Status: their packages are installed.
            p.get("Status").is_none_or(|s| s.ends_with(" installed"))
        })
        .filter_map(|p| {
            let name = p.get("Package")?.to_string();
            let version = p.get("Version")?.to_string();
            let (source, source_version) = match p.get("Source") {
                Some(s) => match s.split_once(' ') {
                    Some((n, v)) => (
                        Some(n.to_string()),
                        Some(v.trim_matches(|c| c == '(' || c == ')').to_string()),
                    ),
                    None => (Some(s.to_string()), None),
                },
                None => (None, None),
            };
            Some(Package {
                source: source.filter(|s| *s != name),
                name,
                version,
                source_version,
            })
        })
        .collect()
}

/// The packages of Alpine's installed database (`P:` name, `V:` version, `o:` origin).
fn apk_packages(text: &str) -> Vec<Package> {
    paragraphs(text, ':')
        .into_iter()
        .filter_map(|p| {
            let name = p.get("P")?.to_string();
            Some(Package {
                version: p.get("V")?.to_string(),
                source: p.get("o").map(|o| o.to_string()).filter(|o| *o != name),
                name,
                source_version: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain tar layer of (path, content) files; a `None` content is a whiteout entry.
    fn layer(files: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append_data(&mut h, path, data.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn readers(layers: Vec<Vec<u8>>) -> Vec<std::io::Cursor<Vec<u8>>> {
        layers.into_iter().map(std::io::Cursor::new).collect()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    const STATUS: &str = "Package: libssl3\nStatus: install ok installed\nSource: openssl (3.0.11-1~deb12u1)\nVersion: 3.0.11-1~deb12u1+b1\nDescription: TLS\n multi-line\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\nPackage: zlib1g\nStatus: install ok installed\nSource: zlib\nVersion: 1:1.2.13.dfsg-1\n";
    const DEBIAN: &str =
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n";

    #[test]
    fn dpkg_status_gives_installed_packages_with_their_sources() {
        let inv = read(readers(vec![
            gzip(&layer(&[("etc/os-release", DEBIAN)])),
            layer(&[("./var/lib/dpkg/status", STATUS)]),
        ]))
        .unwrap();
        assert_eq!(inv.family, Some(Family::Debian));
        assert_eq!(inv.release.as_deref(), Some("12"));
        assert_eq!(inv.os, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(
            inv.packages,
            [
                Package {
                    name: "libssl3".into(),
                    version: "3.0.11-1~deb12u1+b1".into(),
                    source: Some("openssl".into()),
                    source_version: Some("3.0.11-1~deb12u1".into()),
                },
                Package {
                    name: "zlib1g".into(),
                    version: "1:1.2.13.dfsg-1".into(),
                    source: Some("zlib".into()),
                    source_version: None,
                },
            ]
        );
    }

    #[test]
    fn later_layers_replace_and_whiteouts_remove() {
        let first = layer(&[
            ("var/lib/dpkg/status", STATUS),
            (
                "var/lib/dpkg/status.d/base",
                "Package: base-files\nVersion: 12.4\n",
            ),
        ]);
        // The status file replaced; the status.d directory emptied by an opaque marker.
        let second = layer(&[
            (
                "var/lib/dpkg/status",
                "Package: only\nStatus: install ok installed\nVersion: 2\n",
            ),
            ("var/lib/dpkg/status.d/.wh..wh..opq", ""),
        ]);
        let inv = read(readers(vec![first.clone(), second])).unwrap();
        let names: Vec<&str> = inv.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["only"]);
        // A whiteout of the database: no packages, no family.
        let inv = read(readers(vec![first, layer(&[("var/lib/.wh.dpkg", "")])])).unwrap();
        assert_eq!(inv.family, None);
        assert!(inv.packages.is_empty());
    }

    #[test]
    fn apk_database_and_alpine_branch() {
        let apk = "C:Q1abc=\nP:musl\nV:1.2.4-r2\no:musl\n\nP:libcrypto3\nV:3.1.4-r1\no:openssl\n";
        let os = "NAME=\"Alpine Linux\"\nID=alpine\nVERSION_ID=3.19.1\nPRETTY_NAME=\"Alpine Linux v3.19\"\n";
        let inv = read(readers(vec![layer(&[
            ("lib/apk/db/installed", apk),
            ("etc/os-release", os),
        ])]))
        .unwrap();
        assert_eq!(inv.family, Some(Family::Alpine));
        assert_eq!(inv.release.as_deref(), Some("v3.19"));
        assert_eq!(inv.packages.len(), 2);
        assert_eq!(inv.packages[0].name, "libcrypto3");
        assert_eq!(inv.packages[0].source.as_deref(), Some("openssl"));
        assert_eq!(inv.packages[1].source, None);
    }

    #[test]
    fn a_docker_save_archive_is_read_layer_by_layer_in_its_order() {
        // Layers listed bottom first, stored in another order, as `docker save` may.
        let bottom = layer(&[("var/lib/dpkg/status", STATUS), ("etc/os-release", DEBIAN)]);
        let top = layer(&[("var/lib/dpkg/status", "Package: only\nVersion: 2\n")]);
        let manifest = r#"[{"Config":"abc123.json","RepoTags":["x:1"],"Layers":["b/layer.tar","a/layer.tar"]}]"#;
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in [
            ("a/layer.tar", top.as_slice()),
            ("manifest.json", manifest.as_bytes()),
            ("b/layer.tar", bottom.as_slice()),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        }
        let archive = std::io::Cursor::new(b.into_inner().unwrap());
        let (inv, id) = docker_save(archive).unwrap();
        assert_eq!(id, "sha256:abc123");
        assert_eq!(inv.release.as_deref(), Some("12"));
        let names: Vec<&str> = inv.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["only"], "the top layer's status file wins");
        let e = docker_save(std::io::Cursor::new(layer(&[("x", "y")]))).unwrap_err();
        assert!(e.to_string().contains("manifest.json"), "{e}");
    }

    #[test]
    fn scratch_images_have_nothing_and_junk_is_refused() {
        let inv = read(readers(vec![layer(&[("app", "binary")])])).unwrap();
        assert_eq!(inv, Inventory::default());
        let e = read(readers(vec![
            b"not a tar archive at all, just words".repeat(20),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("layer 0"), "{e}");
    }
}
