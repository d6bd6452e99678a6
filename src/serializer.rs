//! Placeholder: replaced by the serializer work.

/// What was wrong with a shard's bytes.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {}
