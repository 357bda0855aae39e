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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use muster_core::{Applied, ApplyError, Command, Event, Instance, Registry};
use muster_store::Store;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Instant as _, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};

pub(crate) use log_store::LogStore;
pub(crate) use state_machine::{SnapshotData, StateMachine};

/// Tokio, with openraft's randomness (election timeouts, tick phases) drawn from a seeded
/// generator: a random seed in production, a fixed one in a simulation, which can then replay.
pub type Runtime =
    openraft::rt::deterministic_rng::DeterministicRng<openraft_rt_tokio::TokioRuntime>;

openraft::declare_raft_types!(
    /// Muster's Raft type configuration.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        AsyncRuntime = Runtime,
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

/// Raft timing, membership and log-retention settings.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    /// This node's id.
    pub node_id: u64,
    /// Address peers and clients reach this node at (for the membership record).
    pub advertise_addr: String,
    /// Every voter of a new cluster, this node included: `id → address`. Empty: a one-node
    /// cluster of this node alone.
    pub peers: BTreeMap<u64, String>,
    /// Start without initializing: this node waits to be added to an existing cluster.
    pub joining: bool,
    /// Leader heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Lower bound of the election timeout.
    pub election_timeout_min: Duration,
    /// Upper bound of the election timeout.
    pub election_timeout_max: Duration,
    /// Take a snapshot after this many applied entries, or as many as the registry held
    /// instances at the last snapshot when that is more (`SnapshotPace`).
    pub snapshot_every: u64,
    /// Entries kept behind a snapshot before purging (generous: see openraft issue #2116).
    pub keep_behind_snapshot: u64,
    /// Longest a write may take to commit before it is answered as timed out.
    pub write_timeout: Duration,
    /// Seed of openraft's randomness; `None` draws one from the OS (production).
    pub seed: Option<u64>,
    /// How Raft messages travel.
    pub transport: Transport,
}

/// How Raft messages travel between nodes.
#[derive(Clone, Debug)]
pub enum Transport {
    /// HTTP to each member's advertised address.
    Http,
    /// The in-process network of a simulation.
    #[cfg(feature = "sim")]
    Sim(Arc<crate::sim::SimNet>),
}

/// Why a proposal (or a consistent read) did not go through.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// No leader is known (an election is under way, or this node is cut off).
    #[error("no leader is known: an election is under way or this node cannot reach a quorum")]
    NoLeader,
    /// The entry was appended but may have been overwritten, or did not commit in time: its
    /// outcome is unknown.
    #[error("the write's outcome is unknown: {0}")]
    Indeterminate(String),
    /// Raft has stopped (storage failure or shutdown), or the leader could not be reached.
    #[error("consensus is unavailable: {0}")]
    Unavailable(String),
    /// The leader this node knows could not be connected to (it may have died; an election
    /// follows): nothing was delivered.
    #[error("{0}")]
    LeaderUnreachable(String),
    /// The request was refused (e.g. a membership change that is not allowed).
    #[error("{0}")]
    Refused(String),
}

/// A `ProposeError` on the wire between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireError {
    /// `no_leader`, `indeterminate`, `unavailable` or `refused`.
    pub code: String,
    /// Detail.
    pub message: String,
}

impl From<&ProposeError> for WireError {
    fn from(e: &ProposeError) -> Self {
        let code = match e {
            ProposeError::NoLeader => "no_leader",
            ProposeError::Indeterminate(_) => "indeterminate",
            ProposeError::Refused(_) => "refused",
            _ => "unavailable",
        };
        WireError {
            code: code.into(),
            message: e.to_string(),
        }
    }
}

impl From<WireError> for ProposeError {
    fn from(e: WireError) -> Self {
        match e.code.as_str() {
            "no_leader" => ProposeError::NoLeader,
            "indeterminate" => ProposeError::Indeterminate(e.message),
            "refused" => ProposeError::Refused(e.message),
            _ => ProposeError::Unavailable(e.message),
        }
    }
}

/// A committed proposal: its log index and outcome.
#[derive(Debug, Serialize, Deserialize)]
pub struct Proposed {
    /// Raft log index (the registry index after it applied).
    pub index: u64,
    /// What the state machine did.
    pub outcome: Result<Applied, ApplyError>,
}

/// A membership change.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "op")]
pub enum MemberChange {
    /// Add a node: as a learner, caught up, then (if `voter`) promoted.
    Add {
        /// Node id.
        id: u64,
        /// Its advertised address.
        addr: String,
        /// Promote to voter once caught up.
        voter: bool,
    },
    /// Remove a node (voter or learner).
    Remove {
        /// Node id.
        id: u64,
    },
}

