//! The habits of `docker stack` / `docker service` users, on the real binary against a real
//! `wharf up`: each command's exact words (golden strings: what is stable of the output) and its
//! exit code. Positional stack names, `stack services`, `stack rm A B`, `stack diff --exit-code`,
//! `-q`, `-o json|yaml|wide|name`, `--filter`, `node ps`, `service update`, `service history` and
//! `rollback --to`, `deployment ls|status|follow`, contexts, and completion of names from the API.

mod common;

use std::time::Duration;

use common::*;

/// Service `web` of the test workload, `MODE=mode`, health-checked, updated without a monitor
/// window (quick).
fn habits_yaml(stack: &str, mode: &str) -> String {
    let web = Service::testapp("web")
        .env("MODE", &format!("\"{mode}\""))
        .replicas(1)
        .deploy("      update_config:\n        monitor: 0s\n      rollback_config:\n        monitor: 0s\n")
        .healthcheck();
    Stack::new(stack).service(web).yaml()
}

/// The lines of `s`, trimmed, without empty ones.
fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// One JSON document: the whole of stdout parses as one value.
fn one_document(so: &str, what: &str) -> serde_json::Value {
    serde_json::from_str(so)
        .unwrap_or_else(|e| panic!("{what}: not one JSON document ({e}):\n{so}"))
}

