//! Selection: a [`View`] of one service, built once per change, picks an endpoint per call
//! without allocating or waiting.
//!
//! Building a view filters the instances (HEALTHY, weight above 0, deployment group visible to
//! this caller), sorts them into locality tiers (same zone → same region → anywhere, the last
//! only if crossing regions is allowed) and prepares each tier's picker tables. A pick walks
//! the tiers and takes the first with an available endpoint (not ejected, breaker closed or
//! letting a probe through); when too few endpoints of the view are available (the panic
//! threshold) it ignores availability.

use std::cell::Cell;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use muster_core::{Instance, Status};
use pingora_ketama::{Bucket, Continuum};
use tokio::time::Instant;

use crate::breaker::{Breaker, BreakerConfig, BreakerState};
use crate::metrics::{BreakerLabels, ClientMetrics};
use crate::outlier::{Ejection, EjectionConfig};

/// How a tier picks among its endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Random, in proportion to weight.
    #[default]
    WeightedRandom,
    /// Weighted round robin: a deterministic sequence that gives each endpoint its weight's
    /// share, spread evenly (a golden-ratio sequence over the weights: no table to build, no
    /// lock to take).
    RoundRobin,
    /// Power of two choices: of two endpoints drawn at random, the one with the lower
    /// peak-EWMA latency × (requests in flight + 1) per unit of weight wins (Finagle's and
    /// Linkerd's balancer, weighted as Envoy's least-request).
    LeastRequest,
    /// Ketama consistent hashing of the pick's key; without a key, weighted random. An
    /// unavailable endpoint hands its keys to the next ones on the ring.
    ConsistentHash,
}

/// Where the caller runs, and whether it may leave its region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locality {
    /// The caller's zone ("" if unknown: no zone preference).
    pub zone: String,
    /// The caller's region ("" if unknown: no region preference).
    pub region: String,
    /// Whether endpoints in other regions may be used when none nearer is available.
    pub cross_region: bool,
}

/// Everything a view is built with.
#[derive(Clone, Debug)]
pub struct ViewConfig {
    /// The caller's locality.
    pub locality: Locality,
    /// Deployment groups this caller opts in to (e.g. `canary`); instances of other groups
    /// are not seen. Instances without a group are seen by everyone.
    pub groups: Vec<String>,
    /// The picker.
    pub policy: Policy,
    /// Per-endpoint breakers.
    pub breaker: BreakerConfig,
    /// Outlier ejection, and the view's ejection share and panic threshold.
    pub ejection: EjectionConfig,
    /// Latency assumed for an endpoint not yet measured (peak-EWMA).
    pub default_rtt: Duration,
    /// Decay time of the latency average (peak-EWMA).
    pub ewma_decay: Duration,
    /// Told of every breaker state change.
    pub on_breaker: Option<BreakerHook>,
    /// Where breaker changes, ejections and panic picks are counted.
    pub metrics: Option<Arc<ClientMetrics>>,
}

/// What a [`BreakerHook`] calls.
pub type BreakerFn = dyn Fn(&Instance, BreakerState) + Send + Sync;

/// A function told of each breaker state change: the endpoint's instance and its new state.
#[derive(Clone)]
pub struct BreakerHook(pub Arc<BreakerFn>);

impl std::fmt::Debug for BreakerHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BreakerHook")
    }
}

impl ViewConfig {
    fn breaker_changed(&self, instance: &Instance, to: BreakerState) {
        if let Some(m) = &self.metrics {
            m.breaker_transitions
                .get_or_create(&BreakerLabels { to: to.as_str() })
                .inc();
        }
        if let Some(hook) = &self.on_breaker {
            (hook.0)(instance, to);
        }
    }
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig {
            locality: Locality::default(),
            groups: Vec::new(),
            policy: Policy::default(),
            breaker: BreakerConfig::default(),
            ejection: EjectionConfig::default(),
            default_rtt: Duration::from_millis(30),
            ewma_decay: Duration::from_secs(10),
            on_breaker: None,
            metrics: None,
        }
    }
}

