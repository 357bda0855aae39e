//! The lease runtime around [`muster_core::LeaseTable`]: the clock, the renewals, and the sweeper
//! that proposes `Expire` through Raft while this node leads.
//!
//! # Correctness
//!
//! - Every node tracks every instance (from applied events), but only the leader renews and
//!   expires. A node that becomes leader gives every lease one full TTL (`arm_all`), once per
//!   term of office, so a failover never mass-expires and never extends a lease twice.
//! - Expiry goes through the log and names the modify index the leader saw; an instance that
//!   changed in the meantime is not expired by a stale decision.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use muster_core::{
    Assessment, Command, Event, EventKind, Instance, LeaseTable, ProtectionConfig, Registry,
    RenewError,
};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::raft::RaftNode;

/// Most instances expired by one log entry.
const EXPIRE_BATCH: usize = 1000;
/// Longest the sweeper sleeps without looking.
const MAX_SLEEP_MS: u64 = 1000;

/// Lease deadlines and the sweeper's wake-up.
pub struct Leases {
    table: Mutex<LeaseTable>,
    /// Mass-expiry protection (always taken after `table`).
    protection: Mutex<Protection>,
    /// The term whose leader last re-armed every lease (always taken after `table`).
    armed_term: Mutex<Option<u64>>,
    epoch: Instant,
    wake: Notify,
    sleeping_until: AtomicU64,
}

/// What is known of one lease, in wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTimes {
    /// Last renewal (or registration, or leader take-over).
    pub renewed_at: SystemTime,
    /// When it runs out.
    pub expires_at: SystemTime,
}

impl Default for Leases {
    fn default() -> Self {
        Self::new(ProtectionConfig::default(), Duration::from_secs(300))
    }
}

/// Mass-expiry protection as the sweeper last found it.
#[derive(Debug, Default)]
struct Protection {
    config: ProtectionConfig,
    /// Longest protection holds before expiry resumes.
    bound_ms: u64,
    /// Monotonic start and wall-clock start of the current episode.
    since: Option<(u64, SystemTime)>,
    bound_reached: bool,
    last: Assessment,
}

impl Protection {
    /// What is held now, if anything.
    fn holding(&self) -> Option<&Assessment> {
        (self.since.is_some() && !self.bound_reached).then_some(&self.last)
    }
}

/// Mass-expiry protection, for the API.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtectionView {
    /// Expiries are being held.
    pub active: bool,
    /// When the current episode began (RFC 3339).
    pub since: Option<String>,
    /// Why.
    pub reason: String,
    /// The episode outlasted its bound: expiry has resumed.
    pub bound_reached: bool,
    /// Services whose expiries are held (all, when `registryHeld`).
    pub held_services: Vec<String>,
    /// Every expiry is held.
    pub registry_held: bool,
    /// Leases tracked.
    pub tracked: usize,
    /// Leases silent for over half their TTL.
    pub at_risk: usize,
    /// Share of leases at risk above which expiries are held.
    pub threshold: f64,
}

