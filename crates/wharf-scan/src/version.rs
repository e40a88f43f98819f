//! How versions order in each package family: dpkg's rules (the `debversion` crate) and apk's
//! (`1.2.3a_rc1-r2`: numbers, a letter, suffixes, a package revision).

use std::cmp::Ordering;

use crate::Family;

/// `a` against `b` under `family`'s rules; `None` when either is not a version of that family
/// (the caller then cannot tell, and says so, rather than guessing).
pub fn compare(family: Family, a: &str, b: &str) -> Option<Ordering> {
    match family {
        Family::Debian => {
            let a: debversion::Version = a.parse().ok()?;
            let b: debversion::Version = b.parse().ok()?;
            Some(a.cmp(&b))
        }
        Family::Alpine => Some(Apk::parse(a)?.cmp(&Apk::parse(b)?)),
    }
}

/// An apk version, split into what orders it.
#[derive(Debug, PartialEq, Eq)]
struct Apk {
    numbers: Vec<u64>,
    letter: Option<char>,
    /// (rank, number): pre-releases rank below a release, patches above.
    suffixes: Vec<(i8, u64)>,
    revision: u64,
}

/// The rank of an apk suffix: `_alpha` < `_beta` < `_pre` < `_rc` < (none) < `_cvs` < `_svn`
/// < `_git` < `_hg` < `_p`.
fn suffix_rank(name: &str) -> Option<i8> {
    Some(match name {
        "alpha" => -4,
        "beta" => -3,
        "pre" => -2,
        "rc" => -1,
        "cvs" => 1,
        "svn" => 2,
        "git" => 3,
        "hg" => 4,
        "p" => 5,
        _ => return None,
    })
}

impl Apk {
    fn parse(s: &str) -> Option<Apk> {
        let (body, revision) = match s.rsplit_once("-r") {
            Some((b, r)) => (b, r.parse().ok()?),
            None => (s, 0),
        };
        let mut parts = body.split('_');
        let head = parts.next()?;
        let (digits, letter) = match head.char_indices().last() {
            Some((i, c)) if c.is_ascii_lowercase() => (&head[..i], Some(c)),
            _ => (head, None),
        };
        let numbers = digits
            .split('.')
            .map(|n| n.parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        let suffixes = parts
            .map(|p| {
                let split = p.find(|c: char| c.is_ascii_digit()).unwrap_or(p.len());
                let (name, n) = p.split_at(split);
                let n = if n.is_empty() { 0 } else { n.parse().ok()? };
                Some((suffix_rank(name)?, n))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Apk {
            numbers,
            letter,
            suffixes,
            revision,
        })
    }
}

impl Ord for Apk {
    fn cmp(&self, other: &Apk) -> Ordering {
        self.numbers
            .cmp(&other.numbers)
            .then_with(|| self.letter.cmp(&other.letter))
            .then_with(|| {
                // No suffix sits between the pre-releases and the patches.
                let pad = |s: &[(i8, u64)], i: usize| s.get(i).copied().unwrap_or((0, 0));
                let n = self.suffixes.len().max(other.suffixes.len());
                (0..n)
                    .map(|i| pad(&self.suffixes, i).cmp(&pad(&other.suffixes, i)))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            })
            .then_with(|| self.revision.cmp(&other.revision))
    }
}

impl PartialOrd for Apk {
    fn partial_cmp(&self, other: &Apk) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn versions_order_as_their_package_managers_order_them() {
        let cases: &[(Family, &str, &str, Ordering)] = &[
            (Family::Debian, "1.0-1", "1.0-2", Less),
            (Family::Debian, "1.0~rc1-1", "1.0-1", Less),
            (Family::Debian, "1:0.9", "2.0", Greater),
            (Family::Debian, "2.36-9+deb12u4", "2.36-9+deb12u10", Less),
            (Family::Debian, "1.0", "1.0-0", Equal),
            (Family::Debian, "3.0.11-1~deb12u2", "3.0.11-1", Less),
            (Family::Alpine, "1.2.3-r0", "1.2.3-r1", Less),
            (Family::Alpine, "1.2.3_rc1-r0", "1.2.3-r0", Less),
            (Family::Alpine, "1.2.3_p1-r0", "1.2.3-r5", Greater),
            (Family::Alpine, "1.2-r0", "1.2.1-r0", Less),
            (Family::Alpine, "1.10-r0", "1.9-r0", Greater),
            (Family::Alpine, "1.2a-r0", "1.2-r0", Greater),
            (Family::Alpine, "3.1.4-r5", "3.1.4-r5", Equal),
        ];
        for (family, a, b, want) in cases {
            assert_eq!(compare(*family, a, b), Some(*want), "{family:?} {a} vs {b}");
            assert_eq!(
                compare(*family, b, a),
                Some(want.reverse()),
                "{family:?} {b} vs {a}"
            );
        }
    }

    #[test]
    fn what_is_not_a_version_is_not_ordered() {
        assert_eq!(compare(Family::Alpine, "1.x.2", "1.2"), None);
        assert_eq!(compare(Family::Alpine, "1.2_weird", "1.2"), None);
        assert_eq!(compare(Family::Debian, "", "1.0"), None);
    }
}
