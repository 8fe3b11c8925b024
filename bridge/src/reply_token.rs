//! The inbox address token of a message id: the reply inbox routes replies by it, and the
//! late-reply sink checks that a reply's message id belongs to the address it reached. Kept
//! apart from both so that each depends on it and neither on the other.

/// 128-bit FNV-1a of the message id, hex: a subject-safe token, stable across processes.
pub(crate) fn token(message_id: &str) -> String {
    let mut h1: u64 = 0xcbf29ce484222325;
    let mut h2: u64 = 0x84222325cbf29ce4;
    for b in message_id.bytes() {
        h1 = (h1 ^ b as u64).wrapping_mul(0x100000001b3);
        h2 = (h2 ^ b as u64).wrapping_mul(0x100000001b3).rotate_left(5);
    }
    format!("{h1:016x}{h2:016x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_stable_subject_safe_and_distinct() {
        let a = super::token("m:p:payments.capture:cap_1");
        assert_eq!(a, super::token("m:p:payments.capture:cap_1"));
        assert_ne!(a, super::token("m:p:payments.capture:cap_2"));
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()) && a.len() == 32);
        // Pinned: another build or process must route the same message id to the same address.
        assert_eq!(a, "ef57bbf94183f4c90043afdee8c09c9d");
        assert_eq!(super::token(""), "cbf29ce48422232584222325cbf29ce4", "FNV-1a offset bases");
    }
}
