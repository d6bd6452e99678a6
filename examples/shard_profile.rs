//! Times (or, under a profiler, exercises) one phase of the squirrel layer on the seed workload:
//! `cargo run --profile profiling --example shard_profile -- PHASE [zstd|plain|default] [images]`.
//!
//! PHASE is `write`, `loop` (read + decode every shard, one thread), `loader` (the same through
//! `Loader`), `pair` (`ROUNDS` interleaved loop and loader rounds, alternating which goes first,
//! with wall and process CPU time of each and the medians of the loader ÷ loop ratios), `get`
//! (random single-shard gets) or `all`. Not a benchmark table: `benches/` is.

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

/// [`Sample`] read with its short strings kept inline (`META=inline`): decoding one allocates
/// nothing, so nothing a worker allocates is freed on the consuming thread.
#[derive(Deserialize)]
struct InlineSample {
    image: NdArray,
    #[allow(dead_code)]
    label: i64,
    #[allow(dead_code)]
    metadata: InlineMetadata,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct InlineMetadata {
    id: compact_str::CompactString,
    source: compact_str::CompactString,
    split: compact_str::CompactString,
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

/// CPU time of the whole process (every thread, user + system), in seconds.
fn cpu_seconds() -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    unsafe extern "C" {
        fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut ts = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `clock_gettime` writes one `timespec` (two 64-bit fields on 64-bit Linux) into `ts`.
    let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.sec as f64 + ts.nsec as f64 / 1e9
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
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
    let inline = std::env::var("META").is_ok_and(|m| m == "inline");
    let run_loop = || -> Result<usize, Box<dyn std::error::Error>> {
        let mut n = 0;
        for key in &keys {
            n += if inline {
                let shard: Vec<InlineSample> = store.get(key)?.ok_or("missing")?;
                shard.iter().map(|s| s.image.data().len()).sum::<usize>()
            } else {
                let shard: Vec<Sample> = store.get(key)?.ok_or("missing")?;
                shard.iter().map(|s| s.image.data().len()).sum::<usize>()
            };
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
        if inline {
            for s in loader.samples::<InlineSample>()? {
                n += s?.image.data().len();
            }
        } else {
            for s in loader.samples::<Sample>()? {
                n += s?.image.data().len();
            }
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
    if phase == "pair" {
        let rounds: usize = std::env::var("ROUNDS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(15);
        // Warm: the map's pages, the allocator.
        run_loop()?;
        run_loader()?;
        let time = |f: &dyn Fn() -> Result<usize, Box<dyn std::error::Error>>| {
            let (cpu, t) = (cpu_seconds(), Instant::now());
            f().map(|_| (t.elapsed().as_secs_f64(), cpu_seconds() - cpu))
        };
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        let (mut loop_wall, mut loader_wall) = (Vec::new(), Vec::new());
        let (mut loop_cpu, mut loader_cpu) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let (a, b) = if round % 2 == 0 {
                let a = time(&run_loop)?;
                (a, time(&run_loader)?)
            } else {
                let b = time(&run_loader)?;
                (time(&run_loop)?, b)
            };
            eprintln!(
                "round {round}: loop {:.4} s ({:.4} cpu), loader {:.4} s ({:.4} cpu), wall ratio {:.2}",
                a.0,
                a.1,
                b.0,
                b.1,
                a.0 / b.0
            );
            wall.push(a.0 / b.0);
            cpu.push(b.1 / a.1);
            loop_wall.push(a.0);
            loader_wall.push(b.0);
            loop_cpu.push(a.1);
            loader_cpu.push(b.1);
        }
        let spread = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            (v[0], v[v.len() - 1])
        };
        let (wlo, whi) = spread(&wall);
        eprintln!(
            "pair {rounds} rounds: loop median {:.4} s wall {:.4} s cpu; loader median {:.4} s wall {:.4} s cpu",
            median(&mut loop_wall),
            median(&mut loop_cpu),
            median(&mut loader_wall),
            median(&mut loader_cpu)
        );
        eprintln!(
            "pair speed-up loop/loader wall: median {:.2} (min {wlo:.2}, max {whi:.2}); loader cpu / loop cpu: median {:.2}",
            median(&mut wall),
            median(&mut cpu)
        );
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
