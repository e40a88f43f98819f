//! The client commands: each reads the context, calls the API and prints the reply.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use std::time::{Duration, Instant};

use futures::StreamExt;
use wharf_client::{Client, ClientError, Context};
use wharf_types::{DeployRequest, LogStream, ObjectKind, ServiceInfo};

use crate::args::{
    AuditCmd, ContextCmd, DeployOpts, DeploymentCmd, FileArg, Filter, NodeCmd, ObjectCmd,
    OutputFormat, ScaleTarget, ScanDbCmd, ServiceCmd, StackCmd, TokenCmd, UserCmd,
};
use crate::compose::load_and_warn;
use crate::error::CliError;
use crate::follow::{
    ApiGone, ProgressMode, Reconnect, Waiting, api_lost, follow_deployment, human_duration,
    lost_cause, outcome,
};
use crate::output::{Listing, emit};
use crate::render;
use crate::resolve::{ServiceRef, resolve_service, resolve_with_slot};

/// The client of the current context.
pub fn client() -> Result<Client, CliError> {
    Ok(Client::from_context(&Context::load()?)?)
}

/// Makes the client when a command needs one (so `validate` works without a context).
pub type ClientFn<'a> = dyn Fn() -> Result<Client, CliError> + Send + Sync + 'a;

/// Loads, PUTs and (unless detached) follows a stack file. Used by `wharf stack deploy` and
/// `wharf up FILE`. `stack` overrides the stack name.
pub async fn deploy_file(
    client: &Client,
    file: &FileArg,
    stack: Option<String>,
    opts: &DeployOpts,
) -> Result<(), CliError> {
    let loaded = load_and_warn(file, stack)?;
    deploy_loaded(client, loaded, opts).await
}

/// What a deploy sends: the spec, the values of the stack's own secrets and configs, and where
/// the fields the admission policy judges were written.
fn request(loaded: crate::compose::LoadedStack) -> DeployRequest {
    DeployRequest {
        spec: loaded.spec,
        secret_values: loaded.secret_values,
        config_values: loaded.config_values,
        sources: loaded.sources,
        trigger: None,
    }
}

async fn deploy_loaded(
    client: &Client,
    loaded: crate::compose::LoadedStack,
    opts: &DeployOpts,
) -> Result<(), CliError> {
    let started = Instant::now();
    let name = loaded.spec.name.clone();
    let resp = client.deploy_stack(&name, &request(loaded)).await?;
    if !opts.output.is_document() {
        for line in render::diff_lines(&resp.diff) {
            println!("{line}");
        }
        match &resp.deployment_id {
            None => println!("stack {name} is up to date: no changes"),
            Some(id) if opts.detach => println!(
                "deployment {id} of stack {name} (revision {}) started",
                resp.revision
            ),
            Some(_) => {}
        }
    }
    let d = follow_to_end(client, &resp, resp.deployment_id.as_deref(), opts).await?;
    if let Some(d) = d.filter(|_| !opts.output.is_document()) {
        println!(
            "deployed stack {name} (revision {}) in {}",
            d.revision,
            secs(started.elapsed())
        );
    }
    Ok(())
}

/// What a changing command prints with `-o json|yaml`: the API's reply and, when the command
/// followed it, the deployment as it ended. One document, at the end.
#[derive(serde::Serialize)]
struct Outcome<'a, T: serde::Serialize> {
    #[serde(flatten)]
    reply: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    deployment: Option<&'a wharf_types::Deployment>,
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

pub async fn stack(cmd: StackCmd, list: Listing, client: &ClientFn<'_>) -> Result<(), CliError> {
    let output = list.output;
    match cmd {
        StackCmd::Deploy {
            file,
            name,
            stack,
            mut opts,
        } => {
            opts.output = output;
            let loaded = load_and_warn(&file, name.or(stack))?;
            deploy_loaded(&client()?, loaded, &opts).await
        }
        StackCmd::Validate { file, name, stack } => {
            let mut loaded = load_and_warn(&file, name.or(stack))?;
            loaded.spec.redact_secrets(); // what the API would show
            emit(output, &loaded.spec, |spec| {
                let n = spec.services.len();
                println!("valid: {n} service{}", if n == 1 { "" } else { "s" });
            });
            Ok(())
        }
        StackCmd::Diff {
            file,
            name,
            stack,
            exit_code,
        } => {
            let loaded = load_and_warn(&file, name.or(stack))?;
            let name = loaded.spec.name.clone();
            let diff = client()?.diff_stack(&name, &request(loaded)).await?;
            emit(output, &diff, |diff| {
                if list.quiet {
                    // Nothing: the exit code says it (`--exit-code -q`, as `git diff --quiet`).
                } else if diff.is_empty() {
                    println!("stack {name} is up to date: no changes");
                } else {
                    render::diff_lines(diff)
                        .iter()
                        .for_each(|l| println!("{l}"));
                }
            });
            if exit_code && !diff.is_empty() {
                return Err(CliError::Differs);
            }
            Ok(())
        }
        StackCmd::Ls => {
            let stacks = client()?.list_stacks().await?;
            list.print(
                "stack",
                &stacks,
                |s| s.name.clone(),
                |s, _| render::stacks_table(s, render::now_ms()),
            );
            Ok(())
        }
        StackCmd::History { name } => {
            let client = client()?;
            let ds = client.list_deployments(Some(&name)).await?;
            if ds.is_empty() {
                client.get_stack(&name).await?; // a missing stack is a 404, not an empty list
            }
            list.print(
                "deployment",
                &ds,
                |d| d.id.clone(),
                |ds, _| render::stack_history_table(ds, render::now_ms()),
            );
            Ok(())
        }
        StackCmd::Ps { name, filter } => {
            let instances = client()?.stack_instances(&name).await?;
            print_instances(list, filtered(instances, &filter));
            Ok(())
        }
        StackCmd::Services { name } => {
            let client = client()?;
            let services = client.list_services(Some(&name)).await?;
            if services.is_empty() {
                client.get_stack(&name).await?; // a missing stack is a 404, not an empty list
            }
            print_services(list, &services);
            Ok(())
        }
        StackCmd::Rm {
            names,
            volumes,
            detach,
            timeout,
        } => {
            let client = client()?;
            let mut ops = Vec::new();
            for name in &names {
                ops.push(remove_stack(&client, name, volumes, detach, timeout, output).await?);
            }
            match ops.as_slice() {
                [one] => emit(output, one, |_| {}),
                many => emit(output, &many, |_| {}),
            }
            Ok(())
        }
    }
}

fn print_services(list: Listing, services: &[wharf_types::ServiceSummary]) {
    list.print(
        "service",
        services,
        |s| format!("{}/{}", s.stack, s.name),
        |s, _| render::services_table(s, render::now_ms()),
    );
}

