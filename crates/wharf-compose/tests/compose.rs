//! Stack files composed the Compose way: `extends`, `include`, `profiles`, several files merged
//! in order (overrides). Merges and `extends` are compared with what `docker-compose config`
//! (v1.29.2, the Debian package) prints for the same files; the Compose specification's test
//! files are loaded where they lie (`/work/shared/compose-spec/testdata`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use wharf_compose::{ComposeErrors, Input, LoadOptions, Loaded, load_files, load_inputs};
use wharf_types::{Protocol, ServiceSpec};

/// A directory of stack files for one case.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(files: &[(&str, &str)]) -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().expect("a parent")).expect("mkdir");
            std::fs::write(&p, content).expect("write");
        }
        Project { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn load_with(&self, files: &[&str], opts: &LoadOptions) -> Result<Loaded, ComposeErrors> {
        let paths: Vec<PathBuf> = files.iter().map(|f| self.path(f)).collect();
        load_files(&paths, opts)
    }

    fn load(&self, files: &[&str]) -> Result<Loaded, ComposeErrors> {
        let opts = LoadOptions {
            stack_name: Some("t".into()),
            ..LoadOptions::default()
        };
        self.load_with(files, &opts)
    }

    fn ok(&self, files: &[&str]) -> Loaded {
        self.load(files)
            .unwrap_or_else(|e| panic!("expected {files:?} to load, got:\n{e}"))
    }

    /// The one error of loading `files`, checked to be located in `file` (relative to the
    /// project), to contain `msg` and to carry a hint.
    fn err(&self, files: &[&str], file: &str, msg: &str) -> String {
        let errs = match self.load(files) {
            Ok(_) => panic!("expected {files:?} to fail with {msg:?}"),
            Err(e) => e,
        };
        let want = self.path(file).display().to_string();
        let found = errs.0.iter().find(|e| e.message.contains(msg));
        let Some(e) = found else {
            panic!("no error containing {msg:?} in:\n{errs}");
        };
        let at = e.location.as_ref().expect("a located error");
        assert_eq!(at.file, want, "{e}");
        assert!(e.hint.is_some(), "{e} has no hint");
        e.to_string()
    }

    /// What `docker-compose -f … config` prints for `files`, as JSON.
    fn compose_v1(&self, files: &[&str]) -> Value {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(self.dir.path())
            .env("COMPOSE_PROJECT_NAME", "t")
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROFILES");
        for f in files {
            cmd.args(["-f", f]);
        }
        let out = cmd.arg("config").output().unwrap_or_else(|e| {
            panic!(
                "cannot run docker-compose ({e}): these tests compare with docker-compose v1; \
                 install it with `apt-get install docker-compose`"
            )
        });
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "docker-compose config failed for {files:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_saphyr::from_str(&stdout).expect("docker-compose prints YAML")
    }
}

// ---- The comparison with docker-compose v1 -------------------------------------------------

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `KEY: value` mappings (or `KEY=value` lists) as a map.
fn pairs(v: &Value) -> BTreeMap<String, String> {
    match v {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), text(v))).collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                let t = text(i);
                let (k, v) = t.split_once('=').unwrap_or((&t, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn words(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().map(text).collect(),
        Value::Null => Vec::new(),
        other => text(other).split_whitespace().map(str::to_string).collect(),
    }
}

/// `ip:published:target/protocol`, from either syntax.
fn port_of(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let f = |k: &str| m.get(k).map(text).unwrap_or_default();
            let proto = Some(f("protocol")).filter(|p| !p.is_empty());
            let proto = proto.unwrap_or_else(|| "tcp".into());
            format!(
                "{}:{}:{}/{proto}",
                f("host_ip"),
                f("published"),
                f("target")
            )
        }
        other => {
            let t = text(other);
            let (spec, proto) = t.split_once('/').unwrap_or((&t, "tcp"));
            let parts: Vec<&str> = spec.split(':').collect();
            let n = parts.len();
            let published = if n > 1 { parts[n - 2] } else { "" };
            let ip = if n > 2 {
                parts[..n - 2].join(":")
            } else {
                String::new()
            };
            format!("{ip}:{published}:{}/{proto}", parts[n - 1])
        }
    }
}

/// `source:target:ro|rw`.
fn volume_of(v: &Value) -> String {
    let t = text(v);
    let parts: Vec<&str> = t.split(':').collect();
    match parts.as_slice() {
        [target] => format!(":{target}:rw"),
        [s, target] => format!("{s}:{target}:rw"),
        [s, target, mode] => format!("{s}:{target}:{mode}"),
        _ => t,
    }
}

