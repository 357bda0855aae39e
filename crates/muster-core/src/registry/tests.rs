use super::*;
use crate::model::RegisterRequest;
use proptest::prelude::*;

fn spec(service: &str, id: &str, check: bool) -> Box<InstanceSpec> {
    let mut req = RegisterRequest {
        service: Some(service.into()),
        instance_id: Some(id.into()),
        host: Some("10.0.0.1".into()),
        port: Some(8080.into()),
        zone: Some("z1".into()),
        ..Default::default()
    };
    if check {
        req.health_endpoint = Some("/ready".into());
        req.liveness_check = Some(crate::CheckRequest {
            kind: Some("tcp".into()),
            ..Default::default()
        });
    }
    Box::new(req.validate().expect("valid").0)
}

fn register(service: &str, id: &str, healthy: bool) -> Command {
    Command::Register {
        spec: spec(service, id, !healthy),
        want_healthy: healthy,
        limits: Limits::default(),
        revive: false,
        at: 1,
    }
}

struct Harness {
    reg: Registry,
    events: Vec<Event>,
}

impl Harness {
    fn new() -> Self {
        Self {
            reg: Registry::new(),
            events: Vec::new(),
        }
    }

    fn apply(&mut self, cmd: Command) -> Result<Applied, ApplyError> {
        let index = self.reg.index() + 1;
        self.events.clear();
        self.reg
            .apply(index, &cmd, &mut self.events)
            .expect("index moves forward")
    }

    fn status(&self, id: &str) -> Option<Status> {
        self.reg.get(id).map(|i| i.status)
    }
}

#[test]
fn register_starting_then_ready_on_heartbeat() {
    let mut h = Harness::new();
    let applied = h.apply(register("inv", "i1", false)).unwrap();
    assert!(matches!(applied, Applied::Registered { created: true, .. }));
    assert_eq!(h.status("i1"), Some(Status::Starting));
    assert_eq!(h.events.len(), 1);
    h.apply(Command::SetReadiness {
        instance_id: "i1".into(),
        ready: true,
        reason: "heartbeat reported ready".into(),
        at: 2,
    })
    .unwrap();
    let inst = h.reg.get("i1").unwrap();
    assert_eq!(
        (inst.status, &*inst.status_reason),
        (Status::Healthy, "heartbeat reported ready")
    );
    assert_eq!(
        (inst.create_index, inst.modify_index, inst.status_changed_at),
        (1, 2, 2)
    );
    h.apply(Command::SetReadiness {
        instance_id: "i1".into(),
        ready: false,
        reason: "not ready".into(),
        at: 3,
    })
    .unwrap();
    assert_eq!(h.status("i1"), Some(Status::Unhealthy));
}

#[test]
fn a_new_reason_for_staying_out_is_recorded_and_nothing_else_is() {
    let mut h = Harness::new();
    h.apply(register("inv", "i1", false)).unwrap();
    let out = |reason: &str| Command::SetReadiness {
        instance_id: "i1".into(),
        ready: false,
        reason: reason.into(),
        at: 5,
    };
    h.apply(out("flapping")).unwrap();
    let inst = h.reg.get("i1").unwrap();
    assert_eq!(
        (inst.status, &*inst.status_reason, inst.modify_index),
        (Status::Starting, "flapping", 2)
    );
    assert_eq!(h.events.len(), 1);
    h.apply(out("flapping")).unwrap();
    assert!(h.events.is_empty(), "the same reason again changes nothing");
    let ready = Command::SetReadiness {
        instance_id: "i1".into(),
        ready: true,
        reason: "ok".into(),
        at: 6,
    };
    h.apply(ready.clone()).unwrap();
    h.apply(Command::SetReadiness {
        instance_id: "i1".into(),
        ready: true,
        reason: "still ok".into(),
        at: 7,
    })
    .unwrap();
    assert!(
        h.events.is_empty(),
        "a ready instance's reason does not churn"
    );
}

#[test]
fn healthy_at_once_without_check() {
    let mut h = Harness::new();
    h.apply(register("inv", "i1", true)).unwrap();
    assert_eq!(h.status("i1"), Some(Status::Healthy));
}

