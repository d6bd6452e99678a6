//! `ops_model`: operation sequences against a `BTreeMap` model, with crashes, cuts and bit flips.
//!
//! Input: one configuration byte (checkpoint interval), then operations, each an opcode byte and
//! its arguments (see [`Op::decode`]; [`Op::encode`] writes the same bytes, for seed corpora).
//!
//! The store is opened with `Durability::Fsync`. Every record the store appends is tracked with
//! its offsets and the model state after it (the *history*), so that:
//!
//! * after every operation the store equals the model (`keys`, `len`, `get` of every key);
//! * **cut**: the writer is abandoned (as if the process died) and the segment is truncated at an
//!   arbitrary byte at or after its header. Reopened (read-only first, then read-write), the store
//!   must equal the state after the last record that lies wholly before the cut: format-spec says
//!   a partial last record is a torn tail and is dropped, and everything before it is intact. This
//!   is the exact form of "equals the state after some prefix of the history";
//! * **flip**: the writer is abandoned and one byte of the segment (or of the index) is XORed
//!   with a non-zero mask. `verify` must report the damage (a damaged record or a torn tail)
//!   whenever the byte lies inside a record. Then each open (read-only, read-write) may fail with
//!   a typed error; when it succeeds, `get` of every key returns the model's bytes or an error,
//!   never other bytes, and a key never silently vanishes or appears: `Ok(None)` only for keys the
//!   model does not hold. The one exception format-spec makes: a flip inside the **last append**
//!   (the records chained by the `CONTINUES`/`FOLLOWS` flags at the end, e.g. a `set_many`
//!   batch) is indistinguishable from a torn write, so recovery may cut it off there and the
//!   store may then equal the state before the damaged record instead. `keys()` may fail; when it succeeds it lists
//!   only keys of those states. A flip ends the run (the store is damaged).
//! * **refresh**: a read-only handle, opened once and refreshed, equals the model after refresh;
//! * **compact**: the store equals the model; the history is rebuilt for the new segment's record
//!   order (live records in the order of their last writes), so later cuts are checked exactly.

use std::path::Path;

use squirrel_store::{Config, Engine, Error};

use crate::common::{
    Input, Model, all_keys, assert_equals, file_len, flip_byte, key, open_rw, record_len,
    set_file_len, short, tempdir, try_open_rw, value, value_len,
};
use crate::known::known;

/// Operations. Keys are numbers into [`crate::common::key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `set(key, value)`; the value is `len` bytes made by [`crate::common::value`] from `fill`.
    Set { key: u8, len: usize, fill: u8 },
    /// `delete(key)`.
    Delete { key: u8 },
    /// `get(key)`, compared with the model.
    Get { key: u8 },
    /// `sync()`.
    Sync,
    /// `checkpoint()`.
    Checkpoint,
    /// Close cleanly and open again.
    Reopen,
    /// Refresh the read-only handle (opening it the first time).
    Refresh,
    /// `set_many` of several `(key, len, fill)`.
    SetMany(Vec<(u8, usize, u8)>),
    /// `compact()`.
    Compact,
    /// Abandon, then cut the segment. `within_data`: at `32 + pos % (segment_len - 31)`, else
    /// anywhere from 32 to the file's length (preallocated zeros included).
    Cut { within_data: bool, pos: u32 },
    /// Abandon, then XOR one byte: `target` 0 = a byte of the records, 1 = any byte of the segment
    /// file, 2 = any byte of the index file.
    Flip { target: u8, pos: u32, mask: u8 },
    /// Drop the read-only handle.
    DropReader,
}

/// At most this many operations per input, so one input stays fast.
const MAX_OPS: usize = 64;

