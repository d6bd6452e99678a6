//! The overlay: where each key written since the last checkpoint has its newest record.
//!
//! A table of `(hash, offset word)` slots, 16 bytes each, with the key itself left in the segment:
//! the record at the offset names its key, as it does for a run's entry. A bulk load of new keys
//! then costs one probe of a compact table per record, with no key copied and none compared (no
//! slot holds its hash), and a checkpoint takes the entries as they are, already hashed.
//!
//! Readers never wait: slots are atomics written by one writer at a time, and a table that has to
//! grow is copied into a larger one and published whole, so a reader keeps probing the table it
//! loaded. A slot, once used, keeps its hash; only its word is replaced when its key is written
//! again.
//!
//! Keys are told apart by the record the slot names. Two exceptions:
//!
//! * A damaged record whose key a replay could still tell for certain
//!   ([`crate::engine::scan::damaged_key`]) has its key and location kept beside the table, so the
//!   key maps to the damage until it is written again or deleted, as an operator's repair does.
//! * A record damaged after it was published (its header fails, or its key bytes differ from the
//!   key asked for while the record fails its checksum) may be any key: it is never replaced by
//!   another key's entry, and a lookup finding no intact record of the key hands it out, so the
//!   read reports the damage instead of serving an older value or calling the key absent.
//!   [`crate::engine::manifest::RunSet::probe`] decides the same way for runs.

use std::collections::{HashMap, hash_map};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use parking_lot::{Mutex, MutexGuard, RwLock};

use crate::engine::index::{self, Loc, record_intact};
use crate::engine::manifest::{KeyOf, key_of};
use crate::engine::platform;
use crate::engine::runs::{OFFSET_MASK, TOMBSTONE};

/// What the overlay holds for a key written since the last checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    Put(Loc),
    /// A delete, and the offset of its tombstone record (a delta run names it).
    Tombstone(u64),
}

impl Entry {
    /// The live location this entry gives its key: none for a tombstone.
    pub(crate) fn live(self) -> Option<Loc> {
        match self {
            Entry::Put(loc) => Some(loc),
            Entry::Tombstone(_) => None,
        }
    }

    /// The offset of the entry's record.
    pub(crate) fn offset(self) -> u64 {
        match self {
            Entry::Put(loc) => loc.offset,
            Entry::Tombstone(at) => at,
        }
    }

    /// The entry a run word names, given its record's location.
    fn from_word(word: u64, loc: Loc) -> Entry {
        if word & TOMBSTONE != 0 {
            Entry::Tombstone(loc.offset)
        } else {
            Entry::Put(loc)
        }
    }

    /// The entry as a run stores it: the record's offset, a tombstone flagged with [`TOMBSTONE`].
    pub(crate) fn word(self) -> u64 {
        match self {
            Entry::Put(loc) => loc.offset,
            Entry::Tombstone(at) => at | TOMBSTONE,
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// The key's newest entry (a damaged record that may be the key's, handed out as a put).
    Entry(Entry),
    /// The overlay holds nothing for the key.
    Absent,
    /// A slot of this hash names a record past the caller's map of the segment: map it anew.
    Past,
}

/// A word's flag: the slot's key and location are in [`Overlay::named`] under its offset (never
/// part of a run's word: [`OFFSET_MASK`] leaves bit 62 clear).
const NAMED: u64 = 1 << 62;

/// One slot. `hash` 0 is an empty slot ([`crate::engine::index::hash_key`] is never below 2);
/// `word` is the entry's run word, stored before `hash` so a reader seeing the hash sees it.
#[derive(Default)]
struct Slot {
    hash: AtomicU64,
    word: AtomicU64,
}

struct Table {
    slots: Box<[Slot]>,
    /// `64 - log2(slots.len())`: a hash's first slot is the top bits of its mix.
    shift: u32,
}

impl Table {
    fn new(slots: usize) -> Table {
        let slots = slots.next_power_of_two().max(MIN_SLOTS);
        Table {
            slots: (0..slots).map(|_| Slot::default()).collect(),
            shift: 64 - slots.trailing_zeros(),
        }
    }

    /// Asks the CPU for the first slot [`Table::probe`] visits for `mix`.
    fn prefetch(&self, mix: u64) {
        let first = (mix >> self.shift) as usize;
        if let Some(slot) = self.slots.get(first..=first) {
            platform::prefetch(slot);
        }
    }

    /// Slot indices in probe order for `hash`, all of them once.
    fn probe(&self, mix: u64) -> impl Iterator<Item = &Slot> {
        let mask = self.slots.len() - 1;
        let first = (mix >> self.shift) as usize;
        (0..self.slots.len()).map(move |i| &self.slots[(first + i) & mask])
    }
}

/// The smallest table: a store written now and then reserves 1 KiB.
const MIN_SLOTS: usize = 64;

/// Keys written since the last checkpoint, newest record per key; see the module docs.
pub(crate) struct Overlay {
    table: ArcSwap<Table>,
    /// Slots used, counted by the writer.
    len: AtomicUsize,
    /// Odd, random per overlay: a hash's slot is the top bits of `hash * seed`, so keys chosen to
    /// share slots in one store (cheap to find for any fixed position function) share none here.
    seed: u64,
    /// One writer at a time; readers never take it.
    writer: Mutex<()>,
    /// Damaged records whose key a replay told for certain, by offset: key and location as the
    /// replay found them. Readers take the lock only for a slot flagged [`NAMED`].
    named: RwLock<HashMap<u64, (Box<str>, Loc)>>,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay").field("len", &self.len()).finish()
    }
}

impl Default for Overlay {
    fn default() -> Overlay {
        Overlay::with_capacity(0)
    }
}

impl Overlay {
    /// An empty overlay.
    pub(crate) fn new() -> Overlay {
        Overlay::default()
    }

