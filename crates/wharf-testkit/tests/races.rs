//! Issue 8, "never lose, never duplicate": concurrent redeploys (new specs), scales, rollbacks and
//! restarts racing the rollouts they start, on an in-process cluster of three agents.
//!
//! Each seed picks the stack (two services, 3 to 6 replicas, one start-first and one stop-first),
//! a few concurrent tasks and their operations, and how slow the fake drivers are. A sampler
//! checks, every few milliseconds, what the agents ask of their drivers (every create), what the
//! fakes hold, and the store (instance records and the agents' reports):
//!
//! - (a) generations are never handed out twice: a (service, generation) always names the same
//!   slot on the same node, and a generation new in the store is above every one seen before;
//! - (b) nothing is adopted across specs: a (service, generation) always has one spec hash, in
//!   creates, in what a create returned, in the fakes, in instance records and in reports;
//! - (c) at the end, once the last deployment ended (successfully), each service runs exactly
//!   its replica count of instances, one per slot, on the current spec and record generation,
//!   and nothing else of it is left on any node.
//!
//! Every failure message names the seed. Rerun one with `cargo nextest run -p wharf-testkit
//! seed_07`; more seeds with `WHARF_RACE_SEEDS=100..200 cargo nextest run -p wharf-testkit
//! --run-ignored only many_seeds`.

use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use wharf_master::Master;
use wharf_master::model::{self, InstanceRecord, keys};
use wharf_testkit::inproc::{ClusterConfig, CreateLog, InProcCluster, fake_instances, is_conflict};
use wharf_types::{DeploymentState, NodeReport};

const STACK: &str = "race";
const SERVICES: [&str; 2] = ["web", "api"];
/// How often the sampler looks.
const SAMPLE: Duration = Duration::from_millis(5);
/// How long the last deployment may take once the operations are done (a few rollouts of six
/// instances, each step a pass of the deployer and of an agent: well under a second here).
const SETTLE: Duration = Duration::from_secs(15);

/// The per-seed choices.
#[derive(Clone, Debug)]
struct Plan {
    /// web (start-first), api (stop-first): replicas, parallelism.
    replicas: [u32; 2],
    parallelism: [u32; 2],
    drain_grace_ms: u64,
    driver_delay_ms: u64,
    /// Per task: (pause before, operation).
    tasks: Vec<Vec<(u64, Op)>>,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// A new spec (changed environment) for one service or both, maybe with new replicas.
    Deploy {
        service: Option<usize>,
        replicas: Option<u32>,
    },
    Scale(usize, u32),
    Rollback(usize),
    Restart(usize),
}

impl Plan {
    fn new(seed: u64) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tasks = Vec::new();
        for _ in 0..rng.random_range(2..=4) {
            let ops = (0..rng.random_range(3..=6))
                .map(|_| {
                    let svc = rng.random_range(0..2);
                    let op = match rng.random_range(0..10) {
                        0..=3 => Op::Deploy {
                            service: rng.random_bool(0.7).then_some(svc),
                            replicas: rng.random_bool(0.3).then(|| rng.random_range(3..=6)),
                        },
                        4..=5 => Op::Scale(svc, rng.random_range(3..=6)),
                        6..=7 => Op::Rollback(svc),
                        _ => Op::Restart(svc),
                    };
                    (rng.random_range(0..=120), op)
                })
                .collect();
            tasks.push(ops);
        }
        Plan {
            replicas: [rng.random_range(3..=6), rng.random_range(3..=6)],
            parallelism: [rng.random_range(1..=2), rng.random_range(1..=2)],
            drain_grace_ms: [0, 0, 20, 50][rng.random_range(0..4)],
            driver_delay_ms: [0, 2, 10][rng.random_range(0..3)],
            tasks,
        }
    }
}

/// What the next deploy sends: per service, its version (environment) and replicas.
#[derive(Clone, Debug)]
struct Model {
    version: [u64; 2],
    replicas: [u32; 2],
}

