//! The Wharf agent: makes its node match the instances assigned to it.
//!
//! Code map: `driver` (the seam to Docker and native processes, plus a recording fake) · `plan`
//! (pure: what to do to each instance now, restart backoff) · `agent` (the loop: observe, plan, act,
//! report) · `ingress` (the node's ingress proxies, following the routing table) · `dns` (the
//! service-discovery DNS server of the stack networks) · `hostnet` (routes, firewall rules and
//! the WireGuard interface of cross-host container networking) · `tunnel` (the node's WireGuard
//! keys and what its interface should be) · `segments` (pure: who may reach each container
//! here, from Compose `networks:`, `internal` and `allow_from`) · `membership` (the cluster this node belongs to:
//! desired states of another cluster, or older than seen, are not acted on) · `link` (the stream
//! to a remote master) · `stacknet` (what the stack networks need: subnets, DNS listeners) ·
//! `files` (the secret and config files of the node's instances, on a tmpfs) · `metrics` (the
//! agent's Prometheus metrics: instances, restarts, link connections, DNS queries) · `exec`
//! (commands run in instances and their resource usage, served to the master with bounded
//! windows) · `mirror` (the node's read-through cache of the cluster's registry, on loopback,
//! that the engine pulls pinned images from).
//!
//! Architecture invariant: the agent knows nothing of the store. It receives full snapshots of its
//! node's desired state and sends full snapshots of what runs.

pub mod agent;
pub mod dns;
pub mod driver;
pub mod exec;
pub mod files;
pub mod hostnet;
pub mod ingress;
pub mod link;
pub mod membership;
pub mod metrics;
pub mod mirror;
pub mod plan;
pub mod segments;
pub mod stacknet;
pub mod tunnel;

pub use agent::{Agent, ControlPlane};

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
