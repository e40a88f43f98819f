//! Issue 14, acceptance check 6: the dashboard in headless Chromium (Debian `chromium` and
//! `chromium-driver`, driven over WebDriver by fantoccini), on a phone-sized window: log in, open
//! a stack, start a deploy from the CLI and see its progress change on the page without a
//! reload, drain a node with the button; a viewer sees no drain button and the API refuses the
//! call anyway (audited). Screenshots go to `target/test-artifacts/dashboard/`.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use wharf_testkit::{Check, not_yet, wait_for};

use common::stack::{Service, Stack};
use common::*;

/// chromedriver, killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn artifacts() -> std::path::PathBuf {
    let dir = std::env::var_os("WHARF_TEST_ARTIFACTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts")
        })
        .join("dashboard");
    std::fs::create_dir_all(&dir).expect("the artifacts directory");
    dir
}

async fn screenshot(b: &Browser, name: &str) {
    let png = b.screenshot().await.expect("a screenshot");
    let path = artifacts().join(name);
    std::fs::write(&path, png).expect("write the screenshot");
    eprintln!("screenshot: {}", path.display());
}

async fn browser() -> (Driver, Browser) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start chromedriver ({e}): apt-get install chromium chromium-driver")
        });
    let driver = Driver(child);
    let caps: serde_json::Map<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            // A phone-sized window: the dashboard must be usable there.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=412,915"]
        }
    }))
    .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let b = wait_for(
        "chromedriver to start a session",
        Duration::from_secs(30),
        || async {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(b) => Check::Done(b),
                Err(e) => not_yet(e.to_string()),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    (driver, b)
}

/// Waits until `css` matches an element; its text.
async fn wait_text(b: &Browser, css: &str, within: Duration) -> String {
    wait_for(&format!("{css} on the page"), within, || async {
        match b.find(Locator::Css(css)).await {
            Ok(e) => Check::Done(e.text().await.unwrap_or_default()),
            Err(e) => not_yet(e.to_string()),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn log_in(b: &Browser, base: &str, token: &str) {
    b.goto(&format!("{base}/ui")).await.expect("open /ui");
    let url = b.current_url().await.unwrap();
    assert!(
        url.path().ends_with("/ui/login"),
        "without a session /ui leads to the login form, not {url}"
    );
    b.find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    b.find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(b, "#stacks", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_a_deploy_live_and_drains_a_node_for_those_allowed() {
    let (mut w, stack) = Wharf::start_for("ui").await;
    let v1 = Stack::new(&stack)
        .service(Service::testapp("web").replicas(2).healthcheck())
        .yaml();
    w.deploy_ready(&stack, &v1, "web", 2, Duration::from_secs(60))
        .await;
    let (admin, _) = w.cli_code(&["token", "create", "ui-admin", "--role", "admin"], 0);
    let (viewer, _) = w.cli_code(&["token", "create", "ui-viewer", "--role", "viewer"], 0);
    let (admin, viewer) = (admin.trim().to_string(), viewer.trim().to_string());
    let base = w.url();
    let (_driver, b) = browser().await;

    // Log in with a token; the overview lists the stack.
    log_in(&b, &base, &admin).await;
    let stacks = wait_text(&b, "#stacks", Duration::from_secs(5)).await;
    assert!(stacks.contains(&stack), "the stacks table: {stacks}");
    screenshot(&b, "1-overview.png").await;

    // Open the stack; start a deploy from the CLI; watch it on the page, which is not reloaded.
    b.find(Locator::Css(&format!("a[href='/ui/stacks/{stack}']")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let services = wait_text(&b, "#services", Duration::from_secs(10)).await;
    assert!(services.contains("web"), "the services table: {services}");
    b.execute("window.wharfMarker = 42; return null;", vec![])
        .await
        .unwrap();
    let v2 = Stack::new(&stack)
        .service(
            Service::testapp("web")
                .replicas(2)
                .healthcheck()
                .env("VERSION", "2"),
        )
        .yaml();
    let file = w.stack_file(&stack, &v2);
    let id = w.deploy_detached(&file);
    let row = format!("tr[data-deployment='{id}'] td.state");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut states: Vec<String> = vec![];
    loop {
        if let Ok(e) = b.find(Locator::Css(&row)).await {
            let s = e.text().await.unwrap_or_default();
            let s = s.lines().next().unwrap_or_default().to_string();
            if states.last() != Some(&s) {
                states.push(s.clone());
                if s == "in_progress" {
                    screenshot(&b, "2-deploy-in-progress.png").await;
                }
            }
            if s != "in_progress" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "deployment {id} did not end on the page within 60 s; states seen: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        states,
        ["in_progress", "succeeded"],
        "the page showed the deploy going on, then done"
    );
    let marker = b
        .execute("return window.wharfMarker;", vec![])
        .await
        .unwrap();
    assert_eq!(marker, serde_json::json!(42), "the page was not reloaded");
    screenshot(&b, "3-deploy-succeeded.png").await;

    // Drain the node with its button; the API says it drains.
    b.goto(&format!("{base}/ui")).await.unwrap();
    wait_text(&b, "#nodes", Duration::from_secs(10)).await;
    b.find(Locator::Css("#nodes button.drain"))
        .await
        .expect("a drain button for the administrator")
        .click()
        .await
        .unwrap();
    let client = w.client().clone();
    let node = wait_for("the node to drain", Duration::from_secs(10), || async {
        match client.list_nodes().await {
            Ok(n)
                if n.first()
                    .is_some_and(|n| n.state == wharf_types::NodeState::Draining) =>
            {
                Check::Done(n[0].id.clone())
            }
            other => not_yet(format!("{other:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    wait_text(&b, "#nodes button.activate", Duration::from_secs(10)).await;
    screenshot(&b, "4-node-drained.png").await;
    client
        .activate_node(&node)
        .await
        .expect("activate the node again");

    // A viewer sees no drain button, and the API refuses the call anyway (audited).
    b.find(Locator::Css("header form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    log_in(&b, &base, &viewer).await;
    wait_text(&b, "#nodes", Duration::from_secs(10)).await;
    let buttons = b.find_all(Locator::Css("#nodes button")).await.unwrap();
    assert!(
        buttons.is_empty(),
        "a viewer sees no drain or activate button"
    );
    screenshot(&b, "5-viewer.png").await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{base}/v1/nodes/{node}/drain"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a viewer's drain is refused");
    // The session cookie alone does not make a change: another site's page could send it.
    let r = http
        .post(format!("{base}/v1/nodes/{node}/drain"))
        .header("cookie", format!("wharf_session={admin}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        403,
        "a change by cookie without x-wharf-ui is refused"
    );
    let audit = client.audit().await.expect("the audit trail");
    assert!(
        audit.iter().any(|r| r.actor == "ui-viewer"
            && r.outcome.starts_with("denied")
            && r.target.contains(&node)),
        "the viewer's refused drain is in the audit trail"
    );
    let _ = b.close().await;
}
