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
//! from inside. Chain `WHARF-FORWARD` (jumped to first from `DOCKER-USER`) first applies the
//! segment guards (`segments.rs`: who may reach each container or stack subnet here), then
//! accepts, into this node's block, traffic from the other nodes' blocks (their containers; with
//! encryption only from the WireGuard interface) and their ingress (host addresses, or in the
//! tunnel their tunnel addresses). Chain `WHARF-POSTROUTING` (nat, jumped to first from `POSTROUTING`) keeps Docker from
//! masquerading container-to-container traffic between nodes, so a container sees its peer's real
//! address: its rules ACCEPT (ends the nat chain), not RETURN (which went on to Docker's
//! MASQUERADE: found by the segments test, where every caller from another host looked like
//! that host). A table that differs is rewritten in one `iptables-restore` (its chain and the jump to
//! it together). One route and three rules per peer, whatever the number of stacks.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use wharf_types::NodeNetwork;

use crate::segments::Guard;
use crate::tunnel::{Device, DeviceState, Keys, Peer, Setup};

/// Routes Wharf installs carry this protocol number (`ip route ... proto 213`).
pub const ROUTE_PROTO: &str = "213";
pub const FORWARD_CHAIN: &str = "WHARF-FORWARD";
pub const NAT_CHAIN: &str = "WHARF-POSTROUTING";
/// The chains ours are jumped to from, first: (table, chain).
const FORWARD_FROM: (&str, &str) = ("filter", "DOCKER-USER");
const NAT_FROM: (&str, &str) = ("nat", "POSTROUTING");
/// How often the host is read again and drift repaired; also how soon a failure is retried.
pub const PERIOD: Duration = Duration::from_secs(10);

/// A route to a peer's block: via the peer's host address (in the clear), or through the
/// tunnel interface from the node's own tunnel address; or, with encryption, the whole pool
/// unreachable (below the peers' routes), so traffic to a block without a tunnel is refused
/// rather than sent in the clear to the default gateway.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub subnet: String,
    /// The gateway; empty for a route through an interface.
    pub via: String,
    /// The interface; empty for a route via a gateway.
    pub dev: String,
    /// The source address of host traffic on the route (with `dev`).
    pub src: String,
    pub unreachable: bool,
}

impl Route {
    /// The route as `ip route` arguments (after the verb), without the protocol.
    fn args(&self) -> Vec<&str> {
        let mut a = Vec::new();
        if self.unreachable {
            a.push("unreachable");
        }
        a.push(self.subnet.as_str());
        if !self.via.is_empty() {
            a.extend(["via", self.via.as_str()]);
        }
        if !self.dev.is_empty() {
            a.extend(["dev", self.dev.as_str()]);
        }
        if !self.src.is_empty() {
            a.extend(["src", self.src.as_str()]);
        }
        a
    }

    /// For people (logs, test transcripts).
    pub fn describe(&self) -> String {
        self.args().join(" ")
    }
}

/// Everything the host should have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The WireGuard interface, with encryption.
    pub device: Option<crate::tunnel::Device>,
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

/// The wanted host state for a node's network share. Pure. `tunnel`: how this agent runs its
/// end of the encrypted tunnel (none: it runs none, and with encryption on no peer is routed).
pub fn plan(net: &NodeNetwork, tunnel: Option<&crate::tunnel::Setup>, guards: &[Guard]) -> Wanted {
    let mut w = plan_routes(net, tunnel);
    if net.block.is_empty() || guards.is_empty() {
        return w;
    }
    // Segments first: what a guard does not let in is dropped before the block's accepts.
    let mut first = vec![
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string(),
        // Docker's published ports (`ports:`) are open to all, as the stack file says.
        "-m conntrack --ctstate DNAT -j ACCEPT".to_string(),
    ];
    // The other nodes' ingress: from their host address, or in the tunnel from their own.
    for p in net.peers.iter().filter(|p| p.block != net.block) {
        match (net.encryption, tunnel) {
            (false, _) => first.push(format!("-s {} -d {} -j ACCEPT", cidr(&p.via), net.block)),
            (true, Some(t)) if p.public_key.is_some() => first.push(format!(
                "-s {} -d {} -i {} -j ACCEPT",
                cidr(&tunnel_address(&p.block)),
                net.block,
                t.interface
            )),
            _ => {}
        }
    }
    for g in guards {
        first.extend(
            g.from
                .iter()
                .map(|f| format!("-s {f} -d {} -j ACCEPT", g.dest)),
        );
        first.push(format!("-d {} -j DROP", g.dest));
    }
    for g in guards {
        if let Some(to) = &g.egress {
            first.extend(to.iter().map(|t| format!("-s {} -d {t} -j ACCEPT", g.dest)));
            first.push(format!("-s {} -j DROP", g.dest));
        }
    }
    // Kept after them: the MSS clamp, which must see every SYN, goes first of all.
    let clamp = w.forward.iter().position(|r| r.contains("TCPMSS"));
    let mut forward = Vec::new();
    if let Some(i) = clamp {
        forward.push(w.forward.remove(i));
    }
    forward.extend(first);
    forward.append(&mut w.forward);
    w.forward = forward;
    w
}

