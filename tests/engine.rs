//! The engine's contract: set/get/delete/keys, reopen, torn tails, limits, locks, statistics.

use std::fs::OpenOptions;
use std::io::Write;

use squirrel_store::{Config, Durability, Engine, Error};
use tempfile::tempdir;

fn buffered(dir: &std::path::Path) -> Engine {
    Config::new(dir)
        .durability(Durability::Buffered)
        .open()
        .expect("open")
}

#[test]
fn set_get_overwrite_delete() {
    let dir = tempdir().unwrap();
    let db = buffered(dir.path());
    assert!(db.is_empty());
    db.set("a", b"one").unwrap();
    db.set("b", b"two").unwrap();
    db.set("a", b"uno").unwrap();
    assert_eq!(&*db.get("a").unwrap().unwrap(), b"uno");
    assert_eq!(&*db.get("b").unwrap().unwrap(), b"two");
    assert!(db.get("c").unwrap().is_none());
    assert!(db.contains("b").unwrap());
    assert_eq!(db.len(), 2);
    assert!(db.delete("b").unwrap());
    assert!(!db.delete("b").unwrap());
    assert!(db.get("b").unwrap().is_none());
    assert_eq!(db.keys().unwrap(), vec!["a".to_string()]);
    let s = db.stats();
    assert_eq!(s.live_records, 1);
    // "one" overwritten, "two" deleted, plus the tombstone.
    assert_eq!(s.dead_records, 3);
    assert!(s.dead_ratio() > 0.5);
}

#[test]
fn empty_values_and_codecs() {
    let dir = tempdir().unwrap();
    let db = buffered(dir.path());
    db.set("empty", b"").unwrap();
    db.put("coded", 7, b"x").unwrap();
    assert_eq!(db.get("empty").unwrap().unwrap().len(), 0);
    let v = db.get("coded").unwrap().unwrap();
    assert_eq!(v.codec(), 7);
    drop(db);
    let db = buffered(dir.path());
    assert_eq!(db.get("coded").unwrap().unwrap().codec(), 7);
}

#[test]
fn reopen_keeps_everything_across_checkpoints() {
    let dir = tempdir().unwrap();
    {
        let db = Config::new(dir.path())
            .durability(Durability::Buffered)
            .checkpoint_every(100, u64::MAX)
            .open()
            .unwrap();
        for i in 0..5000u32 {
            db.set(&format!("key{i:05}"), &i.to_le_bytes()).unwrap();
        }
        for i in (0..5000u32).step_by(3) {
            db.delete(&format!("key{i:05}")).unwrap();
        }
        for i in (0..5000u32).step_by(7) {
            db.set(&format!("key{i:05}"), b"again").unwrap();
        }
        assert!(db.stats().overlay_records < 100);
        // Leave the tail un-checkpointed: no close, but drop checkpoints; so forget the handle's
        // effect by checking the replay on a handle that closes normally.
    }
    let db = buffered(dir.path());
    assert_eq!(
        db.stats().replayed_records,
        0,
        "drop checkpointed everything"
    );
    let expect = |i: u32| -> Option<Vec<u8>> {
        if i.is_multiple_of(7) {
            Some(b"again".to_vec())
        } else if i.is_multiple_of(3) {
            None
        } else {
            Some(i.to_le_bytes().to_vec())
        }
    };
    let mut live = 0;
    for i in 0..5000u32 {
        let got = db.get(&format!("key{i:05}")).unwrap().map(|v| v.to_vec());
        assert_eq!(got, expect(i), "key{i:05}");
        live += usize::from(got.is_some());
    }
    assert_eq!(db.len() as usize, live);
    assert_eq!(db.keys().unwrap().len(), live);
    let keys = db.keys().unwrap();
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "keys are sorted");
}

#[test]
fn set_many_and_get_many() {
    let dir = tempdir().unwrap();
    let db = Config::new(dir.path()).open().unwrap();
    let items: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| (format!("k{i}"), vec![i as u8; i]))
        .collect();
    db.set_many(items.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .unwrap();
    let keys: Vec<&str> = items
        .iter()
        .map(|(k, _)| k.as_str())
        .chain(["missing"])
        .collect();
    let got = db.get_many(&keys).unwrap();
    for (i, (_, v)) in items.iter().enumerate() {
        assert_eq!(got[i].as_deref(), Some(v.as_slice()));
    }
    assert!(got[100].is_none());
}

#[test]
fn limits_are_typed_errors() {
    let dir = tempdir().unwrap();
    let db = Config::new(dir.path()).max_value_len(10).open().unwrap();
    assert!(matches!(db.set("", b"x"), Err(Error::InvalidKey { .. })));
    let long = "k".repeat(1025);
    assert!(matches!(db.set(&long, b"x"), Err(Error::InvalidKey { .. })));
    assert!(matches!(db.get(&long), Err(Error::InvalidKey { .. })));
    db.set(&"k".repeat(1024), b"x").unwrap();
    assert!(matches!(
        db.set("big", &[0; 11]),
        Err(Error::ValueTooLarge { len: 11, .. })
    ));
}

