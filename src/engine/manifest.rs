//! The index manifest `index.sqm` (index formats 3 and 4): which runs make up the index, what
//! segment bytes they cover, and the statistics as of then. Rewritten whole (write a temporary
//! file, fsync, rename, fsync the directory) at every checkpoint; runs are immutable, so a reader
//! that loaded one manifest always sees a consistent set of runs.
//!
//! ```text
//! offset size field
//!   0    8    magic         89 53 51 4D 41 4E 0D 0A  ("\x89SQMAN\r\n")
//!   8    4    version       3
//!  12    4    state         0 = clean, 2 = closed cleanly (nothing follows covered_len)
//!  16    8    segment_id    the segment this index describes
//!  24    8    covered_len   the runs reflect every record in segment bytes [0, covered_len)
//!  32    8    live_records  \
//!  40    8    live_bytes     | statistics as of covered_len
//!  48    8    dead_records   |
//!  56    8    dead_bytes    /
//!  64    8    next_seq      the sequence number the next run file gets
//!  72    4    run_count     1..=MAX_RUNS: the base, then the deltas oldest first
//!  76    4    reserved      0
//!  80   48*n  runs          seq u64, kind u32, header_crc u32, from u64, to u64, count u64,
//!                           file_len u64
//!  80+48n 4   crc           crc32 of every byte before it
//! ```

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use crate::engine::index::{Counters, IndexMap, Loc, Probe, hash_key};
use crate::engine::record::{self, Header, Kind};
use crate::engine::runs::{self, Run, RunMeta, TOMBSTONE};
use crate::engine::segment;
use crate::error::{Error, IoContext, Result};

/// Name of the manifest inside a store directory.
pub(crate) const MANIFEST_FILE: &str = "index.sqm";
/// Magic number at the start of a manifest.
pub(crate) const MAGIC: [u8; 8] = *b"\x89SQMAN\r\n";
/// Most runs a manifest may name: the base and at most `MAX_DELTAS` deltas, plus one a
/// checkpoint adds before merging.
pub(crate) const MAX_RUNS: usize = 8;
/// Most delta runs a checkpoint leaves (it merges the newest ones to stay within).
pub(crate) const MAX_DELTAS: usize = 4;
/// The deltas are merged into the base once they hold more than base / `BASE_FRACTION` entries.
pub(crate) const BASE_FRACTION: u64 = 2;
const HEAD_LEN: usize = 80;
const RUN_LEN: usize = 48;
const STATE_CLEAN: u32 = 0;
const STATE_CLOSED: u32 = 2;

/// The decoded manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub closed: bool,
    pub segment_id: u64,
    pub covered_len: u64,
    pub counters: Counters,
    pub next_seq: u64,
    pub runs: Vec<RunMeta>,
}

