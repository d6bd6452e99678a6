//! `decode_shard`: untrusted shard bytes through every decoder of the squirrel layer.
//!
//! Input: a mode byte, then the mode's bytes.
//!
//! | mode | what |
//! |---|---|
//! | 0 | the rest is a payload (concatenated MessagePack samples) |
//! | 1 | the rest is a record value; codec and decompression limit from the input, through `MessagepackSerializer::decode_payload` and friends |
//! | 2 | the rest is compressed with zstd (with or without the content size in the frame), then decoded with a limit from the input |
//! | 3 | an `NdArray` from a dtype, a shape and data chosen by the input (odd dtypes, overflowing shapes, wrong lengths) |
//! | 4 | a msgpack-numpy map assembled from fields the input picks (types, order, bin or str keys), as a payload |
//! | 5 | an `NdScalar` from a dtype and data |
//!
//! Every payload goes through `decode_values`, `split_samples`, `Value::decode` / `value_len`,
//! `Samples<T>` for `Value`, `NdArray`, `NdScalar`, `PyComplex` and two structs with numpy
//! fields, and every array found goes through `len`, `as_slice` and `to_vec` for every element
//! type.
//!
//! Allowed: typed errors. Checked: no panic (overflow checks are on), no hang, no allocation over
//! [`crate::common`]'s cap; `decode_values` and `encode_values` give back the identical bytes (the
//! byte-exact promise); `value_len` agrees with `Value::decode` (they differ only on UTF-8);
//! `split_samples` agrees with `decode_values`; a decompressed payload never exceeds the limit and
//! a payload within the limit always decompresses to itself; an array's typed views have `len()`
//! elements and agree with each other; arrays and scalars survive `Value` and serde round trips.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use squirrel_store::array::{NdArray, NdScalar, PyComplex};
use squirrel_store::serializer::{
    Codec, MessagepackSerializer, Samples, Serializer, ShardError, decode_values, encode_values,
    split_samples,
};
use squirrel_store::value::{DecodeError, Value, value_len};

use crate::common::Input;

/// A typed sample as a user of the crate writes it.
#[derive(Debug, Serialize, Deserialize)]
struct Sample {
    image: NdArray,
    label: i64,
}

/// Every numpy field optional, plus other field types.
#[derive(Debug, Deserialize)]
struct Loose {
    #[serde(default)]
    image: Option<NdArray>,
    #[serde(default)]
    scalar: Option<NdScalar>,
    #[serde(default)]
    complex: Option<PyComplex>,
    #[serde(default)]
    label: Option<i64>,
    #[serde(default)]
    meta: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    arrays: Option<Vec<NdArray>>,
}

/// Dtype strings the input can pick by number, besides raw text.
const DTYPES: &[&str] = &[
    "<f4",
    ">f4",
    "<f8",
    ">f8",
    "|u1",
    "|i1",
    "|b1",
    "<i2",
    ">i2",
    "<u2",
    "<i4",
    ">u4",
    "<i8",
    ">u8",
    "=i4",
    "f8",
    "<c8",
    "<U5",
    "|S3",
    "|V8",
    "<M8[ns]",
    ">m8[s]",
    "|O",
    "|O8",
    "<f0",
    "<U0",
    "<f",
    "",
    "<",
    "|b",
    "<U99999999999999999999",
    "<U4611686018427387904",
    "<i18446744073709551615",
];

