//! `squirrel-bench`: squirrel-store side by side with LMDB (heed), redb, fjall, sled and one file
//! per key, on the same pre-generated values, plus reference points (memory bandwidth, one
//! sequential file + fsync) and, when given, Python squirrel-core's end-to-end seed figures.
//!
//! Writes `latest.md` (comfy-table markdown), `latest.svg` (plotters) and `latest.json` to
//! `--out`, and the same under `quick.*` or `full.*`. See `benches/README.md`.

mod measure;
mod peers;
mod plot;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use serde::Deserialize;

use measure::{Bulk, BulkMode, Figures, OpenScale, Reference};
use peers::Kind;
use report::{Better, Cell, Row, RunInfo, Section};
use workload::{Which, Workload};

/// Benchmarks squirrel-store against peer embedded stores.
#[derive(Debug, Parser)]
#[command(name = "squirrel-bench", version)]
struct Args {
    /// Small counts so that the whole run takes about a minute.
    #[arg(long)]
    quick: bool,
    /// Which workload to run.
    #[arg(long, value_enum, default_value = "all")]
    workload: Which,
    /// Directory for the results (created if missing).
    #[arg(long, default_value = "benches/results")]
    out: PathBuf,
    /// Where the stores are created (a temporary directory inside it, removed at the end).
    /// Defaults to the system temporary directory.
    #[arg(long)]
    tmp: Option<PathBuf>,
    /// Only these engines (comma-separated: squirrel,lmdb,redb,fjall,sled,files).
    #[arg(long, value_delimiter = ',')]
    engines: Option<Vec<String>>,
    /// Skip the open-time-at-scale rows (1M / 10M keys).
    #[arg(long)]
    skip_open_scale: bool,
    /// Skip the bulk-load rows (2M / 10M small keys).
    #[arg(long)]
    skip_bulk: bool,
    /// Run only the bulk-load rows (and the reference points of no workload).
    #[arg(long)]
    only_bulk: bool,
    /// JSON printed by `benches/python/squirrel_seed.py`, merged into the end-to-end table.
    #[arg(long)]
    python_json: Option<PathBuf>,
    /// JSON printed by `benches/python/squirrel_seed.py --images uint8`, merged into the
    /// end-to-end table of the compressible workload.
    #[arg(long)]
    python_images_json: Option<PathBuf>,
    /// Only the end-to-end tables (no engine workloads, reference points or open-time rows).
    #[arg(long)]
    end_to_end_only: bool,
}

/// `RunInfo::mode` of a run with `--end-to-end-only`; its results go to `end_to_end.*`.
const END_TO_END_MODE: &str = "end-to-end";

