//! Index format 4: immutable sorted runs of 16-byte entries (key hash, record offset), each with
//! a Bloom filter. Version 3 runs (written by index format 3) are read as well: the same layout,
//! but a base run has no Bloom filter.
//!
//! ```text
//! run file `index-<seq as 16 hex digits>.sqr`
//! offset size field
//!   0    8    magic         89 53 51 52 55 4E 0D 0A  ("\x89SQRUN\r\n")
//!   8    4    version       4 (3 is read)
//!  12    4    kind          0 = base, 1 = delta
//!  16    8    segment_id    the segment whose records the entries name
//!  24    8    from          \ the entries describe every record in segment bytes [from, to)
//!  32    8    to            /
//!  40    8    count         entries
//!  48    4    bloom_blocks  64-byte Bloom filter blocks (at least 1; version 3: 0 for a base)
//!  52    4    reserved      0
//!  56    4    table_crc     crc32 of the block crc table
//!  60    4    header_crc    crc32 of bytes 0..60
//!  64         body          entries (count * 16), zero padding to a multiple of 64,
//!                           Bloom filter (bloom_blocks * 64)
//!  ...        crc table     one crc32 per 4096-byte block of the body (the last may be shorter)
//!
//! entry (16 bytes, sorted by (hash, offset) ascending)
//!   0    8    hash          xxh3_64(key) as the v2 slot stores it (0 and 1 become 2 and 3)
//!   8    8    offset        bits 0..62: the record's offset; bit 63: the record is a tombstone
//! ```
//!
//! A run is written once, sequentially, and never changed; lookups map it read-only. Blocks are
//! checked against their crc the first time a lookup touches them (one bit per block remembers
//! it), so opening costs the header and the crc table, not the entries.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;

use crate::error::{Error, IoContext, Result};

/// Magic number at the start of a run file.
pub(crate) const MAGIC: [u8; 8] = *b"\x89SQRUN\r\n";
/// Index format version written (the manifest's and every new run's).
pub(crate) const VERSION: u32 = 4;
/// The oldest index format version still read: 3, whose base runs have no Bloom filter.
pub(crate) const OLDEST_VERSION: u32 = 3;
/// Bytes before the first entry.
pub(crate) const HEADER_LEN: usize = 64;
/// Bytes per entry.
pub(crate) const ENTRY_LEN: usize = 16;
/// Bytes of body per crc in the crc table.
pub(crate) const BLOCK_LEN: usize = 4096;
/// Bytes per fence: the hash of the first entry of each 4096-byte block of entries.
pub(crate) const FENCE_LEN: usize = 8;
/// Entries per fence.
pub(crate) const ENTRIES_PER_FENCE: usize = BLOCK_LEN / ENTRY_LEN;
/// Bytes per Bloom filter block (one cache line).
pub(crate) const BLOOM_BLOCK: usize = 64;
/// Bloom filter bits per key in a run.
pub(crate) const BLOOM_BITS_PER_KEY: u64 = 10;
/// Bits set per key, all in one 512-bit block.
pub(crate) const BLOOM_PROBES: u32 = 6;
/// Bit 63 of an entry's offset word: the record is a tombstone.
pub(crate) const TOMBSTONE: u64 = 1 << 63;
/// Bits of the offset word that hold the offset.
pub(crate) const OFFSET_MASK: u64 = (1 << 62) - 1;
/// Run kind: the base run, covering the segment from its first record.
pub(crate) const KIND_BASE: u32 = 0;
/// Run kind: a delta run, written by a checkpoint or a merge of deltas.
pub(crate) const KIND_DELTA: u32 = 1;

/// The file name of run `seq`.
pub(crate) fn file_name(seq: u64) -> String {
    format!("index-{seq:016x}.sqr")
}

/// Parses a run file name back to its sequence number.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("index-")?.strip_suffix(".sqr")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// What the manifest records about a run, and what its header must repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunMeta {
    pub seq: u64,
    pub kind: u32,
    pub header_crc: u32,
    pub from: u64,
    pub to: u64,
    pub count: u64,
    pub file_len: u64,
}

