//! Recovery and repair never destroy acknowledged data (issue 10): one damaged record costs that
//! record alone, whatever happened to the index; cuts save their bytes into `lost+found/`;
//! untrusted files give typed errors.

mod common;

use std::path::Path;

use common::{Rng, fast_tempdir, value_for, version_of};
use squirrel_store::{
    Config, Durability, Engine, Error, IndexCheck, lost_found, rebuild_index, repair, verify,
};

/// Where each record of the test stores lies: (offset, length, key, version).
type Extent = (u64, u64, String, u64);

/// Writes `batches` batches of `per` keys (`key-000`…), version = batch number, each batch one
/// `set_many` (Fsync), closing and reopening between batches as two `import`s would.
fn batches(dir: &Path, batches: u64, per: u64) -> Vec<Extent> {
    let mut extents = Vec::new();
    for b in 0..batches {
        let db = Config::new(dir)
            .durability(Durability::Fsync)
            .open()
            .unwrap();
        let items: Vec<(String, Vec<u8>)> = (0..per)
            .map(|i| {
                let k = format!("key-{i:03}");
                let v = value_for(&k, b, 200 + (i as usize * 7) % 300);
                (k, v)
            })
            .collect();
        let start = db.stats().segment_len;
        db.set_many(items.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
            .unwrap();
        let end = db.stats().segment_len;
        // The records of the batch, found from the segment (a sync mark may lead the batch).
        let bytes = std::fs::read(dir.join("segment.sqs")).unwrap();
        let mut at = start;
        while at < end {
            let h = &bytes[at as usize..];
            let kind = h[8];
            let key_len = u16::from_le_bytes([h[10], h[11]]) as u64;
            let value_len = u64::from_le_bytes(h[16..24].try_into().unwrap());
            let len = 24 + key_len + value_len;
            if kind == 1 {
                let key = String::from_utf8(h[24..24 + key_len as usize].to_vec()).unwrap();
                extents.push((at, len, key, b));
            }
            at += len;
        }
        db.close().unwrap();
    }
    extents
}

fn flip(dir: &Path, at: u64) {
    let seg = dir.join("segment.sqs");
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[at as usize] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
}

/// Every key reads its newest version, except `hit`, which reports corruption naming it.
fn check_newest(db: &Engine, keys: u64, newest: u64, hit: &str) {
    for i in 0..keys {
        let k = format!("key-{i:03}");
        match db.get(&k) {
            Ok(Some(v)) => {
                assert_ne!(k, hit, "the damaged key must not be served");
                assert_eq!(
                    version_of(&k, &v),
                    Some(newest),
                    "{k} lost its newest value"
                );
            }
            Err(Error::Corruption { key, offset, .. }) => {
                assert_eq!(k, hit, "only the damaged key errs");
                assert_eq!(key.as_deref(), Some(hit));
                assert!(offset > 0);
            }
            other => panic!("{k}: {other:?}"),
        }
    }
}

/// Review item 1: a flipped byte in the first record of the second batch, then the index lost
/// (or `rebuild-index`, which `verify` used to recommend): the second batch used to be taken for
/// a torn tail and punched out, rolling every key back.
#[test]
fn a_flip_in_a_synced_batch_costs_that_record_alone_even_without_the_index() {
    for lose_index in [false, true] {
        let dir = fast_tempdir();
        let extents = batches(dir.path(), 2, 40);
        let first_of_second = extents.iter().find(|e| e.3 == 1).unwrap().clone();
        flip(dir.path(), first_of_second.0 + first_of_second.1 - 5);
        let hit = first_of_second.2.as_str();
        if lose_index {
            std::fs::remove_file(dir.path().join("index.sqm")).unwrap();
        } else {
            rebuild_index(dir.path()).unwrap();
        }
        let report = verify(dir.path(), &mut |_, _| {}).unwrap();
        assert_eq!(report.damaged.len(), 1, "{report:?}");
        assert_eq!(report.damaged[0].key.as_deref(), Some(hit));
        assert_eq!(report.damaged[0].offset, first_of_second.0);
        assert_eq!(report.torn_tail, None);
        // A read-write open (what every maintenance command does) keeps everything.
        let db = Engine::open(dir.path()).unwrap();
        // An open finds damage only where it scans: everything, when the index was lost.
        assert_eq!(db.stats().damaged_records, u64::from(lose_index));
        check_newest(&db, 40, 1, hit);
        assert_eq!(db.keys().unwrap().len(), 40);
        db.close().unwrap();
        let ro = Engine::open_read_only(dir.path()).unwrap();
        check_newest(&ro, 40, 1, hit);
        drop(ro);

        // The one documented repair step: a verified store holding every other record.
        let r = repair(dir.path()).unwrap();
        assert_eq!(r.deleted_keys, vec![hit.to_string()]);
        let after = verify(dir.path(), &mut |_, _| {}).unwrap();
        assert!(!after.is_corrupt(), "{after:?}");
        assert_eq!(after.index, IndexCheck::Consistent);
        assert_eq!(after.live_keys, 39);
        let saved = lost_found::list(dir.path()).unwrap();
        assert_eq!(saved.len(), 1, "the damaged record was saved: {saved:?}");
        assert_eq!(saved[0].len, first_of_second.1);
        let db = Engine::open_read_only(dir.path()).unwrap();
        for i in 0..40 {
            let k = format!("key-{i:03}");
            let got = db.get(&k).unwrap();
            if k == hit {
                assert!(got.is_none(), "repair deletes the damaged key");
            } else {
                assert_eq!(version_of(&k, &got.unwrap()), Some(1));
            }
        }
    }
}

/// With a single batch (one import), rebuilding the index used to report 0 keys.
#[test]
fn a_flip_in_the_only_batch_keeps_the_other_49() {
    let dir = fast_tempdir();
    let extents = batches(dir.path(), 1, 50);
    let victim = extents[17].clone();
    flip(dir.path(), victim.0 + 30); // in the key: named by the key check and the record CRC
    let stats = rebuild_index(dir.path()).unwrap();
    assert_eq!(stats.live_records, 50, "49 intact and one damaged key");
    let db = Engine::open_read_only(dir.path()).unwrap();
    check_newest(&db, 50, 0, &victim.2);
}

/// Review item 2: damage in a batch that is not the last; `rebuild-index` used to delete the index
/// and then fail, leaving a store no command could open.
#[test]
fn rebuild_index_on_a_damaged_store_leaves_it_openable() {
    let dir = fast_tempdir();
    let extents = batches(dir.path(), 3, 20);
    let victim = extents.iter().find(|e| e.3 == 1).unwrap().clone();
    flip(dir.path(), victim.0 + 2); // in the record checksum
    rebuild_index(dir.path()).unwrap();
    assert!(dir.path().join("index.sqm").exists());
    assert!(!dir.path().join("index.sqm.tmp").exists());
    let db = Engine::open(dir.path()).unwrap();
    // The victim's newest record is batch 2's, intact: nothing is lost at all.
    check_newest(&db, 20, 2, "none");
}

/// Review item 8: a header with a valid header checksum claiming 2^40 bytes, followed by intact
/// records, was taken for a torn tail: the records after it vanished and would have been zeroed.
#[test]
fn a_length_lying_header_mid_segment_is_damage_not_a_torn_tail() {
    let dir = fast_tempdir();
    let extents = batches(dir.path(), 1, 10);
    let victim = extents[4].clone();
    let seg = dir.path().join("segment.sqs");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = victim.0 as usize;
    bytes[at + 16..at + 24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let crc = crc32fast::hash(&bytes[at + 8..at + 24]);
    bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::remove_file(dir.path().join("index.sqm")).unwrap();
    let report = verify(dir.path(), &mut |_, _| {}).unwrap();
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    assert_eq!(report.torn_tail, None);
    let db = Engine::open(dir.path()).unwrap();
    for e in extents.iter().filter(|e| e.2 != victim.2) {
        assert_eq!(version_of(&e.2, &db.get(&e.2).unwrap().unwrap()), Some(0));
    }
    assert!(db.get(&victim.2).is_err(), "its key is named and reported");
}

/// Review item 7: one intact record whose key is not UTF-8 made every command fail.
#[test]
fn a_non_utf8_key_is_damage_of_that_record_only() {
    let dir = fast_tempdir();
    let extents = batches(dir.path(), 1, 5);
    let victim = extents[2].clone();
    let seg = dir.path().join("segment.sqs");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = victim.0 as usize;
    bytes[at + 24] = 0xff; // first key byte: not UTF-8 any more
    // Make the record intact again: fix the key check (flags) and both checksums.
    let key_len = u16::from_le_bytes([bytes[at + 10], bytes[at + 11]]) as usize;
    let key_crc = crc32fast::hash(&bytes[at + 24..at + 24 + key_len]) & 0xffff;
    let flags = u32::from_le_bytes(bytes[at + 12..at + 16].try_into().unwrap()) & 0xffff;
    bytes[at + 12..at + 16].copy_from_slice(&(flags | key_crc << 16).to_le_bytes());
    let hcrc = crc32fast::hash(&bytes[at + 8..at + 24]);
    bytes[at + 4..at + 8].copy_from_slice(&hcrc.to_le_bytes());
    let rcrc = crc32fast::hash(&bytes[at + 4..at + victim.1 as usize]);
    bytes[at..at + 4].copy_from_slice(&rcrc.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::remove_file(dir.path().join("index.sqm")).unwrap();
    let db = Engine::open(dir.path()).unwrap();
    assert_eq!(db.keys().unwrap().len(), 4);
    assert_eq!(db.stats().damaged_records, 1);
    let report = verify(dir.path(), &mut |_, _| {}).unwrap();
    assert_eq!(report.damaged.len(), 1);
    assert_eq!(report.damaged[0].what, "record key is not UTF-8");
}

/// A torn tail is cut only after its bytes are saved into lost+found/.
#[test]
fn a_cut_torn_tail_is_saved_first() {
    let dir = fast_tempdir();
    batches(dir.path(), 1, 3);
    let seg = dir.path().join("segment.sqs");
    let end = Engine::open_read_only(dir.path())
        .unwrap()
        .stats()
        .segment_len;
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.truncate(end as usize);
    bytes.extend_from_slice(b"\x01\x02\x03 a torn append");
    std::fs::write(&seg, &bytes).unwrap();
    let db = Engine::open(dir.path()).unwrap();
    assert_eq!(db.stats().torn_tail_bytes, 17);
    assert_eq!(db.stats().lost_found_files, 1);
    drop(db);
    let saved = lost_found::list(dir.path()).unwrap();
    let back = std::fs::read(dir.path().join("lost+found").join(&saved[0].name)).unwrap();
    assert_eq!(back, b"\x01\x02\x03 a torn append");
}

/// Review item 5: a FIFO in place of a store file hung every read command.
#[test]
fn special_files_are_refused_not_read() {
    for name in ["segment.sqs", "index.sqm"] {
        let dir = fast_tempdir();
        batches(dir.path(), 1, 2);
        let path = dir.path().join(name);
        std::fs::remove_file(&path).unwrap();
        let ok = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mkfifo");
        let r = Engine::open_read_only(dir.path());
        assert!(matches!(r, Err(Error::NotRegular { .. })), "{name}: {r:?}");
        assert!(matches!(
            verify(dir.path(), &mut |_, _| {}),
            Err(Error::NotRegular { .. })
        ));
    }
    // A FIFO as the lock file: a writer's open is refused, not hung.
    let dir = fast_tempdir();
    batches(dir.path(), 1, 2);
    std::fs::remove_file(dir.path().join("LOCK")).unwrap();
    let ok = std::process::Command::new("mkfifo")
        .arg(dir.path().join("LOCK"))
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo");
    assert!(matches!(
        Engine::open(dir.path()),
        Err(Error::NotRegular { .. })
    ));
    let dir = fast_tempdir();
    std::fs::create_dir(dir.path().join("segment.sqs")).unwrap();
    assert!(matches!(
        Engine::open_read_only(dir.path()),
        Err(Error::NotRegular { .. })
    ));
}

/// Review item 6: an index header claiming 2^28 slots over a sparse file was trusted. In index
/// format 3 the same forgery is a manifest (with a valid crc) claiming a run of 2^40 entries, or
/// a version-2 table beside no manifest: neither is walked nor allocated, both are rebuilt.
#[test]
fn a_forged_huge_index_is_not_walked() {
    let dir = fast_tempdir();
    batches(dir.path(), 1, 4);
    let man = dir.path().join("index.sqm");
    let mut m = std::fs::read(&man).unwrap();
    let n = m.len();
    m[80 + 32..80 + 40].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let crc = crc32fast::hash(&m[..n - 4]);
    m[n - 4..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&man, &m).unwrap();
    let db = Engine::open_read_only(dir.path()).unwrap();
    assert!(db.stats().index_rebuilt);
    assert_eq!(db.keys().unwrap().len(), 4);
    assert!(db.get("key-003").unwrap().is_some());
    drop(db);

    std::fs::remove_file(&man).unwrap();
    let idx = dir.path().join("index.sqi");
    let mut head = vec![0u8; 4096];
    head[0..8].copy_from_slice(b"\x89SQIDX\r\n");
    head[8..12].copy_from_slice(&1u32.to_le_bytes());
    let seg = std::fs::read(dir.path().join("segment.sqs")).unwrap();
    head[16..24].copy_from_slice(&seg[16..24]);
    head[24..32].copy_from_slice(&32u64.to_le_bytes());
    head[32..40].copy_from_slice(&(1u64 << 28).to_le_bytes());
    let crc = crc32fast::hash(&head[0..124]);
    head[124..128].copy_from_slice(&crc.to_le_bytes());
    let f = std::fs::File::create(&idx).unwrap();
    f.set_len(4096 + 32 * (1u64 << 28)).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &head, 0).unwrap();
    drop(f);
    let db = Engine::open_read_only(dir.path()).unwrap();
    assert!(db.stats().index_rebuilt);
    assert_eq!(db.keys().unwrap().len(), 4);
    assert!(db.get("key-003").unwrap().is_some());
}

/// Review item 3: `verify` beside a live writer reported false damage.
#[test]
fn verify_beside_a_live_writer_reports_no_damage() {
    let dir = fast_tempdir();
    let db = Config::new(dir.path())
        .durability(Durability::Buffered)
        .checkpoint_every(64, 1 << 30)
        .open()
        .unwrap();
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for i in 0..3000u64 {
                let k = format!("w{}", i % 200);
                db.set(&k, &value_for(&k, i, 100 + (i as usize % 900)))
                    .unwrap();
                if i % 97 == 0 {
                    db.sync().unwrap();
                }
            }
        });
        let mut runs = 0;
        while !writer.is_finished() || runs < 5 {
            let r = verify(dir.path(), &mut |_, _| {}).unwrap();
            assert!(r.damaged.is_empty(), "run {runs}: {:?}", r.damaged);
            assert!(r.live_writer);
            runs += 1;
        }
        writer.join().unwrap();
    });
    db.close().unwrap();
    let r = verify(dir.path(), &mut |_, _| {}).unwrap();
    assert!(!r.is_corrupt() && r.torn_tail.is_none() && r.index == IndexCheck::Consistent);
}

