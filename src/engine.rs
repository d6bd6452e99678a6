//! The engine: the public handle over one segment, its index and the in-memory overlay.
//!
//! # Concurrency
//! An [`Engine`] is `Send + Sync` and cloning it is cheap (an `Arc`). Readers load one immutable
//! [`View`] (segment map, index map, overlay) with a single atomic load and never touch the writer
//! lock. The writer lock is held only to append a record and publish it; checksums are computed
//! before it is taken.
//!
//! # The memory-map contract
//! Values are served straight out of a read-only `mmap` of the segment file. This is sound as long
//! as nothing outside this library truncates, rewrites or replaces those files in place while a
//! store is open in any process: do not edit, truncate or `cp` over `segment.sqs` or `index.sqi`
//! of an open store (copying them elsewhere is fine). The library itself only ever appends to a
//! segment, zeroes a torn tail instead of truncating it, and replaces files by renaming new ones
//! over them, so a mapping never outlives the bytes behind it.

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::backend::{Backend, FileBackend};
use crate::error::{Error, IoContext, Result};
use crate::index::{self, Counters, IndexMap, Loc, Probe};
use crate::lock::WriterLock;
use crate::record::{self, Header, Kind, MAX_KEY_LEN};
use crate::recovery::{self, Entry, IndexState, Overlay, Replayed};
use crate::scan::{Damaged, Reach, Tail};
use crate::segment::{self, SegmentMap};

/// When `set` returns, relative to the bytes reaching stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// `set` returns once the record is written to the file (the OS page cache). It survives the
    /// process being killed, not a power cut or kernel crash. Call [`Engine::sync`] to make
    /// everything written so far durable.
    Buffered,
    /// `set` returns only after `fdatasync` of the segment: the record survives a power cut.
    #[default]
    Fsync,
}

type BackendWrapper = Arc<dyn Fn(FileBackend) -> Box<dyn Backend> + Send + Sync>;

/// Options for opening a store, as a consuming builder.
///
/// ```
/// use squirrel_store::{Config, Durability};
/// let dir = tempfile::tempdir()?;
/// let engine = Config::new(dir.path()).durability(Durability::Buffered).open()?;
/// engine.set("k", b"v")?;
/// assert_eq!(&*engine.get("k")?.expect("present"), b"v");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct Config {
    path: PathBuf,
    read_only: bool,
    create: bool,
    durability: Durability,
    max_value_len: u64,
    checkpoint_records: usize,
    checkpoint_bytes: u64,
    auto_compact: Option<f64>,
    verify_values: bool,
    rebuild_index: bool,
    backend: Option<BackendWrapper>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("path", &self.path)
            .field("read_only", &self.read_only)
            .field("create", &self.create)
            .field("durability", &self.durability)
            .field("max_value_len", &self.max_value_len)
            .field("checkpoint_records", &self.checkpoint_records)
            .field("checkpoint_bytes", &self.checkpoint_bytes)
            .finish_non_exhaustive()
    }
}

/// Default limit on one value: 1 TiB.
pub const DEFAULT_MAX_VALUE_LEN: u64 = 1 << 40;

impl Config {
    /// The backend for a segment file, wrapped as configured.
    pub(crate) fn backend_for(&self, file: std::fs::File) -> Box<dyn Backend> {
        let fb = FileBackend::new(file);
        match &self.backend {
            Some(wrap) => wrap(fb),
            None => Box::new(fb),
        }
    }

    /// Options for the store in directory `path`: read-write, created if missing,
    /// [`Durability::Fsync`], values up to [`DEFAULT_MAX_VALUE_LEN`](crate::DEFAULT_MAX_VALUE_LEN).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Config {
            path: path.as_ref().to_owned(),
            read_only: false,
            create: true,
            durability: Durability::default(),
            max_value_len: DEFAULT_MAX_VALUE_LEN,
            checkpoint_records: 16_384,
            checkpoint_bytes: 256 << 20,
            auto_compact: None,
            verify_values: true,
            rebuild_index: false,
            backend: None,
        }
    }

    /// Ignores the index file and builds a new one from a full scan of the segment, renamed into
    /// place only once it is complete (what `rebuild_index` does).
    pub(crate) fn force_rebuild_index(mut self) -> Self {
        self.rebuild_index = true;
        self
    }

    /// Opens without the writer lock and refuses every write. Several read-only handles, in any
    /// processes, can share a store with one writer; they see its new records after
    /// [`Engine::refresh`].
    pub fn read_only(mut self, yes: bool) -> Self {
        self.read_only = yes;
        self
    }

    /// Whether a missing store is created (default true; ignored when read-only).
    pub fn create(mut self, yes: bool) -> Self {
        self.create = yes;
        self
    }

    /// When `set` returns relative to durability; see [`Durability`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Largest value accepted by `set`, in bytes.
    pub fn max_value_len(mut self, bytes: u64) -> Self {
        self.max_value_len = bytes;
        self
    }

    /// Checkpoint the index once this many records or bytes were appended since the last one.
    /// Smaller bounds make opening faster (less tail to replay) and cost more index writes.
    pub fn checkpoint_every(mut self, records: usize, bytes: u64) -> Self {
        self.checkpoint_records = records.max(1);
        self.checkpoint_bytes = bytes.max(1);
        self
    }

    /// Whether `get` checks the CRC-32 over the whole value before returning it (default true).
    ///
    /// Turning it off saves one pass over the value (a third of the time of a hot 1 MiB get);
    /// the header, key and index entry are still checked, but a value damaged on disk is then
    /// served as it is. `verify` and compaction always check.
    pub fn verify_values(mut self, yes: bool) -> Self {
        self.verify_values = yes;
        self
    }

    /// Compact in a background thread once dead bytes exceed this fraction of all record bytes
    /// (and at least 64 MiB). Off (`None`) by default: compaction is an operator's decision.
    pub fn auto_compact(mut self, dead_ratio: Option<f64>) -> Self {
        self.auto_compact = dead_ratio;
        self
    }

    /// Wraps the segment file's I/O backend, e.g. to inject faults in tests.
    ///
    /// A test hook, not part of the stable API: hidden from the docs and free to change.
    #[doc(hidden)]
    pub fn wrap_backend(
        mut self,
        wrap: impl Fn(FileBackend) -> Box<dyn Backend> + Send + Sync + 'static,
    ) -> Self {
        self.backend = Some(Arc::new(wrap));
        self
    }

    /// Opens the store.
    ///
    /// # Errors
    /// [`Error::Locked`] if another writer holds the store, [`Error::NotFound`] if there is no
    /// store and it may not be created, [`Error::BadMagic`] / [`Error::UnsupportedVersion`] /
    /// [`Error::Corruption`] for files this build cannot trust, [`Error::Io`] otherwise.
    pub fn open(self) -> Result<Engine> {
        Engine::open_with(self)
    }
}

