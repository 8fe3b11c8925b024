//! The one observation path fails loudly: each source a run is judged on (the gateway's store,
//! the durable streams, their consumers, the dead-letter stream), made unreadable, turns the
//! observation into an error that names it, never an empty answer a checker would pass over.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use gateway::config::GatewayConfig;
use harness::env::GatewayHandle;
use harness::scenario::checkers::{self, Invariant};
use harness::scenario::observe;
use harness::Environment;
use serde_json::json;

/// An environment with one worker, a gateway on a file store, and one payment charged through it.
async fn one_payment() -> (Environment, GatewayHandle, common::TempDir) {
    let env = common::single(1).await;
    let dir = common::TempDir::new("observe");
    let config = GatewayConfig {
        database: dir.path().join("gateway.db"),
        api_keys: HashMap::from([("key_obs".to_string(), "m_obs".to_string())]),
        ..Default::default()
    };
    let gateway = env.start_gateway(config).await.expect("gateway");
    let body = json!({
        "payment_id": "pay_obs_1", "amount": 500, "currency": "USD", "capture_method": "automatic", "confirm": true,
        "payment_method": "card",
        "payment_method_data": { "card": { "card_number": "4242424242424242", "card_cvc": "123", "card_exp_month": "12", "card_exp_year": "30" } }
    });
    let resp = reqwest::Client::new()
        .post(format!("{}/payments", gateway.url))
        .header("api-key", "key_obs")
        .json(&body)
        .send()
        .await
        .expect("payment sent");
    assert_eq!(resp.status().as_u16(), 200, "{}", resp.text().await.unwrap_or_default());
    (env, gateway, dir)
}

/// Everything readable: the observation holds the payment, and the checkers pass on it.
#[tokio::test]
async fn a_readable_run_is_observed_and_judged() {
    let (env, gateway, _dir) = one_payment().await;
    let store = gateway.running.state.gateway.store.clone();
    let (open, _) = observe::settle(&env, &store, Duration::from_secs(20)).await.expect("settled");
    assert_eq!(open, 0);
    let o = observe::collect(&env, &gateway, Vec::new(), 1, vec![("t".into(), "nothing".into())], 0).await.expect("observed");
    assert_eq!(o.payments.len(), 1);
    assert!(!o.audit.is_empty() && !o.ledger.is_empty());
    let all = [Invariant::NoDoubleEffect, Invariant::Amounts, Invariant::ZeroStuck, Invariant::Agreement, Invariant::Integrity];
    let v = checkers::check(&o, &all, &Default::default(), |_| None);
    assert!(v.passed(), "{:?}", v.violations);
}

#[tokio::test]
async fn a_deleted_stream_is_an_error_not_an_empty_audit() {
    let (env, gateway, _dir) = one_payment().await;
    let name = env.bridge_config().stream_name(nats_bridge::catalogue::ops::authorize().family);
    env.bridge().jetstream().delete_stream(&name).await.expect("stream deleted");
    let e = observe::audit(&env).await.expect_err("audit of a deleted stream");
    assert!(e.to_string().starts_with(&format!("could not observe stream {name}:")), "{e}");
    let e = observe::collect(&env, &gateway, Vec::new(), 1, Vec::new(), 0).await.expect_err("collect");
    assert!(e.to_string().contains(&name), "{e}");
    let e = observe::unfinished_deliveries(&env).await.expect_err("consumers of a deleted stream");
    assert!(e.to_string().contains(&format!("the consumers of stream {name}")), "{e}");
    // Settling cannot tell whether work is left: after its deadline that is the error.
    let store = gateway.running.state.gateway.store.clone();
    let e = observe::settle(&env, &store, Duration::from_millis(500)).await.expect_err("settle");
    assert!(e.to_string().contains(&name), "{e}");
}

#[tokio::test]
async fn a_deleted_dead_letter_stream_is_an_error_not_zero() {
    let (env, gateway, _dir) = one_payment().await;
    let name = env.bridge_config().dlq_stream_name();
    env.bridge().jetstream().delete_stream(&name).await.expect("dlq deleted");
    let e = observe::dead_letters(&env).await.expect_err("dead letters of a deleted stream");
    assert!(e.to_string().starts_with(&format!("could not observe the dead-letter stream {name}:")), "{e}");
    let e = observe::collect(&env, &gateway, Vec::new(), 1, Vec::new(), 1).await.expect_err("collect");
    assert!(e.to_string().contains("dead-letter"), "{e}");
}

#[tokio::test]
async fn an_unreadable_store_is_an_error_not_an_empty_one() {
    let (env, gateway, dir) = one_payment().await;
    // Another connection breaks the store under the gateway: its tables are gone.
    let db = rusqlite::Connection::open(dir.path().join("gateway.db")).expect("open the store file");
    db.execute_batch("DROP TABLE refunds; DROP TABLE payments;").expect("tables dropped");
    drop(db);
    let store = gateway.running.state.gateway.store.clone();
    let e = observe::open_items(&store).expect_err("open items of a broken store");
    assert!(e.to_string().starts_with("could not observe the gateway's"), "{e}");
    let e = observe::collect(&env, &gateway, Vec::new(), 1, Vec::new(), 0).await.expect_err("collect");
    assert!(e.to_string().starts_with("could not observe the gateway's payments:"), "{e}");
}