    /// An empty overlay with room for `records` entries before it regrows.
    pub(crate) fn with_capacity(records: usize) -> Overlay {
        Overlay {
            table: ArcSwap::from_pointee(Table::new(records.saturating_mul(4) / 3 + 1)),
            len: AtomicUsize::new(0),
            seed: rand::random::<u64>() | 1,
            writer: Mutex::new(()),
            named: RwLock::default(),
        }
    }

    /// Entries held (one per key, plus any damaged record kept beside a later one of its hash).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether nothing is held.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn mix(&self, hash: u64) -> u64 {
        hash.wrapping_mul(self.seed)
    }

    /// The newest entry of `key` (whose [`crate::engine::index::hash_key`] is `hash`), reading
    /// keys from `segment`, the caller's map of the segment.
    pub(crate) fn get(&self, key: &str, hash: u64, segment: &[u8]) -> Found {
        if self.is_empty() {
            return Found::Absent;
        }
        let table = self.table.load();
        let mut unknown = None;
        let mut newest: Option<Entry> = None;
        for slot in table.probe(self.mix(hash)) {
            let h = slot.hash.load(Ordering::Acquire);
            if h == 0 {
                break;
            }
            if h != hash {
                continue;
            }
            let word = slot.word.load(Ordering::Acquire);
            match self.identify(segment, key, word) {
                // One slot per key is the rule; should there ever be two, the newest record
                // wins, as in a run.
                Some(Match::Key(e)) if newest.is_none_or(|n| n.offset() < e.offset()) => {
                    newest = Some(e)
                }
                Some(Match::Key(_) | Match::Other) => {}
                Some(Match::Unknown(e)) => unknown = unknown.or(Some(e)),
                None => return Found::Past,
            }
        }
        match newest.or(unknown) {
            Some(e) => Found::Entry(e),
            None => Found::Absent,
        }
    }

    /// Asks the CPU for the slot a lookup or insert of `hash` probes first.
    pub(crate) fn prefetch(&self, hash: u64) {
        self.table.load().prefetch(self.mix(hash));
    }

