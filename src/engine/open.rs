//! Opening a store: take the writer lock, map the segment, adopt or rebuild the index, replay
//! the records after its checkpoint, and make a torn tail safe (saved, then cut).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::engine::backend::Backend;
use crate::engine::index::{self, Counters};
use crate::engine::lock::WriterLock;
use crate::engine::overlay::Overlay;
use crate::engine::recovery::{self, IndexState, Replayed};
use crate::engine::scan::{Reach, Tail};
use crate::engine::segment::{self};
use crate::error::{Error, IoContext, Result};

use super::{Config, Engine, Inner, State, View};

impl Engine {
    pub(super) fn open_with(config: Config) -> Result<Engine> {
        let dir = config.path.clone();
        let writable = !config.read_only;
        if writable && config.create {
            std::fs::create_dir_all(&dir).at(&dir)?;
        }
        if !dir.is_dir() {
            return Err(Error::NotFound { path: dir });
        }
        let may_create = writable && config.create;
        if !may_create && !dir.join(segment::SEGMENT_FILE).exists() {
            // Checked before taking the lock, so a directory without a store gets no LOCK file.
            return Err(Error::NotFound { path: dir });
        }
        let lock = if writable {
            let lock = WriterLock::acquire(&dir)?;
            crate::engine::compaction::remove_leftovers(&dir)?;
            Some(lock)
        } else {
            None
        };
        let (view, state) = Self::recover(&dir, &config)?;
        let backend_path = dir.join(segment::SEGMENT_FILE);
        let inner = Inner {
            seg_path: backend_path,
            idx_path: dir.join(index::INDEX_FILE),
            dir,
            live: AtomicU64::new(state.counters.live_records),
            view: ArcSwap::from_pointee(view),
            poisoned: AtomicBool::new(false),
            state: Mutex::new(state),
            compaction: Mutex::new(()),
            auto_compacting: AtomicBool::new(false),
            released: Mutex::new(None),
            checkpoint_crash: std::sync::atomic::AtomicU8::new(0),
            config,
            _lock: lock,
        };
        let engine = Engine {
            inner: Arc::new(inner),
        };
        if writable {
            let mut st = engine.inner.state.lock();
            if st.index_rebuilt || engine.inner.view.load().index.is_none() {
                engine.inner.checkpoint(&mut st, true)?;
            }
        }
        Ok(engine)
    }