fn print_instances(list: Listing, instances: Vec<wharf_types::InstanceInfo>) {
    list.print(
        "instance",
        &instances,
        |i| i.id.clone(),
        render::instances_table,
    );
}

/// The instances that match every filter (`--filter state=running`).
fn filtered(
    instances: Vec<wharf_types::InstanceInfo>,
    filters: &[Filter],
) -> Vec<wharf_types::InstanceInfo> {
    instances
        .into_iter()
        .filter(|i| filters.iter().all(|f| render::instance_matches(i, f)))
        .collect()
}

async fn remove_stack(
    client: &Client,
    name: &str,
    volumes: bool,
    detach: bool,
    timeout: Duration,
    output: OutputFormat,
) -> Result<wharf_types::OperationResponse, CliError> {
    let op = client.remove_stack(name, volumes).await?;
    if detach {
        if !output.is_document() {
            println!("removing stack {name} in the background");
        }
        return Ok(op);
    }
    let started = Instant::now();
    let mut waiting = Waiting::new(ProgressMode::for_output(output));
    let mut api = Reconnect::new(&client.url(), "the removal");
    let mut left: Vec<String> = Vec::new();
    loop {
        let mut wait = Duration::from_millis(500);
        match client.get_stack(name).await {
            Err(e) if e.is_not_found() => {
                api.answered(|m| waiting.note(m));
                break;
            }
            Err(e) if api_lost(&e) => match api.lost(lost_cause(&e), |m| waiting.note(m)) {
                Ok(w) => wait = w,
                Err(gone) => {
                    waiting.finish();
                    return Err(api_gone_while_removing(name, &left, &gone));
                }
            },
            Err(e) => {
                waiting.finish();
                return Err(e.into());
            }
            Ok(_) => {
                api.answered(|m| waiting.note(m));
                match client.stack_instances(name).await {
                    Ok(instances) => {
                        left = instances.iter().map(|i| i.id.clone()).collect();
                        waiting.set(format!(
                            "removing stack {name}: {} instance{} left",
                            left.len(),
                            if left.len() == 1 { "" } else { "s" }
                        ));
                    }
                    Err(e) if e.is_not_found() => break,
                    Err(_) => {}
                }
            }
        }
        if started.elapsed() >= timeout {
            waiting.finish();
            return Err(CliError::Failed {
                message: format!(
                    "stack {name} is still being removed after {}",
                    human_duration(timeout)
                ),
                details: left.iter().map(|i| format!("still there: {i}")).collect(),
                hint: Some(format!(
                    "removal goes on in the background; check with `wharf stack ps {name}`"
                )),
            });
        }
        tokio::time::sleep(wait).await;
    }
    waiting.finish();
    if !output.is_document() {
        println!("removed stack {name} in {}", secs(started.elapsed()));
    }
    Ok(op)
}

/// The API did not come back while waiting for stack `name` to be removed.
fn api_gone_while_removing(name: &str, left: &[String], gone: &ApiGone) -> CliError {
    CliError::Failed {
        message: format!(
            "lost the API at {} for {} while removing stack {name} ({})",
            gone.url,
            gone.down_for_text(),
            gone.cause
        ),
        details: left.iter().map(|i| format!("still there: {i}")).collect(),
        hint: Some(format!(
            "the removal may still be going on on the master; once the API is back, check it \
             with `wharf stack ps {name}`, or run `wharf stack rm {name}` again"
        )),
    }
}

pub(crate) async fn resolve(client: &Client, input: &str) -> Result<ServiceRef, CliError> {
    let services = client.list_services(None).await?;
    resolve_service(input, &services)
}

pub async fn service(
    cmd: ServiceCmd,
    list: Listing,
    client: &ClientFn<'_>,
) -> Result<(), CliError> {
    let output = list.output;
    let client = client()?;
    match cmd {
        ServiceCmd::Ls { stack } => {
            let services = client.list_services(stack.as_deref()).await?;
            print_services(list, &services);
            Ok(())
        }
        ServiceCmd::Ps { service, filter } => {
            let r = resolve(&client, &service).await?;
            let instances = client.service_instances(&r.stack, &r.service).await?;
            print_instances(list, filtered(instances, &filter));
            Ok(())
        }
        ServiceCmd::Update {
            service,
            image,
            env_add,
            env_rm,
            opts,
        } => {
            let req = wharf_types::ServiceUpdateRequest {
                image,
                env_add: env_add.into_iter().collect(),
                env_rm,
            };
            if req.is_empty() {
                return Err(CliError::bad_input(
                    "nothing to update",
                    Some("give --image IMAGE, --env-add KEY=VALUE or --env-rm KEY".into()),
                ));
            }
            service_op(&client, ServiceOp::Update(req), &service, opts, output).await
        }
        ServiceCmd::History { service } => {
            let r = resolve(&client, &service).await?;
            let history = client.service_history(&r.stack, &r.service).await?;
            list.print(
                "revision",
                &history,
                |h| h.revision.to_string(),
                |h, _| render::history_table(h, render::now_ms()),
            );
            Ok(())
        }
        ServiceCmd::Inspect { service } => {
            let r = resolve(&client, &service).await?;
            let info = client.get_service(&r.stack, &r.service).await?;
            emit(output, &info, |i| {
                println!("{}", inspect_text(i, render::now_ms()))
            });
            Ok(())
        }
        ServiceCmd::Scale { targets, mut opts } => {
            opts.output = output;
            scale(&client, &targets, &opts).await
        }
        ServiceCmd::Restart { service, opts } => {
            service_op(&client, ServiceOp::Restart, &service, opts, output).await
        }
        ServiceCmd::Rollback { service, to, opts } => {
            service_op(&client, ServiceOp::Rollback(to), &service, opts, output).await
        }
        ServiceCmd::Rebalance { service, opts } => {
            service_op(&client, ServiceOp::Rebalance, &service, opts, output).await
        }
        ServiceCmd::Logs {
            service,
            follow,
            tail,
            since,
            until,
            timestamps,
        } => {
            let (r, slot) = resolve_with_slot(&client, &service).await?;
            let q = wharf_types::LogQuery {
                follow,
                tail,
                since,
                until,
                timestamps,
                slot,
            };
            logs(&client, &r, &q, output.is_document()).await
        }
        ServiceCmd::Exec {
            service,
            interactive,
            tty,
            command,
        } => {
            let a = crate::exec::ExecArgs {
                service,
                interactive,
                tty,
                command,
            };
            crate::exec::exec(&client, a).await
        }
        ServiceCmd::Stats { service, no_stream } => {
            crate::exec::stats(&client, Some(service), no_stream, output).await
        }
    }
}

