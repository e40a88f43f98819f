//! The one path every change takes: a store transaction that carries its own audit record, so a
//! change and its trail commit together or not at all.

use wharf_store::{Op, Txn, TxnResponse};
use wharf_types::AuditRecord;

use crate::model::{encode, keys};
use crate::{Error, Master, new_id};

/// Who is acting: the name of the token, or `system` for controllers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor(pub String);

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
        mut txn: Txn,
    ) -> Result<TxnResponse, Error> {
        let id = new_id("");
        let record = AuditRecord {
            id: 0,
            at,
            actor: actor.0.clone(),
            action: action.to_string(),
            target: target.to_string(),
        };
        txn.success
            .push(Op::put(keys::audit(at, &id), encode(&record)));
        tracing::info!(actor = %actor.0, action, target, "mutation");
        Ok(self.store.txn(txn).await?)
    }
}
