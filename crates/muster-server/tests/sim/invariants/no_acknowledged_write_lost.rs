//! Every acknowledged registration is in the state of every node that has applied its index.

use super::Invariant;
use crate::cluster::SimCluster;
use crate::driver::History;

pub(crate) struct NoAcknowledgedWriteLost;

impl Invariant for NoAcknowledgedWriteLost {
    fn name(&self) -> &'static str {
        "no acknowledged registration lost"
    }

    fn check(
        &mut self,
        cluster: &SimCluster,
        history: &History,
        _now_ms: u64,
    ) -> Result<(), String> {
        for (id, node) in &cluster.nodes {
            let applied = node.raft.status().last_applied;
            for (instance, index) in history.acked.iter().filter(|(_, i)| *i <= applied) {
                if !node.raft.read(|r| r.get(instance).is_some()) {
                    return Err(format!(
                        "node {id} applied {applied} but lacks {instance} (acknowledged at {index})"
                    ));
                }
            }
        }
        Ok(())
    }
}
