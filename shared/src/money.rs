//! Money as integers: nano-dollars (10⁻⁹ USD), small enough that one token of every default model
//! costs a whole number of them, so no request's cost rounds to zero and sums are exact.

use std::fmt;
use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};

/// An amount of US dollars in nano-dollars.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct NanoUsd(pub u64);

/// Nano-dollars in one US cent.
const NANOS_PER_CENT: u64 = 10_000_000;

impl NanoUsd {
    pub const ZERO: NanoUsd = NanoUsd(0);

    /// Converts a price quoted in dollars per 1,000 tokens (as providers publish them) into
    /// nano-dollars per token, refusing prices that are not a whole number of nano-dollars per
    /// token rather than rounding them silently.
    pub fn per_token_from_usd_per_1k(usd_per_1k: f64) -> Result<NanoUsd, String> {
        if !usd_per_1k.is_finite() || usd_per_1k < 0.0 {
            return Err(format!("price {usd_per_1k} must be a non-negative number"));
        }
        // $/1K tokens × 10⁹ nano/$ ÷ 10³ tokens = nano-dollars per token.
        let nanos = usd_per_1k * 1_000_000.0;
        let rounded = nanos.round();
        if (nanos - rounded).abs() > 1e-6 || rounded > u32::MAX as f64 {
            return Err(format!(
                "price {usd_per_1k} $/1K tokens is not a whole number of nano-dollars per token"
            ));
        }
        Ok(NanoUsd(rounded as u64))
    }

    /// The price of `tokens` tokens at `self` per token.
    pub fn times(self, tokens: u64) -> NanoUsd {
        NanoUsd(self.0.saturating_mul(tokens))
    }

    /// The amount in US cents, exactly representable for display (`0.0245`).
    pub fn as_cents(self) -> f64 {
        // Split to keep the integer part exact even for very large totals.
        (self.0 / NANOS_PER_CENT) as f64 + (self.0 % NANOS_PER_CENT) as f64 / NANOS_PER_CENT as f64
    }

    /// The price in dollars per 1,000 tokens, for display.
    pub fn as_usd_per_1k(self) -> f64 {
        self.0 as f64 / 1_000_000.0
    }
}

impl Add for NanoUsd {
    type Output = NanoUsd;
    fn add(self, rhs: NanoUsd) -> NanoUsd {
        NanoUsd(self.0.saturating_add(rhs.0))
    }
}

impl AddAssign for NanoUsd {
    fn add_assign(&mut self, rhs: NanoUsd) {
        *self = *self + rhs;
    }
}

impl fmt::Display for NanoUsd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} n$", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prices_are_whole_nanos_per_token() {
        for (usd, nanos) in [
            (0.00035, 350),
            (0.00105, 1050),
            (0.00125, 1250),
            (0.00375, 3750),
            (0.00025, 250),
            (0.00015, 150),
            (0.0006, 600),
        ] {
            assert_eq!(NanoUsd::per_token_from_usd_per_1k(usd), Ok(NanoUsd(nanos)));
        }
    }

    #[test]
    fn refuses_prices_finer_than_a_nano_per_token() {
        assert!(NanoUsd::per_token_from_usd_per_1k(0.0000001).is_err());
        assert!(NanoUsd::per_token_from_usd_per_1k(-1.0).is_err());
        assert!(NanoUsd::per_token_from_usd_per_1k(f64::NAN).is_err());
    }

    #[test]
    fn seed_example_costs_a_fraction_of_a_cent() {
        // GIVEN Gemini Flash prices WHEN 100 input and 200 output tokens are used
        let input = NanoUsd(350).times(100);
        let output = NanoUsd(1050).times(200);
        // THEN the cost is $0.000245 = 0.0245 cents, not zero
        assert_eq!(input + output, NanoUsd(245_000));
        assert_eq!((input + output).as_cents(), 0.0245);
    }
}
