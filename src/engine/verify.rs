//! Verification: read every record of a store and check every checksum, without trusting the
//! index, and check that the index agrees with the segment. Used by `squirrel-store verify`.
//!
//! It applies the recovery rules of [`crate::engine::scan`] to the whole file, so what it calls damage is
//! exactly what an open would keep and report, and what it calls a torn tail is what a read-write
//! open would save into `lost+found/` and cut. Beside a live writer it reads the records as they
//! were when it started, plus whatever the writer completed meanwhile, and reports no torn tail
//! (the writer's append in flight is not one).

use std::collections::HashMap;
use std::path::Path;

use crate::engine::index::{self, Loc};
use crate::engine::lost_found::{self, LostFile};
use crate::engine::record::Kind;
use crate::engine::recovery::{self, IndexState};
use crate::engine::scan::{self, Event, Reach};
use crate::engine::segment;
use crate::error::Result;

/// A damaged record (or region) found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Damage {
    /// Offset of the damaged bytes in the segment.
    pub offset: u64,
    /// How many bytes, up to the next intact record.
    pub len: u64,
    /// The record's key, when it can be told for certain (see format-spec, "Naming a damaged
    /// record's key"). `None` when the key bytes themselves are damaged or unreadable.
    pub key: Option<String>,
    /// What is wrong.
    pub what: &'static str,
}

/// The state of the index as [`verify`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IndexCheck {
    /// Every slot names an intact record of its key, and every live key has a slot or is in the
    /// tail after the last checkpoint.
    Consistent,
    /// No index file, or one that cannot be used (it will be rebuilt at the next read-write open).
    Unusable,
    /// Slots that disagree with the segment (the index is derived: `rebuild-index` repairs it,
    /// atomically, losing nothing).
    Inconsistent(Vec<String>),
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Records read and checked (intact or not; sync marks are not counted).
    pub records: u64,
    /// Intact records.
    pub intact: u64,
    /// Keys with a live value according to the segment (damaged ones included).
    pub live_keys: u64,
    /// Damaged records or regions: corruption. Each costs that record alone; see
    /// [`crate::repair()`].
    pub damaged: Vec<Damage>,
    /// A torn tail left by a crash: `(offset, bytes)`. Not corruption: the next read-write open
    /// saves it into `lost+found/` and cuts it off.
    pub torn_tail: Option<(u64, u64)>,
    /// The index's state.
    pub index: IndexCheck,
    /// What the store's `lost+found/` holds.
    pub lost_found: Vec<LostFile>,
    /// Whether a writer held the store open while it was checked.
    pub live_writer: bool,
    /// The segment's format version.
    pub format_version: u32,
}

impl VerifyReport {
    /// Whether any record is damaged (a torn tail is not damage).
    pub fn is_corrupt(&self) -> bool {
        !self.damaged.is_empty()
    }
}

