//! Reading many shards as a training loop reads them: [`Loader`].
//!
//! A loader lists the keys (all of the store's, or the caller's), optionally shuffles them with a
//! seed, keeps this rank's share, and decodes the shards on a pool of worker threads while the
//! caller consumes them; when the shard whose turn it is is not ready yet, the consuming thread
//! decodes the next one nobody has started itself instead of waiting. Workers and the consumer
//! claim shards from one shared position under a short lock, with no channel hand-off per
//! shard, and a thread only sleeps (and is only woken) when it has nothing to do. It yields shards ([`ShardIter`]) or samples ([`SampleIter`]), in key
//! order by default, optionally mixed through a seeded shuffle buffer.
//!
//! # Memory
//! At most [`Loader::prefetch`] decoded shards are held at once (decoding, or done and waiting
//! for their turn), plus, for samples, the shard being handed out and the shuffle buffer: a
//! shard is only started, by a worker or by the consuming thread, when it is fewer than
//! `prefetch` positions ahead of the next one to hand out. A sample iterator also keeps up to
//! `prefetch + 2` emptied sample buffers to decode later shards into, each no larger than
//! 64 KiB or twice the samples it last held.
//!
//! # Determinism
//! Given the same keys, seed and options the output order is the same on every run and machine,
//! whatever the number of workers: shards are handed out in the planned order however fast each
//! one decodes, and the shuffles use a generator defined here (SplitMix64) rather than `rand`,
//! whose sequences may change between releases.
//!
//! # Errors and threads
//! A shard that cannot be read comes out as an `Err` item naming its key, and iteration goes on
//! with the next shard. Dropping an iterator early stops the workers: each finishes the shard it
//! is decoding and exits, and the drop waits for them, so no thread outlives the iterator. A
//! panic in a caller's `map` function is re-raised on the consuming thread.

use std::collections::VecDeque;
use std::fmt;
use std::num::NonZeroUsize;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use parking_lot::{Condvar, Mutex};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::shard::store::Store;

/// Which share of the keys a process reads: every `world_size`-th key of the (shuffled) key list,
/// starting at `rank`.
///
/// Every rank must plan with the same keys and seed; then the shares are disjoint and together
/// cover every key. Shares differ in size by at most one shard, so ranks that must step in lock
/// (distributed data parallel) should stop at the smallest share's length. To split further among data-loading processes of one rank, use
/// `Split::new(rank * workers + worker, world_size * workers)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    rank: usize,
    world_size: usize,
}

/// A rank that is not below the world size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rank {rank} is not below world size {world_size}")]
pub struct SplitError {
    /// The rank asked for.
    pub rank: usize,
    /// The world size asked for.
    pub world_size: usize,
}

impl Split {
    /// Share `rank` of `world_size`.
    ///
    /// # Errors
    ///
    /// [`SplitError`] unless `rank < world_size`.
    pub fn new(rank: usize, world_size: usize) -> std::result::Result<Split, SplitError> {
        if rank < world_size {
            Ok(Split { rank, world_size })
        } else {
            Err(SplitError { rank, world_size })
        }
    }

    /// This share's rank.
    #[must_use]
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of shares.
    #[must_use]
    pub fn world_size(&self) -> usize {
        self.world_size
    }
}

/// A configured read of many shards, as a consuming builder; [`Loader::shards`] or
/// [`Loader::samples`] starts it.
///
/// ```
/// use squirrel_store::loader::Split;
/// use squirrel_store::{SquirrelStore, Store};
///
/// let dir = tempfile::tempdir()?;
/// let store = SquirrelStore::open(dir.path())?;
/// for i in 0..8u32 {
///     store.set(&[i * 10, i * 10 + 1], Some(&format!("shard_{i}")))?;
/// }
///
/// // In key order, decoded on 4 threads.
/// let all: Vec<u32> = store.loader().workers(4).samples()?.collect::<Result<_, _>>()?;
/// assert_eq!(all[..4], [0, 1, 10, 11]);
///
/// // Rank 1 of 2, keys shuffled and samples mixed, reproducibly.
/// let mine: Vec<u32> = store
///     .loader()
///     .shuffle_keys(true)
///     .shuffle_samples(16)
///     .seed(7)
///     .split(Split::new(1, 2)?)
///     .samples()?
///     .collect::<Result<_, _>>()?;
/// assert_eq!(mine.len(), 8);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use]
pub struct Loader<St> {
    store: St,
    keys: Option<Vec<String>>,
    workers: usize,
    prefetch: Option<usize>,
    shuffle_keys: bool,
    item_buffer: usize,
    seed: u64,
    split: Option<Split>,
}

