//! Issue 10's squirrel directory items: key components near the file name limit (the temporary
//! name must not be longer than the final one), files whose names make no key are reported rather
//! than silently skipped, and directories an export creates are made one by one (each synced into
//! its parent) with a clear error when a file stands in the way.

use squirrel_store::squirrel_dir::{
    MAX_NAME_LEN, SquirrelDir, SquirrelDirError, create_dir_all_synced, validate_key,
};

#[test]
fn components_up_to_the_file_name_limit_are_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = SquirrelDir::new(tmp.path());
    // 234..=252 bytes: the final name fits (with .gz, at most 255), a temporary name built from it
    // did not ("File name too long").
    for len in [234, 240, 252] {
        let key = "a".repeat(len);
        dir.write(&key, &[len as u8]).expect("writes");
        assert_eq!(dir.read(&key).expect("reads"), [len as u8]);
        let nested = format!("d/{}", "b".repeat(len));
        dir.write(&nested, b"\x01").expect("writes");
    }
    assert_eq!(dir.keys(true).expect("lists").len(), 6);
    // One byte more cannot be a file name: refused as a key, before touching the disk.
    let too_long = "c".repeat(MAX_NAME_LEN - 2);
    assert!(matches!(
        validate_key(&too_long),
        Err(SquirrelDirError::InvalidKey { .. })
    ));
    assert!(validate_key(&format!("{}/k", "d".repeat(MAX_NAME_LEN + 1))).is_err());
    assert!(validate_key(&format!("{}/k", "d".repeat(MAX_NAME_LEN))).is_ok());
}

#[test]
fn files_that_make_no_key_are_listed_as_skipped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("good.gz"), b"").expect("writes");
    std::fs::write(tmp.path().join("back\\slash.gz"), b"").expect("writes");
    std::fs::write(tmp.path().join("not-a-shard.txt"), b"").expect("writes");
    std::fs::create_dir(tmp.path().join("sub")).expect("mkdir");
    std::fs::write(tmp.path().join("sub/inner\\x.gz"), b"").expect("writes");
    let mut expected_skipped = vec![
        tmp.path().join("back\\slash.gz"),
        tmp.path().join("sub/inner\\x.gz"),
    ];
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let name = std::ffi::OsStr::from_bytes(b"bad\xff.gz");
        std::fs::write(tmp.path().join(name), b"").expect("writes");
        expected_skipped.push(tmp.path().join(name));
        let dir = std::ffi::OsStr::from_bytes(b"dir\xfe");
        std::fs::create_dir(tmp.path().join(dir)).expect("mkdir");
        expected_skipped.push(tmp.path().join(dir));
    }
    expected_skipped.sort();
    let (keys, skipped) = SquirrelDir::new(tmp.path())
        .keys_and_skipped(true)
        .expect("lists");
    assert_eq!(keys, ["good"]);
    assert_eq!(skipped, expected_skipped);
    // Top level only: what is in subdirectories is not looked at.
    let (keys, skipped) = SquirrelDir::new(tmp.path())
        .keys_and_skipped(false)
        .expect("lists");
    assert_eq!(keys, ["good"]);
    assert!(skipped.iter().all(|p| p.parent() == Some(tmp.path())));
}

#[test]
fn directories_are_created_one_by_one_and_a_file_in_the_way_is_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let deep = tmp.path().join("a/b/c");
    let made = create_dir_all_synced(&deep).expect("creates");
    assert_eq!(
        made,
        [
            tmp.path().join("a"),
            tmp.path().join("a/b"),
            tmp.path().join("a/b/c")
        ]
    );
    assert!(deep.is_dir());
    assert!(create_dir_all_synced(&deep).expect("exists").is_empty());
    let file = tmp.path().join("afile");
    std::fs::write(&file, b"x").expect("writes");
    match create_dir_all_synced(&file.join("sub")) {
        Err(SquirrelDirError::Io { path, source }) => {
            assert_eq!(path, file);
            assert_eq!(source.kind(), std::io::ErrorKind::NotADirectory);
        }
        other => panic!("expected NotADirectory, got {other:?}"),
    }
}
