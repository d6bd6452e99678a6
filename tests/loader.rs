//! The loader: order, seeded shuffles, rank splits, early drop, real parallelism, errors that name
//! the key, and a shard of one 120 MiB sample.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, ThreadId};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use squirrel_store::array::NdArray;
use squirrel_store::loader::Split;
use squirrel_store::serializer::{Codec, MessagepackSerializer, ShardError};
use squirrel_store::{Config, Durability, Error, SquirrelStore, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
struct Item {
    shard: u32,
    index: u32,
}

const SHARDS: u32 = 40;

fn open(dir: &Path) -> SquirrelStore {
    let engine = Config::new(dir)
        .durability(Durability::Buffered)
        .open()
        .expect("opens");
    SquirrelStore::new(engine, MessagepackSerializer::default())
}

/// Shards `shard_00` .. `shard_39`; shard `s` holds `1 + s % 5` items.
fn filled(dir: &Path) -> SquirrelStore {
    let store = open(dir);
    let shards: Vec<(String, Vec<Item>)> = (0..SHARDS)
        .map(|shard| {
            let items = (0..1 + shard % 5)
                .map(|index| Item { shard, index })
                .collect();
            (format!("shard_{shard:02}"), items)
        })
        .collect();
    store.set_many(&shards).expect("set_many");
    store
}

fn all_items() -> Vec<Item> {
    (0..SHARDS)
        .flat_map(|shard| (0..1 + shard % 5).map(move |index| Item { shard, index }))
        .collect()
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn keys_of(loader: squirrel_store::Loader<SquirrelStore>) -> Vec<String> {
    loader
        .shards::<Item>()
        .expect("starts")
        .map(|s| s.expect("shard").key)
        .collect()
}

#[test]
fn order_is_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled(dir.path());
    for workers in [0, 1, 4] {
        let shards: Vec<_> = store
            .loader()
            .workers(workers)
            .prefetch(3)
            .shards::<Item>()
            .expect("starts")
            .map(|s| s.expect("shard"))
            .collect();
        let keys: Vec<&str> = shards.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, store.keys().expect("keys"), "workers {workers}");
        let items: Vec<Item> = shards.into_iter().flat_map(|s| s.samples).collect();
        assert_eq!(items, all_items(), "workers {workers}");

        let samples: Vec<Item> = store
            .loader()
            .workers(workers)
            .samples()
            .expect("starts")
            .collect::<Result<_, _>>()
            .expect("samples");
        assert_eq!(samples, all_items(), "workers {workers}");
    }
    // A given key list is read in its own order.
    let picked: Vec<Item> = store
        .loader()
        .keys(["shard_07", "shard_02"])
        .samples()
        .expect("starts")
        .collect::<Result<_, _>>()
        .expect("samples");
    assert_eq!(picked.first(), Some(&Item { shard: 7, index: 0 }));
    assert_eq!(picked.len(), 3 + 3);
}

#[test]
fn key_shuffle_is_seeded_and_a_permutation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled(dir.path());
    let all = store.keys().expect("keys");
    let run = |seed: u64, workers: usize| {
        keys_of(
            store
                .loader()
                .shuffle_keys(true)
                .seed(seed)
                .workers(workers),
        )
    };
    let a = run(1, 4);
    assert_eq!(a, run(1, 4), "same seed, same order");
    assert_eq!(a, run(1, 1), "whatever the number of workers");
    assert_eq!(
        a,
        store
            .loader()
            .shuffle_keys(true)
            .seed(1)
            .plan()
            .expect("plan")
    );
    assert_ne!(a, all, "shuffled");
    assert_ne!(a, run(2, 4), "another seed, another order");
    assert_eq!(sorted(a), all, "a permutation");
}

#[test]
fn rank_splits_are_disjoint_and_cover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled(dir.path());
    let all = store.keys().expect("keys");
    for world_size in [1, 3, 8] {
        let mut seen = HashSet::new();
        for rank in 0..world_size {
            let split = Split::new(rank, world_size).expect("valid split");
            let mine = keys_of(store.loader().shuffle_keys(true).seed(11).split(split));
            assert!(mine.len().abs_diff(all.len() / world_size) <= 1);
            for key in mine {
                assert!(seen.insert(key), "a key in two ranks");
            }
        }
        assert_eq!(
            sorted(seen.into_iter().collect()),
            all,
            "world {world_size}"
        );
    }
    assert!(Split::new(3, 3).is_err());
    assert!(Split::new(0, 0).is_err());
}

