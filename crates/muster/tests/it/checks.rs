//! Active checks against real targets started by the test: an HTTP server whose readiness
//! flips, a TCP listener, a target that hangs.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{GrpcTarget, Muster, Target};

fn checked(id: &str, port: u16, check: Value) -> Value {
    json!({"service": "web", "instanceId": id, "host": "127.0.0.1", "port": port, "check": check})
}

async fn status(m: &Muster, id: &str) -> (String, String) {
    let (_, v) = m.get(&format!("/v1/instances/{id}")).await;
    (
        v["status"].as_str().unwrap_or("").to_string(),
        v["statusReason"].as_str().unwrap_or("").to_string(),
    )
}

/// Waits (bounded) until `id` has `want` status; returns its reason.
async fn until(m: &Muster, id: &str, want: &str) -> String {
    for _ in 0..100 {
        let (s, reason) = status(m, id).await;
        if s == want {
            return reason;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} never became {want}: {:?}", status(m, id).await);
}

fn http_check() -> Value {
    json!({"type": "http", "target": "/ready", "interval": "100ms", "timeout": "100ms",
           "successBeforeHealthy": 2, "failuresBeforeUnhealthy": 2})
}

#[tokio::test]
async fn readiness_follows_the_http_check() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let target = Target::http(false, false).await;
    assert_eq!(
        m.post("/v1/instances", checked("w1", target.port, http_check()))
            .await
            .0,
        201
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        status(&m, "w1").await.0,
        "STARTING",
        "not ready: not in rotation"
    );
    // It heartbeats and claims to be ready: the check decides, not the claim.
    m.post("/v1/instances/w1/heartbeat", json!({"ready": true}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, list) = m.get("/v1/services/web").await;
    assert_eq!(
        list["instances"],
        json!([]),
        "a heartbeating instance that fails readiness is not discoverable"
    );

    target.set_ready(true);
    assert_eq!(until(&m, "w1", "HEALTHY").await, "check passed");
    target.set_ready(false);
    assert_eq!(until(&m, "w1", "UNHEALTHY").await, "check failed: HTTP 503");
    assert_eq!(
        m.get("/v1/instances/w1").await.0,
        200,
        "out of rotation, not expired"
    );
    let text = m.metrics().await;
    for needle in [
        "muster_check_probes_total{type=\"http\",result=\"pass\"}",
        "muster_check_probes_total{type=\"http\",result=\"fail\"}",
        "muster_check_probe_duration_seconds_count{type=\"http\"}",
        "muster_check_transitions_total{to=\"ready\"} 1",
        "muster_check_transitions_total{to=\"not_ready\"} 1",
        "muster_checked_instances 1",
        "muster_instance_transitions_total{from=\"NEW\",to=\"STARTING\"} 1",
        "muster_instance_transitions_total{from=\"STARTING\",to=\"HEALTHY\"} 1",
        "muster_instance_transitions_total{from=\"HEALTHY\",to=\"UNHEALTHY\"} 1",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    // A second instance, in rotation, says itself that it is not ready. The checker follows that
    // change (it did not make it), and the passing check puts the instance back rather than
    // leaving it out for good.
    target.set_ready(true);
    assert_eq!(
        m.post("/v1/instances", checked("w2", target.port, http_check()))
            .await
            .0,
        201
    );
    until(&m, "w2", "HEALTHY").await;
    m.post("/v1/instances/w2/heartbeat", json!({"ready": false}))
        .await;
    assert_eq!(
        status(&m, "w2").await,
        ("UNHEALTHY".into(), "heartbeat reported not ready".into())
    );
    assert_eq!(until(&m, "w2", "HEALTHY").await, "check passed");
    m.stop();
}

#[tokio::test]
async fn an_http_check_sends_its_method_and_headers() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let target = Target::http(true, false).await;
    let mut check = http_check();
    check["method"] = json!("HEAD");
    check["headers"] = json!({"X-Probe": "muster", "Host": "web.internal"});
    assert_eq!(
        m.post("/v1/instances", checked("w1", target.port, check))
            .await
            .0,
        201
    );
    assert_eq!(until(&m, "w1", "HEALTHY").await, "check passed");
    let head = target.last_request().to_ascii_lowercase();
    assert!(head.starts_with("head /ready http/1.1\r\n"), "{head}");
    for line in ["x-probe: muster\r\n", "host: web.internal\r\n"] {
        assert!(head.contains(line), "{line:?} not sent:\n{head}");
    }
    // Stored as given (names lower-cased), shown back.
    let (_, one) = m.get("/v1/instances/w1").await;
    assert_eq!(one["check"]["method"], "HEAD");
    assert_eq!(one["check"]["headers"]["x-probe"], "muster");
    m.stop();
}

#[tokio::test]
async fn readiness_follows_the_grpc_health_check() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let target = GrpcTarget::start().await;
    target.set("orders.v1.Orders", false).await;
    let check = json!({"type": "grpc", "target": "orders.v1.Orders", "interval": "100ms",
                       "timeout": "100ms", "successBeforeHealthy": 1, "failuresBeforeUnhealthy": 1});
    assert_eq!(
        m.post("/v1/instances", checked("g1", target.port, check.clone()))
            .await
            .0,
        201
    );
    // An unknown service name fails too (NOT_FOUND from the health server).
    let mut unknown = check;
    unknown["target"] = json!("nope.v1.Nope");
    m.post("/v1/instances", checked("g2", target.port, unknown))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(status(&m, "g1").await.0, "STARTING", "NOT_SERVING: out");
    assert_eq!(status(&m, "g2").await.0, "STARTING", "unknown service: out");

    target.set("orders.v1.Orders", true).await;
    assert_eq!(until(&m, "g1", "HEALTHY").await, "check passed");
    target.set("orders.v1.Orders", false).await;
    assert_eq!(
        until(&m, "g1", "UNHEALTHY").await,
        "check failed: gRPC health: NOT_SERVING"
    );
    assert_eq!(status(&m, "g2").await.0, "STARTING");
    let text = m.metrics().await;
    for needle in [
        "muster_check_probes_total{type=\"grpc\",result=\"pass\"}",
        "muster_check_probes_total{type=\"grpc\",result=\"fail\"}",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}");
    }
    m.stop();
}

