//! The container create body of an instance (ports, mounts, health check, limits, its stack
//! network), and the stack's named volumes.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, DeviceMapping, EndpointSettings, HealthConfig, HostConfig,
    HostConfigLogConfig, Mount, MountBindOptions, MountBindOptionsPropagationEnum,
    MountTmpfsOptions, MountType, MountVolumeOptions, NetworkingConfig, PortBinding,
    ResourcesUlimits, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use wharf_types::{
    ContainerOptions, Hardening, HealthCheck, MountKind, NetworkMode, Protocol, Seccomp,
    ServiceSpec, UsernsMode, VolumeMount, labels,
};

use super::network::network_name;
use super::{DockerDriver, map_err, status};
use crate::driver::{DriverError, DriverErrorKind, InstanceSpec};

impl DockerDriver {
    /// The named volume a mount needs: an external one must exist (Wharf never creates nor
    /// removes it); another is created with its driver and options, labelled with its stack
    /// (what `stack rm --volumes` removes).
    pub(super) async fn ensure_volume(
        &self,
        stack: &str,
        m: &VolumeMount,
    ) -> Result<(), DriverError> {
        let name = engine_volume(stack, m);
        if m.options.external {
            return match self.docker.inspect_volume(&name).await {
                Ok(_) => Ok(()),
                Err(e) if status(&e) == Some(404) => Err(DriverError::new(
                    DriverErrorKind::InvalidSpec,
                    format!("external volume {name} does not exist on this node"),
                )
                .with_hint(format!(
                    "Wharf never creates an external volume: create it (docker volume create {name}) on every node that may run the service, or drop external"
                ))),
                Err(e) => Err(map_err(e, &format!("cannot inspect volume {name}"))),
            };
        }
        let request = VolumeCreateRequest {
            name: Some(name.clone()),
            driver: m.options.driver.clone(),
            driver_opts: (!m.options.driver_opts.is_empty())
                .then(|| m.options.driver_opts.clone().into_iter().collect()),
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
}

/// `<stack>_<name>`: the engine name of a stack's named volume.
pub fn volume_name(stack: &str, name: &str) -> String {
    format!("{stack}_{name}")
}

/// The engine name of the named volume a mount uses: the one the stack file gives (`name:`,
/// external), else `<stack>_<source>`.
pub(super) fn engine_volume(stack: &str, m: &VolumeMount) -> String {
    m.options
        .volume_name
        .clone()
        .unwrap_or_else(|| volume_name(stack, &m.source))
}

/// The engine's create body of an instance: its labels, ports, mounts, health check and limits,
/// on its stack network `wharf_<stack>` with the service name as alias.
pub(super) fn container_body(
    inst: &InstanceSpec,
    files: &[crate::driver::MountedFile],
) -> Result<ContainerCreateBody, DriverError> {
    let spec: &ServiceSpec = &inst.spec;
    let mut all_labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
    all_labels.extend(inst.labels());
    // What the driver needs of the spec after an agent restart, when it has only the
    // container: the hooks to run at start and stop, the name servers the service's DNS
    // questions go to.
    if let Some(hooks) = super::hooks::Hooks::of(&spec.container) {
        all_labels.insert(labels::HOOKS.to_string(), hooks.label());
    }
    if !spec.container.dns.is_empty() {
        all_labels.insert(labels::DNS.to_string(), spec.container.dns.join(","));
    }

    let (exposed, bindings) = ports(spec);
    let mut mounts = mounts(inst)?;
    // Secrets and configs: each file from the agent's tmpfs, read-only (never an environment
    // variable, never a copy in the container's layer).
    mounts.extend(files.iter().map(|f| Mount {
        target: Some(f.target.clone()),
        source: Some(f.host.to_string_lossy().into_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(true),
        ..Default::default()
    }));
    let healthcheck = spec.healthcheck.as_ref().map(health_config);

    let limits = &spec.deploy.resources.limits;
    let host_network = spec.network_mode == Some(NetworkMode::Host);
    let network = if host_network {
        "host".to_string()
    } else {
        network_name(&inst.stack)
    };
    let mut host_config = HostConfig {
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
    harden(&mut host_config, &spec.hardening);
    let o = &spec.container;
    tune(&mut host_config, o);
    host_config.memory_reservation =
        (spec.deploy.resources.reservations.memory_bytes).and_then(|n| i64::try_from(n).ok());
    let endpoint = EndpointSettings {
        aliases: Some(vec![inst.service.clone()]),
        ..Default::default()
    };
    // On the host's network: no stack network endpoint (nor the alias and DNS that go with it).
    let endpoints = (!host_network).then(|| HashMap::from([(network, endpoint)]));
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
        domainname: o.domainname.clone(),
        tty: o.tty.then_some(true),
        open_stdin: o.stdin_open.then_some(true),
        stop_signal: spec.stop_signal.clone(),
        stop_timeout: spec
            .stop_grace_period_ms
            .map(|ms| i64::try_from(ms.div_ceil(1000)).unwrap_or(i64::MAX)),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: endpoints,
        }),
        ..Default::default()
    })
}

