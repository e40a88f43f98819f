//! Compose `networks:` as segments: a service's `networks:` (a list of names, or a map with
//! `aliases`), the top-level `internal:` flag, and `x-wharf: allow_from` (checked here as
//! `stack/service` names; the master enforces them).

use std::collections::BTreeMap;

use wharf_types::{DEFAULT_NETWORK, ServiceNetwork, StackSpec};

use super::{Cx, keyed, suggest};
use crate::yaml::{Kind, Node, Pos};

impl Cx<'_> {
    /// A service's `networks:`; each name is remembered with where it was written, to be checked
    /// against the top-level networks (`check_networks`).
    pub(super) fn service_networks(
        &mut self,
        service: &str,
        n: &Node,
        path: &str,
    ) -> BTreeMap<String, ServiceNetwork> {
        let mut out = BTreeMap::new();
        match &n.kind {
            Kind::Seq(items) => {
                for (i, it) in items.iter().enumerate() {
                    if let Some(net) = self.string(it, &format!("{path}[{i}]")) {
                        self.network_refs
                            .push((service.to_string(), net.clone(), it.pos));
                        out.insert(net, ServiceNetwork::default());
                    }
                }
            }
            Kind::Map(entries) => {
                for (k, v, p) in keyed(entries, path) {
                    let mut sn = ServiceNetwork::default();
                    // `back:` with nothing after it is the same as listing `back`.
                    if !v.is_null()
                        && let Some(fields) = self.map(v, &p)
                    {
                        for (fk, fv, fp) in keyed(fields, &p) {
                            match fk.name.as_str() {
                                "aliases" => {
                                    sn.aliases = self.str_list(fv, &fp).unwrap_or_default()
                                }
                                _ => self.other_key(fk, &p, &super::keys::SERVICE_NETWORK),
                            }
                        }
                    }
                    self.network_refs
                        .push((service.to_string(), k.name.clone(), k.pos));
                    out.insert(k.name.clone(), sn);
                }
            }
            _ => self.type_error(
                n,
                path,
                "a list or a mapping",
                "write a list of network names, e.g. `networks: [front, back]`",
            ),
        }
        out
    }

    /// `x-wharf: allow_from`: each entry `stack/service`.
    pub(super) fn allow_from(&mut self, n: &Node, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        let Some(items) = self.str_list(n, path) else {
            return out;
        };
        for (i, item) in items.into_iter().enumerate() {
            let ok = item
                .split_once('/')
                .is_some_and(|(s, v)| !s.is_empty() && !v.is_empty() && !v.contains('/'));
            if ok {
                out.push(item);
            } else {
                let pos = match &n.kind {
                    Kind::Seq(nodes) => nodes.get(i).map_or(n.pos, |x| x.pos),
                    _ => n.pos,
                };
                self.error(
                    pos,
                    format!("{path}[{i}]: {item:?} is not a service of a stack"),
                    "write STACK/SERVICE, e.g. `allow_from: [monitoring/prometheus]`",
                );
            }
        }
        out
    }

    /// Every network a service names is declared at the top level (`default` always is); each
    /// service learns which of its networks are `internal`.
    pub(super) fn check_networks(&mut self, spec: &mut StackSpec) {
        let internal: Vec<String> = spec
            .networks
            .iter()
            .filter(|(_, n)| n.internal)
            .map(|(k, _)| k.clone())
            .collect();
        for s in spec.services.values_mut() {
            for (name, n) in s.networks.iter_mut() {
                n.internal = internal.contains(name);
            }
        }
        let refs: Vec<(String, String, Pos)> = std::mem::take(&mut self.network_refs);
        let declared: Vec<&str> = spec.networks.keys().map(String::as_str).collect();
        for (service, net, pos) in refs {
            if net == DEFAULT_NETWORK || spec.networks.contains_key(&net) {
                continue;
            }
            let hint = match suggest(&net, &declared) {
                Some(s) => {
                    format!("did you mean {s:?}? (or declare it under the top-level `networks:`)")
                }
                None => format!(
                    "declare it under the top-level `networks:` (`networks: {{{net}: {{}}}}`)"
                ),
            };
            self.error(
                pos,
                format!("services.{service}.networks: undefined network {net:?}"),
                hint,
            );
        }
    }
}
