//! A TCP fault proxy between a client (the bridge or a worker) and NATS: latency, jitter, cuts
//! and black holes on the network path, while traffic flows.
//!
//! A [`Proxy`] listens on `127.0.0.1:0` and forwards every accepted connection to one upstream
//! address (a NATS client port), in both directions. Point the client at [`Proxy::url`] instead
//! of the server and inject faults with a few verbs, all callable through `&self` at any time:
//!
//! * [`Proxy::set_latency`] / [`Proxy::clear_latency`]: every chunk forwarded, in each
//!   direction, waits `base + U[0, jitter]` before it is written on. The jitter is drawn from a
//!   seeded RNG (see [`Delays`]), and a chunk is never released before the one read ahead of it
//!   on the same connection direction, so byte order is preserved.
//! * [`Proxy::cut`] / [`Proxy::restore`]: a cut closes every open connection now (both sides
//!   see end of stream) and refuses new ones (accepted and closed at once) until restored.
//! * [`Proxy::hold`] / [`Proxy::release`]: a black hole. Connections stay open but nothing is
//!   forwarded. The proxy keeps reading into a bounded per-direction queue
//!   ([`ProxyConfig::queue_chunks`]); once that is full it stops reading, so the sender's TCP
//!   window fills as it would behind a partition. On release the queued data is delivered in
//!   order and forwarding resumes (as when a partition heals before TCP gives up); nothing is
//!   dropped. To model a partition that outlasts TCP's patience, [`Proxy::cut`] after holding.
//! * [`Proxy::stats`]: connections accepted, open and refused, bytes each way.
//!
//! Dropping the proxy stops the listener and aborts every connection task.
//!
//! A client going through the proxy must not learn other server addresses from the server's
//! `INFO` (it would reconnect around the proxy): connect with
//! `async_nats::ConnectOptions::ignore_discovered_servers`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use nats_testkit::netfault::Proxy;
//! use nats_testkit::NatsEnv;
//!
//! let nats = NatsEnv::single().await?;
//! let upstream = SocketAddr::from(([127, 0, 0, 1], nats.nodes()[0].client_port()));
//! let proxy = Proxy::start(upstream, 7).await?;
//! let client = async_nats::ConnectOptions::new()
//!     .ignore_discovered_servers()
//!     .connect(proxy.url())
//!     .await?;
//! proxy.set_latency(Duration::from_millis(50), Duration::from_millis(10));
//! proxy.cut();
//! proxy.restore();
//! # let _ = client;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

/// How a [`Proxy`] is set up. Build with `..Default::default()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Where accepted connections are forwarded (a NATS client port). The default,
    /// `127.0.0.1:4222`, is the NATS default port; tests set it to their server's port.
    pub upstream: SocketAddr,
    /// Seeds every jitter draw, so the same seed gives the same delay sequence per connection
    /// direction (see [`Delays::for_direction`]) and a run can be replayed.
    pub seed: u64,
    /// Address to listen on; port 0 picks a free port. Default `127.0.0.1:0`, so the proxy is
    /// only reachable from this host.
    pub listen: SocketAddr,
    /// Base latency from the start, as if [`Proxy::set_latency`] were called before the first
    /// connection; lets a client connect over an already slow network. Default zero.
    pub latency: Duration,
    /// Jitter from the start (see [`ProxyConfig::latency`]). Default zero.
    pub jitter: Duration,
    /// Largest chunk read (and delayed as a unit) at once, in bytes. Default 16 KiB.
    pub chunk_size: usize,
    /// Chunks queued per connection direction before the proxy stops reading from the sender;
    /// bounds memory and gives backpressure while data is delayed or held. Default 64.
    pub queue_chunks: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            upstream: SocketAddr::from((Ipv4Addr::LOCALHOST, 4222)),
            seed: 0,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            chunk_size: 16 * 1024,
            queue_chunks: 64,
        }
    }
}

/// One direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the client to the upstream server.
    ToUpstream,
    /// From the upstream server to the client.
    ToClient,
}