    /// The writer's handle: inserts go through it, one writer at a time.
    pub(crate) fn writer(&self) -> OverlayWriter<'_> {
        let lock = self.writer.lock();
        OverlayWriter {
            overlay: self,
            table: self.table.load_full(),
            _lock: lock,
        }
    }

    /// Calls `f` with every entry's hash and word, in no order.
    fn for_each(&self, mut f: impl FnMut(u64, u64)) {
        let table = self.table.load();
        for slot in table.slots.iter() {
            let h = slot.hash.load(Ordering::Acquire);
            if h != 0 {
                f(h, slot.word.load(Ordering::Acquire));
            }
        }
    }

    /// The overlay as the entries of a run: `(hash, word)` sorted.
    pub(crate) fn run_entries(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::with_capacity(self.len());
        self.for_each(|h, w| out.push((h, w & !NAMED)));
        out.sort_unstable();
        out
    }

    /// Every entry, read from `segment`: each known key's newest, and the hash and location of
    /// those whose record cannot say its key. `None` if one names a record past `segment`.
    pub(crate) fn list(&self, segment: &[u8]) -> Option<Listing> {
        let mut keyed: HashMap<Box<str>, Entry> = HashMap::with_capacity(self.len());
        let mut unknown = Vec::new();
        let mut past = false;
        self.for_each(|hash, word| {
            let offset = word & OFFSET_MASK;
            let (key, entry) = if word & NAMED != 0 {
                match self.named.read().get(&offset) {
                    Some((k, loc)) => (k.clone(), Entry::Put(*loc)),
                    // Never: a name is kept before its slot is published.
                    None => return unknown.push((hash, bare(offset))),
                }
            } else {
                match key_of(segment, offset) {
                    KeyOf::Key(k, loc) => match std::str::from_utf8(k) {
                        // Key bytes that do not give the slot's hash were damaged after the
                        // record was published: its key is not known.
                        Ok(k) if index::hash_key(k) == hash => {
                            (Box::from(k), Entry::from_word(word, loc))
                        }
                        _ => return unknown.push((hash, loc)),
                    },
                    KeyOf::Damaged(loc) => return unknown.push((hash, loc)),
                    KeyOf::Past => {
                        past = true;
                        return;
                    }
                }
            };
            // One slot per key is the rule; should there ever be two, the newest record wins.
            match keyed.entry(key) {
                hash_map::Entry::Vacant(v) => {
                    v.insert(entry);
                }
                hash_map::Entry::Occupied(mut o) if o.get().offset() < entry.offset() => {
                    o.insert(entry);
                }
                hash_map::Entry::Occupied(_) => {}
            }
        });
        (!past).then_some(Listing { keyed, unknown })
    }

    /// Whose record a slot names, as far as `key` is concerned; `None` if it lies past `segment`.
    fn identify(&self, segment: &[u8], key: &str, word: u64) -> Option<Match> {
        if word & NAMED != 0 {
            return Some(match self.named.read().get(&(word & OFFSET_MASK)) {
                Some((k, loc)) if **k == *key => Match::Key(Entry::Put(*loc)),
                Some(_) => Match::Other,
                None => Match::Unknown(Entry::Put(bare(word & OFFSET_MASK))),
            });
        }
        Some(match key_of(segment, word & OFFSET_MASK) {
            KeyOf::Past => return None,
            KeyOf::Key(k, loc) if k == key.as_bytes() => Match::Key(Entry::from_word(word, loc)),
            KeyOf::Key(_, loc) if !record_intact(segment, loc) => Match::Unknown(Entry::Put(loc)),
            KeyOf::Key(_, _) => Match::Other,
            KeyOf::Damaged(loc) => Match::Unknown(Entry::Put(loc)),
        })
    }
}

/// The overlay's entries as [`Overlay::list`] read them (what `keys()` and `iter()` see).
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Each known key's newest entry.
    pub keyed: HashMap<Box<str>, Entry>,
    /// Entries whose record cannot say its key (its header fails), with their hash: an indexed
    /// record of the same hash may be an older record of that key.
    pub unknown: Vec<(u64, Loc)>,
}

impl Listing {
    /// Whether an indexed record of `key` is older than an overlay entry (or may be).
    pub(crate) fn shadows(&self, key: &str) -> bool {
        self.keyed.contains_key(key)
            || (!self.unknown.is_empty() && {
                let hash = index::hash_key(key);
                self.unknown.iter().any(|(h, _)| *h == hash)
            })
    }

    /// Whether the overlay held nothing.
    #[cfg(feature = "remote")]
    pub(crate) fn is_empty(&self) -> bool {
        self.keyed.is_empty() && self.unknown.is_empty()
    }
}

/// The overlay's single writer; see [`Overlay::writer`].
pub(crate) struct OverlayWriter<'a> {
    overlay: &'a Overlay,
    /// The published table (only this writer replaces it).
    table: Arc<Table>,
    _lock: MutexGuard<'a, ()>,
}

