//! HTTP API v1 (DESIGN.md §5; every endpoint and error code is in docs/api.md).
//!
//! Writes become registry commands proposed through Raft and answer once applied. Lookups answer
//! from the hub's pre-encoded views; blocking queries and watches wait on one service's index.

mod error;
mod extract;
mod grpc;
mod internal;
mod watch;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{MatchedPath, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use muster_core::{
    Applied, Command, Instance, Limits, RegisterRequest, RenewError, Status, format_timestamp,
};
use muster_proto::{
    BatchHeartbeatRequest, BatchHeartbeatResponse, HeartbeatRequest, HeartbeatResponse,
    HeartbeatResult, MAX_BATCH_HEARTBEAT, RegisterResponse, ServiceSummary, ServicesResponse,
    StatusRequest,
};
use muster_store::Store;
use serde::Serialize;

pub use error::ApiError;

use crate::hub::{Hub, ServiceView};
use crate::leases::{Leases, wall_ms};
use crate::metrics::{Metrics, ResultLabels, RouteLabels};
use crate::raft::RaftNode;

/// Everything a handler needs.
pub struct AppState {
    /// Raft and the registry.
    pub raft: Arc<RaftNode>,
    /// Encoded views and watch history.
    pub hub: Arc<Hub>,
    /// Lease table.
    pub leases: Arc<Leases>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The store (for its counters).
    pub store: Store,
    /// Capacity limits put into each registration.
    pub limits: Limits,
    /// Sends heartbeats that reach a follower on to the leader.
    pub forwarder: crate::forward::HeartbeatForwarder,
    /// Active checks.
    pub checker: Arc<crate::checker::Checker>,
}

type AppRef = State<Arc<AppState>>;
type ApiResult = Result<Response, ApiError>;

/// The `X-Muster-Index` header.
pub const INDEX_HEADER: &str = "x-muster-index";

/// Builds the router with its body limit, panic guard and latency metrics.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/instances", post(register))
        .route("/v1/instances/{id}", get(get_instance).delete(deregister))
        .route("/v1/instances/{id}/heartbeat", post(heartbeat))
        .route("/v1/instances/{id}/status", put(set_status))
        .route("/v1/heartbeats", post(batch_heartbeat))
        .route("/v1/services", get(list_services))
        .route("/v1/services/{service}", get(service_instances))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/cluster", get(cluster))
        .route("/v1/leases", get(leases))
        .route("/v1/cluster/members", post(add_member))
        .route(
            "/v1/cluster/members/{id}",
            axum::routing::delete(remove_member),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(internal::routes())
        // gRPC (HTTP/2, prior knowledge) on the same port.
        .route_service(
            "/muster.v1.Registry/{*method}",
            grpc::service(state.clone(), max_body_bytes),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; see the server log",
    )
    .into_response()
}

async fn observe(State(app): AppRef, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().to_string();
    let start = tokio::time::Instant::now();
    let resp = next.run(req).await;
    app.metrics
        .http_latency
        .get_or_create(&RouteLabels { route, method })
        .observe(start.elapsed().as_secs_f64());
    resp
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see docs/api.md",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => bytes_response(status, Bytes::from(bytes)),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            .into_response(),
    }
}

