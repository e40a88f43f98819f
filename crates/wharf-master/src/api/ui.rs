//! The web dashboard at `/ui`: server-rendered HTML (maud escapes every value), a little plain
//! JavaScript, live updates by Server-Sent Events (`GET /v1/events`), nothing from outside the
//! machine. Pages read through the API's own handlers, as the caller: a stack-scoped token sees
//! its stacks only, a viewer gets no buttons (and the API refuses the calls anyway).
//!
//! Sessions are the API's tokens in an `HttpOnly`, `SameSite=Strict` cookie, made by the login
//! form (a user's password, or a token). The API takes the cookie in place of a bearer token;
//! a change with it must also carry `x-wharf-ui: 1`, which no other site's page can send
//! without a preflight this API never allows (see `authenticate`).

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use wharf_types::*;

use super::error::ApiQuery;
use crate::Master;
use crate::mutate::Actor;
use crate::policy::{Caller, Permission, allows};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "wharf_session";
/// The header a cookie-authenticated change must carry.
pub(crate) const UI_HEADER: &str = "x-wharf-ui";

/// The token in the request's session cookie, if any.
pub(crate) fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:.6rem 1rem;display:flex;flex-wrap:wrap;gap:.8rem;align-items:center}
header a{color:#cfe0ff;text-decoration:none}header .who{margin-left:auto;font-size:.9rem}
main{padding:.8rem;max-width:80rem;margin:auto}
section{background:#fff;border-radius:6px;padding:.6rem .8rem;margin:.8rem 0;box-shadow:0 1px 2px #0002}
h2{font-size:1.05rem;margin:.2rem 0 .5rem}
.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%;font-size:.9rem}
td,th{padding:.25rem .5rem;border-bottom:1px solid #e4e6eb;text-align:left;white-space:nowrap}
.ok{color:#137333}.bad{color:#b3261e}.warn{color:#a05a00}
button{font:inherit;padding:.2rem .7rem;border-radius:4px;border:1px solid #8a94a6;background:#fff;cursor:pointer}
progress{width:8rem}#events li{font-size:.85rem;white-space:nowrap}
pre{background:#1d2330;color:#e8eaf0;padding:.5rem;overflow:auto;max-height:20rem;font-size:.8rem}
form.login{max-width:22rem;margin:3rem auto;background:#fff;padding:1rem;border-radius:6px}
form.login input{width:100%;box-sizing:border-box;margin:.2rem 0 .6rem;padding:.4rem}
";

/// Live updates: the page follows the event stream from the cursor it was rendered at; a
/// change refreshes the `#live` part (server-rendered) after a short quiet spell.
const SCRIPT: &str = r#"
(function(){
  var live=document.getElementById('live'), list=document.getElementById('events');
  var q=document.body.dataset.stack?('&stack='+encodeURIComponent(document.body.dataset.stack)):'';
  var src=new EventSource('/v1/events?follow=true&after='+document.body.dataset.cursor+q);
  var timer=null;
  function refresh(){timer=null;fetch(location.pathname+'?part=live',{credentials:'same-origin'})
    .then(function(r){return r.ok?r.text():null}).then(function(t){if(t!==null){live.innerHTML=t;}});}
  src.onmessage=function(m){var e=JSON.parse(m.data);
    if(list){var li=document.createElement('li');li.textContent=new Date(e.time).toISOString().slice(11,19)+' '+e.kind+' '+(e.instance||e.service||e.node||'')+': '+e.message;
      list.insertBefore(li,list.firstChild);while(list.children.length>50){list.removeChild(list.lastChild);}}
    if(!timer){timer=setTimeout(refresh,300);}};
  document.addEventListener('click',function(ev){var b=ev.target.closest('button[data-post]');if(!b){return;}
    b.disabled=true;fetch(b.dataset.post,{method:'POST',credentials:'same-origin',headers:{'x-wharf-ui':'1'}})
      .then(function(r){if(!r.ok){return r.json().then(function(j){alert(j.message+(j.hint?'\n'+j.hint:''));});}})
      .finally(function(){b.disabled=false;refresh();});});
  document.addEventListener('click',function(ev){var b=ev.target.closest('button[data-logs]');if(!b){return;}
    var out=document.getElementById('logs');out.textContent='…';
    fetch(b.dataset.logs,{credentials:'same-origin'}).then(function(r){return r.text()}).then(function(t){
      out.textContent=t.split('\n').filter(Boolean).map(function(l){try{var j=JSON.parse(l);return j.instance+' | '+j.line;}catch(e){return l;}}).join('\n');});});
})();
"#;

fn page(
    title: &str,
    caller: Option<&Caller>,
    body_attrs: (&str, &str),
    content: Markup,
) -> Html<String> {
    let (cursor, stack) = body_attrs;
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · Wharf" }
                    style { (PreEscaped(STYLE)) }
                }
                body data-cursor=(cursor) data-stack=(stack) {
                    header {
                        strong { a href="/ui" { "Wharf" } }
                        @if let Some(c) = caller {
                            span.who {
                                (c.name) " (" (c.role.to_string()) ") "
                                form method="post" action="/ui/logout" style="display:inline" {
                                    button type="submit" { "Log out" }
                                }
                            }
                        }
                    }
                    main { (content) }
                    @if caller.is_some() { script { (PreEscaped(SCRIPT)) } }
                }
            }
        }
        .into_string(),
    )
}

fn fmt_time(ms: u64) -> String {
    time_of(ms).unwrap_or_else(|| ms.to_string())
}

fn time_of(ms: u64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.format(&f).ok()
}

fn state_class(s: &str) -> &'static str {
    match s {
        "running" | "healthy" | "succeeded" | "ready" => "ok",
        "failed" | "unhealthy" | "down" | "exited" | "unreachable" => "bad",
        _ => "warn",
    }
}

fn lower<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
}

