//! The node's mirror of the cluster's registry: a read-through cache on loopback that the
//! node's engine pulls from (Docker trusts registries on `127.0.0.0/8` over plain HTTP with no
//! daemon configuration). A deploy pins images as `wharf.local/name:tag@digest`; the Docker
//! driver pulls them as `127.0.0.1:PORT/name@digest` (`driver::docker::engine_ref`). What the node lacks comes
//! from a `Source` (`source.rs`: the master over the agent port; in `wharf up`, the master in
//! the same process) and is kept by digest in `DATA_DIR/mirror/`, written to a temporary file,
//! checked against its digest and only then renamed into place: a blob is never served unless
//! whole and verified. One fetch per digest at a time: the engine's parallel pulls of one layer,
//! or of one image by several services, cost the master one copy. Nodes serve what they hold to
//! each other (`peer.rs`, mutual TLS with node certificates): the master sends a node that
//! asks for a blob another node has, or is fetching, to that node.

pub mod peer;
pub mod source;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wharf_types::{FetchAnswer, FetchRequest, FetchWhat, valid_digest};

pub use source::{Content, FetchError, LinkSource, Source};

/// The largest manifest the mirror takes (the registry's own limit is the same order).
const MAX_MANIFEST: u64 = 4 * 1024 * 1024;

/// The mirror of one node.
pub struct Mirror {
    dir: PathBuf,
    source: Arc<dyn Source>,
    /// One fetch per digest at a time.
    flights: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Mirror {
    /// A mirror keeping its content in `dir` (made if missing), reading through to `source`.
    pub fn open(dir: &Path, source: Arc<dyn Source>) -> std::io::Result<Arc<Mirror>> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        std::fs::create_dir_all(dir.join("sha256"))?;
        // What a killed agent left half written is never served: start without it.
        for e in std::fs::read_dir(dir.join("tmp"))?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        Ok(Arc::new(Mirror {
            dir: dir.to_path_buf(),
            source,
            flights: Default::default(),
        }))
    }

    /// Listen on loopback: the port of the last run (kept in `dir/port`, so the engine's image
    /// names stay the same across agent restarts) when it is free, else any.
    pub async fn bind(dir: &Path) -> std::io::Result<tokio::net::TcpListener> {
        let port_file = dir.join("port");
        let last: Option<u16> = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if let Some(p) = last
            && let Ok(l) = tokio::net::TcpListener::bind(("127.0.0.1", p)).await
        {
            return Ok(l);
        }
        let l = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        std::fs::write(&port_file, l.local_addr()?.port().to_string())?;
        Ok(l)
    }

