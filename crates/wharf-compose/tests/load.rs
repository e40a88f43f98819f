//! End-to-end tests of `wharf-compose`: stack files in, `StackSpec`s or located errors out.

#[path = "../src/testing.rs"]
mod testing;

use std::collections::BTreeMap;

use testing::cert_pair;

use wharf_compose::{
    ComposeErrors, LoadOptions, Loaded, load_file, load_str, validate_spec, validate_stack_name,
};
use wharf_types::*;

/// Variables of the caller's environment.
type Env<'a> = &'a [(&'a str, &'a str)];

/// One input: the stack file, the caller's environment and extra files next to it.
#[derive(Default)]
struct Case<'a> {
    src: &'a str,
    env: &'a [(&'a str, &'a str)],
    files: &'a [(&'a str, &'a str)],
}

impl<'a> Case<'a> {
    /// The stack file alone: no environment, no other files.
    fn src(src: &'a str) -> Self {
        Case {
            src,
            ..Case::default()
        }
    }
}

/// The single entry point of these tests: write the files into a fresh directory and load
/// `stack.yml` from it (label "stack.yml"). Returns the directory too, for path assertions.
fn check(case: Case<'_>) -> (Result<Loaded, ComposeErrors>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, content) in case.files {
        let p = dir.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, content).expect("write");
    }
    let opts = LoadOptions {
        stack_name: None,
        env: case
            .env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        allow_outside: false,
        profiles: Vec::new(),
    };
    (load_str(case.src, "stack.yml", dir.path(), &opts), dir)
}

fn ok(case: Case<'_>) -> (Loaded, tempfile::TempDir) {
    let (r, d) = check(case);
    match r {
        Ok(l) => (l, d),
        Err(e) => panic!("expected success, got:\n{e}"),
    }
}

/// Assert that loading fails with an error at `stack.yml:{at}` whose message contains `msg`
/// and that carries a hint.
fn err(case: Case<'_>, at: &str, msg: &str) {
    let src = case.src;
    let (r, _d) = check(case);
    let errs = match r {
        Ok(_) => panic!("expected an error at {at} for:\n{src}"),
        Err(e) => e,
    };
    let want = format!("stack.yml:{at}: ");
    let found = errs
        .0
        .iter()
        .find(|e| e.to_string().starts_with(&want) && e.message.contains(msg));
    match found {
        Some(e) => {
            let hint = e.hint.as_deref().unwrap_or_default();
            assert!(!hint.is_empty(), "no hint on {e}");
            assert_eq!(
                e.message,
                e.message.trim_end_matches('.'),
                "trailing period: {e}"
            );
        }
        None => panic!("no error at {at} containing {msg:?}; got:\n{errs}"),
    }
}

fn hint_of(case: Case<'_>, msg: &str) -> String {
    let (r, _d) = check(case);
    let errs = r.expect_err("an error");
    errs.0
        .iter()
        .find(|e| e.message.contains(msg))
        .and_then(|e| e.hint.clone())
        .unwrap_or_else(|| panic!("no error containing {msg:?} in:\n{errs}"))
}

const FULL: &str = r#"version: "3.9"
name: shop
x-common: &common
  restart: unless-stopped
services:
  web:
    <<: *common
    image: nginx:${NGINX_TAG:-1.27}
    command: nginx -g 'daemon off;'
    entrypoint: ["/docker-entrypoint.sh"]
    environment:
      MODE: production
      WORKERS: 4
      DEBUG: false
      EMPTY:
      FROM_ENV:
    env_file:
      - ./web.env
      - path: ./missing.env
        required: false
    ports:
      - "80"
      - "8080:80"
      - "127.0.0.1:8443:443"
      - "5353:53/udp"
      - "9000-9001:9000-9001"
      - target: 3000
        published: "3001"
        host_ip: 0.0.0.0
        protocol: tcp
        mode: host
      - 7000
    expose: [3000, "4000/udp"]
    labels:
      com.example.team: shop
      flag:
    volumes:
      - data:/var/lib/data
      - data:/ro:ro
      - ./conf:/etc/nginx/conf.d:ro
      - /var/log:/var/log/nginx
      - /cache
      - type: tmpfs
        target: /tmp
      - type: bind
        source: ./static
        target: /usr/share/nginx/html
        read_only: true
      - type: volume
        source: data
        target: /data2
    healthcheck:
      test: ["CMD", "curl", "-f", "http://localhost/"]
      interval: 1m30s
      timeout: 10s
      retries: 5
      start_period: 500ms
    depends_on:
      api:
        condition: service_healthy
        required: true
        restart: true
      worker:
        condition: service_completed_successfully
    stop_grace_period: 1m30s
    stop_signal: SIGQUIT
    user: "101"
    working_dir: /srv
    hostname: web1
    init: true
    deploy:
      mode: replicated
      replicas: 3
      resources:
        limits: {cpus: "0.5", memory: 512M}
        reservations: {cpus: 0.25, memory: 1024k}
      restart_policy:
        condition: on-failure
        delay: 5s
        max_attempts: 3
        window: 2m
      update_config:
        parallelism: 2
        delay: 10s
        order: start-first
        failure_action: rollback
        monitor: 30s
        max_failure_ratio: 0.1
      rollback_config:
        parallelism: 1
        failure_action: continue
      placement:
        constraints: ["node.labels.zone == a"]
        preferences:
          - spread: node.labels.zone
        max_replicas_per_node: 2
      labels:
        - traefik.enable=true
    x-custom: ignored
  api:
    build:
      context: ./api
      dockerfile: Dockerfile.prod
      args:
        VERSION: "2"
    restart: "on-failure:5"
    healthcheck:
      test: curl -f http://localhost/health
    depends_on: [worker]
  worker:
    build: ./worker
    image: shop/worker:dev
    restart: "no"
    healthcheck:
      disable: true
    deploy:
      mode: global
  agent:
    x-wharf:
      driver: process
    command: ["/usr/bin/agent", "--verbose"]
    environment:
      - A=b
      - FROM_ENV
      - NOT_SET
volumes:
  data:
  logs:
    driver: local
    driver_opts: {type: none}
    labels: {tier: backend}
  shared:
    external: true
networks:
  default:
  front:
    driver: bridge
  outside:
    external: true
x-anything: {a: 1}
"#;

fn full_case() -> Case<'static> {
    Case {
        src: FULL,
        env: &[
            ("FROM_ENV", "env-value"),
            ("MODE", "ignored-because-literal"),
        ],
        files: &[
            ("web.env", "MODE=from-file\nFILE_ONLY=yes\n# comment\n"),
            ("api/Dockerfile.prod", "FROM scratch\n"),
            ("api/main.go", "package main\n"),
            ("worker/Dockerfile", "FROM scratch\n"),
        ],
    }
}