/// Unless detached (or nothing started), follows deployment `id` to its end; with
/// `-o json|yaml` prints the command's one document (`reply` and the deployment); turns a
/// failed deployment into the command's error.
async fn follow_to_end<T: serde::Serialize>(
    client: &Client,
    reply: &T,
    id: Option<&str>,
    opts: &DeployOpts,
) -> Result<Option<wharf_types::Deployment>, CliError> {
    let d = match id {
        Some(id) if !opts.detach => Some(
            follow_deployment(
                client,
                id,
                opts.timeout,
                ProgressMode::for_output(opts.output),
            )
            .await?,
        ),
        _ => None,
    };
    // The text is the progress shown while following.
    emit(
        opts.output,
        &Outcome {
            reply,
            deployment: d.as_ref(),
        },
        |_| {},
    );
    if let Some(d) = &d {
        outcome(d)?;
    }
    Ok(d)
}

/// A one-service operation that the API carries out as a deployment.
enum ServiceOp {
    Restart,
    /// To this revision; `None`: the one before the running one.
    Rollback(Option<u64>),
    Rebalance,
    Update(wharf_types::ServiceUpdateRequest),
}

impl ServiceOp {
    fn verbs(&self) -> ServiceOpVerbs {
        let (doing, done, nothing) = match self {
            ServiceOp::Restart => (
                "restarting",
                "restarted",
                Some("has no instances to restart"),
            ),
            ServiceOp::Rollback(_) => ("rolling back", "rolled back", None),
            ServiceOp::Rebalance => ("rebalancing", "rebalanced", None),
            ServiceOp::Update(_) => ("updating", "updated", Some("is unchanged: nothing to do")),
        };
        ServiceOpVerbs {
            doing,
            done,
            nothing,
        }
    }
}

/// How a one-service operation (restart, rollback, rebalance) is worded.
struct ServiceOpVerbs {
    doing: &'static str,
    done: &'static str,
    /// Said when the API started nothing.
    nothing: Option<&'static str>,
}

/// Resolves `service`, asks the API for `op` and, unless detached, follows its deployment.
async fn service_op(
    client: &Client,
    op: ServiceOp,
    service: &str,
    mut opts: DeployOpts,
    output: OutputFormat,
) -> Result<(), CliError> {
    opts.output = output;
    let r = resolve(client, service).await?;
    let (stack, name) = (&r.stack, &r.service);
    let reply = match &op {
        ServiceOp::Restart => client.restart_service(stack, name).await?,
        ServiceOp::Rollback(to) => client.rollback_service(stack, name, *to).await?,
        ServiceOp::Rebalance => client.rebalance_service(stack, name).await?,
        ServiceOp::Update(req) => client.update_service(stack, name, req).await?,
    };
    follow_service_op(client, &r, reply, &opts, op.verbs()).await
}

/// Print the reply of a one-service operation and, unless detached, follow its deployment.
async fn follow_service_op(
    client: &Client,
    r: &ServiceRef,
    op: wharf_types::OperationResponse,
    opts: &DeployOpts,
    verbs: ServiceOpVerbs,
) -> Result<(), CliError> {
    let started = Instant::now();
    if !opts.output.is_document() {
        match (&op.deployment_id, verbs.nothing) {
            (None, Some(nothing)) => println!("service {r} {nothing}"),
            (Some(id), _) if opts.detach => println!("{} {r}: deployment {id}", verbs.doing),
            _ => {}
        }
    }
    let d = follow_to_end(client, &op, op.deployment_id.as_deref(), opts).await?;
    if d.is_some() && !opts.output.is_document() {
        println!("{} {r} in {}", verbs.done, secs(started.elapsed()));
    }
    Ok(())
}

async fn scale(
    client: &Client,
    targets: &[ScaleTarget],
    opts: &DeployOpts,
) -> Result<(), CliError> {
    let json = opts.output.is_document();
    let started = Instant::now();
    let services = client.list_services(None).await?;
    let resolved = targets
        .iter()
        .map(|t| resolve_service(&t.service, &services).map(|r| (r, t.replicas)))
        .collect::<Result<Vec<_>, _>>()?;
    // A later change of a stack supersedes an earlier one: follow the last one of each stack.
    let mut last_of_stack: BTreeMap<String, String> = BTreeMap::new();
    let mut ops = Vec::new();
    for (r, n) in &resolved {
        let op = client.scale_service(&r.stack, &r.service, *n).await?;
        if !json {
            match op.deployment_id {
                Some(_) => println!("scaling {r} to {n}"),
                None => println!("{r} already has {n} replicas"),
            }
        }
        if let Some(id) = &op.deployment_id {
            last_of_stack.insert(r.stack.clone(), id.clone());
        }
        ops.push(op);
    }
    if opts.detach {
        if !json {
            for (stack, id) in &last_of_stack {
                println!("deployment {id} of stack {stack} started");
            }
        }
        emit(opts.output, &ops, |_| {});
        return Ok(());
    }
    // One document: the replies and the deployments followed, as they ended.
    let mut deployments = Vec::new();
    let mut failed = None;
    for id in last_of_stack.values() {
        let d = follow_deployment(
            client,
            id,
            opts.timeout,
            ProgressMode::for_output(opts.output),
        )
        .await?;
        if failed.is_none() {
            failed = outcome(&d).err();
        }
        deployments.push(d);
    }
    emit(
        opts.output,
        &serde_json::json!({"operations": ops, "deployments": deployments}),
        |_| {},
    );
    if let Some(e) = failed {
        return Err(e);
    }
    if !json && !last_of_stack.is_empty() {
        let what: Vec<String> = resolved
            .iter()
            .map(|(r, n)| format!("{r} to {n}"))
            .collect();
        println!("scaled {} in {}", what.join(", "), secs(started.elapsed()));
    }
    Ok(())
}

/// `web`, `shop/web`, or one instance of it: `web.2`, `shop/web.2` (a service whose own name
/// ends in `.N` wins).
pub(crate) async fn logs(
    client: &Client,
    r: &ServiceRef,
    q: &wharf_types::LogQuery,
    json: bool,
) -> Result<(), CliError> {
    let mut lines = client.logs(&r.stack, &r.service, q).await?;
    while let Some(item) = lines.next().await {
        let line = item?;
        let text = if json {
            serde_json::to_string(&line).expect("a log line always serialises")
        } else if let Some(t) = line.time.as_deref().filter(|_| q.timestamps) {
            format!("{t} {} | {}", line.instance, line.line)
        } else {
            format!("{} | {}", line.instance, line.line)
        };
        let written = if line.stream == LogStream::Stderr && !json {
            let mut err = std::io::stderr().lock();
            writeln!(err, "{text}").and_then(|_| err.flush())
        } else {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}").and_then(|_| out.flush())
        };
        if written.is_err() {
            // The reader went away (`| head`): stop quietly.
            return Ok(());
        }
    }
    Ok(())
}

