//! Issue 10, item 4: decompression bombs. A cap on the decompressed size of every record and every
//! imported gzip file (1 GiB by default, configurable), a typed error naming the key, payloads
//! streamed rather than held whole, and samples counted by walking their MessagePack rather than
//! building them.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use rand::{Rng, SeedableRng, rngs::StdRng};
use squirrel_store::serializer::{
    Codec, MessagepackSerializer, SampleCounter, Serializer, ShardError, count_samples,
    decode_values_up_to,
};
use squirrel_store::squirrel_dir::SquirrelDir;
use squirrel_store::transfer::{
    ExportOptions, ImportOptions, export_squirrel_dir, import_squirrel_dir,
};
use squirrel_store::value::{DecodeError, validate_value};
use squirrel_store::{Config, Durability, Engine, Error};

fn quiet() -> impl FnMut(u64, u64) {
    |_, _| {}
}

fn open(dir: &std::path::Path) -> Engine {
    Config::new(dir)
        .durability(Durability::Buffered)
        .open()
        .expect("opens")
}

/// Writes `len` zero bytes, gzipped, to `path`: a gzip bomb of about `len / 1000` bytes.
fn gzip_zeros(path: &std::path::Path, len: usize) {
    let file = std::fs::File::create(path).expect("creates");
    let mut gz = GzEncoder::new(file, Compression::new(6));
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len());
        gz.write_all(&zeros[..n]).expect("writes");
        left -= n;
    }
    gz.finish().expect("finishes");
}

/// A zstd frame of `len` zeros: 64 MiB take about 2 KB.
fn zstd_zeros(len: usize) -> Vec<u8> {
    zstd::bulk::compress(&vec![0u8; len], 19).expect("compresses")
}

#[test]
fn default_limits_are_one_gib() {
    assert_eq!(MessagepackSerializer::DEFAULT_MAX_DECOMPRESSED, 1 << 30);
    assert_eq!(
        MessagepackSerializer::default().decompressed_limit(),
        1 << 30
    );
    assert_eq!(SquirrelDir::DEFAULT_MAX_SHARD_BYTES, 1 << 30);
}

#[test]
fn import_refuses_a_gzip_bomb_with_a_typed_error_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    // Small enough for the one-pass path, and large enough for the streaming path (16 MiB).
    for (len, limit) in [(3 << 20, 2 << 20), (20 << 20, 18 << 20)] {
        gzip_zeros(&src.join("bomb.gz"), len);
        let engine = open(&tmp.path().join(format!("store{len}")));
        let err = import_squirrel_dir(
            &src,
            &engine,
            &ImportOptions::new().max_shard_bytes(limit),
            &mut quiet(),
        )
        .expect_err("refused");
        match err {
            Error::Shard {
                key,
                source: ShardError::TooLarge { limit: l, .. },
            } => {
                assert_eq!(key, "bomb");
                assert_eq!(l, limit);
            }
            other => panic!("expected a TooLarge shard error, got {other:?}"),
        }
        assert!(engine.get("bomb").expect("reads").is_none());
    }
}

