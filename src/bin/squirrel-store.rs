//! `squirrel-store`: inspect, check and maintain stores, and move shards to and from Python
//! squirrel directories.
//!
//! A thin layer over the library: each subcommand parses its arguments, calls one or two library
//! functions and prints what they report. Exit codes: 0 success, 1 a problem was found (verify
//! found damage, a key does not exist), 2 a usage or I/O error.

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use squirrel_store::serializer::{Codec, MessagepackSerializer, Serializer};
use squirrel_store::transfer::{
    self, ExportOptions, ImportOptions, ScanDepth, ShardFailure, ShardScan,
};
use squirrel_store::{Config, Durability, Engine, Error, IndexCheck};

#[path = "squirrel-store/render.rs"]
mod render;

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  a problem was found: verify found damage, or the key does not exist (get, rm)
  2  a usage error, or an error that stopped the command (missing store, locked store, I/O)";

/// Inspect, check and maintain squirrel-store stores, and move shards to and from Python squirrel.
///
/// A store is a directory holding segment.sqs (the data), index.sqi and LOCK. One process at a
/// time may write to a store; the read-only commands (stats, verify, keys, get, export) work while
/// a writer runs. Long commands (verify, compact, import, export, stats --compression) show a
/// progress bar on standard error when it is a terminal, and nothing when it is not.
#[derive(Parser, Debug)]
#[command(name = "squirrel-store", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the size of a store: keys, live and dead records, file sizes, format version.
    ///
    /// Opens the store read-only, so it works while a writer runs. Dead records are overwritten or
    /// deleted values that `compact` would drop.
    #[command(after_help = EXIT_CODES)]
    Stats {
        /// The store directory.
        store: PathBuf,
        /// Print one JSON object instead of text. Its `keys` field is the number of live keys.
        #[arg(long)]
        json: bool,
        /// Also measure the compression ratio of the shards: payload bytes (what Python keeps
        /// gunzipped in KEY.gz) per stored byte. Reads every live record, so it takes as long as
        /// reading the whole store; zstd frames are decompressed only when their header does not
        /// state their size.
        #[arg(long)]
        compression: bool,
    },
    /// Check every record's checksum and decode every shard; list what is damaged.
    ///
    /// Reads the whole segment without trusting the index, names each damaged record by offset
    /// and key, checks the index against the segment, then decompresses every live shard and
    /// decodes its MessagePack samples. A torn tail (an unfinished last write left by a crash) is
    /// reported but is not damage: the next read-write open cuts it off. Works while a writer runs.
    /// Exits with 1 if anything is damaged.
    #[command(after_help = EXIT_CODES)]
    Verify {
        /// The store directory.
        store: PathBuf,
    },
    /// Rewrite the store without dead records and give the space back.
    ///
    /// Needs the writer lock (fails if another process is writing) and about the live bytes in
    /// free space. Readers keep reading meanwhile. Prints the sizes before and after.
    #[command(after_help = EXIT_CODES)]
    Compact {
        /// The store directory.
        store: PathBuf,
    },
    /// List the keys of a store, one per line, sorted.
    #[command(after_help = EXIT_CODES)]
    Keys {
        /// The store directory.
        store: PathBuf,
    },
    /// Show one shard: a summary of its samples, its raw payload, or its samples as JSON.
    ///
    /// Without options it prints the codec, sizes and a one-line summary of the first samples.
    /// Exits with 1 if the key does not exist.
    #[command(after_help = EXIT_CODES)]
    Get {
        /// The store directory.
        store: PathBuf,
        /// The key of the shard.
        key: String,
        /// Write the shard's payload to standard output: its samples' MessagePack, concatenated
        /// and decompressed, exactly what Python squirrel keeps (gzipped) in KEY.gz. For a record
        /// that holds raw bytes, those bytes.
        #[arg(long, conflicts_with = "json")]
        raw: bool,
        /// Print each sample as one line of JSON. numpy arrays become {"dtype", "shape", "data"}
        /// with data a flat list of numbers in C order (base64 for dtypes other than bool,
        /// integers and floats); bytes become base64 strings; maps with string keys become
        /// objects, other maps {"$map": [[key, value], ...]}.
        #[arg(long)]
        json: bool,
    },
    /// Delete a key. Exits with 1 if the key does not exist.
    #[command(after_help = EXIT_CODES)]
    Rm {
        /// The store directory.
        store: PathBuf,
        /// The key to delete.
        key: String,
    },
    /// Copy every shard of a Python squirrel directory (KEY.gz files) into a store.
    ///
    /// Each file's gunzipped payload is checked to be whole MessagePack samples and stored
    /// unchanged, compressed with zstd, under KEY (sub/KEY for files in subdirectories). Creates
    /// the store if needed. Safe to run again, also after an interrupted run: shards the store
    /// already holds identically are skipped, changed ones are overwritten, other keys are left
    /// alone.
    #[command(after_help = EXIT_CODES)]
    Import {
        /// The Python squirrel directory to read.
        squirrel_dir: PathBuf,
        /// The store directory to write (created if missing).
        store: PathBuf,
        /// zstd compression level (1-22; higher is smaller and slower). Shards the store already
        /// holds identically are not recompressed.
        #[arg(long, default_value_t = MessagepackSerializer::DEFAULT_LEVEL,
              value_parser = clap::value_parser!(i32).range(1..=22))]
        level: i32,
        /// Only the shards at the top of the directory, not those in subdirectories.
        #[arg(long)]
        top_level_only: bool,
    },
    /// Write every shard of a store into a Python squirrel directory as KEY.gz files.
    ///
    /// Python squirrel-core reads the result as it reads its own stores. Files are replaced
    /// atomically; other files in the directory are left alone. Records that hold raw bytes
    /// (written with the byte-level API, not shards) are skipped with a warning.
    #[command(after_help = EXIT_CODES)]
    Export {
        /// The store directory to read.
        store: PathBuf,
        /// The Python squirrel directory to write (created if missing).
        squirrel_dir: PathBuf,
    },
    /// Rebuild the index file from a full scan of the segment.
    ///
    /// The index is derived data; rebuild it when verify reports it inconsistent. Needs the
    /// writer lock.
    #[command(after_help = EXIT_CODES)]
    RebuildIndex {
        /// The store directory.
        store: PathBuf,
    },
}

