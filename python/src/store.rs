//! `_native.Store`: one handle on a store directory, and `_native.ShardIter`, the parallel
//! shard reader behind `get_iter`.
//!
//! Every call that touches the disk or decodes runs with the GIL released; Python objects are
//! built at the end, on the calling thread.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use squirrel_store::remote::{RemoteOptions, RemoteSquirrelStore, is_url};
use squirrel_store::serializer::MessagepackSerializer;
use squirrel_store::store::Payload;
use squirrel_store::{Config, Durability, Error, SquirrelStore, Store, random_key};

use crate::decode::{Builder, Helpers, Node, ParseError, parse_payload};
use crate::encode::Encoder;
use crate::errors::{IntoPy, raise};

/// A local store, or a published store or dataset read by URL (read-only).
#[derive(Clone)]
enum Inner {
    Local(SquirrelStore<MessagepackSerializer>),
    Remote(RemoteSquirrelStore<MessagepackSerializer>),
}

impl Inner {
    fn open(
        path: &std::path::Path,
        remote: Option<&RemoteOptions>,
        read_only: bool,
        durability: Durability,
        serializer: &MessagepackSerializer,
    ) -> Result<Inner, Error> {
        if let Some(opts) = remote {
            let url = path.to_string_lossy();
            return RemoteSquirrelStore::open_with(&url, opts.clone(), serializer.clone())
                .map(Inner::Remote);
        }
        let engine = Config::new(path)
            .read_only(read_only)
            .create(!read_only)
            .durability(durability)
            .open()?;
        Ok(Inner::Local(SquirrelStore::new(engine, serializer.clone())))
    }

    /// The local store, for what only a local store does; a remote one is read-only.
    fn local(&self) -> Result<&SquirrelStore<MessagepackSerializer>, Error> {
        match self {
            Inner::Local(s) => Ok(s),
            Inner::Remote(r) => Err(Error::ReadOnly {
                path: r.url().into(),
            }),
        }
    }

    /// The codec byte of the record under `key`, or `None`.
    fn codec(&self, key: &str) -> Result<Option<u8>, Error> {
        match self {
            Inner::Local(s) => Ok(s.engine().get(key)?.map(|v| v.codec())),
            Inner::Remote(r) => Ok(r.get_record(key)?.map(|v| v.codec())),
        }
    }

    fn contains(&self, key: &str) -> Result<bool, Error> {
        match self {
            Inner::Local(s) => s.engine().contains(key),
            Inner::Remote(r) => match r.remote_store() {
                Some(store) => store.contains(key),
                None => Ok(r
                    .dataset()
                    .is_some_and(|d| d.keys().binary_search_by(|k| k.as_str().cmp(key)).is_ok())),
            },
        }
    }

    fn len(&self) -> Result<u64, Error> {
        match self {
            Inner::Local(s) => Ok(s.engine().len()),
            Inner::Remote(r) => match r.remote_store() {
                Some(store) => Ok(store.stats().live_records),
                None => Ok(r.dataset().map_or(0, |d| d.keys().len() as u64)),
            },
        }
    }

    fn get_payload(&self, key: &str) -> Result<Option<Payload>, Error> {
        match self {
            Inner::Local(s) => s.get_payload(key),
            Inner::Remote(r) => r.get_payload(key),
        }
    }

    fn set_payload(&self, payload: &[u8], key: Option<&str>) -> Result<String, Error> {
        self.local()?.set_payload(payload, key)
    }

    fn keys(&self) -> Result<Vec<String>, Error> {
        match self {
            Inner::Local(s) => s.keys(),
            Inner::Remote(r) => r.keys(),
        }
    }
}

/// What an open handle holds.
struct Open {
    store: Inner,
    /// The process that opened it: a forked child reopens (see [`NativeStore::handle`]).
    pid: u32,
    /// Whether this handle may write (false for read-only handles, and in a forked child).
    writable: bool,
}

/// A store handle, as the Python `SquirrelStore` and `MessagepackDriver` use it.
#[pyclass(frozen, module = "squirrel_store._native", name = "Store")]
pub struct NativeStore {
    path: PathBuf,
    /// Set when `path` is a URL: the options it is opened with.
    remote: Option<RemoteOptions>,
    /// Whether the handle was opened read-only (rather than made so by a fork).
    opened_read_only: bool,
    serializer: MessagepackSerializer,
    state: RwLock<Option<Open>>,
}

/// A decoded shard, ready to become Python objects.
pub struct Decoded {
    payload: Payload,
    mapped: bool,
    nodes: Vec<Node>,
}

