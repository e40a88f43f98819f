//! Webhooks on the wire: incoming (a git host's push deploys a stack) and outgoing (Wharf's
//! events POSTed to a URL), their creation, listing and delivery log (`/v1/hooks`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The event kinds an outgoing webhook may ask for: a deployment's, a tag pushed to the cluster's
/// registry (`image.pushed`), a pushed image's scan that found advisories (`scan.found`).
pub const HOOK_EVENTS: &[&str] = &[
    "deploy.started",
    "deploy.succeeded",
    "deploy.failed",
    "deploy.rolled_back",
    "image.pushed",
    "scan.found",
];

/// The git host whose push payloads and signature an incoming webhook understands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HookProvider {
    /// `X-Hub-Signature-256: sha256=HEX`, the HMAC-SHA256 of the body.
    #[default]
    Github,
    /// `X-Gitlab-Token`: the secret itself, compared in constant time.
    Gitlab,
    /// `X-Gitea-Signature: HEX`, the HMAC-SHA256 of the body.
    Gitea,
}

impl HookProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            HookProvider::Github => "github",
            HookProvider::Gitlab => "gitlab",
            HookProvider::Gitea => "gitea",
        }
    }

    pub fn parse(s: &str) -> Result<HookProvider, String> {
        match s {
            "github" => Ok(HookProvider::Github),
            "gitlab" => Ok(HookProvider::Gitlab),
            "gitea" => Ok(HookProvider::Gitea),
            _ => Err(format!(
                "{:?} is not a provider: github, gitlab or gitea",
                crate::excerpt(s, 40)
            )),
        }
    }
}

/// Body of `POST /v1/hooks`: `stack` for an incoming hook, `url` and `events` for an outgoing one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HookRequest {
    /// Incoming: the stack a matching push deploys again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// Incoming: the ref a push must be to (default `refs/heads/main`); `*` for any run of
    /// characters (`refs/tags/v*`).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// Incoming: the git host (default github).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<HookProvider>,
    /// Outgoing: where events are POSTed (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Outgoing: the event kinds to send (see `HOOK_EVENTS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// A webhook as `GET /v1/hooks` lists it (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HookInfo {
    pub id: String,
    /// `incoming` or `outgoing`.
    pub direction: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<HookProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    pub created_at: u64,
    pub created_by: String,
}

/// Answer of `POST /v1/hooks`: the hook and its secret, shown only this once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HookCreated {
    #[serde(flatten)]
    pub info: HookInfo,
    /// The HMAC key (incoming: what the git host signs with; outgoing: what Wharf signs with).
    pub secret: String,
    /// Incoming: the path the git host POSTs to (`/v1/hooks/{id}`), on the API's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// What an incoming push did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HookPushResponse {
    /// The deployment started, when the push matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    /// Why nothing was deployed (another ref, not a push).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pusher: Option<String>,
}

/// One try of a delivery.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryAttempt {
    pub at: u64,
    /// The receiver's HTTP status, when it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why the try failed (no answer, a status other than 2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One event's delivery to an outgoing hook, with its tries (`GET /v1/hooks/{id}/deliveries`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HookDelivery {
    /// Stable across retries (`X-Wharf-Delivery`): a receiver dedupes on it.
    pub id: String,
    pub hook: String,
    /// The event kind (`X-Wharf-Event`).
    pub event: String,
    /// `pending`, `delivered` or `failed` (no try left).
    pub state: String,
    pub attempts: Vec<DeliveryAttempt>,
    /// When the next try is due (pending only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_at: Option<u64>,
    pub created_at: u64,
}
