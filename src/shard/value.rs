//! [`Value`]: a dynamic MessagePack value that re-encodes byte for byte.
//!
//! Python squirrel samples are schema-less maps, so reading them needs a dynamic value. Decoding and
//! re-encoding a shard must give back the identical bytes (the store may re-compress shards and
//! must never change them), so a [`Value`] remembers everything the encoding chose:
//!
//! * map entries in stored order (a `Vec` of pairs, never a hash map);
//! * str versus bin, f32 versus f64;
//! * for integers, the marker used (`5` may be written as a positive fixint, `uint8` or `int16`,
//!   see [`Integer`]);
//! * for str, bin, array, map and ext, a length field wider than needed (see [`Value::Wide`]).
//!
//! A value written the way Python's `msgpack.packb` writes it (the smallest form; non-negative
//! integers as unsigned) decodes to plain variants, so values built in Rust and values read from a
//! Python shard compare equal.
//!
//! Decoding never trusts a length field: it checks the claim against the bytes that are left before
//! allocating, and nesting deeper than [`MAX_DEPTH`] is an error, not a stack overflow.

use std::fmt;

use std::cell::RefCell;
use std::ops::Deref;

use rmp::Marker;
use rmp::encode::{ByteBuf, RmpWrite};

use crate::shard::store::{Payload, window};

/// How deeply containers (arrays, maps) may nest when decoding.
///
/// Python's msgpack refuses deeper nesting than its recursion limit allows; 512 is far beyond any
/// real sample and keeps the recursive decoder well inside a thread's stack.
pub const MAX_DEPTH: usize = 512;

/// Why bytes did not decode as MessagePack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends inside a value.
    #[error("input ends inside a value: byte {offset} needs {needed} more bytes than are left")]
    Truncated {
        /// Offset of the field that runs past the end.
        offset: usize,
        /// How many bytes the field claims beyond the end of the input.
        needed: u64,
    },
    /// The byte 0xc1, which MessagePack reserves and never writes.
    #[error("reserved marker 0xc1 at byte {offset}")]
    ReservedMarker {
        /// Offset of the marker.
        offset: usize,
    },
    /// Containers nest deeper than [`MAX_DEPTH`].
    #[error("containers nest deeper than {limit} levels at byte {offset}")]
    TooDeep {
        /// Offset of the container that went too deep.
        offset: usize,
        /// The limit.
        limit: usize,
    },
    /// A str holds bytes that are not UTF-8 (Python's msgpack refuses those too).
    #[error("str at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// Offset of the str's marker.
        offset: usize,
    },
    /// Bytes follow the single value that was expected.
    #[error("{count} unexpected bytes after the value, from byte {offset}")]
    TrailingBytes {
        /// Where the extra bytes start.
        offset: usize,
        /// How many there are.
        count: usize,
    },
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A str, bin, ext, array or map is longer than MessagePack's 32-bit length fields allow.
    #[error("{what} of length {len} is longer than MessagePack allows (2^32 - 1)")]
    TooLong {
        /// Which kind of item.
        what: &'static str,
        /// Its length.
        len: usize,
    },
}

/// The marker an integer is written with.
///
/// MessagePack has several encodings for most integers; keeping the one that was read makes
/// re-encoding byte-identical even for writers that do not pick the smallest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntMarker {
    /// Positive fixint, 0..=127 in the marker byte.
    FixPos,
    /// Negative fixint, -32..=-1 in the marker byte.
    FixNeg,
    /// `uint8` (0xcc).
    U8,
    /// `uint16` (0xcd).
    U16,
    /// `uint32` (0xce).
    U32,
    /// `uint64` (0xcf).
    U64,
    /// `int8` (0xd0).
    I8,
    /// `int16` (0xd1).
    I16,
    /// `int32` (0xd2).
    I32,
    /// `int64` (0xd3).
    I64,
}

/// The numeric value of an integer: MessagePack integers span `i64::MIN..=u64::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum IntN {
    /// Zero or positive.
    Pos(u64),
    /// Always below zero, so that each number has one representation.
    Neg(i64),
}

/// A MessagePack integer and, when it is not the smallest form, the marker it was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Integer {
    n: IntN,
    /// `None` means the canonical marker (what Python's msgpack writes).
    marker: Option<IntMarker>,
}

impl Integer {
    /// The value as an `i64`, if it fits.
    #[must_use]
    pub fn as_i64(&self) -> Option<i64> {
        match self.n {
            IntN::Pos(v) => i64::try_from(v).ok(),
            IntN::Neg(v) => Some(v),
        }
    }

    /// The value as a `u64`, if it is not negative.
    #[must_use]
    pub fn as_u64(&self) -> Option<u64> {
        match self.n {
            IntN::Pos(v) => Some(v),
            IntN::Neg(_) => None,
        }
    }

    /// The value as an `i128` (every MessagePack integer fits).
    #[must_use]
    pub fn as_i128(&self) -> i128 {
        match self.n {
            IntN::Pos(v) => i128::from(v),
            IntN::Neg(v) => i128::from(v),
        }
    }

    /// The marker the integer is encoded with.
    #[must_use]
    pub fn marker(&self) -> IntMarker {
        self.marker.unwrap_or_else(|| canonical_int_marker(self.n))
    }

    /// The same number written with `marker`, or `None` when the number does not fit it.
    #[must_use]
    pub fn with_marker(self, marker: IntMarker) -> Option<Integer> {
        if !int_fits(self.n, marker) {
            return None;
        }
        // The canonical marker is stored as `None` so that equal numbers compare equal.
        let explicit = (marker != canonical_int_marker(self.n)).then_some(marker);
        Some(Integer {
            n: self.n,
            marker: explicit,
        })
    }
}

impl From<u64> for Integer {
    fn from(v: u64) -> Self {
        Integer {
            n: IntN::Pos(v),
            marker: None,
        }
    }
}

impl From<i64> for Integer {
    fn from(v: i64) -> Self {
        let n = match u64::try_from(v) {
            Ok(p) => IntN::Pos(p),
            Err(_) => IntN::Neg(v),
        };
        Integer { n, marker: None }
    }
}

