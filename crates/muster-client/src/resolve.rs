//! The resolver: keeps a [`View`] of one service up to date from the servers, and serves the
//! last known good one when none answers. A pick never waits on it.
//!
//! ```text
//!  start ──▶ cache file? ──▶ View (source: disk)
//!  task:  servers[i] ── GET /v1/watch?service=S[&index=N] ──▶ snapshot, upsert, delete, compacted
//!           │   (stream broke, or silent for `idle_timeout`) ──▶ next server, backoff, resume at N
//!           │   (every `refresh`) ──▶ reconnect without index: a full snapshot
//!           └─▶ apply ──▶ index never backwards ──▶ View::new ──▶ empty? held until confirmed
//!                                                         └──▶ ArcSwap ──▶ cache file (≤ 1/s)
//! ```
//!
//! The index only moves forward: an event or snapshot older than what the resolver holds is
//! ignored, unless the server said `compacted` first (its history was cut, or it restarted from
//! another state: its snapshot is the truth). An update that would empty a non-empty view is
//! held back (the old view keeps serving) until `empty_hold` has passed and a fresh lookup
//! confirms it; if no server answers, the old view stays.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arcstr::ArcStr;
use futures_util::StreamExt;
use muster_core::Instance;
use muster_proto::WatchEvent;
use muster_proto::sse::Splitter;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::retry::Backoff;
use crate::select::{Endpoint, View, ViewConfig};

/// How a resolver finds and follows its service.
#[derive(Clone, Debug)]
pub struct ResolverConfig {
    /// Base URLs of the servers (e.g. `http://10.0.0.5:7070`), tried in turn.
    pub servers: Vec<String>,
    /// How views are built.
    pub view: ViewConfig,
    /// A full snapshot is fetched this often, whatever the watch said.
    pub refresh: Duration,
    /// A watch silent this long is given up (the server sends a keepalive every 15 s).
    pub idle_timeout: Duration,
    /// Connecting to one server gives up after this long.
    pub connect_timeout: Duration,
    /// Waits between attempts when servers fail.
    pub backoff: Backoff,
    /// How long an update that would empty the view is held back before it is confirmed.
    pub empty_hold: Duration,
    /// Where the last known good instances are kept across restarts (none: memory only).
    pub cache_file: Option<PathBuf>,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            servers: vec!["http://127.0.0.1:7070".into()],
            view: ViewConfig::default(),
            refresh: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(45),
            connect_timeout: Duration::from_secs(2),
            backoff: Backoff {
                base: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
            empty_hold: Duration::from_secs(5),
            cache_file: None,
        }
    }
}

/// Why a resolver could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// No server address was given.
    #[error("a resolver needs at least one server address")]
    NoServers,
    /// A server address is not an `http://` URL.
    #[error("server address {0:?} is not an http:// URL")]
    BadServer(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Where the current view came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Nothing yet.
    None,
    /// The cache file (no server has answered since the start).
    Disk,
    /// A server.
    Server,
}

/// What a resolver knows of its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverStatus {
    /// Index of what the view reflects.
    pub index: u64,
    /// Where it came from.
    pub source: Source,
    /// Whether a watch is open now.
    pub connected: bool,
    /// Whether an update that would empty the view is being held back.
    pub holding_empty: bool,
}

/// The cache file's content.
#[derive(Serialize, Deserialize)]
struct Cached {
    service: String,
    index: u64,
    instances: Vec<Instance>,
}

struct State {
    /// By instance id (sorted: views are built in the same order each time, so what they
    /// build per member set is reused).
    endpoints: BTreeMap<ArcStr, Endpoint>,
    index: u64,
    source: Source,
    connected: bool,
    /// Since when an emptying update is held back.
    held_since: Option<Instant>,
    /// The next snapshot may go backwards (the server said `compacted`).
    accept_older: bool,
    /// The published view changed since the cache file was written.
    dirty: bool,
    /// Views published so far (a ring built off the pick path is published only if no other
    /// view came meanwhile).
    generation: u64,
}

pub(crate) struct Shared {
    service: String,
    config: ResolverConfig,
    view_config: Arc<ViewConfig>,
    view: Mutex<Arc<View>>,
    state: Mutex<State>,
    /// Woken (all waiters) on every published view, and when the resolver is dropped.
    pub(crate) changed: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
}

/// Follows one service; see the module docs.
pub struct Resolver {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
        self.shared
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.shared.changed.notify_waiters();
    }
}

