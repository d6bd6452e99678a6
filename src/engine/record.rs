//! One record of the segment: a fixed 24-byte header, the key, the value.
//!
//! ```text
//! offset size field
//!  0     4    crc         crc32 of bytes 4..end of record (rest of header, key, value)
//!  4     4    header_crc  crc32 of bytes 8..24, so a length can be trusted before the body is read
//!  8     1    kind        1 = put, 2 = delete (tombstone), 3 = sync mark (format v2)
//!  9     1    codec       what the value holds (0 = raw bytes; see serializer::Codec)
//! 10     2    key_len     1..=MAX_KEY_LEN, UTF-8 key bytes follow the header (0 for a mark)
//! 12     4    flags       bit 0 CONTINUES: the next record belongs to the same append;
//!                         bit 1 FOLLOWS: the previous record belongs to the same append
//!                         (both only inside a `set_many` batch); other bits 0
//! 16     8    value_len   value bytes after the key (0 for a tombstone)
//! ```
//! All integers little-endian. See format-spec/ for the full argument.

use crc32fast::Hasher;
use smallvec::SmallVec;

/// Size of a record header in bytes.
pub(crate) const HEADER_LEN: usize = 24;
/// Longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 1024;

/// What a record does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Put = 1,
    Delete = 2,
    /// A sync mark (format v2): no key, an 8-byte value holding a segment length the writer had
    /// made durable (`fdatasync` returned) before it wrote the mark. Recovery uses marks to tell
    /// damage to synced bytes (corruption, kept and reported) from a torn unsynced append.
    Mark = 3,
}

/// Length of a sync mark record: the header and an 8-byte little-endian synced length.
pub(crate) const MARK_LEN: u64 = HEADER_LEN as u64 + 8;

/// A decoded record header whose `header_crc` has been checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub crc: u32,
    pub kind: Kind,
    pub codec: u8,
    pub key_len: u16,
    pub value_len: u64,
    /// The next record was appended in the same batch (see [`FLAG_CONTINUES`]).
    pub continues: bool,
    /// The previous record was appended in the same batch (see [`FLAG_FOLLOWS`]).
    pub follows: bool,
    /// The key's check value, when the writer stored one (see [`FLAG_KEY_CHECK`]).
    pub key_check: Option<u16>,
}

/// Flag bit: the record is not the last of its append. Recovery uses it to tell a batch torn by a
/// power cut (whose sectors may land in any order) from damage to data that was already synced.
pub(crate) const FLAG_CONTINUES: u32 = 1;
/// Flag bit: the record is not the first of its append.
pub(crate) const FLAG_FOLLOWS: u32 = 2;
/// Flag bit (format v2): bits 16..32 hold [`key_check`] of the record's key, so damage to the key
/// bytes (which `header_crc` does not cover) is told apart from damage to the value: recovery then
/// never files a damaged record under a wrong key.
pub(crate) const FLAG_KEY_CHECK: u32 = 4;
const KNOWN_FLAGS: u32 = FLAG_CONTINUES | FLAG_FOLLOWS | FLAG_KEY_CHECK;

/// The 16-bit key check stored in a v2 record's flags: the low half of the key's CRC-32.
pub(crate) fn key_check(key: &[u8]) -> u16 {
    (crc32fast::hash(key) & 0xffff) as u16
}

/// Why a header could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes are left.
    Short,
    /// The header checksum does not match, or a field holds an impossible value.
    Invalid,
}

impl Header {
    /// Whether `key` (the record's key bytes as read) agrees with the header's key check; true
    /// when the record carries none (format v1).
    pub fn key_agrees(&self, key: &[u8]) -> bool {
        self.key_check.is_none_or(|c| key_check(key) == c)
    }

    /// Total length of the record on disk; `None` if it overflows `u64`.
    pub fn record_len(&self) -> Option<u64> {
        (HEADER_LEN as u64 + u64::from(self.key_len)).checked_add(self.value_len)
    }

    /// Decodes and checks the header at the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Header, HeaderError> {
        let h: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(HeaderError::Short)?;
        let crc = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let header_crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if crc32fast::hash(&h[8..]) != header_crc {
            return Err(HeaderError::Invalid);
        }
        let kind = match h[8] {
            1 => Kind::Put,
            2 => Kind::Delete,
            3 => Kind::Mark,
            _ => return Err(HeaderError::Invalid),
        };
        let codec = h[9];
        let key_len = u16::from_le_bytes([h[10], h[11]]);
        let flags = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        let value_len =
            u64::from_le_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
        let fields_ok = match kind {
            Kind::Put => key_len != 0 && usize::from(key_len) <= MAX_KEY_LEN,
            Kind::Delete => {
                key_len != 0 && usize::from(key_len) <= MAX_KEY_LEN && value_len == 0 && codec == 0
            }
            Kind::Mark => key_len == 0 && value_len == 8 && codec == 0,
        };
        let valid = fields_ok
            && flags & 0xffff & !KNOWN_FLAGS == 0
            && (flags & FLAG_KEY_CHECK != 0 || flags >> 16 == 0);
        if !valid {
            return Err(HeaderError::Invalid);
        }
        Ok(Header {
            crc,
            kind,
            codec,
            key_len,
            value_len,
            continues: flags & FLAG_CONTINUES != 0,
            follows: flags & FLAG_FOLLOWS != 0,
            key_check: (flags & FLAG_KEY_CHECK != 0).then_some((flags >> 16) as u16),
        })
    }
}