#[test]
fn item_buffer_shuffle_is_seeded_and_a_permutation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled(dir.path());
    let run = |seed: u64, buffer: usize| -> Vec<Item> {
        store
            .loader()
            .shuffle_samples(buffer)
            .seed(seed)
            .samples()
            .expect("starts")
            .collect::<Result<_, _>>()
            .expect("samples")
    };
    let a = run(5, 16);
    assert_eq!(a, run(5, 16));
    assert_ne!(a, all_items());
    assert_ne!(a, run(6, 16));
    assert_eq!(sorted(a.clone()), all_items());
    // A buffer bigger than the dataset is a full shuffle; a buffer of one keeps the order.
    assert_eq!(sorted(run(5, 10_000)), all_items());
    assert_eq!(run(5, 1), all_items());
    // A buffer of N moves no sample earlier than N - 1 places before its position.
    for (pos, item) in a.iter().enumerate() {
        let orig = all_items().iter().position(|x| x == item).expect("present");
        assert!(orig <= pos + 15, "{item:?} at {pos}, was {orig}");
    }
}

#[test]
fn dropping_early_stops_and_joins_the_workers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled(dir.path());
    // The map function holds a clone of `alive` on every worker; once the iterator is dropped the
    // count is back to one only if every worker thread has ended.
    let alive = Arc::new(());
    let held = alive.clone();
    let mut samples = store
        .loader()
        .workers(4)
        .prefetch(2)
        .samples_map(move |item: Item| {
            let _ = &held;
            item
        })
        .expect("starts");
    for _ in 0..3 {
        samples.next().expect("item").expect("decodes");
    }
    drop(samples);
    assert_eq!(
        Arc::strong_count(&alive),
        1,
        "a worker outlived the iterator"
    );

    // Dropped before the first item, too.
    let shards = store.loader().workers(4).shards::<Item>().expect("starts");
    drop(shards);
}

#[test]
fn decodes_on_several_threads_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled(dir.path());
    // Each call waits until a second thread has called too: with a serial loader it could only
    // time out (once; later calls then skip the wait) and the test fails; with a parallel one it
    // passes without depending on timing.
    let seen = Arc::new((
        Mutex::new((HashSet::<ThreadId>::new(), false)),
        Condvar::new(),
    ));
    let shared = seen.clone();
    let items: Vec<Item> = store
        .loader()
        .workers(4)
        .samples_map(move |item: Item| {
            let (lock, cond) = &*shared;
            let mut state = lock.lock().expect("lock");
            state.0.insert(thread::current().id());
            cond.notify_all();
            let (mut state, waited) = cond
                .wait_timeout_while(state, Duration::from_secs(10), |(ids, gave_up)| {
                    ids.len() < 2 && !*gave_up
                })
                .expect("lock");
            state.1 |= waited.timed_out();
            item
        })
        .expect("starts")
        .collect::<Result<_, _>>()
        .expect("samples");
    assert_eq!(items, all_items());
    let state = seen.0.lock().expect("lock");
    let ids = &state.0;
    assert!(ids.len() >= 2, "decoded on {} thread(s)", ids.len());
    // The caller may have decoded some shards itself (it helps rather than wait), but never all.
    assert!(
        ids.iter().any(|id| *id != thread::current().id()),
        "only on the caller"
    );
}

#[test]
fn errors_name_the_key_and_iteration_goes_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled(dir.path());
    store
        .engine()
        .put(
            "shard_05",
            Codec::MsgpackZstd.as_u8(),
            b"\x28\xb5\x2f\xfd garbage",
        )
        .expect("put");
    let out: Vec<_> = store
        .loader()
        .workers(4)
        .shards::<Item>()
        .expect("starts")
        .collect();
    assert_eq!(out.len(), SHARDS as usize);
    for (i, shard) in out.iter().enumerate() {
        match shard {
            Ok(s) => assert_ne!(i, 5, "{}", s.key),
            Err(Error::Shard {
                key,
                source: ShardError::Decompress(_),
            }) => assert_eq!((i, key.as_str()), (5, "shard_05")),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    // Samples: the error in place of the shard's samples.
    let samples: Vec<_> = store.loader().samples::<Item>().expect("starts").collect();
    let errors: Vec<String> = samples
        .iter()
        .filter_map(|s| s.as_ref().err().map(ToString::to_string))
        .collect();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("shard_05"), "{}", errors[0]);
    // Shard 5 held one item; its error stands in its place.
    assert_eq!(samples.len(), all_items().len());
    // A listed key without a shard.
    let out: Vec<_> = store
        .loader()
        .keys(["shard_01", "no_such_shard"])
        .shards::<Item>()
        .expect("starts")
        .collect();
    assert!(out[0].is_ok());
    assert!(
        matches!(&out[1], Err(Error::KeyNotFound { key }) if key == "no_such_shard"),
        "{:?}",
        out[1]
    );
}

