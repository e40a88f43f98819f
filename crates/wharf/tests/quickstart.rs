//! Acceptance check 1: the README's quick start. `wharf up examples/hello/stack.yml` (what
//! `scripts/quickstart` runs after building) answers HTTP 200 on 127.0.0.1:8088 within 60 s.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_example_stack_answers_within_60_seconds() {
    let root = wharf_testkit::workspace_root();
    let bin = wharf_testkit::build_testapp()
        .await
        .expect("static test workload");
    std::fs::copy(&bin, root.join("examples/hello/app/testapp"))
        .expect("copy the workload into the example");

    // The example's stack name and port are fixed (the README names them): make sure no earlier
    // run left them behind.
    wharf_testkit::remove_stack_containers("hello").await;
    // Exactly what the quick start runs: `wharf up examples/hello/stack.yml`.
    let started = Instant::now();
    let stack_file = root.join("examples/hello/stack.yml");
    let mut w = Wharf::start_full(vec![], &[stack_file.to_str().unwrap()]).await;
    w.stacks.push("hello".into());

    let (status, body) = wharf_testkit::wait_for(
        "the example to answer on 127.0.0.1:8088",
        Duration::from_secs(60),
        || async { http_get("127.0.0.1:8088", "/").filter(|(s, _)| *s == 200) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&w.log(), 40)));
    assert_eq!(status, 200);
    assert_eq!(body.trim(), "hello from wharf");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "answered after {:?}",
        started.elapsed()
    );
}

/// A second `wharf up` on the same data directory is refused with a clear message, and the first
/// keeps running.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_wharf_up_on_the_same_data_dir_is_refused() {
    let w = Wharf::start().await;
    let out = w.up_command(&[]).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another wharf is using the data directory"),
        "{err}"
    );
    assert!(
        w.client.version().await.is_ok(),
        "the first wharf still answers"
    );
}
