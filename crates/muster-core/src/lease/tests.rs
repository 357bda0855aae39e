use super::*;

fn none() -> Assessment {
    Assessment::default()
}

#[test]
fn renew_moves_the_deadline_and_lapse_is_final() {
    let mut t = LeaseTable::new();
    t.track(&"a".into(), "s", 1_000, 1, 0);
    assert_eq!(t.renew("a", 500), Ok(1_500));
    assert!(t.lapsed(1_499, 10, &none()).is_empty());
    assert_eq!(t.lapsed(1_500, 10, &none()), vec![(ArcStr::from("a"), 1)]);
    assert_eq!(t.renew("a", 1_500), Err(RenewError::Lapsed));
    assert_eq!(t.renew("b", 0), Err(RenewError::Unknown));
    t.untrack("a");
    assert!(t.is_empty());
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn lapsed_is_ordered_and_bounded() {
    let mut t = LeaseTable::new();
    for (i, id) in ["c", "a", "b"].iter().enumerate() {
        t.track(&ArcStr::from(*id), "s", 100 + i as u64, i as u64, 0);
    }
    let ids: Vec<_> = t
        .lapsed(1_000, 2, &none())
        .into_iter()
        .map(|(id, _)| id.to_string())
        .collect();
    assert_eq!(ids, ["c", "a"]);
    assert_eq!(t.next_deadline(), Some(100));
}

#[test]
fn arm_all_gives_a_full_ttl() {
    let mut t = LeaseTable::new();
    t.track(&"a".into(), "s", 1_000, 7, 0);
    t.track(&"b".into(), "s", 5_000, 8, 0);
    t.arm_all(10_000);
    assert!(t.lapsed(10_999, 10, &none()).is_empty());
    assert_eq!(t.lapsed(11_000, 10, &none()).len(), 1);
    assert_eq!(t.info("b").map(|i| i.deadline), Some(15_000));
}

#[test]
fn reconcile_follows_the_registry() {
    let mut t = LeaseTable::new();
    t.track(&"a".into(), "s", 1_000, 1, 0);
    // A change that is not a registration keeps the deadline and takes the new index.
    t.reconcile(&"a".into(), Some(("s", 1_000, 9)), false, 500);
    assert_eq!(t.lapsed(1_000, 1, &none()), vec![(ArcStr::from("a"), 9)]);
    // A shorter TTL pulls the deadline in; a longer one does not push it out.
    t.reconcile(&"a".into(), Some(("s", 200, 9)), false, 500);
    assert_eq!(t.info("a").map(|i| i.deadline), Some(700));
    t.reconcile(&"a".into(), Some(("s", 60_000, 9)), false, 500);
    assert_eq!(t.info("a").map(|i| i.deadline), Some(700));
    // ... but the next renewal uses it.
    assert_eq!(t.renew("a", 600), Ok(60_600));
    // A registration restarts the lease, even a lapsed one.
    assert!(t.is_lapsed("a", 70_000));
    t.reconcile(&"a".into(), Some(("s", 1_000, 10)), true, 70_000);
    assert!(!t.is_lapsed("a", 70_000));
    assert_eq!(t.info("a").map(|i| i.deadline), Some(71_000));
    // Gone from the registry: forgotten. Unknown and present: tracked.
    t.reconcile(&"a".into(), None, false, 70_001);
    assert!(t.is_empty());
    t.reconcile(&"b".into(), Some(("s", 5_000, 11)), false, 0);
    assert_eq!(t.info("b").map(|i| i.deadline), Some(5_000));
}

/// 20 instances of one service heartbeating every 1 s with 3 s leases.
fn fleet(t: &mut LeaseTable, n: usize, service: &str) {
    for i in 0..n {
        t.track(
            &format!("{service}-{i}").into(),
            service,
            3_000,
            i as u64,
            0,
        );
    }
}

#[test]
fn half_the_fleet_going_silent_holds_expiries() {
    let cfg = ProtectionConfig::default();
    let mut t = LeaseTable::new();
    fleet(&mut t, 20, "pay");
    // Everyone heartbeats for a while; then 10 go silent (a cut on the registry's side).
    for now in (1_000..=5_000).step_by(1_000) {
        for i in 0..20 {
            if now <= 2_000 || i >= 10 {
                t.renew(&format!("pay-{i}"), now).unwrap();
            }
        }
        let a = t.assess(now, &cfg);
        if now <= 3_000 {
            assert!(!a.holds_anything(), "at {now}: {a:?}");
        }
    }
    // At 5 s the silent ones lapsed (renewed last at 2 s): all at risk, all held.
    let a = t.assess(5_000, &cfg);
    assert_eq!(a.at_risk, 10);
    assert!(a.registry_held && a.holds("pay"));
    assert!(
        t.lapsed(5_000, 100, &a).is_empty(),
        "held: nothing to expire"
    );
    assert_eq!(
        t.lapsed(5_000, 100, &none()).len(),
        10,
        "without protection they would go"
    );
    // Renewals resume: held leases may renew although they lapsed, and protection ends.
    assert_eq!(t.renew("pay-0", 5_100), Err(RenewError::Lapsed));
    for i in 0..5 {
        t.renew_held(&format!("pay-{i}"), 5_100).unwrap();
    }
    // Half of the silent ones are back: the share drops to the threshold and protection ends;
    // the ones still on their way get a fresh TTL instead of expiring at once.
    let after = t.assess(5_200, &cfg);
    assert!(!after.holds_anything(), "{after:?}");
    assert_eq!(t.rearm_held(5_200, |s| a.holds(s)), 5);
    assert!(t.lapsed(5_200, 100, &none()).is_empty());
    assert_eq!(
        t.info("pay-9").map(|i| i.deadline),
        Some(8_200),
        "those that never come back expire a TTL later"
    );
}

#[test]
fn a_scale_down_or_a_single_death_does_not_trip_it() {
    let cfg = ProtectionConfig::default();
    let mut t = LeaseTable::new();
    fleet(&mut t, 20, "pay");
    // Half deregister: they leave the table.
    for i in 0..10 {
        t.untrack(&format!("pay-{i}"));
    }
    for i in 10..19 {
        t.renew(&format!("pay-{i}"), 2_500).unwrap();
    }
    // One of the remaining ten dies: 1 in 10 at risk, below 30%.
    let a = t.assess(3_000, &cfg);
    assert_eq!((a.tracked, a.at_risk), (10, 1));
    assert!(!a.holds_anything(), "{a:?}");
    assert_eq!(t.lapsed(3_000, 100, &a).len(), 1, "the dead one expires");
}

#[test]
fn one_service_can_be_held_while_the_rest_expires() {
    let cfg = ProtectionConfig::default();
    let mut t = LeaseTable::new();
    fleet(&mut t, 40, "big");
    fleet(&mut t, 6, "small");
    // All of `small` goes silent (6 of 46 overall: 13%, under the registry threshold), and one
    // `big` instance dies.
    for i in 0..39 {
        t.renew(&format!("big-{i}"), 2_500).unwrap();
    }
    let a = t.assess(3_000, &cfg);
    assert!(!a.registry_held);
    assert!(a.holds("small") && !a.holds("big"), "{a:?}");
    let lapsed: Vec<String> = t
        .lapsed(3_000, 100, &a)
        .into_iter()
        .map(|(id, _)| id.to_string())
        .collect();
    assert_eq!(lapsed, ["big-39"]);
    // Services below `min_service` are never held on their own.
    let mut t = LeaseTable::new();
    fleet(&mut t, 2, "tiny");
    assert!(!t.assess(3_000, &cfg).holds_anything());
}

#[test]
fn releases_some_sees_any_service_let_go() {
    let held = |registry: bool, services: &[&str]| Assessment {
        registry_held: registry,
        held_services: services.iter().map(|s| ArcStr::from(*s)).collect(),
        ..Assessment::default()
    };
    assert!(held(false, &["a", "b"]).releases_some(&held(false, &["b"])));
    assert!(held(true, &[]).releases_some(&held(false, &["a"])));
    assert!(!held(false, &["a"]).releases_some(&held(false, &["a", "b"])));
    assert!(!held(false, &["a"]).releases_some(&held(true, &[])));
    assert!(!none().releases_some(&none()));
}

#[test]
fn a_dead_instance_is_at_risk_at_once_refuses_renewals_and_lapses_half_a_ttl_later() {
    let mut t = LeaseTable::new();
    t.track(&"a".into(), "s", 10_000, 1, 0);
    t.track(&"b".into(), "s", 10_000, 2, 0);
    assert!(t.set_live("a", false, 1_000), "condemned by the call");
    assert!(!t.set_live("a", false, 1_100), "only once");
    assert!(t.lapsed(5_999, 10, &none()).is_empty());
    assert_eq!(t.lapsed(6_000, 10, &none()), vec![(ArcStr::from("a"), 1)]);
    assert_eq!(t.renew("a", 1_000), Err(RenewError::Lapsed));
    assert_eq!(
        t.renew_held("a", 1_000),
        Err(RenewError::Lapsed),
        "not even while protection holds its service"
    );
    // Reconciling (another change to it) and a new term keep it lapsed; protection letting go
    // of its service does not give it time either.
    t.reconcile(&"a".into(), Some(("s", 10_000, 5)), false, 1_200);
    t.arm_all(2_000);
    assert_eq!(t.rearm_held(2_000, |_| true), 0);
    assert_eq!(t.lapsed(6_000, 10, &none()), vec![(ArcStr::from("a"), 5)]);
    let a = t.assess(
        1_000,
        &ProtectionConfig {
            threshold: 0.3,
            min_leases: 1,
            min_service: 1,
        },
    );
    assert_eq!(a.at_risk, 1, "a dead instance is at risk like a silent one");
    assert!(a.holds("s"), "1 of 2 dead at once is held like a cut");
    // Alive again: a full TTL, renewals accepted.
    assert!(!t.set_live("a", true, 3_000));
    assert_eq!(t.info("a").map(|i| i.deadline), Some(13_000));
    assert_eq!(t.renew("a", 4_000), Ok(14_000));
    assert!(!t.set_live("zz", false, 0), "unknown ids are ignored");
}
