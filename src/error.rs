//! Errors: one umbrella [`Error`] whose variants say what went wrong and where.

use std::io;
use std::path::PathBuf;

/// The result type of every fallible operation in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, with the path, key or offset it concerns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory the call was about.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Another writer (in this process or another) holds the store's lock file.
    #[error("store is locked by another writer: {path}")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The store directory holds no segment and the handle may not create one.
    #[error("no store at {path}")]
    NotFound {
        /// The store directory.
        path: PathBuf,
    },
    /// A store file (segment, index or lock) is a FIFO, device, directory or other non-regular
    /// file: refused rather than read, since reading a FIFO would block forever.
    #[error("{path} is not a regular file")]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// A file does not start with the expected magic number: not a squirrel-store file.
    #[error("{path} is not a squirrel-store {kind} file (bad magic number)")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// Which kind of file was expected ("segment" or "index").
        kind: &'static str,
    },
    /// A file was written by a format version this build does not read.
    #[error("{path} has format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A record or header failed its checksum or is malformed.
    #[error("corruption in {path} at offset {offset}{}: {what}", key.as_ref().map(|k| format!(" (key {k:?})")).unwrap_or_default())]
    Corruption {
        /// The file.
        path: PathBuf,
        /// Byte offset of the damaged record or structure.
        offset: u64,
        /// The key of the damaged record, when it is known.
        key: Option<String>,
        /// What check failed.
        what: String,
    },
    /// A key that was asked for explicitly (e.g. in a loader's key list) has no value.
    #[error("no value for key {key:?}")]
    KeyNotFound {
        /// The key.
        key: String,
    },
    /// A key is empty, too long, or otherwise not accepted.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key (lossily decoded when it is not UTF-8).
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A value is larger than the configured limit.
    #[error("value for key {key:?} is {len} bytes; the limit is {limit}")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// The value's length.
        len: u64,
        /// The configured limit.
        limit: u64,
    },
    /// The handle is read-only and the call would write.
    #[error("store at {path} is open read-only")]
    ReadOnly {
        /// The store directory.
        path: PathBuf,
    },
    /// A previous write or fsync failed: the state on disk is unknown, so the handle refuses further
    /// writes. Reopen the store to recover from what is on disk.
    #[error("a previous write or fsync failed on {path}; reopen the store")]
    PreviousIo {
        /// The store directory.
        path: PathBuf,
    },
    /// Not enough free space for an operation that needs it (checked before starting).
    #[error("not enough free space in {path}: {needed} bytes needed, {available} available")]
    NoSpace {
        /// The directory.
        path: PathBuf,
        /// Bytes the operation needs.
        needed: u64,
        /// Bytes available to this user.
        available: u64,
    },
    /// A shard's bytes could not be decoded.
    #[error("shard {key:?}: {source}")]
    Shard {
        /// The key of the shard.
        key: String,
        /// What was wrong with it.
        #[source]
        source: crate::shard::serializer::ShardError,
    },
    /// A request to object storage failed (feature `remote`): see [`crate::remote::RemoteError`],
    /// whose variants name the URL.
    #[cfg(feature = "remote")]
    #[error("{0}")]
    Remote(Box<crate::remote::RemoteError>),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corruption(
        path: impl Into<PathBuf>,
        offset: u64,
        key: Option<&str>,
        what: impl Into<String>,
    ) -> Self {
        Error::Corruption {
            path: path.into(),
            offset,
            key: key.map(str::to_owned),
            what: what.into(),
        }
    }
}

/// Attaches a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
