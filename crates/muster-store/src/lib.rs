//! Muster's durable storage: a Raft log and a small metadata map in one redb file, written by
//! one thread that group-commits, and the current snapshot in a file of its own beside it.
//!
//! ```text
//!   submit(writes, done) ─┐
//!   submit(writes, done) ─┼─▶ channel ─▶ writer thread: drain queue ─▶ one write txn ─▶ fsync
//!   submit(writes, done) ─┘                                   └─▶ call every `done` with the result
//! ```
//!
//! The store knows nothing of Raft: log entries and metadata values are opaque bytes. The Raft
//! adapter in `muster-server` decides what they mean.
//!
//! # Correctness
//!
//! - A `done` callback runs only after the transaction holding its writes has committed with
//!   [`redb::Durability::Immediate`] (fsync), or with the error that prevented it. A caller must
//!   not acknowledge anything that depends on a write before its callback reports `Ok`.
//! - Writes are applied in submission order: submissions from one thread are never reordered, so
//!   a truncate followed by an append lands as a truncate followed by an append.
//! - One failed commit fails every submission in its batch; nothing of that batch is visible.
//! - A snapshot is streamed to `snapshot.tmp`, fsynced, renamed over `snapshot` and the directory
//!   fsynced: a crash leaves the old snapshot or the new one, never a mix. It is written outside
//!   redb because a large value there costs its size several times over in memory (the encoded
//!   value, redb's dirty pages, and a read of the value it replaces) and is stored in a page
//!   rounded up to a power of two.

use std::io::Write as _;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// Large values (snapshots) live apart from the small, hot metadata: redb rewrites a whole leaf
/// on update, so a snapshot beside the commit pointer would be rewritten on every commit.
const BLOB: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("blob");

/// The file name of the database inside a data directory.
pub const DB_FILE: &str = "muster.redb";
/// The file name of the current snapshot inside a data directory.
pub const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";

/// redb's page cache. Muster reads redb only at start-up; the cache mostly holds pages being
/// written, and the B-tree's upper levels that each commit touches.
const CACHE_BYTES: usize = 1024 * 1024;

/// Most submissions one group commit takes from the queue.
const MAX_BATCH: usize = 4096;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb reported an error (I/O, corruption, full disk).
    #[error("storage error: {0}")]
    Redb(#[from] redb::Error),
    /// The data directory could not be created or opened.
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The snapshot file could not be written or read.
    #[error("snapshot file: {0}")]
    Snapshot(std::io::Error),
    /// The writer thread has stopped (the store is shutting down or a previous commit panicked).
    #[error("storage writer has stopped")]
    Closed,
}

impl StoreError {
    fn redb(e: impl Into<redb::Error>) -> Self {
        StoreError::Redb(e.into())
    }
}

/// One write, applied inside a group-committed transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Insert (or overwrite) log entries by index.
    Append(Vec<(u64, Vec<u8>)>),
    /// Delete every log entry with index `>=` this one.
    TruncateFrom(u64),
    /// Delete every log entry with index `<=` this one.
    PurgeThrough(u64),
    /// Set a small metadata value (rewritten often).
    PutMeta(String, Vec<u8>),
    /// Set a large value (a snapshot), kept apart from the metadata.
    PutBlob(String, Vec<u8>),
    /// Delete a large value (a no-op when absent).
    DeleteBlob(String),
}

/// Called once the writes of a submission are durable, or failed.
pub type Done = Box<dyn FnOnce(Result<(), Arc<StoreError>>) + Send>;

struct Submission {
    writes: Vec<Write>,
    done: Done,
}

/// Counters of the group-commit writer.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Transactions committed (each one fsync).
    pub commits: AtomicU64,
    /// Submissions made durable.
    pub submissions: AtomicU64,
    /// Log entries appended.
    pub entries: AtomicU64,
}

/// A handle to the store; cheap to clone. Dropping the last handle stops the writer (after it
/// has committed everything queued) and closes the database.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    tx: Arc<Writer>,
    stats: Arc<StoreStats>,
    /// Commit in the caller instead of the writer thread (the in-memory store of simulations).
    inline: bool,
    snapshot: Arc<SnapshotSlot>,
}

/// Where the snapshot lives.
enum SnapshotSlot {
    /// A file in the data directory.
    Dir(PathBuf),
    /// In memory, for the in-memory store (shared by its clones, like the database).
    Memory(Mutex<Option<Vec<u8>>>),
}