fn bytes_response(status: StatusCode, body: Bytes) -> Response {
    let mut resp = (status, Body::from(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn path_id(p: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = p.map_err(|e| ApiError::bad_param("id", e.body_text()))?;
    extract::instance_id(&id)?;
    Ok(id)
}

/// Adds `X-Muster-Index`, `X-Muster-Known-Leader` and `X-Muster-Last-Contact`.
fn consistency_headers(app: &AppState, headers: &mut HeaderMap, index: u64) {
    let set = |h: &mut HeaderMap, name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    set(headers, INDEX_HEADER, index.to_string());
    set(
        headers,
        "x-muster-known-leader",
        app.raft.knows_leader().to_string(),
    );
    if let Some(ms) = app.raft.last_contact_ms() {
        set(headers, "x-muster-last-contact", ms.to_string());
    }
}

async fn register(State(app): AppRef, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let req: RegisterRequest = extract::json(body, false)?;
    let (created, instance, index) = do_register(&app, req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut resp = json_response(status, &RegisterResponse { instance, index });
    consistency_headers(&app, resp.headers_mut(), index);
    Ok(resp)
}

/// Registers (the HTTP and gRPC APIs): whether it was created, the instance, the index.
async fn do_register(
    app: &AppState,
    req: RegisterRequest,
) -> Result<(bool, Arc<Instance>, u64), ApiError> {
    let (spec, want_healthy) = req.validate()?;
    // A registration over a lapsed lease must void the expiry that may already be in flight.
    // The leader decides (a follower's table is not renewed); a forwarded command is
    // re-decided by the leader that proposes it.
    let revive = app.raft.is_leader() && app.leases.is_lapsed(&spec.instance_id);
    let cmd = Command::Register {
        spec: Box::new(spec),
        want_healthy,
        limits: app.limits,
        revive,
        at: wall_ms(),
    };
    let proposed = app.raft.propose(cmd).await?;
    match proposed.outcome? {
        Applied::Registered { created, instance } => {
            if created {
                app.metrics.registrations.inc();
            }
            Ok((created, instance, proposed.index))
        }
        other => Err(unexpected(&other)),
    }
}

fn unexpected(applied: &Applied) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("unexpected outcome {applied:?}"),
    )
}

/// One instance with its live lease times.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct InstanceWithLease<'a> {
    #[serde(flatten)]
    instance: &'a Instance,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_heartbeat_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_expires_at: Option<String>,
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    format_timestamp(ms).to_string()
}

async fn get_instance(
    State(app): AppRef,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let id = path_id(id)?;
    let pairs = extract::query(raw.as_deref(), &["consistent"])?;
    consistent(&app, &pairs).await?;
    let (instance, index) = app
        .raft
        .read(|r| r.get(&id).cloned().map(|i| (i, r.index())))
        .ok_or_else(|| ApiError::unknown_instance(&id))?;
    // Only the leader's table is renewed: elsewhere the lease times would be wrong.
    let times = app
        .raft
        .is_leader()
        .then(|| app.leases.times(&id))
        .flatten();
    let body = InstanceWithLease {
        instance: &instance,
        last_heartbeat_at: times.map(|t| rfc3339(t.renewed_at)),
        lease_expires_at: times.map(|t| rfc3339(t.expires_at)),
    };
    let mut resp = json_response(StatusCode::OK, &body);
    consistency_headers(&app, resp.headers_mut(), index);
    Ok(resp)
}

async fn deregister(State(app): AppRef, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let id = path_id(id)?;
    let (instance, index) = do_deregister(&app, id).await?;
    Ok(json_response(
        StatusCode::OK,
        &RegisterResponse { instance, index },
    ))
}

/// Deregisters (the HTTP and gRPC APIs): the instance as it was dropped, the index.
async fn do_deregister(app: &AppState, id: String) -> Result<(Arc<Instance>, u64), ApiError> {
    extract::instance_id(&id)?;
    let proposed = app
        .raft
        .propose(Command::Deregister {
            instance_id: id,
            at: wall_ms(),
        })
        .await?;
    match proposed.outcome? {
        Applied::Removed { instance } => {
            app.metrics.deregistrations.inc();
            Ok((instance, proposed.index))
        }
        other => Err(unexpected(&other)),
    }
}

/// Renews one lease: here when this node leads, else through the leader (batched).
async fn renew_one(app: &AppState, id: &str, ready: Option<bool>) -> Result<String, ApiError> {
    if app.raft.is_leader() {
        return renew_local(app, id, ready).await;
    }
    let item = crate::forward::ForwardedHeartbeat {
        instance_id: id.to_string(),
        ready,
    };
    match app.forwarder.renew(item).await? {
        Ok(expires) => Ok(expires),
        Err(detail) => Err(ApiError::from_detail(detail)),
    }
}

/// Renews one lease on the leader, proposing a readiness change if the instance reports one.
/// Returns when the lease now runs out (RFC 3339).
pub(super) async fn renew_local(
    app: &AppState,
    id: &str,
    ready: Option<bool>,
) -> Result<String, ApiError> {
    // A stale leader's acknowledgement would promise nothing: renew only while a quorum has
    // confirmed this node's leadership lately.
    let Some(term) = app.raft.leading_term() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            "this node's leadership is not confirmed by a quorum right now; heartbeat again",
        ));
    };
    let renewed = app.leases.renew(id, term);
    let result = match renewed {
        Ok(_) => "ok",
        Err(RenewError::Lapsed) => "expired",
        Err(_) => "unknown",
    };
    app.metrics
        .heartbeats
        .get_or_create(&ResultLabels { result })
        .inc();
    let expires = match renewed {
        Ok(t) => t,
        Err(RenewError::Lapsed) => {
            let dead = app.raft.read(|r| {
                r.get(id)
                    .filter(|i| !i.live)
                    .map(|i| i.status_reason.clone())
            });
            // A dead instance is not told to register again: a process whose heartbeat still
            // runs while the rest of it is stuck would only come back, dead, in a loop.
            return Err(match dead {
                Some(why) => ApiError::new(
                    StatusCode::GONE,
                    "liveness_failed",
                    format!(
                        "{id:?} failed its liveness check ({why}) and is being expired; a restarted process registers anew"
                    ),
                ),
                None => ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_instance",
                    format!("the lease of {id:?} has expired; register it again"),
                ),
            });
        }
        Err(_) => return Err(ApiError::unknown_instance(id)),
    };
    // An instance whose check the server probes enters rotation when the check passes, not
    // when it says so; it may still take itself out.
    let probed = app.raft.read(|r| {
        r.get(id)
            .and_then(|i| i.spec.check())
            .is_some_and(|c| c.kind.is_probed())
    });
    if let Some(ready) = ready.filter(|r| !probed || !*r) {
        let current = app.raft.read(|r| r.get(id).map(|i| i.ready));
        if current.is_some_and(|c| c != ready) {
            let reason = if ready {
                "heartbeat reported ready"
            } else {
                "heartbeat reported not ready"
            };
            let cmd = Command::SetReadiness {
                instance_id: id.into(),
                ready,
                reason: reason.into(),
                at: wall_ms(),
            };
            app.raft.propose(cmd).await?.outcome?;
        }
    }
    Ok(rfc3339(expires))
}

