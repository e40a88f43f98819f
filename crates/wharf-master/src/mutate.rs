//! The one path every change takes: a store transaction that carries its own audit record, so a
//! change and its trail commit together or not at all. Records are appended one at a time (a lock
//! per master, and a compare on the trail's head against other masters) and hash-chained
//! (`audit`): a `kill -9` between two appends leaves a whole chain.

use wharf_store::{Compare, Op, Txn, TxnResponse};
use wharf_types::{AuditRecord, Role};

use crate::audit::{self, Head};
use crate::model::{decode, encode, keys};
use crate::{Error, Master};

/// Who is acting, and from where: what the audit trail records of a caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    /// The token or user name; `system` for the controllers.
    pub name: String,
    pub role: Option<Role>,
    /// The client's address.
    pub source: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl Actor {
    /// An actor known by name only (controllers, the master's own steps, tests).
    pub fn named(name: impl Into<String>) -> Actor {
        Actor {
            name: name.into(),
            ..Actor::default()
        }
    }
}

/// How many times an append is tried when other masters keep moving the head.
const APPEND_TRIES: usize = 8;

impl Master {
    /// Commit `txn` with an audit record of `action` on `target` by `actor` in its success branch.
    /// Returns the transaction's response; `succeeded == false` means a compare failed and nothing
    /// was written (the caller decides whether to retry or report a conflict).
    pub async fn mutate(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        at: u64,
        txn: Txn,
    ) -> Result<TxnResponse, Error> {
        self.append(actor, action, target, at, ("ok", None), txn)
            .await
    }

    /// `mutate`, with what was done in short (`summary`, e.g. the commit a webhook deployed).
    pub async fn mutate_noted(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        at: u64,
        summary: String,
        txn: Txn,
    ) -> Result<TxnResponse, Error> {
        let summary = Some(wharf_types::excerpt(&summary, 400));
        self.append(actor, action, target, at, ("ok", summary), txn)
            .await
    }

    /// Record a refused attempt (outcome `denied`); it changes nothing else.
    pub async fn audit_denied(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        at: u64,
    ) -> Result<(), Error> {
        self.append(actor, action, target, at, ("denied", None), Txn::new())
            .await
            .map(|_| ())
    }

    /// Record something done that changes no record (a command run in an instance), with what
    /// (`summary`, e.g. the command).
    pub async fn audit_done(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        at: u64,
        summary: String,
    ) -> Result<(), Error> {
        self.mutate_noted(actor, action, target, at, summary, Txn::new())
            .await
            .map(|_| ())
    }

    /// Record a refused attempt with why (`summary`, e.g. the admission rule that refused it).
    pub async fn audit_refused(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        at: u64,
        summary: String,
    ) -> Result<(), Error> {
        let summary = Some(wharf_types::excerpt(&summary, 400));
        self.append(actor, action, target, at, ("denied", summary), Txn::new())
            .await
            .map(|_| ())
    }

    /// The trail's head and the revision it was written at (none before the first record).
    pub async fn audit_head(&self) -> Result<(Head, Option<u64>), Error> {
        match self.store.get(keys::AUDIT_HEAD).await? {
            Some(kv) => Ok((decode(keys::AUDIT_HEAD, &kv.value)?, Some(kv.mod_revision))),
            None => Ok((Head::genesis(), None)),
        }
    }

    /// Every record of the trail, in order.
    pub async fn audit_records(&self) -> Result<Vec<AuditRecord>, Error> {
        let (kvs, _) = self.store.range(keys::AUDIT).await?;
        kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
    }

    /// Make the trail ready at start: chain the records of an older master, and open the
    /// `audit_log` file and append what it lacks (a crash can come between a commit and its line).
    pub async fn open_audit_trail(&self) -> Result<(), Error> {
        self.chain_legacy_audit().await?;
        let Some(path) = &self.config.audit_log else {
            return Ok(());
        };
        let sink = audit::Sink::open(path).map_err(|e| {
            Error::Unavailable(format!("cannot open the audit log {}: {e}", path.display()))
        })?;
        let _one_at_a_time = self.audit_lock.lock().await;
        sink.write(&self.audit_records().await?).map_err(|e| {
            Error::Unavailable(format!(
                "cannot write the audit log {}: {e}",
                path.display()
            ))
        })?;
        let _ = self.audit_sink.set(sink);
        Ok(())
    }

