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
use squirrel_store::serializer::{
    Codec, MessagepackSerializer, SampleBytes, SampleCounter, Serializer, ShardError,
};
use squirrel_store::transfer::{
    self, ExportOptions, ImportOptions, ScanDepth, ShardFailure, ShardScan,
};
use squirrel_store::value::Value;
use squirrel_store::{Config, Durability, Engine, Error, IndexCheck};

#[path = "squirrel-store/remote.rs"]
mod remote;
#[path = "squirrel-store/render.rs"]
mod render;

/// Set by `--quiet`.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// `writeln!` for informational lines, which `--quiet` leaves out; `?` on the write.
macro_rules! info {
    ($quiet:expr, $out:expr, $($fmt:tt)+) => {
        if !$quiet {
            writeln!($out, $($fmt)+)?;
        }
    };
}

/// What each subcommand's help says about exit status: the paragraph itself is in `--help`.
const EXIT_POINTER: &str =
    "Exit status: 0 success, 1 a problem was found, 2 an error; see `squirrel-store --help`.";

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  a problem was found: verify found damage; the key does not exist (get, rm) or its record is
     damaged (get); import skipped files whose names make no key, or (--keep-going) could not
     import some; export skipped keys that make no file name; keys --null met a key containing
     NUL
  2  a usage error, or an error that stopped the command (missing store, locked store, I/O)";

