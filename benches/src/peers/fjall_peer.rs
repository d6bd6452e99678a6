//! `fjall`: an LSM tree with a write-ahead journal, pure Rust. Default options (LZ4 blocks, no
//! key-value separation).

use std::path::Path;

use anyhow::{Context, Result};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

/// A fjall database with one keyspace.
pub struct FjallPeer {
    db: Database,
    ks: Keyspace,
}

impl FjallPeer {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let db = Database::builder(dir).open()?;
        let ks = db.keyspace("kv", KeyspaceCreateOptions::default)?;
        Ok(FjallPeer { db, ks })
    }
}

impl super::Peer for FjallPeer {
    fn load(&mut self, items: &mut dyn Iterator<Item = (&str, &[u8])>) -> Result<()> {
        for (k, v) in items {
            self.ks.insert(k, v)?;
        }
        self.db.persist(PersistMode::SyncData)?;
        Ok(())
    }

    fn put_durable(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.ks.insert(key, value)?;
        self.db.persist(PersistMode::SyncData)?;
        Ok(())
    }

    fn get_each(&self, keys: &[&str], sink: &mut dyn FnMut(&[u8])) -> Result<()> {
        for k in keys {
            let v = self.ks.get(k)?.with_context(|| format!("missing {k}"))?;
            sink(&v);
        }
        Ok(())
    }

    fn scan(&self, sink: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        let mut n = 0;
        for guard in self.ks.iter() {
            let (k, v) = guard.into_inner()?;
            sink(&k, &v);
            n += 1;
        }
        Ok(n)
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.db.persist(PersistMode::SyncAll)?;
        Ok(())
    }
}