/// The fields both sides know, as docker-compose v1 prints them.
fn v1_service(v: &Value) -> BTreeMap<&'static str, Value> {
    let mut out = BTreeMap::new();
    let get = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    let set = |items: Vec<String>| {
        Value::from(
            items
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>(),
        )
    };
    out.insert("image", get("image"));
    out.insert("command", Value::from(words(&get("command"))));
    out.insert("entrypoint", Value::from(words(&get("entrypoint"))));
    out.insert(
        "environment",
        serde_json::to_value(pairs(&get("environment"))).unwrap(),
    );
    out.insert(
        "labels",
        serde_json::to_value(pairs(&get("labels"))).unwrap(),
    );
    let list = |k: &str| match get(k) {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    out.insert("ports", set(list("ports").iter().map(port_of).collect()));
    out.insert(
        "volumes",
        set(list("volumes").iter().map(volume_of).collect()),
    );
    out.insert("expose", set(list("expose").iter().map(text).collect()));
    let test = get("healthcheck")
        .get("test")
        .map(words)
        .unwrap_or_default();
    out.insert("healthcheck.test", Value::from(test));
    let secrets = list("secrets")
        .iter()
        .map(|s| {
            let source = s.get("source").map(text).unwrap_or_else(|| text(s));
            let target = s.get("target").map(text).unwrap_or_else(|| source.clone());
            format!("{source}:{target}")
        })
        .collect();
    out.insert("secrets", set(secrets));
    out
}

/// The same fields of a Wharf service.
fn wharf_service(s: &ServiceSpec) -> BTreeMap<&'static str, Value> {
    let mut out = BTreeMap::new();
    let set = |items: Vec<String>| {
        Value::from(
            items
                .into_iter()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>(),
        )
    };
    out.insert("image", s.image.clone().map_or(Value::Null, Value::from));
    out.insert(
        "command",
        Value::from(s.command.clone().unwrap_or_default()),
    );
    out.insert(
        "entrypoint",
        Value::from(s.entrypoint.clone().unwrap_or_default()),
    );
    out.insert("environment", serde_json::to_value(&s.environment).unwrap());
    out.insert("labels", serde_json::to_value(&s.labels).unwrap());
    let ports = s.ports.iter().map(|p| {
        let proto = match p.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        let published = p.published.map(|n| n.to_string()).unwrap_or_default();
        format!(
            "{}:{published}:{}/{proto}",
            p.host_ip.clone().unwrap_or_default(),
            p.target
        )
    });
    out.insert("ports", set(ports.collect()));
    let volumes = s.volumes.iter().map(|v| {
        let mode = if v.read_only { "ro" } else { "rw" };
        format!("{}:{}:{mode}", v.source, v.target)
    });
    out.insert("volumes", set(volumes.collect()));
    out.insert("expose", set(s.expose.clone()));
    let test = s
        .healthcheck
        .as_ref()
        .map(|h| h.test.clone())
        .unwrap_or_default();
    out.insert("healthcheck.test", Value::from(test));
    let secrets = s.secrets.iter().map(|f| {
        let target = f.target.strip_prefix("/run/secrets/").unwrap_or(&f.target);
        format!("{}:{target}", f.source)
    });
    out.insert("secrets", set(secrets.collect()));
    out
}

/// Load `files` with Wharf and with docker-compose v1 and compare every service's fields.
fn same_as_compose_v1(p: &Project, files: &[&str]) -> Loaded {
    let loaded = p.ok(files);
    let v1 = p.compose_v1(files);
    let v1_services = v1["services"].as_object().expect("services");
    let names: BTreeSet<&String> = v1_services.keys().collect();
    let ours: BTreeSet<&String> = loaded.spec.services.keys().collect();
    assert_eq!(ours, names, "the services of {files:?}");
    for (name, svc) in v1_services {
        let want = v1_service(svc);
        let got = wharf_service(&loaded.spec.services[name]);
        for (field, w) in &want {
            assert_eq!(
                &got[field], w,
                "services.{name}.{field} of {files:?}: Wharf (left) and docker-compose v1 (right) differ"
            );
        }
    }
    loaded
}

// ---- Several files and extends, against docker-compose v1 ------------------------------------

/// One file overriding another: ports (a published port collides, others append), environment
/// (a mapping and a list, merged by key), volumes (by target path), labels, command (replaced),
/// expose (a union).
#[test]
fn override_file_merges_ports_environment_volumes_and_labels_as_compose_v1() {
    let p = Project::new(&[
        (
            "compose.yaml",
            "services:\n  web:\n    image: nginx:1\n    command: [nginx, -g, daemon off;]\n    ports: ['8080:80', '443:443', '9000:9000/udp']\n    environment: {A: '1', B: '2'}\n    labels: {tier: web, team: a}\n    volumes: ['./html:/usr/share/nginx/html', 'logs:/var/log/nginx']\n    expose: ['80']\n  db:\n    image: postgres:16\n    environment: [POSTGRES_DB=app]\nvolumes:\n  logs: {}\n",
        ),
        (
            "compose.override.yaml",
            "services:\n  web:\n    image: nginx:2\n    command: nginx-debug\n    ports: ['8080:80', '127.0.0.1:8081:81']\n    environment: [B=3, C=4]\n    labels: [team=b]\n    volumes: ['./dev-html:/usr/share/nginx/html:ro']\n    expose: ['80', '81']\n  db:\n    environment: {POSTGRES_USER: me}\n",
        ),
    ]);
    let loaded = same_as_compose_v1(&p, &["compose.yaml", "compose.override.yaml"]);
    // What the comparison covers, spelled out: the override's source for the same target.
    let web = &loaded.spec.services["web"];
    let html = web
        .volumes
        .iter()
        .find(|v| v.target == "/usr/share/nginx/html");
    let html = html.expect("the html mount");
    assert_eq!(html.source, p.path("dev-html").display().to_string());
    assert!(html.read_only);
    assert_eq!(web.ports.len(), 4, "{:?}", web.ports);
}

