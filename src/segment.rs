//! The segment file: a 32-byte header followed by records, append-only, and the read-only memory
//! map through which every read is served.
//!
//! ```text
//! offset size field
//!  0     8    magic       89 53 51 53 45 47 0D 0A  ("\x89SQSEG\r\n")
//!  8     4    version     1
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

use memmap2::{Mmap, MmapOptions};

use crate::error::{Error, IoContext, Result};
use crate::record::{self, Header, HeaderError};

/// Name of the segment file inside a store directory.
pub(crate) const SEGMENT_FILE: &str = "segment.sqs";
/// Magic number at the start of a segment file.
pub(crate) const MAGIC: [u8; 8] = *b"\x89SQSEG\r\n";
/// The format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// Length of the segment header; the first record starts here.
pub(crate) const HEADER_LEN: u64 = 32;

/// Encodes a segment header for `segment_id`.
pub(crate) fn encode_header(segment_id: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&segment_id.to_le_bytes());
    let crc = crc32fast::hash(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Checks a segment header and returns its segment id.
pub(crate) fn decode_header(path: &Path, bytes: &[u8]) -> Result<u64> {
    let h = bytes
        .get(..HEADER_LEN as usize)
        .ok_or_else(|| Error::corruption(path, 0, None, "segment shorter than its header"))?;
    if h[0..8] != MAGIC {
        return Err(Error::BadMagic {
            path: path.to_owned(),
            kind: "segment",
        });
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
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
    Ok(u64::from_le_bytes([
        h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23],
    ]))
}

/// A read-only map of the whole segment file as it was when mapped.
///
/// Readers hold it through an `Arc`, so a map outlives the writer replacing it with a larger one.
#[derive(Debug)]
pub(crate) struct SegmentMap {
    map: Mmap,
}

impl SegmentMap {
    /// Maps `len` bytes of `file` (its current length).
    pub fn new(file: &File, len: u64, path: &Path) -> Result<Arc<SegmentMap>> {
        let len = usize::try_from(len).map_err(|_| {
            Error::corruption(path, 0, None, "segment larger than the address space")
        })?;
        // SAFETY: the map is read-only and the library never shrinks a segment file while it is
        // open (torn tails are zeroed, compaction renames a new file over the old one), so every
        // mapped page stays backed by the file. Another process truncating or rewriting the file
        // in place breaks this; the documented contract forbids it (see the crate docs on
        // `Engine`). Writes by our own writer go to bytes past every offset a reader has been
        // handed, and all reads of records are checked by crc32 before they are served.
        let map = unsafe { MmapOptions::new().len(len).map(file) }.at(path)?;
        Ok(Arc::new(SegmentMap { map }))
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Number of mapped bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }
}

/// What the scanner found at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// A record with a valid header; `intact` tells whether its full checksum matched too. A record
    /// whose body is damaged but which is followed by valid data is corruption, not a torn tail.
    Record {
        offset: u64,
        header: Header,
        intact: bool,
    },
    /// The end of the valid records: at `offset` only zeros follow, except for `torn` bytes of a
    /// partial or damaged last record (a torn tail).
    End { offset: u64, torn: u64 },
    /// An unreadable record header at `offset` with valid records after it: mid-segment corruption
    /// whose key cannot be known.
    Corrupt { offset: u64 },
}

/// Reads the record at `offset` of `bytes` (a whole mapped segment) and classifies it.
pub(crate) fn scan_at(bytes: &[u8], offset: u64) -> Step {
    let n = bytes.len() as u64;
    let Some(rest) = usize::try_from(offset).ok().and_then(|o| bytes.get(o..)) else {
        return Step::End { offset, torn: 0 };
    };
    match Header::decode(rest) {
        Ok(header) => {
            let fits = header
                .record_len()
                .and_then(|l| offset.checked_add(l))
                .is_some_and(|end| end <= n);
            if fits {
                // Fits was checked against the mapped length, so the slice is in bounds.
                let len = header.record_len().unwrap_or(0) as usize;
                if record::crc_ok(&rest[..len], header.crc) {
                    return Step::Record {
                        offset,
                        header,
                        intact: true,
                    };
                }
                // The header is trusted, so look for valid data only after this record's end:
                // its own value may hold bytes that look like records.
                // A damaged record is a torn tail only if its own append goes on after it and
                // everything intact after it is the rest of that append.
                if let Some(next) = next_valid_record(bytes, offset + len as u64)
                    && !(header.continues && in_final_append(bytes, next))
                {
                    return Step::Record {
                        offset,
                        header,
                        intact: false,
                    };
                }
            }
            Step::End {
                offset,
                torn: torn_len(rest),
            }
        }
        Err(HeaderError::Short | HeaderError::Invalid) => {
            let torn = torn_len(rest);
            match next_valid_record(bytes, offset + 1) {
                Some(next) if torn > 0 && !in_final_append(bytes, next) => Step::Corrupt { offset },
                _ => Step::End { offset, torn },
            }
        }
    }
}