impl<St> fmt::Debug for Loader<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loader")
            .field("keys", &self.keys.as_ref().map(Vec::len))
            .field("workers", &self.workers)
            .field("prefetch", &self.prefetch_shards())
            .field("shuffle_keys", &self.shuffle_keys)
            .field("item_buffer", &self.item_buffer)
            .field("seed", &self.seed)
            .field("split", &self.split)
            .finish_non_exhaustive()
    }
}

impl<St> Loader<St> {
    fn prefetch_shards(&self) -> usize {
        self.prefetch.unwrap_or(2 * self.workers + 2).max(1)
    }
}

impl<St: Store + Clone + 'static> Loader<St> {
    /// A loader over every key of `store`, in key order, with one worker per core, no shuffling,
    /// seed 0 and no split.
    pub fn new(store: St) -> Self {
        Loader {
            store,
            keys: None,
            workers: thread::available_parallelism().map_or(1, NonZeroUsize::get),
            prefetch: None,
            shuffle_keys: false,
            item_buffer: 1,
            seed: 0,
            split: None,
        }
    }

    /// Reads these keys, in this order, instead of all of the store's. A key without a shard
    /// comes out as an [`Error::KeyNotFound`] item.
    pub fn keys(mut self, keys: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.keys = Some(keys.into_iter().map(Into::into).collect());
        self
    }

    /// Decodes on `n` worker threads (default: one per core), helped by the consuming thread
    /// whenever the shard whose turn it is is not ready. `0` decodes on the consuming thread,
    /// with no threads at all.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Holds at most `shards` decoded shards ahead of the consumer (default: twice the
    /// workers plus two, room for every decoding thread, the consuming one included, to have
    /// one shard in hand and one done; at least 1). Fewer than the workers leaves some of them
    /// idle.
    pub fn prefetch(mut self, shards: usize) -> Self {
        self.prefetch = Some(shards);
        self
    }

    /// Shuffles the whole key list with the seed before splitting it (squirrel shuffles keys
    /// through a buffer; the list is known here, so this is a full permutation).
    pub fn shuffle_keys(mut self, yes: bool) -> Self {
        self.shuffle_keys = yes;
        self
    }

    /// Mixes samples through a buffer of `items` (squirrel's `shuffle_item_buffer`): the buffer
    /// fills, then each sample handed out is drawn at random from it and replaced by the next.
    /// `0` or `1` keeps samples in order. Applies to [`Loader::samples`].
    pub fn shuffle_samples(mut self, items: usize) -> Self {
        self.item_buffer = items.max(1);
        self
    }

    /// The seed of both shuffles (default 0). Vary it per epoch, e.g. `base_seed + epoch`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Reads only this share of the keys; see [`Split`].
    pub fn split(mut self, split: Split) -> Self {
        self.split = Some(split);
        self
    }

    /// The keys this loader will read, in order: listed, shuffled, then split.
    ///
    /// # Errors
    ///
    /// As [`Store::keys`] when no keys were given.
    pub fn plan(&self) -> Result<Vec<String>> {
        let mut keys = match &self.keys {
            Some(keys) => keys.clone(),
            None => self.store.keys()?,
        };
        if self.shuffle_keys {
            shuffle(&mut keys, &mut Rng::new(self.seed, Stream::Keys));
        }
        Ok(match self.split {
            Some(Split { rank, world_size }) => {
                keys.into_iter().skip(rank).step_by(world_size).collect()
            }
            None => keys,
        })
    }

    /// The shards, typed, in the planned order.
    ///
    /// # Errors
    ///
    /// As [`Loader::plan`]. Each shard then comes as a `Result`: [`Error::Shard`] naming the key
    /// of a shard that does not decode, [`Error::KeyNotFound`] for a key without a shard, or the
    /// engine's error for that key.
    pub fn shards<T>(self) -> Result<ShardIter<T>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        self.shards_map(|sample: T| sample)
    }

    /// [`Loader::shards`], each sample passed through `f` on the thread that decoded it (for
    /// per-sample preprocessing that should use the cores too): a worker, or the consuming
    /// thread when it decodes a shard itself rather than wait.
    ///
    /// `f` may run as each sample is decoded (a [`SquirrelStore`](crate::SquirrelStore) decodes
    /// straight into the shard's buffer, see [`Store::get_into`]): it can see samples of a shard
    /// that then fails to decode, which still comes out as one `Err`, and a panic in `f` comes out
    /// in place of a later sample's decoding error.
    ///
    /// # Errors
    ///
    /// As [`Loader::shards`].
    pub fn shards_map<T, U, F>(self, f: F) -> Result<ShardIter<U>>
    where
        T: DeserializeOwned + 'static,
        U: Send + 'static,
        F: Fn(T) -> U + Send + Sync + 'static,
    {
        let keys = self.plan()?;
        let prefetch = self.prefetch_shards();
        let store = self.store;
        let job = move |key: &str, out: &mut Vec<U>| -> Result<()> {
            if store.get_into::<T, U>(key, out, &f)? {
                Ok(())
            } else {
                Err(Error::KeyNotFound {
                    key: key.to_owned(),
                })
            }
        };
        Ok(ShardIter::start(
            keys,
            Arc::new(job),
            self.workers,
            prefetch,
        ))
    }

    /// The samples of the planned shards, typed, in order or through the shuffle buffer.
    ///
    /// # Errors
    ///
    /// As [`Loader::shards`]; a shard's error comes out in place of its samples.
    pub fn samples<T>(self) -> Result<SampleIter<T>>
    where
        T: DeserializeOwned + Send + 'static,
    {
        self.samples_map(|sample: T| sample)
    }

    /// [`Loader::samples`], each sample passed through `f` on the thread that decoded it (see
    /// [`Loader::shards_map`]).
    ///
    /// # Errors
    ///
    /// As [`Loader::shards`].
    pub fn samples_map<T, U, F>(self, f: F) -> Result<SampleIter<U>>
    where
        T: DeserializeOwned + 'static,
        U: Send + 'static,
        F: Fn(T) -> U + Send + Sync + 'static,
    {
        let buffer = self.item_buffer;
        // Ranks draw different sample orders from one seed; keys are shuffled identically.
        let rank = self.split.map_or(0, |s| s.rank) as u64;
        let rng = Rng::new(
            self.seed.wrapping_add(rank.wrapping_mul(Rng::GAMMA)),
            Stream::Samples,
        );
        let shards = self.shards_map(f)?;
        Ok(SampleIter {
            shards,
            current: VecDeque::new(),
            current_len: 0,
            buffer: Vec::with_capacity(buffer.min(1 << 16)),
            capacity: buffer,
            rng,
        })
    }
}