/// An instance with its call statistics and health, shared by every view it is part of (so
/// its breaker and load survive a view rebuilt on a change).
#[derive(Clone, Debug)]
pub struct Endpoint {
    instance: Arc<Instance>,
    state: Arc<EndpointState>,
    /// Where it sits on a consistent-hashing ring (a hash of its instance id).
    ring_hash: u128,
}

#[derive(Debug)]
struct EndpointState {
    /// Fast path: false while the breaker is closed and the endpoint not ejected.
    blocked: AtomicBool,
    health: Mutex<Health>,
    in_flight: AtomicU64,
    /// Peak-EWMA latency in nanoseconds (published for picks; updated under `load`).
    ewma_ns: AtomicU64,
    load: Mutex<Option<(f64, Instant)>>,
}

#[derive(Debug, Default)]
struct Health {
    breaker: Breaker,
    ejection: Ejection,
}

impl Endpoint {
    /// A fresh endpoint for `instance` (no history).
    pub fn new(instance: Arc<Instance>) -> Self {
        Endpoint {
            ring_hash: id_hash(&instance.spec.instance_id),
            instance,
            state: Arc::new(EndpointState {
                blocked: AtomicBool::new(false),
                health: Mutex::default(),
                in_flight: AtomicU64::new(0),
                ewma_ns: AtomicU64::new(0),
                load: Mutex::new(None),
            }),
        }
    }

    /// The same endpoint (history kept) with a newer copy of its instance.
    pub fn updated(&self, instance: Arc<Instance>) -> Self {
        Endpoint {
            ring_hash: if instance.spec.instance_id == self.instance.spec.instance_id {
                self.ring_hash
            } else {
                id_hash(&instance.spec.instance_id)
            },
            instance,
            state: self.state.clone(),
        }
    }

    /// The instance.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// The breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.health().breaker.state()
    }

    /// Whether it is ejected now.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.health().ejection.is_ejected(now)
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.state.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cost(&self, default_rtt_ns: u64) -> u64 {
        let ewma = match self.state.ewma_ns.load(Ordering::Relaxed) {
            0 => default_rtt_ns,
            n => n,
        };
        ewma.saturating_mul(self.in_flight() + 1)
    }

    /// Whether a call may go to it now; takes a half-open probe slot if that is what lets it.
    fn try_acquire(&self, now: Instant, config: &ViewConfig) -> Acquired {
        if !self.state.blocked.load(Ordering::Acquire) {
            return Acquired::Yes;
        }
        let mut h = self.health();
        if h.ejection.is_ejected(now) {
            return Acquired::No;
        }
        let (ok, changed) = h.breaker.try_acquire(now, &config.breaker);
        let probe = ok && h.breaker.state() == BreakerState::HalfOpen;
        if h.breaker.state() == BreakerState::Closed {
            // The ejection is over and the breaker closed: back on the fast path.
            self.state.blocked.store(false, Ordering::Release);
        }
        drop(h);
        if let Some(to) = changed {
            config.breaker_changed(&self.instance, to);
        }
        match (ok, probe) {
            (true, true) => Acquired::Probe,
            (true, false) => Acquired::Yes,
            (false, _) => Acquired::No,
        }
    }

    /// Whether it is available at `now`, without taking anything (an open breaker whose time
    /// is up counts as available: its probe is due).
    fn is_available(&self, now: Instant, config: &ViewConfig) -> bool {
        if !self.state.blocked.load(Ordering::Acquire) {
            return true;
        }
        let h = self.health();
        !h.ejection.is_ejected(now) && h.breaker.would_allow(now, &config.breaker)
    }
}

enum Acquired {
    Yes,
    /// Yes, as a half-open breaker's probe.
    Probe,
    No,
}

/// One tier's endpoints and picker tables.
struct Tier {
    /// 0: same zone, 1: same region, 2: other regions.
    kind: u8,
    endpoints: Vec<Endpoint>,
    /// Running sum of weights (weighted random, P2C draws, round robin).
    cumulative: Vec<u64>,
    /// Round robin: picks so far.
    cursor: AtomicU64,
    /// Consistent hashing: the ring (shared with earlier views of the same members) and, by
    /// ring address, the endpoint's index.
    ring: Option<Arc<Continuum>>,
    /// `(ring hash, endpoint index)`, sorted.
    by_address: Arc<Vec<(u128, u32)>>,
    /// The members and their ring weights, order-independent (a ring is reused while it stays).
    fingerprint: u128,
    /// The ring is an earlier members' ring, kept while a fresh one is built elsewhere:
    /// departed members' points are skipped, new members get keys once it is rebuilt.
    stale_ring: bool,
    /// Endpoints available at the last count ([`View::recount`]).
    available: AtomicUsize,
}

