//! Moving shards between a Python squirrel directory and a store, and reading every shard of a
//! store. Used by `squirrel-store import`, `export`, `verify` and `stats --compression`.
//!
//! A Python squirrel directory holds one gzip file `KEY.gz` per shard (see [`crate::squirrel_dir`]);
//! its gunzipped content is the shard's **payload**, its samples' MessagePack concatenated. The
//! payload is what both sides keep, byte for byte:
//!
//! * [`import_squirrel_dir`] gunzips each `KEY.gz`, checks that the payload splits into whole
//!   MessagePack samples, and stores the payload untouched under `KEY` with the serializer's codec
//!   (zstd by default, [`Codec::MsgpackZstd`]). Samples are never decoded and re-encoded, so
//!   nothing about them can change.
//! * [`export_squirrel_dir`] decompresses each shard record back to its payload and writes it as
//!   `KEY.gz` with gzip, which Python squirrel-core reads unchanged.
//!
//! Both work on batches of shards in parallel (rayon), a batch bounded in bytes so memory stays
//! bounded whatever the shard sizes, and report progress once per batch.

use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::interop::squirrel_dir::{ShardFileReader, SquirrelDir, SquirrelDirError};
use crate::shard::serializer::{
    Codec, Encoded, MessagepackSerializer, PayloadReader, SampleCounter, Serializer, ShardError,
    count_samples,
};

/// Default bound on the bytes read into memory for one batch: 32 MiB.
const DEFAULT_BATCH_BYTES: u64 = 32 << 20;
/// Default bound on the number of shards in one batch (one `set_many` call).
const DEFAULT_BATCH_KEYS: usize = 64;
/// Shard files whose payload is at most this are read whole in one pass; larger ones are streamed
/// twice (checked and counted, then compressed), so a payload is never held in memory whole.
const IN_MEMORY_PAYLOAD: usize = 16 << 20;
/// Bytes read or written at a time when streaming a payload.
const CHUNK: usize = 256 << 10;

/// Options for [`import_squirrel_dir`].
#[derive(Debug, Clone)]
pub struct ImportOptions {
    nested: bool,
    serializer: MessagepackSerializer,
    max_shard_bytes: u64,
    batch_bytes: u64,
    batch_keys: usize,
    keep_going: bool,
}

impl Default for ImportOptions {
    /// Nested keys included, the default [`MessagepackSerializer`] (zstd level 3 where it saves at
    /// least 20%, else uncompressed, chosen per shard), shards of up to
    /// [`SquirrelDir::DEFAULT_MAX_SHARD_BYTES`].
    fn default() -> Self {
        ImportOptions {
            nested: true,
            serializer: MessagepackSerializer::default(),
            max_shard_bytes: SquirrelDir::DEFAULT_MAX_SHARD_BYTES,
            batch_bytes: DEFAULT_BATCH_BYTES,
            batch_keys: DEFAULT_BATCH_KEYS,
            keep_going: false,
        }
    }
}

impl ImportOptions {
    /// The default options; see [`ImportOptions::default`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether shards in subdirectories are imported too, as keys `sub/key` (default true: what
    /// squirrel's `keys(nested=True)` lists, and what [`export_squirrel_dir`] writes back into
    /// subdirectories). With `false`, only the top level, like squirrel's `keys()`.
    #[must_use]
    pub fn nested(mut self, yes: bool) -> Self {
        self.nested = yes;
        self
    }

    /// The serializer that stores payloads: its codec and zstd level.
    #[must_use]
    pub fn serializer(mut self, serializer: MessagepackSerializer) -> Self {
        self.serializer = serializer;
        self
    }

    /// Refuses shard files whose payload is larger than `bytes`.
    #[must_use]
    pub fn max_shard_bytes(mut self, bytes: u64) -> Self {
        self.max_shard_bytes = bytes;
        self
    }

