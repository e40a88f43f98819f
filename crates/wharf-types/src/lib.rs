//! The wire model of Wharf: the normalised stack spec and every API request and response.
//!
//! Architecture invariant: this crate does no IO and knows nothing of tokio, HTTP or the store.
//! Everything here but the pure `backoff` helper is serialisable and is a compatibility promise,
//! so keep it small.
//!
//! Code map: `spec` (the normalised stack spec) · `api` (HTTP requests and responses) · `agent`
//! (master ↔ agent messages) · `constraint` (placement constraints, typed and parsed) · `backoff`
//! (retry delays: exponential with a cap, for the agent's restarts and reconnects and the CLI's
//! retries) · `hardening` (a service's capabilities, privileges, seccomp, sysctls, ulimits…,
//! typed, and the names each accepts) · `runtime` (how its containers run beyond that: memory swap,
//! CPU shares, logging, DNS, extra hosts, devices, platform, hooks…) · `admission` (the cluster's admission policy file and
//! `GET /v1/policy`) · `exec` (running a command in an instance: the query, the frames of
//! the exec stream, instance resource usage) · `scan` (image scanning: an image's installed
//! packages and the advisories that affect them) · `hooks` (webhooks: incoming pushes,
//! outgoing events, their delivery log) · `image` (image references, the cluster registry's
//! host, what a node's mirror fetches from the master); `excerpt` keeps quoted text short.
#![forbid(unsafe_code)]

mod admission;
mod agent;
mod api;
mod backoff;
pub mod constraint;
mod exec;
mod hardening;
mod hooks;
mod image;
mod runtime;
mod scan;
mod spec;

pub use admission::*;
pub use agent::*;
pub use api::*;
pub use backoff::Backoff;
pub use exec::*;
pub use hardening::*;
pub use hooks::*;
pub use image::*;
pub use runtime::*;
pub use scan::*;
pub use spec::*;

/// `text` cut to `max_chars` characters, saying how many were left out: for messages that quote
/// what somebody else wrote (a stack file's value, a peer's frame), which must stay short
/// whatever they wrote.
pub fn excerpt(text: &str, max_chars: usize) -> String {
    let total = text.chars().count();
    if total <= max_chars {
        return text.to_string();
    }
    let head: String = text.chars().take(max_chars).collect();
    format!("{head}... ({} more characters)", total - max_chars)
}

/// The most replicas one service may ask for, on every path: the Compose converter, the master's
/// validation of a deploy, and `service scale`. A mistyped count (100000 for 10) must be refused at
/// once, not turned into container creations until the engine gives up. Far above what one node
/// runs ([`DEFAULT_MAX_INSTANCES`]); a cluster that needs more splits the service.
pub const MAX_REPLICAS: u32 = 10_000;

/// Instances one node takes when its agent does not say otherwise (`--max-instances`, and
/// [`NodeFacts::max_instances`] 0). Each instance is a container with its own processes, network
/// endpoint and engine bookkeeping; past a few hundred per host the engine itself slows down
/// (Kubernetes caps a node at 110 pods by default). 256 leaves room for small services and still
/// stops a runaway deploy long before the engine times out.
pub const DEFAULT_MAX_INSTANCES: u32 = 256;

/// The label keys Wharf puts on every container it creates. They are how an agent adopts its
/// containers after a restart, so they are part of the on-host contract.
pub mod labels {
    pub const MANAGED: &str = "io.wharf.managed";
    /// The node whose agent manages the container (several agents may share one engine).
    pub const NODE: &str = "io.wharf.node";
    pub const STACK: &str = "io.wharf.stack";
    pub const SERVICE: &str = "io.wharf.service";
    pub const INSTANCE: &str = "io.wharf.instance";
    pub const SLOT: &str = "io.wharf.slot";
    pub const GENERATION: &str = "io.wharf.generation";
    pub const SPEC_HASH: &str = "io.wharf.spec-hash";
    /// The service's `post_start` and `pre_stop` hooks (JSON), for the driver after a restart.
    pub const HOOKS: &str = "io.wharf.hooks";
    /// The service's `dns` servers (comma-separated): where Wharf's DNS server forwards this
    /// container's questions for names outside the cluster.
    pub const DNS: &str = "io.wharf.dns";
}
