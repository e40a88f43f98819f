//! Secrets through the real binary (issue 10, the first part of check 3): a secret made from a
//! file and from standard input is sealed in versions; its value shows up in no command's
//! output (`-o json` included), no audit record, no log and no byte of the store file.

mod common;

use common::*;

const VALUE: &str = "s3cr3t-Value-4b1d";

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_value_is_never_shown_again() {
    let w = Wharf::start().await;
    let file = w.dir.path().join("db_password.txt");
    std::fs::write(&file, VALUE).expect("write the value");
    let (so, _) = w.cli_code(&["secret", "create", "db_password", "-f", utf8(&file)], 0);
    assert!(so.contains("version 1"), "{so}");
    let out = cli_with_stdin(
        &w.config_dir(),
        &["secret", "create", "db_password", "-"],
        "v2-value",
    );
    let (so, _) = expect_code(&out, 0, "secret create from stdin");
    assert!(so.contains("version 2"), "{so}");

    let mut seen = String::new();
    for args in [
        vec!["secret", "ls"],
        vec!["secret", "ls", "-o", "json"],
        vec!["secret", "inspect", "db_password"],
        vec!["secret", "inspect", "db_password", "-o", "json"],
        vec!["audit", "ls", "-o", "json"],
    ] {
        let (so, se) = w.cli_code(&args, 0);
        seen.push_str(&so);
        seen.push_str(&se);
    }
    assert!(
        seen.contains("db_password") && seen.contains("\"size\": 8"),
        "{seen}"
    );
    let store = std::fs::read(w.data_dir().join("wharf.db")).unwrap_or_default();
    let wal = std::fs::read(w.data_dir().join("wharf.db-wal")).unwrap_or_default();
    for (what, bytes) in [
        ("outputs", seen.as_bytes()),
        ("log", w.log().as_bytes()),
        ("store", &store[..]),
        ("store WAL", &wal[..]),
    ] {
        for v in [VALUE.as_bytes(), b"v2-value"] {
            assert!(
                !bytes.windows(v.len()).any(|x| x == v),
                "a secret value in the {what}"
            );
        }
    }

    let big = w.dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 500 * 1024 + 1]).expect("write");
    let (_, se) = w.cli_code(&["secret", "create", "big", "-f", utf8(&big)], 2);
    assert!(se.contains("the most a secret or config may hold"), "{se}");
    w.cli_code(&["secret", "rm", "db_password"], 0);
    let (so, _) = w.cli_code(&["secret", "ls", "-o", "json"], 0);
    assert_eq!(so.trim(), "[]");
}
