//! Shard payloads to Python objects, as squirrel-core 0.20.2 reads them.
//!
//! squirrel reads a shard with `msgpack.Unpacker(f, use_list=False,
//! object_hook=msgpack_numpy.decode)` (msgpack 1.x, so `raw=False`): str is `str`, bin is
//! `bytes`, arrays are **tuples**, maps are dicts passed through msgpack-numpy's hook, which turns
//! `{b"nd": True, ...}` into an ndarray, `{b"nd": False, ...}` into a numpy scalar and
//! `{b"complex": True, ...}` into a `complex`.
//!
//! Decoding is split in two so that the expensive part runs without the GIL:
//!
//! 1. [`parse_payload`] (any thread, no Python): the payload's bytes to a tree of [`Node`]s whose
//!    strings and binaries are ranges into the payload. msgpack-numpy's plain array and scalar
//!    maps are recognised here.
//! 2. [`Builder`] (with the GIL): the tree to Python objects. Arrays are views into the payload
//!    (no copy), kept alive by a [`ShardBuffer`] base object; any map that names msgpack-numpy's
//!    keys in a form other than the plain one goes to the Python hook
//!    `squirrel_store._hooks.decode`, a mirror of `msgpack_numpy.decode`, so odd cases behave as
//!    squirrel's do.

use std::collections::HashMap;
use std::ffi::c_void;
use std::ops::Range;

use numpy::npyffi::{NpyTypes, PY_ARRAY_API, npy_intp};
use numpy::{PyArrayDescr, PyArrayDescrMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};
use squirrel_store::store::Payload;

/// How deeply containers may nest (msgpack's own unpacker stops at a fixed depth too).
const MAX_DEPTH: usize = 512;

/// Why a payload is not valid MessagePack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the payload.
    pub offset: usize,
    /// What was wrong.
    pub what: &'static str,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid MessagePack at payload byte {}: {}",
            self.offset, self.what
        )
    }
}

/// One decoded MessagePack value; byte strings are ranges into the payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `nil`.
    Nil,
    /// `true` / `false`.
    Bool(bool),
    /// A negative integer.
    Int(i64),
    /// A non-negative integer.
    UInt(u64),
    /// A float32 or float64 (Python reads both as `float`).
    Float(f64),
    /// A str, not yet checked for UTF-8.
    Str(Range<usize>),
    /// A bin.
    Bin(Range<usize>),
    /// An array (a Python tuple).
    Array(Vec<Node>),
    /// A map that is not msgpack-numpy's.
    Map(Vec<(Node, Node)>),
    /// An extension value.
    Ext(i8, Range<usize>),
    /// msgpack-numpy's plain array map.
    NdArray {
        /// `type`: numpy's `dtype.str`.
        dtype: Range<usize>,
        /// `shape`.
        shape: Vec<u64>,
        /// `data`: C-order bytes.
        data: Range<usize>,
    },
    /// msgpack-numpy's plain scalar map.
    Scalar {
        /// `type`: numpy's `dtype.str`.
        dtype: Range<usize>,
        /// `data`.
        data: Range<usize>,
    },
    /// A map naming msgpack-numpy's keys in another form: a dict handed to the Python hook.
    Hooked(Vec<(Node, Node)>),
}

/// Splits a payload into its samples and parses each.
///
/// # Errors
///
/// [`ParseError`] naming the first offset that is not valid MessagePack.
pub fn parse_payload(buf: &[u8]) -> Result<Vec<Node>, ParseError> {
    let mut p = Parser { buf, pos: 0 };
    let mut samples = Vec::new();
    while p.pos < buf.len() {
        samples.push(p.value(0)?);
    }
    Ok(samples)
}

struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> ParseError {
        ParseError {
            offset: self.pos,
            what,
        }
    }

    fn take(&mut self, n: usize) -> Result<Range<usize>, ParseError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.err("input ends inside a value"))?;
        let r = self.pos..end;
        self.pos = end;
        Ok(r)
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        let r = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[r]);
        Ok(out)
    }

    fn len(&mut self, width: u8) -> Result<usize, ParseError> {
        Ok(match width {
            1 => usize::from(self.bytes::<1>()?[0]),
            2 => usize::from(u16::from_be_bytes(self.bytes()?)),
            _ => u32::from_be_bytes(self.bytes()?) as usize,
        })
    }

    /// Checks a container's element count against what is left (each element takes a byte at
    /// least), before anything is allocated for it.
    fn check_count(&self, n: usize, per: usize) -> Result<(), ParseError> {
        let left = self.buf.len() - self.pos;
        if n.checked_mul(per).is_none_or(|need| need > left) {
            return Err(self.err("container claims more elements than the input holds"));
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Node, ParseError> {
        let start = self.pos;
        let [m] = self.bytes::<1>()?;
        Ok(match m {
            0x00..=0x7f => Node::UInt(u64::from(m)),
            0x80..=0x8f => self.map(usize::from(m & 0x0f), depth, start)?,
            0x90..=0x9f => self.array(usize::from(m & 0x0f), depth, start)?,
            0xa0..=0xbf => Node::Str(self.take(usize::from(m & 0x1f))?),
            0xc0 => Node::Nil,
            0xc1 => {
                self.pos = start;
                return Err(self.err("reserved marker 0xc1"));
            }
            0xc2 => Node::Bool(false),
            0xc3 => Node::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (m - 0xc4))?;
                Node::Bin(self.take(n)?)
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (m - 0xc7))?;
                let [t] = self.bytes::<1>()?;
                Node::Ext(t as i8, self.take(n)?)
            }
            0xca => Node::Float(f64::from(f32::from_be_bytes(self.bytes()?))),
            0xcb => Node::Float(f64::from_be_bytes(self.bytes()?)),
            0xcc => Node::UInt(u64::from(self.bytes::<1>()?[0])),
            0xcd => Node::UInt(u64::from(u16::from_be_bytes(self.bytes()?))),
            0xce => Node::UInt(u64::from(u32::from_be_bytes(self.bytes()?))),
            0xcf => Node::UInt(u64::from_be_bytes(self.bytes()?)),
            0xd0 => int(i64::from(i8::from_be_bytes(self.bytes()?))),
            0xd1 => int(i64::from(i16::from_be_bytes(self.bytes()?))),
            0xd2 => int(i64::from(i32::from_be_bytes(self.bytes()?))),
            0xd3 => int(i64::from_be_bytes(self.bytes()?)),
            0xd4..=0xd8 => {
                let [t] = self.bytes::<1>()?;
                Node::Ext(t as i8, self.take(1 << (m - 0xd4))?)
            }
            0xd9..=0xdb => {
                let n = self.len(1 << (m - 0xd9))?;
                Node::Str(self.take(n)?)
            }
            0xdc | 0xdd => {
                let n = self.len(if m == 0xdc { 2 } else { 4 })?;
                self.array(n, depth, start)?
            }
            0xde | 0xdf => {
                let n = self.len(if m == 0xde { 2 } else { 4 })?;
                self.map(n, depth, start)?
            }
            0xe0..=0xff => Node::Int(i64::from(m as i8)),
        })
    }

    fn array(&mut self, n: usize, depth: usize, start: usize) -> Result<Node, ParseError> {
        if depth >= MAX_DEPTH {
            self.pos = start;
            return Err(self.err("containers nest too deeply"));
        }
        self.check_count(n, 1)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(Node::Array(items))
    }

    fn map(&mut self, n: usize, depth: usize, start: usize) -> Result<Node, ParseError> {
        if depth >= MAX_DEPTH {
            self.pos = start;
            return Err(self.err("containers nest too deeply"));
        }
        self.check_count(n, 2)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let v = self.value(depth + 1)?;
            entries.push((k, v));
        }
        Ok(classify(self.buf, entries))
    }
}

/// A signed marker holding a non-negative number reads as the same Python int.
fn int(v: i64) -> Node {
    match u64::try_from(v) {
        Ok(u) => Node::UInt(u),
        Err(_) => Node::Int(v),
    }
}

