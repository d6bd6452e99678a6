//! The squirrel layer on a remote store or dataset: [`RemoteSquirrelStore`] (the [`Store`] API,
//! read-only) and [`RemoteDriver`] (squirrel's `MessagepackDriver(url)`), so [`crate::Loader`]
//! runs over object storage as over a local store.

use serde::de::DeserializeOwned;

use super::RemoteOptions;
use super::dataset::Dataset;
use super::error::RemoteError;
use super::store::{RemoteStore, RemoteValue};
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::loader::Loader;
use crate::serializer::{Codec, MessagepackSerializer, Serializer};
use crate::store::{Payload, Store};
use crate::value::Value;

/// Where a remote squirrel store reads from.
#[derive(Debug, Clone)]
enum Source {
    Store(RemoteStore),
    Dataset(Dataset),
}

impl Source {
    fn get(&self, key: &str) -> Result<Option<RemoteValue>> {
        match self {
            Source::Store(s) => s.get(key),
            Source::Dataset(d) => d.get(key),
        }
    }

    fn keys(&self) -> Result<Vec<String>> {
        match self {
            Source::Store(s) => s.keys(),
            Source::Dataset(d) => Ok(d.keys().to_vec()),
        }
    }

    fn url(&self) -> &str {
        match self {
            Source::Store(s) => s.url(),
            Source::Dataset(d) => d.url(),
        }
    }
}

/// Python squirrel's `SquirrelStore(url)`, read-only, on a published store or a dataset.
///
/// Writes fail with [`Error::ReadOnly`] naming the URL. Cheap to clone; thread-safe.
///
/// ```no_run
/// use squirrel_store::Store;
/// use squirrel_store::remote::{RemoteOptions, RemoteSquirrelStore};
///
/// let store = RemoteSquirrelStore::open("s3://bucket/train/store-0", RemoteOptions::new())?;
/// let shard: Vec<serde_json::Value> = store.get("shard_0")?.expect("present");
/// # Ok::<(), squirrel_store::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RemoteSquirrelStore<S = MessagepackSerializer> {
    source: Source,
    serializer: S,
}

impl RemoteSquirrelStore {
    /// Opens `url`: a dataset when a `dataset.json` is there, else a published store.
    ///
    /// # Errors
    ///
    /// Those of [`RemoteStore::open`] and [`Dataset::open`].
    pub fn open(url: &str, opts: RemoteOptions) -> Result<RemoteSquirrelStore> {
        Self::open_with(url, opts, MessagepackSerializer::new())
    }
}

impl<S: Serializer> RemoteSquirrelStore<S> {
    /// As [`RemoteSquirrelStore::open`], decoding with `serializer`.
    ///
    /// # Errors
    ///
    /// As [`RemoteSquirrelStore::open`].
    pub fn open_with(
        url: &str,
        opts: RemoteOptions,
        serializer: S,
    ) -> Result<RemoteSquirrelStore<S>> {
        let source = match Dataset::open(url, opts.clone()) {
            Ok(d) => Source::Dataset(d),
            Err(Error::Remote(e)) if matches!(*e, RemoteError::NotFound { .. }) => {
                Source::Store(RemoteStore::open(url, opts)?)
            }
            Err(e) => return Err(e),
        };
        Ok(RemoteSquirrelStore { source, serializer })
    }

    /// The store underneath, when `url` was a single store.
    #[must_use]
    pub fn remote_store(&self) -> Option<&RemoteStore> {
        match &self.source {
            Source::Store(s) => Some(s),
            Source::Dataset(_) => None,
        }
    }

    /// The dataset underneath, when `url` was a dataset.
    #[must_use]
    pub fn dataset(&self) -> Option<&Dataset> {
        match &self.source {
            Source::Dataset(d) => Some(d),
            Source::Store(_) => None,
        }
    }

    /// The URL it was opened at.
    #[must_use]
    pub fn url(&self) -> &str {
        self.source.url()
    }

    /// The record stored under `key`, undecoded: its value bytes and codec byte (what
    /// `squirrel-store get --raw` starts from).
    ///
    /// # Errors
    ///
    /// As [`RemoteStore::get`].
    pub fn get_record(&self, key: &str) -> Result<Option<RemoteValue>> {
        self.source.get(key)
    }

    /// A loader over every shard (see [`Loader`]).
    pub fn loader(&self) -> Loader<Self>
    where
        S: Clone + 'static,
    {
        Loader::new(self.clone())
    }

    fn record(&self, key: &str) -> Result<Option<(RemoteValue, Codec)>> {
        let Some(value) = self.source.get(key)? else {
            return Ok(None);
        };
        let codec = Codec::try_from(value.codec()).map_err(|source| Error::Shard {
            key: key.to_owned(),
            source,
        })?;
        Ok(Some((value, codec)))
    }

    fn read_only(&self) -> Error {
        Error::ReadOnly {
            path: self.source.url().into(),
        }
    }
}

impl<S: Serializer> Store for RemoteSquirrelStore<S> {
    fn set_payload(&self, _payload: &[u8], _key: Option<&str>) -> Result<String> {
        Err(self.read_only())
    }

    fn get_payload(&self, key: &str) -> Result<Option<Payload>> {
        let Some((value, codec)) = self.record(key)? else {
            return Ok(None);
        };
        let payload = self
            .serializer
            .decode_payload(codec, &value)
            .map_err(|source| Error::Shard {
                key: key.to_owned(),
                source,
            })?;
        Ok(Some(Payload::owned(payload.into_owned())))
    }

    fn keys(&self) -> Result<Vec<String>> {
        self.source.keys()
    }

    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Vec<T>>> {
        let Some((value, codec)) = self.record(key)? else {
            return Ok(None);
        };
        self.serializer
            .decode(codec, &value)
            .map(Some)
            .map_err(|source| Error::Shard {
                key: key.to_owned(),
                source,
            })
    }

    fn get_values(&self, key: &str) -> Result<Option<Vec<Value>>> {
        let Some((value, codec)) = self.record(key)? else {
            return Ok(None);
        };
        self.serializer
            .decode_values(codec, &value)
            .map(Some)
            .map_err(|source| Error::Shard {
                key: key.to_owned(),
                source,
            })
    }
}

/// Python squirrel's `MessagepackDriver(url)` on object storage: read-only, handing out its
/// [`RemoteSquirrelStore`] and loaders over it.
///
/// ```no_run
/// use squirrel_store::Driver;
/// use squirrel_store::remote::{RemoteDriver, RemoteOptions};
///
/// let driver = RemoteDriver::open("s3://bucket/train", RemoteOptions::new())?;
/// let loader = driver.loader().shuffle_keys(true).seed(7);
/// for sample in loader.samples::<serde_json::Value>()? {
///     let _sample = sample?;
/// }
/// # Ok::<(), squirrel_store::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RemoteDriver<S = MessagepackSerializer> {
    store: RemoteSquirrelStore<S>,
}

impl RemoteDriver {
    /// Opens the store or dataset at `url`.
    ///
    /// # Errors
    ///
    /// As [`RemoteSquirrelStore::open`].
    pub fn open(url: &str, opts: RemoteOptions) -> Result<RemoteDriver> {
        Ok(RemoteDriver {
            store: RemoteSquirrelStore::open(url, opts)?,
        })
    }
}

impl<S: Serializer + Clone + 'static> Driver for RemoteDriver<S> {
    type Store = RemoteSquirrelStore<S>;

    fn store(&self) -> &RemoteSquirrelStore<S> {
        &self.store
    }
}
