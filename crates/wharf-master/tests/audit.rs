//! The audit trail as the store keeps it (issue 10, check 5): every change and every refused
//! attempt leaves one chained record; a record changed, removed or swapped behind the master's
//! back is found and named; concurrent changes leave a whole chain; records of a master from
//! before the chain are chained on start.

use std::sync::Arc;

use wharf_master::Master;
use wharf_master::model::keys;
use wharf_master::mutate::Actor;
use wharf_store::{SqliteStore, Store};
use wharf_types::{AuditRecord, Role, TokenRequest};

fn master() -> Master {
    Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()))
}

fn request(name: &str) -> TokenRequest {
    TokenRequest {
        name: name.into(),
        role: Role::Viewer,
        stacks: vec![],
        ttl_secs: None,
    }
}

/// Where the trail breaks, if it does.
async fn broken_at(m: &Master) -> Option<(u64, String)> {
    let records = m.audit_records().await.unwrap();
    let (head, _) = m.audit_head().await.unwrap();
    wharf_master::audit::verify(&records, &head)
        .err()
        .map(|b| (b.seq, b.why))
}

/// A master whose trail has five records: four token changes and one refused attempt.
async fn with_five() -> Master {
    let m = master();
    five(&m).await;
    m
}

/// Five records: four token changes and one refused attempt.
async fn five(m: &Master) {
    let admin = Actor::named("admin");
    for n in ["a", "b", "c"] {
        m.create_token(&admin, &request(n)).await.unwrap();
    }
    m.revoke_token(&admin, "b").await.unwrap();
    m.audit_denied(&Actor::named("ci"), "POST /v1/tokens", "/v1/tokens", 1)
        .await
        .unwrap();
}

#[tokio::test]
async fn each_change_and_refusal_is_one_chained_record() {
    let m = with_five().await;
    let records = m.audit_records().await.unwrap();
    let seen: Vec<(u64, &str, &str)> = records
        .iter()
        .map(|r| (r.id, r.action.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, "token.create", "ok"),
            (2, "token.create", "ok"),
            (3, "token.create", "ok"),
            (4, "token.revoke", "ok"),
            (5, "POST /v1/tokens", "denied"),
        ]
    );
    assert_eq!(broken_at(&m).await, None);
    // A change whose compare fails writes nothing, not even a record.
    let e = m
        .create_token(&Actor::named("admin"), &request("a"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    assert_eq!(m.audit_records().await.unwrap().len(), 5);
}

/// Rewrite record `id` in the store, behind the master's back.
async fn tamper(m: &Master, id: u64, f: impl FnOnce(&mut AuditRecord)) {
    let key = keys::audit(id);
    let kv = m.store.get(&key).await.unwrap().unwrap();
    let mut r: AuditRecord = serde_json::from_slice(&kv.value).unwrap();
    f(&mut r);
    m.store
        .put(&key, serde_json::to_vec(&r).unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_changed_removed_or_swapped_record_is_named() {
    let m = with_five().await;
    tamper(&m, 2, |r| r.actor = "somebody else".into()).await;
    let (seq, why) = broken_at(&m).await.expect("changed");
    assert_eq!(seq, 2, "{why}");

    let m = with_five().await;
    m.store.delete(&keys::audit(3)).await.unwrap();
    assert_eq!(broken_at(&m).await.map(|b| b.0), Some(3), "removed");

    let m = with_five().await;
    let (r2, r4) = (
        m.store.get(&keys::audit(2)).await.unwrap().unwrap(),
        m.store.get(&keys::audit(4)).await.unwrap().unwrap(),
    );
    m.store.put(&keys::audit(2), r4.value).await.unwrap();
    m.store.put(&keys::audit(4), r2.value).await.unwrap();
    assert_eq!(broken_at(&m).await.map(|b| b.0), Some(2), "swapped");

    let m = with_five().await;
    m.store.delete(&keys::audit(5)).await.unwrap();
    let (seq, why) = broken_at(&m).await.expect("cut short");
    assert_eq!(seq, 5, "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_leave_a_whole_chain() {
    let m = master();
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let m = m.clone();
            tokio::spawn(async move {
                let admin = Actor::named("admin");
                m.create_token(&admin, &request(&format!("t{i}")))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let records = m.audit_records().await.unwrap();
    assert_eq!(records.len(), 40);
    assert_eq!(broken_at(&m).await, None);
}

#[tokio::test]
async fn records_of_an_older_master_are_chained_on_start() {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    for (at, action) in [(10u64, "stack.deploy"), (20, "stack.rm")] {
        let old = serde_json::json!({"id": 0, "at": at, "actor": "admin", "action": action, "target": "shop"});
        store
            .put(
                &format!("{}{at:016}-abcd", keys::AUDIT),
                serde_json::to_vec(&old).unwrap(),
            )
            .await
            .unwrap();
    }
    let m = Master::new(store);
    m.chain_legacy_audit().await.unwrap();
    m.create_token(&Actor::named("admin"), &request("after"))
        .await
        .unwrap();
    let records = m.audit_records().await.unwrap();
    let seen: Vec<(u64, u64, &str)> = records
        .iter()
        .map(|r| (r.id, r.at, r.action.as_str()))
        .collect();
    assert_eq!(seen[..2], [(1, 10, "stack.deploy"), (2, 20, "stack.rm")]);
    assert_eq!(seen[2].2, "token.create");
    assert_eq!(broken_at(&m).await, None);
    // Once only.
    m.chain_legacy_audit().await.unwrap();
    assert_eq!(m.audit_records().await.unwrap().len(), 3);
}

/// The records in the `--audit-log` file, in order.
fn sink_lines(path: &std::path::Path) -> Vec<AuditRecord> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn the_audit_log_file_gets_every_record_and_catches_up_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let store: Arc<SqliteStore> = Arc::new(SqliteStore::open_in_memory().unwrap());
    let config = wharf_master::MasterConfig {
        audit_log: Some(log.clone()),
        ..Default::default()
    };
    let m = Master::with_config(store.clone(), config.clone());
    m.open_audit_trail().await.unwrap();
    five(&m).await;
    let lines = sink_lines(&log);
    assert_eq!(
        lines,
        m.audit_records().await.unwrap(),
        "one line per record, in order"
    );

    // A crash after two commits but before their lines: the next start appends them.
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&log, format!("{}\n", kept.join("\n"))).unwrap();
    let m = Master::with_config(store, config);
    m.open_audit_trail().await.unwrap();
    m.create_token(&Actor::named("admin"), &request("later"))
        .await
        .unwrap();
    let records = m.audit_records().await.unwrap();
    assert_eq!(sink_lines(&log), records);
    assert_eq!(records.len(), 6);
}
