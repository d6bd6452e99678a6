//! `transfer`: a Python squirrel directory into a store and back, byte for byte.
//!
//! The fixture in `tests/fixtures/squirrel-0.20.2/store` was written by the real squirrel-core
//! 0.20.2; importing it and exporting it again must give files whose gunzipped payloads are the
//! originals' exactly. Importing twice must write nothing the second time, and a broken shard file
//! must be reported under its key.

use std::path::{Path, PathBuf};

use squirrel_store::serializer::{Codec, MessagepackSerializer, Serializer, ShardError};
use squirrel_store::squirrel_dir::{SquirrelDir, read_shard_file};
use squirrel_store::transfer::{
    ExportOptions, ImportOptions, ScanDepth, export_squirrel_dir, import_squirrel_dir, scan_shards,
};
use squirrel_store::{Config, Durability, Engine, Error};

fn fixture_store() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/squirrel-0.20.2/store")
}

const FIXTURE_KEYS: [&str; 6] = [
    "empty_shard",
    "mixed",
    "shard_0",
    "shard_1",
    "shard_2",
    "single_sample",
];

fn open(dir: &Path) -> Engine {
    Config::new(dir)
        .durability(Durability::Buffered)
        .open()
        .expect("opens")
}

fn quiet() -> impl FnMut(u64, u64) {
    |_, _| {}
}

fn import(
    src: &Path,
    engine: &Engine,
) -> squirrel_store::Result<squirrel_store::transfer::ImportReport> {
    import_squirrel_dir(src, engine, &ImportOptions::new(), &mut quiet())
}

fn payload(path: &Path) -> Vec<u8> {
    read_shard_file(path, u64::MAX).expect("a valid gzip file")
}

#[test]
fn fixture_round_trips_byte_for_byte() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open(&tmp.path().join("store"));
    let mut calls = Vec::new();
    let report = import_squirrel_dir(
        &fixture_store(),
        &engine,
        &ImportOptions::new(),
        &mut |done, total| calls.push((done, total)),
    )
    .expect("imports");
    assert_eq!(report.shards, 6);
    assert_eq!(report.written, 6);
    assert_eq!(report.unchanged, 0);
    // shard_0..2 hold 10 samples each, mixed 4, single_sample 1, empty_shard none.
    assert_eq!(report.samples, 35);
    assert_eq!(calls.first(), Some(&(0, 6)));
    assert_eq!(calls.last(), Some(&(6, 6)));
    assert_eq!(engine.keys().expect("keys"), FIXTURE_KEYS);

    // Stored as the untouched payload, in a zstd frame where that pays (the empty shard never).
    let ser = MessagepackSerializer::default();
    let mut payload_bytes = 0;
    for key in FIXTURE_KEYS {
        let stored = engine.get(key).expect("reads").expect("present");
        let codec = Codec::try_from(stored.codec()).expect("a codec");
        assert!(codec != Codec::Raw, "{key}");
        let original = payload(&fixture_store().join(format!("{key}.gz")));
        if original.is_empty() {
            assert_eq!(codec, Codec::Msgpack, "{key}");
        }
        let got = ser.decode_payload(codec, &stored).expect("decompresses");
        assert_eq!(*got, original[..], "{key}");
        payload_bytes += original.len() as u64;
    }
    assert_eq!(report.payload_bytes, payload_bytes);

    let out = tmp.path().join("exported");
    let exported =
        export_squirrel_dir(&engine, &out, &ExportOptions::new(), &mut quiet()).expect("exports");
    assert_eq!(exported.shards, 6);
    assert_eq!(exported.payload_bytes, payload_bytes);
    assert!(exported.skipped_raw.is_empty());
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .expect("lists")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    names.sort();
    let expected: Vec<String> = FIXTURE_KEYS.iter().map(|k| format!("{k}.gz")).collect();
    assert_eq!(
        names, expected,
        "exactly one KEY.gz per shard, nothing else"
    );
    for name in &names {
        assert_eq!(
            payload(&out.join(name)),
            payload(&fixture_store().join(name)),
            "{name}: gunzipped bytes differ"
        );
    }
}