/// One decoded shard and its key.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard<T> {
    /// The shard's key.
    pub key: String,
    /// Its samples, in stored order.
    pub samples: Vec<T>,
}

/// Decodes the shard under a key into the (empty) `Vec` it is given.
/// Bytes of sample array a spare buffer may have whatever it last held (see
/// [`ShardIter::give_back`]).
const SPARE_FLOOR: usize = 64 << 10;

type Job<U> = Arc<dyn Fn(&str, &mut Vec<U>) -> Result<()> + Send + Sync>;

/// What decoding shard `i` gave: the shard or its error, or the panic of the caller's function.
type Outcome<U> = thread::Result<Result<Shard<U>>>;

/// The state the consumer and the workers share, under one lock held only for a few field
/// updates (never while decoding).
///
/// Shards are claimed in plan order by whoever is free (a worker, or the consumer when the shard
/// whose turn it is is not ready), but only within a window of `prefetch` positions from the
/// next one to hand out, so at most `prefetch` decoded shards exist at once. A decoded shard
/// waits in the ring slot of its position. No thread waits on another unless it has nothing to
/// do: workers when the window is full, the consumer when every shard of the window is claimed
/// and its turn's is still being decoded; each is woken only if it is waiting.
struct State<U> {
    /// Position of the first shard nobody has claimed yet.
    claimed: usize,
    /// Position of the next shard to hand out.
    next: usize,
    /// Decoded shards waiting for their turn, at `position % prefetch`.
    slots: Vec<Option<Outcome<U>>>,
    /// The consumer is blocked until the shard at `next` is decoded.
    consumer_waiting: bool,
    /// Workers blocked until the window moves.
    workers_waiting: usize,
    /// The iterator is being dropped: workers exit.
    stop: bool,
    /// Emptied sample `Vec`s the consumer gave back, for the next shards to be decoded into.
    ///
    /// Without them each shard's `Vec` is allocated on a worker and freed on the consumer, and
    /// with glibc's allocator that large allocation also merges every small block the consumer
    /// freed back into the worker's heap (`malloc_consolidate`), so the worker's next small
    /// allocations (a sample's strings) take the slow path. Reusing them took the loader's CPU
    /// time on the seed workload from 1.17–1.20× the plain loop's to 1.11–1.13×. At most
    /// `prefetch + 2` are kept (see [`ShardIter::next`]), and a buffer only while it is small or
    /// at most twice the size of the samples it last held (see [`ShardIter::give_back`]): after
    /// one outsized shard its buffer goes back to the allocator rather than stay in circulation.
    spares: Vec<Vec<U>>,
}

