//! The measurements: what is timed, and how.

use std::fs::File;
use std::hint::black_box;
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};

use crate::peers::{self, Kind};
use crate::workload::{Workload, touch};

/// MB (10^6 bytes) per second.
pub fn mbps(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / 1e6 / took.as_secs_f64().max(1e-9)
}

/// Allocated bytes (`st_blocks`, as `du` counts them) under `path`, recursively: sparse regions
/// and preallocated-but-unwritten holes count for nothing.
pub fn disk_usage(path: &Path) -> Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            total += disk_usage(&entry?.path())?;
        }
    }
    Ok(total)
}

/// What one engine scored on one workload. `None` means not measured (n/a).
#[derive(Debug, Default, Clone)]
pub struct Figures {
    /// One put per value and one durable commit at the end, MB/s.
    pub write_mbps: Option<f64>,
    /// One durable commit per put, MB/s.
    pub durable_mbps: Option<f64>,
    /// Reopening the loaded store and reading one key, milliseconds (median of 3).
    pub open_ms: Option<f64>,
    /// Hot random get, one thread: microseconds per get.
    pub get_us_1: Option<f64>,
    /// Hot random get, one thread: MB/s of values read.
    pub get_mbps_1: Option<f64>,
    /// Hot random get, every core: microseconds per get per thread.
    pub get_us_n: Option<f64>,
    /// Hot random get, every core: MB/s of values read, all threads together.
    pub get_mbps_n: Option<f64>,
    /// Hot full scan of every key (each engine in its natural order), MB/s of values read.
    pub scan_mbps: Option<f64>,
    /// Bytes allocated on disk divided by the raw value bytes.
    pub disk_ratio: Option<f64>,
    /// Compaction of a store with half its bytes dead, seconds.
    pub compact_s: Option<f64>,
    /// Mean get latency while that compaction runs, microseconds.
    pub compact_get_us: Option<f64>,
    /// That compaction's speed: live bytes written into the new segment per second, MB/s.
    pub compact_mbps: Option<f64>,
    /// The sequential-write reference taken next to that compaction, in the same disk state: the
    /// live bytes written to a new file and fsynced once just before the compaction and once
    /// just after, MB/s over the two runs' total time.
    pub compact_ref_mbps: Option<f64>,
    /// The first error, if the engine failed part-way (later figures are then missing).
    pub error: Option<String>,
}

/// How many rounds of hot random gets each engine runs; its get rows are the median round.
const GET_ROUNDS: usize = 5;

/// One engine's store, written, reopened and scanned, kept open for the get rounds.
struct Loaded {
    kind: Kind,
    dir: tempfile::TempDir,
    peer: Box<dyn peers::Peer>,
}

/// Runs every measure of every engine in `kinds` on one workload; the figures come back in the
/// order of `kinds`. Stores live in temporary directories under `root`, removed before returning.
///
/// Each engine is written, reopened and scanned in turn. Then the stores all stay open for the
/// hot random gets, which run in [`GET_ROUNDS`] rounds, the engines alternating within each
/// round (the first one rotating), and each get row is the engine's median round: on a shared
/// VM, the machine's speed drifts over the minutes one engine's measures take, by more than
/// the gaps being measured, and alternating makes every engine see the same drift.
pub fn run_workload(kinds: &[Kind], w: &Workload, root: &Path, threads: usize) -> Vec<Figures> {
    let mut figures = vec![Figures::default(); kinds.len()];
    let mut loaded = Vec::new();
    for (i, &kind) in kinds.iter().enumerate() {
        eprintln!("  {} on {}: write, open, scan…", w.name, kind.name());
        match prepare(kind, w, root, &mut figures[i]) {
            Ok(l) => loaded.push((i, l)),
            Err(e) => figures[i].error = Some(format!("{e:#}")),
        }
    }
    eprintln!(
        "  {}: {GET_ROUNDS} rounds of gets, engines alternating…",
        w.name
    );
    get_rounds(&loaded, w, threads, &mut figures);
    for (i, l) in loaded {
        let fig = &mut figures[i];
        eprintln!(
            "  {} on {}: close, size, durable writes…",
            w.name,
            l.kind.name()
        );
        if let Err(e) = finish(l, w, root, fig) {
            fig.error.get_or_insert(format!("{e:#}"));
        }
    }
    for (i, &kind) in kinds.iter().enumerate() {
        let fig = &mut figures[i];
        if kind == Kind::Squirrel
            && fig.error.is_none()
            && let Err(e) = compaction(w, root, fig)
        {
            fig.error.get_or_insert(format!("compaction: {e:#}"));
        }
    }
    figures
}

