//! A real etcd cluster for tests: members on loopback ports in a temporary directory, each
//! one a child process that a test may kill and start again. Needs Debian's `etcd-server`
//! (`/usr/bin/etcd`); `.ci/run` installs it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The flags Wharf needs of etcd beyond its defaults: room for the transactions of a large
/// deploy (one transaction writes every new instance of a pass).
pub const ETCD_LIMITS: [&str; 4] = ["--max-txn-ops", "100000", "--max-request-bytes", "33554432"];

/// TLS files of a cluster started with [`EtcdCluster::start_tls`].
#[derive(Clone, Debug)]
pub struct EtcdTlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    /// (client port, peer port) per member.
    ports: Vec<(u16, u16)>,
    children: Vec<Option<Child>>,
    tls: Option<EtcdTlsFiles>,
    host: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl EtcdCluster {
    /// `n` members on 127.0.0.1, plain HTTP; returns once every member answers.
    pub fn start(n: usize) -> EtcdCluster {
        Self::start_on("127.0.0.1", n, None)
    }

    /// `n` members on `host` (an address of this machine, e.g. a bridge the test made),
    /// with TLS and client certificates when `tls` is given.
    pub fn start_on(host: &str, n: usize, tls: Option<EtcdTlsFiles>) -> EtcdCluster {
        assert!(
            std::path::Path::new("/usr/bin/etcd").exists() || which("etcd"),
            "etcd is not installed: `apt-get install etcd-server` (Debian), as .ci/run does"
        );
        let dir = tempfile::tempdir().expect("a directory for etcd");
        let ports = (0..n).map(|_| (free_port(), free_port())).collect();
        let mut c = EtcdCluster {
            dir,
            ports,
            children: (0..n).map(|_| None).collect(),
            tls,
            host: host.to_string(),
        };
        for i in 0..n {
            c.start_member(i);
        }
        c.wait_healthy(Duration::from_secs(30));
        c
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// `host:port` of each member's client port.
    pub fn endpoints(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|(c, _)| format!("{}:{c}", self.host))
            .collect()
    }

    /// `etcd://h:p,h:p,…` for `--store`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints().join(","))
    }

    /// Start member `i` again (after [`EtcdCluster::kill`]); it keeps its data.
    pub fn start_member(&mut self, i: usize) {
        let scheme = self.scheme();
        let h = &self.host;
        let initial: Vec<String> = self
            .ports
            .iter()
            .enumerate()
            .map(|(j, (_, p))| format!("m{j}=http://{h}:{p}"))
            .collect();
        let (client, peer) = self.ports[i];
        let data = self.dir.path().join(format!("m{i}"));
        let log = std::fs::File::create(self.dir.path().join(format!("m{i}.log")))
            .expect("an etcd log file");
        let mut cmd = Command::new("etcd");
        cmd.args(["--name", &format!("m{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &format!("{scheme}://{h}:{client}"),
                "--advertise-client-urls",
                &format!("{scheme}://{h}:{client}"),
                "--listen-peer-urls",
                &format!("http://{h}:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://{h}:{peer}"),
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                "wharf-test",
                "--logger",
                "zap",
            ])
            .args(ETCD_LIMITS)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server_cert)
                .arg("--key-file")
                .arg(&t.server_key)
                .arg("--trusted-ca-file")
                .arg(&t.ca)
                .arg("--client-cert-auth");
        }
        self.children[i] = Some(cmd.spawn().expect("etcd starts"));
    }

    /// `kill -9` member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What member `i` logged (for a failure message).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("m{i}.log"))).unwrap_or_default()
    }

    /// Wait until every running member answers a health check.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for (i, (client, _)) in self.ports.iter().enumerate() {
            if self.children[i].is_none() {
                continue;
            }
            loop {
                let mut cmd = Command::new("etcdctl");
                cmd.env("ETCDCTL_API", "3").args([
                    "--endpoints",
                    &format!("{}://{}:{client}", self.scheme(), self.host),
                    "--command-timeout",
                    "1s",
                    "endpoint",
                    "health",
                ]);
                if self.tls.is_some() {
                    // The health check goes without a client certificate: a TCP answer will do.
                    if std::net::TcpStream::connect((self.host.as_str(), *client)).is_ok() {
                        break;
                    }
                } else if cmd
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member m{i} did not become healthy within {within:?}; its log:\n{}",
                    self.log(i)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).exists()))
}