fn stack_yaml(plan: &Plan, m: &Model) -> String {
    let mut y = format!("name: {STACK}\nservices:\n");
    for (i, name) in SERVICES.iter().enumerate() {
        let order = if i == 0 { "start-first" } else { "stop-first" };
        let update = format!(
            "        parallelism: {}\n        order: {order}\n        monitor: 0s\n",
            plan.parallelism[i]
        );
        write!(
            y,
            "  {name}:\n    image: app:1\n    environment:\n      VERSION: \"{}\"\n    \
             x-wharf:\n      drain_grace: {}ms\n    deploy:\n      replicas: {}\n      \
             update_config:\n{update}      rollback_config:\n{update}",
            m.version[i], plan.drain_grace_ms, m.replicas[i]
        )
        .unwrap();
    }
    y
}

/// What one (service, generation) was first seen as.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Identity {
    slot: u32,
    node: String,
    spec_hash: String,
}

/// Everything the sampler learnt, and what it found wrong.
#[derive(Default)]
struct Seen {
    /// (service, generation) -> what it is, and where that was first seen.
    ids: BTreeMap<(String, u64), (Identity, String)>,
    /// Per service, the highest generation seen in the store's instance records so far.
    max_record_gen: BTreeMap<String, u64>,
    /// Every (service, generation) seen in the store's instance records so far.
    record_gens: BTreeSet<(String, u64)>,
    creates_read: usize,
    samples: u64,
    violations: Vec<String>,
}

impl Seen {
    fn identity(&mut self, service: &str, generation: u64, id: Identity, source: String) {
        match self.ids.get(&(service.to_string(), generation)) {
            None => {
                self.ids
                    .insert((service.to_string(), generation), (id, source));
            }
            Some((first, first_source)) if *first != id => {
                let moved = first.slot != id.slot || first.node != id.node;
                let what = match (moved, first.spec_hash != id.spec_hash) {
                    (true, true) => "(a+b) one generation handed out twice, with another spec",
                    (true, false) => "(a) one generation handed out twice",
                    // The same name again: a generation reused for its slot, or rewritten.
                    _ => "(a/b) one generation (one container name), two spec hashes",
                };
                let v = format!(
                    "{what}: {service} g{generation} was {first:?} ({first_source}), now {id:?} ({source})"
                );
                self.violation(v);
            }
            Some(_) => {}
        }
    }

    fn violation(&mut self, v: String) {
        if self.violations.len() < 20 && !self.violations.contains(&v) {
            self.violations.push(v);
        }
    }
}

