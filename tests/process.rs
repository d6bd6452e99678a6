//! Two processes: a second writer is refused with "store is locked", and a read-only handle in
//! one process sees what a writer in another appended after `refresh()`.
//!
//! The child is this same test binary, run with `SQS_CHILD` set so only `child_entry` acts.

use std::process::Command;

use squirrel_store::{Config, Durability, Engine, Error};

fn run_child(mode: &str, dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("SQS_CHILD", mode)
        .env("SQS_DIR", dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Does nothing unless run as a child by the tests below.
#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("SQS_CHILD") else {
        return;
    };
    let dir = std::env::var("SQS_DIR").unwrap();
    match mode.as_str() {
        "try-lock" => match Engine::open(&dir) {
            Err(Error::Locked { .. }) => println!("RESULT=locked"),
            Ok(_) => println!("RESULT=opened"),
            Err(e) => println!("RESULT=error {e}"),
        },
        "write" => {
            let db = Config::new(&dir)
                .durability(Durability::Buffered)
                .open()
                .unwrap();
            for i in 0..100 {
                db.set(
                    &format!("child-{i}"),
                    format!("from the child {i}").as_bytes(),
                )
                .unwrap();
            }
            db.delete("a").unwrap();
            // Leave without a checkpoint for half the keys: refresh must replay them.
            db.checkpoint().unwrap();
            for i in 100..150 {
                db.set(
                    &format!("child-{i}"),
                    format!("from the child {i}").as_bytes(),
                )
                .unwrap();
            }
            db.abandon();
            println!("RESULT=written");
        }
        other => panic!("unknown child mode {other}"),
    }
}

#[test]
fn second_writer_in_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = Engine::open(dir.path()).unwrap();
    db.set("a", b"1").unwrap();
    let (_, out) = run_child("try-lock", dir.path());
    assert!(out.contains("RESULT=locked"), "child said: {out}");
    drop(db);
    let (_, out) = run_child("try-lock", dir.path());
    assert!(out.contains("RESULT=opened"), "child said: {out}");
}

#[test]
fn read_only_handle_sees_another_process_after_refresh() {
    let dir = tempfile::tempdir().unwrap();
    Engine::open(dir.path()).unwrap().set("a", b"1").unwrap();
    let ro = Engine::open_read_only(dir.path()).unwrap();
    assert_eq!(ro.len(), 1);
    let (code, out) = run_child("write", dir.path());
    assert_eq!(code, 0, "child failed: {out}");
    assert!(out.contains("RESULT=written"));
    ro.refresh().unwrap();
    assert_eq!(ro.len(), 150);
    assert!(ro.get("a").unwrap().is_none());
    for i in 0..150 {
        let v = ro.get(&format!("child-{i}")).unwrap().unwrap();
        assert_eq!(&*v, format!("from the child {i}").as_bytes());
    }
    assert_eq!(ro.keys().unwrap().len(), 150);
}
