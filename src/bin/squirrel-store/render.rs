//! Samples for people and for `jq`: `get --json` lines and the one-line summaries of `get`.
//!
//! JSON form of a sample ([`JsonSample`], [`json_line`]); map entries keep their stored order:
//!
//! * nil, bool, int, str, array as themselves; a float as a number, or `"NaN"`, `"inf"`, `"-inf"`
//!   (JSON has no non-finite numbers);
//! * bin (Python `bytes`) as a base64 string (standard alphabet, padded);
//! * a map whose keys are all str as a JSON object; any other map as `{"$map": [[k, v], ...]}`;
//! * a numpy array as `{"dtype": "<f4", "shape": [..], "data": [..]}`, data flat in C order, as
//!   numbers (booleans for `b1`) when the dtype is a bool, integer or float type, else as a base64
//!   string of the raw bytes;
//! * a numpy scalar as `{"dtype": "<i8", "data": 5}` (base64 for other dtypes);
//! * a Python complex as `{"complex": "(1-1.5j)"}`; an ext as `{"$ext": {"type": t, "data": b64}}`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Value as Json, json};
use squirrel_store::array::{NdArray, NdScalar, PyComplex};
use squirrel_store::value::Value;

/// A sample as JSON (see the module docs for the form); map entries keep their stored order.
pub struct JsonSample<'a>(pub &'a Value);

impl Serialize for JsonSample<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Nil => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => match (i.as_i64(), i.as_u64()) {
                (Some(n), _) => s.serialize_i64(n),
                (None, Some(n)) => s.serialize_u64(n),
                // Every MessagePack integer fits one of the two.
                (None, None) => s.collect_str(i),
            },
            Value::F32(f) => float(f64::from(*f)).serialize(s),
            Value::F64(f) => float(*f).serialize(s),
            Value::Str(text) => s.serialize_str(text),
            Value::Bin(b) => s.serialize_str(&B64.encode(b)),
            Value::Array(items) => s.collect_seq(items.iter().map(JsonSample)),
            Value::Map(entries) => match numpy(self.0) {
                Some(n) => numpy_json(&n).serialize(s),
                None if entries.iter().all(|(k, _)| k.as_str().is_some()) => s.collect_map(
                    entries
                        .iter()
                        .map(|(k, v)| (k.as_str().unwrap_or_default(), JsonSample(v))),
                ),
                None => {
                    let pairs: Vec<(JsonSample, JsonSample)> = entries
                        .iter()
                        .map(|(k, v)| (JsonSample(k), JsonSample(v)))
                        .collect();
                    let mut m = s.serialize_map(Some(1))?;
                    m.serialize_entry("$map", &pairs)?;
                    m.end()
                }
            },
            Value::Ext(tag, data) => {
                json!({"$ext": {"type": tag, "data": B64.encode(data)}}).serialize(s)
            }
            Value::Wide { value, .. } => JsonSample(value).serialize(s),
        }
    }
}

/// One sample as a line of JSON.
pub fn json_line(v: &Value) -> String {
    // Serializing into a String cannot fail: every key is a str and every number is finite.
    serde_json::to_string(&JsonSample(v))
        .unwrap_or_else(|e| format!("{{\"$error\": {:?}}}", e.to_string()))
}

fn float(f: f64) -> Json {
    match serde_json::Number::from_f64(f) {
        Some(n) => Json::Number(n),
        None if f.is_nan() => Json::String("NaN".into()),
        None if f > 0.0 => Json::String("inf".into()),
        None => Json::String("-inf".into()),
    }
}

/// The numpy object a msgpack-numpy map encodes, if it is one this crate reads.
enum Numpy {
    Array(NdArray),
    Scalar(NdScalar),
    Complex(PyComplex),
}

fn numpy(v: &Value) -> Option<Numpy> {
    if v.get_bin(b"nd").is_some() {
        if let Ok(a) = NdArray::try_from(v) {
            return Some(Numpy::Array(a));
        }
        if let Ok(s) = NdScalar::try_from(v) {
            return Some(Numpy::Scalar(s));
        }
    }
    if v.get_bin(b"complex").is_some()
        && let Ok(c) = PyComplex::try_from(v)
    {
        return Some(Numpy::Complex(c));
    }
    None
}

/// A numpy object's JSON form, fields in this order.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum NumpyJson<'a> {
    Array {
        dtype: &'a str,
        shape: &'a [usize],
        data: Json,
    },
    Scalar {
        dtype: &'a str,
        data: Json,
    },
    Complex {
        complex: &'a str,
    },
}

fn numpy_json(n: &Numpy) -> NumpyJson<'_> {
    match n {
        Numpy::Array(a) => NumpyJson::Array {
            dtype: a.dtype(),
            shape: a.shape(),
            data: numbers(a).map_or_else(|| Json::String(B64.encode(a.data())), Json::Array),
        },
        Numpy::Scalar(sc) => NumpyJson::Scalar {
            dtype: sc.dtype(),
            data: number(sc).unwrap_or_else(|| Json::String(B64.encode(sc.data()))),
        },
        Numpy::Complex(c) => NumpyJson::Complex { complex: &c.repr },
    }
}

/// Converts a value of each numeric [`Element`] type to JSON, trying one type after the other:
/// the library's typed access says which one the dtype holds (and handles its byte order).
macro_rules! per_element {
    ($try:ident) => {
        $try!(bool, Json::Bool)
            .or_else(|| $try!(i8, Json::from))
            .or_else(|| $try!(u8, Json::from))
            .or_else(|| $try!(i16, Json::from))
            .or_else(|| $try!(u16, Json::from))
            .or_else(|| $try!(i32, Json::from))
            .or_else(|| $try!(u32, Json::from))
            .or_else(|| $try!(i64, Json::from))
            .or_else(|| $try!(u64, Json::from))
            .or_else(|| $try!(half::f16, |x: half::f16| float(f64::from(x))))
            .or_else(|| $try!(f32, |x: f32| float(f64::from(x))))
            .or_else(|| $try!(f64, float))
    };
}

