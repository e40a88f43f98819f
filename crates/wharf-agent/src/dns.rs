//! The node's service-discovery DNS server: answers the names of the services in the discovery
//! table of the node's desired state (`NodeDesired::discovery`) and forwards every other name to
//! the host's resolvers.
//!
//! Names served (case-insensitive; `<domain>` is `Discovery::domain`, default `wharf.internal`):
//!
//! | name | A / AAAA | SRV |
//! | --- | --- | --- |
//! | `<service>.<stack>.`, `<service>.<stack>.<domain>.` | one record per healthy instance | one per instance × port |
//! | `<slot>.<service>.<stack>.`, `….<domain>.` | that instance, if healthy | none |
//! | `<service>.` (bare) | the service of the listener's own stack | as above |
//!
//! SRV records have priority 0, weight 1 and target `<slot>.<service>.<stack>.<domain>.`, whose
//! addresses are in the additional section. Every TTL is 2 s: the table changes with every
//! rollout and health change, and is replaced wholesale on each `Dns::update`.
//!
//! Which names are ours (`answer`, pure, data-driven tests below):
//! - under `<domain>.`: all of them, authoritatively; a name that matches nothing is NXDOMAIN,
//!   and none is ever forwarded. The domain and `<stack>.<domain>.` of a known stack exist
//!   (NOERROR, no records), as does a known service without healthy instances: NODATA, not
//!   NXDOMAIN, because the name is there and answers again once an instance is healthy.
//! - outside it: only names that match a service or a healthy instance. `<x>.<stack>.` that
//!   matches nothing is forwarded rather than NXDOMAIN: stack names such as `app`, `dev` or
//!   `shop` are real top-level domains, and claiming everything under them would break
//!   `*.web.app` for every container of the node. The upstream says NXDOMAIN for the others.
//! - negative answers carry no SOA, so resolvers do not cache them (RFC 2308 §5).
//!
//! A listener (`Dns::listen`) binds UDP and TCP port 53 on the gateway address of a stack
//! network; it knows every query it receives comes from a container of that stack, which is how
//! a bare Compose service name resolves to the right stack. Containers get that address as
//! their name server and `<stack>.<domain>` as search domain, and Docker's embedded resolver
//! forwards unqualified names unchanged, so both forms are answered.
//!
//! Forwarding (`forward`): UDP to each upstream in turn, TCP when the answer is truncated, 2 s
//! per upstream; SERVFAIL when none answers or there are none. The agent runs on the host, so
//! the host's loopback resolvers (systemd-resolved's 127.0.0.53) work as upstreams.

use parking_lot::{Mutex, MutexGuard};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, AAAA, SRV};
use hickory_server::proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, warn};
use wharf_types::Discovery;

/// The cluster domain when `Discovery::domain` is empty.
pub const DEFAULT_DOMAIN: &str = "wharf.internal";
/// The TTL of every record served: short, as endpoints change with rollouts and health.
pub const TTL: u32 = 2;
/// The port containers send their queries to.
pub const PORT: u16 = 53;

/// How long one upstream has to answer a forwarded query (UDP, then TCP if truncated).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// The UDP payload size advertised to upstreams (the DNS flag day 2020 value, fits any MTU).
const UPSTREAM_PAYLOAD: u16 = 1232;
/// The largest UDP answer sent to a client, whatever it advertises.
const MAX_CLIENT_PAYLOAD: u16 = 4096;
/// A TCP connection of a client that sends nothing for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// Responses queued per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 16;
/// A listen address just given up (`unlisten`, or replaced) is closed by its task a moment
/// later: binding it again is retried this often, this many times.
const BIND_RETRY: Duration = Duration::from_millis(50);
const BIND_ATTEMPTS: u32 = 20;

/// The node's DNS server: one table, one listener per stack network. Cheap to clone; the
/// listeners close when the last clone is dropped.
#[derive(Clone)]
pub struct Dns {
    state: Arc<State>,
    listeners: Arc<Mutex<HashMap<String, Listener>>>,
}

/// What the listeners' handlers share (not the listeners themselves, which own the handlers).
struct State {
    table: ArcSwap<Table>,
    upstreams: Vec<SocketAddr>,
    /// The name servers of containers whose service names its own (`dns:`), by the
    /// container's address: their questions for other names go there instead of `upstreams`.
    by_asker: ArcSwap<HashMap<IpAddr, Vec<SocketAddr>>>,
}