impl Op {
    /// Decodes one operation.
    pub fn decode(input: &mut Input<'_>, large_left: &mut u32) -> Op {
        match input.u8() % 16 {
            0..=3 => Op::Set {
                key: input.u8(),
                len: value_len(input, large_left),
                fill: input.u8(),
            },
            4 => Op::Delete { key: input.u8() },
            5 => Op::Get { key: input.u8() },
            6 => Op::Sync,
            7 => Op::Checkpoint,
            8 => Op::Reopen,
            9 => Op::Refresh,
            10 => {
                let n = input.u8() % 4 + 1;
                Op::SetMany(
                    (0..n)
                        .map(|_| (input.u8(), value_len(input, large_left), input.u8()))
                        .collect(),
                )
            }
            11 => Op::Compact,
            12 => Op::Cut {
                within_data: !input.u8().is_multiple_of(4),
                pos: input.u32(),
            },
            13 => Op::Flip {
                target: input.u8(),
                pos: input.u32(),
                mask: input.u8(),
            },
            14 => Op::DropReader,
            _ => Op::Get { key: input.u8() },
        }
    }

    /// Appends the bytes [`Op::decode`] reads back as `self` (values shorter than 200 bytes).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len_byte = |len: usize| u8::try_from(len.min(199)).unwrap_or(199);
        match self {
            Op::Set { key, len, fill } => out.extend([0, *key, len_byte(*len), *fill]),
            Op::Delete { key } => out.extend([4, *key]),
            Op::Get { key } => out.extend([5, *key]),
            Op::Sync => out.push(6),
            Op::Checkpoint => out.push(7),
            Op::Reopen => out.push(8),
            Op::Refresh => out.push(9),
            Op::SetMany(items) => {
                out.extend([10, (items.len() as u8).wrapping_sub(1)]);
                for (k, len, fill) in items {
                    out.extend([*k, len_byte(*len), *fill]);
                }
            }
            Op::Compact => out.push(11),
            Op::Cut { within_data, pos } => {
                out.extend([12, u8::from(*within_data)]);
                out.extend(pos.to_le_bytes());
            }
            Op::Flip { target, pos, mask } => {
                out.extend([13, *target]);
                out.extend(pos.to_le_bytes());
                out.push(*mask);
            }
            Op::DropReader => out.push(14),
        }
    }
}

/// One record of the current segment.
#[derive(Debug, Clone)]
struct Rec {
    start: u64,
    end: u64,
    key: String,
    /// format-spec's record flags: `CONTINUES` (the next record is of the same append) and
    /// `FOLLOWS` (the previous one is).
    continues: bool,
    follows: bool,
}

/// The model and where each of its states ends in the segment.
struct History {
    /// `states[0]` is the empty store at offset 32; `states[i]` is the state after record `i - 1`.
    states: Vec<(u64, Model)>,
    /// The records of the segment, in order.
    records: Vec<Rec>,
}

impl History {
    fn new() -> Self {
        History {
            states: vec![(32, Model::new())],
            records: Vec::new(),
        }
    }

    fn model(&self) -> &Model {
        &self.states.last().expect("never empty").1
    }

    fn end(&self) -> u64 {
        self.states.last().expect("never empty").0
    }

    /// Records a put (`Some(value)`) or a tombstone of `key`, a lone append.
    fn push(&mut self, key: &str, value: Option<Vec<u8>>) {
        self.push_flagged(key, value, (false, false));
    }

    /// Records a put or tombstone with its `(CONTINUES, FOLLOWS)` flags.
    fn push_flagged(&mut self, key: &str, value: Option<Vec<u8>>, flags: (bool, bool)) {
        let start = self.end();
        let end = start + record_len(key, value.as_ref().map_or(0, Vec::len));
        let mut m = self.model().clone();
        match value {
            Some(v) => {
                m.insert(key.to_owned(), v);
            }
            None => {
                m.remove(key);
            }
        }
        self.records.push(Rec {
            start,
            end,
            key: key.to_owned(),
            continues: flags.0,
            follows: flags.1,
        });
        self.states.push((end, m));
    }

    /// After a cut at `cut`: keeps the records wholly before it and the states they make.
    fn cut(&mut self, cut: u64) {
        let keep = self.records.iter().take_while(|r| r.end <= cut).count();
        self.records.truncate(keep);
        self.states.truncate(keep + 1);
    }

