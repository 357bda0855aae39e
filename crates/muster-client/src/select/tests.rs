use super::*;
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::Mutex;

use crate::testing::instance;

fn view(endpoints: &[Endpoint], config: ViewConfig) -> View {
    View::new(endpoints.iter().cloned(), Arc::new(config))
}

fn endpoints(specs: &[(&str, &str, u32)]) -> Vec<Endpoint> {
    specs
        .iter()
        .map(|(id, zone, w)| Endpoint::new(instance(id, zone, *w, "")))
        .collect()
}

/// splitmix64: reproducible random numbers for picks.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
}

/// Picks `n` times (reporting success at once); counts per instance id.
fn counts(
    v: &View,
    n: usize,
    seed: u64,
    key: impl Fn(usize) -> Option<Vec<u8>>,
) -> HashMap<String, usize> {
    let mut rng = Rng(seed);
    let mut out = HashMap::new();
    let now = Instant::now();
    for i in 0..n {
        let k = key(i);
        let p = v
            .pick_with(k.as_deref(), rng.next(), rng.next(), now)
            .expect("a pick");
        *out.entry(p.instance().spec.instance_id.to_string())
            .or_default() += 1;
        p.report_at(true, now);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Weighted random and round robin give each endpoint its share of picks: within 2
    /// percentage points over 20,000 random picks, exactly over a round-robin period.
    #[test]
    fn weights_are_respected(weights in prop::collection::vec(1u32..1000, 1..12), seed in any::<u64>()) {
        let eps: Vec<Endpoint> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Endpoint::new(instance(&format!("i{i}"), "a1", *w, "")))
            .collect();
        let total: u32 = weights.iter().sum();
        for policy in [Policy::WeightedRandom, Policy::RoundRobin, Policy::ConsistentHash] {
            let v = view(&eps, ViewConfig { policy, ..ViewConfig::default() });
            let n = 20_000;
            let got = counts(&v, n, seed, |_| None);
            for (i, w) in weights.iter().enumerate() {
                let want = f64::from(*w) / f64::from(total);
                let share = got.get(&format!("i{i}")).copied().unwrap_or(0) as f64 / n as f64;
                prop_assert!((share - want).abs() < 0.02, "{policy:?} i{i}: {share} vs {want}");
            }
        }
    }

    /// Removing one of N endpoints moves only its keys, about 1/N of them; the others stay.
    #[test]
    fn consistent_hashing_moves_only_the_leavers_keys(n in 3usize..20, leaver in 0usize..20) {
        let leaver = leaver % n;
        let eps: Vec<Endpoint> = (0..n)
            .map(|i| Endpoint::new(instance(&format!("i{i}"), "a1", 100, "")))
            .collect();
        let config = || ViewConfig { policy: Policy::ConsistentHash, ..ViewConfig::default() };
        let before = view(&eps, config());
        let mut rest = eps.clone();
        rest.remove(leaver);
        let after = view(&rest, config());
        let now = Instant::now();
        let keys = 5_000;
        let mut moved = 0;
        for k in 0..keys {
            let key = format!("user-{k}");
            let a = before.pick_with(Some(key.as_bytes()), 0, 0, now).expect("pick").instance().spec.instance_id.to_string();
            let b = after.pick_with(Some(key.as_bytes()), 0, 0, now).expect("pick").instance().spec.instance_id.to_string();
            if a != b {
                prop_assert_eq!(&a, &format!("i{leaver}"), "a key moved off an endpoint that stayed");
                moved += 1;
            }
        }
        let share = moved as f64 / keys as f64;
        prop_assert!(share < 2.0 / n as f64, "moved {share} with n = {n}");
    }
}

