//! Where a node's mirror gets what it does not hold: the seam (`Source`) and the master over a
//! node-certificate TLS connection to its agent port (`LinkSource`: one `ToMaster::Fetch`
//! frame, one `FetchAnswer` frame, the bytes).

use std::sync::Arc;

use tokio::io::AsyncRead;
use wharf_link::rustls::ClientConfig;
use wharf_types::{FetchAnswer, FetchRequest, ToMaster};

/// Content a source hands over: its header and a reader of exactly `size` bytes.
pub struct Content {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub body: Box<dyn AsyncRead + Send + Unpin>,
}

/// Why a source has nothing to hand over.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The registry has no such manifest or blob.
    #[error("{0}")]
    Missing(String),
    /// It could not be asked or could not answer (try again).
    #[error("{0}")]
    Failed(String),
}

/// The registry content a mirror reads through to.
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    async fn fetch(&self, req: &FetchRequest) -> Result<Content, FetchError>;
}

/// The master (each of `--join`'s in turn), asked with the node's certificate; for a blob
/// the master may send it to a peer that has it (`peer.rs`), and is asked for the bytes again
/// when that peer fails.
pub struct LinkSource {
    masters: Vec<String>,
    config: Arc<ClientConfig>,
    /// The port this node serves its peers on, if it does.
    peer_port: Option<u16>,
}

impl LinkSource {
    pub fn new(
        join: &str,
        identity: &crate::link::NodeIdentity,
        peer_port: Option<u16>,
    ) -> Result<LinkSource, String> {
        let config = wharf_link::tls::node_client_config(
            &identity.ca_pem,
            &identity.cert_pem,
            &identity.key_pem,
        )
        .map_err(|e| e.to_string())?;
        Ok(LinkSource {
            masters: crate::link::master_addrs(join),
            config,
            peer_port,
        })
    }

    /// Ask the masters in turn; a peer when one sends this node to it.
    async fn ask_masters(&self, req: &FetchRequest) -> Result<Content, FetchError> {
        let mut last = FetchError::Failed("no master to ask".into());
        for addr in &self.masters {
            match self.ask(addr, req).await {
                Ok(Answer::Content(c)) => return Ok(c),
                Ok(Answer::Peer { node, address }) => {
                    match super::peer::fetch(self.config.clone(), &node, &address, req).await {
                        Ok(c) => return Ok(c),
                        Err(e) => {
                            tracing::info!(peer = %node, error = %e, "mirror: the peer failed; asking the master for the bytes");
                            let direct = FetchRequest {
                                instead_of: Some(node),
                                ..req.clone()
                            };
                            return match self.ask(addr, &direct).await? {
                                Answer::Content(c) => Ok(c),
                                Answer::Peer { .. } => {
                                    Err(FetchError::Failed("the master sent a peer again".into()))
                                }
                            };
                        }
                    }
                }
                Err(FetchError::Missing(m)) => return Err(FetchError::Missing(m)),
                Err(e) => {
                    tracing::info!(master = %addr, error = %e, "mirror: fetch failed; asking the next master");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn ask(&self, addr: &str, req: &FetchRequest) -> Result<Answer, FetchError> {
        let failed = |e: String| FetchError::Failed(format!("master {addr}: {e}"));
        let mut tls = crate::link::connect(addr, self.config.clone())
            .await
            .map_err(|e| failed(e.to_string()))?;
        let answer = super::exchange(&mut tls, &ToMaster::Fetch(req.clone()))
            .await
            .map_err(failed)?;
        match answer {
            FetchAnswer::Content {
                media_type,
                digest,
                size,
            } => {
                use tokio::io::AsyncReadExt;
                Ok(Answer::Content(Content {
                    media_type,
                    digest,
                    size,
                    body: Box::new(tls.take(size)),
                }))
            }
            FetchAnswer::Peer { node, address } => Ok(Answer::Peer { node, address }),
            FetchAnswer::Missing { message } => Err(FetchError::Missing(message)),
            FetchAnswer::Failed { message } => Err(failed(message)),
        }
    }
}

/// What a master answers: the content, or a peer to ask.
enum Answer {
    Content(Content),
    Peer { node: String, address: String },
}

#[async_trait::async_trait]
impl Source for LinkSource {
    async fn fetch(&self, req: &FetchRequest) -> Result<Content, FetchError> {
        let req = FetchRequest {
            peer_port: self.peer_port,
            ..req.clone()
        };
        self.ask_masters(&req).await
    }
}
