use super::*;

fn entry(i: u64) -> (u64, Vec<u8>) {
    (i, format!("entry-{i}").into_bytes())
}

#[test]
fn append_truncate_purge_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store
            .write_blocking(vec![Write::Append((1..=10).map(entry).collect())])
            .unwrap();
        store
            .write_blocking(vec![
                Write::TruncateFrom(8),
                Write::Append(vec![(8, b"new".to_vec())]),
            ])
            .unwrap();
        store
            .write_blocking(vec![
                Write::PurgeThrough(3),
                Write::PutMeta("vote".into(), b"v1".to_vec()),
                Write::PutBlob("snap".into(), b"big".to_vec()),
            ])
            .unwrap();
        assert_eq!(store.log_bounds().unwrap(), Some((4, 8)));
    }
    let store = Store::open(dir.path()).unwrap();
    let log = store.read_log(..).unwrap();
    assert_eq!(log.first(), Some(&entry(4)));
    assert_eq!(log.last(), Some(&(8, b"new".to_vec())));
    assert_eq!(log.len(), 5);
    assert_eq!(store.meta("vote").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(store.meta("nothing").unwrap(), None);
    assert_eq!(store.blob("snap").unwrap().as_deref(), Some(&b"big"[..]));
    assert_eq!(
        store.meta("snap").unwrap(),
        None,
        "blobs and metadata are apart"
    );
    assert_eq!(store.read_log(5..7).unwrap(), vec![entry(5), entry(6)]);
}

#[test]
fn queued_submissions_share_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rx) = Store::open_paused(dir.path()).unwrap();
    let (tx, done) = mpsc::channel();
    for i in 1..=100 {
        let tx = tx.clone();
        store.submit(
            vec![Write::Append(vec![entry(i)])],
            Box::new(move |r| tx.send(r.is_ok()).unwrap()),
        );
    }
    let store = store.start(rx);
    for _ in 0..100 {
        assert!(done.recv().unwrap());
    }
    assert_eq!(
        store.stats().commits.load(Ordering::Relaxed),
        1,
        "one fsync for the whole batch"
    );
    assert_eq!(store.stats().submissions.load(Ordering::Relaxed), 100);
    assert_eq!(store.log_bounds().unwrap(), Some((1, 100)));
}

#[test]
fn a_bad_data_dir_is_a_clear_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let err = Store::open(&file.path().join("sub")).unwrap_err();
    assert!(
        err.to_string().contains("cannot use data directory"),
        "{err}"
    );
}

#[test]
fn the_in_memory_store_commits_inline_and_clones_share_data() {
    let store = Store::in_memory_inline().unwrap();
    let (tx, rx) = mpsc::channel();
    store.submit(
        vec![Write::Append(vec![entry(1), entry(2)])],
        Box::new(move |r| tx.send(r.is_ok()).unwrap()),
    );
    assert_eq!(rx.try_recv(), Ok(true), "committed before submit returned");
    let again = store.clone();
    drop(store);
    assert_eq!(again.read_log(..).unwrap(), vec![entry(1), entry(2)]);
    again.write_blocking(vec![Write::TruncateFrom(2)]).unwrap();
    assert_eq!(again.log_bounds().unwrap(), Some((1, 1)));
}

#[test]
fn a_snapshot_file_is_replaced_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.read_snapshot().unwrap(), None);
    store.write_snapshot(|w| w.write_all(b"first")).unwrap();
    assert_eq!(
        store.read_snapshot().unwrap().as_deref(),
        Some(&b"first"[..])
    );
    // A writer that fails half way leaves the previous snapshot in place.
    let failed = store.write_snapshot(|w| {
        w.write_all(b"half")?;
        Err(std::io::Error::other("encoding failed"))
    });
    assert!(matches!(failed, Err(StoreError::Snapshot(_))));
    assert_eq!(
        store.read_snapshot().unwrap().as_deref(),
        Some(&b"first"[..])
    );
    store.write_snapshot(|w| w.write_all(b"second")).unwrap();
    drop(store);
    // It survives a reopen, and no temporary file is left behind.
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.read_snapshot().unwrap().as_deref(),
        Some(&b"second"[..])
    );
    assert!(!dir.path().join("snapshot.tmp").exists());
    // The header can be read alone.
    let prefix = |n| store.read_snapshot_prefix(n).unwrap();
    assert_eq!(prefix(3).as_deref(), Some(&b"sec"[..]));
    assert_eq!(prefix(99).as_deref(), Some(&b"second"[..]));
}

#[test]
fn the_in_memory_store_keeps_its_snapshot_across_clones() {
    let store = Store::in_memory_inline().unwrap();
    assert!(store.is_inline());
    store.write_snapshot(|w| w.write_all(b"snap")).unwrap();
    assert_eq!(
        store.clone().read_snapshot().unwrap().as_deref(),
        Some(&b"snap"[..])
    );
    assert_eq!(
        store.read_snapshot_prefix(2).unwrap().as_deref(),
        Some(&b"sn"[..])
    );
}
