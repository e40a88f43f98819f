//! The host side of cross-host container networking (see `wharf-master/src/network.rs`): a route
//! to each other node's block via its host address, and firewall rules that let that traffic reach
//! this node's stack networks.
//!
//! Level-triggered: `plan` (pure) computes the whole wanted state from `NodeNetwork`, and `apply`
//! reads what the host has (Wharf's routes, its chains and the jumps to them) and changes only
//! what differs, removing what is no longer wanted; applying twice changes nothing. `Converger`
//! applies a new wanted state at once and, every `PERIOD`, reads the host again and repairs drift
//! (a route deleted by hand, a chain flushed by a firewall reload, a jump that another rule got
//! ahead of). The host is reached through the `Host` seam: `SystemHost` runs `ip`, `iptables-save`
//! and `iptables-restore` (a route's protocol number marks it as ours), `tests` use a recording
//! fake.
//!
//! Firewall: Docker drops forwarded traffic into a bridge network unless it answers a connection
//! from inside. Chain `WHARF-FORWARD` (jumped to first from `DOCKER-USER`) accepts, into this
//! node's block, traffic from the other nodes' blocks (their containers) and host addresses (their
//! ingress). Chain `WHARF-POSTROUTING` (nat, jumped to first from `POSTROUTING`) keeps Docker from
//! masquerading container-to-container traffic between nodes, so a container sees its peer's real
//! address. A table that differs is rewritten in one `iptables-restore` (its chain and the jump to
//! it together). One route and three rules per peer, whatever the number of stacks.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use wharf_types::NodeNetwork;

/// Routes Wharf installs carry this protocol number (`ip route ... proto 213`).
pub const ROUTE_PROTO: &str = "213";
pub const FORWARD_CHAIN: &str = "WHARF-FORWARD";
pub const NAT_CHAIN: &str = "WHARF-POSTROUTING";
/// The chains ours are jumped to from, first: (table, chain).
const FORWARD_FROM: (&str, &str) = ("filter", "DOCKER-USER");
const NAT_FROM: (&str, &str) = ("nat", "POSTROUTING");
/// How often the host is read again and drift repaired; also how soon a failure is retried.
pub const PERIOD: Duration = Duration::from_secs(10);

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
    /// `iptables` rule specs (without `-A CHAIN`) of `WHARF-FORWARD`, in order, written as
    /// `iptables-save` prints them (a host address with its `/32`), so the host's can be compared.
    pub forward: Vec<String>,
    /// Rule specs of `WHARF-POSTROUTING` (nat).
    pub nat: Vec<String>,
}

/// An address as `iptables-save` prints it: a bare host address gets its prefix length.
fn cidr(addr: &str) -> String {
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => format!("{addr}/32"),
        Ok(IpAddr::V6(_)) => format!("{addr}/128"),
        Err(_) => addr.to_string(),
    }
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
            .push(format!("-s {} -d {} -j ACCEPT", cidr(&p.block), net.block));
        w.forward
            .push(format!("-s {} -d {} -j ACCEPT", cidr(&p.via), net.block));
        w.nat
            .push(format!("-s {} -d {} -j RETURN", net.block, cidr(&p.block)));
    }
    w
}

/// How a built-in chain jumps to one of ours.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Jump {
    /// Rules of the chain that jump to ours.
    pub count: usize,
    /// Whether its first rule is one of them.
    pub first: bool,
}

impl Jump {
    /// Jumped to once, before anything else.
    pub fn ok(&self) -> bool {
        self.count == 1 && self.first
    }
}

/// Wharf's chains and the jumps to them, as the host has them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Firewall {
    /// Rule specs of `WHARF-FORWARD`, in order; `None`: the chain does not exist.
    pub forward: Option<Vec<String>>,
    pub forward_jump: Jump,
    /// Rule specs of `WHARF-POSTROUTING`.
    pub nat: Option<Vec<String>>,
    pub nat_jump: Jump,
}

impl Firewall {
    /// What the host has once `w` is applied.
    pub fn of(w: &Wanted) -> Firewall {
        let once = Jump {
            count: 1,
            first: true,
        };
        Firewall {
            forward: Some(w.forward.clone()),
            forward_jump: once,
            nat: Some(w.nat.clone()),
            nat_jump: once,
        }
    }

