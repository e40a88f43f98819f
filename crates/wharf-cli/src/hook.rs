//! `wharf hook`: webhooks. Create one (its secret printed once; an incoming hook's URL with
//! it), list them, read an outgoing hook's delivery log, remove one.

use wharf_types::{HookDelivery, HookInfo, HookRequest};

use crate::args::HookCmd;
use crate::cmd::ClientFn;
use crate::error::CliError;
use crate::output::{Listing, emit};
use crate::render::{self, table};

pub async fn hook(cmd: HookCmd, list: Listing, client: &ClientFn<'_>) -> Result<(), CliError> {
    let client = client()?;
    match cmd {
        HookCmd::Create {
            stack,
            git_ref,
            provider,
            url,
            events,
        } => {
            let incoming = stack.is_some();
            let req = HookRequest {
                stack,
                git_ref: incoming.then_some(git_ref),
                provider: incoming.then_some(provider),
                url,
                events,
            };
            let created = client.create_hook(&req).await?;
            let base = client.url();
            emit(list.output, &created, |c| {
                if let Some(path) = &c.path {
                    println!("url:    {base}{path}");
                }
                println!("secret: {}", c.secret);
                eprintln!(
                    "hook {} ({}) created; the secret is shown only this once",
                    c.info.id,
                    describe(&c.info)
                );
            });
        }
        HookCmd::Ls => {
            let hooks = client.list_hooks().await?;
            list.print(
                "hook",
                &hooks,
                |h| h.id.clone(),
                |hs, _| hooks_table(hs, render::now_ms()),
            );
        }
        HookCmd::Deliveries { hook } => {
            let ds = client.hook_deliveries(&hook).await?;
            list.print(
                "delivery",
                &ds,
                |d| d.id.clone(),
                |ds, _| deliveries_table(ds, render::now_ms()),
            );
        }
        HookCmd::Rm { hook } => {
            let r = client.remove_hook(&hook).await?;
            emit(list.output, &r, |_| println!("hook {hook} removed"));
        }
    }
    Ok(())
}

/// What a hook does, in a few words.
fn describe(h: &HookInfo) -> String {
    match (&h.stack, &h.url) {
        (Some(stack), _) => format!(
            "a {} push to {} deploys {stack}",
            h.provider.map_or("github", |p| p.as_str()),
            h.git_ref.as_deref().unwrap_or("?")
        ),
        (None, Some(url)) => format!("{} to {url}", h.events.join(",")),
        (None, None) => h.direction.clone(),
    }
}

fn hooks_table(hooks: &[HookInfo], now_ms: u64) -> String {
    let rows = hooks
        .iter()
        .map(|h| {
            vec![
                h.id.clone(),
                h.direction.clone(),
                describe(h),
                h.created_by.clone(),
                render::ago(now_ms, h.created_at),
            ]
        })
        .collect();
    table(&["ID", "DIRECTION", "WHAT", "CREATED BY", "CREATED"], rows)
}

fn deliveries_table(ds: &[HookDelivery], now_ms: u64) -> String {
    let rows = ds
        .iter()
        .map(|d| {
            let last = d.attempts.last();
            let result = match last {
                None => "-".to_string(),
                Some(a) => match (&a.status, &a.error) {
                    (Some(s), None) => s.to_string(),
                    (_, Some(e)) => e.clone(),
                    (None, None) => "-".to_string(),
                },
            };
            let next = match d.next_at {
                Some(t) if t > now_ms => format!("in {}s", (t - now_ms).div_ceil(1000)),
                Some(_) => "now".to_string(),
                None => "-".to_string(),
            };
            vec![
                d.id.clone(),
                d.event.clone(),
                d.state.clone(),
                d.attempts.len().to_string(),
                result,
                next,
                render::ago(now_ms, d.created_at),
            ]
        })
        .collect();
    table(
        &[
            "DELIVERY", "EVENT", "STATE", "TRIES", "LAST", "NEXT", "CREATED",
        ],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_types::{DeliveryAttempt, HookProvider};

    #[test]
    fn tables_say_what_each_hook_does_and_how_deliveries_went() {
        let incoming = HookInfo {
            id: "h-1".into(),
            direction: "incoming".into(),
            stack: Some("shop".into()),
            git_ref: Some("refs/heads/main".into()),
            provider: Some(HookProvider::Gitea),
            url: None,
            events: vec![],
            created_at: 0,
            created_by: "admin".into(),
        };
        let outgoing = HookInfo {
            id: "h-2".into(),
            direction: "outgoing".into(),
            stack: None,
            git_ref: None,
            provider: None,
            url: Some("http://ci/hook".into()),
            events: vec!["deploy.succeeded".into(), "deploy.failed".into()],
            created_at: 0,
            created_by: "admin".into(),
        };
        let t = hooks_table(&[incoming, outgoing], 60_000);
        assert!(
            t.contains("a gitea push to refs/heads/main deploys shop"),
            "{t}"
        );
        assert!(
            t.contains("deploy.succeeded,deploy.failed to http://ci/hook"),
            "{t}"
        );
        let attempt = |status, error: Option<&str>| DeliveryAttempt {
            at: 0,
            status,
            error: error.map(str::to_string),
        };
        let d = HookDelivery {
            id: "h-2-7.0".into(),
            hook: "h-2".into(),
            event: "deploy.succeeded".into(),
            state: "pending".into(),
            attempts: vec![attempt(Some(500), Some("the receiver answered 500"))],
            next_at: Some(62_000),
            created_at: 0,
        };
        let t = deliveries_table(&[d], 60_000);
        let row = t.lines().nth(1).unwrap();
        for part in [
            "h-2-7.0",
            "pending",
            " 1 ",
            "the receiver answered 500",
            "in 2s",
        ] {
            assert!(row.contains(part), "{part:?} in {row:?}");
        }
    }
}
