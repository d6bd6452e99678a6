//! Writes the seed corpora into `corpus/<target>/seed-*`: the format-spec test vectors, the Python
//! squirrel shards of `tests/fixtures/`, small stores and shards made here, and operation
//! sequences that reach every operation and crash point.
//!
//! ```text
//! cargo run --no-default-features --features tools --bin gen_corpus
//! ```
//!
//! Seeds are deterministic, so re-running it rewrites the same files.

use std::path::{Path, PathBuf};

use serde::Serialize;
use squirrel_store::array::{NdArray, NdScalar, PyComplex};
use squirrel_store::serializer::{MessagepackSerializer, Serializer, encode_values};
use squirrel_store::value::Value;
use squirrel_store_fuzz::open_segment::{FIXED_ID, base, encode_record, segment_header};
use squirrel_store_fuzz::{compaction_crash, io_faults, ops_model};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn with_mode(mode: u8, rest: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(rest);
    v
}

fn open_segment() {
    let vectors = root().join("../format-spec/vectors");
    let basic = std::fs::read(vectors.join("v1-basic/segment.sqs")).expect("v1-basic segment");
    let torn = std::fs::read(vectors.join("v1-torn/segment.sqs")).expect("v1-torn segment");
    write("open_segment", "raw-v1-basic", &with_mode(0, &basic));
    write("open_segment", "raw-v1-torn", &with_mode(0, &torn));
    write(
        "open_segment",
        "header-v1-basic",
        &with_mode(1, &basic[32..]),
    );
    write("open_segment", "header-v1-torn", &with_mode(1, &torn[32..]));
    // The middle record's value damaged: corruption, not a torn tail.
    let mut mid = basic.clone();
    mid[32 + 24 + 5 + 3] ^= 0x40;
    write("open_segment", "raw-v1-basic-damaged", &with_mode(0, &mid));
    // Structured records (mode 2): put, tombstone, zeros, a damaged put, a forged header.
    let mut s = vec![2u8];
    s.extend([0, 4]);
    s.extend(b"key1");
    s.extend([0, 5]);
    s.extend(b"value");
    s.extend([1, 4]);
    s.extend(b"key1");
    s.push(0);
    s.extend([0, 2]);
    s.extend(b"k2");
    s.extend([2, 3]);
    s.extend(b"abc");
    s.extend([4, 2]);
    s.extend(b"k3");
    s.extend([0, 1, b'x', 7, 0x10]);
    s.extend([3, 0x40, 0]);
    s.extend([
        5, 1, 2, 3, 4, 1, 0, 3, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0,
    ]);
    write("open_segment", "structured", &s);
    // The base store: its index as mode 3's raw index, and patched (modes 4 to 6).
    let b = base();
    write(
        "open_segment",
        "base-small-index",
        &with_mode(3, &small_index(&b.index)),
    );
    let header_patch = [4u8, 0b111, 1, 1, 40, 0x01];
    write("open_segment", "base-index-header-patched", &header_patch);
    let slot_patch = [4u8, 0b110, 1, 2, 0, 9, 0x80];
    write("open_segment", "base-index-slot-patched", &slot_patch);
    let seg_patch = [5u8, 0b001, 1, 2, 1, 30, 0x01];
    write("open_segment", "base-segment-key-patched", &seg_patch);
    let both = [6u8, 0b111, 1, 2, 2, 8, 0x02, 1, 2, 1, 4, 0x10];
    write("open_segment", "base-both-patched", &both);
    // A segment with a shard record (codec 2) and a non-UTF-8 key.
    let mut seg = segment_header(FIXED_ID).to_vec();
    let payload = encode_values(&[Value::from(1i64), Value::from("x")]).expect("encode");
    let frame = MessagepackSerializer::new()
        .level(3)
        .encode_payload(&payload)
        .expect("compress")
        .bytes;
    seg.extend(encode_record(1, 2, b"shard", &frame));
    seg.extend(encode_record(1, 0, b"\xff\xfe", b"not utf-8"));
    write("open_segment", "shard-and-bad-key", &with_mode(0, &seg));
}

