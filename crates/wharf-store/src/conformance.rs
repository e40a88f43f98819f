//! Conformance suite: the behaviour every [`Store`] backend must show.
//!
//! [`run_all`] runs every check against one store and panics with the first failure. Each check is
//! also public and returns `Err(message)` saying what was expected and what happened. Checks work
//! under their own key prefix (which includes the revision they started at), so they can share one
//! store and run more than once against it. [`watch_compacted`] compacts the store's history, so it
//! runs last in [`run_all`].

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;

use crate::{
    CmpOp, Compare, EventKind, KeyValue, LeaseId, Op, OpResponse, Revision, Store, StoreError, Txn,
    TxnResponse, WatchBatch, WatchStream,
};

/// The outcome of one check: `Err` says what was expected.
pub type CheckResult = Result<(), String>;

/// How long a check waits for something that should happen promptly (a watch event).
const PROMPT: Duration = Duration::from_secs(10);
/// How long a lease check waits for an expiry.
const EXPIRY_WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(20);

/// Run every check; panics naming the first one that fails.
pub async fn run_all<S: Store>(store: &S) {
    if let Err(failures) = try_run_all(store).await {
        panic!("store conformance failed:\n{}", failures.join("\n"));
    }
}

/// Run every check, collecting failures as `"name: message"`.
pub async fn try_run_all<S: Store>(store: &S) -> Result<(), Vec<String>> {
    let mut failures = Vec::new();
    macro_rules! check {
        ($name:ident) => {
            if let Err(e) = $name(store).await {
                failures.push(format!("{}: {}", stringify!($name), e));
            }
        };
    }
    check!(revision_increments);
    check!(key_metadata);
    check!(get_and_range);
    check!(txn_compares);
    check!(txn_branches);
    check!(txn_read_ops);
    check!(delete_prefix);
    check!(txn_atomicity);
    check!(watch_replay);
    check!(watch_live);
    check!(watch_prefix_filter);
    check!(watch_delete_events);
    check!(lease_revoke);
    check!(lease_expiry);
    check!(lease_keep_alive);
    check!(watch_compacted);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

macro_rules! ensure_eq {
    ($actual:expr, $expected:expr, $what:expr) => {{
        let (actual, expected) = (&$actual, &$expected);
        if actual != expected {
            return Err(format!(
                "{}: expected {:?}, got {:?}",
                $what, expected, actual
            ));
        }
    }};
}

fn ok<T>(r: Result<T, StoreError>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: unexpected error: {e}"))
}

/// A fresh key prefix for one run of the check `name`.
async fn scope<S: Store>(store: &S, name: &str) -> Result<String, String> {
    let rev = ok(store.current_revision().await, "current_revision")?;
    Ok(format!("conformance/{name}/{rev}/"))
}

async fn put_rev<S: Store>(store: &S, key: &str, value: &[u8]) -> Result<Revision, String> {
    ok(store.put(key, value.to_vec()).await, &format!("put {key}"))
}

/// Runs `ops` in one transaction without compares; an error fails the check as `what`.
async fn then<S: Store>(
    store: &S,
    what: &str,
    ops: impl IntoIterator<Item = Op>,
) -> Result<TxnResponse, String> {
    ok(store.txn(Txn::new().then(ops)).await, what)
}

/// A put of `v` at `key`, attached to `lease`.
fn leased(key: impl Into<String>, lease: LeaseId) -> Op {
    Op::Put {
        key: key.into(),
        value: b"v".to_vec(),
        lease: Some(lease),
    }
}

async fn get_some<S: Store>(store: &S, key: &str) -> Result<KeyValue, String> {
    ok(store.get(key).await, &format!("get {key}"))?
        .ok_or_else(|| format!("expected key {key} to exist, it does not"))
}

async fn next_batch(stream: &mut WatchStream, what: &str) -> Result<WatchBatch, String> {
    match tokio::time::timeout(PROMPT, stream.next()).await {
        Err(_) => Err(format!(
            "{what}: expected a watch batch within {PROMPT:?}, got none"
        )),
        Ok(None) => Err(format!("{what}: expected a watch batch, the stream ended")),
        Ok(Some(Err(e))) => Err(format!("{what}: expected a watch batch, got error {e}")),
        Ok(Some(Ok(b))) => Ok(b),
    }
}

/// Poll `cond` until it returns true or `limit` passes.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F) -> CheckResult
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "expected {what} within {limit:?}, it did not happen"
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The keys of `kvs`, each without the prefix `p`.
fn keys_under(kvs: &[KeyValue], p: &str) -> Vec<String> {
    kvs.iter()
        .map(|kv| kv.key.trim_start_matches(p).to_string())
        .collect()
}

fn summary(b: &WatchBatch) -> Vec<(EventKind, String, Vec<u8>)> {
    b.events
        .iter()
        .map(|e| (e.kind.clone(), e.kv.key.clone(), e.kv.value.clone()))
        .collect()
}

/// Every write bumps the revision by one; reads and no-op writes leave it alone.
pub async fn revision_increments<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "revision").await?;
    let r0 = ok(store.current_revision().await, "current_revision")?;
    let r1 = put_rev(store, &format!("{p}a"), b"1").await?;
    ensure_eq!(r1, r0 + 1, "revision after a put");
    let r2 = put_rev(store, &format!("{p}b"), b"2").await?;
    ensure_eq!(r2, r1 + 1, "revision after a second put");
    ensure_eq!(
        ok(store.current_revision().await, "current_revision")?,
        r2,
        "current revision"
    );
    let resp = then(
        store,
        "read-only txn",
        [Op::Get {
            key: format!("{p}a"),
        }],
    )
    .await?;
    ensure_eq!(resp.revision, r2, "revision after a read-only txn");
    let existed = ok(
        store.delete(&format!("{p}missing")).await,
        "delete missing key",
    )?;
    ensure!(!existed, "expected delete of a missing key to report false");
    ensure_eq!(
        ok(store.current_revision().await, "current_revision")?,
        r2,
        "revision after a no-op delete"
    );
    let resp = then(
        store,
        "two-put txn",
        [Op::put(format!("{p}c"), "3"), Op::put(format!("{p}d"), "4")],
    )
    .await?;
    ensure_eq!(
        resp.revision,
        r2 + 1,
        "one revision for a txn with two puts"
    );
    let (c, d) = (
        get_some(store, &format!("{p}c")).await?,
        get_some(store, &format!("{p}d")).await?,
    );
    ensure_eq!(
        (c.mod_revision, d.mod_revision),
        (r2 + 1, r2 + 1),
        "mod revisions of one txn"
    );
    Ok(())
}

