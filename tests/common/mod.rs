//! Helpers shared by the reliability tests.
#![allow(dead_code)]

pub mod cli;

/// A value that proves which key and version it belongs to: a header (key length, version,
/// length) then bytes derived from both, so a torn, stale-mixed or foreign value cannot pass.
pub fn value_for(key: &str, version: u64, len: usize) -> Vec<u8> {
    let len = len.max(20);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&(key.len() as u32).to_le_bytes());
    v.extend_from_slice(&version.to_le_bytes());
    v.extend_from_slice(&(len as u64).to_le_bytes());
    let mut x = key
        .bytes()
        .fold(0x9E37_79B9_7F4A_7C15u64 ^ version, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        })
        | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

/// The version a value was written with, if it is a whole value written for `key`.
pub fn version_of(key: &str, v: &[u8]) -> Option<u64> {
    if v.len() < 20 {
        return None;
    }
    let version = u64::from_le_bytes(v[4..12].try_into().ok()?);
    let len = u64::from_le_bytes(v[12..20].try_into().ok()?) as usize;
    (value_for(key, version, len) == v).then_some(version)
}

/// A small deterministic RNG (splitmix64), so the tests need no seed plumbing.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A temporary directory in memory (`/dev/shm`) when there is one: these tests check the
/// engine's logic under crashes and images built by hand, not the disk, and fsync-heavy runs are
/// many times faster there. Falls back to the system temp dir.
pub fn fast_tempdir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("tempdir")
}
