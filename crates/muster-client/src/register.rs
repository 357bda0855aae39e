//! Registration: an instance registers itself, heartbeats in the background, registers again
//! when the server forgot it, reports readiness, and drains on the way out.
//!
//! ```text
//!  Registration::register ── POST /v1/instances (servers in turn) ──▶ task:
//!     every TTL/3 (±10%): POST /v1/instances/{id}/heartbeat {"ready"?}
//!        404 unknown_instance ──▶ POST /v1/instances again (the lease lapsed, or the server lost it)
//!        410 liveness_failed  ──▶ stop: the server found this process dead; a restart registers anew
//!        no answer / 5xx      ──▶ next server, retry within the interval
//!  shutdown ── PUT …/status DRAINING ── wait `drain_grace` ── DELETE /v1/instances/{id}
//! ```

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster_proto::{HeartbeatRequest, RegisterRequest, StatusRequest};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How an instance registers and leaves.
#[derive(Clone, Debug)]
pub struct RegistrationConfig {
    /// Base URLs of the servers (`http://…`), tried in turn.
    pub servers: Vec<String>,
    /// What to register (`leaseTtl` sets the heartbeat cadence: a third of it).
    pub request: RegisterRequest,
    /// How long to stay DRAINING before deregistering (callers' views catch up meanwhile).
    pub drain_grace: Duration,
    /// Longest wait for one request.
    pub request_timeout: Duration,
}

impl RegistrationConfig {
    /// Registers `request` with the servers at `servers`, draining for 5 s on shutdown.
    pub fn new(servers: Vec<String>, request: RegisterRequest) -> Self {
        RegistrationConfig {
            servers,
            request,
            drain_grace: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
        }
    }
}

/// Why registering (or leaving) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistrationError {
    /// The registration is malformed (the server would refuse it too).
    #[error("invalid registration: {0}")]
    Invalid(String),
    /// A server refused it, with its error code and message (not retryable as is).
    #[error("{server} refused: {code}: {message}")]
    Refused {
        /// The server.
        server: String,
        /// The API error code, e.g. `conflict`.
        code: String,
        /// Its message.
        message: String,
    },
    /// No server could be reached or none accepted it in time (retryable).
    #[error("no server accepted the request: {0}")]
    Unavailable(String),
}

impl RegistrationError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistrationError::Unavailable(_))
    }
}

const READY_UNSET: u8 = 0;
const READY_NO: u8 = 1;
const READY_YES: u8 = 2;

struct Shared {
    config: RegistrationConfig,
    id: String,
    http: reqwest::Client,
    /// Readiness to report: unset, no, yes.
    ready: AtomicU8,
    /// Heartbeat now (readiness changed).
    nudge: Notify,
    /// The server found this instance dead (liveness check): heartbeats stopped.
    dead: AtomicBool,
    /// Shutting down: a forgotten instance is not registered again.
    draining: AtomicBool,
    /// The server that answered last (tried first next time).
    preferred: std::sync::atomic::AtomicUsize,
    last_ok: Mutex<Option<Instant>>,
}

