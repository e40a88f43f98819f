//! `/v1/stacks`: list, show, diff, deploy (one guarded transaction, retried when the stack moved)
//! and remove stacks.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use wharf_store::{Compare, Op, Txn};
use wharf_types::*;

use super::commit_guarded;
use super::deployments::supersede;
use super::error::{ApiFailure, ApiJson, ApiQuery, ApiResult, not_found_stack};
use crate::diff::stack_diff;
use crate::model::{Removal, ServiceRecord, StackRecord, encode, keys};
use crate::mutate::Actor;
use crate::policy::Caller;
use crate::{Error, Master, new_id, now_ms, rollout};

pub(crate) async fn summary(m: &Master, rec: &StackRecord) -> Result<StackSummary, Error> {
    let services = m.services(&rec.name).await?;
    let insts = m.instances(&keys::instances_of_stack(&rec.name)).await?;
    let reports = m.reports().await?;
    let running = insts
        .iter()
        .filter(|i| rollout::is_ready(rollout::report_of(i, &reports)))
        .count();
    Ok(StackSummary {
        name: rec.name.clone(),
        revision: rec.revision,
        services: services.len() as u32,
        instances_desired: services.values().map(|s| s.replicas).sum(),
        instances_running: running as u32,
        updated_at: rec.updated_at,
    })
}

#[utoipa::path(get, path = "/v1/stacks", responses((status = 200, body = [StackSummary])))]
pub(crate) async fn list_stacks(
    State(m): State<Master>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Vec<StackSummary>> {
    let mut out = Vec::new();
    for rec in m
        .stacks()
        .await?
        .into_iter()
        .filter(|r| caller.sees(&r.name))
    {
        out.push(summary(&m, &rec).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/v1/stacks/{stack}", params(("stack" = String, Path)),
    responses((status = 200, body = StackInfo), (status = 404, body = ApiError)))]
pub(crate) async fn get_stack(
    State(m): State<Master>,
    Path(stack): Path<String>,
) -> ApiResult<StackInfo> {
    let (rec, _) = m
        .stack(&stack)
        .await?
        .ok_or_else(|| not_found_stack(&stack))?;
    let deployment = match &rec.last_deployment {
        Some(id) => m.deployment(id).await?,
        None => None,
    };
    let mut spec = rec.spec.clone();
    spec.redact_secrets(); // private keys never leave the master
    Ok(Json(StackInfo {
        summary: summary(&m, &rec).await?,
        spec,
        deployment,
    }))
}

/// Every build context of `spec` under one of `roots` (absolute, no `..`).
fn check_build_roots(spec: &StackSpec, roots: &[std::path::PathBuf]) -> Result<(), ApiFailure> {
    use std::path::{Component, Path};
    for (name, s) in &spec.services {
        let Some(b) = &s.build else { continue };
        let ctx = Path::new(&b.context);
        let plain = !ctx.components().any(|c| c == Component::ParentDir);
        if plain && roots.iter().any(|r| ctx.starts_with(r)) {
            continue;
        }
        let allowed = if roots.is_empty() {
            "this master allows no builds".to_string()
        } else {
            let list: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
            format!("the allowed roots are {}", list.join(", "))
        };
        let mut f = ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!(
                "services.{name}.build.context: {:?} is outside the build roots: {allowed}",
                wharf_types::excerpt(&b.context, 200)
            ),
        )
        .hint("build from a directory under a root, or start the master with --build-root DIR");
        f.1.location = Some(format!("services.{name}.build.context"));
        return Err(f);
    }
    Ok(())
}

/// Judge the deploy against the admission policy (`admission.rs`): refused (422
/// `policy_refused`, naming the rule, the field, its `file:line:column` when the request says
/// where it was written, and the policy file key that allows it) before anything is written.
/// A refused deploy is audited with the rule when `actor` is given (a diff only reads).
async fn check_admission(
    m: &Master,
    actor: Option<&Actor>,
    stack: &str,
    req: &DeployRequest,
) -> Result<(), ApiFailure> {
    let refusals = crate::admission::judge(&m.config.admission.policy, &req.spec);
    if refusals.is_empty() {
        return Ok(());
    }
    let (message, location, hint) = crate::admission::explain(&refusals, stack, &req.sources);
    if let Some(actor) = actor {
        let rules: Vec<String> = refusals
            .iter()
            .map(|r| format!("{} ({})", r.rule.as_str(), r.field))
            .collect();
        let summary = format!("refused by the admission policy: {}", rules.join(", "));
        m.audit_refused(actor, "stack.deploy", stack, now_ms(), summary)
            .await?;
    }
    let mut f =
        ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "policy_refused", message).hint(hint);
    f.1.location = Some(location);
    Err(f)
}

