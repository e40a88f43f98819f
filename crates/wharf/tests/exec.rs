//! `wharf service exec` and `wharf service stats` through the agent link (issue "Operability",
//! check 3): the instance runs on another host (a network namespace with its own agent); the
//! command's output and exit code come back, stdin goes in, `-it` under a real pseudo-terminal
//! gets a TTY of the size set and follows its resizes, a `viewer` is refused (exit 2, 403) and the refusal is in the
//! audit trail; stats show the instance with its memory.

mod common;
#[path = "common/netcluster.rs"]
mod netcluster;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{WHARF, cli_with_stdin, expect_code, text, unique_stack};
use netcluster::{Cluster, Harness};
use wharf_testkit::{Check, not_yet, wait_for};
use wharf_types::{AuditRecord, ExecQuery, StatsResponse};

/// A cluster of two hosts and a service of the shell image with its one instance on host 1
/// (the master runs on neither). Returns the cluster and `stack/sh`.
async fn shell_on_host_1(prefix: &str) -> (Cluster, String) {
    wharf_testkit::shell_image().await.expect("shell image");
    let mut c = Cluster::start(2, &[&[], &["role=shell"]]).await;
    let stack = unique_stack(prefix);
    let yaml = format!(
        "name: {stack}\nservices:\n  sh:\n    image: wharf-shell:latest\n    stop_grace_period: 1s\n    deploy:\n      replicas: 1\n      placement:\n        constraints: [\"node.labels.role == shell\"]\n"
    );
    let insts = c
        .deploy_ready(&stack, &yaml, "sh", 1, Duration::from_secs(90))
        .await;
    assert_eq!(
        insts[0].node,
        c.node_id(1),
        "the instance runs on host 1: {insts:?}"
    );
    (c, format!("{stack}/sh"))
}

