//! A local cache of fetched records: one file per record, named by segment id, offset and
//! length, at most a given number of bytes in all, least recently used out.
//!
//! Shared between processes by construction: an entry is written to a temporary file and
//! renamed into place (so it is whole or absent), a hit touches the file's modification time
//! (the LRU order every process sees), and eviction by two processes at once only removes a
//! file twice. The reader checks every entry's checksums again ([`super::RemoteStore`] does),
//! so a damaged entry is never served. The cache is an optimisation: its I/O errors are not
//! the caller's (a failed write leaves no entry, a failed read is a miss).

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;

use crate::error::{Error, Result};

pub(crate) struct Cache {
    dir: PathBuf,
    max: u64,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Cache {
    pub(crate) fn open(dir: PathBuf, max: u64) -> Result<Cache> {
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Cache { dir, max })
    }

    /// The entry `name` (`<segment_id>-<offset>-<len>` in hex), if present with its length.
    pub(crate) fn get(&self, name: &str) -> Option<Bytes> {
        let len = u64::from_str_radix(name.rsplit('-').next()?, 16).ok()?;
        let path = self.dir.join(name);
        let file = fs::File::open(&path).ok()?;
        if file.metadata().ok()?.len() != len {
            return None;
        }
        let mut buf = Vec::with_capacity(usize::try_from(len).ok()?);
        std::io::Read::read_to_end(&mut std::io::Read::take(&file, len), &mut buf).ok()?;
        // The LRU order: a hit is a use.
        let _ = file.set_modified(SystemTime::now());
        Some(Bytes::from(buf))
    }

    /// Stores `bytes` as entry `name`, then evicts down to the size limit.
    pub(crate) fn put(&self, name: &str, bytes: &[u8]) {
        if bytes.len() as u64 > self.max {
            return;
        }
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let written = fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes));
        if written.is_err() || fs::rename(&tmp, self.dir.join(name)).is_err() {
            let _ = fs::remove_file(&tmp);
            return;
        }
        self.evict();
    }

    /// Drops entry `name`.
    pub(crate) fn remove(&self, name: &str) {
        let _ = fs::remove_file(self.dir.join(name));
    }

    /// Removes the least recently used entries until the total is within the limit.
    fn evict(&self) {
        let Ok(dir) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = dir
            .filter_map(|e| {
                let e = e.ok()?;
                if e.file_name().to_string_lossy().starts_with('.') {
                    return None;
                }
                let meta = e.metadata().ok()?;
                meta.is_file().then(|| {
                    (
                        meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                        meta.len(),
                        e.path(),
                    )
                })
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        if total <= self.max {
            return;
        }
        entries.sort();
        for (_, len, path) in entries {
            if total <= self.max {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
            }
        }
    }
}
