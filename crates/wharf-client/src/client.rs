//! `Client`: one typed async method per endpoint of the wharf API.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wharf_types::{
    AuditRecord, DeployRequest, DeployResponse, Deployment, InstanceInfo, LogLine, NodeInfo,
    OperationResponse, ScaleRequest, ServiceInfo, ServiceSummary, StackDiff, StackInfo,
    StackSummary, VersionInfo,
};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{ClientError, Context, ndjson};

/// The lines of `GET .../logs`, decoded as they arrive.
pub type LogLines = BoxStream<'static, Result<LogLine, ClientError>>;
pub type Events = BoxStream<'static, Result<wharf_types::Event, ClientError>>;

/// How long an ordinary (non-streaming) request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of one wharf API, served by one master or several (a context URL may list them,
/// comma-separated: `https://a:7700,https://b:7700`). A request that cannot reach a master goes
/// to the next one; every later request starts with the one that answered. Cheap to clone (the
/// connection pool and the current master are shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    bases: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
    token: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `url` is the base URL of the master (`http://127.0.0.1:7400`); a trailing `/` is ignored.
    /// It trusts no certificate: an `https` URL needs [`Client::pinned`].
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Client {
        Client::with_http(url.into(), token.into(), Client::builder())
    }

    /// A client of an HTTPS API whose CA certificate has the SHA-256 `ca_fingerprint`.
    pub fn pinned(
        url: impl Into<String>,
        token: impl Into<String>,
        ca_fingerprint: &str,
    ) -> Result<Client, ClientError> {
        let tls = wharf_link::tls::api_client_config(ca_fingerprint)
            .map_err(|e| ClientError::Tls(format!("cannot pin the CA: {e}")))?;
        let builder = Client::builder().use_preconfigured_tls(tls);
        Ok(Client::with_http(url.into(), token.into(), builder))
    }

    /// The fingerprint of the CA the HTTPS API at `url` presents, trusting nothing yet: what
    /// `wharf login` shows the first time, as ssh shows a host key.
    pub async fn peek_ca_fingerprint(url: &str) -> Result<String, ClientError> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ClientError::Tls(format!("{url} is not a URL: {e}")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| ClientError::Tls(format!("{url} names no host")))?;
        let port = parsed.port_or_known_default().unwrap_or(443);
        wharf_link::tls::peek_ca_fingerprint(host.trim_matches(['[', ']']), port)
            .await
            .map_err(|e| ClientError::Tls(format!("cannot reach {url}: {e}")))
    }

    fn builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("wharf-client/", env!("CARGO_PKG_VERSION")))
    }

    fn with_http(urls: String, token: String, builder: reqwest::ClientBuilder) -> Client {
        let http = builder
            .build()
            .expect("building an HTTP client cannot fail");
        let mut bases: Vec<String> = urls
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if bases.is_empty() {
            bases.push(urls.trim_end_matches('/').to_string());
        }
        Client {
            http,
            bases: Arc::new(bases),
            current: Arc::default(),
            token,
        }
    }

    /// The base URL of the master requests go to now.
    fn base(&self) -> String {
        self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()].clone()
    }

    /// `base` did not answer: the next request goes to the next master (if another did not
    /// move on already).
    fn next_master(&self, base: &str) {
        let n = self.bases.len();
        let at = self.current.load(Ordering::Relaxed);
        if n > 1 && self.bases[at % n] == base {
            let _ = self.current.compare_exchange(
                at,
                (at + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// The client a context describes: pinned to its CA when it has one; an `https` URL without
    /// one is refused (nothing would be trusted).
    pub fn from_context(ctx: &Context) -> Result<Client, ClientError> {
        match &ctx.ca_fingerprint {
            Some(fp) => Client::pinned(ctx.url.clone(), ctx.token.clone(), fp),
            None if ctx.url.starts_with("https://") => Err(ClientError::Tls(format!(
                "{} serves HTTPS and the context pins no CA for it",
                ctx.url
            ))),
            None => Ok(Client::new(ctx.url.clone(), ctx.token.clone())),
        }
    }

    /// Every master this client knows, comma-separated (as a context URL lists them).
    pub fn url_list(&self) -> String {
        self.bases.join(",")
    }

    /// The token requests carry.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The base URL of the master requests go to now.
    pub fn url(&self) -> String {
        self.base()
    }

    /// `GET /healthz` (no token).
    pub async fn healthz(&self) -> Result<(), ClientError> {
        let url = format!("{}/healthz", self.base());
        let req = self.http.get(&url).timeout(REQUEST_TIMEOUT);
        self.fetch(req, &url).await.map(drop)
    }

    pub async fn version(&self) -> Result<VersionInfo, ClientError> {
        self.get("/v1/version").await
    }

    pub async fn list_stacks(&self) -> Result<Vec<StackSummary>, ClientError> {
        self.get("/v1/stacks").await
    }

    /// 404 (`ClientError::is_not_found`) when there is no such stack.
    pub async fn get_stack(&self, stack: &str) -> Result<StackInfo, ClientError> {
        self.get(&format!("/v1/stacks/{}", seg(stack))).await
    }

    /// `PUT /v1/stacks/{stack}`. `deployment_id` is `None` when nothing changed.
    pub async fn deploy_stack(
        &self,
        stack: &str,
        req: &DeployRequest,
    ) -> Result<DeployResponse, ClientError> {
        self.put_json(&format!("/v1/stacks/{}", seg(stack)), req)
            .await
    }

    pub async fn diff_stack(
        &self,
        stack: &str,
        req: &DeployRequest,
    ) -> Result<StackDiff, ClientError> {
        self.post_json(&format!("/v1/stacks/{}/diff", seg(stack)), req)
            .await
    }

    /// Starts removing a stack; it goes on in the background until `get_stack` answers 404.
    pub async fn remove_stack(
        &self,
        stack: &str,
        volumes: bool,
    ) -> Result<OperationResponse, ClientError> {
        self.delete(&format!("/v1/stacks/{}?volumes={volumes}", seg(stack)))
            .await
    }

    pub async fn stack_instances(&self, stack: &str) -> Result<Vec<InstanceInfo>, ClientError> {
        self.get(&format!("/v1/stacks/{}/instances", seg(stack)))
            .await
    }

    /// All services, or those of one stack.
    pub async fn list_services(
        &self,
        stack: Option<&str>,
    ) -> Result<Vec<ServiceSummary>, ClientError> {
        match stack {
            Some(s) => self.get(&format!("/v1/services?stack={}", seg(s))).await,
            None => self.get("/v1/services").await,
        }
    }

    pub async fn get_service(
        &self,
        stack: &str,
        service: &str,
    ) -> Result<ServiceInfo, ClientError> {
        self.get(&format!("/v1/services/{}/{}", seg(stack), seg(service)))
            .await
    }

    pub async fn service_instances(
        &self,
        stack: &str,
        service: &str,
    ) -> Result<Vec<InstanceInfo>, ClientError> {
        self.get(&format!(
            "/v1/services/{}/{}/instances",
            seg(stack),
            seg(service)
        ))
        .await
    }

    pub async fn scale_service(
        &self,
        stack: &str,
        service: &str,
        replicas: u32,
    ) -> Result<OperationResponse, ClientError> {
        self.post_json(
            &format!("/v1/services/{}/{}/scale", seg(stack), seg(service)),
            &ScaleRequest { replicas },
        )
        .await
    }

    /// Roll a service back to revision `to`, else to the one before the running one (409 when
    /// there is none).
    pub async fn rollback_service(
        &self,
        stack: &str,
        service: &str,
        to: Option<u64>,
    ) -> Result<OperationResponse, ClientError> {
        match to {
            Some(n) => {
                self.post(&format!(
                    "/v1/services/{}/{}/rollback?to={n}",
                    seg(stack),
                    seg(service)
                ))
                .await
            }
            None => self.service_post(stack, service, "rollback").await,
        }
    }

    /// A new revision of a service's spec with another image or environment.
    pub async fn update_service(
        &self,
        stack: &str,
        service: &str,
        req: &wharf_types::ServiceUpdateRequest,
    ) -> Result<OperationResponse, ClientError> {
        self.post_json(
            &format!("/v1/services/{}/{}/update", seg(stack), seg(service)),
            req,
        )
        .await
    }

    /// The revisions of a service's spec, oldest first.
    pub async fn service_history(
        &self,
        stack: &str,
        service: &str,
    ) -> Result<Vec<wharf_types::SpecRevisionInfo>, ClientError> {
        self.get(&format!(
            "/v1/services/{}/{}/history",
            seg(stack),
            seg(service)
        ))
        .await
    }

    /// The latest deployments, newest first, of one stack or all.
    pub async fn list_deployments(
        &self,
        stack: Option<&str>,
    ) -> Result<Vec<Deployment>, ClientError> {
        match stack {
            Some(s) => self.get(&format!("/v1/deployments?stack={}", seg(s))).await,
            None => self.get("/v1/deployments").await,
        }
    }

    /// Jobs (services that run to completion), of one stack or all, with their newest run.
    pub async fn list_jobs(
        &self,
        stack: Option<&str>,
    ) -> Result<Vec<wharf_types::JobInfo>, ClientError> {
        match stack {
            Some(s) => self.get(&format!("/v1/jobs?stack={}", seg(s))).await,
            None => self.get("/v1/jobs").await,
        }
    }

    /// One job with its runs, oldest first.
    pub async fn get_job(
        &self,
        stack: &str,
        service: &str,
    ) -> Result<wharf_types::JobInfo, ClientError> {
        self.get(&format!("/v1/jobs/{}/{}", seg(stack), seg(service)))
            .await
    }

    /// Ask for a run of a job now.
    pub async fn run_job(
        &self,
        stack: &str,
        service: &str,
    ) -> Result<wharf_types::JobRunRequested, ClientError> {
        self.post(&format!("/v1/jobs/{}/{}/run", seg(stack), seg(service)))
            .await
    }

    pub async fn restart_service(
        &self,
        stack: &str,
        service: &str,
    ) -> Result<OperationResponse, ClientError> {
        self.service_post(stack, service, "restart").await
    }

    /// Streams the logs of a service. With `follow` the stream only ends when dropped (or when
    /// the connection breaks); `tail` limits the history sent first.
    pub async fn logs(
        &self,
        stack: &str,
        service: &str,
        q: &wharf_types::LogQuery,
    ) -> Result<LogLines, ClientError> {
        let mut url = format!(
            "{}/v1/services/{}/{}/logs?follow={}",
            self.base(),
            seg(stack),
            seg(service),
            q.follow
        );
        for (key, value) in [
            ("tail", q.tail.map(|n| n.to_string())),
            ("since", q.since.map(|t| t.to_string())),
            ("until", q.until.map(|t| t.to_string())),
            ("timestamps", q.timestamps.then(|| "true".to_string())),
            ("slot", q.slot.map(|n| n.to_string())),
        ] {
            if let Some(v) = value {
                url.push_str(&format!("&{key}={v}"));
            }
        }
        self.ndjson::<LogLine>(url).await
    }

    /// A streamed answer of newline-delimited JSON objects of `T`, from `url`. No overall
    /// timeout: a followed stream is open-ended.
    async fn ndjson<T: DeserializeOwned + Send + 'static>(
        &self,
        url: String,
    ) -> Result<BoxStream<'static, Result<T, ClientError>>, ClientError> {
        let req = self.http.get(&url).bearer_auth(&self.token);
        let resp = self.fetch(req, &url).await?;
        let (base, source) = (self.base(), url.clone());
        let body = resp
            .bytes_stream()
            .map(move |r| r.map_err(|e| ClientError::from_reqwest(&base, &source, e)));
        Ok(ndjson::ndjson_stream::<T, _, _>(Box::pin(body), url).boxed())
    }

    /// The cluster's events (`GET /v1/events`), oldest first: after `after` (a cursor), since a
    /// time (Unix seconds), of one stack; following new ones when `follow`.
    pub async fn events(
        &self,
        after: Option<&str>,
        since: Option<i64>,
        stack: Option<&str>,
        follow: bool,
    ) -> Result<Events, ClientError> {
        let mut url = format!("{}/v1/events?follow={follow}", self.base());
        for (key, value) in [
            ("after", after.map(str::to_string)),
            ("since", since.map(|t| t.to_string())),
            ("stack", stack.map(str::to_string)),
        ] {
            if let Some(v) = value {
                url.push_str(&format!("&{key}={}", seg(&v)));
            }
        }
        self.ndjson::<wharf_types::Event>(url).await
    }

    /// The master's Prometheus metrics (`GET /metrics`), as text.
    pub async fn metrics_text(&self) -> Result<String, ClientError> {
        let url = format!("{}/metrics", self.base());
        let req = self.http.get(&url).bearer_auth(&self.token);
        let resp = self.fetch(req, &url).await?;
        resp.text()
            .await
            .map_err(|e| ClientError::from_reqwest(&self.base(), &url, e))
    }

    pub async fn deployment(&self, id: &str) -> Result<Deployment, ClientError> {
        self.get(&format!("/v1/deployments/{}", seg(id))).await
    }

    /// The deployment once it changed after `after` (its `updated_at`) or ended, or as it is
    /// after `wait` (a long poll: the API answers at most 30 s later).
    pub async fn deployment_after(
        &self,
        id: &str,
        after: u64,
        wait: std::time::Duration,
    ) -> Result<Deployment, ClientError> {
        self.get(&format!(
            "/v1/deployments/{}?after={after}&wait_ms={}",
            seg(id),
            wait.as_millis()
        ))
        .await
    }

    pub async fn create_join_token(
        &self,
        req: &wharf_types::JoinTokenRequest,
    ) -> Result<wharf_types::JoinTokenResponse, ClientError> {
        self.post_json("/v1/join-tokens", req).await
    }

    pub async fn create_token(
        &self,
        req: &wharf_types::TokenRequest,
    ) -> Result<wharf_types::TokenCreated, ClientError> {
        self.post_json("/v1/tokens", req).await
    }

    pub async fn list_tokens(&self) -> Result<Vec<wharf_types::TokenInfo>, ClientError> {
        self.get("/v1/tokens").await
    }

    /// 404 when there is no token of that name.
    pub async fn revoke_token(&self, name: &str) -> Result<OperationResponse, ClientError> {
        self.delete(&format!("/v1/tokens/{}", seg(name))).await
    }

    /// `wharf hook create`: the hook and its secret (shown only this once).
    pub async fn create_hook(
        &self,
        req: &wharf_types::HookRequest,
    ) -> Result<wharf_types::HookCreated, ClientError> {
        self.post_json("/v1/hooks", req).await
    }

    pub async fn list_hooks(&self) -> Result<Vec<wharf_types::HookInfo>, ClientError> {
        self.get("/v1/hooks").await
    }

    /// 404 when there is no hook of that id.
    pub async fn remove_hook(&self, id: &str) -> Result<OperationResponse, ClientError> {
        self.delete(&format!("/v1/hooks/{}", seg(id))).await
    }

    /// An outgoing hook's last deliveries, oldest first, with their tries.
    pub async fn hook_deliveries(
        &self,
        id: &str,
    ) -> Result<Vec<wharf_types::HookDelivery>, ClientError> {
        self.get(&format!("/v1/hooks/{}/deliveries", seg(id))).await
    }

    pub async fn add_user(
        &self,
        req: &wharf_types::UserRequest,
    ) -> Result<wharf_types::UserCreated, ClientError> {
        self.post_json("/v1/users", req).await
    }

    pub async fn list_users(&self) -> Result<Vec<wharf_types::UserInfo>, ClientError> {
        self.get("/v1/users").await
    }

    pub async fn remove_user(&self, name: &str) -> Result<OperationResponse, ClientError> {
        self.delete(&format!("/v1/users/{}", seg(name))).await
    }

    pub async fn set_password(
        &self,
        name: &str,
        req: &wharf_types::PasswordRequest,
    ) -> Result<OperationResponse, ClientError> {
        self.post_json(&format!("/v1/users/{}/password", seg(name)), req)
            .await
    }

    /// `POST /v1/me/password`: the caller (a user's session) changes its own password.
    pub async fn change_own_password(
        &self,
        req: &wharf_types::OwnPasswordRequest,
    ) -> Result<OperationResponse, ClientError> {
        self.post_json("/v1/me/password", req).await
    }

    /// `POST /v1/unlock` (a locked master): needs no token.
    pub async fn unlock(
        &self,
        req: &wharf_types::UnlockRequest,
    ) -> Result<OperationResponse, ClientError> {
        self.post_json("/v1/unlock", req).await
    }

    /// `POST /v1/login`: needs no token (this client's is not sent if empty).
    pub async fn login(
        &self,
        req: &wharf_types::LoginRequest,
    ) -> Result<wharf_types::LoginResponse, ClientError> {
        self.post_json("/v1/login", req).await
    }

    /// A new version of the secret or config `name` (its first when new), with `value`; the
    /// answer names the stacks rolled to it.
    pub async fn put_object(
        &self,
        kind: wharf_types::ObjectKind,
        name: &str,
        value: &[u8],
    ) -> Result<wharf_types::SecretInfo, ClientError> {
        use base64::Engine;
        let req = wharf_types::SecretRequest {
            value_base64: base64::engine::general_purpose::STANDARD.encode(value),
        };
        self.put_json(&format!("/v1/{}s/{}", kind.as_str(), seg(name)), &req)
            .await
    }

    pub async fn list_objects(
        &self,
        kind: wharf_types::ObjectKind,
    ) -> Result<Vec<wharf_types::SecretInfo>, ClientError> {
        self.get(&format!("/v1/{}s", kind.as_str())).await
    }

    pub async fn inspect_object(
        &self,
        kind: wharf_types::ObjectKind,
        name: &str,
    ) -> Result<wharf_types::SecretInfo, ClientError> {
        self.get(&format!("/v1/{}s/{}", kind.as_str(), seg(name)))
            .await
    }

    pub async fn remove_object(
        &self,
        kind: wharf_types::ObjectKind,
        name: &str,
    ) -> Result<OperationResponse, ClientError> {
        self.delete(&format!("/v1/{}s/{}", kind.as_str(), seg(name)))
            .await
    }

    /// `POST /v1/keys/rotate`: a new master key file on the master's host.
    pub async fn rotate_keys(&self) -> Result<wharf_types::KeyRotation, ClientError> {
        self.post_json("/v1/keys/rotate", &serde_json::json!({}))
            .await
    }

    /// Collect the registry's garbage (`POST /v1/registry/gc`).
    pub async fn registry_gc(
        &self,
        grace_secs: u64,
    ) -> Result<wharf_types::RegistryGc, ClientError> {
        self.post_json(
            &format!("/v1/registry/gc?grace_secs={grace_secs}"),
            &serde_json::json!({}),
        )
        .await
    }

    /// The masters, the leader, and the store's members (`GET /v1/masters`).
    /// The admission policy in force (`GET /v1/policy`).
    pub async fn policy(&self) -> Result<wharf_types::PolicyInfo, ClientError> {
        self.get("/v1/policy").await
    }

    /// Add OSV advisories to the vulnerability database (`POST /v1/scan/db`).
    pub async fn import_advisories(
        &self,
        files: Vec<wharf_types::AdvisoryFile>,
    ) -> Result<wharf_types::AdvisoryDbInfo, ClientError> {
        self.post_json("/v1/scan/db", &wharf_types::AdvisoryImport { files })
            .await
    }

    /// Scan an image on a node that has it (`POST /v1/images/scan`).
    pub async fn scan_image(&self, image: &str) -> Result<wharf_types::ImageScan, ClientError> {
        let req = wharf_types::ImageScanRequest {
            image: image.to_string(),
        };
        self.post_json("/v1/images/scan", &req).await
    }

    /// The tags of the cluster's registry with their scans' counts (`GET /v1/images`).
    pub async fn list_images(&self) -> Result<Vec<wharf_types::ImageInfo>, ClientError> {
        self.get("/v1/images").await
    }

    /// What the vulnerability database holds (`GET /v1/scan/db`).
    pub async fn advisory_db(&self) -> Result<wharf_types::AdvisoryDbInfo, ClientError> {
        self.get("/v1/scan/db").await
    }

    pub async fn masters(&self) -> Result<wharf_types::MastersStatus, ClientError> {
        self.get("/v1/masters").await
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeInfo>, ClientError> {
        self.get("/v1/nodes").await
    }

    /// A node by id or name.
    pub async fn get_node(&self, node: &str) -> Result<NodeInfo, ClientError> {
        self.get(&format!("/v1/nodes/{}", seg(node))).await
    }

    pub async fn label_node(
        &self,
        node: &str,
        req: &wharf_types::NodeLabelsRequest,
    ) -> Result<NodeInfo, ClientError> {
        self.post_json(&format!("/v1/nodes/{}/labels", seg(node)), req)
            .await
    }

    pub async fn drain_node(&self, node: &str) -> Result<NodeInfo, ClientError> {
        self.post(&format!("/v1/nodes/{}/drain", seg(node))).await
    }

    /// Have the node replace its WireGuard key (`wharf node rotate-keys`).
    pub async fn rotate_node_keys(&self, node: &str) -> Result<NodeInfo, ClientError> {
        self.post(&format!("/v1/nodes/{}/rotate-keys", seg(node)))
            .await
    }

    pub async fn activate_node(&self, node: &str) -> Result<NodeInfo, ClientError> {
        self.post(&format!("/v1/nodes/{}/activate", seg(node)))
            .await
    }

    pub async fn remove_node(
        &self,
        node: &str,
        force: bool,
    ) -> Result<OperationResponse, ClientError> {
        self.delete(&format!("/v1/nodes/{}?force={force}", seg(node)))
            .await
    }

    pub async fn rebalance_service(
        &self,
        stack: &str,
        service: &str,
    ) -> Result<OperationResponse, ClientError> {
        self.service_post(stack, service, "rebalance").await
    }

    pub async fn audit(&self) -> Result<Vec<AuditRecord>, ClientError> {
        self.get("/v1/audit").await
    }

    /// The audit records at or after `since` (Unix ms), of `actor`, about `stack`.
    pub async fn audit_where(
        &self,
        since: Option<u64>,
        actor: Option<&str>,
        stack: Option<&str>,
    ) -> Result<Vec<AuditRecord>, ClientError> {
        let mut query: Vec<String> = since.map(|t| format!("since={t}")).into_iter().collect();
        query.extend(actor.map(|a| format!("actor={}", seg(a))));
        query.extend(stack.map(|s| format!("stack={}", seg(s))));
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        self.get(&format!("/v1/audit{q}")).await
    }

    pub async fn verify_audit(&self) -> Result<wharf_types::AuditVerification, ClientError> {
        self.get("/v1/audit/verify").await
    }

    /// `POST /v1/services/{stack}/{service}/{action}` without a body.
    async fn service_post(
        &self,
        stack: &str,
        service: &str,
        action: &str,
    ) -> Result<OperationResponse, ClientError> {
        self.post(&format!(
            "/v1/services/{}/{}/{action}",
            seg(stack),
            seg(service)
        ))
        .await
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), T>(reqwest::Method::GET, path, None).await
    }

    /// `POST` without a body.
    async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), T>(reqwest::Method::POST, path, None).await
    }

    async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send::<(), T>(reqwest::Method::DELETE, path, None)
            .await
    }

    /// One request with the token and the request timeout, its JSON reply decoded.
    async fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        // A master that cannot be reached was never sent the request, one without the store
        // changed nothing (as far as it knows): the next one is asked.
        let mut tries = self.bases.len();
        let resp = loop {
            let url = format!("{}{}", self.base(), path);
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token)
                .timeout(REQUEST_TIMEOUT);
            if let Some(b) = body {
                req = req.json(b);
            }
            tries -= 1;
            match self.fetch(req, &url).await {
                Err(ClientError::Unreachable { .. }) if tries > 0 => continue,
                // That master cannot reach the store; another may.
                Err(e) if tries > 0 && e.api_error().is_some_and(|a| a.code == "no_quorum") => {
                    continue;
                }
                r => break (r?, url),
            }
        };
        let (resp, url) = resp;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::from_reqwest(&self.base(), &url, e))?;
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode { url, source })
    }

    /// Sends `req` (to `url`) and passes its 2xx reply through; anything else is an error.
    /// `GET /v1/services/{stack}/{service}/exec`, upgraded to the exec stream
    /// (`wharf_types::ExecFrame`): the connection, to read and write frames on.
    pub async fn exec(
        &self,
        stack: &str,
        service: &str,
        q: &wharf_types::ExecQuery,
    ) -> Result<reqwest::Upgraded, ClientError> {
        let mut url = format!(
            "{}/v1/services/{}/{}/exec?command={}&stdin={}&tty={}",
            self.base(),
            seg(stack),
            seg(service),
            utf8_percent_encode(&q.command, NON_ALPHANUMERIC),
            q.stdin,
            q.tty
        );
        for (key, value) in [
            ("slot", q.slot),
            ("cols", q.cols.map(u32::from)),
            ("rows", q.rows.map(u32::from)),
        ] {
            if let Some(v) = value {
                url.push_str(&format!("&{key}={v}"));
            }
        }
        // No overall timeout: the command may run for as long as it likes.
        let req = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, wharf_types::EXEC_PROTOCOL);
        let base = self.base();
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                let e = ClientError::from_reqwest(&base, &url, e);
                if e.is_transient() {
                    self.next_master(&base);
                }
                return Err(e);
            }
        };
        if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            check(&base, &url, resp).await?;
            return Err(ClientError::Protocol(format!(
                "{base} did not switch to the exec stream; is it a wharf master of this version?"
            )));
        }
        resp.upgrade()
            .await
            .map_err(|e| ClientError::from_reqwest(&base, &url, e))
    }

    /// `GET /v1/services/{stack}/{service}/stats`.
    pub async fn service_stats(
        &self,
        stack: &str,
        service: &str,
    ) -> Result<wharf_types::StatsResponse, ClientError> {
        self.get(&format!(
            "/v1/services/{}/{}/stats",
            seg(stack),
            seg(service)
        ))
        .await
    }

    /// `GET /v1/stats`: every running instance the token's scope names.
    pub async fn stats(&self) -> Result<wharf_types::StatsResponse, ClientError> {
        self.get("/v1/stats").await
    }

    async fn fetch(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, ClientError> {
        let base = self.base();
        let result = match req.send().await {
            Ok(resp) => check(&base, url, resp).await,
            Err(e) => Err(ClientError::from_reqwest(&base, url, e)),
        };
        if let Err(e) = &result
            && e.is_transient()
        {
            self.next_master(&base);
        }
        result
    }
}