    /// Bounds one batch to about `bytes` of shard files (at least one shard) and `keys` shards.
    /// A batch is read and compressed in parallel, then written with one `set_many_with_codec`.
    #[must_use]
    pub fn batch(mut self, bytes: u64, keys: usize) -> Self {
        self.batch_bytes = bytes;
        self.batch_keys = keys.max(1);
        self
    }

    /// Whether a shard file that cannot be imported (unreadable, not gzip, not whole MessagePack
    /// samples, too large) is listed in [`ImportReport::failed`] while the others are still
    /// imported (default false: the import stops at the first such file, with its error). Errors
    /// of the store itself always stop the import.
    #[must_use]
    pub fn keep_going(mut self, yes: bool) -> Self {
        self.keep_going = yes;
        self
    }
}

/// What [`import_squirrel_dir`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportReport {
    /// Shard files found in the directory.
    pub shards: u64,
    /// Shards written to the store (new keys, or keys whose stored payload differed).
    pub written: u64,
    /// Shards skipped because the store already held the identical payload under that key.
    pub unchanged: u64,
    /// Samples in all shards found.
    pub samples: u64,
    /// Payload bytes (gunzipped) of all shards found.
    pub payload_bytes: u64,
    /// Bytes of the values written to the store (compressed); 0 for unchanged shards.
    pub stored_bytes: u64,
    /// Files skipped because their names make no valid key (not UTF-8, or refused by
    /// [`crate::squirrel_dir::validate_key`]), and with nested import, subdirectories whose names
    /// are not UTF-8; sorted. Not counted in `shards`.
    pub skipped: Vec<PathBuf>,
    /// With [`ImportOptions::keep_going`]: the keys of shard files that could not be imported,
    /// each with the error, in key order. Counted in `shards`, not in `written` or `unchanged`.
    pub failed: Vec<(String, String)>,
}

