//! The CLI's repair path: `verify` finds one damaged record and points at `repair`, which saves
//! it into lost+found/, removes it, and leaves a store that verifies clean with every other key.

use assert_cmd::Command;
use squirrel_store::{Config, Durability, Engine};

fn cli(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("squirrel-store")
        .expect("binary")
        .args(args)
        .output()
        .expect("runs")
}

#[test]
fn verify_recommends_repair_and_repair_loses_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("st");
    let db = Config::new(&store)
        .durability(Durability::Fsync)
        .open()
        .unwrap();
    for i in 0..10 {
        db.set(&format!("k{i}"), format!("value {i}").repeat(20).as_bytes())
            .unwrap();
    }
    db.close().unwrap();
    let seg = store.join("segment.sqs");
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.windows(7).position(|w| w == b"value 4").unwrap();
    bytes[at + 3] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    std::fs::remove_file(store.join("index.sqm")).unwrap();
    let s = store.to_str().unwrap();

    let v = cli(&["verify", s]);
    let text = String::from_utf8_lossy(&v.stdout);
    assert_eq!(v.status.code(), Some(1), "{text}");
    assert!(text.contains("key \"k4\""), "{text}");
    assert!(text.contains("squirrel-store repair"), "{text}");
    assert!(text.contains("1 problem found"), "{text}");

    let r = cli(&["repair", s]);
    let text = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.status.code(), Some(0), "{text}");
    assert!(text.contains("deleted \"k4\""), "{text}");

    let v = cli(&["verify", s]);
    assert_eq!(
        v.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    assert!(String::from_utf8_lossy(&v.stdout).contains("lost+found: 1 files"));
    let db = Engine::open_read_only(&store).unwrap();
    for i in (0..10).filter(|&i| i != 4) {
        let v = db.get(&format!("k{i}")).unwrap().unwrap();
        assert_eq!(&*v, format!("value {i}").repeat(20).as_bytes());
    }
    assert!(db.get("k4").unwrap().is_none());
}
