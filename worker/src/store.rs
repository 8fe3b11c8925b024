//! Results by idempotency key, in a JetStream key-value bucket shared by all workers.
//!
//! A key is first claimed `started` (just before the processor call), then `done` with the
//! reply. A redelivery finding `done` re-sends the stored reply. A claim is a lease: it is
//! created or taken over only by compare-and-set on the key's revision, renewed while its
//! holder works, and respected by every other delivery of the same key (a replay consumer, a
//! second consumer) until it expires. A delivery that takes over an expired claim knows an
//! earlier one may have reached the processor, and asks it before calling again.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use nats_protocol::{RequestEnvelope, ResponseEnvelope};
use serde::{Deserialize, Serialize};

/// State of one idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Record {
    /// A delivery is about to call (or called) the processor; no reply stored yet.
    Started {
        /// Fingerprint of the request that holds the key.
        fingerprint: String,
        /// Which delivery holds the claim (worker name and a per-process counter).
        #[serde(default)]
        owner: String,
        /// Unix ms until which the claim holds unless renewed; 0 (records written before
        /// leases existed) counts as expired.
        #[serde(default)]
        lease_until_ms: u64,
    },
    /// The first result, re-sent to any retry with the same fingerprint.
    Done {
        /// Fingerprint of the request that holds the key.
        fingerprint: String,
        /// The stored reply.
        response: ResponseEnvelope,
    },
}

impl Record {
    /// The fingerprint of the request holding the key.
    pub fn fingerprint(&self) -> &str {
        match self {
            Record::Started { fingerprint, .. } | Record::Done { fingerprint, .. } => fingerprint,
        }
    }
}

/// Now, in Unix milliseconds (the clock leases are written in).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Errors of the result store.
#[derive(Debug, thiserror::Error)]
#[error("result store: {0}")]
pub struct StoreError(pub String);

/// The bucket.
#[derive(Clone)]
pub struct ResultStore {
    kv: kv::Store,
}

/// The FNV-1a 64-bit offset basis: the hash of no bytes.
pub(crate) const FNV_OFFSET: u64 = 0xcbf29ce484222325;

/// FNV-1a 64: `h` (the hash so far) extended by `bytes`.
pub(crate) fn fnv1a(h: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

/// What identifies "the same request" for a key: operation, merchant, payment, instance and
/// router data (serde_json sorts object keys, so the JSON text is canonical).
pub fn fingerprint(env: &RequestEnvelope) -> String {
    // FNV-1a over the JSON text of the array, hashed as it is written: no copy of the router
    // data and no text in memory (this runs for every operation).
    struct Fnv(u64);
    impl std::io::Write for Fnv {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = fnv1a(self.0, buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Fnv(FNV_OFFSET);
    // Writing to memory cannot fail, and every part is plain JSON.
    let _ = serde_json::to_writer(&mut h, &(&env.operation, &env.merchant_id, &env.payment_id, &env.attempt_id, &env.router_data));
    format!("{:016x}", h.0)
}

/// Bucket keys allow few characters; hex keeps every idempotency key exact and valid.
fn key(idempotency_key: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(idempotency_key.len() * 2);
    for b in idempotency_key.bytes() {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

impl ResultStore {
    /// Opens (creating if needed) the bucket.
    pub async fn open(js: &jetstream::Context, bucket: &str, replicas: usize) -> Result<Self, StoreError> {
        let kv = match js.get_key_value(bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.to_string(),
                    description: "worker results by idempotency key".into(),
                    history: 1,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| StoreError(format!("cannot create bucket {bucket}: {e}")))?,
        };
        Ok(ResultStore { kv })
    }

    /// The record of a key.
    pub async fn get(&self, idempotency_key: &str) -> Result<Option<Record>, StoreError> {
        let Some(bytes) = self.kv.get(key(idempotency_key)).await.map_err(|e| StoreError(e.to_string()))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| StoreError(format!("corrupt record for {idempotency_key}: {e}")))
    }

    /// The record of a key with its revision (for compare-and-set).
    pub async fn entry(&self, idempotency_key: &str) -> Result<Option<(Record, u64)>, StoreError> {
        let Some(entry) = self.kv.entry(key(idempotency_key)).await.map_err(|e| StoreError(e.to_string()))? else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let record = serde_json::from_slice(&entry.value).map_err(|e| StoreError(format!("corrupt record for {idempotency_key}: {e}")))?;
        Ok(Some((record, entry.revision)))
    }

    /// Writes `record` only if the key has no value; `None` when another writer got there
    /// first.
    pub async fn create(&self, idempotency_key: &str, record: &Record) -> Result<Option<u64>, StoreError> {
        let bytes = Bytes::from(serde_json::to_vec(record).map_err(|e| StoreError(e.to_string()))?);
        match self.kv.create(key(idempotency_key), bytes).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(StoreError(e.to_string())),
        }
    }

    /// Writes `record` only if the key is still at `revision`; `None` when another writer
    /// changed it since.
    pub async fn update(&self, idempotency_key: &str, record: &Record, revision: u64) -> Result<Option<u64>, StoreError> {
        let bytes = Bytes::from(serde_json::to_vec(record).map_err(|e| StoreError(e.to_string()))?);
        match self.kv.update(key(idempotency_key), bytes, revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(StoreError(e.to_string())),
        }
    }

    /// Writes a record.
    pub async fn put(&self, idempotency_key: &str, record: &Record) -> Result<(), StoreError> {
        let bytes = Bytes::from(serde_json::to_vec(record).map_err(|e| StoreError(e.to_string()))?);
        self.kv.put(key(idempotency_key), bytes).await.map(|_| ()).map_err(|e| StoreError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    /// The fingerprint is FNV-1a of `[operation, merchant, payment, attempt, router_data]` as
    /// compact JSON with sorted keys: records written by earlier workers keep matching.
    #[test]
    fn fingerprints_hash_the_canonical_json_array() {
        let op = nats_protocol::catalogue::ops::capture();
        let env = nats_protocol::OperationRequest::new(op, "m1", "pay_1", "cap_1")
            .router_data(serde_json::json!({ "currency": "EUR", "amount": 700, "note": "caf\u{e9} \"x\"" }))
            .envelope()
            .clone();
        let text = serde_json::json!([env.operation, env.merchant_id, env.payment_id, env.attempt_id, env.router_data]).to_string();
        assert!(text.starts_with(r#"["payments.capture","m1","pay_1","cap_1",{"amount":700"#), "{text}");
        let want = text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        assert_eq!(super::fingerprint(&env), format!("{want:016x}"));
        let mut other = env.clone();
        other.router_data["amount"] = serde_json::json!(701);
        assert_ne!(super::fingerprint(&other), super::fingerprint(&env));
    }

    #[test]
    fn keys_are_lower_case_hex_of_every_byte() {
        assert_eq!(super::key("m:p_1"), "6d3a705f31");
        assert_eq!(super::key("é"), "c3a9");
        assert_eq!(super::key(""), "");
    }
}
