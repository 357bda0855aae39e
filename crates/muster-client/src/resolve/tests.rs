use super::*;
use muster_core::Status;

fn instance(id: &str, status: Status) -> Instance {
    crate::testing::with_status(id, status)
}

/// A resolver's state under consistent hashing.
fn consistent() -> Shared {
    let config = ResolverConfig {
        view: ViewConfig {
            policy: crate::Policy::ConsistentHash,
            ..ViewConfig::default()
        },
        ..ResolverConfig::default()
    };
    Shared::new("inventory-api", config, State::default())
}

fn shared() -> Shared {
    Shared::new("inventory-api", ResolverConfig::default(), State::default())
}

fn ids(s: &Shared) -> Vec<String> {
    let mut ids: Vec<String> = s
        .view()
        .endpoints()
        .map(|e| e.instance().spec.instance_id.to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn the_index_never_goes_backwards_unless_the_server_said_compacted() {
    let s = shared();
    s.apply_snapshot(vec![instance("a", Status::Healthy)], 10);
    s.apply_change(8, instance("b", Status::Healthy), false);
    assert_eq!(ids(&s), ["a"], "an older event is ignored");
    s.apply_change(10, instance("b", Status::Healthy), false);
    assert_eq!(
        ids(&s),
        ["a", "b"],
        "an event at the index is a (harmless) repeat"
    );
    s.apply_snapshot(vec![instance("c", Status::Healthy)], 9);
    assert_eq!(ids(&s), ["a", "b"], "an older snapshot is ignored");
    s.state().accept_older = true; // compacted
    s.apply_snapshot(vec![instance("c", Status::Healthy)], 9);
    assert_eq!(ids(&s), ["c"]);
    assert_eq!(s.state().index, 9);
}

#[test]
fn an_update_that_would_empty_the_view_is_held_back() {
    let s = shared();
    s.apply_snapshot(
        vec![
            instance("a", Status::Healthy),
            instance("b", Status::Healthy),
        ],
        5,
    );
    s.apply_change(6, instance("a", Status::Draining), false);
    assert_eq!(ids(&s), ["b"], "one going is fine");
    s.apply_change(7, instance("b", Status::Expired), true);
    assert_eq!(ids(&s), ["b"], "the last one going is held back");
    assert!(s.state().held_since.is_some());
    // Something healthy again: published, the hold is over.
    s.apply_change(8, instance("c", Status::Healthy), false);
    assert_eq!(ids(&s), ["c"]);
    assert!(s.state().held_since.is_none());
    // Confirmed empty: published.
    s.apply_change(9, instance("c", Status::Removed), true);
    assert_eq!(ids(&s), ["c"]);
    let mut state = s.state();
    s.publish(&mut state, true);
    drop(state);
    assert!(s.view().is_empty());
}

#[test]
fn the_cache_file_round_trips_and_a_restart_serves_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory-api.json");
    let config = ResolverConfig {
        cache_file: Some(path.clone()),
        ..ResolverConfig::default()
    };
    let s = Shared::new("inventory-api", config.clone(), State::default());
    s.apply_snapshot(vec![instance("a", Status::Healthy)], 42);
    let rt = crate::testing::runtime();
    rt.block_on(s.flush());
    rt.block_on(async {
        // Nothing listens on port 1: only the file can answer.
        let config = ResolverConfig {
            servers: vec!["http://127.0.0.1:1".into()],
            ..config
        };
        let r = Resolver::start("inventory-api", config).unwrap();
        let status = r.status();
        assert_eq!((status.index, status.source), (42, Source::Disk));
        let view = r.view();
        let pick = view.pick(None).expect("a pick from the cache file");
        assert_eq!(&*pick.instance().spec.instance_id, "a");
        // A cache file for another service is ignored.
        let other = Resolver::start(
            "orders",
            ResolverConfig {
                servers: vec!["http://127.0.0.1:1".into()],
                cache_file: Some(path.clone()),
                ..ResolverConfig::default()
            },
        )
        .unwrap();
        assert_eq!(other.status().source, Source::None);
        assert!(other.view().is_empty());
    });
}

#[test]
fn bad_configurations_are_refused() {
    let rt = crate::testing::runtime();
    rt.block_on(async {
        let none = ResolverConfig {
            servers: vec![],
            ..ResolverConfig::default()
        };
        assert!(matches!(
            Resolver::start("s", none),
            Err(ResolveError::NoServers)
        ));
        let bad = ResolverConfig {
            servers: vec!["10.0.0.1:7070".into()],
            ..ResolverConfig::default()
        };
        assert!(matches!(
            Resolver::start("s", bad),
            Err(ResolveError::BadServer(_))
        ));
    });
}

#[test]
fn a_silent_watch_is_given_up_after_the_idle_timeout() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Answers the watch with headers, then says nothing more.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        let server = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = sock.read(&mut buf).await;
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                    let _ = sock.write_all(head.as_bytes()).await;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                });
            }
        });
        let r = Resolver::start(
            "inventory-api",
            ResolverConfig {
                servers: vec![format!("http://{addr}")],
                // Longer than the resolver's 1 s cache-flush tick, which must not reset it.
                idle_timeout: Duration::from_millis(1_200),
                backoff: Backoff {
                    base: Duration::from_millis(10),
                    max: Duration::from_millis(10),
                },
                ..ResolverConfig::default()
            },
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while accepted.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            accepted.load(Ordering::SeqCst) >= 2,
            "the silent watch was given up and tried again"
        );
        drop(r);
        server.abort();
    });
}

#[test]
fn a_membership_change_under_consistent_hashing_publishes_at_once_then_the_fresh_ring() {
    let s = consistent();
    s.apply_snapshot(
        (0..5)
            .map(|i| instance(&format!("i{i}"), Status::Healthy))
            .collect(),
        5,
    );
    let rt = crate::testing::runtime();
    rt.block_on(s.rebuild_ring());
    assert!(!s.view().has_stale_ring());
    s.apply_change(6, instance("i2", Status::Removed), true);
    assert_eq!(s.view().len(), 4, "published at once");
    assert!(s.view().has_stale_ring());
    rt.block_on(s.rebuild_ring());
    assert!(!s.view().has_stale_ring());
    assert_eq!(s.view().len(), 4);
}

#[test]
fn a_ring_rebuild_does_not_publish_an_update_held_back_as_emptying() {
    let s = consistent();
    let rt = crate::testing::runtime();
    s.apply_snapshot(
        vec![
            instance("a", Status::Healthy),
            instance("b", Status::Healthy),
        ],
        5,
    );
    rt.block_on(s.rebuild_ring());
    s.apply_change(6, instance("a", Status::Removed), true); // on the earlier ring now
    s.apply_change(7, instance("b", Status::Removed), true); // would empty it: held
    assert_eq!(s.view().len(), 1);
    rt.block_on(s.rebuild_ring());
    assert_eq!(s.view().len(), 1, "the hold stands");
    assert!(!s.view().has_stale_ring());
}
