//! The vulnerability database: advisories in the OSV format (https://ossf.github.io/osv-schema/),
//! as an operator imports them from files, kept by package family and package name.
//!
//! Only what matching needs is kept of a record: its id, summary, severity and, per affected
//! package of a family Wharf reads, the release it is for, the ranges of affected versions and
//! the versions listed as affected.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Family, Severity};

/// The severity of a CVSS v3 vector's base score.
fn of_cvss(vector: &str) -> Option<Severity> {
    let base: cvss::v3::Base = vector.parse().ok()?;
    Some(match base.score().severity() {
        cvss::Severity::None => Severity::Unknown,
        cvss::Severity::Low => Severity::Low,
        cvss::Severity::Medium => Severity::Medium,
        cvss::Severity::High => Severity::High,
        cvss::Severity::Critical => Severity::Critical,
    })
}
/// One event of a range: where affected versions start (`introduced`, `0`: from the first),
/// end excluded (`fixed`) or end included (`last_affected`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Introduced(String),
    Fixed(String),
    LastAffected(String),
}

/// An advisory as it applies to one package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advisory {
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    pub severity: Severity,
    /// The release the record is for (`12` of `Debian:12`); none: every release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Each range's events, in the record's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Vec<Event>>,
    /// Versions listed one by one as affected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
}

/// Advisories by family and package name (a Debian record names the source package).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Database {
    pub packages: BTreeMap<Family, BTreeMap<String, Vec<Advisory>>>,
}

impl Database {
    pub fn advisories(&self, family: Family, package: &str) -> &[Advisory] {
        self.packages
            .get(&family)
            .and_then(|p| p.get(package))
            .map_or(&[], Vec::as_slice)
    }

