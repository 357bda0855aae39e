//! The gRPC API on the HTTP port: the same operations, rules and errors as HTTP.

use std::time::Duration;

use futures_util::StreamExt;
use muster_proto::grpc::registry_client::RegistryClient;
use muster_proto::grpc::{self as pb, watch_event::Event};

use crate::harness::Muster;

async fn client(m: &Muster) -> RegistryClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(m.url(""))
        .expect("url")
        .connect()
        .await
        .expect("gRPC connects to the HTTP port");
    RegistryClient::new(channel)
}

fn inventory(id: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        service: "inventory-api".into(),
        instance_id: id.into(),
        host: "10.0.0.7".into(),
        port: 8080,
        zone: "ap-south-1a".into(),
        lease_ttl: "30s".into(),
        status: "HEALTHY".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn register_list_watch_heartbeat_drain_and_deregister_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let mut c = client(&m).await;

    let mut watch = c
        .watch(pb::WatchRequest {
            services: vec!["inventory-api".into()],
            index: None,
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert!(matches!(first.event, Some(Event::Snapshot(ref s)) if s.instances.is_empty()));

    let r = c.register(inventory("inv-1")).await.unwrap().into_inner();
    assert!(r.created);
    let i = r.instance.unwrap();
    assert_eq!(
        (i.status.as_str(), i.port, i.lease_ttl.as_str()),
        ("HEALTHY", 8080, "30s")
    );
    // The HTTP API sees the same instance.
    assert_eq!(m.get("/v1/instances/inv-1").await.0, 200);

    let event = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match event.event {
        Some(Event::Upsert(change)) => {
            assert_eq!(change.index, r.index);
            assert_eq!(change.instance.unwrap().instance_id, "inv-1");
        }
        other => panic!("expected an upsert, got {other:?}"),
    }

    let list = c
        .list(pb::ListRequest {
            service: "inventory-api".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.instances.len(), 1);
    assert!(list.index >= r.index);

    // Heartbeats for several instances over one stream, one answer each, in order.
    c.register(inventory("inv-2")).await.unwrap();
    let beats =
        futures_util::stream::iter(["inv-1", "inv-2", "nope"].map(|id| pb::HeartbeatRequest {
            instance_id: id.into(),
            ready: None,
        }));
    let answers: Vec<pb::HeartbeatResponse> = c
        .heartbeat(beats)
        .await
        .unwrap()
        .into_inner()
        .map(|a| a.unwrap())
        .collect()
        .await;
    let got: Vec<(&str, bool, &str)> = answers
        .iter()
        .map(|a| (a.instance_id.as_str(), a.ok, a.error_code.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("inv-1", true, ""),
            ("inv-2", true, ""),
            ("nope", false, "unknown_instance")
        ]
    );
    assert!(!answers[0].lease_expires_at.is_empty());

    let drained = c
        .set_status(pb::SetStatusRequest {
            instance_id: "inv-1".into(),
            status: "DRAINING".into(),
            reason: "deploy".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drained.instance.unwrap().status, "DRAINING");

    // Lists follow the change (each view's instances are encoded once, then shared) and
    // agree with the HTTP lookup, filter for filter.
    let list = |status: &str, zone: &str, service: &str| {
        let request = pb::ListRequest {
            service: service.into(),
            status: status.into(),
            zone: zone.into(),
            ..Default::default()
        };
        let mut c = c.clone();
        async move { c.list(request).await.unwrap().into_inner() }
    };
    let ids = |l: &pb::ListResponse| -> Vec<String> {
        l.instances.iter().map(|i| i.instance_id.clone()).collect()
    };
    let healthy = list("", "", "inventory-api").await;
    assert_eq!(ids(&healthy), ["inv-2"]);
    let any = list("any", "", "inventory-api").await;
    assert_eq!(ids(&any), ["inv-1", "inv-2"]);
    assert_eq!(
        (
            any.instances[0].status.as_str(),
            any.instances[0].status_reason.as_str()
        ),
        ("DRAINING", "deploy")
    );
    let (code, http) = m.get("/v1/services/inventory-api?status=any").await;
    assert_eq!(code, 200);
    assert_eq!(http["index"], any.index);
    for (h, g) in http["instances"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&any.instances)
    {
        assert_eq!(h["instanceId"], g.instance_id.as_str());
        assert_eq!(h["modifyIndex"], g.modify_index);
        assert_eq!(h["zone"], g.zone.as_str());
        assert_eq!(h["registeredAt"], g.registered_at.as_str());
    }
    assert_eq!(
        ids(&list("DRAINING", "ap-south-1a", "inventory-api").await),
        ["inv-1"]
    );
    assert!(
        list("any", "eu-west-1a", "inventory-api")
            .await
            .instances
            .is_empty()
    );
    let unknown = list("", "", "nobody-home").await;
    // An unknown service answers the registry's index.
    assert!(unknown.instances.is_empty() && unknown.index >= any.index);

    let gone = c
        .deregister(pb::DeregisterRequest {
            instance_id: "inv-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(gone.instance.unwrap().status, "REMOVED");
}

#[tokio::test]
async fn grpc_errors_carry_the_http_apis_codes() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let mut c = client(&m).await;
    let code = |s: &tonic::Status| {
        s.metadata()
            .get("muster-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let mut bad = inventory("bad");
    bad.port = 70_000;
    let e = c.register(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(code(&e), "invalid_field");
    assert!(e.message().contains("port"), "{}", e.message());

    let mut missing = inventory("missing");
    missing.service.clear();
    let e = c.register(missing).await.unwrap_err();
    assert_eq!(
        (e.code(), code(&e).as_str()),
        (tonic::Code::InvalidArgument, "missing_field")
    );

    let e = c
        .deregister(pb::DeregisterRequest {
            instance_id: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), code(&e).as_str()),
        (tonic::Code::NotFound, "unknown_instance")
    );

    // Ids are checked as in the HTTP API's paths, before anything is proposed.
    let e = c
        .deregister(pb::DeregisterRequest {
            instance_id: "bad id with spaces".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    c.register(inventory("dup")).await.unwrap();
    let mut other = inventory("dup");
    other.service = "orders".into();
    let e = c.register(other).await.unwrap_err();
    assert_eq!(
        (e.code(), code(&e).as_str()),
        (tonic::Code::AlreadyExists, "conflict")
    );

    let e = c
        .watch(pb::WatchRequest {
            services: vec![],
            index: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_grpc_watch_resumes_from_an_index_or_says_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let m = Muster::start_in(dir.path(), &[]);
    let mut c = client(&m).await;
    let first = c.register(inventory("inv-1")).await.unwrap().into_inner();
    c.register(inventory("inv-2")).await.unwrap();
    let next = |mut s: tonic::Streaming<pb::WatchEvent>| async move {
        let e = tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("in time")
            .expect("an event")
            .expect("ok");
        (e.event.expect("event"), s)
    };
    // Resuming at inv-1's index repeats it, then inv-2 follows.
    let s = c
        .watch(pb::WatchRequest {
            services: vec!["inventory-api".into()],
            index: Some(first.index),
        })
        .await
        .unwrap()
        .into_inner();
    let (e, s) = next(s).await;
    assert!(
        matches!(e, Event::Upsert(ref ch) if ch.index == first.index),
        "{e:?}"
    );
    let (e, _) = next(s).await;
    assert!(
        matches!(e, Event::Upsert(ref ch) if ch.instance.as_ref().unwrap().instance_id == "inv-2"),
        "{e:?}"
    );
    // An index from beyond this registry: compacted, then a snapshot.
    let s = c
        .watch(pb::WatchRequest {
            services: vec!["inventory-api".into()],
            index: Some(1_000_000),
        })
        .await
        .unwrap()
        .into_inner();
    let (e, s) = next(s).await;
    assert!(
        matches!(e, Event::Compacted(ref x) if x.index == 1_000_000),
        "{e:?}"
    );
    let (e, _) = next(s).await;
    assert!(
        matches!(e, Event::Snapshot(ref x) if x.instances.len() == 2),
        "{e:?}"
    );
}
