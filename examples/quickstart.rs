//! Python squirrel's tutorial ("store and load data with SquirrelStore"), in Rust.
//!
//! Run with `cargo run --release --example quickstart`. Everything is written to a temporary
//! directory that is removed at the end.
//!
//! * Approach 1: ten shards of ten samples, each stored under a chosen key `shard_{i}`, then one
//!   sample read back through a read-only driver.
//! * Approach 2: the same amount of data stored from several threads under random keys, then
//!   every sample read back by the loader, which decodes shards on all cores.

use std::error::Error;
use std::thread;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use squirrel_store::array::NdArray;
use squirrel_store::{Driver, MessagepackDriver, SquirrelStore, Store};

const N_SHARDS: usize = 10;
const SAMPLES_PER_SHARD: usize = 10;

/// A sample as the tutorial makes it: `{"image": np.random.random((3, 3, 3)), "label": 1 or 2,
/// "metadata": {"key": i}}`. The field names are the dict's keys, so Python reads the same thing.
#[derive(Debug, Serialize, Deserialize)]
struct Sample {
    image: NdArray,
    label: i64,
    metadata: Metadata,
}

#[derive(Debug, Serialize, Deserialize)]
struct Metadata {
    key: i64,
}

fn get_sample(rng: &mut impl Rng, i: usize) -> Result<Sample, Box<dyn Error>> {
    let pixels: Vec<f64> = (0..27).map(|_| rng.random::<f64>()).collect();
    Ok(Sample {
        image: NdArray::from_slice([3, 3, 3], &pixels)?,
        label: rng.random_range(1..=2),
        metadata: Metadata {
            key: i64::try_from(i)?,
        },
    })
}

fn get_shard(rng: &mut impl Rng, shard: usize) -> Result<Vec<Sample>, Box<dyn Error>> {
    (0..SAMPLES_PER_SHARD)
        .map(|j| get_sample(rng, shard * SAMPLES_PER_SHARD + j))
        .collect()
}

fn ms(since: Instant) -> String {
    format!("{:.2} ms", since.elapsed().as_secs_f64() * 1e3)
}

fn main() -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let tmp = tempfile::tempdir()?;
    let mut rng = StdRng::seed_from_u64(0);
    println!("squirrel-store quickstart: the squirrel tutorial in Rust");
    println!("working in {}", tmp.path().display());

    // Approach 1: keys of our own.
    println!(
        "\n== Approach 1: {N_SHARDS} shards of {SAMPLES_PER_SHARD} samples, keys shard_0..shard_9"
    );
    let path = tmp.path().join("approach_1");
    let store = SquirrelStore::open(&path)?;
    let shards: Vec<Vec<Sample>> = (0..N_SHARDS)
        .map(|i| get_shard(&mut rng, i))
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    for (i, shard) in shards.iter().enumerate() {
        store.set(shard, Some(&format!("shard_{i}")))?;
    }
    println!(
        "set {N_SHARDS} shards in {} (MessagePack + zstd, each fsynced)",
        ms(t)
    );
    let keys = store.keys()?;
    assert_eq!(keys.len(), N_SHARDS);
    println!("keys: {}", keys.join(", "));

    // squirrel's `MessagepackDriver(url).store`: a read-only view of the same directory.
    let driver = MessagepackDriver::open(&path)?;
    let t = Instant::now();
    let shard = driver
        .get::<Sample>("shard_0")?
        .ok_or("shard_0 is missing")?;
    let sample = shard.first().ok_or("shard_0 is empty")?;
    println!("read shard_0 ({} samples) in {}", shard.len(), ms(t));
    let pixels = sample.image.to_vec::<f64>()?;
    println!(
        "first sample: image {} {:?} starting [{:.4}, {:.4}, {:.4}, ...], label {}, metadata {{key: {}}}",
        sample.image.dtype(),
        sample.image.shape(),
        pixels[0],
        pixels[1],
        pixels[2],
        sample.label,
        sample.metadata.key,
    );
    assert_eq!(sample.metadata.key, 0);
    assert!(
        driver.store().set(&shard, None).is_err(),
        "a driver cannot write"
    );
    println!("the driver's store refuses writes: it is read-only");
    drop((driver, store));

    // Approach 2: random keys, written from several threads, read in parallel.
    let threads = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4);
    println!("\n== Approach 2: the same shards from {threads} threads, random keys");
    let path = tmp.path().join("approach_2");
    let store = SquirrelStore::open(&path)?;
    let t = Instant::now();
    let written: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                let (store, shards) = (store.clone(), &shards);
                // Thread w takes shards w, w + threads, ...: serialization and compression run
                // in parallel, only the appends take turns.
                scope.spawn(move || {
                    shards
                        .iter()
                        .skip(w)
                        .step_by(threads)
                        .map(|shard| store.set(shard, None))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a writer thread panicked"))
            .collect::<Result<Vec<_>, _>>()
    })?
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?
    .concat();
    println!("set {} shards in {}", written.len(), ms(t));
    let keys = store.keys()?;
    assert_eq!(keys.len(), N_SHARDS);
    assert!(keys.iter().all(|k| k.len() == 16));
    println!("random keys, e.g. {}", keys[..3].join(", "));

    let driver = MessagepackDriver::open(&path)?;
    let t = Instant::now();
    let samples: Vec<Sample> = driver
        .loader()
        .workers(threads)
        .samples()?
        .collect::<Result<_, _>>()?;
    assert_eq!(samples.len(), N_SHARDS * SAMPLES_PER_SHARD);
    println!(
        "read all {} samples with the loader on {threads} threads in {}",
        samples.len(),
        ms(t)
    );

    // As a training epoch reads: keys shuffled, samples mixed through a buffer. The order is the
    // same on every run for the same keys and seed (these keys are random, so it varies here).
    let t = Instant::now();
    let epoch: Vec<i64> = driver
        .loader()
        .shuffle_keys(true)
        .shuffle_samples(32)
        .seed(1)
        .samples::<Sample>()?
        .map(|s| s.map(|s| s.metadata.key))
        .collect::<Result<_, _>>()?;
    let mut sorted = epoch.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..100).collect::<Vec<_>>());
    println!(
        "a shuffled epoch (seed 1) in {}: metadata keys {:?} ...",
        ms(t),
        &epoch[..8]
    );

    drop((driver, store));
    tmp.close()?;
    println!("\ncleaned up; all done in {}", ms(started));
    Ok(())
}
