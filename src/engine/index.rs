//! The index file: a memory-mapped open-addressing hash table, key → (offset, length, checksum).
//!
//! ```text
//! header (128 bytes at offset 0; the rest of the first 4096-byte page is zero)
//! offset size field
//!   0    8    magic         89 53 51 49 44 58 0D 0A  ("\x89SQIDX\r\n")
//!   8    4    version       1
//!  12    4    state         0 = clean, 1 = checkpoint in progress (the slots cannot be trusted),
//!                             2 = closed cleanly (nothing follows covered_len in the segment)
//!  16    8    segment_id    the segment this index was built from
//!  24    8    covered_len   segment bytes [0, covered_len) are reflected in the slots
//!  32    8    slot_count    a power of two
//!  40    8    used_slots    live + deleted slots
//!  48    8    live_records  \
//!  56    8    live_bytes     | statistics as of covered_len
//!  64    8    dead_records   |
//!  72    8    dead_bytes    /
//!  80   44    reserved      0
//! 124    4    header_crc    crc32 of bytes 0..124
//!
//! slots (32 bytes each, from offset 4096)
//!   0    8    hash          0 = empty, 1 = deleted, else xxh3_64(key) (0 and 1 map to 2 and 3)
//!   8    8    offset        of the record in the segment
//!  16    8    len           of the whole record
//!  24    4    crc           the record's crc field
//!  28    4    slot_crc      crc32 of slot bytes 0..28
//! ```
//!
//! Lookups read the mapped slots through atomics so the writer can update the table in place at a
//! checkpoint while readers probe it: a checkpoint costs O(records since the last one), never O(all
//! keys). Every slot is double-checked: its own crc, then the key and crc of the record it points
//! to, so an index can at worst say "look in the segment", never serve wrong bytes.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, IoContext, Result};

/// Name of the index file inside a store directory.
pub(crate) const INDEX_FILE: &str = "index.sqi";
/// Magic number at the start of an index file.
pub(crate) const MAGIC: [u8; 8] = *b"\x89SQIDX\r\n";
/// Index format version.
pub(crate) const VERSION: u32 = 1;
const HEADER_LEN: usize = 128;
/// Offset of the first slot: one page, so slots are aligned and the header has its own page.
pub(crate) const SLOTS_START: u64 = 4096;
const SLOT_LEN: u64 = 32;
const SLOT_WORDS: usize = 4;
const EMPTY: u64 = 0;
const DELETED: u64 = 1;
/// Smallest table, in slots.
pub(crate) const MIN_SLOTS: u64 = 1024;

const STATE_CLEAN: u32 = 0;
const STATE_DIRTY: u32 = 1;
const STATE_CLOSED: u32 = 2;

/// The hash stored in a slot for `key`.
pub(crate) fn hash_key(key: &str) -> u64 {
    let h = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
    if h < 2 { h + 2 } else { h }
}

/// Live and dead records and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub live_records: u64,
    pub live_bytes: u64,
    pub dead_records: u64,
    pub dead_bytes: u64,
}

/// Where a record is, as the index and the overlay record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub offset: u64,
    pub len: u64,
    pub crc: u32,
}

/// The decoded index header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IndexHeader {
    pub dirty: bool,
    /// Written by a clean close: nothing follows `covered_len` in the segment.
    pub closed: bool,
    pub segment_id: u64,
    pub covered_len: u64,
    pub slot_count: u64,
    pub used_slots: u64,
    pub counters: Counters,
}

impl IndexHeader {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        let state = match (self.dirty, self.closed) {
            (true, _) => STATE_DIRTY,
            (false, true) => STATE_CLOSED,
            (false, false) => STATE_CLEAN,
        };
        h[12..16].copy_from_slice(&state.to_le_bytes());
        let words = [
            self.segment_id,
            self.covered_len,
            self.slot_count,
            self.used_slots,
            self.counters.live_records,
            self.counters.live_bytes,
            self.counters.dead_records,
            self.counters.dead_bytes,
        ];
        for (i, w) in words.iter().enumerate() {
            h[16 + 8 * i..24 + 8 * i].copy_from_slice(&w.to_le_bytes());
        }
        let crc = crc32fast::hash(&h[..124]);
        h[124..128].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decodes a header; `Err` carries the reason the index cannot be used.
    pub fn decode(h: &[u8]) -> std::result::Result<IndexHeader, &'static str> {
        let h = h.get(..HEADER_LEN).ok_or("index shorter than its header")?;
        if h[0..8] != MAGIC {
            return Err("bad magic number");
        }
        let crc = u32::from_le_bytes([h[124], h[125], h[126], h[127]]);
        if crc32fast::hash(&h[..124]) != crc {
            return Err("header checksum mismatch");
        }
        let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[o..o + 8]);
            u64::from_le_bytes(b)
        };
        if u32_at(8) != VERSION {
            return Err("unsupported index version");
        }
        let (dirty, closed) = match u32_at(12) {
            STATE_CLEAN => (false, false),
            STATE_DIRTY => (true, false),
            STATE_CLOSED => (false, true),
            _ => return Err("unknown state"),
        };
        let header = IndexHeader {
            dirty,
            closed,
            segment_id: u64_at(16),
            covered_len: u64_at(24),
            slot_count: u64_at(32),
            used_slots: u64_at(40),
            counters: Counters {
                live_records: u64_at(48),
                live_bytes: u64_at(56),
                dead_records: u64_at(64),
                dead_bytes: u64_at(72),
            },
        };
        if !header.slot_count.is_power_of_two() || header.slot_count < MIN_SLOTS.min(16) {
            return Err("slot count is not a power of two");
        }
        if header.used_slots > header.slot_count || header.counters.live_records > header.used_slots
        {
            return Err("slot counts are inconsistent");
        }
        Ok(header)
    }

    fn file_len(&self) -> Option<u64> {
        self.slot_count
            .checked_mul(SLOT_LEN)
            .and_then(|s| s.checked_add(SLOTS_START))
    }
}

