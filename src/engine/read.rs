//! The read path: find a key (overlay first, then the index), check its record, and hand out a
//! [`ValueRef`] into the mapping; [`Iter`] and the snapshot behind `keys` and `iter`.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::engine::index::{self, Loc, Probe};
use crate::engine::overlay::{Entry, Found, Listing};
use crate::engine::record::{self, Header, Kind};
use crate::engine::segment::SegmentMap;
use crate::error::{Error, IoContext, Result};

use super::{Engine, Inner, LOOKUP_RETRIES, View};

/// How many times a lookup looks again through a newer view when the one it loaded does not map
/// what the overlay names (each time, the writer grew the file meanwhile, by at least 1 MiB and
/// up to a quarter of it, so a lookup that needs this many has raced 64 growths).
const NEWER_VIEWS: usize = 64;

/// A value read from the store: derefs to the bytes inside the memory map (no copy).
///
/// It keeps the mapping alive, so it stays valid while the store grows or is compacted.
#[derive(Clone)]
pub struct ValueRef {
    map: Arc<SegmentMap>,
    start: usize,
    len: usize,
    codec: u8,
}

impl ValueRef {
    /// The codec byte the record was written with (0 for values written with [`Engine::set`]).
    pub fn codec(&self) -> u8 {
        self.codec
    }
}

impl Deref for ValueRef {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map.bytes()[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for ValueRef {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for ValueRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValueRef")
            .field("len", &self.len)
            .field("codec", &self.codec)
            .finish()
    }
}

/// A consistent picture of every live entry: the view, the overlay's entries and the index's.
pub(super) struct Snapshot {
    pub(super) view: Arc<View>,
    pub(super) recent: Listing,
    pub(super) indexed: Vec<(u64, Loc)>,
}

/// An iterator over a store's live keys and values; see [`Engine::iter`].
pub struct Iter {
    pub(super) engine: Engine,
    pub(super) segment: Arc<SegmentMap>,
    pub(super) recent: Listing,
    pub(super) locs: std::vec::IntoIter<(Loc, bool)>,
}

impl fmt::Debug for Iter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("remaining", &self.locs.len())
            .finish()
    }
}

impl Iterator for Iter {
    type Item = Result<(String, ValueRef)>;

    fn next(&mut self) -> Option<Self::Item> {
        for (loc, from_overlay) in self.locs.by_ref() {
            let inner = &self.engine.inner;
            let key = match inner.key_of(self.segment.bytes(), loc) {
                Ok(k) => k.to_owned(),
                Err(e) => return Some(Err(e)),
            };
            // An index entry whose key was written again since the checkpoint is stale.
            if !from_overlay && self.recent.shadows(&key) {
                continue;
            }
            let check = inner.config.verify_values;
            return Some(
                inner
                    .read(self.segment.clone(), &key, loc, check)
                    .map(|v| (key, v)),
            );
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.locs.len()))
    }
}
impl Inner {
    /// Every live entry as of now. A read-only handle whose index names records past its map
    /// (a writer in another process grew the file) maps the file anew; a damaged slot makes the
    /// index be rebuilt from the segment.
    pub(super) fn snapshot(&self) -> Result<Snapshot> {
        for attempt in 0..3 {
            // The overlay first: an entry leaves it only after its slot is written.
            let (view, recent) = self.recent()?;
            let Some(index) = &view.index else {
                return Ok(Snapshot {
                    view,
                    recent,
                    indexed: Vec::new(),
                });
            };
            let entries = index.entries(view.segment.bytes());
            let fits = entries.as_ref().is_some_and(|e| {
                e.iter().all(|(_, l)| {
                    l.offset
                        .checked_add(l.len)
                        .is_some_and(|end| end <= view.segment.len())
                })
            });
            match entries {
                Some(indexed) if fits => {
                    return Ok(Snapshot {
                        view,
                        recent,
                        indexed,
                    });
                }
                Some(_) if attempt == 0 => self.remap_for_reader(&view)?,
                _ => self.repair_index(&mut self.state.lock())?,
            }
        }
        Err(Error::corruption(
            &self.idx_path,
            0,
            None,
            "the index stays inconsistent with the segment after a rebuild",
        ))
    }