/// Three files: the third overrides the merge of the first two, and its relative paths resolve
/// against the FIRST file's directory (Compose's rule), not its own.
#[test]
fn several_files_merge_in_order_with_paths_relative_to_the_first() {
    let p = Project::new(&[
        (
            "a.yml",
            "services:\n  app:\n    image: app:1\n    environment: {LEVEL: info}\n",
        ),
        (
            "env/b.yml",
            "services:\n  app:\n    environment: {LEVEL: debug, X: '1'}\n",
        ),
        (
            "env/c.yml",
            "services:\n  app:\n    image: app:3\n    volumes: ['./data:/data']\n",
        ),
    ]);
    let loaded = same_as_compose_v1(&p, &["a.yml", "env/b.yml", "env/c.yml"]);
    let app = &loaded.spec.services["app"];
    assert_eq!(app.image.as_deref(), Some("app:3"));
    assert_eq!(app.environment["LEVEL"], "debug");
    assert_eq!(app.volumes[0].source, p.path("data").display().to_string());
}

/// An error in a later file is located in that file; a missing later file is named.
#[test]
fn errors_in_a_later_file_name_that_file() {
    let p = Project::new(&[
        ("compose.yaml", "services:\n  web:\n    image: nginx\n"),
        (
            "over/dev.yml",
            "services:\n  web:\n    ports: ['99999:80']\n",
        ),
        ("over/bad.yml", "services:\n  web:\n    image: [\n"),
    ]);
    let e = p.err(&["compose.yaml", "over/dev.yml"], "over/dev.yml", "ports");
    assert!(e.contains("over/dev.yml:3:"), "{e}");
    p.err(
        &["compose.yaml", "over/bad.yml"],
        "over/bad.yml",
        "invalid YAML",
    );
    let errs = p
        .load(&["compose.yaml", "over/nope.yml"])
        .expect_err("missing");
    assert!(
        errs.to_string().contains("over/nope.yml: not found"),
        "{errs}"
    );
}

/// `extends` of a service in another file: its relative paths (env_file, bind sources, secret
/// files) resolve against THAT file's directory; command and healthcheck test are replaced,
/// environment and labels merged by key, volumes by target.
#[test]
fn extends_across_files_resolves_paths_in_the_extended_files_directory() {
    let p = Project::new(&[
        ("common/extra.env", "FROM_FILE=common\n"),
        ("common/s1.txt", "secret"),
        ("s1.txt", "secret"),
        (
            "common/base.yml",
            "services:\n  base:\n    image: nginx\n    env_file: ./extra.env\n    volumes: ['./conf:/etc/nginx/conf.d', 'cache:/cache']\n    command: [a, b]\n    healthcheck: {test: [CMD, 'true'], interval: 5s}\n    labels: {a: '1'}\n    environment: {A: base, B: base}\n    ports: ['80:80']\n",
        ),
        (
            "compose.yaml",
            "services:\n  web:\n    extends: {file: common/base.yml, service: base}\n    volumes: ['./site:/etc/nginx/conf.d:ro']\n    command: c\n    healthcheck: {test: [CMD, 'false']}\n    labels: [b=2]\n    environment: {B: web}\n    ports: ['81:81']\n    secrets: [s1]\nvolumes: {cache: {}}\nsecrets: {s1: {file: ./s1.txt}}\n",
        ),
    ]);
    let loaded = same_as_compose_v1(&p, &["compose.yaml"]);
    let web = &loaded.spec.services["web"];
    assert_eq!(
        web.environment["FROM_FILE"], "common",
        "env_file read from common/"
    );
    assert_eq!(web.environment["A"], "base");
    assert_eq!(web.environment["B"], "web");
    let conf = web.volumes.iter().find(|v| v.target == "/etc/nginx/conf.d");
    assert_eq!(
        conf.expect("conf").source,
        p.path("site").display().to_string()
    );
}

/// A bind source only the extended file names resolves against its directory, through two
/// levels of files in different directories (the spec's `extends/withdir`).
#[test]
fn nested_extends_resolve_each_file_against_its_own_directory() {
    let p = Project::new(&[
        (
            "dir/sub/base.yml",
            "services:\n  test:\n    image: hello\n    volumes: ['./data:/data']\n",
        ),
        (
            "dir/mid.yml",
            "services:\n  test:\n    extends: {file: sub/base.yml, service: test}\n    environment: {MID: '1'}\n",
        ),
        (
            "compose.yaml",
            "services:\n  test:\n    extends: {file: dir/mid.yml, service: test}\n",
        ),
    ]);
    let loaded = same_as_compose_v1(&p, &["compose.yaml"]);
    let test = &loaded.spec.services["test"];
    assert_eq!(
        test.volumes[0].source,
        p.path("dir/sub/data").display().to_string()
    );
    assert_eq!(test.environment["MID"], "1");
}

