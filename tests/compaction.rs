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