fn audit(c: &Cluster) -> Vec<AuditRecord> {
    let (so, _) = c.cli_code(&["audit", "ls", "-o", "json"], 0);
    serde_json::from_str(&so).expect("audit ls -o json")
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_runs_a_command_on_another_host_with_its_output_exit_code_input_and_tty() {
    let (c, svc) = shell_on_host_1("exec").await;

    // Output and exit code: the command's code is wharf's.
    let out = c.cli(&["service", "exec", &svc, "--", "sh", "-c", "echo hi; exit 3"]);
    let (so, se) = expect_code(&out, 3, "the command's exit code");
    assert_eq!(so, "hi\n", "stdout: {so:?}, stderr: {se:?}");
    let out = c.cli(&[
        "service",
        "exec",
        &format!("{svc}.0"),
        "--",
        "sh",
        "-c",
        "echo oops >&2",
    ]);
    let (so, se) = expect_code(&out, 0, "stderr to stderr");
    assert!(
        so.is_empty() && se == "oops\n",
        "stdout {so:?}, stderr {se:?}"
    );

    // Standard input goes in with -i, and its end ends `cat`.
    let out = cli_with_stdin(
        &c.config_dir(),
        &["service", "exec", "-i", &svc, "--", "cat"],
        "typed in\n",
    );
    let (so, _) = expect_code(&out, 0, "cat of stdin");
    assert_eq!(so, "typed in\n");

    // A slot that does not exist, and an empty command: refused before anything runs (exit 2).
    let out = c.cli(&["service", "exec", &format!("{svc}.7"), "--", "true"]);
    let (_, se) = expect_code(&out, 2, "no slot 7");
    assert!(se.contains("has no slot 7") && se.contains("hint:"), "{se}");
    let (stack, _) = svc.split_once('/').unwrap();
    let q = ExecQuery {
        command: "[]".into(),
        ..ExecQuery::default()
    };
    let Err(e) = c.client.exec(stack, "sh", &q).await else {
        panic!("an empty command was not refused");
    };
    let api = e.api_error().expect("an ApiError");
    assert_eq!(
        (e.status(), api.location.as_deref()),
        (Some(400), Some("command")),
        "{api:?}"
    );

    // -it under a real pseudo-terminal of a size we set: the command gets a TTY of that size.
    let tty = under_pty(
        &c,
        &format!("stty cols 123 rows 45; {WHARF} service exec -it {svc} -- sh"),
        "stty size; tty; exit 5\n",
    )
    .await;
    let (so, se) = text(&tty);
    assert_eq!(
        tty.status.code(),
        Some(5),
        "exit code of the shell: {so}\n{se}"
    );
    assert!(so.contains("45 123"), "stty size in the TTY: {so:?}");
    assert!(so.contains("/dev/pts/"), "a TTY: {so:?}");

    // A new size of the terminal (SIGWINCH) reaches the command's TTY: the pty is resized 4 s
    // in, while the remote shell sleeps 8 s between two `stty size` (the exec starts well
    // within those 4 s: about 0.3 s here).
    let resized = under_pty(
        &c,
        &format!(
            "stty cols 50 rows 20; (sleep 4; stty cols 99 rows 33 < /dev/tty) & {WHARF} service exec -it {svc} -- sh"
        ),
        "stty size; sleep 8; stty size; exit 0\n",
    )
    .await;
    let (so, se) = text(&resized);
    assert_eq!(resized.status.code(), Some(0), "{so}\n{se}");
    let (before, after) = (so.find("20 50"), so.rfind("33 99"));
    assert!(
        matches!((before, after), (Some(b), Some(a)) if b < a),
        "the size before, then the new size: {so:?}"
    );

    // Every exec is in the audit trail: who, which instance, the command.
    let records = audit(&c);
    let ran = records
        .iter()
        .find(|r| {
            r.action == "service.exec"
                && r.summary
                    .as_deref()
                    .is_some_and(|s| s.contains("'echo hi; exit 3'"))
        })
        .unwrap_or_else(|| panic!("the exec is audited: {records:#?}"));
    assert_eq!(
        (ran.outcome.as_str(), ran.target.as_str()),
        ("ok", format!("{svc}.0").as_str())
    );
    assert!(
        ran.summary
            .as_deref()
            .unwrap_or_default()
            .contains(&c.node_id(1))
    );
}

/// `script` runs `command` in a new pseudo-terminal with `input` typed into it; its output once
/// it exited (within 60 s).
async fn under_pty(c: &Cluster, command: &str, input: &str) -> Output {
    let mut child = Command::new("script")
        .args(["-qec", command, "/dev/null"])
        .env("WHARF_CONFIG_DIR", c.config_dir())
        .env_remove("WHARF_URL")
        .env_remove("WHARF_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script (util-linux)");
    // Kept open until the command exits: `script` ends the session at the end of its input.
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("type");
    stdin.flush().expect("flush");
    let exited = wait_for(
        "the command under the pty exits",
        Duration::from_secs(60),
        || {
            let status = child.try_wait();
            async move {
                anyhow::Ok(match status? {
                    Some(s) => Check::Done(s),
                    None => not_yet("running"),
                })
            }
        },
    )
    .await;
    drop(stdin);
    if let Err(e) = exited {
        let _ = child.kill();
        let out = child.wait_with_output().expect("output");
        panic!("{e}\noutput so far: {:?}\n{}", text(&out), c.master_log());
    }
    child.wait_with_output().expect("script output")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_viewer_may_not_exec_and_its_refusal_is_audited() {
    let (c, svc) = shell_on_host_1("execviewer").await;
    let (token, _) = c.cli_code(&["token", "create", "watcher", "--role", "viewer"], 0);
    let out = common::cli_command(&c.config_dir(), &["service", "exec", &svc, "--", "id"])
        .env("WHARF_URL", c.url())
        .env("WHARF_TOKEN", token.trim())
        .output()
        .expect("run wharf");
    let (_, se) = expect_code(&out, 2, "a viewer is refused");
    assert!(
        se.contains("permission exec") && se.contains("role viewer") && se.contains("hint:"),
        "the refusal names the permission and the role: {se}"
    );
    let records = audit(&c);
    let (stack, _) = svc.split_once('/').unwrap();
    assert!(
        records.iter().any(|r| r.actor == "watcher"
            && r.outcome == "denied"
            && r.action.contains("/exec")
            && r.target == stack),
        "the refusal is in the audit trail: {records:#?}"
    );
    assert!(
        !records.iter().any(|r| r.action == "service.exec"),
        "nothing ran: {records:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_show_each_instance_with_its_memory() {
    let (c, svc) = shell_on_host_1("stats").await;
    let (so, _) = c.cli_code(&["service", "stats", &svc, "--no-stream", "-o", "json"], 0);
    let stats: StatsResponse = serde_json::from_str(&so).expect("stats -o json");
    assert!(stats.errors.is_empty(), "{stats:?}");
    assert_eq!(stats.instances.len(), 1, "one row per instance: {stats:?}");
    let row = &stats.instances[0];
    assert_eq!(
        (row.slot, row.node.as_str()),
        (0, c.node_id(1).as_str()),
        "{row:?}"
    );
    assert!(
        row.memory_bytes > 0 && row.memory_limit_bytes >= row.memory_bytes && row.error.is_none(),
        "memory in use, under its limit: {row:?}"
    );
    let (table, _) = c.cli_code(&["top", "--no-stream"], 0);
    let line = table
        .lines()
        .find(|l| l.contains(&format!("{svc}.0")))
        .unwrap_or_else(|| panic!("wharf top shows the instance: {table}"));
    assert!(
        line.contains(&c.node_id(1)) && (line.contains("MiB") || line.contains("KiB")),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_and_stats_work_on_a_single_node_wharf_up_too() {
    wharf_testkit::shell_image().await.expect("shell image");
    let (mut w, stack) = common::Wharf::start_for("execup").await;
    let yaml = format!(
        "name: {stack}\nservices:\n  sh:\n    image: wharf-shell:latest\n    stop_grace_period: 1s\n"
    );
    w.deploy_ready(&stack, &yaml, "sh", 1, Duration::from_secs(60))
        .await;
    let svc = format!("{stack}/sh");
    let out = w.cli(&["service", "exec", &svc, "--", "sh", "-c", "echo up; exit 4"]);
    let (so, _) = expect_code(&out, 4, "the command's exit code");
    assert_eq!(so, "up\n");
    let (so, _) = w.cli_code(&["service", "stats", &svc, "--no-stream", "-o", "json"], 0);
    let stats: StatsResponse = serde_json::from_str(&so).expect("stats -o json");
    assert!(
        stats.instances.len() == 1 && stats.instances[0].memory_bytes > 0,
        "{stats:?}"
    );
}