/// What `benches/python/squirrel_seed.py` prints.
#[derive(Debug, Deserialize)]
struct PythonSeed {
    version: String,
    shards: usize,
    samples_per_shard: usize,
    workers: usize,
    write_mbps: f64,
    read_decode_mbps: f64,
    get_shard_ms: f64,
    size_on_disk: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let mut info = RunInfo::collect(args.quick);
    if args.end_to_end_only {
        info.mode = END_TO_END_MODE.into();
    }
    let kinds: Vec<Kind> = match &args.engines {
        None => Kind::ALL.to_vec(),
        Some(ids) => {
            let mut kinds = Vec::new();
            for id in ids {
                let kind = Kind::ALL
                    .into_iter()
                    .find(|k| k.id() == id.as_str())
                    .with_context(|| format!("unknown engine {id:?}"))?;
                kinds.push(kind);
            }
            kinds.sort();
            kinds.dedup();
            kinds
        }
    };
    let which: Vec<Which> = match args.workload {
        _ if args.only_bulk || args.end_to_end_only => Vec::new(),
        Which::All => vec![Which::Seed, Which::Small, Which::Large],
        one => vec![one],
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tmp_parent = args.tmp.clone().unwrap_or_else(std::env::temp_dir);
    let root = tempfile::Builder::new()
        .prefix("squirrel-bench")
        .tempdir_in(&tmp_parent)
        .with_context(|| format!("creating a temporary directory in {}", tmp_parent.display()))?;

    let mut sections = Vec::new();
    let mut panels = Vec::new();
    let mut references = Vec::new();
    for w in which {
        eprintln!("generating workload {w:?}…");
        let w = workload::build(w, args.quick);
        let t = Instant::now();
        let figures = measure::run_workload(&kinds, &w, root.path(), threads);
        for (kind, f) in kinds.iter().zip(&figures) {
            if let Some(e) = &f.error {
                eprintln!("    {} on {}: error: {e}", w.name, kind.name());
            }
        }
        eprintln!("  {}: {:.1} s", w.name, t.elapsed().as_secs_f64());
        references.push((w.name, measure::reference(&w, root.path())?));
        panels.extend(plot_panels(&w, &kinds, &figures));
        let seq = references.last().map(|(_, r)| r.seq_write_mbps);
        sections.push(workload_section(&w, &kinds, &figures, threads, seq));
    }
    if !references.is_empty() {
        sections.push(reference_section(&references));
    }

    if !args.skip_bulk && !args.end_to_end_only {
        let sizes: &[usize] = if args.quick {
            &[2_000_000]
        } else {
            &[2_000_000, 10_000_000]
        };
        let mut results = Vec::new();
        for &n in sizes {
            for mode in [BulkMode::Batched, BulkMode::OneByOne] {
                for kind in [Kind::Squirrel, Kind::Lmdb] {
                    eprintln!("bulk load: {} with {n} keys, {mode:?}…", kind.name());
                    let t = Instant::now();
                    match measure::bulk(kind, n, mode, root.path()) {
                        Ok(r) => results.push(r),
                        Err(e) => eprintln!("    error: {e:#}"),
                    }
                    phase("bulk load", t);
                }
            }
        }
        sections.push(bulk_section(sizes, &results));
    }

    if !args.skip_open_scale && !args.only_bulk && !args.end_to_end_only {
        let sizes: &[usize] = if args.quick {
            &[100_000, 1_000_000]
        } else {
            &[1_000_000, 10_000_000]
        };
        let mut results = Vec::new();
        for &n in sizes {
            for kind in [Kind::Squirrel, Kind::Lmdb] {
                eprintln!("open time: {} with {n} keys…", kind.name());
                match measure::open_scale(kind, n, root.path()) {
                    Ok(r) => results.push(r),
                    Err(e) => eprintln!("    error: {e:#}"),
                }
            }
        }
        sections.push(open_scale_section(sizes, &results));
    }

    let read_python = |path: &Option<PathBuf>| -> Result<Option<PythonSeed>> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Ok(Some(
                    serde_json::from_str::<PythonSeed>(&text).context("parsing the Python JSON")?,
                ))
            }
            None => Ok(None),
        }
    };
    let e2e = if args.only_bulk {
        Vec::new()
    } else {
        vec![
            (
                peers::squirrel::Images::Floats,
                read_python(&args.python_json)?,
            ),
            (
                peers::squirrel::Images::Uint8,
                read_python(&args.python_images_json)?,
            ),
        ]
    };
    for (images, python) in e2e {
        eprintln!("end to end: {images:?} images through the Rust squirrel layer…");
        let rust = peers::squirrel::squirrel_layer_e2e(
            root.path(),
            images,
            workload::SEED_SHARDS,
            workload::SEED_SAMPLES,
            if args.quick { 30 } else { 100 },
            if args.quick { 3 } else { 7 },
        );
        if let Err(e) = &rust {
            eprintln!("    error: {e:#}");
        }
        sections.push(end_to_end_section(
            images,
            rust.as_ref().ok(),
            python.as_ref(),
        ));
    }

    root.close().context("removing the temporary stores")?;
    info.took_s = started.elapsed().as_secs_f64();
    write_outputs(&args.out, &info, &sections, &panels)?;
    Ok(())
}

/// Picks one figure out of an engine's [`Figures`].
type Metric = fn(&Figures) -> Option<f64>;