#[test]
fn second_writer_is_refused_and_read_only_refuses_writes() {
    let dir = tempdir().unwrap();
    let db = buffered(dir.path());
    db.set("a", b"1").unwrap();
    assert!(matches!(
        Engine::open(dir.path()),
        Err(Error::Locked { .. })
    ));
    let ro = Engine::open_read_only(dir.path()).unwrap();
    assert!(matches!(ro.set("b", b"2"), Err(Error::ReadOnly { .. })));
    assert_eq!(&*ro.get("a").unwrap().unwrap(), b"1");
    db.set("b", b"2").unwrap();
    assert!(ro.get("b").unwrap().is_none(), "not before refresh");
    ro.refresh().unwrap();
    assert_eq!(&*ro.get("b").unwrap().unwrap(), b"2");
    drop(db);
    // The lock dies with its handle.
    Engine::open(dir.path()).unwrap();
}

#[test]
fn read_only_open_of_missing_store_is_not_found() {
    let dir = tempdir().unwrap();
    let missing = dir.path().join("nope");
    assert!(matches!(
        Engine::open_read_only(&missing),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        Config::new(&missing).create(false).open(),
        Err(Error::NotFound { .. })
    ));
}

fn segment_path(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("segment.sqs")
}

#[test]
fn torn_tail_is_cut_and_reported() {
    let dir = tempdir().unwrap();
    let end;
    {
        let db = buffered(dir.path());
        db.set("a", b"first").unwrap();
        db.checkpoint().unwrap();
        db.set("b", b"second").unwrap();
        end = db.stats().segment_len;
        std::mem::forget(db); // a crash: no checkpoint on drop
    }
    // Simulate a torn write: half a record after the last good one.
    let (head_and_more, _) = (vec![7u8; 20], ());
    let f = OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path()))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &head_and_more, end).unwrap();
    drop(f);
    // The forgotten handle still holds the lock in this process: the lock is per open file, so
    // open read-only first, which ignores the tail.
    let ro = Engine::open_read_only(dir.path()).unwrap();
    assert_eq!(ro.stats().torn_tail_bytes, 20);
    assert_eq!(&*ro.get("b").unwrap().unwrap(), b"second");
}

#[test]
fn wrong_magic_and_future_version_are_typed_errors() {
    let dir = tempdir().unwrap();
    drop(buffered(dir.path()));
    let path = segment_path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8] = 9;
    // A real future header (its checksum matches): a typed version error.
    let crc = crc32fast::hash(&bytes[0..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        Engine::open(dir.path()),
        Err(Error::UnsupportedVersion { found: 9, .. })
    ));
    // A flipped version byte without a matching checksum is damage, not a future version.
    bytes[8] = 17;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        Engine::open(dir.path()),
        Err(Error::Corruption { .. })
    ));
    std::fs::write(&path, b"hello, this is not a store at all, no").unwrap();
    assert!(matches!(
        Engine::open(dir.path()),
        Err(Error::BadMagic { .. })
    ));
    std::fs::write(&path, b"short").unwrap();
    assert!(matches!(
        Engine::open(dir.path()),
        Err(Error::Corruption { .. })
    ));
}

#[test]
fn damaged_or_missing_index_is_rebuilt() {
    let dir = tempdir().unwrap();
    {
        let db = buffered(dir.path());
        for i in 0..300 {
            db.set(&format!("k{i}"), format!("v{i}").as_bytes())
                .unwrap();
        }
    }
    let idx = dir.path().join("index.sqm");
    // Garbage index.
    let mut f = OpenOptions::new().write(true).open(&idx).unwrap();
    f.write_all(b"garbage!").unwrap();
    drop(f);
    let db = buffered(dir.path());
    assert!(db.stats().index_rebuilt);
    assert_eq!(&*db.get("k42").unwrap().unwrap(), b"v42");
    drop(db);
    std::fs::remove_file(&idx).unwrap();
    let db = buffered(dir.path());
    assert_eq!(db.len(), 300);
    assert_eq!(&*db.get("k299").unwrap().unwrap(), b"v299");
    drop(db);
    // Damaged entries in the base run (its header and crc table are intact, so open trusts the
    // file): the first lookup that meets one fails its block's crc and rebuilds the index from
    // the segment, so every key still reads, none vanishes.
    for flip in [0usize, 5, 9, 13, 15] {
        let run = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "sqr"))
            .expect("a base run");
        let mut bytes = std::fs::read(&run).unwrap();
        for entry in (0..300).step_by(7) {
            bytes[64 + 16 * entry + flip] ^= 0x5a;
        }
        std::fs::write(&run, &bytes).unwrap();
        for read_only in [true, false] {
            let db = Config::new(dir.path()).read_only(read_only).open().unwrap();
            for i in 0..300 {
                let v = db.get(&format!("k{i}")).unwrap();
                assert_eq!(
                    v.as_deref(),
                    Some(format!("v{i}").as_bytes()),
                    "k{i} flip {flip}"
                );
            }
            assert_eq!(db.keys().unwrap().len(), 300);
        }
    }
}

