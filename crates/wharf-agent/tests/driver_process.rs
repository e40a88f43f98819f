//! The process driver with real child processes: output, stop within grace, exit codes, health.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures::StreamExt;
mod common;
use common::{observed, wait_observed};
use wharf_agent::driver::process::ProcessDriver;
use wharf_agent::driver::{Driver, DriverErrorKind, InstanceSpec, ObservedState, Stop};
use wharf_testkit::{Check, not_yet, wait_for};
use wharf_types::{DriverKind, Health, HealthCheck, LogQuery, LogStream, ServiceSpec};

const T: Duration = Duration::from_secs(10);

fn sh(script: &str) -> ServiceSpec {
    ServiceSpec {
        driver: DriverKind::Process,
        command: Some(vec!["sh".to_string(), "-c".to_string(), script.to_string()]),
        ..Default::default()
    }
}

fn instance(service: &str, spec: ServiceSpec) -> InstanceSpec {
    InstanceSpec {
        id: format!("proc.{service}.0"),
        stack: "proc".to_string(),
        service: service.to_string(),
        slot: 0,
        generation: 1,
        spec_hash: spec.instance_hash(),
        spec: spec.into(),
    }
}

async fn run(d: &ProcessDriver, inst: &InstanceSpec) -> anyhow::Result<String> {
    d.prepare(inst).await?;
    let h = d.create(inst).await?;
    d.start(&h).await?;
    Ok(h)
}

#[tokio::test]
async fn runs_captures_output_and_stops_within_grace() -> anyhow::Result<()> {
    let d = ProcessDriver::new();
    let info = d.info().await?;
    ensure!(
        info.kind == Some(DriverKind::Process) && info.cpus > 0 && info.memory_bytes > 0,
        "{info:?}"
    );
    let mut changes = d.changes().await?;
    let mut spec = sh("echo hi; echo oops >&2; echo \"greeting=$GREETING\"; exec sleep 30");
    spec.environment
        .insert("GREETING".to_string(), "hello".to_string());
    let inst = instance("sleeper", spec);
    let h = run(&d, &inst).await?;
    ensure!(
        d.create(&inst).await? == h,
        "create twice must return the same handle"
    );
    d.start(&h).await?; // starting a running instance is fine
    tokio::time::timeout(T, changes.next())
        .await
        .context("no change after start")?;

    let o = observed(&d, &h).await?.context("instance not listed")?;
    ensure!(
        o.state == ObservedState::Running && o.started_at.is_some() && o.health == Health::None,
        "{o:?}"
    );
    ensure!(o.address.as_deref() == Some("127.0.0.1"), "{o:?}");
    ensure!(
        o.instance == "proc.sleeper.0" && o.spec_hash == inst.spec_hash,
        "{o:?}"
    );

    let lines = wait_for("three lines of output", T, || async {
        let lines: Vec<_> = d
            .logs(&h, LogQuery::default())
            .await
            .ok()?
            .filter_map(|l| async { l.ok() })
            .collect()
            .await;
        (lines.len() >= 3).then_some(lines)
    })
    .await?;
    ensure!(
        lines.contains(&(LogStream::Stdout, "hi".to_string())),
        "{lines:?}"
    );
    ensure!(
        lines.contains(&(LogStream::Stderr, "oops".to_string())),
        "{lines:?}"
    );
    ensure!(
        lines.contains(&(LogStream::Stdout, "greeting=hello".to_string())),
        "{lines:?}"
    );
    let tail: Vec<_> = d.logs(&h, LogQuery::last(1)).await?.collect().await;
    ensure!(tail.len() == 1, "{tail:?}");

    let t0 = Instant::now();
    d.stop(&h, &Stop::after(Duration::from_secs(5))).await?;
    ensure!(
        t0.elapsed() < Duration::from_secs(2),
        "SIGTERM stop took {:?}",
        t0.elapsed()
    );
    let o = observed(&d, &h).await?.context("instance not listed")?;
    ensure!(
        o.state == ObservedState::Exited && o.exit_code == Some(143) && o.finished_at.is_some(),
        "{o:?}"
    );
    d.stop(&h, &Stop::after(Duration::from_secs(1))).await?; // stopping a stopped one is fine

    d.remove(&h).await?;
    d.remove(&h).await?;
    ensure!(d.list().await?.iter().all(|o| o.handle != h));
    let err = d
        .logs(&h, LogQuery::default())
        .await
        .err()
        .context("logs of a removed instance")?;
    ensure!(err.kind == DriverErrorKind::NotFound, "{err:?}");
    Ok(())
}

