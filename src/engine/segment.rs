//! The segment file: a 32-byte header followed by records, append-only, and the read-only memory
//! map through which every read is served.
//!
//! ```text
//! offset size field
//!  0     8    magic       89 53 51 53 45 47 0D 0A  ("\x89SQSEG\r\n")
//!  8     4    version     2 (1 still opens: no sync marks, no key checks)
//! 12     4    flags       0
//! 16     8    segment_id  random; an index file names the segment it was built from
//! 24     4    reserved    0
//! 28     4    header_crc  crc32 of bytes 0..28
//! 32          records (see record.rs), then zero bytes up to the file's length
//! ```
//!
//! The file only ever grows while a store is open: it is extended ahead of the writer in chunks
//! (so the map is not rebuilt on every append) and a torn tail is zeroed rather than truncated.
//! A mapping therefore never extends past the end of its file, which would be `SIGBUS`.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{Mmap, MmapOptions};

use crate::error::{Error, IoContext, Result};

/// Name of the segment file inside a store directory.
pub(crate) const SEGMENT_FILE: &str = "segment.sqs";
/// Magic number at the start of a segment file.
pub(crate) const MAGIC: [u8; 8] = *b"\x89SQSEG\r\n";
/// The format version this build writes. Version 1 segments still open; a read-write open moves
/// one to version 2 by rewriting its header (v2 only adds record kinds and flag bits v1 lacked).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this build reads.
pub const OLDEST_VERSION: u32 = 1;
/// Length of the segment header; the first record starts here.
pub(crate) const HEADER_LEN: u64 = 32;

/// Encodes a segment header for `segment_id`.
pub(crate) fn encode_header(segment_id: u64) -> [u8; HEADER_LEN as usize] {
    encode_header_version(segment_id, FORMAT_VERSION)
}