/// Waits until every instance of web runs `MODE=mode`, `n` of them.
async fn wait_mode(w: &Wharf, stack: &str, n: usize, mode: &str) {
    let insts = w.wait_ready(stack, "web", n, Duration::from_secs(60)).await;
    for i in &insts {
        let env = container_env(i.container_id.as_deref().expect("container")).await;
        assert!(
            env.iter().any(|e| *e == format!("MODE={mode}")),
            "instance {} should run MODE={mode}: {env:?}",
            i.id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_habits_keep_their_words_and_exit_codes() {
    let (mut w, stack) = Wharf::start_for("habits").await;
    let file = w.stack_file(&stack, &habits_yaml(&stack, "one"));
    let f = utf8(&file).to_string();

    // `docker stack deploy -c FILE NAME`: the name is positional.
    // With -o json, one document at the end: the reply and the deployment as it ended.
    let (so, _) = w
        .cli_code_async(&["stack", "deploy", "-c", &f, &stack, "-o", "json"], 0)
        .await;
    let v = one_document(&so, "stack deploy -o json");
    assert_eq!(v["deployment"]["state"], "succeeded", "{v}");
    assert_eq!(v["diff"]["services"][0]["service"], "web", "{v}");
    wait_mode(&w, &stack, 1, "one").await;

    // Lists: ids with -q, kind/name with -o name, one document with -o json|yaml.
    let (so, _) = w.cli_code(&["stack", "ls", "-q"], 0);
    assert_eq!(lines(&so), vec![stack.clone()], "stack ls -q");
    let (so, _) = w.cli_code(&["stack", "services", &stack, "-q"], 0);
    assert_eq!(
        lines(&so),
        vec![format!("{stack}/web")],
        "stack services -q"
    );
    let (so, _) = w.cli_code(&["stack", "services", &stack, "-o", "name"], 0);
    assert_eq!(lines(&so), vec![format!("service/{stack}/web")], "-o name");
    let (so, _) = w.cli_code(&["stack", "services", &stack, "-o", "json"], 0);
    let v = one_document(&so, "stack services -o json");
    assert_eq!(v[0]["name"], "web", "{v}");
    let (so, _) = w.cli_code(&["stack", "services", &stack, "-o", "yaml"], 0);
    assert!(so.contains("name: web"), "stack services -o yaml:\n{so}");
    let (so, _) = w.cli_code(&["stack", "services", &stack], 0);
    assert!(
        lines(&so)[0].starts_with("NAME") && so.contains(&format!("{stack}/web")),
        "the table:\n{so}"
    );
    let (_, se) = w.cli_code(&["stack", "services", "no-such-stack"], 2);
    assert!(se.contains("no-such-stack"), "names the stack:\n{se}");

    // `--filter` on the ps commands; a bad key is bad input naming the keys.
    let (so, _) = w.cli_code(
        &[
            "service",
            "ps",
            &format!("{stack}/web"),
            "--filter",
            "state=running",
            "-q",
        ],
        0,
    );
    let running = lines(&so);
    assert_eq!(running.len(), 1, "one running instance: {so}");
    assert!(running[0].starts_with(stack.as_str()), "{so}");
    let (so, _) = w.cli_code(&["service", "ps", "web", "-f", "state=exited", "-q"], 0);
    assert_eq!(so, "", "no exited instance");
    let (_, se) = w.cli_code(&["service", "ps", "web", "--filter", "colour=red"], 2);
    assert!(
        se.contains("unknown filter key \"colour\"") && se.contains("state, health, node, service"),
        "{se}"
    );
    let (so, _) = w.cli_code(&["stack", "ps", &stack, "-o", "wide"], 0);
    assert!(
        lines(&so)[0].contains("CONTAINER") && lines(&so)[0].contains("GENERATION"),
        "-o wide has more columns:\n{so}"
    );
    let (so, _) = w.cli_code(&["node", "ls", "-q"], 0);
    let node = lines(&so).first().cloned().expect("a node");
    let (so, _) = w.cli_code(&["node", "ps", &node, "-q"], 0);
    assert_eq!(
        lines(&so),
        running,
        "node ps lists the instance on the node"
    );
    w.cli_code(&["node", "ps", "no-such-node"], 2);

    // `stack diff --exit-code`: 0 when nothing would change, 1 when something would.
    let (so, _) = w.cli_code(&["stack", "diff", "-c", &f, &stack, "--exit-code"], 0);
    assert_eq!(
        lines(&so),
        vec![format!("stack {stack} is up to date: no changes")]
    );
    let changed = w.stack_file(&stack, &habits_yaml(&stack, "two"));
    let (so, _) = w.cli_code(
        &["stack", "diff", "-c", utf8(&changed), &stack, "--exit-code"],
        1,
    );
    assert!(lines(&so).iter().any(|l| l.starts_with("~ web")), "{so}");
    let (so, se) = w.cli_code(
        &[
            "stack",
            "diff",
            "-c",
            utf8(&changed),
            &stack,
            "--exit-code",
            "-q",
        ],
        1,
    );
    assert_eq!(
        (so.as_str(), se.as_str()),
        ("", ""),
        "-q says it by the code only"
    );
    w.cli_code(&["stack", "diff", "-c", utf8(&changed), &stack], 0);
    // The file is back as it was for what follows.
    let file = w.stack_file(&stack, &habits_yaml(&stack, "one"));

    // `service update --image … --env-add`, one JSON document at the end with the deployment.
    let image = testapp_image().await.expect("the test image"); // another tag of it
    assert_ne!(image, "wharf-testapp:latest");
    let (so, _) = w
        .cli_code_async(
            &[
                "service",
                "update",
                "--image",
                &image,
                "--env-add",
                "MODE=two",
                "web",
                "-o",
                "json",
            ],
            0,
        )
        .await;
    let v = one_document(&so, "service update -o json");
    assert_eq!(v["deployment"]["state"], "succeeded", "{v}");
    wait_mode(&w, &stack, 1, "two").await;
    let (so, _) = w.cli_code(&["service", "inspect", "web", "-o", "json"], 0);
    assert_eq!(
        one_document(&so, "service inspect")["spec"]["image"],
        image.as_str()
    );
    let (_, se) = w.cli_code(&["service", "update", "web"], 2);
    assert!(se.contains("nothing to update"), "{se}");
    let (so, _) = w.cli_code(&["service", "update", "--env-add", "MODE=two", "web"], 0);
    assert!(so.contains("is unchanged"), "{so}");

    // A scale in between, then rollbacks: history lists revisions; a second rollback goes
    // further back instead of undoing the first; the replica count stays.
    w.cli_code_async(&["service", "scale", "web=2"], 0).await;
    let (so, _) = w.cli_code(&["service", "history", "web", "-q"], 0);
    assert_eq!(lines(&so), vec!["1", "2"], "deploy, update");
    let (so, _) = w.cli_code_async(&["service", "rollback", "web"], 0).await;
    assert!(so.contains(&format!("rolled back {stack}/web")), "{so}");
    wait_mode(&w, &stack, 2, "one").await;
    let (so, _) = w.cli_code(&["service", "history", "web"], 0);
    let table = lines(&so);
    assert!(table[0].starts_with("REVISION"), "{so}");
    assert!(
        table
            .last()
            .is_some_and(|l| l.starts_with("3 *") && l.contains("rollback (of 1)")),
        "{so}"
    );
    let (_, se) = w.cli_code(&["service", "rollback", "web"], 2);
    assert!(
        se.contains("no previous spec"),
        "nothing before revision 1:\n{se}"
    );
    w.cli_code_async(&["service", "rollback", "web", "--to", "2"], 0)
        .await;
    wait_mode(&w, &stack, 2, "two").await;
    let (_, se) = w.cli_code(&["service", "rollback", "web", "--to", "99"], 2);
    assert!(
        se.contains("no revision 99") && se.contains("hint:"),
        "{se}"
    );

    // Deployments: a detached deploy, re-attached with `deployment follow`.
    let id = w.deploy_detached_text(&file);
    let (so, _) = w.cli_code_async(&["deployment", "follow", &id], 0).await;
    assert!(
        so.contains(&format!("deployment {id} of stack {stack}")) && so.contains("succeeded"),
        "{so}"
    );
    let (so, _) = w.cli_code(&["deployment", "ls", "--stack", &stack, "-q"], 0);
    assert_eq!(lines(&so).first(), Some(&id), "newest first:\n{so}");
    let (so, _) = w.cli_code(&["deployment", "status", &id], 0);
    assert!(so.contains("state:      succeeded"), "{so}");
    let (_, se) = w.cli_code(&["deployment", "status", "d-nope"], 2);
    assert!(se.contains("deployment d-nope"), "{se}");

    // Completion of names from the API, as the bash script asks for them.
    let out = cli_command(&w.config_dir(), &["--", "wharf", "stack", "ps", ""])
        .env("COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", "3")
        .output()
        .expect("complete");
    let (so, _) = expect_code(&out, 0, "completion");
    assert!(
        lines(&so).contains(&stack),
        "the stack is a candidate:\n{so}"
    );
    let out = cli_command(&w.config_dir(), &["--", "wharf", "service", "logs", ""])
        .env("COMPLETE", "bash")
        .env("_CLAP_COMPLETE_INDEX", "3")
        .output()
        .expect("complete");
    let (so, _) = expect_code(&out, 0, "completion");
    assert!(lines(&so).contains(&format!("{stack}/web")), "{so}");

    // Contexts: add one from a token on stdin, use it, back, remove it.
    let out = cli_with_stdin(
        &w.config_dir(),
        &[
            "context",
            "add",
            "other",
            "--url",
            "http://127.0.0.1:9",
            "--token-stdin",
        ],
        "t0ken\n",
    );
    expect_code(&out, 0, "context add");
    let (so, _) = w.cli_code(&["context", "ls", "-q"], 0);
    assert_eq!(lines(&so), vec!["default", "other"]);
    w.cli_code(&["context", "use", "other"], 0);
    let (so, _) = w.cli_code(&["context", "ls"], 0);
    assert!(so.contains("other *"), "the current one is marked:\n{so}");
    w.cli_code(&["stack", "ls"], 1); // nothing answers there
    let (_, se) = w.cli_code(&["context", "rm", "other"], 2);
    assert!(se.contains("is the current one"), "{se}");
    w.cli_code(&["context", "use", "default"], 0);
    w.cli_code(&["context", "rm", "other"], 0);
    w.cli_code(&["context", "use", "nope"], 2);

    // `stack rm A B`: both go.
    let second = unique_stack("habits2");
    w.deploy_ready(
        &second,
        &habits_yaml(&second, "one"),
        "web",
        1,
        Duration::from_secs(60),
    )
    .await;
    w.cli_code_async(&["stack", "rm", &stack, &second], 0).await;
    let (so, _) = w.cli_code(&["stack", "ls", "-q"], 0);
    assert_eq!(so, "", "both stacks are gone");
}