#[test]
#[should_panic(expected = "boom in map")]
fn a_panic_in_map_reaches_the_consumer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled(dir.path());
    let samples = store
        .loader()
        .workers(2)
        .samples_map(|item: Item| {
            assert!(item.shard != 3, "boom in map");
            item
        })
        .expect("starts");
    for s in samples {
        s.expect("decodes");
    }
}

#[derive(Serialize, Deserialize)]
struct Big {
    data: NdArray,
}

#[test]
fn one_sample_of_120_mib() {
    // Above 100 MiB, so bin32 lengths and the engine's large-record path are real.
    const LEN: usize = 120 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Config::new(dir.path())
        .durability(Durability::Buffered)
        .open()
        .expect("opens");
    // Level 1: the test is about size, not ratio, and it keeps compression well under a second.
    let store = SquirrelStore::new(engine, MessagepackSerializer::new().level(1));
    let data: Vec<u8> = (0..LEN).map(|i| (i / 4096) as u8 ^ (i as u8)).collect();
    let big = Big {
        data: NdArray::new("|u1", [LEN], data).expect("valid"),
    };
    store
        .set(std::slice::from_ref(&big), Some("big"))
        .expect("set");

    let shards: Vec<_> = store
        .loader()
        .workers(2)
        .keys(["big"])
        .shards::<Big>()
        .expect("starts")
        .collect::<Result<_, _>>()
        .expect("decodes");
    assert_eq!(shards.len(), 1);
    assert_eq!(shards[0].samples.len(), 1);
    assert!(
        shards[0].samples[0].data == big.data,
        "120 MiB sample differs"
    );
}

#[test]
fn a_panic_comes_out_at_its_shards_turn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled(dir.path());
    for workers in [0, 1, 2, 4] {
        let mut got = Vec::new();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let samples = store
                .loader()
                .workers(workers)
                .samples_map(|item: Item| {
                    assert!(item.shard != 7, "boom in map");
                    item
                })
                .expect("starts");
            for s in samples {
                got.push(s.expect("decodes"));
            }
        }));
        assert!(caught.is_err(), "workers {workers}: no panic");
        // Whichever thread decoded shard 7, its panic comes after every earlier shard's items
        // and before any later one's.
        let before: Vec<Item> = all_items().into_iter().filter(|i| i.shard < 7).collect();
        assert_eq!(got, before, "workers {workers}");
    }
}

/// Counts the live items a loader has decoded and the caller not yet dropped.
struct Counted {
    live: Arc<Mutex<(usize, usize)>>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.live.lock().expect("lock").0 -= 1;
    }
}

#[test]
fn at_most_prefetch_shards_are_decoded_ahead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled(dir.path());
    for (workers, prefetch) in [(1, 1), (2, 2), (4, 3), (3, 8)] {
        // (live items now, most ever live)
        let live = Arc::new(Mutex::new((0usize, 0usize)));
        let counter = live.clone();
        let shards = store
            .loader()
            .workers(workers)
            .prefetch(prefetch)
            .shards_map(move |_: Item| {
                let mut state = counter.lock().expect("lock");
                state.0 += 1;
                state.1 = state.1.max(state.0);
                Counted {
                    live: counter.clone(),
                }
            })
            .expect("starts");
        let mut n = 0;
        for shard in shards {
            // Held while the loader goes on decoding: the one handed out counts on top.
            let shard = shard.expect("shard");
            n += shard.samples.len();
        }
        assert_eq!(n, all_items().len());
        let (now, most) = *live.lock().expect("lock");
        assert_eq!(now, 0);
        // A shard holds at most 5 items: `prefetch` shards in the window, plus the one held.
        assert!(
            most <= (prefetch + 1) * 5,
            "workers {workers}, prefetch {prefetch}: {most} items live at once"
        );
    }
}

/// A store that reads through a [`SquirrelStore`] and records, for each shard the loader decodes,
/// the length and capacity of the `Vec` it was handed.
#[derive(Clone)]
struct Recording {
    inner: SquirrelStore,
    seen: Arc<Mutex<Vec<(usize, usize)>>>,
}

impl Store for Recording {
    fn set_payload(&self, payload: &[u8], key: Option<&str>) -> squirrel_store::Result<String> {
        self.inner.set_payload(payload, key)
    }

    fn get_payload(
        &self,
        key: &str,
    ) -> squirrel_store::Result<Option<squirrel_store::store::Payload>> {
        self.inner.get_payload(key)
    }

    fn keys(&self) -> squirrel_store::Result<Vec<String>> {
        self.inner.keys()
    }

