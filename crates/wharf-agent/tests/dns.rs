//! The agent's DNS server over real sockets on 127.0.0.1: listeners, answers, table updates,
//! forwarding to a fake upstream, malformed packets.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_server::proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use wharf_agent::dns::Dns;
use wharf_types::{Discovery, DiscoveryEndpoint, DiscoveryService};

/// Long enough for a loaded CI machine; an answer normally takes a millisecond.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

fn any_port() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

fn discovery(web: &[(u32, &str)]) -> Discovery {
    Discovery {
        domain: String::new(),
        services: vec![std::sync::Arc::new(DiscoveryService {
            stack: "shop".into(),
            service: "web".into(),
            ports: vec![80],
            endpoints: web
                .iter()
                .map(|&(slot, address)| DiscoveryEndpoint {
                    slot,
                    address: address.into(),
                })
                .collect(),
            ..Default::default()
        })],
    }
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut message = Message::query();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message
}

/// Send raw bytes over UDP; the datagram that comes back, or why none did.
async fn exchange_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Result<Vec<u8>, String> {
    let socket = UdpSocket::bind(any_port()).await.unwrap();
    socket.connect(server).await.unwrap();
    socket.send(bytes).await.unwrap();
    let mut buf = vec![0; 4096];
    match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => Ok(buf[..n].to_vec()),
        Ok(Err(e)) => Err(format!("receive error: {e}")),
        Err(_) => Err(format!("no answer within {wait:?}")),
    }
}

async fn ask(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let q = query(name, qtype);
    let bytes = exchange_raw(server, &q.to_vec().unwrap(), ANSWER_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("query {name} {qtype} to {server}: {e}"));
    let response = Message::from_vec(&bytes).unwrap();
    assert_eq!(response.metadata.id, q.metadata.id, "response id");
    response
}