fn plot_panels(w: &Workload, kinds: &[Kind], figures: &[Figures]) -> Vec<plot::Panel> {
    let metrics: [(&str, Metric); 4] = [
        ("write, 1 sync at end (MB/s)", |f| f.write_mbps),
        ("write, fsync per put (MB/s)", |f| f.durable_mbps),
        ("random get, 1 thread (MB/s)", |f| f.get_mbps_1),
        ("full scan (MB/s)", |f| f.scan_mbps),
    ];
    metrics
        .iter()
        .map(|(title, get)| plot::Panel {
            title: format!("{}: {title}", w.name),
            bars: kinds
                .iter()
                .zip(figures)
                .map(|(k, f)| (k.id().to_owned(), get(f)))
                .collect(),
        })
        .collect()
}

/// Progress on stderr: how long a phase took.
fn phase(what: &str, since: Instant) {
    eprintln!("      {what}: {:.2} s", since.elapsed().as_secs_f64());
}

fn workload_section(
    w: &Workload,
    kinds: &[Kind],
    figures: &[Figures],
    threads: usize,
    seq_write_mbps: Option<f64>,
) -> Section {
    let durable_n = w.durable_writes.min(w.keys.len());
    let rows: Vec<(String, Better, Metric)> = vec![
        (
            "write, one put per value + 1 durable commit (MB/s ↑)".into(),
            Better::Higher,
            |f| f.write_mbps,
        ),
        (
            format!("write, durable commit per put, first {durable_n} values (MB/s ↑)"),
            Better::Higher,
            |f| f.durable_mbps,
        ),
        (
            "open existing store + 1 get (ms ↓)".into(),
            Better::Lower,
            |f| f.open_ms,
        ),
        (
            "random get, 1 thread (µs/get ↓)".into(),
            Better::Lower,
            |f| f.get_us_1,
        ),
        (
            "random get, 1 thread (MB/s ↑)".into(),
            Better::Higher,
            |f| f.get_mbps_1,
        ),
        (
            format!("random get, {threads} threads (µs/get per thread ↓)"),
            Better::Lower,
            |f| f.get_us_n,
        ),
        (
            format!("random get, {threads} threads (MB/s, all threads ↑)"),
            Better::Higher,
            |f| f.get_mbps_n,
        ),
        (
            "full scan of all keys (MB/s ↑)".into(),
            Better::Higher,
            |f| f.scan_mbps,
        ),
        (
            "size on disk ÷ raw value bytes (↓)".into(),
            Better::Lower,
            |f| f.disk_ratio,
        ),
        (
            "compaction, half the bytes dead (s ↓)".into(),
            Better::Lower,
            |f| f.compact_s,
        ),
        (
            "random get during compaction (µs/get ↓)".into(),
            Better::Lower,
            |f| f.compact_get_us,
        ),
    ];
    let mut notes = vec![
        format!(
            "{}; {:.1} MB of values in all (seeded RNG: every engine stores the same bytes).",
            w.description,
            w.raw_bytes() as f64 / 1e6
        ),
        format!(
            "Gets: {} random keys per thread. Durable-commit writes: the first {durable_n} values only.",
            w.gets
        ),
    ];
    if kinds.contains(&Kind::Sled) {
        notes.push("sled 0.34's `flush` on Linux ends with `sync_file_range`, not fsync/fdatasync: no device-cache flush and no metadata sync, so its durable-write figures are not a like-for-like durable commit.".into());
    }
    notes.push(
        "Compaction rows: squirrel-store only (`Engine::compact` on a store where every value was written twice, so half the bytes are dead, while one thread keeps getting random keys); the peers are not compacted.".into(),
    );
    for (k, f) in kinds.iter().zip(figures) {
        if let Some(e) = &f.error {
            notes.push(format!("**{} failed:** {e}", k.name()));
        }
    }
    let mut rows: Vec<Row> = rows
        .into_iter()
        .map(|(label, better, get)| Row {
            label,
            better,
            cells: figures
                .iter()
                .map(|f| match get(f) {
                    Some(v) => Cell::Num(v),
                    None if f.error.is_some() => Cell::Failed,
                    None => Cell::NotApplicable,
                })
                .collect(),
        })
        .collect();
    rows.push(Row {
        label: "compaction speed ÷ sequential write + 1 fsync of the same bytes, written just before and after it (↑)".into(),
        better: Better::Neither,
        cells: figures
            .iter()
            .map(|f| match (f.compact_mbps, f.compact_ref_mbps) {
                (Some(c), Some(s)) => Cell::Num(c / s),
                _ => Cell::NotApplicable,
            })
            .collect(),
    });
    rows.push(Row {
        label: "compaction speed ÷ the workload's sequential-write reference (↑)".into(),
        better: Better::Neither,
        cells: figures
            .iter()
            .map(|f| match (f.compact_mbps, seq_write_mbps) {
                (Some(c), Some(s)) => Cell::Num(c / s),
                _ => Cell::NotApplicable,
            })
            .collect(),
    });
    Section {
        title: format!("Workload `{}`", w.name),
        notes,
        columns: kinds.iter().map(|k| k.name().to_owned()).collect(),
        rows,
        ratio: kinds.first() == Some(&Kind::Squirrel) && kinds.len() > 1,
    }
}

