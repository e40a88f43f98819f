//! `x-wharf: {auto_deploy: true}`: a service rolls (with its `update_config`) when the tag its
//! pinned image names moves in the cluster's registry. Level-triggered on the leader: each pass
//! compares every such service's digest with its tag's; the tag counts only if it was pushed
//! after the service's spec last changed, so a rollback to an older digest is not undone by the
//! next pass (the tag did not move since).

use std::time::Duration;

use wharf_types::ImageRef;

use crate::model::{ServiceRecord, keys};
use crate::mutate::Actor;
use crate::registry::TagRecord;
use crate::{Error, Master};

/// How often the tags are compared: a push rolls its services within this (plus a store read).
const EVERY: Duration = Duration::from_millis(500);

/// Run for as long as the process does; acts only while this master leads.
pub async fn run(m: Master) {
    loop {
        if m.role.leading()
            && let Err(e) = pass(&m).await
        {
            tracing::warn!(error = %e, "auto_deploy: comparing tags failed; again shortly");
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// The image `s` should run now, when its tag moved after its spec last changed.
pub fn moved(s: &ServiceRecord, tag: &TagRecord) -> Option<String> {
    if !s.spec.wharf.auto_deploy {
        return None;
    }
    let r = ImageRef::parse(s.spec.image.as_deref()?).filter(|r| r.in_cluster_registry(&[]))?;
    let changed_at = s.history.last().map_or(s.updated_at, |h| h.created_at);
    (r.digest.as_deref() != Some(tag.digest.as_str()) && tag.pushed_at > changed_at)
        .then(|| r.pinned(&tag.digest))
}

async fn pass(m: &Master) -> Result<(), Error> {
    let (services, _) = m.decoded::<ServiceRecord>(keys::SERVICES).await?;
    for s in services.iter().map(|d| &d.value) {
        if !s.spec.wharf.auto_deploy {
            continue;
        }
        let Some(r) = s.spec.image.as_deref().and_then(ImageRef::parse) else {
            continue;
        };
        let Some(tag) = m.registry_tag(&r.name, r.tag_or_latest()).await? else {
            continue;
        };
        let Some(image) = moved(s, &tag) else {
            continue;
        };
        let trigger = format!("push of {}:{} ({})", r.name, r.tag_or_latest(), tag.digest);
        tracing::info!(stack = %s.stack, service = %s.name, %image, "auto_deploy: the tag moved; rolling");
        let rolled = crate::api::services::service_operation_by(
            m,
            &Actor::named("registry"),
            "service.update",
            (&s.stack, &s.name),
            Some(trigger),
            |rec| {
                // Decided again on the record read in the transaction: it may have moved.
                let Some(image) = moved(rec, &tag) else {
                    return false;
                };
                let mut spec = (*rec.spec).clone();
                spec.image = Some(image);
                crate::api::services::change_spec(rec, spec, "auto_deploy")
            },
        )
        .await;
        if let Err(e) = rolled {
            tracing::warn!(stack = %s.stack, service = %s.name, error = %e.1.message, "auto_deploy: could not roll the service");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn service(image: &str, auto: bool, changed_at: u64) -> ServiceRecord {
        let mut spec = wharf_types::ServiceSpec {
            image: Some(image.to_string()),
            ..Default::default()
        };
        spec.wharf.auto_deploy = auto;
        let mut s = crate::testdata::service("web", spec);
        s.updated_at = changed_at;
        s.history.clear();
        s
    }

    fn tag(digest: &str, pushed_at: u64) -> TagRecord {
        TagRecord {
            digest: digest.to_string(),
            pushed_at,
        }
    }

    #[test]
    fn a_tag_pushed_after_the_last_change_rolls_only_auto_deploy_services() {
        let pinned = format!("wharf.local/shop/web:live@{D1}");
        let want = format!("wharf.local/shop/web:live@{D2}");
        let cases = [
            // (auto_deploy, tag digest, pushed at, service changed at) -> rolls to
            (true, D2, 20, 10, Some(want.as_str())),
            (true, D1, 20, 10, None),  // the tag names what runs
            (true, D2, 5, 10, None),   // pushed before the last change: a rollback stays
            (false, D2, 20, 10, None), // not followed
        ];
        for (auto, digest, pushed, changed, expect) in cases {
            let s = service(&pinned, auto, changed);
            assert_eq!(
                moved(&s, &tag(digest, pushed)).as_deref(),
                expect,
                "auto {auto}, tag {digest} pushed at {pushed}, changed at {changed}"
            );
        }
        // An image outside the cluster's registry is never followed.
        let other = service(&format!("docker.io/shop/web:live@{D1}"), true, 10);
        assert_eq!(moved(&other, &tag(D2, 20)), None);
    }
}
