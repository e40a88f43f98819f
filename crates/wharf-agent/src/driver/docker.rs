//! The Docker driver: runs instances as containers on the local Docker Engine through bollard.
//!
//! Every container carries the instance labels (`InstanceSpec::labels`), joins the stack network
//! `wharf_<stack>` with its service name as alias, and has restart policy "no": the agent restarts.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, EndpointSettings,
    HealthConfig, HealthStatusEnum, HostConfig, Ipam, IpamConfig, Mount, MountType,
    NetworkCreateRequest, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
    VolumeCreateRequest,
};
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    EventsOptionsBuilder, InspectContainerOptions, KillContainerOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RemoveVolumeOptions, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use futures::stream::{BoxStream, StreamExt};
use wharf_types::{DriverKind, Health, LogStream, MountKind, Protocol, ServiceSpec, labels};

use super::{
    Driver, DriverError, DriverErrorKind, DriverInfo, InstanceSpec, LogLines, Observed,
    ObservedState,
};

/// The image label holding the build context hash the image was built from.
pub const CONTEXT_HASH_LABEL: &str = "io.wharf.context-hash";

const UNAVAILABLE_HINT: &str = "start the Docker engine (sudo systemctl start docker / dockerd) or run process services with x-wharf: {driver: process}";
const IMAGE_MISSING_HINT: &str =
    "build it (build: in the stack file) or load it with docker load; no registry may be reachable";
const PULL_TIMEOUT: Duration = Duration::from_secs(20);
const HEALTH_OUTPUT_MAX: usize = 500;
const BUILD_TAIL_LINES: usize = 20;

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
        }
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
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
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
impl crate::stacknet::Gateways for DockerDriver {
    /// The gateway of the stack network (the oldest, if the engine has several of that name).
    async fn gateway(&self, stack: &str) -> Option<std::net::IpAddr> {
        let name = network_name(stack);
        let Ok(Some((_, id))) = self
            .networks_named(&name)
            .await
            .map(|l| l.into_iter().next())
        else {
            return None;
        };
        match self.docker.inspect_network(&id, None).await {
            Ok(n) => n
                .ipam
                .and_then(|i| i.config)
                .into_iter()
                .flatten()
                .filter_map(|c| match c.gateway {
                    Some(g) => g.parse().ok(),
                    // A network made with only a subnet: Docker takes its first address.
                    None => first_host(c.subnet.as_deref()?),
                })
                .next(),
            Err(e) => {
                tracing::debug!(network = name, error = %e, "cannot inspect the stack network");
                None
            }
        }
    }
}

