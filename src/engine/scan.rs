//! Reading a segment's records in order: what is intact, what is damaged, what the sync marks
//! prove, and where the records end.
//!
//! One scanner serves every reader of raw records (open, refresh, rebuild, verify), so they all
//! apply the same rules (format-spec, "Recovery rules"):
//!
//! * an intact record is reported and skipped by its length;
//! * bytes that are not an intact record are **damage** (reported, skipped to the next intact
//!   record, and kept in the file) unless they can only be a **torn tail**: nothing intact after
//!   them except the rest of the same interrupted append, and not proven synced by a sync mark (or
//!   the checkpoint) before which they lie. A torn tail exists only at the very end.
//!
//! The scan never decides to destroy anything: it says where the valid records end, and the caller
//! that cuts (a read-write open) first copies the bytes it cuts into `lost+found/`.

use crate::engine::record::{self, HEADER_LEN, Header, Kind};
use crate::engine::segment;

/// How far the scanner looks for intact records after damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach {
    /// Only within the written part of the file (see [`segment::written_end`]): a run of 1 MiB of
    /// zeros ends the search, so opening does not read the space preallocated after the records.
    Written,
    /// The whole file: `verify`, and a read-write open about to clean up after a crash.
    Whole,
}

/// A damaged region: bytes between intact records that are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damaged {
    /// Where the damaged bytes start.
    pub offset: u64,
    /// How many bytes up to the next intact record (or, at the end, up to the last non-zero byte).
    pub len: u64,
    /// The key of the damaged record, when it can be told for certain (see [`damaged_key`]).
    pub key: Option<String>,
    /// The record's length and checksum as its header states them, when the header is readable.
    pub header: Option<Header>,
    /// What is wrong.
    pub what: &'static str,
}

/// One thing the scanner found, in segment order.
#[derive(Debug)]
pub(crate) enum Event<'a> {
    /// An intact put or delete.
    Record {
        offset: u64,
        header: Header,
        key: &'a str,
    },
    /// An intact sync mark (segment bytes before the offset it states were durable before it
    /// was written).
    Mark,
    /// Damage, kept and reported.
    Damaged(Damaged),
}

/// Where the valid records end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Tail {
    /// The first byte after the last intact record or damaged region: where the next append goes.
    pub end: u64,
    /// Bytes of a torn tail after `end`, up to its last non-zero byte (0 if only zeros follow).
    pub torn: u64,
    /// The highest offset proven synced by a sync mark or by `synced_floor`.
    pub proven: u64,
    /// The highest offset proven synced by a sync mark alone (what the segment proves by itself,
    /// without the deletable index).
    pub marked: u64,
    /// Whether the last record before `end` is a sync mark proving everything before it.
    pub ends_proven: bool,
}

/// The intact record at `offset`: its header and length. `None` if there is none.
pub(crate) fn intact_at(bytes: &[u8], offset: u64) -> Option<(Header, u64)> {
    let rest = usize::try_from(offset).ok().and_then(|o| bytes.get(o..))?;
    let h = Header::decode(rest).ok()?;
    let len = h.record_len()?;
    let n = usize::try_from(len).ok().filter(|&n| n <= rest.len())?;
    record::crc_ok(&rest[..n], h.crc).then_some((h, len))
}

/// Whether the record ending at `end` is a sync mark proving everything before it (the mark a
/// clean close writes last).
pub(crate) fn ends_with_mark(bytes: &[u8], end: u64) -> bool {
    end.checked_sub(record::MARK_LEN).is_some_and(|at| {
        intact_at(bytes, at).is_some_and(|(h, len)| {
            len == record::MARK_LEN
                && record::mark_value(&h, &bytes[at as usize..end as usize]) == Some(at)
        })
    })
}

/// The offset just after the last non-zero byte at or after `from` (or `from` if all are zero).
pub(crate) fn last_nonzero(bytes: &[u8], from: u64) -> u64 {
    let Some(rest) = usize::try_from(from).ok().and_then(|f| bytes.get(f..)) else {
        return from;
    };
    rest.iter()
        .rposition(|&b| b != 0)
        .map_or(from, |i| from + i as u64 + 1)
}