/// The service's hardening keys on the container's host config: capabilities, privileges,
/// read-only root, security options, sysctls, ulimits, tmpfs, pids limit, user namespace.
fn harden(hc: &mut HostConfig, h: &Hardening) {
    let some_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    hc.cap_add = some_vec(&h.cap_add);
    hc.cap_drop = some_vec(&h.cap_drop);
    hc.privileged = h.privileged.then_some(true);
    hc.readonly_rootfs = h.read_only.then_some(true);
    let mut opts = Vec::new();
    if h.no_new_privileges {
        opts.push("no-new-privileges".to_string());
    }
    match &h.seccomp {
        Some(Seccomp::Unconfined) => opts.push("seccomp=unconfined".to_string()),
        // The engine takes the profile's JSON itself (what `docker run` sends after reading
        // the file): the node needs no file.
        Some(Seccomp::Profile(json)) => opts.push(format!("seccomp={json}")),
        None => {}
    }
    if let Some(a) = &h.apparmor {
        opts.push(format!("apparmor={a}"));
    }
    hc.security_opt = (!opts.is_empty()).then_some(opts);
    hc.sysctls = (!h.sysctls.is_empty()).then(|| h.sysctls.clone().into_iter().collect());
    hc.ulimits = (!h.ulimits.is_empty()).then(|| {
        h.ulimits
            .iter()
            .map(|(name, u)| ResourcesUlimits {
                name: Some(name.clone()),
                soft: Some(u.soft),
                hard: Some(u.hard),
            })
            .collect()
    });
    hc.tmpfs = (!h.tmpfs.is_empty()).then(|| {
        h.tmpfs
            .iter()
            .map(|t| (t.target.clone(), t.engine_options()))
            .collect()
    });
    hc.pids_limit = h.pids_limit;
    hc.userns_mode = h.userns_mode.map(|UsernsMode::Host| "host".to_string());
}

