//! The processor's state and rules, free of I/O and clocks.
//!
//! A [`Ledger`] holds every recorded [`Effect`], the money state of each account
//! `(merchant_id, payment_id)`, the state of each payout `(merchant_id, reference)`
//! and the responses stored per idempotency key. [`Ledger::submit`] is the only
//! way to change it; it either records exactly one effect or records nothing.
//!
//! # Rules
//!
//! Amounts are in minor units. A request that breaks a rule is a
//! [`RuleViolation`] and leaves the state untouched.
//!
//! | operation | rule |
//! |---|---|
//! | `payments.authorize` | amount > 0, currency required, account not authorized before (also not if voided); with `capture_method` automatic it also captures the whole amount, in the same effect |
//! | `payments.incremental_auth` | amount > 0, account authorized, not voided |
//! | `payments.capture` | amount > 0, account authorized, not voided, amount <= authorized - captured |
//! | `payments.void` | account authorized, not voided, nothing captured |
//! | `refunds.execute` | reference required, amount > 0, amount <= captured - refunded |
//! | `payouts.create` | reference (payout id) required, amount > 0 |
//! | `payouts.fulfill` | reference required, payout created, not cancelled |
//! | `payouts.cancel` | reference required, payout created, not fulfilled |
//! | anything else | recorded as is |
//!
//! For every operation, a currency on the request must equal the account's
//! currency (set by the authorization) and, for payouts, the payout's currency.
//!
//! # Automatic capture
//!
//! A `payments.authorize` whose request says `capture_method: automatic` is a
//! charge in one call, as a connector does it when Hyperswitch sends an
//! authorization with automatic capture: it records exactly one effect (the
//! authorization, `amount` = authorized), and the same change sets the
//! account's `captured` to the authorized amount (status `captured`). The
//! effect's `captured_amount` says so; there is no separate `payments.capture`
//! effect. The rules are those of any authorization: a refused one records
//! nothing and captures nothing. `capture_method` is ignored by every other
//! operation; absent or `manual`, an authorization only authorizes.
//!
//! Repeating an effect that the rules allow (a second capture that still fits, a
//! second refund or fulfilment of the same reference) is recorded: such
//! duplicates are what the checkers look for.
//!
//! # Idempotency
//!
//! With idempotency on, the first request under a key is processed and its
//! outcome — effect or rule violation — is stored with the request. A later
//! request under that key replays the stored outcome if it is equal to the stored
//! request (compared as parsed values, so JSON whitespace and field order do not
//! matter) and is refused with [`Submission::KeyReused`] otherwise. With
//! idempotency off, nothing is stored or looked up; keys used meanwhile are not
//! remembered when it is turned back on.

use std::collections::BTreeMap;

use crate::types::{Account, AccountStatus, CaptureMethod, Effect, EffectRequest};

/// Operation names that carry rules; any other name is recorded as is.
pub mod ops {
    /// Authorizes an amount on a payment; the first money effect of a payment.
    /// With automatic capture it captures that amount too, in the same effect.
    pub const AUTHORIZE: &str = "payments.authorize";
    /// Raises the authorized amount.
    pub const INCREMENTAL_AUTH: &str = "payments.incremental_auth";
    /// Captures part or all of what is still authorized.
    pub const CAPTURE: &str = "payments.capture";
    /// Releases an authorization of which nothing was captured.
    pub const VOID: &str = "payments.void";
    /// Refunds part or all of what is still captured.
    pub const REFUND: &str = "refunds.execute";
    /// Creates a payout identified by the reference.
    pub const PAYOUT_CREATE: &str = "payouts.create";
    /// Pays out a created payout.
    pub const PAYOUT_FULFILL: &str = "payouts.fulfill";
    /// Cancels a created payout.
    pub const PAYOUT_CANCEL: &str = "payouts.cancel";
}

