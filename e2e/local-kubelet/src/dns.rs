//! Cluster DNS for pods: answers `cluster.local` names from watch-fed caches of Services and
//! Endpoints, like CoreDNS's kubernetes plugin, and forwards every other name to the host's
//! resolver, so pods can resolve `<svc>.<ns>.svc.cluster.local` without a real cluster DNS.
//!
//! This machine has no Service proxy (no kube-proxy), so a ClusterIP would lead nowhere: every
//! Service name (ClusterIP or headless alike) answers with the ready addresses of its
//! Endpoints, as a headless Service would. An ExternalName Service is a CNAME, followed only
//! while its target stays inside the cluster domain.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The domain pods search and this server is authoritative for.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Short, so pods notice endpoint changes (a Patroni failover) quickly.
const TTL: u32 = 5;
/// How long an upstream may take before the client gets SERVFAIL.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may take to send each query (its length and its bytes) or to take
/// a reply before the connection is closed, so an idle or stalled client frees its slot.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Queries handled at once, over UDP and TCP together (each UDP one is a task and its packet).
const MAX_QUERIES_IN_FLIGHT: usize = 256;
/// Queries relayed upstream at once (each holds a socket and a buffer for up to
/// `FORWARD_TIMEOUT`); beyond that the client gets SERVFAIL.
const MAX_FORWARDS: usize = 64;
/// TCP client connections served at once; more wait in the listen backlog until one closes.
const MAX_TCP_CONNECTIONS: usize = 64;
/// Room for an upstream's UDP reply at least (more if the client advertised a larger EDNS
/// size): the usual EDNS size, so an upstream that ignores a small limit is still relayed.
const MIN_FORWARD_BUFFER: usize = 4096;
/// CNAME hops followed inside the cluster domain before giving up (ExternalName loops).
const MAX_CNAME_CHAIN: usize = 8;
/// Large enough for any UDP datagram, so no query is cut short.
const MAX_UDP_PACKET: usize = 65_535;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding the cluster DNS {proto} socket on {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "upstream DNS server {upstream} is this DNS server itself ({listen}); queries would loop"
    )]
    UpstreamIsSelf {
        upstream: SocketAddr,
        listen: SocketAddr,
    },
    #[error("the {0} watch ended, so cluster DNS has no cache to answer from")]
    WatchEnded(&'static str),
}

/// Serves DNS on `listen` (UDP, and TCP on the same address) until `shutdown`; cluster names
/// from watch-fed caches of Services and Endpoints, other names forwarded to `upstream`
/// (None: answered REFUSED; upstream timeout: SERVFAIL).
///
/// Binds before it waits for the caches, so a taken port is reported at once; queries that
/// arrive before the caches are filled wait in the socket buffer.
pub async fn run(
    client: kube::Client,
    listen: SocketAddr,
    upstream: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> Result<(), DnsError> {
    let udp = UdpSocket::bind(listen)
        .await
        .map_err(|source| DnsError::Bind {
            proto: "UDP",
            addr: listen,
            source,
        })?;
    // With port 0 the kernel picks the UDP port; TCP must use the same one.
    let local = udp.local_addr().map_err(|source| DnsError::Bind {
        proto: "UDP",
        addr: listen,
        source,
    })?;
    let tcp = TcpListener::bind(local)
        .await
        .map_err(|source| DnsError::Bind {
            proto: "TCP",
            addr: local,
            source,
        })?;
    if let Some(upstream) = upstream {
        if forwards_to_self(upstream, local) {
            return Err(DnsError::UpstreamIsSelf {
                upstream,
                listen: local,
            });
        }
    }
    tracing::info!(
        "cluster DNS on {local} (UDP, TCP) for {CLUSTER_DOMAIN}, other names to {}",
        upstream.map_or_else(|| "nowhere (REFUSED)".to_string(), |u| u.to_string())
    );

    let (services, services_writer) = reflector::store::<Service>();
    let (endpoints, endpoints_writer) = reflector::store::<Endpoints>();
    let services_feed = feed(
        watcher::watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|s: &mut Service| s.managed_fields_mut().clear())
        .reflect(services_writer),
        "Service",
    );
    let endpoints_feed = feed(
        watcher::watcher(Api::<Endpoints>::all(client), watcher::Config::default())
            .default_backoff()
            .modify(|e: &mut Endpoints| e.managed_fields_mut().clear())
            .reflect(endpoints_writer),
        "Endpoints",
    );
    let view: Arc<dyn ClusterView + Send + Sync> = Arc::new(StoreView {
        services: services.clone(),
        endpoints: endpoints.clone(),
    });
    let serving = async {
        services
            .wait_until_ready()
            .await
            .map_err(|_| DnsError::WatchEnded("Service"))?;
        endpoints
            .wait_until_ready()
            .await
            .map_err(|_| DnsError::WatchEnded("Endpoints"))?;
        tracing::info!("cluster DNS caches filled, answering queries");
        let limits = Limits::default();
        tokio::join!(
            serve(
                udp,
                view.clone(),
                upstream,
                limits.clone(),
                shutdown.clone()
            ),
            serve_tcp(tcp, view, upstream, limits, shutdown.clone()),
        );
        Ok(())
    };
    tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        result = serving => result,
        _ = services_feed => Err(DnsError::WatchEnded("Service")),
        _ = endpoints_feed => Err(DnsError::WatchEnded("Endpoints")),
    }
}

/// Drives a reflector stream (the stores fill as a side effect), logging watch errors; the
/// backoff retries them.
async fn feed<K>(stream: impl Stream<Item = Result<K, watcher::Error>>, kind: &'static str) {
    stream
        .for_each(|event| {
            if let Err(e) = event {
                tracing::warn!("cluster DNS: {kind} watch: {e}");
            }
            futures::future::ready(())
        })
        .await;
}

/// Whether forwarding to `upstream` would reach this very server (an endless loop).
fn forwards_to_self(upstream: SocketAddr, listen: SocketAddr) -> bool {
    upstream.port() == listen.port()
        && (upstream.ip() == listen.ip()
            || (listen.ip().is_unspecified() && upstream.ip().is_loopback()))
}

/// The first `nameserver` of a resolv.conf text (the host's upstream), port 53.
///
/// Entries that are not IP addresses are skipped; an IPv6 zone must be numeric (`fe80::1%2`).
pub fn upstream_from_resolv_conf(text: &str) -> Option<SocketAddr> {
    text.lines()
        .map(str::trim_start)
        .filter(|line| !line.starts_with('#') && !line.starts_with(';'))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .find_map(|address| {
            address
                .parse::<IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
                .or_else(|_| format!("[{address}]:53").parse())
                .ok()
        })
}

/// What the answering logic needs from the cluster; the reflector stores in production, a
/// fixture in tests.
pub(crate) trait ClusterView {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>>;
    fn endpoints(&self, namespace: &str, name: &str) -> Option<Arc<Endpoints>>;
}

/// The reflector stores `run` keeps filled.
struct StoreView {
    services: Store<Service>,
    endpoints: Store<Endpoints>,
}

