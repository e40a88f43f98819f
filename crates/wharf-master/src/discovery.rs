//! Service discovery records, pure: for every service, its declared container ports and the
//! instances a DNS answer may name. The deployer hands each node the services of the stacks with
//! instances on it (`NodeDesired.discovery`); the node's DNS server (`wharf-agent/src/dns.rs`)
//! answers from them.
//!
//! An instance is named while one of its assigned generations (current, or previous during a
//! start-first replacement or relocation) is reported running and healthy (or has no health
//! check), has an address, and is not being drained: an unhealthy or draining instance stops
//! resolving at the next publish.

use std::collections::{BTreeMap, BTreeSet};

use wharf_types::{
    DiscoveryEndpoint, DiscoveryService, Health, InstanceReport, InstanceState, ServiceSpec,
};

use crate::model::{InstanceRecord, ServiceRecord};

/// Every service's records, by (stack, service) order. `report` finds the report of an instance
/// generation; `draining` says whether an assigned generation of an instance is being drained.
pub fn services<'a>(
    services: impl IntoIterator<Item = &'a ServiceRecord>,
    instances: impl IntoIterator<Item = &'a InstanceRecord>,
    report: &dyn Fn(&str, u64) -> Option<&'a InstanceReport>,
    draining: &dyn Fn(&InstanceRecord, u64) -> bool,
) -> Vec<DiscoveryService> {
    let mut out: BTreeMap<(&str, &str), DiscoveryService> = services
        .into_iter()
        .map(|s| {
            let entry = DiscoveryService {
                stack: s.stack.clone(),
                service: s.name.clone(),
                ports: ports(&s.spec),
                endpoints: Vec::new(),
                segments: s.spec.networks.keys().cloned().collect(),
                aliases: s
                    .spec
                    .networks
                    .iter()
                    .filter(|(_, n)| !n.aliases.is_empty())
                    .map(|(k, n)| (k.clone(), n.aliases.clone()))
                    .collect(),
                members: Vec::new(),
                internal: !s.spec.networks.is_empty()
                    && s.spec.networks.values().all(|n| n.internal),
                allow_from: s.spec.wharf.allow_from.clone(),
            };
            ((s.stack.as_str(), s.name.as_str()), entry)
        })
        .collect();
    for inst in instances {
        let Some(entry) = out.get_mut(&(inst.stack.as_str(), inst.service.as_str())) else {
            continue;
        };
        let id = inst.id();
        // The current generation first: while both serve, one address per slot is enough.
        let generations =
            std::iter::once(inst.generation).chain(inst.previous.as_ref().map(|p| p.generation));
        // Callers are every running generation, healthy or not, draining or not.
        let running = std::iter::once(inst.generation)
            .chain(inst.previous.as_ref().map(|p| p.generation))
            .filter_map(|g| report(&id, g))
            .filter(|r| r.state == InstanceState::Running)
            .filter_map(|r| r.address.clone());
        entry.members.extend(running);
        let address = generations
            .filter(|g| !draining(inst, *g))
            .filter_map(|g| report(&id, g))
            .find(|r| {
                r.state == InstanceState::Running
                    && matches!(r.health, Health::None | Health::Healthy)
            })
            .and_then(|r| r.address.clone());
        if let Some(address) = address {
            entry.endpoints.push(DiscoveryEndpoint {
                slot: inst.slot,
                address,
            });
        }
    }
    let mut out: Vec<DiscoveryService> = out.into_values().collect();
    for s in &mut out {
        s.endpoints.sort_by_key(|e| e.slot);
        s.members.sort();
        s.members.dedup();
    }
    out
}

/// The container ports a service declares: `ports` targets, `expose`, ingress route ports.
pub fn ports(spec: &ServiceSpec) -> Vec<u16> {
    let mut set = BTreeSet::new();
    set.extend(spec.ports.iter().map(|p| p.target));
    set.extend(spec.wharf.ingress.iter().map(|r| r.port));
    for e in &spec.expose {
        // `8080`, `8080/tcp`, `8000-8003`, `8000-8003/udp` (ranges of at most 64 ports).
        let range = e.split('/').next().unwrap_or_default().trim();
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        if let (Ok(lo), Ok(hi)) = (lo.trim().parse::<u16>(), hi.trim().parse::<u16>())
            && lo <= hi
            && hi - lo < 64
        {
            set.extend(lo..=hi);
        }
    }
    set.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{instance as inst, report as rep};

    fn svc(name: &str, expose: &[&str]) -> ServiceRecord {
        let spec = ServiceSpec {
            expose: expose.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        crate::testdata::service(name, spec)
    }

    fn addresses(out: &[DiscoveryService], service: &str) -> Vec<String> {
        out.iter()
            .find(|s| s.service == service)
            .expect("the service")
            .endpoints
            .iter()
            .map(|e| format!("{}={}", e.slot, e.address))
            .collect()
    }

    #[test]
    fn only_running_healthy_undrained_instances_are_named() {
        let svcs = [svc("web", &["8080"]), svc("db", &[])];
        let instances = [
            inst("web", 1, 1, None),
            inst("web", 2, 2, None),
            inst("web", 3, 3, None),
            inst("web", 4, 4, None),
            inst("web", 5, 5, None),
        ];
        let reports = [
            rep("s.web.1", 1, InstanceState::Running, Health::Healthy),
            rep("s.web.2", 2, InstanceState::Running, Health::Unhealthy),
            rep("s.web.3", 3, InstanceState::Running, Health::Starting),
            rep("s.web.4", 4, InstanceState::Exited, Health::None),
            rep("s.web.5", 5, InstanceState::Running, Health::None),
        ];
        let out = services(
            &svcs,
            &instances,
            &|id, g| crate::testdata::report_in(&reports, id, g),
            &|i, _| i.slot == 5,
        );
        assert_eq!(addresses(&out, "web"), ["1=10.0.0.1"]);
        assert_eq!(addresses(&out, "db"), Vec::<String>::new());
    }

    #[test]
    fn a_replacement_is_named_once_by_its_serving_generation() {
        let svcs = [svc("web", &[])];
        // Slot 1: new generation 7 not ready yet, previous 6 serves. Slot 2: both serve.
        let instances = [inst("web", 1, 7, Some(6)), inst("web", 2, 9, Some(8))];
        let reports = [
            rep("s.web.1", 6, InstanceState::Running, Health::Healthy),
            rep("s.web.1", 7, InstanceState::Running, Health::Starting),
            rep("s.web.2", 8, InstanceState::Running, Health::Healthy),
            rep("s.web.2", 9, InstanceState::Running, Health::Healthy),
        ];
        let out = services(
            &svcs,
            &instances,
            &|id, g| crate::testdata::report_in(&reports, id, g),
            &|_, _| false,
        );
        assert_eq!(addresses(&out, "web"), ["1=10.0.0.6", "2=10.0.0.9"]);
        // The previous generation being drained is never named.
        let out = services(
            &svcs,
            &instances,
            &|id, g| crate::testdata::report_in(&reports, id, g),
            &|_, g| g == 6,
        );
        assert_eq!(addresses(&out, "web"), ["2=10.0.0.9"]);
    }

    #[test]
    fn ports_come_from_targets_expose_and_ingress() {
        for (expose, want) in [
            (vec!["8080"], vec![8080]),
            (vec!["8080/tcp", "53/udp"], vec![53, 8080]),
            (vec!["9000-9002"], vec![9000, 9001, 9002]),
            (vec!["1-1000", "x", "9-3"], vec![]),
        ] {
            let spec = svc("web", &expose).spec;
            assert_eq!(ports(&spec), want, "{expose:?}");
        }
    }
}
