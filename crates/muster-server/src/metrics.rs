//! The server's Prometheus metrics, built from one registry at start-up and passed around as a
//! struct (no global registry).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `service` and `status` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// Service name.
    pub service: String,
    /// Instance status.
    pub status: &'static str,
}

/// `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok`, `unknown` or `expired`.
    pub result: &'static str,
}

/// `type` and `result` labels of a probe.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// `http` or `tcp`.
    pub r#type: &'static str,
    /// `pass` or `fail`.
    pub result: &'static str,
}

/// `type` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// `http` or `tcp`.
    pub r#type: &'static str,
}

/// `to` label of a transition decided by a check.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    /// `ready`, `not_ready`, `flapping`, `dead` or `live`.
    pub to: &'static str,
}

/// `from` and `to` labels of an instance status change.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusChangeLabels {
    /// Status before (`NEW` for a new instance).
    pub from: &'static str,
    /// Status after.
    pub to: &'static str,
}

/// `route` and `method` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Matched route, e.g. `/v1/services/{service}`.
    pub route: String,
    /// HTTP method.
    pub method: String,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// Instances by service and status.
    pub instances: Family<InstanceLabels, Gauge>,
    /// Registrations that created an instance.
    pub registrations: Counter,
    /// Deregistrations.
    pub deregistrations: Counter,
    /// Lease expiries applied.
    pub expirations: Counter,
    /// Heartbeats by result.
    pub heartbeats: Family<ResultLabels, Counter>,
    /// Open watch streams.
    pub watch_subscribers: Gauge,
    /// Blocking queries waiting.
    pub blocking_queries: Gauge,
    /// HTTP request latency by route.
    pub http_latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Last applied Raft index.
    pub raft_applied_index: Gauge<u64, AtomicU64>,
    /// Current Raft term.
    pub raft_term: Gauge<u64, AtomicU64>,
    /// 1 when this node leads.
    pub raft_leader: Gauge,
    /// Storage group commits (one fsync each).
    pub store_commits: Gauge<u64, AtomicU64>,
    /// Raft log entries made durable.
    pub store_entries: Gauge<u64, AtomicU64>,
    /// Leases tracked in memory.
    pub leases: Gauge,
    /// 1 while mass-expiry protection holds expiries.
    pub expiry_protection: Gauge,
    /// Leases silent for over half their TTL (as last assessed).
    pub leases_at_risk: Gauge,
    /// Probes by check type and result.
    pub probes: Family<ProbeLabels, Counter>,
    /// Probe latency by check type.
    pub probe_latency: Family<TypeLabels, Histogram, fn() -> Histogram>,
    /// How late probes start against their schedule.
    pub check_drift: Histogram,
    /// Transitions decided by checks (this node's).
    pub check_transitions: Family<TransitionLabels, Counter>,
    /// Instance status changes applied, by from and to (the same on every node).
    pub status_changes: Family<StatusChangeLabels, Counter>,
    /// Instances with an active check that this node probes.
    pub checked: Gauge,
    /// Instances held out for flapping.
    pub flapping: Gauge,
    /// Heartbeat batches a follower sent on to the leader.
    pub forwarded_batches: Counter,
    /// Heartbeats a follower sent on to the leader.
    pub forwarded_heartbeats: Counter,
    /// Body bytes of those batches.
    pub forwarded_bytes: Counter,
}

impl Metrics {
    /// Builds and registers every metric under the `muster_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("muster");
        let m = Metrics {
            instances: Family::default(),
            registrations: Counter::default(),
            deregistrations: Counter::default(),
            expirations: Counter::default(),
            heartbeats: Family::default(),
            watch_subscribers: Gauge::default(),
            blocking_queries: Gauge::default(),
            http_latency: Family::new_with_constructor(latency_histogram),
            raft_applied_index: Gauge::default(),
            raft_term: Gauge::default(),
            raft_leader: Gauge::default(),
            store_commits: Gauge::default(),
            store_entries: Gauge::default(),
            leases: Gauge::default(),
            expiry_protection: Gauge::default(),
            leases_at_risk: Gauge::default(),
            probes: Family::default(),
            probe_latency: Family::new_with_constructor(latency_histogram),
            check_drift: latency_histogram(),
            check_transitions: Family::default(),
            status_changes: Family::default(),
            checked: Gauge::default(),
            flapping: Gauge::default(),
            forwarded_batches: Counter::default(),
            forwarded_heartbeats: Counter::default(),
            forwarded_bytes: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "instances",
            "Registered instances by service and status",
            m.instances.clone(),
        );
        registry.register(
            "registrations",
            "Registrations that created an instance",
            m.registrations.clone(),
        );
        registry.register(
            "deregistrations",
            "Instances deregistered",
            m.deregistrations.clone(),
        );
        registry.register(
            "expirations",
            "Instances expired by lease lapse",
            m.expirations.clone(),
        );
        registry.register(
            "heartbeats",
            "Lease renewals by result",
            m.heartbeats.clone(),
        );
        registry.register(
            "watch_subscribers",
            "Open watch streams",
            m.watch_subscribers.clone(),
        );
        registry.register(
            "blocking_queries",
            "Blocking queries waiting",
            m.blocking_queries.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            m.http_latency.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Last applied Raft log index",
            m.raft_applied_index.clone(),
        );
        registry.register("raft_term", "Current Raft term", m.raft_term.clone());
        registry.register(
            "raft_leader",
            "1 when this node is the Raft leader",
            m.raft_leader.clone(),
        );
        registry.register(
            "store_commits",
            "Storage group commits since start (one fsync each)",
            m.store_commits.clone(),
        );
        registry.register(
            "store_entries",
            "Raft log entries made durable since start",
            m.store_entries.clone(),
        );
        registry.register("leases", "Leases tracked in memory", m.leases.clone());
        registry.register(
            "expiry_protection",
            "1 while mass-expiry protection holds expiries",
            m.expiry_protection.clone(),
        );
        registry.register(
            "leases_at_risk",
            "Leases silent for over half their TTL, as last assessed by the leader",
            m.leases_at_risk.clone(),
        );
        registry.register(
            "check_probes",
            "Active check probes by type and result",
            m.probes.clone(),
        );
        registry.register(
            "check_probe_duration_seconds",
            "Active check probe latency by type",
            m.probe_latency.clone(),
        );
        registry.register(
            "check_schedule_drift_seconds",
            "How late active check probes start against their schedule",
            m.check_drift.clone(),
        );
        registry.register(
            "check_transitions",
            "Transitions decided by this node's active checks",
            m.check_transitions.clone(),
        );
        registry.register(
            "instance_transitions",
            "Instance status changes applied, by from and to",
            m.status_changes.clone(),
        );
        registry.register(
            "checked_instances",
            "Instances with an active check that this node probes",
            m.checked.clone(),
        );
        registry.register(
            "flapping_instances",
            "Instances held out of rotation for flapping",
            m.flapping.clone(),
        );
        registry.register(
            "forwarded_heartbeat_batches",
            "Heartbeat batches this follower sent on to the leader",
            m.forwarded_batches.clone(),
        );
        registry.register(
            "forwarded_heartbeats",
            "Heartbeats this follower sent on to the leader",
            m.forwarded_heartbeats.clone(),
        );
        registry.register(
            "forwarded_heartbeat_bytes",
            "Body bytes of the heartbeat batches sent on to the leader",
            m.forwarded_bytes.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