struct Writer {
    tx: Mutex<Option<mpsc::Sender<Submission>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            // The last handle may be dropped by a callback running on the writer itself.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, creating the directory if needed, and starts the
    /// writer thread.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let store = Self::open_paused(dir)?;
        Ok(store.0.start(store.1))
    }

    /// Opens the store without starting its writer; submissions queue until `start`.
    fn open_paused(dir: &Path) -> Result<(Store, mpsc::Receiver<Submission>), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        // Muster reads redb only at start-up (the Raft log is served from memory; snapshots are a
        // file), so redb's default 1 GiB page cache would only hold written pages.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join(DB_FILE))
            .map_err(StoreError::redb)?;
        Self::with_db(db, false, SnapshotSlot::Dir(dir.to_path_buf()))
    }

    /// A store in memory (redb's in-memory backend) that commits each submission in the
    /// caller, before `submit` returns: nothing runs on another thread, so a simulation on a
    /// single-threaded runtime stays deterministic. Clones share the data, which outlives any
    /// one user: dropping a simulated node and opening it again on a clone models a crash
    /// (everything acknowledged is there, nothing else).
    pub fn in_memory_inline() -> Result<Store, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(StoreError::redb)?;
        Ok(Self::with_db(db, true, SnapshotSlot::Memory(Mutex::new(None)))?.0)
    }

    fn with_db(
        db: Database,
        inline: bool,
        snapshot: SnapshotSlot,
    ) -> Result<(Store, mpsc::Receiver<Submission>), StoreError> {
        // Make sure every table exists so that reads never see "table does not exist".
        let txn = db.begin_write().map_err(StoreError::redb)?;
        txn.open_table(LOG).map_err(StoreError::redb)?;
        txn.open_table(META).map_err(StoreError::redb)?;
        txn.open_table(BLOB).map_err(StoreError::redb)?;
        txn.commit().map_err(StoreError::redb)?;
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(None),
        };
        let store = Store {
            db: Arc::new(db),
            tx: Arc::new(writer),
            stats: Arc::default(),
            inline,
            snapshot: Arc::new(snapshot),
        };
        Ok((store, rx))
    }

    fn start(self, rx: mpsc::Receiver<Submission>) -> Store {
        let db = self.db.clone();
        let stats = self.stats.clone();
        let handle = std::thread::Builder::new()
            .name("muster-store-writer".into())
            .spawn(move || writer(&db, &rx, &stats))
            .map_err(|e| tracing::error!(error = %e, "cannot start the storage writer"))
            .ok();
        if let Ok(mut slot) = self.tx.thread.lock() {
            *slot = handle;
        }
        self
    }

    /// Queues writes; `done` runs on the writer thread once they are durable (or failed).
    pub fn submit(&self, writes: Vec<Write>, done: Done) {
        if self.inline {
            let mut entries = 0;
            let result = commit(&self.db, writes.iter(), &mut entries);
            if result.is_ok() {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats.submissions.fetch_add(1, Ordering::Relaxed);
                self.stats.entries.fetch_add(entries, Ordering::Relaxed);
            }
            done(result.map_err(Arc::new));
            return;
        }
        let sub = Submission { writes, done };
        let sent = match self.tx.tx.lock() {
            Ok(tx) => match tx.as_ref() {
                Some(tx) => tx.send(sub).map_err(|e| e.0),
                None => Err(sub),
            },
            Err(_) => Err(sub),
        };
        if let Err(sub) = sent {
            (sub.done)(Err(Arc::new(StoreError::Closed)));
        }
    }

    /// Writes and waits for durability on the current thread.
    pub fn write_blocking(&self, writes: Vec<Write>) -> Result<(), Arc<StoreError>> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            writes,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv()
            .unwrap_or_else(|_| Err(Arc::new(StoreError::Closed)))
    }

    /// Group-commit counters.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Reads committed log entries in `range`, in index order.
    pub fn read_log(
        &self,
        range: impl RangeBounds<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::redb)?;
        let table = txn.open_table(LOG).map_err(StoreError::redb)?;
        let mut out = Vec::new();
        for item in table.range(range).map_err(StoreError::redb)? {
            let (k, v) = item.map_err(StoreError::redb)?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Number of committed log entries.
    pub fn log_len(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::redb)?;
        let table = txn.open_table(LOG).map_err(StoreError::redb)?;
        table.len().map_err(StoreError::redb)
    }

    /// The first and last committed log indices, if the log holds any entry.
    pub fn log_bounds(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::redb)?;
        let table = txn.open_table(LOG).map_err(StoreError::redb)?;
        let first = table
            .first()
            .map_err(StoreError::redb)?
            .map(|(k, _)| k.value());
        let last = table
            .last()
            .map_err(StoreError::redb)?
            .map(|(k, _)| k.value());
        Ok(first.zip(last))
    }

    /// Reads a committed metadata value.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(META, key)
    }

    /// Reads a committed large value.
    pub fn blob(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(BLOB, key)
    }

    /// Whether writes commit in the caller (the in-memory store): blocking work may then run in
    /// place, where a real store would move it off the async runtime.
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    /// Replaces the snapshot with what `fill` writes, durably (see the module's correctness
    /// notes). Blocking: file I/O and fsync.
    pub fn write_snapshot(
        &self,
        fill: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
    ) -> Result<(), StoreError> {
        match &*self.snapshot {
            SnapshotSlot::Memory(slot) => {
                let mut bytes = Vec::new();
                fill(&mut bytes).map_err(StoreError::Snapshot)?;
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
                Ok(())
            }
            SnapshotSlot::Dir(dir) => {
                let tmp = dir.join(SNAPSHOT_TMP);
                let write = || -> std::io::Result<()> {
                    let file = std::fs::File::create(&tmp)?;
                    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
                    fill(&mut out)?;
                    out.flush()?;
                    let file = out.into_inner().map_err(|e| e.into_error())?;
                    file.sync_all()?;
                    drop(file);
                    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
                    std::fs::File::open(dir)?.sync_all()
                };
                write().map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    StoreError::Snapshot(e)
                })
            }
        }
    }

    /// The first `len` bytes of the current snapshot (fewer if it is shorter), if one was
    /// written: its header, without reading the rest.
    pub fn read_snapshot_prefix(&self, len: usize) -> Result<Option<Vec<u8>>, StoreError> {
        use std::io::Read as _;
        match &*self.snapshot {
            SnapshotSlot::Memory(slot) => Ok(slot
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|b| b[..len.min(b.len())].to_vec())),
            SnapshotSlot::Dir(dir) => match std::fs::File::open(dir.join(SNAPSHOT_FILE)) {
                Ok(file) => {
                    let mut out = Vec::with_capacity(len);
                    file.take(len as u64)
                        .read_to_end(&mut out)
                        .map_err(StoreError::Snapshot)?;
                    Ok(Some(out))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::Snapshot(e)),
            },
        }
    }

    /// The current snapshot's bytes, if one was written.
    pub fn read_snapshot(&self) -> Result<Option<Vec<u8>>, StoreError> {
        match &*self.snapshot {
            SnapshotSlot::Memory(slot) => {
                Ok(slot.lock().unwrap_or_else(|p| p.into_inner()).clone())
            }
            SnapshotSlot::Dir(dir) => match std::fs::read(dir.join(SNAPSHOT_FILE)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::Snapshot(e)),
            },
        }
    }

    fn get(
        &self,
        def: TableDefinition<'_, &str, &[u8]>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read().map_err(StoreError::redb)?;
        let table = txn.open_table(def).map_err(StoreError::redb)?;
        Ok(table
            .get(key)
            .map_err(StoreError::redb)?
            .map(|v| v.value().to_vec()))
    }
}

