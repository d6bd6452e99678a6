//! Hot gets of large values against LMDB, paired: how the load leaves the page cache decides
//! how fast a hot value reads, whatever the engine.
//!
//! Both stores live in one process and hold the same seeded values; rounds of the same random
//! gets alternate between them, and each row gives the median round. The loads compared:
//! squirrel-store with one `set` per value or `set_many` batches, LMDB with one transaction or
//! one commit per put. For each, how many physically separate pieces the values' pages are in
//! (from `/proc/self/pagemap`, which needs root; otherwise not shown): a value written by a write
//! of its own starts and ends in small page-cache folios (folios are aligned to their size).
//!
//! `cargo build -p squirrel-store-benches --release && target/release/squirrel-get-layout`

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use heed::types::{Bytes, Str};
use heed::{Database, Env};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use squirrel_store::{Config, Durability, Engine};

#[path = "peers/lmdb_env.rs"]
mod lmdb_env;
#[path = "workload.rs"]
#[allow(dead_code)]
mod workload;

/// Paired hot gets of large values, squirrel-store against LMDB, under different loads.
#[derive(Parser)]
struct Args {
    /// Values per store.
    #[arg(long, default_value_t = 1000)]
    values: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 1 << 20)]
    value_len: usize,
    /// Gets per round.
    #[arg(long, default_value_t = 2000)]
    gets: usize,
    /// Rounds per engine (the median is reported).
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Where the stores are created (a temporary directory inside it, removed at the end).
    #[arg(long)]
    tmp: Option<std::path::PathBuf>,
}

/// One way of loading the values.
#[derive(Clone, Copy)]
enum Load {
    SquirrelSet,
    SquirrelSetMany,
    LmdbOneTxn,
    LmdbCommitPerPut,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::SquirrelSet => "squirrel-store, one `set` per value",
            Load::SquirrelSetMany => "squirrel-store, `set_many` of 100",
            Load::LmdbOneTxn => "LMDB, one transaction",
            Load::LmdbCommitPerPut => "LMDB, one commit per put",
        }
    }
}

/// A loaded store that can serve a round of gets.
enum Loaded {
    Squirrel(Engine),
    Lmdb(Env, Database<'static, Str, Bytes>),
}

impl Loaded {
    fn load(load: Load, dir: &Path, keys: &[String], values: &[Vec<u8>]) -> Result<Loaded> {
        match load {
            Load::SquirrelSet | Load::SquirrelSetMany => {
                let engine = Config::new(dir).durability(Durability::Buffered).open()?;
                if matches!(load, Load::SquirrelSet) {
                    for (k, v) in keys.iter().zip(values) {
                        engine.set(k, v)?;
                    }
                } else {
                    for (ks, vs) in keys.chunks(100).zip(values.chunks(100)) {
                        engine.set_many(ks.iter().map(String::as_str).zip(vs))?;
                    }
                }
                engine.sync()?;
                Ok(Loaded::Squirrel(engine))
            }
            Load::LmdbOneTxn | Load::LmdbCommitPerPut => {
                std::fs::create_dir_all(dir)?;
                let (env, db) = lmdb_env::open(dir)?;
                if matches!(load, Load::LmdbOneTxn) {
                    let mut wtxn = env.write_txn()?;
                    for (k, v) in keys.iter().zip(values) {
                        db.put(&mut wtxn, k, v)?;
                    }
                    wtxn.commit()?;
                } else {
                    for (k, v) in keys.iter().zip(values) {
                        let mut wtxn = env.write_txn()?;
                        db.put(&mut wtxn, k, v)?;
                        wtxn.commit()?;
                    }
                }
                Ok(Loaded::Lmdb(env, db))
            }
        }
    }

    /// Hands each key's value to `f`.
    fn each(&self, keys: &[&str], f: &mut dyn FnMut(&[u8])) -> Result<()> {
        match self {
            Loaded::Squirrel(engine) => {
                for k in keys {
                    f(&engine.get(k)?.context("missing")?);
                }
            }
            Loaded::Lmdb(env, db) => {
                let rtxn = env.read_txn()?;
                for k in keys {
                    f(db.get(&rtxn, k)?.context("missing")?);
                }
            }
        }
        Ok(())
    }

