//! The registry under Raft: the only module that knows openraft.
//!
//! ```text
//!   propose(Command) ──▶ openraft ──append──▶ LogStore ──group commit──▶ muster-store (redb)
//!                            │
//!                            └──apply (committed)──▶ StateMachine ──▶ Registry::apply
//!                                                        └──▶ ApplyObserver (views, watch, leases)
//! ```
//!
//! Even the embedded single node runs as a one-member Raft cluster, so every mutation takes the
//! same path, acknowledged only once it is durable.

mod log_store;
mod network;
mod state_machine;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use muster_core::{Applied, ApplyError, Command, Event, Instance, Registry};
use muster_store::Store;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

pub(crate) use log_store::LogStore;
pub(crate) use state_machine::StateMachine;

openraft::declare_raft_types!(
    /// Muster's Raft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
);

/// The payload of a Raft log entry: one registry command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request(pub Command);

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

/// What applying an entry produced: the command's outcome, or `None` for a Raft-internal entry
/// (blank or membership).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response(pub Option<Result<Applied, ApplyError>>);

/// Told about every change to the registry, in apply order, while the registry is locked.
///
/// # Correctness
///
/// Calls are serialized: `applied` is called once per applied batch, in log order; `restored`
/// when the whole state was replaced (startup or snapshot install). Implementations must not
/// block: apply waits for them.
pub trait ApplyObserver: Send + Sync + 'static {
    /// A batch was applied; `events` are its changes in order, and `registered` the instances
    /// a `Register` command of the batch accepted (including re-registrations that changed
    /// nothing and so made no event).
    fn applied(&self, registry: &Registry, events: &[Event], registered: &[Arc<Instance>]);
    /// The registry was replaced wholesale.
    fn restored(&self, registry: &Registry);
}

/// Raft timing and log-retention settings.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    /// This node's id.
    pub node_id: u64,
    /// Address peers reach this node at (for the membership record).
    pub advertise_addr: String,
    /// Leader heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Lower bound of the election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the election timeout.
    pub election_timeout_max: Duration,
    /// Take a snapshot after this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot before purging (generous: see openraft issue #2116).
    pub keep_behind_snapshot: u64,
}

/// Why a proposal did not commit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node is not the leader.
    #[error("this node is not the leader{}", leader_hint(.leader))]
    NotLeader {
        /// The leader, if known: `(id, address)`.
        leader: Option<(u64, String)>,
    },
    /// The entry was appended but may have been overwritten by a new leader: its outcome is
    /// unknown.
    #[error("leadership changed while the write was in flight; its outcome is unknown")]
    Indeterminate,
    /// Raft has stopped (storage failure or shutdown).
    #[error("consensus is unavailable: {0}")]
    Unavailable(String),
}

fn leader_hint(leader: &Option<(u64, String)>) -> String {
    match leader {
        Some((id, addr)) => format!("; the leader is node {id} at {addr}"),
        None => "; no leader is known".into(),
    }
}

/// A committed proposal: its log index and outcome.
#[derive(Debug)]
pub struct Proposed {
    /// Raft log index (the registry index after it applied).
    pub index: u64,
    /// What the state machine did.
    pub outcome: Result<Applied, ApplyError>,
}

/// The Raft role and progress of this node, for `/v1/cluster`, headers and metrics.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// This node's id.
    pub node_id: u64,
    /// `Leader`, `Follower`, `Candidate`, `Learner` or `Shutdown`.
    pub role: String,
    /// Current leader's id.
    pub leader_id: Option<u64>,
    /// Current leader's address.
    pub leader_addr: Option<String>,
    /// Current term.
    pub term: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Last applied index.
    pub last_applied: u64,
    /// Index covered by the latest snapshot.
    pub snapshot_index: Option<u64>,
    /// Index through which the log was purged.
    pub purged_index: Option<u64>,
    /// Milliseconds since this node last heard from the leader (0 on the leader; unknown = null).
    pub last_contact_ms: Option<u64>,
    /// Voting members and learners: `(id, address, voter)`.
    pub members: Vec<Member>,
}

/// One cluster member.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Address.
    pub addr: String,
    /// Whether it votes.
    pub voter: bool,
}

/// A running Raft node with the registry as its state machine.
pub struct RaftNode {
    raft: Raft<TypeConfig, StateMachine>,
    sm: StateMachine,
    node_id: u64,
    /// The latest status, refreshed on every metrics change, for hot paths.
    cached: Arc<arc_swap::ArcSwap<ClusterStatus>>,
    refresher: tokio::task::JoinHandle<()>,
}

