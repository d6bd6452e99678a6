//! [`NdArray`], [`NdScalar`] and [`PyComplex`]: numpy values as msgpack-numpy 0.4.8 stores them.
//!
//! msgpack-numpy turns each numpy object into a MessagePack map with **bin** keys (Python `bytes`):
//!
//! | Python object   | map, in this key order                                                       |
//! |-----------------|------------------------------------------------------------------------------|
//! | `numpy.ndarray` | `nd: true`, `type: str` (numpy's `dtype.str`), `kind: bin ""`, `shape: [..]`, `data: bin` |
//! | numpy scalar    | `nd: false`, `type: str`, `data: bin`                                        |
//! | `complex`       | `complex: true`, `data: str` (Python's `repr`, e.g. `"(1-1.5j)"`)            |
//!
//! `data` holds the array's elements in C order, each in the byte order the dtype string names
//! (`<` little, `>` big, `|` not applicable). Structured (`kind: "V"`) and object (`kind: "O"`)
//! arrays are not numeric arrays and are refused here; they still pass through [`Value`] untouched.
//!
//! Dtype strings this module does not know are kept as opaque text; only the typed views refuse
//! them.

use std::any::Any;
use std::fmt;
use std::panic::{RefUnwindSafe, UnwindSafe};
use std::sync::OnceLock;

use compact_str::CompactString;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_bytes::ByteBuf;
use smallvec::SmallVec;

use crate::shard::value::{self, Bytes, Value};

/// An array's shape as stored: up to 4 dimensions without a heap allocation.
type Shape = SmallVec<[usize; 4]>;

/// Why a numpy value could not be built, read or viewed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArrayError {
    /// The data is not as long as the shape and dtype require.
    #[error("dtype {dtype:?} with shape {shape:?} needs {expected} data bytes, got {actual}")]
    DataLength {
        /// The dtype string.
        dtype: String,
        /// The shape.
        shape: Vec<usize>,
        /// Bytes needed.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The shape's element count (times the item size) does not fit in memory's address range.
    #[error("shape {shape:?} is too large")]
    ShapeOverflow {
        /// The shape.
        shape: Vec<usize>,
    },
    /// A typed view asked for another element type than the dtype holds.
    #[error("array of dtype {dtype:?} cannot be viewed as {requested}")]
    DtypeMismatch {
        /// The dtype string.
        dtype: String,
        /// The requested element type, as numpy's kind and size (e.g. `f4`).
        requested: &'static str,
    },
    /// A borrowed view needs the machine's byte order; use `to_vec`, which swaps.
    #[error("array of dtype {dtype:?} is not in the machine's byte order; use to_vec")]
    ByteOrder {
        /// The dtype string.
        dtype: String,
    },
    /// A borrowed view needs the data aligned for the element type; use `to_vec`, which copies.
    #[error("array data is not aligned to {align} bytes; use to_vec")]
    Misaligned {
        /// The alignment the element type needs.
        align: usize,
    },
    /// A bool array holds a byte other than 0 or 1, which a Rust `bool` cannot hold.
    #[error("bool array holds byte {byte:#04x} at element {index}")]
    InvalidBool {
        /// The element's index.
        index: usize,
        /// The byte.
        byte: u8,
    },
    /// The value is not the msgpack-numpy map that was expected.
    #[error("not a msgpack-numpy {expected}: {why}")]
    NotNumpy {
        /// What was expected ("array", "scalar" or "complex").
        expected: &'static str,
        /// What was wrong.
        why: &'static str,
    },
    /// A structured (`V`) or object (`O`) array: its `type` is not a dtype string, or its data is a
    /// Python pickle.
    #[error("msgpack-numpy array kind {kind:?} is not supported")]
    UnsupportedKind {
        /// The `kind` field, lossily as text.
        kind: String,
    },
}

/// numpy's byte order character for multi-byte types on this machine.
const NATIVE_ORDER: u8 = if cfg!(target_endian = "little") {
    b'<'
} else {
    b'>'
};

/// A dtype string split into numpy's parts: `<f4` is order `<`, kind `f`, size 4.
struct Dtype {
    order: u8,
    kind: u8,
    /// Bytes per element.
    itemsize: usize,
}