/// Where a record sits in its append: see [`FLAG_CONTINUES`] and [`FLAG_FOLLOWS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Batch {
    pub continues: bool,
    pub follows: bool,
}

impl Batch {
    /// A record appended on its own.
    pub const ALONE: Batch = Batch {
        continues: false,
        follows: false,
    };

    /// Record `i` of a batch of `n`.
    pub fn nth(i: usize, n: usize) -> Batch {
        Batch {
            continues: i + 1 < n,
            follows: i > 0,
        }
    }
}

/// Builds the header and key bytes of a record (the value is written after them unchanged).
#[cfg(test)]
pub(crate) fn encode(
    kind: Kind,
    codec: u8,
    key: &str,
    value: &[u8],
    batch: Batch,
) -> (Vec<u8>, u32) {
    let e = Encoded::new(kind, codec, key.as_bytes(), value, batch);
    (e.head.to_vec(), e.crc)
}

/// Most key and value bytes [`Encoded::new`] hashes a second time rather than combine CRC states.
const REHASH_MAX: usize = 4096;

/// A record's header and key, with what it takes to change its batch flags later without another
/// pass over a long value (the writer leads an append with a sync mark only once it holds the
/// lock).
#[derive(Clone)]
pub(crate) struct Encoded {
    /// Header and key bytes: inline up to [`INLINE_HEAD`] bytes, so a record with a short key
    /// costs no allocation.
    pub head: SmallVec<[u8; INLINE_HEAD]>,
    /// The record's `crc`.
    pub crc: u32,
    /// CRC state over the key and value, the part of the record after the header: kept for a
    /// long record only, whose crc [`Encoded::set_batch`] then combines instead of hashing the
    /// value again. A short record is hashed again, which costs less than a combine.
    suffix: Option<Hasher>,
}

/// Header and key bytes an [`Encoded`] keeps without allocating (keys of up to 40 bytes).
const INLINE_HEAD: usize = 64;

impl Encoded {
    pub(crate) fn new(kind: Kind, codec: u8, key: &[u8], value: &[u8], batch: Batch) -> Encoded {
        // Built in place in a zeroed buffer: SmallVec's piecewise extend costs more than the
        // rest of encoding a short record.
        let mut head: SmallVec<[u8; INLINE_HEAD]> = SmallVec::from_elem(0, HEADER_LEN + key.len());
        head[8] = kind as u8;
        head[9] = codec;
        // Callers validate the key length against MAX_KEY_LEN first, which fits a u16.
        head[10..12].copy_from_slice(&(key.len() as u16).to_le_bytes());
        head[16..24].copy_from_slice(&(value.len() as u64).to_le_bytes());
        head[HEADER_LEN..].copy_from_slice(key);
        let suffix = (key.len() + value.len() > REHASH_MAX).then(|| {
            let mut suffix = Hasher::new();
            suffix.update(key);
            suffix.update(value);
            suffix
        });
        let mut e = Encoded {
            head,
            crc: 0,
            suffix,
        };
        e.seal(batch, value);
        e
    }

    /// Sets the batch flags and recomputes both checksums; `value` must be the one the record
    /// was encoded with (hashed again only when it is short: O(1) in a long value's length).
    pub(crate) fn set_batch(&mut self, batch: Batch, value: &[u8]) {
        self.seal(batch, value);
    }

    /// Writes the batch flags and both checksums. The record's crc continues from the header
    /// over the key and value: for a short record by hashing them again, which costs less than
    /// combining with the saved state of their CRC (`Hasher::combine` costs some 2,000
    /// instructions whatever the length, about as much as hashing 4 KiB); for a long one by
    /// combining, O(1) in the value's length.
    fn seal(&mut self, batch: Batch, value: &[u8]) {
        let key = &self.head[HEADER_LEN..];
        let flags = if batch.continues { FLAG_CONTINUES } else { 0 }
            | if batch.follows { FLAG_FOLLOWS } else { 0 }
            | if key.is_empty() {
                0
            } else {
                FLAG_KEY_CHECK | u32::from(key_check(key)) << 16
            };
        self.head[12..16].copy_from_slice(&flags.to_le_bytes());
        let header_crc = crc32fast::hash(&self.head[8..HEADER_LEN]);
        self.head[4..8].copy_from_slice(&header_crc.to_le_bytes());
        let mut h = Hasher::new();
        match &self.suffix {
            None => {
                h.update(&self.head[4..]);
                h.update(value);
            }
            Some(suffix) => {
                h.update(&self.head[4..HEADER_LEN]);
                h.combine(suffix);
            }
        }
        self.crc = h.finalize();
        self.head[0..4].copy_from_slice(&self.crc.to_le_bytes());
    }

