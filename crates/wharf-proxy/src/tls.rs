//! TLS termination: the rustls server config (ring provider, ALPN `h2` then `http/1.1`) with a
//! certificate resolver that picks one of the listener's certificates by SNI.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Certificate, HttpsListener, Pem};
use crate::error::Error;
use crate::table::RouteTable;

/// Loads every certificate of the listener (files are read here) and builds a server config.
pub(crate) fn server_config(https: &HttpsListener) -> Result<Arc<ServerConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let keys = https
        .certificates
        .iter()
        .map(|c| certified_key(c, &provider).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()?;
    let resolver = SniResolver::new(&https.certificates, keys);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls {
            what: "certificate",
            path: PathBuf::from("(protocol versions)"),
            detail: e.to_string(),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Parses and checks one certificate chain and its key (the key must match the leaf).
fn certified_key(
    c: &Certificate,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, Error> {
    let inline = || PathBuf::from(format!("(inline, for hosts [{}])", c.hosts.join(", ")));
    let (cert_label, key_label) = match &c.pem {
        Pem::Files { cert, key } => (cert.clone(), key.clone()),
        Pem::Inline { .. } => (inline(), inline()),
    };
    let tls_err = |what, path: &Path, detail: String| Error::Tls {
        what,
        path: path.to_owned(),
        detail,
    };
    let certs = match &c.pem {
        Pem::Files { cert, .. } => CertificateDer::pem_file_iter(cert)
            .map_err(|e| tls_err("certificate", &cert_label, e.to_string()))?
            .collect::<Result<Vec<_>, _>>(),
        Pem::Inline { cert, .. } => CertificateDer::pem_slice_iter(cert.as_bytes()).collect(),
    }
    .map_err(|e| tls_err("certificate", &cert_label, e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_err(
            "certificate",
            &cert_label,
            "no CERTIFICATE block found".into(),
        ));
    }
    // The key's own parse error may quote it: say only what kind of problem it is.
    let key_der = match &c.pem {
        Pem::Files { key, .. } => PrivateKeyDer::from_pem_file(key),
        Pem::Inline { key, .. } => PrivateKeyDer::from_pem_slice(key.0.as_bytes()),
    }
    .map_err(|e| tls_err("key", &key_label, key_error(&e)))?;
    CertifiedKey::from_der(certs, key_der, provider).map_err(|e| {
        tls_err(
            "key",
            &key_label,
            format!("does not match the certificate or is unsupported: {e}"),
        )
    })
}

/// A PEM error without any of the input.
fn key_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::NoItemsFound => "no PRIVATE KEY block found".into(),
        E::Io(io) => io.to_string(),
        _ => "not a valid PEM private key".into(),
    }
}

/// Picks a certificate by the client's SNI name: the listener's host table (exact, then
/// wildcard, then the certificate without hosts), else the first certificate.
#[derive(Debug)]
struct SniResolver {
    table: RouteTable<Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// `keys[i]` belongs to `certificates[i]`; both are non-empty (`Config::validate`).
    fn new(certificates: &[Certificate], keys: Vec<Arc<CertifiedKey>>) -> SniResolver {
        let default = certificates
            .iter()
            .position(|c| c.hosts.is_empty())
            .map_or_else(|| keys[0].clone(), |i| keys[i].clone());
        let table = RouteTable::new(
            certificates
                .iter()
                .zip(keys)
                .map(|(c, k)| (c.hosts.as_slice(), "/", k)),
        );
        SniResolver { table, default }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let found = hello
            .server_name()
            .and_then(|name| self.table.find(name, "/"));
        Some(found.unwrap_or(&self.default).clone())
    }
}
