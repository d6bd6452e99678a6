//! The object-storage client under a remote store: one `object_store` handle for a URL prefix,
//! blocking calls on a shared tokio runtime, retries, byte caps and typed errors.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, GetOptions, GetRange, ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutMode,
    PutOptions, PutPayload, RetryConfig, UpdateVersion,
};
use url::Url;

use super::RemoteOptions;
use super::error::RemoteError;
use crate::error::Result;

/// The runtime every remote handle in the process shares: two worker threads, which is plenty
/// for I/O-bound request futures. A forked child gets a runtime of its own (the parent's
/// threads do not exist in it; the parent's runtime is left alone, never dropped there), so a
/// handle opened in the child works; a handle inherited from the parent must be opened again
/// in the child, as its connections are the parent's.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: parking_lot::Mutex<Option<(u32, &'static tokio::runtime::Runtime)>> =
        parking_lot::Mutex::new(None);
    let pid = std::process::id();
    let mut current = RT.lock();
    if let Some((owner, rt)) = *current
        && owner == pid
    {
        return Ok(rt);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("squirrel-remote")
        .enable_all()
        .build()
        .map_err(|e| RemoteError::Other {
            url: String::new(),
            detail: format!("cannot start the I/O runtime: {e}"),
        })?;
    // Lives as long as the process: handles may be used until exit.
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(rt));
    *current = Some((pid, rt));
    Ok(rt)
}

/// Runs `fut` to completion on the shared runtime and waits for it on this thread. Works from
/// any thread, including one inside another tokio runtime (the future runs on ours; this thread
/// only waits on a channel), so it never panics with "cannot start a runtime from within a
/// runtime".
pub(crate) fn block_on<T: Send + 'static>(
    fut: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    let rt = runtime()?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        // The receiver waits until this is sent; a send error means it is gone, nothing to do.
        let _ = tx.send(fut.await);
    });
    rx.recv().map_err(|_| {
        RemoteError::Other {
            url: String::new(),
            detail: "the I/O task ended without an answer".into(),
        }
        .into()
    })
}

/// An object store at a URL prefix: `s3://bucket/prefix` → the bucket's client and `prefix`.
#[derive(Clone)]
pub(crate) struct Client {
    store: Arc<dyn ObjectStore>,
    /// The prefix inside the store, e.g. `datasets/train/store-0`.
    prefix: ObjPath,
    /// The URL as given, without a trailing slash, for messages.
    url: String,
    opts: Arc<RemoteOptions>,
    requests: Arc<AtomicU64>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("url", &self.url).finish()
    }
}

/// The error for a URL that cannot be used.
fn invalid(url: &str, reason: impl Into<String>) -> crate::Error {
    RemoteError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.into(),
    }
    .into()
}

/// Whether `s` is a URL this module opens (as opposed to a local path).
pub(crate) fn is_url(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
}

/// Applies `options` (object_store configuration keys such as `aws_endpoint`, `allow_http`,
/// `timeout`) to a builder; an unknown key is an error naming it, never silently ignored.
macro_rules! configure {
    ($builder:expr, $key:ty, $url:expr, $options:expr) => {{
        let mut b = $builder;
        for (k, v) in $options {
            let key: $key = k
                .to_ascii_lowercase()
                .parse()
                .map_err(|_| invalid($url, format!("unknown option {k:?} for this store")))?;
            b = b.with_config(key, v.clone());
        }
        b
    }};
}