    /// How many advisories it holds (one record for several packages counts once per package).
    pub fn len(&self) -> usize {
        self.packages
            .values()
            .flat_map(|p| p.values())
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Add the records of one file's text (one OSV record, or an array of them). Records of
    /// other ecosystems are skipped and counted as such. `name` names the file in errors.
    pub fn add_file(&mut self, name: &str, text: &str) -> Result<Added, ImportError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ImportError {
            place: format!("{name}:{}:{}", e.line(), e.column()),
            message: format!("not JSON: {e}"),
        })?;
        let records = match value {
            serde_json::Value::Array(items) => items,
            v => vec![v],
        };
        // Every record read before any is added: a file is taken whole or not at all.
        let records = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                serde_json::from_value::<Record>(r).map_err(|e| ImportError {
                    place: format!("{name}: record {i}"),
                    message: format!("not an OSV record: {e}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut added = Added::default();
        for record in records {
            let (taken, skipped) = self.add(record);
            added.advisories += taken;
            added.skipped += skipped;
        }
        Ok(added)
    }

    /// Add one record: one advisory per affected package of a known family. (taken, skipped).
    fn add(&mut self, r: Record) -> (usize, usize) {
        let top = r
            .database_specific
            .as_ref()
            .and_then(|d| d.severity.as_deref())
            .and_then(Severity::parse)
            .or_else(|| r.severity.iter().find_map(|s| of_cvss(&s.score)));
        let (mut taken, mut skipped) = (0, 0);
        for a in r.affected {
            let Some((family, release)) = Family::of_ecosystem(&a.package.ecosystem) else {
                skipped += 1;
                continue;
            };
            let own = [&a.ecosystem_specific, &a.database_specific]
                .into_iter()
                .flatten()
                .find_map(|d| d.severity.as_deref().and_then(Severity::parse));
            let advisory = Advisory {
                id: r.id.clone(),
                summary: r.summary.clone(),
                severity: own.or(top).unwrap_or_default(),
                release: release.map(str::to_string),
                ranges: a
                    .ranges
                    .into_iter()
                    .filter(|r| r.kind == "ECOSYSTEM")
                    .map(|r| r.events)
                    .collect(),
                versions: a.versions,
            };
            let list = self
                .packages
                .entry(family)
                .or_default()
                .entry(a.package.name)
                .or_default();
            // Imported again: replaced, not doubled.
            list.retain(|x| !(x.id == advisory.id && x.release == advisory.release));
            list.push(advisory);
            taken += 1;
        }
        (taken, skipped)
    }
}

/// What an import added.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    pub advisories: usize,
    /// Affected packages of ecosystems Wharf does not read (npm, PyPI, ...).
    pub skipped: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{place}: {message} (hint: OSV records are JSON objects with `id` and `affected`, one per file or an array; see https://ossf.github.io/osv-schema/)"
)]
pub struct ImportError {
    pub place: String,
    pub message: String,
}

// The parts of an OSV record that are read.
#[derive(Deserialize)]
struct Record {
    id: String,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    severity: Vec<Score>,
    #[serde(default)]
    affected: Vec<Affected>,
    #[serde(default)]
    database_specific: Option<Specific>,
}

#[derive(Deserialize)]
struct Score {
    score: String,
}

#[derive(Deserialize)]
struct Affected {
    package: PackageRef,
    #[serde(default)]
    ranges: Vec<Range>,
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    ecosystem_specific: Option<Specific>,
    #[serde(default)]
    database_specific: Option<Specific>,
}

#[derive(Deserialize)]
struct PackageRef {
    ecosystem: String,
    name: String,
}

#[derive(Deserialize)]
struct Range {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct Specific {
    #[serde(default, deserialize_with = "lenient")]
    severity: Option<String>,
}

/// A severity field that is a word; anything else (an object, a number) is not read.
fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DSA: &str = r#"{
      "id": "DSA-0001-1",
      "summary": "openssl: remote code execution",
      "affected": [
        {"package": {"ecosystem": "Debian:12", "name": "openssl"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}]}],
         "database_specific": {"severity": "critical"}},
        {"package": {"ecosystem": "npm", "name": "left-pad"}, "ranges": []}
      ]
    }"#;

    #[test]
    fn records_are_kept_by_family_and_package_with_their_severity() {
        let mut db = Database::default();
        let added = db.add_file("dsa.json", DSA).unwrap();
        assert_eq!(
            added,
            Added {
                advisories: 1,
                skipped: 1
            }
        );
        let a = &db.advisories(Family::Debian, "openssl")[0];
        assert_eq!(a.id, "DSA-0001-1");
        assert_eq!(a.severity, Severity::Critical);
        assert_eq!(a.release.as_deref(), Some("12"));
        assert_eq!(
            a.ranges,
            [vec![
                Event::Introduced("0".into()),
                Event::Fixed("3.0.11-1~deb12u2".into())
            ]]
        );
        // Imported twice: still one.
        db.add_file("dsa.json", DSA).unwrap();
        assert_eq!(db.len(), 1);
    }

    #[test]
    fn severity_comes_from_the_package_the_record_or_its_cvss_vector() {
        let cases: &[(&str, Severity)] = &[
            (
                r#"{"id":"A","affected":[{"package":{"ecosystem":"Alpine:v3.19","name":"zlib"},"ecosystem_specific":{"severity":"HIGH"}}],"database_specific":{"severity":"LOW"}}"#,
                Severity::High,
            ),
            (
                r#"{"id":"B","affected":[{"package":{"ecosystem":"Alpine","name":"zlib"}}],"database_specific":{"severity":"moderate"}}"#,
                Severity::Medium,
            ),
            (
                r#"{"id":"C","severity":[{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],"affected":[{"package":{"ecosystem":"Alpine","name":"zlib"}}]}"#,
                Severity::Critical,
            ),
            (
                r#"{"id":"D","affected":[{"package":{"ecosystem":"Alpine","name":"zlib"},"database_specific":{"severity":{"odd":1}}}]}"#,
                Severity::Unknown,
            ),
        ];
        for (text, want) in cases {
            let mut db = Database::default();
            db.add_file("x.json", text).unwrap();
            assert_eq!(
                db.advisories(Family::Alpine, "zlib")[0].severity,
                *want,
                "{text}"
            );
        }
    }

    #[test]
    fn a_bad_file_names_its_place() {
        let mut db = Database::default();
        let e = db.add_file("bad.json", "{\n  \"id\": 1,").unwrap_err();
        assert!(e.place.starts_with("bad.json:2:"), "{e}");
        let one = r#"{"id":"X","affected":[{"package":{"ecosystem":"Alpine","name":"zlib"}}]}"#;
        let e = db
            .add_file("odd.json", &format!(r#"[{one}, {{"summary": "no id"}}]"#))
            .unwrap_err();
        assert_eq!(e.place, "odd.json: record 1");
        assert!(e.to_string().contains("hint"));
        assert!(db.is_empty(), "nothing from a file that failed is kept");
    }
}