#[test]
fn flipped_value_byte_is_a_corruption_error_naming_the_key() {
    let dir = tempdir().unwrap();
    {
        let db = buffered(dir.path());
        db.set("good", b"fine value").unwrap();
        db.set("bad", b"soon to be damaged").unwrap();
        db.set("also-good", b"fine too").unwrap();
    }
    let path = segment_path(dir.path());
    let mut bytes = std::fs::read(&path).unwrap();
    let pos = bytes.windows(4).position(|w| w == b"soon").unwrap();
    bytes[pos] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let db = buffered(dir.path());
    match db.get("bad") {
        Err(Error::Corruption { key: Some(k), .. }) => assert_eq!(k, "bad"),
        other => panic!("expected corruption, got {other:?}"),
    }
    assert_eq!(&*db.get("good").unwrap().unwrap(), b"fine value");
    assert_eq!(&*db.get("also-good").unwrap().unwrap(), b"fine too");
}

#[test]
fn engine_is_send_sync_and_clone() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Engine>();
    fn assert_send<T: Send + Sync>() {}
    assert_send::<squirrel_store::ValueRef>();
}

#[test]
fn iter_yields_every_live_pair_once_in_segment_order() {
    let dir = tempdir().unwrap();
    let db = Config::new(dir.path())
        .durability(Durability::Buffered)
        .checkpoint_every(7, u64::MAX)
        .open()
        .unwrap();
    for i in 0..50 {
        db.set(&format!("k{i:02}"), format!("v{i}").as_bytes())
            .unwrap();
    }
    for i in (0..50).step_by(4) {
        db.set(&format!("k{i:02}"), b"again").unwrap();
    }
    for i in (1..50).step_by(5) {
        db.delete(&format!("k{i:02}")).unwrap();
    }
    let mut seen: Vec<(String, Vec<u8>)> = db
        .iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k, v.to_vec())
        })
        .collect();
    assert_eq!(seen.len() as u64, db.len());
    seen.sort();
    let keys: Vec<String> = seen.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(keys, db.keys().unwrap());
    for (k, v) in &seen {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(v.as_slice()));
    }
}

/// Counts syncs and records the length of every segment write.
#[derive(Debug)]
struct Counting {
    inner: squirrel_store::FileBackend,
    syncs: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sizes: std::sync::Arc<parking_lot::Mutex<Vec<usize>>>,
}

impl squirrel_store::Backend for Counting {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        self.sizes.lock().push(data.len());
        self.inner.write_at(data, offset)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.sync_data()
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.discard(offset, len)
    }
}

#[test]
fn a_clean_close_makes_the_next_open_write_nothing_and_a_crash_does_not() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tempdir().unwrap();
    let open = |syncs: &Arc<AtomicU64>| {
        let s = syncs.clone();
        Config::new(dir.path())
            .durability(Durability::Buffered)
            .wrap_backend(move |fb| {
                Box::new(Counting {
                    inner: fb,
                    syncs: s.clone(),
                    sizes: Default::default(),
                })
            })
            .open()
            .unwrap()
    };
    let syncs = Arc::new(AtomicU64::new(0));
    let db = open(&syncs);
    db.set("a", b"1").unwrap();
    db.close().unwrap();
    let syncs = Arc::new(AtomicU64::new(0));
    let db = open(&syncs);
    assert_eq!(
        syncs.load(Ordering::SeqCst),
        0,
        "nothing to clean up after a clean close"
    );
    // This session appends, then dies: the next open must clean up after the last record.
    db.set("b", b"2").unwrap();
    let end = db.stats().segment_len;
    db.abandon();
    let seg = dir.path().join("segment.sqs");
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xEE; 40], end).unwrap();
    drop(f);
    let syncs = Arc::new(AtomicU64::new(0));
    let db = open(&syncs);
    assert!(
        syncs.load(Ordering::SeqCst) > 0,
        "the torn tail was cleaned up and synced"
    );
    assert_eq!(db.stats().torn_tail_bytes, 40);
    assert_eq!(&*db.get("b").unwrap().unwrap(), b"2");
    let bytes = std::fs::read(&seg).unwrap();
    assert!(bytes[end as usize..].iter().all(|&b| b == 0));
}