#[test]
fn the_nearest_tier_wins_and_regions_are_crossed_only_when_allowed() {
    let eps = endpoints(&[
        ("a1-1", "a1", 100),
        ("a2-1", "a2", 100),
        ("b1-1", "b1", 100),
    ]);
    let here = |cross_region| ViewConfig {
        locality: Locality {
            zone: "a1".into(),
            region: "a".into(),
            cross_region,
        },
        ..ViewConfig::default()
    };
    let got = counts(&view(&eps, here(false)), 1_000, 1, |_| None);
    assert_eq!(got.get("a1-1"), Some(&1_000), "{got:?}");
    // The zone's instances drained (not HEALTHY): the rest of the region.
    let drained: Vec<Endpoint> = eps
        .iter()
        .map(|e| {
            let mut i = Instance::clone(e.instance());
            if i.spec.zone().as_str() == "a1" {
                i.status = Status::Draining;
            }
            e.updated(Arc::new(i))
        })
        .collect();
    let got = counts(&view(&drained, here(false)), 1_000, 2, |_| None);
    assert_eq!(got.get("a2-1"), Some(&1_000), "{got:?}");
    // The region gone too: another region only if allowed.
    let only_b = endpoints(&[("b1-1", "b1", 100)]);
    assert!(view(&only_b, here(false)).pick(None).is_none());
    assert_eq!(
        view(&only_b, here(true))
            .pick(None)
            .map(|p| p.instance().spec.instance_id.to_string()),
        Some("b1-1".to_string())
    );
}

#[test]
fn a_canary_is_seen_only_by_callers_that_opt_in_and_gets_its_weight_share() {
    let eps = vec![
        Endpoint::new(instance("stable-1", "a1", 95, "")),
        Endpoint::new(instance("canary-1", "a1", 5, "canary")),
    ];
    let got = counts(&view(&eps, ViewConfig::default()), 10_000, 3, |_| None);
    assert_eq!(got.get("canary-1"), None, "not opted in: {got:?}");
    let opted = ViewConfig {
        groups: vec!["canary".into()],
        ..ViewConfig::default()
    };
    let got = counts(&view(&eps, opted), 20_000, 4, |_| None);
    let share = got["canary-1"] as f64 / 20_000.0;
    assert!((0.04..0.06).contains(&share), "canary share {share}");
}

