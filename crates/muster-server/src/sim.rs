//! The network of a deterministic simulation (feature `sim`; used by `tests/sim`).
//!
//! Nodes run in one process on one current-thread runtime with paused time. A Raft RPC between
//! them takes the same path as over HTTP (the same JSON encoding, the same
//! [`RaftNode::handle_rpc`]), after a delay drawn from a seeded generator; on a cut link (in
//! either direction: a lost answer too) it never arrives and the sender's timeout fires, and a
//! node that is down refuses at once (like a closed port).
//! With openraft's randomness seeded as well (see [`crate::raft::Runtime`]), a seed replays the
//! same run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::raft::RaftNode;

/// Links, delays and the nodes they reach.
pub struct SimNet {
    inner: Mutex<Inner>,
}

struct Inner {
    nodes: BTreeMap<u64, Weak<RaftNode>>,
    /// Directed links that drop everything: `(from, to)`.
    blocked: BTreeSet<(u64, u64)>,
    /// One generator per directed link, so that a message's delay depends only on its link and
    /// its place on it, not on which of two tasks ready at the same instant ran first.
    links: BTreeMap<(u64, u64), StdRng>,
    seed: u64,
    min_delay_us: u64,
    max_delay_us: u64,
}

impl std::fmt::Debug for SimNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimNet")
    }
}

impl SimNet {
    /// A network whose delays (0.5–5 ms) come from `seed`.
    pub fn new(seed: u64) -> Arc<SimNet> {
        Arc::new(SimNet {
            inner: Mutex::new(Inner {
                nodes: BTreeMap::new(),
                blocked: BTreeSet::new(),
                links: BTreeMap::new(),
                seed,
                min_delay_us: 500,
                max_delay_us: 5_000,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connects a running node (or reconnects a restarted one).
    pub fn attach(&self, id: u64, node: &Arc<RaftNode>) {
        self.lock().nodes.insert(id, Arc::downgrade(node));
    }

    /// Takes a node off the network (it crashed).
    pub fn detach(&self, id: u64) {
        self.lock().nodes.remove(&id);
    }

    /// Drops everything sent from `from` to `to`.
    pub fn block(&self, from: u64, to: u64) {
        self.lock().blocked.insert((from, to));
    }

    /// Cuts `id` off from every other node, both ways.
    pub fn isolate(&self, id: u64, all: &[u64]) {
        for other in all.iter().copied().filter(|o| *o != id) {
            self.block(id, other);
            self.block(other, id);
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().blocked.clear();
    }

    /// Whether messages flow both ways between `a` and `b`.
    pub fn connected(&self, a: u64, b: u64) -> bool {
        let inner = self.lock();
        a == b || (!inner.blocked.contains(&(a, b)) && !inner.blocked.contains(&(b, a)))
    }

    fn delay(&self, from: u64, to: u64) -> Duration {
        let mut inner = self.lock();
        let (lo, hi, seed) = (inner.min_delay_us, inner.max_delay_us, inner.seed);
        let rng = inner
            .links
            .entry((from, to))
            .or_insert_with(|| StdRng::seed_from_u64(seed ^ (from << 32) ^ (to << 16) ^ 0x5151));
        Duration::from_micros(rng.random_range(lo..=hi))
    }

    /// Carries one RPC from `from` to `to` and its answer back.
    pub(crate) async fn deliver(
        &self,
        from: u64,
        to: u64,
        intended: u64,
        what: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        let delay = self.delay(from, to);
        if std::env::var_os("MUSTER_SIM_NET_TRACE").is_some() {
            eprintln!("net {from}->{to} {what} {} bytes, {delay:?}", body.len());
        }
        tokio::time::sleep(delay).await;
        let (cut, target) = {
            let inner = self.lock();
            (
                inner.blocked.contains(&(from, to)),
                inner.nodes.get(&to).and_then(Weak::upgrade),
            )
        };
        if cut {
            // A cut link does not refuse: the message is lost and the sender waits out its own
            // timeout, as over a real partition.
            drop(target);
            return std::future::pending().await;
        }
        let target = target.ok_or_else(|| format!("node {to} is down"))?;
        let answer = target.handle_rpc(intended, what, &body).await?;
        drop(target);
        tokio::time::sleep(self.delay(to, from)).await;
        let cut_back = self.lock().blocked.contains(&(to, from));
        if cut_back {
            // The answer is lost on the way back.
            return std::future::pending().await;
        }
        Ok(answer)
    }
}
