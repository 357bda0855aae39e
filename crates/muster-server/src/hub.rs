//! What lookups, blocking queries and watches read: one view per service, replaced once per
//! change, encoded once when first read and shared by every reader, plus each service's recent
//! events.
//!
//! ```text
//!   apply batch ──▶ Hub::applied ──▶ per touched service: swap in a new ServiceView (ArcSwap)
//!                                     carrying the old one's JSON for what did not change,
//!                                     append the events to its history (their frames at once
//!                                     if it has watchers), bump its index (watch channel)
//!   GET /v1/services/x ──▶ slot(x).view.load() ──▶ its answer, encoded on the first read
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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use arc_swap::ArcSwap;
use bytes::{BufMut, Bytes, BytesMut};
use muster_core::{Event, EventKind, Instance, Registry, Status};
use muster_proto::WatchEvent;
use tokio::sync::watch;

/// Most empty services (all instances gone) kept for their history and waiters.
const MAX_EMPTY_SLOTS: usize = 4096;

thread_local! {
    /// Where instances are encoded before their JSON is copied into an allocation of its size.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An instance's JSON, exactly sized.
fn encode(inst: &Instance) -> Bytes {
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        // An Instance holds only strings, numbers and maps with string keys: encoding cannot
        // fail.
        if serde_json::to_writer(&mut *scratch, inst).is_err() {
            scratch.clear();
        }
        Bytes::from(scratch.to_vec())
    })
}

/// One service's instances, encoded the first time the view is read or watched, once per
/// change. A service that nobody reads or watches holds no JSON at all; one that is read holds
/// each instance's JSON once: inside its cached answer (or beside it, for the instances the
/// answer leaves out).
pub struct ServiceView {
    /// Service name.
    pub service: Arc<str>,
    /// The service's modify index.
    pub index: u64,
    /// Every instance (any status), ordered by id.
    pub instances: Instances,
    /// Instances by status, indexed like [`Status::ALL`].
    pub statuses: [u64; 6],
    /// The JSON, by position, of the instances that did not change since the previous view,
    /// when that view had been encoded (empty otherwise); taken by this view's encoding, so an
    /// unchanged instance is never encoded again.
    carried: Mutex<Vec<Option<Bytes>>>,
    encoded: OnceLock<Encoded>,
    snapshot_frame: OnceLock<Bytes>,
    /// The gRPC messages of the instances, one after the other, and where each ends.
    protobuf: OnceLock<(Bytes, Vec<usize>)>,
}

/// A view's JSON, in one buffer: the default answer (its HEALTHY instances), then the JSON of
/// the instances it leaves out; each instance's JSON is a span of it (8 bytes each, not a
/// 32-byte handle).
struct Encoded {
    buf: Bytes,
    /// The default answer's length: `buf[..answer_len]`.
    answer_len: usize,
    /// Each instance's JSON in `buf`, by position: [`Span`]s.
    spans: Vec<Span>,
}

/// Where an instance's JSON lies in its view's buffer, in 8 bytes: the start in the low 40
/// bits (1 TiB), the length in the high 24 (16 MiB; the field limits keep an instance's JSON
/// far below that).
#[derive(Clone, Copy, Default)]
struct Span(u64);

impl Span {
    fn new(range: std::ops::Range<usize>) -> Span {
        let start = (range.start as u64).min((1 << 40) - 1);
        let len = (range.len() as u64).min((1 << 24) - 1);
        Span(len << 40 | start)
    }

    /// The range, within `len` bytes whatever the span holds.
    fn range(self, len: usize) -> std::ops::Range<usize> {
        let start = usize::try_from(self.0 & ((1 << 40) - 1)).unwrap_or(usize::MAX);
        let end = start.saturating_add(usize::try_from(self.0 >> 40).unwrap_or(0));
        start.min(len)..end.min(len)
    }
}

impl Encoded {
    fn healthy_body(&self) -> Bytes {
        self.buf.slice(..self.answer_len)
    }

    fn range(&self, k: usize) -> std::ops::Range<usize> {
        self.spans[k].range(self.buf.len())
    }

    /// The JSON of the instance at `k`, shared.
    fn json(&self, k: usize) -> Bytes {
        self.buf.slice(self.range(k))
    }

    /// The JSON of the instance at `k`, borrowed.
    fn json_ref(&self, k: usize) -> &[u8] {
        &self.buf[self.range(k)]
    }
}

