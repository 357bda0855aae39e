//! Deterministic simulation of Muster clusters: 3 and 5 nodes under partitions, one-way
//! partitions, crashes, restarts and membership changes, driven by a seed, with every invariant
//! (one per file in `invariants/`) checked after every step.
//!
//! Why not turmoil: turmoil simulates sockets, but Muster's HTTP stack (axum, reqwest) and its
//! store (redb with a writer thread) cannot run on them. The equivalent used here keeps every
//! part that decides anything: the real `RaftNode` (openraft, the log store, the state machine,
//! the lease runtime and its sweeper) on the real redb code (in-memory backend, commits inline),
//! and swaps only the wire for an in-process network with the same encoding and RPC handling
//! (`muster_server::sim::SimNet`). Everything runs on one current-thread runtime with paused
//! time, and openraft's randomness is seeded, so a seed replays the same run: set
//! `MUSTER_SIM_SEED=<seed>` to rerun one (`MUSTER_SIM_TRACE=1` prints each step).
//!
//! Scope: clients act on the leader a majority-side client would be served by (proposals with
//! `propose_local`, renewals through `Leases::renew` behind the same `leading_term` gate the
//! HTTP handler uses). Forwarding between nodes and the HTTP handlers are covered by the
//! real-process tests in `crates/muster/tests/it/` (cluster, partition), not here.

mod cluster;
mod driver;
mod invariants;

use driver::{Config, run};

fn seeds(default: std::ops::Range<u64>) -> Vec<u64> {
    match std::env::var("MUSTER_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("MUSTER_SIM_SEED is a number")],
        Err(_) => default.collect(),
    }
}

fn check(config: Config) {
    for seed in seeds(config.seeds.clone()) {
        if let Err(failure) = run(seed, &config) {
            panic!("seed {seed} failed (rerun with MUSTER_SIM_SEED={seed}):\n{failure}");
        }
    }
}

#[test]
fn three_nodes() {
    check(Config {
        nodes: 3,
        steps: 120,
        seeds: 0..6,
    });
}

#[test]
fn five_nodes() {
    check(Config {
        nodes: 5,
        steps: 100,
        seeds: 100..103,
    });
}

#[test]
fn a_seed_replays_the_same_run() {
    let config = Config {
        nodes: 3,
        steps: 60,
        seeds: 7..8,
    };
    let a = driver::trace(7, &config).expect("run");
    let b = driver::trace(7, &config).expect("run");
    assert_eq!(a.len(), 60, "one line per step");
    assert_eq!(a, b, "the same seed gave two different runs");
}
