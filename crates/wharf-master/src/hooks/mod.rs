//! Webhooks, the pure part: the stored records, signatures (checked per git host on the way in,
//! made on the way out), push payloads, ref filters, which events an outgoing hook wants, and
//! when a failed delivery is tried again. The IO is in `dispatch` (the sender, a controller) and
//! `api::hooks` (the routes).
//!
//! An incoming hook is bound to a stack and a ref filter: a push to a matching ref deploys the
//! stack's stored spec again (a new deployment that replaces every instance, recording the
//! commit and the pusher); a push elsewhere is acknowledged and ignored. Its secret is made by
//! Wharf, shown once, and kept sealed under the data key (the HMAC needs the key itself).
//!
//! An outgoing hook gets the events it names, each delivery signed with its secret, tried until
//! the receiver answers 2xx or `MAX_ATTEMPTS` tries failed, with a stable delivery id.

pub mod dispatch;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use wharf_types::{
    Backoff, DeliveryAttempt, Event, HOOK_EVENTS, HookDelivery, HookInfo, HookProvider,
};

use crate::seal::Sealed;

/// The ref an incoming hook follows when none is given.
pub const DEFAULT_REF: &str = "refs/heads/main";

/// Tries of one delivery before it is `failed`.
pub const MAX_ATTEMPTS: usize = 8;

/// The wait before the retry after the `n`th failed try (`n` from 1): 1 s, 2 s, 4 s… up to 5
/// minutes; eight tries span about four and a quarter minutes.
pub const RETRY: Backoff = Backoff::new(
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(300),
);

/// Deliveries kept per hook: the newest; older finished ones are dropped.
pub const KEEP_DELIVERIES: usize = 50;

/// A webhook as the store keeps it (`keys::hook`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRecord {
    pub id: String,
    pub kind: HookKind,
    /// The HMAC key, sealed under the data key as item `hook:{id}`, version 1.
    pub secret: Sealed,
    pub created_at: u64,
    pub created_by: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookKind {
    Incoming {
        stack: String,
        git_ref: String,
        provider: HookProvider,
    },
    Outgoing {
        url: String,
        events: Vec<String>,
    },
}

impl HookRecord {
    /// What `GET /v1/hooks` shows of it (never the secret).
    pub fn info(&self) -> HookInfo {
        let mut info = HookInfo {
            id: self.id.clone(),
            direction: String::new(),
            stack: None,
            git_ref: None,
            provider: None,
            url: None,
            events: Vec::new(),
            created_at: self.created_at,
            created_by: self.created_by.clone(),
        };
        match &self.kind {
            HookKind::Incoming {
                stack,
                git_ref,
                provider,
            } => {
                info.direction = "incoming".into();
                info.stack = Some(stack.clone());
                info.git_ref = Some(git_ref.clone());
                info.provider = Some(*provider);
            }
            HookKind::Outgoing { url, events } => {
                info.direction = "outgoing".into();
                info.url = Some(url.clone());
                info.events = events.clone();
            }
        }
        info
    }
}

/// The item name a hook's secret is sealed as.
pub fn seal_item(id: &str) -> String {
    format!("hook:{id}")
}

/// A new secret: 32 random bytes, hex.
pub fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// `sha256=HEX`: the HMAC-SHA256 of `body` under `secret` (GitHub's header, and Wharf's own
/// `X-Wharf-Signature-256`).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_of(secret, body)))
}

fn hmac_of(secret: &[u8], body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Whether `got` (hex) is the HMAC of `body`, compared in constant time.
fn hmac_matches(secret: &[u8], body: &[u8], got_hex: &str) -> bool {
    let Ok(got) = hex::decode(got_hex.trim()) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&got).is_ok()
}

/// Constant-time equality of two byte strings (GitLab sends the secret itself).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The header each provider signs with.
pub fn signature_header(p: HookProvider) -> &'static str {
    match p {
        HookProvider::Github => "x-hub-signature-256",
        HookProvider::Gitlab => "x-gitlab-token",
        HookProvider::Gitea => "x-gitea-signature",
    }
}

