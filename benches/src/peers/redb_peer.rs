//! `redb`: a copy-on-write B+tree in one file, pure Rust.

use std::path::Path;

use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");

/// A redb database with one table.
pub struct RedbPeer {
    db: Database,
}

impl RedbPeer {
    /// Opens (or creates) `dir/data.redb` with default settings (durable commits).
    pub fn open(dir: &Path) -> Result<Self> {
        let db = Database::create(dir.join("data.redb"))?;
        let wtxn = db.begin_write()?;
        wtxn.open_table(TABLE)?;
        wtxn.commit()?;
        Ok(RedbPeer { db })
    }
}

impl super::Peer for RedbPeer {
    fn load(&mut self, items: &mut dyn Iterator<Item = (&str, &[u8])>) -> Result<()> {
        let wtxn = self.db.begin_write()?;
        {
            let mut table = wtxn.open_table(TABLE)?;
            for (k, v) in items {
                table.insert(k, v)?;
            }
        }
        wtxn.commit()?;
        Ok(())
    }

    fn put_durable(&mut self, key: &str, value: &[u8]) -> Result<()> {
        let wtxn = self.db.begin_write()?;
        wtxn.open_table(TABLE)?.insert(key, value)?;
        wtxn.commit()?;
        Ok(())
    }

    fn get_each(&self, keys: &[&str], sink: &mut dyn FnMut(&[u8])) -> Result<()> {
        let rtxn = self.db.begin_read()?;
        let table = rtxn.open_table(TABLE)?;
        for k in keys {
            let v = table.get(*k)?.with_context(|| format!("missing {k}"))?;
            sink(v.value());
        }
        Ok(())
    }

    fn scan(&self, sink: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        let rtxn = self.db.begin_read()?;
        let table = rtxn.open_table(TABLE)?;
        let mut n = 0;
        for item in table.iter()? {
            let (k, v) = item?;
            sink(k.value().as_bytes(), v.value());
            n += 1;
        }
        Ok(n)
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
