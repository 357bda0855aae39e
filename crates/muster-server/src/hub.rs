//! What lookups, blocking queries and watches read: one encoded view per service, rebuilt once
//! per change and shared by every reader, plus each service's recent events.
//!
//! ```text
//!   apply batch ──▶ Hub::applied ──▶ per touched service: encode changed instances once,
//!                                     swap in a new ServiceView (ArcSwap), append SSE frames
//!                                     to its history, bump its index (watch channel)
//!   GET /v1/services/x ──▶ slot(x).view.load() ──▶ pre-encoded bytes, no serialization
//!   blocking query / SSE ──▶ slot(x).index.subscribe() ──▶ woken only by changes to x
//! ```
//!
//! # Correctness
//!
//! - A service's index only moves forward, and its waiters are woken only by its own changes.
//! - History frames are appended before the view is swapped, and readers take their position
//!   from the view's index, so a reader that snapshots a view and then reads history from that
//!   index misses nothing and sees nothing twice.
//! - `floor` is the lowest index from which history is complete: events at or below it may have
//!   been dropped (restore from snapshot, eviction). A resume from below it is answered with
//!   `compacted` and a fresh snapshot.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use arc_swap::ArcSwap;
use bytes::{BufMut, Bytes, BytesMut};
use muster_core::{Event, EventKind, Instance, Registry, Status};
use tokio::sync::watch;

/// Most empty services (all instances gone) kept for their history and waiters.
const MAX_EMPTY_SLOTS: usize = 4096;

/// One instance with its JSON, encoded once when it changed.
pub struct Encoded {
    /// The instance.
    pub instance: Arc<Instance>,
    /// Its JSON.
    pub json: Bytes,
}

/// One service's instances, encoded once.
pub struct ServiceView {
    /// Service name.
    pub service: Arc<str>,
    /// The service's modify index.
    pub index: u64,
    /// Every instance (any status), ordered by id.
    pub instances: Vec<Arc<Encoded>>,
    /// Instances by status, indexed like [`Status::ALL`].
    pub statuses: [u64; 6],
    healthy_body: OnceLock<Bytes>,
    snapshot_frame: OnceLock<Bytes>,
}

fn status_slot(s: Status) -> usize {
    Status::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

impl ServiceView {
    fn new(service: Arc<str>, index: u64, instances: Vec<Arc<Encoded>>) -> Self {
        let mut statuses = [0; 6];
        for e in &instances {
            statuses[status_slot(e.instance.status)] += 1;
        }
        Self::with_counts(service, index, instances, statuses)
    }

    fn with_counts(
        service: Arc<str>,
        index: u64,
        instances: Vec<Arc<Encoded>>,
        statuses: [u64; 6],
    ) -> Self {
        ServiceView {
            service,
            index,
            instances,
            statuses,
            healthy_body: OnceLock::new(),
            snapshot_frame: OnceLock::new(),
        }
    }

    /// `{"service":..,"index":..,"instances":[..]}` of the HEALTHY instances: the default lookup,
    /// built at most once per change.
    pub fn healthy_body(&self) -> Bytes {
        self.healthy_body
            .get_or_init(|| self.body(|i| i.status == Status::Healthy))
            .clone()
    }

    /// The lookup body of the instances `keep` accepts.
    pub fn body(&self, keep: impl Fn(&Instance) -> bool) -> Bytes {
        let mut out = BytesMut::with_capacity(
            64 + self
                .instances
                .iter()
                .map(|e| e.json.len() + 1)
                .sum::<usize>(),
        );
        out.put_slice(b"{\"service\":");
        put_json_str(&mut out, &self.service);
        out.put_slice(format!(",\"index\":{},\"instances\":[", self.index).as_bytes());
        let mut first = true;
        for e in &self.instances {
            if keep(&e.instance) {
                if !first {
                    out.put_u8(b',');
                }
                first = false;
                out.put_slice(&e.json);
            }
        }
        out.put_slice(b"]}");
        out.freeze()
    }

    /// The SSE `snapshot` frame: every instance, any status.
    pub fn snapshot_frame(&self) -> Bytes {
        self.snapshot_frame
            .get_or_init(|| {
                let mut data = BytesMut::new();
                data.put_slice(b"{\"type\":\"snapshot\",\"service\":");
                put_json_str(&mut data, &self.service);
                data.put_slice(format!(",\"index\":{},\"instances\":[", self.index).as_bytes());
                for (i, e) in self.instances.iter().enumerate() {
                    if i > 0 {
                        data.put_u8(b',');
                    }
                    data.put_slice(&e.json);
                }
                data.put_slice(b"]}");
                sse_frame("snapshot", self.index, &data)
            })
            .clone()
    }

    /// Instances by zone (`""` for none); computed on demand.
    pub fn zones(&self) -> BTreeMap<String, u64> {
        let mut zones = BTreeMap::new();
        for e in &self.instances {
            *zones.entry(e.instance.spec.zone.clone()).or_insert(0) += 1;
        }
        zones
    }
}

fn put_json_str(out: &mut BytesMut, s: &str) {
    // Service names are DNS labels, but encode properly anyway.
    out.put_slice(
        serde_json::to_string(s)
            .unwrap_or_else(|_| "\"\"".into())
            .as_bytes(),
    );
}

/// An SSE frame: `event: <name>\nid: <index>\ndata: <json>\n\n`. JSON never holds a raw newline.
pub(crate) fn sse_frame(event: &str, index: u64, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 40);
    out.put_slice(format!("event: {event}\nid: {index}\ndata: ").as_bytes());
    out.put_slice(data);
    out.put_slice(b"\n\n");
    out.freeze()
}

