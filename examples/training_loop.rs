//! A training loop's data side: this rank's share of the shards, reshuffled every epoch with a
//! seed, decoded on all cores, samples mixed through a buffer, batched.
//!
//! Run with `cargo run --release --example training_loop`.

use std::error::Error;

use serde::{Deserialize, Serialize};
use squirrel_store::array::NdArray;
use squirrel_store::loader::Split;
use squirrel_store::{SquirrelStore, Store};

#[derive(Serialize, Deserialize)]
struct Sample {
    features: NdArray,
    label: i64,
}

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let store = SquirrelStore::open(dir.path())?;
    for s in 0..16 {
        let shard: Vec<Sample> = (0..32)
            .map(|i| {
                let x: Vec<f32> = (0..16).map(|j| (s * 32 + i + j) as f32).collect();
                Ok(Sample {
                    features: NdArray::from_slice([16], &x)?,
                    label: (i % 10) as i64,
                })
            })
            .collect::<Result<_, squirrel_store::array::ArrayError>>()?;
        store.set(&shard, Some(&format!("shard_{s:02}")))?;
    }
    // In a real job these come from the launcher (torch.distributed, MPI, RANK/WORLD_SIZE).
    let (rank, world_size) = (0, 2);
    for epoch in 0..3u64 {
        let samples = store
            .loader()
            .split(Split::new(rank, world_size)?)
            .shuffle_keys(true)
            .shuffle_samples(256)
            .seed(epoch) // a new order every epoch, the same order for the same epoch
            .samples::<Sample>()?;
        let mut batch = Vec::with_capacity(64);
        let (mut batches, mut seen) = (0, 0);
        for sample in samples {
            let sample = sample?;
            let _x: &[f32] = sample.features.as_slice()?; // feed the model here
            batch.push(sample.label);
            seen += 1;
            if batch.len() == 64 {
                batches += 1;
                batch.clear();
            }
        }
        println!(
            "epoch {epoch}: rank {rank}/{world_size} saw {seen} samples in {batches} full batches"
        );
        assert_eq!(seen, 16 * 32 / world_size);
    }
    Ok(())
}