/// The base store's index as the smallest table the format allows (16 slots, 4608 bytes), so
/// mode 3's seed is not the engine's 36 KiB minimum: the same header and entries, re-slotted.
fn small_index(index: &[u8]) -> Vec<u8> {
    const SLOTS: usize = 16;
    let word = |o: usize| u64::from_le_bytes(index[o..o + 8].try_into().expect("8 bytes"));
    let mut out = index[..4096].to_vec();
    out.resize(4096 + 32 * SLOTS, 0);
    let mut used = 0u64;
    for s in (4096..index.len()).step_by(32) {
        let hash = word(s);
        if hash <= 1 {
            continue;
        }
        let mut i = (hash as usize) & (SLOTS - 1);
        while word_at(&out, 4096 + 32 * i) != 0 {
            i = (i + 1) % SLOTS;
        }
        let at = 4096 + 32 * i;
        out[at..at + 32].copy_from_slice(&index[s..s + 32]);
        used += 1;
    }
    out[32..40].copy_from_slice(&(SLOTS as u64).to_le_bytes());
    out[40..48].copy_from_slice(&used.to_le_bytes());
    let crc = crc32fast::hash(&out[..124]);
    out[124..128].copy_from_slice(&crc.to_le_bytes());
    out
}

fn word_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn ops_model() {
    use ops_model::Op::*;
    let seqs: Vec<(&str, u8, Vec<ops_model::Op>)> = vec![
        (
            "basic",
            4,
            vec![
                Set {
                    key: 0,
                    len: 11,
                    fill: 1,
                },
                Set {
                    key: 1,
                    len: 12,
                    fill: 2,
                },
                Set {
                    key: 2,
                    len: 0,
                    fill: 3,
                },
                Get { key: 0 },
                Set {
                    key: 1,
                    len: 18,
                    fill: 4,
                },
                Delete { key: 2 },
                Sync,
                Checkpoint,
                Reopen,
                Get { key: 1 },
            ],
        ),
        (
            "cut-in-last",
            3,
            vec![
                Set {
                    key: 0,
                    len: 10,
                    fill: 1,
                },
                Set {
                    key: 1,
                    len: 10,
                    fill: 2,
                },
                Set {
                    key: 2,
                    len: 10,
                    fill: 3,
                },
                Cut {
                    within_data: true,
                    pos: 100,
                },
                Set {
                    key: 3,
                    len: 5,
                    fill: 4,
                },
                Reopen,
            ],
        ),
        (
            "cut-after-checkpoint",
            1,
            vec![
                Set {
                    key: 4,
                    len: 30,
                    fill: 1,
                },
                Set {
                    key: 5,
                    len: 30,
                    fill: 2,
                },
                Checkpoint,
                Set {
                    key: 6,
                    len: 30,
                    fill: 3,
                },
                Delete { key: 4 },
                Cut {
                    within_data: true,
                    pos: 7,
                },
            ],
        ),
        (
            "refresh-and-compact",
            2,
            vec![
                Set {
                    key: 0,
                    len: 40,
                    fill: 1,
                },
                Refresh,
                Set {
                    key: 0,
                    len: 41,
                    fill: 2,
                },
                SetMany(vec![(1, 3, 1), (2, 4, 2), (1, 5, 3)]),
                Refresh,
                Compact,
                Refresh,
                Delete { key: 1 },
                Cut {
                    within_data: true,
                    pos: 60,
                },
                Refresh,
            ],
        ),
        (
            "long-keys",
            0x15,
            vec![
                Set {
                    key: 10,
                    len: 100,
                    fill: 9,
                },
                Set {
                    key: 11,
                    len: 100,
                    fill: 8,
                },
                Set {
                    key: 8,
                    len: 1,
                    fill: 7,
                },
                Delete { key: 10 },
                Reopen,
            ],
        ),
        (
            "flip-segment",
            2,
            vec![
                Set {
                    key: 0,
                    len: 20,
                    fill: 1,
                },
                Set {
                    key: 1,
                    len: 20,
                    fill: 2,
                },
                Checkpoint,
                Set {
                    key: 2,
                    len: 20,
                    fill: 3,
                },
                Flip {
                    target: 0,
                    pos: 50,
                    mask: 0x04,
                },
            ],
        ),
        (
            "flip-index",
            2,
            vec![
                Set {
                    key: 0,
                    len: 20,
                    fill: 1,
                },
                Set {
                    key: 1,
                    len: 20,
                    fill: 2,
                },
                Checkpoint,
                Flip {
                    target: 2,
                    pos: 0x30,
                    mask: 0x01,
                },
            ],
        ),
        (
            "cut-anywhere",
            5,
            vec![
                Set {
                    key: 3,
                    len: 150,
                    fill: 1,
                },
                Set {
                    key: 4,
                    len: 150,
                    fill: 2,
                },
                Cut {
                    within_data: false,
                    pos: 0xffff_0000,
                },
                Set {
                    key: 5,
                    len: 10,
                    fill: 3,
                },
                DropReader,
            ],
        ),
    ];
    for (name, config, ops) in seqs {
        let mut v = vec![config];
        for op in &ops {
            op.encode(&mut v);
        }
        write("ops_model", name, &v);
    }
}

