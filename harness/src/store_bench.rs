//! `harness store-bench`: transitions per second of the gateway's attempt store (SQLite, WAL),
//! on a real file, through the same calls the gateway makes.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use gateway::model::{AttemptStatus, CaptureMethod};
use gateway::store::{now_ms, OpStatus, OperationRecord, Payment, Resolution, Store, StoreError};

/// Why the store benchmark stopped.
#[derive(Debug, thiserror::Error)]
pub enum StoreBenchError {
    /// The directory for the database file could not be created.
    #[error(transparent)]
    Dir(std::io::Error),
    /// The store could not be opened.
    #[error(transparent)]
    Open(StoreError),
    /// A transition failed, or a payment did not end charged.
    #[error("{0}")]
    Transition(String),
    /// A thread driving payments panicked.
    #[error("bench thread panicked")]
    Panicked,
}

/// The measurement.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StoreBench {
    /// Payments driven.
    pub payments: usize,
    /// Threads driving them.
    pub threads: usize,
    /// State changes committed (each a transaction).
    pub transitions: usize,
    /// Wall time.
    pub seconds: f64,
    /// Transitions per second.
    pub per_second: f64,
}

fn op(merchant: &str, payment: &str, name: &str, object: &str, amount: i64) -> OperationRecord {
    OperationRecord {
        message_id: format!("{merchant}:{payment}:{name}:{object}"),
        merchant_id: merchant.into(),
        payment_id: payment.into(),
        operation: name.into(),
        object_id: object.into(),
        amount: Some(amount),
        status: OpStatus::InFlight,
        request: "{}".into(),
        transaction_id: None,
        error_code: None,
        error_message: None,
        created_ms: now_ms(),
        updated_ms: now_ms(),
    }
}

/// Drives `payments` payments through create, authorize (begin + success), capture (begin +
/// success): five committed transitions each.
pub fn run(dir: &Path, payments: usize, threads: usize) -> Result<StoreBench, StoreBenchError> {
    std::fs::create_dir_all(dir).map_err(StoreBenchError::Dir)?;
    let path = dir.join(format!("store-bench-{}.db", std::process::id()));
    let store = Arc::new(Store::open(&path).map_err(StoreBenchError::Open)?);
    let started = Instant::now();
    let per_thread = payments.div_ceil(threads.max(1));
    let handles: Vec<_> = (0..threads.max(1))
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || -> Result<usize, String> {
                let mut n = 0;
                for i in 0..per_thread {
                    let id = format!("p{t}_{i}");
                    let p = Payment::new("m", &id, 1000, "USD", CaptureMethod::Manual, serde_json::json!({}));
                    let e = |e: StoreError| e.to_string();
                    store.insert_payment(&p).map_err(e)?;
                    let auth = op("m", &id, "payments.authorize", &p.attempt_id, 1000);
                    store.begin_operation(&auth).map_err(e)?;
                    store
                        .apply(&auth.message_id, &Resolution::Succeeded { transaction_id: Some("t".into()), captured: None })
                        .map_err(e)?;
                    let cap = op("m", &id, "payments.capture", "cap_1", 1000);
                    store.begin_operation(&cap).map_err(e)?;
                    store.apply(&cap.message_id, &Resolution::Succeeded { transaction_id: None, captured: None }).map_err(e)?;
                    let p = store.payment("m", &id).map_err(e)?;
                    if p.status != AttemptStatus::Charged {
                        return Err(format!("{id} ended {:?}", p.status));
                    }
                    n += 5;
                }
                Ok(n)
            })
        })
        .collect();
    let mut transitions = 0;
    for h in handles {
        transitions += h.join().map_err(|_| StoreBenchError::Panicked)?.map_err(StoreBenchError::Transition)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    Ok(StoreBench {
        payments: per_thread * threads.max(1),
        threads: threads.max(1),
        transitions,
        seconds,
        per_second: transitions as f64 / seconds,
    })
}
