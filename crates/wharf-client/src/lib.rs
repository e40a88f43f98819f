//! Typed client of the Wharf HTTP API, its errors, and the context file that says where the API is.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wharf_client::ClientError> {
//! let ctx = wharf_client::Context::load()?;
//! let client = wharf_client::Client::from_context(&ctx)?;
//! for stack in client.list_stacks().await? {
//!     println!("{} (revision {})", stack.name, stack.revision);
//! }
//! # Ok(()) }
//! ```
//!
//! Code map: `client` (one typed method per endpoint) · `context` (where the API is, the 0600
//! context file) · `error` (`ClientError` with hints) · `ndjson` (newline-delimited JSON from
//! chunks, for streamed logs).
#![forbid(unsafe_code)]

mod client;
mod context;
mod error;
mod ndjson;

pub use client::{Client, Events, LogLines};
pub use context::{Context, DEFAULT_NAME as DEFAULT_CONTEXT, valid_name as valid_context_name};
pub use error::ClientError;
pub use ndjson::NdjsonDecoder;
