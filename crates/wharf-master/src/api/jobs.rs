//! `/v1/jobs`: services that run to completion (`replicated-job`, `global-job`, `x-wharf:
//! schedule`) with their runs as the deployer records them (`model::JobRecord`), and `run`,
//! which asks for a run now (a counter the deployer acts on at its next pass). A run's logs are
//! its instances' (`GET /v1/services/{stack}/{service}/logs?slot=`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use wharf_store::{Compare, Op, Txn};
use wharf_types::*;

use super::commit_guarded;
use super::error::{ApiFailure, ApiQuery, ApiResult, not_found_service};
use crate::model::{JobRecord, JobRequest, ServiceRecord, encode, keys};
use crate::mutate::Actor;
use crate::policy::Caller;
use crate::{Master, now_ms};

/// The routes of jobs (merged into the router's authenticated ones).
pub(super) fn routes() -> axum::Router<Master> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{stack}/{service}", get(get_job))
        .route("/v1/jobs/{stack}/{service}/run", post(run_job))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct JobsQuery {
    /// Only jobs of this stack.
    stack: Option<String>,
}

/// How a job stands: its schedule's next time, its newest run, and (`with_runs`) its runs.
fn job_info(s: &ServiceRecord, rec: Option<&JobRecord>, now: u64, with_runs: bool) -> JobInfo {
    let next_run_at = s.spec.wharf.schedule.as_ref().and_then(|j| {
        let schedule =
            wharf_compose::schedule::Schedule::parse(&j.cron, j.timezone.as_deref()).ok()?;
        schedule.next_after(rec.map_or(now, |r| r.scheduled_through.max(now)))
    });
    let runs = rec.map(|r| r.runs.clone()).unwrap_or_default();
    JobInfo {
        stack: s.stack.clone(),
        service: s.name.clone(),
        mode: s.spec.deploy.mode,
        schedule: s.spec.wharf.schedule.clone(),
        next_run_at,
        last_run: runs.last().cloned(),
        runs: if with_runs { runs } else { Vec::new() },
    }
}

#[utoipa::path(get, path = "/v1/jobs", params(JobsQuery), responses((status = 200, body = [JobInfo])))]
pub(crate) async fn list_jobs(
    State(m): State<Master>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<JobsQuery>,
) -> ApiResult<Vec<JobInfo>> {
    let (services, _) = m.decoded::<ServiceRecord>(keys::SERVICES).await?;
    let (records, _) = m.decoded::<JobRecord>(keys::JOBS).await?;
    let now = now_ms();
    let out = services
        .iter()
        .map(|d| &*d.value)
        .filter(|s| s.spec.is_job())
        .filter(|s| q.stack.as_ref().is_none_or(|st| &s.stack == st) && caller.sees(&s.stack))
        .map(|s| {
            let key = keys::job(&s.stack, &s.name);
            let rec = records.iter().find(|r| r.key == key).map(|r| &*r.value);
            job_info(s, rec, now, false)
        })
        .collect();
    Ok(Json(out))
}

/// The service `stack/service`, which must be a job.
async fn job_service(m: &Master, stack: &str, service: &str) -> Result<ServiceRecord, ApiFailure> {
    let (s, _) = m
        .service(stack, service)
        .await?
        .ok_or_else(|| not_found_service(stack, service))?;
    if !s.spec.is_job() {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "not_a_job",
            format!("service {service} of stack {stack} is not a job"),
        )
        .hint(
            "a job has `deploy.mode: replicated-job` or `global-job`, or `x-wharf: {schedule: …}`; \
             list jobs with `wharf job ls`",
        ));
    }
    Ok(s)
}

#[utoipa::path(get, path = "/v1/jobs/{stack}/{service}", params(("stack" = String, Path), ("service" = String, Path)),
    responses((status = 200, body = JobInfo), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the service is not a job")))]
pub(crate) async fn get_job(
    State(m): State<Master>,
    Path((stack, service)): Path<(String, String)>,
) -> ApiResult<JobInfo> {
    let s = job_service(&m, &stack, &service).await?;
    let key = keys::job(&stack, &service);
    let rec: Option<JobRecord> = match m.store.get(&key).await.map_err(crate::Error::from)? {
        Some(kv) => Some(crate::model::decode(&key, &kv.value)?),
        None => None,
    };
    Ok(Json(job_info(&s, rec.as_ref(), now_ms(), true)))
}

#[utoipa::path(post, path = "/v1/jobs/{stack}/{service}/run", params(("stack" = String, Path), ("service" = String, Path)),
    responses((status = 200, body = JobRunRequested), (status = 404, body = ApiError), (status = 409, body = ApiError, description = "the service is not a job")))]
pub(crate) async fn run_job(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path((stack, service)): Path<(String, String)>,
) -> ApiResult<JobRunRequested> {
    job_service(&m, &stack, &service).await?;
    let key = keys::job_request(&stack, &service);
    let (mut req, rev) = match m.store.get(&key).await.map_err(crate::Error::from)? {
        Some(kv) => (
            crate::model::decode::<JobRequest>(&key, &kv.value)?,
            kv.mod_revision,
        ),
        None => (JobRequest::default(), 0),
    };
    let now = now_ms();
    req.count += 1;
    req.at = now;
    let txn = Txn::new()
        .when([Compare::unchanged_since(key.clone(), rev)])
        .then([Op::put(key, encode(&req))]);
    let target = format!("{stack}/{service}");
    commit_guarded(
        &m,
        &actor,
        "job.run",
        &target,
        now,
        txn,
        "the job's run requests",
    )
    .await?;
    Ok(Json(JobRunRequested {
        requested: req.count,
    }))
}