#[test]
fn full_stack_file_maps_every_supported_key() {
    let (loaded, dir) = ok(full_case());
    let base = std::path::absolute(dir.path()).expect("absolute");
    let at = |p: &str| base.join(p).to_string_lossy().into_owned();
    let spec = &loaded.spec;
    assert_eq!(spec.name, "shop");
    assert_eq!(
        spec.services.keys().collect::<Vec<_>>(),
        ["agent", "api", "web", "worker"]
    );

    let web = &spec.services["web"];
    assert_eq!(web.driver, DriverKind::Docker);
    assert_eq!(web.image.as_deref(), Some("nginx:1.27"));
    assert_eq!(
        web.command,
        Some(vec!["nginx".into(), "-g".into(), "daemon off;".into()])
    );
    assert_eq!(web.entrypoint, Some(vec!["/docker-entrypoint.sh".into()]));
    let env: Vec<(&str, &str)> = web
        .environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [
            ("DEBUG", "false"),
            ("FILE_ONLY", "yes"),
            ("FROM_ENV", "env-value"),
            ("MODE", "production"),
            ("WORKERS", "4"),
        ]
    );
    let port = |target, published, host_ip: Option<&str>, protocol| PortSpec {
        target,
        published,
        host_ip: host_ip.map(str::to_string),
        protocol,
    };
    assert_eq!(
        web.ports,
        vec![
            port(80, None, None, Protocol::Tcp),
            port(80, Some(8080), None, Protocol::Tcp),
            port(443, Some(8443), Some("127.0.0.1"), Protocol::Tcp),
            port(53, Some(5353), None, Protocol::Udp),
            port(9000, Some(9000), None, Protocol::Tcp),
            port(9001, Some(9001), None, Protocol::Tcp),
            port(3000, Some(3001), Some("0.0.0.0"), Protocol::Tcp),
            port(7000, None, None, Protocol::Tcp),
        ]
    );
    assert_eq!(web.expose, ["3000", "4000/udp"]);
    assert_eq!(
        web.labels,
        BTreeMap::from([
            ("com.example.team".to_string(), "shop".to_string()),
            ("flag".to_string(), String::new()),
        ])
    );
    let mount = |kind, source: &str, target: &str, read_only| VolumeMount {
        kind,
        source: source.to_string(),
        target: target.to_string(),
        read_only,
        options: Default::default(),
    };
    assert_eq!(
        web.volumes,
        vec![
            mount(MountKind::Volume, "data", "/var/lib/data", false),
            mount(MountKind::Volume, "data", "/ro", true),
            mount(MountKind::Bind, &at("conf"), "/etc/nginx/conf.d", true),
            mount(MountKind::Bind, "/var/log", "/var/log/nginx", false),
            mount(MountKind::Volume, "", "/cache", false),
            mount(MountKind::Tmpfs, "", "/tmp", false),
            mount(
                MountKind::Bind,
                &at("static"),
                "/usr/share/nginx/html",
                true
            ),
            mount(MountKind::Volume, "data", "/data2", false),
        ]
    );
    assert_eq!(
        web.healthcheck,
        Some(HealthCheck {
            test: vec![
                "CMD".into(),
                "curl".into(),
                "-f".into(),
                "http://localhost/".into()
            ],
            interval_ms: 90_000,
            timeout_ms: 10_000,
            retries: 5,
            start_interval_ms: None,
            start_period_ms: 500,
        })
    );
    // deploy.restart_policy wins over `restart` (merged from the anchor).
    assert_eq!(
        web.restart,
        RestartPolicy {
            condition: RestartCondition::OnFailure,
            delay_ms: 5_000,
            max_delay_ms: 30_000,
            max_attempts: 3,
            window_ms: 120_000,
        }
    );
    assert_eq!(
        web.depends_on,
        BTreeMap::from([
            (
                "api".to_string(),
                DependsOn {
                    condition: DependsCondition::ServiceHealthy
                }
            ),
            (
                "worker".to_string(),
                DependsOn {
                    condition: DependsCondition::ServiceCompletedSuccessfully
                }
            ),
        ])
    );
    assert_eq!(web.stop_grace_period_ms, Some(90_000));
    assert_eq!(web.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(web.user.as_deref(), Some("101"));
    assert_eq!(web.working_dir.as_deref(), Some("/srv"));
    assert_eq!(web.hostname.as_deref(), Some("web1"));
    assert_eq!(web.init, Some(true));
    let d = &web.deploy;
    assert_eq!(d.mode, DeployMode::Replicated);
    assert_eq!(d.replicas, 3);
    assert_eq!(
        d.resources,
        Resources {
            limits: ResourceAmounts {
                nano_cpus: Some(500_000_000),
                memory_bytes: Some(512 << 20)
            },
            reservations: ResourceAmounts {
                nano_cpus: Some(250_000_000),
                memory_bytes: Some(1 << 20)
            },
        }
    );
    assert_eq!(
        d.update_config,
        UpdateConfig {
            parallelism: 2,
            delay_ms: 10_000,
            order: UpdateOrder::StartFirst,
            failure_action: FailureAction::Rollback,
            monitor_ms: 30_000,
            max_failure_ratio_permille: 100,
        }
    );
    assert_eq!(
        d.rollback_config,
        UpdateConfig {
            failure_action: FailureAction::Continue,
            ..UpdateConfig::default()
        }
    );
    assert_eq!(
        d.placement,
        Placement {
            constraints: vec!["node.labels.zone == a".into()],
            preferences: vec!["node.labels.zone".into()],
            max_replicas_per_node: Some(2),
        }
    );
    assert_eq!(
        d.labels,
        BTreeMap::from([("traefik.enable".to_string(), "true".to_string())])
    );

    let api = &spec.services["api"];
    assert_eq!(api.image, None);
    let build = api.build.as_ref().expect("build");
    assert_eq!(build.context, at("api"));
    assert_eq!(build.dockerfile.as_deref(), Some("Dockerfile.prod"));
    assert_eq!(
        build.args,
        BTreeMap::from([("VERSION".to_string(), "2".to_string())])
    );
    let hash = build.context_hash.as_deref().expect("hash");
    assert_eq!(hash.len(), 64);
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(api.restart.condition, RestartCondition::OnFailure);
    assert_eq!(api.restart.max_attempts, 5);
    assert_eq!(
        api.healthcheck.as_ref().map(|h| h.test.clone()),
        Some(vec![
            "CMD-SHELL".to_string(),
            "curl -f http://localhost/health".to_string()
        ])
    );
    assert_eq!(
        api.healthcheck
            .as_ref()
            .map(|h| (h.interval_ms, h.timeout_ms, h.retries)),
        Some((
            HealthCheck::DEFAULT_INTERVAL_MS,
            HealthCheck::DEFAULT_TIMEOUT_MS,
            HealthCheck::DEFAULT_RETRIES
        ))
    );
    assert_eq!(api.depends_on.keys().collect::<Vec<_>>(), ["worker"]);

    let worker = &spec.services["worker"];
    assert_eq!(worker.image.as_deref(), Some("shop/worker:dev"));
    assert_eq!(
        worker.build.as_ref().map(|b| b.context.clone()),
        Some(at("worker"))
    );
    assert_ne!(
        worker.build.as_ref().and_then(|b| b.context_hash.clone()),
        build.context_hash
    );
    assert_eq!(worker.restart.condition, RestartCondition::None);
    assert_eq!(worker.healthcheck, None);
    assert_eq!(worker.deploy.mode, DeployMode::Global);

    let agent = &spec.services["agent"];
    assert_eq!(agent.driver, DriverKind::Process);
    assert_eq!(agent.image, None);
    assert_eq!(
        agent.environment,
        BTreeMap::from([
            ("A".to_string(), "b".to_string()),
            ("FROM_ENV".to_string(), "env-value".to_string()),
        ])
    );
    assert_eq!(agent.restart, RestartPolicy::default());

    assert_eq!(
        spec.volumes,
        BTreeMap::from([
            ("data".to_string(), VolumeSpec::default()),
            (
                "logs".to_string(),
                VolumeSpec {
                    driver: Some("local".into()),
                    driver_opts: BTreeMap::from([("type".to_string(), "none".to_string())]),
                    labels: BTreeMap::from([("tier".to_string(), "backend".to_string())]),
                    external: false,
                    name: None,
                }
            ),
            (
                "shared".to_string(),
                VolumeSpec {
                    external: true,
                    ..VolumeSpec::default()
                }
            ),
        ])
    );
    assert_eq!(
        spec.networks,
        BTreeMap::from([
            ("default".to_string(), NetworkSpec::default()),
            (
                "front".to_string(),
                NetworkSpec {
                    driver: Some("bridge".into()),
                    external: false,
                    internal: false,
                }
            ),
            (
                "outside".to_string(),
                NetworkSpec {
                    driver: None,
                    external: true,
                    internal: false,
                }
            ),
        ])
    );
    assert!(
        loaded.warnings.is_empty(),
        "unexpected warnings: {:?}",
        loaded.warnings
    );

    // What load produces, validate_spec accepts; and the spec survives the JSON wire.
    assert_eq!(validate_spec(spec), Ok(()));
    let json = serde_json::to_string(spec).expect("serialise");
    let back: StackSpec = serde_json::from_str(&json).expect("deserialise");
    assert_eq!(&back, spec);
}

#[test]
fn interpolation_table() {
    // (template, caller env, .env file, expected value of V)
    let cases: &[(&str, Env<'_>, &str, &str)] = &[
        ("$A", &[("A", "1")], "", "1"),
        ("${A}", &[("A", "1")], "", "1"),
        ("x${A}y$A.", &[("A", "1")], "", "x1y1."),
        ("${A:-def}", &[], "", "def"),
        ("${A:-def}", &[("A", "")], "", "def"),
        ("${A-def}", &[("A", "")], "", ""),
        ("${A-def}", &[], "", "def"),
        ("${A:+alt}", &[("A", "1")], "", "alt"),
        ("${A:+alt}", &[], "", ""),
        ("${A+alt}", &[("A", "")], "", "alt"),
        ("${A:?needed}", &[("A", "v")], "", "v"),
        ("${A?needed}", &[("A", "")], "", ""),
        ("$$A and $${A}", &[("A", "1")], "", "$A and ${A}"),
        ("${A:-${B}}", &[("B", "2")], "", "2"),
        ("${A:-${B:-deep}}", &[], "", "deep"),
        ("cost: 5$", &[], "", "cost: 5$"),
        ("${FROM_FILE}", &[], "FROM_FILE=file\n", "file"),
        ("${BOTH}", &[("BOTH", "env")], "BOTH=file\n", "env"),
        ("${Q}", &[], "Q=\"quoted value\"\n", "quoted value"),
        ("$UNSET", &[], "", ""),
    ];
    for (template, env, dotenv, want) in cases {
        let src = format!(
            "name: t\nservices:\n  s:\n    image: busybox\n    environment:\n      V: '{template}'\n"
        );
        let files: Vec<(&str, &str)> = if dotenv.is_empty() {
            vec![]
        } else {
            vec![(".env", *dotenv)]
        };
        let (loaded, _d) = ok(Case {
            src: &src,
            env,
            files: &files,
        });
        assert_eq!(
            loaded.spec.services["s"]
                .environment
                .get("V")
                .map(String::as_str),
            Some(*want),
            "template {template:?}"
        );
    }
}

#[test]
fn interpolation_applies_to_typed_fields_and_warns_on_unset() {
    let src =
        "name: t\nservices:\n  s:\n    image: busybox:${TAG}\n    deploy:\n      replicas: ${N}\n";
    let (loaded, _d) = ok(Case {
        src,
        env: &[("N", "4")],
        ..Case::default()
    });
    assert_eq!(loaded.spec.services["s"].deploy.replicas, 4);
    assert_eq!(loaded.spec.services["s"].image.as_deref(), Some("busybox:"));
    let w = &loaded.warnings[0];
    assert_eq!(w.location.to_string(), "stack.yml:4:12");
    assert!(w.message.contains("TAG"), "{}", w.message);
}

#[test]
fn error_yaml_syntax() {
    err(
        Case::src("name: t\nservices:\n  web:\n    image: nginx\n    ports: [80, 81\n"),
        "5:12",
        "invalid YAML: unclosed bracket",
    );
    err(
        Case::src("name: t\nservices:\n  web:\n    image: \"nginx\n"),
        "4:12",
        "invalid YAML: unclosed quote",
    );
}

#[test]
fn error_wrong_type() {
    err(
        Case::src(
            "name: t\nservices:\n  web:\n    image: nginx\n    deploy:\n      replicas: \"three\"\n",
        ),
        "6:17",
        "services.web.deploy.replicas: expected an integer, found string \"three\"",
    );
    err(
        Case::src("name: t\nservices:\n  web:\n    image: nginx\n    init: maybe\n"),
        "5:11",
        "services.web.init: expected a boolean",
    );
    err(
        Case::src("name: t\nservices:\n  web:\n    image: [nginx]\n"),
        "4:12",
        "services.web.image: expected a string, found a sequence",
    );
}

#[test]
fn error_replicas_over_the_limit() {
    let src = |n: u32| {
        format!("name: t\nservices:\n  web:\n    image: nginx\n    deploy:\n      replicas: {n}\n")
    };
    fn case(src: &str) -> Case<'_> {
        Case::src(src)
    }
    let over = src(100_000);
    err(
        case(&over),
        "6:17",
        "services.web.deploy.replicas: 100000 replicas is more than the limit of 10000",
    );
    assert!(hint_of(case(&over), "100000 replicas").contains("at most 10000"));
    // The limit itself is accepted.
    let (l, _d) = ok(case(&src(MAX_REPLICAS)));
    assert_eq!(l.spec.services["web"].deploy.replicas, MAX_REPLICAS);
    let (r, _d) = check(case(&src(MAX_REPLICAS + 1)));
    assert!(r.is_err(), "{} replicas accepted", MAX_REPLICAS + 1);

    // The same limit on a spec that came over the wire.
    let mut spec = l.spec.clone();
    spec.services.get_mut("web").unwrap().deploy.replicas = 100_000;
    let errs = validate_spec(&spec).expect_err("over the limit");
    let e = errs
        .iter()
        .find(|e| e.path == "services.web.deploy.replicas")
        .unwrap_or_else(|| panic!("no replicas error in {errs:?}"));
    assert_eq!(e.message, "100000 replicas is more than the limit of 10000");
    assert!(
        e.hint
            .as_deref()
            .unwrap_or_default()
            .contains("at most 10000")
    );
}