/// Writes the workload into a fresh store, reopens it (timed, median of 3) and scans it (hot).
fn prepare(kind: Kind, w: &Workload, root: &Path, fig: &mut Figures) -> Result<Loaded> {
    let raw = w.raw_bytes();
    let dir = tempfile::Builder::new()
        .prefix(kind.id())
        .tempdir_in(root)?;

    // Write: one put per value, one durable commit at the end.
    let mut peer = kind.open(dir.path(), false)?;
    let t = Instant::now();
    peer.load(&mut w.items(usize::MAX))?;
    fig.write_mbps = Some(mbps(raw, t.elapsed()));
    peer.close()?;
    phase("write", t);

    // Open time of the existing store (plus one get, so lazy openers pay their due).
    let t0 = Instant::now();
    let first = [w.keys[0].as_str()];
    let mut opens = Vec::new();
    let mut peer = None;
    for round in 0..3 {
        let t = Instant::now();
        let p = kind.open(dir.path(), false)?;
        p.get_each(&first, &mut |v| {
            black_box(touch(v));
        })?;
        opens.push(t.elapsed());
        if round == 2 {
            peer = Some(p);
        } else {
            p.close()?;
        }
    }
    opens.sort();
    fig.open_ms = Some(opens[1].as_secs_f64() * 1e3);
    phase("open x3", t0);
    let peer = peer.expect("set in the last round");

    // Full scan, hot: one pass to warm the cache, then the timed pass.
    let t0 = Instant::now();
    let mut scanned = 0u64;
    let mut sum = 0u64;
    let n = peer.scan(&mut |_, v| sum = sum.wrapping_add(touch(v)))?;
    ensure!(
        n == w.keys.len() as u64,
        "scan saw {n} of {} keys",
        w.keys.len()
    );
    let t = Instant::now();
    peer.scan(&mut |_, v| {
        scanned += v.len() as u64;
        sum = sum.wrapping_add(touch(v));
    })?;
    fig.scan_mbps = Some(mbps(scanned, t.elapsed()));
    black_box(sum);
    phase("scan x2", t0);
    Ok(Loaded { kind, dir, peer })
}

/// What one round of gets measured: µs a get (per thread) and MB/s (all threads).
#[derive(Debug, Clone, Copy)]
struct Rate {
    us: f64,
    mbps: f64,
}