/// Routes, the tunnel and the block-to-block rules, without segments.
fn plan_routes(net: &NodeNetwork, tunnel: Option<&crate::tunnel::Setup>) -> Wanted {
    let mut w = Wanted::default();
    if net.block.is_empty() {
        return w;
    }
    let peers = net.peers.iter().filter(|p| p.block != net.block);
    if !net.encryption {
        for p in peers {
            w.routes.insert(Route {
                subnet: p.block.clone(),
                via: p.via.clone(),
                ..Route::default()
            });
            w.forward
                .push(format!("-s {} -d {} -j ACCEPT", cidr(&p.block), net.block));
            w.forward
                .push(format!("-s {} -d {} -j ACCEPT", cidr(&p.via), net.block));
            w.nat
                .push(format!("-s {} -d {} -j ACCEPT", net.block, cidr(&p.block)));
        }
        return w;
    }
    // Encrypted: never a packet to the pool in the clear.
    w.routes.insert(Route {
        subnet: net.pool.clone(),
        unreachable: true,
        ..Route::default()
    });
    let Some(setup) = tunnel else {
        return w;
    };
    let address = tunnel_address(&net.block);
    let iface = setup.interface.as_str();
    // Segments through the tunnel are smaller than the hosts' MTU: TCP learns it at the SYN.
    w.forward.push(format!(
        "-o {iface} -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu"
    ));
    let mut device = crate::tunnel::Device {
        interface: iface.to_string(),
        port: setup.port,
        address: format!("{address}/32"),
        peers: BTreeSet::new(),
    };
    for p in peers {
        let Some(key) = p.public_key.as_ref().filter(|k| !k.is_empty()) else {
            continue;
        };
        device.peers.insert(crate::tunnel::Peer {
            public_key: key.clone(),
            endpoint: format!("{}:{}", p.via, p.port),
            allowed: p.block.clone(),
        });
        w.routes.insert(Route {
            subnet: p.block.clone(),
            dev: iface.to_string(),
            src: address.clone(),
            ..Route::default()
        });
        // Only what came out of the tunnel, where WireGuard checked the sender's key against
        // the block: a packet claiming a peer's block on any other interface is dropped.
        w.forward.push(format!(
            "-s {} -d {} -i {iface} -j ACCEPT",
            cidr(&p.block),
            net.block
        ));
        w.nat
            .push(format!("-s {} -d {} -j ACCEPT", net.block, cidr(&p.block)));
    }
    w.device = Some(device);
    w
}

/// The node's own address on the tunnel interface: the first of its block (the network address
/// of the block's first stack subnet, which no container is ever given).
pub fn tunnel_address(block: &str) -> String {
    block.split('/').next().unwrap_or(block).to_string()
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
    /// The tunnel interface as the host has it; `None`: there is no such interface.
    async fn device(&self, interface: &str) -> Result<Option<DeviceState>, String>;
    /// Make the tunnel interface: the kernel's WireGuard where the host has it, else
    /// `wireguard-go` (which runs on as its own process, beyond the agent's restarts).
    async fn create_device(&self, interface: &str) -> Result<(), String>;
    /// Give the interface its private key, port and address, and bring it up.
    async fn setup_device(&self, d: &Device, private_key: &str) -> Result<(), String>;
    /// Add or update a peer of the interface.
    async fn set_peer(&self, interface: &str, p: &Peer) -> Result<(), String>;
    async fn remove_peer(&self, interface: &str, public_key: &str) -> Result<(), String>;
}

