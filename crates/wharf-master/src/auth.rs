//! API tokens: random bearer tokens, stored only as SHA-256 hashes, never logged. Each has a
//! unique name, a role, an optional stack scope and an optional expiry; revoking one deletes it,
//! so the next request with it is refused at once.

use sha2::{Digest, Sha256};
use wharf_store::{Compare, Op, Txn};
use wharf_types::{TokenInfo, TokenRequest};

use crate::model::{self, TokenRecord, encode, keys};
use crate::mutate::Actor;
use crate::policy::Caller;
use crate::{Error, Master, now_ms};

/// The longest a token may live: ten years.
pub const MAX_TTL_SECS: u64 = 10 * 365 * 24 * 3600;
/// `last_used_at` is written at most this often per token (ms).
const LAST_USE_EVERY_MS: u64 = 60_000;

/// A new random token: `wharf_` and 64 hex digits (256 bits).
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("wharf_{}", hex::encode(bytes))
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Why a bearer token was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No such token (never made, or revoked).
    Unknown,
    /// Its lifetime is over.
    Expired,
}

impl TokenRecord {
    fn info(&self) -> TokenInfo {
        TokenInfo {
            name: self.name.clone(),
            role: self.role,
            stacks: self.stacks.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            last_used_at: self.last_used_at,
        }
    }
}

fn invalid(message: String, hint: &str) -> Error {
    Error::Invalid {
        message,
        location: None,
        hint: Some(hint.to_string()),
    }
}

/// Up to 64 letters, digits, `-`, `_`, `.` and the `extra` characters.
fn name_ok(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c) || extra.contains(&c))
}

/// A name of a token or user (`field` of the request): up to 64 letters, digits, `-`, `_`, `.`.
pub fn check_name(field: &str, name: &str) -> Result<(), Error> {
    if name_ok(name, &[]) {
        return Ok(());
    }
    Err(invalid(
        format!(
            "{field}: {:?} is not a name",
            wharf_types::excerpt(name, 80)
        ),
        "use up to 64 letters, digits, '-', '_' and '.'",
    ))
}

/// Whether `req` names a token that can be made: a name (`check_name`), scope patterns of
/// stack-name characters and `*`, a lifetime within bounds.
fn check_request(req: &TokenRequest) -> Result<(), Error> {
    check_name("name", &req.name)?;
    if let Some(s) = req.stacks.iter().find(|s| !name_ok(s, &['*'])) {
        return Err(invalid(
            format!("stacks: {s:?} is not a stack name pattern"),
            "use stack names, with '*' for any run of characters (shop, shop-*)",
        ));
    }
    match req.ttl_secs {
        Some(t) if t == 0 || t > MAX_TTL_SECS => Err(invalid(
            format!("ttl_secs: {t} is not between 1 and {MAX_TTL_SECS}"),
            "give a lifetime such as 90d, or none for a token that does not expire",
        )),
        _ => Ok(()),
    }
}

/// Failed authentications allowed per source address in a burst, and the rate they come back
/// at: a client that mistypes its token gets its 401s; one that guesses gets 429s.
const FAILURE_BURST: f64 = 20.0;
const FAILURES_PER_SEC: f64 = 2.0;
/// Past this many addresses, the ones whose budget is full again are forgotten.
const TRACKED_ADDRESSES: usize = 10_000;

/// A budget of failed authentications per source address (a token bucket each). Other
/// addresses are not slowed by one that spends its own.
#[derive(Debug, Default)]
pub struct FailureBudget {
    buckets:
        parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, (f64, std::time::Instant)>>,
}

impl FailureBudget {
    /// Whether `addr` has a failure left to spend at `now` (nothing is spent).
    pub fn has_left(&self, addr: std::net::IpAddr, now: std::time::Instant) -> bool {
        let b = self.buckets.lock();
        b.get(&addr).is_none_or(|(left, at)| {
            left + now.duration_since(*at).as_secs_f64() * FAILURES_PER_SEC >= 1.0
        })
    }

