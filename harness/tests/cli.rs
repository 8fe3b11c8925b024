//! The `harness` binary as a user runs it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nats_bridge::{catalogue, OperationRequest, ResponseStatus};

const HARNESS: &str = env!("CARGO_BIN_EXE_harness");

#[test]
fn catalogue_json_lists_all_35_operations_with_the_seed_patterns() {
    let out = Command::new(HARNESS).args(["catalogue", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect();
    assert_eq!(lines.len(), 35);
    let queries = [
        "payments.sync",
        "payments.session",
        "payments.post_session_tokens",
        "refunds.sync",
        "tokens.validate",
        "auth.external",
        "auth.access_token",
        "auth.auth_token",
        "webhooks.verify",
        "payouts.sync",
        "tax.calculate",
        "giftcard.balance",
    ];
    for line in &lines {
        let name = line["name"].as_str().unwrap();
        let query = queries.contains(&name);
        assert_eq!(line["pattern"], if query { "query" } else { "durable" }, "{name}");
        assert_eq!(line["stream"].is_null(), query, "{name}");
        assert_eq!(line["ack_timeout_ms"].is_null(), query, "{name}");
        assert!(line["reply_timeout_ms"].as_u64().unwrap() > 0);
        assert_eq!(line["family"], name.split('.').next().unwrap());
        assert!(line["subject"].as_str().unwrap().starts_with("hyperswitch."));
    }
    assert_eq!(lines.iter().filter(|l| l["pattern"] == "durable").count(), 23);
}

#[test]
fn catalogue_rejects_a_bad_config_file_clearly() {
    let dir = std::env::temp_dir().join(format!("hs-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[nats_bridge]\nrequest_timeout = 5\n").unwrap();
    let out = Command::new(HARNESS).args(["catalogue", "--config"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("request_timeout"), "{err}");
    std::fs::remove_dir_all(dir).ok();
}

/// `harness up` starts everything, prints `ready`, serves real calls, and stops on SIGINT.
#[tokio::test]
async fn up_prints_ready_serves_and_stops_cleanly() {
    let worker = std::path::Path::new(HARNESS).with_file_name("mock-worker");
    assert!(worker.exists(), "build the worker first: cargo build -p mock-worker");
    let mut child = Command::new(HARNESS)
        .args(["up", "--workers", "1", "--gateway-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut nats_url = None;
    let mut gateway_url = None;
    loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("`ready` in time");
        if let Some(rest) = line.strip_prefix("nats: ") {
            nats_url = rest.split_whitespace().next().map(str::to_string);
        }
        if let Some(rest) = line.strip_prefix("gateway: ") {
            gateway_url = rest.split_whitespace().next().map(str::to_string);
        }
        if line == "ready" {
            break;
        }
    }
    let url = nats_url.expect("nats address printed");
    let config = nats_bridge::BridgeConfig { base_url: url, ..Default::default() };
    let bridge = nats_bridge::Bridge::connect(config).await.unwrap();
    let op = catalogue::ops::authorize();
    let r = OperationRequest::new(op, "m_up", "pay_up", "pay_up_1").router_data(common::money(500));
    assert_eq!(bridge.call(&r).await.unwrap().status, ResponseStatus::Success);
    // The gateway answers, and runs a payment through the same workers.
    let gateway = gateway_url.expect("gateway address printed");
    let resp = reqwest::Client::new()
        .post(format!("{gateway}/payments"))
        .header("api-key", "dev_key_merchant_1")
        .json(&serde_json::json!({ "amount": 250, "currency": "USD", "confirm": true }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "succeeded", "{body}");

    let sent = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "stops after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}
