//! The gRPC API (`muster.v1.Registry`, `crates/muster-proto/proto/`), served on the HTTP port
//! (HTTP/2 with prior knowledge). Each call goes through the same code as its HTTP twin, so
//! rules, limits and errors are the same: an error is a gRPC status whose message is the HTTP
//! API's, with its code in the `muster-error-code` metadata entry.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use muster_core::{Check, CheckRequest, Instance, RegisterRequest, Status};
use muster_proto::grpc::{self as pb, registry_server::Registry};
use muster_proto::sse::Splitter;
use muster_proto::{StatusRequest, WatchEvent};
use tonic::{Request, Response};

use super::error::ApiError;
use super::{AppState, Filter, do_deregister, do_register, do_set_status, renew_one, watch};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// The `muster.v1.Registry` service over the shared application state.
pub(super) struct GrpcApi {
    pub(super) app: Arc<AppState>,
}

/// Heartbeats of one stream renewed at once (answers keep the requests' order).
const HEARTBEATS_IN_FLIGHT: usize = 64;

/// The gRPC service, to be routed under `/muster.v1.Registry/`. A request message may be as
/// large as an HTTP body (`max_body_bytes`).
pub(super) fn service(
    app: Arc<AppState>,
    max_body_bytes: usize,
) -> pb::registry_server::RegistryServer<GrpcApi> {
    pb::registry_server::RegistryServer::new(GrpcApi { app })
        .max_decoding_message_size(max_body_bytes)
}

fn status(e: ApiError) -> tonic::Status {
    let (http, code, message) = (e.status().as_u16(), e.code(), e.detail().message);
    let grpc = match http {
        400 | 413 | 422 => tonic::Code::InvalidArgument,
        404 => tonic::Code::NotFound,
        409 if code == "conflict" => tonic::Code::AlreadyExists,
        409 | 410 => tonic::Code::FailedPrecondition,
        429 => tonic::Code::ResourceExhausted,
        503 => tonic::Code::Unavailable,
        504 => tonic::Code::DeadlineExceeded,
        _ => tonic::Code::Internal,
    };
    let mut s = tonic::Status::new(grpc, message);
    if let Ok(v) = code.parse() {
        s.metadata_mut().insert("muster-error-code", v);
    }
    s
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn check_request(c: pb::Check) -> CheckRequest {
    CheckRequest {
        kind: opt(c.r#type),
        target: opt(c.target),
        interval: opt(c.interval),
        timeout: opt(c.timeout),
        success_before_healthy: (c.success_before_healthy > 0)
            .then(|| c.success_before_healthy.into()),
        failures_before_unhealthy: (c.failures_before_unhealthy > 0)
            .then(|| c.failures_before_unhealthy.into()),
        method: opt(c.method),
        headers: (!c.headers.is_empty()).then(|| c.headers.into_iter().collect()),
        expected_status: opt(c.expected_status),
        tls: c.tls.then_some(true),
        tls_skip_verify: c.tls_skip_verify.then_some(true),
    }
}

fn register_request(r: pb::RegisterRequest) -> RegisterRequest {
    RegisterRequest {
        service: opt(r.service),
        instance_id: opt(r.instance_id),
        host: opt(r.host),
        port: (r.port != 0).then(|| r.port.into()),
        zone: opt(r.zone),
        region: opt(r.region),
        version: opt(r.version),
        weight: r.weight.map(Into::into),
        deployment_group: opt(r.deployment_group),
        protocol: opt(r.protocol),
        tags: (!r.tags.is_empty()).then_some(r.tags),
        metadata: (!r.metadata.is_empty()).then(|| r.metadata.into_iter().collect()),
        health_endpoint: opt(r.health_endpoint),
        check: r.check.map(check_request),
        liveness_check: r.liveness_check.map(check_request),
        lease_ttl: opt(r.lease_ttl),
        status: opt(r.status),
    }
}

fn duration(ms: u64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms)).to_string()
}