impl Resolver {
    /// Starts following `service` (on the current tokio runtime). Returns at once: the view
    /// is empty, or what the cache file held, until a server answers.
    pub fn start(service: &str, config: ResolverConfig) -> Result<Resolver, ResolveError> {
        if config.servers.is_empty() {
            return Err(ResolveError::NoServers);
        }
        if let Some(bad) = config.servers.iter().find(|s| !s.starts_with("http://")) {
            return Err(ResolveError::BadServer(bad.clone()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ResolveError::Client(e.to_string()))?;
        let mut state = State::default();
        if let Some(path) = &config.cache_file {
            match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice::<Cached>(&bytes) {
                    Ok(c) if c.service == service => {
                        state.index = c.index;
                        state.source = Source::Disk;
                        for i in c.instances {
                            let id = i.spec.instance_id.clone();
                            state.endpoints.insert(id, Endpoint::new(Arc::new(i)));
                        }
                    }
                    Ok(c) => {
                        tracing::warn!(path = %path.display(), cached = %c.service, "the cache file is for another service; ignored")
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "unreadable cache file; ignored")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the cache file")
                }
            }
        }
        let shared = Arc::new(Shared::new(service, config, state));
        let task = tokio::spawn(run(shared.clone(), http));
        Ok(Resolver { shared, task })
    }

    /// The current view. Cheap (a reference count); never waits on the network.
    pub fn view(&self) -> Arc<View> {
        self.shared.view()
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Index, source, connection.
    pub fn status(&self) -> ResolverStatus {
        let s = self.shared.state();
        ResolverStatus {
            index: s.index,
            source: s.source,
            connected: s.connected,
            holding_empty: s.held_since.is_some(),
        }
    }

    /// Waits (at most `timeout`) until a server has answered; returns whether one did.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            if self.shared.state().source == Source::Server {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.shared.state().source == Source::Server;
            }
        }
    }
}

impl Default for State {
    fn default() -> Self {
        State {
            endpoints: BTreeMap::new(),
            index: 0,
            source: Source::None,
            connected: false,
            held_since: None,
            accept_older: false,
            dirty: false,
            generation: 0,
        }
    }
}

impl State {
    /// Replaces every endpoint by `instances` at `index` (keeping the history of those that
    /// stay).
    fn replace(&mut self, instances: Vec<Instance>, index: u64) {
        let mut endpoints = BTreeMap::new();
        for i in instances {
            let id = i.spec.instance_id.clone();
            let e = match self.endpoints.get(&id) {
                Some(e) => e.updated(Arc::new(i)),
                None => Endpoint::new(Arc::new(i)),
            };
            endpoints.insert(id, e);
        }
        self.endpoints = endpoints;
        self.index = index;
    }
}