impl Manifest {
    /// The manifest's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEAD_LEN + RUN_LEN * self.runs.len() + 4);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&runs::VERSION.to_le_bytes());
        let state = if self.closed {
            STATE_CLOSED
        } else {
            STATE_CLEAN
        };
        b.extend_from_slice(&state.to_le_bytes());
        for w in [
            self.segment_id,
            self.covered_len,
            self.counters.live_records,
            self.counters.live_bytes,
            self.counters.dead_records,
            self.counters.dead_bytes,
            self.next_seq,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&(self.runs.len() as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for r in &self.runs {
            b.extend_from_slice(&r.seq.to_le_bytes());
            b.extend_from_slice(&r.kind.to_le_bytes());
            b.extend_from_slice(&r.header_crc.to_le_bytes());
            for w in [r.from, r.to, r.count, r.file_len] {
                b.extend_from_slice(&w.to_le_bytes());
            }
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a manifest; `Err` carries the reason it cannot be used.
    pub fn decode(b: &[u8]) -> std::result::Result<Manifest, &'static str> {
        if b.len() < HEAD_LEN + 4 {
            return Err("manifest shorter than its header");
        }
        if b[0..8] != MAGIC {
            return Err("manifest: bad magic number");
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        let n = u32_at(72) as usize;
        if n == 0 || n > MAX_RUNS || b.len() != HEAD_LEN + RUN_LEN * n + 4 {
            return Err("manifest length does not match its run count");
        }
        let end = b.len() - 4;
        if crc32fast::hash(&b[..end]) != u32_at(end) {
            return Err("manifest checksum mismatch");
        }
        // Version 3 and 4 manifests have the same layout; a version 4 one may name runs of
        // either version (a store converted from index format 3 keeps its base until a merge).
        if !(runs::OLDEST_VERSION..=runs::VERSION).contains(&u32_at(8)) {
            return Err("unsupported manifest version");
        }
        let closed = match u32_at(12) {
            STATE_CLEAN => false,
            STATE_CLOSED => true,
            _ => return Err("manifest: unknown state"),
        };
        if u32_at(76) != 0 {
            return Err("manifest: reserved field not zero");
        }
        let runs = (0..n)
            .map(|i| {
                let o = HEAD_LEN + RUN_LEN * i;
                RunMeta {
                    seq: u64_at(o),
                    kind: u32_at(o + 8),
                    header_crc: u32_at(o + 12),
                    from: u64_at(o + 16),
                    to: u64_at(o + 24),
                    count: u64_at(o + 32),
                    file_len: u64_at(o + 40),
                }
            })
            .collect();
        Ok(Manifest {
            closed,
            segment_id: u64_at(16),
            covered_len: u64_at(24),
            counters: Counters {
                live_records: u64_at(32),
                live_bytes: u64_at(40),
                dead_records: u64_at(48),
                dead_bytes: u64_at(56),
            },
            next_seq: u64_at(64),
            runs,
        })
    }

    /// Whether the runs it names tile `[HEADER_LEN, covered_len)` as the format requires, with
    /// statistics and counts a segment of that length can have.
    pub fn plausible(&self, segment_id: u64, seg_len: u64) -> bool {
        let c = self.counters;
        let room = self.covered_len.saturating_sub(segment::HEADER_LEN);
        let mut at = segment::HEADER_LEN;
        let tiles = self.runs.iter().enumerate().all(|(i, r)| {
            let ok = r.from == at
                && r.to >= r.from
                && (r.kind == runs::KIND_BASE) == (i == 0)
                && r.kind <= runs::KIND_DELTA
                && r.count <= (r.to - r.from) / record::HEADER_LEN as u64
                && r.seq < self.next_seq;
            at = r.to;
            ok
        });
        tiles
            && at == self.covered_len
            && self.segment_id == segment_id
            && self.covered_len >= segment::HEADER_LEN
            && self.covered_len <= seg_len
            && c.live_bytes
                .checked_add(c.dead_bytes)
                .is_some_and(|b| b <= room)
            && c.live_records.saturating_add(c.dead_records) <= room / 24
    }

    /// Writes the manifest into `dir` by rename: temporary file, fsync, rename, fsync of `dir`.
    pub fn store(&self, dir: &Path) -> Result<()> {
        self.write_tmp(dir)?;
        Self::install(dir)
    }

    /// The first half of [`Manifest::store`]: `index.sqm.tmp` written and synced.
    pub fn write_tmp(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp).at(&tmp)?;
        f.write_all(&self.encode()).at(&tmp)?;
        f.sync_data().at(&tmp)?;
        Ok(())
    }

    /// The second half of [`Manifest::store`]: rename over `index.sqm`, fsync of `dir`.
    pub fn install(dir: &Path) -> Result<()> {
        let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
        let path = dir.join(MANIFEST_FILE);
        std::fs::rename(&tmp, &path).at(&path)?;
        crate::engine::recovery::sync_dir(dir)
    }

    /// Reads the manifest in `dir`: `None` if there is none, `Some(Err)` if it cannot be used.
    pub fn load(dir: &Path) -> Result<Option<std::result::Result<Manifest, &'static str>>> {
        let path = dir.join(MANIFEST_FILE);
        let file = match crate::engine::recovery::open_regular(&path, false) {
            Ok(f) => f,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let len = file.metadata().at(&path)?.len();
        let max = (HEAD_LEN + RUN_LEN * MAX_RUNS + 4) as u64;
        if len > max {
            return Ok(Some(Err("manifest longer than any manifest")));
        }
        let mut bytes = vec![0u8; len as usize];
        crate::engine::platform::read_exact_at(&file, &mut bytes, 0).at(&path)?;
        Ok(Some(Manifest::decode(&bytes)))
    }
}

/// The runs a manifest names, mapped: the base first, then the deltas oldest first.
#[derive(Debug)]
pub(crate) struct RunSet {
    pub manifest: Manifest,
    pub runs: Vec<Arc<Run>>,
}

impl RunSet {
    /// Maps every run the manifest names; `Ok(Err)` if one is missing or untrusted.
    pub fn open(
        dir: &Path,
        manifest: Manifest,
    ) -> Result<std::result::Result<RunSet, &'static str>> {
        let mut mapped = Vec::with_capacity(manifest.runs.len());
        for meta in &manifest.runs {
            let path = dir.join(runs::file_name(meta.seq));
            match Run::open(&path, *meta, manifest.segment_id)? {
                Ok(r) => mapped.push(Arc::new(r)),
                Err(reason) => return Ok(Err(reason)),
            }
        }
        Ok(Ok(RunSet {
            manifest,
            runs: mapped,
        }))
    }

    /// Finds `key`: the deltas newest first, then the base.
    pub fn probe(&self, key: &str, hash: u64, segment: &[u8]) -> Probe {
        for run in self.runs.iter().rev() {
            match run.may_contain(hash) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(runs::Damaged) => return Probe::BadSlot,
            }
            let Ok((start, end)) = run.find(hash) else {
                return Probe::BadSlot;
            };
            for i in (start..end).rev() {
                let Ok(w) = run.word(i) else {
                    return Probe::BadSlot;
                };
                let offset = w & runs::OFFSET_MASK;
                match key_of(segment, offset) {
                    KeyOf::Past => return Probe::PastSegment,
                    KeyOf::Key(k, loc) if k == key.as_bytes() => {
                        return if w & TOMBSTONE != 0 {
                            Probe::NotFound
                        } else {
                            Probe::Found(loc)
                        };
                    }
                    // Another key under the same hash: a collision if that record is intact.
                    // If it is damaged, its key bytes may be this key's, flipped: hand it out.
                    KeyOf::Key(_, loc) if !crate::engine::index::record_intact(segment, loc) => {
                        return Probe::Found(loc);
                    }
                    KeyOf::Key(_, _) => {}
                    // A record whose header fails: its key bytes may be this key's, flipped.
                    // Hand it out so the read reports the damage instead of "absent".
                    KeyOf::Damaged(loc) => return Probe::Found(loc),
                }
            }
        }
        Probe::NotFound
    }

