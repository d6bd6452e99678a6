//! `io_faults`: the segment's I/O fails from the Nth call on; reopened without the fault, the
//! store equals its last durable state.
//!
//! Input: `N` (u16), a fault byte (how the failing call fails), a configuration byte, then
//! operations (see [`Op::decode`]).
//!
//! A [`squirrel_store::Backend`] wrapper counts the calls that change the file (`write_at`,
//! `set_len`, `sync_data`) on every backend the engine makes, the segment's and a compaction's new
//! segment's alike, and fails each one after the first `N`. A failing `write_at` may first write a
//! prefix of its data (a short write), or all of it (the error comes after the bytes reached the
//! file); a failing `set_len` may resize first; a failing `sync_data` syncs nothing.
//!
//! Checked:
//!
//! * every call acknowledged (`Ok`) is in the model; once one call failed, every later write
//!   (`set`, `set_many`, `delete`, `sync`, `checkpoint`, `compact`) returns `Error::PreviousIo`;
//! * reads on the failed handle equal the acknowledged state, or a state the failing operation
//!   allows (it may have taken effect before failing), and that state does not change; a reopen
//!   keeps what the failed handle served;
//! * reopened without the wrapper (read-only, then read-write, then read-write again after a
//!   clean close) the store equals the acknowledged state, or that state plus the failing
//!   operation, or (for `set_many`) plus a prefix of the failing batch: with `Durability::Fsync`
//!   every acknowledged write is durable, and an unacknowledged one may or may not be there;
//! * `verify` then reports no damaged record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use squirrel_store::{Backend, Config, Durability, Engine, Error, FileBackend};

use crate::common::{Input, Model, all_keys, assert_equals, key, short, tempdir, value, value_len};

/// How the failing call fails.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// Calls that succeed before the first failure.
    pub after: u64,
    /// For a failing `write_at`: how much of the data reaches the file first (`0..=255` of 255ths).
    pub written: u8,
    /// For a failing `set_len`: whether the file is resized before the error.
    pub resize: bool,
}

#[derive(Debug)]
struct Faulty {
    inner: FileBackend,
    calls: Arc<AtomicU64>,
    fault: Fault,
}

impl Faulty {
    /// Counts a call; `true` if it must fail.
    fn fails(&self) -> bool {
        self.calls.fetch_add(1, Ordering::SeqCst) >= self.fault.after
    }
}

fn injected() -> std::io::Error {
    std::io::Error::other("injected fault")
}

impl Backend for Faulty {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        if self.fails() {
            let n = data.len() * usize::from(self.fault.written) / 255;
            if n > 0 {
                self.inner.write_at(&data[..n], offset)?;
            }
            return Err(injected());
        }
        self.inner.write_at(data, offset)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        if self.fails() {
            if self.fault.resize {
                self.inner.set_len(len)?;
            }
            return Err(injected());
        }
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        if self.fails() {
            return Err(injected());
        }
        self.inner.sync_data()
    }
}

/// Operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `set(key, value)`.
    Set { key: u8, len: usize, fill: u8 },
    /// `delete(key)`.
    Delete { key: u8 },
    /// `set_many` of `(key, len, fill)`.
    SetMany(Vec<(u8, usize, u8)>),
    /// `sync()`.
    Sync,
    /// `checkpoint()`.
    Checkpoint,
    /// `compact()`.
    Compact,
}

impl Op {
    /// Decodes one operation.
    pub fn decode(input: &mut Input<'_>, large_left: &mut u32) -> Op {
        match input.u8() % 10 {
            0..=3 => Op::Set {
                key: input.u8(),
                len: value_len(input, large_left),
                fill: input.u8(),
            },
            4 => Op::Delete { key: input.u8() },
            5 | 6 => {
                let n = input.u8() % 4 + 1;
                Op::SetMany(
                    (0..n)
                        .map(|_| (input.u8(), value_len(input, large_left), input.u8()))
                        .collect(),
                )
            }
            7 => Op::Sync,
            8 => Op::Checkpoint,
            _ => Op::Compact,
        }
    }

