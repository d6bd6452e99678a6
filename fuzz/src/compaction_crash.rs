//! `compaction_crash`: a compaction stopped at a crash point, then the store reopened.
//!
//! Input: a configuration byte, the crash point byte, then operations building the store (see
//! [`Op::decode`]).
//!
//! The store is built with `Durability::Fsync` from sets, deletes, batches, checkpoints and (whole)
//! compactions; a read-only handle may be opened along the way. Then `compact_crashing_at(point)`
//! runs, for one of the five crash points or none. Then either the writer is abandoned (the
//! process died there) or, when the byte says so, the same handle goes on: it writes more keys and
//! closes (a crash point that leaves the handle usable must leave it correct, and one that poisons
//! it must refuse writes with `PreviousIo`).
//!
//! Checked: the read-only handle opened before still reads without error (its map outlives the
//! renames), and equals the model after `refresh`; reopened read-only and read-write, the store equals the
//! model, `verify` finds no damage and a consistent index, no `.compact` file survives a
//! read-write open, and a second full compaction and a reopen still give the model.

use squirrel_store::{Config, CrashPoint, Durability, Engine, Error};

use crate::common::{Input, Model, assert_equals, key, tempdir, value, value_len};

/// Operations that build the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `set(key, value)`.
    Set { key: u8, len: usize, fill: u8 },
    /// `delete(key)`.
    Delete { key: u8 },
    /// `set_many` of `(key, len, fill)`.
    SetMany(Vec<(u8, usize, u8)>),
    /// `checkpoint()`.
    Checkpoint,
    /// A whole `compact()`.
    Compact,
    /// Open the read-only handle (if not open yet).
    OpenReader,
}

impl Op {
    /// Decodes one operation.
    pub fn decode(input: &mut Input<'_>, large_left: &mut u32) -> Op {
        match input.u8() % 10 {
            0..=4 => Op::Set {
                key: input.u8(),
                len: value_len(input, large_left),
                fill: input.u8(),
            },
            5 | 6 => Op::Delete { key: input.u8() },
            7 => {
                let n = input.u8() % 4 + 1;
                Op::SetMany(
                    (0..n)
                        .map(|_| (input.u8(), value_len(input, large_left), input.u8()))
                        .collect(),
                )
            }
            8 => Op::Checkpoint,
            _ => {
                if input.u8() & 1 == 0 {
                    Op::Compact
                } else {
                    Op::OpenReader
                }
            }
        }
    }

    /// Appends the bytes [`Op::decode`] reads back as `self` (values shorter than 200 bytes).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len_byte = |len: usize| u8::try_from(len.min(199)).unwrap_or(199);
        match self {
            Op::Set { key, len, fill } => out.extend([0, *key, len_byte(*len), *fill]),
            Op::Delete { key } => out.extend([5, *key]),
            Op::SetMany(items) => {
                out.extend([7, (items.len() as u8).wrapping_sub(1)]);
                for (k, len, fill) in items {
                    out.extend([*k, len_byte(*len), *fill]);
                }
            }
            Op::Checkpoint => out.push(8),
            Op::Compact => out.extend([9, 0]),
            Op::OpenReader => out.extend([9, 1]),
        }
    }
}

/// The crash points, by the input's byte; `None` runs a whole compaction.
pub fn point(b: u8) -> Option<CrashPoint> {
    match b % 6 {
        0 => Some(CrashPoint::AfterCopy),
        1 => Some(CrashPoint::AfterSegmentSync),
        2 => Some(CrashPoint::AfterIndex),
        3 => Some(CrashPoint::BetweenRenames),
        4 => Some(CrashPoint::AfterRenames),
        _ => None,
    }
}

const MAX_OPS: usize = 48;

fn open(dir: &std::path::Path, config: u8) -> Engine {
    Config::new(dir)
        .durability(Durability::Fsync)
        .checkpoint_every(usize::from(config % 16) + 1, 1 << 20)
        .open()
        .expect("open the store")
}

