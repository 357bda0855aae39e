//! Active readiness checks: every member probes its share of the instances registered with an
//! `http`, `tcp` or `grpc` (`grpc.health.v1`) check, feeds the results to a
//! [`muster_core::health::Tracker`], and writes only transitions to the log (as `SetReadiness`,
//! forwarded to the leader like any write).
//!
//! ```text
//!  applied events ──▶ Checker::applied (which instances, which checks; trackers follow the
//!                     registry's readiness, whoever changed it)
//!  run loop:          due queue ──▶ mine on the ring? ──▶ probe spawned, bounded by a semaphore,
//!                                                         each with its timeout
//!                     results ──▶ Tracker::observe ──▶ Verdict? ──▶ propose SetReadiness
//! ```
//!
//! Every member follows every check; which one probes an instance is decided by a ketama ring
//! (consistent hashing, as in nginx and memcached) over the members that run checks, as the
//! leader sees them ([`RaftNode::checkers`]): a member that leaves or stops answering the leader
//! hands its share to the others, and only about 1/n of the instances move when the members
//! change. While the view of the ring differs between two members (a few hundred milliseconds
//! around a change) an instance may be probed by both, or by neither: both write the same kind
//! of transitions, and the next round settles it.
//!
//! A slow or hanging target holds only its own probe (and one permit): the others go on.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arcstr::ArcStr;
use futures_util::FutureExt;
use muster_core::health::{FLAPPING, FlapPolicy, Probe, Tracker};
use muster_core::{Check, CheckKind, Command, Event, EventKind, Instance, Registry};
use pingora_ketama::{Bucket, Continuum};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;

use crate::leases::wall_ms;
use crate::metrics::{Metrics, ProbeLabels, TransitionLabels, TypeLabels};
use crate::raft::RaftNode;

mod probe;

use probe::Prober;

/// Probes in flight at once.
const MAX_IN_FLIGHT: usize = 256;

/// How often the loop asks who runs checks.
const RING_REFRESH_MS: u64 = 100;

/// What a check decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Role {
    /// Rotation (`check`): `SetReadiness`.
    Readiness,
    /// Life (`livenessCheck`): `SetLiveness`; a dead instance expires.
    Liveness,
}

impl Role {
    const ALL: [Role; 2] = [Role::Readiness, Role::Liveness];

    /// The instance's check for this role, if it is probed.
    fn check(self, inst: &Instance) -> Option<&Check> {
        match self {
            Role::Readiness => inst.spec.check(),
            Role::Liveness => inst.spec.liveness_check(),
        }
        .filter(|c| c.kind.is_probed())
    }

    /// What the registry says this role's tracker decided last.
    fn state(self, inst: &Instance) -> bool {
        match self {
            Role::Readiness => inst.ready,
            Role::Liveness => inst.live,
        }
    }
}

/// An entry's key: the instance, and which of its checks.
type Key = (ArcStr, Role);

struct Entry {
    /// Changes when the entry is replaced, so a result for the old one is ignored.
    generation: u64,
    check: Check,
    host: ArcStr,
    port: u16,
    tracker: Tracker,
    /// Monotonic ms when the next probe is due (its key in the due queue while owned and no
    /// probe runs).
    due: u64,
    /// Whether this node probes it (its instance is this node's on the ring).
    owned: bool,
    /// A probe of it is running (its result will reschedule it, if still owned).
    in_flight: bool,
    /// Wall-clock ms until which the registry says it is held out for flapping (readiness),
    /// whoever held it: a member taking it over holds it to the end.
    held_until_wall: Option<u64>,
}

#[derive(Default)]
struct State {
    entries: HashMap<Key, Entry>,
    /// `(due, key)` of every owned entry whose probe is not running.
    queue: BTreeSet<(u64, Key)>,
    /// Entries with `owned` set.
    owned: usize,
    /// Who probes what; `None`: this node probes nothing now.
    ring: Option<Ring>,
}

/// Which member probes which instance.
struct Ring {
    continuum: Continuum,
}