#[test]
fn error_unknown_key_with_did_you_mean() {
    let case = || Case::src("name: t\nservices:\n  web:\n    imgae: nginx\n");
    err(case(), "4:5", "unknown key \"imgae\" in services.web");
    assert_eq!(hint_of(case(), "imgae"), "did you mean \"image\"?");
    let deploy = || {
        Case::src("name: t\nservices:\n  web:\n    image: nginx\n    deploy:\n      replica: 2\n")
    };
    err(deploy(), "6:7", "unknown key \"replica\"");
    assert_eq!(hint_of(deploy(), "replica"), "did you mean \"replicas\"?");
    err(
        Case::src("name: t\nservise:\n  web:\n    image: nginx\n"),
        "2:1",
        "unknown key \"servise\" in the top level",
    );
}

#[test]
fn error_invalid_ports() {
    for (port, msg) in [
        ("\"99999:80\"", "out of range"),
        ("abc", "not a number"),
        ("\"80:80:80:80\"", "expected [[host_ip:]published:]target"),
        ("\"8000-8002:80-81\"", "same size"),
    ] {
        err(
            Case {
                src: &format!(
                    "name: t\nservices:\n  web:\n    image: nginx\n    ports:\n      - {port}\n"
                ),
                ..Case::default()
            },
            "6:9",
            msg,
        );
    }
    err(
        Case::src("name: t\nservices:\n  web:\n    image: nginx\n    ports:\n      - target: 0\n"),
        "6:17",
        "out of range",
    );
}

#[test]
fn error_missing_image() {
    err(
        Case::src("name: t\nservices:\n  web:\n    command: [run]\n  ok:\n    image: busybox\n"),
        "3:3",
        "services.web: the service has neither image nor build",
    );
    err(
        Case::src("name: t\nservices:\n  p:\n    x-wharf: {driver: process}\n"),
        "3:3",
        "process driver needs a command",
    );
}

#[test]
fn error_unset_required_variable() {
    let case = || {
        Case::src(
            "name: t\nservices:\n  db:\n    image: postgres\n    environment:\n      PASSWORD: ${DB_PASSWORD:?set the database password}\n",
        )
    };
    err(
        case(),
        "6:17",
        "required variable DB_PASSWORD is not set: set the database password",
    );
    assert!(hint_of(case(), "DB_PASSWORD").contains("export DB_PASSWORD="));
    err(
        Case::src("name: t\nservices:\n  db:\n    image: \"postgres:${TAG\"\n"),
        "4:12",
        "invalid interpolation",
    );
    err(
        Case::src("name: t\nservices:\n  db:\n    image: \"${1BAD}\"\n"),
        "4:12",
        "invalid interpolation format",
    );
}

#[test]
fn error_dependency_cycle() {
    err(
        Case::src(
            "name: t\nservices:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on:\n      a:\n        condition: service_started\n",
        ),
        "9:7",
        "dependency cycle: a -> b -> a",
    );
    err(
        Case::src("name: t\nservices:\n  a:\n    image: x\n    depends_on: [a]\n"),
        "5:18",
        "dependency cycle: a -> a",
    );
}

#[test]
fn messages_quote_at_most_an_excerpt_of_a_huge_value() {
    let huge = "x".repeat(100_000);
    for src in [
        // A required variable whose message is huge.
        format!(
            "name: t\nservices:\n  web:\n    image: nginx\n    environment:\n      A: ${{UNSET_HUGE:?{huge}}}\n"
        ),
        // An unknown key that is huge (an explicit key: YAML's plain ones stop at 1024).
        format!("name: t\nservices:\n  web:\n    image: nginx\n    ? {huge}\n    : 1\n"),
    ] {
        let (r, _d) = check(Case::src(&src));
        let errs = r.unwrap_err();
        let long: Vec<_> = errs
            .0
            .iter()
            .filter(|e| e.message.contains("more characters"))
            .collect();
        assert!(
            !long.is_empty(),
            "{}",
            wharf_types::excerpt(&errs.to_string(), 300)
        );
        for e in &errs.0 {
            assert!(e.message.len() < 1_000, "{} bytes", e.message.len());
        }
    }
}

#[test]
fn paths_outside_the_stack_directory_are_refused_unless_allowed() {
    let svc = |body: &str| format!("name: t\nservices:\n  web:\n{body}");
    for (body, at, what) in [
        (
            "    image: nginx\n    env_file: /etc/shadow\n",
            "5:15",
            "env_file /etc/shadow",
        ),
        (
            "    image: nginx\n    env_file: [../up.env]\n",
            "5:16",
            "env_file",
        ),
        ("    build: ..\n", "4:12", "the build context"),
        (
            "    build: {context: ., dockerfile: ../Dockerfile}\n",
            "4:37",
            "the Dockerfile",
        ),
    ] {
        err(Case::src(&svc(body)), at, what);
        let (r, _d) = check(Case::src(&svc(body)));
        let e = r.unwrap_err().to_string();
        assert!(e.contains("is outside the stack file's directory"), "{e}");
    }

    // A context inside the directory that is a link to /etc is outside too.
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink("/etc", dir.path().join("ctx")).expect("symlink");
    let src = svc("    build: ./ctx\n");
    let opts = LoadOptions::default();
    let e = load_str(&src, "stack.yml", dir.path(), &opts).unwrap_err();
    assert!(
        e.to_string().contains("the build context /etc is outside"),
        "{e}"
    );

    // Allowed, the file is read.
    let outer = tempfile::tempdir().expect("tempdir");
    let inner = outer.path().join("stack");
    std::fs::create_dir(&inner).expect("mkdir");
    std::fs::write(outer.path().join("up.env"), "FROM_ABOVE=1\n").expect("write");
    let src = svc("    image: nginx\n    env_file: ../up.env\n");
    let opts = LoadOptions {
        allow_outside: true,
        ..LoadOptions::default()
    };
    let l = load_str(&src, "stack.yml", &inner, &opts).expect("allowed");
    assert_eq!(
        l.spec.services["web"]
            .environment
            .get("FROM_ABOVE")
            .map(String::as_str),
        Some("1")
    );
}

#[test]
fn error_other_located_cases() {
    let svc = |body: &str| format!("name: t\nservices:\n  web:\n    image: nginx\n{body}");
    let table: &[(String, &str, &str)] = &[
        (
            svc("    depends_on: [db]\n"),
            "5:18",
            "unknown service \"db\"",
        ),
        (
            svc("    volumes:\n      - data:/data\n"),
            "6:9",
            "volume \"data\" is not declared",
        ),
        (
            svc("    stop_grace_period: 10 seconds\n"),
            "5:24",
            "services.web.stop_grace_period: invalid duration",
        ),
        (
            svc("    deploy:\n      resources:\n        limits:\n          memory: 12parsecs\n"),
            "8:19",
            "invalid size",
        ),
        (
            svc("    deploy:\n      resources:\n        limits:\n          cpus: lots\n"),
            "8:17",
            "invalid cpus",
        ),
        (
            "name: t\nservices:\n  \"we b\":\n    image: nginx\n".to_string(),
            "3:3",
            "invalid service name \"we b\"",
        ),
        (
            svc("    env_file: ./nope.env\n"),
            "5:15",
            "nope.env: not found",
        ),
        (
            "name: t\nservices:\n  web:\n    build: ./nowhere\n".to_string(),
            "4:12",
            "is not a directory",
        ),
        (
            svc("    restart: sometimes\n"),
            "5:14",
            "unknown restart policy",
        ),
        (svc("    image: again\n"), "5:5", "duplicate key \"image\""),
        (
            "name: Bad Name\nservices:\n  web:\n    image: x\n".to_string(),
            "1:7",
            "invalid stack name",
        ),
        ("".to_string(), "1:1", "empty"),
    ];
    for (src, at, msg) in table {
        err(Case::src(src), at, msg);
    }
}

