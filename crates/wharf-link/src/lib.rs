//! The link between the master and its agents: the cluster CA and node certificates (`pki`), join
//! tokens (`token`), the TLS configurations of both ends (`tls`), and length-prefixed JSON frames
//! (`frame`).
//!
//! Trust model (like Docker Swarm's): the master owns a cluster CA. A new agent joins with a token
//! that carries the CA's fingerprint (so it can pin the master without a prior trust store) and a
//! secret (so the master knows the agent was invited). The master signs the agent's CSR with the CN
//! set to the node id it assigns; from then on the agent connects with mutual TLS.
#![forbid(unsafe_code)]

pub mod frame;
pub mod pki;
pub mod tls;
pub mod token;

pub use pki::{Ca, NodeKey};
pub use token::JoinToken;

/// The name the master's server certificate carries and agents verify, whatever address they dial.
pub const MASTER_NAME: &str = "wharf-master";

/// Errors of the link's building blocks.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Pki(String),
    #[error("invalid join token: {0}")]
    Token(String),
    #[error("tls: {0}")]
    Tls(String),
    #[error("frame of {0} bytes is larger than the limit of {max} bytes", max = frame::MAX_FRAME)]
    FrameTooLarge(usize),
    #[error("malformed frame: {0}")]
    Decode(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<rcgen::Error> for LinkError {
    fn from(e: rcgen::Error) -> Self {
        LinkError::Pki(e.to_string())
    }
}

impl From<rustls::Error> for LinkError {
    fn from(e: rustls::Error) -> Self {
        LinkError::Tls(e.to_string())
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub use {rcgen, rustls, tokio_rustls};
