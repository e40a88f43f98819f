//! Test helpers shared by the unit tests and the integration tests (`tests/load.rs` includes
//! this file): self-signed certificates.

/// A self-signed certificate for `hosts`, as (certificate PEM, key PEM).
pub fn cert_pair(hosts: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let cert = rcgen::CertificateParams::new(names)
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    (cert.pem(), key.serialize_pem())
}
