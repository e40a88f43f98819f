//! Acceptance check 8: bad stack files are refused by the CLI with exit code 2, a located message
//! (`stack.yml:LINE:COLUMN`), a hint, and nothing deployed.

mod common;

use std::process::Output;

use common::*;

/// A variable that must be unset in the CLI's environment for the `${VAR:?}` case.
const UNSET_VAR: &str = "WHARF_E2E_SURELY_UNSET_VAR";

/// One bad stack file and what the CLI must say about it. `{stack}` in `yaml` is the stack name.
struct Case {
    name: &'static str,
    yaml: &'static str,
    /// `stack.yml:LINE:COLUMN`
    location: &'static str,
    message: &'static str,
    hint: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "yaml syntax error",
        yaml: "name: {stack}\nservices:\n  web:\n    image: [\n",
        location: "stack.yml:4:12",
        message: "invalid YAML",
        hint: "YAML syntax",
    },
    Case {
        name: "wrong type",
        yaml: "name: {stack}\nservices:\n  web:\n    image: wharf-testapp:latest\n    deploy:\n      replicas: three\n",
        location: "stack.yml:6:17",
        message: "expected an integer",
        hint: "whole number",
    },
    Case {
        name: "unknown key",
        yaml: "name: {stack}\nservices:\n  web:\n    imgae: wharf-testapp:latest\n",
        location: "stack.yml:4:5",
        message: "unknown key \"imgae\"",
        hint: "did you mean \"image\"",
    },
    Case {
        name: "invalid port",
        yaml: "name: {stack}\nservices:\n  web:\n    image: wharf-testapp:latest\n    ports:\n      - \"99999:80\"\n",
        location: "stack.yml:6:9",
        message: "99999",
        hint: "1-65535",
    },
    Case {
        name: "missing image",
        yaml: "name: {stack}\nservices:\n  web:\n    environment:\n      A: b\n",
        location: "stack.yml:3:3",
        message: "neither image nor build",
        hint: "image",
    },
    Case {
        name: "unset required variable",
        yaml: "name: {stack}\nservices:\n  web:\n    image: \"wharf-testapp:${WHARF_E2E_SURELY_UNSET_VAR:?must be set}\"\n",
        location: "stack.yml:4:12",
        message: "WHARF_E2E_SURELY_UNSET_VAR is not set",
        hint: "WHARF_E2E_SURELY_UNSET_VAR",
    },
    Case {
        name: "dependency cycle",
        yaml: "name: {stack}\nservices:\n  a:\n    image: wharf-testapp:latest\n    depends_on: [b]\n  b:\n    image: wharf-testapp:latest\n    depends_on: [a]\n",
        location: "stack.yml:8:18",
        message: "dependency cycle",
        hint: "depends_on",
    },
    Case {
        name: "missing certificate file",
        yaml: "name: {stack}\nservices:\n  web:\n    image: wharf-testapp:latest\n    x-wharf:\n      ingress:\n        - {port: 8080, listen: 8443, tls: {certificate: missing.pem, key: missing.key}}\n",
        location: "stack.yml:7:57",
        message: "missing.pem: not found",
        hint: "relative to the stack file",
    },
    Case {
        name: "certificate file that is not PEM",
        yaml: "name: {stack}\nservices:\n  web:\n    image: wharf-testapp:latest\n    x-wharf:\n      ingress:\n        - {port: 8080, listen: 8443, tls: {certificate: stack.yml, key: stack.yml}}\n",
        location: "stack.yml:7:57",
        message: "stack.yml is not a PEM certificate",
        hint: "BEGIN CERTIFICATE",
    },
];

/// Like `w.cli`, but with `UNSET_VAR` removed from the environment.
fn cli(w: &Wharf, args: &[&str]) -> Output {
    cli_command(&w.config_dir(), args)
        .env_remove(UNSET_VAR)
        .output()
        .expect("run wharf")
}

/// Deploy `case.yaml` (with `{stack}` replaced) and check the refusal. Returns the failures found.
async fn check(w: &mut Wharf, case: &Case) -> Vec<String> {
    let stack = unique_stack("bad");
    let yaml = case.yaml.replace("{stack}", &stack);
    let file = w.stack_file(&stack, &yaml);
    let out = cli(
        w,
        &["stack", "deploy", "-c", file.to_str().expect("utf-8 path")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut fails = Vec::new();
    if out.status.code() != Some(2) {
        fails.push(format!("exit code {:?}, expected 2", out.status.code()));
    }
    let located = format!("{}: ", case.location);
    match stderr
        .lines()
        .find(|l| l.starts_with("error: ") && l.contains(&located))
    {
        None => fails.push(format!("no `error: …{located}` line")),
        Some(line) if !line.contains(case.message) => fails.push(format!(
            "the error line {line:?} does not contain {:?}",
            case.message
        )),
        Some(_) => {}
    }
    let hints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("hint: "))
        .collect();
    if !hints.iter().any(|h| h.contains(case.hint)) {
        fails.push(format!(
            "no `hint:` line containing {:?} (hints: {hints:?})",
            case.hint
        ));
    }
    match w.client.list_stacks().await {
        Ok(stacks) if stacks.is_empty() => {}
        Ok(stacks) => fails.push(format!(
            "stacks were deployed: {:?}",
            stacks.iter().map(|s| &s.name).collect::<Vec<_>>()
        )),
        Err(e) => fails.push(format!("cannot list stacks: {e}")),
    }
    let cs = containers(&stack).await;
    if !cs.is_empty() {
        fails.push(format!("containers were created: {cs:?}"));
    }
    if fails.is_empty() {
        return fails;
    }
    vec![format!(
        "case {:?}:\n  - {}\n--- {} ---\n{yaml}--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
        case.name,
        fails.join("\n  - "),
        file.display()
    )]
}

/// Acceptance check 8: every bad file is refused with exit 2, its location, a message and a hint,
/// and deploys nothing. One `wharf up` serves all the cases.
#[tokio::test(flavor = "multi_thread")]
async fn bad_stack_files_are_refused_with_located_errors_and_hints() {
    let mut w = Wharf::start().await;
    let mut failures = Vec::new();
    for case in CASES {
        failures.extend(check(&mut w, case).await);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}

/// `wharf stack validate` exits 2 on a bad file and 0 on a good one, without deploying anything.
#[tokio::test(flavor = "multi_thread")]
async fn validate_exits_2_on_a_bad_file_and_0_on_a_good_one() {
    let mut w = Wharf::start().await;
    let stack = unique_stack("validate");
    let bad = CASES
        .iter()
        .find(|c| c.name == "unknown key")
        .expect("the unknown key case");
    let file = w.stack_file(&stack, &bad.yaml.replace("{stack}", &stack));
    let out = cli(&w, &["stack", "validate", "-c", utf8(&file)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "validate of a bad file\n--- stderr ---\n{stderr}"
    );
    assert!(
        stderr.contains(bad.location) && stderr.contains(bad.hint),
        "validate output:\n{stderr}"
    );

    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 1, ""));
    let out = cli(&w, &["stack", "validate", "-c", utf8(&file)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "validate of a good file\n--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stacks = w.client.list_stacks().await.expect("list stacks");
    assert!(stacks.is_empty(), "validate deployed something: {stacks:?}");
    assert!(
        containers(&stack).await.is_empty(),
        "validate created containers"
    );
}
