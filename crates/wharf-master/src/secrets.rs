//! Secrets and configs: named values kept in versions, each sealed at rest (`seal`, associated
//! data naming the object and the version) and never read back through the API; only their
//! metadata is (versions, sizes, who made them). A new value is a new version.
//!
//! A stack's services mount them as files: at deploy, `resolve` turns each top-level entry
//! into a version (a new one when the client sent a value that differs from the current one)
//! and writes it into every `FileRef` that uses it, so a new version changes the instance hash
//! and rolls the consumers. The deployer delivers the opened values only to the nodes that run
//! a consumer (`object_value`).

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use wharf_store::{Compare, Op, Txn};
use wharf_types::{ObjectKind, Secret, SecretInfo, SecretVersion, StackSpec};

use crate::model::{ServiceRecord, keys};
use crate::mutate::Actor;
use crate::seal::Sealed;
use crate::{Error, Master, now_ms};

/// The largest secret or config value, as Docker Swarm's.
pub const MAX_SECRET_BYTES: usize = 500 * 1024;

/// `/secrets/{name}` (or `/configs/{name}`): the object's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub name: String,
    pub versions: Vec<SecretVersion>,
}

/// What the AEAD's associated data names: the kind and the name (and the version beside it).
fn item(kind: ObjectKind, name: &str) -> String {
    format!("{} {name}", kind.as_str())
}

fn not_found(kind: ObjectKind, name: &str) -> Error {
    Error::NotFound {
        what: format!("{} {name:?}", kind.as_str()),
        hint: Some(format!("`wharf {} ls` lists them", kind.as_str())),
    }
}

fn invalid(message: String, hint: &str) -> Error {
    Error::Invalid {
        message,
        location: None,
        hint: Some(hint.to_string()),
    }
}

/// `value_base64` decoded and within the size limit; `field` names it in errors.
fn decode(field: &str, value_base64: &str) -> Result<Vec<u8>, Error> {
    let value = base64::engine::general_purpose::STANDARD
        .decode(value_base64)
        .map_err(|e| invalid(format!("{field}: not base64 ({e})"), "encode the value"))?;
    if value.len() > MAX_SECRET_BYTES {
        return Err(invalid(
            format!(
                "{field}: the value is {} bytes, more than the {MAX_SECRET_BYTES} a secret or \
                 config may hold",
                value.len()
            ),
            "keep large files in a volume; secrets are for keys and passwords",
        ));
    }
    Ok(value)
}

impl SecretRecord {
    fn info(&self) -> SecretInfo {
        SecretInfo {
            name: self.name.clone(),
            current: self.current(),
            versions: self.versions.clone(),
            rolled: Vec::new(),
        }
    }

    fn current(&self) -> u64 {
        self.versions.last().map_or(0, |v| v.version)
    }
}

/// A new version of an object: its number, and the writes (guarded by the metadata's revision)
/// that store it.
struct NewVersion {
    version: u64,
    record: SecretRecord,
    guard: Compare,
    ops: Vec<Op>,
}

