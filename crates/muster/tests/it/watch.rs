//! Server-Sent Events watch: snapshot, changes in order, resume from an index, compaction.

use std::time::Duration;

use serde_json::json;

use crate::harness::Muster;

#[tokio::test]
async fn snapshot_then_changes_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    m.register("web", "w1", json!({})).await;
    m.register("db", "d1", json!({})).await;

    let mut sse = m.watch("service=web").await;
    let snap = sse.next().await;
    assert_eq!(snap.event, "snapshot");
    assert_eq!(snap.data["instances"][0]["instanceId"], "w1");
    let from = snap.id.unwrap();

    let i2 = m.register("web", "w2", json!({})).await;
    m.register("db", "d2", json!({})).await; // another service: never shows up here
    m.put("/v1/instances/w1/status", json!({"status": "DRAINING"}))
        .await;
    let (_, gone) = m.delete("/v1/instances/w2").await;
    let i4 = gone["index"].as_u64().unwrap();

    let e = sse.next().await;
    assert_eq!(
        (
            e.event.as_str(),
            e.id,
            e.data["instance"]["instanceId"].as_str()
        ),
        ("upsert", Some(i2), Some("w2"))
    );
    let e = sse.next().await;
    assert_eq!(
        (e.event.as_str(), e.data["instance"]["status"].as_str()),
        ("upsert", Some("DRAINING"))
    );
    let e = sse.next().await;
    assert_eq!(
        (
            e.event.as_str(),
            e.id,
            e.data["instance"]["status"].as_str()
        ),
        ("delete", Some(i4), Some("REMOVED"))
    );
    assert!(
        sse.next_within(Duration::from_millis(300)).await.is_none(),
        "nothing from service db"
    );

    // Resume from the snapshot's index: the event at that index again (several events can
    // share an index), then the same three, and no snapshot.
    let mut resumed = m.watch(&format!("service=web&index={from}")).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let f = resumed.next().await;
        got.push((f.event, f.id.unwrap()));
    }
    let kinds: Vec<&str> = got.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(kinds, ["upsert", "upsert", "upsert", "delete"]);
    assert_eq!(got[0].1, from);
    assert!(got.windows(2).all(|w| w[0].1 < w[1].1), "ids rise: {got:?}");

    // An index from beyond this registry's history starts over: compacted, then a snapshot.
    let mut beyond = m.watch("service=web&index=999999").await;
    assert_eq!(beyond.next().await.event, "compacted");
    assert_eq!(beyond.next().await.event, "snapshot");

    // Last-Event-ID works like index.
    let resp = m
        .http
        .get(m.url("/v1/watch?service=web"))
        .header("last-event-id", i2.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    m.stop();
}

#[tokio::test]
async fn resume_from_beyond_history_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &["--watch-history", "2"]);
    let first = m.register("web", "w0", json!({})).await;
    for i in 1..5 {
        m.register("web", &format!("w{i}"), json!({})).await;
    }
    let mut sse = m.watch(&format!("service=web&index={first}")).await;
    let c = sse.next().await;
    assert_eq!(c.event, "compacted");
    assert_eq!(c.data["index"].as_u64(), Some(first));
    let snap = sse.next().await;
    assert_eq!(snap.event, "snapshot");
    assert_eq!(snap.data["instances"].as_array().unwrap().len(), 5);
    // Live changes follow the snapshot.
    let i = m.register("web", "w9", json!({})).await;
    let e = sse.next().await;
    assert_eq!((e.event.as_str(), e.id), ("upsert", Some(i)));

    // After a restart the replayed log rebuilds history, still bounded: also compacted.
    let (addr, extra, dirp) = (m.addr(), m.extra(), m.dir.clone());
    drop(sse);
    m.stop();
    let m = Muster::restart_after(&dirp, &addr, &extra);
    let mut sse = m.watch(&format!("service=web&index={first}")).await;
    assert_eq!(sse.next().await.event, "compacted");
    assert_eq!(
        sse.next().await.data["instances"].as_array().unwrap().len(),
        6
    );
    m.stop();
}