impl OverlayWriter<'_> {
    /// Makes `entry` the newest record of `key` (hash `hash`; its record is in `segment`) and
    /// returns the entry it replaces, if the overlay had one for the key.
    ///
    /// A slot whose record cannot prove it holds another key (damaged, or past `segment`) is kept
    /// and the entry goes into a slot of its own; that slot is returned as the one replaced, as a
    /// lookup would have handed it out.
    pub(crate) fn insert(
        &mut self,
        key: &str,
        hash: u64,
        entry: Entry,
        segment: &[u8],
    ) -> Option<Entry> {
        self.insert_word(key, hash, entry.word(), segment)
    }

    /// Makes the damaged record at `loc`, which a replay found to be `key`'s, its newest record,
    /// as [`OverlayWriter::insert`] does; the key is kept, since the record cannot say it.
    pub(crate) fn insert_damaged(
        &mut self,
        key: &str,
        hash: u64,
        loc: Loc,
        segment: &[u8],
    ) -> Option<Entry> {
        self.overlay
            .named
            .write()
            .insert(loc.offset, (key.into(), loc));
        self.insert_word(key, hash, loc.offset | NAMED, segment)
    }

    /// Asks the CPU for the slot a later insert of `hash` will probe first (a bulk load of new
    /// keys misses the cache once a key there).
    pub(crate) fn prefetch(&self, hash: u64) {
        self.table.prefetch(self.overlay.mix(hash));
    }

    fn insert_word(&mut self, key: &str, hash: u64, word: u64, segment: &[u8]) -> Option<Entry> {
        let o = self.overlay;
        if (o.len() + 1) * 4 > self.table.slots.len() * 3 {
            self.grow();
        }
        let table = &self.table;
        let mut unknown = None;
        for slot in table.probe(o.mix(hash)) {
            let h = slot.hash.load(Ordering::Relaxed);
            if h == 0 {
                slot.word.store(word, Ordering::Relaxed);
                slot.hash.store(hash, Ordering::Release);
                o.len.fetch_add(1, Ordering::Relaxed);
                return unknown;
            }
            if h != hash {
                continue;
            }
            let old = slot.word.load(Ordering::Relaxed);
            match o.identify(segment, key, old) {
                Some(Match::Key(e)) => {
                    slot.word.store(word, Ordering::Release);
                    return Some(e);
                }
                Some(Match::Unknown(e)) => unknown = unknown.or(Some(e)),
                Some(Match::Other) => {}
                // The writer's map covers every record it published; a slot past it is treated
                // as damage (kept, the key's entry beside it).
                None => unknown = unknown.or(Some(Entry::Put(bare(old & OFFSET_MASK)))),
            }
        }
        // The table is never full: it grows at three quarters.
        unreachable_full()
    }

    /// Copies every slot into a table twice the size and publishes it.
    fn grow(&mut self) {
        let o = self.overlay;
        let table = Table::new(self.table.slots.len() * 2);
        for slot in self.table.slots.iter() {
            let h = slot.hash.load(Ordering::Relaxed);
            if h == 0 {
                continue;
            }
            let to = table
                .probe(o.mix(h))
                .find(|s| s.hash.load(Ordering::Relaxed) == 0)
                .unwrap_or_else(|| unreachable_full());
            to.word
                .store(slot.word.load(Ordering::Relaxed), Ordering::Relaxed);
            to.hash.store(h, Ordering::Relaxed);
        }
        let table = Arc::new(table);
        // Published whole: a reader sees either table complete.
        o.table.store(table.clone());
        self.table = table;
    }
}

/// The location of a record known only by its offset (its length and crc unknown): a read of
/// it reports damage.
fn bare(offset: u64) -> Loc {
    Loc {
        offset,
        len: 0,
        crc: 0,
    }
}

#[cold]
fn unreachable_full() -> ! {
    unreachable!("the overlay grows before it is three quarters full")
}

/// Whose record a slot names, as far as `key` is concerned.
enum Match {
    /// `key`'s intact header: this is its entry.
    Key(Entry),
    /// A record that may be `key`'s but cannot say (header or, with other key bytes, record
    /// damaged): handed out as a put so the read reports the damage.
    Unknown(Entry),
    /// An intact record of another key under the same hash.
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::index::hash_key;
    use crate::engine::record::{Batch, Encoded, Kind};

    /// A segment of puts: 32 bytes of header, then one record per key. Returns the segment and
    /// each record's location.
    fn segment(keys: &[&str]) -> (Vec<u8>, Vec<Loc>) {
        let mut seg = vec![0u8; 32];
        let mut locs = Vec::new();
        for k in keys {
            let e = Encoded::new(Kind::Put, 0, k.as_bytes(), b"value", Batch::ALONE);
            let offset = seg.len() as u64;
            seg.extend_from_slice(&e.head);
            seg.extend_from_slice(b"value");
            locs.push(Loc {
                offset,
                len: seg.len() as u64 - offset,
                crc: e.crc,
            });
        }
        (seg, locs)
    }

