//! The operation catalogue: one row per operation of the payment orchestrator.
//!
//! Everything else (subjects, streams, worker subscriptions, docs, snapshots) is derived from
//! [`CATALOGUE`]. The pattern of each row follows the seed tables: financial and audit-worthy
//! operations are `durable` (JetStream publish + reply inbox), read-only or ephemeral ones are
//! `query` (core NATS request/reply).

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// How an operation travels over NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// Published to a JetStream stream (persistent, de-duplicated by message id), the worker's
    /// reply comes back on the bridge's reply inbox.
    Durable,
    /// Core NATS request/reply: nothing is stored, "no responders" is known at once.
    Query,
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pattern::Durable => "durable",
            Pattern::Query => "query",
        })
    }
}

/// A family of operations; durable families own one JetStream stream each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Payment lifecycle: authorize, capture, void, sync...
    Payments,
    /// Refunds of captured payments.
    Refunds,
    /// Recurring payment mandates.
    Mandates,
    /// Payment method tokens.
    Tokens,
    /// Authentication with the connector (3DS, access tokens).
    Auth,
    /// Chargebacks and their evidence.
    Disputes,
    /// Webhooks from the processor.
    Webhooks,
    /// Payouts to beneficiaries.
    Payouts,
    /// Tax calculation.
    Tax,
    /// Fraud checks.
    Fraud,
    /// Gift cards.
    Giftcard,
}

impl Family {
    /// Every family, in catalogue order.
    pub const ALL: [Family; 11] = [
        Family::Payments,
        Family::Refunds,
        Family::Mandates,
        Family::Tokens,
        Family::Auth,
        Family::Disputes,
        Family::Webhooks,
        Family::Payouts,
        Family::Tax,
        Family::Fraud,
        Family::Giftcard,
    ];

