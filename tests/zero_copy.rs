//! Zero-copy decoding: arrays and bins read from a store share the shard's bytes (the memory map
//! for uncompressed records, the decompressed buffer otherwise), stay valid after the store is
//! gone, and give the same values as owned ones, aligned or not.

use serde::{Deserialize, Serialize};
use squirrel_store::array::NdArray;
use squirrel_store::serializer::{Codec, MessagepackSerializer};
use squirrel_store::value::{Bytes, Value};
use squirrel_store::{Config, Durability, SquirrelStore, Store};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Sample {
    // A str of varying length first, so that the array's bytes land at every offset mod 8.
    name: String,
    image: NdArray,
    label: i64,
}

/// SplitMix64, seeded: the same samples on every run.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn shard(seed: u64, n: usize) -> Vec<Sample> {
    let mut rng = seed;
    (0..n)
        .map(|i| {
            let values: Vec<f64> = (0..64).map(|_| (next(&mut rng) >> 11) as f64).collect();
            Sample {
                name: "x".repeat(i % 9),
                image: NdArray::from_slice([8, 8], &values).expect("shape"),
                label: i as i64,
            }
        })
        .collect()
}

fn store(dir: &std::path::Path, serializer: MessagepackSerializer) -> SquirrelStore {
    let engine = Config::new(dir)
        .durability(Durability::Buffered)
        .open()
        .expect("opens");
    SquirrelStore::new(engine, serializer)
}

#[test]
fn uncompressed_gets_share_the_map_and_read_right_at_every_alignment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = store(dir.path(), MessagepackSerializer::new().uncompressed());
    let written = shard(1, 40);
    st.set(&written, Some("k")).expect("set");
    let codec = st.engine().get("k").expect("get").expect("present").codec();
    assert_eq!(codec, Codec::Msgpack.as_u8());

    let read: Vec<Sample> = st.get("k").expect("get").expect("present");
    assert_eq!(read, written);
    let mut offsets = [false; 8];
    for (r, w) in read.iter().zip(&written) {
        assert!(
            r.image.is_shared(),
            "an uncompressed get copies no array data"
        );
        offsets[r.image.data().as_ptr().addr() % 8] = true;
        // Typed access works whatever the alignment: borrowed when aligned, copied once if not.
        let want = w.image.as_slice::<f64>().expect("owned arrays are aligned");
        assert_eq!(r.image.as_slice::<f64>().expect("typed view"), want);
        assert_eq!(r.image.as_slice::<f64>().expect("again"), want);
        assert_eq!(r.image.to_vec::<f64>().expect("copy"), want);
    }
    assert!(
        offsets.iter().filter(|o| **o).count() > 1,
        "the arrays did not land at different alignments: {offsets:?}"
    );

    // Values outlive the store and its engine: they keep the map alive.
    drop(st);
    let owned: Vec<NdArray> = read.into_iter().map(|s| s.image.into_owned()).collect();
    for (o, w) in owned.iter().zip(&written) {
        assert!(!o.is_shared());
        assert_eq!(o, &w.image);
    }
}

#[test]
fn compressed_gets_share_one_decompressed_buffer_that_later_gets_leave_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = store(dir.path(), MessagepackSerializer::new().level(3));
    let shards: Vec<Vec<Sample>> = (0..12).map(|i| shard(100 + i, 30)).collect();
    for (i, s) in shards.iter().enumerate() {
        st.set(s, Some(&format!("k{i:02}"))).expect("set");
    }
    // Hold every shard read while the next ones are decompressed: buffers are reused only once
    // nothing shares them, so each held shard keeps its own bytes.
    let mut held = Vec::new();
    for round in 0..3 {
        for (i, s) in shards.iter().enumerate() {
            let key = format!("k{i:02}");
            assert_eq!(
                st.engine()
                    .get(&key)
                    .expect("get")
                    .expect("present")
                    .codec(),
                Codec::MsgpackZstd.as_u8()
            );
            let read: Vec<Sample> = st.get(&key).expect("get").expect("present");
            assert!(read.iter().all(|r| r.image.is_shared()));
            assert_eq!(&read, s);
            if round == 0 {
                held.push(read);
            }
        }
    }
    for (h, s) in held.iter().zip(&shards) {
        assert_eq!(h, s);
    }
}

