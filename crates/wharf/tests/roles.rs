//! Roles and scoped tokens through the real binary (issue 10, check 2): a `deployer` token scoped
//! to one stack deploys that stack, and is refused (403, audited) deploying another, creating
//! tokens, draining nodes and reading another stack's logs; revoked, it is refused at once.

mod common;

use std::process::Output;

use common::*;

/// `wharf ARGS…` with `token` instead of the context's admin token.
fn as_token(w: &Wharf, token: &str, args: &[&str]) -> Output {
    cli_command(&w.config_dir(), args)
        .env("WHARF_URL", w.url())
        .env("WHARF_TOKEN", token)
        .output()
        .expect("run wharf")
}

/// Exit 1 with a refusal whose message has `says` and the token's role.
fn refused(w: &Wharf, out: &Output, says: &str) {
    let (_, se) = expect_code(out, 1, "refused");
    assert!(
        se.contains("error: ") && se.contains(says) && se.contains("\"ci\" has role deployer"),
        "the refusal names {says:?} and the role:\n{se}\n{}",
        tail(&w.log(), 20)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployer_token_scoped_to_one_stack_deploys_it_and_nothing_else() {
    let (mut w, shop) = Wharf::start_for("shop").await;
    let other = unique_stack("other");
    let other_file = w.stack_file(&other, &testapp_stack(&other, "web", 1, ""));
    w.deploy(&other_file, 0);
    let (token, _) = w.cli_code(
        &[
            "token", "create", "ci", "--role", "deployer", "--stack", &shop, "--ttl", "1h",
        ],
        0,
    );
    let token = token.trim().to_string();
    assert!(token.starts_with("wharf_"), "the token is printed: {token}");

    let shop_file = w.stack_file(&shop, &testapp_stack(&shop, "web", 1, HEALTHCHECK));
    let out = as_token(&w, &token, &["stack", "deploy", "-c", utf8(&shop_file)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "deploys its stack: {:?}",
        text(&out)
    );
    let out = as_token(&w, &token, &["stack", "ls", "-o", "json"]);
    let (so, _) = text(&out);
    assert!(
        so.contains(&shop) && !so.contains(&other),
        "lists only its stack:\n{so}"
    );

    let other_again = w.stack_file(&other, &testapp_stack(&other, "web", 2, ""));
    let out = as_token(&w, &token, &["stack", "deploy", "-c", utf8(&other_again)]);
    refused(&w, &out, "outside the scope");
    let out = as_token(&w, &token, &["token", "create", "more", "--role", "admin"]);
    refused(&w, &out, "permission manage_access");
    let nodes = w.client.list_nodes().await.expect("nodes");
    let out = as_token(&w, &token, &["node", "drain", &nodes[0].id]);
    refused(&w, &out, "permission manage_nodes");
    // The CLI does not see the other stack's services (its listing is scoped); the API refuses
    // their logs.
    let logs = format!("{}/v1/services/{other}/web/logs", w.url());
    let r = reqwest::Client::new()
        .get(&logs)
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET logs");
    let status = r.status();
    let body = r.text().await.expect("body");
    assert!(
        status == reqwest::StatusCode::FORBIDDEN && body.contains("outside the scope"),
        "another stack's logs: {status} {body}"
    );

    let audit = w.client.audit().await.expect("audit");
    let denied: Vec<_> = audit
        .iter()
        .filter(|r| r.actor == "ci" && r.outcome == "denied")
        .collect();
    assert_eq!(denied.len(), 4, "each refusal audited: {denied:#?}");

    let (so, _) = w.cli_code(&["token", "ls"], 0);
    let row = line_with(&so, "ci ");
    assert!(
        row.contains("deployer") && row.contains(&shop),
        "token ls shows role and scope: {row}"
    );
    w.cli_code(&["token", "revoke", "ci"], 0);
    let out = as_token(&w, &token, &["stack", "ls"]);
    let (_, se) = text(&out);
    assert!(
        out.status.code() == Some(1) && se.contains("invalid token"),
        "revoked: refused at once: {se}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invited_user_logs_in_and_acts_with_its_role() {
    let (w, _) = Wharf::start_for("users").await;
    let (code, _) = w.cli_code(&["user", "add", "ann", "--role", "viewer"], 0);
    let code = code.trim().to_string();
    let ann = w.dir.path().join("ann-config");
    let url = w.url();
    let login = [
        "login",
        &url,
        "--user",
        "ann",
        "--invitation",
        &code,
        "--password-stdin",
    ];
    let out = cli_with_stdin(&ann, &login, "correct horse battery\n");
    let (so, se) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "login with the invitation: {so}{se}"
    );
    assert!(so.contains("logged in as ann (viewer)"), "{so}");

    let out = cli_command(&ann, &["stack", "ls"]).output().expect("wharf");
    assert_eq!(
        out.status.code(),
        Some(0),
        "a viewer reads: {:?}",
        text(&out)
    );
    let out = cli_command(&ann, &["token", "create", "x", "--role", "admin"])
        .output()
        .expect("wharf");
    let (_, se) = text(&out);
    assert!(
        out.status.code() == Some(1) && se.contains("\"ann\" has role viewer"),
        "the session acts as ann, a viewer: {se}"
    );
    let (users, _) = w.cli_code(&["user", "ls"], 0);
    assert!(line_with(&users, "ann ").contains("active"), "{users}");

    // The invitation is spent; a wrong password is refused.
    let out = cli_with_stdin(&ann, &login, "correct horse battery\n");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a spent invitation: {:?}",
        text(&out)
    );
    let again = ["login", &url, "--user", "ann", "--password-stdin"];
    let out = cli_with_stdin(&ann, &again, "wrong horse battery\n");
    let (_, se) = text(&out);
    assert!(
        out.status.code() == Some(1) && se.contains("wrong user name, password or invitation"),
        "{se}"
    );
    let out = cli_with_stdin(&ann, &again, "correct horse battery\n");
    assert_eq!(out.status.code(), Some(0), "{:?}", text(&out));

    // Removed: its session ends at once.
    w.cli_code(&["user", "rm", "ann"], 0);
    let out = cli_command(&ann, &["stack", "ls"]).output().expect("wharf");
    assert_eq!(out.status.code(), Some(1), "{:?}", text(&out));
}
