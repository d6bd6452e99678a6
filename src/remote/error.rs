//! What can go wrong talking to object storage, each variant naming the URL it concerns.

/// An object-storage failure: typed by what the caller can do about it, each naming the URL.
///
/// Reached through [`crate::Error::Remote`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The URL cannot be parsed, or names a scheme this build has no client for.
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The object does not exist (HTTP 404).
    #[error("{url}: no such object")]
    NotFound {
        /// The object's URL.
        url: String,
    },
    /// The server refused the credentials (HTTP 401 or 403: a wrong key or secret, an expired
    /// token, or no permission).
    #[error("{url}: access denied (check the credentials): {detail}")]
    AccessDenied {
        /// The object's URL.
        url: String,
        /// The server's or client's words.
        detail: String,
    },
    /// A request took longer than the configured timeout, on every attempt.
    #[error("{url}: timed out after {attempts} attempt(s): {detail}")]
    Timeout {
        /// The object's URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The client's words.
        detail: String,
    },
    /// The connection failed or dropped mid-transfer on every attempt (server down, killed,
    /// network gone).
    #[error("{url}: unavailable after {attempts} attempt(s): {detail}")]
    Unavailable {
        /// The object's URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The client's words for the last failure.
        detail: String,
    },
    /// An object is shorter than the store's manifest or index says it must be.
    #[error("{url}: truncated: {expected} bytes expected, {found} found")]
    Truncated {
        /// The object's URL.
        url: String,
        /// The length the store's own metadata requires.
        expected: u64,
        /// The length the server reported or sent.
        found: u64,
    },
    /// The server sent more bytes than were asked for (a hostile or broken server): refused
    /// rather than buffered.
    #[error("{url}: the server sent more than the {asked} bytes asked for")]
    Oversized {
        /// The object's URL.
        url: String,
        /// Bytes asked for.
        asked: u64,
    },
    /// The store was re-published (a new segment, or a changed object, behind the same URL)
    /// while this handle was open: nothing of the new one is mixed with the old index. Open the
    /// URL again to read the new store.
    #[error("{url}: the store was replaced while open ({detail}); open it again")]
    Republished {
        /// The store's URL.
        url: String,
        /// What changed.
        detail: String,
    },
    /// The URL holds no readable store: no segment, or a store that was not closed cleanly (a
    /// store must be closed, as `squirrel-store push` does, before it is read remotely).
    #[error("{url}: not a published store: {reason}")]
    NotPublished {
        /// The store's URL.
        url: String,
        /// What is missing.
        reason: String,
    },
    /// A manifest (a store's `store.json` or a dataset's `dataset.json`) is not valid.
    #[error("{url}: bad manifest: {reason}")]
    BadManifest {
        /// The manifest's URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A conditional update of a manifest kept losing to other writers.
    #[error("{url}: gave up after {attempts} conflicting concurrent updates")]
    Contended {
        /// The manifest's URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The store behind the URL does not support an operation this needs (for example
    /// conditional puts for a dataset manifest).
    #[error("{url}: not supported by this object store: {detail}")]
    Unsupported {
        /// The URL.
        url: String,
        /// The client's words.
        detail: String,
    },
    /// A key appears in more than one store of a dataset.
    #[error("dataset {url}: key {key:?} is in both {first} and {second}")]
    DuplicateKey {
        /// The dataset's URL.
        url: String,
        /// The key.
        key: String,
        /// The first store holding it, in manifest order.
        first: String,
        /// The next store holding it.
        second: String,
    },
    /// Any other failure of the object-storage client.
    #[error("{url}: {detail}")]
    Other {
        /// The URL.
        url: String,
        /// The client's words.
        detail: String,
    },
}

impl From<RemoteError> for crate::Error {
    fn from(e: RemoteError) -> Self {
        crate::Error::Remote(Box::new(e))
    }
}