/// Layout derived from a header's fields.
#[derive(Debug, Clone, Copy)]
struct Layout {
    entries_len: usize,
    fence_at: usize,
    fences: usize,
    bloom_at: usize,
    body_len: usize,
    blocks: usize,
    file_len: usize,
}

fn layout(count: u64, bloom_blocks: u64) -> Option<Layout> {
    let entries_len = usize::try_from(count).ok()?.checked_mul(ENTRY_LEN)?;
    let bloom_len = usize::try_from(bloom_blocks)
        .ok()?
        .checked_mul(BLOOM_BLOCK)?;
    // Entries, zeros to a multiple of 64, the fences, zeros to a multiple of 64, the Bloom
    // filter: no fence and no Bloom block straddles a 4096-byte crc block.
    let fence_at = entries_len.checked_next_multiple_of(BLOOM_BLOCK)?;
    let fences = entries_len.div_ceil(BLOCK_LEN);
    let bloom_at = fence_at
        .checked_add(fences.checked_mul(FENCE_LEN)?)?
        .checked_next_multiple_of(BLOOM_BLOCK)?;
    let body_len = bloom_at.checked_add(bloom_len)?;
    let blocks = body_len.div_ceil(BLOCK_LEN);
    let file_len = HEADER_LEN
        .checked_add(body_len)?
        .checked_add(blocks.checked_mul(4)?)?;
    Some(Layout {
        entries_len,
        fence_at,
        fences,
        bloom_at,
        body_len,
        blocks,
        file_len,
    })
}

/// Bloom blocks for a run of `count` keys: 10 bits per key, at least one block.
fn bloom_blocks_for(count: u64) -> u64 {
    (count * BLOOM_BITS_PER_KEY)
        .div_ceil(BLOOM_BLOCK as u64 * 8)
        .max(1)
}

/// The block of `nblocks` a hash's Bloom bits go in, and the bit positions inside it.
fn bloom_slot(hash: u64, nblocks: u64) -> (usize, [u16; BLOOM_PROBES as usize]) {
    let block = ((u128::from(hash) * u128::from(nblocks)) >> 64) as usize;
    // The low bits pick the bits (the high bits picked the block): remixed so keys of one block
    // do not share their bit patterns.
    let mut h = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut bits = [0u16; BLOOM_PROBES as usize];
    for b in &mut bits {
        *b = (h & 511) as u16;
        h >>= 9;
    }
    (block, bits)
}

/// Writes a run file at `path` (created, synced; the caller fsyncs the directory), holding
/// `entries` sorted by `(hash, offset word)`. Returns what the manifest records about it.
pub(crate) fn write(
    path: &Path,
    seq: u64,
    kind: u32,
    segment_id: u64,
    from: u64,
    to: u64,
    entries: &[(u64, u64)],
) -> Result<RunMeta> {
    let mut w = RunWriter::create(path, seq, kind, segment_id, from, to, entries.len() as u64)?;
    for &(h, word) in entries {
        w.push(h, word)?;
    }
    w.finish()
}

/// Writes a run file sequentially, entry by entry, so a merge never holds the run in memory
/// (only its Bloom filter, 10 bits per key; every run has one since format 4). The header goes last, at offset 0.
pub(crate) struct RunWriter {
    path: std::path::PathBuf,
    file: File,
    out: std::io::BufWriter<File>,
    seq: u64,
    kind: u32,
    segment_id: u64,
    from: u64,
    to: u64,
    count: u64,
    last: Option<(u64, u64)>,
    bloom: Vec<u8>,
    bloom_blocks: u64,
    body_at: usize,
    block: crc32fast::Hasher,
    table: Vec<u8>,
    fences: Vec<u8>,
    /// Entries not yet passed to `body`: one 4096-byte block's worth goes through the crc and the
    /// file at once (crc32fast is slow on 16-byte pieces).
    pending: Vec<u8>,
}