/// Ring points looked at past a key's endpoint before falling back to a scan.
const RING_STEPS: usize = 32;

/// Endpoints a ketama ring can hold (its node indices are 16 bits); a larger tier falls back
/// to weighted random.
const MAX_RING_ENDPOINTS: usize = 65_535;

impl Tier {
    fn new(
        kind: u8,
        endpoints: Vec<Endpoint>,
        policy: Policy,
        previous: Option<&View>,
        defer_ring: bool,
    ) -> Tier {
        let mut sum = 0u64;
        let cumulative = endpoints
            .iter()
            .map(|e| {
                sum += u64::from(e.instance.spec.weight);
                sum
            })
            .collect();
        let mut tier = Tier {
            kind,
            stale_ring: false,
            cumulative,
            cursor: AtomicU64::new(0),
            ring: None,
            by_address: Arc::default(),
            fingerprint: 0,
            available: AtomicUsize::new(0),
            endpoints,
        };
        if policy == Policy::ConsistentHash && tier.endpoints.len() <= MAX_RING_ENDPOINTS {
            let lightest = lightest(&tier.endpoints);
            tier.fingerprint = tier.endpoints.iter().fold(0u128, |acc, e| {
                let w = ring_weight(e, lightest);
                acc.wrapping_add(e.ring_hash.wrapping_mul(2 * u128::from(w) + 1))
            });
            // The same members (and weights): the ring serves again; in the same order (the
            // resolver keeps endpoints sorted by id), so does the address index.
            let same = previous
                .into_iter()
                .flat_map(|v| v.tiers.iter())
                .find(|t| t.fingerprint == tier.fingerprint && t.ring.is_some() && !t.stale_ring);
            if let Some(prev) = same {
                tier.ring = prev.ring.clone();
                let same_order = prev.endpoints.len() == tier.endpoints.len()
                    && prev
                        .endpoints
                        .iter()
                        .zip(&tier.endpoints)
                        .all(|(a, b)| a.ring_hash == b.ring_hash);
                if same_order {
                    tier.by_address = prev.by_address.clone();
                }
            }
            if tier.by_address.len() != tier.endpoints.len() {
                let mut by_address: Vec<(u128, u32)> = tier
                    .endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.ring_hash, i as u32))
                    .collect();
                // By the upper half (a cheaper comparison; equal upper halves of two ids'
                // hashes are as good as impossible, and would only cost a ring point).
                by_address.sort_unstable_by_key(|(h, _)| (h >> 64) as u64);
                tier.by_address = Arc::new(by_address);
            }
            if tier.ring.is_none() && defer_ring {
                // Members changed: keep the tier's previous ring for now (a fresh one takes
                // milliseconds); the caller builds it off the pick path.
                let earlier = previous
                    .into_iter()
                    .flat_map(|v| v.tiers.iter())
                    .find(|t| t.kind == kind && t.ring.is_some());
                if let Some(prev) = earlier {
                    tier.ring = prev.ring.clone();
                    tier.stale_ring = true;
                }
            }
            if tier.ring.is_none() {
                tier.ring = Some(Arc::new(ketama(&tier.endpoints, lightest)));
            }
        }
        tier
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The endpoint a uniform `r` falls on, by weight.
    fn by_weight(&self, r: u64) -> usize {
        let r = r % self.total().max(1);
        self.cumulative.partition_point(|c| *c <= r)
    }

    /// The endpoint at a ring address.
    fn at_address(&self, addr: &SocketAddr) -> Option<usize> {
        let SocketAddr::V6(a) = addr else { return None };
        let h = u128::from(*a.ip());
        // A departed member's point on a kept ring matches nobody here.
        let at = self.by_address.binary_search_by_key(&h, |(k, _)| *k).ok()?;
        Some(self.by_address[at].1 as usize)
    }
}