/// Refuse the deploy (422 `scan_refused`, with every finding at or above each service's
/// `x-wharf: {scan: {block: …}}`) before anything is written; the refusal is audited.
async fn check_scans(
    m: &Master,
    actor: &Actor,
    stack: &str,
    spec: &StackSpec,
) -> Result<(), ApiFailure> {
    let blocked = match m.scan_blocks(spec).await {
        Ok(b) => b,
        Err(e) => {
            let message = format!("cannot check the images' scan policies: {e}");
            m.audit_refused(actor, "stack.deploy", stack, now_ms(), message.clone())
                .await?;
            return Err(
                ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "scan_refused", message).hint(
                    "a service with `x-wharf: {scan: {block: …}}` deploys only an image a node has and a scan passes: build or pull it on a node first",
                ),
            );
        }
    };
    let Some((service, block, _)) = blocked.first() else {
        return Ok(());
    };
    let mut lines = vec![];
    for (svc, b, scan) in &blocked {
        for f in &scan.findings {
            lines.push(format!(
                "services.{svc} ({}): {} {} in {} {}{} (blocks at {})",
                scan.image,
                f.severity.word(),
                f.id,
                f.package,
                f.installed,
                f.fixed
                    .as_ref()
                    .map(|v| format!(", fixed in {v}"))
                    .unwrap_or_default(),
                b.word(),
            ));
        }
    }
    m.audit_refused(
        actor,
        "stack.deploy",
        stack,
        now_ms(),
        format!("refused by image scans: {}", lines.join("; ")),
    )
    .await?;
    let mut f = ApiFailure::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "scan_refused",
        format!("{} finding(s) block this deploy:\n{}", lines.len(), lines.join("\n")),
    )
    .hint(format!(
        "deploy an image with the fixes (`wharf image scan IMAGE` lists them), or lower `x-wharf: {{scan: {{block: {}}}}}` of services.{service} (the cluster's policy file may set a stricter `scan: {{block:}}` of its own)",
        block.word()
    ));
    f.1.location = Some(format!("services.{service}.x-wharf.scan.block"));
    Err(f)
}

pub(crate) fn validate(stack: &str, spec: &StackSpec) -> Result<(), ApiFailure> {
    if let Err(msg) = wharf_compose::validate_stack_name(stack) {
        return Err(ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", msg).hint(
            "stack names are lower-case letters, digits, '-' and '_', starting with a letter or digit",
        ));
    }
    if spec.name != stack {
        return Err(ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!(
                "stack name in the path ({stack}) differs from spec.name ({})",
                spec.name
            ),
        )
        .hint("send the spec to /v1/stacks/<spec.name>"));
    }
    if let Err(errs) = wharf_compose::validate_spec(spec) {
        let first = &errs[0];
        let message = errs
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        let mut f = ApiFailure::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message);
        f.1.location = Some(first.path.clone());
        f.1.hint = first.hint.clone();
        return Err(f);
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/stacks/{stack}/diff", params(("stack" = String, Path)), request_body = DeployRequest,
    responses((status = 200, body = StackDiff), (status = 422, body = ApiError)))]
