//! A three-node cluster of real processes: failover under load, catch-up after a restart,
//! membership changes, and what a node cut off from the quorum answers.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{Cluster, JsonBody, Muster};

async fn ids(m: &Muster, service: &str) -> BTreeSet<String> {
    let (_, v) = m.get(&format!("/v1/services/{service}?status=any")).await;
    crate::harness::instance_ids(&v).into_iter().collect()
}

#[tokio::test]
async fn the_cluster_survives_a_leader_kill_under_load() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader().await;
    let followers: Vec<usize> = (1..=3).filter(|i| *i != leader).collect();

    // Writes through a follower are forwarded; reads on a follower carry staleness headers.
    let f = c.node(followers[0]);
    let index = f.register("web", "w1", json!({"leaseTtl": "3s"})).await;
    c.wait_applied(followers[1], index).await;
    // A follower reports its leader as known once a quorum confirmed it (a read-index probe).
    let mut confirmed = None;
    for _ in 0..100 {
        let resp = c
            .node(followers[1])
            .http
            .get(c.node(followers[1]).url("/v1/services/web"))
            .send()
            .await
            .unwrap();
        if resp.headers()["x-muster-known-leader"] == "true" {
            confirmed = Some(resp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = confirmed.expect("the follower never confirmed its leader");
    assert!(resp.headers().contains_key("x-muster-last-contact"));
    let (status, v) = c
        .node(followers[1])
        .get("/v1/services/web?consistent=true")
        .await;
    assert_eq!(
        (status, v["instances"][0]["instanceId"].as_str()),
        (200, Some("w1"))
    );

    // Watches and blocking queries on a follower see writes made through another node.
    let watcher = c.node(followers[1]);
    let mut sse = watcher.watch("service=web").await;
    assert_eq!(sse.next().await.event, "snapshot");
    let (_, before) = watcher.get("/v1/services/web").await;
    let seen = before["index"].as_u64().unwrap();
    let blocked = {
        let (http, url) = (
            watcher.http.clone(),
            watcher.url(&format!("/v1/services/web?index={seen}&wait=30s")),
        );
        tokio::spawn(async move { http.get(&url).send().await.unwrap().bytes().await.unwrap() })
    };
    let written = c
        .node(leader)
        .register("web", "w2", json!({"leaseTtl": "1h"}))
        .await;
    let e = sse.next().await;
    assert_eq!(
        (
            e.event.as_str(),
            e.id,
            e.data["instance"]["instanceId"].as_str()
        ),
        ("upsert", Some(written), Some("w2"))
    );
    let woke: serde_json::Value = serde_json::from_slice(
        &tokio::time::timeout(Duration::from_secs(10), blocked)
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(woke["index"].as_u64(), Some(written));
    drop(sse);

    // Steady load on both followers; an instance heartbeats through a follower meanwhile.
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Every write as (sent, answered, accepted), to measure the failover from the clients' side.
    let log = Arc::new(Mutex::new(Vec::<(Instant, Instant, bool)>::new()));
    let mut tasks = Vec::new();
    for (w, id) in followers.iter().enumerate() {
        let (http, url) = (c.node(*id).http.clone(), c.node(*id).url("/v1/instances"));
        let (acked, stop, log) = (acked.clone(), stop.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("load-{w}-{i}");
                i += 1;
                let body = json!({"service": "load", "instanceId": id, "host": "h", "port": 1, "leaseTtl": "1h"});
                let sent = Instant::now();
                let ok = matches!(http.post(&url).json_body(&body).timeout(Duration::from_secs(10)).send().await, Ok(r) if r.status() == 201);
                if ok {
                    acked.lock().unwrap().insert(id);
                }
                log.lock().unwrap().push((sent, Instant::now(), ok));
            }
        }));
    }
    let hb = {
        let (http, url) = (
            c.node(followers[0]).http.clone(),
            c.node(followers[0]).url("/v1/instances/w1/heartbeat"),
        );
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = http.post(&url).send().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed_at = Instant::now();
    c.kill9(leader);
    // Wait until a write sent after the kill is accepted (bounded), then let the load run on.
    let mut resumed = None;
    for _ in 0..500 {
        resumed = log
            .lock()
            .unwrap()
            .iter()
            .filter(|(sent, _, ok)| *ok && *sent > killed_at)
            .map(|(_, done, _)| *done)
            .min();
        if resumed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    hb.await.unwrap();
    let resumed = resumed.expect("a write sent after the leader died is accepted");
    let refused = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, done, ok)| !ok && *done > killed_at)
        .count();
    eprintln!(
        "leader kill: first write sent after the kill accepted {:?} after it; {refused} writes refused meanwhile",
        resumed.saturating_duration_since(killed_at)
    );

    // A new leader among the survivors; nothing acknowledged is lost; the heartbeating
    // instance (3 s lease) outlived the failover.
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 10, "only {} writes acknowledged", acked.len());
    let present = ids(c.node(new_leader), "load").await;
    assert!(
        acked.is_subset(&present),
        "{} acknowledged writes lost",
        acked.difference(&present).count()
    );
    assert!(
        ids(c.node(new_leader), "web").await.contains("w1"),
        "a heartbeating instance expired in the failover"
    );

    // The killed node comes back, catches up and serves the same data.
    let (_, status) = c.node(new_leader).get("/v1/cluster").await;
    let target = status["lastApplied"].as_u64().unwrap();
    c.restart(leader);
    c.wait_applied(leader, target).await;
    assert_eq!(ids(c.node(leader), "load").await, present);
    let (_, a) = c.node(leader).get("/v1/services/load?status=any").await;
    let (_, b) = c.node(new_leader).get("/v1/services/load?status=any").await;
    assert_eq!(a, b, "the restarted node serves the same data");
}

