//! API tokens: random bearer tokens, stored only as SHA-256 hashes, never logged.

use sha2::{Digest, Sha256};
use wharf_store::{Compare, Op, Txn};

use crate::model::{self, TokenRecord, encode, keys};
use crate::mutate::Actor;
use crate::{Error, Master, now_ms};

/// A new random token: `wharf_` and 64 hex digits (256 bits).
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("wharf_{}", hex::encode(bytes))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl Master {
    /// The token's record, if the token is valid.
    pub async fn authenticate(&self, token: &str) -> Result<Option<TokenRecord>, Error> {
        let key = keys::token(&hash_token(token));
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some(model::decode(&key, &kv.value)?)),
            None => Ok(None),
        }
    }

    /// Create a token named `name` with `role`; returns the token itself (shown once, stored hashed).
    pub async fn create_token(
        &self,
        actor: &Actor,
        name: &str,
        role: &str,
    ) -> Result<String, Error> {
        let token = generate_token();
        let key = keys::token(&hash_token(&token));
        let rec = TokenRecord {
            name: name.to_string(),
            role: role.to_string(),
            created_at: now_ms(),
        };
        let txn = Txn::new()
            .when([Compare::missing(key.clone())])
            .then([Op::put(key, encode(&rec))]);
        let r = self
            .mutate(actor, "token.create", name, rec.created_at, txn)
            .await?;
        if !r.succeeded {
            return Err(Error::Conflict {
                message: "token collision".into(),
                hint: Some("try again".into()),
            });
        }
        Ok(token)
    }
}
