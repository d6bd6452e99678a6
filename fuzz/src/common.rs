//! What the targets share: an input reader, temporary stores, keys and values, model checks.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use squirrel_store::{Config, Durability, Engine};

/// Reads structured choices from the fuzzer's bytes; past the end every read gives zeros, so any
/// input decodes to something.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.data.len()
    }

    /// One byte (0 past the end).
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// Little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// A temporary directory, on tmpfs (`/dev/shm`) when there is one: fsync is then nearly free and
/// the fuzzers run an order of magnitude faster.
pub fn tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new().prefix("sqfuzz-").tempdir_in(shm)
    {
        return d;
    }
    tempfile::Builder::new()
        .prefix("sqfuzz-")
        .tempdir()
        .expect("create a temporary directory")
}

/// Number of distinct keys the model targets use.
pub const KEY_COUNT: u8 = 12;

/// Key number `i % KEY_COUNT`: short ASCII, non-ASCII UTF-8, and the two longest allowed keys.
pub fn key(i: u8) -> String {
    match i % KEY_COUNT {
        0 => "a".into(),
        1 => "b".into(),
        2 => "c".into(),
        3 => "shard_0".into(),
        4 => "shard_1".into(),
        5 => "shard_10".into(),
        6 => "ключ".into(),
        7 => "dir/sub/key.bin".into(),
        8 => "\u{1F43F}".into(),
        9 => "k9".into(),
        10 => "x".repeat(squirrel_store::MAX_KEY_LEN),
        _ => "é".repeat(squirrel_store::MAX_KEY_LEN / 2),
    }
}

/// Every key `key` can return.
pub fn all_keys() -> Vec<String> {
    (0..KEY_COUNT).map(key).collect()
}

/// A value's length from one size byte (and more bytes for the larger classes): mostly small,
/// sometimes a few KiB, rarely over the engine's 256 KiB write-coalescing threshold.
pub fn value_len(input: &mut Input<'_>, large_left: &mut u32) -> usize {
    match input.u8() {
        b @ 0..=199 => usize::from(b),
        200..=249 => usize::from(input.u16() % 8192),
        _ if *large_left > 0 => {
            *large_left -= 1;
            (256 << 10) + usize::from(input.u16())
        }
        _ => 1,
    }
}

/// A value of `len` bytes that starts with the write's sequence number, so two writes' values
/// differ whenever they have 4 bytes or more.
pub fn value(seq: u32, len: usize, fill: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| fill.wrapping_add((i as u8).wrapping_mul(31)))
        .collect();
    let tag = seq.to_le_bytes();
    let n = len.min(4);
    v[..n].copy_from_slice(&tag[..n]);
    v
}

/// The model: key to value.
pub type Model = BTreeMap<String, Vec<u8>>;

/// Opens (creating) a read-write store with `Durability::Fsync`.
pub fn open_rw(dir: &Path, checkpoint_records: usize, checkpoint_bytes: u64) -> Engine {
    try_open_rw(dir, checkpoint_records, checkpoint_bytes).expect("open the store read-write")
}

/// Like [`open_rw`], returning the error.
pub fn try_open_rw(
    dir: &Path,
    checkpoint_records: usize,
    checkpoint_bytes: u64,
) -> squirrel_store::Result<Engine> {
    Config::new(dir)
        .durability(Durability::Fsync)
        .checkpoint_every(checkpoint_records, checkpoint_bytes)
        .open()
}

/// Asserts the store holds exactly `model`: `keys()`, `len()`, and `get` of every key the targets
/// use (present or not).
pub fn assert_equals(db: &Engine, model: &Model, what: &str) {
    let keys = db
        .keys()
        .unwrap_or_else(|e| panic!("{what}: keys() failed: {e}"));
    let expected: Vec<&String> = model.keys().collect();
    let got: Vec<&String> = keys.iter().collect();
    assert_eq!(got, expected, "{what}: keys()");
    assert_eq!(db.len(), model.len() as u64, "{what}: len()");
    let mut pairs: Vec<(String, Vec<u8>)> = db
        .iter()
        .unwrap_or_else(|e| panic!("{what}: iter() failed: {e}"))
        .map(|item| {
            let (k, v) = item.unwrap_or_else(|e| panic!("{what}: an iter() item failed: {e}"));
            (k, v.to_vec())
        })
        .collect();
    pairs.sort();
    let expected: Vec<(String, Vec<u8>)> =
        model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert!(pairs == expected, "{what}: iter() differs from the model");
    for k in all_keys() {
        let got = db
            .get(&k)
            .unwrap_or_else(|e| panic!("{what}: get({}) failed: {e}", short(&k)));
        assert_eq!(
            got.as_deref(),
            model.get(&k).map(Vec::as_slice),
            "{what}: get({})",
            short(&k)
        );
    }
}

/// A key shortened for messages.
pub fn short(k: &str) -> String {
    if k.len() > 24 {
        format!(
            "{}..({} bytes)",
            k.chars().take(8).collect::<String>(),
            k.len()
        )
    } else {
        k.to_owned()
    }
}

/// A file's length (0 if it does not exist).
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Truncates (or extends) `path` to `len` bytes.
pub fn set_file_len(path: &Path, len: u64) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open a store file to cut it");
    f.set_len(len).expect("cut a store file");
}

/// XORs the byte at `pos` of `path` with `mask`.
pub fn flip_byte(path: &Path, pos: u64, mask: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open a store file to damage it");
    let mut b = [0u8];
    f.read_exact_at(&mut b, pos).expect("read the byte to flip");
    b[0] ^= mask;
    f.write_all_at(&b, pos).expect("write the flipped byte");
}

/// Length of the record for `key` with a value of `value_len` bytes (format-spec: 24-byte header,
/// key, value).
pub fn record_len(key: &str, value_len: usize) -> u64 {
    24 + key.len() as u64 + value_len as u64
}

/// Whether `SQFUZZ_TRACE` is set: the model targets then print each step to stderr (for reading a
/// crash input: `SQFUZZ_TRACE=1 fuzz/replay.sh TARGET FILE`).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SQFUZZ_TRACE").is_some())
}
