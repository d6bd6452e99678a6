//! Issue 10, item 4, through the binary: `get`, `verify`, `export` of a zstd record that expands
//! to tens of MiB, and `import` of a gzip bomb, stay in bounded memory (run under `ulimit -v`).

mod common;

use common::cli::*;

use std::process::Output;

#[test]
fn get_summary_counts_a_bomb_of_samples_without_building_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // 16 Mi one-byte samples in a 700-byte record.
    let zeros = vec![0u8; 16 << 20];
    let store = store_with(tmp.path(), &[("z", &zeros)]);
    let o = run(["get", p(&store), "z"]);
    assert_code(&o, 0);
    let text = stdout(&o);
    assert!(text.contains("samples   16777216"), "{text}");
    assert!(text.contains("16777206 more samples"), "{text}");
    let o = run(["get", "--raw", p(&store), "z"]);
    assert_code(&o, 0);
    assert_eq!(o.stdout.len(), 16 << 20);
    let o = run(["verify", p(&store)]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("16777216 samples"), "{}", stdout(&o));
}

/// Runs the binary under `ulimit -v` (KiB of address space): a command that materialises every
/// sample of a bomb, or preallocates from a claimed size, aborts under it.
#[cfg(unix)]
fn run_limited(kib: u64, args: &[&str]) -> Output {
    let bin = assert_cmd::cargo::cargo_bin("squirrel-store");
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
        .arg(bin)
        .args(args)
        .output()
        .expect("runs")
}

#[cfg(unix)]
#[test]
fn bombs_are_read_in_bounded_memory() {
    // 512 MiB of address space: before the fix, `get` and `verify` of this 1 KB record built
    // 32 Mi `Value`s (over 1 GiB) and `import` of the 40 KB file collected 48 Mi sample slices
    // (1 GiB); now each stays within a few tens of MiB.
    const LIMIT_KIB: u64 = 512 << 10;
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = store_with(tmp.path(), &[("z", &vec![0u8; 32 << 20])]);
    for args in [
        vec!["get", p(&store), "z"],
        vec!["verify", p(&store)],
        vec!["get", "--raw", p(&store), "z"],
    ] {
        let o = run_limited(LIMIT_KIB, &args);
        assert_code(&o, 0);
    }
    let out = tmp.path().join("out");
    let o = run_limited(LIMIT_KIB, &["export", p(&store), p(&out)]);
    assert_code(&o, 0);

    let src = tmp.path().join("src");
    std::fs::create_dir(&src).expect("mkdir");
    gzip(&src.join("bomb.gz"), &vec![0u8; 48 << 20]);
    let imported = tmp.path().join("imported");
    let o = run_limited(LIMIT_KIB, &["import", p(&src), p(&imported)]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("50331648 samples"), "{}", stdout(&o));
}