/// A registered instance, heartbeating until [`Registration::shutdown`] (or drop, which stops
/// heartbeats without deregistering: the lease then expires).
pub struct Registration {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Registration {
    /// Registers (trying each server in turn) and starts heartbeating.
    pub async fn register(config: RegistrationConfig) -> Result<Registration, RegistrationError> {
        let (spec, _) = config
            .request
            .clone()
            .validate()
            .map_err(|e| RegistrationError::Invalid(e.to_string()))?;
        if config.servers.is_empty() {
            return Err(RegistrationError::Invalid(
                "at least one server address is needed".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .map_err(|e| RegistrationError::Invalid(e.to_string()))?;
        let interval = Duration::from_millis(spec.lease_ttl() / 3);
        let shared = Arc::new(Shared {
            id: spec.instance_id.to_string(),
            config,
            http,
            ready: AtomicU8::new(READY_UNSET),
            nudge: Notify::new(),
            dead: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            preferred: std::sync::atomic::AtomicUsize::new(0),
            last_ok: Mutex::new(None),
        });
        shared.register().await?;
        let task = tokio::spawn(heartbeats(shared.clone(), interval));
        Ok(Registration { shared, task })
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Reports readiness with the next heartbeat, sent at once.
    pub fn set_ready(&self, ready: bool) {
        let v = if ready { READY_YES } else { READY_NO };
        self.shared.ready.store(v, Ordering::Relaxed);
        self.shared.nudge.notify_one();
    }

    /// When a heartbeat was last accepted.
    pub fn last_heartbeat(&self) -> Option<Instant> {
        *self
            .shared
            .last_ok
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the server found this instance dead (its liveness check failed) and heartbeats
    /// stopped.
    pub fn is_dead(&self) -> bool {
        self.shared.dead.load(Ordering::Relaxed)
    }

    /// Leaves: DRAINING (callers stop picking it as their views update), waits `drain_grace`,
    /// then deregisters. Heartbeats go on while draining.
    pub async fn shutdown(self) -> Result<(), RegistrationError> {
        let s = &self.shared;
        s.draining.store(true, Ordering::Relaxed);
        let body = serde_json::to_vec(&StatusRequest {
            status: Some("DRAINING".into()),
            reason: Some("shutting down".into()),
        })
        .unwrap_or_default();
        let path = format!("/v1/instances/{}/status", s.path_id());
        match s.send(reqwest::Method::PUT, &path, Some(body)).await {
            Ok(()) => {}
            // Gone already (expired, or removed): nothing to drain or deregister.
            Err(RegistrationError::Refused { code, .. }) if code == "unknown_instance" => {
                self.task.abort();
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        tokio::time::sleep(s.config.drain_grace).await;
        self.task.abort();
        match s
            .send(
                reqwest::Method::DELETE,
                &format!("/v1/instances/{}", s.path_id()),
                None,
            )
            .await
        {
            Ok(_) => Ok(()),
            // Gone already (expired meanwhile): nothing left to do.
            Err(RegistrationError::Refused { code, .. }) if code == "unknown_instance" => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// What a server answered.
enum Answer {
    Ok,
    Refused { code: String, message: String },
}

impl Shared {
    fn path_id(&self) -> String {
        form_urlencoded::byte_serialize(self.id.as_bytes()).collect()
    }

    async fn register(&self) -> Result<(), RegistrationError> {
        let body = serde_json::to_vec(&self.config.request)
            .map_err(|e| RegistrationError::Invalid(e.to_string()))?;
        self.send(reqwest::Method::POST, "/v1/instances", Some(body))
            .await
            .map(|_| ())
    }

    /// Sends one request to the servers in turn until one answers; a refusal (4xx) is final.
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(), RegistrationError> {
        let mut last = String::from("no server tried");
        let n = self.config.servers.len();
        let first = self.preferred.load(Ordering::Relaxed);
        for k in 0..n {
            let at = (first + k) % n;
            let server = &self.config.servers[at];
            let answer = self
                .send_to(server, method.clone(), path, body.clone())
                .await;
            if answer.is_ok() {
                // Stick to a server that answers (a dead first one costs a timeout each time).
                self.preferred.store(at, Ordering::Relaxed);
            }
            match answer {
                Ok(Answer::Ok) => return Ok(()),
                Ok(Answer::Refused { code, message }) => {
                    return Err(RegistrationError::Refused {
                        server: server.clone(),
                        code,
                        message,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(RegistrationError::Unavailable(last))
    }

    /// One request to one server: `Err` when it could not answer (unreachable, 5xx).
    async fn send_to(
        &self,
        server: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, String> {
        let url = format!("{}{path}", server.trim_end_matches('/'));
        let mut req = self.http.request(method, &url);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(Answer::Ok);
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        let detail = serde_json::from_slice::<muster_proto::ErrorBody>(&bytes)
            .map(|b| (b.error.code, b.error.message))
            .unwrap_or_else(|_| {
                (
                    status.as_str().to_string(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                )
            });
        if status.is_server_error() {
            return Err(format!("{url}: {} {}", detail.0, detail.1));
        }
        Ok(Answer::Refused {
            code: detail.0,
            message: detail.1,
        })
    }

    /// One heartbeat, registering again if the server no longer knows the instance.
    async fn heartbeat(&self) -> Result<(), String> {
        let ready = match self.ready.load(Ordering::Relaxed) {
            READY_YES => Some(true),
            READY_NO => Some(false),
            _ => None,
        };
        let body = serde_json::to_vec(&HeartbeatRequest { ready }).unwrap_or_default();
        let path = format!("/v1/instances/{}/heartbeat", self.path_id());
        match self.send(reqwest::Method::POST, &path, Some(body)).await {
            Ok(()) => Ok(()),
            Err(RegistrationError::Refused { code, message, .. }) if code == "liveness_failed" => {
                tracing::error!(instance = %self.id, %message, "the server found this instance dead; heartbeats stop");
                self.dead.store(true, Ordering::Relaxed);
                Err(message)
            }
            Err(RegistrationError::Refused { code, .. })
                if code == "unknown_instance" && self.draining.load(Ordering::Relaxed) =>
            {
                Ok(()) // leaving anyway
            }
            Err(RegistrationError::Refused { code, .. }) if code == "unknown_instance" => {
                tracing::warn!(instance = %self.id, "the server no longer knows this instance; registering again");
                self.register().await.map_err(|e| e.to_string())?;
                if ready.is_some() {
                    // Tell the new registration what the old one knew.
                    let body = serde_json::to_vec(&HeartbeatRequest { ready }).unwrap_or_default();
                    self.send(reqwest::Method::POST, &path, Some(body))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Heartbeats every `interval` (±10%), at once when readiness changes, sooner after a failure.
async fn heartbeats(shared: Arc<Shared>, interval: Duration) {
    let mut next = Instant::now() + jittered(interval);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shared.nudge.notified() => {}
        }
        if shared.dead.load(Ordering::Relaxed) {
            return;
        }
        match shared.heartbeat().await {
            Ok(()) => {
                *shared.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                next = Instant::now() + jittered(interval);
            }
            Err(e) => {
                if shared.dead.load(Ordering::Relaxed) {
                    return;
                }
                tracing::warn!(instance = %shared.id, error = %e, "heartbeat failed; retrying");
                next = Instant::now() + jittered(interval / 4);
            }
        }
    }
}

/// `d` ± 10%.
fn jittered(d: Duration) -> Duration {
    let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let spread = nanos / 10;
    Duration::from_nanos(nanos - spread + rand::random_range(0..=spread * 2))
}
