//! What must hold after every step. One invariant per file.

mod applied_never_decreases;
mod no_acknowledged_write_lost;
mod no_expiry_while_heartbeating;
mod one_leader_per_term;

use crate::cluster::SimCluster;
use crate::driver::History;

/// A property checked after every step.
pub(crate) trait Invariant {
    fn name(&self) -> &'static str;
    fn check(&mut self, cluster: &SimCluster, history: &History, now_ms: u64)
    -> Result<(), String>;
}

pub(crate) fn all() -> Vec<Box<dyn Invariant>> {
    vec![
        Box::new(no_acknowledged_write_lost::NoAcknowledgedWriteLost),
        Box::new(applied_never_decreases::AppliedNeverDecreases::default()),
        Box::new(one_leader_per_term::OneLeaderPerTerm::default()),
        Box::new(no_expiry_while_heartbeating::NoExpiryWhileHeartbeating),
    ]
}
