//! The leader's lease table: when each instance's lease runs out, and whether so many are going
//! silent at once that expiring them would be a mistake (mass-expiry protection).
//!
//! Renewals (heartbeats) change only this table, never the Raft log. The leader's sweeper asks
//! [`LeaseTable::lapsed`] which leases ran out and proposes `Expire` commands for them; the
//! state machine drops an instance only if it has not changed since (see `Command::Expire`).
//!
//! # Correctness
//!
//! - Time is a monotonic millisecond count supplied by the caller; the table never reads a clock.
//! - A lease that has lapsed cannot be renewed ([`RenewError::Lapsed`]): its expiry may already be
//!   on its way through the log, so the instance must re-register. The one exception is a lease
//!   whose expiry is held by protection ([`LeaseTable::renew_held`]): no expiry is decided for it.
//! - [`LeaseTable::arm_all`] gives every lease a full TTL. A new leader calls it once per term;
//!   calling it on every renewal would let a lease outlive its instance.
//!
//! # Mass-expiry protection
//!
//! A lease is *at risk* once its last renewal is older than half its TTL: two heartbeats missed
//! at the usual TTL/3 cadence. When instances die one by one, few leases are at risk at any
//! moment. When a cut on the registry's side silences many at once, their leases all become at
//! risk before the first of them lapses. [`LeaseTable::assess`] compares the at-risk share with a
//! threshold, for the whole registry and for each service, and the sweeper holds the expiries of
//! what crossed it. Instances that deregister leave the table, so a scale-down never trips it.

use std::collections::{BTreeSet, HashMap};

use arcstr::ArcStr;

/// Why a renewal was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenewError {
    /// The table does not know the instance.
    #[error("unknown instance")]
    Unknown,
    /// The lease ran out; the instance is being expired and must re-register.
    #[error("lease lapsed")]
    Lapsed,
}

#[derive(Clone, Debug)]
struct Lease {
    service: ArcStr,
    deadline: u64,
    /// Milliseconds (at most an hour, `MAX_LEASE_TTL_MS`: a `u32` holds 49 days), kept small
    /// because the table holds one lease per instance.
    ttl: u32,
    /// Modify index of the instance when it was last tracked; carried into `Expire`.
    modify_index: u64,
    /// Monotonic time of the last renewal (or of tracking).
    renewed_at: u64,
    /// Its liveness check failed: lapsed, and renewals are refused.
    condemned: bool,
}

/// A TTL as the table keeps it.
fn ttl_ms(ttl: u64) -> u32 {
    u32::try_from(ttl).unwrap_or(u32::MAX)
}

impl Lease {
    fn ttl(&self) -> u64 {
        u64::from(self.ttl)
    }

    /// When the lease becomes at risk (half its TTL without a renewal; for a dead instance,
    /// when it was found dead).
    fn risk_at(&self) -> u64 {
        if self.condemned {
            return self.deadline.saturating_sub(self.ttl() / 2);
        }
        self.renewed_at.saturating_add(self.ttl() / 2)
    }
}

/// When mass-expiry protection holds expiries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProtectionConfig {
    /// Share of leases at risk (0–1) above which expiries are held.
    pub threshold: f64,
    /// The registry-wide test applies from this many leases.
    pub min_leases: usize,
    /// A service's own test applies from this many instances.
    pub min_service: usize,
}

impl Default for ProtectionConfig {
    fn default() -> Self {
        ProtectionConfig {
            threshold: 0.3,
            min_leases: 10,
            min_service: 5,
        }
    }
}

/// What [`LeaseTable::assess`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Assessment {
    /// Leases tracked.
    pub tracked: usize,
    /// Leases at risk.
    pub at_risk: usize,
    /// The registry-wide share crossed the threshold: every expiry is held.
    pub registry_held: bool,
    /// Services whose own share crossed the threshold: their expiries are held.
    pub held_services: BTreeSet<ArcStr>,
}

impl Assessment {
    /// Whether anything is held.
    pub fn holds_anything(&self) -> bool {
        self.registry_held || !self.held_services.is_empty()
    }

    /// Whether expiries of `service` are held.
    pub fn holds(&self, service: &str) -> bool {
        self.registry_held || self.held_services.contains(service)
    }

    /// Whether `later` lets go of something this assessment held.
    pub fn releases_some(&self, later: &Assessment) -> bool {
        (self.registry_held && !later.registry_held)
            || self.held_services.iter().any(|s| !later.holds(s))
    }
}

/// Lease deadlines by instance, ordered by deadline (for sweeps) and by risk (for protection).
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: HashMap<ArcStr, Lease>,
    by_deadline: BTreeSet<(u64, ArcStr)>,
    by_risk: BTreeSet<(u64, ArcStr)>,
    service_sizes: HashMap<ArcStr, usize>,
}

/// What the table knows of one lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Monotonic deadline.
    pub deadline: u64,
    /// Monotonic time of the last renewal.
    pub renewed_at: u64,
}

