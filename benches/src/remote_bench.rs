//! Remote reads against local ones, over a real S3 server on loopback (`benches/remote.sh`
//! starts moto's and passes its address in `SQUIRREL_S3_*`): get latency and requests per get
//! (cold, and with a warm local cache), `get_many` throughput, and loader throughput.
//!
//! Loopback hides network latency: the remote figures are the client's and the server's costs
//! (moto is a Python server, so its per-request cost dominates), not a cloud's.

use std::time::Instant;

use anyhow::{Context, Result};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use squirrel_store::remote::{self, RemoteDriver, RemoteOptions, RemoteStore};
use squirrel_store::{Config, Driver, Engine, MessagepackDriver, SquirrelStore, Store};

fn env(k: &str) -> Result<String> {
    std::env::var(k).with_context(|| format!("{k} is not set: run benches/remote.sh"))
}

fn opts() -> Result<RemoteOptions> {
    Ok(RemoteOptions::new()
        .option("aws_endpoint", env("SQUIRREL_S3_ENDPOINT")?)
        .option("aws_allow_http", "true")
        .option("aws_access_key_id", env("SQUIRREL_S3_ACCESS_KEY_ID")?)
        .option(
            "aws_secret_access_key",
            env("SQUIRREL_S3_SECRET_ACCESS_KEY")?,
        )
        .option("aws_region", env("SQUIRREL_S3_REGION")?))
}

fn micros(t: Instant, n: usize) -> f64 {
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

#[derive(serde::Serialize, serde::Deserialize, Clone)]
struct Sample {
    label: i64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

fn main() -> Result<()> {
    let out_dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "benches/results".into());
    let bucket = env("SQUIRREL_S3_BUCKET")?;
    let run = std::process::id();
    let dir = tempfile::tempdir()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);

    // Bytes: 300 values of 256 KiB.
    let n = 300;
    let value_len = 256 << 10;
    let bytes_dir = dir.path().join("bytes");
    let db = Config::new(&bytes_dir).open()?;
    let mut keys = Vec::new();
    for i in 0..n {
        let v: Vec<u8> = (0..value_len).map(|_| rng.random()).collect();
        let k = format!("value-{i:05}");
        db.set(&k, &v)?;
        keys.push(k);
    }
    db.close()?;
    let url = format!("s3://{bucket}/bench-{run}/bytes");
    let t = Instant::now();
    remote::push(&bytes_dir, &url, opts()?)?;
    let push_s = t.elapsed().as_secs_f64();
    keys.shuffle(&mut rng);

    let local = Engine::open_read_only(&bytes_dir)?;
    let t = Instant::now();
    for k in &keys {
        std::hint::black_box(local.get(k)?.context("present")?.len());
    }
    let local_get = micros(t, n);

    let t = Instant::now();
    let store = RemoteStore::open(&url, opts()?)?;
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let open_requests = store.requests();
    let before = store.requests();
    let t = Instant::now();
    for k in &keys {
        std::hint::black_box(store.get(k)?.context("present")?.len());
    }
    let cold_get = micros(t, n);
    let cold_req = (store.requests() - before) as f64 / n as f64;

    let cache = dir.path().join("cache");
    let cached = RemoteStore::open(&url, opts()?.cache(&cache, 1 << 30))?;
    for k in &keys {
        cached.get(k)?;
    }
    let before = cached.requests();
    let t = Instant::now();
    for k in &keys {
        std::hint::black_box(cached.get(k)?.context("present")?.len());
    }
    let warm_get = micros(t, n);
    let warm_req = (cached.requests() - before) as f64 / n as f64;

    let before = store.requests();
    let t = Instant::now();
    let all = store.get_many(&keys)?;
    let many_s = t.elapsed().as_secs_f64();
    let many_req = store.requests() - before;
    let many_mb = all.iter().flatten().map(|v| v.len()).sum::<usize>() as f64 / 1e6;

    // The same gets on a small store (300 × 4 KiB): moto reads the whole object for every range
    // GET, so its per-request cost grows with the segment; this row shows the floor.
    let small_dir = dir.path().join("small");
    let db = Config::new(&small_dir).open()?;
    for k in &keys {
        let v: Vec<u8> = (0..4096).map(|_| rng.random()).collect();
        db.set(k, &v)?;
    }
    db.close()?;
    let small_url = format!("s3://{bucket}/bench-{run}/small");
    remote::push(&small_dir, &small_url, opts()?)?;
    let small = RemoteStore::open(&small_url, opts()?)?;
    let local_small = Engine::open_read_only(&small_dir)?;
    let t = Instant::now();
    for k in &keys {
        std::hint::black_box(local_small.get(k)?.context("present")?.len());
    }
    let small_local_get = micros(t, n);
    let before = small.requests();
    let t = Instant::now();
    for k in &keys {
        std::hint::black_box(small.get(k)?.context("present")?.len());
    }
    let small_get = micros(t, n);
    let small_req = (small.requests() - before) as f64 / n as f64;

    // Shards through the loader: 120 shards of 8 samples of 32 KiB.
    let shard_dir = dir.path().join("shards");
    let sq = SquirrelStore::open(&shard_dir)?;
    for s in 0..120 {
        let shard: Vec<Sample> = (0..8)
            .map(|i| Sample {
                label: i,
                data: (0..32 << 10).map(|_| rng.random()).collect(),
            })
            .collect();
        sq.set(&shard, Some(&format!("shard-{s:04}")))?;
    }
    drop(sq);
    let shard_url = format!("s3://{bucket}/bench-{run}/shards");
    remote::push(&shard_dir, &shard_url, opts()?)?;
    let shard_mb = 120.0 * 8.0 * 32768.0 / 1e6;
    let t = Instant::now();
    let c = MessagepackDriver::open(&shard_dir)?
        .loader()
        .samples::<Sample>()?
        .count();
    let local_loader = shard_mb / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let driver = RemoteDriver::open(&shard_url, opts()?)?;
    let r = driver.loader().workers(8).samples::<Sample>()?.count();
    let remote_loader = shard_mb / t.elapsed().as_secs_f64();
    anyhow::ensure!(c == r && c == 960, "loader counts {c} / {r}");
    let _ = driver.store().keys()?;

    let table = format!(
        "| measure | figure |\n|---|---|\n\
         | push of {n} × 256 KiB ({:.0} MB) | {push_s:.2} s |\n\
         | remote open (requests) | {open_ms:.1} ms ({open_requests}) |\n\
         | local get, random, 1 thread | {local_get:.1} µs |\n\
         | remote get, cold, 1 thread | {cold_get:.0} µs, {cold_req:.2} requests per get |\n\
         | remote get, warm cache, 1 thread | {warm_get:.0} µs, {warm_req:.2} requests per get |\n\
         | remote get_many of all {n} | {:.0} MB/s, {many_req} requests |\n\
         | small store ({n} × 4 KiB): local get | {small_local_get:.1} µs |\n\
         | small store: remote get, cold | {small_get:.0} µs, {small_req:.2} requests per get |\n\
         | loader, 120 shards × 8 × 32 KiB, local | {local_loader:.0} MB/s |\n\
         | loader, same shards over S3 (8 workers) | {remote_loader:.0} MB/s |\n",
        n as f64 * value_len as f64 / 1e6,
        many_mb / many_s,
    );
    println!("{table}");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(format!("{out_dir}/remote.md"), table)?;
    Ok(())
}
