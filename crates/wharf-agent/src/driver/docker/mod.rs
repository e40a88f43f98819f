//! The Docker driver: runs instances as containers on the local Docker Engine through bollard.
//!
//! Every container carries the instance labels (`InstanceSpec::labels`), joins the stack network
//! `wharf_<stack>` (resolving names through Wharf's DNS on the network's gateway; the service name
//! as a Docker alias only where that DNS cannot listen, see `network::use_dns`), and has restart
//! policy "no": the agent restarts.
//!
//! `network.rs`: the stack networks; `image.rs`: pulls and builds; `container.rs`: the create body
//! and volumes; `hooks.rs`: the `post_start` and `pre_stop` hooks (exec); `observe.rs`:
//! inspecting containers and reading their logs; `exec.rs`: `wharf service exec` (an attached
//! exec, with a TTY when asked) and one sample of a container's resource usage.

mod container;
mod exec;
mod hooks;
mod image;
pub use image::engine_ref;
mod network;
mod observe;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListVolumesOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptions, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use futures::stream::{BoxStream, StreamExt};
use wharf_types::{DriverKind, LogQuery, LogStream, MountKind, labels};

use super::{
    Driver, DriverError, DriverErrorKind, DriverInfo, InstanceSpec, LogLines, Observed, Stop,
};
use container::container_body;
pub use container::volume_name;
pub use image::CONTEXT_HASH_LABEL;
use image::{IMAGE_MISSING_HINT, PULL_TIMEOUT};
pub use network::network_name;
use network::{ambiguous_network, attach_to, is_lost_network, use_dns};
pub use observe::parse_rfc3339_ms;
use observe::{eager, observe, split_lines};

const UNAVAILABLE_HINT: &str = "start the Docker engine (sudo systemctl start docker / dockerd) or run process services with x-wharf: {driver: process}";

/// Runs instances as Docker containers.
#[derive(Clone)]
pub struct DockerDriver {
    docker: Docker,
    /// Serialises network creation (the engine allows duplicate names on API 1.41) and image builds
    /// per image, within this process.
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    pull_timeout: Duration,
    /// The node this driver works for: its containers carry `io.wharf.node=<node>` and it sees only
    /// those, so several agents (or several `wharf up`) sharing one engine never touch each other's.
    node: Option<String>,
    /// Subnets and service discovery of the stack networks (`stacknet.rs`).
    networks: Option<Arc<crate::stacknet::StackNetworks>>,
    /// The engine's `os/arch`, read once (for services that name a `platform`).
    platform: Arc<tokio::sync::OnceCell<String>>,
    /// The node's mirror of the cluster's registry (`127.0.0.1:PORT`): images a deploy pinned
    /// there are pulled and run by this name (`image::engine_ref`).
    mirror: Option<String>,
}

