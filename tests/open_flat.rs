//! Opening does not scan: a store of 1M small keys reopens replaying no records and reading
//! only the index header, shown by counters rather than by time.

use squirrel_store::{Config, Durability, Engine};

#[test]
fn open_of_a_million_keys_replays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = 1_000_000u32;
    {
        let db = Config::new(dir.path())
            .durability(Durability::Buffered)
            .open()
            .unwrap();
        let value = [7u8; 16];
        let keys: Vec<String> = (0..n).map(|i| format!("k{i:07}")).collect();
        for chunk in keys.chunks(10_000) {
            db.set_many(chunk.iter().map(|k| (k.as_str(), &value[..])))
                .unwrap();
        }
        db.close().unwrap();
    }
    let db = Engine::open(dir.path()).unwrap();
    let s = db.stats();
    assert_eq!(s.replayed_records, 0, "no segment record was replayed");
    assert!(!s.index_rebuilt, "the index was trusted, not rebuilt");
    assert_eq!(s.checkpoint_len, s.segment_len);
    assert_eq!(db.len(), u64::from(n));
    assert_eq!(&*db.get("k0999999").unwrap().unwrap(), &[7u8; 16]);
    // A few more writes leave a short tail; reopening replays exactly those.
    db.set("extra-1", b"x").unwrap();
    db.set("extra-2", b"y").unwrap();
    db.abandon();
    let db = Engine::open_read_only(dir.path()).unwrap();
    assert_eq!(db.stats().replayed_records, 2);
    assert_eq!(db.len(), u64::from(n) + 2);
}
