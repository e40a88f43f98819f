//! TLS configurations of both ends, on rustls with the `ring` provider.
//!
//! - The master's [`server_config`] asks for a client certificate and verifies it against the
//!   cluster CA, but lets clients without one in: they may only join.
//! - A joining agent's [`join_client_config`] has no trust store yet: it accepts the master only if
//!   the CA certificate the master presents (last in its chain) has the fingerprint of the join
//!   token, and the master's certificate verifies against that CA.
//! - A member agent's [`node_client_config`] verifies the master against the cluster CA and
//!   presents its node certificate. Agents always verify the name [`crate::MASTER_NAME`],
//!   whatever address they dial.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::pki::{Ca, cert_der};
use crate::{LinkError, MASTER_NAME, sha256_hex};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, LinkError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| LinkError::Tls(format!("cannot read the private key: {e}")))
}

fn roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, LinkError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone())?;
    Ok(Arc::new(roots))
}

/// The name agents verify on the master's certificate.
pub fn master_name() -> ServerName<'static> {
    ServerName::try_from(MASTER_NAME).expect("a valid DNS name")
}

/// The master's TLS configuration: its certificate (sent with the CA certificate, so joining agents
/// can pin it), client certificates verified against the CA, and clients without one allowed.
pub fn server_config(
    ca: &Ca,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>, LinkError> {
    let p = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca.cert_der())?, p.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| LinkError::Tls(e.to_string()))?;
    let chain = vec![cert_der(cert_pem)?, ca.cert_der().clone()];
    let config = ServerConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private_key(key_pem)?)?;
    Ok(Arc::new(config))
}

/// The API's TLS configuration: `chain` (the server certificate first) and its key; no client
/// certificates (API callers authenticate with bearer tokens); HTTP/2 and HTTP/1.1.
pub fn api_server_config(cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, LinkError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LinkError::Tls(format!("cannot read the certificate: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private_key(key_pem)?)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The configuration of a joining agent, pinned to the CA fingerprint of its join token.
pub fn join_client_config(ca_fingerprint: &str) -> Result<Arc<ClientConfig>, LinkError> {
    pinned_config(PinnedCa::new(Some(ca_fingerprint), None)).map(Arc::new)
}

/// The configuration of an API client (the CLI): the master's CA pinned by its fingerprint,
/// and the API's certificate checked for the master's name whatever host the URL names (the
/// cluster CA signs only the master's certificates).
pub fn api_client_config(ca_fingerprint: &str) -> Result<ClientConfig, LinkError> {
    pinned_config(PinnedCa::new(Some(ca_fingerprint), Some(master_name())))
}

/// The fingerprint of the CA certificate the TLS server at `host:port` presents, trusting
/// nothing (the first contact of `wharf login`, to show the user what to pin).
pub async fn peek_ca_fingerprint(host: &str, port: u16) -> Result<String, LinkError> {
    let verifier = PinnedCa::new(None, None);
    let seen = verifier.seen.clone();
    let config = Arc::new(pinned_config(verifier)?);
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| LinkError::Tls(format!("{host}: {e}")))?;
    // The handshake fails by design once the chain is seen: nothing is trusted yet.
    let _ = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await;
    let fingerprint = seen
        .lock()
        .map_err(|_| LinkError::Tls("poisoned".into()))?
        .take();
    fingerprint.ok_or_else(|| {
        LinkError::Tls(format!(
            "{host}:{port} presented no CA certificate: is it a wharf API?"
        ))
    })
}

fn pinned_config(verifier: PinnedCa) -> Result<ClientConfig, LinkError> {
    let p = verifier.provider.clone();
    Ok(ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// The server side of a node's peer port (its mirror, for the other nodes): its node
/// certificate, and only clients with a node certificate of the same CA.
pub fn peer_server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ServerConfig>, LinkError> {
    let p = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(&cert_der(ca_pem)?)?, p.clone())
            .build()
            .map_err(|e| LinkError::Tls(e.to_string()))?;
    let config = ServerConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert_der(cert_pem)?], private_key(key_pem)?)?;
    Ok(Arc::new(config))
}

/// The name a peer's certificate is checked for: its node id.
pub fn peer_name(node_id: &str) -> Result<ServerName<'static>, LinkError> {
    ServerName::try_from(node_id.to_string())
        .map_err(|e| LinkError::Tls(format!("node id {node_id:?}: {e}")))
}

/// The configuration of a member agent: mutual TLS with its node certificate.
pub fn node_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, LinkError> {
    let p = provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(roots(&cert_der(ca_pem)?)?, p.clone())
            .build()
            .map_err(|e| LinkError::Tls(e.to_string()))?;
    let config = ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(vec![cert_der(cert_pem)?], private_key(key_pem)?)?;
    Ok(Arc::new(config))
}

/// Trusts the CA certificate at the end of the presented chain only if it has the pinned
/// fingerprint, then verifies the end-entity certificate against it as usual (for `name` when
/// set, else the name connected to). Without a fingerprint it trusts nothing and only notes
/// the one it saw.
#[derive(Debug)]
struct PinnedCa {
    fingerprint: Option<String>,
    name: Option<ServerName<'static>>,
    seen: Arc<std::sync::Mutex<Option<String>>>,
    provider: Arc<CryptoProvider>,
}