/// Encodes a segment header of format `version` (tests write v1 segments with it).
pub(crate) fn encode_header_version(segment_id: u64, version: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[16..24].copy_from_slice(&segment_id.to_le_bytes());
    let crc = crc32fast::hash(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header and returns its segment id and format version.
///
/// The checksum is checked before the version, so a damaged version byte is reported as damage,
/// not as a version from the future.
pub(crate) fn decode_header(path: &Path, bytes: &[u8]) -> Result<(u64, u32)> {
    let h = bytes
        .get(..HEADER_LEN as usize)
        .ok_or_else(|| Error::corruption(path, 0, None, "segment shorter than its header"))?;
    if h[0..8] != MAGIC {
        return Err(Error::BadMagic {
            path: path.to_owned(),
            kind: "segment",
        });
    }
    let crc = u32::from_le_bytes([h[28], h[29], h[30], h[31]]);
    if crc32fast::hash(&h[0..28]) != crc {
        return Err(Error::corruption(
            path,
            0,
            None,
            "segment header checksum mismatch",
        ));
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(Error::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if h[12..16] != [0; 4] || h[24..28] != [0; 4] {
        return Err(Error::corruption(
            path,
            0,
            None,
            "segment header has non-zero reserved fields",
        ));
    }
    let id = u64::from_le_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
    Ok((id, version))
}

/// A read-only map of the whole segment file as it was when mapped.
///
/// Readers hold it through an `Arc`, so a map outlives the writer replacing it with a larger one.
#[derive(Debug)]
pub(crate) struct SegmentMap {
    map: Mmap,
    checked: Checked,
}

/// Records of at least this many bytes are remembered once their value has passed its CRC-32
/// check (see [`Checked`]); shorter ones are checked on every get, which costs little next to
/// finding them.
pub(crate) const CHECKED_MIN_LEN: u64 = 64 << 10;

/// Which long records of a mapping have passed their CRC-32 check: one bit per
/// [`CHECKED_MIN_LEN`]-byte block of the file, set once the record of at least
/// `CHECKED_MIN_LEN` bytes that starts in that block was read whole and matched its checksum.
///
/// At most one such record starts in a block (records do not overlap, and the first one would
/// reach past the block's end), so a bit names one record. Memory: one bit per 64 KiB of file
/// (2 MiB for a 1 TiB segment), allocated with the map.
///
/// What it relies on: the bytes of a record served through a mapping do not change while the
/// mapping lives. The writer never rewrites a byte below the end of the valid records (records
/// are appended past it; a torn tail is zeroed only before anything after it was served), and
/// the documented contract forbids anyone else from rewriting the file in place. What it does
/// not cover: bytes that change *after* the check without anyone writing them, such as a page
/// evicted from the cache and read back from a failing disk, or memory corruption. `verify`
/// and compaction read and check every record regardless, and a new handle (or a read-only
/// handle's `refresh`, which maps the file anew) starts with nothing remembered.
#[derive(Debug)]
struct Checked {
    words: Box<[AtomicU64]>,
}

impl Checked {
    fn new(file_len: usize) -> Checked {
        let blocks = file_len.div_ceil(CHECKED_MIN_LEN as usize);
        Checked {
            words: (0..blocks.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// A set for a longer map of the same file: the bits already set carry over.
    fn grown(&self, file_len: usize) -> Checked {
        let new = Checked::new(file_len);
        for (to, from) in new.words.iter().zip(self.words.iter()) {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        new
    }

    /// The word and bit of the block `offset` lies in, if the map has it.
    fn bit(&self, offset: u64) -> Option<(&AtomicU64, u64)> {
        let block = offset / CHECKED_MIN_LEN;
        let word = self.words.get(usize::try_from(block / 64).ok()?)?;
        Some((word, 1 << (block % 64)))
    }
}

impl SegmentMap {
    /// Maps `len` bytes of `file` (its current length).
    pub fn new(file: &File, len: u64, path: &Path) -> Result<Arc<SegmentMap>> {
        let map = Self::map(file, len, path)?;
        let checked = Checked::new(map.len());
        Ok(Arc::new(SegmentMap { map, checked }))
    }

    /// Maps `len` bytes of the file `old` maps, now longer, keeping what `old` remembers of the
    /// records it checked (their bytes are the same in the file: it only grew).
    pub fn grown(old: &SegmentMap, file: &File, len: u64, path: &Path) -> Result<Arc<SegmentMap>> {
        let map = Self::map(file, len, path)?;
        let checked = old.checked.grown(map.len());
        Ok(Arc::new(SegmentMap { map, checked }))
    }

    fn map(file: &File, len: u64, path: &Path) -> Result<Mmap> {
        let len = usize::try_from(len).map_err(|_| {
            Error::corruption(path, 0, None, "segment larger than the address space")
        })?;
        // SAFETY: the map is read-only and the library never shrinks a segment file while it is
        // open (torn tails are zeroed, compaction renames a new file over the old one), so every
        // mapped page stays backed by the file. Another process truncating or rewriting the file
        // in place breaks this; the documented contract forbids it (see the crate docs on
        // `Engine`). Writes by our own writer go to bytes past every offset a reader has been
        // handed, and all reads of records are checked by crc32 before they are served.
        unsafe { MmapOptions::new().len(len).map(file) }.at(path)
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Number of mapped bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Whether the record at `offset`, `len` bytes long, already passed its value check through
    /// this mapping (always false for records shorter than [`CHECKED_MIN_LEN`]).
    pub fn was_checked(&self, offset: u64, len: u64) -> bool {
        len >= CHECKED_MIN_LEN
            && self
                .checked
                .bit(offset)
                .is_some_and(|(w, b)| w.load(Ordering::Acquire) & b != 0)
    }

    /// Remembers that the record at `offset`, `len` bytes long, passed its value check (a no-op
    /// for records shorter than [`CHECKED_MIN_LEN`]).
    pub fn set_checked(&self, offset: u64, len: u64) {
        if len >= CHECKED_MIN_LEN
            && let Some((w, b)) = self.checked.bit(offset)
        {
            w.fetch_or(b, Ordering::Release);
        }
    }
}

/// A run of this many zero bytes ends the written part of a segment for recovery's purposes.
///
/// The file is allocated ahead of the writer, so after the last record come zeros up to the end
/// of the file (up to a GiB). Looking for torn bytes or records beyond a hole only within the
/// written part keeps opening flat in the file size. A torn append's hole is at most the part of
/// one append that did not reach the disk; holes of 1 MiB or more of *zeros* followed by records
/// are treated as the end (a full `verify` still finds such records).
pub(crate) const ZERO_RUN: usize = 1 << 20;

/// Where the written part of `bytes` from `from` on ends: the start of the first run of
/// [`ZERO_RUN`] zero bytes (page-aligned), or the end of `bytes`.
pub(crate) fn written_end(bytes: &[u8], from: usize) -> usize {
    const PAGE: usize = 4096;
    let mut at = from.min(bytes.len());
    let mut run_start = None;
    while at < bytes.len() {
        let next = ((at / PAGE) + 1) * PAGE;
        let chunk = &bytes[at..next.min(bytes.len())];
        if chunk.iter().all(|&b| b == 0) {
            let start = *run_start.get_or_insert(at);
            if next - start >= ZERO_RUN {
                return start;
            }
        } else {
            run_start = None;
        }
        at = next;
    }
    run_start.unwrap_or(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_end_stops_at_a_long_zero_run() {
        let mut b = vec![0u8; 4 * ZERO_RUN];
        assert_eq!(written_end(&b, 0), 0);
        b[10] = 1;
        assert_eq!(written_end(&b, 0), 4096);
        // A hole shorter than ZERO_RUN does not end the written part.
        b[ZERO_RUN / 2] = 1;
        assert_eq!(
            written_end(&b, 0),
            ZERO_RUN / 2 + 4096 - (ZERO_RUN / 2) % 4096
        );
        b[3 * ZERO_RUN] = 1;
        assert_eq!(written_end(&b, 0), ZERO_RUN / 2 + 4096);
        assert_eq!(written_end(&b, 3 * ZERO_RUN), 3 * ZERO_RUN + 4096);
    }

    #[test]
    fn header_roundtrip_and_errors() {
        let p = Path::new("x");
        assert_eq!(decode_header(p, &encode_header(42)).ok(), Some((42, 2)));
        assert_eq!(
            decode_header(p, &encode_header_version(42, 1)).ok(),
            Some((42, 1))
        );
        let mut bad = encode_header(42);
        bad[0] = 0;
        assert!(matches!(
            decode_header(p, &bad),
            Err(Error::BadMagic { .. })
        ));
        let future = encode_header_version(42, 3);
        assert!(matches!(
            decode_header(p, &future),
            Err(Error::UnsupportedVersion { found: 3, .. })
        ));
        // A flipped version byte fails the header checksum: damage, not a future version.
        let mut flipped = encode_header(42);
        flipped[8] = 17;
        assert!(matches!(
            decode_header(p, &flipped),
            Err(Error::Corruption { .. })
        ));
        assert!(decode_header(p, &[0; 5]).is_err());
    }
}
