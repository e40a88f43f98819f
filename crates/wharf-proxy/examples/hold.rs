//! Opens N keep-alive HTTP/1.1 connections to an address, sends one GET on each (checking the
//! answer), then holds them all open for a while (used by `bench/ingress/run`).
//!
//! ```text
//! hold 127.0.0.1:8080 10000 30    # address, connections, seconds to hold
//! ```
//! Prints `holding N` on stdout once every connection has answered.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr = args.next().context("address")?.parse()?;
    let n: usize = args.next().unwrap_or_else(|| "10000".into()).parse()?;
    let secs: u64 = args.next().unwrap_or_else(|| "30".into()).parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            // Open in waves so the listen backlog never overflows.
            let limit = Arc::new(tokio::sync::Semaphore::new(200));
            let mut tasks = Vec::with_capacity(n);
            for _ in 0..n {
                let permit = limit.clone().acquire_owned().await?;
                tasks.push(tokio::spawn(async move {
                    let stream = tokio::net::TcpStream::connect(addr).await?;
                    let (mut sender, conn) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                    tokio::spawn(conn);
                    let req = hyper::Request::builder()
                        .uri("/")
                        .header("host", "bench")
                        .body(Empty::<Bytes>::new())?;
                    let resp = sender.send_request(req).await?;
                    anyhow::ensure!(resp.status().is_success(), "status {}", resp.status());
                    resp.into_body().collect().await?;
                    drop(permit);
                    anyhow::Ok(sender)
                }));
            }
            let mut held = Vec::with_capacity(n);
            for t in tasks {
                held.push(t.await??);
            }
            println!("holding {}", held.len());
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let open = held.iter().filter(|s| !s.is_closed()).count();
            println!("still open after {secs}s: {open}");
            anyhow::Ok(())
        })
}