impl Ring {
    fn new(members: Arc<Vec<u64>>) -> Ring {
        // ketama places addresses on the ring: a node id becomes an IPv6 address, port 0.
        let buckets: Vec<Bucket> = members
            .iter()
            .map(|id| {
                Bucket::new(
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(u128::from(*id))), 0),
                    1,
                )
            })
            .collect();
        Ring {
            continuum: Continuum::new(&buckets),
        }
    }

    /// The member that probes `instance_id`.
    fn owner(&self, instance_id: &str) -> Option<u64> {
        match self.continuum.node(instance_id.as_bytes())?.ip() {
            IpAddr::V6(ip) => u64::try_from(u128::from(ip)).ok(),
            IpAddr::V4(_) => None,
        }
    }
}

/// A probe's outcome on its way back to the loop.
struct Outcome {
    key: Key,
    generation: u64,
    probe: Probe,
    done: u64,
}

/// The checks to run and their trackers.
pub struct Checker {
    node_id: u64,
    state: Mutex<State>,
    generations: AtomicU64,
    metrics: Arc<Metrics>,
    epoch: Instant,
    wake: Notify,
    flap: FlapPolicy,
    prober: Arc<Prober>,
}

impl Checker {
    /// The checker of node `node_id`, damping flapping with `flap`.
    pub fn new(node_id: u64, flap: FlapPolicy, metrics: Arc<Metrics>) -> Result<Self, String> {
        let prober = Arc::new(Prober::new(node_id)?);
        Ok(Checker {
            node_id,
            state: Mutex::default(),
            generations: AtomicU64::new(0),
            metrics,
            epoch: Instant::now(),
            wake: Notify::new(),
            flap,
            prober,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Number of checks (readiness and liveness) this node probes.
    pub fn len(&self) -> usize {
        self.lock().owned
    }

    /// Whether this node probes no check.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Instances held out for flapping now (readiness; liveness is not damped).
    pub fn flapping(&self) -> usize {
        let now = self.now();
        self.lock()
            .entries
            .values()
            .filter(|e| e.owned && e.tracker.held_until().is_some_and(|t| t > now))
            .count()
    }

    /// Follows an applied batch: instances with an active check are (re)scheduled, others and
    /// gone ones forgotten; every tracker takes the registry's readiness (or liveness).
    pub fn applied(&self, registry: &Registry, events: &[Event]) {
        let now = self.now();
        let mut state = self.lock();
        for ev in events {
            let id = ev.instance.spec.instance_id.as_str();
            match (ev.kind, registry.get(id)) {
                (EventKind::Upsert, Some(inst)) => self.follow(&mut state, inst, now),
                _ => forget(&mut state, id),
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    /// The registry was replaced: follow every checked instance afresh.
    pub fn restored(&self, registry: &Registry) {
        let now = self.now();
        let mut state = self.lock();
        let ring = state.ring.take();
        *state = State {
            ring,
            ..State::default()
        };
        for inst in registry.instances() {
            self.follow(&mut state, inst, now);
        }
        drop(state);
        self.wake.notify_one();
    }

    fn follow(&self, state: &mut State, inst: &Instance, now: u64) {
        for role in Role::ALL {
            self.follow_one(state, inst, role, now);
        }
    }

    fn follow_one(&self, state: &mut State, inst: &Instance, role: Role, now: u64) {
        let key = (inst.spec.instance_id.clone(), role);
        let Some(check) = role.check(inst).cloned() else {
            forget_one(state, &key);
            return;
        };
        // Held out for flapping by whoever probed it: the hold runs to its end here too.
        let held_until_wall =
            (role == Role::Readiness && *inst.status_reason == *FLAPPING && !inst.ready)
                .then(|| inst.status_changed_at + self.flap.cooldown_ms);
        if let Some(e) = state.entries.get_mut(&key)
            && e.check == check
            && e.host == inst.spec.host
            && e.port == inst.spec.port
        {
            // Same check: readiness (liveness) may have changed without this tracker.
            e.tracker.sync(role.state(inst));
            e.held_until_wall = held_until_wall;
            return;
        }
        forget_one(state, &key);
        let mut entry = Entry {
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            check,
            host: inst.spec.host.clone(),
            port: inst.spec.port,
            tracker: Tracker::new(role.state(inst)),
            due: now,
            owned: false,
            in_flight: false,
            held_until_wall,
        };
        let mine = state
            .ring
            .as_ref()
            .is_some_and(|r| r.owner(&key.0) == Some(self.node_id));
        if mine {
            self.take(&mut entry, now);
            state.owned += 1;
            state.queue.insert((now, key.clone()));
        }
        state.entries.insert(key, entry);
    }

    /// This node starts probing `e` (new to it, or taken over from another member): counts
    /// start afresh, a flapping hold runs to its end.
    fn take(&self, e: &mut Entry, now: u64) {
        e.owned = true;
        e.due = now;
        let left = e
            .held_until_wall
            .map_or(0, |until| until.saturating_sub(wall_ms()));
        if left > 0 {
            e.tracker = Tracker::held(now + left);
        } else {
            e.tracker.restart();
        }
    }

    /// The ring changed: each entry is taken, kept or let go; only owned ones are queued.
    fn reassign(&self, state: &mut State, ring: Option<Ring>, now: u64) {
        state.ring = ring;
        let State {
            entries,
            queue,
            owned,
            ring,
        } = state;
        for (key, e) in entries.iter_mut() {
            let mine = ring
                .as_ref()
                .is_some_and(|r| r.owner(&key.0) == Some(self.node_id));
            match (mine, e.owned) {
                (true, false) => {
                    self.take(e, now);
                    *owned += 1;
                    if !e.in_flight {
                        queue.insert((now, key.clone()));
                    }
                }
                (false, true) => {
                    e.owned = false;
                    *owned -= 1;
                    queue.remove(&(e.due, key.clone()));
                }
                _ => {}
            }
        }
    }

    /// Probes this node's share of the checks, until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, raft: Arc<RaftNode>, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let (tx, mut results) = mpsc::unbounded_channel::<Outcome>();
        let mut members: Option<Arc<Vec<u64>>> = None;
        let mut ring_at = None::<u64>;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let now = self.now();
            let mut next_due = now + 1_000;
            if ring_at.is_none_or(|at| now.saturating_sub(at) >= RING_REFRESH_MS) {
                ring_at = Some(now);
                let current = raft.checkers();
                if current != members {
                    tracing::info!(members = ?current.as_deref(), "members running checks");
                    members = current;
                    let ring = members.clone().map(Ring::new);
                    let mut state = self.lock();
                    self.reassign(&mut state, ring, now);
                }
            }
            {
                let mut state = self.lock();
                while let Some((due, key)) = state.queue.first().cloned() {
                    if due > now {
                        next_due = next_due.min(due);
                        break;
                    }
                    state.queue.pop_first();
                    let Some(e) = state.entries.get_mut(&key) else {
                        continue;
                    };
                    e.in_flight = true;
                    let job = (e.check.clone(), e.host.clone(), e.port, e.due, e.generation);
                    self.spawn_probe(key, job, &tx, &permits);
                }
            }
            let sleep =
                tokio::time::sleep(Duration::from_millis(next_due.saturating_sub(now).max(1)));
            tokio::select! {
                biased;
                _ = shutdown.changed() => return,
                Some(outcome) = results.recv() => self.record(&raft, outcome),
                _ = self.wake.notified() => {}
                _ = sleep => {}
            }
            // Take every result that is already there.
            while let Ok(outcome) = results.try_recv() {
                self.record(&raft, outcome);
            }
        }
    }

    fn spawn_probe(
        &self,
        key: Key,
        (check, host, port, due, generation): (Check, ArcStr, u16, u64, u64),
        tx: &mpsc::UnboundedSender<Outcome>,
        permits: &Arc<Semaphore>,
    ) {
        let (tx, permits, prober, epoch, metrics) = (
            tx.clone(),
            permits.clone(),
            self.prober.clone(),
            self.epoch,
            self.metrics.clone(),
        );
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let started = Instant::now();
            let late = u64::try_from(epoch.elapsed().as_millis())
                .unwrap_or(u64::MAX)
                .saturating_sub(due);
            metrics.check_drift.observe(late as f64 / 1000.0);
            // A probe that panics fails (and is rescheduled) rather than silently never
            // running again.
            let probe = std::panic::AssertUnwindSafe(prober.probe(&check, &host, port))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Probe::Fail("the prober panicked; see the server log".into()));
            let kind = match check.kind {
                CheckKind::Http => "http",
                CheckKind::Tcp => "tcp",
                CheckKind::Grpc => "grpc",
                CheckKind::Ttl => "ttl", // never probed (see `follow`)
            };
            let result = if probe == Probe::Pass { "pass" } else { "fail" };
            metrics
                .probes
                .get_or_create(&ProbeLabels {
                    r#type: kind,
                    result,
                })
                .inc();
            metrics
                .probe_latency
                .get_or_create(&TypeLabels { r#type: kind })
                .observe(started.elapsed().as_secs_f64());
            let done = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            let _ = tx.send(Outcome {
                key,
                generation,
                probe,
                done,
            });
        });
    }

    /// Feeds one result to its tracker, schedules the next probe, and proposes the transition
    /// the tracker decides, if any.
    fn record(self: &Arc<Self>, raft: &Arc<RaftNode>, outcome: Outcome) {
        let Outcome {
            key,
            generation,
            probe,
            done,
        } = outcome;
        let verdict = {
            let mut state = self.lock();
            let Some(e) = state.entries.get_mut(&key) else {
                return;
            };
            if e.generation != generation {
                return; // the entry was replaced while this probe ran
            }
            e.in_flight = false;
            e.due = done + e.check.interval;
            let flap = match key.1 {
                Role::Readiness => self.flap,
                Role::Liveness => FlapPolicy::NEVER,
            };
            if !e.owned {
                return; // another member probes it now
            }
            let verdict = e.tracker.observe(&probe, done, &e.check, &flap);
            let due = e.due;
            state.queue.insert((due, key.clone()));
            verdict
        };
        let Some(v) = verdict else { return };
        let to = match (key.1, v.ready, v.reason == FLAPPING) {
            (Role::Liveness, true, _) => "live",
            (Role::Liveness, false, _) => "dead",
            (_, _, true) => "flapping",
            (_, true, _) => "ready",
            (_, false, _) => "not_ready",
        };
        self.metrics
            .check_transitions
            .get_or_create(&TransitionLabels { to })
            .inc();
        let (this, raft) = (self.clone(), raft.clone());
        tokio::spawn(async move {
            let (instance_id, role) = key.clone();
            let cmd = match role {
                Role::Readiness => Command::SetReadiness {
                    instance_id: instance_id.to_string(),
                    ready: v.ready,
                    reason: v.reason,
                    at: wall_ms(),
                },
                Role::Liveness => Command::SetLiveness {
                    instance_id: instance_id.to_string(),
                    live: v.ready,
                    reason: format!("liveness {}", v.reason),
                    at: wall_ms(),
                },
            };
            if let Err(e) = raft.propose(cmd).await {
                // The registry did not change: the tracker takes its state back and counts
                // afresh, so the next probes decide (and propose) again.
                tracing::warn!(instance = %key.0, ?role, error = %e, "could not record a check transition");
                let now = raft.read(|r| r.get(&key.0).map(|i| role.state(i)));
                if let Some(now) = now
                    && let Some(e) = this.lock().entries.get_mut(&key)
                    && e.generation == generation
                {
                    e.tracker.sync(now);
                }
            }
        });
    }
}

fn forget(state: &mut State, id: &str) {
    for role in Role::ALL {
        forget_one(state, &(ArcStr::from(id), role));
    }
}

fn forget_one(state: &mut State, key: &Key) {
    if let Some(e) = state.entries.remove(key) {
        state.queue.remove(&(e.due, key.clone()));
        if e.owned {
            state.owned -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(ring: &Ring, keys: &[String]) -> HashMap<u64, usize> {
        let mut by = HashMap::new();
        for k in keys {
            *by.entry(ring.owner(k).expect("an owner")).or_default() += 1;
        }
        by
    }

    #[test]
    fn the_ring_spreads_instances_and_moves_only_a_leaving_members_share() {
        let keys: Vec<String> = (0..10_000).map(|i| format!("inventory-{i}")).collect();
        let three = Ring::new(Arc::new(vec![1, 2, 3]));
        let by = shares(&three, &keys);
        for id in [1, 2, 3] {
            let share = by[&id] as f64 / keys.len() as f64;
            assert!((0.25..0.42).contains(&share), "node {id}: {share}");
        }
        let two = Ring::new(Arc::new(vec![1, 3]));
        for k in &keys {
            let (was, is) = (three.owner(k), two.owner(k));
            assert_ne!(is, Some(2));
            if was != Some(2) {
                assert_eq!(was, is, "{k} moved though its member stayed");
            }
        }
        let four = Ring::new(Arc::new(vec![1, 2, 3, 4]));
        let moved = keys
            .iter()
            .filter(|k| three.owner(k) != four.owner(k))
            .count();
        let moved = moved as f64 / keys.len() as f64;
        assert!(
            (0.15..0.35).contains(&moved),
            "a fourth member took {moved}"
        );
        for k in &keys {
            let is = four.owner(k);
            assert!(
                is == three.owner(k) || is == Some(4),
                "{k} moved between old members"
            );
        }
    }

    #[tokio::test]
    async fn a_flapping_hold_survives_a_move_and_only_owned_checks_are_queued() {
        use muster_core::{Limits, RegisterRequest};
        let spec = RegisterRequest {
            service: Some("s".into()),
            instance_id: Some("x".into()),
            host: Some("127.0.0.1".into()),
            port: Some(9.into()),
            health_endpoint: Some("/ready".into()),
            ..Default::default()
        }
        .validate()
        .expect("valid")
        .0;
        let mut registry = Registry::new();
        let mut events = Vec::new();
        let commands = [
            Command::Register {
                spec: Box::new(spec),
                want_healthy: false,
                limits: Limits::default(),
                revive: false,
                at: wall_ms(),
            },
            // Another member held it out for flapping just now.
            Command::SetReadiness {
                instance_id: "x".into(),
                ready: false,
                reason: FLAPPING.into(),
                at: wall_ms(),
            },
        ];
        for (i, cmd) in commands.iter().enumerate() {
            let _ = registry
                .apply(i as u64 + 1, cmd, &mut events)
                .expect("applied");
        }
        let checker = Checker::new(1, FlapPolicy::default(), Arc::new(Metrics::new())).unwrap();
        checker.restored(&registry);
        {
            let state = checker.lock();
            assert_eq!(
                (state.owned, state.queue.len()),
                (0, 0),
                "no ring: nothing queued"
            );
        }
        assert_eq!(checker.flapping(), 0);
        // This node gets it.
        let mut state = checker.lock();
        checker.reassign(
            &mut state,
            Some(Ring::new(Arc::new(vec![1]))),
            checker.now(),
        );
        assert_eq!((state.owned, state.queue.len()), (1, 1));
        drop(state);
        assert_eq!(
            checker.flapping(),
            1,
            "held to the end of the cool-down here too"
        );
        // And loses it again.
        let mut state = checker.lock();
        checker.reassign(
            &mut state,
            Some(Ring::new(Arc::new(vec![2]))),
            checker.now(),
        );
        assert_eq!((state.owned, state.queue.len()), (0, 0));
    }

    #[test]
    fn an_empty_ring_has_no_owner() {
        assert_eq!(Ring::new(Arc::new(Vec::new())).owner("x"), None);
    }
}