/// Statistics about a store, as of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Keys with a live value.
    pub live_records: u64,
    /// Bytes of live records (headers, keys and values).
    pub live_bytes: u64,
    /// Overwritten values, deleted values and tombstones: what compaction would drop.
    pub dead_records: u64,
    /// Bytes of dead records.
    pub dead_bytes: u64,
    /// Bytes of valid records in the segment, header included: where the next record goes.
    pub segment_len: u64,
    /// Length of the segment file; the rest past `segment_len` is preallocated zeros.
    pub segment_file_len: u64,
    /// Length of the index file (0 when there is none).
    pub index_file_len: u64,
    /// Segment bytes covered by the index's last checkpoint.
    pub checkpoint_len: u64,
    /// Records written since the last checkpoint (held in memory until the next).
    pub overlay_records: u64,
    /// Records replayed from the segment when the store was opened or last refreshed.
    pub replayed_records: u64,
    /// Bytes of a torn tail found at open (cut off when read-write, ignored when read-only).
    pub torn_tail_bytes: u64,
    /// Whether the index was rebuilt from a full scan of the segment when opening.
    pub index_rebuilt: bool,
    /// Damaged records or regions found by the scans of this handle (at open, refresh or repair;
    /// records under a checkpoint are only checked when read, or by `verify`).
    pub damaged_records: u64,
    /// Files in the store's `lost+found/`: bytes saved before a cut or repair removed them.
    pub lost_found_files: u64,
    /// The segment format version.
    pub format_version: u32,
}

impl Stats {
    /// Dead bytes as a fraction of all record bytes (0.0 for an empty store).
    pub fn dead_ratio(&self) -> f64 {
        let total = self.live_bytes + self.dead_bytes;
        if total == 0 {
            0.0
        } else {
            self.dead_bytes as f64 / total as f64
        }
    }
}

/// A value read from the store: derefs to the bytes inside the memory map (no copy).
///
/// It keeps the mapping alive, so it stays valid while the store grows or is compacted.
#[derive(Clone)]
pub struct ValueRef {
    map: Arc<SegmentMap>,
    start: usize,
    len: usize,
    codec: u8,
}

impl ValueRef {
    /// The codec byte the record was written with (0 for values written with [`Engine::set`]).
    pub fn codec(&self) -> u8 {
        self.codec
    }
}

impl Deref for ValueRef {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map.bytes()[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for ValueRef {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for ValueRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueRef")
            .field("len", &self.len)
            .field("codec", &self.codec)
            .finish()
    }
}

/// What a reader needs, swapped as one unit so it is always self-consistent.
pub(crate) struct View {
    pub segment: Arc<SegmentMap>,
    pub index: Option<Arc<IndexMap>>,
    pub overlay: Arc<Overlay>,
}

impl State {
    /// The index header describing this state, for a table of `slot_count` slots.
    fn index_header(
        &self,
        covered_len: u64,
        slot_count: u64,
        used_slots: u64,
    ) -> index::IndexHeader {
        index::header_for(
            self.segment_id,
            covered_len,
            slot_count,
            used_slots,
            self.counters,
        )
    }
}

/// Writer-side state, behind the writer lock (read-only handles use it to refresh).
pub(crate) struct State {
    pub(crate) segment_id: u64,
    pub(crate) file: std::fs::File,
    pub(crate) backend: Option<Box<dyn Backend>>,
    /// Where the next record goes: the end of the valid records.
    pub(crate) end: u64,
    /// The segment file's length (at least `end`; the rest is preallocated zeros).
    pub(crate) file_len: u64,
    pub(crate) covered_len: u64,
    pub(crate) used_slots: u64,
    pub(crate) counters: Counters,
    pub(crate) replayed: u64,
    pub(crate) torn: u64,
    pub(crate) index_rebuilt: bool,
    /// The index header on disk says "closed cleanly": it must say otherwise before this session
    /// appends anything, or a crash could leave records after a header that denies them.
    pub(crate) closed_mark: bool,
    /// A damaged index slot was met while writing: the next checkpoint rebuilds from the segment.
    pub(crate) needs_repair: bool,
    /// The segment's format version (a read-write open moves v1 to v2).
    pub(crate) version: u32,
    /// Segment bytes `[0, synced)` are durable: `fdatasync` returned after they were written.
    pub(crate) synced: u64,
    /// Segment bytes `[0, proven)` are proven durable by a sync mark in the segment itself. The
    /// writer leads its next append with a mark whenever `synced` has moved past it.
    pub(crate) proven: u64,
    /// Damage found by this handle's scans.
    pub(crate) damaged: Vec<Damaged>,
    /// Files in `lost+found/`: listed at open, counted up as this handle saves more.
    pub(crate) lost_found_files: u64,
}

pub(crate) struct Inner {
    pub(crate) dir: PathBuf,
    pub(crate) seg_path: PathBuf,
    pub(crate) idx_path: PathBuf,
    pub(crate) config: Config,
    pub(crate) view: ArcSwap<View>,
    pub(crate) live: AtomicU64,
    pub(crate) poisoned: AtomicBool,
    pub(crate) state: Mutex<State>,
    /// Held for the whole of a compaction, so two never run at once.
    pub(crate) compaction: Mutex<()>,
    /// Set while an automatic compaction thread runs.
    pub(crate) auto_compacting: AtomicBool,
    _lock: Option<WriterLock>,
}

/// A store handle: a byte-level key-value store in one directory.
///
/// Keys are non-empty UTF-8 strings of at most [`MAX_KEY_LEN`] bytes; values are bytes.
/// Cloning is cheap and clones share one store.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.inner.dir)
            .field("read_only", &self.inner.config.read_only)
            .finish_non_exhaustive()
    }
}

const LOOKUP_RETRIES: usize = 8;
const AUTO_COMPACT_MIN_DEAD: u64 = 64 << 20;

fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            key: key.into(),
            reason: "keys must not be empty",
        });
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey {
            key: key.chars().take(64).collect(),
            reason: "keys must be at most 1024 bytes of UTF-8",
        });
    }
    Ok(())
}

