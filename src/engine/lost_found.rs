//! `lost+found/`: where bytes go before anything removes them from a segment.
//!
//! A read-write open cuts a torn tail, a repair removes damaged records, compaction drops damaged
//! regions no key names. Any of those bytes might be all that is left of an acknowledged record
//! (a torn tail cannot be told from damage to the last append), so each is first copied here,
//! synced, and only then removed. Files are named `<segment_id>-<offset>.bin` (both in hex), so
//! saving the same region twice writes one file; `stats` and `verify` list what is here.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::engine::recovery::sync_dir;
use crate::error::{Error, IoContext, Result};

/// Name of the directory inside a store directory.
pub const LOST_FOUND_DIR: &str = "lost+found";

/// A file in `lost+found/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostFile {
    /// Its file name.
    pub name: String,
    /// Its length in bytes.
    pub len: u64,
}

/// Copies `bytes` (segment bytes at `offset` of segment `segment_id`) into the store's
/// `lost+found/`, durably: the file and the directory are synced before this returns. Returns
/// whether a new file was made (false when the same region was saved before).
pub(crate) fn save(dir: &Path, segment_id: u64, offset: u64, bytes: &[u8]) -> Result<bool> {
    let lf = dir.join(LOST_FOUND_DIR);
    if !lf.is_dir() {
        fs::create_dir(&lf)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .at(&lf)?;
        sync_dir(dir)?;
    }
    let name = format!("{segment_id:016x}-{offset:016x}.bin");
    let path = lf.join(&name);
    if fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
        return Ok(false);
    }
    let tmp = lf.join(format!(".{name}.tmp"));
    let mut f = File::create(&tmp).at(&tmp)?;
    f.write_all(bytes).at(&tmp)?;
    f.sync_all().at(&tmp)?;
    drop(f);
    fs::rename(&tmp, &path).at(&path)?;
    sync_dir(&lf)?;
    Ok(true)
}

/// What `lost+found/` of the store in `dir` holds, sorted by name (empty if there is none).
///
/// # Errors
/// [`Error::Io`] if the directory exists but cannot be listed.
pub fn list(dir: &Path) -> Result<Vec<LostFile>> {
    let lf = dir.join(LOST_FOUND_DIR);
    let entries = match fs::read_dir(&lf) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&lf, e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.at(&lf)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let len = e.metadata().at(&lf)?.len();
        out.push(LostFile { name, len });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
