//! The TCP fault proxy (`nats_testkit::netfault`): raw TCP behaviour against an echo server
//! (order under jitter, refusal while cut, teardown on drop) and NATS request/reply through
//! the proxy against a real server (latency, cut and restore, hold and release).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, Event};
use futures::StreamExt;
use nats_testkit::netfault::{Proxy, ProxyConfig};
use nats_testkit::{EnvConfig, NatsEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const SUBJECT: &str = "netfault.echo";

/// Request timeout of clients going through the proxy: short, so that a request during a
/// fault fails quickly, and far above the injected latencies.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(750);

/// A TCP server echoing everything back, until the handle is aborted.
async fn echo_server() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo server");
    let addr = listener.local_addr().expect("echo server address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

/// Reads until end of stream or error; `true` if the peer closed within `timeout`.
async fn closes_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let mut buf = [0u8; 256];
    tokio::time::timeout(timeout, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn byte_order_survives_jitter() {
    common::init_tracing();
    let (echo, _server) = echo_server().await;
    let proxy = Proxy::start_with(ProxyConfig {
        upstream: echo,
        seed: 11,
        latency: Duration::from_millis(1),
        jitter: Duration::from_millis(15),
        ..Default::default()
    })
    .await
    .expect("proxy starts");
    let stream = TcpStream::connect(proxy.addr()).await.expect("connect through proxy");
    let (mut r, mut w) = stream.into_split();
    const N: u32 = 2000;
    let writer = tokio::spawn(async move {
        for i in 0..N {
            w.write_all(&i.to_be_bytes()).await.expect("write");
            if i % 20 == 0 {
                // Spread the writes over many chunks, each with its own jitter.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        w
    });
    let mut got = vec![0u8; N as usize * 4];
    tokio::time::timeout(Duration::from_secs(30), r.read_exact(&mut got)).await.expect("echo arrives in time").expect("read echo");
    let _w = writer.await.expect("writer");
    for (i, word) in got.chunks_exact(4).enumerate() {
        assert_eq!(u32::from_be_bytes(word.try_into().unwrap()), i as u32, "byte order broken at word {i}");
    }
    let stats = proxy.stats();
    assert_eq!(stats.accepted, 1);
    assert_eq!(stats.bytes_to_upstream, u64::from(N) * 4);
    assert_eq!(stats.bytes_to_client, u64::from(N) * 4);
}

#[tokio::test]
async fn cut_closes_and_refuses_until_restored() {
    common::init_tracing();
    let (echo, _server) = echo_server().await;
    let proxy = Proxy::start(echo, 1).await.expect("proxy starts");
    let mut before = TcpStream::connect(proxy.addr()).await.expect("connect");
    before.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    before.read_exact(&mut buf).await.expect("echo before the cut");
    assert_eq!(&buf, b"ping");

    proxy.cut();
    assert!(proxy.is_cut());
    assert!(closes_within(&mut before, Duration::from_secs(5)).await, "open connection survived the cut");
    let mut during = TcpStream::connect(proxy.addr()).await.expect("tcp accept while cut");
    assert!(closes_within(&mut during, Duration::from_secs(5)).await, "connection during the cut was not closed");
    common::eventually("refusal and closed connections counted", Duration::from_secs(5), || async {
        let s = proxy.stats();
        (s.refused == 1 && s.open == 0).then_some(())
    })
    .await;

    proxy.restore();
    let mut after = TcpStream::connect(proxy.addr()).await.expect("connect after restore");
    after.write_all(b"pong").await.expect("write");
    after.read_exact(&mut buf).await.expect("echo after restore");
    assert_eq!(&buf, b"pong");
    assert_eq!(proxy.stats().accepted, 2);
}

#[tokio::test]
async fn drop_closes_connections_and_listener() {
    common::init_tracing();
    let (echo, _server) = echo_server().await;
    let proxy = Proxy::start(echo, 2).await.expect("proxy starts");
    let addr = proxy.addr();
    let mut open = TcpStream::connect(addr).await.expect("connect");
    open.write_all(b"x").await.expect("write");
    let mut one = [0u8; 1];
    open.read_exact(&mut one).await.expect("echo");
    drop(proxy);
    assert!(closes_within(&mut open, Duration::from_secs(5)).await, "connection outlived the proxy");
    common::eventually("listener closed", Duration::from_secs(5), || async { TcpStream::connect(addr).await.is_err().then_some(()) }).await;
}

/// A NATS server, a responder connected to it directly, and a proxy in front of it.
struct Setup {
    /// Keeps the server alive.
    _nats: NatsEnv,
    /// Keeps the responder alive.
    _responder: JoinHandle<()>,
    proxy: Proxy,
}

async fn setup(seed: u64) -> Setup {
    let nats = common::start_nats(EnvConfig::single()).await;
    let direct = nats.connect().await.expect("direct client connects");
    let mut requests = direct.subscribe(SUBJECT).await.expect("subscribe");
    direct.flush().await.expect("flush subscription");
    let responder = tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            if let Some(reply) = msg.reply {
                let _ = direct.publish(reply, msg.payload).await;
            }
        }
    });
    let upstream = SocketAddr::from(([127, 0, 0, 1], nats.nodes()[0].client_port()));
    let proxy = Proxy::start(upstream, seed).await.expect("proxy starts");
    Setup { _nats: nats, _responder: responder, proxy }
}

/// A client through the proxy, reconnecting quickly, reporting its events on the channel.
async fn client_through(proxy: &Proxy) -> (Client, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = ConnectOptions::new()
        .ignore_discovered_servers()
        .request_timeout(Some(REQUEST_TIMEOUT))
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(event);
            }
        })
        .connect(proxy.url())
        .await
        .expect("client connects through the proxy");
    (client, rx)
}