#[derive(Deserialize)]
pub(crate) struct LoginPage {
    error: Option<String>,
}

/// `GET /ui/login`: the form.
pub(crate) async fn login_page(Query(q): Query<LoginPage>) -> Html<String> {
    page(
        "Log in",
        None,
        ("", ""),
        html! {
            form.login method="post" action="/ui/login" {
                h2 { "Log in to Wharf" }
                @if let Some(e) = &q.error { p.bad { (e) } }
                label { "User" input name="user" autocomplete="username"; }
                label { "Password" input name="password" type="password" autocomplete="current-password"; }
                p { "or" }
                label { "API token" input name="token" type="password" autocomplete="off"; }
                button type="submit" id="login" { "Log in" }
            }
        },
    )
}

fn session_cookie(token: &str, max_age_s: u64) -> String {
    format!("{COOKIE}={token}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={max_age_s}")
}

fn login_failed(why: &str) -> Response {
    let q: String = form_urlencoded::byte_serialize(why.as_bytes()).collect();
    Redirect::to(&format!("/ui/login?error={q}")).into_response()
}

/// `POST /ui/login`: a user's password makes a session (as `POST /v1/login`); a token is
/// checked and kept as it is. Either way it goes into the cookie.
pub(crate) async fn login(
    State(m): State<Master>,
    connect: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    Form(f): Form<LoginForm>,
) -> Response {
    let source = connect.map(|Extension(c)| c.0.ip());
    if let Some(ip) = source
        && !m.auth_failures.has_left(ip, std::time::Instant::now())
    {
        return login_failed("too many failed attempts: wait a few seconds");
    }
    let token = if !f.token.trim().is_empty() {
        match m.authenticate(f.token.trim()).await {
            Ok(Ok(_)) => f.token.trim().to_string(),
            _ => {
                if let Some(ip) = source {
                    m.auth_failures.spend(ip, std::time::Instant::now());
                }
                return login_failed("that token is not valid (or has expired)");
            }
        }
    } else {
        let actor = Actor {
            name: f.user.clone(),
            source: source.map(|ip| ip.to_string()),
            ..Actor::default()
        };
        let req = LoginRequest {
            user: f.user,
            password: Some(Password(f.password)),
            invitation: None,
            new_password: None,
        };
        match m.login(&actor, &req).await {
            Ok(r) => r.token,
            Err(_) => {
                if let Some(ip) = source {
                    m.auth_failures.spend(ip, std::time::Instant::now());
                }
                return login_failed("wrong user or password");
            }
        }
    };
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, session_cookie(&token, 12 * 3600)),
            (header::LOCATION, "/ui".to_string()),
        ],
    )
        .into_response()
}

/// `POST /ui/logout`: the cookie is cleared.
pub(crate) async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, session_cookie("", 0)),
            (header::LOCATION, "/ui/login".to_string()),
        ],
    )
        .into_response()
}

/// The caller of a page, from its session cookie; else the way to the login form.
async fn caller_of(m: &Master, headers: &HeaderMap) -> Result<Caller, Failed> {
    let Some(token) = session_token(headers) else {
        return Err(Box::new(Redirect::to("/ui/login").into_response()));
    };
    match m.authenticate(&token).await {
        Ok(Ok(c)) => Ok(c),
        _ => Err(Box::new(login_failed(
            "your session has ended: log in again",
        ))),
    }
}

#[derive(Deserialize)]
pub(crate) struct Part {
    part: Option<String>,
}

/// What a page makes of a failure: the response to send instead (boxed: it is large).
type Failed = Box<Response>;

fn decode<T>(r: super::error::ApiResult<T>) -> Result<T, Failed> {
    r.map(|Json(v)| v).map_err(|e| Box::new(e.into_response()))
}

