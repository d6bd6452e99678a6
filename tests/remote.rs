//! Stores on object storage, against a real S3 server on loopback (moto's, see
//! `.ci/s3-server.sh`): push, read back byte-exact, few requests, re-publication, damage,
//! failures (wrong credentials, missing and truncated objects, timeouts, dropped connections, a
//! killed server), pull, cache, the squirrel layer and datasets.

#[path = "common/s3.rs"]
mod s3;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use object_store::ObjectStoreExt;
use rand::{Rng, SeedableRng};
use squirrel_store::remote::{
    self, Dataset, RemoteDriver, RemoteError, RemoteOptions, RemoteSquirrelStore, RemoteStore,
};
use squirrel_store::{Config, Driver, Engine, Error, SquirrelStore, Store};

use s3::{Fault, Proxy, shared};

/// A closed local store with `n` keys of seeded random sizes (a few of 1 MiB), some overwritten
/// and some deleted, so it has dead records; returns its live contents.
fn make_store(dir: &Path, n: usize, seed: u64) -> BTreeMap<String, Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let db = Config::new(dir).open().expect("open");
    let mut live = BTreeMap::new();
    for i in 0..n {
        let len = if i % 10 == 3 {
            1 << 20
        } else {
            rng.random_range(0..5000)
        };
        let value: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let key = format!("key-{i:04}");
        db.set(&key, &value).expect("set");
        live.insert(key, value);
    }
    for i in (0..n).step_by(7) {
        let key = format!("key-{i:04}");
        let value = format!("overwritten {i}").into_bytes();
        db.set(&key, &value).expect("set");
        live.insert(key, value);
    }
    for i in (5..n).step_by(11) {
        let key = format!("key-{i:04}");
        db.delete(&key).expect("delete");
        live.remove(&key);
    }
    db.close().expect("close");
    live
}