/// What one `apply` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// What it changed on the host, for people.
    pub changes: Vec<String>,
    /// What it could not do or read.
    pub problems: Vec<String>,
    /// The tunnel interface's implementation (`kernel`, `wireguard-go`), when it is up.
    pub tunnel: Option<String>,
}

/// Make the tunnel interface match `d` (keyed by `keys`): created if missing, set up when its
/// key, port, address or state differ, peers added, updated and removed one by one. False when
/// the interface is not there (then routes through it cannot be made either).
async fn apply_device(host: &dyn Host, d: &Device, keys: &Keys, out: &mut Outcome) -> bool {
    let iface = d.interface.as_str();
    let state = match host.device(iface).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            if let Err(e) = host.create_device(iface).await {
                out.problems.push(e);
                return false;
            }
            out.changes.push(format!("created {iface}"));
            match host.device(iface).await {
                Ok(Some(s)) => s,
                Ok(None) => {
                    out.problems
                        .push(format!("{iface} was created but is not there"));
                    return false;
                }
                Err(e) => {
                    out.problems.push(e);
                    return false;
                }
            }
        }
        Err(e) => {
            out.problems.push(e);
            return false;
        }
    };
    if state.needs_setup(d, keys.public()) {
        match host.setup_device(d, keys.private()).await {
            Ok(()) => out.changes.push(format!("set up {iface}")),
            Err(e) => {
                out.problems.push(e);
                return false;
            }
        }
    }
    let wanted_keys: BTreeSet<&str> = d.peers.iter().map(|p| p.public_key.as_str()).collect();
    for p in &state.peers {
        if !wanted_keys.contains(p.public_key.as_str()) {
            match host.remove_peer(iface, &p.public_key).await {
                Ok(()) => out.changes.push(format!("removed peer {}", p.public_key)),
                Err(e) => out.problems.push(e),
            }
        }
    }
    for p in d.peers.difference(&state.peers) {
        match host.set_peer(iface, p).await {
            Ok(()) => out
                .changes
                .push(format!("set peer {} for {}", p.public_key, p.allowed)),
            Err(e) => out.problems.push(e),
        }
    }
    out.tunnel = Some(state.implementation);
    true
}

