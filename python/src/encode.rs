//! Python samples to MessagePack, byte for byte as squirrel-core 0.20.2 writes them:
//! `msgpack.packb(sample, use_bin_type=True, default=msgpack_numpy.encode)`.
//!
//! The checks run in msgpack's order (`None`, `bool`, `int`, `float` (so `numpy.float64`, a
//! `float` subclass, is a plain float64), `bytes`/`bytearray`, `str`, `dict`, `ExtType`,
//! `list`/`tuple`, `memoryview`), then msgpack-numpy's `default`: an ndarray becomes the map
//! `{nd: True, type: dtype.str, kind: b"", shape, data}`, a numpy bool or number scalar
//! `{nd: False, type, data}`, a `complex` `{complex: True, data: repr(z)}`; anything else is a
//! `TypeError`, as msgpack raises. Integers take the smallest marker, unsigned when not negative.

use numpy::{PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyComplex, PyDict, PyFloat, PyInt, PyList, PyMemoryView,
    PyString, PyTuple, PyType,
};

/// msgpack's default nesting limit for `packb`.
const NEST_LIMIT: usize = 512;

/// Packs samples; holds the Python types it checks against.
pub struct Encoder<'py> {
    scalar_types: Bound<'py, PyTuple>,
    ext_type: Bound<'py, PyType>,
}

impl<'py> Encoder<'py> {
    /// Looks up numpy's scalar types and the package's `ExtType`.
    ///
    /// # Errors
    ///
    /// When numpy or the package's hooks module does not import.
    pub fn new(py: Python<'py>) -> PyResult<Self> {
        let np = py.import("numpy")?;
        let scalar_types = PyTuple::new(py, [np.getattr("bool_")?, np.getattr("number")?])?;
        let ext_type = py
            .import("squirrel_store._hooks")?
            .getattr("ExtType")?
            .cast_into::<PyType>()?;
        Ok(Encoder {
            scalar_types,
            ext_type,
        })
    }

    /// Appends the encoding of one sample to `out`.
    ///
    /// # Errors
    ///
    /// `TypeError` for a value msgpack + msgpack-numpy cannot serialize (object arrays
    /// included, which msgpack-numpy would pickle), `OverflowError` for an integer outside
    /// `-2**63 .. 2**64`, `ValueError` for nesting deeper than 512 or an item longer than
    /// MessagePack allows, `UnicodeEncodeError` for a str with lone surrogates.
    pub fn pack(&self, obj: &Bound<'py, PyAny>, out: &mut Vec<u8>) -> PyResult<()> {
        self.value(obj, out, NEST_LIMIT)
    }

