//! The same discovery operations against each system.
//!
//! - Muster: its HTTP API (`POST /v1/instances`, `POST /v1/heartbeats`, `GET
//!   /v1/services/{s}`, `GET /v1/watch`), as the client library and the CLI use it; lookups
//!   also over its gRPC API (`muster.v1.Registry/List`, [`Driver::other_lookups`]).
//! - etcd: the v3 gRPC API the way discovery on etcd works (Kubernetes-style): one lease per
//!   instance (`LeaseGrant`) and a key `/muster-bench/{service}/{id}` holding the instance's
//!   JSON, put with that lease; renewals on `LeaseKeepAlive` streams; lookups are a range over
//!   the service's prefix; watches are prefix watches.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;

use crate::etcdpb;

/// Events a watcher received in one read: which watcher, the highest index (Muster) or
/// revision (etcd) among them, and how many were upserts and deletes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seen {
    pub(crate) watcher: u64,
    pub(crate) index: u64,
    pub(crate) upserts: u32,
    pub(crate) deletes: u32,
    pub(crate) at: Instant,
}

/// One system under test.
pub(crate) trait Driver: Clone + Send + Sync + 'static {
    /// What a renewal names: an instance id (Muster) or a lease id (etcd).
    type Lease: Clone + Send + Sync + 'static;
    /// A client's renewal channel.
    type Renewer: Renewer<Lease = Self::Lease>;

    /// Registers an instance with a lease of `ttl`; answers once it is durable.
    fn register(
        &self,
        service: &str,
        id: &str,
        weight: u32,
        ttl: Duration,
    ) -> impl Future<Output = anyhow::Result<Self::Lease>> + Send;

    /// Changes a registered instance's weight; answers the index/revision of the write.
    fn update(
        &self,
        service: &str,
        id: &str,
        lease: &Self::Lease,
        weight: u32,
    ) -> impl Future<Output = anyhow::Result<u64>> + Send;

    /// Reads a service's instances; answers how many came back.
    fn lookup(&self, service: &str) -> impl Future<Output = anyhow::Result<usize>> + Send;

    /// The same client with its lookups over a second API on `connections` connections, if
    /// the system has one (Muster: gRPC besides HTTP).
    fn other_lookups(
        &self,
        connections: usize,
    ) -> impl Future<Output = anyhow::Result<Option<Self>>> + Send;

    /// Opens a renewal channel.
    fn renewer(&self) -> impl Future<Output = anyhow::Result<Self::Renewer>> + Send;

    /// Another client of the same server with a connection of its own (one of many separate
    /// watchers, as separate processes would be).
    fn own_client(&self) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// Watches `services` as `watcher`; returns once the watch is established. Events after
    /// that go to `tx` (straight from the task reading the stream: many watchers share one
    /// channel, with no task in between); dropping the receiver ends the watch.
    fn watch(
        &self,
        services: &[String],
        watcher: u64,
        tx: mpsc::UnboundedSender<Seen>,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Renews leases.
pub(crate) trait Renewer: Send + 'static {
    /// What it renews.
    type Lease;
    /// Renews every lease once; answers how many renewals succeeded.
    fn renew(
        &mut self,
        leases: &[Self::Lease],
    ) -> impl Future<Output = anyhow::Result<usize>> + Send;
}

/// What a client takes from an instance in a lookup: both systems' answers are decoded into
/// these (Muster's JSON list; etcd's protobuf, then each value's JSON), so the generator does
/// the same kind of work for both.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // decoded for the work it takes, not read
struct Endpoint<'a> {
    #[serde(borrow)]
    instance_id: Cow<'a, str>,
    #[serde(borrow)]
    host: Cow<'a, str>,
    port: u16,
    #[serde(default)]
    weight: u32,
}

/// Decodes JSON into `T` (the generator's decoding, the same for both systems: the text
/// checked as UTF-8 once, strings borrowed from it where they hold no escapes).
fn decode<'a, T: serde::Deserialize<'a>>(json: &'a [u8]) -> anyhow::Result<T> {
    Ok(serde_json::from_str(std::str::from_utf8(json)?)?)
}

