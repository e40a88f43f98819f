//! The mirror against a recording fake source: content is kept by digest and fetched once, a
//! wrong or short body is never kept or served, tags are asked of the source each time.

use std::sync::Arc;

use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};

use super::*;

/// `(repo, reference or digest) -> (media type, bytes)`.
type Held = HashMap<(String, String), (String, Vec<u8>)>;

/// A registry holding `content`; records what it was asked.
#[derive(Default)]
struct Fake {
    content: Mutex<Held>,
    asked: Mutex<Vec<String>>,
    /// Send this instead of the bytes (a corrupt or cut-off transfer).
    lie: Mutex<Option<Vec<u8>>>,
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

#[async_trait::async_trait]
impl Source for Fake {
    async fn fetch(&self, req: &FetchRequest) -> Result<Content, FetchError> {
        let key = match &req.what {
            FetchWhat::Manifest { reference } => reference.clone(),
            FetchWhat::Blob { digest } => digest.clone(),
        };
        self.asked.lock().push(format!("{}:{key}", req.repo));
        let Some((media_type, bytes)) = self.content.lock().get(&(req.repo.clone(), key)).cloned()
        else {
            return Err(FetchError::Missing("no such thing".into()));
        };
        let sent = self.lie.lock().clone().unwrap_or_else(|| bytes.clone());
        Ok(Content {
            media_type,
            digest: digest(&bytes),
            size: bytes.len() as u64,
            body: Box::new(std::io::Cursor::new(sent)),
        })
    }
}

impl Fake {
    fn put(&self, repo: &str, key: &str, media_type: &str, bytes: &[u8]) {
        self.content.lock().insert(
            (repo.into(), key.into()),
            (media_type.into(), bytes.to_vec()),
        );
    }
}

async fn serve(fake: Arc<Fake>) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mirror = Mirror::open(dir.path(), fake).unwrap();
    let l = Mirror::bind(dir.path()).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(mirror.serve(l));
    (format!("http://{addr}"), dir)
}

/// A minimal HTTP/1.1 GET over a TCP stream (no client crate in this crate's dependencies).
async fn get(url: &str) -> (u16, Vec<u8>, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).await.unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let digest = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("docker-content-digest: ")
            .map(str::to_string)
    });
    (status, all[split + 4..].to_vec(), digest)
}

#[tokio::test]
async fn a_blob_is_fetched_once_verified_and_served_from_disk_after() {
    let fake = Arc::new(Fake::default());
    let layer = vec![7u8; 300_000];
    let d = digest(&layer);
    fake.put("shop/web", &d, "application/octet-stream", &layer);
    let (base, _dir) = serve(fake.clone()).await;
    let url = format!("{base}/v2/shop/web/blobs/{d}");
    // Ten pulls at once: one fetch.
    let pulls: Vec<_> = (0..10)
        .map(|_| {
            tokio::spawn({
                let url = url.clone();
                async move { get(&url).await }
            })
        })
        .collect();
    for p in pulls {
        let (status, body, sent_digest) = p.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, layer, "the blob's bytes");
        assert_eq!(sent_digest.as_deref(), Some(d.as_str()));
    }
    assert_eq!(
        fake.asked.lock().len(),
        1,
        "one fetch for ten pulls: {:?}",
        fake.asked.lock()
    );
    // Another pull later: from disk.
    assert_eq!(get(&url).await.0, 200);
    assert_eq!(fake.asked.lock().len(), 1, "served from disk");
}

#[tokio::test]
async fn a_corrupt_transfer_is_neither_kept_nor_served() {
    let fake = Arc::new(Fake::default());
    let layer = b"the real layer".to_vec();
    let d = digest(&layer);
    fake.put("shop/web", &d, "application/octet-stream", &layer);
    for lie in [b"the fake layer".to_vec(), b"the real".to_vec()] {
        *fake.lie.lock() = Some(lie);
        let (base, dir) = serve(fake.clone()).await;
        let (status, _, _) = get(&format!("{base}/v2/shop/web/blobs/{d}")).await;
        assert_eq!(status, 503, "a wrong body is an error, not content");
        let kept: Vec<_> = std::fs::read_dir(dir.path().join("sha256"))
            .unwrap()
            .collect();
        assert!(kept.is_empty(), "nothing kept: {kept:?}");
        let tmp: Vec<_> = std::fs::read_dir(dir.path().join("tmp")).unwrap().collect();
        assert!(tmp.is_empty(), "no temporary file left: {tmp:?}");
    }
    // The source healed: the same mirror serves it.
    *fake.lie.lock() = None;
    let (base, _dir) = serve(fake.clone()).await;
    let (status, body, _) = get(&format!("{base}/v2/shop/web/blobs/{d}")).await;
    assert_eq!((status, body), (200, layer));
}

#[tokio::test]
async fn tags_are_asked_each_time_digests_once() {
    let fake = Arc::new(Fake::default());
    let m1 = br#"{"schemaVersion":2,"v":1}"#.to_vec();
    let mt = "application/vnd.oci.image.manifest.v1+json";
    fake.put("shop/web", "live", mt, &m1);
    fake.put("shop/web", &digest(&m1), mt, &m1);
    let (base, _dir) = serve(fake.clone()).await;
    for _ in 0..2 {
        let (status, body, d) = get(&format!("{base}/v2/shop/web/manifests/live")).await;
        assert_eq!((status, body, d), (200, m1.clone(), Some(digest(&m1))));
    }
    let by_digest = format!("{base}/v2/shop/web/manifests/{}", digest(&m1));
    assert_eq!(get(&by_digest).await.0, 200);
    assert_eq!(get(&by_digest).await.0, 200);
    let asked = fake.asked.lock().clone();
    assert_eq!(
        asked.iter().filter(|a| a.ends_with(":live")).count(),
        2,
        "{asked:?}"
    );
    assert_eq!(
        asked.iter().filter(|a| a.contains("sha256:")).count(),
        0,
        "the tag's answer was kept by digest: {asked:?}"
    );
    // Unknown content is a 404, a bad path a 404, a write refused.
    assert_eq!(
        get(&format!("{base}/v2/shop/web/manifests/nope")).await.0,
        404
    );
    assert_eq!(get(&format!("{base}/elsewhere")).await.0, 404);
}

#[test]
fn pinned_images_are_pulled_through_the_mirror_and_others_are_not() {
    use crate::driver::docker::engine_ref;
    let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let m = Some("127.0.0.1:5123");
    assert_eq!(
        engine_ref(&format!("wharf.local/shop/web:live@{d}"), m),
        format!("127.0.0.1:5123/shop/web@{d}")
    );
    assert_eq!(
        engine_ref("wharf.local/shop/web", m),
        "127.0.0.1:5123/shop/web:latest"
    );
    assert_eq!(engine_ref("debian:12", m), "debian:12");
    assert_eq!(
        engine_ref("127.0.0.1:7700/shop/web:1", m),
        "127.0.0.1:7700/shop/web:1"
    );
    assert_eq!(
        engine_ref(&format!("wharf.local/shop/web@{d}"), None),
        format!("wharf.local/shop/web@{d}")
    );
}
