//! Command-line definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Muster: service discovery with a Raft-replicated registry.
#[derive(Parser, Debug)]
#[command(name = "muster", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Server to talk to (operator commands).
    #[arg(
        long,
        global = true,
        env = "MUSTER_ADDR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub(crate) addr: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run a server (a one-node cluster with its data under ./muster-data by default).
    Server(Box<ServerArgs>),
    /// Register (or re-register) an instance.
    Register(RegisterArgs),
    /// Deregister an instance.
    Deregister {
        /// Instance id.
        id: String,
    },
    /// Take an instance out of rotation (DRAINING).
    Drain {
        /// Instance id.
        id: String,
        /// Why (shown as statusReason).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Put a drained instance back (HEALTHY if ready).
    Undrain {
        /// Instance id.
        id: String,
        /// Why (shown as statusReason).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Renew an instance's lease once.
    Heartbeat {
        /// Instance id.
        id: String,
        /// Report readiness.
        #[arg(long)]
        ready: Option<bool>,
    },
    /// List services, or one service's instances.
    Ls(LsArgs),
    /// Show one instance.
    Get {
        /// Instance id.
        id: String,
    },
    /// Show or change the cluster's membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Follow changes to services (Server-Sent Events) until interrupted.
    Watch {
        /// Services to follow.
        #[arg(required = true)]
        services: Vec<String>,
        /// Resume after this index.
        #[arg(long)]
        index: Option<u64>,
    },
}

#[derive(Args, Debug)]
pub(crate) struct RegisterArgs {
    /// Service name.
    #[arg(long)]
    pub(crate) service: String,
    /// Instance id (unique).
    #[arg(long)]
    pub(crate) id: String,
    /// IP or host name.
    #[arg(long)]
    pub(crate) host: String,
    /// Port.
    #[arg(long)]
    pub(crate) port: i64,
    /// Zone.
    #[arg(long)]
    pub(crate) zone: Option<String>,
    /// Region.
    #[arg(long)]
    pub(crate) region: Option<String>,
    /// Version.
    #[arg(long)]
    pub(crate) version_label: Option<String>,
    /// Weight (0-10000).
    #[arg(long)]
    pub(crate) weight: Option<i64>,
    /// Deployment group, e.g. canary.
    #[arg(long)]
    pub(crate) group: Option<String>,
    /// Protocol, e.g. http.
    #[arg(long)]
    pub(crate) protocol: Option<String>,
    /// Tag (repeatable).
    #[arg(long = "tag")]
    pub(crate) tags: Vec<String>,
    /// Metadata `key=value` (repeatable).
    #[arg(long = "meta")]
    pub(crate) metadata: Vec<String>,
    /// HTTP readiness path.
    #[arg(long)]
    pub(crate) health_endpoint: Option<String>,
    /// HTTP liveness path: when it fails, the instance expires.
    #[arg(long)]
    pub(crate) liveness_endpoint: Option<String>,
    /// Lease TTL, e.g. 30s.
    #[arg(long)]
    pub(crate) ttl: Option<String>,
    /// Start HEALTHY (only without a check).
    #[arg(long)]
    pub(crate) healthy: bool,
}

#[derive(Args, Debug)]
pub(crate) struct LsArgs {
    /// Service (omit to list services).
    pub(crate) service: Option<String>,
    /// healthy (default), any, or a status.
    #[arg(long)]
    pub(crate) status: Option<String>,
    /// Zone filter.
    #[arg(long)]
    pub(crate) zone: Option<String>,
    /// Region filter.
    #[arg(long)]
    pub(crate) region: Option<String>,
    /// Deployment group filter.
    #[arg(long)]
    pub(crate) group: Option<String>,
    /// Tag filter (repeatable; all must match).
    #[arg(long = "tag")]
    pub(crate) tags: Vec<String>,
    /// Version filter.
    #[arg(long)]
    pub(crate) version_label: Option<String>,
}

/// Server settings; each also reads `MUSTER_<NAME>` and the TOML file given with `--config`.
/// Precedence: flag, then environment, then file, then default.
#[derive(Args, Debug, Default)]
pub(crate) struct ServerArgs {
    /// TOML configuration file.
    #[arg(long, env = "MUSTER_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Raft node id.
    #[arg(long, env = "MUSTER_NODE_ID")]
    pub(crate) node_id: Option<u64>,
    /// Data directory [default: muster-data].
    #[arg(long, env = "MUSTER_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:7070].
    #[arg(long, env = "MUSTER_HTTP_ADDR")]
    pub(crate) http_addr: Option<std::net::SocketAddr>,
    /// Address advertised to peers and clients.
    #[arg(long, env = "MUSTER_ADVERTISE_ADDR")]
    pub(crate) advertise_addr: Option<String>,
    /// Voters of a new cluster, this node included: id=url,id=url,...
    #[arg(long, env = "MUSTER_PEERS", value_delimiter = ',')]
    pub(crate) peers: Option<Vec<String>>,
    /// Join an existing cluster through this member's URL.
    #[arg(long, env = "MUSTER_JOIN")]
    pub(crate) join: Option<String>,
    /// Longest a write may take to commit, e.g. 5s.
    #[arg(long, env = "MUSTER_WRITE_TIMEOUT")]
    pub(crate) write_timeout: Option<String>,
    /// Share of leases (0-1] that may go silent at once before their expiry is held.
    #[arg(long, env = "MUSTER_EXPIRY_PROTECTION_THRESHOLD")]
    pub(crate) expiry_protection_threshold: Option<f64>,
    /// The registry-wide protection test applies from this many leases.
    #[arg(long, env = "MUSTER_EXPIRY_PROTECTION_MIN_LEASES")]
    pub(crate) expiry_protection_min_leases: Option<usize>,
    /// Longest mass-expiry protection holds, e.g. 5m.
    #[arg(long, env = "MUSTER_EXPIRY_PROTECTION_MAX")]
    pub(crate) expiry_protection_max: Option<String>,
    /// Readiness changes within the flap window that make an instance flapping.
    #[arg(long, env = "MUSTER_FLAP_MAX_CHANGES")]
    pub(crate) flap_max_changes: Option<u32>,
    /// The flap-counting window, e.g. 60s.
    #[arg(long, env = "MUSTER_FLAP_WINDOW")]
    pub(crate) flap_window: Option<String>,
    /// How long a flapping instance is held out, e.g. 60s.
    #[arg(long, env = "MUSTER_FLAP_COOLDOWN")]
    pub(crate) flap_cooldown: Option<String>,
    /// Most instances in the registry.
    #[arg(long, env = "MUSTER_MAX_INSTANCES")]
    pub(crate) max_instances: Option<u32>,
    /// Most instances per service.
    #[arg(long, env = "MUSTER_MAX_INSTANCES_PER_SERVICE")]
    pub(crate) max_instances_per_service: Option<u32>,
    /// Largest request body in bytes.
    #[arg(long, env = "MUSTER_MAX_BODY_BYTES")]
    pub(crate) max_body_bytes: Option<usize>,
    /// Events kept per service for watch resumption.
    #[arg(long, env = "MUSTER_WATCH_HISTORY")]
    pub(crate) watch_history: Option<usize>,
    /// Snapshot after this many log entries (or, when more, as many as the registry held
    /// instances at the last snapshot).
    #[arg(long, env = "MUSTER_SNAPSHOT_EVERY")]
    pub(crate) snapshot_every: Option<u64>,
    /// Log entries kept behind a snapshot.
    #[arg(long, env = "MUSTER_KEEP_BEHIND_SNAPSHOT")]
    pub(crate) keep_behind_snapshot: Option<u64>,
    /// Raft heartbeat interval, e.g. 50ms.
    #[arg(long, env = "MUSTER_RAFT_HEARTBEAT_INTERVAL")]
    pub(crate) raft_heartbeat_interval: Option<String>,
    /// Raft election timeout lower bound.
    #[arg(long, env = "MUSTER_RAFT_ELECTION_TIMEOUT_MIN")]
    pub(crate) raft_election_timeout_min: Option<String>,
    /// Raft election timeout upper bound.
    #[arg(long, env = "MUSTER_RAFT_ELECTION_TIMEOUT_MAX")]
    pub(crate) raft_election_timeout_max: Option<String>,
    /// Log filter, e.g. info or muster_server=debug.
    #[arg(long, env = "MUSTER_LOG")]
    pub(crate) log: Option<String>,
    /// text or json.
    #[arg(long, env = "MUSTER_LOG_FORMAT")]
    pub(crate) log_format: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ClusterCommand {
    /// Role, leader, term, progress and members of the node at --addr.
    Status,
    /// Add a node: it joins as a learner, catches up, then becomes a voter.
    Add {
        /// Node id.
        #[arg(long)]
        id: u64,
        /// The node's advertised URL.
        #[arg(long)]
        addr: String,
        /// Keep it a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster.
    Remove {
        /// Node id.
        id: u64,
    },
}