fn failing(v: &View, id: &str, times: usize) {
    let now = Instant::now();
    let e = v
        .endpoints()
        .find(|e| *e.instance().spec.instance_id == *id)
        .expect("endpoint");
    for _ in 0..times {
        v.started(e, &Now(Cell::new(Some(now))), false)
            .report_at(false, now);
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_is_skipped_until_its_probe_and_panic_mode_uses_everything() {
    let eps = endpoints(&[
        ("i1", "a1", 100),
        ("i2", "a1", 100),
        ("i3", "a1", 100),
        ("i4", "a1", 100),
    ]);
    let config = ViewConfig {
        breaker: BreakerConfig {
            consecutive_failures: 3,
            open_for: Duration::from_secs(5),
            ..BreakerConfig::default()
        },
        ejection: EjectionConfig {
            consecutive_failures: 0, // breakers only
            panic_threshold: 0.5,
            ..EjectionConfig::default()
        },
        ..ViewConfig::default()
    };
    let v = view(&eps, config);
    failing(&v, "i1", 3);
    assert_eq!(
        v.endpoints().next().unwrap().breaker_state(),
        BreakerState::Open
    );
    let got = counts(&v, 3_000, 5, |_| None);
    assert_eq!(got.get("i1"), None, "open: never picked {got:?}");
    // Two of four out: below the panic threshold? 2/4 available = 0.5, not below: still skipped.
    failing(&v, "i2", 3);
    let got = counts(&v, 3_000, 6, |_| None);
    assert!(
        !got.contains_key("i1") && !got.contains_key("i2"),
        "{got:?}"
    );
    // Three of four out: panic, everything is used again.
    failing(&v, "i3", 3);
    assert!(v.panicking());
    let got = counts(&v, 3_000, 7, |_| None);
    assert!(got.contains_key("i1") && got.contains_key("i3"), "{got:?}");
}

#[tokio::test(start_paused = true)]
async fn a_half_open_breaker_lets_one_probe_through_and_closes_on_success() {
    let eps = endpoints(&[("i1", "a1", 100), ("i2", "a1", 100), ("i3", "a1", 100)]);
    let config = ViewConfig {
        breaker: BreakerConfig {
            consecutive_failures: 2,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
            ..BreakerConfig::default()
        },
        ejection: EjectionConfig {
            consecutive_failures: 0,
            panic_threshold: 0.0,
            ..EjectionConfig::default()
        },
        policy: Policy::RoundRobin,
        ..ViewConfig::default()
    };
    let v = view(&eps, config);
    failing(&v, "i1", 2);
    tokio::time::advance(Duration::from_secs(5)).await;
    let now = Instant::now();
    // Round robin: the schedule comes to i1 within three picks; one probe, held open.
    let mut held = Vec::new();
    for _ in 0..6 {
        let p = v.pick_with(None, 0, 0, now).expect("pick");
        if &*p.instance().spec.instance_id == "i1" {
            held.push(p);
        }
    }
    assert_eq!(held.len(), 1, "only one probe at a time");
    assert_eq!(
        held.pop().unwrap().report_at(true, now),
        Some(BreakerState::Closed)
    );
    let got = counts(&v, 300, 8, |_| None);
    assert_eq!(
        got.get("i1"),
        Some(&100),
        "closed: back in rotation {got:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn ejection_respects_the_max_share_and_ends_on_time() {
    let eps: Vec<Endpoint> = (0..10)
        .map(|i| Endpoint::new(instance(&format!("i{i}"), "a1", 100, "")))
        .collect();
    let config = ViewConfig {
        breaker: BreakerConfig {
            consecutive_failures: 0,
            failure_rate: 2.0,
            ..BreakerConfig::default()
        },
        ejection: EjectionConfig {
            consecutive_failures: 2,
            base: Duration::from_secs(30),
            max_ejected_share: 0.2,
            panic_threshold: 0.0,
            ..EjectionConfig::default()
        },
        ..ViewConfig::default()
    };
    let v = view(&eps, config);
    for i in 0..4 {
        failing(&v, &format!("i{i}"), 2);
    }
    let now = Instant::now();
    let ejected: Vec<String> = v
        .endpoints()
        .filter(|e| e.is_ejected(now))
        .map(|e| e.instance().spec.instance_id.to_string())
        .collect();
    assert_eq!(ejected, ["i0", "i1"], "at most 20% of 10 out at once");
    let got = counts(&v, 2_000, 9, |_| None);
    assert!(
        !got.contains_key("i0") && !got.contains_key("i1"),
        "{got:?}"
    );
    tokio::time::advance(Duration::from_secs(30)).await;
    let got = counts(&v, 2_000, 10, |_| None);
    assert!(
        got.contains_key("i0") && got.contains_key("i1"),
        "back after 30s: {got:?}"
    );
}

#[test]
fn least_request_avoids_the_busier_endpoint() {
    let eps = endpoints(&[("i1", "a1", 100), ("i2", "a1", 100)]);
    let v = view(
        &eps,
        ViewConfig {
            policy: Policy::LeastRequest,
            ..ViewConfig::default()
        },
    );
    let now = Instant::now();
    let busy: Vec<_> = (0..5)
        .map(|_| {
            v.started(
                v.endpoints().next().unwrap(),
                &Now(Cell::new(Some(now))),
                false,
            )
        })
        .collect();
    let got = counts(&v, 100, 11, |_| None);
    assert_eq!(got.get("i2"), Some(&100), "{got:?}");
    drop(busy);
    assert_eq!(v.endpoints().next().unwrap().in_flight(), 0);
}

#[test]
fn a_reused_ring_picks_as_a_fresh_one_whatever_the_order() {
    let eps: Vec<Endpoint> = (0..20)
        .map(|i| Endpoint::new(instance(&format!("i{i}"), "a1", 100 + i, "")))
        .collect();
    let config = Arc::new(ViewConfig {
        policy: Policy::ConsistentHash,
        ..ViewConfig::default()
    });
    let first = View::new(eps.iter().cloned(), config.clone());
    let reversed = View::after(eps.iter().rev().cloned(), config.clone(), Some(&first));
    let same = View::after(eps.iter().cloned(), config.clone(), Some(&first));
    let now = Instant::now();
    for k in 0..2_000 {
        let key = format!("k{k}");
        let at = |v: &View| {
            v.pick_with(Some(key.as_bytes()), 0, 0, now)
                .map(|p| p.instance().spec.instance_id.to_string())
        };
        assert_eq!(at(&first), at(&reversed), "{key}");
        assert_eq!(at(&first), at(&same), "{key}");
    }
    assert!(Arc::ptr_eq(
        first.tiers[0].ring.as_ref().unwrap(),
        reversed.tiers[0].ring.as_ref().unwrap()
    ));
    assert!(Arc::ptr_eq(
        &first.tiers[0].by_address,
        &same.tiers[0].by_address
    ));
    assert!(!Arc::ptr_eq(
        &first.tiers[0].by_address,
        &reversed.tiers[0].by_address
    ));
}

#[tokio::test(start_paused = true)]
async fn breaker_changes_reach_the_hook_and_the_metrics() {
    let seen: Arc<Mutex<Vec<(String, BreakerState)>>> = Arc::default();
    let hook_seen = seen.clone();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(ClientMetrics::register(&mut registry));
    let eps = endpoints(&[("i1", "a1", 100), ("i2", "a1", 100)]);
    let config = ViewConfig {
        breaker: BreakerConfig {
            consecutive_failures: 1,
            open_for: Duration::from_secs(1),
            ..BreakerConfig::default()
        },
        ejection: EjectionConfig {
            consecutive_failures: 0,
            panic_threshold: 0.0,
            ..EjectionConfig::default()
        },
        on_breaker: Some(BreakerHook(Arc::new(move |i: &Instance, s| {
            hook_seen
                .lock()
                .unwrap()
                .push((i.spec.instance_id.to_string(), s));
        }))),
        metrics: Some(metrics.clone()),
        ..ViewConfig::default()
    };
    let v = view(&eps, config);
    failing(&v, "i1", 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    // Picks until i1's probe goes (and succeeds).
    for _ in 0..50 {
        let p = v.pick(None).expect("pick");
        let probe = &*p.instance().spec.instance_id == "i1";
        p.report(true);
        if probe {
            break;
        }
    }
    let states: Vec<BreakerState> = seen.lock().unwrap().iter().map(|(_, s)| *s).collect();
    assert_eq!(
        states,
        [
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::Closed
        ]
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for to in ["open", "half_open", "closed"] {
        assert!(
            text.contains(&format!(
                "muster_client_breaker_transitions_total{{to=\"{to}\"}} 1"
            )),
            "{text}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the policy, an endpoint with an open breaker is never picked, unless too few
    /// are available (panic mode) — then the view uses everything.
    #[test]
    fn no_pick_of_an_open_breaker_outside_panic_mode(
        n in 2usize..12,
        broken in prop::collection::vec(any::<bool>(), 12),
        policy in prop::sample::select(vec![Policy::WeightedRandom, Policy::RoundRobin, Policy::LeastRequest, Policy::ConsistentHash]),
        threshold in prop::sample::select(vec![0.0, 0.5]),
        seed in any::<u64>(),
    ) {
        let eps: Vec<Endpoint> = (0..n)
            .map(|i| Endpoint::new(instance(&format!("i{i}"), "a1", 100, "")))
            .collect();
        let config = ViewConfig {
            policy,
            breaker: BreakerConfig {
                consecutive_failures: 1,
                open_for: Duration::from_secs(3_600),
                ..BreakerConfig::default()
            },
            ejection: EjectionConfig {
                consecutive_failures: 0,
                panic_threshold: threshold,
                ..EjectionConfig::default()
            },
            ..ViewConfig::default()
        };
        let v = view(&eps, config);
        let broken: Vec<String> = (0..n).filter(|i| broken[*i]).map(|i| format!("i{i}")).collect();
        for id in &broken {
            failing(&v, id, 1);
        }
        let available = n - broken.len();
        let panic = available == 0 || (available as f64) < threshold * n as f64;
        prop_assert_eq!(v.panicking(), panic);
        let got = counts(&v, 300, seed, |i| Some(format!("key-{i}").into_bytes()));
        let picked_broken = broken.iter().any(|id| got.contains_key(id));
        if available > 0 && !panic {
            prop_assert!(!picked_broken, "{:?} picked {:?} (broken {:?})", policy, got, broken);
        }
        if available == 0 {
            prop_assert_eq!(got.values().sum::<usize>(), 300, "nothing available: everything is used");
        }
    }
}

fn breaking(threshold: f64) -> ViewConfig {
    ViewConfig {
        breaker: BreakerConfig {
            consecutive_failures: 1,
            open_for: Duration::from_secs(1),
            half_open_probes: 1,
            ..BreakerConfig::default()
        },
        ejection: EjectionConfig {
            consecutive_failures: 0,
            panic_threshold: threshold,
            ..EjectionConfig::default()
        },
        ..ViewConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn panic_mode_ends_when_the_breakers_time_out() {
    let eps = endpoints(&[
        ("i1", "a1", 100),
        ("i2", "a1", 100),
        ("i3", "a1", 100),
        ("i4", "a1", 100),
    ]);
    let v = view(&eps, breaking(0.5));
    for id in ["i1", "i2", "i3"] {
        failing(&v, id, 1);
    }
    assert!(v.panicking());
    tokio::time::advance(Duration::from_secs(2)).await;
    // Successful calls (probes through the expired breakers among them) end the panic.
    for _ in 0..(RECOUNT_EVERY as usize * 2) {
        v.pick(None).expect("pick").report(true);
    }
    assert!(!v.panicking());
    assert!(
        v.endpoints()
            .all(|e| e.breaker_state() == BreakerState::Closed)
    );
}

/// A caller in zone a1 whose breakers open on one failure, for an hour; panic below 50%.
fn zone_a1_breaking_for_an_hour() -> ViewConfig {
    ViewConfig {
        locality: Locality {
            zone: "a1".into(),
            region: "a".into(),
            cross_region: false,
        },
        breaker: BreakerConfig {
            open_for: Duration::from_secs(3_600),
            ..breaking(0.5).breaker
        },
        ..breaking(0.5)
    }
}

#[tokio::test(start_paused = true)]
async fn a_broken_zone_spills_to_the_next_tier_not_into_panic() {
    let eps = endpoints(&[
        ("a-1", "a1", 100),
        ("a-2", "a1", 100),
        ("a-3", "a1", 100),
        ("b-1", "a2", 100),
        ("b-2", "a2", 100),
    ]);
    let v = view(&eps, zone_a1_breaking_for_an_hour());
    for id in ["a-1", "a-2", "a-3"] {
        failing(&v, id, 1);
    }
    let got = counts(&v, 1_000, 12, |_| None);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got.contains_key("b-1") && got.contains_key("b-2"),
        "{got:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn only_the_probe_decides_a_half_open_round() {
    let eps = endpoints(&[("i1", "a1", 100), ("i2", "a1", 100)]);
    let v = view(&eps, breaking(0.0));
    let now = Instant::now();
    let i1 = v
        .endpoints()
        .find(|e| &*e.instance().spec.instance_id == "i1")
        .unwrap();
    // A call picked while all was well, still out when the breaker opens...
    let slow = v.started(i1, &Now(Cell::new(Some(now))), false);
    failing(&v, "i1", 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    let now = Instant::now();
    // ...the real probe goes out...
    let probe = loop {
        let p = v.pick_with(None, fast_random(), 0, now).expect("pick");
        if &*p.instance().spec.instance_id == "i1" {
            break p;
        }
    };
    // ...the old call's success does not close it, nor does its drop free a probe slot.
    assert_eq!(slow.report_at(true, now), None);
    assert_eq!(i1.breaker_state(), BreakerState::HalfOpen);
    assert_eq!(probe.report_at(true, now), Some(BreakerState::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_degraded_zone_spills_to_a_healthy_one_before_panicking() {
    let eps = endpoints(&[
        ("a-1", "a1", 100),
        ("a-2", "a1", 100),
        ("a-3", "a1", 100),
        ("b-1", "a2", 100),
    ]);
    let v = view(&eps, zone_a1_breaking_for_an_hour());
    // One of three left in the zone (33% < 50%): the healthy neighbour zone takes the calls.
    failing(&v, "a-1", 1);
    failing(&v, "a-2", 1);
    assert!(!v.panicking());
    let got = counts(&v, 500, 13, |_| None);
    assert_eq!(got.get("b-1"), Some(&500), "{got:?}");
    // The neighbour goes too: panic in the nearest degraded tier, all of it used.
    failing(&v, "b-1", 1);
    assert!(v.panicking());
    let got = counts(&v, 500, 14, |_| None);
    assert!(
        got.contains_key("a-1") && got.contains_key("a-3"),
        "{got:?}"
    );
}

#[test]
fn a_deferred_ring_keeps_keys_where_they_were_until_the_fresh_one() {
    let eps: Vec<Endpoint> = (0..10)
        .map(|i| Endpoint::new(instance(&format!("i{i}"), "a1", 100, "")))
        .collect();
    let config = Arc::new(ViewConfig {
        policy: Policy::ConsistentHash,
        ..ViewConfig::default()
    });
    let before = View::new(eps.iter().cloned(), config.clone());
    // i3 leaves, i10 joins.
    let mut next: Vec<Endpoint> = eps
        .iter()
        .filter(|e| &*e.instance().spec.instance_id != "i3")
        .cloned()
        .collect();
    next.push(Endpoint::new(instance("i10", "a1", 100, "")));
    let deferred = View::after_deferred(next.iter().cloned(), config.clone(), Some(&before));
    assert!(deferred.has_stale_ring());
    let fresh = View::after(next.iter().cloned(), config.clone(), Some(&deferred));
    assert!(!fresh.has_stale_ring());
    let now = Instant::now();
    let at = |v: &View, key: &str| {
        v.pick_with(Some(key.as_bytes()), 0, 0, now)
            .map(|p| p.instance().spec.instance_id.to_string())
            .unwrap()
    };
    let mut joined = 0;
    for k in 0..2_000 {
        let key = format!("k{k}");
        let (b, d, f) = (at(&before, &key), at(&deferred, &key), at(&fresh, &key));
        assert_ne!(d, "i3", "a departed member gets nothing");
        assert_ne!(d, "i10", "a new member waits for the fresh ring");
        if b != "i3" {
            assert_eq!(b, d, "{key}: the others keep their keys meanwhile");
        }
        if f == "i10" {
            joined += 1;
        }
    }
    assert!(joined > 0, "the fresh ring gives the new member its keys");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Picks stay in the caller's zone while it has an available endpoint, else in its region,
    /// and leave the region only when allowed.
    #[test]
    fn picks_prefer_the_zone_then_the_region(
        zones in prop::collection::vec(prop::sample::select(vec!["a1", "a2", "b1"]), 1..10),
        cross_region in any::<bool>(),
        policy in prop::sample::select(vec![Policy::WeightedRandom, Policy::RoundRobin, Policy::LeastRequest, Policy::ConsistentHash]),
        seed in any::<u64>(),
    ) {
        let eps: Vec<Endpoint> = zones
            .iter()
            .enumerate()
            .map(|(i, z)| Endpoint::new(instance(&format!("i{i}-{z}"), z, 100, "")))
            .collect();
        let config = ViewConfig {
            policy,
            locality: Locality { zone: "a1".into(), region: "a".into(), cross_region },
            ..ViewConfig::default()
        };
        let v = view(&eps, config);
        let best = if zones.contains(&"a1") {
            Some("a1")
        } else if zones.contains(&"a2") {
            Some("a2")
        } else if cross_region {
            Some("b1")
        } else {
            None
        };
        match best {
            Some(zone) => {
                let got = counts(&v, 200, seed, |i| Some(format!("key-{i}").into_bytes()));
                prop_assert!(got.keys().all(|id| id.ends_with(zone)), "{:?}", got);
            }
            None => prop_assert!(v.pick(None).is_none()),
        }
    }

    /// An ejected endpoint is never picked unless its tier is in panic mode.
    #[test]
    fn no_pick_of_an_ejected_endpoint_outside_panic_mode(
        n in 3usize..12,
        policy in prop::sample::select(vec![Policy::WeightedRandom, Policy::RoundRobin, Policy::LeastRequest, Policy::ConsistentHash]),
        seed in any::<u64>(),
    ) {
        let eps: Vec<Endpoint> = (0..n)
            .map(|i| Endpoint::new(instance(&format!("i{i}"), "a1", 100, "")))
            .collect();
        let config = ViewConfig {
            policy,
            breaker: BreakerConfig { consecutive_failures: 0, failure_rate: 2.0, ..BreakerConfig::default() },
            ejection: EjectionConfig {
                consecutive_failures: 1,
                base: Duration::from_secs(3_600),
                max_ejected_share: 0.5,
                panic_threshold: 0.0,
                ..EjectionConfig::default()
            },
            ..ViewConfig::default()
        };
        let v = view(&eps, config);
        failing(&v, "i0", 1);
        prop_assert!(v.endpoints().any(|e| &*e.instance().spec.instance_id == "i0" && e.is_ejected(Instant::now())));
        let got = counts(&v, 300, seed, |i| Some(format!("key-{i}").into_bytes()));
        prop_assert!(!got.contains_key("i0"), "{:?}", got);
    }
}
