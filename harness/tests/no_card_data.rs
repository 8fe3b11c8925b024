//! No card data in the clear outside the request body: never in a subject, a header, a log
//! line or a report.
//!
//! Flows run with fixture test cards through real NATS while a core subscription on `>` taps
//! every message on the server and a tracing subscriber (installed here before anything else,
//! at `debug`) writes every log line into a buffer. Then:
//! - subjects and header values hold no Luhn-valid card number and no known test card, and no
//!   header is named like card data (checked on the wire and on the messages the streams store);
//! - the log text and every file of a demo report and a scenario report hold no known card
//!   number and no card field (`card_number`, `card_cvc`, `"cvc"`);
//! - the card did travel, in request bodies (the check is not vacuous), and a bridge with the
//!   `card_data_in_headers` defect is caught by the same check.
//!
//! Logs and reports are searched for the known card numbers (every test card, and every
//! Luhn-valid number literal in the workloads' sources) rather than for any Luhn-valid number:
//! they carry epoch timestamps, 13 to 19 digits, a tenth of which pass the Luhn check.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use harness::scenario::checkers::card_numbers;
use hs_fixtures::{operations, Fixtures, Sample, TEST_CARDS};
use nats_bridge::{catalogue, Bridge, Operation};

/// What is logged while the tests run: our crates at debug, chatty libraries at info.
const LOG_FILTER: &str =
    "debug,async_nats=info,hyper=info,hyper_util=info,reqwest=info,h2=info,tower=info,rustls=info,bollard=info,testcontainers=info";

/// Tests of this file run one at a time, so each reads only its own log lines.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// A writer appending to the shared buffer.
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process's log buffer; the first call installs the global subscriber (the shared test
/// helpers' own `try_init` then leaves it in place).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(LOG_FILTER))
            .with_ansi(false)
            .with_writer(move || Buffer(writer.clone()))
            .try_init()
            .expect("this file installs the first tracing subscriber");
        buf
    })
    .clone()
}

fn log_len() -> usize {
    logs().lock().expect("log buffer").len()
}

fn logs_since(mark: usize) -> String {
    String::from_utf8_lossy(&logs().lock().expect("log buffer")[mark..]).into_owned()
}

/// Every card number the project's workloads and fixtures use.
fn known_cards() -> BTreeSet<String> {
    let mut cards: BTreeSet<String> = TEST_CARDS.iter().map(|c| c.number.to_string()).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    for dir in ["harness/src", "harness/tests", "gateway/src", "worker/src", "processor/src", "loadtest/src", "fixtures/src", "scenarios"] {
        for file in files(&root.join(dir)) {
            if let Ok(text) = std::fs::read_to_string(&file) {
                cards.extend(card_numbers(&text).into_iter().filter(|n| n.len() >= 14));
            }
        }
    }
    assert!(cards.contains("4242424242424242") && cards.contains("4111111111111111"), "the workloads' cards are known");
    cards
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The last four digits only: this output is a log too.
fn masked(number: &str) -> String {
    format!("****{}", &number[number.len() - 4..])
}

/// Card data in free text (a log, a report file).
fn in_text(place: &str, text: &str, cards: &BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> =
        cards.iter().filter(|c| text.contains(c.as_str())).map(|c| format!("{place}: card number {}", masked(c))).collect();
    for field in ["card_number", "card_cvc", "\"cvc\""] {
        if text.contains(field) {
            out.push(format!("{place}: a {field} field"));
        }
    }
    out
}

/// Card data in a subject or a header: any Luhn-valid number (except in JetStream's own ack
/// subjects, which end in nanosecond timestamps), a known card, or a card-like header name.
fn in_message(place: &str, subject: &str, headers: &[(String, String)], cards: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let luhn = |s: &str| card_numbers(s).into_iter().filter(|n| cards.contains(n) || !subject.starts_with("$JS.ACK.")).collect::<Vec<_>>();
    for n in luhn(subject) {
        out.push(format!("{place}: subject {subject} holds card number {}", masked(&n)));
    }
    out.extend(in_text(&format!("{place}: subject"), subject, cards).into_iter().filter(|f| !f.contains(" field")));
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if lower.contains("card") || lower.contains("cvc") {
            out.push(format!("{place}: header {name} is named like card data"));
        }
        for n in luhn(value) {
            out.push(format!("{place}: header {name} holds card number {}", masked(&n)));
        }
        out.extend(in_text(&format!("{place}: header {name}"), value, cards));
    }
    out
}

/// One message seen on the server.
#[derive(Debug, Clone)]
struct Seen {
    subject: String,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
}

/// Records every message published on the server (`>`), from now on.
async fn tap(client: &async_nats::Client) -> (Arc<Mutex<Vec<Seen>>>, tokio::task::JoinHandle<()>) {
    let mut sub = client.subscribe(">").await.expect("subscribe to >");
    client.flush().await.expect("flush");
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let headers = m
                .headers
                .iter()
                .flat_map(|h| h.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.as_str().to_string()))))
                .collect();
            sink.lock().expect("tap").push(Seen { subject: m.subject.to_string(), headers, payload: m.payload.to_vec() });
        }
    });
    (seen, task)
}

/// Waits until the tap has seen everything published so far (a marker message comes last).
async fn drain(client: &async_nats::Client, seen: &Arc<Mutex<Vec<Seen>>>) {
    let marker = format!("tap.marker.{}", uuid::Uuid::new_v4().simple());
    client.publish(marker.clone(), "".into()).await.expect("publish marker");
    client.flush().await.expect("flush");
    common::eventually("the tap to catch up", Duration::from_secs(10), || {
        let found = seen.lock().expect("tap").iter().any(|s| s.subject == marker);
        async move { found.then_some(()) }
    })
    .await;
}

