//! One record of the segment: a fixed 24-byte header, the key, the value.
//!
//! ```text
//! offset size field
//!  0     4    crc         crc32 of bytes 4..end of record (rest of header, key, value)
//!  4     4    header_crc  crc32 of bytes 8..24, so a length can be trusted before the body is read
//!  8     1    kind        1 = put, 2 = delete (tombstone)
//!  9     1    codec       what the value holds (0 = raw bytes; see serializer::Codec)
//! 10     2    key_len     1..=MAX_KEY_LEN, UTF-8 key bytes follow the header
//! 12     4    flags       bit 0 CONTINUES: the next record belongs to the same append;
//!                         bit 1 FOLLOWS: the previous record belongs to the same append
//!                         (both only inside a `set_many` batch); other bits 0
//! 16     8    value_len   value bytes after the key (0 for a tombstone)
//! ```
//! All integers little-endian. See format-spec/ for the full argument.

use crc32fast::Hasher;

/// Size of a record header in bytes.
pub(crate) const HEADER_LEN: usize = 24;
/// Longest key accepted, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 1024;

/// What a record does to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Put = 1,
    Delete = 2,
}

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
}

/// Flag bit: the record is not the last of its append. Recovery uses it to tell a batch torn by a
/// power cut (whose sectors may land in any order) from damage to data that was already synced.
pub(crate) const FLAG_CONTINUES: u32 = 1;
/// Flag bit: the record is not the first of its append.
pub(crate) const FLAG_FOLLOWS: u32 = 2;

/// Why a header could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes are left.
    Short,
    /// The header checksum does not match, or a field holds an impossible value.
    Invalid,
}

impl Header {
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
            _ => return Err(HeaderError::Invalid),
        };
        let codec = h[9];
        let key_len = u16::from_le_bytes([h[10], h[11]]);
        let flags = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
        let value_len =
            u64::from_le_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
        let valid = key_len != 0
            && usize::from(key_len) <= MAX_KEY_LEN
            && flags & !(FLAG_CONTINUES | FLAG_FOLLOWS) == 0
            && (kind == Kind::Put || (value_len == 0 && codec == 0));
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
///
/// The checksum is computed here, outside any lock, because it is the one pass over the value.
pub(crate) fn encode(
    kind: Kind,
    codec: u8,
    key: &str,
    value: &[u8],
    batch: Batch,
) -> (Vec<u8>, u32) {
    let mut head = Vec::with_capacity(HEADER_LEN + key.len());
    head.extend_from_slice(&[0; 8]);
    head.push(kind as u8);
    head.push(codec);
    // Callers validate the key length against MAX_KEY_LEN first, which fits a u16.
    head.extend_from_slice(&(key.len() as u16).to_le_bytes());
    let flags = if batch.continues { FLAG_CONTINUES } else { 0 }
        | if batch.follows { FLAG_FOLLOWS } else { 0 };
    head.extend_from_slice(&flags.to_le_bytes());
    head.extend_from_slice(&(value.len() as u64).to_le_bytes());
    let header_crc = crc32fast::hash(&head[8..HEADER_LEN]);
    head[4..8].copy_from_slice(&header_crc.to_le_bytes());
    head.extend_from_slice(key.as_bytes());
    let mut hasher = Hasher::new();
    hasher.update(&head[4..]);
    hasher.update(value);
    let crc = hasher.finalize();
    head[0..4].copy_from_slice(&crc.to_le_bytes());
    (head, crc)
}

/// Checks the full-record checksum of `record` (header, key and value).
pub(crate) fn crc_ok(record: &[u8], crc: u32) -> bool {
    record.len() >= 4 && crc32fast::hash(&record[4..]) == crc
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn zero_header_is_invalid() {
        assert_eq!(Header::decode(&[0; 24]), Err(HeaderError::Invalid));
        assert_eq!(Header::decode(&[0; 10]), Err(HeaderError::Short));
    }
}