#[test]
fn drain_and_undrain() {
    let mut h = Harness::new();
    h.apply(register("inv", "i1", true)).unwrap();
    h.apply(Command::SetStatus {
        instance_id: "i1".into(),
        status: Status::Draining,
        reason: String::new(),
        at: 5,
    })
    .unwrap();
    assert_eq!(&*h.reg.get("i1").unwrap().status_reason, "drain requested");
    assert_eq!(h.status("i1"), Some(Status::Draining));
    h.apply(Command::SetStatus {
        instance_id: "i1".into(),
        status: Status::Healthy,
        reason: "deploy done".into(),
        at: 6,
    })
    .unwrap();
    let inst = h.reg.get("i1").unwrap();
    assert_eq!(
        (inst.status, &*inst.status_reason),
        (Status::Healthy, "deploy done")
    );
}

#[test]
fn undrain_of_an_unready_instance_goes_back_to_starting() {
    let mut h = Harness::new();
    h.apply(register("inv", "i1", false)).unwrap();
    h.apply(Command::SetStatus {
        instance_id: "i1".into(),
        status: Status::Draining,
        reason: String::new(),
        at: 5,
    })
    .unwrap();
    h.apply(Command::SetStatus {
        instance_id: "i1".into(),
        status: Status::Healthy,
        reason: String::new(),
        at: 6,
    })
    .unwrap();
    assert_eq!(h.status("i1"), Some(Status::Starting));
}

#[test]
fn refused_transitions_change_nothing_but_the_index() {
    let mut h = Harness::new();
    h.apply(register("inv", "i1", false)).unwrap();
    let before = h.reg.get("i1").unwrap().clone();
    let e = h
        .apply(Command::SetStatus {
            instance_id: "i1".into(),
            status: Status::Healthy,
            reason: String::new(),
            at: 5,
        })
        .unwrap_err();
    assert!(
        matches!(
            e,
            ApplyError::InvalidTransition {
                from: Status::Starting,
                ..
            }
        ),
        "{e}"
    );
    let e = h
        .apply(Command::SetStatus {
            instance_id: "i1".into(),
            status: Status::Expired,
            reason: String::new(),
            at: 5,
        })
        .unwrap_err();
    assert!(matches!(e, ApplyError::InvalidTransition { .. }), "{e}");
    assert_eq!(h.reg.get("i1").unwrap(), &before);
    assert!(h.events.is_empty());
    assert_eq!(h.reg.index(), 3);
    let e = h
        .apply(Command::Deregister {
            instance_id: "nope".into(),
            at: 1,
        })
        .unwrap_err();
    assert_eq!(e, ApplyError::UnknownInstance("nope".into()));
}

#[test]
fn deregister_emits_a_tombstone_and_drops_the_service() {
    let mut h = Harness::new();
    h.apply(register("inv", "i1", true)).unwrap();
    h.apply(Command::Deregister {
        instance_id: "i1".into(),
        at: 9,
    })
    .unwrap();
    assert!(h.reg.get("i1").is_none());
    assert_eq!(h.reg.service_index("inv"), None);
    assert_eq!(h.events.len(), 1);
    assert_eq!(h.events[0].kind, EventKind::Delete);
    assert_eq!(h.events[0].instance.status, Status::Removed);
    assert_eq!(h.events[0].index, 2);
}

#[test]
fn expire_skips_instances_that_changed_since_the_leader_looked() {
    let mut h = Harness::new();
    h.apply(register("inv", "i1", true)).unwrap();
    h.apply(register("inv", "i2", true)).unwrap();
    let mut changed = spec("inv", "i2", false);
    changed.weight = 5;
    h.apply(Command::Register {
        spec: changed,
        want_healthy: false,
        limits: Limits::default(),
        revive: false,
        at: 3,
    })
    .unwrap();
    let applied = h
        .apply(Command::Expire {
            instances: vec![("i1".into(), 1), ("i2".into(), 2)],
            term: 0,
            at: 4,
        })
        .unwrap();
    assert_eq!(
        applied,
        Applied::Expired {
            instance_ids: vec!["i1".into()]
        }
    );
    assert!(h.reg.get("i2").is_some());
    assert_eq!(h.events[0].instance.status, Status::Expired);
    assert!(
        h.events[0].instance.status_reason.contains("lease expired"),
        "{}",
        h.events[0].instance.status_reason
    );
}

#[test]
fn idempotent_reregistration_does_not_touch_the_service_index() {
    let mut h = Harness::new();
    h.apply(register("inv", "i1", true)).unwrap();
    let applied = h.apply(register("inv", "i1", true)).unwrap();
    assert!(matches!(
        applied,
        Applied::Registered { created: false, .. }
    ));
    assert!(h.events.is_empty());
    assert_eq!(h.reg.service_index("inv"), Some(1));
    assert_eq!(h.reg.index(), 2);
}

