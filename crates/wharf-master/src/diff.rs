//! What a deploy would change: a pure comparison of the stored services with a new stack spec.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};
use wharf_types::{ChangeKind, ServiceChange, ServiceSpec, StackDiff, StackSpec};

use crate::model::ServiceRecord;

/// Compare the services currently stored for a stack with a new spec.
pub fn stack_diff(current: &BTreeMap<String, ServiceRecord>, new: &StackSpec) -> StackDiff {
    let mut services = Vec::new();
    for (name, spec) in &new.services {
        let change = match current.get(name) {
            None => ServiceChange {
                service: name.clone(),
                kind: ChangeKind::Create,
                details: vec![format!("replicas: {}", spec.deploy.replicas)],
            },
            Some(rec) => {
                let mut details = Vec::new();
                if rec.spec_hash != spec.instance_hash() {
                    let (old, new) = (shown(&rec.spec), shown(spec));
                    value_diff("", &old, &new, &mut details);
                    details.retain(|d| !d.starts_with("deploy.replicas"));
                    files_diff(&rec.spec, spec, &mut details);
                    if details.is_empty() {
                        details.push("spec changed".to_string());
                    }
                    ServiceChange {
                        service: name.clone(),
                        kind: ChangeKind::Update,
                        details,
                    }
                } else if rec.replicas != spec.deploy.replicas {
                    details.push(format!(
                        "replicas: {} -> {}",
                        rec.replicas, spec.deploy.replicas
                    ));
                    ServiceChange {
                        service: name.clone(),
                        kind: ChangeKind::Scale,
                        details,
                    }
                } else if *rec.spec != *spec {
                    // Deploy-only settings (update_config, labels...) changed: stored, nothing replaced.
                    let (old, new) = (shown(&rec.spec), shown(spec));
                    value_diff("", &old, &new, &mut details);
                    ServiceChange {
                        service: name.clone(),
                        kind: ChangeKind::Scale,
                        details,
                    }
                } else {
                    ServiceChange {
                        service: name.clone(),
                        kind: ChangeKind::Unchanged,
                        details,
                    }
                }
            }
        };
        services.push(change);
    }
    for name in current.keys() {
        if !new.services.contains_key(name) {
            services.push(ServiceChange {
                service: name.clone(),
                kind: ChangeKind::Remove,
                details: vec![],
            });
        }
    }
    services.sort_by(|a, b| a.service.cmp(&b.service));
    StackDiff {
        stack: new.name.clone(),
        services,
    }
}

/// A spec as the diff shows it: secrets redacted to their fingerprints, and certificates (long
/// PEM text) to theirs, so that a changed key or certificate shows as a changed fingerprint.
fn shown(spec: &ServiceSpec) -> Value {
    let mut spec = spec.clone();
    spec.redact_secrets();
    // Shown by `files_diff`, one line per file.
    spec.secrets.clear();
    spec.configs.clear();
    for tls in spec.wharf.ingress.iter_mut().filter_map(|r| r.tls.as_mut()) {
        let digest = Sha256::digest(tls.certificate.as_bytes());
        tls.certificate = format!("sha256:{}", hex::encode(&digest[..8]));
    }
    serde_json::to_value(&spec).unwrap_or(Value::Null)
}