    /// Every live key's hash and location; `None` if a run is damaged. `keys_checked`: also
    /// `None` unless every record's header is intact and its key has the entry's hash (read
    /// once, as the merge reads it).
    pub fn entries(&self, segment: &[u8], keys_checked: bool) -> Option<Vec<(u64, Loc)>> {
        let sources: Vec<Source<'_>> = self
            .runs
            .iter()
            .map(|r| Source::run(r))
            .collect::<std::result::Result<_, _>>()
            .ok()?;
        let mut out = Vec::with_capacity(self.base_len() as usize);
        let mut bad = false;
        merge(&sources, segment, true, &mut |h, w| {
            match key_of(segment, w & runs::OFFSET_MASK) {
                KeyOf::Key(k, loc) if keys_checked => {
                    if std::str::from_utf8(k).is_ok_and(|k| hash_key(k) == h) {
                        out.push((h, loc));
                    } else {
                        bad = true;
                    }
                }
                KeyOf::Damaged(_) if keys_checked => bad = true,
                KeyOf::Key(_, loc) | KeyOf::Damaged(loc) => out.push((h, loc)),
                KeyOf::Past => bad = true,
            }
            Ok(())
        })
        .ok()?;
        (!bad).then_some(out)
    }

    /// Bytes of all the run files and the manifest.
    pub fn file_len(&self) -> u64 {
        let runs: u64 = self.runs.iter().map(|r| r.file_len()).sum();
        runs + (HEAD_LEN + RUN_LEN * self.runs.len() + 4) as u64
    }

    /// Entries in the base run.
    pub fn base_len(&self) -> u64 {
        self.runs.first().map_or(0, |r| r.len())
    }

    /// Entries in the delta runs.
    pub fn delta_len(&self) -> u64 {
        self.runs.iter().skip(1).map(|r| r.len()).sum()
    }
}

/// What the record at an index entry's offset says its key is.
pub(crate) enum KeyOf<'a> {
    /// The record's header is valid: its key and location.
    Key(&'a [u8], Loc),
    /// The header fails its checksum: a location a read will report as damaged.
    Damaged(Loc),
    /// The offset lies past the caller's map of the segment.
    Past,
}

