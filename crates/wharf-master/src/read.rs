//! Typed reads of the store: stacks, services, instances and the agents' reports.

use std::collections::BTreeMap;
use wharf_store::Decoded;

use wharf_types::{InstanceReport, NodeReport};

use crate::model::{self, InstanceRecord, NodeRecord, ServiceRecord, StackRecord, keys};
use crate::{Error, Master};

impl Master {
    pub async fn stack(&self, stack: &str) -> Result<Option<(StackRecord, u64)>, Error> {
        let key = keys::stack(stack);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some((model::decode(&key, &kv.value)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    pub async fn stacks(&self) -> Result<Vec<StackRecord>, Error> {
        self.list(keys::STACKS).await
    }

    /// Services of one stack, by name.
    pub async fn services(&self, stack: &str) -> Result<BTreeMap<String, ServiceRecord>, Error> {
        let list: Vec<ServiceRecord> = self.list(&keys::services_of(stack)).await?;
        Ok(list.into_iter().map(|s| (s.name.clone(), s)).collect())
    }

    /// Services of one stack, by name, each with its record's revision.
    pub async fn services_with_revisions(
        &self,
        stack: &str,
    ) -> Result<BTreeMap<String, (ServiceRecord, u64)>, Error> {
        let (kvs, _) = self.store.range(&keys::services_of(stack)).await?;
        kvs.iter()
            .map(|kv| {
                let s: ServiceRecord = model::decode(&kv.key, &kv.value)?;
                Ok((s.name.clone(), (s, kv.mod_revision)))
            })
            .collect()
    }

    pub async fn service(
        &self,
        stack: &str,
        service: &str,
    ) -> Result<Option<(ServiceRecord, u64)>, Error> {
        let key = keys::service(stack, service);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some((model::decode(&key, &kv.value)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    pub async fn instances(&self, prefix: &str) -> Result<Vec<InstanceRecord>, Error> {
        self.list(prefix).await
    }

    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, Error> {
        self.list(keys::NODES).await
    }

    /// Every instance report of every node, keyed by instance id. When several generations of an
    /// instance are reported (a replacement in progress), the highest generation wins here;
    /// `all_reports` keeps them all.
    pub async fn reports(&self) -> Result<BTreeMap<String, InstanceReport>, Error> {
        Ok(newest_reports(self.all_reports().await?))
    }

    pub async fn all_reports(&self) -> Result<Vec<InstanceReport>, Error> {
        let (reps, _) = self.decoded::<NodeReport>(keys::STATUS).await?;
        Ok(reps
            .iter()
            .flat_map(|r| r.value.instances.iter().cloned())
            .collect())
    }

    /// The records under `prefix`, decoded once per revision and shared (`CachedStore`); and
    /// the revision they were read at.
    pub async fn decoded<T>(&self, prefix: &str) -> Result<(Vec<Decoded<T>>, u64), Error>
    where
        T: for<'de> serde::Deserialize<'de> + Send + Sync + 'static,
    {
        self.cache
            .decoded(prefix, |kv| model::decode::<T>(&kv.key, &kv.value))
            .await
    }

    async fn list<T>(&self, prefix: &str) -> Result<Vec<T>, Error>
    where
        T: for<'de> serde::Deserialize<'de> + Clone + Send + Sync + 'static,
    {
        let (list, _) = self.decoded::<T>(prefix).await?;
        Ok(list.into_iter().map(|d| (*d.value).clone()).collect())
    }
}

/// The newest reported generation of each instance, by id (see `Master::reports`).
pub fn newest_reports(
    all: impl IntoIterator<Item = InstanceReport>,
) -> BTreeMap<String, InstanceReport> {
    let all: Vec<InstanceReport> = all.into_iter().collect();
    newest(&all)
        .into_iter()
        .map(|(id, r)| (id.to_string(), r.clone()))
        .collect()
}

/// `newest_reports` by reference: the newest reported generation of each instance id, the
/// first one seen among equals.
pub fn newest<'a>(
    all: impl IntoIterator<Item = &'a InstanceReport>,
) -> BTreeMap<&'a str, &'a InstanceReport> {
    let mut out: BTreeMap<&str, &InstanceReport> = BTreeMap::new();
    for r in all {
        match out.get(r.id.as_str()) {
            Some(cur) if cur.generation >= r.generation => {}
            _ => {
                out.insert(&r.id, r);
            }
        }
    }
    out
}