/// An index file that was found: mapped with its header, or the reason it cannot be used.
pub(crate) type Opened = std::result::Result<(Arc<IndexMap>, IndexHeader), &'static str>;

/// What a probe for a key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    Found(Loc),
    NotFound,
    /// A slot failed its checksum: a concurrent update was seen half-done, or the file is damaged.
    BadSlot,
    /// A slot points past the segment bytes the caller holds: its map is older than the index.
    PastSegment,
}

/// A mapped index file. Read-only handles map it read-only; the writer maps it read-write.
#[derive(Debug)]
pub(crate) struct IndexMap {
    map: MmapRaw,
    // Only `push` (feature `remote`) still writes a version-2 table.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    file: File,
    slot_count: u64,
}

impl IndexMap {
    /// Opens and maps an existing index file; `Ok(Err(reason))` when it exists but is unusable.
    pub fn open(path: &Path, writable: bool) -> Result<Option<Opened>> {
        let file = match crate::engine::recovery::open_regular(path, writable) {
            Ok(f) => f,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let len = file.metadata().at(path)?.len();
        let mut head = [0u8; HEADER_LEN];
        if len < HEADER_LEN as u64 {
            return Ok(Some(Err("index shorter than its header")));
        }
        crate::engine::platform::read_exact_at(&file, &mut head, 0).at(path)?;
        let header = match IndexHeader::decode(&head) {
            Ok(h) => h,
            Err(reason) => return Ok(Some(Err(reason))),
        };
        if header.file_len() != Some(len) {
            return Ok(Some(Err("file length does not match the slot count")));
        }
        if writable {
            // A sparse index (copied with holes, say) would turn a full disk into SIGBUS on the
            // first slot written through the map: allocate every block now, as an error instead.
            crate::engine::backend::allocate_all(&file, len).at(path)?;
        }
        let map = Self::map(&file, len, writable, path)?;
        Ok(Some(Ok((
            Arc::new(IndexMap {
                map,
                file,
                slot_count: header.slot_count,
            }),
            header,
        ))))
    }

    fn map(file: &File, len: u64, writable: bool, path: &Path) -> Result<MmapRaw> {
        let len = usize::try_from(len)
            .map_err(|_| Error::corruption(path, 0, None, "index larger than the address space"))?;
        let opts = {
            let mut o = MmapOptions::new();
            o.len(len);
            o
        };
        if writable {
            opts.map_raw(file).at(path)
        } else {
            opts.map_raw_read_only(file).at(path)
        }
    }

    /// Writes a new index file at `path` holding `entries` (distinct keys), not yet synced.
    // Only `push` (feature `remote`) still writes a version-2 table.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub fn build(path: &Path, header: IndexHeader, entries: &[(u64, Loc)]) -> Result<IndexMap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .at(path)?;
        let len = header
            .file_len()
            .ok_or_else(|| Error::corruption(path, 0, None, "index too large"))?;
        crate::engine::backend::allocate(&file, len).at(path)?;
        let map = Self::map(&file, len, true, path)?;
        let index = IndexMap {
            map,
            file,
            slot_count: header.slot_count,
        };
        for &(hash, loc) in entries {
            index.insert_new(hash, loc);
        }
        index.write_header(&header)?;
        Ok(index)
    }