/// [`Endpoint`] in the gRPC API's `Instance` message.
#[derive(Clone, PartialEq, prost::Message)]
struct GrpcEndpoint {
    #[prost(string, tag = "2")]
    instance_id: String,
    #[prost(string, tag = "3")]
    host: String,
    #[prost(uint32, tag = "4")]
    port: u32,
    #[prost(uint32, tag = "8")]
    weight: u32,
}

/// A `ListResponse`, decoded into endpoints.
#[derive(Clone, PartialEq, prost::Message)]
struct EndpointList {
    #[prost(message, repeated, tag = "3")]
    instances: Vec<GrpcEndpoint>,
}

#[derive(serde::Deserialize)]
struct ServiceAnswer<'a> {
    #[serde(borrow)]
    instances: Vec<Endpoint<'a>>,
}

#[derive(serde::Deserialize)]
struct RenewAnswer {
    results: Vec<RenewResult>,
}

#[derive(serde::Deserialize)]
struct RenewResult {
    ok: bool,
}

/// An HTTP/2 connection to `addr`.
async fn grpc_channel(addr: &str) -> anyhow::Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(addr.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// A unary gRPC call whose answer is decoded from one contiguous buffer (the lookups of both
/// systems: the generated clients decode through tonic's buffer, a call per advance, which made
/// the generator, not the servers, the bound of the lookup runs).
async fn unary<T, U>(
    channel: tonic::transport::Channel,
    path: &'static str,
    request: T,
) -> anyhow::Result<U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let answer = grpc
        .unary(tonic::Request::new(request), path, SliceCodec::default())
        .await?;
    Ok(answer.into_inner())
}