impl DockerDriver {
    /// Connect to the local engine (`DOCKER_HOST` or the default socket) and negotiate the API version.
    pub async fn connect() -> Result<Self, DriverError> {
        let docker = Docker::connect_with_local_defaults().map_err(|e| unavailable(&e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(Self::from_client(docker))
    }

    /// Wrap an already negotiated client.
    pub fn from_client(docker: Docker) -> Self {
        DockerDriver {
            docker,
            locks: Arc::default(),
            pull_timeout: PULL_TIMEOUT,
            node: None,
            networks: None,
            platform: Arc::default(),
            mirror: None,
        }
    }

    /// Whether the negotiated engine API is at least `major.minor`.
    fn api_at_least(&self, major: usize, minor: usize) -> bool {
        let v = self.docker.client_version();
        (v.major_version, v.minor_version) >= (major, minor)
    }

    /// Refuse, with what to do, an instance asking for what this engine cannot give: a volume
    /// `subpath` (API 1.45), another platform than the engine's.
    async fn check_engine_supports(&self, inst: &InstanceSpec) -> Result<(), DriverError> {
        let v = self.docker.client_version();
        if inst
            .spec
            .volumes
            .iter()
            .any(|m| m.options.subpath.is_some())
            && !self.api_at_least(1, 45)
        {
            return Err(DriverError::new(
                DriverErrorKind::InvalidSpec,
                format!(
                    "volume.subpath needs Docker Engine API 1.45 (Docker 26); this engine speaks {}.{}",
                    v.major_version, v.minor_version
                ),
            )
            .with_hint("upgrade the engine on the nodes, or mount the whole volume"));
        }
        let Some(want) = &inst.spec.container.platform else {
            return Ok(());
        };
        let have = self
            .platform
            .get_or_try_init(|| async {
                let info = self
                    .docker
                    .info()
                    .await
                    .map_err(|e| map_err(e, "cannot read engine info"))?;
                Ok::<_, DriverError>(engine_platform(
                    info.os_type.as_deref().unwrap_or("linux"),
                    info.architecture.as_deref().unwrap_or_default(),
                ))
            })
            .await?;
        let os_arch = |p: &str| p.split('/').take(2).collect::<Vec<_>>().join("/");
        if os_arch(want) != *have {
            return Err(DriverError::new(
                DriverErrorKind::InvalidSpec,
                format!("the service asks for platform {want}; this node's engine runs {have}"),
            )
            .with_hint("place the service on nodes of that platform (deploy.placement.constraints on node labels), or remove platform:"));
        }
        Ok(())
    }

    /// Scope the driver to one node's containers (see the `node` field).
    pub fn for_node(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }

    /// Label filters selecting the containers this driver manages.
    fn managed_filter(&self) -> Vec<String> {
        let mut f = vec![format!("{}=true", labels::MANAGED)];
        if let Some(n) = &self.node {
            f.push(format!("{}={n}", labels::NODE));
        }
        f
    }

    /// Pull images of the cluster's registry through the node's mirror at `addr` (`host:port`).
    pub fn with_mirror(mut self, addr: String) -> Self {
        self.mirror = Some(addr);
        self
    }

    /// The name the engine knows `inst`'s image by (through the mirror when pinned there).
    pub(super) fn engine_image(&self, inst: &InstanceSpec) -> String {
        image::engine_ref(
            &inst.spec.image_ref(&inst.stack, &inst.service),
            self.mirror.as_deref(),
        )
    }

    /// How long `prepare` tries to pull a missing image (default 20 s).
    pub fn with_pull_timeout(mut self, timeout: Duration) -> Self {
        self.pull_timeout = timeout;
        self
    }

    /// The underlying client.
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock();
        locks.entry(key.to_string()).or_default().clone()
    }

    /// Create stack networks with the subnets, and containers with the DNS server, of `networks`;
    /// `networks` finds the stack networks' gateways through this driver (`Gateways`).
    pub fn with_networks(mut self, networks: Arc<crate::stacknet::StackNetworks>) -> Self {
        let mut gateways = self.clone();
        gateways.networks = None; // no reference cycle
        networks.set_gateways(Arc::new(gateways));
        self.networks = Some(networks);
        self
    }
}

#[async_trait::async_trait]
impl Driver for DockerDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Docker
    }

    async fn info(&self) -> Result<DriverInfo, DriverError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| map_err(e, "cannot read engine info"))?;
        Ok(DriverInfo {
            kind: Some(DriverKind::Docker),
            version: info.server_version,
            os: info.operating_system.or(info.os_type).unwrap_or_default(),
            cpus: info.ncpu.and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            memory_bytes: info
                .mem_total
                .and_then(|m| u64::try_from(m).ok())
                .unwrap_or(0),
            storage_driver: info.driver,
            kernel: info.kernel_version,
        })
    }

    async fn list(&self) -> Result<Vec<Observed>, DriverError> {
        let filters = HashMap::from([("label", self.managed_filter())]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| map_err(e, "cannot list containers"))?;
        let mut out = Vec::with_capacity(summaries.len());
        let mut by_asker = HashMap::new();
        for s in summaries {
            let Some(id) = s.id else { continue };
            let Some(c) = self.inspect(&id).await? else {
                continue;
            };
            match observe(&id, &c) {
                Ok(o) => {
                    if let Some(servers) = asked_servers(&c)
                        && let Some(ip) = o.address.as_deref().and_then(|a| a.parse().ok())
                    {
                        by_asker.insert(ip, servers);
                    }
                    out.push(o);
                }
                Err(why) => tracing::warn!(
                    container = id,
                    "skipping a wharf container with malformed labels: {why}"
                ),
            }
        }
        // An observation: DNS listeners (also those the running containers need after an
        // agent restart) are set up by `StackNetworks::follow` and `prepare`. Only where the
        // DNS server forwards the questions of containers whose service names its own name
        // servers follows what runs here, as a whole each time.
        if let Some(networks) = &self.networks {
            networks.set_asker_upstreams(by_asker);
        }
        Ok(out)
    }

    async fn prepare(&self, inst: &InstanceSpec) -> Result<(), DriverError> {
        self.ensure_network(&inst.stack).await?;
        // Before `create`, which gives the container the DNS server only if it listens.
        if let Some(networks) = &self.networks {
            networks.ensure_dns(&inst.stack).await;
        }
        self.check_engine_supports(inst).await?;
        for m in &inst.spec.volumes {
            if m.kind == MountKind::Volume && !m.source.is_empty() {
                self.ensure_volume(&inst.stack, m).await?;
            }
            if m.kind == MountKind::Bind {
                host_path(m)?;
            }
        }
        self.ensure_image(inst).await
    }

    async fn create_with_files(
        &self,
        inst: &InstanceSpec,
        files: &[crate::driver::MountedFile],
    ) -> Result<String, DriverError> {
        let name = inst.name();
        let mut body = container_body(inst, files)?;
        body.image = Some(self.engine_image(inst));
        if !self.api_at_least(1, 44)
            && let Some(h) = body.healthcheck.as_mut()
            && h.start_interval.take().is_some()
        {
            tracing::warn!(
                container = name,
                "healthcheck.start_interval needs Docker Engine API 1.44; this engine checks at the interval during the start period too"
            );
        }
        if let (Some(node), Some(l)) = (&self.node, body.labels.as_mut()) {
            l.insert(labels::NODE.to_string(), node.clone());
        }
        // Attach by network id, not name: on API 1.41 names are not unique, and agents sharing an
        // engine may briefly have created the stack network twice. Every agent picks the oldest,
        // so all containers of a stack share one network and the duplicates can be removed.
        let net = network_name(&inst.stack);
        let host_network = inst.spec.network_mode == Some(wharf_types::NetworkMode::Host);
        if let Some((server, search)) = self.networks.as_ref().and_then(|n| n.dns_for(&inst.stack))
            && !host_network
        {
            use_dns(&mut body, &net, server, search);
        }
        if let Some((_, id)) = self.networks_named(&net).await?.first() {
            attach_to(&mut body, &net, id);
        }
        let mut options = CreateContainerOptionsBuilder::default().name(&name);
        if let Some(p) = &inst.spec.container.platform {
            options = options.platform(p);
        }
        let options = options.build();
        match self.docker.create_container(Some(options), body).await {
            Ok(r) => {
                for w in r.warnings {
                    tracing::warn!(container = name, "engine warning: {w}");
                }
                Ok(r.id)
            }
            Err(e) if status(&e) == Some(409) => {
                // The name is taken: adopt that container. Right after a crash the engine may
                // still be finishing the create the previous agent sent: the name is reserved
                // before the container can be inspected, so give it a moment.
                for _ in 0..50 {
                    if let Some(c) = self.inspect(&name).await? {
                        return c.id.ok_or_else(|| {
                            DriverError::new(
                                DriverErrorKind::Other,
                                format!("container {name} exists but has no id"),
                            )
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(map_err(e, &format!("cannot create container {name}")))
            }
            Err(e) if status(&e) == Some(404) => {
                let image = inst.spec.image_ref(&inst.stack, &inst.service);
                let msg = engine_message(&e);
                if msg.contains("network") {
                    Err(DriverError::new(
                        DriverErrorKind::NotFound,
                        format!("cannot create container {name}: {msg}"),
                    )
                    .with_hint("prepare the instance first (it creates the stack network)"))
                } else {
                    Err(DriverError::new(
                        DriverErrorKind::ImageMissing,
                        format!("image {image} not found locally"),
                    )
                    .with_hint(IMAGE_MISSING_HINT))
                }
            }
            Err(e) if status(&e) == Some(400) => Err(DriverError::new(
                DriverErrorKind::InvalidSpec,
                format!(
                    "the engine rejected container {name}: {}",
                    engine_message(&e)
                ),
            )),
            Err(e) => Err(map_err(e, &format!("cannot create container {name}"))),
        }
    }

    async fn start(&self, handle: &str) -> Result<(), DriverError> {
        let mut result = self
            .docker
            .start_container(handle, None::<StartContainerOptions>)
            .await;
        // Another agent sharing this engine created the stack network at the same moment (names
        // are not unique on API 1.41) and has not removed its copy yet: keep the oldest, retry once.
        if let Err(e) = &result
            && let Some(net) = ambiguous_network(&engine_message(e))
        {
            let found = self.networks_named(&net).await?;
            self.dedupe_networks(&net, found).await;
            result = self
                .docker
                .start_container(handle, None::<StartContainerOptions>)
                .await;
        }
        match result {
            Ok(()) => self.post_start(handle).await,
            Err(e) if is_lost_network(&engine_message(&e)) => {
                // Created against a duplicate stack network that another agent sharing this engine
                // has since removed (it keeps the oldest). Remove the container: the next pass
                // creates it again on the network that stays.
                let _ = self.remove(handle).await;
                Err(DriverError::new(
                    DriverErrorKind::Other,
                    format!("the network of container {handle} was removed; it is created again"),
                ))
            }
            Err(e) => {
                let msg = engine_message(&e);
                if msg.contains("port is already allocated")
                    || msg.contains("address already in use")
                {
                    let port = port_in(&msg)
                        .map(|p| format!("host port {p}"))
                        .unwrap_or("a host port".to_string());
                    Err(DriverError::new(
                        DriverErrorKind::PortTaken,
                        format!("{port} is already taken: {}", msg.trim()),
                    )
                    .with_hint("another process or service publishes it; change ports: in the stack file or stop the other one"))
                } else {
                    Err(map_err(e, &format!("cannot start container {handle}")))
                }
            }
        }
    }

    async fn stop(&self, handle: &str, how: &Stop) -> Result<(), DriverError> {
        let ok = |e: &BollardError| matches!(status(e), Some(304) | Some(404));
        // The hooks run first, within the grace period.
        let grace = if self.is_running(handle).await.unwrap_or(false) {
            how.grace
                .saturating_sub(self.pre_stop(handle, how.grace).await)
        } else {
            how.grace
        };
        if let Some(sig) = how.signal.as_deref().filter(|s| !s.is_empty()) {
            let options = KillContainerOptionsBuilder::default().signal(sig).build();
            match self.docker.kill_container(handle, Some(options)).await {
                Ok(()) => {}
                // 409: not running.
                Err(e) if ok(&e) || status(&e) == Some(409) => return Ok(()),
                Err(e) => {
                    return Err(map_err(
                        e,
                        &format!("cannot signal container {handle} with {sig}"),
                    ));
                }
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if !self.is_running(handle).await? {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let options = KillContainerOptionsBuilder::default()
                .signal("SIGKILL")
                .build();
            return match self.docker.kill_container(handle, Some(options)).await {
                Ok(()) => Ok(()),
                Err(e) if ok(&e) || status(&e) == Some(409) => Ok(()),
                Err(e) => Err(map_err(e, &format!("cannot kill container {handle}"))),
            };
        }
        let secs = grace.as_millis().div_ceil(1000).min(i32::MAX as u128) as i32;
        let options = StopContainerOptionsBuilder::default().t(secs).build();
        // The client's request timeout must outlast the grace period.
        let client = self
            .docker
            .clone()
            .with_timeout(grace + Duration::from_secs(60));
        match client.stop_container(handle, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if ok(&e) => Ok(()),
            Err(e) => Err(map_err(e, &format!("cannot stop container {handle}"))),
        }
    }

    async fn remove(&self, handle: &str) -> Result<(), DriverError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(handle, Some(options)).await {
            Ok(()) => Ok(()),
            Err(e) if status(&e) == Some(404) => Ok(()),
            // "removal of container ... is already in progress"
            Err(e)
                if status(&e) == Some(409)
                    && engine_message(&e).contains("already in progress") =>
            {
                Ok(())
            }
            Err(e) => Err(map_err(e, &format!("cannot remove container {handle}"))),
        }
    }

    async fn logs(&self, handle: &str, q: LogQuery) -> Result<LogLines, DriverError> {
        // Fail early, and with NotFound, for a missing container (the stream would only fail later).
        if self.inspect(handle).await?.is_none() {
            return Err(DriverError::new(
                DriverErrorKind::NotFound,
                format!("container {handle} not found"),
            ));
        }
        let tail = (q.tail)
            .map(|t| t.to_string())
            .unwrap_or_else(|| "all".to_string());
        // The engine takes times as 32-bit Unix seconds.
        let secs = |t: i64| i32::try_from(t).unwrap_or(if t < 0 { 0 } else { i32::MAX });
        let mut options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(q.follow)
            .tail(&tail)
            .timestamps(q.timestamps);
        if let Some(t) = q.since {
            options = options.since(secs(t));
        }
        if let Some(t) = q.until {
            options = options.until(secs(t));
        }
        let options = options.build();
        let handle_owned = handle.to_string();
        let raw = self
            .docker
            .logs(handle, Some(options))
            .map(move |item| {
                item.map_err(|e| {
                    map_err(e, &format!("cannot read logs of container {handle_owned}"))
                })
                .map(|out| match out {
                    LogOutput::StdErr { message } => (LogStream::Stderr, message.to_vec()),
                    LogOutput::StdOut { message }
                    | LogOutput::Console { message }
                    | LogOutput::StdIn { message } => (LogStream::Stdout, message.to_vec()),
                })
            })
            .boxed();
        Ok(split_lines(eager(raw)))
    }

    async fn changes(&self) -> Result<BoxStream<'static, ()>, DriverError> {
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("label", self.managed_filter()),
            (
                "event",
                [
                    "create",
                    "start",
                    "restart",
                    "die",
                    "stop",
                    "destroy",
                    "health_status",
                    "oom",
                    "pause",
                    "unpause",
                ]
                .map(String::from)
                .to_vec(),
            ),
        ]);
        // `since` now: the request only goes out when the stream is first polled, and the engine
        // replays what happened in between, so nothing is missed.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let since = format!("{}.{:09}", now.as_secs(), now.subsec_nanos());
        let options = EventsOptionsBuilder::default()
            .since(&since)
            .filters(&filters)
            .build();
        let docker = self.docker.clone();
        let stream = futures::stream::once(async move { docker.events(Some(options)) })
            .flatten()
            .take_while(|e| {
                if let Err(err) = e {
                    tracing::debug!(error = %err, "docker event stream ended");
                }
                futures::future::ready(e.is_ok())
            })
            .map(|_| ());
        Ok(stream.boxed())
    }

    async fn exec(
        &self,
        handle: &str,
        spec: &wharf_types::ExecSpec,
    ) -> Result<super::ExecProcess, DriverError> {
        self.start_exec(handle, spec).await
    }

    async fn stats(&self, handle: &str) -> Result<wharf_types::InstanceStats, DriverError> {
        self.sample(handle).await
    }

    async fn inventory(
        &self,
        image: &str,
    ) -> Result<(wharf_types::Inventory, String), DriverError> {
        self.image_inventory(image).await
    }

    async fn remove_stack_resources(&self, stack: &str, volumes: bool) -> Result<(), DriverError> {
        let name = network_name(stack);
        if let Some(networks) = &self.networks {
            networks.forget(stack);
        }
        for (_, id) in self.networks_named(&name).await? {
            let mut first = true;
            loop {
                match self.docker.remove_network(&id).await {
                    Ok(()) => break,
                    Err(e) if status(&e) == Some(404) => break,
                    Err(e) => {
                        // Endpoints of containers that no longer exist (the engine can keep one
                        // when a container is removed while it is being attached) block the
                        // removal for good: disconnect those, and try once more.
                        let attached = self.attached(&id).await;
                        if first && self.drop_stale_endpoints(&id, &attached).await > 0 {
                            first = false;
                            continue;
                        }
                        let names: Vec<&str> =
                            attached.iter().map(|(_, n, _)| n.as_str()).collect();
                        return Err(map_err(
                            e,
                            &format!("cannot remove network {name}: still attached {names:?}"),
                        ));
                    }
                }
            }
        }
        if volumes {
            let filters = HashMap::from([("label", vec![format!("{}={stack}", labels::STACK)])]);
            let list = self
                .docker
                .list_volumes(Some(
                    ListVolumesOptionsBuilder::default()
                        .filters(&filters)
                        .build(),
                ))
                .await
                .map_err(|e| map_err(e, &format!("cannot list volumes of stack {stack}")))?;
            for v in list.volumes.unwrap_or_default() {
                match self
                    .docker
                    .remove_volume(&v.name, None::<RemoveVolumeOptions>)
                    .await
                {
                    Ok(()) => {}
                    Err(e) if status(&e) == Some(404) => {}
                    Err(e) => return Err(map_err(e, &format!("cannot remove volume {}", v.name))),
                }
            }
        }
        Ok(())
    }
}

/// The name servers a container's service asked for (`labels::DNS`), port 53.
fn asked_servers(
    c: &bollard::models::ContainerInspectResponse,
) -> Option<Vec<std::net::SocketAddr>> {
    let label = c.config.as_ref()?.labels.as_ref()?.get(labels::DNS)?;
    let servers: Vec<std::net::SocketAddr> = label
        .split(',')
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .collect();
    (!servers.is_empty()).then_some(servers)
}

/// `os/arch` as image platforms name them, from the engine's `OSType` and `Architecture`
/// (`x86_64` is `amd64`, `aarch64` is `arm64`).
fn engine_platform(os: &str, arch: &str) -> String {
    let arch = match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "armv7l" | "armv6l" => "arm",
        "i386" | "i686" => "386",
        other => other,
    };
    format!("{os}/{arch}")
}