async fn ask_tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let bytes = query(name, qtype).to_vec().unwrap();
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream
        .write_all(&(bytes.len() as u16).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let read = async {
        let len = stream.read_u16().await?;
        let mut buf = vec![0; usize::from(len)];
        stream.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(ANSWER_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| panic!("no TCP answer for {name} from {server}"))
        .unwrap();
    Message::from_vec(&buf).unwrap()
}

/// The answer section as `name type data` lines.
fn answers(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect()
}

fn additionals(m: &Message) -> Vec<String> {
    m.additionals
        .iter()
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect()
}

async fn shop_server(upstreams: Vec<SocketAddr>) -> (Dns, SocketAddr) {
    let dns = Dns::new(upstreams);
    dns.update(&discovery(&[(1, "10.0.1.2"), (2, "10.0.1.3")]));
    let addr = dns.listen_on("shop", any_port()).await.unwrap();
    (dns, addr)
}

#[tokio::test]
async fn answers_service_slot_srv_and_bare_names() {
    let (_dns, addr) = shop_server(Vec::new()).await;

    let m = ask(addr, "web.shop.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(
        m.metadata.authoritative,
        "our names are answered authoritatively"
    );
    assert_eq!(
        answers(&m),
        ["web.shop. A 10.0.1.2", "web.shop. A 10.0.1.3"]
    );
    assert!(m.answers.iter().all(|r| r.ttl == 2), "TTL 2 s: {m:?}");

    let m = ask(addr, "Web.Shop.Wharf.Internal.", RecordType::SRV).await;
    assert_eq!(
        answers(&m),
        [
            "Web.Shop.Wharf.Internal. SRV 0 1 80 1.web.shop.wharf.internal.",
            "Web.Shop.Wharf.Internal. SRV 0 1 80 2.web.shop.wharf.internal.",
        ]
    );
    assert_eq!(
        additionals(&m),
        [
            "1.web.shop.wharf.internal. A 10.0.1.2",
            "2.web.shop.wharf.internal. A 10.0.1.3",
        ]
    );

    let m = ask(addr, "2.web.shop.wharf.internal.", RecordType::A).await;
    assert_eq!(answers(&m), ["2.web.shop.wharf.internal. A 10.0.1.3"]);

    // The listener is the shop's: a bare name is a shop service.
    let m = ask(addr, "web.", RecordType::A).await;
    assert_eq!(answers(&m), ["web. A 10.0.1.2", "web. A 10.0.1.3"]);

    let m = ask(addr, "web.shop.", RecordType::AAAA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answers(&m), Vec::<String>::new());

    let m = ask(addr, "nope.shop.wharf.internal.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);

    let m = ask_tcp(addr, "web.shop.wharf.internal.", RecordType::A).await;
    assert_eq!(
        answers(&m),
        [
            "web.shop.wharf.internal. A 10.0.1.2",
            "web.shop.wharf.internal. A 10.0.1.3"
        ],
        "the same answers over TCP"
    );
}

#[tokio::test]
async fn update_replaces_the_table_at_once() {
    let (dns, addr) = shop_server(Vec::new()).await;
    assert_eq!(
        answers(&ask(addr, "web.shop.", RecordType::A).await).len(),
        2
    );

    // Slot 1 turned unhealthy: the master sends the table without it.
    dns.update(&discovery(&[(2, "10.0.1.3")]));
    let m = ask(addr, "web.shop.", RecordType::A).await;
    assert_eq!(answers(&m), ["web.shop. A 10.0.1.3"]);
    let m = ask(addr, "1.web.shop.wharf.internal.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    // No healthy instance left: the name still exists, with nothing in it.
    dns.update(&discovery(&[]));
    let m = ask(addr, "web.shop.wharf.internal.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answers(&m), Vec::<String>::new());
}

/// A fake upstream: answers every A query over UDP with 192.0.2.1 (truncated, without
/// records, when `truncate`) and over TCP on the same port with 192.0.2.2, counting queries.
struct Upstream {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start(truncate: bool) -> Self {
        // The port UDP got may be taken for TCP (by another test's connection): try another.
        let (udp, tcp, addr) = 'bind: {
            for _ in 0..50 {
                let udp = UdpSocket::bind(any_port()).await.unwrap();
                let addr = udp.local_addr().unwrap();
                if let Ok(tcp) = TcpListener::bind(addr).await {
                    break 'bind (udp, tcp, addr);
                }
            }
            panic!("no port free for both UDP and TCP on 127.0.0.1 after 50 tries");
        };
        let queries = Arc::new(AtomicUsize::new(0));
        let count = queries.clone();
        tokio::spawn(async move {
            let mut buf = vec![0; 4096];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut r = reply(&q, Ipv4Addr::new(192, 0, 2, 1));
                if truncate {
                    r.answers.clear();
                    r.metadata.truncation = true;
                }
                udp.send_to(&r.to_vec().unwrap(), from).await.unwrap();
            }
        });
        let count = queries.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let Ok(len) = stream.read_u16().await else {
                    continue;
                };
                let mut buf = vec![0; usize::from(len)];
                if stream.read_exact(&mut buf).await.is_err() {
                    continue;
                }
                let Ok(q) = Message::from_vec(&buf) else {
                    continue;
                };
                let bytes = reply(&q, Ipv4Addr::new(192, 0, 2, 2)).to_vec().unwrap();
                let _ = stream.write_all(&(bytes.len() as u16).to_be_bytes()).await;
                let _ = stream.write_all(&bytes).await;
            }
        });
        Self { addr, queries }
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

fn reply(q: &Message, ip: Ipv4Addr) -> Message {
    let mut r = Message::response(q.metadata.id, q.metadata.op_code);
    r.metadata.recursion_available = true;
    r.add_queries(q.queries.clone());
    for query in &q.queries {
        r.add_answer(Record::from_rdata(
            query.name().clone(),
            300,
            RData::A(A(ip)),
        ));
    }
    r
}

#[tokio::test]
async fn other_names_are_forwarded_to_the_upstreams() {
    let upstream = Upstream::start(false).await;
    let (_dns, addr) = shop_server(vec![upstream.addr]).await;

    let m = ask(addr, "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answers(&m), ["example.com. A 192.0.2.1"]);
    assert!(!m.metadata.authoritative, "forwarded answers are not ours");
    assert!(m.metadata.recursion_available);
    assert_eq!(upstream.queries(), 1);

    // Names under the domain never leave the node, even unknown ones.
    let m = ask(addr, "nope.shop.wharf.internal.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let m = ask(addr, "web.shop.", RecordType::A).await;
    assert_eq!(answers(&m).len(), 2);
    assert_eq!(upstream.queries(), 1, "no other query reached the upstream");
}

/// A container whose service names its own name servers (`dns:`) has its questions outside
/// the cluster forwarded to them, by its address; its service names are still answered here.
#[tokio::test]
async fn a_container_with_its_own_name_servers_is_forwarded_to_them() {
    let host = Upstream::start(false).await;
    let own = Upstream::start(false).await;
    let (dns, addr) = shop_server(vec![host.addr]).await;
    let asker: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    dns.set_asker_upstreams(std::collections::HashMap::from([(asker, vec![own.addr])]));

    let m = ask(addr, "example.com.", RecordType::A).await;
    assert_eq!(answers(&m), ["example.com. A 192.0.2.1"]);
    assert_eq!(
        (own.queries(), host.queries()),
        (1, 0),
        "asked the container's own server"
    );
    let m = ask(addr, "web.shop.", RecordType::A).await;
    assert_eq!(answers(&m).len(), 2, "service discovery still answers");
    assert_eq!(own.queries(), 1);

    // Once the container is gone, its address asks the host's resolvers again.
    dns.set_asker_upstreams(std::collections::HashMap::new());
    ask(addr, "example.com.", RecordType::A).await;
    assert_eq!((own.queries(), host.queries()), (1, 1));
}

#[tokio::test]
async fn a_truncated_upstream_answer_is_asked_again_over_tcp() {
    let upstream = Upstream::start(true).await;
    let (_dns, addr) = shop_server(vec![upstream.addr]).await;
    let m = ask(addr, "big.example.com.", RecordType::A).await;
    assert_eq!(answers(&m), ["big.example.com. A 192.0.2.2"]);
    assert_eq!(upstream.queries(), 2, "one UDP query, then one TCP query");
}

#[tokio::test]
async fn without_a_working_upstream_forwarded_names_fail() {
    let (_dns, addr) = shop_server(Vec::new()).await;
    let m = ask(addr, "example.com.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);

    // An upstream whose port is closed: the refusal moves on (to nothing) without waiting for
    // the timeout, and a working upstream after it answers.
    let closed = UdpSocket::bind(any_port())
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let upstream = Upstream::start(false).await;
    let (_dns, addr) = shop_server(vec![closed, upstream.addr]).await;
    let m = ask(addr, "example.com.", RecordType::A).await;
    assert_eq!(answers(&m), ["example.com. A 192.0.2.1"]);
}

#[tokio::test]
async fn unlisten_stops_answering_and_the_address_can_be_listened_on_again() {
    let (dns, addr) = shop_server(Vec::new()).await;
    assert_eq!(dns.listening(), [("shop".to_string(), addr)]);
    ask(addr, "web.shop.", RecordType::A).await;

    dns.unlisten("shop");
    assert_eq!(dns.listening(), []);
    let q = query("web.shop.", RecordType::A).to_vec().unwrap();
    let result = exchange_raw(addr, &q, Duration::from_millis(500)).await;
    assert!(
        result.is_err(),
        "still answering after unlisten: {result:?}"
    );

    // The same address again, right away (the closed socket goes away a moment later).
    let again = dns.listen_on("shop", addr).await.unwrap();
    assert_eq!(again, addr);
    assert_eq!(
        answers(&ask(addr, "web.shop.", RecordType::A).await).len(),
        2
    );
}

#[tokio::test]
async fn listening_again_is_a_no_op_and_a_new_address_replaces_the_old() {
    let (dns, addr) = shop_server(Vec::new()).await;
    assert_eq!(
        dns.listen_on("shop", any_port()).await.unwrap(),
        addr,
        "same request, same listener"
    );

    // The stack network's gateway moved: 127.0.0.2 is on the loopback interface as well.
    let moved = dns
        .listen_on("shop", (IpAddr::from([127, 0, 0, 2]), 0).into())
        .await
        .unwrap();
    assert_eq!(moved.ip(), IpAddr::from([127, 0, 0, 2]));
    assert_eq!(answers(&ask(moved, "web.", RecordType::A).await).len(), 2);
    assert_eq!(dns.listening(), [("shop".to_string(), moved)]);
    let q = query("web.", RecordType::A).to_vec().unwrap();
    let result = exchange_raw(addr, &q, Duration::from_millis(500)).await;
    assert!(result.is_err(), "the old address still answers: {result:?}");
}

#[tokio::test]
async fn malformed_packets_get_formerr_or_nothing() {
    let (_dns, addr) = shop_server(Vec::new()).await;

    // Shorter than a header: dropped.
    let result = exchange_raw(addr, &[1, 2, 3], Duration::from_millis(300)).await;
    assert!(result.is_err(), "answered a 3-byte packet: {result:?}");

    // A header announcing a question that is not there.
    let mut bad = query("web.shop.", RecordType::A).to_vec().unwrap();
    bad.truncate(14);
    let bytes = exchange_raw(addr, &bad, ANSWER_TIMEOUT).await.unwrap();
    let m = Message::from_vec(&bytes).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(m.metadata.message_type, MessageType::Response);

    // Two questions in one query.
    let mut two = query("web.shop.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("web.").unwrap(),
        RecordType::A,
    ));
    let bytes = exchange_raw(addr, &two.to_vec().unwrap(), ANSWER_TIMEOUT)
        .await
        .unwrap();
    let m = Message::from_vec(&bytes).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);

    // Random bytes of every length up to a packet, then the server still answers.
    let mut x: u32 = 0x9e37_79b9;
    for len in 0..600 {
        let packet: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        let socket = UdpSocket::bind(any_port()).await.unwrap();
        socket.send_to(&packet, addr).await.unwrap();
    }
    assert_eq!(
        answers(&ask(addr, "web.shop.", RecordType::A).await).len(),
        2
    );
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_and_whole_over_tcp() {
    let dns = Dns::new(Vec::new());
    let web: Vec<(u32, String)> = (1..=60)
        .map(|slot| (slot, format!("10.0.1.{slot}")))
        .collect();
    let web: Vec<(u32, &str)> = web.iter().map(|(s, a)| (*s, a.as_str())).collect();
    dns.update(&discovery(&web));
    let addr = dns.listen_on("shop", any_port()).await.unwrap();

    // 60 A records of 16+ bytes each do not fit in the 512 bytes of a client without EDNS.
    let m = ask(addr, "web.shop.wharf.internal.", RecordType::A).await;
    assert!(m.metadata.truncation, "expected TC over UDP: {m:?}");
    assert!(m.answers.len() < 60);

    let m = ask_tcp(addr, "web.shop.wharf.internal.", RecordType::A).await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);

    // A client announcing a large buffer gets them all over UDP.
    let mut q = query("web.shop.wharf.internal.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(4096);
    q.set_edns(edns);
    let bytes = exchange_raw(addr, &q.to_vec().unwrap(), ANSWER_TIMEOUT)
        .await
        .unwrap();
    let m = Message::from_vec(&bytes).unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    assert!(m.edns.is_some(), "an EDNS query gets an EDNS answer");
}
