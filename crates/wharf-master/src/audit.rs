//! The audit trail's chain: every record holds the SHA-256 of the record before it and of its
//! own content, so a changed, removed or reordered record breaks the chain at that record. Pure:
//! `mutate` appends through `next`, and `verify` walks a trail as the store returns it (in key,
//! that is sequence, order) against the head the store keeps beside it.

use sha2::{Digest, Sha256};
use wharf_types::AuditRecord;

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The end of the chain, kept with every append (`model::keys::AUDIT_HEAD`): a trail cut short
/// at its end is told apart from a complete one by it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Head {
    /// The last record's sequence number; 0 before the first record.
    pub seq: u64,
    /// The last record's hash; `GENESIS` before the first record.
    pub hash: String,
}

impl Head {
    pub fn genesis() -> Head {
        Head {
            seq: 0,
            hash: GENESIS.to_string(),
        }
    }
}

/// The hash of `r` (its `hash` field aside): SHA-256 of its `prev` and of its content as JSON.
pub fn hash_of(r: &AuditRecord) -> String {
    let content = AuditRecord {
        hash: String::new(),
        ..r.clone()
    };
    let mut h = Sha256::new();
    h.update(r.prev.as_bytes());
    h.update(b"\n");
    h.update(serde_json::to_vec(&content).expect("audit records always serialise"));
    hex::encode(h.finalize())
}

/// `r` made the record after `head`: its sequence number, `prev` and `hash` set. The new head.
pub fn next(head: &Head, mut r: AuditRecord) -> (AuditRecord, Head) {
    r.id = head.seq + 1;
    r.prev = head.hash.clone();
    r.hash = hash_of(&r);
    let head = Head {
        seq: r.id,
        hash: r.hash.clone(),
    };
    (r, head)
}

/// A copy of the trail in an append-only file of JSON lines (`--audit-log`), one record a line,
/// in order: for a log shipper, or to keep the trail off the master's host.
#[derive(Debug)]
pub struct Sink {
    path: std::path::PathBuf,
    /// The file and the id of the last record in it.
    file: parking_lot::Mutex<(std::fs::File, u64)>,
}

impl Sink {
    /// Open (or create, mode 0600) the file at `path`; reads the id of its last record.
    pub fn open(path: &std::path::Path) -> std::io::Result<Sink> {
        use std::io::BufRead;
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(path)?;
        let mut last = 0;
        for line in std::io::BufReader::new(&file).lines() {
            let line = line?;
            if let Ok(r) = serde_json::from_str::<AuditRecord>(&line) {
                last = r.id;
            }
        }
        Ok(Sink {
            path: path.to_path_buf(),
            file: parking_lot::Mutex::new((file, last)),
        })
    }

    /// Append `records` the file does not have yet (their ids past its last), and sync it.
    pub fn write(&self, records: &[AuditRecord]) -> std::io::Result<()> {
        use std::io::Write;
        let mut guard = self.file.lock();
        let (file, last) = &mut *guard;
        let mut lines = Vec::new();
        let from = *last;
        for r in records.iter().filter(|r| r.id > from) {
            serde_json::to_writer(&mut lines, r).map_err(std::io::Error::other)?;
            lines.push(b'\n');
            *last = r.id;
        }
        if lines.is_empty() {
            return Ok(());
        }
        file.write_all(&lines)?;
        file.sync_data()
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

/// Where a trail stops verifying, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    /// The sequence number of the first bad record (or the one missing there).
    pub seq: u64,
    pub why: String,
}

/// Check `records` (in sequence order, from the first) against `head`: numbered 1, 2, 3...
/// without a gap, each `prev` the hash of the one before, each `hash` its own, the last the head.
pub fn verify(records: &[AuditRecord], head: &Head) -> Result<(), Broken> {
    let mut prev = Head::genesis();
    for r in records {
        let want = prev.seq + 1;
        if r.id != want {
            return Err(Broken {
                seq: want,
                why: format!(
                    "record {want} is missing or out of place (found {} there)",
                    r.id
                ),
            });
        }
        if r.prev != prev.hash {
            return Err(Broken {
                seq: r.id,
                why: format!("record {} does not follow record {}", r.id, prev.seq),
            });
        }
        if hash_of(r) != r.hash {
            return Err(Broken {
                seq: r.id,
                why: format!("record {} was changed after it was written", r.id),
            });
        }
        prev = Head {
            seq: r.id,
            hash: r.hash.clone(),
        };
    }
    if prev != *head {
        return Err(Broken {
            seq: prev.seq + 1,
            why: format!(
                "the trail ends at record {} but the head says {}: records were removed from its end",
                prev.seq, head.seq
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(action: &str) -> AuditRecord {
        AuditRecord {
            at: 1_700_000_000_000,
            actor: "admin".into(),
            action: action.into(),
            target: "shop".into(),
            outcome: "ok".into(),
            ..AuditRecord::default()
        }
    }

    /// A trail of `n` records and its head.
    fn trail(n: usize) -> (Vec<AuditRecord>, Head) {
        let mut head = Head::genesis();
        let mut out = Vec::new();
        for i in 0..n {
            let (r, h) = next(&head, record(&format!("stack.deploy {i}")));
            out.push(r);
            head = h;
        }
        (out, head)
    }

    #[test]
    fn an_untouched_trail_verifies_and_an_empty_one_too() {
        let (t, head) = trail(5);
        assert_eq!(verify(&t, &head), Ok(()));
        assert_eq!(verify(&[], &Head::genesis()), Ok(()));
    }

    #[test]
    fn a_changed_removed_swapped_or_cut_record_is_named() {
        let (t, head) = trail(5);
        let broken = |t: &[AuditRecord]| verify(t, &head).unwrap_err();

        let mut changed = t.clone();
        changed[2].target = "other".into();
        let e = broken(&changed);
        assert_eq!(e.seq, 3, "{e:?}");
        assert!(e.why.contains("changed"), "{e:?}");

        let mut removed = t.clone();
        removed.remove(1);
        assert_eq!(broken(&removed).seq, 2);

        let mut swapped = t.clone();
        swapped.swap(1, 3);
        assert_eq!(broken(&swapped).seq, 2);

        // Renumbered after a removal: the chain of hashes still breaks there.
        let mut renumbered = t.clone();
        renumbered.remove(1);
        for (i, r) in renumbered.iter_mut().enumerate() {
            r.id = i as u64 + 1;
        }
        assert_eq!(broken(&renumbered).seq, 2);

        let e = broken(&t[..4]);
        assert_eq!(e.seq, 5, "{e:?}");
        assert!(e.why.contains("removed from its end"), "{e:?}");
    }
}