    /// Whether the filter table (`WHARF-FORWARD` and its jump) needs rewriting for `w`.
    pub fn filter_differs(&self, w: &Wanted) -> bool {
        self.forward.as_ref() != Some(&w.forward) || !self.forward_jump.ok()
    }

    /// Whether the nat table (`WHARF-POSTROUTING` and its jump) needs rewriting for `w`.
    pub fn nat_differs(&self, w: &Wanted) -> bool {
        self.nat.as_ref() != Some(&w.nat) || !self.nat_jump.ok()
    }
}

/// Read one table's `iptables-save` output: the rules of `chain`, and how `from` jumps to it.
pub fn parse_save(save: &str, chain: &str, from: &str) -> (Option<Vec<String>>, Jump) {
    let (mut rules, mut jump, mut position) = (None, Jump::default(), 0usize);
    let declared = format!(":{chain} ");
    let append = format!("-A {chain} ");
    let append_from = format!("-A {from} ");
    let to_ours = format!("-j {chain}");
    for line in save.lines().map(str::trim) {
        if line.starts_with(&declared) {
            rules.get_or_insert_with(Vec::new);
        } else if let Some(spec) = line.strip_prefix(&append) {
            rules
                .get_or_insert_with(Vec::new)
                .push(spec.trim().to_string());
        } else if let Some(spec) = line.strip_prefix(&append_from) {
            if spec.trim() == to_ours {
                jump.count += 1;
                jump.first |= position == 0;
            }
            position += 1;
        }
    }
    (rules, jump)
}

/// The `iptables-restore --noflush` input that makes the tables that differ match `w`: the chain
/// declared (which empties it), its rules, and its jump put back first, once. `None` when both
/// match. Each table commits as one transaction, so traffic never sees a half-written chain.
pub fn restore_input(w: &Wanted, have: &Firewall) -> Option<String> {
    let mut s = String::new();
    let tables = [
        (
            have.filter_differs(w),
            FORWARD_FROM,
            FORWARD_CHAIN,
            &w.forward,
            have.forward_jump,
        ),
        (
            have.nat_differs(w),
            NAT_FROM,
            NAT_CHAIN,
            &w.nat,
            have.nat_jump,
        ),
    ];
    for (differs, (table, from), chain, rules, jump) in tables {
        if !differs {
            continue;
        }
        s.push_str(&format!("*{table}\n:{chain} - [0:0]\n"));
        for r in rules {
            s.push_str(&format!("-A {chain} {r}\n"));
        }
        if !jump.ok() {
            for _ in 0..jump.count {
                s.push_str(&format!("-D {from} -j {chain}\n"));
            }
            s.push_str(&format!("-I {from} 1 -j {chain}\n"));
        }
        s.push_str("COMMIT\n");
    }
    (!s.is_empty()).then_some(s)
}

/// The host's routing table and firewall, as far as Wharf touches them.
#[async_trait::async_trait]
pub trait Host: Send + Sync {
    /// Routes carrying `ROUTE_PROTO`.
    async fn routes(&self) -> Result<BTreeSet<Route>, String>;
    async fn add_route(&self, r: &Route) -> Result<(), String>;
    async fn del_route(&self, r: &Route) -> Result<(), String>;
    /// Wharf's chains and the jumps to them, as they are now.
    async fn firewall_state(&self) -> Result<Firewall, String>;
    /// Make the chains that differ from `w` (the host having `have`) match it, with their jumps.
    async fn firewall(&self, w: &Wanted, have: &Firewall) -> Result<(), String>;
}

/// What one `apply` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// What it changed on the host, for people.
    pub changes: Vec<String>,
    /// What it could not do or read.
    pub problems: Vec<String>,
}

/// Read the host and make it match `want`, changing only what differs.
pub async fn apply(host: &dyn Host, want: &Wanted) -> Outcome {
    let mut out = Outcome::default();
    match host.routes().await {
        Ok(have) => {
            for r in have.difference(&want.routes) {
                match host.del_route(r).await {
                    Ok(()) => out
                        .changes
                        .push(format!("removed route {} via {}", r.subnet, r.via)),
                    Err(e) => out.problems.push(e),
                }
            }
            for r in want.routes.difference(&have) {
                match host.add_route(r).await {
                    Ok(()) => out
                        .changes
                        .push(format!("added route {} via {}", r.subnet, r.via)),
                    Err(e) => out.problems.push(e),
                }
            }
        }
        Err(e) => out.problems.push(e),
    }
    // Unread, the firewall is left alone: writing blind could add a second jump every period.
    match host.firewall_state().await {
        Ok(have) => {
            let tables: Vec<&str> = [
                (have.filter_differs(want), FORWARD_CHAIN),
                (have.nat_differs(want), NAT_CHAIN),
            ]
            .into_iter()
            .filter_map(|(d, c)| d.then_some(c))
            .collect();
            if !tables.is_empty() {
                match host.firewall(want, &have).await {
                    Ok(()) => out
                        .changes
                        .push(format!("rewrote {}", tables.join(" and "))),
                    Err(e) => out.problems.push(e),
                }
            }
        }
        Err(e) => out.problems.push(e),
    }
    out
}