/// Parses numpy's `dtype.str`; `None` for forms this crate keeps as opaque text (e.g. `|O`).
fn parse_dtype(s: &str) -> Option<Dtype> {
    let b = s.as_bytes();
    let (order, rest) = match b.first()? {
        o @ (b'<' | b'>' | b'|' | b'=') => (*o, b.get(1..)?),
        _ => (b'=', b),
    };
    let (&kind, rest) = rest.split_first()?;
    // Datetimes carry a unit after the size: "<M8[ns]".
    let digits_end = rest
        .iter()
        .position(|c| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (digits, tail) = rest.split_at(digits_end);
    let tail_ok = tail.is_empty() || (matches!(kind, b'M' | b'm') && tail.first() == Some(&b'['));
    if digits.is_empty() || !tail_ok {
        return None;
    }
    let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let itemsize = match kind {
        b'b' | b'i' | b'u' | b'f' | b'c' | b'S' | b'V' | b'M' | b'm' => n,
        // numpy's "<U5" counts characters of 4 bytes each.
        b'U' => n.checked_mul(4)?,
        _ => return None,
    };
    let order = if order == b'=' { NATIVE_ORDER } else { order };
    Some(Dtype {
        order,
        kind,
        itemsize,
    })
}

mod sealed {
    pub trait Sealed {}
}

/// A Rust type that a numpy array's elements can be read as: the fixed-size numbers, `bool`, and
/// with the `half` feature `half::f16` (numpy's `float16`).
///
/// Sealed: every implementor is plain data whose bytes are its value, which the borrowed views
/// rely on.
pub trait Element:
    sealed::Sealed + Copy + fmt::Debug + Send + Sync + UnwindSafe + RefUnwindSafe + 'static
{
    /// numpy's kind character: `b`, `i`, `u` or `f`.
    const KIND: u8;
    /// The dtype as kind and size, e.g. `f4`, for messages.
    const NAME: &'static str;
    /// Reads one element from exactly `size_of::<Self>()` bytes in the given byte order.
    #[doc(hidden)]
    fn read(bytes: &[u8], big_endian: bool) -> Option<Self>;
    /// `bytes` as elements in the machine's byte order, if aligned and (for `bool`) valid.
    #[doc(hidden)]
    fn view(bytes: &[u8]) -> Option<&[Self]>;
    /// The bytes of `data`, in the machine's byte order.
    #[doc(hidden)]
    fn bytes(data: &[Self]) -> &[u8];
}

macro_rules! element {
    ($t:ty, $kind:literal, $name:literal) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const KIND: u8 = $kind;
            const NAME: &'static str = $name;
            fn read(bytes: &[u8], big_endian: bool) -> Option<Self> {
                let a = *bytes.first_chunk::<{ size_of::<$t>() }>()?;
                Some(if big_endian {
                    <$t>::from_be_bytes(a)
                } else {
                    <$t>::from_le_bytes(a)
                })
            }
            fn view(bytes: &[u8]) -> Option<&[Self]> {
                bytemuck::try_cast_slice(bytes).ok()
            }
            fn bytes(data: &[Self]) -> &[u8] {
                bytemuck::cast_slice(data)
            }
        }
    };
}
element!(u8, b'u', "u1");
element!(i8, b'i', "i1");
element!(u16, b'u', "u2");
element!(i16, b'i', "i2");
element!(u32, b'u', "u4");
element!(i32, b'i', "i4");
element!(u64, b'u', "u8");
element!(i64, b'i', "i8");
element!(f32, b'f', "f4");
element!(f64, b'f', "f8");
#[cfg(feature = "half")]
element!(half::f16, b'f', "f2");

impl sealed::Sealed for bool {}
impl Element for bool {
    const KIND: u8 = b'b';
    const NAME: &'static str = "b1";
    fn read(bytes: &[u8], _big_endian: bool) -> Option<Self> {
        // numpy treats any non-zero byte as true.
        bytes.first().map(|b| *b != 0)
    }
    fn view(bytes: &[u8]) -> Option<&[Self]> {
        // Checked: a byte other than 0 or 1 is no `bool`.
        bytemuck::checked::try_cast_slice(bytes).ok()
    }
    fn bytes(data: &[Self]) -> &[u8] {
        bytemuck::cast_slice(data)
    }
}

/// The dtype string numpy gives an array of `T` on this machine.
fn native_dtype<T: Element>() -> String {
    let order = if size_of::<T>() == 1 {
        '|'
    } else {
        char::from(NATIVE_ORDER)
    };
    format!("{order}{}", T::NAME)
}

/// Number of elements in `shape`, and bytes for `itemsize`-byte elements, overflow-checked.
fn element_count(shape: &[usize], itemsize: usize) -> Result<(usize, usize), ArrayError> {
    let overflow = || ArrayError::ShapeOverflow {
        shape: shape.to_vec(),
    };
    let count = shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(*d))
        .ok_or_else(overflow)?;
    let bytes = count.checked_mul(itemsize).ok_or_else(overflow)?;
    Ok((count, bytes))
}

