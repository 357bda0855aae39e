//! At most one node is ever leader in a given term.

use std::collections::BTreeMap;

use super::Invariant;
use crate::cluster::SimCluster;
use crate::driver::History;

#[derive(Default)]
pub(crate) struct OneLeaderPerTerm {
    leaders: BTreeMap<u64, u64>,
}

impl Invariant for OneLeaderPerTerm {
    fn name(&self) -> &'static str {
        "at most one leader per term"
    }

    fn check(
        &mut self,
        cluster: &SimCluster,
        _history: &History,
        _now_ms: u64,
    ) -> Result<(), String> {
        for (id, node) in &cluster.nodes {
            let s = node.raft.status();
            if s.role == "Leader" {
                let first = *self.leaders.entry(s.term).or_insert(*id);
                if first != *id {
                    return Err(format!("term {} has two leaders: {first} and {id}", s.term));
                }
            }
        }
        Ok(())
    }
}