/// Why a shard could not be read on a worker thread.
pub enum ReadError {
    /// The engine's error.
    Store(Error),
    /// The payload is not valid MessagePack.
    Parse(String, ParseError),
}

impl ReadError {
    fn into_py(self, py: Python<'_>) -> PyErr {
        match self {
            ReadError::Store(e) => crate::errors::to_py(py, &e),
            ReadError::Parse(key, e) => raise(py, "CorruptionError", format!("shard {key:?}: {e}")),
        }
    }
}

/// Reads and parses one shard (no Python involved).
fn read_shard(store: &Inner, key: &str) -> Result<Decoded, ReadError> {
    // A remote record is fetched once, for its payload; its bytes are always owned.
    let record_codec = match store {
        Inner::Remote(_) => None,
        Inner::Local(_) => Some(store.codec(key).map_err(ReadError::Store)?),
    };
    let record_codec = match record_codec {
        None => 0,
        Some(Some(c)) => c,
        Some(None) => {
            return Err(ReadError::Store(Error::KeyNotFound {
                key: key.to_owned(),
            }));
        }
    };
    let payload = store
        .get_payload(key)
        .map_err(ReadError::Store)?
        .ok_or_else(|| {
            ReadError::Store(Error::KeyNotFound {
                key: key.to_owned(),
            })
        })?;
    let nodes = parse_payload(&payload).map_err(|e| ReadError::Parse(key.to_owned(), e))?;
    Ok(Decoded {
        payload,
        // Codec 1 (uncompressed MessagePack) is served straight out of the memory map.
        mapped: record_codec == squirrel_store::serializer::Codec::Msgpack.as_u8(),
        nodes,
    })
}

/// The samples of a decoded shard as a Python list.
fn build(py: Python<'_>, helpers: &Helpers<'_>, d: Decoded) -> PyResult<Py<PyList>> {
    let mut b = Builder::new(py, helpers, d.payload, d.mapped)?;
    let samples = b.samples(&d.nodes)?;
    Ok(PyList::new(py, samples)?.unbind())
}

fn parse_durability(s: &str) -> PyResult<Durability> {
    match s {
        "fsync" => Ok(Durability::Fsync),
        "buffered" => Ok(Durability::Buffered),
        _ => Err(PyValueError::new_err(format!(
            "durability must be \"fsync\" or \"buffered\", not {s:?}"
        ))),
    }
}

impl NativeStore {
    /// The open store, reopened read-only first when this is a forked child of the process
    /// that opened it: the parent's handle may hold locks taken by threads that do not exist
    /// here, and its writer lock belongs to the parent.
    fn handle(&self, py: Python<'_>) -> PyResult<(Inner, bool)> {
        let pid = std::process::id();
        {
            let st = self.state.read().map_err(|_| poisoned())?;
            match st.as_ref() {
                None => return Err(closed(py, &self.path)),
                Some(o) if o.pid == pid => return Ok((o.store.clone(), o.writable)),
                Some(_) => {}
            }
        }
        let mut st = self.state.write().map_err(|_| poisoned())?;
        let Some(old) = st.take() else {
            return Err(closed(py, &self.path));
        };
        if old.pid == pid {
            let out = (old.store.clone(), old.writable);
            *st = Some(old);
            return Ok(out);
        }
        // The parent's engine is left alone (never dropped here): dropping it could checkpoint
        // or unlock files the parent still owns.
        std::mem::forget(old);
        let store = py
            .detach(|| {
                Inner::open(
                    &self.path,
                    self.remote.as_ref(),
                    true,
                    Durability::Fsync,
                    &self.serializer,
                )
            })
            .py_err(py)?;
        *st = Some(Open {
            store: store.clone(),
            pid,
            writable: false,
        });
        Ok((store, false))
    }

    fn writable(&self, py: Python<'_>) -> PyResult<Inner> {
        let (store, writable) = self.handle(py)?;
        if !writable {
            let why = if !self.opened_read_only {
                " (a writable handle used in a forked child is read-only there)"
            } else {
                ""
            };
            return Err(raise(
                py,
                "ReadOnlyError",
                format!("store at {} is open read-only{why}", self.path.display()),
            ));
        }
        Ok(store)
    }
}

