//! Options for opening a store: [`Config`], a consuming builder, and [`Durability`].

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::backend::{Backend, FileBackend};
use crate::error::Result;

use super::Engine;

/// When `set` returns, relative to the bytes reaching stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `set` returns once the record is written to the file (the OS page cache). It survives the
    /// process being killed, not a power cut or kernel crash. Call [`Engine::sync`] to make
    /// everything written so far durable.
    Buffered,
    /// `set` returns only after `fdatasync` of the segment: the record survives a power cut.
    #[default]
    Fsync,
}

type BackendWrapper = Arc<dyn Fn(FileBackend) -> Box<dyn Backend> + Send + Sync>;

/// Options for opening a store, as a consuming builder.
///
/// ```
/// use squirrel_store::{Config, Durability};
/// let dir = tempfile::tempdir()?;
/// let engine = Config::new(dir.path()).durability(Durability::Buffered).open()?;
/// engine.set("k", b"v")?;
/// assert_eq!(&*engine.get("k")?.expect("present"), b"v");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct Config {
    pub(super) path: PathBuf,
    pub(super) read_only: bool,
    pub(super) create: bool,
    pub(super) durability: Durability,
    pub(super) max_value_len: u64,
    pub(super) checkpoint_records: usize,
    pub(super) checkpoint_bytes: u64,
    pub(super) auto_compact: Option<f64>,
    pub(super) verify_values: bool,
    pub(super) rebuild_index: bool,
    pub(super) backend: Option<BackendWrapper>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .field("create", &self.create)
            .field("durability", &self.durability)
            .field("max_value_len", &self.max_value_len)
            .field("checkpoint_records", &self.checkpoint_records)
            .field("checkpoint_bytes", &self.checkpoint_bytes)
            .finish_non_exhaustive()
    }
}

/// Default limit on one value: 1 TiB.
pub const DEFAULT_MAX_VALUE_LEN: u64 = 1 << 40;

impl Config {
    /// The backend for a segment file, wrapped as configured.
    pub(crate) fn backend_for(&self, file: std::fs::File) -> Box<dyn Backend> {
        let fb = FileBackend::new(file);
        match &self.backend {
            Some(wrap) => wrap(fb),
            None => Box::new(fb),
        }
    }

    /// Options for the store in directory `path`: read-write, created if missing,
    /// [`Durability::Fsync`], values up to [`DEFAULT_MAX_VALUE_LEN`](crate::DEFAULT_MAX_VALUE_LEN).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Config {
            path: path.as_ref().to_owned(),
            read_only: false,
            create: true,
            durability: Durability::default(),
            max_value_len: DEFAULT_MAX_VALUE_LEN,
            checkpoint_records: 131_072,
            checkpoint_bytes: 256 << 20,
            auto_compact: None,
            verify_values: true,
            rebuild_index: false,
            backend: None,
        }
    }

    /// Ignores the index file and builds a new one from a full scan of the segment, renamed into
    /// place only once it is complete (what `rebuild_index` does).
    pub(crate) fn force_rebuild_index(mut self) -> Self {
        self.rebuild_index = true;
        self
    }

    /// Opens without the writer lock and refuses every write. Several read-only handles, in any
    /// processes, can share a store with one writer; they see its new records after
    /// [`Engine::refresh`].
    pub fn read_only(mut self, yes: bool) -> Self {
        self.read_only = yes;
        self
    }

    /// Whether a missing store is created (default true; ignored when read-only).
    pub fn create(mut self, yes: bool) -> Self {
        self.create = yes;
        self
    }

    /// When `set` returns relative to durability; see [`Durability`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Largest value accepted by `set`, in bytes.
    pub fn max_value_len(mut self, bytes: u64) -> Self {
        self.max_value_len = bytes;
        self
    }

    /// Checkpoint the index once this many records or bytes were appended since the last one
    /// (default 131,072 records or 256 MiB). Smaller bounds make opening after a crash faster
    /// (less tail to replay) and hold less in memory (about 100 bytes per record since the last
    /// checkpoint), and cost more index writes.
    pub fn checkpoint_every(mut self, records: usize, bytes: u64) -> Self {
        self.checkpoint_records = records.max(1);
        self.checkpoint_bytes = bytes.max(1);
        self
    }

    /// Whether `get` checks the CRC-32 over the whole value before returning it (default true).
    ///
    /// A record of 64 KiB or more is checked the first time this handle serves it through a
    /// mapping of the segment; the mapping remembers it (one bit per 64 KiB of file), so later
    /// gets of it skip the pass over the value. Shorter records are checked on every get. What
    /// this does not catch: bytes of a long record that change after its first check without
    /// anyone writing them (a page evicted and read back from a failing disk, memory errors);
    /// `verify`, compaction and a new handle check again.
    ///
    /// Turning it off skips the pass over the value on the first get too; the header, key and
    /// index entry are still checked, but a value damaged on disk is then served as it is.
    /// `verify` and compaction always check.
    pub fn verify_values(mut self, yes: bool) -> Self {
        self.verify_values = yes;
        self
    }

    /// Compact in a background thread once dead bytes exceed this fraction of all record bytes
    /// (and at least 64 MiB). Off (`None`) by default: compaction is an operator's decision.
    pub fn auto_compact(mut self, dead_ratio: Option<f64>) -> Self {
        self.auto_compact = dead_ratio;
        self
    }

    /// Wraps the segment file's I/O backend, e.g. to inject faults in tests.
    ///
    /// A test hook, not part of the stable API: hidden from the docs and free to change.
    #[doc(hidden)]
    pub fn wrap_backend(
        mut self,
        wrap: impl Fn(FileBackend) -> Box<dyn Backend> + Send + Sync + 'static,
    ) -> Self {
        self.backend = Some(Arc::new(wrap));
        self
    }

    /// Opens the store.
    ///
    /// # Errors
    /// [`Error::Locked`](crate::Error::Locked) if another writer holds the store, [`Error::NotFound`](crate::Error::NotFound) if there is no
    /// store and it may not be created, [`Error::BadMagic`](crate::Error::BadMagic) / [`Error::UnsupportedVersion`](crate::Error::UnsupportedVersion) /
    /// [`Error::Corruption`](crate::Error::Corruption) for files this build cannot trust, [`Error::Io`](crate::Error::Io) otherwise.
    pub fn open(self) -> Result<Engine> {
        Engine::open_with(self)
    }
}
