//! The squirrel layer: shards of samples over the engine, as Python squirrel keeps them.
//!
//! [`value`] and [`array`] are a sample's data model, [`serializer`] turns shards into record
//! bytes (MessagePack, zstd where it pays), [`store`] and [`driver`] are squirrel's `Store` and
//! `Driver` API, [`loader`] reads many shards in parallel, and `keygen` makes squirrel's random keys.

pub mod array;
pub mod driver;
pub(crate) mod keygen;
pub mod loader;
pub mod serializer;
pub mod store;
pub mod value;
