//! TLS termination: the rustls server config (ring provider, ALPN `h2` then `http/1.1`) from
//! PEM files.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;

/// Loads the certificate chain and key and builds a server config.
pub(crate) fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, Error> {
    let tls_err = |what, path: &Path, detail: String| Error::Tls {
        what,
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err("certificate", cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err("certificate", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_err(
            "certificate",
            cert,
            "no CERTIFICATE block found".into(),
        ));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err("key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("certificate", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            tls_err(
                "key",
                key,
                format!("does not match the certificate or is unsupported: {e}"),
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
