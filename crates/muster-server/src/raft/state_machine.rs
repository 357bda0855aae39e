//! The registry as openraft's state machine, with snapshots persisted by the store (a file).
//!
//! # Correctness
//!
//! - The registry, the last applied log id and the membership are one value behind one lock, so a
//!   snapshot (built concurrently with apply) always describes a state that really existed.
//! - Responders are answered only after the whole batch is applied and the observer has seen it,
//!   so a client that gets its answer can read its own write on this node.
//! - A snapshot is durable in the store (its file fsynced and renamed into place) before openraft
//!   is told it exists (and may purge the log behind it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures_util::{Stream, TryStreamExt};
use muster_core::{Applied, Registry, RegistrySnapshot};
use muster_store::{Store, Write};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StoredMembership};

use super::{ApplyObserver, Response, TypeConfig, io_err};

type LogId = LogIdOf<TypeConfig>;
type Membership = StoredMembershipOf<TypeConfig>;
type SnapshotMeta = SnapshotMetaOf<TypeConfig>;
type Snapshot = SnapshotOf<TypeConfig, SnapshotData>;

const KEY_SNAPSHOT: &str = "raft.snapshot";

#[derive(Default)]
struct State {
    registry: Registry,
    last_applied: Option<LogId>,
    membership: Membership,
}

struct Shared {
    state: RwLock<State>,
    observer: Arc<dyn ApplyObserver>,
    store: Store,
    /// Serializes snapshot writes; holds the index of the stored snapshot once known.
    stored_snapshot: Arc<tokio::sync::Mutex<Option<Option<u64>>>>,
    /// The redb copy of a snapshot (format `muster-1`) has been deleted in this process.
    blob_gone: Arc<AtomicBool>,
}

/// The registry state machine; clones share the same state.
#[derive(Clone)]
pub(crate) struct StateMachine {
    shared: Arc<Shared>,
}

