//! The host side of cross-host container networking (see `wharf-master/src/network.rs`): a route
//! to each other node's block via its host address, and firewall rules that let that traffic reach
//! this node's stack networks.
//!
//! Level-triggered: `apply` computes the whole wanted state from `NodeNetwork` (`plan`, pure) and
//! makes the host match it, removing what is no longer wanted; applying twice changes nothing.
//! The host is reached through the `Host` seam: `SystemHost` runs `ip` and `iptables-restore`
//! (a route's protocol number marks it as ours), `tests` use a recording fake.
//!
//! Firewall: Docker drops forwarded traffic into a bridge network unless it answers a connection
//! from inside. Chain `WHARF-FORWARD` (jumped to from `DOCKER-USER`) accepts, into this node's
//! block, traffic from the other nodes' blocks (their containers) and host addresses (their
//! ingress). Chain `WHARF-POSTROUTING` (nat, first in `POSTROUTING`) keeps Docker from
//! masquerading container-to-container traffic between nodes, so a container sees its peer's real
//! address. Each chain is replaced in one `iptables-restore`. One route and three rules per peer,
//! whatever the number of stacks.

use std::collections::BTreeSet;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use wharf_types::NodeNetwork;

/// Routes Wharf installs carry this protocol number (`ip route ... proto 213`).
pub const ROUTE_PROTO: &str = "213";
pub const FORWARD_CHAIN: &str = "WHARF-FORWARD";
pub const NAT_CHAIN: &str = "WHARF-POSTROUTING";

/// A route to a peer's block.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub subnet: String,
    pub via: String,
}

/// Everything the host should have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    pub routes: BTreeSet<Route>,
    /// `iptables` rule specs (without `-A CHAIN`) of `WHARF-FORWARD`, in order.
    pub forward: Vec<String>,
    /// Rule specs of `WHARF-POSTROUTING` (nat).
    pub nat: Vec<String>,
}

/// The wanted host state for a node's network share. Pure.
pub fn plan(net: &NodeNetwork) -> Wanted {
    let mut w = Wanted::default();
    if net.block.is_empty() {
        return w;
    }
    for p in net.peers.iter().filter(|p| p.block != net.block) {
        w.routes.insert(Route {
            subnet: p.block.clone(),
            via: p.via.clone(),
        });
        w.forward
            .push(format!("-s {} -d {} -j ACCEPT", p.block, net.block));
        w.forward
            .push(format!("-s {} -d {} -j ACCEPT", p.via, net.block));
        w.nat
            .push(format!("-s {} -d {} -j RETURN", net.block, p.block));
    }
    w
}

/// The `iptables-restore --noflush` input that replaces both chains' rules.
pub fn restore_input(w: &Wanted) -> String {
    let mut s = String::new();
    s.push_str(&format!("*filter\n:{FORWARD_CHAIN} - [0:0]\n"));
    for r in &w.forward {
        s.push_str(&format!("-A {FORWARD_CHAIN} {r}\n"));
    }
    s.push_str(&format!("COMMIT\n*nat\n:{NAT_CHAIN} - [0:0]\n"));
    for r in &w.nat {
        s.push_str(&format!("-A {NAT_CHAIN} {r}\n"));
    }
    s.push_str("COMMIT\n");
    s
}

/// The host's routing table and firewall, as far as Wharf touches them.
#[async_trait::async_trait]
pub trait Host: Send + Sync {
    /// Routes carrying `ROUTE_PROTO`.
    async fn routes(&self) -> Result<BTreeSet<Route>, String>;
    async fn add_route(&self, r: &Route) -> Result<(), String>;
    async fn del_route(&self, r: &Route) -> Result<(), String>;
    /// Replace the rules of both chains (creating them) and make sure they are jumped to.
    async fn firewall(&self, w: &Wanted) -> Result<(), String>;
}

/// Make the host match `net`; returns the problems it met (each logged once by the caller).
pub async fn apply(host: &dyn Host, net: &NodeNetwork, last: &mut Option<Wanted>) -> Vec<String> {
    let want = plan(net);
    if last.as_ref() == Some(&want) {
        return Vec::new();
    }
    // Nothing to route and never configured (a single node): touch nothing, need no `ip` or
    // `iptables` on the host.
    if last.is_none() && want == Wanted::default() {
        *last = Some(want);
        return Vec::new();
    }
    let mut problems = Vec::new();
    match host.routes().await {
        Ok(have) => {
            for r in have.difference(&want.routes) {
                if let Err(e) = host.del_route(r).await {
                    problems.push(e);
                }
            }
            for r in want.routes.difference(&have) {
                if let Err(e) = host.add_route(r).await {
                    problems.push(e);
                }
            }
        }
        Err(e) => problems.push(e),
    }
    if let Err(e) = host.firewall(&want).await {
        problems.push(e);
    }
    if problems.is_empty() {
        *last = Some(want);
    }
    problems
}

/// The real host: `ip` (iproute2) and `iptables`/`iptables-restore`.
pub struct SystemHost;

async fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| format!("{program}: cannot write its input: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip route <verb> SUBNET via VIA proto 213`.
async fn route(verb: &str, r: &Route) -> Result<(), String> {
    let args = [
        "route",
        verb,
        &r.subnet,
        "via",
        &r.via,
        "proto",
        ROUTE_PROTO,
    ];
    run("ip", &args, None).await.map(drop)
}

#[async_trait::async_trait]
impl Host for SystemHost {
    async fn routes(&self) -> Result<BTreeSet<Route>, String> {
        let out = run("ip", &["-4", "route", "show", "proto", ROUTE_PROTO], None).await?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let subnet = words.next()?.to_string();
                let via = words.skip_while(|w| *w != "via").nth(1)?.to_string();
                Some(Route { subnet, via })
            })
            .collect())
    }

    async fn add_route(&self, r: &Route) -> Result<(), String> {
        route("replace", r).await
    }

    async fn del_route(&self, r: &Route) -> Result<(), String> {
        route("del", r).await
    }

    async fn firewall(&self, w: &Wanted) -> Result<(), String> {
        run("iptables-restore", &["--noflush"], Some(&restore_input(w))).await?;
        for (table, from, chain) in [
            ("filter", "DOCKER-USER", FORWARD_CHAIN),
            ("nat", "POSTROUTING", NAT_CHAIN),
        ] {
            let present = run("iptables", &["-t", table, "-C", from, "-j", chain], None)
                .await
                .is_ok();
            if !present {
                run(
                    "iptables",
                    &["-t", table, "-I", from, "1", "-j", chain],
                    None,
                )
                .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use wharf_types::{PeerBlock, StackSubnet};

    #[derive(Default)]
    struct Fake {
        routes: Mutex<BTreeSet<Route>>,
        calls: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Host for Fake {
        async fn routes(&self) -> Result<BTreeSet<Route>, String> {
            Ok(self.routes.lock().unwrap().clone())
        }
        async fn add_route(&self, r: &Route) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("add {} via {}", r.subnet, r.via));
            self.routes.lock().unwrap().insert(r.clone());
            Ok(())
        }
        async fn del_route(&self, r: &Route) -> Result<(), String> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("del {} via {}", r.subnet, r.via));
            self.routes.lock().unwrap().remove(r);
            Ok(())
        }
        async fn firewall(&self, w: &Wanted) -> Result<(), String> {
            self.calls.lock().unwrap().push(format!(
                "firewall {} {}",
                w.forward.len(),
                w.nat.len()
            ));
            Ok(())
        }
    }

    fn net(peers: &[(&str, &str)]) -> NodeNetwork {
        NodeNetwork {
            pool: "10.64.0.0/10".into(),
            block: "10.64.0.0/20".into(),
            subnets: vec![StackSubnet {
                stack: "a".into(),
                subnet: "10.64.0.0/25".into(),
            }],
            // Every node's block, this one's included.
            peers: std::sync::Arc::new(
                std::iter::once(("10.64.0.0/20", "192.0.2.1"))
                    .chain(peers.iter().copied())
                    .map(|(block, via)| PeerBlock {
                        node: "n".into(),
                        block: block.to_string(),
                        via: via.to_string(),
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn the_plan_routes_peer_blocks_and_opens_this_block_to_them_only() {
        let w = plan(&net(&[("10.64.16.0/20", "192.0.2.2")]));
        assert_eq!(
            w.routes.iter().collect::<Vec<_>>(),
            [&Route {
                subnet: "10.64.16.0/20".into(),
                via: "192.0.2.2".into()
            }]
        );
        assert_eq!(
            w.forward,
            [
                "-s 10.64.16.0/20 -d 10.64.0.0/20 -j ACCEPT",
                "-s 192.0.2.2 -d 10.64.0.0/20 -j ACCEPT",
            ]
        );
        assert_eq!(w.nat, ["-s 10.64.0.0/20 -d 10.64.16.0/20 -j RETURN"]);
        let input = restore_input(&w);
        assert!(input.starts_with("*filter\n:WHARF-FORWARD - [0:0]\n-A WHARF-FORWARD -s"));
        assert!(input.ends_with(
            "-A WHARF-POSTROUTING -s 10.64.0.0/20 -d 10.64.16.0/20 -j RETURN\nCOMMIT\n"
        ));
        assert_eq!(plan(&NodeNetwork::default()), Wanted::default());
    }

    #[tokio::test]
    async fn apply_converges_and_is_idempotent() {
        let host = Fake::default();
        host.routes.lock().unwrap().insert(Route {
            subnet: "10.96.9.0/24".into(),
            via: "192.0.2.9".into(),
        });
        let mut last = None;
        let n = net(&[("10.64.16.0/20", "192.0.2.2")]);
        assert!(apply(&host, &n, &mut last).await.is_empty());
        assert_eq!(
            *host.calls.lock().unwrap(),
            [
                "del 10.96.9.0/24 via 192.0.2.9",
                "add 10.64.16.0/20 via 192.0.2.2",
                "firewall 2 1"
            ]
        );
        host.calls.lock().unwrap().clear();
        assert!(apply(&host, &n, &mut last).await.is_empty());
        assert!(host.calls.lock().unwrap().is_empty(), "nothing changed");
        // The peer leaves: its route goes, the firewall is emptied.
        assert!(apply(&host, &net(&[]), &mut last).await.is_empty());
        assert_eq!(
            *host.calls.lock().unwrap(),
            ["del 10.64.16.0/20 via 192.0.2.2", "firewall 0 0"]
        );
    }

    #[tokio::test]
    async fn a_node_without_peers_never_touches_the_firewall() {
        let host = Fake::default();
        let mut last = None;
        assert!(
            apply(&host, &NodeNetwork::default(), &mut last)
                .await
                .is_empty()
        );
        assert!(host.calls.lock().unwrap().is_empty());
    }
}
