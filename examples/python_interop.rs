//! Moving data both ways with Python squirrel: export a store to a squirrel directory
//! (`KEY.gz` files of msgpack-numpy samples, what squirrel-core's `SquirrelStore` reads), and
//! import such a directory back, byte for byte.
//!
//! Run with `cargo run --release --example python_interop`.

use std::error::Error;

use squirrel_store::array::NdArray;
use squirrel_store::transfer::{
    ExportOptions, ImportOptions, export_squirrel_dir, import_squirrel_dir,
};
use squirrel_store::{Config, Engine, SquirrelStore, Store};

fn main() -> Result<(), Box<dyn Error>> {
    let tmp = tempfile::tempdir()?;
    let (store_dir, squirrel_dir, back_dir) = (
        tmp.path().join("store"),
        tmp.path().join("squirrel"),
        tmp.path().join("back"),
    );
    let store = SquirrelStore::open(&store_dir)?;
    for s in 0..3 {
        let shard = vec![NdArray::from_slice([2, 2], &[s as f32, 1.0, 2.0, 3.0])?; 4];
        store.set(&shard, Some(&format!("shard_{s}")))?;
    }
    drop(store);

    // Out: one KEY.gz per shard, readable by `squirrel.store.SquirrelStore(url)` in Python.
    let engine = Engine::open_read_only(&store_dir)?;
    let out = export_squirrel_dir(
        &engine,
        &squirrel_dir,
        &ExportOptions::new(),
        &mut |_, _| {},
    )?;
    println!(
        "exported {} shards to {}",
        out.shards,
        squirrel_dir.display()
    );

    // Back in: the payloads are compared byte for byte with what is already stored.
    let target = Config::new(&back_dir).open()?;
    let rep = import_squirrel_dir(
        &squirrel_dir,
        &target,
        &ImportOptions::new(),
        &mut |_, _| {},
    )?;
    println!("imported {} shards ({} samples)", rep.shards, rep.samples);
    assert_eq!(rep.shards, 3);
    assert_eq!(target.keys()?, engine.keys()?);
    Ok(())
}