#[test]
fn a_large_shard_is_streamed_counted_and_stored_with_its_size() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    let len = 20 << 20; // past the 16 MiB read whole: the two-pass streaming path
    gzip_zeros(&src.join("zeros.gz"), len);
    let engine = open(&tmp.path().join("store"));
    let opts = ImportOptions::new().max_shard_bytes(len as u64);
    let r = import_squirrel_dir(&src, &engine, &opts, &mut quiet()).expect("imports");
    assert_eq!((r.shards, r.written, r.unchanged), (1, 1, 0));
    assert_eq!(r.samples, len as u64, "one positive fixint per zero byte");
    assert_eq!(r.payload_bytes, len as u64);
    let stored = engine.get("zeros").expect("reads").expect("present");
    assert_eq!(stored.codec(), Codec::MsgpackZstd.as_u8());
    // The frame states its size, as one compressed in one piece does.
    assert_eq!(
        zstd::zstd_safe::get_frame_content_size(&stored).ok(),
        Some(Some(len as u64))
    );
    let payload = MessagepackSerializer::default()
        .decode_payload(Codec::MsgpackZstd, &stored)
        .expect("decodes");
    assert!(payload.len() == len && payload.iter().all(|b| *b == 0));
    drop(stored);

    // Again: identical, so nothing is written.
    let again = import_squirrel_dir(&src, &engine, &opts, &mut quiet()).expect("imports");
    assert_eq!((again.written, again.unchanged), (0, 1));
    // A change in the last byte is seen.
    let mut changed = vec![0u8; len];
    changed[len - 1] = 1;
    let mut gz = GzEncoder::new(
        std::fs::File::create(src.join("zeros.gz")).expect("creates"),
        Compression::fast(),
    );
    gz.write_all(&changed).expect("writes");
    gz.finish().expect("finishes");
    let third = import_squirrel_dir(&src, &engine, &opts, &mut quiet()).expect("imports");
    assert_eq!((third.written, third.unchanged), (1, 0));
    let stored = engine.get("zeros").expect("reads").expect("present");
    let payload = MessagepackSerializer::default()
        .decode_payload(Codec::MsgpackZstd, &stored)
        .expect("decodes");
    assert_eq!(*payload, changed[..]);
}

#[test]
fn a_truncated_sample_in_a_streamed_shard_is_an_error_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    let mut payload = vec![0u8; 17 << 20];
    // A bin8 claiming 200 bytes, of which 3 are there.
    payload.extend_from_slice(&[0xc4, 200, 1, 2, 3]);
    let mut gz = GzEncoder::new(
        std::fs::File::create(src.join("cut.gz")).expect("creates"),
        Compression::fast(),
    );
    gz.write_all(&payload).expect("writes");
    gz.finish().expect("finishes");
    let engine = open(&tmp.path().join("store"));
    let err = import_squirrel_dir(&src, &engine, &ImportOptions::new(), &mut quiet())
        .expect_err("refused");
    match err {
        Error::Shard {
            key,
            source: ShardError::Msgpack { sample, offset, .. },
        } => {
            assert_eq!(key, "cut");
            assert_eq!(sample, 17 << 20);
            assert_eq!(offset, 17 << 20);
        }
        other => panic!("expected a Msgpack shard error, got {other:?}"),
    }
}

#[test]
fn payload_reader_enforces_the_limit_without_trusting_the_header() {
    let limit = 1 << 20;
    let ser = MessagepackSerializer::default().max_decompressed(limit);
    let read_all = |codec, bytes: &[u8]| -> Result<u64, ShardError> {
        let mut r = ser.payload_reader(codec, bytes)?;
        let mut buf = vec![0u8; 4096];
        while r.read_chunk(&mut buf)? > 0 {}
        Ok(r.bytes_read())
    };
    // At the limit: fine. One past it, stated in the header: refused before any byte.
    assert_eq!(
        read_all(Codec::MsgpackZstd, &zstd_zeros(limit as usize)).expect("fits"),
        limit
    );
    assert!(matches!(
        ser.payload_reader(Codec::MsgpackZstd, &zstd_zeros(limit as usize + 1)),
        Err(ShardError::TooLarge {
            at_least: false,
            ..
        })
    ));
    // A frame that states no size is stopped as it passes the limit.
    let mut streamed = Vec::new();
    let mut enc = zstd::stream::write::Encoder::new(&mut streamed, 3).expect("encoder");
    enc.write_all(&vec![0u8; 8 << 20]).expect("writes");
    enc.finish().expect("finishes");
    assert!(matches!(
        read_all(Codec::MsgpackZstd, &streamed),
        Err(ShardError::TooLarge { at_least: true, .. })
    ));
    // A frame whose stated size is a lie is corrupt.
    let mut lying = zstd_zeros(1000);
    let honest = zstd::zstd_safe::get_frame_content_size(&lying).expect("header");
    assert_eq!(honest, Some(1000));
    // Frame header: magic (4), descriptor (1), a window byte unless single-segment, then the
    // content size (2 bytes for this size, holding size - 256).
    assert_eq!(lying[4] & 0xc0, 0x40, "FCS field is 2 bytes");
    let at = if lying[4] & 0x20 != 0 { 5 } else { 6 };
    lying[at] ^= 0x01;
    assert!(matches!(
        read_all(Codec::MsgpackZstd, &lying),
        Err(ShardError::Decompress(_))
    ));
    // Uncompressed payloads are held to the limit too; raw records are not samples.
    assert!(matches!(
        ser.payload_reader(Codec::Msgpack, &vec![0u8; limit as usize + 1]),
        Err(ShardError::TooLarge { .. })
    ));
    assert!(matches!(
        ser.payload_reader(Codec::Raw, b"x"),
        Err(ShardError::NotSamples)
    ));
}