    /// Appends the bytes [`Op::decode`] reads back as `self` (values shorter than 200 bytes).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let len_byte = |len: usize| u8::try_from(len.min(199)).unwrap_or(199);
        match self {
            Op::Set { key, len, fill } => out.extend([0, *key, len_byte(*len), *fill]),
            Op::Delete { key } => out.extend([4, *key]),
            Op::SetMany(items) => {
                out.extend([5, (items.len() as u8).wrapping_sub(1)]);
                for (k, len, fill) in items {
                    out.extend([*k, len_byte(*len), *fill]);
                }
            }
            Op::Sync => out.push(7),
            Op::Checkpoint => out.push(8),
            Op::Compact => out.push(9),
        }
    }
}

/// Encodes the head of an input: fault count and kind, configuration.
pub fn encode_head(after: u16, fault: u8, config: u8, out: &mut Vec<u8>) {
    out.extend(after.to_le_bytes());
    out.extend([fault, config]);
}

const MAX_OPS: usize = 48;

/// The target.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let after = u64::from(input.u16() % 512);
    let fault_byte = input.u8();
    let fault = Fault {
        after,
        written: if fault_byte & 0x80 != 0 {
            fault_byte.wrapping_mul(3)
        } else {
            0
        },
        resize: fault_byte & 1 != 0,
    };
    let config = input.u8();
    let durability = if config & 0x20 != 0 {
        Durability::Buffered
    } else {
        Durability::Fsync
    };
    let dir = tempdir();
    let calls = Arc::new(AtomicU64::new(0));
    let wrapped = {
        let calls = calls.clone();
        Config::new(dir.path())
            .durability(durability)
            .checkpoint_every(usize::from(config % 16) + 1, 1 << 20)
            .wrap_backend(move |fb| {
                Box::new(Faulty {
                    inner: fb,
                    calls: calls.clone(),
                    fault,
                })
            })
    };
    // States the store may be in after a reopen: the acknowledged one first.
    let mut acked = Model::new();
    let mut candidates: Vec<Model> = Vec::new();
    let mut failed = false;
    // After the failure: which allowed state the failed handle serves (it must not change).
    let mut handle_state: Option<usize> = None;
    let mut write_seq = 0u32;
    let mut large_left = 2u32;
    match wrapped.open() {
        Ok(db) => {
            for step in 0..MAX_OPS {
                if input.is_empty() {
                    break;
                }
                let op = Op::decode(&mut input, &mut large_left);
                let what = format!("step {step}: {op:?} (fault after {after} calls)");
                let (result, unacked) = apply(&db, &op, &acked, &mut write_seq);
                match result {
                    Ok(new) => {
                        assert!(!failed, "{what}: a write succeeded after a failed one");
                        acked = new;
                    }
                    Err(e) if failed => assert!(
                        matches!(e, Error::PreviousIo { .. }),
                        "{what}: after a failure, expected PreviousIo, got {e}"
                    ),
                    Err(Error::Io { .. }) => {
                        failed = true;
                        candidates = unacked;
                    }
                    Err(e) => panic!("{what}: unexpected error {e}"),
                }
                if failed {
                    // The failed operation may have taken effect (e.g. a record written, synced
                    // and published, then the automatic checkpoint after it failed): the handle
                    // serves the acknowledged state or one the failed operation allows, and keeps
                    // serving that one.
                    let mut allowed = vec![acked.clone()];
                    allowed.extend(candidates.iter().cloned());
                    let now = matching(&db, &allowed, &format!("{what}: the failed handle"));
                    if let Some(before) = handle_state {
                        assert_eq!(now, before, "{what}: the failed handle's state changed");
                    }
                    if crate::common::tracing() && handle_state.is_none() {
                        eprintln!("{what}: failed; the handle serves allowed state {now}");
                    }
                    handle_state = Some(now);
                } else {
                    assert_equals(&db, &acked, &format!("{what}: the same handle"));
                }
            }
            if failed {
                // One more write of each kind must be refused.
                for r in [
                    db.set("a", b"x").err(),
                    db.delete("a").err(),
                    db.sync().err(),
                    db.checkpoint().err(),
                ] {
                    assert!(
                        matches!(r, Some(Error::PreviousIo { .. })),
                        "after a failure, a write returned {r:?}"
                    );
                }
            }
            // As if the process died: no final checkpoint through the faulty backend.
            db.abandon();
        }
        Err(Error::Io { .. }) => {}
        Err(e) => panic!("opening with a faulty backend failed with an unexpected error: {e}"),
    }
    let mut allowed = vec![acked];
    allowed.extend(candidates);
    let ro = Config::new(dir.path())
        .read_only(true)
        .open()
        .unwrap_or_else(|e| panic!("read-only open after the fault: {e}"));
    let seen = matching(&ro, &allowed, "read-only open after the fault");
    drop(ro);
    // What the failed handle published was durable (Fsync) or in the page cache (Buffered): a
    // reopen must not lose it.
    if let Some(shown) = handle_state.filter(|&i| i != 0) {
        assert_eq!(
            seen, shown,
            "reopened, the store lost what the failed handle served"
        );
    }
    let db = Config::new(dir.path())
        .open()
        .unwrap_or_else(|e| panic!("open after the fault: {e}"));
    assert_equals(&db, &allowed[seen], "read-write open after the fault");
    db.close().expect("close");
    let db = Config::new(dir.path()).open().expect("reopen");
    assert_equals(&db, &allowed[seen], "reopen after the fault");
    drop(db);
    let report = squirrel_store::verify(dir.path(), &mut |_, _| {}).expect("verify");
    assert!(!report.is_corrupt(), "verify after the fault: {report:?}");
}

