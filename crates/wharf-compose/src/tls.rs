//! Ingress TLS material: a PEM certificate chain, a private key that matches its leaf, and the
//! host names the leaf covers. Checked with the same rustls and ring the ingress serves them
//! with, so a certificate accepted here is never refused by an agent.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// What is wrong with a certificate or key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    /// `certificate` or `key`.
    pub field: &'static str,
    pub message: String,
    pub hint: &'static str,
}

pub(crate) const CERT_HINT: &str = "give the certificate chain as PEM (-----BEGIN CERTIFICATE-----), leaf first, e.g. the fullchain.pem of your CA";
pub(crate) const KEY_HINT: &str = "give the certificate's private key as PEM (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)";
const MISMATCH_HINT: &str = "the key must be the one the certificate was issued for; check that the two files belong together";

/// Checks that `cert` holds at least one certificate (the first a valid X.509 leaf) and `key`
/// a private key whose public key is the leaf's. Messages never quote the key.
pub(crate) fn check(cert: &str, key: &str) -> Result<(), Problem> {
    let leaf = leaf(cert)?;
    let problem = |message: String, hint| Problem {
        field: "key",
        message,
        hint,
    };
    let key_der = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| {
        use rustls::pki_types::pem::Error as E;
        let why = match e {
            E::NoItemsFound => "no PRIVATE KEY block found",
            _ => "not a valid PEM private key",
        };
        problem(format!("is not a private key: {why}"), KEY_HINT)
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| {
            problem(
                format!("is not a usable private key: {e}"),
                "use an RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519 key",
            )
        })?;
    let certified = rustls::sign::CertifiedKey::new(vec![leaf], signing);
    match certified.keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(
            problem("does not match the certificate".into(), MISMATCH_HINT),
        ),
        // The provider cannot tell (no public key to compare): rustls accepts it, so do we.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(e) => Err(problem(
            format!("cannot be checked against the certificate: {e}"),
            MISMATCH_HINT,
        )),
    }
}

/// The leaf of a PEM chain, checked to parse as X.509.
fn leaf(cert: &str) -> Result<CertificateDer<'static>, Problem> {
    let problem = |message: String| Problem {
        field: "certificate",
        message,
        hint: CERT_HINT,
    };
    let mut certs = CertificateDer::pem_slice_iter(cert.as_bytes());
    let leaf = match certs.next() {
        None => {
            return Err(problem(
                "is not a PEM certificate: no CERTIFICATE block found".into(),
            ));
        }
        Some(Err(_)) => return Err(problem("is not a PEM certificate: invalid PEM".into())),
        Some(Ok(leaf)) => leaf,
    };
    if let Some(Err(_)) = certs.find(Result::is_err) {
        return Err(problem(
            "holds an invalid PEM block after the first certificate".into(),
        ));
    }
    rustls::server::ParsedCertificate::try_from(&leaf)
        .map_err(|e| problem(format!("is not a valid X.509 certificate: {e}")))?;
    Ok(leaf)
}

/// The hosts of `hosts` the leaf of `cert` is not valid for (a wildcard host `*.a.example` is
/// tried as one name under it). Empty when `cert` does not parse (`check` reports that).
pub(crate) fn uncovered_hosts(cert: &str, hosts: &[String]) -> Vec<String> {
    let Ok(leaf) = leaf(cert) else {
        return Vec::new();
    };
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(&leaf) else {
        return Vec::new();
    };
    hosts
        .iter()
        .filter(|h| {
            let name = match h.strip_prefix("*.") {
                Some(rest) => format!("wharf-sni-check.{rest}"),
                None => h.to_string(),
            };
            match ServerName::try_from(name) {
                Ok(name) => rustls::client::verify_server_name(&parsed, &name).is_err(),
                Err(_) => false,
            }
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::cert_pair;

    #[test]
    fn certificates_and_keys() {
        let (cert, key) = cert_pair(&["a.example"]);
        let (other_cert, other_key) = cert_pair(&["b.example"]);
        assert_eq!(check(&cert, &key), Ok(()));
        assert_eq!(
            check(&(cert.clone() + &other_cert), &key),
            Ok(()),
            "a chain"
        );
        // (certificate, key, field, message)
        let cases = [
            (
                other_cert.as_str(),
                key.as_str(),
                "key",
                "does not match the certificate",
            ),
            (
                "hello",
                key.as_str(),
                "certificate",
                "no CERTIFICATE block found",
            ),
            (
                key.as_str(),
                key.as_str(),
                "certificate",
                "no CERTIFICATE block found",
            ),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                key.as_str(),
                "certificate",
                "not a valid X.509 certificate",
            ),
            (
                cert.as_str(),
                cert.as_str(),
                "key",
                "no PRIVATE KEY block found",
            ),
            (
                cert.as_str(),
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "key",
                "not a usable private key",
            ),
        ];
        for (c, k, field, message) in cases {
            let p = check(c, k).expect_err(message);
            assert_eq!(p.field, field, "{p:?}");
            assert!(p.message.contains(message), "{p:?}");
            assert!(!p.message.contains(&other_key[30..60]) && !p.message.contains(&key[30..60]));
        }
    }

    #[test]
    fn hosts_a_certificate_does_not_cover() {
        let (cert, _) = cert_pair(&["a.example", "*.w.example"]);
        let hosts = [
            "a.example",
            "b.example",
            "*.w.example",
            "x.w.example",
            "*.v.example",
        ]
        .map(String::from);
        assert_eq!(
            uncovered_hosts(&cert, &hosts),
            vec!["b.example".to_string(), "*.v.example".to_string()]
        );
    }
}