/// Recognises msgpack-numpy's maps. Only the exact plain forms become [`Node::NdArray`] and
/// [`Node::Scalar`]; any other map holding a bin `nd` or `complex` key is [`Node::Hooked`], so
/// the Python mirror of `msgpack_numpy.decode` decides, exactly as squirrel would.
fn classify(buf: &[u8], entries: Vec<(Node, Node)>) -> Node {
    let bin_key = |e: &(Node, Node)| match &e.0 {
        Node::Bin(r) => Some(&buf[r.clone()]),
        _ => None,
    };
    let named = |name: &[u8]| entries.iter().filter(|e| bin_key(e) == Some(name)).count();
    let (nd, cplx) = (named(b"nd"), named(b"complex"));
    if nd == 0 && cplx == 0 {
        return Node::Map(entries);
    }
    let find = |name: &[u8]| {
        entries
            .iter()
            .find(|e| bin_key(e) == Some(name))
            .map(|e| &e.1)
    };
    let unique = ["nd", "type", "kind", "shape", "data"]
        .iter()
        .all(|k| named(k.as_bytes()) <= 1);
    let all_known = entries.iter().all(|e| {
        matches!(
            bin_key(e),
            Some(b"nd" | b"type" | b"kind" | b"shape" | b"data")
        )
    });
    if nd == 1 && unique && all_known {
        let dtype = match find(b"type") {
            Some(Node::Str(r)) => Some(r.clone()),
            _ => None,
        };
        let data = match find(b"data") {
            Some(Node::Bin(r)) => Some(r.clone()),
            _ => None,
        };
        match (find(b"nd"), dtype, data) {
            (Some(Node::Bool(true)), Some(dtype), Some(data)) => {
                let kind_ok = match find(b"kind") {
                    None => true,
                    Some(Node::Bin(r)) => &buf[r.clone()] != b"V",
                    Some(_) => true,
                };
                let shape = match find(b"shape") {
                    Some(Node::Array(dims)) => dims
                        .iter()
                        .map(|d| match d {
                            Node::UInt(u) => Some(*u),
                            _ => None,
                        })
                        .collect::<Option<Vec<u64>>>(),
                    _ => None,
                };
                if let (true, Some(shape)) = (kind_ok, shape) {
                    return Node::NdArray { dtype, shape, data };
                }
            }
            (Some(Node::Bool(false)), Some(dtype), Some(data))
                if entries.len() == 3 && find(b"shape").is_none() && find(b"kind").is_none() =>
            {
                return Node::Scalar { dtype, data };
            }
            _ => {}
        }
    }
    Node::Hooked(entries)
}

/// The memory a shard's arrays view: the payload inside the store's memory map (uncompressed
/// shards) or the one buffer a compressed shard was decompressed into.
///
/// It is the `base` of every array decoded from the shard and keeps that memory alive, also
/// after the store is closed or compacted.
#[pyclass(frozen, module = "squirrel_store._native")]
pub struct ShardBuffer {
    payload: Payload,
    mapped: bool,
}

#[pymethods]
impl ShardBuffer {
    /// The payload's length in bytes.
    fn __len__(&self) -> usize {
        self.payload.len()
    }

    /// Whether the arrays point into the store's memory map (no copy was made at all).
    #[getter]
    fn mapped(&self) -> bool {
        self.mapped
    }

    fn __repr__(&self) -> String {
        format!(
            "<ShardBuffer {} bytes, mapped={}>",
            self.payload.len(),
            self.mapped()
        )
    }
}

/// Python objects the builder looks up once.
pub struct Helpers<'py> {
    hook: Bound<'py, PyAny>,
    ext_type: Bound<'py, PyAny>,
    np_dtype: Bound<'py, PyAny>,
}

impl<'py> Helpers<'py> {
    /// Imports what decoding needs.
    ///
    /// # Errors
    ///
    /// When numpy or the package's hooks module does not import.
    pub fn new(py: Python<'py>) -> PyResult<Self> {
        let hooks = py.import("squirrel_store._hooks")?;
        Ok(Helpers {
            hook: hooks.getattr("decode")?,
            ext_type: hooks.getattr("ExtType")?,
            np_dtype: py.import("numpy")?.getattr("dtype")?,
        })
    }
}

/// Builds Python objects from the [`Node`]s of one shard.
pub struct Builder<'py, 'h> {
    py: Python<'py>,
    helpers: &'h Helpers<'py>,
    base: Bound<'py, ShardBuffer>,
    dtypes: HashMap<Range<usize>, Bound<'py, PyArrayDescr>>,
}

