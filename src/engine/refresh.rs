//! Read-only refresh: follow a segment replaced by compaction, adopt a newer checkpoint, and
//! replay what another process's writer appended since.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::engine::overlay::Overlay;
use crate::engine::recovery::{self, IndexState};
use crate::engine::scan::Reach;
use crate::error::Result;

use super::{Engine, Inner, State, View};

impl Inner {
    /// Read-only refresh: follow a replaced segment, adopt a newer checkpoint, replay new records.
    pub(super) fn refresh(&self, st: &mut State) -> Result<()> {
        let on_disk = recovery::open_segment(&self.dir, false, false)?;
        if on_disk.segment_id != st.segment_id {
            // Compaction replaced the segment: start over from the new files.
            let (view, state) = Engine::recover(&self.dir, &self.config)?;
            *st = state;
            self.live.store(st.counters.live_records, Ordering::Release);
            self.view.store(Arc::new(view));
            return Ok(());
        }
        let map = on_disk.map;
        st.file = on_disk.file;
        st.file_len = map.len();
        let current = self.view.load_full();
        let newer = match recovery::open_index(&self.dir, false, st.segment_id, map.len())? {
            IndexState::Usable(idx, h) if h.covered_len > st.covered_len => Some((idx, h)),
            _ => None,
        };
        let (index, overlay, from) = match newer {
            Some((idx, h)) => {
                st.counters = h.counters;
                st.covered_len = h.covered_len;
                st.used_slots = h.used_slots;
                (Some(idx), Arc::new(Overlay::new()), h.covered_len)
            }
            None => (current.index.clone(), current.overlay.clone(), st.end),
        };
        let replayed = recovery::replay(
            map.bytes(),
            from,
            from,
            Reach::Written,
            index.as_ref(),
            &overlay,
            &mut st.counters,
            &self.seg_path,
        )?;
        st.end = replayed.tail.end;
        st.torn = replayed.tail.torn;
        st.replayed = replayed.records;
        st.damaged.retain(|d| d.offset < from);
        st.damaged.extend(replayed.damaged);
        self.live.store(st.counters.live_records, Ordering::Release);
        self.view.store(Arc::new(View {
            segment: map,
            index,
            overlay,
        }));
        Ok(())
    }
}
