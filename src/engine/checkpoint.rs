//! Checkpoints: the overlay written as a new sorted run (index format 4), merges of runs, the
//! conversion of a version-2 index, the clean-close protocol, and the index rebuild after a
//! damaged run.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::engine::index::Counters;
use crate::engine::manifest::{self, Index, Manifest, RunSet};
use crate::engine::overlay::Overlay;
use crate::engine::recovery;
use crate::engine::runs::{self, Run};
use crate::engine::scan::Reach;
use crate::engine::segment::{self};
use crate::error::{Error, Result};

use super::{Inner, State, View};

/// The most records a new overlay is sized for up front (a larger `checkpoint_records` lets it
/// grow as needed rather than reserve memory a store may never fill).
const OVERLAY_PRESIZE: usize = 131_072;

/// Points at which a test can stop a checkpoint, as if the process died there
/// ([`crate::Engine::checkpoint_crashing_at`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CheckpointCrash {
    /// After the segment's fsync, before the run is written.
    AfterSegmentSync = 1,
    /// After the run file is written and synced, before the directory fsync.
    AfterRunWritten,
    /// After the run is durable, before the manifest is written.
    AfterRunDurable,
    /// After `index.sqm.tmp` is written and synced, before the rename.
    AfterManifestTmp,
    /// After the manifest is renamed and the directory synced, before old files are deleted.
    BeforeCleanup,
}

/// What a checkpoint writes, decided before anything is written.
enum Plan {
    /// One new delta run after the existing ones.
    Delta,
    /// The newest this many deltas and the overlay merged into one delta.
    MergeDeltas(usize),
    /// Everything merged into a new base run.
    Base,
}

impl Inner {
    /// Writes the overlay into the index. `rebuild` forces a new base run holding everything.
    ///
    /// Protocol (format-spec/ argues it): fsync the segment, so everything a run will name is
    /// durable; write the new run (the overlay sorted by hash, or a merge) and fsync it and the
    /// directory; replace the manifest by rename (temporary file, fsync, rename, fsync of the
    /// directory); only then delete the run files (and a version-2 `index.sqi`) that the new
    /// manifest no longer names. A crash anywhere leaves a durable manifest whose runs all exist,
    /// or (if a directory entry was lost) one the next open does not trust and rebuilds from the
    /// segment.
    pub(crate) fn checkpoint(&self, st: &mut State, rebuild: bool) -> Result<()> {
        if std::mem::take(&mut st.needs_repair) {
            return self.repair_index(st);
        }
        let view = self.view.load_full();
        let old_set = match &view.index {
            Some(Index::Runs(set)) => Some(set.clone()),
            _ => None,
        };
        if !rebuild && view.overlay.is_empty() && st.covered_len == st.end && old_set.is_some() {
            return Ok(());
        }
        self.sync(st)?;
        self.crash_point(CheckpointCrash::AfterSegmentSync)?;
        let seg = view.segment.bytes();
        let delta = view.overlay.run_entries();
        let seq = self.next_seq(old_set.as_deref())?;
        let plan = match &old_set {
            Some(set) if !rebuild => {
                let delta_entries = set.delta_len() + delta.len() as u64;
                if delta_entries.saturating_mul(manifest::BASE_FRACTION) > set.base_len() {
                    Plan::Base
                } else {
                    let sizes: Vec<u64> = set.runs[1..].iter().map(|r| r.len()).collect();
                    match deltas_to_merge(&sizes, delta.len() as u64) {
                        0 => Plan::Delta,
                        n => Plan::MergeDeltas(n),
                    }
                }
            }
            _ => Plan::Base,
        };
        let path = self.dir.join(runs::file_name(seq));
        let (kept, meta) = match (&plan, &old_set) {
            (Plan::Delta, Some(set)) => {
                let meta = self.index_io(runs::write(
                    &path,
                    seq,
                    runs::KIND_DELTA,
                    st.segment_id,
                    st.covered_len,
                    st.end,
                    &delta,
                ))?;
                (set.runs.clone(), meta)
            }
            (Plan::MergeDeltas(n), Some(set)) => {
                let first = set.runs.len() - n;
                let mut sources = Vec::new();
                for r in &set.runs[first..] {
                    match manifest::Source::run(r) {
                        Ok(s) => sources.push(s),
                        Err(runs::Damaged) => return self.repair_index(st),
                    }
                }
                sources.push(manifest::Source::List(&delta));
                let from = set.runs[first].meta.from;
                let meta =
                    self.write_merged(&path, seq, runs::KIND_DELTA, st, from, &sources, seg)?;
                (set.runs[..first].to_vec(), meta)
            }
            _ => {
                let mut table_entries = Vec::new();
                let mut sources = Vec::new();
                match &view.index {
                    Some(Index::Runs(set)) => {
                        for r in &set.runs {
                            match manifest::Source::run(r) {
                                Ok(s) => sources.push(s),
                                Err(runs::Damaged) => return self.repair_index(st),
                            }
                        }
                    }
                    Some(Index::Table(t)) => {
                        // Converting a version-2 table: one pass over its slots, sorted.
                        let Some(old) = t.entries() else {
                            return self.repair_index(st);
                        };
                        table_entries = old.into_iter().map(|(h, loc)| (h, loc.offset)).collect();
                        table_entries.sort_unstable();
                    }
                    None => {}
                }
                if !table_entries.is_empty() {
                    sources.push(manifest::Source::List(&table_entries));
                }
                sources.push(manifest::Source::List(&delta));
                let from = segment::HEADER_LEN;
                let meta =
                    self.write_merged(&path, seq, runs::KIND_BASE, st, from, &sources, seg)?;
                (Vec::new(), meta)
            }
        };
        drop(delta);
        self.crash_point(CheckpointCrash::AfterRunWritten)?;
        // The run's directory entry is durable before any manifest names it.
        self.index_io(recovery::sync_dir(&self.dir))?;
        self.crash_point(CheckpointCrash::AfterRunDurable)?;
        let run = match Run::open(&path, meta, st.segment_id)? {
            Ok(r) => Arc::new(r),
            Err(reason) => {
                self.poisoned.store(true, Ordering::Release);
                return Err(Error::corruption(&path, 0, None, reason));
            }
        };
        let mut set_runs = kept;
        set_runs.push(run);
        let manifest = Manifest {
            closed: false,
            segment_id: st.segment_id,
            covered_len: st.end,
            counters: st.counters,
            next_seq: seq + 1,
            runs: set_runs.iter().map(|r| r.meta).collect(),
        };
        self.index_io(manifest.write_tmp(&self.dir))?;
        self.crash_point(CheckpointCrash::AfterManifestTmp)?;
        self.index_io(Manifest::install(&self.dir))?;
        self.crash_point(CheckpointCrash::BeforeCleanup)?;
        self.store_manifest_cleanup(&manifest)?;
        st.covered_len = st.end;
        st.used_slots = 0;
        st.closed_mark = false;
        self.view.store(Arc::new(View {
            segment: view.segment.clone(),
            index: Some(Index::Runs(Arc::new(RunSet {
                manifest,
                runs: set_runs,
            }))),
            // Sized for as many records as this checkpoint took in, so a bulk load does not regrow
            // it every time, and a store written now and then does not reserve for one.
            overlay: Arc::new(Overlay::with_capacity(
                view.overlay
                    .len()
                    .min(self.config.checkpoint_records)
                    .min(OVERLAY_PRESIZE),
            )),
        }));
        Ok(())
    }