fn query<T: for<'de> Deserialize<'de>>(v: serde_json::Value) -> ApiQuery<T> {
    ApiQuery(serde_json::from_value(v).expect("a query the UI builds"))
}

/// The current end of the event log: where a page's live stream starts.
async fn cursor_now(m: &Master) -> String {
    m.store
        .current_revision()
        .await
        .map(|r| r.to_string())
        .unwrap_or_default()
}

/// `GET /ui`: stacks, nodes, deployments, events and the audit trail.
pub(crate) async fn overview(
    State(m): State<Master>,
    headers: HeaderMap,
    Query(p): Query<Part>,
) -> Response {
    match overview_page(m, headers, p).await {
        Ok(r) => r,
        Err(r) => *r,
    }
}

async fn overview_page(m: Master, headers: HeaderMap, p: Part) -> Result<Response, Failed> {
    let caller = caller_of(&m, &headers).await?;
    let cursor = cursor_now(&m).await;
    let live = overview_live(&m, &caller).await?;
    if p.part.as_deref() == Some("live") {
        return Ok(Html(live.into_string()).into_response());
    }
    let audit = if allows(caller.role, Permission::ReadAudit) {
        let mut records =
            decode(super::admin::list_audit(State(m.clone()), query(serde_json::json!({}))).await)?;
        records.reverse();
        records.truncate(20);
        Some(records)
    } else {
        None
    };
    let content = html! {
        div #live { (live) }
        section {
            h2 { "Events" }
            ul #events {}
        }
        @if let Some(records) = &audit {
            section {
                h2 { "Audit trail (newest first)" }
                div.scroll { table {
                    tr { th { "time" } th { "actor" } th { "action" } th { "target" } th { "outcome" } }
                    @for r in records {
                        tr { td { (fmt_time(r.at)) } td { (r.actor) } td { (r.action) } td { (r.target) } td { (r.outcome) } }
                    }
                } }
            }
        }
    };
    Ok(page("Cluster", Some(&caller), (&cursor, ""), content).into_response())
}

