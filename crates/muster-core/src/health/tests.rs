use super::*;
use crate::model::CheckKind;
use proptest::prelude::*;

fn check(success: u32, failures: u32) -> Check {
    Check {
        kind: CheckKind::Http,
        target: "/ready".into(),
        interval: 1_000,
        timeout: 500,
        success_before_healthy: success,
        failures_before_unhealthy: failures,
        method: Default::default(),
        headers: Default::default(),
        expected_status: Default::default(),
        tls: false,
        tls_skip_verify: false,
    }
}

fn fail() -> Probe {
    Probe::Fail("HTTP 503".into())
}

#[test]
fn thresholds_absorb_noise() {
    let (c, f) = (check(2, 3), FlapPolicy::default());
    let mut t = Tracker::new(false);
    assert_eq!(
        t.observe(&Probe::Pass, 0, &c, &f),
        None,
        "one pass is not enough"
    );
    assert_eq!(
        t.observe(&Probe::Pass, 1_000, &c, &f),
        Some(Verdict {
            ready: true,
            reason: "check passed".into()
        })
    );
    assert_eq!(
        t.observe(&Probe::Pass, 2_000, &c, &f),
        None,
        "no change, nothing to write"
    );
    assert_eq!(t.observe(&fail(), 3_000, &c, &f), None);
    assert_eq!(t.observe(&fail(), 4_000, &c, &f), None);
    assert_eq!(
        t.observe(&Probe::Pass, 5_000, &c, &f),
        None,
        "a pass resets the failure count"
    );
    assert_eq!(t.observe(&fail(), 6_000, &c, &f), None);
    assert_eq!(t.observe(&fail(), 7_000, &c, &f), None);
    assert_eq!(
        t.observe(&fail(), 8_000, &c, &f),
        Some(Verdict {
            ready: false,
            reason: "check failed: HTTP 503".into()
        })
    );
    assert!(!t.ready());
}

#[test]
fn a_flapping_instance_is_held_out_then_reenters_normally() {
    let (c, f) = (
        check(1, 1),
        FlapPolicy {
            max_transitions: 4,
            window_ms: 10_000,
            cooldown_ms: 30_000,
        },
    );
    let mut t = Tracker::new(false);
    // up, down, up: three changes within the window.
    assert!(t.observe(&Probe::Pass, 0, &c, &f).is_some_and(|v| v.ready));
    assert!(t.observe(&fail(), 1_000, &c, &f).is_some_and(|v| !v.ready));
    assert!(
        t.observe(&Probe::Pass, 2_000, &c, &f)
            .is_some_and(|v| v.ready)
    );
    // The fourth change makes it flapping: held out, whatever the probes say.
    assert_eq!(
        t.observe(&fail(), 3_000, &c, &f),
        Some(Verdict {
            ready: false,
            reason: FLAPPING.into()
        })
    );
    assert_eq!(t.held_until(), Some(33_000));
    for now in (4_000..33_000).step_by(1_000) {
        assert_eq!(t.observe(&Probe::Pass, now, &c, &f), None, "held at {now}");
    }
    assert!(!t.ready());
    // After the cool-down the success threshold applies again.
    assert!(
        t.observe(&Probe::Pass, 33_000, &c, &f)
            .is_some_and(|v| v.ready)
    );
    assert_eq!(t.held_until(), None);
}

#[test]
fn changes_spread_beyond_the_window_are_not_flapping() {
    let (c, f) = (
        check(1, 1),
        FlapPolicy {
            max_transitions: 3,
            window_ms: 10_000,
            cooldown_ms: 30_000,
        },
    );
    let mut t = Tracker::new(false);
    let mut now = 0;
    for i in 0..10 {
        let probe = if i % 2 == 0 { Probe::Pass } else { fail() };
        let v = t.observe(&probe, now, &c, &f).expect("a change");
        assert_ne!(v.reason, FLAPPING, "change {i} at {now}");
        now += 6_000;
    }
}

proptest! {
    /// Whatever the probes, a verdict is always a real change or the flapping hold, and a
    /// held instance never becomes ready before its cool-down ends.
    #[test]
    fn verdicts_are_changes_and_holds_hold(results in prop::collection::vec(any::<bool>(), 1..200)) {
        let (c, f) = (check(2, 2), FlapPolicy { max_transitions: 3, window_ms: 5_000, cooldown_ms: 8_000 });
        let mut t = Tracker::new(false);
        for (i, ok) in results.iter().enumerate() {
            let now = i as u64 * 500;
            let before = t.ready();
            let held = t.held_until().filter(|until| now < *until);
            let probe = if *ok { Probe::Pass } else { fail() };
            match t.observe(&probe, now, &c, &f) {
                Some(v) if v.reason == FLAPPING => prop_assert!(!v.ready && !t.ready()),
                Some(v) => {
                    prop_assert_ne!(v.ready, before);
                    prop_assert_eq!(v.ready, t.ready());
                }
                None => prop_assert_eq!(t.ready(), before),
            }
            if held.is_some() {
                prop_assert!(!t.ready(), "became ready at {} while held", now);
            }
        }
    }
}

#[test]
fn sync_takes_a_change_made_elsewhere() {
    let (c, f) = (check(2, 2), FlapPolicy::default());
    let mut t = Tracker::new(true);
    // Taken out by a heartbeat: passing probes bring it back after the threshold.
    t.sync(false);
    assert_eq!(t.observe(&Probe::Pass, 0, &c, &f), None);
    assert!(
        t.observe(&Probe::Pass, 1_000, &c, &f)
            .is_some_and(|v| v.ready)
    );
    t.sync(true);
    assert!(t.ready());
}

#[test]
fn a_taken_over_hold_lasts_until_its_end() {
    let (c, f) = (check(1, 1), FlapPolicy::default());
    let mut t = Tracker::held(5_000);
    assert_eq!(t.observe(&Probe::Pass, 1_000, &c, &f), None, "still held");
    assert!(!t.ready());
    assert_eq!(
        t.observe(&Probe::Pass, 5_000, &c, &f).map(|v| v.ready),
        Some(true),
        "back once the hold is over"
    );
}

#[test]
fn restart_forgets_a_partial_count() {
    let (c, f) = (check(1, 3), FlapPolicy::default());
    let mut t = Tracker::new(true);
    assert_eq!(t.observe(&fail(), 0, &c, &f), None);
    assert_eq!(t.observe(&fail(), 1_000, &c, &f), None);
    t.restart();
    assert_eq!(
        t.observe(&fail(), 2_000, &c, &f),
        None,
        "two failures counted by an earlier owner do not count"
    );
    assert_eq!(t.observe(&fail(), 3_000, &c, &f), None);
    assert_eq!(
        t.observe(&fail(), 4_000, &c, &f).map(|v| v.ready),
        Some(false)
    );
}
