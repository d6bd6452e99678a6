//! The engines under test, each behind the same small [`Peer`] trait.
//!
//! Every peer stores string keys and byte values in one directory that the harness owns. The
//! trait is deliberately narrow: what the benchmark measures and nothing else.

use std::path::Path;

use anyhow::Result;

mod files;
mod fjall_peer;
mod lmdb;
mod lmdb_env;
mod redb_peer;
mod sled_peer;
pub mod squirrel;

/// One open store of one engine.
pub trait Peer: Send + Sync {
    /// Writes every item with its own put (inside one transaction for the transactional engines),
    /// then makes all of them durable with a single commit / sync at the end.
    fn load(&mut self, items: &mut dyn Iterator<Item = (&str, &[u8])>) -> Result<()>;

    /// Writes one item and makes it durable before returning (the engine's own durable commit).
    fn put_durable(&mut self, key: &str, value: &[u8]) -> Result<()>;

    /// Looks up every key in `keys`, in order, inside one read session (one read transaction for
    /// the engines that have them) and hands each value to `sink`. A missing key is an error.
    fn get_each(&self, keys: &[&str], sink: &mut dyn FnMut(&[u8])) -> Result<()>;

    /// Visits every `(key, value)` pair of the store and returns how many there were.
    fn scan(&self, sink: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64>;

    /// Closes the store, reporting errors that dropping it would swallow.
    fn close(self: Box<Self>) -> Result<()>;
}

/// The engines the benchmark knows, in the order of the table's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// This repository's engine.
    Squirrel,
    /// LMDB through `heed`.
    Lmdb,
    /// `redb`.
    Redb,
    /// `fjall` (LSM tree).
    Fjall,
    /// `sled`.
    Sled,
    /// One file per key in a directory, as Python squirrel lays out shards.
    Files,
}

impl Kind {
    /// Every engine, squirrel-store first.
    pub const ALL: [Kind; 6] = [
        Kind::Squirrel,
        Kind::Lmdb,
        Kind::Redb,
        Kind::Fjall,
        Kind::Sled,
        Kind::Files,
    ];

    /// The column name in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Squirrel => "squirrel-store",
            Kind::Lmdb => "LMDB (heed)",
            Kind::Redb => "redb",
            Kind::Fjall => "fjall",
            Kind::Sled => "sled",
            Kind::Files => "file per key",
        }
    }

    /// The short name accepted by `--engines`.
    pub fn id(self) -> &'static str {
        match self {
            Kind::Squirrel => "squirrel",
            Kind::Lmdb => "lmdb",
            Kind::Redb => "redb",
            Kind::Fjall => "fjall",
            Kind::Sled => "sled",
            Kind::Files => "files",
        }
    }

    /// Opens (creating if needed) a store of this engine in the existing directory `dir`.
    ///
    /// `durable_writes` selects the configuration for [`Peer::put_durable`]; engines whose
    /// durability is per call ignore it.
    pub fn open(self, dir: &Path, durable_writes: bool) -> Result<Box<dyn Peer>> {
        Ok(match self {
            Kind::Squirrel => Box::new(squirrel::SquirrelPeer::open(dir, durable_writes)?),
            Kind::Lmdb => Box::new(lmdb::LmdbPeer::open(dir)?),
            Kind::Redb => Box::new(redb_peer::RedbPeer::open(dir)?),
            Kind::Fjall => Box::new(fjall_peer::FjallPeer::open(dir)?),
            Kind::Sled => Box::new(sled_peer::SledPeer::open(dir)?),
            Kind::Files => Box::new(files::FilesPeer::open(dir)?),
        })
    }
}

pub use lmdb::build_for_open as lmdb_build_for_open;
pub use lmdb::bulk as lmdb_bulk;