impl Shared {
    fn new(service: &str, config: ResolverConfig, state: State) -> Shared {
        let view_config = Arc::new(config.view.clone());
        let view = View::new(state.endpoints.values().cloned(), view_config.clone());
        Shared {
            service: service.to_string(),
            config,
            view_config,
            view: Mutex::new(Arc::new(view)),
            state: Mutex::new(state),
            changed: tokio::sync::Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the resolver was dropped.
    pub(crate) fn closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(crate) fn current_view(&self) -> Arc<View> {
        self.view()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn view(&self) -> Arc<View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Builds the view from the state and publishes it, unless it would empty a non-empty
    /// view without confirmation.
    fn publish(&self, state: &mut State, confirmed_empty: bool) {
        let previous = self.view();
        let view = View::after_deferred(
            state.endpoints.values().cloned(),
            self.view_config.clone(),
            Some(&previous),
        );
        let mut current = self.view.lock().unwrap_or_else(|p| p.into_inner());
        if view.is_empty() && !current.is_empty() && !confirmed_empty {
            if state.held_since.is_none() {
                tracing::warn!(service = %self.service, "an update would leave no endpoint: held back until confirmed");
                state.held_since = Some(Instant::now());
            }
            drop(current);
            self.changed.notify_waiters(); // the source may have changed (ready())
            return;
        }
        state.held_since = None;
        *current = Arc::new(view);
        state.dirty = true;
        state.generation += 1;
        drop(current);
        self.changed.notify_waiters();
    }

    /// The published view runs on an earlier members' consistent-hashing ring: builds the
    /// fresh view off the task's thread and publishes it, unless another came meanwhile.
    pub(crate) async fn rebuild_ring(&self) {
        let current = self.view();
        if !current.has_stale_ring() {
            return;
        }
        // From the published view's own endpoints: the state may hold an update that is being
        // held back (one that would empty the view), which this must not publish.
        let generation = self.state().generation;
        let config = self.view_config.clone();
        let fresh = tokio::task::spawn_blocking(move || {
            View::after(current.endpoints().cloned(), config, Some(&current))
        })
        .await;
        let Ok(fresh) = fresh else { return };
        let state = self.state();
        if state.generation == generation {
            *self.view.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
            drop(state);
            self.changed.notify_waiters();
        }
    }

    /// A full list of the service's instances at `index`.
    fn apply_snapshot(&self, instances: Vec<Instance>, index: u64) {
        let mut state = self.state();
        if index < state.index && state.source == Source::Server && !state.accept_older {
            return; // older than what we hold
        }
        state.accept_older = false;
        state.replace(instances, index);
        state.source = Source::Server;
        self.publish(&mut state, false);
    }

    /// One instance changed (`Some`) or went away (`None` with its id) at `index`.
    fn apply_change(&self, index: u64, instance: Instance, gone: bool) {
        let mut state = self.state();
        if index < state.index && state.source == Source::Server {
            return;
        }
        let id = instance.spec.instance_id.clone();
        if gone {
            state.endpoints.remove(&id);
        } else {
            let e = match state.endpoints.get(&id) {
                Some(e) => e.updated(Arc::new(instance)),
                None => Endpoint::new(Arc::new(instance)),
            };
            state.endpoints.insert(id, e);
        }
        state.index = state.index.max(index);
        self.publish(&mut state, false);
    }

    fn set_connected(&self, connected: bool) {
        self.state().connected = connected;
    }

    /// Writes the cache file if the view changed since the last write.
    async fn flush(&self) {
        let Some(path) = &self.config.cache_file else {
            return;
        };
        let cached = {
            let mut state = self.state();
            if !state.dirty || state.source != Source::Server {
                return;
            }
            state.dirty = false;
            Cached {
                service: self.service.clone(),
                index: state.index,
                instances: self
                    .view()
                    .endpoints()
                    .map(|e| Instance::clone(e.instance()))
                    .collect(),
            }
        };
        let path = path.clone();
        let written = tokio::task::spawn_blocking(move || write_atomically(&path, &cached)).await;
        if let Ok(Err(e)) | Err(e) = written.map_err(std::io::Error::other) {
            tracing::warn!(error = %e, "cannot write the cache file");
            self.state().dirty = true;
        }
    }
}

/// Writes `cached` to a temporary file beside `path`, syncs it, and renames it over `path`.
fn write_atomically(path: &std::path::Path, cached: &Cached) -> std::io::Result<()> {
    use std::io::Write;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".{}.{:x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(cached).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename itself is durable once the directory is synced.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The resolver's task: watch, fail over, refresh, confirm emptiness, keep the cache file.
async fn run(shared: Arc<Shared>, http: reqwest::Client) {
    let config = &shared.config;
    let mut server = 0usize;
    let mut failures = 0u32;
    let mut refresh_at = Instant::now() + config.refresh;
    loop {
        let base = config.servers[server % config.servers.len()].trim_end_matches('/');
        // Resume where we are, unless a full refresh is due or we hold nothing from a server.
        let resume = {
            let s = shared.state();
            (s.source == Source::Server && Instant::now() < refresh_at).then_some(s.index)
        };
        if resume.is_none() {
            refresh_at = Instant::now() + config.refresh;
        }
        let connected = std::sync::atomic::AtomicBool::new(false);
        let outcome = watch(&shared, &http, base, resume, refresh_at, &connected).await;
        shared.set_connected(false);
        if connected.load(std::sync::atomic::Ordering::Relaxed) {
            failures = 0; // it worked for a while: the next failover starts afresh
        }
        match outcome {
            Ok(()) => {} // refresh due: reconnect at once, same server
            Err(e) => {
                failures += 1;
                tracing::warn!(server = base, error = %e, "watch failed; trying the next server");
                server += 1;
                let wait = config.backoff.delay(failures);
                // Keep the cache and the empty-hold going while waiting.
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    shared.flush().await;
                    tokio::time::sleep_until(until.min(Instant::now() + Duration::from_secs(1)))
                        .await;
                }
            }
        }
    }
}

/// One watch on one server, until it fails (`Err`) or a refresh is due (`Ok`).
async fn watch(
    shared: &Shared,
    http: &reqwest::Client,
    base: &str,
    resume: Option<u64>,
    refresh_at: Instant,
    connected: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    let config = &shared.config;
    let service = form_urlencoded::byte_serialize(shared.service.as_bytes()).collect::<String>();
    let mut url = format!("{base}/v1/watch?service={service}");
    if let Some(index) = resume {
        url.push_str(&format!("&index={index}"));
    }
    let response = tokio::time::timeout(config.connect_timeout * 2, http.get(&url).send())
        .await
        .map_err(|_| {
            format!(
                "no answer from {base} within {:?}",
                config.connect_timeout * 2
            )
        })?
        .map_err(|e| format!("cannot reach {base}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{base} answered {}", response.status()));
    }
    shared.set_connected(true);
    connected.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut body = response.bytes_stream();
    let mut frames = Splitter::default();
    let mut flush_at = Instant::now() + Duration::from_secs(1);
    let mut idle_at = Instant::now() + config.idle_timeout;
    loop {
        let hold_until = shared.state().held_since.map(|t| t + config.empty_hold);
        let wake = [Some(refresh_at), Some(flush_at), Some(idle_at), hold_until]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(refresh_at);
        tokio::select! {
            chunk = body.next() => {
                let chunk = match chunk {
                    None => return Err(format!("{base} closed the watch")),
                    Some(Err(e)) => return Err(format!("the watch on {base} broke: {e}")),
                    Some(Ok(chunk)) => chunk,
                };
                idle_at = Instant::now() + config.idle_timeout;
                frames.push(&chunk)?;
                let mut applied = false;
                while let Some(frame) = frames.next_frame() {
                    applied = true;
                    let event: WatchEvent = serde_json::from_str(&frame.data)
                        .map_err(|e| format!("{base} sent an unreadable event: {e}"))?;
                    match event {
                        WatchEvent::Snapshot { instances, index, .. } => shared.apply_snapshot(instances, index),
                        WatchEvent::Upsert { index, instance, .. } => shared.apply_change(index, instance, false),
                        WatchEvent::Delete { index, instance, .. } => shared.apply_change(index, instance, true),
                        WatchEvent::Compacted { .. } => shared.state().accept_older = true,
                        // A kind this client does not know (a newer server): skipped.
                        _ => {}
                    }
                }
                if applied {
                    shared.rebuild_ring().await;
                }
            }
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                if now >= refresh_at {
                    return Ok(());
                }
                if now >= idle_at {
                    return Err(format!("{base} was silent for {:?}", config.idle_timeout));
                }
                if now >= flush_at {
                    shared.flush().await;
                    flush_at = now + Duration::from_secs(1);
                }
                if hold_until.is_some_and(|t| now >= t) {
                    confirm_empty(shared, http, base).await;
                }
                // A view left on an earlier ring (a failed rebuild, a confirmed lookup) is
                // rebuilt on the next tick.
                shared.rebuild_ring().await;
            }
        }
    }
}

/// An update would have emptied the view: ask `base` for the service afresh. Still nothing
/// healthy: the empty view is published. Something healthy: that snapshot is applied. No
/// answer: the old view stays, and the hold goes on.
async fn confirm_empty(shared: &Shared, http: &reqwest::Client, base: &str) {
    let service = form_urlencoded::byte_serialize(shared.service.as_bytes()).collect::<String>();
    let url = format!("{base}/v1/services/{service}?status=any");
    let answer = async {
        let r = http.get(&url).send().await.ok()?;
        if !r.status().is_success() {
            return None;
        }
        serde_json::from_slice::<muster_proto::ServiceInstances>(&r.bytes().await.ok()?).ok()
    };
    let Ok(Some(fresh)) = tokio::time::timeout(shared.config.connect_timeout * 2, answer).await
    else {
        shared.state().held_since = Some(Instant::now()); // try again after another hold
        return;
    };
    let mut state = shared.state();
    if fresh.index >= state.index {
        state.replace(fresh.instances, fresh.index);
    }
    tracing::info!(service = %shared.service, "an empty update was confirmed by a fresh lookup");
    shared.publish(&mut state, true);
}

#[cfg(test)]
mod tests;