/// Keeps the host in line with the node's network share: a new wanted state is applied at once;
/// the same one is checked again (read, repaired if it drifted) every `PERIOD`, which also
/// retries after a failure. Problems and repairs are logged, each problem once.
#[derive(Default)]
pub struct Converger {
    last: Option<Wanted>,
    next_check: Option<Instant>,
    /// Whether anything was ever applied (else an empty wanted state touches nothing).
    configured: bool,
    problems: Vec<String>,
}

impl Converger {
    /// Follow `net` at `now`; `None` when nothing was due (the host was not even read).
    pub async fn step(
        &mut self,
        host: &dyn Host,
        net: &NodeNetwork,
        now: Instant,
    ) -> Option<Outcome> {
        let want = plan(net);
        // Nothing to route and never configured (a single node): touch nothing, need no `ip` or
        // `iptables` on the host.
        if !self.configured && want == Wanted::default() {
            self.last = Some(want);
            return None;
        }
        let changed = self.last.as_ref() != Some(&want);
        if !changed && self.next_check.is_some_and(|at| now < at) {
            return None;
        }
        let out = apply(host, &want).await;
        for p in &out.problems {
            if !self.problems.contains(p) {
                tracing::warn!(problem = %p, "cannot set up cross-host container networking; will retry");
            }
        }
        if !out.changes.is_empty() {
            if changed {
                tracing::debug!(changes = ?out.changes, "cross-host networking applied");
            } else {
                tracing::warn!(changes = ?out.changes, "cross-host networking had drifted on this host; repaired");
            }
        }
        self.configured = true;
        self.problems.clone_from(&out.problems);
        self.last = Some(want);
        self.next_check = Some(now + PERIOD);
        Some(out)
    }
}

/// The real host: `ip` (iproute2) and `iptables-save`/`iptables-restore`.
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

/// The routes in `ip -json route show` output (those without a gateway are not Wharf's kind).
pub fn parse_routes(json: &str) -> Result<BTreeSet<Route>, String> {
    #[derive(serde::Deserialize)]
    struct IpRoute {
        dst: String,
        gateway: Option<String>,
    }
    let list: Vec<IpRoute> = if json.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(json).map_err(|e| format!("cannot read `ip -json route`: {e}"))?
    };
    Ok(list
        .into_iter()
        .filter_map(|r| {
            Some(Route {
                subnet: r.dst,
                via: r.gateway?,
            })
        })
        .collect())
}

#[async_trait::async_trait]
impl Host for SystemHost {
    async fn routes(&self) -> Result<BTreeSet<Route>, String> {
        let out = run(
            "ip",
            &["-json", "-4", "route", "show", "proto", ROUTE_PROTO],
            None,
        )
        .await?;
        parse_routes(&out)
    }

    async fn add_route(&self, r: &Route) -> Result<(), String> {
        route("replace", r).await
    }

    async fn del_route(&self, r: &Route) -> Result<(), String> {
        route("del", r).await
    }

    async fn firewall_state(&self) -> Result<Firewall, String> {
        let filter = run("iptables-save", &["-t", FORWARD_FROM.0], None).await?;
        let nat = run("iptables-save", &["-t", NAT_FROM.0], None).await?;
        let (forward, forward_jump) = parse_save(&filter, FORWARD_CHAIN, FORWARD_FROM.1);
        let (nat, nat_jump) = parse_save(&nat, NAT_CHAIN, NAT_FROM.1);
        Ok(Firewall {
            forward,
            forward_jump,
            nat,
            nat_jump,
        })
    }