fn bulk_section(sizes: &[usize], results: &[Bulk]) -> Section {
    let kinds = [Kind::Squirrel, Kind::Lmdb];
    let find = |kind: Kind, n: usize, mode: BulkMode| {
        results
            .iter()
            .find(|r| r.kind == kind && r.keys == n && r.mode == mode)
    };
    let mut rows = Vec::new();
    for &n in sizes {
        for (mode, how) in [
            (
                BulkMode::Batched,
                format!("batches of {}", measure::BULK_BATCH),
            ),
            (BulkMode::OneByOne, "one set per key".to_owned()),
        ] {
            let cell = |f: fn(&Bulk) -> f64| -> Vec<Cell> {
                kinds
                    .iter()
                    .map(|&k| find(k, n, mode).map_or(Cell::Failed, |r| Cell::Num(f(r))))
                    .collect()
            };
            rows.push(Row {
                label: format!("bulk load, {n} keys, {how} (MB/s ↑)"),
                better: Better::Higher,
                cells: cell(|r| r.mbps),
            });
            rows.push(Row {
                label: format!("bytes on disk per key beyond its value, {n} keys, {how} (↓)"),
                better: Better::Lower,
                cells: cell(|r| r.overhead_per_key),
            });
            rows.push(Row {
                label: format!("size shown by ls -l minus allocated, {n} keys, {how} (MB)"),
                better: Better::Neither,
                cells: cell(|r| r.apparent_minus_allocated_mb),
            });
        }
    }
    Section {
        title: "Bulk load (small keys)".into(),
        notes: vec![format!(
            "N keys of {} bytes into a fresh store, buffered (squirrel-store `Durability::Buffered`; LMDB `NO_SYNC`), one sync and a close at the end, all timed. Batched: `set_many` / one LMDB transaction per batch; one set per key: `set` / `put`, one LMDB transaction in all. Per-key overhead: bytes allocated after close minus value bytes, divided by N (keys are 13 bytes).",
            measure::OPEN_SCALE_VALUE
        )],
        columns: kinds.iter().map(|k| k.name().to_owned()).collect(),
        rows,
        ratio: true,
    }
}

fn reference_section(refs: &[(&str, Reference)]) -> Section {
    Section {
        title: "Reference points (same values, no engine)".into(),
        notes: vec![
            "memory scan: reading every value once from memory after a warm pass, the ceiling for a hot get or scan.".into(),
            "sequential write: every value appended to one file, then one fsync, the ceiling for a durable bulk write.".into(),
        ],
        columns: refs.iter().map(|(name, _)| format!("`{name}`")).collect(),
        rows: vec![
            Row {
                label: "memory scan (MB/s)".into(),
                better: Better::Neither,
                cells: refs.iter().map(|(_, r)| Cell::Num(r.memory_scan_mbps)).collect(),
            },
            Row {
                label: "sequential write + 1 fsync (MB/s)".into(),
                better: Better::Neither,
                cells: refs.iter().map(|(_, r)| Cell::Num(r.seq_write_mbps)).collect(),
            },
        ],
        ratio: false,
    }
}