fn status_slot(s: Status) -> usize {
    Status::ALL.iter().position(|x| *x == s).unwrap_or(0)
}

impl ServiceView {
    fn new(service: Arc<str>, index: u64, instances: Vec<Arc<Instance>>) -> Self {
        let mut statuses = [0; 6];
        for i in &instances {
            statuses[status_slot(i.status)] += 1;
        }
        let instances = Instances::from_sorted(instances);
        Self::with_counts(service, index, instances, statuses, Vec::new())
    }

    fn with_counts(
        service: Arc<str>,
        index: u64,
        instances: Instances,
        statuses: [u64; 6],
        carried: Vec<Option<Bytes>>,
    ) -> Self {
        ServiceView {
            service,
            index,
            instances,
            statuses,
            carried: Mutex::new(carried),
            encoded: OnceLock::new(),
            snapshot_frame: OnceLock::new(),
            protobuf: OnceLock::new(),
        }
    }

    /// The JSON of every instance and the default answer, built on first use: carried JSON
    /// is reused, the rest encoded; all of it is then copied into one buffer (so nothing of
    /// the previous view's buffer stays pinned).
    fn encoded(&self) -> &Encoded {
        self.encoded.get_or_init(|| {
            let carried =
                std::mem::take(&mut *self.carried.lock().unwrap_or_else(|p| p.into_inner()));
            let json: Vec<Bytes> = self
                .instances
                .iter()
                .enumerate()
                .map(|(k, inst)| match carried.get(k) {
                    Some(Some(same)) => same.clone(),
                    _ => encode(inst),
                })
                .collect();
            drop(carried);
            let statuses: Vec<Status> = self.instances.iter().map(|i| i.status).collect();
            let healthy = |k: &usize| statuses[*k] == Status::Healthy;
            let kept: Vec<usize> = (0..json.len()).filter(healthy).collect();
            let left_out: usize = (0..json.len())
                .filter(|k| !healthy(k))
                .map(|k| json[k].len())
                .sum();
            let (mut buf, ranges) = self.assemble(b"{", kept.iter().map(|&k| &json[k]), left_out);
            let answer_len = buf.len();
            let mut spans = vec![Span::default(); json.len()];
            for (&k, range) in kept.iter().zip(ranges) {
                spans[k] = Span::new(range);
            }
            for (k, part) in json.iter().enumerate() {
                if !healthy(&k) {
                    let start = buf.len();
                    buf.put_slice(part);
                    spans[k] = Span::new(start..buf.len());
                }
            }
            Encoded {
                buf: buf.freeze(),
                answer_len,
                spans,
            }
        })
    }