/// Why a request was refused by the rules. Nothing is recorded for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleViolation {
    /// The operation needs a positive amount and got none, zero or a negative one.
    #[error("{operation} needs a positive amount")]
    InvalidAmount {
        /// Operation that was requested.
        operation: String,
    },
    /// Adding the amount would overflow the account's totals.
    #[error("amount {amount} overflows the account's totals")]
    AmountOverflow {
        /// Amount that was requested.
        amount: i64,
    },
    /// `payments.authorize` without a currency.
    #[error("payments.authorize needs a currency")]
    CurrencyRequired,
    /// The request's currency differs from the account's or payout's.
    #[error("currency {requested} does not match {expected}")]
    CurrencyMismatch {
        /// Currency already fixed for the account or payout.
        expected: String,
        /// Currency on the request.
        requested: String,
    },
    /// The operation needs a reference (refund id, payout id) and got none.
    #[error("{operation} needs a reference")]
    ReferenceRequired {
        /// Operation that was requested.
        operation: String,
    },
    /// A second `payments.authorize` on one account.
    #[error("payment is already authorized")]
    AlreadyAuthorized,
    /// A payment operation on an account without authorization.
    #[error("payment is not authorized")]
    NotAuthorized,
    /// A payment operation on a voided authorization.
    #[error("payment is voided")]
    AlreadyVoided,
    /// `payments.void` after a capture.
    #[error("payment has captures and cannot be voided")]
    AlreadyCaptured,
    /// Capture larger than what is still authorized.
    #[error("amount {amount} exceeds the capturable {capturable}")]
    AmountExceedsCapturable {
        /// Amount that was requested.
        amount: i64,
        /// Authorized minus captured.
        capturable: i64,
    },
    /// Refund larger than what is still captured.
    #[error("amount {amount} exceeds the refundable {refundable}")]
    AmountExceedsRefundable {
        /// Amount that was requested.
        amount: i64,
        /// Captured minus refunded.
        refundable: i64,
    },
    /// `payouts.fulfill` or `payouts.cancel` for a payout never created.
    #[error("no payout {reference}")]
    PayoutNotFound {
        /// Payout id that was requested.
        reference: String,
    },
    /// `payouts.fulfill` for a cancelled payout.
    #[error("payout {reference} is cancelled")]
    PayoutCancelled {
        /// Payout id that was requested.
        reference: String,
    },
    /// `payouts.cancel` for a fulfilled payout.
    #[error("payout {reference} is fulfilled")]
    PayoutFulfilled {
        /// Payout id that was requested.
        reference: String,
    },
}

impl RuleViolation {
    /// Stable machine-readable code, used as [`crate::types::ApiError::code`].
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidAmount { .. } => "invalid_amount",
            Self::AmountOverflow { .. } => "amount_overflow",
            Self::CurrencyRequired => "currency_required",
            Self::CurrencyMismatch { .. } => "currency_mismatch",
            Self::ReferenceRequired { .. } => "reference_required",
            Self::AlreadyAuthorized => "already_authorized",
            Self::NotAuthorized => "not_authorized",
            Self::AlreadyVoided => "already_voided",
            Self::AlreadyCaptured => "already_captured",
            Self::AmountExceedsCapturable { .. } => "amount_exceeds_capturable",
            Self::AmountExceedsRefundable { .. } => "amount_exceeds_refundable",
            Self::PayoutNotFound { .. } => "payout_not_found",
            Self::PayoutCancelled { .. } => "payout_cancelled",
            Self::PayoutFulfilled { .. } => "payout_fulfilled",
        }
    }

    /// Whether the violation is a conflict with existing state (HTTP 409) rather
    /// than an unprocessable request (HTTP 422). Only a repeated authorization is.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::AlreadyAuthorized)
    }
}

/// What [`Ledger::submit`] did with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// The request was processed now: one effect recorded, or refused by a rule.
    Processed(Result<Effect, RuleViolation>),
    /// The key was seen before with an equal request: its stored outcome,
    /// nothing new recorded.
    Replayed(Result<Effect, RuleViolation>),
    /// The key was seen before with a different request; nothing recorded.
    KeyReused,
}

/// Money state of one account `(merchant_id, payment_id)`.
#[derive(Debug, Clone, Default)]
struct AccountState {
    /// Set by `payments.authorize`; distinguishes "never authorized" from
    /// "authorized then voided".
    authorization: bool,
    /// Currency of the authorization.
    currency: Option<String>,
    authorized: i64,
    captured: i64,
    refunded: i64,
    voided: bool,
}

/// State of one payout `(merchant_id, reference)`.
#[derive(Debug, Clone, Default)]
struct PayoutState {
    /// Currency of the first `payouts.create` that named one.
    currency: Option<String>,
    fulfilled: bool,
    cancelled: bool,
}

/// A stored idempotent response: the request it answered, to detect key reuse,
/// and its outcome, to replay.
#[derive(Debug, Clone)]
struct StoredResponse {
    request: EffectRequest,
    outcome: Result<Effect, RuleViolation>,
}

/// The state change a valid request makes, computed before anything is mutated
/// so that a violation leaves no trace.
enum Change {
    /// `capture`: automatic capture, the whole amount is captured too.
    Authorize {
        amount: i64,
        currency: String,
        capture: bool,
    },
    SetAuthorized(i64),
    SetCaptured(i64),
    Void,
    SetRefunded(i64),
    CreatePayout {
        reference: String,
    },
    FulfillPayout {
        reference: String,
    },
    CancelPayout {
        reference: String,
    },
    Nothing,
}

/// Account key `(merchant_id, payment_id)`, or payout/reference key
/// `(merchant_id, reference)`.
type Key = (String, String);

