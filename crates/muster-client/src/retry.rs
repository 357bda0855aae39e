//! Retries: exponential backoff with full jitter, and a retry budget that keeps retries a
//! bounded share of traffic (as Finagle and Linkerd do), so that a struggling service is not
//! buried under them.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Exponential backoff with full jitter: attempt `n` (from 1) waits a uniformly random time
/// in `[0, min(max, base × 2^(n-1))]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first wait.
    pub base: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(25),
            max: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The ceiling of the wait before retry `attempt` (1 = the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry `attempt`, drawn with full jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(if nanos == 0 {
            0
        } else {
            rand::random_range(0..=nanos)
        })
    }
}

/// Tokens for retries: each request deposits `ratio` of a token, each retry withdraws one, and
/// the budget starts with `min_retries` tokens. So retries stay within about `ratio` of the
/// requests (plus that start), however many fail.
///
/// Deposits are kept in thousandths of a token; the balance is capped at `10 × min_retries +
/// 1000` tokens so that a long quiet spell does not build up a burst.
#[derive(Debug)]
pub struct RetryBudget {
    /// Balance in thousandths of a token.
    milli: AtomicI64,
    deposit_milli: i64,
    cap_milli: i64,
}

impl RetryBudget {
    /// A budget allowing retries for about `ratio` of requests (e.g. 0.2), starting with
    /// `min_retries` tokens.
    pub fn new(ratio: f64, min_retries: u32) -> Self {
        let deposit_milli = (ratio.clamp(0.0, 1.0) * 1000.0).round() as i64;
        let floor = i64::from(min_retries) * 1000;
        RetryBudget {
            milli: AtomicI64::new(floor),
            deposit_milli,
            cap_milli: floor * 10 + 1_000_000,
        }
    }

    /// A request was sent (not a retry).
    pub fn deposit(&self) {
        let cap = self.cap_milli;
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some((m + self.deposit_milli).min(cap))
            });
    }

    /// Takes a token for one retry, if there is one.
    pub fn try_withdraw(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m >= 1000).then_some(m - 1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_max_and_delays_stay_under_them() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        let ceilings: Vec<u64> = (1..=6).map(|n| b.ceiling(n).as_millis() as u64).collect();
        assert_eq!(ceilings, [10, 20, 40, 80, 100, 100]);
        assert_eq!(b.ceiling(u32::MAX), b.max, "no overflow");
        for n in 1..=6 {
            for _ in 0..100 {
                assert!(b.delay(n) <= b.ceiling(n));
            }
        }
    }

    #[test]
    fn the_budget_keeps_retries_to_a_share_of_requests() {
        let budget = RetryBudget::new(0.2, 3);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            // Every request fails and wants a retry.
            if budget.try_withdraw() {
                retries += 1;
            }
        }
        // 20% of 1000, plus the 3 it started with.
        assert_eq!(retries, 203);
        assert!(!budget.try_withdraw());
    }
}