/// The crash-suite scenario that would have caught item 1, randomised: stores of several
/// batches (Fsync, or Buffered with syncs), each closed or abandoned; one flipped byte in a synced
/// record; the index deleted, damaged or kept; then the read-write open every command does,
/// `verify`, and `repair`. Counts acknowledged records checked and lost (must be 0) and records
/// damaged beyond the one hit (must be 0).
#[test]
fn random_flips_in_synced_data_never_lose_another_record() {
    let (mut checked, mut lost, mut collateral) = (0u64, 0u64, 0u64);
    for seed in 0..100u64 {
        let mut rng = Rng(seed);
        let dir = fast_tempdir();
        let fsync = rng.chance(50);
        let n_batches = 2 + rng.below(3);
        let per = 5 + rng.below(20);
        let mut newest: std::collections::BTreeMap<String, u64> = Default::default();
        let mut extents: Vec<Extent> = Vec::new();
        for b in 0..n_batches {
            let db = Config::new(dir.path())
                .durability(if fsync {
                    Durability::Fsync
                } else {
                    Durability::Buffered
                })
                .open()
                .unwrap();
            for i in 0..per {
                if !rng.chance(70) {
                    continue;
                }
                let k = format!("key-{i:03}");
                let value = value_for(&k, b, 50 + rng.below(400) as usize);
                db.set(&k, &value).unwrap();
                let end = db.stats().segment_len;
                // The record ends the append (a sync mark may lead it).
                let len = (24 + k.len() + value.len()) as u64;
                extents.push((end - len, len, k.clone(), b));
                newest.insert(k, b);
            }
            if !fsync {
                db.sync().unwrap();
            }
            if b + 1 < n_batches || rng.chance(50) {
                db.close().unwrap();
            } else {
                // Killed after the last acknowledged write: its sync is the only proof.
                db.abandon();
            }
        }
        // Flip a byte in a synced record that is the newest of its key, anywhere but the very
        // last append of an abandoned session (which only the index could prove synced).
        let candidates: Vec<&Extent> = extents
            .iter()
            .filter(|e| newest[&e.2] == e.3)
            .filter(|e| e.3 + 1 < n_batches)
            .collect();
        let Some(victim) = candidates.get(rng.below(candidates.len() as u64) as usize) else {
            continue;
        };
        let victim = (*victim).clone();
        let flip_at = rng.below(victim.1);
        flip(dir.path(), victim.0 + flip_at);
        let index_fate = rng.below(3);
        match index_fate {
            0 => std::fs::remove_file(dir.path().join("index.sqm")).unwrap(),
            1 => std::fs::write(dir.path().join("index.sqm"), b"damaged").unwrap(),
            _ => {}
        }
        let db = Engine::open(dir.path()).unwrap();
        for (k, &v) in &newest {
            checked += 1;
            match db.get(k) {
                Ok(Some(bytes)) if version_of(k, &bytes) == Some(v) => {}
                Err(Error::Corruption { .. }) if *k == victim.2 => {}
                Err(Error::Corruption { .. }) => collateral += 1,
                other => {
                    eprintln!("seed {seed}: {k} (victim {victim:?}): {other:?}");
                    lost += 1
                }
            }
        }
        db.close().unwrap();
        let report = verify(dir.path(), &mut |_, _| {}).unwrap();
        assert!(report.damaged.len() <= 1, "seed {seed}: {report:?}");
        repair(dir.path()).unwrap();
        let after = verify(dir.path(), &mut |_, _| {}).unwrap();
        assert!(!after.is_corrupt(), "seed {seed}: {after:?}");
        let db = Engine::open_read_only(dir.path()).unwrap();
        for (k, &v) in &newest {
            if *k != victim.2 {
                let got = db.get(k).unwrap();
                assert_eq!(
                    got.and_then(|b| version_of(k, &b)),
                    Some(v),
                    "seed {seed}: {k}"
                );
            }
        }
    }
    eprintln!(
        "acknowledged records checked: {checked}, lost: {lost}, damaged beyond the hit: {collateral}"
    );
    assert!(checked > 500);
    assert_eq!(lost, 0);
    assert_eq!(collateral, 0);
}

