//! What the driver tests share: reading and waiting on what a driver lists of one instance.

use std::time::Duration;

use wharf_agent::driver::{Driver, Observed};
use wharf_testkit::{Check, not_yet, wait_for};

/// What `d` lists of the instance `handle`, if it lists it.
pub async fn observed(d: &dyn Driver, handle: &str) -> anyhow::Result<Option<Observed>> {
    Ok(d.list().await?.into_iter().find(|o| o.handle == handle))
}

/// Waits up to `timeout` until `d` lists `handle` with `pred` true of it.
pub async fn wait_observed(
    d: &dyn Driver,
    handle: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Observed) -> bool,
) -> anyhow::Result<Observed> {
    wait_for(what, timeout, || async {
        match observed(d, handle).await {
            Ok(Some(o)) if pred(&o) => Check::Done(o),
            Ok(o) => not_yet(o),
            Err(e) => not_yet(e),
        }
    })
    .await
}
