//! Secrets: named values kept in versions, each sealed at rest (`seal`, associated data naming
//! the secret and the version) and never read back through the API; only their metadata is
//! (versions, sizes, who made them). A new value is a new version.

use base64::Engine;
use serde::{Deserialize, Serialize};
use wharf_store::{Compare, Op, Txn};
use wharf_types::{SecretInfo, SecretVersion};

use crate::mutate::Actor;
use crate::seal::Sealed;
use crate::{Error, Master, now_ms};

/// The largest secret value, as Docker Swarm's.
pub const MAX_SECRET_BYTES: usize = 500 * 1024;

/// `/secrets/{name}`: the secret's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub name: String,
    pub versions: Vec<SecretVersion>,
}

fn item(name: &str) -> String {
    format!("secret {name}")
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        what: format!("secret {name:?}"),
        hint: Some("`wharf secret ls` lists the secrets".into()),
    }
}

impl SecretRecord {
    fn info(&self) -> SecretInfo {
        SecretInfo {
            name: self.name.clone(),
            current: self.versions.last().map_or(0, |v| v.version),
            versions: self.versions.clone(),
        }
    }
}

impl Master {
    async fn secret(&self, name: &str) -> Result<Option<(SecretRecord, u64)>, Error> {
        let key = crate::model::keys::secret(name);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some((
                crate::model::decode(&key, &kv.value)?,
                kv.mod_revision,
            ))),
            None => Ok(None),
        }
    }

    /// Store `value_base64` as the next version of the secret `name` (its first when new).
    pub async fn put_secret(
        &self,
        actor: &Actor,
        name: &str,
        value_base64: &str,
    ) -> Result<SecretInfo, Error> {
        crate::auth::check_name("name", name)?;
        let invalid = |message: String, hint: &str| Error::Invalid {
            message,
            location: None,
            hint: Some(hint.to_string()),
        };
        let value = base64::engine::general_purpose::STANDARD
            .decode(value_base64)
            .map_err(|e| {
                invalid(
                    format!("value_base64: not base64 ({e})"),
                    "encode the value",
                )
            })?;
        if value.len() > MAX_SECRET_BYTES {
            return Err(invalid(
                format!(
                    "the value is {} bytes, more than the {MAX_SECRET_BYTES} a secret may hold",
                    value.len()
                ),
                "keep large files in a volume or a config; secrets are for keys and passwords",
            ));
        }
        let now = now_ms();
        let existing = self.secret(name).await?;
        let key = crate::model::keys::secret(name);
        let mut rec = existing.as_ref().map_or_else(
            || SecretRecord {
                name: name.to_string(),
                versions: Vec::new(),
            },
            |(r, _)| r.clone(),
        );
        let version = rec.versions.last().map_or(1, |v| v.version + 1);
        rec.versions.push(SecretVersion {
            version,
            created_at: now,
            created_by: actor.name.clone(),
            size: value.len() as u64,
        });
        let sealed: Sealed = self.sealer().seal(&item(name), version, &value);
        let guard = match &existing {
            Some((_, rev)) => Compare::unchanged_since(key.clone(), *rev),
            None => Compare::missing(key.clone()),
        };
        let txn = Txn::new().when([guard]).then([
            Op::put(key, crate::model::encode(&rec)),
            Op::put(
                crate::model::keys::secret_value(name, version),
                crate::model::encode(&sealed),
            ),
        ]);
        let target = format!("{name} (version {version})");
        if !self
            .mutate(actor, "secret.put", &target, now, txn)
            .await?
            .succeeded
        {
            return Err(Error::Conflict {
                message: format!("secret {name} changed meanwhile"),
                hint: Some("run the command again".into()),
            });
        }
        Ok(rec.info())
    }

    pub async fn list_secrets(&self) -> Result<Vec<SecretInfo>, Error> {
        let (kvs, _) = self.store.range(crate::model::keys::SECRETS).await?;
        kvs.iter()
            .map(|kv| crate::model::decode::<SecretRecord>(&kv.key, &kv.value).map(|r| r.info()))
            .collect()
    }

    pub async fn inspect_secret(&self, name: &str) -> Result<SecretInfo, Error> {
        let (rec, _) = self.secret(name).await?.ok_or_else(|| not_found(name))?;
        Ok(rec.info())
    }

    /// The value of version `version` of `name`, unsealed: for delivery to the nodes that run a
    /// consumer, never for an API answer.
    pub async fn secret_value(&self, name: &str, version: u64) -> Result<Vec<u8>, Error> {
        let key = crate::model::keys::secret_value(name, version);
        let kv = self.store.get(&key).await?.ok_or_else(|| not_found(name))?;
        let sealed: Sealed = crate::model::decode(&key, &kv.value)?;
        self.sealer().open(&item(name), version, &sealed)
    }

    /// Remove the secret `name` and every version of it.
    pub async fn remove_secret(&self, actor: &Actor, name: &str) -> Result<(), Error> {
        let (_, rev) = self.secret(name).await?.ok_or_else(|| not_found(name))?;
        let key = crate::model::keys::secret(name);
        let txn = Txn::new()
            .when([Compare::unchanged_since(key.clone(), rev)])
            .then([
                Op::delete(key),
                Op::DeletePrefix {
                    prefix: crate::model::keys::secret_values(name),
                },
            ]);
        if !self
            .mutate(actor, "secret.remove", name, now_ms(), txn)
            .await?
            .succeeded
        {
            return Err(Error::Conflict {
                message: format!("secret {name} changed meanwhile"),
                hint: Some("run the command again".into()),
            });
        }
        Ok(())
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

    #[tokio::test]
    async fn versions_are_sealed_listed_by_metadata_and_removed_together() {
        let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
        let admin = Actor::named("admin");
        m.put_secret(&admin, "db_password", &b64(b"hunter2-hunter2"))
            .await
            .unwrap();
        let info = m
            .put_secret(&admin, "db_password", &b64(b"correct horse"))
            .await
            .unwrap();
        assert_eq!(info.current, 2);
        assert_eq!(
            info.versions.iter().map(|v| v.size).collect::<Vec<_>>(),
            [15, 13]
        );
        assert_eq!(
            m.secret_value("db_password", 1).await.unwrap(),
            b"hunter2-hunter2"
        );
        assert_eq!(
            m.secret_value("db_password", 2).await.unwrap(),
            b"correct horse"
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
        m.remove_secret(&admin, "db_password").await.unwrap();
        assert!(m.list_secrets().await.unwrap().is_empty());
        assert!(m.secret_value("db_password", 1).await.is_err());
    }

    #[tokio::test]
    async fn a_value_over_500_kib_or_not_base64_is_refused() {
        let m = Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()));
        let admin = Actor::named("admin");
        let big = vec![b'x'; MAX_SECRET_BYTES + 1];
        let e = m.put_secret(&admin, "big", &b64(&big)).await.unwrap_err();
        assert!(e.to_string().contains("more than the 512000"), "{e}");
        let e = m.put_secret(&admin, "bad", "%%%").await.unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
        assert!(m.list_secrets().await.unwrap().is_empty());
    }
}
