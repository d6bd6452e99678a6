//! squirrel-store: an embedded key-value store for machine-learning datasets kept as shards.
//!
//! Two layers:
//!
//! * the **engine** ([`Engine`]): a byte-level key-value store kept in one append-only segment file
//!   with a memory-mapped hash index. `get` returns a [`ValueRef`] that points straight into the
//!   mapping (no copy, no syscall); `set` appends under a writer lock while readers keep reading.
//! * the **squirrel layer** ([`SquirrelStore`], [`MessagepackDriver`]): shards of samples behind
//!   squirrel's `set` / `get` / `keys`, serialized exactly as Python squirrel's
//!   `MessagepackSerializer` does and compressed with zstd.
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
#![warn(clippy::unwrap_used)]

mod backend;
mod compaction;
mod engine;
mod error;
mod index;
mod keygen;
mod lock;
mod record;
mod recovery;
mod repair;
mod scan;
mod segment;
mod verify;

pub mod array;
pub mod driver;
pub mod loader;
pub mod lost_found;
pub mod serializer;
pub mod squirrel_dir;
pub mod store;
pub mod transfer;
pub mod value;

/// The segment file's I/O, for fault-injection tests ([`Config::wrap_backend`]). Not part of the
/// stable API.
#[doc(hidden)]
pub use backend::{Backend, FileBackend};
pub use compaction::{CompactionReport, CrashPoint};
pub use driver::{Driver, MessagepackDriver};
pub use engine::{Config, DEFAULT_MAX_VALUE_LEN, Durability, Engine, Iter, Stats, ValueRef};
pub use error::{Error, Result};
pub use keygen::{RANDOM_KEY_LEN, random_key};
pub use loader::Loader;
pub use lost_found::LostFile;
pub use record::MAX_KEY_LEN;
pub use repair::{RepairReport, repair};
pub use segment::FORMAT_VERSION;
pub use store::{SquirrelStore, Store};
pub use verify::{Damage, IndexCheck, VerifyReport, rebuild_index, verify};

/// The README's code blocks, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