/// How a command that ran to its end came out.
enum Outcome {
    /// Exit 0.
    Done,
    /// Exit 1: the command worked and found a problem, already reported.
    Problem,
}

/// What stopped a command: exit 2.
enum CliError {
    Store(Error),
    Output(io::Error),
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Store(e)
    }
}

impl From<io::Error> for CliError {
    fn from(e: io::Error) -> Self {
        CliError::Output(e)
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Store(e) => write!(f, "{e}"),
            CliError::Output(e) => write!(f, "cannot write to standard output: {e}"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Problem) => ExitCode::from(1),
        // A reader that stopped reading (`| head`) is not an error.
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            eprintln!("squirrel-store: error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<Outcome, CliError> {
    match command {
        Command::Stats {
            store,
            json,
            compression,
        } => stats(&store, json, compression),
        Command::Verify { store } => verify(&store),
        Command::Compact { store } => compact(&store),
        Command::Keys { store } => keys(&store),
        Command::Get {
            store,
            key,
            raw,
            json,
        } => get(&store, &key, raw, json),
        Command::Rm { store, key } => rm(&store, &key),
        Command::Import {
            squirrel_dir,
            store,
            level,
            top_level_only,
        } => import(&squirrel_dir, &store, level, top_level_only),
        Command::Export {
            store,
            squirrel_dir,
        } => export(&store, &squirrel_dir),
        Command::RebuildIndex { store } => rebuild_index(&store),
    }
}

fn open_read_only(store: &Path) -> Result<Engine, Error> {
    Config::new(store).read_only(true).open()
}

/// Opens an existing store for writing.
fn open_writable(store: &Path) -> Result<Engine, Error> {
    Config::new(store)
        .create(false)
        .durability(Durability::Buffered)
        .open()
}

/// A progress bar on standard error when it is a terminal; hidden otherwise.
fn progress_bar(what: &'static str, bytes: bool) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = if bytes {
        "{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})"
    } else {
        "{msg} [{bar:40}] {pos}/{len} shards ({eta})"
    };
    let bar = ProgressBar::new(0).with_message(what);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The `progress(done, total)` callback the library takes, driving `bar`.
fn tick(bar: &ProgressBar) -> impl FnMut(u64, u64) + '_ {
    move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }
}