impl DockerDriver {
    async fn ensure_network(&self, stack: &str) -> Result<(), DriverError> {
        let name = network_name(stack);
        let lock = self.lock_for(&format!("network:{name}"));
        let _guard = lock.lock().await;
        // Network names are not unique on API 1.41, and a container's networks are looked up by
        // name when it starts: two agents sharing one engine (on one machine) must not both
        // create the stack network. A machine-wide file lock makes "find, else create" atomic
        // across processes; agents on separate hosts never share an engine.
        let _host_guard = host_network_lock().await;
        let existing = self.networks_named(&name).await?;
        if !existing.is_empty() {
            self.dedupe_networks(&name, existing).await;
            return Ok(());
        }
        let subnet = self.networks.as_ref().and_then(|n| n.subnet(stack));
        let request = |subnet: Option<&String>| NetworkCreateRequest {
            name: name.clone(),
            driver: Some("bridge".to_string()),
            labels: Some(HashMap::from([
                (labels::MANAGED.to_string(), "true".to_string()),
                (labels::STACK.to_string(), stack.to_string()),
            ])),
            ipam: subnet.map(|s| Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(s.clone()),
                    gateway: first_host(s).map(|g| g.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut result = self.docker.create_network(request(subnet.as_ref())).await;
        if let (Err(e), Some(subnet)) = (&result, &subnet)
            && status(e) == Some(403)
        {
            // "Pool overlaps with other one on this address space": another network on this
            // engine (not Wharf's, or another cluster's) has the subnet. Run anyway; only
            // cross-host traffic to this stack's containers on this node is lost.
            tracing::warn!(network = name, %subnet, error = %engine_message(e), "the subnet the master gave this stack network is taken on this engine; using one of the engine's choosing (other nodes cannot reach these containers)");
            result = self.docker.create_network(request(None)).await;
        }
        match result {
            Ok(_) => {}
            Err(e) if status(&e) == Some(409) => {}
            Err(e) => return Err(map_err(e, &format!("cannot create network {name}"))),
        }
        // Another agent process (or a restart race) may have created one too: keep a single one.
        let existing = self.networks_named(&name).await?;
        self.dedupe_networks(&name, existing).await;
        Ok(())
    }

    /// The endpoints on network `id`: (container id, endpoint name, whether the container
    /// still exists).
    async fn attached(&self, id: &str) -> Vec<(String, String, bool)> {
        let Ok(net) = self.docker.inspect_network(id, None).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (container, ep) in net.containers.unwrap_or_default() {
            let gone = self.docker.inspect_container(&container, None).await;
            let exists = !matches!(gone, Err(e) if status(&e) == Some(404));
            out.push((container, ep.name.unwrap_or_default(), exists));
        }
        out
    }

    /// Force-disconnect the endpoints of `attached` whose container is gone; how many.
    async fn drop_stale_endpoints(&self, id: &str, attached: &[(String, String, bool)]) -> usize {
        let mut dropped = 0;
        for (container, name, _) in attached.iter().filter(|(_, _, exists)| !exists) {
            let req = bollard::models::NetworkDisconnectRequest {
                container: container.clone(),
                force: Some(true),
            };
            match self.docker.disconnect_network(id, req).await {
                Ok(()) => {
                    tracing::info!(network = id, endpoint = %name, "dropped the stale endpoint of a removed container");
                    dropped += 1;
                }
                Err(e) => {
                    tracing::debug!(network = id, endpoint = %name, error = %e, "cannot drop a stale endpoint")
                }
            }
        }
        dropped
    }

    /// Networks whose name is exactly `name`, oldest first.
    async fn networks_named(&self, name: &str) -> Result<Vec<(String, String)>, DriverError> {
        let filters = HashMap::from([("name", vec![name.to_string()])]);
        let list = self
            .docker
            .list_networks(Some(
                ListNetworksOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| map_err(e, &format!("cannot list networks named {name}")))?;
        let mut found: Vec<(String, String)> = list
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| Some((n.created.unwrap_or_default(), n.id?)))
            .collect();
        found.sort();
        Ok(found)
    }

    async fn dedupe_networks(&self, name: &str, found: Vec<(String, String)>) {
        for (_, id) in found.iter().skip(1) {
            tracing::warn!(network = name, id, "removing a duplicate network");
            if let Err(e) = self.docker.remove_network(id).await {
                tracing::warn!(network = name, id, error = %e, "cannot remove a duplicate network");
            }
        }
    }

    async fn ensure_volume(&self, stack: &str, name: &str) -> Result<(), DriverError> {
        let request = VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(HashMap::from([
                (labels::MANAGED.to_string(), "true".to_string()),
                (labels::STACK.to_string(), stack.to_string()),
            ])),
            ..Default::default()
        };
        match self.docker.create_volume(request).await {
            Ok(_) => Ok(()),
            Err(e) if status(&e) == Some(409) => Ok(()),
            Err(e) => Err(map_err(e, &format!("cannot create volume {name}"))),
        }
    }

    async fn ensure_image(&self, inst: &InstanceSpec) -> Result<(), DriverError> {
        let image = inst.spec.image_ref(&inst.stack, &inst.service);
        let lock = self.lock_for(&format!("image:{image}"));
        let _guard = lock.lock().await;
        let present = match self.docker.inspect_image(&image).await {
            Ok(i) => Some(i),
            Err(e) if status(&e) == Some(404) => None,
            Err(e) => return Err(map_err(e, &format!("cannot inspect image {image}"))),
        };
        match (&inst.spec.build, present) {
            (None, Some(_)) => Ok(()),
            (Some(build), Some(img)) => {
                let have = img
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|l| l.get(CONTEXT_HASH_LABEL).cloned());
                match &build.context_hash {
                    Some(want) if have.as_ref() != Some(want) => {
                        self.build_image(&image, build).await
                    }
                    _ => Ok(()),
                }
            }
            (Some(build), None) => self.build_image(&image, build).await,
            (None, None) => self.pull_image(&image).await,
        }
    }

    async fn pull_image(&self, image: &str) -> Result<(), DriverError> {
        let missing = || {
            DriverError::new(
                DriverErrorKind::ImageMissing,
                format!("image {image} not found locally and could not be pulled"),
            )
            .with_hint(IMAGE_MISSING_HINT)
        };
        let options = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let pull = async {
            let mut stream = self.docker.create_image(Some(options), None, None);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                            return Err(msg);
                        }
                    }
                    Err(e) if is_unavailable(&e) => return Err(format!("engine unavailable: {e}")),
                    Err(e) => return Err(engine_message(&e)),
                }
            }
            Ok(())
        };
        match tokio::time::timeout(self.pull_timeout, pull).await {
            Ok(Ok(())) => match self.docker.inspect_image(image).await {
                Ok(_) => Ok(()),
                Err(_) => Err(missing()),
            },
            Ok(Err(reason)) => {
                tracing::info!(image, reason, "pull failed");
                let mut err = missing();
                err.message = format!("{} ({})", err.message, first_line(&reason));
                Err(err)
            }
            Err(_) => {
                let mut err = missing();
                err.message = format!(
                    "{} (pull timed out after {}s)",
                    err.message,
                    self.pull_timeout.as_secs()
                );
                Err(err)
            }
        }
    }

    async fn build_image(
        &self,
        image: &str,
        build: &wharf_types::BuildSpec,
    ) -> Result<(), DriverError> {
        let context = PathBuf::from(&build.context);
        let ctx = context.clone();
        let tar = tokio::task::spawn_blocking(move || tar_context(&ctx))
            .await
            .map_err(|e| {
                DriverError::new(
                    DriverErrorKind::Other,
                    format!("context packing task failed: {e}"),
                )
            })?
            .map_err(|e| {
                DriverError::new(
                    DriverErrorKind::BuildFailed,
                    format!("cannot read build context {}: {e}", context.display()),
                )
                .with_hint("check that build.context exists on this host and is readable")
            })?;
        let dockerfile = build
            .dockerfile
            .clone()
            .unwrap_or_else(|| "Dockerfile".to_string());
        let mut image_labels = HashMap::from([(labels::MANAGED.to_string(), "true".to_string())]);
        if let Some(h) = &build.context_hash {
            image_labels.insert(CONTEXT_HASH_LABEL.to_string(), h.clone());
        }
        let args: HashMap<String, String> = build.args.clone().into_iter().collect();
        let options = BuildImageOptionsBuilder::default()
            .dockerfile(&dockerfile)
            .t(image)
            .rm(true)
            .forcerm(true)
            .buildargs(&args)
            .labels(&image_labels)
            .build();
        tracing::info!(image, context = %context.display(), "building image");
        let mut stream =
            self.docker
                .build_image(options, None, Some(bollard::body_full(tar.into())));
        let mut tail: VecDeque<String> = VecDeque::new();
        let failed = |msg: String, tail: &VecDeque<String>| {
            let mut message = format!("building image {image} failed: {}", msg.trim());
            if !tail.is_empty() {
                message.push('\n');
                message.push_str(&tail.iter().cloned().collect::<Vec<_>>().join("\n"));
            }
            DriverError::new(DriverErrorKind::BuildFailed, message)
                .with_hint("fix the Dockerfile or the build context; the engine output is above")
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(s) = info.stream {
                        for line in s.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                            if tail.len() == BUILD_TAIL_LINES {
                                tail.pop_front();
                            }
                            tail.push_back(line.to_string());
                        }
                    }
                    if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                        return Err(failed(msg, &tail));
                    }
                }
                Err(e) if is_unavailable(&e) => return Err(unavailable(&e)),
                Err(e) => return Err(failed(engine_message(&e), &tail)),
            }
        }
        Ok(())
    }

    async fn inspect(&self, handle: &str) -> Result<Option<ContainerInspectResponse>, DriverError> {
        match self
            .docker
            .inspect_container(handle, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(map_err(e, &format!("cannot inspect container {handle}"))),
        }
    }

    async fn is_running(&self, handle: &str) -> Result<bool, DriverError> {
        Ok(self
            .inspect(handle)
            .await?
            .and_then(|c| c.state)
            .and_then(|s| s.running)
            .unwrap_or(false))
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
        for s in summaries {
            let Some(id) = s.id else { continue };
            let Some(c) = self.inspect(&id).await? else {
                continue;
            };
            match observe(&id, &c) {
                Ok(o) => out.push(o),
                Err(why) => tracing::warn!(
                    container = id,
                    "skipping a wharf container with malformed labels: {why}"
                ),
            }
        }
        // A pure observation: DNS listeners (also those the running containers need after an
        // agent restart) are set up by `StackNetworks::follow` and `prepare`.
        Ok(out)
    }

    async fn prepare(&self, inst: &InstanceSpec) -> Result<(), DriverError> {
        self.ensure_network(&inst.stack).await?;
        // Before `create`, which gives the container the DNS server only if it listens.
        if let Some(networks) = &self.networks {
            networks.ensure_dns(&inst.stack).await;
        }
        for m in &inst.spec.volumes {
            if m.kind == MountKind::Volume && !m.source.is_empty() {
                self.ensure_volume(&inst.stack, &volume_name(&inst.stack, &m.source))
                    .await?;
            }
        }
        self.ensure_image(inst).await
    }

    async fn create(&self, inst: &InstanceSpec) -> Result<String, DriverError> {
        let name = inst.name();
        let mut body = container_body(inst)?;
        if let (Some(node), Some(l)) = (&self.node, body.labels.as_mut()) {
            l.insert(labels::NODE.to_string(), node.clone());
        }
        // Attach by network id, not name: on API 1.41 names are not unique, and agents sharing an
        // engine may briefly have created the stack network twice. Every agent picks the oldest,
        // so all containers of a stack share one network and the duplicates can be removed.
        let net = network_name(&inst.stack);
        if let Some((server, search)) = self.networks.as_ref().and_then(|n| n.dns_for(&inst.stack))
        {
            use_dns(&mut body, &net, server, search);
        }
        if let Some((_, id)) = self.networks_named(&net).await?.first() {
            attach_to(&mut body, &net, id);
        }
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
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
            Ok(()) => Ok(()),
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

    async fn stop(
        &self,
        handle: &str,
        grace: Duration,
        signal: Option<&str>,
    ) -> Result<(), DriverError> {
        let ok = |e: &BollardError| matches!(status(e), Some(304) | Some(404));
        if let Some(sig) = signal.filter(|s| !s.is_empty()) {
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

    async fn logs(
        &self,
        handle: &str,
        follow: bool,
        tail: Option<u64>,
    ) -> Result<LogLines, DriverError> {
        // Fail early, and with NotFound, for a missing container (the stream would only fail later).
        if self.inspect(handle).await?.is_none() {
            return Err(DriverError::new(
                DriverErrorKind::NotFound,
                format!("container {handle} not found"),
            ));
        }
        let tail = tail
            .map(|t| t.to_string())
            .unwrap_or_else(|| "all".to_string());
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail)
            .build();
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

/// `wharf_<stack>`: the network every container of a stack joins.
pub fn network_name(stack: &str) -> String {
    format!("wharf_{stack}")
}

/// `<stack>_<name>`: the engine name of a stack's named volume.
pub fn volume_name(stack: &str, name: &str) -> String {
    format!("{stack}_{name}")
}

fn container_body(inst: &InstanceSpec) -> Result<ContainerCreateBody, DriverError> {
    let spec: &ServiceSpec = &inst.spec;
    let mut all_labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    all_labels.extend(inst.labels());

    let mut exposed: Vec<String> = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        let key = format!("{}/{}", p.target, proto(p.protocol));
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        let binding = PortBinding {
            host_ip: p.host_ip.clone(),
            host_port: Some(p.published.map(|n| n.to_string()).unwrap_or_default()),
        };
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(binding);
    }
    for e in &spec.expose {
        let key = if e.contains('/') {
            e.clone()
        } else {
            format!("{e}/tcp")
        };
        if !exposed.contains(&key) {
            exposed.push(key);
        }
    }

    let mut mounts = Vec::new();
    for m in &spec.volumes {
        let (typ, source) = match m.kind {
            MountKind::Volume if m.source.is_empty() => (MountType::VOLUME, None),
            MountKind::Volume => (MountType::VOLUME, Some(volume_name(&inst.stack, &m.source))),
            MountKind::Bind => {
                if !m.source.starts_with('/') {
                    return Err(DriverError::new(
                        DriverErrorKind::InvalidSpec,
                        format!("bind mount source {:?} is not an absolute path", m.source),
                    ));
                }
                (MountType::BIND, Some(m.source.clone()))
            }
            MountKind::Tmpfs => (MountType::TMPFS, None),
        };
        mounts.push(Mount {
            target: Some(m.target.clone()),
            source,
            typ: Some(typ),
            read_only: Some(m.read_only),
            ..Default::default()
        });
    }

    let healthcheck = spec.healthcheck.as_ref().map(|h| {
        let disabled = h.test.is_empty() || h.test[0] == "NONE";
        if disabled {
            HealthConfig {
                test: Some(vec!["NONE".to_string()]),
                ..Default::default()
            }
        } else {
            HealthConfig {
                test: Some(h.test.clone()),
                interval: Some(ms_to_ns(h.interval_ms)),
                timeout: Some(ms_to_ns(h.timeout_ms)),
                retries: Some(i64::from(h.retries)),
                start_period: Some(ms_to_ns(h.start_period_ms)),
                ..Default::default()
            }
        }
    });

    let limits = &spec.deploy.resources.limits;
    let network = network_name(&inst.stack);
    let host_config = HostConfig {
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        mounts: (!mounts.is_empty()).then_some(mounts),
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        init: spec.init,
        nano_cpus: limits.nano_cpus.and_then(|n| i64::try_from(n).ok()),
        memory: limits.memory_bytes.and_then(|n| i64::try_from(n).ok()),
        network_mode: Some(network.clone()),
        ..Default::default()
    };
    let endpoint = EndpointSettings {
        aliases: Some(vec![inst.service.clone()]),
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        image: Some(spec.image_ref(&inst.stack, &inst.service)),
        cmd: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        env: Some(
            spec.environment
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
        ),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        labels: Some(all_labels),
        healthcheck,
        user: spec.user.clone(),
        working_dir: spec.working_dir.clone(),
        hostname: spec.hostname.clone(),
        stop_signal: spec.stop_signal.clone(),
        stop_timeout: spec
            .stop_grace_period_ms
            .map(|ms| i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(network, endpoint)])),
        }),
        ..Default::default()
    })
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn ms_to_ns(ms: u64) -> i64 {
    i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

/// Turn an inspected container into what the agent sees. Fails on missing or malformed labels.
fn observe(id: &str, c: &ContainerInspectResponse) -> Result<Observed, String> {
    let empty = HashMap::new();
    let l = c
        .config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .unwrap_or(&empty);
    let get = |k: &str| {
        l.get(k)
            .cloned()
            .ok_or_else(|| format!("label {k} is missing"))
    };
    let slot = get(labels::SLOT)?
        .parse::<u32>()
        .map_err(|e| format!("label {}: {e}", labels::SLOT))?;
    let generation = get(labels::GENERATION)?
        .parse::<u64>()
        .map_err(|e| format!("label {}: {e}", labels::GENERATION))?;
    let st = c.state.clone().unwrap_or_default();
    let state = match st.status {
        Some(ContainerStateStatusEnum::CREATED) => ObservedState::Created,
        Some(ContainerStateStatusEnum::RUNNING) => ObservedState::Running,
        Some(ContainerStateStatusEnum::EXITED) | Some(ContainerStateStatusEnum::DEAD) => {
            ObservedState::Exited
        }
        _ => ObservedState::Other,
    };
    let exit_code = (state == ObservedState::Exited).then(|| st.exit_code.unwrap_or(0));
    let error = if st.oom_killed == Some(true) {
        Some("out of memory (OOM-killed)".to_string())
    } else {
        st.error.clone().filter(|e| !e.trim().is_empty())
    };
    let (health, health_output) = match &st.health {
        None => (Health::None, None),
        Some(h) => {
            let health = match h.status {
                Some(HealthStatusEnum::STARTING) => Health::Starting,
                Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
                Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
                _ => Health::None,
            };
            let last = h.log.as_ref().and_then(|log| log.last());
            let failing =
                health == Health::Unhealthy || last.is_some_and(|r| r.exit_code.unwrap_or(0) != 0);
            let output = last
                .filter(|_| failing)
                .and_then(|r| r.output.as_deref())
                .map(|o| truncate(o.trim(), HEALTH_OUTPUT_MAX))
                .filter(|o| !o.is_empty());
            (health, output)
        }
    };
    Ok(Observed {
        handle: id.to_string(),
        instance: get(labels::INSTANCE)?,
        stack: get(labels::STACK)?,
        service: get(labels::SERVICE)?,
        slot,
        generation,
        spec_hash: get(labels::SPEC_HASH)?,
        state,
        exit_code,
        error,
        health,
        health_output,
        started_at: st.started_at.as_deref().and_then(parse_rfc3339_ms),
        finished_at: st.finished_at.as_deref().and_then(parse_rfc3339_ms),
        address: (state == ObservedState::Running)
            .then(|| stack_address(c, &get(labels::STACK).unwrap_or_default()))
            .flatten(),
    })
}

/// The container's IP address on its stack's network (`wharf_<stack>`).
fn stack_address(c: &ContainerInspectResponse, stack: &str) -> Option<String> {
    c.network_settings
        .as_ref()?
        .networks
        .as_ref()?
        .get(&network_name(stack))?
        .ip_address
        .clone()
        .filter(|ip| !ip.is_empty())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Parse an RFC 3339 timestamp ("2026-11-26T14:49:53.123456789Z", or with an offset) into unix ms.
/// The zero time ("0001-01-01T00:00:00Z") and anything before 1970 give `None`.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, time) = s.split_once(['T', 't', ' '])?;
    let mut d = date.splitn(3, '-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let (clock, offset_secs) = if let Some(t) = time.strip_suffix(['Z', 'z']) {
        (t, 0i64)
    } else {
        let idx = time.rfind(['+', '-'])?;
        let (t, off) = time.split_at(idx);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (
            t,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut t = hms.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let m: i64 = t.next()?.parse().ok()?;
    let sec: i64 = t.next()?.parse().ok()?;
    let millis: i64 = if frac.is_empty() {
        0
    } else {
        if !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut f = frac[..frac.len().min(3)].to_string();
        while f.len() < 3 {
            f.push('0');
        }
        f.parse().ok()?
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + h * 3600 + m * 60 + sec - offset_secs;
    let ms = secs.checked_mul(1000)?.checked_add(millis)?;
    u64::try_from(ms).ok().filter(|ms| *ms > 0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Split raw output chunks into complete lines per stream (a partial line waits for its end; what
/// is left when the stream ends is flushed). Trailing `\r\n` is stripped.
fn split_lines(raw: BoxStream<'static, Result<(LogStream, Vec<u8>), DriverError>>) -> LogLines {
    struct St {
        raw: BoxStream<'static, Result<(LogStream, Vec<u8>), DriverError>>,
        out: Vec<u8>,
        err: Vec<u8>,
        ready: VecDeque<Result<(LogStream, String), DriverError>>,
        done: bool,
    }
    fn line(stream: LogStream, mut bytes: Vec<u8>) -> (LogStream, String) {
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        (stream, String::from_utf8_lossy(&bytes).into_owned())
    }
    let st = St {
        raw,
        out: Vec::new(),
        err: Vec::new(),
        ready: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(item) = st.ready.pop_front() {
                return Some((item, st));
            }
            if st.done {
                return None;
            }
            match st.raw.next().await {
                Some(Ok((stream, chunk))) => {
                    let buf = if stream == LogStream::Stderr {
                        &mut st.err
                    } else {
                        &mut st.out
                    };
                    buf.extend_from_slice(&chunk);
                    while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                        let rest = buf.split_off(pos + 1);
                        let full = std::mem::replace(buf, rest);
                        st.ready.push_back(Ok(line(stream, full)));
                    }
                }
                Some(Err(e)) => {
                    st.ready.push_back(Err(e));
                    st.done = true;
                }
                None => {
                    st.done = true;
                    for (stream, buf) in [
                        (LogStream::Stdout, &mut st.out),
                        (LogStream::Stderr, &mut st.err),
                    ] {
                        if !buf.is_empty() {
                            st.ready.push_back(Ok(line(stream, std::mem::take(buf))));
                        }
                    }
                }
            }
        }
    })
    .boxed()
}

/// Poll `stream` from a task of its own from now on, so the engine request goes out at once (bollard
/// streams are lazy: a follow started later would miss what is written in between). The task ends
/// when the stream ends or the returned stream is dropped.
fn eager<T: Send + 'static>(mut stream: BoxStream<'static, T>) -> BoxStream<'static, T> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tx.closed() => break,
                item = stream.next() => match item {
                    Some(item) => {
                        if tx.send(item).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// Pack a build context directory into a tar archive (symlinks kept as links).
fn tar_context(dir: &Path) -> std::io::Result<Vec<u8>> {
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not a directory",
        ));
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)?;
    tar.into_inner()
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

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s).trim()
}

fn status(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The machine-wide lock around stack network creation (see `ensure_network`). Held while the
/// returned file is open. `None` when the lock file cannot be used: then only the in-process lock
/// applies, as before.
async fn host_network_lock() -> Option<std::fs::File> {
    let path = std::env::temp_dir().join("wharf-docker-networks.lock");
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .ok()?;
        f.lock().ok()?;
        Some(f)
    })
    .await
    .ok()
    .flatten()
}