#[derive(Default)]
struct History {
    frames: VecDeque<(u64, Bytes)>,
    /// Highest index dropped from `frames`.
    trimmed_through: u64,
}

/// What a watcher gets when it asks for a service's events after an index.
pub(crate) enum Since {
    /// The events, in order (possibly none).
    Events(Vec<(u64, Bytes)>),
    /// History no longer reaches back that far.
    Compacted,
}

/// One service's view, wake-up channel and history.
pub struct Slot {
    view: ArcSwap<ServiceView>,
    index: watch::Sender<u64>,
    history: Mutex<History>,
}

impl Slot {
    /// The current view.
    pub fn view(&self) -> Arc<ServiceView> {
        self.view.load_full()
    }

    /// A receiver of this service's modify index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.index.subscribe()
    }

    /// Frames with index greater than `after`.
    pub(crate) fn since(&self, after: u64, floor: u64) -> Since {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if after < history.trimmed_through || after < floor {
            return Since::Compacted;
        }
        let start = history.frames.partition_point(|(i, _)| *i <= after);
        Since::Events(history.frames.range(start..).cloned().collect())
    }
}

/// Every service's slot.
pub struct Hub {
    slots: RwLock<HashMap<Arc<str>, Arc<Slot>>>,
    floor: AtomicU64,
    registry_index: AtomicU64,
    history_len: usize,
}

impl Hub {
    /// An empty hub keeping `history_len` events per service.
    pub fn new(history_len: usize) -> Self {
        Hub {
            slots: RwLock::default(),
            floor: AtomicU64::new(0),
            registry_index: AtomicU64::new(0),
            history_len: history_len.max(1),
        }
    }

    /// The registry index as of the last applied batch.
    pub fn registry_index(&self) -> u64 {
        self.registry_index.load(Ordering::Acquire)
    }

    /// Lowest index from which history is complete.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// A service's slot, if it has one.
    pub fn slot(&self, service: &str) -> Option<Arc<Slot>> {
        self.slots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(service)
            .cloned()
    }

    /// A service's slot, creating an empty one (at the current registry index) for a service
    /// that has none, so a waiter can be woken when it appears.
    pub fn slot_or_create(&self, service: &str) -> Arc<Slot> {
        if let Some(slot) = self.slot(service) {
            return slot;
        }
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let index = self.registry_index();
        slots
            .entry(Arc::from(service))
            .or_insert_with_key(|name| new_slot(name.clone(), index))
            .clone()
    }

    /// Views of every service holding at least one instance, ordered by name.
    pub fn views(&self) -> Vec<Arc<ServiceView>> {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let mut views: Vec<_> = slots
            .values()
            .map(|s| s.view())
            .filter(|v| !v.instances.is_empty())
            .collect();
        views.sort_by(|a, b| a.service.cmp(&b.service));
        views
    }

