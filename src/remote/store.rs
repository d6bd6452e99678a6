//! [`RemoteStore`]: a published store read by range requests.

use std::collections::HashMap;
use std::ops::{Deref, Range};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;

use super::RemoteOptions;
use super::cache::Cache;
use super::client::{Client, block_on};
use super::error::RemoteError;
use super::walk::{self, WalkEvent};
use crate::engine::index::{self, IndexHeader};
use crate::engine::record::{self, Header, Kind};
use crate::engine::segment;
use crate::error::{Error, Result};

pub(crate) const SEGMENT: &str = "segment.sqs";
pub(crate) const INDEX: &str = "index.sqi";
pub(crate) const KEYS: &str = "keys.json";
pub(crate) const MANIFEST: &str = "store.json";

/// Index layout (format-spec, "Index file"): slots of 32 bytes from offset 4096; a slot's hash
/// is 0 when empty, 1 when deleted; bytes 28..32 are the CRC-32 of bytes 0..28.
const SLOTS_START: u64 = 4096;
const SLOT_LEN: u64 = 32;
const EMPTY: u64 = 0;
const DELETED: u64 = 1;
/// Pages of the index fetched on demand when it is too large to fetch whole.
const PAGE: u64 = 64 << 10;
/// Pages kept in memory (16 MiB).
const PAGES_KEPT: usize = 256;
/// The largest manifest read (a `store.json` is a few hundred bytes).
const MANIFEST_MAX: u64 = 1 << 20;
/// The largest key list read (a million keys of 200 bytes).
const KEYS_MAX: u64 = 256 << 20;

/// A store's manifest, `store.json`, written last by [`super::push`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct StoreManifest {
    /// Always `"squirrel-store"`.
    pub format: String,
    /// Version of this manifest's layout: 1.
    pub manifest_version: u32,
    /// The segment id, 16 hex digits.
    pub segment_id: String,
    /// The segment format version.
    pub format_version: u32,
    /// Length of `segment.sqs`.
    pub segment_len: u64,
    /// Length of `index.sqi`.
    pub index_len: u64,
    /// Length of `keys.json`.
    pub keys_len: u64,
    /// CRC-32 of `keys.json`.
    pub keys_crc32: u32,
    /// Live keys.
    pub live_records: u64,
    /// Bytes of live records.
    pub live_bytes: u64,
    /// Dead records.
    pub dead_records: u64,
    /// Bytes of dead records.
    pub dead_bytes: u64,
}

impl StoreManifest {
    pub(crate) fn parse(url: &str, bytes: &[u8]) -> Result<StoreManifest> {
        let bad = |reason: String| -> Error {
            RemoteError::BadManifest {
                url: url.to_owned(),
                reason,
            }
            .into()
        };
        let m: StoreManifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if m.format != "squirrel-store" || m.manifest_version != 1 {
            return Err(bad(format!(
                "format {:?} version {}; this build reads \"squirrel-store\" version 1",
                m.format, m.manifest_version
            )));
        }
        Ok(m)
    }

    pub(crate) fn segment_id(&self, url: &str) -> Result<u64> {
        u64::from_str_radix(&self.segment_id, 16).map_err(|_| {
            RemoteError::BadManifest {
                url: url.to_owned(),
                reason: format!("segment_id {:?} is not 16 hex digits", self.segment_id),
            }
            .into()
        })
    }
}

/// A value read from a remote store: the record's value bytes and its codec byte.
#[derive(Clone)]
pub struct RemoteValue {
    bytes: Bytes,
    codec: u8,
}

impl RemoteValue {
    /// The codec byte the record was written with (0 for values written with
    /// [`crate::Engine::set`]).
    #[must_use]
    pub fn codec(&self) -> u8 {
        self.codec
    }