/// `stats --json`, fields in this order.
#[derive(serde::Serialize)]
struct StatsJson {
    store: String,
    format_version: u32,
    /// Live keys.
    keys: u64,
    live_records: u64,
    live_bytes: u64,
    dead_records: u64,
    dead_bytes: u64,
    dead_ratio: f64,
    segment_len: u64,
    segment_file_len: u64,
    index_file_len: u64,
    torn_tail_bytes: u64,
    /// `null` without `--compression`.
    compression: Option<CompressionJson>,
}

#[derive(serde::Serialize)]
struct CompressionJson {
    shards: u64,
    raw_records: u64,
    stored_bytes: u64,
    payload_bytes: u64,
    ratio: f64,
    /// Shards stored as zstd frames (codec 2).
    compressed: TallyJson,
    /// Shards stored as plain MessagePack (codec 1).
    uncompressed: TallyJson,
    unreadable: usize,
}

/// One codec's shards, with the same field names as the totals above.
#[derive(serde::Serialize)]
struct TallyJson {
    shards: u64,
    stored_bytes: u64,
    payload_bytes: u64,
}

impl From<transfer::CodecTally> for TallyJson {
    fn from(t: transfer::CodecTally) -> Self {
        TallyJson {
            shards: t.shards,
            stored_bytes: t.stored_bytes,
            payload_bytes: t.payload_bytes,
        }
    }
}

fn stats(store: &Path, as_json: bool, compression: bool) -> Result<Outcome, CliError> {
    let engine = open_read_only(store)?;
    let st = engine.stats();
    let scan = if compression {
        let bar = progress_bar("reading shards", false);
        let scan = transfer::scan_shards(
            &engine,
            &MessagepackSerializer::default(),
            ScanDepth::Sizes,
            &mut tick(&bar),
        )?;
        bar.finish_and_clear();
        Some(scan)
    } else {
        None
    };
    let mut out = io::stdout().lock();
    if as_json {
        let obj = StatsJson {
            store: store.display().to_string(),
            format_version: st.format_version,
            keys: engine.len(),
            live_records: st.live_records,
            live_bytes: st.live_bytes,
            dead_records: st.dead_records,
            dead_bytes: st.dead_bytes,
            dead_ratio: st.dead_ratio(),
            segment_len: st.segment_len,
            segment_file_len: st.segment_file_len,
            index_file_len: st.index_file_len,
            torn_tail_bytes: st.torn_tail_bytes,
            compression: scan.as_ref().map(|c| CompressionJson {
                shards: c.shards,
                raw_records: c.raw_records,
                stored_bytes: c.stored_bytes,
                payload_bytes: c.payload_bytes,
                ratio: c.compression_ratio(),
                compressed: c.compressed.into(),
                uncompressed: c.uncompressed.into(),
                unreadable: c.failures.len(),
            }),
        };
        let obj = serde_json::to_string(&obj).map_err(io::Error::from)?;
        writeln!(out, "{obj}")?;
        return Ok(Outcome::Done);
    }
    writeln!(out, "store           {}", store.display())?;
    writeln!(out, "format version  {}", st.format_version)?;
    writeln!(out, "keys            {}", engine.len())?;
    writeln!(
        out,
        "live records    {} ({})",
        st.live_records,
        HumanBytes(st.live_bytes)
    )?;
    writeln!(
        out,
        "dead records    {} ({})",
        st.dead_records,
        HumanBytes(st.dead_bytes)
    )?;
    writeln!(out, "dead ratio      {:.1}%", st.dead_ratio() * 100.0)?;
    writeln!(
        out,
        "segment file    {} ({} in records)",
        HumanBytes(st.segment_file_len),
        HumanBytes(st.segment_len)
    )?;
    writeln!(out, "index file      {}", HumanBytes(st.index_file_len))?;
    if st.torn_tail_bytes > 0 {
        writeln!(
            out,
            "torn tail       {} bytes, left by a crash; cut off at the next read-write open",
            st.torn_tail_bytes
        )?;
    }
    match &scan {
        None => writeln!(
            out,
            "compression     not measured (--compression reads every shard)"
        )?,
        Some(c) => {
            writeln!(
                out,
                "compression     {:.2}x: {} of payload in {} stored, over {} shards",
                c.compression_ratio(),
                HumanBytes(c.payload_bytes),
                HumanBytes(c.stored_bytes),
                c.shards
            )?;
            writeln!(
                out,
                "  compressed    {} shards: {} of payload in {} stored",
                c.compressed.shards,
                HumanBytes(c.compressed.payload_bytes),
                HumanBytes(c.compressed.stored_bytes)
            )?;
            writeln!(
                out,
                "  uncompressed  {} shards: {} stored",
                c.uncompressed.shards,
                HumanBytes(c.uncompressed.stored_bytes)
            )?;
            if c.raw_records > 0 {
                writeln!(out, "raw records     {} (not shards)", c.raw_records)?;
            }
            if !c.failures.is_empty() {
                writeln!(
                    out,
                    "unreadable      {} records (run `squirrel-store verify`)",
                    c.failures.len()
                )?;
            }
        }
    }
    Ok(Outcome::Done)
}

