//! Random byte flips in the segment and the index: `verify` finds every damaged record, a damaged
//! index is detected and rebuilt, and `get` never returns wrong bytes.

mod common;

use std::collections::BTreeMap;

use common::{Rng, value_for};
use squirrel_store::{Config, Durability, Engine, Error, verify};

/// Where each record lies: (offset, length, key, whether it is the key's latest record).
type Extent = (u64, u64, String, bool);

/// A closed store of 120 keys (some overwritten); returns the model and the records' extents.
fn build(dir: &std::path::Path, seed: u64) -> (BTreeMap<String, Vec<u8>>, Vec<Extent>) {
    let mut rng = Rng(seed);
    let db = Config::new(dir)
        .durability(Durability::Buffered)
        .open()
        .unwrap();
    let mut model = BTreeMap::new();
    let mut extents = Vec::new(); // (offset, len, key, is_latest)
    for i in 0..150u64 {
        let key = format!("key-{:03}", rng.below(120));
        let value = value_for(&key, i, 30 + rng.below(400) as usize);
        let offset = db.stats().segment_len;
        db.set(&key, &value).unwrap();
        let len = db.stats().segment_len - offset;
        for e in extents.iter_mut().filter(|e: &&mut Extent| e.2 == key) {
            e.3 = false;
        }
        extents.push((offset, len, key.clone(), true));
        model.insert(key, value);
    }
    db.close().unwrap();
    (model, extents)
}

/// A store whose index is a base run and delta runs (with tombstones): 800 keys checkpointed,
/// then overwrites, new keys and deletes checkpointed in small batches, closed cleanly.
fn build_with_deltas(dir: &std::path::Path, seed: u64) -> BTreeMap<String, Vec<u8>> {
    let mut rng = Rng(seed);
    let db = Config::new(dir)
        .durability(Durability::Buffered)
        .open()
        .unwrap();
    let mut model = BTreeMap::new();
    for i in 0..800u64 {
        let key = format!("key-{i:04}");
        let value = value_for(&key, i, 20 + rng.below(60) as usize);
        db.set(&key, &value).unwrap();
        model.insert(key, value);
    }
    db.checkpoint().unwrap();
    for i in 0..60u64 {
        let key = format!("key-{:04}", rng.below(900));
        if rng.chance(15) {
            db.delete(&key).unwrap();
            model.remove(&key);
        } else {
            let value = value_for(&key, 1000 + i, 20 + rng.below(60) as usize);
            db.set(&key, &value).unwrap();
            model.insert(key, value);
        }
        if i % 25 == 24 {
            db.checkpoint().unwrap();
        }
    }
    db.close().unwrap();
    model
}

#[test]
fn flipped_segment_bytes_are_all_found_and_never_served() {
    let (mut trials, mut flips_total, mut found_total) = (0, 0, 0);
    for seed in 0..40u64 {
        let dir = tempfile::tempdir().unwrap();
        let (model, extents) = build(dir.path(), seed);
        let seg = dir.path().join("segment.sqs");
        let mut bytes = std::fs::read(&seg).unwrap();
        let end = extents.last().map(|e| e.0 + e.1).unwrap();
        let mut rng = Rng(seed + 1000);
        let mut hit = std::collections::BTreeSet::new();
        for _ in 0..1 + rng.below(3) {
            let at = 32 + rng.below(end - 32);
            bytes[at as usize] ^= 1 << rng.below(8);
            let rec = extents
                .iter()
                .position(|e| e.0 <= at && at < e.0 + e.1)
                .unwrap();
            hit.insert(rec);
            flips_total += 1;
        }
        std::fs::write(&seg, &bytes).unwrap();
        let report = verify(dir.path(), &mut |_, _| {}).unwrap();
        let damaged: std::collections::BTreeSet<u64> =
            report.damaged.iter().map(|d| d.offset).collect();
        for &r in &hit {
            assert!(
                damaged.contains(&extents[r].0),
                "seed {seed}: record at {} not reported",
                extents[r].0
            );
        }
        assert_eq!(
            damaged.len(),
            hit.len(),
            "seed {seed}: only damaged records are reported"
        );
        assert_eq!(
            report.torn_tail, None,
            "checkpointed bytes are never a torn tail"
        );
        found_total += damaged.len();
        let db = Engine::open_read_only(dir.path()).unwrap();
        for (key, value) in &model {
            let latest_damaged = hit.iter().any(|&r| extents[r].2 == *key && extents[r].3);
            match db.get(key) {
                Ok(Some(v)) => {
                    assert!(
                        !latest_damaged,
                        "seed {seed}: {key} served from a damaged record"
                    );
                    assert_eq!(
                        &*v,
                        value.as_slice(),
                        "seed {seed}: {key} served wrong bytes"
                    );
                }
                Err(Error::Corruption { .. }) => {
                    assert!(latest_damaged, "seed {seed}: {key} errored")
                }
                Ok(None) => panic!("seed {seed}: {key} vanished"),
                Err(e) => panic!("seed {seed}: {key}: unexpected {e}"),
            }
        }
        trials += 1;
    }
    println!(
        "segment flips: {trials} stores, {flips_total} flips, {found_total} damaged records found"
    );
}

/// The index files of a store (index format 3): the manifest and its run files.
fn index_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name == "index.sqm" || (name.starts_with("index-") && name.ends_with(".sqr"))
        })
        .collect();
    files.sort();
    files
}

/// A flipped byte anywhere in the manifest or a run (header, entries, Bloom filter, crc table)
/// makes the handle rebuild the index from the segment: never a wrong or a missing value.
#[test]
fn flipped_index_bytes_are_detected_and_rebuilt() {
    let mut flips_total = 0;
    for seed in 0..40u64 {
        let dir = tempfile::tempdir().unwrap();
        let model = if seed % 2 == 0 {
            build(dir.path(), seed).0
        } else {
            build_with_deltas(dir.path(), seed)
        };
        let files = index_files(dir.path());
        let want = if seed % 2 == 0 { 2 } else { 3 };
        assert!(files.len() >= want, "a manifest and runs: {files:?}");
        let mut rng = Rng(seed + 2000);
        let idx = &files[rng.below(files.len() as u64) as usize];
        let mut bytes = std::fs::read(idx).unwrap();
        for _ in 0..1 + rng.below(4) {
            // Half the flips in the first 128 bytes (headers), half anywhere.
            let at = if rng.chance(50) {
                rng.below(128.min(bytes.len() as u64))
            } else {
                rng.below(bytes.len() as u64)
            };
            bytes[at as usize] ^= 1 << rng.below(8);
            flips_total += 1;
        }
        std::fs::write(idx, &bytes).unwrap();
        for read_only in [true, false] {
            let db = Config::new(dir.path()).read_only(read_only).open().unwrap();
            for (key, value) in &model {
                let v = db
                    .get(key)
                    .unwrap_or_else(|e| panic!("seed {seed}: {key}: {e}"));
                assert_eq!(v.as_deref(), Some(value.as_slice()), "seed {seed}: {key}");
            }
            assert_eq!(
                db.keys().unwrap(),
                model.keys().cloned().collect::<Vec<_>>()
            );
            assert_eq!(db.len() as usize, model.len());
        }
    }
    println!("index flips: {flips_total} flips in 40 indexes, every key read back exact");
}