/// create_revision, mod_revision and version follow etcd.
pub async fn key_metadata<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "metadata").await?;
    let k = format!("{p}k");
    let r1 = put_rev(store, &k, b"v1").await?;
    let kv = get_some(store, &k).await?;
    ensure_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.lease
        ),
        (b"v1".as_slice(), r1, r1, 1, None),
        "(value, create, mod, version, lease) after the first put"
    );
    let r2 = put_rev(store, &k, b"v2").await?;
    let kv = get_some(store, &k).await?;
    ensure_eq!(
        (
            kv.value.as_slice(),
            kv.create_revision,
            kv.mod_revision,
            kv.version
        ),
        (b"v2".as_slice(), r1, r2, 2),
        "(value, create, mod, version) after the second put"
    );
    ensure!(
        ok(store.delete(&k).await, "delete")?,
        "expected delete of an existing key to report true"
    );
    ensure!(
        ok(store.get(&k).await, "get")?.is_none(),
        "expected {k} to be gone after delete"
    );
    let r4 = put_rev(store, &k, b"v3").await?;
    let kv = get_some(store, &k).await?;
    ensure_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r4, r4, 1),
        "(create, mod, version) after re-creating a deleted key"
    );
    Ok(())
}

/// get and range: prefix selection, key order, read revision.
pub async fn get_and_range<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "range").await?;
    ensure!(
        ok(store.get(&format!("{p}nope")).await, "get")?.is_none(),
        "expected a missing key to read as None"
    );
    for k in ["m", "a/2", "z", "a/10", "a", "a/1", "ab"] {
        put_rev(store, &format!("{p}{k}"), k.as_bytes()).await?;
    }
    put_rev(store, &format!("{}x", p.trim_end_matches('/')), b"outside").await?;
    let (kvs, rev) = ok(store.range(&p).await, "range")?;
    let keys = keys_under(&kvs, &p);
    ensure_eq!(
        keys,
        ["a", "a/1", "a/10", "a/2", "ab", "m", "z"],
        "keys of range(prefix) in key order"
    );
    ensure_eq!(
        rev,
        ok(store.current_revision().await, "current_revision")?,
        "range revision"
    );
    let (kvs, _) = ok(store.range(&format!("{p}a/")).await, "range")?;
    let keys = keys_under(&kvs, &p);
    ensure_eq!(
        keys,
        ["a/1", "a/10", "a/2"],
        "keys of range(prefix + \"a/\")"
    );
    ensure!(
        kvs.iter()
            .all(|kv| kv.value == kv.key.trim_start_matches(&p).as_bytes()),
        "expected range values to match what was put"
    );
    let (kvs, _) = ok(store.range(&format!("{p}none/")).await, "range")?;
    ensure!(
        kvs.is_empty(),
        "expected an empty range for an unused prefix, got {} keys",
        kvs.len()
    );
    Ok(())
}