/// One look at the creates, the fakes and the store.
async fn sample(
    seen: &Mutex<Seen>,
    master: &Master,
    creates: &CreateLog,
    drivers: &[(String, wharf_agent::driver::fake::FakeDriver)],
) -> anyhow::Result<()> {
    // The store first: records and reports are each read at one revision.
    let (kvs, rev) = master.store.range(keys::INSTANCES).await?;
    let records = kvs
        .iter()
        .map(|kv| model::decode::<InstanceRecord>(&kv.key, &kv.value))
        .collect::<Result<Vec<_>, _>>()?;
    let (kvs, _) = master.store.range(keys::STATUS).await?;
    let mut reports = Vec::new();
    for kv in kvs {
        let node = kv.key[keys::STATUS.len()..].to_string();
        let r: NodeReport = model::decode(&kv.key, &kv.value)?;
        reports.push((node, r));
    }
    let fakes = fake_instances(drivers);
    let mut s = seen.lock();
    s.samples += 1;
    let (new_creates, next) = creates.since(s.creates_read);
    s.creates_read = next;
    for c in new_creates {
        if let Some(got) = &c.got_spec_hash
            && *got != c.spec_hash
        {
            let v = format!(
                "(b) adopted across specs: {} on {} asked for spec {} and got the instance of spec {got}",
                c.name, c.node, c.spec_hash
            );
            s.violation(v);
        }
        let id = Identity {
            slot: c.slot,
            node: c.node.clone(),
            spec_hash: c.spec_hash.clone(),
        };
        s.identity(&c.service, c.generation, id, format!("create {}", c.name));
    }
    for f in &fakes {
        let spec = f.spec();
        let id = Identity {
            slot: spec.slot,
            node: f.node.clone(),
            spec_hash: spec.spec_hash.clone(),
        };
        let src = format!("fake {} {}", f.handle, spec.name());
        s.identity(&spec.service, spec.generation, id, src);
    }
    let mut new_max: BTreeMap<String, u64> = BTreeMap::new();
    for r in &records {
        let before = s.max_record_gen.get(&r.service).copied().unwrap_or(0);
        let first_time = !s.record_gens.contains(&(r.service.clone(), r.generation));
        if first_time && r.generation <= before {
            let v = format!(
                "(a) generations must only grow: {} slot {} got g{} after g{before} was seen (store revision {rev})",
                r.service, r.slot, r.generation
            );
            s.violation(v);
        }
        let m = new_max.entry(r.service.clone()).or_default();
        *m = (*m).max(r.generation);
        let id = Identity {
            slot: r.slot,
            node: r.node.clone(),
            spec_hash: r.spec_hash.clone(),
        };
        s.identity(&r.service, r.generation, id, format!("record {}", r.id()));
        if let Some(p) = &r.previous {
            let (hash, _) = r.previous_spec().expect("a previous placement has a spec");
            let id = Identity {
                slot: r.slot,
                node: p.node.clone(),
                spec_hash: hash.to_string(),
            };
            let src = format!("previous of record {} g{}", r.id(), r.generation);
            s.identity(&r.service, p.generation, id, src);
        }
    }
    for (svc, m) in new_max {
        let e = s.max_record_gen.entry(svc).or_default();
        *e = (*e).max(m);
    }
    for r in &records {
        s.record_gens.insert((r.service.clone(), r.generation));
        if let Some(p) = &r.previous {
            s.record_gens.insert((r.service.clone(), p.generation));
        }
    }
    for (node, rep) in &reports {
        for i in &rep.instances {
            let mut parts = i.id.splitn(3, '.');
            let (Some(_), Some(service), Some(slot)) = (parts.next(), parts.next(), parts.next())
            else {
                s.violation(format!("a report names instance {:?}", i.id));
                continue;
            };
            let Ok(slot) = slot.parse() else {
                s.violation(format!("a report names instance {:?}", i.id));
                continue;
            };
            let id = Identity {
                slot,
                node: node.clone(),
                spec_hash: i.spec_hash.clone(),
            };
            let src = format!("report of {node}: {} g{} {:?}", i.id, i.generation, i.state);
            s.identity(service, i.generation, id, src);
        }
    }
    Ok(())
}

/// Run one operation; `Ok(text)` for the log, `Err` for an answer no race explains.
async fn run_op(
    c: &InProcCluster,
    plan: &Plan,
    model: &Mutex<Model>,
    versions: &AtomicU64,
    op: Op,
) -> anyhow::Result<String> {
    let r = match op {
        Op::Deploy { service, replicas } => {
            let yaml = {
                let mut m = model.lock();
                for i in 0..2 {
                    if service.is_none_or(|s| s == i) {
                        m.version[i] = versions.fetch_add(1, Ordering::SeqCst);
                        if let Some(n) = replicas {
                            m.replicas[i] = n;
                        }
                    }
                }
                stack_yaml(plan, &m)
            };
            c.deploy(&yaml).await.map(|r| r.deployment_id)
        }
        op => {
            let client = &c.client;
            match op {
                Op::Scale(s, n) => client.scale_service(STACK, SERVICES[s], n).await,
                Op::Rollback(s) => client.rollback_service(STACK, SERVICES[s], None).await,
                Op::Restart(s) => client.restart_service(STACK, SERVICES[s]).await,
                Op::Deploy { .. } => unreachable!("handled above"),
            }
            .map(|r| r.deployment_id)
            .map_err(Into::into)
        }
    };
    match r {
        Ok(d) => Ok(format!(
            "{op:?} -> {}",
            d.as_deref().unwrap_or("no deployment")
        )),
        Err(e) if is_conflict(&e) => Ok(format!("{op:?} -> conflict: {e}")),
        Err(e) => Err(e.context(format!("{op:?}"))),
    }
}