/// The Raft role and progress of this node, for `/v1/cluster`, headers and metrics.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    /// Milliseconds since this node last heard from the leader (0 on the leader; null when it
    /// never has).
    pub last_contact_ms: Option<u64>,
    /// Voting members and learners.
    pub members: Vec<Member>,
}

/// One cluster member.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Address.
    pub addr: String,
    /// Whether it votes.
    pub voter: bool,
}

/// A follower's confirmation round.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConfirmRequest {
    /// The follower's node id.
    #[serde(default)]
    pub from: u64,
}

/// A leader's answer to a follower's confirmation round.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Confirmation {
    /// The read index.
    pub index: u64,
    /// The members that run active checks ([`RaftNode::checkers`]).
    #[serde(default)]
    pub checkers: Vec<u64>,
}

/// A running Raft node with the registry as its state machine.
pub struct RaftNode {
    raft: Raft<TypeConfig, StateMachine>,
    sm: StateMachine,
    /// The log Raft writes to (shared): closed at shutdown.
    log: LogStore,
    node_id: u64,
    /// The latest status, refreshed on every metrics change, for hot paths.
    cached: Arc<arc_swap::ArcSwap<ClusterStatus>>,
    /// Follows Raft's metrics: refreshes `cached`, and asks for snapshots (`SnapshotPace`).
    refresher: tokio::task::JoinHandle<()>,
    /// Monotonic milliseconds (since `epoch`) when a follower last had its leader confirmed by
    /// a quorum (a read-index round through it succeeded); `u64::MAX` for never.
    last_contact: AtomicU64,
    /// A leader confirmed longer ago than this is not reported as known (headers, `/readyz`).
    stale_after: Duration,
    /// The members that run active checks, as the leader last said in a confirmation round
    /// (followers only; see [`RaftNode::checkers`]).
    checkers: arc_swap::ArcSwap<Vec<u64>>,
    /// On the leader: when each follower last completed a confirmation round (so it can reach
    /// the leader, not only hear from it).
    confirmed_by: std::sync::Mutex<std::collections::HashMap<u64, tokio::time::Instant>>,
    epoch: tokio::time::Instant,
    /// Client for forwarding to the leader.
    http: reqwest::Client,
    /// Seeds for openraft's randomness in work started from our tasks (see [`Runtime`]).
    seeds: AtomicU64,
    /// How recently a quorum must have confirmed this leader for it to renew leases.
    lease_window: Duration,
    /// Check a new member's node id at its address first (off on the simulated network).
    verify_members: bool,
    write_timeout: Duration,
}

/// When to take a snapshot: once the log since the last one holds `every` entries, or as many
/// entries as the registry held instances when that snapshot was taken (or holds now, if
/// fewer), whichever is more. Encoding a snapshot costs in proportion to the registry, so this
/// keeps its cost per entry about constant (openraft's `LogsSinceLast(every)` re-encodes a
/// registry of 100,000 instances every 10,000 entries: ten instances per entry). The log then
/// holds at most as many entries as the registry instances, beyond `every`: a restart replays
/// about as much as it loads.
#[derive(Debug)]
struct SnapshotPace {
    every: u64,
    /// The snapshot index last seen, and the registry's size when it was seen.
    snapshot: Option<u64>,
    size_then: u64,
    /// The applied index a snapshot was last asked at. openraft builds one at a time and
    /// drops a request that comes while it builds, so one asked for and not taken is asked for
    /// again `every` entries later.
    asked_at: u64,
}

impl SnapshotPace {
    fn new(every: u64, size: usize) -> Self {
        SnapshotPace {
            every,
            snapshot: None,
            size_then: size as u64,
            asked_at: 0,
        }
    }

    /// Whether to ask for a snapshot now; `size` is the registry's current size (read when a
    /// new snapshot appears, and once `every` entries followed the last one).
    fn due(&mut self, applied: u64, snapshot: Option<u64>, size: impl Fn() -> usize) -> bool {
        if snapshot != self.snapshot {
            self.snapshot = snapshot;
            self.size_then = size() as u64;
        }
        let taken = snapshot.unwrap_or(0);
        let due = if self.asked_at > taken {
            applied >= self.asked_at.saturating_add(self.every)
        } else {
            applied >= taken.saturating_add(self.every)
                && applied >= taken.saturating_add(self.size_then.min(size() as u64))
        };
        if due {
            self.asked_at = applied;
        }
        due
    }
}