fn open_scale_section(sizes: &[usize], results: &[OpenScale]) -> Section {
    let find = |kind: Kind, n: usize| results.iter().find(|r| r.kind == kind && r.keys == n);
    let kinds = [Kind::Squirrel, Kind::Lmdb];
    let mut rows = Vec::new();
    for &n in sizes {
        let cell = |f: fn(&OpenScale) -> Option<f64>| -> Vec<Cell> {
            kinds
                .iter()
                .map(|&k| find(k, n).map_or(Cell::Failed, |r| f(r).into()))
                .collect()
        };
        rows.push(Row {
            label: format!("open + 1 get, {n} keys (ms ↓)"),
            better: Better::Lower,
            cells: cell(|r| Some(r.open_ms)),
        });
        rows.push(Row {
            label: format!("records replayed at open, {n} keys"),
            better: Better::Neither,
            cells: cell(|r| r.replayed.map(|v| v as f64)),
        });
        rows.push(Row {
            label: format!("preallocated zero tail of the segment at open, {n} keys (MB)"),
            better: Better::Neither,
            cells: cell(|r| r.zero_tail.map(|v| v as f64 / 1e6)),
        });
        rows.push(Row {
            label: format!("build: one put per key + close, {n} keys (s ↓)"),
            better: Better::Lower,
            cells: cell(|r| Some(r.build_s)),
        });
        rows.push(Row {
            label: format!("size on disk, {n} keys (MB ↓)"),
            better: Better::Lower,
            cells: cell(|r| Some(r.disk_bytes as f64 / 1e6)),
        });
    }
    Section {
        title: "Open time at scale (small keys)".into(),
        notes: vec![format!(
            "Stores of N keys with {}-byte values, built with one put per key and closed; then open + one get (median of 3). squirrel-store's open should not grow with N (memory-mapped index, nothing replayed).",
            measure::OPEN_SCALE_VALUE
        )],
        columns: kinds.iter().map(|k| k.name().to_owned()).collect(),
        rows,
        ratio: true,
    }
}