/// One engine's round of hot random gets: on one thread, then on every thread at once.
fn get_round(
    peer: &dyn peers::Peer,
    single: &[&str],
    per_thread: &[Vec<&str>],
) -> Result<[Rate; 2]> {
    let (took, bytes) = timed_gets(peer, single)?;
    let one = Rate {
        us: took.as_secs_f64() * 1e6 / single.len() as f64,
        mbps: mbps(bytes, took),
    };
    let barrier = Barrier::new(per_thread.len() + 1);
    let (wall, total) = std::thread::scope(|s| -> Result<(Duration, u64)> {
        let handles: Vec<_> = per_thread
            .iter()
            .map(|keys| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    timed_gets(peer, keys).map(|(_, b)| b)
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let mut total = 0;
        for h in handles {
            total += h.join().expect("get thread panicked")?;
        }
        Ok((t.elapsed(), total))
    })?;
    let per = per_thread.first().map_or(1, Vec::len);
    let all = Rate {
        us: wall.as_secs_f64() * 1e6 / per as f64,
        mbps: mbps(total, wall),
    };
    Ok([one, all])
}

/// [`GET_ROUNDS`] rounds of [`get_round`] over the open stores, engines alternating, every engine
/// getting the same keys in a round; fills in each one's median round (`loaded` holds each
/// store with its index into `figures`). An engine whose gets fail gets its error and is left
/// out of the later rounds.
fn get_rounds(loaded: &[(usize, Loaded)], w: &Workload, threads: usize, figures: &mut [Figures]) {
    let mut rounds: Vec<Vec<[Rate; 2]>> = vec![Vec::new(); loaded.len()];
    // Warm: every store's values read once before the first timed round.
    let warm = w.random_keys(w.gets, 0);
    for (i, l) in loaded {
        if let Err(e) = timed_gets(&*l.peer, &warm) {
            figures[*i].error = Some(format!("{e:#}"));
        }
    }
    for round in 0..GET_ROUNDS {
        let seed = (round * (threads + 1)) as u64;
        let single = w.random_keys(w.gets, seed + 1);
        let per_thread: Vec<Vec<&str>> = (0..threads)
            .map(|t| w.random_keys(w.gets, seed + 2 + t as u64))
            .collect();
        let t = Instant::now();
        for k in 0..loaded.len() {
            let at = (k + round) % loaded.len();
            let (i, l) = &loaded[at];
            if figures[*i].error.is_some() {
                continue;
            }
            match get_round(&*l.peer, &single, &per_thread) {
                Ok(r) => rounds[at].push(r),
                Err(e) => figures[*i].error = Some(format!("{e:#}")),
            }
        }
        phase(&format!("get round {}", round + 1), t);
    }
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    for ((i, _), rs) in loaded.iter().zip(rounds) {
        if rs.is_empty() {
            continue;
        }
        let fig = &mut figures[*i];
        fig.get_us_1 = median(rs.iter().map(|r| r[0].us).collect());
        fig.get_mbps_1 = median(rs.iter().map(|r| r[0].mbps).collect());
        fig.get_us_n = median(rs.iter().map(|r| r[1].us).collect());
        fig.get_mbps_n = median(rs.iter().map(|r| r[1].mbps).collect());
    }
}

/// Closes a store, measures its size on disk and removes it; then times durable commits on a
/// fresh store.
fn finish(l: Loaded, w: &Workload, root: &Path, fig: &mut Figures) -> Result<()> {
    let raw = w.raw_bytes();
    let Loaded { kind, dir, peer } = l;
    let t = Instant::now();
    peer.close()?;
    phase("close", t);
    let t = Instant::now();
    fig.disk_ratio = Some(disk_usage(dir.path())? as f64 / raw as f64);
    phase("du", t);
    let t = Instant::now();
    remove_dir(dir)?;
    phase("remove", t);

    // Write: one durable commit per put, on a fresh store.
    let dir = tempfile::Builder::new()
        .prefix(kind.id())
        .tempdir_in(root)?;
    let mut peer = kind.open(dir.path(), true)?;
    let n = w.durable_writes.min(w.keys.len());
    let bytes: u64 = w.values[..n].iter().map(|v| v.len() as u64).sum();
    let t = Instant::now();
    for (k, v) in w.items(n) {
        peer.put_durable(k, v)?;
    }
    fig.durable_mbps = Some(mbps(bytes, t.elapsed()));
    peer.close()?;
    remove_dir(dir)?;
    phase("durable writes", t);
    Ok(())
}

/// Removes a temporary store, unlinking its top-level files from 16 threads first.
///
/// On this project's machines (ext4 mounted with `discard`), unlinking synced files one after the
/// other costs ~2.7 ms each (55 s for 20k files) while parallel unlinks share journal commits
/// (2 s). Not timed; it only keeps the run short.
fn remove_dir(dir: tempfile::TempDir) -> Result<()> {
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path())?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    let chunk = files.len().div_ceil(16).max(1);
    std::thread::scope(|s| {
        for part in files.chunks(chunk) {
            s.spawn(move || {
                for f in part {
                    let _ = std::fs::remove_file(f);
                }
            });
        }
    });
    dir.close()?;
    Ok(())
}

/// Progress on stderr: how long a phase took.
fn phase(what: &str, since: Instant) {
    eprintln!("      {what}: {:.2} s", since.elapsed().as_secs_f64());
}

/// Gets every key of `keys`, reading each value whole; returns the time and the bytes read.
fn timed_gets(peer: &dyn peers::Peer, keys: &[&str]) -> Result<(Duration, u64)> {
    let mut bytes = 0u64;
    let mut sum = 0u64;
    let t = Instant::now();
    peer.get_each(keys, &mut |v| {
        bytes += v.len() as u64;
        sum = sum.wrapping_add(touch(v));
    })?;
    let took = t.elapsed();
    black_box(sum);
    Ok((took, bytes))
}

