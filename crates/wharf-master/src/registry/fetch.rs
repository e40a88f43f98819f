//! What a node's mirror asks the master for (`wharf_types::FetchRequest`): a manifest by tag or
//! digest, or a blob the repository may use. Answered from the registry's store and disk; the
//! connection (`agents.rs`, a node's certificate on the agent port) or the in-process mirror of
//! `wharf up` sends the bytes.

use wharf_types::{FetchAnswer, FetchRequest, FetchWhat};

use super::path::{Digest, Reference, valid_name};
use crate::Master;

/// The answer to a fetch: the content's header and its open file, or why not.
pub enum Fetched {
    Content {
        media_type: String,
        digest: String,
        size: u64,
        file: tokio::fs::File,
    },
    /// `FetchAnswer::Missing` or `Failed`.
    Not(FetchAnswer),
}

fn missing(message: String) -> Fetched {
    Fetched::Not(FetchAnswer::Missing { message })
}

fn failed(message: String) -> Fetched {
    Fetched::Not(FetchAnswer::Failed { message })
}

impl Master {
    /// Answer a node's mirror from this master's registry. Bytes served are counted in
    /// `wharf_registry_node_fetch_bytes_total` (what the master serves nodes, however many pull).
    pub async fn registry_fetch(&self, req: &FetchRequest) -> Fetched {
        let Some(reg) = self.registry.clone() else {
            return missing("this master serves no registry".into());
        };
        if !valid_name(&req.repo) {
            return missing(format!(
                "{:?} is not a repository name",
                wharf_types::excerpt(&req.repo, 80)
            ));
        }
        let (digest, media_type) = match &req.what {
            FetchWhat::Manifest { reference } => {
                let d = match Reference::parse(reference) {
                    Err(e) => return missing(e),
                    Ok(Reference::Digest(d)) => d,
                    Ok(Reference::Tag(t)) => match self.registry_tag(&req.repo, &t).await {
                        Ok(Some(t)) => match Digest::parse(&t.digest) {
                            Ok(d) => d,
                            Err(e) => return failed(e),
                        },
                        Ok(None) => return missing(format!("{} has no tag {t}", req.repo)),
                        Err(e) => return failed(e.to_string()),
                    },
                };
                match self.registry_manifest(&req.repo, &d).await {
                    Ok(Some(m)) => (d, m.media_type),
                    Ok(None) => return missing(format!("{} has no manifest {d}", req.repo)),
                    Err(e) => return failed(e.to_string()),
                }
            }
            FetchWhat::Blob { digest } => {
                let d = match Digest::parse(digest) {
                    Ok(d) => d,
                    Err(e) => return missing(e),
                };
                match self.registry_link(&req.repo, &d).await {
                    Ok(Some(_)) => (d, "application/octet-stream".to_string()),
                    Ok(None) => return missing(format!("{} has no blob {d}", req.repo)),
                    Err(e) => return failed(e.to_string()),
                }
            }
        };
        let file = match reg.blobs.open_blob(&digest).await {
            Ok(f) => f,
            Err(e) => return failed(format!("cannot read {digest}: {e}")),
        };
        let size = match file.metadata().await {
            Ok(m) => m.len(),
            Err(e) => return failed(format!("cannot read {digest}: {e}")),
        };
        metrics::counter!("wharf_registry_node_fetch_bytes_total").increment(size);
        Fetched::Content {
            media_type,
            digest: digest.to_string(),
            size,
            file,
        }
    }
}