/// `extends` within the file, in both syntaxes, chained.
#[test]
fn extends_in_the_same_file_as_compose_v1() {
    let p = Project::new(&[(
        "compose.yaml",
        "services:\n  base:\n    image: app:1\n    environment: {A: '1'}\n    ports: ['80:80']\n  web:\n    extends: base\n    environment: {B: '2'}\n  worker:\n    extends: {service: web}\n    command: work\n    ports: ['80:80', '90:90']\n",
    )]);
    let loaded = same_as_compose_v1(&p, &["compose.yaml"]);
    let worker = &loaded.spec.services["worker"];
    assert_eq!(worker.environment.len(), 2);
    assert_eq!(worker.ports.len(), 2);
}

// ---- Errors of extends ------------------------------------------------------------------

#[test]
fn extends_cycle_is_an_error_naming_the_chain() {
    let p = Project::new(&[(
        "compose.yaml",
        "services:\n  a:\n    image: x\n    extends: b\n  b:\n    extends: c\n  c:\n    extends: {service: a}\n",
    )]);
    let e = p.err(&["compose.yaml"], "compose.yaml", "extends cycle");
    assert!(e.contains("a -> b -> c -> a"), "{e}");

    // Across files, the chain names the other file.
    let p = Project::new(&[
        (
            "compose.yaml",
            "services:\n  web:\n    extends: {file: other.yml, service: base}\n",
        ),
        (
            "other.yml",
            "services:\n  base:\n    extends: {file: compose.yaml, service: web}\n",
        ),
    ]);
    let e = p.err(&["compose.yaml"], "other.yml", "extends cycle");
    assert!(e.contains("other.yml"), "{e}");
}

/// Missing services and files, remote files, files outside the stack's directory.
#[test]
fn extends_errors_are_located_with_hints() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "services:\n  web:\n    extends: nope\n",
            "compose.yaml",
            "service \"nope\" not found",
        ),
        (
            "services:\n  web:\n    extends: {file: missing.yml, service: x}\n",
            "compose.yaml",
            "cannot read",
        ),
        (
            "services:\n  web:\n    extends: {file: 'https://example.com/c.yml', service: x}\n",
            "compose.yaml",
            "remote file \"https://example.com/c.yml\" is not supported",
        ),
        (
            "services:\n  web:\n    extends: {file: ../outside.yml, service: x}\n",
            "compose.yaml",
            "is outside the stack file's directory",
        ),
        (
            "services:\n  web:\n    extends: [a]\n",
            "compose.yaml",
            "expected a service name or a mapping",
        ),
        (
            "services:\n  web:\n    extends: {file: other.yml}\n",
            "compose.yaml",
            "missing service",
        ),
    ];
    for (src, file, msg) in cases {
        let p = Project::new(&[
            ("proj/compose.yaml", src),
            ("outside.yml", "services: {x: {image: a}}\n"),
        ]);
        p.err(&["proj/compose.yaml"], &format!("proj/{file}"), msg);
    }
}

/// An error in a value that came from an extended file is located in that file.
#[test]
fn errors_in_an_extended_file_name_that_file() {
    let p = Project::new(&[
        (
            "base.yml",
            "services:\n  base:\n    image: x\n    ports: ['not-a-port']\n",
        ),
        (
            "compose.yaml",
            "services:\n  web:\n    extends: {file: base.yml, service: base}\n",
        ),
    ]);
    let e = p.err(&["compose.yaml"], "base.yml", "ports");
    assert!(e.contains("base.yml:4:"), "{e}");
}

/// `!reset` removes an inherited value, `!override` replaces it whole.
#[test]
fn reset_and_override_tags() {
    let p = Project::new(&[(
        "compose.yaml",
        "services:\n  init:\n    image: alpine\n    command: sleep infinity\n    ports: ['80:80']\n  base:\n    extends: {service: init}\n    command: !reset\n    ports: !override ['81:81']\n",
    )]);
    let loaded = p.ok(&["compose.yaml"]);
    let base = &loaded.spec.services["base"];
    assert_eq!(base.command, None);
    assert_eq!(base.ports.len(), 1);
    assert_eq!(base.ports[0].target, 81);
}

// ---- include -------------------------------------------------------------------------------