/// Prints events as they come: a line each (`TIME KIND WHAT: MESSAGE`), or one JSON object per
/// line with `-o json|yaml` (JSON either way: a stream has no one document).
pub async fn events(mut events: wharf_client::Events, json: bool) -> Result<(), CliError> {
    while let Some(item) = events.next().await {
        let e = item?;
        let text = if json {
            serde_json::to_string(&e).expect("an event always serialises")
        } else {
            render::event_line(&e)
        };
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            return Ok(()); // the reader went away (`| head`)
        }
    }
    Ok(())
}

/// The readable summary of `wharf service inspect`.
pub fn inspect_text(info: &ServiceInfo, now_ms: u64) -> String {
    let s = &info.summary;
    let spec = &info.spec;
    let mut fields: Vec<(&str, String)> = vec![
        ("service", format!("{}/{}", s.stack, s.name)),
        ("image", s.image.clone()),
        ("driver", render::lower(&spec.driver)),
        (
            "mode",
            format!(
                "{} ({} desired, {} running, {} healthy)",
                render::lower(&s.mode),
                s.replicas,
                s.running,
                s.healthy
            ),
        ),
    ];
    if let Some(c) = &spec.command {
        fields.push(("command", c.join(" ")));
    }
    if let Some(e) = &spec.entrypoint {
        fields.push(("entrypoint", e.join(" ")));
    }
    if !s.ports.is_empty() {
        fields.push(("ports", s.ports.join(", ")));
    }
    if !spec.environment.is_empty() {
        // Names only: values may be secrets.
        let names: Vec<&str> = spec.environment.keys().map(String::as_str).collect();
        fields.push(("environment", names.join(", ")));
    }
    if !spec.volumes.is_empty() {
        let v: Vec<String> = spec
            .volumes
            .iter()
            .map(|m| {
                let ro = if m.read_only { ":ro" } else { "" };
                if m.source.is_empty() {
                    format!("{} ({}){ro}", m.target, render::lower(&m.kind))
                } else {
                    format!("{}:{}{ro}", m.source, m.target)
                }
            })
            .collect();
        fields.push(("volumes", v.join(", ")));
    }
    if let Some(h) = &spec.healthcheck {
        fields.push((
            "healthcheck",
            format!(
                "{} (every {}, timeout {}, {} retries)",
                h.test.join(" "),
                human_duration(Duration::from_millis(h.interval_ms)),
                human_duration(Duration::from_millis(h.timeout_ms)),
                h.retries
            ),
        ));
    }
    if !spec.deploy.placement.constraints.is_empty() {
        fields.push(("constraints", spec.deploy.placement.constraints.join(", ")));
    }
    fields.push(("spec hash", info.spec_hash.clone()));
    fields.push(("updated", render::ago(now_ms, s.updated_at)));
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out: Vec<String> = fields
        .into_iter()
        .map(|(k, v)| format!("{:<width$} {v}", format!("{k}:")))
        .collect();
    out.push(String::new());
    out.push(render::instances_table(&info.instances, false));
    out.join("\n")
}

pub async fn node(cmd: NodeCmd, list: Listing, client: &ClientFn<'_>) -> Result<(), CliError> {
    let output = list.output;
    match cmd {
        NodeCmd::Ls => {
            let nodes = client()?.list_nodes().await?;
            list.print(
                "node",
                &nodes,
                |n| n.name.clone(),
                |n, _| render::nodes_table(n, render::now_ms()),
            );
        }
        NodeCmd::Ps { node, filter } => {
            let client = client()?;
            let n = client.get_node(&node).await?; // a 404 names the node
            let mut instances = Vec::new();
            for stack in client.list_stacks().await? {
                instances.extend(
                    client
                        .stack_instances(&stack.name)
                        .await?
                        .into_iter()
                        .filter(|i| i.node == n.name || i.node == n.id),
                );
            }
            print_instances(list, filtered(instances, &filter));
        }
        NodeCmd::Inspect { node } => {
            let n = client()?.get_node(&node).await?;
            emit(output, &n, |n| {
                println!("{}", render::node_text(n, render::now_ms()))
            });
        }
        NodeCmd::Label { node, set, remove } => {
            let req = labels_request(set, remove)?; // bad input before any context
            let n = client()?.label_node(&node, &req).await?;
            emit(output, &n, print_node_labels);
        }
        NodeCmd::Drain {
            node,
            detach,
            timeout,
        } => return drain_node(&client()?, &node, detach, timeout, output).await,
        NodeCmd::RotateKeys { nodes, all } => {
            let client = client()?;
            let nodes = if all {
                client
                    .list_nodes()
                    .await?
                    .into_iter()
                    .map(|n| n.id)
                    .collect()
            } else {
                nodes
            };
            let mut done = Vec::new();
            for node in &nodes {
                done.push(client.rotate_node_keys(node).await?);
            }
            emit(output, &done, |done| {
                for n in done {
                    println!(
                        "node {}: a new WireGuard key is on its way (the agent makes it; `wharf node inspect {}` shows it)",
                        n.name, n.name
                    );
                }
            });
        }
        NodeCmd::Activate { node } => {
            let n = client()?.activate_node(&node).await?;
            emit(output, &n, |n| {
                println!("node {} is active: it takes new instances", n.name);
            });
        }
        NodeCmd::Rm { node, force } => {
            let op = client()?.remove_node(&node, force).await?;
            emit(output, &op, |_| {
                println!("removed node {node}: its certificate is revoked and its instances move");
            });
        }
        NodeCmd::Token(crate::args::NodeTokenCmd::Create { ttl, uses }) => {
            if ttl.as_secs() == 0 {
                return Err(CliError::bad_input(
                    format!("--ttl {ttl:?} is too short for a join token"),
                    Some("give it 1s or more, e.g. --ttl 30m".into()),
                ));
            }
            let req = wharf_types::JoinTokenRequest {
                ttl_secs: Some(ttl.as_secs()),
                uses: Some(uses),
            };
            let t = client()?.create_join_token(&req).await?;
            emit(output, &t, print_join_token);
        }
    }
    Ok(())
}

/// The body of `wharf node label`: `set` as `KEY=VALUE`, `remove` as keys.
fn labels_request(
    set: Vec<String>,
    remove: Vec<String>,
) -> Result<wharf_types::NodeLabelsRequest, CliError> {
    let mut req = wharf_types::NodeLabelsRequest {
        set: Default::default(),
        remove,
    };
    for kv in set {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(CliError::BadInput {
                message: format!("label {kv:?} is not KEY=VALUE"),
                hint: Some("write labels as key=value, and remove one with --rm KEY".into()),
            });
        };
        req.set.insert(k.to_string(), v.to_string());
    }
    Ok(req)
}

/// The text of `wharf node label`: the node's labels after the change.
fn print_node_labels(n: &wharf_types::NodeInfo) {
    let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "node {} labels: {}",
        n.name,
        if labels.is_empty() {
            "-".into()
        } else {
            labels.join(" ")
        }
    );
}