impl Master {
    async fn object(
        &self,
        kind: ObjectKind,
        name: &str,
    ) -> Result<Option<(SecretRecord, u64)>, Error> {
        let key = keys::object(kind, name);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some((
                crate::model::decode(&key, &kv.value)?,
                kv.mod_revision,
            ))),
            None => Ok(None),
        }
    }

    /// The next version of `name` holding `value`, sealed, as writes to commit.
    fn new_version(
        &self,
        kind: ObjectKind,
        name: &str,
        existing: Option<&(SecretRecord, u64)>,
        value: &[u8],
        actor: &Actor,
        now: u64,
    ) -> NewVersion {
        let key = keys::object(kind, name);
        let mut record = existing.map_or_else(
            || SecretRecord {
                name: name.to_string(),
                versions: Vec::new(),
            },
            |(r, _)| r.clone(),
        );
        let version = record.current() + 1;
        record.versions.push(SecretVersion {
            version,
            created_at: now,
            created_by: actor.name.clone(),
            size: value.len() as u64,
        });
        let sealed: Sealed = self.sealer().seal(&item(kind, name), version, value);
        let guard = match existing {
            Some((_, rev)) => Compare::unchanged_since(key.clone(), *rev),
            None => Compare::missing(key.clone()),
        };
        let ops = vec![
            Op::put(key, crate::model::encode(&record)),
            Op::put(
                keys::object_value(kind, name, version),
                crate::model::encode(&sealed),
            ),
        ];
        NewVersion {
            version,
            record,
            guard,
            ops,
        }
    }

    /// Store `value_base64` as the next version of `name` (its first when new). The services
    /// that use it are rolled by the caller (`api::stacks::roll_consumers`).
    pub async fn put_object(
        &self,
        actor: &Actor,
        kind: ObjectKind,
        name: &str,
        value_base64: &str,
    ) -> Result<SecretInfo, Error> {
        crate::auth::check_name("name", name)?;
        let value = decode("value_base64", value_base64)?;
        let now = now_ms();
        let existing = self.object(kind, name).await?;
        let new = self.new_version(kind, name, existing.as_ref(), &value, actor, now);
        let txn = Txn::new().when([new.guard]).then(new.ops);
        let target = format!("{name} (version {})", new.version);
        let action = format!("{}.put", kind.as_str());
        if !self
            .mutate(actor, &action, &target, now, txn)
            .await?
            .succeeded
        {
            return Err(Error::Conflict {
                message: format!("{} {name} changed meanwhile", kind.as_str()),
                hint: Some("run the command again".into()),
            });
        }
        Ok(new.record.info())
    }

    pub async fn list_objects(&self, kind: ObjectKind) -> Result<Vec<SecretInfo>, Error> {
        let (kvs, _) = self.store.range(keys::objects(kind)).await?;
        kvs.iter()
            .map(|kv| crate::model::decode::<SecretRecord>(&kv.key, &kv.value).map(|r| r.info()))
            .collect()
    }

    pub async fn inspect_object(&self, kind: ObjectKind, name: &str) -> Result<SecretInfo, Error> {
        let (rec, _) = self
            .object(kind, name)
            .await?
            .ok_or_else(|| not_found(kind, name))?;
        Ok(rec.info())
    }

    /// The value of version `version` of `name`, unsealed: for delivery to the nodes that run a
    /// consumer, never for an API answer.
    pub async fn object_value(
        &self,
        kind: ObjectKind,
        name: &str,
        version: u64,
    ) -> Result<Vec<u8>, Error> {
        let key = keys::object_value(kind, name, version);
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| not_found(kind, name))?;
        let sealed: Sealed = crate::model::decode(&key, &kv.value)?;
        self.sealer().open(&item(kind, name), version, &sealed)
    }

    /// The services (`stack/service`) whose spec mounts the object `name`.
    pub async fn object_users(&self, kind: ObjectKind, name: &str) -> Result<Vec<String>, Error> {
        let (kvs, _) = self.store.range(keys::SERVICES).await?;
        let mut users = Vec::new();
        for kv in kvs {
            let s: ServiceRecord = crate::model::decode(&kv.key, &kv.value)?;
            let key_of_a_route = kind == ObjectKind::Secret
                && s.spec.wharf.ingress.iter().any(|r| {
                    r.tls
                        .as_ref()
                        .and_then(|t| parse_key_ref(t.key.expose()))
                        .is_some_and(|(n, _)| n == name)
                });
            if key_of_a_route || s.spec.files().any(|(k, f)| k == kind && f.name == name) {
                users.push(format!("{}/{}", s.stack, s.name));
            }
        }
        Ok(users)
    }

    /// The stacks whose own top-level entries name the object `name`.
    pub async fn object_stacks(&self, kind: ObjectKind, name: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .stacks()
            .await?
            .into_iter()
            .filter(|r| r.removing.is_none())
            .filter(|r| objects_of(&r.spec, kind).values().any(|o| o.name == name))
            .map(|r| r.name)
            .collect())
    }

    /// The writes that remove the secrets and configs the removed stack `stack` made for itself
    /// (its entries that are not `external`, and its routes' private keys), as Swarm does:
    /// those another stack's services still mount are kept.
    pub(crate) async fn own_objects_ops(
        &self,
        stack: &str,
        spec: &StackSpec,
    ) -> Result<Vec<Op>, Error> {
        let mut own: Vec<(ObjectKind, String)> = Vec::new();
        for kind in [ObjectKind::Secret, ObjectKind::Config] {
            let made = objects_of(spec, kind).values().filter(|o| !o.external);
            own.extend(made.map(|o| (kind, o.name.clone())));
        }
        let keys = spec.services.values().flat_map(|s| &s.wharf.ingress);
        for tls in keys.filter_map(|r| r.tls.as_ref()) {
            if let Some((name, _)) = parse_key_ref(tls.key.expose()) {
                own.push((ObjectKind::Secret, name.to_string()));
            }
        }
        let mut ops = Vec::new();
        for (kind, name) in own {
            let users = self.object_users(kind, &name).await?;
            if users.iter().any(|u| !u.starts_with(&format!("{stack}/"))) {
                continue;
            }
            ops.push(Op::delete(keys::object(kind, &name)));
            ops.push(Op::DeletePrefix {
                prefix: keys::object_values(kind, &name),
            });
        }
        Ok(ops)
    }

    /// Remove `name` and every version of it; refused while a service mounts it.
    pub async fn remove_object(
        &self,
        actor: &Actor,
        kind: ObjectKind,
        name: &str,
    ) -> Result<(), Error> {
        let (_, rev) = self
            .object(kind, name)
            .await?
            .ok_or_else(|| not_found(kind, name))?;
        let users = self.object_users(kind, name).await?;
        if !users.is_empty() {
            return Err(Error::Conflict {
                message: format!("{} {name} is in use by {}", kind.as_str(), users.join(", ")),
                hint: Some(format!(
                    "take it out of those services' `{}s:` and deploy, or remove their stacks, first",
                    kind.as_str()
                )),
            });
        }
        let key = keys::object(kind, name);
        let txn = Txn::new()
            .when([Compare::unchanged_since(key.clone(), rev)])
            .then([
                Op::delete(key),
                Op::DeletePrefix {
                    prefix: keys::object_values(kind, name),
                },
            ]);
        let action = format!("{}.remove", kind.as_str());
        if !self
            .mutate(actor, &action, name, now_ms(), txn)
            .await?
            .succeeded
        {
            return Err(Error::Conflict {
                message: format!("{} {name} changed meanwhile", kind.as_str()),
                hint: Some("run the command again".into()),
            });
        }
        Ok(())
    }

    /// Give every top-level secret and config of `spec` its version, and every service's
    /// `FileRef` the name and version it mounts: a value the client sent that differs from the
    /// current version (or the first) becomes a new version, written by the returned guards and
    /// writes in the deploy's transaction; no value keeps the current version.
    pub(crate) async fn resolve_objects(
        &self,
        actor: &Actor,
        spec: &mut StackSpec,
        values: [&BTreeMap<String, Secret>; 2],
        now: u64,
    ) -> Result<(Vec<Compare>, Vec<Op>), Error> {
        let mut pending = (Vec::new(), Vec::new());
        for (kind, values) in [ObjectKind::Secret, ObjectKind::Config]
            .into_iter()
            .zip(values)
        {
            let section = format!("{}s", kind.as_str());
            if let Some(key) = values
                .keys()
                .find(|k| !objects_of(spec, kind).contains_key(*k))
            {
                return Err(invalid(
                    format!(
                        "{section}.{key}: a value was sent for a {} the stack does not define",
                        kind.as_str()
                    ),
                    "send values only for the stack's own top-level entries",
                ));
            }
            let mut versions = BTreeMap::new();
            for (key, obj) in objects_of(spec, kind) {
                let field = format!("{section}.{key}");
                crate::auth::check_name(&format!("{field}.name"), &obj.name)?;
                let version = match values.get(key) {
                    Some(_) if obj.external => {
                        return Err(invalid(
                            format!("{field}: is external, yet a value was sent"),
                            &format!(
                                "make its versions with `wharf {} create {}`",
                                kind.as_str(),
                                obj.name
                            ),
                        ));
                    }
                    Some(v) => {
                        let value = decode(&field, v.expose())?;
                        self.version_holding(kind, &obj.name, &value, actor, now, &mut pending)
                            .await?
                    }
                    None => match self.object(kind, &obj.name).await? {
                        Some((r, _)) if r.current() > 0 => r.current(),
                        _ => {
                            return Err(Error::Invalid {
                                message: format!(
                                    "{field}: the {} {} does not exist",
                                    kind.as_str(),
                                    obj.name
                                ),
                                location: Some(field.clone()),
                                hint: Some(format!(
                                    "create it first: wharf {} create {} -f FILE",
                                    kind.as_str(),
                                    obj.name
                                )),
                            });
                        }
                    },
                };
                versions.insert(key.clone(), (obj.name.clone(), version));
            }
            for (name, svc) in spec.services.iter_mut() {
                let refs = match kind {
                    ObjectKind::Secret => &mut svc.secrets,
                    ObjectKind::Config => &mut svc.configs,
                };
                for r in refs.iter_mut() {
                    let Some((obj, version)) = versions.get(&r.source) else {
                        return Err(invalid(
                            format!("services.{name}.{section}: {:?} is not defined", r.source),
                            &format!("add it to the top-level {section}:"),
                        ));
                    };
                    r.name = obj.clone();
                    r.version = *version;
                }
            }
        }
        self.seal_ingress_keys(actor, spec, now, &mut pending)
            .await?;
        Ok(pending)
    }

    /// The version of `name` that holds `value`: the current one when it does, else the next
    /// one, whose guarded writes go into `pending`.
    async fn version_holding(
        &self,
        kind: ObjectKind,
        name: &str,
        value: &[u8],
        actor: &Actor,
        now: u64,
        pending: &mut (Vec<Compare>, Vec<Op>),
    ) -> Result<u64, Error> {
        let existing = self.object(kind, name).await?;
        let current = existing.as_ref().map_or(0, |(r, _)| r.current());
        if current > 0 && self.object_value(kind, name, current).await? == value {
            return Ok(current);
        }
        let new = self.new_version(kind, name, existing.as_ref(), value, actor, now);
        pending.0.push(new.guard);
        pending.1.extend(new.ops);
        Ok(new.version)
    }

    /// Keep each ingress route's private key as a secret of the stack (a new version when it
    /// changed) and leave only a reference to it in the spec: the store holds no key in the
    /// clear, and the deployer opens it for the nodes' ingress tables.
    async fn seal_ingress_keys(
        &self,
        actor: &Actor,
        spec: &mut StackSpec,
        now: u64,
        pending: &mut (Vec<Compare>, Vec<Op>),
    ) -> Result<(), Error> {
        let stack = spec.name.clone();
        for (service, svc) in spec.services.iter_mut() {
            for (i, route) in svc.wharf.ingress.iter_mut().enumerate() {
                let Some(tls) = route.tls.as_mut() else {
                    continue;
                };
                let name = ingress_key_name(&stack, service, i);
                let field = format!("services.{service}.x-wharf.ingress[{i}].tls.key");
                if let Some((named, version)) = parse_key_ref(tls.key.expose()) {
                    // A stored spec deployed again (a new version of one of its secrets).
                    if named != name
                        || self
                            .object_value(ObjectKind::Secret, named, version)
                            .await
                            .is_err()
                    {
                        return Err(invalid(
                            format!("{field}: refers to a key this route does not have"),
                            "give the key's PEM file in the stack file",
                        ));
                    }
                    continue;
                }
                let value = tls.key.expose().as_bytes().to_vec();
                let version = self
                    .version_holding(ObjectKind::Secret, &name, &value, actor, now, pending)
                    .await?;
                tls.key = Secret(key_ref(&name, version));
            }
        }
        Ok(())
    }
}