/// An included file's relative paths resolve against its project directory, its `.env`
/// interpolates it, and an error in it names it.
#[test]
fn include_resolves_against_its_own_project_directory() {
    let p = Project::new(&[
        ("db/.env", "DB_TAG=16\n"),
        ("db/init.sql", "select 1;"),
        (
            "db/compose.yaml",
            "services:\n  db:\n    image: postgres:${DB_TAG}\n    volumes: ['./init.sql:/docker-entrypoint-initdb.d/init.sql']\n",
        ),
        ("shared/cfg/app.env", "MODE=shared\n"),
        (
            "lib/app.yml",
            "services:\n  lib:\n    image: lib\n    env_file: ./app.env\n",
        ),
        (
            "compose.yaml",
            "include:\n  - db/compose.yaml\n  - path: lib/app.yml\n    project_directory: shared/cfg\nservices:\n  web:\n    image: web\n    depends_on: [db]\n",
        ),
    ]);
    let loaded = p.ok(&["compose.yaml"]);
    let db = &loaded.spec.services["db"];
    assert_eq!(
        db.image.as_deref(),
        Some("postgres:16"),
        "db/.env interpolates db/compose.yaml"
    );
    assert_eq!(
        db.volumes[0].source,
        p.path("db/init.sql").display().to_string()
    );
    let lib = &loaded.spec.services["lib"];
    assert_eq!(
        lib.environment["MODE"], "shared",
        "env_file relative to project_directory"
    );
    assert!(loaded.spec.services.contains_key("web"));

    let p = Project::new(&[
        (
            "inc/compose.yaml",
            "services:\n  x:\n    image: a\n    imgae: b\n",
        ),
        (
            "compose.yaml",
            "include: [inc/compose.yaml]\nservices:\n  web: {image: w}\n",
        ),
    ]);
    let e = p.err(
        &["compose.yaml"],
        "inc/compose.yaml",
        "unknown key \"imgae\"",
    );
    assert!(e.contains("inc/compose.yaml:4:5"), "{e}");
}

#[test]
fn include_errors_name_the_files() {
    // A cycle through two files.
    let p = Project::new(&[
        (
            "compose.yaml",
            "include: [a.yml]\nservices: {web: {image: w}}\n",
        ),
        (
            "a.yml",
            "include: [compose.yaml]\nservices: {a: {image: a}}\n",
        ),
    ]);
    let e = p.err(&["compose.yaml"], "a.yml", "include cycle");
    assert!(
        e.contains("compose.yaml -> ") && e.contains("a.yml -> "),
        "{e}"
    );

    // The same service in the includer and the included file.
    let p = Project::new(&[
        (
            "compose.yaml",
            "include: [a.yml]\nservices:\n  web: {image: w}\n",
        ),
        ("a.yml", "services:\n  web: {image: other}\n"),
    ]);
    let e = p.err(
        &["compose.yaml"],
        "compose.yaml",
        "services.web is defined both here and in the included file",
    );
    assert!(e.contains("a.yml:2:3"), "{e}");

    // Volumes too.
    let p = Project::new(&[
        (
            "compose.yaml",
            "include: [a.yml]\nservices:\n  web: {image: w}\nvolumes:\n  data: {}\n",
        ),
        (
            "a.yml",
            "services:\n  a: {image: a}\nvolumes:\n  data: {}\n",
        ),
    ]);
    p.err(
        &["compose.yaml"],
        "compose.yaml",
        "volumes.data is defined both here",
    );

    // A missing file, named with its path.
    let p = Project::new(&[(
        "compose.yaml",
        "include:\n  - path: nope/compose.yaml\nservices: {web: {image: w}}\n",
    )]);
    let e = p.err(&["compose.yaml"], "compose.yaml", "cannot read");
    assert!(e.contains("nope/compose.yaml: not found"), "{e}");

    // Outside the stack's directory, refused unless allow_outside.
    let p = Project::new(&[
        (
            "proj/compose.yaml",
            "include: [../other/compose.yaml]\nservices: {web: {image: w}}\n",
        ),
        ("other/compose.yaml", "services: {o: {image: o}}\n"),
    ]);
    p.err(
        &["proj/compose.yaml"],
        "proj/compose.yaml",
        "is outside the stack file's directory",
    );
    let opts = LoadOptions {
        stack_name: Some("t".into()),
        allow_outside: true,
        ..LoadOptions::default()
    };
    let loaded = p.load_with(&["proj/compose.yaml"], &opts).expect("allowed");
    assert!(loaded.spec.services.contains_key("o"));
}

// ---- profiles ------------------------------------------------------------------------------

const PROFILED: &str = "services:\n  web:\n    image: web\n  debug:\n    image: busybox\n    profiles: [debug]\n  test:\n    image: tester\n    profiles: [test, ci]\n";

/// Which services are deployed for each choice of profiles (options or COMPOSE_PROFILES).
#[test]
fn profiles_choose_the_services() {
    let p = Project::new(&[("compose.yaml", PROFILED)]);
    let cases: &[(&[&str], Option<&str>, &[&str])] = &[
        (&[], None, &["web"]),
        (&["debug"], None, &["debug", "web"]),
        (&["ci"], None, &["test", "web"]),
        (&["*"], None, &["debug", "test", "web"]),
        (&[], Some("debug,test"), &["debug", "test", "web"]),
        // The option wins over the variable, as `--profile` over COMPOSE_PROFILES.
        (&["ci"], Some("debug"), &["test", "web"]),
        (&["nothing"], None, &["web"]),
    ];
    for (profiles, var, want) in cases {
        let mut env = BTreeMap::new();
        if let Some(v) = var {
            env.insert("COMPOSE_PROFILES".to_string(), v.to_string());
        }
        let opts = LoadOptions {
            stack_name: Some("t".into()),
            profiles: profiles.iter().map(|s| s.to_string()).collect(),
            env,
            ..LoadOptions::default()
        };
        let loaded = p.load_with(&["compose.yaml"], &opts).expect("loads");
        let names: Vec<&str> = loaded.spec.services.keys().map(String::as_str).collect();
        assert_eq!(
            &names, want,
            "profiles {profiles:?}, COMPOSE_PROFILES {var:?}"
        );
        assert!(
            loaded
                .warnings
                .iter()
                .all(|w| !w.message.contains("profiles")),
            "{:?}",
            loaded.warnings
        );
    }
}