    fn value(&self, obj: &Bound<'py, PyAny>, out: &mut Vec<u8>, limit: usize) -> PyResult<()> {
        if limit == 0 {
            return Err(PyValueError::new_err("recursion limit exceeded"));
        }
        if obj.is_none() {
            out.push(0xc0);
        } else if let Ok(b) = obj.cast::<PyBool>() {
            out.push(if b.is_true() { 0xc3 } else { 0xc2 });
        } else if obj.is_instance_of::<PyInt>() {
            if let Ok(v) = obj.extract::<u64>() {
                write_uint(out, v);
            } else if let Ok(v) = obj.extract::<i64>() {
                write_int(out, v);
            } else {
                return Err(PyOverflowError::new_err("Integer value out of range"));
            }
        } else if let Ok(f) = obj.cast::<PyFloat>() {
            out.push(0xcb);
            out.extend_from_slice(&f.value().to_be_bytes());
        } else if let Ok(b) = obj.cast::<PyBytes>() {
            write_bin(out, b.as_bytes())?;
        } else if let Ok(b) = obj.cast::<PyByteArray>() {
            write_bin(out, &b.to_vec())?;
        } else if let Ok(s) = obj.cast::<PyString>() {
            write_str(out, &s.to_cow()?)?;
        } else if let Ok(d) = obj.cast::<PyDict>() {
            write_len(out, d.len(), [0x80, 0xde, 0xdf], "dict is too large")?;
            for (k, v) in d.iter() {
                self.value(&k, out, limit - 1)?;
                self.value(&v, out, limit - 1)?;
            }
        } else if obj.is_instance(&self.ext_type)? {
            let (code, data): (i8, Vec<u8>) = obj.extract()?;
            write_ext(out, code, &data)?;
        } else if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
            let n = obj.len()?;
            write_len(out, n, [0x90, 0xdc, 0xdd], "list is too large")?;
            for item in obj.try_iter()? {
                self.value(&item?, out, limit - 1)?;
            }
        } else if obj.is_instance_of::<PyMemoryView>() {
            let bytes = obj.call_method0("tobytes")?;
            write_bin(out, bytes.cast::<PyBytes>()?.as_bytes())?;
        } else {
            self.default(obj, out, limit)?;
        }
        Ok(())
    }

    /// msgpack-numpy's `encode`, the `default` hook.
    fn default(&self, obj: &Bound<'py, PyAny>, out: &mut Vec<u8>, limit: usize) -> PyResult<()> {
        if let Ok(arr) = obj.cast::<PyUntypedArray>() {
            return self.ndarray(arr, out, limit);
        }
        if obj.is_instance(&self.scalar_types)? {
            out.push(0x83);
            write_bin(out, b"nd")?;
            out.push(0xc2);
            write_bin(out, b"type")?;
            let dtype = obj.getattr("dtype")?;
            write_str(out, &dtype.getattr("str")?.cast::<PyString>()?.to_cow()?)?;
            write_bin(out, b"data")?;
            let data = obj.call_method0("tobytes")?;
            return write_bin(out, data.cast::<PyBytes>()?.as_bytes());
        }
        if obj.is_instance_of::<PyComplex>() {
            out.push(0x82);
            write_bin(out, b"complex")?;
            out.push(0xc3);
            write_bin(out, b"data")?;
            let repr = obj.repr()?;
            return write_str(out, &repr.to_cow()?);
        }
        let name = obj.get_type().name()?;
        Err(PyTypeError::new_err(format!(
            "can not serialize {:?} object",
            name.to_cow()?
        )))
    }

    fn ndarray(
        &self,
        arr: &Bound<'py, PyUntypedArray>,
        out: &mut Vec<u8>,
        limit: usize,
    ) -> PyResult<()> {
        let dtype = arr.dtype();
        let kind = dtype.getattr("kind")?;
        let kind = kind.cast::<PyString>()?.to_cow()?;
        if kind.as_ref() == "O" {
            return Err(PyTypeError::new_err(
                "can not serialize an object array (msgpack-numpy would pickle it)",
            ));
        }
        out.push(0x85);
        write_bin(out, b"nd")?;
        out.push(0xc3);
        write_bin(out, b"type")?;
        if kind.as_ref() == "V" {
            // Structured dtypes are written as their interface description, as msgpack-numpy does.
            self.value(&dtype.getattr("descr")?, out, limit - 1)?;
        } else {
            write_str(out, &dtype.getattr("str")?.cast::<PyString>()?.to_cow()?)?;
        }
        write_bin(out, b"kind")?;
        write_bin(out, if kind.as_ref() == "V" { b"V" } else { b"" })?;
        write_bin(out, b"shape")?;
        let shape = arr.shape();
        write_len(out, shape.len(), [0x90, 0xdc, 0xdd], "shape is too long")?;
        for &d in shape {
            write_uint(out, d as u64);
        }
        write_bin(out, b"data")?;
        let nbytes = arr.len() * numpy::PyArrayDescrMethods::itemsize(&dtype);
        if nbytes == 0 {
            return write_bin(out, b"");
        }
        if arr.is_c_contiguous() {
            // SAFETY: a C-contiguous array's data pointer addresses `len * itemsize` initialised
            // bytes, which stay put while we hold the GIL and a reference to the array.
            let bytes = unsafe {
                let data = (*arr.as_array_ptr()).data.cast::<u8>().cast_const();
                std::slice::from_raw_parts(data, nbytes)
            };
            write_bin(out, bytes)
        } else {
            let bytes = arr.call_method0("tobytes")?;
            write_bin(out, bytes.cast::<PyBytes>()?.as_bytes())
        }
    }
}

