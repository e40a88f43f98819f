//! Which advisories affect an inventory: one finding per advisory and installed package, with
//! the installed version, the first version that fixes it (if any) and the severity.
//!
//! A package is looked up by its source name (advisories name source packages) and by its own,
//! compared at its source's version when it has one. An advisory for a release (`Debian:12`)
//! applies only to that release. A version is affected when, in one of the advisory's ranges,
//! the last event at or below it is `introduced` (`0`: the first version), or it is at a
//! `last_affected`, or it is listed among the affected versions. Versions that cannot be
//! ordered are not guessed at: the event is left out.

use std::cmp::Ordering;

use crate::osv::{Advisory, Database, Event};
use crate::{Family, Finding, Inventory, version};

/// The findings of `inv` against `db`, worst first, then by id and package.
pub fn scan(inv: &Inventory, db: &Database) -> Vec<Finding> {
    let Some(family) = inv.family else {
        return vec![];
    };
    let mut out = vec![];
    for p in &inv.packages {
        let at = p.source_version.as_deref().unwrap_or(&p.version);
        let names = p.source.iter().chain(std::iter::once(&p.name));
        for name in names {
            for a in db.advisories(family, name) {
                if a.release
                    .as_ref()
                    .is_some_and(|r| Some(r) != inv.release.as_ref())
                {
                    continue;
                }
                if let Some(fixed) = affects(family, a, at) {
                    out.push(Finding {
                        id: a.id.clone(),
                        package: p.name.clone(),
                        installed: p.version.clone(),
                        fixed,
                        severity: a.severity,
                        summary: a.summary.clone(),
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.id.cmp(&b.id))
            .then_with(|| a.package.cmp(&b.package))
    });
    out.dedup_by(|a, b| a.id == b.id && a.package == b.package);
    out
}

/// Whether advisory `a` affects version `v`: `Some(first fix above v)` when it does.
fn affects(family: Family, a: &Advisory, v: &str) -> Option<Option<String>> {
    let cmp = |x: &str, y: &str| version::compare(family, x, y);
    if a.versions
        .iter()
        .any(|x| cmp(x, v) == Some(Ordering::Equal))
    {
        return Some(first_fix(family, a, v));
    }
    for range in &a.ranges {
        let mut affected = false;
        for e in sorted(family, range) {
            match e {
                Event::Introduced(i) if i == "0" => affected = true,
                Event::Introduced(i) if cmp(i, v).is_some_and(Ordering::is_le) => affected = true,
                Event::Fixed(f) if cmp(f, v).is_some_and(Ordering::is_le) => affected = false,
                Event::LastAffected(l) if cmp(l, v) == Some(Ordering::Less) => affected = false,
                _ => {}
            }
        }
        if affected {
            return Some(first_fix(family, a, v));
        }
    }
    None
}

/// A range's events in version order (`introduced: 0` first); events whose version cannot be
/// ordered are left out.
fn sorted(family: Family, range: &[Event]) -> Vec<&Event> {
    fn version(e: &Event) -> &str {
        match e {
            Event::Introduced(v) | Event::Fixed(v) | Event::LastAffected(v) => v,
        }
    }
    let mut events: Vec<&Event> = range
        .iter()
        .filter(|e| version(e) == "0" || version::compare(family, version(e), version(e)).is_some())
        .collect();
    events.sort_by(|a, b| match (version(a), version(b)) {
        ("0", "0") => Ordering::Equal,
        ("0", _) => Ordering::Less,
        (_, "0") => Ordering::Greater,
        (x, y) => version::compare(family, x, y).unwrap_or(Ordering::Equal),
    });
    events
}

/// The lowest `fixed` above `v` in any of the advisory's ranges.
fn first_fix(family: Family, a: &Advisory, v: &str) -> Option<String> {
    a.ranges
        .iter()
        .flatten()
        .filter_map(|e| match e {
            Event::Fixed(f) if version::compare(family, f, v) == Some(Ordering::Greater) => {
                Some(f.as_str())
            }
            _ => None,
        })
        .min_by(|x, y| version::compare(family, x, y).unwrap_or(Ordering::Equal))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Package, Severity};

    fn db(records: &str) -> Database {
        let mut db = Database::default();
        db.add_file("fixture.json", records).unwrap();
        db
    }

    fn debian(packages: &[(&str, &str, Option<&str>)]) -> Inventory {
        Inventory {
            family: Some(Family::Debian),
            release: Some("12".into()),
            os: String::new(),
            packages: packages
                .iter()
                .map(|(n, v, s)| Package {
                    name: n.to_string(),
                    version: v.to_string(),
                    source: s.map(str::to_string),
                    source_version: None,
                })
                .collect(),
        }
    }

    const RECORDS: &str = r#"[
      {"id": "DSA-1", "summary": "openssl: bad", "affected": [
        {"package": {"ecosystem": "Debian:12", "name": "openssl"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}]}],
         "database_specific": {"severity": "critical"}}]},
      {"id": "DSA-2", "affected": [
        {"package": {"ecosystem": "Debian:11", "name": "openssl"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "9.9"}]}]}]},
      {"id": "DLA-3", "affected": [
        {"package": {"ecosystem": "Debian", "name": "zlib"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "1:1.2.0"}, {"last_affected": "1:1.2.13.dfsg-1"}]}],
         "database_specific": {"severity": "medium"}}]},
      {"id": "DLA-4", "affected": [
        {"package": {"ecosystem": "Debian:12", "name": "bash"}, "versions": ["5.2.15-2"],
         "database_specific": {"severity": "low"}}]},
      {"id": "DLA-5", "affected": [
        {"package": {"ecosystem": "Debian:12", "name": "curl"},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "7.0"}, {"fixed": "7.88.1-10"}, {"introduced": "8.0"}, {"fixed": "8.5"}]}]}]}
    ]"#;

    #[test]
    fn findings_are_exactly_the_advisories_that_affect_the_installed_versions() {
        let inv = debian(&[
            ("libssl3", "3.0.11-1~deb12u1", Some("openssl")),
            ("zlib1g", "1:1.2.13.dfsg-1", Some("zlib")),
            ("bash", "5.2.15-2", None),
            ("curl", "7.88.1-10", None),
        ]);
        let findings = scan(&inv, &db(RECORDS));
        let got: Vec<(&str, &str, Option<&str>, Severity)> = findings
            .iter()
            .map(|f| {
                (
                    f.id.as_str(),
                    f.package.as_str(),
                    f.fixed.as_deref(),
                    f.severity,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "DSA-1",
                    "libssl3",
                    Some("3.0.11-1~deb12u2"),
                    Severity::Critical
                ),
                ("DLA-3", "zlib1g", None, Severity::Medium),
                ("DLA-4", "bash", None, Severity::Low),
            ],
            "DSA-2 is for another release; curl 7.88.1-10 is the fix of its first range"
        );
    }

    #[test]
    fn fixed_and_later_ranges_are_told_apart() {
        let records = db(RECORDS);
        let cases: &[(&str, bool)] = &[
            ("6.9", false),
            ("7.0", true),
            ("7.88.1-9", true),
            ("7.88.1-10", false),
            ("8.1", true),
            ("8.5", false),
        ];
        for (v, want) in cases {
            let found = !scan(&debian(&[("curl", v, None)]), &records).is_empty();
            assert_eq!(found, *want, "curl {v}");
        }
        // zlib past its last affected version is clean.
        assert!(scan(&debian(&[("zlib1g", "1:1.3-1", Some("zlib"))]), &records).is_empty());
    }

    #[test]
    fn an_image_without_packages_has_no_findings() {
        assert!(scan(&Inventory::default(), &db(RECORDS)).is_empty());
    }
}