/// Check an incoming request's signature: `header` is the value of `signature_header(p)`.
/// The error says what was wrong (never the secret nor the expected value).
pub fn verify(
    p: HookProvider,
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
) -> Result<(), String> {
    let name = signature_header(p);
    let Some(value) = header else {
        return Err(format!("no {name} header"));
    };
    let ok = match p {
        HookProvider::Github => match value.trim().strip_prefix("sha256=") {
            Some(hex) => hmac_matches(secret, body, hex),
            None => return Err(format!("{name} does not start with sha256=")),
        },
        HookProvider::Gitea => hmac_matches(secret, body, value),
        HookProvider::Gitlab => same_bytes(value.trim().as_bytes(), secret),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the {name} header does not match the hook's secret"
        ))
    }
}

/// What a push says: the ref, the commit it moved to, who pushed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Push {
    pub git_ref: String,
    pub commit: String,
    pub pusher: String,
}

/// Read a push payload (GitHub, GitLab and Gitea all send `ref` and `after`; the pusher is
/// `pusher.name` (GitHub), `user_username` (GitLab) or `pusher.login`/`pusher.username` (Gitea)).
pub fn parse_push(p: HookProvider, body: &[u8]) -> Result<Push, String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "the payload is not JSON: {}",
            wharf_types::excerpt(&e.to_string(), 200)
        )
    })?;
    let text = |ptr: &str| v.pointer(ptr).and_then(|x| x.as_str()).map(str::to_string);
    let git_ref = text("/ref").ok_or("the payload has no `ref`: not a push")?;
    let commit = text("/after")
        .or_else(|| text("/checkout_sha"))
        .or_else(|| text("/head_commit/id"))
        .ok_or("the payload has no `after` commit: not a push")?;
    let pusher = match p {
        HookProvider::Github => text("/pusher/name").or_else(|| text("/sender/login")),
        HookProvider::Gitlab => text("/user_username").or_else(|| text("/user_name")),
        HookProvider::Gitea => text("/pusher/login")
            .or_else(|| text("/pusher/username"))
            .or_else(|| text("/sender/login")),
    }
    .unwrap_or_else(|| "unknown".into());
    let short = |s: String| wharf_types::excerpt(&s, 200);
    Ok(Push {
        git_ref: short(git_ref),
        commit: short(commit),
        pusher: short(pusher),
    })
}

/// Whether an incoming request is a push, by the provider's event header (absent: assume so).
pub fn is_push(p: HookProvider, event_header: Option<&str>) -> bool {
    match (p, event_header) {
        (_, None) => true,
        (HookProvider::Gitlab, Some(e)) => e.eq_ignore_ascii_case("Push Hook"),
        (_, Some(e)) => e.eq_ignore_ascii_case("push"),
    }
}

/// The header naming the event kind, per provider.
pub fn event_header(p: HookProvider) -> &'static str {
    match p {
        HookProvider::Github => "x-github-event",
        HookProvider::Gitlab => "x-gitlab-event",
        HookProvider::Gitea => "x-gitea-event",
    }
}

/// Whether a push to `git_ref` matches the hook's `filter` (`*`: any run of characters).
pub fn ref_matches(filter: &str, git_ref: &str) -> bool {
    crate::policy::glob_match(filter, git_ref)
}

/// Whether the outgoing hook `kind` wants `event`: its kind is one the hook names, and it was
/// told after the hook was made.
pub fn wants(hook: &HookRecord, event: &Event) -> bool {
    match &hook.kind {
        HookKind::Outgoing { events, .. } => {
            event.time >= hook.created_at && events.iter().any(|k| k == &event.kind)
        }
        HookKind::Incoming { .. } => false,
    }
}