fn write_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if let Ok(b) = u8::try_from(v) {
        out.extend_from_slice(&[0xcc, b]);
    } else if let Ok(h) = u16::try_from(v) {
        out.push(0xcd);
        out.extend_from_slice(&h.to_be_bytes());
    } else if let Ok(w) = u32::try_from(v) {
        out.push(0xce);
        out.extend_from_slice(&w.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// A negative integer (non-negative ones go through [`write_uint`]).
fn write_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        write_uint(out, v as u64);
    } else if v >= -32 {
        out.push(v as i8 as u8);
    } else if let Ok(b) = i8::try_from(v) {
        out.extend_from_slice(&[0xd0, b as u8]);
    } else if let Ok(h) = i16::try_from(v) {
        out.push(0xd1);
        out.extend_from_slice(&h.to_be_bytes());
    } else if let Ok(w) = i32::try_from(v) {
        out.push(0xd2);
        out.extend_from_slice(&w.to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn too_long(what: &str) -> PyErr {
    PyValueError::new_err(what.to_owned())
}

/// An array or map header: `markers` are the fix, 16-bit and 32-bit forms.
fn write_len(out: &mut Vec<u8>, n: usize, markers: [u8; 3], what: &str) -> PyResult<()> {
    if n < 16 {
        out.push(markers[0] | n as u8);
    } else if let Ok(h) = u16::try_from(n) {
        out.push(markers[1]);
        out.extend_from_slice(&h.to_be_bytes());
    } else if let Ok(w) = u32::try_from(n) {
        out.push(markers[2]);
        out.extend_from_slice(&w.to_be_bytes());
    } else {
        return Err(too_long(what));
    }
    Ok(())
}

fn write_str(out: &mut Vec<u8>, s: &str) -> PyResult<()> {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if let Ok(b) = u8::try_from(n) {
        out.extend_from_slice(&[0xd9, b]);
    } else if let Ok(h) = u16::try_from(n) {
        out.push(0xda);
        out.extend_from_slice(&h.to_be_bytes());
    } else if let Ok(w) = u32::try_from(n) {
        out.push(0xdb);
        out.extend_from_slice(&w.to_be_bytes());
    } else {
        return Err(too_long("unicode string is too large"));
    }
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn write_bin(out: &mut Vec<u8>, b: &[u8]) -> PyResult<()> {
    let n = b.len();
    if let Ok(s) = u8::try_from(n) {
        out.extend_from_slice(&[0xc4, s]);
    } else if let Ok(h) = u16::try_from(n) {
        out.push(0xc5);
        out.extend_from_slice(&h.to_be_bytes());
    } else if let Ok(w) = u32::try_from(n) {
        out.push(0xc6);
        out.extend_from_slice(&w.to_be_bytes());
    } else {
        return Err(too_long("bytes object is too large"));
    }
    out.extend_from_slice(b);
    Ok(())
}

fn write_ext(out: &mut Vec<u8>, code: i8, data: &[u8]) -> PyResult<()> {
    let fix = match data.len() {
        1 => Some(0xd4),
        2 => Some(0xd5),
        4 => Some(0xd6),
        8 => Some(0xd7),
        16 => Some(0xd8),
        _ => None,
    };
    if let Some(m) = fix {
        out.push(m);
    } else if let Ok(s) = u8::try_from(data.len()) {
        out.extend_from_slice(&[0xc7, s]);
    } else if let Ok(h) = u16::try_from(data.len()) {
        out.push(0xc8);
        out.extend_from_slice(&h.to_be_bytes());
    } else if let Ok(w) = u32::try_from(data.len()) {
        out.push(0xc9);
        out.extend_from_slice(&w.to_be_bytes());
    } else {
        return Err(too_long("EXT data is too large"));
    }
    out.push(code as u8);
    out.extend_from_slice(data);
    Ok(())
}