/// The operations whose router data carries the card.
fn card_carriers() -> Vec<Operation> {
    ["payments.authorize", "mandates.setup", "tokens.create"].iter().map(|n| catalogue::find(n).expect(n)).collect()
}

fn with_card(mut s: Sample, number: &str) -> Sample {
    s.payment.card.number = number.to_string();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_data_travels_only_in_request_bodies() {
    let _serial = SERIAL.lock().await;
    let mark = log_len();
    let cards = known_cards();
    let env = common::single(1).await;
    let tap_client = env.nats().connect().await.expect("tap connection");
    let (seen, tap_task) = tap(&tap_client).await;

    // Every operation once, then the card-carrying ones with every test card.
    let mut fx = Fixtures::new(61);
    let sample = fx.sample();
    let mut calls = 0;
    let mut used = BTreeSet::new();
    let call = |bridge: &Bridge, op: Operation, s: &Sample| {
        let request = operations::request(op, s);
        let bridge = bridge.clone();
        async move { bridge.call(&request).await.unwrap_or_else(|e| panic!("{}: {e}", op.name)) }
    };
    for op in catalogue::all() {
        call(env.bridge(), op, &sample).await;
        calls += 1;
    }
    used.insert(sample.payment.card.number.clone());
    for card in TEST_CARDS {
        let s = with_card(fx.sample(), card.number);
        for op in card_carriers() {
            call(env.bridge(), op, &s).await;
            calls += 1;
        }
        used.insert(card.number.to_string());
    }
    drain(&tap_client, &seen).await;
    let wire = seen.lock().expect("tap").clone();
    let audit = harness::scenario::observe::audit(&env).await.expect("the streams are readable");
    let log_text = logs_since(mark);

    // Not vacuous: the cards did travel, in request bodies.
    let bodies = wire.iter().filter(|m| used.iter().any(|c| String::from_utf8_lossy(&m.payload).contains(c.as_str()))).count();
    assert!(bodies >= TEST_CARDS.len() * card_carriers().len(), "only {bodies} messages carried a card in their body");
    assert!(!audit.is_empty(), "the streams stored the durable requests");
    assert!(log_text.len() > 1000, "the logs were captured ({} bytes)", log_text.len());

    let mut findings = Vec::new();
    for (i, m) in wire.iter().enumerate() {
        findings.extend(in_message(&format!("wire message {i}"), &m.subject, &m.headers, &cards));
    }
    for m in &audit {
        findings.extend(in_message(&format!("{} #{}", m.stream, m.seq), &m.subject, &m.headers, &cards));
    }
    findings.extend(in_text("logs", &log_text, &cards));
    assert!(findings.is_empty(), "card data outside request bodies:\n{}", findings.join("\n"));
    eprintln!(
        "{calls} calls, {} messages on the wire ({bodies} bodies with a card), {} stored, {} bytes of logs: no card data outside bodies",
        wire.len(),
        audit.len(),
        log_text.len()
    );

    // The same check catches the defect of a card copied into a header.
    let before = wire.len();
    let mut config = env.bridge_config().clone();
    config.defects.card_data_in_headers = true;
    let broken = Bridge::with_client(env.nats().connect().await.expect("connection"), config).await.expect("bridge");
    let s = with_card(fx.sample(), "4000056655665556");
    call(&broken, catalogue::ops::authorize(), &s).await;
    drain(&tap_client, &seen).await;
    let leaked: Vec<String> =
        seen.lock().expect("tap")[before..].iter().flat_map(|m| in_message("defect", &m.subject, &m.headers, &cards)).collect();
    assert!(leaked.iter().any(|f| f.contains("X-Card-Number")), "the card_data_in_headers defect went unnoticed: {leaked:?}");
    tap_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_and_logs_of_runs_hold_no_card_data() {
    let _serial = SERIAL.lock().await;
    let mark = log_len();
    let cards = known_cards();
    let dir = common::TempDir::new("no-card-reports");

    // The demo sends a card with every authorization; the scenario's workload creates card
    // payments through the gateway's HTTP API.
    let demo = harness::demo::run(harness::demo::DemoConfig {
        payments: 6,
        concurrency: 3,
        seed: 11,
        workers: 1,
        report_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .await
    .expect("the demo runs");
    assert!(demo.effects > 0, "the demo moved money");
    let scenario = harness::scenario::spec::Scenario::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/happy-path.toml"))
        .expect("happy-path scenario")
        .scaled(0.2);
    let report = harness::scenario::runner::run(
        &scenario,
        &harness::scenario::runner::RunOptions { seed: Some(11), report_dir: dir.path().to_path_buf(), defect: None },
    )
    .await
    .expect("the scenario runs");
    assert!(report.verdict.accounting.ok > 0, "the scenario's payments ran");

    let mut findings = Vec::new();
    let report_files = files(dir.path());
    assert!(report_files.len() >= 4, "reports written: {report_files:?}");
    for f in &report_files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        findings.extend(in_text(&f.strip_prefix(dir.path()).unwrap_or(f).display().to_string(), &text, &cards));
    }
    let log_text = logs_since(mark);
    assert!(log_text.len() > 1000, "the logs were captured ({} bytes)", log_text.len());
    findings.extend(in_text("logs", &log_text, &cards));
    assert!(findings.is_empty(), "card data in reports or logs:\n{}", findings.join("\n"));
    eprintln!("{} report files and {} bytes of logs: no card data", report_files.len(), log_text.len());
}
