//! The Docker driver against the real engine, with the testapp image built locally (no registry).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
mod common;
use common::{observed, wait_observed};
use wharf_agent::driver::docker::DockerDriver;
use wharf_agent::driver::{Driver, DriverErrorKind, InstanceSpec, ObservedState, Stop};
use wharf_testkit::{remove_stack_containers, testapp_image, unique_stack, wait_for};
use wharf_types::{
    BuildSpec, Health, HealthCheck, LogQuery, LogStream, PortSpec, Protocol, ServiceSpec,
};

const T: Duration = Duration::from_secs(20);

fn instance(stack: &str, service: &str, slot: u32, spec: ServiceSpec) -> InstanceSpec {
    InstanceSpec {
        id: format!("{stack}.{service}.{slot}"),
        stack: stack.to_string(),
        service: service.to_string(),
        slot,
        generation: 1,
        spec_hash: spec.instance_hash(),
        spec: spec.into(),
    }
}

async fn testapp_spec(env: &[(&str, &str)]) -> anyhow::Result<ServiceSpec> {
    Ok(ServiceSpec {
        image: Some(testapp_image().await?),
        environment: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        stop_grace_period_ms: Some(2_000),
        ..Default::default()
    })
}

fn published(port: u16) -> PortSpec {
    PortSpec {
        target: 8080,
        published: Some(port),
        host_ip: Some("127.0.0.1".to_string()),
        protocol: Protocol::Tcp,
    }
}

fn healthcheck(interval_ms: u64, retries: u32) -> HealthCheck {
    HealthCheck {
        test: ["CMD", "/testapp", "check", "http://127.0.0.1:8080/healthz"]
            .map(String::from)
            .to_vec(),
        interval_ms,
        timeout_ms: 2_000,
        retries,
        start_period_ms: 0,
        start_interval_ms: None,
    }
}

/// A plain HTTP/1.0 request: (status, body).
fn http(method: &str, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        conn,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = String::new();
    conn.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("malformed response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, body.to_string()))
}

/// Run `body` with a fresh stack name, cleaning the stack up afterwards whatever happened.
async fn with_stack<F, Fut>(prefix: &str, body: F) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let stack = unique_stack(prefix);
    remove_stack_containers(&stack).await;
    let result = body(stack.clone()).await;
    remove_stack_containers(&stack).await;
    result
}