impl Client {
    /// Parses `url` and builds the client for its scheme. Credentials and endpoints come from
    /// the provider's environment variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`), then from
    /// `opts`' explicit options, which win.
    pub(crate) fn new(url: &str, opts: Arc<RemoteOptions>) -> Result<Client> {
        let trimmed = url.trim_end_matches('/');
        let parsed = Url::parse(trimmed).map_err(|e| invalid(url, e.to_string()))?;
        let (scheme, path) =
            ObjectStoreScheme::parse(&parsed).map_err(|e| invalid(url, e.to_string()))?;
        let retry = RetryConfig {
            max_retries: opts.retries as usize,
            retry_timeout: opts.retry_timeout,
            backoff: BackoffConfig {
                init_backoff: opts.backoff,
                max_backoff: opts.backoff.saturating_mul(16),
                base: 2.0,
            },
        };
        let mut options: Vec<(String, String)> = vec![
            ("timeout".into(), format!("{}ms", opts.timeout.as_millis())),
            (
                "connect_timeout".into(),
                format!("{}ms", opts.connect_timeout.as_millis()),
            ),
        ];
        options.extend(opts.options.iter().cloned());
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => {
                if !opts.options.is_empty() {
                    return Err(invalid(url, "file:// URLs take no options"));
                }
                Arc::new(object_store::local::LocalFileSystem::new())
            }
            ObjectStoreScheme::Memory => Arc::new(object_store::memory::InMemory::new()),
            ObjectStoreScheme::AmazonS3 => {
                use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
                let b = AmazonS3Builder::from_env()
                    .with_url(trimmed)
                    .with_retry(retry);
                let b = configure!(b, AmazonS3ConfigKey, url, &options);
                Arc::new(b.build().map_err(|e| invalid(url, e.to_string()))?)
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
                let b = GoogleCloudStorageBuilder::from_env()
                    .with_url(trimmed)
                    .with_retry(retry);
                let b = configure!(b, GoogleConfigKey, url, &options);
                Arc::new(b.build().map_err(|e| invalid(url, e.to_string()))?)
            }
            ObjectStoreScheme::MicrosoftAzure => {
                use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
                let b = MicrosoftAzureBuilder::from_env()
                    .with_url(trimmed)
                    .with_retry(retry);
                let b = configure!(b, AzureConfigKey, url, &options);
                Arc::new(b.build().map_err(|e| invalid(url, e.to_string()))?)
            }
            ObjectStoreScheme::Http => {
                use object_store::ClientConfigKey;
                use object_store::http::HttpBuilder;
                let origin = &parsed[..url::Position::BeforePath];
                let mut b = HttpBuilder::new().with_url(origin).with_retry(retry);
                for (k, v) in &options {
                    let key: ClientConfigKey = k
                        .to_ascii_lowercase()
                        .parse()
                        .map_err(|_| invalid(url, format!("unknown option {k:?} for http(s)")))?;
                    b = b.with_config(key, v.clone());
                }
                Arc::new(b.build().map_err(|e| invalid(url, e.to_string()))?)
            }
            other => return Err(invalid(url, format!("unsupported scheme {other:?}"))),
        };
        Ok(Client {
            store,
            prefix: path,
            url: trimmed.to_owned(),
            opts,
            requests: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The same store at `prefix/name/` (a store of a dataset, say), sharing the connection
    /// pool and the request counter.
    pub(crate) fn child(&self, name: &str) -> Client {
        let mut prefix = self.prefix.clone();
        for part in name.split('/').filter(|p| !p.is_empty()) {
            prefix = prefix.clone().join(part);
        }
        Client {
            store: self.store.clone(),
            prefix,
            url: format!("{}/{}", self.url, name.trim_matches('/')),
            opts: self.opts.clone(),
            requests: self.requests.clone(),
        }
    }

    /// The URL this client was made for.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The options it was made with.
    pub(crate) fn options(&self) -> &RemoteOptions {
        &self.opts
    }

    /// Requests sent so far (every attempt counts), by this client and its children.
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The URL of object `name` under the prefix.
    pub(crate) fn url_of(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    fn path(&self, name: &str) -> ObjPath {
        self.prefix.clone().join(name)
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Bytes `range` of object `name`, which must still have ETag `etag` when one is given
    /// (else [`RemoteError::Republished`]). Exactly `range.end - range.start` bytes or an
    /// error: a short answer is [`RemoteError::Truncated`], a long one [`RemoteError::Oversized`]
    /// (and is not buffered). A dropped connection or timeout is retried `retries` times with
    /// backoff, on top of the client's own retries of failed requests.
    pub(crate) async fn get_range(
        &self,
        name: &str,
        range: Range<u64>,
        etag: Option<String>,
    ) -> Result<Bytes> {
        let want = range.end.saturating_sub(range.start);
        if want == 0 {
            return Ok(Bytes::new());
        }
        let opts = GetOptions {
            if_match: etag,
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let (bytes, _) = self.get_capped(name, opts, want, true).await?;
        if (bytes.len() as u64) < want {
            return Err(RemoteError::Truncated {
                url: self.url_of(name),
                expected: range.end,
                found: range.start + bytes.len() as u64,
            }
            .into());
        }
        Ok(bytes)
    }

    /// The first `max` bytes of object `name` (all of it when shorter), its total size and ETag;
    /// `None` when there is no such object.
    pub(crate) async fn get_prefix(
        &self,
        name: &str,
        max: u64,
    ) -> Result<Option<(Bytes, u64, Option<String>)>> {
        let opts = GetOptions {
            range: (max > 0).then_some(GetRange::Bounded(0..max)),
            ..GetOptions::default()
        };
        match self.get_capped(name, opts, max, false).await {
            Ok((bytes, meta)) => Ok(Some((bytes, meta.size, meta.e_tag))),
            Err(crate::Error::Remote(e)) if matches!(*e, RemoteError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A GET whose body is read up to `cap` bytes, with retries of transport failures.
    async fn get_capped(
        &self,
        name: &str,
        opts: GetOptions,
        cap: u64,
        exact: bool,
    ) -> Result<(Bytes, object_store::ObjectMeta)> {
        let path = self.path(name);
        let attempts = self.opts.retries.saturating_add(1);
        let mut last = None;
        for attempt in 1..=attempts {
            if attempt > 1 {
                tokio::time::sleep(self.backoff(attempt)).await;
            }
            self.count();
            let result = match self.store.get_opts(&path, opts.clone()).await {
                Ok(r) => r,
                Err(e) => {
                    let e = self.classify(name, e, attempt);
                    if is_transient(&e) {
                        last = Some(e);
                        continue;
                    }
                    return Err(e.into());
                }
            };
            let meta = result.meta.clone();
            let size_hint = result.range.end.saturating_sub(result.range.start);
            if exact && size_hint > cap {
                return Err(RemoteError::Oversized {
                    url: self.url_of(name),
                    asked: cap,
                }
                .into());
            }
            // The server's length is a hint, not trusted for more than a modest first allocation.
            let mut buf = BytesMut::with_capacity(
                usize::try_from(size_hint.min(cap).min(8 << 20)).unwrap_or(0),
            );
            let mut stream = result.into_stream();
            let mut failed = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(chunk) => {
                        if buf.len() as u64 + chunk.len() as u64 > cap {
                            if exact {
                                return Err(RemoteError::Oversized {
                                    url: self.url_of(name),
                                    asked: cap,
                                }
                                .into());
                            }
                            let room = usize::try_from(cap).unwrap_or(usize::MAX) - buf.len();
                            buf.extend_from_slice(&chunk[..room]);
                            break;
                        }
                        buf.extend_from_slice(&chunk);
                    }
                    Err(e) => {
                        failed = Some(self.classify(name, e, attempt));
                        break;
                    }
                }
            }
            match failed {
                None => return Ok((buf.freeze(), meta)),
                Some(e) if is_transient(&e) => last = Some(e),
                Some(e) => return Err(e.into()),
            }
        }
        Err(last
            .unwrap_or_else(|| RemoteError::Unavailable {
                url: self.url_of(name),
                attempts,
                detail: "no attempt made".into(),
            })
            .into())
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(2).min(6);
        self.opts.backoff.saturating_mul(factor)
    }

    /// Object `name`'s size and ETag, or `None`.
    pub(crate) async fn head(&self, name: &str) -> Result<Option<(u64, Option<String>)>> {
        self.count();
        match self.store.head(&self.path(name)).await {
            Ok(meta) => Ok(Some((meta.size, meta.e_tag))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.classify(name, e, 1).into()),
        }
    }

    /// Writes object `name` whole. `mode` is `None` to overwrite, `Some(None)` to create only
    /// (fails with `Ok(false)` if it exists), `Some(Some(etag))` to replace only that version
    /// (`Ok(false)` if it changed).
    pub(crate) async fn put(
        &self,
        name: &str,
        bytes: Bytes,
        mode: Option<Option<String>>,
    ) -> Result<bool> {
        let mode = match mode {
            None => PutMode::Overwrite,
            Some(None) => PutMode::Create,
            Some(Some(e_tag)) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
        };
        self.count();
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&self.path(name), PutPayload::from_bytes(bytes), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(
                object_store::Error::NotImplemented { .. }
                | object_store::Error::NotSupported { .. },
            ) => Err(RemoteError::Unsupported {
                url: self.url_of(name),
                detail: "conditional put".into(),
            }
            .into()),
            Err(e) => Err(self.classify(name, e, 1).into()),
        }
    }

    /// Uploads `len` bytes of local file `file` as object `name`: one PUT when small, else a
    /// multipart upload in parts of `part_size` bytes, several in flight. Nothing is visible
    /// under `name` until the upload completes.
    pub(crate) async fn put_file(
        &self,
        name: &str,
        file: std::path::PathBuf,
        len: u64,
    ) -> Result<()> {
        let part = self.opts.part_size.max(5 << 20);
        let read = |file: &std::path::Path, at: u64, n: usize| -> Result<Bytes> {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = std::fs::File::open(file).map_err(|e| crate::Error::io(file, e))?;
            let mut buf = vec![0u8; n];
            f.seek(SeekFrom::Start(at))
                .and_then(|_| f.read_exact(&mut buf))
                .map_err(|e| crate::Error::io(file, e))?;
            Ok(Bytes::from(buf))
        };
        if len <= self.opts.multipart_threshold {
            let n = usize::try_from(len).map_err(|_| invalid(&self.url, "file too large"))?;
            let bytes = read(&file, 0, n)?;
            self.put(name, bytes, None).await?;
            return Ok(());
        }
        self.count();
        let mut upload = self
            .store
            .put_multipart(&self.path(name))
            .await
            .map_err(|e| self.classify(name, e, 1))?;
        let mut at = 0u64;
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let result: Result<()> = async {
            while at < len {
                let n = part.min(len - at);
                let bytes = read(&file, at, usize::try_from(n).unwrap_or(usize::MAX))?;
                at += n;
                self.count();
                in_flight.push(upload.put_part(PutPayload::from_bytes(bytes)));
                while in_flight.len() >= self.opts.concurrency.max(1) {
                    if let Some(r) = in_flight.next().await {
                        r.map_err(|e| self.classify(name, e, 1))?;
                    }
                }
            }
            while let Some(r) = in_flight.next().await {
                r.map_err(|e| self.classify(name, e, 1))?;
            }
            Ok(())
        }
        .await;
        drop(in_flight);
        match result {
            Ok(()) => {
                self.count();
                upload
                    .complete()
                    .await
                    .map_err(|e| self.classify(name, e, 1))?;
                Ok(())
            }
            Err(e) => {
                // Best effort: the parts already sent are discarded by the store.
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    /// Deletes object `name`; absent is fine.
    pub(crate) async fn delete(&self, name: &str) -> Result<()> {
        self.count();
        match self.store.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.classify(name, e, 1).into()),
        }
    }

    /// The typed error for a failed request for object `name`.
    pub(crate) fn classify(
        &self,
        name: &str,
        e: object_store::Error,
        attempts: u32,
    ) -> RemoteError {
        let url = self.url_of(name);
        let detail = error_chain(&e);
        match e {
            object_store::Error::NotFound { .. } => RemoteError::NotFound { url },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                RemoteError::AccessDenied { url, detail }
            }
            object_store::Error::Precondition { .. } => RemoteError::Republished {
                url,
                detail: "the object changed since the store was opened (ETag mismatch)".into(),
            },
            _ => {
                // Words only, URLs left out: the text also names the object (whose bucket and
                // path may hold any word) and timings (whose digits can spell any status code).
                let lower = detail
                    .split_whitespace()
                    .filter(|w| !w.contains('/'))
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_ascii_lowercase();
                if lower.contains("signaturedoesnotmatch")
                    || lower.contains("invalidaccesskeyid")
                    || lower.contains("accessdenied")
                    || lower.contains("access denied")
                    || lower.contains("forbidden")
                    || lower.contains("unauthorized")
                    || lower.contains("expiredtoken")
                {
                    RemoteError::AccessDenied { url, detail }
                } else if lower.contains("timed out") {
                    RemoteError::Timeout {
                        url,
                        attempts,
                        detail,
                    }
                } else if lower.contains("connect")
                    || lower.contains("connection")
                    || lower.contains("sending request")
                    || lower.contains("body")
                    || lower.contains("closed")
                    || lower.contains("reset")
                    || lower.contains("broken pipe")
                    || lower.contains("incomplete")
                    || lower.contains("eof")
                {
                    RemoteError::Unavailable {
                        url,
                        attempts,
                        detail,
                    }
                } else {
                    RemoteError::Other { url, detail }
                }
            }
        }
    }
}

/// Whether trying again may help: a dropped connection or a timeout.
fn is_transient(e: &RemoteError) -> bool {
    matches!(
        e,
        RemoteError::Unavailable { .. } | RemoteError::Timeout { .. }
    )
}

/// An error and all its sources, in one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::new("memory:///", Arc::new(RemoteOptions::new())).expect("a client")
    }

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: text.to_owned().into(),
        }
    }

    #[test]
    fn digits_and_urls_in_the_text_do_not_decide_the_kind() {
        let c = client();
        let refused = generic(
            "Error performing GET http://127.0.0.1:1/forbidden/x in 48.987403ms, after 2 retries \
             - HTTP error: error sending request: tcp connect error: Connection refused",
        );
        assert!(matches!(
            c.classify("x", refused, 3),
            RemoteError::Unavailable { attempts: 3, .. }
        ));
        let denied = generic("Error performing GET http://h/b/x in 1ms - SignatureDoesNotMatch");
        assert!(matches!(
            c.classify("x", denied, 1),
            RemoteError::AccessDenied { .. }
        ));
        let slow =
            generic("Error performing GET http://h/b/connection in 1ms - operation timed out");
        assert!(matches!(
            c.classify("x", slow, 2),
            RemoteError::Timeout { .. }
        ));
        let other = generic(
            "Error performing GET http://h/closed/reset in 1ms - 500 Internal Server Error",
        );
        assert!(matches!(
            c.classify("x", other, 1),
            RemoteError::Other { .. }
        ));
    }

    #[test]
    fn urls_are_told_from_paths() {
        assert!(is_url("s3://bucket/prefix"));
        assert!(is_url("file:///tmp/x"));
        assert!(!is_url("/tmp/store"));
        assert!(!is_url("relative/dir"));
        assert!(!is_url("://nothing"));
    }
}
