//! The registry state machine: [`Command`]s in, new state plus [`Event`]s out.
//!
//! # Correctness
//!
//! - `apply` is deterministic: it reads no clock (every command carries the leader's wall time)
//!   and iterates only ordered maps, so every replica that applies the same log holds the same
//!   state, and [`Registry::snapshot`] of two such replicas (of the same Muster version) is
//!   byte-identical.
//! - Indices never decrease: the registry index is the index of the last applied log entry, each
//!   service's modify index is the registry index of its last change, and each instance's
//!   `modifyIndex` is the registry index of its last change. `apply` rejects an index that does
//!   not move forward.
//! - A command that is refused (unknown instance, limit, conflict) changes nothing but the
//!   registry index.
//!
//! The lifecycle (DESIGN.md §3) is enforced here and nowhere else:
//!
//! ```text
//!  register ──▶ STARTING ──ready──▶ HEALTHY ──not ready──▶ UNHEALTHY ──ready──▶ HEALTHY
//!                  │  (or HEALTHY at once when registered without a check and asked to)
//!   any live status ──drain──▶ DRAINING ──undrain──▶ HEALTHY if ready, else STARTING
//!   any live status ──lease lapse──▶ EXPIRED ─┐
//!   any live status ──deregister───▶ REMOVED ─┴─▶ event emitted, instance dropped
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arcstr::ArcStr;
use serde::{Deserialize, Serialize};

use crate::intern::Interner;
use crate::model::{Instance, InstanceSpec, Status};

/// Capacity limits, carried in each `Register` command so that every replica enforces the
/// leader's configuration, whatever its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Most instances one service may hold.
    pub max_instances_per_service: u32,
    /// Most instances the registry may hold.
    pub max_instances: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_instances_per_service: 10_000,
            max_instances: 200_000,
        }
    }
}

/// A registry mutation: the payload of one Raft log entry. Times are the proposing leader's wall
/// clock in milliseconds since the Unix epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Command {
    /// Register or re-register (upsert by instance id).
    Register {
        /// The validated spec.
        spec: Box<InstanceSpec>,
        /// The caller asked to start HEALTHY (only valid without an active check).
        want_healthy: bool,
        /// Capacity limits in force.
        limits: Limits,
        /// The leader saw this instance's lease lapsed: count the registration as a change even
        /// if nothing else differs, so that an expiry decided before it (which names the old
        /// modify index) cannot remove the revived instance.
        #[serde(default)]
        revive: bool,
        /// Leader wall time.
        at: u64,
    },
    /// Deregister: the instance becomes REMOVED and is dropped.
    Deregister {
        /// Instance id.
        instance_id: String,
        /// Leader wall time.
        at: u64,
    },
    /// Operator or instance sets DRAINING, or takes it back (`HEALTHY`).
    SetStatus {
        /// Instance id.
        instance_id: String,
        /// `Draining` or `Healthy`.
        status: Status,
        /// Free-form reason; a default is used when empty.
        reason: String,
        /// Leader wall time.
        at: u64,
    },
    /// Readiness reported by a heartbeat or a check.
    SetReadiness {
        /// Instance id.
        instance_id: String,
        /// Whether the instance is ready to serve.
        ready: bool,
        /// Why, for `statusReason`.
        reason: String,
        /// Leader wall time.
        at: u64,
    },
    /// Liveness found by an active liveness check. `false` takes the instance out of rotation
    /// (UNHEALTHY, DRAINING stays DRAINING) and gives up its lease: the leader expires it like
    /// a lapsed one (so mass-expiry protection applies) and refuses its renewals. `true` (the
    /// check passed again before that) restores it.
    SetLiveness {
        /// Instance id.
        instance_id: String,
        /// Whether the instance is alive.
        live: bool,
        /// Why, for `statusReason`.
        reason: String,
        /// Leader wall time.
        at: u64,
    },
    /// Lease lapse: each listed instance becomes EXPIRED and is dropped, unless it changed since
    /// the leader decided (its modify index no longer matches).
    ///
    /// Only the leader that holds the leases decides an expiry, and proposes it itself. `term`
    /// is the term it believed it led in; the Raft layer drops an expiry whose entry carries
    /// another term (`Command::is_valid_in_term`: a sweeper whose view of leadership lagged).
    /// An expiry appended just before its leader lost office may still be committed by the
    /// next leader; that leader applies it before it acknowledges any heartbeat (see
    /// `RaftNode::leading_term` in the server), so no acknowledged renewal is undone by it.
    Expire {
        /// `(instance id, modify index the leader saw)`.
        instances: Vec<(String, u64)>,
        /// Term of the leader that decided it.
        #[serde(default)]
        term: u64,
        /// Leader wall time.
        at: u64,
    },
}