    /// The value as shared bytes (no copy).
    #[must_use]
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl Deref for RemoteValue {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl AsRef<[u8]> for RemoteValue {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl std::fmt::Debug for RemoteValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteValue")
            .field("len", &self.bytes.len())
            .field("codec", &self.codec)
            .finish()
    }
}

/// What a remote store's metadata says about it (no record is read).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteStats {
    /// The store's URL.
    pub url: String,
    /// The segment id (random, names the segment).
    pub segment_id: u64,
    /// The segment format version.
    pub format_version: u32,
    /// Length of the published segment: its header and every record.
    pub segment_len: u64,
    /// Length of the published index.
    pub index_len: u64,
    /// Whether the index was fetched whole at open (else it is read in pages).
    pub index_whole: bool,
    /// Keys with a live value.
    pub live_records: u64,
    /// Bytes of live records.
    pub live_bytes: u64,
    /// Overwritten and deleted records and tombstones.
    pub dead_records: u64,
    /// Bytes of dead records.
    pub dead_bytes: u64,
    /// Whether the store has a manifest (`store.json`, written by `push`).
    pub has_manifest: bool,
    /// Requests this handle has sent so far.
    pub requests: u64,
}

/// What [`RemoteStore::verify`] found: every record of the segment read (sequentially, in large
/// ranges) and checked, and every index slot checked against the records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RemoteVerifyReport {
    /// Records read, sync marks and tombstones included.
    pub records: u64,
    /// Of those, records whose checksums held.
    pub intact: u64,
    /// Keys the index maps to a value.
    pub live_keys: u64,
    /// Damage found in the segment: offset and what. The walk stops at a record whose header is
    /// damaged (its length cannot be trusted); pull the store and run `verify` on the copy to
    /// look past it.
    pub damaged: Vec<(u64, String)>,
    /// Disagreements between the index (or `keys.json`) and the segment.
    pub index_issues: Vec<String>,
    /// Bytes read.
    pub bytes_read: u64,
}

impl RemoteVerifyReport {
    /// Whether nothing was found.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.damaged.is_empty() && self.index_issues.is_empty()
    }
}

/// Where the index's slots come from.
enum Slots {
    /// The whole index file, fetched at open.
    Whole(Bytes),
    /// Pages fetched on demand, the most recent kept.
    Paged(Mutex<PageCache>),
}

#[derive(Default)]
struct PageCache {
    pages: HashMap<u64, Bytes>,
    order: std::collections::VecDeque<u64>,
}

/// A decoded slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    pub hash: u64,
    pub offset: u64,
    pub len: u64,
    pub crc: u32,
}

/// A merged range request of `get_many` and the records (request position, slot) in it.
type Group = (Range<u64>, Vec<(usize, Slot)>);

/// Decodes slot bytes: `None` for an empty slot, `Some(Err(()))` for a slot whose checksum fails.
fn decode_slot(b: &[u8]) -> Option<std::result::Result<Slot, ()>> {
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    let hash = word(0);
    if hash == EMPTY {
        return None;
    }
    let crcs = word(3);
    let slot = Slot {
        hash,
        offset: word(1),
        len: word(2),
        crc: crcs as u32,
    };
    if hash != DELETED && crc32fast::hash(&b[..28]) != (crcs >> 32) as u32 {
        return Some(Err(()));
    }
    Some(Ok(slot))
}

struct Inner {
    client: Client,
    segment_id: u64,
    format_version: u32,
    /// The segment's ETag at open: every range GET must match it.
    seg_etag: Option<String>,
    index_etag: Option<String>,
    /// End of the records: the published segment's length.
    seg_len: u64,
    header: IndexHeader,
    index_len: u64,
    slots: Slots,
    manifest: Option<StoreManifest>,
    cache: Option<Cache>,
}

/// A published store, read-only, by URL: see the [module docs](super).
///
/// Cheap to clone (clones share the connection pool and the index) and thread-safe.
///
/// ```no_run
/// use squirrel_store::remote::{RemoteOptions, RemoteStore};
///
/// let store = RemoteStore::open("s3://bucket/datasets/train/store-0", RemoteOptions::new())?;
/// for key in store.keys()? {
///     let value = store.get(&key)?.expect("listed");
///     println!("{key}: {} bytes", value.len());
/// }
/// # Ok::<(), squirrel_store::Error>(())
/// ```
#[derive(Clone)]
pub struct RemoteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore")
            .field("url", &self.inner.client.url())
            .field(
                "segment_id",
                &format_args!("{:016x}", self.inner.segment_id),
            )
            .finish()
    }
}

fn corruption(url: String, offset: u64, key: Option<&str>, what: &str) -> Error {
    Error::corruption(url, offset, key, what)
}

