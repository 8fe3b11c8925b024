//! Statuses with Hyperswitch's names, and the rules that move between them.

use serde::{Deserialize, Serialize};

/// Status of a payment attempt (Hyperswitch `AttemptStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// Created, not confirmed yet.
    Started,
    /// Authorization sent; no answer yet.
    Authorizing,
    /// The customer must authenticate (3DS).
    AuthenticationPending,
    /// Funds held, nothing captured.
    Authorized,
    /// Part of the authorized amount captured; more may be captured.
    PartialCharged,
    /// Fully captured.
    Charged,
    /// A capture was sent; no answer yet.
    CaptureInitiated,
    /// A void was sent; no answer yet.
    VoidInitiated,
    /// The authorization was cancelled.
    Voided,
    /// Outcome unknown: the processor may or may not have acted; sync or recovery decides.
    Pending,
    /// Authorization refused.
    AuthorizationFailed,
    /// Failed definitely (including the recovery job's `CONNECTOR_TIMEOUT`).
    Failure,
}

impl AttemptStatus {
    /// Every status.
    pub const ALL: [AttemptStatus; 12] = [
        AttemptStatus::Started,
        AttemptStatus::Authorizing,
        AttemptStatus::AuthenticationPending,
        AttemptStatus::Authorized,
        AttemptStatus::PartialCharged,
        AttemptStatus::Charged,
        AttemptStatus::CaptureInitiated,
        AttemptStatus::VoidInitiated,
        AttemptStatus::Voided,
        AttemptStatus::Pending,
        AttemptStatus::AuthorizationFailed,
        AttemptStatus::Failure,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Started => "started",
            AttemptStatus::Authorizing => "authorizing",
            AttemptStatus::AuthenticationPending => "authentication_pending",
            AttemptStatus::Authorized => "authorized",
            AttemptStatus::PartialCharged => "partial_charged",
            AttemptStatus::Charged => "charged",
            AttemptStatus::CaptureInitiated => "capture_initiated",
            AttemptStatus::VoidInitiated => "void_initiated",
            AttemptStatus::Voided => "voided",
            AttemptStatus::Pending => "pending",
            AttemptStatus::AuthorizationFailed => "authorization_failed",
            AttemptStatus::Failure => "failure",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Waiting for an answer: must not stay so after the recovery window.
    pub fn is_transitional(self) -> bool {
        matches!(self, AttemptStatus::Authorizing | AttemptStatus::CaptureInitiated | AttemptStatus::VoidInitiated | AttemptStatus::Pending)
    }

    /// Nothing moves the attempt out of these (refunds live on their own objects).
    pub fn is_terminal(self) -> bool {
        matches!(self, AttemptStatus::Charged | AttemptStatus::Voided | AttemptStatus::AuthorizationFailed | AttemptStatus::Failure)
    }

    /// The intent status a client sees (Hyperswitch `IntentStatus`).
    pub fn intent_status(self) -> &'static str {
        match self {
            AttemptStatus::Started => "requires_confirmation",
            AttemptStatus::Authorizing | AttemptStatus::Pending | AttemptStatus::CaptureInitiated | AttemptStatus::VoidInitiated => {
                "processing"
            }
            AttemptStatus::AuthenticationPending => "requires_customer_action",
            AttemptStatus::Authorized => "requires_capture",
            AttemptStatus::PartialCharged => "partially_captured_and_capturable",
            AttemptStatus::Charged => "succeeded",
            AttemptStatus::Voided => "cancelled",
            AttemptStatus::AuthorizationFailed | AttemptStatus::Failure => "failed",
        }
    }
}

/// Status of a refund (Hyperswitch `RefundStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Sent; outcome not known yet.
    Pending,
    /// Refunded.
    Success,
    /// Refused.
    Failure,
}

impl RefundStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Success => "succeeded",
            RefundStatus::Failure => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [RefundStatus::Pending, RefundStatus::Success, RefundStatus::Failure].into_iter().find(|r| r.as_str() == s)
    }
}

/// Capture method of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CaptureMethod {
    /// Charged by the authorization itself: one operation that authorizes and captures.
    #[default]
    Automatic,
    /// Captured by an explicit capture call.
    Manual,
}

impl CaptureMethod {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMethod::Automatic => "automatic",
            CaptureMethod::Manual => "manual",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "automatic" => Some(CaptureMethod::Automatic),
            "manual" => Some(CaptureMethod::Manual),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_classes_are_disjoint() {
        for s in AttemptStatus::ALL {
            assert_eq!(AttemptStatus::parse(s.as_str()), Some(s));
            assert!(!(s.is_terminal() && s.is_transitional()), "{s:?}");
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert_eq!(AttemptStatus::Authorized.intent_status(), "requires_capture");
    }
}
