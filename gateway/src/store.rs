//! The attempt store: payments, the operations sent for them, refunds and API idempotency
//! keys, in SQLite (embedded, durable, WAL). Every state change is a compare-and-set inside a
//! transaction: a terminal state is never overwritten, and a late or duplicate result for an
//! operation already resolved changes nothing.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use tracing::warn;

use crate::model::{AttemptStatus, CaptureMethod, RefundStatus};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("attempt store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The row exists already.
    #[error("{0} already exists")]
    Exists(String),
    /// The row does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The current state does not allow the change.
    #[error("{what} is {current}, which does not allow this")]
    State {
        /// The object.
        what: String,
        /// Its current state.
        current: String,
    },
    /// An amount rule refused the change.
    #[error("{0}")]
    Amount(String),
    /// The store's background thread could not start.
    #[error("attempt store: cannot start the wal checkpointer: {0}")]
    Checkpointer(String),
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A payment and its active attempt.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Payment {
    /// Owner.
    pub merchant_id: String,
    /// Client-chosen or generated id.
    pub payment_id: String,
    /// The active attempt's id (`<payment_id>_<n>`).
    pub attempt_id: String,
    /// Amount requested, minor units.
    pub amount: i64,
    /// ISO currency.
    pub currency: String,
    /// Automatic or manual capture.
    pub capture_method: CaptureMethod,
    /// Attempt status.
    pub status: AttemptStatus,
    /// Currently authorized (grows with incremental authorizations).
    pub amount_authorized: i64,
    /// Captured so far.
    pub amount_captured: i64,
    /// Refunded (successful refunds).
    pub amount_refunded: i64,
    /// Held by refunds not resolved yet.
    pub amount_refund_pending: i64,
    /// Processor reference of the authorization.
    pub connector_transaction_id: Option<String>,
    /// Last error code.
    pub error_code: Option<String>,
    /// Last error message.
    pub error_message: Option<String>,
    /// Router data of the authorization (kept so confirm and recovery can rebuild requests).
    pub router_data: serde_json::Value,
    /// Created, ms.
    pub created_ms: i64,
    /// Last change, ms.
    pub updated_ms: i64,
}

impl Payment {
    /// A new payment, `started`, nothing authorized yet; its first attempt is `<payment_id>_1`.
    pub fn new(
        merchant_id: &str,
        payment_id: &str,
        amount: i64,
        currency: &str,
        capture_method: CaptureMethod,
        router_data: serde_json::Value,
    ) -> Payment {
        let now = now_ms();
        Payment {
            merchant_id: merchant_id.to_string(),
            payment_id: payment_id.to_string(),
            attempt_id: format!("{payment_id}_1"),
            amount,
            currency: currency.to_string(),
            capture_method,
            status: AttemptStatus::Started,
            amount_authorized: 0,
            amount_captured: 0,
            amount_refunded: 0,
            amount_refund_pending: 0,
            connector_transaction_id: None,
            error_code: None,
            error_message: None,
            router_data,
            created_ms: now,
            updated_ms: now,
        }
    }
}

/// Status of an operation sent through the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpStatus {
    /// Sent, waiting for the call to return.
    InFlight,
    /// The call ended without a definite answer; sync or recovery decides.
    Unknown,
    /// The worker reported success.
    Succeeded,
    /// Failed definitely.
    Failed,
}

impl OpStatus {
    fn as_str(self) -> &'static str {
        match self {
            OpStatus::InFlight => "in_flight",
            OpStatus::Unknown => "unknown",
            OpStatus::Succeeded => "succeeded",
            OpStatus::Failed => "failed",
        }
    }
    fn parse(s: &str) -> OpStatus {
        match s {
            "in_flight" => OpStatus::InFlight,
            "succeeded" => OpStatus::Succeeded,
            "failed" => OpStatus::Failed,
            _ => OpStatus::Unknown,
        }
    }
    /// Succeeded or failed.
    pub fn is_final(self) -> bool {
        matches!(self, OpStatus::Succeeded | OpStatus::Failed)
    }
}

/// An operation instance sent (or about to be sent) through the bridge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperationRecord {
    /// The bridge message id (unique per instance).
    pub message_id: String,
    /// Owner.
    pub merchant_id: String,
    /// Payment.
    pub payment_id: String,
    /// Catalogue name.
    pub operation: String,
    /// The instance id (attempt, capture, void, refund id).
    pub object_id: String,
    /// Amount the operation moves, if any.
    pub amount: Option<i64>,
    /// Where it stands.
    pub status: OpStatus,
    /// The request envelope, JSON: recovery re-asks the workers with it.
    pub request: String,
    /// Processor reference from the reply.
    pub transaction_id: Option<String>,
    /// Error code from the reply or the bridge.
    pub error_code: Option<String>,
    /// Error message.
    pub error_message: Option<String>,
    /// Created, ms.
    pub created_ms: i64,
    /// Last change, ms.
    pub updated_ms: i64,
}

/// A refund.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refund {
    /// Owner.
    pub merchant_id: String,
    /// Client-chosen or generated id.
    pub refund_id: String,
    /// The refunded payment.
    pub payment_id: String,
    /// Amount.
    pub amount: i64,
    /// Currency (the payment's).
    pub currency: String,
    /// Status.
    pub status: RefundStatus,
    /// Free text.
    pub reason: Option<String>,
    /// Processor reference.
    pub connector_refund_id: Option<String>,
    /// Error code.
    pub error_code: Option<String>,
    /// Error message.
    pub error_message: Option<String>,
    /// Created, ms.
    pub created_ms: i64,
    /// Last change, ms.
    pub updated_ms: i64,
}

/// What a worker's answer (or its absence) says about an operation.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// The processor did it.
    Succeeded {
        /// Processor reference.
        transaction_id: Option<String>,
        /// What the processor captured with it besides what the operation names: an
        /// authorization with automatic capture that the processor charged in the same call
        /// (the effect's `captured_amount`). `None` for everything else, and for an
        /// authorization that only authorized.
        captured: Option<i64>,
    },
    /// Authorization needs the customer (3DS).
    RequiresCustomerAction,
    /// Accepted, not final (asynchronous processor).
    Processing,
    /// Refused or definitely failed.
    Failed {
        /// Code.
        code: String,
        /// Message.
        message: String,
    },
    /// No definite answer.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// What applying a resolution did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The operation and its object changed.
    Changed,
    /// The operation was already final: nothing changed (late or duplicate answer).
    AlreadyFinal,
}

/// API idempotency: what a key holds.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyState {
    /// First use: the caller owns the key now and must finish it.
    New,
    /// Another request with this key is running.
    InProgress,
    /// Done: replay this response.
    Done {
        /// HTTP status.
        status: u16,
        /// JSON body.
        body: String,
    },
    /// The key was used with a different request.
    Mismatch,
}

/// An idempotency row: fingerprint, state, owner, status, body.
type KeyRow = (String, String, String, Option<u16>, Option<String>);

/// The store. Cheap operations under one connection lock.
pub struct Store {
    /// One connection; SQLite serializes writers anyway. Shared with the checkpointer, which
    /// holds the lock for a moment to restart the WAL.
    conn: Arc<Mutex<Connection>>,
    /// This process's id on idempotency keys it claims: a key left in progress by another
    /// (dead) instance may be taken over, one held by this instance may not.
    instance: String,
    /// Deliberate defects (harness only).
    defects: crate::config::GatewayDefects,
    /// Moves the WAL into the database off the request path (file stores only).
    _checkpointer: Option<Checkpointer>,
}

/// How often the background checkpointer runs.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// A thread with its own connection that checkpoints the WAL every [`CHECKPOINT_EVERY`] and
/// keeps it from growing.
///
/// SQLite's automatic checkpoint runs inside the commit that crosses 1000 WAL pages: under load
/// that commit, and every request queued on the store's lock behind it, waits for the copy.
/// Each round here has two steps:
/// 1. a passive checkpoint on this thread's connection copies the WAL into the database while
///    the store keeps writing (no lock taken);
/// 2. with the store's lock held for a moment (no request can write), a restart checkpoint
///    copies the few frames written during step 1; the next commit then writes the WAL from
///    its start again.
///
/// Without step 2 a passive checkpoint never catches up with a store that never pauses: the
/// WAL only grows (1.6 GB after 45 s at 1000 req/s) and every page read searches a longer
/// WAL index, so latency climbed through a load run. Durability is unchanged: a commit is
/// durable once in the WAL, checkpointed or not. The thread stops when the store is dropped.
struct Checkpointer {
    /// Dropped with the store: the thread sees the channel close and exits.
    _stop: std::sync::mpsc::Sender<()>,
}

/// `PRAGMA wal_checkpoint` answers (busy, WAL frames, frames checkpointed).
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
}

impl Checkpointer {
    fn start(path: &Path, store: std::sync::Weak<Mutex<Connection>>) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open(path)?;
        // Step 2 runs under the store's lock: never wait there, try again next round.
        conn.busy_timeout(std::time::Duration::ZERO)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            // "gateway-wal": load reports count this thread's CPU as the gateway's.
            .name("gateway-wal".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                    if let Err(e) = checkpoint(&conn, "PASSIVE") {
                        warn!(error = %e, "wal checkpoint failed");
                        continue;
                    }
                    let Some(store) = store.upgrade() else { break };
                    let _writer = store.lock().unwrap_or_else(|p| p.into_inner());
                    match checkpoint(&conn, "RESTART") {
                        Ok((0, _, _)) => {}
                        Ok((_, frames, done)) => tracing::debug!(frames, done, "wal restart checkpoint busy, next round"),
                        Err(e) => warn!(error = %e, "wal restart checkpoint failed"),
                    }
                }
            })
            .map_err(|e| StoreError::Checkpointer(e.to_string()))?;
        Ok(Checkpointer { _stop: stop })
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS payments (
    merchant_id TEXT NOT NULL, payment_id TEXT NOT NULL, attempt_id TEXT NOT NULL,
    amount INTEGER NOT NULL, currency TEXT NOT NULL, capture_method TEXT NOT NULL, status TEXT NOT NULL,
    amount_authorized INTEGER NOT NULL DEFAULT 0, amount_captured INTEGER NOT NULL DEFAULT 0,
    amount_refunded INTEGER NOT NULL DEFAULT 0, amount_refund_pending INTEGER NOT NULL DEFAULT 0,
    connector_transaction_id TEXT, error_code TEXT, error_message TEXT, router_data TEXT NOT NULL,
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, payment_id));
CREATE TABLE IF NOT EXISTS operations (
    message_id TEXT PRIMARY KEY, merchant_id TEXT NOT NULL, payment_id TEXT NOT NULL, operation TEXT NOT NULL,
    object_id TEXT NOT NULL, amount INTEGER, status TEXT NOT NULL, request TEXT NOT NULL,
    transaction_id TEXT, error_code TEXT, error_message TEXT, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS operations_open ON operations (status, updated_ms);
CREATE INDEX IF NOT EXISTS operations_payment ON operations (merchant_id, payment_id);
CREATE TABLE IF NOT EXISTS refunds (
    merchant_id TEXT NOT NULL, refund_id TEXT NOT NULL, payment_id TEXT NOT NULL, amount INTEGER NOT NULL,
    currency TEXT NOT NULL, status TEXT NOT NULL, reason TEXT, connector_refund_id TEXT, error_code TEXT,
    error_message TEXT, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, refund_id));