struct Listener {
    /// The address asked for (port 0 in tests), to tell a repeated `listen` from a move.
    requested: SocketAddr,
    bound: SocketAddr,
    /// Dropping it aborts its tasks, which closes the sockets.
    server: Server<Handler>,
}

impl Dns {
    /// A server with an empty table, forwarding other names to `upstreams` in order.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self {
            state: Arc::new(State {
                table: ArcSwap::from_pointee(Table::default()),
                upstreams,
                by_asker: ArcSwap::default(),
            }),
            listeners: Arc::default(),
        }
    }

    /// Replace the whole table; the next query sees the new one.
    pub fn update(&self, discovery: &Discovery) {
        self.state.table.store(Arc::new(Table::new(discovery)));
    }

    /// Replace the name servers containers asked for (`dns:` of their service), by address.
    pub fn set_asker_upstreams(&self, by_asker: HashMap<IpAddr, Vec<SocketAddr>>) {
        if **self.state.by_asker.load() != by_asker {
            self.state.by_asker.store(Arc::new(by_asker));
        }
    }

    /// The search domain of the containers of `stack`: `<stack>.<domain>`.
    pub fn search_domain(&self, stack: &str) -> String {
        format!("{stack}.{}", self.state.table.load().domain_text)
    }

    /// Serve the containers of `stack` on `ip`, port 53 (UDP and TCP). Listening again on the
    /// same address is a no-op; on a new one it replaces the old listener once the new one is
    /// bound.
    pub async fn listen(&self, stack: &str, ip: IpAddr) -> io::Result<()> {
        self.listen_on(stack, SocketAddr::new(ip, PORT))
            .await
            .map(drop)
    }

    /// `listen` on any address; port 0 binds a free port, the same for UDP and TCP. Returns
    /// the address bound.
    pub async fn listen_on(&self, stack: &str, addr: SocketAddr) -> io::Result<SocketAddr> {
        if let Some(listener) = self.lock().get(stack)
            && listener.requested == addr
        {
            return Ok(listener.bound);
        }
        let (udp, tcp) = bind(addr).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("dns server of stack {stack}: cannot listen on {addr}: {e}"),
            )
        })?;
        let bound = udp.local_addr()?;
        let mut server = Server::new(Handler {
            stack: stack.to_ascii_lowercase(),
            state: self.state.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE, TCP_RESPONSE_BUFFER);
        let listener = Listener {
            requested: addr,
            bound,
            server,
        };
        let old = self.lock().insert(stack.to_string(), listener);
        if let Some(old) = old {
            old.close();
        }
        Ok(bound)
    }

    /// Stop serving the containers of `stack` (nothing if not listening).
    pub fn unlisten(&self, stack: &str) {
        let old = self.lock().remove(stack);
        if let Some(old) = old {
            old.close();
        }
    }

    /// The stacks listened for, with the address each is bound to, sorted by stack.
    pub fn listening(&self) -> Vec<(String, SocketAddr)> {
        let mut all: Vec<_> = self
            .lock()
            .iter()
            .map(|(stack, l)| (stack.clone(), l.bound))
            .collect();
        all.sort();
        all
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Listener>> {
        self.listeners.lock()
    }
}

impl Listener {
    fn close(self) {
        self.server.shutdown_token().cancel();
        // Dropping the server aborts its tasks.
    }
}

/// Bind UDP on `addr` and TCP on the same address and port.
async fn bind(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut attempt = 1;
    loop {
        match bind_once(addr).await {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempt < BIND_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(BIND_RETRY).await;
            }
            result => return result,
        }
    }
}

async fn bind_once(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let udp = UdpSocket::bind(addr).await?;
    // With port 0, the port UDP got; if TCP has it taken, the retry picks another.
    let tcp = TcpListener::bind(udp.local_addr()?).await?;
    Ok((udp, tcp))
}

/// The upstream resolvers named in a resolv.conf (`nameserver` lines, port 53), in order,
/// without duplicates. Link-local IPv6 addresses with an interface name as zone
/// (`fe80::1%eth0`) are left out; a numeric zone is kept.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut upstreams = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(value) = words.next() else { continue };
        let addr = match value.split_once('%') {
            None => value
                .parse::<IpAddr>()
                .ok()
                .map(|ip| SocketAddr::new(ip, PORT)),
            Some((ip, zone)) => match (ip.parse::<Ipv6Addr>(), zone.parse::<u32>()) {
                (Ok(ip), Ok(zone)) => Some(SocketAddr::V6(SocketAddrV6::new(ip, PORT, 0, zone))),
                _ => None,
            },
        };
        match addr {
            Some(addr) if !upstreams.contains(&addr) => upstreams.push(addr),
            Some(_) => {}
            None => debug!(line, "resolv.conf: name server not usable, skipped"),
        }
    }
    upstreams
}