async fn overview_live(m: &Master, caller: &Caller) -> Result<Markup, Failed> {
    let stacks =
        decode(super::stacks::list_stacks(State(m.clone()), Extension(caller.clone())).await)?;
    let nodes = if caller.scope.is_empty() {
        decode(super::nodes::list_nodes(State(m.clone())).await)?
    } else {
        vec![]
    };
    let deployments = decode(
        super::deployments::list_deployments(
            State(m.clone()),
            Extension(caller.clone()),
            query(serde_json::json!({"limit": 10})),
        )
        .await,
    )?;
    let may_drain = allows(caller.role, Permission::ManageNodes) && caller.scope.is_empty();
    Ok(html! {
        section {
            h2 { "Stacks" }
            div.scroll { table #stacks {
                tr { th { "stack" } th { "services" } th { "instances" } th { "updated" } }
                @for s in &stacks {
                    tr {
                        td { a href={ "/ui/stacks/" (s.name) } { (s.name) } }
                        td { (s.services) }
                        td class=(if s.instances_running >= s.instances_desired { "ok" } else { "warn" }) {
                            (s.instances_running) " / " (s.instances_desired) " running"
                        }
                        td { (fmt_time(s.updated_at)) }
                    }
                }
            } }
        }
        @if caller.scope.is_empty() {
            section {
                h2 { "Nodes" }
                div.scroll { table #nodes {
                    tr { th { "node" } th { "state" } th { "cpus" } th { "memory" } th { "instances" } th { "labels" } @if may_drain { th {} } }
                    @for n in &nodes {
                        @let state = lower(&n.state);
                        tr data-node=(n.id) {
                            td { (n.name) " " small { (n.id) } }
                            td class=(state_class(&state)) { (state) }
                            td { (n.cpus) }
                            td { (n.memory_bytes / (1024 * 1024)) " MiB" }
                            td { (n.instances) }
                            td { @for (k, v) in &n.labels { (k) "=" (v) " " } }
                            @if may_drain {
                                td {
                                    @if n.state == NodeState::Draining {
                                        button.activate data-post={ "/v1/nodes/" (n.id) "/activate" } { "Activate" }
                                    } @else {
                                        button.drain data-post={ "/v1/nodes/" (n.id) "/drain" } { "Drain" }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
        (deployments_section(&deployments))
    })
}

fn deployments_section(deployments: &[Deployment]) -> Markup {
    html! {
        section {
            h2 { "Deployments" }
            div.scroll { table #deployments {
                tr { th { "deployment" } th { "stack" } th { "state" } th { "progress" } th { "started" } }
                @for d in deployments {
                    @let state = lower(&d.state);
                    tr data-deployment=(d.id) {
                        td { (d.id) }
                        td { a href={ "/ui/stacks/" (d.stack) } { (d.stack) } }
                        td.state class=(state_class(&state)) { (state) @if let Some(m) = &d.message { br; small { (excerpt(m, 160)) } } }
                        td {
                            @for s in &d.services {
                                div { (s.service) " " progress max=(s.desired.max(1)) value=(s.updated.min(s.ready)) {} " " (s.updated) "/" (s.desired) " updated, " (s.ready) " ready" }
                                @for i in &s.instances {
                                    div { small { (i.id) " g" (i.generation) ": " (lower(&i.state)) " " (lower(&i.health)) } }
                                }
                            }
                        }
                        td { (fmt_time(d.created_at)) }
                    }
                }
            } }
        }
    }
}

/// `GET /ui/stacks/{stack}`: its services, instances per node, deployments, events, logs.
pub(crate) async fn stack(
    State(m): State<Master>,
    headers: HeaderMap,
    Path(stack): Path<String>,
    Query(p): Query<Part>,
) -> Response {
    match stack_page(m, headers, stack, p).await {
        Ok(r) => r,
        Err(r) => *r,
    }
}

async fn stack_page(
    m: Master,
    headers: HeaderMap,
    stack: String,
    p: Part,
) -> Result<Response, Failed> {
    let caller = caller_of(&m, &headers).await?;
    if !caller.sees(&stack) {
        let refused = (
            StatusCode::FORBIDDEN,
            format!("your token does not reach stack {stack}"),
        );
        return Err(Box::new(refused.into_response()));
    }
    let cursor = cursor_now(&m).await;
    let live = stack_live(&m, &caller, &stack).await?;
    if p.part.as_deref() == Some("live") {
        return Ok(Html(live.into_string()).into_response());
    }
    let info = decode(super::stacks::get_stack(State(m.clone()), Path(stack.clone())).await)?;
    let may_logs = allows(caller.role, Permission::ReadLogs);
    let content = html! {
        h1 style="font-size:1.2rem" { "Stack " (stack) }
        div #live { (live) }
        @if may_logs {
            section {
                h2 { "Logs (last 50 lines)" }
                @for name in info.spec.services.keys() {
                    button data-logs={ "/v1/services/" (stack) "/" (name) "/logs?tail=50" } { (name) } " "
                }
                pre #logs { "choose a service" }
            }
        }
        section { h2 { "Events" } ul #events {} }
    };
    Ok(page(&stack, Some(&caller), (&cursor, &stack), content).into_response())
}

async fn stack_live(m: &Master, caller: &Caller, stack: &str) -> Result<Markup, Failed> {
    let services = decode(
        super::services::list_services(
            State(m.clone()),
            Extension(caller.clone()),
            query(serde_json::json!({"stack": stack})),
        )
        .await,
    )?;
    let info = decode(super::stacks::get_stack(State(m.clone()), Path(stack.to_string())).await)?;
    let instances =
        decode(super::services::stack_instances(State(m.clone()), Path(stack.to_string())).await)?;
    let deployments = decode(
        super::deployments::list_deployments(
            State(m.clone()),
            Extension(caller.clone()),
            query(serde_json::json!({"stack": stack, "limit": 5})),
        )
        .await,
    )?;
    let mut by_node: std::collections::BTreeMap<&str, Vec<&InstanceInfo>> = Default::default();
    for i in &instances {
        by_node.entry(i.node.as_str()).or_default().push(i);
    }
    Ok(html! {
        section {
            h2 { "Services" }
            div.scroll { table #services {
                tr { th { "service" } th { "image" } th { "replicas" } th { "healthy" } th { "ports" } th { "ingress" } }
                @for s in &services {
                    @let spec = info.spec.services.get(&s.name);
                    tr {
                        td { (s.name) }
                        td { (s.image) }
                        td class=(if s.running >= s.replicas { "ok" } else { "warn" }) { (s.running) " / " (s.replicas) }
                        td { (s.healthy) }
                        td { (s.ports.join(", ")) }
                        td { @if let Some(spec) = spec { @for r in &spec.wharf.ingress { ":" (r.listen) " → " (r.port) " " } } }
                    }
                }
            } }
        }
        section {
            h2 { "Instances by node" }
            div.scroll { table #instances {
                tr { th { "node" } th { "instance" } th { "generation" } th { "state" } th { "health" } th { "restarts" } }
                @for (node, insts) in &by_node {
                    @for i in insts {
                        @let state = lower(&i.state);
                        @let health = lower(&i.health);
                        tr { td { (node) } td { (i.id) } td { (i.generation) } td class=(state_class(&state)) { (state) } td class=(state_class(&health)) { (health) } td { (i.restarts) } }
                    }
                }
            } }
        }
        (deployments_section(&deployments))
    })
}
