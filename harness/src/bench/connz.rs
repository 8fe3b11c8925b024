//! Counts a client's NATS connections through the servers' monitoring endpoint `/connz`.

use std::time::Duration;

use crate::cli::CliError;

/// What `/connz` said about one connection name, summed over every node asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnCount {
    /// The connection name looked for.
    pub name: String,
    /// Open connections carrying that name.
    pub named: usize,
    /// All open client connections the servers reported (every client of the run).
    pub total: usize,
    /// Nodes asked.
    pub nodes: usize,
}

/// Asks `/connz` of every monitoring URL and counts the open connections named `name`.
///
/// A cluster's client connections live on whichever node each client chose, so the counts of
/// all nodes are summed (route connections between nodes are not client connections and are
/// not listed by `/connz`).
pub async fn count(monitoring_urls: &[String], name: &str) -> Result<ConnCount, CliError> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let mut out = ConnCount { name: name.to_string(), ..Default::default() };
    for base in monitoring_urls {
        // The default page is 1024 connections; ask for more than a run ever opens.
        let url = format!("{base}/connz?limit=100000");
        let body: serde_json::Value = http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("cannot read {url}: {e}"))?
            .error_for_status()
            .map_err(|e| format!("cannot read {url}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("{url} did not answer json: {e}"))?;
        let conns = body["connections"].as_array().ok_or_else(|| format!("{url}: no connections array"))?;
        out.total += conns.len();
        out.named += conns.iter().filter(|c| c["name"].as_str() == Some(name)).count();
        out.nodes += 1;
    }
    Ok(out)
}