#[tokio::test]
async fn grpc_checks_over_tls_reuse_their_channel_and_verify_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let target = GrpcTarget::start_tls().await;
    target.set("", true).await;
    let check = |skip: bool| {
        json!({"type": "grpc", "tls": true, "tlsSkipVerify": skip, "interval": "100ms",
               "timeout": "100ms", "failuresBeforeUnhealthy": 1})
    };
    let (code, v) = m
        .post("/v1/instances", checked("g1", target.port, check(true)))
        .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(until(&m, "g1", "HEALTHY").await, "check passed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        target.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "every probe went over the one channel"
    );
    // Verified, the self-signed certificate fails.
    let (code, _) = m
        .post("/v1/instances", checked("g1", target.port, check(false)))
        .await;
    assert_eq!(code, 200);
    let reason = until(&m, "g1", "UNHEALTHY").await;
    assert!(reason.contains("certificate"), "{reason}");
    m.stop();
}

#[tokio::test]
async fn tcp_checks_and_a_hanging_target_delays_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let hanging = Target::http(true, true).await;
    let good = Target::http(true, false).await;
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_port = tcp.local_addr().unwrap().port();
    m.post("/v1/instances", checked("hang", hanging.port, http_check()))
        .await;
    m.post("/v1/instances", checked("good", good.port, http_check()))
        .await;
    let tcp_check = json!({"type": "tcp", "interval": "100ms", "timeout": "100ms", "successBeforeHealthy": 1, "failuresBeforeUnhealthy": 1});
    m.post("/v1/instances", checked("tcp", tcp_port, tcp_check))
        .await;
    until(&m, "good", "HEALTHY").await;
    until(&m, "tcp", "HEALTHY").await;
    assert_eq!(status(&m, "hang").await.0, "STARTING");
    drop(tcp);
    let reason = until(&m, "tcp", "UNHEALTHY").await;
    assert!(reason.starts_with("check failed: connect to"), "{reason}");
    m.stop();
}

