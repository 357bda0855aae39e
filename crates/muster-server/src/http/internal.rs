//! Node-to-node endpoints under `/internal`: Raft RPCs, and what followers forward to the leader
//! (proposals, read-index requests, membership changes, heartbeat batches). Each answers
//! `Result<T, WireError>` as JSON; the caller never forwards a forwarded request again.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use muster_core::Command;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::{AppRef, AppState, bytes_response, extract, renew_local};
use crate::forward::{ForwardedBatch, ForwardedResult};
use crate::raft::{MemberChange, ProposeError, Request, WireError};

/// Largest Raft RPC body (a snapshot of a full registry).
const MAX_RPC_BYTES: usize = 1 << 30;

/// The `/internal` routes, with a body limit fit for snapshots.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/internal/raft/{what}", post(raft_rpc))
        .route("/internal/propose", post(propose))
        .route("/internal/read-index", post(read_index))
        .route("/internal/confirm", post(confirm))
        .route("/internal/members", post(members))
        .route("/internal/heartbeats", post(heartbeats))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_RPC_BYTES))
}

fn answer<T: Serialize>(r: Result<T, ProposeError>) -> Response {
    let r = r.map_err(|e| WireError::from(&e));
    match serde_json::to_vec(&r) {
        Ok(bytes) => bytes_response(StatusCode::OK, Bytes::from(bytes)),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            .into_response(),
    }
}

fn body<T: DeserializeOwned + Default>(b: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    extract::json(b, false)
}

async fn raft_rpc(
    State(app): AppRef,
    Path(what): Path<String>,
    RawQuery(raw): RawQuery,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let to =
        match extract::query(raw.as_deref(), &["to"]).and_then(|p| extract::u64_param(&p, "to")) {
            Ok(Some(to)) => to,
            Ok(None) => {
                return ApiError::bad_param("to", "a Raft RPC names its target node: ?to=<id>")
                    .into_response();
            }
            Err(e) => return e.into_response(),
        };
    let bytes = match b {
        Ok(bytes) => bytes,
        Err(e) => return extract::body_rejection(e).into_response(),
    };
    match app.raft.handle_rpc(to, &what, &bytes).await {
        Ok(out) => bytes_response(StatusCode::OK, Bytes::from(out)),
        Err(e) => ApiError::new(StatusCode::MISDIRECTED_REQUEST, "wrong_node", e).into_response(),
    }
}

async fn propose(
    State(app): AppRef,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = b.map_err(extract::body_rejection)?;
    let req: Request = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()))?;
    let mut cmd: Command = req.0;
    if matches!(cmd, Command::Expire { .. }) {
        // Expiries are the leader's own decisions; one arriving from elsewhere is refused.
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "refused",
            "expiries are decided by the leader alone",
        ));
    }
    // Only the leader knows whether a lease has lapsed: it decides `revive`.
    if let Command::Register { spec, revive, .. } = &mut cmd {
        *revive = app.leases.is_lapsed(&spec.instance_id);
    }
    Ok(answer(app.raft.propose_local(cmd).await))
}

async fn read_index(State(app): AppRef) -> Response {
    answer(app.raft.read_index_here().await)
}

async fn confirm(State(app): AppRef, b: Result<Bytes, BytesRejection>) -> Response {
    match body::<crate::raft::ConfirmRequest>(b) {
        Ok(req) => answer(app.raft.confirm_here(req.from).await),
        Err(e) => e.into_response(),
    }
}

async fn members(
    State(app): AppRef,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = b.map_err(extract::body_rejection)?;
    let change: MemberChange = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.to_string()))?;
    Ok(answer(app.raft.change_members_here(change).await))
}

async fn heartbeats(
    State(app): AppRef,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let batch: ForwardedBatch = body(b)?;
    if !app.raft.is_leader() {
        return Ok(answer::<Vec<ForwardedResult>>(Err(ProposeError::NoLeader)));
    }
    // All at once: every lease is renewed in the first pass (renewal needs no await), and a
    // slow readiness commit never holds up another instance's renewal.
    let renewals = batch
        .items
        .iter()
        .map(|item| renew_local(&app, &item.instance_id, item.ready));
    let results: Vec<ForwardedResult> = futures_util::future::join_all(renewals)
        .await
        .into_iter()
        .map(|r| r.map_err(|e| e.detail()))
        .collect();
    Ok(answer(Ok(results)))
}
