//! Every endpoint of API v1, on one server.

use serde_json::json;

use crate::harness::Muster;

const DESIGN_EXAMPLE: &str = r#"{"service":"inventory-api","instanceId":"inventory-api-7f9c8d4f7d-h2kgw","host":"10.42.6.18","port":8080,"zone":"ap-south-1a","region":"ap-south-1","version":"2026.04.18.2","weight":100,"healthEndpoint":"/health/ready"}"#;

#[tokio::test]
async fn register_heartbeat_status_lookup_deregister() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);

    // The design's payload, as is: created, STARTING until it reports ready.
    let (status, v) = m
        .post(
            "/v1/instances",
            serde_json::from_str(DESIGN_EXAMPLE).unwrap(),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["instance"]["status"], "STARTING");
    assert_eq!(v["instance"]["check"]["target"], "/health/ready");
    let id = "inventory-api-7f9c8d4f7d-h2kgw";
    let (_, list) = m.get("/v1/services/inventory-api").await;
    assert_eq!(
        list["instances"].as_array().unwrap().len(),
        0,
        "STARTING is not discoverable"
    );

    // Re-registering is an idempotent upsert: 200, same create index.
    let (status, again) = m
        .post(
            "/v1/instances",
            serde_json::from_str(DESIGN_EXAMPLE).unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        again["instance"]["createIndex"],
        v["instance"]["createIndex"]
    );

    // Its readiness check is probed by the server (and 10.42.6.18 does not answer here): a
    // heartbeat claiming readiness does not put it in rotation.
    m.post(
        &format!("/v1/instances/{id}/heartbeat"),
        json!({"ready": true}),
    )
    .await;
    let (_, one) = m.get(&format!("/v1/instances/{id}")).await;
    assert_eq!(one["status"], "STARTING");

    // Re-registered with a TTL check (readiness from heartbeats), it keeps its identity.
    let mut ttl: serde_json::Value = serde_json::from_str(DESIGN_EXAMPLE).unwrap();
    ttl.as_object_mut().unwrap().remove("healthEndpoint");
    ttl["check"] = json!({"type": "ttl"});
    let (status, v2) = m.post("/v1/instances", ttl).await;
    assert_eq!(
        (status, &v2["instance"]["createIndex"]),
        (200, &v["instance"]["createIndex"])
    );

    // Heartbeat reporting ready: HEALTHY, and discoverable.
    let (status, hb) = m
        .post(
            &format!("/v1/instances/{id}/heartbeat"),
            json!({"ready": true}),
        )
        .await;
    assert_eq!(status, 200, "{hb}");
    assert!(hb["leaseExpiresAt"].as_str().unwrap().ends_with('Z'));
    let (status, one) = m.get(&format!("/v1/instances/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(one["status"], "HEALTHY");
    assert_eq!(one["statusReason"], "heartbeat reported ready");
    assert!(
        one["leaseExpiresAt"].is_string() && one["lastHeartbeatAt"].is_string(),
        "{one}"
    );
    let resp = m
        .http
        .get(m.url("/v1/services/inventory-api"))
        .send()
        .await
        .unwrap();
    let header_index: u64 = resp.headers()["x-muster-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(resp.headers()["x-muster-known-leader"], "true");
    let list: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(list["instances"][0]["instanceId"], id);
    assert_eq!(list["index"].as_u64().unwrap(), header_index);

    // A heartbeat without a body renews only.
    let resp = m
        .http
        .post(m.url(&format!("/v1/instances/{id}/heartbeat")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // Drain: out of the default lookup, still listed with status=any; then back.
    let (status, d) = m
        .put(
            &format!("/v1/instances/{id}/status"),
            json!({"status": "DRAINING", "reason": "deploy 42"}),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["instance"]["statusReason"], "deploy 42");
    let (_, list) = m.get("/v1/services/inventory-api").await;
    assert!(list["instances"].as_array().unwrap().is_empty());
    let (_, list) = m.get("/v1/services/inventory-api?status=any").await;
    assert_eq!(list["instances"][0]["status"], "DRAINING");
    let (_, list) = m.get("/v1/services/inventory-api?status=DRAINING").await;
    assert_eq!(list["instances"].as_array().unwrap().len(), 1);
    let (status, u) = m
        .put(
            &format!("/v1/instances/{id}/status"),
            json!({"status": "HEALTHY"}),
        )
        .await;
    assert_eq!(
        (status, u["instance"]["status"].as_str()),
        (200, Some("HEALTHY"))
    );

    // Not ready again: UNHEALTHY, out of rotation, lease alive.
    m.post(
        &format!("/v1/instances/{id}/heartbeat"),
        json!({"ready": false}),
    )
    .await;
    let (_, one) = m.get(&format!("/v1/instances/{id}")).await;
    assert_eq!(
        (one["status"].as_str(), one["statusReason"].as_str()),
        (Some("UNHEALTHY"), Some("heartbeat reported not ready"))
    );

    // Deregister: REMOVED, then gone.
    let (status, r) = m.delete(&format!("/v1/instances/{id}")).await;
    assert_eq!(
        (status, r["instance"]["status"].as_str()),
        (200, Some("REMOVED"))
    );
    assert_eq!(m.get(&format!("/v1/instances/{id}")).await.0, 404);
    assert_eq!(m.delete(&format!("/v1/instances/{id}")).await.0, 404);
    m.stop();
}

#[tokio::test]
async fn filters_services_and_batch_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    m.register(
        "orders-api",
        "o1",
        json!({"zone": "a", "region": "r1", "version": "1", "tags": ["blue"]}),
    )
    .await;
    m.register(
        "orders-api",
        "o2",
        json!({"zone": "b", "region": "r1", "version": "2", "deploymentGroup": "canary"}),
    )
    .await;
    m.register(
        "orders-api",
        "o3",
        json!({"zone": "b", "region": "r2", "version": "2", "tags": ["blue", "x"]}),
    )
    .await;
    m.register("fraud-api", "f1", json!({"zone": "a"})).await;
    let ids = crate::harness::instance_ids;
    for (query, want) in [
        ("", vec!["o1", "o2", "o3"]),
        ("?zone=b", vec!["o2", "o3"]),
        ("?region=r1", vec!["o1", "o2"]),
        ("?group=canary", vec!["o2"]),
        ("?tag=blue", vec!["o1", "o3"]),
        ("?tag=blue&tag=x", vec!["o3"]),
        ("?version=2&zone=b", vec!["o2", "o3"]),
        ("?status=STARTING", vec![]),
    ] {
        let (status, v) = m.get(&format!("/v1/services/orders-api{query}")).await;
        assert_eq!(status, 200, "{query}: {v}");
        assert_eq!(ids(&v), want, "{query}");
    }
    // A read-index round first: same answer on one node, and a bad flag is refused.
    let (status, v) = m.get("/v1/services/orders-api?consistent=true").await;
    assert_eq!((status, ids(&v).len()), (200, 3));
    assert_eq!(m.get("/v1/services?consistent").await.0, 200);
    assert_eq!(m.get("/v1/instances/o1?consistent=1").await.0, 200);
    assert_eq!(
        m.get("/v1/services/orders-api?consistent=maybe").await.0,
        400
    );
    let (_, unknown) = m.get("/v1/services/nobody").await;
    assert_eq!(unknown["instances"], json!([]));
    assert!(unknown["index"].as_u64().unwrap() > 0);

    let (status, s) = m.get("/v1/services").await;
    assert_eq!(status, 200);
    let services = s["services"].as_array().unwrap();
    assert_eq!(services.len(), 2);
    assert_eq!(services[1]["name"], "orders-api");
    assert_eq!(services[1]["instances"], 3);
    assert_eq!(services[1]["statuses"]["HEALTHY"], 3);
    assert_eq!(services[1]["zones"]["b"], 2);

    let (status, b) = m
        .post(
            "/v1/heartbeats",
            json!({"instanceIds": ["o1", "ghost", "f1"]}),
        )
        .await;
    assert_eq!(status, 200, "{b}");
    let results = b["results"].as_array().unwrap();
    assert_eq!(
        results
            .iter()
            .map(|r| r["ok"].as_bool().unwrap())
            .collect::<Vec<_>>(),
        [true, false, true]
    );
    assert_eq!(results[1]["error"]["code"], "unknown_instance");
    m.stop();
}

#[tokio::test]
async fn cluster_health_readiness_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    m.register("a", "a1", json!({})).await;
    m.post("/v1/instances/a1/heartbeat", json!({})).await;
    let (status, c) = m.get("/v1/cluster").await;
    assert_eq!(status, 200);
    assert_eq!(c["role"], "Leader");
    assert_eq!(c["leaderId"], 1);
    assert_eq!(c["members"][0]["voter"], true);
    assert!(c["lastApplied"].as_u64().unwrap() >= 2);
    assert_eq!(m.get("/healthz").await.0, 200);
    assert_eq!(m.get("/readyz").await.0, 200);
    let text = m.metrics().await;
    for needle in [
        "muster_instances{service=\"a\",status=\"HEALTHY\"} 1",
        "muster_registrations_total 1",
        "muster_heartbeats_total{result=\"ok\"} 1",
        "muster_watch_subscribers 0",
        "muster_http_request_duration_seconds_bucket{",
        "route=\"/v1/instances\"",
        "muster_raft_applied_index ",
        "muster_raft_leader 1",
        "muster_store_commits ",
    ] {
        assert!(text.contains(needle), "metrics lack {needle:?}:\n{text}");
    }
    m.stop();
}