#[test]
fn export_streams_and_refuses_a_zstd_bomb_naming_the_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open(&tmp.path().join("store"));
    let bomb = zstd_zeros(8 << 20);
    assert!(bomb.len() < 2048, "{}", bomb.len());
    engine
        .put("bomb", Codec::MsgpackZstd.as_u8(), &bomb)
        .expect("puts");
    let ok = MessagepackSerializer::default()
        .level(3)
        .encode_payload(&[1, 2, 3])
        .expect("encodes")
        .bytes;
    engine
        .put("fine", Codec::MsgpackZstd.as_u8(), &ok)
        .expect("puts");
    let out = tmp.path().join("out");
    let opts =
        ExportOptions::new().serializer(MessagepackSerializer::default().max_decompressed(4 << 20));
    let err = export_squirrel_dir(&engine, &out, &opts, &mut quiet()).expect_err("refused");
    assert!(
        matches!(&err, Error::Shard { key, source: ShardError::TooLarge { .. } } if key == "bomb"),
        "{err:?}"
    );
    // Nothing half-written is left: no bomb.gz, no temporary file (the other shard of the batch
    // may have been written meanwhile).
    let names: Vec<String> = std::fs::read_dir(&out)
        .expect("lists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n != "fine.gz")
        .collect();
    assert!(names.is_empty(), "{names:?}");

    // Within the limit it is exported, streamed, byte for byte.
    let r =
        export_squirrel_dir(&engine, &out, &ExportOptions::new(), &mut quiet()).expect("exports");
    assert_eq!(r.shards, 2);
    assert_eq!(r.payload_bytes, (8 << 20) + 3);
    let back = SquirrelDir::new(&out).read("bomb").expect("reads");
    assert!(back.len() == 8 << 20 && back.iter().all(|b| *b == 0));
    assert_eq!(
        SquirrelDir::new(&out).read("fine").expect("reads"),
        [1, 2, 3]
    );
}

/// A seeded mix of samples: scalars, strings, bins, nested arrays and maps.
fn random_payload(rng: &mut StdRng) -> (Vec<u8>, u64) {
    let mut out = Vec::new();
    let n = rng.random_range(0..200u64);
    for i in 0..n {
        match rng.random_range(0..5) {
            0 => {
                rmp::encode::write_uint(&mut out, rng.random()).expect("writes");
            }
            1 => {
                let s: String = (0..rng.random_range(0..40))
                    .map(|_| char::from(rng.random_range(b'a'..=b'z')))
                    .collect();
                rmp::encode::write_str(&mut out, &s).expect("writes");
            }
            2 => {
                let len = rng.random_range(0..3000);
                rmp::encode::write_bin(&mut out, &vec![7u8; len]).expect("writes");
            }
            3 => {
                let len = rng.random_range(0..50);
                rmp::encode::write_array_len(&mut out, len).expect("writes");
                for j in 0..len {
                    rmp::encode::write_sint(&mut out, i64::from(j) - 20).expect("writes");
                }
            }
            _ => {
                rmp::encode::write_map_len(&mut out, 1).expect("writes");
                rmp::encode::write_str(&mut out, "k").expect("writes");
                rmp::encode::write_f64(&mut out, i as f64).expect("writes");
            }
        }
    }
    (out, n)
}