impl ClusterView for StoreView {
    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(namespace))
    }

    fn endpoints(&self, namespace: &str, name: &str) -> Option<Arc<Endpoints>> {
        self.endpoints.get(&ObjectRef::new(name).within(namespace))
    }
}

/// What to do with one query.
#[derive(Debug, PartialEq)]
pub(crate) enum Answer {
    /// Send this message back.
    Reply(Message),
    /// Not a cluster name: relay the query to the upstream server.
    Forward,
    /// Not a query at all (e.g. a stray response): ignore it.
    Drop,
}

/// How one name of the cluster domain resolves.
enum Resolved {
    /// Not under the cluster domain.
    Outside,
    /// No such name.
    NxDomain,
    /// The name exists; these are its records of the asked type (maybe none).
    Data(Vec<RData>),
    /// The name is an alias (an ExternalName Service).
    Alias(Name),
}

/// Answers `query` from `view`, or says it must be forwarded. Pure, so it is table-tested.
pub(crate) fn answer<V: ClusterView + ?Sized>(query: &Message, view: &V) -> Answer {
    if query.message_type() != MessageType::Query {
        return Answer::Drop;
    }
    if query.op_code() != OpCode::Query {
        return Answer::Reply(reply_to(query, ResponseCode::NotImp));
    }
    let [question] = query.queries() else {
        return Answer::Reply(reply_to(query, ResponseCode::FormErr));
    };
    let qtype = question.query_type();
    let mut owner = question.name().clone();
    let mut records = Vec::new();
    let mut code = ResponseCode::NoError;
    for _ in 0..MAX_CNAME_CHAIN {
        match resolve(&owner, qtype, view) {
            Resolved::Outside if records.is_empty() => return Answer::Forward,
            // An ExternalName pointing outside: only the CNAME, not chased upstream (pgop uses
            // none; glibc's stub resolver would find no address).
            Resolved::Outside => break,
            Resolved::NxDomain => {
                code = ResponseCode::NXDomain;
                break;
            }
            Resolved::Data(data) => {
                records.extend(
                    data.into_iter()
                        .map(|rdata| Record::from_rdata(owner.clone(), TTL, rdata)),
                );
                break;
            }
            Resolved::Alias(target) => {
                records.push(Record::from_rdata(
                    owner,
                    TTL,
                    RData::CNAME(CNAME(target.clone())),
                ));
                if qtype == RecordType::CNAME {
                    break;
                }
                owner = target;
            }
        }
    }
    let mut reply = reply_to(query, code);
    reply.set_authoritative(true).add_answers(records);
    Answer::Reply(reply)
}

/// A response to `query` with its id and question, no records.
fn reply_to(query: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_response_code(code)
        .add_queries(query.queries().iter().cloned());
    reply
}

/// Resolves one name: the rules of CoreDNS's kubernetes plugin (without SRV records), except
/// that Service names answer with endpoint addresses (there is no Service proxy here).
///
/// Kubernetes names are lowercase, so the query's labels are lowercased (DNS names are
/// case-insensitive).
fn resolve<V: ClusterView + ?Sized>(name: &Name, qtype: RecordType, view: &V) -> Resolved {
    let labels: Vec<String> = name
        .iter()
        .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
        .collect();
    let domain: Vec<&str> = CLUSTER_DOMAIN.split('.').collect();
    let Some(inside) = labels
        .len()
        .checked_sub(domain.len())
        .filter(|&n| labels[n..] == domain[..])
        .map(|n| &labels[..n])
    else {
        return Resolved::Outside;
    };
    let inside: Vec<&str> = inside.iter().map(String::as_str).collect();
    match inside[..] {
        // The zone and its two subtrees always exist (they are empty non-terminals).
        [] | ["svc"] | ["pod"] => Resolved::Data(Vec::new()),
        [service, namespace, "svc"] => match view.service(namespace, service) {
            None => Resolved::NxDomain,
            Some(svc) => match external_name(&svc) {
                Some(target) => Name::from_ascii(&target)
                    .map(|mut target| {
                        target.set_fqdn(true);
                        Resolved::Alias(target)
                    })
                    .unwrap_or_else(|e| {
                        tracing::debug!(
                            "cluster DNS: {namespace}/{service}: bad externalName {target:?}: {e}"
                        );
                        Resolved::Data(Vec::new())
                    }),
                None => {
                    let ready = ready_addresses(view.endpoints(namespace, service).as_deref());
                    Resolved::Data(records_of(qtype, ready.iter().map(|a| a.ip)))
                }
            },
        },
        [host, service, namespace, "svc"] => {
            let exists = view
                .service(namespace, service)
                .is_some_and(|svc| external_name(&svc).is_none());
            let ready = ready_addresses(view.endpoints(namespace, service).as_deref());
            let matching: Vec<IpAddr> = ready
                .iter()
                .filter(|a| a.hostname.as_deref() == Some(host) || dashed(a.ip) == host)
                .map(|a| a.ip)
                .collect();
            if !exists || matching.is_empty() {
                Resolved::NxDomain
            } else {
                Resolved::Data(records_of(qtype, matching.into_iter()))
            }
        }
        [dashed_ip, _namespace, "pod"] => match undash(dashed_ip) {
            Some(ip) => Resolved::Data(records_of(qtype, std::iter::once(IpAddr::V4(ip)))),
            None => Resolved::NxDomain,
        },
        _ => Resolved::NxDomain,
    }
}

/// `spec.externalName` of an ExternalName Service.
fn external_name(service: &Service) -> Option<String> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() != Some("ExternalName") {
        return None;
    }
    spec.external_name.clone()
}

/// One ready endpoint address.
#[derive(Debug, PartialEq)]
struct ReadyAddress {
    ip: IpAddr,
    hostname: Option<String>,
}

/// The ready addresses (not `notReadyAddresses`) of all subsets, deduplicated by IP, in order.
fn ready_addresses(endpoints: Option<&Endpoints>) -> Vec<ReadyAddress> {
    let mut ready: Vec<ReadyAddress> = Vec::new();
    let addresses = endpoints
        .and_then(|e| e.subsets.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|subset| subset.addresses.as_ref())
        .flatten();
    for address in addresses {
        let Ok(ip) = address.ip.parse::<IpAddr>() else {
            continue;
        };
        if !ready.iter().any(|r| r.ip == ip) {
            ready.push(ReadyAddress {
                ip,
                hostname: address.hostname.clone(),
            });
        }
    }
    ready
}

/// The records of `qtype` among `ips`: A for IPv4, AAAA for IPv6, nothing for other types.
fn records_of(qtype: RecordType, ips: impl Iterator<Item = IpAddr>) -> Vec<RData> {
    ips.filter_map(|ip| match (qtype, ip) {
        (RecordType::A | RecordType::ANY, IpAddr::V4(v4)) => Some(RData::A(A(v4))),
        (RecordType::AAAA | RecordType::ANY, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(v6))),
        _ => None,
    })
    .collect()
}