    /// The batch flags as encoded.
    pub(crate) fn batch(&self) -> Batch {
        let flags =
            u32::from_le_bytes([self.head[12], self.head[13], self.head[14], self.head[15]]);
        Batch {
            continues: flags & FLAG_CONTINUES != 0,
            follows: flags & FLAG_FOLLOWS != 0,
        }
    }
}

/// Builds a sync mark record stating that segment bytes `[0, synced)` were durable before it was
/// written. `batch` places it in its append like any other record (a mark is the first record of
/// the append it leads, so a torn append that lost the mark's sector is still one append).
pub(crate) fn encode_mark(synced: u64, batch: Batch) -> Encoded {
    let value = synced.to_le_bytes();
    let mut e = Encoded::new(Kind::Mark, 0, b"", &value, batch);
    // A mark is written whole from its head: it has no caller's buffer to write the value from.
    // Its batch flags are final (`set_batch` would hash the value twice once it is in the head).
    e.head.extend_from_slice(&value);
    e
}
/// The synced length a mark record states, if `record` (a whole intact record) is one.
pub(crate) fn mark_value(header: &Header, record: &[u8]) -> Option<u64> {
    if header.kind != Kind::Mark {
        return None;
    }
    let v: [u8; 8] = record.get(HEADER_LEN..HEADER_LEN + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(v))
}

/// Checks the full-record checksum of `record` (header, key and value).
pub(crate) fn crc_ok(record: &[u8], crc: u32) -> bool {
    record.len() >= 4 && crc32fast::hash(&record[4..]) == crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_is_the_same_rehashed_or_combined() {
        for len in [
            0,
            1,
            100,
            REHASH_MAX - 3,
            REHASH_MAX - 2,
            REHASH_MAX + 1,
            3 * REHASH_MAX,
        ] {
            let value: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = Encoded::new(Kind::Put, 1, b"abc", &value, Batch::ALONE);
            let mut record = sealed.head.to_vec();
            record.extend_from_slice(&value);
            assert!(crc_ok(&record, sealed.crc), "len {len}");
            // Changing the flags later (combined) gives what encoding with them (either way) does.
            let batch = Batch {
                continues: true,
                follows: true,
            };
            let mut later = sealed.clone();
            later.set_batch(batch, &value);
            let direct = Encoded::new(Kind::Put, 1, b"abc", &value, batch);
            assert_eq!(
                (later.head, later.crc),
                (direct.head, direct.crc),
                "len {len}"
            );
        }
    }

    #[test]
    fn roundtrip_header() {
        let (head, crc) = encode(Kind::Put, 2, "key", b"value", Batch::ALONE);
        let h = Header::decode(&head).expect("valid");
        assert_eq!(h.kind, Kind::Put);
        assert_eq!(h.codec, 2);
        assert_eq!(h.key_len, 3);
        assert_eq!(h.value_len, 5);
        assert_eq!(h.crc, crc);
        let mut full = head.clone();
        full.extend_from_slice(b"value");
        assert!(crc_ok(&full, crc));
        full[30] ^= 1;
        assert!(!crc_ok(&full, crc));
    }

    #[test]
    fn changing_batch_flags_keeps_the_record_intact() {
        let value = vec![7u8; 100_000];
        let mut e = Encoded::new(Kind::Put, 1, b"key", &value, Batch::ALONE);
        e.set_batch(Batch::nth(1, 3), &value);
        let mut full = e.head.to_vec();
        full.extend_from_slice(&value);
        let h = Header::decode(&full).expect("valid header");
        assert!(h.follows && h.continues);
        assert!(crc_ok(&full, e.crc));
        assert_eq!(h.crc, e.crc);
        assert!(h.key_agrees(b"key"));
        assert!(!h.key_agrees(b"kez"));
        assert_eq!(e.batch(), Batch::nth(1, 3));
    }

    #[test]
    fn zero_header_is_invalid() {
        assert_eq!(Header::decode(&[0; 24]), Err(HeaderError::Invalid));
        assert_eq!(Header::decode(&[0; 10]), Err(HeaderError::Short));
    }
}