/// A bind mount's host path as `bind.create_host_path` says: `true` creates a missing
/// directory, `false` refuses the instance when it is missing (unset: the engine refuses it).
/// The agent runs on the host whose engine mounts it.
fn host_path(m: &wharf_types::VolumeMount) -> Result<(), DriverError> {
    let path = std::path::Path::new(&m.source);
    match m.options.create_host_path {
        Some(true) if !path.exists() => std::fs::create_dir_all(path).map_err(|e| {
            DriverError::new(
                DriverErrorKind::InvalidSpec,
                format!("cannot create the bind mount source {}: {e}", m.source),
            )
            .with_hint("create it on the node, or mount another directory")
        }),
        Some(false) if !path.exists() => Err(DriverError::new(
            DriverErrorKind::InvalidSpec,
            format!(
                "the bind mount source {} does not exist on this node (bind.create_host_path: false)",
                m.source
            ),
        )
        .with_hint("create it on every node that may run the service, or set create_host_path: true")),
        _ => Ok(()),
    }
}

/// The port number in an engine message such as "Bind for 0.0.0.0:8080 failed: port is already
/// allocated" or "listen tcp4 0.0.0.0:8080: bind: address already in use".
fn port_in(msg: &str) -> Option<u16> {
    let end = msg
        .find("port is already allocated")
        .or_else(|| msg.find("address already in use"))?;
    let before = &msg[..end];
    let mut best = None;
    let bytes = before.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b':' {
            let digits: String = before[i + 1..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(p) = digits.parse::<u16>() {
                best = Some(p);
            }
        }
    }
    best
}