/// `10.1.2.3` as the label `10-1-2-3` (how Kubernetes DNS names pods by address).
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The address of a pod label `a-b-c-d`.
fn undash(label: &str) -> Option<Ipv4Addr> {
    let octets: Vec<u8> = label
        .split('-')
        .map(|part| part.parse().ok())
        .collect::<Option<_>>()?;
    let octets: [u8; 4] = octets.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

/// How a query arrived, which decides how it is forwarded and how large a reply may be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no reply within {FORWARD_TIMEOUT:?}")]
    Timeout,
    #[error("the UDP reply is longer than {0} bytes")]
    TooLarge(usize),
}

/// The resource bounds of one server, shared by its UDP and TCP sides.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// A permit per query being handled: a UDP task, or a TCP connection's current query.
    queries: Arc<Semaphore>,
    /// A permit per query being relayed upstream.
    forwards: Arc<Semaphore>,
    /// A permit per open TCP client connection.
    tcp_connections: Arc<Semaphore>,
    /// See `TCP_IDLE_TIMEOUT`.
    tcp_idle: Duration,
}

impl Limits {
    pub(crate) fn new(
        queries: usize,
        forwards: usize,
        tcp_connections: usize,
        tcp_idle: Duration,
    ) -> Self {
        Limits {
            queries: Arc::new(Semaphore::new(queries)),
            forwards: Arc::new(Semaphore::new(forwards)),
            tcp_connections: Arc::new(Semaphore::new(tcp_connections)),
            tcp_idle,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(
            MAX_QUERIES_IN_FLIGHT,
            MAX_FORWARDS,
            MAX_TCP_CONNECTIONS,
            TCP_IDLE_TIMEOUT,
        )
    }
}

/// Serves DNS over UDP on `socket` until `shutdown`, each query in its own task (up to
/// `limits.queries` at once) so a slow upstream never delays cluster answers.
pub(crate) async fn serve(
    socket: UdpSocket,
    view: Arc<dyn ClusterView + Send + Sync>,
    upstream: Option<SocketAddr>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; MAX_UDP_PACKET];
    loop {
        let (len, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                Err(e) => {
                    tracing::debug!("cluster DNS: receiving: {e}");
                    continue;
                }
            },
        };
        let packet = &buf[..len];
        let Ok(permit) = limits.queries.clone().try_acquire_owned() else {
            // Every slot is busy (a flood, or a slow upstream). A cluster name costs a parse and
            // a cache lookup, so it is answered right here and keeps resolving, while this loop
            // takes no more than it can answer; a name for the upstream is dropped, as a full
            // socket buffer would drop it, and the client retries.
            if let Some(reply) = answer_locally(packet, &*view, Transport::Udp) {
                if let Err(e) = socket.send_to(&reply, peer).await {
                    tracing::debug!("cluster DNS: replying to {peer}: {e}");
                }
            }
            continue;
        };
        let packet = packet.to_vec();
        let (socket, view, limits) = (socket.clone(), view.clone(), limits.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reply) = handle(&packet, &*view, upstream, &limits, Transport::Udp).await {
                if let Err(e) = socket.send_to(&reply, peer).await {
                    tracing::debug!("cluster DNS: replying to {peer}: {e}");
                }
            }
        });
    }
}

/// Serves DNS over TCP (two-byte length prefixes) until `shutdown`, for clients that retry
/// over TCP after a truncated UDP reply; up to `limits.tcp_connections` clients at once.
pub(crate) async fn serve_tcp(
    listener: TcpListener,
    view: Arc<dyn ClusterView + Send + Sync>,
    upstream: Option<SocketAddr>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    loop {
        // A free slot before accepting: clients beyond the bound wait in the listen backlog,
        // holding no task and no descriptor of this process, until a connection closes.
        let Ok(slot) = (tokio::select! {
            _ = shutdown.cancelled() => return,
            slot = limits.tcp_connections.clone().acquire_owned() => slot,
        }) else {
            return;
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::debug!("cluster DNS: accepting: {e}");
                    continue;
                }
            },
        };
        let (view, limits, shutdown) = (view.clone(), limits.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = tcp_connection(stream, &*view, upstream, &limits) => if let Err(e) = result {
                    tracing::debug!("cluster DNS: TCP client {peer}: {e}");
                },
            }
        });
    }
}

/// Answers the queries of one TCP connection in order until the client closes it, idles or
/// stalls (`limits.tcp_idle` for each query, and for each reply).
async fn tcp_connection(
    mut stream: TcpStream,
    view: &(dyn ClusterView + Send + Sync),
    upstream: Option<SocketAddr>,
    limits: &Limits,
) -> std::io::Result<()> {
    loop {
        let packet = match tokio::time::timeout(limits.tcp_idle, read_frame(&mut stream)).await {
            // Idle, or a length and then too few bytes: the slot goes to another client.
            Err(_) => return Ok(()),
            Ok(Ok(None)) => return Ok(()),
            Ok(Ok(Some(packet))) => packet,
            Ok(Err(e)) => return Err(e),
        };
        let reply = {
            let Ok(_permit) = limits.queries.acquire().await else {
                return Ok(());
            };
            handle(&packet, view, upstream, limits, Transport::Tcp).await
        };
        let Some(reply) = reply else {
            continue;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&reply_len.to_be_bytes());
        framed.extend_from_slice(&reply);
        // A client that does not read its reply stalls as well.
        match tokio::time::timeout(limits.tcp_idle, stream.write_all(&framed)).await {
            Err(_) => return Ok(()),
            Ok(written) => written?,
        }
    }
}

/// The next length-prefixed message of a TCP stream; None when the client closed it between
/// messages.
async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let len = match stream.read_u16().await {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        len => len?,
    };
    let mut packet = vec![0u8; usize::from(len)];
    stream.read_exact(&mut packet).await?;
    Ok(Some(packet))
}

/// A query packet parsed; None (logged) when malformed.
fn parse(packet: &[u8]) -> Option<Message> {
    Message::from_vec(packet)
        .map_err(|e| tracing::debug!("cluster DNS: dropping a malformed packet: {e}"))
        .ok()
}

/// How long a reply to `query` may be over `transport`.
fn reply_limit(query: &Message, transport: Transport) -> usize {
    match transport {
        Transport::Udp => usize::from(query.max_payload()),
        Transport::Tcp => usize::from(u16::MAX),
    }
}

/// The wire form of an answer from the caches, logged.
fn local_reply(query: &Message, reply: &Message, limit: usize) -> Option<Vec<u8>> {
    if let Some(q) = query.query() {
        tracing::debug!(
            "cluster DNS: {} {} -> {} ({} answers)",
            q.query_type(),
            q.name(),
            reply.response_code(),
            reply.answers().len()
        );
    }
    encode(reply, limit)
}

/// The reply bytes for one query packet if the caches answer it; None drops it (malformed,
/// not a query, or a name for the upstream).
fn answer_locally(
    packet: &[u8],
    view: &(dyn ClusterView + Send + Sync),
    transport: Transport,
) -> Option<Vec<u8>> {
    let query = parse(packet)?;
    match answer(&query, view) {
        Answer::Reply(reply) => local_reply(&query, &reply, reply_limit(&query, transport)),
        Answer::Forward | Answer::Drop => None,
    }
}