    /// `{"service":..,"index":..,"instances":[..]}` of `parts` (`head` is its opening, `{` or
    /// `{` and fields before these), and where each part lies in it; with room for `extra`
    /// bytes after it.
    fn assemble<P: AsRef<[u8]>>(
        &self,
        head: &[u8],
        parts: impl Iterator<Item = P> + Clone,
        extra: usize,
    ) -> (BytesMut, Vec<std::ops::Range<usize>>) {
        let len: usize = parts.clone().map(|j| j.as_ref().len() + 1).sum();
        let mut out = BytesMut::with_capacity(64 + head.len() + self.service.len() + len + extra);
        out.put_slice(head);
        out.put_slice(b"\"service\":");
        put_json_str(&mut out, &self.service);
        out.put_slice(format!(",\"index\":{},\"instances\":[", self.index).as_bytes());
        let mut ranges = Vec::new();
        for (i, json) in parts.enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            let start = out.len();
            out.put_slice(json.as_ref());
            ranges.push(start..out.len());
        }
        out.put_slice(b"]}");
        (out, ranges)
    }

    /// `{"service":..,"index":..,"instances":[..]}` of the HEALTHY instances: the default lookup,
    /// built at most once per change.
    pub fn healthy_body(&self) -> Bytes {
        self.encoded().healthy_body()
    }

    /// The lookup body of the instances `keep` accepts.
    pub fn body(&self, keep: impl Fn(&Instance) -> bool) -> Bytes {
        let encoded = self.encoded();
        let parts = self
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| keep(i))
            .map(|(k, _)| encoded.json_ref(k));
        self.assemble(b"{", parts, 0).0.freeze()
    }

    /// The SSE `snapshot` frame: every instance, any status.
    pub fn snapshot_frame(&self) -> Bytes {
        self.snapshot_frame
            .get_or_init(|| {
                let encoded = self.encoded();
                let parts = (0..self.instances.len()).map(|k| encoded.json_ref(k));
                let (data, _) = self.assemble(b"{\"type\":\"snapshot\",", parts, 0);
                sse_frame("snapshot", self.index, &data)
            })
            .clone()
    }

    /// Each instance's message in the gRPC API, by position, written by `encode` (which is
    /// always the same function: only the first call's is used) on first use, one after the
    /// other in one buffer. Not carried over between views: a service read over gRPC is
    /// encoded again once per change.
    pub fn protobuf(
        &self,
        encode: impl Fn(&Instance, &mut BytesMut),
    ) -> impl ExactSizeIterator<Item = Bytes> + '_ {
        let (buf, ends) = self.protobuf.get_or_init(|| {
            let mut buf = BytesMut::new();
            let mut ends = Vec::with_capacity(self.instances.len());
            for inst in self.instances.iter() {
                encode(inst, &mut buf);
                ends.push(buf.len());
            }
            (buf.freeze(), ends)
        });
        (0..ends.len()).map(move |k| buf.slice(k.checked_sub(1).map_or(0, |p| ends[p])..ends[k]))
    }

    /// Instances by zone (`""` for none); computed on demand.
    pub fn zones(&self) -> BTreeMap<String, u64> {
        let mut zones = BTreeMap::new();
        for i in self.instances.iter() {
            *zones.entry(i.spec.zone().to_string()).or_insert(0) += 1;
        }
        zones
    }

    /// The JSON of the instance at `k`, if the view was encoded.
    #[cfg(test)]
    pub(crate) fn json_at(&self, k: usize) -> Option<Bytes> {
        self.encoded.get().map(|e| e.json(k))
    }

    /// What the view carries over from the previous one (until it is encoded).
    #[cfg(test)]
    pub(crate) fn carried_json(&self) -> Vec<Option<Bytes>> {
        self.carried
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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

/// One event kept for watchers: the instance as the event left it (shared with the registry
/// and the views), so history costs a few words per event. Its frame is encoded when it is
/// sent, or once per batch for the watchers a service has at the time (`History::recent`).
struct Kept {
    index: u64,
    kind: EventKind,
    instance: Arc<Instance>,
}

#[derive(Default)]
struct History {
    events: VecDeque<Kept>,
    /// Highest index that may be missing from `events` (trimmed, or before the slot existed).
    trimmed_through: u64,
    /// The frames of the last batch's events (the last `recent.len()` of `events`), assembled
    /// once when the service has watchers (they all want exactly these); replaced by the next
    /// batch. Never longer than `events`.
    recent: Vec<Bytes>,
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

    /// Frames with `after < index <= upto`; `Compacted` when some of them may be missing.
    pub(crate) fn since(&self, after: u64, upto: u64, floor: u64) -> Since {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if after < history.trimmed_through || after < floor {
            return Since::Compacted;
        }
        let start = history.events.partition_point(|e| e.index <= after);
        // Frames of the last batch are shared; older ones are assembled here, outside the lock.
        // `recent` holds the frames of the last `recent.len()` events, in order (several events
        // can share an index, so they are matched by position).
        let first_recent = history.events.len() - history.recent.len();
        /// A frame ready to share, or what to assemble one from.
        type Wanted = Result<(u64, Bytes), (u64, EventKind, Arc<Instance>)>;
        let wanted: Vec<Wanted> = history
            .events
            .range(start..)
            .take_while(|e| e.index <= upto)
            .enumerate()
            .map(|(k, e)| match (start + k).checked_sub(first_recent) {
                Some(r) => Ok((e.index, history.recent[r].clone())),
                None => Err((e.index, e.kind, e.instance.clone())),
            })
            .collect();
        drop(history);
        let service = self.view.load().service.clone();
        Since::Events(
            wanted
                .into_iter()
                .map(|w| {
                    w.unwrap_or_else(|(index, kind, i)| {
                        (index, event_frame(&service, kind, index, &encode(&i)))
                    })
                })
                .collect(),
        )
    }
}

/// Creating one more slot for a service without instances would pass the bound.
#[derive(Debug, thiserror::Error)]
#[error(
    "too many services without instances are being watched (at most {MAX_EMPTY_SLOTS} slots); try again later"
)]
pub struct HubFull;

