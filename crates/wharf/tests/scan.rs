//! Issue 15, acceptance check 6: image scanning through a real `wharf up`. The test ships a
//! small OSV database (`tests/fixtures/osv`) and builds an image whose dpkg database installs
//! packages three of its advisories affect: `wharf image scan` reports exactly those (ids,
//! packages, installed and fixed versions, severities), read from the image's layers by the
//! node's agent. A stack with `x-wharf: {scan: {block: critical}}` on that image is refused at
//! deploy with the findings (and the refusal audited); the same stack on a clean image deploys.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use wharf_types::{AdvisoryDbInfo, ImageScan, Severity};

use common::stack::{Service, Stack};
use common::*;

const OS_RELEASE: &str =
    "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n";

/// A dpkg status database: libssl3 built from openssl, zlib1g from zlib, bash and curl.
fn status(openssl: &str, zlib: &str, bash: &str) -> String {
    format!(
        "Package: libssl3\nStatus: install ok installed\nSource: openssl\nVersion: {openssl}\n\n\
         Package: zlib1g\nStatus: install ok installed\nSource: zlib\nVersion: {zlib}\n\n\
         Package: bash\nStatus: install ok installed\nVersion: {bash}\n\n\
         Package: curl\nStatus: install ok installed\nVersion: 7.88.1-10+deb12u5\n\n\
         Package: removed\nStatus: deinstall ok config-files\nVersion: 1.0\n"
    )
}

/// The test workload with Debian's `os-release` and a dpkg database on top (two more layers),
/// tagged `tag`.
fn build_image(base: &str, tag: &str, status: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("os-release"), OS_RELEASE).unwrap();
    std::fs::write(dir.path().join("status"), status).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY os-release /etc/os-release\nCOPY status /var/lib/dpkg/status\n"),
    )
    .unwrap();
    let out = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(dir.path())
        .output()
        .expect("run docker build");
    assert!(
        out.status.success(),
        "docker build {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn remove_image(tag: &str) {
    let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
}