/// An array's elements as JSON numbers (or booleans), for the dtypes the library reads as Rust
/// numbers; `None` for the others (complex, strings, dates...), which are shown as base64.
fn numbers(a: &NdArray) -> Option<Vec<Json>> {
    macro_rules! all {
        ($t:ty, $f:expr) => {
            a.to_vec::<$t>()
                .ok()
                .map(|v| v.into_iter().map($f).collect::<Vec<Json>>())
        };
    }
    per_element!(all)
}

/// A scalar's value as a JSON number (or boolean), as [`numbers`] does for arrays.
fn number(s: &NdScalar) -> Option<Json> {
    macro_rules! one {
        ($t:ty, $f:expr) => {
            s.get::<$t>().ok().map($f)
        };
    }
    per_element!(one)
}

/// Items of a container shown in a summary before "…".
const SUMMARY_ITEMS: usize = 6;
/// Characters of a str shown in a summary.
const SUMMARY_CHARS: usize = 40;
/// Containers nested deeper than this are shown as "…".
const SUMMARY_DEPTH: usize = 4;

/// A short one-line description of a sample for people, e.g.
/// `{"image": ndarray <f8 (3, 3, 3), "label": <i8 0, "metadata": {"key": 0}}`.
pub fn summary(v: &Value) -> String {
    let mut out = String::new();
    summarize(v, 0, &mut out);
    out
}

fn summarize(v: &Value, depth: usize, out: &mut String) {
    if let Some(n) = numpy(v) {
        match n {
            Numpy::Array(a) => {
                let dims: Vec<String> = a.shape().iter().map(usize::to_string).collect();
                let comma = if dims.len() == 1 { "," } else { "" };
                out.push_str(&format!(
                    "ndarray {} ({}{comma})",
                    a.dtype(),
                    dims.join(", ")
                ));
            }
            Numpy::Scalar(s) => {
                let shown = number(&s)
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| format!("{} bytes", s.data().len()));
                out.push_str(&format!("{} {shown}", s.dtype()));
            }
            Numpy::Complex(c) => out.push_str(&format!("complex {}", c.repr)),
        }
        return;
    }
    match v {
        Value::Str(s) => {
            let shown: String = s.chars().take(SUMMARY_CHARS).collect();
            let more = if shown.len() < s.len() { "…" } else { "" };
            out.push_str(&format!("{shown:?}{more}"));
        }
        Value::Bin(b) => out.push_str(&format!("bytes({})", b.len())),
        Value::Ext(tag, d) => out.push_str(&format!("ext({tag}, {} bytes)", d.len())),
        Value::Array(items) => {
            if depth >= SUMMARY_DEPTH {
                out.push_str(&format!("[… {} items]", items.len()));
                return;
            }
            out.push('[');
            for (i, item) in items.iter().take(SUMMARY_ITEMS).enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                summarize(item, depth + 1, out);
            }
            if items.len() > SUMMARY_ITEMS {
                out.push_str(&format!(", … {} more", items.len() - SUMMARY_ITEMS));
            }
            out.push(']');
        }
        Value::Map(entries) => {
            if depth >= SUMMARY_DEPTH {
                out.push_str(&format!("{{… {} entries}}", entries.len()));
                return;
            }
            out.push('{');
            for (i, (k, val)) in entries.iter().take(SUMMARY_ITEMS).enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                summarize(k, depth + 1, out);
                out.push_str(": ");
                summarize(val, depth + 1, out);
            }
            if entries.len() > SUMMARY_ITEMS {
                out.push_str(&format!(", … {} more", entries.len() - SUMMARY_ITEMS));
            }
            out.push('}');
        }
        Value::Wide { value, .. } => summarize(value, depth, out),
        other => out.push_str(&json_line(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats() {
        let bits: [u16; 5] = [0x3c00, 0xc000, 0x0001, 0x7c00, 0x7e00];
        let data = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let a = NdArray::new("<f2", vec![5], data).expect("array");
        let j = to_json(&Value::from(a));
        assert_eq!(j["data"], json!([1.0, -2.0, 2f64.powi(-24), "inf", "NaN"]));
    }

    fn to_json(v: &Value) -> Json {
        serde_json::to_value(JsonSample(v)).expect("serializes")
    }

    #[test]
    fn arrays_and_maps() {
        let a = NdArray::from_slice(vec![2], &[1.5f32, -2.0]).expect("array");
        let j = to_json(&Value::from(a));
        assert_eq!(
            j,
            json!({"dtype": "<f4", "shape": [2], "data": [1.5, -2.0]})
        );
        let big =
            Value::from(NdArray::new(">i2", vec![2], vec![0x01, 0x02, 0xff, 0xfe]).expect("array"));
        assert_eq!(to_json(&big)["data"], json!([258, -2]));
        let m = Value::Map(vec![(Value::from(1i64), Value::Nil)]);
        assert_eq!(to_json(&m), json!({"$map": [[1, null]]}));
        assert_eq!(to_json(&Value::F64(f64::NAN)), json!("NaN"));
        // Stored order, not sorted.
        let m = Value::Map(vec![
            (Value::from("b"), Value::from(1i64)),
            (Value::from("a"), Value::from(2i64)),
        ]);
        assert_eq!(json_line(&m), r#"{"b":1,"a":2}"#);
    }
}