/// Where one watcher of one service stands.
pub(crate) struct Cursor {
    pub(crate) slot: Arc<Slot>,
    pub(crate) rx: watch::Receiver<u64>,
    /// `Some(i)`: the watcher has every change of this service through index `i`.
    /// `None`: it needs a snapshot.
    sent: Option<u64>,
}

impl Cursor {
    /// A cursor that starts with a snapshot.
    pub(crate) fn snapshot_first(slot: Arc<Slot>, rx: watch::Receiver<u64>) -> Self {
        Cursor {
            slot,
            rx,
            sent: None,
        }
    }

    /// A cursor that starts with the events at or after `index` (several events can share an
    /// index, so a resume repeats those at `index`; events carry full state, so a repeat is
    /// harmless).
    pub(crate) fn resume_at(slot: Arc<Slot>, rx: watch::Receiver<u64>, index: u64) -> Self {
        Cursor {
            slot,
            rx,
            sent: Some(index.saturating_sub(1)),
        }
    }
}

/// Every service's slot.
pub struct Hub {
    slots: RwLock<HashMap<Arc<str>, Arc<Slot>>>,
    /// Index of the state recovered at start or installed from a snapshot: history before it
    /// is not kept.
    floor: AtomicU64,
    /// Highest view index of an evicted slot: a slot created later may lack events up to it.
    evicted_through: AtomicU64,
    /// Slots whose view holds no instance.
    empty: AtomicUsize,
    registry_index: AtomicU64,
    history_len: usize,
}

impl Hub {
    /// An empty hub keeping `history_len` events per service.
    pub fn new(history_len: usize) -> Self {
        Hub {
            slots: RwLock::default(),
            floor: AtomicU64::new(0),
            evicted_through: AtomicU64::new(0),
            empty: AtomicUsize::new(0),
            registry_index: AtomicU64::new(0),
            history_len: history_len.max(1),
        }
    }

    /// The registry index as of the last applied batch. Every frame and view of that batch is
    /// published before it.
    pub fn registry_index(&self) -> u64 {
        self.registry_index.load(Ordering::Acquire)
    }

    /// Lowest index from which history is complete.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    fn read_slots(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Arc<Slot>>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_slots(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Arc<str>, Arc<Slot>>> {
        self.slots.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A service's slot, if it has one.
    pub fn slot(&self, service: &str) -> Option<Arc<Slot>> {
        self.read_slots().get(service).cloned()
    }

    /// A service's slot and a subscription to its index, taken together so that eviction (which
    /// spares slots with subscribers) cannot remove the slot in between. A service without one
    /// gets an empty slot at the current registry index, so the waiter is woken when it appears;
    /// such slots are bounded.
    pub fn subscribe(&self, service: &str) -> Result<(Arc<Slot>, watch::Receiver<u64>), HubFull> {
        if let Some(slot) = self.read_slots().get(service) {
            let rx = slot.index.subscribe();
            return Ok((slot.clone(), rx));
        }
        let mut slots = self.write_slots();
        if !slots.contains_key(service) && self.empty.load(Ordering::Acquire) >= MAX_EMPTY_SLOTS {
            self.evict_empty(&mut slots);
            if self.empty.load(Ordering::Acquire) >= MAX_EMPTY_SLOTS {
                return Err(HubFull);
            }
        }
        let slot = self.slot_in(&mut slots, service);
        let rx = slot.index.subscribe();
        Ok((slot, rx))
    }

    /// The slot of `service` in `slots`, created empty if missing.
    fn slot_in(&self, slots: &mut HashMap<Arc<str>, Arc<Slot>>, service: &str) -> Arc<Slot> {
        if let Some(slot) = slots.get(service) {
            return slot.clone();
        }
        self.empty.fetch_add(1, Ordering::AcqRel);
        let slot = new_slot(
            Arc::from(service),
            self.registry_index(),
            self.evicted_through.load(Ordering::Acquire),
        );
        slots.insert(Arc::from(service), slot.clone());
        slot
    }

    /// Views of every service holding at least one instance, ordered by name.
    pub fn views(&self) -> Vec<Arc<ServiceView>> {
        let slots = self.read_slots();
        let mut views: Vec<_> = slots
            .values()
            .map(|s| s.view())
            .filter(|v| !v.instances.is_empty())
            .collect();
        views.sort_by(|a, b| a.service.cmp(&b.service));
        views
    }