    async fn firewall(&self, w: &Wanted, have: &Firewall) -> Result<(), String> {
        match restore_input(w, have) {
            Some(input) => run("iptables-restore", &["--noflush"], Some(&input))
                .await
                .map(drop),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;

    use super::*;
    use wharf_types::{PeerBlock, StackSubnet};

    /// A host that records every call and lets a test change its state behind Wharf's back.
    #[derive(Default)]
    struct Fake {
        routes: Mutex<BTreeSet<Route>>,
        fw: Mutex<Firewall>,
        calls: Mutex<Vec<String>>,
        /// `add_route` fails while set.
        refuse_routes: Mutex<bool>,
    }

    impl Fake {
        fn call(&self, c: String) {
            self.calls.lock().push(c);
        }
        /// The calls since the last look.
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock())
        }
    }

    #[async_trait::async_trait]
    impl Host for Fake {
        async fn routes(&self) -> Result<BTreeSet<Route>, String> {
            self.call("read routes".into());
            Ok(self.routes.lock().clone())
        }
        async fn add_route(&self, r: &Route) -> Result<(), String> {
            self.call(format!("add {} via {}", r.subnet, r.via));
            if *self.refuse_routes.lock() {
                return Err("RTNETLINK answers: Network is unreachable".into());
            }
            self.routes.lock().insert(r.clone());
            Ok(())
        }
        async fn del_route(&self, r: &Route) -> Result<(), String> {
            self.call(format!("del {} via {}", r.subnet, r.via));
            self.routes.lock().remove(r);
            Ok(())
        }
        async fn firewall_state(&self) -> Result<Firewall, String> {
            self.call("read firewall".into());
            Ok(self.fw.lock().clone())
        }
        async fn firewall(&self, w: &Wanted, have: &Firewall) -> Result<(), String> {
            let mut tables = Vec::new();
            if have.filter_differs(w) {
                tables.push("filter");
            }
            if have.nat_differs(w) {
                tables.push("nat");
            }
            self.call(format!(
                "restore {} ({} forward, {} nat rules)",
                tables.join("+"),
                w.forward.len(),
                w.nat.len()
            ));
            *self.fw.lock() = Firewall::of(w);
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

    fn peer() -> NodeNetwork {
        net(&[("10.64.16.0/20", "192.0.2.2")])
    }

    fn route(subnet: &str, via: &str) -> Route {
        Route {
            subnet: subnet.into(),
            via: via.into(),
        }
    }

    #[test]
    fn the_plan_routes_peer_blocks_and_opens_this_block_to_them_only() {
        let w = plan(&peer());
        assert_eq!(
            w.routes.iter().collect::<Vec<_>>(),
            [&route("10.64.16.0/20", "192.0.2.2")]
        );
        assert_eq!(
            w.forward,
            [
                "-s 10.64.16.0/20 -d 10.64.0.0/20 -j ACCEPT",
                "-s 192.0.2.2/32 -d 10.64.0.0/20 -j ACCEPT",
            ]
        );
        assert_eq!(w.nat, ["-s 10.64.0.0/20 -d 10.64.16.0/20 -j RETURN"]);
        let input = restore_input(&w, &Firewall::default()).unwrap();
        assert_eq!(
            input,
            "*filter\n:WHARF-FORWARD - [0:0]\n\
             -A WHARF-FORWARD -s 10.64.16.0/20 -d 10.64.0.0/20 -j ACCEPT\n\
             -A WHARF-FORWARD -s 192.0.2.2/32 -d 10.64.0.0/20 -j ACCEPT\n\
             -I DOCKER-USER 1 -j WHARF-FORWARD\nCOMMIT\n\
             *nat\n:WHARF-POSTROUTING - [0:0]\n\
             -A WHARF-POSTROUTING -s 10.64.0.0/20 -d 10.64.16.0/20 -j RETURN\n\
             -I POSTROUTING 1 -j WHARF-POSTROUTING\nCOMMIT\n"
        );
        assert_eq!(restore_input(&w, &Firewall::of(&w)), None);
        assert_eq!(plan(&NodeNetwork::default()), Wanted::default());
    }

    #[test]
    fn iptables_save_output_is_read_back_as_the_plan_writes_it() {
        let w = plan(&peer());
        let filter = "# Generated by iptables-save v1.8.9 (nf_tables)\n*filter\n\
            :FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n:WHARF-FORWARD - [0:0]\n\
            -A FORWARD -j DOCKER-USER\n\
            -A DOCKER-USER -j WHARF-FORWARD\n-A DOCKER-USER -j RETURN\n\
            -A WHARF-FORWARD -s 10.64.16.0/20 -d 10.64.0.0/20 -j ACCEPT\n\
            -A WHARF-FORWARD -s 192.0.2.2/32 -d 10.64.0.0/20 -j ACCEPT\nCOMMIT\n";
        let (rules, jump) = parse_save(filter, FORWARD_CHAIN, "DOCKER-USER");
        assert_eq!(rules.as_ref(), Some(&w.forward));
        assert!(jump.ok());
        // Docker inserted a masquerade rule ahead of ours when it made a new network, and the
        // chain was flushed.
        let nat = "*nat\n:POSTROUTING ACCEPT [0:0]\n:WHARF-POSTROUTING - [0:0]\n\
            -A POSTROUTING -s 10.64.0.0/25 ! -o br-1 -j MASQUERADE\n\
            -A POSTROUTING -j WHARF-POSTROUTING\nCOMMIT\n";
        let (rules, jump) = parse_save(nat, NAT_CHAIN, "POSTROUTING");
        assert_eq!(rules, Some(vec![]));
        assert_eq!(
            jump,
            Jump {
                count: 1,
                first: false
            }
        );
        let have = Firewall {
            forward: Some(w.forward.clone()),
            forward_jump: Jump {
                count: 1,
                first: true,
            },
            nat: rules,
            nat_jump: jump,
        };
        // Only the nat table is rewritten, its jump moved first in the same transaction.
        assert_eq!(
            restore_input(&w, &have).unwrap(),
            "*nat\n:WHARF-POSTROUTING - [0:0]\n\
             -A WHARF-POSTROUTING -s 10.64.0.0/20 -d 10.64.16.0/20 -j RETURN\n\
             -D POSTROUTING -j WHARF-POSTROUTING\n\
             -I POSTROUTING 1 -j WHARF-POSTROUTING\nCOMMIT\n"
        );
        // A table without our chain (never set up, or a firewall reload).
        assert_eq!(
            parse_save(
                "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n",
                NAT_CHAIN,
                "POSTROUTING"
            ),
            (None, Jump::default())
        );
    }

    #[test]
    fn ip_json_routes_are_read() {
        let json = r#"[{"dst":"10.64.16.0/20","gateway":"192.0.2.2","dev":"eth0","flags":[]},
            {"dst":"10.64.32.0/20","dev":"eth0","scope":"link","flags":[]}]"#;
        assert_eq!(
            parse_routes(json).unwrap().into_iter().collect::<Vec<_>>(),
            [route("10.64.16.0/20", "192.0.2.2")]
        );
        assert!(parse_routes("").unwrap().is_empty());
        assert!(parse_routes("[]\n").unwrap().is_empty());
        assert!(parse_routes("not json").is_err());
    }

