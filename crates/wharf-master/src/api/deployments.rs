//! `/v1/deployments`: a deployment's progress, with a long poll for its next change; and the
//! superseding of a stack's running deployment by a new one.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use futures::StreamExt;
use serde::Deserialize;
use wharf_store::Op;
use wharf_types::*;

use super::error::{ApiFailure, ApiQuery, ApiResult};
use crate::model::{StackRecord, encode, keys};
use crate::policy::Caller;
use crate::{Error, Master, now_ms};

/// Ops that mark the stack's running deployment as superseded by a new one.
pub(crate) async fn supersede(m: &Master, prev: Option<&StackRecord>) -> Result<Vec<Op>, Error> {
    let Some(id) = prev.and_then(|p| p.last_deployment.as_ref()) else {
        return Ok(vec![]);
    };
    match m.deployment(id).await? {
        Some(mut d) if d.state == DeploymentState::InProgress => {
            d.state = DeploymentState::Superseded;
            d.updated_at = now_ms();
            Ok(vec![Op::put(keys::deployment(id), encode(&d))])
        }
        _ => Ok(vec![]),
    }
}

/// Long-polling a deployment: `?after=UPDATED_AT&wait_ms=N` answers as soon as the deployment
/// changed after `after` (its `updated_at`) or ended, or after `wait_ms` (at most 30 s) with it
/// as it is. Without them it answers at once.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct WaitQuery {
    /// The `updated_at` the caller has seen.
    after: Option<u64>,
    /// How long to wait for a change, in milliseconds (at most 30,000).
    wait_ms: Option<u64>,
}

/// The longest a long-poll waits.
pub(crate) const MAX_WAIT_MS: u64 = 30_000;

#[utoipa::path(get, path = "/v1/deployments/{id}", params(("id" = String, Path), WaitQuery),
    responses((status = 200, body = Deployment), (status = 404, body = ApiError)))]
pub(crate) async fn get_deployment(
    State(m): State<Master>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult<Deployment> {
    let not_found = || -> ApiFailure {
        Error::NotFound {
            what: format!("deployment {id}"),
            hint: None,
        }
        .into()
    };
    let key = keys::deployment(&id);
    // The record now, and the revision it was written at.
    let fetch = || async {
        let kv = m
            .store
            .get(&key)
            .await
            .map_err(Error::from)?
            .ok_or_else(not_found)?;
        let d: Deployment = crate::model::decode(&key, &kv.value)?;
        Ok::<_, ApiFailure>((kv.mod_revision, d))
    };
    let (rev, mut d) = fetch().await?;
    if !caller.sees(&d.stack) {
        // Outside the scope: as if there were none (ids are not secrets, stacks' names may be).
        return Err(not_found());
    }
    let (Some(after), Some(wait)) = (q.after, q.wait_ms) else {
        return Ok(Json(d));
    };
    let answers = |d: &Deployment| d.updated_at > after || d.state != DeploymentState::InProgress;
    if answers(&d) {
        return Ok(Json(d));
    }
    // Wait for a write of the record that moves `updated_at` on or ends it: a write can also
    // land in the same millisecond, or change nothing the caller sees.
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(wait.min(MAX_WAIT_MS));
    let mut changes = m.store.watch(&key, rev + 1).await.map_err(Error::from)?;
    // Until timed out, or the watch ended: then the record as it is now.
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, changes.next()).await {
        d = fetch().await?.1;
        if answers(&d) {
            return Ok(Json(d));
        }
    }
    Ok(Json(fetch().await?.1))
}

impl Master {
    pub async fn deployment(&self, id: &str) -> Result<Option<Deployment>, Error> {
        let key = keys::deployment(id);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(crate::model::decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }
}

/// `?stack=NAME&limit=N` of `GET /v1/deployments`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only the deployments of this stack.
    stack: Option<String>,
    /// At most this many, newest first (default 50, at most 1,000).
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/deployments", params(ListQuery),
    responses((status = 200, body = [Deployment])))]
pub(crate) async fn list_deployments(
    State(m): State<Master>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Vec<Deployment>> {
    let (kvs, _) = m
        .store
        .range(keys::DEPLOYMENTS)
        .await
        .map_err(Error::from)?;
    let mut out = Vec::new();
    for kv in kvs {
        let d: Deployment = crate::model::decode(&kv.key, &kv.value)?;
        if caller.sees(&d.stack) && q.stack.as_ref().is_none_or(|s| *s == d.stack) {
            out.push(d);
        }
    }
    out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    out.truncate(q.limit.unwrap_or(50).clamp(1, 1_000));
    Ok(Json(out))
}