/// Every compare target with every operator, on an existing and a missing key.
pub async fn txn_compares<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "compares").await?;
    let k = format!("{p}k");
    let missing = format!("{p}missing");
    let r1 = put_rev(store, &k, b"m").await?;
    let r2 = put_rev(store, &k, b"m").await?; // version 2, create r1, mod r2, value "m"
    use CmpOp::*;
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::missing(&missing), true),
        (Compare::missing(&k), false),
        (Compare::exists(&k), true),
        (Compare::exists(&missing), false),
        (Compare::Version(k.clone(), Equal, 2), true),
        (Compare::Version(k.clone(), Equal, 1), false),
        (Compare::Version(k.clone(), NotEqual, 1), true),
        (Compare::Version(k.clone(), NotEqual, 2), false),
        (Compare::Version(k.clone(), Less, 3), true),
        (Compare::Version(k.clone(), Less, 2), false),
        (Compare::Version(k.clone(), Greater, 1), true),
        (Compare::Version(k.clone(), Greater, 2), false),
        (Compare::Version(missing.clone(), Less, 1), true),
        (Compare::ModRevision(k.clone(), Equal, r2), true),
        (Compare::ModRevision(k.clone(), Equal, r1), false),
        (Compare::ModRevision(k.clone(), NotEqual, r1), true),
        (Compare::ModRevision(k.clone(), Less, r2 + 1), true),
        (Compare::ModRevision(k.clone(), Less, r2), false),
        (Compare::ModRevision(k.clone(), Greater, r1), true),
        (Compare::ModRevision(k.clone(), Greater, r2), false),
        (Compare::unchanged_since(&k, r2), true),
        (Compare::unchanged_since(&k, r1), false),
        (Compare::unchanged_since(&missing, 0), true),
        (Compare::CreateRevision(k.clone(), Equal, r1), true),
        (Compare::CreateRevision(k.clone(), NotEqual, r1), false),
        (Compare::CreateRevision(k.clone(), Less, r2), true),
        (Compare::CreateRevision(k.clone(), Greater, r1), false),
        (Compare::CreateRevision(missing.clone(), Equal, 0), true),
        (Compare::Value(k.clone(), Equal, b"m".to_vec()), true),
        (Compare::Value(k.clone(), Equal, b"x".to_vec()), false),
        (Compare::Value(k.clone(), NotEqual, b"x".to_vec()), true),
        (Compare::Value(k.clone(), NotEqual, b"m".to_vec()), false),
        (Compare::Value(k.clone(), Less, b"n".to_vec()), true),
        (Compare::Value(k.clone(), Less, b"m".to_vec()), false),
        (Compare::Value(k.clone(), Greater, b"l".to_vec()), true),
        (Compare::Value(k.clone(), Greater, b"mm".to_vec()), false),
        (Compare::Value(missing.clone(), Equal, Vec::new()), false),
        (
            Compare::Value(missing.clone(), NotEqual, b"x".to_vec()),
            false,
        ),
        (Compare::Value(missing.clone(), Less, b"x".to_vec()), false),
        (Compare::Value(missing.clone(), Greater, Vec::new()), false),
    ];
    for (c, expected) in cases {
        let resp = ok(store.txn(Txn::new().when([c.clone()])).await, "txn")?;
        ensure_eq!(resp.succeeded, expected, format!("result of {c:?}"));
    }
    // Several compares: all must hold.
    let both = Txn::new().when([Compare::exists(&k), Compare::missing(&missing)]);
    ensure!(
        ok(store.txn(both).await, "txn")?.succeeded,
        "expected two true compares to succeed"
    );
    let one_false = Txn::new().when([Compare::exists(&k), Compare::exists(&missing)]);
    ensure!(
        !ok(store.txn(one_false).await, "txn")?.succeeded,
        "expected a false compare among true ones to fail the txn"
    );
    Ok(())
}

