//! Moving data to and from Python squirrel: [`squirrel_dir`] reads and writes a `SquirrelStore`
//! directory (one gzip'd MessagePack file per shard) and [`transfer`] imports and exports whole
//! stores through it.

pub mod squirrel_dir;
pub mod transfer;
