//! Injected faults: ENOSPC and EIO on write, a failing fsync and a failing resize, through the
//! backend seam. Each gives a clear error, the handle refuses further writes until the store is
//! reopened, and nothing acknowledged is lost. Also a real full disk, where the machine lets the
//! test mount a small tmpfs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{value_for, version_of};
use squirrel_store::{Backend, Config, Durability, Engine, Error, FileBackend};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Write,
    Sync,
    SetLen,
}

#[derive(Debug)]
struct Faulty {
    inner: FileBackend,
    calls: Arc<AtomicU64>,
    op: Op,
    fail_at: u64,
    errno: i32,
}

impl Faulty {
    fn check(&self, op: Op) -> std::io::Result<()> {
        if op == self.op && self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(std::io::Error::from_raw_os_error(self.errno));
        }
        Ok(())
    }
}

impl Backend for Faulty {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        self.check(Op::Write)?;
        self.inner.write_at(data, offset)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.check(Op::SetLen)?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.check(Op::Sync)?;
        self.inner.sync_data()
    }
}

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

#[test]
fn injected_faults_refuse_writes_and_lose_nothing() {
    let mut injected = 0;
    let mut checked = 0;
    for op in [Op::Write, Op::Sync, Op::SetLen] {
        for errno in [ENOSPC, EIO] {
            for fail_at in 1..=6u64 {
                let dir = tempfile::tempdir().unwrap();
                let calls = Arc::new(AtomicU64::new(0));
                let c = calls.clone();
                let opened = Config::new(dir.path())
                    .durability(Durability::Fsync)
                    .wrap_backend(move |fb| {
                        Box::new(Faulty {
                            inner: fb,
                            calls: c.clone(),
                            op,
                            fail_at,
                            errno,
                        })
                    })
                    .open();
                let db = match opened {
                    Ok(db) => db,
                    Err(Error::Io { source, .. }) => {
                        // The fault hit opening itself (its first checkpoint syncs): a clean
                        // error, and the store opens normally afterwards.
                        assert_eq!(source.raw_os_error(), Some(errno));
                        injected += 1;
                        Engine::open(dir.path()).unwrap().set("k", b"v").unwrap();
                        continue;
                    }
                    Err(e) => panic!("unexpected error opening: {e}"),
                };
                let mut acked = Vec::new();
                let mut failed = None;
                for i in 0..40u64 {
                    let key = format!("k{i}");
                    // Big values make the file grow (resizes) early.
                    let value = value_for(&key, i, if i % 3 == 0 { 700_000 } else { 5000 });
                    match db.set(&key, &value) {
                        Ok(()) => acked.push(key),
                        Err(e) => {
                            failed = Some((key, e));
                            break;
                        }
                    }
                }
                let Some((failed_key, err)) = failed else {
                    // Fewer calls of this kind than `fail_at`: no fault was injected.
                    continue;
                };
                injected += 1;
                match &err {
                    Error::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(errno)),
                    other => panic!("{op:?}/{errno}/{fail_at}: expected an I/O error, got {other}"),
                }
                assert!(matches!(
                    db.set("after", b"x"),
                    Err(Error::PreviousIo { .. })
                ));
                assert!(matches!(db.sync(), Err(Error::PreviousIo { .. })));
                // Reads still work on the poisoned handle.
                for key in &acked {
                    assert!(db.get(key).unwrap().is_some());
                }
                drop(db);
                let db = Engine::open(dir.path()).unwrap();
                for key in &acked {
                    let v = db
                        .get(key)
                        .unwrap()
                        .unwrap_or_else(|| panic!("{op:?}: lost {key}"));
                    assert!(version_of(key, &v).is_some());
                    checked += 1;
                }
                // The failed write may or may not be there, but never torn.
                if let Some(v) = db.get(&failed_key).unwrap() {
                    assert!(version_of(&failed_key, &v).is_some());
                }
                assert!(db.get("after").unwrap().is_none());
                db.set("after-reopen", b"works").unwrap();
            }
        }
    }
    assert!(injected >= 20, "only {injected} faults were injected");
    println!("faults: {injected} injected, {checked} acknowledged records checked, 0 lost");
}