/// The success branch runs when every compare holds, the failure branch otherwise.
pub async fn txn_branches<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "branches").await?;
    let (k, yes, no) = (format!("{p}k"), format!("{p}yes"), format!("{p}no"));
    let txn = || {
        Txn::new()
            .when([Compare::missing(&k)])
            .then([Op::put(&k, "created"), Op::put(&yes, "1")])
            .otherwise([Op::put(&no, "1")])
    };
    let first = ok(store.txn(txn()).await, "first txn")?;
    ensure!(
        first.succeeded,
        "expected the first create-if-missing txn to succeed"
    );
    ensure_eq!(first.responses.len(), 2, "responses of the success branch");
    ensure!(
        ok(store.get(&no).await, "get")?.is_none(),
        "expected the failure branch not to run"
    );
    let second = ok(store.txn(txn()).await, "second txn")?;
    ensure!(
        !second.succeeded,
        "expected the second create-if-missing txn to fail"
    );
    ensure_eq!(second.responses.len(), 1, "responses of the failure branch");
    ensure_eq!(
        second.revision,
        first.revision + 1,
        "revision after the failure branch wrote"
    );
    ensure_eq!(
        get_some(store, &k).await?.value,
        b"created".to_vec(),
        "value after the failure branch"
    );
    get_some(store, &no).await?;
    let empty = ok(
        store
            .txn(Txn::new().when([Compare::exists(format!("{p}nothing"))]))
            .await,
        "txn",
    )?;
    ensure!(
        !empty.succeeded && empty.responses.is_empty(),
        "expected a failed txn with no failure ops to return no responses"
    );
    ensure_eq!(
        empty.revision,
        second.revision,
        "revision after a txn that wrote nothing"
    );
    Ok(())
}