CREATE TABLE IF NOT EXISTS idempotency (
    merchant_id TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, state TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT '', status INTEGER, body TEXT, created_ms INTEGER NOT NULL,
    PRIMARY KEY (merchant_id, key));
";

// Rows are read by position (a name lookup per column per row showed in profiles), so every
// SELECT names its columns in the order of these lists.

/// The columns [`payment_row`] reads, in order.
macro_rules! payment_columns {
    () => {
        "merchant_id, payment_id, attempt_id, amount, currency, capture_method, status, amount_authorized, \
     amount_captured, amount_refunded, amount_refund_pending, connector_transaction_id, error_code, error_message, router_data, \
     created_ms, updated_ms"
    };
}

fn payment_row(r: &Row<'_>) -> rusqlite::Result<Payment> {
    let method: String = r.get(5)?;
    let status: String = r.get(6)?;
    let router_data: String = r.get(14)?;
    Ok(Payment {
        merchant_id: r.get(0)?,
        payment_id: r.get(1)?,
        attempt_id: r.get(2)?,
        amount: r.get(3)?,
        currency: r.get(4)?,
        capture_method: CaptureMethod::parse(&method).unwrap_or_default(),
        status: AttemptStatus::parse(&status).unwrap_or(AttemptStatus::Pending),
        amount_authorized: r.get(7)?,
        amount_captured: r.get(8)?,
        amount_refunded: r.get(9)?,
        amount_refund_pending: r.get(10)?,
        connector_transaction_id: r.get(11)?,
        error_code: r.get(12)?,
        error_message: r.get(13)?,
        router_data: serde_json::from_str(&router_data).unwrap_or_default(),
        created_ms: r.get(15)?,
        updated_ms: r.get(16)?,
    })
}

/// The columns [`operation_row`] reads, in order.
macro_rules! operation_columns {
    () => {
        "message_id, merchant_id, payment_id, operation, object_id, amount, status, request, transaction_id, \
     error_code, error_message, created_ms, updated_ms"
    };
}

/// The operations of a payment, oldest first ([`Store::operations_of`]).
const OPERATIONS_OF: &str =
    concat!("SELECT ", operation_columns!(), " FROM operations WHERE merchant_id = ?1 AND payment_id = ?2 ORDER BY created_ms, rowid");

fn operation_row(r: &Row<'_>) -> rusqlite::Result<OperationRecord> {
    let status: String = r.get(6)?;
    Ok(OperationRecord {
        message_id: r.get(0)?,
        merchant_id: r.get(1)?,
        payment_id: r.get(2)?,
        operation: r.get(3)?,
        object_id: r.get(4)?,
        amount: r.get(5)?,
        status: OpStatus::parse(&status),
        request: r.get(7)?,
        transaction_id: r.get(8)?,
        error_code: r.get(9)?,
        error_message: r.get(10)?,
        created_ms: r.get(11)?,
        updated_ms: r.get(12)?,
    })
}

/// The columns [`refund_row`] reads, in order.
macro_rules! refund_columns {
    () => {
        "merchant_id, refund_id, payment_id, amount, currency, status, reason, connector_refund_id, error_code, \
     error_message, created_ms, updated_ms"
    };
}

fn refund_row(r: &Row<'_>) -> rusqlite::Result<Refund> {
    let status: String = r.get(5)?;
    Ok(Refund {
        merchant_id: r.get(0)?,
        refund_id: r.get(1)?,
        payment_id: r.get(2)?,
        amount: r.get(3)?,
        currency: r.get(4)?,
        status: RefundStatus::parse(&status).unwrap_or(RefundStatus::Pending),
        reason: r.get(6)?,
        connector_refund_id: r.get(7)?,
        error_code: r.get(8)?,
        error_message: r.get(9)?,
        created_ms: r.get(10)?,
        updated_ms: r.get(11)?,
    })
}

/// Runs a statement from the connection's statement cache (parsing SQL led the store's
/// profile before).
fn exec(c: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(params)
}

/// One row (or none) from a cached statement.
fn one<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<T>> {
    c.prepare_cached(sql)?.query_row(params, f).optional()
}

/// Every row of a cached statement.
fn all<T>(
    c: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut s = c.prepare_cached(sql)?;
    let rows = s.query_map(params, f)?.collect();
    rows
}

/// A write transaction (`BEGIN IMMEDIATE`) on cached statements; rolled back on drop unless
/// committed, like rusqlite's own, which parses its BEGIN and COMMIT text every time.
struct Tx<'c> {
    conn: &'c Connection,
    done: bool,
}

impl<'c> Tx<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Tx<'c>> {
        exec(conn, "BEGIN IMMEDIATE", [])?;
        Ok(Tx { conn, done: false })
    }

    fn commit(mut self) -> rusqlite::Result<()> {
        self.done = true;
        exec(self.conn, "COMMIT", []).map(|_| ())
    }
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = exec(self.conn, "ROLLBACK", []);
        }
    }
}

fn get_payment(c: &Connection, merchant_id: &str, payment_id: &str) -> Result<Payment, StoreError> {
    one(
        c,
        concat!("SELECT ", payment_columns!(), " FROM payments WHERE merchant_id = ?1 AND payment_id = ?2"),
        params![merchant_id, payment_id],
        payment_row,
    )?
    .ok_or_else(|| StoreError::NotFound(format!("payment {payment_id}")))
}

/// Moves a payment to `status`, in the store and in `p`.
fn set_status(c: &Connection, p: &mut Payment, status: AttemptStatus) -> Result<(), StoreError> {
    let now = now_ms();
    exec(
        c,
        "UPDATE payments SET status = ?3, updated_ms = ?4 WHERE merchant_id = ?1 AND payment_id = ?2",
        params![p.merchant_id, p.payment_id, status.as_str(), now],
    )?;
    p.status = status;
    p.updated_ms = now;
    Ok(())
}

/// Inserts a new payment; `Exists` if the id is taken.
fn insert_payment_in(c: &Connection, p: &Payment) -> Result<(), StoreError> {
    let n = exec(
        c,
        "INSERT OR IGNORE INTO payments (merchant_id, payment_id, attempt_id, amount, currency, capture_method, status,
         router_data, created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        params![
            p.merchant_id,
            p.payment_id,
            p.attempt_id,
            p.amount,
            p.currency,
            p.capture_method.as_str(),
            p.status.as_str(),
            p.router_data.to_string(),
            p.created_ms
        ],
    )?;
    if n == 0 {
        return Err(StoreError::Exists(format!("payment {}", p.payment_id)));
    }
    Ok(())
}

/// Starts an operation inside a transaction (see [`Store::begin_operation`]).
fn begin_in(c: &Connection, op: &OperationRecord) -> Result<Payment, StoreError> {
    let mut p = get_payment(c, &op.merchant_id, &op.payment_id)?;
    let amount = op.amount.unwrap_or(0);
    use AttemptStatus::*;
    match op.operation.as_str() {
        "payments.authorize" => {
            check_from(&p, &[Started])?;
            set_status(c, &mut p, Authorizing)?;
        }
        "payments.complete_authorize" => check_from(&p, &[AuthenticationPending])?,
        "payments.capture" => {
            check_from(&p, &[Authorized, PartialCharged])?;
            let capturable = p.amount_authorized - p.amount_captured;
            if amount <= 0 || amount > capturable {
                return Err(StoreError::Amount(format!("amount_to_capture {amount} exceeds the capturable amount {capturable}")));
            }
            set_status(c, &mut p, CaptureInitiated)?;
        }
        "payments.void" => {
            check_from(&p, &[Authorized])?;
            set_status(c, &mut p, VoidInitiated)?;
        }
        "payments.incremental_auth" => {
            check_from(&p, &[Authorized, PartialCharged])?;
            if amount <= 0 {
                return Err(StoreError::Amount("additional amount must be positive".into()));
            }
        }
        _ => {}
    }
    exec(
        c,
        "INSERT INTO operations (message_id, merchant_id, payment_id, operation, object_id, amount, status, request,
         created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'in_flight', ?7, ?8, ?8)",
        params![op.message_id, op.merchant_id, op.payment_id, op.operation, op.object_id, op.amount, op.request, now_ms()],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            StoreError::Exists(format!("operation {}", op.message_id))
        }
        e => e.into(),
    })?;
    // `p` carries the status set above: no second read.
    Ok(p)
}

/// What a capture, void or incremental authorization may start from.
fn check_from(p: &Payment, allowed: &[AttemptStatus]) -> Result<(), StoreError> {
    if allowed.contains(&p.status) {
        Ok(())
    } else {
        Err(StoreError::State { what: format!("payment {}", p.payment_id), current: p.status.as_str().into() })
    }
}