/// Inspect, check and maintain squirrel-store stores, and move shards to and from Python squirrel.
///
/// A store is a directory holding segment.sqs (the data), its index (index.sqm naming
/// index-*.sqr runs; index.sqi in stores written before index format 3) and LOCK. One process at a
/// time may write to a store; the read-only commands (stats, verify, keys, get, export) work while
/// a writer runs. Long commands (verify, compact, import, export, stats --compression) show a
/// progress bar on standard error when it is a terminal, and nothing when it is not.
///
/// The exit status of every command is described below.
#[derive(Parser, Debug)]
#[command(name = "squirrel-store", version, after_help = EXIT_CODES)]
struct Cli {
    /// Print no progress bars, warnings or summaries: only what a command is asked for (stats,
    /// keys, get, --json), the problems behind an exit status of 1, and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// An object-storage option for a store given as a URL (s3://, gs://, az://, http(s)://,
    /// file://), as `KEY=VALUE` with `object_store`'s keys (`aws_endpoint`, `aws_region`,
    /// `aws_allow_http`, `google_service_account`, ...); repeatable. Credentials and endpoints
    /// are otherwise read from the provider's environment variables (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, ...).
    #[arg(short = 'o', long = "option", global = true, value_name = "KEY=VALUE")]
    options: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the size of a store: keys, live and dead records, file sizes, format version.
    ///
    /// Bytes of records count each record whole (header, key and value), as `compact` counts
    /// them; bytes stored (`--compression`, `import`) count the values alone, as kept on disk
    /// after compression; payload bytes count the values decompressed (what Python squirrel
    /// keeps gunzipped in KEY.gz).
    ///
    /// Opens the store read-only, so it works while a writer runs. Dead records are overwritten or
    /// deleted values that `compact` would drop.
    #[command(after_help = EXIT_POINTER)]
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
    #[command(after_help = EXIT_POINTER)]
    Verify {
        /// The store directory.
        store: PathBuf,
        /// Print the findings as one JSON object instead of text: `ok`, `problems`, `records`,
        /// `intact`, `live_keys`, `damaged` (a list of {offset, key, what}), `torn_tail` ({offset,
        /// bytes} or null), `index` ({state, issues}) and `shards` ({decoded, samples,
        /// raw_records, failures: [{key, error}]}, or {error} when the shards could not be read).
        /// The exit status is the same as without it.
        #[arg(long)]
        json: bool,
    },
    /// Rewrite the store without dead records and give the space back.
    ///
    /// Needs the writer lock (fails if another process is writing) and about the live bytes in
    /// free space. Readers keep reading meanwhile. Prints the sizes before and after.
    #[command(after_help = EXIT_POINTER)]
    Compact {
        /// The store directory.
        store: PathBuf,
        /// Print the report as one JSON object: `segment_len_before` / `_after` (bytes of
        /// records, as `stats` names them), `segment_file_len_before` / `_after` (file lengths),
        /// `dropped` (dead record bytes), `reclaimed` (file bytes given back), `live_records`.
        #[arg(long)]
        json: bool,
    },
    /// List the keys of a store, one per line, sorted.
    ///
    /// So that every line is one key, a key's backslashes are written as `\\` and its control
    /// characters escaped: `\n`, `\r`, `\t`, others as `\u{XX}` (hex code point). Keys without
    /// those are written as they are. With --null, keys are written unescaped, each followed by a
    /// NUL byte (for `xargs -0`); a key that itself contains NUL cannot be written that way and is
    /// reported on standard error instead (exit status 1).
    #[command(after_help = EXIT_POINTER)]
    Keys {
        /// The store directory.
        store: PathBuf,
        /// Print the keys as one JSON array of strings (unescaped; JSON has its own escapes).
        #[arg(long, conflicts_with = "null")]
        json: bool,
        /// End each key with a NUL byte instead of a newline, and do not escape it.
        #[arg(long, short = '0')]
        null: bool,
    },
    /// Show one shard: a summary of its samples, its raw payload, or its samples as JSON.
    ///
    /// Without options it prints the codec, sizes and a one-line summary of the first samples.
    /// Exits with 1 if the key does not exist, or its record is damaged or holds no readable
    /// shard (the error names the key; nothing else is printed for it).
    #[command(after_help = EXIT_POINTER)]
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
    #[command(after_help = EXIT_POINTER)]
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
    /// alone. Payloads are streamed, and one that gunzips to more than 1 GiB is refused (a
    /// decompression bomb). Files whose names make no key (not UTF-8, a backslash) are not
    /// imported: they are listed on standard error and the exit status is 1.
    #[command(after_help = EXIT_POINTER)]
    Import {
        /// The Python squirrel directory to read.
        squirrel_dir: PathBuf,
        /// The store directory to write (created if missing).
        store: PathBuf,
        /// Compress every shard with zstd at this level (1-22; higher is smaller and slower).
        /// Without it, as the library's default: zstd level 3, kept only for the shards where it
        /// saves at least 20% (the others are stored as they are). Shards the store already
        /// holds identically are not recompressed.
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..=22))]
        level: Option<i32>,
        /// Only the shards at the top of the directory, not those in subdirectories.
        #[arg(long)]
        top_level_only: bool,
        /// Import every shard file that can be imported: list those that cannot (not gzip, not
        /// whole MessagePack samples, too large, unreadable) on standard error, store the others,
        /// and exit with 1. Without it the import stops at the first such file (exit 2); shards
        /// of earlier batches stay stored either way.
        #[arg(long)]
        keep_going: bool,
        /// Print the report as one JSON object: `shards`, `written`, `unchanged`, `samples`,
        /// `payload_bytes`, `stored_bytes`, `skipped` (file names that make no key) and `failed`
        /// ([{key, error}], with --keep-going).
        #[arg(long)]
        json: bool,
    },
    /// Write every shard of a store into a Python squirrel directory as KEY.gz files.
    ///
    /// Python squirrel-core reads the result as it reads its own stores. Files are replaced
    /// atomically; other files in the directory are left alone. Records that hold raw bytes
    /// (written with the byte-level API, not shards) are skipped with a warning. Keys that cannot
    /// name a file inside the directory (`..`, a backslash, a component too long for a file
    /// name) are reported and skipped, the others still exported, and the exit status is 1.
    #[command(after_help = EXIT_POINTER)]
    Export {
        /// The store directory to read.
        store: PathBuf,
        /// The Python squirrel directory to write (created if missing).
        squirrel_dir: PathBuf,
        /// Print the report as one JSON object: `shards`, `payload_bytes`, `file_bytes`,
        /// `skipped_raw` (keys of raw-byte records) and `invalid_keys` ([{key, reason}]).
        #[arg(long)]
        json: bool,
    },
    /// Store one shard from a file: a Python squirrel shard file (KEY.gz) or its gunzipped
    /// MessagePack samples.
    ///
    /// The payload is checked to be whole MessagePack samples, then stored as `import` stores it
    /// (zstd where it saves at least 20%), replacing any shard under that key. The key is the
    /// file's name without `.gz` unless --key gives one. Creates the store if needed.
    #[command(after_help = EXIT_POINTER)]
    Put {
        /// The store directory (created if missing).
        store: PathBuf,
        /// The shard file: gzip'd or plain MessagePack samples.
        file: PathBuf,
        /// The key to store the shard under (default: the file name without `.gz`).
        #[arg(long)]
        key: Option<String>,
    },
    /// Print a shell completion script for bash, zsh, fish, elvish or powershell.
    ///
    /// For example `squirrel-store completions bash > ~/.local/share/bash-completion/completions/squirrel-store`.
    #[command(after_help = EXIT_POINTER)]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Repair a damaged store: save, then remove, every damaged record.
    ///
    /// Scans the whole segment, copies every damaged record into STORE/lost+found/ (synced),
    /// deletes each key whose newest record is damaged, and compacts. Every other record keeps
    /// its newest value, and the store then verifies clean. Nothing is destroyed: what is
    /// removed is in lost+found/. Needs the writer lock.
    #[command(after_help = EXIT_POINTER)]
    Repair {
        /// The store directory.
        store: PathBuf,
    },
    /// Publish a store to object storage, so that readers see all of it or nothing.
    ///
    /// Uploads the segment (multipart when large), the index, the key list, and a manifest
    /// (store.json) last. A store not closed cleanly is opened and closed first (which needs
    /// the writer lock). A reader that had an older publication open gets a clear "replaced"
    /// error, never a mix. Stores on object storage are read-only: the read commands (stats,
    /// verify, keys, get, export) take the URL in place of a directory.
    #[command(after_help = EXIT_POINTER)]
    Push {
        /// The store directory.
        store: PathBuf,
        /// Where to publish it: s3://bucket/prefix, gs://..., az://..., file:///...
        url: String,
    },
    /// Download a published store into a new local directory.
    #[command(after_help = EXIT_POINTER)]
    Pull {
        /// The published store's URL.
        url: String,
        /// The directory to create (it must hold no store).
        store: PathBuf,
    },
    /// Datasets of many published stores: a dataset.json at a URL prefix listing them.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Rebuild the index file from a full scan of the segment.
    ///
    /// The index is derived data; rebuild it when verify reports it inconsistent. The new index
    /// is written beside the old one and renamed into place, so a failure changes nothing.
    /// Damaged records stay (see `repair`). Needs the writer lock.
    #[command(after_help = EXIT_POINTER)]
    RebuildIndex {
        /// The store directory.
        store: PathBuf,
    },
}

