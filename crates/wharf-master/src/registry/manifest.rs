//! Manifests as the registry needs them: which media type a manifest is (OCI or Docker schema 2,
//! image or index), and what it refers to — the blobs (config and layers) that must be in the
//! repository before it is accepted, and the child manifests of an index. Garbage collection
//! keeps exactly what manifests refer to. Pure.

use serde::Deserialize;

use super::path::Digest;

/// The largest manifest accepted (the reference registry's limit).
pub const MAX_MANIFEST: usize = 4 * 1024 * 1024;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// The media types of manifests this registry stores.
pub const MEDIA_TYPES: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Layers a registry never holds (Windows base layers, fetched from their `urls`).
const FOREIGN: [&str; 2] = [
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
];

/// What a manifest refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub media_type: String,
    /// Config and layers: blobs of the same repository.
    pub blobs: Vec<Digest>,
    /// An index's manifests: manifests of the same repository.
    pub manifests: Vec<Digest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<u32>,
    media_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: Option<String>,
    digest: String,
}

/// Parse `body` sent with `Content-Type: content_type`. `Err` is the message of a
/// `MANIFEST_INVALID`.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Parsed, String> {
    let raw: Raw = serde_json::from_slice(body).map_err(|e| format!("not a manifest: {e}"))?;
    if raw.schema_version != Some(2) {
        return Err("schemaVersion must be 2 (schema 1 manifests are not accepted)".into());
    }
    let header = content_type.map(|c| c.split(';').next().unwrap_or(c).trim());
    let media_type = match (header, raw.media_type.as_deref()) {
        (Some(h), Some(b)) if h != b => {
            return Err(format!(
                "Content-Type {h} differs from the manifest's mediaType {b}"
            ));
        }
        (_, Some(t)) => t.to_string(),
        (Some(h), None) => h.to_string(),
        (None, None) if raw.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) => OCI_MANIFEST.to_string(),
    };
    if !MEDIA_TYPES.contains(&media_type.as_str()) {
        return Err(format!(
            "media type {:?} is not a manifest this registry stores ({})",
            wharf_types::excerpt(&media_type, 80),
            MEDIA_TYPES.join(", ")
        ));
    }
    let digest = |d: &Descriptor| Digest::parse(&d.digest);
    let index = media_type == OCI_INDEX || media_type == DOCKER_LIST;
    let mut parsed = Parsed {
        media_type,
        blobs: vec![],
        manifests: vec![],
    };
    if index {
        let Some(children) = raw.manifests else {
            return Err("an index needs `manifests`".into());
        };
        parsed.manifests = children.iter().map(digest).collect::<Result<_, _>>()?;
    } else {
        let Some(config) = raw.config else {
            return Err("an image manifest needs `config`".into());
        };
        parsed.blobs.push(digest(&config)?);
        for l in &raw.layers {
            if !l
                .media_type
                .as_deref()
                .is_some_and(|t| FOREIGN.contains(&t))
            {
                parsed.blobs.push(digest(l)?);
            }
        }
    }
    Ok(parsed)
}

/// Which of the stored media types `accept` (an `Accept` header's values) allows for a manifest
/// of `media_type`: `true` when no header, `*/*`, or the type is named.
pub fn acceptable(accept: &[&str], media_type: &str) -> bool {
    let types = || {
        accept
            .iter()
            .flat_map(|a| a.split(','))
            .map(|t| t.split(';').next().unwrap_or(t).trim())
    };
    accept.is_empty() || types().any(|t| t == media_type || t == "*/*" || t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn manifests_name_what_they_refer_to() {
        let image = |mt: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{mt}","config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}},{{"digest":"{}"}}]}}"#,
                d('a'),
                d('b'),
                d('c')
            )
        };
        let index = |mt: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{mt}","manifests":[{{"digest":"{}"}}]}}"#,
                d('e')
            )
        };
        let blobs = |cs: &str| {
            cs.chars()
                .map(|c| Digest::parse(&d(c)).unwrap())
                .collect::<Vec<_>>()
        };
        for (ct, body, want) in [
            (
                Some(DOCKER_MANIFEST),
                image(DOCKER_MANIFEST),
                Ok((DOCKER_MANIFEST, "abc", "")),
            ),
            (
                Some(OCI_MANIFEST),
                image(OCI_MANIFEST),
                Ok((OCI_MANIFEST, "abc", "")),
            ),
            (Some(OCI_INDEX), index(OCI_INDEX), Ok((OCI_INDEX, "", "e"))),
            (
                Some(DOCKER_LIST),
                index(DOCKER_LIST),
                Ok((DOCKER_LIST, "", "e")),
            ),
            // OCI lets mediaType out of the body: the header says it.
            (
                Some(OCI_MANIFEST),
                format!(
                    r#"{{"schemaVersion":2,"config":{{"digest":"{}"}},"layers":[]}}"#,
                    d('a')
                ),
                Ok((OCI_MANIFEST, "a", "")),
            ),
            // A foreign layer is not in the registry.
            (
                Some(DOCKER_MANIFEST),
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"digest":"{}"}},"layers":[{{"mediaType":"{}","digest":"{}"}}]}}"#,
                    d('a'),
                    FOREIGN[0],
                    d('f')
                ),
                Ok((DOCKER_MANIFEST, "a", "")),
            ),
            (Some(OCI_INDEX), image(DOCKER_MANIFEST), Err("differs from")),
            (
                Some("text/plain"),
                r#"{"schemaVersion":2,"config":{"digest":"x"}}"#.into(),
                Err("not a manifest this registry"),
            ),
            (
                Some(OCI_MANIFEST),
                r#"{"schemaVersion":1}"#.into(),
                Err("schemaVersion must be 2"),
            ),
            (
                Some(OCI_MANIFEST),
                r#"{"schemaVersion":2}"#.into(),
                Err("needs `config`"),
            ),
            (
                Some(OCI_INDEX),
                r#"{"schemaVersion":2}"#.into(),
                Err("needs `manifests`"),
            ),
            (
                Some(OCI_MANIFEST),
                r#"{"schemaVersion":2,"config":{"digest":"sha256:../x"}}"#.into(),
                Err("not a sha256 digest"),
            ),
            (None, "not json".into(), Err("not a manifest")),
        ] {
            let got = parse(ct, body.as_bytes());
            match (got, want) {
                (Ok(p), Ok((mt, b, m))) => {
                    assert_eq!(
                        p,
                        Parsed {
                            media_type: mt.into(),
                            blobs: blobs(b),
                            manifests: blobs(m)
                        },
                        "{body}"
                    );
                }
                (Err(e), Err(w)) => assert!(e.contains(w), "{body}: {e}"),
                (got, want) => panic!("{body}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn accept_headers_allow_named_types_and_wildcards() {
        assert!(acceptable(&[], OCI_MANIFEST));
        assert!(acceptable(&["*/*"], OCI_MANIFEST));
        assert!(acceptable(
            &[&format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.5")],
            OCI_MANIFEST
        ));
        assert!(!acceptable(&[DOCKER_MANIFEST], OCI_INDEX));
    }
}