/// Counters of a [`Proxy`], as returned by [`Proxy::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted and forwarded (refused ones are not counted here); tells a test
    /// how often a client (re)connected through the proxy.
    pub accepted: u64,
    /// Connections currently open; shows whether a client is still connected (for example
    /// during [`Proxy::hold`]) and that a cut or drop closed everything.
    pub open: u64,
    /// Connections accepted and closed at once because the proxy was cut; shows that a
    /// client tried to reconnect during a cut.
    pub refused: u64,
    /// Connections closed because the upstream could not be reached; separates a dead server
    /// from an injected fault.
    pub upstream_failures: u64,
    /// Bytes written to the upstream (client to server); shows traffic actually got through.
    pub bytes_to_upstream: u64,
    /// Bytes written to clients (server to client).
    pub bytes_to_client: u64,
}

/// The jitter generator of one connection direction: a seeded RNG drawing each chunk's delay.
///
/// Every direction of every connection has its own generator, seeded from the proxy's seed,
/// the connection's number (0, 1, ... in accept order) and the direction, so the delays drawn
/// on one connection do not depend on traffic on the others. The same seed, connection number
/// and direction always give the same sequence.
#[derive(Debug, Clone)]
pub struct Delays {
    /// The seeded source of jitter draws.
    rng: StdRng,
}

impl Delays {
    /// A generator seeded with `seed` directly.
    pub fn new(seed: u64) -> Delays {
        Delays { rng: StdRng::seed_from_u64(seed) }
    }

    /// The generator a proxy seeded with `seed` uses for `direction` of its `connection`-th
    /// connection (counted from 0 in accept order).
    pub fn for_direction(seed: u64, connection: u64, direction: Direction) -> Delays {
        let dir = match direction {
            Direction::ToUpstream => 1,
            Direction::ToClient => 2,
        };
        let mixed = splitmix64(splitmix64(seed ^ splitmix64(connection)) ^ dir);
        Delays::new(mixed)
    }

    /// The next delay: `base` plus a jitter drawn uniformly from `[0, jitter]` (nanosecond
    /// resolution). With zero jitter nothing is drawn and the delay is `base`.
    pub fn next_delay(&mut self, base: Duration, jitter: Duration) -> Duration {
        if jitter.is_zero() {
            return base;
        }
        let max = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
        base.saturating_add(Duration::from_nanos(self.rng.random_range(0..=max)))
    }
}

/// The SplitMix64 finaliser: spreads nearby inputs (seed 1, 2, ...) over the whole range.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// When a chunk read at `now` may be written on: after its `delay`, and never before the
/// chunk read ahead of it (`previous`), so a short delay cannot overtake a long one.
fn release_at(now: Instant, delay: Duration, previous: Option<Instant>) -> Instant {
    let at = now + delay;
    match previous {
        Some(previous) if previous > at => previous,
        _ => at,
    }
}

/// A TCP proxy to one upstream address that injects network faults on command.
///
/// See the [module documentation](self) for the verbs and their semantics.
pub struct Proxy {
    /// State shared with the listener and connection tasks; the verbs act on it.
    shared: Arc<Shared>,
    /// The accept loop, aborted on drop.
    listener: JoinHandle<()>,
}

/// What the proxy's tasks share.
struct Shared {
    /// Where connections go.
    upstream: SocketAddr,
    /// The bound listening address (port 0 resolved).
    addr: SocketAddr,
    /// Seeds the per-direction [`Delays`].
    seed: u64,
    /// Read buffer size per direction.
    chunk_size: usize,
    /// Queue bound per direction.
    queue_chunks: usize,
    /// Current base latency and jitter, read for every chunk.
    latency: Mutex<(Duration, Duration)>,
    /// Whether the proxy holds (black-holes) traffic; writers wait while it is `true`.
    held: watch::Sender<bool>,
    /// Open connections and the cut/closed flags, under one lock so that admitting a
    /// connection and cutting (or dropping) cannot interleave.
    conns: Mutex<Conns>,
    /// Counters for [`Proxy::stats`].
    counters: Counters,
}

/// The connection registry.
#[derive(Default)]
struct Conns {
    /// Refuse new connections (set by [`Proxy::cut`], cleared by [`Proxy::restore`]).
    cut: bool,
    /// The proxy was dropped: refuse everything, forever.
    closed: bool,
    /// Number of the next accepted connection (seeds its [`Delays`]).
    next_id: u64,
    /// Abort handles of the open connections' tasks, by connection number.
    tasks: HashMap<u64, AbortHandle>,
}

