//! Adaptive compression: the default serializer keeps a zstd frame only where it saves enough,
//! explicit choices (always a level, never) are kept, and every choice round-trips.

use serde::{Deserialize, Serialize};
use squirrel_store::array::NdArray;
use squirrel_store::serializer::{Codec, MessagepackSerializer, Serializer, payload_from_samples};
use squirrel_store::transfer::{ScanDepth, scan_shards};
use squirrel_store::{Config, Durability, SquirrelStore, Store};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sample {
    image: NdArray,
    label: i64,
    metadata: String,
}

/// splitmix64: deterministic, seeded, no dependency on a crate's RNG staying the same.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), as `np.random.rand` makes.
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The seed workload's shard: 100 samples of a random float32 3×32×32 image, a label, metadata.
fn float_shard(seed: u64) -> Vec<Sample> {
    let mut rng = Rng(seed);
    (0..100)
        .map(|i| {
            let pixels: Vec<f32> = (0..3 * 32 * 32).map(|_| rng.f32()).collect();
            Sample {
                image: NdArray::from_slice([3, 32, 32], &pixels).expect("valid"),
                label: (rng.next() % 10) as i64,
                metadata: format!("sample {i} of shard {seed}"),
            }
        })
        .collect()
}

/// A compressible shard: uint8 3×32×32 images with structure (gradients and flat patches, a
/// little noise), as natural images decoded to pixels are.
fn image_shard(seed: u64) -> Vec<Sample> {
    let mut rng = Rng(seed);
    (0..100)
        .map(|i| {
            let base = (rng.next() % 200) as usize;
            let pixels: Vec<u8> = (0..3 * 32 * 32)
                .map(|p| {
                    let (c, y, x) = (p / 1024, (p / 32) % 32, p % 32);
                    let smooth = base + c * 20 + if y < 16 { x } else { 16 };
                    (smooth + (rng.next() % 3) as usize) as u8
                })
                .collect();
            Sample {
                image: NdArray::from_slice([3, 32, 32], &pixels).expect("valid"),
                label: (rng.next() % 10) as i64,
                metadata: format!("image {i}"),
            }
        })
        .collect()
}

/// A compressible shard of token ids: int32 sequences drawn from a small repeated vocabulary.
fn token_shard(seed: u64) -> Vec<Sample> {
    let mut rng = Rng(seed);
    let phrases: Vec<Vec<i32>> = (0..20)
        .map(|_| (0..8).map(|_| (rng.next() % 32_000) as i32).collect())
        .collect();
    (0..100)
        .map(|i| {
            let tokens: Vec<i32> = (0..64)
                .flat_map(|_| phrases[(rng.next() % 20) as usize].clone())
                .collect();
            Sample {
                image: NdArray::from_slice([tokens.len()], &tokens).expect("valid"),
                label: i,
                metadata: "tokens".into(),
            }
        })
        .collect()
}

fn check_round_trip(ser: &MessagepackSerializer, shard: &[Sample]) -> (Codec, usize, usize) {
    let payload = payload_from_samples(shard).expect("encodes");
    let record = ser.encode(shard).expect("encodes");
    let back: Vec<Sample> = ser.decode(record.codec, &record.bytes).expect("decodes");
    assert_eq!(back, shard);
    let by_payload = ser.encode_payload(&payload).expect("encodes");
    assert_eq!(by_payload.codec, record.codec);
    assert_eq!(
        *ser.decode_payload(by_payload.codec, &by_payload.bytes)
            .expect("decodes"),
        *payload
    );
    (record.codec, record.bytes.len(), payload.len())
}

#[test]
fn incompressible_shards_are_stored_uncompressed_by_default() {
    let ser = MessagepackSerializer::default();
    for seed in 0..3 {
        let shard = float_shard(seed);
        let (codec, stored, raw) = check_round_trip(&ser, &shard);
        assert_eq!(codec, Codec::Msgpack, "seed {seed}");
        assert_eq!(stored, raw, "stored as it is");
    }
    // Without the sample, the whole shard is compressed, measured and still refused.
    let (codec, _, _) = check_round_trip(&ser.clone().sampling(false), &float_shard(7));
    assert_eq!(codec, Codec::Msgpack);
}

#[test]
fn compressible_shards_are_compressed_by_default() {
    let ser = MessagepackSerializer::default();
    for shard in [image_shard(1), token_shard(2)] {
        for s in [ser.clone(), ser.clone().sampling(false)] {
            let (codec, stored, raw) = check_round_trip(&s, &shard);
            assert_eq!(codec, Codec::MsgpackZstd);
            assert!(stored as f64 <= 0.6 * raw as f64, "{stored} of {raw} bytes");
        }
    }
}

