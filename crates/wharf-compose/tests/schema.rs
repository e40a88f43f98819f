//! Every key of the Compose specification is decided: the test walks the specification's JSON
//! schema (`compose-spec.json` of the compose-spec repository, kept beside the workspace in
//! `../shared/compose-spec/`, never copied into it) and fails for any key of an object that is
//! in none of the supported, refused and warned lists of its section
//! (`wharf_compose::key_support`). It walks into the keys Wharf supports only: a refused or
//! ignored key's own keys need no decision.

use std::path::PathBuf;

use serde_json::Value;
use wharf_compose::{Support, key_support};

/// Which section of `key_support` the object a supported key holds is: (section, key, the
/// section of its value). A supported key whose schema holds an object with keys and that has
/// no row here fails the walk.
const CHILDREN: &[(&str, &str, &str)] = &[
    ("top", "services", "service"),
    ("top", "volumes", "volume"),
    ("top", "networks", "network"),
    ("top", "secrets", "secret"),
    ("top", "configs", "config"),
    ("top", "include", "include"),
    ("service", "extends", "service.extends"),
    ("service", "build", "service.build"),
    ("service", "healthcheck", "service.healthcheck"),
    ("service", "ports", "service.ports"),
    ("service", "volumes", "service.volumes"),
    ("service", "depends_on", "service.depends_on"),
    ("service", "env_file", "service.env_file"),
    ("service", "logging", "service.logging"),
    ("service", "ulimits", "service.ulimits"),
    ("service", "devices", "service.devices"),
    ("service", "post_start", "service.hook"),
    ("service", "pre_stop", "service.hook"),
    ("service", "networks", "service.networks"),
    ("service", "secrets", "service.file_ref"),
    ("service", "configs", "service.file_ref"),
    ("service", "deploy", "deploy"),
    ("service.volumes", "bind", "service.volumes.bind"),
    ("service.volumes", "volume", "service.volumes.volume"),
    ("service.volumes", "tmpfs", "service.volumes.tmpfs"),
    ("deploy", "resources", "deploy.resources"),
    ("deploy", "restart_policy", "deploy.restart_policy"),
    ("deploy", "update_config", "deploy.update_config"),
    ("deploy", "rollback_config", "deploy.update_config"),
    ("deploy", "placement", "deploy.placement"),
    ("deploy.resources", "limits", "deploy.resources.limits"),
    (
        "deploy.resources",
        "reservations",
        "deploy.resources.reservations",
    ),
    (
        "deploy.placement",
        "preferences",
        "deploy.placement.preferences",
    ),
    ("volume", "external", "volume.external"),
    ("network", "external", "network.external"),
    ("secret", "external", "object.external"),
    ("config", "external", "object.external"),
];

fn schema() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/compose-spec/compose-spec.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read the Compose schema at {}: {e} (CI and the dev machines keep the \
             compose-spec repository at ../shared/compose-spec beside the workspace)",
            path.display()
        )
    });
    serde_json::from_str(&text).expect("compose-spec.json is JSON")
}

/// The object shapes (schemas with `properties`) a value schema may take: through `$ref`,
/// `oneOf`/`anyOf`/`allOf`, list `items` and map `patternProperties` (not the `^x-`
/// extensions).
fn shapes<'v>(root: &'v Value, v: &'v Value, depth: usize, out: &mut Vec<&'v Value>) {
    assert!(depth < 32, "the schema's $refs loop");
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let target = r
            .strip_prefix("#/")
            .map(|p| p.split('/').fold(root, |n, k| &n[k]))
            .unwrap_or(&Value::Null);
        assert!(!target.is_null(), "unresolved $ref {r}");
        shapes(root, target, depth + 1, out);
    }
    if v.get("properties").is_some() {
        out.push(v);
        return;
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        for alt in v.get(key).and_then(Value::as_array).into_iter().flatten() {
            shapes(root, alt, depth + 1, out);
        }
    }
    if let Some(items) = v.get("items") {
        shapes(root, items, depth + 1, out);
    }
    for (pattern, p) in v
        .get("patternProperties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if pattern != "^x-" {
            shapes(root, p, depth + 1, out);
        }
    }
}

/// Walk the object `obj` of `section`, at schema path `at`; every problem found goes to `out`.
fn walk(
    root: &Value,
    obj: &Value,
    section: &str,
    at: &str,
    support: &dyn Fn(&str, &str) -> Option<Support>,
    out: &mut Vec<String>,
) {
    let props = obj["properties"].as_object().expect("properties");
    for (key, value) in props {
        let path = format!("{at}.{key}");
        match support(section, key) {
            None => out.push(format!(
                "{path}: key {key:?} is in none of the supported, refused or warned lists of section {section:?} (crates/wharf-compose/src/convert/keys.rs)"
            )),
            Some(Support::Supported) => {
                let mut found = Vec::new();
                shapes(root, value, 0, &mut found);
                if found.is_empty() {
                    continue;
                }
                let child = CHILDREN
                    .iter()
                    .find(|(s, k, _)| *s == section && k == key)
                    .map(|(_, _, c)| *c);
                match child {
                    Some(c) => {
                        for shape in found {
                            walk(root, shape, c, &path, support, out);
                        }
                    }
                    None => out.push(format!(
                        "{path}: the supported key {key:?} holds an object, and no section is named for it in CHILDREN"
                    )),
                }
            }
            Some(Support::Refused { why, instead }) => {
                assert!(!why.is_empty() && !instead.is_empty(), "{path}");
            }
            Some(Support::Warned { why }) => assert!(!why.is_empty(), "{path}"),
        }
    }
}

fn problems(support: &dyn Fn(&str, &str) -> Option<Support>) -> Vec<String> {
    let root = schema();
    let mut out = Vec::new();
    walk(&root, &root, "top", "compose-spec", support, &mut out);
    out
}

#[test]
fn every_key_of_the_compose_spec_is_supported_refused_or_warned() {
    let found = problems(&key_support);
    assert!(
        found.is_empty(),
        "undecided Compose keys:\n{}",
        found.join("\n")
    );
}

/// The walk reaches nested sections, and a key missing from its section's lists is reported
/// with its schema path (here, as if `tty` and the tmpfs mount's `size` were undecided).
#[test]
fn an_undecided_key_fails_the_walk_naming_its_schema_path() {
    let without = |section: &str, key: &str| match (section, key) {
        ("service", "tty") | ("service.volumes.tmpfs", "size") => None,
        _ => key_support(section, key),
    };
    let found = problems(&without);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("compose-spec.services.tty: key \"tty\" is in none"),
        "{}",
        found[0]
    );
    assert!(
        found[1].starts_with("compose-spec.services.volumes.tmpfs.size:"),
        "{}",
        found[1]
    );
}
