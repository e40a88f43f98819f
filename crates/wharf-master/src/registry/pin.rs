//! Deploy by digest: a deploy pins every image of the cluster's registry to the digest its tag
//! names at that moment (`wharf.local/name:tag@digest`), so every node runs the same bytes and
//! the service's history (what a rollback restores) holds digests, not tags that moved since.

use wharf_types::{ImageRef, StackSpec};

use super::path::Digest;
use crate::{Error, Master};

/// Why an image of the cluster's registry cannot be pinned: its tag or digest is not there.
#[derive(Debug)]
pub struct Unpinned {
    pub service: String,
    pub image: String,
    pub why: String,
}

impl Master {
    /// Pin every `image:` of `spec` that names the cluster's registry (`wharf.local`, or one of
    /// the hosts users push to it under); the rest is left as written. A reference that already
    /// has a digest keeps it (checked to be in the repository).
    pub async fn pin_images(&self, spec: &mut StackSpec) -> Result<Result<(), Unpinned>, Error> {
        for (service, svc) in spec.services.iter_mut() {
            if svc.build.is_some() {
                continue; // built on the node, not pulled
            }
            let Some(image) = svc.image.as_deref() else {
                continue;
            };
            match self.pin_image(service, image).await? {
                Ok(Some(pinned)) => svc.image = Some(pinned),
                Ok(None) => {}
                Err(u) => return Ok(Err(u)),
            }
        }
        Ok(Ok(()))
    }

    /// `image` of `service` pinned, when it names the cluster's registry (`None`: it does not).
    pub async fn pin_image(
        &self,
        service: &str,
        image: &str,
    ) -> Result<Result<Option<String>, Unpinned>, Error> {
        let hosts = match &self.registry {
            Some(r) => &r.hosts,
            None => return Ok(Ok(None)),
        };
        let Some(r) = ImageRef::parse(image).filter(|r| r.in_cluster_registry(hosts)) else {
            return Ok(Ok(None));
        };
        let unpinned = |why: String| Unpinned {
            service: service.to_string(),
            image: image.to_string(),
            why,
        };
        let digest = match &r.digest {
            Some(d) => d.clone(),
            None => match self.registry_tag(&r.name, r.tag_or_latest()).await? {
                Some(t) => t.digest,
                None => {
                    return Ok(Err(unpinned(format!(
                        "the cluster's registry has no tag {} in {}",
                        r.tag_or_latest(),
                        r.name
                    ))));
                }
            },
        };
        let Ok(d) = Digest::parse(&digest) else {
            return Ok(Err(unpinned(format!("{digest} is not a digest"))));
        };
        if self.registry_manifest(&r.name, &d).await?.is_none() {
            return Ok(Err(unpinned(format!(
                "the cluster's registry has no manifest {digest} in {}",
                r.name
            ))));
        }
        Ok(Ok(Some(match (&r.tag, &r.digest) {
            (None, Some(_)) => format!("{}/{}@{digest}", wharf_types::CLUSTER_REGISTRY, r.name),
            _ => r.pinned(&digest),
        })))
    }
}