fn verify(store: &Path) -> Result<Outcome, CliError> {
    let bar = progress_bar("checking records", true);
    let report = squirrel_store::verify(store, &mut tick(&bar))?;
    bar.finish_and_clear();
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{}: {} records read, {} intact, {} live keys",
        store.display(),
        report.records,
        report.intact,
        report.live_keys
    )?;
    let mut problems = 0usize;
    for d in &report.damaged {
        problems += 1;
        match &d.key {
            Some(k) => writeln!(
                out,
                "damaged record at offset {} (key {k:?}): {}",
                d.offset, d.what
            )?,
            None => writeln!(out, "damaged record at offset {}: {}", d.offset, d.what)?,
        }
    }
    if let Some((offset, bytes)) = report.torn_tail {
        writeln!(
            out,
            "torn tail of {bytes} bytes at offset {offset}, left by a crash; it is cut off at the \
             next read-write open"
        )?;
    }
    match &report.index {
        IndexCheck::Consistent => writeln!(out, "index: consistent")?,
        IndexCheck::Unusable => writeln!(
            out,
            "index: missing or left unfinished by a crash; it is rebuilt at the next read-write open"
        )?,
        IndexCheck::Inconsistent(issues) => {
            problems += 1;
            for issue in issues {
                writeln!(out, "index: {issue}")?;
            }
            writeln!(
                out,
                "index: inconsistent with the segment; `squirrel-store rebuild-index` rebuilds it"
            )?;
        }
        other => writeln!(out, "index: {other:?}")?,
    }
    // The records are checked; now what a reader of each shard would do with it.
    let bar = progress_bar("decoding shards", false);
    let scan = open_read_only(store).and_then(|engine| {
        transfer::scan_shards(
            &engine,
            &MessagepackSerializer::default(),
            ScanDepth::Samples,
            &mut tick(&bar),
        )
    });
    bar.finish_and_clear();
    match scan {
        Ok(scan) => problems += report_shards(&mut out, &scan, &report.damaged)?,
        // A store too damaged to open already has its damage listed above.
        Err(e) if report.is_corrupt() => writeln!(out, "shards: not decoded: {e}")?,
        Err(e) => return Err(e.into()),
    }
    if problems == 0 {
        writeln!(out, "ok")?;
        Ok(Outcome::Done)
    } else {
        writeln!(out, "damaged: {problems} problems found")?;
        Ok(Outcome::Problem)
    }
}