/// `RemoteOptions` from a Python dict of strings.
fn remote_options(options: std::collections::HashMap<String, String>) -> PyResult<RemoteOptions> {
    let mut opts = RemoteOptions::new();
    let mut cache_dir = None;
    let mut cache_max = None;
    let mut keys: Vec<_> = options.into_iter().collect();
    keys.sort();
    for (k, v) in keys {
        match k.as_str() {
            "cache_dir" => cache_dir = Some(PathBuf::from(v)),
            "cache_max_bytes" => {
                cache_max = Some(v.parse::<u64>().map_err(|_| {
                    PyValueError::new_err(format!("cache_max_bytes must be an integer, not {v:?}"))
                })?)
            }
            _ => opts = opts.option(k, v),
        }
    }
    if let Some(dir) = cache_dir {
        opts = opts.cache(dir, cache_max.unwrap_or(1 << 30));
    }
    Ok(opts)
}

fn poisoned() -> PyErr {
    PyRuntimeError::new_err("store handle lock poisoned by a panic")
}

fn closed(py: Python<'_>, path: &std::path::Path) -> PyErr {
    raise(
        py,
        "ClosedError",
        format!("store at {} is closed", path.display()),
    )
}

#[pymethods]
impl NativeStore {
    /// Opens (creating unless read-only) the store in directory `path`. `level` is the zstd
    /// level records are written with, or `None` to write them uncompressed; `min_saving` keeps
    /// a shard compressed only when zstd saves at least that fraction (as the Rust default,
    /// 0.2), `None` compresses every shard.
    #[new]
    ///
    /// A `path` that is a URL (`s3://`, `gs://`, `az://`, `http(s)://`, `file://`) opens a
    /// published store or dataset, read-only; `options` are then `object_store` keys
    /// (`aws_endpoint`, `aws_region`, ...) on top of the provider's environment variables, plus
    /// `cache_dir` and `cache_max_bytes` for a local record cache.
    #[pyo3(signature = (path, *, read_only = false, durability = "fsync", level = Some(3), min_saving = Some(0.2), options = None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        read_only: bool,
        durability: &str,
        level: Option<i32>,
        min_saving: Option<f64>,
        options: Option<std::collections::HashMap<String, String>>,
    ) -> PyResult<Self> {
        let durability = parse_durability(durability)?;
        let serializer = match (level, min_saving) {
            (Some(l), Some(f)) => MessagepackSerializer::new().level(l).min_saving(f),
            (Some(l), None) => MessagepackSerializer::new().level(l),
            (None, _) => MessagepackSerializer::new().uncompressed(),
        };
        let remote = match path.to_str().filter(|p| is_url(p)) {
            None => None,
            Some(url) => {
                if !read_only {
                    return Err(PyValueError::new_err(format!(
                        "stores on object storage are read-only: open {url:?} with read_only=True"
                    )));
                }
                Some(remote_options(options.unwrap_or_default())?)
            }
        };
        let store = py
            .detach(|| Inner::open(&path, remote.as_ref(), read_only, durability, &serializer))
            .py_err(py)?;
        Ok(NativeStore {
            path,
            remote,
            opened_read_only: read_only,
            state: RwLock::new(Some(Open {
                store,
                pid: std::process::id(),
                writable: !read_only,
            })),
            serializer,
        })
    }

    /// Stores `samples` (a list) as one shard under `key` (a random 16-character key when
    /// `None`); returns the key.
    #[pyo3(signature = (samples, key = None))]
    fn set(
        &self,
        py: Python<'_>,
        samples: &Bound<'_, PyList>,
        key: Option<String>,
    ) -> PyResult<String> {
        let store = self.writable(py)?;
        let enc = Encoder::new(py)?;
        let mut payload = Vec::new();
        for s in samples.iter() {
            enc.pack(&s, &mut payload)?;
        }
        let key = key.unwrap_or_else(random_key);
        py.detach(|| store.set_payload(&payload, Some(&key)))
            .py_err(py)
    }

    /// Stores an already-encoded payload (concatenated MessagePack samples) under `key`.
    #[pyo3(signature = (payload, key = None))]
    fn set_payload(&self, py: Python<'_>, payload: &[u8], key: Option<String>) -> PyResult<String> {
        let store = self.writable(py)?;
        let key = key.unwrap_or_else(random_key);
        py.detach(|| store.set_payload(payload, Some(&key)))
            .py_err(py)
    }

    /// The samples of the shard under `key`, as a list; `KeyNotFoundError` when there is none.
    fn get(&self, py: Python<'_>, key: &str) -> PyResult<Py<PyList>> {
        let (store, _) = self.handle(py)?;
        let decoded = py
            .detach(|| read_shard(&store, key))
            .map_err(|e| e.into_py(py))?;
        let helpers = Helpers::new(py)?;
        build(py, &helpers, decoded)
    }

    /// The shard's payload bytes (concatenated MessagePack samples), decompressed.
    fn get_payload<'py>(
        &self,
        py: Python<'py>,
        key: &str,
    ) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let (store, _) = self.handle(py)?;
        let payload = py.detach(|| store.get_payload(key)).py_err(py)?;
        match payload {
            Some(p) => Ok(pyo3::types::PyBytes::new(py, &p)),
            None => Err(crate::errors::to_py(
                py,
                &Error::KeyNotFound {
                    key: key.to_owned(),
                },
            )),
        }
    }

    /// Every key, sorted by bytes.
    fn keys(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let (store, _) = self.handle(py)?;
        py.detach(|| store.keys()).py_err(py)
    }

    /// Whether `key` holds a shard.
    fn contains(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let (store, _) = self.handle(py)?;
        py.detach(|| store.contains(key)).py_err(py)
    }

    /// The number of keys.
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        let (store, _) = self.handle(py)?;
        let n = py.detach(|| store.len()).py_err(py)?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Deletes `key`; returns whether it held a shard.
    fn delete(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let store = self.writable(py)?;
        py.detach(|| store.local()?.engine().delete(key)).py_err(py)
    }

    /// Makes everything written so far durable (for `durability="buffered"`).
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.writable(py)?;
        py.detach(|| store.local()?.engine().sync()).py_err(py)
    }

    /// Picks up what other handles wrote since this one opened (for read-only handles).
    fn refresh(&self, py: Python<'_>) -> PyResult<()> {
        let (store, _) = self.handle(py)?;
        match &store {
            // A published store does not change under its URL; a re-published one is detected
            // on read (open it again).
            Inner::Remote(_) => Ok(()),
            Inner::Local(s) => py.detach(|| s.engine().refresh()).py_err(py),
        }
    }

    /// Rewrites the store without dead records; returns the report as a dict.
    fn compact<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let store = self.writable(py)?;
        let r = py.detach(|| store.local()?.engine().compact()).py_err(py)?;
        let d = PyDict::new(py);
        d.set_item("segment_len_before", r.segment_len_before)?;
        d.set_item("segment_len_after", r.segment_len_after)?;
        d.set_item("segment_file_len_before", r.segment_file_len_before)?;
        d.set_item("segment_file_len_after", r.segment_file_len_after)?;
        d.set_item("dropped", r.dropped())?;
        d.set_item("reclaimed", r.reclaimed())?;
        d.set_item("live_records", r.live_records)?;
        d.set_item("carried_records", r.carried_records)?;
        Ok(d)
    }

    /// The engine's statistics as a dict.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let (store, _) = self.handle(py)?;
        let d = PyDict::new(py);
        let store = match &store {
            Inner::Local(s) => s,
            Inner::Remote(r) => {
                d.set_item("url", r.url())?;
                d.set_item("keys", py.detach(|| store.len()).py_err(py)?)?;
                d.set_item("read_only", true)?;
                if let Some(st) = r.remote_store().map(|s| s.stats()) {
                    d.set_item("live_records", st.live_records)?;
                    d.set_item("live_bytes", st.live_bytes)?;
                    d.set_item("dead_records", st.dead_records)?;
                    d.set_item("dead_bytes", st.dead_bytes)?;
                    d.set_item("segment_len", st.segment_len)?;
                    d.set_item("index_file_len", st.index_len)?;
                    d.set_item("format_version", st.format_version)?;
                    d.set_item("requests", st.requests)?;
                }
                if let Some(ds) = r.dataset() {
                    d.set_item("stores", ds.stores().len())?;
                }
                return Ok(d);
            }
        };
        let s = store.engine().stats();
        d.set_item("keys", store.engine().len())?;
        d.set_item("live_records", s.live_records)?;
        d.set_item("live_bytes", s.live_bytes)?;
        d.set_item("dead_records", s.dead_records)?;
        d.set_item("dead_bytes", s.dead_bytes)?;
        d.set_item("dead_ratio", s.dead_ratio())?;
        d.set_item("segment_len", s.segment_len)?;
        d.set_item("segment_file_len", s.segment_file_len)?;
        d.set_item("index_file_len", s.index_file_len)?;
        d.set_item("format_version", s.format_version)?;
        d.set_item("read_only", store.engine().is_read_only())?;
        d.set_item("compression_level", store.serializer().compression_level())?;
        d.set_item("min_saving", store.serializer().min_saving_fraction())?;
        Ok(d)
    }

    /// The store directory.
    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> PyResult<bool> {
        Ok(self.state.read().map_err(|_| poisoned())?.is_none())
    }

    /// Whether this handle refuses writes.
    #[getter]
    fn read_only(&self, py: Python<'_>) -> PyResult<bool> {
        Ok(!self.handle(py)?.1)
    }

    /// Checkpoints and closes the handle (idempotent). Arrays already returned stay valid.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.state.write().map_err(|_| poisoned())?.take();
        let Some(open) = taken else {
            return Ok(());
        };
        if open.pid != std::process::id() {
            // Not ours to close: the parent process owns it.
            std::mem::forget(open);
            return Ok(());
        }
        let engine = match &open.store {
            Inner::Local(s) => s.engine().clone(),
            Inner::Remote(_) => return Ok(()),
        };
        drop(open);
        py.detach(|| engine.close()).py_err(py)
    }

    /// Reads the shards under `keys` in that order, `workers` threads decoding with up to
    /// `prefetch` shards ahead; yields each shard's samples as a list.
    #[pyo3(signature = (keys, workers, prefetch))]
    fn iter_shards(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        workers: usize,
        prefetch: usize,
    ) -> PyResult<ShardIter> {
        let (store, _) = self.handle(py)?;
        Ok(ShardIter {
            inner: Mutex::new(Pipeline {
                store,
                keys: keys.into(),
                workers: workers.max(1),
                prefetch: prefetch.max(1),
                jobs: None,
                threads: Vec::new(),
                inflight: VecDeque::new(),
                pid: std::process::id(),
            }),
        })
    }
}