impl PinnedCa {
    fn new(fingerprint: Option<&str>, name: Option<ServerName<'static>>) -> PinnedCa {
        PinnedCa {
            fingerprint: fingerprint.map(str::to_ascii_lowercase),
            name,
            seen: Arc::default(),
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some((ca, rest)) = intermediates.split_last() else {
            return Err(rustls::Error::General(
                "the master did not present its CA certificate".into(),
            ));
        };
        let seen = sha256_hex(ca);
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(seen.clone());
        }
        let Some(pinned) = &self.fingerprint else {
            return Err(rustls::Error::General(
                "the master's CA is not trusted yet".into(),
            ));
        };
        if seen != *pinned {
            return Err(rustls::Error::General(
                "the master's CA does not match the pinned fingerprint".into(),
            ));
        }
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let name = self.name.as_ref().unwrap_or(server_name);
        inner.verify_server_cert(end_entity, rest, name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::pki::{NodeKey, common_name};

    struct Master {
        ca: Ca,
        config: Arc<ServerConfig>,
    }

    fn master() -> Master {
        let ca = Ca::generate().unwrap();
        let (cert, key) = ca.server_cert(MASTER_NAME).unwrap();
        let config = server_config(&ca, &cert, &key).unwrap();
        Master { ca, config }
    }

    /// Handshake over an in-memory pipe; the server echoes one byte and returns the peer's CN.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (Result<(), String>, Result<Option<String>, String>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn(async move {
            let mut s = TlsAcceptor::from(server)
                .accept(b)
                .await
                .map_err(|e| e.to_string())?;
            let cn = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| common_name(c));
            let mut buf = [0u8; 1];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            s.write_all(&buf).await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(cn)
        });
        let cli = async {
            let mut c = TlsConnector::from(client)
                .connect(master_name(), a)
                .await
                .map_err(|e| e.to_string())?;
            c.write_all(b"x").await.map_err(|e| e.to_string())?;
            c.flush().await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 1];
            c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            Ok(())
        }
        .await;
        let srv = tokio::time::timeout(Duration::from_secs(5), srv)
            .await
            .expect("server side finishes")
            .unwrap();
        (cli, srv)
    }

    #[tokio::test]
    async fn join_config_accepts_the_pinned_ca() {
        let m = master();
        let (c, s) = handshake(m.config, join_client_config(&m.ca.fingerprint()).unwrap()).await;
        c.unwrap();
        assert_eq!(s.unwrap(), None, "a joining client has no certificate");
    }

    #[tokio::test]
    async fn join_config_refuses_another_ca() {
        let m = master();
        let other = Ca::generate().unwrap();
        let (c, s) = handshake(m.config, join_client_config(&other.fingerprint()).unwrap()).await;
        let e = c.unwrap_err();
        assert!(e.contains("fingerprint"), "{e}");
        assert!(s.is_err());
    }

    #[tokio::test]
    async fn join_config_refuses_a_server_cert_from_another_ca_even_with_the_pinned_ca_sent() {
        // The impostor sends the real CA certificate but its own certificate is signed elsewhere.
        let real = Ca::generate().unwrap();
        let fake = Ca::generate().unwrap();
        let (cert, key) = fake.server_cert(MASTER_NAME).unwrap();
        let chain = vec![cert_der(&cert).unwrap(), real.cert_der().clone()];
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, private_key(&key).unwrap())
            .unwrap();
        let (c, _) = handshake(
            Arc::new(config),
            join_client_config(&real.fingerprint()).unwrap(),
        )
        .await;
        assert!(c.is_err());
    }

    fn node_identity(ca: &Ca, id: &str) -> (String, String) {
        let key = NodeKey::generate().unwrap();
        let cert = ca
            .sign_node_csr(&key.csr("host").unwrap(), id, Duration::from_secs(3600))
            .unwrap();
        (cert, key.key_pem())
    }

    #[tokio::test]
    async fn mtls_accepts_a_ca_signed_node_cert() {
        let m = master();
        let (cert, key) = node_identity(&m.ca, "node-00c0ffee");
        let cfg = node_client_config(m.ca.cert_pem(), &cert, &key).unwrap();
        let (c, s) = handshake(m.config, cfg).await;
        c.unwrap();
        assert_eq!(s.unwrap().as_deref(), Some("node-00c0ffee"));
    }

    #[tokio::test]
    async fn mtls_refuses_a_self_signed_node_cert() {
        let m = master();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(vec![]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "node-00c0ffee");
        let cert = p.self_signed(&key).unwrap();
        let cfg = node_client_config(m.ca.cert_pem(), &cert.pem(), &key.serialize_pem()).unwrap();
        let (c, s) = handshake(m.config, cfg).await;
        assert!(s.is_err(), "the server must refuse: {s:?}");
        assert!(c.is_err());
    }

    #[tokio::test]
    async fn mtls_refuses_a_master_of_another_cluster() {
        let m = master();
        let other = Ca::generate().unwrap();
        let (cert, key) = node_identity(&other, "node-1");
        let cfg = node_client_config(other.cert_pem(), &cert, &key).unwrap();
        let (c, _) = handshake(m.config, cfg).await;
        assert!(c.is_err());
    }
}