fn check(c: &Check) -> pb::Check {
    // The JSON form is the one true rendering of a check's fields (method, expected status).
    let json = serde_json::to_value(c).unwrap_or_default();
    let text = |k: &str| json[k].as_str().unwrap_or_default().to_string();
    pb::Check {
        r#type: text("type"),
        target: c.target.clone(),
        interval: duration(c.interval),
        timeout: duration(c.timeout),
        success_before_healthy: c.success_before_healthy,
        failures_before_unhealthy: c.failures_before_unhealthy,
        method: text("method"),
        headers: c.headers.clone().into_iter().collect(),
        expected_status: text("expectedStatus"),
        tls: c.tls,
        tls_skip_verify: c.tls_skip_verify,
    }
}

fn instance(i: &Instance) -> pb::Instance {
    let s = &i.spec;
    pb::Instance {
        service: s.service().to_string(),
        instance_id: s.instance_id.to_string(),
        host: s.host.to_string(),
        port: u32::from(s.port),
        zone: s.zone().to_string(),
        region: s.region().to_string(),
        version: s.version().to_string(),
        weight: s.weight,
        deployment_group: s.deployment_group().to_string(),
        protocol: s.protocol().to_string(),
        tags: s.tags().iter().map(|t| t.to_string()).collect(),
        metadata: s
            .metadata()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        check: s.check().map(check),
        liveness_check: s.liveness_check().map(check),
        lease_ttl: duration(s.lease_ttl()),
        status: i.status.as_str().to_string(),
        status_reason: i.status_reason.to_string(),
        ready: i.ready,
        live: i.live,
        registered_at: muster_core::format_timestamp(i.registered_at).to_string(),
        status_changed_at: muster_core::format_timestamp(i.status_changed_at).to_string(),
        create_index: i.create_index,
        modify_index: i.modify_index,
    }
}

/// An instance's message, appended to `buf`.
fn encode_instance(i: &Instance, buf: &mut bytes::BytesMut) {
    // A BytesMut grows as needed: encoding into it cannot run out of room.
    let _ = prost::Message::encode(&instance(i), buf);
}

fn watch_event(e: WatchEvent) -> Option<pb::WatchEvent> {
    use pb::watch_event::Event;
    let event = match e {
        WatchEvent::Snapshot {
            service,
            index,
            instances,
        } => Event::Snapshot(pb::Snapshot {
            service,
            index,
            instances: instances.iter().map(instance).collect(),
        }),
        WatchEvent::Upsert {
            service,
            index,
            instance: i,
        } => Event::Upsert(pb::Change {
            service,
            index,
            instance: Some(instance(&i)),
        }),
        WatchEvent::Delete {
            service,
            index,
            instance: i,
        } => Event::Delete(pb::Change {
            service,
            index,
            instance: Some(instance(&i)),
        }),
        WatchEvent::Compacted { index, oldest } => {
            Event::Compacted(pb::Compacted { index, oldest })
        }
        WatchEvent::Unknown => return None,
    };
    Some(pb::WatchEvent { event: Some(event) })
}

#[tonic::async_trait]
impl Registry for GrpcApi {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, tonic::Status> {
        let req = register_request(request.into_inner());
        let (created, i, index) = do_register(&self.app, req).await.map_err(status)?;
        Ok(Response::new(pb::RegisterResponse {
            instance: Some(instance(&i)),
            index,
            created,
        }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, tonic::Status> {
        let id = request.into_inner().instance_id;
        let (i, index) = do_deregister(&self.app, id).await.map_err(status)?;
        Ok(Response::new(pb::DeregisterResponse {
            instance: Some(instance(&i)),
            index,
        }))
    }

    async fn set_status(
        &self,
        request: Request<pb::SetStatusRequest>,
    ) -> Result<Response<pb::InstanceResponse>, tonic::Status> {
        let r = request.into_inner();
        let req = StatusRequest {
            status: opt(r.status),
            reason: opt(r.reason),
        };
        let (i, index) = do_set_status(&self.app, r.instance_id, req)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::InstanceResponse {
            instance: Some(instance(&i)),
            index,
        }))
    }