/// COMPOSE_PROFILES may come from `.env` too, as in Compose.
#[test]
fn compose_profiles_from_dotenv() {
    let p = Project::new(&[
        ("compose.yaml", PROFILED),
        (".env", "COMPOSE_PROFILES=debug\n"),
    ]);
    let loaded = p.ok(&["compose.yaml"]);
    assert!(loaded.spec.services.contains_key("debug"));
}

/// A dependency on a service that is not enabled is an error, unless it is `required: false`.
#[test]
fn depends_on_a_disabled_service() {
    let p = Project::new(&[(
        "compose.yaml",
        "services:\n  web:\n    image: web\n    depends_on: [debug]\n  debug:\n    image: busybox\n    profiles: [debug]\n",
    )]);
    let e = p.err(
        &["compose.yaml"],
        "compose.yaml",
        "service \"debug\" is not enabled",
    );
    assert!(e.contains("compose.yaml:4:18"), "{e}");
    let p = Project::new(&[(
        "compose.yaml",
        "services:\n  web:\n    image: web\n    depends_on:\n      debug: {condition: service_started, required: false}\n  debug:\n    image: busybox\n    profiles: [debug]\n",
    )]);
    let loaded = p.ok(&["compose.yaml"]);
    assert!(loaded.spec.services["web"].depends_on.is_empty());
}

// ---- Standard input, budgets, warnings -------------------------------------------------------

/// Text from standard input: relative paths against the directory given; an override file
/// after it still merges.
#[test]
fn text_input_and_a_file_after_it() {
    let p = Project::new(&[("over.yml", "services:\n  web:\n    environment: {B: '2'}\n")]);
    let inputs = [
        Input::Text {
            label: "-".into(),
            text: "services:\n  web:\n    image: w\n    volumes: ['./d:/d']\n".into(),
            dir: p.dir.path().to_path_buf(),
        },
        Input::File(p.path("over.yml")),
    ];
    let opts = LoadOptions {
        stack_name: Some("t".into()),
        ..LoadOptions::default()
    };
    let loaded = load_inputs(&inputs, &opts).expect("loads");
    let web = &loaded.spec.services["web"];
    assert_eq!(web.environment["B"], "2");
    assert_eq!(web.volumes[0].source, p.path("d").display().to_string());
}

/// More than 64 files make up no stack: a chain of 70 extends stops at the 64th file.
#[test]
fn the_number_of_files_is_bounded() {
    let mut files: Vec<(String, String)> = (1..70)
        .map(|i| {
            (
                format!("f{i}.yml"),
                format!(
                    "services:\n  s:\n    extends: {{file: f{}.yml, service: s}}\n",
                    i + 1
                ),
            )
        })
        .collect();
    files.push(("f70.yml".into(), "services:\n  s: {image: x}\n".into()));
    files.push((
        "compose.yaml".into(),
        "services:\n  s:\n    extends: {file: f1.yml, service: s}\n".into(),
    ));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let p = Project::new(&refs);
    let errs = p.load(&["compose.yaml"]).expect_err("too many files");
    assert!(errs.to_string().contains("more than 64 files"), "{errs}");
}

/// Composition leaves no warning about the keys it handled.
#[test]
fn no_warning_about_extends_include_or_profiles() {
    let p = Project::new(&[
        ("inc.yml", "services:\n  inc: {image: i}\n"),
        (
            "compose.yaml",
            "include: [inc.yml]\nservices:\n  base: {image: b}\n  web:\n    extends: base\n    profiles: [web]\n",
        ),
    ]);
    let opts = LoadOptions {
        stack_name: Some("t".into()),
        profiles: vec!["web".into()],
        ..LoadOptions::default()
    };
    let loaded = p.load_with(&["compose.yaml"], &opts).expect("loads");
    for w in &loaded.warnings {
        assert!(
            !["extends", "include", "profiles"]
                .iter()
                .any(|k| w.message.contains(k)),
            "{w}"
        );
    }
    assert_eq!(loaded.spec.services.len(), 3);
}

// ---- The Compose specification's test files ---------------------------------------------------

