//! The tidy rules: checks on the workspace's own source tree, run as tests (`tests/tidy.rs`), as
//! rust-analyzer's tidy tests are. Each rule is a pure function over the parsed sources that
//! returns its violations, each naming a place and what to do; a fixture in the tests breaks each
//! rule on purpose to show it fails.
//!
//! Code map: `source` (the crates, their module trees and parsed files) · `circles` (import
//! circles between sibling modules) · `fns` (function length) · `docs` (a `//!` line on every
//! module, the code map of each crate root) · `keys` (store key prefixes in one place) · `ports`
//! (ARCHITECTURE.md's ports table against the listen flags) · `unused` (`pub` items nothing
//! names).
#![forbid(unsafe_code)]

pub mod circles;
pub mod docs;
pub mod fns;
pub mod keys;
pub mod ports;
pub mod source;
pub mod unused;

use std::fmt;
use std::path::PathBuf;

/// One broken rule at one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The file (relative to the workspace root) and line, where there is one.
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// The violations as one message for a failing test, or `None` when there are none.
pub fn report(rule: &str, violations: &[Violation]) -> Option<String> {
    if violations.is_empty() {
        return None;
    }
    let mut s = format!("tidy rule `{rule}`: {} violation(s)\n", violations.len());
    for v in violations {
        s.push_str(&format!("  {v}\n"));
    }
    Some(s)
}