/// prost messages, decoded from one contiguous slice.
struct SliceCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for SliceCodec<T, U> {
    fn default() -> Self {
        SliceCodec(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for SliceCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder(std::marker::PhantomData)
    }
}

struct SliceDecoder<U>(std::marker::PhantomData<U>);

impl<U: prost::Message + Default> tonic::codec::Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<U>, tonic::Status> {
        use bytes::Buf;
        let message = buf.copy_to_bytes(buf.remaining());
        U::decode(message.as_ref())
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// The instance document both systems store (etcd as the key's value).
fn document(service: &str, id: &str, weight: u32, ttl: Duration) -> serde_json::Value {
    json!({"service": service, "instanceId": id, "host": "10.1.2.3", "port": 8080,
           "zone": "bench-a", "region": "bench", "version": "1.0.0", "weight": weight,
           "status": "HEALTHY", "leaseTtl": format!("{}ms", ttl.as_millis()),
           "metadata": {"team": "bench"}})
}

/// Muster over its HTTP API.
#[derive(Clone)]
pub(crate) struct Muster {
    http: reqwest::Client,
    base: Arc<str>,
    grpc: Option<Arc<[tonic::transport::Channel]>>,
    next: Arc<AtomicUsize>,
}

impl Muster {
    pub(crate) fn new(addr: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(2048)
            .build()?;
        Ok(Muster {
            http,
            base: addr.trim_end_matches('/').into(),
            grpc: None,
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    async fn post(&self, path: &str, body: &serde_json::Value) -> anyhow::Result<bytes::Bytes> {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body)?)
            .send()
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            bail!("{status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(bytes)
    }
}

impl Driver for Muster {
    type Lease = String;
    type Renewer = Muster;

    async fn register(
        &self,
        service: &str,
        id: &str,
        weight: u32,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        self.post("/v1/instances", &document(service, id, weight, ttl))
            .await?;
        Ok(id.to_string())
    }

    async fn update(
        &self,
        service: &str,
        id: &str,
        _lease: &String,
        weight: u32,
    ) -> anyhow::Result<u64> {
        let body = self
            .post(
                "/v1/instances",
                &document(service, id, weight, Duration::from_secs(3600)),
            )
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        v["index"].as_u64().context("no index in the answer")
    }

    async fn lookup(&self, service: &str) -> anyhow::Result<usize> {
        if let Some(channels) = &self.grpc {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            let request = muster_proto::grpc::ListRequest {
                service: service.into(),
                ..Default::default()
            };
            let answer: EndpointList = unary(
                channels[i % channels.len()].clone(),
                "/muster.v1.Registry/List",
                request,
            )
            .await?;
            return Ok(answer.instances.len());
        }
        let resp = self
            .http
            .get(format!("{}/v1/services/{service}", self.base))
            .send()
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            bail!("{status}");
        }
        let answer: ServiceAnswer<'_> = decode(&bytes)?;
        Ok(answer.instances.len())
    }

    /// Lookups over the gRPC API (`List`) on `connections` HTTP/2 connections.
    async fn other_lookups(&self, connections: usize) -> anyhow::Result<Option<Muster>> {
        let mut channels = Vec::new();
        for _ in 0..connections.max(1) {
            channels.push(grpc_channel(&self.base).await?);
        }
        Ok(Some(Muster {
            grpc: Some(channels.into()),
            ..self.clone()
        }))
    }

    async fn renewer(&self) -> anyhow::Result<Muster> {
        Ok(self.clone())
    }

    async fn own_client(&self) -> anyhow::Result<Muster> {
        Muster::new(&self.base)
    }

    async fn watch(
        &self,
        services: &[String],
        watcher: u64,
        tx: mpsc::UnboundedSender<Seen>,
    ) -> anyhow::Result<()> {
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            for service in services {
                query.append_pair("service", service);
            }
            query.finish()
        };
        let resp = self
            .http
            .get(format!("{}/v1/watch?{query}", self.base))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("watch refused: {}", resp.status());
        }
        let mut stream = resp.bytes_stream();
        let mut splitter = muster_proto::sse::Splitter::default();
        // Established once every service's snapshot arrived.
        let mut snapshots = 0;
        while snapshots < services.len() {
            let chunk = stream.next().await.context("watch ended early")??;
            splitter.push(&chunk).map_err(anyhow::Error::msg)?;
            while let Some(frame) = splitter.next_frame() {
                snapshots += usize::from(frame.event == "snapshot");
            }
        }
        tokio::spawn(async move {
            // Ends (closing the connection) once the receiver is dropped.
            while let Some(Ok(chunk)) = tokio::select! {
                chunk = stream.next() => chunk,
                () = tx.closed() => None,
            } {
                let at = Instant::now();
                if splitter.push(&chunk).is_err() {
                    return;
                }
                let mut seen = Seen {
                    watcher,
                    index: 0,
                    upserts: 0,
                    deletes: 0,
                    at,
                };
                while let Some(frame) = splitter.next_frame() {
                    match frame.event.as_str() {
                        "upsert" => seen.upserts += 1,
                        "delete" => seen.deletes += 1,
                        _ => continue,
                    }
                    seen.index = seen.index.max(frame.id.unwrap_or(0));
                }
                if seen.upserts + seen.deletes > 0 && tx.send(seen).is_err() {
                    return;
                }
            }
        });
        Ok(())
    }
}

impl Renewer for Muster {
    type Lease = String;