#[tokio::test]
async fn a_flapping_instance_is_held_out() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &["--flap-cooldown", "2s"]);
    let target = Target::http(true, false).await;
    let check = json!({"type": "http", "target": "/ready", "interval": "100ms", "timeout": "100ms",
                       "successBeforeHealthy": 1, "failuresBeforeUnhealthy": 1});
    m.post("/v1/instances", checked("f1", target.port, check))
        .await;
    until(&m, "f1", "HEALTHY").await;
    // Up and down and up: the fourth change within a minute makes it flapping.
    let mut reason = String::new();
    for _ in 0..30 {
        target.set_ready(!target.ready.load(std::sync::atomic::Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(250)).await;
        reason = status(&m, "f1").await.1;
        if reason == "flapping" {
            break;
        }
    }
    assert_eq!(reason, "flapping");
    // Held out for the cool-down even though the target is ready now.
    target.set_ready(true);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (s, reason) = status(&m, "f1").await;
    assert!(s != "HEALTHY" && reason == "flapping", "{s} {reason}");
    let text = m.metrics().await;
    assert!(text.contains("muster_flapping_instances 1"), "{text}");
    assert!(
        text.contains("muster_check_transitions_total{to=\"flapping\"} 1"),
        "{text}"
    );
    // After the cool-down (2 s here) it re-enters normally.
    assert_eq!(until(&m, "f1", "HEALTHY").await, "check passed");
    m.stop();
}

/// `(instance, node)` of each probe in `heads`: the path names the instance, the user agent
/// the probing node.
fn probes(heads: &[String]) -> Vec<(String, u64)> {
    heads
        .iter()
        .filter_map(|h| {
            let path = h
                .split_whitespace()
                .nth(1)?
                .strip_prefix("/i/")?
                .to_string();
            let node = h.split("(node ").nth(1)?.split(')').next()?.parse().ok()?;
            Some((path, node))
        })
        .collect()
}

/// Who probed which instance over `window`, once a window shows each instance probed by
/// exactly one node (views of the ring settle within a few windows); bounded.
async fn owners(
    target: &Target,
    n: usize,
    window: Duration,
) -> std::collections::BTreeMap<String, u64> {
    let mut last = Default::default();
    for _ in 0..20 {
        target.take_requests();
        tokio::time::sleep(window).await;
        let mut by: std::collections::BTreeMap<String, std::collections::BTreeSet<u64>> =
            Default::default();
        for (id, node) in probes(&target.take_requests()) {
            by.entry(id).or_default().insert(node);
        }
        if by.len() == n && by.values().all(|nodes| nodes.len() == 1) {
            return by
                .into_iter()
                .map(|(id, nodes)| (id, nodes.into_iter().next().expect("one")))
                .collect();
        }
        last = by;
    }
    panic!("never saw each of {n} instances probed by exactly one node: {last:?}");
}

