//! Compatibility with Python squirrel-core 0.20.2: the shards in `tests/fixtures/squirrel-0.20.2`
//! were written by the real `SquirrelStore` + `MessagepackSerializer`; `expected.json` says what
//! squirrel decodes them to, in a tagged JSON form (see the fixture's README in shared/fixtures).
//!
//! Every shard must decode to exactly those values, re-encode to the identical bytes, and survive
//! a trip through zstd unchanged.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use squirrel_store::array::{ArrayError, NdArray, NdScalar, PyComplex};
use squirrel_store::serializer::{
    MessagepackSerializer, Samples, Serializer, decode_values, encode_values, payload_from_samples,
    split_samples,
};
use squirrel_store::squirrel_dir::SquirrelDir;
use squirrel_store::value::Value;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/squirrel-0.20.2")
}

fn expected() -> Json {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("valid JSON")
}

fn store() -> SquirrelDir {
    SquirrelDir::new(fixture_dir().join("store"))
}

fn b64(s: &Json) -> Vec<u8> {
    B64.decode(s.as_str().expect("base64 string"))
        .expect("valid base64")
}

/// Asserts that `actual` is what the tagged JSON `expected` describes; `at` names the place.
fn check(expected: &Json, actual: &Value, at: &str) {
    match expected {
        Json::Null => assert!(actual.is_nil(), "{at}: expected nil, got {actual:?}"),
        Json::Bool(b) => assert_eq!(actual.as_bool(), Some(*b), "{at}"),
        Json::Number(n) => {
            let Value::Int(i) = actual else {
                panic!("{at}: expected integer {n}, got {actual:?}")
            };
            let want: i128 = n.to_string().parse().expect("JSON integer");
            assert_eq!(i.as_i128(), want, "{at}");
        }
        Json::String(s) => assert_eq!(actual.as_str(), Some(s.as_str()), "{at}"),
        Json::Array(items) => {
            let got = actual
                .as_array()
                .unwrap_or_else(|| panic!("{at}: expected array, got {actual:?}"));
            assert_eq!(got.len(), items.len(), "{at}: array length");
            for (i, (e, a)) in items.iter().zip(got).enumerate() {
                check(e, a, &format!("{at}[{i}]"));
            }
        }
        Json::Object(tagged) => {
            let (tag, body) = tagged.iter().next().expect("one tag");
            assert_eq!(tagged.len(), 1, "{at}: one tag per object");
            match tag.as_str() {
                "$map" => {
                    let entries = body.as_array().expect("$map entries");
                    let got = actual
                        .as_map()
                        .unwrap_or_else(|| panic!("{at}: expected map, got {actual:?}"));
                    assert_eq!(got.len(), entries.len(), "{at}: map length");
                    for (i, (e, (k, v))) in entries.iter().zip(got).enumerate() {
                        let pair = e.as_array().expect("[key, value]");
                        check(&pair[0], k, &format!("{at}.key{i}"));
                        check(&pair[1], v, &format!("{at}.{}", pair[0]));
                    }
                }
                "$ndarray" => {
                    let a = actual
                        .to_ndarray()
                        .unwrap_or_else(|e| panic!("{at}: expected ndarray: {e}"));
                    assert_eq!(a.dtype(), body["dtype"].as_str().expect("dtype"), "{at}");
                    let shape: Vec<usize> = body["shape"]
                        .as_array()
                        .expect("shape")
                        .iter()
                        .map(|d| d.as_u64().expect("dim") as usize)
                        .collect();
                    assert_eq!(a.shape(), shape.as_slice(), "{at}");
                    assert_eq!(a.data(), b64(&body["data_b64"]).as_slice(), "{at}");
                    // And back: the same map, key order and all.
                    assert_eq!(&Value::from(&a), actual, "{at}: NdArray -> Value");
                }
                "$scalar" => {
                    let s = NdScalar::try_from(actual)
                        .unwrap_or_else(|e| panic!("{at}: expected numpy scalar: {e}"));
                    assert_eq!(s.dtype(), body["dtype"].as_str().expect("dtype"), "{at}");
                    assert_eq!(s.data(), b64(&body["data_b64"]).as_slice(), "{at}");
                    assert_eq!(&Value::from(&s), actual, "{at}: NdScalar -> Value");
                }
                "$complex" => {
                    let c = PyComplex::try_from(actual)
                        .unwrap_or_else(|e| panic!("{at}: expected complex: {e}"));
                    assert_eq!(Some(c.repr.as_str()), body.as_str(), "{at}");
                    assert_eq!(&Value::from(&c), actual, "{at}: PyComplex -> Value");
                }
                "$bytes" => assert_eq!(actual.as_bin(), Some(b64(body).as_slice()), "{at}"),
                "$f64" => {
                    let Value::F64(f) = actual else {
                        panic!("{at}: expected float64, got {actual:?}")
                    };
                    let want: f64 = body.as_str().expect("repr").parse().expect("float repr");
                    assert_eq!(f.to_bits(), want.to_bits(), "{at}");
                }
                other => panic!("{at}: unknown tag {other}"),
            }
        }
    }
}