/// Reads the header at `offset` in `segment` (the caller's map) and the key it names.
pub(crate) fn key_of(segment: &[u8], offset: u64) -> KeyOf<'_> {
    let Some(rest) = usize::try_from(offset).ok().and_then(|o| segment.get(o..)) else {
        return KeyOf::Past;
    };
    if rest.len() < record::HEADER_LEN {
        return KeyOf::Past;
    }
    match Header::decode(rest) {
        Ok(h) if h.kind != Kind::Mark => {
            let Some(len) = h.record_len() else {
                return KeyOf::Damaged(Loc {
                    offset,
                    len: record::HEADER_LEN as u64,
                    crc: 0,
                });
            };
            let key_end = record::HEADER_LEN + usize::from(h.key_len);
            match rest.get(record::HEADER_LEN..key_end) {
                Some(k) => KeyOf::Key(
                    k,
                    Loc {
                        offset,
                        len,
                        crc: h.crc,
                    },
                ),
                None => KeyOf::Past,
            }
        }
        _ => KeyOf::Damaged(Loc {
            offset,
            len: record::HEADER_LEN as u64,
            crc: 0,
        }),
    }
}

/// One sorted input of a merge: a run (checked whole first) or a list in memory.
pub(crate) enum Source<'a> {
    /// A run [`Run::validated`] accepted, and its entry count.
    Run(&'a Run, usize),
    /// Entries sorted by `(hash, offset word)`.
    List(&'a [(u64, u64)]),
}

impl<'a> Source<'a> {
    /// A run as a merge input, after checking every block, the order and the offsets.
    pub fn run(run: &'a Run) -> std::result::Result<Source<'a>, runs::Damaged> {
        Ok(Source::Run(run, run.validated()?))
    }

    fn len(&self) -> usize {
        match self {
            Source::Run(_, n) => *n,
            Source::List(l) => l.len(),
        }
    }

    fn get(&self, i: usize) -> (u64, u64) {
        match self {
            Source::Run(r, _) => r.at(i),
            Source::List(l) => l[i],
        }
    }
}

/// The total entries of `sources`: a bound on what a merge of them emits.
pub(crate) fn total_len(sources: &[Source<'_>]) -> u64 {
    sources.iter().map(|s| s.len() as u64).sum()
}

/// Merges sorted inputs into one sorted stream with one entry per key, its newest, passed to
/// `emit` in `(hash, offset word)` order. `into_base` drops tombstones too (nothing older is
/// left for them to hide). Keys sharing a hash are told apart by reading their records' keys
/// from `segment`; a record whose header fails is kept (it may be any key).
pub(crate) fn merge(
    sources: &[Source<'_>],
    segment: &[u8],
    into_base: bool,
    emit: &mut dyn FnMut(u64, u64) -> Result<()>,
) -> Result<()> {
    let mut pos = vec![0usize; sources.len()];
    let mut group: Vec<u64> = Vec::new();
    let mut kept: Vec<u64> = Vec::new();
    loop {
        // The smallest head, the source it is in, and the smallest head of the others; there are
        // at most MAX_RUNS + 1 inputs, so a linear pick beats a heap.
        let mut best: Option<(u64, usize)> = None;
        let mut second = u64::MAX;
        for (i, src) in sources.iter().enumerate() {
            if pos[i] < src.len() {
                let (h, _) = src.get(pos[i]);
                match best {
                    Some((b, _)) if h >= b => second = second.min(h),
                    _ => {
                        if let Some((b, _)) = best {
                            second = second.min(b);
                        }
                        best = Some((h, i));
                    }
                }
            }
        }
        let Some((hash, first)) = best else { break };
        if hash < second {
            // Hashes below every other source's head are in this source alone, and one source
            // holds one entry per key: copy them without grouping (a base merge is mostly this).
            // Every source keeps that rule (the overlay is a map; runs and v2 tables are written
            // from one); a source with two entries of one key would keep both here.
            let src = &sources[first];
            while pos[first] < src.len() {
                let (h, w) = src.get(pos[first]);
                if h >= second {
                    break;
                }
                if !(into_base && w & TOMBSTONE != 0) {
                    emit(h, w)?;
                }
                pos[first] += 1;
            }
            continue;
        }
        group.clear();
        for (i, src) in sources.iter().enumerate() {
            while pos[i] < src.len() {
                let (h, w) = src.get(pos[i]);
                if h != hash {
                    break;
                }
                group.push(w);
                pos[i] += 1;
            }
        }
        if let [w] = group[..] {
            if !(into_base && w & TOMBSTONE != 0) {
                emit(hash, w)?;
            }
            continue;
        }
        // Newest first: the first record seen of each key wins.
        group.sort_unstable_by_key(|w| std::cmp::Reverse(w & runs::OFFSET_MASK));
        let mut seen: HashSet<&[u8]> = HashSet::new();
        kept.clear();
        for &w in &group {
            let keep = match key_of(segment, w & runs::OFFSET_MASK) {
                KeyOf::Key(k, _) => seen.insert(k),
                // Unknown key: kept, so nothing it may be hides behind a guess.
                KeyOf::Damaged(_) | KeyOf::Past => true,
            };
            if keep && !(into_base && w & TOMBSTONE != 0) {
                kept.push(w);
            }
        }
        kept.sort_unstable();
        kept.dedup();
        for &w in &kept {
            emit(hash, w)?;
        }
    }
    Ok(())
}

/// The index a handle reads: a version-2 hash table (until the first checkpoint converts it)
/// or version-3 runs.
#[derive(Debug, Clone)]
pub(crate) enum Index {
    /// A version-2 `index.sqi`.
    Table(Arc<IndexMap>),
    /// Version-3 runs named by `index.sqm`.
    Runs(Arc<RunSet>),
}

impl Index {
    /// Starts loading the Bloom filter lines a [`Index::probe`] of `hash` will read (a hint, for
    /// a writer that knows the next keys while it publishes this one).
    pub fn prefetch(&self, hash: u64) {
        if let Index::Runs(set) = self {
            for run in &set.runs {
                run.prefetch_bloom(hash);
            }
        }
    }

    /// Finds `key`. `segment` is the caller's map of the segment.
    pub fn probe(&self, key: &str, hash: u64, segment: &[u8]) -> Probe {
        match self {
            Index::Table(t) => t.probe(key, hash, segment),
            Index::Runs(r) => r.probe(key, hash, segment),
        }
    }

    /// Every live key's hash and location; `None` if the index is damaged.
    pub fn entries(&self, segment: &[u8]) -> Option<Vec<(u64, Loc)>> {
        match self {
            Index::Table(t) => t.entries(),
            Index::Runs(r) => r.entries(segment, false),
        }
    }

    /// [`Index::entries`], and `None` too unless every entry names an intact header of a key
    /// with the entry's hash ([`crate::engine::index::slot_matches`]).
    pub fn entries_of_keys(&self, segment: &[u8]) -> Option<Vec<(u64, Loc)>> {
        match self {
            Index::Table(t) => t.entries().filter(|e| {
                e.iter()
                    .all(|(h, loc)| crate::engine::index::slot_matches(segment, *h, *loc))
            }),
            Index::Runs(r) => r.entries(segment, true),
        }
    }

    /// Bytes of the index files.
    pub fn file_len(&self) -> u64 {
        match self {
            Index::Table(t) => t.file_len(),
            Index::Runs(r) => r.file_len(),
        }
    }
}

/// Removes run files in `dir` that `keep` does not name, and the temporary manifest; called only
/// once a manifest naming exactly `keep` is durable.
pub(crate) fn remove_unnamed(dir: &Path, keep: &[RunMeta]) -> Result<()> {
    let names: HashSet<u64> = keep.iter().map(|r| r.seq).collect();
    for e in std::fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = match runs::parse_name(name) {
            Some(seq) => !names.contains(&seq),
            None => name == format!("{MANIFEST_FILE}.tmp"),
        };
        if stale {
            match std::fs::remove_file(e.path()) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io(e.path(), err)),
            }
        }
    }
    Ok(())
}

/// The largest run sequence number among the files in `dir` (0 if none), so a new run never
/// reuses the name of a file some reader may still have mapped.
pub(crate) fn max_seq_on_disk(dir: &Path) -> Result<u64> {
    let mut max = 0;
    for e in std::fs::read_dir(dir).at(dir)? {
        let e = e.at(dir)?;
        if let Some(seq) = e.file_name().to_str().and_then(runs::parse_name) {
            max = max.max(seq);
        }
    }
    Ok(max)
}