#[test]
fn many_errors_are_collected() {
    let (r, _d) = check(Case::src(
        "name: t\nservices:\n  a:\n    imgae: x\n  b:\n    image: y\n    ports: [\"99999:1\"]\n    deploy: {replicas: many}\n",
    ));
    let e = r.expect_err("errors");
    assert!(e.0.len() >= 4, "{e}");
    assert_eq!(e.to_string().lines().count(), e.0.len());
}

/// Keys that change nothing that runs warn, located, saying why; keys that would change what
/// runs and that Wharf cannot do are errors saying why and what to do instead.
#[test]
fn ignored_keys_warn_with_location_and_refused_keys_are_errors() {
    let (loaded, _d) = ok(Case {
        files: &[("s", "x")],
        ..Case::src(
            "name: t\nservices:\n  web:\n    image: nginx\n    container_name: web1\n    develop: {watch: []}\n    networks: {front: {priority: 10}}\n    build:\n      context: .\n      tags: [x:1]\nsecrets:\n  s: {file: ./s, labels: {a: b}}\nnetworks:\n  front: {}\n",
        )
    });
    let got: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "stack.yml:5:5: services.web.container_name is ignored: container names are Wharf's (wharf-<stack>-<service>-<slot>-g<generation>), and other services reach this one by its service name",
            "stack.yml:6:5: services.web.develop is ignored: it configures docker compose watch for development; a deploy runs what the file says",
            "stack.yml:7:24: services.web.networks.front.priority is ignored: a container is on one network, its stack's; the order of segments changes nothing",
            "stack.yml:10:7: services.web.build.tags is ignored: Wharf tags the image it builds with the service's image only; more tags change nothing that runs",
            "stack.yml:12:18: secrets.s.labels is ignored: labels of a secret are metadata; its value and mounts are the same",
        ]
    );
    err(
        Case::src("name: t\nservices:\n  web:\n    image: nginx\n    pid: host\n"),
        "5:5",
        "services.web.pid is not supported by Wharf: sharing the host's",
    );
    err(
        Case::src(
            "name: t\nservices:\n  web:\n    image: nginx\n    networks: {front: {ipv4_address: 10.0.0.9}}\nnetworks:\n  front: {}\n",
        ),
        "5:24",
        "services.web.networks.front.ipv4_address is not supported by Wharf",
    );
}

#[test]
fn networks_are_segments_with_aliases_internal_flags_and_allow_from() {
    let (loaded, _d) = ok(Case::src(
        "name: t\nservices:\n  a:\n    image: x\n    networks: [front]\n  b:\n    image: x\n    networks:\n      front:\n      back: {aliases: [db]}\n    x-wharf: {allow_from: [mon/probe]}\n  d:\n    image: x\n    networks: [inner]\nnetworks:\n  front: {}\n  back: {}\n  inner: {internal: true}\n",
    ));
    let s = &loaded.spec.services;
    assert_eq!(s["a"].segments(), ["front"]);
    assert_eq!(s["b"].segments(), ["back", "front"]);
    assert_eq!(s["b"].networks["back"].aliases, ["db"]);
    assert_eq!(s["b"].wharf.allow_from, ["mon/probe"]);
    assert!(s["d"].networks["inner"].internal && !s["b"].networks["front"].internal);
    // Segments are the nodes' firewall: changing them replaces no container.
    let mut moved = s["a"].clone();
    moved.networks.clear();
    assert_eq!(moved.instance_hash(), s["a"].instance_hash());

    let bad = "name: t\nservices:\n  a:\n    image: x\n    networks: [frnt]\n    x-wharf: {allow_from: [probe]}\nnetworks:\n  front: {}\n";
    err(Case::src(bad), "5:16", "undefined network \"frnt\"");
    assert!(hint_of(Case::src(bad), "undefined network").contains("did you mean \"front\""));
    err(
        Case::src(bad),
        "6:28",
        "\"probe\" is not a service of a stack",
    );
}

