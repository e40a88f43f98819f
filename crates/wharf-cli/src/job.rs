//! `wharf job`: jobs (services that run to completion) with their schedules and runs, a run
//! started now, and a run's logs (its instances' logs, by slot, through the service log path).

use wharf_types::{JobInfo, JobRun, LogQuery, RunState};

use crate::args::JobCmd;
use crate::cmd::{ClientFn, logs, resolve};
use crate::error::CliError;
use crate::output::{Listing, emit};
use crate::render::{self, table};

pub async fn job(cmd: JobCmd, list: Listing, client: &ClientFn<'_>) -> Result<(), CliError> {
    let client = client()?;
    match cmd {
        JobCmd::Ls { stack } => {
            let jobs = client.list_jobs(stack.as_deref()).await?;
            list.print(
                "job",
                &jobs,
                |j| format!("{}/{}", j.stack, j.service),
                |jobs, _| jobs_table(jobs, render::now_ms()),
            );
            Ok(())
        }
        JobCmd::Run { job } => {
            let r = resolve(&client, &job).await?;
            let reply = client.run_job(&r.stack, &r.service).await?;
            emit(list.output, &reply, |_| {
                println!(
                    "asked for a run of {r}; follow it with `wharf job ps {r}` and read it with \
                     `wharf job logs {r}`"
                )
            });
            Ok(())
        }
        JobCmd::Ps { job } => {
            let r = resolve(&client, &job).await?;
            let info = client.get_job(&r.stack, &r.service).await?;
            list.print(
                "run",
                &info.runs,
                |run| run.id.to_string(),
                |runs, _| runs_table(runs),
            );
            Ok(())
        }
        JobCmd::Logs {
            job,
            run,
            follow,
            timestamps,
        } => {
            let r = resolve(&client, &job).await?;
            let info = client.get_job(&r.stack, &r.service).await?;
            let chosen = match run {
                Some(id) => info.runs.iter().find(|x| x.id == id).ok_or_else(|| {
                    CliError::bad_input(
                        format!("job {r} has no run {id} (kept)"),
                        Some(format!("list its runs with `wharf job ps {r}`")),
                    )
                })?,
                None => info
                    .runs
                    .iter()
                    .rev()
                    .find(|x| !x.tasks.is_empty())
                    .ok_or_else(|| {
                        CliError::bad_input(
                            format!("job {r} has no run with logs yet"),
                            Some(format!("start one with `wharf job run {r}`")),
                        )
                    })?,
            };
            for t in &chosen.tasks {
                let q = LogQuery {
                    follow,
                    timestamps,
                    slot: Some(t.slot),
                    ..LogQuery::default()
                };
                logs(&client, &r, &q, list.output.is_document()).await?;
            }
            Ok(())
        }
    }
}

/// `05-29 14:03:04` (UTC), or `-`.
fn at(ms: Option<u64>) -> String {
    use chrono::TimeZone;
    ms.and_then(|ms| chrono::Utc.timestamp_millis_opt(ms as i64).single())
        .map(|t| t.format("%m-%d %H:%M:%S%.3f").to_string())
        .unwrap_or_else(|| "-".into())
}

fn outcome(run: &JobRun) -> String {
    match (run.state, run.exit_code) {
        (RunState::Failed, Some(code)) => format!("failed ({code})"),
        (state, _) => render::lower(&state),
    }
}

/// `wharf job ls`.
pub fn jobs_table(jobs: &[JobInfo], now_ms: u64) -> String {
    let rows = jobs
        .iter()
        .map(|j| {
            let schedule = match &j.schedule {
                Some(s) => match &s.timezone {
                    Some(tz) => format!("{} ({tz})", s.cron),
                    None => s.cron.clone(),
                },
                None => render::lower(&j.mode),
            };
            vec![
                format!("{}/{}", j.stack, j.service),
                schedule,
                j.last_run
                    .as_ref()
                    .map(|r| render::ago(now_ms, r.started_at.unwrap_or(r.created_at)))
                    .unwrap_or_else(|| "-".into()),
                j.next_run_at
                    .map(|t| at(Some(t)))
                    .unwrap_or_else(|| "-".into()),
                j.last_run
                    .as_ref()
                    .map(outcome)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    table(
        &[
            "JOB",
            "SCHEDULE",
            "LAST RUN",
            "NEXT RUN (UTC)",
            "LAST OUTCOME",
        ],
        rows,
    )
}

/// `wharf job ps`.
pub fn runs_table(runs: &[JobRun]) -> String {
    let rows = runs
        .iter()
        .rev()
        .map(|r| {
            let mut nodes: Vec<&str> = r.tasks.iter().map(|t| t.node.as_str()).collect();
            nodes.dedup();
            vec![
                r.id.to_string(),
                render::lower(&r.trigger),
                at(r.scheduled_at),
                at(r.started_at),
                at(r.ended_at.filter(|_| r.started_at.is_some())),
                r.duration_ms()
                    .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                match (r.state, &r.message) {
                    (RunState::Skipped | RunState::Replaced, Some(m)) => {
                        format!("{}: {m}", render::lower(&r.state))
                    }
                    _ => outcome(r),
                },
                r.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                if nodes.is_empty() {
                    "-".into()
                } else {
                    nodes.join(",")
                },
            ]
        })
        .collect();
    table(
        &[
            "RUN",
            "TRIGGER",
            "SCHEDULED",
            "STARTED",
            "ENDED",
            "DURATION",
            "STATE",
            "EXIT",
            "NODE",
        ],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::{RunTask, RunTrigger};

    fn run(id: u64, state: RunState, exit_code: Option<i64>, message: Option<&str>) -> JobRun {
        let started = (state != RunState::Skipped).then_some(1_000 + id * 5_000 + 300);
        JobRun {
            id,
            trigger: RunTrigger::Schedule,
            scheduled_at: Some(1_000 + id * 5_000),
            created_at: 1_000 + id * 5_000,
            started_at: started,
            ended_at: Some(1_000 + id * 5_000 + 2_800),
            state,
            exit_code,
            message: message.map(String::from),
            tasks: started
                .map(|_| RunTask {
                    slot: (id * 1_000) as u32,
                    generation: id,
                    node: "node-1".into(),
                    started_at: started,
                    ended_at: Some(1_000 + id * 5_000 + 2_800),
                    exit_code,
                    restarts: 0,
                })
                .into_iter()
                .collect(),
        }
    }

    #[test]
    fn runs_newest_first_with_durations_exit_codes_and_why_skipped() {
        let t = runs_table(&[
            run(1, RunState::Succeeded, Some(0), None),
            run(
                2,
                RunState::Skipped,
                None,
                Some("the previous run was still running"),
            ),
            run(3, RunState::Failed, Some(5), None),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("RUN"), "{t}");
        assert!(
            lines[1].starts_with('3') && lines[1].contains("failed (5)"),
            "{t}"
        );
        assert!(
            lines[1].contains("2.5s") && lines[1].contains("node-1"),
            "{t}"
        );
        assert!(
            lines[2].contains("skipped: the previous run was still running"),
            "{t}"
        );
        assert!(
            lines[3].starts_with('1') && lines[3].contains("succeeded"),
            "{t}"
        );
    }
}