/// The host's upstream resolvers, from /etc/resolv.conf (none if it cannot be read).
pub fn host_upstreams() -> Vec<SocketAddr> {
    match std::fs::read_to_string("/etc/resolv.conf") {
        Ok(text) => upstreams_from_resolv_conf(&text),
        Err(e) => {
            warn!(error = %e, "cannot read /etc/resolv.conf: names outside the cluster will not resolve");
            Vec::new()
        }
    }
}

/// The records, as the master sent them, indexed for lookups. Built once per update.
#[derive(Debug)]
pub struct Table {
    /// The domain's labels, lower-case (`["wharf", "internal"]`).
    domain: Vec<String>,
    /// The domain as written in names (`wharf.internal`).
    domain_text: String,
    /// Stack names, lower-case.
    stacks: HashSet<String>,
    /// By lower-case (stack, service).
    services: HashMap<(String, String), Service>,
    /// Who asks: every running instance's address, to its (stack, service).
    askers: HashMap<IpAddr, (String, String)>,
    /// Network aliases: lower-case (stack, alias) -> (service, segment).
    aliases: HashMap<(String, String), Vec<(String, String)>>,
    /// Stacks that use segments: their names are answered only to askers that may reach them.
    segmented: HashSet<String>,
}

#[derive(Debug)]
struct Service {
    ports: Vec<u16>,
    endpoints: Vec<Endpoint>,
    /// The records as the master sent them (segments, `allow_from`).
    record: std::sync::Arc<wharf_types::DiscoveryService>,
}

#[derive(Debug)]
struct Endpoint {
    slot: u32,
    address: IpAddr,
    /// `<slot>.<service>.<stack>.<domain>.`, the target of SRV records; none if it makes no
    /// valid name (too long).
    name: Option<Name>,
}

impl Default for Table {
    fn default() -> Self {
        Self::new(&Discovery::default())
    }
}

impl Table {
    /// Index a discovery table. Endpoints whose address is not an IP address are left out.
    pub fn new(discovery: &Discovery) -> Self {
        let (domain, domain_text) = parse_domain(&discovery.domain);
        let mut table = Self {
            domain,
            domain_text,
            stacks: HashSet::new(),
            services: HashMap::new(),
            askers: HashMap::new(),
            aliases: HashMap::new(),
            segmented: HashSet::new(),
        };
        for s in &discovery.services {
            let stack = s.stack.to_ascii_lowercase();
            let service = s.service.to_ascii_lowercase();
            if s.segmented() {
                table.segmented.insert(stack.clone());
            }
            for m in s.members.iter().filter_map(|m| m.parse::<IpAddr>().ok()) {
                table.askers.insert(m, (stack.clone(), service.clone()));
            }
            for (segment, names) in &s.aliases {
                for alias in names {
                    table
                        .aliases
                        .entry((stack.clone(), alias.to_ascii_lowercase()))
                        .or_default()
                        .push((service.clone(), segment.clone()));
                }
            }
            let mut endpoints = Vec::with_capacity(s.endpoints.len());
            for e in &s.endpoints {
                let Ok(address) = e.address.parse::<IpAddr>() else {
                    warn!(
                        stack,
                        service,
                        slot = e.slot,
                        address = e.address,
                        "discovery: endpoint address is not an IP address, skipped"
                    );
                    continue;
                };
                let name = format!("{}.{service}.{stack}.{}.", e.slot, table.domain_text);
                endpoints.push(Endpoint {
                    slot: e.slot,
                    address,
                    name: Name::from_ascii(name).ok(),
                });
            }
            table.stacks.insert(stack.clone());
            table.services.insert(
                (stack, service),
                Service {
                    ports: s.ports.clone(),
                    endpoints,
                    record: s.clone(),
                },
            );
        }
        table
    }

    /// Whether the asker at `from`, on the network of `stack`, may reach `target`: a name of
    /// another stack only when `allow_from` lets the asker in; of its own stack, when the stack
    /// uses no segments or they share one.
    fn may_reach(&self, stack: &str, from: Option<IpAddr>, target: &Service) -> bool {
        let asker = from
            .and_then(|a| self.askers.get(&a))
            .and_then(|k| self.services.get(k));
        let target_stack = target.record.stack.to_ascii_lowercase();
        if target_stack == stack && !self.segmented.contains(stack) {
            return true;
        }
        asker.is_some_and(|a| target.record.reachable_from(&a.record))
    }