#[test]
fn stack_name_sources() {
    let dir = tempfile::tempdir().expect("tempdir");
    let proj = dir.path().join("My Project.v2");
    std::fs::create_dir(&proj).expect("mkdir");
    let file = proj.join("stack.yml");
    std::fs::write(&file, "services:\n  web:\n    image: nginx\n").expect("write");
    let loaded = load_file(&file, &LoadOptions::default()).expect("loads");
    assert_eq!(loaded.spec.name, "myprojectv2");
    let opts = LoadOptions {
        stack_name: Some("override".into()),
        ..LoadOptions::default()
    };
    assert_eq!(
        load_file(&file, &opts).expect("loads").spec.name,
        "override"
    );
    std::fs::write(
        &file,
        "name: fromfile\nservices:\n  web:\n    image: nginx\n",
    )
    .expect("write");
    let loaded = load_file(&file, &LoadOptions::default()).expect("loads");
    assert_eq!(loaded.spec.name, "fromfile");
    let missing = load_file(&proj.join("nope.yml"), &LoadOptions::default()).expect_err("missing");
    assert!(missing.0[0].location.is_none());
    assert!(missing.to_string().starts_with("cannot read"), "{missing}");

    assert!(validate_stack_name("a").is_ok());
    assert!(validate_stack_name("my_app-2").is_ok());
    assert!(validate_stack_name(&"a".repeat(63)).is_ok());
    for bad in ["", "A", "-a", "_a", "a.b", "a b", &"a".repeat(64)] {
        assert!(validate_stack_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn validate_spec_reports_field_paths() {
    let mut spec = StackSpec {
        name: "Bad Name".into(),
        ..StackSpec::default()
    };
    spec.services.insert(
        "web".into(),
        ServiceSpec {
            image: Some(String::new()),
            ports: vec![PortSpec {
                target: 80,
                published: Some(0),
                host_ip: None,
                protocol: Protocol::Tcp,
            }],
            depends_on: BTreeMap::from([("ghost".to_string(), DependsOn::default())]),
            volumes: vec![VolumeMount {
                kind: MountKind::Volume,
                source: "undeclared".into(),
                target: "relative".into(),
                read_only: false,
                options: Default::default(),
            }],
            ..ServiceSpec::default()
        },
    );
    spec.services.insert(
        "bad/name".into(),
        ServiceSpec {
            image: Some("busybox".into()),
            ..ServiceSpec::default()
        },
    );
    spec.services.insert(
        "proc".into(),
        ServiceSpec {
            driver: DriverKind::Process,
            ..ServiceSpec::default()
        },
    );
    let errs = validate_spec(&spec).expect_err("invalid");
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "name",
        "services.bad/name",
        "services.web.image",
        "services.web.ports[0].published",
        "services.web.volumes[0].target",
        "services.web.volumes[0].source",
        "services.web.depends_on.ghost",
        "services.proc.command",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
    assert!(errs.iter().all(|e| e.hint.is_some()));

    // A cycle that came in over the wire.
    let mut cyc = StackSpec {
        name: "ok".into(),
        ..StackSpec::default()
    };
    for (a, b) in [("a", "b"), ("b", "a")] {
        cyc.services.insert(
            a.into(),
            ServiceSpec {
                image: Some("x".into()),
                depends_on: BTreeMap::from([(b.to_string(), DependsOn::default())]),
                ..ServiceSpec::default()
            },
        );
    }
    let errs = validate_spec(&cyc).expect_err("cycle");
    assert_eq!(errs[0].message, "dependency cycle: a -> b -> a");
}

#[test]
fn optional_dependency_on_a_missing_service_is_dropped() {
    let (loaded, _d) = ok(Case::src(
        "name: t\nservices:\n  web:\n    image: nginx\n    depends_on:\n      cache:\n        required: false\n",
    ));
    assert!(loaded.spec.services["web"].depends_on.is_empty());
    assert_eq!(validate_spec(&loaded.spec), Ok(()));
}

#[test]
fn merge_keys_and_aliases_keep_working() {
    let (loaded, _d) = ok(Case::src(
        "name: t\nx-base: &base\n  image: busybox\n  environment: &env\n    A: \"1\"\nservices:\n  one:\n    <<: *base\n  two:\n    <<: *base\n    image: alpine\n    environment: *env\n",
    ));
    let s = &loaded.spec.services;
    assert_eq!(s["one"].image.as_deref(), Some("busybox"));
    assert_eq!(s["two"].image.as_deref(), Some("alpine"));
    assert_eq!(s["two"].environment.get("A").map(String::as_str), Some("1"));
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn load(src: &str) {
        let opts = LoadOptions::default();
        let _ = load_str(
            src,
            "fuzz.yml",
            std::path::Path::new("/nonexistent-wharf-fuzz"),
            &opts,
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(src in "\\PC{0,200}") {
            load(&src);
        }

        #[test]
        fn yaml_ish_text_never_panics(
            src in proptest::collection::vec(
                prop_oneof![
                    Just("services:\n"), Just("  web:\n"), Just("    image: "), Just("nginx\n"),
                    Just("    ports: ["), Just("\"8080:80\""), Just("]\n"), Just("- "), Just(": "),
                    Just("${"), Just("}"), Just("$$"), Just(":-"), Just(":?"), Just("&a "), Just("*a"),
                    Just("<<: "), Just("{"), Just("\n"), Just("  "), Just("'"), Just("\""), Just("#"),
                    Just("depends_on: [web]\n"), Just("deploy: {replicas: x}\n"), Just("99999"),
                    Just("volumes:\n"), Just("      - data:/d\n"), Just("healthcheck: {test: NONE}\n"),
                ],
                0..40,
            ).prop_map(|parts| parts.concat())
        ) {
            load(&src);
        }
    }
}

#[test]
fn dotenv_and_env_file_errors_are_located_in_their_file() {
    let (r, d) = check(Case {
        src: "name: t\nservices:\n  web:\n    image: nginx\n    env_file: web.env\n",
        files: &[
            (".env", "OK=1\nBAD LINE=2\n"),
            ("web.env", "A=1\nB=\"open\n"),
        ],
        ..Case::default()
    });
    let e = r.expect_err("errors");
    let base = std::path::absolute(d.path()).expect("absolute");
    let got: Vec<String> = e.0.iter().map(ToString::to_string).collect();
    assert!(
        got.iter()
            .any(|l| l.starts_with(&format!("{}:2:1: ", base.join(".env").display()))),
        "{got:?}"
    );
    assert!(
        got.iter()
            .any(|l| l.starts_with(&format!("{}:2:1: ", base.join("web.env").display()))),
        "{got:?}"
    );
}

#[test]
fn x_wharf_placement_settings() {
    let (loaded, _d) = ok(Case::src(
        "name: t\nservices:\n  db:\n    image: postgres\n  web:\n    image: nginx\n    x-wharf:\n      affinity: [db]\n      anti_affinity: [web]\n      move_with_volumes: true\n      auto_rebalance: true\n      at_most_once: true\n      drain_grace: 5s\n      scan: {block: high}\n      auto_deploy: true\n    deploy:\n      placement:\n        constraints: [\"node.labels.zone == a\", \"node.role!=manager\"]\n",
    ));
    let web = &loaded.spec.services["web"];
    assert_eq!(
        web.wharf,
        WharfExt {
            affinity: vec!["db".into()],
            anti_affinity: vec!["web".into()],
            move_with_volumes: true,
            auto_rebalance: true,
            at_most_once: true,
            ingress: vec![],
            drain_grace_ms: Some(5_000),
            scan_block: Some(wharf_types::Severity::High),
            auto_deploy: true,
            allow_from: vec![],
            schedule: None,
            history: None,
        }
    );
    assert_eq!(
        web.deploy.placement.constraints,
        vec!["node.labels.zone == a", "node.role!=manager"]
    );
    assert!(loaded.spec.services["db"].wharf.is_default());
    assert_eq!(validate_spec(&loaded.spec), Ok(()));
}

#[test]
fn x_wharf_errors_are_located() {
    let svc = |ext: &str| {
        format!(
            "name: t\nservices:\n  db:\n    image: postgres\n  web:\n    image: nginx\n    x-wharf:\n      {ext}\n"
        )
    };
    let src = svc("afinity: [db]");
    err(Case::src(&src), "8:7", "afinity");
    let src = svc("affinity: [dbb]");
    err(Case::src(&src), "8:18", "unknown service \"dbb\"");
    let src = svc("anti_affinity: [ghost]");
    err(Case::src(&src), "8:23", "unknown service \"ghost\"");
    let src = svc("auto_rebalance: maybe");
    err(Case::src(&src), "8:23", "auto_rebalance");
    let src = svc("drain_grace: soon");
    err(
        Case::src(&src),
        "8:20",
        "x-wharf.drain_grace: invalid duration",
    );
    let src = svc("scan: {block: severe}");
    err(Case::src(&src), "8:21", "unknown severity \"severe\"");
    let src = svc("scan: {blok: high}");
    err(Case::src(&src), "8:14", "blok");
    let src = "name: t\nservices:\n  web:\n    image: nginx\n    deploy:\n      placement:\n        constraints:\n          - node.labels.zone = a\n          - node.role == boss\n";
    err(Case::src(src), "8:13", "no `==` or `!=`");
    err(Case::src(src), "9:13", "not `boss`");
}

#[test]
fn jobs_scheduled_and_run_to_completion() {
    let (loaded, _d) = ok(Case::src(
        "name: t\nservices:\n  backup:\n    image: busybox\n    x-wharf:\n      schedule: \"*/5 * * * *\"\n      timezone: Europe/Berlin\n      concurrency: replace\n      deadline: 10m\n      history: 5\n  migrate:\n    image: busybox\n    deploy:\n      mode: replicated-job\n      replicas: 3\n  clean:\n    image: busybox\n    deploy:\n      mode: global-job\n",
    ));
    let backup = &loaded.spec.services["backup"];
    assert_eq!(
        backup.wharf.schedule,
        Some(wharf_types::JobSchedule {
            cron: "*/5 * * * *".into(),
            timezone: Some("Europe/Berlin".into()),
            concurrency: wharf_types::Concurrency::Replace,
            deadline_ms: Some(600_000),
        })
    );
    assert_eq!(backup.wharf.history, Some(5));
    assert!(backup.is_job());
    let migrate = &loaded.spec.services["migrate"];
    assert_eq!(migrate.deploy.mode, wharf_types::DeployMode::ReplicatedJob);
    assert_eq!(migrate.deploy.replicas, 3);
    // A job's `any` restart condition is on-failure: an instance that exits 0 is done.
    assert_eq!(
        migrate.restart_condition(),
        wharf_types::RestartCondition::OnFailure
    );
    let clean = &loaded.spec.services["clean"];
    assert_eq!(clean.deploy.mode, wharf_types::DeployMode::GlobalJob);
    assert_eq!(validate_spec(&loaded.spec), Ok(()));
}

#[test]
fn bad_schedules_are_located_with_a_hint() {
    let svc =
        |ext: &str| format!("name: t\nservices:\n  job:\n    image: busybox\n    x-wharf:\n{ext}");
    let src = svc("      schedule: \"*/5 * * *\"\n");
    err(Case::src(&src), "6:17", "bad cron expression");
    let src = svc("      schedule: \"0 0 31 2 *\"\n");
    err(Case::src(&src), "6:17", "never fires");
    let src = svc("      schedule: \"* * * * *\"\n      timezone: Mars/Olympus\n");
    err(Case::src(&src), "7:17", "unknown time zone");
    let src = svc("      schedule: \"* * * * *\"\n      concurrency: sometimes\n");
    err(Case::src(&src), "7:20", "unknown concurrency");
    let src = svc("      timezone: UTC\n");
    err(Case::src(&src), "6:7", "need a schedule");
    let src = "name: t\nservices:\n  job:\n    image: busybox\n    deploy:\n      mode: cron-job\n";
    err(Case::src(src), "6:13", "unsupported mode");
    // A spec made by hand (the API's path) is checked by the same parser.
    let (mut loaded, _d) = ok(Case::src(
        "name: t\nservices:\n  job:\n    image: busybox\n    x-wharf: {schedule: '* * * * *'}\n",
    ));
    let job = loaded.spec.services.get_mut("job").unwrap();
    job.wharf.schedule.as_mut().unwrap().cron = "every day".into();
    let errs = validate_spec(&loaded.spec).expect_err("a bad schedule");
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("services.job.wharf.schedule")
                && e.to_string().contains("bad cron expression")),
        "{errs:?}"
    );
}

/// A service with an nginx image and nothing else set.
fn nginx() -> ServiceSpec {
    ServiceSpec {
        image: Some("nginx".into()),
        ..ServiceSpec::default()
    }
}

/// The stack `t` of `services`.
fn stack_t(services: Vec<(&str, ServiceSpec)>) -> StackSpec {
    StackSpec {
        name: "t".into(),
        services: services
            .into_iter()
            .map(|(name, s)| (name.to_string(), s))
            .collect(),
        ..StackSpec::default()
    }
}

#[test]
fn validate_spec_checks_constraints_and_affinity() {
    let mut web = nginx();
    web.deploy.placement.constraints = vec!["node.labels.zone == a".into(), "zone=a".into()];
    web.wharf.affinity = vec!["ghost".into()];
    web.wharf.anti_affinity = vec!["web".into()];
    let errs = validate_spec(&stack_t(vec![("web", web)])).expect_err("invalid");
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "services.web.deploy.placement.constraints[1]",
            "services.web.wharf.affinity[0]"
        ]
    );
    assert!(
        errs[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("node.labels.<label>==<value>")
    );
}

#[test]
fn x_wharf_ingress_routes() {
    let (loaded, _d) = ok(Case::src(
        "name: t\nservices:\n  web:\n    image: nginx\n    x-wharf:\n      ingress:\n        - port: 8080\n          listen: 8000\n          hosts: [a.example, \"*.b.example\"]\n          paths: [/api]\n          balance: least_requests\n          sticky: WHARF_ID\n          timeout: 30s\n          redirect_https: false\n        - {port: 5432, listen: 15432, protocol: tcp, listen_address: 127.0.0.1}\n",
    ));
    let web = &loaded.spec.services["web"];
    assert_eq!(
        web.wharf.ingress,
        vec![
            IngressRoute {
                port: 8080,
                listen: 8000,
                listen_address: None,
                protocol: IngressProtocol::Http,
                hosts: vec!["a.example".into(), "*.b.example".into()],
                paths: vec!["/api".into()],
                balance: IngressBalance::LeastRequests,
                sticky: Some("WHARF_ID".into()),
                timeout_ms: Some(30_000),
                redirect_https: false,
                tls: None,
            },
            IngressRoute {
                port: 5432,
                listen: 15432,
                listen_address: Some("127.0.0.1".into()),
                protocol: IngressProtocol::Tcp,
                ..IngressRoute::default()
            },
        ]
    );
    assert_eq!(validate_spec(&loaded.spec), Ok(()));
    // Routes are not part of the instance hash: changing them replaces nothing.
    let mut bare = web.clone();
    bare.wharf.ingress.clear();
    assert_eq!(bare.instance_hash(), web.instance_hash());
}

#[test]
fn x_wharf_ingress_errors_are_located() {
    let route = |r: &str| {
        format!(
            "name: t\nservices:\n  web:\n    image: nginx\n    x-wharf:\n      ingress:\n        - {r}\n"
        )
    };
    // (route, the text the error points at, message): located at that text (line 7).
    let cases: &[(&str, &str, &str)] = &[
        (
            "{port: 80, listne: 8000}",
            "listne",
            "unknown key \"listne\"",
        ),
        ("{port: 80}", "{", "missing listen"),
        ("{listen: 8000}", "{", "missing port"),
        (
            "{port: 80, listen: 70000}",
            "70000",
            "x-wharf.ingress[0].listen",
        ),
        (
            "{port: 80, listen: 8000, protocol: tpc}",
            "tpc",
            "unknown protocol \"tpc\"",
        ),
        (
            "{port: 80, listen: 8000, balance: roundrobin}",
            "roundrobin",
            "unknown balance",
        ),
        (
            "{port: 80, listen: 8000, hosts: [\"a b\"]}",
            "[",
            "is not a host name",
        ),
        (
            "{port: 80, listen: 8000, paths: [api]}",
            "[",
            "does not start with /",
        ),
        (
            "{port: 80, listen: 8000, sticky: \"a;b\"}",
            "\"a;b",
            "not a valid cookie name",
        ),
        (
            "{port: 80, listen: 8000, timeout: soon}",
            "soon",
            "ingress[0].timeout",
        ),
        (
            "{port: 80, listen: 8000, redirect_https: true}",
            "true",
            "redirect_https needs a route with tls",
        ),
        (
            "{port: 80, listen: 8000, listen_address: localhost}",
            "localhost",
            "not an IP address",
        ),
        (
            "{port: 80, listen: 8000, protocol: tcp, paths: [/a]}",
            "[",
            "paths applies to HTTP routes",
        ),
    ];
    for (r, token, msg) in cases {
        let src = route(r);
        let col = 11 + r.find(token).expect("token in route");
        err(Case::src(&src), &format!("7:{col}"), msg);
    }
    let src = route("{port: 80, listen: 8000, protocol: tcp}");
    let hint = hint_of(
        Case::src(&route("{port: 80, listen: 8000, balance: least_request}")),
        "unknown balance",
    );
    assert!(hint.contains("least_requests"), "{hint}");
    let two = format!("{src}        - {{port: 81, listen: 8000}}\n");
    err(
        Case::src(&two),
        "8:30",
        "listen port 8000 is already used by services.web.x-wharf.ingress[0]",
    );
}

#[test]
fn validate_spec_checks_ingress_routes() {
    let route = |listen: u16, protocol: IngressProtocol| IngressRoute {
        port: 80,
        listen,
        protocol,
        ..IngressRoute::default()
    };
    let mut web = nginx();
    web.wharf.ingress = vec![
        route(8000, IngressProtocol::Http),
        IngressRoute {
            paths: vec!["api".into()],
            ..route(8001, IngressProtocol::Http)
        },
    ];
    let mut db = web.clone();
    db.wharf.ingress = vec![route(8000, IngressProtocol::Tcp)];
    let errs = validate_spec(&stack_t(vec![("db", db), ("web", web)])).expect_err("invalid");
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "services.web.wharf.ingress[1].paths",
            "services.web.wharf.ingress[0].listen"
        ]
    );
}