/// The target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    match input.u8() % 6 {
        0 => check_payload(input.rest()),
        1 => {
            let codec_byte = input.u8();
            let limit = limit(&mut input);
            let bytes = input.rest();
            let ser = MessagepackSerializer::new().max_decompressed(limit);
            decode_record(&ser, codec_byte, bytes, limit);
            // The default serializer (4 GiB limit) on short inputs only: a short frame can still
            // claim any size in its header, and a few bytes cannot decompress to much.
            let claims_huge = zstd::zstd_safe::get_frame_content_size(bytes)
                .ok()
                .flatten()
                .is_some_and(|n| n > crate::ALLOC_CAP as u64);
            if bytes.len() <= 64
                && !(claims_huge && crate::known::known("zstd-claimed-size-preallocated"))
            {
                let ser = MessagepackSerializer::new();
                decode_record(&ser, codec_byte, bytes, ser.decompressed_limit());
            }
        }
        2 => {
            let flags = input.u8();
            let limit = limit(&mut input);
            let payload = input.rest();
            let frame = if flags & 1 == 0 {
                zstd::bulk::compress(payload, 1).expect("compress")
            } else {
                // Streamed: no content size in the frame header.
                let mut out = Vec::new();
                let mut enc = zstd::stream::write::Encoder::new(&mut out, 1).expect("encoder");
                std::io::Write::write_all(&mut enc, payload).expect("compress");
                enc.finish().expect("finish");
                out
            };
            let ser = MessagepackSerializer::new().max_decompressed(limit);
            match ser.decode_payload(Codec::MsgpackZstd, &frame) {
                Ok(p) => {
                    assert!(
                        payload.len() as u64 <= limit,
                        "a payload over the limit decoded"
                    );
                    assert_eq!(&*p, payload, "zstd round trip");
                }
                Err(ShardError::TooLarge { .. }) => {
                    assert!(
                        payload.len() as u64 > limit,
                        "a payload within the limit refused"
                    );
                }
                Err(e) => panic!("a valid frame failed to decompress: {e}"),
            }
            check_payload(payload);
        }
        3 => {
            let dtype = dtype(&mut input);
            let shape = shape(&mut input);
            let data = input.rest().to_vec();
            match NdArray::new(dtype.clone(), shape.clone(), data.clone()) {
                Ok(a) => array(&a),
                Err(squirrel_store::array::ArrayError::DataLength { expected, .. })
                    if expected <= 1 << 20 =>
                {
                    let mut data = data;
                    data.resize(expected, 0x5a);
                    let a = NdArray::new(dtype, shape, data)
                        .expect("an array with the data length its error asked for");
                    array(&a);
                }
                Err(_) => {}
            }
        }
        4 => {
            let v = numpy_map(&mut input);
            let bytes = v.to_bytes().expect("encode a small value");
            let mut payload = bytes.clone();
            // Sometimes two samples, the second as a field of a struct.
            if input.u8() & 1 == 1 {
                let s = Value::Map(vec![
                    (Value::from("image"), v.clone()),
                    (Value::from("label"), Value::from(7i64)),
                ]);
                s.encode(&mut payload).expect("encode a small value");
            }
            check_payload(&payload);
        }
        _ => {
            let dtype = dtype(&mut input);
            let data = input.rest().to_vec();
            if let Ok(s) = NdScalar::new(dtype, data) {
                scalar(&s);
            }
        }
    }
}

/// A decompression limit: mostly small, so a small input cannot make the target slow.
fn limit(input: &mut Input<'_>) -> u64 {
    match input.u8() % 4 {
        0 => u64::from(input.u8()),
        1 => u64::from(input.u16()),
        _ => u64::from(input.u32() % (1 << 20)),
    }
}

fn dtype(input: &mut Input<'_>) -> String {
    let b = input.u8();
    if b < 0xc0 {
        DTYPES[usize::from(b) % DTYPES.len()].to_owned()
    } else {
        let n = usize::from(b - 0xc0) % 24;
        String::from_utf8_lossy(input.bytes(n)).into_owned()
    }
}

fn shape(input: &mut Input<'_>) -> Vec<usize> {
    let n = input.u8() % 6;
    (0..n)
        .map(|_| match input.u8() % 8 {
            0..=4 => usize::from(input.u8() % 8),
            5 => usize::from(input.u16()),
            6 => input.u32() as usize,
            _ => input.u64() as usize,
        })
        .collect()
}

/// A msgpack-numpy-like map with fields chosen by the input.
fn numpy_map(input: &mut Input<'_>) -> Value {
    let n = input.u8() % 8;
    let mut entries = Vec::new();
    for _ in 0..n {
        let k = input.u8();
        let name: &[u8] = match k % 8 {
            0 => b"nd",
            1 => b"type",
            2 => b"kind",
            3 => b"shape",
            4 => b"data",
            5 => b"complex",
            6 => b"other",
            _ => b"",
        };
        let key = if k & 0x80 == 0 {
            Value::Bin(name.to_vec().into())
        } else {
            Value::Str(String::from_utf8_lossy(name).into_owned())
        };
        let value = match input.u8() % 10 {
            0 => Value::Bool(true),
            1 => Value::Bool(false),
            2 => Value::Str(dtype(input)),
            3 => Value::Bin(Default::default()),
            4 => {
                let len = usize::from(input.u16() % 4096);
                let mut d = input.bytes(len).to_vec();
                d.resize(len, 0xa5);
                Value::Bin(d.into())
            }
            5 => Value::Array(
                shape(input)
                    .into_iter()
                    .map(|d| Value::from(d as u64))
                    .collect(),
            ),
            6 => Value::from(-i64::from(input.u8())),
            7 => Value::Str("(1-1.5j)".into()),
            8 => Value::Nil,
            _ => Value::Array(vec![Value::F64(1.5), Value::from("x")]),
        };
        entries.push((key, value));
    }
    Value::Map(entries)
}