pub(crate) async fn diff(
    State(m): State<Master>,
    Path(stack): Path<String>,
    Extension(actor): Extension<Actor>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> ApiResult<StackDiff> {
    validate(&stack, &req.spec)?;
    check_build_roots(&req.spec, &m.config.build_roots)?;
    check_admission(&m, None, &stack, &req).await?;
    // The versions the deploy would mount (a new value shows as the next version); nothing is
    // written.
    let mut spec = req.spec.clone();
    m.resolve_objects(&actor, &mut spec, values(&req), now_ms())
        .await?;
    pin(&m, &mut spec).await?;
    let services = m.services(&stack).await?;
    Ok(Json(stack_diff(&services, &spec)))
}

/// Pin the images of the cluster's registry to their digests (`registry::pin`); a tag that is
/// not there refuses the deploy (422 `image_unknown`) before anything is written.
pub(crate) async fn pin(m: &Master, spec: &mut StackSpec) -> Result<(), ApiFailure> {
    m.pin_images(spec).await?.map_err(unpinned)
}

/// The refusal of an image that cannot be pinned.
pub(crate) fn unpinned(u: crate::registry::pin::Unpinned) -> ApiFailure {
    let mut f = ApiFailure::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "image_unknown",
        format!("image {}: {}", u.image, u.why),
    )
    .hint("push the image to the cluster's registry first (docker push), or correct its tag");
    f.1.location = Some(format!("services.{}.image", u.service));
    f
}

fn values(req: &DeployRequest) -> [&BTreeMap<String, Secret>; 2] {
    [&req.secret_values, &req.config_values]
}

/// A caller without `manage_secrets` (a deployer) may define and mount only the stack's own
/// secrets and configs, named `<stack>_…`: else a CI token could mount another team's secret
/// into a container it controls and read it. Refused (403) and audited.
async fn check_object_names(
    m: &Master,
    actor: &Actor,
    stack: &str,
    spec: &StackSpec,
) -> Result<(), ApiFailure> {
    use crate::policy::{Permission, allows};
    if actor
        .role
        .is_none_or(|r| allows(r, Permission::ManageSecrets))
    {
        return Ok(());
    }
    let own = format!("{stack}_");
    // `shop_eu_db` starts with `shop_` but is stack `shop_eu`'s: not the stack's own either.
    let others: Vec<String> = m
        .stacks()
        .await?
        .into_iter()
        .filter(|r| r.name.len() > stack.len() && r.name.starts_with(&own))
        .map(|r| format!("{}_", r.name))
        .collect();
    let foreign =
        |name: &str| !name.starts_with(&own) || others.iter().any(|o| name.starts_with(o));
    for kind in [ObjectKind::Secret, ObjectKind::Config] {
        let objects = crate::secrets::objects_of(spec, kind);
        let Some((key, obj)) = objects.iter().find(|(_, o)| foreign(&o.name)) else {
            continue;
        };
        m.audit_denied(actor, "stack.deploy", stack, now_ms())
            .await?;
        let role = actor.role.map_or("none", |r| r.as_str());
        return Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{}s.{key}: the {} {} is not the stack's own (its name must start with {own}); \
                 using it needs the manage_secrets permission, which role {role} lacks",
                kind.as_str(),
                kind.as_str(),
                obj.name
            ),
        )
        .hint(format!(
            "name it {own}{key}, or have an operator deploy the stack"
        )));
    }
    Ok(())
}

/// After a new version of a secret or config: deploy again every stack that uses it, so its
/// consumers roll to the new version (a deploy resolves each entry to its current version).
/// Returns `stack (deployment id)` for each.
pub(crate) async fn roll_consumers(
    m: &Master,
    actor: &Actor,
    kind: ObjectKind,
    name: &str,
) -> Result<Vec<String>, ApiFailure> {
    let mut rolled = Vec::new();
    for stack in m.object_stacks(kind, name).await? {
        rolled.extend(redeploy(m, actor, &stack).await?);
    }
    m.hub.nudge();
    Ok(rolled)
}

