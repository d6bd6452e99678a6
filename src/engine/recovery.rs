//! Opening a store: check the files, trust the index only as far as it proves itself, replay the
//! segment tail written after the last checkpoint, and cut off (or, read-only, ignore) a torn tail.
//!
//! Recovery reads the segment from `covered_len` on, never the whole segment, unless the index is
//! missing, stale or damaged: then it is rebuilt from a full scan.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::Arc;

use crate::engine::index::{self, Counters, IndexMap, Loc, Probe};
use crate::engine::manifest::{Index, Manifest, RunSet};
use crate::engine::overlay::{Entry, Found, Overlay, OverlayWriter};
use crate::engine::platform;
use crate::engine::record::{Kind, MARK_LEN};
use crate::engine::scan::{self, Damaged, Event, Reach, Tail};
use crate::engine::segment::{self, SegmentMap};
use crate::error::{Error, IoContext, Result};

/// The live location of `key`: overlay first, then the index.
pub(crate) fn current(
    overlay: &Overlay,
    index: Option<&Index>,
    segment: &[u8],
    key: &str,
    hash: u64,
    path: &Path,
) -> Result<Option<Loc>> {
    match overlay.get(key, hash, segment) {
        Found::Entry(e) => Ok(e.live()),
        Found::Absent => indexed(index, segment, key, hash, path),
        // The writer's map (and a replay's) covers every record the overlay names.
        Found::Past => Err(Error::corruption(
            path,
            0,
            Some(key),
            "overlay entry points past the segment",
        )),
    }
}

/// Makes `entry` the newest record of `key` (hash `hash`) and returns the key's previous live
/// location (overlay, then index): one overlay probe, where [`current`] then
/// [`OverlayWriter::insert`] take two. The entry is inserted even when the index lookup then
/// fails.
pub(crate) fn supersede(
    overlay: &mut OverlayWriter<'_>,
    index: Option<&Index>,
    segment: &[u8],
    (key, hash): (&str, u64),
    entry: Entry,
    path: &Path,
) -> Result<Option<Loc>> {
    match overlay.insert(key, hash, entry, segment) {
        Some(old) => Ok(old.live()),
        None => indexed(index, segment, key, hash, path),
    }
}

/// The live location of `key` in the index alone.
fn indexed(
    index: Option<&Index>,
    segment: &[u8],
    key: &str,
    hash: u64,
    path: &Path,
) -> Result<Option<Loc>> {
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
        .and_then(|rest| crate::engine::record::Header::decode(rest).ok())
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
        // Sync marks and unattributed damage: bytes compaction drops, but no key's record.
        (Kind::Mark, _) => {
            counters.dead_bytes = counters.dead_bytes.saturating_add(len);
        }
        (Kind::Delete, None) => {
            counters.dead_records = counters.dead_records.saturating_add(1);
            counters.dead_bytes = counters.dead_bytes.saturating_add(len);
        }
    }
}

/// What a replay found.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    /// Where the valid records end.
    pub tail: Tail,
    /// Intact records applied.
    pub records: u64,
    /// Damaged regions met (kept in the file; a key named by one maps to it, so `get` of that key
    /// reports the damage instead of serving an older value or calling the key absent).
    pub damaged: Vec<Damaged>,
}

/// Replays records from `from` into `overlay`, updating `counters`. Damage is recorded and
/// skipped, never an error and never a reason to drop what follows; see [`crate::engine::scan`].
/// `synced_floor` is an offset a checkpoint proved synced.
// The scan's three parameters and the three structures it fills: a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn replay(
    segment: &[u8],
    from: u64,
    synced_floor: u64,
    reach: Reach,
    index: Option<&Index>,
    overlay: &Overlay,
    counters: &mut Counters,
    path: &Path,
) -> Result<Replayed> {
    let mut records = 0u64;
    let mut damaged = Vec::new();
    let mut writer = overlay.writer();
    // `damaged`: the record at `loc` is damaged, and `key` is what the scan could tell for certain.
    let mut apply =
        |key: &str, kind: Kind, loc: Loc, damaged: bool, counters: &mut Counters| -> Result<()> {
            // Looked up before the insert, not through `supersede`: a read-only `refresh` replays
            // into the overlay readers use, and on an index error it must leave that key out, so
            // that a retry meets the same error instead of finding the key's own record as its
            // previous one.
            let hash = index::hash_key(key);
            let prev = current(overlay, index, segment, key, hash, path)?;
            count(counters, kind, prev, loc.len);
            let entry = match kind {
                Kind::Put => Entry::Put(loc),
                _ => Entry::Tombstone(loc.offset),
            };
            if damaged {
                writer.insert_damaged(key, hash, loc, segment);
            } else {
                writer.insert(key, hash, entry, segment);
            }
            Ok(())
        };
    let tail = scan::scan::<Error>(segment, from, synced_floor, reach, &mut |event| {
        match event {
            Event::Record {
                offset,
                header,
                key,
            } => {
                let loc = Loc {
                    offset,
                    len: header.record_len().unwrap_or(0),
                    crc: header.crc,
                };
                apply(key, header.kind, loc, false, counters)?;
                records += 1;
            }
            Event::Mark => count(counters, Kind::Mark, None, MARK_LEN),
            Event::Damaged(d) => {
                if let Some(key) = &d.key {
                    // The key's newest record is this damaged one: it maps here, as a put, so
                    // every read of it fails with the damage (a damaged tombstone too: whether
                    // the key was deleted cannot be known).
                    let loc = Loc {
                        offset: d.offset,
                        len: d.len,
                        crc: d.header.map_or(0, |h| h.crc),
                    };
                    apply(key, Kind::Put, loc, true, counters)?;
                } else {
                    count(counters, Kind::Mark, None, d.len);
                }
                damaged.push(d);
            }
        }
        Ok(())
    })?;
    Ok(Replayed {
        tail,
        records,
        damaged,
    })
}