#[test]
fn x_wharf_ingress_tls_reads_the_files_next_to_the_stack_file() {
    let (cert, key) = cert_pair(&["shop.example"]);
    let (other_cert, other_key) = cert_pair(&["admin.example"]);
    let src = "name: t
services:
  web:
    image: nginx
    x-wharf:
      ingress:
        - port: 8080
          listen: 8443
          hosts: [shop.example]
          tls: {certificate: certs/shop.crt, key: ./certs/shop.key}
        - port: 8080
          listen: 8443
          hosts: [admin.example]
          tls: {certificate: certs/admin.crt, key: certs/admin.key}
        - {port: 8080, listen: 8080, hosts: [shop.example], redirect_https: true}
";
    let files = [
        ("certs/shop.crt", cert.as_str()),
        ("certs/shop.key", key.as_str()),
        ("certs/admin.crt", other_cert.as_str()),
        ("certs/admin.key", other_key.as_str()),
    ];
    let (loaded, _d) = ok(Case {
        src,
        files: &files,
        ..Case::default()
    });
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let web = &loaded.spec.services["web"];
    let tls = web.wharf.ingress[0].tls.as_ref().expect("tls");
    assert_eq!(
        (tls.certificate.as_str(), tls.key.expose()),
        (cert.as_str(), key.as_str())
    );
    assert_eq!(
        web.wharf.ingress[1].tls.as_ref().map(|t| t.key.expose()),
        Some(other_key.as_str())
    );
    assert!(web.wharf.ingress[2].redirect_https && web.wharf.ingress[2].tls.is_none());
    assert_eq!(web.wharf.redirect_port(2), Some(8443));
    assert_eq!(validate_spec(&loaded.spec), Ok(()));
    // Certificates are routes: not part of the instance hash.
    let mut bare = web.clone();
    bare.wharf.ingress.clear();
    assert_eq!(bare.instance_hash(), web.instance_hash());
    // Never in Debug output; redacted to a fingerprint for the API.
    assert!(!format!("{:?}", loaded.spec).contains(&key[30..70]));
    let mut redacted = loaded.spec.clone();
    redacted.redact_secrets();
    assert!(
        !serde_json::to_string(&redacted)
            .unwrap()
            .contains(&key[30..70])
    );
    let errs = validate_spec(&redacted).expect_err("a redacted spec cannot be deployed");
    assert_eq!(errs[0].path, "services.web.wharf.ingress[0].tls.key");
    assert!(errs[0].message.contains("redacted"), "{errs:?}");

    // A certificate that does not cover the route's host: a warning at `tls`.
    let (loaded, _d) = ok(Case {
        src: &src.replace("admin.example]", "www.example]"),
        files: &files,
        ..Case::default()
    });
    let w: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("stack.yml:14:16: ") && w[0].contains("not valid for www.example"),
        "{w:?}"
    );
}

#[test]
fn x_wharf_ingress_tls_errors_are_located() {
    let (cert, key) = cert_pair(&["a.example"]);
    let (_, other_key) = cert_pair(&["a.example"]);
    let files = [
        ("cert.pem", cert.as_str()),
        ("key.pem", key.as_str()),
        ("other.key", other_key.as_str()),
        ("notes.txt", "not a certificate\n"),
    ];
    let stack = |routes: &str| {
        format!(
            "name: t\nservices:\n  web:\n    image: nginx\n    x-wharf:\n      ingress:\n{routes}"
        )
    };
    let good = "{certificate: cert.pem, key: key.pem}";
    // (routes, (line, text the error points at), message, a word of the hint)
    let cases: Vec<(String, (usize, &str), &str, &str)> = vec![
        (
            "        - {port: 80, listen: 443, tls: {certificate: missing.pem, key: key.pem}}\n".into(),
            (7, "missing.pem"),
            "cannot read",
            "relative to the stack file",
        ),
        (
            "        - {port: 80, listen: 443, tls: {certificate: notes.txt, key: key.pem}}\n".into(),
            (7, "notes.txt"),
            "notes.txt is not a PEM certificate: no CERTIFICATE block found",
            "BEGIN CERTIFICATE",
        ),
        (
            "        - {port: 80, listen: 443, tls: {certificate: cert.pem, key: other.key}}\n".into(),
            (7, "other.key"),
            "other.key does not match the certificate",
            "belong together",
        ),
        (
            "        - {port: 80, listen: 443, tls: {certificate: cert.pem, key: cert.pem}}\n".into(),
            (7, "cert.pem}"),
            "no PRIVATE KEY block found",
            "PRIVATE KEY",
        ),
        (
            "        - {port: 80, listen: 443, tls: {certificate: cert.pem}}\n".into(),
            (7, "{certificate"),
            "ingress[0].tls: missing key",
            "key: <file>",
        ),
        (
            "        - {port: 80, listen: 443, tls: {certificate: cert.pem, key: key.pem, ca: x}}\n".into(),
            (7, "ca:"),
            "unknown key \"ca\"",
            "certificate, key",
        ),
        (
            "        - {port: 80, listen: 443, tls: cert.pem}\n".into(),
            (7, "cert.pem"),
            "expected a mapping",
            "certificate:",
        ),
        (
            format!("        - {{port: 5432, listen: 15432, protocol: tcp, tls: {good}}}\n"),
            (7, "{certificate"),
            "TLS for HTTP routes only",
            "protocol: http",
        ),
        (
            format!("        - {{port: 80, listen: 443, redirect_https: true, tls: {good}}}\n"),
            (7, "true"),
            "redirect_https belongs on a plain-HTTP route",
            "redirect_https: true",
        ),
        (
            "        - {port: 80, listen: 80, redirect_https: true}\n".into(),
            (7, "true"),
            "redirect_https needs a route with tls",
            "tls: {certificate",
        ),
        (
            format!(
                "        - {{port: 80, listen: 443, tls: {good}}}\n        - {{port: 81, listen: 443}}\n"
            ),
            (8, "443"),
            "must all have tls (HTTPS) or none",
            "add tls",
        ),
        (
            format!(
                "        - {{port: 80, listen: 443, tls: {good}}}\n        - {{port: 81, listen: 443, tls: {{certificate: cert.pem, key: other.key}}}}\n"
            ),
            (8, "other.key"),
            "does not match",
            "belong together",
        ),
    ];
    for (routes, (line, token), message, hint) in &cases {
        let src = stack(routes);
        let text = src.lines().nth(line - 1).expect("the line");
        let at = format!(
            "{line}:{}",
            1 + text.find(token).expect("token on the line")
        );
        let at = at.as_str();
        let case = || Case {
            src: &src,
            files: &files,
            ..Case::default()
        };
        err(case(), at, message);
        let h = hint_of(case(), message);
        assert!(h.contains(hint), "hint for {message:?}: {h}");
    }

    // Two certificates for one host on one port.
    let (cert2, key2) = cert_pair(&["a.example"]);
    let files2 = [
        ("cert.pem", cert.as_str()),
        ("key.pem", key.as_str()),
        ("cert2.pem", cert2.as_str()),
        ("key2.pem", key2.as_str()),
    ];
    let src = stack(&format!(
        "        - {{port: 80, listen: 443, hosts: [a.example], tls: {good}}}\n        - {{port: 81, listen: 443, hosts: [b.example, a.example], tls: {{certificate: cert2.pem, key: key2.pem}}}}\n"
    ));
    err(
        Case {
            src: &src,
            files: &files2,
            ..Case::default()
        },
        &format!(
            "8:{}",
            1 + src.lines().nth(7).unwrap().find("{certificate").unwrap()
        ),
        "listen port 443 already has another certificate for host a.example (services.web.x-wharf.ingress[0])",
    );
}