async fn heartbeat(
    State(app): AppRef,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let id = path_id(id)?;
    let req: HeartbeatRequest = extract::json(body, true)?;
    let expires = renew_one(&app, &id, req.ready).await?;
    Ok(json_response(
        StatusCode::OK,
        &HeartbeatResponse {
            lease_expires_at: expires,
        },
    ))
}

async fn batch_heartbeat(State(app): AppRef, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let req: BatchHeartbeatRequest = extract::json(body, false)?;
    let ids = req.instance_ids.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
            "instanceIds is required",
        )
        .field("instanceIds")
    })?;
    if ids.len() > MAX_BATCH_HEARTBEAT {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!(
                "at most {MAX_BATCH_HEARTBEAT} instance ids per batch, got {}",
                ids.len()
            ),
        )
        .field("instanceIds"));
    }
    for (i, id) in ids.iter().enumerate() {
        muster_core::model::validate_instance_id(id, &format!("instanceIds[{i}]"))?;
    }
    // All at once: on a follower they coalesce into one batch to the leader.
    let renewals =
        futures_util::future::join_all(ids.iter().map(|id| renew_one(&app, id, None))).await;
    let mut results = Vec::with_capacity(ids.len());
    for (id, renewed) in ids.into_iter().zip(renewals) {
        results.push(match renewed {
            Ok(t) => HeartbeatResult {
                instance_id: id,
                ok: true,
                lease_expires_at: Some(t),
                error: None,
            },
            // Not the leader (or no Raft): the whole batch fails the same way.
            Err(e) if e.status() == StatusCode::SERVICE_UNAVAILABLE => return Err(e),
            Err(e) => HeartbeatResult {
                instance_id: id,
                ok: false,
                lease_expires_at: None,
                error: Some(e.detail()),
            },
        });
    }
    Ok(json_response(
        StatusCode::OK,
        &BatchHeartbeatResponse { results },
    ))
}