impl Store {
    /// Opens (creating) the store at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        let mut store = Self::init(conn)?;
        // Checkpoints happen on the checkpointer's thread, not in a request's commit.
        store.with(|c| Ok(c.pragma_update(None, "wal_autocheckpoint", 0)?))?;
        store._checkpointer = Some(Checkpointer::start(path, Arc::downgrade(&store.conn))?);
        Ok(store)
    }

    /// A store that lives in memory (tests).
    pub fn in_memory() -> Result<Store, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store, StoreError> {
        // WAL + NORMAL: a killed process loses no committed transaction.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Plans never depend on bound values. Without this, SQLite marks a parameter compared
        // with `=` outside the chosen index as plan-relevant and prepares the statement again
        // whenever it is bound to a new value: every payment read re-parsed its SELECT.
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        conn.execute_batch(SCHEMA)?;
        // Every statement of this file stays prepared (the default cache holds 16).
        conn.set_prepared_statement_cache_capacity(64);
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            defects: Default::default(),
            _checkpointer: None,
        })
    }

    /// The store with deliberate defects switched on (harness only).
    pub fn with_defects(mut self, defects: crate::config::GatewayDefects) -> Self {
        self.defects = defects;
        self
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        // A panic while holding the lock cannot leave a transaction half-applied (it rolls
        // back on drop), so a poisoned lock is still safe to use.
        let mut c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c)
    }

    /// Records a new payment (status `started`).
    pub fn insert_payment(&self, p: &Payment) -> Result<(), StoreError> {
        self.with(|c| insert_payment_in(c, p))
    }

    /// A payment.
    pub fn payment(&self, merchant_id: &str, payment_id: &str) -> Result<Payment, StoreError> {
        self.with(|c| get_payment(c, merchant_id, payment_id))
    }

    /// Starts an operation: checks the payment's state and amounts, moves it to the matching
    /// transitional state and records the operation `in_flight`, in one transaction.
    pub fn begin_operation(&self, op: &OperationRecord) -> Result<Payment, StoreError> {
        self.with(|c| {
            let tx = Tx::begin(c)?;
            let p = begin_in(&tx, op)?;
            tx.commit()?;
            Ok(p)
        })
    }

    /// Records a new payment and starts its first operation (a confirm at creation), in one
    /// transaction: one commit instead of two, and never a payment without its authorization
    /// when the process dies in between.
    pub fn insert_payment_and_begin(&self, p: &Payment, op: &OperationRecord) -> Result<Payment, StoreError> {
        self.with(|c| {
            let tx = Tx::begin(c)?;
            insert_payment_in(&tx, p)?;
            let p = begin_in(&tx, op)?;
            tx.commit()?;
            Ok(p)
        })
    }

    /// Records a refund `pending`, holding its amount against the payment, and its operation.
    pub fn begin_refund(&self, refund: &Refund, op: &OperationRecord) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = Tx::begin(c)?;
            let exists: Option<i64> = one(
                    &tx,
                    "SELECT 1 FROM refunds WHERE merchant_id = ?1 AND refund_id = ?2",
                    params![refund.merchant_id, refund.refund_id],
                    |r| r.get(0),
                )?;
            if exists.is_some() {
                return Err(StoreError::Exists(format!("refund {}", refund.refund_id)));
            }
            let p = get_payment(&tx, &refund.merchant_id, &refund.payment_id)?;
            check_from(&p, &[AttemptStatus::Charged, AttemptStatus::PartialCharged])?;
            let refundable = p.amount_captured - p.amount_refunded - p.amount_refund_pending;
            if refund.amount <= 0 || refund.amount > refundable {
                return Err(StoreError::Amount(format!(
                    "refund amount {} exceeds the refundable amount {refundable}",
                    refund.amount
                )));
            }
            let n = exec(
                &tx,
                "INSERT OR IGNORE INTO refunds (merchant_id, refund_id, payment_id, amount, currency, status, reason, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?7)",
                params![refund.merchant_id, refund.refund_id, refund.payment_id, refund.amount, p.currency, refund.reason, now_ms()],
            )?;
            if n == 0 {
                return Err(StoreError::Exists(format!("refund {}", refund.refund_id)));
            }
            exec(
                &tx,
                "UPDATE payments SET amount_refund_pending = amount_refund_pending + ?3, updated_ms = ?4 WHERE merchant_id = ?1 AND payment_id = ?2",
                params![p.merchant_id, p.payment_id, refund.amount, now_ms()],
            )?;
            exec(
                &tx,
                "INSERT INTO operations (message_id, merchant_id, payment_id, operation, object_id, amount, status, request,
                 created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'in_flight', ?7, ?8, ?8)",
                params![op.message_id, op.merchant_id, op.payment_id, op.operation, op.object_id, op.amount, op.request, now_ms()],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    /// Records an operation that moves no state of ours (mandates, tokens, disputes...).
    pub fn record_operation(&self, op: &OperationRecord) -> Result<(), StoreError> {
        self.with(|c| {
            exec(
                c,
                "INSERT OR IGNORE INTO operations (message_id, merchant_id, payment_id, operation, object_id, amount, status, request,
                 created_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'in_flight', ?7, ?8, ?8)",
                params![op.message_id, op.merchant_id, op.payment_id, op.operation, op.object_id, op.amount, op.request, now_ms()],
            )?;
            Ok(())
        })
    }

    /// Applies what is known of an operation's outcome to the operation and its payment or
    /// refund, once: a final operation is never changed again.
    pub fn apply(&self, message_id: &str, resolution: &Resolution) -> Result<Applied, StoreError> {
        self.with(|c| {
            let tx = Tx::begin(c)?;
            let op = one(&tx, concat!("SELECT ", operation_columns!(), " FROM operations WHERE message_id = ?1"), params![message_id], operation_row)?
                .ok_or_else(|| StoreError::NotFound(format!("operation {message_id}")))?;
            if op.status.is_final() && !self.defects.late_reply_overwrites_terminal {
                return Ok(Applied::AlreadyFinal);
            }
            let now = now_ms();
            let (op_status, txn, code, msg) = match resolution {
                Resolution::Succeeded { transaction_id, .. } => (OpStatus::Succeeded, transaction_id.clone(), None, None),
                Resolution::Failed { code, message } => (OpStatus::Failed, None, Some(code.clone()), Some(message.clone())),
                Resolution::Unknown { reason } => (OpStatus::Unknown, None, Some("NATS_TIMEOUT".to_string()), Some(reason.clone())),
                // Not final: the authorization waits for the customer or the processor.
                Resolution::RequiresCustomerAction | Resolution::Processing => (OpStatus::Unknown, None, None, None),
            };
            let final_op = match (op.operation.as_str(), resolution) {
                ("payments.authorize", Resolution::RequiresCustomerAction) => OpStatus::Succeeded,
                _ => op_status,
            };
            exec(
                &tx,
                "UPDATE operations SET status = ?2, transaction_id = COALESCE(?3, transaction_id), error_code = ?4, error_message = ?5, updated_ms = ?6
                 WHERE message_id = ?1",
                params![message_id, final_op.as_str(), txn, code, msg, now],
            )?;
            if op.operation == "refunds.execute" {
                apply_refund(&tx, &op, resolution)?;
            } else {
                let mut p = get_payment(&tx, &op.merchant_id, &op.payment_id)?;
                if self.defects.late_reply_overwrites_terminal && op.status.is_final() {
                    // The defect: the answer is applied again, whatever the payment's state now.
                    match op.operation.as_str() {
                        "payments.authorize" => p.status = AttemptStatus::Authorizing,
                        "payments.capture" => p.status = AttemptStatus::CaptureInitiated,
                        "payments.void" => p.status = AttemptStatus::VoidInitiated,
                        _ => {}
                    }
                }
                apply_payment(&tx, &p, &op, resolution)?;
                if self.defects.manual_capture_as_charged && op.operation == "payments.authorize" && matches!(resolution, Resolution::Succeeded { .. }) {
                    exec(
                        &tx,
                        "UPDATE payments SET status = 'charged', amount_captured = amount WHERE merchant_id = ?1 AND payment_id = ?2",
                        params![op.merchant_id, op.payment_id],
                    )?;
                }
            }
            tx.commit()?;
            Ok(Applied::Changed)
        })
    }

    /// Operations not resolved whose last change is older than `before_ms`.
    pub fn unresolved_operations(&self, before_ms: i64) -> Result<Vec<OperationRecord>, StoreError> {
        self.with(|c| {
            Ok(all(
                c,
                concat!(
                    "SELECT ",
                    operation_columns!(),
                    " FROM operations WHERE status IN ('in_flight', 'unknown') AND updated_ms < ?1 ORDER BY updated_ms"
                ),
                params![before_ms],
                operation_row,
            )?)
        })
    }

    /// The operation with this idempotency key's message id, if any.
    pub fn operation(&self, message_id: &str) -> Result<Option<OperationRecord>, StoreError> {
        self.with(|c| {
            Ok(one(
                c,
                concat!("SELECT ", operation_columns!(), " FROM operations WHERE message_id = ?1"),
                params![message_id],
                operation_row,
            )?)
        })
    }

    /// The operations of a payment, oldest first.
    pub fn operations_of(&self, merchant_id: &str, payment_id: &str) -> Result<Vec<OperationRecord>, StoreError> {
        self.with(|c| Ok(all(c, OPERATIONS_OF, params![merchant_id, payment_id], operation_row)?))
    }

    /// How many `operation`s a payment has had (numbers its captures and increments).
    pub fn count_operations(&self, merchant_id: &str, payment_id: &str, operation: &str) -> Result<usize, StoreError> {
        self.with(|c| {
            let n: Option<i64> = one(
                c,
                "SELECT COUNT(*) FROM operations WHERE merchant_id = ?1 AND payment_id = ?2 AND operation = ?3",
                params![merchant_id, payment_id, operation],
                |r| r.get(0),
            )?;
            Ok(n.unwrap_or(0) as usize)
        })
    }

    /// Every payment, oldest first (checkers read the whole store after a run).
    pub fn all_payments(&self) -> Result<Vec<Payment>, StoreError> {
        self.with(|c| Ok(all(c, concat!("SELECT ", payment_columns!(), " FROM payments ORDER BY created_ms, rowid"), [], payment_row)?))
    }

    /// Every operation, oldest first.
    pub fn all_operations(&self) -> Result<Vec<OperationRecord>, StoreError> {
        self.with(|c| {
            Ok(all(c, concat!("SELECT ", operation_columns!(), " FROM operations ORDER BY created_ms, rowid"), [], operation_row)?)
        })
    }

    /// Every refund, oldest first.
    pub fn all_refunds(&self) -> Result<Vec<Refund>, StoreError> {
        self.with(|c| Ok(all(c, concat!("SELECT ", refund_columns!(), " FROM refunds ORDER BY created_ms, rowid"), [], refund_row)?))
    }

    /// Payments whose attempt is in a transitional state.
    pub fn transitional_payments(&self) -> Result<Vec<Payment>, StoreError> {
        self.with(|c| {
            Ok(all(
                c,
                concat!(
                    "SELECT ",
                    payment_columns!(),
                    " FROM payments WHERE status IN ('authorizing', 'capture_initiated', 'void_initiated', 'pending')"
                ),
                [],
                payment_row,
            )?)
        })
    }

    /// A refund.
    pub fn refund(&self, merchant_id: &str, refund_id: &str) -> Result<Refund, StoreError> {
        self.with(|c| {
            one(
                c,
                concat!("SELECT ", refund_columns!(), " FROM refunds WHERE merchant_id = ?1 AND refund_id = ?2"),
                params![merchant_id, refund_id],
                refund_row,
            )?
            .ok_or_else(|| StoreError::NotFound(format!("refund {refund_id}")))
        })
    }

    /// Claims an API idempotency key for a request fingerprint.
    pub fn claim_key(&self, merchant_id: &str, key: &str, fingerprint: &str) -> Result<KeyState, StoreError> {
        self.with(|c| {
            let tx = Tx::begin(c)?;
            let row: Option<KeyRow> = one(
                    &tx,
                    "SELECT fingerprint, state, owner, status, body FROM idempotency WHERE merchant_id = ?1 AND key = ?2",
                    params![merchant_id, key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )?;
            let state = match row {
                None => {
                    exec(
                        &tx,
                        "INSERT INTO idempotency (merchant_id, key, fingerprint, state, owner, created_ms) VALUES (?1, ?2, ?3, 'in_progress', ?4, ?5)",
                        params![merchant_id, key, fingerprint, self.instance, now_ms()],
                    )?;
                    KeyState::New
                }
                Some((fp, ..)) if fp != fingerprint => KeyState::Mismatch,
                Some((_, state, _, Some(status), Some(body))) if state == "done" => KeyState::Done { status, body },
                // Left in progress by an instance that is gone: run it again (the flows are
                // idempotent by payment, refund and message id).
                Some((_, _, owner, _, _)) if owner != self.instance => {
                    exec(
                        &tx,
                        "UPDATE idempotency SET owner = ?3 WHERE merchant_id = ?1 AND key = ?2",
                        params![merchant_id, key, self.instance],
                    )?;
                    KeyState::New
                }
                Some(_) => KeyState::InProgress,
            };
            tx.commit()?;
            Ok(state)
        })
    }

    /// Stores the response of a claimed key.
    pub fn finish_key(&self, merchant_id: &str, key: &str, status: u16, body: &str) -> Result<(), StoreError> {
        self.with(|c| {
            exec(
                c,
                "UPDATE idempotency SET state = 'done', status = ?3, body = ?4 WHERE merchant_id = ?1 AND key = ?2",
                params![merchant_id, key, status, body],
            )?;
            Ok(())
        })
    }

    /// Releases a claimed key without a response (the request failed before doing anything).
    pub fn release_key(&self, merchant_id: &str, key: &str) -> Result<(), StoreError> {
        self.with(|c| {
            exec(c, "DELETE FROM idempotency WHERE merchant_id = ?1 AND key = ?2 AND state = 'in_progress'", params![merchant_id, key])?;
            Ok(())
        })
    }
}

