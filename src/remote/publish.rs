//! Publishing a local store to object storage ([`push`]) and bringing one back ([`pull`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::RemoteOptions;
use super::client::{Client, block_on};
use super::error::RemoteError;
use super::store::{INDEX, KEYS, MANIFEST, RemoteStore, SEGMENT, StoreManifest};
use crate::engine::index::IndexHeader;
use crate::engine::manifest::{MANIFEST_FILE, Manifest};
use crate::engine::segment;
use crate::engine::{Config, Engine};
use crate::error::{Error, Result};

/// What [`push`] uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushReport {
    /// The store's URL.
    pub url: String,
    /// The segment id of the published store.
    pub segment_id: u64,
    /// Bytes of the segment uploaded (its records; the preallocated space is left out).
    pub segment_bytes: u64,
    /// Bytes of the index uploaded.
    pub index_bytes: u64,
    /// Live keys.
    pub keys: u64,
    /// Whether the segment went up as a multipart upload.
    pub multipart: bool,
    /// Requests sent.
    pub requests: u64,
}

/// What [`pull`] brought back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PullReport {
    /// The directory written.
    pub dir: PathBuf,
    /// The segment id.
    pub segment_id: u64,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Live keys of the local copy.
    pub keys: u64,
}

/// Where the published `index.sqi` comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IndexSource {
    /// A version-2 `index.sqi` closed cleanly: uploaded byte for byte.
    Table { len: u64 },
    /// A version-3 manifest closed cleanly (its bytes, to notice a change during the push): a
    /// version-2 table is built from it at push time, so the published format stays version 2.
    Runs { manifest: Vec<u8> },
}

/// The segment id, end of records and index of a cleanly closed store, or `None` when its index
/// is not a clean close's (or is missing, or describes another segment).
fn closed_state(dir: &Path) -> Result<Option<(u64, u64, IndexSource)>> {
    let seg_path = dir.join(SEGMENT);
    let idx_path = dir.join(INDEX);
    let mut head = [0u8; segment::HEADER_LEN as usize];
    let seg = std::fs::File::open(&seg_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound {
                path: dir.to_owned(),
            }
        } else {
            Error::io(&seg_path, e)
        }
    })?;
    std::io::Read::read_exact(&mut &seg, &mut head).map_err(|e| Error::io(&seg_path, e))?;
    let (id, _) = segment::decode_header(&seg_path, &head)?;
    let seg_len = seg.metadata().map_err(|e| Error::io(&seg_path, e))?.len();
    let man_path = dir.join(MANIFEST_FILE);
    if let Ok(bytes) = std::fs::read(&man_path) {
        let Ok(m) = Manifest::decode(&bytes) else {
            return Ok(None);
        };
        let ok = m.segment_id == id && m.closed && m.covered_len <= seg_len;
        return Ok(ok.then_some((id, m.covered_len, IndexSource::Runs { manifest: bytes })));
    }
    let Ok(idx) = std::fs::File::open(&idx_path) else {
        return Ok(None);
    };
    let idx_len = idx.metadata().map_err(|e| Error::io(&idx_path, e))?.len();
    let mut ih = [0u8; 128];
    if std::io::Read::read_exact(&mut &idx, &mut ih).is_err() {
        return Ok(None);
    }
    let Ok(h) = IndexHeader::decode(&ih) else {
        return Ok(None);
    };
    let ok = h.segment_id == id && h.closed && !h.dirty && h.covered_len <= seg_len;
    Ok(ok.then_some((id, h.covered_len, IndexSource::Table { len: idx_len })))
}

/// Uploads the store in directory `dir` to `url`, so that readers see nothing of it or all of
/// it: the manifest of a previous publication is deleted first, then the segment goes up (as a
/// multipart upload when large; cut at the end of its records), then the index, the key list,
/// and the manifest `store.json` last. A reader holding the old publication open gets
/// [`RemoteError::Republished`] on its next read, never a mix.
///
/// A store whose index is not a clean close's (a writer has it open, or crashed) is opened
/// read-write and closed first, which recovers it; that fails with [`Error::Locked`] while a
/// writer has it open. No writer may open the store during the push: the segment is read again
/// at the end, and a change is an error.
///
/// # Errors
///
/// [`Error::NotFound`] when `dir` holds no store; the errors of [`crate::Engine::open`];
/// [`Error::Remote`] for a failed upload.
pub fn push(dir: impl AsRef<Path>, url: &str, opts: RemoteOptions) -> Result<PushReport> {
    let dir = dir.as_ref();
    let state = match closed_state(dir)? {
        Some(s) => s,
        None => {
            Config::new(dir).open()?.close()?;
            closed_state(dir)?.ok_or_else(|| {
                Error::corruption(
                    dir.join(INDEX),
                    0,
                    None,
                    "the index is not closed after a clean close",
                )
            })?
        }
    };
    let (segment_id, seg_len, source) = state.clone();
    let published_table = dir.join(format!("{INDEX}.push"));
    let (idx_path, index_len) = match &source {
        IndexSource::Table { len } => (dir.join(INDEX), *len),
        IndexSource::Runs { .. } => {
            let len = Engine::open_read_only(dir)?.write_table(&published_table)?;
            (published_table.clone(), len)
        }
    };
    let result = push_files(
        dir, url, opts, &state, segment_id, seg_len, idx_path, index_len,
    );
    // The built table is a copy for the upload only: never left beside the store's own index.
    if matches!(source, IndexSource::Runs { .. }) {
        let _ = std::fs::remove_file(&published_table);
    }
    result
}

