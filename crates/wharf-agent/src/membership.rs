//! Which cluster this node belongs to, remembered in its data directory: the agent acts only on
//! desired states of that cluster, never older than one it saw.
//!
//! A store that is new (deleted, truncated), restored from an old backup, or another cluster's
//! would otherwise hand the agent a desired state that knows nothing of what runs here, and the
//! agent would retire it all (issue 8, defect 1). Each desired state carries the cluster id of
//! the store it comes from and the store revision it was computed at; the agent remembers both
//! (`cluster.json`) and holds back when the id differs or the revision went backwards: it acts
//! on nothing, leaves every instance running, and says why and what to do.

use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The file in the data directory.
pub const FILE: &str = "cluster.json";

/// The revision is written down at most this often (a lost write only makes the check weaker
/// for the last second, never wrong).
const WRITE_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub cluster: String,
    pub revision: u64,
}

/// What to make of a desired state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Nothing remembered yet: this is the node's cluster from now on.
    Adopt,
    /// The node's own cluster, as new as or newer than what it saw.
    Trust,
    /// Not to be acted on, and why.
    Hold(String),
}

/// Pure: the judgement of a desired state from `cluster` at `revision`.
pub fn judge(remembered: Option<&Remembered>, cluster: &str, revision: u64) -> Judgement {
    let Some(r) = remembered else {
        return Judgement::Adopt;
    };
    if cluster.is_empty() {
        return Judgement::Hold(
            "the master sent no cluster identity (an older master?)".to_string(),
        );
    }
    if r.cluster != cluster {
        return Judgement::Hold(format!(
            "this node belongs to cluster {} but the master's store is cluster {} (a new or \
             emptied store, or another cluster's)",
            short(&r.cluster),
            short(cluster)
        ));
    }
    if revision < r.revision {
        return Judgement::Hold(format!(
            "the master's store is older than what this node saw (revision {revision} < {}): \
             restored from an old backup?",
            r.revision
        ));
    }
    Judgement::Trust
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The node's membership: its remembered cluster, kept in a file (or in memory only).
pub struct Membership {
    path: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    remembered: Option<Remembered>,
    written: Option<(Remembered, Instant)>,
    /// Once held, held until the process restarts (a restored store whose revision later catches
    /// up must not be trusted by then).
    held: Option<String>,
}

/// What to say to the operator when held.
pub const HOLD_HINT: &str = "every instance is left running. To keep them, restore the store \
    they belong to and restart; to let this store take over (it retires what it does not know), \
    restart with --accept-store";

impl Membership {
    /// No memory: every desired state is trusted (tests, and agents without a data directory).
    pub fn none() -> Membership {
        Membership {
            path: None,
            state: Mutex::new(State::default()),
        }
    }

    /// Membership kept in `data_dir/cluster.json`. An unreadable file is an error: never guess
    /// that a node belongs to nobody.
    pub fn load(data_dir: &Path) -> Result<Membership, String> {
        let path = data_dir.join(FILE);
        let remembered = match std::fs::read(&path) {
            Ok(bytes) => Some(serde_json::from_slice::<Remembered>(&bytes).map_err(|e| {
                format!(
                    "{} is not readable ({e}); if this node should start over, remove it \
                     (or start with --accept-store)",
                    path.display()
                )
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Membership {
            path: Some(path),
            state: Mutex::new(State {
                written: remembered.clone().map(|r| (r, Instant::now())),
                remembered,
                held: None,
            }),
        })
    }

    /// `--accept-store`: forget the remembered cluster, so the next desired state is adopted.
    pub fn forget(data_dir: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(data_dir.join(FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether this node holds, and why.
    /// The data directory the membership is kept in (none for an agent without one).
    pub fn data_dir(&self) -> Option<&Path> {
        self.path.as_deref().and_then(Path::parent)
    }

    /// The newest store revision this node acted on (0: none remembered).
    pub fn revision(&self) -> u64 {
        self.lock().remembered.as_ref().map_or(0, |r| r.revision)
    }

    pub fn held(&self) -> Option<String> {
        self.lock().held.clone()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        self.state.lock()
    }

    /// Check a desired state; `Err(reason)` when the agent must hold back. Remembers the cluster
    /// (on adoption) and the newest revision.
    pub fn check(&self, cluster: &str, revision: u64) -> Result<(), String> {
        if self.path.is_none() {
            return Ok(());
        }
        let mut st = self.lock();
        if let Some(why) = &st.held {
            return Err(why.clone());
        }
        match judge(st.remembered.as_ref(), cluster, revision) {
            Judgement::Hold(why) => {
                tracing::error!("holding back: {why}; {HOLD_HINT}");
                st.held = Some(why.clone());
                return Err(why);
            }
            Judgement::Adopt | Judgement::Trust => {}
        }
        let now = Remembered {
            cluster: cluster.to_string(),
            revision,
        };
        let due = match &st.written {
            Some((w, at)) => w.cluster != now.cluster || at.elapsed() >= WRITE_EVERY,
            None => true,
        };
        st.remembered = Some(now.clone());
        if due && st.written.as_ref().is_none_or(|(w, _)| *w != now) {
            if let Some(path) = &self.path
                && let Err(e) = write_durably(path, &now)
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remember the cluster");
                return Ok(()); // tried again on the next desired state
            }
            st.written = Some((now, Instant::now()));
        }
        Ok(())
    }
}

fn write_durably(path: &Path, r: &Remembered) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(r).expect("serialises"))?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cluster: &str, revision: u64) -> Remembered {
        Remembered {
            cluster: cluster.into(),
            revision,
        }
    }

    #[test]
    fn judgements() {
        assert_eq!(judge(None, "c1", 5), Judgement::Adopt);
        assert_eq!(judge(Some(&r("c1", 5)), "c1", 5), Judgement::Trust);
        assert_eq!(judge(Some(&r("c1", 5)), "c1", 9), Judgement::Trust);
        assert!(
            matches!(judge(Some(&r("c1", 5)), "c2", 9), Judgement::Hold(w) if w.contains("cluster c1") && w.contains("cluster c2"))
        );
        assert!(
            matches!(judge(Some(&r("c1", 5)), "c1", 4), Judgement::Hold(w) if w.contains("revision 4 < 5"))
        );
        assert!(matches!(
            judge(Some(&r("c1", 5)), "", 9),
            Judgement::Hold(_)
        ));
    }

    #[test]
    fn remembers_across_restarts_and_holds_on_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        let m = Membership::load(dir.path()).unwrap();
        assert_eq!(m.check("c1", 10), Ok(()));
        assert_eq!(m.check("c1", 12), Ok(()));
        drop(m);
        // A restart: the same cluster is trusted, a new one held (and stays held).
        let m = Membership::load(dir.path()).unwrap();
        assert_eq!(m.check("c1", 10), Ok(()), "revision 10 was written down");
        let held = m.check("c2", 1).unwrap_err();
        assert!(held.contains("cluster c1"), "{held}");
        assert!(m.check("c1", 100).is_err(), "once held, held");
        assert_eq!(m.held(), Some(held));
        // --accept-store: forgotten, the next one is adopted.
        Membership::forget(dir.path()).unwrap();
        let m = Membership::load(dir.path()).unwrap();
        assert_eq!(m.check("c2", 1), Ok(()));
        // A garbled file is refused, not taken for "no cluster".
        std::fs::write(dir.path().join(FILE), b"{garbage").unwrap();
        assert!(Membership::load(dir.path()).is_err());
    }
}