#[tokio::test]
async fn follows_logs_until_exit() -> anyhow::Result<()> {
    let d = ProcessDriver::new();
    let h = run(
        &d,
        &instance(
            "ticker",
            sh("for i in 1 2 3 4 5; do echo tick $i; sleep 0.1; done"),
        ),
    )
    .await?;
    let mut follow = d.logs(&h, LogQuery::last(0).following()).await?;
    let mut seen = Vec::new();
    tokio::time::timeout(T, async {
        while let Some(l) = follow.next().await {
            seen.push(l?.1);
        }
        anyhow::Ok(())
    })
    .await
    .context("the followed stream did not end when the process exited")??;
    ensure!(
        seen.last().map(String::as_str) == Some("tick 5"),
        "{seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn ignored_stop_signal_is_killed_after_grace() -> anyhow::Result<()> {
    let d = ProcessDriver::new();
    let h = run(
        &d,
        &instance(
            "stubborn",
            sh("trap '' TERM INT; echo ready; while true; do sleep 0.05; done"),
        ),
    )
    .await?;
    wait_for("ready", T, || async {
        let lines: Vec<_> = d.logs(&h, LogQuery::default()).await.ok()?.collect().await;
        (!lines.is_empty()).then_some(())
    })
    .await?;
    let t0 = Instant::now();
    d.stop(&h, &Stop::with_signal(Duration::from_millis(500), "SIGINT"))
        .await?;
    let took = t0.elapsed();
    ensure!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(5),
        "stop took {took:?}"
    );
    let o = observed(&d, &h).await?.context("instance not listed")?;
    ensure!(
        o.state == ObservedState::Exited && o.exit_code == Some(137),
        "{o:?}"
    );
    Ok(())
}

#[tokio::test]
async fn crash_exit_code_and_restart() -> anyhow::Result<()> {
    let d = ProcessDriver::new();
    let h = run(&d, &instance("crashy", sh("echo run; exit 7"))).await?;
    let o = wait_observed(&d, &h, "exited", T, |o| o.state == ObservedState::Exited).await?;
    ensure!(o.exit_code == Some(7), "{o:?}");
    d.start(&h).await?;
    wait_for("two runs of output", T, || async {
        let lines: Vec<_> = d.logs(&h, LogQuery::default()).await.ok()?.collect().await;
        (lines.len() == 2).then_some(())
    })
    .await?;
    let o = wait_observed(&d, &h, "exited again", T, |o| {
        o.state == ObservedState::Exited
    })
    .await?;
    ensure!(o.exit_code == Some(7), "{o:?}");
    Ok(())
}

#[tokio::test]
async fn health_check_transitions() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let flag = dir.path().join("healthy");
    let d = ProcessDriver::new();
    let mut spec = sh("exec sleep 30");
    spec.healthcheck = Some(HealthCheck {
        test: vec![
            "CMD".to_string(),
            "cat".to_string(),
            flag.to_string_lossy().into_owned(),
        ],
        interval_ms: 100,
        timeout_ms: 1_000,
        retries: 2,
        start_period_ms: 0,
        start_interval_ms: None,
    });
    let h = run(&d, &instance("checked", spec)).await?;
    let o = observed(&d, &h).await?.context("instance not listed")?;
    ensure!(o.health == Health::Starting, "{o:?}");
    let o = wait_observed(&d, &h, "unhealthy", T, |o| o.health == Health::Unhealthy).await?;
    let out = o.health_output.clone().unwrap_or_default();
    ensure!(out.contains("No such file"), "{o:?}");
    std::fs::write(&flag, "fine\n")?;
    let o = wait_observed(&d, &h, "healthy", T, |o| o.health == Health::Healthy).await?;
    ensure!(o.health_output.is_none(), "{o:?}");

    // CMD-SHELL runs through sh.
    let mut spec = sh("exec sleep 30");
    spec.healthcheck = Some(HealthCheck {
        test: vec!["CMD-SHELL".to_string(), "echo broken; exit 1".to_string()],
        interval_ms: 100,
        timeout_ms: 1_000,
        retries: 1,
        start_period_ms: 0,
        start_interval_ms: None,
    });
    let h2 = run(&d, &instance("shell-checked", spec)).await?;
    let o = wait_observed(&d, &h2, "unhealthy", T, |o| o.health == Health::Unhealthy).await?;
    ensure!(o.health_output.as_deref() == Some("broken"), "{o:?}");
    for h in [h, h2] {
        d.remove(&h).await?;
    }
    Ok(())
}

