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
        let file = open_lock_file(&path, true)?;
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

/// Opens (creating when `create`) the lock file, refusing a FIFO or other non-regular file before
/// anything can block on it.
fn open_lock_file(path: &Path, create: bool) -> Result<File> {
    crate::engine::recovery::open_regular_with(
        path,
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false),
    )
}

/// Whether a writer holds the store in `dir` open right now (false when there is no lock file).
pub(crate) fn is_held(dir: &Path) -> Result<bool> {
    let path = dir.join(LOCK_FILE);
    let file = match open_lock_file(&path, false) {
        Ok(f) => f,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(false);
        }
        // A read-only directory: no writer can hold a lock we may not even open for writing.
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::PermissionDenied => {
            return Ok(false);
        }
        Err(e) => return Err(e),
    };
    match file.try_lock() {
        // Dropping the file releases the probe's own lock at once.
        Ok(()) => Ok(false),
        Err(TryLockError::WouldBlock) => Ok(true),
        Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}