impl Engine {
    /// Opens (creating if needed) the store in `path` with default options.
    ///
    /// # Errors
    /// See [`Config::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Engine> {
        Config::new(path).open()
    }

    /// Opens the store in `path` read-only.
    ///
    /// # Errors
    /// See [`Config::open`].
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Engine> {
        Config::new(path).read_only(true).open()
    }

    fn open_with(config: Config) -> Result<Engine> {
        let dir = config.path.clone();
        let writable = !config.read_only;
        if writable && config.create {
            std::fs::create_dir_all(&dir).at(&dir)?;
        }
        if !dir.is_dir() {
            return Err(Error::NotFound { path: dir });
        }
        let may_create = writable && config.create;
        if !may_create && !dir.join(segment::SEGMENT_FILE).exists() {
            // Checked before taking the lock, so a directory without a store gets no LOCK file.
            return Err(Error::NotFound { path: dir });
        }
        let lock = if writable {
            let lock = WriterLock::acquire(&dir)?;
            crate::compaction::remove_leftovers(&dir)?;
            Some(lock)
        } else {
            None
        };
        let (view, state) = Self::recover(&dir, &config)?;
        let backend_path = dir.join(segment::SEGMENT_FILE);
        let inner = Inner {
            seg_path: backend_path,
            idx_path: dir.join(index::INDEX_FILE),
            dir,
            live: AtomicU64::new(state.counters.live_records),
            view: ArcSwap::from_pointee(view),
            poisoned: AtomicBool::new(false),
            state: Mutex::new(state),
            compaction: Mutex::new(()),
            auto_compacting: AtomicBool::new(false),
            config,
            _lock: lock,
        };
        let engine = Engine {
            inner: Arc::new(inner),
        };
        if writable {
            let mut st = engine.inner.state.lock();
            if st.index_rebuilt || engine.inner.view.load().index.is_none() {
                engine.inner.checkpoint(&mut st, true)?;
            }
        }
        Ok(engine)
    }

    /// Recovery: map the segment, adopt or rebuild the index, replay the tail.
    fn recover(dir: &Path, config: &Config) -> Result<(View, State)> {
        let writable = !config.read_only;
        let seg_path = dir.join(segment::SEGMENT_FILE);
        let opened = recovery::open_segment(dir, writable, config.create)?;
        let file_len = opened.map.len();
        let mut closed = false;
        let (index, from, mut counters, used_slots, rebuilt) = if opened.created {
            (None, segment::HEADER_LEN, Counters::default(), 0, false)
        } else if config.rebuild_index {
            (None, segment::HEADER_LEN, Counters::default(), 0, true)
        } else {
            match recovery::open_index(dir, writable, opened.segment_id, file_len)? {
                IndexState::Usable(map, h) => {
                    closed = h.closed;
                    (Some(map), h.covered_len, h.counters, h.used_slots, false)
                }
                IndexState::Unusable => (None, segment::HEADER_LEN, Counters::default(), 0, true),
            }
        };
        let mut overlay = Overlay::new();
        let bytes = opened.map.bytes();
        // A clean close proved nothing follows the checkpoint: check the next header's worth of
        // bytes is zero rather than scanning the allocated space after it.
        let closed_end = closed
            && index.is_some()
            && usize::try_from(from).is_ok_and(|f| {
                bytes
                    .get(f..(f + crate::record::HEADER_LEN).min(bytes.len()))
                    .is_some_and(|w| w.iter().all(|&b| b == 0))
            });
        // A read-write open may clean up after the last record, so it first looks at the whole
        // file for anything intact there; a read-only one stops at the written part.
        let reach = if writable {
            Reach::Whole
        } else {
            Reach::Written
        };
        let mut replay = if closed_end {
            Ok(Replayed {
                tail: Tail {
                    end: from,
                    torn: 0,
                    proven: from,
                    marked: 0,
                    ends_proven: crate::scan::ends_with_mark(bytes, from),
                },
                ..Replayed::default()
            })
        } else {
            recovery::replay(
                bytes,
                from,
                from,
                reach,
                index.as_deref(),
                &overlay,
                &mut counters,
                &seg_path,
            )
        };
        let (mut index, mut from, mut used_slots, mut rebuilt) = (index, from, used_slots, rebuilt);
        if replay.is_err() && index.is_some() {
            // The tail may be fine and a slot damaged: rebuild from a full scan before giving up.
            (index, from, used_slots, rebuilt) = (None, segment::HEADER_LEN, 0, true);
            overlay = Overlay::new();
            counters = Counters::default();
            replay = recovery::replay(
                opened.map.bytes(),
                from,
                from,
                reach,
                None,
                &overlay,
                &mut counters,
                &seg_path,
            );
        }
        let Replayed {
            tail,
            records: replayed,
            damaged,
        } = replay?;
        let (end, torn) = (tail.end, tail.torn);
        let closed = closed_end && index.is_some() && end == from;
        let backend: Option<Box<dyn Backend>> = if writable {
            let file = opened.file.try_clone().at(&seg_path)?;
            Some(config.backend_for(file))
        } else {
            None
        };
        let mut version = opened.version;
        if let Some(b) = &backend {
            if !closed && file_len > end {
                // Everything after the last record goes: a torn tail, and anything a crash left
                // further on (records of an interrupted append beyond a hole must never be
                // revived by appends that later close the hole). Its bytes are saved first:
                // a torn tail cannot be told from damage to the last append, which may have
                // been acknowledged. Punched, not truncated: another process may have those
                // bytes mapped.
                let keep = crate::scan::last_nonzero(bytes, end);
                if keep > end {
                    let from = usize::try_from(end).unwrap_or(usize::MAX);
                    let to = usize::try_from(keep).unwrap_or(usize::MAX);
                    crate::lost_found::save(dir, opened.segment_id, end, &bytes[from..to])?;
                    // Counted by the listing below.
                }
                b.discard(end, file_len - end).at(&seg_path)?;
            }
            let upgrade = version < segment::FORMAT_VERSION;
            if upgrade {
                // Sync marks and key checks are v2: say so in the header before writing any.
                b.write_at(&segment::encode_header(opened.segment_id), 0)
                    .at(&seg_path)?;
                version = segment::FORMAT_VERSION;
            }
            if !closed || upgrade {
                b.sync_data().at(&seg_path)?;
            }
        }
        let covered_len = if index.is_some() {
            from
        } else {
            segment::HEADER_LEN
        };
        // After the sync above (or the clean close), everything up to `end` is durable.
        // What the segment proves by itself (marks), not the deletable index: the next append
        // leads with a mark unless the records already end with one.
        let proven = if tail.ends_proven {
            end
        } else {
            tail.marked.max(segment::HEADER_LEN)
        };
        let state = State {
            segment_id: opened.segment_id,
            file: opened.file,
            backend,
            end,
            file_len,
            covered_len,
            used_slots,
            counters,
            replayed,
            torn,
            index_rebuilt: rebuilt,
            closed_mark: closed && writable,
            needs_repair: false,
            version,
            synced: if writable { end } else { 0 },
            proven,
            damaged,
            lost_found_files: crate::lost_found::list(dir)?.len() as u64,
        };
        let view = View {
            segment: opened.map,
            index,
            overlay: Arc::new(overlay),
        };
        Ok((view, state))
    }

    /// Damage this handle's scans found (at open, refresh or an index rebuild).
    pub(crate) fn damaged(&self) -> Vec<Damaged> {
        self.inner.state.lock().damaged.clone()
    }

    /// Saves `len` segment bytes at `offset` into `lost+found/`.
    pub(crate) fn save_damage(&self, offset: u64, len: u64) -> Result<()> {
        let mut st = self.inner.state.lock();
        let view = self.inner.view.load();
        self.inner.salvage(&mut st, &view.segment, offset, len)
    }

    /// The directory of this store.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// Whether this handle is read-only.
    pub fn is_read_only(&self) -> bool {
        self.inner.config.read_only
    }

    /// Stores `value` under `key`, replacing any previous value.
    ///
    /// Returns once the record is in the file ([`Durability::Buffered`]) or on stable storage
    /// ([`Durability::Fsync`]).
    ///
    /// # Errors
    /// [`Error::InvalidKey`], [`Error::ValueTooLarge`], [`Error::ReadOnly`], [`Error::PreviousIo`]
    /// after an earlier failed write, [`Error::Io`] if this write fails (then the handle refuses
    /// further writes).
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.put(key, 0, value)
    }

    /// Like [`Engine::set`], recording `codec` in the record so readers know how to decode it.
    ///
    /// # Errors
    /// As [`Engine::set`].
    pub fn put(&self, key: &str, codec: u8, value: &[u8]) -> Result<()> {
        self.set_many_with_codec([(key, codec, value)])
    }

    /// Stores many values with one lock acquisition and, in [`Durability::Fsync`], one fsync.
    /// A key repeated in the batch ends with its last value.
    ///
    /// **Not atomic across a crash**: the batch is acknowledged as a whole (in
    /// [`Durability::Fsync`], after one `fdatasync`), but a crash before that can leave a prefix
    /// of it in the store after recovery (the records of the interrupted append before its first
    /// hole; the rest is saved into `lost+found/` and cut). Readers in the running process see
    /// the batch only once it is acknowledged.
    ///
    /// # Errors
    /// As [`Engine::set`]; on error none of the batch is acknowledged (some of it may have been
    /// written, and may survive a reopen).
    pub fn set_many<'a, K, V>(&self, items: impl IntoIterator<Item = (K, V)>) -> Result<()>
    where
        K: AsRef<str> + 'a,
        V: AsRef<[u8]> + 'a,
    {
        let items: Vec<(K, V)> = items.into_iter().collect();
        self.set_many_with_codec(items.iter().map(|(k, v)| (k.as_ref(), 0u8, v.as_ref())))
    }

    /// Stores many `(key, codec, value)` records at once; see [`Engine::set_many`].
    ///
    /// # Errors
    /// As [`Engine::set`].
    pub fn set_many_with_codec<'a>(
        &self,
        items: impl IntoIterator<Item = (&'a str, u8, &'a [u8])>,
    ) -> Result<()> {
        self.inner.writable()?;
        // Checksums and headers are built before the lock is taken: that is the pass over the data.
        let items: Vec<(&str, u8, &[u8])> = items.into_iter().collect();
        let n = items.len();
        let mut records = Vec::with_capacity(items.len());
        for (i, (key, codec, value)) in items.into_iter().enumerate() {
            check_key(key)?;
            if value.len() as u64 > self.inner.config.max_value_len {
                return Err(Error::ValueTooLarge {
                    key: key.into(),
                    len: value.len() as u64,
                    limit: self.inner.config.max_value_len,
                });
            }
            let enc = record::Encoded::new(
                Kind::Put,
                codec,
                key.as_bytes(),
                value,
                record::Batch::nth(i, n),
            );
            records.push(Pending {
                key,
                kind: Kind::Put,
                enc,
                value,
            });
        }
        if records.is_empty() {
            return Ok(());
        }
        let mut st = self.inner.state.lock();
        self.inner.append(&mut st, records)?;
        let compact = self.inner.config.auto_compact.is_some_and(|t| {
            st.counters.dead_bytes >= AUTO_COMPACT_MIN_DEAD
                && st.counters.dead_bytes as f64
                    > t * (st.counters.dead_bytes + st.counters.live_bytes) as f64
        });
        drop(st);
        if compact && !self.inner.auto_compacting.swap(true, Ordering::AcqRel) {
            let inner = self.inner.clone();
            std::thread::spawn(move || {
                // A failure leaves the store as it was; the next trigger tries again.
                let _ = inner.compact(&mut |_, _| {}, None);
                inner.auto_compacting.store(false, Ordering::Release);
            });
        }
        Ok(())
    }

    /// Deletes `key` by appending a tombstone. Returns whether the key had a value.
    ///
    /// # Errors
    /// As [`Engine::set`].
    pub fn delete(&self, key: &str) -> Result<bool> {
        self.inner.writable()?;
        check_key(key)?;
        let enc = record::Encoded::new(Kind::Delete, 0, key.as_bytes(), &[], record::Batch::ALONE);
        let mut st = self.inner.state.lock();
        let view = self.inner.view.load();
        let prev = recovery::current(
            &view.overlay,
            view.index.as_deref(),
            view.segment.bytes(),
            key,
            index::hash_key(key),
            &self.inner.seg_path,
        );
        let found = match prev {
            Ok(None) => return Ok(false),
            Ok(Some(loc)) => Some(loc),
            // The key's record is damaged: deleting it is how an operator repairs that.
            Err(_) => None,
        };
        let damaged = match found {
            Some(loc) => self
                .inner
                .read(view.segment.clone(), key, loc, true)
                .is_err()
                .then_some(loc),
            None => st
                .damaged
                .iter()
                .rev()
                .find(|d| d.key.as_deref() == Some(key))
                .map(|d| Loc {
                    offset: d.offset,
                    len: d.len,
                    crc: 0,
                }),
        };
        if let Some(loc) = damaged {
            // Whatever is left of the damaged record is saved before the tombstone makes it dead
            // bytes that compaction drops.
            self.inner
                .salvage(&mut st, &view.segment, loc.offset, loc.len)?;
        }
        drop(view);
        let rec = Pending {
            key,
            kind: Kind::Delete,
            enc,
            value: &[],
        };
        self.inner.append(&mut st, vec![rec])?;
        Ok(true)
    }

    /// The value of `key`, or `None`. The bytes are checked against the record's crc32 first.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for a key that cannot exist, [`Error::Corruption`] naming the key and
    /// offset if its record is damaged: never wrong bytes.
    pub fn get(&self, key: &str) -> Result<Option<ValueRef>> {
        check_key(key)?;
        let Some((segment, loc)) = self.inner.locate(key)? else {
            return Ok(None);
        };
        let check = self.inner.config.verify_values;
        self.inner.read(segment, key, loc, check).map(Some)
    }

    /// Values for many keys, in the order given.
    ///
    /// # Errors
    /// As [`Engine::get`], for the first key that fails.
    pub fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<ValueRef>>> {
        keys.iter().map(|k| self.get(k.as_ref())).collect()
    }

    /// Whether `key` has a value (its record header is checked, its value is not read).
    ///
    /// # Errors
    /// As [`Engine::get`].
    pub fn contains(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        match self.inner.locate(key)? {
            Some((segment, loc)) => self.inner.read(segment, key, loc, false).map(|_| true),
            None => Ok(false),
        }
    }

    /// Every key with a value, sorted by byte order (like squirrel's `keys()` sorted).
    ///
    /// Reads each indexed record's header, so it costs one page touch per key.
    ///
    /// A key whose record's header or key bytes are damaged is not listed (`verify` names it).
    ///
    /// # Errors
    /// [`Error::Corruption`] if the index is damaged beyond repair.
    pub fn keys(&self) -> Result<Vec<String>> {
        let snap = self.inner.snapshot()?;
        let bytes = snap.view.segment.bytes();
        let mut keys: Vec<String> = snap
            .recent
            .iter()
            .filter(|(_, e)| matches!(e, Entry::Put(_)))
            .map(|(k, _)| k.to_string())
            .collect();
        for (hash, loc) in &snap.indexed {
            // A record whose header or key bytes are damaged cannot say its key: it is not
            // listed (its damage is `verify`'s to report, and `get` of the key reports it).
            let Ok(key) = self.inner.key_of(bytes, *loc) else {
                continue;
            };
            if index::hash_key(key) != *hash {
                continue;
            }
            if !snap.recent.contains_key(key) {
                keys.push(key.to_owned());
            }
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// Every live key and its value, in the order the records lie in the segment (the fastest
    /// order to read them; sort by key yourself if you need that order). The iterator reads the
    /// store as it was when `iter` was called.
    ///
    /// # Errors
    /// [`Error::Corruption`] if the index is damaged beyond repair; each item is an error if its
    /// record is damaged.
    pub fn iter(&self) -> Result<Iter> {
        let snap = self.inner.snapshot()?;
        let mut locs: Vec<(Loc, bool)> = snap
            .recent
            .values()
            .filter_map(|e| match e {
                Entry::Put(loc) => Some((*loc, true)),
                Entry::Tombstone => None,
            })
            .collect();
        locs.extend(snap.indexed.into_iter().map(|(_, loc)| (loc, false)));
        locs.sort_unstable_by_key(|(loc, _)| loc.offset);
        Ok(Iter {
            engine: self.clone(),
            segment: snap.view.segment.clone(),
            recent: snap.recent,
            locs: locs.into_iter(),
        })
    }

    /// Number of keys with a value.
    pub fn len(&self) -> u64 {
        self.inner.live.load(Ordering::Acquire)
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes every record written so far durable (`fdatasync`).
    ///
    /// # Errors
    /// [`Error::Io`] if the sync fails (the handle then refuses further writes).
    pub fn sync(&self) -> Result<()> {
        self.inner.writable()?;
        let mut st = self.inner.state.lock();
        self.inner.sync(&mut st)
    }

    /// Writes the in-memory overlay into the index now, so the next open replays nothing.
    /// It also happens on its own every few thousand records and when the last handle drops.
    ///
    /// # Errors
    /// [`Error::Io`] if the index cannot be written.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.writable()?;
        let mut st = self.inner.state.lock();
        self.inner.checkpoint(&mut st, false)
    }

    /// For a read-only handle: picks up what a writer appended (or compacted) since the handle
    /// was opened or last refreshed. A no-op on a read-write handle, which always sees its writes.
    ///
    /// # Errors
    /// [`Error::Corruption`] if the new records are damaged, [`Error::Io`] otherwise.
    pub fn refresh(&self) -> Result<()> {
        if !self.inner.config.read_only {
            return Ok(());
        }
        let mut st = self.inner.state.lock();
        self.inner.refresh(&mut st)
    }

    /// Statistics as of now.
    pub fn stats(&self) -> Stats {
        let st = self.inner.state.lock();
        let view = self.inner.view.load();
        Stats {
            live_records: st.counters.live_records,
            live_bytes: st.counters.live_bytes,
            dead_records: st.counters.dead_records,
            dead_bytes: st.counters.dead_bytes,
            segment_len: st.end,
            segment_file_len: st.file_len,
            index_file_len: view.index.as_ref().map_or(0, |i| i.file_len()),
            checkpoint_len: st.covered_len,
            overlay_records: view.overlay.len() as u64,
            replayed_records: st.replayed,
            torn_tail_bytes: st.torn,
            index_rebuilt: st.index_rebuilt,
            damaged_records: st.damaged.len() as u64,
            lost_found_files: st.lost_found_files,
            format_version: st.version,
        }
    }

    /// Drops this handle as if its process had been killed: no checkpoint, nothing flushed that
    /// was not already written. For crash tests; a real program has no reason to call it.
    #[doc(hidden)]
    pub fn abandon(self) {
        self.inner.poisoned.store(true, Ordering::Release);
    }

    /// Rewrites the store without dead records and switches to the new files atomically.
    ///
    /// Readers keep reading during the copy; writers keep writing too, and what they append
    /// meanwhile is carried into the new segment under the writer lock at the switch (writers wait
    /// only for that last part). Needs about the live bytes in free space, checked first.
    ///
    /// # Errors
    /// [`Error::NoSpace`] before anything is written, [`Error::Corruption`] if a live record is
    /// damaged (nothing damaged is copied forward; the old store stays as it was),
    /// [`Error::Io`] otherwise.
    pub fn compact(&self) -> Result<crate::CompactionReport> {
        self.inner.compact(&mut |_, _| {}, None)
    }

    /// [`Engine::compact`], calling `progress(bytes_copied, bytes_to_copy)` as it goes.
    ///
    /// # Errors
    /// As [`Engine::compact`].
    pub fn compact_with_progress(
        &self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<crate::CompactionReport> {
        self.inner.compact(progress, None)
    }

    /// Runs a compaction that stops at `point` as if the process died there. For crash tests.
    #[doc(hidden)]
    pub fn compact_crashing_at(&self, point: crate::CrashPoint) -> Result<crate::CompactionReport> {
        self.inner.compact(&mut |_, _| {}, Some(point))
    }

    /// Checkpoints and closes this handle, reporting any error that dropping it would swallow.
    ///
    /// # Errors
    /// [`Error::Io`] if the final checkpoint fails.
    pub fn close(self) -> Result<()> {
        if self.inner.config.read_only || self.inner.poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut st = self.inner.state.lock();
        self.inner.close_cleanly(&mut st)
    }
}

/// A consistent picture of every live entry: the view, the overlay's entries and the index's.
struct Snapshot {
    view: Arc<View>,
    recent: HashMap<Box<str>, Entry>,
    indexed: Vec<(u64, Loc)>,
}

/// An iterator over a store's live keys and values; see [`Engine::iter`].
pub struct Iter {
    engine: Engine,
    segment: Arc<SegmentMap>,
    recent: HashMap<Box<str>, Entry>,
    locs: std::vec::IntoIter<(Loc, bool)>,
}

impl fmt::Debug for Iter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("remaining", &self.locs.len())
            .finish()
    }
}