/// Checks that `data` fits `dtype` and `shape`. For opaque dtypes only the element count is
/// checked (it must fit a `usize`, so `len()` cannot overflow); their item size is unknown.
fn check_len(dtype: &str, shape: &[usize], data_len: usize) -> Result<(), ArrayError> {
    let Some(d) = parse_dtype(dtype) else {
        element_count(shape, 1)?;
        return Ok(());
    };
    let (_, expected) = element_count(shape, d.itemsize)?;
    if expected != data_len {
        return Err(ArrayError::DataLength {
            dtype: dtype.to_owned(),
            shape: shape.to_vec(),
            expected,
            actual: data_len,
        });
    }
    Ok(())
}

/// Checks that a dtype holds `T` and says whether it is big-endian.
fn dtype_is<T: Element>(dtype: &str) -> Result<bool, ArrayError> {
    let mismatch = || ArrayError::DtypeMismatch {
        dtype: dtype.to_owned(),
        requested: T::NAME,
    };
    let d = parse_dtype(dtype).ok_or_else(mismatch)?;
    if d.kind != T::KIND || d.itemsize != size_of::<T>() {
        return Err(mismatch());
    }
    Ok(size_of::<T>() > 1 && d.order == b'>')
}

/// Copies `data` into elements of `T`, swapping bytes when they are big-endian.
fn read_all<T: Element>(data: &[u8], big_endian: bool) -> Vec<T> {
    data.chunks_exact(size_of::<T>())
        .filter_map(|c| T::read(c, big_endian))
        .collect()
}

/// Borrows `data` as elements of `T` when byte order, alignment and (for bool) values allow.
fn view<'a, T: Element>(dtype: &str, data: &'a [u8]) -> Result<&'a [T], ArrayError> {
    let big_endian = dtype_is::<T>(dtype)?;
    if big_endian != cfg!(target_endian = "big") && size_of::<T>() > 1 {
        return Err(ArrayError::ByteOrder {
            dtype: dtype.to_owned(),
        });
    }
    if T::KIND == b'b'
        && let Some((index, &byte)) = data.iter().enumerate().find(|(_, b)| **b > 1)
    {
        return Err(ArrayError::InvalidBool { index, byte });
    }
    // The length fits the shape (checked at construction), and bools were checked just above:
    // what is left to fail is the alignment.
    T::view(data).ok_or(ArrayError::Misaligned {
        align: align_of::<T>(),
    })
}

/// The bytes of a slice of elements, in the machine's byte order.
fn element_bytes<T: Element>(data: &[T]) -> &[u8] {
    T::bytes(data)
}

/// A numpy array: dtype string, shape and C-order data bytes.
///
/// An array read from a store shares the shard's bytes rather than copying them (see
/// [`Bytes`]): for an uncompressed record its data is a window into the store's memory map, so a
/// shard get copies no array data. [`NdArray::is_shared`] tells, and [`NdArray::into_owned`]
/// copies the data out (to keep an array long after its shard is dropped). Arrays built in code
/// own their data.
///
/// Shared data sits wherever the array lies in the record, so it is often not aligned for its
/// element type. [`NdArray::data`] and [`NdArray::to_vec`] do not care; [`NdArray::as_slice`]
/// borrows the data when it is aligned, and otherwise makes an aligned copy once, on the first
/// call, kept in the array for the next ones.
pub struct NdArray {
    // Inline up to 24 bytes and 4 dimensions, so decoding an array allocates nothing: every
    // allocation a worker makes is a free on the thread that consumes the sample.
    dtype: CompactString,
    shape: Shape,
    data: Bytes,
    /// The aligned copy [`NdArray::as_slice`] made of misaligned data: a `Vec<T>` for the one
    /// element type `T` the dtype holds.
    aligned: OnceLock<Box<dyn Any + Send + Sync + UnwindSafe + RefUnwindSafe>>,
}

impl Clone for NdArray {
    fn clone(&self) -> Self {
        NdArray {
            dtype: self.dtype.clone(),
            shape: self.shape.clone(),
            data: self.data.clone(),
            aligned: OnceLock::new(),
        }
    }
}

impl PartialEq for NdArray {
    fn eq(&self, other: &NdArray) -> bool {
        self.dtype == other.dtype && self.shape == other.shape && self.data == other.data
    }
}