/// The lightest weight above 0 (1 if none).
fn lightest(endpoints: &[Endpoint]) -> u32 {
    endpoints
        .iter()
        .map(|e| e.instance.spec.weight)
        .filter(|w| *w > 0)
        .min()
        .unwrap_or(1)
}

/// An endpoint's ring weight: 1–8 times the points by weight relative to the lightest.
fn ring_weight(e: &Endpoint, lightest: u32) -> u32 {
    (e.instance.spec.weight / lightest.max(1)).clamp(1, 8)
}

/// A ketama ring: each endpoint placed by a hash of its instance id (so the same instance
/// keeps its place across views, and a ring serves any view with the same members, in any
/// order: ketama sorts its points by hash).
fn ketama(endpoints: &[Endpoint], lightest: u32) -> Continuum {
    let buckets: Vec<Bucket> = endpoints
        .iter()
        .map(|e| {
            let addr = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(e.ring_hash), 0, 0, 0));
            Bucket::new(addr, ring_weight(e, lightest))
        })
        .collect();
    Continuum::new(&buckets)
}

thread_local! {
    /// wyrand state, per thread.
    static RANDOM: Cell<u64> = Cell::new(rand::random::<u64>() | 1);
}

/// A fast random number for picking (wyrand; not for anything secret).
fn fast_random() -> u64 {
    RANDOM.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) ^ t) as u64
    })
}

/// The time of one pick: read once, and only if something needs it.
struct Now(Cell<Option<Instant>>);

impl Now {
    fn get(&self) -> Instant {
        match self.0.get() {
            Some(t) => t,
            None => {
                let t = Instant::now();
                self.0.set(Some(t));
                t
            }
        }
    }
}

/// 128 bits of FNV-1a over `id`: where an instance sits on a ketama ring.
fn id_hash(id: &str) -> u128 {
    let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
    for b in id.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000000001000000000000000000013B);
    }
    h
}

/// A service's endpoints as one caller sees them, ready to pick from.
pub struct View {
    tiers: Vec<Tier>,
    len: usize,
    config: Arc<ViewConfig>,
}

/// About one pick in this many counts the tiers' available endpoints again (that count decides
/// panic mode; each pick still checks its own endpoint). A thread-local count, so picks on
/// many threads do not contend on it.
const RECOUNT_EVERY: u32 = 512;

thread_local! {
    static PICKS: Cell<u32> = const { Cell::new(0) };
}

/// A picked endpoint. Report the call's outcome with [`Pick::report`]; dropping it without a
/// report counts the call as cancelled (only the in-flight count changes).
#[derive(Debug)]
pub struct Pick<'a> {
    view: &'a View,
    endpoint: &'a Endpoint,
    /// When it was picked (least-request only: its latency feeds the choice).
    started: Option<Instant>,
    /// It took a half-open breaker's probe slot.
    probe: bool,
    reported: bool,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field(
                "tiers",
                &self
                    .tiers
                    .iter()
                    .map(|t| t.endpoints.len())
                    .collect::<Vec<_>>(),
            )
            .field(
                "available",
                &self
                    .tiers
                    .iter()
                    .map(|t| t.available.load(Ordering::Relaxed))
                    .collect::<Vec<_>>(),
            )
            .field("policy", &self.config.policy)
            .finish()
    }
}

impl View {
    /// A view of `endpoints` (HEALTHY ones with a weight above 0, in a visible deployment group,
    /// are kept).
    pub fn new(endpoints: impl IntoIterator<Item = Endpoint>, config: Arc<ViewConfig>) -> View {
        View::after(endpoints, config, None)
    }

    /// [`View::new`], reusing what `previous` built that still fits (a consistent-hashing ring
    /// whose members did not change).
    pub fn after(
        endpoints: impl IntoIterator<Item = Endpoint>,
        config: Arc<ViewConfig>,
        previous: Option<&View>,
    ) -> View {
        View::build(endpoints, config, previous, false)
    }

