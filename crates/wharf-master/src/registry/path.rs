//! The names of the OCI Distribution API, parsed by the spec's grammar: repository names,
//! tags, digests, upload ids, and which route a `/v2/...` path is. Pure; nothing parsed here
//! can name a file outside the registry's directory (no `.`/`..` component, no `/` in a digest,
//! tag or upload id).

use std::fmt;

/// A repository name's longest accepted length (Docker's limit, with its host part).
pub const MAX_NAME: usize = 255;

/// A content digest: `sha256:` and 64 lower-case hex digits (the only algorithm stored).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    /// Parse `s` by the spec's digest grammar; an algorithm other than sha256 is refused with
    /// a message saying so (`algorithm:encoded` per `[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+`).
    pub fn parse(s: &str) -> Result<Digest, String> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(format!("{s:?} is not a digest (algorithm:hex)"));
        };
        if alg != "sha256" {
            return Err(format!(
                "digest algorithm {:?} is not supported (sha256 only)",
                wharf_types::excerpt(alg, 20)
            ));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "{:?} is not a sha256 digest (64 lower-case hex digits)",
                wharf_types::excerpt(s, 80)
            ));
        }
        Ok(Digest(s.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_sha256(sha2::Sha256::digest(bytes).into())
    }

    pub fn from_sha256(sum: [u8; 32]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(sum)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part: a file name.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `name` is a repository name: path components of `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
/// joined by `/`, at most `MAX_NAME` bytes.
pub fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME && !name.is_empty() && name.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    // Between alphanumeric runs: one `.`, one or two `_`, or any number of `-`.
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `tag` is a tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// A manifest reference: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, String> {
        if s.contains(':') {
            return Digest::parse(s).map(Reference::Digest);
        }
        if valid_tag(s) {
            Ok(Reference::Tag(s.to_string()))
        } else {
            Err(format!(
                "{:?} is neither a tag ([a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}) nor a digest",
                wharf_types::excerpt(s, 80)
            ))
        }
    }
}

/// Whether `id` is an upload id this registry hands out (hex, at most 64 characters).
pub fn valid_upload_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The routes of the API, by path (the method is the handler's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API's version check (and Docker's login).
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/NAME/tags/list`
    Tags { name: String },
    /// `/v2/NAME/manifests/REFERENCE`
    Manifest { name: String, reference: Reference },
    /// `/v2/NAME/blobs/DIGEST`
    Blob { name: String, digest: Digest },
    /// `/v2/NAME/blobs/uploads/`
    Uploads { name: String },
    /// `/v2/NAME/blobs/uploads/ID`
    Upload { name: String, id: String },
}

impl Route {
    /// The route of `path` (the part after `/v2/`), or why it is none: `(code, message)` with
    /// the spec's error code (`NAME_INVALID`, `DIGEST_INVALID`, `MANIFEST_INVALID`…).
    pub fn parse(path: &str) -> Result<Route, (&'static str, String)> {
        let unknown = || ("NOT_FOUND", "no such route of the registry API".to_string());
        if path.is_empty() {
            return Ok(Route::Base);
        }
        if path == "_catalog" {
            return Ok(Route::Catalog);
        }
        let name_ok = |name: &str| {
            if valid_name(name) {
                Ok(name.to_string())
            } else {
                Err((
                    "NAME_INVALID",
                    format!(
                        "{:?} is not a repository name (lower-case components joined by /)",
                        wharf_types::excerpt(name, 80)
                    ),
                ))
            }
        };
        if let Some(name) = path.strip_suffix("/tags/list") {
            return Ok(Route::Tags {
                name: name_ok(name)?,
            });
        }
        let trimmed = path.strip_suffix('/').unwrap_or(path);
        if let Some(name) = trimmed.strip_suffix("/blobs/uploads") {
            return Ok(Route::Uploads {
                name: name_ok(name)?,
            });
        }
        let (head, last) = trimmed.rsplit_once('/').ok_or_else(unknown)?;
        if let Some(name) = head.strip_suffix("/blobs/uploads") {
            if !valid_upload_id(last) {
                return Err(("BLOB_UPLOAD_UNKNOWN", "no such upload".to_string()));
            }
            return Ok(Route::Upload {
                name: name_ok(name)?,
                id: last.to_string(),
            });
        }
        if let Some(name) = head.strip_suffix("/manifests") {
            let reference = Reference::parse(last).map_err(|e| ("MANIFEST_INVALID", e))?;
            return Ok(Route::Manifest {
                name: name_ok(name)?,
                reference,
            });
        }
        if let Some(name) = head.strip_suffix("/blobs") {
            let digest = Digest::parse(last).map_err(|e| ("DIGEST_INVALID", e))?;
            return Ok(Route::Blob {
                name: name_ok(name)?,
                digest,
            });
        }
        Err(unknown())
    }

    /// The route as the policy table names it (`policy::OPERATIONS`).
    pub fn pattern(&self) -> &'static str {
        match self {
            Route::Base => "/v2/",
            Route::Catalog => "/v2/_catalog",
            Route::Tags { .. } => "/v2/{name}/tags/list",
            Route::Manifest { .. } => "/v2/{name}/manifests/{reference}",
            Route::Blob { .. } => "/v2/{name}/blobs/{digest}",
            Route::Uploads { .. } => "/v2/{name}/blobs/uploads/",
            Route::Upload { .. } => "/v2/{name}/blobs/uploads/{id}",
        }
    }

    /// The repository the route acts on.
    pub fn name(&self) -> Option<&str> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags { name }
            | Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Uploads { name }
            | Route::Upload { name, .. } => Some(name),
        }
    }
}