/// Deploy every stack again whose services mount an older version of a secret or config than
/// the current one: what a master killed between storing a new version and rolling its
/// consumers (`roll_consumers`, a transaction of its own per stack) left behind. Run at start.
pub async fn roll_stale_consumers(m: &Master) -> Result<Vec<String>, ApiFailure> {
    let actor = Actor::named("wharf server");
    let mut rolled = Vec::new();
    for rec in m.stacks().await? {
        if rec.removing.is_some() {
            continue;
        }
        let mut stale = false;
        for (kind, f) in rec.spec.services.values().flat_map(|s| s.files()) {
            if m.inspect_object(kind, &f.name)
                .await
                .is_ok_and(|o| o.current > f.version)
            {
                stale = true;
                break;
            }
        }
        if stale {
            rolled.extend(redeploy(m, &actor, &rec.name).await?);
        }
    }
    if !rolled.is_empty() {
        m.hub.nudge();
    }
    Ok(rolled)
}

/// Deploy the stored spec of `stack` again (its secrets and configs at their current
/// versions): `stack (deployment id)` when that changed something.
async fn redeploy(m: &Master, actor: &Actor, stack: &str) -> Result<Option<String>, ApiFailure> {
    for attempt in 1..=DEPLOY_ATTEMPTS {
        let Some((rec, _)) = m.stack(stack).await? else {
            return Ok(None);
        };
        let req = DeployRequest::of(rec.spec.clone());
        if let Some(resp) = deploy_once(m, actor, stack, &req, attempt).await? {
            return Ok(resp
                .deployment_id
                .map(|id| format!("{stack} (deployment {id})")));
        }
    }
    Ok(None)
}

#[utoipa::path(put, path = "/v1/stacks/{stack}", params(("stack" = String, Path)), request_body = DeployRequest,
    responses((status = 200, body = DeployResponse), (status = 409, body = ApiError),
        (status = 422, body = ApiError, description = "invalid, or refused by the admission policy (`policy_refused`)")))]
pub(crate) async fn deploy(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(stack): Path<String>,
    ApiJson(req): ApiJson<DeployRequest>,
) -> ApiResult<DeployResponse> {
    validate(&stack, &req.spec)?;
    check_build_roots(&req.spec, &m.config.build_roots)?;
    check_object_names(&m, &actor, &stack, &req.spec).await?;
    check_admission(&m, Some(&actor), &stack, &req).await?;
    check_scans(&m, &actor, &stack, &req.spec).await?;
    // Every record the deploy rewrites is guarded by its revision; a controller write in between
    // (a rollback, a cleared rebalance flag) makes the transaction fail, and it is rebuilt from a
    // fresh read: never a lost update.
    for attempt in 1..=DEPLOY_ATTEMPTS {
        if let Some(resp) = deploy_once(&m, &actor, &stack, &req, attempt).await? {
            m.hub.nudge();
            return Ok(Json(resp));
        }
    }
    Err(ApiFailure::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("stack {stack} changed while deploying"),
    )
    .hint("someone else deployed it at the same time; run the deploy again"))
}

/// How often a deploy is rebuilt when a record it rewrites changed under it.
pub(crate) const DEPLOY_ATTEMPTS: u32 = 5;