    /// Spend one failure of `addr` at `now`: false when its budget was already used up.
    pub fn spend(&self, addr: std::net::IpAddr, now: std::time::Instant) -> bool {
        let mut b = self.buckets.lock();
        if b.len() >= TRACKED_ADDRESSES {
            b.retain(|_, (left, at)| {
                *left + now.duration_since(*at).as_secs_f64() * FAILURES_PER_SEC < FAILURE_BURST
            });
        }
        let (left, at) = b.entry(addr).or_insert((FAILURE_BURST, now));
        *left =
            (*left + now.duration_since(*at).as_secs_f64() * FAILURES_PER_SEC).min(FAILURE_BURST);
        *at = now;
        if *left >= 1.0 {
            *left -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Master {
    /// The caller a bearer token stands for, or why it is refused. Notes the token's use.
    pub async fn authenticate(&self, token: &str) -> Result<Result<Caller, Refused>, Error> {
        let key = keys::token(&hash_token(token));
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(Err(Refused::Unknown));
        };
        let rec: TokenRecord = model::decode(&key, &kv.value)?;
        let now = now_ms();
        if rec.expires_at.is_some_and(|t| now >= t) {
            return Ok(Err(Refused::Expired));
        }
        if rec
            .last_used_at
            .is_none_or(|t| now.saturating_sub(t) >= LAST_USE_EVERY_MS)
        {
            // Only if the token is still the one read: a revoke in between wins.
            let used = TokenRecord {
                last_used_at: Some(now),
                ..rec.clone()
            };
            let txn = Txn::new()
                .when([Compare::unchanged_since(key.clone(), kv.mod_revision)])
                .then([Op::put(key, encode(&used))]);
            if let Err(e) = self.store.txn(txn).await {
                tracing::warn!(token = %rec.name, error = %e, "could not note a token's use");
            }
        }
        Ok(Ok(Caller {
            session: rec.user.is_some().then(|| rec.name.clone()),
            name: rec.user.clone().unwrap_or(rec.name),
            role: rec.role,
            scope: rec.stacks,
            user: rec.user,
        }))
    }

    /// Make the token `req` asks for; returns the token itself (shown once, stored hashed).
    pub async fn create_token(
        &self,
        actor: &Actor,
        req: &TokenRequest,
    ) -> Result<(String, TokenInfo), Error> {
        check_request(req)?;
        let token = generate_token();
        let hash = hash_token(&token);
        let created_at = now_ms();
        let rec = TokenRecord {
            name: req.name.clone(),
            role: req.role,
            created_at,
            stacks: req.stacks.clone(),
            expires_at: req.ttl_secs.map(|t| created_at + t * 1000),
            last_used_at: None,
            user: None,
        };
        let (key, name_key) = (keys::token(&hash), keys::token_name(&req.name));
        let txn = Txn::new()
            .when([
                Compare::missing(key.clone()),
                Compare::missing(name_key.clone()),
            ])
            .then([
                Op::put(key, encode(&rec)),
                Op::put(name_key, hash.into_bytes()),
            ]);
        let r = self
            .mutate(actor, "token.create", &req.name, created_at, txn)
            .await?;
        if !r.succeeded {
            return Err(Error::Conflict {
                message: format!("a token named {:?} exists", req.name),
                hint: Some("choose another name, or revoke that token first".into()),
            });
        }
        Ok((token, rec.info()))
    }

    /// An admin token without expiry named `base`, or `base-2`, `base-3`... when that name is
    /// taken (`wharf up` makes one whenever its CLI context has none that works here).
    pub async fn create_admin_token(&self, actor: &Actor, base: &str) -> Result<String, Error> {
        let mut last = None;
        for n in 1..=100 {
            let name = if n == 1 {
                base.to_string()
            } else {
                format!("{base}-{n}")
            };
            let req = TokenRequest {
                name,
                role: wharf_types::Role::Admin,
                stacks: Vec::new(),
                ttl_secs: None,
            };
            match self.create_token(actor, &req).await {
                Ok((token, _)) => return Ok(token),
                Err(e @ Error::Conflict { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("a hundred tries"))
    }

    /// Every API token, by name (users' sessions are not listed).
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, Error> {
        let (kvs, _) = self.store.range(keys::TOKENS).await?;
        let mut out = Vec::new();
        for kv in &kvs {
            let r: TokenRecord = model::decode(&kv.key, &kv.value)?;
            if r.user.is_none() {
                out.push(r.info());
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Revoke the token named `name`: refused from the next request on.
    pub async fn revoke_token(&self, actor: &Actor, name: &str) -> Result<(), Error> {
        let name_key = keys::token_name(name);
        let Some(kv) = self.store.get(&name_key).await? else {
            return Err(Error::NotFound {
                what: format!("token {name:?}"),
                hint: Some("`wharf token ls` lists the tokens".into()),
            });
        };
        let hash = String::from_utf8_lossy(&kv.value).to_string();
        let txn = Txn::new()
            .when([Compare::unchanged_since(name_key.clone(), kv.mod_revision)])
            .then([Op::delete(keys::token(&hash)), Op::delete(name_key)]);
        let r = self
            .mutate(actor, "token.revoke", name, now_ms(), txn)
            .await?;
        if !r.succeeded {
            return Err(Error::Conflict {
                message: format!("token {name:?} changed meanwhile"),
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
    use wharf_types::Role;

    use super::*;

    fn master() -> Master {
        Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()))
    }

    fn request(name: &str, role: Role, stacks: &[&str], ttl_secs: Option<u64>) -> TokenRequest {
        TokenRequest {
            name: name.into(),
            role,
            stacks: stacks.iter().map(|s| s.to_string()).collect(),
            ttl_secs,
        }
    }

    #[tokio::test]
    async fn a_token_stands_for_its_role_and_scope_until_revoked() {
        let m = master();
        let admin = Actor::named("admin");
        let (token, info) = m
            .create_token(&admin, &request("ci", Role::Deployer, &["shop*"], None))
            .await
            .unwrap();
        assert_eq!(info.role, Role::Deployer);
        let caller = m.authenticate(&token).await.unwrap().unwrap();
        assert_eq!(
            caller,
            Caller {
                name: "ci".into(),
                role: Role::Deployer,
                scope: vec!["shop*".into()],
                user: None,
                session: None,
            }
        );
        let listed = m.list_tokens().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].last_used_at.is_some(), "{listed:?}");

        let e = m
            .create_token(&admin, &request("ci", Role::Viewer, &[], None))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("a token named \"ci\" exists"), "{e}");

        m.revoke_token(&admin, "ci").await.unwrap();
        assert_eq!(m.authenticate(&token).await.unwrap(), Err(Refused::Unknown));
        let e = m.revoke_token(&admin, "ci").await.unwrap_err();
        assert!(e.to_string().contains("token \"ci\" not found"), "{e}");
    }

    #[tokio::test]
    async fn an_expired_token_is_refused() {
        let m = master();
        let admin = Actor::named("admin");
        let (token, _) = m
            .create_token(&admin, &request("short", Role::Viewer, &[], Some(1)))
            .await
            .unwrap();
        assert!(m.authenticate(&token).await.unwrap().is_ok());
        // Backdate it rather than wait a second.
        let key = keys::token(&hash_token(&token));
        let kv = m.store.get(&key).await.unwrap().unwrap();
        let mut rec: TokenRecord = model::decode(&key, &kv.value).unwrap();
        rec.expires_at = Some(now_ms() - 1);
        m.store.put(&key, encode(&rec)).await.unwrap();
        assert_eq!(m.authenticate(&token).await.unwrap(), Err(Refused::Expired));
    }

    #[test]
    fn each_address_has_its_own_failure_budget_and_it_comes_back() {
        let b = FailureBudget::default();
        let (a, other) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = std::time::Instant::now();
        let spent = (0..50).filter(|_| b.spend(a, t0)).count();
        assert_eq!(spent, FAILURE_BURST as usize, "a burst, then refused");
        assert!(b.spend(other, t0), "another address is not slowed");
        assert!(!b.spend(a, t0));
        assert!(
            b.spend(a, t0 + std::time::Duration::from_secs(1)),
            "it comes back"
        );
    }

    #[tokio::test]
    async fn bad_token_requests_are_refused_with_the_field() {
        let m = master();
        let admin = Actor::named("admin");
        for (req, want) in [
            (request("a b", Role::Viewer, &[], None), "name: \"a b\""),
            (request("", Role::Viewer, &[], None), "name: \"\""),
            (
                request("ok", Role::Viewer, &["../x"], None),
                "stacks: \"../x\"",
            ),
            (request("ok", Role::Viewer, &[], Some(0)), "ttl_secs: 0"),
        ] {
            let e = m.create_token(&admin, &req).await.unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
        assert!(m.list_tokens().await.unwrap().is_empty());
    }
}
