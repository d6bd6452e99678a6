//! One file per key in a directory: Python squirrel's layout (`{url}/{key}.gz`), here without
//! compression so that it stores exactly the bytes the other engines store.

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::Result;

/// A directory of files, one per key.
pub struct FilesPeer {
    dir: PathBuf,
}

impl FilesPeer {
    /// Uses the existing directory `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(FilesPeer {
            dir: dir.to_owned(),
        })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    fn write(&self, key: &str, value: &[u8]) -> Result<File> {
        let mut f = File::create(self.path(key))?;
        f.write_all(value)?;
        Ok(f)
    }

    fn sync_dir(&self) -> Result<()> {
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

impl super::Peer for FilesPeer {
    fn load(&mut self, items: &mut dyn Iterator<Item = (&str, &[u8])>) -> Result<()> {
        for (k, v) in items {
            drop(self.write(k, v)?);
        }
        // The one durable commit: syncfs(2) of the file system holding the directory, which makes
        // every file and directory entry durable in one call (an fsync per file costs ~2 ms each,
        // 400 s for 200k files; Python squirrel itself does not sync at all).
        let dir = File::open(&self.dir)?;
        // SAFETY: syncfs only reads the descriptor, which `dir` keeps open for the call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(())
    }

    fn put_durable(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.write(key, value)?.sync_data()?;
        self.sync_dir()
    }

    fn get_each(&self, keys: &[&str], sink: &mut dyn FnMut(&[u8])) -> Result<()> {
        for k in keys {
            sink(&fs::read(self.path(k))?);
        }
        Ok(())
    }

    fn scan(&self, sink: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        names.sort_unstable();
        for name in &names {
            sink(name.as_bytes(), &fs::read(self.dir.join(name))?);
        }
        Ok(names.len() as u64)
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
