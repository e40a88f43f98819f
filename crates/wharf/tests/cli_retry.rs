//! The CLI keeps following through a master restart (issue 8, "never lose, never duplicate"):
//! `wharf stack deploy` follows a slow rollout, `wharf up` is killed with SIGKILL and stays down
//! longer than the CLI used to tolerate (5 s), then starts again on the same data directory. The
//! CLI says it lost the API, says when it is back, and exits 0 with the deploy done.

mod common;

use std::fs::File;
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use wharf_testkit::{not_yet, wait_for};

/// How long the API stays down: well beyond the old limit of about 5 s.
const API_DOWN: Duration = Duration::from_secs(8);

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A still-running child has not exited; a dead one fails the test with its output.
fn assert_running(cli: &mut Child, what: &str, out: &Path, err: &Path) {
    if let Ok(Some(status)) = cli.try_wait() {
        panic!(
            "the CLI exited ({status}) {what}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            read(out),
            read(err)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn deploy_follows_through_a_master_restart_and_exits_0() {
    let (mut w, stack) = Wharf::start_for("cliretry").await;
    // Slow starters: the rollout is still under way when the master dies and while it is down.
    let extra = format!(
        "    environment:\n      START_DELAY_MS: \"12000\"\n{HEALTHCHECK}      start_period: 30s\n"
    );
    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 2, &extra));
    let (out_path, err_path) = (
        w.dir.path().join("deploy.stdout"),
        w.dir.path().join("deploy.stderr"),
    );
    let mut cli = cli_command(
        &w.config_dir(),
        &["stack", "deploy", "-c", file.to_str().unwrap()],
    )
    .stdout(Stdio::from(File::create(&out_path).unwrap()))
    .stderr(Stdio::from(File::create(&err_path).unwrap()))
    .spawn()
    .expect("spawn wharf stack deploy");

    // The CLI follows a deployment that is under way: its containers exist, none is ready.
    wait_for(
        "the deploy's containers to be created",
        Duration::from_secs(30),
        || async {
            let cs = containers(&stack).await;
            if cs.len() == 2 { Some(()) } else { None }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n--- stderr ---\n{}", read(&err_path)));
    assert_running(
        &mut cli,
        "before the master was killed",
        &out_path,
        &err_path,
    );
    assert!(
        read(&out_path).contains("updated"),
        "the CLI shows the rollout's progress: {}",
        read(&out_path)
    );

    w.kill9();
    wait_for(
        "the CLI to say on stderr that it lost the API",
        Duration::from_secs(10),
        || async {
            let e = read(&err_path);
            if e.contains("lost the API") {
                Some(())
            } else {
                None
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            read(&out_path),
            read(&err_path)
        )
    });
    // Keep the API down; the CLI must keep waiting all along.
    let down_until = Instant::now() + API_DOWN;
    while Instant::now() < down_until {
        assert_running(
            &mut cli,
            "while the API was down (it must wait for the master)",
            &out_path,
            &err_path,
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_running(&mut cli, "while the API was down", &out_path, &err_path);

    w.launch(&[]).await;
    let status: ExitStatus = wait_for(
        "the CLI to exit once the deploy is done",
        Duration::from_secs(120),
        || {
            let r = cli.try_wait().ok().flatten();
            async move {
                match r {
                    Some(s) => wharf_testkit::Check::Done(s),
                    None => not_yet("still following"),
                }
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        let _ = cli.kill();
        panic!(
            "{e}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- wharf up log (tail) ---\n{}",
            read(&out_path),
            read(&err_path),
            tail(&w.log(), 40)
        )
    });
    let (so, se) = (read(&out_path), read(&err_path));
    let context = format!(
        "--- stdout ---\n{so}\n--- stderr ---\n{se}\n--- wharf up log (tail) ---\n{}",
        tail(&w.log(), 40)
    );
    assert_eq!(
        status.code(),
        Some(0),
        "wharf stack deploy exit code\n{context}"
    );
    let url = w.url();
    assert_eq!(
        se.matches("lost the API").count(),
        1,
        "the loss is said once\n{context}"
    );
    assert!(
        se.contains(&format!("lost the API at {url} (")) && se.contains("retrying for up to 60 s"),
        "stderr says the API was lost and that it retries\n{context}"
    );
    assert!(
        se.contains(&format!("the API at {url} is back after ")),
        "stderr says the API is back\n{context}"
    );
    assert!(
        so.contains(&format!("deployed stack {stack}")),
        "stdout ends with the deploy's success\n{context}"
    );

    // The stack runs exactly its replicas, adopted across the restart.
    w.wait_ready(&stack, "web", 2, Duration::from_secs(30))
        .await;
    let cs = containers(&stack).await;
    assert_eq!(cs.len(), 2, "exactly the replicas as containers: {cs:?}");
    assert!(cs.iter().all(|(_, _, running)| *running), "{cs:?}");
}