/// Failure codes that come from the bridge or the recovery job, not from a worker.
const SYSTEM_FAILURES: [&str; 6] =
    ["NO_WORKERS_AVAILABLE", "CIRCUIT_OPEN", "INVALID_REQUEST", "CONNECTOR_TIMEOUT", "NATS_TRANSPORT", "REQUEST_EXPIRED"];

fn apply_payment(c: &Connection, p: &Payment, op: &OperationRecord, r: &Resolution) -> Result<(), StoreError> {
    use AttemptStatus::*;
    let now = now_ms();
    let amount = op.amount.unwrap_or(0);
    // The status a failed capture or void returns to.
    let settled = if p.amount_captured > 0 { PartialCharged } else { Authorized };
    let (status, set_amounts): (Option<AttemptStatus>, Option<(i64, i64)>) = match (op.operation.as_str(), r) {
        ("payments.authorize", _) if !matches!(p.status, Authorizing | Pending) => (None, None),
        // Charged in the same call (automatic capture): authorized and captured at once. The
        // capture adds to what is captured, as a `payments.capture` does.
        ("payments.authorize", Resolution::Succeeded { captured: Some(captured), .. }) if *captured > 0 => {
            let captured = p.amount_captured + captured;
            (Some(if captured >= amount { Charged } else { PartialCharged }), Some((amount, captured)))
        }
        ("payments.authorize", Resolution::Succeeded { .. }) => (Some(Authorized), Some((amount, p.amount_captured))),
        ("payments.authorize", Resolution::RequiresCustomerAction) => (Some(AuthenticationPending), None),
        ("payments.authorize", Resolution::Processing | Resolution::Unknown { .. }) => (Some(Pending), None),
        // The bridge's or the recovery job's own failures are `Failure` (seed mapping); a
        // refusal reported by the worker is `AuthorizationFailed`.
        ("payments.authorize", Resolution::Failed { code, .. }) if SYSTEM_FAILURES.contains(&code.as_str()) => (Some(Failure), None),
        ("payments.authorize", Resolution::Failed { .. }) => (Some(AuthorizationFailed), None),
        ("payments.complete_authorize", _) if p.status != AuthenticationPending => (None, None),
        ("payments.complete_authorize", Resolution::Succeeded { .. }) => (Some(Authorized), Some((p.amount, p.amount_captured))),
        ("payments.complete_authorize", Resolution::Failed { .. }) => (Some(AuthorizationFailed), None),
        ("payments.capture", _) if p.status != CaptureInitiated => (None, None),
        ("payments.capture", Resolution::Succeeded { .. }) => {
            let captured = p.amount_captured + amount;
            (Some(if captured >= p.amount_authorized { Charged } else { PartialCharged }), Some((p.amount_authorized, captured)))
        }
        ("payments.capture", Resolution::Failed { .. }) => (Some(settled), None),
        ("payments.void", _) if p.status != VoidInitiated => (None, None),
        ("payments.void", Resolution::Succeeded { .. }) => (Some(Voided), None),
        ("payments.void", Resolution::Failed { .. }) => (Some(settled), None),
        ("payments.incremental_auth", Resolution::Succeeded { .. }) if !p.status.is_terminal() => {
            (None, Some((p.amount_authorized + amount, p.amount_captured)))
        }
        _ => (None, None),
    };
    if let Some((authorized, captured)) = set_amounts {
        exec(
            c,
            "UPDATE payments SET amount_authorized = ?3, amount_captured = ?4, updated_ms = ?5 WHERE merchant_id = ?1 AND payment_id = ?2",
            params![p.merchant_id, p.payment_id, authorized, captured, now],
        )?;
    }
    if let Some(status) = status {
        let (code, message) = match r {
            Resolution::Failed { code, message } => (Some(code.as_str()), Some(message.as_str())),
            _ => (None, None),
        };
        let txn = match (op.operation.as_str(), r) {
            ("payments.authorize", Resolution::Succeeded { transaction_id, .. }) => transaction_id.clone(),
            _ => None,
        };
        exec(
            c,
            "UPDATE payments SET status = ?3, error_code = COALESCE(?4, error_code), error_message = COALESCE(?5, error_message),
             connector_transaction_id = COALESCE(?6, connector_transaction_id), updated_ms = ?7 WHERE merchant_id = ?1 AND payment_id = ?2",
            params![p.merchant_id, p.payment_id, status.as_str(), code, message, txn, now],
        )?;
    }
    Ok(())
}

