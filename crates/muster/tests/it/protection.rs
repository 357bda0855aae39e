//! Mass-expiry protection: half the fleet going silent at once is not expired while protection
//! holds; a scale-down does not trip it; it ends by itself.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::Muster;

async fn fleet(m: &Muster, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("pay-{i}");
        m.register("pay", &id, json!({"leaseTtl": "2s"})).await;
        ids.push(id);
    }
    ids
}

async fn beat(m: &Muster, ids: &[String]) -> Value {
    let (status, v) = m
        .post("/v1/heartbeats", json!({ "instanceIds": ids }))
        .await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn protection(m: &Muster) -> Value {
    m.get("/v1/leases").await.1["protection"].clone()
}

#[tokio::test]
async fn half_the_fleet_going_silent_is_held_then_released() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let ids = fleet(&m, 20).await;
    let mut sse = m.watch("service=pay").await;
    assert_eq!(sse.next().await.event, "snapshot");
    // Half the instances stop heartbeating (a cut on the registry's side); the rest go on.
    let mut active = None;
    for _ in 0..20 {
        beat(&m, &ids[10..]).await;
        let p = protection(&m).await;
        if p["active"] == true {
            active = Some(p);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let p = active.expect("protection switched on");
    assert_eq!(p["registryHeld"], true, "{p}");
    assert!(
        p["since"].is_string() && p["reason"].as_str().unwrap().contains("went silent"),
        "{p}"
    );
    assert!(m.metrics().await.contains("muster_expiry_protection 1"));
    assert!(
        sse.next_within(Duration::from_millis(100)).await.is_none(),
        "nothing was expired while protection held"
    );

    // They come back: their lapsed leases renew, and protection ends by itself.
    let v = beat(&m, &ids).await;
    assert!(
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["ok"] == true),
        "{v}"
    );
    let mut off = false;
    for _ in 0..40 {
        beat(&m, &ids).await;
        if protection(&m).await["active"] == false {
            off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(off, "protection ended when renewals resumed");
    let (_, list) = m.get("/v1/services/pay").await;
    assert_eq!(
        list["instances"].as_array().unwrap().len(),
        20,
        "no instance was expired"
    );
    m.stop();
}

#[tokio::test]
async fn a_scale_down_does_not_trip_protection() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let ids = fleet(&m, 20).await;
    for id in &ids[..10] {
        assert_eq!(m.delete(&format!("/v1/instances/{id}")).await.0, 200);
    }
    for _ in 0..12 {
        beat(&m, &ids[10..]).await;
        assert_eq!(protection(&m).await["active"], false);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, list) = m.get("/v1/services/pay").await;
    assert_eq!(list["instances"].as_array().unwrap().len(), 10);
    m.stop();
}

#[tokio::test]
async fn protection_ends_at_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &["--expiry-protection-max", "1s"]);
    let ids = fleet(&m, 20).await;
    let mut sse = m.watch("service=pay").await;
    assert_eq!(sse.next().await.event, "snapshot");
    // The silent half is held for at most a second past the start of the episode, then expired.
    let mut expired = std::collections::BTreeSet::new();
    for _ in 0..40 {
        beat(&m, &ids[10..]).await;
        while let Some(e) = sse.next_within(Duration::from_millis(200)).await {
            if e.event == "delete" {
                expired.insert(
                    e.data["instance"]["instanceId"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
        }
        if expired.len() == 10 {
            break;
        }
    }
    let silent: std::collections::BTreeSet<String> = ids[..10].iter().cloned().collect();
    assert_eq!(
        expired, silent,
        "exactly the silent half expired once the bound passed"
    );
    m.stop();
}