macro_rules! integer_from {
    ($via:ty: $($t:ty),*) => {$(
        impl From<$t> for Integer {
            fn from(v: $t) -> Self {
                Integer::from(<$via>::from(v))
            }
        }
        impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::Int(Integer::from(v))
            }
        }
    )*};
}
integer_from!(u64: u8, u16, u32);
integer_from!(i64: i8, i16, i32);

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Int(Integer::from(v))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(Integer::from(v))
    }
}

impl fmt::Display for Integer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.n {
            IntN::Pos(v) => write!(f, "{v}"),
            IntN::Neg(v) => write!(f, "{v}"),
        }
    }
}

/// What Python's msgpack writes: the smallest form, unsigned for non-negative numbers.
fn canonical_int_marker(n: IntN) -> IntMarker {
    match n {
        IntN::Pos(v) if v < 0x80 => IntMarker::FixPos,
        IntN::Pos(v) if v <= 0xff => IntMarker::U8,
        IntN::Pos(v) if v <= 0xffff => IntMarker::U16,
        IntN::Pos(v) if v <= 0xffff_ffff => IntMarker::U32,
        IntN::Pos(_) => IntMarker::U64,
        IntN::Neg(v) if v >= -32 => IntMarker::FixNeg,
        IntN::Neg(v) if v >= i64::from(i8::MIN) => IntMarker::I8,
        IntN::Neg(v) if v >= i64::from(i16::MIN) => IntMarker::I16,
        IntN::Neg(v) if v >= i64::from(i32::MIN) => IntMarker::I32,
        IntN::Neg(_) => IntMarker::I64,
    }
}

fn int_fits(n: IntN, marker: IntMarker) -> bool {
    let v = match n {
        IntN::Pos(v) => i128::from(v),
        IntN::Neg(v) => i128::from(v),
    };
    let (lo, hi): (i128, i128) = match marker {
        IntMarker::FixPos => (0, 127),
        IntMarker::FixNeg => (-32, -1),
        IntMarker::U8 => (0, u8::MAX.into()),
        IntMarker::U16 => (0, u16::MAX.into()),
        IntMarker::U32 => (0, u32::MAX.into()),
        IntMarker::U64 => (0, u64::MAX.into()),
        IntMarker::I8 => (i8::MIN.into(), i8::MAX.into()),
        IntMarker::I16 => (i16::MIN.into(), i16::MAX.into()),
        IntMarker::I32 => (i32::MIN.into(), i32::MAX.into()),
        IntMarker::I64 => (i64::MIN.into(), i64::MAX.into()),
    };
    (lo..=hi).contains(&v)
}

/// The size of a length field, for str, bin, ext, array and map headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LenWidth {
    /// Length inside the marker byte: fixstr, fixarray, fixmap, or fixext (lengths 1, 2, 4, 8, 16).
    Fix,
    /// One length byte: str8, bin8, ext8.
    W8,
    /// Two length bytes: str16, bin16, ext16, array16, map16.
    W16,
    /// Four length bytes: str32, bin32, ext32, array32, map32.
    W32,
}

/// The bytes of a bin or an array: owned, or shared with the shard payload they were decoded
/// from.
///
/// Decoding a shard from a store ([`Store::get`](crate::Store::get),
/// [`Store::get_values`](crate::Store::get_values), [`Payload::samples`]) copies no bin or array
/// data: each [`Bytes`] is a window into the shard's payload, which is the store's memory map
/// when the record is uncompressed (and the decompressed buffer otherwise), kept alive by a
/// reference count. Values built in code own their bytes. Either way it derefs to `&[u8]` and
/// compares by content.
///
/// A shared window keeps the whole payload alive (for a mapped one, the segment it lies in, even
/// after a compaction): call [`Bytes::into_owned`] on what is kept long after the rest of the
/// shard is dropped.
///
/// ```
/// use squirrel_store::value::{Bytes, Value};
///
/// let b = Bytes::from(vec![1u8, 2, 3]);
/// assert_eq!(&*b, &[1, 2, 3]);
/// assert!(!b.is_shared());
/// assert_eq!(Value::Bin(b).as_bin(), Some(&[1u8, 2, 3][..]));
/// ```
#[derive(Clone, Default)]
pub struct Bytes(BytesRepr);

#[derive(Clone)]
enum BytesRepr {
    Owned(Vec<u8>),
    Shared {
        payload: Payload,
        start: usize,
        len: usize,
    },
}

impl Default for BytesRepr {
    fn default() -> Self {
        BytesRepr::Owned(Vec::new())
    }
}

impl Bytes {
    /// `slice` as a window into `payload`, when it lies inside it.
    pub(crate) fn shared(payload: &Payload, slice: &[u8]) -> Option<Bytes> {
        let start = window(payload, slice)?;
        Some(Bytes(BytesRepr::Shared {
            payload: payload.clone(),
            start,
            len: slice.len(),
        }))
    }

    /// Whether the bytes are shared with a shard's payload rather than owned.
    #[must_use]
    pub fn is_shared(&self) -> bool {
        matches!(self.0, BytesRepr::Shared { .. })
    }

    /// The same bytes, owned: copied out of the payload when shared, so that the payload can be
    /// freed.
    #[must_use]
    pub fn into_owned(self) -> Bytes {
        Bytes(BytesRepr::Owned(self.into_vec()))
    }

    /// The bytes as a `Vec` (copied when shared).
    #[must_use]
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            BytesRepr::Owned(v) => v,
            BytesRepr::Shared { .. } => self.to_vec(),
        }
    }
}

impl Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.0 {
            BytesRepr::Owned(v) => v,
            // `shared` checked the window against the payload, which never changes; the empty
            // fallback cannot be reached.
            BytesRepr::Shared {
                payload,
                start,
                len,
            } => payload.get(*start..start + len).unwrap_or(&[]),
        }
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(BytesRepr::Owned(v))
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(BytesRepr::Owned(v.to_vec()))
    }
}

impl<const N: usize> From<[u8; N]> for Bytes {
    fn from(v: [u8; N]) -> Self {
        Bytes(BytesRepr::Owned(v.to_vec()))
    }
}

impl<const N: usize> From<&[u8; N]> for Bytes {
    fn from(v: &[u8; N]) -> Self {
        Bytes(BytesRepr::Owned(v.to_vec()))
    }
}