/// The stack a repository belongs to, for a token's stack scope: its first component
/// (`shop/web` and `shop` are stack `shop`'s).
pub fn stack_of(name: &str) -> &str {
    name.split('/').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec_grammar() {
        for (name, ok) in [
            ("shop", true),
            ("shop/web", true),
            ("a/b/c-d/e.f/g__h", true),
            ("a---b", true),
            ("a_b", true),
            ("a__b", true),
            ("a___b", false),
            ("a..b", false),
            ("a.-b", false),
            ("Shop", false),
            ("shop/", false),
            ("/shop", false),
            ("shop//web", false),
            ("..", false),
            ("a/../b", false),
            ("-a", false),
            ("a-", false),
            ("", false),
            ("a b", false),
        ] {
            assert_eq!(valid_name(name), ok, "{name:?}");
        }
        assert!(valid_name(&"a".repeat(255)));
        assert!(!valid_name(&"a".repeat(256)), "longer than 255");
    }

    #[test]
    fn tags_and_digests_follow_the_spec_grammar() {
        for (tag, ok) in [
            ("latest", true),
            ("v1.2.3-rc_1", true),
            ("_x", true),
            (".x", false),
            ("-x", false),
            ("a/b", false),
            ("", false),
        ] {
            assert_eq!(valid_tag(tag), ok, "{tag:?}");
        }
        assert!(valid_tag(&"a".repeat(128)));
        assert!(!valid_tag(&"a".repeat(129)));
        let hex = "a".repeat(64);
        assert!(Digest::parse(&format!("sha256:{hex}")).is_ok());
        for (bad, why) in [
            (format!("sha512:{hex}"), "not supported"),
            (format!("sha256:{}", "A".repeat(64)), "64 lower-case hex"),
            (format!("sha256:{}", "a".repeat(63)), "64 lower-case hex"),
            ("sha256:../../etc".to_string(), "64 lower-case hex"),
            ("nocolon".to_string(), "not a digest"),
        ] {
            let e = Digest::parse(&bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn paths_parse_into_routes_and_never_into_a_bad_name() {
        let d = format!("sha256:{}", "0".repeat(64));
        let dig = Digest::parse(&d).unwrap();
        let ok: Vec<(String, Route)> = vec![
            ("".into(), Route::Base),
            ("_catalog".into(), Route::Catalog),
            ("a/b/tags/list".into(), Route::Tags { name: "a/b".into() }),
            (
                "a/manifests/latest".into(),
                Route::Manifest {
                    name: "a".into(),
                    reference: Reference::Tag("latest".into()),
                },
            ),
            (
                format!("a/b/manifests/{d}"),
                Route::Manifest {
                    name: "a/b".into(),
                    reference: Reference::Digest(dig.clone()),
                },
            ),
            (
                format!("a/blobs/{d}"),
                Route::Blob {
                    name: "a".into(),
                    digest: dig.clone(),
                },
            ),
            (
                "a/b/blobs/uploads/".into(),
                Route::Uploads { name: "a/b".into() },
            ),
            (
                "a/b/blobs/uploads".into(),
                Route::Uploads { name: "a/b".into() },
            ),
            (
                "a/blobs/uploads/0af3".into(),
                Route::Upload {
                    name: "a".into(),
                    id: "0af3".into(),
                },
            ),
            // A repository may have a component called `blobs` or `manifests`.
            (
                "blobs/manifests/manifests/v1".into(),
                Route::Manifest {
                    name: "blobs/manifests".into(),
                    reference: Reference::Tag("v1".into()),
                },
            ),
        ];
        for (path, want) in ok {
            assert_eq!(Route::parse(&path), Ok(want), "{path:?}");
        }
        for (path, code) in [
            ("A/tags/list", "NAME_INVALID"),
            ("../x/tags/list", "NAME_INVALID"),
            ("a/blobs/sha256:abc", "DIGEST_INVALID"),
            ("a/blobs/sha256:../../x", "NOT_FOUND"),
            ("a/blobs/uploads/../../x", "NOT_FOUND"),
            ("a/blobs/uploads/not-hex!", "BLOB_UPLOAD_UNKNOWN"),
            ("a/manifests/.hidden", "MANIFEST_INVALID"),
            ("a/other/thing", "NOT_FOUND"),
            ("a", "NOT_FOUND"),
        ] {
            let got = Route::parse(path).map_err(|e| e.0);
            assert_eq!(got, Err(code), "{path:?}");
        }
    }

    #[test]
    fn a_repository_belongs_to_the_stack_of_its_first_component() {
        for (name, stack) in [("shop", "shop"), ("shop/web", "shop"), ("shop/a/b", "shop")] {
            assert_eq!(stack_of(name), stack);
        }
    }
}
