//! Nodes serving their mirrors' blobs to each other: a TLS port (`--peer-listen`) that takes
//! only clients with a node certificate of the cluster's CA and answers one `FetchRequest` per
//! connection (a `FetchAnswer` frame, the bytes) with what the mirror holds, never fetching for
//! the asker; and the asking side, which checks the peer's certificate names the node the master
//! sent it to.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wharf_link::frame::{read_frame, write_frame};
use wharf_link::rustls::{ClientConfig, ServerConfig};
use wharf_link::tokio_rustls::{TlsAcceptor, TlsConnector};
use wharf_types::{FetchAnswer, FetchRequest, FetchWhat};

use super::{Content, FetchError, Mirror};

/// How long a peer gets to connect and answer, before the master is asked instead.
const PEER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serve peers on `listener` for as long as the process runs.
pub async fn serve(mirror: Arc<Mirror>, listener: tokio::net::TcpListener, tls: Arc<ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, from)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let (mirror, acceptor) = (mirror.clone(), acceptor.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(&mirror, &acceptor, tcp).await {
                tracing::info!(%from, error = %e, "mirror: a peer's fetch failed");
            }
        });
    }
}

async fn answer(
    mirror: &Mirror,
    acceptor: &TlsAcceptor,
    tcp: tokio::net::TcpStream,
) -> Result<(), String> {
    let mut tls = tokio::time::timeout(PEER_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let req: FetchRequest = tokio::time::timeout(PEER_TIMEOUT, read_frame(&mut tls))
        .await
        .map_err(|_| "no request in time".to_string())?
        .map_err(|e| e.to_string())?
        .ok_or("closed before its request")?;
    let FetchWhat::Blob { digest } = &req.what else {
        return refuse(&mut tls, "peers serve blobs only").await;
    };
    let Some(path) = mirror.held(digest).await else {
        return refuse(&mut tls, &format!("this node has no blob {digest}")).await;
    };
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| e.to_string())?;
    let size = file.metadata().await.map_err(|e| e.to_string())?.len();
    let head = FetchAnswer::Content {
        media_type: "application/octet-stream".into(),
        digest: digest.clone(),
        size,
    };
    write_frame(&mut tls, &head)
        .await
        .map_err(|e| e.to_string())?;
    tokio::io::copy(&mut file.take(size), &mut tls)
        .await
        .map_err(|e| e.to_string())?;
    metrics::counter!("wharf_agent_mirror_peer_served_bytes_total").increment(size);
    tls.flush().await.map_err(|e| e.to_string())?;
    let _ = tls.shutdown().await;
    Ok(())
}

async fn refuse<S: tokio::io::AsyncWrite + Unpin>(
    tls: &mut S,
    message: &str,
) -> Result<(), String> {
    let answer = FetchAnswer::Missing {
        message: message.to_string(),
    };
    write_frame(tls, &answer).await.map_err(|e| e.to_string())
}

/// Ask peer `node` at `address` for the blob of `req`.
pub async fn fetch(
    config: Arc<ClientConfig>,
    node: &str,
    address: &str,
    req: &FetchRequest,
) -> Result<Content, FetchError> {
    let failed = |e: String| FetchError::Failed(format!("peer {node} at {address}: {e}"));
    let name = wharf_link::tls::peer_name(node).map_err(|e| failed(e.to_string()))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let answer = super::exchange(&mut tls, req).await.map_err(failed)?;
        Ok::<_, FetchError>((answer, tls))
    };
    let (answer, tls) = tokio::time::timeout(PEER_TIMEOUT, connect)
        .await
        .map_err(|_| failed("no answer in time".into()))??;
    match answer {
        FetchAnswer::Content {
            media_type,
            digest,
            size,
        } => Ok(Content {
            media_type,
            digest,
            size,
            body: Box::new(tls.take(size)),
        }),
        other => Err(failed(format!("{other:?}"))),
    }
}