    fn get_into<T, U>(
        &self,
        key: &str,
        out: &mut Vec<U>,
        f: impl FnMut(T) -> U,
    ) -> squirrel_store::Result<bool>
    where
        T: serde::de::DeserializeOwned,
    {
        self.seen
            .lock()
            .expect("not poisoned")
            .push((out.len(), out.capacity()));
        self.inner.get_into(key, out, f)
    }
}

/// Every sample of `inner` through a loader over a [`Recording`] of it (prefetch 2), with what
/// the loader handed to `get_into` for each shard: `(len, capacity)`.
fn load_recorded(
    inner: &SquirrelStore,
    workers: usize,
    shuffle: usize,
) -> (Vec<squirrel_store::Result<Item>>, Vec<(usize, usize)>) {
    let store = Recording {
        inner: inner.clone(),
        seen: Arc::default(),
    };
    let out = squirrel_store::Loader::new(store.clone())
        .workers(workers)
        .prefetch(2)
        .shuffle_samples(shuffle)
        .seed(3)
        .samples::<Item>()
        .expect("starts")
        .collect();
    let seen = store.seen.lock().expect("not poisoned").clone();
    (out, seen)
}

#[test]
fn sample_buffers_come_back_empty_and_are_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = filled(dir.path());
    // A shard that fails half-way (its second sample is not an `Item`) between good ones: what it
    // decoded before failing must not turn up in the next shard.
    let bad = rmp_serde::to_vec_named(&Item {
        shard: 99,
        index: 0,
    })
    .expect("encodes");
    let mut payload = bad.clone();
    payload.extend(rmp_serde::to_vec("not an item").expect("encodes"));
    inner
        .set_payload(&payload, Some("shard_20"))
        .expect("set_payload");
    for workers in [0, 1, 3] {
        let (out, seen) = load_recorded(&inner, workers, 1);
        let mut expected: Vec<Option<Item>> = all_items()
            .into_iter()
            .filter(|i| i.shard != 20)
            .map(Some)
            .collect();
        let at = expected
            .iter()
            .position(|i| i.is_some_and(|i| i.shard > 20))
            .expect("shards after 20");
        expected.insert(at, None);
        let got: Vec<Option<Item>> = out.into_iter().map(Result::ok).collect();
        assert_eq!(got, expected, "workers {workers}");
        assert_eq!(seen.len(), SHARDS as usize);
        assert!(seen.iter().all(|&(len, _)| len == 0), "{seen:?}");
        // A new buffer is made only when no spare is left, which needs every buffer to be in
        // use: the window's 2 shards, the consumer's current one and the one it is giving back.
        // The failed shard's buffer is dropped with its error: one more.
        let fresh = seen.iter().filter(|&&(_, capacity)| capacity == 0).count();
        assert!(
            fresh <= 5,
            "workers {workers}: {fresh} fresh buffers, {seen:?}"
        );
    }
}

#[test]
fn an_outsized_shards_buffer_does_not_stay_in_circulation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = open(dir.path());
    // One shard of 20,000 items (160 KB of `Item`s, over the spare buffers' floor), then small
    // ones: its buffer may serve one later shard, then must go back to the allocator.
    let big: Vec<Item> = (0..20_000).map(|index| Item { shard: 0, index }).collect();
    inner.set(&big, Some("s00")).expect("set");
    for shard in 1..30 {
        inner
            .set(&[Item { shard, index: 0 }], Some(&format!("s{shard:02}")))
            .expect("set");
    }
    for workers in [0, 1, 3] {
        let (out, seen) = load_recorded(&inner, workers, 1);
        let out: Vec<Item> = out.into_iter().map(|item| item.expect("decodes")).collect();
        assert_eq!(out.len(), 20_000 + 29);
        assert_eq!(out[20_000], Item { shard: 1, index: 0 });
        assert_eq!(seen.len(), 30);
        let outsized = seen
            .iter()
            .filter(|&&(_, capacity)| capacity >= 20_000)
            .count();
        assert!(outsized <= 1, "workers {workers}: {seen:?}");
    }
}

#[test]
fn shuffled_samples_through_reused_buffers_come_out_once_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inner = filled(dir.path());
    for workers in [0, 1, 3] {
        let (out, seen) = load_recorded(&inner, workers, 7);
        let out: Vec<Item> = out.into_iter().map(|item| item.expect("decodes")).collect();
        assert_ne!(out, all_items(), "workers {workers}: not mixed");
        assert_eq!(sorted(out), sorted(all_items()), "workers {workers}");
        assert!(seen.iter().all(|&(len, _)| len == 0), "{seen:?}");
        let reused = seen.iter().filter(|&&(_, capacity)| capacity > 0).count();
        assert!(reused >= 30, "workers {workers}: {seen:?}");
    }
}
