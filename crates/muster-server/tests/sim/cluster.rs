//! Simulated nodes: the real server parts without HTTP, on `SimNet`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use muster_server::Applier;
use muster_server::hub::Hub;
use muster_server::leases::Leases;
use muster_server::metrics::Metrics;
use muster_server::raft::{RaftNode, RaftSettings, Transport};
use muster_server::sim::SimNet;
use muster_store::Store;
use tokio::sync::watch;

pub(crate) struct SimNode {
    pub(crate) raft: Arc<RaftNode>,
    pub(crate) leases: Arc<Leases>,
    shutdown: watch::Sender<bool>,
    sweeper: tokio::task::JoinHandle<()>,
}

pub(crate) struct SimCluster {
    pub(crate) net: Arc<SimNet>,
    /// Every node's durable state; it outlives crashes.
    stores: BTreeMap<u64, Store>,
    pub(crate) nodes: BTreeMap<u64, SimNode>,
    /// The voters the cluster was formed with.
    pub(crate) initial: Vec<u64>,
    seed: u64,
}

pub(crate) fn addr(id: u64) -> String {
    format!("http://sim-node-{id}")
}

impl SimCluster {
    pub(crate) async fn start(seed: u64, n: u64) -> SimCluster {
        let mut c = SimCluster {
            net: SimNet::new(seed),
            stores: BTreeMap::new(),
            nodes: BTreeMap::new(),
            initial: (1..=n).collect(),
            seed,
        };
        for id in 1..=n {
            c.boot(id, false).await;
        }
        c
    }

    /// Starts node `id` on its store (a new one if it has none).
    pub(crate) async fn boot(&mut self, id: u64, joining: bool) {
        let store = self
            .stores
            .entry(id)
            .or_insert_with(|| Store::in_memory_inline().expect("in-memory store"))
            .clone();
        let hub = Arc::new(Hub::new(64));
        let leases = Arc::new(Leases::default());
        let applier = Arc::new(Applier::new(hub, leases.clone(), Arc::new(Metrics::new())));
        let settings = RaftSettings {
            node_id: id,
            advertise_addr: addr(id),
            peers: if joining {
                BTreeMap::new()
            } else {
                self.initial.iter().map(|i| (*i, addr(*i))).collect()
            },
            joining,
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(150),
            election_timeout_max: Duration::from_millis(300),
            // Small, so that snapshots, purges and snapshot installs happen within a run.
            snapshot_every: 40,
            keep_behind_snapshot: 60,
            write_timeout: Duration::from_secs(1),
            seed: Some(self.seed.wrapping_mul(1000).wrapping_add(id)),
            transport: Transport::Sim(self.net.clone()),
        };
        let raft = Arc::new(
            RaftNode::start(&settings, store, applier)
                .await
                .expect("node starts"),
        );
        self.net.attach(id, &raft);
        let (shutdown, rx) = watch::channel(false);
        let sweeper = tokio::spawn(leases.clone().run_sweeper(raft.clone(), rx));
        self.nodes.insert(
            id,
            SimNode {
                raft,
                leases,
                shutdown,
                sweeper,
            },
        );
    }

    /// Kills node `id`: it drops off the network and loses everything not in its store.
    pub(crate) async fn crash(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            self.net.detach(id);
            let _ = node.shutdown.send(true);
            node.sweeper.abort();
            node.raft.shutdown().await;
        }
    }

    pub(crate) async fn restart(&mut self, id: u64) {
        if !self.nodes.contains_key(&id) {
            self.boot(id, false).await;
        }
    }

    /// The leader a client on the majority side would be served by: the node that leads with
    /// a quorum's recent confirmation (the same test the server applies before renewing a lease).
    pub(crate) fn majority_leader(&self) -> Option<u64> {
        self.nodes
            .iter()
            .find_map(|(id, n)| n.raft.leads_with_quorum().then_some(*id))
    }

    pub(crate) async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.crash(id).await;
        }
    }
}