    /// [`View::after`], but a consistent-hashing tier whose members changed keeps the previous
    /// view's ring for now instead of building one (which takes milliseconds at a thousand
    /// endpoints): keys of departed members move on along the ring as usual, new members get
    /// keys once a fresh view is built. [`View::has_stale_ring`] says whether one is due.
    pub fn after_deferred(
        endpoints: impl IntoIterator<Item = Endpoint>,
        config: Arc<ViewConfig>,
        previous: Option<&View>,
    ) -> View {
        View::build(endpoints, config, previous, true)
    }

    /// Whether a tier runs on an earlier members' ring ([`View::after_deferred`]).
    pub fn has_stale_ring(&self) -> bool {
        self.tiers.iter().any(|t| t.stale_ring)
    }

    fn build(
        endpoints: impl IntoIterator<Item = Endpoint>,
        config: Arc<ViewConfig>,
        previous: Option<&View>,
        defer_ring: bool,
    ) -> View {
        let loc = &config.locality;
        let mut tiers: [Vec<Endpoint>; 3] = Default::default();
        for e in endpoints {
            let spec = &e.instance.spec;
            let visible = spec.deployment_group().is_empty()
                || config
                    .groups
                    .iter()
                    .any(|g| **g == *spec.deployment_group());
            if e.instance.status != Status::Healthy || spec.weight == 0 || !visible {
                continue;
            }
            let same_region = loc.region.is_empty() || *spec.region() == *loc.region;
            let tier = if (loc.zone.is_empty() || *spec.zone() == *loc.zone) && same_region {
                0
            } else if same_region {
                1
            } else if loc.cross_region {
                2
            } else {
                continue;
            };
            tiers[tier].push(e);
        }
        let len = tiers.iter().map(Vec::len).sum();
        let view = View {
            tiers: tiers
                .into_iter()
                .enumerate()
                .filter(|(_, t)| !t.is_empty())
                .map(|(kind, t)| Tier::new(kind as u8, t, config.policy, previous, defer_ring))
                .collect(),
            len,
            config,
        };
        view.recount(Instant::now());
        view
    }

    /// Counts each tier's available endpoints at `now`.
    fn recount(&self, now: Instant) {
        for t in &self.tiers {
            let n = t
                .endpoints
                .iter()
                .filter(|e| e.is_available(now, &self.config))
                .count();
            t.available.store(n, Ordering::Relaxed);
        }
    }

    /// Whether `tier` has so few available endpoints that availability is ignored in it.
    fn tier_panicking(&self, tier: &Tier) -> bool {
        let n = tier.endpoints.len();
        (tier.available.load(Ordering::Relaxed) as f64)
            < self.config.ejection.panic_threshold * n as f64
    }

