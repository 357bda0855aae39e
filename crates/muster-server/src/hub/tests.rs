use super::*;
use muster_core::{Command, Limits, RegisterRequest};

struct World {
    reg: Registry,
    hub: Hub,
}

impl World {
    fn new(history: usize) -> Self {
        World {
            reg: Registry::new(),
            hub: Hub::new(history),
        }
    }

    fn apply(&mut self, cmds: &[Command]) {
        let mut events = Vec::new();
        for cmd in cmds {
            let index = self.reg.index() + 1;
            let _ = self
                .reg
                .apply(index, cmd, &mut events)
                .expect("index moves");
        }
        self.hub.applied(&self.reg, &events);
    }

    /// Service `a` with healthy `a1` and `a2` in zone `z1`.
    fn two_healthy_in_a() -> Self {
        let mut w = World::new(16);
        w.apply(&[
            register("a", "a1", "z1", true),
            register("a", "a2", "z1", true),
        ]);
        w
    }
}

fn register(service: &str, id: &str, zone: &str, healthy: bool) -> Command {
    let req = RegisterRequest {
        service: Some(service.into()),
        instance_id: Some(id.into()),
        host: Some("10.0.0.1".into()),
        port: Some(80.into()),
        zone: Some(zone.into()),
        ..Default::default()
    };
    let (spec, _) = req.validate().expect("valid");
    Command::Register {
        spec: Box::new(spec),
        want_healthy: healthy,
        limits: Limits::default(),
        revive: false,
        at: 1,
    }
}

#[test]
fn pre_encoded_bodies_equal_what_serde_would_write() {
    let mut w = World::new(16);
    w.apply(&[
        register("a", "a1", "z1", true),
        register("a", "a2", "z2", false),
        register("a", "a3", "z1", true),
    ]);
    let view = w.hub.slot("a").expect("slot").view();
    let expect = |keep: &dyn Fn(&Instance) -> bool| {
        let instances: Vec<Instance> = w
            .reg
            .service_instances("a")
            .filter(|i| keep(i))
            .map(|i| Instance::clone(i))
            .collect();
        let v = muster_proto::ServiceInstances {
            service: "a".into(),
            index: 3,
            instances,
        };
        serde_json::to_vec(&v).unwrap()
    };
    assert_eq!(
        view.healthy_body().as_ref(),
        expect(&|i| i.status == Status::Healthy).as_slice()
    );
    assert_eq!(
        view.body(|i| i.spec.zone().as_str() == "z1").as_ref(),
        expect(&|i| i.spec.zone().as_str() == "z1").as_slice()
    );
    let frame = view.snapshot_frame();
    let text = std::str::from_utf8(&frame).unwrap();
    assert!(
        text.starts_with("event: snapshot\nid: 3\ndata: {\"type\":\"snapshot\""),
        "{text}"
    );
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let parsed: muster_proto::WatchEvent =
        serde_json::from_str(data).expect("snapshot frame parses as WatchEvent");
    assert!(
        matches!(parsed, muster_proto::WatchEvent::Snapshot { index: 3, ref instances, .. } if instances.len() == 3)
    );
}

#[test]
fn unchanged_instances_are_not_encoded_again() {
    let mut w = World::two_healthy_in_a();
    let before = w.hub.slot("a").unwrap().view();
    // Nobody read or watched the service: nothing was encoded.
    assert!(before.json_at(0).is_none());
    before.healthy_body();
    w.apply(&[register("a", "a3", "z1", true)]);
    let after = w.hub.slot("a").unwrap().view();
    // The new view carries the bytes the old one encoded (the same allocation, not an equal
    // copy) for the instances that did not change; only the new one is to encode.
    let carried = after.carried_json();
    assert_eq!(carried.len(), 3);
    for (k, c) in carried.iter().take(2).enumerate() {
        assert_eq!(
            c.as_ref().map(|b| b.as_ptr()),
            before.json_at(k).map(|b| b.as_ptr())
        );
    }
    assert!(carried[2].is_none());
    // Unread views pass what they carry on.
    w.apply(&[register("a", "a4", "z1", true)]);
    let next = w.hub.slot("a").unwrap().view();
    assert_eq!(
        next.carried_json().iter().filter(|c| c.is_some()).count(),
        2
    );
}

