//! Counts a client's NATS connections through the servers' monitoring endpoint `/connz`.

use std::time::Duration;

/// Why `/connz` could not be counted.
#[derive(Debug, thiserror::Error)]
pub enum ConnzError {
    /// The HTTP client could not be built.
    #[error(transparent)]
    Client(reqwest::Error),
    /// A node's `/connz` did not answer, or answered an error status.
    #[error("cannot read {url}: {source}")]
    Unreadable {
        /// The `/connz` URL asked.
        url: String,
        /// Why it could not be read.
        source: reqwest::Error,
    },
    /// A node's answer was not JSON.
    #[error("{url} did not answer json: {source}")]
    NotJson {
        /// The `/connz` URL asked.
        url: String,
        /// Why the body could not be decoded.
        source: reqwest::Error,
    },
    /// A node's answer had no `connections` array.
    #[error("{url}: no connections array")]
    NoConnections {
        /// The `/connz` URL asked.
        url: String,
    },
}

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
pub async fn count(monitoring_urls: &[String], name: &str) -> Result<ConnCount, ConnzError> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(ConnzError::Client)?;
    let mut out = ConnCount { name: name.to_string(), ..Default::default() };
    for base in monitoring_urls {
        // The default page is 1024 connections; ask for more than a run ever opens.
        let url = format!("{base}/connz?limit=100000");
        let body: serde_json::Value = http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|source| ConnzError::Unreadable { url: url.clone(), source })?
            .json()
            .await
            .map_err(|source| ConnzError::NotJson { url: url.clone(), source })?;
        let conns = body["connections"].as_array().ok_or_else(|| ConnzError::NoConnections { url: url.clone() })?;
        out.total += conns.len();
        out.named += conns.iter().filter(|c| c["name"].as_str() == Some(name)).count();
        out.nodes += 1;
    }
    Ok(out)
}
