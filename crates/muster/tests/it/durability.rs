//! Restart recovery, kill -9 durability, and snapshots that bound the log.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::harness::{JsonBody, Muster};

#[tokio::test]
async fn a_clean_restart_recovers_every_registration() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    for i in 0..20 {
        m.register(&format!("svc-{}", i % 3), &format!("i{i}"), json!({}))
            .await;
    }
    m.put(
        "/v1/instances/i4/status",
        json!({"status": "DRAINING", "reason": "kept"}),
    )
    .await;
    m.delete("/v1/instances/i5").await;
    let (_, before) = m.get("/v1/services").await;
    let (addr, extra) = (m.addr(), m.extra());
    m.stop();

    let m = Muster::restart_after(dir.path(), &addr, &extra);
    let (_, after) = m.get("/v1/services").await;
    assert_eq!(before, after);
    let (_, i4) = m.get("/v1/instances/i4").await;
    assert_eq!(
        (i4["status"].as_str(), i4["statusReason"].as_str()),
        (Some("DRAINING"), Some("kept"))
    );
    assert_eq!(m.get("/v1/instances/i5").await.0, 404);
    // The index goes on from where it was.
    let next = m.register("svc-0", "fresh", json!({})).await;
    assert!(next > before["index"].as_u64().unwrap());
    m.stop();
}

#[tokio::test]
async fn kill_dash_nine_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut writers = Vec::new();
    for w in 0..16 {
        let (http, url, acked) = (m.http.clone(), m.url("/v1/instances"), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("w{w}-{i}");
                let body = json!({"service": format!("burst-{}", w % 4), "instanceId": id, "host": "10.0.0.1", "port": 1});
                match http.post(&url).json_body(&body).send().await {
                    Ok(r) if r.status() == 201 => {
                        acked.lock().unwrap().insert(id);
                    }
                    _ => break, // the server is gone
                }
            }
        }));
    }
    // Let the burst run until a few hundred writes are acknowledged, then pull the plug.
    for _ in 0..600 {
        if acked.lock().unwrap().len() >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (addr, extra) = (m.addr(), m.extra());
    m.kill9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 300,
        "only {} writes acknowledged",
        acked.len()
    );

    let m = Muster::restart_after(dir.path(), &addr, &extra);
    let mut present = BTreeSet::new();
    for s in 0..4 {
        let (_, v) = m.get(&format!("/v1/services/burst-{s}?status=any")).await;
        for i in v["instances"].as_array().unwrap() {
            present.insert(i["instanceId"].as_str().unwrap().to_string());
        }
    }
    let lost: Vec<_> = acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged registrations lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    m.stop();
}

#[tokio::test]
async fn snapshots_bound_the_log_and_restore_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(
        dir.path(),
        &["--snapshot-every", "200", "--keep-behind-snapshot", "1000"],
    );
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (http, url) = (m.http.clone(), m.url("/v1/instances"));
        tasks.push(tokio::spawn(async move {
            // 160 instances, each registered 10 times: the registry stays below
            // `--snapshot-every`, so snapshots come every 200 entries (a larger registry
            // spaces them by its size).
            for i in 0..200 {
                let body = json!({"service": "snap", "instanceId": format!("s{w}-{}", i % 20), "host": "h", "port": 1000 + i, "status": "HEALTHY"});
                let r = http.post(&url).json_body(&body).send().await.unwrap();
                assert_eq!(r.status(), if i < 20 { 201 } else { 200 });
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // 1600 entries: snapshots every 200, and the log purged 1000 behind the latest.
    let mut cluster = json!(null);
    for _ in 0..500 {
        cluster = m.get("/v1/cluster").await.1;
        if cluster["purgedIndex"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snapshot = cluster["snapshotIndex"]
        .as_u64()
        .expect("a snapshot was taken");
    let purged = cluster["purgedIndex"].as_u64().expect("the log was purged");
    assert!(snapshot >= 1200 && purged + 1000 <= snapshot, "{cluster}");

    let (addr, extra) = (m.addr(), m.extra());
    m.stop();
    let m = Muster::restart_after(dir.path(), &addr, &extra);
    let (_, v) = m.get("/v1/services/snap").await;
    let instances = v["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 160);
    // Each instance as last registered: `s{w}-{k}` last with port 1180 + k.
    for i in instances {
        let id = i["instanceId"].as_str().unwrap();
        let k: u64 = id.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(i["port"], 1180 + k, "{i}");
    }
    let (_, c) = m.get("/v1/cluster").await;
    assert!(c["purgedIndex"].as_u64().unwrap() >= purged, "{c}");
    m.stop();
}

#[tokio::test]
async fn a_growing_registry_spaces_its_snapshots_by_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &["--snapshot-every", "100"]);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (http, url) = (m.http.clone(), m.url("/v1/instances"));
        tasks.push(tokio::spawn(async move {
            for i in 0..300 {
                let body = json!({"service": "grow", "instanceId": format!("g{w}-{i}"), "host": "h", "port": 1});
                let r = http.post(&url).json_body(&body).send().await.unwrap();
                assert_eq!(r.status(), 201);
            }
        }));
    }
    // Every snapshot index seen while 1,200 distinct instances are registered.
    let mut seen: Vec<u64> = Vec::new();
    for _ in 0..3000 {
        let (_, c) = m.get("/v1/cluster").await;
        if let Some(s) = c["snapshotIndex"].as_u64()
            && seen.last() != Some(&s)
        {
            seen.push(s);
        }
        if tasks.iter().all(|t| t.is_finished()) && c["lastApplied"].as_u64() >= Some(1200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The first after `--snapshot-every` entries; each later one after as many entries as the
    // registry held at the one before (about its index: one instance per entry here), where
    // a fixed interval would take one every 100 entries.
    assert!(seen.len() >= 2, "snapshots seen: {seen:?}");
    assert!(seen[0] >= 100, "{seen:?}");
    for pair in seen.windows(2) {
        assert!(pair[1] + 10 >= 2 * pair[0], "snapshots seen: {seen:?}");
    }
    let (addr, extra) = (m.addr(), m.extra());
    m.stop();
    let m = Muster::restart_after(dir.path(), &addr, &extra);
    let (_, v) = m.get("/v1/services/grow?status=any").await;
    assert_eq!(v["instances"].as_array().unwrap().len(), 1200);
    m.stop();
}
