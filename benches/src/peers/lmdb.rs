//! LMDB through `heed`: a copy-on-write B+tree in one memory-mapped file.

use std::path::Path;

use anyhow::{Context, Result};
use heed::types::{Bytes, Str};
use heed::{Database, Env};

/// An LMDB environment with one unnamed database.
pub struct LmdbPeer {
    env: Env,
    db: Database<'static, Str, Bytes>,
}

impl LmdbPeer {
    /// Opens the environment in `dir` with default (fully synchronous) commit flags.
    pub fn open(dir: &Path) -> Result<Self> {
        let (env, db) = super::lmdb_env::open(dir)?;
        Ok(LmdbPeer { env, db })
    }
}

impl super::Peer for LmdbPeer {
    fn load(&mut self, items: &mut dyn Iterator<Item = (&str, &[u8])>) -> Result<()> {
        let mut wtxn = self.env.write_txn()?;
        for (k, v) in items {
            self.db.put(&mut wtxn, k, v)?;
        }
        // A commit syncs the data and the meta page.
        wtxn.commit()?;
        Ok(())
    }

    fn put_durable(&mut self, key: &str, value: &[u8]) -> Result<()> {
        let mut wtxn = self.env.write_txn()?;
        self.db.put(&mut wtxn, key, value)?;
        wtxn.commit()?;
        Ok(())
    }

    fn get_each(&self, keys: &[&str], sink: &mut dyn FnMut(&[u8])) -> Result<()> {
        let rtxn = self.env.read_txn()?;
        for k in keys {
            let v = self
                .db
                .get(&rtxn, k)?
                .with_context(|| format!("missing {k}"))?;
            sink(v);
        }
        Ok(())
    }

    fn scan(&self, sink: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        let rtxn = self.env.read_txn()?;
        let mut n = 0;
        for item in self.db.iter(&rtxn)? {
            let (k, v) = item?;
            sink(k.as_bytes(), v);
            n += 1;
        }
        Ok(n)
    }

    fn close(self: Box<Self>) -> Result<()> {
        let LmdbPeer { env, .. } = *self;
        env.prepare_for_closing().wait();
        Ok(())
    }
}

/// Builds an LMDB store of `n` keys with `value_len`-byte values in one transaction.
pub fn build_for_open(dir: &Path, n: usize, value_len: usize) -> Result<()> {
    let peer = LmdbPeer::open(dir)?;
    let value = crate::workload::filler(value_len);
    let mut wtxn = peer.env.write_txn()?;
    for i in 0..n {
        peer.db
            .put(&mut wtxn, &crate::workload::scale_key(i), &value)?;
    }
    wtxn.commit()?;
    super::Peer::close(Box::new(peer))
}

/// Bulk-loads `n` keys with `value_len`-byte values: one transaction per batch, or every `put` in
/// one transaction. Like squirrel-store's buffered writes, the commits do not sync (`NO_SYNC`);
/// one `force_sync` at the end makes everything durable, then the store is closed.
pub fn bulk(dir: &Path, n: usize, value_len: usize, mode: crate::measure::BulkMode) -> Result<()> {
    let peer = LmdbPeer::open(dir)?;
    // SAFETY: NO_SYNC only defers durability to the force_sync below; this benchmark's private
    // environment is opened by this one handle, and nothing reads it before that sync.
    unsafe {
        peer.env
            .set_flags(heed::EnvFlags::NO_SYNC, heed::FlagSetMode::Enable)?;
    }
    let value = crate::workload::filler(value_len);
    let per_txn = match mode {
        crate::measure::BulkMode::Batched => crate::measure::BULK_BATCH,
        crate::measure::BulkMode::OneByOne => usize::MAX,
    };
    let mut i = 0;
    while i < n {
        let end = n.min(i.saturating_add(per_txn));
        let mut wtxn = peer.env.write_txn()?;
        for j in i..end {
            peer.db
                .put(&mut wtxn, &crate::workload::scale_key(j), &value)?;
        }
        wtxn.commit()?;
        i = end;
    }
    peer.env.force_sync()?;
    super::Peer::close(Box::new(peer))
}
