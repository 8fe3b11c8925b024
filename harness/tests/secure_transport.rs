//! Secure transport: a NATS server with TLS (certificates generated at test time, mutual TLS)
//! and users (a password user, an NKey user). The bridge and a worker complete an authorize
//! over it; a client without the CA, with a wrong password, without a client certificate, a
//! plain-text client, or a missing file fails fast with an error that says why.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::nats::{EnvConfig, NatsEnv, NatsUser, ServerTls};
use mock_processor::{Processor, ProcessorConfig};
use mock_worker::WorkerConfig;
use nats_bridge::catalogue::ops;
use nats_bridge::config::{AuthConfig, TlsConfig};
use nats_bridge::{Bridge, BridgeConfig, OperationRequest, ResponseStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A failure must come well within this (the connection timeout is 2s).
const FAST: Duration = Duration::from_secs(4);

/// One server with mutual TLS, a password user for the bridge and an NKey user for workers.
async fn secure_nats() -> NatsEnv {
    common::start_nats(
        EnvConfig::single()
            .with_tls(ServerTls { verify: true })
            .with_users([NatsUser::password("bridge", "bridge-secret"), NatsUser::nkey("worker")]),
    )
    .await
}

fn bridge_config(nats: &NatsEnv, tls: TlsConfig, auth: AuthConfig) -> BridgeConfig {
    BridgeConfig {
        base_url: nats.client_url(),
        connection_timeout_ms: 2_000,
        tls,
        auth,
        ..BridgeConfig::default()
    }
}

/// Connects a bridge that must fail; returns the message and checks it came fast.
async fn bridge_fails(config: BridgeConfig) -> String {
    let started = Instant::now();
    let err = Bridge::connect(config).await.err().expect("the connection must fail").to_string();
    let took = started.elapsed();
    eprintln!("failed in {took:.2?}: {err}");
    assert!(took < FAST, "took {took:?} to fail: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_and_worker_authorize_over_mutual_tls_with_users() {
    let nats = secure_nats().await;
    let sec = nats.security().expect("security files");

    let processor = Processor::new(ProcessorConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let processor_addr = listener.local_addr().unwrap();
    tokio::spawn(mock_processor::serve(listener, processor.clone(), std::future::pending::<()>()));

    let mut config = bridge_config(&nats, sec.client_tls(), sec.client_auth("bridge").unwrap());
    config.jetstream.replicas = nats.replicas();
    let bridge = Bridge::connect(config.clone()).await.expect("the bridge connects over tls with a password");
    bridge.ensure_streams().await.expect("streams");

    let worker = WorkerConfig {
        nats_url: nats.client_url(),
        processor_url: format!("http://{processor_addr}"),
        connection_timeout_ms: 2_000,
        tls: sec.client_tls(),
        auth: sec.client_auth("worker").unwrap(),
        ..WorkerConfig::default()
    };
    assert!(worker.auth.nkey_seed_file.is_some(), "the worker uses its nkey");
    let handle = mock_worker::start(worker, config.clone()).await.expect("the worker connects over tls with an nkey");

    let request = OperationRequest::new(ops::authorize(), "merchant_tls", "pay_tls_1", "att_1").router_data(common::money(1250));
    let reply = bridge.call(&request).await.expect("authorize over tls");
    assert_eq!(reply.status, ResponseStatus::Success, "{reply:?}");
    assert_eq!(reply.correlation_id, request.envelope().correlation_id);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misconfigured_clients_fail_fast_with_a_clear_error() {
    let nats = secure_nats().await;
    let sec = nats.security().expect("security files");
    let good_auth = sec.client_auth("bridge").unwrap();

    // No CA: the server's certificate is not trusted.
    let err = bridge_fails(bridge_config(&nats, TlsConfig::default(), good_auth.clone())).await;
    assert!(err.contains("tls") && err.contains("certificate"), "{err}");
    assert!(err.contains("tls.ca_file"), "the error points at the setting: {err}");

    // The CA but no client certificate: the server wants mutual TLS.
    let ca_only = TlsConfig { ca_file: Some(sec.ca_file()), ..TlsConfig::default() };
    let err = bridge_fails(bridge_config(&nats, ca_only, good_auth.clone())).await;
    assert!(err.contains("tls"), "{err}");

    // Everything right but the password.
    let wrong = AuthConfig { password: Some("not-the-password".into()), ..good_auth.clone() };
    let err = bridge_fails(bridge_config(&nats, sec.client_tls(), wrong)).await;
    assert!(err.contains("authorization violation") && err.contains("user and password"), "{err}");

    // No credentials at all.
    let err = bridge_fails(bridge_config(&nats, sec.client_tls(), AuthConfig::default())).await;
    assert!(err.contains("authorization violation"), "{err}");

    // A missing file is named before any connection is tried.
    let missing = TlsConfig { ca_file: Some(PathBuf::from("/nonexistent/hs-ca.pem")), ..TlsConfig::default() };
    let err = bridge_fails(bridge_config(&nats, missing, good_auth.clone())).await;
    assert!(err.contains("nats_bridge.tls.ca_file /nonexistent/hs-ca.pem: cannot read"), "{err}");

    // A worker with a wrong credential fails its start the same way.
    let worker = WorkerConfig {
        nats_url: nats.client_url(),
        connection_timeout_ms: 2_000,
        tls: sec.client_tls(),
        auth: AuthConfig { user: Some("worker".into()), password: Some("guess".into()), ..AuthConfig::default() },
        ..WorkerConfig::default()
    };
    let started = Instant::now();
    let err = mock_worker::start(worker, BridgeConfig::default()).await.err().expect("the worker must not start").to_string();
    assert!(started.elapsed() < FAST, "took {:?}: {err}", started.elapsed());
    assert!(err.contains("authorization violation"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_is_refused_by_a_tls_server_and_by_a_tls_client() {
    let nats = secure_nats().await;
    // A raw plain-text client: the server announces tls_required and drops a plain CONNECT.
    let addr = nats.client_urls()[0].trim_start_matches("nats://").to_string();
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    let info = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(info.starts_with("INFO ") && info.contains("\"tls_required\":true"), "{info}");
    stream
        .write_all(b"CONNECT {\"verbose\":false,\"user\":\"bridge\",\"pass\":\"bridge-secret\"}\r\nPING\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(FAST, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(read.is_ok(), "the server kept a plain-text client open: {answer}");
    assert!(!answer.contains("PONG"), "a plain-text client was served: {answer}");
    assert!(started.elapsed() < FAST);

    // A client that requires TLS refuses a plain-text server.
    let plain = common::start_nats(EnvConfig::single()).await;
    let config = BridgeConfig {
        base_url: plain.client_url(),
        connection_timeout_ms: 2_000,
        tls: TlsConfig { required: true, ..TlsConfig::default() },
        ..BridgeConfig::default()
    };
    let err = bridge_fails(config).await;
    assert!(err.contains("tls handshake failed: the server does not speak tls"), "{err}");
}
