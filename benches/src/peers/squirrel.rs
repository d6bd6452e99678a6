//! squirrel-store, the engine of this repository.
//!
//! Also the Rust side of the end-to-end seed comparison, through the squirrel layer
//! (`SquirrelStore` + `MessagepackSerializer` + `NdArray`).

use std::path::Path;

use std::time::Instant;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use squirrel_store::array::NdArray;
use squirrel_store::serializer::MessagepackSerializer;
use squirrel_store::{Config, Durability, Engine, SquirrelStore, Store};

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
            let v = self
                .engine
                .get(k)?
                .with_context(|| format!("missing {k}"))?;
            sink(&v);
        }
        Ok(())
    }

    fn scan(&self, sink: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        // The engine's iterator walks the segment in file order (each value CRC-checked).
        let mut n = 0u64;
        for item in self.engine.iter()? {
            let (k, v) = item?;
            sink(k.as_bytes(), &v);
            n += 1;
        }
        Ok(n)
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

/// Bulk-loads `n` keys with `value_len`-byte values into a fresh buffered store, then syncs and
/// closes it.
pub fn bulk(dir: &Path, n: usize, value_len: usize, mode: crate::measure::BulkMode) -> Result<()> {
    let engine = Config::new(dir).durability(Durability::Buffered).open()?;
    let value = crate::workload::filler(value_len);
    match mode {
        crate::measure::BulkMode::Batched => {
            let mut batch: Vec<(String, &[u8])> = Vec::with_capacity(crate::measure::BULK_BATCH);
            for i in 0..n {
                batch.push((crate::workload::scale_key(i), &value));
                if batch.len() == crate::measure::BULK_BATCH {
                    engine.set_many(batch.drain(..))?;
                }
            }
            engine.set_many(batch.drain(..))?;
        }
        crate::measure::BulkMode::OneByOne => {
            for i in 0..n {
                engine.set(&crate::workload::scale_key(i), &value)?;
            }
        }
    }
    engine.sync()?;
    engine.close()?;
    Ok(())
}

/// Opens the store built by [`build_for_open`], reads one key, and returns the records the open
/// had to replay and the preallocated (zero) bytes past the last record.
pub fn open_for_scale(dir: &Path) -> Result<(u64, u64)> {
    let engine = Config::new(dir).durability(Durability::Buffered).open()?;
    let key = crate::workload::scale_key(0);
    let v = engine.get(&key)?.context("missing first key")?;
    std::hint::black_box(crate::workload::touch(&v));
    let stats = engine.stats();
    Ok((
        stats.replayed_records,
        stats.segment_file_len - stats.segment_len,
    ))
}

/// Compacts the store (`Engine::compact`), returning the bytes it gave back.
pub fn compact(engine: &Engine) -> Result<u64> {
    Ok(engine.compact()?.reclaimed())
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
    /// Bytes allocated on disk by the store.
    pub disk_bytes: u64,
}

/// One seed sample as Python squirrel stores it: `{image: float32 3x32x32, label, metadata}`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Sample {
    image: NdArray,
    label: i64,
    metadata: Metadata,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Metadata {
    id: String,
    source: String,
    split: String,
}

/// Runs the end-to-end seed workload through the squirrel layer: `shards` shards of `samples`
/// samples written with [`SquirrelStore`] and the default `MessagepackSerializer` (MessagePack +
/// zstd level 3) on a [`Durability::Buffered`] engine and one sync, then every shard read and
/// decoded to typed samples on every core, then `gets` random single-shard gets. Mirrors
/// `benches/python/squirrel_seed.py`.
pub fn squirrel_layer_seed(
    root: &Path,
    shards: usize,
    samples: usize,
    gets: usize,
    threads: usize,
) -> Result<EndToEnd> {
    let mut rng = StdRng::seed_from_u64(crate::workload::SEED);
    let data: Vec<Vec<Sample>> = (0..shards)
        .map(|s| {
            (0..samples)
                .map(|i| {
                    let pixels: Vec<f32> = (0..3 * 32 * 32).map(|_| rng.random()).collect();
                    Ok(Sample {
                        image: NdArray::from_slice([3, 32, 32], &pixels)?,
                        label: rng.random_range(0..10),
                        metadata: Metadata {
                            id: format!("shard{s:04}-sample{i:03}"),
                            source: "synthetic".into(),
                            split: "train".into(),
                        },
                    })
                })
                .collect::<Result<_>>()
        })
        .collect::<Result<_>>()?;
    let raw: u64 = data
        .iter()
        .flatten()
        .map(|s| s.image.data().len() as u64)
        .sum();
    let keys: Vec<String> = (0..shards).map(|i| format!("shard_{i:05}")).collect();

    let dir = tempfile::Builder::new().prefix("e2e").tempdir_in(root)?;
    let engine = Config::new(dir.path())
        .durability(Durability::Buffered)
        .open()?;
    let store = SquirrelStore::new(engine, MessagepackSerializer::default());
    let t = Instant::now();
    for (key, shard) in keys.iter().zip(&data) {
        store.set(shard, Some(key))?;
    }
    store.engine().sync()?;
    let write_mbps = crate::measure::mbps(raw, t.elapsed());

    let read = |key: &str| -> Result<u64> {
        let shard: Vec<Sample> = store.get(key)?.with_context(|| format!("missing {key}"))?;
        Ok(shard.iter().map(|s| s.image.data().len() as u64).sum())
    };
    read(&keys[0])?;
    let all = store.keys()?;
    let t = Instant::now();
    let got = std::thread::scope(|s| -> Result<u64> {
        let handles: Vec<_> = all
            .chunks(all.len().div_ceil(threads).max(1))
            .map(|part| s.spawn(move || part.iter().map(|k| read(k)).sum::<Result<u64>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader panicked"))
            .sum()
    })?;
    let read_decode_mbps = crate::measure::mbps(raw, t.elapsed());
    anyhow::ensure!(got == raw, "read back {got} image bytes, wrote {raw}");

    let mut rng = StdRng::seed_from_u64(crate::workload::SEED);
    let picks: Vec<&str> = (0..gets)
        .map(|_| keys[rng.random_range(0..keys.len())].as_str())
        .collect();
    let t = Instant::now();
    for key in &picks {
        std::hint::black_box(read(key)?);
    }
    let get_shard_ms = t.elapsed().as_secs_f64() * 1e3 / gets.max(1) as f64;
    let disk_bytes = crate::measure::disk_usage(dir.path())?;
    store.engine().clone().close()?;
    drop(store);
    dir.close()?;
    Ok(EndToEnd {
        write_mbps,
        read_decode_mbps,
        get_shard_ms,
        disk_bytes,
    })
}