fn status(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn engine_message(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        other => other.to_string(),
    }
}

fn is_unavailable(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::SocketNotFoundError(_)
            | BollardError::HyperLegacyError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::IOError { .. }
            | BollardError::RequestTimeoutError
            | BollardError::APIVersionParseError {}
    )
}

fn unavailable(e: &BollardError) -> DriverError {
    DriverError::new(
        DriverErrorKind::Unavailable,
        format!("cannot reach the docker engine: {e}"),
    )
    .with_hint(UNAVAILABLE_HINT)
}

fn map_err(e: BollardError, what: &str) -> DriverError {
    if is_unavailable(&e) {
        let mut err = unavailable(&e);
        err.message = format!("{what}: {}", err.message);
        return err;
    }
    let kind = match status(&e) {
        Some(404) => DriverErrorKind::NotFound,
        _ => DriverErrorKind::Other,
    };
    DriverError::new(kind, format!("{what}: {}", engine_message(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_port_in_engine_messages() {
        let m = "driver failed programming external connectivity on endpoint x (abc): Bind for 127.0.0.1:18089 failed: port is already allocated";
        assert_eq!(port_in(m), Some(18089));
        let m =
            "Error starting userland proxy: listen tcp4 0.0.0.0:8080: bind: address already in use";
        assert_eq!(port_in(m), Some(8080));
    }
}
