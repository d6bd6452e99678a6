//! Stores on object storage: read a published store by URL (`s3://`, `gs://`, `az://`,
//! `http(s)://`, `file://`) with range requests, publish one with [`push`], bring one back with
//! [`pull`], and read many as one [`Dataset`].
//!
//! Behind the `remote` cargo feature (on with the `cli` feature and in the Python package).
//! Requests go through the [`object_store`] crate, TLS through rustls.
//!
//! ## What a published store is
//!
//! A store directory's two files, uploaded under a URL prefix, plus two small objects
//! (`format-spec/README.md`, "Published stores", describes them):
//!
//! | object | what |
//! |---|---|
//! | `segment.sqs` | the segment, cut at the end of its records |
//! | `index.sqi` | a version-2 index (a hash table; `push` builds it from a local store's runs): closed cleanly, covering the whole segment |
//! | `keys.json` | the live keys, sorted, as a JSON array of strings |
//! | `store.json` | the manifest, written last: segment id, lengths, counters |
//!
//! ## Requests
//!
//! Opening costs three GETs: the manifest, the segment's 32-byte header, and the index (whole in
//! one request when it is at most [`RemoteOptions::index_whole_max`], 32 MiB by default, which
//! is about 500,000 keys; larger indexes are read in 64 KiB pages on demand, cached). Then each
//! `get` is **one** range GET of the record (header, key and value), checked as a local read is:
//! header checksum, kind, length, key, and the CRC-32 of the whole record. Every range GET
//! carries `If-Match` with the segment's ETag as seen at open, so a store re-published behind
//! the same URL is detected ([`RemoteError::Republished`]) and never mixed with the old index;
//! the segment id in the segment header, the index header and the manifest must agree as well.
//! [`RemoteStore::get_many`] sorts the records by offset, merges neighbours into one range (gap
//! up to [`RemoteOptions::coalesce_gap`]) and keeps [`RemoteOptions::concurrency`] requests in
//! flight.
//!
//! ## Failures
//!
//! A dropped connection or a timeout is retried with exponential backoff (the client's retries
//! of failed requests, then [`RemoteOptions::retries`] retries of a failed transfer), then
//! reported as [`RemoteError::Unavailable`] or [`RemoteError::Timeout`]. Wrong credentials are
//! [`RemoteError::AccessDenied`], a missing store [`RemoteError::NotPublished`], a short object
//! [`RemoteError::Truncated`]; each names the URL. A server sending more than was asked for is
//! refused, not buffered. Nothing from a failed or partial read is cached.

mod cache;
mod client;
mod dataset;
mod error;
mod publish;
mod squirrel;
mod store;
mod walk;

use std::path::PathBuf;
use std::time::Duration;

pub use dataset::{Dataset, DatasetEntry, DatasetManifest, dataset_add, dataset_ls};
pub use error::RemoteError;
pub use publish::{PullReport, PushReport, pull, push};
pub use squirrel::{RemoteDriver, RemoteSquirrelStore};
pub use store::{RemoteStats, RemoteStore, RemoteValue, RemoteVerifyReport};

/// Whether `s` looks like a URL (`scheme://...`) rather than a local path: the test the CLI and
/// the Python package use to pick a remote store.
#[must_use]
pub fn is_url(s: &str) -> bool {
    client::is_url(s)
}

