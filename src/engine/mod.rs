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
//! store is open in any process: do not edit, truncate or `cp` over `segment.sqs` or the index
//! files (`index.sqm`, `index-*.sqr`, a version-2 `index.sqi`) of an open store (copying them
//! elsewhere is fine). The library itself only ever appends to a segment, zeroes a torn tail
//! instead of truncating it, writes each run file once and never changes it, and replaces files
//! by renaming new ones over them (or deletes runs no manifest names), so a mapping never
//! outlives the bytes behind it.

// The handle, split by what it does.
pub(crate) mod checkpoint;
mod config;
mod open;
mod read;
mod refresh;
mod write;

// The file format: the segment file's header, its records, the scanner over them, the index
// (formats 3 and 4: sorted runs named by a manifest; version 2: the hash table, read and converted).
pub(crate) mod index;
pub(crate) mod manifest;
pub(crate) mod record;
pub(crate) mod runs;
pub(crate) mod scan;
pub(crate) mod segment;

// Durability and recovery: file I/O, the writer lock, the overlay of records since the last
// checkpoint, replay, saved bytes.
pub(crate) mod backend;
pub(crate) mod lock;
pub mod lost_found;
pub(crate) mod overlay;
pub(crate) mod platform;
pub(crate) mod recovery;

// Maintenance: what the CLI's compact, verify, rebuild-index and repair run.
pub(crate) mod compaction;
pub(crate) mod repair;
pub(crate) mod verify;

pub use config::{Config, DEFAULT_MAX_VALUE_LEN, Durability};
pub use read::{Iter, ValueRef};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use backend::Backend;
use index::{Counters, Loc};
use lock::WriterLock;
use manifest::Index;
use overlay::{Entry, Overlay};
use record::{Kind, MAX_KEY_LEN};
use scan::Damaged;
use segment::SegmentMap;
use write::Pending;

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

/// What a reader needs, swapped as one unit so it is always self-consistent.
pub(crate) struct View {
    pub segment: Arc<SegmentMap>,
    pub index: Option<Index>,
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
    /// Segment bytes before this were handed to the kernel's writeback (a hint, see `append`).
    pub(crate) written_back: u64,
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
    /// The thread dropping the segment the last compaction replaced (see
    /// `compaction::release_in_background`): joined before the file next grows, before the next
    /// compaction and at close, so the space is back before the store asks for more.
    pub(crate) released: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// A [`checkpoint::CheckpointCrash`] a test asked for (0: none).
    pub(crate) checkpoint_crash: std::sync::atomic::AtomicU8,
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

pub(super) const LOOKUP_RETRIES: usize = 8;
pub(super) const AUTO_COMPACT_MIN_DEAD: u64 = 64 << 20;

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
            let hash = index::hash_key(key);
            if n <= write::PREFETCH_AHEAD {
                self.inner.prefetch(hash);
            }
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
                hash,
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
        let hash = index::hash_key(key);
        let mut st = self.inner.state.lock();
        let view = self.inner.view.load();
        let prev = recovery::current(
            &view.overlay,
            view.index.as_ref(),
            view.segment.bytes(),
            key,
            hash,
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
            hash,
            kind: Kind::Delete,
            enc,
            value: &[],
        };
        self.inner.append(&mut st, vec![rec])?;
        Ok(true)
    }

    /// The value of `key`, or `None`. The bytes are checked against the record's crc32 first
    /// (a record of 64 KiB or more once per mapping: see [`Config::verify_values`]).
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
            .keyed
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
            if !snap.recent.shadows(key) {
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
            .keyed
            .values()
            .filter_map(|e| match e {
                Entry::Put(loc) => Some((*loc, true)),
                Entry::Tombstone(_) => None,
            })
            .collect();
        // Records whose key cannot be read: each is an error when reached.
        locs.extend(snap.recent.unknown.iter().map(|(_, loc)| (*loc, true)));
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

    /// Writes this store's live index as a version-2 hash table (`index.sqi` format, state
    /// "closed cleanly") to `path`, synced, and returns its length. `push` publishes stores in
    /// that format, so remote readers need not know index formats 3 and 4. The handle must have
    /// nothing beyond its checkpoint (a store closed cleanly, opened read-only).
    #[cfg(feature = "remote")]
    pub(crate) fn write_table(&self, path: &Path) -> Result<u64> {
        let snap = self.inner.snapshot()?;
        let st = self.inner.state.lock();
        if !snap.recent.is_empty() || st.covered_len != st.end {
            return Err(Error::corruption(
                path,
                0,
                None,
                "records follow the last checkpoint: close the store cleanly first",
            ));
        }
        let n = snap.indexed.len() as u64;
        let slots = index::slots_for(n);
        let mut header = st.index_header(st.covered_len, slots, n);
        header.closed = true;
        let table = index::IndexMap::build(path, header, &snap.indexed)?;
        table.sync(path)?;
        Ok(table.file_len())
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
    /// The old segment's space goes back to the file system on a background thread that unmaps
    /// it after this returns (or, while a reader holds a [`ValueRef`] of it, once that is
    /// dropped); the store waits for that thread before its file next grows, before the next
    /// compaction and at close.
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

    /// For crash tests: runs a checkpoint that stops at `point` as if the process died there
    /// (the handle then refuses writes, as after a failed sync).
    ///
    /// # Errors
    /// The simulated crash, as an [`Error::Io`].
    #[doc(hidden)]
    pub fn checkpoint_crashing_at(&self, point: crate::CheckpointCrash) -> Result<()> {
        self.inner.writable()?;
        let mut st = self.inner.state.lock();
        self.inner
            .checkpoint_crash
            .store(point as u8, Ordering::Release);
        let r = self.inner.checkpoint(&mut st, false);
        self.inner.checkpoint_crash.store(0, Ordering::Release);
        r
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
