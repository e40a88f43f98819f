//! TLS termination (HTTP/1.1 and HTTP/2 by ALPN, certificates made by rcgen), redirect to
//! HTTPS, and TCP proxying.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::Empty;
use hyper::{Request, StatusCode, Version};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use wharf_proxy::{Config, HttpsListener, PassiveHealth, Proxy, Route, TcpListener};

/// A CA and a `localhost` certificate it signed, written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca_der: rustls::pki_types::CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &*ca)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), leaf.pem() + &ca.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), leaf_key.serialize_pem()).unwrap();
        Pki {
            dir,
            ca_der: ca.der().clone(),
        }
    }

    fn listener(&self) -> HttpsListener {
        HttpsListener::from_files(
            "127.0.0.1:0".parse().unwrap(),
            self.dir.path().join("cert.pem"),
            self.dir.path().join("key.pem"),
        )
    }

    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

async fn tls_connect(
    pki: &Pki,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    pki.client(alpn)
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the proxy")
}

#[tokio::test]
async fn tls_termination_with_http2_by_alpn_and_http1() {
    let pki = Pki::new();
    let a = TestBackend::start("a").await;
    let mut cfg = web(vec![a.endpoint()]);
    cfg.listeners.https = Some(pki.listener());
    let proxy = Proxy::new(cfg).unwrap();
    let https = proxy.bind().await.unwrap().https.unwrap();

    let fut = async {
        // HTTP/2 negotiated by ALPN.
        let tls = tls_connect(&pki, https, &[b"h2", b"http/1.1"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut sender = http2(tls).await;
        for _ in 0..3 {
            let req = Request::builder()
                .uri("https://localhost/secure")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(
                (resp.status(), resp.version()),
                (StatusCode::OK, Version::HTTP_2)
            );
            assert_eq!(&body_of(resp).await[..], b"a");
        }
        let h = a.last_headers.lock().clone().unwrap();
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["host"], "localhost");

        // HTTP/1.1 over TLS.
        let tls = tls_connect(&pki, https, &[b"http/1.1"]).await;
        let mut sender = http1(tls).await;
        let req = req("localhost", "/").body(Empty::<Bytes>::new()).unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(
            (resp.status(), resp.version()),
            (StatusCode::OK, Version::HTTP_11)
        );
    };
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("TLS test timed out");
}

#[tokio::test]
async fn plain_http_is_redirected_to_https() {
    let pki = Pki::new();
    let a = TestBackend::start("a").await;
    let mut cfg = config(
        vec![Route {
            redirect_https: true,
            ..route("web")
        }],
        vec![("web", pool(vec![a.endpoint()]))],
    );
    cfg.listeners.https = Some(pki.listener());
    let proxy = Proxy::new(cfg).unwrap();
    let bound = proxy.bind().await.unwrap();
    let r = get(bound.http.unwrap(), "shop.test:8080", "/cart?item=3").await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    let port = bound.https.unwrap().port();
    assert_eq!(
        r.headers["location"],
        format!("https://shop.test:{port}/cart?item=3")
    );
    assert_eq!(a.hits(), 0);

    // Over HTTPS the same route proxies.
    let tls = tls_connect(&pki, bound.https.unwrap(), &[b"http/1.1"]).await;
    let mut sender = http1(tls).await;
    let req = req("shop.test", "/cart")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(
        sender.send_request(req).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(a.hits(), 1);
}

/// A certificate for `host` signed by the CA of `pki`, as (chain PEM, key PEM, leaf DER).
fn leaf(
    pki_ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    host: &str,
) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .signed_by(&key, &**pki_ca)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// The leaf certificate the proxy presents for the SNI name `sni`.
async fn presented(
    addr: SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
    sni: &str,
) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake for {sni}: {e}"));
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn the_certificate_is_chosen_by_sni() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let ca_der = ca.der().clone();
    let (a, b, any) = (
        leaf(&ca, "a.test"),
        leaf(&ca, "x.b.test"),
        leaf(&ca, "default.test"),
    );
    let inline =
        |hosts: &[&str], (cert, key, _): &(String, String, Vec<u8>)| wharf_proxy::Certificate {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            pem: wharf_proxy::Pem::Inline {
                cert: cert.clone(),
                key: wharf_proxy::SecretPem(key.clone()),
            },
        };
    let backend = TestBackend::start("a").await;
    let mut cfg = web(vec![backend.endpoint()]);
    cfg.listeners.http = None;
    cfg.listeners.https = Some(HttpsListener {
        addr: "127.0.0.1:0".parse().unwrap(),
        certificates: vec![
            inline(&["a.test"], &a),
            inline(&["*.b.test"], &b),
            inline(&[], &any),
        ],
    });
    assert!(
        !format!("{cfg:?}").contains(&a.1[40..80]),
        "the key must not show in Debug"
    );
    let proxy = Proxy::new(cfg.clone()).unwrap();
    let addr = proxy.bind().await.unwrap().https.unwrap();
    // (name asked for, the leaf expected)
    let cases = [
        ("a.test", &a.2),
        ("A.TEST", &a.2),
        ("x.b.test", &b.2),
        ("default.test", &any.2),
    ];
    for (sni, want) in cases {
        let got = tokio::time::timeout(LIMIT, presented(addr, &ca_der, sni))
            .await
            .expect("handshake timed out");
        assert_eq!(&got, want, "certificate for {sni}");
    }

    // A key that does not belong to its certificate is refused by an update, which changes
    // nothing; the error does not quote the key.
    let mut bad = cfg.clone();
    let https = bad.listeners.https.as_mut().unwrap();
    https.addr = addr;
    https.certificates[0] = inline(&["a.test"], &(a.0.clone(), b.1.clone(), vec![]));
    let mut same = cfg.clone();
    same.listeners.https.as_mut().unwrap().addr = "127.0.0.1:0".parse().unwrap();
    let err = Proxy::new(bad).err().expect("a mismatched key").to_string();
    assert!(err.contains("does not match the certificate"), "{err}");
    assert!(!err.contains(&b.1[40..80]), "{err}");
    let err = Proxy::new({
        let mut c = same.clone();
        c.listeners.https.as_mut().unwrap().certificates[1] =
            inline(&["*.b.test"], &(b.0.clone(), "garbage".into(), vec![]));
        c
    })
    .err()
    .expect("a key that is not PEM")
    .to_string();
    assert!(err.contains("no PRIVATE KEY block found"), "{err}");
}

#[tokio::test]
async fn a_redirect_can_name_the_https_port_of_another_listener() {
    let a = TestBackend::start("a").await;
    let cfg = config(
        vec![Route {
            redirect_https: true,
            redirect_port: Some(8443),
            ..route("web")
        }],
        vec![("web", pool(vec![a.endpoint()]))],
    );
    let proxy = Proxy::new(cfg).unwrap();
    let http = proxy.bind().await.unwrap().http.unwrap();
    let r = get(http, "shop.test", "/a?b=c").await;
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(r.headers["location"], "https://shop.test:8443/a?b=c");
    let mut cfg = config(
        vec![Route {
            redirect_https: true,
            redirect_port: Some(443),
            ..route("web")
        }],
        vec![("web", pool(vec![a.endpoint()]))],
    );
    cfg.listeners.http = Some("127.0.0.1:0".parse().unwrap());
    let proxy = Proxy::new(cfg).unwrap();
    let http = proxy.bind().await.unwrap().http.unwrap();
    let r = get(http, "shop.test", "/").await;
    assert_eq!(r.headers["location"], "https://shop.test/");
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn bad_certificate_files_fail_at_new_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "not a pem").unwrap();
    let mut cfg = Config::default();
    cfg.listeners.https = Some(HttpsListener::from_files(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("cert.pem"),
        dir.path().join("key.pem"),
    ));
    let err = Proxy::new(cfg)
        .err()
        .expect("an unusable certificate must be refused")
        .to_string();
    assert!(err.starts_with("cannot use TLS certificate"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

#[tokio::test]
async fn bind_fails_at_once_when_a_port_is_taken() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = config(vec![], vec![]);
    cfg.listeners.tcp = vec![];
    cfg.listeners.http = Some(taken.local_addr().unwrap());
    let err = Proxy::new(cfg).unwrap().bind().await.unwrap_err();
    assert!(
        matches!(err, wharf_proxy::Error::Bind { what: "http", .. }),
        "{err}"
    );
}

async fn read_line(r: &mut (impl AsyncBufReadExt + Unpin)) -> String {
    let mut line = String::new();
    tokio::time::timeout(LIMIT, r.read_line(&mut line))
        .await
        .expect("tcp read timed out")
        .unwrap();
    line
}

#[tokio::test]
async fn tcp_round_robin_echo_with_ejection() {
    let (e1, e2) = (tcp_echo("one").await, tcp_echo("two").await);
    let dead = refused_addr().await;
    let mut cfg = config(
        vec![],
        vec![(
            "db",
            pool(vec![
                serving("one", e1),
                serving("dead", dead),
                serving("two", e2),
            ]),
        )],
    );
    cfg.listeners.http = None;
    cfg.listeners.tcp = vec![TcpListener {
        addr: "127.0.0.1:0".parse().unwrap(),
        backend: "db".into(),
        connect_timeout_ms: 1000,
    }];
    cfg.health = PassiveHealth {
        failures: 1,
        cooldown_ms: 60_000,
        retries: 2,
    };
    let proxy = Proxy::new(cfg).unwrap();
    let addr = proxy.bind().await.unwrap().tcp[0];

    let mut seen = Vec::new();
    for _ in 0..4 {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut stream = BufReader::new(stream);
        seen.push(read_line(&mut stream).await.trim().to_owned());
        stream.get_mut().write_all(b"ping\n").await.unwrap();
        assert_eq!(read_line(&mut stream).await, "ping\n");
    }
    // one, (dead: refused, ejected, retried on) two, one, two.
    assert_eq!(seen, ["one", "two", "one", "two"]);
    let m = proxy.metrics();
    let d = m.endpoint("db", "dead").unwrap();
    assert!(d.ejected && d.connect_failures == 1, "{m:?}");
    assert_eq!(m.tcp_connections, 4);
}
