//! The defect catalogue: deliberately broken variants of the bridge, gateway and worker, each
//! with the scenario and invariant expected to catch it. A harness is only as good as the bugs
//! it finds; `harness run --defect NAME` runs any scenario against one of them.

use serde::Serialize;

use crate::scenario::checkers::Invariant;
use crate::scenario::runner::DefectSwitches;

/// One deliberate defect.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Defect {
    /// Name used on the command line.
    pub name: &'static str,
    /// Which part is broken.
    pub component: &'static str,
    /// What is wrong.
    pub description: &'static str,
    /// A scenario that catches it.
    pub caught_by: &'static str,
    /// The invariant that fails there.
    pub invariant: Invariant,
}

/// Every defect.
pub const DEFECTS: [Defect; 10] = [
    Defect {
        name: "reuse-authorize-message-id",
        component: "bridge",
        description: "capture, void and refund reuse the authorization's message id: JetStream drops them as duplicates",
        caught_by: "happy-path",
        invariant: Invariant::Liveness,
    },
    Defect {
        name: "reserved-reply-header",
        component: "bridge",
        description: "the reply inbox travels in a custom Nats-Reply-To header (reserved prefix); workers find no reply address",
        caught_by: "happy-path",
        invariant: Invariant::Integrity,
    },
    Defect {
        name: "stream-captures-queries",
        component: "bridge",
        description: "streams take whole families (hyperswitch.payments.>): a sync request gets JetStream's publish ack as its reply",
        caught_by: "happy-path",
        invariant: Invariant::Integrity,
    },
    Defect {
        name: "card-data-in-headers",
        component: "bridge",
        description: "the card number is copied into a message header",
        caught_by: "happy-path",
        invariant: Invariant::NoCardData,
    },
    Defect {
        name: "duplicate-waits-for-reply",
        component: "bridge",
        description: "a re-sent operation that JetStream reports as a duplicate waits for a reply with no deadline and no lookup; when the first reply was lost it waits forever",
        caught_by: "lost-reply",
        invariant: Invariant::ZeroStuck,
    },
    Defect {
        name: "manual-capture-as-charged",
        component: "gateway",
        description: "a manual-capture authorization is reported as charged",
        caught_by: "happy-path",
        invariant: Invariant::Agreement,
    },
    Defect {
        name: "late-reply-overwrites-terminal",
        component: "gateway",
        description: "a late or duplicate reply is applied to an operation already final",
        caught_by: "worker-crash-after-reply",
        invariant: Invariant::Agreement,
    },
    Defect {
        name: "recovery-without-asking",
        component: "gateway",
        description: "the recovery job fails stuck operations without asking the workers or the processor",
        caught_by: "recovery-lost-reply",
        invariant: Invariant::Agreement,
    },
    Defect {
        name: "ack-before-processor",
        component: "worker",
        description: "the worker acks a message when it arrives, before the processor call and the reply",
        caught_by: "worker-crash-before-processor",
        invariant: Invariant::Liveness,
    },
    Defect {
        name: "lookup-ignores-claims",
        component: "worker",
        description: "the reply lookup answers miss while a delivery is at the processor: recovery fails a payment the processor then performs",
        caught_by: "slow-processor",
        invariant: Invariant::Agreement,
    },
];

/// The defect with this name.
pub fn find(name: &str) -> Option<&'static Defect> {
    DEFECTS.iter().find(|d| d.name == name)
}

impl Defect {
    /// The defect as a scenario run takes it (`RunOptions::defect`): its switch on, every
    /// other off.
    pub fn switches(&self) -> DefectSwitches {
        let mut s = DefectSwitches { name: self.name.to_string(), description: self.description.to_string(), ..Default::default() };
        match self.name {
            "reuse-authorize-message-id" => s.bridge.reuse_authorize_message_id = true,
            "reserved-reply-header" => s.bridge.reserved_reply_header = true,
            "stream-captures-queries" => s.bridge.stream_captures_queries = true,
            "card-data-in-headers" => s.bridge.card_data_in_headers = true,
            "duplicate-waits-for-reply" => s.bridge.duplicate_waits_for_reply = true,
            "manual-capture-as-charged" => s.gateway.manual_capture_as_charged = true,
            "late-reply-overwrites-terminal" => s.gateway.late_reply_overwrites_terminal = true,
            "recovery-without-asking" => s.gateway.recovery_without_asking = true,
            "ack-before-processor" => s.worker.ack_before_processor = true,
            "lookup-ignores-claims" => s.worker.lookup_ignores_claims = true,
            other => unreachable!("defect {other} has no switch"),
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defect_turns_its_own_switch_on() {
        let off = DefectSwitches::default();
        let mut seen: Vec<DefectSwitches> = Vec::new();
        for d in DEFECTS {
            let s = d.switches();
            assert_eq!((s.name.as_str(), s.description.as_str()), (d.name, d.description));
            let changed = [s.bridge != off.bridge, s.gateway != off.gateway, s.worker != off.worker];
            assert_eq!(changed.iter().filter(|c| **c).count(), 1, "{} switches one component", d.name);
            assert_eq!(
                changed.iter().position(|c| *c),
                ["bridge", "gateway", "worker"].iter().position(|c| *c == d.component),
                "{}",
                d.name
            );
            let bare = DefectSwitches { name: String::new(), description: String::new(), ..s };
            assert!(!seen.contains(&bare), "{} switches what another defect does", d.name);
            seen.push(bare);
        }
    }
}
