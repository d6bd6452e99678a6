//! The Store API: typed and `Value` round trips, random keys, batches, errors that name the key,
//! the read-only driver, and byte-for-byte agreement with shards Python squirrel 0.20.2 wrote.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use squirrel_store::array::NdArray;
use squirrel_store::serializer::{
    Codec, MessagepackSerializer, ShardError, decode_values, payload_from_samples,
};
use squirrel_store::value::Value;
use squirrel_store::{
    Config, Driver, Durability, Error, MessagepackDriver, SquirrelStore, Store, random_key,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sample {
    image: NdArray,
    label: i64,
    metadata: Metadata,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Metadata {
    key: String,
}

fn sample(shard: usize, i: usize) -> Sample {
    let pixels: Vec<f64> = (0..27)
        .map(|p| (shard * 100 + i * 27 + p) as f64 / 3.0)
        .collect();
    Sample {
        image: NdArray::from_slice([3, 3, 3], &pixels).expect("27 elements"),
        label: 1 + (i % 2) as i64,
        metadata: Metadata {
            key: format!("shard_{shard}_{i}"),
        },
    }
}

fn shard(shard: usize, n: usize) -> Vec<Sample> {
    (0..n).map(|i| sample(shard, i)).collect()
}

fn open(dir: &Path) -> SquirrelStore {
    let engine = Config::new(dir)
        .durability(Durability::Buffered)
        .open()
        .expect("opens");
    SquirrelStore::new(engine, MessagepackSerializer::default())
}

fn is_random_key(key: &str) -> bool {
    key.len() == 16
        && key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

#[test]
fn typed_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let a = shard(0, 10);
    assert_eq!(store.set(&a, Some("shard_0")).expect("set"), "shard_0");
    assert_eq!(
        store.get::<Sample>("shard_0").expect("get"),
        Some(a.clone())
    );
    assert_eq!(store.get::<Sample>("shard_9").expect("get"), None);
    // Setting again replaces the shard.
    let b = shard(1, 3);
    store.set(&b, Some("shard_0")).expect("set");
    assert_eq!(store.get::<Sample>("shard_0").expect("get"), Some(b));
    assert_eq!(store.keys().expect("keys"), ["shard_0"]);
    // The record is zstd-compressed MessagePack.
    let raw = store
        .engine()
        .get("shard_0")
        .expect("get")
        .expect("present");
    assert_eq!(raw.codec(), Codec::MsgpackZstd.as_u8());
}

#[test]
fn values_round_trip_and_meet_typed_samples() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let typed = shard(3, 4);
    store.set(&typed, Some("typed")).expect("set");
    // Typed samples read as Values, and Values written back read as the same typed samples.
    let values = store.get_values("typed").expect("get").expect("present");
    assert_eq!(values.len(), 4);
    assert_eq!(values[2].get("label").and_then(Value::as_i64), Some(1));
    store.set_values(&values, Some("copy")).expect("set");
    assert_eq!(store.get_values("copy").expect("get"), Some(values));
    assert_eq!(store.get::<Sample>("copy").expect("get"), Some(typed));
    assert_eq!(store.get_values("missing").expect("get"), None);
}

#[test]
fn payload_is_the_samples_and_uncompressed_records_are_not_copied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Config::new(dir.path())
        .durability(Durability::Buffered)
        .open()
        .expect("opens");
    let store = SquirrelStore::new(engine, MessagepackSerializer::new().uncompressed());
    let samples = shard(2, 5);
    store.set(&samples, Some("k")).expect("set");
    let payload = store.get_payload("k").expect("get").expect("present");
    assert_eq!(
        &*payload,
        payload_from_samples(&samples).expect("encodes").as_slice()
    );
    assert!(
        format!("{payload:?}").contains("mapped: true"),
        "{payload:?}"
    );
    let raw = store.engine().get("k").expect("get").expect("present");
    assert_eq!(raw.codec(), Codec::Msgpack.as_u8());
    assert_eq!(raw.as_ptr(), payload.as_ptr(), "served from the map");
}

