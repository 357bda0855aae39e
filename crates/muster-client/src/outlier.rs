//! Outlier ejection, per endpoint: after `consecutive_failures` failures in a row an endpoint
//! is left out for `base × times ejected` (at most `max`), as Envoy does. How many endpoints
//! may be out at once, and what happens when too few are left, is the view's business
//! ([`crate::View`]): `max_ejected_share` and `panic_threshold`.
//!
//! Pure: time is an argument.

use std::time::Duration;

use tokio::time::Instant;

/// When endpoints are ejected and for how long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EjectionConfig {
    /// Failures in a row that eject an endpoint (0: never).
    pub consecutive_failures: u32,
    /// Ejection time the first time; the n-th ejection lasts `n × base`.
    pub base: Duration,
    /// Longest ejection.
    pub max: Duration,
    /// Largest share of a view's endpoints ejected at once (a further outlier stays in).
    pub max_ejected_share: f64,
    /// Below this share of available endpoints, the view ignores ejections and open breakers
    /// and uses every endpoint (panic mode): better some errors than all traffic on a few.
    pub panic_threshold: f64,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        EjectionConfig {
            consecutive_failures: 5,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
            max_ejected_share: 0.1,
            panic_threshold: 0.5,
        }
    }
}

/// One endpoint's ejection state.
#[derive(Clone, Debug, Default)]
pub struct Ejection {
    consecutive: u32,
    times: u32,
    until: Option<Instant>,
}

impl Ejection {
    /// Whether it is ejected at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| now < t)
    }

    /// How many times it was ejected (it decays by one for each ejection-free `max`).
    pub fn times(&self) -> u32 {
        self.times
    }

    /// Whether recording this outcome would eject it (given room for it).
    pub fn would_eject(&self, success: bool, now: Instant, config: &EjectionConfig) -> bool {
        !success
            && config.consecutive_failures > 0
            && self.consecutive.saturating_add(1) >= config.consecutive_failures
            && !self.is_ejected(now)
    }

    /// Records a call's outcome at `now`. `may_eject` says whether the view has room for one
    /// more ejection. Returns when the endpoint comes back, if this call ejected it.
    pub fn record(
        &mut self,
        success: bool,
        now: Instant,
        may_eject: bool,
        config: &EjectionConfig,
    ) -> Option<Instant> {
        if success {
            self.consecutive = 0;
            // Well-behaved for a long time since its last ejection: forget one.
            if let Some(until) = self.until
                && now >= until + config.max
            {
                self.times = self.times.saturating_sub(1);
                self.until = (self.times > 0).then_some(now);
            }
            return None;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        if config.consecutive_failures == 0
            || self.consecutive < config.consecutive_failures
            || self.is_ejected(now)
            || !may_eject
        {
            return None;
        }
        self.times = self.times.saturating_add(1);
        self.consecutive = 0;
        let length = config.base.saturating_mul(self.times).min(config.max);
        let until = now + length;
        self.until = Some(until);
        Some(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> EjectionConfig {
        EjectionConfig {
            consecutive_failures: 2,
            base: Duration::from_secs(10),
            max: Duration::from_secs(25),
            ..EjectionConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_ejection_lasts_longer_up_to_the_max() {
        let c = config();
        let mut e = Ejection::default();
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let now = Instant::now();
            assert_eq!(e.record(false, now, true, &c), None);
            let until = e.record(false, now, true, &c).expect("ejected");
            assert!(e.is_ejected(now));
            lengths.push(until - now);
            tokio::time::advance(until - now).await;
            assert!(!e.is_ejected(Instant::now()), "back when its time is up");
        }
        assert_eq!(
            lengths,
            [10, 20, 25, 25].map(Duration::from_secs),
            "base x times, capped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_room_no_ejection_and_good_behaviour_is_remembered() {
        let c = config();
        let mut e = Ejection::default();
        let now = Instant::now();
        e.record(false, now, false, &c);
        assert_eq!(e.record(false, now, false, &c), None, "the view is full");
        assert_eq!(
            e.record(false, now, true, &c).map(|t| t - now),
            Some(c.base)
        );
        assert_eq!(e.times(), 1);
        tokio::time::advance(c.base + c.max).await;
        e.record(true, Instant::now(), true, &c);
        assert_eq!(e.times(), 0, "a clean stretch of `max` forgets an ejection");
    }
}
