//! TLS termination in the ingress, end to end on the real engine: a stack file names a
//! certificate and key per route (files next to it, generated here with rcgen); `wharf up`'s
//! ingress serves two services on one HTTPS port with a certificate each (SNI), redirects plain
//! HTTP to HTTPS, and the API never returns the private keys.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use wharf_testkit::{Check, not_yet, wait_for};

/// A self-signed certificate for `host`: (certificate PEM, key PEM).
fn self_signed(host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    (cert.pem(), key.serialize_pem())
}

fn stack_yaml(stack: &str, https: u16, http: u16) -> String {
    format!(
        "name: {stack}
services:
  shop:
    image: wharf-testapp:latest
    deploy: {{replicas: 2}}
    stop_grace_period: 2s
    environment: {{VERSION: shop}}
{HEALTHCHECK}    x-wharf:
      ingress:
        - port: 8080
          listen: {https}
          listen_address: 127.0.0.1
          hosts: [shop.test]
          tls: {{certificate: certs/shop.crt, key: certs/shop.key}}
        - port: 8080
          listen: {http}
          listen_address: 127.0.0.1
          hosts: [shop.test]
          redirect_https: true
  admin:
    image: wharf-testapp:latest
    stop_grace_period: 2s
    environment: {{VERSION: admin}}
{HEALTHCHECK}    x-wharf:
      ingress:
        - port: 8080
          listen: {https}
          listen_address: 127.0.0.1
          hosts: [admin.test]
          tls: {{certificate: certs/admin.crt, key: certs/admin.key}}
"
    )
}

/// A client that trusts only `roots`, resolves the test host names to the ingress, and
/// follows redirects or not.
fn client(roots: &[&str], https: u16, follow: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(5))
        .redirect(if follow {
            reqwest::redirect::Policy::limited(3)
        } else {
            reqwest::redirect::Policy::none()
        });
    for host in ["shop.test", "admin.test"] {
        b = b.resolve(host, SocketAddr::from(([127, 0, 0, 1], https)));
    }
    for pem in roots {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem"));
    }
    b.build().expect("https client")
}