    /// Serve the engine's pulls on `listener` for as long as the process runs.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) {
        let app = axum::Router::new().fallback(handle).with_state(self);
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the registry mirror stopped");
        }
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn flight(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut f = self.flights.lock();
        f.retain(|_, m| Arc::strong_count(m) > 1);
        f.entry(digest.to_string()).or_default().clone()
    }

    /// The content `digest` from disk, else fetched (`what` of `repo`), checked and kept.
    async fn content(
        &self,
        repo: &str,
        what: FetchWhat,
        digest: &str,
    ) -> Result<PathBuf, FetchError> {
        let path = self.path(digest);
        let flight = self.flight(digest);
        let _one = flight.lock().await;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        let req = FetchRequest {
            repo: repo.to_string(),
            what,
            peer_port: None,
            instead_of: None,
        };
        let c = self.source.fetch(&req).await?;
        self.keep(c, Some(digest)).await
    }

    /// Write `c` under its digest (which must be `expect`, when given), verified; its path.
    async fn keep(&self, mut c: Content, expect: Option<&str>) -> Result<PathBuf, FetchError> {
        let failed = |e: std::io::Error| FetchError::Failed(format!("mirror disk: {e}"));
        if !valid_digest(&c.digest) || expect.is_some_and(|d| d != c.digest) {
            return Err(FetchError::Failed(format!(
                "asked for {}, the source sent {}",
                expect.unwrap_or("content"),
                wharf_types::excerpt(&c.digest, 80)
            )));
        }
        let tmp = self.dir.join("tmp").join(format!(
            "{}.{}",
            c.digest.trim_start_matches("sha256:"),
            rand::random::<u32>()
        ));
        let mut f = tokio::fs::File::create(&tmp).await.map_err(failed)?;
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        let outcome = async {
            loop {
                let n = c
                    .body
                    .read(&mut buf)
                    .await
                    .map_err(|e| FetchError::Failed(format!("source: {e}")))?;
                if n == 0 {
                    break;
                }
                got += n as u64;
                hash.update(&buf[..n]);
                f.write_all(&buf[..n]).await.map_err(failed)?;
            }
            f.sync_all().await.map_err(failed)?;
            let sum = format!("sha256:{}", hex::encode(hash.finalize()));
            if got != c.size || sum != c.digest {
                return Err(FetchError::Failed(format!(
                    "{}: received {got} of {} bytes hashing to {sum}: discarded",
                    c.digest, c.size
                )));
            }
            std::fs::write(self.path(&c.digest).with_extension("type"), &c.media_type)
                .map_err(failed)?;
            tokio::fs::rename(&tmp, self.path(&c.digest))
                .await
                .map_err(failed)
        }
        .await;
        if outcome.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        outcome?;
        metrics::counter!("wharf_agent_mirror_fetched_bytes_total").increment(got);
        Ok(self.path(&c.digest))
    }

    /// Blob `digest` if this node has it (waiting for a fetch of it in progress): what a peer
    /// is served. Never fetched for the peer.
    pub async fn held(&self, digest: &str) -> Option<PathBuf> {
        if !valid_digest(digest) {
            return None;
        }
        let flight = self.flight(digest);
        let _one = flight.lock().await;
        let path = self.path(digest);
        tokio::fs::try_exists(&path)
            .await
            .unwrap_or(false)
            .then_some(path)
    }

    /// A manifest by tag (asked of the source each time: tags move) or by digest (kept).
    async fn manifest(&self, repo: &str, reference: &str) -> Result<(PathBuf, String), FetchError> {
        let what = FetchWhat::Manifest {
            reference: reference.to_string(),
        };
        if valid_digest(reference) {
            let path = self.content(repo, what, reference).await?;
            return Ok((path, reference.to_string()));
        }
        let c = self
            .source
            .fetch(&FetchRequest {
                repo: repo.to_string(),
                what,
                peer_port: None,
                instead_of: None,
            })
            .await?;
        if c.size > MAX_MANIFEST {
            return Err(FetchError::Failed(format!(
                "a manifest of {} bytes",
                c.size
            )));
        }
        let digest = c.digest.clone();
        let flight = self.flight(&digest);
        let _one = flight.lock().await;
        Ok((self.keep(c, None).await?, digest))
    }
}

/// Send `frame` (a fetch) on `stream` and read the `FetchAnswer` that comes back.
async fn exchange<S, T>(stream: &mut S, frame: &T) -> Result<FetchAnswer, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: serde::Serialize,
{
    wharf_link::frame::write_frame(stream, frame)
        .await
        .map_err(|e| e.to_string())?;
    wharf_link::frame::read_frame(stream)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "closed before answering".to_string())
}

/// `/v2/`, `/v2/NAME/manifests/REF`, `/v2/NAME/blobs/DIGEST` (GET and HEAD); nothing else.
async fn handle(State(m): State<Arc<Mirror>>, req: Request) -> Response {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "this mirror only serves pulls",
        );
    }
    let path = req.uri().path().replace("%3A", ":").replace("%3a", ":");
    let Some(rest) = path.strip_prefix("/v2") else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "not a registry path");
    };
    let rest = rest.trim_start_matches('/');
    if rest.is_empty() {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            "{}",
        )
            .into_response();
    }
    let found = if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        m.manifest(name, reference).await
    } else if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        if !valid_digest(digest) {
            return error(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                "not a sha256 digest",
            );
        }
        let what = FetchWhat::Blob {
            digest: digest.to_string(),
        };
        m.content(name, what, digest)
            .await
            .map(|p| (p, digest.to_string()))
    } else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "not a registry path");
    };
    match found {
        Ok((path, digest)) => send(&path, &digest, head).await,
        Err(FetchError::Missing(message)) => {
            error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &message)
        }
        Err(FetchError::Failed(message)) => {
            tracing::warn!(%message, "mirror: cannot serve a pull");
            error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", &message)
        }
    }
}

async fn send(path: &Path, digest: &str, head: bool) -> Response {
    let media_type = std::fs::read_to_string(path.with_extension("type"))
        .unwrap_or_else(|_| "application/octet-stream".into());
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                &e.to_string(),
            );
        }
    };
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = if head {
        Body::empty()
    } else {
        Body::from_stream(futures::stream::unfold(Some(file), |file| async move {
            let mut f = file?;
            let mut buf = vec![0u8; 256 * 1024];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(axum::body::Bytes::from(buf)), Some(f)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }))
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    let hv = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("invalid"));
    h.insert(header::CONTENT_TYPE, hv(&media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    h.insert("docker-content-digest", hv(digest));
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
