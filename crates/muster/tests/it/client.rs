//! The client library against a real server: the resolver follows the service, fails over
//! between addresses, and keeps routing from its last known good view when the server is gone,
//! also after the client restarts with its cache file.

use std::collections::BTreeSet;
use std::time::Duration;

use muster_client::{Locality, Resolver, ResolverConfig, Source, ViewConfig};
use serde_json::json;

use crate::harness::Muster;

fn picked(r: &Resolver, n: usize) -> BTreeSet<String> {
    let view = r.view();
    (0..n)
        .filter_map(|_| {
            view.pick(None)
                .map(|p| p.instance().spec.instance_id.clone())
        })
        .collect()
}

/// Waits (bounded) until picks cover exactly `want`.
async fn until_picks(r: &Resolver, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    for _ in 0..200 {
        if picked(r, 200) == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("picks never became {want:?}: {:?}", picked(r, 200));
}

#[tokio::test]
async fn the_resolver_follows_fails_over_and_routes_from_last_known_good() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    for (id, zone) in [("inv-1", "a1"), ("inv-2", "a1"), ("inv-3", "a2")] {
        m.register(
            "inventory-api",
            id,
            json!({"zone": zone, "region": "a", "status": "HEALTHY"}),
        )
        .await;
    }
    // The first address answers nothing: the resolver fails over to the second.
    let dead = format!("http://127.0.0.1:{}", crate::harness::free_ports(1)[0]);
    let config = ResolverConfig {
        servers: vec![dead, m.url("")],
        view: ViewConfig {
            locality: Locality {
                zone: "a1".into(),
                region: "a".into(),
                cross_region: false,
            },
            ..ViewConfig::default()
        },
        cache_file: Some(cache.path().join("inventory-api.json")),
        empty_hold: Duration::from_millis(500),
        ..ResolverConfig::default()
    };
    let r = Resolver::start("inventory-api", config.clone()).unwrap();
    assert!(r.ready(Duration::from_secs(10)).await, "a server answered");
    until_picks(&r, &["inv-1", "inv-2"]).await; // same zone only

    // Changes arrive through the watch: the zone drained → the rest of the region.
    for id in ["inv-1", "inv-2"] {
        let (code, _) = m
            .put(
                &format!("/v1/instances/{id}/status"),
                json!({"status": "DRAINING"}),
            )
            .await;
        assert_eq!(code, 200);
    }
    until_picks(&r, &["inv-3"]).await;
    let index = r.status().index;
    assert!(index > 0);

    // The server dies: picks go on from what the resolver holds.
    m.kill9();
    for _ in 0..100 {
        if !r.status().connected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!r.status().connected);
    assert_eq!(picked(&r, 100), BTreeSet::from(["inv-3".to_string()]));
    // The cache file has caught up (it is written at most once a second).
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    drop(r);

    // The caller restarts while the control plane is still down: it routes from the file.
    let r = Resolver::start("inventory-api", config.clone()).unwrap();
    let status = r.status();
    assert_eq!((status.source, status.index), (Source::Disk, index));
    assert_eq!(picked(&r, 100), BTreeSet::from(["inv-3".to_string()]));

    // The server comes back on its data directory: the resolver reconnects and follows again.
    let m = Muster::restart_after(dir.path(), &m_addr(&config), &[]);
    assert!(r.ready(Duration::from_secs(15)).await);
    m.register(
        "inventory-api",
        "inv-4",
        json!({"zone": "a1", "region": "a", "status": "HEALTHY"}),
    )
    .await;
    until_picks(&r, &["inv-4"]).await;
}

/// The live server's address from the resolver's list (the second entry).
fn m_addr(config: &ResolverConfig) -> String {
    config.servers[1].trim_start_matches("http://").to_string()
}

#[tokio::test]
async fn an_emptying_update_is_held_until_a_fresh_lookup_confirms_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    m.register("orders", "o-1", json!({"status": "HEALTHY"}))
        .await;
    let config = ResolverConfig {
        servers: vec![m.url("")],
        empty_hold: Duration::from_millis(300),
        ..ResolverConfig::default()
    };
    let r = Resolver::start("orders", config).unwrap();
    assert!(r.ready(Duration::from_secs(10)).await);
    until_picks(&r, &["o-1"]).await;
    assert_eq!(m.delete("/v1/instances/o-1").await.0, 200);
    // Held: still routable for a while, and the resolver says so.
    for _ in 0..100 {
        if r.status().holding_empty {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(r.status().holding_empty);
    assert_eq!(picked(&r, 10).len(), 1);
    // Confirmed by a lookup: empty.
    for _ in 0..200 {
        if r.view().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(r.view().is_empty());
    assert!(!r.status().holding_empty);
}