#[test]
fn a_read_service_holds_its_json_once() {
    let mut w = World::two_healthy_in_a();
    let inside = |body: &[u8], json: &[u8]| {
        let range = body.as_ptr_range();
        range.contains(&json.as_ptr()) && json.len() < body.len()
    };
    let v1 = w.hub.slot("a").unwrap().view();
    let body1 = v1.healthy_body();
    for k in 0..2 {
        assert!(
            inside(&body1, &v1.json_at(k).unwrap()),
            "the JSON is a second copy"
        );
    }
    // a2 changes: the next answer takes over the JSON of the instance that stayed, and holds
    // it once too.
    w.apply(&[register("a", "a2", "z2", true)]);
    let v2 = w.hub.slot("a").unwrap().view();
    let body2 = v2.healthy_body();
    for k in 0..2 {
        assert!(
            inside(&body2, &v2.json_at(k).unwrap()),
            "the JSON is not the new answer's"
        );
    }
    // A filtered answer is built per request and shares nothing.
    let z2 = v2.body(|i| i.spec.zone().as_str() == "z2");
    assert!(!inside(&z2, &v2.json_at(1).unwrap()));
    // The history still answers a resuming watcher (the old version encoded again).
    let frames = match w.hub.slot("a").unwrap().since(0, u64::MAX, 0) {
        Since::Events(f) => f,
        Since::Compacted => panic!("history was compacted"),
    };
    assert_eq!(frames.len(), 3);
    assert!(
        std::str::from_utf8(&frames[1].1)
            .unwrap()
            .contains("\"zone\":\"z1\"")
    );
}

#[test]
fn a_change_moves_only_its_own_service_index() {
    let mut w = World::new(16);
    w.apply(&[register("a", "a1", "", true), register("b", "b1", "", true)]);
    let mut rx_b = w.hub.subscribe("b").unwrap().1;
    rx_b.borrow_and_update();
    let mut rx_a = w.hub.subscribe("a").unwrap().1;
    rx_a.borrow_and_update();
    w.apply(&[register("a", "a2", "", true)]);
    assert!(rx_a.has_changed().unwrap());
    assert_eq!(*rx_a.borrow(), 3);
    assert!(
        !rx_b.has_changed().unwrap(),
        "service b was woken by a change to a"
    );
}

#[test]
fn history_resumes_and_reports_compaction() {
    let mut w = World::new(2);
    w.apply(&[register("a", "a1", "", true)]);
    w.apply(&[register("a", "a2", "", true)]);
    w.apply(&[register("a", "a3", "", true)]);
    let slot = w.hub.slot("a").unwrap();
    match slot.since(1, u64::MAX, w.hub.floor()) {
        Since::Events(e) => assert_eq!(e.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [2, 3]),
        Since::Compacted => panic!("index 1 is still covered"),
    }
    assert!(
        matches!(slot.since(0, u64::MAX, w.hub.floor()), Since::Compacted),
        "event 1 was trimmed"
    );
    assert!(matches!(slot.since(3, u64::MAX, 0), Since::Events(ref e) if e.is_empty()));

    // A restore raises the floor: older resumes are compacted.
    w.hub.restored(&w.reg);
    assert_eq!(w.hub.floor(), 3);
    assert!(matches!(
        slot.since(2, u64::MAX, w.hub.floor()),
        Since::Compacted
    ));
    assert_eq!(slot.view().instances.len(), 3);
}

fn frame_ids(frames: &VecDeque<Bytes>) -> Vec<(String, u64)> {
    frames
        .iter()
        .map(|f| {
            let text = std::str::from_utf8(f).unwrap();
            let event = text
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap()
                .to_string();
            let id = text
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .unwrap()
                .parse()
                .unwrap();
            (event, id)
        })
        .collect()
}