/// The segment file, opened and checked.
pub(crate) struct OpenedSegment {
    pub file: File,
    pub map: Arc<SegmentMap>,
    pub segment_id: u64,
    /// The format version its header states (1 or 2).
    pub version: u32,
    pub created: bool,
}

/// Opens (or, when allowed, creates) the segment file and checks its header.
pub(crate) fn open_segment(dir: &Path, writable: bool, create: bool) -> Result<OpenedSegment> {
    let path = dir.join(segment::SEGMENT_FILE);
    let file = match open_regular(&path, writable) {
        Ok(f) => f,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            if !(writable && create) {
                return Err(Error::NotFound {
                    path: dir.to_owned(),
                });
            }
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .at(&path)?;
            // The directory may be new too: its entry must survive a power cut as well.
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
            f
        }
        Err(e) => return Err(e),
    };
    let mut len = file.metadata().at(&path)?.len();
    let mut created = false;
    if len == 0 && writable && create {
        // A new file, or one whose creation was cut short before its header was written.
        let id: u64 = rand::random();
        platform::write_all_at(&file, &segment::encode_header(id), 0).at(&path)?;
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
    let (segment_id, version) = segment::decode_header(&path, map.bytes())?;
    Ok(OpenedSegment {
        file,
        map,
        segment_id,
        version,
        created,
    })
}

/// Opens `path` read-only or read-write if it is a regular file (following symlinks).
pub(crate) fn open_regular(path: &Path, writable: bool) -> Result<File> {
    open_regular_with(path, OpenOptions::new().read(true).write(writable))
}

/// Opens `path` with `options` if it is a regular file (following symlinks). A FIFO, device or
/// directory is refused before anything blocks on it: the open is non-blocking, and the type is
/// checked on the handle.
pub(crate) fn open_regular_with(path: &Path, options: &mut OpenOptions) -> Result<File> {
    let not_regular = || Error::NotRegular {
        path: path.to_owned(),
    };
    let file = platform::open_nonblocking(options, path).map_err(|e| {
        // A directory opened for writing, or a device without a driver.
        if e.kind() == std::io::ErrorKind::IsADirectory || platform::is_device_without_driver(&e) {
            not_regular()
        } else {
            Error::io(path, e)
        }
    })?;
    if !file.metadata().at(path)?.is_file() {
        return Err(not_regular());
    }
    platform::restore_blocking(&file).at(path)?;
    Ok(file)
}

/// What a usable index vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// Written by a clean close: nothing follows `covered_len` in the segment.
    pub closed: bool,
    /// The index reflects every record in segment bytes `[0, covered_len)`.
    pub covered_len: u64,
    /// Statistics as of `covered_len`.
    pub counters: Counters,
    /// Used slots of a version-2 table (0 for runs).
    pub used_slots: u64,
}

/// A usable index and the state it vouches for, or the reason there is none.
pub(crate) enum IndexState {
    Usable(Index, Checkpoint),
    Unusable,
}

/// Opens the index and checks that it belongs to this segment and is complete: the version-3
/// manifest and its runs when there is a manifest, else a version-2 `index.sqi`.
pub(crate) fn open_index(
    dir: &Path,
    writable: bool,
    segment_id: u64,
    seg_len: u64,
) -> Result<IndexState> {
    // A writer in another process may replace the manifest and delete the runs the old one
    // named between our reading it and mapping them: read it again then (runs are never
    // changed, only deleted once no durable manifest names them).
    for _ in 0..4 {
        let manifest = match Manifest::load(dir)? {
            None => return open_table(dir, writable, segment_id, seg_len),
            Some(Err(_)) => return Ok(IndexState::Unusable),
            Some(Ok(m)) => m,
        };
        if !manifest.plausible(segment_id, seg_len) {
            return Ok(IndexState::Unusable);
        }
        let checkpoint = Checkpoint {
            closed: manifest.closed,
            covered_len: manifest.covered_len,
            counters: manifest.counters,
            used_slots: 0,
        };
        match RunSet::open(dir, manifest.clone())? {
            Ok(set) => return Ok(IndexState::Usable(Index::Runs(Arc::new(set)), checkpoint)),
            Err(_) => {
                let again = Manifest::load(dir)?;
                if again
                    .as_ref()
                    .is_none_or(|m| m.as_ref().ok() == Some(&manifest))
                {
                    return Ok(IndexState::Unusable);
                }
            }
        }
    }
    Ok(IndexState::Unusable)
}

/// Opens a version-2 `index.sqi` and checks it belongs to this segment and is complete.
fn open_table(dir: &Path, writable: bool, segment_id: u64, seg_len: u64) -> Result<IndexState> {
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
                && c.live_records <= header.used_slots
                && header.used_slots <= header.slot_count
                // A table larger than any store of this length would have been given (a forged
                // or damaged header over a sparse file) is not walked: rebuilt instead.
                && header.slot_count <= index::slots_for(records_room / 25 + 1);
            let trusted = !header.dirty
                && plausible
                && header.segment_id == segment_id
                && header.covered_len >= segment::HEADER_LEN
                && header.covered_len <= seg_len;
            if trusted {
                IndexState::Usable(
                    Index::Table(map),
                    Checkpoint {
                        closed: header.closed,
                        covered_len: header.covered_len,
                        counters: header.counters,
                        used_slots: header.used_slots,
                    },
                )
            } else {
                IndexState::Unusable
            }
        }
    })
}

/// Fsyncs a directory, so a file created or renamed in it survives a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    platform::sync_dir(dir).at(dir)
}