/// What loading a file of the specification's test data does.
enum Outcome {
    Ok,
    /// An error whose text contains this.
    Err(&'static str),
}

/// Every entry point of the compose-spec test data, with what it is meant to do here. Files only
/// ever extended or included by others are loaded through them.
/// Variables a file needs.
type Env = &'static [(&'static str, &'static str)];

const SPEC_FILES: &[(&str, Outcome, Env)] = &[
    // Wharf does not support some keys (warnings) but refuses none that Compose allows; its
    // env_file and build context do not exist next to it.
    (
        "full-example.yml",
        Outcome::Err("example1.env: not found"),
        &[],
    ),
    ("compose-test-extends.yaml", Outcome::Ok, &[]),
    (
        "compose-test-extends-with-context-url.yaml",
        Outcome::Err(
            "remote build context \"https://github.com/docker/compose.git\" is not supported",
        ),
        &[],
    ),
    ("compose-include.yaml", Outcome::Ok, &[]),
    (
        "compose-include-cycle.yaml",
        Outcome::Err("include cycle: "),
        &[],
    ),
    (
        "compose-depends-on-cycle.yaml",
        Outcome::Err("dependency cycle: "),
        &[],
    ),
    (
        "compose-depends-on-profile-no-cycle.yaml",
        Outcome::Err("dependency cycle: "),
        &[],
    ),
    (
        "compose-depends-on-self.yaml",
        Outcome::Err("dependency cycle: service1 -> service1"),
        &[],
    ),
    // `build: ./Dockerfile` is a file, not a directory.
    (
        "compose-test-with-version.yaml",
        Outcome::Err("is not a directory"),
        &[],
    ),
    ("empty.yaml", Outcome::Err("the stack file is empty"), &[]),
    ("combined/compose.yaml", Outcome::Ok, &[]),
    // `nil:` is a service without a body.
    ("extends/base.yaml", Outcome::Err("services.nil"), &[]),
    // Extends with `volumes_from` and `ipc: service:…`, which Wharf refuses saying why (the
    // instances of the other service may run on other nodes).
    (
        "extends/depends_on.yaml",
        Outcome::Err("volumes_from is not supported by Wharf"),
        &[],
    ),
    (
        "extends/interpolated.yaml",
        Outcome::Ok,
        &[("SOURCE", "/tmp")],
    ),
    ("extends/nested.yaml", Outcome::Ok, &[]),
    ("extends/ports.yaml", Outcome::Ok, &[]),
    ("extends/reset.yaml", Outcome::Ok, &[]),
    ("extends/sibling.yaml", Outcome::Ok, &[]),
    ("extends/withdir/compose.yaml", Outcome::Ok, &[]),
    ("include/compose.yaml", Outcome::Ok, &[]),
    // Its project_directory (../subdir) is outside include/.
    (
        "include/project-directory.yaml",
        Outcome::Err("is outside the stack file's directory"),
        &[],
    ),
    ("remote/compose.yaml", Outcome::Ok, &[]),
    (
        "remote/cycle/compose.yaml",
        Outcome::Err("remote file \"remote:cycle/compose-cycle.yaml\" is not supported"),
        &[],
    ),
    (
        "remote/nested/compose.yaml",
        Outcome::Err("remote file \"remote:nested/compose-nested.yaml\" is not supported"),
        &[],
    ),
    (
        "subdir/compose-test-extends-imported.yaml",
        Outcome::Ok,
        &[],
    ),
];

fn spec_testdata() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/compose-spec/testdata");
    assert!(
        dir.join("full-example.yml").is_file(),
        "the Compose specification's test data is not at {}",
        dir.display()
    );
    dir
}