impl Command {
    /// Whether this command may take effect as a log entry of `term`. Every command may,
    /// except an expiry decided by the leader of another term.
    pub fn is_valid_in_term(&self, entry_term: u64) -> bool {
        match self {
            Command::Expire { term, .. } => *term == entry_term,
            _ => true,
        }
    }

    /// A one-word name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Register { .. } => "register",
            Command::Deregister { .. } => "deregister",
            Command::SetStatus { .. } => "set_status",
            Command::SetReadiness { .. } => "set_readiness",
            Command::SetLiveness { .. } => "set_liveness",
            Command::Expire { .. } => "expire",
        }
    }
}

/// What a command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Applied {
    /// Registered; `created` is false for a re-registration.
    Registered {
        /// A new instance (201) rather than an update (200).
        created: bool,
        /// The instance as stored.
        instance: Arc<Instance>,
    },
    /// The instance as it is after a status or readiness change (possibly unchanged).
    Updated {
        /// The instance as stored.
        instance: Arc<Instance>,
    },
    /// The instance as it was when it was dropped.
    Removed {
        /// The instance, with status REMOVED.
        instance: Arc<Instance>,
    },
    /// Ids of the instances that expired (stale entries are skipped).
    Expired {
        /// Instance ids.
        instance_ids: Vec<String>,
    },
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum ApplyError {
    /// No instance has this id.
    #[error("no instance with id {0:?} is registered")]
    UnknownInstance(String),
    /// The instance id is taken by another service.
    #[error("instance id {instance_id:?} is already registered to service {existing_service:?}")]
    IdConflict {
        /// The id.
        instance_id: String,
        /// The service that holds it.
        existing_service: String,
    },
    /// A capacity limit would be exceeded.
    #[error("{what} limit of {limit} instances reached")]
    LimitExceeded {
        /// `service` or `registry`.
        what: String,
        /// The limit.
        limit: u32,
    },
    /// The requested status change is not allowed from the current status.
    #[error("cannot set {to} on an instance that is {from}: {why}")]
    InvalidTransition {
        /// Current status.
        from: Status,
        /// Requested status.
        to: Status,
        /// Explanation.
        why: String,
    },
}

/// A change to one service, in apply order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Registry index of the change.
    pub index: u64,
    /// What happened.
    pub kind: EventKind,
    /// The instance after the change (for a removal: with status EXPIRED or REMOVED).
    pub instance: Arc<Instance>,
    /// Its status before the change (`None` for a new instance).
    pub from: Option<Status>,
}

/// The kind of an [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Created or changed.
    Upsert,
    /// Gone (EXPIRED or REMOVED); a tombstone in the event history.
    Delete,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ServiceState {
    modify_index: u64,
    /// Instance ids: the same allocations as the keys of `Registry::instances`.
    instances: BTreeSet<ArcStr>,
}

/// The whole registry: every live instance, by id and by service.
///
/// An instance id is allocated once: the instance, its key here and its entry in its service
/// share it. Its other strings are shared with every instance that has the same value
/// (`Interner`).
#[derive(Clone, Debug, Default)]
pub struct Registry {
    index: u64,
    instances: BTreeMap<ArcStr, Arc<Instance>>,
    services: BTreeMap<ArcStr, ServiceState>,
    strings: Interner,
}