/// The service's container options on the container's host config: swap, CPU shares and
/// sets, shared memory, OOM settings, logging, extra hosts, DNS (replaced by Wharf's own
/// server where it serves the stack network: `network::use_dns`), devices, groups, IPC,
/// runtime, storage options.
fn tune(hc: &mut HostConfig, o: &ContainerOptions) {
    let i64_of = |v: Option<u64>| v.and_then(|n| i64::try_from(n).ok());
    let some_vec = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    hc.memory_swap = o.memswap_limit;
    hc.memory_swappiness = o.mem_swappiness.map(i64::from);
    hc.cpu_shares = i64_of(o.cpu_shares);
    hc.cpu_period = i64_of(o.cpu_period_us);
    hc.cpu_quota = i64_of(o.cpu_quota_us);
    hc.cpuset_cpus = o.cpuset.clone();
    hc.shm_size = i64_of(o.shm_size_bytes);
    hc.oom_kill_disable = o.oom_kill_disable.then_some(true);
    hc.oom_score_adj = o.oom_score_adj.map(i64::from);
    hc.log_config = o.logging.as_ref().map(|l| HostConfigLogConfig {
        typ: (!l.driver.is_empty()).then(|| l.driver.clone()),
        config: (!l.options.is_empty()).then(|| l.options.clone().into_iter().collect()),
    });
    hc.extra_hosts = some_vec(&o.extra_hosts);
    hc.dns = some_vec(&o.dns);
    hc.dns_search = some_vec(&o.dns_search);
    hc.dns_options = some_vec(&o.dns_opt);
    hc.devices = (!o.devices.is_empty()).then(|| {
        o.devices
            .iter()
            .map(|d| DeviceMapping {
                path_on_host: Some(d.source.clone()),
                path_in_container: Some(d.target.clone()),
                cgroup_permissions: Some(d.permissions.clone()),
            })
            .collect()
    });
    hc.group_add = some_vec(&o.group_add);
    hc.ipc_mode = o.ipc.clone();
    hc.runtime = o.runtime.clone();
    hc.storage_opt =
        (!o.storage_opt.is_empty()).then(|| o.storage_opt.clone().into_iter().collect());
}

/// The container ports to expose (`<port>/<proto>`, each once) and the host ports they are
/// published on.
fn ports(spec: &ServiceSpec) -> (Vec<String>, HashMap<String, Option<Vec<PortBinding>>>) {
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
    (exposed, bindings)
}

/// The mounts of the instance's volumes (named volumes by their engine name).
fn mounts(inst: &InstanceSpec) -> Result<Vec<Mount>, DriverError> {
    let mut mounts = Vec::new();
    for m in &inst.spec.volumes {
        let (typ, source) = match m.kind {
            MountKind::Volume if m.source.is_empty() => (MountType::VOLUME, None),
            MountKind::Volume => (MountType::VOLUME, Some(engine_volume(&inst.stack, m))),
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
        let o = &m.options;
        let propagation = o.propagation.as_deref().map(|p| match p {
            "private" => MountBindOptionsPropagationEnum::PRIVATE,
            "shared" => MountBindOptionsPropagationEnum::SHARED,
            "rshared" => MountBindOptionsPropagationEnum::RSHARED,
            "slave" => MountBindOptionsPropagationEnum::SLAVE,
            "rslave" => MountBindOptionsPropagationEnum::RSLAVE,
            _ => MountBindOptionsPropagationEnum::RPRIVATE,
        });
        mounts.push(Mount {
            target: Some(m.target.clone()),
            source,
            typ: Some(typ),
            read_only: Some(m.read_only),
            bind_options: propagation.map(|p| MountBindOptions {
                propagation: Some(p),
                ..Default::default()
            }),
            volume_options: (o.nocopy || o.subpath.is_some()).then(|| MountVolumeOptions {
                no_copy: o.nocopy.then_some(true),
                subpath: o.subpath.clone(),
                ..Default::default()
            }),
            tmpfs_options: (o.tmpfs_size_bytes.is_some() || o.tmpfs_mode.is_some()).then(|| {
                MountTmpfsOptions {
                    size_bytes: o.tmpfs_size_bytes.and_then(|n| i64::try_from(n).ok()),
                    mode: o.tmpfs_mode.map(i64::from),
                    ..Default::default()
                }
            }),
            ..Default::default()
        });
    }
    Ok(mounts)
}

/// The engine's health check for the spec's (an empty test or `NONE` disables the image's).
fn health_config(h: &HealthCheck) -> HealthConfig {
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
            // Engines before API 1.44 ignore it (`create_with_files` leaves it out and warns).
            start_interval: h.start_interval_ms.map(ms_to_ns),
        }
    }
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
