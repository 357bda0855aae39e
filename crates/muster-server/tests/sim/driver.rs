//! The seeded driver: one random step at a time, every invariant after each.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_core::{Applied, Command, Limits, RegisterRequest};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::time::Instant;

use crate::cluster::{SimCluster, addr};
use crate::invariants;

/// Size of a run.
pub(crate) struct Config {
    pub(crate) nodes: u64,
    pub(crate) steps: u64,
    pub(crate) seeds: std::ops::Range<u64>,
}

/// An instance kept alive by heartbeats through the majority side.
pub(crate) struct Beat {
    /// Index at which its registration committed.
    pub(crate) index: u64,
    /// Simulated time (ms) of its last acknowledged renewal (or its registration).
    pub(crate) renewed_ms: u64,
    pub(crate) ttl_ms: u64,
}

/// What the run did that invariants judge the cluster by.
#[derive(Default)]
pub(crate) struct History {
    /// Acknowledged registrations with a one-hour lease: `(id, commit index)`.
    pub(crate) acked: Vec<(String, u64)>,
    /// Instances heartbeating through the majority side.
    pub(crate) beating: BTreeMap<String, Beat>,
}

pub(crate) fn run(seed: u64, config: &Config) -> Result<(), String> {
    trace(seed, config).map(|_| ())
}

/// Runs one seed and returns its trace: one line per step.
pub(crate) fn trace(seed: u64, config: &Config) -> Result<Vec<String>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(simulate(seed, config))
}

fn spec(id: &str, ttl: &str) -> Box<muster_core::InstanceSpec> {
    let req = RegisterRequest {
        service: Some("sim".into()),
        instance_id: Some(id.into()),
        host: Some("10.0.0.1".into()),
        port: Some(80.into()),
        lease_ttl: Some(ttl.into()),
        ..Default::default()
    };
    Box::new(req.validate().expect("valid").0)
}

/// Registers on the majority leader; returns the commit index when acknowledged.
async fn register(c: &SimCluster, id: &str, ttl: &str) -> Option<u64> {
    let leader = c.majority_leader()?;
    let cmd = Command::Register {
        spec: spec(id, ttl),
        want_healthy: true,
        limits: Limits::default(),
        revive: false,
        at: 0,
    };
    match c.nodes[&leader].raft.propose_local(cmd).await {
        Ok(p) if matches!(p.outcome, Ok(Applied::Registered { .. })) => Some(p.index),
        _ => None,
    }
}

