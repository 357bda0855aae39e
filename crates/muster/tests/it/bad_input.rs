//! Every class of bad input gets the JSON error shape and the right status; none is a 500.

use serde_json::{Value, json};

use crate::harness::{JsonBody, Muster};

async fn raw(m: &Muster, method: reqwest::Method, path: &str, body: &'static [u8]) -> (u16, Value) {
    let resp = m
        .http
        .request(method, m.url(path))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let v: Value =
        serde_json::from_slice(&resp.bytes().await.unwrap()).expect("error bodies are JSON");
    assert_eq!(ctype.as_deref(), Some("application/json"));
    (status, v)
}

fn check(got: (u16, Value), status: u16, code: &str, field: Option<&str>) {
    let (s, v) = got;
    assert_eq!(s, status, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    if let Some(f) = field {
        assert_eq!(v["error"]["field"], f, "{v}");
    }
}

#[tokio::test]
async fn each_class_of_bad_input() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(
        dir.path(),
        &[
            "--max-body-bytes",
            "16384",
            "--max-instances-per-service",
            "2",
        ],
    );
    let post = Method::POST;

    // Malformed JSON, empty body, unknown field, wrong type.
    check(
        raw(&m, post.clone(), "/v1/instances", b"{\"service\":").await,
        400,
        "invalid_json",
        None,
    );
    check(
        raw(&m, post.clone(), "/v1/instances", b"").await,
        400,
        "invalid_json",
        None,
    );
    check(
        raw(&m, post.clone(), "/v1/instances", b"[1,2]").await,
        400,
        "invalid_type",
        None,
    );
    check(
        raw(
            &m,
            post.clone(),
            "/v1/instances",
            b"{\"service\":\"a\",\"colour\":1}",
        )
        .await,
        400,
        "unknown_field",
        Some("colour"),
    );
    check(
        raw(&m, post.clone(), "/v1/instances", b"{\"port\":\"80\"}").await,
        400,
        "invalid_type",
        Some("port"),
    );
    check(
        raw(&m, post.clone(), "/v1/instances", b"{\"tags\":[1]}").await,
        400,
        "invalid_type",
        Some("tags[0]"),
    );

    // Missing and out-of-range values: 422 naming the field.
    let base = json!({"service": "a", "instanceId": "a1", "host": "10.0.0.1", "port": 80});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    check(
        m.post("/v1/instances", json!({"service": "a"})).await,
        422,
        "missing_field",
        Some("instanceId"),
    );
    check(
        m.post("/v1/instances", with("port", json!(0))).await,
        422,
        "invalid_field",
        Some("port"),
    );
    check(
        m.post("/v1/instances", with("port", json!(65536))).await,
        422,
        "invalid_field",
        Some("port"),
    );
    check(
        m.post("/v1/instances", with("service", json!("Bad_Name")))
            .await,
        422,
        "invalid_field",
        Some("service"),
    );
    check(
        m.post("/v1/instances", with("instanceId", json!("a/b")))
            .await,
        422,
        "invalid_field",
        Some("instanceId"),
    );
    check(
        m.post("/v1/instances", with("host", json!("not a host")))
            .await,
        422,
        "invalid_field",
        Some("host"),
    );
    check(
        m.post("/v1/instances", with("weight", json!(-1))).await,
        422,
        "invalid_field",
        Some("weight"),
    );
    check(
        m.post("/v1/instances", with("leaseTtl", json!("2h"))).await,
        422,
        "invalid_field",
        Some("leaseTtl"),
    );
    let headers: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("h{i}"), json!("v"))).collect();
    check(
        m.post(
            "/v1/instances",
            with(
                "check",
                json!({"type": "http", "target": "/r", "headers": headers}),
            ),
        )
        .await,
        422,
        "invalid_field",
        Some("check.headers"),
    );
    check(
        m.post(
            "/v1/instances",
            with("livenessCheck", json!({"type": "ttl"})),
        )
        .await,
        422,
        "invalid_field",
        Some("livenessCheck.type"),
    );
    check(
        m.post(
            "/v1/instances",
            with(
                "livenessCheck",
                json!({"type": "http", "target": "/live", "interval": "1s", "timeout": "2s"}),
            ),
        )
        .await,
        422,
        "invalid_field",
        Some("livenessCheck.timeout"),
    );
    let tags: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    check(
        m.post("/v1/instances", with("tags", json!(tags))).await,
        422,
        "invalid_field",
        Some("tags"),
    );

    // Oversized body: 413.
    let big = json!({"service": "a", "instanceId": "a1", "host": "h", "port": 1, "metadata": {"k": "v".repeat(20_000)}});
    let resp = m
        .http
        .post(m.url("/v1/instances"))
        .json_body(&big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let v: Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "body_too_large");

    // Unknown instance ids: 404 on every per-instance endpoint.
    check(
        m.get("/v1/instances/ghost").await,
        404,
        "unknown_instance",
        None,
    );
    check(
        m.delete("/v1/instances/ghost").await,
        404,
        "unknown_instance",
        None,
    );
    check(
        m.post("/v1/instances/ghost/heartbeat", json!({})).await,
        404,
        "unknown_instance",
        None,
    );
    check(
        m.put("/v1/instances/ghost/status", json!({"status": "DRAINING"}))
            .await,
        404,
        "unknown_instance",
        None,
    );
    // A malformed id in the path: 400.
    check(
        m.get("/v1/instances/bad%20id").await,
        400,
        "invalid_parameter",
        Some("id"),
    );

    // Bad query parameters: 400 naming the parameter.
    check(
        m.get("/v1/services/a?colour=red").await,
        400,
        "invalid_parameter",
        Some("colour"),
    );
    check(
        m.get("/v1/services/a?status=ALIVE").await,
        400,
        "invalid_parameter",
        Some("status"),
    );
    check(
        m.get("/v1/services/a?index=-1").await,
        400,
        "invalid_parameter",
        Some("index"),
    );
    check(
        m.get("/v1/services/a?index=1&wait=10m").await,
        400,
        "invalid_parameter",
        Some("wait"),
    );
    check(
        m.get("/v1/services/a?zone=x&zone=y").await,
        400,
        "invalid_parameter",
        Some("zone"),
    );
    check(
        m.get("/v1/services/Not_A_Service").await,
        400,
        "invalid_parameter",
        Some("service"),
    );
    check(
        m.get("/v1/watch").await,
        400,
        "invalid_parameter",
        Some("service"),
    );
    check(
        m.get("/v1/watch?service=a&index=x").await,
        400,
        "invalid_parameter",
        Some("index"),
    );

    // Status changes: bad values 422, forbidden transitions 409.
    m.register("a", "a1", json!({"status": "STARTING"})).await;
    check(
        m.put("/v1/instances/a1/status", json!({"status": "EXPIRED"}))
            .await,
        422,
        "invalid_field",
        Some("status"),
    );
    check(
        m.put("/v1/instances/a1/status", json!({})).await,
        422,
        "missing_field",
        Some("status"),
    );
    // With an active check, STARTING cannot be forced HEALTHY.
    m.post(
        "/v1/instances",
        json!({"service": "a", "instanceId": "a2", "host": "h", "port": 1, "healthEndpoint": "/r"}),
    )
    .await;
    check(
        m.put("/v1/instances/a2/status", json!({"status": "HEALTHY"}))
            .await,
        409,
        "invalid_transition",
        Some("status"),
    );

    // Conflicts and limits.
    check(
        m.post("/v1/instances", with("service", json!("b"))).await,
        409,
        "conflict",
        Some("instanceId"),
    );
    check(
        m.post("/v1/instances", with("instanceId", json!("a3")))
            .await,
        409,
        "limit_exceeded",
        None,
    );

    // Batch limits.
    let ids: Vec<String> = (0..1001).map(|i| format!("i{i}")).collect();
    check(
        m.post("/v1/heartbeats", json!({"instanceIds": ids})).await,
        422,
        "invalid_field",
        Some("instanceIds"),
    );
    check(
        m.post("/v1/heartbeats", json!({"instanceIds": ["ok", "no/pe"]}))
            .await,
        422,
        "invalid_field",
        Some("instanceIds[1]"),
    );

    // Routing errors are JSON too.
    check(m.get("/v2/nothing").await, 404, "not_found", None);
    check(
        m.call(Method::PATCH, "/v1/services", None).await,
        405,
        "method_not_allowed",
        None,
    );
    m.stop();
}