impl From<Bytes> for Vec<u8> {
    fn from(b: Bytes) -> Self {
        b.into_vec()
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Bytes) -> bool {
        **self == **other
    }
}

impl Eq for Bytes {}

impl std::hash::Hash for Bytes {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl PartialEq<[u8]> for Bytes {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}

impl PartialEq<&[u8]> for Bytes {
    fn eq(&self, other: &&[u8]) -> bool {
        **self == **other
    }
}

impl PartialEq<Vec<u8>> for Bytes {
    fn eq(&self, other: &Vec<u8>) -> bool {
        **self == **other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Bytes {
    fn eq(&self, other: &[u8; N]) -> bool {
        **self == *other
    }
}

thread_local! {
    /// The payload being deserialized with serde on this thread, whose bytes decoded bins and
    /// arrays may share (see [`sharing`]).
    static SHARING: RefCell<Option<Payload>> = const { RefCell::new(None) };
}

/// Runs `f` (a serde deserialization of bytes inside `payload`) with `payload` offered for
/// sharing: bytes that serde hands out borrowed from it become windows into it ([`share`]).
/// Restores what was offered before, also when `f` panics.
pub(crate) fn sharing<R>(payload: &Payload, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Payload>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SHARING.with(|s| *s.borrow_mut() = previous);
        }
    }
    let previous = SHARING.with(|s| s.borrow_mut().replace(payload.clone()));
    let _restore = Restore(previous);
    f()
}

/// Bytes that a deserializer lent: a window into the payload offered by [`sharing`] when they
/// lie in it, else a copy.
pub(crate) fn share(bytes: &[u8]) -> Bytes {
    SHARING
        .with(|s| {
            s.borrow()
                .as_ref()
                .and_then(|payload| Bytes::shared(payload, bytes))
        })
        .unwrap_or_else(|| Bytes::from(bytes))
}

/// A dynamic MessagePack value.
///
/// Equality is structural and includes the encoding choices that a value keeps: an integer written
/// with a non-canonical marker, or a [`Value::Wide`] wrapper, differs from the plain value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `nil` (Python `None`).
    Nil,
    /// `true` or `false`.
    Bool(bool),
    /// An integer.
    Int(Integer),
    /// A float32 (numpy's single floats never reach here: msgpack-numpy packs them as bin).
    F32(f32),
    /// A float64 (Python `float`).
    F64(f64),
    /// A str (Python `str`).
    Str(String),
    /// A bin (Python `bytes`); decoded from a store, it shares the shard's bytes (see [`Bytes`]).
    Bin(Bytes),
    /// An array (Python `list` or `tuple`).
    Array(Vec<Value>),
    /// A map (Python `dict`), entries in stored order.
    Map(Vec<(Value, Value)>),
    /// An extension value: application type tag and data.
    Ext(i8, Vec<u8>),
    /// A str, bin, ext, array or map whose length field is wider than it needs to be.
    ///
    /// Decoding produces this only for such non-minimal encodings; encoding writes `value` with a
    /// `width` length field (or the smallest one, if `width` is too narrow or does not exist for
    /// that kind). The accessors ([`Value::as_map`], [`Value::get`], ...) look through it.
    Wide {
        /// The length field's size.
        width: LenWidth,
        /// The value.
        value: Box<Value>,
    },
}

impl Value {
    /// Decodes the first value in `bytes`; returns it and how many bytes it used.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] when the bytes are not a complete, valid MessagePack value.
    pub fn decode(bytes: &[u8]) -> Result<(Value, usize), DecodeError> {
        let mut r = Reader {
            buf: bytes,
            pos: 0,
            owner: None,
        };
        let v = r.value(0)?;
        Ok((v, r.pos))
    }

    /// [`Value::decode`] of bytes inside `owner`: bins share `owner` instead of copying.
    pub(crate) fn decode_in(owner: &Payload, bytes: &[u8]) -> Result<(Value, usize), DecodeError> {
        let mut r = Reader {
            buf: bytes,
            pos: 0,
            owner: Some(owner),
        };
        let v = r.value(0)?;
        Ok((v, r.pos))
    }

    /// Decodes `bytes` as exactly one value.
    ///
    /// # Errors
    ///
    /// [`DecodeError`] when the bytes are not one valid value, including
    /// [`DecodeError::TrailingBytes`] when bytes are left over.
    pub fn decode_exact(bytes: &[u8]) -> Result<Value, DecodeError> {
        let (v, used) = Value::decode(bytes)?;
        if used != bytes.len() {
            return Err(DecodeError::TrailingBytes {
                offset: used,
                count: bytes.len() - used,
            });
        }
        Ok(v)
    }

    /// Appends the value's MessagePack encoding to `out`.
    ///
    /// Works without recursion, so even a deeply nested value cannot overflow the stack here.
    ///
    /// # Errors
    ///
    /// [`EncodeError::TooLong`] when an item is longer than MessagePack's length fields allow;
    /// `out` may then hold part of the value.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut w = Writer {
            buf: ByteBuf::from_vec(std::mem::take(out)),
        };
        let result = w.value(self);
        *out = w.buf.into_vec();
        result
    }

    /// The value's MessagePack encoding.
    ///
    /// # Errors
    ///
    /// As [`Value::encode`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// The value with any [`Value::Wide`] wrappers removed.
    #[must_use]
    pub fn unwide(&self) -> &Value {
        let mut v = self;
        while let Value::Wide { value, .. } = v {
            v = value;
        }
        v
    }

    /// The entries, if this is a map.
    #[must_use]
    pub fn as_map(&self) -> Option<&[(Value, Value)]> {
        match self.unwide() {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// The items, if this is an array.
    #[must_use]
    pub fn as_array(&self) -> Option<&[Value]> {
        match self.unwide() {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The text, if this is a str.
    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self.unwide() {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The bytes, if this is a bin.
    #[must_use]
    pub fn as_bin(&self) -> Option<&[u8]> {
        match self.unwide() {
            Value::Bin(b) => Some(b),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    #[must_use]
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The integer as an `i64`, if this is an integer that fits.
    #[must_use]
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => i.as_i64(),
            _ => None,
        }
    }

    /// The integer as a `u64`, if this is a non-negative integer.
    #[must_use]
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(i) => i.as_u64(),
            _ => None,
        }
    }

    /// The number as an `f64`, if this is a float32 or float64.
    #[must_use]
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F32(f) => Some(f64::from(*f)),
            Value::F64(f) => Some(*f),
            _ => None,
        }
    }

    /// Whether this is `nil`.
    #[must_use]
    pub fn is_nil(&self) -> bool {
        matches!(self, Value::Nil)
    }

    /// In a map, the value of the first entry whose key is the str `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// In a map, the value of the first entry whose key is the bin `key` (msgpack-numpy's keys are
    /// bin).
    #[must_use]
    pub fn get_bin(&self, key: &[u8]) -> Option<&Value> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_bin() == Some(key))
            .map(|(_, v)| v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}