/// Responses of Put, Delete, Get and Range inside a txn; reads see earlier writes of the txn.
pub async fn txn_read_ops<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "readops").await?;
    let (a, b) = (format!("{p}r/a"), format!("{p}r/b"));
    let r1 = put_rev(store, &a, b"old").await?;
    let resp = then(
        store,
        "txn",
        [
            Op::Get { key: a.clone() },
            Op::Get {
                key: format!("{p}r/none"),
            },
            Op::put(&a, "new"),
            Op::put(&b, "b"),
            Op::Range {
                prefix: format!("{p}r/"),
            },
            Op::delete(format!("{p}r/none")),
        ],
    )
    .await?;
    let r2 = r1 + 1;
    ensure_eq!(resp.revision, r2, "txn revision");
    ensure_eq!(resp.responses.len(), 6, "number of responses");
    match &resp.responses[0] {
        OpResponse::Get(Some(kv)) => ensure_eq!(
            (kv.value.as_slice(), kv.mod_revision),
            (b"old".as_slice(), r1),
            "Op::Get response (value, mod)"
        ),
        other => {
            return Err(format!(
                "Op::Get of an existing key: expected Get(Some), got {other:?}"
            ));
        }
    }
    ensure_eq!(
        resp.responses[1],
        OpResponse::Get(None),
        "Op::Get of a missing key"
    );
    match &resp.responses[2] {
        OpResponse::Put { prev: Some(prev) } => {
            ensure_eq!(prev.value, b"old".to_vec(), "Put prev value")
        }
        other => {
            return Err(format!(
                "Put over an existing key: expected Put {{ prev: Some }}, got {other:?}"
            ));
        }
    }
    ensure_eq!(
        resp.responses[3],
        OpResponse::Put { prev: None },
        "Put of a new key"
    );
    match &resp.responses[4] {
        OpResponse::Range(kvs) => {
            let got: Vec<(&str, &[u8], Revision)> = kvs
                .iter()
                .map(|kv| (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision))
                .collect();
            let want: Vec<(&str, &[u8], Revision)> = vec![
                (a.as_str(), b"new".as_slice(), r2),
                (b.as_str(), b"b".as_slice(), r2),
            ];
            ensure_eq!(got, want, "Op::Range after puts in the same txn");
        }
        other => return Err(format!("Op::Range: expected Range, got {other:?}")),
    }
    ensure_eq!(
        resp.responses[5],
        OpResponse::Delete { deleted: 0 },
        "delete of a missing key"
    );
    let resp = then(store, "txn", [Op::delete(&a)]).await?;
    ensure_eq!(
        resp.responses,
        vec![OpResponse::Delete { deleted: 1 }],
        "delete of an existing key"
    );
    Ok(())
}

/// DeletePrefix removes exactly the keys under the prefix, in one revision.
pub async fn delete_prefix<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "delprefix").await?;
    for k in ["d/1", "d/2", "d/3/x", "d", "e/1"] {
        put_rev(store, &format!("{p}{k}"), b"v").await?;
    }
    let before = ok(store.current_revision().await, "current_revision")?;
    let mut watch = ok(store.watch(&p, before + 1).await, "watch")?;
    let under_d = Op::DeletePrefix {
        prefix: format!("{p}d/"),
    };
    let resp = then(store, "txn", [under_d.clone()]).await?;
    ensure_eq!(
        resp.responses,
        vec![OpResponse::Delete { deleted: 3 }],
        "DeletePrefix response"
    );
    ensure_eq!(resp.revision, before + 1, "one revision for DeletePrefix");
    let (kvs, _) = ok(store.range(&p).await, "range")?;
    let keys = keys_under(&kvs, &p);
    ensure_eq!(keys, ["d", "e/1"], "keys left after DeletePrefix");
    let batch = next_batch(&mut watch, "DeletePrefix events").await?;
    ensure_eq!(
        batch.revision,
        before + 1,
        "revision of the DeletePrefix batch"
    );
    let kinds: Vec<(EventKind, String)> = batch
        .events
        .iter()
        .map(|e| (e.kind.clone(), e.kv.key.trim_start_matches(&p).to_string()))
        .collect();
    ensure_eq!(
        kinds,
        vec![
            (EventKind::Delete, "d/1".to_string()),
            (EventKind::Delete, "d/2".to_string()),
            (EventKind::Delete, "d/3/x".to_string())
        ],
        "DeletePrefix events"
    );
    let resp = then(store, "txn", [under_d]).await?;
    ensure_eq!(
        resp.responses,
        vec![OpResponse::Delete { deleted: 0 }],
        "DeletePrefix of nothing"
    );
    ensure_eq!(
        resp.revision,
        before + 1,
        "revision after a DeletePrefix that deleted nothing"
    );
    Ok(())
}

