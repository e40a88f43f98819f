//! Join tokens: `WJT1-<64 hex: sha256 of the CA certificate DER>-<32 hex: secret>`.
//!
//! The fingerprint lets a joining agent pin the master's CA; the secret proves it was invited. The
//! master stores only `sha256(secret)` (see [`JoinToken::secret_hash`]).

use std::fmt;
use std::str::FromStr;

use crate::{LinkError, sha256_hex};

const PREFIX: &str = "WJT1";

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Lowercase hex SHA-256 of the cluster CA certificate (DER).
    pub ca_fingerprint: String,
    /// Lowercase hex, 128 random bits.
    pub secret: String,
}

impl JoinToken {
    /// A new token for the CA with `ca_fingerprint`, with a fresh random secret.
    pub fn generate(ca_fingerprint: &str) -> JoinToken {
        let bytes: [u8; 16] = rand::random();
        JoinToken {
            ca_fingerprint: ca_fingerprint.to_ascii_lowercase(),
            secret: hex::encode(bytes),
        }
    }

    /// What the master stores: hex SHA-256 of the secret.
    pub fn secret_hash(&self) -> String {
        sha256_hex(self.secret.as_bytes())
    }

    pub fn parse(s: &str) -> Result<JoinToken, LinkError> {
        let s = s.trim();
        let bad = |why: &str| LinkError::Token(why.to_string());
        let mut parts = s.split('-');
        let (Some(prefix), Some(fp), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad(
                "expected WJT1-<64 hex digits>-<32 hex digits> (create one with `wharf node token create`)",
            ));
        };
        if prefix != PREFIX {
            return Err(bad(&format!(
                "unknown token version \"{prefix}\" (expected {PREFIX})"
            )));
        }
        let is_hex = |t: &str| t.bytes().all(|b| b.is_ascii_hexdigit());
        if fp.len() != 64 || !is_hex(fp) {
            return Err(bad("the CA fingerprint must be 64 hex digits"));
        }
        if secret.len() != 32 || !is_hex(secret) {
            return Err(bad("the secret must be 32 hex digits"));
        }
        Ok(JoinToken {
            ca_fingerprint: fp.to_ascii_lowercase(),
            secret: secret.to_ascii_lowercase(),
        })
    }
}

impl FromStr for JoinToken {
    type Err = LinkError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JoinToken::parse(s)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{}-{}", self.ca_fingerprint, self.secret)
    }
}

/// Never print the secret by accident.
impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = JoinToken::generate(&"ab".repeat(32));
        let s = t.to_string();
        assert!(s.starts_with("WJT1-"));
        assert_eq!(s.len(), 4 + 1 + 64 + 1 + 32);
        assert_eq!(JoinToken::parse(&s).unwrap(), t);
        assert_eq!(JoinToken::parse(&format!("  {s}\n")).unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.secret));
        assert_eq!(t.secret_hash(), sha256_hex(t.secret.as_bytes()));
    }

    #[test]
    fn bad_tokens() {
        let fp = "ab".repeat(32);
        let sec = "cd".repeat(16);
        for (tok, want) in [
            ("", "expected WJT1-"),
            ("hello", "expected WJT1-"),
            (&format!("WJT2-{fp}-{sec}"), "unknown token version"),
            (&format!("WJT1-{}-{sec}", &fp[..62]), "fingerprint"),
            (&format!("WJT1-{}zz-{sec}", &fp[..62]), "fingerprint"),
            (&format!("WJT1-{fp}-{}", &sec[..30]), "secret"),
            (&format!("WJT1-{fp}-{sec}-x"), "expected WJT1-"),
        ] {
            let e = JoinToken::parse(tok).unwrap_err().to_string();
            assert!(e.contains(want), "{tok:?}: {e}");
            assert!(e.starts_with("invalid join token"), "{e}");
        }
    }
}
