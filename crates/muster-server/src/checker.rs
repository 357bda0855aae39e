//! Active readiness checks: the leader probes every instance registered with an `http` or `tcp`
//! check (gRPC health checks are not probed yet: such instances report readiness on heartbeats), feeds the results to a [`muster_core::health::Tracker`], and writes only transitions
//! to the log (as `SetReadiness`).
//!
//! ```text
//!  applied events ──▶ Checker::applied (which instances, which checks)
//!  run loop (leader): due probes ──▶ spawned, bounded by a semaphore, each with its timeout
//!                     results ──▶ Tracker::observe ──▶ Verdict? ──▶ propose SetReadiness
//! ```
//!
//! A slow or hanging target holds only its own probe (and one permit): the others go on. The
//! checks run on the leader; spreading them over the members is the next step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use muster_core::health::{FLAPPING, FlapPolicy, Probe, Tracker};
use muster_core::{Check, CheckKind, Command, Event, EventKind, Instance, Registry};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::leases::wall_ms;
use crate::metrics::{Metrics, ProbeLabels, TransitionLabels, TypeLabels};
use crate::raft::RaftNode;

/// Probes in flight at once.
const MAX_IN_FLIGHT: usize = 256;

struct Entry {
    check: Check,
    host: String,
    port: u16,
    tracker: Tracker,
    /// Monotonic ms when the next probe is due.
    due: u64,
    in_flight: bool,
}

/// The checks to run and their trackers.
pub struct Checker {
    entries: Mutex<HashMap<String, Entry>>,
    metrics: Arc<Metrics>,
    epoch: Instant,
    wake: Notify,
    flap: FlapPolicy,
    http: reqwest::Client,
}