#[test]
fn a_multi_service_watch_gets_events_in_index_order() {
    let mut w = World::new(16);
    w.apply(&[register("a", "a0", "", true), register("b", "b0", "", true)]);
    let mut cursors: Vec<Cursor> = ["a", "b"]
        .iter()
        .map(|s| {
            let (slot, rx) = w.hub.subscribe(s).unwrap();
            Cursor::resume_at(slot, rx, 3)
        })
        .collect();
    // One batch touching b, then a, then b: the hub handles services in name order, the
    // watcher must still see 3, 4, 5.
    w.apply(&[
        register("b", "b1", "", true),
        register("a", "a1", "", true),
        register("b", "b2", "", true),
    ]);
    let mut out = VecDeque::new();
    w.hub.catch_up(&mut cursors, &mut out);
    let ids: Vec<u64> = frame_ids(&out).into_iter().map(|(_, i)| i).collect();
    assert_eq!(ids, [3, 4, 5]);
    // Caught up: nothing more.
    out.clear();
    w.hub.catch_up(&mut cursors, &mut out);
    assert!(out.is_empty());
}

#[test]
fn a_resume_repeats_every_event_sharing_the_index() {
    let mut w = World::new(16);
    w.apply(&[
        register("a", "a1", "", true),
        register("a", "a2", "", true),
        register("a", "a3", "", true),
    ]);
    let expire = Command::Expire {
        instances: vec![("a1".into(), 1), ("a2".into(), 2), ("a3".into(), 3)],
        term: 0,
        at: 9,
    };
    w.apply(&[expire]);
    let (slot, rx) = w.hub.subscribe("a").unwrap();
    let mut cursors = vec![Cursor::resume_at(slot, rx, 4)];
    let mut out = VecDeque::new();
    w.hub.catch_up(&mut cursors, &mut out);
    assert_eq!(
        frame_ids(&out),
        [
            ("delete".into(), 4),
            ("delete".into(), 4),
            ("delete".into(), 4)
        ]
    );
}

#[test]
fn a_fresh_watch_gets_a_snapshot_and_a_lost_history_gets_compacted() {
    let mut w = World::new(1);
    w.apply(&[register("a", "a1", "", true)]);
    w.apply(&[register("a", "a2", "", true)]);
    let (slot, rx) = w.hub.subscribe("a").unwrap();
    let mut fresh = vec![Cursor::snapshot_first(slot.clone(), rx.clone())];
    let mut out = VecDeque::new();
    w.hub.catch_up(&mut fresh, &mut out);
    assert_eq!(frame_ids(&out), [("snapshot".into(), 2)]);
    let mut stale = vec![Cursor::resume_at(slot, rx, 1)];
    out.clear();
    w.hub.catch_up(&mut stale, &mut out);
    assert_eq!(
        frame_ids(&out),
        [("compacted".into(), 1), ("snapshot".into(), 2)]
    );
}

#[test]
fn slots_for_services_without_instances_are_bounded() {
    let w = World::new(4);
    let mut held = Vec::new();
    for i in 0..MAX_EMPTY_SLOTS {
        held.push(
            w.hub
                .subscribe(&format!("ghost-{i}"))
                .expect("under the bound"),
        );
    }
    assert!(
        w.hub.subscribe("one-more").is_err(),
        "every empty slot is watched: refuse"
    );
    drop(held);
    assert!(
        w.hub.subscribe("one-more").is_ok(),
        "unwatched empty slots are evicted to make room"
    );
}

#[test]
fn an_emptied_service_keeps_its_slot_with_the_removal_index() {
    let mut w = World::new(16);
    w.apply(&[register("a", "a1", "", true)]);
    w.apply(&[Command::Deregister {
        instance_id: "a1".into(),
        at: 2,
    }]);
    let view = w.hub.slot("a").unwrap().view();
    assert!(view.instances.is_empty());
    assert_eq!(view.index, 2);
    assert!(w.hub.views().is_empty(), "empty services are not listed");
}