fn remote_err(e: &Error) -> &RemoteError {
    match e {
        Error::Remote(r) => r,
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[test]
fn push_then_read_every_key_byte_exact_one_request_per_get() {
    let server = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let live = make_store(dir.path(), 60, 1);
    let url = server.url("basic");
    let report = remote::push(dir.path(), &url, server.opts()).expect("push");
    assert_eq!(report.keys, live.len() as u64);
    assert!(!report.multipart);

    let store = RemoteStore::open(&url, server.opts()).expect("open");
    let after_open = store.requests();
    assert_eq!(after_open, 3, "manifest, segment header, whole index");
    assert!(store.stats().index_whole);
    assert_eq!(store.stats().live_records, live.len() as u64);
    assert!(store.stats().dead_records > 0);
    let keys = store.keys().expect("keys");
    assert_eq!(keys, live.keys().cloned().collect::<Vec<_>>());
    let before = store.requests();
    for (k, v) in &live {
        let got = store.get(k).expect("get").expect("present");
        assert_eq!(&*got, v.as_slice(), "{k}");
        assert_eq!(got.codec(), 0);
    }
    assert_eq!(
        store.requests() - before,
        live.len() as u64,
        "one request per get"
    );
    assert!(store.get("key-0005").expect("get").is_none(), "deleted");
    assert!(store.get("never").expect("get").is_none());
    assert!(store.contains("key-0001").expect("contains"));
    assert!(!store.contains("key-0005").expect("contains"));
    assert!(matches!(store.get(""), Err(Error::InvalidKey { .. })));
}

#[test]
fn get_many_coalesces_neighbours_and_keeps_order() {
    let server = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let live = make_store(dir.path(), 80, 2);
    let url = server.url("many");
    remote::push(dir.path(), &url, server.opts()).expect("push");
    let store = RemoteStore::open(&url, server.opts().concurrency(4)).expect("open");
    let mut keys: Vec<String> = live.keys().cloned().collect();
    keys.push("absent".into());
    keys.reverse();
    let before = store.requests();
    let got = store.get_many(&keys).expect("get_many");
    let used = store.requests() - before;
    assert_eq!(got.len(), keys.len());
    for (k, v) in keys.iter().zip(&got) {
        match live.get(k) {
            Some(want) => assert_eq!(&**v.as_ref().expect("present"), want.as_slice(), "{k}"),
            None => assert!(v.is_none()),
        }
    }
    assert!(
        used < live.len() as u64 / 4,
        "{used} requests for {} values: neighbours are merged",
        live.len()
    );
}

#[test]
fn a_large_index_is_read_in_pages_with_the_same_answers() {
    let server = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let live = make_store(dir.path(), 40, 3);
    let url = server.url("paged");
    remote::push(dir.path(), &url, server.opts()).expect("push");
    let store = RemoteStore::open(&url, server.opts().index_whole_max(0)).expect("open");
    assert!(!store.stats().index_whole);
    for (k, v) in &live {
        assert_eq!(&*store.get(k).expect("get").expect("present"), v.as_slice());
    }
    assert!(store.verify().expect("verify").ok());
}

/// A local store with index format 3 has no `index.sqi`, so its directory is not read by URL
/// as it is (a typed error saying why); `push` to a `file://` URL publishes the version-2 table
/// built from its runs, and that opens by URL. A directory holding a version-2 store (here: the
/// published copy, without its `store.json`) still opens as it is.
#[test]
fn a_closed_local_store_opens_by_file_url() {
    let local = tempfile::tempdir().expect("tempdir");
    let live = make_store(local.path(), 30, 4);
    let err = RemoteStore::open(
        &format!("file://{}", local.path().display()),
        RemoteOptions::new(),
    )
    .expect_err("no index.sqi in a v3 store");
    assert!(
        matches!(remote_err(&err), RemoteError::NotPublished { .. }),
        "{err}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("file://{}", dir.path().display());
    remote::push(local.path(), &url, RemoteOptions::new()).expect("push");
    assert!(dir.path().join("index.sqi").exists());
    assert!(
        !local.path().join("index.sqi.push").exists(),
        "the built table is not left"
    );
    std::fs::remove_file(dir.path().join("store.json")).expect("remove");
    std::fs::remove_file(dir.path().join("keys.json")).expect("remove");
    let store = RemoteStore::open(&url, RemoteOptions::new()).expect("open");
    assert!(!store.stats().has_manifest);
    // No keys.json: the keys come from reading the segment.
    assert_eq!(
        store.keys().expect("keys"),
        live.keys().cloned().collect::<Vec<_>>()
    );
    for (k, v) in &live {
        assert_eq!(&*store.get(k).expect("get").expect("present"), v.as_slice());
    }
    let report = store.verify().expect("verify");
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.live_keys, live.len() as u64);
}

#[test]
fn a_store_left_open_by_a_writer_is_not_read_remotely() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Config::new(dir.path()).open().expect("open");
    db.set("a", b"1").expect("set");
    db.checkpoint().expect("checkpoint");
    let url = format!("file://{}", dir.path().display());
    let err = RemoteStore::open(&url, RemoteOptions::new()).expect_err("not closed");
    assert!(
        matches!(remote_err(&err), RemoteError::NotPublished { .. }),
        "{err}"
    );
    drop(db);
}

#[test]
fn verify_finds_a_damaged_record_which_get_never_serves() {
    let server = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let live = make_store(dir.path(), 20, 5);
    // Flip one byte inside the value of key-0003 (1 MiB), in the closed store, then push it.
    let seg_path = dir.path().join("segment.sqs");
    let mut seg = std::fs::read(&seg_path).expect("read");
    let key_at = seg
        .windows(b"key-0003".len())
        .position(|w| w == b"key-0003")
        .expect("the key's record");
    seg[key_at + b"key-0003".len() + 1000] ^= 0x40;
    std::fs::write(&seg_path, &seg).expect("write");
    let url = server.url("damaged");
    remote::push(dir.path(), &url, server.opts()).expect("push");
    let store = RemoteStore::open(&url, server.opts()).expect("open");
    let err = store.get("key-0003").expect_err("damaged");
    match &err {
        Error::Corruption { path, key, .. } => {
            assert!(path.to_string_lossy().ends_with("/segment.sqs"), "{err}");
            assert!(path.to_string_lossy().starts_with("s3://"), "{err}");
            assert_eq!(key.as_deref(), Some("key-0003"));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    for (k, v) in live.iter().filter(|(k, _)| *k != "key-0003") {
        assert_eq!(&*store.get(k).expect("get").expect("present"), v.as_slice());
    }
    let report = store.verify().expect("verify");
    assert!(!report.ok());
    assert_eq!(report.damaged.len(), 1, "{report:?}");
}

#[test]
fn a_republished_store_is_detected_never_mixed() {
    let server = shared();
    let url = server.url("republish");
    let a = tempfile::tempdir().expect("tempdir");
    make_store(a.path(), 10, 6);
    remote::push(a.path(), &url, server.opts()).expect("push a");
    let old = RemoteStore::open(&url, server.opts()).expect("open a");
    assert!(old.get("key-0001").expect("get").is_some());

    let b = tempfile::tempdir().expect("tempdir");
    let live_b = make_store(b.path(), 12, 7);
    remote::push(b.path(), &url, server.opts()).expect("push b");
    let err = old.get("key-0002").expect_err("the segment changed");
    assert!(
        matches!(remote_err(&err), RemoteError::Republished { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&url), "{err}");

    let new = RemoteStore::open(&url, server.opts()).expect("open b");
    assert_ne!(new.segment_id(), old.segment_id());
    for (k, v) in &live_b {
        assert_eq!(&*new.get(k).expect("get").expect("present"), v.as_slice());
    }
}

#[test]
fn missing_truncated_and_foreign_objects_are_typed_errors_naming_the_url() {
    let server = shared();
    let url = server.url("missing");
    let err = RemoteStore::open(&url, server.opts()).expect_err("nothing there");
    assert!(
        matches!(remote_err(&err), RemoteError::NotPublished { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&url), "{err}");

    // A truncated segment behind a valid manifest and index.
    let dir = tempfile::tempdir().expect("tempdir");
    make_store(dir.path(), 20, 8);
    let url = server.url("truncated");
    remote::push(dir.path(), &url, server.opts()).expect("push");
    let prefix = url
        .trim_start_matches(&format!("s3://{}/", server.bucket))
        .to_owned();
    let seg_path = object_store::path::Path::from(format!("{prefix}/segment.sqs"));
    let raw = server.raw();
    s3::block_on(async {
        let whole = raw
            .get(&seg_path)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes");
        raw.put(&seg_path, whole.slice(..whole.len() / 2).into())
            .await
            .expect("put");
    });
    let err = RemoteStore::open(&url, server.opts()).expect_err("truncated");
    match remote_err(&err) {
        RemoteError::Truncated {
            url: u,
            expected,
            found,
        } => {
            assert!(u.ends_with("/segment.sqs"));
            assert!(found < expected);
        }
        other => panic!("expected truncated, got {other:?}"),
    }

    // Not a store at all.
    let url = server.url("foreign");
    let prefix = url
        .trim_start_matches(&format!("s3://{}/", server.bucket))
        .to_owned();
    s3::block_on(async {
        let p = object_store::path::Path::from(format!("{prefix}/segment.sqs"));
        raw.put(&p, vec![7u8; 100].into()).await.expect("put");
    });
    let err = RemoteStore::open(&url, server.opts()).expect_err("foreign");
    assert!(matches!(err, Error::BadMagic { .. }), "{err}");
}

#[test]
fn wrong_credentials_are_access_denied_naming_the_url() {
    let server = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    make_store(dir.path(), 5, 9);
    let url = server.url("creds");
    remote::push(dir.path(), &url, server.opts()).expect("push");
    let wrong = server
        .opts()
        .option("aws_secret_access_key", "not-the-secret");
    let err = RemoteStore::open(&url, wrong).expect_err("wrong secret");
    assert!(
        matches!(remote_err(&err), RemoteError::AccessDenied { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&url), "{err}");
    let unknown = server
        .opts()
        .option("aws_access_key_id", "AKIANOSUCHKEY0000000");
    let err = RemoteStore::open(&url, unknown).expect_err("unknown key");
    assert!(
        matches!(remote_err(&err), RemoteError::AccessDenied { .. }),
        "{err}"
    );
}

#[test]
fn a_silent_server_is_a_timeout() {
    let server = shared();
    let proxy = Proxy::start(&server.endpoint, Fault::Silent);
    let opts = server
        .opts()
        .option("aws_endpoint", &proxy.endpoint)
        .timeout(Duration::from_millis(300))
        .retries(1);
    let url = server.url("silent");
    let started = std::time::Instant::now();
    let err = RemoteStore::open(&url, opts).expect_err("no answer");
    assert!(
        matches!(remote_err(&err), RemoteError::Timeout { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&url), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "bounded: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_connection_dropped_mid_value_is_retried_then_reported() {
    let server = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let live = make_store(dir.path(), 10, 10);
    let url = server.url("dropped");
    remote::push(dir.path(), &url, server.opts()).expect("push");
    let big = &live["key-0003"];
    assert_eq!(big.len(), 1 << 20);

    // The first connection to carry 300 KB is cut: mid-way through the 1 MiB value.
    let proxy = Proxy::start(
        &server.endpoint,
        Fault::CutAfter {
            bytes: 300_000,
            times: 1,
        },
    );
    let opts = server.opts().option("aws_endpoint", &proxy.endpoint);
    let store = RemoteStore::open(&url, opts).expect("open");
    assert_eq!(proxy.cuts(), 0, "the open's answers are small");
    assert_eq!(
        &*store.get("key-0003").expect("retried").expect("present"),
        big.as_slice()
    );
    assert!(proxy.cuts() >= 1, "the transfer was cut, and resumed");

    // Every connection is cut: a clear error after the retries, naming the URL.
    let proxy = Proxy::start(
        &server.endpoint,
        Fault::CutAfter {
            bytes: 300_000,
            times: usize::MAX,
        },
    );
    let opts = server
        .opts()
        .option("aws_endpoint", &proxy.endpoint)
        .retries(2);
    let store = RemoteStore::open(&url, opts).expect("open: small answers pass");
    let err = store.get("key-0003").expect_err("always cut");
    assert!(
        matches!(remote_err(&err), RemoteError::Unavailable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("segment.sqs"), "{err}");
}

#[test]
fn a_killed_server_gives_a_clear_error() {
    let server = s3::start(true);
    let dir = tempfile::tempdir().expect("tempdir");
    let live = make_store(dir.path(), 10, 11);
    let url = server.url("killed");
    remote::push(dir.path(), &url, server.opts()).expect("push");
    let store = RemoteStore::open(&url, server.opts()).expect("open");
    assert_eq!(
        &*store.get("key-0001").expect("get").expect("present"),
        live["key-0001"].as_slice()
    );
    let status = std::process::Command::new("kill")
        .args(["-9", &server.pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let started = std::time::Instant::now();
    let err = store.get("key-0002").expect_err("server gone");
    assert!(
        matches!(remote_err(&err), RemoteError::Unavailable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&url), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded: {:?}",
        started.elapsed()
    );
}

#[test]
fn pull_brings_back_the_same_store() {
    let server = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let live = make_store(dir.path(), 30, 12);
    let url = server.url("pull");
    remote::push(dir.path(), &url, server.opts()).expect("push");
    let back = tempfile::tempdir().expect("tempdir");
    let target = back.path().join("copy");
    let report = remote::pull(&url, &target, server.opts()).expect("pull");
    assert_eq!(report.keys, live.len() as u64);
    let db = Engine::open_read_only(&target).expect("open copy");
    assert_eq!(
        db.keys().expect("keys"),
        live.keys().cloned().collect::<Vec<_>>()
    );
    for (k, v) in &live {
        assert_eq!(&*db.get(k).expect("get").expect("present"), v.as_slice());
    }
    assert!(
        !squirrel_store::verify(&target, &mut |_, _| {})
            .expect("verify")
            .is_corrupt()
    );
    drop(db);
    // The copy takes writes.
    let db = Engine::open(&target).expect("open rw");
    db.set("new", b"value").expect("set");
    db.close().expect("close");
    let err = remote::pull(&url, &target, server.opts()).expect_err("already there");
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn a_large_segment_goes_up_as_multipart() {
    let server = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Config::new(dir.path()).open().expect("open");
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut live = BTreeMap::new();
    for i in 0..14 {
        let v: Vec<u8> = (0..1 << 20).map(|_| rng.random()).collect();
        db.set(&format!("big-{i}"), &v).expect("set");
        live.insert(format!("big-{i}"), v);
    }
    db.close().expect("close");
    let url = server.url("multipart");
    let report =
        remote::push(dir.path(), &url, server.opts().multipart(6 << 20, 5 << 20)).expect("push");
    assert!(report.multipart);
    assert!(report.segment_bytes > 14 << 20);
    let store = RemoteStore::open(&url, server.opts()).expect("open");
    for (k, v) in &live {
        assert_eq!(&*store.get(k).expect("get").expect("present"), v.as_slice());
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").metadata().expect("meta").len())
        .sum()
}

#[test]
fn the_cache_serves_hits_stays_within_its_limit_and_drops_damaged_entries() {
    let server = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let live = make_store(dir.path(), 40, 14);
    let url = server.url("cache");
    remote::push(dir.path(), &url, server.opts()).expect("push");
    let cache = tempfile::tempdir().expect("tempdir");
    let limit = 2_500_000; // smaller than the store (4 values of 1 MiB and more)
    let opts = server.opts().cache(cache.path(), limit);
    let store = RemoteStore::open(&url, opts.clone()).expect("open");
    for (k, v) in &live {
        assert_eq!(&*store.get(k).expect("get").expect("present"), v.as_slice());
        assert!(dir_bytes(cache.path()) <= limit);
    }
    // A small, recently read record is a hit: no request.
    let before = store.requests();
    assert_eq!(
        &*store.get("key-0039").expect("get").expect("present"),
        live["key-0039"].as_slice()
    );
    assert_eq!(store.requests(), before, "served from the cache");
    // Another process's handle shares the cache.
    let other = RemoteStore::open(&url, opts).expect("open");
    let before = other.requests();
    assert_eq!(
        &*other.get("key-0039").expect("get").expect("present"),
        live["key-0039"].as_slice()
    );
    assert_eq!(other.requests(), before);
    // A damaged entry is dropped and fetched again.
    for e in std::fs::read_dir(cache.path()).expect("read_dir") {
        let p = e.expect("entry").path();
        let mut b = std::fs::read(&p).expect("read");
        if let Some(last) = b.last_mut() {
            *last ^= 1;
        }
        std::fs::write(&p, b).expect("write");
    }
    let before = other.requests();
    assert_eq!(
        &*other.get("key-0039").expect("get").expect("present"),
        live["key-0039"].as_slice()
    );
    assert_eq!(other.requests(), before + 1, "fetched again");
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Sample {
    label: i64,
    caption: String,
}

fn squirrel_store(dir: &Path, shards: std::ops::Range<usize>) -> BTreeMap<String, Vec<Sample>> {
    let store = SquirrelStore::open(dir).expect("open");
    let mut all = BTreeMap::new();
    for s in shards {
        let shard: Vec<Sample> = (0..5)
            .map(|i| Sample {
                label: (s * 10 + i) as i64,
                caption: format!("sample {i} of {s}").repeat(20),
            })
            .collect();
        let key = format!("shard_{s}");
        store.set(&shard, Some(&key)).expect("set");
        all.insert(key, shard);
    }
    drop(store);
    all
}

#[test]
fn the_squirrel_layer_and_loader_read_a_remote_store() {
    let server = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let all = squirrel_store(dir.path(), 0..12);
    let url = server.url("squirrel");
    remote::push(dir.path(), &url, server.opts()).expect("push");
    let driver = RemoteDriver::open(&url, server.opts()).expect("open");
    assert_eq!(
        driver.keys().expect("keys"),
        all.keys().cloned().collect::<Vec<_>>()
    );
    for (k, v) in &all {
        assert_eq!(&driver.get::<Sample>(k).expect("get").expect("present"), v);
        let values = driver.get_values(k).expect("get").expect("present");
        assert_eq!(values.len(), v.len());
    }
    let loaded: Vec<Sample> = driver
        .loader()
        .shuffle_keys(true)
        .seed(3)
        .samples()
        .expect("loader")
        .collect::<Result<_, _>>()
        .expect("samples");
    let mut want: Vec<Sample> = all.values().flatten().cloned().collect();
    let mut got = loaded;
    want.sort_by_key(|s| s.label);
    got.sort_by_key(|s| s.label);
    assert_eq!(got, want);
    let err = driver
        .store()
        .set(
            &[Sample {
                label: 0,
                caption: String::new(),
            }],
            Some("x"),
        )
        .expect_err("read-only");
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
}

#[test]
fn concurrent_dataset_adds_lose_no_entry_and_duplicates_are_refused() {
    let server = shared();
    let dataset = server.url("dataset");
    let n = 6;
    let mut all = BTreeMap::new();
    let mut dirs = Vec::new();
    for i in 0..n {
        let dir = tempfile::tempdir().expect("tempdir");
        all.extend(squirrel_store(dir.path(), i * 3..i * 3 + 3));
        remote::push(dir.path(), &format!("{dataset}/store-{i}"), server.opts()).expect("push");
        dirs.push(dir);
    }
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|s| {
        for i in 0..n {
            let (barrier, dataset) = (&barrier, &dataset);
            s.spawn(move || {
                barrier.wait();
                remote::dataset_add(dataset, &format!("{dataset}/store-{i}"), server.opts())
                    .expect("add");
            });
        }
    });
    let manifest = remote::dataset_ls(&dataset, server.opts()).expect("ls");
    let mut names: Vec<String> = manifest.stores.iter().map(|e| e.store.clone()).collect();
    names.sort();
    assert_eq!(
        names,
        (0..n).map(|i| format!("store-{i}")).collect::<Vec<_>>()
    );
    // Adding again changes nothing.
    remote::dataset_add(&dataset, &format!("{dataset}/store-0"), server.opts()).expect("add again");
    assert_eq!(
        remote::dataset_ls(&dataset, server.opts())
            .expect("ls")
            .stores
            .len(),
        n
    );

    let ds = Dataset::open(&dataset, server.opts()).expect("open");
    assert_eq!(
        ds.keys(),
        all.keys().cloned().collect::<Vec<_>>().as_slice()
    );
    let store = RemoteSquirrelStore::open(&dataset, server.opts()).expect("open");
    assert!(store.dataset().is_some());
    for (k, v) in &all {
        assert_eq!(&store.get::<Sample>(k).expect("get").expect("present"), v);
    }
    let driver = RemoteDriver::open(&dataset, server.opts()).expect("open");
    let count = driver.loader().samples::<Sample>().expect("loader").count();
    assert_eq!(count, all.values().map(Vec::len).sum::<usize>());

    // A store whose keys overlap another's: the dataset refuses to open, naming both.
    let dup = tempfile::tempdir().expect("tempdir");
    squirrel_store(dup.path(), 2..4);
    remote::push(dup.path(), &format!("{dataset}/dup"), server.opts()).expect("push");
    remote::dataset_add(&dataset, &format!("{dataset}/dup"), server.opts()).expect("add");
    let err = Dataset::open(&dataset, server.opts()).expect_err("duplicate");
    match remote_err(&err) {
        RemoteError::DuplicateKey {
            key, first, second, ..
        } => {
            assert_eq!(key, "shard_2");
            assert_eq!(first, "store-0");
            assert_eq!(second, "dup");
        }
        other => panic!("expected a duplicate key, got {other:?}"),
    }
}

fn cli(server: &s3::Server, args: &[&str]) -> std::process::Output {
    let mut cmd = assert_cmd::Command::cargo_bin("squirrel-store").expect("the binary is built");
    for (k, v) in server.env() {
        cmd.env(k, v);
    }
    cmd.args(args).output().expect("runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_cli_pushes_pulls_and_reads_by_url_with_credentials_from_the_environment() {
    let server = shared();
    let dir = tempfile::tempdir().expect("tempdir");
    let all = squirrel_store(dir.path(), 0..4);
    let dataset = server.url("cli");
    let url = format!("{dataset}/node-0");
    let store = dir.path().to_str().expect("utf-8");

    let out = cli(server, &["push", store, &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("4 keys"),
        "{}",
        text(&out.stdout)
    );

    let out = cli(server, &["keys", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).lines().collect::<Vec<_>>(),
        all.keys().collect::<Vec<_>>()
    );

    let out = cli(server, &["get", &url, "shard_1", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 5);
    assert!(text(&out.stdout).contains("sample 0 of 1"));

    let out = cli(server, &["get", &url, "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains(&url), "{}", text(&out.stderr));

    let out = cli(server, &["stats", &url, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["keys"], 4);

    let out = cli(server, &["verify", &url, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ok"], true);
    assert_eq!(v["live_keys"], 4);

    let back = tempfile::tempdir().expect("tempdir");
    let copy = back.path().join("copy");
    let out = cli(server, &["pull", &url, copy.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let local = SquirrelStore::open(&copy).expect("open copy");
    for (k, v) in &all {
        assert_eq!(&local.get::<Sample>(k).expect("get").expect("present"), v);
    }
    drop(local);

    let exported = back.path().join("squirrel");
    let out = cli(server, &["export", &url, exported.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for k in all.keys() {
        assert!(exported.join(format!("{k}.gz")).is_file(), "{k}.gz");
    }

    let out = cli(server, &["dataset", "add", &dataset, &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli(server, &["dataset", "ls", &dataset]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("node-0\t4 keys"),
        "{}",
        text(&out.stdout)
    );
    // The dataset's URL reads as one store.
    let out = cli(server, &["keys", &dataset]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        4,
        "{}",
        text(&out.stderr)
    );

    // Wrong credentials: exit 2, one line naming the URL.
    let mut cmd = assert_cmd::Command::cargo_bin("squirrel-store").expect("built");
    for (k, v) in server.env() {
        cmd.env(k, v);
    }
    let out = cmd
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .args(["keys", &url])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("access denied") && err.contains(&url), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_forged_index_slot_is_refused_not_followed() {
    // Slots naming a huge record, or one past the segment, with valid slot checksums: a read
    // is a typed corruption error, never an allocation of the forged size.
    for forged_len in [1u64 << 50, 1 << 20] {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = tempfile::tempdir().expect("tempdir");
        let db = Config::new(local.path()).open().expect("open");
        db.set("only", b"value").expect("set");
        db.close().expect("close");
        let url = format!("file://{}", dir.path().display());
        remote::push(local.path(), &url, RemoteOptions::new()).expect("push");
        let idx_path = dir.path().join("index.sqi");
        let mut idx = std::fs::read(&idx_path).expect("read");
        let slot = (4096..idx.len())
            .step_by(32)
            .find(|&o| idx[o..o + 8] != [0; 8])
            .expect("a live slot");
        idx[slot + 16..slot + 24].copy_from_slice(&forged_len.to_le_bytes());
        let crc = crc32fast::hash(&idx[slot..slot + 28]);
        idx[slot + 28..slot + 32].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&idx_path, &idx).expect("write");
        let store = RemoteStore::open(&url, RemoteOptions::new()).expect("open");
        let err = store.get("only").expect_err("forged");
        assert!(matches!(err, Error::Corruption { .. }), "{err}");
        assert!(err.to_string().contains("index.sqi"), "{err}");
        assert!(!store.verify().expect("verify").ok());
    }
}