impl<U> State<U> {
    /// A `Vec` to decode a shard into: a spare, or a new one.
    fn spare(&mut self) -> Vec<U> {
        self.spares.pop().unwrap_or_default()
    }
}

struct Shared<U> {
    keys: Vec<String>,
    prefetch: usize,
    job: Job<U>,
    state: Mutex<State<U>>,
    consumer: Condvar,
    workers: Condvar,
}

impl<U> Shared<U> {
    /// Decodes shard `index` into `samples` (empty).
    fn decode(&self, index: usize, mut samples: Vec<U>) -> Result<Shard<U>> {
        let key = &self.keys[index];
        (self.job)(key, &mut samples).map(|()| Shard {
            key: key.clone(),
            samples,
        })
    }

    /// A worker's loop: claim the first unclaimed shard of the window, decode it, put it in its
    /// slot; until every shard is claimed or the iterator is dropped.
    fn work(&self) {
        let mut state = self.state.lock();
        loop {
            if state.stop || state.claimed >= self.keys.len() {
                return;
            }
            if state.claimed >= state.next + self.prefetch {
                state.workers_waiting += 1;
                self.workers.wait(&mut state);
                state.workers_waiting -= 1;
                continue;
            }
            let index = state.claimed;
            state.claimed += 1;
            let spare = state.spare();
            drop(state);
            // A panic in the caller's function must reach the consumer, or it would wait
            // forever for this shard.
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| self.decode(index, spare)));
            state = self.state.lock();
            state.slots[index % self.prefetch] = Some(outcome);
            if state.consumer_waiting && index == state.next {
                self.consumer.notify_one();
            }
        }
    }
}

/// The shards of a [`Loader`], decoded on worker threads and handed out in the planned order.
///
/// Yields `Result<Shard<T>>`; an `Err` names the key it concerns and iteration goes on after it.
/// Dropping the iterator stops and joins the workers.
pub struct ShardIter<T> {
    shared: Arc<Shared<T>>,
    /// Position of the next shard to hand out (the consumer's copy of `State::next`).
    next: usize,
    /// Whether there are workers; without, the consuming thread decodes every shard in turn.
    threaded: bool,
    workers: Vec<JoinHandle<()>>,
    /// An emptied sample `Vec` given back (see [`State::spares`]), kept until the next turn.
    given_back: Option<Vec<T>>,
}