    /// Chain the records a master before the chain wrote (`/audit/{at}-{id}`, no hashes) into the
    /// trail, in their order, as the first records; once, when the trail has no head yet.
    pub async fn chain_legacy_audit(&self) -> Result<(), Error> {
        #[derive(serde::Deserialize)]
        struct Legacy {
            at: u64,
            actor: String,
            action: String,
            target: String,
        }
        let _one_at_a_time = self.audit_lock.lock().await;
        let (head, head_rev) = self.audit_head().await?;
        if head_rev.is_some() {
            return Ok(());
        }
        let (kvs, _) = self.store.range(keys::AUDIT).await?;
        if kvs.is_empty() {
            return Ok(());
        }
        let mut txn = Txn::new().when([Compare::missing(keys::AUDIT_HEAD)]);
        let mut head = head;
        for kv in &kvs {
            let old: Legacy = decode(&kv.key, &kv.value)?;
            let (record, next_head) = audit::next(
                &head,
                AuditRecord {
                    at: old.at,
                    actor: old.actor,
                    action: old.action,
                    target: old.target,
                    outcome: "ok".into(),
                    summary: Some("recorded before the trail was chained".into()),
                    ..AuditRecord::default()
                },
            );
            txn.success.push(Op::delete(kv.key.clone()));
            txn.success
                .push(Op::put(keys::audit(record.id), encode(&record)));
            head = next_head;
        }
        txn.success.push(Op::put(keys::AUDIT_HEAD, encode(&head)));
        self.store.txn(txn).await?;
        tracing::info!(
            records = kvs.len(),
            "chained the audit records of an older master"
        );
        Ok(())
    }

    async fn append(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        at: u64,
        (outcome, summary): (&str, Option<String>),
        txn: Txn,
    ) -> Result<TxnResponse, Error> {
        if cfg!(feature = "bench-unsecured") {
            return Ok(self.store.txn(txn).await?);
        }
        let _one_at_a_time = self.audit_lock.lock().await;
        for _ in 0..APPEND_TRIES {
            let (head, head_rev) = self.audit_head().await?;
            let (record, new_head) = audit::next(
                &head,
                AuditRecord {
                    at,
                    actor: actor.name.clone(),
                    role: actor.role,
                    source: actor.source.clone(),
                    user_agent: actor.user_agent.clone(),
                    request_id: actor.request_id.clone(),
                    action: action.to_string(),
                    target: target.to_string(),
                    outcome: outcome.to_string(),
                    summary: summary.clone(),
                    ..AuditRecord::default()
                },
            );
            let mut t = txn.clone();
            t.compares.push(match head_rev {
                Some(rev) => Compare::unchanged_since(keys::AUDIT_HEAD, rev),
                None => Compare::missing(keys::AUDIT_HEAD),
            });
            t.success
                .push(Op::put(keys::audit(record.id), encode(&record)));
            t.success.push(Op::put(keys::AUDIT_HEAD, encode(&new_head)));
            let r = self.store.txn(t).await?;
            if r.succeeded {
                tracing::info!(actor = %actor.name, action, target, outcome, "audit");
                if let Some(sink) = self.audit_sink.get()
                    && let Err(e) = sink.write(std::slice::from_ref(&record))
                {
                    // The store has it; the next start appends what the file lacks.
                    tracing::warn!(file = %sink.path().display(), error = %e, "cannot write the audit log");
                }
                return Ok(r);
            }
            // Another master appended meanwhile: again on its head. Else the caller's compare
            // failed, and nothing was written.
            if self.audit_head().await?.1 == head_rev {
                return Ok(r);
            }
        }
        Err(Error::Unavailable(
            "the audit trail keeps moving under this master".into(),
        ))
    }
}