    /// The lower-case name used in subjects and operation names.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Payments => "payments",
            Family::Refunds => "refunds",
            Family::Mandates => "mandates",
            Family::Tokens => "tokens",
            Family::Auth => "auth",
            Family::Disputes => "disputes",
            Family::Webhooks => "webhooks",
            Family::Payouts => "payouts",
            Family::Tax => "tax",
            Family::Fraud => "fraud",
            Family::Giftcard => "giftcard",
        }
    }

    /// Default retention of the family's stream (seeds: payments 30d, refunds 90d,
    /// disputes 365d, webhooks 7d; the others by analogy).
    pub fn default_retention(self) -> Duration {
        const DAY: u64 = 24 * 60 * 60;
        Duration::from_secs(
            DAY * match self {
                Family::Payments => 30,
                Family::Refunds => 90,
                Family::Mandates => 365,
                Family::Tokens => 90,
                Family::Disputes => 365,
                Family::Webhooks => 7,
                Family::Payouts => 90,
                Family::Fraud => 30,
                Family::Auth | Family::Tax | Family::Giftcard => 7,
            },
        )
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the catalogue.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct OperationSpec {
    /// Stable name, `<family>.<operation>`: the key used in config, metrics and the ledger.
    pub name: &'static str,
    /// The family, which selects the stream and the subject's second token.
    pub family: Family,
    /// The last subject token (`authorize`, `capture`, ...).
    pub action: &'static str,
    /// The trait of the orchestrator this row implements, for docs and contracts.
    pub trait_name: &'static str,
    /// Durable (JetStream + inbox) or query (core request/reply), as the seed tables mark it.
    pub pattern: Pattern,
    /// Whether the subject also carries the connector name (incoming webhooks are routed by
    /// connector in the per-merchant scheme).
    pub per_connector: bool,
    /// What the operation does, one line.
    pub description: &'static str,
}

/// A handle to a catalogue row; cheap to copy, compares by identity of the row.
pub type Operation = &'static OperationSpec;

macro_rules! op {
    ($name:literal, $family:ident, $action:literal, $trait_name:literal, $pattern:ident, $desc:literal) => {
        OperationSpec {
            name: $name,
            family: Family::$family,
            action: $action,
            trait_name: $trait_name,
            pattern: Pattern::$pattern,
            per_connector: false,
            description: $desc,
        }
    };
}

/// The catalogue: every operation of the seed tables, 35 rows.
pub static CATALOGUE: [OperationSpec; 35] = [
    op!("payments.authorize", Payments, "authorize", "PaymentAuthorize", Durable, "authorizes a payment, holding funds"),
    op!("payments.capture", Payments, "capture", "PaymentCapture", Durable, "captures authorized funds, fully or partially"),
    op!("payments.void", Payments, "void", "PaymentVoid", Durable, "cancels an authorization"),
    op!("payments.sync", Payments, "sync", "PaymentSync", Query, "reads the payment's status at the processor"),
    op!("payments.session", Payments, "session", "PaymentSession", Query, "creates payment session tokens"),
    op!(
        "payments.complete_authorize",
        Payments,
        "complete_authorize",
        "PaymentCompleteAuthorize",
        Durable,
        "completes a 3DS / 2FA authorization"
    ),
    op!("payments.approve", Payments, "approve", "PaymentApprove", Durable, "approves a payment held for manual review"),
    op!("payments.reject", Payments, "reject", "PaymentReject", Durable, "rejects a payment held for manual review"),
    op!("payments.post_session_tokens", Payments, "post_session_tokens", "PaymentPostSessionTokens", Query, "updates session tokens"),
    op!(
        "payments.incremental_auth",
        Payments,
        "incremental_auth",
        "PaymentIncrementalAuthorization",
        Durable,
        "increases the authorized amount"
    ),
    op!(
        "payments.update_metadata",
        Payments,
        "update_metadata",
        "PaymentUpdateMetadata",
        Durable,
        "updates the payment's metadata at the processor"
    ),
    op!("refunds.execute", Refunds, "execute", "RefundExecute", Durable, "refunds captured funds, fully or partially"),
    op!("refunds.sync", Refunds, "sync", "RefundSync", Query, "reads a refund's status"),
    op!("refunds.update", Refunds, "update", "RefundUpdate", Durable, "updates a refund's details"),
    op!("mandates.setup", Mandates, "setup", "MandateSetup", Durable, "sets up a recurring payment mandate"),
    op!("mandates.revoke", Mandates, "revoke", "MandateRevoke", Durable, "revokes a mandate"),
    op!("mandates.update", Mandates, "update", "MandateUpdate", Durable, "updates a mandate"),
    op!("tokens.create", Tokens, "create", "PaymentToken", Durable, "tokenizes a payment method"),
    op!("tokens.validate", Tokens, "validate", "TokenValidate", Query, "validates a token"),
    op!("tokens.delete", Tokens, "delete", "TokenDelete", Durable, "deletes a token"),
    op!("auth.external", Auth, "external", "ExternalAuthentication", Query, "runs 3DS / 2FA authentication"),
    op!("auth.access_token", Auth, "access_token", "ConnectorAccessToken", Query, "gets a connector access token"),
    op!("auth.auth_token", Auth, "auth_token", "ConnectorAuthenticationToken", Query, "gets an authentication token"),
    op!("disputes.accept", Disputes, "accept", "AcceptDispute", Durable, "accepts a dispute"),
    op!("disputes.defend", Disputes, "defend", "DefendDispute", Durable, "defends a dispute"),
    op!("disputes.evidence", Disputes, "evidence", "SubmitEvidence", Durable, "submits dispute evidence"),
    OperationSpec {
        name: "webhooks.incoming",
        family: Family::Webhooks,
        action: "incoming",
        trait_name: "IncomingWebhook",
        pattern: Pattern::Durable,
        per_connector: true,
        description: "processes an incoming webhook; events must not be lost",
    },
    op!("webhooks.verify", Webhooks, "verify", "VerifyWebhookSource", Query, "verifies a webhook's signature"),
    op!("payouts.create", Payouts, "create", "PayoutCreate", Durable, "creates a payout"),
    op!("payouts.fulfill", Payouts, "fulfill", "PayoutFulfill", Durable, "executes a payout"),
    op!("payouts.cancel", Payouts, "cancel", "PayoutCancel", Durable, "cancels a payout"),
    op!("payouts.sync", Payouts, "sync", "PayoutSync", Query, "reads a payout's status"),
    op!("tax.calculate", Tax, "calculate", "TaxCalculation", Query, "calculates tax"),
    op!("fraud.check", Fraud, "check", "FraudCheck", Durable, "runs a fraud check, kept for analysis"),
    op!("giftcard.balance", Giftcard, "balance", "GiftCardBalanceCheck", Query, "reads a gift card's balance"),
];

/// Every catalogue row.
pub fn all() -> impl Iterator<Item = Operation> {
    CATALOGUE.iter()
}

/// The row with this name (`payments.authorize`), if any.
pub fn find(name: &str) -> Option<Operation> {
    CATALOGUE.iter().find(|op| op.name == name)
}

/// The rows of one family.
pub fn family(family: Family) -> impl Iterator<Item = Operation> {
    CATALOGUE.iter().filter(move |op| op.family == family)
}

/// The families that own a stream (those with at least one durable operation).
pub fn durable_families() -> impl Iterator<Item = Family> {
    Family::ALL.into_iter().filter(|f| family(*f).any(|op| op.pattern == Pattern::Durable))
}

/// Shorthands for the rows the gateway and tests use most.
pub mod ops {
    use super::{find, Operation};

    fn get(name: &str) -> Operation {
        find(name).expect("catalogue row")
    }
    /// `payments.authorize`
    pub fn authorize() -> Operation {
        get("payments.authorize")
    }
    /// `payments.capture`
    pub fn capture() -> Operation {
        get("payments.capture")
    }
    /// `payments.void`
    pub fn void() -> Operation {
        get("payments.void")
    }
    /// `payments.sync`
    pub fn payment_sync() -> Operation {
        get("payments.sync")
    }
    /// `refunds.execute`
    pub fn refund() -> Operation {
        get("refunds.execute")
    }
    /// `refunds.sync`
    pub fn refund_sync() -> Operation {
        get("refunds.sync")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_match_family_and_action() {
        let mut seen = HashSet::new();
        for op in all() {
            assert!(seen.insert(op.name), "duplicate {}", op.name);
            assert_eq!(op.name, format!("{}.{}", op.family, op.action));
        }
        assert_eq!(seen.len(), 35);
    }

    #[test]
    fn seed_patterns() {
        let queries: Vec<_> = all().filter(|o| o.pattern == Pattern::Query).map(|o| o.name).collect();
        assert_eq!(
            queries,
            [
                "payments.sync",
                "payments.session",
                "payments.post_session_tokens",
                "refunds.sync",
                "tokens.validate",
                "auth.external",
                "auth.access_token",
                "auth.auth_token",
                "webhooks.verify",
                "payouts.sync",
                "tax.calculate",
                "giftcard.balance",
            ]
        );
        assert_eq!(all().filter(|o| o.pattern == Pattern::Durable).count(), 23);
    }

    #[test]
    fn durable_families_exclude_query_only_ones() {
        let fams: Vec<_> = durable_families().collect();
        assert!(!fams.contains(&Family::Auth));
        assert!(!fams.contains(&Family::Tax));
        assert!(!fams.contains(&Family::Giftcard));
        assert_eq!(fams.len(), 8);
    }
}
