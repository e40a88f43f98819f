//! The etcd backend against a real etcd (Debian's `etcd-server`): the conformance suite, long
//! prefix reads and large values, TLS with client certificates, and what a lost quorum looks like.

use std::time::Duration;

use wharf_store::testing::{EtcdCluster, EtcdTlsFiles};
use wharf_store::{EtcdOptions, EtcdStore, EtcdTls, Op, Store, StoreError, Txn, conformance};

async fn connect(c: &EtcdCluster) -> EtcdStore {
    let (options, _) = EtcdOptions::parse(&c.url()).unwrap();
    EtcdStore::connect(&options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_etcd() {
    let cluster = EtcdCluster::start(1);
    let store = connect(&cluster).await;
    conformance::run_all(&store).await;
    // Twice against the same store: checks use fresh prefixes.
    conformance::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_a_cached_store_on_etcd() {
    let cluster = EtcdCluster::start(1);
    let store = std::sync::Arc::new(connect(&cluster).await);
    let cached = wharf_store::CachedStore::new(store, &[]);
    conformance::run_all(&cached).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_prefixes_and_large_values_are_read_in_pages() {
    let cluster = EtcdCluster::start(1);
    let store = connect(&cluster).await;
    // 2,500 keys: more than one page of a prefix read.
    for chunk in (0..2_500).collect::<Vec<_>>().chunks(500) {
        let ops = chunk
            .iter()
            .map(|i| Op::put(format!("many/{i:05}"), format!("v{i}").into_bytes()));
        store.txn(Txn::new().then(ops)).await.unwrap();
    }
    let (kvs, rev) = store.range("many/").await.unwrap();
    assert_eq!(kvs.len(), 2_500, "every key of the prefix");
    assert!(kvs.windows(2).all(|w| w[0].key < w[1].key), "in key order");
    assert_eq!(kvs[1234].value, b"v1234");
    assert_eq!(rev, store.current_revision().await.unwrap());
    // Values of 1 MiB: a page of them is far over gRPC's default 4 MiB message.
    let big = vec![7u8; 1024 * 1024];
    for i in 0..12 {
        store
            .put(&format!("big/{i:02}"), big.clone())
            .await
            .unwrap();
    }
    let (kvs, _) = store.range("big/").await.unwrap();
    assert_eq!(kvs.len(), 12);
    assert!(kvs.iter().all(|kv| kv.value == big));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = wharf_link::pki::Ca::generate().unwrap();
    let (cert, key) = ca
        .server_cert_for(&["localhost".to_string()], &["127.0.0.1".parse().unwrap()])
        .unwrap();
    let client_key = wharf_link::pki::NodeKey::generate().unwrap();
    let client_cert = ca
        .sign_node_csr(
            &client_key.csr("wharf-master").unwrap(),
            "wharf-master",
            Duration::from_secs(3600),
        )
        .unwrap();
    let files = EtcdTlsFiles {
        ca: dir.path().join("ca.pem"),
        server_cert: dir.path().join("server.pem"),
        server_key: dir.path().join("server.key"),
    };
    std::fs::write(&files.ca, ca.cert_pem()).unwrap();
    std::fs::write(&files.server_cert, cert).unwrap();
    std::fs::write(&files.server_key, key).unwrap();
    let cluster = EtcdCluster::start_on("127.0.0.1", 1, Some(files));
    let (mut options, _) = EtcdOptions::parse(&cluster.url()).unwrap();
    // Without a client certificate: refused.
    options.tls = Some(EtcdTls {
        ca_pem: ca.cert_pem().as_bytes().to_vec(),
        identity: None,
    });
    let refused = EtcdStore::connect(&options).await;
    assert!(
        refused.is_err(),
        "etcd with --client-cert-auth took a client without a certificate"
    );
    options.tls = Some(EtcdTls {
        ca_pem: ca.cert_pem().as_bytes().to_vec(),
        identity: Some((client_cert.into_bytes(), client_key.key_pem().into_bytes())),
    });
    let store = EtcdStore::connect(&options).await.unwrap();
    let rev = store.put("tls/k", b"v".to_vec()).await.unwrap();
    assert_eq!(store.get("tls/k").await.unwrap().unwrap().mod_revision, rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_quorum_is_a_clear_error_and_passes() {
    let mut cluster = EtcdCluster::start(3);
    let store = connect(&cluster).await;
    store.put("q/before", b"1".to_vec()).await.unwrap();
    // One member down: no visible effect.
    cluster.kill(2);
    store.put("q/one-down", b"1".to_vec()).await.unwrap();
    // Two down: a write fails, within the request deadline, saying why.
    cluster.kill(1);
    let started = std::time::Instant::now();
    let err = loop {
        match store.put("q/no-quorum", b"1".to_vec()).await {
            Err(e) => break e,
            // The lone member may take an election timeout to notice it has no leader.
            Ok(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Ok(_) => panic!("writes still succeed with two of three etcd members down"),
        }
    };
    assert!(matches!(err, StoreError::NoQuorum(_)), "{err:?}");
    assert!(
        err.to_string().contains("the cluster store has no quorum"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    // Members back: writes resume and nothing acknowledged was lost.
    cluster.start_member(1);
    cluster.start_member(2);
    cluster.wait_healthy(Duration::from_secs(30));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match store.put("q/after", b"1".to_vec()).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("writes did not resume within 30 s of quorum returning: {e}"),
        }
    }
    for k in ["q/before", "q/one-down", "q/after"] {
        assert!(store.get(k).await.unwrap().is_some(), "{k} lost");
    }
}
