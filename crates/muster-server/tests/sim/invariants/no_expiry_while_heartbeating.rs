//! No lease expires while its instance keeps heartbeating to a node on the majority side: an
//! instance that a node has dropped (having applied past its registration) must have gone a
//! full TTL without an acknowledged renewal.

use super::Invariant;
use crate::cluster::SimCluster;
use crate::driver::History;

pub(crate) struct NoExpiryWhileHeartbeating;

impl Invariant for NoExpiryWhileHeartbeating {
    fn name(&self) -> &'static str {
        "no lease expired while its instance kept heartbeating on the majority side"
    }

    fn check(
        &mut self,
        cluster: &SimCluster,
        history: &History,
        now_ms: u64,
    ) -> Result<(), String> {
        for (instance, beat) in &history.beating {
            for (id, node) in &cluster.nodes {
                let applied = node.raft.status().last_applied;
                if applied >= beat.index
                    && !node.raft.read(|r| r.get(instance).is_some())
                    && now_ms < beat.renewed_ms + beat.ttl_ms
                {
                    return Err(format!(
                        "node {id} dropped {instance} at {now_ms} ms although it was renewed at {} ms (TTL {} ms)",
                        beat.renewed_ms, beat.ttl_ms
                    ));
                }
            }
        }
        Ok(())
    }
}