impl StateMachine {
    pub(crate) fn new(store: Store, observer: Arc<dyn ApplyObserver>) -> Self {
        let shared = Shared {
            state: RwLock::default(),
            observer,
            store,
            stored_snapshot: Arc::new(tokio::sync::Mutex::new(None)),
            blob_gone: Arc::default(),
        };
        StateMachine {
            shared: Arc::new(shared),
        }
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&Registry) -> R) -> R {
        f(&self.read_state().registry)
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.shared.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.shared.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a snapshot is written from.
enum Source {
    /// Built here: streamed from the registry's parts, never encoded whole in memory.
    Registry(Arc<RegistrySnapshot>),
    /// Received from the leader.
    Bytes(Vec<u8>),
}

impl StateMachine {
    /// The stored snapshot: the snapshot file or, in a data directory from before snapshots were
    /// files, the store's blob.
    /// Read off the async workers (in place for the simulation's inline store).
    async fn stored_bytes(&self) -> Result<Option<Vec<u8>>, std::io::Error> {
        let store = self.shared.store.clone();
        let read = move || match store.read_snapshot().map_err(io_err)? {
            Some(bytes) => Ok(Some(bytes)),
            None => store.blob(KEY_SNAPSHOT).map_err(io_err),
        };
        if self.shared.store.is_inline() {
            read()
        } else {
            tokio::task::spawn_blocking(read).await.map_err(io_err)?
        }
    }

    /// The index of the stored snapshot, from its header alone.
    fn stored_index(&self) -> Result<Option<u64>, std::io::Error> {
        let store = &self.shared.store;
        let head = match store.read_snapshot_prefix(4).map_err(io_err)? {
            Some(len) => {
                let len: [u8; 4] = len
                    .try_into()
                    .map_err(|_| io_err("stored snapshot is truncated"))?;
                store
                    .read_snapshot_prefix(4 + u32::from_le_bytes(len) as usize)
                    .map_err(io_err)?
            }
            None => store.blob(KEY_SNAPSHOT).map_err(io_err)?,
        };
        Ok(match head {
            Some(bytes) => decode_snapshot(bytes)?.0.last_log_id.map(|l| l.index),
            None => None,
        })
    }

    /// Stores a snapshot unless the stored one is at least as new, and says whether it did. A
    /// build (which runs beside apply) can finish after an install of a newer snapshot;
    /// overwriting that would leave a snapshot older than the purged log, from which the node
    /// could never restart.
    async fn persist_snapshot(
        &self,
        meta: &SnapshotMeta,
        source: Source,
    ) -> Result<bool, std::io::Error> {
        // Owned: the guard goes with the write, so a caller that gives up waiting (a dropped
        // future) cannot let another write start on the same file meanwhile.
        let mut stored = self.shared.stored_snapshot.clone().lock_owned().await;
        if stored.is_none() {
            *stored = Some(self.stored_index()?);
        }
        let new = meta.last_log_id.map(|l| l.index);
        if let Some(current) = *stored
            && current.is_some()
            && current >= new
        {
            tracing::debug!(
                ?new,
                ?current,
                "not storing a snapshot older than the stored one"
            );
            return Ok(false);
        }
        let store = self.shared.store.clone();
        let blob_gone = self.shared.blob_gone.clone();
        let meta_json = serde_json::to_vec(meta).map_err(io_err)?;
        let mut write = move || {
            store
                .write_snapshot(|out| {
                    write_header(out, &meta_json)?;
                    match &source {
                        Source::Registry(parts) => parts.write_to(out),
                        Source::Bytes(bytes) => out.write_all(bytes),
                    }
                })
                .map_err(io_err)?;
            *stored = Some(new);
            // A data directory from before snapshot files held its snapshot in redb: once a
            // file is in place, that copy (and its pages) can go.
            if !blob_gone.swap(true, Ordering::AcqRel) {
                store
                    .write_blocking(vec![Write::DeleteBlob(KEY_SNAPSHOT.into())])
                    .map_err(|e| io_err(e.to_string()))?;
            }
            Ok::<_, std::io::Error>(())
        };
        if self.shared.store.is_inline() {
            write()?;
        } else {
            // File I/O and the encoding of a large registry stay off the async workers.
            tokio::task::spawn_blocking(write).await.map_err(io_err)??;
        }
        Ok(true)
    }
}

/// Snapshot layout: `[meta length: u32 LE][meta JSON][registry snapshot]`.
fn write_header(out: &mut dyn std::io::Write, meta_json: &[u8]) -> Result<(), std::io::Error> {
    let len = u32::try_from(meta_json.len()).map_err(io_err)?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(meta_json)
}

/// A snapshot's registry bytes as openraft carries them.
pub(crate) enum SnapshotData {
    /// In memory: read from the store to be sent, or received from the leader.
    Bytes(Vec<u8>),
    /// The snapshot this node just built, already in the store. openraft keeps only a built
    /// snapshot's meta (a transfer asks for the stored one), so its bytes (the size of the
    /// registry's encoding) are not read back; [`SnapshotData::into_bytes`] reads them if asked.
    Stored {
        sm: StateMachine,
        last_log_id: Option<LogId>,
    },
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotData::Bytes(b) => write!(f, "SnapshotData::Bytes({} bytes)", b.len()),
            SnapshotData::Stored { last_log_id, .. } => {
                write!(f, "SnapshotData::Stored({last_log_id:?})")
            }
        }
    }
}

impl SnapshotData {
    /// The bytes. A stored snapshot is read, and refused if a newer one replaced it since (its
    /// bytes would not match its meta).
    pub(crate) async fn into_bytes(self) -> Result<Vec<u8>, std::io::Error> {
        match self {
            SnapshotData::Bytes(bytes) => Ok(bytes),
            SnapshotData::Stored { sm, last_log_id } => {
                let bytes = sm
                    .stored_bytes()
                    .await?
                    .ok_or_else(|| io_err("the stored snapshot is gone"))?;
                let (meta, data) = decode_snapshot(bytes)?;
                if meta.last_log_id != last_log_id {
                    return Err(io_err("the built snapshot was replaced by a newer one"));
                }
                Ok(data)
            }
        }
    }
}