impl<T> fmt::Debug for ShardIter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardIter")
            .field("next", &self.next)
            .field("remaining", &(self.shared.keys.len() - self.next))
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> ShardIter<T> {
    fn start(keys: Vec<String>, job: Job<T>, workers: usize, prefetch: usize) -> Self {
        let prefetch = prefetch.max(1);
        let shared = Arc::new(Shared {
            prefetch,
            job,
            state: Mutex::new(State {
                claimed: 0,
                next: 0,
                slots: (0..prefetch.min(keys.len())).map(|_| None).collect(),
                consumer_waiting: false,
                workers_waiting: 0,
                stop: false,
                spares: Vec::new(),
            }),
            keys,
            consumer: Condvar::new(),
            workers: Condvar::new(),
        });
        // Never more workers than shards the window lets them hold, or than shards.
        let wanted = workers.min(prefetch).min(shared.keys.len());
        let mut handles = Vec::new();
        for id in 0..wanted {
            let shared = shared.clone();
            let spawned = thread::Builder::new()
                .name(format!("squirrel-loader-{id}"))
                .spawn(move || shared.work());
            // Out of threads: carry on with the workers there are (or on this thread).
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(_) => break,
            }
        }
        ShardIter {
            shared,
            next: 0,
            threaded: !handles.is_empty(),
            workers: handles,
            given_back: None,
        }
    }

    /// Takes back a shard's sample `Vec` once its samples were moved out, to decode a later
    /// shard into; `held` is how many samples it held when it was handed out. Any samples still
    /// in it are dropped. A buffer of more than [`SPARE_FLOOR`] bytes is kept only if it is at
    /// most twice the size of those samples, so that a spare is never much larger than the
    /// shards it serves.
    fn give_back(&mut self, mut samples: Vec<T>, held: usize) {
        samples.clear();
        let size = std::mem::size_of::<T>().max(1);
        let bytes = samples.capacity().saturating_mul(size);
        let keep = SPARE_FLOOR.max(held.saturating_mul(size).saturating_mul(2));
        if samples.capacity() > 0 && bytes <= keep {
            self.given_back = Some(samples);
        }
    }
}

impl<T: Send + 'static> Iterator for ShardIter<T> {
    type Item = Result<Shard<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        let shared = &*self.shared;
        let index = self.next;
        if index >= shared.keys.len() {
            return None;
        }
        if !self.threaded {
            self.next += 1;
            return Some(shared.decode(index, self.given_back.take().unwrap_or_default()));
        }
        let prefetch = shared.prefetch;
        let mut state = shared.state.lock();
        // At most `prefetch + 2` buffers are ever in use at once: the window's shards, the
        // consumer's current one and the one it gives back. Keeping that many means a buffer is
        // never dropped here only to be allocated again.
        if let Some(spare) = self.given_back.take()
            && state.spares.len() < prefetch + 2
        {
            state.spares.push(spare);
        }
        let outcome = loop {
            if let Some(outcome) = state.slots[index % prefetch].take() {
                break outcome;
            }
            if state.claimed < index + prefetch && state.claimed < shared.keys.len() {
                // Rather than wait, decode the first unclaimed shard (often the one whose turn
                // it is): the consuming thread's core is not left idle, and a descheduled worker
                // holds up less. It counts against `prefetch` like a worker's.
                let claim = state.claimed;
                state.claimed += 1;
                let spare = state.spare();
                drop(state);
                // Caught like a worker's, so that a panic comes out at its shard's turn and
                // leaves the claimed shard accounted for.
                let outcome = panic::catch_unwind(AssertUnwindSafe(|| shared.decode(claim, spare)));
                state = shared.state.lock();
                if claim == index {
                    break outcome;
                }
                state.slots[claim % prefetch] = Some(outcome);
                continue;
            }
            // Every shard of the window is claimed and ours is still being decoded.
            if self.workers.iter().all(JoinHandle::is_finished) {
                // Every worker is gone, which only a failure outside the job can cause: stop
                // rather than wait for results that cannot come.
                return None;
            }
            state.consumer_waiting = true;
            shared.consumer.wait(&mut state);
            state.consumer_waiting = false;
        };
        // The window moves by one: a waiting worker may claim again.
        state.next = index + 1;
        if state.workers_waiting > 0 {
            shared.workers.notify_one();
        }
        drop(state);
        self.next = index + 1;
        Some(outcome.unwrap_or_else(|panicked| panic::resume_unwind(panicked)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.shared.keys.len() - self.next;
        (left, Some(left))
    }
}

impl<T> Drop for ShardIter<T> {
    fn drop(&mut self) {
        // Each worker exits once its current shard is done.
        self.shared.state.lock().stop = true;
        self.shared.workers.notify_all();
        for handle in self.workers.drain(..) {
            // A worker's own panic was already caught and sent; nothing is left to report.
            let _ = handle.join();
        }
    }
}

