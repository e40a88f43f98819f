//! The built-in registry (issue 15, acceptance check 1), with the real parts: `wharf up` serves
//! `/v2/` on its API port; the real `docker` CLI logs in with a Wharf token, pushes a
//! multi-layer image built here (`FROM scratch` and several `COPY`: nothing from the internet)
//! and pulls it back by tag and by digest; `skopeo` copies OCI and Docker-format images both
//! ways; raw HTTP shows an interrupted chunked upload leaves nothing visible and resumes, a wrong
//! digest is refused with nothing stored, scopes and roles are enforced with the spec's error
//! JSON (a user's password works as a token does; mounts lend only what the token may pull),
//! tags come in pages, anonymous pulls only when enabled, every push and delete is on the audit
//! trail, and `wharf registry gc` removes what no manifest refers to.

mod common;

use std::time::Duration;

use common::docker::{Images, build_image, push, rand_nonce, run, stdout};
use common::{Harness, Wharf};
use futures::StreamExt;
use reqwest::StatusCode;
use sha2::Digest as _;
use wharf_testkit::wait_for;

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A token made with `wharf token create NAME ARGS…`.
fn token(w: &Wharf, name: &str, args: &[&str]) -> String {
    let mut all = vec!["token", "create", name];
    all.extend_from_slice(args);
    w.cli_code(&all, 0).0.trim().to_string()
}

/// The first error's code of a registry error body (`{"errors": [{"code": ...}]}`).
async fn error_code(r: reqwest::Response) -> String {
    let status = r.status();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    body["errors"][0]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{status}: not the spec's error form: {body}"))
        .to_string()
}

