//! squirrel-store: an embedded key-value store for machine-learning datasets kept as shards.
//!
//! Three layers, one folder each under `src/`:
//!
//! * `engine/`, the **engine** ([`Engine`]): a byte-level key-value store kept in one append-only
//!   segment file with a memory-mapped hash index. `get` returns a [`ValueRef`] that points
//!   straight into the mapping (no copy, no syscall); `set` appends under a writer lock while
//!   readers keep reading. Recovery, compaction, [`verify`] and [`repair`] live there too.
//! * `shard/`, the **squirrel layer** ([`SquirrelStore`], [`MessagepackDriver`], [`Loader`]):
//!   shards of samples behind squirrel's `set` / `get` / `keys`, serialized exactly as Python
//!   squirrel's `MessagepackSerializer` does, compressed with zstd where it pays.
//! * `interop/`, **moving data to and from Python squirrel** ([`squirrel_dir`], [`transfer`]):
//!   reading and writing its one-file-per-shard directories, importing and exporting stores.
//!
//! The on-disk format is specified byte by byte in `format-spec/` of the repository.
//!
//! ```
//! use squirrel_store::{Config, Durability, Engine};
//!
//! let dir = tempfile::tempdir()?;
//! let db = Config::new(dir.path()).durability(Durability::Fsync).open()?;
//! db.set("shard_0", b"bytes")?; // acknowledged once fdatasync returned
//! assert_eq!(&*db.get("shard_0")?.expect("present"), b"bytes"); // served from the mmap, checked
//! db.close()?;
//!
//! let ro = Engine::open_read_only(dir.path())?;
//! assert_eq!(ro.keys()?, ["shard_0"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Damage never costs more than the damaged record: see [`verify`], [`repair`] and
//! [`lost_found`].
#![deny(missing_docs)]
#![warn(clippy::unwrap_used, clippy::missing_errors_doc)]

mod engine;
mod error;
mod interop;
#[cfg(feature = "remote")]
pub mod remote;
mod shard;

// The public paths of the shard and interop layers, as users import them.
pub use interop::{squirrel_dir, transfer};
pub use shard::{array, driver, loader, serializer, store, value};

pub use engine::lost_found;

pub use driver::{Driver, MessagepackDriver};
/// The segment file's I/O, for fault-injection tests ([`Config::wrap_backend`]). Not part of the
/// stable API.
#[doc(hidden)]
pub use engine::backend::{Backend, FileBackend};
pub use engine::checkpoint::CheckpointCrash;
pub use engine::compaction::{CompactionReport, CrashPoint};
pub use engine::record::MAX_KEY_LEN;
pub use engine::repair::{RepairReport, repair};
pub use engine::segment::FORMAT_VERSION;
pub use engine::verify::{Damage, IndexCheck, VerifyReport, rebuild_index, verify};
pub use engine::{Config, DEFAULT_MAX_VALUE_LEN, Durability, Engine, Iter, Stats, ValueRef};
pub use error::{Error, Result};
pub use loader::Loader;
pub use lost_found::LostFile;
pub use shard::keygen::{RANDOM_KEY_LEN, random_key};
pub use store::{SquirrelStore, Store};

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
