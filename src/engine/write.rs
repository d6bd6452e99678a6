//! The write path: records are encoded before the writer lock is taken, then appended (led by a
//! sync mark when synced bytes need proving), made as durable as configured, and published.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::engine::backend::{Backend, MAP_WRITE_MAX};
use crate::engine::index::Loc;
use crate::engine::overlay::Entry;
use crate::engine::record::{self, Kind};
use crate::engine::recovery;
use crate::engine::segment::SegmentMap;
use crate::error::{Error, Result};

use super::{Durability, Inner, State, View};

/// A record ready to append.
pub(super) struct Pending<'a> {
    pub(super) key: &'a str,
    /// [`crate::engine::index::hash_key`] of `key` (0 for a mark), computed before the lock is taken.
    pub(super) hash: u64,
    pub(super) kind: Kind,
    pub(super) enc: record::Encoded,
    pub(super) value: &'a [u8],
}

impl Pending<'_> {
    pub(super) fn len(&self) -> u64 {
        (self.enc.head.len() + self.value.len()) as u64
    }
}

impl Inner {
    /// Asks the CPU for the overlay slot and Bloom lines that publishing a record of `hash` will
    /// probe, so they arrive while the record is encoded.
    pub(super) fn prefetch(&self, hash: u64) {
        let view = self.view.load();
        view.overlay.prefetch(hash);
        if let Some(index) = &view.index {
            index.prefetch(hash);
        }
    }
}

/// Small records are coalesced into one write; large values are written from the caller's buffer.
const COALESCE: usize = 256 << 10;

/// How many records ahead of the one being published a batch prefetches the lines it will probe.
pub(super) const PREFETCH_AHEAD: usize = 8;

/// Segment bytes written before the writer asks the kernel to start writing them back.
pub(crate) const WRITEBACK_CHUNK: u64 = 4 << 20;