impl PartialEq for Registry {
    /// The same state; where its strings live does not count.
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index
            && self.instances == other.instances
            && self.services == other.services
    }
}

impl Eq for Registry {}

/// The persisted form of a [`Registry`].
#[derive(Serialize, Deserialize)]
struct SnapshotForm {
    index: u64,
    services: BTreeMap<ArcStr, u64>,
    instances: Vec<Arc<Instance>>,
}

/// A registry's state taken for a snapshot ([`Registry::snapshot_parts`]).
pub struct RegistrySnapshot(SnapshotForm);

impl RegistrySnapshot {
    /// Streams the snapshot bytes (what [`Registry::restore`] reads) into `w`.
    pub fn write_to(&self, w: impl std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer(w, &self.0).map_err(std::io::Error::other)
    }
}

/// A snapshot that could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("registry snapshot is corrupt: {0}")]
pub struct SnapshotError(String);

/// `apply` was given an index that does not move forward.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("log index {given} does not follow the applied index {applied}")]
pub struct IndexError {
    /// The index given.
    pub given: u64,
    /// The registry index.
    pub applied: u64,
}

impl Registry {
    /// An empty registry at index 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Index of the last applied log entry.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// One instance by id.
    pub fn get(&self, instance_id: &str) -> Option<&Arc<Instance>> {
        self.instances.get(instance_id)
    }

    /// Number of live instances.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether the registry holds no instance.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Every live instance, ordered by id.
    pub fn instances(&self) -> impl Iterator<Item = &Arc<Instance>> {
        self.instances.values()
    }

    /// The modify index of a service, or `None` if it holds no instance.
    pub fn service_index(&self, service: &str) -> Option<u64> {
        self.services.get(service).map(|s| s.modify_index)
    }

