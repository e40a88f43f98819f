//! The ingress routing table, pure: every service with `x-wharf: ingress:` routes, and the
//! instance generations that take its traffic. The deployer puts the same table in every node's
//! desired state (every agent runs an ingress; see `wharf-agent/src/ingress.rs`).
//!
//! An endpoint is an assigned generation (current, or previous while relocating or replacing
//! start-first) whose report says running and healthy (or without a health check) and gives an
//! address. A placement being drained stays in, marked draining: it gets no new requests while
//! what is in flight finishes.

use std::collections::BTreeMap;

use wharf_types::{Health, IngressEndpoint, IngressService, InstanceReport, InstanceState};

use crate::model::{InstanceRecord, ServiceRecord};

/// The table. `report` finds the report of an instance generation; `draining` says
/// whether an assigned generation of an instance is being drained.
pub fn table<'a>(
    services: impl IntoIterator<Item = &'a ServiceRecord>,
    instances: impl IntoIterator<Item = &'a InstanceRecord>,
    report: &dyn Fn(&str, u64) -> Option<&'a InstanceReport>,
    draining: &dyn Fn(&InstanceRecord, u64) -> bool,
) -> Vec<IngressService> {
    let mut routed: BTreeMap<(&str, &str), IngressService> = services
        .into_iter()
        .filter(|s| !s.spec.wharf.ingress.is_empty())
        .map(|s| {
            let entry = IngressService {
                stack: s.stack.clone(),
                service: s.name.clone(),
                routes: s.spec.wharf.ingress.clone(),
                endpoints: Vec::new(),
            };
            ((s.stack.as_str(), s.name.as_str()), entry)
        })
        .collect();
    if routed.is_empty() {
        return Vec::new();
    }
    for inst in instances {
        let Some(entry) = routed.get_mut(&(inst.stack.as_str(), inst.service.as_str())) else {
            continue;
        };
        let id = inst.id();
        let generations =
            std::iter::once(inst.generation).chain(inst.previous.as_ref().map(|p| p.generation));
        for generation in generations {
            let Some(r) = report(&id, generation) else {
                continue;
            };
            let serving = r.state == InstanceState::Running
                && matches!(r.health, Health::None | Health::Healthy);
            let Some(address) = r.address.as_ref().filter(|_| serving) else {
                continue;
            };
            entry.endpoints.push(IngressEndpoint {
                instance: id.clone(),
                generation,
                address: address.clone(),
                draining: draining(inst, generation),
            });
        }
    }
    let mut out: Vec<IngressService> = routed.into_values().collect();
    for s in &mut out {
        s.endpoints
            .sort_by(|a, b| (&a.instance, a.generation).cmp(&(&b.instance, b.generation)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::{instance as inst, report as rep};
    use wharf_types::{IngressRoute, ServiceSpec};

    fn svc(name: &str, routed: bool) -> ServiceRecord {
        let mut spec = ServiceSpec::default();
        if routed {
            spec.wharf.ingress = vec![IngressRoute {
                port: 8080,
                listen: 8000,
                listen_address: None,
                protocol: Default::default(),
                hosts: vec![],
                paths: vec![],
                balance: Default::default(),
                sticky: None,
                timeout_ms: None,
                redirect_https: false,
                tls: None,
            }];
        }
        crate::testdata::service(name, spec)
    }

    #[test]
    fn endpoints_are_running_healthy_assigned_generations_with_an_address() {
        let services = [svc("web", true), svc("db", false)];
        let instances = [
            inst("web", 0, 1, None),
            inst("web", 1, 2, None),
            inst("web", 2, 3, None),
            inst("web", 3, 5, Some(4)),
            inst("db", 0, 6, None),
        ];
        let mut no_address = rep("s.web.2", 3, InstanceState::Running, Health::Healthy);
        no_address.address = None;
        let reports = [
            rep("s.web.0", 1, InstanceState::Running, Health::Healthy),
            rep("s.web.1", 2, InstanceState::Running, Health::Unhealthy),
            no_address,
            rep("s.web.3", 4, InstanceState::Running, Health::None),
            rep("s.web.3", 5, InstanceState::Running, Health::Starting),
            rep("s.web.0", 0, InstanceState::Running, Health::Healthy), // not assigned any more
            rep("s.db.0", 6, InstanceState::Running, Health::None),
        ];
        let t = table(
            &services,
            &instances,
            &|id, g| crate::testdata::report_in(&reports, id, g),
            &|i, g| i.slot == 3 && g == 4,
        );
        assert_eq!(t.len(), 1, "only services with routes: {t:?}");
        assert_eq!((t[0].stack.as_str(), t[0].service.as_str()), ("s", "web"));
        let eps: Vec<(String, u64, String, bool)> = t[0]
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.instance.clone(),
                    e.generation,
                    e.address.clone(),
                    e.draining,
                )
            })
            .collect();
        assert_eq!(
            eps,
            vec![
                ("s.web.0".into(), 1, "10.0.0.1".into(), false),
                ("s.web.3".into(), 4, "10.0.0.4".into(), true),
            ]
        );
    }

    #[test]
    fn a_service_without_endpoints_keeps_its_routes() {
        let t = table(&[svc("web", true)], &[], &|_, _| None, &|_, _| false);
        assert_eq!(t.len(), 1);
        assert!(t[0].endpoints.is_empty());
        assert_eq!(t[0].routes.len(), 1);
    }
}
