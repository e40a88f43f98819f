//! Named users: a role, a password hashed with argon2id (or a one-time invitation code, stored
//! hashed, that the user exchanges for a session while setting one), and sessions: bearer tokens
//! of the user's role that expire (`auth`'s tokens with `user` set). Removing a user ends its
//! sessions.

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use serde::{Deserialize, Serialize};
use wharf_store::{Compare, Op, Txn, TxnResponse};
use wharf_types::{
    LoginRequest, LoginResponse, Password, Role, UserCreated, UserInfo, UserRequest,
};

use crate::auth::{generate_token, hash_token};
use crate::model::{TokenRecord, decode, encode, keys};
use crate::mutate::Actor;
use crate::{Error, Master, now_ms};

/// How long a session lasts.
pub const SESSION_TTL_MS: u64 = 12 * 3600 * 1000;
/// How long an invitation code may be used.
pub const INVITATION_TTL_MS: u64 = 7 * 24 * 3600 * 1000;
/// The shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub name: String,
    pub role: Role,
    pub created_at: u64,
    /// The argon2id hash of the password (PHC string), once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// SHA-256 of the invitation code and until when it may be used, while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invitation: Option<(String, u64)>,
}

impl UserRecord {
    fn info(&self) -> UserInfo {
        UserInfo {
            name: self.name.clone(),
            role: self.role,
            created_at: self.created_at,
            password_set: self.password.is_some(),
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

/// The argon2id hash of `p`, after checking its length.
fn hash_password(p: &Password) -> Result<String, Error> {
    if p.0.chars().count() < MIN_PASSWORD_CHARS {
        return Err(invalid(
            format!("password: shorter than {MIN_PASSWORD_CHARS} characters"),
            "choose a longer password (a passphrase of a few words works well)",
        ));
    }
    Argon2::default()
        .hash_password(p.0.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::Unavailable(format!("cannot hash the password: {e}")))
}

fn password_matches(hash: &str, p: &Password) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(p.0.as_bytes(), &h)
            .is_ok()
    })
}

/// A guarded change that lost its race is a conflict: the user runs the command again.
fn committed(r: TxnResponse, what: &str) -> Result<(), Error> {
    if r.succeeded {
        return Ok(());
    }
    Err(Error::Conflict {
        message: format!("{what} changed meanwhile"),
        hint: Some("run the command again".into()),
    })
}

/// The refusal of every failed login: the same whatever was wrong (no user, wrong password,
/// spent invitation), so a caller learns nothing about which users exist.
fn login_refused() -> Error {
    Error::Unauthorized {
        message: "wrong user name, password or invitation".into(),
        hint: Some(
            "check them; an administrator can make a new invitation (`wharf user passwd`)".into(),
        ),
    }
}