    /// Endpoints in the view.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The endpoints, nearest tier first.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.tiers.iter().flat_map(|t| t.endpoints.iter())
    }

    /// Whether picks would go to a panicking tier now: no tier with an available endpoint has
    /// at least `panic_threshold` of its endpoints available (as last counted).
    pub fn panicking(&self) -> bool {
        !self.tiers.is_empty()
            && !self
                .tiers
                .iter()
                .any(|t| t.available.load(Ordering::Relaxed) > 0 && !self.tier_panicking(t))
    }

    /// Picks an endpoint (`key` for consistent hashing); `None` only when the view is empty.
    pub fn pick(&self, key: Option<&[u8]>) -> Option<Pick<'_>> {
        self.pick_inner(key, fast_random(), fast_random(), &Now(Cell::new(None)))
    }

    /// [`View::pick`] with the random numbers and the time given (tests, benchmarks).
    pub fn pick_with(
        &self,
        key: Option<&[u8]>,
        r1: u64,
        r2: u64,
        now: Instant,
    ) -> Option<Pick<'_>> {
        self.pick_inner(key, r1, r2, &Now(Cell::new(Some(now))))
    }

    fn pick_inner(&self, key: Option<&[u8]>, r1: u64, r2: u64, now: &Now) -> Option<Pick<'_>> {
        let due = PICKS.with(|p| {
            let n = p.get().wrapping_add(1);
            p.set(n);
            n % RECOUNT_EVERY == 0
        });
        if due {
            self.recount(now.get());
        }
        // The nearest tier with enough available endpoints; availability is checked per pick.
        // A tier with too few (under `panic_threshold`) is passed over for a healthier one
        // further away; if there is none, the nearest such tier is used whole (panic mode).
        let mut degraded = None;
        for tier in &self.tiers {
            if tier.available.load(Ordering::Relaxed) == 0 {
                continue;
            }
            if self.tier_panicking(tier) {
                degraded.get_or_insert(tier);
                continue;
            }
            if let Some((i, probe)) = self.pick_in(tier, key, r1, r2, now, true) {
                return Some(self.started(&tier.endpoints[i], now, probe));
            }
        }
        if let Some(tier) = degraded {
            return self.panic_pick(tier, key, r1, r2, now);
        }
        // None as last counted: the count may be stale (breakers whose time is up).
        for tier in self
            .tiers
            .iter()
            .filter(|t| t.available.load(Ordering::Relaxed) == 0)
        {
            if let Some((i, probe)) = self.pick_in(tier, key, r1, r2, now, true) {
                return Some(self.started(&tier.endpoints[i], now, probe));
            }
        }
        // Nothing available anywhere: the nearest tier, availability ignored.
        self.panic_pick(self.tiers.first()?, key, r1, r2, now)
    }

    fn panic_pick<'a>(
        &'a self,
        tier: &'a Tier,
        key: Option<&[u8]>,
        r1: u64,
        r2: u64,
        now: &Now,
    ) -> Option<Pick<'a>> {
        if let Some(m) = &self.config.metrics {
            m.panic_picks.inc();
        }
        let (i, _) = self.pick_in(tier, key, r1, r2, now, false)?;
        Some(self.started(&tier.endpoints[i], now, false))
    }

    fn started<'a>(&'a self, endpoint: &'a Endpoint, now: &Now, probe: bool) -> Pick<'a> {
        endpoint.state.in_flight.fetch_add(1, Ordering::Relaxed);
        Pick {
            view: self,
            endpoint,
            started: (self.config.policy == Policy::LeastRequest).then(|| now.get()),
            probe,
            reported: false,
        }
    }

    /// Whether `e` may take a call, and whether as a probe (always, not as a probe, when
    /// `check` is off).
    fn available(&self, e: &Endpoint, now: &Now, check: bool) -> Option<bool> {
        if !check || !e.state.blocked.load(Ordering::Acquire) {
            return Some(false);
        }
        match e.try_acquire(now.get(), &self.config) {
            Acquired::Yes => Some(false),
            Acquired::Probe => Some(true),
            Acquired::No => None,
        }
    }

    /// Endpoints of the view ejected at `now`.
    fn ejected(&self, now: Instant) -> usize {
        self.endpoints()
            .filter(|e| e.state.blocked.load(Ordering::Acquire) && e.is_ejected(now))
            .count()
    }

    fn pick_in(
        &self,
        tier: &Tier,
        key: Option<&[u8]>,
        r1: u64,
        r2: u64,
        now: &Now,
        check: bool,
    ) -> Option<(usize, bool)> {
        let n = tier.endpoints.len();
        if n == 0 {
            return None;
        }
        let ok = |i: usize| self.available(&tier.endpoints[i], now, check);
        let first = match (self.config.policy, key, &tier.ring) {
            (Policy::ConsistentHash, Some(key), Some(ring)) => {
                // The key's endpoint, else the next ones on the ring (a few dozen points: the
                // points next to a node are often its own), else the scan below from the key's
                // endpoint.
                let mut owner = None;
                for i in ring
                    .node_iter(key)
                    .take(RING_STEPS)
                    .filter_map(|addr| tier.at_address(addr))
                {
                    if let Some(probe) = ok(i) {
                        return Some((i, probe));
                    }
                    owner.get_or_insert(i);
                }
                owner.unwrap_or_else(|| tier.by_weight(r1))
            }
            (Policy::RoundRobin, _, _) => {
                // n × golden ratio, mod 1, scaled to the total weight: evenly spread.
                let at = tier.cursor.fetch_add(1, Ordering::Relaxed);
                let x = at.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                tier.by_weight(((u128::from(x) * u128::from(tier.total())) >> 64) as u64)
            }
            (Policy::LeastRequest, _, _) if n > 1 => {
                // Two distinct endpoints drawn uniformly; the lower cost per unit of weight
                // wins (so heavier endpoints carry proportionally more load).
                let a = ((u128::from(r1) * n as u128) >> 64) as usize;
                let b = (a + 1 + ((u128::from(r2) * (n as u128 - 1)) >> 64) as usize) % n;
                let default_rtt =
                    u64::try_from(self.config.default_rtt.as_nanos()).unwrap_or(u64::MAX);
                let (ea, eb) = (&tier.endpoints[a], &tier.endpoints[b]);
                let ca = u128::from(ea.cost(default_rtt)) * u128::from(eb.instance.spec.weight);
                let cb = u128::from(eb.cost(default_rtt)) * u128::from(ea.instance.spec.weight);
                let (best, other) = if ca <= cb { (a, b) } else { (b, a) };
                if let Some(probe) = ok(best) {
                    return Some((best, probe));
                }
                if let Some(probe) = ok(other) {
                    return Some((other, probe));
                }
                best
            }
            _ => tier.by_weight(r1),
        };
        if let Some(probe) = ok(first) {
            return Some((first, probe));
        }
        // Taken: the next available one, from where the first draw fell.
        (1..n)
            .map(|k| (first + k) % n)
            .find_map(|i| ok(i).map(|probe| (i, probe)))
    }
}