/// GET `url`: (status, Location header, trimmed body), or why not.
async fn get(http: &reqwest::Client, url: &str) -> Result<(u16, String, String), String> {
    let resp = http.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    Ok((status, location, body.trim().to_string()))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ingress_terminates_tls_by_sni_redirects_http_and_never_returns_the_key() {
    let (mut w, stack) = Wharf::start_for("tls").await;
    let (https, http) = (free_port(), free_port());
    let file = w.stack_file(&stack, &stack_yaml(&stack, https, http));
    let certs = file.parent().expect("stack dir").join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    let (shop_cert, shop_key) = self_signed("shop.test");
    let (admin_cert, admin_key) = self_signed("admin.test");
    for (name, pem) in [
        ("shop.crt", &shop_cert),
        ("shop.key", &shop_key),
        ("admin.crt", &admin_cert),
        ("admin.key", &admin_key),
    ] {
        std::fs::write(certs.join(name), pem).expect("write pem");
    }
    tokio::task::block_in_place(|| w.deploy(&file, 0));
    w.wait_ready(&stack, "shop", 2, Duration::from_secs(30))
        .await;
    w.wait_ready(&stack, "admin", 1, Duration::from_secs(30))
        .await;
    let log = |w: &Wharf| tail(&w.log(), 30);

    // One HTTPS port, two services, a certificate each: a client that trusts both reaches each
    // service by its name.
    let both = client(&[&shop_cert, &admin_cert], https, false);
    let shop_url = format!("https://shop.test:{https}/");
    let admin_url = format!("https://admin.test:{https}/");
    wait_for(
        "both services answering over HTTPS through the ingress",
        Duration::from_secs(15),
        || async {
            match (get(&both, &shop_url).await, get(&both, &admin_url).await) {
                (Ok((200, _, s)), Ok((200, _, a))) if s == "shop" && a == "admin" => {
                    Check::Done(())
                }
                other => not_yet(other),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- wharf up log ---\n{}", log(&w)));
    // SNI picks the certificate: trusting only shop's, admin.test fails the handshake.
    let shop_only = client(&[&shop_cert], https, false);
    let r = get(&shop_only, &shop_url).await;
    assert!(matches!(&r, Ok((200, _, b)) if b == "shop"), "{r:?}");
    let r = get(&shop_only, &admin_url).await;
    assert!(
        r.as_ref()
            .is_err_and(|e| e.to_lowercase().contains("certificate")),
        "admin.test must present admin's certificate, which this client does not trust: {r:?}"
    );

    // Plain HTTP is redirected to the HTTPS port, path and query kept; following it lands on
    // the service.
    let plain = format!("http://shop.test:{http}/cart?item=3");
    let plain_client = reqwest::Client::builder()
        .resolve("shop.test", SocketAddr::from(([127, 0, 0, 1], http)))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let r = get(&plain_client, &plain).await;
    assert_eq!(
        r,
        Ok((
            308,
            format!("https://shop.test:{https}/cart?item=3"),
            "redirecting to https".to_string()
        ))
    );
    let following = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(shop_cert.as_bytes()).unwrap())
        .resolve("shop.test", SocketAddr::from(([127, 0, 0, 1], http)))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    // (`resolve` only maps the name to 127.0.0.1: the ports are the URLs'.)
    let r = get(&following, &format!("http://shop.test:{http}/env/VERSION")).await;
    assert_eq!(r, Ok((200, String::new(), "shop".to_string())));

    // The keys never come back: not from the API, not from the CLI, not in the log.
    let key_body = |pem: &str| {
        pem.lines()
            .nth(1)
            .expect("a base64 line in the key")
            .to_string()
    };
    let (shop_secret, admin_secret) = (key_body(&shop_key), key_body(&admin_key));
    let svc = w
        .client
        .get_service(&stack, "shop")
        .await
        .expect("GET service");
    let tls = svc.spec.wharf.ingress[0]
        .tls
        .as_ref()
        .expect("tls in the spec");
    assert_eq!(tls.certificate, shop_cert, "the certificate is public");
    assert!(
        tls.key.expose().starts_with("redacted sha256:"),
        "{:?}",
        tls.key
    );
    let stack_info = w.client.get_stack(&stack).await.expect("GET stack");
    let outputs = [
        serde_json::to_string(&svc).unwrap(),
        serde_json::to_string(&stack_info).unwrap(),
        text(&w.cli(&["service", "inspect", &format!("{stack}/shop"), "-o", "json"])).0,
        text(&w.cli(&[
            "stack",
            "validate",
            "-c",
            file.to_str().unwrap(),
            "-o",
            "json",
        ]))
        .0,
        w.log(),
    ];
    for (i, out) in outputs.iter().enumerate() {
        assert!(
            !out.contains(&shop_secret) && !out.contains(&admin_secret),
            "output {i} holds a private key:\n{out}"
        );
    }
    assert!(outputs[2].contains("redacted sha256:"), "{}", outputs[2]);

    // A new key pair for shop: applied live (no instance replaced), and the diff shows
    // fingerprints only.
    let containers = || async {
        let insts = w.instances(&stack, "shop").await;
        insts
            .into_iter()
            .filter_map(|i| i.container_id)
            .collect::<Vec<_>>()
    };
    let before = containers().await;
    let (new_cert, new_key) = self_signed("shop.test");
    std::fs::write(certs.join("shop.crt"), &new_cert).unwrap();
    std::fs::write(certs.join("shop.key"), &new_key).unwrap();
    let diff = text(&w.cli(&["stack", "diff", "-c", file.to_str().unwrap()])).0;
    assert!(
        diff.contains("redacted sha256:") && !diff.contains(&key_body(&new_key)),
        "{diff}"
    );
    tokio::task::block_in_place(|| w.deploy(&file, 0));
    let new_only = client(&[&new_cert], https, false);
    wait_for(
        "the new certificate served",
        Duration::from_secs(15),
        || async {
            match get(&new_only, &shop_url).await {
                Ok((200, _, b)) if b == "shop" => Check::Done(()),
                other => not_yet(other),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- wharf up log ---\n{}", log(&w)));
    assert_eq!(
        before,
        containers().await,
        "a new certificate replaces no instance"
    );
    // Sealed at rest: no private key in the store's bytes (issue 10).
    let mut store = std::fs::read(w.data_dir().join("wharf.db")).unwrap_or_default();
    store.extend(std::fs::read(w.data_dir().join("wharf.db-wal")).unwrap_or_default());
    let (secrets, _) = w.cli_code(&["secret", "ls"], 0);
    for key in [&shop_key, &admin_key, &new_key] {
        let body = key_body(key);
        assert!(
            !store.windows(body.len()).any(|x| x == body.as_bytes()),
            "a private key in the clear in the store file ({secrets})"
        );
    }
}

/// Bad TLS material is refused by the CLI with exit 2, `file:line:column` and a hint, and
/// nothing is deployed.
#[tokio::test(flavor = "multi_thread")]
async fn bad_certificates_are_refused_with_located_errors() {
    let mut w = Wharf::start().await;
    let stack = unique_stack("badtls");
    let (cert, key) = self_signed("a.test");
    let (_, other_key) = self_signed("a.test");
    // (route, the text the error points at, message, hint)
    let cases = [
        (
            "{port: 80, listen: 8443, tls: {certificate: a.crt, key: other.key}}",
            "other.key",
            "other.key does not match the certificate",
            "belong together",
        ),
        (
            "{port: 80, listen: 8443, tls: {certificate: a.crt, key: missing.key}}",
            "missing.key",
            "cannot read",
            "relative to the stack file",
        ),
        (
            "{port: 80, listen: 8443, tls: {certificate: a.key, key: a.key}}",
            "a.key,",
            "a.key is not a PEM certificate",
            "BEGIN CERTIFICATE",
        ),
        (
            "{port: 5432, listen: 8443, protocol: tcp, tls: {certificate: a.crt, key: a.key}}",
            "{certificate",
            "TLS for HTTP routes only",
            "protocol: http",
        ),
    ];
    for (route, token, message, hint) in cases {
        let yaml = format!(
            "name: {stack}\nservices:\n  web:\n    image: wharf-testapp:latest\n    x-wharf:\n      ingress:\n        - {route}\n"
        );
        let at = format!("7:{}", 11 + route.find(token).expect("token"));
        let file = w.stack_file(&stack, &yaml);
        let dir = file.parent().unwrap();
        std::fs::write(dir.join("a.crt"), &cert).unwrap();
        std::fs::write(dir.join("a.key"), &key).unwrap();
        std::fs::write(dir.join("other.key"), &other_key).unwrap();
        let out = w.cli(&["stack", "deploy", "-c", file.to_str().unwrap()]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        let line = line_with(&stderr, &format!("stack.yml:{at}: "));
        assert!(line.contains(message), "{line}");
        assert!(
            stderr
                .lines()
                .any(|l| l.trim_start().starts_with("hint: ") && l.contains(hint)),
            "{stderr}"
        );
        for pem in [&key, &other_key] {
            assert!(
                !stderr.contains(&pem.lines().nth(1).unwrap()[..20]),
                "{stderr}"
            );
        }
    }
    assert!(w.client.list_stacks().await.expect("stacks").is_empty());
}