#[test]
fn validate_spec_checks_ingress_tls() {
    let (cert, key) = cert_pair(&["a.example"]);
    let (_, other_key) = cert_pair(&["a.example"]);
    let tls = |key: &str| IngressTls {
        certificate: cert.clone(),
        key: Secret(key.to_string()),
    };
    let mut web = nginx();
    web.wharf.ingress = vec![
        IngressRoute {
            port: 80,
            listen: 443,
            tls: Some(tls(&key)),
            ..IngressRoute::default()
        },
        IngressRoute {
            port: 80,
            listen: 444,
            tls: Some(tls(&other_key)),
            ..IngressRoute::default()
        },
        IngressRoute {
            port: 80,
            listen: 80,
            redirect_https: true,
            ..IngressRoute::default()
        },
        IngressRoute {
            port: 80,
            listen: 5432,
            protocol: IngressProtocol::Tcp,
            tls: Some(tls(&key)),
            ..IngressRoute::default()
        },
    ];
    let errs = validate_spec(&stack_t(vec![("web", web)])).expect_err("invalid");
    let paths: Vec<(&str, &str)> = errs
        .iter()
        .map(|e| (e.path.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        paths,
        vec![
            (
                "services.web.wharf.ingress[1].tls.key",
                "does not match the certificate"
            ),
            (
                "services.web.wharf.ingress[3].tls",
                "the ingress terminates TLS for HTTP routes only, not for protocol: tcp"
            ),
        ],
        "{errs:?}"
    );
}

const SECRETS_STACK: &str = "name: shop
services:
  web:
    image: nginx
    secrets:
      - db_password
      - source: api_key
        target: key.txt
        uid: \"1000\"
        gid: \"1001\"
        mode: 0400
    configs:
      - source: site
        target: /etc/nginx/conf.d/site.conf
      - motd
secrets:
  db_password: {file: ./db_password.txt}
  api_key: {environment: API_KEY}
  shared: {external: true, name: prod_shared}
configs:
  site: {content: \"listen 80;\"}
  motd: {file: ./motd}
";

#[test]
fn secrets_and_configs_are_referenced_in_the_spec_and_their_values_travel_beside_it() {
    let (l, _d) = ok(Case {
        src: SECRETS_STACK,
        env: &[("API_KEY", "k-123")],
        files: &[("db_password.txt", "hunter2"), ("motd", "hello")],
    });
    let obj = |name: &str, external| ObjectSpec {
        name: name.to_string(),
        external,
    };
    assert_eq!(
        l.spec.secrets,
        BTreeMap::from([
            ("db_password".to_string(), obj("shop_db_password", false)),
            ("api_key".to_string(), obj("shop_api_key", false)),
            ("shared".to_string(), obj("prod_shared", true)),
        ])
    );
    assert_eq!(l.spec.configs["site"], obj("shop_site", false));
    let web = &l.spec.services["web"];
    let file = |source: &str, target: &str, uid, gid, mode| FileRef {
        source: source.to_string(),
        target: target.to_string(),
        uid,
        gid,
        mode,
        ..FileRef::default()
    };
    assert_eq!(
        web.secrets,
        [
            file("db_password", "/run/secrets/db_password", None, None, None),
            file(
                "api_key",
                "/run/secrets/key.txt",
                Some(1000),
                Some(1001),
                Some(0o400)
            ),
        ]
    );
    assert_eq!(
        web.configs,
        [
            file("site", "/etc/nginx/conf.d/site.conf", None, None, None),
            file("motd", "/motd", None, None, None),
        ]
    );
    let b64 = |v: &str| Secret(base64::engine::general_purpose::STANDARD.encode(v));
    use base64::Engine;
    assert_eq!(
        l.secret_values,
        BTreeMap::from([
            ("db_password".to_string(), b64("hunter2")),
            ("api_key".to_string(), b64("k-123")),
        ])
    );
    assert_eq!(
        l.config_values,
        BTreeMap::from([
            ("site".to_string(), b64("listen 80;")),
            ("motd".to_string(), b64("hello")),
        ])
    );
    // The spec itself holds no value, and a debug print of what was loaded neither.
    let text = serde_json::to_string(&l.spec).unwrap() + &format!("{l:?}");
    assert!(
        !text.contains("hunter2") && !text.contains("k-123"),
        "{text}"
    );
    validate_spec(&l.spec).expect("valid");
}

#[test]
fn secrets_and_configs_errors_are_located() {
    let svc = |refs: &str, top: &str| {
        format!("name: t\nservices:\n  web:\n    image: nginx\n{refs}{top}")
    };
    let cases: &[(String, &str, &str)] = &[
        (
            svc(
                "    secrets: [db_pasword]\n",
                "secrets:\n  db_password: {external: true}\n",
            ),
            "5:15",
            "secret \"db_pasword\" is not defined",
        ),
        (
            svc("", "secrets:\n  s: {file: ../outside}\n"),
            "6:13",
            "is outside the stack file's directory",
        ),
        (
            svc("", "secrets:\n  s: {file: ./missing}\n"),
            "6:13",
            "cannot read",
        ),
        (
            svc("", "secrets:\n  s: {environment: NOT_SET_ANYWHERE}\n"),
            "6:20",
            "NOT_SET_ANYWHERE is not set",
        ),
        (
            svc("", "secrets:\n  s: {}\n"),
            "6:6",
            "the secret has no value",
        ),
        (
            svc("", "secrets:\n  s: {external: true, environment: HOME}\n"),
            "6:6",
            "takes no",
        ),
        (
            svc("", "secrets:\n  s: {content: x}\n"),
            "6:7",
            "unknown key \"content\"",
        ),
        (
            svc(
                "    secrets: [{source: s, mode: 999}]\n",
                "secrets:\n  s: {external: true}\n",
            ),
            "5:33",
            "not a file mode",
        ),
        (
            svc(
                "    configs: [{source: c, uid: root}]\n",
                "configs:\n  c: {content: x}\n",
            ),
            "5:32",
            "not a numeric id",
        ),
        (
            svc(
                "    configs: [{target: /x}]\n",
                "configs:\n  c: {content: x}\n",
            ),
            "5:15",
            "missing source",
        ),
        (
            svc(
                "    secrets: [{source: s, target: ../../etc/passwd}]\n",
                "secrets:\n  s: {external: true}\n",
            ),
            "5:15",
            "is not a plain path to a file",
        ),
    ];
    for (src, at, msg) in cases {
        err(Case::src(src), at, msg);
    }
    // Over 500 KiB: refused with the size.
    let big = "x".repeat(500 * 1024 + 1);
    err(
        Case {
            src: &svc("", "secrets:\n  s: {file: ./big}\n"),
            files: &[("big", &big)],
            ..Case::default()
        },
        "6:13",
        "more than the 512000",
    );
}

#[test]
fn validate_spec_checks_secret_and_config_references() {
    let mut spec = stack_t(vec![("web", nginx())]);
    let web = spec.services.get_mut("web").unwrap();
    web.secrets.push(FileRef {
        source: "missing".into(),
        target: "/run/secrets/../../etc/passwd".into(),
        ..FileRef::default()
    });
    web.configs.push(FileRef {
        source: "c".into(),
        target: "/run/secrets/../../etc/passwd".into(),
        mode: Some(0o1777),
        ..FileRef::default()
    });
    spec.configs.insert(
        "c".into(),
        ObjectSpec {
            name: "t_c".into(),
            external: false,
        },
    );
    let errs = validate_spec(&spec).unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let text = text.join("\n");
    for want in [
        "services.web.secrets: secret \"missing\" is not defined",
        "services.web.secrets.target: \"/run/secrets/../../etc/passwd\" is not an absolute path to a file",
        "services.web.configs.target: two files are mounted at /run/secrets/../../etc/passwd",
        "services.web.configs.mode: 1777 is not a file mode",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

const HARDENED: &str = r#"name: t
services:
  web:
    image: nginx
    cap_add: [net_admin, CAP_SYS_TIME]
    cap_drop: [ALL]
    privileged: true
    read_only: true
    security_opt:
      - no-new-privileges:true
      - seccomp=profiles/strict.json
      - apparmor=docker-default
    sysctls:
      net.core.somaxconn: 1024
      kernel.shmmax: "68719476736"
    ulimits:
      nofile: {soft: 1024, hard: 4096}
      nproc: 512
      memlock: -1
    tmpfs:
      - /run
      - /tmp:size=64m,mode=1777,noexec
    pids_limit: 100
    userns_mode: host
    init: true
    volumes:
      - /srv/data:/data
  probe:
    image: busybox
    network_mode: host
    tmpfs: /scratch
    security_opt: [seccomp:unconfined, "no-new-privileges=false"]
"#;

/// Every hardening key read into its typed form, and the places of the keys the admission
/// policy judges recorded for a refusal to quote.
#[test]
fn hardening_keys_are_read_into_the_spec() {
    let (loaded, _d) = ok(Case {
        files: &[(
            "profiles/strict.json",
            "{\n  \"defaultAction\": \"SCMP_ACT_ERRNO\"\n}\n",
        )],
        ..Case::src(HARDENED)
    });
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let web = &loaded.spec.services["web"];
    let want = Hardening {
        cap_add: vec!["NET_ADMIN".into(), "SYS_TIME".into()],
        cap_drop: vec!["ALL".into()],
        privileged: true,
        read_only: true,
        no_new_privileges: true,
        seccomp: Some(Seccomp::Profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO"}"#.into(),
        )),
        apparmor: Some("docker-default".into()),
        sysctls: BTreeMap::from([
            ("kernel.shmmax".to_string(), "68719476736".to_string()),
            ("net.core.somaxconn".to_string(), "1024".to_string()),
        ]),
        ulimits: BTreeMap::from([
            ("memlock".to_string(), Ulimit { soft: -1, hard: -1 }),
            (
                "nofile".to_string(),
                Ulimit {
                    soft: 1024,
                    hard: 4096,
                },
            ),
            (
                "nproc".to_string(),
                Ulimit {
                    soft: 512,
                    hard: 512,
                },
            ),
        ]),
        tmpfs: vec![
            TmpfsMount {
                target: "/run".into(),
                ..TmpfsMount::default()
            },
            TmpfsMount {
                target: "/tmp".into(),
                size_bytes: Some(64 << 20),
                mode: Some(0o1777),
                options: vec!["noexec".into()],
            },
        ],
        pids_limit: Some(100),
        userns_mode: Some(UsernsMode::Host),
    };
    assert_eq!(web.hardening, want);
    assert_eq!(web.init, Some(true));
    assert_eq!(web.network_mode, None);
    let probe = &loaded.spec.services["probe"];
    assert_eq!(probe.network_mode, Some(NetworkMode::Host));
    assert_eq!(probe.hardening.seccomp, Some(Seccomp::Unconfined));
    assert!(!probe.hardening.no_new_privileges);
    assert_eq!(probe.hardening.tmpfs[0].target, "/scratch");
    // A service without these keys serialises as before (its instance hash is unchanged).
    let plain = serde_json::to_string(&ServiceSpec::default()).unwrap();
    assert!(
        !plain.contains("hardening") && !plain.contains("network_mode"),
        "{plain}"
    );

    for (field, at) in [
        ("services.web.privileged", "stack.yml:7:5"),
        ("services.web.cap_add", "stack.yml:5:5"),
        ("services.web.cap_add[1]", "stack.yml:5:26"),
        ("services.web.security_opt[1]", "stack.yml:11:9"),
        ("services.web.userns_mode", "stack.yml:24:5"),
        ("services.web.volumes[0]", "stack.yml:27:9"),
        ("services.probe.network_mode", "stack.yml:30:5"),
    ] {
        assert_eq!(
            loaded.sources.get(field).map(String::as_str),
            Some(at),
            "{field} in {:?}",
            loaded.sources
        );
    }
}

#[test]
fn hardening_errors_are_located() {
    let svc = |body: &str| format!("name: t\nservices:\n  web:\n    image: nginx\n{body}");
    let table: &[(String, &str, &str)] = &[
        (svc("    cap_add: [NET_ADMN]\n"), "5:15", "unknown capability \"NET_ADMN\""),
        (svc("    cap_drop: NET_RAW\n"), "5:15", "services.web.cap_drop: expected a list"),
        (svc("    privileged: sure\n"), "5:17", "expected a boolean"),
        (
            svc("    security_opt: [label=type:svirt]\n"),
            "5:20",
            "SELinux labels (\"label=type:svirt\") are not supported",
        ),
        (svc("    security_opt: [systempaths=unconfined]\n"), "5:20", "unsupported security option"),
        (svc("    security_opt: [seccomp=nope.json]\n"), "5:20", "nope.json: not found"),
        (svc("    security_opt: [seccomp=../../etc/profile.json]\n"), "5:20", "is outside the stack file's directory"),
        (svc("    sysctls: {kernel.hostname: x}\n"), "5:5", "is not a namespaced sysctl"),
        (svc("    sysctls: [net.core.somaxconn]\n"), "5:15", "has no value"),
        (svc("    ulimits: {nofiles: 10}\n"), "5:15", "unknown ulimit \"nofiles\""),
        (svc("    ulimits: {nofile: {soft: 10}}\n"), "5:23", "needs both soft and hard"),
        (svc("    ulimits: {nofile: {soft: 10, hard: 5}}\n"), "5:5", "soft 10 and hard 5 do not make a limit"),
        (svc("    ulimits: {nofile: many}\n"), "5:23", "expected an integer"),
        (svc("    tmpfs: [\"/run:size=lots\"]\n"), "5:13", "invalid size"),
        (svc("    tmpfs: [\"/run:exec,uid=0\"]\n"), "5:13", "unknown tmpfs option \"uid=0\""),
        (svc("    tmpfs: run\n"), "5:12", "is not an absolute path"),
        (svc("    tmpfs: [/run, /run]\n"), "5:5", "two tmpfs mounts at /run"),
        (svc("    pids_limit: 0\n"), "5:5", "0 is not a process limit"),
        (svc("    userns_mode: private\n"), "5:18", "unsupported userns_mode \"private\""),
        (svc("    network_mode: overlay\n"), "5:19", "unknown network_mode \"overlay\""),
        (
            svc("    network_mode: host\n    ports: [\"80:80\"]\n"),
            "6:5",
            "listens on the host's ports",
        ),
        (
            svc("    network_mode: host\n    sysctls: {net.ipv4.ip_forward: 1}\n"),
            "6:5",
            "would change the host's network",
        ),
        (
            "name: t\nservices:\n  job:\n    x-wharf: {driver: process}\n    command: [\"/bin/true\"]\n    read_only: true\n    cap_drop: [ALL]\n".to_string(),
            "7:5",
            "the process driver runs a native process and cannot apply cap_drop, read_only",
        ),
    ];
    for (src, at, msg) in table {
        err(Case::src(src), at, msg);
    }
    assert_eq!(
        hint_of(
            Case::src(&svc("    cap_add: [SYS_ADMN]\n")),
            "unknown capability"
        ),
        "did you mean \"SYS_ADMIN\"?"
    );
    // Modes Wharf does not run stay warnings, as before: the service joins its stack network.
    let (loaded, _d) = ok(Case::src(&svc("    network_mode: none\n")));
    assert_eq!(
        loaded.warnings[0].to_string(),
        "stack.yml:5:19: services.web.network_mode \"none\" is not supported by Wharf yet and is ignored: the service joins its stack's network"
    );
    assert_eq!(loaded.spec.services["web"].network_mode, None);
}

/// A hand-made spec is held to what a stack file is.
#[test]
fn validate_spec_checks_hardening() {
    let mut web = nginx();
    web.hardening.cap_add = vec!["net_admin".into()];
    web.hardening
        .ulimits
        .insert("nofile".into(), Ulimit { soft: 5, hard: 1 });
    web.hardening.seccomp = Some(Seccomp::Profile("not json".into()));
    web.hardening.tmpfs = vec![TmpfsMount {
        target: "/a/../etc".into(),
        ..TmpfsMount::default()
    }];
    let proc = ServiceSpec {
        driver: DriverKind::Process,
        command: Some(vec!["/bin/true".into()]),
        network_mode: Some(NetworkMode::Host),
        ..ServiceSpec::default()
    };
    let errs = validate_spec(&stack_t(vec![("web", web), ("job", proc)])).expect_err("invalid");
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "services.web.cap_add[0]",
        "services.web.ulimits.nofile",
        "services.web.security_opt",
        "services.web.tmpfs[0]",
        "services.job.network_mode",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
}