impl Eq for NdArray {}

impl fmt::Debug for NdArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NdArray")
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("data_len", &self.data.len())
            .finish()
    }
}

impl NdArray {
    /// An array from its parts. `dtype` is numpy's `dtype.str` (e.g. `"<f4"`).
    ///
    /// # Errors
    ///
    /// [`ArrayError::DataLength`] when `data` is not `product(shape) * itemsize` bytes, or
    /// [`ArrayError::ShapeOverflow`]. Dtypes this crate does not know are taken as they are.
    pub fn new(
        dtype: impl Into<String>,
        shape: impl Into<Vec<usize>>,
        data: Vec<u8>,
    ) -> Result<NdArray, ArrayError> {
        NdArray::from_bytes(dtype, shape, Bytes::from(data))
    }

    /// An array from its parts, with data that may be shared (see [`Bytes`]).
    ///
    /// # Errors
    ///
    /// As [`NdArray::new`].
    pub fn from_bytes(
        dtype: impl Into<String>,
        shape: impl Into<Vec<usize>>,
        data: Bytes,
    ) -> Result<NdArray, ArrayError> {
        NdArray::checked(
            CompactString::from(dtype.into()),
            Shape::from_vec(shape.into()),
            data,
        )
    }

    /// [`NdArray::from_bytes`] for parts in their stored form.
    fn checked(dtype: CompactString, shape: Shape, data: Bytes) -> Result<NdArray, ArrayError> {
        check_len(&dtype, &shape, data.len())?;
        Ok(NdArray::parts(dtype, shape, data))
    }

    /// An array from parts already checked.
    fn parts(dtype: CompactString, shape: Shape, data: Bytes) -> NdArray {
        NdArray {
            dtype,
            shape,
            data,
            aligned: OnceLock::new(),
        }
    }

    /// An array of `T` in the machine's byte order, copied from `data` (C order).
    ///
    /// # Errors
    ///
    /// [`ArrayError::DataLength`] when `data` does not have `product(shape)` elements, or
    /// [`ArrayError::ShapeOverflow`].
    pub fn from_slice<T: Element>(
        shape: impl Into<Vec<usize>>,
        data: &[T],
    ) -> Result<NdArray, ArrayError> {
        NdArray::new(native_dtype::<T>(), shape, element_bytes(data).to_vec())
    }

    /// numpy's dtype string, e.g. `"<f4"`.
    #[must_use]
    pub fn dtype(&self) -> &str {
        &self.dtype
    }

    /// The shape; empty for a 0-d array.
    #[must_use]
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements' bytes, C order, in the dtype's byte order.
    #[must_use]
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The elements' bytes, taken out of the array (copied when shared).
    #[must_use]
    pub fn into_data(self) -> Vec<u8> {
        self.data.into_vec()
    }

    /// The elements' bytes as [`Bytes`], owned or shared as they are.
    #[must_use]
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    /// Whether the data is shared with a shard's payload (see [`Bytes`]) rather than owned.
    #[must_use]
    pub fn is_shared(&self) -> bool {
        self.data.is_shared()
    }

    /// The same array with its data owned: copied out of the shard's payload when shared, so the
    /// payload can be freed.
    #[must_use]
    pub fn into_owned(self) -> NdArray {
        if !self.is_shared() {
            return self;
        }
        NdArray::parts(self.dtype, self.shape, self.data.into_owned())
    }

    /// The number of elements (1 for a 0-d array).
    #[must_use]
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the array has no elements.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes per element, when the dtype is one this crate knows.
    #[must_use]
    pub fn itemsize(&self) -> Option<usize> {
        parse_dtype(&self.dtype).map(|d| d.itemsize)
    }

    /// The elements as `&[T]`: borrowed when the data is aligned for `T`; otherwise copied once
    /// into an aligned buffer that the array keeps (later calls borrow it).
    ///
    /// # Errors
    ///
    /// [`ArrayError::DtypeMismatch`] when the dtype is not `T`'s; [`ArrayError::ByteOrder`] when
    /// it is `T` in the other byte order ([`NdArray::to_vec`] swaps); [`ArrayError::InvalidBool`]
    /// for a bool array holding bytes other than 0 and 1.
    pub fn as_slice<T: Element>(&self) -> Result<&[T], ArrayError> {
        match view(&self.dtype, &self.data) {
            Err(ArrayError::Misaligned { align }) => {
                // `view` checked dtype, byte order and bool bytes: only alignment is missing.
                let copy = self.aligned.get_or_init(|| {
                    Box::new(read_all::<T>(&self.data, cfg!(target_endian = "big")))
                });
                // Only one element type passes the dtype check, so the copy is a `Vec<T>`.
                let copy: &dyn Any = &**copy;
                copy.downcast_ref::<Vec<T>>()
                    .map(Vec::as_slice)
                    .ok_or(ArrayError::Misaligned { align })
            }
            other => other,
        }
    }