/// Check the events an outgoing hook asks for: known kinds, at least one.
pub fn check_events(events: &[String]) -> Result<(), String> {
    if events.is_empty() {
        return Err(format!(
            "an outgoing hook needs --events, some of {}",
            HOOK_EVENTS.join(", ")
        ));
    }
    match events.iter().find(|e| !HOOK_EVENTS.contains(&e.as_str())) {
        Some(e) => Err(format!(
            "{:?} is not an event kind: {}",
            wharf_types::excerpt(e, 40),
            HOOK_EVENTS.join(", ")
        )),
        None => Ok(()),
    }
}

/// Check an outgoing URL: http or https, a host, no credentials in it, at most 2,000 characters.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > 2000 {
        return Err("the URL is longer than 2,000 characters".into());
    }
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("{:?} is not a URL: {e}", wharf_types::excerpt(url, 80)))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{:?}: only http and https URLs are allowed",
            wharf_types::excerpt(url, 80)
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{:?} names no host", wharf_types::excerpt(url, 80)));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "the URL must not carry a user or password (the signature authenticates the delivery)"
                .into(),
        );
    }
    Ok(())
}

/// A delivery as the store keeps it: the API's view and the event, whose body every try sends
/// unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    pub delivery: HookDelivery,
    pub payload: Event,
}

/// The body a delivery sends (the same on every try).
pub fn body_of(d: &DeliveryRecord) -> Vec<u8> {
    let body = serde_json::json!({
        "delivery": d.delivery.id,
        "hook": d.delivery.hook,
        "event": d.payload,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A new pending delivery of `event` (its cursor `cursor`) to `hook`, due at once.
pub fn new_delivery(hook: &str, cursor: &str, event: &Event, now: u64) -> DeliveryRecord {
    let mut payload = event.clone();
    payload.cursor = cursor.to_string();
    DeliveryRecord {
        delivery: HookDelivery {
            id: format!("{hook}-{cursor}"),
            hook: hook.to_string(),
            event: event.kind.clone(),
            state: "pending".into(),
            attempts: Vec::new(),
            next_at: Some(now),
            created_at: now,
        },
        payload,
    }
}

/// The delivery after a try at `now` that got `status` (2xx: delivered) or `error`: delivered,
/// due again after `RETRY`'s delay, or `failed` after `MAX_ATTEMPTS` tries.
pub fn after_attempt(
    mut d: DeliveryRecord,
    now: u64,
    status: Option<u16>,
    error: Option<String>,
) -> DeliveryRecord {
    let ok = status.is_some_and(|s| (200..300).contains(&s)) && error.is_none();
    let error = match (ok, error, status) {
        (true, _, _) => None,
        (false, Some(e), _) => Some(e),
        (false, None, Some(s)) => Some(format!("the receiver answered {s}")),
        (false, None, None) => Some("no answer".into()),
    };
    d.delivery.attempts.push(DeliveryAttempt {
        at: now,
        status,
        error,
    });
    let tries = d.delivery.attempts.len();
    if ok {
        d.delivery.state = "delivered".into();
        d.delivery.next_at = None;
    } else if tries >= MAX_ATTEMPTS {
        d.delivery.state = "failed".into();
        d.delivery.next_at = None;
    } else {
        let wait = RETRY.delay(tries as u32 - 1).as_millis() as u64;
        d.delivery.next_at = Some(now + wait);
    }
    d
}

/// Whether a delivery is due for a try at `now`.
pub fn due(d: &HookDelivery, now: u64) -> bool {
    d.state == "pending" && d.next_at.is_some_and(|t| t <= now)
}

/// Which of one hook's deliveries (`(key, delivery)`, oldest first) to drop so that at most
/// `KEEP_DELIVERIES` stay: the oldest finished ones (a pending one is never dropped).
pub fn to_trim<'a>(deliveries: &[(&'a str, &HookDelivery)]) -> Vec<&'a str> {
    let excess = deliveries.len().saturating_sub(KEEP_DELIVERIES);
    deliveries
        .iter()
        .filter(|(_, d)| d.state != "pending")
        .take(excess)
        .map(|(k, _)| *k)
        .collect()
}

#[cfg(test)]
mod tests;
