//! The maintenance binary (filled in by the CLI work).
fn main() {}