#[test]
fn compose_spec_testdata_loads_or_fails_as_meant() {
    let dir = spec_testdata();
    let mut failures = Vec::new();
    for (file, outcome, env) in SPEC_FILES {
        let opts = LoadOptions {
            stack_name: Some("t".into()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..LoadOptions::default()
        };
        let r = load_files(&[dir.join(file)], &opts);
        match (outcome, r) {
            (Outcome::Ok, Ok(loaded)) => {
                for w in &loaded.warnings {
                    if ["extends", "include", "profiles"]
                        .iter()
                        .any(|k| w.message.contains(k))
                    {
                        failures.push(format!("{file}: warning about composition: {w}"));
                    }
                    // A key ignored with a warning must be one that changes nothing that runs.
                    if let Some((path, _)) = w.message.split_once(" is ignored: ") {
                        let key = path.rsplit('.').next().unwrap_or(path);
                        let warned = wharf_compose::SECTIONS.iter().any(|s| {
                            matches!(s.support(key), Some(wharf_compose::Support::Warned { .. }))
                        });
                        if !warned {
                            failures
                                .push(format!("{file}: ignored a key not listed as warned: {w}"));
                        }
                    }
                }
            }
            (Outcome::Ok, Err(e)) => failures.push(format!("{file}: expected to load, got:\n{e}")),
            (Outcome::Err(want), Ok(_)) => failures.push(format!(
                "{file}: expected an error containing {want:?}, it loaded"
            )),
            (Outcome::Err(want), Err(e)) => {
                let all = e.to_string();
                if !all.contains(want) {
                    failures.push(format!(
                        "{file}: expected an error containing {want:?}, got:\n{all}"
                    ));
                } else if e.0.iter().any(|e| e.hint.is_none()) {
                    failures.push(format!("{file}: an error without a hint:\n{all}"));
                }
            }
        }
    }
    // Every YAML file of the test data is in the table, so a new one is looked at.
    let mut listed: BTreeSet<String> = SPEC_FILES.iter().map(|(f, ..)| f.to_string()).collect();
    for only_through_others in [
        "combined/dir/extended.yaml",
        "combined/dir/included.yaml",
        "extends/withdir/dir/base.yaml",
        "extends/withdir/dir/compose.yaml",
        "include/included.yaml",
        "include/dir/compose.yaml",
        "compose-test-extends-with-context-url-imported.yaml",
        "remote/cycle/compose-cycle.yaml",
        "remote/nested/compose-nested.yaml",
    ] {
        listed.insert(only_through_others.to_string());
    }
    for f in yaml_files(&dir, &dir) {
        if !listed.contains(&f) {
            failures.push(format!(
                "{f}: not in SPEC_FILES; decide what it is meant to do"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Where the specification's files resolve relative paths: `include/project-directory.yaml`
/// (once files outside its directory are allowed) against `../subdir`, `combined/` and
/// `compose-test-extends.yaml` against the extended file's directory.
#[test]
fn compose_spec_include_with_project_directory() {
    let dir = spec_testdata();
    let opts = LoadOptions {
        stack_name: Some("t".into()),
        allow_outside: true,
        ..LoadOptions::default()
    };
    let loaded = load_files(&[dir.join("include/project-directory.yaml")], &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    let svc = &loaded.spec.services["service"];
    let subdir = std::fs::canonicalize(dir.join("subdir")).expect("subdir");
    let source = std::fs::canonicalize(&svc.volumes[0].source).expect("the bind source exists");
    assert_eq!(source, subdir.join("compose-test-extends-imported.yaml"));
    assert_eq!(
        svc.environment["SOURCE"], "extends",
        "extra.env read from ../subdir"
    );

    // combined/: an included file extends a file beside it whose `build: .` is that directory.
    let loaded = load_files(&[dir.join("combined/compose.yaml")], &opts).expect("loads");
    let build = loaded.spec.services["service"]
        .build
        .as_ref()
        .expect("a build");
    let context = std::fs::canonicalize(&build.context).expect("the context exists");
    assert_eq!(
        context,
        std::fs::canonicalize(dir.join("combined/dir")).unwrap()
    );

    // And compose-test-extends.yaml: the imported service's env_file is relative to subdir/.
    let loaded = load_files(&[dir.join("compose-test-extends.yaml")], &opts).expect("loads");
    assert_eq!(
        loaded.spec.services["importer"].environment["SOURCE"],
        "extends"
    );
}

fn yaml_files(root: &Path, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(yaml_files(root, &p));
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            let rel = p.strip_prefix(root).expect("under root");
            out.push(rel.display().to_string());
        }
    }
    out
}

/// The specification's full example, with the files it names made up in a copy of its
/// directory: every key it uses is supported, warned about only where nothing that runs changes,
/// or refused with why and what to do instead; none is unknown and none dropped silently.
#[test]
fn the_full_example_is_refused_only_where_wharf_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::copy(
        spec_testdata().join("full-example.yml"),
        dir.join("compose.yaml"),
    )
    .unwrap();
    for f in [
        "example1.env",
        "example2.env",
        "example1.label",
        "example2.label",
        "config_data",
        "secret_data",
    ] {
        std::fs::write(dir.join(f), "A=1\n").unwrap();
    }
    for d in ["dir", "bar", "static", "opt"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("dir/Dockerfile"), "FROM scratch\n").unwrap();
    let opts = LoadOptions {
        stack_name: Some("t".into()),
        ..LoadOptions::default()
    };
    let errors = match load_files(&[dir.join("compose.yaml")], &opts) {
        Ok(loaded) => panic!("loaded, with warnings {:?}", loaded.warnings),
        Err(e) => e.0,
    };
    let mut failures = Vec::new();
    for e in &errors {
        if e.message.contains("unknown key") || e.hint.is_none() {
            failures.push(e.to_string());
        }
    }
    // The refusals are there, each saying why.
    let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
    for refused in [
        "services.foo.build.ssh",
        "services.foo.links",
        "services.foo.pid",
    ] {
        if !all
            .iter()
            .any(|e| e.contains(&format!("{refused} is not supported by Wharf: ")))
        {
            failures.push(format!("no refusal of {refused}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A stack file reached through a symbolic link to its directory: a missing file it names is
/// reported missing, not outside the stack's directory.
#[test]
fn a_missing_file_under_a_linked_directory_is_missing_not_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(
        real.join("compose.yaml"),
        "services:\n  web:\n    image: nginx\n    env_file: ./missing.env\n",
    )
    .unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let opts = LoadOptions {
        stack_name: Some("t".into()),
        ..LoadOptions::default()
    };
    let e = load_files(&[link.join("compose.yaml")], &opts)
        .expect_err("the env file is missing")
        .to_string();
    assert!(e.contains("not found") && !e.contains("outside"), "{e}");
}
