//! TLS for the API (issue 10, check 6): `wharf server --listen 0.0.0.0:PORT` answers HTTPS only;
//! the CLI, with the CA pinned in its context, works; a client trusting another CA fails closed;
//! plain HTTP gets no API answer; `wharf login` pins the CA only when told its fingerprint.

mod common;

use std::io::{Read, Write};
use std::process::Child;
use std::time::Duration;

use common::*;
use wharf_client::{Client, Context};
use wharf_testkit::{free_port, wait_for};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain HTTP request to the API on `port` gets no HTTP answer.
fn no_plain_http_answer(port: u16) {
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"GET /v1/version HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP answered: {}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_loopback_the_api_is_https_only_and_the_cli_pins_its_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (port, agents) = (free_port(), free_port());
    let admin = dir.path().join("config");
    let log = dir.path().join("server.log");
    let mut cmd = std::process::Command::new(WHARF);
    cmd.args(["server", "--network-pool", "none", "--listen"])
        .arg(format!("0.0.0.0:{port}"))
        .arg("--agent-listen")
        .arg(format!("127.0.0.1:{agents}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("WHARF_CONFIG_DIR", &admin)
        .env("WHARF_LOG", "info");
    let _server = Killed(log_to(&mut cmd, &log).spawn().expect("wharf server"));
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    // The local CLI reaches it through the context the server wrote, the CA pinned.
    wait_for("the API over HTTPS", Duration::from_secs(30), || async {
        let out = cli_command(&admin, &["stack", "ls"]).output().ok()?;
        out.status.success().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let ctx = Context::load_from(&admin.join("context.json"))
        .expect("context")
        .expect("a context");
    assert_eq!(ctx.url, format!("https://127.0.0.1:{port}"));
    let fp = ctx.ca_fingerprint.clone().expect("the CA pinned");
    assert!(logs().contains(&fp), "the server prints the CA fingerprint");

    // Plain HTTP gets no API answer.
    no_plain_http_answer(port);

    // Clients that do not trust this CA fail closed.
    let other = wharf_link::pki::Ca::generate()
        .expect("another CA")
        .fingerprint();
    let e = Client::pinned(ctx.url.clone(), ctx.token.clone(), &other)
        .expect("client")
        .list_stacks()
        .await
        .expect_err("another CA");
    assert!(!e.to_string().is_empty());
    assert!(
        Client::new(ctx.url.clone(), ctx.token.clone())
            .list_stacks()
            .await
            .is_err()
    );
    let mut unpinned = ctx.clone();
    unpinned.ca_fingerprint = None;
    assert!(
        Client::from_context(&unpinned).is_err(),
        "https without a pin is refused"
    );

    // A user logs in: told the fingerprint first, pinned with it; a wrong one is refused.
    let add = ["user", "add", "ann", "--role", "viewer", "--password-stdin"];
    let out = cli_with_stdin(&admin, &add, "correct horse battery\n");
    assert!(out.status.success(), "{:?}", text(&out));
    let ann = dir.path().join("ann");
    let url = ctx.url.clone();
    let login = ["login", &url, "--user", "ann", "--password-stdin"];
    let out = cli_with_stdin(&ann, &login, "correct horse battery\n");
    let (_, se) = text(&out);
    assert!(
        out.status.code() == Some(2) && se.contains(&fp),
        "first contact: shows the fingerprint and asks for it: {se}"
    );
    let wrong = [&login[..], &["--ca-fingerprint", &other]].concat();
    let out = cli_with_stdin(&ann, &wrong, "correct horse battery\n");
    let (_, se) = text(&out);
    assert!(
        out.status.code() == Some(1) && se.contains("refusing"),
        "{se}"
    );
    let right = [&login[..], &["--ca-fingerprint", &fp]].concat();
    let out = cli_with_stdin(&ann, &right, "correct horse battery\n");
    assert!(out.status.success(), "{:?}", text(&out));
    let out = cli_command(&ann, &["stack", "ls"]).output().expect("wharf");
    assert!(
        out.status.success(),
        "ann's pinned session: {:?}",
        text(&out)
    );
}

/// `wharf up` beyond loopback is HTTPS only too: its CLI context pins the CA, and plain HTTP
/// gets no API answer.
#[tokio::test(flavor = "multi_thread")]
async fn wharf_up_beyond_loopback_is_https_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let config = dir.path().join("config");
    let log = dir.path().join("up.log");
    let mut cmd = cli_command(&config, &["up", "--listen"]);
    cmd.arg(format!("0.0.0.0:{port}"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("WHARF_LOG", "info");
    let _up = Killed(log_to(&mut cmd, &log).spawn().expect("wharf up"));
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for("the API over HTTPS", Duration::from_secs(30), || async {
        let out = cli_command(&config, &["stack", "ls"]).output().ok()?;
        out.status.success().then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let ctx = Context::load_from(&config.join("context.json"))
        .expect("context")
        .expect("a context");
    assert_eq!(ctx.url, format!("https://127.0.0.1:{port}"));
    assert!(ctx.ca_fingerprint.is_some(), "the CA pinned");
    no_plain_http_answer(port);
}
