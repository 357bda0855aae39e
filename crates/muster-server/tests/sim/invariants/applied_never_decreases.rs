//! A node's applied index never goes backwards, not even across a crash and restart (its commit
//! point is durable before anything is applied).

use std::collections::BTreeMap;

use super::Invariant;
use crate::cluster::SimCluster;
use crate::driver::History;

#[derive(Default)]
pub(crate) struct AppliedNeverDecreases {
    seen: BTreeMap<u64, u64>,
}

impl Invariant for AppliedNeverDecreases {
    fn name(&self) -> &'static str {
        "per-node applied index never decreases"
    }

    fn check(
        &mut self,
        cluster: &SimCluster,
        _history: &History,
        _now_ms: u64,
    ) -> Result<(), String> {
        for (id, node) in &cluster.nodes {
            let applied = node.raft.status().last_applied;
            let before = self.seen.insert(*id, applied).unwrap_or(0);
            if applied < before {
                return Err(format!(
                    "node {id} applied index went from {before} to {applied}"
                ));
            }
        }
        Ok(())
    }
}
