//! Images of the cluster's registry: references (`ImageRef`: `host/name:tag@digest`), the host
//! that names the cluster's own registry in a pinned spec (`CLUSTER_REGISTRY`), and the fetch
//! protocol of a node's mirror (`FetchRequest`, `FetchAnswer`: one request per mutual-TLS
//! connection to the master's agent port, the content's bytes after the answer).

use serde::{Deserialize, Serialize};

/// The registry host a deploy writes for images of the cluster's own registry, whatever name
/// the stack file used for it (the master's address, or this one): agents pull them through
/// their node's mirror. A stack file may use it too.
pub const CLUSTER_REGISTRY: &str = "wharf.local";

/// An image reference: `[host/]name[:tag][@digest]`, as Docker reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host (with its port), when the reference names one: the first component
    /// when it has a `.` or `:` or is `localhost`.
    pub host: Option<String>,
    /// The repository within the registry: `shop/web`.
    pub name: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Read `s`; `None` when it is not a reference (empty name, an empty tag or digest).
    pub fn parse(s: &str) -> Option<ImageRef> {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (s, None),
        };
        if digest.as_deref().is_some_and(|d| !valid_digest(d)) {
            return None;
        }
        let (host, path) = match rest.split_once('/') {
            Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => {
                (Some(h.to_string()), p)
            }
            _ => (None, rest),
        };
        // A tag is after the last ':' of the path (a host's port is not in `path`).
        let (name, tag) = match path.rsplit_once(':') {
            Some((n, t)) if !t.contains('/') => (n, Some(t.to_string())),
            _ => (path, None),
        };
        if name.is_empty() || tag.as_deref() == Some("") {
            return None;
        }
        Some(ImageRef {
            host,
            name: name.to_string(),
            tag,
            digest,
        })
    }

    /// The tag, `latest` when none is named.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }

    /// The same image in the cluster's registry, pinned: `wharf.local/name:tag@digest`.
    pub fn pinned(&self, digest: &str) -> String {
        format!(
            "{CLUSTER_REGISTRY}/{}:{}@{digest}",
            self.name,
            self.tag_or_latest()
        )
    }

    /// Whether the host names the cluster's registry: `wharf.local`, or one of `hosts`.
    pub fn in_cluster_registry(&self, hosts: &[String]) -> bool {
        self.host
            .as_deref()
            .is_some_and(|h| h == CLUSTER_REGISTRY || hosts.iter().any(|x| x == h))
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(h) = &self.host {
            write!(f, "{h}/")?;
        }
        write!(f, "{}", self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `sha256:` and 64 lower-case hex digits.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// What a node's mirror asks the master for (`ToMaster::Fetch`, the first and only frame of a
/// fetch connection).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The repository: `shop/web`.
    pub repo: String,
    pub what: FetchWhat,
    /// The port the asking node serves its peers on (its mirror's blobs), if it does: the master
    /// sends later askers of the same blob there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
    /// The peer this node was sent to and that failed it: send the bytes, not a peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instead_of: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FetchWhat {
    /// A manifest by tag or digest.
    Manifest { reference: String },
    /// A blob (a layer or a config) by digest.
    Blob { digest: String },
}

/// The master's answer to a `FetchRequest`; after `Content`, exactly `size` bytes follow on
/// the connection, and it ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum FetchAnswer {
    Content {
        media_type: String,
        digest: String,
        size: u64,
    },
    /// Ask peer `node` at `address` (`ip:port`, its peer port) instead: it has the blob, or is
    /// fetching it.
    Peer { node: String, address: String },
    /// Not in the registry (or not in that repository).
    Missing { message: String },
    /// Cannot be answered now (the store, the disk): try again.
    Failed { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// A reference, and its host, name, tag, and whether it has a digest.
    type Case<'a> = (&'a str, Option<&'a str>, &'a str, Option<&'a str>, bool);

    #[test]
    fn references_are_read_as_docker_reads_them() {
        let cases: &[Case] = &[
            ("web", None, "web", None, false),
            ("shop/web:1.2", None, "shop/web", Some("1.2"), false),
            (
                "127.0.0.1:7700/shop/web:v1",
                Some("127.0.0.1:7700"),
                "shop/web",
                Some("v1"),
                false,
            ),
            ("localhost/web", Some("localhost"), "web", None, false),
            (
                "wharf.local/shop/web@D",
                Some("wharf.local"),
                "shop/web",
                None,
                true,
            ),
            (
                "wharf.local/shop/web:v1@D",
                Some("wharf.local"),
                "shop/web",
                Some("v1"),
                true,
            ),
            ("reg:5000/web", Some("reg:5000"), "web", None, false),
        ];
        for (s, host, name, tag, digest) in cases {
            let s = s.replace('D', D);
            let r = ImageRef::parse(&s).unwrap_or_else(|| panic!("{s} should parse"));
            assert_eq!(r.host.as_deref(), *host, "{s}");
            assert_eq!(r.name, *name, "{s}");
            assert_eq!(r.tag.as_deref(), *tag, "{s}");
            assert_eq!(r.digest.is_some(), *digest, "{s}");
            assert_eq!(r.to_string(), s, "round trip");
        }
        for bad in [
            "",
            "web:",
            "web@sha256:12",
            "reg:5000/",
            "@".to_string().as_str(),
        ] {
            assert!(ImageRef::parse(bad).is_none(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn pinning_names_the_cluster_registry_and_keeps_the_tag() {
        let r = ImageRef::parse("127.0.0.1:7700/shop/web").unwrap();
        assert!(r.in_cluster_registry(&["127.0.0.1:7700".into()]));
        assert!(!r.in_cluster_registry(&["127.0.0.1:7701".into()]));
        assert_eq!(r.pinned(D), format!("wharf.local/shop/web:latest@{D}"));
        let p = ImageRef::parse(&r.pinned(D)).unwrap();
        assert!(p.in_cluster_registry(&[]));
        assert_eq!(p.digest.as_deref(), Some(D));
    }
}