#[test]
fn import_again_writes_nothing_and_rewrites_only_changed_shards() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open(&tmp.path().join("store"));
    import(&fixture_store(), &engine).expect("imports");
    let before = engine.stats();

    let again = import(&fixture_store(), &engine).expect("imports again");
    assert_eq!((again.shards, again.written, again.unchanged), (6, 0, 6));
    assert_eq!(again.stored_bytes, 0);
    let after = engine.stats();
    assert_eq!(after.segment_len, before.segment_len, "nothing appended");
    assert_eq!(after.dead_records, 0);

    // A copy of the fixture with one shard changed and one added: only those two are written.
    let src = tmp.path().join("src");
    let dir = SquirrelDir::new(&src);
    for key in FIXTURE_KEYS {
        dir.write(key, &payload(&fixture_store().join(format!("{key}.gz"))))
            .expect("writes");
    }
    let single = payload(&fixture_store().join("single_sample.gz"));
    let mut doubled = single.clone();
    doubled.extend_from_slice(&single);
    dir.write("single_sample", &doubled).expect("writes");
    dir.write("extra", &single).expect("writes");
    let third = import(&src, &engine).expect("imports the copy");
    assert_eq!((third.shards, third.written, third.unchanged), (7, 2, 5));
    assert_eq!(engine.stats().dead_records, 1, "the old single_sample");
    let stored = engine
        .get("single_sample")
        .expect("reads")
        .expect("present");
    let got = MessagepackSerializer::default()
        .decode_payload(Codec::MsgpackZstd, &stored)
        .expect("decompresses");
    assert_eq!(*got, doubled[..]);
}

#[test]
fn a_raw_record_under_a_shard_key_is_replaced() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open(&tmp.path().join("store"));
    engine.set("shard_0", b"raw bytes").expect("sets");
    let r = import(&fixture_store(), &engine).expect("imports");
    assert_eq!(r.written, 6);
    assert_eq!(
        engine
            .get("shard_0")
            .expect("reads")
            .expect("present")
            .codec(),
        Codec::MsgpackZstd.as_u8()
    );
}

#[test]
fn a_bad_gzip_file_names_its_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let dir = SquirrelDir::new(&src);
    let good = payload(&fixture_store().join("shard_0.gz"));
    dir.write("a_good", &good).expect("writes");
    dir.write("z_good", &good).expect("writes");
    // Not gzip at all.
    std::fs::write(src.join("m_broken.gz"), b"this is not gzip").expect("writes");
    let engine = open(&tmp.path().join("store"));
    let err = import(&src, &engine).expect_err("a broken shard fails the import");
    match &err {
        Error::Corruption { key, path, .. } => {
            assert_eq!(key.as_deref(), Some("m_broken"));
            assert_eq!(path, &src.join("m_broken.gz"));
        }
        other => panic!("expected Corruption, got {other:?}"),
    }
    assert!(err.to_string().contains("m_broken"), "{err}");
    // The shards before it (in key order) are stored; the ones after are not.
    assert_eq!(engine.keys().expect("keys"), ["a_good"]);

    // A truncated gzip stream (its checksum and the end of the data missing).
    let whole = std::fs::read(fixture_store().join("shard_1.gz")).expect("reads");
    std::fs::write(src.join("m_broken.gz"), &whole[..whole.len() / 2]).expect("writes");
    match import(&src, &engine).expect_err("fails") {
        Error::Corruption { key, .. } => assert_eq!(key.as_deref(), Some("m_broken")),
        other => panic!("expected Corruption, got {other:?}"),
    }
}

#[test]
fn a_payload_that_is_not_whole_samples_names_its_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let dir = SquirrelDir::new(&src);
    let mut cut = payload(&fixture_store().join("shard_2.gz"));
    cut.truncate(cut.len() - 3);
    dir.write("cut", &cut).expect("writes");
    let engine = open(&tmp.path().join("store"));
    match import(&src, &engine).expect_err("fails") {
        Error::Shard {
            key,
            source: ShardError::Msgpack { sample, .. },
        } => {
            assert_eq!(key, "cut");
            assert_eq!(sample, 9, "the last sample is the cut one");
        }
        other => panic!("expected Shard, got {other:?}"),
    }
    assert!(engine.is_empty());
}

