//! The leader's lease table: when each instance's lease runs out.
//!
//! Renewals (heartbeats) change only this table, never the Raft log. The leader's sweeper asks
//! [`LeaseTable::lapsed`] which leases ran out and proposes `Expire` commands for them; the
//! state machine drops an instance only if it has not changed since (see
//! `Command::Expire`).
//!
//! # Correctness
//!
//! - Time is a monotonic millisecond count supplied by the caller; the table never reads a clock.
//! - A lease that has lapsed cannot be renewed ([`RenewError::Lapsed`]): its expiry may already be
//!   on its way through the log, so the instance must re-register. This is what makes "a heartbeat
//!   was acknowledged" imply "the instance was live when it was acknowledged".
//! - [`LeaseTable::arm_all`] gives every lease a full TTL. A new leader calls it exactly once on
//!   taking office; calling it again on every election would let a lease outlive its instance.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

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
    deadline: u64,
    ttl: u64,
    /// Modify index of the instance when it was last tracked; carried into `Expire`.
    modify_index: u64,
    /// Monotonic time of the last renewal (or of tracking).
    renewed_at: u64,
}

/// Lease deadlines by instance, ordered by deadline for cheap sweeps.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: HashMap<Arc<str>, Lease>,
    by_deadline: BTreeSet<(u64, Arc<str>)>,
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

    /// Starts tracking an instance (or updates it after a change), with a full TTL from `now`.
    pub fn track(&mut self, id: &str, ttl: u64, modify_index: u64, now: u64) {
        let id: Arc<str> = match self.leases.get_key_value(id) {
            Some((k, _)) => k.clone(),
            None => Arc::from(id),
        };
        let lease = Lease {
            deadline: now.saturating_add(ttl),
            ttl,
            modify_index,
            renewed_at: now,
        };
        self.set(id, lease);
    }

    /// Brings one lease in line with the registry after a change was applied: forgotten when
    /// the instance is gone; restarted with a full TTL when it was (re-)registered or is new;
    /// otherwise given the instance's current TTL and modify index, keeping its deadline (but
    /// never later than a full new TTL from `now`).
    ///
    /// `instance` is `(lease TTL, modify index)` of the instance as the registry now holds it.
    pub fn reconcile(
        &mut self,
        id: &str,
        instance: Option<(u64, u64)>,
        registered: bool,
        now: u64,
    ) {
        let Some((ttl, modify_index)) = instance else {
            self.untrack(id);
            return;
        };
        match self.leases.get_key_value(id) {
            Some((key, lease)) if !registered => {
                let key = key.clone();
                let deadline = lease.deadline.min(now.saturating_add(ttl));
                let lease = Lease {
                    deadline,
                    ttl,
                    modify_index,
                    renewed_at: lease.renewed_at,
                };
                self.set(key, lease);
            }
            _ => self.track(id, ttl, modify_index, now),
        }
    }

    /// Whether the lease has run out (its expiry may be on its way through the log).
    pub fn is_lapsed(&self, id: &str, now: u64) -> bool {
        self.leases.get(id).is_some_and(|l| l.deadline <= now)
    }

    /// Stops tracking an instance.
    pub fn untrack(&mut self, id: &str) {
        if let Some((key, lease)) = self.leases.remove_entry(id) {
            self.by_deadline.remove(&(lease.deadline, key));
        }
    }

    /// Renews a lease for a full TTL from `now`; returns the new deadline.
    pub fn renew(&mut self, id: &str, now: u64) -> Result<u64, RenewError> {
        let (key, lease) = self.leases.get_key_value(id).ok_or(RenewError::Unknown)?;
        if lease.deadline <= now {
            return Err(RenewError::Lapsed);
        }
        let key = key.clone();
        let lease = Lease {
            deadline: now.saturating_add(lease.ttl),
            renewed_at: now,
            ..lease.clone()
        };
        let deadline = lease.deadline;
        self.set(key, lease);
        Ok(deadline)
    }

    /// What the table knows of one lease.
    pub fn info(&self, id: &str) -> Option<LeaseInfo> {
        self.leases.get(id).map(|l| LeaseInfo {
            deadline: l.deadline,
            renewed_at: l.renewed_at,
        })
    }

    /// Gives every lease a full TTL from `now`. Called once by a new leader.
    pub fn arm_all(&mut self, now: u64) {
        self.by_deadline.clear();
        for (id, lease) in &mut self.leases {
            lease.deadline = now.saturating_add(lease.ttl);
            lease.renewed_at = now;
            self.by_deadline.insert((lease.deadline, id.clone()));
        }
    }

    /// Leases whose deadline is at or before `now`, as `(instance id, modify index)`, earliest
    /// first, at most `limit` of them. They stay in the table (and refuse renewal) until
    /// [`LeaseTable::untrack`]ed when the expiry is applied.
    pub fn lapsed(&self, now: u64, limit: usize) -> Vec<(Arc<str>, u64)> {
        self.by_deadline
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .take(limit)
            .filter_map(|(_, id)| self.leases.get(id).map(|l| (id.clone(), l.modify_index)))
            .collect()
    }

    /// The earliest deadline, if any lease is tracked.
    pub fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.first().map(|(d, _)| *d)
    }

    fn set(&mut self, id: Arc<str>, lease: Lease) {
        if let Some(old) = self.leases.get(&id) {
            self.by_deadline.remove(&(old.deadline, id.clone()));
        }
        self.by_deadline.insert((lease.deadline, id.clone()));
        self.leases.insert(id, lease);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renew_moves_the_deadline_and_lapse_is_final() {
        let mut t = LeaseTable::new();
        t.track("a", 1_000, 1, 0);
        assert_eq!(t.renew("a", 500), Ok(1_500));
        assert!(t.lapsed(1_499, 10).is_empty());
        assert_eq!(t.lapsed(1_500, 10), vec![(Arc::from("a"), 1)]);
        assert_eq!(t.renew("a", 1_500), Err(RenewError::Lapsed));
        assert_eq!(t.renew("b", 0), Err(RenewError::Unknown));
        t.untrack("a");
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn lapsed_is_ordered_and_bounded() {
        let mut t = LeaseTable::new();
        for (i, id) in ["c", "a", "b"].iter().enumerate() {
            t.track(id, 100 + i as u64, i as u64, 0);
        }
        let ids: Vec<_> = t
            .lapsed(1_000, 2)
            .into_iter()
            .map(|(id, _)| id.to_string())
            .collect();
        assert_eq!(ids, ["c", "a"]);
        assert_eq!(t.next_deadline(), Some(100));
    }

    #[test]
    fn arm_all_gives_a_full_ttl_once() {
        let mut t = LeaseTable::new();
        t.track("a", 1_000, 7, 0);
        t.track("b", 5_000, 8, 0);
        t.arm_all(10_000);
        assert!(t.lapsed(10_999, 10).is_empty());
        assert_eq!(t.lapsed(11_000, 10).len(), 1);
        assert_eq!(t.info("b").map(|i| i.deadline), Some(15_000));
    }

    #[test]
    fn reconcile_follows_the_registry() {
        let mut t = LeaseTable::new();
        t.track("a", 1_000, 1, 0);
        // A change that is not a registration keeps the deadline and takes the new index.
        t.reconcile("a", Some((1_000, 9)), false, 500);
        assert_eq!(t.lapsed(1_000, 1), vec![(Arc::from("a"), 9)]);
        // A shorter TTL pulls the deadline in; a longer one does not push it out.
        t.reconcile("a", Some((200, 9)), false, 500);
        assert_eq!(t.info("a").map(|i| i.deadline), Some(700));
        t.reconcile("a", Some((60_000, 9)), false, 500);
        assert_eq!(t.info("a").map(|i| i.deadline), Some(700));
        // ... but the next renewal uses it.
        assert_eq!(t.renew("a", 600), Ok(60_600));
        // A registration restarts the lease, even a lapsed one.
        assert!(t.is_lapsed("a", 70_000));
        t.reconcile("a", Some((1_000, 10)), true, 70_000);
        assert!(!t.is_lapsed("a", 70_000));
        assert_eq!(t.info("a").map(|i| i.deadline), Some(71_000));
        // Gone from the registry: forgotten. Unknown and registered: tracked.
        t.reconcile("a", None, false, 70_001);
        assert!(t.is_empty());
        t.reconcile("b", Some((5_000, 11)), false, 0);
        assert_eq!(t.info("b").map(|i| i.deadline), Some(5_000));
    }
}
