//! The committed test vectors in format-spec/vectors/ decode as format-spec/README.md says,
//! record by record, with a parser written here from the spec alone, and the engine agrees.
//!
//! Regenerate one (the current version's, when that format changes) with
//! `SQS_REGEN_VECTORS=v4-runs cargo test --test format_vectors`. Older versions' vectors stay
//! as committed: the engine writes only the current format, so rewriting them would lose them.

use std::path::{Path, PathBuf};

use squirrel_store::{Config, Durability, Engine};

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("format-spec/vectors")
}

/// Whether `SQS_REGEN_VECTORS` names this vector (a comma-separated list). Only the current
/// version's vector should ever be rewritten: the engine writes the current format, so
/// regenerating an older version's vector would silently replace it with a newer one.
fn regen(name: &str) -> bool {
    std::env::var("SQS_REGEN_VECTORS").is_ok_and(|v| v.split(',').any(|n| n == name))
}

/// Copies vector `name` into `dst`.
fn copy_vector_into(name: &str, dst: &Path) {
    for f in std::fs::read_dir(vectors().join(name)).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dst.join(f.file_name())).unwrap();
    }
}

/// A temporary copy of vector `name`, so a test may open it read-write.
fn copy_vector(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_vector_into(name, tmp.path());
    tmp
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

#[derive(Debug, PartialEq)]
struct Rec {
    offset: u64,
    kind: u8,
    codec: u8,
    key: String,
    value: Vec<u8>,
}

/// Parses a segment per the spec; returns the intact records and the offset where they end.
fn parse_segment(b: &[u8]) -> (Vec<Rec>, u64) {
    assert_eq!(&b[0..8], b"\x89SQSEG\r\n");
    assert_eq!(u32_at(b, 8), 1, "version (the v1 vectors)");
    assert_eq!(u32_at(b, 28), crc32fast::hash(&b[0..28]), "header crc");
    let mut out = Vec::new();
    let mut at = 32usize;
    while at + 24 <= b.len() {
        let h = &b[at..at + 24];
        if u32_at(h, 4) != crc32fast::hash(&h[8..24]) {
            break;
        }
        let key_len = usize::from(u16::from_le_bytes([h[10], h[11]]));
        let value_len = u64_at(h, 16) as usize;
        let end = at + 24 + key_len + value_len;
        if end > b.len() || u32_at(h, 0) != crc32fast::hash(&b[at + 4..end]) {
            break;
        }
        out.push(Rec {
            offset: at as u64,
            kind: h[8],
            codec: h[9],
            key: String::from_utf8(b[at + 24..at + 24 + key_len].to_vec()).unwrap(),
            value: b[at + 24 + key_len..end].to_vec(),
        });
        at = end;
    }
    (out, at as u64)
}

fn expected_records() -> Vec<(u8, &'static str, &'static [u8])> {
    vec![
        (1, "alpha", b"first value"),
        (1, "bravo", b"second value"),
        (1, "charlie", b"third value"),
        (1, "bravo", b"bravo, overwritten"),
        (2, "charlie", b""),
    ]
}

fn regenerate() {
    let root = vectors();
    for name in ["v1-basic", "v1-torn"] {
        let _ = std::fs::remove_dir_all(root.join(name));
    }
    let basic = root.join("v1-basic");
    let db = Config::new(&basic)
        .durability(Durability::Fsync)
        .open()
        .unwrap();
    for (kind, k, v) in expected_records() {
        if kind == 1 {
            db.set(k, v).unwrap();
        } else {
            db.delete(k).unwrap();
        }
    }
    db.close().unwrap();
    std::fs::remove_file(basic.join("LOCK")).unwrap();
    // Trim the preallocated zeros so the vector is exactly its records.
    let seg = basic.join("segment.sqs");
    let bytes = std::fs::read(&seg).unwrap();
    let (_, end) = parse_segment(&bytes);
    std::fs::write(&seg, &bytes[..end as usize]).unwrap();
    // The torn vector: the same segment, no index, and half of one more record.
    let torn = root.join("v1-torn");
    std::fs::create_dir_all(&torn).unwrap();
    let mut bytes = bytes[..end as usize].to_vec();
    let scratch = tempfile::tempdir().unwrap();
    let db = Config::new(scratch.path()).open().unwrap();
    db.set("delta", b"never finished").unwrap();
    let full = std::fs::read(scratch.path().join("segment.sqs")).unwrap();
    let (recs, _) = parse_segment(&full);
    let rec_len = 24 + 5 + 14;
    let start = recs[0].offset as usize;
    bytes.extend_from_slice(&full[start..start + rec_len / 2]);
    std::fs::write(torn.join("segment.sqs"), &bytes).unwrap();
}

#[test]
fn vectors_decode_record_by_record() {
    if regen("v1-basic") {
        regenerate();
    }
    for name in ["v1-basic", "v1-torn"] {
        let bytes = std::fs::read(vectors().join(name).join("segment.sqs")).unwrap();
        let (recs, end) = parse_segment(&bytes);
        let got: Vec<(u8, &str, &[u8])> = recs
            .iter()
            .map(|r| (r.kind, r.key.as_str(), r.value.as_slice()))
            .collect();
        assert_eq!(got, expected_records(), "{name}");
        assert!(recs.iter().all(|r| r.codec == 0));
        if name == "v1-torn" {
            assert_eq!(bytes.len() as u64 - end, 21, "half a record of torn tail");
        } else {
            assert_eq!(bytes.len() as u64, end);
        }
    }
}

#[test]
fn index_vector_decodes() {
    let b = std::fs::read(vectors().join("v1-basic/index.sqi")).unwrap();
    assert_eq!(&b[0..8], b"\x89SQIDX\r\n");
    assert_eq!(u32_at(&b, 8), 1);
    assert_eq!(u32_at(&b, 12), 0, "clean");
    assert_eq!(u32_at(&b, 124), crc32fast::hash(&b[..124]));
    let seg = std::fs::read(vectors().join("v1-basic/segment.sqs")).unwrap();
    assert_eq!(u64_at(&b, 16), u64_at(&seg, 16), "segment id");
    assert_eq!(u64_at(&b, 24), seg.len() as u64, "covers the whole segment");
    let slots = u64_at(&b, 32) as usize;
    assert_eq!(b.len(), 4096 + 32 * slots);
    assert_eq!(u64_at(&b, 48), 2, "live records");
    let (recs, _) = parse_segment(&seg);
    let mut live = Vec::new();
    for i in 0..slots {
        let s = &b[4096 + 32 * i..4096 + 32 * (i + 1)];
        let hash = u64_at(s, 0);
        if hash < 2 {
            continue;
        }
        assert_eq!(u32_at(s, 28), crc32fast::hash(&s[..28]), "slot crc");
        let rec = recs
            .iter()
            .find(|r| r.offset == u64_at(s, 8))
            .expect("slot names a record");
        let h = xxhash_rust::xxh3::xxh3_64(rec.key.as_bytes());
        assert_eq!(hash, if h < 2 { h + 2 } else { h });
        assert_eq!(
            u64_at(s, 16),
            24 + rec.key.len() as u64 + rec.value.len() as u64
        );
        live.push((rec.key.clone(), rec.value.clone()));
    }
    live.sort();
    assert_eq!(
        live,
        vec![
            ("alpha".to_string(), b"first value".to_vec()),
            ("bravo".to_string(), b"bravo, overwritten".to_vec())
        ]
    );
}

#[test]
fn engine_reads_the_vectors() {
    for name in ["v1-basic", "v1-torn"] {
        let tmp = copy_vector(name);
        let ro = Engine::open_read_only(tmp.path()).unwrap();
        assert_eq!(ro.keys().unwrap(), vec!["alpha", "bravo"]);
        assert_eq!(&*ro.get("bravo").unwrap().unwrap(), b"bravo, overwritten");
        assert!(ro.get("charlie").unwrap().is_none());
        let s = ro.stats();
        assert_eq!((s.live_records, s.dead_records), (2, 3));
        if name == "v1-torn" {
            // 21 bytes of half a header; its last 4 are the zero high bytes of value_len, and the
            // torn tail is counted up to its last non-zero byte.
            assert_eq!(s.torn_tail_bytes, 17);
            drop(ro);
            // Read-write cuts the tail; a second open finds none.
            drop(Engine::open(tmp.path()).unwrap());
            let again = Engine::open_read_only(tmp.path()).unwrap();
            assert_eq!(again.stats().torn_tail_bytes, 0);
            assert_eq!(again.len(), 2);
        } else {
            assert_eq!(s.replayed_records, 0);
        }
    }
}

/// `v2-marks`: a store written by format version 2 in `Durability::Fsync`: a `set_many` of
/// `alpha`, `bravo` (no mark: nothing synced needed proving yet), a `set` of `charlie` led by a
/// sync mark proving the batch, then a clean close ending with a lone mark proving everything.
fn regenerate_v2() {
    let dir = vectors().join("v2-marks");
    let _ = std::fs::remove_dir_all(&dir);
    let db = Config::new(&dir)
        .durability(Durability::Fsync)
        .open()
        .unwrap();
    db.set_many([
        ("alpha", b"first value".as_slice()),
        ("bravo", b"second value"),
    ])
    .unwrap();
    db.set("charlie", b"third value").unwrap();
    let end = db.stats().segment_len;
    db.close().unwrap();
    std::fs::remove_file(dir.join("LOCK")).unwrap();
    let seg = dir.join("segment.sqs");
    let bytes = std::fs::read(&seg).unwrap();
    // Records, then the close mark (32 bytes); trim the punched preallocation.
    std::fs::write(&seg, &bytes[..end as usize + 32]).unwrap();
}

#[test]
fn v2_vector_decodes_with_its_marks_and_key_checks() {
    if regen("v2-marks") {
        regenerate_v2();
    }
    let b = std::fs::read(vectors().join("v2-marks/segment.sqs")).unwrap();
    assert_eq!(&b[0..8], b"\x89SQSEG\r\n");
    assert_eq!(u32_at(&b, 28), crc32fast::hash(&b[0..28]), "header crc");
    assert_eq!(u32_at(&b, 8), 2, "version");
    // (offset, kind, flags, key, value), parsed from the spec alone.
    let mut recs = Vec::new();
    let mut at = 32usize;
    while at + 24 <= b.len() {
        let h = &b[at..at + 24];
        assert_eq!(
            u32_at(h, 4),
            crc32fast::hash(&h[8..24]),
            "header crc at {at}"
        );
        let key_len = usize::from(u16::from_le_bytes([h[10], h[11]]));
        let end = at + 24 + key_len + u64_at(h, 16) as usize;
        assert_eq!(
            u32_at(h, 0),
            crc32fast::hash(&b[at + 4..end]),
            "crc at {at}"
        );
        let key = b[at + 24..at + 24 + key_len].to_vec();
        recs.push((
            at,
            h[8],
            u32_at(h, 12),
            key,
            b[at + 24 + key_len..end].to_vec(),
        ));
        at = end;
    }
    assert_eq!(at, b.len());
    let kinds: Vec<u8> = recs.iter().map(|r| r.1).collect();
    assert_eq!(kinds, [1, 1, 3, 1, 3]);
    for r in recs.iter().filter(|r| r.1 == 1) {
        // KEY_CHECK, and the check is the low half of the key's CRC-32.
        assert_ne!(r.2 & 4, 0);
        assert_eq!(r.2 >> 16, crc32fast::hash(&r.3) & 0xffff);
    }
    let batch = |r: &(usize, u8, u32, Vec<u8>, Vec<u8>)| r.2 & 3;
    assert_eq!(batch(&recs[0]), 1, "alpha: CONTINUES");
    assert_eq!(batch(&recs[1]), 2, "bravo: FOLLOWS");
    assert_eq!(
        batch(&recs[2]),
        1,
        "the mark leads charlie's append: CONTINUES"
    );
    assert_eq!(batch(&recs[3]), 2, "charlie: FOLLOWS");
    assert_eq!(batch(&recs[4]), 0, "the close mark stands alone");
    // Mark values: the batch was synced before charlie's append; the close mark proves all
    // before itself.
    assert_eq!(u64_at(&recs[2].4, 0), recs[2].0 as u64);
    assert_eq!(u64_at(&recs[4].4, 0), recs[4].0 as u64);
    assert!(recs[2].3.is_empty() && recs[2].4.len() == 8);
    // The engine agrees, read-only and after a read-write open.
    let tmp = copy_vector("v2-marks");
    let ro = Engine::open_read_only(tmp.path()).unwrap();
    assert_eq!(ro.keys().unwrap(), vec!["alpha", "bravo", "charlie"]);
    assert_eq!(ro.stats().format_version, 2);
    drop(ro);
    std::fs::remove_file(tmp.path().join("index.sqi")).unwrap();
    let db = Engine::open(tmp.path()).unwrap();
    assert_eq!(&*db.get("charlie").unwrap().unwrap(), b"third value");
    assert_eq!(db.stats().damaged_records, 0);
}

/// A read-write open of a v1 store moves its header to version 2 and keeps every record.
#[test]
fn a_v1_store_opened_read_write_is_upgraded() {
    let tmp = copy_vector("v1-basic");
    let db = Engine::open(tmp.path()).unwrap();
    assert_eq!(db.stats().format_version, 2);
    db.set("delta", b"v2 record").unwrap();
    db.close().unwrap();
    let b = std::fs::read(tmp.path().join("segment.sqs")).unwrap();
    assert_eq!(u32_at(&b, 8), 2);
    let ro = Engine::open_read_only(tmp.path()).unwrap();
    assert_eq!(ro.keys().unwrap(), vec!["alpha", "bravo", "delta"]);
}

/// Writes `v4-runs/` (as an index-format-3 engine wrote `v3-runs/`): `v2-marks/` opened read-write (`Durability::Fsync`), a `set_many` of
/// `k00`..`k15` = `v00`..`v15`, a checkpoint (the conversion: base run 1), a delete of `alpha`,
/// a clean close (delta run 2). Deterministic: the segment id comes from `v2-marks/`.
fn build_runs_vector(dst: &Path) {
    copy_vector_into("v2-marks", dst);
    let db = Config::new(dst)
        .durability(Durability::Fsync)
        .open()
        .unwrap();
    let kv: Vec<(String, Vec<u8>)> = (0..16)
        .map(|i| (format!("k{i:02}"), format!("v{i:02}").into_bytes()))
        .collect();
    db.set_many(kv.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .unwrap();
    db.checkpoint().unwrap();
    assert!(db.delete("alpha").unwrap());
    db.close().unwrap();
}

/// The index files (manifest and runs) of `dir`, sorted by name.
fn run_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("index"))
        .collect();
    names.sort();
    names
}

