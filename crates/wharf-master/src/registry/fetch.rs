//! What a node's mirror asks the master for (`wharf_types::FetchRequest`): a manifest by tag or
//! digest, or a blob the repository may use. Answered from the registry's store and disk; the
//! connection (`agents.rs`, a node's certificate on the agent port) or the in-process mirror of
//! `wharf up` sends the bytes. Peer-to-peer (`Holders`): a node asking for a blob that another
//! node holds or is fetching is sent to that node's peer port instead, so the master serves each
//! blob about once however many nodes pull it (as Kraken, Dragonfly and Spegel do).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wharf_types::{FetchAnswer, FetchRequest, FetchWhat};

use super::path::{Digest, Reference, valid_name};
use crate::Master;

/// The answer to a fetch: the content's header and its open file, or why not.
pub enum Fetched {
    Content {
        media_type: String,
        digest: String,
        size: u64,
        file: tokio::fs::File,
    },
    /// `FetchAnswer::Peer`, `Missing` or `Failed`.
    Not(FetchAnswer),
}

/// A fetch still running after this long is taken for abandoned: nobody is sent to it.
const STALE: Duration = Duration::from_secs(60);

/// Which nodes hold, or are fetching, which blob, as this master handed them out (in memory: a
/// master that restarts starts over, and serves the next asker itself).
#[derive(Default)]
pub struct Holders(parking_lot::Mutex<HashMap<String, Vec<Holder>>>);

#[derive(Clone, Debug)]
struct Holder {
    node: String,
    address: SocketAddr,
    since: Instant,
    done: bool,
    /// Askers sent to it.
    sent: u32,
}

impl Holders {
    /// Where `node` should get `digest` (`redirect`: to a peer at all): a holder that has it before one still fetching it (not
    /// for longer than `STALE`), the first to start, then the one sent the fewest askers. The
    /// asker is recorded as fetching it (from the master, or from that peer).
    pub fn ask(
        &self,
        digest: &str,
        node: &str,
        address: SocketAddr,
        redirect: bool,
        now: Instant,
    ) -> Option<(String, SocketAddr)> {
        let mut all = self.0.lock();
        let holders = all.entry(digest.to_string()).or_default();
        let peer = holders
            .iter_mut()
            .filter(|_| redirect)
            .filter(|h| h.node != node && (h.done || now.duration_since(h.since) < STALE))
            .min_by_key(|h| (!h.done, h.since, h.sent))
            .map(|h| {
                h.sent += 1;
                (h.node.clone(), h.address)
            });
        holders.retain(|h| h.node != node);
        holders.push(Holder {
            node: node.to_string(),
            address,
            since: now,
            done: false,
            sent: 0,
        });
        peer
    }

    /// `node` has all of `digest` (the master sent it the last byte).
    pub fn done(&self, digest: &str, node: &str) {
        if let Some(hs) = self.0.lock().get_mut(digest) {
            for h in hs.iter_mut().filter(|h| h.node == node) {
                h.done = true;
            }
        }
    }

    /// `node` could not serve `digest` to a peer: send nobody else there.
    pub fn forget(&self, digest: &str, node: &str) {
        if let Some(hs) = self.0.lock().get_mut(digest) {
            hs.retain(|h| h.node != node);
        }
    }
}

fn missing(message: String) -> Fetched {
    Fetched::Not(FetchAnswer::Missing { message })
}

fn failed(message: String) -> Fetched {
    Fetched::Not(FetchAnswer::Failed { message })
}

