//! Opening a store: check the files, trust the index only as far as it proves itself, replay the
//! segment tail written after the last checkpoint, and cut off (or, read-only, ignore) a torn tail.
//!
//! Recovery reads the segment from `covered_len` on, never the whole segment, unless the index is
//! missing, stale or damaged: then it is rebuilt from a full scan.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use dashmap::DashMap;

use crate::error::{Error, IoContext, Result};
use crate::index::{self, Counters, IndexMap, Loc, Probe};
use crate::record::Kind;
use crate::segment::{self, SegmentMap, Step};

/// What the overlay holds for a key written since the last checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    Put(Loc),
    Tombstone,
}

/// Keys written since the last checkpoint, newest record per key.
pub(crate) type Overlay = DashMap<Box<str>, Entry>;

/// Where the segment's valid records end, as found by a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScanEnd {
    /// Offset of the first byte after the last valid record.
    pub end: u64,
    /// Bytes of a torn tail after `end` (0 if only zeros follow).
    pub torn: u64,
}

/// The live location of `key`: overlay first, then the index.
pub(crate) fn current(
    overlay: &Overlay,
    index: Option<&IndexMap>,
    segment: &[u8],
    key: &str,
    hash: u64,
    path: &Path,
) -> Result<Option<Loc>> {
    if let Some(e) = overlay.get(key) {
        return Ok(match *e {
            Entry::Put(loc) => Some(loc),
            Entry::Tombstone => None,
        });
    }
    let Some(index) = index else { return Ok(None) };
    match index.probe(key, hash, segment) {
        // The slot's length and crc must be the record's own: statistics are computed with them.
        Probe::Found(loc) if slot_agrees(segment, loc) => Ok(Some(loc)),
        Probe::Found(loc) => Err(Error::corruption(
            path,
            loc.offset,
            Some(key),
            "index slot disagrees with the record it names",
        )),
        Probe::NotFound => Ok(None),
        Probe::BadSlot | Probe::PastSegment => Err(Error::corruption(
            path,
            0,
            Some(key),
            "index slot for this key is damaged or points past the segment",
        )),
    }
}

/// Whether the record at `loc` has a valid header whose length and crc are the slot's.
fn slot_agrees(segment: &[u8], loc: Loc) -> bool {
    usize::try_from(loc.offset)
        .ok()
        .and_then(|o| segment.get(o..))
        .and_then(|rest| crate::record::Header::decode(rest).ok())
        .is_some_and(|h| h.record_len() == Some(loc.len) && h.crc == loc.crc)
}

/// Applies one record's effect on the counters, given the key's previous live location.
pub(crate) fn count(counters: &mut Counters, kind: Kind, prev: Option<Loc>, len: u64) {
    match (kind, prev) {
        (Kind::Put, Some(p)) => {
            counters.live_bytes = counters
                .live_bytes
                .saturating_sub(p.len)
                .saturating_add(len);
            counters.dead_records = counters.dead_records.saturating_add(1);
            counters.dead_bytes = counters.dead_bytes.saturating_add(p.len);
        }
        (Kind::Put, None) => {
            counters.live_records = counters.live_records.saturating_add(1);
            counters.live_bytes = counters.live_bytes.saturating_add(len);
        }
        (Kind::Delete, Some(p)) => {
            counters.live_records = counters.live_records.saturating_sub(1);
            counters.live_bytes = counters.live_bytes.saturating_sub(p.len);
            counters.dead_records = counters.dead_records.saturating_add(2);
            counters.dead_bytes = counters
                .dead_bytes
                .saturating_add(p.len.saturating_add(len));
        }
        (Kind::Delete, None) => {
            counters.dead_records = counters.dead_records.saturating_add(1);
            counters.dead_bytes = counters.dead_bytes.saturating_add(len);
        }
    }
}