/// Times an open is tried again when it reads parts of two publications (a push under way).
const OPEN_TRIES: u32 = 3;

impl RemoteStore {
    /// Opens the store published at `url`.
    ///
    /// # Errors
    ///
    /// [`Error::Remote`]: [`RemoteError::InvalidUrl`], [`RemoteError::NotPublished`] (no segment,
    /// or an index that is not a clean close's), [`RemoteError::Truncated`],
    /// [`RemoteError::Republished`] (the objects kept changing while being read: a push under
    /// way), [`RemoteError::AccessDenied`], [`RemoteError::Unavailable`],
    /// [`RemoteError::Timeout`]; [`Error::Corruption`] or [`Error::BadMagic`] for bad headers.
    pub fn open(url: &str, opts: RemoteOptions) -> Result<RemoteStore> {
        let client = Client::new(url, Arc::new(opts))?;
        Self::open_client(client)
    }

    pub(crate) fn open_client(client: Client) -> Result<RemoteStore> {
        let mut tries = 0;
        loop {
            tries += 1;
            let c = client.clone();
            match block_on(Self::open_async(c))? {
                Err(Error::Remote(e))
                    if matches!(*e, RemoteError::Republished { .. }) && tries < OPEN_TRIES =>
                {
                    std::thread::sleep(client.options().backoff.saturating_mul(tries));
                }
                other => return other,
            }
        }
    }

    async fn open_async(client: Client) -> Result<RemoteStore> {
        let opts = client.options().clone();
        let manifest = match client.get_prefix(MANIFEST, MANIFEST_MAX).await? {
            Some((bytes, _, _)) => Some(StoreManifest::parse(&client.url_of(MANIFEST), &bytes)?),
            None => None,
        };
        let seg_url = client.url_of(SEGMENT);
        let Some((head, seg_size, seg_etag)) =
            client.get_prefix(SEGMENT, segment::HEADER_LEN).await?
        else {
            return Err(RemoteError::NotPublished {
                url: client.url().to_owned(),
                reason: format!("no {SEGMENT}"),
            }
            .into());
        };
        let (segment_id, format_version) =
            segment::decode_header(std::path::Path::new(&seg_url), &head)?;
        let idx_url = client.url_of(INDEX);
        let Some((first, index_size, index_etag)) = client
            .get_prefix(INDEX, opts.index_whole_max.max(128))
            .await?
        else {
            return Err(RemoteError::NotPublished {
                url: client.url().to_owned(),
                reason: format!(
                    "no {INDEX} (the index is needed to read a store remotely; a local store \
                     with index format 3 has none: `push` publishes one)"
                ),
            }
            .into());
        };
        let header = IndexHeader::decode(&first)
            .map_err(|reason| corruption(idx_url.clone(), 0, None, reason))?;
        let republished = |what: String| -> Error {
            RemoteError::Republished {
                url: client.url().to_owned(),
                detail: what,
            }
            .into()
        };
        if header.segment_id != segment_id {
            return Err(republished(format!(
                "{INDEX} describes segment {:016x}, {SEGMENT} is {segment_id:016x}",
                header.segment_id
            )));
        }
        if header.dirty || !header.closed {
            return Err(RemoteError::NotPublished {
                url: client.url().to_owned(),
                reason: "the index is not a clean close's: close the store (or use `squirrel-store push`) before reading it remotely".into(),
            }
            .into());
        }
        let index_len = header
            .slot_count
            .checked_mul(SLOT_LEN)
            .and_then(|s| s.checked_add(SLOTS_START))
            .filter(|_| header.slot_count.is_power_of_two())
            .ok_or_else(|| corruption(idx_url.clone(), 0, None, "impossible slot count"))?;
        if index_size < index_len {
            return Err(RemoteError::Truncated {
                url: idx_url,
                expected: index_len,
                found: index_size,
            }
            .into());
        }
        let seg_len = header.covered_len;
        if seg_size < seg_len {
            return Err(RemoteError::Truncated {
                url: seg_url,
                expected: seg_len,
                found: seg_size,
            }
            .into());
        }
        if seg_len < segment::HEADER_LEN {
            return Err(corruption(
                idx_url,
                0,
                None,
                "covered length shorter than a segment header",
            ));
        }
        if let Some(m) = &manifest {
            let murl = client.url_of(MANIFEST);
            let id = m.segment_id(&murl)?;
            if id != segment_id {
                return Err(republished(format!(
                    "{MANIFEST} names segment {id:016x}, {SEGMENT} is {segment_id:016x}"
                )));
            }
            if m.segment_len != seg_len || m.index_len != index_len {
                return Err(RemoteError::BadManifest {
                    url: murl,
                    reason: format!(
                        "lengths {} / {} disagree with the index ({seg_len} / {index_len})",
                        m.segment_len, m.index_len
                    ),
                }
                .into());
            }
        }
        let slots = if first.len() as u64 >= index_len {
            Slots::Whole(first.slice(..usize::try_from(index_len).unwrap_or(usize::MAX)))
        } else {
            Slots::Paged(Mutex::new(PageCache::default()))
        };
        let cache = match &opts.cache_dir {
            Some(dir) => Some(Cache::open(dir.clone(), opts.cache_max_bytes)?),
            None => None,
        };
        Ok(RemoteStore {
            inner: Arc::new(Inner {
                client,
                segment_id,
                format_version,
                seg_etag,
                index_etag,
                seg_len,
                header,
                index_len,
                slots,
                manifest,
                cache,
            }),
        })
    }