#[test]
fn a_revived_reregistration_voids_an_earlier_expiry_decision() {
    let mut h = Harness::new();
    h.apply(register("inv", "i1", true)).unwrap();
    let seen = h.reg.get("i1").unwrap().modify_index;
    let mut cmd = register("inv", "i1", true);
    if let Command::Register { revive, .. } = &mut cmd {
        *revive = true;
    }
    h.apply(cmd).unwrap();
    assert_eq!(h.events.len(), 1, "a revival is a change");
    let applied = h
        .apply(Command::Expire {
            instances: vec![("i1".into(), seen)],
            term: 0,
            at: 9,
        })
        .unwrap();
    assert_eq!(
        applied,
        Applied::Expired {
            instance_ids: vec![]
        }
    );
    assert!(h.reg.get("i1").is_some());
}

#[test]
fn an_expiry_is_valid_only_in_the_term_that_decided_it() {
    let cmd = Command::Expire {
        instances: vec![],
        term: 3,
        at: 0,
    };
    assert!(cmd.is_valid_in_term(3));
    assert!(!cmd.is_valid_in_term(4));
    assert!(register("a", "b", true).is_valid_in_term(9));
}

#[test]
fn one_service_changing_leaves_the_other_index_alone() {
    let mut h = Harness::new();
    h.apply(register("a", "a1", true)).unwrap();
    h.apply(register("b", "b1", true)).unwrap();
    h.apply(Command::Deregister {
        instance_id: "a1".into(),
        at: 3,
    })
    .unwrap();
    h.apply(register("a", "a2", true)).unwrap();
    assert_eq!(h.reg.service_index("a"), Some(4));
    assert_eq!(h.reg.service_index("b"), Some(2));
}

#[test]
fn id_conflicts_and_limits() {
    let mut h = Harness::new();
    h.apply(register("a", "x", true)).unwrap();
    let e = h.apply(register("b", "x", true)).unwrap_err();
    assert!(matches!(e, ApplyError::IdConflict { .. }), "{e}");
    let limits = Limits {
        max_instances_per_service: 1,
        max_instances: 2,
    };
    let e = h
        .apply(Command::Register {
            spec: spec("a", "y", false),
            want_healthy: false,
            limits,
            revive: false,
            at: 1,
        })
        .unwrap_err();
    assert_eq!(
        e,
        ApplyError::LimitExceeded {
            what: "per-service".into(),
            limit: 1
        }
    );
    h.apply(Command::Register {
        spec: spec("b", "y", false),
        want_healthy: false,
        limits,
        revive: false,
        at: 1,
    })
    .unwrap();
    let e = h
        .apply(Command::Register {
            spec: spec("c", "z", false),
            want_healthy: false,
            limits,
            revive: false,
            at: 1,
        })
        .unwrap_err();
    assert_eq!(
        e,
        ApplyError::LimitExceeded {
            what: "registry".into(),
            limit: 2
        }
    );
    // Updating an existing instance is never refused by a limit.
    h.apply(Command::Register {
        spec: spec("b", "y", true),
        want_healthy: false,
        limits,
        revive: false,
        at: 2,
    })
    .unwrap();
}

#[test]
fn apply_refuses_an_index_that_does_not_move_forward() {
    let mut reg = Registry::new();
    reg.advance(5).unwrap();
    let err = reg
        .apply(5, &register("a", "x", true), &mut Vec::new())
        .unwrap_err();
    assert_eq!(
        err,
        IndexError {
            given: 5,
            applied: 5
        }
    );
    assert!(reg.is_empty());
}