#[test]
fn keys_match_the_fixture() {
    let exp = expected();
    let mut want: Vec<String> = exp["shards"]
        .as_object()
        .expect("shards")
        .keys()
        .cloned()
        .collect();
    want.sort();
    assert_eq!(store().keys(false).expect("lists"), want);
    assert_eq!(store().keys(true).expect("lists"), want);
}

#[test]
fn every_shard_decodes_as_squirrel_does_and_reencodes_byte_exactly() {
    let exp = expected();
    let shards = exp["shards"].as_object().expect("shards");
    assert_eq!(shards.len(), 6);
    let zstd = MessagepackSerializer::default();
    let plain = MessagepackSerializer::default().uncompressed();
    for (key, samples) in shards {
        let payload = store().read(key).expect("gunzips");
        let values = decode_values(&payload).expect("decodes");
        let samples = samples.as_array().expect("sample list");
        assert_eq!(values.len(), samples.len(), "{key}: sample count");
        for (i, (e, v)) in samples.iter().zip(&values).enumerate() {
            check(e, v, &format!("{key}[{i}]"));
        }
        assert_eq!(
            split_samples(&payload).expect("splits").len(),
            samples.len()
        );

        // Byte-exact: the Values encode back to what Python wrote.
        assert_eq!(
            encode_values(&values).expect("encodes"),
            payload,
            "{key}: re-encode"
        );

        // Through zstd and back, by payload and by values.
        for ser in [&zstd, &plain] {
            let record = ser.encode_payload(&payload).expect("compresses");
            let back = ser
                .decode_payload(record.codec, &record.bytes)
                .expect("decompresses");
            assert_eq!(
                &*back,
                payload.as_slice(),
                "{key}: payload through {:?}",
                record.codec
            );
            let record = ser.encode_values(&values).expect("encodes");
            let decoded = ser
                .decode_values(record.codec, &record.bytes)
                .expect("decodes");
            assert_eq!(decoded, values, "{key}: values through {:?}", record.codec);
            assert_eq!(encode_values(&decoded).expect("encodes"), payload);
        }
    }
}

/// The seed's sample shape, as a Rust program would declare it.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct SeedSample {
    image: NdArray,
    label: NdScalar,
    metadata: Metadata,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Metadata {
    key: i64,
}

#[test]
fn typed_samples_read_python_shards_and_write_the_same_bytes() {
    let exp = expected();
    for key in ["shard_0", "shard_1", "shard_2"] {
        let payload = store().read(key).expect("gunzips");
        let samples: Vec<SeedSample> = Samples::new(&payload)
            .collect::<Result<_, _>>()
            .expect("typed decode");
        assert_eq!(samples.len(), 10);
        for (i, s) in samples.iter().enumerate() {
            assert_eq!(s.image.shape(), &[3, 3, 3]);
            let want = b64(&exp["shards"][key][i]["$map"][0][1]["$ndarray"]["data_b64"]);
            let floats = s.image.to_vec::<f64>().expect("f64 data");
            let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
            assert_eq!(bytes, want);
            let want_label = B64.decode(
                exp["shards"][key][i]["$map"][1][1]["$scalar"]["data_b64"]
                    .as_str()
                    .expect("b64"),
            );
            let label = s.label.get::<i64>().expect("int64 label");
            assert_eq!(Ok(label.to_le_bytes().to_vec()), want_label);
            let want_key = &exp["shards"][key][i]["$map"][2][1]["$map"][0][1];
            assert_eq!(Some(s.metadata.key), want_key.as_i64());
        }
        // rmp-serde with field names writes what Python's msgpack wrote.
        assert_eq!(
            payload_from_samples(&samples).expect("encodes"),
            payload,
            "{key}"
        );
        // And the typed path through the serializer.
        let ser = MessagepackSerializer::default();
        let record = ser.encode(&samples).expect("encodes");
        let back: Vec<SeedSample> = ser.decode(record.codec, &record.bytes).expect("decodes");
        assert_eq!(back, samples);
    }
}