    /// Queues, for every cursor, what it lacks up to the published registry index: first the
    /// events of all services merged in index order, then `compacted` notices and snapshots. A
    /// snapshot newer than the published index waits for the next wake-up (which is certain: its
    /// slot is notified after the index is published), so ids never run ahead of what was sent.
    pub(crate) fn catch_up(&self, cursors: &mut [Cursor], out: &mut VecDeque<Bytes>) {
        let upto = self.registry_index();
        let floor = self.floor();
        let mut merged: Vec<(u64, usize, Bytes)> = Vec::new();
        let mut tail = Vec::new();
        for (k, c) in cursors.iter_mut().enumerate() {
            if let Some(after) = c.sent {
                match c.slot.since(after, upto, floor) {
                    Since::Events(frames) => {
                        if let Some((last, _)) = frames.last() {
                            c.sent = Some(*last);
                        }
                        merged.extend(frames.into_iter().map(|(i, f)| (i, k, f)));
                    }
                    Since::Compacted => {
                        let notice = WatchEvent::Compacted {
                            index: after + 1,
                            oldest: floor,
                        };
                        tail.push(sse_frame(
                            "compacted",
                            after + 1,
                            &serde_json::to_vec(&notice).unwrap_or_default(),
                        ));
                        c.sent = None;
                    }
                }
            }
            if c.sent.is_none() {
                let view = c.slot.view();
                if view.index <= upto {
                    c.sent = Some(view.index);
                    tail.push(view.snapshot_frame());
                }
            }
        }
        merged.sort_by_key(|(i, k, _)| (*i, *k));
        out.extend(merged.into_iter().map(|(_, _, f)| f));
        out.extend(tail);
    }

    /// Takes in one applied batch. Returns the services whose views changed.
    ///
    /// Views are updated from the batch's events alone (each event carries the instance after
    /// the change), so the cost is the events plus, per touched service, a copy of its list of
    /// chunks and of the chunks the batch changes (and of all its JSON handles, when the old
    /// view was read), never a walk of the registry. Waiters are woken only after every view
    /// and frame of the batch is in place and the registry index is published.
    pub fn applied(&self, registry: &Registry, events: &[Event]) -> Vec<Arc<ServiceView>> {
        let mut by_service: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
        for ev in events {
            by_service
                .entry(ev.instance.spec.service().as_str())
                .or_default()
                .push(ev);
        }
        let mut changed = Vec::with_capacity(by_service.len());
        let mut notify = Vec::with_capacity(by_service.len());
        for (service, evs) in by_service {
            let slot = match self.slot(service) {
                Some(slot) => slot,
                None => self.slot_in(&mut self.write_slots(), service),
            };
            let old = slot.view();
            // The old view's chunks, shared: only those this batch changes are copied.
            let mut instances = old.instances.clone();
            let mut statuses = old.statuses;
            // The JSON of the old view, to carry over for what this batch leaves unchanged:
            // encoded if the old view was read, or what it carried itself if it was not (taken:
            // the old view is no longer current, and a late reader of it encodes afresh).
            let mut carried: Vec<Option<Bytes>> = match old.encoded.get() {
                Some(e) => (0..e.spans.len()).map(|k| Some(e.json(k))).collect(),
                None => std::mem::take(&mut *old.carried.lock().unwrap_or_else(|p| p.into_inner())),
            };
            let carry = !carried.is_empty();
            let mut kept = Vec::with_capacity(evs.len());
            for ev in evs {
                kept.push(Kept {
                    index: ev.index,
                    kind: ev.kind,
                    instance: ev.instance.clone(),
                });
                match ev.kind {
                    EventKind::Upsert => {
                        statuses[status_slot(ev.instance.status)] += 1;
                        match instances.upsert(ev.instance.clone()) {
                            Upserted::Replaced(p, before) => {
                                statuses[status_slot(before.status)] -= 1;
                                if carry {
                                    carried[p] = None;
                                }
                            }
                            Upserted::Inserted(p) => {
                                if carry {
                                    carried.insert(p, None);
                                }
                            }
                        }
                    }
                    EventKind::Delete => {
                        if let Some((p, gone)) =
                            instances.remove(ev.instance.spec.instance_id.as_str())
                        {
                            statuses[status_slot(gone.status)] -= 1;
                            if carry {
                                carried.remove(p);
                            }
                        }
                    }
                }
            }
            let index = registry.service_index(service).unwrap_or(registry.index());
            {
                let mut history = slot.history.lock().unwrap_or_else(|p| p.into_inner());
                history.recent.clear();
                if slot.index.receiver_count() > 0 && kept.len() <= self.history_len {
                    history.recent = kept
                        .iter()
                        .map(|e| event_frame(service, e.kind, e.index, &encode(&e.instance)))
                        .collect();
                }
                history.events.extend(kept);
                while history.events.len() > self.history_len {
                    if let Some(e) = history.events.pop_front() {
                        history.trimmed_through = e.index;
                    }
                }
            }
            match (old.instances.is_empty(), instances.is_empty()) {
                (true, false) => self.empty.fetch_sub(1, Ordering::AcqRel),
                (false, true) => self.empty.fetch_add(1, Ordering::AcqRel),
                _ => 0,
            };
            let view = Arc::new(ServiceView::with_counts(
                Arc::from(service),
                index,
                instances,
                statuses,
                carried,
            ));
            slot.view.store(view.clone());
            notify.push((slot, index));
            changed.push(view);
        }
        self.registry_index
            .store(registry.index(), Ordering::Release);
        for (slot, index) in notify {
            slot.index.send_replace(index);
        }
        changed
    }