    /// Names of every service that holds at least one instance, ordered.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(|s| &**s)
    }

    /// A service's instances, ordered by id.
    pub fn service_instances<'a>(
        &'a self,
        service: &str,
    ) -> impl Iterator<Item = &'a Arc<Instance>> + 'a {
        self.services
            .get(service)
            .into_iter()
            .flat_map(|s| s.instances.iter())
            .filter_map(|id| self.instances.get(id))
    }

    /// Moves the index forward for a log entry that carries no command (a Raft blank or
    /// membership entry).
    pub fn advance(&mut self, index: u64) -> Result<(), IndexError> {
        if index <= self.index {
            return Err(IndexError {
                given: index,
                applied: self.index,
            });
        }
        self.index = index;
        Ok(())
    }

    /// Applies the command of log entry `index`, appending the resulting events to `events`.
    pub fn apply(
        &mut self,
        index: u64,
        cmd: &Command,
        events: &mut Vec<Event>,
    ) -> Result<Result<Applied, ApplyError>, IndexError> {
        self.advance(index)?;
        Ok(match cmd {
            Command::Register {
                spec,
                want_healthy,
                limits,
                revive,
                at,
            } => self.register(spec, *want_healthy, *limits, *revive, *at, events),
            Command::Deregister { instance_id, at } => self
                .remove(instance_id, Status::Removed, "deregistered", *at, events)
                .map(|instance| Applied::Removed { instance })
                .ok_or_else(|| ApplyError::UnknownInstance(instance_id.clone())),
            Command::SetStatus {
                instance_id,
                status,
                reason,
                at,
            } => self.set_status(instance_id, *status, reason, *at, events),
            Command::SetReadiness {
                instance_id,
                ready,
                reason,
                at,
            } => self.set_readiness(instance_id, *ready, reason, *at, events),
            Command::SetLiveness {
                instance_id,
                live,
                reason,
                at,
            } => self.set_liveness(instance_id, *live, reason, *at, events),
            Command::Expire { instances, at, .. } => {
                let mut instance_ids = Vec::new();
                for (id, seen) in instances {
                    let Some(inst) = self.instances.get(id.as_str()) else {
                        continue;
                    };
                    if inst.modify_index != *seen {
                        continue;
                    }
                    let reason = format!(
                        "lease expired: no heartbeat within {}",
                        humantime::format_duration(std::time::Duration::from_millis(
                            inst.spec.lease_ttl()
                        ))
                    );
                    if self
                        .remove(id, Status::Expired, &reason, *at, events)
                        .is_some()
                    {
                        instance_ids.push(id.clone());
                    }
                }
                Ok(Applied::Expired { instance_ids })
            }
        })
    }

    fn register(
        &mut self,
        spec: &InstanceSpec,
        want_healthy: bool,
        limits: Limits,
        revive: bool,
        at: u64,
        events: &mut Vec<Event>,
    ) -> Result<Applied, ApplyError> {
        let index = self.index;
        if let Some(existing) = self.instances.get(&spec.instance_id) {
            if existing.spec.service() != spec.service() {
                return Err(ApplyError::IdConflict {
                    instance_id: spec.instance_id.to_string(),
                    existing_service: existing.spec.service().to_string(),
                });
            }
            let mut next = Instance::clone(existing);
            next.spec = spec.clone();
            next.spec.instance_id = existing.spec.instance_id.clone();
            self.strings.spec(&mut next.spec);
            if !next.live {
                // Back after its liveness check failed: a fresh start, not straight into
                // rotation (and a drain stays a drain).
                next.live = true;
                next.ready = false;
                if next.status != Status::Draining {
                    transition(
                        &mut next,
                        Status::Starting,
                        "re-registered after a failed liveness check; waiting for readiness",
                        at,
                    );
                }
            }
            if want_healthy && !next.ready {
                next.ready = true;
                if next.status == Status::Starting || next.status == Status::Unhealthy {
                    transition(&mut next, Status::Healthy, "registered as healthy", at);
                }
            }
            if next == **existing && !revive {
                // An idempotent re-registration changes nothing and wakes nobody.
                return Ok(Applied::Registered {
                    created: false,
                    instance: existing.clone(),
                });
            }
            next.modify_index = index;
            let instance = self.store(next, events);
            return Ok(Applied::Registered {
                created: false,
                instance,
            });
        }
        let in_service = self
            .services
            .get(spec.service())
            .map_or(0, |s| s.instances.len());
        if in_service >= limits.max_instances_per_service as usize {
            return Err(ApplyError::LimitExceeded {
                what: "per-service".into(),
                limit: limits.max_instances_per_service,
            });
        }
        if self.instances.len() >= limits.max_instances as usize {
            return Err(ApplyError::LimitExceeded {
                what: "registry".into(),
                limit: limits.max_instances,
            });
        }
        let (status, reason) = if want_healthy {
            (Status::Healthy, "registered as healthy")
        } else {
            (Status::Starting, "registered; waiting for readiness")
        };
        let mut spec = spec.clone();
        self.strings.spec(&mut spec);
        let instance = Instance {
            spec,
            status,
            status_reason: reason.into(),
            ready: want_healthy,
            live: true,
            registered_at: at,
            status_changed_at: at,
            create_index: index,
            modify_index: index,
        };
        let instance = self.store(instance, events);
        Ok(Applied::Registered {
            created: true,
            instance,
        })
    }

    fn set_status(
        &mut self,
        id: &str,
        to: Status,
        reason: &str,
        at: u64,
        events: &mut Vec<Event>,
    ) -> Result<Applied, ApplyError> {
        let existing = self.existing(id)?;
        let mut next = Instance::clone(existing);
        let given = |default: &'static str| {
            if reason.is_empty() { default } else { reason }
        };
        match (existing.status, to) {
            (Status::Draining, Status::Draining) | (Status::Healthy, Status::Healthy) => {
                return Ok(Applied::Updated {
                    instance: existing.clone(),
                });
            }
            (_, Status::Draining) => {
                transition(&mut next, Status::Draining, given("drain requested"), at)
            }
            (Status::Draining | Status::Starting, Status::Healthy) if !existing.live => {
                transition(
                    &mut next,
                    Status::Unhealthy,
                    "undrained, but its liveness check is failing",
                    at,
                );
            }
            (Status::Draining | Status::Starting, Status::Healthy) => {
                let no_active_check = next.spec.check().is_none_or(|c| !c.kind.is_probed());
                if next.status == Status::Starting && !no_active_check {
                    return Err(ApplyError::InvalidTransition {
                        from: Status::Starting,
                        to,
                        why:
                            "an instance with an active check becomes HEALTHY when the check passes"
                                .into(),
                    });
                }
                if no_active_check {
                    next.ready = true;
                }
                if next.ready {
                    transition(&mut next, Status::Healthy, given("returned to service"), at);
                } else {
                    transition(
                        &mut next,
                        Status::Starting,
                        given("undrained; waiting for readiness"),
                        at,
                    );
                }
            }
            (from, to) => {
                return Err(ApplyError::InvalidTransition {
                    from,
                    to,
                    why: "only DRAINING and HEALTHY may be set, and UNHEALTHY instances return when readiness passes"
                        .into(),
                });
            }
        }
        next.modify_index = self.index;
        let instance = self.store(next, events);
        Ok(Applied::Updated { instance })
    }

    fn set_readiness(
        &mut self,
        id: &str,
        ready: bool,
        reason: &str,
        at: u64,
        events: &mut Vec<Event>,
    ) -> Result<Applied, ApplyError> {
        let existing = self.existing(id)?;
        if existing.ready == ready {
            // Still out of rotation, for a new reason (e.g. held out for flapping): say so.
            let out = matches!(existing.status, Status::Starting | Status::Unhealthy);
            // A failed liveness check is the reason that counts while it lasts.
            if ready || !out || *existing.status_reason == *reason || !existing.live {
                return Ok(Applied::Updated {
                    instance: existing.clone(),
                });
            }
            let mut next = Instance::clone(existing);
            next.status_reason = reason.into();
            next.modify_index = self.index;
            let instance = self.store(next, events);
            return Ok(Applied::Updated { instance });
        }
        let mut next = Instance::clone(existing);
        next.ready = ready;
        match (next.status, ready) {
            (Status::Starting | Status::Unhealthy, true) if next.live => {
                transition(&mut next, Status::Healthy, reason, at);
            }
            (Status::Healthy, false) => transition(&mut next, Status::Unhealthy, reason, at),
            // DRAINING keeps its status; STARTING stays STARTING until the first pass.
            _ => {}
        }
        next.modify_index = self.index;
        let instance = self.store(next, events);
        Ok(Applied::Updated { instance })
    }

    fn existing(&self, id: &str) -> Result<&Arc<Instance>, ApplyError> {
        self.instances
            .get(id)
            .ok_or_else(|| ApplyError::UnknownInstance(id.into()))
    }

    fn set_liveness(
        &mut self,
        id: &str,
        live: bool,
        reason: &str,
        at: u64,
        events: &mut Vec<Event>,
    ) -> Result<Applied, ApplyError> {
        let existing = self.existing(id)?;
        // A verdict that was on its way while the instance re-registered without a liveness
        // check is stale: nothing would ever say it is alive again.
        if existing.live == live || existing.spec.liveness_check().is_none() {
            return Ok(Applied::Updated {
                instance: existing.clone(),
            });
        }
        let mut next = Instance::clone(existing);
        next.live = live;
        match (next.status, live) {
            (Status::Draining, _) => next.status_reason = reason.into(),
            (_, false) => transition(&mut next, Status::Unhealthy, reason, at),
            (Status::Unhealthy, true) if next.ready => {
                transition(&mut next, Status::Healthy, reason, at)
            }
            (_, true) => {
                next.status_reason = format!("{reason}; waiting for readiness").into();
            }
        }
        next.modify_index = self.index;
        let instance = self.store(next, events);
        Ok(Applied::Updated { instance })
    }

    /// Stores a live instance and records its event.
    fn store(&mut self, mut instance: Instance, events: &mut Vec<Event>) -> Arc<Instance> {
        self.strings.reason(&mut instance);
        let instance = Arc::new(instance);
        let svc = self
            .services
            .entry(instance.spec.service().clone())
            .or_default();
        svc.modify_index = self.index;
        svc.instances.insert(instance.spec.instance_id.clone());
        let from = self
            .instances
            .insert(instance.spec.instance_id.clone(), instance.clone())
            .map(|old| old.status);
        events.push(Event {
            index: self.index,
            kind: EventKind::Upsert,
            instance: instance.clone(),
            from,
        });
        instance
    }

    /// Drops an instance with a terminal status and records its tombstone event.
    fn remove(
        &mut self,
        id: &str,
        status: Status,
        reason: &str,
        at: u64,
        events: &mut Vec<Event>,
    ) -> Option<Arc<Instance>> {
        let existing = self.instances.remove(id)?;
        self.strings.removed();
        let mut gone = Instance::clone(&existing);
        transition(&mut gone, status, reason, at);
        gone.ready = false;
        gone.modify_index = self.index;
        let service = gone.spec.service();
        if let Some(svc) = self.services.get_mut(&**service) {
            svc.instances.remove(id);
            svc.modify_index = self.index;
            if svc.instances.is_empty() {
                self.services.remove(&**service);
            }
        }
        let gone = Arc::new(gone);
        events.push(Event {
            index: self.index,
            kind: EventKind::Delete,
            instance: gone.clone(),
            from: Some(existing.status),
        });
        Some(gone)
    }

    /// The registry as bytes, for a Raft snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.snapshot_parts()
            .write_to(&mut out)
            .unwrap_or_else(|e| unreachable!("registry always encodes: {e}"));
        out
    }

    /// What a snapshot holds, taken cheaply (the instances are shared, not copied) so that the
    /// encoding, [`RegistrySnapshot::write_to`], can run without the registry.
    pub fn snapshot_parts(&self) -> RegistrySnapshot {
        RegistrySnapshot(SnapshotForm {
            index: self.index,
            services: self
                .services
                .iter()
                .map(|(k, v)| (k.clone(), v.modify_index))
                .collect(),
            instances: self.instances.values().cloned().collect(),
        })
    }

    /// Rebuilds a registry from [`Registry::snapshot`] bytes.
    pub fn restore(bytes: &[u8]) -> Result<Registry, SnapshotError> {
        let form: SnapshotForm =
            serde_json::from_slice(bytes).map_err(|e| SnapshotError(e.to_string()))?;
        let mut reg = Registry {
            index: form.index,
            ..Registry::default()
        };
        for inst in form.instances {
            let mut inst = Arc::unwrap_or_clone(inst);
            reg.strings.spec(&mut inst.spec);
            reg.strings.reason(&mut inst);
            let inst = Arc::new(inst);
            let svc = reg.services.entry(inst.spec.service().clone()).or_default();
            svc.instances.insert(inst.spec.instance_id.clone());
            if inst.modify_index > form.index {
                return Err(SnapshotError(format!(
                    "instance {:?} has modify index {} beyond the snapshot index {}",
                    inst.spec.instance_id, inst.modify_index, form.index
                )));
            }
            reg.instances.insert(inst.spec.instance_id.clone(), inst);
        }
        for (name, svc) in &mut reg.services {
            svc.modify_index = *form.services.get(name).ok_or_else(|| {
                SnapshotError(format!(
                    "service {name:?} has instances but no modify index"
                ))
            })?;
        }
        Ok(reg)
    }
}

fn transition(inst: &mut Instance, to: Status, reason: &str, at: u64) {
    if inst.status != to {
        inst.status_changed_at = at;
    }
    inst.status = to;
    if *inst.status_reason != *reason {
        inst.status_reason = reason.into();
    }
}

#[cfg(test)]
mod tests;