#[test]
fn typed_views_of_the_mixed_shard() {
    let payload = store().read("mixed").expect("gunzips");
    let values = decode_values(&payload).expect("decodes");
    let s = &values[0];
    let nd = |name: &str| {
        s.get(name)
            .unwrap_or_else(|| panic!("field {name}"))
            .to_ndarray()
            .expect("ndarray")
    };

    // Big-endian int16: copies swap, borrows refuse.
    let be = nd("i16_be");
    assert_eq!(be.dtype(), ">i2");
    let raw = be.data();
    let want: Vec<i16> = raw
        .chunks_exact(2)
        .map(|c| i16::from_be_bytes([c[0], c[1]]))
        .collect();
    assert_eq!(be.to_vec::<i16>().expect("i16"), want);
    assert_eq!(want[0], -54); // 0xffca
    if cfg!(target_endian = "little") {
        assert!(matches!(
            be.as_slice::<i16>(),
            Err(ArrayError::ByteOrder { .. })
        ));
    }
    assert!(matches!(
        be.to_vec::<u16>(),
        Err(ArrayError::DtypeMismatch { .. })
    ));

    let f32s = nd("f32");
    let copied = f32s.to_vec::<f32>().expect("f32");
    match f32s.as_slice::<f32>() {
        Ok(view) => assert_eq!(view, copied.as_slice()),
        Err(e) => assert!(matches!(e, ArrayError::Misaligned { .. })),
    }
    assert_eq!(nd("u8").as_slice::<u8>().expect("u8").len(), 32);
    assert_eq!(
        nd("bools").to_vec::<bool>().expect("bool"),
        [false, false, true, true]
    );
    assert_eq!(
        nd("bools").as_slice::<bool>().expect("bool"),
        [false, false, true, true]
    );
    let zero_d = nd("zero_d");
    assert_eq!(zero_d.shape(), &[] as &[usize]);
    assert_eq!(zero_d.to_vec::<f64>().expect("f64"), [3.5]);
    let empty = nd("empty");
    assert_eq!((empty.shape(), empty.len()), (&[0, 3][..], 0));
    assert!(empty.to_vec::<i32>().expect("i32").is_empty());
    // float16 has no Rust type: raw bytes only.
    let f16 = nd("f16");
    assert_eq!(f16.itemsize(), Some(2));
    assert!(matches!(
        f16.to_vec::<f32>(),
        Err(ArrayError::DtypeMismatch { .. })
    ));

    let scalar = NdScalar::try_from(s.get("scalar_f32").expect("scalar")).expect("scalar");
    assert_eq!(scalar.get::<f32>(), Ok(1.25));
    let flag = NdScalar::try_from(s.get("scalar_bool").expect("scalar")).expect("scalar");
    assert_eq!(flag.get::<bool>(), Ok(true));
    assert_eq!(
        PyComplex::try_from(s.get("cplx").expect("cplx")).map(|c| c.repr),
        Ok("-1.5j".to_owned())
    );
    assert_eq!(s.get("big_int").and_then(Value::as_u64), Some(1 << 40));
    assert_eq!(s.get("neg").and_then(Value::as_i64), Some(-1));
    assert_eq!(s.get("pyfloat").and_then(Value::as_f64), Some(0.0));
    assert!(s.get("nope").is_none());
}

#[test]
fn shards_written_here_read_back_identically() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = SquirrelDir::new(tmp.path().join("store"));
    assert_eq!(out.keys(true).expect("lists"), Vec::<String>::new());
    for key in store().keys(false).expect("lists") {
        let payload = store().read(&key).expect("reads");
        out.write(&key, &payload).expect("writes");
        out.write(&format!("nested/dir/{key}"), &payload)
            .expect("writes");
        assert_eq!(out.read(&key).expect("reads back"), payload);
    }
    let top = out.keys(false).expect("lists");
    assert_eq!(top, store().keys(false).expect("lists"));
    let all = out.keys(true).expect("lists");
    assert_eq!(all.len(), 2 * top.len());
    assert!(all.contains(&"nested/dir/mixed".to_owned()));
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(out.root())
        .expect("reads dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Overwrite replaces; remove removes.
    out.write("mixed", b"\xc0").expect("overwrites");
    assert_eq!(out.read("mixed").expect("reads"), b"\xc0");
    assert!(out.remove("mixed").expect("removes"));
    assert!(!out.remove("mixed").expect("removes"));
    assert!(!out.contains("mixed").expect("valid key"));
}

#[test]
fn bad_keys_and_bad_files_are_typed_errors() {
    use squirrel_store::squirrel_dir::SquirrelDirError;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = SquirrelDir::new(tmp.path()).max_shard_bytes(100);
    for key in ["../escape", "/etc/passwd", "a//b", "", "a\0b"] {
        assert!(
            matches!(
                dir.write(key, b""),
                Err(SquirrelDirError::InvalidKey { .. })
            ),
            "{key:?}"
        );
    }
    assert!(matches!(
        dir.read("missing"),
        Err(SquirrelDirError::Io { .. })
    ));
    std::fs::write(tmp.path().join("junk.gz"), b"not gzip at all").expect("writes");
    assert!(matches!(
        dir.read("junk"),
        Err(SquirrelDirError::Gzip { .. })
    ));
    dir.write("big", &[0u8; 101]).expect("writes");
    assert!(matches!(
        dir.read("big"),
        Err(SquirrelDirError::TooLarge { limit: 100, .. })
    ));
    // Truncated gzip.
    let full = std::fs::read(tmp.path().join("big.gz")).expect("reads");
    std::fs::write(tmp.path().join("cut.gz"), &full[..full.len() - 6]).expect("writes");
    let unlimited = SquirrelDir::new(tmp.path());
    let err = unlimited.read("cut");
    assert!(matches!(err, Err(SquirrelDirError::Gzip { .. })), "{err:?}");
}