async fn simulate(seed: u64, config: &Config) -> Result<Vec<String>, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = SimCluster::start(seed, config.nodes).await;
    let epoch = Instant::now();
    let now_ms = || u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut history = History::default();
    let mut checks = invariants::all();
    let mut trace = Vec::new();
    let spare = config.nodes + 1;
    let mut n = 0u64;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let every: Vec<u64> = (1..=spare).collect();
    for step in 0..config.steps {
        let roll = rng.random_range(0..100u32);
        let action = match roll {
            0..30 => {
                n += 1;
                let id = format!("r-{n}");
                match register(&c, &id, "1h").await {
                    Some(index) => {
                        history.acked.push((id.clone(), index));
                        format!("register {id} @{index}")
                    }
                    None => format!("register {id} refused"),
                }
            }
            30..36 if history.beating.len() < 3 => {
                n += 1;
                let id = format!("hb-{n}");
                match register(&c, &id, "2s").await {
                    Some(index) => {
                        history.beating.insert(
                            id.clone(),
                            Beat {
                                index,
                                renewed_ms: now_ms(),
                                ttl_ms: 2_000,
                            },
                        );
                        format!("register heartbeating {id} @{index}")
                    }
                    None => format!("register {id} refused"),
                }
            }
            36..44 => {
                let id = rng.random_range(1..=config.nodes);
                c.net.isolate(id, &every);
                format!("isolate {id}")
            }
            44..52 => {
                let (a, b) = (
                    rng.random_range(1..=config.nodes),
                    rng.random_range(1..=config.nodes),
                );
                c.net.block(a, b);
                format!("block {a}->{b}")
            }
            52..62 => {
                c.net.heal();
                "heal".to_string()
            }
            62..68 => {
                let id = rng.random_range(1..=config.nodes);
                c.crash(id).await;
                format!("crash {id}")
            }
            68..78 => {
                let down: Vec<u64> = (1..=config.nodes)
                    .filter(|i| !c.nodes.contains_key(i))
                    .collect();
                match down.get(rng.random_range(0..down.len().max(1))) {
                    Some(id) => {
                        c.restart(*id).await;
                        format!("restart {id}")
                    }
                    None => "restart (none down)".to_string(),
                }
            }
            78..83 => membership(&mut c, spare).await,
            _ => "wait".to_string(),
        };
        // Every step, the heartbeating instances renew through the majority side.
        if let Some(leader) = c.majority_leader() {
            for (id, beat) in history.beating.iter_mut() {
                let node = &c.nodes[&leader];
                if node
                    .raft
                    .leading_term()
                    .is_some_and(|t| node.leases.renew(id, t).is_ok())
                {
                    beat.renewed_ms = now_ms();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..300))).await;
        let line = format!("{step:>3} {:>7}ms {action:<32} {}", now_ms(), summary(&c));
        if std::env::var_os("MUSTER_SIM_TRACE").is_some() {
            eprintln!("{line}");
        }
        trace.push(line);
        for check in checks.iter_mut() {
            check.check(&c, &history, now_ms()).map_err(|e| {
                format!(
                    "step {step} ({action}): invariant {} broken: {e}\n{}",
                    check.name(),
                    trace.join("\n")
                )
            })?;
        }
        // Instances that expired without breaking the invariant (their heartbeats had stopped
        // reaching a majority) are no longer followed.
        if let Some(leader) = c.majority_leader() {
            let raft = &c.nodes[&leader].raft;
            let applied = raft.status().last_applied;
            history
                .beating
                .retain(|id, b| b.index > applied || raft.read(|r| r.get(id).is_some()));
        }
    }
    // Heal everything and let the cluster settle: every member must hold the same state.
    c.net.heal();
    for id in 1..=config.nodes {
        c.restart(id).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let states: BTreeMap<u64, (u64, Vec<u8>)> = c
        .nodes
        .iter()
        .filter(|(_, n)| {
            n.raft
                .status()
                .members
                .iter()
                .any(|m| m.id == n.raft.node_id())
        })
        .map(|(id, n)| (*id, n.raft.read(|r| (r.index(), r.snapshot()))))
        .collect();
    let first = states.values().next().cloned();
    if let Some(bad) = states.iter().find(|(_, s)| Some(*s) != first.as_ref()) {
        return Err(format!(
            "after healing, node {} holds a different state (index {} vs {:?})\n{}",
            bad.0,
            bad.1.0,
            first.map(|f| f.0),
            trace.join("\n")
        ));
    }
    for check in checks.iter_mut() {
        check
            .check(&c, &history, now_ms())
            .map_err(|e| format!("after healing: {}: {e}", check.name()))?;
    }
    c.shutdown().await;
    Ok(trace)
}

/// Adds the spare node (learner, caught up, then voter) or removes it.
async fn membership(c: &mut SimCluster, spare: u64) -> String {
    let Some(leader) = c.majority_leader() else {
        return "membership (no leader)".into();
    };
    let is_member = c.nodes[&leader]
        .raft
        .status()
        .members
        .iter()
        .any(|m| m.id == spare);
    let change = if is_member {
        muster_server::raft::MemberChange::Remove { id: spare }
    } else {
        if !c.nodes.contains_key(&spare) {
            c.boot(spare, true).await;
        }
        muster_server::raft::MemberChange::Add {
            id: spare,
            addr: addr(spare),
            voter: true,
        }
    };
    let raft = c.nodes[&leader].raft.clone();
    let done = tokio::time::timeout(
        Duration::from_secs(2),
        raft.change_members_here(change.clone()),
    )
    .await;
    let outcome = match done {
        Ok(Ok(_)) => "ok",
        Ok(Err(_)) => "refused",
        Err(_) => "timed out",
    };
    if is_member && outcome == "ok" {
        c.crash(spare).await;
    }
    format!(
        "{} {spare}: {outcome}",
        if is_member { "remove" } else { "add" }
    )
}

fn summary(c: &SimCluster) -> String {
    c.nodes
        .iter()
        .map(|(id, n)| {
            let s = n.raft.status();
            let role = s.role.chars().next().unwrap_or('?');
            format!("{id}:{role}{}@{}", s.term, s.last_applied)
        })
        .collect::<Vec<_>>()
        .join(" ")
}