async fn set_status(
    State(app): AppRef,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let id = path_id(id)?;
    let req: StatusRequest = extract::json(body, false)?;
    let (instance, index) = do_set_status(&app, id, req).await?;
    Ok(json_response(
        StatusCode::OK,
        &RegisterResponse { instance, index },
    ))
}

/// DRAINING or HEALTHY (the HTTP and gRPC APIs): the instance after, the index.
async fn do_set_status(
    app: &AppState,
    id: String,
    req: StatusRequest,
) -> Result<(Arc<Instance>, u64), ApiError> {
    extract::instance_id(&id)?;
    let text = req.status.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
            "status is required",
        )
        .field("status")
    })?;
    let status = match Status::parse(&text) {
        Some(s @ (Status::Draining | Status::Healthy)) => s,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!("status must be DRAINING or HEALTHY, got {text:?}"),
            )
            .field("status"));
        }
    };
    let reason = req.reason.unwrap_or_default();
    if reason.len() > muster_core::model::MAX_REASON_LEN || reason.chars().any(char::is_control) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!(
                "reason must be at most {} printable bytes",
                muster_core::model::MAX_REASON_LEN
            ),
        )
        .field("reason"));
    }
    let proposed = app
        .raft
        .propose(Command::SetStatus {
            instance_id: id,
            status,
            reason,
            at: wall_ms(),
        })
        .await?;
    match proposed.outcome? {
        Applied::Updated { instance } => Ok((instance, proposed.index)),
        other => Err(unexpected(&other)),
    }
}

async fn list_services(State(app): AppRef, RawQuery(raw): RawQuery) -> ApiResult {
    let pairs = extract::query(raw.as_deref(), &["consistent"])?;
    consistent(&app, &pairs).await?;
    let services = app
        .hub
        .views()
        .iter()
        .map(|v| ServiceSummary {
            name: v.service.to_string(),
            index: v.index,
            instances: v.instances.len() as u64,
            statuses: Status::ALL
                .into_iter()
                .zip(v.statuses)
                .filter(|(_, n)| *n > 0)
                .map(|(s, n)| (s.as_str().to_string(), n))
                .collect(),
            zones: v.zones(),
        })
        .collect();
    let index = app.hub.registry_index();
    let mut resp = json_response(StatusCode::OK, &ServicesResponse { index, services });
    consistency_headers(&app, resp.headers_mut(), index);
    Ok(resp)
}

/// Which instances a lookup wants.
struct Filter {
    status: Option<Status>,
    zone: Option<String>,
    region: Option<String>,
    group: Option<String>,
    tag: Vec<String>,
    version: Option<String>,
}

impl Filter {
    fn is_default(&self) -> bool {
        self.status == Some(Status::Healthy)
            && self.zone.is_none()
            && self.region.is_none()
            && self.group.is_none()
            && self.tag.is_empty()
            && self.version.is_none()
    }

    fn keep(&self, i: &Instance) -> bool {
        self.status.is_none_or(|s| i.status == s)
            && self.zone.as_ref().is_none_or(|z| *i.spec.zone() == **z)
            && self.region.as_ref().is_none_or(|r| *i.spec.region() == **r)
            && self
                .group
                .as_ref()
                .is_none_or(|g| *i.spec.deployment_group() == **g)
            && self
                .version
                .as_ref()
                .is_none_or(|v| *i.spec.version() == **v)
            && self
                .tag
                .iter()
                .all(|t| i.spec.tags().iter().any(|x| **x == **t))
    }
}