/// Decodes a runs vector (`v3-runs/` or `v4-runs/`) of index format `version` with a parser
/// written from format-spec/README.md: the manifest and both runs decode byte for byte and name
/// exactly the records the segment holds. Returns the live keys.
fn decode_runs_vector(dir: &Path, version: u32) -> Vec<String> {
    assert_eq!(
        run_files(dir),
        vec![
            "index-0000000000000001.sqr",
            "index-0000000000000002.sqr",
            "index.sqm"
        ]
    );
    let seg = std::fs::read(dir.join("segment.sqs")).unwrap();
    let segment_id = u64_at(&seg, 16);
    // Records by offset: (kind, key).
    let mut records = std::collections::BTreeMap::new();
    let mut at = 32usize;
    while at + 24 <= seg.len() && u32_at(&seg, at + 4) == crc32fast::hash(&seg[at + 8..at + 24]) {
        let key_len = usize::from(u16::from_le_bytes([seg[at + 10], seg[at + 11]]));
        let end = at + 24 + key_len + u64_at(&seg, at + 16) as usize;
        let key = String::from_utf8(seg[at + 24..at + 24 + key_len].to_vec()).unwrap();
        records.insert(at as u64, (seg[at + 8], key));
        at = end;
    }
    let seg_end = at as u64;

    let m = std::fs::read(dir.join("index.sqm")).unwrap();
    assert_eq!(&m[0..8], b"\x89SQMAN\r\n");
    assert_eq!(u32_at(&m, 8), version, "version");
    assert_eq!(u32_at(&m, 12), 2, "closed cleanly");
    assert_eq!(u64_at(&m, 16), segment_id);
    assert_eq!(u64_at(&m, 24), seg_end, "covers every record");
    assert_eq!(u64_at(&m, 32), 18, "live records: bravo, charlie, k00..k15");
    let n = u32_at(&m, 72) as usize;
    assert_eq!(n, 2);
    assert_eq!(u32_at(&m, 76), 0);
    assert_eq!(m.len(), 84 + 48 * n);
    assert_eq!(u32_at(&m, 80 + 48 * n), crc32fast::hash(&m[..80 + 48 * n]));
    let mut from = 32;
    let mut live = std::collections::BTreeMap::new();
    for i in 0..n {
        let r = &m[80 + 48 * i..128 + 48 * i];
        let (seq, kind, header_crc) = (u64_at(r, 0), u32_at(r, 8), u32_at(r, 12));
        let (rfrom, rto, count, file_len) =
            (u64_at(r, 16), u64_at(r, 24), u64_at(r, 32), u64_at(r, 40));
        assert!(seq < u64_at(&m, 64), "seq below next_seq");
        assert_eq!(kind, if i == 0 { 0 } else { 1 });
        assert_eq!(rfrom, from, "runs tile the covered bytes");
        from = rto;
        let f = std::fs::read(dir.join(format!("index-{seq:016x}.sqr"))).unwrap();
        assert_eq!(f.len() as u64, file_len);
        assert_eq!(&f[0..8], b"\x89SQRUN\r\n");
        assert_eq!(u32_at(&f, 8), version);
        assert_eq!(u32_at(&f, 12), kind);
        assert_eq!(u64_at(&f, 16), segment_id);
        assert_eq!(
            (u64_at(&f, 24), u64_at(&f, 32), u64_at(&f, 40)),
            (rfrom, rto, count)
        );
        assert_eq!(u32_at(&f, 60), crc32fast::hash(&f[..60]));
        assert_eq!(u32_at(&f, 60), header_crc);
        let bloom_blocks = u32_at(&f, 48) as usize;
        // Format 4: a Bloom filter in every run; format 3: in the deltas only.
        assert_eq!(bloom_blocks == 0, version == 3 && kind == 0);
        let entries = count as usize * 16;
        let fences = entries.div_ceil(4096);
        let fence_at = entries.next_multiple_of(64);
        let bloom_at = (fence_at + 8 * fences).next_multiple_of(64);
        let body = bloom_at + 64 * bloom_blocks;
        // Fence i: the hash of entry 256 i.
        for i in 0..fences {
            assert_eq!(
                u64_at(&f, 64 + fence_at + 8 * i),
                u64_at(&f, 64 + 4096 * i),
                "fence {i}"
            );
        }
        assert!(
            f[64 + entries..64 + fence_at].iter().all(|&b| b == 0),
            "padding"
        );
        let blocks = body.div_ceil(4096);
        assert_eq!(f.len(), 64 + body + 4 * blocks);
        let table = &f[64 + body..];
        assert_eq!(u32_at(&f, 56), crc32fast::hash(table));
        for (b, chunk) in f[64..64 + body].chunks(4096).enumerate() {
            assert_eq!(u32_at(table, 4 * b), crc32fast::hash(chunk));
        }
        let mut prev = None;
        for e in f[64..64 + entries].chunks(16) {
            let (hash, word) = (u64_at(e, 0), u64_at(e, 8));
            assert!(prev.is_none_or(|p| p < (hash, word)), "sorted");
            prev = Some((hash, word));
            let offset = word & ((1 << 62) - 1);
            assert!(offset >= rfrom && offset < rto);
            let (rkind, key) = &records[&offset];
            let h = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
            assert_eq!(hash, if h < 2 { h + 2 } else { h });
            assert_eq!(word >> 63 == 1, *rkind == 2, "bit 63: tombstone");
            if bloom_blocks > 0 {
                // The Bloom filter has the key's bits set, as the spec computes them.
                let block = ((u128::from(hash) * bloom_blocks as u128) >> 64) as usize;
                let g = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let line = &f[64 + bloom_at + 64 * block..][..64];
                for j in 0..6 {
                    let bit = ((g >> (9 * j)) & 511) as usize;
                    assert_ne!(line[bit / 8] & (1 << (bit % 8)), 0);
                }
            }
            live.insert(key.clone(), *rkind == 1);
        }
    }
    assert_eq!(from, seg_end);
    // Newer runs shadow older ones (the delta's tombstone hides the base's alpha).
    let mut want: Vec<String> = vec!["bravo".into(), "charlie".into()];
    want.extend((0..16).map(|i| format!("k{i:02}")));
    let live_keys: Vec<String> = live
        .iter()
        .filter(|(_, l)| **l)
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(live_keys, want);
    want
}

