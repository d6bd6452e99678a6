//! Compaction keeps every live record, drops the dead ones, carries writes made while it runs,
//! leaves readers' values valid, and survives a crash at each of its steps.

use std::collections::BTreeMap;

use squirrel_store::{Config, CrashPoint, Durability, Engine};

fn open(dir: &std::path::Path) -> Engine {
    Config::new(dir)
        .durability(Durability::Buffered)
        .checkpoint_every(50, 1 << 20)
        .open()
        .unwrap()
}

/// Fills a store with overwrites and deletes; returns the expected live contents.
fn fill(db: &Engine) -> BTreeMap<String, Vec<u8>> {
    let mut model = BTreeMap::new();
    for round in 0..3u8 {
        for i in 0..200u32 {
            let k = format!("k{i:03}");
            let v = vec![round ^ (i as u8); 100 + (i as usize % 50)];
            db.set(&k, &v).unwrap();
            model.insert(k, v);
        }
    }
    for i in (0..200u32).step_by(5) {
        let k = format!("k{i:03}");
        db.delete(&k).unwrap();
        model.remove(&k);
    }
    model
}

fn check(db: &Engine, model: &BTreeMap<String, Vec<u8>>) {
    assert_eq!(
        db.keys().unwrap(),
        model.keys().cloned().collect::<Vec<_>>()
    );
    assert_eq!(db.len() as usize, model.len());
    for (k, v) in model {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(v.as_slice()), "{k}");
    }
}

#[test]
fn compaction_drops_dead_bytes_and_keeps_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let model = fill(&db);
    let before = db.stats();
    assert!(before.dead_ratio() > 0.6);
    let held = db.get("k001").unwrap().unwrap();
    let report = db.compact().unwrap();
    assert_eq!(report.live_records, model.len() as u64);
    assert!(report.reclaimed() > 0);
    let after = db.stats();
    // The report's figures are the ones `stats` shows, before and after.
    assert_eq!(report.segment_len_before, before.segment_len);
    assert_eq!(report.segment_file_len_before, before.segment_file_len);
    assert_eq!(report.segment_len_after, after.segment_len);
    assert_eq!(report.segment_file_len_after, after.segment_file_len);
    assert_eq!(report.dropped(), before.segment_len - after.segment_len);
    assert!(report.reclaimed() >= report.dropped());
    assert_eq!(after.dead_bytes, 32, "the closing sync mark alone");
    assert_eq!(after.dead_records, 0);
    assert_eq!(after.live_bytes, before.live_bytes);
    // The segment header, the live records, and the sync mark that ends a compacted segment.
    assert_eq!(after.segment_len, 32 + before.live_bytes + 32);
    // A value read before the switch still reads: its map outlives the old file's name.
    assert_eq!(&*held, model["k001"].as_slice());
    check(&db, &model);
    // Writes after compaction go to the new segment and survive a reopen.
    db.set("after", b"compaction").unwrap();
    drop(db);
    let db = open(dir.path());
    let mut model = model;
    model.insert("after".into(), b"compaction".to_vec());
    check(&db, &model);
    assert!(!dir.path().join("segment.sqs.compact").exists());
}

#[test]
fn writes_during_compaction_are_carried_over() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut model = fill(&db);
    let writer = db.clone();
    let mut wrote = false;
    // The progress callback runs while records are copied without the writer lock held: a write
    // from it is exactly a write that lands during compaction.
    let report = db
        .compact_with_progress(&mut |_, _| {
            if !wrote {
                wrote = true;
                writer.set("during", b"the copy").unwrap();
                writer.set("k001", b"overwritten during").unwrap();
                writer.delete("k002").unwrap();
            }
        })
        .unwrap();
    assert!(wrote);
    assert_eq!(report.carried_records, 3);
    model.insert("during".into(), b"the copy".to_vec());
    model.insert("k001".into(), b"overwritten during".to_vec());
    model.remove("k002");
    check(&db, &model);
    drop(db);
    drop(writer);
    check(&open(dir.path()), &model);
}

#[test]
fn read_only_handle_follows_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let model = fill(&db);
    let ro = Engine::open_read_only(dir.path()).unwrap();
    check(&ro, &model);
    db.compact().unwrap();
    db.set("new", b"after").unwrap();
    // Before refresh the old (unlinked) segment still serves consistent data.
    check(&ro, &model);
    ro.refresh().unwrap();
    let mut model = model;
    model.insert("new".into(), b"after".to_vec());
    check(&ro, &model);
}

