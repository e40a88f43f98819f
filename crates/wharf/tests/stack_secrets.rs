//! Issue 10, check 3, through the real binary, the real engine and the real ingress: a stack
//! with `secrets:` from a file and from the environment and a `configs:` entry deploys; its
//! containers read `/run/secrets/db_password` with the mode and owner the file asks for; a new
//! version of the secret rolls the service with no failed request under load; and the values
//! are then searched for, and not found, in the store file, the debug log of master and agent,
//! every GET of the API, every CLI command's `-o json`, `docker inspect`, the data directory
//! and the engine's files of the containers. A secret in use cannot be removed.

mod common;
#[path = "common/load.rs"]
mod load;

use std::path::Path;
use std::time::Duration;

use common::*;
use load::Load;
use serde_json::Value;
use wharf_testkit::wait_for;

const FROM_FILE: &str = "db-Pa55-from-file-7c1e";
const FROM_ENV: &str = "api-K3y-from-env-93ab";
const NEW_VERSION: &str = "db-Pa55-version-2-e4c0";
const CONFIG: &str = "server_name shop.test; # 5d2f";

/// The service `web` (2 instances, start-first) behind the ingress on 127.0.0.1:`listen`, with
/// two secrets and a config.
fn stack_yaml(stack: &str, listen: u16) -> String {
    let web = Service::testapp("web")
        .replicas(2)
        .deploy("      update_config:\n        order: start-first\n        monitor: 0s\n")
        .healthcheck()
        .extra(&format!(
            "    secrets:
      - source: db_password
        uid: \"1000\"
        gid: \"1001\"
        mode: 0400
      - api_key
    configs:
      - source: site
        target: /etc/site.conf
    x-wharf:
      drain_grace: 1s
      ingress:
        - port: 8080
          listen: {listen}
          listen_address: 127.0.0.1
"
        ));
    let mut y = Stack::new(stack).service(web).yaml();
    y.push_str(&format!(
        "secrets:
  db_password:
    file: ./db_password.txt
  api_key:
    environment: WHARF_TEST_API_KEY
configs:
  site:
    content: \"{CONFIG}\"
"
    ));
    y
}

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// What the API answers to every GET of its OpenAPI document (path parameters filled with this
/// stack's names), each read for at most 2 s (some follow).
async fn every_get(w: &Wharf, stack: &str, deployment: &str) -> String {
    let ctx = std::fs::read_to_string(w.config_dir().join("context.json")).expect("context");
    let ctx: Value = serde_json::from_str(&ctx).expect("context JSON");
    let token = ctx["token"].as_str().expect("a token").to_string();
    let http = reqwest::Client::new();
    let doc: Value = http
        .get(format!("{}/v1/openapi.json", w.url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("the OpenAPI document")
        .json()
        .await
        .expect("JSON");
    let node = w
        .client
        .list_nodes()
        .await
        .expect("nodes")
        .first()
        .map(|n| n.id.clone())
        .unwrap_or_default();
    let mut seen = String::new();
    let mut gets = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if item.get("get").is_none() {
            continue;
        }
        let concrete = path
            .replace("{stack}", stack)
            .replace("{service}", "web")
            .replace("{name}", &format!("{stack}_db_password"))
            .replace("{id}", deployment)
            .replace("{node}", &node);
        let Ok(mut resp) = http
            .get(format!("{}{concrete}", w.url()))
            .bearer_auth(&token)
            .send()
            .await
        else {
            continue;
        };
        gets += 1;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, resp.chunk()).await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert!(gets >= 20, "only {gets} GET operations answered");
    seen
}

/// Every file under `dir` (not following links), read whole.
fn files_under(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            files_under(&e.path(), out);
        } else if t.is_file()
            && let Ok(bytes) = std::fs::read(e.path())
        {
            out.push((e.path().display().to_string(), bytes));
        }
    }
}