#[test]
fn sample_counter_agrees_with_count_samples_however_the_payload_is_cut() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0010);
    for _ in 0..200 {
        let (payload, n) = random_payload(&mut rng);
        assert_eq!(count_samples(&payload).expect("valid"), n);
        let mut counter = SampleCounter::new();
        let mut at = 0;
        while at < payload.len() {
            let step = rng
                .random_range(1..=payload.len() - at)
                .min(rng.random_range(1..700));
            counter.feed(&payload[at..at + step]).expect("valid so far");
            at += step;
        }
        assert_eq!(counter.finish().expect("valid"), n);
        // Cut short, it is an error at the end, not before.
        if let Some(cut) = payload.len().checked_sub(1).filter(|_| n > 0) {
            let mut counter = SampleCounter::new();
            let fed = counter.feed(&payload[..cut]);
            let err = fed.and_then(|()| counter.finish());
            if let Err(e) = err {
                assert!(matches!(e, ShardError::Msgpack { .. }), "{e:?}");
            } else {
                // A cut that falls on a sample boundary leaves whole samples: fine only if so.
                assert!(count_samples(&payload[..cut]).is_ok());
            }
        }
    }
}

#[test]
fn counting_checks_what_decoding_checks() {
    // A str that is not UTF-8: `Value::decode` refuses it, so counting does too.
    let bad = [0xa2, 0xff, 0xfe];
    assert!(matches!(
        validate_value(&bad),
        Err(DecodeError::InvalidUtf8 { offset: 0 })
    ));
    assert!(matches!(
        count_samples(&[&[0x01][..], &bad].concat()),
        Err(ShardError::Msgpack {
            sample: 1,
            offset: 1,
            ..
        })
    ));
    let mut counter = SampleCounter::new();
    counter
        .feed(&[0x01, 0xa2, 0xff])
        .expect("unfinished, not invalid");
    assert!(matches!(
        counter.feed(&[0xfe]),
        Ok(()) | Err(ShardError::Msgpack { sample: 1, .. })
    ));
    assert!(matches!(
        counter.finish(),
        Err(ShardError::Msgpack { sample: 1, .. })
    ));
    // 64 Mi one-byte samples are counted without building them (a Vec<Value> of them would take
    // gigabytes).
    assert_eq!(
        count_samples(&vec![0u8; 64 << 20]).expect("valid"),
        64 << 20
    );
    let first = decode_values_up_to(&vec![0u8; 1 << 20], 10).expect("valid");
    assert_eq!(first.len(), 10);
}

#[test]
fn scan_streams_samples_that_span_chunks() {
    use squirrel_store::transfer::{ScanDepth, scan_shards};
    let tmp = tempfile::tempdir().expect("tempdir");
    let engine = open(&tmp.path().join("store"));
    let ser = MessagepackSerializer::default().level(3); // records put as codec 2: always zstd
    // Samples longer than the 256 KiB the scan reads at a time.
    let mut payload = Vec::new();
    rmp::encode::write_bin(&mut payload, &vec![9u8; 1 << 20]).expect("writes");
    payload.push(0x05);
    rmp::encode::write_str(&mut payload, &"s".repeat(300 << 10)).expect("writes");
    engine
        .put(
            "long",
            Codec::MsgpackZstd.as_u8(),
            &ser.encode_payload(&payload).expect("encodes").bytes,
        )
        .expect("puts");
    // The same, with a str that stops being UTF-8 past the first chunk.
    let mut bad = Vec::new();
    let mut s = vec![b'x'; 300 << 10];
    s[290 << 10] = 0xff;
    rmp::encode::write_str_len(&mut bad, s.len() as u32).expect("writes");
    bad.extend_from_slice(&s);
    engine
        .put("bad", Codec::Msgpack.as_u8(), &bad)
        .expect("puts");
    let scan = scan_shards(&engine, &ser, ScanDepth::Samples, &mut quiet()).expect("scans");
    assert_eq!(scan.shards, 1);
    assert_eq!(scan.samples, 3);
    assert_eq!(scan.payload_bytes, payload.len() as u64);
    assert_eq!(scan.failures.len(), 1);
    assert_eq!(scan.failures[0].key, "bad");
    assert!(
        matches!(
            &scan.failures[0].error,
            Error::Shard {
                source: ShardError::Msgpack {
                    sample: 0,
                    source: DecodeError::InvalidUtf8 { .. },
                    ..
                },
                ..
            }
        ),
        "{:?}",
        scan.failures[0].error
    );
}