    /// A network alias of the asker's segments, in `stack`.
    fn alias(&self, stack: &str, name: &str, from: Option<IpAddr>) -> Option<&Service> {
        let asker = from
            .and_then(|a| self.askers.get(&a))
            .and_then(|k| self.services.get(k))?;
        let on = asker.record.on();
        let (service, _) = self
            .aliases
            .get(&(stack.to_string(), name.to_string()))?
            .iter()
            .find(|(_, segment)| on.contains(&segment.as_str()))?;
        self.service(stack, service)
    }

    /// What `rel` (a name without the domain, lower-case labels) designates.
    fn find(&self, stack: &str, rel: &[String], under_domain: bool) -> Option<Found<'_>> {
        let Some((last, rest)) = rel.split_last() else {
            // The domain's apex; outside the domain, the root.
            return under_domain.then_some(Found::Node);
        };
        if self.stacks.contains(last) {
            if rest.is_empty() {
                return under_domain.then_some(Found::Node);
            }
            if let Some(service) = self.service(last, &rest.join(".")) {
                return Some(Found::Service(service));
            }
            if let [slot, service @ ..] = rest
                && let Some(service) = self.service(last, &service.join("."))
                && let Some(endpoint) = service
                    .endpoints
                    .iter()
                    .find(|e| e.slot.to_string() == *slot)
            {
                return Some(Found::Instance(endpoint));
            }
        }
        if !under_domain {
            return self.service(stack, &rel.join(".")).map(Found::Service);
        }
        None
    }

    fn service(&self, stack: &str, service: &str) -> Option<&Service> {
        self.services.get(&(stack.to_string(), service.to_string()))
    }
}

/// `(labels, text)` of a cluster domain, the default if empty or invalid.
fn parse_domain(domain: &str) -> (Vec<String>, String) {
    let text = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let text = if text.is_empty() {
        DEFAULT_DOMAIN.to_string()
    } else if Name::from_ascii(format!("{text}.")).is_err() || text.contains("..") {
        warn!(
            domain,
            "discovery: invalid cluster domain, using {DEFAULT_DOMAIN}"
        );
        DEFAULT_DOMAIN.to_string()
    } else {
        text
    };
    let labels = text.split('.').map(str::to_string).collect();
    (labels, text)
}

enum Found<'a> {
    /// A name that exists but has no records (the domain, a stack under it).
    Node,
    Service(&'a Service),
    Instance(&'a Endpoint),
}

/// What to do with one query.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// The name is ours: this is the whole answer, authoritative.
    Answer(Answer),
    /// Not ours: ask the upstreams.
    Forward,
}

/// An authoritative answer.
#[derive(Debug, PartialEq)]
pub struct Answer {
    /// NOERROR (with or without records) or NXDOMAIN.
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    /// The addresses of SRV targets.
    pub additionals: Vec<Record>,
}

impl Answer {
    fn empty(code: ResponseCode) -> Self {
        Self {
            code,
            answers: Vec::new(),
            additionals: Vec::new(),
        }
    }
}

/// The answer to a query for `name`/`qtype` arriving at the listener of `stack` from `from`:
/// only names the asker may reach (`Table::may_reach`); others do not exist for it.
pub fn answer(
    table: &Table,
    stack: &str,
    from: Option<IpAddr>,
    name: &Name,
    qtype: RecordType,
) -> Outcome {
    let labels: Vec<String> = name
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    let under_domain = labels.ends_with(&table.domain);
    let rel = match under_domain {
        true => &labels[..labels.len() - table.domain.len()],
        false => &labels[..],
    };
    let stack = stack.to_ascii_lowercase();
    let found = table.find(&stack, rel, under_domain).or_else(|| match rel {
        [one] if !under_domain => table.alias(&stack, one, from).map(Found::Service),
        _ => None,
    });
    let Some(found) = found else {
        return match under_domain {
            true => Outcome::Answer(Answer::empty(ResponseCode::NXDomain)),
            false => Outcome::Forward,
        };
    };
    let target = match &found {
        Found::Service(s) => Some(*s),
        Found::Instance(e) => table
            .services
            .values()
            .find(|s| s.endpoints.iter().any(|x| std::ptr::eq(x, *e))),
        Found::Node => None,
    };
    if target.is_some_and(|t| !table.may_reach(&stack, from, t)) {
        return Outcome::Answer(Answer::empty(ResponseCode::NXDomain));
    }
    let mut answer = Answer::empty(ResponseCode::NoError);
    match (found, qtype) {
        (Found::Node, _) => {}
        (Found::Service(service), RecordType::SRV) => {
            for endpoint in &service.endpoints {
                let Some(target) = &endpoint.name else {
                    continue;
                };
                for &port in &service.ports {
                    let srv = SRV::new(0, 1, port, target.clone());
                    answer
                        .answers
                        .push(Record::from_rdata(name.clone(), TTL, RData::SRV(srv)));
                }
                if !service.ports.is_empty() {
                    answer.additionals.push(address(target, endpoint.address));
                }
            }
        }
        (Found::Service(service), _) => {
            let addresses = service.endpoints.iter().map(|e| e.address);
            answer.answers = addresses_of_type(name, addresses, qtype);
        }
        (Found::Instance(endpoint), _) => {
            answer.answers = addresses_of_type(name, [endpoint.address], qtype);
        }
    }
    Outcome::Answer(answer)
}