impl LeaseTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of tracked leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether no lease is tracked.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Starts tracking an instance of `service` (or updates it), with a full TTL from `now`.
    /// A new lease keeps `id` itself (shared with the registry), not a copy.
    pub fn track(&mut self, id: &ArcStr, service: &str, ttl: u64, modify_index: u64, now: u64) {
        let (id, service) = self.keys(id, service);
        let lease = Lease {
            service,
            deadline: now.saturating_add(ttl),
            ttl: ttl_ms(ttl),
            modify_index,
            renewed_at: now,
            condemned: false,
        };
        self.set(id, lease);
    }

    /// Follows the instance's liveness. A dead one (its liveness check failed) is at risk from
    /// `now` and lapses half a TTL later (or sooner, if its lease ran out sooner) whatever it
    /// renews: the same grace a silent lease has between the two, so that mass-expiry
    /// protection sees many instances found dead at once before any expires. One alive again
    /// gets a full TTL from `now`. Returns whether the lease was condemned by this call.
    pub fn set_live(&mut self, id: &str, live: bool, now: u64) -> bool {
        let Some((key, lease)) = self.leases.get_key_value(id) else {
            return false;
        };
        if lease.condemned != live {
            return false;
        }
        let key = key.clone();
        let lease = if live {
            Lease {
                deadline: now.saturating_add(lease.ttl()),
                renewed_at: now,
                condemned: false,
                ..lease.clone()
            }
        } else {
            Lease {
                deadline: lease.deadline.min(now.saturating_add(lease.ttl() / 2)),
                condemned: true,
                ..lease.clone()
            }
        };
        self.set(key, lease);
        !live
    }

    /// Brings one lease in line with the registry after a change was applied: forgotten when
    /// the instance is gone; restarted with a full TTL when it was (re-)registered or is new;
    /// otherwise given the instance's current TTL and modify index, keeping its deadline (but
    /// never later than a full new TTL from `now`).
    ///
    /// `instance` is `(service, lease TTL, modify index)` of the instance as the registry now
    /// holds it.
    pub fn reconcile(
        &mut self,
        id: &ArcStr,
        instance: Option<(&str, u64, u64)>,
        registered: bool,
        now: u64,
    ) {
        let Some((service, ttl, modify_index)) = instance else {
            self.untrack(id);
            return;
        };
        match self.leases.get(id) {
            Some(lease) if !registered => {
                let deadline = lease.deadline.min(now.saturating_add(ttl));
                let (renewed_at, condemned) = (lease.renewed_at, lease.condemned);
                let (key, service) = self.keys(id, service);
                self.set(
                    key,
                    Lease {
                        service,
                        deadline,
                        ttl: ttl_ms(ttl),
                        modify_index,
                        renewed_at,
                        condemned,
                    },
                );
            }
            _ => self.track(id, service, ttl, modify_index, now),
        }
    }

    /// Whether the lease has run out (its expiry may be on its way through the log).
    pub fn is_lapsed(&self, id: &str, now: u64) -> bool {
        self.leases.get(id).is_some_and(|l| l.deadline <= now)
    }

    /// Stops tracking an instance.
    pub fn untrack(&mut self, id: &str) {
        if let Some((key, lease)) = self.leases.remove_entry(id) {
            self.by_deadline.remove(&(lease.deadline, key.clone()));
            self.by_risk.remove(&(lease.risk_at(), key));
            self.shrink(&lease.service);
        }
    }

    /// Renews a lease for a full TTL from `now`; returns the new deadline.
    pub fn renew(&mut self, id: &str, now: u64) -> Result<u64, RenewError> {
        self.renew_inner(id, now, false)
    }

    /// Renews a lease even if it lapsed: only for a lease whose expiry protection holds (so no
    /// expiry for it is decided or in flight).
    pub fn renew_held(&mut self, id: &str, now: u64) -> Result<u64, RenewError> {
        self.renew_inner(id, now, true)
    }

    fn renew_inner(&mut self, id: &str, now: u64, held: bool) -> Result<u64, RenewError> {
        let (key, lease) = self.leases.get_key_value(id).ok_or(RenewError::Unknown)?;
        if lease.condemned || (lease.deadline <= now && !held) {
            return Err(RenewError::Lapsed);
        }
        let key = key.clone();
        let lease = Lease {
            deadline: now.saturating_add(lease.ttl()),
            renewed_at: now,
            ..lease.clone()
        };
        let deadline = lease.deadline;
        self.set(key, lease);
        Ok(deadline)
    }

    /// The service of a tracked instance.
    pub fn service_of(&self, id: &str) -> Option<&str> {
        self.leases.get(id).map(|l| &*l.service)
    }

    /// What the table knows of one lease.
    pub fn info(&self, id: &str) -> Option<LeaseInfo> {
        self.leases.get(id).map(|l| LeaseInfo {
            deadline: l.deadline,
            renewed_at: l.renewed_at,
        })
    }

    /// Gives every lease a full TTL from `now`. Called once per term by a new leader.
    pub fn arm_all(&mut self, now: u64) {
        self.by_deadline.clear();
        self.by_risk.clear();
        for (id, lease) in &mut self.leases {
            // A dead instance stays lapsed: its liveness check decided, not silence.
            if !lease.condemned {
                lease.deadline = now.saturating_add(lease.ttl());
                lease.renewed_at = now;
            }
            self.by_deadline.insert((lease.deadline, id.clone()));
            self.by_risk.insert((lease.risk_at(), id.clone()));
        }
    }

    /// Gives every lapsed lease of a service that `released` picks a full TTL from `now`;
    /// returns how many. Called when protection lets go of services because renewals resumed:
    /// instances still on their way back get time to heartbeat, and the ones that are really
    /// gone expire one TTL later.
    pub fn rearm_held(&mut self, now: u64, released: impl Fn(&str) -> bool) -> usize {
        let lapsed: Vec<ArcStr> = self
            .by_deadline
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .filter(|(_, id)| {
                self.leases
                    .get(id)
                    .is_some_and(|l| !l.condemned && released(&l.service))
            })
            .map(|(_, id)| id.clone())
            .collect();
        for id in &lapsed {
            if let Some(lease) = self.leases.get(id) {
                let lease = Lease {
                    deadline: now.saturating_add(lease.ttl()),
                    renewed_at: now,
                    ..lease.clone()
                };
                self.set(id.clone(), lease);
            }
        }
        lapsed.len()
    }

    /// How many leases are at risk, overall and per service, against `config`.
    pub fn assess(&self, now: u64, config: &ProtectionConfig) -> Assessment {
        let mut per_service: HashMap<&str, usize> = HashMap::new();
        let mut at_risk = 0;
        for (_, id) in self
            .by_risk
            .iter()
            .take_while(|(risk_at, _)| *risk_at <= now)
        {
            if let Some(lease) = self.leases.get(id) {
                at_risk += 1;
                *per_service.entry(&lease.service).or_insert(0) += 1;
            }
        }
        let tracked = self.leases.len();
        let over = |risky: usize, of: usize| of > 0 && risky as f64 / of as f64 > config.threshold;
        let registry_held = tracked >= config.min_leases && over(at_risk, tracked);
        let held_services = per_service
            .into_iter()
            .filter_map(|(service, risky)| {
                let (key, size) = self.service_sizes.get_key_value(service)?;
                (*size >= config.min_service && over(risky, *size)).then(|| key.clone())
            })
            .collect();
        Assessment {
            tracked,
            at_risk,
            registry_held,
            held_services,
        }
    }

    /// Leases whose deadline is at or before `now` and whose expiry `held` does not hold, as
    /// `(instance id, modify index)`, earliest first, at most `limit` of them. They stay in the
    /// table (and refuse renewal) until [`LeaseTable::untrack`]ed when the expiry is applied.
    pub fn lapsed(&self, now: u64, limit: usize, held: &Assessment) -> Vec<(ArcStr, u64)> {
        self.by_deadline
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .filter_map(|(_, id)| self.leases.get(id).map(|l| (id, l)))
            .filter(|(_, l)| !held.holds(&l.service))
            .take(limit)
            .map(|(id, l)| (id.clone(), l.modify_index))
            .collect()
    }

    /// The earliest deadline, if any lease is tracked.
    pub fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.first().map(|(d, _)| *d)
    }

    /// Shared keys for `id` and `service` (reusing the table's when it has them).
    fn keys(&self, id: &ArcStr, service: &str) -> (ArcStr, ArcStr) {
        let id = self
            .leases
            .get_key_value(&**id)
            .map_or_else(|| id.clone(), |(k, _)| k.clone());
        let service = self
            .service_sizes
            .get_key_value(service)
            .map_or_else(|| ArcStr::from(service), |(k, _)| k.clone());
        (id, service)
    }

    fn shrink(&mut self, service: &str) {
        if let Some(n) = self.service_sizes.get_mut(service) {
            *n -= 1;
            if *n == 0 {
                self.service_sizes.remove(service);
            }
        }
    }

    fn set(&mut self, id: ArcStr, lease: Lease) {
        match self.leases.get(&id) {
            Some(old) => {
                self.by_deadline.remove(&(old.deadline, id.clone()));
                self.by_risk.remove(&(old.risk_at(), id.clone()));
                if old.service != lease.service {
                    let old_service = old.service.clone();
                    self.shrink(&old_service);
                    *self.service_sizes.entry(lease.service.clone()).or_insert(0) += 1;
                }
            }
            None => *self.service_sizes.entry(lease.service.clone()).or_insert(0) += 1,
        }
        self.by_deadline.insert((lease.deadline, id.clone()));
        self.by_risk.insert((lease.risk_at(), id.clone()));
        self.leases.insert(id, lease);
    }
}

#[cfg(test)]
mod tests;