#[test]
fn random_keys_are_squirrels_and_distinct() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut keys = HashSet::new();
    for i in 0..50 {
        let key = store.set(&shard(i, 1), None).expect("set");
        assert!(is_random_key(&key), "{key:?}");
        assert!(keys.insert(key.clone()), "repeated key {key}");
        assert_eq!(
            store.get::<Sample>(&key).expect("get"),
            Some(shard(i, 1)),
            "{key}"
        );
    }
    let key = store.set_values(&[Value::from(1i64)], None).expect("set");
    assert!(is_random_key(&key) && keys.insert(key));
    let mut listed = store.keys().expect("keys");
    assert_eq!(listed.len(), 51);
    listed.sort();
    let mut made: Vec<String> = keys.into_iter().collect();
    made.sort();
    assert_eq!(listed, made);
    let many: HashSet<String> = (0..10_000).map(|_| random_key()).collect();
    assert_eq!(many.len(), 10_000);
    assert!(many.iter().all(|k| is_random_key(k)));
}

#[test]
fn threads_set_at_once_with_random_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let keys: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                s.spawn(move || {
                    (0..5)
                        .map(|i| store.set(&shard(t * 10 + i, 3), None).expect("set"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(keys.iter().collect::<HashSet<_>>().len(), 20);
    assert_eq!(store.keys().expect("keys").len(), 20);
}

#[test]
fn batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let shards: Vec<(String, Vec<Sample>)> = (0..6)
        .map(|i| (format!("shard_{i}"), shard(i, i + 1)))
        .collect();
    store.set_many(&shards).expect("set_many");
    let keys: Vec<&str> = ["shard_5", "nope", "shard_0"].to_vec();
    let got = store.get_many::<Sample, _>(&keys).expect("get_many");
    assert_eq!(got, vec![Some(shard(5, 6)), None, Some(shard(0, 1))]);

    let values = vec![("v".to_owned(), vec![Value::from("x"), Value::from(2.5f64)])];
    store.set_many_values(&values).expect("set_many_values");
    assert_eq!(
        store.get_values("v").expect("get"),
        Some(values[0].1.clone())
    );
    // A bad key fails the whole batch: nothing of it is written.
    let bad = vec![
        ("fine".to_owned(), shard(0, 1)),
        (String::new(), shard(1, 1)),
    ];
    assert!(matches!(
        store.set_many(&bad),
        Err(Error::InvalidKey { .. })
    ));
    assert_eq!(store.get::<Sample>("fine").expect("get"), None);
}

#[test]
fn decoding_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    store.set(&shard(0, 2), Some("good")).expect("set");
    // Not a zstd frame.
    store
        .engine()
        .put("corrupt", Codec::MsgpackZstd.as_u8(), b"not zstd at all")
        .expect("put");
    // Raw bytes, not samples.
    store.engine().set("raw", b"bytes").expect("set");
    // A codec this build does not know.
    store.engine().put("future", 7, b"?").expect("put");

    let err = store.get::<Sample>("corrupt").expect_err("corrupt");
    assert!(
        matches!(&err, Error::Shard { key, source: ShardError::Decompress(_) } if key == "corrupt"),
        "{err:?}"
    );
    assert!(err.to_string().contains("corrupt"), "{err}");
    assert!(matches!(
        store.get_values("raw"),
        Err(Error::Shard { key, source: ShardError::NotSamples }) if key == "raw"
    ));
    assert!(matches!(
        store.get_payload("future"),
        Err(Error::Shard { key, source: ShardError::UnknownCodec(7) }) if key == "future"
    ));
    // Valid samples of another type.
    assert!(matches!(
        store.get::<u32>("good"),
        Err(Error::Shard { key, source: ShardError::Mismatch { sample: 0, .. } }) if key == "good"
    ));
    assert!(matches!(
        store.set(&shard(0, 1), Some("")),
        Err(Error::InvalidKey { .. })
    ));
}

#[test]
fn driver_reads_and_cannot_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(
        MessagepackDriver::open(dir.path().join("none")),
        Err(Error::NotFound { .. })
    ));
    let store = open(dir.path());
    for i in 0..3 {
        store
            .set(&shard(i, 2), Some(&format!("shard_{i}")))
            .expect("set");
    }
    // A driver opens read-only next to the open writer.
    let driver = MessagepackDriver::open(dir.path()).expect("driver");
    assert_eq!(
        driver.keys().expect("keys"),
        ["shard_0", "shard_1", "shard_2"]
    );
    assert_eq!(
        driver.get::<Sample>("shard_1").expect("get"),
        Some(shard(1, 2))
    );
    assert_eq!(
        driver.get_values("shard_1").expect("get"),
        store.get_values("shard_1").expect("get")
    );
    let all: Vec<Sample> = driver
        .get_iter::<Sample>()
        .expect("iter")
        .collect::<Result<_, _>>()
        .expect("samples");
    assert_eq!(all, [shard(0, 2), shard(1, 2), shard(2, 2)].concat());
    let some: Vec<Sample> = driver
        .get_iter_keys::<Sample>(["shard_2", "shard_0"])
        .expect("iter")
        .collect::<Result<_, _>>()
        .expect("samples");
    assert_eq!(some, [shard(2, 2), shard(0, 2)].concat());

    // The trait has no `set`; the store the driver hands out refuses writes.
    let ro = driver.store();
    assert!(ro.engine().is_read_only());
    assert!(matches!(
        ro.set(&shard(9, 1), Some("shard_9")),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(
        ro.set_values(&[], None),
        Err(Error::ReadOnly { .. })
    ));
    assert!(matches!(
        ro.set_many(&[("x", shard(0, 1))]),
        Err(Error::ReadOnly { .. })
    ));

    // New shards appear after a refresh.
    store.set(&shard(3, 1), Some("shard_3")).expect("set");
    assert_eq!(driver.keys().expect("keys").len(), 3);
    driver.refresh().expect("refresh");
    assert_eq!(
        driver.get::<Sample>("shard_3").expect("get"),
        Some(shard(3, 1))
    );
}