#[tokio::test]
async fn checks_are_spread_over_the_members_and_move_when_one_leaves() {
    let mut c = crate::harness::Cluster::start(3, &[]);
    let leader = c.leader().await;
    let target = Target::http(true, false).await;
    let n = 30;
    for i in 0..n {
        let check = json!({"type": "http", "target": format!("/i/w{i:02}"), "interval": "100ms",
                           "timeout": "100ms", "successBeforeHealthy": 1, "failuresBeforeUnhealthy": 2});
        let (code, _) = c
            .node(leader)
            .post(
                "/v1/instances",
                checked(&format!("w{i:02}"), target.port, check),
            )
            .await;
        assert_eq!(code, 201);
    }
    let before = owners(&target, n, Duration::from_millis(600)).await;
    let share = |owners: &std::collections::BTreeMap<String, u64>, node: u64| {
        owners.values().filter(|o| **o == node).count()
    };
    for node in 1..=3 {
        assert!(
            share(&before, node) > 0,
            "node {node} probes nothing: {before:?}"
        );
        let text = c.node(node as usize).metrics().await;
        assert!(
            text.contains(&format!(
                "muster_checked_instances {}",
                share(&before, node)
            )),
            "node {node} reports its own share"
        );
    }

    // Transitions found by followers are written through the leader.
    target.set_ready(false);
    for i in 0..n {
        until(c.node(leader), &format!("w{i:02}"), "UNHEALTHY").await;
    }
    target.set_ready(true);
    for i in 0..n {
        until(c.node(leader), &format!("w{i:02}"), "HEALTHY").await;
    }

    // A follower dies: its share moves to the others, and nothing else moves.
    let gone = (1..=3).find(|id| *id != leader).expect("a follower") as u64;
    c.kill9(gone as usize);
    let after = owners(&target, n, Duration::from_millis(600)).await;
    for (id, owner) in &after {
        assert_ne!(*owner, gone, "{id} is still probed by the dead node");
        if before[id] != gone {
            assert_eq!(before[id], *owner, "{id} moved though its node stayed");
        }
    }
}

fn with_liveness(id: &str, ready_port: u16, live_port: u16, ttl: &str) -> Value {
    json!({"service": "web", "instanceId": id, "host": "127.0.0.1", "port": ready_port,
           "leaseTtl": ttl,
           "check": {"type": "http", "target": "/ready", "interval": "100ms", "timeout": "100ms"},
           "livenessCheck": {"type": "http", "target": format!("http://127.0.0.1:{live_port}/live"),
                             "interval": "100ms", "timeout": "100ms", "failuresBeforeUnhealthy": 2}})
}