/// The A (A, ANY) or AAAA (AAAA, ANY) records among `addresses`; none for other types.
fn addresses_of_type(
    name: &Name,
    addresses: impl IntoIterator<Item = IpAddr>,
    qtype: RecordType,
) -> Vec<Record> {
    let wanted = |ip: &IpAddr| match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    };
    addresses
        .into_iter()
        .filter(wanted)
        .map(|ip| address(name, ip))
        .collect()
}

fn address(name: &Name, ip: IpAddr) -> Record {
    let data = match ip {
        IpAddr::V4(ip) => RData::A(A(ip)),
        IpAddr::V6(ip) => RData::AAAA(AAAA(ip)),
    };
    Record::from_rdata(name.clone(), TTL, data)
}

/// Serves the queries arriving at one stack's listener.
struct Handler {
    /// Lower-case.
    stack: String,
    state: Arc<State>,
}

/// What the client gets.
enum Reply {
    Code(ResponseCode),
    Local(Answer),
    Upstream(Box<Message>),
}

impl Handler {
    async fn reply(&self, request: &Request) -> Reply {
        if request.metadata.op_code != OpCode::Query {
            return Reply::Code(ResponseCode::NotImp);
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return Reply::Code(ResponseCode::BADVERS);
        }
        let Ok(info) = request.request_info() else {
            // Not exactly one question.
            return Reply::Code(ResponseCode::FormErr);
        };
        let query = info.query.original();
        let outcome = answer(
            &self.state.table.load(),
            &self.stack,
            Some(request.src().ip()),
            query.name(),
            query.query_type(),
        );
        match outcome {
            Outcome::Answer(mut answer) => {
                crate::metrics::dns_query("local");
                if query.query_class() != DNSClass::IN {
                    answer.answers.clear();
                    answer.additionals.clear();
                }
                Reply::Local(answer)
            }
            Outcome::Forward => {
                let own = self.state.by_asker.load_full();
                let upstreams = own
                    .get(&request.src().ip())
                    .map_or(&self.state.upstreams[..], Vec::as_slice);
                match forward(upstreams, request, query).await {
                    Some(message) => {
                        crate::metrics::dns_query("forwarded");
                        Reply::Upstream(Box::new(message))
                    }
                    None => {
                        crate::metrics::dns_query("error");
                        Reply::Code(ResponseCode::ServFail)
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let reply = self.reply(request).await;

        let response_edns = request.edns.as_ref().map(|requested| {
            let mut edns = Edns::new();
            edns.set_max_payload(requested.max_payload().min(MAX_CLIENT_PAYLOAD));
            edns.flags_mut().dnssec_ok = requested.flags().dnssec_ok;
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &response_edns {
            builder.edns(edns);
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = !self.state.upstreams.is_empty();
        let none = || std::iter::empty::<&Record>();
        let sent = match &reply {
            Reply::Code(code) => {
                metadata.response_code = *code;
                let response = builder.build_no_records(metadata);
                response_handle.send_response(response).await
            }
            Reply::Local(answer) => {
                metadata.authoritative = true;
                metadata.response_code = answer.code;
                let response = builder.build(
                    metadata,
                    &answer.answers,
                    none(),
                    none(),
                    &answer.additionals,
                );
                response_handle.send_response(response).await
            }
            Reply::Upstream(message) => {
                metadata.response_code = message.metadata.response_code;
                metadata.authentic_data = message.metadata.authentic_data;
                let response = builder.build(
                    metadata,
                    &message.answers,
                    &message.authorities,
                    none(),
                    &message.additionals,
                );
                response_handle.send_response(response).await
            }
        };
        sent.unwrap_or_else(|error| {
            debug!(%error, src = %request.src(), "dns: cannot send the response");
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        })
    }
}

/// Ask the upstreams in turn; the first real answer wins. SERVFAIL, REFUSED or NOTIMP from one
/// moves on to the next, and is the answer if no other does better.
async fn forward(upstreams: &[SocketAddr], request: &Request, query: &Query) -> Option<Message> {
    let mut fallback = None;
    for &upstream in upstreams {
        let mut message = Message::query();
        message.metadata.recursion_desired = request.metadata.recursion_desired;
        message.metadata.checking_disabled = request.metadata.checking_disabled;
        message.add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(UPSTREAM_PAYLOAD);
        edns.flags_mut().dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        message.set_edns(edns);
        match tokio::time::timeout(FORWARD_TIMEOUT, exchange(upstream, &message)).await {
            Ok(Ok(response)) => match response.metadata.response_code {
                ResponseCode::ServFail | ResponseCode::Refused | ResponseCode::NotImp => {
                    fallback = Some(response)
                }
                _ => return Some(response),
            },
            Ok(Err(error)) => {
                debug!(%upstream, %error, name = %query.name(), "dns: upstream failed")
            }
            Err(_) => debug!(%upstream, name = %query.name(), "dns: upstream timed out"),
        }
    }
    fallback
}

/// One query to one upstream: UDP, then TCP if the answer is truncated.
async fn exchange(upstream: SocketAddr, message: &Message) -> io::Result<Message> {
    let bytes = message.to_vec().map_err(io::Error::other)?;
    let response = exchange_udp(upstream, &bytes, message).await?;
    if response.metadata.truncation {
        return exchange_tcp(upstream, &bytes, message).await;
    }
    Ok(response)
}

async fn exchange_udp(upstream: SocketAddr, bytes: &[u8], query: &Message) -> io::Result<Message> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(bytes).await?;
    let mut buf = vec![0; 4096];
    loop {
        let n = socket.recv(&mut buf).await?;
        // Anything else is stale or forged: keep waiting for the answer (or the timeout).
        if let Ok(response) = Message::from_vec(&buf[..n])
            && answers(&response, query)
        {
            return Ok(response);
        }
    }
}

async fn exchange_tcp(upstream: SocketAddr, bytes: &[u8], query: &Message) -> io::Result<Message> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(bytes.len()).map_err(io::Error::other)?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut buf = vec![0; usize::from(len)];
    stream.read_exact(&mut buf).await?;
    let response = Message::from_vec(&buf).map_err(io::Error::other)?;
    if !answers(&response, query) {
        return Err(io::Error::other("the answer does not match the query"));
    }
    Ok(response)
}

/// Whether `response` answers `query` (id, and question when the upstream echoes it).
fn answers(response: &Message, query: &Message) -> bool {
    response.metadata.id == query.metadata.id
        && response.metadata.message_type == MessageType::Response
        && (response.queries.is_empty() || response.queries == query.queries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RecordType::{A as QA, AAAA as QAAAA, ANY, SRV as QSRV, TXT};
    use wharf_types::{DiscoveryEndpoint, DiscoveryService};

    fn service(
        stack: &str,
        name: &str,
        ports: &[u16],
        endpoints: &[(u32, &str)],
    ) -> std::sync::Arc<DiscoveryService> {
        std::sync::Arc::new(DiscoveryService {
            stack: stack.into(),
            service: name.into(),
            ports: ports.to_vec(),
            endpoints: endpoints
                .iter()
                .map(|&(slot, address)| DiscoveryEndpoint {
                    slot,
                    address: address.into(),
                })
                .collect(),
            ..Default::default()
        })
    }

    /// Two stacks: `shop` with a healthy `web` (slots 1 and 3, two ports), a `db` with no
    /// healthy instance, a dotted, upper-case `Api.V2`; `blog` with its own `web` and an
    /// IPv6-only `v6`.
    fn discovery(domain: &str) -> Discovery {
        Discovery {
            domain: domain.into(),
            services: vec![
                service(
                    "shop",
                    "web",
                    &[80, 8080],
                    &[(1, "10.0.1.2"), (3, "10.0.1.4")],
                ),
                service("shop", "db", &[5432], &[]),
                service("shop", "Api.V2", &[], &[(1, "10.0.1.9")]),
                service("blog", "web", &[], &[(1, "10.0.2.2"), (2, "not-an-ip")]),
                service("blog", "v6", &[443], &[(1, "fd00::2")]),
            ],
        }
    }

    /// The outcome as text: `forward`, or the code then one line per record (`+` marks the
    /// additional section).
    fn render(outcome: &Outcome) -> String {
        let Outcome::Answer(a) = outcome else {
            return "forward".into();
        };
        let mut lines = vec![format!("{:?}", a.code)];
        let line = |r: &Record| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data);
        lines.extend(a.answers.iter().map(line));
        lines.extend(a.additionals.iter().map(|r| format!("+ {}", line(r))));
        lines.join("\n")
    }

    fn check_in(domain: &str, stack: &str, query: &str, qtype: RecordType, expect: &str) {
        let table = Table::new(&discovery(domain));
        let name = Name::from_ascii(query).unwrap();
        let got = render(&answer(&table, stack, None, &name, qtype));
        let expect = expect.trim();
        assert_eq!(
            got, expect,
            "\nquery {query} {qtype} at the listener of {stack}\n got:\n{got}\nexpected:\n{expect}"
        );
    }

    fn check(stack: &str, query: &str, qtype: RecordType, expect: &str) {
        check_in("", stack, query, qtype, expect)
    }

    /// The A answer of shop/web's two healthy instances, under the owner name `owner`.
    fn web_a(owner: &str) -> String {
        format!("NoError\n{owner} 2 A 10.0.1.2\n{owner} 2 A 10.0.1.4")
    }

    /// The SRV answer of shop/web (ports 80 and 8080 of its two healthy instances), under the
    /// owner name `owner`, with targets under `domain`.
    fn web_srv(owner: &str, domain: &str) -> String {
        format!(
            "
NoError
{owner} 2 SRV 0 1 80 1.web.shop.{domain}.
{owner} 2 SRV 0 1 8080 1.web.shop.{domain}.
{owner} 2 SRV 0 1 80 3.web.shop.{domain}.
{owner} 2 SRV 0 1 8080 3.web.shop.{domain}.
+ 1.web.shop.{domain}. 2 A 10.0.1.2
+ 3.web.shop.{domain}. 2 A 10.0.1.4"
        )
    }

    #[test]
    fn service_names_answer_every_healthy_instance() {
        check("shop", "web.shop.", QA, &web_a("web.shop."));
        // Another stack's names do not exist for this one's containers (no `allow_from`).
        check("blog", "web.shop.", QA, "NXDomain");
        let q = "web.shop.wharf.internal.";
        check("shop", q, QA, &web_a(q));
        // The owner name echoes the question's case.
        let q = "WEB.Shop.Wharf.INTERNAL.";
        check("shop", q, QA, &web_a(q));
        check(
            "shop",
            "api.v2.shop.",
            QA,
            "NoError\napi.v2.shop. 2 A 10.0.1.9",
        );
    }

    #[test]
    fn address_types_follow_the_endpoints_family() {
        check("shop", "web.shop.", QAAAA, "NoError");
        check("shop", "web.shop.", TXT, "NoError");
        check("blog", "v6.blog.", QA, "NoError");
        check(
            "blog",
            "v6.blog.",
            QAAAA,
            "NoError\nv6.blog. 2 AAAA fd00::2",
        );
        check("blog", "v6.blog.", ANY, "NoError\nv6.blog. 2 AAAA fd00::2");
    }

    #[test]
    fn srv_has_one_record_per_instance_and_port_with_the_targets_addresses() {
        let q = "web.shop.wharf.internal.";
        check("shop", q, QSRV, &web_srv(q, "wharf.internal"));
        check(
            "blog",
            "v6.",
            QSRV,
            "
NoError
v6. 2 SRV 0 1 443 1.v6.blog.wharf.internal.
+ 1.v6.blog.wharf.internal. 2 AAAA fd00::2",
        );
        // No ports, no SRV records.
        check("blog", "web.blog.", QSRV, "NoError");
        // An instance name has addresses only.
        check("shop", "1.web.shop.", QSRV, "NoError");
    }

    #[test]
    fn slot_names_answer_that_instance_while_it_is_healthy() {
        check(
            "shop",
            "3.web.shop.",
            QA,
            "NoError\n3.web.shop. 2 A 10.0.1.4",
        );
        check("blog", "1.web.shop.wharf.internal.", QA, "NXDomain");
        check("shop", "2.web.shop.wharf.internal.", QA, "NXDomain");
        check("shop", "01.web.shop.wharf.internal.", QA, "NXDomain");
        check(
            "shop",
            "1.api.v2.shop.",
            QA,
            "NoError\n1.api.v2.shop. 2 A 10.0.1.9",
        );
        // Slot 2 of blog/web has an address that is not an IP: left out.
        check("blog", "2.web.blog.wharf.internal.", QA, "NXDomain");
        // Outside the domain, a name matching nothing is not ours.
        check("shop", "2.web.shop.", QA, "forward");
    }

    #[test]
    fn bare_names_are_the_services_of_the_listeners_stack() {
        check("shop", "web.", QA, &web_a("web."));
        check("blog", "WEB.", QA, "NoError\nWEB. 2 A 10.0.2.2");
        check("SHOP", "web.", QA, &web_a("web."));
        check("shop", "api.v2.", QA, "NoError\napi.v2. 2 A 10.0.1.9");
        check("shop", "web.", QSRV, &web_srv("web.", "wharf.internal"));
        // Not a service of this stack: somebody else's name.
        check("blog", "db.", QA, "forward");
        check("nostack", "web.", QA, "forward");
        // The bare form is for names outside the domain only.
        check("shop", "web.wharf.internal.", QA, "NXDomain");
    }

    #[test]
    fn a_service_without_healthy_instances_is_nodata_not_nxdomain() {
        check("shop", "db.shop.", QA, "NoError");
        check("shop", "db.shop.wharf.internal.", QSRV, "NoError");
        check("shop", "db.", QA, "NoError");
    }

    #[test]
    fn names_under_the_domain_are_ours_whatever_they_are() {
        check("shop", "wharf.internal.", QA, "NoError");
        check("shop", "shop.wharf.internal.", QA, "NoError");
        check("shop", "nope.shop.wharf.internal.", QA, "NXDomain");
        check("shop", "web.nostack.wharf.internal.", QA, "NXDomain");
        check("shop", "nostack.wharf.internal.", QA, "NXDomain");
        check("shop", "a.b.c.web.shop.wharf.internal.", QA, "NXDomain");
        // What a search domain makes of an outside name.
        check(
            "shop",
            "example.com.shop.wharf.internal.",
            QAAAA,
            "NXDomain",
        );
    }

    #[test]
    fn other_names_are_forwarded() {
        check("shop", "example.com.", QA, "forward");
        check("shop", ".", QA, "forward");
        // A stack name can be a real top-level domain: `<x>.<stack>.` that matches nothing is
        // left to the upstreams.
        check("shop", "nope.shop.", QA, "forward");
        check("shop", "shop.", QA, "forward");
        check("shop", "internal.", QA, "forward");
        check("shop", "other.internal.", QA, "forward");
    }

    #[test]
    fn the_domain_is_configurable() {
        let q = "web.shop.corp.example.";
        check_in("Corp.Example.", "shop", q, QA, &web_a(q));
        check_in(
            "corp.example",
            "shop",
            "nope.shop.corp.example.",
            QA,
            "NXDomain",
        );
        check_in(
            "corp.example",
            "shop",
            "web.shop.wharf.internal.",
            QA,
            "forward",
        );
        let srv = web_srv("web.", "corp.example");
        check_in("corp.example", "shop", "web.", QSRV, &srv);
        // An invalid domain falls back to the default.
        check_in(
            "bad..domain",
            "shop",
            "nope.shop.wharf.internal.",
            QA,
            "NXDomain",
        );
    }

    #[test]
    fn search_domain_is_the_stack_under_the_domain() {
        let dns = Dns::new(Vec::new());
        assert_eq!(dns.search_domain("shop"), "shop.wharf.internal");
        dns.update(&discovery("corp.example."));
        assert_eq!(dns.search_domain("shop"), "shop.corp.example");
    }

    #[test]
    fn upstreams_are_the_name_servers_of_resolv_conf_deduplicated() {
        let text = "
# generated
search example.com
nameserver 127.0.0.53
nameserver 10.0.0.2 # office
options edns0 trust-ad
nameserver 127.0.0.53
nameserver   2001:db8::1
nameserver fe80::1%2
nameserver fe80::1%eth0
nameserver not-an-address
nameserver
;nameserver 10.9.9.9
";
        let got: Vec<String> = upstreams_from_resolv_conf(text)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            [
                "127.0.0.53:53",
                "10.0.0.2:53",
                "[2001:db8::1]:53",
                "[fe80::1%2]:53"
            ]
        );
    }
}