/// The target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let config = input.u8();
    let crash_byte = input.u8();
    let crash = point(crash_byte);
    let go_on = crash_byte & 0x80 != 0;
    let dir = tempdir();
    let db = open(dir.path(), config);
    let mut reader: Option<Engine> = None;
    let mut model = Model::new();
    let mut seq = 0u32;
    let mut large_left = 2u32;
    for step in 0..MAX_OPS {
        if input.is_empty() {
            break;
        }
        let op = Op::decode(&mut input, &mut large_left);
        let what = format!("step {step}: {op:?}");
        match op {
            Op::Set { key: k, len, fill } => {
                seq += 1;
                let (k, v) = (key(k), value(seq, len, fill));
                db.set(&k, &v).unwrap_or_else(|e| panic!("{what}: {e}"));
                model.insert(k, v);
            }
            Op::Delete { key: k } => {
                let k = key(k);
                let was = db.delete(&k).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(was, model.remove(&k).is_some(), "{what}: delete's answer");
            }
            Op::SetMany(items) => {
                let items: Vec<(String, Vec<u8>)> = items
                    .into_iter()
                    .map(|(k, len, fill)| {
                        seq += 1;
                        (key(k), value(seq, len, fill))
                    })
                    .collect();
                db.set_many(items.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                model.extend(items);
            }
            Op::Checkpoint => db.checkpoint().unwrap_or_else(|e| panic!("{what}: {e}")),
            Op::Compact => {
                db.compact().unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_equals(&db, &model, &what);
            }
            Op::OpenReader => {
                if reader.is_none() {
                    let r = Config::new(dir.path())
                        .read_only(true)
                        .open()
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    reader = Some(r);
                }
            }
        }
    }
    let what = format!("compaction crashing at {crash:?}");
    match crash {
        Some(p) => {
            let r = db.compact_crashing_at(p);
            assert!(
                r.is_err(),
                "{what}: the crash point did not stop the compaction"
            );
        }
        None => {
            db.compact().unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
    // The handle still reads the model, whatever happened on disk.
    assert_equals(&db, &model, &format!("{what}: the compacting handle"));
    // A reader opened before keeps reading its old map (it sees new records after refresh only).
    if let Some(r) = &reader {
        for k in crate::common::all_keys() {
            let _ = r
                .get(&k)
                .expect("a reader opened before the compaction reads");
        }
    }
    if go_on {
        let poisoned = matches!(
            crash,
            Some(CrashPoint::BetweenRenames | CrashPoint::AfterRenames)
        );
        let r = db.set("a", b"after the compaction");
        if poisoned {
            assert!(
                matches!(r, Err(Error::PreviousIo { .. })),
                "{what}: a write on a handle the crash poisoned returned {r:?}"
            );
        } else {
            r.unwrap_or_else(|e| panic!("{what}: a write after the compaction: {e}"));
            model.insert("a".into(), b"after the compaction".to_vec());
            assert_equals(&db, &model, &format!("{what}: after a write"));
        }
        db.close()
            .unwrap_or_else(|e| panic!("{what}: close after the compaction: {e}"));
    } else {
        db.abandon();
    }
    if let Some(r) = reader.take() {
        r.refresh()
            .unwrap_or_else(|e| panic!("{what}: refresh of a reader opened before: {e}"));
        assert_equals(
            &r,
            &model,
            &format!("{what}: a reader opened before, refreshed"),
        );
    }
    let ro = Config::new(dir.path())
        .read_only(true)
        .open()
        .unwrap_or_else(|e| panic!("{what}: read-only open after the crash: {e}"));
    assert_equals(
        &ro,
        &model,
        &format!("{what}: read-only open after the crash"),
    );
    drop(ro);
    let db = open(dir.path(), config);
    assert_equals(
        &db,
        &model,
        &format!("{what}: read-write open after the crash"),
    );
    for name in ["segment.sqs.compact", "index.sqi.compact", "index.sqm.compact"] {
        assert!(
            !dir.path().join(name).exists(),
            "{what}: {name} survived a read-write open"
        );
    }
    db.close().expect("close");
    let report = squirrel_store::verify(dir.path(), &mut |_, _| {}).expect("verify");
    assert!(
        !report.is_corrupt() && report.index == squirrel_store::IndexCheck::Consistent,
        "{what}: verify after the crash: {report:?}"
    );
    let db = open(dir.path(), config);
    db.compact()
        .unwrap_or_else(|e| panic!("{what}: a second compaction: {e}"));
    assert_equals(&db, &model, &format!("{what}: after a second compaction"));
    let stats = db.stats();
    assert_eq!(
        (stats.dead_records, stats.dead_bytes, stats.live_records),
        // Dead bytes: the sync mark a compacted segment ends with (format-spec, "Sync marks").
        (0, 32, model.len() as u64),
        "{what}: statistics right after a compaction"
    );
    drop(db);
    let db = open(dir.path(), config);
    assert_equals(
        &db,
        &model,
        &format!("{what}: reopened after a second compaction"),
    );
}