#[test]
fn corrupt_snapshots_are_reported() {
    assert!(Registry::restore(b"{").is_err());
    assert!(Registry::restore(br#"{"index":1,"services":{},"instances":[]}"#).is_ok());
}

fn arb_command() -> impl Strategy<Value = Command> {
    let id = prop::sample::select(vec!["i0", "i1", "i2", "i3", "i4", "i5"]);
    let svc = prop::sample::select(vec!["a", "b", "c"]);
    prop_oneof![
        (
            svc,
            id.clone(),
            any::<bool>(),
            any::<bool>(),
            0u32..3,
            any::<bool>()
        )
            .prop_map(|(s, i, check, healthy, w, revive)| {
                let mut sp = spec(s, i, check);
                sp.weight = w;
                Command::Register {
                    spec: sp,
                    want_healthy: healthy && !check,
                    limits: Limits {
                        max_instances_per_service: 4,
                        max_instances: 5,
                    },
                    revive,
                    at: 10,
                }
            }),
        id.clone().prop_map(|i| Command::Deregister {
            instance_id: i.into(),
            at: 11
        }),
        (
            id.clone(),
            prop::sample::select(vec![Status::Draining, Status::Healthy, Status::Unhealthy])
        )
            .prop_map(|(i, s)| Command::SetStatus {
                instance_id: i.into(),
                status: s,
                reason: String::new(),
                at: 12
            }),
        (id.clone(), any::<bool>()).prop_map(|(i, r)| Command::SetReadiness {
            instance_id: i.into(),
            ready: r,
            reason: "probe".into(),
            at: 13
        }),
        (id.clone(), any::<bool>()).prop_map(|(i, l)| Command::SetLiveness {
            instance_id: i.into(),
            live: l,
            reason: "liveness probe".into(),
            at: 15
        }),
        prop::collection::vec((id, 0u64..20), 0..4).prop_map(|v| Command::Expire {
            instances: v.into_iter().map(|(i, m)| (i.to_string(), m)).collect(),
            term: 0,
            at: 14
        }),
    ]
}

proptest! {
    #[test]
    fn snapshot_restore_gives_the_same_state(cmds in prop::collection::vec(arb_command(), 0..60)) {
        let mut reg = Registry::new();
        let mut events = Vec::new();
        for (i, cmd) in cmds.iter().enumerate() {
            let _ = reg.apply(i as u64 + 1, cmd, &mut events).unwrap();
            let restored = Registry::restore(&reg.snapshot()).unwrap();
            prop_assert_eq!(&restored, &reg);
            prop_assert_eq!(restored.snapshot(), reg.snapshot());
        }
    }

    #[test]
    fn indices_never_decrease(cmds in prop::collection::vec(arb_command(), 0..80)) {
        let mut reg = Registry::new();
        let mut svc_index: BTreeMap<String, u64> = BTreeMap::new();
        let mut inst_index: BTreeMap<String, u64> = BTreeMap::new();
        for (i, cmd) in cmds.iter().enumerate() {
            let index = i as u64 + 1;
            let mut events = Vec::new();
            let _ = reg.apply(index, cmd, &mut events).unwrap();
            prop_assert_eq!(reg.index(), index);
            for ev in &events {
                prop_assert_eq!(ev.index, index);
                prop_assert_eq!(ev.instance.modify_index, index);
                prop_assert_eq!(ev.kind == EventKind::Delete, ev.instance.status.is_terminal());
            }
            for name in ["a", "b", "c"] {
                if let Some(now) = reg.service_index(name) {
                    let before = svc_index.insert(name.into(), now).unwrap_or(0);
                    prop_assert!(now >= before && now <= index);
                }
            }
            for inst in reg.instances() {
                let before = inst_index.insert(inst.spec.instance_id.to_string(), inst.modify_index).unwrap_or(0);
                prop_assert!(inst.modify_index >= before);
                prop_assert!(inst.create_index <= inst.modify_index);
                prop_assert!(!inst.status.is_terminal());
                // The lifecycle: only ready, live instances are HEALTHY.
                prop_assert!(inst.status != Status::Healthy || (inst.ready && inst.live));
            }
            // Every service with instances is known, and every instance's service lists it.
            for name in reg.services().map(str::to_string).collect::<Vec<_>>() {
                prop_assert!(reg.service_instances(&name).count() > 0);
            }
        }
    }
}

fn liveness(id: &str, live: bool, reason: &str) -> Command {
    Command::SetLiveness {
        instance_id: id.into(),
        live,
        reason: reason.into(),
        at: 5,
    }
}

fn readiness(id: &str, ready: bool) -> Command {
    Command::SetReadiness {
        instance_id: id.into(),
        ready,
        reason: if ready {
            "check passed"
        } else {
            "check failed"
        }
        .into(),
        at: 4,
    }
}

#[test]
fn a_failed_liveness_check_takes_an_instance_out_until_it_passes_again() {
    let mut h = Harness::new();
    h.apply(register("inv", "i1", false)).unwrap();
    h.apply(readiness("i1", true)).unwrap();
    assert_eq!(h.status("i1"), Some(Status::Healthy));
    h.apply(liveness("i1", false, "liveness check failed: HTTP 500"))
        .unwrap();
    let inst = h.reg.get("i1").unwrap();
    assert_eq!(
        (inst.status, inst.live, inst.ready),
        (Status::Unhealthy, false, true)
    );
    assert_eq!(&*inst.status_reason, "liveness check failed: HTTP 500");
    // Readiness passing again does not bring a dead instance back, nor hide why it is out.
    h.apply(readiness("i1", false)).unwrap();
    h.apply(readiness("i1", true)).unwrap();
    let inst = h.reg.get("i1").unwrap();
    assert_eq!(inst.status, Status::Unhealthy);
    assert_eq!(&*inst.status_reason, "liveness check failed: HTTP 500");
    // Nor does undraining it.
    h.apply(Command::SetStatus {
        instance_id: "i1".into(),
        status: Status::Draining,
        reason: String::new(),
        at: 6,
    })
    .unwrap();
    h.apply(Command::SetStatus {
        instance_id: "i1".into(),
        status: Status::Healthy,
        reason: String::new(),
        at: 7,
    })
    .unwrap();
    assert_eq!(h.status("i1"), Some(Status::Unhealthy));
    // The liveness check passes again: back in rotation, since it is ready.
    h.apply(liveness("i1", true, "liveness check passed"))
        .unwrap();
    let inst = h.reg.get("i1").unwrap();
    assert_eq!((inst.status, inst.live), (Status::Healthy, true));
    assert_eq!(&*inst.status_reason, "liveness check passed");
}

#[test]
fn a_liveness_verdict_for_an_instance_without_a_liveness_check_is_ignored() {
    let mut h = Harness::new();
    h.apply(register("inv", "i1", true)).unwrap();
    h.apply(liveness("i1", false, "liveness check failed: stale"))
        .unwrap();
    assert!(h.events.is_empty());
    assert!(h.reg.get("i1").unwrap().live);
}

#[test]
fn a_dead_instance_that_registers_again_starts_over() {
    let mut h = Harness::new();
    h.apply(register("inv", "i1", false)).unwrap();
    h.apply(readiness("i1", true)).unwrap();
    h.apply(liveness("i1", false, "liveness check failed: refused"))
        .unwrap();
    h.apply(register("inv", "i1", false)).unwrap();
    let inst = h.reg.get("i1").unwrap();
    assert_eq!(
        (inst.status, inst.live, inst.ready),
        (Status::Starting, true, false),
        "not straight back into rotation"
    );
    // Unchanged liveness writes nothing.
    let before = h.reg.index();
    h.apply(liveness("i1", true, "liveness check passed"))
        .unwrap();
    assert!(h.events.is_empty(), "{:?}", h.events);
    assert!(h.reg.index() > before);
}

#[test]
fn repeated_strings_are_stored_once_and_ids_are_not_copied() {
    let mut h = Harness::new();
    h.apply(register("pay", "p1", true)).unwrap();
    h.apply(register("pay", "p2", true)).unwrap();
    // A re-registration with equal values keeps pointing at the shared copies.
    h.apply(register("pay", "p1", true)).unwrap();
    let shared = |reg: &Registry| {
        let (a, b) = (reg.get("p1").unwrap(), reg.get("p2").unwrap());
        assert!(
            Arc::ptr_eq(&a.spec.profile, &b.spec.profile),
            "{:?} is stored twice",
            a.spec.profile
        );
        assert!(ArcStr::ptr_eq(&a.status_reason, &b.status_reason));
        // The registry's keys are the instances' own ids.
        let (key, inst) = reg.instances.get_key_value("p1").unwrap();
        assert!(ArcStr::ptr_eq(key, &inst.spec.instance_id));
        let in_service = reg.services["pay"].instances.get("p1").unwrap();
        assert!(ArcStr::ptr_eq(in_service, key));
    };
    shared(&h.reg);
    shared(&Registry::restore(&h.reg.snapshot()).unwrap());

    // Another zone: a profile of its own, the strings it has in common shared.
    let mut other = spec("pay", "p3", false);
    Arc::make_mut(&mut other.profile).zone = "z2".into();
    other.weight = 7;
    h.apply(Command::Register {
        spec: other,
        want_healthy: true,
        limits: Limits::default(),
        revive: false,
        at: 1,
    })
    .unwrap();
    let (p1, p3) = (h.reg.get("p1").unwrap(), h.reg.get("p3").unwrap());
    assert!(!Arc::ptr_eq(&p1.spec.profile, &p3.spec.profile));
    assert!(ArcStr::ptr_eq(p1.spec.service(), p3.spec.service()));
    assert_eq!((&**p3.spec.zone(), p3.spec.weight), ("z2", 7));
    // A weight of its own does not make a profile: p2 and p3's first registration agree.
    assert_eq!(h.reg.strings.profiles(), 2);
}