    /// Takes in one applied batch. Returns the services whose views changed.
    ///
    /// Views are updated from the batch's events alone (each event carries the instance after
    /// the change), so the cost is the events plus one copy of the touched service's entry
    /// list, never a walk of the registry.
    pub fn applied(&self, registry: &Registry, events: &[Event]) -> Vec<Arc<ServiceView>> {
        let mut by_service: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
        for ev in events {
            by_service
                .entry(ev.instance.spec.service.as_str())
                .or_default()
                .push(ev);
        }
        let mut changed = Vec::with_capacity(by_service.len());
        for (service, evs) in by_service {
            let slot = self.slot_or_create(service);
            let old = slot.view();
            let mut instances = old.instances.clone();
            let mut statuses = old.statuses;
            let mut frames = Vec::with_capacity(evs.len());
            for ev in evs {
                let json = encode(&ev.instance);
                frames.push((ev.index, event_frame(service, ev, &json)));
                let id = ev.instance.spec.instance_id.as_str();
                let pos =
                    instances.binary_search_by(|e| e.instance.spec.instance_id.as_str().cmp(id));
                match (ev.kind, pos) {
                    (EventKind::Upsert, Ok(p)) => {
                        statuses[status_slot(instances[p].instance.status)] -= 1;
                        statuses[status_slot(ev.instance.status)] += 1;
                        instances[p] = Arc::new(Encoded {
                            instance: ev.instance.clone(),
                            json,
                        });
                    }
                    (EventKind::Upsert, Err(p)) => {
                        statuses[status_slot(ev.instance.status)] += 1;
                        instances.insert(
                            p,
                            Arc::new(Encoded {
                                instance: ev.instance.clone(),
                                json,
                            }),
                        );
                    }
                    (EventKind::Delete, Ok(p)) => {
                        statuses[status_slot(instances[p].instance.status)] -= 1;
                        instances.remove(p);
                    }
                    (EventKind::Delete, Err(_)) => {}
                }
            }
            let index = registry.service_index(service).unwrap_or(registry.index());
            {
                let mut history = slot.history.lock().unwrap_or_else(|p| p.into_inner());
                history.frames.extend(frames);
                while history.frames.len() > self.history_len {
                    if let Some((i, _)) = history.frames.pop_front() {
                        history.trimmed_through = i;
                    }
                }
            }
            let view = Arc::new(ServiceView::with_counts(
                Arc::from(service),
                index,
                instances,
                statuses,
            ));
            slot.view.store(view.clone());
            slot.index.send_replace(index);
            changed.push(view);
        }
        self.registry_index
            .store(registry.index(), Ordering::Release);
        self.evict_empty();
        changed
    }

    /// The whole registry was replaced: rebuild every view, forget history, and wake everyone.
    pub fn restored(&self, registry: &Registry) {
        let index = registry.index();
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        for name in registry.services() {
            slots
                .entry(Arc::from(name))
                .or_insert_with_key(|n| new_slot(n.clone(), index));
        }
        for (name, slot) in slots.iter() {
            let instances = registry
                .service_instances(name)
                .map(|i| {
                    Arc::new(Encoded {
                        instance: i.clone(),
                        json: encode(i),
                    })
                })
                .collect();
            let svc_index = registry.service_index(name).unwrap_or(index);
            *slot.history.lock().unwrap_or_else(|p| p.into_inner()) = History::default();
            slot.view.store(Arc::new(ServiceView::new(
                name.clone(),
                svc_index,
                instances,
            )));
            // The channel always carries the view's index: a waiter woken by it must find a
            // view with that index, or it would ask again at once.
            slot.index.send_replace(svc_index);
        }
        self.floor.store(index, Ordering::Release);
        self.registry_index.store(index, Ordering::Release);
    }

    fn evict_empty(&self) {
        let empty = {
            let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
            slots
                .values()
                .filter(|s| s.view.load().instances.is_empty())
                .count()
        };
        if empty <= MAX_EMPTY_SLOTS {
            return;
        }
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let mut raised = self.floor();
        slots.retain(|_, slot| {
            let view = slot.view.load();
            let keep = !view.instances.is_empty() || slot.index.receiver_count() > 0;
            if !keep {
                raised = raised.max(view.index);
            }
            keep
        });
        self.floor.fetch_max(raised, Ordering::AcqRel);
    }
}

fn new_slot(name: Arc<str>, index: u64) -> Arc<Slot> {
    Arc::new(Slot {
        view: ArcSwap::from_pointee(ServiceView::new(name, index, Vec::new())),
        index: watch::Sender::new(index),
        history: Mutex::default(),
    })
}

/// The SSE frame of one change.
fn event_frame(service: &str, ev: &Event, json: &[u8]) -> Bytes {
    let kind = match ev.kind {
        EventKind::Upsert => "upsert",
        EventKind::Delete => "delete",
    };
    let mut data = BytesMut::with_capacity(json.len() + 80);
    data.put_slice(format!("{{\"type\":\"{kind}\",\"service\":").as_bytes());
    put_json_str(&mut data, service);
    data.put_slice(format!(",\"index\":{},\"instance\":", ev.index).as_bytes());
    data.put_slice(json);
    data.put_u8(b'}');
    sse_frame(kind, ev.index, &data)
}

fn encode(inst: &Instance) -> Bytes {
    // An Instance holds only strings, numbers and maps with string keys: encoding cannot fail.
    Bytes::from(serde_json::to_vec(inst).unwrap_or_default())
}

#[cfg(test)]
mod tests;
