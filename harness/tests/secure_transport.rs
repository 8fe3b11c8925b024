//! Secure transport: a NATS server with TLS (certificates generated at test time, mutual TLS)
//! and users (a password user, an NKey user). The bridge and a worker complete an authorize
//! over it; a client without the CA, with a wrong password, without a client certificate, a
//! plain-text client, or a missing file fails fast with an error that says why.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::client_security::ClientSecurity;
use harness::nats::{EnvConfig, NatsEnv, NatsUser, ServerTls};
use mock_processor::ProcessorConfig;
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
    BridgeConfig { base_url: nats.client_url(), connection_timeout_ms: 2_000, tls, auth, ..BridgeConfig::default() }
}

/// Connects a bridge that must fail; returns the message and checks it came fast.
async fn bridge_fails(config: BridgeConfig) -> String {
    let started = Instant::now();
    let err = Bridge::connect(config).await.expect_err("the connection must fail").to_string();
    let took = started.elapsed();
    eprintln!("failed in {took:.2?}: {err}");
    assert!(took < FAST, "took {took:?} to fail: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_and_worker_authorize_over_mutual_tls_with_users() {
    let nats = secure_nats().await;
    let sec = nats.security().expect("security files");

    let processor = mock_processor::spawn(ProcessorConfig::default()).await.unwrap();

    let mut config = bridge_config(&nats, sec.client_tls(), sec.client_auth("bridge").unwrap());
    config.jetstream.replicas = nats.replicas();
    let bridge = Bridge::connect(config.clone()).await.expect("the bridge connects over tls with a password");
    bridge.ensure_streams().await.expect("streams");

    let worker = WorkerConfig {
        nats_url: nats.client_url(),
        processor_url: processor.url.clone(),
        connection_timeout_ms: 2_000,
        tls: sec.client_tls(),
        auth: sec.client_auth("worker").unwrap(),
        ..WorkerConfig::default()
    };
    assert!(worker.auth.nkey_seed_file.is_some(), "the worker uses its nkey");
    let handle = mock_worker::start(worker, config.naming()).await.expect("the worker connects over tls with an nkey");

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
    let err = mock_worker::start(worker, BridgeConfig::default().naming()).await.err().expect("the worker must not start").to_string();
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
    stream.write_all(b"CONNECT {\"verbose\":false,\"user\":\"bridge\",\"pass\":\"bridge-secret\"}\r\nPING\r\n").await.unwrap();
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

/// Per-merchant subjects and per-merchant users: a worker credentialed for merchant A pulls and
/// acks A's durable messages and answers A's queries, but cannot pull from B's consumer, create
/// a consumer, listen on B's subjects, publish into B's subjects or answer on the bridge's inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchant_worker_cannot_consume_or_answer_another_merchants_messages() {
    use async_nats::jetstream;
    use harness::nats::Permissions;
    use nats_bridge::config::SubjectScheme;
    use nats_bridge::Family;

    let mut config = BridgeConfig::default();
    config.subjects.scheme = SubjectScheme::PerMerchant;
    let stream = config.stream_name(Family::Payments);
    let durable_template = config.subject_template(ops::authorize());
    let query_template = config.subject_template(nats_bridge::catalogue::find("payments.session").expect("session"));
    let durable = |m: &str| durable_template.replace("{merchant_id}", m);
    let query = |m: &str| query_template.replace("{merchant_id}", m);
    let prefix = config.subjects.prefix.clone();
    let consumer = |m: &str| format!("{m}_payments_authorize");
    let (a, b) = ("merchant_a", "merchant_b");
    let a_inbox = "_INBOX_merchant_a";

    // Worker A: its consumer's pull and ack subjects, its merchant's subjects, its own inbox.
    let worker_a = NatsUser::nkey("worker_a").with_permissions(Permissions {
        publish: vec![format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{}", consumer(a)), format!("$JS.ACK.{stream}.{}.>", consumer(a))],
        subscribe: vec![format!("{prefix}.*.{a}.>"), format!("{a_inbox}.>")],
        allow_responses: true,
    });
    let nats = common::start_nats(EnvConfig::single().with_users([NatsUser::password("bridge", "bridge-secret"), worker_a])).await;
    let sec = nats.security().expect("security files");
    config.base_url = nats.client_url();
    config.jetstream.replicas = nats.replicas();
    config.auth = sec.client_auth("bridge").unwrap();
    let bridge = Bridge::connect(config.clone()).await.expect("bridge");
    bridge.ensure_streams().await.expect("streams");

    // One durable consumer per merchant (provisioned by the operator, not the worker).
    let admin = bridge.client().clone();
    let js = jetstream::new(admin.clone());
    let payments = js.get_stream(&stream).await.expect("payments stream");
    for m in [a, b] {
        payments
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(consumer(m)),
                filter_subject: durable(m),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await
            .expect("consumer");
        js.publish(durable(m), format!("authorize for {m}").into()).await.unwrap().await.expect("stored");
    }

    // Worker A's connection, with its NKey, its own inbox prefix, and server errors collected.
    let (errors_tx, mut errors) = tokio::sync::mpsc::unbounded_channel::<String>();
    let options = nats_bridge::config::apply_security(
        "worker",
        async_nats::ConnectOptions::new().custom_inbox_prefix(a_inbox).request_timeout(Some(Duration::from_secs(1))).event_callback(
            move |event| {
                let tx = errors_tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string().to_lowercase());
                    }
                }
            },
        ),
        &TlsConfig::default(),
        &sec.client_auth("worker_a").unwrap(),
    )
    .await
    .unwrap();
    let worker = options.connect(nats.client_urls()).await.expect("worker a connects");
    let mut violation = async |what: &str| -> String {
        let deadline = Instant::now() + FAST;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, errors.recv()).await {
                Ok(Some(e)) if e.contains("permissions violation") && e.contains(what) => return e,
                Ok(Some(_)) => continue,
                _ => panic!("no permissions violation for {what}"),
            }
        }
    };
    let pull = |m: &str| format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{}", consumer(m));
    let next = br#"{"batch":1,"expires":1000000000}"#.to_vec();

    // A's own message: pulled and acked.
    // A pull delivers with the stream subject, so it needs its own inbox subscription.
    let fetch = |m: String| {
        let (worker, next) = (worker.clone(), next.clone());
        async move {
            use futures::StreamExt;
            let inbox = worker.new_inbox();
            let mut sub = worker.subscribe(inbox.clone()).await.expect("inbox subscription");
            worker.publish_with_reply(m, inbox, next.into()).await.expect("pull request");
            tokio::time::timeout(Duration::from_secs(2), sub.next()).await.ok().flatten()
        }
    };
    let msg = fetch(pull(a)).await.expect("worker a pulls its message");
    assert_eq!(msg.payload.as_ref(), format!("authorize for {a}").as_bytes());
    worker.publish(msg.reply.clone().expect("ack subject"), "+ACK".into()).await.unwrap();
    worker.flush().await.unwrap();
    let a_consumer: jetstream::consumer::PullConsumer = payments.get_consumer(&consumer(a)).await.unwrap();
    common::eventually("a's ack", FAST, || async {
        a_consumer.get_info().await.ok().filter(|i| i.num_ack_pending == 0 && i.num_pending == 0).map(|_| ())
    })
    .await;

    // B's consumer: the pull is refused and B's message stays where it is.
    assert!(fetch(pull(b)).await.is_none(), "worker a got a message from b's consumer");
    let v = violation(&format!("publish to \"{}\"", pull(b)).to_lowercase()).await;
    eprintln!("{v}");
    let b_consumer: jetstream::consumer::PullConsumer = payments.get_consumer(&consumer(b)).await.unwrap();
    let info = b_consumer.get_info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (1, 0), "b's message is untouched");

    // Nor can it make itself a consumer over B's subjects.
    let create = format!("$JS.API.CONSUMER.CREATE.{stream}.sneaky.{}", durable(b));
    worker.publish(create.clone(), "{}".into()).await.unwrap();
    violation(&format!("publish to \"{}\"", create.to_lowercase())).await;

    // Queries: A answers its own; a subscription to B's is refused, so B's query finds no one.
    let mut a_queries = worker.subscribe(query(a)).await.unwrap();
    let answering = worker.clone();
    tokio::spawn(async move {
        use futures::StreamExt;
        while let Some(m) = a_queries.next().await {
            if let Some(reply) = m.reply {
                let _ = answering.publish(reply, "answer from a".into()).await;
            }
        }
    });
    let _b_queries = worker.subscribe(query(b)).await.unwrap();
    violation(&format!("subscription to \"{}\"", query(b))).await;
    worker.flush().await.unwrap();
    let answer = admin.request(query(a), "session?".into()).await.expect("a's query is answered");
    assert_eq!(answer.payload.as_ref(), b"answer from a");
    let err = admin.request(query(b), "session?".into()).await.expect_err("nobody may answer b's query");
    assert_eq!(err.kind(), async_nats::RequestErrorKind::NoResponders, "{err}");

    // Answering B: neither a publish into B's subjects nor onto the bridge's inbox goes through.
    worker.publish(durable(b), "forged".into()).await.unwrap();
    violation(&format!("publish to \"{}\"", durable(b))).await;
    worker.publish("_INBOX.forged.reply", "forged".into()).await.unwrap();
    violation("publish to \"_inbox.forged.reply\"").await;
    let info = payments.get_info().await.unwrap();
    assert_eq!(info.state.messages, 2, "nothing forged reached the stream");
}
