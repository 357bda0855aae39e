//! Turning probe results into readiness transitions: thresholds against noise, flap damping
//! against an instance that keeps changing its mind.
//!
//! A [`Tracker`] per checked instance takes each probe result with the time it completed and
//! answers, at most, one [`Verdict`]: a readiness change to write to the log (as a
//! `SetReadiness` command). Probes that change nothing produce nothing, so only transitions
//! reach the log.
//!
//! ```text
//!            successBeforeHealthy passes             failuresBeforeUnhealthy failures
//!  not ready ───────────────────────────▶ ready ─────────────────────────────────▶ not ready
//!      ▲                                                                               │
//!      └──── after the cool-down, passes count again ◀── held not ready ("flapping") ◀─┘
//!                                                         when the instance changed state
//!                                                         max_transitions times in window
//! ```
//!
//! # Correctness
//!
//! - Deterministic: time is an argument; the same results at the same times give the same
//!   verdicts.
//! - A flapping instance is out of rotation for the whole cool-down, whatever its probes say,
//!   and re-enters only through the normal success threshold afterwards.

use std::collections::VecDeque;

use crate::model::Check;

/// When an instance counts as flapping, and for how long it is then held out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlapPolicy {
    /// Readiness changes within `window_ms` that make an instance flapping.
    pub max_transitions: u32,
    /// The window, in milliseconds.
    pub window_ms: u64,
    /// How long a flapping instance is held not ready, in milliseconds.
    pub cooldown_ms: u64,
}

impl FlapPolicy {
    /// No damping (liveness checks: a dead instance is expired, not held).
    pub const NEVER: FlapPolicy = FlapPolicy {
        max_transitions: u32::MAX,
        window_ms: 0,
        cooldown_ms: 0,
    };
}

impl Default for FlapPolicy {
    fn default() -> Self {
        FlapPolicy {
            max_transitions: 4,
            window_ms: 60_000,
            cooldown_ms: 60_000,
        }
    }
}

/// The reason written when an instance is held out for flapping.
pub const FLAPPING: &str = "flapping";

/// One probe's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The check passed.
    Pass,
    /// The check failed, with what went wrong (e.g. `"HTTP 503"`, `"timed out after 2s"`).
    Fail(String),
}

/// A readiness change to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The new readiness.
    pub ready: bool,
    /// Why, for `statusReason`.
    pub reason: String,
}

/// Probe history of one instance.
#[derive(Clone, Debug)]
pub struct Tracker {
    ready: bool,
    passes: u32,
    failures: u32,
    /// Times of recent readiness changes, oldest first.
    changes: VecDeque<u64>,
    /// Held not ready until then (flapping).
    held_until: Option<u64>,
}

impl Tracker {
    /// A tracker for an instance whose readiness is `ready` now.
    pub fn new(ready: bool) -> Self {
        Tracker {
            ready,
            passes: 0,
            failures: 0,
            changes: VecDeque::new(),
            held_until: None,
        }
    }

    /// A tracker for an instance held out for flapping until `until` (a tracker taking over an
    /// instance another node held out).
    pub fn held(until: u64) -> Self {
        Tracker {
            held_until: Some(until),
            ..Tracker::new(false)
        }
    }

    /// Starts counting consecutive results over (this node takes the probing back after
    /// another member did it: what it counted before is stale).
    pub fn restart(&mut self) {
        self.passes = 0;
        self.failures = 0;
    }

    /// Readiness as this tracker last decided it.
    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Takes the registry's readiness when it differs from this tracker's (a change the tracker
    /// did not make: a heartbeat, another node's check before a failover, a proposal that did
    /// not commit): counting starts over from there.
    pub fn sync(&mut self, ready: bool) {
        if self.ready != ready {
            self.ready = ready;
            self.passes = 0;
            self.failures = 0;
        }
    }

    /// Until when the instance is held out for flapping, if it is.
    pub fn held_until(&self) -> Option<u64> {
        self.held_until
    }

    /// Takes one probe result completed at `now`; returns the readiness change to write, if any.
    pub fn observe(
        &mut self,
        probe: &Probe,
        now: u64,
        check: &Check,
        flap: &FlapPolicy,
    ) -> Option<Verdict> {
        if self.held_until.is_some_and(|until| now >= until) {
            // The cool-down is over: from here on, passes count as usual.
            self.held_until = None;
            self.changes.clear();
            self.passes = 0;
        }
        match probe {
            Probe::Pass => {
                self.passes = self.passes.saturating_add(1);
                self.failures = 0;
                if self.ready
                    || self.held_until.is_some()
                    || self.passes < check.success_before_healthy
                {
                    return None;
                }
                self.change(true, "check passed".to_string(), now, flap)
            }
            Probe::Fail(why) => {
                self.failures = self.failures.saturating_add(1);
                self.passes = 0;
                if !self.ready || self.failures < check.failures_before_unhealthy {
                    return None;
                }
                self.change(false, format!("check failed: {why}"), now, flap)
            }
        }
    }

    fn change(
        &mut self,
        ready: bool,
        reason: String,
        now: u64,
        flap: &FlapPolicy,
    ) -> Option<Verdict> {
        while self
            .changes
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= flap.window_ms)
        {
            self.changes.pop_front();
        }
        self.changes.push_back(now);
        if self.changes.len() as u32 >= flap.max_transitions {
            self.held_until = Some(now.saturating_add(flap.cooldown_ms));
            self.passes = 0;
            // Whichever way this change went, the instance is held out (when it was already
            // out, only the reason changes).
            self.ready = false;
            return Some(Verdict {
                ready: false,
                reason: FLAPPING.to_string(),
            });
        }
        self.ready = ready;
        Some(Verdict { ready, reason })
    }
}

#[cfg(test)]
mod tests;