/// (c): what the end state lacks, or `None` when every service runs exactly its replicas on its
/// current spec, one per slot, and nothing else of it is left.
async fn end_state_problems(c: &InProcCluster) -> anyhow::Result<Option<String>> {
    let mut problems = Vec::new();
    let fakes = c.fake_instances();
    for name in SERVICES {
        let (svc, _) = c
            .master
            .service(STACK, name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("service {name} is gone"))?;
        let records = c
            .master
            .instances(&keys::instances_of_service(STACK, name))
            .await?;
        let slots: Vec<u32> = records.iter().map(|r| r.slot).collect();
        let want: Vec<u32> = (0..svc.replicas).collect();
        if slots != want {
            problems.push(format!("{name}: records of slots {slots:?}, want {want:?}"));
        }
        for r in &records {
            if !r.is_current(&svc) || r.previous.is_some() {
                problems.push(format!(
                    "{name}: record of slot {} is g{} spec {} nonce {} previous {:?} (current: spec {} nonce {})",
                    r.slot,
                    r.generation,
                    r.spec_hash,
                    r.restart_nonce,
                    r.previous,
                    svc.spec_hash,
                    svc.restart_nonce
                ));
            }
        }
        let mine: Vec<_> = fakes.iter().filter(|f| f.spec().service == name).collect();
        let mut per_slot: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for f in &mine {
            let spec = f.spec();
            let record = records.iter().find(|r| r.slot == spec.slot);
            let ok = f.is_running()
                && spec.spec_hash == svc.spec_hash
                && record.is_some_and(|r| r.generation == spec.generation && r.node == f.node);
            if !ok {
                problems.push(format!(
                    "{name}: on {} {} is {:?} with spec {} (current {}; record {:?})",
                    f.node,
                    spec.name(),
                    f.state(),
                    spec.spec_hash,
                    svc.spec_hash,
                    record.map(|r| (r.generation, &r.node))
                ));
            }
            per_slot
                .entry(spec.slot)
                .or_default()
                .push(format!("{}@{}", spec.name(), f.node));
        }
        for slot in 0..svc.replicas {
            match per_slot.get(&slot).map(Vec::len) {
                Some(1) => {}
                _ => problems.push(format!(
                    "{name}: slot {slot} has {:?} (want one instance)",
                    per_slot.get(&slot)
                )),
            }
        }
    }
    Ok((!problems.is_empty()).then(|| problems.join("\n  ")))
}