/// A failed compare writes nothing from the success branch; a failing op rolls back the whole txn.
pub async fn txn_atomicity<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "atomic").await?;
    let k = format!("{p}k");
    let r1 = put_rev(store, &k, b"v").await?;
    let resp = ok(
        store
            .txn(
                Txn::new()
                    .when([
                        Compare::exists(&k),
                        Compare::Value(k.clone(), CmpOp::Equal, b"other".to_vec()),
                    ])
                    .then([
                        Op::put(format!("{p}a"), "1"),
                        Op::delete(&k),
                        Op::put(format!("{p}b"), "1"),
                    ]),
            )
            .await,
        "txn",
    )?;
    ensure!(
        !resp.succeeded,
        "expected the txn with a false compare to fail"
    );
    ensure_eq!(
        resp.revision,
        r1,
        "revision after a failed txn without failure ops"
    );
    let (kvs, _) = ok(store.range(&p).await, "range")?;
    ensure_eq!(kvs.len(), 1, "keys after a failed txn (only the original)");
    // A put with an unknown lease fails the txn: earlier ops of the same txn are rolled back.
    let unknown = 0x7eed_beef_i64;
    let res = store
        .txn(Txn::new().then([
            Op::put(format!("{p}c"), "1"),
            Op::Put {
                key: format!("{p}d"),
                value: b"1".to_vec(),
                lease: Some(unknown),
            },
        ]))
        .await;
    ensure!(
        matches!(res, Err(StoreError::LeaseNotFound(id)) if id == unknown),
        "expected a put with an unknown lease to fail with LeaseNotFound({unknown}), got {res:?}"
    );
    ensure!(
        ok(store.get(&format!("{p}c")).await, "get")?.is_none(),
        "expected the put before the failing op to be rolled back"
    );
    ensure_eq!(
        ok(store.current_revision().await, "current_revision")?,
        r1,
        "revision after a rolled-back txn"
    );
    Ok(())
}

/// Watching from a past revision replays every change since, in order, then goes live.
pub async fn watch_replay<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "replay").await?;
    let r1 = put_rev(store, &format!("{p}a"), b"1").await?;
    let r2 = put_rev(store, &format!("{p}b"), b"2").await?;
    let r3 = put_rev(store, &format!("{p}a"), b"3").await?;
    let resp = then(
        store,
        "txn",
        [Op::put(format!("{p}z"), "z"), Op::put(format!("{p}y"), "y")],
    )
    .await?;
    let r4 = resp.revision;
    let mut w = ok(store.watch(&p, r2).await, "watch")?;
    let b = next_batch(&mut w, "replay").await?;
    ensure_eq!(b.revision, r2, "first replayed revision");
    ensure_eq!(
        summary(&b),
        vec![(EventKind::Put, format!("{p}b"), b"2".to_vec())],
        "events of the first replayed batch"
    );
    let b = next_batch(&mut w, "replay").await?;
    ensure_eq!(b.revision, r3, "second replayed revision");
    let kv = &b.events[0].kv;
    ensure_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r3, 2),
        "replayed (create, mod, version)"
    );
    let b = next_batch(&mut w, "replay").await?;
    ensure_eq!(b.revision, r4, "third replayed revision");
    ensure_eq!(
        summary(&b),
        vec![
            (EventKind::Put, format!("{p}y"), b"y".to_vec()),
            (EventKind::Put, format!("{p}z"), b"z".to_vec())
        ],
        "events of a two-key txn, in key order"
    );
    let r5 = put_rev(store, &format!("{p}c"), b"5").await?;
    let b = next_batch(&mut w, "live after replay").await?;
    ensure_eq!(b.revision, r5, "first live revision after replay");
    Ok(())
}

/// Watching from 0 sees only changes made after the watch started.
pub async fn watch_live<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "live").await?;
    put_rev(store, &format!("{p}before"), b"0").await?;
    let mut w = ok(store.watch(&p, 0).await, "watch")?;
    let r1 = put_rev(store, &format!("{p}after"), b"1").await?;
    let b = next_batch(&mut w, "live").await?;
    ensure_eq!(b.revision, r1, "revision of the first live batch");
    ensure_eq!(
        summary(&b),
        vec![(EventKind::Put, format!("{p}after"), b"1".to_vec())],
        "events of the first live batch"
    );
    let kv = &b.events[0].kv;
    ensure_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r1, 1),
        "live event (create, mod, version)"
    );
    let r2 = put_rev(store, &format!("{p}after"), b"2").await?;
    let b = next_batch(&mut w, "live").await?;
    ensure_eq!(b.revision, r2, "revision of the second live batch");
    Ok(())
}

