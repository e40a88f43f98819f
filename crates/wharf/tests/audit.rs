//! The audit trail through the real binary (issue 10, check 5): records say who, from where and
//! with which request; `wharf audit verify` passes on a whole trail, also after a `kill -9` in a
//! burst of concurrent changes, and fails naming the record when one byte of it is changed in
//! the store file.

mod common;

use std::time::Duration;

use common::*;
use wharf_store::{SqliteStore, Store};
use wharf_types::{AuditRecord, AuditVerification};

fn records(w: &Wharf, args: &[&str]) -> Vec<AuditRecord> {
    let mut all = vec!["audit", "ls", "-o", "json"];
    all.extend_from_slice(args);
    let (so, _) = w.cli_code(&all, 0);
    serde_json::from_str(&so).expect("audit ls -o json")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trail_verifies_after_a_kill_9_burst_and_names_a_changed_byte() {
    let (mut w, stack) = Wharf::start_for("audit").await;
    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 1, ""));
    w.deploy(&file, 0);
    w.cli_code(&["token", "create", "ci", "--role", "deployer"], 0);

    let mine = records(&w, &["--stack", &stack]);
    let deploy = mine
        .iter()
        .find(|r| r.action == "stack.deploy")
        .unwrap_or_else(|| panic!("the deploy is recorded: {mine:#?}"));
    assert_eq!(deploy.outcome, "ok");
    assert_eq!(deploy.source.as_deref(), Some("127.0.0.1"), "{deploy:?}");
    assert!(
        deploy.role.is_some() && deploy.request_id.is_some() && deploy.user_agent.is_some(),
        "who, with what and which request: {deploy:?}"
    );
    assert!(
        records(&w, &["--actor", "nobody"]).is_empty(),
        "filtered by actor"
    );
    let (so, _) = w.cli_code(&["audit", "verify"], 0);
    assert!(so.contains("the audit trail is whole"), "{so}");

    // A burst of concurrent changes, killed in the middle.
    let url = format!("{}/v1/tokens", w.url());
    let context = std::fs::read_to_string(w.config_dir().join("context.json")).expect("context");
    let token = serde_json::from_str::<serde_json::Value>(&context).expect("json")["token"]
        .as_str()
        .expect("a token")
        .to_string();
    let burst: Vec<_> = (0..8)
        .map(|task| {
            let (url, token) = (url.clone(), token.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for i in 0..50 {
                    let body =
                        serde_json::json!({"name": format!("b{task}-{i}"), "role": "viewer"});
                    if http
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await
                        .is_err()
                    {
                        return; // the master is gone
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.kill9();
    for b in burst {
        let _ = b.await;
    }
    w.launch(&[]).await;
    let v: AuditVerification =
        serde_json::from_str(&w.cli_code(&["audit", "verify", "-o", "json"], 0).0)
            .expect("verify -o json");
    assert!(
        v.broken_at.is_none() && v.records > 3,
        "whole after kill -9 mid-burst: {v:?}"
    );

    // One byte of record 2, changed in the store file while the master is down.
    w.kill9();
    {
        let store = SqliteStore::open(&w.data_dir().join("wharf.db")).expect("open the store");
        let key = format!("/audit/{:020}", 2);
        let mut value = store
            .get(&key)
            .await
            .expect("read")
            .expect("record 2")
            .value;
        let at = value
            .windows(7)
            .position(|b| b == b"\"actor\"")
            .expect("an actor field")
            + 10;
        value[at] ^= 0x01;
        store.put(&key, value).await.expect("write");
    }
    w.launch(&[]).await;
    let (_, se) = w.cli_code(&["audit", "verify"], 1);
    assert!(
        se.contains("broken at record 2"),
        "names the changed record:\n{se}"
    );
}
