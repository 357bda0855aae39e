//! Raft transport over HTTP: `POST <peer>/internal/raft/{append,vote,snapshot}` with JSON bodies
//! (a snapshot is a JSON header followed by the raw snapshot bytes).
//!
//! Heartbeats, log replication and snapshots each get their own HTTP client, so their own
//! connections: a large snapshot transfer never holds up the heartbeats that keep a leader in
//! office.

use std::future::Future;
use std::time::Duration;

use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{SnapshotData, TypeConfig};

/// Path prefix of the Raft RPCs.
pub(crate) const RPC_PREFIX: &str = "/internal/raft";

/// How RPCs reach peers.
#[derive(Clone)]
pub(crate) enum Transport {
    /// HTTP, one connection pool per purpose.
    Http {
        replication: reqwest::Client,
        heartbeat: reqwest::Client,
        snapshot: reqwest::Client,
    },
    /// The in-process network of a simulation.
    #[cfg(feature = "sim")]
    Sim {
        net: std::sync::Arc<crate::sim::SimNet>,
        from: u64,
    },
}

/// Creates clients for peers.
pub(crate) struct Network {
    transport: Transport,
}

impl Network {
    pub(crate) fn http() -> Result<Self, String> {
        let build = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .build()
                .map_err(|e| format!("cannot build the raft HTTP client: {e}"))
        };
        Ok(Network {
            transport: Transport::Http {
                replication: build()?,
                heartbeat: build()?,
                snapshot: build()?,
            },
        })
    }

    #[cfg(feature = "sim")]
    pub(crate) fn sim(net: std::sync::Arc<crate::sim::SimNet>, from: u64) -> Self {
        Network {
            transport: Transport::Sim { net, from },
        }
    }

    fn client(&self, target: u64, node: &BasicNode, pick: fn(&Transport) -> Link) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.trim_end_matches('/').to_string(),
            link: pick(&self.transport),
        }
    }
}

/// The way to one peer.
enum Link {
    Http(reqwest::Client),
    #[cfg(feature = "sim")]
    Sim(std::sync::Arc<crate::sim::SimNet>, u64),
}

fn pick(
    t: &Transport,
    purpose: fn(&reqwest::Client, &reqwest::Client, &reqwest::Client) -> reqwest::Client,
) -> Link {
    match t {
        Transport::Http {
            replication,
            heartbeat,
            snapshot,
        } => Link::Http(purpose(replication, heartbeat, snapshot)),
        #[cfg(feature = "sim")]
        Transport::Sim { net, from } => Link::Sim(net.clone(), *from),
    }
}

/// A client for one peer.
pub(crate) struct PeerClient {
    target: u64,
    addr: String,
    link: Link,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        self.client(target, node, |t| pick(t, |r, _, _| r.clone()))
    }

    async fn new_heartbeat_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        self.client(target, node, |t| pick(t, |_, h, _| h.clone()))
    }

    async fn new_snapshot_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        self.client(target, node, |t| pick(t, |_, _, s| s.clone()))
    }
}

impl PeerClient {
    /// Sends one RPC and returns the peer's raw answer.
    async fn exchange(
        &self,
        what: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RPCError<TypeConfig>> {
        match &self.link {
            Link::Http(http) => self.exchange_http(http, what, body, timeout).await,
            #[cfg(feature = "sim")]
            Link::Sim(net, from) => tokio::time::timeout(
                timeout,
                net.deliver(*from, self.target, self.target, what, body),
            )
            .await
            .map_err(|_| {
                RPCError::Unreachable(Unreachable::from_string(format!(
                    "node {}: timed out",
                    self.target
                )))
            })?
            .map_err(|e| RPCError::Unreachable(Unreachable::from_string(e))),
        }
    }

    async fn exchange_http(
        &self,
        http: &reqwest::Client,
        what: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RPCError<TypeConfig>> {
        // The intended target travels with every RPC: a node reached at the wrong address (an
        // unspecified or shared advertised address) refuses instead of answering for another.
        let url = format!("{}{RPC_PREFIX}/{what}?to={}", self.addr, self.target);
        let sent = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .timeout(timeout)
            .send()
            .await;
        let resp = sent.map_err(|e| {
            let msg = format!("node {} at {}: {e}", self.target, self.addr);
            if e.is_connect() || e.is_timeout() {
                RPCError::Unreachable(Unreachable::from_string(msg))
            } else {
                RPCError::Network(NetworkError::from_string(msg))
            }
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            RPCError::Network(NetworkError::from_string(format!(
                "node {}: {e}",
                self.target
            )))
        })?;
        if !status.is_success() {
            return Err(RPCError::Unreachable(Unreachable::from_string(format!(
                "node {} answered {status}: {}",
                self.target,
                String::from_utf8_lossy(&bytes)
            ))));
        }
        Ok(bytes.to_vec())
    }

    async fn call<Resp: DeserializeOwned>(
        &self,
        what: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let bytes = self.exchange(what, body, timeout).await?;
        // The peer answers `Result<Resp, String>`; an error there means its Raft cannot serve.
        match serde_json::from_slice::<Result<Resp, String>>(&bytes) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(RPCError::Unreachable(Unreachable::from_string(format!(
                "node {}: {e}",
                self.target
            )))),
            Err(e) => Err(RPCError::Network(NetworkError::from_string(format!(
                "node {} sent an unreadable answer: {e}",
                self.target
            )))),
        }
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, RPCError<TypeConfig>> {
    serde_json::to_vec(v).map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))
}

/// A snapshot on the wire: `[header length: u32 LE][header JSON][snapshot bytes]`.
fn encode_snapshot_rpc(
    vote: &VoteOf<TypeConfig>,
    meta: &SnapshotMetaOf<TypeConfig>,
    data: &[u8],
) -> Result<Vec<u8>, String> {
    let header = serde_json::to_vec(&(vote, meta)).map_err(|e| e.to_string())?;
    let len = u32::try_from(header.len()).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(4 + header.len() + data.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    Ok(out)
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let body = encode(&rpc)?;
        self.call("append", body, option.soft_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let body = encode(&rpc)?;
        self.call("vote", body, option.soft_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let data = snapshot
            .snapshot
            .into_bytes()
            .await
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e.to_string())))?;
        let body = encode_snapshot_rpc(&vote, &snapshot.meta, &data)
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?;
        // A snapshot may be large: allow it the hard TTL, and a bit per megabyte.
        let timeout = option.hard_ttl() + Duration::from_millis(body.len() as u64 / 1_000);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = self.call::<SnapshotResponse<TypeConfig>>("snapshot", body, timeout) => r.map_err(StreamingError::from),
        }
    }
}
