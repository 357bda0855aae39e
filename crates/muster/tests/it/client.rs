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
                .map(|p| p.instance().spec.instance_id.to_string())
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

fn registration(m: &Muster, id: &str, ttl: &str) -> muster_client::RegistrationConfig {
    let request: muster_proto::RegisterRequest = serde_json::from_value(json!({
        "service": "payments", "instanceId": id, "host": "127.0.0.1", "port": 9000,
        "leaseTtl": ttl
    }))
    .unwrap();
    muster_client::RegistrationConfig {
        drain_grace: Duration::from_millis(300),
        ..muster_client::RegistrationConfig::new(vec![m.url("")], request)
    }
}

async fn status_of(m: &Muster, id: &str) -> (u16, String) {
    let (code, v) = m.get(&format!("/v1/instances/{id}")).await;
    (code, v["status"].as_str().unwrap_or("").to_string())
}

async fn until_status(m: &Muster, id: &str, want: &str) {
    for _ in 0..200 {
        if status_of(m, id).await.1 == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{id} never became {want}: {:?}", status_of(m, id).await);
}

#[tokio::test]
async fn a_registration_heartbeats_comes_back_reports_readiness_and_drains() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let reg = muster_client::Registration::register(registration(&m, "pay-1", "1s"))
        .await
        .unwrap();
    assert_eq!(status_of(&m, "pay-1").await, (200, "STARTING".into()));
    reg.set_ready(true);
    until_status(&m, "pay-1", "HEALTHY").await;
    // Three TTLs: the heartbeats (every third of it) keep it alive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_of(&m, "pay-1").await, (200, "HEALTHY".into()));
    assert!(reg.last_heartbeat().is_some());

    // The server forgets it (an operator, a lost data directory): it registers again, and says
    // it is ready again.
    assert_eq!(m.delete("/v1/instances/pay-1").await.0, 200);
    until_status(&m, "pay-1", "HEALTHY").await;

    reg.set_ready(false);
    until_status(&m, "pay-1", "UNHEALTHY").await;

    // Shutdown: DRAINING first, then gone.
    let mut watch = m.watch("service=payments").await;
    reg.shutdown().await.unwrap();
    let mut seen = Vec::new();
    while let Some(f) = watch.next_within(Duration::from_secs(3)).await {
        let status = f.data["instance"]["status"]
            .as_str()
            .unwrap_or("")
            .to_string();
        seen.push(status.clone());
        if status == "REMOVED" {
            break;
        }
    }
    assert!(
        seen.ends_with(&["DRAINING".into(), "REMOVED".into()]),
        "{seen:?}"
    );
    assert_eq!(status_of(&m, "pay-1").await.0, 404);
}

#[tokio::test]
async fn registration_errors_say_whether_to_retry() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let mut bad = registration(&m, "pay-2", "1s");
    bad.request.port = Some(0.into());
    let e = muster_client::Registration::register(bad)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(e, muster_client::RegistrationError::Invalid(_)),
        "{e}"
    );
    assert!(!e.is_retryable());
    let mut nowhere = registration(&m, "pay-3", "1s");
    nowhere.servers = vec![format!(
        "http://127.0.0.1:{}",
        crate::harness::free_ports(1)[0]
    )];
    let e = muster_client::Registration::register(nowhere)
        .await
        .err()
        .expect("unreachable");
    assert!(e.is_retryable(), "{e}");
    // Another service holds the id: the server refuses, not retryable.
    m.register("other", "pay-4", json!({})).await;
    let e = muster_client::Registration::register(registration(&m, "pay-4", "1s"))
        .await
        .err()
        .expect("conflict");
    assert!(
        matches!(&e, muster_client::RegistrationError::Refused { code, .. } if code == "conflict"),
        "{e}"
    );
}

#[tokio::test]
async fn http_get_retries_a_failing_endpoint_on_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let (bad, good) = (
        crate::harness::Target::http(false, false).await,
        crate::harness::Target::http(true, false).await,
    );
    for (id, port) in [("bad", bad.port), ("good", good.port)] {
        m.post(
            "/v1/instances",
            json!({"service": "stock", "instanceId": id, "host": "127.0.0.1", "port": port,
                   "status": "HEALTHY"}),
        )
        .await;
    }
    let r = Resolver::start(
        "stock",
        ResolverConfig {
            servers: vec![m.url("")],
            ..ResolverConfig::default()
        },
    )
    .unwrap();
    assert!(r.ready(Duration::from_secs(10)).await);
    until_picks(&r, &["bad", "good"]).await;
    let policy = muster_client::CallPolicy {
        max_attempts: 4,
        ..muster_client::CallPolicy::default()
    };
    let http = reqwest::Client::new();
    for _ in 0..20 {
        let answer = muster_client::http_get(&r, &policy, &http, "/stock/42")
            .await
            .expect("an answer");
        assert_eq!(answer.status(), 200);
    }
    assert!(good.last_request().starts_with("GET /stock/42 "));
}

fn is_discover<D: tower::discover::Discover>(d: D) -> D {
    d
}

#[tokio::test]
async fn discover_and_a_balanced_tonic_channel_follow_the_resolver() {
    use futures_util::StreamExt;
    use tower::discover::Change;

    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let targets = [
        crate::harness::GrpcTarget::start().await,
        crate::harness::GrpcTarget::start().await,
    ];
    for (i, t) in targets.iter().enumerate() {
        t.set("", true).await;
        m.post(
            "/v1/instances",
            json!({"service": "grpc-svc", "instanceId": format!("g{i}"), "host": "127.0.0.1",
                   "port": t.port, "status": "HEALTHY"}),
        )
        .await;
    }
    let r = Resolver::start(
        "grpc-svc",
        ResolverConfig {
            servers: vec![m.url("")],
            ..ResolverConfig::default()
        },
    )
    .unwrap();
    assert!(r.ready(Duration::from_secs(10)).await);
    until_picks(&r, &["g0", "g1"]).await;

    let changes = is_discover(muster_client::discover(&r, |i| i.spec.port));
    tokio::pin!(changes);
    let mut inserted = BTreeSet::new();
    for _ in 0..2 {
        let change = tokio::time::timeout(Duration::from_secs(5), changes.next())
            .await
            .expect("a change in time")
            .expect("the stream goes on")
            .unwrap();
        match change {
            Change::Insert(id, port) => {
                assert!(targets.iter().any(|t| t.port == port));
                inserted.insert(id);
            }
            Change::Remove(id) => panic!("unexpected removal of {id}"),
        }
    }
    assert_eq!(
        inserted,
        BTreeSet::from(["g0".to_string(), "g1".to_string()])
    );

    // A balanced tonic channel over the same endpoints answers health checks.
    let channel = muster_client::tonic_channel(&r);
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for _ in 0..10 {
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            health.check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            }),
        )
        .await
        .expect("in time")
        .expect("an answer");
        assert_eq!(answer.into_inner().status, 1, "SERVING");
    }

    // One leaves: the stream says so.
    assert_eq!(m.delete("/v1/instances/g1").await.0, 200);
    let change = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .expect("a change in time")
        .expect("the stream goes on")
        .unwrap();
    assert!(matches!(change, Change::Remove(id) if id == "g1"));
    // The resolver gone, the stream ends.
    drop(r);
    let end = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .expect("ends in time");
    assert!(end.is_none());
}