/// A watch only sees keys under its prefix; batches without such keys are not sent.
pub async fn watch_prefix_filter<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "filter").await?;
    let start = ok(store.current_revision().await, "current_revision")? + 1;
    let mut w = ok(store.watch(&format!("{p}in/"), start).await, "watch")?;
    put_rev(store, &format!("{p}out/1"), b"x").await?;
    put_rev(store, &format!("{p}in"), b"x").await?; // not under "in/"
    let mixed = then(
        store,
        "txn",
        [
            Op::put(format!("{p}out/2"), "x"),
            Op::put(format!("{p}in/1"), "y"),
        ],
    )
    .await?;
    put_rev(store, &format!("{p}out/3"), b"x").await?;
    let r = put_rev(store, &format!("{p}in/2"), b"z").await?;
    let b = next_batch(&mut w, "filtered").await?;
    ensure_eq!(b.revision, mixed.revision, "first batch under the prefix");
    ensure_eq!(
        summary(&b),
        vec![(EventKind::Put, format!("{p}in/1"), b"y".to_vec())],
        "events of a mixed txn (only the prefix)"
    );
    let b = next_batch(&mut w, "filtered").await?;
    ensure_eq!(
        b.revision,
        r,
        "second batch under the prefix (other revisions skipped)"
    );
    Ok(())
}

/// Deletes arrive as Delete events: empty value, mod_revision = the delete's revision.
pub async fn watch_delete_events<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "delevents").await?;
    let k = format!("{p}k");
    put_rev(store, &k, b"v").await?;
    let mut w = ok(store.watch(&p, 0).await, "watch")?;
    ok(store.delete(&k).await, "delete")?;
    let rev = ok(store.current_revision().await, "current_revision")?;
    let b = next_batch(&mut w, "delete").await?;
    ensure_eq!(b.revision, rev, "revision of the delete batch");
    ensure_eq!(b.events.len(), 1, "events in the delete batch");
    let ev = &b.events[0];
    ensure_eq!(ev.kind, EventKind::Delete, "event kind");
    ensure_eq!(
        (
            ev.kv.key.as_str(),
            ev.kv.value.is_empty(),
            ev.kv.mod_revision
        ),
        (k.as_str(), true, rev),
        "delete event (key, empty value, mod)"
    );
    Ok(())
}

/// Revoking a lease deletes its keys in one revision; the lease is gone afterwards.
pub async fn lease_revoke<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "leaserevoke").await?;
    let lease = ok(
        store.lease_grant(Duration::from_secs(600)).await,
        "lease_grant",
    )?;
    let put = |k: &str| leased(format!("{p}{k}"), lease);
    then(store, "put with lease", [put("a"), put("b")]).await?;
    put_rev(store, &format!("{p}free"), b"v").await?;
    ensure_eq!(
        get_some(store, &format!("{p}a")).await?.lease,
        Some(lease),
        "lease of a key put with it"
    );
    let mut w = ok(store.watch(&p, 0).await, "watch")?;
    ok(store.lease_revoke(lease).await, "lease_revoke")?;
    let rev = ok(store.current_revision().await, "current_revision")?;
    let (kvs, _) = ok(store.range(&p).await, "range")?;
    let keys: Vec<&str> = kvs.iter().map(|kv| kv.key.trim_start_matches(&p)).collect();
    ensure_eq!(keys, ["free"], "keys left after revoking the lease");
    let b = next_batch(&mut w, "revoke").await?;
    ensure_eq!(b.revision, rev, "revision of the revoke batch");
    ensure_eq!(
        summary(&b),
        vec![
            (EventKind::Delete, format!("{p}a"), Vec::new()),
            (EventKind::Delete, format!("{p}b"), Vec::new())
        ],
        "one batch deleting both lease keys"
    );
    let res = store.lease_keep_alive(lease).await;
    ensure!(
        matches!(res, Err(StoreError::LeaseNotFound(_))),
        "expected keep_alive of a revoked lease to fail with LeaseNotFound, got {res:?}"
    );
    let res = store.lease_revoke(lease).await;
    ensure!(
        matches!(res, Err(StoreError::LeaseNotFound(_))),
        "expected a second revoke to fail with LeaseNotFound, got {res:?}"
    );
    let res = store.txn(Txn::new().then([put("c")])).await;
    ensure!(
        matches!(res, Err(StoreError::LeaseNotFound(id)) if id == lease),
        "expected a put with a revoked lease to fail with LeaseNotFound, got {res:?}"
    );
    Ok(())
}