    #[tokio::test]
    async fn apply_converges_and_is_idempotent() {
        let host = Fake::default();
        host.routes
            .lock()
            .insert(route("10.96.9.0/24", "192.0.2.9"));
        let w = plan(&peer());
        let out = apply(&host, &w).await;
        assert!(out.problems.is_empty(), "{out:?}");
        assert_eq!(
            host.take(),
            [
                "read routes",
                "del 10.96.9.0/24 via 192.0.2.9",
                "add 10.64.16.0/20 via 192.0.2.2",
                "read firewall",
                "restore filter+nat (2 forward, 1 nat rules)"
            ]
        );
        assert_eq!(out.changes.len(), 3);
        let again = apply(&host, &w).await;
        assert_eq!(again, Outcome::default());
        assert_eq!(host.take(), ["read routes", "read firewall"], "reads only");
        // The peer leaves: its route goes, the chains are emptied.
        assert!(apply(&host, &Wanted::default()).await.problems.is_empty());
        assert_eq!(
            host.take(),
            [
                "read routes",
                "del 10.64.16.0/20 via 192.0.2.2",
                "read firewall",
                "restore filter+nat (0 forward, 0 nat rules)"
            ]
        );
    }

    #[tokio::test]
    async fn nothing_is_read_or_rewritten_between_periods_and_only_read_when_the_host_matches() {
        let host = Fake::default();
        let mut c = Converger::default();
        let t0 = Instant::now();
        assert!(c.step(&host, &peer(), t0).await.is_some());
        host.take();
        // The same state, before the period is up (every desired-state change calls in).
        assert!(
            c.step(&host, &peer(), t0 + PERIOD - Duration::from_millis(1))
                .await
                .is_none()
        );
        assert!(host.take().is_empty());
        // Each period the host is read again; it matches, so nothing is written.
        for i in 1..=3 {
            let out = c.step(&host, &peer(), t0 + PERIOD * i).await.unwrap();
            assert_eq!(out, Outcome::default());
            assert_eq!(host.take(), ["read routes", "read firewall"]);
        }
    }