/// `v3-runs/`, written by index format 3 (no Bloom filter in the base), still decodes as the
/// spec says and still opens.
#[test]
fn v3_vector_decodes_manifest_and_runs() {
    let dir = vectors().join("v3-runs");
    let want = decode_runs_vector(&dir, 3);
    let ro = Engine::open_read_only(&dir).unwrap();
    assert_eq!(ro.keys().unwrap(), want);
    assert!(ro.get("alpha").unwrap().is_none());
    assert_eq!(&*ro.get("k07").unwrap().unwrap(), b"v07");
}

/// `v4-runs/` decodes as the spec says, and the engine reproduces its files exactly from
/// `v2-marks/`.
#[test]
fn v4_vector_decodes_manifest_and_runs() {
    let dir = vectors().join("v4-runs");
    if regen("v4-runs") {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        build_runs_vector(&dir);
        let _ = std::fs::remove_file(dir.join("LOCK"));
        // The preallocated zeros after the records are left out of the committed file.
        let m = std::fs::read(dir.join("index.sqm")).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("segment.sqs"))
            .unwrap();
        f.set_len(u64_at(&m, 24)).unwrap();
    }
    let want = decode_runs_vector(&dir, 4);
    // The engine reads it, and writes exactly these files from v2-marks/.
    let ro = Engine::open_read_only(&dir).unwrap();
    assert_eq!(ro.keys().unwrap(), want);
    assert!(ro.get("alpha").unwrap().is_none());
    drop(ro);
    let tmp = tempfile::tempdir().unwrap();
    build_runs_vector(tmp.path());
    for name in run_files(&dir)
        .iter()
        .chain(["segment.sqs".to_string()].iter())
    {
        let want = std::fs::read(dir.join(name)).unwrap();
        let mut got = std::fs::read(tmp.path().join(name)).unwrap();
        if name == "segment.sqs" {
            assert!(
                got[want.len()..].iter().all(|&b| b == 0),
                "zeros after the records"
            );
            got.truncate(want.len());
        }
        assert_eq!(got, want, "{name}");
    }
}