#[test]
fn a_missing_source_is_an_error_not_an_empty_import() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open(&tmp.path().join("store"));
    match import(&tmp.path().join("nope"), &engine).expect_err("fails") {
        Error::Io { path, .. } => assert_eq!(path, tmp.path().join("nope")),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn nested_shards_go_both_ways() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let dir = SquirrelDir::new(&src);
    let p = payload(&fixture_store().join("single_sample.gz"));
    dir.write("top", &p).expect("writes");
    dir.write("split/train", &p).expect("writes");
    let engine = open(&tmp.path().join("store"));
    let r = import(&src, &engine).expect("imports");
    assert_eq!(r.shards, 2);
    assert_eq!(engine.keys().expect("keys"), ["split/train", "top"]);

    let top_only = open(&tmp.path().join("store2"));
    let opts = ImportOptions::new().nested(false);
    import_squirrel_dir(&src, &top_only, &opts, &mut quiet()).expect("imports");
    assert_eq!(top_only.keys().expect("keys"), ["top"]);

    let out = tmp.path().join("out");
    export_squirrel_dir(&engine, &out, &ExportOptions::new(), &mut quiet()).expect("exports");
    assert_eq!(payload(&out.join("split").join("train.gz")), p);
    assert_eq!(payload(&out.join("top.gz")), p);
}

#[test]
fn export_skips_and_reports_raw_records() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open(&tmp.path().join("store"));
    import(&fixture_store(), &engine).expect("imports");
    engine.set("notes", b"plain bytes").expect("sets");
    let out = tmp.path().join("out");
    let r =
        export_squirrel_dir(&engine, &out, &ExportOptions::new(), &mut quiet()).expect("exports");
    assert_eq!(r.shards, 6);
    assert_eq!(r.skipped_raw, ["notes"]);
    assert!(!out.join("notes.gz").exists());
}

#[test]
fn export_refuses_a_key_that_would_leave_the_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open(&tmp.path().join("store"));
    let ser = MessagepackSerializer::new().level(3);
    engine
        .put(
            "../escape",
            Codec::MsgpackZstd.as_u8(),
            &ser.encode_payload(b"").expect("encodes").bytes,
        )
        .expect("puts");
    engine
        .put(
            "fine",
            Codec::MsgpackZstd.as_u8(),
            &ser.encode_payload(b"\x01").expect("encodes").bytes,
        )
        .expect("puts");
    let out = tmp.path().join("out");
    // The bad key is reported, and does not stop the others.
    let r =
        export_squirrel_dir(&engine, &out, &ExportOptions::new(), &mut quiet()).expect("exports");
    assert_eq!(r.invalid_keys.len(), 1, "{r:?}");
    assert_eq!(r.invalid_keys[0].0, "../escape");
    assert_eq!(r.shards, 1);
    assert!(out.join("fine.gz").is_file());
    assert!(!tmp.path().join("escape.gz").exists());
}

#[test]
fn scan_finds_shards_that_do_not_decode() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open(&tmp.path().join("store"));
    import(&fixture_store(), &engine).expect("imports");
    let ser = MessagepackSerializer::new().level(3);
    // Intact records (their checksums match) whose contents are no shard.
    engine
        .put("bad_frame", Codec::MsgpackZstd.as_u8(), b"not a zstd frame")
        .expect("puts");
    engine
        .put(
            "bad_msgpack",
            Codec::MsgpackZstd.as_u8(),
            &ser.encode_payload(&[0xc1]).expect("encodes").bytes,
        )
        .expect("puts");
    engine.put("bad_codec", 9, b"?").expect("puts");
    engine.set("raw", b"bytes").expect("sets");

    let scan = scan_shards(&engine, &ser, ScanDepth::Samples, &mut quiet()).expect("scans");
    assert_eq!(scan.shards, 6);
    assert_eq!(scan.samples, 35);
    assert_eq!(scan.raw_records, 1);
    let failed: Vec<&str> = scan.failures.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(failed, ["bad_codec", "bad_frame", "bad_msgpack"]);
    for f in &scan.failures {
        assert!(
            matches!(&f.error, Error::Shard { key, .. } if *key == f.key),
            "{:?}",
            f.error
        );
    }

    // Sizes only: frame headers state the payload size, so a frame whose samples are bad passes.
    let sizes = scan_shards(&engine, &ser, ScanDepth::Sizes, &mut quiet()).expect("scans");
    assert_eq!(sizes.shards, 7);
    assert_eq!(sizes.samples, 0);
    let bad = engine.get("bad_msgpack").expect("reads").expect("present");
    assert_eq!(sizes.payload_bytes, scan.payload_bytes + 1);
    assert_eq!(sizes.stored_bytes, scan.stored_bytes + bad.len() as u64);
    assert!(sizes.compression_ratio() > 1.0);
}
