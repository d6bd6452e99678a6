//! Read-only access to a dataset, as Python squirrel's drivers give it: [`Driver`] and
//! [`MessagepackDriver`].
//!
//! A driver reads; it never writes. It hands out its [`Store`] (squirrel's `driver.store`) for
//! the full API, and iterates over the samples of many shards through a [`Loader`].

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::engine::Config;
use crate::error::Result;
use crate::shard::loader::{Loader, SampleIter};
use crate::shard::serializer::{MessagepackSerializer, Serializer};
use crate::shard::store::{SquirrelStore, Store};
use crate::shard::value::Value;

/// Read-only access to shards: `keys`, `get`, and iteration over the samples of many shards.
///
/// Implement it for a custom source by providing [`Driver::store`]; everything else has a
/// default built on the [`Store`] trait. There is deliberately no `set`: code that holds a
/// driver cannot write through it.
///
/// ```compile_fail,E0599
/// use squirrel_store::{Driver, MessagepackDriver};
/// let dir = tempfile::tempdir()?;
/// let driver = MessagepackDriver::open(dir.path())?;
/// driver.set(&[1u8], None)?; // a driver has no `set`
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Driver {
    /// The store this driver reads.
    type Store: Store + Clone + 'static;

    /// The store behind this driver (squirrel's `driver.store`).
    fn store(&self) -> &Self::Store;

    /// Every key that holds a shard, sorted.
    ///
    /// # Errors
    ///
    /// As [`Store::keys`].
    fn keys(&self) -> Result<Vec<String>> {
        self.store().keys()
    }

    /// The samples of the shard under `key`, typed, or `None`.
    ///
    /// # Errors
    ///
    /// As [`Store::get`].
    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Vec<T>>> {
        self.store().get(key)
    }

    /// The samples of the shard under `key` as byte-exact [`Value`]s, or `None`.
    ///
    /// # Errors
    ///
    /// As [`Store::get_values`].
    fn get_values(&self, key: &str) -> Result<Option<Vec<Value>>> {
        self.store().get_values(key)
    }

    /// A [`Loader`] over the store, to configure workers, shuffling and splits.
    fn loader(&self) -> Loader<Self::Store> {
        Loader::new(self.store().clone())
    }

    /// The samples of every shard, in key order, decoded in parallel on all cores (squirrel's
    /// `get_iter()`). Use [`Driver::loader`] for shuffling, splits and other options.
    ///
    /// # Errors
    ///
    /// As [`Store::keys`]; the samples come as `Result`s, see [`SampleIter`].
    fn get_iter<T>(&self) -> Result<SampleIter<T>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        self.loader().samples()
    }

    /// The samples of the shards under `keys`, in the order given, decoded in parallel on all
    /// cores (squirrel's `get_iter(keys_iterable=...)`).
    ///
    /// # Errors
    ///
    /// None up front (the keys are not listed); each key without a shard comes out as an
    /// [`Error::KeyNotFound`](crate::Error::KeyNotFound) item, see [`SampleIter`].
    fn get_iter_keys<T>(
        &self,
        keys: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<SampleIter<T>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        self.loader().keys(keys).samples()
    }
}

/// Python squirrel's `MessagepackDriver`: opens a store read-only and reads its shards.
///
/// Any number of drivers, in any processes, can read a store while one [`SquirrelStore`] writes
/// it; a driver sees what was written after it opened once [`MessagepackDriver::refresh`] is
/// called.
///
/// ```
/// use squirrel_store::{Driver, MessagepackDriver, SquirrelStore, Store};
///
/// let dir = tempfile::tempdir()?;
/// let store = SquirrelStore::open(dir.path())?;
/// store.set(&["a".to_owned(), "b".to_owned()], Some("shard_0"))?;
/// store.set(&["c".to_owned()], Some("shard_1"))?;
///
/// let driver = MessagepackDriver::open(dir.path())?;
/// assert_eq!(driver.keys()?, ["shard_0", "shard_1"]);
/// let all: Vec<String> = driver.get_iter::<String>()?.collect::<Result<_, _>>()?;
/// assert_eq!(all, ["a", "b", "c"]);
/// // The store it hands out is read-only too.
/// assert!(driver.store().set(&["d".to_owned()], None).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MessagepackDriver<S = MessagepackSerializer> {
    store: SquirrelStore<S>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for MessagepackDriver<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagepackDriver")
            .field("store", &self.store)
            .finish()
    }
}

impl MessagepackDriver {
    /// Opens the store in directory `path` read-only, with [`MessagepackSerializer::default`].
    ///
    /// # Errors
    ///
    /// [`Error::NotFound`](crate::Error::NotFound) when there is no store there; otherwise as
    /// [`Config::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<MessagepackDriver> {
        Self::open_with(path, MessagepackSerializer::default())
    }
}

impl<S: Serializer + 'static> MessagepackDriver<S> {
    /// Opens the store in directory `path` read-only, decoding records with `serializer` (for
    /// its decompression limit, say).
    ///
    /// # Errors
    ///
    /// As [`MessagepackDriver::open`].
    pub fn open_with(path: impl AsRef<Path>, serializer: S) -> Result<MessagepackDriver<S>> {
        let engine = Config::new(path).read_only(true).open()?;
        Ok(MessagepackDriver {
            store: SquirrelStore::new(engine, serializer),
        })
    }

    /// The read-only store behind this driver (squirrel's `driver.store`); its `set` fails with
    /// [`Error::ReadOnly`](crate::Error::ReadOnly).
    #[must_use]
    pub fn store(&self) -> &SquirrelStore<S> {
        &self.store
    }

    /// Picks up shards written since the driver was opened or last refreshed.
    ///
    /// # Errors
    ///
    /// As [`crate::Engine::refresh`].
    pub fn refresh(&self) -> Result<()> {
        self.store.engine().refresh()
    }
}

impl<S: Serializer + 'static> Driver for MessagepackDriver<S> {
    type Store = SquirrelStore<S>;

    fn store(&self) -> &SquirrelStore<S> {
        &self.store
    }
}
