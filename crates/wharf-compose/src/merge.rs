//! Compose's merge rules on located YAML trees: how a later file (`-c a.yml -c b.yml`, an override
//! file) or a service that `extends` another combines with what it overrides.
//!
//! As the Compose specification's merge rules (and `docker-compose` v1, which the tests compare
//! against): mappings merge key by key; `command`, `entrypoint`, `healthcheck.test` and each
//! `ulimits` entry are replaced; `environment`, `labels`, `sysctls`, `extra_hosts` and the like
//! merge by key whether written as a mapping or a `KEY=value` list; `ports`, `volumes`,
//! `secrets`, `configs` and the other lists append, an item replacing the one it collides with
//! (same published port, same target path, same value); other lists append; scalars are
//! replaced. A null value keeps what it overrides, `!reset` removes it, `!override` replaces it
//! whole. Nodes keep their positions, so a merged tree still says which file each value came from.

use crate::yaml::{Key, Kind, Node, Scalar, Tag};

/// The path pattern of a node: keys joined by `.`, names chosen by the user (services, volumes,
/// ulimits...) as `*`.
type Path = String;

/// Top-level sections and service keys whose mapping keys are names, not keywords.
const NAMED: &[&str] = &[
    "services",
    "volumes",
    "networks",
    "secrets",
    "configs",
    "services.*.ulimits",
    "services.*.networks",
    "services.*.depends_on",
];

enum Rule {
    /// The later value replaces the earlier one.
    Replace,
    /// A mapping or a list of `KEY<sep>value`: merged by key, the later value winning.
    KeyValue,
    /// A list (or a single scalar): appended, an item replacing an earlier one with its key.
    Unique(fn(&Node) -> Option<String>),
    /// A list of names or a mapping of names to settings (`depends_on`, service `networks`).
    Names,
    /// `build`: a context directory or a mapping.
    Build,
    /// `logging`: a different driver replaces, the same merges its options.
    Logging,
    /// Mappings merge, lists append, scalars are replaced.
    Default,
}

fn rule(path: &str) -> Rule {
    let Some(key) = path.strip_prefix("services.*.") else {
        return match path {
            "volumes.*.labels" | "networks.*.labels" => Rule::KeyValue,
            _ => Rule::Default,
        };
    };
    match key {
        "command" | "entrypoint" | "healthcheck.test" | "ulimits.*" => Rule::Replace,
        "environment" | "labels" | "annotations" | "sysctls" | "extra_hosts" | "build.args"
        | "build.labels" | "build.extra_hosts" | "deploy.labels" => Rule::KeyValue,
        "ports" => Rule::Unique(port_key),
        "volumes" | "devices" => Rule::Unique(mount_target),
        "secrets" => Rule::Unique(secret_target),
        "configs" => Rule::Unique(config_target),
        "env_file" => Rule::Unique(env_file_path),
        "expose"
        | "cap_add"
        | "cap_drop"
        | "dns"
        | "dns_search"
        | "dns_opt"
        | "security_opt"
        | "profiles"
        | "tmpfs"
        | "group_add"
        | "links"
        | "external_links"
        | "device_cgroup_rules"
        | "networks.*.aliases" => Rule::Unique(text_key),
        "depends_on" | "networks" => Rule::Names,
        "build" => Rule::Build,
        "logging" => Rule::Logging,
        _ => Rule::Default,
    }
}

/// Merge a later top-level document over an earlier one.
pub fn merge_top(base: Node, over: Node) -> Node {
    if over.is_null() {
        return base;
    }
    merge(base, over, "").unwrap_or_else(|| Node::new(Kind::Map(Vec::new()), Default::default()))
}

/// Merge a service over the one it extends.
pub fn merge_service(base: Node, over: Node) -> Node {
    let pos = over.pos;
    merge(base, over, "services.*").unwrap_or_else(|| Node::new(Kind::Map(Vec::new()), pos))
}

/// The merged value, or `None` when `over` is `!reset`.
fn merge(base: Node, over: Node, path: &str) -> Option<Node> {
    match over.tag {
        Tag::Reset => return None,
        Tag::Override => return Some(over),
        Tag::Merge => {}
    }
    if over.is_null() {
        return Some(base);
    }
    let merged = match rule(path) {
        Rule::Replace => over,
        Rule::KeyValue => key_values(base, over),
        Rule::Unique(key) => unique(base, over, key),
        Rule::Names => names(base, over, path),
        Rule::Build => maps(as_build(base), as_build(over), path),
        Rule::Logging => {
            let driver = |n: &Node| n.get("driver").and_then(Node::text).map(str::to_string);
            match (driver(&base), driver(&over)) {
                (Some(a), Some(b)) if a != b => over,
                _ => maps(base, over, path),
            }
        }
        Rule::Default => match (&base.kind, &over.kind) {
            (Kind::Map(_), Kind::Map(_)) => maps(base, over, path),
            (Kind::Seq(_), Kind::Seq(_)) => append(base, over),
            _ => over,
        },
    };
    Some(merged)
}