impl<'py, 'h> Builder<'py, 'h> {
    /// A builder for the shard held in `payload`; `mapped` says whether it points into the
    /// store's memory map.
    ///
    /// # Errors
    ///
    /// When the base object cannot be allocated.
    pub fn new(
        py: Python<'py>,
        helpers: &'h Helpers<'py>,
        payload: Payload,
        mapped: bool,
    ) -> PyResult<Self> {
        Ok(Builder {
            py,
            helpers,
            base: Bound::new(py, ShardBuffer { payload, mapped })?,
            dtypes: HashMap::new(),
        })
    }

    /// The samples of the shard, each as squirrel returns it.
    ///
    /// # Errors
    ///
    /// As Python would raise them for bad data (a str that is not UTF-8, an unhashable map key,
    /// a dtype numpy does not know, ...).
    pub fn samples(&mut self, nodes: &[Node]) -> PyResult<Vec<Bound<'py, PyAny>>> {
        nodes.iter().map(|n| self.build(n)).collect()
    }

    fn buf(&self) -> &[u8] {
        &self.base.get().payload
    }

    fn build(&mut self, node: &Node) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py;
        Ok(match node {
            Node::Nil => py.None().into_bound(py),
            Node::Bool(b) => pyo3::types::PyBool::new(py, *b).to_owned().into_any(),
            Node::Int(v) => v.into_pyobject(py)?.into_any(),
            Node::UInt(v) => v.into_pyobject(py)?.into_any(),
            Node::Float(v) => v.into_pyobject(py)?.into_any(),
            Node::Str(r) => {
                let s = std::str::from_utf8(&self.buf()[r.clone()]).map_err(|_| {
                    PyValueError::new_err(format!("str at payload byte {} is not UTF-8", r.start))
                })?;
                PyString::new(py, s).into_any()
            }
            Node::Bin(r) => PyBytes::new(py, &self.buf()[r.clone()]).into_any(),
            Node::Array(items) => {
                let built = items
                    .iter()
                    .map(|n| self.build(n))
                    .collect::<PyResult<Vec<_>>>()?;
                PyTuple::new(py, built)?.into_any()
            }
            Node::Map(entries) => self.dict(entries)?.into_any(),
            Node::Hooked(entries) => {
                let d = self.dict(entries)?;
                self.helpers.hook.call1((d,))?
            }
            Node::Ext(tag, r) => {
                let data = PyBytes::new(py, &self.buf()[r.clone()]);
                self.helpers.ext_type.call1((*tag, data))?
            }
            Node::NdArray { dtype, shape, data } => match self.array(dtype, shape, data)? {
                Some(a) => a,
                None => self.hooked_again(node)?,
            },
            Node::Scalar { dtype, data } => match self.scalar(dtype, data)? {
                Some(s) => s,
                None => self.hooked_again(node)?,
            },
        })
    }

    fn dict(&mut self, entries: &[(Node, Node)]) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(self.py);
        for (k, v) in entries {
            let k = self.build(k)?;
            let v = self.build(v)?;
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// A plain-looking array or scalar that this fast path does not build (a dtype it does not
    /// take, data of the wrong size): rebuilt as its dict and handed to the hook, which gives
    /// numpy's own answer or error.
    fn hooked_again(&mut self, node: &Node) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py;
        let d = PyDict::new(py);
        let key = |k: &str| PyBytes::new(py, k.as_bytes());
        match node {
            Node::NdArray { dtype, shape, data } => {
                d.set_item(key("nd"), true)?;
                d.set_item(key("type"), self.build(&Node::Str(dtype.clone()))?)?;
                d.set_item(key("kind"), PyBytes::new(py, b""))?;
                d.set_item(key("shape"), PyTuple::new(py, shape)?)?;
                d.set_item(key("data"), self.build(&Node::Bin(data.clone()))?)?;
            }
            Node::Scalar { dtype, data } => {
                d.set_item(key("nd"), false)?;
                d.set_item(key("type"), self.build(&Node::Str(dtype.clone()))?)?;
                d.set_item(key("data"), self.build(&Node::Bin(data.clone()))?)?;
            }
            _ => unreachable!("only arrays and scalars are rebuilt"),
        }
        self.helpers.hook.call1((d,))
    }

    /// numpy's dtype for a `type` string, looked up once per distinct range of the shard.
    fn dtype(&mut self, r: &Range<usize>) -> PyResult<Bound<'py, PyArrayDescr>> {
        if let Some(d) = self.dtypes.get(r) {
            return Ok(d.clone());
        }
        let s = std::str::from_utf8(&self.buf()[r.clone()])
            .map_err(|_| PyValueError::new_err("dtype string is not UTF-8"))?;
        let d = self
            .helpers
            .np_dtype
            .call1((s,))?
            .cast_into::<PyArrayDescr>()?;
        self.dtypes.insert(r.clone(), d.clone());
        Ok(d)
    }

    /// A read-only array viewing the payload, or `None` when the hook should decide.
    fn array(
        &mut self,
        dtype: &Range<usize>,
        shape: &[u64],
        data: &Range<usize>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Ok(descr) = self.dtype(dtype) else {
            return Ok(None);
        };
        let itemsize = descr.itemsize();
        if itemsize == 0 || descr.has_object() || shape.len() > 64 {
            return Ok(None);
        }
        let mut dims = Vec::with_capacity(shape.len());
        let mut count: usize = 1;
        for &d in shape {
            let (Ok(du), Ok(di)) = (usize::try_from(d), npy_intp::try_from(d)) else {
                return Ok(None);
            };
            let Some(c) = count.checked_mul(du) else {
                return Ok(None);
            };
            count = c;
            dims.push(di);
        }
        // np.ndarray(buffer=...) accepts a buffer longer than needed, not a shorter one.
        if count.checked_mul(itemsize).is_none_or(|n| n > data.len()) {
            return Ok(None);
        }
        let py = self.py;
        let ptr = self.buf()[data.clone()]
            .as_ptr()
            .cast_mut()
            .cast::<c_void>();
        let nd = i32::try_from(dims.len()).unwrap_or(i32::MAX);
        // SAFETY: `descr` is a valid dtype (PyArray_NewFromDescr steals the reference that
        // `into_dtype_ptr` adds); `dims` holds `nd` non-negative extents; `ptr` points at
        // `data.len() >= count * itemsize` bytes of the payload, which `self.base` owns and keeps
        // at a fixed address for as long as the base lives (a memory map or a heap buffer never
        // moved), and the base is attached below before the array is handed out. Flags 0 makes
        // the array read-only, as the memory is shared (and mapped read-only).
        unsafe {
            let array_type = PY_ARRAY_API.get_type_object(py, NpyTypes::PyArray_Type);
            let arr = PY_ARRAY_API.PyArray_NewFromDescr(
                py,
                array_type,
                descr.into_dtype_ptr(),
                nd,
                dims.as_mut_ptr(),
                std::ptr::null_mut(),
                ptr,
                0,
                std::ptr::null_mut(),
            );
            let arr = Bound::from_owned_ptr_or_err(py, arr)?;
            // PyArray_SetBaseObject steals the reference `into_ptr` makes, also when it fails.
            let base = self.base.clone().into_any().into_ptr();
            if PY_ARRAY_API.PyArray_SetBaseObject(py, arr.as_ptr().cast(), base) != 0 {
                return Err(PyErr::fetch(py));
            }
            Ok(Some(arr))
        }
    }

    /// A numpy scalar (a copy of its few bytes), or `None` when the hook should decide.
    fn scalar(
        &mut self,
        dtype: &Range<usize>,
        data: &Range<usize>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Ok(descr) = self.dtype(dtype) else {
            return Ok(None);
        };
        if descr.itemsize() != data.len() || descr.itemsize() == 0 || descr.has_object() {
            return Ok(None);
        }
        let py = self.py;
        let ptr = self.buf()[data.clone()]
            .as_ptr()
            .cast_mut()
            .cast::<c_void>();
        // SAFETY: `ptr` points at exactly `itemsize` readable bytes of the payload, alive for the
        // call; PyArray_Scalar copies them (unaligned and byte-swapped data included) and does
        // not steal `descr`; the base is only referenced, and it outlives the call.
        unsafe {
            let s = PY_ARRAY_API.PyArray_Scalar(py, ptr, descr.as_dtype_ptr(), self.base.as_ptr());
            Ok(Some(Bound::from_owned_ptr_or_err(py, s)?))
        }
    }
}
