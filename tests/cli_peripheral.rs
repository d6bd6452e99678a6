//! Issue 10's smaller CLI and transfer items: `export` of long and invalid keys, `import` of files
//! it cannot name, `keys` of keys with control characters (`--null`), `export` into a file.

mod common;

use common::cli::*;

use squirrel_store::Engine;
use squirrel_store::squirrel_dir::SquirrelDir;

#[test]
fn export_writes_keys_with_long_components_and_reports_invalid_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let long = "k".repeat(252); // 252 + ".gz" = 255 bytes: the longest name there is
    let too_long = "t".repeat(253);
    let nested_long = format!("sub/{}", "n".repeat(240));
    let shards: Vec<(&str, &[u8])> = vec![
        (&long, b"\x01"),
        (&too_long, b"\x02"),
        (&nested_long, b"\x03"),
        ("../escape", b"\x04"),
        ("plain", b"\x05"),
    ];
    let store = store_with(tmp.path(), &shards);
    let out = tmp.path().join("out");
    let o = run(["export", p(&store), p(&out)]);
    // Finished, and a problem to report: exit 1.
    assert_code(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("../escape"), "{err}");
    assert!(err.contains(&too_long), "{err}");
    assert!(err.contains("2 keys were not exported"), "{err}");
    assert!(stdout(&o).contains("3 shards"), "{}", stdout(&o));
    let dir = SquirrelDir::new(&out);
    assert_eq!(dir.read(&long).expect("reads"), [1]);
    assert_eq!(dir.read(&nested_long).expect("reads"), [3]);
    assert_eq!(dir.read("plain").expect("reads"), [5]);
    assert!(!tmp.path().join("escape.gz").exists());
    // No temporary file left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .expect("lists")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn export_into_a_file_says_it_is_not_a_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_with(tmp.path(), &[("a", b"\x01")]);
    let file = tmp.path().join("afile");
    std::fs::write(&file, b"x").expect("writes");
    let o = run(["export", p(&store), p(&file)]);
    assert_code(&o, 2);
    let err = stderr(&o);
    assert!(err.contains("not a directory"), "{err}");
    assert!(!err.contains("File exists"), "{err}");
    assert_eq!(std::fs::read(&file).expect("reads"), b"x");
}

#[test]
fn import_reports_the_files_it_cannot_name() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    gzip(&src.join("good.gz"), b"\x01\x02");
    gzip(&src.join("back\\slash.gz"), b"\x03");
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"bad\xff.gz");
        gzip(&src.join(name), b"\x04");
    }
    let store = tmp.path().join("store");
    let o = run(["import", p(&src), p(&store)]);
    assert_code(&o, 1);
    let err = stderr(&o);
    let expected = if cfg!(unix) { "2 files" } else { "1 file" };
    assert!(err.contains(&format!("skipped {expected}")), "{err}");
    assert!(err.contains("back\\\\slash.gz"), "{err}");
    assert!(stdout(&o).contains("1 shards"), "{}", stdout(&o));
    let engine = Engine::open_read_only(&store).expect("opens");
    assert_eq!(engine.keys().expect("keys"), ["good"]);
}

#[test]
fn keys_escapes_control_characters_and_null_separates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_with(
        tmp.path(),
        &[
            ("a\nb", b"\x01"),
            ("back\\slash", b"\x01"),
            ("bell\x07", b"\x01"),
            ("plain", b"\x01"),
            ("tab\there", b"\x01"),
        ],
    );
    let o = run(["keys", p(&store)]);
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o),
        "a\\nb\nback\\\\slash\nbell\\u{7}\nplain\ntab\\there\n"
    );
    let o = run(["keys", "--null", p(&store)]);
    assert_code(&o, 0);
    assert_eq!(
        o.stdout,
        b"a\nb\0back\\slash\0bell\x07\0plain\0tab\there\0".to_vec()
    );

    // A key holding NUL cannot be NUL-terminated: it is reported, the others listed.
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_with(tmp.path(), &[("nul\0key", b"\x01"), ("ok", b"\x01")]);
    let o = run(["keys", "-0", p(&store)]);
    assert_code(&o, 1);
    assert_eq!(o.stdout, b"ok\0".to_vec());
    assert!(stderr(&o).contains("nul\\u{0}key"), "{}", stderr(&o));
}
