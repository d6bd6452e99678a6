//! Times (or, under a profiler, exercises) one phase of the squirrel layer on the seed workload:
//! `cargo run --profile profiling --example shard_profile -- PHASE [zstd|plain|default] [images]`.
//!
//! PHASE is `write`, `loop` (read + decode every shard, one thread), `loader` (the same through
//! `Loader`), `get` (random single-shard gets) or `all`. Not a benchmark table: `benches/` is.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use squirrel_store::array::NdArray;
use squirrel_store::serializer::MessagepackSerializer;
use squirrel_store::{Config, Durability, SquirrelStore, Store};

#[derive(Serialize, Deserialize)]
struct Sample {
    image: NdArray,
    label: i64,
    metadata: Metadata,
}

#[derive(Serialize, Deserialize)]
struct Metadata {
    id: String,
    source: String,
    split: String,
}

/// SplitMix64, so the data is the same on every run.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn shards(n: usize, samples: usize, images: bool) -> Vec<Vec<Sample>> {
    let mut rng = 7u64;
    (0..n)
        .map(|s| {
            (0..samples)
                .map(|i| {
                    let image = if images {
                        // Structured uint8 "images", as benches/ makes them: a gradient
                        // rectangle with 1 bit of noise on a flat background.
                        let background = next(&mut rng) % 256;
                        let (x0, y0) = (next(&mut rng) % 16, next(&mut rng) % 16);
                        let (w, h) = (8 + next(&mut rng) % 9, 8 + next(&mut rng) % 9);
                        let px: Vec<u8> = (0..3 * 32 * 32u64)
                            .map(|p| {
                                let (c, y, x) = (p / 1024, p / 32 % 32, p % 32);
                                let inside = (x0..x0 + w).contains(&x) && (y0..y0 + h).contains(&y);
                                let v = if inside {
                                    4 * x + 4 * y + 64 * c + next(&mut rng) % 2
                                } else {
                                    background
                                };
                                (v % 256) as u8
                            })
                            .collect();
                        NdArray::from_slice([3, 32, 32], &px).expect("shape")
                    } else {
                        let px: Vec<f32> = (0..3 * 32 * 32)
                            .map(|_| (next(&mut rng) >> 40) as f32 / (1u64 << 24) as f32)
                            .collect();
                        NdArray::from_slice([3, 32, 32], &px).expect("shape")
                    };
                    Sample {
                        image,
                        label: (next(&mut rng) % 10) as i64,
                        metadata: Metadata {
                            id: format!("shard{s:04}-sample{i:03}"),
                            source: "synthetic".into(),
                            split: "train".into(),
                        },
                    }
                })
                .collect()
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let phase = args.first().map_or("all", String::as_str);
    let ser = match args.get(1).map_or("default", String::as_str) {
        "zstd" => MessagepackSerializer::new().level(3),
        "plain" => MessagepackSerializer::new().uncompressed(),
        _ => MessagepackSerializer::default(),
    };
    let images = args.get(2).is_some_and(|a| a == "images");
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    // STORE=DIR reads a store written by an earlier run (phases other than write).
    let existing = std::env::var_os("STORE").filter(|_| phase != "write");
    let keys: Vec<String> = (0..200).map(|i| format!("shard_{i:05}")).collect();
    let tmp = tempfile::tempdir()?;
    let path = existing
        .clone()
        .map_or_else(|| tmp.path().to_owned(), Into::into);
    let fresh = existing.is_none() || !std::path::Path::new(&path).join("segment.sqs").exists();
    let data = if fresh {
        shards(200, 100, images)
    } else {
        Vec::new()
    };
    let engine = Config::new(&path).durability(Durability::Buffered).open()?;
    let store = SquirrelStore::new(engine, ser);
    let t = Instant::now();
    for (key, shard) in keys.iter().zip(&data) {
        store.set(shard, Some(key))?;
    }
    store.engine().sync()?;
    let write = t.elapsed();
    if phase == "write" {
        for _ in 1..reps {
            for (key, shard) in keys.iter().zip(&data) {
                store.set(shard, Some(key))?;
            }
        }
        eprintln!("write {:.3} s", write.as_secs_f64());
        return Ok(());
    }
    drop(data);
    eprintln!("write {:.3} s", write.as_secs_f64());
    let run_loop = || -> Result<usize, Box<dyn std::error::Error>> {
        let mut n = 0;
        for key in &keys {
            let shard: Vec<Sample> = store.get(key)?.ok_or("missing")?;
            n += shard.iter().map(|s| s.image.data().len()).sum::<usize>();
        }
        Ok(n)
    };
    let run_loader = || -> Result<usize, Box<dyn std::error::Error>> {
        let mut n = 0;
        let mut loader = store.loader();
        if let Some(n) = std::env::var("PREFETCH").ok().and_then(|p| p.parse().ok()) {
            loader = loader.prefetch(n);
        }
        if let Some(n) = std::env::var("WORKERS").ok().and_then(|p| p.parse().ok()) {
            loader = loader.workers(n);
        }
        for s in loader.samples::<Sample>()? {
            n += s?.image.data().len();
        }
        Ok(n)
    };
    if matches!(phase, "loop" | "all") {
        for _ in 0..reps {
            let t = Instant::now();
            let n = run_loop()?;
            eprintln!("loop {:.4} s ({n} bytes)", t.elapsed().as_secs_f64());
        }
    }
    if matches!(phase, "loader" | "all") {
        for _ in 0..reps {
            let t = Instant::now();
            let n = run_loader()?;
            eprintln!("loader {:.4} s ({n} bytes)", t.elapsed().as_secs_f64());
        }
    }
    if matches!(phase, "get" | "all") {
        let mut rng = 9u64;
        let gets = 200 * reps;
        let t = Instant::now();
        for _ in 0..gets {
            let key = &keys[(next(&mut rng) % keys.len() as u64) as usize];
            let shard: Vec<Sample> = store.get(key)?.ok_or("missing")?;
            std::hint::black_box(shard);
        }
        eprintln!(
            "get {:.4} ms",
            t.elapsed().as_secs_f64() * 1e3 / gets as f64
        );
    }
    Ok(())
}