async fn run_seed(seed: u64) {
    let start = Instant::now();
    let plan = Plan::new(seed);
    let config = ClusterConfig {
        // No failover here: a busy machine must not make a node look dead.
        master: wharf_master::MasterConfig {
            node_timeout: Duration::from_secs(10),
            ..Default::default()
        },
        driver_delay: Duration::from_millis(plan.driver_delay_ms),
        ..Default::default()
    };
    let c = InProcCluster::start(3, config)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: the cluster does not start: {e:#}"));
    let model = Mutex::new(Model {
        version: [0, 0],
        replicas: plan.replicas,
    });
    let versions = AtomicU64::new(1);
    let first = stack_yaml(&plan, &model.lock());
    c.deploy_and_wait(&first, SETTLE)
        .await
        .unwrap_or_else(|e| panic!("seed {seed}: the first deploy: {e:#}\nplan: {plan:#?}"));

    // The sampler, until told to stop (one more look after that).
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (seen, stop) = (seen.clone(), stop.clone());
        let (master, creates, drivers) = (c.master.clone(), c.create_log(), c.drivers());
        async move {
            loop {
                let last = stop.load(Ordering::SeqCst);
                if let Err(e) = sample(&seen, &master, &creates, &drivers).await {
                    seen.lock().violation(format!("sampling failed: {e:#}"));
                }
                if last {
                    return;
                }
                tokio::time::sleep(SAMPLE).await;
            }
        }
    });

    let log = Mutex::new(Vec::new());
    let tasks = plan.tasks.iter().enumerate().map(|(t, ops)| {
        let (c, plan, model, versions, log) = (&c, &plan, &model, &versions, &log);
        async move {
            for (pause, op) in ops {
                tokio::time::sleep(Duration::from_millis(*pause)).await;
                let at = start.elapsed().as_millis();
                let r = run_op(c, plan, model, versions, *op).await;
                let line = match &r {
                    Ok(s) => format!("{at:>5} ms task {t}: {s}"),
                    Err(e) => format!("{at:>5} ms task {t}: ERROR {e:#}"),
                };
                log.lock().push(line);
                r?;
            }
            anyhow::Ok(())
        }
    });
    let results = futures::future::join_all(tasks).await;
    let ops_done = start.elapsed();
    let log_text = || log.lock().join("\n");
    for r in results {
        if let Err(e) = r {
            panic!(
                "seed {seed}: an operation failed: {e:#}\nops:\n{}",
                log_text()
            );
        }
    }

    let end = c.wait_last_deployment(STACK, SETTLE).await;
    let converged = c
        .wait(
            "every service to run its replicas on its current spec",
            Duration::from_secs(5),
            || async {
                match end_state_problems(&c).await {
                    Ok(None) => wharf_testkit::Check::Done(()),
                    Ok(Some(p)) => wharf_testkit::Check::NotYet(Some(p)),
                    Err(e) => wharf_testkit::Check::NotYet(Some(format!("{e:#}"))),
                }
            },
        )
        .await;
    stop.store(true, Ordering::SeqCst);
    sampler.await.expect("the sampler panicked");
    let seen = seen.lock();
    let mut failures = Vec::new();
    if !seen.violations.is_empty() {
        failures.push(format!("violations:\n  {}", seen.violations.join("\n  ")));
    }
    match &end {
        Ok(d) if d.state == DeploymentState::Succeeded => {}
        Ok(d) => failures.push(format!(
            "the last deployment ended {:?}: {}",
            d.state,
            wharf_testkit::inproc::brief(d)
        )),
        Err(e) => failures.push(format!("{e:#}")),
    }
    if let Err(e) = &converged {
        failures.push(format!("(c) {e:#}"));
    }
    let generations: BTreeSet<_> = seen.ids.keys().collect();
    if !failures.is_empty() {
        panic!(
            "seed {seed}: {}\nplan: {plan:?}\nops:\n{}\n{} samples, {} creates, generations seen: {generations:?}",
            failures.join("\n"),
            log_text(),
            seen.samples,
            seen.creates_read,
        );
    }
    eprintln!(
        "seed {seed}: ok in {:.2}s (operations {:.2}s), {} samples, {} creates, {} generations",
        start.elapsed().as_secs_f64(),
        ops_done.as_secs_f64(),
        seen.samples,
        seen.creates_read,
        generations.len()
    );
}

macro_rules! seeds {
    ($($name:ident = $seed:expr),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                run_seed($seed).await;
            }
        )*
    };
}

seeds!(
    seed_00 = 0,
    seed_01 = 1,
    seed_02 = 2,
    seed_03 = 3,
    seed_04 = 4,
    seed_05 = 5,
    seed_06 = 6,
    seed_07 = 7,
    seed_08 = 8,
    seed_09 = 9,
    seed_10 = 10,
    seed_11 = 11,
    seed_12 = 12,
    seed_13 = 13,
    seed_14 = 14,
    seed_15 = 15,
    seed_16 = 16,
    seed_17 = 17,
    seed_18 = 18,
    seed_19 = 19,
);

/// More seeds, one after the other: `WHARF_RACE_SEEDS=100..200` (default `20..60`).
#[test]
#[ignore = "long: run on demand with WHARF_RACE_SEEDS"]
fn many_seeds() {
    let spec = std::env::var("WHARF_RACE_SEEDS").unwrap_or_else(|_| "20..60".to_string());
    let (a, b) = spec
        .split_once("..")
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .unwrap_or_else(|| panic!("WHARF_RACE_SEEDS={spec:?}: write FROM..TO"));
    for seed in a..b {
        // A runtime per seed: every task of a cluster ends with it.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        rt.block_on(run_seed(seed));
    }
}