impl Leases {
    /// An empty table whose clock starts now; protection holds expiries for at most `bound`.
    pub fn new(config: ProtectionConfig, bound: Duration) -> Self {
        let bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        Leases {
            table: Mutex::new(LeaseTable::new()),
            protection: Mutex::new(Protection {
                config,
                bound_ms,
                ..Protection::default()
            }),
            armed_term: Mutex::new(None),
            epoch: Instant::now(),
            wake: Notify::new(),
            sleeping_until: AtomicU64::new(u64::MAX),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LeaseTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Milliseconds on this table's monotonic clock.
    pub fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn to_wall(&self, mono: u64, now: u64) -> SystemTime {
        let wall = SystemTime::now();
        if mono >= now {
            wall + Duration::from_millis(mono - now)
        } else {
            wall - Duration::from_millis(now - mono)
        }
    }

    /// Number of tracked leases.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no lease is tracked.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Follows an applied batch, under the state machine's lock so that the table changes in
    /// log order: every instance the batch touched is reconciled with the registry as it now
    /// stands, and those it (re-)registered start a full TTL.
    pub fn applied(&self, registry: &Registry, events: &[Event], registered: &[Arc<Instance>]) {
        let now = self.now();
        let mut earliest = u64::MAX;
        {
            let mut table = self.lock();
            let current = |id: &str| {
                registry.get(id).map(|i| {
                    (
                        i.spec.service().as_str(),
                        i.spec.lease_ttl(),
                        i.modify_index,
                    )
                })
            };
            for ev in events {
                let id = &ev.instance.spec.instance_id;
                if table.info(id).is_none() && ev.kind == EventKind::Upsert {
                    earliest = earliest.min(now.saturating_add(ev.instance.spec.lease_ttl()));
                }
                table.reconcile(id, current(id), false, now);
            }
            for inst in registered {
                let id = &inst.spec.instance_id;
                table.reconcile(id, current(id), true, now);
                earliest = earliest.min(now.saturating_add(inst.spec.lease_ttl()));
            }
            // Liveness last: a registration earlier in the batch restarts the lease, and must
            // not undo a failed liveness check applied after it.
            for id in events.iter().map(|e| e.instance.spec.instance_id.as_str()) {
                if let Some(inst) = registry.get(id)
                    && table.set_live(id, inst.live, now)
                {
                    earliest = now; // its liveness check failed: expire it (or hold it) now
                }
            }
        }
        self.nudge(earliest);
    }

    /// The registry was replaced: track every instance afresh with a full TTL.
    pub fn restored(&self, registry: &Registry) {
        let now = self.now();
        let mut table = self.lock();
        *table = LeaseTable::new();
        for inst in registry.instances() {
            table.track(
                &inst.spec.instance_id,
                inst.spec.service(),
                inst.spec.lease_ttl(),
                inst.modify_index,
                now,
            );
            table.set_live(&inst.spec.instance_id, inst.live, now);
        }
        drop(table);
        self.nudge(0);
    }

    /// Forgets the protection episode this node ran as leader: the next leader judges afresh
    /// (every lease re-armed with a full TTL), and this node no longer reports it.
    fn stand_down(&self) {
        let mut p = self.protection.lock().unwrap_or_else(|p| p.into_inner());
        if p.since.is_some() {
            tracing::info!("not leading: mass-expiry protection state dropped");
        }
        p.since = None;
        p.bound_reached = false;
        p.last = Assessment::default();
    }

    /// Assesses the table for mass-expiry protection, logs the start and end of an episode, and
    /// returns what the sweeper must hold.
    fn protect(&self, table: &mut LeaseTable, now: u64) -> Assessment {
        let mut p = self.protection.lock().unwrap_or_else(|p| p.into_inner());
        let a = table.assess(now, &p.config);
        match (p.since, a.holds_anything()) {
            (None, true) => {
                p.since = Some((now, SystemTime::now()));
                p.bound_reached = false;
                tracing::warn!(
                    at_risk = a.at_risk,
                    tracked = a.tracked,
                    registry = a.registry_held,
                    services = ?a.held_services,
                    "mass-expiry protection on: too many leases went silent at once; holding their expiry"
                );
            }
            (Some((start, _)), true)
                if !p.bound_reached && now.saturating_sub(start) >= p.bound_ms =>
            {
                p.bound_reached = true;
                tracing::warn!(
                    at_risk = a.at_risk,
                    "mass-expiry protection reached its bound: expiring again"
                );
            }
            (Some(_), true) if !p.bound_reached && p.last.releases_some(&a) => {
                // Still on, but services whose renewals resumed are let go: their lapsed
                // leases get a fresh TTL, as when the whole episode ends.
                let last = &p.last;
                let rearmed = table.rearm_held(now, |s| last.holds(s) && !a.holds(s));
                if rearmed > 0 {
                    tracing::info!(
                        rearmed,
                        services = ?a.held_services,
                        "mass-expiry protection narrowed: renewals resumed for some services"
                    );
                }
            }
            (Some(_), false) => {
                // Renewals resumed: whatever was held and is still lapsed gets a fresh TTL to
                // come back in (unless the bound had already let expiry resume).
                let rearmed = if p.bound_reached {
                    0
                } else {
                    let last = &p.last;
                    table.rearm_held(now, |s| last.holds(s))
                };
                p.since = None;
                p.bound_reached = false;
                tracing::info!(
                    at_risk = a.at_risk,
                    tracked = a.tracked,
                    rearmed,
                    "mass-expiry protection off: renewals resumed"
                );
            }
            _ => {}
        }
        p.last = a;
        p.holding().cloned().unwrap_or_default()
    }

    /// Mass-expiry protection as the sweeper last assessed it (on the leader).
    pub fn protection(&self) -> ProtectionView {
        let p = self.protection.lock().unwrap_or_else(|p| p.into_inner());
        let a = &p.last;
        let reason = match (p.since.is_some(), a.registry_held) {
            (false, _) => String::new(),
            (true, true) => format!(
                "{} of {} leases went silent at once (over {:.0}%)",
                a.at_risk,
                a.tracked,
                p.config.threshold * 100.0
            ),
            (true, false) => format!(
                "most leases of {} service(s) went silent at once",
                a.held_services.len()
            ),
        };
        ProtectionView {
            active: p.holding().is_some(),
            since: p.since.map(|(_, wall)| crate::http::rfc3339(wall)),
            reason,
            bound_reached: p.bound_reached,
            held_services: a.held_services.iter().map(|s| s.to_string()).collect(),
            registry_held: a.registry_held,
            tracked: a.tracked,
            at_risk: a.at_risk,
            threshold: p.config.threshold,
        }
    }

    /// Whether the lease has lapsed (its expiry may be on its way through the log).
    pub fn is_lapsed(&self, id: &str) -> bool {
        let now = self.now();
        self.lock().is_lapsed(id, now)
    }

    /// Renews a lease on behalf of the leader of `term`; returns when it now runs out. The
    /// first call of a term (here or in the sweeper) re-arms every lease first.
    pub fn renew(&self, id: &str, term: u64) -> Result<SystemTime, RenewError> {
        let now = self.now();
        let mut table = self.lock();
        self.ensure_armed(&mut table, term, now);
        // A lease whose expiry protection holds may renew although it lapsed: no expiry was
        // decided for it, and its instance is back.
        let held = {
            let p = self.protection.lock().unwrap_or_else(|p| p.into_inner());
            p.holding()
                .is_some_and(|a| table.service_of(id).is_some_and(|s| a.holds(s)))
        };
        let deadline = if held {
            table.renew_held(id, now)?
        } else {
            table.renew(id, now)?
        };
        Ok(self.to_wall(deadline, now))
    }

    /// Gives every lease a full TTL, once per term of office: until now renewals went to
    /// another node, or nowhere.
    fn ensure_armed(&self, table: &mut LeaseTable, term: u64, now: u64) {
        let mut armed = self.armed_term.lock().unwrap_or_else(|p| p.into_inner());
        if *armed != Some(term) {
            table.arm_all(now);
            *armed = Some(term);
            tracing::info!(
                term,
                leases = table.len(),
                "leading: every lease re-armed with a full TTL"
            );
        }
    }

    /// Last renewal and deadline of one lease.
    pub fn times(&self, id: &str) -> Option<LeaseTimes> {
        let now = self.now();
        let info = self.lock().info(id)?;
        Some(LeaseTimes {
            renewed_at: self.to_wall(info.renewed_at, now),
            expires_at: self.to_wall(info.deadline, now),
        })
    }

    fn nudge(&self, deadline: u64) {
        if deadline < self.sleeping_until.load(Ordering::Acquire) {
            self.wake.notify_one();
        }
    }

    /// Expires lapsed leases through Raft while this node leads, until `shutdown` turns true.
    pub async fn run_sweeper(
        self: Arc<Self>,
        raft: Arc<RaftNode>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut leadership = raft.leadership();
        loop {
            if *shutdown.borrow() {
                return;
            }
            if leadership.borrow_and_update().is_none() {
                self.stand_down();
                tokio::select! {
                    biased;
                    _ = leadership.changed() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            // Leading, but not yet for leases (no quorum confirmation, or an earlier leader's
            // entries still to apply): look again shortly.
            let Some(term) = raft.leading_term() else {
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep(Duration::from_millis(25)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            };
            {
                let now = self.now();
                let mut table = self.lock();
                self.ensure_armed(&mut table, term, now);
            }
            let now = self.now();
            let (lapsed, next) = {
                let mut table = self.lock();
                let held = self.protect(&mut table, now);
                (
                    table.lapsed(now, EXPIRE_BATCH, &held),
                    table.next_deadline(),
                )
            };
            if !lapsed.is_empty() {
                let instances = lapsed
                    .into_iter()
                    .map(|(id, m)| (id.to_string(), m))
                    .collect();
                // Proposed here only, never forwarded: a node that lost the lead must not get its
                // stale decision committed by the new leader.
                match raft
                    .propose_local(Command::Expire {
                        instances,
                        term,
                        at: wall_ms(),
                    })
                    .await
                {
                    Ok(p) => {
                        if let Ok(muster_core::Applied::Expired { instance_ids }) = &p.outcome {
                            tracing::info!(index = p.index, term, expired = ?instance_ids, "leases lapsed: instances expired");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not commit an expiry; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                continue;
            }
            let target = next.unwrap_or(u64::MAX).min(now + MAX_SLEEP_MS);
            self.sleeping_until.store(target, Ordering::Release);
            tokio::select! {
                    biased;
                _ = tokio::time::sleep_until(self.epoch + Duration::from_millis(target)) => {}
                _ = self.wake.notified() => {}
                _ = leadership.changed() => {}
                _ = shutdown.changed() => {}
            }
            self.sleeping_until.store(u64::MAX, Ordering::Release);
        }
    }
}

/// The wall clock in milliseconds since the Unix epoch (what commands carry).
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_let_go_while_others_stay_held_gets_a_fresh_ttl() {
        let config = ProtectionConfig {
            threshold: 0.3,
            min_leases: 1_000, // registry-wide test off: only per-service holds
            min_service: 5,
        };
        let leases = Leases::new(config, Duration::from_secs(300));
        let mut table = LeaseTable::new();
        for svc in ["a", "b"] {
            for i in 0..10 {
                table.track(&format!("{svc}-{i}").into(), svc, 1_000, 1, 0);
            }
        }
        // Both services went silent and lapsed: both held, nothing expires.
        let held = leases.protect(&mut table, 1_100);
        assert!(held.holds("a") && held.holds("b"), "{held:?}");
        assert!(table.lapsed(1_100, 100, &held).is_empty());
        // Eight of a's ten come back: a is let go, b stays held.
        for i in 0..8 {
            table.renew_held(&format!("a-{i}"), 1_200).unwrap();
        }
        let held = leases.protect(&mut table, 1_300);
        assert!(!held.holds("a") && held.holds("b"), "{held:?}");
        // a's two stragglers got a full TTL instead of expiring at once; b's stay held.
        assert!(table.lapsed(1_300, 100, &held).is_empty());
        assert_eq!(table.info("a-9").map(|i| i.deadline), Some(2_300));
        assert_eq!(table.info("b-0").map(|i| i.deadline), Some(1_000));
        // Losing the lead forgets the episode.
        leases.stand_down();
        assert!(leases.protection().since.is_none());
    }

    #[test]
    fn a_registration_earlier_in_the_batch_does_not_undo_a_failed_liveness_check() {
        use muster_core::{Applied, Command, Limits, RegisterRequest};
        let spec = RegisterRequest {
            service: Some("s".into()),
            instance_id: Some("x".into()),
            host: Some("10.0.0.1".into()),
            port: Some(80.into()),
            liveness_check: Some(muster_core::CheckRequest {
                kind: Some("tcp".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
        .validate()
        .expect("valid")
        .0;
        let register = Command::Register {
            spec: Box::new(spec),
            want_healthy: true,
            limits: Limits::default(),
            revive: false,
            at: 1,
        };
        let dead = Command::SetLiveness {
            instance_id: "x".into(),
            live: false,
            reason: "liveness check failed: HTTP 500".into(),
            at: 2,
        };
        let leases = Leases::new(ProtectionConfig::default(), Duration::from_secs(300));
        let mut registry = Registry::new();
        let mut events = Vec::new();
        let _ = registry.apply(1, &register, &mut events).expect("applied");
        leases.applied(&registry, &events, &[]);
        // One batch: a re-registration, then the failed check.
        let mut events = Vec::new();
        let mut registered = Vec::new();
        for (index, cmd) in [(2, &register), (3, &dead)] {
            if let Ok(Applied::Registered { instance, .. }) =
                registry.apply(index, cmd, &mut events).expect("applied")
            {
                registered.push(instance);
            }
        }
        assert_eq!(registered.len(), 1);
        leases.applied(&registry, &events, &registered);
        assert_eq!(
            leases.renew("x", 1),
            Err(RenewError::Lapsed),
            "a dead instance is never renewed"
        );
    }
}