#[test]
fn values_share_bins_and_arrays_made_from_them_share_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = store(dir.path(), MessagepackSerializer::new().uncompressed());
    let written = shard(7, 5);
    st.set(&written, Some("k")).expect("set");
    let values = st.get_values("k").expect("get").expect("present");
    for (v, w) in values.iter().zip(&written) {
        let Some(Value::Bin(data)) = v.get("image").and_then(|m| m.get_bin(b"data")) else {
            panic!("no data bin in {v:?}");
        };
        assert!(data.is_shared());
        assert_eq!(data, &w.image.data().to_vec());
        let array = v.get("image").expect("image").to_ndarray().expect("array");
        assert!(array.is_shared());
        assert_eq!(array, w.image);
    }
    // Re-encoding shared values gives the stored bytes back.
    let payload = st.get_payload("k").expect("get").expect("present");
    assert!(payload.is_mapped());
    let mut again = Vec::new();
    for v in &values {
        v.encode(&mut again).expect("encodes");
    }
    assert_eq!(&again[..], &payload[..]);
    assert_eq!(payload.values().expect("decodes"), values);
    assert_eq!(payload.samples::<Sample>().expect("decodes"), written);
}

#[test]
fn bytes_built_in_code_are_owned_and_compare_by_content() {
    let a = Bytes::from(vec![1u8, 2, 3]);
    let b = Bytes::from(&[1u8, 2, 3]);
    assert_eq!(a, b);
    assert_eq!(a, [1u8, 2, 3]);
    assert!(!a.is_shared());
    assert_eq!(a.clone().into_vec(), vec![1, 2, 3]);
    assert_eq!(Bytes::default().len(), 0);
    // Decoding plain bytes (no store) copies: nothing to share.
    let v = Value::Bin(a);
    let (d, _) = Value::decode(&v.to_bytes().expect("encodes")).expect("decodes");
    assert!(matches!(&d, Value::Bin(b) if !b.is_shared() && b == &[1u8, 2, 3]));
}

#[test]
fn misaligned_bool_and_big_endian_arrays_keep_their_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let st = store(dir.path(), MessagepackSerializer::new().uncompressed());
    let be = NdArray::new(">i4", [2], vec![0, 0, 0, 1, 0, 0, 0, 2]).expect("valid");
    let bools = NdArray::new("|b1", [2], vec![0, 2]).expect("valid");
    let samples: Vec<Vec<NdArray>> = (0..8)
        .map(|i| {
            let pad = NdArray::new("|u1", [i], vec![0; i]).expect("valid");
            vec![pad, be.clone(), bools.clone()]
        })
        .collect();
    st.set(&samples, Some("k")).expect("set");
    let read: Vec<Vec<NdArray>> = st.get("k").expect("get").expect("present");
    for s in &read {
        assert!(s[1].is_shared());
        assert!(
            s[1].as_slice::<i32>().is_err(),
            "big-endian is not a native view"
        );
        assert_eq!(s[1].to_vec::<i32>().expect("swaps"), vec![1, 2]);
        assert!(s[2].as_slice::<bool>().is_err(), "byte 2 is no bool");
        assert!(s[1].as_slice::<f32>().is_err(), "wrong dtype");
    }
}

#[test]
fn shared_values_keep_their_auto_traits() {
    fn check<T: Send + Sync + std::panic::UnwindSafe + std::panic::RefUnwindSafe>() {}
    check::<NdArray>();
    check::<Value>();
    check::<Bytes>();
    check::<squirrel_store::store::Payload>();
}
