//! Repair: the one step that turns a store with damaged records into a verified store holding
//! every other record, destroying nothing.
//!
//! 1. Open with a full scan (the index is rebuilt aside, so damage anywhere is found, not only
//!    after the last checkpoint).
//! 2. Save every damaged region into `lost+found/`, synced.
//! 3. Delete each key whose newest record is damaged (a tombstone: the key is then absent, never
//!    served from an older record).
//! 4. Compact: the damaged bytes, now dead and saved, leave the segment.

use std::path::Path;

use crate::engine::compaction::CompactionReport;
use crate::engine::verify::Damage;
use crate::error::Result;

/// What [`repair`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairReport {
    /// The damage found and saved into `lost+found/`.
    pub damaged: Vec<Damage>,
    /// Keys deleted because their newest record was damaged.
    pub deleted_keys: Vec<String>,
    /// The compaction that removed the damaged bytes.
    pub compaction: CompactionReport,
}

/// Repairs the store in `dir`; see the module docs. A store without damage is only compacted.
///
/// # Errors
/// [`crate::Error::Locked`] if a writer has the store open; otherwise as [`crate::Config::open`]
/// and [`crate::Engine::compact`]. An error leaves the store as valid as before (every step is
/// one the engine makes crash-safe).
pub fn repair(dir: &Path) -> Result<RepairReport> {
    let engine = crate::Config::new(dir)
        .create(false)
        .force_rebuild_index()
        .open()?;
    let found = engine.damaged();
    let mut deleted_keys = Vec::new();
    for d in &found {
        engine.save_damage(d.offset, d.len)?;
        if let Some(key) = &d.key
            && engine.get(key).is_err()
            && engine.delete(key)?
        {
            deleted_keys.push(key.clone());
        }
    }
    let compaction = engine.compact()?;
    engine.close()?;
    Ok(RepairReport {
        damaged: found
            .into_iter()
            .map(|d| Damage {
                offset: d.offset,
                len: d.len,
                key: d.key,
                what: d.what,
            })
            .collect(),
        deleted_keys,
        compaction,
    })
}