/// Scans `bytes` (a whole mapped segment) from `from`, an offset where a record starts, calling
/// `visit` for everything found. `synced_floor` is an offset known synced by other means (a
/// checkpoint covers it): damage before it is never a torn tail.
pub(crate) fn scan<E>(
    bytes: &[u8],
    from: u64,
    synced_floor: u64,
    reach: Reach,
    visit: &mut dyn FnMut(Event<'_>) -> Result<(), E>,
) -> Result<Tail, E> {
    let len = bytes.len() as u64;
    let mut at = from;
    let mut proven = synced_floor;
    let mut marked = 0;
    let mut ends_proven = false;
    loop {
        if at >= len {
            return Ok(Tail {
                end: at.min(len),
                torn: 0,
                proven,
                marked,
                ends_proven,
            });
        }
        if let Some((header, rec_len)) = intact_at(bytes, at) {
            let rec = &bytes[at as usize..(at + rec_len) as usize];
            if let Some(v) = record::mark_value(&header, rec) {
                // A mark vouches only for bytes before itself, whatever its value says.
                let synced = v.min(at);
                proven = proven.max(synced);
                marked = marked.max(synced);
                ends_proven = synced == at;
                visit(Event::Mark)?;
            } else {
                ends_proven = false;
                let key_bytes = &rec[HEADER_LEN..HEADER_LEN + usize::from(header.key_len)];
                match std::str::from_utf8(key_bytes) {
                    Ok(key) => visit(Event::Record {
                        offset: at,
                        header,
                        key,
                    })?,
                    // Intact, but no key this store can name: that record alone is damaged.
                    Err(_) => visit(Event::Damaged(Damaged {
                        offset: at,
                        len: rec_len,
                        key: None,
                        header: Some(header),
                        what: "record key is not UTF-8",
                    }))?,
                }
            }
            at += rec_len;
            continue;
        }
        // The records end at `at` if what follows is torn: whether they end with a proof.
        let last_proven = std::mem::take(&mut ends_proven);
        let rest = &bytes[at as usize..];
        let header = Header::decode(rest).ok();
        // A readable header's length is trusted to skip the record's own value (which may hold
        // bytes that look like records) only if it fits in the file.
        let resume = header
            .and_then(|h| h.record_len())
            .and_then(|l| at.checked_add(l))
            .filter(|&e| e <= len)
            .unwrap_or(at + 1);
        let next = next_intact(bytes, resume, reach);
        // A writer may be filling these bytes while we read (verify beside a live writer): what
        // is found after them was written later, so look again before calling them damaged.
        if next.is_some() && intact_at(bytes, at).is_some() {
            continue;
        }
        let torn = torn_len(rest, reach);
        let Some(next) = next else {
            if torn == 0 {
                return Ok(Tail {
                    end: at,
                    torn: 0,
                    proven,
                    marked,
                    ends_proven: last_proven,
                });
            }
            if at < proven {
                // Synced bytes damaged at the very end: corruption, kept where it is.
                visit(Event::Damaged(Damaged {
                    offset: at,
                    len: torn,
                    key: damaged_key(rest, torn, header),
                    header,
                    what: damage_what(header),
                }))?;
                return Ok(Tail {
                    end: at + torn,
                    torn: 0,
                    proven,
                    marked,
                    ends_proven: false,
                });
            }
            return Ok(Tail {
                end: at,
                torn,
                proven,
                marked,
                ends_proven: last_proven,
            });
        };
        let own_append_goes_on = header.is_none_or(|h| h.continues);
        if at >= proven && own_append_goes_on && in_final_append(bytes, next, reach) {
            // A hole inside the interrupted last append (a power cut lands its sectors in any
            // order): torn, with the rest of that append.
            return Ok(Tail {
                end: at,
                torn,
                proven,
                marked,
                ends_proven: last_proven,
            });
        }
        // A readable header that fits says where its record ends: the damage is that record
        // alone, and the next one (damaged or not) is judged on its own.
        let gap = if resume > at + 1 {
            resume - at
        } else {
            next - at
        };
        visit(Event::Damaged(Damaged {
            offset: at,
            len: gap,
            key: damaged_key(rest, gap, header),
            header,
            what: damage_what(header),
        }))?;
        at += gap;
    }
}

fn damage_what(header: Option<Header>) -> &'static str {
    match header {
        Some(_) => "record checksum mismatch",
        None => "unreadable record header",
    }
}