/// One try of a deploy: `None` when a guarded record changed meanwhile.
pub(crate) async fn deploy_once(
    m: &Master,
    actor: &Actor,
    stack: &str,
    req: &DeployRequest,
    attempt: u32,
) -> Result<Option<DeployResponse>, ApiFailure> {
    let stack = stack.to_string();
    let mut spec = req.spec.clone();
    let now = now_ms();
    // Secrets and configs first: their versions are part of the services' specs.
    let (object_guards, object_ops) = m
        .resolve_objects(actor, &mut spec, values(req), now)
        .await?;
    pin(m, &mut spec).await?;
    let current = m.stack(&stack).await?;
    let (prev, rev) = match &current {
        Some((rec, rev)) => (Some(rec), *rev),
        None => (None, 0),
    };
    if prev.is_some_and(|p| p.removing.is_some()) {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("stack {stack} is being removed"),
        )
        .hint("wait until `wharf stack ls` no longer lists it, then deploy again"));
    }
    let with_revs = m.services_with_revisions(&stack).await?;
    let services: BTreeMap<String, ServiceRecord> = with_revs
        .iter()
        .map(|(n, (s, _))| (n.clone(), s.clone()))
        .collect();
    let mut guards = vec![Compare::unchanged_since(keys::stack(&stack), rev)];
    guards.extend(object_guards);
    let diff = stack_diff(&services, &spec);
    if diff.is_empty() && object_ops.is_empty() && prev.is_some_and(|p| p.spec == spec) {
        let revision = prev.map(|p| p.revision).unwrap_or(0);
        return Ok(Some(DeployResponse {
            deployment_id: None,
            revision,
            diff,
        }));
    }

    let revision = prev.map(|p| p.revision).unwrap_or(0) + 1;
    let changed: Vec<&ServiceChange> = diff
        .services
        .iter()
        .filter(|c| c.kind != ChangeKind::Unchanged)
        .collect();
    let deployment_id = (!changed.is_empty()).then(|| new_id("d-"));
    let mut ops = object_ops;
    for (name, svc_spec) in &spec.services {
        let old = services.get(name);
        let record = service_record(&stack, name, svc_spec, old, now);
        if old.is_some_and(|o| o.spec == record.spec && o.replicas == record.replicas) {
            continue; // unchanged: not rewritten, so nothing is replaced
        }
        let svc_rev = with_revs.get(name).map(|(_, r)| *r).unwrap_or(0);
        guards.push(Compare::unchanged_since(
            keys::service(&stack, name),
            svc_rev,
        ));
        ops.push(Op::put(keys::service(&stack, name), encode(&record)));
    }
    for (name, (_, svc_rev)) in with_revs
        .iter()
        .filter(|(n, _)| !spec.services.contains_key(*n))
    {
        guards.push(Compare::unchanged_since(
            keys::service(&stack, name),
            *svc_rev,
        ));
        ops.push(Op::delete(keys::service(&stack, name)));
    }
    if let Some(id) = &deployment_id {
        ops.extend(supersede(m, prev).await?);
        let d = new_deployment(
            id,
            (&stack, revision),
            &changed,
            &spec,
            (actor, req.trigger.clone()),
            now,
        );
        ops.push(Op::put(keys::deployment(id), encode(&d)));
    }
    let record = StackRecord {
        name: stack.clone(),
        spec,
        revision,
        updated_at: now,
        last_deployment: deployment_id
            .clone()
            .or_else(|| prev.and_then(|p| p.last_deployment.clone())),
        removing: None,
    };
    ops.push(Op::put(keys::stack(&stack), encode(&record)));
    let txn = Txn::new().when(guards).then(ops);
    let resp = m.mutate(actor, "stack.deploy", &stack, now, txn).await?;
    if !resp.succeeded {
        tracing::debug!(%stack, attempt, "a record the deploy rewrites changed meanwhile; again");
        return Ok(None);
    }
    Ok(Some(DeployResponse {
        deployment_id,
        revision,
        diff,
    }))
}

