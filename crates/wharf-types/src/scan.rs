//! Image scanning on the wire: what an image installs (`Inventory`, asked of a node's agent,
//! which reads the image's layers) and what affects it (`Finding`, `ImageScan`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An OS package family Wharf can read and match.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Debian,
    Alpine,
}

impl Family {
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

    /// The family's word in keys and output (`debian`, `alpine`).
    pub fn word(self) -> &'static str {
        match self {
            Family::Debian => "debian",
            Family::Alpine => "alpine",
        }
    }

    pub fn of_word(word: &str) -> Option<Family> {
        match word {
            "debian" => Some(Family::Debian),
            "alpine" => Some(Family::Alpine),
            _ => None,
        }
    }
}

/// One installed package.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// The source package it was built from, when not named alike (Debian's `Source:`, Alpine's
    /// origin): advisories name sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The source's version, when it differs from the package's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<String>,
}

/// What an image installs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Inventory {
    /// The package family found; none: no package database (a `FROM scratch` image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
    /// The distribution's release as advisories name it (`12`, `v3.19`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The distribution as it names itself (`PRETTY_NAME`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os: String,
    #[serde(default)]
    pub packages: Vec<Package>,
}

/// How bad a finding is. Ordered: `Unknown` < `Low` < ... < `Critical`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    /// A severity word as databases write it (`CRITICAL`, `moderate`, `important`).
    pub fn parse(word: &str) -> Option<Severity> {
        Some(match word.trim().to_ascii_lowercase().as_str() {
            "critical" => Severity::Critical,
            "high" | "important" => Severity::High,
            "medium" | "moderate" => Severity::Medium,
            "low" | "negligible" | "unimportant" => Severity::Low,
            "unknown" | "" => Severity::Unknown,
            _ => return None,
        })
    }

    pub fn word(self) -> &'static str {
        match self {
            Severity::Unknown => "unknown",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// One advisory that affects one installed package.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct Finding {
    pub id: String,
    /// The installed package.
    pub package: String,
    pub installed: String,
    /// The first version that fixes it; none: no fix known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
}

/// `POST /v1/images/scan`: the image to scan, as a service names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageScanRequest {
    pub image: String,
}

/// A scan of one image: what it installs and what affects it, worst first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageScan {
    pub image: String,
    /// The engine's id of the image scanned (`sha256:…`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The node whose engine had it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os: String,
    pub packages: u64,
    pub findings: Vec<Finding>,
}

/// One tag of the cluster's registry, as `wharf image ls` lists it (`GET /v1/images`), with the
/// findings of its scan by severity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageInfo {
    /// `shop/web`.
    pub repository: String,
    pub tag: String,
    pub digest: String,
    pub pushed_at: u64,
    /// Whether its scan is done (it runs after the push).
    pub scanned: bool,
    pub packages: u64,
    pub critical: u64,
    pub high: u64,
    pub medium: u64,
    pub low: u64,
    /// Findings whose advisory gives no severity.
    pub unknown: u64,
}

impl ImageInfo {
    /// Count `scan`'s findings into this row.
    pub fn count(&mut self, scan: &ImageScan) {
        self.scanned = true;
        self.packages = scan.packages;
        for f in &scan.findings {
            *match f.severity {
                Severity::Critical => &mut self.critical,
                Severity::High => &mut self.high,
                Severity::Medium => &mut self.medium,
                Severity::Low => &mut self.low,
                Severity::Unknown => &mut self.unknown,
            } += 1;
        }
    }
}