    /// After a compaction: the live records, in the order of their records in the old segment
    /// (compaction copies them sorted by offset).
    fn compacted(&mut self) {
        let model = self.model().clone();
        let last_record = |k: &str| self.records.iter().rposition(|r| r.key == k);
        // Records are copied verbatim: their flags too.
        let flags = |at: Option<usize>| {
            at.map_or((false, false), |i| {
                let r = &self.records[i];
                (r.continues, r.follows)
            })
        };
        type Live = (Option<usize>, (bool, bool), String, Vec<u8>);
        let mut live: Vec<Live> = model
            .into_iter()
            .map(|(k, v)| {
                let at = last_record(&k);
                (at, flags(at), k, v)
            })
            .collect();
        live.sort_by_key(|(at, _, _, _)| *at);
        *self = History::new();
        for (_, f, k, v) in live {
            self.push_flagged(&k, Some(v), f);
        }
    }

    /// The first record of the last append as recovery sees it: the longest run of records at
    /// the end chained by `CONTINUES` -> `FOLLOWS`.
    fn final_append_start(&self) -> usize {
        let mut s = self.records.len().saturating_sub(1);
        while s > 0 && self.records[s - 1].continues && self.records[s].follows {
            s -= 1;
        }
        s
    }
}

struct Store<'a> {
    dir: &'a Path,
    ckpt_records: usize,
    ckpt_bytes: u64,
}

impl Store<'_> {
    fn open(&self) -> Engine {
        open_rw(self.dir, self.ckpt_records, self.ckpt_bytes)
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let config = input.u8();
    let store_dir = tempdir();
    let store = Store {
        dir: store_dir.path(),
        ckpt_records: usize::from(config % 16) + 1,
        ckpt_bytes: if config & 0x10 != 0 { 512 } else { 1 << 20 },
    };
    let mut db = Some(store.open());
    let mut reader: Option<Engine> = None;
    let mut h = History::new();
    let mut large_left = 3u32;
    let mut write_seq = 0u32;
    for step in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = Op::decode(&mut input, &mut large_left);
        let what = format!("step {step}: {op:?}");
        if crate::common::tracing() {
            eprintln!("{what} (segment_len {})", h.end());
        }
        let w = db.as_ref().expect("writer open");
        match op {
            Op::Set { key: k, len, fill } => {
                let k = key(k);
                write_seq += 1;
                let v = value(write_seq, len, fill);
                w.set(&k, &v).unwrap_or_else(|e| panic!("{what}: set: {e}"));
                h.push(&k, Some(v));
            }
            Op::Delete { key: k } => {
                let k = key(k);
                let existed = w
                    .delete(&k)
                    .unwrap_or_else(|e| panic!("{what}: delete: {e}"));
                assert_eq!(
                    existed,
                    h.model().contains_key(&k),
                    "{what}: delete's answer"
                );
                if existed {
                    h.push(&k, None);
                }
            }
            Op::Get { key: k } => {
                let k = key(k);
                let got = w.get(&k).unwrap_or_else(|e| panic!("{what}: get: {e}"));
                assert_eq!(
                    got.as_deref(),
                    h.model().get(&k).map(Vec::as_slice),
                    "{what}: get({})",
                    short(&k)
                );
            }
            Op::Sync => w.sync().unwrap_or_else(|e| panic!("{what}: sync: {e}")),
            Op::Checkpoint => w
                .checkpoint()
                .unwrap_or_else(|e| panic!("{what}: checkpoint: {e}")),
            Op::Reopen => {
                db.take()
                    .expect("writer")
                    .close()
                    .unwrap_or_else(|e| panic!("{what}: close: {e}"));
                db = Some(store.open());
            }
            Op::Refresh => {
                let r = match reader.take() {
                    Some(r) => {
                        r.refresh()
                            .unwrap_or_else(|e| panic!("{what}: refresh: {e}"));
                        r
                    }
                    None => Config::new(store.dir)
                        .read_only(true)
                        .open()
                        .unwrap_or_else(|e| panic!("{what}: open read-only: {e}")),
                };
                assert_equals(&r, h.model(), &format!("{what}: read-only handle"));
                reader = Some(r);
            }
            Op::SetMany(items) => {
                let items: Vec<(String, Vec<u8>)> = items
                    .into_iter()
                    .map(|(k, len, fill)| {
                        write_seq += 1;
                        (key(k), value(write_seq, len, fill))
                    })
                    .collect();
                w.set_many(items.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                    .unwrap_or_else(|e| panic!("{what}: set_many: {e}"));
                let n = items.len();
                for (i, (k, v)) in items.into_iter().enumerate() {
                    h.push_flagged(&k, Some(v), (i + 1 < n, i > 0));
                }
            }
            Op::Compact => {
                w.compact()
                    .unwrap_or_else(|e| panic!("{what}: compact: {e}"));
                h.compacted();
            }
            Op::DropReader => reader = None,
            Op::Cut { within_data, pos } => {
                // A mapping must not outlive the bytes behind it (the engine's documented
                // contract), so no handle stays open across the cut.
                reader = None;
                db.take().expect("writer").abandon();
                let seg = store.dir.join("segment.sqs");
                let hi = if within_data { h.end() } else { file_len(&seg) };
                let cut = 32 + u64::from(pos) % (hi.saturating_sub(32) + 1);
                set_file_len(&seg, cut);
                h.cut(cut);
                let ro = Config::new(store.dir)
                    .read_only(true)
                    .open()
                    .unwrap_or_else(|e| panic!("{what}: read-only open after a cut at {cut}: {e}"));
                assert_equals(
                    &ro,
                    h.model(),
                    &format!("{what}: read-only after cut at {cut}"),
                );
                drop(ro);
                let w = try_open_rw(store.dir, store.ckpt_records, store.ckpt_bytes)
                    .unwrap_or_else(|e| panic!("{what}: open after a cut at {cut}: {e}"));
                assert_equals(&w, h.model(), &format!("{what}: after cut at {cut}"));
                assert_eq!(
                    w.stats().segment_len,
                    h.end(),
                    "{what}: segment_len after cut"
                );
                db = Some(w);
            }
            Op::Flip { target, pos, mask } => {
                drop(reader.take());
                db.take().expect("writer").abandon();
                flip(store.dir, &h, target, pos, mask, &what);
                return;
            }
        }
        if let Some(w) = &db {
            assert_eq!(w.stats().segment_len, h.end(), "{what}: segment_len");
            assert_equals(w, h.model(), &what);
        }
    }
    // A clean close and reopen, then a read-only open: all equal the model.
    db.take().expect("writer").close().expect("final close");
    drop(reader);
    let w = store.open();
    assert_equals(&w, h.model(), "final reopen");
    drop(w);
    let ro = Config::new(store.dir)
        .read_only(true)
        .open()
        .expect("final read-only open");
    assert_equals(&ro, h.model(), "final read-only open");
}

