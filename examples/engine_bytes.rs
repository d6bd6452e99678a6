//! The engine on plain bytes: durability modes, batches, reads straight out of the map,
//! read-only handles beside the writer, and what `verify` says.
//!
//! Run with `cargo run --release --example engine_bytes`.

use std::error::Error;

use squirrel_store::{Config, Durability, Engine, verify};

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    // Buffered: `set` returns once the bytes are in the file; `sync` makes them power-cut safe.
    let db = Config::new(dir.path())
        .durability(Durability::Buffered)
        .open()?;
    db.set_many((0..1000).map(|i| (format!("key-{i:04}"), vec![i as u8; 100])))?;
    db.sync()?;
    db.delete("key-0007")?;

    // A read-only handle (another process could do the same) sees what the writer published.
    let reader = Engine::open_read_only(dir.path())?;
    reader.refresh()?;
    let value = reader.get("key-0042")?.expect("written");
    assert_eq!(&*value, &[42u8; 100][..]); // a slice of the memory map, checked by CRC-32
    assert!(reader.get("key-0007")?.is_none());

    let stats = db.stats();
    println!(
        "{} keys, {} live bytes, {} dead bytes, segment {} bytes",
        db.len(),
        stats.live_bytes,
        stats.dead_bytes,
        stats.segment_len
    );
    db.close()?;
    let report = verify(dir.path(), &mut |_, _| {})?;
    println!(
        "verify: {} records, {} intact, damaged: {}",
        report.records,
        report.intact,
        report.damaged.len()
    );
    assert!(!report.is_corrupt());
    Ok(())
}
