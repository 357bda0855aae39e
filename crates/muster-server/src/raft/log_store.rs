//! The Raft log on `muster-store`: entries are kept in memory for reads and group-committed to
//! redb for durability.
//!
//! # Correctness
//!
//! - `append` inserts entries into the in-memory index before it returns (openraft requires them
//!   to be readable at once) and reports them flushed only from the store's commit callback, after
//!   fsync. The store commits submissions in order, so a flush report covers every earlier write.
//! - `save_vote`, `truncate_after` and `purge` wait for their write to be durable before they
//!   return. `save_committed` does not wait: it is ordered behind the entries it covers, and losing
//!   it only makes a restart re-apply from an earlier point.
//! - The purge point is persisted as its own value, since openraft may purge past the last entry
//!   after installing a snapshot.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};

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
const FORMAT: &[u8] = b"muster-1";

#[derive(Default)]
struct Inner {
    entries: BTreeMap<u64, Entry>,
    purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

/// The Raft log: an in-memory index in front of the durable store.
#[derive(Clone)]
pub(crate) struct LogStore {
    inner: Arc<Mutex<Inner>>,
    store: Store,
}

impl LogStore {
    /// Loads the log, vote, commit and purge points from the store.
    pub(crate) fn open(store: Store) -> Result<LogStore, String> {
        match store.meta(KEY_FORMAT).map_err(|e| e.to_string())? {
            None => store
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
        for (index, bytes) in store.read_log(floor..).map_err(|e| e.to_string())? {
            let entry: Entry = serde_json::from_slice(&bytes)
                .map_err(|e| format!("corrupt log entry {index}: {e}"))?;
            inner.entries.insert(index, entry);
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
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
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
        let bytes = encode(&committed)?;
        self.lock().committed = committed;
        self.store.submit(
            vec![Write::PutMeta(KEY_COMMITTED.into(), bytes)],
            Box::new(|r| {
                if let Err(e) = r {
                    tracing::error!(error = %e, "could not persist the commit point");
                }
            }),
        );
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
        }
        self.store.submit(
            vec![Write::Append(batch)],
            Box::new(move |r| callback.io_completed(r.map_err(io_err))),
        );
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), std::io::Error> {
        let from = last.map_or(0, |l| l.index + 1);
        durable(&self.store, vec![Write::TruncateFrom(from)]).await?;
        self.lock().entries.split_off(&from);
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