/// Prints the shard scan of `verify`; returns the number of problems not already listed.
fn report_shards(
    out: &mut impl Write,
    scan: &ShardScan,
    damaged: &[squirrel_store::Damage],
) -> io::Result<usize> {
    writeln!(
        out,
        "shards: {} decoded, {} samples{}",
        scan.shards,
        scan.samples,
        if scan.raw_records > 0 {
            format!(
                "; {} records of raw bytes (not shards) not decoded",
                scan.raw_records
            )
        } else {
            String::new()
        }
    )?;
    let mut problems = 0;
    for ShardFailure { key, error } in &scan.failures {
        // A damaged record was listed by the segment scan.
        let listed = matches!(error, Error::Corruption { .. })
            && damaged.iter().any(|d| d.key.as_deref() == Some(key));
        if !listed {
            problems += 1;
            writeln!(out, "bad shard {key:?}: {error}")?;
        }
    }
    Ok(problems)
}

fn compact(store: &Path) -> Result<Outcome, CliError> {
    let engine = open_writable(store)?;
    let bar = progress_bar("compacting", true);
    let report = engine.compact_with_progress(&mut tick(&bar))?;
    bar.finish_and_clear();
    engine.close()?;
    writeln!(
        io::stdout().lock(),
        "compacted {}: {} before, {} after, {} reclaimed; {} live records",
        store.display(),
        HumanBytes(report.bytes_before),
        HumanBytes(report.bytes_after),
        HumanBytes(report.reclaimed()),
        report.live_records
    )?;
    Ok(Outcome::Done)
}

fn keys(store: &Path) -> Result<Outcome, CliError> {
    let engine = open_read_only(store)?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    for key in engine.keys()? {
        writeln!(out, "{key}")?;
    }
    out.flush()?;
    Ok(Outcome::Done)
}

fn missing_key(store: &Path, key: &str) -> Outcome {
    eprintln!("squirrel-store: no key {key:?} in {}", store.display());
    Outcome::Problem
}

fn get(store: &Path, key: &str, raw: bool, as_json: bool) -> Result<Outcome, CliError> {
    let engine = open_read_only(store)?;
    let Some(stored) = engine.get(key)? else {
        return Ok(missing_key(store, key));
    };
    let serializer = MessagepackSerializer::default();
    let shard_err = |source| Error::Shard {
        key: key.to_owned(),
        source,
    };
    let codec = Codec::try_from(stored.codec()).map_err(shard_err)?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    if raw {
        match codec {
            Codec::Raw => out.write_all(&stored)?,
            _ => out.write_all(
                &serializer
                    .decode_payload(codec, &stored)
                    .map_err(shard_err)?,
            )?,
        }
    } else if as_json {
        for sample in serializer
            .decode_values(codec, &stored)
            .map_err(shard_err)?
        {
            writeln!(out, "{}", render::json_line(&sample))?;
        }
    } else {
        summarize(&mut out, key, codec, &stored, &serializer).map_err(|e| match e {
            Summary::Shard(source) => CliError::Store(shard_err(source)),
            Summary::Io(e) => CliError::Output(e),
        })?;
    }
    out.flush()?;
    Ok(Outcome::Done)
}

/// Samples shown by `get` without options.
const SUMMARY_SAMPLES: usize = 10;
/// Characters of one sample's summary line.
const SUMMARY_WIDTH: usize = 160;

enum Summary {
    Shard(squirrel_store::serializer::ShardError),
    Io(io::Error),
}

impl From<io::Error> for Summary {
    fn from(e: io::Error) -> Self {
        Summary::Io(e)
    }
}