    /// µs per get of one round, every byte read.
    fn round(&self, keys: &[&str]) -> Result<f64> {
        let t = Instant::now();
        let mut sum = 0u64;
        self.each(keys, &mut |v| sum = sum.wrapping_add(workload::touch(v)))?;
        black_box(sum);
        Ok(t.elapsed().as_secs_f64() * 1e6 / keys.len() as f64)
    }

    /// How many times consecutive pages of the values lie apart in physical memory, summed over
    /// `keys`; `None` without access to the page frame numbers.
    fn breaks(&self, keys: &[&str]) -> Result<Option<u64>> {
        use std::os::unix::fs::FileExt;
        let Ok(pagemap) = std::fs::File::open("/proc/self/pagemap") else {
            return Ok(None);
        };
        let mut total = 0u64;
        let mut readable = true;
        self.each(keys, &mut |v| {
            let first = v.as_ptr() as usize / 4096;
            let last = (v.as_ptr() as usize + v.len() - 1) / 4096;
            let mut prev = None;
            for page in first..=last {
                let mut entry = [0u8; 8];
                if pagemap.read_exact_at(&mut entry, page as u64 * 8).is_err() {
                    readable = false;
                    return;
                }
                let pfn = u64::from_le_bytes(entry) & ((1 << 55) - 1);
                readable &= pfn != 0;
                if prev.is_some_and(|p| pfn != p + 1) {
                    total += 1;
                }
                prev = Some(pfn);
            }
        })?;
        Ok(readable.then_some(total))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = match &args.tmp {
        Some(t) => tempfile::tempdir_in(t)?,
        None => tempfile::tempdir()?,
    };
    let mut rng = StdRng::seed_from_u64(workload::SEED);
    let keys: Vec<String> = (0..args.values).map(|i| format!("key{i:08}")).collect();
    let values: Vec<Vec<u8>> = (0..args.values)
        .map(|_| (0..args.value_len).map(|_| rng.random()).collect())
        .collect();
    let gets: Vec<&str> = (0..args.gets)
        .map(|_| keys[rng.random_range(0..keys.len())].as_str())
        .collect();
    let pairs = [
        (Load::SquirrelSet, Load::LmdbOneTxn),
        (Load::SquirrelSetMany, Load::LmdbOneTxn),
        (Load::SquirrelSet, Load::LmdbCommitPerPut),
    ];
    println!(
        "{} values of {} bytes, {} gets a round, median of {} rounds, rounds alternating\n",
        args.values, args.value_len, args.gets, args.rounds
    );
    println!(
        "| squirrel-store load | LMDB load | squirrel µs/get | LMDB µs/get | ratio | pieces, squirrel / LMDB |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, (ours, theirs)) in pairs.into_iter().enumerate() {
        let a = Loaded::load(ours, &root.path().join(format!("s{i}")), &keys, &values)?;
        let b = Loaded::load(theirs, &root.path().join(format!("l{i}")), &keys, &values)?;
        // Warm: every value checked once (squirrel-store checks a long value's CRC at its first
        // get through a mapping), every page mapped.
        a.each(
            &keys.iter().map(String::as_str).collect::<Vec<_>>(),
            &mut |v| {
                black_box(workload::touch(v));
            },
        )?;
        b.each(
            &keys.iter().map(String::as_str).collect::<Vec<_>>(),
            &mut |v| {
                black_box(workload::touch(v));
            },
        )?;
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            ta.push(a.round(&gets)?);
            tb.push(b.round(&gets)?);
        }
        let sample: Vec<&str> = keys.iter().take(200).map(String::as_str).collect();
        let pieces = match (a.breaks(&sample)?, b.breaks(&sample)?) {
            (Some(x), Some(y)) => format!(
                "{:.1} / {:.1} a value",
                x as f64 / sample.len() as f64 + 1.0,
                y as f64 / sample.len() as f64 + 1.0
            ),
            _ => "n/a (needs root)".to_owned(),
        };
        let (ma, mb) = (median(ta), median(tb));
        println!(
            "| {} | {} | {ma:.2} | {mb:.2} | {:.3} | {pieces} |",
            ours.name(),
            theirs.name(),
            ma / mb
        );
    }
    Ok(())
}