/// Flips one byte and checks what each kind of open then serves.
fn flip(dir: &Path, h: &History, target: u8, pos: u32, mask: u8, what: &str) {
    let mask = if mask == 0 { 1 } else { mask };
    let seg = dir.join("segment.sqs");
    let idx = dir.join("index.sqi");
    let (path, at) = match target % 3 {
        0 if h.end() > 32 => (&seg, 32 + u64::from(pos) % (h.end() - 32)),
        0 | 1 => (&seg, u64::from(pos) % file_len(&seg).max(1)),
        _ => {
            let n = file_len(&idx);
            if n == 0 {
                return;
            }
            (&idx, u64::from(pos) % n)
        }
    };
    flip_byte(path, at, mask);
    if crate::common::tracing() {
        eprintln!(
            "flip {} byte {at} ^ {mask:#04x}; records {:?}",
            path.display(),
            h.records
        );
    }
    let in_segment = path == &seg;
    // Which record the byte is in, if any.
    let hit = if in_segment {
        h.records.iter().position(|r| r.start <= at && at < r.end)
    } else {
        None
    };
    // format-spec: damage inside the last append cannot be told from a torn write; it is cut
    // off like one, keeping that append's records before the damaged one.
    let hit_last = hit.is_some_and(|r| r >= h.final_append_start());
    let what = format!(
        "{what}: flipped byte {at} of {} with {mask:#04x} (record {hit:?} of {})",
        if in_segment {
            "the segment"
        } else {
            "the index"
        },
        h.records.len()
    );
    if let Some(r) = hit {
        let report = squirrel_store::verify(dir, &mut |_, _| {})
            .unwrap_or_else(|e| panic!("{what}: verify: {e}"));
        assert!(
            report.is_corrupt() || report.torn_tail.is_some(),
            "{what}: verify did not notice a damaged record (key {})",
            short(&h.records[r].key)
        );
    } else {
        let _ = squirrel_store::verify(dir, &mut |_, _| {});
    }
    // The known finding get-none-for-damaged-key, narrowly: the key whose record's key bytes were
    // hit, or any key after a flip in the index.
    let may_vanish = |k: &str| {
        known("get-none-for-damaged-key")
            && (!in_segment
                || hit.is_some_and(|r| {
                    let rec = &h.records[r];
                    rec.key == k && at >= rec.start + 24 && at < rec.start + 24 + k.len() as u64
                }))
    };
    // The states the store may be in: the model, or (a flip in the last record: a torn write) the
    // state before that record.
    let full = h.model();
    // The known finding torn-batch-swallows-later-append, narrowly: a damaged record that
    // continues a batch may be cut with everything after it.
    let swallowed = hit.is_some_and(|r| {
        known("torn-batch-swallows-later-append") && in_segment && h.records[r].continues
    });
    let before = match hit {
        Some(r) if hit_last || swallowed => Some(&h.states[r].1),
        _ => None,
    };
    if crate::common::tracing() {
        let idx = std::fs::read(dir.join("index.sqi")).unwrap_or_default();
        eprintln!(
            "index state {:?} covered {:?}; read-only open: {:?}",
            idx.get(12..16),
            idx.get(24..32)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default())),
            Config::new(dir).read_only(true).open().map(|e| e.stats())
        );
    }
    if let Ok(ro) = Config::new(dir).read_only(true).open() {
        check_damaged(
            &ro,
            full,
            before,
            &format!("{what}: read-only open"),
            &may_vanish,
        );
    }
    if let Ok(w) = Config::new(dir).create(false).open() {
        check_damaged(
            &w,
            full,
            before,
            &format!("{what}: read-write open"),
            &may_vanish,
        );
        // Whatever a read-write open kept must still be served the same after a clean reopen.
        if w.close().is_ok()
            && let Ok(w) = Config::new(dir).create(false).open()
        {
            check_damaged(&w, full, before, &format!("{what}: reopened"), &may_vanish);
        }
    }
}

