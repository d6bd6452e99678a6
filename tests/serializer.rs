//! The shard serializer: typed and byte-exact round trips, and every way bad bytes must fail with a
//! typed error (never a panic, a stack overflow or an allocation sized by a lie).

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use squirrel_store::array::{ArrayError, NdArray};
use squirrel_store::serializer::{
    Codec, MessagepackSerializer, Samples, Serializer, ShardError, decode_values, encode_values,
    payload_from_samples,
};
use squirrel_store::value::{
    DecodeError, IntMarker, Integer, LenWidth, MAX_DEPTH, Value, validate_value, value_len,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sample {
    image: NdArray,
    label: i64,
    metadata: Metadata,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Metadata {
    name: String,
    score: f64,
    tags: Vec<String>,
    #[serde(with = "serde_bytes")]
    raw: Vec<u8>,
    extra: Option<BTreeMap<String, i32>>,
}

fn samples(n: usize) -> Vec<Sample> {
    (0..n)
        .map(|i| {
            let pixels: Vec<f32> = (0..12).map(|p| (i * 12 + p) as f32 / 7.0).collect();
            Sample {
                image: NdArray::from_slice([3, 2, 2], &pixels).expect("valid array"),
                label: i as i64 - 3,
                metadata: Metadata {
                    name: format!("sample-{i} ünïcødé"),
                    score: i as f64 * 0.1,
                    tags: vec!["a".into(); i % 3],
                    raw: vec![i as u8; i],
                    extra: (i % 2 == 0).then(|| BTreeMap::from([("k".to_owned(), i as i32)])),
                },
            }
        })
        .collect()
}

fn serializers() -> [MessagepackSerializer; 3] {
    [
        MessagepackSerializer::default(),
        MessagepackSerializer::new().level(19),
        MessagepackSerializer::new().uncompressed(),
    ]
}

#[test]
fn typed_samples_round_trip() {
    let shard = samples(20);
    for ser in serializers() {
        let record = ser.encode(&shard).expect("encodes");
        let back: Vec<Sample> = ser.decode(record.codec, &record.bytes).expect("decodes");
        assert_eq!(back, shard);
        // Lazily, sample by sample, from the payload.
        let payload = ser
            .decode_payload(record.codec, &record.bytes)
            .expect("payload");
        let mut it = Samples::<Sample>::new(&payload);
        assert_eq!(it.next().expect("one").expect("fits"), shard[0]);
        assert_eq!(it.count(), 19);
    }
}

#[test]
fn typed_samples_are_python_shaped_values() {
    let shard = samples(3);
    let payload = payload_from_samples(&shard).expect("encodes");
    let values = decode_values(&payload).expect("decodes");
    assert_eq!(values.len(), 3);
    let v = &values[1];
    // Structs are maps with field names, in declaration order.
    let keys: Vec<_> = v
        .as_map()
        .expect("map")
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(keys, [Some("image"), Some("label"), Some("metadata")]);
    let image = v
        .get("image")
        .expect("image")
        .to_ndarray()
        .expect("msgpack-numpy map");
    assert_eq!(image, shard[1].image);
    assert_eq!(v.get("label").and_then(Value::as_i64), Some(-2));
    // The NdArray map is msgpack-numpy's: bin keys, in its order.
    let image_keys: Vec<_> = v
        .get("image")
        .and_then(Value::as_map)
        .expect("map")
        .iter()
        .map(|(k, _)| k.as_bin().map(<[u8]>::to_vec))
        .collect();
    let want: Vec<Option<Vec<u8>>> = ["nd", "type", "kind", "shape", "data"]
        .iter()
        .map(|k| Some(k.as_bytes().to_vec()))
        .collect();
    assert_eq!(image_keys, want);
    // Values re-encode to the same payload; the NdArray -> Value conversion agrees with serde.
    assert_eq!(encode_values(&values).expect("encodes"), payload);
    assert_eq!(
        Value::from(&shard[1].image).to_bytes().expect("encodes"),
        rmp_serde::to_vec(&shard[1].image).expect("serializes")
    );
}

#[test]
fn value_serde_matches_the_byte_exact_codec_for_canonical_values() {
    let v = Value::Map(vec![
        ("n".into(), Value::Nil),
        ("i".into(), Value::from(-70_000i64)),
        ("u".into(), Value::from(u64::MAX)),
        ("f".into(), Value::F32(1.5)),
        ("d".into(), Value::F64(-0.1)),
        ("s".into(), "text".into()),
        ("b".into(), Value::Bin(vec![1, 2, 3].into())),
        ("a".into(), Value::Array(vec![true.into(), false.into()])),
        ("e".into(), Value::Ext(-5, vec![9; 3])),
        (Value::from(7u8), Value::Map(vec![])),
    ]);
    let exact = v.to_bytes().expect("encodes");
    assert_eq!(rmp_serde::to_vec(&v).expect("serde encodes"), exact);
    assert_eq!(
        rmp_serde::from_slice::<Value>(&exact).expect("serde decodes"),
        v
    );
    assert_eq!(Value::decode_exact(&exact), Ok(v));
}

#[test]
fn large_shard_round_trips() {
    // One sample of 120 MiB: above 100 MiB and bin32-sized, so length fields and limits are real.
    const LEN: usize = 120 << 20;
    let data: Vec<u8> = (0..LEN).map(|i| (i / 4096) as u8 ^ (i as u8)).collect();
    let big = NdArray::new("|u1", [LEN], data).expect("valid");
    let ser = MessagepackSerializer::new().level(1);
    let record = ser.encode(std::slice::from_ref(&big)).expect("encodes");
    assert_eq!(record.codec, Codec::MsgpackZstd);
    let record = record.bytes;
    let back: Vec<NdArray> = ser.decode(Codec::MsgpackZstd, &record).expect("decodes");
    assert_eq!(back.len(), 1);
    assert!(back[0] == big);
    // The byte-exact path too, borrowing the payload.
    let payload = ser
        .decode_payload(Codec::MsgpackZstd, &record)
        .expect("payload");
    assert_eq!(value_len(&payload), Ok(payload.len()));
    let values = decode_values(&payload).expect("decodes");
    assert_eq!(encode_values(&values).expect("encodes"), *payload);
    // A limit below the size refuses it before decompressing.
    let tight = MessagepackSerializer::new().max_decompressed(LEN as u64);
    assert!(matches!(
        tight.decode_payload(Codec::MsgpackZstd, &record),
        Err(ShardError::TooLarge {
            at_least: false,
            ..
        })
    ));
}

#[test]
fn unknown_codec_is_refused() {
    assert!(matches!(
        Codec::try_from(3),
        Err(ShardError::UnknownCodec(3))
    ));
    assert!(Codec::from_u8(255).is_none());
    assert_eq!(Codec::from_u8(2), Some(Codec::MsgpackZstd));
    let ser = MessagepackSerializer::default();
    assert!(matches!(
        ser.decode_values(Codec::Raw, b"\xc0"),
        Err(ShardError::NotSamples)
    ));
}

#[test]
fn truncated_or_corrupt_zstd_frames_are_errors() {
    let ser = MessagepackSerializer::new().level(3);
    let record = ser.encode(&samples(5)).expect("encodes").bytes;
    for cut in [1, 3, record.len() / 2, record.len() - 1] {
        let r = ser.decode_payload(Codec::MsgpackZstd, &record[..cut]);
        assert!(
            matches!(r, Err(ShardError::Decompress(_))),
            "cut at {cut}: {r:?}"
        );
    }
    assert!(matches!(
        ser.decode_payload(Codec::MsgpackZstd, b""),
        Err(ShardError::Decompress(_))
    ));
    let mut garbage_tail = record.clone();
    garbage_tail.extend_from_slice(b"trailing garbage");
    assert!(matches!(
        ser.decode_payload(Codec::MsgpackZstd, &garbage_tail),
        Err(ShardError::Decompress(_))
    ));
    let mut flipped = record.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    // A flipped bit either breaks the frame or the samples, but never panics.
    let r = ser.decode_values(Codec::MsgpackZstd, &flipped);
    assert!(r.is_err() || r.is_ok());
}

#[test]
fn frame_claiming_a_terabyte_is_refused_before_allocating() {
    // A zstd frame header: magic, descriptor (8-byte content size, not single-segment), window
    // byte, then the content size: 1 TiB. Nothing follows.
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xc0, 0x00];
    frame.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let ser = MessagepackSerializer::default();
    match ser.decode_payload(Codec::MsgpackZstd, &frame) {
        Err(ShardError::TooLarge {
            size,
            at_least: false,
            limit,
        }) => {
            assert_eq!(size, 1 << 40);
            assert_eq!(limit, MessagepackSerializer::DEFAULT_MAX_DECOMPRESSED);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn msgpack_that_does_not_fit_the_type_names_the_sample() {
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Wanted {
        a: i64,
    }
    let payload = encode_values(&[
        Value::Map(vec![("a".into(), 1u8.into())]),
        Value::Map(vec![("a".into(), "not a number".into())]),
    ])
    .expect("encodes");
    let results: Vec<_> = Samples::<Wanted>::new(&payload).collect();
    assert_eq!(results.len(), 2);
    assert!(results[0].is_ok());
    assert!(matches!(
        results[1],
        Err(ShardError::Mismatch { sample: 1, .. })
    ));
    let ser = MessagepackSerializer::new().uncompressed();
    assert!(matches!(
        ser.decode::<Wanted>(Codec::Msgpack, &payload),
        Err(ShardError::Mismatch { sample: 1, .. })
    ));
}

#[test]
fn truncated_and_malformed_msgpack_is_an_error_at_its_sample() {
    let payload = payload_from_samples(&samples(3)).expect("encodes");
    let cut = &payload[..payload.len() - 1];
    assert!(matches!(
        decode_values(cut),
        Err(ShardError::Msgpack {
            sample: 2,
            source: DecodeError::Truncated { .. },
            ..
        })
    ));
    let results: Vec<_> = Samples::<Sample>::new(cut).collect();
    assert_eq!(results.len(), 3);
    assert!(matches!(
        results[2],
        Err(ShardError::Msgpack { sample: 2, .. })
    ));
    // Reserved marker, lying lengths, bad UTF-8.
    assert!(matches!(
        decode_values(b"\xc0\xc1"),
        Err(ShardError::Msgpack {
            sample: 1,
            offset: 1,
            source: DecodeError::ReservedMarker { offset: 0 }
        })
    ));
    for lie in [
        &b"\xdb\xff\xff\xff\xffab"[..],
        b"\xc6\x7f\xff\xff\xff",
        b"\xdd\xff\xff\xff\xff\xc0",
    ] {
        assert!(matches!(
            decode_values(lie),
            Err(ShardError::Msgpack {
                source: DecodeError::Truncated { .. },
                ..
            })
        ));
    }
    assert!(matches!(
        Value::decode(b"\xa2\xff\xfe"),
        Err(DecodeError::InvalidUtf8 { offset: 0 })
    ));
    assert!(matches!(
        Value::decode_exact(b"\xc0\xc0"),
        Err(DecodeError::TrailingBytes {
            offset: 1,
            count: 1
        })
    ));
}

#[test]
fn ndarray_data_length_mismatch_is_refused() {
    assert!(matches!(
        NdArray::new("<f4", [2, 3], vec![0; 20]),
        Err(ArrayError::DataLength {
            expected: 24,
            actual: 20,
            ..
        })
    ));
    assert!(NdArray::from_slice([4], &[1u16, 2, 3]).is_err());
    // A msgpack-numpy map whose data is one byte short.
    let mut v = Value::from(NdArray::from_slice([3], &[1i32, 2, 3]).expect("valid"));
    if let Value::Map(entries) = &mut v
        && let Some((_, Value::Bin(data))) = entries.last_mut()
    {
        *data = data[..data.len() - 1].into();
    }
    assert!(matches!(
        v.to_ndarray(),
        Err(ArrayError::DataLength {
            expected: 12,
            actual: 11,
            ..
        })
    ));
    let payload = v.to_bytes().expect("encodes");
    let r: Result<Vec<NdArray>, _> = Samples::new(&payload).collect();
    match r {
        Err(ShardError::Mismatch { sample: 0, source }) => {
            assert!(
                source.to_string().contains("needs 12 data bytes"),
                "{source}"
            );
        }
        other => panic!("expected Mismatch, got {other:?}"),
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for depth in [MAX_DEPTH + 1, 100_000] {
        let mut deep = vec![0x91u8; depth]; // fixarray of one element, nested
        deep.push(0xc0);
        assert!(matches!(
            Value::decode(&deep),
            Err(DecodeError::TooDeep {
                limit: MAX_DEPTH,
                ..
            })
        ));
        assert!(matches!(
            decode_values(&deep),
            Err(ShardError::Msgpack {
                sample: 0,
                source: DecodeError::TooDeep { .. },
                ..
            })
        ));
        // The typed path finds the sample's extent first, with the same limit.
        let r: Result<Vec<Value>, _> = Samples::new(&deep).collect();
        assert!(matches!(
            r,
            Err(ShardError::Msgpack {
                source: DecodeError::TooDeep { .. },
                ..
            })
        ));
        let mut maps = [0x81u8, 0xc0].repeat(depth); // {nil: {nil: ...}}
        maps.push(0xc0);
        assert!(matches!(
            Value::decode(&maps),
            Err(DecodeError::TooDeep { .. })
        ));
    }
    // Exactly at the limit is fine, and encodes back.
    let mut ok = vec![0x91u8; MAX_DEPTH];
    ok.push(0xc0);
    let v = Value::decode_exact(&ok).expect("within the limit");
    assert_eq!(v.to_bytes().expect("encodes"), ok);
}

/// Random values, including non-canonical integer markers and length widths.
fn arb_value() -> impl Strategy<Value = Value> {
    let markers = prop_oneof![
        Just(IntMarker::FixPos),
        Just(IntMarker::FixNeg),
        Just(IntMarker::U8),
        Just(IntMarker::U16),
        Just(IntMarker::U32),
        Just(IntMarker::U64),
        Just(IntMarker::I8),
        Just(IntMarker::I16),
        Just(IntMarker::I32),
        Just(IntMarker::I64),
    ];
    let int = prop_oneof![
        any::<i64>().prop_map(Integer::from),
        any::<u64>().prop_map(Integer::from),
        (-40i64..300).prop_map(Integer::from),
    ];
    let leaf = prop_oneof![
        Just(Value::Nil),
        any::<bool>().prop_map(Value::Bool),
        (int, proptest::option::of(markers))
            .prop_map(|(i, m)| Value::Int(m.and_then(|m| i.with_marker(m)).unwrap_or(i))),
        any::<f32>().prop_map(Value::F32),
        any::<f64>().prop_map(Value::F64),
        ".{0,40}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| Value::Bin(b.into())),
        (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(t, d)| Value::Ext(t, d)),
    ];
    let width = prop_oneof![
        Just(LenWidth::Fix),
        Just(LenWidth::W8),
        Just(LenWidth::W16),
        Just(LenWidth::W32)
    ];
    let leaf = (leaf, proptest::option::of(width)).prop_map(|(v, w)| match (w, &v) {
        (Some(width), Value::Str(_) | Value::Bin(_) | Value::Ext(..)) => Value::Wide {
            width,
            value: Box::new(v),
        },
        _ => v,
    });
    leaf.prop_recursive(6, 128, 20, |inner| {
        let width = prop_oneof![
            Just(LenWidth::Fix),
            Just(LenWidth::W16),
            Just(LenWidth::W32)
        ];
        let container = prop_oneof![
            proptest::collection::vec(inner.clone(), 0..20).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..20).prop_map(Value::Map),
        ];
        (container, proptest::option::of(width)).prop_map(|(v, w)| match w {
            Some(width) => Value::Wide {
                width,
                value: Box::new(v),
            },
            None => v,
        })
    })
}

proptest! {
    // A fixed seed keeps runs deterministic; failures print their minimal input instead of
    // writing a regression file.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x5e7a_11ed),
        ..ProptestConfig::default()
    })]

    #[test]
    fn values_reencode_byte_identically(v in arb_value()) {
        let bytes = v.to_bytes().expect("encodes");
        prop_assert_eq!(value_len(&bytes), Ok(bytes.len()));
        let (back, used) = Value::decode(&bytes).expect("decodes");
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back.to_bytes().expect("encodes"), bytes);
    }

    #[test]
    fn shards_of_values_survive_zstd(vs in proptest::collection::vec(arb_value(), 0..8)) {
        let ser = MessagepackSerializer::default();
        let payload = encode_values(&vs).expect("encodes");
        let record = ser.encode_values(&vs).expect("encodes");
        let back = ser.decode_values(record.codec, &record.bytes).expect("decodes");
        prop_assert_eq!(encode_values(&back).expect("encodes"), payload);
    }

    #[test]
    fn damaged_values_fail_cleanly(v in arb_value(), at in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<bool>()) {
        let mut bytes = v.to_bytes().expect("encodes");
        let i = at.index(bytes.len());
        if cut { bytes.truncate(i) } else { bytes[i] = byte }
        let decoded = Value::decode(&bytes);
        let len = value_len(&bytes);
        match (&decoded, &len) {
            (Ok((v, used)), Ok(n)) => {
                prop_assert_eq!(used, n);
                prop_assert_eq!(v.to_bytes().expect("encodes"), bytes[..*used].to_vec());
            }
            (Err(DecodeError::InvalidUtf8 { .. }), Ok(_)) | (Err(_), Err(_)) => {}
            (d, l) => prop_assert!(false, "decoder {:?} but skipper {:?}", d, l),
        }
        // The checking skipper fails exactly as the decoder does, at the same offset.
        prop_assert_eq!(validate_value(&bytes), decoded.map(|(_, used)| used));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let decoded = Value::decode(&bytes);
        let len = value_len(&bytes);
        // The skipper and the decoder agree on where a valid value ends.
        if let Ok((v, used)) = &decoded {
            prop_assert_eq!(&len, &Ok(*used));
            prop_assert_eq!(v.to_bytes().expect("encodes"), bytes[..*used].to_vec());
        }
        // The skipper does not check UTF-8; otherwise it fails exactly when the decoder does.
        if let (Ok(_), Err(e)) = (&len, &decoded) {
            prop_assert!(matches!(e, DecodeError::InvalidUtf8 { .. }), "{:?}", e);
        }
        let _ = decode_values(&bytes);
        let _ = Samples::<Sample>::new(&bytes).count();
        let ser = MessagepackSerializer::default();
        let _ = ser.decode_values(Codec::MsgpackZstd, &bytes);
        // The checking skipper fails exactly as the decoder does, at the same offset, on any
        // bytes (reserved markers, ext32 and huge claimed lengths come up far more often here
        // than in damaged values).
        prop_assert_eq!(validate_value(&bytes), decoded.map(|(_, used)| used));
    }
}

#[cfg(feature = "ndarray")]
#[test]
fn ndarray_crate_conversions() {
    use ndarray::{ArrayD, IxDyn};
    let a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1i16, -2, 3, -4, 5, -6]).expect("shape");
    // A transposed view is not C-contiguous; the conversion still writes C order.
    let t = a.t().to_owned();
    let nd = NdArray::from(t.clone());
    assert_eq!(nd.shape(), &[3, 2]);
    assert_eq!(
        nd.to_vec::<i16>().expect("i16"),
        t.iter().copied().collect::<Vec<_>>()
    );
    let back = ArrayD::<i16>::try_from(&nd).expect("converts");
    assert_eq!(back, t);
    let be = NdArray::new(">i2", [2], vec![0xff, 0xca, 0x00, 0x01]).expect("valid");
    assert_eq!(
        ArrayD::<i16>::try_from(&be)
            .expect("swaps")
            .into_raw_vec_and_offset()
            .0,
        [-54, 1]
    );
    assert!(ArrayD::<f32>::try_from(&be).is_err());
}