fn summarize(
    out: &mut impl Write,
    key: &str,
    codec: Codec,
    stored: &[u8],
    serializer: &MessagepackSerializer,
) -> Result<(), Summary> {
    writeln!(out, "key       {key}")?;
    let name = match codec {
        Codec::Raw => "raw bytes (0)",
        Codec::Msgpack => "msgpack (1)",
        Codec::MsgpackZstd => "msgpack+zstd (2)",
    };
    writeln!(out, "codec     {name}")?;
    writeln!(out, "stored    {} bytes", stored.len())?;
    if codec == Codec::Raw {
        writeln!(out, "not a shard; --raw writes its bytes")?;
        return Ok(());
    }
    let payload = serializer
        .decode_payload(codec, stored)
        .map_err(Summary::Shard)?;
    writeln!(out, "payload   {} bytes", payload.len())?;
    let samples = squirrel_store::serializer::decode_values(&payload).map_err(Summary::Shard)?;
    writeln!(out, "samples   {}", samples.len())?;
    for (i, s) in samples.iter().take(SUMMARY_SAMPLES).enumerate() {
        let mut line = render::summary(s);
        if let Some((cut, _)) = line.char_indices().nth(SUMMARY_WIDTH) {
            line.truncate(cut);
            line.push('…');
        }
        writeln!(out, "  {i:<6}  {line}")?;
    }
    if samples.len() > SUMMARY_SAMPLES {
        writeln!(
            out,
            "  … {} more samples (--json prints them all)",
            samples.len() - SUMMARY_SAMPLES
        )?;
    }
    Ok(())
}

fn rm(store: &Path, key: &str) -> Result<Outcome, CliError> {
    let engine = open_writable(store)?;
    let existed = engine.delete(key)?;
    engine.sync()?;
    engine.close()?;
    Ok(if existed {
        Outcome::Done
    } else {
        missing_key(store, key)
    })
}

fn import(src: &Path, store: &Path, level: i32, top_level_only: bool) -> Result<Outcome, CliError> {
    // Checked before the store is created, so a mistyped source leaves nothing behind.
    if let Err(source) = std::fs::read_dir(src) {
        return Err(Error::Io {
            path: src.to_owned(),
            source,
        }
        .into());
    }
    // Buffered: a killed import leaves every record it finished whole (and a torn tail at most);
    // the import syncs once at the end.
    let engine = Config::new(store).durability(Durability::Buffered).open()?;
    let opts = ImportOptions::new()
        .nested(!top_level_only)
        .serializer(MessagepackSerializer::new().level(level));
    let bar = progress_bar("importing", false);
    let report = transfer::import_squirrel_dir(src, &engine, &opts, &mut tick(&bar))?;
    bar.finish_and_clear();
    engine.close()?;
    writeln!(
        io::stdout().lock(),
        "imported {} into {}: {} shards ({} written, {} unchanged), {} samples, {} of payload \
         stored as {}",
        src.display(),
        store.display(),
        report.shards,
        report.written,
        report.unchanged,
        report.samples,
        HumanBytes(report.payload_bytes),
        HumanBytes(report.stored_bytes)
    )?;
    Ok(Outcome::Done)
}

fn export(store: &Path, dst: &Path) -> Result<Outcome, CliError> {
    let engine = open_read_only(store)?;
    let bar = progress_bar("exporting", false);
    let report =
        transfer::export_squirrel_dir(&engine, dst, &ExportOptions::new(), &mut tick(&bar))?;
    bar.finish_and_clear();
    if !report.skipped_raw.is_empty() {
        const SHOWN: usize = 5;
        let mut names: Vec<String> = report
            .skipped_raw
            .iter()
            .take(SHOWN)
            .map(|k| format!("{k:?}"))
            .collect();
        if report.skipped_raw.len() > SHOWN {
            names.push(format!("… {} more", report.skipped_raw.len() - SHOWN));
        }
        eprintln!(
            "squirrel-store: warning: skipped {} records of raw bytes (not shards): {}",
            report.skipped_raw.len(),
            names.join(", ")
        );
    }
    writeln!(
        io::stdout().lock(),
        "exported {} into {}: {} shards, {} of payload in {} of gzip files",
        store.display(),
        dst.display(),
        report.shards,
        HumanBytes(report.payload_bytes),
        HumanBytes(report.file_bytes)
    )?;
    Ok(Outcome::Done)
}

fn rebuild_index(store: &Path) -> Result<Outcome, CliError> {
    // Checked first so that a path that holds no store is reported as such, and is left as it was.
    drop(open_read_only(store)?);
    let stats = squirrel_store::rebuild_index(store)?;
    writeln!(
        io::stdout().lock(),
        "rebuilt the index of {}: {} keys",
        store.display(),
        stats.live_records
    )?;
    Ok(Outcome::Done)
}