impl Inner {
    pub(crate) fn writable(&self) -> Result<()> {
        if self.config.read_only {
            return Err(Error::ReadOnly {
                path: self.dir.clone(),
            });
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::PreviousIo {
                path: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Runs an I/O call of the writer; a failure poisons the handle.
    pub(crate) fn io<T>(&self, r: std::io::Result<T>) -> Result<T> {
        r.map_err(|e| {
            self.poisoned.store(true, Ordering::Release);
            Error::io(&self.seg_path, e)
        })
    }

    pub(super) fn backend<'s>(&self, st: &'s State) -> Result<&'s dyn Backend> {
        st.backend.as_deref().ok_or_else(|| Error::ReadOnly {
            path: self.dir.clone(),
        })
    }

    pub(super) fn sync(&self, st: &mut State) -> Result<()> {
        let b = self.backend(st)?;
        self.io(b.sync_data())?;
        st.synced = st.end;
        Ok(())
    }

    /// Copies `len` segment bytes at `offset` into `lost+found/` (bounded by the map).
    pub(crate) fn salvage(
        &self,
        st: &mut State,
        segment: &SegmentMap,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        let bytes = segment.bytes();
        let from = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let to = usize::try_from(offset.saturating_add(len))
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        if to > from
            && crate::engine::lost_found::save(&self.dir, st.segment_id, offset, &bytes[from..to])?
        {
            st.lost_found_files += 1;
        }
        Ok(())
    }

    /// Appends a lone sync mark if records written since the last one have been synced, so the
    /// segment itself proves them durable (a clean close ends with one).
    pub(super) fn write_mark(&self, st: &mut State) -> Result<()> {
        self.append(st, Vec::new())
    }

    /// Appends records, makes them as durable as configured, then publishes them.
    ///
    /// When bytes synced since the last sync mark hold records, the append is led by a new mark
    /// (the first record of the same append, so a torn append is still one append): the segment
    /// then proves those bytes durable by itself, without the index.
    pub(super) fn append(&self, st: &mut State, mut records: Vec<Pending<'_>>) -> Result<()> {
        self.writable()?;
        let lead = st.synced > st.proven;
        if records.is_empty() && !lead {
            return Ok(());
        }
        if st.closed_mark {
            self.mark_index(st, false)?;
        }
        if lead {
            let continues = !records.is_empty();
            if let Some(first) = records.first_mut() {
                let b = first.enc.batch();
                first
                    .enc
                    .set_batch(record::Batch { follows: true, ..b }, first.value);
            }
            let enc = record::encode_mark(
                st.synced,
                record::Batch {
                    continues,
                    follows: false,
                },
            );
            records.insert(
                0,
                Pending {
                    key: "",
                    hash: 0,
                    kind: Kind::Mark,
                    enc,
                    value: &[],
                },
            );
        }
        let total: u64 = records.iter().map(Pending::len).sum();
        let start = st.end;
        let needed = start.checked_add(total).ok_or_else(|| {
            Error::corruption(&self.seg_path, start, None, "segment would overflow")
        })?;
        self.ensure_capacity(st, needed)?;
        let backend = self.backend(st)?;
        let mut at = start;
        let small: usize = records
            .iter()
            .filter(|r| r.value.len() <= COALESCE)
            .map(|r| r.enc.head.len() + r.value.len())
            .sum();
        // Sized for the records it coalesces (it is flushed once past COALESCE, or once past it
        // plus a short remainder; the record that passes COALESCE is at most a header, a key
        // and COALESCE bytes), so it never regrows.
        let most = 2 * COALESCE + record::HEADER_LEN + record::MAX_KEY_LEN + MAP_WRITE_MAX;
        let mut buf: Vec<u8> = Vec::with_capacity(small.min(most));
        let mut buf_at = at;
        // Bytes of small records not yet in `buf`.
        let mut small_left = small;
        // A run of long records back to back, heads and values from where they are: written as
        // one vectored write, so the kernel sees one long write. Page-cache folios are aligned to
        // their size, so a write at an unaligned offset starts and ends in small ones: a 1 MiB
        // value written alone lies in 9–10 physically separate pieces, one inside a long write
        // in 1–4, and hot gets read the latter faster (benches' `squirrel-get-layout`).
        let mut long: Vec<&[u8]> = Vec::new();
        let mut long_at = at;
        for r in &records {
            if r.value.len() <= COALESCE {
                if !long.is_empty() {
                    self.io(backend.write_vectored_at(&long, long_at))?;
                    long.clear();
                }
                if buf.is_empty() {
                    buf_at = at;
                }
                buf.extend_from_slice(&r.enc.head);
                buf.extend_from_slice(r.value);
                small_left -= r.enc.head.len() + r.value.len();
                // A short remainder goes out with this write rather than after it: written alone
                // it would go through the backend's map, whose page faults read ahead and zero
                // pages the next long write then overwrites (a bulk load's pages were all zeroed
                // twice that way).
                let short_rest = small_left > 0 && small_left <= MAP_WRITE_MAX;
                if buf.len() >= COALESCE && !short_rest {
                    self.io(backend.write_at(&buf, buf_at))?;
                    buf.clear();
                }
            } else {
                if !buf.is_empty() {
                    self.io(backend.write_at(&buf, buf_at))?;
                    buf.clear();
                }
                if long.is_empty() {
                    long_at = at;
                }
                long.push(&r.enc.head);
                long.push(r.value);
            }
            at += r.len();
        }
        if !buf.is_empty() {
            self.io(backend.write_at(&buf, buf_at))?;
        }
        if !long.is_empty() {
            self.io(backend.write_vectored_at(&long, long_at))?;
        }
        let written_back = st.written_back.min(at);
        let start_writeback =
            self.config.durability == Durability::Buffered && at - written_back >= WRITEBACK_CHUNK;
        if start_writeback {
            // Buffered bulk writes: have the kernel write the bytes back as they come, so the
            // next checkpoint's fdatasync (the index may name only durable records) waits for
            // the last few MiB, not a whole checkpoint interval. A hint; a failure here is
            // reported by that fdatasync, which decides.
            let _ = backend.start_writeback(written_back, at - written_back);
        }
        if self.config.durability == Durability::Fsync {
            self.io(backend.sync_data())?;
        }
        if start_writeback {
            st.written_back = at;
        }
        if lead {
            // The mark at `start` vouches for [0, synced); itself it needs no proof.
            st.proven = if st.synced == start {
                start + record::MARK_LEN
            } else {
                st.synced
            };
        }
        // Durable as promised: publish.
        let view = self.view.load();
        // A batch of new keys each miss in the overlay's table and the index's Bloom filters (a
        // cache miss a key in each): the lines of the key PREFETCH_AHEAD records on are asked for
        // while this one is published (a short batch asked for all of them before encoding).
        let mut overlay = view.overlay.writer();
        let mut at = start;
        for (i, r) in records.iter().enumerate() {
            if let Some(ahead) = records.get(i + PREFETCH_AHEAD) {
                overlay.prefetch(ahead.hash);
                if let Some(index) = &view.index {
                    index.prefetch(ahead.hash);
                }
            }
            if r.kind == Kind::Mark {
                recovery::count(&mut st.counters, Kind::Mark, None, r.len());
                at += r.len();
                continue;
            }
            let entry = match r.kind {
                Kind::Put => Entry::Put(Loc {
                    offset: at,
                    len: r.len(),
                    crc: r.enc.crc,
                }),
                _ => Entry::Tombstone(at),
            };
            // The record is written: publish it whatever happens. A damaged slot only costs the
            // statistics here, and makes the next checkpoint rebuild the index and recount.
            let prev = recovery::supersede(
                &mut overlay,
                view.index.as_ref(),
                view.segment.bytes(),
                (r.key, r.hash),
                entry,
                &self.seg_path,
            )
            .unwrap_or_else(|_| {
                st.needs_repair = true;
                None
            });
            recovery::count(&mut st.counters, r.kind, prev, r.len());
            at += r.len();
        }
        drop(overlay);
        st.end = at;
        if self.config.durability == Durability::Fsync {
            st.synced = st.end;
        }
        self.live.store(st.counters.live_records, Ordering::Release);
        let tail_bytes = st.end - st.covered_len;
        if view.overlay.len() >= self.config.checkpoint_records
            || tail_bytes >= self.config.checkpoint_bytes
        {
            drop(view);
            self.checkpoint(st, false)?;
        }
        Ok(())
    }

    /// Grows the file ahead of the writer so the map is rebuilt rarely; makes the growth durable
    /// (in Fsync mode) before any record is written into the new region.
    pub(super) fn ensure_capacity(&self, st: &mut State, needed: u64) -> Result<()> {
        if needed <= st.file_len {
            return Ok(());
        }
        // A compaction's old segment may still be going: its space first.
        self.await_release();
        let step = (st.file_len / 4).clamp(1 << 20, 1 << 30);
        let new_len = needed.max(st.file_len + step).next_multiple_of(64 << 10);
        let backend = self.backend(st)?;
        self.io(backend.set_len(new_len))?;
        if self.config.durability == Durability::Fsync {
            self.io(backend.sync_data())?;
            st.synced = st.end;
        }
        st.file_len = new_len;
        let old = self.view.load();
        let map = SegmentMap::grown(&old.segment, &st.file, new_len, &self.seg_path)?;
        self.view.store(Arc::new(View {
            segment: map,
            index: old.index.clone(),
            overlay: old.overlay.clone(),
        }));
        Ok(())
    }
}