/// Longest a new member may take to catch up before it is promoted.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a write waiting out an election looks for a leader again.
const ELECTION_POLL: Duration = Duration::from_millis(25);

/// Path of the forwarding endpoints (`/internal/propose`, `/internal/read-index`,
/// `/internal/members`).
pub const INTERNAL_PREFIX: &str = "/internal";

impl RaftNode {
    /// Opens the log and snapshot from `store`, starts Raft and, on a fresh data directory,
    /// initializes the cluster (this node alone, or every node of `peers`) unless it is joining
    /// one. The local log is re-applied before it returns; catching up with the cluster needs
    /// peers to reach this node, so it happens once its HTTP server runs
    /// ([`RaftNode::wait_recovered`]).
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
            // Snapshots are triggered by the task that follows the metrics (`SnapshotPace`).
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: settings.keep_behind_snapshot,
            purge_batch_size: 256,
            ..Default::default()
        }
        .validate()
        .map_err(|e| format!("invalid raft settings: {e}"))?;
        let log =
            LogStore::open(store.clone()).map_err(|e| format!("cannot open the raft log: {e}"))?;
        let log_handle = log.clone();
        let sm = StateMachine::new(store, observer);
        let seed = settings.seed.unwrap_or_else(rand::random);
        let network = match &settings.transport {
            Transport::Http => network::Network::http()?,
            #[cfg(feature = "sim")]
            Transport::Sim(net) => network::Network::sim(net.clone(), settings.node_id),
        };
        let raft = Runtime::scope(
            seed,
            Raft::new(settings.node_id, Arc::new(config), network, log, sm.clone()),
        )
        .await
        .map_err(|e| format!("cannot start raft: {e}"))?;
        let initialized = Runtime::scope(seed ^ 1, raft.is_initialized())
            .await
            .map_err(|e| format!("raft failed: {e}"))?;
        if !initialized && !settings.joining {
            let members: BTreeMap<u64, BasicNode> = if settings.peers.is_empty() {
                BTreeMap::from([(settings.node_id, BasicNode::new(&settings.advertise_addr))])
            } else {
                settings
                    .peers
                    .iter()
                    .map(|(id, addr)| (*id, BasicNode::new(addr)))
                    .collect()
            };
            let n = members.len();
            Runtime::scope(seed ^ 2, raft.initialize(members))
                .await
                .map_err(|e| format!("cannot initialize the cluster: {e}"))?;
            tracing::info!(
                node_id = settings.node_id,
                voters = n,
                "initialized a new cluster"
            );
        }
        let node_id = settings.node_id;
        let cached = Arc::new(arc_swap::ArcSwap::from_pointee(status_of(
            node_id,
            &raft.metrics().borrow_watched(),
        )));
        let refresher = {
            let (cached, mut metrics) = (cached.clone(), raft.metrics());
            let (raft, sm) = (raft.clone(), sm.clone());
            let mut pace = SnapshotPace::new(settings.snapshot_every, sm.read(|r| r.len()));
            let mut seeds = seed ^ 3;
            tokio::spawn(async move {
                while metrics.changed().await.is_ok() {
                    let status = status_of(node_id, &metrics.borrow_watched());
                    let due = pace.due(status.last_applied, status.snapshot_index, || {
                        sm.read(|r| r.len())
                    });
                    cached.store(Arc::new(status));
                    if due {
                        seeds = seeds.wrapping_add(0x9e37_79b9_7f4a_7c15);
                        if let Err(e) = Runtime::scope(seeds, raft.trigger().snapshot()).await {
                            tracing::warn!(error = %e, "cannot trigger a snapshot");
                        }
                    }
                }
            })
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the forwarding client: {e}"))?;
        Ok(RaftNode {
            raft,
            sm,
            log: log_handle,
            node_id,
            cached,
            refresher,
            last_contact: AtomicU64::new(u64::MAX),
            checkers: arc_swap::ArcSwap::from_pointee(Vec::new()),
            confirmed_by: std::sync::Mutex::default(),
            epoch: tokio::time::Instant::now(),
            http,
            write_timeout: settings.write_timeout,
            seeds: AtomicU64::new(seed.wrapping_mul(3)),
            lease_window: settings.election_timeout_min,
            stale_after: settings.election_timeout_max * 3,
            verify_members: matches!(settings.transport, Transport::Http),
        })
    }

    /// Waits until this node has applied what the cluster committed before it started (a new
    /// leader's first entry included), at most `timeout`.
    pub async fn wait_recovered(&self, timeout: Duration) -> Result<(), String> {
        self.scoped(self.raft.wait_for_recovery(Some(timeout)))
            .await
            .map(|_| ())
            .map_err(|e| format!("raft did not recover its applied state: {e}"))
    }

    /// Runs `f` with a seed for openraft's randomness: anything openraft starts from a task of
    /// ours draws from it (every such call goes through here).
    fn scoped<F: std::future::Future>(&self, f: F) -> impl std::future::Future<Output = F::Output> {
        let seed = self
            .seeds
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        Runtime::scope(seed, f)
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Proposes a command and waits until it is committed and applied, forwarding it to the
    /// leader when this node does not lead. While no leader is known (an election is under
    /// way), it keeps trying until the write timeout.
    pub async fn propose(&self, cmd: Command) -> Result<Proposed, ProposeError> {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        loop {
            match self.propose_once(cmd.clone(), deadline).await {
                Err(ProposeError::NoLeader | ProposeError::LeaderUnreachable(_))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(ELECTION_POLL.min(deadline - tokio::time::Instant::now()))
                        .await;
                }
                other => return other,
            }
        }
    }

    async fn propose_once(
        &self,
        cmd: Command,
        deadline: tokio::time::Instant,
    ) -> Result<Proposed, ProposeError> {
        let written = self.write_until(Request(cmd.clone()), deadline).await?;
        match written {
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => match f.leader_node {
                Some(leader) if f.leader_id != Some(self.node_id) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let proposed: Proposed = self
                        .forward_within(
                            &leader.addr,
                            "propose",
                            &Request(cmd),
                            left + Duration::from_millis(200),
                        )
                        .await?;
                    // Read-your-write on this node too: wait (within the deadline) until it has
                    // applied what the leader answered for.
                    let _ = tokio::time::timeout_at(
                        deadline,
                        self.raft
                            .wait(None)
                            .applied_index_at_least(Some(proposed.index), "forwarded write"),
                    )
                    .await;
                    Ok(proposed)
                }
                _ => Err(ProposeError::NoLeader),
            },
            other => Self::outcome(other),
        }
    }

    /// Proposes on this node only, never forwarding: for decisions only this node's leadership
    /// may make (expiries), and for the receiving end of a forwarded proposal.
    pub async fn propose_local(&self, cmd: Command) -> Result<Proposed, ProposeError> {
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        Self::outcome(self.write_until(Request(cmd), deadline).await?)
    }

    /// `client_write` on this node, given up (as indeterminate) at `deadline`.
    async fn write_until(
        &self,
        request: Request,
        deadline: tokio::time::Instant,
    ) -> Result<WriteResult, ProposeError> {
        tokio::time::timeout_at(deadline, self.scoped(self.raft.client_write(request)))
            .await
            .map_err(|_| {
                ProposeError::Indeterminate(format!(
                    "the write did not commit within {:?}",
                    self.write_timeout
                ))
            })
    }

    fn outcome(written: WriteResult) -> Result<Proposed, ProposeError> {
        match written {
            Ok(resp) => match resp.data.0 {
                Some(outcome) => Ok(Proposed {
                    index: resp.log_id.index,
                    outcome,
                }),
                None => Err(ProposeError::Unavailable(
                    "a command applied without an outcome".into(),
                )),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(ProposeError::NoLeader)
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(ProposeError::Indeterminate(
                    "leadership changed while the write was in flight".into(),
                ))
            }
            Err(RaftError::APIError(e)) => Err(ProposeError::Unavailable(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(ProposeError::Unavailable(e.to_string())),
        }
    }

    /// POSTs `body` to `<leader>/internal/<what>` and decodes `Result<T, WireError>`.
    pub async fn forward<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        leader: &str,
        what: &str,
        body: &B,
    ) -> Result<T, ProposeError> {
        self.forward_within(
            leader,
            what,
            body,
            self.write_timeout + Duration::from_secs(1),
        )
        .await
    }

    /// [`RaftNode::forward`] with its own time limit.
    pub async fn forward_within<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        leader: &str,
        what: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ProposeError> {
        let body =
            serde_json::to_vec(body).map_err(|e| ProposeError::Unavailable(e.to_string()))?;
        self.forward_bytes(leader, what, body, timeout).await
    }

    /// [`RaftNode::forward_within`] with a body already encoded.
    pub async fn forward_bytes<T: serde::de::DeserializeOwned>(
        &self,
        leader: &str,
        what: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<T, ProposeError> {
        let url = format!("{}{INTERNAL_PREFIX}/{what}", leader.trim_end_matches('/'));
        let resp = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    ProposeError::Indeterminate(format!(
                        "the leader at {leader} did not answer in time"
                    ))
                } else if e.is_connect() {
                    // Nothing was delivered: safe to send again once a leader is known.
                    ProposeError::LeaderUnreachable(format!(
                        "cannot reach the leader at {leader}: {e}"
                    ))
                } else {
                    // The request may have been delivered (and acted on) before this failed.
                    ProposeError::Indeterminate(format!(
                        "the exchange with the leader at {leader} broke: {e}"
                    ))
                }
            })?;
        let bytes = resp.bytes().await.map_err(|e| {
            ProposeError::Indeterminate(format!("the leader's answer broke off: {e}"))
        })?;
        match serde_json::from_slice::<Result<T, WireError>>(&bytes) {
            Ok(r) => r.map_err(ProposeError::from),
            Err(e) => Err(ProposeError::Unavailable(format!(
                "the leader at {leader} answered unreadably: {e}"
            ))),
        }
    }

    /// Waits until this node has applied everything committed before the call, confirmed by a
    /// quorum (a read-index round, asked of the leader when this node does not lead): a read
    /// after it is linearizable. Returns the read index.
    pub async fn linearize(&self) -> Result<u64, ProposeError> {
        let index = match self
            .scoped(
                self.raft
                    .ensure_linearizable(openraft::ReadPolicy::ReadIndex),
            )
            .await
        {
            Ok(read) => return Ok(read.index()),
            Err(RaftError::APIError(openraft::errors::LinearizableReadError::ForwardToLeader(
                f,
            ))) => match f.leader_node {
                Some(leader) if f.leader_id != Some(self.node_id) => {
                    self.forward::<_, u64>(&leader.addr, "read-index", &())
                        .await?
                }
                _ => return Err(ProposeError::NoLeader),
            },
            // A leader without a quorum behind it cannot serve a consistent read.
            Err(RaftError::APIError(openraft::errors::LinearizableReadError::QuorumNotEnough(
                _,
            ))) => {
                return Err(ProposeError::NoLeader);
            }
            Err(RaftError::Fatal(e)) => return Err(ProposeError::Unavailable(e.to_string())),
        };
        self.scoped(
            self.raft
                .wait(Some(self.write_timeout))
                .applied_index_at_least(Some(index), "consistent read"),
        )
        .await
        .map_err(|e| {
            ProposeError::Unavailable(format!("did not catch up to the read index {index}: {e}"))
        })?;
        Ok(index)
    }

    /// The receiving end of a forwarded read-index request.
    pub async fn read_index_here(&self) -> Result<u64, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NoLeader);
        }
        self.linearize().await
    }

    /// Adds or removes a member, forwarding to the leader when this node does not lead.
    pub async fn change_members(
        &self,
        change: MemberChange,
    ) -> Result<ClusterStatus, ProposeError> {
        if !self.is_leader() {
            let leader = self
                .cached_status()
                .leader_addr
                .clone()
                .ok_or(ProposeError::NoLeader)?;
            // The leader may take MEMBER_TIMEOUT to catch a learner up, then as long again
            // waiting out a change in progress.
            return self
                .forward_within(
                    &leader,
                    "members",
                    &change,
                    MEMBER_TIMEOUT * 2 + Duration::from_secs(5),
                )
                .await;
        }
        self.change_members_here(change).await
    }

    /// Applies a membership change on this node, which must lead.
    pub async fn change_members_here(
        &self,
        change: MemberChange,
    ) -> Result<ClusterStatus, ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NoLeader);
        }
        let refused = |e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => ProposeError::NoLeader,
            RaftError::APIError(e) => ProposeError::Refused(e.to_string()),
            RaftError::Fatal(e) => ProposeError::Unavailable(e.to_string()),
        };
        match change {
            MemberChange::Add { id, addr, voter } => {
                if self.verify_members {
                    self.verify_member(id, &addr).await?;
                }
                // Blocks until the learner has caught up (by snapshot when it is far behind),
                // for at most MEMBER_TIMEOUT; it stays a learner if that runs out.
                tokio::time::timeout(MEMBER_TIMEOUT, self.scoped(self.raft.add_learner(id, BasicNode::new(&addr), true)))
                    .await
                    .map_err(|_| {
                        ProposeError::Indeterminate(format!(
                            "node {id} was added as a learner but did not catch up within {MEMBER_TIMEOUT:?}; add it again to promote it"
                        ))
                    })?
                    .map_err(refused)?;
                if voter {
                    let ids = std::collections::BTreeSet::from([id]);
                    self.change_membership(openraft::ChangeMembers::AddVoterIds(ids))
                        .await
                        .map_err(refused)?;
                }
                tracing::info!(id, %addr, voter, "member added");
            }
            MemberChange::Remove { id } => {
                let status = self.status();
                let member = status.members.iter().find(|m| m.id == id);
                let Some(member) = member else {
                    return Err(ProposeError::Refused(format!("node {id} is not a member")));
                };
                let ids = std::collections::BTreeSet::from([id]);
                let change = if member.voter {
                    openraft::ChangeMembers::RemoveVoters(ids)
                } else {
                    openraft::ChangeMembers::RemoveNodes(ids)
                };
                self.change_membership(change).await.map_err(refused)?;
                tracing::info!(id, "member removed");
            }
        }
        Ok(self.status())
    }

    /// `change_membership`, waiting (up to [`MEMBER_TIMEOUT`]) while another change is still
    /// in progress (a member that just joined is promoted in two steps: a removal right after
    /// would otherwise be refused).
    async fn change_membership(
        &self,
        change: openraft::ChangeMembers<u64, BasicNode>,
    ) -> Result<(), RaftError<TypeConfig, ClientWriteError<TypeConfig>>> {
        let deadline = tokio::time::Instant::now() + MEMBER_TIMEOUT;
        loop {
            match self
                .scoped(self.raft.change_membership(change.clone(), false))
                .await
            {
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    openraft::errors::ChangeMembershipError::InProgress(_),
                ))) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(ELECTION_POLL).await;
                }
                other => return other.map(|_| ()),
            }
        }
    }

    /// Asks the node at `addr` which node it is: adding an address that reaches another node
    /// (or this one) would count one node's votes twice.
    async fn verify_member(&self, id: u64, addr: &str) -> Result<(), ProposeError> {
        let url = format!("{}/v1/cluster", addr.trim_end_matches('/'));
        let refused = |m: String| ProposeError::Refused(m);
        let resp = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| refused(format!("cannot reach node {id} at {addr}: {e}")))?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| refused(format!("node {id} at {addr}: {e}")))?;
        let status: ClusterStatus = serde_json::from_slice(&bytes)
            .map_err(|e| refused(format!("{addr} does not answer like a muster node: {e}")))?;
        if status.node_id != id {
            return Err(refused(format!(
                "{addr} is node {}, not node {id}",
                status.node_id
            )));
        }
        Ok(())
    }

    /// Answers one Raft RPC meant for node `to` (refused unless that is this node): `what` is
    /// `append`, `vote` or `snapshot`; the answer is the JSON of `Result<response, String>`.
    pub async fn handle_rpc(&self, to: u64, what: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        if to != self.node_id {
            return Err(format!(
                "this is node {}, not node {to}: a member's advertised address reaches the wrong node",
                self.node_id
            ));
        }
        fn answer<T: Serialize, E: fmt::Display>(r: Result<T, E>) -> Result<Vec<u8>, String> {
            serde_json::to_vec(&r.map_err(|e| e.to_string())).map_err(|e| e.to_string())
        }
        match what {
            "append" => {
                let rpc: openraft::raft::AppendEntriesRequest<TypeConfig> =
                    serde_json::from_slice(body).map_err(|e| format!("bad append request: {e}"))?;
                answer(self.scoped(self.raft.append_entries(rpc)).await)
            }
            "vote" => {
                let rpc: openraft::raft::VoteRequest<TypeConfig> =
                    serde_json::from_slice(body).map_err(|e| format!("bad vote request: {e}"))?;
                answer(self.scoped(self.raft.vote(rpc)).await)
            }
            "snapshot" => {
                let (vote, snapshot) = decode_snapshot_rpc(body)?;
                answer(
                    self.scoped(self.raft.install_full_snapshot(vote, snapshot))
                        .await,
                )
            }
            other => Err(format!("unknown raft rpc {other:?}")),
        }
    }

    fn mono_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `f` against the applied registry. Never call it across an `.await`.
    pub fn read<R>(&self, f: impl FnOnce(&Registry) -> R) -> R {
        self.sm.read(f)
    }

    /// Whether this node leads and a quorum confirmed it within the shortest election timeout
    /// (a one-voter cluster confirms itself). A leader that cannot say so (just restored after a
    /// restart, or cut off from its followers) may already have been replaced: it must not
    /// acknowledge what only the real leader can promise, such as a lease renewal.
    pub fn leads_with_quorum(&self) -> bool {
        self.leading_term().is_some()
    }

    /// The term this node leads in, if it may act as leader for leases now: it leads, a quorum
    /// confirmed it within the shortest election timeout (a one-voter cluster confirms itself),
    /// and it has applied an entry of its own term, so that every entry of earlier leaders
    /// (an expiry one of them decided included) is applied before it acknowledges anything.
    pub fn leading_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        if m.state != ServerState::Leader {
            return None;
        }
        if m.last_applied.map(|l| l.leader_id.term) != Some(m.current_term) {
            return None;
        }
        let mut voters = m.membership_config.voter_ids();
        let alone = voters.next() == Some(self.node_id) && voters.next().is_none();
        let confirmed = alone
            || m.last_quorum_acked
                .as_ref()
                .is_some_and(|t| t.elapsed() < self.lease_window);
        confirmed.then_some(m.current_term)
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

    /// Milliseconds since a quorum last confirmed the leader this node follows (on the leader:
    /// since a quorum last acknowledged it; 0 when it is the only voter). `None` if never.
    /// Hearing from a leader is not enough: one cut off from the majority keeps sending.
    pub fn last_contact_ms(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        if m.state == ServerState::Leader {
            let mut voters = m.membership_config.voter_ids();
            if voters.next() == Some(self.node_id) && voters.next().is_none() {
                return Some(0);
            }
            return m
                .last_quorum_acked
                .as_ref()
                .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        }
        let at = self.last_contact.load(Ordering::Acquire);
        (at != u64::MAX).then(|| self.mono_ms().saturating_sub(at))
    }

    /// Whether a leader is known and was confirmed by a quorum lately (`X-Muster-Known-Leader`,
    /// `/readyz`).
    pub fn knows_leader(&self) -> bool {
        self.cached_status().leader_id.is_some()
            && self
                .last_contact_ms()
                .is_some_and(|ms| u128::from(ms) <= self.stale_after.as_millis())
    }

    /// On a follower, confirms its leader every 200 ms (50 ms while unconfirmed) with a
    /// read-index round (which the leader answers only with a quorum behind it), for
    /// [`RaftNode::last_contact_ms`]; the answer also carries the members that run checks
    /// ([`RaftNode::checkers`]). Runs until `shutdown` turns true.
    pub async fn run_prober(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            // Quickly while unconfirmed (after start, after an election), then at ease.
            let confirmed = self.last_contact_ms().is_some_and(|ms| ms < 1_000);
            let every = Duration::from_millis(if confirmed { 200 } else { 50 });
            let status = self.cached_status();
            if status.role != "Leader"
                && let Some(leader) = status.leader_addr.clone()
                && status.leader_id != Some(self.node_id)
            {
                let confirmed = self
                    .forward_within::<_, Confirmation>(
                        &leader,
                        "confirm",
                        &ConfirmRequest { from: self.node_id },
                        self.stale_after,
                    )
                    .await;
                if let Ok(c) = confirmed {
                    self.checkers.store(Arc::new(c.checkers));
                    self.last_contact.store(self.mono_ms(), Ordering::Release);
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// The receiving end of a follower's confirmation round: a read index, and the members
    /// that run checks.
    pub async fn confirm_here(&self, from: u64) -> Result<Confirmation, ProposeError> {
        let index = self.read_index_here().await?;
        self.confirmed_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(from, tokio::time::Instant::now());
        Ok(Confirmation {
            index,
            checkers: self.checkers().map_or_else(Vec::new, |c| c.to_vec()),
        })
    }

    /// The members that run active checks (sorted), or `None` when this node should not run
    /// any now.
    ///
    /// The leader decides: the voters that acknowledged its replication and completed a
    /// confirmation round with it (so they can reach it, and record what they find) within
    /// twice the staleness bound (`3 × election_timeout_max`), itself included. A follower takes the leader's word from
    /// its last confirmation round, and runs none while it has no confirmed leader (what it
    /// found could not be written anyway). A learner runs none.
    pub fn checkers(&self) -> Option<Arc<Vec<u64>>> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        if m.state == ServerState::Leader {
            let recent = self.stale_after * 2;
            let confirmed = self
                .confirmed_by
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let live = |id: &u64| {
                *id == self.node_id
                    || (m
                        .heartbeat
                        .as_ref()
                        .and_then(|h| h.get(id).cloned().flatten())
                        .is_some_and(|at| at.elapsed() < recent)
                        && confirmed.get(id).is_some_and(|at| at.elapsed() < recent))
            };
            let mut ids: Vec<u64> = m.membership_config.voter_ids().filter(live).collect();
            ids.sort_unstable();
            return Some(Arc::new(ids));
        }
        drop(m);
        if !self.knows_leader() {
            return None;
        }
        let ids = self.checkers.load_full();
        ids.contains(&self.node_id).then_some(ids)
    }

    /// Role, leader, term, progress and members, as of the last metrics change (cheap).
    pub fn cached_status(&self) -> Arc<ClusterStatus> {
        self.cached.load_full()
    }

    /// Role, leader, term, progress and members, now.
    pub fn status(&self) -> ClusterStatus {
        let mut status = status_of(self.node_id, &self.raft.metrics().borrow_watched());
        status.last_contact_ms = self.last_contact_ms();
        // openraft's metrics learn of an apply after the client has its answer; the state
        // machine's own index does not lag.
        status.last_applied = status.last_applied.max(self.read(|r| r.index()));
        status
    }

    /// Forces a snapshot now (and the purge that follows it).
    pub async fn snapshot(&self) -> Result<(), String> {
        self.scoped(self.raft.trigger().snapshot())
            .await
            .map_err(|e| e.to_string())
    }

    /// Stops Raft (pending proposals fail), then writes the log's last commit point.
    pub async fn shutdown(&self) {
        self.refresher.abort();
        if let Err(e) = self.scoped(self.raft.shutdown()).await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        self.log.close().await;
    }
}

/// What `client_write` answers.
type WriteResult = Result<
    openraft::raft::ClientWriteResponse<TypeConfig>,
    RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
>;

/// A snapshot as it travels between nodes.
type WireSnapshot = (VoteOf<TypeConfig>, SnapshotOf<TypeConfig, SnapshotData>);

fn decode_snapshot_rpc(body: &[u8]) -> Result<WireSnapshot, String> {
    let bad = || "truncated snapshot request".to_string();
    let len_bytes: [u8; 4] = body
        .get(..4)
        .ok_or_else(bad)?
        .try_into()
        .map_err(|_| bad())?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let header = body.get(4..4 + len).ok_or_else(bad)?;
    let (vote, meta): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>) =
        serde_json::from_slice(header).map_err(|e| format!("bad snapshot header: {e}"))?;
    Ok((
        vote,
        SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: SnapshotData::Bytes(body[4 + len..].to_vec()),
        },
    ))
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
        last_contact_ms: (m.state == ServerState::Leader).then_some(0),
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