/// The audit trail's actions and actors and outcomes, read with the admin token.
async fn audit(w: &Wharf) -> Vec<(String, String, String, String)> {
    let r = reqwest::Client::new()
        .get(format!("{}/v1/audit", w.url()))
        .bearer_auth(w.client.token())
        .send()
        .await
        .unwrap();
    let records: Vec<serde_json::Value> = r.json().await.unwrap();
    records
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("actor"), s("action"), s("target"), s("outcome"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_logs_in_pushes_a_multi_layer_image_and_pulls_it_by_tag_and_by_digest() {
    let w = Wharf::start().await;
    let ci = token(&w, "ci-a", &["--role", "deployer", "--stack", "a"]);
    let host = format!("127.0.0.1:{}", w.port);
    let tag = format!("{host}/a/app:v1");
    let mut images = Images(vec![tag.clone()]);
    let build = tempfile::tempdir().unwrap();
    build_image(build.path(), &tag, 3);

    // Docker's credentials go to this test's own config directory.
    let docker_config = tempfile::tempdir().unwrap();
    let env = [("DOCKER_CONFIG", docker_config.path())];
    let login = run(
        "docker",
        &["login", &host, "-u", "x", "--password-stdin"],
        &env,
        Some(&ci),
    );
    assert!(stdout(&login).contains("Login Succeeded"), "{login:?}");

    let digest = push(&tag, &env);

    // What the registry holds: a Docker schema 2 manifest with the three layers.
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/v2/a/app/manifests/v1", w.url()))
        .basic_auth("x", Some(&ci))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    let m: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(m["layers"].as_array().map(Vec::len), Some(3), "{m}");

    // Pulled back by tag, then by digest, with the local copy removed first each time.
    run("docker", &["rmi", &tag], &[], None);
    run("docker", &["pull", &tag], &env, None);
    run("docker", &["image", "inspect", &tag], &[], None);
    run("docker", &["rmi", &tag], &[], None);
    let by_digest = format!("{host}/a/app@{digest}");
    images.0.push(by_digest.clone());
    run("docker", &["pull", &by_digest], &env, None);
    let inspect = stdout(&run(
        "docker",
        &[
            "image",
            "inspect",
            "--format",
            "{{len .RootFS.Layers}}",
            &by_digest,
        ],
        &[],
        None,
    ));
    assert_eq!(inspect.trim(), "3", "the pulled image has the three layers");

    // The pushes are on the trail, by the token that made them.
    let trail = audit(&w).await;
    for action in ["registry push blob", "registry push manifest"] {
        assert!(
            trail.iter().any(|(actor, a, t, o)| actor == "ci-a"
                && a == action
                && t.starts_with("a/app")
                && o == "ok"),
            "no {action:?} by ci-a in {trail:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_oci_and_docker_images_both_ways() {
    let w = Wharf::start().await;
    let ci = token(&w, "ci-a", &["--role", "deployer", "--stack", "a"]);
    let creds = format!("x:{ci}");
    let host = format!("127.0.0.1:{}", w.port);
    let local = format!("localhost/wharf-registry-test:{}", rand_nonce());
    let back = format!("{host}/a/sk:back");
    let _images = Images(vec![local.clone(), back.clone()]);
    let build = tempfile::tempdir().unwrap();
    build_image(build.path(), &local, 2);
    let layout = tempfile::tempdir().unwrap();
    let oci_dir = format!("oci:{}:img", layout.path().join("src").display());

    let to = |dest: &str, format: &str| {
        vec![
            "copy".to_string(),
            "--dest-tls-verify=false".into(),
            "--dest-creds".into(),
            creds.clone(),
            "--format".into(),
            format.into(),
        ]
        .into_iter()
        .chain([dest.to_string()])
        .collect::<Vec<_>>()
    };
    // docker-daemon: -> registry as Docker schema 2; an OCI layout -> registry as OCI.
    let mut args = to(&format!("docker://{host}/a/sk:v2s2"), "v2s2");
    args.insert(args.len() - 1, format!("docker-daemon:{local}"));
    run(
        "skopeo",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
        None,
    );
    run(
        "skopeo",
        &["copy", &format!("docker-daemon:{local}"), &oci_dir],
        &[],
        None,
    );
    let mut args = to(&format!("docker://{host}/a/sk:oci"), "oci");
    args.insert(args.len() - 1, oci_dir.clone());
    run(
        "skopeo",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
        None,
    );

    // What the registry serves is in the format it was pushed in.
    for (tag, media_type) in [
        (
            "v2s2",
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
        ("oci", "application/vnd.oci.image.manifest.v1+json"),
    ] {
        let raw = stdout(&run(
            "skopeo",
            &[
                "inspect",
                "--raw",
                "--tls-verify=false",
                "--creds",
                &creds,
                &format!("docker://{host}/a/sk:{tag}"),
            ],
            &[],
            None,
        ));
        let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(m["mediaType"], media_type, "{tag}: {raw}");
    }

    // And back: the OCI image to an OCI layout, the Docker one into the engine.
    let out_dir = format!("oci:{}:img", layout.path().join("back").display());
    let from = |src: &str, dest: &str, format: &str| {
        run(
            "skopeo",
            &[
                "copy",
                "--src-tls-verify=false",
                "--src-creds",
                &creds,
                "--format",
                format,
                src,
                dest,
            ],
            &[],
            None,
        )
    };
    from(&format!("docker://{host}/a/sk:oci"), &out_dir, "oci");
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.path().join("back").join("index.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        index["manifests"].as_array().map(Vec::len),
        Some(1),
        "{index}"
    );
    from(
        &format!("docker://{host}/a/sk:v2s2"),
        &format!("docker-daemon:{back}"),
        "v2s2",
    );
    run("docker", &["image", "inspect", &back], &[], None);
}

/// `len` bytes that differ from run to run.
fn blob(len: usize) -> Vec<u8> {
    let seed = rand_nonce();
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) ^ seed) as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_leaves_nothing_visible_resumes_and_a_wrong_digest_stores_nothing() {
    let w = Wharf::start().await;
    let admin = w.client.token().to_string();
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", w.url());
    let data = blob(3 * 1024 * 1024);
    let d = digest(&data);
    let first = 1024 * 1024;

    let r = http
        .post(url("/v2/a/raw/blobs/uploads/"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert_eq!(r.headers()["range"], "0-0");

    // A chunk whose client goes away after its first MiB: the stream then never ends, and the
    // request is dropped once the registry shows it has that MiB.
    let head = data[..first].to_vec();
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(head) })
        .chain(futures::stream::pending());
    let patch = http
        .patch(url(&location))
        .bearer_auth(&admin)
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let patch = tokio::spawn(patch);
    let want = format!("0-{}", first - 1);
    wait_for(
        "the registry to hold the first MiB of the chunk",
        Duration::from_secs(20),
        || async {
            let r = http
                .get(url(&location))
                .bearer_auth(&admin)
                .send()
                .await
                .ok()?;
            let range = r.headers().get("range")?.to_str().ok()?.to_string();
            (range == want).then_some(())
        },
    )
    .await
    .unwrap();
    patch.abort();
    let _ = patch.await;

    // Nothing visible, and the upload resumes where it broke off.
    let r = http
        .head(url(&format!("/v2/a/raw/blobs/{d}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "a blob visible before it is complete"
    );
    let r = http
        .get(url(&location))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["range"], want.as_str());
    assert!(r.headers().contains_key("docker-upload-uuid"));
    // A chunk that does not start where the upload ends is refused (a small one: the registry
    // answers before reading it).
    let r = http
        .patch(url(&location))
        .bearer_auth(&admin)
        .header("content-range", "0-9")
        .body(data[..10].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // It waits for the broken request's end (one writer per upload): the registry must notice
    // the client went away.
    let rest = http
        .patch(url(&location))
        .bearer_auth(&admin)
        .header("content-range", format!("{first}-{}", data.len() - 1))
        .body(data[first..].to_vec())
        .send();
    let r = tokio::time::timeout(Duration::from_secs(20), rest)
        .await
        .expect(
            "the rest of the blob within 20 s: the broken chunk's request still holds the upload",
        )
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(
        r.headers()["range"],
        format!("0-{}", data.len() - 1).as_str()
    );
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let r = http
        .put(url(&format!("{location}?digest={d}")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());

    let blob_url = url(&format!("/v2/a/raw/blobs/{d}"));
    let r = http
        .head(&blob_url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-length"],
        data.len().to_string().as_str()
    );
    let r = http
        .get(&blob_url)
        .bearer_auth(&admin)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &data[10..20]);
    let r = http
        .get(&blob_url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(digest(&r.bytes().await.unwrap()), d, "the whole blob back");

    // A wrong digest: 400 DIGEST_INVALID, and nothing stored under either digest.
    let other = b"not what the digest says".to_vec();
    let wrong = digest(b"something else");
    let r = http
        .post(url(&format!("/v2/a/raw/blobs/uploads/?digest={wrong}")))
        .bearer_auth(&admin)
        .body(other.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(r).await, "DIGEST_INVALID");
    for dg in [wrong.clone(), digest(&other)] {
        let r = http
            .head(url(&format!("/v2/a/raw/blobs/{dg}")))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{dg} stored");
        let hex = &dg["sha256:".len()..];
        let file = w
            .data_dir()
            .join("registry/blobs/sha256")
            .join(&hex[..2])
            .join(hex);
        assert!(!file.exists(), "{} exists", file.display());
    }
    let uploads: Vec<_> = std::fs::read_dir(w.data_dir().join("registry/uploads"))
        .unwrap()
        .collect();
    assert!(uploads.is_empty(), "uploads left behind: {uploads:?}");
}

/// A minimal image in repository `repo` pushed by raw HTTP with `token`: its manifest's digest.
async fn push_image(w: &Wharf, token: &str, repo: &str, tag: &str) -> (String, Vec<String>) {
    let http = reqwest::Client::new();
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"n\":{}}}",
        rand_nonce()
    );
    let layer = blob(1000);
    let mut blobs = Vec::new();
    for b in [config.as_bytes().to_vec(), layer.clone()] {
        let d = digest(&b);
        let r = http
            .post(format!("{}/v2/{repo}/blobs/uploads/?digest={d}", w.url()))
            .basic_auth("x", Some(token))
            .body(b.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::CREATED,
            "{repo}: {:?}",
            r.text().await
        );
        blobs.push(d);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[0], "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blobs[1], "size": layer.len()}],
    })
    .to_string();
    let r = http
        .put(format!("{}/v2/{repo}/manifests/{tag}", w.url()))
        .basic_auth("x", Some(token))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{repo}: {:?}",
        r.text().await
    );
    (digest(manifest.as_bytes()), blobs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_roles_anonymous_pulls_deletes_and_gc_are_enforced_and_audited() {
    let mut w = Wharf::start().await;
    let ci_a = token(&w, "ci-a", &["--role", "deployer", "--stack", "a"]);
    let viewer = token(&w, "look", &["--role", "viewer"]);
    let http = reqwest::Client::new();
    let base = w.url();
    let url = |p: &str| format!("{base}{p}");

    let (manifest, blobs) = push_image(&w, &ci_a, "a/web", "v1").await;
    // A deployer of stack a may not push to b's repositories (the spec's DENIED), and is on
    // the trail for trying.
    let r = http
        .post(url("/v2/b/web/blobs/uploads/"))
        .basic_auth("x", Some(&ci_a))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(r).await, "DENIED");
    // A viewer pulls but does not push.
    let r = http
        .get(url("/v2/a/web/manifests/v1"))
        .basic_auth("x", Some(&viewer))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["docker-content-digest"], manifest.as_str());
    let size = r.bytes().await.unwrap().len();
    let r = http
        .head(url("/v2/a/web/manifests/v1"))
        .basic_auth("x", Some(&viewer))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "HEAD of a manifest");
    assert_eq!(r.headers()["content-length"], size.to_string().as_str());
    assert_eq!(r.headers()["docker-content-digest"], manifest.as_str());
    let r = http
        .post(url("/v2/a/web/blobs/uploads/"))
        .basic_auth("x", Some(&viewer))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(r).await, "DENIED");
    // A wrong token and no token: challenged, as Docker expects.
    for auth in [Some("not-a-token"), None] {
        let mut req = http.get(url("/v2/a/web/manifests/v1"));
        if let Some(t) = auth {
            req = req.basic_auth("x", Some(t));
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"wharf\"");
        assert_eq!(
            r.headers()["docker-distribution-api-version"],
            "registry/2.0"
        );
        assert_eq!(error_code(r).await, "UNAUTHORIZED");
    }
    // Tags, the catalog (as the scope sees it), and an index of the image.
    let r = http
        .get(url("/v2/a/web/tags/list"))
        .basic_auth("x", Some(&viewer))
        .send()
        .await
        .unwrap();
    let tags: serde_json::Value = r.json().await.unwrap();
    assert_eq!(tags, serde_json::json!({"name": "a/web", "tags": ["v1"]}));
    let (_, b_blobs) = push_image(&w, &admin_of(&w), "b/web", "v1").await;
    let r = http
        .get(url("/v2/_catalog"))
        .basic_auth("x", Some(&ci_a))
        .send()
        .await
        .unwrap();
    let catalog: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        catalog,
        serde_json::json!({"repositories": ["a/web"]}),
        "the scope's repositories only"
    );
    // A user's name and password work as Docker sends them, a wrong password does not.
    let add = ["user", "add", "ann", "--role", "viewer", "--password-stdin"];
    let out = common::cli_with_stdin(&w.config_dir(), &add, "a long passphrase for ann\n");
    assert!(out.status.success(), "{out:?}");
    for (password, status) in [
        ("a long passphrase for ann", StatusCode::OK),
        ("wrong", StatusCode::UNAUTHORIZED),
    ] {
        let r = http
            .get(url("/v2/a/web/manifests/v1"))
            .basic_auth("ann", Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "ann with {password:?}");
    }
    // A mount from a repository the token may pull is the blob at once; from another stack's it
    // is an ordinary upload (nothing lent).
    let r = http
        .post(url(&format!(
            "/v2/a/copy/blobs/uploads/?mount={}&from=a/web",
            blobs[1]
        )))
        .basic_auth("x", Some(&ci_a))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "a mount within the scope");
    let r = http
        .head(url(&format!("/v2/a/copy/blobs/{}", blobs[1])))
        .basic_auth("x", Some(&ci_a))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the mounted blob");
    // Deleting it there unlinks it there only.
    let copy = url(&format!("/v2/a/copy/blobs/{}", blobs[1]));
    let r = http
        .delete(&copy)
        .basic_auth("x", Some(&ci_a))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = http
        .head(&copy)
        .basic_auth("x", Some(&ci_a))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a deleted blob");
    let web = url(&format!("/v2/a/web/blobs/{}", blobs[1]));
    let r = http
        .head(&web)
        .basic_auth("x", Some(&ci_a))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the same blob in a/web");
    let r = http
        .post(url(&format!(
            "/v2/a/copy/blobs/uploads/?mount={}&from=b/web",
            b_blobs[1]
        )))
        .basic_auth("x", Some(&ci_a))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::ACCEPTED,
        "a mount from outside the scope"
    );
    let r = http
        .head(url(&format!("/v2/a/copy/blobs/{}", b_blobs[1])))
        .basic_auth("x", Some(&ci_a))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "b's blob not lent to a");
    // Tags in pages: `n`, then `last`, with a Link to the next page.
    push_image(&w, &ci_a, "a/web", "v2").await;
    let r = http
        .get(url("/v2/a/web/tags/list?n=1"))
        .basic_auth("x", Some(&ci_a))
        .send()
        .await
        .unwrap();
    let link = r.headers()["link"].to_str().unwrap().to_string();
    assert!(
        link.contains("last=v1") && link.contains("rel=\"next\""),
        "{link}"
    );
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["tags"],
        serde_json::json!(["v1"])
    );
    let r = http
        .get(url("/v2/a/web/tags/list?n=1&last=v1"))
        .basic_auth("x", Some(&ci_a))
        .send()
        .await
        .unwrap();
    assert!(!r.headers().contains_key("link"), "the last page");
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["tags"],
        serde_json::json!(["v2"])
    );

    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest, "size": 1,
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    })
    .to_string();
    let r = http
        .put(url("/v2/a/web/manifests/multi"))
        .basic_auth("x", Some(&ci_a))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // Accept: a manifest is served as pushed, to a client that names its type.
    for (accept, status) in [
        ("application/vnd.oci.image.manifest.v1+json", StatusCode::OK),
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            StatusCode::NOT_FOUND,
        ),
        ("*/*", StatusCode::OK),
    ] {
        let r = http
            .get(url("/v2/a/web/manifests/v1"))
            .basic_auth("x", Some(&ci_a))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "Accept: {accept}");
    }

    // Anonymous pulls once enabled (the same data directory), never pushes.
    w.kill9();
    w.launch(&["--registry-anonymous-pull"]).await;
    let r = http
        .get(url("/v2/a/web/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "anonymous pull when enabled");
    let r = http
        .post(url("/v2/a/web/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "anonymous push");

    // Delete: the index, then the image's tag and manifest; gc then removes its blobs.
    let index_digest = digest(index.as_bytes());
    for reference in [index_digest.as_str(), manifest.as_str()] {
        let r = http
            .delete(url(&format!("/v2/a/web/manifests/{reference}")))
            .basic_auth("x", Some(&ci_a))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    let r = http
        .get(url("/v2/a/web/manifests/v1"))
        .basic_auth("x", Some(&ci_a))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "the tag went with its manifest"
    );
    assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    for (repo, status) in [
        ("a/web", StatusCode::OK),
        ("a/nothing", StatusCode::NOT_FOUND),
    ] {
        let r = http
            .get(url(&format!("/v2/{repo}/tags/list")))
            .basic_auth("x", Some(&ci_a))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{repo}'s tags");
    }
    let (out, _) = w.cli_code(&["registry", "gc", "--grace", "0s"], 0);
    for d in blobs.iter().chain([&manifest, &index_digest]) {
        assert!(out.contains(d.as_str()), "gc did not remove {d}:\n{out}");
        let r = http
            .head(url(&format!("/v2/a/web/blobs/{d}")))
            .basic_auth("x", Some(&ci_a))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{d} after gc");
    }
    // b's image is still referenced: still there.
    let r = http
        .get(url("/v2/b/web/manifests/v1"))
        .bearer_auth(admin_of(&w))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "b/web after gc");

    let trail = audit(&w).await;
    for (actor, action, outcome) in [
        ("ci-a", "registry push blob", "ok"),
        ("ci-a", "registry push manifest", "ok"),
        ("ci-a", "POST /v2/{name}/blobs/uploads/", "denied"),
        ("look", "POST /v2/{name}/blobs/uploads/", "denied"),
        ("ci-a", "registry delete manifest", "ok"),
        ("ci-a", "registry delete blob", "ok"),
        ("ci-a", "registry mount blob", "ok"),
        ("admin", "registry gc", "ok"),
    ] {
        assert!(
            trail
                .iter()
                .any(|(a, act, _, o)| a.starts_with(actor) && act == action && o == outcome),
            "no {action:?} ({outcome}) by {actor} in {trail:#?}"
        );
    }
}

fn admin_of(w: &Wharf) -> String {
    w.client.token().to_string()
}