/// Classifies the record at `offset` in bytes known to have been synced (below a checkpoint):
/// anything that is not intact there is damage, never a torn tail.
pub(crate) fn scan_synced(bytes: &[u8], offset: u64) -> Step {
    let Some(rest) = usize::try_from(offset).ok().and_then(|o| bytes.get(o..)) else {
        return Step::End { offset, torn: 0 };
    };
    match Header::decode(rest) {
        Ok(header) if header.record_len().is_some_and(|l| l <= rest.len() as u64) => {
            let len = header.record_len().unwrap_or(0) as usize;
            Step::Record {
                offset,
                header,
                intact: record::crc_ok(&rest[..len], header.crc),
            }
        }
        _ if torn_len(rest) == 0 => Step::End { offset, torn: 0 },
        _ => Step::Corrupt { offset },
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

/// Bytes from the start of `rest` up to and including its last non-zero byte in its written part.
fn torn_len(rest: &[u8]) -> u64 {
    rest[..written_end(rest, 0)]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// Whether the intact records from `from` on can all belong to the append that damage before
/// them interrupted: a power cut during an unsynced append may land its sectors in any order, so
/// a hole can precede intact records of the same batch. They can if the first of them continues
/// an append (flag FOLLOWS), no record closes an append (flag CONTINUES clear) before the last
/// one, and nothing intact follows. Otherwise an append began after the damaged bytes, so they
/// had been written (and, with fsync, synced) before it: that is corruption, never silently cut.
pub(crate) fn in_final_append(bytes: &[u8], from: u64) -> bool {
    let first_follows = usize::try_from(from)
        .ok()
        .and_then(|o| bytes.get(o..))
        .and_then(|rest| Header::decode(rest).ok())
        .is_some_and(|h| h.follows);
    if !first_follows {
        return false;
    }
    let mut at = from;
    loop {
        let Some(rest) = usize::try_from(at).ok().and_then(|o| bytes.get(o..)) else {
            return true;
        };
        let intact = Header::decode(rest).ok().and_then(|h| {
            let len = usize::try_from(h.record_len()?).ok()?;
            (len <= rest.len() && record::crc_ok(&rest[..len], h.crc)).then_some((h, len))
        });
        match intact {
            // Every record of the same append after the first one says so (FOLLOWS); one that
            // does not began a later append, which means the damaged one had been written first.
            Some((h, _)) if !h.follows => return false,
            Some((h, len)) => {
                at += len as u64;
                if !h.continues {
                    // The batch closes here: it must be the last thing written.
                    return next_valid_record(bytes, at).is_none();
                }
            }
            None => return next_valid_record(bytes, at + 1).is_none(),
        }
    }
}

/// Where the first intact record (valid header and checksum) at or after `from` starts.
///
/// Only runs when something at the tail failed to decode, to tell a torn tail (nothing valid
/// follows) from damage in the middle (something does). A header's kind byte (offset 8) is 1 or
/// 2, which skips zero-filled space quickly.
pub(crate) fn next_valid_record(bytes: &[u8], from: u64) -> Option<u64> {
    let from = usize::try_from(from).ok()?;
    next_valid_record_before(bytes, from, written_end(bytes, from))
}

/// [`next_valid_record`], looking for starts only before `limit`.
pub(crate) fn next_valid_record_before(bytes: &[u8], from: usize, limit: usize) -> Option<u64> {
    let mut q = from;
    while q < limit && q + record::HEADER_LEN <= bytes.len() {
        let kind = bytes[q + 8];
        if (kind == 1 || kind == 2)
            && let Ok(h) = Header::decode(&bytes[q..])
        {
            {
                let end = h.record_len().and_then(|l| (q as u64).checked_add(l));
                if let Some(end) = end.filter(|&e| e <= bytes.len() as u64)
                    && record::crc_ok(&bytes[q..end as usize], h.crc)
                {
                    return Some(q as u64);
                }
            }
        }
        q += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Batch, Kind, encode};

    fn seg(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = encode_header(7).to_vec();
        for (k, v) in records {
            let (head, _) = encode(Kind::Put, 0, k, v, Batch::ALONE);
            b.extend_from_slice(&head);
            b.extend_from_slice(v);
        }
        b
    }

    fn batch(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (i, (k, v)) in records.iter().enumerate() {
            let (head, _) = encode(Kind::Put, 0, k, v, Batch::nth(i, records.len()));
            b.extend_from_slice(&head);
            b.extend_from_slice(v);
        }
        b
    }

    #[test]
    fn a_hole_inside_the_last_batch_is_torn_but_not_before_a_later_append() {
        let mut b = seg(&[("a", b"synced")]);
        let batch_start = b.len();
        b.extend_from_slice(&batch(&[("x", b"one"), ("y", b"two"), ("z", b"three")]));
        // A power cut lost the sector holding "x": zeros, then intact "y" and "z" of the same batch.
        let mut cut = b.clone();
        cut[batch_start..batch_start + 28].fill(0);
        assert_eq!(
            scan_at(&cut, batch_start as u64),
            Step::End {
                offset: batch_start as u64,
                torn: torn_len(&cut[batch_start..])
            }
        );
        // The same hole followed by a later append (a lone record): the batch had been written
        // before it, so this is corruption.
        let mut later = cut.clone();
        later.extend_from_slice(&seg(&[("w", b"later")])[HEADER_LEN as usize..]);
        assert_eq!(
            scan_at(&later, batch_start as u64),
            Step::Corrupt {
                offset: batch_start as u64
            }
        );
        // Damage to a lone record followed by another lone record is corruption too.
        let mut lone = seg(&[("a", b"one"), ("b", b"two")]);
        lone[HEADER_LEN as usize..HEADER_LEN as usize + 24].fill(0);
        assert_eq!(
            scan_at(&lone, HEADER_LEN),
            Step::Corrupt { offset: HEADER_LEN }
        );
    }

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
        assert_eq!(decode_header(p, &encode_header(42)).ok(), Some(42));
        let mut bad = encode_header(42);
        bad[0] = 0;
        assert!(matches!(
            decode_header(p, &bad),
            Err(Error::BadMagic { .. })
        ));
        let mut future = encode_header(42);
        future[8] = 2;
        assert!(matches!(
            decode_header(p, &future),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
        assert!(decode_header(p, &[0; 5]).is_err());
    }

    #[test]
    fn torn_tail_vs_middle_damage() {
        let mut b = seg(&[("a", b"one"), ("b", b"two")]);
        let second = HEADER_LEN + 24 + 1 + 3;
        // A cut inside the last record is a torn tail.
        let cut = &b[..b.len() - 1];
        assert_eq!(
            scan_at(cut, second),
            Step::End {
                offset: second,
                torn: 24 + 1 + 2
            }
        );
        // Zeros after the last record are the clean end.
        let mut padded = b.clone();
        padded.extend_from_slice(&[0; 100]);
        assert_eq!(
            scan_at(&padded, padded.len() as u64 - 100),
            Step::End {
                offset: padded.len() as u64 - 100,
                torn: 0
            }
        );
        // A damaged value in the first record, followed by a valid one, is a damaged record.
        b[HEADER_LEN as usize + 25] ^= 0xff;
        assert!(matches!(
            scan_at(&b, HEADER_LEN),
            Step::Record { intact: false, .. }
        ));
        // A damaged header followed by a valid record is corruption.
        b[HEADER_LEN as usize + 9] ^= 0xff;
        assert_eq!(
            scan_at(&b, HEADER_LEN),
            Step::Corrupt { offset: HEADER_LEN }
        );
    }
}