/// The reply bytes for one query packet; None drops it (malformed or not a query).
async fn handle(
    packet: &[u8],
    view: &(dyn ClusterView + Send + Sync),
    upstream: Option<SocketAddr>,
    limits: &Limits,
    transport: Transport,
) -> Option<Vec<u8>> {
    let query = parse(packet)?;
    let limit = reply_limit(&query, transport);
    match answer(&query, view) {
        Answer::Drop => None,
        Answer::Reply(reply) => local_reply(&query, &reply, limit),
        Answer::Forward => {
            let Some(upstream) = upstream else {
                return encode(&reply_to(&query, ResponseCode::Refused), limit);
            };
            let name = || query.query().map(|q| q.name().to_string());
            let Ok(_forwarding) = limits.forwards.try_acquire() else {
                tracing::debug!(
                    "cluster DNS: too many queries relayed at once, SERVFAIL for {:?}",
                    name()
                );
                return encode(&reply_to(&query, ResponseCode::ServFail), limit);
            };
            match forward(packet, upstream, transport, limit).await {
                Ok(reply) => Some(reply),
                // Too long for the client over UDP: it asks again over TCP.
                Err(ForwardError::TooLarge(_)) => {
                    let mut reply = reply_to(&query, ResponseCode::NoError);
                    reply.set_truncated(true);
                    encode(&reply, limit)
                }
                Err(e) => {
                    tracing::debug!("cluster DNS: forwarding {:?} to {upstream}: {e}", name());
                    encode(&reply_to(&query, ResponseCode::ServFail), limit)
                }
            }
        }
    }
}

/// The wire form of `reply`, truncated (TC set, records dropped) when longer than `limit` so
/// the client retries over TCP.
fn encode(reply: &Message, limit: usize) -> Option<Vec<u8>> {
    let encoded = reply
        .to_vec()
        .and_then(|bytes| {
            if bytes.len() > limit {
                reply.truncate().to_vec()
            } else {
                Ok(bytes)
            }
        })
        .map_err(|e| tracing::warn!("cluster DNS: encoding a reply: {e}"));
    encoded.ok()
}

/// Relays the raw query to `upstream` (same transport, a fresh socket) and returns its reply
/// bytes as they are; `limit` is how long a reply the client takes.
async fn forward(
    packet: &[u8],
    upstream: SocketAddr,
    transport: Transport,
    limit: usize,
) -> Result<Vec<u8>, ForwardError> {
    let exchange = async {
        match transport {
            Transport::Udp => forward_udp(packet, upstream, limit.max(MIN_FORWARD_BUFFER)).await,
            Transport::Tcp => forward_tcp(packet, upstream).await,
        }
    };
    tokio::time::timeout(FORWARD_TIMEOUT, exchange)
        .await
        .map_err(|_| ForwardError::Timeout)?
}