#[tokio::test]
async fn a_node_joins_by_snapshot_and_is_removed() {
    let c = Cluster::start(
        3,
        &["--snapshot-every", "200", "--keep-behind-snapshot", "1000"],
    );
    let leader = c.leader().await;
    let m = c.node(leader);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (http, url) = (m.http.clone(), m.url("/v1/instances"));
        tasks.push(tokio::spawn(async move {
            // 1,600 writes to 160 instances: the registry stays below `--snapshot-every`, so
            // snapshots come every 200 entries and the log is purged behind them.
            for i in 0..200 {
                let body = json!({"service": "big", "instanceId": format!("b{w}-{}", i % 20), "host": "h", "port": 1000 + i, "leaseTtl": "1h"});
                let expected = if i < 20 { 201 } else { 200 };
                assert_eq!(http.post(&url).json_body(&body).send().await.unwrap().status(), expected);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The log behind the latest snapshot is purged: a newcomer must start from a snapshot.
    let mut purged = 0;
    for _ in 0..500 {
        purged = m.get("/v1/cluster").await.1["purgedIndex"]
            .as_u64()
            .unwrap_or(0);
        if purged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(purged > 0, "the leader's log was purged behind a snapshot");

    // Node 4 joins through a follower; it is added as a learner, catches up, becomes a voter.
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let port = crate::harness::free_ports(1)[0];
    let dir = c.root.path().join("n4");
    let extra: Vec<String> = [
        "--node-id",
        "4",
        "--join",
        &c.node(follower).base,
        "--snapshot-every",
        "200",
        "--keep-behind-snapshot",
        "1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let n4 = Muster::restart_after(&dir, &format!("127.0.0.1:{port}"), &extra);
    let mut voters = 0;
    for _ in 0..750 {
        let (_, st) = m.get("/v1/cluster").await;
        voters = st["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["voter"] == true)
            .count();
        if voters == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(voters, 4, "node 4 became a voter");
    let (_, st) = m.get("/v1/cluster").await;
    let target = st["lastApplied"].as_u64().unwrap();
    for _ in 0..500 {
        if n4.get("/v1/cluster").await.1["lastApplied"]
            .as_u64()
            .unwrap_or(0)
            >= target
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ids(&n4, "big").await.len(), 160, "node 4 caught up");
    let (_, n4status) = n4.get("/v1/cluster").await;
    assert!(
        n4status["snapshotIndex"].as_u64().is_some(),
        "node 4 holds a snapshot: {n4status}"
    );

    // Remove it again with the CLI, through a follower.
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["--addr", &c.node(follower).base, "cluster", "remove", "4"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, st) = m.get("/v1/cluster").await;
    let ids: Vec<u64> = st["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    drop(n4);

    // An address that reaches another node is refused as a member, and a Raft RPC meant for
    // another node is refused by the one it reached: no node can count twice.
    let wrong = c.node(follower).base.clone();
    let (status, v) = m
        .post("/v1/cluster/members", json!({"id": 9, "addr": wrong}))
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("refused")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not node 9"),
        "{v}"
    );
    let (status, v) = m.post("/internal/raft/vote?to=99", json!({})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (421, Some("wrong_node")),
        "{v}"
    );
}

#[tokio::test]
async fn a_node_without_quorum_serves_stale_reads_and_refuses_writes() {
    let mut c = Cluster::start(3, &["--write-timeout", "1s"]);
    let leader = c.leader().await;
    c.node(leader).register("web", "w1", json!({})).await;
    let keep = (1..=3).find(|i| *i != leader).unwrap();
    c.wait_applied(
        keep,
        c.node(leader).get("/v1/cluster").await.1["lastApplied"]
            .as_u64()
            .unwrap(),
    )
    .await;
    for id in 1..=3 {
        if id != keep {
            c.kill9(id);
        }
    }
    // Once it notices, it knows no leader: reads answer, marked; writes are refused.
    let m = c.node(keep);
    let mut known = String::new();
    for _ in 0..250 {
        let resp = m.http.get(m.url("/v1/services/web")).send().await.unwrap();
        known = resp.headers()["x-muster-known-leader"]
            .to_str()
            .unwrap()
            .to_string();
        if known == "false" {
            let v: serde_json::Value =
                serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
            assert_eq!(v["instances"][0]["instanceId"], "w1", "reads still answer");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(known, "false");
    let (status, v) = m
        .post(
            "/v1/instances",
            json!({"service": "web", "instanceId": "w2", "host": "h", "port": 1}),
        )
        .await;
    assert_eq!(status, 503, "{v}");
    assert!(
        ["no_leader", "indeterminate"].contains(&v["error"]["code"].as_str().unwrap()),
        "{v}"
    );
    let (status, v) = m.post("/v1/instances/w1/heartbeat", json!({})).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("no_leader"))
    );
    assert_eq!(m.get("/readyz").await.0, 503);
}