/// A lease that is not kept alive expires and its keys vanish.
pub async fn lease_expiry<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "leaseexpiry").await?;
    let k = format!("{p}k");
    let lease = ok(
        store.lease_grant(Duration::from_millis(300)).await,
        "lease_grant",
    )?;
    then(store, "put with lease", [leased(&k, lease)]).await?;
    wait_until(
        EXPIRY_WAIT,
        "the key of a 300ms lease to vanish",
        || async { Ok(ok(store.get(&k).await, "get")?.is_none()) },
    )
    .await?;
    let res = store.lease_keep_alive(lease).await;
    ensure!(
        matches!(res, Err(StoreError::LeaseNotFound(_))),
        "expected keep_alive of an expired lease to fail with LeaseNotFound, got {res:?}"
    );
    Ok(())
}

/// keep_alive restarts the countdown: a lease kept alive for several TTLs keeps its keys.
pub async fn lease_keep_alive<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "leasekeepalive").await?;
    let k = format!("{p}k");
    let ttl = Duration::from_secs(2);
    let lease = ok(store.lease_grant(ttl).await, "lease_grant")?;
    then(store, "put with lease", [leased(&k, lease)]).await?;
    let until = tokio::time::Instant::now() + ttl * 2;
    while tokio::time::Instant::now() < until {
        ok(store.lease_keep_alive(lease).await, "lease_keep_alive")?;
        ensure!(
            ok(store.get(&k).await, "get")?.is_some(),
            "expected the key of a lease kept alive every ttl/8 to stay"
        );
        tokio::time::sleep(ttl / 8).await;
    }
    wait_until(
        EXPIRY_WAIT,
        "the key to vanish once keep-alives stop",
        || async { Ok(ok(store.get(&k).await, "get")?.is_none()) },
    )
    .await
}

/// Watching from a compacted revision fails with Compacted; from the oldest kept one it works.
pub async fn watch_compacted<S: Store>(store: &S) -> CheckResult {
    let p = scope(store, "compacted").await?;
    let r1 = put_rev(store, &format!("{p}a"), b"1").await?;
    let r2 = put_rev(store, &format!("{p}b"), b"2").await?;
    ok(store.compact(r2).await, "compact")?;
    match store.watch(&p, r1).await {
        Err(StoreError::Compacted { requested, oldest }) => {
            ensure_eq!(requested, r1, "Compacted.requested");
            ensure!(
                oldest > r1 && oldest <= r2,
                "expected Compacted.oldest in {}..={r2}, got {oldest}",
                r1 + 1
            );
        }
        Err(e) => {
            return Err(format!(
                "expected Compacted watching from a compacted revision, got error {e}"
            ));
        }
        Ok(_) => {
            return Err(
                "expected Compacted watching from a compacted revision, got a stream".to_string(),
            );
        }
    }
    let mut w = ok(
        store.watch(&p, r2).await,
        "watch from the compaction revision",
    )?;
    let b = next_batch(&mut w, "after compaction").await?;
    ensure_eq!(
        b.revision,
        r2,
        "first batch watching from the compaction revision"
    );
    Ok(())
}