impl From<f32> for Value {
    fn from(v: f32) -> Self {
        Value::F32(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::F64(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Str(v)
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::Array(v)
    }
}

impl From<Vec<(Value, Value)>> for Value {
    fn from(v: Vec<(Value, Value)>) -> Self {
        Value::Map(v)
    }
}

impl From<Integer> for Value {
    fn from(v: Integer) -> Self {
        Value::Int(v)
    }
}

/// How many bytes the first MessagePack value in `bytes` takes, without building it.
///
/// Checks the same things as [`Value::decode`] except UTF-8 (so it finds sample boundaries in a
/// shard cheaply), including the depth limit. Iterative, with one counter per nesting level,
/// allocated only past 16 levels.
///
/// # Errors
///
/// [`DecodeError`] when the bytes do not start with a complete value.
pub fn value_len(bytes: &[u8]) -> Result<usize, DecodeError> {
    walk(bytes, false)
}

/// How many bytes the first MessagePack value in `bytes` takes, checked as [`Value::decode`]
/// checks it (UTF-8 of every str included), without building it.
///
/// What [`value_len`] is plus the UTF-8 check: it accepts exactly the values `Value::decode`
/// accepts, in memory bounded by the nesting depth, however many items the value holds. Use it to
/// validate or count samples without materialising them.
///
/// # Errors
///
/// [`DecodeError`] when the bytes do not start with a complete, valid value.
pub fn validate_value(bytes: &[u8]) -> Result<usize, DecodeError> {
    walk(bytes, true)
}

/// The walk behind [`value_len`] and [`validate_value`].
fn walk(bytes: &[u8], check_utf8: bool) -> Result<usize, DecodeError> {
    let mut r = Reader {
        buf: bytes,
        pos: 0,
        owner: None,
    };
    // Items still to read at each open container level; the root is one item. Inline for the
    // depths samples have, so finding a sample's end allocates nothing.
    let mut pending: smallvec::SmallVec<[u64; 16]> = smallvec::smallvec![1];
    while let Some(top) = pending.last_mut() {
        if *top == 0 {
            pending.pop();
            continue;
        }
        *top -= 1;
        let offset = r.pos;
        let children = match r.extent()? {
            Extent::Children(n) => n,
            Extent::Str(n) => {
                let s = r.take(n as usize)?;
                if check_utf8 && std::str::from_utf8(s).is_err() {
                    return Err(DecodeError::InvalidUtf8 { offset });
                }
                continue;
            }
            Extent::Leaf => continue,
        };
        // A container: the open levels (finished ones are popped before each read) are its
        // depth, counted as `Value::decode` counts it, empty containers included.
        if pending.len() > MAX_DEPTH {
            return Err(DecodeError::TooDeep {
                offset,
                limit: MAX_DEPTH,
            });
        }
        // Each item takes at least one byte: a count beyond the input is a lie.
        r.check_remaining(children)?;
        if children > 0 {
            pending.push(children);
        }
    }
    Ok(r.pos)
}

/// What [`walk`] needs of a value's start: no scalar is built, so the answer fits in two
/// registers. (Going through [`Header`], whose scalars are whole [`Value`]s, made the walk spend
/// most of its time on stack copies of the result that the CPU could not forward.)
enum Extent {
    /// A value read whole: a scalar, or a bin or ext whose payload was skipped.
    Leaf,
    /// A str of this many bytes, not read yet.
    Str(u32),
    /// An array or map with this many items to follow (a map's keys and values counted apart).
    Children(u64),
}

/// The start of one value, as read from its marker and length field.
enum Header {
    Scalar(Value),
    Str(u32, LenWidth),
    Bin(u32, LenWidth),
    Ext(i8, u32, LenWidth),
    Array(u32, LenWidth),
    Map(u32, LenWidth),
}

/// A cursor over the input that never reads past its end.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The payload `buf` lies in, which bins share when given.
    owner: Option<&'a Payload>,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        match rest.get(..n) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(DecodeError::Truncated {
                offset: self.pos,
                needed: (n - rest.len()) as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array()?))
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Fails unless at least `n` bytes are left.
    fn check_remaining(&self, n: u64) -> Result<(), DecodeError> {
        let left = self.buf.len().saturating_sub(self.pos) as u64;
        if n > left {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - left,
            });
        }
        Ok(())
    }

    fn int(&mut self, n: IntN, marker: IntMarker) -> Value {
        // Remember the marker only when Python's msgpack would have picked another.
        let explicit = (marker != canonical_int_marker(n)).then_some(marker);
        Value::Int(Integer {
            n,
            marker: explicit,
        })
    }

    fn signed(&mut self, v: i64, marker: IntMarker) -> Value {
        let n = match u64::try_from(v) {
            Ok(p) => IntN::Pos(p),
            Err(_) => IntN::Neg(v),
        };
        self.int(n, marker)
    }

    /// Reads a marker with its length field, and skips what the walk does not look into: a
    /// scalar's payload, a bin's or ext's bytes. Fails where [`Reader::header`] (plus the skip)
    /// fails, with the same offsets.
    #[inline(always)]
    fn extent(&mut self) -> Result<Extent, DecodeError> {
        let offset = self.pos;
        let skip = |r: &mut Self, n: usize| r.take(n).map(|_| Extent::Leaf);
        match Marker::from_u8(self.u8()?) {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
                Ok(Extent::Leaf)
            }
            Marker::U8 | Marker::I8 => skip(self, 1),
            Marker::U16 | Marker::I16 => skip(self, 2),
            Marker::U32 | Marker::I32 | Marker::F32 => skip(self, 4),
            Marker::U64 | Marker::I64 | Marker::F64 => skip(self, 8),
            Marker::FixStr(n) => Ok(Extent::Str(n.into())),
            Marker::Str8 => Ok(Extent::Str(self.u8()?.into())),
            Marker::Str16 => Ok(Extent::Str(self.u16()?.into())),
            Marker::Str32 => Ok(Extent::Str(self.u32()?)),
            Marker::Bin8 => {
                let n = self.u8()?;
                skip(self, n.into())
            }
            Marker::Bin16 => {
                let n = self.u16()?;
                skip(self, n.into())
            }
            Marker::Bin32 => {
                let n = self.u32()?;
                skip(self, n as usize)
            }
            Marker::FixArray(n) => Ok(Extent::Children(n.into())),
            Marker::Array16 => Ok(Extent::Children(self.u16()?.into())),
            Marker::Array32 => Ok(Extent::Children(self.u32()?.into())),
            Marker::FixMap(n) => Ok(Extent::Children(u64::from(n) * 2)),
            Marker::Map16 => Ok(Extent::Children(u64::from(self.u16()?) * 2)),
            Marker::Map32 => Ok(Extent::Children(u64::from(self.u32()?) * 2)),
            Marker::FixExt1 => self.ext_skip(1),
            Marker::FixExt2 => self.ext_skip(2),
            Marker::FixExt4 => self.ext_skip(4),
            Marker::FixExt8 => self.ext_skip(8),
            Marker::FixExt16 => self.ext_skip(16),
            Marker::Ext8 => {
                let n = self.u8()?;
                self.ext_skip(n.into())
            }
            Marker::Ext16 => {
                let n = self.u16()?;
                self.ext_skip(n.into())
            }
            Marker::Ext32 => {
                let n = self.u32()?;
                self.ext_skip(n as usize)
            }
            Marker::Reserved => Err(DecodeError::ReservedMarker { offset }),
        }
    }

    /// Skips an ext's type byte and then its `n` bytes, reporting a short input where
    /// [`Reader::ext_header`] and the skip after it would.
    #[inline(always)]
    fn ext_skip(&mut self, n: usize) -> Result<Extent, DecodeError> {
        self.take(1)?;
        self.take(n).map(|_| Extent::Leaf)
    }

    /// Reads a marker and its length field or scalar payload.
    fn header(&mut self) -> Result<Header, DecodeError> {
        let offset = self.pos;
        let marker = Marker::from_u8(self.u8()?);
        let pos = |r: &mut Self, v: u64, m| r.int(IntN::Pos(v), m);
        Ok(match marker {
            Marker::FixPos(v) => Header::Scalar(pos(self, v.into(), IntMarker::FixPos)),
            Marker::FixNeg(v) => Header::Scalar(self.signed(v.into(), IntMarker::FixNeg)),
            Marker::Null => Header::Scalar(Value::Nil),
            Marker::True => Header::Scalar(Value::Bool(true)),
            Marker::False => Header::Scalar(Value::Bool(false)),
            Marker::U8 => {
                let v = self.u8()?;
                Header::Scalar(pos(self, v.into(), IntMarker::U8))
            }
            Marker::U16 => {
                let v = self.u16()?;
                Header::Scalar(pos(self, v.into(), IntMarker::U16))
            }
            Marker::U32 => {
                let v = self.u32()?;
                Header::Scalar(pos(self, v.into(), IntMarker::U32))
            }
            Marker::U64 => {
                let v = u64::from_be_bytes(self.array()?);
                Header::Scalar(pos(self, v, IntMarker::U64))
            }
            Marker::I8 => {
                let v = i8::from_be_bytes(self.array()?);
                Header::Scalar(self.signed(v.into(), IntMarker::I8))
            }
            Marker::I16 => {
                let v = i16::from_be_bytes(self.array()?);
                Header::Scalar(self.signed(v.into(), IntMarker::I16))
            }
            Marker::I32 => {
                let v = i32::from_be_bytes(self.array()?);
                Header::Scalar(self.signed(v.into(), IntMarker::I32))
            }
            Marker::I64 => {
                let v = i64::from_be_bytes(self.array()?);
                Header::Scalar(self.signed(v, IntMarker::I64))
            }
            Marker::F32 => Header::Scalar(Value::F32(f32::from_be_bytes(self.array()?))),
            Marker::F64 => Header::Scalar(Value::F64(f64::from_be_bytes(self.array()?))),
            Marker::FixStr(n) => Header::Str(n.into(), LenWidth::Fix),
            Marker::Str8 => Header::Str(self.u8()?.into(), LenWidth::W8),
            Marker::Str16 => Header::Str(self.u16()?.into(), LenWidth::W16),
            Marker::Str32 => Header::Str(self.u32()?, LenWidth::W32),
            Marker::Bin8 => Header::Bin(self.u8()?.into(), LenWidth::W8),
            Marker::Bin16 => Header::Bin(self.u16()?.into(), LenWidth::W16),
            Marker::Bin32 => Header::Bin(self.u32()?, LenWidth::W32),
            Marker::FixArray(n) => Header::Array(n.into(), LenWidth::Fix),
            Marker::Array16 => Header::Array(self.u16()?.into(), LenWidth::W16),
            Marker::Array32 => Header::Array(self.u32()?, LenWidth::W32),
            Marker::FixMap(n) => Header::Map(n.into(), LenWidth::Fix),
            Marker::Map16 => Header::Map(self.u16()?.into(), LenWidth::W16),
            Marker::Map32 => Header::Map(self.u32()?, LenWidth::W32),
            Marker::FixExt1 => self.ext_header(1, LenWidth::Fix)?,
            Marker::FixExt2 => self.ext_header(2, LenWidth::Fix)?,
            Marker::FixExt4 => self.ext_header(4, LenWidth::Fix)?,
            Marker::FixExt8 => self.ext_header(8, LenWidth::Fix)?,
            Marker::FixExt16 => self.ext_header(16, LenWidth::Fix)?,
            Marker::Ext8 => {
                let n = self.u8()?;
                self.ext_header(n.into(), LenWidth::W8)?
            }
            Marker::Ext16 => {
                let n = self.u16()?;
                self.ext_header(n.into(), LenWidth::W16)?
            }
            Marker::Ext32 => {
                let n = self.u32()?;
                self.ext_header(n, LenWidth::W32)?
            }
            Marker::Reserved => return Err(DecodeError::ReservedMarker { offset }),
        })
    }

    fn ext_header(&mut self, len: u32, width: LenWidth) -> Result<Header, DecodeError> {
        let tag = i8::from_be_bytes(self.array()?);
        Ok(Header::Ext(tag, len, width))
    }

    /// Decodes one value; `depth` is how many containers enclose it.
    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        let offset = self.pos;
        let (value, width, canonical) = match self.header()? {
            Header::Scalar(v) => return Ok(v),
            Header::Str(n, width) => {
                let bytes = self.take(n as usize)?;
                let s = std::str::from_utf8(bytes)
                    .map_err(|_| DecodeError::InvalidUtf8 { offset })?
                    .to_owned();
                (Value::Str(s), width, str_width(n))
            }
            Header::Bin(n, width) => {
                let bytes = self.take(n as usize)?;
                let shared = self.owner.and_then(|p| Bytes::shared(p, bytes));
                let bin = shared.unwrap_or_else(|| Bytes::from(bytes));
                (Value::Bin(bin), width, bin_width(n))
            }
            Header::Ext(tag, n, width) => {
                let bytes = self.take(n as usize)?;
                (Value::Ext(tag, bytes.to_vec()), width, ext_width(n))
            }
            Header::Array(n, width) => {
                let items = self.items(depth, offset, u64::from(n))?;
                (Value::Array(items), width, container_width(n))
            }
            Header::Map(n, width) => {
                let flat = self.items(depth, offset, u64::from(n) * 2)?;
                let mut entries = Vec::with_capacity(flat.len() / 2);
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    entries.push((k, v));
                }
                (Value::Map(entries), width, container_width(n))
            }
        };
        if width == canonical {
            Ok(value)
        } else {
            Ok(Value::Wide {
                width,
                value: Box::new(value),
            })
        }
    }

    /// Decodes the `count` items of a container that starts at `offset`.
    fn items(
        &mut self,
        depth: usize,
        offset: usize,
        count: u64,
    ) -> Result<Vec<Value>, DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep {
                offset,
                limit: MAX_DEPTH,
            });
        }
        // Each item takes at least one byte, so this bounds the allocation by the input's size.
        self.check_remaining(count)?;
        let mut items = Vec::with_capacity(count as usize);
        for _ in 0..count {
            items.push(self.value(depth + 1)?);
        }
        Ok(items)
    }
}

