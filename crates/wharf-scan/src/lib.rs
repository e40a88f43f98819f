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
//! No IO but the readers handed in: the master reads layers from its registry or an engine.

pub mod findings;
pub mod inventory;
pub mod osv;
pub mod version;

pub use findings::{Finding, scan};
pub use inventory::{Inventory, Package};
pub use osv::{Advisory, Database, Severity};

/// An OS package family Wharf can read and match.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Debian,
    Alpine,
}

impl Family {
    /// The ecosystem's name in OSV records (`Debian`, `Alpine`), before any `:release`.
    pub fn osv_name(self) -> &'static str {
        match self {
            Family::Debian => "Debian",
            Family::Alpine => "Alpine",
        }
    }

    /// The family an OSV ecosystem (`Debian:12`, `Alpine:v3.19`) belongs to, and its release.
    pub fn of_ecosystem(ecosystem: &str) -> Option<(Family, Option<&str>)> {
        let (name, release) = match ecosystem.split_once(':') {
            Some((n, r)) => (n, Some(r)),
            None => (ecosystem, None),
        };
        let family = match name {
            "Debian" => Family::Debian,
            "Alpine" => Family::Alpine,
            _ => return None,
        };
        Some((family, release))
    }
}
