//! `squirrel_store._native`: the Rust half of the `squirrel_store` Python package.
//!
//! Only bindings live here; the public API, its docstrings and the optional integrations
//! (squirrel-core, torch) are the pure-Python package around it (`python/squirrel_store/`).
//!
//! * [`store`]: store handles and the parallel shard reader, GIL released for all I/O and
//!   decoding;
//! * [`decode`]: payload bytes to Python objects as squirrel-core 0.20.2 returns them, numpy
//!   arrays as zero-copy views;
//! * [`encode`]: Python samples to MessagePack exactly as squirrel-core writes them;
//! * [`errors`]: engine errors to the package's exception classes.
#![deny(missing_docs)]

pub mod decode;
pub mod encode;
pub mod errors;
pub mod store;

use pyo3::prelude::*;

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("RANDOM_KEY_LEN", squirrel_store::RANDOM_KEY_LEN)?;
    m.add("FORMAT_VERSION", squirrel_store::FORMAT_VERSION)?;
    m.add_class::<store::NativeStore>()?;
    m.add_class::<store::ShardIter>()?;
    m.add_class::<decode::ShardBuffer>()?;
    m.add_function(wrap_pyfunction!(random_key, m)?)?;
    Ok(())
}

/// A fresh random key: 16 characters of `[A-Z0-9]`, as squirrel makes.
#[pyfunction]
fn random_key() -> String {
    squirrel_store::random_key()
}