/// Generic code written against the traits works for any store and driver.
fn count_samples<D: Driver>(driver: &D) -> usize {
    let mut n = 0;
    for sample in driver.get_iter::<Value>().expect("iter") {
        sample.expect("sample");
        n += 1;
    }
    n
}

#[test]
fn generic_over_the_traits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    fn fill(store: &impl Store) {
        for i in 0..4 {
            store.set(&shard(i, i), None).expect("set");
        }
    }
    fill(&store);
    drop(store);
    let driver = MessagepackDriver::open(dir.path()).expect("driver");
    assert_eq!(count_samples(&driver), 6);
}

fn fixture_store() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/squirrel-0.20.2/store")
}

fn gunzip(path: &Path) -> Vec<u8> {
    let file = std::fs::File::open(path).expect("fixture shard");
    let mut payload = Vec::new();
    flate2::read::MultiGzDecoder::new(file)
        .read_to_end(&mut payload)
        .expect("gunzips");
    payload
}

#[test]
fn shards_are_the_bytes_python_squirrel_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let mut checked = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(fixture_store())
        .expect("fixture dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "gz"))
        .collect();
    entries.sort();
    for path in entries {
        let key = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf-8 name");
        let original = gunzip(&path);
        let values = decode_values(&original).expect("python's samples decode");
        assert_eq!(store.set_values(&values, Some(key)).expect("set"), key);

        let record = store.engine().get(key).expect("get").expect("present");
        // Stored as it is or as one zstd frame, whichever the adaptive default chose; an empty
        // shard is never worth a frame.
        let stored = match Codec::from_u8(record.codec()) {
            Some(Codec::MsgpackZstd) => zstd::decode_all(&*record).expect("one zstd frame"),
            Some(Codec::Msgpack) => record.to_vec(),
            other => panic!("{key}: stored as {other:?}"),
        };
        if original.is_empty() {
            assert_eq!(record.codec(), Codec::Msgpack.as_u8(), "{key}");
        }
        assert!(
            stored == original,
            "{key}: stored bytes differ from Python's"
        );
        // And the store serves the same bytes back as its payload.
        assert!(*store.get_payload(key).expect("get").expect("present") == *original);
        checked += 1;
    }
    assert_eq!(checked, 6, "every fixture shard");
}

#[test]
fn keys_nested_lists_as_python_squirrel_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    for key in ["top", "sub/inner", "a/b/deep"] {
        store.set(&shard(0, 1), Some(key)).expect("set");
    }
    assert_eq!(
        store.keys().expect("keys"),
        ["a/b/deep", "sub/inner", "top"]
    );
    assert_eq!(
        store.keys_nested(true).expect("keys"),
        store.keys().expect("keys")
    );
    assert_eq!(store.keys_nested(false).expect("keys"), ["top"]);
}