// The state checked before and after, and what the upload is made of.
#[allow(clippy::too_many_arguments)]
fn push_files(
    dir: &Path,
    url: &str,
    opts: RemoteOptions,
    state: &(u64, u64, IndexSource),
    segment_id: u64,
    seg_len: u64,
    idx_path: PathBuf,
    index_len: u64,
) -> Result<PushReport> {
    let keys = Engine::open_read_only(dir)?.keys()?;
    let keys_json = Bytes::from(serde_json::to_vec(&keys).map_err(|e| RemoteError::Other {
        url: url.to_owned(),
        detail: e.to_string(),
    })?);
    let stats = Engine::open_read_only(dir)?.stats();
    let manifest = StoreManifest {
        format: "squirrel-store".into(),
        manifest_version: 1,
        segment_id: format!("{segment_id:016x}"),
        format_version: stats.format_version,
        segment_len: seg_len,
        index_len,
        keys_len: keys_json.len() as u64,
        keys_crc32: crc32fast::hash(&keys_json),
        live_records: stats.live_records,
        live_bytes: stats.live_bytes,
        dead_records: stats.dead_records,
        dead_bytes: stats.dead_bytes,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).map_err(|e| RemoteError::Other {
        url: url.to_owned(),
        detail: e.to_string(),
    })?;
    let client = Client::new(url, Arc::new(opts))?;
    let multipart = seg_len > client.options().multipart_threshold;
    let c = client.clone();
    let seg_path = dir.join(SEGMENT);
    block_on(async move {
        c.delete(MANIFEST).await?;
        c.put_file(SEGMENT, seg_path, seg_len).await?;
        c.put_file(INDEX, idx_path, index_len).await?;
        c.put(KEYS, keys_json, None).await?;
        // The publication is complete only once the objects are all there, whole.
        for (name, len) in [(SEGMENT, seg_len), (INDEX, index_len)] {
            match c.head(name).await? {
                Some((size, _)) if size == len => {}
                found => {
                    return Err(RemoteError::Truncated {
                        url: c.url_of(name),
                        expected: len,
                        found: found.map_or(0, |f| f.0),
                    }
                    .into());
                }
            }
        }
        Ok::<(), Error>(())
    })??;
    if closed_state(dir)?.as_ref() != Some(state) {
        return Err(RemoteError::Other {
            url: url.to_owned(),
            detail: format!(
                "{} changed while it was being pushed; push it again",
                dir.display()
            ),
        }
        .into());
    }
    let c = client.clone();
    block_on(async move { c.put(MANIFEST, Bytes::from(manifest_json), None).await })??;
    Ok(PushReport {
        url: client.url().to_owned(),
        segment_id,
        segment_bytes: seg_len,
        index_bytes: index_len,
        keys: keys.len() as u64,
        multipart,
        requests: client.requests(),
    })
}

/// Downloads the store published at `url` into directory `dir` (created; it must not hold a
/// store already). The files are written under temporary names, synced and renamed into
/// place, the index last, so an interrupted pull leaves no store that looks whole. The copy is
/// then opened and its key count checked against the publication's.
///
/// # Errors
///
/// Those of [`RemoteStore::open`]; [`Error::Io`] for the local files; [`Error::Corruption`] when
/// the copy does not open as the same store.
pub fn pull(url: &str, dir: impl AsRef<Path>, opts: RemoteOptions) -> Result<PullReport> {
    let dir = dir.as_ref().to_owned();
    let store = RemoteStore::open(url, opts)?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    if dir.join(SEGMENT).exists() {
        return Err(Error::io(
            dir.join(SEGMENT),
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a store is already there",
            ),
        ));
    }
    let stats = store.stats();
    let mut bytes = 0;
    for (name, len) in [(SEGMENT, stats.segment_len), (INDEX, stats.index_len)] {
        let tmp = dir.join(format!("{name}.pull"));
        bytes += store.download(name, len, &tmp)?;
        std::fs::rename(&tmp, dir.join(name)).map_err(|e| Error::io(&tmp, e))?;
    }
    // The renames made durable (a directory cannot be opened as a file on Windows).
    #[cfg(unix)]
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(&dir, e))?;
    let local = Engine::open_read_only(&dir)?;
    let keys = local.stats().live_records;
    if keys != stats.live_records {
        return Err(Error::corruption(
            dir.join(INDEX),
            0,
            None,
            format!(
                "the copy has {keys} keys, the publication {}",
                stats.live_records
            ),
        ));
    }
    Ok(PullReport {
        dir,
        segment_id: stats.segment_id,
        bytes,
        keys,
    })
}

impl RemoteStore {
    /// Downloads `len` bytes of object `name` into local file `path`, in ranges of 8 MiB
    /// several in flight, then syncs it. Returns the bytes written.
    pub(crate) fn download(&self, name: &'static str, len: u64, path: &Path) -> Result<u64> {
        use futures::StreamExt;
        use std::io::Write;
        const PART: u64 = 8 << 20;
        let mut file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let client = self.client().clone();
        let etag = self.etag_of(name);
        let ranges: Vec<_> = (0..len.div_ceil(PART))
            .map(|i| i * PART..((i + 1) * PART).min(len))
            .collect();
        let concurrency = client.options().concurrency;
        let path_buf = path.to_owned();
        block_on(async move {
            let mut parts = futures::stream::iter(ranges.into_iter().map(|r| {
                let c = client.clone();
                let etag = etag.clone();
                async move { c.get_range(name, r.clone(), etag).await.map(|b| (r, b)) }
            }))
            // In order (several in flight), appended one after the other.
            .buffered(concurrency);
            while let Some(part) = parts.next().await {
                let (_, bytes) = part?;
                file.write_all(&bytes)
                    .map_err(|e| Error::io(&path_buf, e))?;
            }
            file.sync_all().map_err(|e| Error::io(&path_buf, e))?;
            Ok::<u64, Error>(len)
        })?
    }
}