impl RaftNode {
    /// Opens the log and snapshot from `store`, starts Raft and, on a fresh data directory,
    /// initializes a one-member cluster. Returns once the applied state is recovered.
    pub async fn start(
        settings: &RaftSettings,
        store: Store,
        observer: Arc<dyn ApplyObserver>,
    ) -> Result<RaftNode, String> {
        let config = Config {
            cluster_name: "muster".into(),
            heartbeat_interval: millis(settings.heartbeat_interval),
            election_timeout_min: millis(settings.election_timeout_min),
            election_timeout_max: millis(settings.election_timeout_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
            max_in_snapshot_log_to_keep: settings.keep_behind_snapshot,
            purge_batch_size: 256,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("invalid raft settings: {e}"))?;
        let log =
            LogStore::open(store.clone()).map_err(|e| format!("cannot open the raft log: {e}"))?;
        let sm = StateMachine::new(store, observer);
        let raft = Raft::new(
            settings.node_id,
            Arc::new(config),
            network::Network,
            log,
            sm.clone(),
        )
        .await
        .map_err(|e| format!("cannot start raft: {e}"))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| format!("raft failed: {e}"))?;
        if !initialized {
            let members =
                BTreeMap::from([(settings.node_id, BasicNode::new(&settings.advertise_addr))]);
            raft.initialize(members)
                .await
                .map_err(|e| format!("cannot initialize the cluster: {e}"))?;
            tracing::info!(
                node_id = settings.node_id,
                "initialized a new one-node cluster"
            );
        }
        raft.wait_for_recovery(Some(Duration::from_secs(60)))
            .await
            .map_err(|e| format!("raft did not recover its applied state: {e}"))?;
        let node_id = settings.node_id;
        let cached = Arc::new(arc_swap::ArcSwap::from_pointee(status_of(
            node_id,
            &raft.metrics().borrow_watched(),
        )));
        let refresher = {
            let (cached, mut metrics) = (cached.clone(), raft.metrics());
            tokio::spawn(async move {
                while metrics.changed().await.is_ok() {
                    let status = status_of(node_id, &metrics.borrow_watched());
                    cached.store(Arc::new(status));
                }
            })
        };
        Ok(RaftNode {
            raft,
            sm,
            node_id,
            cached,
            refresher,
        })
    }

    /// Proposes a command and waits until it is committed and applied.
    pub async fn propose(&self, cmd: Command) -> Result<Proposed, ProposeError> {
        match self.raft.client_write(Request(cmd)).await {
            Ok(resp) => match resp.data.0 {
                Some(outcome) => Ok(Proposed {
                    index: resp.log_id.index,
                    outcome,
                }),
                None => Err(ProposeError::Unavailable(
                    "a command applied without an outcome".into(),
                )),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader {
                    leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
                })
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(ProposeError::Indeterminate)
            }
            Err(RaftError::APIError(e)) => Err(ProposeError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ProposeError::Unavailable(e.to_string())),
        }
    }

    /// Waits until this node has applied everything committed before the call, confirmed by a
    /// quorum (a read-index round): a read after it is linearizable.
    pub async fn linearize(&self) -> Result<u64, ProposeError> {
        match self
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
        {
            Ok(read) => Ok(read.index()),
            Err(RaftError::APIError(openraft::errors::LinearizableReadError::ForwardToLeader(
                f,
            ))) => Err(ProposeError::NotLeader {
                leader: f.leader_id.zip(f.leader_node.map(|n| n.addr)),
            }),
            Err(RaftError::APIError(e)) => Err(ProposeError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ProposeError::Unavailable(e.to_string())),
        }
    }

    /// Runs `f` against the applied registry. Never call it across an `.await`.
    pub fn read<R>(&self, f: impl FnOnce(&Registry) -> R) -> R {
        self.sm.read(f)
    }

    /// Whether this node currently leads (as of the last metrics change).
    pub fn is_leader(&self) -> bool {
        self.cached.load().role == "Leader"
    }

    /// A receiver of `Some(term)` while this node leads in that term, `None` otherwise.
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        let leading = |m: &openraft::RaftMetrics<TypeConfig>| {
            (m.state == ServerState::Leader).then_some(m.current_term)
        };
        let mut metrics = self.raft.metrics();
        let (tx, rx) = tokio::sync::watch::channel(leading(&metrics.borrow_watched()));
        tokio::spawn(async move {
            loop {
                let now = leading(&metrics.borrow_watched());
                tx.send_if_modified(|v| std::mem::replace(v, now) != now);
                if metrics.changed().await.is_err() || tx.is_closed() {
                    break;
                }
            }
        });
        rx
    }

    /// Role, leader, term, progress and members, as of the last metrics change (cheap).
    pub fn cached_status(&self) -> Arc<ClusterStatus> {
        self.cached.load_full()
    }

    /// Role, leader, term, progress and members, now.
    pub fn status(&self) -> ClusterStatus {
        status_of(self.node_id, &self.raft.metrics().borrow_watched())
    }

    /// Forces a snapshot now (and the purge that follows it).
    pub async fn snapshot(&self) -> Result<(), String> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| e.to_string())
    }

    /// Stops Raft; pending proposals fail.
    pub async fn shutdown(&self) {
        self.refresher.abort();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
    }
}

fn status_of(node_id: u64, m: &openraft::RaftMetrics<TypeConfig>) -> ClusterStatus {
    let voters: std::collections::BTreeSet<u64> = m.membership_config.voter_ids().collect();
    let members: Vec<Member> = m
        .membership_config
        .nodes()
        .map(|(id, node)| Member {
            id: *id,
            addr: node.addr.clone(),
            voter: voters.contains(id),
        })
        .collect();
    let leader_addr = m.current_leader.and_then(|l| {
        members
            .iter()
            .find(|mem| mem.id == l)
            .map(|mem| mem.addr.clone())
    });
    // Like Consul's X-Consul-LastContact: 0 on the leader itself. Followers learn theirs
    // with multi-node clustering; until then it is unknown there.
    let last_contact_ms = (m.state == ServerState::Leader).then_some(0);
    ClusterStatus {
        node_id,
        role: format!("{:?}", m.state),
        leader_id: m.current_leader,
        leader_addr,
        term: m.current_term,
        last_log_index: m.last_log_index.unwrap_or(0),
        last_applied: m.last_applied.map_or(0, |l| l.index),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        last_contact_ms,
        members,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Submits writes to the store and waits until they are durable.
async fn durable(store: &Store, writes: Vec<muster_store::Write>) -> Result<(), std::io::Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store.submit(
        writes,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.await.map_err(io_err)?.map_err(io_err)
}

fn io_err(e: impl fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}