/// Flips one byte of the segment file at `offset` in place (what a failing disk or a stray
/// writer would do; the library itself never rewrites a record).
fn flip_byte(dir: &std::path::Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(segment_path(dir))
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], offset).unwrap();
}

/// The value checksum of a long record runs once per mapping: a later get through the same
/// mapping trusts it (the documented limit), a new handle checks it again. Short records are
/// checked on every get.
#[test]
fn long_records_are_checked_once_per_mapping_short_ones_every_time() {
    let dir = tempdir().unwrap();
    let long: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let short = vec![5u8; 1000];
    {
        let db = buffered(dir.path());
        db.set("long", &long).unwrap();
        db.set("short", &short).unwrap();
        db.close().unwrap();
    }
    // Record layout: 32-byte segment header, then "long" (24-byte header, 4-byte key, value),
    // then "short".
    let long_value_at = 32 + 24 + 4;
    let short_value_at = long_value_at + long.len() as u64 + 24 + 5;
    let db = Config::new(dir.path()).read_only(true).open().unwrap();
    assert_eq!(&*db.get("long").unwrap().unwrap(), &long[..]);
    assert_eq!(&*db.get("short").unwrap().unwrap(), &short[..]);
    flip_byte(dir.path(), long_value_at + 150_000);
    flip_byte(dir.path(), short_value_at + 10);
    // Same mapping: the long record was checked already and is not checked again; the short
    // one is checked again and refused.
    let served = db.get("long").unwrap().unwrap();
    assert_eq!(served[150_000], long[150_000] ^ 0x40);
    assert!(matches!(db.get("short"), Err(Error::Corruption { .. })));
    // A read-only handle's refresh maps the file anew, and checks again.
    db.refresh().unwrap();
    assert!(matches!(db.get("long"), Err(Error::Corruption { .. })));
    // A new handle (a new mapping) remembers nothing: both are refused.
    let again = Config::new(dir.path()).read_only(true).open().unwrap();
    assert!(matches!(again.get("long"), Err(Error::Corruption { .. })));
    assert!(matches!(again.get("short"), Err(Error::Corruption { .. })));
    // A long record damaged before its first get is refused through any mapping, every time.
    assert!(matches!(again.get("long"), Err(Error::Corruption { .. })));
}

/// A record checked before the writer grew the file (and so mapped it anew) is still served,
/// and one first read after the growth is still checked.
#[test]
fn growth_keeps_what_was_checked_and_checks_what_was_not() {
    let dir = tempdir().unwrap();
    let db = buffered(dir.path());
    let a: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    db.set("a", &a).unwrap();
    assert_eq!(&*db.get("a").unwrap().unwrap(), &a[..]);
    let before = db.stats().segment_file_len;
    let big = vec![9u8; 3 << 20];
    db.set("b", &big).unwrap();
    assert!(db.stats().segment_file_len > before, "the file grew");
    assert_eq!(&*db.get("a").unwrap().unwrap(), &a[..]);
    // "b" starts right after "a": damage it before its first get.
    let b_value_at = 32 + 24 + 1 + a.len() as u64 + 24 + 1;
    flip_byte(dir.path(), b_value_at + 2_000_000);
    assert!(matches!(db.get("b"), Err(Error::Corruption { .. })));
    assert!(matches!(db.get("b"), Err(Error::Corruption { .. })));
}

#[test]
fn a_long_batch_is_written_without_a_short_remainder() {
    // A short write goes through the backend's map, whose page faults read ahead and zero the
    // pages after it, which the next long write then overwrites: a bulk load of many batches
    // zeroed its whole segment once for nothing. A batch's remainder goes out with its last
    // long write instead.
    let dir = tempdir().unwrap();
    let sizes = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let s = sizes.clone();
    let db = Config::new(dir.path())
        .durability(Durability::Buffered)
        .wrap_backend(move |fb| {
            Box::new(Counting {
                inner: fb,
                syncs: Default::default(),
                sizes: s.clone(),
            })
        })
        .open()
        .unwrap();
    let value = vec![7u8; 1000];
    let keys: Vec<String> = (0..300).map(|i| format!("k{i:04}")).collect();
    sizes.lock().clear();
    db.set_many(keys.iter().map(|k| (k.as_str(), &value[..])))
        .unwrap();
    let written = sizes.lock().clone();
    // 300 records of 1029 bytes: one write past 256 KiB would leave 45 records (46 KiB) behind.
    assert_eq!(written.iter().sum::<usize>(), 300 * 1029);
    assert!(
        written.iter().all(|&n| n > 64 << 10),
        "every write of the batch is long: {written:?}"
    );
    for k in &keys {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(&value[..]));
    }
}
