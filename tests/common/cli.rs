//! Helpers for the tests that run the `squirrel-store` binary.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use flate2::Compression;
use flate2::write::GzEncoder;
use squirrel_store::serializer::{Codec, MessagepackSerializer, Serializer};
use squirrel_store::{Config, Durability};

/// Runs the binary with `args`.
pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::cargo_bin("squirrel-store")
        .expect("the binary is built")
        .args(args)
        .output()
        .expect("runs")
}

/// Standard output, lossily decoded.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Standard error, lossily decoded.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the exit status, showing both streams when it differs.
#[track_caller]
pub fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

/// A temp path as the `&str` an argument needs.
pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

/// A store holding `records` as `(key, codec, value)`, written as they are.
pub fn store_with_records(dir: &Path, records: &[(&str, u8, &[u8])]) -> PathBuf {
    let store = dir.join("store");
    let engine = Config::new(&store)
        .durability(Durability::Buffered)
        .open()
        .expect("opens");
    for (key, codec, value) in records {
        engine.put(key, *codec, value).expect("puts");
    }
    engine.close().expect("closes");
    store
}

/// A store holding `shards`, each a payload stored as zstd.
pub fn store_with(dir: &Path, shards: &[(&str, &[u8])]) -> PathBuf {
    let store = dir.join("store");
    let engine = Config::new(&store)
        .durability(Durability::Buffered)
        .open()
        .expect("opens");
    let ser = MessagepackSerializer::default().level(3); // records put as codec 2: always zstd
    for (key, payload) in shards {
        engine
            .put(
                key,
                Codec::MsgpackZstd.as_u8(),
                &ser.encode_payload(payload).expect("encodes").bytes,
            )
            .expect("puts");
    }
    engine.close().expect("closes");
    store
}

/// Writes `payload` gzipped to `path`, as Python squirrel writes a shard file.
pub fn gzip(path: &Path, payload: &[u8]) {
    let mut gz = GzEncoder::new(
        std::fs::File::create(path).expect("creates"),
        Compression::fast(),
    );
    gz.write_all(payload).expect("writes");
    gz.finish().expect("finishes");
}