/// `squirrel-store dataset ...`.
#[derive(Subcommand, Debug)]
enum DatasetCommand {
    /// Add a published store to a dataset (or update its entry), creating the dataset if
    /// needed. Safe to run from many nodes at once: the manifest is replaced with a conditional
    /// put, retried on conflict, so no entry is lost. Keys must be unique across the dataset:
    /// opening it fails naming a key that two stores hold.
    #[command(after_help = EXIT_POINTER)]
    Add {
        /// The dataset's URL (a prefix; its manifest is DATASET/dataset.json).
        dataset: String,
        /// The published store's URL (best under the dataset's prefix: it is then recorded
        /// relative to it).
        store: String,
    },
    /// List a dataset's stores.
    #[command(after_help = EXIT_POINTER)]
    Ls {
        /// The dataset's URL.
        dataset: String,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
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
    /// A usage problem found by the binary itself, said in full.
    Usage(String),
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
            CliError::Usage(msg) => write!(f, "{msg}"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    remote::set_options(cli.options);
    match run(cli.command) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Problem) => ExitCode::from(1),
        // A reader that stopped reading (`| head`) is not an error.
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string().replace('\n', " ");
            if let CliError::Store(Error::NotFound { path }) = &e {
                msg.push_str(&squirrel_dir_hint(path));
            }
            eprintln!("squirrel-store: error: {msg}");
            ExitCode::from(2)
        }
    }
}

/// For a path that holds no store: a hint when it is a Python squirrel directory instead.
fn squirrel_dir_hint(path: &Path) -> String {
    let shards = squirrel_store::squirrel_dir::SquirrelDir::new(path)
        .keys(true)
        .map_or(0, |k| k.len());
    if shards == 0 {
        return String::new();
    }
    format!(
        "; it is a Python squirrel directory ({}): `squirrel-store import {} STORE` copies it \
         into a store",
        plural(shards, "shard file", "shard files"),
        path.display()
    )
}

/// What a directory that holds no shard files holds instead, for `import`'s error.
fn not_a_squirrel_dir(src: &Path) -> Option<String> {
    let entries: Vec<(String, bool)> = std::fs::read_dir(src)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| {
            let dir = e.file_type().is_ok_and(|t| t.is_dir());
            (e.file_name().to_string_lossy().into_owned(), dir)
        })
        .collect();
    let is_store = ["segment.sqs", "index.sqm", "index.sqi"]
        .iter()
        .any(|f| entries.iter().any(|(n, _)| n == f));
    let what = if is_store {
        "a squirrel-store store (segment.sqs), not a Python squirrel directory; `squirrel-store \
         export` writes a store out as one"
            .to_owned()
    } else if entries.is_empty() {
        "an empty directory".to_owned()
    } else {
        let dirs = entries.iter().filter(|(_, d)| *d).count();
        let mut names: Vec<String> = entries.iter().map(|(n, _)| format!("{n:?}")).collect();
        names.sort();
        format!(
            "a directory of {} and {} ({})",
            plural(entries.len() - dirs, "file", "files"),
            plural(dirs, "directory", "directories"),
            shown_list(names)
        )
    };
    Some(format!(
        "{} holds no shard files (KEY.gz), so there is nothing to import: it is {what}",
        src.display()
    ))
}