#[tokio::test]
async fn runs_a_container_end_to_end() -> anyhow::Result<()> {
    with_stack("dd-e2e", |stack| async move {
        let d = DockerDriver::connect().await?.for_node(&stack);
        let info = d.info().await?;
        ensure!(info.cpus > 0 && info.memory_bytes > 0 && info.version.is_some(), "{info:?}");

        let port = wharf_testkit::free_port();
        let mut spec = testapp_spec(&[("VERSION", "v2"), ("GREETING", "hello there")]).await?;
        spec.ports = vec![published(port)];
        spec.healthcheck = Some(healthcheck(300, 3));
        spec.labels = BTreeMap::from([("com.example.team".to_string(), "tests".to_string())]);
        let inst = instance(&stack, "web", 2, spec);

        let mut changes = d.changes().await?;
        d.prepare(&inst).await?;
        d.prepare(&inst).await?; // idempotent
        let handle = d.create(&inst).await?;
        ensure!(d.create(&inst).await? == handle, "create twice must return the same handle");

        let o = observed(&d, &handle).await?.context("created container not listed")?;
        ensure!(o.state == ObservedState::Created, "{o:?}");
        ensure!(
            o.instance == inst.id && o.stack == stack && o.service == "web" && o.slot == 2 && o.generation == 1,
            "{o:?}"
        );
        ensure!(o.spec_hash == inst.spec_hash, "{o:?}");
        let other = DockerDriver::connect().await?.for_node("some-other-node");
        ensure!(
            !other.list().await?.iter().any(|o| o.handle == handle),
            "a driver for another node lists this node's container"
        );

        d.start(&handle).await?;
        d.start(&handle).await?; // starting a running container is fine
        tokio::time::timeout(T, changes.next()).await.context("no change event after start")?;

        let body = wait_for("the testapp to answer on its published port", T, || async {
            http("GET", port, "/").map(|(s, b)| (s == 200).then_some(b))
        })
        .await?;
        ensure!(body == "v2\n", "{body:?}");
        let (_, greeting) = http("GET", port, "/env/GREETING")?;
        ensure!(greeting == "hello there", "{greeting:?}");

        let o = wait_observed(&d, &handle, "healthy", T, |o| o.health == Health::Healthy).await?;
        ensure!(o.state == ObservedState::Running && o.started_at.is_some() && o.finished_at.is_none(), "{o:?}");
        ensure!(o.health_output.is_none(), "{o:?}");
        // Its address on the stack network answers on the container port (what the ingress uses).
        let ip = o.address.clone().context("a running container has an address")?;
        let addr = format!("{ip}:8080");
        let mut s = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(2))
            .with_context(|| format!("connect to {addr}"))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        ensure!(answer.ends_with("v2\n"), "{answer:?}");

        // Logs: the start line is in the tail; a line written later arrives on the followed stream.
        let lines: Vec<_> = d.logs(&handle, LogQuery::default()).await?.collect().await;
        ensure!(
            lines.iter().any(|l| matches!(l, Ok((LogStream::Stdout, s)) if s.starts_with("listening on 0.0.0.0:8080 version v2"))),
            "{lines:?}"
        );
        let mut follow = d.logs(&handle, LogQuery::last(0).following()).await?;
        // The line is written after the follow began; it is written again until seen, as the
        // engine's log request may still be on its way when the first one goes out.
        let mut tick = tokio::time::interval(Duration::from_millis(300));
        let line = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                tokio::select! {
                    l = follow.next() => match l {
                        Some(l) => {
                            let (stream, text) = l?;
                            if text == "written later" {
                                return anyhow::Ok(stream);
                            }
                        }
                        None => bail!("log stream ended"),
                    },
                    _ = tick.tick() => {
                        http("POST", port, "/log?msg=written%20later")?;
                    }
                }
            }
        })
        .await
        .context("timed out waiting for the followed log line")??;
        ensure!(line == LogStream::Stdout);

        // Killed: exit code 137.
        d.stop(&handle, &Stop::with_signal(Duration::from_secs(5), "SIGKILL")).await?;
        let o = wait_observed(&d, &handle, "exited after SIGKILL", T, |o| o.state == ObservedState::Exited).await?;
        ensure!(o.exit_code == Some(137) && o.finished_at.is_some(), "{o:?}");
        d.stop(&handle, &Stop::after(Duration::from_secs(1))).await?; // stopping a stopped one is fine

        // Started again, then stopped with SIGTERM: the testapp exits 0 at once.
        d.start(&handle).await?;
        // Healthy, not just running: the testapp has its SIGTERM handler by then (on a loaded
        // machine a signal right after the start can beat it, and PID 1 ignores SIGTERM).
        wait_observed(&d, &handle, "running and healthy again", T, |o| {
            o.state == ObservedState::Running && o.health == Health::Healthy
        })
        .await?;
        // The stack's network cannot go while the container runs on it: the error names it.
        let err = d
            .remove_stack_resources(&stack, false)
            .await
            .err()
            .context("the network of a running container was removed")?;
        ensure!(
            err.message.contains(&format!("still attached [\"wharf-{stack}-web-2-g1\"]")),
            "{err:?}"
        );
        let t0 = std::time::Instant::now();
        d.stop(&handle, &Stop::after(Duration::from_secs(10))).await?;
        ensure!(t0.elapsed() < Duration::from_secs(5), "stop took {:?}", t0.elapsed());
        let o = observed(&d, &handle).await?.context("stopped container not listed")?;
        ensure!(o.state == ObservedState::Exited && o.exit_code == Some(0), "{o:?}");

        d.remove(&handle).await?;
        d.remove(&handle).await?; // removing a missing one is fine
        ensure!(observed(&d, &handle).await?.is_none());
        let err = d.logs(&handle, LogQuery::default()).await.err().context("logs of a removed container")?;
        ensure!(err.kind == DriverErrorKind::NotFound, "{err:?}");
        d.remove_stack_resources(&stack, true).await?;
        d.remove_stack_resources(&stack, true).await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn failing_health_check_is_unhealthy_with_output() -> anyhow::Result<()> {
    with_stack("dd-unhealthy", |stack| async move {
        let d = DockerDriver::connect().await?.for_node(&stack);
        let mut spec = testapp_spec(&[("FAIL_HEALTH", "1")]).await?;
        spec.healthcheck = Some(healthcheck(200, 2));
        let inst = instance(&stack, "sick", 0, spec);
        d.prepare(&inst).await?;
        let handle = d.create(&inst).await?;
        d.start(&handle).await?;
        let o = wait_observed(&d, &handle, "unhealthy", T, |o| {
            o.health == Health::Unhealthy
        })
        .await?;
        let out = o.health_output.clone().unwrap_or_default();
        ensure!(
            out.contains("503") && out.contains("unhealthy: FAIL_HEALTH=1"),
            "{o:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn crash_exit_code_and_service_alias() -> anyhow::Result<()> {
    with_stack("dd-crash", |stack| async move {
        let d = DockerDriver::connect().await?.for_node(&stack);
        let inst = instance(
            &stack,
            "crashy",
            0,
            testapp_spec(&[("CRASH_AFTER_MS", "300"), ("CRASH_CODE", "7")]).await?,
        );
        d.prepare(&inst).await?;
        let handle = d.create(&inst).await?;
        d.start(&handle).await?;
        let o = wait_observed(&d, &handle, "crashed", T, |o| {
            o.state == ObservedState::Exited
        })
        .await?;
        ensure!(o.exit_code == Some(7), "{o:?}");

        // Services reach each other by service name on the stack network.
        let api = instance(&stack, "api", 0, testapp_spec(&[]).await?);
        let mut probe_spec = testapp_spec(&[]).await?;
        let mut hc = healthcheck(200, 2);
        hc.test = ["CMD", "/testapp", "check", "http://api:8080/healthz"]
            .map(String::from)
            .to_vec();
        probe_spec.healthcheck = Some(hc);
        let probe = instance(&stack, "probe", 0, probe_spec);
        for i in [&api, &probe] {
            d.prepare(i).await?;
            let h = d.create(i).await?;
            d.start(&h).await?;
        }
        let probe_handle = d.create(&probe).await?;
        wait_observed(
            &d,
            &probe_handle,
            "probe healthy through the api alias",
            T,
            |o| o.health == Health::Healthy,
        )
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn published_port_taken() -> anyhow::Result<()> {
    with_stack("dd-port", |stack| async move {
        let d = DockerDriver::connect().await?.for_node(&stack);
        let port = wharf_testkit::free_port();
        let mut spec = testapp_spec(&[]).await?;
        spec.ports = vec![published(port)];
        let first = instance(&stack, "one", 0, spec.clone());
        let second = instance(&stack, "two", 0, spec);
        d.prepare(&first).await?;
        let h1 = d.create(&first).await?;
        d.start(&h1).await?;
        let h2 = d.create(&second).await?;
        let err = d
            .start(&h2)
            .await
            .err()
            .context("starting a second container on the same port")?;
        ensure!(err.kind == DriverErrorKind::PortTaken, "{err:?}");
        ensure!(
            err.message.contains(&port.to_string()) && err.hint.is_some(),
            "{err:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn absent_image_is_image_missing() -> anyhow::Result<()> {
    with_stack("dd-noimage", |stack| async move {
        let d = DockerDriver::connect()
            .await?
            .with_pull_timeout(Duration::from_secs(5));
        let spec = ServiceSpec {
            image: Some("wharf-absent-image:nope".to_string()),
            ..Default::default()
        };
        let inst = instance(&stack, "ghost", 0, spec);
        let t0 = std::time::Instant::now();
        let err = d
            .prepare(&inst)
            .await
            .err()
            .context("prepare of an absent image")?;
        ensure!(err.kind == DriverErrorKind::ImageMissing, "{err:?}");
        ensure!(
            err.message.starts_with(
                "image wharf-absent-image:nope not found locally and could not be pulled"
            ),
            "{err:?}"
        );
        ensure!(
            err.hint
                .as_deref()
                .is_some_and(|h| h.contains("docker load")),
            "{err:?}"
        );
        ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "took {:?}",
            t0.elapsed()
        );
        let err = d
            .create(&inst)
            .await
            .err()
            .context("create of an absent image")?;
        ensure!(err.kind == DriverErrorKind::ImageMissing, "{err:?}");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn builds_from_a_context_directory() -> anyhow::Result<()> {
    with_stack("dd-build", |stack| async move {
        let d = DockerDriver::connect().await?.for_node(&stack);
        let base = testapp_image().await?;
        let dir = tempfile::tempdir()?;
        std::fs::write(
            dir.path().join("build.Dockerfile"),
            format!(
                "FROM {base}\nARG GREETING=unset\nENV VERSION=$GREETING\nCOPY note.txt /note.txt\n"
            ),
        )?;
        std::fs::write(dir.path().join("note.txt"), "a note\n")?;
        let port = wharf_testkit::free_port();
        let mut build = BuildSpec {
            context: dir.path().to_string_lossy().into_owned(),
            dockerfile: Some("build.Dockerfile".to_string()),
            args: BTreeMap::from([("GREETING".to_string(), "built-v1".to_string())]),
            context_hash: Some("hash-1".to_string()),
            ..Default::default()
        };
        let spec = ServiceSpec {
            build: Some(build.clone()),
            ports: vec![published(port)],
            ..Default::default()
        };
        let inst = instance(&stack, "app", 0, spec.clone());
        let image = spec.image_ref(&stack, "app");
        d.prepare(&inst).await?;
        let id1 = d.client().inspect_image(&image).await?.id;
        d.prepare(&inst).await?; // same hash: no rebuild
        ensure!(
            d.client().inspect_image(&image).await?.id == id1,
            "image rebuilt with an unchanged context hash"
        );

        let handle = d.create(&inst).await?;
        d.start(&handle).await?;
        let body = wait_for("the built image to answer", T, || async {
            http("GET", port, "/").map(|(s, b)| (s == 200).then_some(b))
        })
        .await?;
        ensure!(body == "built-v1\n", "{body:?}");

        // A changed context hash rebuilds.
        build
            .args
            .insert("GREETING".to_string(), "built-v2".to_string());
        build.context_hash = Some("hash-2".to_string());
        let spec2 = ServiceSpec {
            build: Some(build.clone()),
            ..Default::default()
        };
        d.prepare(&instance(&stack, "app", 1, spec2)).await?;
        let img = d.client().inspect_image(&image).await?;
        ensure!(
            img.id != id1,
            "image not rebuilt after the context hash changed"
        );
        let label = img
            .config
            .and_then(|c| c.labels)
            .and_then(|l| l.get("io.wharf.context-hash").cloned());
        // The context hash, and since a build arg is set, a hash of the build options too.
        ensure!(label == build.fingerprint(), "{label:?}");
        ensure!(
            label.as_deref().is_some_and(|l| l.starts_with("hash-2+")),
            "{label:?}"
        );

        // A broken build is BuildFailed with the engine's output.
        std::fs::write(
            dir.path().join("build.Dockerfile"),
            format!("FROM {base}\nCOPY missing.txt /x\n"),
        )?;
        build.context_hash = Some("hash-3".to_string());
        let spec3 = ServiceSpec {
            build: Some(build),
            image: Some(format!("{stack}-broken:latest")),
            ..Default::default()
        };
        let err = d
            .prepare(&instance(&stack, "broken", 0, spec3))
            .await
            .err()
            .context("broken build")?;
        ensure!(err.kind == DriverErrorKind::BuildFailed, "{err:?}");
        ensure!(err.message.contains("missing.txt"), "{err:?}");

        d.stop(&handle, &Stop::after(Duration::from_secs(5)))
            .await?;
        d.remove(&handle).await?;
        for tag in [image, format!("{stack}-broken:latest")] {
            let _ = d
                .client()
                .remove_image(
                    &tag,
                    None::<bollard::query_parameters::RemoveImageOptions>,
                    None,
                )
                .await;
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn exec_runs_in_a_container_with_its_input_a_tty_and_its_exit_code_and_stats_sample_it()
-> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    use wharf_types::{ExecSpec, TtySize};
    let image = wharf_testkit::shell_image().await?;
    with_stack("dd-exec", |stack| async move {
        let d = DockerDriver::connect().await?.for_node(&stack);
        let spec = ServiceSpec {
            image: Some(image),
            stop_grace_period_ms: Some(1_000),
            ..Default::default()
        };
        let inst = instance(&stack, "sh", 0, spec);
        d.prepare(&inst).await?;
        let handle = d.create(&inst).await?;
        d.start(&handle).await?;
        wait_observed(&d, &handle, "the container runs", T, |o| {
            o.state == ObservedState::Running
        })
        .await?;

        // Input in, output out (stdout and stderr apart), then the exit code.
        let run = ExecSpec {
            command: ["sh", "-c", "read x; echo got $x; echo err >&2; exit 7"]
                .map(String::from)
                .to_vec(),
            stdin: true,
            ..ExecSpec::default()
        };
        let mut p = d.exec(&handle, &run).await?;
        p.input.write_all(b"it\n").await?;
        p.input.flush().await?;
        let (mut out, mut err) = (String::new(), String::new());
        while let Some(chunk) = tokio::time::timeout(T, p.output.next()).await? {
            let (stream, data) = chunk?;
            match stream {
                LogStream::Stdout => out.push_str(&String::from_utf8_lossy(&data)),
                LogStream::Stderr => err.push_str(&String::from_utf8_lossy(&data)),
            }
        }
        ensure!(
            out == "got it\n" && err == "err\n",
            "stdout {out:?}, stderr {err:?}"
        );
        ensure!(p.control.exit_code().await? == Some(7), "exit code");

        // A TTY of the size asked for (set once the exec started, as the engine allows: the
        // command waits for a line, typed once `exec` returned).
        let tty = ExecSpec {
            command: ["sh", "-c", "read x; tty; stty size"]
                .map(String::from)
                .to_vec(),
            stdin: true,
            tty: true,
            size: Some(TtySize { cols: 91, rows: 27 }),
        };
        let mut p = d.exec(&handle, &tty).await?;
        p.input.write_all(b"\n").await?;
        p.input.flush().await?;
        let mut out = String::new();
        while let Some(chunk) = tokio::time::timeout(T, p.output.next()).await? {
            out.push_str(&String::from_utf8_lossy(&chunk?.1));
        }
        ensure!(
            out.contains("/dev/pts/") && out.contains("27 91"),
            "{out:?}"
        );

        let s = d.stats(&handle).await?;
        ensure!(
            s.memory_bytes > 0 && s.memory_limit_bytes > 0 && s.pids >= 1,
            "{s:?}"
        );

        d.stop(&handle, &Stop::NOW).await?;
        let e = match d.exec(&handle, &run).await {
            Ok(_) => bail!("exec in a stopped container"),
            Err(e) => e,
        };
        ensure!(
            e.kind == DriverErrorKind::NotFound && e.hint.is_some(),
            "{e:?}"
        );
        Ok(())
    })
    .await
}