/// A format-3 store (`v3-runs/`) opened read-write keeps working: a delta written next to its
/// version-3 base is found, and the next merge into a base writes a version-4 base with a Bloom
/// filter. Every key and value is intact throughout.
#[test]
fn a_v3_store_is_written_then_merged_into_v4() {
    let tmp = copy_vector("v3-runs");
    let mut want: Vec<String> = vec!["bravo".into(), "charlie".into()];
    want.extend((0..16).map(|i| format!("k{i:02}")));
    // One new key: a delta (2 delta entries are not more than 1/2 of the base's 19) beside the
    // untouched version-3 base. It is the vector's version-3 delta (one tombstone) merged with the
    // new entry, which is no smaller.
    let db = Engine::open(tmp.path()).unwrap();
    db.set("new0", b"n0").unwrap();
    db.checkpoint().unwrap();
    want.push("new0".into());
    want.sort();
    assert_eq!(db.keys().unwrap(), want);
    assert_eq!(&*db.get("k03").unwrap().unwrap(), b"v03");
    let base = std::fs::read(tmp.path().join("index-0000000000000001.sqr")).unwrap();
    assert_eq!(
        u32_at(&base, 8),
        3,
        "the version-3 base is kept until a merge"
    );
    let m = std::fs::read(tmp.path().join("index.sqm")).unwrap();
    assert_eq!(u32_at(&m, 72), 2, "the version-3 base and one delta");
    // Enough new keys that the deltas pass 1/2 of the base: a new base, version 4.
    for i in 1..10 {
        db.set(&format!("new{i}"), format!("n{i}").as_bytes())
            .unwrap();
        want.push(format!("new{i}"));
    }
    db.checkpoint().unwrap();
    db.close().unwrap();
    want.sort();
    let m = std::fs::read(tmp.path().join("index.sqm")).unwrap();
    assert_eq!(u32_at(&m, 8), 4, "manifest version");
    // The new base, then the delta of the clean close's sync mark.
    assert_eq!(u32_at(&m, 72), 2, "the new base and the close's delta");
    let seq = u64_at(&m, 80);
    let run = std::fs::read(tmp.path().join(format!("index-{seq:016x}.sqr"))).unwrap();
    assert_eq!(u32_at(&run, 8), 4, "run version");
    assert_eq!(u32_at(&run, 12), 0, "a base");
    assert!(u32_at(&run, 48) >= 1, "with a Bloom filter");
    assert!(
        !tmp.path().join("index-0000000000000001.sqr").exists(),
        "the version-3 base is deleted once the manifest naming its successor is durable"
    );
    let ro = Engine::open_read_only(tmp.path()).unwrap();
    assert_eq!(ro.keys().unwrap(), want);
    assert!(ro.get("alpha").unwrap().is_none());
    assert_eq!(&*ro.get("new5").unwrap().unwrap(), b"n5");
    assert_eq!(&*ro.get("k15").unwrap().unwrap(), b"v15");
    assert!(!ro.stats().index_rebuilt);
}