    /// Copies the elements into a `Vec<T>`, swapping bytes when the dtype's order is not the
    /// machine's.
    ///
    /// # Errors
    ///
    /// [`ArrayError::DtypeMismatch`] when the dtype is not `T` in either byte order.
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>, ArrayError> {
        let big_endian = dtype_is::<T>(&self.dtype)?;
        Ok(read_all(&self.data, big_endian))
    }
}

/// A numpy scalar (`numpy.int64(3)`, `numpy.float32(1.25)`...): dtype string and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NdScalar {
    dtype: String,
    data: Vec<u8>,
}

impl NdScalar {
    /// A scalar from its parts.
    ///
    /// # Errors
    ///
    /// [`ArrayError::DataLength`] when `data` is not the dtype's item size.
    pub fn new(dtype: impl Into<String>, data: Vec<u8>) -> Result<NdScalar, ArrayError> {
        let dtype = dtype.into();
        check_len(&dtype, &[], data.len())?;
        Ok(NdScalar { dtype, data })
    }

    /// A scalar of `T` in the machine's byte order.
    #[must_use]
    pub fn from_value<T: Element>(v: T) -> NdScalar {
        NdScalar {
            dtype: native_dtype::<T>(),
            data: element_bytes(&[v]).to_vec(),
        }
    }

    /// numpy's dtype string, e.g. `"<i8"`.
    #[must_use]
    pub fn dtype(&self) -> &str {
        &self.dtype
    }

    /// The value's bytes, in the dtype's byte order.
    #[must_use]
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The value as `T`, swapping bytes when needed.
    ///
    /// # Errors
    ///
    /// [`ArrayError::DtypeMismatch`] when the dtype is not `T`.
    pub fn get<T: Element>(&self) -> Result<T, ArrayError> {
        let big_endian = dtype_is::<T>(&self.dtype)?;
        T::read(&self.data, big_endian).ok_or_else(|| ArrayError::DataLength {
            dtype: self.dtype.clone(),
            shape: Vec::new(),
            expected: size_of::<T>(),
            actual: self.data.len(),
        })
    }
}

/// A Python `complex`, kept as the `repr` text msgpack-numpy stores (e.g. `"(1-1.5j)"`, `"-1.5j"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PyComplex {
    /// Python's `repr` of the number.
    pub repr: String,
}

const ND: &[u8] = b"nd";
const TYPE: &[u8] = b"type";
const KIND: &[u8] = b"kind";
const SHAPE: &[u8] = b"shape";
const DATA: &[u8] = b"data";
const COMPLEX: &[u8] = b"complex";

fn bin(key: &[u8]) -> Value {
    Value::Bin(key.into())
}

impl From<&NdArray> for Value {
    fn from(a: &NdArray) -> Value {
        let shape = a.shape.iter().map(|d| Value::from(*d as u64)).collect();
        Value::Map(vec![
            (bin(ND), Value::Bool(true)),
            (bin(TYPE), Value::Str(a.dtype.to_string())),
            (bin(KIND), Value::Bin(Bytes::default())),
            (bin(SHAPE), Value::Array(shape)),
            (bin(DATA), Value::Bin(a.data.clone())),
        ])
    }
}

impl From<NdArray> for Value {
    fn from(a: NdArray) -> Value {
        let shape = a.shape.iter().map(|d| Value::from(*d as u64)).collect();
        Value::Map(vec![
            (bin(ND), Value::Bool(true)),
            (bin(TYPE), Value::Str(a.dtype.into_string())),
            (bin(KIND), Value::Bin(Bytes::default())),
            (bin(SHAPE), Value::Array(shape)),
            (bin(DATA), Value::Bin(a.data)),
        ])
    }
}

impl From<&NdScalar> for Value {
    fn from(s: &NdScalar) -> Value {
        Value::Map(vec![
            (bin(ND), Value::Bool(false)),
            (bin(TYPE), Value::Str(s.dtype.clone())),
            (bin(DATA), Value::Bin(s.data.clone().into())),
        ])
    }
}

