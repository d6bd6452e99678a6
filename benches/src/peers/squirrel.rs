//! squirrel-store, the engine of this repository.
//!
//! Also the hooks for rows that need APIs the engine does not have yet (compaction, the squirrel
//! layer): each is a clearly marked `TODO` that returns `None`, which the report prints as "n/a".

use std::path::Path;

use anyhow::{Context, Result};
use squirrel_store::{Config, Durability, Engine};

/// A squirrel-store engine.
pub struct SquirrelPeer {
    engine: Engine,
}

impl SquirrelPeer {
    /// Opens with [`Durability::Fsync`] when `durable_writes`, else [`Durability::Buffered`].
    pub fn open(dir: &Path, durable_writes: bool) -> Result<Self> {
        let durability = if durable_writes {
            Durability::Fsync
        } else {
            Durability::Buffered
        };
        let engine = Config::new(dir).durability(durability).open()?;
        Ok(SquirrelPeer { engine })
    }
}

impl super::Peer for SquirrelPeer {
    fn load(&mut self, items: &mut dyn Iterator<Item = (&str, &[u8])>) -> Result<()> {
        for (k, v) in items {
            self.engine.set(k, v)?;
        }
        self.engine.sync()?;
        Ok(())
    }

    fn put_durable(&mut self, key: &str, value: &[u8]) -> Result<()> {
        // Opened with Durability::Fsync: `set` returns after fdatasync.
        self.engine.set(key, value)?;
        Ok(())
    }

    fn get_each(&self, keys: &[&str], sink: &mut dyn FnMut(&[u8])) -> Result<()> {
        for k in keys {
            let v = self.engine.get(k)?.with_context(|| format!("missing {k}"))?;
            sink(&v);
        }
        Ok(())
    }

    fn scan(&self, sink: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        let keys = self.engine.keys()?;
        for k in &keys {
            let v = self.engine.get(k)?.with_context(|| format!("missing {k}"))?;
            sink(k.as_bytes(), &v);
        }
        Ok(keys.len() as u64)
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.engine.close()?;
        Ok(())
    }
}

/// Builds a squirrel-store of `n` keys with `value_len`-byte values for the open-time rows, and
/// closes it (which checkpoints the index).
pub fn build_for_open(dir: &Path, n: usize, value_len: usize) -> Result<()> {
    let engine = Config::new(dir).durability(Durability::Buffered).open()?;
    let value = crate::workload::filler(value_len);
    let mut batch: Vec<(String, &[u8])> = Vec::with_capacity(10_000);
    for i in 0..n {
        batch.push((crate::workload::scale_key(i), &value));
        if batch.len() == 10_000 {
            engine.set_many(batch.drain(..))?;
        }
    }
    engine.set_many(batch.drain(..))?;
    engine.sync()?;
    engine.close()?;
    Ok(())
}

/// Opens the store built by [`build_for_open`], reads one key, and returns the records the open
/// had to replay.
pub fn open_for_scale(dir: &Path) -> Result<u64> {
    let engine = Config::new(dir).durability(Durability::Buffered).open()?;
    let key = crate::workload::scale_key(0);
    let v = engine.get(&key)?.context("missing first key")?;
    std::hint::black_box(crate::workload::touch(&v));
    Ok(engine.stats().replayed_records)
}

/// Whether [`compact`] does anything yet.
///
/// TODO(compact): set to `true` once `Engine::compact` exists.
pub const HAS_COMPACT: bool = false;

/// Compacts the store.
///
/// TODO(compact): call `engine.compact()` here once `Engine::compact` exists (and flip
/// [`HAS_COMPACT`]); until then the compaction rows print "n/a".
pub fn compact(engine: &Engine) -> Result<()> {
    let _ = engine;
    anyhow::bail!("Engine::compact is not in squirrel-store yet")
}

/// Opens a squirrel-store engine for the compaction rows.
pub fn open_engine(dir: &Path) -> Result<Engine> {
    Ok(Config::new(dir).durability(Durability::Buffered).open()?)
}

/// The Rust squirrel layer's figures for the end-to-end seed comparison.
#[derive(Debug, Clone, Copy)]
pub struct EndToEnd {
    /// Writing the shards (serialize, compress, store, one sync), MB/s of raw sample bytes.
    pub write_mbps: f64,
    /// Reading and decoding every shard in parallel, MB/s of raw sample bytes.
    pub read_decode_mbps: f64,
    /// Getting and decoding one random shard, milliseconds.
    pub get_shard_ms: f64,
}

/// Runs the end-to-end seed workload through the squirrel layer (`SquirrelStore` with the
/// MessagePack serializer).
///
/// TODO(squirrel-layer): the crate has no `SquirrelStore` / `MessagepackSerializer` / `NdArray`
/// yet. Once it has, write 200 shards of 100 samples `{image: f32 3x32x32, label, metadata}` here
/// exactly as `benches/python/squirrel_seed.py` does, time the three figures, and return them.
pub fn squirrel_layer_seed(_shards: usize, _samples: usize) -> Option<EndToEnd> {
    None
}
