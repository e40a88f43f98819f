//! `deploy:`: mode, replicas, resources, restart policy, update and rollback config, placement.

use wharf_types::{DeploySpec, Placement, ResourceAmounts, RestartPolicy, UpdateConfig};

use crate::units;
use crate::yaml::{Kind, Node};

use super::keys::*;
use super::{Cx, fields, items, join, keyed};

impl Cx<'_> {
    pub(super) fn deploy(&mut self, n: &Node, path: &str) -> (DeploySpec, Option<RestartPolicy>) {
        let mut d = DeploySpec::default();
        let mut rp = None;
        let Some(entries) = self.map(n, path) else {
            return (d, rp);
        };
        let mut replicas_pos = None;
        for (k, v, p) in fields(entries, path) {
            match k.name.as_str() {
                "mode" => {
                    d.mode = self
                        .one_of(v, &p, "unsupported mode", DEPLOY_MODES)
                        .unwrap_or(d.mode);
                }
                "replicas" => {
                    if let Some(r) = self.u32(v, &p) {
                        d.replicas = r;
                        replicas_pos = Some(k.pos);
                        if let Some((msg, hint)) = crate::replicas_problem(r) {
                            self.error(v.pos, format!("{p}: {msg}"), hint);
                        }
                    }
                }
                "resources" => {
                    let Some(res) = self.map(v, &p) else { continue };
                    for (rk, rv, rpth) in keyed(res, &p) {
                        match rk.name.as_str() {
                            "limits" => d.resources.limits = self.amounts(rv, &rpth, &LIMITS),
                            "reservations" => {
                                d.resources.reservations = self.amounts(rv, &rpth, &RESERVATIONS)
                            }
                            _ => self.other_key(rk, &p, &RESOURCES),
                        }
                    }
                }
                "restart_policy" => rp = self.restart_policy(v, &p),
                "update_config" => d.update_config = self.update_config(v, &p),
                "rollback_config" => d.rollback_config = self.update_config(v, &p),
                "placement" => d.placement = self.placement(v, &p),
                "labels" => d.labels = self.labels(v, &p),
                _ => self.other_key(k, path, &DEPLOY),
            }
        }
        if d.mode.is_global()
            && let Some(pos) = replicas_pos
        {
            self.warn(pos, format!("{path}.replicas is ignored in global mode"));
        }
        (d, rp)
    }

    pub(super) fn amounts(&mut self, n: &Node, path: &str, section: &Section) -> ResourceAmounts {
        let mut a = ResourceAmounts::default();
        let Some(entries) = self.map(n, path) else {
            return a;
        };
        for (k, v, p) in fields(entries, path) {
            match k.name.as_str() {
                "cpus" => {
                    let Some(s) = self.string(v, &p) else {
                        continue;
                    };
                    match units::parse_nano_cpus(&s) {
                        Ok(c) => a.nano_cpus = Some(c),
                        Err(e) => self.error(
                            v.pos,
                            format!("{p}: {e}"),
                            "write a number of CPUs such as 0.5 or \"2\"",
                        ),
                    }
                }
                "memory" => {
                    let Some(s) = self.string(v, &p) else {
                        continue;
                    };
                    match units::parse_size(&s) {
                        Ok(0) => self.error(
                            v.pos,
                            format!("{p}: memory must be greater than 0"),
                            "write a size such as 512M or 1g",
                        ),
                        Ok(b) => a.memory_bytes = Some(b),
                        Err(e) => self.error(
                            v.pos,
                            format!("{p}: {e}"),
                            "write a size such as 512M, 1g, 1024k or a number of bytes",
                        ),
                    }
                }
                // The same as pids_limit: read with it (`Cx::merge_levels`).
                "pids" if section.name == LIMITS.name => {}
                _ => self.other_key(k, path, section),
            }
        }
        a
    }

    pub(super) fn restart_policy(&mut self, n: &Node, path: &str) -> Option<RestartPolicy> {
        let entries = self.map(n, path)?;
        let mut rp = RestartPolicy::default();
        for (k, v, p) in fields(entries, path) {
            match k.name.as_str() {
                "condition" => {
                    rp.condition = self
                        .one_of(v, &p, "unknown condition", RESTART_CONDITIONS)
                        .unwrap_or(rp.condition);
                }
                "delay" => {
                    if let Some(ms) = self.duration(v, &p) {
                        rp.delay_ms = ms;
                        rp.max_delay_ms = rp.max_delay_ms.max(ms);
                    }
                }
                "max_attempts" => rp.max_attempts = self.u32(v, &p).unwrap_or(0),
                "window" => rp.window_ms = self.duration(v, &p).unwrap_or(0),
                _ => self.other_key(k, path, &RESTART_POLICY),
            }
        }
        Some(rp)
    }

    pub(super) fn update_config(&mut self, n: &Node, path: &str) -> UpdateConfig {
        let mut u = UpdateConfig::default();
        let Some(entries) = self.map(n, path) else {
            return u;
        };
        for (k, v, p) in fields(entries, path) {
            match k.name.as_str() {
                "parallelism" => u.parallelism = self.u32(v, &p).unwrap_or(u.parallelism),
                "delay" => u.delay_ms = self.duration(v, &p).unwrap_or(u.delay_ms),
                "monitor" => u.monitor_ms = self.duration(v, &p).unwrap_or(u.monitor_ms),
                "order" => {
                    u.order = self
                        .one_of(v, &p, "unknown order", UPDATE_ORDERS)
                        .unwrap_or(u.order);
                }
                "failure_action" => {
                    u.failure_action = self
                        .one_of(v, &p, "unknown failure action", FAILURE_ACTIONS)
                        .unwrap_or(u.failure_action);
                }
                "max_failure_ratio" => {
                    let Some(s) = self.string(v, &p) else {
                        continue;
                    };
                    match units::parse_permille(&s) {
                        Ok(r) => u.max_failure_ratio_permille = r,
                        Err(e) => self.error(
                            v.pos,
                            format!("{p}: {e}"),
                            "write a ratio between 0 and 1, e.g. 0.1",
                        ),
                    }
                }
                _ => self.other_key(k, path, &UPDATE),
            }
        }
        u
    }

    pub(super) fn placement(&mut self, n: &Node, path: &str) -> Placement {
        let mut pl = Placement::default();
        let Some(entries) = self.map(n, path) else {
            return pl;
        };
        for (k, v, p) in fields(entries, path) {
            match k.name.as_str() {
                "constraints" => {
                    pl.constraints = self.str_list(v, &p).unwrap_or_default();
                    if let Kind::Seq(items) = &v.kind {
                        for (i, it) in items.iter().enumerate() {
                            let Kind::Scalar(c) = &it.kind else { continue };
                            if let Err(e) = wharf_types::constraint::parse_constraint(&c.text) {
                                self.error(
                                    it.pos,
                                    format!("{p}[{i}]: invalid constraint: {e}"),
                                    format!(
                                        "write one of: {}",
                                        wharf_types::constraint::ACCEPTED_FORMS
                                    ),
                                );
                            }
                        }
                    }
                }
                "max_replicas_per_node" => pl.max_replicas_per_node = self.u32(v, &p),
                "preferences" => {
                    let hint = "write `- spread: node.labels.zone`";
                    let Some(list) = self.seq(v, &p, "a list", hint) else {
                        continue;
                    };
                    for (it, ip) in items(list, &p) {
                        let Some(fields) = self.map(it, &ip) else {
                            continue;
                        };
                        for (fk, fv) in fields {
                            match fk.name.as_str() {
                                "spread" => {
                                    if let Some(s) = self.string(fv, &join(&ip, "spread")) {
                                        pl.preferences.push(s);
                                    }
                                }
                                _ => self.other_key(fk, &ip, &PREFERENCE),
                            }
                        }
                    }
                }
                _ => self.other_key(k, path, &PLACEMENT),
            }
        }
        pl
    }
}