impl From<&PyComplex> for Value {
    fn from(c: &PyComplex) -> Value {
        Value::Map(vec![
            (bin(COMPLEX), Value::Bool(true)),
            (bin(DATA), Value::Str(c.repr.clone())),
        ])
    }
}

/// The `nd` flag of a msgpack-numpy map, checked against the kind of value expected.
fn nd_flag(v: &Value, expected: &'static str, want: bool) -> Result<(), ArrayError> {
    let not = |why| ArrayError::NotNumpy { expected, why };
    if v.as_map().is_none() {
        return Err(not("not a map"));
    }
    match v.get_bin(ND).and_then(Value::as_bool) {
        Some(b) if b == want => Ok(()),
        Some(_) => Err(not("the nd flag is for the other kind")),
        None => Err(not("no bool under bin key nd")),
    }
}

impl TryFrom<&Value> for NdArray {
    type Error = ArrayError;

    fn try_from(v: &Value) -> Result<NdArray, ArrayError> {
        let not = |why| ArrayError::NotNumpy {
            expected: "array",
            why,
        };
        nd_flag(v, "array", true)?;
        // msgpack-numpy before 0.4 wrote no kind; an absent kind means a plain array.
        if let Some(kind) = v.get_bin(KIND) {
            let kind = kind.as_bin().ok_or_else(|| not("kind is not bin"))?;
            if !kind.is_empty() {
                return Err(ArrayError::UnsupportedKind {
                    kind: String::from_utf8_lossy(kind).into_owned(),
                });
            }
        }
        let dtype = v
            .get_bin(TYPE)
            .and_then(Value::as_str)
            .ok_or_else(|| not("no str under bin key type"))?;
        let shape = v
            .get_bin(SHAPE)
            .and_then(Value::as_array)
            .ok_or_else(|| not("no array under bin key shape"))?
            .iter()
            .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
            .collect::<Option<Shape>>()
            .ok_or_else(|| not("shape holds something other than sizes"))?;
        let data = match v.get_bin(DATA).map(Value::unwide) {
            Some(Value::Bin(data)) => data,
            _ => return Err(not("no bin under bin key data")),
        };
        // Check before copying: a lying shape should not cost a copy of the data.
        check_len(dtype, &shape, data.len())?;
        // A shared bin stays shared: the array is a window into the same payload.
        Ok(NdArray::parts(dtype.into(), shape, data.clone()))
    }
}

impl TryFrom<&Value> for NdScalar {
    type Error = ArrayError;

    fn try_from(v: &Value) -> Result<NdScalar, ArrayError> {
        let not = |why| ArrayError::NotNumpy {
            expected: "scalar",
            why,
        };
        nd_flag(v, "scalar", false)?;
        let dtype = v
            .get_bin(TYPE)
            .and_then(Value::as_str)
            .ok_or_else(|| not("no str under bin key type"))?;
        let data = v
            .get_bin(DATA)
            .and_then(Value::as_bin)
            .ok_or_else(|| not("no bin under bin key data"))?;
        NdScalar::new(dtype, data.to_vec())
    }
}

impl TryFrom<&Value> for PyComplex {
    type Error = ArrayError;

    fn try_from(v: &Value) -> Result<PyComplex, ArrayError> {
        let not = |why| ArrayError::NotNumpy {
            expected: "complex",
            why,
        };
        // msgpack-numpy only asks whether the key is there.
        if v.get_bin(COMPLEX).is_none() {
            return Err(not("no bin key complex"));
        }
        let repr = v
            .get_bin(DATA)
            .and_then(Value::as_str)
            .ok_or_else(|| not("no str under bin key data"))?;
        Ok(PyComplex {
            repr: repr.to_owned(),
        })
    }
}

impl Value {
    /// This value as a numpy array, if it is a msgpack-numpy array map.
    ///
    /// # Errors
    ///
    /// [`ArrayError`] when it is not one, or its data does not fit its dtype and shape.
    pub fn to_ndarray(&self) -> Result<NdArray, ArrayError> {
        NdArray::try_from(self)
    }
}

// Serde: the same maps as above, with bin keys (through serde_bytes), so that typed samples
// written with rmp-serde are what msgpack-numpy writes.

use serde_bytes::Bytes as SerBytes;

impl Serialize for NdArray {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(5))?;
        m.serialize_entry(SerBytes::new(ND), &true)?;
        m.serialize_entry(SerBytes::new(TYPE), &self.dtype)?;
        m.serialize_entry(SerBytes::new(KIND), SerBytes::new(b""))?;
        m.serialize_entry(SerBytes::new(SHAPE), &self.shape)?;
        m.serialize_entry(SerBytes::new(DATA), SerBytes::new(&self.data))?;
        m.end()
    }
}