/// Read the host and make it match `want`, changing only what differs. `keys`: the node's
/// WireGuard keys (for `want.device`).
pub async fn apply(host: &dyn Host, want: &Wanted, keys: Option<&Keys>) -> Outcome {
    let mut out = Outcome::default();
    let mut want = std::borrow::Cow::Borrowed(want);
    if let Some(d) = &want.device {
        let up = match keys {
            Some(k) => apply_device(host, d, k, &mut out).await,
            None => {
                out.problems.push("this agent has no WireGuard keys".into());
                false
            }
        };
        if !up {
            // No interface: no route through it (the pool stays unreachable).
            let iface = d.interface.clone();
            want.to_mut().routes.retain(|r| r.dev != iface);
        }
    }
    match host.routes().await {
        Ok(have) => {
            // Added first: a route replaced by one to the same subnet (encryption turned on)
            // is changed in place, never missing for a moment.
            for r in want.routes.difference(&have) {
                match host.add_route(r).await {
                    Ok(()) => out.changes.push(format!("added route {}", r.describe())),
                    Err(e) => out.problems.push(e),
                }
            }
            let subnets: BTreeSet<&str> = want.routes.iter().map(|r| r.subnet.as_str()).collect();
            for r in have.difference(&want.routes) {
                if subnets.contains(r.subnet.as_str()) {
                    continue; // replaced above (`ip route replace`)
                }
                match host.del_route(r).await {
                    Ok(()) => out.changes.push(format!("removed route {}", r.describe())),
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
                (have.filter_differs(&want), FORWARD_CHAIN),
                (have.nat_differs(&want), NAT_CHAIN),
            ]
            .into_iter()
            .filter_map(|(d, c)| d.then_some(c))
            .collect();
            if !tables.is_empty() {
                match host.firewall(&want, &have).await {
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
    /// The wanted state last applied, and the public key it was applied with.
    last: Option<(Wanted, String)>,
    next_check: Option<Instant>,
    /// Whether anything was ever applied (else an empty wanted state touches nothing).
    configured: bool,
    problems: Vec<String>,
}

impl Converger {
    /// Follow `net` at `now`, with this agent's end of the tunnel (`tunnel`, when it runs one);
    /// `None` when nothing was due (the host was not even read).
    pub async fn step(
        &mut self,
        host: &dyn Host,
        net: &NodeNetwork,
        guards: &[Guard],
        tunnel: Option<(&Setup, &Keys)>,
        now: Instant,
    ) -> Option<Outcome> {
        let want = plan(net, tunnel.map(|(s, _)| s), guards);
        let key = tunnel
            .map(|(_, k)| k.public().to_string())
            .unwrap_or_default();
        // Nothing to route and never configured (a single node): touch nothing, need no `ip` or
        // `iptables` on the host.
        if !self.configured && want == Wanted::default() {
            self.last = Some((want, key));
            return None;
        }
        let changed = self.last.as_ref() != Some(&(want.clone(), key.clone()));
        if !changed && self.next_check.is_some_and(|at| now < at) {
            return None;
        }
        let out = apply(host, &want, tunnel.map(|(_, k)| k)).await;
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
        self.last = Some((want, key));
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

/// `ip route <verb> ROUTE proto 213`.
async fn route(verb: &str, r: &Route) -> Result<(), String> {
    let mut args = vec!["route", verb];
    args.extend(r.args());
    args.extend(["proto", ROUTE_PROTO]);
    run("ip", &args, None).await.map(drop)
}

/// The routes in `ip -json route show proto 213` output, as `plan` writes them: via a gateway,
/// through an interface from a source address, or unreachable.
pub fn parse_routes(json: &str) -> Result<BTreeSet<Route>, String> {
    #[derive(serde::Deserialize)]
    struct IpRoute {
        dst: String,
        #[serde(rename = "type", default)]
        kind: Option<String>,
        gateway: Option<String>,
        dev: Option<String>,
        prefsrc: Option<String>,
    }
    let list: Vec<IpRoute> = if json.trim().is_empty() {
        Vec::new()
    } else {
        serde_json::from_str(json).map_err(|e| format!("cannot read `ip -json route`: {e}"))?
    };
    Ok(list
        .into_iter()
        .map(|r| match (r.kind.as_deref(), r.gateway) {
            (Some("unreachable"), _) => Route {
                subnet: r.dst,
                unreachable: true,
                ..Route::default()
            },
            (_, Some(via)) => Route {
                subnet: r.dst,
                via,
                ..Route::default()
            },
            (_, None) => Route {
                subnet: r.dst,
                dev: r.dev.unwrap_or_default(),
                src: r.prefsrc.unwrap_or_default(),
                ..Route::default()
            },
        })
        .collect())
}

/// Run `wg ARGS…`, with `input` on its standard input.
async fn wg(args: &[&str], input: Option<&str>) -> Result<String, String> {
    run("wg", args, input).await.map_err(|e| {
        if e.starts_with("cannot run wg") {
            format!(
                "{e} (install wireguard-tools; Debian: apt install wireguard-tools wireguard-go)"
            )
        } else {
            e
        }
    })
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

    async fn device(&self, interface: &str) -> Result<Option<DeviceState>, String> {
        let Ok(link) = run("ip", &["-d", "-j", "addr", "show", "dev", interface], None).await
        else {
            return Ok(None); // "Device does not exist."
        };
        let Some((implementation, up, addresses)) = crate::tunnel::parse_link(&link) else {
            return Ok(None);
        };
        let dump = wg(&["show", interface, "dump"], None).await?;
        let (public_key, port, peers) = crate::tunnel::parse_dump(&dump);
        Ok(Some(DeviceState {
            implementation,
            public_key,
            port,
            up,
            addresses,
            peers,
        }))
    }

    async fn create_device(&self, interface: &str) -> Result<(), String> {
        let kernel = run("ip", &["link", "add", interface, "type", "wireguard"], None).await;
        if kernel.is_err() {
            // No kernel WireGuard: the userspace one, which detaches and runs on by itself.
            run("wireguard-go", &[interface], None)
                .await
                .map_err(|e| {
                    format!(
                        "no WireGuard on this host: the kernel has none and {e} (Debian: apt install wireguard-go wireguard-tools)"
                    )
                })?;
        }
        let mtu = crate::tunnel::MTU.to_string();
        run("ip", &["link", "set", interface, "mtu", &mtu], None)
            .await
            .map(drop)
    }

    async fn setup_device(&self, d: &Device, private_key: &str) -> Result<(), String> {
        let port = d.port.to_string();
        // The key through a pipe: never on a command line (`ps` shows those).
        wg(
            &[
                "set",
                &d.interface,
                "listen-port",
                &port,
                "private-key",
                "/dev/stdin",
            ],
            Some(private_key),
        )
        .await?;
        run(
            "ip",
            &["addr", "replace", &d.address, "dev", &d.interface],
            None,
        )
        .await?;
        run("ip", &["link", "set", &d.interface, "up"], None)
            .await
            .map(drop)
    }

    async fn set_peer(&self, interface: &str, p: &Peer) -> Result<(), String> {
        let args = [
            "set",
            interface,
            "peer",
            &p.public_key,
            "endpoint",
            &p.endpoint,
            "allowed-ips",
            &p.allowed,
            "persistent-keepalive",
            "25",
        ];
        wg(&args, None).await.map(drop)
    }

    async fn remove_peer(&self, interface: &str, public_key: &str) -> Result<(), String> {
        wg(&["set", interface, "peer", public_key, "remove"], None)
            .await
            .map(drop)
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
        device: Mutex<Option<DeviceState>>,
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
            self.call(format!("add {}", r.describe()));
            if *self.refuse_routes.lock() {
                return Err("RTNETLINK answers: Network is unreachable".into());
            }
            self.routes.lock().insert(r.clone());
            Ok(())
        }
        async fn del_route(&self, r: &Route) -> Result<(), String> {
            self.call(format!("del {}", r.describe()));
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
        async fn device(&self, interface: &str) -> Result<Option<DeviceState>, String> {
            self.call(format!("read {interface}"));
            Ok(self.device.lock().clone())
        }
        async fn create_device(&self, interface: &str) -> Result<(), String> {
            self.call(format!("create {interface}"));
            *self.device.lock() = Some(DeviceState {
                implementation: "wireguard-go".into(),
                ..DeviceState::default()
            });
            Ok(())
        }
        async fn setup_device(&self, d: &Device, private_key: &str) -> Result<(), String> {
            self.call(format!(
                "set up {} port {} at {}",
                d.interface, d.port, d.address
            ));
            let public = crate::tunnel::public_of(private_key)?;
            let mut dev = self.device.lock();
            let dev = dev.as_mut().ok_or("no such device")?;
            dev.public_key = public;
            dev.port = d.port;
            dev.up = true;
            dev.addresses = vec![d.address.clone()];
            Ok(())
        }
        async fn set_peer(&self, interface: &str, p: &Peer) -> Result<(), String> {
            self.call(format!(
                "{interface} peer {} at {} for {}",
                p.public_key, p.endpoint, p.allowed
            ));
            let mut dev = self.device.lock();
            let dev = dev.as_mut().ok_or("no such device")?;
            dev.peers.retain(|q| q.public_key != p.public_key);
            dev.peers.insert(p.clone());
            Ok(())
        }
        async fn remove_peer(&self, interface: &str, public_key: &str) -> Result<(), String> {
            self.call(format!("{interface} remove peer {public_key}"));
            let mut dev = self.device.lock();
            let dev = dev.as_mut().ok_or("no such device")?;
            dev.peers.retain(|q| q.public_key != public_key);
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
                        public_key: None,
                        port: 0,
                    })
                    .collect(),
            ),
            encryption: false,
            key_epoch: 0,
            stack_subnets: Default::default(),
        }
    }

    fn peer() -> NodeNetwork {
        net(&[("10.64.16.0/20", "192.0.2.2")])
    }

    fn route(subnet: &str, via: &str) -> Route {
        Route {
            subnet: subnet.into(),
            via: via.into(),
            ..Route::default()
        }
    }

    #[test]
    fn the_plan_routes_peer_blocks_and_opens_this_block_to_them_only() {
        let w = plan(&peer(), None, &[]);
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
        assert_eq!(w.nat, ["-s 10.64.0.0/20 -d 10.64.16.0/20 -j ACCEPT"]);
        let input = restore_input(&w, &Firewall::default()).unwrap();
        assert_eq!(
            input,
            "*filter\n:WHARF-FORWARD - [0:0]\n\
             -A WHARF-FORWARD -s 10.64.16.0/20 -d 10.64.0.0/20 -j ACCEPT\n\
             -A WHARF-FORWARD -s 192.0.2.2/32 -d 10.64.0.0/20 -j ACCEPT\n\
             -I DOCKER-USER 1 -j WHARF-FORWARD\nCOMMIT\n\
             *nat\n:WHARF-POSTROUTING - [0:0]\n\
             -A WHARF-POSTROUTING -s 10.64.0.0/20 -d 10.64.16.0/20 -j ACCEPT\n\
             -I POSTROUTING 1 -j WHARF-POSTROUTING\nCOMMIT\n"
        );
        assert_eq!(restore_input(&w, &Firewall::of(&w)), None);
        assert_eq!(plan(&NodeNetwork::default(), None, &[]), Wanted::default());
    }

    #[test]
    fn iptables_save_output_is_read_back_as_the_plan_writes_it() {
        let w = plan(&peer(), None, &[]);
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
             -A WHARF-POSTROUTING -s 10.64.0.0/20 -d 10.64.16.0/20 -j ACCEPT\n\
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
            {"dst":"10.64.32.0/20","dev":"wharf0","scope":"link","prefsrc":"10.64.0.0","flags":[]},
            {"type":"unreachable","dst":"10.64.0.0/10","flags":[]}]"#;
        let read: Vec<String> = parse_routes(json)
            .unwrap()
            .iter()
            .map(Route::describe)
            .collect();
        assert_eq!(
            read,
            [
                "unreachable 10.64.0.0/10",
                "10.64.16.0/20 via 192.0.2.2",
                "10.64.32.0/20 dev wharf0 src 10.64.0.0"
            ]
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
        let w = plan(&peer(), None, &[]);
        let out = apply(&host, &w, None).await;
        assert!(out.problems.is_empty(), "{out:?}");
        assert_eq!(
            host.take(),
            [
                "read routes",
                "add 10.64.16.0/20 via 192.0.2.2",
                "del 10.96.9.0/24 via 192.0.2.9",
                "read firewall",
                "restore filter+nat (2 forward, 1 nat rules)"
            ]
        );
        assert_eq!(out.changes.len(), 3);
        let again = apply(&host, &w, None).await;
        assert_eq!(again, Outcome::default());
        assert_eq!(host.take(), ["read routes", "read firewall"], "reads only");
        // The peer leaves: its route goes, the chains are emptied.
        assert!(
            apply(&host, &Wanted::default(), None)
                .await
                .problems
                .is_empty()
        );
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
        assert!(c.step(&host, &peer(), &[], None, t0).await.is_some());
        host.take();
        // The same state, before the period is up (every desired-state change calls in).
        assert!(
            c.step(
                &host,
                &peer(),
                &[],
                None,
                t0 + PERIOD - Duration::from_millis(1)
            )
            .await
            .is_none()
        );
        assert!(host.take().is_empty());
        // Each period the host is read again; it matches, so nothing is written.
        for i in 1..=3 {
            let out = c
                .step(&host, &peer(), &[], None, t0 + PERIOD * i)
                .await
                .unwrap();
            assert_eq!(out, Outcome::default());
            assert_eq!(host.take(), ["read routes", "read firewall"]);
        }
    }

    #[tokio::test]
    async fn a_deleted_route_is_re_added_at_the_next_period() {
        let host = Fake::default();
        let mut c = Converger::default();
        let t0 = Instant::now();
        c.step(&host, &peer(), &[], None, t0).await.unwrap();
        host.take();
        // Someone deletes it (`ip route del`, an interface bounced).
        host.routes.lock().clear();
        assert!(
            c.step(&host, &peer(), &[], None, t0 + Duration::from_secs(1))
                .await
                .is_none()
        );
        let out = c
            .step(&host, &peer(), &[], None, t0 + PERIOD)
            .await
            .unwrap();
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
            plan(&peer(), None, &[]).routes,
            "the host has the route again"
        );
    }

    #[tokio::test]
    async fn a_flushed_chain_or_a_lost_jump_is_restored_at_the_next_period() {
        let host = Fake::default();
        let mut c = Converger::default();
        let t0 = Instant::now();
        c.step(&host, &peer(), &[], None, t0).await.unwrap();
        host.take();
        // `iptables -t nat -F WHARF-POSTROUTING`.
        host.fw.lock().nat = Some(vec![]);
        let out = c
            .step(&host, &peer(), &[], None, t0 + PERIOD)
            .await
            .unwrap();
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
        let out = c
            .step(&host, &peer(), &[], None, t0 + PERIOD * 2)
            .await
            .unwrap();
        assert_eq!(out.changes, ["rewrote WHARF-FORWARD"]);
        assert_eq!(*host.fw.lock(), Firewall::of(&plan(&peer(), None, &[])));
        host.take();
        let out = c
            .step(&host, &peer(), &[], None, t0 + PERIOD * 3)
            .await
            .unwrap();
        assert_eq!(out, Outcome::default(), "repaired for good");
    }

    #[tokio::test]
    async fn a_new_wanted_state_applies_at_once_and_a_failure_is_retried_a_period_later() {
        let host = Fake::default();
        let mut c = Converger::default();
        let t0 = Instant::now();
        c.step(&host, &peer(), &[], None, t0).await.unwrap();
        host.take();
        // A second peer joins a moment later: applied now, not at the period.
        *host.refuse_routes.lock() = true;
        let two = net(&[
            ("10.64.16.0/20", "192.0.2.2"),
            ("10.64.32.0/20", "192.0.2.3"),
        ]);
        let t1 = t0 + Duration::from_secs(1);
        let out = c.step(&host, &two, &[], None, t1).await.unwrap();
        assert_eq!(out.problems.len(), 1, "{out:?}");
        assert_eq!(out.changes, ["rewrote WHARF-FORWARD and WHARF-POSTROUTING"]);
        host.take();
        // Not retried on every call...
        assert!(
            c.step(&host, &two, &[], None, t1 + Duration::from_secs(1))
                .await
                .is_none()
        );
        // ...but at the next period, and then it holds.
        *host.refuse_routes.lock() = false;
        let out = c.step(&host, &two, &[], None, t1 + PERIOD).await.unwrap();
        assert!(out.problems.is_empty());
        assert_eq!(out.changes, ["added route 10.64.32.0/20 via 192.0.2.3"]);
        assert_eq!(*host.routes.lock(), plan(&two, None, &[]).routes);
    }

    /// Encrypted: a peer with a key (192.0.2.2, unless `with_second` is false: it was removed)
    /// and one that has sent none yet (192.0.2.3).
    fn encrypted(with_second: bool) -> NodeNetwork {
        let mut n = net(&[
            ("10.64.16.0/20", "192.0.2.2"),
            ("10.64.32.0/20", "192.0.2.3"),
        ]);
        n.encryption = true;
        let mut peers = (*n.peers).clone();
        peers[1].public_key = Some("K2".into());
        peers[1].port = 51820;
        if !with_second {
            peers.remove(1);
        }
        n.peers = std::sync::Arc::new(peers);
        n
    }

    fn setup() -> Setup {
        Setup {
            interface: "wharf0".into(),
            port: 51820,
        }
    }

    #[test]
    fn encrypted_the_plan_routes_through_the_tunnel_and_never_in_the_clear() {
        let w = plan(&encrypted(true), Some(&setup()), &[]);
        let routes: Vec<String> = w.routes.iter().map(Route::describe).collect();
        assert_eq!(
            routes,
            [
                "unreachable 10.64.0.0/10",
                "10.64.16.0/20 dev wharf0 src 10.64.0.0"
            ],
            "the keyless peer is not routed at all, the pool never in the clear"
        );
        assert_eq!(
            w.forward,
            [
                "-o wharf0 -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu",
                "-s 10.64.16.0/20 -d 10.64.0.0/20 -i wharf0 -j ACCEPT",
            ],
            "only what came out of the tunnel; no peer host address"
        );
        assert_eq!(w.nat, ["-s 10.64.0.0/20 -d 10.64.16.0/20 -j ACCEPT"]);
        let d = w.device.unwrap();
        assert_eq!((d.address.as_str(), d.port), ("10.64.0.0/32", 51820));
        assert_eq!(
            d.peers.into_iter().collect::<Vec<_>>(),
            [Peer {
                public_key: "K2".into(),
                endpoint: "192.0.2.2:51820".into(),
                allowed: "10.64.16.0/20".into()
            }]
        );
        // An agent that runs no tunnel routes nothing of the pool.
        let none = plan(&encrypted(true), None, &[]);
        assert_eq!(none.device, None);
        assert_eq!(none.routes.len(), 1);
    }

    #[tokio::test]
    async fn encrypted_the_tunnel_is_made_then_routed_through_and_follows_peers_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut keys = Keys::load_or_create(dir.path()).unwrap();
        let host = Fake::default();
        let mut c = Converger::default();
        let t0 = Instant::now();
        let s = setup();
        let out = c
            .step(&host, &encrypted(true), &[], Some((&s, &keys)), t0)
            .await
            .unwrap();
        assert!(out.problems.is_empty(), "{out:?}");
        assert_eq!(out.tunnel.as_deref(), Some("wireguard-go"));
        assert_eq!(
            host.take(),
            [
                "read wharf0",
                "create wharf0",
                "read wharf0",
                "set up wharf0 port 51820 at 10.64.0.0/32",
                "wharf0 peer K2 at 192.0.2.2:51820 for 10.64.16.0/20",
                "read routes",
                "add unreachable 10.64.0.0/10",
                "add 10.64.16.0/20 dev wharf0 src 10.64.0.0",
                "read firewall",
                "restore filter+nat (2 forward, 1 nat rules)",
            ]
        );
        let out = c
            .step(&host, &encrypted(true), &[], Some((&s, &keys)), t0 + PERIOD)
            .await
            .unwrap();
        assert!(out.changes.is_empty(), "{out:?}");
        assert_eq!(host.take(), ["read wharf0", "read routes", "read firewall"]);

        // The peer is removed (`wharf node rm`): its key goes from the interface at once.
        let t1 = t0 + PERIOD + Duration::from_millis(1);
        c.step(&host, &encrypted(false), &[], Some((&s, &keys)), t1)
            .await
            .unwrap();
        assert_eq!(
            host.take(),
            [
                "read wharf0",
                "wharf0 remove peer K2",
                "read routes",
                "del 10.64.16.0/20 dev wharf0 src 10.64.0.0",
                "read firewall",
                "restore filter+nat (1 forward, 0 nat rules)",
            ]
        );
        // A rotated key is set at once, not at the next period.
        keys.rotate(1).unwrap();
        let t2 = t1 + Duration::from_millis(1);
        c.step(&host, &encrypted(false), &[], Some((&s, &keys)), t2)
            .await
            .unwrap();
        assert_eq!(
            host.take()[..2],
            ["read wharf0", "set up wharf0 port 51820 at 10.64.0.0/32"]
        );
        assert_eq!(
            host.device.lock().as_ref().unwrap().public_key,
            keys.public()
        );
    }

    #[tokio::test]
    async fn a_node_without_peers_never_touches_the_host() {
        let host = Fake::default();
        let mut c = Converger::default();
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(
                c.step(&host, &NodeNetwork::default(), &[], None, t0 + PERIOD * i)
                    .await
                    .is_none()
            );
        }
        assert!(host.take().is_empty());
    }
}