#[tokio::test(flavor = "multi_thread")]
async fn images_are_scanned_on_a_node_and_a_blocking_stack_is_refused_with_its_findings() {
    let (mut w, stack) = Wharf::start_for("scan").await;
    let base = wharf_testkit::testapp_image()
        .await
        .expect("the testapp image");
    let vulnerable = format!("wharf-scan-fixture:{}", std::process::id());
    let clean = format!("wharf-scan-clean:{}", std::process::id());
    build_image(
        &base,
        &vulnerable,
        &status("3.0.11-1~deb12u1", "1:1.2.13.dfsg-1", "5.2.15-2"),
    );
    build_image(
        &base,
        &clean,
        &status("3.0.11-1~deb12u2", "1:1.2.13.dfsg-2", "5.2.15-3"),
    );

    // Before any import: the database says it is empty, and a scan finds nothing.
    let (text, _) = w.cli_code(&["scan", "db", "info"], 0);
    assert!(text.contains("empty"), "{text}");
    let osv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osv");
    let (out, err) = w.cli_code(&["scan", "db", "import", utf8(&osv), "-o", "json"], 0);
    let info: AdvisoryDbInfo =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(
        (info.advisories, info.last_added, info.last_skipped),
        (5, 5, 1),
        "five Debian advisories, the npm one left out: {info:?}"
    );

    let (out, _) = w.cli_code(&["image", "scan", &vulnerable, "-o", "json"], 0);
    let scan: ImageScan = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(scan.os, "Debian GNU/Linux 12 (bookworm)", "{scan:?}");
    assert_eq!(
        scan.packages, 4,
        "the removed package is not installed: {scan:?}"
    );
    assert!(scan.id.starts_with("sha256:"), "{scan:?}");
    let got: Vec<(&str, &str, &str, Option<&str>, Severity)> = scan
        .findings
        .iter()
        .map(|f| {
            (
                f.id.as_str(),
                f.package.as_str(),
                f.installed.as_str(),
                f.fixed.as_deref(),
                f.severity,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "DSA-9001-1",
                "libssl3",
                "3.0.11-1~deb12u1",
                Some("3.0.11-1~deb12u2"),
                Severity::Critical
            ),
            (
                "DLA-9002-1",
                "zlib1g",
                "1:1.2.13.dfsg-1",
                Some("1:1.2.13.dfsg-2"),
                Severity::High
            ),
            ("DSA-9003-1", "bash", "5.2.15-2", None, Severity::Low),
        ],
        "exactly the fixture's three advisories, worst first"
    );
    // The table for people, and --fail-on for CI.
    let (table, _) = w.cli_code(&["image", "scan", &vulnerable], 0);
    assert!(
        table.contains("DSA-9001-1") && table.contains("3 findings: 1 critical, 1 high, 1 low"),
        "{table}"
    );
    w.cli_code(&["image", "scan", &vulnerable, "--fail-on", "critical"], 1);
    let (out, _) = w.cli_code(&["image", "scan", &clean, "-o", "json"], 0);
    let clean_scan: ImageScan = serde_json::from_str(&out).unwrap();
    assert!(clean_scan.findings.is_empty(), "{clean_scan:?}");
    w.cli_code(&["image", "scan", &clean, "--fail-on", "low"], 0);
    // Each scan had a node export an image: on the trail.
    let audit = w.client().audit().await.expect("the audit trail");
    let scans: Vec<_> = audit.iter().filter(|r| r.action == "image.scan").collect();
    assert!(
        scans.iter().any(|r| r.target == vulnerable
            && r.actor == "admin"
            && r.summary
                .as_deref()
                .is_some_and(|s| s.starts_with("3 findings"))),
        "an image.scan record of {vulnerable} in {scans:?}"
    );
    // An image no node has: a clear error, not an empty report.
    let (_, err) = w.cli_code(&["image", "scan", "wharf-scan-nowhere:0"], 2);
    assert!(
        err.contains("wharf-scan-nowhere:0") && err.contains("hint"),
        "{err}"
    );

    // A stack that blocks on critical findings: refused with them, and audited.
    let blocking = |image: &str| {
        Stack::new(&stack)
            .service(
                Service::testapp("web")
                    .image(image)
                    .replicas(1)
                    .extra("    x-wharf:\n      scan: {block: critical}\n"),
            )
            .yaml()
    };
    let file = w.stack_file(&stack, &blocking(&vulnerable));
    let (_, err) = w.cli_code(&["stack", "deploy", "-c", utf8(&file)], 2);
    assert!(
        err.contains("DSA-9001-1")
            && err.contains("libssl3")
            && err.contains("fixed in 3.0.11-1~deb12u2"),
        "the refusal lists the critical finding: {err}"
    );
    assert!(
        !err.contains("DSA-9003-1"),
        "a low finding does not block: {err}"
    );
    assert!(err.contains("hint"), "{err}");
    let audit = w.client().audit().await.expect("the audit trail");
    assert!(
        audit.iter().any(|r| r.action == "stack.deploy"
            && r.outcome == "denied"
            && r.target == stack
            && r.summary
                .as_deref()
                .is_some_and(|s| s.contains("DSA-9001-1"))),
        "a denied stack.deploy naming the finding in {audit:?}"
    );
    assert!(
        w.client().get_stack(&stack).await.is_err(),
        "nothing of the refused stack was written"
    );

    // The same stack on the clean image deploys.
    w.deploy_ready(&stack, &blocking(&clean), "web", 1, Duration::from_secs(60))
        .await;
    remove_image(&vulnerable);
    remove_image(&clean);
}