/// Where the first intact record at or after `from` starts, within `reach`.
pub(crate) fn next_intact(bytes: &[u8], from: u64, reach: Reach) -> Option<u64> {
    let from = usize::try_from(from).ok()?;
    let limit = match reach {
        Reach::Written => segment::written_end(bytes, from),
        Reach::Whole => bytes.len(),
    };
    let mut q = from;
    while q < limit && q + HEADER_LEN <= bytes.len() {
        let kind = bytes[q + 8];
        if matches!(kind, 1..=3) && intact_at(bytes, q as u64).is_some() {
            return Some(q as u64);
        }
        if kind == 0 {
            // A record's kind byte (offset 8) is never 0: no record starts before the next
            // non-zero byte's offset minus 8. Skips zero-filled space at memory speed.
            let nz = bytes[q + 8..].iter().position(|&b| b != 0)?;
            q = (q + 1).max(q + nz);
            continue;
        }
        q += 1;
    }
    None
}

/// Bytes from the start of `rest` up to and including its last non-zero byte (within `reach`).
fn torn_len(rest: &[u8], reach: Reach) -> u64 {
    let limit = match reach {
        Reach::Written => segment::written_end(rest, 0),
        Reach::Whole => rest.len(),
    };
    rest[..limit]
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i as u64 + 1)
}

/// Whether the intact records from `from` on can all be the rest of the append that damage
/// before them interrupted: the first continues an append (FOLLOWS), none closes an append
/// (CONTINUES clear) before the last, and nothing intact follows. Otherwise an append began
/// after the damaged bytes, so they had been written (and, with fsync, synced) before it.
fn in_final_append(bytes: &[u8], from: u64, reach: Reach) -> bool {
    if !intact_at(bytes, from).is_some_and(|(h, _)| h.follows) {
        return false;
    }
    let mut at = from;
    loop {
        match intact_at(bytes, at) {
            Some((h, _)) if !h.follows => return false,
            Some((h, len)) => {
                at += len;
                if !h.continues {
                    return next_intact(bytes, at, reach).is_none();
                }
            }
            None => return next_intact(bytes, at + 1, reach).is_none(),
        }
    }
}

/// The key of a damaged record, named only when it can be told for certain:
///
/// * a readable header (its checksum covers the lengths) whose key bytes pass the record's key
///   check (format v2; a v1 record has none, and its key bytes are taken as they are);
/// * an unreadable header whose lengths, as stored, add up to exactly `gap` (the distance to the
///   next intact record), or become a header that passes its checksum when one length is
///   replaced by the one `gap` implies; and whose key passes the key check where there is one.
///
/// Anything less certain names no key: a wrong name would hide the real key's damage.
pub(crate) fn damaged_key(rest: &[u8], gap: u64, header: Option<Header>) -> Option<String> {
    let key_at = |key_len: usize| -> Option<&[u8]> { rest.get(HEADER_LEN..HEADER_LEN + key_len) };
    if let Some(h) = header {
        if h.kind == Kind::Mark {
            return None;
        }
        let key = key_at(usize::from(h.key_len))?;
        if h.key_agrees(key) {
            return std::str::from_utf8(key).ok().map(str::to_owned);
        }
        return corrected_key(rest, &h);
    }
    let raw: &[u8; HEADER_LEN] = rest.get(..HEADER_LEN)?.try_into().ok()?;
    let body = gap.checked_sub(HEADER_LEN as u64)?;
    let header_crc = u32::from_le_bytes(raw[4..8].try_into().ok()?);
    let key_len_of = |h: &[u8; HEADER_LEN]| u64::from(u16::from_le_bytes([h[10], h[11]]));
    let value_len_of = |h: &[u8; HEADER_LEN]| {
        u64::from_le_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]])
    };
    let flags_of = |h: &[u8; HEADER_LEN]| u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    // The key a header names, if its lengths add up to `gap` and its key passes its check.
    let key_of = |h: &[u8; HEADER_LEN]| -> Option<String> {
        let (k, v) = (key_len_of(h), value_len_of(h));
        if !matches!(h[8], 1 | 2)
            || !(1..=record::MAX_KEY_LEN as u64).contains(&k)
            || k.checked_add(v) != Some(body)
        {
            return None;
        }
        let key = key_at(k as usize)?;
        let flags = flags_of(h);
        if flags & record::FLAG_KEY_CHECK != 0 && record::key_check(key) != (flags >> 16) as u16 {
            return None;
        }
        std::str::from_utf8(key).ok().map(str::to_owned)
    };
    // The stored fields as they are (the damage hit a checksum, the codec or a flag bit).
    if let Some(k) = key_of(raw) {
        return Some(k);
    }
    // One field replaced by what the gap or the key implies, accepted only if the header
    // checksum then matches: the damage was in that field.
    let crc_ok = |h: &[u8; HEADER_LEN]| crc32fast::hash(&h[8..]) == header_crc;
    let mut fixes: Vec<[u8; HEADER_LEN]> = Vec::new();
    for kind in [1u8, 2] {
        let mut h = *raw;
        h[8] = kind;
        fixes.push(h);
    }
    if let Some(k) = body
        .checked_sub(value_len_of(raw))
        .filter(|&k| k <= u64::from(u16::MAX))
    {
        let mut h = *raw;
        h[10..12].copy_from_slice(&(k as u16).to_le_bytes());
        fixes.push(h);
    }
    if let Some(v) = body.checked_sub(key_len_of(raw)) {
        let mut h = *raw;
        h[16..24].copy_from_slice(&v.to_le_bytes());
        fixes.push(h);
    }
    if let Some(key) = key_at(key_len_of(raw) as usize) {
        let mut h = *raw;
        let flags = flags_of(raw) & 0xffff | u32::from(record::key_check(key)) << 16;
        h[12..16].copy_from_slice(&flags.to_le_bytes());
        fixes.push(h);
    }
    fixes.iter().filter(|h| crc_ok(h)).find_map(key_of)
}