fn decode_record(ser: &MessagepackSerializer, codec_byte: u8, bytes: &[u8], limit: u64) {
    let Ok(codec) = Codec::try_from(codec_byte % 4) else {
        return;
    };
    match ser.decode_payload(codec, bytes) {
        Ok(p) => {
            assert!(
                codec != Codec::MsgpackZstd || p.len() as u64 <= limit,
                "decompressed {} bytes, over the limit {limit}",
                p.len()
            );
            let _ = ser.decode_values(codec, bytes);
            let _ = ser.decode::<Value>(codec, bytes);
            let _ = ser.decode::<Sample>(codec, bytes);
            if p.len() <= 1 << 16 {
                check_payload(&p);
            }
        }
        Err(ShardError::NotSamples) => assert_eq!(codec, Codec::Raw),
        Err(_) => {}
    }
}

/// Whether a payload may nest deeply (worth a check on a small stack).
fn may_nest(payload: &[u8]) -> bool {
    payload
        .iter()
        .filter(|&&b| matches!(b, 0x80..=0x9f | 0xdc..=0xdf))
        .count()
        >= 32
}

/// All decoders over one payload; see the module docs for the properties.
pub fn check_payload(payload: &[u8]) {
    if may_nest(payload) {
        // Decoding must not overflow a thread's default stack (2 MiB) at the depth limit: real
        // readers decode on pool threads.
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn_scoped(s, || check_payload_here(payload))
                .expect("spawn")
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
        });
    } else {
        check_payload_here(payload);
    }
}

fn check_payload_here(payload: &[u8]) {
    let values = decode_values(payload);
    let split = split_samples(payload);
    match (&values, &split) {
        (Ok(vals), Ok(parts)) => {
            assert_eq!(
                vals.len(),
                parts.len(),
                "decode_values and split_samples counts"
            );
            let again = encode_values(vals).expect("re-encode decoded values");
            assert!(
                again == payload,
                "decode_values then encode_values changed the bytes"
            );
            for (v, part) in vals.iter().zip(parts) {
                assert!(
                    v.to_bytes().expect("re-encode").as_slice() == *part,
                    "a sample re-encodes differently from its split bytes"
                );
            }
        }
        (Ok(_), Err(e)) => panic!("decode_values accepted what split_samples refused: {e}"),
        (Err(ShardError::Msgpack { source, .. }), Ok(_)) => assert!(
            matches!(source, DecodeError::InvalidUtf8 { .. }),
            "split_samples accepted what decode_values refused for another reason than UTF-8: \
             {source}"
        ),
        (Err(e), Ok(_)) => panic!("decode_values failed with an unexpected error: {e}"),
        (Err(_), Err(_)) => {}
    }
    // Value::decode and value_len on the first sample.
    match (Value::decode(payload), value_len(payload)) {
        (Ok((v, used)), Ok(n)) => {
            assert_eq!(
                used, n,
                "Value::decode and value_len disagree on the length"
            );
            assert!(
                v.to_bytes().expect("re-encode").as_slice() == &payload[..used],
                "Value::decode then encode changed the bytes"
            );
            let _ = Value::decode_exact(payload);
        }
        (Ok(_), Err(e)) => panic!("value_len refused what Value::decode accepted: {e}"),
        (Err(e), Ok(_)) => assert!(
            matches!(e, DecodeError::InvalidUtf8 { .. }),
            "value_len accepted what Value::decode refused for another reason than UTF-8: {e}"
        ),
        (Err(a), Err(b)) => {
            // Both refuse; if decode gave a structural reason, value_len must agree on it.
            if !matches!(a, DecodeError::InvalidUtf8 { .. }) {
                assert_eq!(a, b, "Value::decode and value_len disagree on the error");
            }
        }
    }
    if let Ok(vals) = &values {
        for v in vals.iter().take(64) {
            value(v, 0);
        }
    }
    // Typed samples, each decoder to its first error.
    for item in Samples::<Value>::new(payload).take(64) {
        if item.is_err() {
            break;
        }
    }
    for a in Samples::<NdArray>::new(payload).take(64).flatten() {
        array(&a);
    }
    for s in Samples::<NdScalar>::new(payload).take(64).flatten() {
        scalar(&s);
    }
    for c in Samples::<PyComplex>::new(payload).take(64).flatten() {
        let _ = rmp_serde::to_vec_named(&c);
    }
    for s in Samples::<Sample>::new(payload).take(64).flatten() {
        array(&s.image);
        let bytes = rmp_serde::to_vec_named(&s).expect("serialize a sample");
        let back: Sample = rmp_serde::from_slice(&bytes).expect("a serialized sample reads back");
        assert_eq!(back.image, s.image, "typed sample round trip");
        assert_eq!(back.label, s.label, "typed sample round trip");
    }
    for l in Samples::<Loose>::new(payload).take(64).flatten() {
        if let Some(a) = &l.image {
            array(a);
        }
        if let Some(s) = &l.scalar {
            scalar(s);
        }
        for a in l.arrays.iter().flatten() {
            array(a);
        }
        let _ = (&l.complex, &l.label, &l.meta);
    }
}

