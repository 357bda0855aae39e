//! Muster's wire types: the JSON bodies of HTTP API v1 (DESIGN.md §5), shared by the server, the
//! CLI and clients. The instance itself is [`muster_core::Instance`].

pub mod sse;

use std::collections::BTreeMap;
use std::sync::Arc;

use muster_core::Instance;
use serde::{Deserialize, Serialize};

pub use muster_core::RegisterRequest;

/// Most instance ids in one batch heartbeat.
pub const MAX_BATCH_HEARTBEAT: usize = 1000;
/// Most services one watch stream may follow.
pub const MAX_WATCH_SERVICES: usize = 64;
/// Longest wait of a blocking query, in milliseconds (5 minutes).
pub const MAX_BLOCKING_WAIT_MS: u64 = 300_000;
/// Wait of a blocking query when `index` is given without `wait`.
pub const DEFAULT_BLOCKING_WAIT_MS: u64 = 300_000;

/// Every error the API returns: `{"error": {"code": ..., "message": ..., "field": ...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable, machine-readable code such as `invalid_field` (see docs/api.md).
    pub code: String,
    /// What was wrong and what was expected.
    pub message: String,
    /// The offending field or parameter, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `POST /v1/instances` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The instance as stored.
    pub instance: Arc<Instance>,
    /// Registry index of the write.
    pub index: u64,
}

/// `PUT /v1/instances/{id}/status` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusRequest {
    /// `DRAINING` or `HEALTHY`.
    pub status: Option<String>,
    /// Why; shown as `statusReason`.
    pub reason: Option<String>,
}

/// `POST /v1/instances/{id}/heartbeat` body (optional).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Readiness as the instance sees it; a change moves it in or out of rotation.
    pub ready: Option<bool>,
}

/// `POST /v1/instances/{id}/heartbeat` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    /// When the lease runs out unless renewed (RFC 3339).
    pub lease_expires_at: String,
}

/// `POST /v1/heartbeats` body.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchHeartbeatRequest {
    /// Instances to renew (at most [`MAX_BATCH_HEARTBEAT`]).
    pub instance_ids: Option<Vec<String>>,
}

/// `POST /v1/heartbeats` answer: one result per id, in request order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchHeartbeatResponse {
    /// Per-id results.
    pub results: Vec<HeartbeatResult>,
}

/// The result of renewing one lease in a batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResult {
    /// The id.
    pub instance_id: String,
    /// Renewed.
    pub ok: bool,
    /// New deadline, when renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<String>,
    /// Why not, when not renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

/// `GET /v1/services/{service}` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceInstances {
    /// The service.
    pub service: String,
    /// The service's modify index (for blocking queries).
    pub index: u64,
    /// Matching instances, ordered by id.
    pub instances: Vec<Instance>,
}

/// `GET /v1/services` answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServicesResponse {
    /// Registry index.
    pub index: u64,
    /// Every service holding at least one instance, by name.
    pub services: Vec<ServiceSummary>,
}

/// One service in `GET /v1/services`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// Service name.
    pub name: String,
    /// Modify index.
    pub index: u64,
    /// Number of instances.
    pub instances: u64,
    /// Instances by status (statuses with none are left out).
    pub statuses: BTreeMap<String, u64>,
    /// Instances by zone (`""` for none).
    pub zones: BTreeMap<String, u64>,
}

/// The `data` of a watch event (`GET /v1/watch`, Server-Sent Events). The SSE `event:` field
/// carries the same name as `type`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum WatchEvent {
    /// Every instance of a service (any status), at `index`.
    Snapshot {
        /// Service.
        service: String,
        /// The service's modify index.
        index: u64,
        /// All instances.
        instances: Vec<Instance>,
    },
    /// An instance was created or changed.
    Upsert {
        /// Service.
        service: String,
        /// Registry index of the change.
        index: u64,
        /// The instance after the change.
        instance: Instance,
    },
    /// An instance is gone (EXPIRED or REMOVED).
    Delete {
        /// Service.
        service: String,
        /// Registry index of the change.
        index: u64,
        /// The instance as it was dropped.
        instance: Instance,
    },
    /// The asked index is older than the retained history: a snapshot of every watched service
    /// follows; drop what you hold for them.
    Compacted {
        /// The index asked for.
        index: u64,
        /// Oldest index from which history is still available.
        oldest: u64,
    },
    /// An event kind this build does not know (sent by a newer server): clients skip it.
    /// Never sent.
    #[serde(other)]
    Unknown,
}
