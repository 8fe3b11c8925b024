//! TLS and users ([`EnvConfig::with_tls`], [`EnvConfig::with_users`]) as a client without the
//! bridge sees them: [`NatsEnv::connect_as`] over mutual TLS with a password and with an NKey,
//! and refusals for plain text and unknown users.

mod common;

use std::time::Duration;

use nats_testkit::{BackendChoice, EnvConfig, NatsError, NatsUser, ServerTls};

#[tokio::test]
async fn connect_as_over_mutual_tls_with_a_password_and_an_nkey() {
    let env = common::start_nats(
        EnvConfig::single()
            .with_backend(BackendChoice::Process)
            .with_tls(ServerTls { verify: true })
            .with_users([NatsUser::password("alice", "alice-secret"), NatsUser::nkey("bob")]),
    )
    .await;
    for user in ["alice", "bob"] {
        let client = env.connect_as(user).await.unwrap_or_else(|e| panic!("{user} connects: {e}"));
        let mut sub = client.subscribe(format!("hello.{user}")).await.expect("subscribe");
        client.publish(format!("hello.{user}"), "hi".into()).await.expect("publish");
        client.flush().await.expect("flush");
        let message = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut sub)).await.expect("in time");
        assert_eq!(message.expect("a message").payload.as_ref(), b"hi");
    }

    let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2));
    let plain = tokio::time::timeout(Duration::from_secs(5), env.connect_with(options)).await;
    assert!(!matches!(plain, Ok(Ok(_))), "a plain-text client without credentials must not connect");

    let unknown = env.connect_as("mallory").await.expect_err("an unknown user");
    assert!(matches!(&unknown, NatsError::InvalidConfig(m) if m.contains("unknown user")), "{unknown}");
}
