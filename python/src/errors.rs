//! The engine's errors as the package's Python exceptions (defined in `squirrel_store._errors`,
//! so that they can also derive from the matching builtins: a missing key is a `KeyError`).

use pyo3::prelude::*;
use squirrel_store::Error;
use squirrel_store::remote::RemoteError;

/// Raises the package exception `class` with `message`.
pub fn raise(py: Python<'_>, class: &str, message: String) -> PyErr {
    let made = py
        .import("squirrel_store._errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.call1((message.clone(),)));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        // The package is broken if its errors module does not import; still say what failed.
        Err(e) => pyo3::exceptions::PyRuntimeError::new_err(format!("{message} ({e})")),
    }
}

/// The Python exception for an engine error.
pub fn to_py(py: Python<'_>, err: &Error) -> PyErr {
    let class = match err {
        Error::KeyNotFound { .. } => "KeyNotFoundError",
        Error::InvalidKey { .. } => "InvalidKeyError",
        Error::Locked { .. } => "LockedError",
        Error::ReadOnly { .. } => "ReadOnlyError",
        Error::NotFound { .. } => "StoreNotFoundError",
        Error::Corruption { .. } | Error::BadMagic { .. } | Error::Shard { .. } => {
            "CorruptionError"
        }
        Error::UnsupportedVersion { .. } => "UnsupportedVersionError",
        Error::ValueTooLarge { .. } => "ValueTooLargeError",
        Error::Io { .. } | Error::PreviousIo { .. } | Error::NoSpace { .. } => "StoreIOError",
        Error::Remote(r) => match **r {
            RemoteError::NotFound { .. } | RemoteError::NotPublished { .. } => "StoreNotFoundError",
            _ => "StoreIOError",
        },
        _ => "Error",
    };
    raise(py, class, err.to_string())
}

/// Converts engine results inside a `Python::attach` scope.
pub trait IntoPy<T> {
    /// The result with its error as the matching Python exception.
    ///
    /// # Errors
    ///
    /// The engine's error, converted.
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, Error> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py(py, &e))
    }
}
