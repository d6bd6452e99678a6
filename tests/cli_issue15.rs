//! Issue 15's CLI items: `import` of a directory that is not a squirrel directory fails saying
//! what it found; commands on a squirrel directory suggest `import`; `get` of a damaged key exits
//! 1 as documented.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use flate2::Compression;
use flate2::write::GzEncoder;
use squirrel_store::serializer::{Codec, MessagepackSerializer, Serializer};
use squirrel_store::{Config, Durability};

fn run<I, S>(args: I) -> Output
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

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

fn store_with(dir: &Path, shards: &[(&str, u8, &[u8])]) -> PathBuf {
    let store = dir.join("store");
    let engine = Config::new(&store)
        .durability(Durability::Buffered)
        .open()
        .expect("opens");
    for (key, codec, value) in shards {
        engine.put(key, *codec, value).expect("puts");
    }
    engine.close().expect("closes");
    store
}

fn gzip(path: &Path, payload: &[u8]) {
    let mut gz = GzEncoder::new(
        std::fs::File::create(path).expect("creates"),
        Compression::fast(),
    );
    gz.write_all(payload).expect("writes");
    gz.finish().expect("finishes");
}

#[track_caller]
fn assert_one_line_error(o: &Output, needles: &[&str]) {
    assert_code(o, 2);
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    for n in needles {
        assert!(err.contains(n), "{err:?} should mention {n:?}");
    }
}

#[test]
fn import_of_a_directory_without_shards_fails_saying_what_it_holds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ser = MessagepackSerializer::default();
    let frame = ser.encode_payload(b"\x01").expect("encodes");
    let store = store_with(tmp.path(), &[("a", Codec::MsgpackZstd.as_u8(), &frame)]);
    let target = tmp.path().join("target");

    // A squirrel-store store is no squirrel directory.
    let o = run(["import", p(&store), p(&target)]);
    assert_one_line_error(&o, &["no shard files", "squirrel-store store", "export"]);
    assert!(!target.exists(), "nothing is created");

    // Some other directory: what it holds.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(other.join("data")).expect("mkdir");
    std::fs::write(other.join("readme.txt"), b"hi").expect("writes");
    let o = run(["import", p(&other), p(&target)]);
    assert_one_line_error(
        &o,
        &["no shard files", "1 file and 1 directory", "readme.txt"],
    );
    assert!(!target.exists());

    // An empty one.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    assert_one_line_error(
        &run(["import", p(&empty), p(&target)]),
        &["empty directory"],
    );

    // Shards only in subdirectories, with --top-level-only: say where they are.
    let nested = tmp.path().join("nested");
    std::fs::create_dir_all(nested.join("sub")).expect("mkdir");
    gzip(&nested.join("sub/k.gz"), b"\x01");
    let o = run(["import", "--top-level-only", p(&nested), p(&target)]);
    assert_one_line_error(&o, &["top level", "1 shard file in subdirectories"]);
    assert!(!target.exists());
    // Without it, they import.
    let o = run(["import", p(&nested), p(&target)]);
    assert_code(&o, 0);
}

#[test]
fn commands_on_a_squirrel_directory_suggest_import() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sq");
    std::fs::create_dir(&dir).expect("mkdir");
    gzip(&dir.join("a.gz"), b"\x01");
    gzip(&dir.join("b.gz"), b"\x02");
    for cmd in ["verify", "stats", "keys"] {
        let o = run([cmd, p(&dir)]);
        assert_one_line_error(
            &o,
            &[
                "no store",
                "Python squirrel directory",
                "2 shard files",
                "import",
            ],
        );
    }
    // A path with nothing in it gets no such hint.
    let none = tmp.path().join("none");
    std::fs::create_dir(&none).expect("mkdir");
    let o = run(["verify", p(&none)]);
    assert_code(&o, 2);
    assert!(!stderr(&o).contains("import"), "{}", stderr(&o));
}

#[test]
fn get_of_a_key_whose_shard_is_unreadable_exits_1() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ser = MessagepackSerializer::default();
    let good = ser.encode_payload(b"\x01").expect("encodes");
    let store = store_with(
        tmp.path(),
        &[
            ("bad", Codec::MsgpackZstd.as_u8(), b"not a zstd frame"),
            ("good", Codec::MsgpackZstd.as_u8(), &good),
        ],
    );
    for args in [
        vec!["get", p(&store), "bad"],
        vec!["get", "--raw", p(&store), "bad"],
        vec!["get", "--json", p(&store), "bad"],
    ] {
        let o = run(&args);
        assert_code(&o, 1);
        let err = stderr(&o);
        assert!(err.starts_with("squirrel-store: error: "), "{err}");
        assert!(err.contains("\"bad\""), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    assert_code(&run(["get", p(&store), "good"]), 0);
    // A missing key is 1 too; a missing store is 2.
    assert_code(&run(["get", p(&store), "nope"]), 1);
    assert_code(&run(["get", p(&tmp.path().join("no-store")), "good"]), 2);
}
