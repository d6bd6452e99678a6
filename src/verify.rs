//! Verification: read every record of a store and check every checksum, without trusting the
//! index, and check that the index agrees with the segment. Used by `squirrel-store verify`.

use std::collections::HashMap;
use std::path::Path;

use crate::error::Result;
use crate::index::{self, IndexMap, Loc};
use crate::record::Kind;
use crate::recovery::{self, IndexState};
use crate::segment::{self, Step};

/// A damaged record found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Offset of the damaged bytes in the segment.
    pub offset: u64,
    /// The record's key, when its header is intact enough to tell.
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
    /// Slots that disagree with the segment (the index is derived: `rebuild-index` repairs it).
    Inconsistent(Vec<String>),
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Records read and checked (intact or not).
    pub records: u64,
    /// Intact records.
    pub intact: u64,
    /// Keys with a live value according to the segment.
    pub live_keys: u64,
    /// Damaged records in the middle of the segment: corruption.
    pub damaged: Vec<Damage>,
    /// A torn tail left by a crash: `(offset, bytes)`. Not corruption: the next read-write open
    /// cuts it off.
    pub torn_tail: Option<(u64, u64)>,
    /// The index's state.
    pub index: IndexCheck,
}

impl VerifyReport {
    /// Whether any record is damaged (a torn tail is not damage).
    pub fn is_corrupt(&self) -> bool {
        !self.damaged.is_empty()
    }
}

/// Checks the store in `dir`, read-only, while a writer may be running (it sees what was written
/// when it started).
///
/// # Errors
/// [`crate::Error::NotFound`], [`crate::Error::BadMagic`], [`crate::Error::UnsupportedVersion`]
/// for a segment that cannot be read at all, [`crate::Error::Io`].
pub fn verify(dir: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
    let seg = recovery::open_segment(dir, false, false)?;
    let bytes = seg.map.bytes();
    let total = bytes.len() as u64;
    let mut report = VerifyReport {
        records: 0,
        intact: 0,
        live_keys: 0,
        damaged: Vec::new(),
        torn_tail: None,
        index: IndexCheck::Consistent,
    };
    // key -> newest intact record; None once deleted.
    let mut latest: HashMap<String, Option<Loc>> = HashMap::new();
    // Below the index's checkpoint the segment was fsynced before the index said so: damage
    // there is never a torn write, whatever follows it.
    let synced = match recovery::open_index(dir, false, seg.segment_id, total)? {
        IndexState::Usable(_, h) => h.covered_len,
        IndexState::Unusable => segment::HEADER_LEN,
    };
    let mut at = segment::HEADER_LEN;
    let mut end = at;
    loop {
        progress(at.min(total), total);
        let step = match segment::scan_at(bytes, at) {
            Step::End { offset, torn } if torn > 0 && offset < synced => {
                segment::scan_synced(bytes, offset)
            }
            step => step,
        };
        match step {
            Step::Record {
                offset,
                header,
                intact,
            } => {
                report.records += 1;
                let len = header.record_len().unwrap_or(0);
                let ks = offset as usize + crate::record::HEADER_LEN;
                let key = String::from_utf8_lossy(&bytes[ks..ks + usize::from(header.key_len)])
                    .into_owned();
                if intact {
                    report.intact += 1;
                    let loc = (header.kind == Kind::Put).then_some(Loc {
                        offset,
                        len,
                        crc: header.crc,
                    });
                    latest.insert(key, loc);
                } else {
                    report.damaged.push(Damage {
                        offset,
                        key: Some(key),
                        what: "record checksum mismatch",
                    });
                }
                at = offset + len;
                end = at;
            }
            Step::End { offset, torn } => {
                // Recovery stops at a long run of zeros; verify reads on, so a zeroed region in
                // the middle of the records is reported rather than mistaken for the end.
                let after = offset as usize + torn as usize;
                match segment::next_valid_record_before(bytes, after, bytes.len()) {
                    Some(next) => {
                        report.records += 1;
                        report.damaged.push(Damage {
                            offset,
                            key: None,
                            what: "zeroed or unreadable region followed by records",
                        });
                        at = next;
                    }
                    None => {
                        if torn > 0 {
                            report.torn_tail = Some((offset, torn));
                        }
                        break;
                    }
                }
            }
            Step::Corrupt { offset } => {
                report.records += 1;
                report.damaged.push(Damage {
                    offset,
                    key: None,
                    what: "unreadable record header",
                });
                match segment::next_valid_record(bytes, offset + 1) {
                    Some(next) => at = next,
                    None => break,
                }
            }
        }
    }
    progress(total, total);
    report.live_keys = latest.values().filter(|l| l.is_some()).count() as u64;
    report.index = check_index(dir, seg.segment_id, bytes, &latest, end)?;
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
    let Some(indexed) = IndexMap::entries(&idx).map(|e| e.len() as u64) else {
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
/// # Errors
/// [`crate::Error::Locked`] if a writer has the store open; otherwise as [`crate::Config::open`].
pub fn rebuild_index(dir: &Path) -> Result<crate::Stats> {
    let _lock = crate::lock::WriterLock::acquire(dir)?;
    let path = dir.join(index::INDEX_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(crate::Error::io(&path, e)),
    }
    drop(_lock);
    let engine = crate::Config::new(dir).create(false).open()?;
    let stats = engine.stats();
    engine.close()?;
    Ok(stats)
}