#[cfg(test)]
mod tests {
    use super::SnapshotPace;

    #[test]
    fn snapshots_are_paced_by_the_larger_of_every_and_the_registry() {
        // A small registry: one snapshot every `every` entries.
        let mut pace = SnapshotPace::new(100, 0);
        assert!(!pace.due(99, None, || 10));
        assert!(pace.due(100, None, || 10));
        // Asked at 100: not asked again while that snapshot is built...
        assert!(!pace.due(150, None, || 10));
        // ...nor once it exists, until `every` more entries.
        assert!(!pace.due(199, Some(100), || 10));
        assert!(pace.due(200, Some(100), || 10));

        // A registry that grew to 1,000 instances by the snapshot at 200: the next one after
        // 1,000 more entries, not 100.
        let mut pace = SnapshotPace::new(100, 0);
        assert!(!pace.due(1_199, Some(200), || 1_000));
        assert!(pace.due(1_200, Some(200), || 1_000));
        // The size when a snapshot appears paces the next one...
        assert!(!pace.due(1_300, Some(1_200), || 5_000));
        assert!(!pace.due(6_199, Some(1_200), || 5_000));
        assert!(pace.due(6_200, Some(1_200), || 5_000));
        // ...unless the registry shrank since: then its size now.
        assert!(!pace.due(6_250, Some(6_200), || 5_000));
        assert!(pace.due(6_300, Some(6_200), || 10));

        // A request openraft dropped (it was building one) is made again `every` entries later,
        // not a whole registry's worth later.
        let mut pace = SnapshotPace::new(100, 0);
        assert!(pace.due(1_000, Some(500), || 400));
        assert!(!pace.due(1_099, Some(500), || 400));
        assert!(pace.due(1_100, Some(500), || 400));

        // A node that starts with a large registry and no snapshot waits for as many entries.
        let mut pace = SnapshotPace::new(100, 500);
        assert!(!pace.due(499, None, || 500));
        assert!(pace.due(500, None, || 500));
    }
}
