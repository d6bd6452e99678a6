//! Writes a small store that stays on disk, so the CLI can be tried on it:
//!
//! ```sh
//! cargo run --example persistent_store -- /tmp/demo-store
//! cargo run -- stats /tmp/demo-store
//! cargo run -- keys /tmp/demo-store
//! cargo run -- get /tmp/demo-store shard_0
//! cargo run -- verify /tmp/demo-store
//! cargo run -- export /tmp/demo-store /tmp/demo-squirrel   # a Python squirrel directory
//! ```

use std::error::Error;

use serde::Serialize;
use squirrel_store::array::NdArray;
use squirrel_store::{SquirrelStore, Store};

#[derive(Serialize)]
struct Sample {
    image: NdArray,
    label: i64,
}

fn main() -> Result<(), Box<dyn Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "demo-store".to_string());
    let store = SquirrelStore::open(&path)?;
    for s in 0..5 {
        let shard: Vec<Sample> = (0..8)
            .map(|i| {
                let pixels: Vec<u8> = (0..64).map(|p| (p * (s + 1) + i) as u8).collect();
                Ok(Sample {
                    image: NdArray::from_slice([8, 8], &pixels)?,
                    label: i64::from(i % 2 == 0),
                })
            })
            .collect::<Result<_, squirrel_store::array::ArrayError>>()?;
        store.set(&shard, Some(&format!("shard_{s}")))?;
    }
    println!("wrote 5 shards of 8 samples to {path}; try `squirrel-store stats {path}`");
    Ok(())
}