fn writer(db: &Database, rx: &mpsc::Receiver<Submission>, stats: &StoreStats) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(sub) => batch.push(sub),
                Err(_) => break,
            }
        }
        let mut entries = 0u64;
        let result = commit(db, batch.iter().flat_map(|s| s.writes.iter()), &mut entries);
        if result.is_ok() {
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats
                .submissions
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            stats.entries.fetch_add(entries, Ordering::Relaxed);
        } else if let Err(e) = &result {
            tracing::error!(error = %e, submissions = batch.len(), "group commit failed");
        }
        let result = result.map_err(Arc::new);
        for sub in batch {
            (sub.done)(result.clone());
        }
    }
}

fn commit<'a>(
    db: &Database,
    writes: impl Iterator<Item = &'a Write>,
    entries: &mut u64,
) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(StoreError::redb)?;
    {
        let mut log = txn.open_table(LOG).map_err(StoreError::redb)?;
        let mut meta = txn.open_table(META).map_err(StoreError::redb)?;
        let mut blob = txn.open_table(BLOB).map_err(StoreError::redb)?;
        for w in writes {
            match w {
                Write::Append(items) => {
                    for (index, bytes) in items {
                        log.insert(*index, bytes.as_slice())
                            .map_err(StoreError::redb)?;
                    }
                    *entries += items.len() as u64;
                }
                Write::TruncateFrom(index) => {
                    log.retain_in(*index.., |_, _| false)
                        .map_err(StoreError::redb)?;
                }
                Write::PurgeThrough(index) => {
                    log.retain_in(..=*index, |_, _| false)
                        .map_err(StoreError::redb)?;
                }
                Write::PutMeta(key, value) => {
                    meta.insert(key.as_str(), value.as_slice())
                        .map_err(StoreError::redb)?;
                }
                Write::PutBlob(key, value) => {
                    blob.insert(key.as_str(), value.as_slice())
                        .map_err(StoreError::redb)?;
                }
                Write::DeleteBlob(key) => {
                    blob.remove(key.as_str()).map_err(StoreError::redb)?;
                }
            }
        }
    }
    // Durability::Immediate is redb's default: commit returns after fsync.
    txn.commit().map_err(StoreError::redb)
}

#[cfg(test)]
mod tests;
