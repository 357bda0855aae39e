//! The Raft log on `muster-store`: the newest entries are kept in memory for reads, every entry
//! is group-committed to redb for durability, and older entries are read back from redb (a
//! lagging follower, a restart re-applying the log).
//!
//! # Correctness
//!
//! - `append` inserts entries into the in-memory tail before it returns (openraft requires them
//!   to be readable at once) and reports them flushed only from the store's commit callback, after
//!   fsync. The store commits submissions in order, so a flush report covers every earlier write.
//! - An entry leaves the in-memory tail only once it is durable (readable from redb), and the
//!   tail never loses its newest entry; after a truncation empties it, it is reloaded from redb.
//! - `save_vote`, `truncate_after` and `purge` wait for their write to be durable before they
//!   return. `save_committed` does not wait, and writes at most one commit point per
//!   [`COMMIT_POINT_EVERY`] (the newest when it is written): the write is submitted after the
//!   entries it covers, so the store commits it behind them, and a lost or older commit point
//!   only makes a restart re-apply from an earlier point (openraft takes the snapshot's point
//!   when the stored one is older). At shutdown `close` writes a pending one at once.
//! - The purge point is persisted as its own value, since openraft may purge past the last entry
//!   after installing a snapshot.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use muster_store::{Store, Write};
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};

use super::{TypeConfig, durable, io_err};

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;
type Vote = VoteOf<TypeConfig>;

const KEY_VOTE: &str = "raft.vote";
const KEY_COMMITTED: &str = "raft.committed";
const KEY_PURGED: &str = "raft.purged";
const KEY_FORMAT: &str = "format";
/// Version of the on-disk encoding; bump on any incompatible change.
/// `muster-2`: the snapshot is a file beside redb (in `muster-1` it was a redb value, which this
/// build still reads and upgrades in place).
const FORMAT: &[u8] = b"muster-2";
/// The earlier format this build upgrades.
const FORMAT_1: &[u8] = b"muster-1";

/// Entries kept in memory beyond those not yet durable. Memory for the log is then bounded
/// whatever the snapshot interval (it was the whole unpurged log: up to 30,000 entries, about
/// 25 MB at 100,000 instances). The apply and replication to a follower that keeps up read
/// the newest entries; older ones are read from the store. (4096 before: ~1.7 MB more, no
/// measurable gain in registrations.)
const TAIL: usize = 1024;

/// How far the stored commit point may lag. Written after every apply, it was a commit and an
/// fsync of its own that the next log append queued behind: one writer's change took 60-80 µs
/// longer to reach a watcher at the median (`muster-bench run --only watch`).
const COMMIT_POINT_EVERY: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Inner {
    /// The newest entries (all of them not yet durable, and up to `TAIL` more).
    entries: BTreeMap<u64, Entry>,
    /// Highest index known to be durable in the store (none yet).
    durable_through: Option<u64>,
    /// A log write failed: later commits no longer prove that everything before them is
    /// durable (the store keeps committing after a failure), so nothing more leaves memory.
    write_failed: bool,
    purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// A write of the commit point is scheduled (it will take `committed` as it is then).
    commit_point_due: bool,
    /// The node shut down: the commit point was written one last time, and no scheduled write
    /// runs any more.
    closed: bool,
    /// The task that will write the commit point (it holds the store open while it waits).
    commit_point_task: Option<tokio::task::AbortHandle>,
}

impl Inner {
    /// An append through `last` committed (`ok`) or failed. After a failure no later commit
    /// proves anything durable: the store commits past a failed batch.
    fn flushed(&mut self, ok: bool, last: Option<u64>) {
        match (ok, last) {
            (false, _) => self.write_failed = true,
            (true, Some(last)) if !self.write_failed => {
                self.durable_through = Some(self.durable_through.map_or(last, |d| d.max(last)));
            }
            _ => {}
        }
    }

    /// Drops the oldest durable entries beyond the tail.
    fn trim(&mut self) {
        while self.entries.len() > TAIL {
            match self.entries.first_key_value() {
                Some((&first, _)) if self.durable_through.is_some_and(|d| first <= d) => {
                    self.entries.pop_first();
                }
                _ => break,
            }
        }
    }
}

/// Decodes stored log entries.
fn decode_entries(stored: Vec<(u64, Vec<u8>)>) -> Result<Vec<Entry>, String> {
    stored
        .into_iter()
        .map(|(index, bytes)| {
            serde_json::from_slice(&bytes).map_err(|e| format!("corrupt log entry {index}: {e}"))
        })
        .collect()
}

