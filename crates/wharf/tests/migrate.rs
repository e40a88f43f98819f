//! `wharf store migrate` (issue 11, check 6): a single master's SQLite store holding stacks,
//! tokens, secrets and audit records, moved to a real etcd; a master on etcd then has all of
//! them, the old token still works, and the audit trail verifies, the move recorded in it.

#[path = "common/cluster.rs"]
mod cluster;
mod common;

use cluster::Server;
use common::*;
use wharf_store::testing::EtcdCluster;
use wharf_types::AuditVerification;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_moves_to_etcd_with_everything_in_it() {
    let etcd = EtcdCluster::start(1);
    let mut s = Server::start().await;
    let stack = unique_stack("migrate");
    let file = s.stack_file(&stack, &web_stack(&stack, 2, "", ""));
    s.deploy_detached(&file);
    s.cli_code(&["token", "create", "ci", "--role", "deployer"], 0);
    let secret = s.dir.path().join("secret.txt");
    std::fs::write(&secret, "hunter2").unwrap();
    s.cli_code(&["secret", "create", "db_password", "-f", utf8(&secret)], 0);
    let data = s.dir.path().join("data");
    let etcd_url = etcd.url();
    let migrate = || {
        std::process::Command::new(WHARF)
            .args([
                "store",
                "migrate",
                "--data-dir",
                utf8(&data),
                "--store",
                &etcd_url,
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run wharf store migrate")
    };

    // Not while the master runs.
    let out = migrate();
    let (_, se) = expect_code(&out, 1, "migrate a store in use");
    assert!(se.contains("another wharf is using"), "{se}");

    s.kill9();
    let out = migrate();
    let (so, se) = expect_code(&out, 0, "wharf store migrate");
    assert!(
        so.contains("copied:") && so.contains("stacks"),
        "{so}\n{se}"
    );

    // A master on etcd, on the same data directory (its master.key opens the sealed keys).
    let mut cmd = server_command(&data, s.api_port, &s.agent_addr(), &s.config_dir(), "info");
    cmd.args(["--network-pool", "none", "--store", &etcd.url()]);
    let url = format!("http://127.0.0.1:{}", s.api_port);
    let log = s.dir.path().join("server-etcd.log");
    let (child, client) = s
        .spawn_api(&mut cmd, "wharf server on etcd", &log, &url)
        .await;
    s.child = Some(child);
    s.client = client;

    let (so, _) = s.cli_code(&["stack", "ls"], 0);
    assert!(so.contains(&stack), "the stack was not migrated:\n{so}");
    let (so, _) = s.cli_code(&["token", "ls"], 0);
    assert!(so.contains("ci"), "the token was not migrated:\n{so}");
    let (so, _) = s.cli_code(&["secret", "ls"], 0);
    assert!(
        so.contains("db_password"),
        "the secret was not migrated:\n{so}"
    );
    // Its versions came along: the next one is 2.
    let (so, _) = s.cli_code(&["secret", "create", "db_password", "-f", utf8(&secret)], 0);
    assert!(so.contains("version 2"), "{so}");
    let v: AuditVerification =
        serde_json::from_str(&s.cli_code(&["audit", "verify", "-o", "json"], 0).0)
            .expect("verify -o json");
    assert!(v.broken_at.is_none() && v.records > 4, "{v:?}");
    let (so, _) = s.cli_code(&["audit", "ls", "-o", "json"], 0);
    for action in ["token.create", "secret.put", "store.migrate"] {
        assert!(
            so.contains(action),
            "no {action} record after the move:\n{so}"
        );
    }

    // A second copy into the same (now used) etcd is refused.
    s.kill9();
    let out = migrate();
    let (_, se) = expect_code(&out, 1, "migrate into a store in use");
    assert!(se.contains("not empty"), "{se}");
}
