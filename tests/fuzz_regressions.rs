//! Regression tests for what the fuzz targets in `fuzz/` found (issue 5).
//!
//! Each test is the minimal reproducer of one finding, written against the behaviour the crate
//! promises; each finding's cause is fixed in the crate (the fuzz targets in `fuzz/` then insist
//! on the fixed behaviour).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use squirrel_store::array::{ArrayError, NdArray};
use squirrel_store::serializer::{Codec, MessagepackSerializer, Samples, Serializer};
use squirrel_store::value::Value;

/// The system allocator, recording the largest single request (for the zstd test below).
struct PeakAlloc;

static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to `System`; only records sizes.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        PEAK.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded; `ptr` came from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        PEAK.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: forwarded; `ptr` came from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Pins: a zstd frame's claimed content size allocated up front.
///
/// Found by reading `serializer::decompress`, reproduced through `decode_shard` (mode 1, the
/// default serializer), whose allocation cap aborts on it: the frame header's content size is
/// checked only against the limit (4 GiB by default), then `Vec::with_capacity(claimed)` reserves
/// it before a byte is decoded. This 12-byte frame (magic, a single-segment header claiming
/// 0xFFFFFFFF bytes, one empty last block) makes the reader ask for 4 GiB: virtual memory under
/// overcommit, an abort (not an error) where allocations are limited (`RLIMIT_AS`, strict
/// overcommit, 32-bit targets), and a lever for any record in a store to do so. The claim may
/// size the buffer only up to what the input can plausibly produce.
#[test]
fn zstd_frame_claiming_a_huge_size_is_not_preallocated() {
    let frame = [
        0x28, 0xb5, 0x2f, 0xfd, 0xa0, 0xff, 0xff, 0xff, 0xff, 0x01, 0x00, 0x00,
    ];
    let ser = MessagepackSerializer::new();
    PEAK.store(0, Ordering::Relaxed);
    let decoded = ser.decode_payload(Codec::MsgpackZstd, &frame);
    let peak = PEAK.load(Ordering::Relaxed);
    assert!(
        decoded.is_err(),
        "the frame holds 0 bytes, not what it claims"
    );
    assert!(
        peak < 64 << 20,
        "decoding a 12-byte frame allocated {peak} bytes at once"
    );
}

/// Pins: `NdArray::len` (and `is_empty`) multiplying an unchecked shape.
///
/// Found by `decode_shard` (mode 3, and through msgpack in mode 4): an array whose dtype the
/// crate keeps as opaque text (`|O`, `|O8`, anything `parse_dtype` does not know) is built without
/// any size check, so a shape whose element count overflows `usize` is accepted; `len()` then
/// panics with "attempt to multiply with overflow" (debug, or any build with overflow checks) or
/// silently wraps (release: `[1 << 32, 1 << 32]` has `len() == 0` and `is_empty()`).
#[test]
fn ndarray_len_of_opaque_dtype_with_huge_shape_does_not_overflow() {
    // Built directly.
    let built = NdArray::new("|O", vec![1 << 40, 1 << 40], Vec::new());
    assert!(
        matches!(built, Err(ArrayError::ShapeOverflow { .. })),
        "an array whose element count overflows must be refused, got {built:?}"
    );
    // Read from a sample: the msgpack-numpy map msgpack-numpy would write, with that shape.
    let map = Value::Map(vec![
        (Value::Bin(b"nd".into()), Value::Bool(true)),
        (Value::Bin(b"type".into()), Value::Str("|O".into())),
        (Value::Bin(b"kind".into()), Value::Bin(Default::default())),
        (
            Value::Bin(b"shape".into()),
            Value::Array(vec![Value::from(1u64 << 40), Value::from(1u64 << 40)]),
        ),
        (Value::Bin(b"data".into()), Value::Bin(Default::default())),
    ]);
    assert!(
        matches!(map.to_ndarray(), Err(ArrayError::ShapeOverflow { .. })),
        "Value::to_ndarray must refuse the shape"
    );
    let payload = map.to_bytes().expect("encode");
    let decoded: Vec<_> = Samples::<NdArray>::new(&payload).collect();
    assert!(
        decoded.iter().all(Result::is_err),
        "a typed read must refuse the shape"
    );
}