type Job = (String, Sender<Result<Decoded, ReadError>>);

struct Pipeline {
    store: Inner,
    keys: VecDeque<String>,
    workers: usize,
    prefetch: usize,
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    inflight: VecDeque<Receiver<Result<Decoded, ReadError>>>,
    pid: u32,
}

impl Pipeline {
    /// Starts the worker threads on first use (never at import or construction time).
    fn start(&mut self) -> PyResult<()> {
        if self.jobs.is_some() {
            return Ok(());
        }
        let (tx, rx) = unbounded::<Job>();
        for i in 0..self.workers.min(self.keys.len().max(1)) {
            let rx = rx.clone();
            let store = self.store.clone();
            let t = std::thread::Builder::new()
                .name(format!("squirrel-store-read-{i}"))
                .spawn(move || {
                    for (key, reply) in rx {
                        // The receiver is gone when the iterator was dropped: nothing to do.
                        let _ = reply.send(read_shard(&store, &key));
                    }
                })
                .map_err(|e| {
                    PyRuntimeError::new_err(format!("cannot start a reader thread: {e}"))
                })?;
            self.threads.push(t);
        }
        self.jobs = Some(tx);
        Ok(())
    }

    fn top_up(&mut self) {
        let Some(jobs) = &self.jobs else { return };
        while self.inflight.len() < self.prefetch {
            let Some(key) = self.keys.pop_front() else {
                break;
            };
            let (tx, rx) = bounded(1);
            if jobs.send((key, tx)).is_err() {
                break;
            }
            self.inflight.push_back(rx);
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        // Closing the job channel ends the workers after their current shard; they are not
        // joined, so dropping an iterator never waits.
        self.jobs = None;
        self.threads.clear();
    }
}

/// An iterator over the shards of `Store.iter_shards`, in key order.
#[pyclass(module = "squirrel_store._native")]
pub struct ShardIter {
    inner: Mutex<Pipeline>,
}

#[pymethods]
impl ShardIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyList>>> {
        let Ok(mut p) = self.inner.try_lock() else {
            return Err(PyValueError::new_err("shard iterator already executing"));
        };
        if p.pid != std::process::id() {
            return Err(raise(
                py,
                "Error",
                "a shard iterator cannot be used in a forked child; create it there".to_owned(),
            ));
        }
        p.start()?;
        p.top_up();
        let Some(rx) = p.inflight.pop_front() else {
            return Ok(None);
        };
        p.top_up();
        let result = py.detach(|| rx.recv());
        let decoded = match result {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(e.into_py(py)),
            Err(_) => return Err(PyRuntimeError::new_err("reader thread stopped")),
        };
        let helpers = Helpers::new(py)?;
        build(py, &helpers, decoded).map(Some)
    }
}
