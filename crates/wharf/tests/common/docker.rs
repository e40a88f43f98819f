//! The real `docker` CLI in tests: run it (failing the test with its output), build small
//! images here (`FROM scratch` plus files: nothing from the internet), push and read the digest,
//! and remove what a test made.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Run `program ARGS…` (with `stdin` on its standard input); its output, failing the test with
/// both streams when it does not exit with 0.
pub fn run(program: &str, args: &[&str], env: &[(&str, &Path)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).env("DOCKER_BUILDKIT", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    if let Some(input) = stdin {
        use std::io::Write;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// An image built here, `FROM scratch` with one layer per file (content unique to this run);
/// tagged `tag`.
pub fn build_image(dir: &Path, tag: &str, layers: usize) {
    let mut dockerfile = String::from("FROM scratch\n");
    let nonce: u64 = rand_nonce();
    for i in 0..layers {
        let content = format!("layer {i} of {tag} run {nonce}\n").repeat(1000 * (i + 1));
        std::fs::write(dir.join(format!("f{i}")), content).unwrap();
        dockerfile.push_str(&format!("COPY f{i} /f{i}\n"));
    }
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    run(
        "docker",
        &["build", "-q", "-t", tag, &dir.to_string_lossy()],
        &[],
        None,
    );
}

pub fn rand_nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Removes the images it names from the engine when the test ends.
pub struct Images(pub Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for i in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

/// `docker push IMAGE` with the credentials in `env`: the digest the registry gave the manifest.
pub fn push(image: &str, env: &[(&str, &Path)]) -> String {
    let pushed = stdout(&run("docker", &["push", image], env, None));
    pushed
        .split_whitespace()
        .find(|t| t.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in docker push's output:\n{pushed}"))
        .to_string()
}
