//! What adaptive compression costs and saves, on the seed workload and on a compressible one.
//!
//! Run with `cargo run --release --example adaptive_compression`. For each serializer policy it
//! writes 200 shards × 100 samples through [`SquirrelStore`] (one thread, `Durability::Buffered`,
//! one sync at the end), then gets and decodes 400 random shards, and reports the time and the
//! bytes stored. Workloads: the seed's (float32 3×32×32 images of uniform random floats, a label,
//! metadata: incompressible) and uint8 3×32×32 images with structure (compressible). A quick
//! measurement, not a benchmark: the numbers move with the machine and its load.

use std::error::Error;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use squirrel_store::array::NdArray;
use squirrel_store::serializer::MessagepackSerializer;
use squirrel_store::transfer::{ScanDepth, scan_shards};
use squirrel_store::{Config, Durability, SquirrelStore, Store};

const SHARDS: u64 = 200;
const SAMPLES: u64 = 100;
const GETS: u64 = 400;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sample {
    image: NdArray,
    label: i64,
    metadata: String,
}

/// splitmix64, seeded: the same data on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn float_shard(seed: u64) -> Shard {
    let mut rng = Rng(seed);
    (0..SAMPLES)
        .map(|i| {
            let pixels: Vec<f32> = (0..3 * 32 * 32)
                .map(|_| (rng.next() >> 40) as f32 / (1u64 << 24) as f32)
                .collect();
            Ok(Sample {
                image: NdArray::from_slice([3, 32, 32], &pixels)?,
                label: (rng.next() % 10) as i64,
                metadata: format!("sample {i} of shard {seed}"),
            })
        })
        .collect()
}

fn image_shard(seed: u64) -> Shard {
    let mut rng = Rng(seed);
    (0..SAMPLES)
        .map(|i| {
            let base = (rng.next() % 200) as usize;
            let pixels: Vec<u8> = (0..3 * 32 * 32)
                .map(|p| {
                    let (c, y, x) = (p / 1024, (p / 32) % 32, p % 32);
                    let smooth = base + c * 20 + if y < 16 { x } else { 16 };
                    (smooth + (rng.next() % 3) as usize) as u8
                })
                .collect();
            Ok(Sample {
                image: NdArray::from_slice([3, 32, 32], &pixels)?,
                label: (rng.next() % 10) as i64,
                metadata: format!("image {i}"),
            })
        })
        .collect()
}

/// A generated shard, or why it could not be made.
type Shard = Result<Vec<Sample>, Box<dyn Error>>;
/// A workload: its name and how to make its shard number `seed`.
type Workload = (&'static str, fn(u64) -> Shard);

struct Run {
    write: Duration,
    get: Duration,
    compressed: u64,
    stored: u64,
    payload: u64,
}

fn run(ser: MessagepackSerializer, shards: &[Vec<Sample>]) -> Result<Run, Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let engine = Config::new(dir.path())
        .durability(Durability::Buffered)
        .open()?;
    let store = SquirrelStore::new(engine, ser);
    let t = Instant::now();
    for (i, shard) in shards.iter().enumerate() {
        store.set(shard, Some(&format!("shard_{i}")))?;
    }
    store.engine().sync()?;
    let write = t.elapsed();
    let mut rng = Rng(99);
    let t = Instant::now();
    let mut n = 0usize;
    for _ in 0..GETS {
        let key = format!("shard_{}", rng.next() % shards.len() as u64);
        n += store.get::<Sample>(&key)?.map_or(0, |s| s.len());
    }
    let get = t.elapsed() / GETS as u32;
    assert_eq!(n as u64, GETS * SAMPLES);
    let scan = scan_shards(
        store.engine(),
        store.serializer(),
        ScanDepth::Sizes,
        &mut |_, _| {},
    )?;
    Ok(Run {
        write,
        get,
        compressed: scan.compressed.shards,
        stored: scan.stored_bytes,
        payload: scan.payload_bytes,
    })
}

fn main() -> Result<(), Box<dyn Error>> {
    let workloads: [Workload; 2] = [
        ("float32 random (seed workload)", float_shard),
        ("uint8 structured images", image_shard),
    ];
    for (name, make) in workloads {
        let shards = (0..SHARDS).map(make).collect::<Result<Vec<_>, _>>()?;
        println!("{name}: {SHARDS} shards × {SAMPLES} samples");
        let policies = [
            (
                "always zstd 3 (old default)",
                MessagepackSerializer::new().level(3),
            ),
            (
                "adaptive, sampled (default)",
                MessagepackSerializer::default(),
            ),
            (
                "adaptive, whole shard",
                MessagepackSerializer::default().sampling(false),
            ),
            ("uncompressed", MessagepackSerializer::new().uncompressed()),
        ];
        for (label, ser) in policies {
            let r = run(ser, &shards)?;
            println!(
                "  {label:<28} write {:>7.3} s  get+decode {:>7.3} ms  compressed {:>3}/{SHARDS}  \
                 stored {:>6.1} MB = {:.3}× payload",
                r.write.as_secs_f64(),
                r.get.as_secs_f64() * 1e3,
                r.compressed,
                r.stored as f64 / 1e6,
                r.stored as f64 / r.payload as f64,
            );
        }
    }
    Ok(())
}
