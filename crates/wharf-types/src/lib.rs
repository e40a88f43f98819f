//! The wire model of Wharf: the normalised stack spec and every API request and response.
//!
//! Architecture invariant: this crate does no IO and knows nothing of tokio, HTTP or the store.
//! Everything here is serialisable and is a compatibility promise, so keep it small.
#![forbid(unsafe_code)]

mod agent;
mod api;
mod spec;

pub use agent::*;
pub use api::*;
pub use spec::*;

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
}
