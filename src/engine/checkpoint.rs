//! Checkpoints: the overlay written into the index (or a fresh index built and renamed into
//! place), the clean-close protocol, and the index rebuild after a damaged slot.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::engine::index::{self, Counters, IndexMap, Loc};
use crate::engine::recovery::{self, Entry, Overlay};
use crate::engine::scan::Reach;
use crate::engine::segment::{self};
use crate::error::{Error, Result};

use super::{Inner, State, View};

impl Inner {
    /// Writes the overlay into the index. `rebuild` forces a fresh index file.
    ///
    /// Protocol (format-spec/ argues it): fsync the segment, so everything the index will name is
    /// durable; mark the index header dirty and sync; update slots in place; sync; write the clean
    /// header with the new covered length; sync. A crash in between leaves a dirty header, and the
    /// next open rebuilds the index from the segment.
    pub(crate) fn checkpoint(&self, st: &mut State, rebuild: bool) -> Result<()> {
        if std::mem::take(&mut st.needs_repair) {
            return self.repair_index(st);
        }
        let view = self.view.load_full();
        if !rebuild && view.overlay.is_empty() && st.covered_len == st.end && view.index.is_some() {
            return Ok(());
        }
        self.sync(st)?;
        let seg = view.segment.bytes();
        let puts = view
            .overlay
            .iter()
            .filter(|e| matches!(e.value(), Entry::Put(_)))
            .count() as u64;
        let in_place = match &view.index {
            Some(idx) if !rebuild && !index::too_full(st.used_slots + puts, idx.slot_count()) => {
                Some(idx.clone())
            }
            _ => None,
        };
        let new_index = match in_place {
            Some(idx) => {
                let mut header = st.index_header(st.covered_len, idx.slot_count(), st.used_slots);
                header.dirty = true;
                idx.write_header(&header)?;
                // Only the header page changed: flush it alone, not the whole map.
                self.index_io(idx.flush_header(&self.idx_path))?;
                let mut used = st.used_slots;
                for e in view.overlay.iter() {
                    let key: &str = e.key();
                    let hash = index::hash_key(key);
                    let r = match *e.value() {
                        Entry::Put(loc) => idx.upsert(key, hash, loc, seg).map(|new| {
                            used += u64::from(new);
                        }),
                        Entry::Tombstone => idx.remove(key, hash, seg),
                    };
                    if r.is_err() {
                        // A damaged slot: the table cannot be trusted; rebuild it from the segment.
                        drop(e);
                        return self.repair_index(st);
                    }
                }
                self.index_io(idx.flush(&self.idx_path))?;
                let header = st.index_header(st.end, idx.slot_count(), used);
                idx.write_header(&header)?;
                self.index_io(idx.flush_header(&self.idx_path))?;
                st.used_slots = used;
                idx
            }
            None => self.rebuild_index(st, &view)?,
        };
        st.covered_len = st.end;
        self.view.store(Arc::new(View {
            segment: view.segment.clone(),
            index: Some(new_index),
            overlay: Arc::new(Overlay::new()),
        }));
        Ok(())
    }

    pub(crate) fn index_io<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.poisoned.store(true, Ordering::Release);
        }
        r
    }

    /// Builds a fresh index file from the current index and the overlay, and renames it into place.
    pub(super) fn rebuild_index(&self, st: &mut State, view: &View) -> Result<Arc<IndexMap>> {
        let seg = view.segment.bytes();
        let mut by_hash: HashMap<u64, Vec<Box<str>>> = HashMap::new();
        let mut entries: Vec<(u64, Loc)> = Vec::new();
        for e in view.overlay.iter() {
            let hash = index::hash_key(e.key());
            by_hash.entry(hash).or_default().push(e.key().clone());
            if let Entry::Put(loc) = *e.value() {
                entries.push((hash, loc));
            }
        }
        if let Some(old) = &view.index {
            let Some(old_entries) = old.entries() else {
                return self.repair_index(st).and_then(|()| {
                    self.view.load().index.clone().ok_or_else(|| {
                        Error::corruption(&self.idx_path, 0, None, "index rebuild failed")
                    })
                });
            };
            for (hash, loc) in old_entries {
                if let Some(keys) = by_hash.get(&hash) {
                    let key = self.key_of(seg, loc)?;
                    if keys.iter().any(|k| &**k == key) {
                        continue;
                    }
                }
                entries.push((hash, loc));
            }
        }
        let slots = index::slots_for(entries.len() as u64);
        let header = st.index_header(st.end, slots, entries.len() as u64);
        let tmp = self.dir.join(format!("{}.tmp", index::INDEX_FILE));
        let map = self.index_io(IndexMap::create(&self.idx_path, &tmp, header, &entries))?;
        self.index_io(recovery::sync_dir(&self.dir))?;
        st.used_slots = entries.len() as u64;
        Ok(map)
    }

    /// Rewrites the index header's state as of `st`: `closed` after a clean close, else clean.
    pub(super) fn mark_index(&self, st: &mut State, closed: bool) -> Result<()> {
        let Some(idx) = self.view.load().index.clone() else {
            return Ok(());
        };
        let mut header = st.index_header(st.covered_len, idx.slot_count(), st.used_slots);
        header.closed = closed;
        idx.write_header(&header)?;
        self.index_io(idx.flush_header(&self.idx_path))?;
        st.closed_mark = closed;
        Ok(())
    }

    /// The end of a clean session: checkpoint, give back the preallocated space, and mark the
    /// index closed so the next open need not clean up after the last record.
    pub(super) fn close_cleanly(&self, st: &mut State) -> Result<()> {
        if st.closed_mark {
            // Closed already, and nothing was appended since.
            return Ok(());
        }
        // The segment ends with a mark proving everything before it synced: a later open needs
        // no index to know that damage anywhere in it is corruption, not a torn write.
        self.sync(st)?;
        self.write_mark(st)?;
        self.checkpoint(st, false)?;
        self.release_tail(st)?;
        if st.covered_len == st.end {
            self.mark_index(st, true)?;
        }
        Ok(())
    }

    /// Gives back the space allocated ahead of the writer (the file keeps its length, so no
    /// reader's map ever extends past it).
    pub(super) fn release_tail(&self, st: &State) -> Result<()> {
        match &st.backend {
            Some(b) if st.file_len > st.end => self.io(b.discard(st.end, st.file_len - st.end)),
            _ => Ok(()),
        }
    }

    /// Rebuilds the index from a full scan of the segment, because a slot was found damaged.
    /// A read-write handle writes the new index; a read-only one keeps it in memory.
    pub(crate) fn repair_index(&self, st: &mut State) -> Result<()> {
        let view = self.view.load_full();
        let overlay = Overlay::new();
        let mut counters = Counters::default();
        let reach = if self.config.read_only {
            Reach::Written
        } else {
            Reach::Whole
        };
        let replayed = recovery::replay(
            view.segment.bytes(),
            segment::HEADER_LEN,
            segment::HEADER_LEN,
            reach,
            None,
            &overlay,
            &mut counters,
            &self.seg_path,
        )?;
        st.counters = counters;
        st.end = replayed.tail.end;
        st.replayed = replayed.records;
        st.damaged = replayed.damaged;
        st.covered_len = segment::HEADER_LEN;
        st.used_slots = 0;
        st.index_rebuilt = true;
        self.live.store(counters.live_records, Ordering::Release);
        self.view.store(Arc::new(View {
            segment: view.segment.clone(),
            index: None,
            overlay: Arc::new(overlay),
        }));
        if self.config.read_only {
            Ok(())
        } else {
            self.checkpoint(st, true)
        }
    }
}