/// The processor's whole state. See the [module documentation](self) for the rules.
///
/// The maps are B-trees, not hash maps: a hash map doubles and rehashes every entry at once
/// when it fills, and at 1000 req/s that pause (tens of milliseconds at about 8,000 and 16,000
/// effects) was the latency spike every load run showed at the same seconds.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Recorded effects; `effects[i].seq == i + 1`.
    effects: Vec<Effect>,
    accounts: BTreeMap<Key, AccountState>,
    payouts: BTreeMap<Key, PayoutState>,
    /// Indices into `effects` per idempotency key, for `effects_by_key`.
    by_key: BTreeMap<String, Vec<usize>>,
    /// Indices into `effects` per `(merchant_id, reference)`.
    by_reference: BTreeMap<Key, Vec<usize>>,
    /// Stored outcomes per idempotency key (only while idempotency is on).
    responses: BTreeMap<String, StoredResponse>,
    /// Effects ever recorded, including before resets; source of `effect_id`.
    issued: u64,
}

impl Ledger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Processes `request`, sent under `key`, at wall-clock time `now_ms`.
    ///
    /// With `idempotency` on and a key, applies the idempotency rules of the
    /// [module documentation](self); otherwise processes the request anew. A
    /// recorded effect carries `key` either way.
    pub fn submit(&mut self, request: &EffectRequest, key: Option<&str>, idempotency: bool, now_ms: u64) -> Submission {
        let Some(key) = key.filter(|_| idempotency) else {
            return Submission::Processed(self.apply(request, key, now_ms));
        };
        if let Some(stored) = self.responses.get(key) {
            return if stored.request == *request { Submission::Replayed(stored.outcome.clone()) } else { Submission::KeyReused };
        }
        let outcome = self.apply(request, Some(key), now_ms);
        self.responses.insert(key.to_owned(), StoredResponse { request: request.clone(), outcome: outcome.clone() });
        Submission::Processed(outcome)
    }

    /// All recorded effects, in `seq` order.
    pub fn effects(&self) -> &[Effect] {
        &self.effects
    }

    /// Effects recorded under idempotency key `key`, in `seq` order (more than
    /// one only if idempotency was off at some point).
    pub fn effects_by_key(&self, key: &str) -> Vec<Effect> {
        self.collect(self.by_key.get(key))
    }

    /// Effects of merchant `merchant_id` with reference `reference`, in `seq` order.
    pub fn effects_by_reference(&self, merchant_id: &str, reference: &str) -> Vec<Effect> {
        self.collect(self.by_reference.get(&(merchant_id.to_owned(), reference.to_owned())))
    }

    /// Effects matching both filters (a `None` filter matches everything), in
    /// `seq` order.
    pub fn effects_matching(&self, merchant_id: Option<&str>, payment_id: Option<&str>) -> Vec<Effect> {
        self.effects
            .iter()
            .filter(|e| merchant_id.is_none_or(|m| e.merchant_id == m))
            .filter(|e| payment_id.is_none_or(|p| e.payment_id == p))
            .cloned()
            .collect()
    }

    /// The account `(merchant_id, payment_id)`, or `None` if no effect was
    /// recorded for it.
    pub fn account(&self, merchant_id: &str, payment_id: &str) -> Option<Account> {
        let state = self.accounts.get(&(merchant_id.to_owned(), payment_id.to_owned()))?;
        Some(Account {
            merchant_id: merchant_id.to_owned(),
            payment_id: payment_id.to_owned(),
            currency: state.currency.clone(),
            authorized: state.authorized,
            captured: state.captured,
            refunded: state.refunded,
            voided: state.voided,
            status: state.status(),
        })
    }

    /// Forgets every effect, account, payout and stored response. `seq` starts
    /// again at 1; `effect_id`s keep counting so none is ever reused.
    pub fn reset(&mut self) {
        *self = Self { issued: self.issued, ..Self::default() };
    }

    fn collect(&self, indices: Option<&Vec<usize>>) -> Vec<Effect> {
        indices.map(|ix| ix.iter().map(|&i| self.effects[i].clone()).collect()).unwrap_or_default()
    }

    /// Checks the rules, then records the effect and applies its change.
    fn apply(&mut self, request: &EffectRequest, key: Option<&str>, now_ms: u64) -> Result<Effect, RuleViolation> {
        let account_key = (request.merchant_id.clone(), request.payment_id.clone());
        let change = self.check(request, self.accounts.get(&account_key))?;

        let index = self.effects.len();
        self.issued += 1;
        let effect = Effect {
            effect_id: format!("eff_{:08}", self.issued),
            seq: index as u64 + 1,
            operation: request.operation.clone(),
            merchant_id: request.merchant_id.clone(),
            payment_id: request.payment_id.clone(),
            reference: request.reference.clone(),
            amount: request.amount,
            currency: request.currency.clone(),
            details: request.details.clone(),
            captured_amount: match change {
                Change::Authorize { amount, capture: true, .. } => Some(amount),
                _ => None,
            },
            idempotency_key: key.map(str::to_owned),
            created_at_ms: now_ms,
        };

        let account = self.accounts.entry(account_key).or_default();
        match change {
            Change::Authorize { amount, currency, capture } => {
                account.authorization = true;
                account.authorized = amount;
                account.currency = Some(currency);
                if capture {
                    account.captured = amount;
                }
            }
            Change::SetAuthorized(total) => account.authorized = total,
            Change::SetCaptured(total) => account.captured = total,
            Change::Void => account.voided = true,
            Change::SetRefunded(total) => account.refunded = total,
            Change::CreatePayout { reference } => {
                let payout = self.payouts.entry((request.merchant_id.clone(), reference)).or_default();
                if payout.currency.is_none() {
                    payout.currency = request.currency.clone();
                }
            }
            Change::FulfillPayout { reference } => {
                self.payout_mut(&request.merchant_id, reference).fulfilled = true;
            }
            Change::CancelPayout { reference } => {
                self.payout_mut(&request.merchant_id, reference).cancelled = true;
            }
            Change::Nothing => {}
        }
        if let Some(key) = key {
            self.by_key.entry(key.to_owned()).or_default().push(index);
        }
        if let Some(reference) = &request.reference {
            self.by_reference.entry((request.merchant_id.clone(), reference.clone())).or_default().push(index);
        }
        self.effects.push(effect.clone());
        Ok(effect)
    }

    fn payout_mut(&mut self, merchant_id: &str, reference: String) -> &mut PayoutState {
        // `check` made sure the payout exists.
        self.payouts.entry((merchant_id.to_owned(), reference)).or_default()
    }

    /// The change `request` makes to `account` (None if the account has no
    /// effect yet), or the first rule it breaks.
    fn check(&self, request: &EffectRequest, account: Option<&AccountState>) -> Result<Change, RuleViolation> {
        let fresh = AccountState::default();
        let account = account.unwrap_or(&fresh);
        let operation = request.operation.as_str();
        let positive_amount = || match request.amount {
            Some(amount) if amount > 0 => Ok(amount),
            _ => Err(RuleViolation::InvalidAmount { operation: request.operation.clone() }),
        };
        let reference =
            || request.reference.clone().ok_or_else(|| RuleViolation::ReferenceRequired { operation: request.operation.clone() });
        let add = |total: i64, amount: i64| total.checked_add(amount).ok_or(RuleViolation::AmountOverflow { amount });

        // The account has a currency only once authorized, and a second
        // authorization is refused as such whatever its currency.
        if operation != ops::AUTHORIZE {
            same_currency(account.currency.as_deref(), request.currency.as_deref())?;
        }

        match operation {
            ops::AUTHORIZE => {
                let amount = positive_amount()?;
                let currency = request.currency.clone().ok_or(RuleViolation::CurrencyRequired)?;
                if account.authorization {
                    return Err(RuleViolation::AlreadyAuthorized);
                }
                let capture = request.capture_method == Some(CaptureMethod::Automatic);
                Ok(Change::Authorize { amount, currency, capture })
            }
            ops::INCREMENTAL_AUTH => {
                let amount = positive_amount()?;
                account.require_open()?;
                Ok(Change::SetAuthorized(add(account.authorized, amount)?))
            }
            ops::CAPTURE => {
                let amount = positive_amount()?;
                account.require_open()?;
                let capturable = account.authorized - account.captured;
                if amount > capturable {
                    return Err(RuleViolation::AmountExceedsCapturable { amount, capturable });
                }
                Ok(Change::SetCaptured(add(account.captured, amount)?))
            }
            ops::VOID => {
                account.require_open()?;
                if account.captured > 0 {
                    return Err(RuleViolation::AlreadyCaptured);
                }
                Ok(Change::Void)
            }
            ops::REFUND => {
                reference()?;
                let amount = positive_amount()?;
                let refundable = account.captured - account.refunded;
                if amount > refundable {
                    return Err(RuleViolation::AmountExceedsRefundable { amount, refundable });
                }
                Ok(Change::SetRefunded(add(account.refunded, amount)?))
            }
            ops::PAYOUT_CREATE => {
                let reference = reference()?;
                positive_amount()?;
                if let Some(payout) = self.payout(&request.merchant_id, &reference) {
                    same_currency(payout.currency.as_deref(), request.currency.as_deref())?;
                }
                Ok(Change::CreatePayout { reference })
            }
            ops::PAYOUT_FULFILL | ops::PAYOUT_CANCEL => {
                let reference = reference()?;
                let Some(payout) = self.payout(&request.merchant_id, &reference) else {
                    return Err(RuleViolation::PayoutNotFound { reference });
                };
                same_currency(payout.currency.as_deref(), request.currency.as_deref())?;
                if operation == ops::PAYOUT_FULFILL {
                    if payout.cancelled {
                        return Err(RuleViolation::PayoutCancelled { reference });
                    }
                    Ok(Change::FulfillPayout { reference })
                } else {
                    if payout.fulfilled {
                        return Err(RuleViolation::PayoutFulfilled { reference });
                    }
                    Ok(Change::CancelPayout { reference })
                }
            }
            _ => Ok(Change::Nothing),
        }
    }

    fn payout(&self, merchant_id: &str, reference: &str) -> Option<&PayoutState> {
        self.payouts.get(&(merchant_id.to_owned(), reference.to_owned()))
    }
}

