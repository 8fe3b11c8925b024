//! Readiness checks against the monitoring endpoints.

use std::time::Duration;

use serde_json::Value;

/// One round of readiness checks over all nodes.
///
/// Ready means: every node answers `/healthz` with 200 (with JetStream on,
/// that includes contact with a meta leader), and for a cluster every node
/// reports the same JetStream meta leader, whose view lists all other nodes
/// as current peers. (Clusters are additionally probed with
/// [`probe_replicated_stream`].)
///
/// `nodes` holds `(server name, monitoring base url)` pairs. On failure the
/// returned string says what is missing.
pub(crate) async fn check(http: &reqwest::Client, nodes: &[(String, String)]) -> Result<(), String> {
    for (name, url) in nodes {
        let response =
            http.get(format!("{url}/healthz")).send().await.map_err(|e| format!("{name}: /healthz unreachable: {}", error_chain(&e)))?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            let body = response.text().await.unwrap_or_default();
            return Err(format!("{name}: /healthz returned {status}: {}", body.trim()));
        }
    }
    if nodes.len() < 2 {
        return Ok(());
    }

    let mut leader: Option<String> = None;
    let mut leader_view: Option<Value> = None;
    for (name, url) in nodes {
        let jsz = get_json(http, &format!("{url}/jsz")).await.map_err(|e| format!("{name}: {e}"))?;
        let meta = &jsz["meta_cluster"];
        let seen = meta["leader"].as_str().unwrap_or_default();
        if seen.is_empty() {
            return Err(format!("{name}: no jetstream meta leader yet"));
        }
        match &leader {
            Some(l) if l != seen => return Err(format!("nodes disagree on the meta leader ({l} vs {seen})")),
            _ => leader = Some(seen.to_owned()),
        }
        if name == seen {
            leader_view = Some(meta.clone());
        }
    }
    let leader = leader.unwrap_or_default();
    let Some(meta) = leader_view else {
        return Err(format!("meta leader {leader} is not one of the running nodes checked"));
    };
    let peers = meta["replicas"].as_array().cloned().unwrap_or_default();
    let current = peers.iter().filter(|p| p["current"].as_bool() == Some(true) && p["offline"].as_bool() != Some(true)).count();
    if current < nodes.len() - 1 {
        return Err(format!("meta leader {leader} sees {current} of {} peers as current", nodes.len() - 1));
    }
    Ok(())
}

/// Name of the throwaway stream used by [`probe_replicated_stream`].
pub(crate) fn probe_stream_name(env_id: &str) -> String {
    format!("HS_READY_{env_id}")
}

/// Creates and deletes an in-memory stream with `replicas` replicas.
///
/// The monitoring endpoints cannot show everything placement needs: right
/// after the meta leader is elected it may still lack a peer's statistics
/// and reject replicated streams with "no suitable peers for placement,
/// peer offline". Creating a real replicated stream is the only reliable
/// proof that callers can do the same.
pub(crate) async fn probe_replicated_stream(client_urls: &[String], env_id: &str, replicas: usize) -> Result<(), String> {
    let client = async_nats::ConnectOptions::new()
        .ignore_discovered_servers()
        .connection_timeout(Duration::from_secs(2))
        .connect(client_urls)
        .await
        .map_err(|e| format!("client connection failed: {e}"))?;
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    let name = probe_stream_name(env_id);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("_hs.ready.{env_id}")],
        num_replicas: replicas,
        storage: async_nats::jetstream::stream::StorageType::Memory,
        max_messages: 1,
        ..Default::default()
    })
    .await
    .map_err(|e| format!("creating an R{replicas} probe stream failed: {e}"))?;
    js.delete_stream(&name).await.map_err(|e| format!("deleting the probe stream failed: {e}"))?;
    Ok(())
}

pub(crate) async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let response = http.get(url).send().await.map_err(|e| format!("{url} unreachable: {}", error_chain(&e)))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("{url} returned {status}"));
    }
    response.json::<Value>().await.map_err(|e| format!("{url} returned invalid json: {e}"))
}

/// An HTTP client for monitoring endpoints: short timeouts, no proxy.
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .unwrap_or_default()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