    /// Recovery: map the segment, adopt or rebuild the index, replay the tail.
    pub(super) fn recover(dir: &Path, config: &Config) -> Result<(View, State)> {
        let writable = !config.read_only;
        let seg_path = dir.join(segment::SEGMENT_FILE);
        let opened = recovery::open_segment(dir, writable, config.create)?;
        let file_len = opened.map.len();
        let mut closed = false;
        let (index, from, mut counters, used_slots, rebuilt) = if opened.created {
            (None, segment::HEADER_LEN, Counters::default(), 0, false)
        } else if config.rebuild_index {
            (None, segment::HEADER_LEN, Counters::default(), 0, true)
        } else {
            match recovery::open_index(dir, writable, opened.segment_id, file_len)? {
                IndexState::Usable(map, h) => {
                    closed = h.closed;
                    (Some(map), h.covered_len, h.counters, h.used_slots, false)
                }
                IndexState::Unusable => (None, segment::HEADER_LEN, Counters::default(), 0, true),
            }
        };
        let mut overlay = Overlay::new();
        let bytes = opened.map.bytes();
        // A clean close proved nothing follows the checkpoint: check the next header's worth of
        // bytes is zero rather than scanning the allocated space after it.
        let closed_end = closed
            && index.is_some()
            && usize::try_from(from).is_ok_and(|f| {
                bytes
                    .get(f..(f + crate::engine::record::HEADER_LEN).min(bytes.len()))
                    .is_some_and(|w| w.iter().all(|&b| b == 0))
            });
        // A read-write open may clean up after the last record, so it first looks at the whole
        // file for anything intact there; a read-only one stops at the written part.
        let reach = if writable {
            Reach::Whole
        } else {
            Reach::Written
        };
        let mut replay = if closed_end {
            Ok(Replayed {
                tail: Tail {
                    end: from,
                    torn: 0,
                    proven: from,
                    marked: 0,
                    ends_proven: crate::engine::scan::ends_with_mark(bytes, from),
                },
                ..Replayed::default()
            })
        } else {
            recovery::replay(
                bytes,
                from,
                from,
                reach,
                index.as_ref(),
                &overlay,
                &mut counters,
                &seg_path,
            )
        };
        let (mut index, mut from, mut used_slots, mut rebuilt) = (index, from, used_slots, rebuilt);
        if replay.is_err() && index.is_some() {
            // The tail may be fine and a slot damaged: rebuild from a full scan before giving up.
            (index, from, used_slots, rebuilt) = (None, segment::HEADER_LEN, 0, true);
            overlay = Overlay::new();
            counters = Counters::default();
            replay = recovery::replay(
                opened.map.bytes(),
                from,
                from,
                reach,
                None,
                &overlay,
                &mut counters,
                &seg_path,
            );
        }
        let Replayed {
            tail,
            records: replayed,
            damaged,
        } = replay?;
        let (end, torn) = (tail.end, tail.torn);
        let closed = closed_end && index.is_some() && end == from;
        let backend: Option<Box<dyn Backend>> = if writable {
            let file = opened.file.try_clone().at(&seg_path)?;
            Some(config.backend_for(file))
        } else {
            None
        };
        let mut version = opened.version;
        if let Some(b) = &backend {
            if !closed && file_len > end {
                // Everything after the last record goes: a torn tail, and anything a crash left
                // further on (records of an interrupted append beyond a hole must never be
                // revived by appends that later close the hole). Its bytes are saved first:
                // a torn tail cannot be told from damage to the last append, which may have
                // been acknowledged. Punched, not truncated: another process may have those
                // bytes mapped.
                let keep = crate::engine::scan::last_nonzero(bytes, end);
                if keep > end {
                    let from = usize::try_from(end).unwrap_or(usize::MAX);
                    let to = usize::try_from(keep).unwrap_or(usize::MAX);
                    crate::engine::lost_found::save(dir, opened.segment_id, end, &bytes[from..to])?;
                    // Counted by the listing below.
                }
                b.discard(end, file_len - end).at(&seg_path)?;
            }
            let upgrade = version < segment::FORMAT_VERSION;
            if upgrade {
                // Sync marks and key checks are v2: say so in the header before writing any.
                b.write_at(&segment::encode_header(opened.segment_id), 0)
                    .at(&seg_path)?;
                version = segment::FORMAT_VERSION;
            }
            if !closed || upgrade {
                b.sync_data().at(&seg_path)?;
            }
        }
        let covered_len = if index.is_some() {
            from
        } else {
            segment::HEADER_LEN
        };
        // After the sync above (or the clean close), everything up to `end` is durable.
        // What the segment proves by itself (marks), not the deletable index: the next append
        // leads with a mark unless the records already end with one.
        let proven = if tail.ends_proven {
            end
        } else {
            tail.marked.max(segment::HEADER_LEN)
        };
        let state = State {
            segment_id: opened.segment_id,
            file: opened.file,
            backend,
            end,
            file_len,
            covered_len,
            used_slots,
            counters,
            replayed,
            torn,
            index_rebuilt: rebuilt,
            closed_mark: closed && writable,
            needs_repair: false,
            version,
            synced: if writable { end } else { 0 },
            written_back: end,
            proven,
            damaged,
            lost_found_files: crate::engine::lost_found::list(dir)?.len() as u64,
        };
        let view = View {
            segment: opened.map,
            index,
            overlay: Arc::new(overlay),
        };
        Ok((view, state))
    }
}