/// A committed version-2 store (`v2-marks/`, an `index.sqi` hash table) opens read-only as it
/// is, and a read-write session converts it at its first checkpoint: the manifest and a base
/// run appear, `index.sqi` is removed, and every key is intact before and after.
#[test]
fn a_v2_store_is_read_then_converted() {
    let tmp = copy_vector("v2-marks");
    let expect = |db: &Engine| {
        assert_eq!(db.keys().unwrap(), vec!["alpha", "bravo", "charlie"]);
        assert_eq!(&*db.get("alpha").unwrap().unwrap(), b"first value");
        assert_eq!(&*db.get("bravo").unwrap().unwrap(), b"second value");
        assert_eq!(&*db.get("charlie").unwrap().unwrap(), b"third value");
    };
    let ro = Engine::open_read_only(tmp.path()).unwrap();
    expect(&ro);
    assert_eq!(
        ro.stats().index_file_len,
        36864,
        "the v2 table is what it reads"
    );
    assert!(!ro.stats().index_rebuilt);
    drop(ro);
    let db = Engine::open(tmp.path()).unwrap();
    expect(&db);
    assert!(
        tmp.path().join("index.sqi").exists(),
        "kept until the first checkpoint"
    );
    db.checkpoint().unwrap();
    assert!(
        !tmp.path().join("index.sqi").exists(),
        "removed once the manifest is durable"
    );
    assert!(tmp.path().join("index.sqm").exists());
    expect(&db);
    db.close().unwrap();
    let ro = Engine::open_read_only(tmp.path()).unwrap();
    expect(&ro);
    assert!(!ro.stats().index_rebuilt);
    assert_eq!(
        ro.stats().replayed_records,
        0,
        "the conversion covered every record"
    );
}