/// A service's record as a deploy writes it. The spec before a change is what `service
/// rollback` (or failure_action: rollback) restores; a deploy that changes only the replica
/// count keeps the rollback state.
fn service_record(
    stack: &str,
    name: &str,
    svc_spec: &ServiceSpec,
    old: Option<&ServiceRecord>,
    now: u64,
) -> ServiceRecord {
    let spec_changed = old.is_some_and(|o| *o.spec != *svc_spec);
    let mut record = ServiceRecord {
        stack: stack.to_string(),
        name: name.to_string(),
        spec: std::sync::Arc::new(svc_spec.clone()),
        spec_hash: svc_spec.instance_hash(),
        replicas: svc_spec.deploy.replicas,
        restart_nonce: old.map(|o| o.restart_nonce).unwrap_or(0),
        updated_at: now,
        rebalance: false,
        previous_spec: match old {
            Some(o) if spec_changed => Some(o.spec.clone()),
            _ => old.and_then(|o| o.previous_spec.clone()),
        },
        previous_spec_hash: match old {
            Some(o) if spec_changed => Some(o.spec_hash.clone()),
            _ => old.and_then(|o| o.previous_spec_hash.clone()),
        },
        changed_at_nonce: match old {
            Some(o) if !spec_changed => o.changed_at_nonce,
            _ => old.map(|o| o.restart_nonce).unwrap_or(0),
        },
        rollback: old
            .filter(|_| !spec_changed)
            .and_then(|o| o.rollback.clone()),
        history: old.map(|o| o.history.clone()).unwrap_or_default(),
    };
    match old {
        None => record.push_revision(None, "deploy", None, now),
        Some(o) if spec_changed => {
            record.push_revision(Some((&o.spec, &o.spec_hash)), "deploy", None, now)
        }
        Some(_) => {}
    }
    record
}

/// The deployment a deploy starts: in progress, one entry per changed service.
fn new_deployment(
    id: &str,
    (stack, revision): (&str, u64),
    changed: &[&ServiceChange],
    spec: &StackSpec,
    (by, trigger): (&Actor, Option<String>),
    now: u64,
) -> Deployment {
    let services = changed
        .iter()
        .map(|c| {
            let desired = spec
                .services
                .get(&c.service)
                .map_or(0, |s| s.deploy.replicas);
            ServiceProgress::starting(&c.service, desired)
        })
        .collect();
    let mut d = Deployment::started((id, stack, revision), services, (&by.name, trigger), now);
    d.images = changed
        .iter()
        .filter_map(|c| {
            let s = spec.services.get(&c.service)?;
            Some((c.service.clone(), s.image_ref(stack, &c.service)))
        })
        .collect();
    d
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RemoveQuery {
    /// Also remove the stack's named volumes.
    #[serde(default)]
    volumes: bool,
}

#[utoipa::path(delete, path = "/v1/stacks/{stack}", params(("stack" = String, Path), RemoveQuery),
    responses((status = 200, body = OperationResponse), (status = 404, body = ApiError)))]
pub(crate) async fn remove_stack(
    State(m): State<Master>,
    Extension(actor): Extension<Actor>,
    Path(stack): Path<String>,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> ApiResult<OperationResponse> {
    let (mut rec, rev) = m
        .stack(&stack)
        .await?
        .ok_or_else(|| not_found_stack(&stack))?;
    let now = now_ms();
    let removal = Removal {
        volumes: q.volumes || rec.removing.as_ref().is_some_and(|r| r.volumes),
    };
    rec.removing = Some(removal.clone());
    rec.updated_at = now;
    let mut ops = supersede(&m, Some(&rec)).await?;
    ops.push(Op::put(keys::stack(&stack), encode(&rec)));
    ops.push(Op::put(keys::purge(&stack), encode(&removal)));
    let txn = Txn::new()
        .when([Compare::unchanged_since(keys::stack(&stack), rev)])
        .then(ops);
    commit_guarded(
        &m,
        &actor,
        "stack.remove",
        &stack,
        now,
        txn,
        &format!("stack {stack}"),
    )
    .await?;
    m.hub.nudge();
    Ok(Json(OperationResponse {
        deployment_id: None,
    }))
}