/// Checks the store in `dir`, read-only, while a writer may be running.
///
/// # Errors
/// [`crate::Error::NotFound`], [`crate::Error::BadMagic`], [`crate::Error::UnsupportedVersion`]
/// for a segment that cannot be read at all, [`crate::Error::NotRegular`], [`crate::Error::Io`].
pub fn verify(dir: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
    let seg = recovery::open_segment(dir, false, false)?;
    let live_writer = crate::engine::lock::is_held(dir)?;
    let bytes = seg.map.bytes();
    let total = bytes.len() as u64;
    let mut report = VerifyReport {
        records: 0,
        intact: 0,
        live_keys: 0,
        damaged: Vec::new(),
        torn_tail: None,
        index: IndexCheck::Consistent,
        lost_found: lost_found::list(dir)?,
        live_writer,
        format_version: seg.version,
    };
    // key -> newest record; None once deleted.
    let mut latest: HashMap<String, Option<Loc>> = HashMap::new();
    // Below the index's checkpoint the segment was fsynced before the index said so: damage
    // there is never a torn write, whatever follows it.
    let synced = match recovery::open_index(dir, false, seg.segment_id, total)? {
        IndexState::Usable(_, h) => h.covered_len,
        IndexState::Unusable => segment::HEADER_LEN,
    };
    let tail = scan::scan::<std::convert::Infallible>(
        bytes,
        segment::HEADER_LEN,
        synced,
        Reach::Whole,
        &mut |event| {
            if !matches!(event, Event::Mark) {
                report.records += 1;
            }
            match event {
                Event::Record {
                    offset,
                    header,
                    key,
                } => {
                    progress(offset, total);
                    report.intact += 1;
                    let loc = (header.kind == Kind::Put).then_some(Loc {
                        offset,
                        len: header.record_len().unwrap_or(0),
                        crc: header.crc,
                    });
                    latest.insert(key.to_owned(), loc);
                }
                Event::Mark => {}
                Event::Damaged(d) => {
                    progress(d.offset, total);
                    if let Some(key) = &d.key {
                        let loc = Loc {
                            offset: d.offset,
                            len: d.len,
                            crc: d.header.map_or(0, |h| h.crc),
                        };
                        latest.insert(key.clone(), Some(loc));
                    }
                    report.damaged.push(Damage {
                        offset: d.offset,
                        len: d.len,
                        key: d.key,
                        what: d.what,
                    });
                }
            }
            Ok(())
        },
    );
    let tail = match tail {
        Ok(t) => t,
        Err(never) => match never {},
    };
    progress(total, total);
    if tail.torn > 0 && !live_writer {
        report.torn_tail = Some((tail.end, tail.torn));
    }
    report.live_keys = latest.values().filter(|l| l.is_some()).count() as u64;
    report.index = check_index(dir, seg.segment_id, bytes, &latest, tail.end)?;
    Ok(report)
}

fn check_index(
    dir: &Path,
    segment_id: u64,
    bytes: &[u8],
    latest: &HashMap<String, Option<Loc>>,
    end: u64,
) -> Result<IndexCheck> {
    let IndexState::Usable(idx, header) =
        recovery::open_index(dir, false, segment_id, bytes.len() as u64)?
    else {
        return Ok(IndexCheck::Unusable);
    };
    let mut problems = Vec::new();
    let covered = header.covered_len.min(end);
    for (key, loc) in latest {
        let hash = index::hash_key(key);
        let expected = loc.filter(|l| l.offset < covered);
        // Keys last written after the checkpoint live in the tail, not (yet) in the index.
        if loc.is_some_and(|l| l.offset >= covered) {
            continue;
        }
        let found = match idx.probe(key, hash, bytes) {
            index::Probe::Found(l) => Some(l),
            index::Probe::NotFound => None,
            index::Probe::BadSlot | index::Probe::PastSegment => {
                problems.push(format!("slot for key {key:?} is damaged"));
                continue;
            }
        };
        if found != expected && !deleted_after_checkpoint(loc, found, covered) {
            problems.push(format!(
                "index names {found:?} for key {key:?}, the segment says {expected:?}"
            ));
        }
    }
    let Some(indexed) = idx.entries(bytes).map(|e| e.len() as u64) else {
        problems.push("the index has damaged slots".to_string());
        return Ok(IndexCheck::Inconsistent(problems));
    };
    let expected = latest
        .values()
        .filter(|l| l.is_some_and(|l| l.offset < covered))
        .count() as u64;
    if indexed < expected {
        problems.push(format!(
            "index has {indexed} entries, expected at least {expected}"
        ));
    }
    Ok(if problems.is_empty() {
        IndexCheck::Consistent
    } else {
        IndexCheck::Inconsistent(problems)
    })
}

/// A key deleted after the checkpoint still has its old slot: that is expected.
fn deleted_after_checkpoint(latest: &Option<Loc>, found: Option<Loc>, covered: u64) -> bool {
    latest.is_none() && found.is_some_and(|f| f.offset < covered)
}

/// Rebuilds the index of the store in `dir` from a full scan of its segment.
///
/// The new index is written beside the old one and renamed over it only once complete and
/// synced: a crash or error leaves the old index in place, and a store that opened before opens
/// after. Damaged records stay where they are and are reported (their keys fail to read).
///
/// # Errors
/// [`crate::Error::Locked`] if a writer has the store open; otherwise as [`crate::Config::open`].
pub fn rebuild_index(dir: &Path) -> Result<crate::Stats> {
    let engine = crate::Config::new(dir)
        .create(false)
        .force_rebuild_index()
        .open()?;
    let stats = engine.stats();
    engine.close()?;
    Ok(stats)
}