/// Compaction refuses a symlinked segment rather than replacing the link with a regular file
/// and leaving its target stale.
#[test]
fn compaction_refuses_a_symlinked_segment() {
    let real = fast_tempdir();
    batches(real.path(), 2, 3);
    let linked = fast_tempdir();
    for name in ["segment.sqs", "index.sqm"] {
        std::os::unix::fs::symlink(real.path().join(name), linked.path().join(name)).unwrap();
    }
    let db = Engine::open(linked.path()).unwrap();
    assert!(db.get("key-001").unwrap().is_some());
    let err = db.compact().unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    drop(db);
    assert!(
        std::fs::symlink_metadata(linked.path().join("segment.sqs"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// A 0-byte segment is damage to every command that may not create a store (it used to be
/// silently re-initialised by `rm` and `compact`, dropping whatever index named its records).
#[test]
fn an_empty_segment_is_not_reinitialised_by_maintenance_opens() {
    let dir = fast_tempdir();
    batches(dir.path(), 1, 3);
    std::fs::write(dir.path().join("segment.sqs"), b"").unwrap();
    for read_only in [true, false] {
        let r = Config::new(dir.path())
            .create(false)
            .read_only(read_only)
            .open();
        assert!(matches!(r, Err(Error::Corruption { .. })), "{r:?}");
    }
    assert_eq!(
        std::fs::metadata(dir.path().join("segment.sqs"))
            .unwrap()
            .len(),
        0
    );
}

type KvModel = std::collections::BTreeMap<String, Vec<u8>>;

/// `n` operations on keys `key-0000`..`key-<space>` (one in 8 a delete), applied to `model`.
fn ops(db: &Engine, model: &mut KvModel, rng: &mut Rng, n: u64, space: u64, version: u64) {
    for i in 0..n {
        let k = format!("key-{:04}", rng.below(space));
        if rng.chance(12) {
            db.delete(&k).unwrap();
            model.remove(&k);
        } else {
            let v = value_for(&k, version * 10_000 + i, 20 + rng.below(80) as usize);
            db.set(&k, &v).unwrap();
            model.insert(k, v);
        }
    }
}

/// The run files in `dir` and the run count the manifest states.
fn run_files(dir: &Path) -> (usize, usize) {
    let runs = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sqr")
        })
        .count();
    let m = std::fs::read(dir.join("index.sqm")).unwrap();
    (
        runs,
        u32::from_le_bytes(m[72..76].try_into().unwrap()) as usize,
    )
}

fn check_model(dir: &Path, model: &KvModel, what: &str) {
    for read_only in [true, false] {
        let db = Config::new(dir).read_only(read_only).open().unwrap();
        for (k, v) in model {
            let got = db.get(k).unwrap_or_else(|e| panic!("{what}: {k}: {e}"));
            assert_eq!(got.as_deref(), Some(v.as_slice()), "{what}: {k}");
        }
        assert_eq!(
            db.keys().unwrap(),
            model.keys().cloned().collect::<Vec<_>>(),
            "{what}"
        );
        assert_eq!(db.len() as usize, model.len(), "{what}");
        if !read_only {
            db.close().unwrap();
        }
    }
}

/// Index format 3: a crash (the process dying) at every step of the checkpoint protocol, for
/// every kind of checkpoint (the first base run, a new delta, a merge of the deltas, a merge into
/// the base, the conversion of a version-2 `index.sqi`), loses no acknowledged write, never
/// serves a deleted key, and leaves a store that opens read-only and read-write, checkpoints
/// again, and ends with exactly the runs its manifest names. A version-2 table is still there
/// after every crash point (it is deleted only after the manifest replacing it is durable).
#[test]
fn a_crash_at_every_checkpoint_step_loses_nothing() {
    use squirrel_store::CheckpointCrash as C;
    let points = [
        C::AfterSegmentSync,
        C::AfterRunWritten,
        C::AfterRunDurable,
        C::AfterManifestTmp,
        C::BeforeCleanup,
    ];
    let open = |dir: &Path| {
        Config::new(dir)
            .durability(Durability::Buffered)
            .checkpoint_every(1_000_000, u64::MAX)
            .open()
            .unwrap()
    };
    for scenario in [
        "first base",
        "delta",
        "merge deltas",
        "merge into base",
        "convert v2",
    ] {
        for point in points {
            let what = format!("{scenario} / {point:?}");
            let dir = fast_tempdir();
            let mut model = KvModel::new();
            let mut rng = Rng(7);
            let db = match scenario {
                "convert v2" => {
                    // A version-2 store: a v3 store published to file:// is one.
                    let src = fast_tempdir();
                    let v3 = open(src.path());
                    ops(&v3, &mut model, &mut rng, 300, 300, 0);
                    v3.close().unwrap();
                    let url = format!("file://{}", dir.path().display());
                    squirrel_store::remote::push(
                        src.path(),
                        &url,
                        squirrel_store::remote::RemoteOptions::new(),
                    )
                    .unwrap();
                    std::fs::remove_file(dir.path().join("store.json")).unwrap();
                    assert!(dir.path().join("index.sqi").exists());
                    let db = open(dir.path());
                    ops(&db, &mut model, &mut rng, 30, 320, 1);
                    db
                }
                _ => {
                    let db = open(dir.path());
                    if scenario == "first base" {
                        ops(&db, &mut model, &mut rng, 60, 80, 0);
                    } else {
                        ops(&db, &mut model, &mut rng, 1500, 800, 0);
                        db.checkpoint().unwrap();
                        let (pending, rounds) = match scenario {
                            "delta" => (20, 0),
                            "merge deltas" => (20, 2),
                            _ => (200, 0),
                        };
                        for r in 0..rounds {
                            ops(&db, &mut model, &mut rng, 20, 850, 1 + r);
                            db.checkpoint().unwrap();
                        }
                        assert_eq!(
                            run_files(dir.path()),
                            (1 + rounds as usize, 1 + rounds as usize)
                        );
                        ops(&db, &mut model, &mut rng, pending, 850, 9);
                    }
                    db
                }
            };
            assert!(db.checkpoint_crashing_at(point).is_err(), "{what}");
            db.abandon();
            if scenario == "convert v2" {
                assert!(
                    dir.path().join("index.sqi").exists(),
                    "{what}: v2 table kept"
                );
            }
            check_model(dir.path(), &model, &what);
            // The store goes on: more writes, a checkpoint, a clean close.
            let db = open(dir.path());
            ops(&db, &mut model, &mut rng, 40, 900, 20);
            db.checkpoint().unwrap();
            db.close().unwrap();
            check_model(dir.path(), &model, &what);
            let (files, named) = run_files(dir.path());
            assert_eq!(files, named, "{what}: only named runs are left");
            assert!(!dir.path().join("index.sqi").exists(), "{what}");
            assert!(!dir.path().join("index.sqm.tmp").exists(), "{what}");
        }
    }
}
