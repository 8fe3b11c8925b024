//! [`Processor`]: the shared, thread-safe handle on one ledger and its settings.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::ledger::{Ledger, Submission};
use crate::types::{Account, Effect, EffectRequest, ProcessorConfig};

/// A running processor's state: one [`Ledger`] and its [`ProcessorConfig`].
///
/// Cheap to clone; clones share the state. Every operation takes one lock for
/// its whole duration, so concurrent submissions under one idempotency key are
/// serialised and record at most one effect.
#[derive(Debug, Clone, Default)]
pub struct Processor {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    ledger: Ledger,
    config: ProcessorConfig,
}

impl Processor {
    /// A processor with an empty ledger and settings `config`.
    pub fn new(config: ProcessorConfig) -> Self {
        Self { state: Arc::new(Mutex::new(State { ledger: Ledger::new(), config })) }
    }

    /// Current settings.
    pub fn config(&self) -> ProcessorConfig {
        self.lock().config.clone()
    }

    /// Replaces the settings; applies to requests that arrive afterwards.
    pub fn set_config(&self, config: ProcessorConfig) {
        self.lock().config = config;
    }

    /// Processes `request` sent under idempotency key `key`, honouring the key
    /// if the settings say so; see [`Ledger::submit`].
    pub fn submit(&self, request: &EffectRequest, key: Option<&str>) -> Submission {
        let mut state = self.lock();
        let idempotency = state.config.idempotency;
        state.ledger.submit(request, key, idempotency, now_ms())
    }

    /// A copy of every recorded effect, in `seq` order.
    pub fn ledger(&self) -> Vec<Effect> {
        self.lock().ledger.effects().to_vec()
    }

    /// Recorded effects of merchant `merchant_id` and/or payment `payment_id`
    /// (`None` matches any), in `seq` order.
    pub fn effects_matching(&self, merchant_id: Option<&str>, payment_id: Option<&str>) -> Vec<Effect> {
        self.lock().ledger.effects_matching(merchant_id, payment_id)
    }

    /// Recorded effects made under idempotency key `key`, in `seq` order.
    pub fn effects_by_key(&self, key: &str) -> Vec<Effect> {
        self.lock().ledger.effects_by_key(key)
    }

    /// Recorded effects of merchant `merchant_id` with reference `reference`.
    pub fn effects_by_reference(&self, merchant_id: &str, reference: &str) -> Vec<Effect> {
        self.lock().ledger.effects_by_reference(merchant_id, reference)
    }

    /// The account `(merchant_id, payment_id)`, `None` if it has no effect.
    pub fn account(&self, merchant_id: &str, payment_id: &str) -> Option<Account> {
        self.lock().ledger.account(merchant_id, payment_id)
    }

    /// Empties the ledger (see [`Ledger::reset`]); keeps the settings.
    pub fn reset(&self) {
        self.lock().ledger.reset();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The ledger checks every rule before it mutates anything, so the state
        // behind a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