/// The text of `wharf node token create`: the token on stdout (for `$(…)`), how to use it on
/// stderr.
fn print_join_token(t: &wharf_types::JoinTokenResponse) {
    println!("{}", t.token);
    let left = t.expires_at.saturating_sub(render::now_ms()) / 1000;
    eprintln!(
        "valid for {left}s, for {} join{}; on the new node run: wharf agent --join MASTER:7701 --token <token>",
        t.uses,
        if t.uses == 1 { "" } else { "s" }
    );
}

/// `wharf node drain`: starts the drain and, unless detached, waits until the node is empty.
async fn drain_node(
    c: &Client,
    node: &str,
    detach: bool,
    timeout: Duration,
    output: OutputFormat,
) -> Result<(), CliError> {
    let json = output.is_document();
    let started = Instant::now();
    let n = c.drain_node(node).await?;
    emit(output, &n, |n| {
        if detach {
            println!(
                "draining node {} ({} instances to move)",
                n.name, n.instances
            );
        }
    });
    if detach {
        return Ok(());
    }
    let mut last = u32::MAX;
    loop {
        let n = c.get_node(node).await?;
        if n.instances != last && !json {
            println!("node {}: {} instances left", n.name, n.instances);
            last = n.instances;
        }
        if n.instances == 0 {
            if !json {
                println!("drained node {} in {}", n.name, secs(started.elapsed()));
            }
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(CliError::Failed {
                message: format!(
                    "node {} still has {} instances after {}",
                    n.name,
                    n.instances,
                    secs(timeout)
                ),
                details: vec![],
                hint: Some(
                    "the drain goes on; see where they are stuck with `wharf stack ps`".into(),
                ),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

pub async fn version(output: OutputFormat, client: &ClientFn<'_>) -> Result<(), CliError> {
    let client_version = env!("CARGO_PKG_VERSION");
    let server = match client() {
        Ok(c) => c.version().await.map(|v| (c.url().to_string(), v)),
        Err(CliError::Client(e)) => Err(e),
        Err(e) => return Err(e),
    };
    let value = serde_json::json!({
        "client": { "version": client_version },
        "server": server.as_ref().ok().map(|(_, v)| v),
    });
    emit(output, &value, |_| {
        println!("client: {client_version}");
        match &server {
            Ok((url, v)) => println!("server: {} (api {}) at {url}", v.version, v.api),
            Err(_) => println!("server: unknown"),
        }
    });
    server.map(drop).map_err(CliError::from)
}

/// `wharf deployment ls|status|follow`.
pub async fn deployment(
    cmd: DeploymentCmd,
    list: Listing,
    client: &ClientFn<'_>,
) -> Result<(), CliError> {
    let client = client()?;
    match cmd {
        DeploymentCmd::Ls { stack } => {
            let ds = client.list_deployments(stack.as_deref()).await?;
            list.print(
                "deployment",
                &ds,
                |d| d.id.clone(),
                |ds, _| render::deployments_table(ds, render::now_ms()),
            );
        }
        DeploymentCmd::Status { id } => {
            let d = client.deployment(&id).await?;
            emit(list.output, &d, |d| {
                println!("{}", render::deployment_text(d, render::now_ms()))
            });
            outcome(&d)?;
        }
        DeploymentCmd::Follow { id, timeout } => {
            let started = Instant::now();
            let mode = ProgressMode::for_output(list.output);
            let d = follow_deployment(&client, &id, timeout, mode).await?;
            emit(list.output, &d, |d| {
                println!(
                    "deployment {id} of stack {} (revision {}) {} after {}",
                    d.stack,
                    d.revision,
                    render::lower(&d.state),
                    secs(started.elapsed())
                )
            });
            outcome(&d)?;
        }
    }
    Ok(())
}

/// `wharf context ls|use|add|rm|show`.
pub fn context(cmd: Option<ContextCmd>, list: Listing) -> Result<(), CliError> {
    let dir = Context::config_dir();
    let bad_name = |name: &str| {
        wharf_client::valid_context_name(name).map_err(|m| CliError::bad_input(m, None))
    };
    match cmd {
        None | Some(ContextCmd::Show) => context_show(list.output),
        Some(ContextCmd::Ls) => {
            let current = Context::current();
            let rows: Vec<serde_json::Value> = Context::names_in(&dir)
                .into_iter()
                .map(|name| {
                    let path = Context::path_in(&dir, &name);
                    let url = Context::load_from(&path).ok().flatten().map(|c| c.url);
                    serde_json::json!({"name": name, "current": name == current, "url": url,
                        "file": path.display().to_string()})
                })
                .collect();
            list.print(
                "context",
                &rows,
                |r| r["name"].as_str().unwrap_or_default().to_string(),
                |rows, _| render::contexts_table(rows),
            );
            Ok(())
        }
        Some(ContextCmd::Use { name }) => {
            bad_name(&name)?;
            if !Context::path_in(&dir, &name).is_file() {
                return Err(CliError::bad_input(
                    format!("no context named {name}"),
                    Some(
                        "list them with `wharf context ls`; add one with `wharf context add`"
                            .into(),
                    ),
                ));
            }
            Context::set_current_in(&dir, &name)?;
            emit(list.output, &serde_json::json!({"current": name}), |_| {
                println!("current context: {name}")
            });
            Ok(())
        }
        Some(ContextCmd::Add {
            name,
            url,
            ca_fingerprint,
            token_stdin,
        }) => {
            bad_name(&name)?;
            if !url
                .split(',')
                .all(|u| u.starts_with("http://") || u.starts_with("https://"))
            {
                return Err(CliError::bad_input(
                    format!("invalid --url {url:?}: each URL starts with https:// (or http://)"),
                    Some("e.g. --url https://10.0.0.1:7400".into()),
                ));
            }
            let token = if token_stdin {
                read_password(true, "token", false)?.0
            } else {
                String::new()
            };
            let ctx = Context {
                url,
                token,
                ca_fingerprint,
            };
            let path = Context::path_in(&dir, &name);
            ctx.save_to(&path)?;
            emit(
                list.output,
                &serde_json::json!({"name": name, "file": path.display().to_string()}),
                |_| {
                    println!(
                        "context {name} saved in {}; use it with `wharf context use {name}`",
                        path.display()
                    )
                },
            );
            Ok(())
        }
        Some(ContextCmd::Rm { name, force }) => {
            bad_name(&name)?;
            let path = Context::path_in(&dir, &name);
            if !path.is_file() {
                return Err(CliError::bad_input(
                    format!("no context named {name}"),
                    None,
                ));
            }
            let current = Context::current() == name;
            if current && !force {
                return Err(CliError::bad_input(
                    format!("context {name} is the current one"),
                    Some(format!(
                        "`wharf context use` another first, or `wharf context rm {name} --force`"
                    )),
                ));
            }
            std::fs::remove_file(&path)
                .map_err(|e| CliError::failed(format!("cannot remove {}: {e}", path.display())))?;
            if current {
                let _ = Context::set_current_in(&dir, wharf_client::DEFAULT_CONTEXT);
            }
            emit(list.output, &serde_json::json!({"removed": name}), |_| {
                println!("context {name} removed")
            });
            Ok(())
        }
    }
}

/// `wharf context show`: the current context and where it comes from.
fn context_show(output: OutputFormat) -> Result<(), CliError> {
    let path = Context::path();
    let exists = path.exists();
    let env_set = |k: &str| std::env::var(k).map(|v| !v.is_empty()).unwrap_or(false);
    let (url_env, token_env) = (env_set("WHARF_URL"), env_set("WHARF_TOKEN"));
    let loaded = Context::load();
    let value = serde_json::json!({
        "name": Context::current(),
        "url": loaded.as_ref().ok().map(|c| c.url.clone()),
        "file": path.display().to_string(),
        "file_exists": exists,
        "url_from_env": url_env,
        "token_from_env": token_env,
        "token_set": loaded.as_ref().map(|c| !c.token.is_empty()).unwrap_or(false),
    });
    emit(output, &value, |_| {
        let from = |env: bool, var: &str| {
            if env {
                format!(" (from {var})")
            } else {
                String::new()
            }
        };
        match &loaded {
            Ok(c) => {
                println!("url:   {}{}", c.url, from(url_env, "WHARF_URL"));
                let token = if c.token.is_empty() { "empty" } else { "set" };
                println!(
                    "token: {token}{} (never shown)",
                    from(token_env, "WHARF_TOKEN")
                );
            }
            Err(_) => println!("url:   none"),
        }
        let state = if exists { "" } else { " (does not exist)" };
        println!("name:  {}", Context::current());
        println!("file:  {}{state}", path.display());
    });
    loaded.map(drop).map_err(|e: ClientError| e.into())
}

/// A password: read from standard input (one line) with `stdin`, else asked for without echo
/// (twice when it is a new one).
fn read_password(stdin: bool, prompt: &str, new: bool) -> Result<wharf_types::Password, CliError> {
    let no_terminal = || {
        CliError::bad_input(
            "no terminal to ask for the password",
            Some("pass it on standard input with --password-stdin".into()),
        )
    };
    let password = if stdin {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| CliError::failed(format!("cannot read the password: {e}")))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        let p = rpassword::prompt_password(prompt).map_err(|_| no_terminal())?;
        if new && rpassword::prompt_password("again: ").map_err(|_| no_terminal())? != p {
            return Err(CliError::bad_input(
                "the two passwords differ",
                Some("type the same password twice".into()),
            ));
        }
        p
    };
    Ok(wharf_types::Password(password))
}

/// `wharf unlock`: the unlock key to the locked master the context names. A locked master
/// serves plain HTTP to its own host only (its TLS key is sealed), so an `https` context URL on
/// loopback is reached over `http`.
pub async fn unlock(key_stdin: bool, output: OutputFormat) -> Result<(), CliError> {
    let ctx = Context::load().map_err(|e| {
        CliError::bad_input(
            format!("no CLI context to find the master: {e}"),
            Some("run `wharf unlock` on the master's host, as the user that runs `wharf server`, or set WHARF_URL".into()),
        )
    })?;
    let url = match ctx.url.strip_prefix("https://") {
        Some(rest) if rest.starts_with("127.") || rest.starts_with("localhost") => {
            format!("http://{rest}")
        }
        _ => ctx.url.clone(),
    };
    let key = read_password(key_stdin, "unlock key: ", false)?;
    let r = wharf_client::Client::new(url, String::new())
        .unlock(&wharf_types::UnlockRequest { key })
        .await?;
    emit(output, &r, |_| println!("unlocked: the master is starting"));
    Ok(())
}

/// `wharf user add|ls|rm|passwd`.
pub async fn user(
    cmd: UserCmd,
    output: OutputFormat,
    client: &ClientFn<'_>,
) -> Result<(), CliError> {
    let c = client()?;
    match cmd {
        UserCmd::Add {
            name,
            role,
            password_stdin,
        } => {
            let password = password_stdin
                .then(|| read_password(true, "", true))
                .transpose()?;
            let req = wharf_types::UserRequest {
                name,
                role,
                password,
            };
            let u = c.add_user(&req).await?;
            emit(output, &u, |u| match &u.invitation {
                Some(code) => {
                    println!("{}", code.0);
                    eprintln!(
                        "user {} ({}) added; they run: wharf login {} --user {} --invitation <code>  (valid 7 days, once)",
                        u.info.name,
                        u.info.role,
                        c.url(),
                        u.info.name
                    );
                }
                None => println!("user {} ({}) added", u.info.name, u.info.role),
            });
        }
        UserCmd::Ls => {
            let users = c.list_users().await?;
            emit(output, &users, |us| {
                let rows = us
                    .iter()
                    .map(|u| {
                        let state = if u.password_set { "active" } else { "invited" };
                        let when = render::ago(render::now_ms(), u.created_at);
                        vec![u.name.clone(), u.role.to_string(), state.to_string(), when]
                    })
                    .collect();
                print!(
                    "{}",
                    render::table(&["NAME", "ROLE", "STATE", "CREATED"], rows)
                );
            });
        }
        UserCmd::Rm { name } => {
            let r = c.remove_user(&name).await?;
            emit(output, &r, |_| {
                println!("user {name} removed; its sessions ended")
            });
        }
        UserCmd::Passwd {
            name: None,
            password_stdin,
        } => {
            let current = read_password(password_stdin, "current password: ", false)?;
            let password = read_password(password_stdin, "new password: ", true)?;
            let r = c
                .change_own_password(&wharf_types::OwnPasswordRequest { current, password })
                .await?;
            emit(output, &r, |_| println!("your password is changed"));
        }
        UserCmd::Passwd {
            name: Some(name),
            password_stdin,
        } => {
            let password =
                read_password(password_stdin, &format!("new password for {name}: "), true)?;
            let r = c
                .set_password(&name, &wharf_types::PasswordRequest { password })
                .await?;
            emit(output, &r, |_| println!("password of {name} set"));
        }
    }
    Ok(())
}

/// Who logs in, and how (`wharf login`).
pub struct Credentials {
    pub user: Option<String>,
    pub invitation: Option<String>,
    pub password_stdin: bool,
}

/// The CA an HTTPS API at `url` is trusted by: the one the context already pins for it, the
/// `given` fingerprint if the API presents it, or the one it presents once the user says yes.
async fn trusted_ca(url: &str, given: Option<String>, ask: bool) -> Result<String, CliError> {
    let known = Context::load_from(&Context::path())
        .ok()
        .flatten()
        .filter(|c| c.url == url)
        .and_then(|c| c.ca_fingerprint);
    let seen = Client::peek_ca_fingerprint(url).await?;
    match given.or(known) {
        Some(fp) if fp.eq_ignore_ascii_case(&seen) => Ok(seen),
        Some(fp) => Err(CliError::failed(format!(
            "the API at {url} presents CA {seen}, not the pinned {fp}: refusing to log in"
        ))),
        None if ask && std::io::stdin().is_terminal() => {
            eprint!("The API at {url} has CA fingerprint (sha256) {seen}.\nTrust it? [y/N] ");
            let mut answer = String::new();
            std::io::stdin()
                .read_line(&mut answer)
                .map_err(|e| CliError::failed(format!("cannot read the answer: {e}")))?;
            if answer.trim().eq_ignore_ascii_case("y") {
                Ok(seen)
            } else {
                Err(CliError::failed("not logged in: the CA was not trusted"))
            }
        }
        None => Err(CliError::bad_input(
            format!("the API at {url} has CA fingerprint (sha256) {seen}, not pinned yet"),
            Some(format!(
                "check it with the operator (`wharf server` prints it), then pass --ca-fingerprint {seen}"
            )),
        )),
    }
}

/// `wharf login URL`: a session for the user, written to the CLI context (with the API's CA
/// pinned when it serves HTTPS).
pub async fn login(
    url: &str,
    creds: Credentials,
    ca_fingerprint: Option<String>,
    output: OutputFormat,
) -> Result<(), CliError> {
    let user = creds
        .user
        .or_else(|| std::env::var("USER").ok())
        .ok_or_else(|| CliError::bad_input("no user name", Some("pass --user NAME".into())))?;
    let url = url.trim_end_matches('/').to_string();
    let pin = if url.starts_with("https://") {
        Some(trusted_ca(&url, ca_fingerprint, !creds.password_stdin).await?)
    } else {
        None
    };
    let stdin = creds.password_stdin;
    let req = match creds.invitation {
        Some(code) => wharf_types::LoginRequest {
            user: user.clone(),
            password: None,
            invitation: Some(wharf_types::Password(code)),
            new_password: Some(read_password(stdin, "choose a password: ", true)?),
        },
        None => wharf_types::LoginRequest {
            user: user.clone(),
            password: Some(read_password(
                stdin,
                &format!("password for {user}: "),
                false,
            )?),
            invitation: None,
            new_password: None,
        },
    };
    let client = match &pin {
        Some(fp) => Client::pinned(url.clone(), String::new(), fp)?,
        None => Client::new(url.clone(), String::new()),
    };
    let session = client.login(&req).await?;
    let path = Context {
        ca_fingerprint: pin,
        ..Context::new(url, session.token.clone())
    }
    .save()
    .map_err(CliError::Client)?;
    let shown = serde_json::json!({
        "user": session.user, "role": session.role, "expires_at": session.expires_at,
        "context": path.display().to_string(),
    });
    emit(output, &shown, |_| {
        println!(
            "logged in as {} ({}); the session is in {} and lasts 12 hours",
            session.user,
            session.role,
            path.display()
        )
    });
    Ok(())
}

/// The most text one import request carries (the API takes bodies up to 2 MiB; JSON escaping
/// may grow the text).
const IMPORT_BATCH_BYTES: usize = 1 << 20;

/// `wharf scan db import DIR|info`.
pub async fn scan_db(
    cmd: ScanDbCmd,
    output: OutputFormat,
    client: &ClientFn<'_>,
) -> Result<(), CliError> {
    let c = client()?;
    let dir = match cmd {
        ScanDbCmd::Info => {
            let info = c.advisory_db().await?;
            emit(output, &info, |i| print!("{}", render::advisory_db_text(i)));
            return Ok(());
        }
        ScanDbCmd::Import { dir } => dir,
    };
    let mut paths = vec![];
    json_files(&dir, &mut paths).map_err(|e| {
        CliError::bad_input(
            format!("{}: {e}", dir.display()),
            Some("name a directory of OSV .json files, or one such file".into()),
        )
    })?;
    if paths.is_empty() {
        return Err(CliError::bad_input(
            format!("{}: no .json files", dir.display()),
            Some("OSV exports are one JSON record per file, named ID.json".into()),
        ));
    }
    paths.sort();
    let mut batch: Vec<wharf_types::AdvisoryFile> = vec![];
    let (mut size, mut sent, mut info) = (0usize, 0usize, None);
    for (i, path) in paths.iter().enumerate() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::bad_input(format!("{}: {e}", path.display()), None))?;
        if text.len() > IMPORT_BATCH_BYTES {
            return Err(CliError::bad_input(
                format!(
                    "{}: {} bytes, more than one import takes ({IMPORT_BATCH_BYTES})",
                    path.display(),
                    text.len()
                ),
                Some("split an array of records into files of one record each".into()),
            ));
        }
        if size + text.len() > IMPORT_BATCH_BYTES {
            sent += batch.len();
            info = Some(c.import_advisories(std::mem::take(&mut batch)).await?);
            eprintln!("imported {sent} of {} files", paths.len());
            size = 0;
        }
        size += text.len();
        let name = path
            .strip_prefix(&dir)
            .unwrap_or(path)
            .display()
            .to_string();
        batch.push(wharf_types::AdvisoryFile { name, text });
        if i + 1 == paths.len() {
            sent += batch.len();
            info = Some(c.import_advisories(std::mem::take(&mut batch)).await?);
        }
    }
    let info = info.unwrap_or_default();
    emit(output, &info, |i| {
        println!("imported {sent} files");
        print!("{}", render::advisory_db_text(i))
    });
    Ok(())
}

/// `wharf image scan IMAGE [--fail-on SEVERITY]`.
pub async fn image_scan(
    image: &str,
    fail_on: Option<&str>,
    output: OutputFormat,
    client: &ClientFn<'_>,
) -> Result<(), CliError> {
    eprintln!("scanning {image} (a node exports it and reads its packages)...");
    let scan = client()?.scan_image(image).await?;
    emit(output, &scan, |s| print!("{}", render::image_scan_text(s)));
    let worst = scan.findings.iter().map(|f| f.severity).max();
    match (fail_on.and_then(wharf_types::Severity::parse), worst) {
        (Some(at), Some(w)) if w >= at => Err(CliError::failed(format!(
            "{image} has findings at or above {} (--fail-on)",
            at.word()
        ))),
        _ => Ok(()),
    }
}

/// Every `*.json` file under `path` (or `path` itself when it is a file).
fn json_files(path: &std::path::Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    if std::fs::metadata(path)?.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        let p = entry?.path();
        if p.is_dir() {
            json_files(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "json") {
            out.push(p);
        }
    }
    Ok(())
}

/// `wharf audit ls|verify|head`.
pub async fn audit(
    cmd: AuditCmd,
    output: OutputFormat,
    client: &ClientFn<'_>,
) -> Result<(), CliError> {
    let c = client()?;
    match cmd {
        AuditCmd::Ls {
            since,
            actor,
            stack,
        } => {
            let since = since.map(|d| render::now_ms().saturating_sub(d.as_millis() as u64));
            let records = c
                .audit_where(since, actor.as_deref(), stack.as_deref())
                .await?;
            emit(output, &records, |r| {
                print!("{}", render::audit_table(r, render::now_ms()))
            });
        }
        AuditCmd::Verify => {
            let v = c.verify_audit().await?;
            emit(output, &v, |v| {
                if v.broken_at.is_none() {
                    println!(
                        "the audit trail is whole: {} records, head {} {}",
                        v.records, v.head_id, v.head_hash
                    );
                }
            });
            if let Some(at) = v.broken_at {
                return Err(CliError::Failed {
                    message: format!(
                        "the audit trail is broken at record {at}: {}",
                        v.problem.as_deref().unwrap_or("")
                    ),
                    details: Vec::new(),
                    hint: Some(
                        "the store was changed behind the master's back: compare with a copy of \
                         the head kept elsewhere (`wharf audit head`) and with your backups"
                            .into(),
                    ),
                });
            }
        }
        AuditCmd::Head => {
            let v = c.verify_audit().await?;
            emit(output, &v, |v| println!("{} {}", v.head_id, v.head_hash));
        }
    }
    Ok(())
}

/// The value `wharf secret create` (or `config create`) reads: the file, or standard input for
/// `-`.
fn object_value(
    file: Option<std::path::PathBuf>,
    dash: Option<String>,
) -> Result<Vec<u8>, CliError> {
    use std::io::Read;
    let max = 500 * 1024;
    let stdin =
        matches!(dash.as_deref(), Some("-")) || file.as_deref() == Some(std::path::Path::new("-"));
    let mut value = Vec::new();
    let read = if stdin {
        std::io::stdin().take(max + 1).read_to_end(&mut value)
    } else {
        let Some(path) = file else {
            return Err(CliError::bad_input(
                "no value to read",
                Some("give -f FILE, or - to read standard input".into()),
            ));
        };
        std::fs::File::open(&path).and_then(|f| f.take(max + 1).read_to_end(&mut value))
    };
    read.map_err(|e| CliError::failed(format!("cannot read the value: {e}")))?;
    if value.len() as u64 > max {
        return Err(CliError::bad_input(
            format!("the value is more than {max} bytes, the most a secret or config may hold"),
            Some("keep large files in a volume; secrets are for keys and passwords".into()),
        ));
    }
    Ok(value)
}

/// `wharf secret|config create|ls|inspect|rm`.
pub async fn object(
    kind: ObjectKind,
    cmd: ObjectCmd,
    output: OutputFormat,
    client: &ClientFn<'_>,
) -> Result<(), CliError> {
    let c = client()?;
    let what = kind.as_str();
    let versions_table = |ss: &[wharf_types::SecretInfo]| {
        let now = render::now_ms();
        let rows = ss
            .iter()
            .map(|s| {
                let last = s.versions.last();
                vec![
                    s.name.clone(),
                    s.current.to_string(),
                    last.map_or("-".into(), |v| render::ago(now, v.created_at)),
                    last.map_or("-".into(), |v| v.created_by.clone()),
                ]
            })
            .collect();
        render::table(&["NAME", "VERSION", "UPDATED", "BY"], rows)
    };
    match cmd {
        ObjectCmd::Create { name, file, dash } => {
            let value = object_value(file, dash)?;
            let s = c.put_object(kind, &name, &value).await?;
            emit(output, &s, |s| {
                println!("{what} {} is at version {}", s.name, s.current);
                for r in &s.rolled {
                    println!("rolling {r} to it");
                }
            });
        }
        ObjectCmd::Ls => {
            let ss = c.list_objects(kind).await?;
            emit(output, &ss, |ss| print!("{}", versions_table(ss)));
        }
        ObjectCmd::Inspect { name } => {
            let s = c.inspect_object(kind, &name).await?;
            emit(output, &s, |s| {
                let now = render::now_ms();
                let rows = s
                    .versions
                    .iter()
                    .map(|v| {
                        let when = render::ago(now, v.created_at);
                        vec![
                            v.version.to_string(),
                            when,
                            v.created_by.clone(),
                            v.size.to_string(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    render::table(&["VERSION", "CREATED", "BY", "BYTES"], rows)
                );
            });
        }
        ObjectCmd::Rm { name } => {
            let r = c.remove_object(kind, &name).await?;
            emit(output, &r, |_| println!("{what} {name} removed"));
        }
    }
    Ok(())
}

/// `wharf token create|ls|revoke`.
pub async fn token(
    cmd: TokenCmd,
    output: OutputFormat,
    client: &ClientFn<'_>,
) -> Result<(), CliError> {
    let c = client()?;
    match cmd {
        TokenCmd::Create {
            name,
            role,
            stacks,
            ttl,
        } => {
            let req = wharf_types::TokenRequest {
                name,
                role,
                stacks,
                ttl_secs: ttl.map(|t| t.as_secs()),
            };
            let t = c.create_token(&req).await?;
            emit(output, &t, |t| {
                println!("{}", t.token);
                eprintln!(
                    "token {} ({}) created; it is shown only this once",
                    t.info.name,
                    render::token_scope(&t.info)
                );
            });
        }
        TokenCmd::Ls => {
            let ts = c.list_tokens().await?;
            emit(output, &ts, |ts| {
                print!("{}", render::tokens_table(ts, render::now_ms()))
            });
        }
        TokenCmd::Revoke { name } => {
            let r = c.revoke_token(&name).await?;
            emit(output, &r, |_| println!("token {name} revoked"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::{DeployMode, ServiceSpec, ServiceSummary};

    #[test]
    fn inspect_summary_reads_well() {
        let mut spec = ServiceSpec {
            image: Some("nginx:1.27".into()),
            ..Default::default()
        };
        spec.environment.insert("PASSWORD".into(), "hunter2".into());
        let info = ServiceInfo {
            summary: ServiceSummary {
                stack: "shop".into(),
                name: "web".into(),
                image: "nginx:1.27".into(),
                mode: DeployMode::Replicated,
                replicas: 2,
                running: 2,
                healthy: 0,
                ports: vec!["8080:80/tcp".into()],
                updated_at: 1_000,
            },
            spec,
            spec_hash: "abcd".into(),
            instances: vec![],
        };
        let text = inspect_text(&info, 11_000);
        assert!(
            text.starts_with("service:     shop/web\nimage:       nginx:1.27\n"),
            "{text}"
        );
        assert!(text.contains("mode:        replicated (2 desired, 2 running, 0 healthy)"));
        assert!(text.contains("environment: PASSWORD\n"));
        assert!(!text.contains("hunter2"));
        assert!(text.contains("updated:     10s ago"));
        assert!(text.ends_with("ID   SERVICE   NODE   STATE   HEALTH   RESTARTS   EXIT   ERROR"));
    }
}