/// With `?consistent=true`, waits for a read-index round so the answer reflects every write
/// acknowledged before the request.
async fn consistent(app: &AppState, pairs: &[(String, String)]) -> Result<(), ApiError> {
    if extract::flag(pairs, "consistent")? {
        app.raft.linearize().await?;
    }
    Ok(())
}

const LOOKUP_PARAMS: &[&str] = &[
    "consistent",
    "status",
    "zone",
    "region",
    "group",
    "tag",
    "version",
    "index",
    "wait",
];

async fn service_instances(
    State(app): AppRef,
    service: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let Path(service) = service.map_err(|e| ApiError::bad_param("service", e.body_text()))?;
    muster_core::model::validate_service(&service, "service")
        .map_err(|e| ApiError::bad_param("service", e.message))?;
    let pairs = extract::query(raw.as_deref(), LOOKUP_PARAMS)?;
    let status = match extract::single(&pairs, "status")? {
        None => Some(Status::Healthy),
        Some(s) if s.eq_ignore_ascii_case("any") => None,
        Some(s) => Some(Status::parse(s).filter(|s| !s.is_terminal()).ok_or_else(|| {
            ApiError::bad_param(
                "status",
                format!("status must be healthy, any, STARTING, HEALTHY, DRAINING or UNHEALTHY, got {s:?}"),
            )
        })?),
    };
    let owned = |name: &str| extract::single(&pairs, name).map(|v| v.map(str::to_string));
    let filter = Filter {
        status,
        zone: owned("zone")?,
        region: owned("region")?,
        group: owned("group")?,
        tag: pairs
            .iter()
            .filter(|(k, _)| k == "tag")
            .map(|(_, v)| v.clone())
            .collect(),
        version: owned("version")?,
    };
    let index = extract::u64_param(&pairs, "index")?;
    let wait = match extract::single(&pairs, "wait")? {
        None => None,
        Some(w) => {
            let ms =
                muster_core::parse_duration_ms(w).map_err(|m| ApiError::bad_param("wait", m))?;
            if ms > muster_proto::MAX_BLOCKING_WAIT_MS {
                return Err(ApiError::bad_param(
                    "wait",
                    format!("wait must be at most 5m, got {w:?}"),
                ));
            }
            Some(Duration::from_millis(ms))
        }
    };
    consistent(&app, &pairs).await?;
    let view = match index {
        Some(after) if after > 0 => {
            let wait = wait.unwrap_or(Duration::from_millis(
                muster_proto::DEFAULT_BLOCKING_WAIT_MS,
            ));
            Some(blocking_view(&app, &service, after, wait).await?)
        }
        _ => app.hub.slot(&service).map(|s| s.view()),
    };
    let (body, view_index) = match &view {
        Some(v) if filter.is_default() => (v.healthy_body(), v.index),
        Some(v) => (v.body(|i| filter.keep(i)), v.index),
        None => {
            let index = app.hub.registry_index();
            let body = serde_json::to_vec(
                &serde_json::json!({"service": service, "index": index, "instances": []}),
            )
            .unwrap_or_default();
            (Bytes::from(body), index)
        }
    };
    let mut resp = bytes_response(StatusCode::OK, body);
    consistency_headers(&app, resp.headers_mut(), view_index);
    Ok(resp)
}

/// Waits until the service's index passes `after` or `wait` runs out (less up to 1/16 of
/// jitter, so that many waiters do not return at once), then returns its view.
async fn blocking_view(
    app: &AppState,
    service: &str,
    after: u64,
    wait: Duration,
) -> Result<Arc<ServiceView>, ApiError> {
    let (slot, mut rx) = app.hub.subscribe(service).map_err(hub_full)?;
    // An index from beyond this registry (a wiped or restored data directory, or another
    // cluster) answers at once, so the caller picks up the current index.
    if *rx.borrow_and_update() <= after && after <= app.hub.registry_index() {
        let jitter = u64::try_from(wait.as_millis() / 16).unwrap_or(0);
        let wait = wait
            - Duration::from_millis(if jitter > 0 {
                rand::random_range(0..jitter)
            } else {
                0
            });
        app.metrics.blocking_queries.inc();
        let _ = tokio::time::timeout(wait, rx.wait_for(|i| *i > after)).await;
        app.metrics.blocking_queries.dec();
    }
    Ok(slot.view())
}