    /// Writes the merge of `sources` as run `seq` covering `[from, st.end)`, streamed.
    // The run's identity (path, seq, kind, range) and its inputs: a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn write_merged(
        &self,
        path: &std::path::Path,
        seq: u64,
        kind: u32,
        st: &State,
        from: u64,
        sources: &[manifest::Source<'_>],
        seg: &[u8],
    ) -> Result<runs::RunMeta> {
        let max = manifest::total_len(sources);
        let mut w = self.index_io(runs::RunWriter::create(
            path,
            seq,
            kind,
            st.segment_id,
            from,
            st.end,
            max,
        ))?;
        let into_base = kind == runs::KIND_BASE;
        self.index_io(manifest::merge(sources, seg, into_base, &mut |h, word| {
            w.push(h, word)
        }))?;
        self.index_io(w.finish())
    }

    /// Fails (and poisons the handle) at `point` when a test asked for a crash there.
    fn crash_point(&self, point: CheckpointCrash) -> Result<()> {
        if self.checkpoint_crash.load(Ordering::Acquire) != point as u8 {
            return Ok(());
        }
        self.poisoned.store(true, Ordering::Release);
        Err(Error::io(
            "checkpoint",
            std::io::Error::other("simulated crash (test crash point)"),
        ))
    }

    /// After `manifest` is durable: deletes the run files it does not name, and a v2 table.
    pub(crate) fn store_manifest_cleanup(&self, manifest: &Manifest) -> Result<()> {
        self.index_io(manifest::remove_unnamed(&self.dir, &manifest.runs))?;
        match std::fs::remove_file(&self.idx_path) {
            Ok(()) => self.index_io(recovery::sync_dir(&self.dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => self.index_io(Err(Error::io(&self.idx_path, e))),
        }
    }

    /// The sequence number for the next run file: past the manifest's and past every run file on
    /// disk, so a name is never reused while a reader may have the old file mapped.
    fn next_seq(&self, set: Option<&RunSet>) -> Result<u64> {
        let on_disk = self.index_io(manifest::max_seq_on_disk(&self.dir))?;
        Ok(set
            .map_or(1, |s| s.manifest.next_seq)
            .max(on_disk.saturating_add(1)))
    }

    pub(crate) fn index_io<T>(&self, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.poisoned.store(true, Ordering::Release);
        }
        r
    }

    /// Rewrites the manifest's state as of `st`: `closed` after a clean close, else clean.
    pub(super) fn mark_index(&self, st: &mut State, closed: bool) -> Result<()> {
        let Some(index) = self.view.load().index.clone() else {
            return Ok(());
        };
        match index {
            Index::Runs(set) => {
                let manifest = Manifest {
                    closed,
                    covered_len: st.covered_len,
                    counters: st.counters,
                    ..set.manifest.clone()
                };
                self.index_io(manifest.store(&self.dir))?;
                self.store_manifest_cleanup(&manifest)?;
            }
            Index::Table(idx) => {
                let mut header = st.index_header(st.covered_len, idx.slot_count(), st.used_slots);
                header.closed = closed;
                idx.write_header(&header)?;
                self.index_io(idx.flush_header(&self.idx_path))?;
            }
        }
        st.closed_mark = closed;
        Ok(())
    }

    /// The end of a clean session: checkpoint, give back the preallocated space, and mark the
    /// index closed so the next open need not clean up after the last record.
    pub(super) fn close_cleanly(&self, st: &mut State) -> Result<()> {
        self.await_release();
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

/// How many of the newest deltas (`deltas`: their entry counts, oldest first) a checkpoint of
/// `new` entries merges with them: those no larger than what is merged so far, and as many more
/// as leave at most [`manifest::MAX_DELTAS`] deltas.
///
/// The runs grow like a binary counter: while the deltas span fewer than about
/// 2^`MAX_DELTAS` checkpoints, an entry goes through O(log) delta merges. Past that, the newest
/// delta takes in one checkpoint at a time until it is as large as the one before it, so the
/// cost grows linearly again, though more slowly than merging every delta each time, as before.
/// The deltas span at most base / (2 · checkpoint) checkpoints before the base takes them in.
fn deltas_to_merge(deltas: &[u64], new: u64) -> usize {
    let mut merged = new;
    let mut n = 0;
    while let Some(&next) = deltas.len().checked_sub(n + 1).map(|i| &deltas[i]) {
        if next > merged && deltas.len() - n < manifest::MAX_DELTAS {
            break;
        }
        merged += next;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoints of `c` entries each into deltas as a bulk load makes them (no base merge):
    /// the deltas' entry counts after each, and the entries the delta merges wrote in all.
    fn load(checkpoints: usize, c: u64) -> (Vec<Vec<u64>>, u64) {
        let mut deltas: Vec<u64> = Vec::new();
        let mut written = 0;
        let mut states = Vec::new();
        for _ in 0..checkpoints {
            let n = deltas_to_merge(&deltas, c);
            let merged: u64 = deltas.drain(deltas.len() - n..).sum::<u64>() + c;
            written += merged;
            deltas.push(merged);
            states.push(deltas.clone());
        }
        (states, written)
    }

    #[test]
    fn deltas_grow_like_a_binary_counter() {
        let (states, _) = load(7, 10);
        assert_eq!(states[0], [10]);
        assert_eq!(states[1], [20]);
        assert_eq!(states[2], [20, 10]);
        assert_eq!(states[3], [40]);
        assert_eq!(states[6], [40, 20, 10]);
    }

    /// Entries written by the former policy's delta merges (every delta merged once there were
    /// more than three) over `checkpoints` checkpoints of one entry.
    fn former(checkpoints: usize) -> u64 {
        let (mut deltas, mut written) = (Vec::<u64>::new(), 0);
        for _ in 0..checkpoints {
            if deltas.len() + 1 > 3 {
                let merged = deltas.drain(..).sum::<u64>() + 1;
                written += merged;
                deltas.push(merged);
            } else {
                written += 1;
                deltas.push(1);
            }
        }
        written
    }

    #[test]
    fn the_deltas_stay_within_the_limit_and_are_merged_less_than_before() {
        // The deltas span at most base / (2 · checkpoint) checkpoints: 100 for a 26M-entry base
        // at the default 131,072 records a checkpoint, 1000 for a 262M-entry one.
        for checkpoints in [100, 1000] {
            let (states, written) = load(checkpoints, 1);
            assert!(states.iter().all(|d| d.len() <= manifest::MAX_DELTAS));
            assert!(states.iter().all(|d| d.is_sorted_by(|a, b| a >= b)));
            let n = checkpoints as u64;
            if n <= 100 {
                // Still in the binary counter's range: O(log) merges an entry.
                let log = u64::from(n.ilog2()) + 1;
                assert!(written <= n * log, "{written} entries written for {n}");
            }
            let former = former(checkpoints);
            assert!(written * 2 < former, "{written} against {former}");
        }
    }
}