async fn request(client: &Client) -> Result<(), String> {
    let reply = client.request(SUBJECT, "hello".into()).await.map_err(|e| e.to_string())?;
    assert_eq!(reply.payload.as_ref(), b"hello");
    Ok(())
}

async fn wait_for_event(events: &mut mpsc::UnboundedReceiver<Event>, wanted: Event, timeout: Duration) {
    let found = tokio::time::timeout(timeout, async {
        while let Some(event) = events.recv().await {
            if event.to_string() == wanted.to_string() {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "no {wanted} event within {timeout:?}");
}

#[tokio::test]
async fn request_reply_and_latency_through_proxy() {
    let s = setup(3).await;
    let (client, _events) = client_through(&s.proxy).await;
    request(&client).await.expect("request through the proxy");
    let started = Instant::now();
    request(&client).await.expect("request through the proxy");
    eprintln!("round trip without latency: {:?}", started.elapsed());

    // The request crosses the proxy once each way (the responder is connected directly).
    s.proxy.set_latency(Duration::from_millis(50), Duration::ZERO);
    for _ in 0..3 {
        let started = Instant::now();
        request(&client).await.expect("request with latency");
        let rtt = started.elapsed();
        eprintln!("round trip with 50 ms latency each way: {rtt:?}");
        assert!(rtt >= Duration::from_millis(100), "round trip {rtt:?} shorter than two 50 ms crossings");
    }

    s.proxy.set_latency(Duration::from_millis(20), Duration::from_millis(30));
    let started = Instant::now();
    request(&client).await.expect("request with jitter");
    assert!(started.elapsed() >= Duration::from_millis(40));

    s.proxy.clear_latency();
    assert_eq!(s.proxy.latency(), (Duration::ZERO, Duration::ZERO));
    request(&client).await.expect("request after clearing latency");
    let stats = s.proxy.stats();
    assert_eq!((stats.accepted, stats.open, stats.refused), (1, 1, 0));
    assert!(stats.bytes_to_upstream > 0 && stats.bytes_to_client > 0, "{stats:?}");
}

#[tokio::test]
async fn cut_disconnects_and_restore_reconnects() {
    let s = setup(4).await;
    let (client, mut events) = client_through(&s.proxy).await;
    request(&client).await.expect("request before the cut");

    s.proxy.cut();
    wait_for_event(&mut events, Event::Disconnected, Duration::from_secs(10)).await;
    let failed = request(&client).await;
    assert!(failed.is_err(), "request succeeded during the cut");
    // The client keeps trying; the proxy turns it away.
    common::eventually("a refused reconnect", Duration::from_secs(10), || async { (s.proxy.stats().refused >= 1).then_some(()) }).await;

    s.proxy.restore();
    common::eventually("a request after restore", Duration::from_secs(20), || async { request(&client).await.ok() }).await;
    let stats = s.proxy.stats();
    assert!(stats.accepted >= 2, "no reconnect through the proxy: {stats:?}");
    assert_eq!(stats.open, 1, "{stats:?}");
}

#[tokio::test]
async fn hold_times_out_requests_but_keeps_the_connection() {
    let s = setup(5).await;
    let (client, _events) = client_through(&s.proxy).await;
    request(&client).await.expect("request before the hold");

    s.proxy.hold();
    assert!(s.proxy.is_held());
    let failed = request(&client).await;
    assert!(failed.is_err(), "request succeeded through a black hole");
    assert_eq!(client.connection_state(), async_nats::connection::State::Connected);
    let stats = s.proxy.stats();
    assert_eq!((stats.accepted, stats.open), (1, 1), "the connection did not stay up: {stats:?}");

    s.proxy.release();
    common::eventually("a request after release", Duration::from_secs(10), || async { request(&client).await.ok() }).await;
    assert_eq!(s.proxy.stats().accepted, 1, "the client had to reconnect");
}
