//! Opening an LMDB environment with one unnamed database, shared by the LMDB peer and
//! `squirrel-get-layout` (which includes this file on its own).

use std::path::Path;

use anyhow::Result;
use heed::types::{Bytes, Str};
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions};

/// The map size: the largest the store may grow to. Sparse, so it costs nothing on disk.
pub const MAP_SIZE: usize = 256 << 30;

/// Opens the environment in `dir` (default, fully synchronous commit flags) and creates its one
/// unnamed database.
pub fn open(dir: &Path) -> Result<(Env, Database<'static, Str, Bytes>)> {
    // SAFETY: the directory is private to the benchmark and opened by one handle at a time, so
    // nothing else maps or truncates the file under us.
    let env = unsafe {
        EnvOpenOptions::new()
            .map_size(MAP_SIZE)
            .max_dbs(1)
            .open(dir)?
    };
    let wtxn = env.write_txn()?;
    let db = env
        .create_databases_and_commit(wtxn, |opener, wtxn| {
            opener
                .create_database::<Str, Bytes>(wtxn, None)
                .map(CommitOrAbort::<_, ()>::Commit)
        })?
        .unwrap_commit();
    Ok((env, db))
}