impl AccountState {
    /// Authorized and not voided: the state every payment operation but
    /// authorization and refund needs.
    fn require_open(&self) -> Result<(), RuleViolation> {
        if !self.authorization {
            Err(RuleViolation::NotAuthorized)
        } else if self.voided {
            Err(RuleViolation::AlreadyVoided)
        } else {
            Ok(())
        }
    }

    fn status(&self) -> AccountStatus {
        if self.voided {
            AccountStatus::Voided
        } else if self.refunded > 0 {
            if self.refunded >= self.captured {
                AccountStatus::Refunded
            } else {
                AccountStatus::PartiallyRefunded
            }
        } else if self.captured > 0 {
            if self.captured >= self.authorized {
                AccountStatus::Captured
            } else {
                AccountStatus::PartiallyCaptured
            }
        } else if self.authorization {
            AccountStatus::Authorized
        } else {
            AccountStatus::NotAuthorized
        }
    }
}

/// A requested currency must equal the one already fixed, if any.
fn same_currency(expected: Option<&str>, requested: Option<&str>) -> Result<(), RuleViolation> {
    match (expected, requested) {
        (Some(expected), Some(requested)) if expected != requested => {
            Err(RuleViolation::CurrencyMismatch { expected: expected.to_owned(), requested: requested.to_owned() })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "m1";
    const P: &str = "p1";

    fn req(operation: &str) -> EffectRequest {
        EffectRequest::new(operation, M, P)
    }

    fn authorize(amount: i64) -> EffectRequest {
        req(ops::AUTHORIZE).amount(amount).currency("EUR")
    }

    /// Processes without an idempotency key.
    fn run(ledger: &mut Ledger, request: EffectRequest) -> Result<Effect, RuleViolation> {
        match ledger.submit(&request, None, true, 1) {
            Submission::Processed(outcome) => outcome,
            other => panic!("expected a processed request, got {other:?}"),
        }
    }

    /// Asserts that `request` is refused with `code` and records nothing.
    fn refused(ledger: &mut Ledger, request: EffectRequest, code: &str) {
        let before = ledger.effects().len();
        let account = ledger.account(&request.merchant_id, &request.payment_id);
        let err = run(ledger, request).expect_err("request should be refused");
        assert_eq!(err.code(), code, "{err}");
        assert_eq!(ledger.effects().len(), before, "a refused request recorded an effect");
        assert_eq!(ledger.account(M, P), account, "a refused request changed the account");
    }

    fn account(ledger: &Ledger) -> Account {
        ledger.account(M, P).expect("account exists")
    }

    #[test]
    fn authorize_sets_amount_and_currency() {
        let mut l = Ledger::new();
        let e = run(&mut l, authorize(1000)).unwrap();
        assert_eq!((e.seq, e.effect_id.as_str()), (1, "eff_00000001"));
        let a = account(&l);
        assert_eq!(a.authorized, 1000);
        assert_eq!(a.currency.as_deref(), Some("EUR"));
        assert_eq!(a.status, AccountStatus::Authorized);
    }

    #[test]
    fn authorize_rules() {
        let mut l = Ledger::new();
        refused(&mut l, authorize(0), "invalid_amount");
        refused(&mut l, authorize(-5), "invalid_amount");
        refused(&mut l, req(ops::AUTHORIZE).currency("EUR"), "invalid_amount");
        refused(&mut l, req(ops::AUTHORIZE).amount(10), "currency_required");
        assert!(l.account(M, P).is_none());
        run(&mut l, authorize(10)).unwrap();
        refused(&mut l, authorize(10), "already_authorized");
        assert!(RuleViolation::AlreadyAuthorized.is_conflict());
        run(&mut l, req(ops::VOID)).unwrap();
        refused(&mut l, authorize(10), "already_authorized");
    }

    #[test]
    fn automatic_capture_charges_in_one_effect() {
        let mut l = Ledger::new();
        let charge = authorize(1000).capture_method(CaptureMethod::Automatic);
        let e = run(&mut l, charge).unwrap();
        assert_eq!(l.effects(), std::slice::from_ref(&e), "exactly one effect");
        assert_eq!(e.operation, ops::AUTHORIZE);
        assert_eq!((e.amount, e.captured_amount), (Some(1000), Some(1000)));
        let a = account(&l);
        assert_eq!((a.authorized, a.captured), (1000, 1000));
        assert_eq!(a.status, AccountStatus::Captured);
        // Nothing is left to capture, and a charged payment cannot be voided.
        refused(&mut l, req(ops::CAPTURE).amount(1), "amount_exceeds_capturable");
        refused(&mut l, req(ops::VOID), "already_captured");
        run(&mut l, req(ops::REFUND).amount(1000).reference("r1")).unwrap();
        assert_eq!(account(&l).status, AccountStatus::Refunded);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["captured_amount"], 1000);
    }

    #[test]
    fn manual_or_absent_capture_method_only_authorizes() {
        for request in [authorize(500), authorize(500).capture_method(CaptureMethod::Manual)] {
            let mut l = Ledger::new();
            let e = run(&mut l, request).unwrap();
            assert_eq!(e.captured_amount, None);
            assert!(serde_json::to_value(&e).unwrap().get("captured_amount").is_none(), "omitted when absent");
            let a = account(&l);
            assert_eq!((a.authorized, a.captured, a.status), (500, 0, AccountStatus::Authorized));
        }
        // Other operations ignore it.
        let mut l = Ledger::new();
        run(&mut l, authorize(500)).unwrap();
        let e = run(&mut l, req(ops::INCREMENTAL_AUTH).amount(5).capture_method(CaptureMethod::Automatic)).unwrap();
        assert_eq!(e.captured_amount, None);
        assert_eq!((account(&l).authorized, account(&l).captured), (505, 0));
    }

    #[test]
    fn a_refused_automatic_authorization_captures_nothing() {
        let mut l = Ledger::new();
        let auto = |r: EffectRequest| r.capture_method(CaptureMethod::Automatic);
        refused(&mut l, auto(authorize(0)), "invalid_amount");
        refused(&mut l, auto(req(ops::AUTHORIZE).amount(10)), "currency_required");
        assert!(l.account(M, P).is_none());
        run(&mut l, authorize(100)).unwrap();
        refused(&mut l, auto(authorize(100)), "already_authorized");
        let a = account(&l);
        assert_eq!((a.authorized, a.captured), (100, 0));
    }

    #[test]
    fn automatic_capture_replays_under_its_key() {
        let mut l = Ledger::new();
        let charge = authorize(10).capture_method(CaptureMethod::Automatic);
        let Submission::Processed(Ok(effect)) = l.submit(&charge, Some("k1"), true, 1) else { panic!("processed") };
        assert_eq!(l.submit(&charge, Some("k1"), true, 2), Submission::Replayed(Ok(effect.clone())));
        assert_eq!(l.effects(), std::slice::from_ref(&effect));
        assert_eq!(account(&l).captured, 10, "the replay captured nothing more");
        // The capture method is part of the request: another one under the key is refused.
        assert_eq!(l.submit(&authorize(10), Some("k1"), true, 3), Submission::KeyReused);
        let manual = authorize(10).capture_method(CaptureMethod::Manual);
        assert_eq!(l.submit(&manual, Some("k1"), true, 3), Submission::KeyReused);
        assert_eq!(l.effects().len(), 1);
    }

    #[test]
    fn incremental_auth_rules() {
        let mut l = Ledger::new();
        refused(&mut l, req(ops::INCREMENTAL_AUTH).amount(5), "not_authorized");
        run(&mut l, authorize(100)).unwrap();
        refused(&mut l, req(ops::INCREMENTAL_AUTH).amount(0), "invalid_amount");
        run(&mut l, req(ops::INCREMENTAL_AUTH).amount(50)).unwrap();
        assert_eq!(account(&l).authorized, 150);
        refused(&mut l, req(ops::INCREMENTAL_AUTH).amount(i64::MAX), "amount_overflow");
        run(&mut l, req(ops::VOID)).unwrap();
        refused(&mut l, req(ops::INCREMENTAL_AUTH).amount(5), "already_voided");
    }

    #[test]
    fn capture_rules() {
        let mut l = Ledger::new();
        refused(&mut l, req(ops::CAPTURE).amount(5), "not_authorized");
        run(&mut l, authorize(100)).unwrap();
        refused(&mut l, req(ops::CAPTURE).amount(-1), "invalid_amount");
        refused(&mut l, req(ops::CAPTURE).amount(101), "amount_exceeds_capturable");
        run(&mut l, req(ops::CAPTURE).amount(60).reference("cap1")).unwrap();
        assert_eq!(account(&l).status, AccountStatus::PartiallyCaptured);
        refused(&mut l, req(ops::CAPTURE).amount(41), "amount_exceeds_capturable");
        run(&mut l, req(ops::CAPTURE).amount(40)).unwrap();
        let a = account(&l);
        assert_eq!((a.captured, a.status), (100, AccountStatus::Captured));
        run(&mut l, req(ops::INCREMENTAL_AUTH).amount(10)).unwrap();
        run(&mut l, req(ops::CAPTURE).amount(10)).unwrap();
        assert_eq!(account(&l).captured, 110);
    }

    #[test]
    fn capture_on_voided_payment_is_refused() {
        let mut l = Ledger::new();
        run(&mut l, authorize(100)).unwrap();
        run(&mut l, req(ops::VOID)).unwrap();
        refused(&mut l, req(ops::CAPTURE).amount(10), "already_voided");
    }

    #[test]
    fn void_rules() {
        let mut l = Ledger::new();
        refused(&mut l, req(ops::VOID), "not_authorized");
        run(&mut l, authorize(100)).unwrap();
        run(&mut l, req(ops::VOID)).unwrap();
        let a = account(&l);
        assert!(a.voided);
        assert_eq!(a.status, AccountStatus::Voided);
        refused(&mut l, req(ops::VOID), "already_voided");

        let mut l = Ledger::new();
        run(&mut l, authorize(100)).unwrap();
        run(&mut l, req(ops::CAPTURE).amount(1)).unwrap();
        refused(&mut l, req(ops::VOID), "already_captured");
    }

    #[test]
    fn refund_rules() {
        let mut l = Ledger::new();
        run(&mut l, authorize(100)).unwrap();
        refused(&mut l, req(ops::REFUND).amount(1).reference("r0"), "amount_exceeds_refundable");
        run(&mut l, req(ops::CAPTURE).amount(80)).unwrap();
        refused(&mut l, req(ops::REFUND).amount(10), "reference_required");
        refused(&mut l, req(ops::REFUND).amount(0).reference("r1"), "invalid_amount");
        refused(&mut l, req(ops::REFUND).amount(81).reference("r1"), "amount_exceeds_refundable");
        run(&mut l, req(ops::REFUND).amount(30).reference("r1")).unwrap();
        assert_eq!(account(&l).status, AccountStatus::PartiallyRefunded);
        refused(&mut l, req(ops::REFUND).amount(51).reference("r2"), "amount_exceeds_refundable");
        run(&mut l, req(ops::REFUND).amount(50).reference("r2")).unwrap();
        let a = account(&l);
        assert_eq!((a.refunded, a.status), (80, AccountStatus::Refunded));
        assert_eq!(l.effects_by_reference(M, "r1").len(), 1);
        assert!(l.effects_by_reference("other", "r1").is_empty());
    }

    #[test]
    fn currency_must_match_the_account() {
        let mut l = Ledger::new();
        run(&mut l, authorize(100)).unwrap();
        refused(&mut l, req(ops::CAPTURE).amount(10).currency("USD"), "currency_mismatch");
        refused(&mut l, req("mandates.create").currency("USD"), "currency_mismatch");
        run(&mut l, req(ops::CAPTURE).amount(10).currency("EUR")).unwrap();
        run(&mut l, req(ops::CAPTURE).amount(10)).unwrap();
    }

    #[test]
    fn payout_rules() {
        let mut l = Ledger::new();
        let payout = |op: &str, reference: &str| req(op).reference(reference);
        refused(&mut l, req(ops::PAYOUT_CREATE).amount(10), "reference_required");
        refused(&mut l, payout(ops::PAYOUT_CREATE, "po1"), "invalid_amount");
        refused(&mut l, payout(ops::PAYOUT_FULFILL, "po1"), "payout_not_found");
        refused(&mut l, payout(ops::PAYOUT_CANCEL, "po1"), "payout_not_found");
        refused(&mut l, req(ops::PAYOUT_FULFILL), "reference_required");

        run(&mut l, payout(ops::PAYOUT_CREATE, "po1").amount(10).currency("EUR")).unwrap();
        refused(&mut l, payout(ops::PAYOUT_FULFILL, "po1").currency("USD"), "currency_mismatch");
        run(&mut l, payout(ops::PAYOUT_FULFILL, "po1")).unwrap();
        refused(&mut l, payout(ops::PAYOUT_CANCEL, "po1"), "payout_fulfilled");
        // A second fulfilment is a double payout: recorded, for checkers to find.
        run(&mut l, payout(ops::PAYOUT_FULFILL, "po1")).unwrap();
        assert_eq!(l.effects_by_reference(M, "po1").len(), 3);

        run(&mut l, payout(ops::PAYOUT_CREATE, "po2").amount(10)).unwrap();
        run(&mut l, payout(ops::PAYOUT_CANCEL, "po2")).unwrap();
        refused(&mut l, payout(ops::PAYOUT_FULFILL, "po2"), "payout_cancelled");

        // Payouts are per merchant.
        let other = EffectRequest::new(ops::PAYOUT_FULFILL, "m2", P).reference("po2");
        assert_eq!(run(&mut l, other).unwrap_err().code(), "payout_not_found");
        assert_eq!(account(&l).status, AccountStatus::NotAuthorized);
    }

    #[test]
    fn other_operations_are_recorded_as_is() {
        let mut l = Ledger::new();
        let e = run(&mut l, req("mandates.create").reference("md1").amount(-3)).unwrap();
        assert_eq!(e.amount, Some(-3));
        assert_eq!(account(&l).status, AccountStatus::NotAuthorized);
    }

    #[test]
    fn same_key_same_request_replays() {
        let mut l = Ledger::new();
        let first = l.submit(&authorize(10), Some("k1"), true, 1);
        let Submission::Processed(Ok(effect)) = first else { panic!("{first:?}") };
        assert_eq!(effect.idempotency_key.as_deref(), Some("k1"));
        assert_eq!(l.submit(&authorize(10), Some("k1"), true, 2), Submission::Replayed(Ok(effect.clone())));
        assert_eq!(l.effects(), std::slice::from_ref(&effect));
        assert_eq!(l.effects_by_key("k1"), vec![effect]);
        assert!(l.effects_by_key("k2").is_empty());
    }

    #[test]
    fn same_key_other_request_is_refused() {
        let mut l = Ledger::new();
        l.submit(&authorize(10), Some("k1"), true, 1);
        assert_eq!(l.submit(&authorize(11), Some("k1"), true, 2), Submission::KeyReused);
        let with_details = authorize(10).details(serde_json::json!({"a": 1}));
        assert_eq!(l.submit(&with_details, Some("k1"), true, 2), Submission::KeyReused);
        assert_eq!(l.effects().len(), 1);
    }

    #[test]
    fn violations_are_stored_per_key() {
        let mut l = Ledger::new();
        let capture = req(ops::CAPTURE).amount(10);
        let first = l.submit(&capture, Some("k1"), true, 1);
        assert_eq!(first, Submission::Processed(Err(RuleViolation::NotAuthorized)));
        run(&mut l, authorize(100)).unwrap();
        // Would now succeed, but the key replays its stored refusal.
        assert_eq!(l.submit(&capture, Some("k1"), true, 2), Submission::Replayed(Err(RuleViolation::NotAuthorized)));
        assert_eq!(l.effects().len(), 1);
    }

    #[test]
    fn idempotency_off_processes_every_request() {
        let mut l = Ledger::new();
        run(&mut l, authorize(100)).unwrap();
        let capture = req(ops::CAPTURE).amount(10);
        for _ in 0..2 {
            let outcome = l.submit(&capture, Some("k1"), false, 1);
            assert!(matches!(outcome, Submission::Processed(Ok(_))), "{outcome:?}");
        }
        assert_eq!(l.effects_by_key("k1").len(), 2);
        assert_eq!(account(&l).captured, 20);
        // Keys used while off are not remembered.
        let outcome = l.submit(&capture, Some("k1"), true, 1);
        assert!(matches!(outcome, Submission::Processed(Ok(_))), "{outcome:?}");
        assert_eq!(l.effects_by_key("k1").len(), 3);
    }

    #[test]
    fn filters_and_reset() {
        let mut l = Ledger::new();
        run(&mut l, authorize(100)).unwrap();
        run(&mut l, EffectRequest::new(ops::AUTHORIZE, M, "p2").amount(5).currency("USD")).unwrap();
        assert_eq!(l.effects_matching(Some(M), None).len(), 2);
        assert_eq!(l.effects_matching(None, Some("p2")).len(), 1);
        assert_eq!(l.effects_matching(Some("m9"), None).len(), 0);
        l.submit(&authorize(1), Some("k"), true, 1);

        l.reset();
        assert!(l.effects().is_empty());
        assert!(l.account(M, P).is_none());
        let e = l.submit(&authorize(1), Some("k"), true, 1);
        let Submission::Processed(Ok(e)) = e else { panic!("{e:?}") };
        assert_eq!((e.seq, e.effect_id.as_str()), (1, "eff_00000003"));
    }
}