    pub(crate) fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The ETag seen at open of object `name` (the segment's or the index's).
    pub(crate) fn etag_of(&self, name: &str) -> Option<String> {
        match name {
            SEGMENT => self.inner.seg_etag.clone(),
            INDEX => self.inner.index_etag.clone(),
            _ => None,
        }
    }

    /// The URL the store was opened at.
    #[must_use]
    pub fn url(&self) -> &str {
        self.inner.client.url()
    }

    /// The segment id (names the publication: a re-published store has a new one).
    #[must_use]
    pub fn segment_id(&self) -> u64 {
        self.inner.segment_id
    }

    /// Requests sent so far by this handle (and its clones), every retry counted.
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.inner.client.requests()
    }

    /// What the store's metadata says, without a request.
    #[must_use]
    pub fn stats(&self) -> RemoteStats {
        let i = &self.inner;
        RemoteStats {
            url: i.client.url().to_owned(),
            segment_id: i.segment_id,
            format_version: i.format_version,
            segment_len: i.seg_len,
            index_len: i.index_len,
            index_whole: matches!(i.slots, Slots::Whole(_)),
            live_records: i.header.counters.live_records,
            live_bytes: i.header.counters.live_bytes,
            dead_records: i.header.counters.dead_records,
            dead_bytes: i.header.counters.dead_bytes,
            has_manifest: i.manifest.is_some(),
            requests: i.client.requests(),
        }
    }

    /// The value under `key`, or `None`: one range request (none on a cache hit), checked as a
    /// local read is.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`]; [`Error::Corruption`] naming the URL, key and offset when the
    /// record fails a check; [`Error::Remote`] for a failed request (see [`RemoteStore::open`]),
    /// [`RemoteError::Republished`] if the segment changed since open.
    pub fn get(&self, key: &str) -> Result<Option<RemoteValue>> {
        check_key(key)?;
        let this = self.clone();
        let key = key.to_owned();
        block_on(async move { this.get_async(&key).await })?
    }

    pub(crate) async fn get_async(&self, key: &str) -> Result<Option<RemoteValue>> {
        let hash = index::hash_key(key);
        let mut skip = 0;
        loop {
            let Some(slot) = self.find_slot(hash, skip).await? else {
                return Ok(None);
            };
            match self.read_record(key, slot).await? {
                Some(v) => return Ok(Some(v)),
                // Another (intact) key under the same 64-bit hash: probe on.
                None => skip += 1,
            }
        }
    }

    /// Values for many keys, in the order given: records sorted by offset, neighbours merged
    /// into one range request, [`RemoteOptions::concurrency`] requests in flight.
    ///
    /// # Errors
    ///
    /// As [`RemoteStore::get`], for the first failure met.
    pub fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<RemoteValue>>> {
        for k in keys {
            check_key(k.as_ref())?;
        }
        let this = self.clone();
        let keys: Vec<String> = keys.iter().map(|k| k.as_ref().to_owned()).collect();
        block_on(async move { this.get_many_async(keys).await })?
    }

    pub(crate) async fn get_many_async(
        &self,
        keys: Vec<String>,
    ) -> Result<Vec<Option<RemoteValue>>> {
        let mut out: Vec<Option<RemoteValue>> = vec![None; keys.len()];
        // The first candidate slot of each key; cache hits are served at once.
        let mut wanted: Vec<(usize, Slot)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let Some(slot) = self.find_slot(index::hash_key(key), 0).await? else {
                continue;
            };
            if let Some(v) = self.cached(key, slot) {
                out[i] = Some(v);
                continue;
            }
            wanted.push((i, slot));
        }
        wanted.sort_by_key(|(_, s)| s.offset);
        let opts = self.inner.client.options();
        let mut groups: Vec<Group> = Vec::new();
        for (i, slot) in wanted {
            let end = slot.offset.saturating_add(slot.len);
            if let Some((range, members)) = groups.last_mut() {
                let merged_len = end.max(range.end) - range.start;
                if slot.offset >= range.start
                    && slot.offset <= range.end.saturating_add(opts.coalesce_gap)
                    && merged_len <= opts.coalesce_max
                {
                    range.end = range.end.max(end);
                    members.push((i, slot));
                    continue;
                }
            }
            groups.push((slot.offset..end, vec![(i, slot)]));
        }
        let fetched = futures::stream::iter(groups.into_iter().map(|(range, members)| {
            let this = self.clone();
            async move {
                let bytes = this.fetch_segment(range.clone()).await?;
                Ok::<_, Error>((range, members, bytes))
            }
        }))
        .buffer_unordered(opts.concurrency)
        .collect::<Vec<_>>()
        .await;
        let mut collided = Vec::new();
        for result in fetched {
            let (range, members, bytes) = result?;
            for (i, slot) in members {
                let start = usize::try_from(slot.offset - range.start).unwrap_or(usize::MAX);
                let len = usize::try_from(slot.len).unwrap_or(usize::MAX);
                let rec = bytes.slice(start..start + len);
                match self.check_record(&keys[i], slot, rec)? {
                    Some(v) => out[i] = Some(v),
                    None => collided.push(i),
                }
            }
        }
        for i in collided {
            out[i] = self.get_async(&keys[i]).await?;
        }
        Ok(out)
    }

    /// Whether `key` has a value: its record's header and key are fetched and checked (one
    /// small range request), not its value.
    ///
    /// # Errors
    ///
    /// As [`RemoteStore::get`].
    pub fn contains(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        let this = self.clone();
        let key = key.to_owned();
        block_on(async move {
            let hash = index::hash_key(&key);
            let mut skip = 0;
            loop {
                let Some(slot) = this.find_slot(hash, skip).await? else {
                    return Ok(false);
                };
                let want = slot.len.min(record::HEADER_LEN as u64 + key.len() as u64);
                let head = this.fetch_segment(slot.offset..slot.offset + want).await?;
                let url = this.inner.client.url_of(SEGMENT);
                let h = Header::decode(&head).map_err(|_| {
                    corruption(
                        url.clone(),
                        slot.offset,
                        Some(&key),
                        "record header checksum mismatch",
                    )
                })?;
                if h.kind != Kind::Put || h.record_len() != Some(slot.len) || h.crc != slot.crc {
                    return Err(corruption(
                        url,
                        slot.offset,
                        Some(&key),
                        "record does not match its index entry",
                    ));
                }
                if head.get(record::HEADER_LEN..) == Some(key.as_bytes()) {
                    return Ok(true);
                }
                skip += 1;
            }
        })?
    }

    /// Every key with a value, sorted: from `keys.json` when the store has a manifest (one
    /// request), else by reading the whole segment.
    ///
    /// # Errors
    ///
    /// As [`RemoteStore::get`]; [`RemoteError::BadManifest`] for a `keys.json` that does not
    /// match its manifest.
    pub fn keys(&self) -> Result<Vec<String>> {
        let this = self.clone();
        block_on(async move { this.keys_async().await })?
    }

    pub(crate) async fn keys_async(&self) -> Result<Vec<String>> {
        let i = &self.inner;
        if let Some(m) = &i.manifest {
            let url = i.client.url_of(KEYS);
            if m.keys_len > KEYS_MAX {
                return Err(RemoteError::BadManifest {
                    url,
                    reason: format!("keys.json of {} bytes is larger than allowed", m.keys_len),
                }
                .into());
            }
            let bytes = i.client.get_range(KEYS, 0..m.keys_len, None).await?;
            if crc32fast::hash(&bytes) != m.keys_crc32 {
                return Err(RemoteError::BadManifest {
                    url,
                    reason:
                        "keys.json does not match the checksum in store.json (changed since open?)"
                            .into(),
                }
                .into());
            }
            let mut keys: Vec<String> =
                serde_json::from_slice(&bytes).map_err(|e| RemoteError::BadManifest {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            keys.sort_unstable();
            keys.dedup();
            if keys.len() as u64 != i.header.counters.live_records {
                return Err(RemoteError::BadManifest {
                    url,
                    reason: format!(
                        "{} keys listed, the index has {} live",
                        keys.len(),
                        i.header.counters.live_records
                    ),
                }
                .into());
            }
            return Ok(keys);
        }
        let report = self.walk().await?;
        report.1.ok_or_else(|| {
            corruption(
                i.client.url_of(SEGMENT),
                0,
                None,
                "the segment could not be read whole",
            )
        })
    }

    /// Reads every record (sequentially, in ranges of 8 MiB) and checks it, then every index
    /// slot against the records, and `keys.json` against the index.
    ///
    /// # Errors
    ///
    /// [`Error::Remote`] for a failed request; damage is reported, not an error.
    pub fn verify(&self) -> Result<RemoteVerifyReport> {
        let this = self.clone();
        block_on(async move {
            let (mut report, keys) = this.walk().await?;
            if this.inner.manifest.is_some() && report.damaged.is_empty() {
                match this.keys_async().await {
                    Ok(listed) => {
                        if Some(&listed) != keys.as_ref() {
                            report
                                .index_issues
                                .push("keys.json does not list exactly the live keys".into());
                        }
                    }
                    Err(Error::Remote(e)) if !matches!(*e, RemoteError::BadManifest { .. }) => {
                        return Err(Error::Remote(e));
                    }
                    Err(e) => report.index_issues.push(e.to_string()),
                }
            }
            Ok(report)
        })?
    }

    /// The walk behind `verify` and `keys` without a manifest: returns the report and, when the
    /// segment and index agree, the live keys.
    async fn walk(&self) -> Result<(RemoteVerifyReport, Option<Vec<String>>)> {
        let i = &self.inner;
        let mut report = RemoteVerifyReport::default();
        // Every live slot, by offset.
        let mut by_offset: HashMap<u64, Slot> = HashMap::new();
        for n in 0..i.header.slot_count {
            match self.slot(n).await? {
                None => {}
                Some(Err(())) => report
                    .index_issues
                    .push(format!("slot {n} fails its checksum")),
                Some(Ok(slot)) if slot.hash == DELETED => {}
                Some(Ok(slot)) if by_offset.insert(slot.offset, slot).is_some() => {
                    report
                        .index_issues
                        .push(format!("two slots point at offset {}", slot.offset));
                }
                Some(Ok(_)) => {}
            }
        }
        // The newest record for each key, from the walk.
        let mut newest: HashMap<String, Option<u64>> = HashMap::new();
        let mut seen_slots = 0u64;
        let client = i.client.clone();
        let etag = i.seg_etag.clone();
        let mut issues = Vec::new();
        let walked = walk::walk(
            &client,
            SEGMENT,
            etag,
            segment::HEADER_LEN,
            i.seg_len,
            |event| match event {
                WalkEvent::Record {
                    offset,
                    header,
                    key,
                    intact,
                } => {
                    report.records += 1;
                    if !intact {
                        report
                            .damaged
                            .push((offset, "record checksum mismatch".into()));
                        return;
                    }
                    report.intact += 1;
                    let key_str = std::str::from_utf8(key).ok();
                    match header.kind {
                        Kind::Put | Kind::Delete => {
                            let Some(k) = key_str else {
                                report
                                    .damaged
                                    .push((offset, "record key is not UTF-8".into()));
                                return;
                            };
                            let at = (header.kind == Kind::Put).then_some(offset);
                            newest.insert(k.to_owned(), at);
                        }
                        Kind::Mark => {}
                    }
                    if let Some(slot) = by_offset.get(&offset) {
                        seen_slots += 1;
                        let ok = header.kind == Kind::Put
                            && header.record_len() == Some(slot.len)
                            && header.crc == slot.crc
                            && key_str.is_some_and(|k| index::hash_key(k) == slot.hash);
                        if !ok {
                            issues.push(format!(
                                "slot for offset {offset} does not match its record"
                            ));
                        }
                    }
                }
                WalkEvent::Damaged { offset, what } => {
                    report.damaged.push((offset, what.to_owned()));
                }
            },
        )
        .await?;
        report.bytes_read = walked;
        report.index_issues.extend(issues);
        if seen_slots != by_offset.len() as u64 && report.damaged.is_empty() {
            report.index_issues.push(format!(
                "{} slots point where no record starts",
                by_offset.len() as u64 - seen_slots
            ));
        }
        let mut live: Vec<String> = Vec::new();
        for (k, at) in &newest {
            if let Some(offset) = at {
                live.push(k.clone());
                if report.damaged.is_empty() && !by_offset.contains_key(offset) {
                    report.index_issues.push(format!(
                        "key {k:?}: its newest record (offset {offset}) is not indexed"
                    ));
                }
            }
        }
        if report.damaged.is_empty() && live.len() != by_offset.len() {
            report.index_issues.push(format!(
                "{} live keys in the segment, {} in the index",
                live.len(),
                by_offset.len()
            ));
        }
        report.live_keys = by_offset.len() as u64;
        live.sort_unstable();
        let keys = (report.ok()).then_some(live);
        Ok((report, keys))
    }

    /// The `skip`-th slot (in probe order) whose hash is `hash`, or `None` when the probe ends.
    async fn find_slot(&self, hash: u64, mut skip: usize) -> Result<Option<Slot>> {
        let slot_count = self.inner.header.slot_count;
        let mask = slot_count - 1;
        let mut i = hash & mask;
        for _ in 0..slot_count {
            match self.slot(i).await? {
                None => return Ok(None),
                Some(Err(())) => {
                    return Err(corruption(
                        self.inner.client.url_of(INDEX),
                        SLOTS_START + i * SLOT_LEN,
                        None,
                        "index slot checksum mismatch",
                    ));
                }
                Some(Ok(slot)) if slot.hash == hash => {
                    if skip == 0 {
                        if slot.offset < segment::HEADER_LEN
                            || slot
                                .offset
                                .checked_add(slot.len)
                                .is_none_or(|e| e > self.inner.seg_len)
                        {
                            return Err(corruption(
                                self.inner.client.url_of(INDEX),
                                SLOTS_START + i * SLOT_LEN,
                                None,
                                "index slot points outside the segment",
                            ));
                        }
                        return Ok(Some(slot));
                    }
                    skip -= 1;
                }
                Some(Ok(_)) => {}
            }
            i = (i + 1) & mask;
        }
        Ok(None)
    }

    async fn slot(&self, i: u64) -> Result<Option<std::result::Result<Slot, ()>>> {
        let at = SLOTS_START + i * SLOT_LEN;
        match &self.inner.slots {
            Slots::Whole(bytes) => {
                let at = usize::try_from(at).unwrap_or(usize::MAX);
                Ok(decode_slot(&bytes[at..at + SLOT_LEN as usize]))
            }
            Slots::Paged(_) => {
                let page = self.page_of(i).await?;
                Ok(decode_slot(page_slot(
                    &page,
                    usize::try_from(at % PAGE).unwrap_or(0),
                )))
            }
        }
    }

    /// The index page holding slot `i`.
    async fn page_of(&self, i: u64) -> Result<Bytes> {
        let at = SLOTS_START + i * SLOT_LEN;
        let page_no = at / PAGE;
        match &self.inner.slots {
            Slots::Whole(bytes) => {
                let start = usize::try_from(page_no * PAGE).unwrap_or(usize::MAX);
                let end = (start + PAGE as usize).min(bytes.len());
                Ok(bytes.slice(start..end))
            }
            Slots::Paged(cache) => {
                if let Some(p) = cache.lock().pages.get(&page_no) {
                    return Ok(p.clone());
                }
                let start = page_no * PAGE;
                let end = (start + PAGE).min(self.inner.index_len);
                let bytes = self
                    .inner
                    .client
                    .get_range(INDEX, start..end, self.inner.index_etag.clone())
                    .await?;
                let mut c = cache.lock();
                if c.pages.insert(page_no, bytes.clone()).is_none() {
                    c.order.push_back(page_no);
                    while c.order.len() > PAGES_KEPT {
                        if let Some(old) = c.order.pop_front() {
                            c.pages.remove(&old);
                        }
                    }
                }
                Ok(bytes)
            }
        }
    }

    /// Bytes `range` of the segment, which must still be the one opened.
    async fn fetch_segment(&self, range: Range<u64>) -> Result<Bytes> {
        self.inner
            .client
            .get_range(SEGMENT, range, self.inner.seg_etag.clone())
            .await
    }

    fn cache_name(&self, slot: Slot) -> String {
        format!(
            "{:016x}-{:x}-{:x}",
            self.inner.segment_id, slot.offset, slot.len
        )
    }

    /// The record from the cache, if there and intact.
    fn cached(&self, key: &str, slot: Slot) -> Option<RemoteValue> {
        let cache = self.inner.cache.as_ref()?;
        let name = self.cache_name(slot);
        let bytes = cache.get(&name)?;
        match self.check_record(key, slot, bytes) {
            Ok(Some(v)) => Some(v),
            _ => {
                // Damaged or not this key's: dropped, and fetched anew by the caller.
                cache.remove(&name);
                None
            }
        }
    }

    /// Fetches and checks the record `slot` points at; `None` when it is an intact record of
    /// another key (a hash collision).
    async fn read_record(&self, key: &str, slot: Slot) -> Result<Option<RemoteValue>> {
        if let Some(v) = self.cached(key, slot) {
            return Ok(Some(v));
        }
        let rec = self
            .fetch_segment(slot.offset..slot.offset + slot.len)
            .await?;
        self.check_record(key, slot, rec)
    }

    /// The checks of a local read, on fetched bytes; caches the record when they pass.
    fn check_record(&self, key: &str, slot: Slot, rec: Bytes) -> Result<Option<RemoteValue>> {
        let url = || self.inner.client.url_of(SEGMENT);
        let bad = |what: &str| corruption(url(), slot.offset, Some(key), what);
        let h = Header::decode(&rec).map_err(|_| bad("record header checksum mismatch"))?;
        if h.kind != Kind::Put || h.record_len() != Some(slot.len) || h.crc != slot.crc {
            return Err(bad("record does not match its index entry"));
        }
        let key_end = record::HEADER_LEN + usize::from(h.key_len);
        let intact = record::crc_ok(&rec, h.crc);
        if rec.get(record::HEADER_LEN..key_end) != Some(key.as_bytes()) {
            if intact {
                return Ok(None);
            }
            return Err(bad("record checksum mismatch"));
        }
        if !intact {
            return Err(bad("record checksum mismatch"));
        }
        if let Some(cache) = &self.inner.cache {
            cache.put(&self.cache_name(slot), &rec);
        }
        Ok(Some(RemoteValue {
            bytes: rec.slice(key_end..),
            codec: h.codec,
        }))
    }
}

/// The 32 bytes at `at` of `page`, or zeros (an empty slot) past its end.
fn page_slot(page: &Bytes, at: usize) -> &[u8] {
    const ZERO: [u8; SLOT_LEN as usize] = [0; SLOT_LEN as usize];
    page.get(at..at + SLOT_LEN as usize).unwrap_or(&ZERO)
}

/// The engine's key rules: 1 to 1024 bytes.
fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            key: key.into(),
            reason: "keys must not be empty",
        });
    }
    if key.len() > record::MAX_KEY_LEN {
        return Err(Error::InvalidKey {
            key: key.chars().take(64).collect(),
            reason: "keys must be at most 1024 bytes of UTF-8",
        });
    }
    Ok(())
}