    /// Flushes the map and fsyncs the file.
    // Only `push` (feature `remote`) still writes a version-2 table.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    pub fn sync(&self, path: &Path) -> Result<()> {
        self.map.flush().at(path)?;
        self.file.sync_all().at(path)
    }

    fn words(&self) -> &[AtomicU64] {
        let n = (self.slot_count as usize) * SLOT_WORDS;
        // SAFETY: the map is `SLOTS_START + slot_count * 32` bytes long (checked against the file
        // length when opened or set when created), page-aligned, so the slot region starting at
        // byte 4096 is 8-aligned and holds `n` u64 words. `AtomicU64` has the layout of `u64`.
        // Every access to slot memory, in this process, goes through these atomics, so the
        // writer's in-place updates are not data races; other processes only read the file.
        unsafe {
            let base = self
                .map
                .as_ptr()
                .add(SLOTS_START as usize)
                .cast::<AtomicU64>();
            std::slice::from_raw_parts(base, n)
        }
    }

    fn slot(&self, i: u64) -> &[AtomicU64] {
        let s = (i as usize) * SLOT_WORDS;
        &self.words()[s..s + SLOT_WORDS]
    }

    fn slot_crc(hash: u64, loc: &Loc) -> u32 {
        let mut b = [0u8; 28];
        b[0..8].copy_from_slice(&hash.to_le_bytes());
        b[8..16].copy_from_slice(&loc.offset.to_le_bytes());
        b[16..24].copy_from_slice(&loc.len.to_le_bytes());
        b[24..28].copy_from_slice(&loc.crc.to_le_bytes());
        crc32fast::hash(&b)
    }

    /// Reads slot `i`'s contents after its hash matched; `None` if the slot fails its checksum.
    fn read_slot(&self, i: u64, hash: u64) -> Option<Loc> {
        let w = self.slot(i);
        let crcs = acquire(&w[3]);
        let loc = Loc {
            offset: acquire(&w[1]),
            len: acquire(&w[2]),
            crc: crcs as u32,
        };
        // Re-read the hash: if the slot changed under us, the crc below would catch most mixes,
        // and this catches a slot reused for another key.
        if acquire(&w[0]) != hash || Self::slot_crc(hash, &loc) != (crcs >> 32) as u32 {
            return None;
        }
        Some(loc)
    }

    // Only `push` (feature `remote`) still writes a version-2 table.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    fn write_slot(&self, i: u64, hash: u64, loc: Loc) {
        let w = self.slot(i);
        let crcs = u64::from(loc.crc) | (u64::from(Self::slot_crc(hash, &loc)) << 32);
        w[1].store(loc.offset, Ordering::Release);
        w[2].store(loc.len, Ordering::Release);
        w[3].store(crcs, Ordering::Release);
        // The hash goes last: a reader that sees it sees the fields above.
        w[0].store(hash, Ordering::Release);
    }

    /// Finds `key`. `segment` is the caller's map of the segment, used to compare keys.
    pub fn probe(&self, key: &str, hash: u64, segment: &[u8]) -> Probe {
        match self.find(key, hash, segment) {
            Find::Found(loc) => Probe::Found(loc),
            Find::Vacant => Probe::NotFound,
            Find::BadSlot => Probe::BadSlot,
            Find::PastSegment => Probe::PastSegment,
        }
    }

    fn find(&self, key: &str, hash: u64, segment: &[u8]) -> Find {
        let mask = self.slot_count - 1;
        let mut i = hash & mask;
        let mut seen_deleted = false;
        // At most one pass over the table: a damaged or full table cannot make this loop forever.
        for _ in 0..self.slot_count {
            let h = acquire(&self.slot(i)[0]);
            if h == EMPTY {
                return Find::Vacant;
            }
            if h == DELETED {
                seen_deleted = true;
            } else {
                // Every live slot on the path is checked, not only the one whose hash matches:
                // a damaged hash would otherwise make its key silently vanish.
                let Some(loc) = self.read_slot(i, h) else {
                    return Find::BadSlot;
                };
                if h != hash {
                    i = (i + 1) & mask;
                    continue;
                }
                match key_at(segment, loc.offset) {
                    KeyAt::Key(k) if k == key.as_bytes() => return Find::Found(loc),
                    // Another key under the same hash: a collision if that record is intact.
                    // If it is damaged, its key bytes may be this key's, flipped: hand it out,
                    // so the read reports the damage instead of calling the key absent.
                    KeyAt::Key(_) if !record_intact(segment, loc) => return Find::Found(loc),
                    KeyAt::Key(_) => {}
                    KeyAt::Past => return Find::PastSegment,
                }
            }
            i = (i + 1) & mask;
        }
        if seen_deleted {
            Find::Vacant
        } else {
            Find::BadSlot
        }
    }

    /// Inserts a key known to be absent (used while building a fresh table).
    // Only `push` (feature `remote`) still writes a version-2 table.
    #[cfg_attr(not(feature = "remote"), allow(dead_code))]
    fn insert_new(&self, hash: u64, loc: Loc) {
        let mask = self.slot_count - 1;
        let mut i = hash & mask;
        while self.slot(i)[0].load(Ordering::Relaxed) != EMPTY {
            i = (i + 1) & mask;
        }
        self.write_slot(i, hash, loc);
    }

    /// Every live slot's hash and location, in slot order; `None` if a live slot is damaged.
    pub fn entries(&self) -> Option<Vec<(u64, Loc)>> {
        let mut out = Vec::new();
        for i in 0..self.slot_count {
            let h = acquire(&self.slot(i)[0]);
            if h != EMPTY && h != DELETED {
                out.push((h, self.read_slot(i, h)?));
            }
        }
        Some(out)
    }

    /// Number of slots.
    pub fn slot_count(&self) -> u64 {
        self.slot_count
    }

    /// Length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        SLOTS_START + self.slot_count * SLOT_LEN
    }

    /// Writes the header in place.
    pub fn write_header(&self, header: &IndexHeader) -> Result<()> {
        let bytes = header.encode();
        // SAFETY: the map is at least SLOTS_START (4096) bytes and writable (only the writer calls
        // this). The header bytes are never accessed through the slot atomics nor borrowed as a
        // slice anywhere, so this raw copy does not alias any live reference.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_mut_ptr(), HEADER_LEN);
        }
        Ok(())
    }

    /// Makes the header durable (only its page is flushed).
    pub fn flush_header(&self, path: &Path) -> Result<()> {
        self.map.flush_range(0, HEADER_LEN).at(path)
    }
}

