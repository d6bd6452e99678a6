//! Python squirrel's Store API (`set`, `get`, `keys`) over shards of samples, and
//! [`SquirrelStore`], which keeps the shards in an [`Engine`].
//!
//! A **shard** is a list of samples; on the wire it is its **payload**, the samples packed as
//! MessagePack values one after the other (see [`crate::serializer`]). The [`Store`] trait asks an
//! implementor for payloads only, and builds typed and [`Value`] access on top, so a custom store
//! (another backend, a cache, a remote service) implements three small methods.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::{Engine, ValueRef};
use crate::error::{Error, Result};
use crate::shard::keygen::random_key;
use crate::shard::loader::Loader;
use crate::shard::serializer::{
    Codec, Encoded, MessagepackSerializer, Serializer, ShardError, collect_samples, encode_values,
    extend_samples, payload_from_samples,
};
use crate::shard::value::Value;

/// A shard's payload: its samples as concatenated MessagePack, read from a [`Store`].
///
/// Derefs to the bytes. When the store kept the shard uncompressed they are not copied: the
/// payload points into the store's memory map and keeps it alive. Cloning is cheap (a reference
/// count), and the arrays and bins decoded from a payload share it rather than copy their bytes
/// (see [`Payload::samples`] and [`Bytes`](crate::value::Bytes)).
#[derive(Clone)]
pub struct Payload(Arc<Repr>);

enum Repr {
    Mapped {
        value: ValueRef,
        start: usize,
        len: usize,
    },
    Owned(Vec<u8>),
    Recycled(Recycled),
}

impl Payload {
    /// A payload held in memory.
    #[must_use]
    pub fn owned(bytes: Vec<u8>) -> Payload {
        Payload(Arc::new(Repr::Owned(bytes)))
    }

    /// A payload that is all of `value`, inside the store's memory map.
    #[must_use]
    pub fn mapped(value: ValueRef) -> Payload {
        let len = value.len();
        Payload(Arc::new(Repr::Mapped {
            value,
            start: 0,
            len,
        }))
    }

    /// Whether the bytes are inside the store's memory map (the record was stored uncompressed)
    /// rather than held in memory.
    #[must_use]
    pub fn is_mapped(&self) -> bool {
        matches!(*self.0, Repr::Mapped { .. })
    }

    /// Every sample, typed. Arrays ([`NdArray`](crate::array::NdArray)) and [`Value`] bins in
    /// the samples share this payload's bytes instead of copying them.
    ///
    /// # Errors
    ///
    /// [`ShardError::Msgpack`] or [`ShardError::Mismatch`] for the first sample that fails.
    pub fn samples<T: DeserializeOwned>(&self) -> std::result::Result<Vec<T>, ShardError> {
        crate::shard::value::sharing(self, || collect_samples(self))
    }

    /// [`Payload::samples`], each passed through `f` and pushed onto `out`.
    ///
    /// # Errors
    ///
    /// As [`Payload::samples`]; `out` then holds the samples before the one that failed.
    pub(crate) fn samples_into<T: DeserializeOwned, U>(
        &self,
        out: &mut Vec<U>,
        f: impl FnMut(T) -> U,
    ) -> std::result::Result<(), ShardError> {
        crate::shard::value::sharing(self, || extend_samples(self, out, f))
    }

    /// Every sample as a [`Value`], byte-exact; bins share this payload's bytes.
    ///
    /// # Errors
    ///
    /// [`ShardError::Msgpack`] for the first sample that is not valid MessagePack.
    pub fn values(&self) -> std::result::Result<Vec<Value>, ShardError> {
        crate::shard::serializer::decode_values_in(self, self)
    }

    /// `payload` as decoded out of `value`: kept as a window into the map when it borrows from
    /// it, which is what a serializer does for uncompressed records.
    fn from_cow(value: &ValueRef, payload: Cow<'_, [u8]>) -> Payload {
        match payload {
            Cow::Owned(bytes) => Payload::owned(bytes),
            Cow::Borrowed(slice) => match window(value, slice) {
                Some(start) => Payload(Arc::new(Repr::Mapped {
                    value: value.clone(),
                    start,
                    len: slice.len(),
                })),
                None => Payload::owned(slice.to_vec()),
            },
        }
    }
}