/// The smallest length field for a str of length `n` (what Python's msgpack writes).
fn str_width(n: u32) -> LenWidth {
    match n {
        0..=31 => LenWidth::Fix,
        32..=0xff => LenWidth::W8,
        0x100..=0xffff => LenWidth::W16,
        _ => LenWidth::W32,
    }
}

fn bin_width(n: u32) -> LenWidth {
    match n {
        0..=0xff => LenWidth::W8,
        0x100..=0xffff => LenWidth::W16,
        _ => LenWidth::W32,
    }
}

fn ext_width(n: u32) -> LenWidth {
    match n {
        1 | 2 | 4 | 8 | 16 => LenWidth::Fix,
        0..=0xff => LenWidth::W8,
        0x100..=0xffff => LenWidth::W16,
        _ => LenWidth::W32,
    }
}

fn container_width(n: u32) -> LenWidth {
    match n {
        0..=15 => LenWidth::Fix,
        16..=0xffff => LenWidth::W16,
        _ => LenWidth::W32,
    }
}

/// Whether a `width` length field exists for that kind of item and can hold `n`.
fn width_holds(kind: Kind, width: LenWidth, n: u32) -> bool {
    match (kind, width) {
        (Kind::Str, LenWidth::Fix) => n <= 31,
        (Kind::Container, LenWidth::Fix) => n <= 15,
        (Kind::Ext, LenWidth::Fix) => matches!(n, 1 | 2 | 4 | 8 | 16),
        (Kind::Bin, LenWidth::Fix) | (Kind::Container, LenWidth::W8) => false,
        (_, LenWidth::W8) => n <= 0xff,
        (_, LenWidth::W16) => n <= 0xffff,
        (_, LenWidth::W32) => true,
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bin,
    Ext,
    Container,
}

/// Appends MessagePack to a buffer whose writes cannot fail.
struct Writer {
    buf: ByteBuf,
}

/// Unwraps the result of a write into a `ByteBuf`, whose error type has no values.
macro_rules! infallible {
    ($e:expr) => {{
        let Ok(v) = $e;
        v
    }};
}

impl Writer {
    fn value(&mut self, root: &Value) -> Result<(), EncodeError> {
        // An explicit stack instead of recursion: nesting depth is then limited by memory only.
        let mut stack: Vec<(&Value, Option<LenWidth>)> = vec![(root, None)];
        while let Some((v, width)) = stack.pop() {
            match v {
                Value::Nil => infallible!(rmp::encode::write_nil(&mut self.buf)),
                Value::Bool(b) => infallible!(rmp::encode::write_bool(&mut self.buf, *b)),
                Value::Int(i) => self.int(i),
                Value::F32(f) => infallible!(rmp::encode::write_f32(&mut self.buf, *f)),
                Value::F64(f) => infallible!(rmp::encode::write_f64(&mut self.buf, *f)),
                Value::Str(s) => {
                    let n = len32("str", s.len())?;
                    match width.filter(|w| width_holds(Kind::Str, *w, n)) {
                        Some(w) => self.len_header(
                            w,
                            n,
                            [
                                Some(Marker::FixStr(0)),
                                Some(Marker::Str8),
                                Some(Marker::Str16),
                                Some(Marker::Str32),
                            ],
                        ),
                        None => {
                            infallible!(rmp::encode::write_str_len(&mut self.buf, n));
                        }
                    }
                    infallible!(self.buf.write_bytes(s.as_bytes()));
                }
                Value::Bin(b) => {
                    let n = len32("bin", b.len())?;
                    match width.filter(|w| width_holds(Kind::Bin, *w, n)) {
                        Some(w) => self.len_header(
                            w,
                            n,
                            [
                                None,
                                Some(Marker::Bin8),
                                Some(Marker::Bin16),
                                Some(Marker::Bin32),
                            ],
                        ),
                        None => {
                            infallible!(rmp::encode::write_bin_len(&mut self.buf, n));
                        }
                    }
                    infallible!(self.buf.write_bytes(b));
                }
                Value::Ext(tag, data) => {
                    let n = len32("ext", data.len())?;
                    match width.filter(|w| width_holds(Kind::Ext, *w, n)) {
                        Some(w) => {
                            self.len_header(
                                w,
                                n,
                                [
                                    None,
                                    Some(Marker::Ext8),
                                    Some(Marker::Ext16),
                                    Some(Marker::Ext32),
                                ],
                            );
                            infallible!(self.buf.write_bytes(&tag.to_be_bytes()));
                        }
                        None => {
                            infallible!(rmp::encode::write_ext_meta(&mut self.buf, n, *tag));
                        }
                    }
                    infallible!(self.buf.write_bytes(data));
                }
                Value::Array(items) => {
                    let n = len32("array", items.len())?;
                    match width.filter(|w| width_holds(Kind::Container, *w, n)) {
                        Some(w) => self.len_header(
                            w,
                            n,
                            [
                                Some(Marker::FixArray(0)),
                                None,
                                Some(Marker::Array16),
                                Some(Marker::Array32),
                            ],
                        ),
                        None => {
                            infallible!(rmp::encode::write_array_len(&mut self.buf, n));
                        }
                    }
                    stack.extend(items.iter().rev().map(|v| (v, None)));
                }
                Value::Map(entries) => {
                    let n = len32("map", entries.len())?;
                    match width.filter(|w| width_holds(Kind::Container, *w, n)) {
                        Some(w) => self.len_header(
                            w,
                            n,
                            [
                                Some(Marker::FixMap(0)),
                                None,
                                Some(Marker::Map16),
                                Some(Marker::Map32),
                            ],
                        ),
                        None => {
                            infallible!(rmp::encode::write_map_len(&mut self.buf, n));
                        }
                    }
                    for (k, v) in entries.iter().rev() {
                        stack.push((v, None));
                        stack.push((k, None));
                    }
                }
                // A width on a width: the innermost wrapper is the one that was decoded.
                Value::Wide { width, value } => stack.push((value, Some(*width))),
            }
        }
        Ok(())
    }

    fn int(&mut self, i: &Integer) {
        let b = &mut self.buf;
        // `Integer` keeps its number and marker consistent, so the casts below are exact.
        match (i.n, i.marker()) {
            (IntN::Pos(v), IntMarker::FixPos) => infallible!(rmp::encode::write_pfix(b, v as u8)),
            (IntN::Neg(v), IntMarker::FixNeg) => infallible!(rmp::encode::write_nfix(b, v as i8)),
            (IntN::Pos(v), IntMarker::U8) => infallible!(rmp::encode::write_u8(b, v as u8)),
            (IntN::Pos(v), IntMarker::U16) => infallible!(rmp::encode::write_u16(b, v as u16)),
            (IntN::Pos(v), IntMarker::U32) => infallible!(rmp::encode::write_u32(b, v as u32)),
            (IntN::Pos(v), IntMarker::U64) => infallible!(rmp::encode::write_u64(b, v)),
            (IntN::Pos(v), IntMarker::I8) => infallible!(rmp::encode::write_i8(b, v as i8)),
            (IntN::Neg(v), IntMarker::I8) => infallible!(rmp::encode::write_i8(b, v as i8)),
            (IntN::Pos(v), IntMarker::I16) => infallible!(rmp::encode::write_i16(b, v as i16)),
            (IntN::Neg(v), IntMarker::I16) => infallible!(rmp::encode::write_i16(b, v as i16)),
            (IntN::Pos(v), IntMarker::I32) => infallible!(rmp::encode::write_i32(b, v as i32)),
            (IntN::Neg(v), IntMarker::I32) => infallible!(rmp::encode::write_i32(b, v as i32)),
            (IntN::Pos(v), IntMarker::I64) => infallible!(rmp::encode::write_i64(b, v as i64)),
            (IntN::Neg(v), IntMarker::I64) => infallible!(rmp::encode::write_i64(b, v)),
            // Unreachable through the public API; the smallest form is the honest fallback.
            (IntN::Pos(v), _) => {
                infallible!(rmp::encode::write_uint(b, v));
            }
            (IntN::Neg(v), _) => {
                infallible!(rmp::encode::write_sint(b, v));
            }
        }
    }

    /// Writes a length header of a chosen `width`; `markers` are the kind's markers for
    /// [Fix, W8, W16, W32] (the fix marker carrying length 0). The caller has checked that the
    /// width exists for the kind and holds `n`.
    fn len_header(&mut self, width: LenWidth, n: u32, markers: [Option<Marker>; 4]) {
        let b = &mut self.buf;
        let fix_ext = |n: u32| match n {
            1 => Marker::FixExt1,
            2 => Marker::FixExt2,
            4 => Marker::FixExt4,
            8 => Marker::FixExt8,
            _ => Marker::FixExt16,
        };
        match width {
            LenWidth::Fix => match markers[0] {
                // Fix markers carry the length in their low bits.
                Some(m) => infallible!(b.write_u8(m.to_u8() | n as u8)),
                // Only ext has no fix marker with a length field: its fixext markers imply one.
                None => infallible!(b.write_u8(fix_ext(n).to_u8())),
            },
            LenWidth::W8 => {
                if let Some(m) = markers[1] {
                    infallible!(b.write_u8(m.to_u8()));
                }
                infallible!(b.write_u8(n as u8));
            }
            LenWidth::W16 => {
                if let Some(m) = markers[2] {
                    infallible!(b.write_u8(m.to_u8()));
                }
                infallible!(b.write_bytes(&(n as u16).to_be_bytes()));
            }
            LenWidth::W32 => {
                if let Some(m) = markers[3] {
                    infallible!(b.write_u8(m.to_u8()));
                }
                infallible!(b.write_bytes(&n.to_be_bytes()));
            }
        }
    }
}

fn len32(what: &'static str, len: usize) -> Result<u32, EncodeError> {
    u32::try_from(len).map_err(|_| EncodeError::TooLong { what, len })
}

mod serde_impl {
    //! Serde support, for moving a [`Value`] through typed code. Not the byte-exact path: serde's
    //! data model has no room for markers or length widths, so those are dropped.

    use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
    use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    use super::{IntN, Value};

    /// The newtype name rmp-serde uses for MessagePack ext values.
    const EXT_NAME: &str = "_ExtStruct";

    impl Serialize for Value {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            match self {
                Value::Nil => s.serialize_unit(),
                Value::Bool(b) => s.serialize_bool(*b),
                Value::Int(i) => match i.n {
                    IntN::Pos(v) => s.serialize_u64(v),
                    IntN::Neg(v) => s.serialize_i64(v),
                },
                Value::F32(f) => s.serialize_f32(*f),
                Value::F64(f) => s.serialize_f64(*f),
                Value::Str(v) => s.serialize_str(v),
                Value::Bin(b) => s.serialize_bytes(b),
                Value::Array(items) => {
                    let mut seq = s.serialize_seq(Some(items.len()))?;
                    for item in items {
                        seq.serialize_element(item)?;
                    }
                    seq.end()
                }
                Value::Map(entries) => {
                    let mut map = s.serialize_map(Some(entries.len()))?;
                    for (k, v) in entries {
                        map.serialize_entry(k, v)?;
                    }
                    map.end()
                }
                Value::Ext(tag, data) => {
                    s.serialize_newtype_struct(EXT_NAME, &(*tag, Bytes::new(data)))
                }
                Value::Wide { value, .. } => value.serialize(s),
            }
        }
    }

    impl<'de> Deserialize<'de> for Value {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(ValueVisitor)
        }
    }

    struct ValueVisitor;

    impl<'de> Visitor<'de> for ValueVisitor {
        type Value = Value;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any MessagePack value")
        }

        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Nil)
        }
        fn visit_none<E>(self) -> Result<Value, E> {
            Ok(Value::Nil)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            Value::deserialize(d)
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f32<E>(self, v: f32) -> Result<Value, E> {
            Ok(Value::F32(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(Value::F64(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::Str(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::Str(v))
        }
        fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
            Ok(Value::Bin(v.into()))
        }
        fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Value, E> {
            Ok(Value::Bin(super::share(v)))
        }
        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
            Ok(Value::Bin(v.into()))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            // Never trust a size hint for more than a small preallocation.
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
            while let Some(entry) = map.next_entry()? {
                entries.push(entry);
            }
            Ok(Value::Map(entries))
        }
        /// rmp-serde hands ext values over as a newtype holding `(tag, data)`.
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            let (tag, data): (i8, ByteBuf) = Deserialize::deserialize(d)?;
            Ok(Value::Ext(tag, data.into_vec()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(bytes: &[u8]) -> Value {
        let (v, used) = Value::decode(bytes).expect("decodes");
        assert_eq!(used, bytes.len());
        assert_eq!(value_len(bytes), Ok(bytes.len()));
        assert_eq!(v.to_bytes().expect("encodes"), bytes);
        v
    }

    #[test]
    fn non_minimal_encodings_survive() {
        // 5 as uint8, int16 and int64; "a" as str8 and str16; [1] as array16; {} as map32;
        // bin of 1 byte as bin16; ext of 1 byte as ext8.
        for bytes in [
            &[0xcc, 5][..],
            &[0xd1, 0, 5],
            &[0xd3, 0, 0, 0, 0, 0, 0, 0, 5],
            &[0xd9, 1, b'a'],
            &[0xda, 0, 1, b'a'],
            &[0xdc, 0, 1, 1],
            &[0xdf, 0, 0, 0, 0],
            &[0xc5, 0, 1, 7],
            &[0xc7, 1, 3, 9],
            &[0xd0, 0xff],
        ] {
            let v = roundtrip(bytes);
            let kept =
                matches!(v, Value::Wide { .. }) || matches!(v, Value::Int(i) if i.marker.is_some());
            assert!(kept, "{bytes:x?} decoded as plain {v:?}");
        }
    }

    #[test]
    fn canonical_values_decode_plain() {
        assert_eq!(roundtrip(&[0xcc, 200]), Value::from(200u8));
        assert_eq!(roundtrip(&[0xd0, 0x80]), Value::from(-128i64));
        assert_eq!(roundtrip(&[0xa1, b'a']), Value::from("a"));
        assert_eq!(roundtrip(&[0xd4, 3, 9]), Value::Ext(3, vec![9]));
    }

    #[test]
    fn lying_lengths_are_errors() {
        assert!(matches!(
            Value::decode(&[0xdd, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Value::decode(&[0xc6, 0xff, 0xff, 0xff, 0xff, 1]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            value_len(&[0xdf, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Truncated { .. })
        ));
        assert!(matches!(
            Value::decode(&[0xc1]),
            Err(DecodeError::ReservedMarker { offset: 0 })
        ));
        assert!(matches!(
            Value::decode(&[]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn depth_is_limited() {
        let mut deep = vec![0x91; 100_000];
        deep.push(0xc0);
        assert!(matches!(
            Value::decode(&deep),
            Err(DecodeError::TooDeep { .. })
        ));
        assert!(matches!(value_len(&deep), Err(DecodeError::TooDeep { .. })));
        let mut ok = vec![0x91; MAX_DEPTH];
        ok.push(0xc0);
        roundtrip(&ok);
        // An empty container one level too deep counts too, in both.
        let mut empty = vec![0x91; MAX_DEPTH];
        empty.push(0x90);
        assert!(matches!(
            Value::decode(&empty),
            Err(DecodeError::TooDeep { .. })
        ));
        assert!(matches!(
            value_len(&empty),
            Err(DecodeError::TooDeep { .. })
        ));
        empty.remove(0);
        roundtrip(&empty);
    }
}