    type HeartbeatStream = Stream_<pb::HeartbeatResponse>;

    async fn heartbeat(
        &self,
        request: Request<tonic::Streaming<pb::HeartbeatRequest>>,
    ) -> Result<Response<Self::HeartbeatStream>, tonic::Status> {
        let app = self.app.clone();
        let answers = request.into_inner().map(move |req| {
            let app = app.clone();
            async move {
                let req = req?;
                let renewed = match super::extract::instance_id(&req.instance_id) {
                    Ok(()) => renew_one(&app, &req.instance_id, req.ready).await,
                    Err(e) => Err(e),
                };
                Ok(match renewed {
                    Ok(expires) => pb::HeartbeatResponse {
                        instance_id: req.instance_id,
                        ok: true,
                        lease_expires_at: expires,
                        ..Default::default()
                    },
                    Err(e) => pb::HeartbeatResponse {
                        instance_id: req.instance_id,
                        ok: false,
                        error_code: e.code().to_string(),
                        error_message: e.detail().message,
                        ..Default::default()
                    },
                })
            }
        });
        Ok(Response::new(Box::pin(
            answers.buffered(HEARTBEATS_IN_FLIGHT),
        )))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::EncodedList>, tonic::Status> {
        let r = request.into_inner();
        muster_core::model::validate_service(&r.service, "service")
            .map_err(|e| status(ApiError::bad_param("service", e.message)))?;
        let wanted = match r.status.as_str() {
            "" | "healthy" => Some(Status::Healthy),
            s if s.eq_ignore_ascii_case("any") => None,
            s => Some(Status::parse(s).filter(|s| !s.is_terminal()).ok_or_else(|| {
                status(ApiError::bad_param(
                    "status",
                    format!("status must be healthy, any, STARTING, HEALTHY, DRAINING or UNHEALTHY, got {s:?}"),
                ))
            })?),
        };
        let filter = Filter {
            status: wanted,
            zone: opt(r.zone),
            region: opt(r.region),
            group: opt(r.group),
            tag: r.tags,
            version: opt(r.version),
        };
        // Served from the watch hub's view, like the HTTP lookup: each instance encoded once
        // per change, shared by every answer.
        let answer = match self.app.hub.slot(&r.service).map(|s| s.view()) {
            Some(view) => pb::EncodedList {
                index: view.index,
                instances: view
                    .instances
                    .iter()
                    .zip(view.protobuf(encode_instance))
                    .filter(|(i, _)| filter.keep(i))
                    .map(|(_, message)| message.clone())
                    .collect(),
                service: r.service,
            },
            None => pb::EncodedList {
                service: r.service,
                index: self.app.hub.registry_index(),
                instances: Vec::new(),
            },
        };
        Ok(Response::new(answer))
    }

    type WatchStream = Stream_<pb::WatchEvent>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, tonic::Status> {
        let r = request.into_inner();
        let mut services: Vec<&str> = r.services.iter().map(String::as_str).collect();
        let w = watch::open(&self.app, &mut services, r.index).map_err(status)?;
        // The hub hands out encoded SSE frames (shared by every watcher); they are read back
        // here, keepalives dropped.
        let events = futures_util::stream::unfold(
            (w, Splitter::default(), std::collections::VecDeque::new()),
            |(mut w, mut frames, mut ready)| async move {
                loop {
                    if let Some(e) = ready.pop_front() {
                        return Some((Ok(e), (w, frames, ready)));
                    }
                    let bytes = w.next_frame().await?;
                    if let Err(e) = frames.push(&bytes) {
                        let status = tonic::Status::internal(e);
                        return Some((Err(status), (w, frames, ready)));
                    }
                    while let Some(frame) = frames.next_frame() {
                        match serde_json::from_str::<WatchEvent>(&frame.data) {
                            Ok(e) => ready.extend(watch_event(e)),
                            Err(e) => {
                                let status =
                                    tonic::Status::internal(format!("unreadable watch event: {e}"));
                                return Some((Err(status), (w, frames, ready)));
                            }
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(events)))
    }
}