/// Splits stored snapshot bytes into the meta and the registry snapshot (in place: the registry
/// part keeps the buffer).
fn decode_snapshot(mut bytes: Vec<u8>) -> Result<(SnapshotMeta, Vec<u8>), std::io::Error> {
    let corrupt = || io_err("stored snapshot is truncated");
    let len_bytes: [u8; 4] = bytes
        .get(..4)
        .ok_or_else(corrupt)?
        .try_into()
        .map_err(|_| corrupt())?;
    let len = u32::from_le_bytes(len_bytes) as usize;
    let meta = bytes.get(4..4 + len).ok_or_else(corrupt)?;
    let meta: SnapshotMeta = serde_json::from_slice(meta).map_err(io_err)?;
    bytes.drain(..4 + len);
    Ok((meta, bytes))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, std::io::Error> {
        // Take the parts under the lock (pointer copies), encode outside it: apply is not held
        // up while a large registry is serialized, and the encoding streams to the file.
        let (meta, parts) = {
            let state = self.read_state();
            let meta = SnapshotMeta {
                last_log_id: state.last_applied,
                last_membership: state.membership.clone(),
            };
            (meta, Arc::new(state.registry.snapshot_parts()))
        };
        let written = self
            .persist_snapshot(&meta, Source::Registry(parts.clone()))
            .await?;
        let data = if written {
            SnapshotData::Stored {
                sm: self.clone(),
                last_log_id: meta.last_log_id,
            }
        } else {
            // A newer snapshot was installed meanwhile: this one exists only in memory.
            let mut data = Vec::new();
            parts.write_to(&mut data)?;
            SnapshotData::Bytes(data)
        };
        tracing::info!(index = ?meta.last_log_id.map(|l| l.index), ?data, "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), std::io::Error> {
        let state = self.read_state();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), std::io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, std::io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        let mut replies = Vec::new();
        let mut events = Vec::new();
        let mut registered = Vec::new();
        {
            let mut state = self.write_state();
            let state = &mut *state;
            for (entry, responder) in batch {
                let index = entry.log_id.index;
                let outcome = match entry.payload {
                    EntryPayload::Blank => state.registry.advance(index).map(|()| None),
                    // An expiry whose entry carries another term than the one its sweeper
                    // believed it led in was decided on a stale view of leadership.
                    EntryPayload::Normal(req)
                        if !req.0.is_valid_in_term(entry.log_id.leader_id.term) =>
                    {
                        tracing::warn!(
                            index,
                            command = req.0.name(),
                            "ignored a command decided in another term"
                        );
                        state.registry.advance(index).map(|()| {
                            Some(Ok(Applied::Expired {
                                instance_ids: Vec::new(),
                            }))
                        })
                    }
                    EntryPayload::Normal(req) => {
                        state.registry.apply(index, &req.0, &mut events).map(Some)
                    }
                    EntryPayload::Membership(m) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), m);
                        state.registry.advance(index).map(|()| None)
                    }
                };
                // Indices 0.. are Raft's; a repeat would mean the log and state disagree.
                let outcome = match outcome {
                    Ok(o) => o,
                    Err(e) if index == 0 && state.registry.index() == 0 => {
                        tracing::trace!(%e, "membership entry at index 0");
                        None
                    }
                    Err(e) => return Err(io_err(e)),
                };
                if let Some(Ok(Applied::Registered { instance, .. })) = &outcome {
                    registered.push(instance.clone());
                }
                state.last_applied = Some(entry.log_id);
                if let Some(r) = responder {
                    replies.push((r, Response(outcome)));
                }
            }
            self.shared
                .observer
                .applied(&state.registry, &events, &registered);
        }
        for (responder, response) in replies {
            responder.send(response);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), std::io::Error> {
        let snapshot = snapshot.into_bytes().await?;
        let registry = Registry::restore(&snapshot).map_err(io_err)?;
        self.persist_snapshot(meta, Source::Bytes(snapshot)).await?;
        let mut state = self.write_state();
        state.registry = registry;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        self.shared.observer.restored(&state.registry);
        tracing::info!(index = ?meta.last_log_id.map(|l| l.index), "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, std::io::Error> {
        let Some(bytes) = self.stored_bytes().await? else {
            return Ok(None);
        };
        let (meta, snapshot) = decode_snapshot(bytes)?;
        Ok(Some(Snapshot {
            meta,
            snapshot: SnapshotData::Bytes(snapshot),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_core::{Event, Instance};
    use openraft::testing::log_id;

    struct Quiet;

    impl ApplyObserver for Quiet {
        fn applied(&self, _: &Registry, _: &[Event], _: &[Arc<Instance>]) {}
        fn restored(&self, _: &Registry) {}
    }

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(log_id::<TypeConfig>(1, 1, index)),
            last_membership: Membership::default(),
        }
    }

    #[tokio::test]
    async fn a_snapshot_kept_in_redb_by_the_earlier_format_is_read_then_replaced_by_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let data = Registry::default().snapshot();
        let mut blob = Vec::new();
        write_header(&mut blob, &serde_json::to_vec(&meta(5)).unwrap()).unwrap();
        blob.extend_from_slice(&data);
        store
            .write_blocking(vec![Write::PutBlob(KEY_SNAPSHOT.into(), blob)])
            .unwrap();

        let mut sm = StateMachine::new(store.clone(), Arc::new(Quiet));
        let current = sm.get_current_snapshot().await.unwrap().expect("the blob");
        assert_eq!(current.meta.last_log_id, meta(5).last_log_id);
        assert_eq!(current.snapshot.into_bytes().await.unwrap(), data);
        // Not older than the stored one: refused, the blob stays.
        assert!(
            !sm.persist_snapshot(&meta(5), Source::Bytes(data.clone()))
                .await
                .unwrap()
        );
        assert!(store.blob(KEY_SNAPSHOT).unwrap().is_some());
        // Newer: the file takes over and the blob is deleted.
        sm.install_snapshot(&meta(9), SnapshotData::Bytes(data.clone()))
            .await
            .unwrap();
        assert!(store.blob(KEY_SNAPSHOT).unwrap().is_none());
        assert!(dir.path().join(muster_store::SNAPSHOT_FILE).is_file());
        let current = sm.get_current_snapshot().await.unwrap().expect("the file");
        assert_eq!(current.meta.last_log_id, meta(9).last_log_id);
        assert_eq!(current.snapshot.into_bytes().await.unwrap(), data);
    }

    #[tokio::test]
    async fn a_built_snapshot_is_not_read_back_but_reads_as_what_was_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut sm = StateMachine::new(store, Arc::new(Quiet));
        let built = sm.build_snapshot().await.unwrap();
        assert!(matches!(built.snapshot, SnapshotData::Stored { .. }));
        let stored = sm.get_current_snapshot().await.unwrap().expect("stored");
        assert_eq!(stored.meta.last_log_id, built.meta.last_log_id);
        let stored = stored.snapshot.into_bytes().await.unwrap();
        assert_eq!(stored, Registry::default().snapshot());
        let again = sm.build_snapshot().await.unwrap();
        // A newer snapshot replaces the stored one: the older handle no longer reads.
        sm.install_snapshot(&meta(9), SnapshotData::Bytes(stored.clone()))
            .await
            .unwrap();
        assert!(again.snapshot.into_bytes().await.is_err());
    }
}
