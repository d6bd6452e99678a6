//! The writer lock: an OS file lock on `LOCK` in the store directory.
//!
//! `flock` locks belong to an open file description, so a second writer in the same process is
//! refused exactly like one in another process. The lock dies with the process, so a killed writer
//! never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Name of the lock file inside a store directory.
pub(crate) const LOCK_FILE: &str = "LOCK";

/// Holds the exclusive writer lock until dropped.
#[derive(Debug)]
pub(crate) struct WriterLock {
    _file: File,
}

impl WriterLock {
    pub(crate) fn acquire(dir: &Path) -> Result<Self> {
        let path: PathBuf = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // A process forked by this one (to exec a command) holds a copy of every descriptor,
        // and so of the lock, until its exec closes them: a handle dropped and reopened across
        // such a fork can find its own lock still held for a moment. Retry briefly before
        // reporting another writer.
        let mut wait = std::time::Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(WriterLock { _file: file }),
                Err(TryLockError::WouldBlock) if wait < std::time::Duration::from_millis(128) => {
                    std::thread::sleep(wait);
                    wait *= 2;
                }
                Err(TryLockError::WouldBlock) => return Err(Error::Locked { path }),
                Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
    }
}