mod engine {
    //! Findings of `ops_model` (single byte flips after a crash) and `open_segment` (damaged and
    //! re-sealed index files) about what a damaged store serves.

    use std::os::unix::fs::FileExt;
    use std::path::Path;

    use squirrel_store::{Config, Engine, Error};

    fn flip(path: &Path, pos: u64, mask: u8) {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .expect("open");
        let mut b = [0u8];
        f.read_exact_at(&mut b, pos).expect("read");
        b[0] ^= mask;
        f.write_all_at(&b, pos).expect("write");
    }

    /// Offsets in index.sqi of the occupied slots (hash not 0 = empty, not 1 = deleted).
    fn occupied_slots(dir: &Path) -> Vec<(u64, u64, u64)> {
        let idx = std::fs::read(dir.join("index.sqi")).expect("index");
        let word = |o: usize| u64::from_le_bytes(idx[o..o + 8].try_into().expect("8 bytes"));
        (4096..idx.len())
            .step_by(32)
            .filter(|&s| word(s) > 1)
            .map(|s| (s as u64, word(s), word(s + 8)))
            .collect()
    }

    /// A store holding `b` and `c`, closed cleanly: the index names both records.
    /// A store with keys `b` (its record at offset 32) and `c`, closed cleanly, whose index is a
    /// version-2 hash table `index.sqi`: these regressions pin how damaged slots are read. The
    /// engine writes index format 3; `push` to a `file://` URL publishes a version-2 table, and
    /// the published directory (without its `store.json`) is a version-2 store.
    fn indexed_store(dir: &Path) {
        let src = tempfile::tempdir().expect("tempdir");
        let db = Config::new(src.path()).open().expect("open");
        db.set("b", b"value of b").expect("set");
        db.set("c", b"value of c").expect("set");
        db.close().expect("close");
        let url = format!("file://{}", dir.display());
        squirrel_store::remote::push(
            src.path(),
            &url,
            squirrel_store::remote::RemoteOptions::new(),
        )
        .expect("push");
        for name in ["store.json", "keys.json"] {
            std::fs::remove_file(dir.join(name)).expect("remove");
        }
        assert!(dir.join("index.sqi").exists() && !dir.join("index.sqm").exists());
    }