fn decode_shard() {
    #[derive(Serialize)]
    struct Sample {
        image: NdArray,
        label: i64,
    }
    let image = NdArray::from_slice(vec![2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("array");
    let samples = vec![
        Sample {
            image: image.clone(),
            label: 3,
        },
        Sample {
            image: NdArray::from_slice(vec![4], &[1u8, 2, 3, 4]).expect("array"),
            label: -1,
        },
    ];
    let typed = squirrel_store::serializer::payload_from_samples(&samples).expect("payload");
    write("decode_shard", "typed-samples", &with_mode(0, &typed));
    let values = vec![
        Value::Map(vec![
            (Value::from("image"), Value::from(&image)),
            (
                Value::from("scalar"),
                Value::from(&NdScalar::from_value(7i64)),
            ),
            (
                Value::from("complex"),
                Value::from(&PyComplex {
                    repr: "(1-1.5j)".into(),
                }),
            ),
            (Value::from("meta"), Value::Map(vec![])),
        ]),
        Value::Array(vec![Value::Nil, Value::Bool(true), Value::F64(0.5)]),
        Value::Str("π".into()),
    ];
    let payload = encode_values(&values).expect("payload");
    write("decode_shard", "values", &with_mode(0, &payload));
    // A big-endian array, a bool array, a datetime array.
    let odd = encode_values(&[
        Value::from(&NdArray::new(">i4", vec![2], vec![0, 0, 0, 1, 0, 0, 0, 2]).expect("array")),
        Value::from(&NdArray::new("|b1", vec![3], vec![0, 1, 2]).expect("array")),
        Value::from(&NdArray::new("<M8[ns]", vec![1], vec![0; 8]).expect("array")),
    ])
    .expect("payload");
    write("decode_shard", "odd-arrays", &with_mode(0, &odd));
    // Mode 1: zstd frames with the codec byte and a limit.
    let frame = zstd::bulk::compress(&payload, 3).expect("compress");
    let mut m1 = vec![1u8, 2, 1];
    m1.extend(4096u16.to_le_bytes());
    m1.extend(&frame);
    write("decode_shard", "zstd-frame", &m1);
    let mut m1 = vec![1u8, 1, 0, 200];
    m1.extend(&typed);
    write("decode_shard", "msgpack-codec", &m1);
    // Mode 2: compress then decode.
    let mut m2 = vec![2u8, 1, 2];
    m2.extend(100_000u32.to_le_bytes());
    m2.extend(&typed);
    write("decode_shard", "compress-roundtrip", &m2);
    // Mode 3: NdArray parts (dtype number, shape dims, data).
    write(
        "decode_shard",
        "ndarray-parts",
        &[3, 0, 2, 0, 2, 0, 3, 1, 2, 3, 4],
    );
    write(
        "decode_shard",
        "ndarray-overflow",
        &[
            3, 22, 3, 7, 255, 255, 255, 255, 255, 255, 255, 255, 7, 0, 0, 0, 0, 0, 0, 0, 4, 0, 6,
            1, 0, 0, 0,
        ],
    );
    // Mode 4: a msgpack-numpy map from fields.
    write(
        "decode_shard",
        "numpy-map",
        &[
            4, 5, 0, 0, 1, 2, 0, 2, 3, 3, 5, 2, 0, 2, 0, 3, 4, 4, 24, 0, 1,
        ],
    );
    // Mode 5: a scalar.
    write("decode_shard", "scalar", &[5, 12, 1, 2, 3, 4, 5, 6, 7, 8]);
    // Python squirrel's shards (msgpack-numpy 0.4.8), gunzipped.
    let fixtures = root().join("../tests/fixtures/squirrel-0.20.2/store");
    for name in ["shard_0", "mixed", "single_sample", "empty_shard"] {
        let p = fixtures.join(format!("{name}.gz"));
        if let Ok(payload) = squirrel_store::squirrel_dir::read_shard_file(&p, 1 << 20) {
            write(
                "decode_shard",
                &format!("python-{name}"),
                &with_mode(0, &payload),
            );
        }
    }
}

fn io_faults() {
    use io_faults::Op::*;
    let ops = vec![
        Set {
            key: 0,
            len: 10,
            fill: 1,
        },
        Set {
            key: 1,
            len: 20,
            fill: 2,
        },
        SetMany(vec![(2, 5, 1), (3, 6, 2), (2, 7, 3)]),
        Delete { key: 0 },
        Sync,
        Checkpoint,
        Set {
            key: 4,
            len: 30,
            fill: 3,
        },
        Compact,
        Set {
            key: 5,
            len: 30,
            fill: 4,
        },
        Set {
            key: 1,
            len: 40,
            fill: 5,
        },
    ];
    for (name, after, fault) in [
        ("fail-at-open", 0u16, 0u8),
        ("fail-early", 2, 0),
        ("fail-mid-short-write", 5, 0x90),
        ("fail-after-write", 7, 0xd5),
        ("fail-in-compaction", 14, 0),
        ("no-fail", 500, 0),
    ] {
        let mut v = Vec::new();
        io_faults::encode_head(after, fault, 3, &mut v);
        for op in &ops {
            op.encode(&mut v);
        }
        write("io_faults", name, &v);
    }
}

fn compaction_crash() {
    use compaction_crash::Op::*;
    let ops = vec![
        Set {
            key: 0,
            len: 10,
            fill: 1,
        },
        Set {
            key: 1,
            len: 20,
            fill: 2,
        },
        OpenReader,
        Set {
            key: 0,
            len: 11,
            fill: 3,
        },
        Checkpoint,
        Delete { key: 1 },
        SetMany(vec![(2, 5, 1), (3, 6, 2)]),
        Compact,
        Set {
            key: 4,
            len: 30,
            fill: 4,
        },
        Delete { key: 2 },
    ];
    for point in 0u8..6 {
        for go_on in [0u8, 0x80] {
            let mut v = vec![2u8, point | go_on];
            for op in &ops {
                op.encode(&mut v);
            }
            write("compaction_crash", &format!("point{point}-{go_on:02x}"), &v);
        }
    }
}

fn main() {
    open_segment();
    ops_model();
    decode_shard();
    io_faults();
    compaction_crash();
    println!("seeds written under {}", root().join("corpus").display());
}