/// squirrel-store only: every value written twice (half the bytes dead), then compaction timed
/// while another thread keeps getting random keys.
fn compaction(w: &Workload, root: &Path, fig: &mut Figures) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("compact")
        .tempdir_in(root)?;
    let engine = peers::squirrel::open_engine(dir.path())?;
    for _ in 0..2 {
        for (k, v) in w.items(usize::MAX) {
            engine.set(k, v)?;
        }
    }
    engine.sync()?;
    // Right after the gigabytes of this store were written and synced, this VM's disk takes
    // several times longer for the next big write than for the ones after it (1 GB: 1.2-3.4 s,
    // then 0.5-0.6 s). One discarded reference write absorbs that, whoever would come first;
    // then the reference is taken before and after the compaction, in the state it meets.
    seq_write(&w.values, root)?;
    let before = seq_write(&w.values, root)?;
    let keys = w.random_keys(w.gets.max(1000), 7);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (compact_took, (gets, get_time)) = std::thread::scope(|s| -> Result<_> {
        let reader = s.spawn(|| -> Result<(u64, Duration)> {
            let mut n = 0u64;
            let mut busy = Duration::ZERO;
            let mut sum = 0u64;
            for k in keys.iter().cycle() {
                if done.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                let t = Instant::now();
                if let Some(v) = engine.get(k)? {
                    sum = sum.wrapping_add(touch(&v));
                }
                busy += t.elapsed();
                n += 1;
            }
            black_box(sum);
            Ok((n, busy))
        });
        let t = Instant::now();
        let r = peers::squirrel::compact(&engine);
        let took = t.elapsed();
        done.store(true, std::sync::atomic::Ordering::Release);
        let gets = reader.join().expect("reader panicked")?;
        r?;
        Ok((took, gets))
    })?;
    let after = seq_write(&w.values, root)?;
    fig.compact_ref_mbps = Some(mbps(2 * w.raw_bytes(), before + after));
    fig.compact_s = Some(compact_took.as_secs_f64());
    fig.compact_mbps = Some(mbps(w.raw_bytes(), compact_took));
    fig.compact_get_us = Some(get_time.as_secs_f64() * 1e6 / gets.max(1) as f64);
    engine.close()?;
    dir.close()?;
    Ok(())
}

/// The reference points for one workload.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reference {
    /// Reading every value once from memory (after a warm pass), MB/s: memory bandwidth.
    pub memory_scan_mbps: f64,
    /// Writing every value to one file sequentially, then one fsync, MB/s.
    pub seq_write_mbps: f64,
}

/// Measures the reference points of `w`.
pub fn reference(w: &Workload, root: &Path) -> Result<Reference> {
    let mut sum = 0u64;
    for v in &w.values {
        sum = sum.wrapping_add(touch(v));
    }
    let t = Instant::now();
    for v in &w.values {
        sum = sum.wrapping_add(touch(v));
    }
    let memory_scan_mbps = mbps(w.raw_bytes(), t.elapsed());
    black_box(sum);

    let seq_write_mbps = mbps(w.raw_bytes(), seq_write(&w.values, root)?);
    Ok(Reference {
        memory_scan_mbps,
        seq_write_mbps,
    })
}

