//! Issue 15's CLI items: `import` of a directory that is not a squirrel directory fails saying
//! what it found; commands on a squirrel directory suggest `import`; `get` of a damaged key exits
//! 1 as documented.

mod common;

use common::cli::*;

use std::process::Output;

use squirrel_store::serializer::{Codec, MessagepackSerializer, Serializer};

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
    let ser = MessagepackSerializer::default().level(3); // records put as codec 2: always zstd
    let frame = ser.encode_payload(b"\x01").expect("encodes").bytes;
    let store = store_with_records(tmp.path(), &[("a", Codec::MsgpackZstd.as_u8(), &frame)]);
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
    let ser = MessagepackSerializer::default().level(3); // records put as codec 2: always zstd
    let good = ser.encode_payload(b"\x01").expect("encodes").bytes;
    let store = store_with_records(
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

#[test]
fn the_exit_status_paragraph_is_in_the_main_help_only() {
    let main = stdout(&run(["--help"]));
    assert_eq!(main.matches("Exit status:").count(), 1, "{main}");
    assert!(main.contains("verify found damage"), "{main}");
    for sub in ["keys", "stats", "verify", "get", "import"] {
        let help = stdout(&run([sub, "--help"]));
        // A pointer to it, not the paragraph: `keys --help` does not talk about `rm`.
        assert!(
            help.contains("see `squirrel-store --help`"),
            "{sub}: {help}"
        );
        assert!(!help.contains("verify found damage"), "{sub}: {help}");
    }
}

#[test]
fn quiet_prints_only_data_problems_and_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    gzip(&src.join("a.gz"), b"\x01\x02");
    gzip(&src.join("b.gz"), b"\x03");
    let store = tmp.path().join("store");
    let o = run(["import", "--quiet", p(&src), p(&store)]);
    assert_code(&o, 0);
    assert!(o.stdout.is_empty() && o.stderr.is_empty(), "{}", stdout(&o));
    let o = run(["-q", "verify", p(&store)]);
    assert_code(&o, 0);
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    let out = tmp.path().join("out");
    let o = run(["export", "-q", p(&store), p(&out)]);
    assert_code(&o, 0);
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    // Data is still printed.
    let o = run(["keys", "-q", p(&store)]);
    assert_eq!(stdout(&o), "a\nb\n");
    let o = run(["verify", "-q", "--json", p(&store)]);
    assert!(stdout(&o).starts_with('{'), "{}", stdout(&o));
    let o = run(["compact", "-q", p(&store)]);
    assert_code(&o, 0);
    assert!(o.stdout.is_empty(), "{}", stdout(&o));

    // A problem is still said: only it.
    let engine = squirrel_store::Engine::open(&store).expect("opens");
    engine
        .put("frame", Codec::MsgpackZstd.as_u8(), b"not a zstd frame")
        .expect("puts");
    engine.close().expect("closes");
    let o = run(["verify", "-q", p(&store)]);
    assert_code(&o, 1);
    let text = stdout(&o);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("bad shard \"frame\""), "{text}");
    // Errors too.
    let o = run(["verify", "-q", p(&tmp.path().join("nothing"))]);
    assert_code(&o, 2);
    assert!(stderr(&o).contains("no store"), "{}", stderr(&o));
}