/// What an ingress route's `tls.key` holds once a deploy sealed it: a reference to the secret
/// that keeps the key (`<stack>_ingress-<service>-<route>`), never the key.
const KEY_REF: &str = "sealed in secret ";

/// The reference to version `version` of the secret `name`, for a `tls.key`.
pub fn key_ref(name: &str, version: u64) -> String {
    format!("{KEY_REF}{name} version {version}")
}

/// The secret and version a `tls.key` refers to, when it is a reference.
pub fn parse_key_ref(key: &str) -> Option<(&str, u64)> {
    let rest = key.strip_prefix(KEY_REF)?;
    let (name, version) = rest.split_once(" version ")?;
    Some((name, version.parse().ok()?))
}

/// The name of the secret that keeps the private key of route `route` of `service`.
fn ingress_key_name(stack: &str, service: &str, route: usize) -> String {
    format!("{stack}_ingress-{service}-{route}")
}

/// The top-level entries of `spec` of one kind.
pub fn objects_of(
    spec: &StackSpec,
    kind: ObjectKind,
) -> &BTreeMap<String, wharf_types::ObjectSpec> {
    match kind {
        ObjectKind::Secret => &spec.secrets,
        ObjectKind::Config => &spec.configs,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wharf_store::SqliteStore;

    use super::*;

    fn b64(v: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(v)
    }

    const SECRET: ObjectKind = ObjectKind::Secret;

    #[tokio::test]
    async fn versions_are_sealed_listed_by_metadata_and_removed_together() {
        let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
        let admin = Actor::named("admin");
        m.put_object(&admin, SECRET, "db_password", &b64(b"hunter2-hunter2"))
            .await
            .unwrap();
        let info = m
            .put_object(&admin, SECRET, "db_password", &b64(b"correct horse"))
            .await
            .unwrap();
        assert_eq!(info.current, 2);
        assert_eq!(
            info.versions.iter().map(|v| v.size).collect::<Vec<_>>(),
            [15, 13]
        );
        assert_eq!(
            m.object_value(SECRET, "db_password", 1).await.unwrap(),
            b"hunter2-hunter2"
        );
        assert_eq!(
            m.object_value(SECRET, "db_password", 2).await.unwrap(),
            b"correct horse"
        );
        // A config of the same name is another object.
        assert!(
            m.inspect_object(ObjectKind::Config, "db_password")
                .await
                .is_err()
        );
        // Nothing in the store holds a value in the clear.
        let (all, _) = m.store.range("/").await.unwrap();
        for kv in &all {
            let text = String::from_utf8_lossy(&kv.value);
            assert!(
                !text.contains("hunter2") && !text.contains("correct horse"),
                "{}: {text}",
                kv.key
            );
        }
        m.remove_object(&admin, SECRET, "db_password")
            .await
            .unwrap();
        assert!(m.list_objects(SECRET).await.unwrap().is_empty());
        assert!(m.object_value(SECRET, "db_password", 1).await.is_err());
    }

    #[tokio::test]
    async fn a_value_over_500_kib_or_not_base64_is_refused() {
        let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
        let admin = Actor::named("admin");
        let big = vec![b'x'; MAX_SECRET_BYTES + 1];
        let e = m
            .put_object(&admin, SECRET, "big", &b64(&big))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("more than the 512000"), "{e}");
        let e = m
            .put_object(&admin, SECRET, "bad", "%%%")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
        assert!(m.list_objects(SECRET).await.unwrap().is_empty());
    }
}