#[tokio::test]
async fn prepare_rejects_what_cannot_run() -> anyhow::Result<()> {
    let d = ProcessDriver::new();
    let no_command = instance(
        "empty",
        ServiceSpec {
            driver: DriverKind::Process,
            ..Default::default()
        },
    );
    let err = d
        .prepare(&no_command)
        .await
        .err()
        .context("a service without command")?;
    ensure!(
        err.kind == DriverErrorKind::InvalidSpec && err.hint.is_some(),
        "{err:?}"
    );
    let missing = instance(
        "missing",
        ServiceSpec {
            driver: DriverKind::Process,
            command: Some(vec!["wharf-no-such-program".to_string()]),
            ..Default::default()
        },
    );
    let err = d
        .prepare(&missing)
        .await
        .err()
        .context("a missing program")?;
    ensure!(
        err.kind == DriverErrorKind::InvalidSpec && err.message.contains("wharf-no-such-program"),
        "{err:?}"
    );
    let err = d
        .start("wharf-nothing-here")
        .await
        .err()
        .context("start of an unknown handle")?;
    ensure!(err.kind == DriverErrorKind::NotFound, "{err:?}");
    Ok(())
}

/// Not a test on its own: the "agent" process of `children_die_with_the_agent`, which runs it as a
/// child of the test binary (it returns at once unless `WHARF_PDEATH_HELPER` is set).
#[tokio::test]
async fn pdeath_helper() -> anyhow::Result<()> {
    if std::env::var_os("WHARF_PDEATH_HELPER").is_none() {
        return Ok(());
    }
    let d = ProcessDriver::new();
    let h = run(&d, &instance("orphan", sh("echo pid=$$; exec sleep 300"))).await?;
    let line = wait_for("the child's pid", T, || async {
        let lines: Vec<_> = d.logs(&h, LogQuery::default()).await.ok()?.collect().await;
        lines.into_iter().find_map(|l| {
            l.ok()
                .and_then(|(_, s)| s.strip_prefix("pid=").map(str::to_string))
        })
    })
    .await?;
    println!("CHILD_PID={line}");
    tokio::time::sleep(Duration::from_secs(60)).await;
    Ok(())
}

#[tokio::test]
async fn children_die_with_the_agent() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let exe = std::env::current_exe()?;
    let mut helper = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "pdeath_helper",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("WHARF_PDEATH_HELPER", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(helper.stdout.take().context("no stdout")?).lines();
    let pid: i32 = tokio::time::timeout(T, async {
        while let Some(l) = lines.next_line().await? {
            if let Some((_, p)) = l.split_once("CHILD_PID=") {
                return Ok(p.trim().parse()?);
            }
        }
        anyhow::bail!("the helper ended without printing its child's pid")
    })
    .await
    .context("timed out waiting for the helper's child pid")??;
    let alive = |pid: i32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    ensure!(alive(pid), "the child {pid} is not running");
    helper.start_kill()?; // SIGKILL: no chance to clean up
    helper.wait().await?;
    wait_for("the orphaned child to die with its agent", T, || async {
        // A zombie until reaped by init counts as dead.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if !alive(pid) || zombie {
            Check::Done(())
        } else {
            not_yet(stat)
        }
    })
    .await
}

/// A process instance finds its secret files in the tmpfs directory `WHARF_SECRETS_DIR` names,
/// each by its target's file name (issue 10).
#[tokio::test]
async fn a_process_instance_reads_its_secrets_where_wharf_secrets_dir_says() -> anyhow::Result<()> {
    use base64::Engine;
    use wharf_types::{FileRef, FileValue, ObjectKind, Secret};
    let d = ProcessDriver::new();
    let mut spec = sh(
        "cat \"$WHARF_SECRETS_DIR/db_password\"; echo; echo \"dir=$WHARF_SECRETS_DIR\"; exec sleep 30",
    );
    spec.secrets.push(FileRef {
        source: "db_password".into(),
        target: "/run/secrets/db_password".into(),
        name: "proc_db_password".into(),
        version: 1,
        ..FileRef::default()
    });
    let inst = instance("secretive", spec);
    let files = wharf_agent::files::Files::new(None);
    let values = wharf_agent::files::values(&[FileValue {
        kind: ObjectKind::Secret,
        name: "proc_db_password".into(),
        version: 1,
        data: Secret(base64::engine::general_purpose::STANDARD.encode("pr0cess-pw")),
    }]);
    let mounted = files.materialize(&inst.name(), &inst.spec, &values)?;
    d.prepare(&inst).await?;
    let h = d.create_with_files(&inst, &mounted).await?;
    d.start(&h).await?;
    let lines = wait_for("the secret and its directory printed", T, || async {
        let lines: Vec<String> = d
            .logs(&h, LogQuery::default())
            .await
            .ok()?
            .filter_map(|l| async { l.ok().map(|(_, l)| l) })
            .collect()
            .await;
        (lines.len() >= 2).then_some(lines)
    })
    .await?;
    ensure!(lines[0] == "pr0cess-pw", "{lines:?}");
    ensure!(lines[1].starts_with("dir=/dev/shm/"), "{lines:?}");
    d.stop(&h, &Stop::after(Duration::from_secs(1))).await?;
    d.remove(&h).await?;
    Ok(())
}