    /// The whole registry was replaced: rebuild every view, forget history, and wake everyone.
    pub fn restored(&self, registry: &Registry) {
        let index = registry.index();
        let mut slots = self.write_slots();
        for name in registry.services() {
            self.slot_in(&mut slots, name);
        }
        let mut empty = 0;
        for (name, slot) in slots.iter() {
            let instances: Vec<_> = registry.service_instances(name).cloned().collect();
            empty += usize::from(instances.is_empty());
            let svc_index = registry.service_index(name).unwrap_or(index);
            *slot.history.lock().unwrap_or_else(|p| p.into_inner()) = History {
                events: VecDeque::new(),
                trimmed_through: index,
                recent: Vec::new(),
            };
            slot.view.store(Arc::new(ServiceView::new(
                name.clone(),
                svc_index,
                instances,
            )));
        }
        self.empty.store(empty, Ordering::Release);
        self.floor.store(index, Ordering::Release);
        self.registry_index.store(index, Ordering::Release);
        for slot in slots.values() {
            // The channel always carries the view's index: a waiter woken by it must find a
            // view with that index, or it would ask again at once.
            slot.index.send_replace(slot.view.load().index);
        }
    }

    /// Drops empty slots nobody is subscribed to; a slot created for one of those services
    /// later starts with history complete only from the highest evicted index.
    fn evict_empty(&self, slots: &mut HashMap<Arc<str>, Arc<Slot>>) {
        let mut raised = 0;
        let mut evicted = 0;
        slots.retain(|_, slot| {
            let view = slot.view.load();
            let keep = !view.instances.is_empty() || slot.index.receiver_count() > 0;
            if !keep {
                raised = raised.max(view.index);
                evicted += 1;
            }
            keep
        });
        self.empty.fetch_sub(evicted, Ordering::AcqRel);
        self.evicted_through.fetch_max(raised, Ordering::AcqRel);
    }
}

fn new_slot(name: Arc<str>, index: u64, trimmed_through: u64) -> Arc<Slot> {
    Arc::new(Slot {
        view: ArcSwap::from_pointee(ServiceView::new(name, index, Vec::new())),
        index: watch::Sender::new(index),
        history: Mutex::new(History {
            events: VecDeque::new(),
            trimmed_through,
            recent: Vec::new(),
        }),
    })
}

/// The SSE frame of one change.
fn event_frame(service: &str, kind: EventKind, index: u64, json: &[u8]) -> Bytes {
    let kind = match kind {
        EventKind::Upsert => "upsert",
        EventKind::Delete => "delete",
    };
    // The same bytes as `sse_frame(kind, index, data)`, built in one buffer: this runs for
    // every watcher an event reaches.
    let mut out = BytesMut::with_capacity(json.len() + service.len() + 120);
    out.put_slice(
        format!("event: {kind}\nid: {index}\ndata: {{\"type\":\"{kind}\",\"service\":").as_bytes(),
    );
    put_json_str(&mut out, service);
    out.put_slice(format!(",\"index\":{index},\"instance\":").as_bytes());
    out.put_slice(json);
    out.put_slice(b"}\n\n");
    out.freeze()
}

mod instances;
pub use instances::Instances;
use instances::Upserted;

#[cfg(test)]
mod tests;
