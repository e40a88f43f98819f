//! The cluster CA (ECDSA P-256) and node keys: the CA signs the master's server certificate and
//! the agents' CSRs; the CN of a node certificate is the node id the master assigned.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::{LinkError, sha256_hex};

const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Clocks of different hosts disagree a little: certificates are valid from a bit in the past.
const BACKDATE: Duration = Duration::from_secs(300);

fn new_key() -> Result<KeyPair, LinkError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

fn params_valid_for(validity: Duration) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    p.not_before = now - BACKDATE;
    p.not_after = now + validity;
    let serial: [u8; 16] = rand::random();
    // A positive serial (top bit clear) of 16 random bytes.
    let mut serial = serial.to_vec();
    serial[0] &= 0x7f;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// The DER of the first certificate in `pem`.
pub fn cert_der(pem: &str) -> Result<CertificateDer<'static>, LinkError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| LinkError::Pki(format!("cannot read the certificate: {e}")))
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// The cluster certificate authority.
#[derive(Clone)]
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA with a fresh P-256 key, valid for ten years.
    pub fn generate() -> Result<Ca, LinkError> {
        let key = new_key()?;
        let mut p = params_valid_for(CA_VALIDITY);
        p.distinguished_name = dn("wharf cluster CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key)?;
        Ca::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// A CA from its certificate and private key (PEM), as kept in the store.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, LinkError> {
        let der = cert_der(cert_pem)?;
        // Check both parse and belong together now, not at the first signature.
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| LinkError::Pki(format!("cannot read the CA key: {e}")))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| LinkError::Pki(format!("cannot parse the CA certificate: {e}")))?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(LinkError::Pki(
                "the CA key does not match the CA certificate".into(),
            ));
        }
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            der,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    /// Hex SHA-256 of the CA certificate (DER): what join tokens pin.
    pub fn fingerprint(&self) -> String {
        sha256_hex(&self.der)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, LinkError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }

    /// Sign a node's CSR: the certificate's CN is `node_id` and it is good for client
    /// authentication only. The CSR's signature is verified (the agent holds the key); the names
    /// it asks for are ignored.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        validity: Duration,
    ) -> Result<String, LinkError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| LinkError::Pki(format!("bad certificate signing request: {e}")))?;
        let mut p = params_valid_for(validity);
        p.distinguished_name = dn(node_id);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // A client of the master, and a server of its peers' mirrors (who verify the node id
        // as the certificate's DNS name).
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        p.subject_alt_names = vec![SanType::DnsName(node_id.try_into().map_err(|e| {
            LinkError::Pki(format!("node id {node_id:?} is not a DNS name: {e}"))
        })?)];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.pem())
    }

    /// A server certificate for `name` (the master uses [`crate::MASTER_NAME`]) with a new key:
    /// `(cert_pem, key_pem)`.
    pub fn server_cert(&self, name: &str) -> Result<(String, String), LinkError> {
        self.server_cert_for(&[name.to_string()], &[])
    }

    /// A server certificate for the host `names` and addresses `ips` (the API's, when it
    /// listens beyond loopback): PEM certificate and key.
    pub fn server_cert_for(
        &self,
        names: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<(String, String), LinkError> {
        let key = new_key()?;
        let mut p = params_valid_for(CA_VALIDITY);
        p.distinguished_name = dn(names.first().map_or("wharf", String::as_str));
        let mut sans = Vec::new();
        for n in names {
            sans.push(SanType::DnsName(n.as_str().try_into()?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        p.subject_alt_names = sans;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.issuer()?)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A node's private key (P-256), made on the node; only its CSR leaves the host.
pub struct NodeKey {
    key: KeyPair,
}

impl NodeKey {
    pub fn generate() -> Result<NodeKey, LinkError> {
        Ok(NodeKey { key: new_key()? })
    }

    pub fn from_pem(pem: &str) -> Result<NodeKey, LinkError> {
        Ok(NodeKey {
            key: KeyPair::from_pem(pem)?,
        })
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate signing request (PEM) naming `hostname`; the master replaces the name with
    /// the node id it assigns.
    pub fn csr(&self, hostname: &str) -> Result<String, LinkError> {
        let mut p = CertificateParams::default();
        p.distinguished_name = dn(hostname);
        Ok(p.serialize_request(&self.key)?.pem()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_round_trips_through_pem() {
        let ca = Ca::generate().unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(ca.fingerprint(), again.fingerprint());
        assert_eq!(ca.fingerprint().len(), 64);
        let other = Ca::generate().unwrap();
        assert!(Ca::from_pem(ca.cert_pem(), other.key_pem()).is_err());
    }

    #[test]
    fn signs_a_node_csr_with_the_node_id_as_cn() {
        let ca = Ca::generate().unwrap();
        let node = NodeKey::generate().unwrap();
        let csr = node.csr("host-a").unwrap();
        let cert = ca
            .sign_node_csr(&csr, "node-0123abcd", Duration::from_secs(3600))
            .unwrap();
        let der = cert_der(&cert).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("node-0123abcd"));
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            parsed.issuer(),
            &x509_parser::parse_x509_certificate(ca.cert_der())
                .unwrap()
                .1
                .subject()
                .clone()
        );
        // The certificate carries the node's key.
        assert_eq!(
            parsed.public_key().raw,
            node.key.subject_public_key_info().as_slice()
        );
    }

    #[test]
    fn refuses_a_tampered_csr() {
        let ca = Ca::generate().unwrap();
        let csr = NodeKey::generate().unwrap().csr("host-a").unwrap();
        let mut der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec();
        // Flip a bit inside the subject (the signed part).
        let at = der.windows(6).position(|w| w == b"host-a").unwrap();
        der[at] ^= 1;
        let pem_str = {
            let b64 = base64_encode(&der);
            format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"
            )
        };
        let e = ca
            .sign_node_csr(&pem_str, "node-1", Duration::from_secs(60))
            .unwrap_err();
        assert!(
            e.to_string().contains("bad certificate signing request"),
            "{e}"
        );
        assert!(
            ca.sign_node_csr("garbage", "node-1", Duration::from_secs(60))
                .is_err()
        );
    }

    fn base64_encode(data: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