/// Unmounts the tmpfs when the test ends, even on failure.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A temporary directory with a tmpfs of `size` mounted on it, or `None` where this process
/// cannot mount one. Bound as `let Some((dir, _mount))`, the mount (declared last) is dropped,
/// and unmounted, before the directory is removed.
fn tmpfs(size: &str) -> Option<(tempfile::TempDir, Mount)> {
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        return None;
    }
    let mount = Mount(dir.path().to_owned());
    Some((dir, mount))
}

#[test]
fn a_real_full_disk_is_a_clear_error_and_loses_nothing() {
    full_disk(100_000, 100);
}

/// Small records are written through the writer's map of the space it allocated (ext4, XFS,
/// tmpfs): a full disk must still be an error when the space is taken, never a `SIGBUS`.
#[test]
fn a_real_full_disk_under_small_writes_is_a_clear_error_and_loses_nothing() {
    full_disk(1000, 10_000);
}

/// Compacting to get space back, then writing into that space at once: the old segment is
/// released on a background thread, and the store waits for it before its file grows.
#[test]
fn space_freed_by_compaction_is_there_for_the_next_write() {
    let Some((dir, _mount)) = tmpfs("8m") else {
        println!("compaction space: cannot mount a tmpfs here");
        return;
    };
    let store = dir.path().join("store");
    let db = Engine::open(&store).unwrap();
    // 2 MB live, 2 MB dead.
    for version in 1..=2 {
        for i in 0..20 {
            let key = format!("k{i}");
            db.set(&key, &value_for(&key, version, 100_000)).unwrap();
        }
    }
    db.compact().unwrap();
    // 3 MB more: only fits once the old segment's 4 MB (and its preallocated tail) are back.
    for i in 0..30 {
        let key = format!("new{i}");
        db.set(&key, &value_for(&key, 1, 100_000)).unwrap();
    }
    db.close().unwrap();
    let db = Engine::open_read_only(&store).unwrap();
    for i in 0..20 {
        let key = format!("k{i}");
        assert_eq!(version_of(&key, &db.get(&key).unwrap().unwrap()), Some(2));
    }
    for i in 0..30 {
        let key = format!("new{i}");
        assert_eq!(version_of(&key, &db.get(&key).unwrap().unwrap()), Some(1));
    }
}

/// Fills a 3 MiB tmpfs with `value_len`-byte values (at most `limit` of them), in `Fsync` mode.
fn full_disk(value_len: usize, limit: usize) {
    let Some((dir, _mount)) = tmpfs("3m") else {
        // Not root, or no mount(8): the injected ENOSPC above covers the same path.
        println!("full disk: cannot mount a tmpfs here; covered by the injected ENOSPC test");
        return;
    };
    let store = dir.path().join("store");
    let db = Config::new(&store)
        .durability(Durability::Fsync)
        .open()
        .unwrap();
    let mut acked = Vec::new();
    let err = loop {
        let key = format!("k{}", acked.len());
        match db.set(&key, &value_for(&key, 1, value_len)) {
            Ok(()) => acked.push(key),
            Err(e) => break e,
        }
        assert!(acked.len() < limit, "a 3 MiB file system never filled");
    };
    assert!(
        matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(ENOSPC)),
        "{err}"
    );
    assert!(matches!(
        db.set("more", b"x"),
        Err(Error::PreviousIo { .. })
    ));
    drop(db);
    let db = Engine::open_read_only(&store).unwrap();
    for key in &acked {
        let v = db.get(key).unwrap().unwrap();
        assert!(version_of(key, &v).is_some());
    }
    println!(
        "full disk: {} records of {value_len} bytes acknowledged before ENOSPC, all read back",
        acked.len()
    );
}
