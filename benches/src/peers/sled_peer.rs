//! `sled` 0.34: a lock-free B+tree over a log-structured page store.

use std::path::Path;

use anyhow::{Context, Result};

/// A sled database (its default tree).
pub struct SledPeer {
    db: sled::Db,
}

impl SledPeer {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(SledPeer {
            db: sled::open(dir)?,
        })
    }
}

impl super::Peer for SledPeer {
    fn load(&mut self, items: &mut dyn Iterator<Item = (&str, &[u8])>) -> Result<()> {
        for (k, v) in items {
            self.db.insert(k, v)?;
        }
        self.db.flush()?;
        Ok(())
    }

    fn put_durable(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.db.insert(key, value)?;
        self.db.flush()?;
        Ok(())
    }

    fn get_each(&self, keys: &[&str], sink: &mut dyn FnMut(&[u8])) -> Result<()> {
        for k in keys {
            let v = self.db.get(k)?.with_context(|| format!("missing {k}"))?;
            sink(&v);
        }
        Ok(())
    }

    fn scan(&self, sink: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        let mut n = 0;
        for item in self.db.iter() {
            let (k, v) = item?;
            sink(&k, &v);
            n += 1;
        }
        Ok(n)
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}