mod incremental {
    use super::*;
    use proptest::prelude::*;

    fn arb_batch() -> impl Strategy<Value = Vec<Command>> {
        let id = prop::sample::select(vec!["i0", "i1", "i2", "i3", "i4"]);
        let svc = prop::sample::select(vec!["a", "b"]);
        let cmd = prop_oneof![
            (
                svc,
                id.clone(),
                any::<bool>(),
                prop::sample::select(vec!["z1", "z2"])
            )
                .prop_map(|(s, i, h, z)| register(s, i, z, h)),
            id.clone().prop_map(|i| Command::Deregister {
                instance_id: i.into(),
                at: 2
            }),
            (id.clone(), any::<bool>()).prop_map(|(i, d)| Command::SetStatus {
                instance_id: i.into(),
                status: if d { Status::Draining } else { Status::Healthy },
                reason: String::new(),
                at: 3,
            }),
            (id, any::<bool>()).prop_map(|(i, r)| Command::SetReadiness {
                instance_id: i.into(),
                ready: r,
                reason: "probe".into(),
                at: 4,
            }),
        ];
        prop::collection::vec(cmd, 1..6)
    }

    proptest! {
        /// Views updated from events alone always equal a rebuild from the registry.
        #[test]
        fn views_follow_the_registry(batches in prop::collection::vec(arb_batch(), 1..20)) {
            let mut w = World::new(64);
            for batch in &batches {
                w.apply(batch);
                for service in ["a", "b"] {
                    let expected: Vec<Instance> =
                        w.reg.service_instances(service).map(|i| Instance::clone(i)).collect();
                    let got: Vec<Instance> = w
                        .hub
                        .slot(service)
                        .map(|s| s.view().instances.iter().map(|i| Instance::clone(i)).collect())
                        .unwrap_or_default();
                    prop_assert_eq!(&got, &expected);
                    if let Some(slot) = w.hub.slot(service) {
                        let view = slot.view();
                        let mut counts = [0u64; 6];
                        for i in &expected {
                            counts[Status::ALL.iter().position(|s| *s == i.status).unwrap()] += 1;
                        }
                        prop_assert_eq!(view.statuses, counts);
                        view.healthy_body();
                        for (k, i) in view.instances.iter().enumerate() {
                            let encoded = serde_json::to_vec(&**i).unwrap();
                            prop_assert_eq!(view.json_at(k).unwrap(), encoded.as_slice());
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn an_event_frame_is_the_sse_frame_of_its_event() {
    let json = br#"{"instanceId":"a"}"#;
    let frame = event_frame("svc\"x", EventKind::Delete, 42, json);
    let data = br#"{"type":"delete","service":"svc\"x","index":42,"instance":{"instanceId":"a"}}"#;
    assert_eq!(frame, sse_frame("delete", 42, data));
}

#[test]
fn frames_shared_with_watchers_equal_frames_assembled_later() {
    // `watched` has a subscriber while the batches apply (its last batch's frames are kept
    // ready); `quiet` gets its first subscriber afterwards (every frame is assembled on demand).
    let expire = Command::Expire {
        instances: vec![("a1".into(), 1), ("a2".into(), 2), ("a3".into(), 3)],
        term: 0,
        at: 9,
    };
    let batches = [
        vec![register("a", "a1", "", true)],
        vec![
            register("a", "a2", "", true),
            register("a", "a3", "", false),
        ],
        vec![expire],
    ];
    let mut watched = World::new(16);
    let early = watched.hub.subscribe("a").unwrap();
    let mut quiet = World::new(16);
    for batch in &batches {
        watched.apply(batch);
        quiet.apply(batch);
    }
    let frames = |w: &World, sub: (Arc<Slot>, watch::Receiver<u64>)| {
        let mut cursors = vec![Cursor::resume_at(sub.0, sub.1, 2)];
        let mut out = VecDeque::new();
        w.hub.catch_up(&mut cursors, &mut out);
        out
    };
    let late = quiet.hub.subscribe("a").unwrap();
    let shared = frames(&watched, early);
    assert_eq!(shared, frames(&quiet, late));
    assert_eq!(
        shared.len(),
        5,
        "two registrations at 2-3, three deletes at 4"
    );
    let deleted: Vec<bool> = ["a1", "a2", "a3"]
        .iter()
        .zip(shared.iter().skip(2))
        .map(|(id, f)| String::from_utf8_lossy(f).contains(&format!("\"instanceId\":\"{id}\"")))
        .collect();
    assert_eq!(deleted, [true, true, true], "deletes in order");
}

#[test]
fn a_late_answer_of_an_old_view_pins_nothing() {
    let mut w = World::two_healthy_in_a();
    let inside = |body: &[u8], json: &[u8]| body.as_ptr_range().contains(&json.as_ptr());
    // A reader took the view, then a change replaced it before that reader built its answer.
    let v1 = w.hub.slot("a").unwrap().view();
    w.apply(&[register("a", "a2", "z2", true)]);
    let v2 = w.hub.slot("a").unwrap().view();
    let body2 = v2.healthy_body();
    let body1 = v1.healthy_body();
    assert_ne!(body1, body2);
    // The late answer is the old view's alone: the newer view keeps pointing into its own.
    assert!(inside(&body2, &v2.json_at(0).unwrap()));
    assert!(!inside(&body1, &v2.json_at(0).unwrap()));
    // The history keeps instances, not JSON: dropping the old view frees its answer.
    let weak = std::sync::Arc::downgrade(&v1);
    drop(v1);
    assert!(weak.upgrade().is_none());
}

#[test]
fn a_views_protobuf_messages_are_encoded_once_in_order_and_per_view() {
    let mut w = World::two_healthy_in_a();
    let calls = std::cell::Cell::new(0);
    // A stand-in encoder: the instance's id and zone, so each slice says whose it is.
    let encode = |i: &Instance, buf: &mut BytesMut| {
        calls.set(calls.get() + 1);
        buf.put_slice(format!("{}@{};", i.spec.instance_id, i.spec.zone()).as_bytes());
    };
    let v1 = w.hub.slot("a").unwrap().view();
    let first: Vec<Bytes> = v1.protobuf(encode).collect();
    assert_eq!(first, [&b"a1@z1;"[..], &b"a2@z1;"[..]]);
    assert_eq!(calls.get(), 2);
    // Read again: the same bytes, not encoded again.
    let again: Vec<Bytes> = v1.protobuf(encode).collect();
    assert_eq!(again[1].as_ptr(), first[1].as_ptr());
    assert_eq!(calls.get(), 2);
    // A change makes a new view, which encodes its own instances.
    w.apply(&[register("a", "a2", "z2", true)]);
    let v2 = w.hub.slot("a").unwrap().view();
    let second: Vec<Bytes> = v2.protobuf(encode).collect();
    assert_eq!(second, [&b"a1@z1;"[..], &b"a2@z2;"[..]]);
    assert_eq!(calls.get(), 4);
    // The old view still answers with what it was.
    assert_eq!(v1.protobuf(encode).nth(1).unwrap(), &b"a2@z1;"[..]);
}

#[test]
fn a_span_keeps_its_range_and_never_reaches_past_the_buffer() {
    for range in [0..0, 0..382, 4096..4478, (1 << 39)..(1 << 39) + 70_000] {
        assert_eq!(Span::new(range.clone()).range(usize::MAX), range);
    }
    // A span beyond the buffer (none is built so) yields what lies within it.
    assert_eq!(Span::new(100..300).range(200), 100..200);
    assert_eq!(Span::new(300..400).range(200), 200..200);
}
