//! A per-endpoint circuit breaker: closed (calls flow) → open (no calls, for `open_for`) →
//! half-open (a few probe calls) → closed again, or open again on a failed probe.
//!
//! ```text
//!            consecutive failures ≥ N, or failure rate ≥ R over the last M calls
//!   CLOSED ────────────────────────────────────────────────────────────────▶ OPEN
//!     ▲                                                                        │ open_for
//!     │ every probe succeeded                                                  ▼
//!     └──────────────────────────── HALF-OPEN (≤ K calls at once) ◀───────────┘
//!                                        │ a probe failed
//!                                        └──────────────────────▶ OPEN (again)
//! ```
//!
//! Pure: time is an argument, so paused-time and property tests drive it.

use std::time::Duration;

use tokio::time::Instant;

/// When a breaker opens and how it recovers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open it (0: never on this trigger).
    pub consecutive_failures: u32,
    /// Failure share over the last `window` calls that opens it (e.g. 0.5; above 1: never).
    pub failure_rate: f64,
    /// Calls the failure rate is computed over (at most 64); the rate counts only once the
    /// window is full.
    pub window: u32,
    /// How long it stays open before letting probes through.
    pub open_for: Duration,
    /// Probe calls let through at once while half-open; all must succeed to close it.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: 20,
            open_for: Duration::from_secs(10),
            half_open_probes: 1,
        }
    }
}

/// Where a breaker is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// No calls until the deadline.
    Open,
    /// A limited number of probe calls.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open` (metric labels, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// One endpoint's breaker.
#[derive(Clone, Debug)]
pub struct Breaker {
    state: BreakerState,
    consecutive: u32,
    /// Outcomes of the last `filled` calls, newest in bit 0 (1 = failure).
    outcomes: u64,
    filled: u32,
    open_until: Option<Instant>,
    /// Probes let through and not yet reported (half-open).
    probing: u32,
    /// Probes that succeeded in this half-open round.
    probes_passed: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker::new()
    }
}

impl Breaker {
    /// A closed breaker.
    pub fn new() -> Self {
        Breaker {
            state: BreakerState::Closed,
            consecutive: 0,
            outcomes: 0,
            filled: 0,
            open_until: None,
            probing: 0,
            probes_passed: 0,
        }
    }

    /// Where it is (an open breaker whose time is up still says `Open` until a call is tried).
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a call may go through now, without taking a probe slot.
    pub fn would_allow(&self, now: Instant, config: &BreakerConfig) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => self.open_until.is_some_and(|t| now >= t),
            BreakerState::HalfOpen => self.probing < config.half_open_probes.max(1),
        }
    }

    /// Asks to send one call at `now`: true if it may go (half-open: it takes a probe slot,
    /// given back by [`Breaker::record`]). Returns the state change, if any, as the second
    /// value.
    pub fn try_acquire(
        &mut self,
        now: Instant,
        config: &BreakerConfig,
    ) -> (bool, Option<BreakerState>) {
        let mut changed = None;
        if self.state == BreakerState::Open && self.open_until.is_some_and(|t| now >= t) {
            self.state = BreakerState::HalfOpen;
            self.probing = 0;
            self.probes_passed = 0;
            changed = Some(BreakerState::HalfOpen);
        }
        let allowed = match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                if self.probing < config.half_open_probes.max(1) {
                    self.probing += 1;
                    true
                } else {
                    false
                }
            }
        };
        (allowed, changed)
    }

    /// Records the outcome of a call that went through; returns the state change, if any.
    pub fn record(
        &mut self,
        success: bool,
        now: Instant,
        config: &BreakerConfig,
    ) -> Option<BreakerState> {
        match self.state {
            BreakerState::Closed => {
                let window = config.window.clamp(1, 64);
                self.outcomes = (self.outcomes << 1) | u64::from(!success);
                self.filled = (self.filled + 1).min(window);
                if success {
                    self.consecutive = 0;
                    return None;
                }
                self.consecutive = self.consecutive.saturating_add(1);
                let mask = if window == 64 {
                    u64::MAX
                } else {
                    (1u64 << window) - 1
                };
                let failures = (self.outcomes & mask).count_ones();
                let by_count = config.consecutive_failures > 0
                    && self.consecutive >= config.consecutive_failures;
                let by_rate = self.filled >= window
                    && f64::from(failures) / f64::from(window) >= config.failure_rate;
                (by_count || by_rate).then(|| self.open(now, config))
            }
            BreakerState::HalfOpen => {
                self.probing = self.probing.saturating_sub(1);
                if !success {
                    return Some(self.open(now, config));
                }
                self.probes_passed += 1;
                if self.probes_passed >= config.half_open_probes.max(1) {
                    *self = Breaker::new();
                    return Some(BreakerState::Closed);
                }
                None
            }
            // A call let through before it opened: it tells nothing new.
            BreakerState::Open => None,
        }
    }

    /// Records the outcome of a call: `probe` says whether it took a half-open probe slot. A
    /// call that did not (picked before the breaker opened, or in panic mode) tells nothing
    /// about a half-open round and is ignored then.
    pub fn record_call(
        &mut self,
        success: bool,
        probe: bool,
        now: Instant,
        config: &BreakerConfig,
    ) -> Option<BreakerState> {
        if self.state == BreakerState::HalfOpen && !probe {
            return None;
        }
        self.record(success, now, config)
    }

    /// A call that took a probe slot was never made (or never reported): the slot is free
    /// again.
    pub fn cancel(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.probing = self.probing.saturating_sub(1);
        }
    }

    fn open(&mut self, now: Instant, config: &BreakerConfig) -> BreakerState {
        self.state = BreakerState::Open;
        self.open_until = Some(now + config.open_for);
        self.consecutive = 0;
        self.outcomes = 0;
        self.filled = 0;
        self.probing = 0;
        self.probes_passed = 0;
        BreakerState::Open
    }
}

#[cfg(test)]
mod tests;