fn apply_refund(c: &Connection, op: &OperationRecord, r: &Resolution) -> Result<(), StoreError> {
    let now = now_ms();
    let amount = op.amount.unwrap_or(0);
    let (status, refunded) = match r {
        Resolution::Succeeded { .. } => ("succeeded", amount),
        Resolution::Failed { .. } => ("failed", 0),
        _ => return Ok(()),
    };
    let (code, message, txn) = match r {
        Resolution::Failed { code, message } => (Some(code.clone()), Some(message.clone()), None),
        Resolution::Succeeded { transaction_id, .. } => (None, None, transaction_id.clone()),
        _ => (None, None, None),
    };
    let n = exec(
        c,
        "UPDATE refunds SET status = ?3, error_code = ?4, error_message = ?5, connector_refund_id = ?6, updated_ms = ?7
         WHERE merchant_id = ?1 AND refund_id = ?2 AND status = 'pending'",
        params![op.merchant_id, op.object_id, status, code, message, txn, now],
    )?;
    if n == 1 {
        exec(
            c,
            "UPDATE payments SET amount_refund_pending = amount_refund_pending - ?3, amount_refunded = amount_refunded + ?4, updated_ms = ?5
             WHERE merchant_id = ?1 AND payment_id = ?2",
            params![op.merchant_id, op.payment_id, amount, refunded, now],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(id: &str) -> Payment {
        Payment::new("m", id, 100, "USD", CaptureMethod::Manual, serde_json::json!({}))
    }

    /// An empty directory of this test process's own under the system's temporary directory.
    fn fresh_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gateway-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// The request path never checkpoints; the checkpointer thread moves the WAL into the
    /// database file by itself.
    #[test]
    fn the_wal_is_checkpointed_off_the_request_path() {
        let dir = fresh_dir("ckpt");
        let path = dir.join("gateway.db");
        let store = Store::open(&path).unwrap();
        let auto: i64 = store.with(|c| Ok(c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?)).unwrap();
        assert_eq!(auto, 0, "commits do not checkpoint");
        for i in 0..200 {
            store.insert_payment(&payment(&format!("p{i}"))).unwrap();
        }
        // Every page written so far sits in the WAL until a checkpoint copies it over.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if size >= 8 * 4096 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "database file still {size} bytes: no checkpoint ran");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(store.count_operations("m", "p1", "payments.capture").unwrap(), 0);
        drop(store);
        // Reopened, every payment is there.
        let store = Store::open(&path).unwrap();
        assert_eq!(store.all_payments().unwrap().len(), 200);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The WAL's checkpoint sequence number (header bytes 12..16), which SQLite increments
    /// each time the WAL is restarted from its start.
    fn wal_restarts(wal: &Path) -> Option<u32> {
        use std::io::Read;
        // The header only: the WAL itself may be hundreds of megabytes.
        let mut header = [0u8; 16];
        std::fs::File::open(wal).ok()?.read_exact(&mut header).ok()?;
        Some(u32::from_be_bytes(header[12..16].try_into().ok()?))
    }

    /// Under writes that never pause (two threads, so the store's lock is never free for
    /// long), the WAL is still restarted from its start (the checkpointer's second step), so
    /// it stops growing however long the load lasts.
    #[test]
    fn the_wal_restarts_under_writes_that_never_pause() {
        let dir = fresh_dir("restart");
        let path = dir.join("gateway.db");
        let wal = dir.join("gateway.db-wal");
        let store = Arc::new(Store::open(&path).unwrap());
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let writers: Vec<_> = (0..2)
            .map(|t| {
                let (store, done) = (store.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut n = 0u64;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < deadline {
                        store.insert_payment(&payment(&format!("t{t}p{n}"))).unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        // A WAL that only grows is stopped at 512 MiB rather than filling the disk.
        let wal_size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let mut first = None;
        let restarted = loop {
            if let Some(seq) = wal_restarts(&wal) {
                if seq >= *first.get_or_insert(seq) + 2 {
                    break true;
                }
            }
            if std::time::Instant::now() >= deadline || wal_size() > 512 << 20 {
                break false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let written: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        assert!(restarted, "after {written} commits the WAL was never restarted: it only grows ({} bytes)", wal_size());
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.all_payments().unwrap().len() as u64, written);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A cached statement stays prepared when it is bound to new values: reading the
    /// operations of one payment after another re-parses nothing.
    #[test]
    fn reads_are_not_prepared_again_for_new_values() {
        let (store, _) = authorizing(CaptureMethod::Manual);
        for i in 0..5 {
            store.insert_payment(&payment(&format!("p{i}"))).unwrap();
            assert!(store.operations_of("m", &format!("p{i}")).unwrap().is_empty());
        }
        assert_eq!(store.operations_of("m", "p").unwrap().len(), 1);
        let reprepared = store.with(|c| Ok(c.prepare_cached(OPERATIONS_OF)?.get_status(rusqlite::StatementStatus::RePrepare))).unwrap();
        assert_eq!(reprepared, 0, "the statement was prepared again {reprepared} times");
    }

    /// A store with one confirmed payment of 1000 whose authorization is in flight; returns
    /// the store and the authorization's message id.
    fn authorizing(method: CaptureMethod) -> (Store, String) {
        let store = Store::in_memory().unwrap();
        store.insert_payment(&Payment::new("m", "p", 1000, "USD", method, serde_json::json!({}))).unwrap();
        let op = OperationRecord {
            message_id: "m:p:payments.authorize:p_1".into(),
            merchant_id: "m".into(),
            payment_id: "p".into(),
            operation: "payments.authorize".into(),
            object_id: "p_1".into(),
            amount: Some(1000),
            status: OpStatus::InFlight,
            request: "{}".into(),
            transaction_id: None,
            error_code: None,
            error_message: None,
            created_ms: now_ms(),
            updated_ms: now_ms(),
        };
        store.begin_operation(&op).unwrap();
        (store, op.message_id)
    }

    fn amounts(p: &Payment) -> (AttemptStatus, i64, i64) {
        (p.status, p.amount_authorized, p.amount_captured)
    }

    #[test]
    fn an_authorization_that_captured_charges_the_payment() {
        let (store, id) = authorizing(CaptureMethod::Automatic);
        let res = Resolution::Succeeded { transaction_id: Some("eff_1".into()), captured: Some(1000) };
        assert_eq!(store.apply(&id, &res).unwrap(), Applied::Changed);
        let p = store.payment("m", "p").unwrap();
        assert_eq!(amounts(&p), (AttemptStatus::Charged, 1000, 1000));
        assert_eq!(p.connector_transaction_id.as_deref(), Some("eff_1"));
        // A duplicate of the reply changes nothing.
        assert_eq!(store.apply(&id, &res).unwrap(), Applied::AlreadyFinal);
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Charged, 1000, 1000));
    }

    #[test]
    fn an_authorization_that_captured_nothing_leaves_it_authorized() {
        // What an automatic payment's confirm sees when the processor only authorized: it then
        // captures separately.
        for captured in [None, Some(0)] {
            let (store, id) = authorizing(CaptureMethod::Automatic);
            store.apply(&id, &Resolution::Succeeded { transaction_id: None, captured }).unwrap();
            assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Authorized, 1000, 0));
        }
    }

    #[test]
    fn a_partial_capture_on_authorization_is_partial_charged() {
        let (store, id) = authorizing(CaptureMethod::Automatic);
        store.apply(&id, &Resolution::Succeeded { transaction_id: None, captured: Some(400) }).unwrap();
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::PartialCharged, 1000, 400));
    }

    #[test]
    fn an_unknown_authorization_resolved_later_as_captured_is_charged() {
        let (store, id) = authorizing(CaptureMethod::Automatic);
        store.apply(&id, &Resolution::Unknown { reason: "timeout".into() }).unwrap();
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Pending, 0, 0));
        store.apply(&id, &Resolution::Succeeded { transaction_id: None, captured: Some(1000) }).unwrap();
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Charged, 1000, 1000));
    }

    // --- The payment state machine, transition by transition. ---

    /// An operation of `payment_id` (merchant `m`) named `operation` on `object_id`.
    fn op(message_id: &str, payment_id: &str, operation: &str, object_id: &str, amount: Option<i64>) -> OperationRecord {
        OperationRecord {
            message_id: message_id.into(),
            merchant_id: "m".into(),
            payment_id: payment_id.into(),
            operation: operation.into(),
            object_id: object_id.into(),
            amount,
            status: OpStatus::InFlight,
            request: "{}".into(),
            transaction_id: None,
            error_code: None,
            error_message: None,
            created_ms: now_ms(),
            updated_ms: now_ms(),
        }
    }

    fn succeeded(txn: &str) -> Resolution {
        Resolution::Succeeded { transaction_id: Some(txn.into()), captured: None }
    }

    fn failed(code: &str) -> Resolution {
        Resolution::Failed { code: code.into(), message: format!("{code} message") }
    }

    fn unknown() -> Resolution {
        Resolution::Unknown { reason: "no reply".into() }
    }

    fn op_status(store: &Store, message_id: &str) -> OpStatus {
        store.operation(message_id).unwrap().expect("operation recorded").status
    }

    /// A manual payment `id` of 1000 whose authorization succeeded: `authorized`, 1000 held.
    fn authorized(store: &Store, id: &str) {
        store.insert_payment(&Payment::new("m", id, 1000, "USD", CaptureMethod::Manual, serde_json::json!({}))).unwrap();
        let auth = op(&format!("{id}:auth"), id, "payments.authorize", &format!("{id}_1"), Some(1000));
        store.begin_operation(&auth).unwrap();
        assert_eq!(store.apply(&auth.message_id, &succeeded("txn_auth")).unwrap(), Applied::Changed);
        assert_eq!(amounts(&store.payment("m", id).unwrap()), (AttemptStatus::Authorized, 1000, 0));
    }

    /// Captures `amount` of payment `id` successfully (capture number `n`).
    fn capture(store: &Store, id: &str, n: usize, amount: i64) {
        let cap = op(&format!("{id}:cap{n}"), id, "payments.capture", &format!("{id}_cap{n}"), Some(amount));
        assert_eq!(store.begin_operation(&cap).unwrap().status, AttemptStatus::CaptureInitiated);
        assert_eq!(store.apply(&cap.message_id, &succeeded("txn_cap")).unwrap(), Applied::Changed);
    }

    /// A payment `id` of 1000, authorized and fully captured: `charged`.
    fn charged(store: &Store, id: &str) {
        authorized(store, id);
        capture(store, id, 1, 1000);
        assert_eq!(amounts(&store.payment("m", id).unwrap()), (AttemptStatus::Charged, 1000, 1000));
    }

    fn refund(id: &str, payment_id: &str, amount: i64) -> Refund {
        Refund {
            merchant_id: "m".into(),
            refund_id: id.into(),
            payment_id: payment_id.into(),
            amount,
            // The store takes the payment's currency, whatever this says.
            currency: "XXX".into(),
            status: RefundStatus::Pending,
            reason: Some("test".into()),
            connector_refund_id: None,
            error_code: None,
            error_message: None,
            created_ms: now_ms(),
            updated_ms: now_ms(),
        }
    }

    /// Starts refund `id` of `amount` on `payment_id`; returns the operation's message id.
    fn begin_refund(store: &Store, id: &str, payment_id: &str, amount: i64) -> Result<String, StoreError> {
        let o = op(&format!("{id}:exec"), payment_id, "refunds.execute", id, Some(amount));
        store.begin_refund(&refund(id, payment_id, amount), &o)?;
        Ok(o.message_id)
    }

    /// (status, refunded, held by pending refunds) of a payment.
    fn refunds_of(store: &Store, id: &str) -> (AttemptStatus, i64, i64) {
        let p = store.payment("m", id).unwrap();
        (p.status, p.amount_refunded, p.amount_refund_pending)
    }

    #[test]
    fn insert_payment_and_begin_records_both_and_moves_to_authorizing() {
        let store = Store::in_memory().unwrap();
        let p = payment("p");
        let auth = op("p:auth", "p", "payments.authorize", "p_1", Some(100));
        let returned = store.insert_payment_and_begin(&p, &auth).unwrap();
        assert_eq!(returned.status, AttemptStatus::Authorizing);
        let stored = store.payment("m", "p").unwrap();
        assert_eq!(stored.status, AttemptStatus::Authorizing);
        assert_eq!((stored.amount, stored.amount_authorized, stored.amount_captured), (100, 0, 0));
        assert_eq!(stored.attempt_id, "p_1");
        assert_eq!(op_status(&store, "p:auth"), OpStatus::InFlight);
        // The same payment id again is refused, and its operation is not recorded.
        let again = op("p:auth2", "p", "payments.authorize", "p_1", Some(100));
        assert!(matches!(store.insert_payment_and_begin(&p, &again), Err(StoreError::Exists(_))));
        assert!(store.operation("p:auth2").unwrap().is_none());
        assert_eq!(store.count_operations("m", "p", "payments.authorize").unwrap(), 1);
    }

    #[test]
    fn insert_payment_and_begin_is_one_transaction() {
        let store = Store::in_memory().unwrap();
        store.insert_payment_and_begin(&payment("a"), &op("dup", "a", "payments.authorize", "a_1", Some(100))).unwrap();
        // The operation's message id is taken: the new payment must not stay behind without it.
        let err = store.insert_payment_and_begin(&payment("b"), &op("dup", "b", "payments.authorize", "b_1", Some(100)));
        assert!(matches!(err, Err(StoreError::Exists(_))), "{err:?}");
        assert!(matches!(store.payment("m", "b"), Err(StoreError::NotFound(_))));
        assert_eq!(store.all_payments().unwrap().len(), 1);
    }

    #[test]
    fn an_authorization_begins_only_from_started() {
        let (store, _) = authorizing(CaptureMethod::Manual);
        let again = op("p:auth2", "p", "payments.authorize", "p_2", Some(1000));
        assert!(matches!(store.begin_operation(&again), Err(StoreError::State { .. })));
        assert!(store.operation("p:auth2").unwrap().is_none());
        assert_eq!(store.payment("m", "p").unwrap().status, AttemptStatus::Authorizing);
        assert!(matches!(store.begin_operation(&op("x", "nope", "payments.authorize", "nope_1", None)), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn a_manual_authorization_that_succeeded_is_authorized() {
        let (store, id) = authorizing(CaptureMethod::Manual);
        assert_eq!(store.apply(&id, &succeeded("txn_1")).unwrap(), Applied::Changed);
        let p = store.payment("m", "p").unwrap();
        assert_eq!(amounts(&p), (AttemptStatus::Authorized, 1000, 0));
        assert_eq!(p.connector_transaction_id.as_deref(), Some("txn_1"));
        let o = store.operation(&id).unwrap().unwrap();
        assert_eq!((o.status, o.transaction_id.as_deref()), (OpStatus::Succeeded, Some("txn_1")));
    }

    #[test]
    fn a_refused_authorization_is_authorization_failed() {
        let (store, id) = authorizing(CaptureMethod::Manual);
        assert_eq!(store.apply(&id, &failed("card_declined")).unwrap(), Applied::Changed);
        let p = store.payment("m", "p").unwrap();
        assert_eq!(amounts(&p), (AttemptStatus::AuthorizationFailed, 0, 0));
        assert_eq!(p.error_code.as_deref(), Some("card_declined"));
        assert_eq!(p.error_message.as_deref(), Some("card_declined message"));
        let o = store.operation(&id).unwrap().unwrap();
        assert_eq!((o.status, o.error_code.as_deref()), (OpStatus::Failed, Some("card_declined")));
    }

    #[test]
    fn a_system_failure_of_an_authorization_is_failure() {
        for code in SYSTEM_FAILURES {
            let (store, id) = authorizing(CaptureMethod::Manual);
            store.apply(&id, &failed(code)).unwrap();
            let p = store.payment("m", "p").unwrap();
            assert_eq!(p.status, AttemptStatus::Failure, "{code}");
            assert_eq!(p.error_code.as_deref(), Some(code));
        }
    }

    #[test]
    fn an_unknown_authorization_is_pending_and_stays_open() {
        for resolution in [unknown(), Resolution::Processing] {
            let (store, id) = authorizing(CaptureMethod::Manual);
            // Not final: applying it changes the operation, and it may be applied again.
            assert_eq!(store.apply(&id, &resolution).unwrap(), Applied::Changed);
            assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Pending, 0, 0));
            assert_eq!(op_status(&store, &id), OpStatus::Unknown);
            assert_eq!(store.apply(&id, &resolution).unwrap(), Applied::Changed);
            assert_eq!(store.payment("m", "p").unwrap().status, AttemptStatus::Pending);
            let open: Vec<_> = store.unresolved_operations(now_ms() + 1).unwrap().into_iter().map(|o| o.message_id).collect();
            assert_eq!(open, [id.as_str()]);
            assert_eq!(store.transitional_payments().unwrap().len(), 1);
            // A definite answer later settles it and closes it.
            assert_eq!(store.apply(&id, &failed("card_declined")).unwrap(), Applied::Changed);
            assert_eq!(store.payment("m", "p").unwrap().status, AttemptStatus::AuthorizationFailed);
            assert!(store.unresolved_operations(now_ms() + 1).unwrap().is_empty());
            assert!(store.transitional_payments().unwrap().is_empty());
        }
    }

    #[test]
    fn an_authorization_needing_the_customer_then_completed_is_authorized() {
        let (store, id) = authorizing(CaptureMethod::Manual);
        assert_eq!(store.apply(&id, &Resolution::RequiresCustomerAction).unwrap(), Applied::Changed);
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::AuthenticationPending, 0, 0));
        // The authorization's part is done: it is final, not open for recovery.
        assert_eq!(op_status(&store, &id), OpStatus::Succeeded);
        assert!(store.unresolved_operations(now_ms() + 1).unwrap().is_empty());
        assert!(store.transitional_payments().unwrap().is_empty());
        let complete = op("p:complete", "p", "payments.complete_authorize", "p_1", None);
        assert_eq!(store.begin_operation(&complete).unwrap().status, AttemptStatus::AuthenticationPending);
        assert_eq!(store.apply("p:complete", &succeeded("txn_3ds")).unwrap(), Applied::Changed);
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Authorized, 1000, 0));
        // Only from authentication_pending.
        let again = op("p:complete2", "p", "payments.complete_authorize", "p_1", None);
        assert!(matches!(store.begin_operation(&again), Err(StoreError::State { .. })));
    }

    #[test]
    fn a_refused_completion_is_authorization_failed() {
        let (store, id) = authorizing(CaptureMethod::Manual);
        store.apply(&id, &Resolution::RequiresCustomerAction).unwrap();
        store.begin_operation(&op("p:complete", "p", "payments.complete_authorize", "p_1", None)).unwrap();
        store.apply("p:complete", &failed("authentication_failed")).unwrap();
        let p = store.payment("m", "p").unwrap();
        assert_eq!(amounts(&p), (AttemptStatus::AuthorizationFailed, 0, 0));
        assert_eq!(p.error_code.as_deref(), Some("authentication_failed"));
    }

    #[test]
    fn a_late_reply_never_overwrites_a_final_state() {
        // The recovery job failed the authorization; the worker's success arrives afterwards.
        let (store, id) = authorizing(CaptureMethod::Automatic);
        store.apply(&id, &failed("CONNECTOR_TIMEOUT")).unwrap();
        let before = store.payment("m", "p").unwrap();
        assert_eq!(before.status, AttemptStatus::Failure);
        let late = Resolution::Succeeded { transaction_id: Some("late".into()), captured: Some(1000) };
        assert_eq!(store.apply(&id, &late).unwrap(), Applied::AlreadyFinal);
        assert_eq!(store.payment("m", "p").unwrap(), before);
        let o = store.operation(&id).unwrap().unwrap();
        assert_eq!((o.status, o.transaction_id), (OpStatus::Failed, None));
        // Nor does a late failure overwrite a success.
        let store = Store::in_memory().unwrap();
        charged(&store, "q");
        let before = store.payment("m", "q").unwrap();
        assert_eq!(store.apply("q:cap1", &failed("card_declined")).unwrap(), Applied::AlreadyFinal);
        assert_eq!(store.apply("q:auth", &unknown()).unwrap(), Applied::AlreadyFinal);
        assert_eq!(store.payment("m", "q").unwrap(), before);
        assert_eq!(op_status(&store, "q:cap1"), OpStatus::Succeeded);
    }

    #[test]
    fn applying_to_an_unknown_operation_is_not_found() {
        let store = Store::in_memory().unwrap();
        assert!(matches!(store.apply("nope", &succeeded("t")), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn captures_add_up_to_charged() {
        let store = Store::in_memory().unwrap();
        authorized(&store, "p");
        capture(&store, "p", 1, 600);
        let p = store.payment("m", "p").unwrap();
        assert_eq!(amounts(&p), (AttemptStatus::PartialCharged, 1000, 600));
        // The capture's reference does not replace the authorization's.
        assert_eq!(p.connector_transaction_id.as_deref(), Some("txn_auth"));
        capture(&store, "p", 2, 400);
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Charged, 1000, 1000));
        assert_eq!(store.count_operations("m", "p", "payments.capture").unwrap(), 2);
    }

    #[test]
    fn a_capture_reply_applied_twice_captures_once() {
        let store = Store::in_memory().unwrap();
        authorized(&store, "p");
        capture(&store, "p", 1, 300);
        assert_eq!(store.apply("p:cap1", &succeeded("txn_cap")).unwrap(), Applied::AlreadyFinal);
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::PartialCharged, 1000, 300));
    }

    #[test]
    fn a_capture_must_fit_the_capturable_amount() {
        let store = Store::in_memory().unwrap();
        authorized(&store, "p");
        for amount in [Some(0), Some(-5), None, Some(1001)] {
            let cap = op("p:bad", "p", "payments.capture", "p_bad", amount);
            assert!(matches!(store.begin_operation(&cap), Err(StoreError::Amount(_))), "{amount:?}");
        }
        capture(&store, "p", 1, 600);
        let cap = op("p:bad", "p", "payments.capture", "p_bad", Some(401));
        assert!(matches!(store.begin_operation(&cap), Err(StoreError::Amount(_))));
        // Refused starts leave nothing behind.
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::PartialCharged, 1000, 600));
        assert_eq!(store.count_operations("m", "p", "payments.capture").unwrap(), 1);
        // Not from a payment that is not authorized.
        let (store, _) = authorizing(CaptureMethod::Manual);
        let cap = op("p:cap", "p", "payments.capture", "p_cap", Some(10));
        assert!(matches!(store.begin_operation(&cap), Err(StoreError::State { .. })));
    }

    #[test]
    fn a_failed_capture_returns_to_where_it_started() {
        let store = Store::in_memory().unwrap();
        authorized(&store, "p");
        store.begin_operation(&op("p:cap1", "p", "payments.capture", "p_cap1", Some(500))).unwrap();
        store.apply("p:cap1", &failed("capture_refused")).unwrap();
        let p = store.payment("m", "p").unwrap();
        assert_eq!(amounts(&p), (AttemptStatus::Authorized, 1000, 0));
        assert_eq!(p.error_code.as_deref(), Some("capture_refused"));
        capture(&store, "p", 2, 500);
        store.begin_operation(&op("p:cap3", "p", "payments.capture", "p_cap3", Some(500))).unwrap();
        store.apply("p:cap3", &failed("capture_refused")).unwrap();
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::PartialCharged, 1000, 500));
    }

    #[test]
    fn an_unknown_capture_stays_capture_initiated_until_settled() {
        let store = Store::in_memory().unwrap();
        authorized(&store, "p");
        store.begin_operation(&op("p:cap1", "p", "payments.capture", "p_cap1", Some(1000))).unwrap();
        assert_eq!(store.apply("p:cap1", &unknown()).unwrap(), Applied::Changed);
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::CaptureInitiated, 1000, 0));
        assert_eq!(op_status(&store, "p:cap1"), OpStatus::Unknown);
        assert_eq!(store.transitional_payments().unwrap().len(), 1);
        // A second capture cannot start meanwhile.
        let other = op("p:cap2", "p", "payments.capture", "p_cap2", Some(10));
        assert!(matches!(store.begin_operation(&other), Err(StoreError::State { .. })));
        assert_eq!(store.apply("p:cap1", &succeeded("txn_cap")).unwrap(), Applied::Changed);
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Charged, 1000, 1000));
        assert!(store.transitional_payments().unwrap().is_empty());
    }

    #[test]
    fn a_void_cancels_an_authorized_payment_only() {
        let store = Store::in_memory().unwrap();
        authorized(&store, "p");
        let void = op("p:void", "p", "payments.void", "p_void", None);
        assert_eq!(store.begin_operation(&void).unwrap().status, AttemptStatus::VoidInitiated);
        assert_eq!(store.apply("p:void", &unknown()).unwrap(), Applied::Changed);
        assert_eq!(store.payment("m", "p").unwrap().status, AttemptStatus::VoidInitiated);
        assert_eq!(store.apply("p:void", &succeeded("txn_void")).unwrap(), Applied::Changed);
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Voided, 1000, 0));
        assert_eq!(store.apply("p:void", &failed("late")).unwrap(), Applied::AlreadyFinal);
        assert_eq!(store.payment("m", "p").unwrap().status, AttemptStatus::Voided);
        // Nothing after a void: no capture, no second void.
        assert!(matches!(store.begin_operation(&op("p:cap", "p", "payments.capture", "c", Some(1))), Err(StoreError::State { .. })));
        assert!(matches!(store.begin_operation(&op("p:void2", "p", "payments.void", "v", None)), Err(StoreError::State { .. })));
        // A refused void leaves the payment authorized.
        authorized(&store, "q");
        store.begin_operation(&op("q:void", "q", "payments.void", "q_void", None)).unwrap();
        store.apply("q:void", &failed("void_refused")).unwrap();
        assert_eq!(amounts(&store.payment("m", "q").unwrap()), (AttemptStatus::Authorized, 1000, 0));
        // A partly captured payment cannot be voided.
        capture(&store, "q", 1, 100);
        assert!(matches!(store.begin_operation(&op("q:void2", "q", "payments.void", "v", None)), Err(StoreError::State { .. })));
    }

    #[test]
    fn an_incremental_authorization_raises_the_authorized_amount_once() {
        let store = Store::in_memory().unwrap();
        authorized(&store, "p");
        for amount in [Some(0), None] {
            let inc = op("p:inc0", "p", "payments.incremental_auth", "p_inc0", amount);
            assert!(matches!(store.begin_operation(&inc), Err(StoreError::Amount(_))));
        }
        let inc = op("p:inc1", "p", "payments.incremental_auth", "p_inc1", Some(500));
        // No transitional state of its own.
        assert_eq!(store.begin_operation(&inc).unwrap().status, AttemptStatus::Authorized);
        assert_eq!(store.apply("p:inc1", &succeeded("txn_inc")).unwrap(), Applied::Changed);
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Authorized, 1500, 0));
        assert_eq!(store.apply("p:inc1", &succeeded("txn_inc")).unwrap(), Applied::AlreadyFinal);
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Authorized, 1500, 0));
        // A refused increment changes no amount.
        store.begin_operation(&op("p:inc2", "p", "payments.incremental_auth", "p_inc2", Some(100))).unwrap();
        store.apply("p:inc2", &failed("refused")).unwrap();
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Authorized, 1500, 0));
        // The increment is capturable.
        capture(&store, "p", 1, 1500);
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Charged, 1500, 1500));
    }

    #[test]
    fn an_increment_that_succeeds_after_a_void_changes_nothing() {
        // An increment has no state of its own, so a void can start while it is in flight; once
        // the void has settled the payment, the increment's late success must not raise what
        // is authorized on a voided payment.
        let store = Store::in_memory().unwrap();
        authorized(&store, "p");
        store.begin_operation(&op("p:inc1", "p", "payments.incremental_auth", "p_inc1", Some(500))).unwrap();
        assert_eq!(
            store.begin_operation(&op("p:void", "p", "payments.void", "p_void", None)).unwrap().status,
            AttemptStatus::VoidInitiated
        );
        assert_eq!(store.apply("p:void", &succeeded("txn_void")).unwrap(), Applied::Changed);
        store.apply("p:inc1", &succeeded("txn_inc")).unwrap();
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Voided, 1000, 0));
    }

    #[test]
    fn a_refund_holds_its_amount_until_it_succeeds() {
        let store = Store::in_memory().unwrap();
        charged(&store, "p");
        let id = begin_refund(&store, "r1", "p", 300).unwrap();
        assert_eq!(refunds_of(&store, "p"), (AttemptStatus::Charged, 0, 300));
        let r = store.refund("m", "r1").unwrap();
        assert_eq!((r.status, r.amount, r.currency.as_str()), (RefundStatus::Pending, 300, "USD"));
        assert_eq!(op_status(&store, &id), OpStatus::InFlight);
        assert_eq!(store.apply(&id, &succeeded("rfnd_1")).unwrap(), Applied::Changed);
        assert_eq!(refunds_of(&store, "p"), (AttemptStatus::Charged, 300, 0));
        let r = store.refund("m", "r1").unwrap();
        assert_eq!((r.status, r.connector_refund_id.as_deref()), (RefundStatus::Success, Some("rfnd_1")));
        // A duplicate reply refunds nothing more.
        assert_eq!(store.apply(&id, &succeeded("rfnd_1")).unwrap(), Applied::AlreadyFinal);
        assert_eq!(refunds_of(&store, "p"), (AttemptStatus::Charged, 300, 0));
        assert_eq!(store.apply(&id, &failed("late")).unwrap(), Applied::AlreadyFinal);
        assert_eq!(store.refund("m", "r1").unwrap().status, RefundStatus::Success);
    }

    #[test]
    fn a_failed_refund_releases_its_hold() {
        let store = Store::in_memory().unwrap();
        charged(&store, "p");
        let id = begin_refund(&store, "r1", "p", 1000).unwrap();
        assert_eq!(store.apply(&id, &failed("refund_refused")).unwrap(), Applied::Changed);
        assert_eq!(refunds_of(&store, "p"), (AttemptStatus::Charged, 0, 0));
        let r = store.refund("m", "r1").unwrap();
        assert_eq!((r.status, r.error_code.as_deref()), (RefundStatus::Failure, Some("refund_refused")));
        // The whole amount is refundable again.
        begin_refund(&store, "r2", "p", 1000).unwrap();
        assert_eq!(refunds_of(&store, "p"), (AttemptStatus::Charged, 0, 1000));
    }

    #[test]
    fn an_unknown_refund_keeps_its_hold_and_stays_open() {
        let store = Store::in_memory().unwrap();
        charged(&store, "p");
        let id = begin_refund(&store, "r1", "p", 400).unwrap();
        assert_eq!(store.apply(&id, &unknown()).unwrap(), Applied::Changed);
        assert_eq!(refunds_of(&store, "p"), (AttemptStatus::Charged, 0, 400));
        assert_eq!(store.refund("m", "r1").unwrap().status, RefundStatus::Pending);
        assert_eq!(op_status(&store, &id), OpStatus::Unknown);
        let open: Vec<_> = store.unresolved_operations(now_ms() + 1).unwrap().into_iter().map(|o| o.message_id).collect();
        assert_eq!(open, [id.as_str()]);
        store.apply(&id, &succeeded("rfnd")).unwrap();
        assert_eq!(refunds_of(&store, "p"), (AttemptStatus::Charged, 400, 0));
        assert!(store.unresolved_operations(now_ms() + 1).unwrap().is_empty());
    }

    #[test]
    fn refunds_never_exceed_what_was_captured() {
        let store = Store::in_memory().unwrap();
        authorized(&store, "p");
        // Nothing captured yet: nothing to refund.
        assert!(matches!(begin_refund(&store, "r0", "p", 1), Err(StoreError::State { .. })));
        capture(&store, "p", 1, 600);
        assert!(matches!(begin_refund(&store, "r1", "p", 601), Err(StoreError::Amount(_))));
        assert!(matches!(begin_refund(&store, "r1", "p", 0), Err(StoreError::Amount(_))));
        let held = begin_refund(&store, "r1", "p", 400).unwrap();
        // Pending refunds count against what is left.
        assert!(matches!(begin_refund(&store, "r2", "p", 201), Err(StoreError::Amount(_))));
        store.apply(&held, &succeeded("rf1")).unwrap();
        assert!(matches!(begin_refund(&store, "r2", "p", 201), Err(StoreError::Amount(_))));
        begin_refund(&store, "r2", "p", 200).unwrap();
        assert!(matches!(begin_refund(&store, "r3", "p", 1), Err(StoreError::Amount(_))));
        let p = store.payment("m", "p").unwrap();
        assert_eq!((p.amount_captured, p.amount_refunded, p.amount_refund_pending), (600, 400, 200));
        // Refused refunds were not recorded, nor their operations.
        assert_eq!(store.all_refunds().unwrap().len(), 2);
        assert_eq!(store.count_operations("m", "p", "refunds.execute").unwrap(), 2);
        // A refund id is used once.
        capture(&store, "p", 2, 400);
        assert!(matches!(begin_refund(&store, "r1", "p", 10), Err(StoreError::Exists(_))));
        assert_eq!(store.refund("m", "r1").unwrap().amount, 400);
    }

    #[test]
    fn a_recorded_operation_moves_no_payment_state() {
        let store = Store::in_memory().unwrap();
        authorized(&store, "p");
        let before = store.payment("m", "p").unwrap();
        let mandate = op("p:mandate", "p", "mandates.setup", "mdt_1", Some(1000));
        store.record_operation(&mandate).unwrap();
        // Recording it again keeps the first.
        store.record_operation(&OperationRecord { object_id: "other".into(), ..mandate.clone() }).unwrap();
        assert_eq!(store.count_operations("m", "p", "mandates.setup").unwrap(), 1);
        let o = store.operation("p:mandate").unwrap().unwrap();
        assert_eq!((o.status, o.object_id.as_str()), (OpStatus::InFlight, "mdt_1"));
        assert_eq!(store.apply("p:mandate", &failed("refused")).unwrap(), Applied::Changed);
        assert_eq!(op_status(&store, "p:mandate"), OpStatus::Failed);
        assert_eq!(store.payment("m", "p").unwrap(), before);
        assert_eq!(store.apply("p:mandate", &succeeded("late")).unwrap(), Applied::AlreadyFinal);
        assert_eq!(op_status(&store, "p:mandate"), OpStatus::Failed);
    }

    #[test]
    fn unresolved_operations_are_exactly_the_open_ones() {
        let store = Store::in_memory().unwrap();
        for id in ["a", "b", "c", "d"] {
            store.insert_payment(&payment(id)).unwrap();
            store.begin_operation(&op(&format!("{id}:auth"), id, "payments.authorize", &format!("{id}_1"), Some(100))).unwrap();
        }
        store.record_operation(&op("e:token", "e", "tokens.create", "tok", None)).unwrap();
        store.apply("b:auth", &unknown()).unwrap();
        store.apply("c:auth", &succeeded("t")).unwrap();
        store.apply("d:auth", &failed("card_declined")).unwrap();
        let mut open: Vec<_> = store.unresolved_operations(now_ms() + 1).unwrap().into_iter().map(|o| o.message_id).collect();
        open.sort();
        assert_eq!(open, ["a:auth", "b:auth", "e:token"]);
        assert!(store.unresolved_operations(0).unwrap().is_empty(), "nothing open before the epoch");
        // Only those whose last change is older than the bound.
        let b = store.operation("b:auth").unwrap().unwrap();
        for o in store.unresolved_operations(b.updated_ms).unwrap() {
            assert!(o.updated_ms < b.updated_ms);
            assert_ne!(o.message_id, "b:auth");
        }
        // Oldest change first.
        let listed = store.unresolved_operations(now_ms() + 1).unwrap();
        assert!(listed.windows(2).all(|w| w[0].updated_ms <= w[1].updated_ms));
    }

    #[test]
    fn transitional_payments_are_exactly_the_waiting_ones() {
        let store = Store::in_memory().unwrap();
        store.insert_payment(&payment("started")).unwrap();
        store.insert_payment_and_begin(&payment("authorizing"), &op("1", "authorizing", "payments.authorize", "x", Some(100))).unwrap();
        store.insert_payment_and_begin(&payment("pending"), &op("2", "pending", "payments.authorize", "x", Some(100))).unwrap();
        store.apply("2", &unknown()).unwrap();
        store.insert_payment_and_begin(&payment("3ds"), &op("3", "3ds", "payments.authorize", "x", Some(100))).unwrap();
        store.apply("3", &Resolution::RequiresCustomerAction).unwrap();
        authorized(&store, "authorized");
        authorized(&store, "capturing");
        store.begin_operation(&op("4", "capturing", "payments.capture", "x", Some(10))).unwrap();
        authorized(&store, "voiding");
        store.begin_operation(&op("5", "voiding", "payments.void", "x", None)).unwrap();
        charged(&store, "charged");
        let all = store.all_payments().unwrap();
        assert_eq!(all.len(), 8);
        let mut listed: Vec<_> = store.transitional_payments().unwrap().into_iter().map(|p| p.payment_id).collect();
        listed.sort();
        assert_eq!(listed, ["authorizing", "capturing", "pending", "voiding"]);
        // The store's list and the model's definition agree.
        let mut expected: Vec<_> = all.into_iter().filter(|p| p.status.is_transitional()).map(|p| p.payment_id).collect();
        expected.sort();
        assert_eq!(listed, expected);
    }

    #[test]
    fn operations_of_and_count_operations_see_one_payment() {
        let store = Store::in_memory().unwrap();
        authorized(&store, "p");
        authorized(&store, "q");
        capture(&store, "p", 1, 100);
        capture(&store, "p", 2, 100);
        capture(&store, "q", 1, 100);
        let ops: Vec<_> = store.operations_of("m", "p").unwrap().into_iter().map(|o| (o.message_id, o.operation)).collect();
        assert_eq!(
            ops,
            [
                ("p:auth".to_string(), "payments.authorize".to_string()),
                ("p:cap1".to_string(), "payments.capture".to_string()),
                ("p:cap2".to_string(), "payments.capture".to_string()),
            ]
        );
        assert_eq!(store.count_operations("m", "p", "payments.capture").unwrap(), 2);
        assert_eq!(store.count_operations("m", "q", "payments.capture").unwrap(), 1);
        assert_eq!(store.count_operations("m", "p", "payments.void").unwrap(), 0);
        // Per merchant.
        assert!(store.operations_of("other", "p").unwrap().is_empty());
        assert_eq!(store.count_operations("other", "p", "payments.capture").unwrap(), 0);
        assert!(store.operations_of("m", "nope").unwrap().is_empty());
    }

    // --- API idempotency keys. ---

    #[test]
    fn an_idempotency_key_replays_its_answer_to_the_same_request_only() {
        let store = Store::in_memory().unwrap();
        assert_eq!(store.claim_key("m", "k", "fp1").unwrap(), KeyState::New);
        assert_eq!(store.claim_key("m", "k", "fp1").unwrap(), KeyState::InProgress);
        assert_eq!(store.claim_key("m", "k", "fp2").unwrap(), KeyState::Mismatch);
        store.finish_key("m", "k", 201, r#"{"ok":true}"#).unwrap();
        let done = KeyState::Done { status: 201, body: r#"{"ok":true}"#.into() };
        assert_eq!(store.claim_key("m", "k", "fp1").unwrap(), done);
        assert_eq!(store.claim_key("m", "k", "fp1").unwrap(), done);
        assert_eq!(store.claim_key("m", "k", "fp2").unwrap(), KeyState::Mismatch);
        // A finished key is not released.
        store.release_key("m", "k").unwrap();
        assert_eq!(store.claim_key("m", "k", "fp1").unwrap(), done);
        // Keys are per merchant.
        assert_eq!(store.claim_key("other", "k", "fp2").unwrap(), KeyState::New);
    }

    #[test]
    fn a_released_idempotency_key_is_new_again() {
        let store = Store::in_memory().unwrap();
        assert_eq!(store.claim_key("m", "k", "fp1").unwrap(), KeyState::New);
        store.release_key("m", "k").unwrap();
        // Free for any request now, even a different one.
        assert_eq!(store.claim_key("m", "k", "fp2").unwrap(), KeyState::New);
        assert_eq!(store.claim_key("m", "k", "fp1").unwrap(), KeyState::Mismatch);
        // Releasing a key nobody holds is harmless.
        store.release_key("m", "none").unwrap();
        assert_eq!(store.claim_key("m", "none", "fp").unwrap(), KeyState::New);
    }

    // --- Durability. ---

    #[test]
    fn a_reopened_store_has_everything_written_before() {
        let dir = fresh_dir("reopen");
        let path = dir.join("gateway.db");
        let store = Store::open(&path).unwrap();
        authorized(&store, "p");
        capture(&store, "p", 1, 600);
        let held = begin_refund(&store, "r1", "p", 100).unwrap();
        store.apply(&held, &unknown()).unwrap();
        assert_eq!(store.claim_key("m", "k", "fp").unwrap(), KeyState::New);
        store.finish_key("m", "k", 200, "{}").unwrap();
        let (payments, operations, refunds) =
            (store.all_payments().unwrap(), store.all_operations().unwrap(), store.all_refunds().unwrap());
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.all_payments().unwrap(), payments);
        assert_eq!(store.all_operations().unwrap(), operations);
        assert_eq!(store.all_refunds().unwrap(), refunds);
        let p = store.payment("m", "p").unwrap();
        assert_eq!(
            (p.status, p.amount_authorized, p.amount_captured, p.amount_refund_pending),
            (AttemptStatus::PartialCharged, 1000, 600, 100)
        );
        assert_eq!(store.claim_key("m", "k", "fp").unwrap(), KeyState::Done { status: 200, body: "{}".into() });
        // The open refund is still open, and settles after the restart.
        assert_eq!(store.unresolved_operations(now_ms() + 1).unwrap().len(), 1);
        store.apply(&held, &succeeded("rf")).unwrap();
        assert_eq!(refunds_of(&store, "p"), (AttemptStatus::PartialCharged, 100, 0));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_left_in_progress_by_another_instance_is_taken_over() {
        let dir = fresh_dir("takeover");
        let path = dir.join("gateway.db");
        let first = Store::open(&path).unwrap();
        assert_eq!(first.claim_key("m", "k", "fp").unwrap(), KeyState::New);
        drop(first);
        // A restarted gateway is a new instance: the dead one's key is run again.
        let second = Store::open(&path).unwrap();
        assert_eq!(second.claim_key("m", "k", "fp").unwrap(), KeyState::New);
        assert_eq!(second.claim_key("m", "k", "fp").unwrap(), KeyState::InProgress);
        assert_eq!(second.claim_key("m", "k", "other").unwrap(), KeyState::Mismatch);
        drop(second);
        let _ = std::fs::remove_dir_all(&dir);
    }

    // --- Refused starts leave nothing half done. ---

    #[test]
    fn a_start_refused_by_a_taken_message_id_changes_no_state() {
        let store = Store::in_memory().unwrap();
        authorized(&store, "p");
        // The capture would move the payment to capture_initiated; the insert of its operation fails.
        let cap = op("p:auth", "p", "payments.capture", "p_cap", Some(100));
        assert!(matches!(store.begin_operation(&cap), Err(StoreError::Exists(_))));
        assert_eq!(amounts(&store.payment("m", "p").unwrap()), (AttemptStatus::Authorized, 1000, 0));
        assert_eq!(store.operation("p:auth").unwrap().unwrap().operation, "payments.authorize");
        assert!(store.transitional_payments().unwrap().is_empty());
    }

    #[test]
    fn a_refund_refused_by_a_taken_message_id_holds_nothing() {
        let store = Store::in_memory().unwrap();
        charged(&store, "p");
        let o = op("p:cap1", "p", "refunds.execute", "r1", Some(10));
        assert!(store.begin_refund(&refund("r1", "p", 10), &o).is_err());
        assert_eq!(refunds_of(&store, "p"), (AttemptStatus::Charged, 0, 0));
        assert!(matches!(store.refund("m", "r1"), Err(StoreError::NotFound(_))));
        assert_eq!(store.operation("p:cap1").unwrap().unwrap().operation, "payments.capture");
    }

    #[test]
    fn a_new_payment_whose_first_start_is_refused_is_not_kept() {
        let store = Store::in_memory().unwrap();
        // A capture cannot start a payment that was never authorized.
        let err = store.insert_payment_and_begin(&payment("z"), &op("z:cap", "z", "payments.capture", "z_cap", Some(1)));
        assert!(matches!(err, Err(StoreError::State { .. })), "{err:?}");
        assert!(matches!(store.payment("m", "z"), Err(StoreError::NotFound(_))));
        assert!(store.operation("z:cap").unwrap().is_none());
    }

    #[test]
    fn payments_are_per_merchant() {
        let store = Store::in_memory().unwrap();
        authorized(&store, "p");
        let mut other = payment("p");
        other.merchant_id = "n".into();
        store.insert_payment(&other).unwrap();
        assert_eq!(store.payment("n", "p").unwrap().status, AttemptStatus::Started);
        assert!(matches!(store.insert_payment(&other), Err(StoreError::Exists(_))));
        // Capturing merchant m's payment leaves merchant n's alone.
        capture(&store, "p", 1, 1000);
        assert_eq!(store.payment("m", "p").unwrap().status, AttemptStatus::Charged);
        let n = store.payment("n", "p").unwrap();
        assert_eq!((n.status, n.amount_authorized, n.amount_captured), (AttemptStatus::Started, 0, 0));
        assert!(store.operations_of("n", "p").unwrap().is_empty());
        assert!(matches!(store.payment("n", "q"), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn a_recovered_timeout_settles_each_open_operation() {
        // What the recovery job does when nobody has the operation: `CONNECTOR_TIMEOUT`.
        let timeout = failed("CONNECTOR_TIMEOUT");
        let store = Store::in_memory().unwrap();
        authorized(&store, "cap");
        store.begin_operation(&op("cap:c", "cap", "payments.capture", "c", Some(1000))).unwrap();
        store.apply("cap:c", &unknown()).unwrap();
        authorized(&store, "void");
        store.begin_operation(&op("void:v", "void", "payments.void", "v", None)).unwrap();
        charged(&store, "ref");
        let refund_op = begin_refund(&store, "r", "ref", 500).unwrap();
        store.insert_payment_and_begin(&payment("auth"), &op("auth:a", "auth", "payments.authorize", "a", Some(100))).unwrap();
        store.apply("auth:a", &unknown()).unwrap();
        let open = store.unresolved_operations(now_ms() + 1).unwrap();
        assert_eq!(open.len(), 4);
        for o in &open {
            assert_eq!(store.apply(&o.message_id, &timeout).unwrap(), Applied::Changed);
        }
        assert_eq!(amounts(&store.payment("m", "cap").unwrap()), (AttemptStatus::Authorized, 1000, 0));
        assert_eq!(store.payment("m", "void").unwrap().status, AttemptStatus::Authorized);
        assert_eq!(refunds_of(&store, "ref"), (AttemptStatus::Charged, 0, 0));
        assert_eq!(store.refund("m", "r").unwrap().status, RefundStatus::Failure);
        assert_eq!(op_status(&store, &refund_op), OpStatus::Failed);
        assert_eq!(store.payment("m", "auth").unwrap().status, AttemptStatus::Failure);
        assert!(store.unresolved_operations(now_ms() + 1).unwrap().is_empty());
        assert!(store.transitional_payments().unwrap().is_empty());
        // And a second pass of the job finds nothing to change.
        for o in &open {
            assert_eq!(store.apply(&o.message_id, &timeout).unwrap(), Applied::AlreadyFinal);
        }
    }
}