/// The first host address of an IPv4 subnet (`10.96.3.0/24` → `10.96.3.1`): a bridge's gateway.
fn first_host(subnet: &str) -> Option<std::net::IpAddr> {
    let (net, len) = subnet.split_once('/')?;
    let net: std::net::Ipv4Addr = net.parse().ok()?;
    let len: u32 = len.parse().ok().filter(|l| *l <= 30)?;
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    Some(std::net::Ipv4Addr::from((u32::from(net) & mask) + 1).into())
}

/// Resolve names through Wharf's DNS server instead of Docker's alias for the service name (see
/// `stacknet.rs`).
fn use_dns(
    body: &mut ContainerCreateBody,
    network: &str,
    server: std::net::IpAddr,
    search: String,
) {
    if let Some(hc) = body.host_config.as_mut() {
        hc.dns = Some(vec![server.to_string()]);
        hc.dns_search = Some(vec![search]);
    }
    if let Some(ep) = body
        .networking_config
        .as_mut()
        .and_then(|n| n.endpoints_config.as_mut())
        .and_then(|e| e.get_mut(network))
    {
        ep.aliases = None;
    }
}

/// Point a container body built for the network `name` at the network `id` instead.
fn attach_to(body: &mut ContainerCreateBody, name: &str, id: &str) {
    if let Some(hc) = body.host_config.as_mut()
        && hc.network_mode.as_deref() == Some(name)
    {
        hc.network_mode = Some(id.to_string());
    }
    if let Some(endpoints) = body
        .networking_config
        .as_mut()
        .and_then(|n| n.endpoints_config.as_mut())
        && let Some(ep) = endpoints.remove(name)
    {
        endpoints.insert(id.to_string(), ep);
    }
}