/// Passes a 2xx reply through; turns any other into `ClientError::Api`.
async fn check(
    base: &str,
    url: &str,
    resp: reqwest::Response,
) -> Result<reqwest::Response, ClientError> {
    let status = resp.status();
    if status.is_success() {
        // A master whose store has no quorum answers from its copy, and says so (once per run).
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if let Some(w) = resp.headers().get(reqwest::header::WARNING)
            && !WARNED.swap(true, Ordering::Relaxed)
        {
            let text = w.to_str().unwrap_or_default();
            let text = text
                .split_once('"')
                .map_or(text, |(_, t)| t.trim_end_matches('"'));
            eprintln!("warning: {text}");
        }
        return Ok(resp);
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| ClientError::from_reqwest(base, url, e))?;
    Err(ClientError::from_reply(
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        &body,
    ))
}

/// What [`seg`] encodes: everything but RFC 3986 unreserved bytes.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes one path segment (or query value): everything but RFC 3986 unreserved bytes.
fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Serves one connection: reads the request head (and a body by Content-Length), answers with
    /// `chunks` written one by one, and returns the request as text.
    async fn serve_once(chunks: Vec<String>) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = sock.read(&mut buf).await.unwrap();
                req.extend_from_slice(&buf[..n]);
                if let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&req[..end]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse::<usize>().unwrap())
                        .unwrap_or(0);
                    if req.len() >= end + 4 + len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            for c in chunks {
                sock.write_all(c.as_bytes()).await.unwrap();
                sock.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sock.shutdown().await.ok();
            String::from_utf8(req).unwrap()
        });
        (url, handle)
    }

    fn reply(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn sends_the_bearer_token_and_decodes_replies() {
        let (url, server) =
            serve_once(vec![reply("200 OK", r#"{"version":"0.1.0","api":"v1"}"#)]).await;
        let client = Client::new(format!("{url}/"), "tok-123");
        let v = client.version().await.unwrap();
        assert_eq!(v.api, "v1");
        let req = server.await.unwrap();
        assert!(req.starts_with("GET /v1/version HTTP/1.1\r\n"), "{req}");
        assert!(
            req.to_lowercase()
                .contains("\r\nauthorization: bearer tok-123\r\n"),
            "{req}"
        );
    }

    #[tokio::test]
    async fn decodes_api_errors() {
        let body = r#"{"code":"not_found","message":"no stack named shop","hint":"list stacks with `wharf stack ls`"}"#;
        let (url, server) = serve_once(vec![reply("404 Not Found", body)]).await;
        let client = Client::new(url, "t");
        let err = client.get_stack("shop").await.unwrap_err();
        match &err {
            ClientError::Api { status, error } => {
                assert_eq!(*status, 404);
                assert_eq!(error.code, "not_found");
                assert_eq!(error.message, "no stack named shop");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.is_bad_input() && err.is_not_found());
        assert_eq!(err.hint().unwrap(), "list stacks with `wharf stack ls`");
        let req = server.await.unwrap();
        assert!(req.starts_with("GET /v1/stacks/shop "), "{req}");
    }

    #[tokio::test]
    async fn sends_json_bodies_and_query_strings() {
        let (url, server) =
            serve_once(vec![reply("202 Accepted", r#"{"deployment_id":"d1"}"#)]).await;
        let client = Client::new(url, "t");
        let op = client.scale_service("shop", "web", 3).await.unwrap();
        assert_eq!(op.deployment_id.as_deref(), Some("d1"));
        let req = server.await.unwrap();
        assert!(
            req.starts_with("POST /v1/services/shop/web/scale "),
            "{req}"
        );
        assert!(req.ends_with(r#"{"replicas":3}"#), "{req}");

        let (url, server) = serve_once(vec![reply("200 OK", r#"{"deployment_id":null}"#)]).await;
        Client::new(url, "t")
            .remove_stack("a b", true)
            .await
            .unwrap();
        let req = server.await.unwrap();
        assert!(
            req.starts_with("DELETE /v1/stacks/a%20b?volumes=true "),
            "{req}"
        );
    }

    #[tokio::test]
    async fn streams_logs_across_chunks() {
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n".to_string();
        let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
        let (url, server) = serve_once(vec![
            head,
            chunk(r#"{"instance":"shop.web.1","stream":"stdout","li"#),
            chunk("ne\":\"hello\"}\n{\"instance\":\"shop.web.2\",\"stream\":\"stderr\",\"line\":\"oops\"}\n"),
            "0\r\n\r\n".to_string(),
        ])
        .await;
        let client = Client::new(url, "t");
        let lines: Vec<LogLine> = client
            .logs(
                "shop",
                "web",
                &wharf_types::LogQuery {
                    since: Some(1_700_000_000),
                    timestamps: true,
                    slot: Some(2),
                    ..wharf_types::LogQuery::last(10).following()
                },
            )
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].line, "hello");
        assert_eq!(lines[1].instance, "shop.web.2");
        let req = server.await.unwrap();
        assert!(
            req.starts_with(
                "GET /v1/services/shop/web/logs?follow=true&tail=10&since=1700000000&timestamps=true&slot=2 "
            ),
            "{req}"
        );
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = Client::new(url.clone(), "t")
            .list_stacks()
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("cannot reach the wharf API at {url}")
        );
        assert_eq!(
            err.hint().unwrap(),
            "is `wharf up` running? check the context with `wharf context`"
        );
        assert!(!err.is_bad_input());
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("web-1.a_b~"), "web-1.a_b~");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
        assert_eq!(seg("ü?&=%"), "%C3%BC%3F%26%3D%25");
    }
}