    #[test]
    fn finds_every_key_through_growth_and_replaces_in_place() {
        let keys: Vec<String> = (0..5_000).map(|i| format!("key{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (seg, locs) = segment(&refs);
        let o = Overlay::new();
        let mut w = o.writer();
        for (k, loc) in refs.iter().zip(&locs) {
            assert_eq!(w.insert(k, hash_key(k), Entry::Put(*loc), &seg), None);
        }
        // Written again: the same slot, the old entry returned.
        assert_eq!(
            w.insert(
                refs[7],
                hash_key(refs[7]),
                Entry::Tombstone(locs[7].offset),
                &seg
            ),
            Some(Entry::Put(locs[7]))
        );
        drop(w);
        assert_eq!(o.len(), keys.len());
        for (i, (k, loc)) in refs.iter().zip(&locs).enumerate() {
            let want = if i == 7 {
                Entry::Tombstone(loc.offset)
            } else {
                Entry::Put(*loc)
            };
            assert_eq!(o.get(k, hash_key(k), &seg), Found::Entry(want), "{k}");
        }
        assert_eq!(o.get("absent", hash_key("absent"), &seg), Found::Absent);
        let run = o.run_entries();
        assert_eq!(run.len(), keys.len());
        assert!(run.windows(2).all(|p| p[0] < p[1]));
        assert!(run.contains(&(hash_key(refs[7]), locs[7].offset | TOMBSTONE)));
        assert_eq!(o.list(&seg).map(|l| l.keyed.len()), Some(keys.len()));
    }

    #[test]
    fn keys_sharing_a_hash_are_told_apart_by_their_records() {
        let (seg, locs) = segment(&["a", "b", "a2"]);
        let o = Overlay::new();
        let mut w = o.writer();
        // Forced to one hash: only the records can tell the keys apart.
        assert_eq!(w.insert("a", 99, Entry::Put(locs[0]), &seg), None);
        assert_eq!(w.insert("b", 99, Entry::Put(locs[1]), &seg), None);
        drop(w);
        assert_eq!(o.get("a", 99, &seg), Found::Entry(Entry::Put(locs[0])));
        assert_eq!(o.get("b", 99, &seg), Found::Entry(Entry::Put(locs[1])));
        assert_eq!(o.get("c", 99, &seg), Found::Absent);
        assert_eq!(o.len(), 2);
    }

    #[test]
    fn a_record_damaged_after_publishing_is_handed_out_and_never_replaced() {
        let (mut seg, locs) = segment(&["a", "b"]);
        // "a" filed under "b"'s hash: as if its key bytes had been "b"'s.
        let h = hash_key("b");
        let o = Overlay::new();
        let mut w = o.writer();
        w.insert("a", h, Entry::Put(locs[0]), &seg);
        // "a"'s value fails its checksum: its key bytes may be "b"'s, flipped.
        seg[locs[0].offset as usize + 1] ^= 0x40;
        assert!(
            matches!(o.get("b", h, &seg), Found::Entry(Entry::Put(l)) if l.offset == locs[0].offset)
        );
        seg[locs[0].offset as usize + 1] ^= 0x40;
        assert_eq!(o.get("b", h, &seg), Found::Absent);
        // "a"'s header fails now (a length flipped): it may be any key of its hash.
        seg[locs[0].offset as usize + 20] ^= 0x40;
        assert!(
            matches!(o.get("b", h, &seg), Found::Entry(Entry::Put(l)) if l.offset == locs[0].offset)
        );
        // "b" goes beside it, and wins over it once there.
        assert!(w.insert("b", h, Entry::Put(locs[1]), &seg).is_some());
        drop(w);
        assert_eq!(o.get("b", h, &seg), Found::Entry(Entry::Put(locs[1])));
        assert_eq!(o.len(), 2);
        let listing = o.list(&seg).expect("within the segment");
        assert_eq!(listing.unknown.len(), 1);
        assert_eq!(listing.keyed.len(), 1);
    }

    #[test]
    fn a_named_damaged_record_maps_its_key_until_written_again() {
        let (mut seg, locs) = segment(&["a", "a"]);
        seg[locs[0].offset as usize + 20] ^= 0x40;
        let o = Overlay::new();
        let mut w = o.writer();
        assert_eq!(w.insert_damaged("a", hash_key("a"), locs[0], &seg), None);
        assert_eq!(
            o.get("a", hash_key("a"), &seg),
            Found::Entry(Entry::Put(locs[0]))
        );
        assert_eq!(
            o.list(&seg)
                .map(|l| l.keyed.into_iter().collect::<Vec<_>>()),
            Some(vec![(Box::from("a"), Entry::Put(locs[0]))])
        );
        // Written again (a repair deletes it): the damaged entry is replaced, not kept beside.
        assert_eq!(
            w.insert("a", hash_key("a"), Entry::Tombstone(locs[1].offset), &seg),
            Some(Entry::Put(locs[0]))
        );
        drop(w);
        assert_eq!(o.len(), 1);
        assert_eq!(
            o.run_entries(),
            vec![(hash_key("a"), locs[1].offset | TOMBSTONE)]
        );
    }

    #[test]
    fn two_slots_of_one_key_serve_the_newest_record() {
        let (seg, locs) = segment(&["a", "a"]);
        let o = Overlay::new();
        let mut w = o.writer();
        w.insert("a", hash_key("a"), Entry::Put(locs[0]), &seg);
        // A map that ends before the first record cannot tell its key: the second goes beside.
        let short = &seg[..locs[0].offset as usize];
        w.insert("a", hash_key("a"), Entry::Put(locs[1]), short);
        drop(w);
        assert_eq!(o.len(), 2);
        assert_eq!(
            o.get("a", hash_key("a"), &seg),
            Found::Entry(Entry::Put(locs[1]))
        );
        let listing = o.list(&seg).expect("within the segment");
        assert_eq!(listing.keyed.get("a"), Some(&Entry::Put(locs[1])));
    }

    #[test]
    fn an_entry_past_the_readers_map_asks_for_a_new_map() {
        let (seg, locs) = segment(&["a", "b"]);
        let o = Overlay::new();
        o.writer()
            .insert("b", hash_key("b"), Entry::Put(locs[1]), &seg);
        let old_map = &seg[..locs[1].offset as usize];
        assert_eq!(o.get("b", hash_key("b"), old_map), Found::Past);
        assert_eq!(o.list(old_map).map(|l| l.keyed.len()), None);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 64,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x0ce7_1a75),
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Against a map of each key's newest record, under a hash so coarse that most keys
        /// share one with others (only the records tell them apart), through several growths.
        #[test]
        fn agrees_with_a_map_of_newest_records(
            ops in proptest::collection::vec((0usize..300, proptest::bool::ANY), 1..2_000)
        ) {
            let keys: Vec<String> = (0..300).map(|i| format!("key-{i}")).collect();
            // Every op appends one record; its key is `ops[i].0`.
            let refs: Vec<&str> = ops.iter().map(|(k, _)| keys[*k].as_str()).collect();
            let (seg, locs) = segment(&refs);
            let coarse = |k: usize| 2 + (k % 5) as u64;
            let o = Overlay::new();
            let mut model = std::collections::HashMap::new();
            let mut w = o.writer();
            for (((k, delete), loc), key) in ops.iter().zip(&locs).zip(&refs) {
                let entry = if *delete { Entry::Tombstone(loc.offset) } else { Entry::Put(*loc) };
                let old = w.insert(key, coarse(*k), entry, &seg);
                proptest::prop_assert_eq!(old, model.insert(*k, entry));
            }
            drop(w);
            proptest::prop_assert_eq!(o.len(), model.len());
            for (k, key) in keys.iter().enumerate() {
                let want = model.get(&k).map_or(Found::Absent, |e| Found::Entry(*e));
                proptest::prop_assert_eq!(o.get(key, coarse(k), &seg), want);
            }
        }
    }

    #[test]
    fn readers_find_every_acknowledged_key_while_the_table_grows() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("k{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (seg, locs) = segment(&refs);
        let o = Overlay::new();
        let acked = AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut w = o.writer();
                for (i, (k, loc)) in refs.iter().zip(&locs).enumerate() {
                    w.insert(k, hash_key(k), Entry::Put(*loc), &seg);
                    acked.store(i + 1, Ordering::Release);
                }
            });
            s.spawn(|| {
                let mut checked = 0;
                while checked < refs.len() {
                    let n = acked.load(Ordering::Acquire);
                    // Every key acknowledged so far, newest and oldest, is found.
                    for i in [n.saturating_sub(1), n / 2, 0] {
                        if i < n {
                            let k = refs[i];
                            assert_eq!(
                                o.get(k, hash_key(k), &seg),
                                Found::Entry(Entry::Put(locs[i])),
                                "{k}"
                            );
                        }
                    }
                    checked = checked.max(n);
                    std::hint::spin_loop();
                }
            });
        });
        assert_eq!(o.len(), refs.len());
    }
}
