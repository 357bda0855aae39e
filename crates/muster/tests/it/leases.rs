//! Leases: a lapse expires through the log; heartbeats keep an instance; a lapsed lease cannot be
//! renewed.

use std::time::Duration;

use serde_json::json;

use crate::harness::Muster;

#[tokio::test]
async fn silent_instances_expire_and_heartbeating_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let m = std::sync::Arc::new(Muster::start_in(dir.path(), &[]));
    m.register("pay", "silent", json!({"leaseTtl": "1s"})).await;
    m.register("pay", "alive", json!({"leaseTtl": "1s"})).await;
    let mut sse = m.watch("service=pay").await;
    assert_eq!(sse.next().await.event, "snapshot");

    // Heartbeat `alive` every 250 ms until `silent` is gone.
    let mh = m.clone();
    let beating = tokio::spawn(async move {
        loop {
            let (status, v) = mh.post("/v1/instances/alive/heartbeat", json!({})).await;
            assert_eq!(status, 200, "{v}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let e = sse.next().await;
    beating.abort();
    assert_eq!(e.event, "delete");
    assert_eq!(e.data["instance"]["instanceId"], "silent");
    assert_eq!(e.data["instance"]["status"], "EXPIRED");
    assert!(
        e.data["instance"]["statusReason"]
            .as_str()
            .unwrap()
            .contains("lease expired")
    );
    assert_eq!(
        m.get("/v1/instances/alive").await.0,
        200,
        "the heartbeating instance outlived the silent one"
    );

    // Once its lease has lapsed, a heartbeat is refused and the instance must re-register.
    let e = sse.next().await;
    assert_eq!(
        (e.event.as_str(), e.data["instance"]["instanceId"].as_str()),
        ("delete", Some("alive"))
    );
    let (status, v) = m.post("/v1/instances/alive/heartbeat", json!({})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("unknown_instance"))
    );
    m.register("pay", "alive", json!({"leaseTtl": "1s"})).await;
    assert_eq!(
        m.post("/v1/instances/alive/heartbeat", json!({})).await.0,
        200
    );

    let text = m.metrics().await;
    assert!(text.contains("muster_expirations_total 2"), "{text}");
}

#[tokio::test]
async fn a_reregistered_ttl_holds_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    m.register("pay", "p1", json!({"leaseTtl": "1s"})).await;
    // The re-registration changes the TTL: from now on the lease is an hour long.
    m.register("pay", "p1", json!({"leaseTtl": "1h"})).await;
    let (addr, extra) = (m.addr(), m.extra());
    m.stop();
    let m = Muster::restart_after(dir.path(), &addr, &extra);
    let mut sse = m.watch("service=pay").await;
    assert_eq!(sse.next().await.event, "snapshot");
    // Replaying the log must leave the lease at an hour, not the first registration's second.
    assert!(
        sse.next_within(Duration::from_millis(1800)).await.is_none(),
        "the instance expired on its old TTL"
    );
    assert_eq!(m.post("/v1/instances/p1/heartbeat", json!({})).await.0, 200);
    m.stop();
}