/// Applies `op`; returns the result with the new acknowledged state, and the states the store may
/// hold if the op fails.
fn apply(
    db: &Engine,
    op: &Op,
    acked: &Model,
    write_seq: &mut u32,
) -> (squirrel_store::Result<Model>, Vec<Model>) {
    let mut after = acked.clone();
    match op {
        Op::Set { key: k, len, fill } => {
            *write_seq += 1;
            let (k, v) = (key(*k), value(*write_seq, *len, *fill));
            after.insert(k.clone(), v.clone());
            (db.set(&k, &v).map(|()| after.clone()), vec![after])
        }
        Op::Delete { key: k } => {
            let k = key(*k);
            let existed = after.remove(&k).is_some();
            let r = db.delete(&k).map(|was| {
                assert_eq!(was, existed, "delete's answer");
                after.clone()
            });
            (r, vec![after])
        }
        Op::SetMany(items) => {
            let items: Vec<(String, Vec<u8>)> = items
                .iter()
                .map(|(k, len, fill)| {
                    *write_seq += 1;
                    (key(*k), value(*write_seq, *len, *fill))
                })
                .collect();
            // Any prefix of the batch may have reached the file whole.
            let mut prefixes = Vec::new();
            for (k, v) in &items {
                after.insert(k.clone(), v.clone());
                prefixes.push(after.clone());
            }
            let r = db
                .set_many(items.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map(|()| after.clone());
            (r, prefixes)
        }
        Op::Sync => (db.sync().map(|()| after), Vec::new()),
        Op::Checkpoint => (db.checkpoint().map(|()| after), Vec::new()),
        Op::Compact => (db.compact().map(|_| after), Vec::new()),
    }
}

/// The index of the allowed state the store equals; panics if none.
fn matching(db: &Engine, allowed: &[Model], what: &str) -> usize {
    let keys = db
        .keys()
        .unwrap_or_else(|e| panic!("{what}: keys() failed: {e}"));
    let mut state = Model::new();
    for k in all_keys() {
        match db.get(&k) {
            Ok(Some(v)) => {
                state.insert(k, v.to_vec());
            }
            Ok(None) => {}
            Err(e) => panic!("{what}: get({}) failed: {e}", short(&k)),
        }
    }
    let listed: Vec<&String> = state.keys().collect();
    assert_eq!(
        keys.iter().collect::<Vec<_>>(),
        listed,
        "{what}: keys() and get disagree"
    );
    allowed.iter().position(|m| *m == state).unwrap_or_else(|| {
        panic!(
            "{what}: the store holds {:?}, none of the {} allowed states",
            state
                .iter()
                .map(|(k, v)| (short(k), v.len()))
                .collect::<Vec<_>>(),
            allowed.len()
        )
    })
}