/// Writes `values` one after the other to a new file in `root` and fsyncs it once; the time
/// that took. The file is removed.
fn seq_write(values: &[Vec<u8>], root: &Path) -> Result<Duration> {
    let file = tempfile::NamedTempFile::new_in(root)?;
    let t = Instant::now();
    let mut out = BufWriter::with_capacity(1 << 20, File::create(file.path())?);
    for v in values {
        out.write_all(v)?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_data()?;
    let took = t.elapsed();
    file.close()?;
    Ok(took)
}

/// Open time of a big store of small keys.
#[derive(Debug, Clone, Copy)]
pub struct OpenScale {
    /// Keys in the store.
    pub keys: usize,
    /// Engine measured.
    pub kind: Kind,
    /// Building the store (one put per key, one commit / close), seconds.
    pub build_s: f64,
    /// Open plus one get, milliseconds (median of 3).
    pub open_ms: f64,
    /// Records replayed by the open (squirrel-store only).
    pub replayed: Option<u64>,
    /// Preallocated zero bytes past the last record (squirrel-store only).
    pub zero_tail: Option<u64>,
    /// Bytes allocated on disk.
    pub disk_bytes: u64,
}

/// Bytes of each value in the open-time stores.
pub const OPEN_SCALE_VALUE: usize = 100;

/// Builds a store of `n` small keys with `kind` (squirrel-store or LMDB) and times opening it.
pub fn open_scale(kind: Kind, n: usize, root: &Path) -> Result<OpenScale> {
    let dir = tempfile::Builder::new()
        .prefix("open-scale")
        .tempdir_in(root)?;
    let t = Instant::now();
    match kind {
        Kind::Squirrel => peers::squirrel::build_for_open(dir.path(), n, OPEN_SCALE_VALUE)?,
        Kind::Lmdb => peers::lmdb_build_for_open(dir.path(), n, OPEN_SCALE_VALUE)?,
        other => anyhow::bail!("no open-scale build for {}", other.name()),
    }
    let build_s = t.elapsed().as_secs_f64();
    let mut opens = Vec::new();
    let mut replayed = None;
    let mut zero_tail = None;
    for _ in 0..3 {
        let t = Instant::now();
        match kind {
            Kind::Squirrel => {
                let (r, z) = peers::squirrel::open_for_scale(dir.path())?;
                replayed = Some(r);
                zero_tail = Some(z);
            }
            _ => {
                let p = kind.open(dir.path(), false)?;
                let key = crate::workload::scale_key(0);
                p.get_each(&[key.as_str()], &mut |v| {
                    black_box(touch(v));
                })?;
                p.close()?;
            }
        }
        opens.push(t.elapsed());
    }
    opens.sort();
    let disk_bytes = disk_usage(dir.path())?;
    dir.close()?;
    Ok(OpenScale {
        keys: n,
        kind,
        build_s,
        open_ms: opens[1].as_secs_f64() * 1e3,
        replayed,
        zero_tail,
        disk_bytes,
    })
}

/// One bulk load of small keys: how it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkMode {
    /// Batches of [`BULK_BATCH`] keys: squirrel-store's `set_many`, LMDB's one transaction per batch.
    Batched,
    /// One call per key: squirrel-store's `set`, LMDB's `put` (all in one transaction).
    OneByOne,
}

/// Keys per batch in [`BulkMode::Batched`].
pub const BULK_BATCH: usize = 10_000;

/// A bulk load of `keys` small keys by one engine.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    /// Keys loaded.
    pub keys: usize,
    /// How.
    pub mode: BulkMode,
    /// Engine measured.
    pub kind: Kind,
    /// Load plus one sync plus close, MB/s of value bytes.
    pub mbps: f64,
    /// Bytes allocated on disk after close, minus the value bytes, per key.
    pub overhead_per_key: f64,
    /// `st_size` of every file after close minus the bytes allocated, MB (squirrel-store: the
    /// preallocated tail that `ls -l` shows).
    pub apparent_minus_allocated_mb: f64,
}

/// Loads `n` keys of [`OPEN_SCALE_VALUE`] bytes into a fresh store (buffered, one sync and a
/// close at the end, all timed), and measures its size.
pub fn bulk(kind: Kind, n: usize, mode: BulkMode, root: &Path) -> Result<Bulk> {
    let dir = tempfile::Builder::new().prefix("bulk").tempdir_in(root)?;
    let t = Instant::now();
    match kind {
        Kind::Squirrel => peers::squirrel::bulk(dir.path(), n, OPEN_SCALE_VALUE, mode)?,
        Kind::Lmdb => peers::lmdb_bulk(dir.path(), n, OPEN_SCALE_VALUE, mode)?,
        other => anyhow::bail!("no bulk load for {}", other.name()),
    }
    let took = t.elapsed();
    let raw = (n * OPEN_SCALE_VALUE) as u64;
    let allocated = disk_usage(dir.path())?;
    let apparent = apparent_size(dir.path())?;
    remove_dir(dir)?;
    Ok(Bulk {
        keys: n,
        mode,
        kind,
        mbps: mbps(raw, took),
        overhead_per_key: (allocated as f64 - raw as f64) / n as f64,
        apparent_minus_allocated_mb: (apparent as f64 - allocated as f64) / 1e6,
    })
}

/// `st_size` of every file under `path`, recursively (what `ls -l` shows).
fn apparent_size(path: &Path) -> Result<u64> {
    let meta = std::fs::symlink_metadata(path)?;
    let mut total = if meta.is_file() { meta.len() } else { 0 };
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            total += apparent_size(&entry?.path())?;
        }
    }
    Ok(total)
}
