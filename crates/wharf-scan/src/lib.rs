//! Image scanning, pure: what an image installs and which known vulnerabilities affect it.
//!
//! - `inventory`: the OS packages installed in an image, read from its layers in order (the
//!   dpkg status database, Alpine's apk database; whiteouts honoured) and its `os-release`.
//! - `osv`: the vulnerability database, advisories in the OSV format an operator imports from
//!   files (no internet is assumed), kept by ecosystem and package.
//! - `version`: how versions order in each ecosystem (dpkg's rules, apk's rules).
//! - `findings`: the advisories that affect an inventory, one finding per advisory and package,
//!   with the installed and the fixed version and the severity.
//!
//! No IO but the readers handed in: an agent hands in its engine's export of an image
//! (`inventory::docker_save`), the master the blobs of its registry. The types on the wire
//! (`Inventory`, `Finding`, `Severity`, `Family`) are `wharf_types`'.

pub mod findings;
pub mod inventory;
pub mod osv;
pub mod version;

pub use findings::scan;
pub use osv::{Advisory, Database};
pub use wharf_types::{Family, Finding, Inventory, Package, Severity};