    #[tokio::test]
    async fn a_deleted_route_is_re_added_at_the_next_period() {
        let host = Fake::default();
        let mut c = Converger::default();
        let t0 = Instant::now();
        c.step(&host, &peer(), t0).await.unwrap();
        host.take();
        // Someone deletes it (`ip route del`, an interface bounced).
        host.routes.lock().clear();
        assert!(
            c.step(&host, &peer(), t0 + Duration::from_secs(1))
                .await
                .is_none()
        );
        let out = c.step(&host, &peer(), t0 + PERIOD).await.unwrap();
        assert_eq!(out.changes, ["added route 10.64.16.0/20 via 192.0.2.2"]);
        assert_eq!(
            host.take(),
            [
                "read routes",
                "add 10.64.16.0/20 via 192.0.2.2",
                "read firewall"
            ]
        );
        assert_eq!(
            *host.routes.lock(),
            plan(&peer()).routes,
            "the host has the route again"
        );
    }

    #[tokio::test]
    async fn a_flushed_chain_or_a_lost_jump_is_restored_at_the_next_period() {
        let host = Fake::default();
        let mut c = Converger::default();
        let t0 = Instant::now();
        c.step(&host, &peer(), t0).await.unwrap();
        host.take();
        // `iptables -t nat -F WHARF-POSTROUTING`.
        host.fw.lock().nat = Some(vec![]);
        let out = c.step(&host, &peer(), t0 + PERIOD).await.unwrap();
        assert_eq!(out.changes, ["rewrote WHARF-POSTROUTING"]);
        assert_eq!(
            host.take(),
            [
                "read routes",
                "read firewall",
                "restore nat (2 forward, 1 nat rules)"
            ]
        );
        // A firewall reload drops the filter chain and the jump to it.
        {
            let mut fw = host.fw.lock();
            fw.forward = None;
            fw.forward_jump = Jump::default();
        }
        let out = c.step(&host, &peer(), t0 + PERIOD * 2).await.unwrap();
        assert_eq!(out.changes, ["rewrote WHARF-FORWARD"]);
        assert_eq!(*host.fw.lock(), Firewall::of(&plan(&peer())));
        host.take();
        let out = c.step(&host, &peer(), t0 + PERIOD * 3).await.unwrap();
        assert_eq!(out, Outcome::default(), "repaired for good");
    }

    #[tokio::test]
    async fn a_new_wanted_state_applies_at_once_and_a_failure_is_retried_a_period_later() {
        let host = Fake::default();
        let mut c = Converger::default();
        let t0 = Instant::now();
        c.step(&host, &peer(), t0).await.unwrap();
        host.take();
        // A second peer joins a moment later: applied now, not at the period.
        *host.refuse_routes.lock() = true;
        let two = net(&[
            ("10.64.16.0/20", "192.0.2.2"),
            ("10.64.32.0/20", "192.0.2.3"),
        ]);
        let t1 = t0 + Duration::from_secs(1);
        let out = c.step(&host, &two, t1).await.unwrap();
        assert_eq!(out.problems.len(), 1, "{out:?}");
        assert_eq!(out.changes, ["rewrote WHARF-FORWARD and WHARF-POSTROUTING"]);
        host.take();
        // Not retried on every call...
        assert!(
            c.step(&host, &two, t1 + Duration::from_secs(1))
                .await
                .is_none()
        );
        // ...but at the next period, and then it holds.
        *host.refuse_routes.lock() = false;
        let out = c.step(&host, &two, t1 + PERIOD).await.unwrap();
        assert!(out.problems.is_empty());
        assert_eq!(out.changes, ["added route 10.64.32.0/20 via 192.0.2.3"]);
        assert_eq!(*host.routes.lock(), plan(&two).routes);
    }

    #[tokio::test]
    async fn a_node_without_peers_never_touches_the_host() {
        let host = Fake::default();
        let mut c = Converger::default();
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(
                c.step(&host, &NodeNetwork::default(), t0 + PERIOD * i)
                    .await
                    .is_none()
            );
        }
        assert!(host.take().is_empty());
    }
}