#[test]
fn a_crash_at_any_step_leaves_a_whole_store() {
    for point in [
        CrashPoint::AfterCopy,
        CrashPoint::AfterSegmentSync,
        CrashPoint::AfterIndex,
        CrashPoint::BetweenRenames,
        CrashPoint::AfterRenames,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        let model = fill(&db);
        assert!(db.compact_crashing_at(point).is_err(), "{point:?}");
        db.abandon();
        let db = open(dir.path());
        check(&db, &model);
        assert!(
            !dir.path().join("segment.sqs.compact").exists(),
            "{point:?}"
        );
        assert!(!dir.path().join("index.sqi.compact").exists(), "{point:?}");
        assert!(!dir.path().join("index.sqm.compact").exists(), "{point:?}");
        // And the store can still be compacted and written.
        db.compact().unwrap();
        db.set("x", b"y").unwrap();
        drop(db);
        let db = open(dir.path());
        let mut model = model;
        model.insert("x".into(), b"y".to_vec());
        check(&db, &model);
    }
}

/// Writes long (64 KiB to ~300 KiB) and short values, then overwrites some keys, so that dead
/// records split the live ones into runs of both kinds. Returns the live contents.
fn fill_runs(db: &Engine) -> BTreeMap<String, Vec<u8>> {
    let mut model = BTreeMap::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..2u8 {
        for i in 0..120u32 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let len = if i % 3 == 0 {
                (64 << 10) + (rng % (240 << 10)) as usize
            } else {
                (rng % 3000) as usize
            };
            let v: Vec<u8> = (0..len).map(|j| (j as u64 ^ rng) as u8).collect();
            let k = format!("k{i:03}");
            if round == 0 || i % 4 != 1 {
                db.set(&k, &v).unwrap();
                model.insert(k, v);
            }
        }
    }
    model
}

/// Long runs of live records (copied by the kernel where it can) and short ones (through the
/// buffer) side by side, dead records between them: every value exact after compaction and
/// after a reopen, the new segment verifies clean, and no more bytes are kept than the live ones.
#[test]
fn long_and_short_runs_are_copied_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let model = fill_runs(&db);
    let report = db.compact().unwrap();
    let stats = db.stats();
    // The header, the live records and the closing sync mark (dead bytes): nothing else.
    assert_eq!(
        report.segment_len_after,
        32 + stats.live_bytes + stats.dead_bytes,
        "only the live records are kept"
    );
    assert!(stats.dead_bytes <= 64, "{stats:?}");
    check(&db, &model);
    db.close().unwrap();
    let v = squirrel_store::verify(dir.path(), &mut |_, _| {}).unwrap();
    assert!(!v.is_corrupt() && v.damaged.is_empty(), "{v:?}");
    let db = open(dir.path());
    check(&db, &model);
}

/// A backend that counts the bytes written through `write_at`, and either lets the kernel copy
/// runs (`copy_from` of the file backend) or says it cannot (the trait's default).
#[derive(Debug)]
struct Counting {
    inner: squirrel_store::FileBackend,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    kernel_copy: bool,
}

impl squirrel_store::Backend for Counting {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        self.written
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::SeqCst);
        self.inner.write_at(data, offset)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    fn copy_from(
        &self,
        src: &std::fs::File,
        src_offset: u64,
        len: u64,
        offset: u64,
    ) -> std::io::Result<bool> {
        if self.kernel_copy {
            self.inner.copy_from(src, src_offset, len, offset)
        } else {
            Ok(false)
        }
    }
}

/// The kernel's copy and the buffered fallback (a backend that cannot copy) give the same
/// records, byte for byte; the fallback writes every live byte itself.
#[test]
fn kernel_copy_and_buffered_fallback_write_the_same_records() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut segments = Vec::new();
    for kernel_copy in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let w = written.clone();
        let db = Config::new(dir.path())
            .durability(Durability::Buffered)
            .checkpoint_every(50, 1 << 20)
            .wrap_backend(move |fb| {
                Box::new(Counting {
                    inner: fb,
                    written: w.clone(),
                    kernel_copy,
                })
            })
            .open()
            .unwrap();
        let model = fill_runs(&db);
        let before = written.load(Ordering::SeqCst);
        db.compact().unwrap();
        let during = written.load(Ordering::SeqCst) - before;
        let live = db.stats().live_bytes;
        if kernel_copy {
            assert!(
                during < live / 2,
                "the kernel copied the long runs: {during} of {live}"
            );
        } else {
            assert!(
                during >= live,
                "the fallback wrote every byte: {during} of {live}"
            );
        }
        check(&db, &model);
        db.close().unwrap();
        let bytes = std::fs::read(dir.path().join("segment.sqs")).unwrap();
        // After the header (its random segment id differs), up to the end of the records.
        let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
        segments.push(bytes[32..end].to_vec());
    }
    assert_eq!(segments[0].len(), segments[1].len());
    assert!(segments[0] == segments[1], "same records either way");
}