    async fn renew(&mut self, leases: &[String]) -> anyhow::Result<usize> {
        let mut ok = 0;
        for batch in leases.chunks(1000) {
            let body = self
                .post("/v1/heartbeats", &json!({ "instanceIds": batch }))
                .await?;
            let answer: RenewAnswer = serde_json::from_slice(&body)?;
            ok += answer.results.iter().filter(|r| r.ok).count();
        }
        Ok(ok)
    }
}

/// etcd over its v3 gRPC API, spreading calls over a few HTTP/2 connections.
#[derive(Clone)]
pub(crate) struct Etcd {
    addr: Arc<str>,
    channels: Arc<[tonic::transport::Channel]>,
    next: Arc<AtomicUsize>,
}

const ETCD_PREFIX: &str = "/muster-bench/";

fn etcd_key(service: &str, id: &str) -> Vec<u8> {
    format!("{ETCD_PREFIX}{service}/{id}").into_bytes()
}

/// `[prefix, range_end)` covers every key under `prefix`.
fn prefix_range(service: &str) -> (Vec<u8>, Vec<u8>) {
    let key = format!("{ETCD_PREFIX}{service}/").into_bytes();
    let mut end = key.clone();
    *end.last_mut().expect("non-empty") += 1;
    (key, end)
}

impl Etcd {
    /// Connects `connections` HTTP/2 connections to `addr`.
    pub(crate) async fn connect(addr: &str, connections: usize) -> anyhow::Result<Self> {
        let mut channels = Vec::new();
        for _ in 0..connections.max(1) {
            let channel = grpc_channel(addr)
                .await
                .with_context(|| format!("cannot reach etcd at {addr}"))?;
            channels.push(channel);
        }
        Ok(Etcd {
            addr: addr.into(),
            channels: channels.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn channel(&self) -> tonic::transport::Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.channels[i % self.channels.len()].clone()
    }

    fn kv(&self) -> etcdpb::kv_client::KvClient<tonic::transport::Channel> {
        etcdpb::kv_client::KvClient::new(self.channel())
    }

    async fn put(&self, key: Vec<u8>, value: Vec<u8>, lease: i64) -> anyhow::Result<u64> {
        let resp = self
            .kv()
            .put(etcdpb::PutRequest {
                key,
                value,
                lease,
                prev_kv: false,
            })
            .await?
            .into_inner();
        Ok(resp.header.map_or(0, |h| h.revision as u64))
    }
}

impl Driver for Etcd {
    type Lease = i64;
    type Renewer = EtcdRenewer;

    async fn register(
        &self,
        service: &str,
        id: &str,
        weight: u32,
        ttl: Duration,
    ) -> anyhow::Result<i64> {
        let grant = etcdpb::lease_client::LeaseClient::new(self.channel())
            .lease_grant(etcdpb::LeaseGrantRequest {
                ttl: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1),
                id: 0,
            })
            .await?
            .into_inner();
        if !grant.error.is_empty() {
            bail!("lease grant: {}", grant.error);
        }
        let value = serde_json::to_vec(&document(service, id, weight, ttl))?;
        self.put(etcd_key(service, id), value, grant.id).await?;
        Ok(grant.id)
    }

    async fn update(
        &self,
        service: &str,
        id: &str,
        lease: &i64,
        weight: u32,
    ) -> anyhow::Result<u64> {
        let value = serde_json::to_vec(&document(service, id, weight, Duration::from_secs(3600)))?;
        self.put(etcd_key(service, id), value, *lease).await
    }

    async fn lookup(&self, service: &str) -> anyhow::Result<usize> {
        let (key, range_end) = prefix_range(service);
        let request = etcdpb::RangeRequest {
            key,
            range_end,
            // A local read, like Muster's default lookup (etcd's default is linearizable:
            // a ReadIndex round per read).
            serializable: true,
            ..Default::default()
        };
        let resp: etcdpb::RangeResponse =
            unary(self.channel(), "/etcdserverpb.KV/Range", request).await?;
        let endpoints = resp
            .kvs
            .iter()
            .map(|kv| decode::<Endpoint<'_>>(&kv.value))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(endpoints.len())
    }

    async fn other_lookups(&self, _connections: usize) -> anyhow::Result<Option<Etcd>> {
        Ok(None)
    }

    async fn own_client(&self) -> anyhow::Result<Etcd> {
        Etcd::connect(&self.addr, 1).await
    }

    async fn renewer(&self) -> anyhow::Result<EtcdRenewer> {
        let (tx, rx) = mpsc::channel(1024);
        Ok(EtcdRenewer {
            tx,
            pending: Some((self.channel(), rx)),
            responses: None,
        })
    }

    async fn watch(
        &self,
        services: &[String],
        watcher: u64,
        tx: mpsc::UnboundedSender<Seen>,
    ) -> anyhow::Result<()> {
        let (req_tx, req_rx) = mpsc::channel(services.len().max(1));
        for service in services {
            let (key, range_end) = prefix_range(service);
            req_tx
                .send(etcdpb::WatchRequest {
                    request_union: Some(etcdpb::watch_request::RequestUnion::CreateRequest(
                        etcdpb::WatchCreateRequest {
                            key,
                            range_end,
                            ..Default::default()
                        },
                    )),
                })
                .await?;
        }
        let mut stream = etcdpb::watch_client::WatchClient::new(self.channel())
            .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await?
            .into_inner();
        let mut created = 0;
        while created < services.len() {
            let resp = stream.message().await?.context("watch ended early")?;
            if resp.canceled {
                bail!("watch canceled: {}", resp.cancel_reason);
            }
            created += usize::from(resp.created);
        }
        tokio::spawn(async move {
            let _keep_open = req_tx; // the request stream stays open while watching
            while let Ok(Some(resp)) = tokio::select! {
                resp = stream.message() => resp,
                () = tx.closed() => Ok(None),
            } {
                let at = Instant::now();
                let mut seen = Seen {
                    watcher,
                    index: 0,
                    upserts: 0,
                    deletes: 0,
                    at,
                };
                for event in &resp.events {
                    if event.r#type == etcdpb::event::EventType::Delete as i32 {
                        seen.deletes += 1;
                    } else {
                        seen.upserts += 1;
                    }
                    let revision = event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                    seen.index = seen.index.max(revision as u64);
                }
                if seen.upserts + seen.deletes > 0 && tx.send(seen).is_err() {
                    return;
                }
            }
        });
        Ok(())
    }
}

/// One `LeaseKeepAlive` stream, opened with the first renewal (etcd answers the call only once
/// a request arrives).
pub(crate) struct EtcdRenewer {
    tx: mpsc::Sender<etcdpb::LeaseKeepAliveRequest>,
    pending: Option<(
        tonic::transport::Channel,
        mpsc::Receiver<etcdpb::LeaseKeepAliveRequest>,
    )>,
    responses: Option<tonic::Streaming<etcdpb::LeaseKeepAliveResponse>>,
}

impl Renewer for EtcdRenewer {
    type Lease = i64;

