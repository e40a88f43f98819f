//! Deploys end to end on the real engine: idempotence, one-at-a-time replacement, scaling.

mod common;

use std::collections::BTreeMap;

use common::*;

/// Acceptance check 2: the same file twice changes nothing, not even a container id.
#[tokio::test(flavor = "multi_thread")]
async fn deploying_the_same_file_twice_changes_nothing() {
    testapp_image().await.expect("test image");
    let mut w = Wharf::start().await;
    let stack = unique_stack("idem");
    let file = w.stack_file(&stack, &testapp_stack(&stack, "web", 2, HEALTHCHECK));
    w.deploy(&file, 0);
    let before: BTreeMap<String, String> = containers(&stack).await.into_iter().map(|(n, id, _)| (n, id)).collect();
    assert_eq!(before.len(), 2, "two containers after the first deploy: {before:?}");

    let (out, _) = w.deploy(&file, 0);
    assert!(out.contains("no changes"), "second deploy should report no changes, got:\n{out}");
    let after: BTreeMap<String, String> = containers(&stack).await.into_iter().map(|(n, id, _)| (n, id)).collect();
    assert_eq!(before, after, "container ids changed on an idempotent deploy");
}