    /// Finds the record for `key`: overlay, then index. Retries a lookup that raced an in-place
    /// index update (seen as a slot failing its crc) or a segment that grew under the reader; a
    /// slot that stays damaged makes the index be rebuilt from the segment, once.
    pub(super) fn locate(&self, key: &str) -> Result<Option<(Arc<SegmentMap>, Loc)>> {
        let hash = index::hash_key(key);
        let mut repaired = false;
        let mut attempt = 0;
        let mut newer = 0;
        while attempt < LOOKUP_RETRIES * 2 {
            if attempt == LOOKUP_RETRIES && !repaired {
                repaired = true;
                let mut st = self.state.lock();
                self.repair_index(&mut st)?;
            }
            let view = self.view.load();
            // Past the view's map: a writer in this process published records after this view
            // was loaded (its newer view covers them: look again, no attempt spent, no lock), or
            // one in another process grew the file (map it anew).
            let mut past = |view: &View, attempt: &mut usize| -> Result<()> {
                if newer < NEWER_VIEWS && self.newer_view(view) {
                    newer += 1;
                } else {
                    self.remap_for_reader(view)?;
                    *attempt += 1;
                }
                Ok(())
            };
            let loc = match view.overlay.get(key, hash, view.segment.bytes()) {
                Found::Entry(Entry::Put(loc)) => loc,
                Found::Entry(Entry::Tombstone(_)) => return Ok(None),
                Found::Past => {
                    past(&view, &mut attempt)?;
                    continue;
                }
                Found::Absent => {
                    let Some(index) = &view.index else {
                        return Ok(None);
                    };
                    match index.probe(key, hash, view.segment.bytes()) {
                        Probe::Found(loc) => loc,
                        Probe::NotFound => return Ok(None),
                        Probe::BadSlot => {
                            // Most likely an in-place update seen half-done: give it a moment.
                            std::thread::sleep(std::time::Duration::from_micros(
                                20 << attempt.min(6),
                            ));
                            attempt += 1;
                            continue;
                        }
                        Probe::PastSegment => {
                            past(&view, &mut attempt)?;
                            continue;
                        }
                    }
                }
            };
            if loc
                .offset
                .checked_add(loc.len)
                .is_none_or(|e| e > view.segment.len())
            {
                past(&view, &mut attempt)?;
                continue;
            }
            return Ok(Some((view.segment.clone(), loc)));
        }
        Err(Error::corruption(
            &self.idx_path,
            0,
            Some(key),
            "index slot for this key fails its checksum or points past the segment",
        ))
    }

    /// Whether a view with another map of the segment was published since `seen` was loaded.
    fn newer_view(&self, seen: &View) -> bool {
        !Arc::ptr_eq(&self.view.load().segment, &seen.segment)
    }

    /// The current view and the overlay's entries read through it. A writer in this process may
    /// publish records past the view's map while they are read (its newer view covers them):
    /// read again through that one, without taking a lock.
    fn recent(&self) -> Result<(Arc<View>, Listing)> {
        for _ in 0..NEWER_VIEWS {
            let view = self.view.load_full();
            if let Some(recent) = view.overlay.list(view.segment.bytes()) {
                return Ok((view, recent));
            }
            self.remap_for_reader(&view)?;
        }
        Err(Error::corruption(
            &self.seg_path,
            0,
            None,
            "the overlay names records past the segment",
        ))
    }

    /// A read-only handle whose index (updated by a writer in another process) names records past
    /// its map: map the file as it is now.
    pub(super) fn remap_for_reader(&self, seen: &View) -> Result<()> {
        if self.newer_view(seen) {
            return Ok(());
        }
        let mut st = self.state.lock();
        let current = self.view.load();
        if !Arc::ptr_eq(&current.segment, &seen.segment) {
            return Ok(());
        }
        let len = st.file.metadata().at(&self.seg_path)?.len();
        if len <= current.segment.len() {
            return Ok(());
        }
        let map = SegmentMap::grown(&current.segment, &st.file, len, &self.seg_path)?;
        st.file_len = len;
        self.view.store(Arc::new(View {
            segment: map,
            index: current.index.clone(),
            overlay: current.overlay.clone(),
        }));
        Ok(())
    }

    /// Checks the record at `loc` is `key`'s and intact, and returns its value.
    pub(super) fn read(
        &self,
        segment: Arc<SegmentMap>,
        key: &str,
        loc: Loc,
        check_value: bool,
    ) -> Result<ValueRef> {
        let bad = |what: &str| Error::corruption(&self.seg_path, loc.offset, Some(key), what);
        let start = loc.offset as usize;
        let rec = segment
            .bytes()
            .get(start..start + loc.len as usize)
            .ok_or_else(|| bad("record lies past the end of the segment"))?;
        let h = Header::decode(rec).map_err(|_| bad("record header checksum mismatch"))?;
        if h.kind != Kind::Put || h.record_len() != Some(loc.len) || h.crc != loc.crc {
            return Err(bad("record does not match its index entry"));
        }
        let key_end = record::HEADER_LEN + usize::from(h.key_len);
        if &rec[record::HEADER_LEN..key_end] != key.as_bytes() {
            return Err(bad("record holds another key"));
        }
        if check_value && !segment.was_checked(loc.offset, loc.len) {
            if !record::crc_ok(rec, h.crc) {
                return Err(bad("record checksum mismatch"));
            }
            segment.set_checked(loc.offset, loc.len);
        }
        Ok(ValueRef {
            start: start + key_end,
            len: h.value_len as usize,
            codec: h.codec,
            map: segment,
        })
    }

    /// The key of the record at `loc`, its header checked.
    pub(crate) fn key_of<'a>(&self, segment: &'a [u8], loc: Loc) -> Result<&'a str> {
        let bad = |what: &str| Error::corruption(&self.seg_path, loc.offset, None, what);
        let rec = segment
            .get(loc.offset as usize..)
            .ok_or_else(|| bad("index entry points past the end of the segment"))?;
        let h = Header::decode(rec).map_err(|_| bad("record header checksum mismatch"))?;
        let key = rec
            .get(record::HEADER_LEN..record::HEADER_LEN + usize::from(h.key_len))
            .ok_or_else(|| bad("record key lies past the end of the segment"))?;
        std::str::from_utf8(key).map_err(|_| bad("record key is not UTF-8"))
    }
}