/// Atomic counters behind [`ProxyStats`].
#[derive(Default)]
struct Counters {
    /// Behind [`ProxyStats::accepted`].
    accepted: AtomicU64,
    /// Behind [`ProxyStats::open`]; decremented by each connection's [`OpenGuard`].
    open: AtomicU64,
    /// Behind [`ProxyStats::refused`].
    refused: AtomicU64,
    /// Behind [`ProxyStats::upstream_failures`].
    upstream_failures: AtomicU64,
    /// Behind [`ProxyStats::bytes_to_upstream`].
    bytes_to_upstream: AtomicU64,
    /// Behind [`ProxyStats::bytes_to_client`].
    bytes_to_client: AtomicU64,
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `upstream`, with jitter seeded by `seed`
    /// and no fault active. Must be called within a Tokio runtime.
    pub async fn start(upstream: SocketAddr, seed: u64) -> io::Result<Proxy> {
        Proxy::start_with(ProxyConfig { upstream, seed, ..Default::default() }).await
    }

    /// Starts a proxy as configured. Must be called within a Tokio runtime.
    pub async fn start_with(config: ProxyConfig) -> io::Result<Proxy> {
        if config.chunk_size == 0 || config.queue_chunks == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "proxy chunk_size and queue_chunks must be positive"));
        }
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("binding fault proxy on {}: {e}", config.listen)))?;
        let addr = listener.local_addr()?;
        let (held, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            upstream: config.upstream,
            addr,
            seed: config.seed,
            chunk_size: config.chunk_size,
            queue_chunks: config.queue_chunks,
            latency: Mutex::new((config.latency, config.jitter)),
            held,
            conns: Mutex::new(Conns::default()),
            counters: Counters::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        tracing::info!(
            "net fault: proxy {addr} -> {} started (seed {}, latency {:?} + jitter {:?})",
            config.upstream,
            config.seed,
            config.latency,
            config.jitter
        );
        Ok(Proxy { shared, listener: accept })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `nats://127.0.0.1:<port>`: the URL to give a NATS client instead of the server's.
    pub fn url(&self) -> String {
        format!("nats://{}", self.shared.addr)
    }

    /// Where connections are forwarded.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Delays every chunk forwarded from now on, each direction, by `base` plus a jitter drawn
    /// uniformly from `[0, jitter]`. Order within a connection direction is preserved. Chunks
    /// already queued keep the release time they were given.
    pub fn set_latency(&self, base: Duration, jitter: Duration) {
        *lock(&self.shared.latency) = (base, jitter);
        tracing::info!("net fault: latency {base:?} + jitter {jitter:?} on proxy {} -> {}", self.shared.addr, self.shared.upstream);
    }

    /// Removes the latency: chunks read from now on are forwarded as soon as the ones ahead of
    /// them are.
    pub fn clear_latency(&self) {
        *lock(&self.shared.latency) = (Duration::ZERO, Duration::ZERO);
        tracing::info!("net fault: latency cleared on proxy {} -> {}", self.shared.addr, self.shared.upstream);
    }

    /// The current base latency and jitter.
    pub fn latency(&self) -> (Duration, Duration) {
        *lock(&self.shared.latency)
    }

    /// Closes every open connection (both sides see end of stream once their tasks are
    /// cancelled, within a scheduler turn; queued data is dropped) and refuses new connections
    /// (accepted, then closed at once) until [`Proxy::restore`].
    pub fn cut(&self) {
        let tasks: Vec<AbortHandle> = {
            let mut conns = lock(&self.shared.conns);
            conns.cut = true;
            conns.tasks.drain().map(|(_, task)| task).collect()
        };
        for task in &tasks {
            task.abort();
        }
        tracing::info!("net fault: cut proxy {} -> {} ({} connection(s) closed)", self.shared.addr, self.shared.upstream, tasks.len());
    }

    /// Accepts and forwards new connections again after [`Proxy::cut`]. Connections closed by
    /// the cut stay closed; clients reconnect on their own.
    pub fn restore(&self) {
        lock(&self.shared.conns).cut = false;
        tracing::info!("net fault: restored proxy {} -> {}", self.shared.addr, self.shared.upstream);
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        lock(&self.shared.conns).cut
    }

    /// Black-holes traffic: connections stay open (and new ones are accepted and connected
    /// upstream) but nothing is forwarded until [`Proxy::release`]. Data keeps being read into
    /// the bounded queues, then the senders are back-pressured.
    pub fn hold(&self) {
        self.shared.held.send_replace(true);
        tracing::info!("net fault: hold proxy {} -> {} (black hole)", self.shared.addr, self.shared.upstream);
    }

    /// Ends [`Proxy::hold`]: data held back is delivered in order, then forwarding continues.
    pub fn release(&self) {
        self.shared.held.send_replace(false);
        tracing::info!("net fault: released proxy {} -> {}", self.shared.addr, self.shared.upstream);
    }

    /// Whether the proxy holds traffic.
    pub fn is_held(&self) -> bool {
        *self.shared.held.borrow()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            open: c.open.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            upstream_failures: c.upstream_failures.load(Ordering::Relaxed),
            bytes_to_upstream: c.bytes_to_upstream.load(Ordering::Relaxed),
            bytes_to_client: c.bytes_to_client.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.shared.addr)
            .field("upstream", &self.shared.upstream)
            .field("seed", &self.shared.seed)
            .field("latency", &self.latency())
            .field("cut", &self.is_cut())
            .field("held", &self.is_held())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.listener.abort();
        let tasks: Vec<AbortHandle> = {
            let mut conns = lock(&self.shared.conns);
            conns.closed = true;
            conns.tasks.drain().map(|(_, task)| task).collect()
        };
        for task in &tasks {
            task.abort();
        }
        tracing::info!("net fault: proxy {} -> {} stopped ({} connection(s) closed)", self.shared.addr, self.shared.upstream, tasks.len());
    }
}