#[tokio::test]
async fn a_failing_liveness_check_expires_an_instance_that_still_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let (ready, live) = (
        Target::http(true, false).await,
        Target::http(true, false).await,
    );
    let (code, v) = m
        .post(
            "/v1/instances",
            with_liveness("w1", ready.port, live.port, "2s"),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        v["instance"]["livenessCheck"]["failuresBeforeUnhealthy"], 2,
        "{v}"
    );
    until(&m, "w1", "HEALTHY").await;
    assert!(
        live.last_request().starts_with("GET /live "),
        "{}",
        live.last_request()
    );

    // Deadlocked, say: it still heartbeats, but its liveness endpoint fails.
    let mut watch = m.watch("service=web").await;
    live.set_ready(false);
    let mut saw = Vec::new();
    for _ in 0..100 {
        let (code, v) = m.post("/v1/instances/w1/heartbeat", json!({})).await;
        if code != 200 {
            assert_eq!(code, 410, "{v}");
            assert_eq!(v["error"]["code"], "liveness_failed", "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("liveness check failed: HTTP 503"),
                "{v}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while let Some(frame) = watch.next_within(Duration::from_secs(5)).await {
        let inst = &frame.data["instance"];
        saw.push((
            inst["status"].as_str().unwrap_or("").to_string(),
            inst["statusReason"].as_str().unwrap_or("").to_string(),
        ));
        if inst["status"] == "EXPIRED" {
            break;
        }
    }
    let statuses: Vec<&str> = saw.iter().map(|(s, _)| s.as_str()).collect();
    assert!(
        statuses.ends_with(&["UNHEALTHY", "EXPIRED"]),
        "out of rotation first, then expired (half a TTL later) though it heartbeats: {saw:?}"
    );
    assert_eq!(saw[saw.len() - 2].1, "liveness check failed: HTTP 503");
    assert_eq!(m.get("/v1/instances/w1").await.0, 404);
    assert!(
        m.metrics()
            .await
            .contains("muster_check_transitions_total{to=\"dead\"} 1")
    );
}

#[tokio::test]
async fn liveness_failing_everywhere_at_once_is_held_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let (ready, live) = (
        Target::http(true, false).await,
        Target::http(true, false).await,
    );
    let ids: Vec<String> = (0..10).map(|i| format!("w{i}")).collect();
    for id in &ids {
        let (code, v) = m
            .post(
                "/v1/instances",
                with_liveness(id, ready.port, live.port, "60s"),
            )
            .await;
        assert_eq!(code, 201, "{v}");
    }
    for id in &ids {
        until(&m, id, "HEALTHY").await;
    }
    // One shared dependency of the probes breaks (a cut on the prober's side looks the same):
    // every liveness check fails at once. Protection holds the expiries.
    live.set_ready(false);
    for _ in 0..100 {
        let (_, leases) = m.get("/v1/leases").await;
        if leases["protection"]["active"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, leases) = m.get("/v1/leases").await;
    assert_eq!(leases["protection"]["active"], true, "{leases}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &ids {
        let (code, v) = m.get(&format!("/v1/instances/{id}")).await;
        assert_eq!(code, 200, "{id} was expired: protection must hold");
        assert_eq!(v["live"], false, "{v}");
        assert_eq!(v["status"], "UNHEALTHY", "{v}");
    }
    // It comes back: every instance is alive and in rotation again, none was lost.
    live.set_ready(true);
    for id in &ids {
        assert_eq!(until(&m, id, "HEALTHY").await, "liveness check passed");
    }
    let (_, list) = m.get("/v1/services/web").await;
    assert_eq!(crate::harness::instance_ids(&list).len(), 10);
}

#[tokio::test]
async fn an_http_check_passes_on_its_expected_statuses_only() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    // A maintenance page that answers 503 when all is well, say: only 503 passes.
    let target = Target::http(false, false).await;
    let check = json!({"type": "http", "target": "/ready", "interval": "100ms", "timeout": "100ms",
                       "failuresBeforeUnhealthy": 1, "expectedStatus": "503"});
    let (code, v) = m
        .post("/v1/instances", checked("w1", target.port, check))
        .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["instance"]["check"]["expectedStatus"], "503");
    assert_eq!(until(&m, "w1", "HEALTHY").await, "check passed");
    target.set_ready(true);
    assert_eq!(until(&m, "w1", "UNHEALTHY").await, "check failed: HTTP 200");
}

#[tokio::test]
async fn https_checks_verify_the_certificate_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let target = Target::https(true).await;
    let check = |skip: bool| {
        json!({"type": "http", "target": "/ready", "tls": true, "tlsSkipVerify": skip,
               "interval": "100ms", "timeout": "100ms", "failuresBeforeUnhealthy": 1})
    };
    // Skipping verification, a self-signed target passes, over TLS.
    let (code, v) = m
        .post("/v1/instances", checked("w1", target.port, check(true)))
        .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["instance"]["check"]["tlsSkipVerify"], true, "{v}");
    assert_eq!(until(&m, "w1", "HEALTHY").await, "check passed");
    assert!(
        target.last_request().starts_with("GET /ready HTTP/1.1"),
        "{}",
        target.last_request()
    );
    // Verifying (the default), the same certificate fails: no CA vouches for it.
    let (code, v) = m
        .post("/v1/instances", checked("w1", target.port, check(false)))
        .await;
    assert_eq!(code, 200, "{v}");
    let reason = until(&m, "w1", "UNHEALTHY").await;
    assert!(
        reason.starts_with("check failed: request to https://127.0.0.1:")
            && reason.contains("certificate"),
        "{reason}"
    );
    // An https:// URL target means TLS too.
    let url = format!("https://127.0.0.1:{}/ready", target.port);
    let (code, v) = m
        .post(
            "/v1/instances",
            checked(
                "by-url",
                target.port,
                json!({"type": "http", "target": url, "tlsSkipVerify": true,
                       "interval": "100ms", "timeout": "100ms"}),
            ),
        )
        .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(until(&m, "by-url", "HEALTHY").await, "check passed");
}