/// The secrets and configs a service mounts, one line per change: `secret db_password: version
/// 2 -> 3` (never a value: there is none in a spec).
fn files_diff(old: &ServiceSpec, new: &ServiceSpec, out: &mut Vec<String>) {
    let by_source =
        |s: &ServiceSpec| -> BTreeMap<(wharf_types::ObjectKind, String), wharf_types::FileRef> {
            s.files()
                .map(|(k, f)| ((k, f.source.clone()), f.clone()))
                .collect()
        };
    let (a, b) = (by_source(old), by_source(new));
    for ((kind, source), f) in &b {
        let what = format!("{} {source}", kind.as_str());
        match a.get(&(*kind, source.clone())) {
            None => out.push(format!(
                "{what}: added at {} (version {})",
                f.target, f.version
            )),
            Some(o) => {
                if o.version != f.version || o.name != f.name {
                    out.push(format!("{what}: version {} -> {}", o.version, f.version));
                }
                let place = |f: &wharf_types::FileRef| (f.target.clone(), f.uid, f.gid, f.mode());
                if place(o) != place(f) {
                    out.push(format!(
                        "{what}: {} uid {} gid {} mode {:o} -> {} uid {} gid {} mode {:o}",
                        o.target,
                        o.uid.unwrap_or(0),
                        o.gid.unwrap_or(0),
                        o.mode(),
                        f.target,
                        f.uid.unwrap_or(0),
                        f.gid.unwrap_or(0),
                        f.mode()
                    ));
                }
            }
        }
    }
    for (kind, source) in a.keys().filter(|k| !b.contains_key(*k)) {
        out.push(format!("{} {source}: removed", kind.as_str()));
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Field-level differences between two JSON values, as `path: old -> new` lines.
fn value_diff(path: &str, old: &Value, new: &Value, out: &mut Vec<String>) {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let p = join(path, k);
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => value_diff(&p, x, y, out),
                    (None, Some(y)) => out.push(format!("{p}: added {y}")),
                    (Some(x), None) => out.push(format!("{p}: removed (was {x})")),
                    (None, None) => {}
                }
            }
        }
        (a, b) if a != b => out.push(format!("{path}: {a} -> {b}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::ServiceSpec;

    fn record(spec: ServiceSpec) -> ServiceRecord {
        ServiceRecord {
            spec_hash: spec.instance_hash(),
            replicas: spec.deploy.replicas,
            ..crate::testdata::service("web", spec)
        }
    }

    fn web(env: &str, replicas: u32) -> ServiceSpec {
        let mut s = ServiceSpec {
            image: Some("app:1".into()),
            ..Default::default()
        };
        s.environment.insert("MODE".into(), env.into());
        s.deploy.replicas = replicas;
        s
    }

    fn check(
        old: Option<ServiceSpec>,
        new: Option<ServiceSpec>,
        kind: ChangeKind,
        details: &[&str],
    ) {
        let current: BTreeMap<_, _> = old
            .map(|s| ("web".to_string(), record(s)))
            .into_iter()
            .collect();
        let mut stack = StackSpec {
            name: "s".into(),
            ..Default::default()
        };
        if let Some(n) = new {
            stack.services.insert("web".into(), n);
        }
        let d = stack_diff(&current, &stack);
        assert_eq!(d.services.len(), 1, "{d:?}");
        assert_eq!(d.services[0].kind, kind, "{d:?}");
        assert_eq!(d.services[0].details, details, "{d:?}");
    }

    #[test]
    fn diff_cases() {
        check(
            Some(web("a", 1)),
            Some(web("a", 1)),
            ChangeKind::Unchanged,
            &[],
        );
        check(
            Some(web("a", 1)),
            Some(web("b", 1)),
            ChangeKind::Update,
            &[r#"environment.MODE: "a" -> "b""#],
        );
        check(
            Some(web("a", 1)),
            Some(web("a", 3)),
            ChangeKind::Scale,
            &["replicas: 1 -> 3"],
        );
        check(
            None,
            Some(web("a", 2)),
            ChangeKind::Create,
            &["replicas: 2"],
        );
        check(Some(web("a", 1)), None, ChangeKind::Remove, &[]);
    }

    #[test]
    fn a_changed_key_shows_as_fingerprints_never_as_the_key() {
        let with_key = |key: &str| {
            let mut s = web("a", 1);
            s.wharf.ingress = vec![wharf_types::IngressRoute {
                port: 80,
                listen: 443,
                tls: Some(wharf_types::IngressTls {
                    certificate: "CERTIFICATE PEM".into(),
                    key: wharf_types::Secret(key.into()),
                }),
                ..Default::default()
            }];
            s
        };
        let current: BTreeMap<_, _> = [("web".to_string(), record(with_key("SECRET-ONE")))].into();
        let mut stack = StackSpec {
            name: "s".into(),
            ..Default::default()
        };
        stack.services.insert("web".into(), with_key("SECRET-TWO"));
        let d = stack_diff(&current, &stack);
        assert_eq!(d.services[0].kind, ChangeKind::Scale, "{d:?}");
        let text = d.services[0].details.join("\n");
        assert!(text.contains("redacted sha256:"), "{text}");
        assert!(
            !text.contains("SECRET") && !text.contains("CERTIFICATE PEM"),
            "{text}"
        );
    }
}