impl Master {
    async fn user(&self, name: &str) -> Result<Option<(UserRecord, u64)>, Error> {
        let key = keys::user(name);
        match self.store.get(&key).await? {
            Some(kv) => Ok(Some((decode(&key, &kv.value)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    /// Add the user `req` asks for; with no password, an invitation code comes back (once).
    pub async fn add_user(&self, actor: &Actor, req: &UserRequest) -> Result<UserCreated, Error> {
        crate::auth::check_name("name", &req.name)?;
        let now = now_ms();
        let password = req.password.as_ref().map(hash_password).transpose()?;
        let code = password.is_none().then(generate_token);
        let rec = UserRecord {
            name: req.name.clone(),
            role: req.role,
            created_at: now,
            password,
            invitation: code
                .as_ref()
                .map(|c| (hash_token(c), now + INVITATION_TTL_MS)),
        };
        let key = keys::user(&req.name);
        let txn = Txn::new()
            .when([Compare::missing(key.clone())])
            .then([Op::put(key, encode(&rec))]);
        if !self
            .mutate(actor, "user.add", &req.name, now, txn)
            .await?
            .succeeded
        {
            return Err(Error::Conflict {
                message: format!("a user named {:?} exists", req.name),
                hint: Some("choose another name, or remove that user first".into()),
            });
        }
        Ok(UserCreated {
            info: rec.info(),
            invitation: code.map(Password),
        })
    }

    pub async fn list_users(&self) -> Result<Vec<UserInfo>, Error> {
        let (kvs, _) = self.store.range(keys::USERS).await?;
        kvs.iter()
            .map(|kv| decode::<UserRecord>(&kv.key, &kv.value).map(|u| u.info()))
            .collect()
    }

    /// Remove the user `name` and end its sessions.
    pub async fn remove_user(&self, actor: &Actor, name: &str) -> Result<(), Error> {
        let Some((_, rev)) = self.user(name).await? else {
            return Err(Error::NotFound {
                what: format!("user {name:?}"),
                hint: Some("`wharf user ls` lists the users".into()),
            });
        };
        let mut ops = vec![Op::delete(keys::user(name))];
        ops.extend(self.end_sessions(name, None).await?);
        let txn = Txn::new()
            .when([Compare::unchanged_since(keys::user(name), rev)])
            .then(ops);
        committed(
            self.mutate(actor, "user.remove", name, now_ms(), txn)
                .await?,
            &format!("user {name}"),
        )
    }

    /// The writes that end every session of the user `name` but the one named `keep`.
    async fn end_sessions(&self, name: &str, keep: Option<&str>) -> Result<Vec<Op>, Error> {
        let mut ops = Vec::new();
        let (tokens, _) = self.store.range(keys::TOKENS).await?;
        for kv in &tokens {
            let t: TokenRecord = decode(&kv.key, &kv.value)?;
            if t.user.as_deref() == Some(name) && Some(t.name.as_str()) != keep {
                ops.push(Op::delete(kv.key.clone()));
                ops.push(Op::delete(keys::token_name(&t.name)));
            }
        }
        Ok(ops)
    }

    /// Set the password of `name` (its invitation, if one waits, is spent); every session of
    /// the user ends.
    pub async fn set_password(&self, actor: &Actor, name: &str, p: &Password) -> Result<(), Error> {
        let Some((rec, rev)) = self.user(name).await? else {
            return Err(Error::NotFound {
                what: format!("user {name:?}"),
                hint: Some("`wharf user ls` lists the users".into()),
            });
        };
        self.replace_password(actor, rec, rev, p, None).await
    }

    /// Store `p` as the password of `rec` (read at `rev`); a waiting invitation is spent, and
    /// the user's sessions end, but the one named `keep` (the caller's own).
    async fn replace_password(
        &self,
        actor: &Actor,
        mut rec: UserRecord,
        rev: u64,
        p: &Password,
        keep: Option<&str>,
    ) -> Result<(), Error> {
        rec.password = Some(hash_password(p)?);
        rec.invitation = None;
        let key = keys::user(&rec.name);
        let mut ops = vec![Op::put(key.clone(), encode(&rec))];
        ops.extend(self.end_sessions(&rec.name, keep).await?);
        let txn = Txn::new()
            .when([Compare::unchanged_since(key, rev)])
            .then(ops);
        committed(
            self.mutate(actor, "user.password", &rec.name, now_ms(), txn)
                .await?,
            &format!("user {}", rec.name),
        )
    }

    /// The user `name` (the caller's session, named `session`) changes its own password, giving
    /// the current one; a wrong current password is refused as a failed login is. The user's
    /// other sessions end.
    pub async fn change_own_password(
        &self,
        actor: &Actor,
        (name, session): (&str, &str),
        current: &Password,
        new: &Password,
    ) -> Result<(), Error> {
        let Some((rec, rev)) = self.user(name).await? else {
            return Err(login_refused());
        };
        if !rec
            .password
            .as_deref()
            .is_some_and(|h| password_matches(h, current))
        {
            return Err(Error::Unauthorized {
                message: "the current password is wrong".into(),
                hint: Some("give the password you logged in with".into()),
            });
        }
        self.replace_password(actor, rec, rev, new, Some(session))
            .await
    }

    /// The caller a user's name and password stand for (the registry's Basic authentication,
    /// where `docker login` sends them), or `None` when they do not check out. Argon2id runs on
    /// a blocking thread: it takes a core for tens of milliseconds.
    pub async fn password_caller(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Option<crate::policy::Caller>, Error> {
        let Some((rec, _)) = self.user(name).await? else {
            return Ok(None);
        };
        let Some(hash) = rec.password.clone() else {
            return Ok(None);
        };
        let p = Password(password.to_string());
        let ok = tokio::task::spawn_blocking(move || password_matches(&hash, &p))
            .await
            .unwrap_or(false);
        Ok(ok.then(|| crate::policy::Caller {
            name: rec.name.clone(),
            role: rec.role,
            scope: Vec::new(),
            user: Some(rec.name),
            session: None,
        }))
    }

    /// A session for the user, in exchange for its password, or for its invitation code and
    /// the password it sets.
    pub async fn login(&self, actor: &Actor, req: &LoginRequest) -> Result<LoginResponse, Error> {
        let now = now_ms();
        let Some((mut rec, rev)) = self.user(&req.user).await? else {
            // As slow as a real check, so timing does not tell which users exist.
            let _ = hash_password(&Password("x".repeat(MIN_PASSWORD_CHARS)));
            return Err(login_refused());
        };
        match (&req.password, &req.invitation, &req.new_password) {
            (Some(p), None, None) => {
                if !rec
                    .password
                    .as_deref()
                    .is_some_and(|h| password_matches(h, p))
                {
                    return Err(login_refused());
                }
            }
            (None, Some(code), Some(new)) => {
                let fresh = rec
                    .invitation
                    .as_ref()
                    .is_some_and(|(h, until)| *h == hash_token(&code.0) && now < *until);
                if !fresh {
                    return Err(login_refused());
                }
                rec.password = Some(hash_password(new)?);
                rec.invitation = None;
            }
            _ => {
                return Err(invalid(
                    "give password, or invitation and new_password".into(),
                    "`wharf login URL` asks for what it needs",
                ));
            }
        }
        let token = generate_token();
        let session = TokenRecord {
            name: format!("session-{}-{}", rec.name, &hash_token(&token)[..8]),
            role: rec.role,
            created_at: now,
            stacks: Vec::new(),
            expires_at: Some(now + SESSION_TTL_MS),
            last_used_at: None,
            user: Some(rec.name.clone()),
        };
        let user_key = keys::user(&rec.name);
        let txn = Txn::new()
            .when([Compare::unchanged_since(user_key.clone(), rev)])
            .then([
                Op::put(user_key, encode(&rec)),
                Op::put(keys::token(&hash_token(&token)), encode(&session)),
                Op::put(
                    keys::token_name(&session.name),
                    hash_token(&token).into_bytes(),
                ),
            ]);
        let actor = Actor {
            name: rec.name.clone(),
            role: Some(rec.role),
            ..actor.clone()
        };
        if !self
            .mutate(&actor, "user.login", &rec.name, now, txn)
            .await?
            .succeeded
        {
            return Err(login_refused());
        }
        Ok(LoginResponse {
            user: rec.name,
            role: rec.role,
            token,
            expires_at: now + SESSION_TTL_MS,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wharf_store::SqliteStore;

    use super::*;

    fn pw(s: &str) -> Option<Password> {
        Some(Password(s.into()))
    }

    fn master() -> Master {
        Master::new(Arc::new(SqliteStore::open_in_memory().unwrap()))
    }

    fn user(name: &str, role: Role, password: Option<Password>) -> UserRequest {
        UserRequest {
            name: name.into(),
            role,
            password,
        }
    }

    fn login_with(user: &str, password: Option<Password>) -> LoginRequest {
        LoginRequest {
            user: user.into(),
            password,
            invitation: None,
            new_password: None,
        }
    }

    #[tokio::test]
    async fn an_invited_user_sets_a_password_and_logs_in_as_itself_until_removed() {
        let (m, admin) = (master(), Actor::named("admin"));
        let created = m
            .add_user(&admin, &user("ann", Role::Operator, None))
            .await
            .unwrap();
        let code = created.invitation.expect("an invitation");
        assert!(!created.info.password_set);

        let accept = LoginRequest {
            user: "ann".into(),
            password: None,
            invitation: Some(code.clone()),
            new_password: pw("correct horse battery"),
        };
        let session = m.login(&Actor::default(), &accept).await.unwrap();
        assert_eq!(session.role, Role::Operator);
        let caller = m.authenticate(&session.token).await.unwrap().unwrap();
        assert_eq!((caller.name.as_str(), caller.role), ("ann", Role::Operator));
        // The invitation is spent; the password works; a wrong one is refused like no user.
        let e = m.login(&Actor::default(), &accept).await.unwrap_err();
        assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
        let ok = login_with("ann", pw("correct horse battery"));
        m.login(&Actor::default(), &ok).await.unwrap();
        let wrong = m
            .login(
                &Actor::default(),
                &login_with("ann", pw("wrong horse battery")),
            )
            .await
            .unwrap_err();
        let nobody = m
            .login(
                &Actor::default(),
                &login_with("bob", pw("correct horse battery")),
            )
            .await
            .unwrap_err();
        assert_eq!(wrong.to_string(), nobody.to_string());
        // Sessions are not API tokens in `token ls`; removing the user ends them.
        assert!(m.list_tokens().await.unwrap().is_empty());
        m.remove_user(&admin, "ann").await.unwrap();
        assert!(m.authenticate(&session.token).await.unwrap().is_err());
    }

    #[tokio::test]
    async fn a_new_password_ends_the_other_sessions_and_keeps_the_one_that_set_it() {
        let (m, admin) = (master(), Actor::named("admin"));
        m.add_user(
            &admin,
            &user("ann", Role::Viewer, pw("first horse battery")),
        )
        .await
        .unwrap();
        let login = || login_with("ann", pw("first horse battery"));
        let here = m.login(&Actor::default(), &login()).await.unwrap().token;
        let laptop = m.login(&Actor::default(), &login()).await.unwrap().token;
        let caller = m.authenticate(&here).await.unwrap().unwrap();
        let session = caller.session.expect("a session names its token");
        m.change_own_password(
            &admin,
            ("ann", &session),
            &Password("first horse battery".into()),
            &Password("second horse battery".into()),
        )
        .await
        .unwrap();
        assert!(
            m.authenticate(&here).await.unwrap().is_ok(),
            "the session that changed it"
        );
        assert!(
            m.authenticate(&laptop).await.unwrap().is_err(),
            "another session"
        );
        // An administrator setting it ends them all.
        m.set_password(&admin, "ann", &Password("third horse battery".into()))
            .await
            .unwrap();
        assert!(m.authenticate(&here).await.unwrap().is_err());
    }

    #[tokio::test]
    async fn short_passwords_and_bad_names_are_refused() {
        let (m, admin) = (master(), Actor::named("admin"));
        let short = user("ann", Role::Viewer, pw("short"));
        let e = m.add_user(&admin, &short).await.unwrap_err();
        assert!(e.to_string().contains("shorter than 12"), "{e}");
        let bad = user("a/b", Role::Viewer, None);
        let e = m.add_user(&admin, &bad).await.unwrap_err();
        assert!(e.to_string().contains("name: \"a/b\""), "{e}");
        assert!(m.list_users().await.unwrap().is_empty());
    }
}