impl Iterator for Iter {
    type Item = Result<(String, ValueRef)>;

    fn next(&mut self) -> Option<Self::Item> {
        for (loc, from_overlay) in self.locs.by_ref() {
            let inner = &self.engine.inner;
            let key = match inner.key_of(self.segment.bytes(), loc) {
                Ok(k) => k.to_owned(),
                Err(e) => return Some(Err(e)),
            };
            // An index entry whose key was written again since the checkpoint is stale.
            if !from_overlay && self.recent.contains_key(key.as_str()) {
                continue;
            }
            let check = inner.config.verify_values;
            return Some(
                inner
                    .read(self.segment.clone(), &key, loc, check)
                    .map(|v| (key, v)),
            );
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.locs.len()))
    }
}

/// A record ready to append.
struct Pending<'a> {
    key: &'a str,
    kind: Kind,
    enc: record::Encoded,
    value: &'a [u8],
}

impl Pending<'_> {
    fn len(&self) -> u64 {
        (self.enc.head.len() + self.value.len()) as u64
    }
}

/// Small records are coalesced into one write; large values are written from the caller's buffer.
const COALESCE: usize = 256 << 10;

impl Inner {
    pub(crate) fn writable(&self) -> Result<()> {
        if self.config.read_only {
            return Err(Error::ReadOnly {
                path: self.dir.clone(),
            });
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::PreviousIo {
                path: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Runs an I/O call of the writer; a failure poisons the handle.
    pub(crate) fn io<T>(&self, r: std::io::Result<T>) -> Result<T> {
        r.map_err(|e| {
            self.poisoned.store(true, Ordering::Release);
            Error::io(&self.seg_path, e)
        })
    }

    fn backend<'s>(&self, st: &'s State) -> Result<&'s dyn Backend> {
        st.backend.as_deref().ok_or_else(|| Error::ReadOnly {
            path: self.dir.clone(),
        })
    }

    fn sync(&self, st: &mut State) -> Result<()> {
        let b = self.backend(st)?;
        self.io(b.sync_data())?;
        st.synced = st.end;
        Ok(())
    }

    /// Copies `len` segment bytes at `offset` into `lost+found/` (bounded by the map).
    pub(crate) fn salvage(
        &self,
        st: &mut State,
        segment: &SegmentMap,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        let bytes = segment.bytes();
        let from = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let to = usize::try_from(offset.saturating_add(len))
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        if to > from && crate::lost_found::save(&self.dir, st.segment_id, offset, &bytes[from..to])?
        {
            st.lost_found_files += 1;
        }
        Ok(())
    }

    /// Appends a lone sync mark if records written since the last one have been synced, so the
    /// segment itself proves them durable (a clean close ends with one).
    fn write_mark(&self, st: &mut State) -> Result<()> {
        self.append(st, Vec::new())
    }

    /// Appends records, makes them as durable as configured, then publishes them.
    ///
    /// When bytes synced since the last sync mark hold records, the append is led by a new mark
    /// (the first record of the same append, so a torn append is still one append): the segment
    /// then proves those bytes durable by itself, without the index.
    fn append(&self, st: &mut State, mut records: Vec<Pending<'_>>) -> Result<()> {
        self.writable()?;
        let lead = st.synced > st.proven;
        if records.is_empty() && !lead {
            return Ok(());
        }
        if st.closed_mark {
            self.mark_index(st, false)?;
        }
        if lead {
            let continues = !records.is_empty();
            if let Some(first) = records.first_mut() {
                let b = first.enc.batch();
                first.enc.set_batch(record::Batch { follows: true, ..b });
            }
            let enc = record::encode_mark(
                st.synced,
                record::Batch {
                    continues,
                    follows: false,
                },
            );
            records.insert(
                0,
                Pending {
                    key: "",
                    kind: Kind::Mark,
                    enc,
                    value: &[],
                },
            );
        }
        let total: u64 = records.iter().map(Pending::len).sum();
        let start = st.end;
        let needed = start.checked_add(total).ok_or_else(|| {
            Error::corruption(&self.seg_path, start, None, "segment would overflow")
        })?;
        self.ensure_capacity(st, needed)?;
        let backend = self.backend(st)?;
        let mut at = start;
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_at = at;
        for r in &records {
            if r.value.len() <= COALESCE {
                if buf.is_empty() {
                    buf_at = at;
                }
                buf.extend_from_slice(&r.enc.head);
                buf.extend_from_slice(r.value);
                if buf.len() >= COALESCE {
                    self.io(backend.write_at(&buf, buf_at))?;
                    buf.clear();
                }
            } else {
                if !buf.is_empty() {
                    self.io(backend.write_at(&buf, buf_at))?;
                    buf.clear();
                }
                self.io(backend.write_at(&r.enc.head, at))?;
                self.io(backend.write_at(r.value, at + r.enc.head.len() as u64))?;
            }
            at += r.len();
        }
        if !buf.is_empty() {
            self.io(backend.write_at(&buf, buf_at))?;
        }
        if self.config.durability == Durability::Fsync {
            self.io(backend.sync_data())?;
        }
        if lead {
            // The mark at `start` vouches for [0, synced); itself it needs no proof.
            st.proven = if st.synced == start {
                start + record::MARK_LEN
            } else {
                st.synced
            };
        }
        // Durable as promised: publish.
        let view = self.view.load();
        let mut at = start;
        for r in &records {
            if r.kind == Kind::Mark {
                recovery::count(&mut st.counters, Kind::Mark, None, r.len());
                at += r.len();
                continue;
            }
            let hash = index::hash_key(r.key);
            // The record is written: publish it whatever happens. A damaged slot only costs the
            // statistics here, and makes the next checkpoint rebuild the index and recount.
            let prev = recovery::current(
                &view.overlay,
                view.index.as_deref(),
                view.segment.bytes(),
                r.key,
                hash,
                &self.seg_path,
            )
            .unwrap_or_else(|_| {
                st.needs_repair = true;
                None
            });
            recovery::count(&mut st.counters, r.kind, prev, r.len());
            let entry = match r.kind {
                Kind::Put => Entry::Put(Loc {
                    offset: at,
                    len: r.len(),
                    crc: r.enc.crc,
                }),
                _ => Entry::Tombstone,
            };
            view.overlay.insert(r.key.into(), entry);
            at += r.len();
        }
        st.end = at;
        if self.config.durability == Durability::Fsync {
            st.synced = st.end;
        }
        self.live.store(st.counters.live_records, Ordering::Release);
        let tail_bytes = st.end - st.covered_len;
        if view.overlay.len() >= self.config.checkpoint_records
            || tail_bytes >= self.config.checkpoint_bytes
        {
            drop(view);
            self.checkpoint(st, false)?;
        }
        Ok(())
    }

    /// Grows the file ahead of the writer so the map is rebuilt rarely; makes the growth durable
    /// (in Fsync mode) before any record is written into the new region.
    fn ensure_capacity(&self, st: &mut State, needed: u64) -> Result<()> {
        if needed <= st.file_len {
            return Ok(());
        }
        let step = (st.file_len / 4).clamp(1 << 20, 1 << 30);
        let new_len = needed.max(st.file_len + step).next_multiple_of(64 << 10);
        let backend = self.backend(st)?;
        self.io(backend.set_len(new_len))?;
        if self.config.durability == Durability::Fsync {
            self.io(backend.sync_data())?;
            st.synced = st.end;
        }
        st.file_len = new_len;
        let map = SegmentMap::new(&st.file, new_len, &self.seg_path)?;
        let old = self.view.load();
        self.view.store(Arc::new(View {
            segment: map,
            index: old.index.clone(),
            overlay: old.overlay.clone(),
        }));
        Ok(())
    }

    /// Writes the overlay into the index. `rebuild` forces a fresh index file.
    ///
    /// Protocol (format-spec/ argues it): fsync the segment, so everything the index will name is
    /// durable; mark the index header dirty and sync; update slots in place; sync; write the clean
    /// header with the new covered length; sync. A crash in between leaves a dirty header, and the
    /// next open rebuilds the index from the segment.
    pub(crate) fn checkpoint(&self, st: &mut State, rebuild: bool) -> Result<()> {
        if std::mem::take(&mut st.needs_repair) {
            return self.repair_index(st);
        }
        let view = self.view.load_full();
        if !rebuild && view.overlay.is_empty() && st.covered_len == st.end && view.index.is_some() {
            return Ok(());
        }
        self.sync(st)?;
        let seg = view.segment.bytes();
        let puts = view
            .overlay
            .iter()
            .filter(|e| matches!(e.value(), Entry::Put(_)))
            .count() as u64;
        let in_place = match &view.index {
            Some(idx) if !rebuild && !index::too_full(st.used_slots + puts, idx.slot_count()) => {
                Some(idx.clone())
            }
            _ => None,
        };
        let new_index = match in_place {
            Some(idx) => {
                let mut header = st.index_header(st.covered_len, idx.slot_count(), st.used_slots);
                header.dirty = true;
                idx.write_header(&header)?;
                // Only the header page changed: flush it alone, not the whole map.
                self.index_io(idx.flush_header(&self.idx_path))?;
                let mut used = st.used_slots;
                for e in view.overlay.iter() {
                    let key: &str = e.key();
                    let hash = index::hash_key(key);
                    let r = match *e.value() {
                        Entry::Put(loc) => idx.upsert(key, hash, loc, seg).map(|new| {
                            used += u64::from(new);
                        }),
                        Entry::Tombstone => idx.remove(key, hash, seg),
                    };
                    if r.is_err() {
                        // A damaged slot: the table cannot be trusted; rebuild it from the segment.
                        drop(e);
                        return self.repair_index(st);
                    }
                }
                self.index_io(idx.flush(&self.idx_path))?;
                let header = st.index_header(st.end, idx.slot_count(), used);
                idx.write_header(&header)?;
                self.index_io(idx.flush_header(&self.idx_path))?;
                st.used_slots = used;
                idx
            }
            None => self.rebuild_index(st, &view)?,
        };
        st.covered_len = st.end;
        self.view.store(Arc::new(View {
            segment: view.segment.clone(),
            index: Some(new_index),
            overlay: Arc::new(Overlay::new()),
        }));
        Ok(())
    }

    pub(crate) fn index_io<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.poisoned.store(true, Ordering::Release);
        }
        r
    }

    /// Builds a fresh index file from the current index and the overlay, and renames it into place.
    fn rebuild_index(&self, st: &mut State, view: &View) -> Result<Arc<IndexMap>> {
        let seg = view.segment.bytes();
        let mut by_hash: HashMap<u64, Vec<Box<str>>> = HashMap::new();
        let mut entries: Vec<(u64, Loc)> = Vec::new();
        for e in view.overlay.iter() {
            let hash = index::hash_key(e.key());
            by_hash.entry(hash).or_default().push(e.key().clone());
            if let Entry::Put(loc) = *e.value() {
                entries.push((hash, loc));
            }
        }
        if let Some(old) = &view.index {
            let Some(old_entries) = old.entries() else {
                return self.repair_index(st).and_then(|()| {
                    self.view.load().index.clone().ok_or_else(|| {
                        Error::corruption(&self.idx_path, 0, None, "index rebuild failed")
                    })
                });
            };
            for (hash, loc) in old_entries {
                if let Some(keys) = by_hash.get(&hash) {
                    let key = self.key_of(seg, loc)?;
                    if keys.iter().any(|k| &**k == key) {
                        continue;
                    }
                }
                entries.push((hash, loc));
            }
        }
        let slots = index::slots_for(entries.len() as u64);
        let header = st.index_header(st.end, slots, entries.len() as u64);
        let tmp = self.dir.join(format!("{}.tmp", index::INDEX_FILE));
        let map = self.index_io(IndexMap::create(&self.idx_path, &tmp, header, &entries))?;
        self.index_io(recovery::sync_dir(&self.dir))?;
        st.used_slots = entries.len() as u64;
        Ok(map)
    }

    /// Rewrites the index header's state as of `st`: `closed` after a clean close, else clean.
    fn mark_index(&self, st: &mut State, closed: bool) -> Result<()> {
        let Some(idx) = self.view.load().index.clone() else {
            return Ok(());
        };
        let mut header = st.index_header(st.covered_len, idx.slot_count(), st.used_slots);
        header.closed = closed;
        idx.write_header(&header)?;
        self.index_io(idx.flush_header(&self.idx_path))?;
        st.closed_mark = closed;
        Ok(())
    }

    /// The end of a clean session: checkpoint, give back the preallocated space, and mark the
    /// index closed so the next open need not clean up after the last record.
    fn close_cleanly(&self, st: &mut State) -> Result<()> {
        if st.closed_mark {
            // Closed already, and nothing was appended since.
            return Ok(());
        }
        // The segment ends with a mark proving everything before it synced: a later open needs
        // no index to know that damage anywhere in it is corruption, not a torn write.
        self.sync(st)?;
        self.write_mark(st)?;
        self.checkpoint(st, false)?;
        self.release_tail(st)?;
        if st.covered_len == st.end {
            self.mark_index(st, true)?;
        }
        Ok(())
    }

    /// Gives back the space allocated ahead of the writer (the file keeps its length, so no
    /// reader's map ever extends past it).
    fn release_tail(&self, st: &State) -> Result<()> {
        match &st.backend {
            Some(b) if st.file_len > st.end => self.io(b.discard(st.end, st.file_len - st.end)),
            _ => Ok(()),
        }
    }

    /// Every live entry as of now. A read-only handle whose index names records past its map
    /// (a writer in another process grew the file) maps the file anew; a damaged slot makes the
    /// index be rebuilt from the segment.
    fn snapshot(&self) -> Result<Snapshot> {
        for attempt in 0..3 {
            let view = self.view.load_full();
            // The overlay first: an entry leaves it only after its slot is written.
            let recent: HashMap<Box<str>, Entry> = view
                .overlay
                .iter()
                .map(|e| (e.key().clone(), *e.value()))
                .collect();
            let Some(index) = &view.index else {
                return Ok(Snapshot {
                    view,
                    recent,
                    indexed: Vec::new(),
                });
            };
            let entries = index.entries();
            let fits = entries.as_ref().is_some_and(|e| {
                e.iter().all(|(_, l)| {
                    l.offset
                        .checked_add(l.len)
                        .is_some_and(|end| end <= view.segment.len())
                })
            });
            match entries {
                Some(indexed) if fits => {
                    return Ok(Snapshot {
                        view,
                        recent,
                        indexed,
                    });
                }
                Some(_) if attempt == 0 => self.remap_for_reader(&view)?,
                _ => self.repair_index(&mut self.state.lock())?,
            }
        }
        Err(Error::corruption(
            &self.idx_path,
            0,
            None,
            "the index stays inconsistent with the segment after a rebuild",
        ))
    }

    /// Rebuilds the index from a full scan of the segment, because a slot was found damaged.
    /// A read-write handle writes the new index; a read-only one keeps it in memory.
    pub(crate) fn repair_index(&self, st: &mut State) -> Result<()> {
        let view = self.view.load_full();
        let overlay = Overlay::new();
        let mut counters = Counters::default();
        let reach = if self.config.read_only {
            Reach::Written
        } else {
            Reach::Whole
        };
        let replayed = recovery::replay(
            view.segment.bytes(),
            segment::HEADER_LEN,
            segment::HEADER_LEN,
            reach,
            None,
            &overlay,
            &mut counters,
            &self.seg_path,
        )?;
        st.counters = counters;
        st.end = replayed.tail.end;
        st.replayed = replayed.records;
        st.damaged = replayed.damaged;
        st.covered_len = segment::HEADER_LEN;
        st.used_slots = 0;
        st.index_rebuilt = true;
        self.live.store(counters.live_records, Ordering::Release);
        self.view.store(Arc::new(View {
            segment: view.segment.clone(),
            index: None,
            overlay: Arc::new(overlay),
        }));
        if self.config.read_only {
            Ok(())
        } else {
            self.checkpoint(st, true)
        }
    }

    /// Finds the record for `key`: overlay, then index. Retries a lookup that raced an in-place
    /// index update (seen as a slot failing its crc) or a segment that grew under the reader; a
    /// slot that stays damaged makes the index be rebuilt from the segment, once.
    fn locate(&self, key: &str) -> Result<Option<(Arc<SegmentMap>, Loc)>> {
        let hash = index::hash_key(key);
        let mut repaired = false;
        for attempt in 0..LOOKUP_RETRIES * 2 {
            if attempt == LOOKUP_RETRIES {
                if repaired {
                    break;
                }
                repaired = true;
                let mut st = self.state.lock();
                self.repair_index(&mut st)?;
            }
            let view = self.view.load();
            let loc = match view.overlay.get(key).map(|e| *e) {
                Some(Entry::Put(loc)) => loc,
                Some(Entry::Tombstone) => return Ok(None),
                None => {
                    let Some(index) = &view.index else {
                        return Ok(None);
                    };
                    match index.probe(key, hash, view.segment.bytes()) {
                        Probe::Found(loc) => loc,
                        Probe::NotFound => return Ok(None),
                        Probe::BadSlot => {
                            // Most likely an in-place update seen half-done: give it a moment.
                            std::thread::sleep(std::time::Duration::from_micros(
                                20 << attempt.min(6),
                            ));
                            continue;
                        }
                        Probe::PastSegment => {
                            self.remap_for_reader(&view)?;
                            continue;
                        }
                    }
                }
            };
            if loc
                .offset
                .checked_add(loc.len)
                .is_none_or(|e| e > view.segment.len())
            {
                self.remap_for_reader(&view)?;
                continue;
            }
            return Ok(Some((view.segment.clone(), loc)));
        }
        Err(Error::corruption(
            &self.idx_path,
            0,
            Some(key),
            "index slot for this key fails its checksum or points past the segment",
        ))
    }

    /// A read-only handle whose index (updated by a writer in another process) names records past
    /// its map: map the file as it is now.
    fn remap_for_reader(&self, seen: &View) -> Result<()> {
        let mut st = self.state.lock();
        let current = self.view.load();
        if !Arc::ptr_eq(&current.segment, &seen.segment) {
            return Ok(());
        }
        let len = st.file.metadata().at(&self.seg_path)?.len();
        if len <= current.segment.len() {
            return Ok(());
        }
        let map = SegmentMap::new(&st.file, len, &self.seg_path)?;
        st.file_len = len;
        self.view.store(Arc::new(View {
            segment: map,
            index: current.index.clone(),
            overlay: current.overlay.clone(),
        }));
        Ok(())
    }

    /// Checks the record at `loc` is `key`'s and intact, and returns its value.
    fn read(
        &self,
        segment: Arc<SegmentMap>,
        key: &str,
        loc: Loc,
        check_value: bool,
    ) -> Result<ValueRef> {
        let bad = |what: &str| Error::corruption(&self.seg_path, loc.offset, Some(key), what);
        let start = loc.offset as usize;
        let rec = segment
            .bytes()
            .get(start..start + loc.len as usize)
            .ok_or_else(|| bad("record lies past the end of the segment"))?;
        let h = Header::decode(rec).map_err(|_| bad("record header checksum mismatch"))?;
        if h.kind != Kind::Put || h.record_len() != Some(loc.len) || h.crc != loc.crc {
            return Err(bad("record does not match its index entry"));
        }
        let key_end = record::HEADER_LEN + usize::from(h.key_len);
        if &rec[record::HEADER_LEN..key_end] != key.as_bytes() {
            return Err(bad("record holds another key"));
        }
        if check_value && !record::crc_ok(rec, h.crc) {
            return Err(bad("record checksum mismatch"));
        }
        Ok(ValueRef {
            start: start + key_end,
            len: h.value_len as usize,
            codec: h.codec,
            map: segment,
        })
    }

    /// The key of the record at `loc`, its header checked.
    pub(crate) fn key_of<'a>(&self, segment: &'a [u8], loc: Loc) -> Result<&'a str> {
        let bad = |what: &str| Error::corruption(&self.seg_path, loc.offset, None, what);
        let rec = segment
            .get(loc.offset as usize..)
            .ok_or_else(|| bad("index entry points past the end of the segment"))?;
        let h = Header::decode(rec).map_err(|_| bad("record header checksum mismatch"))?;
        let key = &rec[record::HEADER_LEN..record::HEADER_LEN + usize::from(h.key_len)];
        std::str::from_utf8(key).map_err(|_| bad("record key is not UTF-8"))
    }

    /// Read-only refresh: follow a replaced segment, adopt a newer checkpoint, replay new records.
    fn refresh(&self, st: &mut State) -> Result<()> {
        let on_disk = recovery::open_segment(&self.dir, false, false)?;
        if on_disk.segment_id != st.segment_id {
            // Compaction replaced the segment: start over from the new files.
            let (view, state) = Engine::recover(&self.dir, &self.config)?;
            *st = state;
            self.live.store(st.counters.live_records, Ordering::Release);
            self.view.store(Arc::new(view));
            return Ok(());
        }
        let map = on_disk.map;
        st.file = on_disk.file;
        st.file_len = map.len();
        let current = self.view.load_full();
        let newer = match recovery::open_index(&self.dir, false, st.segment_id, map.len())? {
            IndexState::Usable(idx, h) if h.covered_len > st.covered_len => Some((idx, h)),
            _ => None,
        };
        let (index, overlay, from) = match newer {
            Some((idx, h)) => {
                st.counters = h.counters;
                st.covered_len = h.covered_len;
                st.used_slots = h.used_slots;
                (Some(idx), Arc::new(Overlay::new()), h.covered_len)
            }
            None => (current.index.clone(), current.overlay.clone(), st.end),
        };
        let replayed = recovery::replay(
            map.bytes(),
            from,
            from,
            Reach::Written,
            index.as_deref(),
            &overlay,
            &mut st.counters,
            &self.seg_path,
        )?;
        st.end = replayed.tail.end;
        st.torn = replayed.tail.torn;
        st.replayed = replayed.records;
        st.damaged.retain(|d| d.offset < from);
        st.damaged.extend(replayed.damaged);
        self.live.store(st.counters.live_records, Ordering::Release);
        self.view.store(Arc::new(View {
            segment: map,
            index,
            overlay,
        }));
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.config.read_only || self.poisoned.load(Ordering::Acquire) {
            return;
        }
        let mut st = self.state.lock();
        // Errors cannot be reported from drop; `Engine::close` reports them. The segment is the
        // source of truth, so a failed checkpoint only means a longer replay at the next open.
        let _ = self.close_cleanly(&mut st);
    }
}