impl Serialize for NdScalar {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry(SerBytes::new(ND), &false)?;
        m.serialize_entry(SerBytes::new(TYPE), &self.dtype)?;
        m.serialize_entry(SerBytes::new(DATA), SerBytes::new(&self.data))?;
        m.end()
    }
}

impl Serialize for PyComplex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry(SerBytes::new(COMPLEX), &true)?;
        m.serialize_entry(SerBytes::new(DATA), &self.repr)?;
        m.end()
    }
}

/// A key of a msgpack-numpy map; bin in the real thing, str accepted for other formats.
enum Key {
    Nd,
    Type,
    Kind,
    Shape,
    Data,
    Complex,
    Other,
}

impl Key {
    fn from_bytes(b: &[u8]) -> Key {
        match b {
            ND => Key::Nd,
            TYPE => Key::Type,
            KIND => Key::Kind,
            SHAPE => Key::Shape,
            DATA => Key::Data,
            COMPLEX => Key::Complex,
            _ => Key::Other,
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a msgpack-numpy key")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Key, E> {
                Ok(Key::from_bytes(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(Key::from_bytes(v.as_bytes()))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Key, E> {
                Ok(Key::Other)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Key, E> {
                Ok(Key::Other)
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

/// The fields of any msgpack-numpy map, as read by serde.
#[derive(Default)]
struct Fields {
    nd: Option<bool>,
    dtype: Option<CompactString>,
    kind: Option<ByteBuf>,
    shape: Option<Shape>,
    data: Option<DataField>,
    complex: bool,
}

/// `data` is bin for arrays and scalars, str for complex numbers.
enum DataField {
    Bin(Bytes),
    Str(String),
}

impl<'de> Deserialize<'de> for DataField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DataField, D::Error> {
        struct DataVisitor;
        impl<'de> Visitor<'de> for DataVisitor {
            type Value = DataField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bin or str data")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<DataField, E> {
                Ok(DataField::Bin(v.into()))
            }
            // Bytes lent from the input: shared with the payload being decoded, when there is one.
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<DataField, E> {
                Ok(DataField::Bin(value::share(v)))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<DataField, E> {
                Ok(DataField::Bin(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<DataField, E> {
                Ok(DataField::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<DataField, E> {
                Ok(DataField::Str(v))
            }
        }
        d.deserialize_any(DataVisitor)
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fields, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a msgpack-numpy map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut f = Fields::default();
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Nd => f.nd = Some(map.next_value()?),
                        Key::Type => f.dtype = Some(map.next_value()?),
                        Key::Kind => f.kind = Some(map.next_value()?),
                        Key::Shape => f.shape = Some(map.next_value()?),
                        Key::Data => f.data = Some(map.next_value()?),
                        Key::Complex => {
                            map.next_value::<IgnoredAny>()?;
                            f.complex = true;
                        }
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(f)
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

fn missing<E: de::Error>(what: &str) -> E {
    E::custom(format_args!("msgpack-numpy map without {what}"))
}

impl<'de> Deserialize<'de> for NdArray {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NdArray, D::Error> {
        let f = Fields::deserialize(d)?;
        if f.nd != Some(true) {
            return Err(missing("nd: true (not an array)"));
        }
        if let Some(kind) = f.kind.filter(|k| !k.is_empty()) {
            return Err(de::Error::custom(ArrayError::UnsupportedKind {
                kind: String::from_utf8_lossy(&kind).into_owned(),
            }));
        }
        let dtype = f.dtype.ok_or_else(|| missing("type"))?;
        let shape = f.shape.ok_or_else(|| missing("shape"))?;
        let Some(DataField::Bin(data)) = f.data else {
            return Err(missing("bin data"));
        };
        NdArray::checked(dtype, shape, data).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for NdScalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NdScalar, D::Error> {
        let f = Fields::deserialize(d)?;
        if f.nd != Some(false) {
            return Err(missing("nd: false (not a scalar)"));
        }
        let dtype = f.dtype.ok_or_else(|| missing("type"))?;
        let Some(DataField::Bin(data)) = f.data else {
            return Err(missing("bin data"));
        };
        NdScalar::new(dtype, data.into_vec()).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for PyComplex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PyComplex, D::Error> {
        let f = Fields::deserialize(d)?;
        if !f.complex {
            return Err(missing("complex"));
        }
        let Some(DataField::Str(repr)) = f.data else {
            return Err(missing("str data"));
        };
        Ok(PyComplex { repr })
    }
}

#[cfg(feature = "ndarray")]
mod ndarray_impl {
    //! Conversions to and from the `ndarray` crate (feature `ndarray`).

    use ndarray::{ArrayD, IxDyn};

    use super::{ArrayError, Element, NdArray, element_bytes, native_dtype};

    impl<T: Element> TryFrom<&NdArray> for ArrayD<T> {
        type Error = ArrayError;

        /// Copies the elements (swapping bytes if needed) into an owned `ndarray` array.
        fn try_from(a: &NdArray) -> Result<ArrayD<T>, ArrayError> {
            let v = a.to_vec::<T>()?;
            ArrayD::from_shape_vec(IxDyn(a.shape()), v).map_err(|_| ArrayError::ShapeOverflow {
                shape: a.shape().to_vec(),
            })
        }
    }

    impl<T: Element> From<ArrayD<T>> for NdArray {
        /// Copies the elements in C order, whatever the array's memory layout.
        fn from(a: ArrayD<T>) -> NdArray {
            let shape = a.shape().to_vec();
            let std = a.as_standard_layout();
            let data = match std.as_slice() {
                Some(s) => element_bytes(s).to_vec(),
                // A standard-layout array is contiguous; this arm only keeps the code total.
                None => std
                    .iter()
                    .flat_map(|x| element_bytes(std::slice::from_ref(x)).to_vec())
                    .collect(),
            };
            NdArray::parts(native_dtype::<T>(), shape, data.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_parse() {
        let size = |s: &str| parse_dtype(s).map(|d| d.itemsize);
        assert_eq!(size("<f4"), Some(4));
        assert_eq!(size("|b1"), Some(1));
        assert_eq!(size("<c16"), Some(16));
        assert_eq!(size("<U5"), Some(20));
        assert_eq!(size("<M8[ns]"), Some(8));
        assert_eq!(size("|O"), None);
        assert_eq!(size(""), None);
        assert_eq!(size("<f4x"), None);
    }

    #[test]
    fn views_and_copies() {
        let a = NdArray::from_slice([2, 2], &[1.0f32, 2.0, 3.0, 4.0]).expect("valid");
        assert_eq!(
            a.dtype(),
            if cfg!(target_endian = "little") {
                "<f4"
            } else {
                ">f4"
            }
        );
        assert_eq!(a.to_vec::<f32>(), Ok(vec![1.0, 2.0, 3.0, 4.0]));
        assert!(matches!(
            a.as_slice::<f64>(),
            Err(ArrayError::DtypeMismatch { .. })
        ));
        let be = NdArray::new(">i2", [2], vec![0xff, 0xca, 0x00, 0x01]).expect("valid");
        assert_eq!(be.to_vec::<i16>(), Ok(vec![-54, 1]));
        assert!(matches!(
            be.as_slice::<i16>(),
            Err(ArrayError::ByteOrder { .. })
        ));
        let bools = NdArray::new("|b1", [2], vec![0, 2]).expect("valid");
        assert_eq!(bools.to_vec::<bool>(), Ok(vec![false, true]));
        assert!(matches!(
            bools.as_slice::<bool>(),
            Err(ArrayError::InvalidBool { index: 1, byte: 2 })
        ));
    }

    #[test]
    fn lengths_are_checked() {
        assert!(matches!(
            NdArray::new("<f4", [3], vec![0; 8]),
            Err(ArrayError::DataLength { expected: 12, .. })
        ));
        assert!(matches!(
            NdArray::new("<f8", [usize::MAX, 2], vec![]),
            Err(ArrayError::ShapeOverflow { .. })
        ));
        assert!(NdArray::new("|O", [3], vec![1]).is_ok());
    }

    #[cfg(feature = "half")]
    #[test]
    fn float16_is_an_element() {
        use half::f16;
        let values = [f16::from_f32(1.5), f16::from_f32(-2.0), f16::INFINITY];
        let a = NdArray::from_slice(vec![3], &values).expect("array");
        assert_eq!(a.dtype(), native_dtype::<f16>());
        assert_eq!(a.to_vec::<f16>().expect("typed"), values);
        // Big-endian bytes read the same values (copied, as the bytes are swapped).
        let be: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        let b = NdArray::new(">f2", vec![3], be).expect("array");
        assert_eq!(b.to_vec::<f16>().expect("typed"), values);
        assert!(matches!(
            b.to_vec::<u16>(),
            Err(ArrayError::DtypeMismatch { .. })
        ));
    }
}