/// Relays over UDP; a reply longer than `capacity` is `TooLarge`.
async fn forward_udp(
    packet: &[u8],
    upstream: SocketAddr,
    capacity: usize,
) -> Result<Vec<u8>, ForwardError> {
    let any: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(any).await?;
    // Connected, so the kernel only passes datagrams from the upstream.
    socket.connect(upstream).await?;
    socket.send(packet).await?;
    // One byte more than a reply may have, to tell a longer (cut off) datagram.
    let mut buf = vec![0u8; capacity + 1];
    loop {
        let len = socket.recv(&mut buf).await?;
        // A reply to another query (a late one, or spoofed) is not ours.
        if len >= 2 && packet.len() >= 2 && buf[..2] == packet[..2] {
            if len > capacity {
                return Err(ForwardError::TooLarge(capacity));
            }
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

async fn forward_tcp(packet: &[u8], upstream: SocketAddr) -> Result<Vec<u8>, ForwardError> {
    let len = u16::try_from(packet.len()).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "query longer than 65535")
    })?;
    let mut stream = TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(packet.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::Ipv6Addr;

    use hickory_proto::op::Query;
    use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset, ServiceSpec};
    use kube::api::ObjectMeta;

    use super::*;

    /// Services and Endpoints keyed by (namespace, name).
    #[derive(Default)]
    struct Fixture {
        services: HashMap<(String, String), Arc<Service>>,
        endpoints: HashMap<(String, String), Arc<Endpoints>>,
    }

    impl ClusterView for Fixture {
        fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
            self.services
                .get(&(namespace.to_string(), name.to_string()))
                .cloned()
        }

        fn endpoints(&self, namespace: &str, name: &str) -> Option<Arc<Endpoints>> {
            self.endpoints
                .get(&(namespace.to_string(), name.to_string()))
                .cloned()
        }
    }

    fn meta(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            ..Default::default()
        }
    }

    fn address(ip: &str, hostname: Option<&str>) -> EndpointAddress {
        EndpointAddress {
            ip: ip.to_string(),
            hostname: hostname.map(str::to_string),
            ..Default::default()
        }
    }

    impl Fixture {
        fn service(mut self, namespace: &str, name: &str, spec: ServiceSpec) -> Self {
            let service = Service {
                metadata: meta(namespace, name),
                spec: Some(spec),
                ..Default::default()
            };
            self.services
                .insert((namespace.to_string(), name.to_string()), Arc::new(service));
            self
        }

        fn cluster_ip(self, namespace: &str, name: &str) -> Self {
            let spec = ServiceSpec {
                cluster_ip: Some("10.96.0.10".to_string()),
                ..Default::default()
            };
            self.service(namespace, name, spec)
        }

        fn endpoints(mut self, namespace: &str, name: &str, subsets: Vec<EndpointSubset>) -> Self {
            let endpoints = Endpoints {
                metadata: meta(namespace, name),
                subsets: Some(subsets),
            };
            self.endpoints.insert(
                (namespace.to_string(), name.to_string()),
                Arc::new(endpoints),
            );
            self
        }
    }

    /// The cluster the tests ask about.
    fn cluster() -> Fixture {
        Fixture::default()
            // a ClusterIP Service: answers with endpoints, not the ClusterIP
            .cluster_ip("db", "main")
            .endpoints(
                "db",
                "main",
                vec![
                    EndpointSubset {
                        addresses: Some(vec![
                            address("127.1.0.5", None),
                            address("127.1.0.6", None),
                        ]),
                        not_ready_addresses: Some(vec![address("127.1.0.9", None)]),
                        ..Default::default()
                    },
                    // a second subset (another port set) repeats an address
                    EndpointSubset {
                        addresses: Some(vec![address("127.1.0.5", None)]),
                        ..Default::default()
                    },
                ],
            )
            // a headless Service of a StatefulSet
            .service(
                "db",
                "main-config",
                ServiceSpec {
                    cluster_ip: Some("None".to_string()),
                    ..Default::default()
                },
            )
            .endpoints(
                "db",
                "main-config",
                vec![EndpointSubset {
                    addresses: Some(vec![
                        address("127.1.0.5", Some("main-0")),
                        address("127.1.0.6", Some("main-1")),
                        address("127.1.0.7", None),
                    ]),
                    not_ready_addresses: Some(vec![address("127.1.0.8", Some("main-2"))]),
                    ..Default::default()
                }],
            )
            // a Service whose only endpoint is not ready
            .cluster_ip("db", "replica")
            .endpoints(
                "db",
                "replica",
                vec![EndpointSubset {
                    not_ready_addresses: Some(vec![address("127.1.0.9", None)]),
                    ..Default::default()
                }],
            )
            // a Service without Endpoints at all
            .cluster_ip("db", "lonely")
            // Endpoints without a Service
            .endpoints(
                "db",
                "orphan",
                vec![EndpointSubset {
                    addresses: Some(vec![address("127.1.0.3", Some("x"))]),
                    ..Default::default()
                }],
            )
            .service(
                "db",
                "outside",
                ServiceSpec {
                    type_: Some("ExternalName".to_string()),
                    external_name: Some("db.example.com".to_string()),
                    ..Default::default()
                },
            )
            .service(
                "db",
                "alias",
                ServiceSpec {
                    type_: Some("ExternalName".to_string()),
                    external_name: Some("main.db.svc.cluster.local".to_string()),
                    ..Default::default()
                },
            )
            .service(
                "db",
                "loop",
                ServiceSpec {
                    type_: Some("ExternalName".to_string()),
                    external_name: Some("loop.db.svc.cluster.local".to_string()),
                    ..Default::default()
                },
            )
    }

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut message = Message::new();
        message
            .set_id(4711)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .add_query(Query::query(
                Name::from_ascii(name).expect("test names are valid"),
                qtype,
            ));
        message
    }

    fn ask(name: &str, qtype: RecordType) -> Message {
        match answer(&query(name, qtype), &cluster()) {
            Answer::Reply(reply) => reply,
            other => panic!("{name} {qtype}: expected a reply, got {other:?}"),
        }
    }

    /// The A addresses of a reply's answers, in order.
    fn a_records(reply: &Message) -> Vec<Ipv4Addr> {
        reply
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(A(ip)) => Some(*ip),
                _ => None,
            })
            .collect()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test addresses are valid")
    }

    #[test]
    fn service_answers_its_ready_endpoints_deduplicated() {
        let reply = ask("main.db.svc.cluster.local", RecordType::A);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        // not the ClusterIP, not the not-ready 127.1.0.9, 127.1.0.5 once
        assert_eq!(a_records(&reply), [ip("127.1.0.5"), ip("127.1.0.6")]);
        assert!(reply.authoritative());
        assert_eq!(reply.message_type(), MessageType::Response);
        assert_eq!(reply.id(), 4711);
        assert!(reply.recursion_desired());
        assert_eq!(
            reply.queries(),
            query("main.db.svc.cluster.local", RecordType::A).queries()
        );
        for record in reply.answers() {
            assert_eq!(record.ttl(), TTL);
            assert_eq!(record.record_type(), RecordType::A);
            assert_eq!(record.name().to_ascii(), "main.db.svc.cluster.local");
        }
    }

    #[test]
    fn names_are_case_insensitive_and_keep_the_asked_case() {
        let reply = ask("MAIN.Db.SVC.Cluster.LOCAL", RecordType::A);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert_eq!(a_records(&reply), [ip("127.1.0.5"), ip("127.1.0.6")]);
        assert_eq!(
            reply.answers()[0].name().to_ascii(),
            "MAIN.Db.SVC.Cluster.LOCAL"
        );
    }

    #[test]
    fn trailing_dot_is_optional() {
        for name in ["main.db.svc.cluster.local.", "main.db.svc.cluster.local"] {
            let reply = ask(name, RecordType::A);
            assert_eq!(reply.response_code(), ResponseCode::NoError, "{name}");
            assert_eq!(a_records(&reply), [ip("127.1.0.5"), ip("127.1.0.6")]);
        }
        let reply = ask("nope.db.svc.cluster.local.", RecordType::A);
        assert_eq!(reply.response_code(), ResponseCode::NXDomain);
    }

    #[test]
    fn headless_service_answers_its_ready_endpoints() {
        let reply = ask("main-config.db.svc.cluster.local", RecordType::A);
        assert_eq!(
            a_records(&reply),
            [ip("127.1.0.5"), ip("127.1.0.6"), ip("127.1.0.7")]
        );
    }

    #[test]
    fn existing_service_without_ready_address_is_noerror_empty() {
        for name in [
            "replica.db.svc.cluster.local",
            "lonely.db.svc.cluster.local",
        ] {
            let reply = ask(name, RecordType::A);
            assert_eq!(reply.response_code(), ResponseCode::NoError, "{name}");
            assert!(reply.answers().is_empty(), "{name}");
            assert!(reply.authoritative(), "{name}");
        }
    }

    #[test]
    fn missing_service_is_nxdomain() {
        for name in [
            "nope.db.svc.cluster.local",
            // the Service exists in another namespace only
            "main.other.svc.cluster.local",
            // Endpoints alone do not make a name
            "orphan.db.svc.cluster.local",
        ] {
            for qtype in [RecordType::A, RecordType::AAAA] {
                let reply = ask(name, qtype);
                assert_eq!(reply.response_code(), ResponseCode::NXDomain, "{name}");
                assert!(reply.answers().is_empty(), "{name}");
                assert!(reply.authoritative(), "{name}");
            }
        }
    }

    #[test]
    fn aaaa_and_other_types_of_existing_names_are_noerror_empty() {
        for name in [
            "main.db.svc.cluster.local",
            "main-0.main-config.db.svc.cluster.local",
            "127-1-0-5.db.pod.cluster.local",
        ] {
            for qtype in [
                RecordType::AAAA,
                RecordType::MX,
                RecordType::TXT,
                RecordType::SRV,
            ] {
                let reply = ask(name, qtype);
                assert_eq!(
                    reply.response_code(),
                    ResponseCode::NoError,
                    "{name} {qtype}"
                );
                assert!(reply.answers().is_empty(), "{name} {qtype}");
            }
        }
    }

    #[test]
    fn aaaa_answers_ipv6_endpoints() {
        let view = Fixture::default().cluster_ip("ns", "six").endpoints(
            "ns",
            "six",
            vec![EndpointSubset {
                addresses: Some(vec![address("fd00::1", None), address("10.0.0.1", None)]),
                ..Default::default()
            }],
        );
        let Answer::Reply(reply) =
            answer(&query("six.ns.svc.cluster.local", RecordType::AAAA), &view)
        else {
            panic!("expected a reply");
        };
        let six: Vec<RData> = reply.answers().iter().map(|r| r.data().clone()).collect();
        assert_eq!(
            six,
            [RData::AAAA(AAAA("fd00::1".parse::<Ipv6Addr>().unwrap()))]
        );
    }

    #[test]
    fn hostname_names_the_ready_address_with_that_hostname() {
        let reply = ask("main-1.main-config.db.svc.cluster.local", RecordType::A);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert_eq!(a_records(&reply), [ip("127.1.0.6")]);
        assert!(reply.authoritative());
        let reply = ask("Main-0.MAIN-CONFIG.db.svc.cluster.local.", RecordType::A);
        assert_eq!(a_records(&reply), [ip("127.1.0.5")]);
    }

    #[test]
    fn address_without_hostname_is_named_by_its_dashed_ip() {
        let reply = ask("127-1-0-7.main-config.db.svc.cluster.local", RecordType::A);
        assert_eq!(a_records(&reply), [ip("127.1.0.7")]);
    }

    #[test]
    fn unknown_or_not_ready_hostname_is_nxdomain() {
        for name in [
            // not ready
            "main-2.main-config.db.svc.cluster.local",
            "127-1-0-8.main-config.db.svc.cluster.local",
            // no such hostname
            "main-9.main-config.db.svc.cluster.local",
            // right hostname, wrong Service
            "main-0.main.db.svc.cluster.local",
            // no Service, though Endpoints with that hostname exist
            "x.orphan.db.svc.cluster.local",
            // an ExternalName Service has no hosts
            "x.outside.db.svc.cluster.local",
        ] {
            let reply = ask(name, RecordType::A);
            assert_eq!(reply.response_code(), ResponseCode::NXDomain, "{name}");
            assert!(reply.answers().is_empty(), "{name}");
        }
    }

    #[test]
    fn pod_names_answer_their_dashed_address() {
        let reply = ask("127-1-0-42.db.pod.cluster.local", RecordType::A);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert_eq!(a_records(&reply), [ip("127.1.0.42")]);
        assert!(reply.authoritative());
        for name in [
            "127-1-0.db.pod.cluster.local",
            "127-1-0-256.db.pod.cluster.local",
            "127-1-0-4-5.db.pod.cluster.local",
            "a-b-c-d.db.pod.cluster.local",
            "127-1-0-4.pod.cluster.local",
        ] {
            let reply = ask(name, RecordType::A);
            assert_eq!(reply.response_code(), ResponseCode::NXDomain, "{name}");
        }
    }

    #[test]
    fn external_name_is_a_cname() {
        for qtype in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
            let reply = ask("outside.db.svc.cluster.local", qtype);
            assert_eq!(reply.response_code(), ResponseCode::NoError);
            let data: Vec<&RData> = reply.answers().iter().map(|r| r.data()).collect();
            let target = Name::from_ascii("db.example.com.").unwrap();
            assert_eq!(data, [&RData::CNAME(CNAME(target))], "{qtype}");
        }
    }

    #[test]
    fn external_name_inside_the_cluster_is_followed() {
        let reply = ask("alias.db.svc.cluster.local", RecordType::A);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert_eq!(reply.answers().len(), 3);
        assert_eq!(reply.answers()[0].record_type(), RecordType::CNAME);
        assert_eq!(
            reply.answers()[1].name().to_ascii(),
            "main.db.svc.cluster.local."
        );
        assert_eq!(a_records(&reply), [ip("127.1.0.5"), ip("127.1.0.6")]);
        // a self-referencing ExternalName ends, it does not spin
        let reply = ask("loop.db.svc.cluster.local", RecordType::A);
        assert_eq!(reply.answers().len(), MAX_CNAME_CHAIN);
    }

    #[test]
    fn other_cluster_names_are_nxdomain() {
        for name in [
            "db.svc.cluster.local",
            "foo.cluster.local",
            "main.db.svc.cluster.local.db.svc.cluster.local",
            "a.b.main-config.db.svc.cluster.local",
            "db.pod.cluster.local",
            "x.y.db.pod.cluster.local",
        ] {
            let reply = ask(name, RecordType::A);
            assert_eq!(reply.response_code(), ResponseCode::NXDomain, "{name}");
            assert!(reply.authoritative(), "{name}");
        }
        // the zone itself and its two subtrees exist
        for name in ["cluster.local", "svc.cluster.local", "pod.cluster.local"] {
            let reply = ask(name, RecordType::A);
            assert_eq!(reply.response_code(), ResponseCode::NoError, "{name}");
            assert!(reply.answers().is_empty(), "{name}");
        }
    }

    #[test]
    fn names_outside_the_cluster_are_forwarded() {
        for name in [
            "example.com",
            "cluster.local.example.com",
            "local",
            "xcluster.local",
            ".",
        ] {
            assert_eq!(
                answer(&query(name, RecordType::A), &cluster()),
                Answer::Forward,
                "{name}"
            );
        }
    }

    #[test]
    fn odd_messages_are_refused_or_dropped() {
        let mut response = query("main.db.svc.cluster.local", RecordType::A);
        response.set_message_type(MessageType::Response);
        assert_eq!(answer(&response, &cluster()), Answer::Drop);

        let mut update = query("main.db.svc.cluster.local", RecordType::A);
        update.set_op_code(OpCode::Update);
        let Answer::Reply(reply) = answer(&update, &cluster()) else {
            panic!("expected a reply");
        };
        assert_eq!(reply.response_code(), ResponseCode::NotImp);

        let mut two = query("main.db.svc.cluster.local", RecordType::A);
        two.add_query(Query::query(
            Name::from_ascii("example.com").unwrap(),
            RecordType::A,
        ));
        let Answer::Reply(reply) = answer(&two, &cluster()) else {
            panic!("expected a reply");
        };
        assert_eq!(reply.response_code(), ResponseCode::FormErr);
    }

    #[test]
    fn long_replies_are_truncated_for_udp() {
        let addresses = (0..100)
            .map(|i| address(&format!("127.2.0.{i}"), None))
            .collect();
        let view = Fixture::default().cluster_ip("ns", "big").endpoints(
            "ns",
            "big",
            vec![EndpointSubset {
                addresses: Some(addresses),
                ..Default::default()
            }],
        );
        let Answer::Reply(reply) = answer(&query("big.ns.svc.cluster.local", RecordType::A), &view)
        else {
            panic!("expected a reply");
        };
        assert_eq!(reply.answers().len(), 100);
        let udp = Message::from_vec(&encode(&reply, 512).unwrap()).unwrap();
        assert!(udp.truncated());
        assert!(udp.answers().is_empty());
        let tcp = Message::from_vec(&encode(&reply, 65535).unwrap()).unwrap();
        assert!(!tcp.truncated());
        assert_eq!(tcp.answers().len(), 100);
    }

    #[test]
    fn resolv_conf_first_nameserver() {
        let text = "# Generated by NetworkManager\n\
                    ; nameserver 10.9.9.9\n\
                    search example.com\n\
                    options edns0 trust-ad ndots:5\n\
                    nameserver 192.168.1.1 # the router\n\
                    nameserver 8.8.8.8\n";
        assert_eq!(
            upstream_from_resolv_conf(text),
            Some("192.168.1.1:53".parse().unwrap())
        );
        assert_eq!(
            upstream_from_resolv_conf("  nameserver\t2001:db8::53\nnameserver 1.1.1.1\n"),
            Some("[2001:db8::53]:53".parse().unwrap())
        );
        assert_eq!(
            upstream_from_resolv_conf("nameserver fe80::1%2\n"),
            Some("[fe80::1%2]:53".parse().unwrap())
        );
        // not an address: the next one
        assert_eq!(
            upstream_from_resolv_conf("nameserver dns.example.com\nnameserver 127.0.0.53\n"),
            Some("127.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            upstream_from_resolv_conf("options ndots:5\nsearch x\n"),
            None
        );
        assert_eq!(upstream_from_resolv_conf("nameserver\n"), None);
        assert_eq!(upstream_from_resolv_conf("#nameserver 1.1.1.1\n"), None);
        assert_eq!(upstream_from_resolv_conf(""), None);
    }

    #[test]
    fn forwarding_to_ourselves_is_detected() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(forwards_to_self(at("127.0.0.10:53"), at("127.0.0.10:53")));
        assert!(forwards_to_self(at("127.0.0.53:53"), at("0.0.0.0:53")));
        assert!(!forwards_to_self(at("127.0.0.53:53"), at("127.0.0.10:53")));
        assert!(!forwards_to_self(at("8.8.8.8:53"), at("0.0.0.0:53")));
        assert!(!forwards_to_self(
            at("127.0.0.10:5353"),
            at("127.0.0.10:53")
        ));
    }

    /// A UDP server with the fixture view on 127.0.0.1 and a port of its own.
    async fn udp_server(upstream: Option<SocketAddr>) -> (SocketAddr, CancellationToken) {
        udp_server_with(upstream, Limits::default()).await
    }

    async fn udp_server_with(
        upstream: Option<SocketAddr>,
        limits: Limits,
    ) -> (SocketAddr, CancellationToken) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(
            socket,
            Arc::new(cluster()),
            upstream,
            limits,
            shutdown.clone(),
        ));
        (addr, shutdown)
    }

    /// A TCP server with the fixture view and no upstream on 127.0.0.1.
    async fn tcp_server(limits: Limits) -> (SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve_tcp(
            listener,
            Arc::new(cluster()),
            None,
            limits,
            shutdown.clone(),
        ));
        (addr, shutdown)
    }

    /// Sends one query over `stream` and reads its reply.
    async fn tcp_ask(stream: &mut TcpStream, name: &str) -> Message {
        let packet = query(name, RecordType::A).to_vec().unwrap();
        stream.write_u16(packet.len() as u16).await.unwrap();
        stream.write_all(&packet).await.unwrap();
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        Message::from_vec(&buf).unwrap()
    }

    /// Whether the server closes `stream` within `within` (anything it still sends first is
    /// read and ignored).
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut sink = Vec::new();
        matches!(
            tokio::time::timeout(within, stream.read_to_end(&mut sink)).await,
            Ok(Ok(_))
        )
    }

    /// Sends `packet` to `server` over UDP and returns the reply, if one comes within 5 s.
    async fn exchange(server: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(packet, server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (len, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        assert_eq!(from, server);
        buf.truncate(len);
        Some(buf)
    }

    #[tokio::test]
    async fn serves_cluster_names_over_udp() {
        let (server, shutdown) = udp_server(None).await;
        // garbage first: dropped, and the server keeps serving
        client_send(server, b"\x01\x02garbage").await;
        let packet = query("Main.DB.svc.cluster.local.", RecordType::A)
            .to_vec()
            .unwrap();
        let reply = Message::from_vec(&exchange(server, &packet).await.unwrap()).unwrap();
        assert_eq!(reply.id(), 4711);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(reply.authoritative());
        assert_eq!(a_records(&reply), [ip("127.1.0.5"), ip("127.1.0.6")]);
        shutdown.cancel();
    }

    async fn client_send(server: SocketAddr, packet: &[u8]) {
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(packet, server).await.unwrap();
    }

    #[tokio::test]
    async fn serves_cluster_names_over_tcp() {
        let (server, shutdown) = tcp_server(Limits::default()).await;
        let mut stream = TcpStream::connect(server).await.unwrap();
        // two queries on one connection
        for name in [
            "main.db.svc.cluster.local",
            "127-1-0-9.db.pod.cluster.local",
        ] {
            let reply = tcp_ask(&mut stream, name).await;
            assert_eq!(reply.response_code(), ResponseCode::NoError, "{name}");
            assert!(!reply.answers().is_empty(), "{name}");
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn stalled_tcp_clients_are_disconnected_after_the_idle_timeout() {
        let idle = Duration::from_millis(300);
        let (server, shutdown) = tcp_server(Limits::new(256, 64, 64, idle)).await;
        // a length, then fewer bytes than it promised
        let mut stalled = TcpStream::connect(server).await.unwrap();
        stalled.write_u16(30).await.unwrap();
        stalled.write_all(&[0u8; 5]).await.unwrap();
        // one that answers a query, then sends nothing
        let mut silent = TcpStream::connect(server).await.unwrap();
        let reply = tcp_ask(&mut silent, "main.db.svc.cluster.local").await;
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        let started = std::time::Instant::now();
        assert!(closed_within(&mut stalled, Duration::from_secs(5)).await);
        assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
        assert!(started.elapsed() >= idle - Duration::from_millis(100));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn the_tcp_idle_timeout_is_per_query_not_per_connection() {
        let idle = Duration::from_millis(1500);
        let (server, shutdown) = tcp_server(Limits::new(256, 64, 64, idle)).await;
        let mut stream = TcpStream::connect(server).await.unwrap();
        let started = std::time::Instant::now();
        // queries well within the timeout of each other, for longer than the timeout in all
        for _ in 0..4 {
            let reply = tcp_ask(&mut stream, "main.db.svc.cluster.local").await;
            assert_eq!(reply.response_code(), ResponseCode::NoError);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(started.elapsed() > idle);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn tcp_connections_beyond_the_bound_wait_for_a_free_slot() {
        let (server, shutdown) = tcp_server(Limits::new(256, 64, 1, TCP_IDLE_TIMEOUT)).await;
        let mut first = TcpStream::connect(server).await.unwrap();
        let reply = tcp_ask(&mut first, "main.db.svc.cluster.local").await;
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        // the kernel completes the handshake, but nobody serves the second one yet
        let mut second = TcpStream::connect(server).await.unwrap();
        let waiting = tokio::spawn(async move {
            let reply = tcp_ask(&mut second, "main.db.svc.cluster.local").await;
            (reply, std::time::Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a second connection was served");
        let released = std::time::Instant::now();
        drop(first);
        let (reply, answered) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("served once the first connection closed")
            .unwrap();
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        assert!(answered >= released);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn without_upstream_outside_names_are_refused() {
        let (server, shutdown) = udp_server(None).await;
        let packet = query("example.com", RecordType::A).to_vec().unwrap();
        let reply = Message::from_vec(&exchange(server, &packet).await.unwrap()).unwrap();
        assert_eq!(reply.id(), 4711);
        assert_eq!(reply.response_code(), ResponseCode::Refused);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn outside_names_are_relayed_byte_for_byte() {
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream_addr = upstream.local_addr().unwrap();
        let packet = query("example.com", RecordType::A).to_vec().unwrap();
        let sent = packet.clone();
        let fake = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let (len, from) = upstream.recv_from(&mut buf).await.unwrap();
            // the query arrives unchanged
            assert_eq!(buf[..len], sent[..]);
            // first a reply with another id (must be ignored), then the real one
            upstream.send_to(b"\x00\x01junk", from).await.unwrap();
            let mut reply = buf[..len].to_vec();
            reply.extend_from_slice(b"relayed as is");
            upstream.send_to(&reply, from).await.unwrap();
            reply
        });
        let (server, shutdown) = udp_server(Some(upstream_addr)).await;
        let relayed = exchange(server, &packet).await.unwrap();
        assert_eq!(relayed, fake.await.unwrap());
        shutdown.cancel();
    }

    /// An upstream that answers only when told to.
    struct FakeUpstream(UdpSocket);

    impl FakeUpstream {
        async fn new() -> (Self, SocketAddr) {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            (FakeUpstream(socket), addr)
        }

        /// The next query relayed to it, if one comes within `within`.
        async fn relayed(&self, within: Duration) -> Option<(Vec<u8>, SocketAddr)> {
            let mut buf = vec![0u8; 4096];
            let (len, from) = tokio::time::timeout(within, self.0.recv_from(&mut buf))
                .await
                .ok()?
                .unwrap();
            buf.truncate(len);
            Some((buf, from))
        }

        /// Answers a relayed query with itself, marked as a response.
        async fn answer(&self, (query, from): &(Vec<u8>, SocketAddr)) {
            let mut reply = Message::from_vec(query).unwrap();
            reply.set_message_type(MessageType::Response);
            self.0
                .send_to(&reply.to_vec().unwrap(), from)
                .await
                .unwrap();
        }
    }

    fn query_with_id(name: &str, id: u16) -> Vec<u8> {
        let mut message = query(name, RecordType::A);
        message.set_id(id);
        message.to_vec().unwrap()
    }

    /// The next datagram `client` receives, parsed, if one comes within `within`.
    async fn next_reply(client: &UdpSocket, within: Duration) -> Option<Message> {
        let mut buf = vec![0u8; 4096];
        let len = tokio::time::timeout(within, client.recv(&mut buf))
            .await
            .ok()?
            .unwrap();
        Some(Message::from_vec(&buf[..len]).unwrap())
    }

    #[tokio::test]
    async fn forwards_beyond_the_bound_are_servfail() {
        let (upstream, upstream_addr) = FakeUpstream::new().await;
        let limits = Limits::new(256, 1, 64, TCP_IDLE_TIMEOUT);
        let (server, shutdown) = udp_server_with(Some(upstream_addr), limits).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let soon = Duration::from_secs(5);

        client
            .send_to(&query_with_id("one.example.com", 1), server)
            .await
            .unwrap();
        // once the upstream has it, the only forward slot is taken
        let first = upstream.relayed(soon).await.expect("the first is relayed");
        client
            .send_to(&query_with_id("two.example.com", 2), server)
            .await
            .unwrap();
        let reply = next_reply(&client, soon).await.unwrap();
        assert_eq!(reply.id(), 2);
        assert_eq!(reply.response_code(), ResponseCode::ServFail);
        assert!(upstream.relayed(Duration::from_millis(200)).await.is_none());

        // the first is still relayed, and its slot is free again afterwards
        upstream.answer(&first).await;
        let reply = next_reply(&client, soon).await.unwrap();
        assert_eq!(reply.id(), 1);
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        client
            .send_to(&query_with_id("three.example.com", 3), server)
            .await
            .unwrap();
        let third = upstream.relayed(soon).await.expect("the slot was released");
        upstream.answer(&third).await;
        assert_eq!(next_reply(&client, soon).await.unwrap().id(), 3);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn when_all_query_slots_are_busy_cluster_names_are_answered_and_others_dropped() {
        let (upstream, upstream_addr) = FakeUpstream::new().await;
        let limits = Limits::new(1, 64, 64, TCP_IDLE_TIMEOUT);
        let (server, shutdown) = udp_server_with(Some(upstream_addr), limits).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let soon = Duration::from_secs(5);

        client
            .send_to(&query_with_id("one.example.com", 1), server)
            .await
            .unwrap();
        // the only query slot is held while the upstream thinks
        let first = upstream.relayed(soon).await.expect("the first is relayed");
        client
            .send_to(&query_with_id("two.example.com", 2), server)
            .await
            .unwrap();
        client
            .send_to(&query_with_id("main.db.svc.cluster.local", 3), server)
            .await
            .unwrap();
        let reply = next_reply(&client, soon).await.unwrap();
        assert_eq!(reply.id(), 3, "the cluster name is answered at once");
        assert_eq!(a_records(&reply), [ip("127.1.0.5"), ip("127.1.0.6")]);
        assert!(
            upstream.relayed(Duration::from_millis(200)).await.is_none(),
            "the second outside name is dropped, not relayed"
        );

        upstream.answer(&first).await;
        assert_eq!(next_reply(&client, soon).await.unwrap().id(), 1);
        assert!(next_reply(&client, Duration::from_millis(200))
            .await
            .is_none());
        shutdown.cancel();
    }

    #[tokio::test]
    async fn an_upstream_reply_too_long_to_relay_over_udp_is_truncated() {
        let (upstream, upstream_addr) = FakeUpstream::new().await;
        let (server, shutdown) = udp_server(Some(upstream_addr)).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let soon = Duration::from_secs(5);
        // no EDNS, so the client takes 512 bytes; the buffer holds MIN_FORWARD_BUFFER
        for (id, size) in [(1, MIN_FORWARD_BUFFER), (2, MIN_FORWARD_BUFFER + 1)] {
            client
                .send_to(&query_with_id("big.example.com", id), server)
                .await
                .unwrap();
            let (query, from) = upstream.relayed(soon).await.unwrap();
            let mut long = query.clone();
            long[2] |= 0x80; // QR: a response
            long.resize(size, 0);
            upstream.0.send_to(&long, from).await.unwrap();
            let mut buf = vec![0u8; 2 * MIN_FORWARD_BUFFER];
            let len = tokio::time::timeout(soon, client.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            if size <= MIN_FORWARD_BUFFER {
                // relayed as it is
                assert_eq!(buf[..len], long[..]);
            } else {
                let reply = Message::from_vec(&buf[..len]).unwrap();
                assert_eq!(reply.id(), id);
                assert!(reply.truncated());
                assert!(reply.answers().is_empty());
            }
        }
        shutdown.cancel();
    }

    #[tokio::test]
    async fn silent_upstream_is_servfail_and_does_not_delay_cluster_names() {
        // bound but never answering
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (server, shutdown) = udp_server(Some(upstream.local_addr().unwrap())).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let outside = query("example.com", RecordType::A).to_vec().unwrap();
        client.send_to(&outside, server).await.unwrap();
        let mut inside = query("main.db.svc.cluster.local", RecordType::A);
        inside.set_id(1);
        client
            .send_to(&inside.to_vec().unwrap(), server)
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = vec![0u8; 4096];
        let len = client.recv(&mut buf).await.unwrap();
        let first = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(first.id(), 1, "the cluster answer comes first");
        assert!(started.elapsed() < FORWARD_TIMEOUT);
        let len = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let second = Message::from_vec(&buf[..len]).unwrap();
        assert_eq!(second.id(), 4711);
        assert_eq!(second.response_code(), ResponseCode::ServFail);
        assert!(started.elapsed() >= FORWARD_TIMEOUT - Duration::from_millis(100));
        shutdown.cancel();
    }
}