/// Walks a decoded value, trying the numpy conversions on every map.
fn value(v: &Value, depth: usize) {
    if depth > 8 {
        return;
    }
    if let Some(map) = v.as_map() {
        if let Ok(a) = v.to_ndarray() {
            array(&a);
        }
        if let Ok(s) = NdScalar::try_from(v) {
            scalar(&s);
        }
        let _ = PyComplex::try_from(v);
        for (k, x) in map.iter().take(16) {
            value(k, depth + 1);
            value(x, depth + 1);
        }
    } else if let Some(items) = v.as_array() {
        for x in items.iter().take(16) {
            value(x, depth + 1);
        }
    }
    let _ = (v.as_str(), v.as_bin(), v.as_i64(), v.as_u64(), v.as_f64());
}

macro_rules! views {
    ($a:expr, $($t:ty),*) => {$({
        let a: &NdArray = $a;
        let slice = a.as_slice::<$t>();
        let vec = a.to_vec::<$t>();
        if let Ok(s) = &slice {
            assert_eq!(s.len(), a.len(), "as_slice::<{}> length", stringify!($t));
        }
        if let Ok(v) = &vec {
            assert_eq!(v.len(), a.len(), "to_vec::<{}> length", stringify!($t));
        }
        if let (Ok(s), Ok(v)) = (&slice, &vec) {
            assert_eq!(format!("{s:?}"), format!("{v:?}"), "as_slice and to_vec disagree");
        }
    })*};
}

/// Every view of an array, and its round trips.
fn array(a: &NdArray) {
    let overflows = a
        .shape()
        .iter()
        .try_fold(1usize, |n, d| n.checked_mul(*d))
        .is_none();
    if overflows && crate::known::known("ndarray-len-overflow") {
        // Only arrays of opaque dtypes get here (known dtypes are size-checked when built).
        assert!(
            a.itemsize().is_none(),
            "an array of a known dtype with an overflowing shape"
        );
        return;
    }
    let _ = (a.len(), a.is_empty(), a.itemsize(), a.dtype(), a.shape());
    if let Some(size) = a.itemsize() {
        assert_eq!(
            a.len().checked_mul(size),
            Some(a.data().len()),
            "data length of an array of a known dtype"
        );
    }
    if a.data().len() <= 1 << 16 {
        views!(a, u8, i8, u16, i16, u32, i32, u64, i64, f32, f64, bool);
    }
    // Through Value, byte-exact: the same map msgpack-numpy writes.
    let v = Value::from(a);
    let bytes = v.to_bytes().expect("encode an array");
    let back = Value::decode_exact(&bytes)
        .expect("an encoded array decodes")
        .to_ndarray()
        .expect("an encoded array is an array");
    assert_eq!(&back, a, "NdArray through Value");
    // Through serde: the same bytes as through Value.
    let typed = rmp_serde::to_vec_named(a).expect("serialize an array");
    assert!(typed == bytes, "serde and Value write an array differently");
    let back: NdArray = rmp_serde::from_slice(&typed).expect("a serialized array reads back");
    assert_eq!(&back, a, "NdArray through serde");
}

macro_rules! scalar_views {
    ($s:expr, $($t:ty),*) => {$({
        let _ = $s.get::<$t>();
    })*};
}

fn scalar(s: &NdScalar) {
    scalar_views!(s, u8, i8, u16, i16, u32, i32, u64, i64, f32, f64, bool);
    let v = Value::from(s);
    let bytes = v.to_bytes().expect("encode a scalar");
    let back = NdScalar::try_from(&Value::decode_exact(&bytes).expect("decodes"))
        .expect("an encoded scalar is a scalar");
    assert_eq!(&back, s, "NdScalar through Value");
    let typed = rmp_serde::to_vec_named(s).expect("serialize a scalar");
    let back: NdScalar = rmp_serde::from_slice(&typed).expect("a serialized scalar reads back");
    assert_eq!(&back, s, "NdScalar through serde");
}