impl Master {
    /// Answer a node's mirror from this master's registry. Bytes served are counted in
    /// `wharf_registry_node_fetch_bytes_total` (what the master serves nodes, however many pull).
    /// `from`: the asking node and its peer port's address, when it serves peers.
    pub async fn registry_fetch(
        &self,
        req: &FetchRequest,
        from: Option<(&str, SocketAddr)>,
    ) -> Fetched {
        let Some(reg) = self.registry.clone() else {
            return missing("this master serves no registry".into());
        };
        if !valid_name(&req.repo) {
            return missing(format!(
                "{:?} is not a repository name",
                wharf_types::excerpt(&req.repo, 80)
            ));
        }
        let (digest, media_type) = match &req.what {
            FetchWhat::Manifest { reference } => {
                let d = match Reference::parse(reference) {
                    Err(e) => return missing(e),
                    Ok(Reference::Digest(d)) => d,
                    Ok(Reference::Tag(t)) => match self.registry_tag(&req.repo, &t).await {
                        Ok(Some(t)) => match Digest::parse(&t.digest) {
                            Ok(d) => d,
                            Err(e) => return failed(e),
                        },
                        Ok(None) => return missing(format!("{} has no tag {t}", req.repo)),
                        Err(e) => return failed(e.to_string()),
                    },
                };
                match self.registry_manifest(&req.repo, &d).await {
                    Ok(Some(m)) => (d, m.media_type),
                    Ok(None) => return missing(format!("{} has no manifest {d}", req.repo)),
                    Err(e) => return failed(e.to_string()),
                }
            }
            FetchWhat::Blob { digest } => {
                let d = match Digest::parse(digest) {
                    Ok(d) => d,
                    Err(e) => return missing(e),
                };
                match self.registry_link(&req.repo, &d).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return missing(format!("{} has no blob {d}", req.repo)),
                    Err(e) => return failed(e.to_string()),
                }
                if let Some((node, address)) = from {
                    if let Some(failed) = &req.instead_of {
                        reg.holders.forget(d.as_str(), failed);
                    }
                    let redirect = req.instead_of.is_none();
                    let now = Instant::now();
                    if let Some((peer, at)) =
                        reg.holders.ask(d.as_str(), node, address, redirect, now)
                    {
                        return Fetched::Not(FetchAnswer::Peer {
                            node: peer,
                            address: at.to_string(),
                        });
                    }
                }
                (d, "application/octet-stream".to_string())
            }
        };
        let file = match reg.blobs.open_blob(&digest).await {
            Ok(f) => f,
            Err(e) => return failed(format!("cannot read {digest}: {e}")),
        };
        let size = match file.metadata().await {
            Ok(m) => m.len(),
            Err(e) => return failed(format!("cannot read {digest}: {e}")),
        };
        metrics::counter!("wharf_registry_node_fetch_bytes_total").increment(size);
        Fetched::Content {
            media_type,
            digest: digest.to_string(),
            size,
            file,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 7702))
    }

    #[test]
    fn askers_are_sent_to_the_first_holder_and_finished_holders_come_first() {
        let h = Holders::default();
        let t0 = Instant::now();
        let t = |ms| t0 + Duration::from_millis(ms);
        // Ten at once: the first gets it from the master, the others from the first.
        assert_eq!(h.ask("d", "n1", at(1), true, t(0)), None);
        for i in 2..=10 {
            assert_eq!(
                h.ask("d", &format!("n{i}"), at(i), true, t(i as u64)),
                Some(("n1".into(), at(1)))
            );
        }
        // Once n5 has it, it serves before n1, which is still fetching.
        h.done("d", "n5");
        assert_eq!(
            h.ask("d", "n11", at(11), true, t(20)),
            Some(("n5".into(), at(5)))
        );
        // Among finished holders, the first to start; a node is never sent to itself.
        h.done("d", "n1");
        assert_eq!(
            h.ask("d", "n12", at(12), true, t(21)),
            Some(("n1".into(), at(1)))
        );
        assert_eq!(
            h.ask("d", "n1", at(1), true, t(22)),
            Some(("n5".into(), at(5)))
        );
    }

    #[test]
    fn abandoned_fetches_and_forgotten_peers_are_not_handed_out() {
        let h = Holders::default();
        let t0 = Instant::now();
        assert_eq!(h.ask("d", "n1", at(1), true, t0), None);
        assert_eq!(
            h.ask("d", "n2", at(2), true, t0 + STALE + Duration::from_secs(1)),
            None,
            "n1 never finished"
        );
        h.forget("d", "n2");
        assert_eq!(
            h.ask("d", "n3", at(3), true, t0 + STALE * 2),
            None,
            "n2 was forgotten, n1 is stale"
        );
        assert_eq!(h.ask("other", "n4", at(4), true, t0), None, "per digest");
        // Not redirected when it asks for the bytes.
        h.done("other", "n4");
        assert_eq!(h.ask("other", "n5", at(5), false, t0), None);
    }
}