fn assert_absent(what: &str, bytes: &[u8]) {
    for v in [FROM_FILE, FROM_ENV, NEW_VERSION] {
        let v = v.as_bytes();
        assert!(
            !bytes.windows(v.len()).any(|x| x == v),
            "a secret value ({}) in {what}",
            String::from_utf8_lossy(v)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stack_mounts_its_secrets_a_new_version_rolls_it_and_no_value_leaks() {
    testapp_image().await.expect("test image");
    // Debug level everywhere: what master and agent log is searched below.
    let mut w = Wharf::start_with_env(vec![("WHARF_LOG".into(), "debug".into())]).await;
    let stack = unique_stack("secrets");
    let listen = free_port();
    let file = w.stack_file(&stack, &stack_yaml(&stack, listen));
    std::fs::write(file.with_file_name("db_password.txt"), FROM_FILE).expect("the secret file");
    // The CLI with the variable the stack's `api_key` comes from.
    let with_env = |args: &[&str], what: &str| {
        let out = cli_command(&w.config_dir(), args)
            .env("WHARF_TEST_API_KEY", FROM_ENV)
            .output()
            .expect("run wharf");
        expect_code(&out, 0, what)
    };
    let (so, se) = with_env(&["stack", "deploy", "-c", utf8(&file)], "stack deploy");
    let mut seen = format!("{so}{se}");
    w.wait_ready(&stack, "web", 2, Duration::from_secs(60))
        .await;
    let base = format!("http://127.0.0.1:{listen}");
    load::wait_all_answer(
        &format!("{base}/env/HOSTNAME"),
        2,
        "both instances through the ingress",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&w.log(), 40)));

    // Each instance reads its files, with the owner and mode asked for.
    for _ in 0..4 {
        assert_eq!(
            get(&format!("{base}/file/run/secrets/db_password")).await,
            (200, FROM_FILE.into())
        );
        assert_eq!(
            get(&format!("{base}/stat/run/secrets/db_password")).await,
            (200, "400 1000 1001".into())
        );
        assert_eq!(
            get(&format!("{base}/file/run/secrets/api_key")).await,
            (200, FROM_ENV.into())
        );
        assert_eq!(
            get(&format!("{base}/stat/run/secrets/api_key")).await,
            (200, "444 0 0".into())
        );
        assert_eq!(
            get(&format!("{base}/file/etc/site.conf")).await,
            (200, CONFIG.into())
        );
    }
    // Not in the environment either.
    assert_eq!(get(&format!("{base}/env/WHARF_TEST_API_KEY")).await.0, 404);

    // A new version rolls the consumers, under load through the ingress, failing nothing.
    let secret = format!("{stack}_db_password");
    let load = Load::start(&format!("{base}/"));
    let out = cli_with_stdin(
        &w.config_dir(),
        &["secret", "create", &secret, "-"],
        NEW_VERSION,
    );
    let (so, se) = expect_code(&out, 0, "secret create (a new version)");
    seen.push_str(&format!("{so}{se}"));
    assert!(
        so.contains("version 2") && so.contains(&format!("rolling {stack} (deployment ")),
        "{so}"
    );
    let deployment = so
        .split("(deployment ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .expect("the deployment id")
        .to_string();
    let d = w
        .wait_deployment_end(
            &deployment,
            "the roll to version 2",
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(d.state, wharf_types::DeploymentState::Succeeded, "{d:?}");
    let figures = load.finish().await;
    assert_eq!(
        figures.failed(),
        0,
        "requests failed while the secret rolled: {figures}"
    );
    wait_for(
        "every instance to read version 2",
        Duration::from_secs(20),
        || {
            let url = format!("{base}/file/run/secrets/db_password");
            async move {
                for _ in 0..6 {
                    if get(&url).await != (200, NEW_VERSION.to_string()) {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&w.log(), 40)));

    // The diff of the file (which still holds the first value) names versions, not values.
    let (so, _) = with_env(
        &["stack", "diff", "-c", utf8(&file), "-o", "json"],
        "stack diff",
    );
    assert!(so.contains("secret db_password: version 2 -> 3"), "{so}");
    seen.push_str(&so);

    // In use: not removed, and the answer says by what.
    let (_, se) = w.cli_code(&["secret", "rm", &secret], 2);
    assert!(se.contains(&format!("in use by {stack}/web")), "{se}");

    // Searched everywhere.
    for args in [
        vec!["stack", "ls", "-o", "json"],
        vec!["stack", "ps", &stack, "-o", "json"],
        vec!["service", "ls", "-o", "json"],
        vec!["service", "inspect", &format!("{stack}/web"), "-o", "json"],
        vec!["secret", "ls", "-o", "json"],
        vec!["secret", "inspect", &secret, "-o", "json"],
        vec!["config", "ls", "-o", "json"],
        vec!["config", "inspect", &format!("{stack}_site"), "-o", "json"],
        vec!["audit", "ls", "-o", "json"],
        vec!["node", "ls", "-o", "json"],
    ] {
        let out = cli_command(&w.config_dir(), &args)
            .output()
            .expect("run wharf");
        let (so, se) = text(&out);
        seen.push_str(&so);
        seen.push_str(&se);
    }
    assert!(seen.contains(&secret), "the outputs name the secret");
    assert_absent("the CLI's outputs", seen.as_bytes());
    assert_absent(
        "the API's GET answers",
        every_get(&w, &stack, &deployment).await.as_bytes(),
    );
    let log = w.log();
    assert!(log.contains("DEBUG"), "the log is at debug level");
    assert_absent("the debug log of master and agent", log.as_bytes());
    let mut files = Vec::new();
    files_under(&w.data_dir(), &mut files);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("wharf.db")),
        "the store file is in the data directory"
    );
    for (path, bytes) in &files {
        assert_absent(path, bytes);
    }
    // The engine: each container's inspect, its files under the engine's data root and its
    // writable layer.
    let docker = bollard::Docker::connect_with_local_defaults().expect("docker");
    let root = docker
        .info()
        .await
        .expect("docker info")
        .docker_root_dir
        .expect("root dir");
    let mut checked = 0;
    for c in list_stack(&stack).await {
        let id = c.id.clone().expect("id");
        let inspect = docker.inspect_container(&id, None).await.expect("inspect");
        let json = serde_json::to_string(&inspect).expect("json");
        assert_absent("docker inspect", json.as_bytes());
        let env = inspect.config.and_then(|c| c.env).unwrap_or_default();
        assert!(
            !env.iter().any(|e| e.contains("WHARF_TEST_API_KEY")),
            "{env:?}"
        );
        let mounts = inspect.mounts.unwrap_or_default();
        let secret_mounts: Vec<_> = mounts
            .iter()
            .filter(|m| {
                m.destination
                    .as_deref()
                    .is_some_and(|d| d.starts_with("/run/secrets/"))
            })
            .collect();
        assert_eq!(secret_mounts.len(), 2, "{mounts:?}");
        for m in secret_mounts {
            assert_eq!(m.rw, Some(false), "a secret is mounted read-only: {m:?}");
            let src = m.source.clone().unwrap_or_default();
            assert!(
                src.starts_with("/dev/shm/"),
                "a secret comes from the agent's tmpfs: {src}"
            );
        }
        let mut engine_files = Vec::new();
        files_under(
            &Path::new(&root).join("containers").join(&id),
            &mut engine_files,
        );
        if let Some(upper) = inspect
            .graph_driver
            .and_then(|g| g.data.get("UpperDir").cloned())
        {
            files_under(Path::new(&upper), &mut engine_files);
        }
        for (path, bytes) in &engine_files {
            assert_absent(path, bytes);
        }
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} containers inspected");

    // Removing the stack removes the secrets and config it made for itself.
    w.cli_code(&["stack", "rm", &stack], 0);
    wait_for(
        "the stack's own secrets and config removed with it",
        Duration::from_secs(60),
        || {
            let dir = w.config_dir();
            async move {
                let list = |what: &str| {
                    let out = cli_command(&dir, &[what, "ls", "-o", "json"])
                        .output()
                        .ok()?;
                    Some(String::from_utf8_lossy(&out.stdout).into_owned())
                };
                let (secrets, configs) = (list("secret")?, list("config")?);
                (secrets.trim() == "[]" && configs.trim() == "[]").then_some(())
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", tail(&w.log(), 40)));
}