/// Where `slice` starts inside `outer`, when it lies wholly inside it.
pub(crate) fn window(outer: &[u8], slice: &[u8]) -> Option<usize> {
    let start = slice.as_ptr().addr().wrapping_sub(outer.as_ptr().addr());
    let within = start
        .checked_add(slice.len())
        .is_some_and(|end| end <= outer.len());
    within.then_some(start)
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &*self.0 {
            // `from_cow` checked the window against the value; an empty slice is the fallback
            // that can never be reached, not a panic.
            Repr::Mapped { value, start, len } => value.get(*start..start + len).unwrap_or(&[]),
            Repr::Owned(bytes) => bytes,
            Repr::Recycled(r) => &r.buf,
        }
    }
}

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Payload")
            .field("len", &self.len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

/// The key `set` writes under: the caller's, or a fresh random one as squirrel makes.
fn key_or_random(key: Option<&str>) -> String {
    key.map_or_else(random_key, str::to_owned)
}

/// Names the shard a serializer error is about.
fn shard_error(key: &str) -> impl FnOnce(ShardError) -> Error + '_ {
    move |source| Error::Shard {
        key: key.to_owned(),
        source,
    }
}

/// Python squirrel's Store: shards of samples under string keys.
///
/// Implementors provide payload access ([`Store::set_payload`], [`Store::get_payload`]) and
/// [`Store::keys`]; the typed and [`Value`] methods come with it.
///
/// * **Typed** samples are any `T: Serialize` / `DeserializeOwned`, structs written as maps with
///   field names as Python dicts are (see [`crate::serializer`]).
/// * **[`Value`]** samples re-encode byte for byte: a shard read from Python squirrel and written
///   back through [`Store::set_values`] keeps its exact bytes.
///
/// A key that holds no shard reads as `Ok(None)`, as [`Engine::get`] does (Python raises
/// instead).
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use squirrel_store::{SquirrelStore, Store};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct Sample {
///     label: i64,
///     caption: String,
/// }
///
/// let dir = tempfile::tempdir()?;
/// let store = SquirrelStore::open(dir.path())?;
/// let a = Sample { label: 1, caption: "a cat".into() };
/// let b = Sample { label: 2, caption: "a dog".into() };
/// store.set(&[a, b], Some("shard_0"))?;
/// let key = store.set(&[Sample { label: 3, caption: "a bird".into() }], None)?;
/// assert_eq!(key.len(), 16);
///
/// let samples = store.get::<Sample>("shard_0")?.expect("stored above");
/// assert_eq!(samples[1].caption, "a dog");
/// assert!(store.get::<Sample>("nope")?.is_none());
/// assert_eq!(store.keys()?.len(), 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Store: Send + Sync {
    /// Stores a payload (concatenated MessagePack samples) under `key`, or under a fresh
    /// [`random_key`] when `key` is `None`, replacing any shard there. Returns the key used.
    ///
    /// # Errors
    ///
    /// As the implementation says; for [`SquirrelStore`], [`Error::Shard`] when compression
    /// fails and the errors of [`Engine::put`] ([`Error::InvalidKey`], [`Error::ReadOnly`], ...).
    fn set_payload(&self, payload: &[u8], key: Option<&str>) -> Result<String>;

    /// The payload stored under `key`, or `None`.
    ///
    /// # Errors
    ///
    /// As the implementation says; for [`SquirrelStore`], [`Error::Shard`] naming the key when
    /// the record cannot be decompressed or holds no samples, and the errors of [`Engine::get`].
    fn get_payload(&self, key: &str) -> Result<Option<Payload>>;

    /// Every key that holds a shard, sorted, nested keys (`sub/key`) included: what Python
    /// squirrel lists with `keys(nested=True)`. For its default, see [`Store::keys_nested`].
    ///
    /// # Errors
    ///
    /// As the implementation says; for [`SquirrelStore`], those of [`Engine::keys`].
    fn keys(&self) -> Result<Vec<String>>;

    /// The keys as Python squirrel's `keys(nested=...)` lists them: with `nested` false (its
    /// default) only top-level keys, without a `/`; with `nested` true also the `sub/key` keys
    /// of shards kept in subdirectories, as [`Store::keys`].
    ///
    /// # Errors
    ///
    /// As [`Store::keys`].
    fn keys_nested(&self, nested: bool) -> Result<Vec<String>> {
        let mut keys = self.keys()?;
        if !nested {
            keys.retain(|k| !k.contains('/'));
        }
        Ok(keys)
    }

    /// Stores a shard of typed samples under `key`, or under a fresh random key when `key` is
    /// `None` (16 characters of `[A-Z0-9]`, as squirrel makes). Returns the key used.
    ///
    /// # Errors
    ///
    /// [`Error::Shard`] naming the key when a sample cannot be serialized; then as
    /// [`Store::set_payload`].
    fn set<T: Serialize>(&self, shard: &[T], key: Option<&str>) -> Result<String> {
        let key = key_or_random(key);
        let payload = payload_from_samples(shard).map_err(shard_error(&key))?;
        self.set_payload(&payload, Some(&key))
    }

    /// The samples of the shard under `key`, typed, or `None` when there is no such shard.
    ///
    /// # Errors
    ///
    /// As [`Store::get_payload`]; [`Error::Shard`] naming the key when a sample is not valid
    /// MessagePack or does not fit `T`.
    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<Vec<T>>> {
        let Some(payload) = self.get_payload(key)? else {
            return Ok(None);
        };
        payload.samples().map(Some).map_err(shard_error(key))
    }

    /// [`Store::get`] into a buffer the caller keeps: each sample of the shard under `key`,
    /// passed through `f`, is pushed onto `out`. Returns whether there was a shard.
    ///
    /// A caller that reads shard after shard (as [`Loader`] does) reuses one `Vec` this way
    /// rather than allocating one per shard. The default goes through [`Store::get`] (and, when
    /// `out` is empty, replaces it with the shard's own `Vec`, mapped in place where `T` and `U`
    /// allow); [`SquirrelStore`] decodes straight into `out`.
    ///
    /// # Errors
    ///
    /// As [`Store::get`]. `out` may then hold some of the shard's samples after the ones it had.
    fn get_into<T, U>(&self, key: &str, out: &mut Vec<U>, f: impl FnMut(T) -> U) -> Result<bool>
    where
        T: DeserializeOwned,
    {
        let Some(samples) = self.get::<T>(key)? else {
            return Ok(false);
        };
        // Mapped in place where `T` and `U` allow it (the standard library reuses the buffer),
        // rather than copied into `out`.
        let mapped: Vec<U> = samples.into_iter().map(f).collect();
        if out.is_empty() {
            *out = mapped;
        } else {
            out.extend(mapped);
        }
        Ok(true)
    }

    /// Stores a shard of [`Value`] samples byte-exactly; otherwise as [`Store::set`].
    ///
    /// # Errors
    ///
    /// [`Error::Shard`] naming the key when a value is longer than MessagePack allows; then as
    /// [`Store::set_payload`].
    fn set_values(&self, shard: &[Value], key: Option<&str>) -> Result<String> {
        let key = key_or_random(key);
        let payload = encode_values(shard).map_err(shard_error(&key))?;
        self.set_payload(&payload, Some(&key))
    }

    /// The samples of the shard under `key` as [`Value`]s, which re-encode byte for byte, or
    /// `None`.
    ///
    /// # Errors
    ///
    /// As [`Store::get_payload`]; [`Error::Shard`] naming the key when a sample is not valid
    /// MessagePack.
    fn get_values(&self, key: &str) -> Result<Option<Vec<Value>>> {
        let Some(payload) = self.get_payload(key)? else {
            return Ok(None);
        };
        payload.values().map(Some).map_err(shard_error(key))
    }
}