fn end_to_end_section(
    images: peers::squirrel::Images,
    rust: Option<&peers::squirrel::EndToEnd>,
    python: Option<&PythonSeed>,
) -> Section {
    use peers::squirrel::Images;
    let (title, what) = match images {
        Images::Floats => (
            "End to end: seed workload through the squirrel layer",
            "float32 3×32×32 (uniform random: does not compress)",
        ),
        Images::Uint8 => (
            "End to end: compressible workload (uint8 images) through the squirrel layer",
            "uint8 3×32×32 with structure (a gradient rectangle with 1 bit of noise on a flat background: compresses)",
        ),
    };
    let mut notes = vec![format!(
        "{} shards × {} samples {{image: {what}, label, metadata}}, written with `SquirrelStore` + `MessagepackSerializer`, then all shards read and decoded in parallel, then random single-shard gets. MB/s counts raw image bytes.",
        workload::SEED_SHARDS,
        workload::SEED_SAMPLES
    )];
    notes.push("squirrel-store: typed samples (`NdArray` image) through `SquirrelStore` at default settings (`MessagepackSerializer::default()`: zstd level 3 kept only where it saves ≥ 20%), engine in `Durability::Buffered` and one `sync` at the end. Parallel read: `store.loader().samples()` (one worker per core); the plain loop is `get` of every key on one thread; both are the best of several interleaved rounds. Python: msgpack-numpy + gzip, one `KEY.gz` file per shard, no fsync, reads in a thread pool.".into());
    if rust.is_none() {
        notes.push("squirrel-store column: the Rust run failed (see the run's stderr).".into());
    }
    match python {
        Some(p) => notes.push(format!(
            "Python: squirrel-core {}, {} shards × {} samples, {} read workers.",
            p.version, p.shards, p.samples_per_shard, p.workers
        )),
        None => notes.push(
            "Python column: n/a (run `benches/run.sh`, which runs benches/python/squirrel_seed.py when squirrel-core is importable, or pass --python-json / --python-images-json).".into(),
        ),
    }
    let cells = |r: Option<f64>, p: Option<f64>| vec![Cell::from(r), Cell::from(p)];
    let speedup = |r: Option<f64>, p: Option<f64>, higher: bool| match (r, p) {
        (Some(r), Some(p)) if higher => Some(r / p),
        (Some(r), Some(p)) => Some(p / r),
        _ => None,
    };
    let info = |label: String, v: Option<f64>| Row {
        label,
        better: Better::Neither,
        cells: cells(v, None),
    };
    Section {
        title: title.into(),
        notes,
        columns: vec![
            "squirrel-store (Rust squirrel layer)".into(),
            "Python squirrel-core".into(),
        ],
        rows: vec![
            Row {
                label: "write all shards (MB/s ↑)".into(),
                better: Better::Higher,
                cells: cells(rust.map(|r| r.write_mbps), python.map(|p| p.write_mbps)),
            },
            Row {
                label: "read + decode all shards, parallel (MB/s ↑)".into(),
                better: Better::Higher,
                cells: cells(
                    rust.map(|r| r.read_decode_mbps),
                    python.map(|p| p.read_decode_mbps),
                ),
            },
            Row {
                label: "random shard get + decode (ms ↓)".into(),
                better: Better::Lower,
                cells: cells(rust.map(|r| r.get_shard_ms), python.map(|p| p.get_shard_ms)),
            },
            Row {
                label: "size on disk (MB ↓)".into(),
                better: Better::Lower,
                cells: cells(
                    rust.map(|r| r.disk_bytes as f64 / 1e6),
                    python.map(|p| p.size_on_disk as f64 / 1e6),
                ),
            },
            info(
                "write: × squirrel-core (target ≥ 20)".into(),
                speedup(
                    rust.map(|r| r.write_mbps),
                    python.map(|p| p.write_mbps),
                    true,
                ),
            ),
            info(
                "parallel read + decode: × squirrel-core (target ≥ 10)".into(),
                speedup(
                    rust.map(|r| r.read_decode_mbps),
                    python.map(|p| p.read_decode_mbps),
                    true,
                ),
            ),
            info(
                "random get + decode: × squirrel-core (target ≥ 50)".into(),
                speedup(
                    rust.map(|r| r.get_shard_ms),
                    python.map(|p| p.get_shard_ms),
                    false,
                ),
            ),
            info(
                "read + decode, plain loop on 1 thread (MB/s)".into(),
                rust.map(|r| r.loop_mbps),
            ),
            info(
                "Loader ÷ plain loop (×, target ≥ 1.7 on 2 cores)".into(),
                rust.map(|r| r.read_decode_mbps / r.loop_mbps),
            ),
            info(
                "CPU time, Loader ÷ plain loop (×; 1 = no extra work)".into(),
                rust.map(|r| r.loader_cpu_ratio),
            ),
            info(
                "Loader ÷ plain loop, metadata as inline strings (×)".into(),
                rust.map(|r| r.inline_loader_ratio),
            ),
            info(
                "core-to-core round trip in this run (ns; ~80 shared cache, ~360 not)".into(),
                rust.map(|r| r.core_round_trip_ns),
            ),
            info(
                format!(
                    "shards the default kept compressed (of {})",
                    workload::SEED_SHARDS
                ),
                rust.map(|r| r.compressed_shards as f64),
            ),
            info(
                "size on disk ÷ raw image bytes".into(),
                rust.map(|r| r.disk_bytes as f64 / r.raw_bytes as f64),
            ),
        ],
        ratio: true,
    }
}

fn write_outputs(
    out: &Path,
    info: &RunInfo,
    sections: &[Section],
    panels: &[plot::Panel],
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let heading = format!("squirrel-store vs peers — {} run, {}", info.mode, info.date);
    // An end-to-end-only run leaves latest.* (the last full table) alone.
    let stems: Vec<&str> = if info.mode == END_TO_END_MODE {
        vec!["end_to_end"]
    } else {
        vec!["latest", info.mode.as_str()]
    };
    for stem in stems {
        let svg = format!("{stem}.svg");
        plot::draw(&out.join(&svg), &heading, panels, 4)?;
        let md = report::document(info, sections, &svg);
        std::fs::write(out.join(format!("{stem}.md")), &md)?;
        let json = serde_json::json!({ "run": info, "sections": sections });
        std::fs::write(
            out.join(format!("{stem}.json")),
            serde_json::to_string_pretty(&json)?,
        )?;
        if stem != info.mode {
            println!("{md}");
        }
    }
    eprintln!("results written to {}", out.display());
    Ok(())
}