/// The engine's "network <id> not found" when starting a container whose network is gone.
fn is_lost_network(msg: &str) -> bool {
    msg.starts_with("network ") && msg.ends_with(" not found")
}

/// The network named in the engine's "network NAME is ambiguous (N matches found on name)".
fn ambiguous_network(msg: &str) -> Option<String> {
    let rest = msg.split("network ").nth(1)?;
    let (name, tail) = rest.split_once(' ')?;
    tail.starts_with("is ambiguous").then(|| name.to_string())
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
    fn containers_attach_to_the_network_by_id() {
        let inst = InstanceSpec {
            id: "s.web.0".into(),
            stack: "s".into(),
            service: "web".into(),
            slot: 0,
            generation: 1,
            spec_hash: "h".into(),
            spec: wharf_types::ServiceSpec {
                image: Some("app:1".into()),
                ..Default::default()
            }
            .into(),
        };
        let mut body = container_body(&inst).expect("a body");
        attach_to(&mut body, "wharf_s", "abc123");
        let hc = body.host_config.expect("host config");
        assert_eq!(hc.network_mode.as_deref(), Some("abc123"));
        let eps = body
            .networking_config
            .and_then(|n| n.endpoints_config)
            .expect("endpoints");
        assert_eq!(eps.keys().collect::<Vec<_>>(), vec!["abc123"]);
        assert_eq!(
            eps["abc123"].aliases.as_deref(),
            Some(&["web".to_string()][..])
        );
    }

    #[test]
    fn the_gateway_is_the_first_host_of_the_subnet() {
        for (subnet, want) in [
            ("10.96.3.0/24", Some("10.96.3.1")),
            ("10.96.3.77/24", Some("10.96.3.1")),
            ("172.18.0.0/16", Some("172.18.0.1")),
            ("10.0.0.0/31", None),
            ("nonsense", None),
        ] {
            assert_eq!(
                first_host(subnet).map(|g| g.to_string()).as_deref(),
                want,
                "{subnet}"
            );
        }
    }

    #[test]
    fn recognises_a_lost_network() {
        assert!(is_lost_network("network b34548c13d8c not found"));
        assert!(!is_lost_network("No such image: app:1"));
    }

    #[test]
    fn finds_the_ambiguous_network() {
        assert_eq!(
            ambiguous_network("network wharf_s-1 is ambiguous (2 matches found on name)"),
            Some("wharf_s-1".to_string())
        );
        assert_eq!(ambiguous_network("network wharf_s not found"), None);
    }

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_rfc3339_ms("0001-01-01T00:00:00Z"), None);
        assert_eq!(
            parse_rfc3339_ms("2026-11-26T14:49:53.123456789Z"),
            Some(1_795_704_593_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-11-26T15:49:53.5+01:00"),
            Some(1_795_704_593_500)
        );
        assert_eq!(parse_rfc3339_ms("garbage"), None);
    }

    #[test]
    fn finds_the_port_in_engine_messages() {
        let m = "driver failed programming external connectivity on endpoint x (abc): Bind for 127.0.0.1:18089 failed: port is already allocated";
        assert_eq!(port_in(m), Some(18089));
        let m =
            "Error starting userland proxy: listen tcp4 0.0.0.0:8080: bind: address already in use";
        assert_eq!(port_in(m), Some(8080));
    }

    #[tokio::test]
    async fn splits_lines_per_stream() {
        let chunks: Vec<Result<(LogStream, Vec<u8>), DriverError>> = vec![
            Ok((LogStream::Stdout, b"a\r\nb".to_vec())),
            Ok((LogStream::Stderr, b"e1\n".to_vec())),
            Ok((LogStream::Stdout, b"c\nd".to_vec())),
        ];
        let lines: Vec<_> = split_lines(futures::stream::iter(chunks).boxed())
            .collect()
            .await;
        let lines: Vec<_> = lines.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            lines,
            vec![
                (LogStream::Stdout, "a".to_string()),
                (LogStream::Stderr, "e1".to_string()),
                (LogStream::Stdout, "bc".to_string()),
                (LogStream::Stdout, "d".to_string()),
            ]
        );
    }
}