/// Python squirrel's `SquirrelStore`: shards kept in an [`Engine`], each record the output of a
/// [`Serializer`] (by default MessagePack, compressed with zstd where that saves at least 20%).
///
/// Thread-safe, and cloning is cheap (clones share the engine and the serializer). Samples are
/// serialized and compressed on the calling thread before the engine's writer lock is taken, so
/// threads that `set` at once compress in parallel and only take turns to append.
///
/// Reading and writing a store go through the [`Store`] trait (`use squirrel_store::Store`); the
/// engine's byte API stays at hand through [`SquirrelStore::engine`].
pub struct SquirrelStore<S = MessagepackSerializer> {
    engine: Engine,
    serializer: Arc<S>,
    /// Decompression buffers, reused by the gets of this store and its clones.
    buffers: Arc<BufferPool>,
}

impl<S> Clone for SquirrelStore<S> {
    fn clone(&self) -> Self {
        SquirrelStore {
            engine: self.engine.clone(),
            serializer: self.serializer.clone(),
            buffers: self.buffers.clone(),
        }
    }
}

/// Buffers that compressed shards were decompressed into, handed back when the last array or
/// bin sharing them is dropped, for the next get to decompress into.
///
/// Reusing them keeps a parallel read from allocating (and the allocator from returning to the
/// OS and faulting in again) a shard-sized buffer per shard: with the buffers freed on the
/// consuming thread and allocated on the workers, that churn cost a loader more page faults than
/// records. Bounded: at most [`BufferPool::KEEP`] buffers of at most [`BufferPool::MAX_LEN`]
/// bytes are kept.
#[derive(Debug, Default)]
struct BufferPool(std::sync::Mutex<Vec<Vec<u8>>>);

