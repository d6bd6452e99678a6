//! A sequential read of a remote segment, record by record, in large range requests and in
//! bounded memory (a chunk plus one record header and key, whatever the values' sizes).

use crate::engine::record::{HEADER_LEN, Header};
use crate::error::Result;

use super::client::Client;

/// Bytes fetched per range request.
const CHUNK: u64 = 8 << 20;

/// What the walk meets.
pub(crate) enum WalkEvent<'a> {
    /// A record with a valid header; `intact` when its CRC-32 matches too.
    Record {
        offset: u64,
        header: Header,
        key: &'a [u8],
        intact: bool,
    },
    /// Bytes that are no record: the walk stops there.
    Damaged { offset: u64, what: &'static str },
}

/// The bytes of `[start, start + buf.len())` fetched so far, read from `pos` on.
struct Reader<'c> {
    client: &'c Client,
    name: &'c str,
    etag: Option<String>,
    end: u64,
    start: u64,
    buf: Vec<u8>,
    fetched: u64,
}

impl Reader<'_> {
    /// Makes `[at, upto)` (clamped to the end) available; everything before `at` may go.
    async fn fill(&mut self, at: u64, upto: u64) -> Result<&[u8]> {
        let upto = upto.min(self.end);
        let have = self.start + self.buf.len() as u64;
        if upto > have {
            // Drop what lies before `at` only now, when fetching anyway: one move per chunk.
            let keep_from = usize::try_from(at.saturating_sub(self.start))
                .unwrap_or(0)
                .min(self.buf.len());
            self.buf.drain(..keep_from);
            self.start += keep_from as u64;
            let mut next = self.start + self.buf.len() as u64;
            while next < upto {
                let to = (next + CHUNK).min(self.end);
                let bytes = self
                    .client
                    .get_range(self.name, next..to, self.etag.clone())
                    .await?;
                self.fetched += bytes.len() as u64;
                self.buf.extend_from_slice(&bytes);
                next = to;
            }
        }
        let from = usize::try_from(at - self.start).unwrap_or(usize::MAX);
        let to = usize::try_from(upto - self.start).unwrap_or(usize::MAX);
        Ok(self.buf.get(from..to).unwrap_or(&[]))
    }
}

/// Walks the records of object `name` in `[from, end)`, calling `f` for each; returns the bytes
/// fetched. Stops at the first damaged header (its length cannot be trusted).
pub(crate) async fn walk(
    client: &Client,
    name: &str,
    etag: Option<String>,
    from: u64,
    end: u64,
    mut f: impl FnMut(WalkEvent<'_>),
) -> Result<u64> {
    let mut r = Reader {
        client,
        name,
        etag,
        end,
        start: from,
        buf: Vec::new(),
        fetched: 0,
    };
    let mut o = from;
    while o < end {
        if end - o < HEADER_LEN as u64 {
            f(WalkEvent::Damaged {
                offset: o,
                what: "a partial record header at the end of the segment",
            });
            break;
        }
        let head = r.fill(o, o + HEADER_LEN as u64).await?;
        let Ok(h) = Header::decode(head) else {
            f(WalkEvent::Damaged {
                offset: o,
                what: "record header checksum mismatch",
            });
            break;
        };
        let Some(len) = h
            .record_len()
            .filter(|l| o.checked_add(*l).is_some_and(|e| e <= end))
        else {
            f(WalkEvent::Damaged {
                offset: o,
                what: "record runs past the end of the segment",
            });
            break;
        };
        let key_end = o + HEADER_LEN as u64 + u64::from(h.key_len);
        let mut hasher = crc32fast::Hasher::new();
        let first = r.fill(o, key_end).await?;
        let key: Vec<u8> = first.get(HEADER_LEN..).unwrap_or(&[]).to_vec();
        hasher.update(first.get(4..).unwrap_or(&[]));
        let mut pos = key_end;
        let rec_end = o + len;
        while pos < rec_end {
            let part = r.fill(pos, rec_end.min(pos + CHUNK)).await?;
            if part.is_empty() {
                break;
            }
            hasher.update(part);
            pos += part.len() as u64;
        }
        f(WalkEvent::Record {
            offset: o,
            header: h,
            key: &key,
            intact: pos == rec_end && hasher.finalize() == h.crc,
        });
        o = rec_end;
    }
    Ok(r.fetched)
}