impl RunWriter {
    /// Creates the file (it must not exist: a name is never reused). `max_entries` bounds the
    /// entries to come and sizes the run's Bloom filter (an upper bound only costs space).
    pub fn create(
        path: &Path,
        seq: u64,
        kind: u32,
        segment_id: u64,
        from: u64,
        to: u64,
        max_entries: u64,
    ) -> Result<RunWriter> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .at(path)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file.try_clone().at(path)?);
        out.write_all(&[0u8; HEADER_LEN]).at(path)?;
        // A base run has one too (version 4): a write learns whether its key existed with one
        // cache line of the filter instead of a search through the base.
        let bloom_blocks = bloom_blocks_for(max_entries);
        let bloom_len = usize::try_from(bloom_blocks)
            .ok()
            .and_then(|b| b.checked_mul(BLOOM_BLOCK))
            .ok_or_else(|| Error::corruption(path, 0, None, "run too large"))?;
        Ok(RunWriter {
            path: path.to_owned(),
            file,
            out,
            seq,
            kind,
            segment_id,
            from,
            to,
            count: 0,
            last: None,
            bloom: vec![0u8; bloom_len],
            bloom_blocks,
            body_at: 0,
            block: crc32fast::Hasher::new(),
            table: Vec::new(),
            fences: Vec::new(),
            pending: Vec::with_capacity(BLOCK_LEN),
        })
    }

    fn body(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).at(&self.path)?;
        while !bytes.is_empty() {
            let room = BLOCK_LEN - self.body_at % BLOCK_LEN;
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.block.update(now);
            self.body_at += now.len();
            if self.body_at.is_multiple_of(BLOCK_LEN) {
                let crc = std::mem::take(&mut self.block).finalize();
                self.table.extend_from_slice(&crc.to_le_bytes());
            }
            bytes = rest;
        }
        Ok(())
    }

    /// Appends one entry; entries must come in strictly increasing `(hash, word)` order.
    pub fn push(&mut self, hash: u64, word: u64) -> Result<()> {
        if self.last.is_some_and(|l| l >= (hash, word)) {
            return Err(Error::corruption(
                &self.path,
                0,
                None,
                "run entries out of order (a bug)",
            ));
        }
        self.last = Some((hash, word));
        if self.count.is_multiple_of(ENTRIES_PER_FENCE as u64) {
            self.fences.extend_from_slice(&hash.to_le_bytes());
        }
        self.pending.extend_from_slice(&hash.to_le_bytes());
        self.pending.extend_from_slice(&word.to_le_bytes());
        if self.pending.len() >= BLOCK_LEN {
            let block = std::mem::take(&mut self.pending);
            self.body(&block)?;
            self.pending = block;
            self.pending.clear();
        }
        self.count += 1;
        if self.bloom_blocks > 0 {
            let (block, bits) = bloom_slot(hash, self.bloom_blocks);
            for bit in bits {
                self.bloom[block * BLOOM_BLOCK + usize::from(bit / 8)] |= 1 << (bit % 8);
            }
        }
        Ok(())
    }

    /// Writes the Bloom filter, the crc table and the header, syncs the file.
    pub fn finish(mut self) -> Result<RunMeta> {
        let entries = std::mem::take(&mut self.pending);
        self.body(&entries)?;
        let pad = self.body_at.next_multiple_of(BLOOM_BLOCK) - self.body_at;
        self.body(&[0u8; BLOOM_BLOCK][..pad])?;
        let fences = std::mem::take(&mut self.fences);
        self.body(&fences)?;
        let pad = self.body_at.next_multiple_of(BLOOM_BLOCK) - self.body_at;
        self.body(&[0u8; BLOOM_BLOCK][..pad])?;
        let bloom = std::mem::take(&mut self.bloom);
        self.body(&bloom)?;
        if !self.body_at.is_multiple_of(BLOCK_LEN) {
            let crc = std::mem::take(&mut self.block).finalize();
            self.table.extend_from_slice(&crc.to_le_bytes());
        }
        let table = std::mem::take(&mut self.table);
        self.out.write_all(&table).at(&self.path)?;
        self.out.flush().at(&self.path)?;
        let mut head = [0u8; HEADER_LEN];
        head[0..8].copy_from_slice(&MAGIC);
        head[8..12].copy_from_slice(&VERSION.to_le_bytes());
        head[12..16].copy_from_slice(&self.kind.to_le_bytes());
        head[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        head[24..32].copy_from_slice(&self.from.to_le_bytes());
        head[32..40].copy_from_slice(&self.to.to_le_bytes());
        head[40..48].copy_from_slice(&self.count.to_le_bytes());
        let bloom_blocks = u32::try_from(self.bloom_blocks)
            .map_err(|_| Error::corruption(&self.path, 0, None, "run too large"))?;
        head[48..52].copy_from_slice(&bloom_blocks.to_le_bytes());
        head[56..60].copy_from_slice(&crc32fast::hash(&table).to_le_bytes());
        let header_crc = crc32fast::hash(&head[..60]);
        head[60..64].copy_from_slice(&header_crc.to_le_bytes());
        crate::engine::platform::write_all_at(&self.file, &head, 0).at(&self.path)?;
        self.file.sync_data().at(&self.path)?;
        let file_len = (HEADER_LEN + self.body_at + table.len()) as u64;
        Ok(RunMeta {
            seq: self.seq,
            kind: self.kind,
            header_crc,
            from: self.from,
            to: self.to,
            count: self.count,
            file_len,
        })
    }
}