fn child(path: &str, key: &str) -> Path {
    if NAMED.contains(&path) {
        format!("{path}.*")
    } else if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Key by key; a key of `over` keeps the place of the one it merges with, written where `over`
/// wrote it.
fn maps(base: Node, over: Node, path: &str) -> Node {
    let (Kind::Map(mut entries), Kind::Map(later)) = (base.kind, over.kind) else {
        unreachable!("maps() is called on two mappings")
    };
    for (k, v) in later {
        let sub = child(path, &k.name);
        match entries.iter().position(|(e, _)| e.name == k.name) {
            Some(i) => {
                let (_, earlier) = entries.remove(i);
                if let Some(m) = merge(earlier, v, &sub) {
                    entries.insert(i, (k, m));
                }
            }
            None => {
                if v.tag != Tag::Reset {
                    entries.push((k, untag(v)));
                }
            }
        }
    }
    Node {
        kind: Kind::Map(entries),
        pos: base.pos,
        tag: Tag::Merge,
    }
}

fn untag(mut n: Node) -> Node {
    n.tag = Tag::Merge;
    n
}

fn append(base: Node, over: Node) -> Node {
    let (Kind::Seq(mut items), Kind::Seq(later)) = (base.kind, over.kind) else {
        unreachable!("append() is called on two sequences")
    };
    items.extend(later);
    Node::new(Kind::Seq(items), base.pos)
}

/// A scalar becomes a one-item list (`dns: 8.8.8.8`); a mapping stays as it is.
fn as_list(n: Node) -> Node {
    match n.kind {
        Kind::Scalar(_) => {
            let pos = n.pos;
            Node::new(Kind::Seq(vec![n]), pos)
        }
        _ => n,
    }
}

fn unique(base: Node, over: Node, key: fn(&Node) -> Option<String>) -> Node {
    let (base, over) = (as_list(base), as_list(over));
    if !matches!((&base.kind, &over.kind), (Kind::Seq(_), Kind::Seq(_))) {
        return over;
    }
    let (Kind::Seq(mut items), Kind::Seq(later)) = (base.kind, over.kind) else {
        unreachable!("checked above")
    };
    for it in later {
        let found = key(&it).and_then(|k| items.iter().position(|e| key(e).as_ref() == Some(&k)));
        match found {
            Some(i) => items[i] = it,
            None => items.push(it),
        }
    }
    Node::new(Kind::Seq(items), base.pos)
}

fn text_key(n: &Node) -> Option<String> {
    n.text().map(str::to_string)
}

/// `[[ip:]published:]target[/protocol]`, or the long syntax's fields: what makes two ports the same.
fn port_key(n: &Node) -> Option<String> {
    let (ip, published, target, protocol) = match &n.kind {
        Kind::Scalar(s) => {
            let (spec, protocol) = s.text.split_once('/').unwrap_or((&s.text, "tcp"));
            let parts: Vec<&str> = spec.split(':').collect();
            let n = parts.len();
            let published = if n > 1 { parts[n - 2] } else { "" };
            let ip = if n > 2 {
                parts[..n - 2].join(":")
            } else {
                String::new()
            };
            (
                ip,
                published.to_string(),
                parts[n - 1].to_string(),
                protocol.to_string(),
            )
        }
        Kind::Map(_) => {
            let field = |k: &str| n.get(k).and_then(Node::text).unwrap_or("").to_string();
            let protocol = Some(field("protocol")).filter(|p| !p.is_empty());
            (
                field("host_ip"),
                field("published"),
                field("target"),
                protocol.unwrap_or_else(|| "tcp".into()),
            )
        }
        Kind::Seq(_) => return None,
    };
    Some(format!("{ip}:{published}:{target}/{protocol}"))
}

/// The path a volume or device is mounted at: `[source:]target[:mode]` or `target:`.
fn mount_target(n: &Node) -> Option<String> {
    match &n.kind {
        Kind::Scalar(s) => {
            let parts: Vec<&str> = s.text.split(':').collect();
            Some(parts.get(1).unwrap_or(&parts[0]).to_string())
        }
        Kind::Map(_) => n.get("target").and_then(Node::text).map(str::to_string),
        Kind::Seq(_) => None,
    }
}

/// The path a secret or config is mounted at, by Compose's defaults.
fn object_target(n: &Node, dir: &str) -> Option<String> {
    let under = |t: &str| {
        if t.starts_with('/') {
            t.to_string()
        } else {
            format!("{dir}{t}")
        }
    };
    match &n.kind {
        Kind::Scalar(s) => Some(under(&s.text)),
        Kind::Map(_) => n
            .get("target")
            .or_else(|| n.get("source"))
            .and_then(Node::text)
            .map(under),
        Kind::Seq(_) => None,
    }
}

fn secret_target(n: &Node) -> Option<String> {
    object_target(n, "/run/secrets/")
}

fn config_target(n: &Node) -> Option<String> {
    object_target(n, "/")
}

fn env_file_path(n: &Node) -> Option<String> {
    n.text()
        .or_else(|| n.get("path").and_then(Node::text))
        .map(str::to_string)
}

/// The key of a `KEY=value` item (`host:ip` for `extra_hosts`).
fn item_key(text: &str) -> &str {
    let end = text.find('=').or_else(|| text.find(':'));
    end.map_or(text, |i| &text[..i])
}

/// `environment`, `labels` and the like: two mappings merge key by key (the later value
/// replacing); with a list on either side, both become `KEY=value` lists merged by key.
fn key_values(base: Node, over: Node) -> Node {
    if let (Kind::Map(_), Kind::Map(_)) = (&base.kind, &over.kind) {
        let (Kind::Map(mut entries), Kind::Map(later)) = (base.kind, over.kind) else {
            unreachable!()
        };
        for (k, v) in later {
            match entries.iter().position(|(e, _)| e.name == k.name) {
                Some(i) => entries[i] = (k, v),
                None => entries.push((k, v)),
            }
        }
        return Node::new(Kind::Map(entries), base.pos);
    }
    let (Some(earlier), Some(later)) = (kv_list(base), kv_list(over.clone())) else {
        return over;
    };
    let pos = earlier.pos;
    let mut items: Vec<Node> = match earlier.kind {
        Kind::Seq(items) => items,
        _ => Vec::new(),
    };
    let Kind::Seq(later) = later.kind else {
        return over;
    };
    for it in later {
        let k = it.text().map(|t| item_key(t).to_string());
        let found = items
            .iter()
            .position(|e| e.text().map(item_key) == k.as_deref());
        match found {
            Some(i) => items[i] = it,
            None => items.push(it),
        }
    }
    Node::new(Kind::Seq(items), pos)
}

/// A mapping of scalars as a `KEY=value` list (`KEY` for a null value); `None` for anything else.
fn kv_list(n: Node) -> Option<Node> {
    match n.kind {
        Kind::Seq(_) => Some(n),
        Kind::Map(entries) => {
            let mut items = Vec::new();
            for (k, v) in entries {
                let text = match &v.kind {
                    _ if v.is_null() => k.name.clone(),
                    Kind::Scalar(s) => format!("{}={}", k.name, s.text),
                    _ => return None,
                };
                let quoted = true;
                items.push(Node::new(Kind::Scalar(Scalar { text, quoted }), k.pos));
            }
            Some(Node::new(Kind::Seq(items), n.pos))
        }
        Kind::Scalar(_) => None,
    }
}

/// `depends_on` and service `networks`: two lists are a union; otherwise both become mappings
/// (a listed name with the default settings) merged name by name.
fn names(base: Node, over: Node, path: &str) -> Node {
    if let (Kind::Seq(_), Kind::Seq(_)) = (&base.kind, &over.kind) {
        return unique(base, over, text_key);
    }
    let empty = if path.ends_with("depends_on") {
        Kind::Map(Vec::new())
    } else {
        Kind::Scalar(Scalar {
            text: String::new(),
            quoted: false,
        })
    };
    let as_map = |n: Node| match n.kind {
        Kind::Seq(items) => {
            let entries = items
                .into_iter()
                .filter_map(|it| {
                    let name = it.text()?.to_string();
                    let key = Key { name, pos: it.pos };
                    Some((key, Node::new(empty.clone(), it.pos)))
                })
                .collect();
            Node::new(Kind::Map(entries), n.pos)
        }
        _ => n,
    };
    let (base, over) = (as_map(base), as_map(over));
    match (&base.kind, &over.kind) {
        (Kind::Map(_), Kind::Map(_)) => maps(base, over, path),
        _ => over,
    }
}

/// `build: ./dir` as `build: {context: ./dir}`.
fn as_build(n: Node) -> Node {
    match &n.kind {
        Kind::Scalar(_) => {
            let pos = n.pos;
            let key = Key {
                name: "context".into(),
                pos,
            };
            Node::new(Kind::Map(vec![(key, n)]), pos)
        }
        _ => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(src: &str) -> Node {
        crate::yaml::parse(src)
            .expect("parses")
            .0
            .expect("a document")
    }

    /// The merged tree, as `docker-compose config`-like flow text of its scalars.
    fn show(n: &Node) -> String {
        match &n.kind {
            Kind::Scalar(s) => s.text.clone(),
            Kind::Seq(items) => format!(
                "[{}]",
                items.iter().map(show).collect::<Vec<_>>().join(", ")
            ),
            Kind::Map(e) => format!(
                "{{{}}}",
                e.iter()
                    .map(|(k, v)| format!("{}: {}", k.name, show(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    fn check(base: &str, over: &str, want: &str) {
        let merged = merge_service(tree(base), tree(over));
        assert_eq!(show(&merged), want, "{base} + {over}");
    }

    #[test]
    fn service_merge_rules() {
        let cases = [
            // Scalars are replaced, commands too (not appended).
            (
                "{image: a, command: [x, y]}",
                "{image: b, command: [z]}",
                "{image: b, command: [z]}",
            ),
            // Environment merges by key across both syntaxes.
            (
                "{environment: {A: '1', B: '2'}}",
                "{environment: {B: '3'}}",
                "{environment: {A: 1, B: 3}}",
            ),
            (
                "{environment: [A=1, B=2]}",
                "{environment: {B: '3', C: }}",
                "{environment: [A=1, B=3, C]}",
            ),
            // Ports: the same published port replaces, others append.
            (
                "{ports: ['80:80', '443:443']}",
                "{ports: ['80:80', '8080:80']}",
                "{ports: [80:80, 443:443, 8080:80]}",
            ),
            // Volumes by target path: the later source wins.
            (
                "{volumes: ['./a:/data', 'logs:/logs']}",
                "{volumes: ['./b:/data:ro']}",
                "{volumes: [./b:/data:ro, logs:/logs]}",
            ),
            // Secrets by target, short and long syntax alike.
            (
                "{secrets: [db]}",
                "{secrets: [{source: db2, target: db}, api]}",
                "{secrets: [{source: db2, target: db}, api]}",
            ),
            // Unique lists: union in order.
            (
                "{cap_add: [NET_ADMIN], dns: 8.8.8.8}",
                "{cap_add: [NET_ADMIN, SYS_TIME], dns: [1.1.1.1]}",
                "{cap_add: [NET_ADMIN, SYS_TIME], dns: [8.8.8.8, 1.1.1.1]}",
            ),
            // Healthcheck merges except its test, which is replaced.
            (
                "{healthcheck: {test: [CMD, a], interval: 5s}}",
                "{healthcheck: {test: [CMD, b]}}",
                "{healthcheck: {test: [CMD, b], interval: 5s}}",
            ),
            // Ulimits by name, each replaced whole.
            (
                "{ulimits: {nofile: {soft: 1, hard: 2}, nproc: 3}}",
                "{ulimits: {nofile: {soft: 5}}}",
                "{ulimits: {nofile: {soft: 5}, nproc: 3}}",
            ),
            // depends_on: a list and a mapping merge by service.
            (
                "{depends_on: [db]}",
                "{depends_on: {cache: {condition: service_healthy}}}",
                "{depends_on: {db: {}, cache: {condition: service_healthy}}}",
            ),
            // build: a directory and a mapping.
            (
                "{build: ./app}",
                "{build: {dockerfile: Other}}",
                "{build: {context: ./app, dockerfile: Other}}",
            ),
            // Null keeps, !reset removes, !override replaces.
            (
                "{image: a, command: x}",
                "{image: , command: !reset}",
                "{image: a}",
            ),
            (
                "{ports: ['80:80']}",
                "{ports: !override ['81:81']}",
                "{ports: [81:81]}",
            ),
            // Logging: another driver replaces, the same merges.
            (
                "{logging: {driver: a, options: {x: '1'}}}",
                "{logging: {driver: b}}",
                "{logging: {driver: b}}",
            ),
            (
                "{logging: {driver: a, options: {x: '1'}}}",
                "{logging: {options: {y: '2'}}}",
                "{logging: {driver: a, options: {x: 1, y: 2}}}",
            ),
        ];
        for (base, over, want) in cases {
            check(base, over, want);
        }
    }

    #[test]
    fn top_level_sections_merge_by_name() {
        let a = tree("services: {web: {image: a}}\nvolumes: {data: {driver: local}}\n");
        let b = tree("services: {web: {ports: ['80:80']}, db: {image: pg}}\nvolumes: {logs: {}}\n");
        assert_eq!(
            show(&merge_top(a, b)),
            "{services: {web: {image: a, ports: [80:80]}, db: {image: pg}}, volumes: {data: {driver: local}, logs: {}}}"
        );
    }
}