impl Pick<'_> {
    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        self.endpoint
    }

    /// The instance to call.
    pub fn instance(&self) -> &Instance {
        &self.endpoint.instance
    }

    /// Reports the call's outcome now; returns the breaker's state change, if any.
    pub fn report(self, success: bool) -> Option<BreakerState> {
        self.report_at(success, Instant::now())
    }

    /// [`Pick::report`] at a given time (tests).
    pub fn report_at(mut self, success: bool, now: Instant) -> Option<BreakerState> {
        self.reported = true;
        let view = self.view;
        let config = &view.config;
        let e = self.endpoint;
        e.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Peak-EWMA: a slower call takes the average up at once, faster ones decay it.
        if let Some(started) = self.started {
            let rtt = now.saturating_duration_since(started).as_nanos() as f64;
            let mut load = e.state.load.lock().unwrap_or_else(|p| p.into_inner());
            let ewma = match *load {
                None => rtt,
                Some((avg, at)) if rtt < avg => {
                    let dt = now.saturating_duration_since(at).as_secs_f64();
                    let w = (-dt / config.ewma_decay.as_secs_f64().max(1e-3)).exp();
                    avg * w + rtt * (1.0 - w)
                }
                Some(_) => rtt,
            };
            *load = Some((ewma, now));
            e.state
                .ewma_ns
                .store((ewma as u64).max(1), Ordering::Relaxed);
        }
        // Room for one more ejection? Counted (a scan) only when this report would eject.
        let would_eject = e
            .health()
            .ejection
            .would_eject(success, now, &config.ejection);
        let may_eject = would_eject && {
            let allowed = (config.ejection.max_ejected_share * view.len as f64).max(1.0);
            (view.ejected(now) as f64) < allowed
        };
        let mut h = e.health();
        let changed = h
            .breaker
            .record_call(success, self.probe, now, &config.breaker);
        let ejected = h.ejection.record(success, now, may_eject, &config.ejection);
        let blocked = h.breaker.state() != BreakerState::Closed || h.ejection.is_ejected(now);
        e.state.blocked.store(blocked, Ordering::Release);
        drop(h);
        if let Some(to) = changed {
            config.breaker_changed(&e.instance, to);
        }
        if ejected.is_some()
            && let Some(m) = &config.metrics
        {
            m.ejections.inc();
        }
        if blocked {
            // Panic mode is decided on counts: bring them up to date at once.
            view.recount(now);
        }
        changed
    }
}

impl Drop for Pick<'_> {
    fn drop(&mut self) {
        if !self.reported {
            let state = &self.endpoint.state;
            state.in_flight.fetch_sub(1, Ordering::Relaxed);
            if self.probe {
                // It held a half-open probe slot: give it back.
                self.endpoint.health().breaker.cancel();
            }
        }
    }
}

#[cfg(test)]
mod tests;