impl BufferPool {
    const KEEP: usize = 8;
    const MAX_LEN: usize = 16 << 20;

    /// The kept buffers. A panic while they were held cannot have left them inconsistent (a
    /// push or a pop), so a poisoned lock is used as it is.
    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self) -> Vec<u8> {
        self.kept().pop().unwrap_or_default()
    }

    fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > Self::MAX_LEN {
            return;
        }
        buf.clear();
        let mut kept = self.kept();
        if kept.len() < Self::KEEP {
            kept.push(buf);
        }
    }
}

/// A decompressed payload whose buffer goes back to its pool when dropped.
struct Recycled {
    buf: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl Drop for Recycled {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.buf));
    }
}

impl<S: fmt::Debug> fmt::Debug for SquirrelStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SquirrelStore")
            .field("engine", &self.engine)
            .field("serializer", &self.serializer)
            .finish()
    }
}

impl SquirrelStore {
    /// Opens (creating if needed) the store in directory `path` with the default engine options
    /// and [`MessagepackSerializer::default`] (zstd level 3 for the shards where it pays).
    ///
    /// # Errors
    ///
    /// As [`crate::Config::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<SquirrelStore> {
        Ok(SquirrelStore::new(
            Engine::open(path)?,
            MessagepackSerializer::default(),
        ))
    }
}

impl<S: Serializer> SquirrelStore<S> {
    /// A store over an engine opened as the caller likes, writing records with `serializer`.
    ///
    /// ```
    /// use squirrel_store::serializer::MessagepackSerializer;
    /// use squirrel_store::{Config, Durability, SquirrelStore};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let engine = Config::new(dir.path()).durability(Durability::Buffered).open()?;
    /// let store = SquirrelStore::new(engine, MessagepackSerializer::new().level(9));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(engine: Engine, serializer: S) -> Self {
        SquirrelStore {
            engine,
            serializer: Arc::new(serializer),
            buffers: Arc::default(),
        }
    }

    /// The engine underneath, for the raw byte API (`get` of the stored record, `delete`,
    /// `sync`, `compact`, ...).
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The serializer records are written with.
    #[must_use]
    pub fn serializer(&self) -> &S {
        &self.serializer
    }

    /// A [`Loader`] over this store: parallel, prefetching, optionally shuffled reading of many
    /// shards, as a training loop reads.
    pub fn loader(&self) -> Loader<Self>
    where
        S: 'static,
    {
        Loader::new(self.clone())
    }

    /// Stores many `(key, shard)` pairs as one engine batch: the shards are serialized and
    /// compressed in parallel (on rayon's pool), then appended with one lock acquisition and, in
    /// [`crate::Durability::Fsync`], one fsync. A key repeated in the batch ends with its last
    /// shard. For random keys, use [`random_key`].
    ///
    /// ```
    /// use squirrel_store::{SquirrelStore, Store};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let store = SquirrelStore::open(dir.path())?;
    /// let shards: Vec<(String, Vec<u32>)> =
    ///     (0..4).map(|i| (format!("shard_{i}"), vec![i, i + 1])).collect();
    /// store.set_many(&shards)?;
    /// let back = store.get_many::<u32, _>(&["shard_3", "missing"])?;
    /// assert_eq!(back, vec![Some(vec![3, 4]), None]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Shard`] naming the first key (in batch order) whose shard cannot be serialized or
    /// compressed, before anything is written; then as [`Engine::set_many_with_codec`], in which
    /// case none of the batch is acknowledged.
    pub fn set_many<K, B, T>(&self, shards: &[(K, B)]) -> Result<()>
    where
        K: AsRef<str> + Sync,
        B: AsRef<[T]> + Sync,
        T: Serialize + Sync,
    {
        self.put_batch(shards, |s: &B| self.serializer.encode(s.as_ref()))
    }

    /// [`SquirrelStore::set_many`] for shards of [`Value`] samples, byte-exact.
    ///
    /// # Errors
    ///
    /// As [`SquirrelStore::set_many`].
    pub fn set_many_values<K, B>(&self, shards: &[(K, B)]) -> Result<()>
    where
        K: AsRef<str> + Sync,
        B: AsRef<[Value]> + Sync,
    {
        self.put_batch(shards, |s: &B| self.serializer.encode_values(s.as_ref()))
    }

    /// The shards under many keys, in the order given (`None` where a key holds no shard),
    /// decoded in parallel on rayon's pool.
    ///
    /// # Errors
    ///
    /// As [`Store::get`], for the first key in the given order that fails.
    pub fn get_many<T, K>(&self, keys: &[K]) -> Result<Vec<Option<Vec<T>>>>
    where
        T: DeserializeOwned + Send,
        K: AsRef<str> + Sync,
    {
        keys.par_iter().map(|k| self.get(k.as_ref())).collect()
    }

    fn put_batch<K, B>(
        &self,
        shards: &[(K, B)],
        encode: impl Fn(&B) -> std::result::Result<Encoded, ShardError> + Sync,
    ) -> Result<()>
    where
        K: AsRef<str> + Sync,
        B: Sync,
    {
        let records = shards
            .par_iter()
            .map(|(key, shard)| encode(shard).map_err(shard_error(key.as_ref())))
            .collect::<Result<Vec<Encoded>>>()?;
        self.engine
            .set_many_with_codec(shards.iter().zip(&records).map(|((key, _), record)| {
                (key.as_ref(), record.codec.as_u8(), record.bytes.as_slice())
            }))
    }

    /// The engine's record under `key` and its codec.
    fn record(&self, key: &str) -> Result<Option<(ValueRef, Codec)>> {
        let Some(value) = self.engine.get(key)? else {
            return Ok(None);
        };
        let codec = Codec::try_from(value.codec()).map_err(shard_error(key))?;
        Ok(Some((value, codec)))
    }
}

