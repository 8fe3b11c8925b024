//! The behaviour profile of a mock worker: latency distribution, decline and error rates.
//!
//! Every draw comes from an RNG seeded with `seed` and the operation's idempotency key, so a
//! run with the same seed makes the same choices for the same operations whatever the order
//! in which messages arrive.

use std::time::Duration;

use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Normal};
use serde::{Deserialize, Serialize};

/// Processing latency added by the worker (on top of the processor's own).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Latency {
    /// No added latency.
    #[default]
    None,
    /// Always `ms`.
    Fixed {
        /// Milliseconds.
        ms: u64,
    },
    /// Normal distribution, clamped at zero.
    Normal {
        /// Mean, ms.
        mean_ms: f64,
        /// Standard deviation, ms.
        std_dev_ms: f64,
    },
    /// Log-normal long tail given by its median and 99th percentile.
    LongTail {
        /// Median, ms.
        median_ms: f64,
        /// 99th percentile, ms.
        p99_ms: f64,
    },
}

/// What the worker decides for one operation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// Latency to add before answering.
    pub latency: Duration,
    /// Refuse as the card issuer would (no processor effect).
    pub decline: bool,
    /// Fail with a worker error (no processor effect).
    pub error: bool,
}

/// The behaviour profile.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    /// Added latency.
    pub latency: Latency,
    /// Fraction of money-moving operations declined, 0..=1.
    pub decline_rate: f64,
    /// Fraction of operations answered with a worker error, 0..=1.
    pub error_rate: f64,
    /// Seed of every draw.
    pub seed: u64,
}

impl Default for Profile {
    fn default() -> Self {
        Profile { latency: Latency::None, decline_rate: 0.0, error_rate: 0.0, seed: 1 }
    }
}

fn fnv(s: &str) -> u64 {
    crate::store::fnv1a(crate::store::FNV_OFFSET, s.as_bytes())
}

impl Profile {
    /// Checks rates and distribution parameters.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [("decline_rate", self.decline_rate), ("error_rate", self.error_rate)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("profile.{name} must be within 0..=1, got {v}"));
            }
        }
        match self.latency {
            Latency::Normal { mean_ms, std_dev_ms } if mean_ms < 0.0 || std_dev_ms < 0.0 => {
                Err("profile.latency: mean_ms and std_dev_ms must be non-negative".into())
            }
            Latency::LongTail { median_ms, p99_ms } if median_ms <= 0.0 || p99_ms < median_ms => {
                Err("profile.latency: need 0 < median_ms <= p99_ms".into())
            }
            _ => Ok(()),
        }
    }

    /// The draw for the operation with this idempotency key.
    pub fn draw(&self, key: &str) -> Draw {
        let mut rng = StdRng::seed_from_u64(self.seed ^ fnv(key));
        let ms = match self.latency {
            Latency::None => 0.0,
            Latency::Fixed { ms } => ms as f64,
            Latency::Normal { mean_ms, std_dev_ms } => Normal::new(mean_ms, std_dev_ms).map(|d| d.sample(&mut rng)).unwrap_or(mean_ms),
            Latency::LongTail { median_ms, p99_ms } => {
                let sigma = (p99_ms / median_ms).ln() / 2.326;
                LogNormal::new(median_ms.ln(), sigma).map(|d| d.sample(&mut rng)).unwrap_or(median_ms)
            }
        };
        let decline = rng.random::<f64>() < self.decline_rate;
        let error = rng.random::<f64>() < self.error_rate;
        Draw { latency: Duration::from_micros((ms.max(0.0) * 1000.0) as u64), decline, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_draws_and_rates_hold() {
        let p = Profile { latency: Latency::LongTail { median_ms: 10.0, p99_ms: 100.0 }, decline_rate: 0.2, error_rate: 0.0, seed: 42 };
        assert_eq!(p.draw("k1"), p.draw("k1"));
        let declines = (0..2000).filter(|i| p.draw(&format!("k{i}")).decline).count();
        assert!((300..500).contains(&declines), "{declines}");
        let mut lat: Vec<_> = (0..2000).map(|i| p.draw(&format!("k{i}")).latency).collect();
        lat.sort();
        let median = lat[1000].as_secs_f64() * 1000.0;
        assert!((8.0..12.5).contains(&median), "{median}");
        let other = Profile { seed: 43, ..p.clone() };
        assert!((0..50).any(|i| other.draw(&format!("k{i}")) != p.draw(&format!("k{i}"))));
    }
}
