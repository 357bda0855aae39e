use super::*;
use proptest::prelude::*;

fn config() -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: 3,
        failure_rate: 2.0, // off: only the consecutive trigger
        window: 10,
        open_for: Duration::from_secs(5),
        half_open_probes: 2,
    }
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_it_and_it_recovers_through_half_open() {
    let c = config();
    let mut b = Breaker::new();
    let now = Instant::now();
    assert_eq!(b.record(false, now, &c), None);
    assert_eq!(b.record(false, now, &c), None);
    assert_eq!(b.record(false, now, &c), Some(BreakerState::Open));
    assert_eq!(b.try_acquire(now, &c), (false, None), "open: nothing goes");

    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert_eq!(b.try_acquire(Instant::now(), &c), (false, None));
    tokio::time::advance(Duration::from_millis(1)).await;
    let now = Instant::now();
    assert_eq!(
        b.try_acquire(now, &c),
        (true, Some(BreakerState::HalfOpen)),
        "open_for is over: the first probe goes"
    );
    assert_eq!(b.try_acquire(now, &c), (true, None), "a second probe");
    assert_eq!(b.try_acquire(now, &c), (false, None), "only two at once");
    assert_eq!(b.record(true, now, &c), None);
    assert_eq!(b.record(true, now, &c), Some(BreakerState::Closed));
    assert_eq!(b.try_acquire(now, &c), (true, None));
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_opens_it_again_for_a_full_period() {
    let c = config();
    let mut b = Breaker::new();
    for _ in 0..3 {
        b.record(false, Instant::now(), &c);
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(b.try_acquire(Instant::now(), &c).0);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        b.record(false, Instant::now(), &c),
        Some(BreakerState::Open)
    );
    tokio::time::advance(Duration::from_millis(4_999)).await;
    assert!(
        !b.try_acquire(Instant::now(), &c).0,
        "open_for counts from the failed probe"
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(b.try_acquire(Instant::now(), &c).0);
}

#[test]
fn the_failure_rate_opens_it_once_the_window_is_full() {
    let c = BreakerConfig {
        consecutive_failures: 0,
        failure_rate: 0.5,
        window: 10,
        ..config()
    };
    let mut b = Breaker::new();
    let now = Instant::now();
    // Alternating: never 2 failures in a row, but 50% of the window.
    for i in 0..9 {
        assert_eq!(
            b.record(i % 2 == 1, now, &c),
            None,
            "window not full at {i}"
        );
    }
    assert_eq!(b.record(false, now, &c), Some(BreakerState::Open));
}

#[test]
fn successes_reset_the_consecutive_count() {
    let c = config();
    let mut b = Breaker::new();
    let now = Instant::now();
    for _ in 0..10 {
        assert_eq!(b.record(false, now, &c), None);
        assert_eq!(b.record(false, now, &c), None);
        assert_eq!(b.record(true, now, &c), None);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

proptest! {
    /// Whatever happens, at most `half_open_probes` calls are out at once while half-open, and
    /// an open breaker lets nothing through before its time.
    #[test]
    fn probes_are_bounded(steps in prop::collection::vec((0u8..3, 0u64..3_000), 1..200)) {
        let c = config();
        let mut b = Breaker::new();
        let start = Instant::now();
        let mut at = start;
        let mut out = 0u32;
        for (op, dt) in steps {
            at += Duration::from_millis(dt);
            match op {
                0 => {
                    let before = (b.state(), b.open_until);
                    let (ok, _) = b.try_acquire(at, &c);
                    if before.0 == BreakerState::Open && before.1.is_some_and(|t| at < t) {
                        prop_assert!(!ok);
                    }
                    if ok { out += 1; }
                }
                _ if out > 0 => {
                    out -= 1;
                    b.record(op == 1, at, &c);
                }
                _ => {}
            }
            if b.state() == BreakerState::HalfOpen {
                prop_assert!(b.probing <= c.half_open_probes);
            }
        }
    }
}