enum Find {
    Found(Loc),
    Vacant,
    BadSlot,
    PastSegment,
}

enum KeyAt<'a> {
    Key(&'a [u8]),
    Past,
}

/// The key bytes of the record at `offset`, without checking its checksums (the caller does).
fn key_at(segment: &[u8], offset: u64) -> KeyAt<'_> {
    let Ok(o) = usize::try_from(offset) else {
        return KeyAt::Past;
    };
    let Some(len) = segment.get(o + 10..o + 12) else {
        return KeyAt::Past;
    };
    let key_len = usize::from(u16::from_le_bytes([len[0], len[1]]));
    match segment.get(o + 24..o + 24 + key_len) {
        Some(k) => KeyAt::Key(k),
        None => KeyAt::Past,
    }
}

/// Whether the record at `loc` is whole: valid header, the slot's length and crc, and its crc.
pub(crate) fn record_intact(segment: &[u8], loc: Loc) -> bool {
    let Some(rec) = usize::try_from(loc.offset)
        .ok()
        .zip(usize::try_from(loc.len).ok())
        .and_then(|(o, l)| segment.get(o..o.checked_add(l)?))
    else {
        return false;
    };
    crate::engine::record::Header::decode(rec).is_ok_and(|h| {
        h.record_len() == Some(loc.len)
            && h.crc == loc.crc
            && crate::engine::record::crc_ok(rec, h.crc)
    })
}

/// Whether the record at `loc` holds a key whose hash is `hash` (header checked, not the value).
pub(crate) fn slot_matches(segment: &[u8], hash: u64, loc: Loc) -> bool {
    let Some(rest) = usize::try_from(loc.offset)
        .ok()
        .and_then(|o| segment.get(o..))
    else {
        return false;
    };
    let Ok(h) = crate::engine::record::Header::decode(rest) else {
        return false;
    };
    let key = rest.get(
        crate::engine::record::HEADER_LEN
            ..crate::engine::record::HEADER_LEN + usize::from(h.key_len),
    );
    key.and_then(|k| std::str::from_utf8(k).ok())
        .is_some_and(|k| hash_key(k) == hash)
}

/// How many slots a table holding `live` keys should have: at most half full after building.
pub(crate) fn slots_for(live: u64) -> u64 {
    live.saturating_mul(2)
        .max(MIN_SLOTS)
        .checked_next_power_of_two()
        .unwrap_or(1 << 62)
}

pub(crate) fn header_for(
    segment_id: u64,
    covered_len: u64,
    slot_count: u64,
    used_slots: u64,
    counters: Counters,
) -> IndexHeader {
    IndexHeader {
        dirty: false,
        closed: false,
        segment_id,
        covered_len,
        slot_count,
        used_slots,
        counters,
    }
}

/// An acquire read of an index word. A relaxed load then an acquire fence, rather than an
/// acquire load: Rust documents atomic loads on read-only memory (a read-only handle's map) only
/// for `Relaxed`, and the fence gives the same ordering against the writer's release stores.
fn acquire(word: &AtomicU64) -> u64 {
    let v = word.load(Ordering::Relaxed);
    std::sync::atomic::fence(Ordering::Acquire);
    v
}
