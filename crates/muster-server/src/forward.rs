//! Heartbeats that reach a follower go on to the leader, which alone holds the leases. They are
//! batched: while one batch is in flight to the leader, the next one gathers, so under load a
//! follower sends one request per round trip however many instances heartbeat through it.

use std::sync::Arc;
use std::time::Duration;

use muster_proto::ErrorDetail;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::raft::{ProposeError, RaftNode};

/// Most heartbeats in one forwarded batch.
pub const MAX_FORWARD_BATCH: usize = 1000;
/// Heartbeats waiting to be forwarded before new ones are refused.
const QUEUE: usize = 100_000;

/// One renewal on its way to the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardedHeartbeat {
    /// Instance id.
    pub instance_id: String,
    /// Readiness, when the instance reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
}

/// `POST /internal/heartbeats` body.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ForwardedBatch {
    /// The renewals.
    pub items: Vec<ForwardedHeartbeat>,
}

/// Per renewal: the new lease deadline (RFC 3339), or why not.
pub type ForwardedResult = Result<String, ErrorDetail>;

type Reply = oneshot::Sender<Result<ForwardedResult, ProposeError>>;

/// Queues renewals for the leader; cheap to clone.
#[derive(Clone)]
pub struct HeartbeatForwarder {
    tx: mpsc::Sender<(ForwardedHeartbeat, Reply)>,
}

impl HeartbeatForwarder {
    /// Starts the forwarding task; it ends when every handle is dropped.
    pub fn start(raft: Arc<RaftNode>, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(raft, metrics, rx));
        HeartbeatForwarder { tx }
    }

    /// Sends one renewal to the leader and waits for its answer.
    pub async fn renew(&self, item: ForwardedHeartbeat) -> Result<ForwardedResult, ProposeError> {
        let (reply, answer) = oneshot::channel();
        self.tx.try_send((item, reply)).map_err(|_| {
            ProposeError::Unavailable("too many heartbeats are waiting for the leader".into())
        })?;
        answer
            .await
            .map_err(|_| ProposeError::Unavailable("heartbeat forwarding stopped".into()))?
    }
}

async fn run(
    raft: Arc<RaftNode>,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<(ForwardedHeartbeat, Reply)>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_FORWARD_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let answer = send(&raft, &metrics, items).await;
        match answer {
            Ok(results) if results.len() == replies.len() => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Ok(_) => {
                for reply in replies {
                    let _ = reply.send(Err(ProposeError::Unavailable(
                        "the leader answered a different batch".into(),
                    )));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One attempt may take this long: a dead leader must not hold up the heartbeats behind it.
const ATTEMPT: Duration = Duration::from_millis(750);
/// A batch is given up after this long (the instances heartbeat again soon).
const GIVE_UP: Duration = Duration::from_secs(3);

/// Sends a batch to the leader. While no leader is known it waits; when an attempt fails it
/// waits for leadership to move and sends the batch to the new leader.
async fn send(
    raft: &RaftNode,
    metrics: &Metrics,
    items: Vec<ForwardedHeartbeat>,
) -> Result<Vec<ForwardedResult>, ProposeError> {
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    let n = items.len() as u64;
    let batch = serde_json::to_vec(&ForwardedBatch { items })
        .map_err(|e| ProposeError::Unavailable(e.to_string()))?;
    let mut last_err = ProposeError::NoLeader;
    let mut failed: Option<String> = None;
    while tokio::time::Instant::now() < deadline {
        if raft.is_leader() {
            // Leadership came here while the batch waited; the caller renews locally next time.
            return Err(ProposeError::Unavailable(
                "this node became the leader; heartbeat again".into(),
            ));
        }
        match raft.cached_status().leader_addr.clone() {
            Some(leader) if failed.as_ref() != Some(&leader) => {
                let size = batch.len() as u64;
                match raft
                    .forward_bytes::<Vec<ForwardedResult>>(
                        &leader,
                        "heartbeats",
                        batch.clone(),
                        ATTEMPT,
                    )
                    .await
                {
                    Ok(results) => {
                        metrics.forwarded_batches.inc();
                        metrics.forwarded_heartbeats.inc_by(n);
                        metrics.forwarded_bytes.inc_by(size);
                        return Ok(results);
                    }
                    // A slow answer from a live leader: renewals are idempotent, send again.
                    Err(e @ ProposeError::Indeterminate(_)) => last_err = e,
                    // Not (or no longer) reachable or leading: wait for another leader.
                    Err(e) => {
                        last_err = e;
                        failed = Some(leader);
                    }
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    Err(last_err)
}