impl Checker {
    /// A checker that damps flapping with `flap`.
    pub fn new(flap: FlapPolicy, metrics: Arc<Metrics>) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the check client: {e}"))?;
        Ok(Checker {
            entries: Mutex::default(),
            metrics,
            epoch: Instant::now(),
            wake: Notify::new(),
            flap,
            http,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Instances held out for flapping now.
    pub fn flapping(&self) -> usize {
        let now = self.now();
        self.lock()
            .values()
            .filter(|e| e.tracker.held_until().is_some_and(|t| t > now))
            .count()
    }

    /// Number of instances checked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no instance is checked.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Follows an applied batch: instances with an active check are (re)scheduled, others and
    /// gone ones forgotten. A changed check starts over; readiness changes keep the history.
    pub fn applied(&self, registry: &Registry, events: &[Event]) {
        let now = self.now();
        let mut entries = self.lock();
        for ev in events {
            let id = ev.instance.spec.instance_id.as_str();
            match (ev.kind, registry.get(id)) {
                (EventKind::Upsert, Some(inst)) => self.follow(&mut entries, inst, now),
                _ => {
                    entries.remove(id);
                }
            }
        }
        drop(entries);
        self.wake.notify_one();
    }

    /// The registry was replaced: follow every checked instance afresh.
    pub fn restored(&self, registry: &Registry) {
        let now = self.now();
        let mut entries = self.lock();
        entries.clear();
        for inst in registry.instances() {
            self.follow(&mut entries, inst, now);
        }
        drop(entries);
        self.wake.notify_one();
    }

    fn follow(&self, entries: &mut HashMap<String, Entry>, inst: &Instance, now: u64) {
        let id = &inst.spec.instance_id;
        let Some(check) = inst
            .spec
            .check
            .clone()
            .filter(|c| matches!(c.kind, CheckKind::Http | CheckKind::Tcp))
        else {
            entries.remove(id);
            return;
        };
        match entries.get_mut(id) {
            Some(e) if e.check == check && e.host == inst.spec.host && e.port == inst.spec.port => {
            }
            _ => {
                let entry = Entry {
                    check,
                    host: inst.spec.host.clone(),
                    port: inst.spec.port,
                    tracker: Tracker::new(inst.ready),
                    due: now,
                    in_flight: false,
                };
                entries.insert(id.clone(), entry);
            }
        }
    }

    /// Probes while this node leads, until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, raft: Arc<RaftNode>, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let (tx, mut results) = mpsc::unbounded_channel::<(String, Probe, u64)>();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let now = self.now();
            let leading = raft.leading_term().is_some();
            let mut next_due = now + 1_000;
            if leading {
                let mut entries = self.lock();
                for (id, e) in entries.iter_mut() {
                    if e.in_flight {
                        continue;
                    }
                    if e.due > now {
                        next_due = next_due.min(e.due);
                        continue;
                    }
                    e.in_flight = true;
                    let (id, check, host, port) =
                        (id.clone(), e.check.clone(), e.host.clone(), e.port);
                    let (tx, permits, http, epoch) =
                        (tx.clone(), permits.clone(), self.http.clone(), self.epoch);
                    let metrics = self.metrics.clone();
                    tokio::spawn(async move {
                        let Ok(_permit) = permits.acquire_owned().await else {
                            return;
                        };
                        let started = Instant::now();
                        let probe = probe(&http, &check, &host, port).await;
                        let kind = if check.kind == CheckKind::Http {
                            "http"
                        } else {
                            "tcp"
                        };
                        let result = if probe == Probe::Pass { "pass" } else { "fail" };
                        metrics
                            .probes
                            .get_or_create(&ProbeLabels {
                                r#type: kind,
                                result,
                            })
                            .inc();
                        metrics
                            .probe_latency
                            .get_or_create(&TypeLabels { r#type: kind })
                            .observe(started.elapsed().as_secs_f64());
                        let done = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                        let _ = tx.send((id, probe, done));
                    });
                }
            }
            let sleep =
                tokio::time::sleep(Duration::from_millis(next_due.saturating_sub(now).max(1)));
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                Some((id, result, done)) = results.recv() => self.record(&raft, id, result, done),
                _ = self.wake.notified() => {}
                _ = sleep => {}
            }
            // Take every result that is already there.
            while let Ok((id, result, done)) = results.try_recv() {
                self.record(&raft, id, result, done);
            }
        }
    }

    /// Feeds one result to its tracker and proposes the transition it decides, if any.
    fn record(&self, raft: &Arc<RaftNode>, id: String, result: Probe, done: u64) {
        let verdict = {
            let mut entries = self.lock();
            let Some(e) = entries.get_mut(&id) else {
                return;
            };
            e.in_flight = false;
            e.due = done + e.check.interval;
            e.tracker.observe(&result, done, &e.check, &self.flap)
        };
        if let Some(v) = verdict {
            let to = match (v.ready, v.reason == FLAPPING) {
                (_, true) => "flapping",
                (true, _) => "ready",
                (false, _) => "not_ready",
            };
            self.metrics
                .check_transitions
                .get_or_create(&TransitionLabels { to })
                .inc();
            let raft = raft.clone();
            tokio::spawn(async move {
                let cmd = Command::SetReadiness {
                    instance_id: id.clone(),
                    ready: v.ready,
                    reason: v.reason,
                    at: wall_ms(),
                };
                if let Err(e) = raft.propose_local(cmd).await {
                    tracing::warn!(instance = %id, error = %e, "could not record a readiness change");
                }
            });
        }
    }
}

/// Runs one probe: an HTTP request that must answer 2xx/3xx, or a TCP connect.
async fn probe(http: &reqwest::Client, check: &Check, host: &str, port: u16) -> Probe {
    let timeout = Duration::from_millis(check.timeout);
    match check.kind {
        CheckKind::Http => {
            let url = if check.target.starts_with("http://") || check.target.starts_with("https://")
            {
                check.target.clone()
            } else {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.to_string()
                };
                format!("http://{host}:{port}{}", check.target)
            };
            match http.get(&url).timeout(timeout).send().await {
                Ok(r) if r.status().is_success() || r.status().is_redirection() => Probe::Pass,
                Ok(r) => Probe::Fail(format!("HTTP {}", r.status().as_u16())),
                Err(e) if e.is_timeout() => Probe::Fail(format!("timed out after {timeout:?}")),
                Err(e) => Probe::Fail(format!("request failed: {e}")),
            }
        }
        CheckKind::Tcp => {
            let target = if check.target.is_empty() {
                format!("{host}:{port}")
            } else {
                check.target.clone()
            };
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&target)).await {
                Ok(Ok(_)) => Probe::Pass,
                Ok(Err(e)) => Probe::Fail(format!("connect to {target} failed: {e}")),
                Err(_) => Probe::Fail(format!("connect to {target} timed out after {timeout:?}")),
            }
        }
        // Not followed by the checker (see `follow`): never reached.
        CheckKind::Grpc | CheckKind::Ttl => {
            Probe::Fail(format!("{:?} checks are not probed", check.kind))
        }
    }
}