/// The samples of a [`Loader`]'s shards, in order or through its shuffle buffer.
///
/// Yields `Result<T>`; a shard that cannot be read comes out as one `Err` naming its key, in
/// place of its samples, and iteration goes on after it.
pub struct SampleIter<T> {
    shards: ShardIter<T>,
    /// The samples of the current shard not handed out yet. A deque rather than a `Vec`'s
    /// `IntoIter`, so that its buffer, once empty, goes back to the workers (see
    /// [`State::spares`]).
    current: VecDeque<T>,
    /// How many samples the current shard held when it arrived.
    current_len: usize,
    buffer: Vec<T>,
    capacity: usize,
    rng: Rng,
}

impl<T> fmt::Debug for SampleIter<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SampleIter")
            .field("shards", &self.shards)
            .field("buffered", &self.buffer.len())
            .field("buffer_capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> SampleIter<T> {
    /// The next shard, once the current one's emptied buffer is given back.
    fn next_shard(&mut self) -> Option<Result<Shard<T>>> {
        // Empty: the conversion moves nothing and keeps the buffer.
        self.shards.give_back(
            Vec::from(std::mem::take(&mut self.current)),
            self.current_len,
        );
        self.current_len = 0;
        self.shards.next()
    }

    /// Makes `shard`'s samples the ones handed out next.
    fn start(&mut self, shard: Shard<T>) {
        self.current_len = shard.samples.len();
        self.current = VecDeque::from(shard.samples);
    }
}

impl<T: Send + 'static> Iterator for SampleIter<T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Result<T>> {
        if self.capacity <= 1 {
            // No mixing: hand samples out of the shard as they are, without a trip through the
            // buffer (the same order a buffer of one gives).
            loop {
                if let Some(sample) = self.current.pop_front() {
                    return Some(Ok(sample));
                }
                match self.next_shard()? {
                    Ok(shard) => self.start(shard),
                    Err(e) => return Some(Err(e)),
                }
            }
        }
        while self.buffer.len() < self.capacity {
            if let Some(sample) = self.current.pop_front() {
                self.buffer.push(sample);
                continue;
            }
            match self.next_shard() {
                Some(Ok(shard)) => self.start(shard),
                // Errors pass the buffer: they are not samples to mix.
                Some(Err(e)) => return Some(Err(e)),
                None => break,
            }
        }
        if self.buffer.is_empty() {
            return None;
        }
        let pick = self.rng.below(self.buffer.len());
        Some(Ok(self.buffer.swap_remove(pick)))
    }
}

/// Fisher–Yates with [`Rng`], so a seed gives the same order whatever `rand` version is in use.
fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

/// Which shuffle a generator is for, so the two draw independent sequences from one seed.
#[derive(Clone, Copy)]
enum Stream {
    Keys = 1,
    Samples = 2,
}

/// SplitMix64 (Steele, Lea and Flood, 2014): tiny, fast, and fixed here so shuffles are stable.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    fn new(seed: u64, stream: Stream) -> Rng {
        let mut rng = Rng(seed);
        // Offsetting by a scrambled stream number keeps the streams apart for every seed.
        rng.0 = rng.0.wrapping_add(Rng(stream as u64).next_u64());
        rng
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`0` when `n` is 0), by Lemire's multiply-and-reject: no modulo bias.
    fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_in_range_and_covers_it() {
        let mut rng = Rng::new(42, Stream::Keys);
        let mut seen = [0u32; 7];
        for _ in 0..7000 {
            let v = rng.below(7);
            seen[v] += 1;
        }
        assert!(seen.iter().all(|&c| c > 800), "{seen:?}");
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.below(1), 0);
    }

    #[test]
    fn streams_differ() {
        let a = Rng::new(5, Stream::Keys).next_u64();
        let b = Rng::new(5, Stream::Samples).next_u64();
        assert_ne!(a, b);
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let orig: Vec<u32> = (0..100).collect();
        let mut a = orig.clone();
        let mut b = orig.clone();
        shuffle(&mut a, &mut Rng::new(9, Stream::Keys));
        shuffle(&mut b, &mut Rng::new(9, Stream::Keys));
        assert_eq!(a, b);
        assert_ne!(a, orig);
        a.sort_unstable();
        assert_eq!(a, orig);
    }
}