/// Images pushed to the cluster's registry are scanned from its blobs (no node involved):
/// `wharf image ls` counts their findings, `wharf image scan` reads them, the event log says
/// `image.pushed` and `scan.found`; and a cluster-wide rule of the policy file (`scan: {block:
/// high}`) refuses a deploy of the image although the stack says nothing of scans.
#[tokio::test(flavor = "multi_thread")]
async fn pushed_images_are_scanned_and_a_cluster_rule_refuses_their_deploy() {
    testapp_image().await.expect("the testapp image");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "scan:\n  block: high\n").unwrap();
    let mut w = Wharf::start_full(vec![], &["--policy", utf8(&policy)]).await;
    let stack = unique_stack("pushscan");
    let base = testapp_image().await.unwrap();
    let osv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/osv");
    w.cli_code(&["scan", "db", "import", utf8(&osv)], 0);

    let host = format!("127.0.0.1:{}", w.port);
    let tag = format!("{host}/{stack}/web:1");
    let _images = common::docker::Images(vec![tag.clone()]);
    build_image(
        &base,
        &tag,
        &status("3.0.11-1~deb12u1", "1:1.2.13.dfsg-1", "5.2.15-2"),
    );
    let docker = tempfile::tempdir().unwrap();
    let login = common::docker::run(
        "docker",
        &["login", &host, "-u", "x", "--password-stdin"],
        &[("DOCKER_CONFIG", docker.path())],
        Some(w.client.token()),
    );
    assert!(login.status.success());
    let digest = common::docker::push(&tag, &[("DOCKER_CONFIG", docker.path())]);

    // Scanned after the push: the counts of the fixture's three findings.
    let rows = wharf_testkit::wait_for(
        "the pushed image's scan",
        Duration::from_secs(20),
        || async {
            let (out, _) = w.cli_code(&["image", "ls", "-o", "json"], 0);
            let rows: Vec<wharf_types::ImageInfo> = serde_json::from_str(&out).ok()?;
            rows.iter()
                .any(|r| r.scanned && r.repository == format!("{stack}/web"))
                .then_some(rows)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", w.logs()));
    let row = rows
        .iter()
        .find(|r| r.repository == format!("{stack}/web"))
        .unwrap();
    assert_eq!(
        (
            row.tag.as_str(),
            row.digest.as_str(),
            row.critical,
            row.high,
            row.medium,
            row.low,
            row.packages
        ),
        ("1", digest.as_str(), 1, 1, 0, 1, 4),
        "{row:?}"
    );
    let (table, _) = w.cli_code(&["image", "ls"], 0);
    assert!(
        table.contains(&format!("{stack}/web:1")) && table.contains("CRITICAL"),
        "{table}"
    );
    let (out, _) = w.cli_code(&["image", "scan", &tag, "-o", "json"], 0);
    let scan: ImageScan = serde_json::from_str(&out).unwrap();
    assert_eq!(
        scan.node, "registry",
        "read from the registry's blobs: {scan:?}"
    );
    assert_eq!(scan.findings.len(), 3, "{scan:?}");

    // The event log tells of the push and of the findings.
    let events = reqwest::Client::new()
        .get(format!("{}/v1/events?follow=false&stack={stack}", w.url()))
        .bearer_auth(w.client.token())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for kind in ["image.pushed", "scan.found"] {
        assert!(
            events.contains(&format!("\"kind\":\"{kind}\"")),
            "no {kind} event of {stack}: {events}"
        );
    }

    // The cluster's rule (block: high) refuses a stack that says nothing of scans.
    let yaml = Stack::new(&stack)
        .service(Service::testapp("web").image(&tag).replicas(1))
        .yaml();
    let file = w.stack_file(&stack, &yaml);
    let (_, err) = w.cli_code(&["stack", "deploy", "-c", utf8(&file)], 2);
    assert!(
        err.contains("DSA-9001-1") && err.contains("DLA-9002-1") && !err.contains("DSA-9003-1"),
        "critical and high block, low does not: {err}"
    );
}