#[test]
fn explicit_choices_are_kept() {
    let always = MessagepackSerializer::new().level(3);
    let never = MessagepackSerializer::new().uncompressed();
    for shard in [
        float_shard(3),
        image_shard(4),
        Vec::new(),
        image_shard(5)[..1].to_vec(),
    ] {
        assert_eq!(check_round_trip(&always, &shard).0, Codec::MsgpackZstd);
        let (codec, stored, raw) = check_round_trip(&never, &shard);
        assert_eq!(codec, Codec::Msgpack);
        assert_eq!(stored, raw);
    }
    // Small and empty shards under the adaptive default: measured whole, no frame when it loses.
    let ser = MessagepackSerializer::default();
    assert_eq!(check_round_trip(&ser, &[]).0, Codec::Msgpack);
    assert_eq!(
        ser.encode_payload(&[0u8; 4096]).expect("encodes").codec,
        Codec::MsgpackZstd
    );
}

#[test]
fn policy_builders_and_accessors() {
    let d = MessagepackSerializer::default();
    assert_eq!(
        d.compression_level(),
        Some(MessagepackSerializer::DEFAULT_LEVEL)
    );
    assert_eq!(
        d.min_saving_fraction(),
        Some(MessagepackSerializer::DEFAULT_MIN_SAVING)
    );
    let a = MessagepackSerializer::new().level(9).min_saving(0.25);
    assert_eq!(a.compression_level(), Some(9));
    assert_eq!(a.min_saving_fraction(), Some(0.25));
    assert_eq!(
        MessagepackSerializer::new().level(9).min_saving_fraction(),
        None
    );
    let n = MessagepackSerializer::new().uncompressed();
    assert_eq!(n.compression_level(), None);
    assert_eq!(n.clone().min_saving(0.1).compression_level(), Some(3));
    // Out-of-range fractions are clamped, NaN is 0: never a panic.
    for (f, want) in [
        (-1.0, 0.0),
        (2.0, 1.0),
        (f64::NAN, 0.0),
        (f64::INFINITY, 1.0),
    ] {
        assert_eq!(d.clone().min_saving(f).min_saving_fraction(), Some(want));
    }
    // A saving of 100% can never be met: everything is stored uncompressed.
    let all = d.clone().min_saving(1.0);
    assert_eq!(
        all.encode_payload(&[0u8; 1 << 20]).expect("encodes").codec,
        Codec::Msgpack
    );
    // 0%: any frame not larger than the payload is kept.
    let any = d.min_saving(0.0);
    assert_eq!(
        any.encode_payload(&[0u8; 1 << 20]).expect("encodes").codec,
        Codec::MsgpackZstd
    );
}

#[test]
fn the_store_records_each_shards_choice_and_the_scan_counts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Config::new(dir.path())
        .durability(Durability::Buffered)
        .open()
        .expect("opens");
    let store = SquirrelStore::new(engine, MessagepackSerializer::default());
    store.set(&float_shard(10), Some("floats")).expect("set");
    store.set(&image_shard(11), Some("images")).expect("set");
    store
        .set_many(&[("tokens", token_shard(12)), ("floats2", float_shard(13))])
        .expect("set_many");
    let codec = |k: &str| {
        store
            .engine()
            .get(k)
            .expect("get")
            .expect("present")
            .codec()
    };
    assert_eq!(codec("floats"), Codec::Msgpack.as_u8());
    assert_eq!(codec("floats2"), Codec::Msgpack.as_u8());
    assert_eq!(codec("images"), Codec::MsgpackZstd.as_u8());
    assert_eq!(codec("tokens"), Codec::MsgpackZstd.as_u8());
    assert_eq!(
        store.get::<Sample>("floats").expect("get"),
        Some(float_shard(10))
    );
    assert_eq!(
        store.get::<Sample>("tokens").expect("get"),
        Some(token_shard(12))
    );

    let scan = scan_shards(
        store.engine(),
        store.serializer(),
        ScanDepth::Sizes,
        &mut |_, _| {},
    )
    .expect("scans");
    assert_eq!(scan.shards, 4);
    assert_eq!(scan.compressed.shards, 2);
    assert_eq!(scan.uncompressed.shards, 2);
    assert_eq!(
        scan.compressed.stored_bytes + scan.uncompressed.stored_bytes,
        scan.stored_bytes
    );
    assert_eq!(
        scan.compressed.payload_bytes + scan.uncompressed.payload_bytes,
        scan.payload_bytes
    );
    assert_eq!(
        scan.uncompressed.stored_bytes,
        scan.uncompressed.payload_bytes
    );
    assert!(scan.compressed.stored_bytes as f64 <= 0.6 * scan.compressed.payload_bytes as f64);
}