// The writing methods are overridden so that a serializer's own `encode` (which may be faster than
// going through a payload) is what runs. Reads decode from the payload, which the decoded arrays
// and bins then share instead of copying their bytes: through the trait's methods, except
// `get_into`, which decodes straight into the caller's buffer rather than into a `Vec` of its own.
impl<S: Serializer> Store for SquirrelStore<S> {
    fn set_payload(&self, payload: &[u8], key: Option<&str>) -> Result<String> {
        let key = key_or_random(key);
        let record = self
            .serializer
            .encode_payload(payload)
            .map_err(shard_error(&key))?;
        self.engine.put(&key, record.codec.as_u8(), &record.bytes)?;
        Ok(key)
    }

    fn get_payload(&self, key: &str) -> Result<Option<Payload>> {
        let Some((value, codec)) = self.record(key)? else {
            return Ok(None);
        };
        // Only a record that must be decompressed takes a buffer.
        let mut buf = match codec {
            Codec::Raw | Codec::Msgpack => Vec::new(),
            Codec::MsgpackZstd => self.buffers.take(),
        };
        match self.serializer.decode_payload_into(codec, &value, &mut buf) {
            Ok(Some(borrowed)) => {
                self.buffers.give(buf);
                Ok(Some(Payload::from_cow(&value, Cow::Borrowed(borrowed))))
            }
            Ok(None) => Ok(Some(Payload(Arc::new(Repr::Recycled(Recycled {
                buf,
                pool: self.buffers.clone(),
            }))))),
            Err(e) => {
                self.buffers.give(buf);
                Err(shard_error(key)(e))
            }
        }
    }

    fn keys(&self) -> Result<Vec<String>> {
        self.engine.keys()
    }

    fn get_into<T, U>(&self, key: &str, out: &mut Vec<U>, f: impl FnMut(T) -> U) -> Result<bool>
    where
        T: DeserializeOwned,
    {
        let Some(payload) = self.get_payload(key)? else {
            return Ok(false);
        };
        payload.samples_into(out, f).map_err(shard_error(key))?;
        Ok(true)
    }

    fn set<T: Serialize>(&self, shard: &[T], key: Option<&str>) -> Result<String> {
        let key = key_or_random(key);
        let record = self.serializer.encode(shard).map_err(shard_error(&key))?;
        self.engine.put(&key, record.codec.as_u8(), &record.bytes)?;
        Ok(key)
    }

    fn set_values(&self, shard: &[Value], key: Option<&str>) -> Result<String> {
        let key = key_or_random(key);
        let record = self
            .serializer
            .encode_values(shard)
            .map_err(shard_error(&key))?;
        self.engine.put(&key, record.codec.as_u8(), &record.bytes)?;
        Ok(key)
    }
}