/// Locks a mutex, ignoring poisoning (the guarded data stays consistent: every critical
/// section is a few plain assignments).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Accepts connections until aborted.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => admit(&shared, stream, peer),
            Err(e) => {
                // Typically out of file descriptors; back off instead of spinning.
                tracing::warn!("fault proxy {} failed to accept: {e}", shared.addr);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Starts forwarding an accepted connection, or closes it if the proxy is cut or dropped.
fn admit(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let mut conns = lock(&shared.conns);
    if conns.closed {
        return;
    }
    if conns.cut {
        drop(conns);
        shared.counters.refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!("fault proxy {} refused {peer} (cut)", shared.addr);
        drop(stream);
        return;
    }
    let id = conns.next_id;
    conns.next_id += 1;
    shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
    shared.counters.open.fetch_add(1, Ordering::Relaxed);
    // Built before spawning so that it is dropped (and the connection unregistered) even if
    // the task is aborted before it first runs.
    let guard = OpenGuard { shared: Arc::clone(shared), id };
    let task_shared = Arc::clone(shared);
    let task = tokio::spawn(async move {
        let _guard = guard;
        match forward(&task_shared, id, stream).await {
            Ok(()) => tracing::debug!("fault proxy {} connection {id} from {peer} ended", task_shared.addr),
            Err(e) => tracing::debug!("fault proxy {} connection {id} from {peer} ended: {e}", task_shared.addr),
        }
    });
    conns.tasks.insert(id, task.abort_handle());
}

/// Unregisters a connection when its task ends or is aborted.
struct OpenGuard {
    /// Holds the registry and counters.
    shared: Arc<Shared>,
    /// The connection's number.
    id: u64,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.shared.counters.open.fetch_sub(1, Ordering::Relaxed);
        lock(&self.shared.conns).tasks.remove(&self.id);
    }
}

/// Connects upstream and pumps both directions until both have ended or either fails.
async fn forward(shared: &Arc<Shared>, id: u64, client: TcpStream) -> io::Result<()> {
    let upstream = match TcpStream::connect(shared.upstream).await {
        Ok(upstream) => upstream,
        Err(e) => {
            shared.counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("fault proxy {} cannot reach upstream {}: {e}", shared.addr, shared.upstream);
            return Err(e);
        }
    };
    // Small NATS frames should not wait for Nagle on top of the injected latency.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::try_join!(
        pump(shared, id, Direction::ToUpstream, client_read, upstream_write),
        pump(shared, id, Direction::ToClient, upstream_read, client_write),
    )?;
    Ok(())
}