/// A lookup met a block that fails its crc or an entry that breaks the run's rules: the run
/// cannot be trusted and the index must be rebuilt from the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Damaged;

/// A mapped, immutable run file.
#[derive(Debug)]
pub(crate) struct Run {
    map: Mmap,
    pub meta: RunMeta,
    lay: Layout,
    bloom_blocks: u64,
    /// One bit per body block: its crc was checked and matched.
    checked: Vec<AtomicU64>,
}

impl Run {
    /// Maps `path` and checks it is the run `meta` describes, of segment `segment_id`.
    /// `Ok(Err(reason))` when the file exists but cannot be trusted.
    pub fn open(
        path: &Path,
        meta: RunMeta,
        segment_id: u64,
    ) -> Result<std::result::Result<Run, &'static str>> {
        let file = match crate::engine::recovery::open_regular(path, false) {
            Ok(f) => f,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err("run file missing"));
            }
            Err(e) => return Err(e),
        };
        let len = file.metadata().at(path)?.len();
        if len != meta.file_len || len < HEADER_LEN as u64 {
            return Ok(Err("run file length differs from the manifest's"));
        }
        let len = usize::try_from(len)
            .map_err(|_| Error::corruption(path, 0, None, "run larger than the address space"))?;
        // SAFETY: run files are written once, synced, and then never modified or truncated by
        // this library (a run is replaced by writing a new file and deleting the old one, which
        // leaves existing mappings valid). The memory-map contract in `engine/mod.rs` forbids
        // others from modifying store files in place. The mapping is read-only.
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(&file) }.at(path)?;
        let h = &map[..HEADER_LEN];
        let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[o..o + 8]);
            u64::from_le_bytes(b)
        };
        if h[0..8] != MAGIC {
            return Ok(Err("run: bad magic number"));
        }
        if crc32fast::hash(&h[..60]) != u32_at(60) {
            return Ok(Err("run: header checksum mismatch"));
        }
        let version = u32_at(8);
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Ok(Err("run: unsupported version"));
        }
        if u32_at(60) != meta.header_crc
            || u32_at(12) != meta.kind
            || u64_at(16) != segment_id
            || u64_at(24) != meta.from
            || u64_at(32) != meta.to
            || u64_at(40) != meta.count
            || u32_at(52) != 0
        {
            return Ok(Err("run header disagrees with the manifest"));
        }
        let bloom_blocks = u64::from(u32_at(48));
        // Version 3: a Bloom filter in every delta and in no base; version 4: in every run.
        let bloom_wanted = version >= 4 || meta.kind != KIND_BASE;
        if bloom_wanted != (bloom_blocks != 0) {
            return Ok(Err("run: Bloom filter where there should be none, or none"));
        }
        let Some(lay) = layout(meta.count, bloom_blocks).filter(|l| l.file_len == len) else {
            return Ok(Err("run: file length does not match its header"));
        };
        let table = &map[HEADER_LEN + lay.body_len..];
        if crc32fast::hash(table) != u32_at(56) {
            return Ok(Err("run: crc table checksum mismatch"));
        }
        let checked = (0..lay.blocks.div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        Ok(Ok(Run {
            map,
            meta,
            lay,
            bloom_blocks,
            checked,
        }))
    }

    fn body(&self) -> &[u8] {
        &self.map[HEADER_LEN..HEADER_LEN + self.lay.body_len]
    }

    /// Checks body block `b` against its crc, once per mapping.
    fn check_block(&self, b: usize) -> std::result::Result<(), Damaged> {
        let (word, bit) = (b / 64, 1u64 << (b % 64));
        if self.checked[word].load(Ordering::Relaxed) & bit != 0 {
            return Ok(());
        }
        let body = self.body();
        let start = b * BLOCK_LEN;
        let block = &body[start..(start + BLOCK_LEN).min(body.len())];
        let t = HEADER_LEN + self.lay.body_len + 4 * b;
        let want = u32::from_le_bytes([
            self.map[t],
            self.map[t + 1],
            self.map[t + 2],
            self.map[t + 3],
        ]);
        if crc32fast::hash(block) != want {
            return Err(Damaged);
        }
        self.checked[word].fetch_or(bit, Ordering::Relaxed);
        Ok(())
    }

    /// Checks every block of the body: used before a whole run is read (merge, listing).
    fn check_all(&self) -> std::result::Result<(), Damaged> {
        (0..self.lay.blocks).try_for_each(|b| self.check_block(b))
    }

    /// Number of entries.
    pub fn len(&self) -> u64 {
        self.meta.count
    }

    /// Entry `i`, its block checked. The offset must lie in the run's range.
    fn entry(&self, i: usize) -> std::result::Result<(u64, u64), Damaged> {
        let at = i * ENTRY_LEN;
        self.check_block(at / BLOCK_LEN)?;
        Ok(self.entry_unchecked(i))
    }

    fn entry_unchecked(&self, i: usize) -> (u64, u64) {
        let b = &self.body()[i * ENTRY_LEN..(i + 1) * ENTRY_LEN];
        let mut h = [0u8; 8];
        let mut w = [0u8; 8];
        h.copy_from_slice(&b[..8]);
        w.copy_from_slice(&b[8..]);
        (u64::from_le_bytes(h), u64::from_le_bytes(w))
    }

    /// Whether `hash` may be in this run (always true for a version-3 base run, which has no
    /// Bloom filter).
    pub fn may_contain(&self, hash: u64) -> std::result::Result<bool, Damaged> {
        if self.bloom_blocks == 0 {
            return Ok(true);
        }
        let (block, bits) = bloom_slot(hash, self.bloom_blocks);
        let at = self.lay.bloom_at + block * BLOOM_BLOCK;
        self.check_block(at / BLOCK_LEN)?;
        let line = &self.body()[at..at + BLOOM_BLOCK];
        Ok(bits
            .iter()
            .all(|&bit| line[usize::from(bit / 8)] & (1 << (bit % 8)) != 0))
    }

    /// Starts loading the Bloom filter line [`Run::may_contain`] reads for `hash` (a hint).
    pub fn prefetch_bloom(&self, hash: u64) {
        if self.bloom_blocks == 0 {
            return;
        }
        let (block, _) = bloom_slot(hash, self.bloom_blocks);
        let at = self.lay.bloom_at + block * BLOOM_BLOCK;
        if let Some(line) = self.body().get(at..at + BLOOM_BLOCK) {
            crate::engine::platform::prefetch(line);
        }
    }

    /// The entries whose hash is `hash`: indices `[start, end)`, found by interpolation search.
    /// Read them with [`Run::word`], newest (highest index) first.
    pub fn find(&self, hash: u64) -> std::result::Result<(usize, usize), Damaged> {
        let n = self.lay.entries_len / ENTRY_LEN;
        if n == 0 {
            return Ok((0, 0));
        }
        // The fences: `k` = how many blocks start below `hash`. The first entry at least `hash`
        // is then in block k - 1, or the first of block k.
        let (mut a, mut b) = (0usize, self.lay.fences);
        while a < b {
            let mid = a + (b - a) / 2;
            if self.fence(mid)? < hash {
                a = mid + 1;
            } else {
                b = mid;
            }
        }
        let k = a;
        let (mut lo, mut hi, mut lo_h, mut hi_h) = if k == 0 {
            (0, 0, 0, 0)
        } else {
            let lo = (k - 1) * ENTRIES_PER_FENCE;
            let hi = (k * ENTRIES_PER_FENCE).min(n);
            let next = if k < self.lay.fences {
                self.fence(k)?
            } else {
                u64::MAX
            };
            let first = self.fence(k - 1)?;
            // The fence must be the hash of its block's first entry: a fence that lies (damage
            // that passed the crc) would send the search to the wrong block.
            if self.entry(lo)?.0 != first {
                return Err(Damaged);
            }
            (lo, hi, first, next)
        };
        // Invariant: entries before `lo` have a smaller hash, entries from `hi` on a hash at
        // least `hash`; `lo_h`/`hi_h` bound the hashes in [lo, hi) for the interpolation.
        let mut steps = 0u32;
        while hi - lo > 8 {
            let guess = if steps < 2 && hash >= lo_h && hi_h > lo_h {
                // Floating point: only an estimate, and a 128-bit division costs more than the
                // cache line it saves.
                let frac = (hash - lo_h) as f64 / (hi_h - lo_h) as f64 * (hi - lo) as f64;
                lo + (frac as usize).min(hi - lo - 1)
            } else {
                lo + (hi - lo) / 2
            };
            steps += 1;
            let (h, _) = self.entry(guess)?;
            if h < hash {
                lo = guess + 1;
                lo_h = h;
            } else {
                hi = guess;
                hi_h = h;
            }
            // At most 256 entries in the range: this loop ends long before.
            if steps > 64 {
                return Err(Damaged);
            }
        }
        let mut start = lo;
        while start < n {
            let (h, _) = self.entry(start)?;
            if h >= hash {
                break;
            }
            start += 1;
        }
        let mut end = start;
        while end < n {
            let (h, _) = self.entry(end)?;
            if h != hash {
                break;
            }
            end += 1;
        }
        Ok((start, end))
    }

    /// Fence `i`: the hash of entry `256 i` (its block checked).
    fn fence(&self, i: usize) -> std::result::Result<u64, Damaged> {
        let at = self.lay.fence_at + i * FENCE_LEN;
        self.check_block(at / BLOCK_LEN)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.body()[at..at + FENCE_LEN]);
        Ok(u64::from_le_bytes(b))
    }

    /// The offset word of entry `i` (its block checked, its offset in the run's range).
    pub fn word(&self, i: usize) -> std::result::Result<u64, Damaged> {
        let (_, w) = self.entry(i)?;
        self.check_word(w)?;
        Ok(w)
    }

    fn check_word(&self, w: u64) -> std::result::Result<(), Damaged> {
        let off = w & OFFSET_MASK;
        if w & !(OFFSET_MASK | TOMBSTONE) != 0 || off < self.meta.from || off >= self.meta.to {
            return Err(Damaged);
        }
        Ok(())
    }

    /// Every entry, checked (crc of every block, sort order, offsets in range).
    #[cfg(test)]
    pub fn all(&self) -> std::result::Result<Vec<(u64, u64)>, Damaged> {
        let n = self.validated()?;
        Ok((0..n).map(|i| self.entry_unchecked(i)).collect())
    }

    /// Checks the whole run before a merge reads it: the crc of every block, the sort order and
    /// every offset. Returns the number of entries, then readable with [`Run::at`].
    pub fn validated(&self) -> std::result::Result<usize, Damaged> {
        self.check_all()?;
        let n = self.lay.entries_len / ENTRY_LEN;
        let mut prev = (0u64, 0u64);
        for i in 0..n {
            let e = self.entry_unchecked(i);
            self.check_word(e.1)?;
            if i > 0 && e <= prev {
                return Err(Damaged);
            }
            if i.is_multiple_of(ENTRIES_PER_FENCE) && self.fence(i / ENTRIES_PER_FENCE)? != e.0 {
                return Err(Damaged);
            }
            prev = e;
        }
        Ok(n)
    }

    /// Entry `i` of a run [`Run::validated`] accepted.
    pub fn at(&self, i: usize) -> (u64, u64) {
        self.entry_unchecked(i)
    }

    /// The length of the file.
    pub fn file_len(&self) -> u64 {
        self.meta.file_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_of(dir: &Path, entries: &[(u64, u64)], kind: u32) -> (std::path::PathBuf, RunMeta) {
        let seq = 7 + u64::from(kind);
        let p = dir.join(file_name(seq));
        let _ = std::fs::remove_file(&p);
        let m = write(&p, seq, kind, 42, 32, 1 << 40, entries).expect("test");
        (p, m)
    }

    #[test]
    fn finds_every_entry_and_no_other() {
        let dir = tempfile::tempdir().expect("test");
        let mut entries: Vec<(u64, u64)> = (0..50_000u64)
            .map(|i| {
                (
                    xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) | 2,
                    32 + i * 30,
                )
            })
            .collect();
        let dup = entries[10].0;
        entries.push((dup, 32 + 50_001 * 30));
        entries.sort_unstable();
        for kind in [KIND_BASE, KIND_DELTA] {
            let (p, m) = meta_of(dir.path(), &entries, kind);
            let run = Run::open(&p, m, 42).expect("io").expect("trusted");
            let words = |h: u64| -> Vec<u64> {
                let (a, b) = run.find(h).expect("test");
                (a..b).rev().map(|i| run.word(i).expect("test")).collect()
            };
            for (h, w) in &entries {
                assert!(run.may_contain(*h).expect("test"));
                assert!(words(*h).contains(w));
            }
            let out = words(dup);
            assert_eq!(out.len(), 2);
            assert!(out[0] > out[1], "newest first");
            let mut misses = 0;
            for i in 0..10_000u64 {
                let h = xxhash_rust::xxh3::xxh3_64(&(i + 1_000_000).to_le_bytes());
                assert!(words(h).is_empty());
                misses += u32::from(!run.may_contain(h).expect("test"));
            }
            // Both kinds carry a Bloom filter (index format 4).
            assert!(misses > 9_000, "Bloom filter rejects most misses: {misses}");
            assert_eq!(run.all().expect("test"), entries);
        }
    }

    #[test]
    fn a_flipped_byte_is_found() {
        let dir = tempfile::tempdir().expect("test");
        let entries: Vec<(u64, u64)> = (0..1000u64).map(|i| (i << 50 | 2, 32 + i * 30)).collect();
        let (p, m) = meta_of(dir.path(), &entries, KIND_DELTA);
        let clean = std::fs::read(&p).expect("test");
        for at in [
            0usize,
            20,
            61,
            64,
            64 + 16 * 500 + 3,
            clean.len() - 200,
            clean.len() - 1,
        ] {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x10;
            std::fs::write(&p, &bytes).expect("test");
            match Run::open(&p, m, 42).expect("test") {
                Err(_) => {}
                Ok(run) => {
                    let looked = entries.iter().try_for_each(|(h, _)| {
                        run.may_contain(*h)?;
                        let (a, b) = run.find(*h)?;
                        (a..b).try_for_each(|i| run.word(i).map(drop))
                    });
                    assert!(looked.is_err() || run.all().is_err(), "flip at {at} missed");
                }
            }
        }
    }
}