fn run(command: Command) -> Result<Outcome, CliError> {
    // A store given as a URL is read remotely.
    let command = match remote::run(command) {
        Ok(outcome) => return outcome,
        Err(local) => local,
    };
    match command {
        Command::Stats {
            store,
            json,
            compression,
        } => stats(&store, json, compression),
        Command::Verify { store, json } => verify(&store, json),
        Command::Compact { store, json } => compact(&store, json),
        Command::Keys { store, json, null } => keys(&store, json, null),
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
            keep_going,
            json,
        } => import(
            &squirrel_dir,
            &store,
            level,
            ImportFlags {
                top_level_only,
                keep_going,
                json,
            },
        ),
        Command::Export {
            store,
            squirrel_dir,
            json,
        } => export(&store, &squirrel_dir, json),
        Command::Put { store, file, key } => put(&store, &file, key.as_deref()),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "squirrel-store", &mut io::stdout().lock());
            Ok(Outcome::Done)
        }
        Command::RebuildIndex { store } => rebuild_index(&store),
        Command::Repair { store } => repair(&store),
        // `remote::run` takes these; nothing else reaches here with them.
        Command::Push { .. } | Command::Pull { .. } | Command::Dataset(_) => Err(CliError::Usage(
            "this command needs the remote feature".into(),
        )),
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
    if quiet() || !io::stderr().is_terminal() {
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
    /// Damaged records the read-only open's scan met (after the last checkpoint only; `verify`
    /// checks everything).
    damaged_records: u64,
    /// Files in STORE/lost+found/.
    lost_found_files: u64,
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
            damaged_records: st.damaged_records,
            lost_found_files: st.lost_found_files,
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
        "live records    {} ({} with their keys and headers)",
        st.live_records,
        HumanBytes(st.live_bytes)
    )?;
    writeln!(
        out,
        "dead records    {} ({}, sync marks included)",
        st.dead_records,
        HumanBytes(st.dead_bytes)
    )?;
    writeln!(out, "dead ratio      {:.1}%", st.dead_ratio() * 100.0)?;
    writeln!(
        out,
        "segment file    {} ({} of records and the segment header, the rest preallocated)",
        HumanBytes(st.segment_file_len),
        HumanBytes(st.segment_len)
    )?;
    writeln!(out, "index file      {}", HumanBytes(st.index_file_len))?;
    if st.torn_tail_bytes > 0 {
        writeln!(
            out,
            "torn tail       {} bytes, left by a crash; saved into lost+found/ and cut off at \
             the next read-write open",
            st.torn_tail_bytes
        )?;
    }
    if st.damaged_records > 0 {
        writeln!(
            out,
            "damaged         {} records (run `squirrel-store verify`, then `repair`)",
            st.damaged_records
        )?;
    }
    if st.lost_found_files > 0 {
        writeln!(
            out,
            "lost+found      {} files saved before a cut or repair removed them",
            st.lost_found_files
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

fn verify(store: &Path, as_json: bool) -> Result<Outcome, CliError> {
    let bar = progress_bar("checking records", true);
    let report = squirrel_store::verify(store, &mut tick(&bar))?;
    bar.finish_and_clear();
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
    let scan = match scan {
        Ok(scan) => Ok(scan),
        // A store too damaged to open already has its damage listed.
        Err(e) if report.is_corrupt() => Err(e),
        Err(e) => return Err(e.into()),
    };
    let findings = Findings::new(&report, &scan);
    let mut out = io::stdout().lock();
    if as_json {
        let obj = verify_json(store, &findings);
        writeln!(out, "{}", serde_json::Value::Object(obj))?;
    } else {
        verify_text(&mut out, store, &findings)?;
    }
    Ok(if findings.problems == 0 {
        Outcome::Done
    } else {
        Outcome::Problem
    })
}

/// What `verify` found, for both its text and its JSON.
struct Findings<'a> {
    report: &'a squirrel_store::VerifyReport,
    scan: &'a Result<ShardScan, Error>,
    /// Shard failures not already listed as damaged records.
    bad_shards: Vec<&'a ShardFailure>,
    problems: usize,
}

impl<'a> Findings<'a> {
    fn new(report: &'a squirrel_store::VerifyReport, scan: &'a Result<ShardScan, Error>) -> Self {
        let bad_shards: Vec<&ShardFailure> = match scan {
            Ok(scan) => scan
                .failures
                .iter()
                .filter(|ShardFailure { key, error }| {
                    // A damaged record was listed by the segment scan.
                    !(matches!(error, Error::Corruption { .. })
                        && report.damaged.iter().any(|d| d.key.as_deref() == Some(key)))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let index_problem = matches!(report.index, IndexCheck::Inconsistent(_));
        let problems = report.damaged.len() + usize::from(index_problem) + bad_shards.len();
        Findings {
            report,
            scan,
            bad_shards,
            problems,
        }
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn verify_text(out: &mut impl Write, store: &Path, f: &Findings<'_>) -> io::Result<()> {
    // With --quiet only the problems are printed.
    let quiet = quiet();
    let report = f.report;
    info!(
        quiet,
        out,
        "{}: {} records read, {} intact, {} live keys",
        store.display(),
        report.records,
        report.intact,
        report.live_keys
    );
    for d in &report.damaged {
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
        info!(
            quiet,
            out,
            "torn tail of {bytes} bytes at offset {offset}, left by a crash; the next read-write \
             open saves it into lost+found/ and cuts it off"
        );
    }
    match &report.index {
        IndexCheck::Consistent => info!(quiet, out, "index: consistent"),
        IndexCheck::Unusable => info!(
            quiet,
            out,
            "index: missing or left unfinished by a crash; it is rebuilt at the next read-write open"
        ),
        IndexCheck::Inconsistent(issues) => {
            for issue in issues {
                writeln!(out, "index: {issue}")?;
            }
            writeln!(
                out,
                "index: inconsistent with the segment; `squirrel-store rebuild-index` rebuilds it"
            )?;
        }
        other => info!(quiet, out, "index: {other:?}"),
    }
    match f.scan {
        Ok(scan) => {
            info!(
                quiet,
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
            );
            for ShardFailure { key, error } in &f.bad_shards {
                writeln!(out, "bad shard {key:?}: {error}")?;
            }
        }
        Err(e) => writeln!(out, "shards: not decoded: {e}")?,
    }
    if !report.lost_found.is_empty() {
        let bytes: u64 = report.lost_found.iter().map(|f| f.len).sum();
        writeln!(
            out,
            "lost+found: {} files, {bytes} bytes saved before a cut or repair removed them \
             (in {})",
            report.lost_found.len(),
            store
                .join(squirrel_store::lost_found::LOST_FOUND_DIR)
                .display()
        )?;
    }
    if f.problems == 0 {
        info!(quiet, out, "ok");
    } else {
        info!(
            quiet,
            out,
            "damaged: {} found",
            plural(f.problems, "problem", "problems")
        );
        if report.is_corrupt() {
            writeln!(
                out,
                "repair: `squirrel-store repair {}` saves each damaged record into lost+found/, \
                 removes it and keeps every other record",
                store.display()
            )?;
        }
    }
    Ok(())
}

/// `verify --json`: one object, each finding one field, so new findings are new fields.
fn verify_json(store: &Path, f: &Findings<'_>) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::{Value as J, json};
    let report = f.report;
    let mut obj = serde_json::Map::new();
    obj.insert("store".into(), json!(store.display().to_string()));
    obj.insert("ok".into(), json!(f.problems == 0));
    obj.insert("problems".into(), json!(f.problems));
    obj.insert("records".into(), json!(report.records));
    obj.insert("intact".into(), json!(report.intact));
    obj.insert("live_keys".into(), json!(report.live_keys));
    let damaged: Vec<J> = report
        .damaged
        .iter()
        .map(|d| {
            json!({ "offset": d.offset, "len": d.len, "key": d.key, "what": d.what.to_string() })
        })
        .collect();
    obj.insert("damaged".into(), J::Array(damaged));
    obj.insert(
        "torn_tail".into(),
        report.torn_tail.map_or(
            J::Null,
            |(offset, bytes)| json!({ "offset": offset, "bytes": bytes }),
        ),
    );
    let (state, issues): (String, Vec<String>) = match &report.index {
        IndexCheck::Consistent => ("consistent".into(), Vec::new()),
        IndexCheck::Unusable => ("unusable".into(), Vec::new()),
        IndexCheck::Inconsistent(issues) => ("inconsistent".into(), issues.clone()),
        other => (format!("{other:?}"), Vec::new()),
    };
    obj.insert("index".into(), json!({ "state": state, "issues": issues }));
    let shards = match f.scan {
        Ok(scan) => json!({
            "decoded": scan.shards,
            "samples": scan.samples,
            "raw_records": scan.raw_records,
            "failures": f
                .bad_shards
                .iter()
                .map(|b| json!({ "key": b.key, "error": b.error.to_string() }))
                .collect::<Vec<_>>(),
        }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    obj.insert("shards".into(), shards);
    let lost: Vec<J> = report
        .lost_found
        .iter()
        .map(|l| json!({ "name": l.name, "len": l.len }))
        .collect();
    obj.insert("lost_found".into(), J::Array(lost));
    obj.insert("live_writer".into(), json!(report.live_writer));
    obj.insert("format_version".into(), json!(report.format_version));
    obj
}

fn repair(store: &Path) -> Result<Outcome, CliError> {
    // Checked first so that a path that holds no store is reported as such, and is left as it was.
    drop(open_read_only(store)?);
    let report = squirrel_store::repair(store)?;
    let mut out = io::stdout().lock();
    for d in &report.damaged {
        match &d.key {
            Some(k) => writeln!(
                out,
                "saved damaged record at offset {} (key {k:?})",
                d.offset
            )?,
            None => writeln!(
                out,
                "saved damaged bytes at offset {} (key unknown)",
                d.offset
            )?,
        }
    }
    for k in &report.deleted_keys {
        writeln!(out, "deleted {k:?} (its newest record was damaged)")?;
    }
    writeln!(
        out,
        "repaired {}: {} damaged regions saved into lost+found/, {} keys deleted, {} live \
         records kept",
        store.display(),
        report.damaged.len(),
        report.deleted_keys.len(),
        report.compaction.live_records
    )?;
    Ok(Outcome::Done)
}

fn compact(store: &Path, as_json: bool) -> Result<Outcome, CliError> {
    let engine = open_writable(store)?;
    let bar = progress_bar("compacting", true);
    let report = engine.compact_with_progress(&mut tick(&bar))?;
    bar.finish_and_clear();
    engine.close()?;
    if as_json {
        print_json(&serde_json::json!({
            "store": store.display().to_string(),
            "segment_len_before": report.segment_len_before,
            "segment_len_after": report.segment_len_after,
            "segment_file_len_before": report.segment_file_len_before,
            "segment_file_len_after": report.segment_file_len_after,
            "dropped": report.dropped(),
            "reclaimed": report.reclaimed(),
            "live_records": report.live_records,
        }))?;
        return Ok(Outcome::Done);
    }
    info!(
        quiet(),
        io::stdout().lock(),
        "compacted {}: records {} -> {} ({} of dead records dropped); file {} -> {} ({} given \
         back, preallocated space included); {} live records",
        store.display(),
        HumanBytes(report.segment_len_before),
        HumanBytes(report.segment_len_after),
        HumanBytes(report.dropped()),
        HumanBytes(report.segment_file_len_before),
        HumanBytes(report.segment_file_len_after),
        HumanBytes(report.reclaimed()),
        report.live_records
    );
    Ok(Outcome::Done)
}

/// Writes `value` to standard output as one line of JSON.
fn print_json(value: &serde_json::Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)
}

fn keys(store: &Path, as_json: bool, null: bool) -> Result<Outcome, CliError> {
    print_keys(open_read_only(store)?.keys()?, as_json, null)
}

/// Writes `keys` as `keys` lists them: a JSON array, NUL-ended, or one escaped key per line.
fn print_keys(keys: Vec<String>, as_json: bool, null: bool) -> Result<Outcome, CliError> {
    if as_json {
        print_json(&serde_json::Value::from(keys))?;
        return Ok(Outcome::Done);
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut unwritable = 0usize;
    for key in keys {
        if !null {
            writeln!(out, "{}", escape_key(&key))?;
        } else if key.contains('\0') {
            unwritable += 1;
            eprintln!(
                "squirrel-store: key {} contains NUL and cannot be listed with --null",
                escape_key(&key)
            );
        } else {
            out.write_all(key.as_bytes())?;
            out.write_all(b"\0")?;
        }
    }
    out.flush()?;
    Ok(if unwritable == 0 {
        Outcome::Done
    } else {
        Outcome::Problem
    })
}

/// A key as `keys` prints it: backslashes doubled and control characters escaped, so that one
/// line is one key and the escaping can be undone.
fn escape_key(key: &str) -> std::borrow::Cow<'_, str> {
    if !key.chars().any(|c| c == '\\' || c.is_control()) {
        return std::borrow::Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len() + 8);
    for c in key.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

fn missing_key(store: &Path, key: &str) -> Outcome {
    eprintln!("squirrel-store: no key {key:?} in {}", store.display());
    Outcome::Problem
}

fn get(store: &Path, key: &str, raw: bool, as_json: bool) -> Result<Outcome, CliError> {
    let engine = open_read_only(store)?;
    let result = match engine.get(key) {
        Ok(Some(v)) => print_shard(key, &v, v.codec(), raw, as_json),
        Ok(None) => return Ok(missing_key(store, key)),
        Err(e) => Err(e.into()),
    };
    shard_outcome(result)
}

/// `get`'s exit status: a damaged record or an unreadable shard is a problem found (exit 1).
fn shard_outcome(result: Result<Outcome, CliError>) -> Result<Outcome, CliError> {
    match result {
        // The key's record is damaged or is no readable shard: a problem found, as verify reports
        // it (exit 1), not a failure of the command.
        // (Asking for the samples of raw bytes stays a usage error.)
        Err(CliError::Store(e @ (Error::Corruption { .. } | Error::Shard { .. })))
            if !matches!(
                &e,
                Error::Shard {
                    source: ShardError::NotSamples,
                    ..
                }
            ) =>
        {
            eprintln!(
                "squirrel-store: error: {}",
                e.to_string().replace('\n', " ")
            );
            Ok(Outcome::Problem)
        }
        other => other,
    }
}

/// Prints the record `stored` (codec byte `codec`) of `key` as `get` is asked to.
fn print_shard(
    key: &str,
    stored: &[u8],
    codec: u8,
    raw: bool,
    as_json: bool,
) -> Result<Outcome, CliError> {
    let serializer = MessagepackSerializer::default();
    let shard_err = |source| Error::Shard {
        key: key.to_owned(),
        source,
    };
    let codec = Codec::try_from(codec).map_err(shard_err)?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    if raw {
        match codec {
            Codec::Raw => out.write_all(stored)?,
            _ => {
                // Streamed: the payload is never held whole.
                let mut payload = serializer
                    .payload_reader(codec, stored)
                    .map_err(shard_err)?;
                let mut chunk = vec![0u8; 256 << 10];
                loop {
                    let n = payload.read_chunk(&mut chunk).map_err(shard_err)?;
                    if n == 0 {
                        break;
                    }
                    out.write_all(&chunk[..n])?;
                }
            }
        }
    } else if as_json {
        // One sample decoded at a time: memory is the payload and one sample, not every sample.
        let payload = serializer
            .decode_payload(codec, stored)
            .map_err(shard_err)?;
        let mut offset = 0;
        for (index, bytes) in SampleBytes::new(&payload).enumerate() {
            let bytes = bytes.map_err(shard_err)?;
            let (sample, _) = Value::decode(bytes).map_err(|source| {
                shard_err(ShardError::Msgpack {
                    sample: index,
                    offset,
                    source,
                })
            })?;
            offset += bytes.len();
            writeln!(out, "{}", render::json_line(&sample))?;
        }
    } else {
        summarize(&mut out, key, codec, stored, &serializer).map_err(|e| match e {
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
    // Streamed and counted by walking the MessagePack, not by building every sample: only the
    // bytes of the samples shown are kept, and only they are decoded.
    let mut payload = serializer
        .payload_reader(codec, stored)
        .map_err(Summary::Shard)?;
    let mut counter = SampleCounter::new();
    let mut head = Vec::new();
    let mut chunk = vec![0u8; 256 << 10];
    loop {
        let n = payload.read_chunk(&mut chunk).map_err(Summary::Shard)?;
        if n == 0 {
            break;
        }
        if counter.samples() < SUMMARY_SAMPLES as u64 {
            head.extend_from_slice(&chunk[..n]);
        }
        counter.feed(&chunk[..n]).map_err(Summary::Shard)?;
    }
    let count = counter.finish().map_err(Summary::Shard)?;
    writeln!(out, "payload   {} bytes", payload.bytes_read())?;
    writeln!(out, "samples   {count}")?;
    let shown = squirrel_store::serializer::decode_values_up_to(&head, SUMMARY_SAMPLES)
        .map_err(Summary::Shard)?;
    for (i, s) in shown.iter().enumerate() {
        let mut line = render::summary(s);
        if let Some((cut, _)) = line.char_indices().nth(SUMMARY_WIDTH) {
            line.truncate(cut);
            line.push('…');
        }
        writeln!(out, "  {i:<6}  {line}")?;
    }
    if count > SUMMARY_SAMPLES as u64 {
        writeln!(
            out,
            "  … {} more samples (--json prints them all)",
            count - SUMMARY_SAMPLES as u64
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

/// `import`'s switches.
struct ImportFlags {
    top_level_only: bool,
    keep_going: bool,
    json: bool,
}

fn import(
    src: &Path,
    store: &Path,
    level: Option<i32>,
    flags: ImportFlags,
) -> Result<Outcome, CliError> {
    let top_level_only = flags.top_level_only;
    // Checked before the store is created, so a mistyped source leaves nothing behind.
    if let Err(source) = std::fs::read_dir(src) {
        return Err(Error::Io {
            path: src.to_owned(),
            source,
        }
        .into());
    }
    // A directory without a single shard file is not what the user meant to import.
    let found = squirrel_store::squirrel_dir::SquirrelDir::new(src)
        .keys_and_skipped(!top_level_only)
        .map_err(Error::from)?;
    if found.0.is_empty() && found.1.is_empty() {
        let nested = squirrel_store::squirrel_dir::SquirrelDir::new(src)
            .keys(true)
            .map_or(0, |k| k.len());
        if top_level_only && nested > 0 {
            return Err(CliError::Usage(format!(
                "{} holds no shard files at its top level, and {} in subdirectories; without \
                 --top-level-only they are imported",
                src.display(),
                plural(nested, "shard file", "shard files")
            )));
        }
        if let Some(msg) = not_a_squirrel_dir(src) {
            return Err(CliError::Usage(msg));
        }
    }
    // A new store directory is made here, not by the engine, so that its parent is synced too.
    squirrel_store::squirrel_dir::create_dir_all_synced(store).map_err(Error::from)?;
    // Buffered: a killed import leaves every record it finished whole (and a torn tail at most);
    // the import syncs once at the end.
    let engine = Config::new(store).durability(Durability::Buffered).open()?;
    let opts = ImportOptions::new()
        .nested(!top_level_only)
        .keep_going(flags.keep_going)
        .serializer(match level {
            Some(level) => MessagepackSerializer::new().level(level),
            None => MessagepackSerializer::default(),
        });
    let bar = progress_bar("importing", false);
    let report = transfer::import_squirrel_dir(src, &engine, &opts, &mut tick(&bar))?;
    bar.finish_and_clear();
    engine.close()?;
    let skipped: Vec<String> = report
        .skipped
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    if flags.json {
        let failed: Vec<serde_json::Value> = report
            .failed
            .iter()
            .map(|(key, error)| serde_json::json!({ "key": key, "error": error }))
            .collect();
        print_json(&serde_json::json!({
            "source": src.display().to_string(),
            "store": store.display().to_string(),
            "shards": report.shards,
            "written": report.written,
            "unchanged": report.unchanged,
            "samples": report.samples,
            "payload_bytes": report.payload_bytes,
            "stored_bytes": report.stored_bytes,
            "skipped": skipped,
            "failed": failed,
        }))?;
    } else {
        info!(
            quiet(),
            io::stdout().lock(),
            "imported {} into {}: {} shards ({} written, {} unchanged{}), {} samples, {} of \
             payload; the written shards are stored in {}",
            src.display(),
            store.display(),
            report.shards,
            report.written,
            report.unchanged,
            if report.failed.is_empty() {
                String::new()
            } else {
                format!(", {} failed", report.failed.len())
            },
            report.samples,
            HumanBytes(report.payload_bytes),
            HumanBytes(report.stored_bytes)
        );
    }
    for (key, error) in &report.failed {
        eprintln!("squirrel-store: shard file of key {key:?} not imported: {error}");
    }
    if !report.skipped.is_empty() {
        let names = skipped.iter().map(|n| format!("{n:?}")).collect();
        eprintln!(
            "squirrel-store: warning: skipped {} whose names make no valid key (not UTF-8, or \
             containing a backslash, or too long): {}",
            plural(report.skipped.len(), "file", "files"),
            shown_list(names)
        );
    }
    Ok(if report.skipped.is_empty() && report.failed.is_empty() {
        Outcome::Done
    } else {
        Outcome::Problem
    })
}

/// `put`: one shard file into a store, under its file name or `key`.
fn put(store: &Path, file: &Path, key: Option<&str>) -> Result<Outcome, CliError> {
    let key = match key {
        Some(k) => k.to_owned(),
        None => {
            let name = file.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
                CliError::Usage(format!(
                    "{} has no UTF-8 file name to use as the key; give one with --key",
                    file.display()
                ))
            })?;
            name.strip_suffix(".gz").unwrap_or(name).to_owned()
        }
    };
    let payload = read_shard_payload(file)?;
    let samples =
        squirrel_store::serializer::count_samples(&payload).map_err(|source| Error::Shard {
            key: key.clone(),
            source,
        })?;
    squirrel_store::squirrel_dir::create_dir_all_synced(store).map_err(Error::from)?;
    let engine = Config::new(store).durability(Durability::Buffered).open()?;
    let value = MessagepackSerializer::default()
        .encode_payload_owned(payload)
        .map_err(|source| Error::Shard {
            key: key.clone(),
            source,
        })?;
    engine.put(&key, value.codec.as_u8(), &value.bytes)?;
    engine.close()?;
    info!(
        quiet(),
        io::stdout().lock(),
        "put {} into {} as {:?}: {}, stored as {} ({})",
        file.display(),
        store.display(),
        key,
        plural(
            usize::try_from(samples).unwrap_or(usize::MAX),
            "sample",
            "samples"
        ),
        HumanBytes(value.bytes.len() as u64),
        if value.codec == Codec::MsgpackZstd {
            "zstd"
        } else {
            "uncompressed"
        }
    );
    Ok(Outcome::Done)
}

/// A shard file's payload: gunzipped when the file starts with gzip's magic, else as it is.
/// Bounded like an import's (a decompression bomb is refused).
fn read_shard_payload(file: &Path) -> Result<Vec<u8>, CliError> {
    let limit = squirrel_store::squirrel_dir::SquirrelDir::DEFAULT_MAX_SHARD_BYTES;
    let mut magic = [0u8; 2];
    let io_err = |source| Error::Io {
        path: file.to_owned(),
        source,
    };
    let gz = {
        use std::io::Read;
        let mut f = std::fs::File::open(file).map_err(io_err)?;
        match f.read_exact(&mut magic) {
            Ok(()) => magic == [0x1f, 0x8b],
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => false,
            Err(e) => return Err(io_err(e).into()),
        }
    };
    if gz {
        return Ok(squirrel_store::squirrel_dir::read_shard_file(file, limit).map_err(Error::from)?);
    }
    let len = std::fs::metadata(file).map_err(io_err)?.len();
    if len > limit {
        return Err(CliError::Usage(format!(
            "{} holds {} of MessagePack, more than the {} a shard may hold",
            file.display(),
            HumanBytes(len),
            HumanBytes(limit)
        )));
    }
    Ok(std::fs::read(file).map_err(io_err)?)
}

/// The first few of `names`, joined, with how many more there are.
fn shown_list(mut names: Vec<String>) -> String {
    const SHOWN: usize = 5;
    if names.len() > SHOWN {
        let more = names.len() - SHOWN;
        names.truncate(SHOWN);
        names.push(format!("… {more} more"));
    }
    names.join(", ")
}

fn export(store: &Path, dst: &Path, as_json: bool) -> Result<Outcome, CliError> {
    let engine = open_read_only(store)?;
    let bar = progress_bar("exporting", false);
    let report =
        transfer::export_squirrel_dir(&engine, dst, &ExportOptions::new(), &mut tick(&bar))?;
    bar.finish_and_clear();
    if as_json {
        let invalid: Vec<serde_json::Value> = report
            .invalid_keys
            .iter()
            .map(|(key, reason)| serde_json::json!({ "key": key, "reason": reason }))
            .collect();
        print_json(&serde_json::json!({
            "store": store.display().to_string(),
            "squirrel_dir": dst.display().to_string(),
            "shards": report.shards,
            "payload_bytes": report.payload_bytes,
            "file_bytes": report.file_bytes,
            "skipped_raw": report.skipped_raw,
            "invalid_keys": invalid,
        }))?;
    } else {
        if !report.skipped_raw.is_empty() && !quiet() {
            let names = report
                .skipped_raw
                .iter()
                .map(|k| format!("{k:?}"))
                .collect();
            eprintln!(
                "squirrel-store: warning: skipped {} of raw bytes (not shards): {}",
                plural(report.skipped_raw.len(), "record", "records"),
                shown_list(names)
            );
        }
        info!(
            quiet(),
            io::stdout().lock(),
            "exported {} into {}: {} shards, {} of payload in {} of gzip files",
            store.display(),
            dst.display(),
            report.shards,
            HumanBytes(report.payload_bytes),
            HumanBytes(report.file_bytes)
        );
    }
    for (key, reason) in &report.invalid_keys {
        eprintln!("squirrel-store: key {key:?} cannot name a shard file ({reason}); not exported");
    }
    if report.invalid_keys.is_empty() {
        Ok(Outcome::Done)
    } else {
        eprintln!(
            "squirrel-store: {} not exported",
            plural(report.invalid_keys.len(), "key was", "keys were")
        );
        Ok(Outcome::Problem)
    }
}

fn rebuild_index(store: &Path) -> Result<Outcome, CliError> {
    // Checked first so that a path that holds no store is reported as such, and is left as it was.
    drop(open_read_only(store)?);
    let stats = squirrel_store::rebuild_index(store)?;
    info!(
        quiet(),
        io::stdout().lock(),
        "rebuilt the index of {}: {} keys",
        store.display(),
        stats.live_records
    );
    Ok(Outcome::Done)
}
