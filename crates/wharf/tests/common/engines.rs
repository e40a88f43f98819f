//! A Docker engine of its own per test host: `dockerd` (with its own containerd) started inside the
//! host's network namespace, so its bridges, container addresses and iptables rules belong to that
//! host alone, as on separate machines. The test image is copied in with `docker save | load`.
//!
//! Only the network namespace is entered (`nsenter --net`): `ip netns exec` would also make a mount
//! namespace without the cgroup mounts dockerd needs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Engine {
    pub dir: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
}

/// The storage driver of the machine's own engine (the same kernel constraints apply).
fn storage_driver() -> String {
    let out = Command::new("docker")
        .args(["info", "--format", "{{.Driver}}"])
        .stdin(Stdio::null())
        .output()
        .expect("run docker info");
    let d = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if d.is_empty() {
        "overlay2".to_string()
    } else {
        d
    }
}

impl Engine {
    /// Start an engine in network namespace `ns`, its state under `dir`, and load `images` into
    /// it from the machine's engine.
    pub fn start(ns: &str, dir: &Path, images: &[&str]) -> Engine {
        std::fs::create_dir_all(dir).expect("engine dir");
        let config = dir.join("daemon.json");
        std::fs::write(
            &config,
            // Test hosts pull over plain HTTP from registries on the test network (the
            // reference registry of tests/fanout.rs), as Docker does from loopback ones.
            format!(
                "{{\"storage-driver\": \"{}\", \"insecure-registries\": [\"10.0.0.0/8\"]}}\n",
                storage_driver()
            ),
        )
        .expect("daemon.json");
        let socket = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("dockerd log");
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg("dockerd")
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dockerd (nsenter): {e}"));
        let engine = Engine {
            dir: dir.to_path_buf(),
            socket,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !engine.cli(&["info"]).status.success() {
            if Instant::now() > deadline {
                panic!(
                    "the engine of netns {ns} did not answer within 60 s; its log:\n{}",
                    engine.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for image in images {
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "docker save {image} | docker -H unix://{} load",
                    engine.socket.display()
                ))
                .stdin(Stdio::null())
                .output()
                .expect("run docker save | load");
            assert!(
                out.status.success(),
                "cannot copy {image} into the engine of {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        engine
    }

    /// `DOCKER_HOST` for this engine.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// `docker -H <this engine> ARGS…`, finished.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.docker_host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}

impl Engine {
    /// Stop the engine as `systemctl stop docker` would (SIGTERM; its containers stop with it).
    /// Nothing else of the host changes. SIGTERM through kill(1): std only sends SIGKILL, which
    /// leaves containerd behind.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg(child.id().to_string())
                .stdin(Stdio::null())
                .output();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Containers first: their shims would outlive the engine.
        let ids = String::from_utf8_lossy(&self.cli(&["ps", "-aq"]).stdout).to_string();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids);
            let _ = self.cli(&args);
        }
        self.stop();
        // Mounts left by the storage driver, then the state.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {0}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
                self.dir.display()
            ))
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