/// The key of a record whose header is valid but whose key bytes fail the key check: the one
/// single-byte change to them that makes the whole record's `crc` match, if there is one. A match
/// of the full CRC-32 over the record means the rest of it (the value) is intact too, so the
/// name is certain; anything else (damage in both key and value) names no key.
fn corrected_key(rest: &[u8], h: &Header) -> Option<String> {
    let check = h.key_check?;
    let key_len = usize::from(h.key_len);
    let len = usize::try_from(h.record_len()?)
        .ok()
        .filter(|&l| l <= rest.len())?;
    let key = rest.get(HEADER_LEN..HEADER_LEN + key_len)?;
    let mut value = crc32fast::Hasher::new();
    value.update(&rest[HEADER_LEN + key_len..len]);
    let mut candidate = key.to_vec();
    let mut found = None;
    for i in 0..key_len {
        for b in 0..=255u8 {
            if b == key[i] {
                continue;
            }
            candidate[i] = b;
            if record::key_check(&candidate) != check {
                continue;
            }
            let mut crc = crc32fast::Hasher::new();
            crc.update(&rest[4..HEADER_LEN]);
            crc.update(&candidate);
            crc.combine(&value);
            if crc.finalize() == h.crc {
                if found.is_some() {
                    return None;
                }
                found = std::str::from_utf8(&candidate).ok().map(str::to_owned);
            }
        }
        candidate[i] = key[i];
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::record::{Batch, encode, encode_mark};
    use crate::engine::segment::{HEADER_LEN as SEG_HEADER, encode_header};

    fn put(b: &mut Vec<u8>, key: &str, value: &[u8], batch: Batch) -> u64 {
        let at = b.len() as u64;
        let (head, _) = encode(Kind::Put, 0, key, value, batch);
        b.extend_from_slice(&head);
        b.extend_from_slice(value);
        at
    }

    fn mark(b: &mut Vec<u8>, batch: Batch) -> u64 {
        let at = b.len() as u64;
        b.extend_from_slice(&encode_mark(at, batch).head);
        at
    }

    fn run(bytes: &[u8], floor: u64) -> (Vec<String>, Vec<Damaged>, Tail) {
        let mut keys = Vec::new();
        let mut damaged = Vec::new();
        let tail = scan::<()>(bytes, SEG_HEADER, floor, Reach::Whole, &mut |e| {
            match e {
                Event::Record { key, .. } => keys.push(key.to_owned()),
                Event::Damaged(d) => damaged.push(d),
                Event::Mark => {}
            }
            Ok(())
        })
        .expect("infallible visitor");
        (keys, damaged, tail)
    }

    /// Two batches; the first record of the second damaged. Without marks that is a torn
    /// batch; with the mark the writer leads its next append with, it is one damaged record.
    #[test]
    fn a_mark_after_a_batch_makes_its_damage_corruption_not_a_torn_tail() {
        let mut b = encode_header(1).to_vec();
        for i in 0..3 {
            put(&mut b, &format!("a{i}"), b"old", Batch::nth(i, 3));
        }
        let second = b.len();
        for i in 0..3 {
            put(&mut b, &format!("a{i}"), b"new", Batch::nth(i, 3));
        }
        let mut torn = b.clone();
        mark(&mut b, Batch::ALONE);
        b[second + 27] ^= 0x40; // in the value of the first record of batch 2
        torn[second + 27] ^= 0x40;
        let (keys, damaged, tail) = run(&torn, 0);
        assert_eq!(keys.len(), 3, "only batch 1 before the torn batch");
        assert!(damaged.is_empty());
        assert_eq!(tail.end, second as u64);
        assert!(tail.torn > 0);

        let (keys, damaged, tail) = run(&b, 0);
        assert_eq!(keys, ["a0", "a1", "a2", "a1", "a2"]);
        assert_eq!(damaged.len(), 1);
        assert_eq!(damaged[0].offset, second as u64);
        assert_eq!(damaged[0].key.as_deref(), Some("a0"));
        assert_eq!(tail.end, b.len() as u64);
        assert_eq!(tail.torn, 0);
        assert!(tail.ends_proven);
    }

    #[test]
    fn damage_below_the_synced_floor_is_never_torn() {
        let mut b = encode_header(1).to_vec();
        put(&mut b, "x", b"one", Batch::nth(0, 2));
        let second = put(&mut b, "y", b"two", Batch::nth(1, 2));
        let len = b.len();
        b[len - 1] ^= 1;
        let (_, damaged, tail) = run(&b, b.len() as u64);
        assert_eq!(damaged.len(), 1);
        assert_eq!(damaged[0].key.as_deref(), Some("y"));
        assert_eq!(tail.end, b.len() as u64);
        let (_, damaged, tail) = run(&b, 0);
        assert!(damaged.is_empty());
        assert_eq!(tail.end, second);
    }

    #[test]
    fn a_length_lying_header_followed_by_records_is_damage() {
        let mut b = encode_header(1).to_vec();
        let first = put(&mut b, "liar", b"value", Batch::ALONE) as usize;
        put(&mut b, "after", b"intact", Batch::ALONE);
        // A header that claims 2^40 bytes with a valid header checksum.
        b[first + 16..first + 24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let crc = crc32fast::hash(&b[first + 8..first + 24]);
        b[first + 4..first + 8].copy_from_slice(&crc.to_le_bytes());
        let (keys, damaged, _) = run(&b, 0);
        assert_eq!(keys, ["after"]);
        assert_eq!(damaged.len(), 1);
    }

    #[test]
    fn a_damaged_key_is_never_named_wrongly() {
        let mut b = encode_header(1).to_vec();
        let at = put(&mut b, "shard_01", b"v1", Batch::ALONE) as usize;
        put(&mut b, "shard_02", b"v2", Batch::ALONE);
        b[at + 24 + 7] = b'2'; // "shard_01" now reads "shard_02"
        let (keys, damaged, _) = run(&b, 0);
        assert_eq!(keys, ["shard_02"]);
        assert_eq!(
            damaged[0].key.as_deref(),
            Some("shard_01"),
            "the key check fails, and the one byte that makes the record intact names it"
        );
        // Damage to the key and the value too: no certain name, so none.
        b[at + 24 + 8] ^= 1;
        let (_, damaged, _) = run(&b, 0);
        assert_eq!(damaged[0].key, None);
    }

    #[test]
    fn a_flipped_length_byte_still_names_the_key() {
        for field in [10usize, 16] {
            let mut b = encode_header(1).to_vec();
            let at = put(&mut b, "k", b"value", Batch::ALONE) as usize;
            put(&mut b, "next", b"x", Batch::ALONE);
            b[at + field] ^= 0x08;
            let (_, damaged, _) = run(&b, 0);
            assert_eq!(damaged.len(), 1, "field {field}");
            assert_eq!(damaged[0].key.as_deref(), Some("k"), "field {field}");
        }
    }
}