fn hub_full(e: crate::hub::HubFull) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_watches",
        e.to_string(),
    )
}

/// `POST /v1/cluster/members` body.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMember {
    id: Option<u64>,
    addr: Option<String>,
    voter: Option<bool>,
}

async fn add_member(State(app): AppRef, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let req: AddMember = extract::json(body, false)?;
    let missing = |f: &str| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing_field",
            format!("{f} is required"),
        )
        .field(f)
    };
    let id = req.id.ok_or_else(|| missing("id"))?;
    let addr = req.addr.ok_or_else(|| missing("addr"))?;
    if id == 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "id must be at least 1",
        )
        .field("id"));
    }
    if !(addr.starts_with("http://") || addr.starts_with("https://")) || addr.len() > 512 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("addr must be an http(s) URL of at most 512 bytes, got {addr:?}"),
        )
        .field("addr"));
    }
    let change = crate::raft::MemberChange::Add {
        id,
        addr,
        voter: req.voter.unwrap_or(true),
    };
    Ok(json_response(
        StatusCode::OK,
        &app.raft.change_members(change).await?,
    ))
}

async fn remove_member(State(app): AppRef, id: Result<Path<String>, PathRejection>) -> ApiResult {
    let Path(id) = id.map_err(|e| ApiError::bad_param("id", e.body_text()))?;
    let id: u64 = id.parse().map_err(|_| {
        ApiError::bad_param("id", format!("a node id is a positive integer, got {id:?}"))
    })?;
    let change = crate::raft::MemberChange::Remove { id };
    Ok(json_response(
        StatusCode::OK,
        &app.raft.change_members(change).await?,
    ))
}

/// Lease table and mass-expiry protection, as this node sees them (the leader's view is the
/// one that counts: only the leader renews and expires).
async fn leases(State(app): AppRef) -> ApiResult {
    let body = serde_json::json!({
        "nodeId": app.raft.node_id(),
        "leader": app.raft.is_leader(),
        "leases": app.leases.len(),
        "protection": app.leases.protection(),
    });
    Ok(json_response(StatusCode::OK, &body))
}

async fn cluster(State(app): AppRef) -> ApiResult {
    Ok(json_response(StatusCode::OK, &app.raft.status()))
}

async fn healthz() -> Response {
    json_response(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

async fn readyz(State(app): AppRef) -> Response {
    let status = app.raft.cached_status();
    if app.raft.knows_leader() {
        json_response(
            StatusCode::OK,
            &serde_json::json!({"status": "ready", "leader": status.leader_id}),
        )
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "no leader confirmed by a quorum is known: this node may be cut off or an election is under way",
        )
        .into_response()
    }
}

async fn metrics(State(app): AppRef) -> Response {
    let status = app.raft.status();
    let m = &app.metrics;
    m.raft_applied_index.set(status.last_applied);
    m.raft_term.set(status.term);
    m.raft_leader.set(i64::from(status.role == "Leader"));
    let stats = app.store.stats();
    m.store_commits
        .set(stats.commits.load(std::sync::atomic::Ordering::Relaxed));
    m.store_entries
        .set(stats.entries.load(std::sync::atomic::Ordering::Relaxed));
    m.leases.set(app.leases.len() as i64);
    let protection = app.leases.protection();
    m.expiry_protection.set(i64::from(protection.active));
    m.checked.set(app.checker.len() as i64);
    m.flapping.set(app.checker.flapping() as i64);
    m.leases_at_risk.set(protection.at_risk as i64);
    let mut resp = m.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