/// Imports every shard file `KEY.gz` of the Python squirrel directory `src` into `engine`.
///
/// Each file is gunzipped; its payload must split into whole MessagePack samples (they are not
/// decoded further), and is then stored as it is, compressed with the options' serializer, under
/// `KEY` (`sub/KEY` for nested shards, see [`ImportOptions::nested`]).
///
/// **Idempotent**: a key whose stored record already holds the identical payload is skipped and
/// counted as unchanged, so running the import again (or again after it was interrupted) writes
/// only what is missing or different, and appends nothing for the rest. A key whose payload
/// differs, or holds raw bytes, or whose record is damaged, is overwritten. An identical payload
/// stored with another codec or zstd level counts as unchanged (it is not recompressed). Keys of
/// the store that have no shard file are left alone.
///
/// Records are written in batches as they come (how durable each is before the end depends on the
/// engine's [`crate::Durability`]); at the end everything is synced. `progress(done, total)`
/// counts shard files.
///
/// # Errors
///
/// [`Error::Io`] if `src` is not a readable directory or a shard file cannot be read;
/// [`Error::Corruption`] naming the file and key for a file that is not valid gzip;
/// [`Error::Shard`] naming the key for a payload that is not whole MessagePack samples, or one
/// larger than [`ImportOptions::max_shard_bytes`] ([`ShardError::TooLarge`]: payloads are
/// streamed, so a 1 MB file holding 1 GiB of zeros costs no more memory than the limit allows,
/// and nothing is allocated from a size the file claims); the engine's errors when writing. Files
/// whose names make no valid key are not imported but listed in [`ImportReport::skipped`]. Shards
/// before the failing one (in key order) are stored.
pub fn import_squirrel_dir(
    src: &Path,
    engine: &Engine,
    opts: &ImportOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ImportReport> {
    // A missing directory has no keys for SquirrelDir (as in Python); an import of nothing is
    // almost surely a typo, so say so.
    match std::fs::metadata(src) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::io(
                src,
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            ));
        }
        Err(e) => return Err(Error::io(src, e)),
    }
    let dir = SquirrelDir::new(src).max_shard_bytes(opts.max_shard_bytes);
    let (keys, skipped) = dir.keys_and_skipped(opts.nested)?;
    let total = keys.len() as u64;
    let mut report = ImportReport {
        shards: total,
        skipped,
        ..ImportReport::default()
    };
    progress(0, total);
    // Batches are sized by the gzip files' lengths, a cheap bound on what a batch reads.
    let sized = keys
        .into_iter()
        .map(|key| {
            let path = dir.path(&key)?;
            let len = std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .len();
            Ok((key, len))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut done = 0u64;
    for batch in batches(sized, opts.batch_bytes, opts.batch_keys) {
        let prepared: Vec<Result<Prepared>> = batch
            .par_iter()
            .map(|key| prepare_import(&dir, engine, &opts.serializer, key))
            .collect();
        let mut writes = Vec::new();
        let mut failure = None;
        for (key, p) in batch.iter().zip(prepared) {
            match p {
                Ok(p) => {
                    report.samples += p.samples;
                    report.payload_bytes += p.payload_len;
                    match p.value {
                        Some(value) => writes.push((key.as_str(), value)),
                        None => report.unchanged += 1,
                    }
                }
                Err(e) if opts.keep_going && of_the_file(&e, src) => {
                    report.failed.push((key.clone(), e.to_string()));
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        engine.set_many_with_codec(
            writes
                .iter()
                .map(|(k, v)| (*k, v.codec.as_u8(), v.bytes.as_slice())),
        )?;
        report.written += writes.len() as u64;
        report.stored_bytes += writes
            .iter()
            .map(|(_, v)| v.bytes.len() as u64)
            .sum::<u64>();
        if let Some(e) = failure {
            engine.sync()?;
            return Err(e);
        }
        done += batch.len() as u64;
        progress(done, total);
    }
    engine.sync()?;
    Ok(report)
}

/// One shard file, read and checked: the record value to write, or `None` when the store already
/// holds the identical payload.
struct Prepared {
    value: Option<Encoded>,
    payload_len: u64,
    samples: u64,
}

fn prepare_import(
    dir: &SquirrelDir,
    engine: &Engine,
    serializer: &MessagepackSerializer,
    key: &str,
) -> Result<Prepared> {
    let shard_err = |source| Error::Shard {
        key: key.to_owned(),
        source,
    };
    let file_err = |e| shard_file_error(key, e);
    let mut reader = dir.open(key).map_err(file_err)?;
    let mut payload = Vec::new();
    let whole = reader
        .read_up_to(&mut payload, IN_MEMORY_PAYLOAD)
        .map_err(file_err)?;
    // Payloads stored uncompressed are held whole anyway: the record is the payload.
    if !whole && serializer.compression_level().is_some() {
        drop(payload);
        return prepare_large_import(dir, engine, serializer, key);
    }
    if !whole {
        reader
            .read_up_to(&mut payload, usize::MAX)
            .map_err(file_err)?;
    }
    let samples = count_samples(&payload).map_err(shard_err)?;
    let payload_len = payload.len() as u64;
    if stored_payload_is(engine, serializer, key, &payload)? {
        return Ok(Prepared {
            value: None,
            payload_len,
            samples,
        });
    }
    let value = serializer
        .encode_payload_owned(payload)
        .map_err(shard_err)?;
    Ok(Prepared {
        value: Some(value),
        payload_len,
        samples,
    })
}

/// [`prepare_import`] for a payload too large to hold whole: a first pass counts and checks the
/// samples and compares the payload with the stored one, a second compresses it as a stream (with
/// its size in the frame header, as [`Serializer::encode_payload`] writes it).
fn prepare_large_import(
    dir: &SquirrelDir,
    engine: &Engine,
    serializer: &MessagepackSerializer,
    key: &str,
) -> Result<Prepared> {
    let shard_err = |source| Error::Shard {
        key: key.to_owned(),
        source,
    };
    let file_err = |e| shard_file_error(key, e);
    let stored = match engine.get(key) {
        Ok(v) => v,
        Err(Error::Corruption { .. }) => None,
        Err(e) => return Err(e),
    };
    let mut compare = stored.as_ref().and_then(|v| {
        let codec = Codec::from_u8(v.codec()).filter(|c| *c != Codec::Raw)?;
        serializer.payload_reader(codec, v).ok()
    });
    let mut reader = dir.open(key).map_err(file_err)?;
    let mut counter = SampleCounter::new();
    let mut chunk = vec![0u8; CHUNK];
    let mut theirs = vec![0u8; CHUNK];
    loop {
        let n = reader.read_chunk(&mut chunk).map_err(file_err)?;
        let data = &chunk[..n];
        counter.feed(data).map_err(shard_err)?;
        if let Some(r) = compare.as_mut() {
            let same = read_full(r, &mut theirs[..n]).is_ok_and(|got| got == n)
                && theirs[..n] == *data
                && (n > 0 || read_full(r, &mut theirs[..1]).is_ok_and(|got| got == 0));
            if !same {
                compare = None;
            }
        }
        if n == 0 {
            break;
        }
    }
    let samples = counter.finish().map_err(shard_err)?;
    let payload_len = reader.bytes_read();
    if compare.is_some() {
        return Ok(Prepared {
            value: None,
            payload_len,
            samples,
        });
    }
    let value = compress_stream(dir.open(key).map_err(file_err)?, serializer, payload_len)
        .map_err(|e| match e {
            StreamError::File(e) => file_err(e),
            StreamError::Compress(e) => shard_err(ShardError::Compress(e)),
            StreamError::Changed(path) => Error::io(
                path,
                std::io::Error::other("the shard file changed while it was imported"),
            ),
        })?;
    // Shards too large to hold whole stay compressed: judging them would need them whole.
    Ok(Prepared {
        value: Some(Encoded {
            codec: Codec::MsgpackZstd,
            bytes: value,
        }),
        payload_len,
        samples,
    })
}

enum StreamError {
    File(SquirrelDirError),
    Compress(std::io::Error),
    Changed(PathBuf),
}

/// Compresses the payload of `reader`, `len` bytes long, into one zstd frame that states its size.
fn compress_stream(
    mut reader: ShardFileReader,
    serializer: &MessagepackSerializer,
    len: u64,
) -> std::result::Result<Vec<u8>, StreamError> {
    let level = serializer
        .compression_level()
        .unwrap_or(MessagepackSerializer::DEFAULT_LEVEL);
    let mut enc =
        zstd::stream::write::Encoder::new(Vec::new(), level).map_err(StreamError::Compress)?;
    enc.include_contentsize(true)
        .and_then(|()| enc.set_pledged_src_size(Some(len)))
        .map_err(StreamError::Compress)?;
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = reader.read_chunk(&mut chunk).map_err(StreamError::File)?;
        if n == 0 {
            break;
        }
        if reader.bytes_read() > len {
            return Err(StreamError::Changed(reader.path().to_owned()));
        }
        enc.write_all(&chunk[..n]).map_err(StreamError::Compress)?;
    }
    if reader.bytes_read() != len {
        return Err(StreamError::Changed(reader.path().to_owned()));
    }
    enc.finish().map_err(StreamError::Compress)
}

/// Fills `buf` from `r` as far as the payload goes; returns the bytes read.
fn read_full(r: &mut PayloadReader<'_>, buf: &mut [u8]) -> std::result::Result<usize, ShardError> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read_chunk(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Whether `key`'s record in the store holds exactly `payload`. A damaged record or one that does
/// not decompress counts as different: the import then overwrites it.
fn stored_payload_is(
    engine: &Engine,
    serializer: &MessagepackSerializer,
    key: &str,
    payload: &[u8],
) -> Result<bool> {
    let stored = match engine.get(key) {
        Ok(Some(v)) => v,
        Ok(None) | Err(Error::Corruption { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    let codec = match Codec::from_u8(stored.codec()) {
        Some(c @ (Codec::Msgpack | Codec::MsgpackZstd)) => c,
        _ => return Ok(false),
    };
    // Frames written by this crate state their content size: a different length needs no
    // decompression to tell.
    if codec == Codec::MsgpackZstd
        && let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(&stored)
        && size != payload.len() as u64
    {
        return Ok(false);
    }
    Ok(serializer
        .decode_payload(codec, &stored)
        .is_ok_and(|p| *p == *payload))
}

/// A shard file error, with the key named where the file's own error does not.
/// Whether an error of [`prepare_import`] is about the shard file under `src` (which
/// [`ImportOptions::keep_going`] may step over) rather than about the store.
fn of_the_file(e: &Error, src: &Path) -> bool {
    match e {
        Error::Shard { .. } => true,
        Error::Corruption { path, .. } | Error::Io { path, .. } => path.starts_with(src),
        _ => false,
    }
}

fn shard_file_error(key: &str, e: SquirrelDirError) -> Error {
    match e {
        SquirrelDirError::Gzip { path, source } => Error::Corruption {
            path,
            offset: 0,
            key: Some(key.to_owned()),
            what: format!("shard file is not a valid gzip stream: {source}"),
        },
        // A decompression bomb, or a shard larger than allowed: not damage, a limit.
        SquirrelDirError::TooLarge { limit, .. } => Error::Shard {
            key: key.to_owned(),
            source: ShardError::TooLarge {
                size: limit.saturating_add(1),
                at_least: true,
                limit,
            },
        },
        other => other.into(),
    }
}

/// Options for [`export_squirrel_dir`].
#[derive(Debug, Clone)]
pub struct ExportOptions {
    level: u32,
    serializer: MessagepackSerializer,
    batch_bytes: u64,
    batch_keys: usize,
}

impl Default for ExportOptions {
    /// gzip level [`SquirrelDir::DEFAULT_LEVEL`] (any level reads the same), the default
    /// serializer's decompression limit.
    fn default() -> Self {
        ExportOptions {
            level: SquirrelDir::DEFAULT_LEVEL,
            serializer: MessagepackSerializer::default(),
            batch_bytes: DEFAULT_BATCH_BYTES,
            batch_keys: DEFAULT_BATCH_KEYS,
        }
    }
}

impl ExportOptions {
    /// The default options; see [`ExportOptions::default`].
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// gzip level 0..=9 for the written files.
    #[must_use]
    pub fn level(mut self, level: u32) -> Self {
        self.level = level.min(9);
        self
    }

    /// The serializer that decodes records (its decompression limit applies).
    #[must_use]
    pub fn serializer(mut self, serializer: MessagepackSerializer) -> Self {
        self.serializer = serializer;
        self
    }

    /// Bounds one batch to about `bytes` of stored values (at least one) and `keys` shards.
    #[must_use]
    pub fn batch(mut self, bytes: u64, keys: usize) -> Self {
        self.batch_bytes = bytes;
        self.batch_keys = keys.max(1);
        self
    }
}

/// What [`export_squirrel_dir`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportReport {
    /// Shard files written.
    pub shards: u64,
    /// Payload bytes (before gzip) written.
    pub payload_bytes: u64,
    /// Bytes of the gzip files written.
    pub file_bytes: u64,
    /// Keys skipped because their records hold raw bytes ([`Codec::Raw`], written with
    /// [`Engine::set`]), not samples: they have no squirrel form.
    pub skipped_raw: Vec<String>,
    /// Keys skipped because they cannot name a file inside the directory, each with the reason
    /// (see [`crate::squirrel_dir::validate_key`]); the other keys are still exported.
    pub invalid_keys: Vec<(String, &'static str)>,
}

/// Writes every shard of `engine` into the squirrel directory `dst` as `KEY.gz` (creating `dst` and
/// subdirectories for keys with `/`), which Python squirrel-core 0.20.2 reads unchanged.
///
/// Each record is decompressed per its codec and its payload gzipped as it is, streamed: no
/// payload is held whole in memory. Files are written atomically (a synced temporary file renamed
/// into place) and replace existing files of the same key; other files in `dst` are left alone.
/// Directories it creates are synced into their parents. Records holding raw bytes are not
/// shards: they are skipped and listed in [`ExportReport::skipped_raw`]; keys that cannot name a
/// file are skipped and listed in [`ExportReport::invalid_keys`]. `progress(done, total)` counts
/// keys.
///
/// The store is read as of the call's start (its key list); keys deleted meanwhile are skipped.
///
/// # Errors
///
/// [`Error::Shard`] naming the key for a record that does not decompress (also one larger than
/// the serializer's decompression limit) or has an unknown codec; [`Error::Corruption`] for a
/// damaged record; [`Error::Io`] when writing, and with `NotADirectory` when `dst` exists and is
/// not a directory. Shards before the failing one (in key order) are written.
pub fn export_squirrel_dir(
    engine: &Engine,
    dst: &Path,
    opts: &ExportOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ExportReport> {
    let dir = SquirrelDir::new(dst).level(opts.level);
    crate::interop::squirrel_dir::create_dir_all_synced(dst)?;
    let keys = engine.keys()?;
    let total = keys.len() as u64;
    let mut report = ExportReport::default();
    progress(0, total);
    // Sizes of the stored values bound a batch's memory (payloads are streamed, never held whole).
    let mut sized = Vec::with_capacity(keys.len());
    for key in keys {
        if let Err(SquirrelDirError::InvalidKey { reason, .. }) =
            crate::interop::squirrel_dir::validate_key(&key)
        {
            report.invalid_keys.push((key, reason));
            continue;
        }
        let len = record_len(engine, &key);
        sized.push((key, len));
    }
    let mut done = 0u64;
    for batch in batches(sized, opts.batch_bytes, opts.batch_keys) {
        let written: Vec<Result<Exported>> = batch
            .par_iter()
            .map(|key| export_one(engine, &dir, &opts.serializer, key))
            .collect();
        for (key, w) in batch.iter().zip(written) {
            match w? {
                Exported::File {
                    payload_len,
                    file_len,
                } => {
                    report.shards += 1;
                    report.payload_bytes += payload_len;
                    report.file_bytes += file_len;
                }
                Exported::Raw => report.skipped_raw.push(key.clone()),
                Exported::Gone => {}
            }
        }
        done += batch.len() as u64;
        progress(done, total);
    }
    Ok(report)
}

/// The stored length of `key`'s value, for batching; 0 when it cannot be read now (the export
/// itself then reports why).
fn record_len(engine: &Engine, key: &str) -> u64 {
    engine.get(key).ok().flatten().map_or(0, |v| v.len() as u64)
}

enum Exported {
    File { payload_len: u64, file_len: u64 },
    Raw,
    Gone,
}

fn export_one(
    engine: &Engine,
    dir: &SquirrelDir,
    serializer: &MessagepackSerializer,
    key: &str,
) -> Result<Exported> {
    let Some(stored) = engine.get(key)? else {
        return Ok(Exported::Gone);
    };
    let shard_err = |source| Error::Shard {
        key: key.to_owned(),
        source,
    };
    let codec = Codec::try_from(stored.codec()).map_err(shard_err)?;
    if codec == Codec::Raw {
        return Ok(Exported::Raw);
    }
    let mut payload = serializer
        .payload_reader(codec, &stored)
        .map_err(shard_err)?;
    let path = dir.write_with(key, |w: &mut dyn Write| -> Result<()> {
        let mut chunk = vec![0u8; CHUNK];
        loop {
            let n = payload.read_chunk(&mut chunk).map_err(shard_err)?;
            if n == 0 {
                return Ok(());
            }
            // The writer keeps its own error, with the file's path; this one is not reported.
            w.write_all(&chunk[..n])
                .map_err(|e| Error::io(dir.root(), e))?;
        }
    })?;
    let file_len = std::fs::metadata(&path)
        .map_err(|e| Error::io(&path, e))?
        .len();
    Ok(Exported::File {
        payload_len: payload.bytes_read(),
        file_len,
    })
}

/// How deeply [`scan_shards`] reads each shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScanDepth {
    /// Payload sizes only: a zstd frame's size is read from its header when it states one
    /// (frames written by this crate do), otherwise the frame is decompressed. Every record is
    /// still read whole, since `get` checks its checksum.
    Sizes,
    /// Decompress every shard, split it into MessagePack samples and check each as decoding it
    /// into a [`crate::value::Value`] would (structure, depth, UTF-8): everything a reader of the
    /// shard will do. The payload is streamed and samples are walked, not built, so memory stays
    /// bounded by the largest sample, not the payload.
    Samples,
}

/// A live record that is not a readable shard.
#[derive(Debug)]
pub struct ShardFailure {
    /// The record's key.
    pub key: String,
    /// What is wrong: [`Error::Shard`] for a shard that does not decompress or decode,
    /// [`Error::Corruption`] for a damaged record.
    pub error: Error,
}

/// Shards of one codec that [`scan_shards`] read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CodecTally {
    /// How many shards.
    pub shards: u64,
    /// Their stored value bytes.
    pub stored_bytes: u64,
    /// Their payload bytes (decompressed).
    pub payload_bytes: u64,
}

impl CodecTally {
    fn add(&mut self, stored: u64, payload: u64) {
        self.shards += 1;
        self.stored_bytes += stored;
        self.payload_bytes += payload;
    }
}

/// What [`scan_shards`] found.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ShardScan {
    /// Live records holding shards (codec [`Codec::Msgpack`] or [`Codec::MsgpackZstd`]), read
    /// without error.
    pub shards: u64,
    /// Live records holding raw bytes ([`Codec::Raw`]): not shards, not decoded.
    pub raw_records: u64,
    /// Samples in the shards read ([`ScanDepth::Samples`] only; 0 otherwise).
    pub samples: u64,
    /// Stored value bytes of the shards read.
    pub stored_bytes: u64,
    /// Payload bytes (decompressed) of the shards read.
    pub payload_bytes: u64,
    /// Of the shards read, those stored compressed ([`Codec::MsgpackZstd`]).
    pub compressed: CodecTally,
    /// Of the shards read, those stored uncompressed ([`Codec::Msgpack`]).
    pub uncompressed: CodecTally,
    /// Records that failed, in key order.
    pub failures: Vec<ShardFailure>,
}

impl ShardScan {
    /// Payload bytes per stored byte over the shards read (1.0 when there are none): how much the
    /// codec saves.
    #[must_use]
    pub fn compression_ratio(&self) -> f64 {
        if self.stored_bytes == 0 {
            1.0
        } else {
            self.payload_bytes as f64 / self.stored_bytes as f64
        }
    }
}

/// Reads every live record of `engine` as a shard, to the given depth, and reports the ones that
/// fail instead of stopping at the first. `progress(done, total)` counts keys.
///
/// Works on a read-only handle while a writer runs (it sees the store as of its last refresh).
///
/// # Errors
///
/// Only when the key list cannot be read ([`Error::Corruption`] from [`Engine::keys`]); a record
/// that fails is a [`ShardFailure`].
pub fn scan_shards(
    engine: &Engine,
    serializer: &MessagepackSerializer,
    depth: ScanDepth,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<ShardScan> {
    let keys = engine.keys()?;
    let total = keys.len() as u64;
    let mut scan = ShardScan::default();
    progress(0, total);
    let sized: Vec<(String, u64)> = keys
        .into_iter()
        .map(|k| {
            let len = record_len(engine, &k);
            (k, len)
        })
        .collect();
    let mut done = 0u64;
    for batch in batches(sized, DEFAULT_BATCH_BYTES, DEFAULT_BATCH_KEYS) {
        let results: Vec<Result<Scanned>> = batch
            .par_iter()
            .map(|key| scan_one(engine, serializer, depth, key))
            .collect();
        for (key, r) in batch.iter().zip(results) {
            match r {
                Ok(Scanned::Shard {
                    codec,
                    stored,
                    payload,
                    samples,
                }) => {
                    if codec == Codec::MsgpackZstd {
                        scan.compressed.add(stored, payload);
                    } else {
                        scan.uncompressed.add(stored, payload);
                    }
                    scan.shards += 1;
                    scan.stored_bytes += stored;
                    scan.payload_bytes += payload;
                    scan.samples += samples;
                }
                Ok(Scanned::Raw) => scan.raw_records += 1,
                Ok(Scanned::Gone) => {}
                Err(error) => scan.failures.push(ShardFailure {
                    key: key.clone(),
                    error,
                }),
            }
        }
        done += batch.len() as u64;
        progress(done, total);
    }
    Ok(scan)
}

enum Scanned {
    Shard {
        codec: Codec,
        stored: u64,
        payload: u64,
        samples: u64,
    },
    Raw,
    Gone,
}

fn scan_one(
    engine: &Engine,
    serializer: &MessagepackSerializer,
    depth: ScanDepth,
    key: &str,
) -> Result<Scanned> {
    let Some(stored) = engine.get(key)? else {
        return Ok(Scanned::Gone);
    };
    let shard_err = |source: ShardError| Error::Shard {
        key: key.to_owned(),
        source,
    };
    let codec = Codec::try_from(stored.codec()).map_err(shard_err)?;
    if codec == Codec::Raw {
        return Ok(Scanned::Raw);
    }
    let stored_len = stored.len() as u64;
    if depth == ScanDepth::Sizes
        && codec == Codec::MsgpackZstd
        && let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(&stored)
    {
        return Ok(Scanned::Shard {
            codec,
            stored: stored_len,
            payload: size,
            samples: 0,
        });
    }
    // Streamed: a chunk and at most one unfinished sample in memory, whatever the payload's size.
    let mut payload = serializer
        .payload_reader(codec, &stored)
        .map_err(shard_err)?;
    let mut counter = (depth == ScanDepth::Samples).then(SampleCounter::new);
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = payload.read_chunk(&mut chunk).map_err(shard_err)?;
        if n == 0 {
            break;
        }
        if let Some(c) = counter.as_mut() {
            c.feed(&chunk[..n]).map_err(shard_err)?;
        }
    }
    let samples = match counter {
        Some(c) => c.finish().map_err(shard_err)?,
        None => 0,
    };
    Ok(Scanned::Shard {
        codec,
        stored: stored_len,
        payload: payload.bytes_read(),
        samples,
    })
}

/// Splits `(item, size)` pairs, in order, into batches of at most `max_items` whose sizes add up
/// to at most `max_bytes` (a single larger item makes a batch of its own).
fn batches<T>(items: Vec<(T, u64)>, max_bytes: u64, max_items: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0u64;
    for (item, size) in items {
        if !current.is_empty()
            && (current.len() >= max_items || bytes.saturating_add(size) > max_bytes)
        {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(item);
        bytes = bytes.saturating_add(size);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_both_bounds() {
        let items: Vec<(u32, u64)> = (0..10).map(|i| (i, 10)).collect();
        let b = batches(items, 25, 100);
        assert_eq!(
            b,
            vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7], vec![8, 9]]
        );
        let items: Vec<(u32, u64)> = (0..5).map(|i| (i, 1)).collect();
        assert_eq!(
            batches(items, 1000, 2),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        // An item larger than the bound still goes, alone.
        assert_eq!(
            batches(vec![(0, 5), (1, 100), (2, 5)], 10, 10),
            vec![vec![0], vec![1], vec![2]]
        );
        assert!(batches(Vec::<(u8, u64)>::new(), 10, 10).is_empty());
    }
}