/// The Raft log: an in-memory index in front of the durable store.
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Mutex<Inner>>,
    store: Store,
}

impl LogStore {
    /// The newest commit point if a write of it is due (and no longer due).
    fn take_due_commit_point(&self) -> Option<Vec<u8>> {
        let committed = {
            let mut inner = self.lock();
            if !std::mem::replace(&mut inner.commit_point_due, false) || inner.closed {
                return None;
            }
            inner.committed
        };
        encode(&committed)
            .inspect_err(|e| tracing::error!(error = %e, "could not encode the commit point"))
            .ok()
    }

    /// Submits the newest commit point, if a write of it is due.
    fn write_commit_point(&self) {
        if let Some(bytes) = self.take_due_commit_point() {
            self.store.submit(
                vec![Write::PutMeta(KEY_COMMITTED.into(), bytes)],
                Box::new(|r| {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "could not persist the commit point");
                    }
                }),
            );
        }
    }

    /// At shutdown (after Raft stopped): writes the commit point if a write was pending, and
    /// waits for it, so that a clean restart starts from the latest point; a scheduled write
    /// then does nothing.
    pub(crate) async fn close(&self) {
        let bytes = self.take_due_commit_point();
        {
            let mut inner = self.lock();
            inner.closed = true;
            if let Some(task) = inner.commit_point_task.take() {
                task.abort();
            }
        }
        if let Some(bytes) = bytes {
            let write = vec![Write::PutMeta(KEY_COMMITTED.into(), bytes)];
            if let Err(e) = durable(&self.store, write).await {
                tracing::error!(error = %e, "could not persist the commit point at shutdown");
            }
        }
    }

    /// Loads the log, vote, commit and purge points from the store.
    pub(crate) fn open(store: Store) -> Result<LogStore, String> {
        match store.meta(KEY_FORMAT).map_err(|e| e.to_string())? {
            // New, or written by an earlier build: from now on only a build that knows about
            // the snapshot file may open it (an older one would ignore the file).
            None => store
                .write_blocking(vec![Write::PutMeta(KEY_FORMAT.into(), FORMAT.to_vec())])
                .map_err(|e| e.to_string())?,
            Some(f) if f == FORMAT_1 => store
                .write_blocking(vec![Write::PutMeta(KEY_FORMAT.into(), FORMAT.to_vec())])
                .map_err(|e| e.to_string())?,
            Some(f) if f == FORMAT => {}
            Some(f) => {
                return Err(format!(
                    "data directory holds format {:?}, this build reads {:?}",
                    String::from_utf8_lossy(&f),
                    String::from_utf8_lossy(FORMAT)
                ));
            }
        }
        let decode = |key: &str| -> Result<Option<Vec<u8>>, String> {
            store.meta(key).map_err(|e| e.to_string())
        };
        let mut inner = Inner::default();
        if let Some(v) = decode(KEY_VOTE)? {
            inner.vote =
                Some(serde_json::from_slice(&v).map_err(|e| format!("corrupt vote: {e}"))?);
        }
        if let Some(v) = decode(KEY_COMMITTED)? {
            inner.committed =
                serde_json::from_slice(&v).map_err(|e| format!("corrupt commit point: {e}"))?;
        }
        if let Some(v) = decode(KEY_PURGED)? {
            inner.purged =
                serde_json::from_slice(&v).map_err(|e| format!("corrupt purge point: {e}"))?;
        }
        let floor = inner.purged.map_or(0, |p| p.index + 1);
        let last = store
            .log_bounds()
            .map_err(|e| e.to_string())?
            .map(|(_, last)| last);
        if let Some(last) = last {
            inner.durable_through = Some(last);
            let first = store
                .log_bounds()
                .map_err(|e| e.to_string())?
                .map_or(last, |(first, _)| first);
            let len = store.log_len().map_err(|e| e.to_string())?;
            if len != last - first + 1 {
                return Err(format!(
                    "the raft log has holes: {len} entries between {first} and {last}"
                ));
            }
            let from = floor.max((last + 1).saturating_sub(TAIL as u64));
            let stored = store.read_log(from..).map_err(|e| e.to_string())?;
            for entry in decode_entries(stored)? {
                inner.entries.insert(entry.index(), entry);
            }
        }
        if let Some((first, last)) = inner
            .entries
            .keys()
            .next()
            .zip(inner.entries.keys().next_back())
            && (last - first + 1) as usize != inner.entries.len()
        {
            return Err(format!(
                "the raft log has a hole between {first} and {last}"
            ));
        }
        tracing::debug!(entries = inner.entries.len(), purged = ?inner.purged, "raft log loaded");
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
            store,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in this module; the data is still
        // consistent because every mutation is a single map operation.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, std::io::Error> {
    serde_json::to_vec(v).map_err(io_err)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, std::io::Error> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let (in_memory, first) = {
            let inner = self.lock();
            let first = inner.entries.keys().next().copied();
            let mem: Vec<Entry> = inner
                .entries
                .range(range.clone())
                .map(|(_, e)| e.clone())
                .collect();
            (mem, first)
        };
        // Older than the tail: durable, so in the store (read outside the lock).
        let Some(first) = first.filter(|&f| start < f) else {
            return Ok(in_memory);
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1).min(first),
            Bound::Excluded(&i) => i.min(first),
            Bound::Unbounded => first,
        };
        let mut out =
            decode_entries(self.store.read_log(start..end).map_err(io_err)?).map_err(io_err)?;
        // Only purged entries may be missing (openraft does not ask for them); a hole is a
        // lost write, never skipped over.
        let floor = start.max(self.lock().purged.map_or(0, |p| p.index + 1));
        if out.len() as u64 != end.saturating_sub(floor)
            || out.first().is_some_and(|e| e.index() != floor)
        {
            return Err(io_err(format!(
                "the raft log has a hole: {} entries stored in {start}..{end}",
                out.len()
            )));
        }
        out.extend(in_memory);
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, std::io::Error> {
        Ok(self.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, std::io::Error> {
        let inner = self.lock();
        let last = inner
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(inner.purged);
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), std::io::Error> {
        let bytes = encode(vote)?;
        durable(&self.store, vec![Write::PutMeta(KEY_VOTE.into(), bytes)]).await?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), std::io::Error> {
        let schedule = {
            let mut inner = self.lock();
            inner.committed = committed;
            !std::mem::replace(&mut inner.commit_point_due, true)
        };
        if schedule {
            let log = self.clone();
            let task = tokio::spawn(async move {
                tokio::time::sleep(COMMIT_POINT_EVERY).await;
                log.write_commit_point();
            });
            self.lock().commit_point_task = Some(task.abort_handle());
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, std::io::Error> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Vec::new();
        {
            let mut inner = self.lock();
            for entry in entries {
                batch.push((entry.index(), encode(&entry)?));
                inner.entries.insert(entry.index(), entry);
            }
            inner.trim();
        }
        let last = batch.last().map(|(i, _)| *i);
        let shared = self.inner.clone();
        self.store.submit(
            vec![Write::Append(batch)],
            Box::new(move |r| {
                shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .flushed(r.is_ok(), last);
                callback.io_completed(r.map_err(io_err));
            }),
        );
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last.map_or(0, |l| l.index + 1);
        durable(&self.store, vec![Write::TruncateFrom(from)]).await?;
        let mut inner = self.lock();
        inner.entries.split_off(&from);
        inner.durable_through = match from.checked_sub(1) {
            Some(below) => inner.durable_through.map(|d| d.min(below)),
            None => None,
        };
        if inner.entries.is_empty() {
            // The truncation reached below the tail: the newest entries left are in the store.
            let floor = inner.purged.map_or(0, |p| p.index + 1);
            let start = floor.max(from.saturating_sub(TAIL as u64));
            let stored = self.store.read_log(start..from).map_err(io_err)?;
            for entry in decode_entries(stored).map_err(io_err)? {
                inner.entries.insert(entry.index(), entry);
            }
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), std::io::Error> {
        let bytes = encode(&Some(log_id))?;
        durable(
            &self.store,
            vec![
                Write::PurgeThrough(log_id.index),
                Write::PutMeta(KEY_PURGED.into(), bytes),
            ],
        )
        .await?;
        let mut inner = self.lock();
        inner.purged = Some(log_id);
        let keep = inner.entries.split_off(&(log_id.index + 1));
        inner.entries = keep;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{blank_ent, log_id};

    fn indices(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.index()).collect()
    }

    #[tokio::test]
    async fn entries_beyond_the_memory_tail_are_read_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut log = LogStore::open(store.clone()).unwrap();
        for start in (1..=10_000u64).step_by(500) {
            let batch: Vec<Entry> = (start..start + 500)
                .map(|i| blank_ent::<TypeConfig>(1, 1, i))
                .collect();
            log.append(batch, IOFlushed::noop()).await.unwrap();
            // Wait for the commit (the store commits in order), so older entries may leave memory.
            store.write_blocking(Vec::new()).unwrap();
        }
        let in_memory = log.lock().entries.len();
        assert!(in_memory <= TAIL + 500, "{in_memory} entries in memory");
        let all = log.try_get_log_entries(1..=10_000).await.unwrap();
        assert_eq!(indices(&all), (1..=10_000).collect::<Vec<_>>());
        let some = log.try_get_log_entries(5..8).await.unwrap();
        assert_eq!(indices(&some), [5, 6, 7]);
        let across = log.try_get_log_entries(5_000..=7_000).await.unwrap();
        assert_eq!(indices(&across), (5_000..=7_000).collect::<Vec<_>>());

        // A truncation below the memory tail: the newest entries left come back from the store.
        log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 100)))
            .await
            .unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(100));
        let tail = log.try_get_log_entries(95..).await.unwrap();
        assert_eq!(indices(&tail), (95..=100).collect::<Vec<_>>());

        // After a restart the log is whole.
        drop(log);
        let mut log = LogStore::open(store).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(100));
        let all = log.try_get_log_entries(1..=100).await.unwrap();
        assert_eq!(indices(&all), (1..=100).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn the_commit_point_is_written_once_per_interval_and_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut log = LogStore::open(store.clone()).unwrap();
        // Submissions made durable (the store may group several into one commit).
        let writes = || {
            store
                .stats()
                .submissions
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let before = writes();
        for i in 1..=50 {
            log.save_committed(Some(log_id::<TypeConfig>(1, 1, i)))
                .await
                .unwrap();
        }
        assert_eq!(
            log.read_committed().await.unwrap().map(|l| l.index),
            Some(50)
        );
        // Nothing written yet: the write waits for the interval.
        store.write_blocking(Vec::new()).unwrap();
        assert_eq!(writes(), before + 1, "only the barrier was written");
        tokio::time::sleep(COMMIT_POINT_EVERY * 2).await;
        store.write_blocking(Vec::new()).unwrap();
        assert_eq!(
            writes(),
            before + 3,
            "one commit point for 50 calls, then the barrier"
        );

        // At shutdown a pending write is made at once, and the scheduled one then does nothing.
        log.save_committed(Some(log_id::<TypeConfig>(1, 1, 60)))
            .await
            .unwrap();
        log.close().await;
        assert_eq!(writes(), before + 4, "written at shutdown");
        tokio::time::sleep(COMMIT_POINT_EVERY * 2).await;
        store.write_blocking(Vec::new()).unwrap();
        assert_eq!(writes(), before + 5, "only the barrier after the shutdown");
        drop(log);
        let mut log = LogStore::open(store).unwrap();
        assert_eq!(
            log.read_committed().await.unwrap().map(|l| l.index),
            Some(60)
        );
    }

    #[test]
    fn a_log_with_a_hole_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Entries 1-5 and 7-5000: entry 6 was lost (a failed commit the store went past). The
        // hole is far below the tail that is loaded into memory.
        let stored: Vec<(u64, Vec<u8>)> = (1..=5000u64)
            .filter(|&i| i != 6)
            .map(|i| (i, encode(&blank_ent::<TypeConfig>(1, 1, i)).unwrap()))
            .collect();
        store.write_blocking(vec![Write::Append(stored)]).unwrap();
        let err = LogStore::open(store).err().expect("a hole is refused");
        assert!(err.contains("holes"), "{err}");
    }

    #[test]
    fn after_a_failed_append_nothing_more_counts_as_durable() {
        let mut inner = Inner::default();
        inner.flushed(true, Some(10));
        assert_eq!(inner.durable_through, Some(10));
        inner.flushed(false, Some(20));
        inner.flushed(true, Some(30));
        assert_eq!(
            inner.durable_through,
            Some(10),
            "30 committed past the hole at 11-20"
        );
        for i in 1..=(TAIL as u64 + 100) {
            inner.entries.insert(i, blank_ent::<TypeConfig>(1, 1, i));
        }
        inner.trim();
        assert_eq!(inner.entries.first_key_value().map(|(i, _)| *i), Some(11));
    }
}