    async fn renew(&mut self, leases: &[i64]) -> anyhow::Result<usize> {
        // Requests go out while answers come back: the stream is pipelined.
        let tx = self.tx.clone();
        let ids = leases.to_vec();
        let sender = tokio::spawn(async move {
            for id in ids {
                if tx.send(etcdpb::LeaseKeepAliveRequest { id }).await.is_err() {
                    return;
                }
            }
        });
        if let Some((channel, rx)) = self.pending.take() {
            let stream = etcdpb::lease_client::LeaseClient::new(channel)
                .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            self.responses = Some(stream);
        }
        let responses = self.responses.as_mut().context("keepalive stream lost")?;
        // etcd answers a stream's keepalives in order: each answer must name the lease asked
        // for in its place (a round that failed midway would otherwise misalign the next).
        let mut ok = 0;
        for &id in leases {
            let resp = responses
                .message()
                .await?
                .context("keepalive stream ended")?;
            anyhow::ensure!(
                resp.id == id,
                "keepalive answer for lease {}, expected lease {id}",
                resp.id
            );
            ok += usize::from(resp.ttl > 0);
        }
        sender.await?;
        Ok(ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_covers_the_service_and_nothing_else() {
        let (key, end) = prefix_range("svc");
        assert_eq!(key, b"/muster-bench/svc/");
        assert_eq!(end, b"/muster-bench/svc0");
        let inside = etcd_key("svc", "zzz");
        let other = etcd_key("svc2", "a");
        assert!(key <= inside && inside < end);
        assert!(!(key <= other && other < end));
    }
}
