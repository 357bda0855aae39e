//! Blocking queries: woken by their own service's change, not by another's.

use std::time::Duration;

use serde_json::json;

use crate::harness::Muster;

#[tokio::test]
async fn a_change_wakes_its_service_and_only_its_service() {
    let dir = tempfile::tempdir().unwrap();
    let m = std::sync::Arc::new(Muster::start_in(dir.path(), &[]));
    m.register("svc-a", "a1", json!({})).await;
    m.register("svc-b", "b1", json!({})).await;
    let (_, a) = m.get("/v1/services/svc-a").await;
    let (_, b) = m.get("/v1/services/svc-b").await;
    let a_index = a["index"].as_u64().unwrap();
    let b_index = b["index"].as_u64().unwrap();

    let ma = m.clone();
    let wait_a = tokio::spawn(async move {
        ma.get(&format!("/v1/services/svc-a?index={a_index}&wait=30s"))
            .await
    });
    let mb = m.clone();
    let wait_b = tokio::spawn(async move {
        mb.get(&format!("/v1/services/svc-b?index={b_index}&wait=3s"))
            .await
    });
    // Both are parked on their own index before the write.
    for _ in 0..200 {
        let text = m.metrics().await;
        if text.contains("muster_blocking_queries 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let write_index = m.register("svc-a", "a2", json!({})).await;
    let (status, a) = tokio::time::timeout(Duration::from_secs(10), wait_a)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        a["index"].as_u64().unwrap(),
        write_index,
        "woken with the new index"
    );
    assert_eq!(a["instances"].as_array().unwrap().len(), 2);
    assert!(
        !wait_b.is_finished(),
        "svc-b was woken by a change to svc-a"
    );
    let (status, b) = wait_b.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        b["index"].as_u64().unwrap(),
        b_index,
        "svc-b unchanged when its wait ran out"
    );
}

#[tokio::test]
async fn a_blocking_query_on_an_unknown_service_wakes_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let m = std::sync::Arc::new(Muster::start_in(dir.path(), &[]));
    m.register("other", "o1", json!({})).await;
    let (_, v) = m.get("/v1/services/newcomer").await;
    let index = v["index"].as_u64().unwrap();
    assert!(index > 0, "an unknown service answers the registry index");
    let mc = m.clone();
    let waiter = tokio::spawn(async move {
        mc.get(&format!("/v1/services/newcomer?index={index}&wait=30s"))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let created = m.register("newcomer", "n1", json!({})).await;
    let (_, v) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v["index"].as_u64().unwrap(), created);
    assert_eq!(v["instances"][0]["instanceId"], "n1");
}