/// A chunk waiting in a direction's queue.
struct Chunk {
    /// The bytes as read.
    data: Bytes,
    /// When it may be written on.
    release_at: Instant,
}

/// Forwards one direction: a reader stamps each chunk with its release time and queues it, a
/// writer writes chunks in order once released and not held. At end of stream the queue is
/// drained and the write side shut down; an error on either side ends the direction.
async fn pump(shared: &Shared, id: u64, direction: Direction, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Chunk>(shared.queue_chunks);
    let reader = async move {
        let mut delays = Delays::for_direction(shared.seed, id, direction);
        let mut previous = None;
        let mut buf = vec![0u8; shared.chunk_size];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), io::Error>(());
            }
            let now = Instant::now();
            let (base, jitter) = *lock(&shared.latency);
            let at = release_at(now, delays.next_delay(base, jitter), previous);
            previous = Some(at);
            let chunk = Chunk { data: Bytes::copy_from_slice(&buf[..n]), release_at: at };
            if tx.send(chunk).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async move {
        let mut held = shared.held.subscribe();
        let sent = match direction {
            Direction::ToUpstream => &shared.counters.bytes_to_upstream,
            Direction::ToClient => &shared.counters.bytes_to_client,
        };
        while let Some(chunk) = rx.recv().await {
            tokio::time::sleep_until(chunk.release_at).await;
            // The sender lives in `shared`, which outlives this task, so this cannot fail.
            let _ = held.wait_for(|held| !*held).await.map(|_| ());
            to.write_all(&chunk.data).await?;
            sent.fetch_add(chunk.data.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown().await;
        Ok::<(), io::Error>(())
    };
    tokio::try_join!(reader, writer)?;
    Ok(())
}

/// A client's whole link to NATS: one [`Proxy`] per server, faulted together. A client
/// connects through [`ProxiedLink::connect`], which never follows servers the cluster
/// advertises (that would go around the proxies) and reconnects quickly once a cut is over.
pub struct ProxiedLink {
    /// What the link is (`gateway`, `workers`), for logs.
    name: String,
    /// One proxy per server, in the servers' order.
    proxies: Vec<Proxy>,
}

impl ProxiedLink {
    /// Starts one proxy per upstream server; each proxy's jitter is seeded from `seed` and its
    /// position, so a run with the same seed draws the same delays.
    pub async fn start(name: &str, upstreams: &[SocketAddr], seed: u64) -> io::Result<ProxiedLink> {
        let mut proxies = Vec::with_capacity(upstreams.len());
        for (i, upstream) in upstreams.iter().enumerate() {
            proxies.push(Proxy::start(*upstream, seed.wrapping_add(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).await?);
        }
        tracing::info!(link = name, proxies = proxies.len(), "net fault link ready");
        Ok(ProxiedLink { name: name.to_string(), proxies })
    }

    /// Starts a link in front of servers given by URL (`nats://host:port`).
    pub async fn start_for_urls(name: &str, urls: &[String], seed: u64) -> io::Result<ProxiedLink> {
        let upstreams = urls
            .iter()
            .map(|u| {
                let hostport = u.rsplit("://").next().unwrap_or(u);
                tokio::net::lookup_host(hostport.to_string())
            })
            .collect::<Vec<_>>();
        let mut addrs = Vec::new();
        for lookup in upstreams {
            let addr = lookup.await?.next().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "server url resolves to nothing"))?;
            addrs.push(addr);
        }
        ProxiedLink::start(name, &addrs, seed).await
    }

    /// The link's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The proxies' URLs, to connect to instead of the servers.
    pub fn urls(&self) -> Vec<String> {
        self.proxies.iter().map(Proxy::url).collect()
    }

    /// Connect options for a client on this link: discovered servers ignored (they would
    /// bypass the proxies), unlimited reconnects, at most 250 ms between attempts.
    pub fn connect_options(&self) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::new()
            .ignore_discovered_servers()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| Duration::from_millis((50 * attempts as u64).min(250)))
    }

    /// Connects a client through the link.
    pub async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        self.connect_options().connect(self.urls()).await
    }

    /// Latency and jitter on every proxy (see [`Proxy::set_latency`]).
    pub fn set_latency(&self, base: Duration, jitter: Duration) {
        self.proxies.iter().for_each(|p| p.set_latency(base, jitter));
    }

    /// No added latency.
    pub fn clear_latency(&self) {
        self.proxies.iter().for_each(Proxy::clear_latency);
    }

    /// Cuts every connection and refuses new ones (see [`Proxy::cut`]).
    pub fn cut(&self) {
        self.proxies.iter().for_each(Proxy::cut);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.proxies.iter().for_each(Proxy::restore);
    }

    /// Stops forwarding, connections kept (see [`Proxy::hold`]).
    pub fn hold(&self) {
        self.proxies.iter().for_each(Proxy::hold);
    }

    /// Forwards again.
    pub fn release(&self) {
        self.proxies.iter().for_each(Proxy::release);
    }

    /// Each proxy's counters.
    pub fn stats(&self) -> Vec<ProxyStats> {
        self.proxies.iter().map(Proxy::stats).collect()
    }
}