/// Replays records from `from` into `overlay`, updating `counters`. Stops at the end of the valid
/// records; mid-segment damage is an error naming its offset (and key, when the header is intact).
pub(crate) fn replay(
    segment: &[u8],
    from: u64,
    index: Option<&IndexMap>,
    overlay: &Overlay,
    counters: &mut Counters,
    path: &Path,
) -> Result<(ScanEnd, u64)> {
    let mut at = from;
    let mut records = 0u64;
    loop {
        match segment::scan_at(segment, at) {
            Step::Record {
                offset,
                header,
                intact,
            } => {
                let start = offset as usize + crate::record::HEADER_LEN;
                let key_bytes = &segment[start..start + usize::from(header.key_len)];
                let key = std::str::from_utf8(key_bytes).ok().filter(|_| intact);
                let Some(key) = key else {
                    return Err(Error::corruption(
                        path,
                        offset,
                        std::str::from_utf8(key_bytes).ok(),
                        "record checksum mismatch in the middle of the segment",
                    ));
                };
                let len = header.record_len().unwrap_or(0);
                let hash = index::hash_key(key);
                let prev = current(overlay, index, segment, key, hash, path)?;
                count(counters, header.kind, prev, len);
                let entry = match header.kind {
                    Kind::Put => Entry::Put(Loc {
                        offset,
                        len,
                        crc: header.crc,
                    }),
                    Kind::Delete => Entry::Tombstone,
                };
                overlay.insert(key.into(), entry);
                records += 1;
                at = offset + len;
            }
            Step::End { offset, torn } => return Ok((ScanEnd { end: offset, torn }, records)),
            Step::Corrupt { offset } => {
                return Err(Error::corruption(
                    path,
                    offset,
                    None,
                    "unreadable record header followed by valid records",
                ));
            }
        }
    }
}

/// The segment file, opened and checked.
pub(crate) struct OpenedSegment {
    pub file: File,
    pub map: Arc<SegmentMap>,
    pub segment_id: u64,
    pub created: bool,
}

/// Opens (or, when allowed, creates) the segment file and checks its header.
pub(crate) fn open_segment(dir: &Path, writable: bool, create: bool) -> Result<OpenedSegment> {
    let path = dir.join(segment::SEGMENT_FILE);
    let file = match OpenOptions::new().read(true).write(writable).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !(writable && create) {
                return Err(Error::NotFound {
                    path: dir.to_owned(),
                });
            }
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .at(&path)?
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    let mut len = file.metadata().at(&path)?.len();
    let mut created = false;
    if len == 0 && writable {
        // A new file, or one whose creation was cut short before its header was written.
        let id: u64 = rand::random();
        std::os::unix::fs::FileExt::write_all_at(&file, &segment::encode_header(id), 0)
            .at(&path)?;
        file.sync_all().at(&path)?;
        sync_dir(dir)?;
        len = segment::HEADER_LEN;
        created = true;
    }
    if len < segment::HEADER_LEN {
        return Err(Error::corruption(
            &path,
            0,
            None,
            "segment shorter than its header",
        ));
    }
    let map = SegmentMap::new(&file, len, &path)?;
    let segment_id = segment::decode_header(&path, map.bytes())?;
    Ok(OpenedSegment {
        file,
        map,
        segment_id,
        created,
    })
}

/// A usable index and the state it vouches for, or the reason there is none.
pub(crate) enum IndexState {
    Usable(Arc<IndexMap>, index::IndexHeader),
    Unusable,
}

/// Opens the index and checks that it belongs to this segment and is complete.
pub(crate) fn open_index(
    dir: &Path,
    writable: bool,
    segment_id: u64,
    seg_len: u64,
) -> Result<IndexState> {
    let path = dir.join(index::INDEX_FILE);
    Ok(match IndexMap::open(&path, writable)? {
        None => IndexState::Unusable,
        Some(Err(_)) => IndexState::Unusable,
        Some(Ok((map, header))) => {
            let c = header.counters;
            // Statistics no segment of this length can have mean a damaged (or forged) header,
            // even with a valid checksum: never compute with them.
            let records_room = header.covered_len.saturating_sub(segment::HEADER_LEN);
            let plausible = c
                .live_bytes
                .checked_add(c.dead_bytes)
                .is_some_and(|b| b <= records_room)
                && c.live_records.saturating_add(c.dead_records) <= records_room / 24
                && c.live_records <= header.used_slots;
            let trusted = !header.dirty
                && plausible
                && header.segment_id == segment_id
                && header.covered_len >= segment::HEADER_LEN
                && header.covered_len <= seg_len;
            if trusted {
                IndexState::Usable(map, header)
            } else {
                IndexState::Unusable
            }
        }
    })
}

/// Fsyncs a directory, so a file created or renamed in it survives a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}