/// What a store with one flipped byte may serve; see the module docs.
fn check_damaged(
    db: &Engine,
    full: &Model,
    before: Option<&Model>,
    what: &str,
    may_vanish: &dyn Fn(&str) -> bool,
) {
    if let Ok(keys) = db.keys() {
        for k in &keys {
            let ok = full.contains_key(k) || before.is_some_and(|b| b.contains_key(k));
            if !ok && !known("keys-lists-damaged-key") {
                panic!("{what}: keys() lists {k:?}, which is in no allowed state");
            }
        }
    }
    for k in all_keys() {
        let allowed = |v: Option<&[u8]>| {
            full.get(&k).map(Vec::as_slice) == v
                || before.is_some_and(|b| b.get(&k).map(Vec::as_slice) == v)
        };
        match db.get(&k) {
            Ok(got) => {
                let got = got.as_deref().map(<[u8]>::to_vec);
                if allowed(got.as_deref()) {
                    continue;
                }
                match got {
                    Some(v) => panic!(
                        "{what}: get({}) served {} bytes that are in no allowed state",
                        short(&k),
                        v.len()
                    ),
                    None if may_vanish(&k) => {}
                    None => panic!(
                        "{what}: get({}) says absent; the key holds {} bytes",
                        short(&k),
                        full.get(&k).map_or(0, Vec::len)
                    ),
                }
            }
            Err(Error::Corruption { .. } | Error::Io { .. }) => {}
            Err(e) => panic!(
                "{what}: get({}) failed with an unexpected error: {e}",
                short(&k)
            ),
        }
    }
}
