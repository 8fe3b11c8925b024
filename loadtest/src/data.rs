//! Payment data from seeded `fake` generators: the data of request slot `i` depends only on the
//! seed and `i`, so the same seed gives the same amounts, currencies, cards and names.

use fake::faker::internet::en::SafeEmail;
use fake::faker::name::en::Name;
use fake::rand::rngs::StdRng;
use fake::rand::{RngExt, SeedableRng};
use fake::Fake;
use serde_json::{json, Value};

/// Card numbers the card networks publish for tests: never a real card.
pub const TEST_CARDS: [&str; 8] = [
    "4242424242424242",
    "4000056655665556",
    "5555555555554444",
    "2223003122003222",
    "5200828282828210",
    "378282246310005",
    "6011111111111117",
    "3566002020360505",
];

/// The data one request slot may use.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotData {
    /// Amount in minor units.
    pub amount: i64,
    /// One of the gateway's currencies.
    pub currency: &'static str,
    /// A test card number.
    pub card_number: &'static str,
    /// Expiry month, `01`-`12`.
    pub exp_month: String,
    /// Expiry year.
    pub exp_year: String,
    /// CVC (4 digits for American Express).
    pub cvc: String,
    /// Customer name.
    pub customer_name: String,
    /// Customer e-mail (example domains only).
    pub email: String,
    /// Customer id.
    pub customer_id: String,
    /// Capture the whole amount (else half).
    pub capture_full: bool,
    /// Refund this share of what was captured, in percent (1-100).
    pub refund_percent: i64,
    /// Picks which of the user's payments or refunds a read goes to.
    pub pick: usize,
}

impl SlotData {
    /// The `payment_method_data` of a create request.
    pub fn card(&self) -> Value {
        json!({ "card": {
            "card_number": self.card_number,
            "card_exp_month": self.exp_month,
            "card_exp_year": self.exp_year,
            "card_cvc": self.cvc,
            "card_holder_name": self.customer_name,
        }})
    }
}

/// Generates the data of each slot from the seed.
#[derive(Debug, Clone)]
pub struct DataGen {
    seed: u64,
}

/// SplitMix64: spreads consecutive slot numbers over unrelated seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl DataGen {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> DataGen {
        DataGen { seed }
    }

    /// The data of slot `index`.
    pub fn slot(&self, index: u64) -> SlotData {
        let mut rng = StdRng::seed_from_u64(mix(self.seed ^ mix(index)));
        let card_number = TEST_CARDS[rng.random_range(0..TEST_CARDS.len())];
        let amex = card_number.starts_with("37");
        let cvc: String = if amex { "####" } else { "###" }.to_string();
        let cvc: String = fake::faker::number::en::NumberWithFormat(&cvc).fake_with_rng(&mut rng);
        let customer_name: String = Name().fake_with_rng(&mut rng);
        let email: String = SafeEmail().fake_with_rng(&mut rng);
        SlotData {
            amount: (100..100_000i64).fake_with_rng(&mut rng),
            currency: gateway::api::CURRENCIES[rng.random_range(0..gateway::api::CURRENCIES.len())],
            card_number,
            exp_month: format!("{:02}", rng.random_range(1..=12u32)),
            exp_year: rng.random_range(2030..=2035u32).to_string(),
            cvc,
            customer_name,
            email,
            customer_id: format!("cus_{:012x}", rng.random_range(0..1u64 << 48)),
            capture_full: rng.random_bool(0.7),
            refund_percent: rng.random_range(1..=100i64),
            pick: rng.random_range(0..usize::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_data() {
        let a = DataGen::new(7);
        let b = DataGen::new(7);
        for i in [0, 1, 2, 999, 123_456] {
            assert_eq!(a.slot(i), b.slot(i));
        }
        assert_ne!(a.slot(0), a.slot(1));
        assert_ne!(DataGen::new(8).slot(0), a.slot(0));
    }

    #[test]
    fn data_is_valid_for_the_gateway() {
        let g = DataGen::new(42);
        for i in 0..500 {
            let d = g.slot(i);
            assert!((100..100_000).contains(&d.amount));
            assert!(gateway::api::CURRENCIES.contains(&d.currency));
            assert!(TEST_CARDS.contains(&d.card_number));
            assert_eq!(d.cvc.len(), if d.card_number.starts_with("37") { 4 } else { 3 });
            assert!(d.cvc.chars().all(|c| c.is_ascii_digit()));
            assert!((1..=12).contains(&d.exp_month.parse::<u32>().unwrap()));
            assert!(!d.customer_name.is_empty());
            assert!((1..=100).contains(&d.refund_percent));
        }
    }

    #[test]
    fn test_cards_pass_luhn() {
        for c in TEST_CARDS {
            assert_eq!(harness::scenario::checkers::card_numbers(c), vec![c.to_string()], "{c}");
        }
    }
}