/// How to reach and read a remote store.
///
/// Credentials and endpoints come first from the provider's environment variables
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
/// `AWS_ALLOW_HTTP`; `GOOGLE_SERVICE_ACCOUNT`, `GOOGLE_APPLICATION_CREDENTIALS`;
/// `AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, ...), then from [`Self::option`],
/// which wins.
///
/// ```
/// use std::time::Duration;
/// use squirrel_store::remote::RemoteOptions;
///
/// let opts = RemoteOptions::new()
///     .option("aws_endpoint", "http://127.0.0.1:9000")
///     .option("aws_allow_http", "true")
///     .timeout(Duration::from_secs(10))
///     .retries(2);
/// assert_eq!(opts.get_retries(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct RemoteOptions {
    options: Vec<(String, String)>,
    timeout: Duration,
    connect_timeout: Duration,
    retries: u32,
    retry_timeout: Duration,
    backoff: Duration,
    concurrency: usize,
    coalesce_gap: u64,
    coalesce_max: u64,
    index_whole_max: u64,
    part_size: u64,
    multipart_threshold: u64,
    cache_dir: Option<PathBuf>,
    cache_max_bytes: u64,
    max_record_len: u64,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            options: Vec::new(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retries: 3,
            retry_timeout: Duration::from_secs(30),
            backoff: Duration::from_millis(100),
            concurrency: 8,
            coalesce_gap: 64 << 10,
            coalesce_max: 16 << 20,
            index_whole_max: 32 << 20,
            part_size: 16 << 20,
            multipart_threshold: 64 << 20,
            cache_dir: None,
            cache_max_bytes: 0,
            max_record_len: 4 << 30,
        }
    }
}

impl RemoteOptions {
    /// The defaults: 30 s request timeout, 5 s connect timeout, 3 retries from 100 ms backoff,
    /// 8 requests in flight, no cache.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An `object_store` configuration key for the URL's provider (for example `aws_endpoint`,
    /// `aws_access_key_id`, `aws_allow_http`, `google_service_account`,
    /// `azure_storage_account_key`, or a client key such as `allow_http`). An unknown key is an
    /// error when the store is opened.
    #[must_use]
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// Time allowed for one request, from sending it to the last byte of the answer.
    #[must_use]
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Time allowed to connect.
    #[must_use]
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Retries of a failed request or transfer (0 = try once).
    #[must_use]
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    /// The retries set by [`Self::retries`].
    #[must_use]
    pub fn get_retries(&self) -> u32 {
        self.retries
    }

    /// The first backoff between retries; it doubles on each retry.
    #[must_use]
    pub fn backoff(mut self, t: Duration) -> Self {
        self.backoff = t;
        self
    }

    /// Requests kept in flight by `get_many`, pulls and uploads (at least 1).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// `get_many` merges two records into one range request when at most this many bytes lie
    /// between them (and the merged range is at most 16 MiB).
    #[must_use]
    pub fn coalesce_gap(mut self, bytes: u64) -> Self {
        self.coalesce_gap = bytes;
        self
    }

    /// An index up to this size is fetched whole at open (one request); a larger one is read in
    /// 64 KiB pages as lookups need them.
    #[must_use]
    pub fn index_whole_max(mut self, bytes: u64) -> Self {
        self.index_whole_max = bytes;
        self
    }

    /// Uploads larger than `threshold` bytes go up as multipart uploads in parts of `part`
    /// bytes (at least 5 MiB, S3's smallest part).
    #[must_use]
    pub fn multipart(mut self, threshold: u64, part: u64) -> Self {
        self.multipart_threshold = threshold;
        self.part_size = part.max(5 << 20);
        self
    }

    /// The largest record read (4 GiB by default): an index naming a larger one is refused as
    /// corruption rather than buffered, so a hostile or damaged store cannot make a read
    /// allocate without bound.
    #[must_use]
    pub fn max_record_len(mut self, bytes: u64) -> Self {
        self.max_record_len = bytes;
        self
    }

    /// Keeps fetched records in `dir`, at most `max_bytes` in all, least recently used out.
    /// Safe to share between processes (DataLoader workers, say): entries are written to a
    /// temporary file and renamed into place, and every entry's checksum is checked again when
    /// it is read, so a damaged entry is dropped and fetched anew, never served.
    #[must_use]
    pub fn cache(mut self, dir: impl Into<PathBuf>, max_bytes: u64) -> Self {
        self.cache_dir = Some(dir.into());
        self.cache_max_bytes = max_bytes;
        self
    }
}