impl fmt::Debug for ProxiedLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxiedLink").field("name", &self.name).field("proxies", &self.proxies).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(mut delays: Delays, n: usize) -> Vec<Duration> {
        (0..n).map(|_| delays.next_delay(Duration::from_millis(10), Duration::from_millis(20))).collect()
    }

    #[test]
    fn same_seed_same_delays() {
        let a = sequence(Delays::for_direction(42, 3, Direction::ToClient), 100);
        let b = sequence(Delays::for_direction(42, 3, Direction::ToClient), 100);
        assert_eq!(a, b);
        let c = sequence(Delays::new(9), 100);
        assert_eq!(c, sequence(Delays::new(9), 100));
    }

    #[test]
    fn delays_stay_in_range_and_vary() {
        let base = Duration::from_millis(10);
        let all = sequence(Delays::new(1), 1000);
        assert!(all.iter().all(|d| *d >= base && *d <= base + Duration::from_millis(20)), "{all:?}");
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert!(distinct.len() > 900, "jitter barely varies: {} distinct of 1000", distinct.len());
        // Uniform over [0, 20 ms]: the mean jitter is close to 10 ms.
        let mean = all.iter().map(|d| (*d - base).as_secs_f64()).sum::<f64>() / all.len() as f64;
        assert!((0.008..0.012).contains(&mean), "mean jitter {mean}");
    }

    #[test]
    fn streams_differ_by_seed_connection_and_direction() {
        let reference = sequence(Delays::for_direction(42, 3, Direction::ToClient), 20);
        assert_ne!(reference, sequence(Delays::for_direction(43, 3, Direction::ToClient), 20));
        assert_ne!(reference, sequence(Delays::for_direction(42, 4, Direction::ToClient), 20));
        assert_ne!(reference, sequence(Delays::for_direction(42, 3, Direction::ToUpstream), 20));
    }

    #[test]
    fn zero_jitter_is_the_base() {
        let mut delays = Delays::new(5);
        for _ in 0..10 {
            assert_eq!(delays.next_delay(Duration::from_millis(50), Duration::ZERO), Duration::from_millis(50));
        }
        assert_eq!(delays.next_delay(Duration::ZERO, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn a_chunk_never_overtakes_the_one_ahead() {
        let t0 = Instant::now();
        let first = release_at(t0, Duration::from_millis(30), None);
        assert_eq!(first, t0 + Duration::from_millis(30));
        // Read 1 ms later with a 5 ms delay: waits for the first chunk.
        let second = release_at(t0 + Duration::from_millis(1), Duration::from_millis(5), Some(first));
        assert_eq!(second, first);
        // A longer delay is kept.
        let third = release_at(t0 + Duration::from_millis(2), Duration::from_millis(40), Some(second));
        assert_eq!(third, t0 + Duration::from_millis(42));
    }

    #[test]
    fn default_config_listens_on_loopback() {
        let config = ProxyConfig::default();
        assert_eq!(config.listen, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        assert!(config.chunk_size > 0 && config.queue_chunks > 0);
    }
}