    /// Pins: `get` answering `Ok(None)` for a key whose indexed record has a flipped key byte.
    ///
    /// Found by `ops_model` (`Flip` of byte 81 = the key byte of an indexed record). The probe
    /// in `IndexMap::find` finds the slot (hash and slot checksum fine), sees another key at the
    /// record and takes it for a hash collision, probes on and reaches an empty slot: the key
    /// holding a value is reported absent, silently. It must be an error naming the damage.
    #[test]
    fn flipped_key_byte_of_an_indexed_record_is_an_error_not_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        indexed_store(dir.path());
        // The first record starts at 32; its key byte "b" at 32 + 24. 'b' ^ 4 = 'f'.
        flip(&dir.path().join("segment.sqs"), 32 + 24, 0x04);
        for read_only in [true, false] {
            let db = Config::new(dir.path())
                .read_only(read_only)
                .open()
                .expect("open");
            let got = db.get("b");
            assert!(
                matches!(got, Err(Error::Corruption { .. })),
                "read_only {read_only}: get(b) over a damaged record returned {got:?}"
            );
            assert_eq!(&*db.get("c").expect("get").expect("present"), b"value of c");
        }
    }

    /// Pins: `keys()` listing a key that `get` then calls absent.
    ///
    /// Found by `open_segment` (mode 4, a slot's hash changed and re-sealed) and by `ops_model`
    /// (the flipped key byte above): `Engine::keys` reads the key at each slot's location (header
    /// checked, key bytes not: they are only under the record's full crc) and never checks that
    /// it hashes to the slot's hash. Here it lists "f", a key that was never written.
    #[test]
    fn keys_never_lists_a_key_get_calls_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        indexed_store(dir.path());
        flip(&dir.path().join("segment.sqs"), 32 + 24, 0x04);
        let db = Engine::open_read_only(dir.path()).expect("open");
        if let Ok(keys) = db.keys() {
            for k in &keys {
                let got = db.get(k);
                assert!(
                    !matches!(got, Ok(None)),
                    "keys() = {keys:?} lists {k:?}, but get({k:?}) says it is absent"
                );
            }
        }
    }

    /// Pins: `get` answering `Ok(None)` when the hash field of the key's slot is damaged (a
    /// probe that compared hashes first and checked a slot's checksum only on a match skipped a
    /// slot whose hash changed like any other key's). Passes on the current engine; kept as a
    /// regression test for the `ops_model` index flips.
    #[test]
    fn flipped_slot_hash_is_an_error_not_absent() {
        let dir = tempfile::tempdir().expect("tempdir");
        indexed_store(dir.path());
        // The slot of "b" (its record is at offset 32).
        let (slot, _, _) = occupied_slots(dir.path())
            .into_iter()
            .find(|&(_, _, offset)| offset == 32)
            .expect("the slot of b");
        flip(&dir.path().join("index.sqi"), slot, 0x01);
        for read_only in [true, false] {
            let db = Config::new(dir.path())
                .read_only(read_only)
                .open()
                .expect("open");
            let got = db.get("b");
            assert!(
                !matches!(got, Ok(None)),
                "read_only {read_only}: get(b) with a damaged slot says absent"
            );
            if let Ok(Some(v)) = got {
                assert_eq!(&*v, b"value of b");
            }
        }
    }

    /// Pins: compaction over an index with a damaged slot deadlocks (and must not drop the key).
    ///
    /// Found while writing these tests, then by `open_segment`: `Inner::compact`
    /// (src/engine/compaction.rs) holds `self.compaction.lock()` and, when `IndexMap::entries` reports a
    /// slot failing its checksum, repairs the index and calls `self.compact(..)` again, which
    /// waits forever for the lock it holds (parking_lot mutexes are not reentrant). The test
    /// runs the compaction in a thread and fails after 20 s instead of hanging.
    #[test]
    fn compaction_over_a_damaged_slot_returns_and_keeps_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        indexed_store(dir.path());
        let (slot, _, _) = occupied_slots(dir.path())
            .into_iter()
            .find(|&(_, _, offset)| offset == 32)
            .expect("the slot of b");
        // A byte of the slot's offset field: the slot checksum fails.
        flip(&dir.path().join("index.sqi"), slot + 8, 0x01);
        let path = dir.path().to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let db = Config::new(&path).open().expect("open");
            let r = db.compact().map(|_| ()).map_err(|e| e.to_string());
            let _ = tx.send(r);
        });
        let compacted = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("compact() did not return within 20 s: it deadlocks");
        squirrel_store::rebuild_index(dir.path()).expect("rebuild the index from the segment");
        let db = Engine::open(dir.path()).expect("open");
        assert_eq!(
            db.get("b").expect("get").as_deref(),
            Some(&b"value of b"[..]),
            "after compaction ({compacted:?}), b is gone from the segment"
        );
    }

    /// Pins: compaction copying the old record of a deleted key back as live.
    ///
    /// Found by `open_segment` (mode 6: two slots' hashes changed, slot checksums re-sealed).
    /// The tombstone of "b" after the checkpoint is replayed at open; its probe (by b's hash)
    /// misses the slot whose hash changed, so the checkpoint before compaction removes nothing,
    /// and compaction copies every slot `IndexMap::entries` returns without checking that the
    /// record's key hashes to the slot's hash: b's old record lands in the new segment, live.
    /// The trigger needs a slot with a valid checksum over a wrong hash (a crafted or
    /// mis-written index, not a random flip), but the index is derived: whatever it says, the
    /// segment alone must decide what exists.
    #[test]
    fn compaction_never_resurrects_a_deleted_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        indexed_store(dir.path());
        let db = Config::new(dir.path()).open().expect("open");
        assert!(db.delete("b").expect("delete"));
        db.abandon(); // the tombstone stays in the tail after the (version-2) checkpoint
        let (slot, hash, _) = occupied_slots(dir.path())
            .into_iter()
            .find(|&(_, _, offset)| offset == 32)
            .expect("the slot of b");
        // Another hash for the slot, re-sealed with a valid slot checksum.
        let idx = dir.path().join("index.sqi");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&idx)
            .expect("index");
        f.write_all_at(&(hash ^ 0x80).to_le_bytes(), slot)
            .expect("write");
        let mut body = [0u8; 28];
        f.read_exact_at(&mut body, slot).expect("read");
        f.write_all_at(&crc32fast::hash(&body).to_le_bytes(), slot + 28)
            .expect("write");
        drop(f);
        let db = Config::new(dir.path()).open().expect("open");
        assert!(db.get("b").expect("get").is_none(), "b was deleted");
        let compacted = db.compact();
        drop(db);
        squirrel_store::rebuild_index(dir.path()).expect("rebuild the index from the segment");
        let db = Engine::open(dir.path()).expect("open");
        assert_eq!(
            db.get("b").expect("get").as_deref(),
            None,
            "after compaction ({compacted:?}), the deleted key b is back"
        );
    }

    /// Pins: the index header's statistics trusted in unchecked arithmetic.
    ///
    /// Found by `open_segment` (mode 4: header bytes patched, header checksum re-sealed): the
    /// header's `live_bytes` near `u64::MAX` is adopted at open, then `compact()` computes its
    /// free-space need as `live_bytes + HEADER_LEN + live_bytes / 64` (src/engine/compaction.rs,
    /// `Inner::compact`): "attempt to add with overflow" with overflow checks on, a wrapped
    /// (tiny) need without. `recovery::count` adds to the same counters per record. Statistics
    /// that no segment of this length can have must make the index unusable (rebuilt from the
    /// segment), not be computed with.
    #[test]
    fn impossible_index_statistics_are_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        indexed_store(dir.path());
        let idx = dir.path().join("index.sqi");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&idx)
            .expect("index");
        // live_bytes (header offset 56), re-sealed (header crc over bytes 0..124, at 124).
        f.write_all_at(&(u64::MAX - 7).to_le_bytes(), 56)
            .expect("write");
        let mut head = [0u8; 124];
        f.read_exact_at(&mut head, 0).expect("read");
        f.write_all_at(&crc32fast::hash(&head).to_le_bytes(), 124)
            .expect("write");
        drop(f);
        let outcome = std::panic::catch_unwind(|| {
            let db = Config::new(dir.path()).open().expect("open");
            let stats = db.stats();
            db.set("b", b"another value of b").expect("set");
            let compacted = db.compact().map(|_| ());
            (stats, compacted)
        });
        let (stats, compacted) = outcome.expect("opening, writing and compacting panicked");
        assert!(
            stats.live_bytes <= stats.segment_len,
            "the store reports {} live bytes in a {}-byte segment",
            stats.live_bytes,
            stats.segment_len
        );
        compacted.expect("compaction");
    }

    /// Pins: a later append counted as part of an earlier, torn batch, so damage to the batch
    /// silently drops acknowledged records.
    ///
    /// Found by `ops_model` (a `set_many` cut by a crash, a later `set`, then a flipped byte in
    /// the batch's first record). After the crash the batch's intact prefix ends with a record
    /// whose `CONTINUES` flag is set; the next session's lone `set` (no `FOLLOWS`) lands right
    /// after it. `segment::in_final_append` checks `FOLLOWS` only on the first intact record
    /// after the hole, then walks on while `CONTINUES` is set, so it takes the later `set` for the
    /// rest of the torn batch: a full scan (any open without a usable index) cuts everything from
    /// the damaged record on as a torn tail, acknowledged and fsynced records included, with no
    /// error. format-spec: only the last append may be cut; damage followed by a later append is
    /// `Corruption`.
    #[test]
    fn damage_in_a_torn_batch_never_drops_a_later_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = dir.path().join("segment.sqs");
        let db = Config::new(dir.path()).open().expect("open");
        db.set_many([
            ("a", &[1u8; 100][..]),
            ("b", &[2u8; 3][..]),
            ("c", &[3u8; 100][..]),
        ])
        .expect("set_many");
        db.abandon();
        // A crash during the batch's write: its third record is cut short.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("segment");
        let a_end = 32 + 24 + 1 + 100;
        let b_end = a_end + 24 + 1 + 3;
        f.set_len(b_end + 10).expect("cut");
        drop(f);
        let db = Config::new(dir.path())
            .open()
            .expect("open after the crash");
        assert_eq!(db.len(), 2, "the batch's intact prefix is kept");
        db.set("d", b"acknowledged later").expect("set");
        db.close().expect("close");
        // Damage in the first record of the old batch; the index is lost (it is derived).
        flip(&seg, 32 + 24 + 1 + 50, 0x01);
        std::fs::remove_file(dir.path().join("index.sqm")).expect("remove the index");
        for read_only in [true, false] {
            match Config::new(dir.path()).read_only(read_only).open() {
                Err(Error::Corruption { .. }) => {}
                Err(e) => panic!("read_only {read_only}: unexpected error {e}"),
                Ok(db) => {
                    assert_eq!(
                        db.get("d").expect("get").as_deref(),
                        Some(&b"acknowledged later"[..]),
                        "read_only {read_only}: an acknowledged, fsynced later append was dropped"
                    );
                    assert_eq!(db.get("b").expect("get").as_deref(), Some(&[2u8; 3][..]));
                }
            }
        }
    }

    /// Pins: statistics computed from a slot's unchecked `len`.
    ///
    /// Found by `open_segment` (mode 6: a slot's `len` field changed and re-sealed). The previous
    /// location of an overwritten key comes from its slot (`recovery::current`), whose `len` is
    /// never compared with the record's header; `recovery::count` adds it to `dead_bytes`. The
    /// engine then writes statistics no segment can have into its own clean-close header, which
    /// the next open (rightly) rejects, rebuilding the index from a full scan (and failing to open
    /// at all if the segment holds damage the index had kept out of the way).
    #[test]
    fn statistics_never_come_from_an_unchecked_slot() {
        let dir = tempfile::tempdir().expect("tempdir");
        indexed_store(dir.path());
        let (slot, _, _) = occupied_slots(dir.path())
            .into_iter()
            .find(|&(_, _, offset)| offset == 32)
            .expect("the slot of b");
        let idx = dir.path().join("index.sqi");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&idx)
            .expect("index");
        // The slot's len (bytes 16..24) made huge, re-sealed with a valid slot checksum.
        let mut body = [0u8; 28];
        f.read_exact_at(&mut body, slot).expect("read");
        body[19] ^= 0x40;
        f.write_all_at(&body, slot).expect("write");
        f.write_all_at(&crc32fast::hash(&body).to_le_bytes(), slot + 28)
            .expect("write");
        drop(f);
        let db = Config::new(dir.path()).open().expect("open");
        // Overwriting b counts its previous record as dead.
        let r = db.set("b", b"another value of b");
        let stats = db.stats();
        assert!(
            r.is_err() || stats.live_bytes + stats.dead_bytes <= stats.segment_len,
            "{} live and {} dead bytes in a {}-byte segment",
            stats.live_bytes,
            stats.dead_bytes,
            stats.segment_len
        );
    }
}
