//! Power-cut images: a backend records every write, resize and sync of the segment; from that
//! log we build the file "as of the last sync" plus any subset of the unsynced writes after it,
//! down to single 512-byte sectors landing or not, and resizes landing or not (the idea behind
//! redb's crash-consistency tests). For every image: recovery opens the store, every synced
//! record is there byte-exact, and nothing torn is ever served.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::Rng;
use squirrel_store::{Backend, Config, Durability, Engine, FileBackend};

#[derive(Debug, Clone)]
enum Ev {
    Write(u64, Vec<u8>),
    SetLen(u64),
    Sync,
}

#[derive(Debug)]
struct Recorder {
    inner: FileBackend,
    log: Arc<Mutex<Vec<Ev>>>,
}

impl Backend for Recorder {
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(Ev::Write(offset, data.to_vec()));
        self.inner.write_at(data, offset)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.log.lock().unwrap().push(Ev::SetLen(len));
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.log.lock().unwrap().push(Ev::Sync);
        self.inner.sync_data()
    }
}

type Model = BTreeMap<String, Vec<u8>>;

/// One operation's place in the log and the model once it is acknowledged.
struct Op {
    end_ev: usize,
    model: Model,
}

struct History {
    base: Vec<u8>,
    log: Vec<Ev>,
    ops: Vec<Op>,
}

fn record_history(seed: u64) -> History {
    let dir = common::fast_tempdir();
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = log.clone();
    let db = Config::new(dir.path())
        .durability(Durability::Fsync)
        .checkpoint_every(1_000_000, u64::MAX)
        .wrap_backend(move |fb| {
            Box::new(Recorder {
                inner: fb,
                log: l.clone(),
            })
        })
        .open()
        .unwrap();
    let base = std::fs::read(dir.path().join("segment.sqs")).unwrap();
    let mut rng = Rng(seed);
    let mut model = Model::new();
    let mut ops = Vec::new();
    for i in 0..25u64 {
        let key = format!("key-{}", rng.below(8));
        let len = if rng.chance(8) {
            300_000
        } else {
            rng.below(2000) as usize
        };
        let value: Vec<u8> = (0..len).map(|j| (j as u64 ^ i ^ seed) as u8).collect();
        match rng.below(10) {
            0..=5 => {
                db.set(&key, &value).unwrap();
                model.insert(key, value);
            }
            6..=7 => {
                let keys: Vec<String> = (0..3).map(|j| format!("batch-{}", (i + j) % 5)).collect();
                db.set_many(keys.iter().map(|k| (k.as_str(), value.as_slice())))
                    .unwrap();
                for k in keys {
                    model.insert(k, value.clone());
                }
            }
            _ => {
                if db.delete(&key).unwrap() {
                    model.remove(&key);
                }
            }
        }
        ops.push(Op {
            end_ev: log.lock().unwrap().len(),
            model: model.clone(),
        });
    }
    db.abandon();
    let log = log.lock().unwrap().clone();
    History { base, log, ops }
}

fn apply_write(img: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if img.len() < end {
        img.resize(end, 0);
    }
    img[offset as usize..end].copy_from_slice(data);
}

/// The segment after a power cut at log position `crash`: everything up to the last sync, then
/// a random subset of what came after, at sector granularity.
fn image(h: &History, crash: usize, rng: &mut Rng) -> (Vec<u8>, usize) {
    let last_sync = h.log[..crash].iter().rposition(|e| matches!(e, Ev::Sync));
    let durable_upto = last_sync.map_or(0, |s| s + 1);
    let mut img = h.base.clone();
    for ev in &h.log[..durable_upto] {
        match ev {
            Ev::Write(o, d) => apply_write(&mut img, *o, d),
            Ev::SetLen(n) => img.resize(*n as usize, 0),
            Ev::Sync => {}
        }
    }
    let mut len = img.len();
    for ev in &h.log[durable_upto..crash] {
        match ev {
            Ev::SetLen(n) if rng.chance(50) => {
                len = *n as usize;
                img.resize(len.max(img.len()), 0);
            }
            Ev::Write(o, d) => match rng.below(3) {
                0 => apply_write(&mut img, *o, d),
                1 => {}
                _ => {
                    for (i, sector) in d.chunks(512).enumerate() {
                        if rng.chance(50) {
                            apply_write(&mut img, o + (i * 512) as u64, sector);
                        }
                    }
                }
            },
            _ => {}
        }
    }
    // Unsynced growth that did not land takes its data with it.
    img.truncate(len);
    (img, durable_upto)
}

#[test]
fn every_power_cut_image_recovers_every_synced_record() {
    let (mut images, mut growth_cuts, mut records_checked) = (0u64, 0u64, 0u64);
    for seed in 0..12u64 {
        let h = record_history(seed);
        let mut rng = Rng(seed ^ 0xC0FFEE);
        for crash in 0..=h.log.len() {
            // A crash right after growing the file, before writing into the new region.
            if crash > 0 && matches!(h.log[crash - 1], Ev::SetLen(_)) {
                growth_cuts += 1;
            }
            for _ in 0..2 {
                let (img, durable_upto) = image(&h, crash, &mut rng);
                let durable = h.ops.iter().rposition(|op| op.end_ev <= durable_upto);
                let durable_model = durable.map(|i| h.ops[i].model.clone()).unwrap_or_default();
                // The operation in flight when the power went: its records may or may not be there.
                let inflight = h.ops.get(durable.map_or(0, |i| i + 1)).map(|op| &op.model);
                let dir = common::fast_tempdir();
                std::fs::write(dir.path().join("segment.sqs"), &img).unwrap();
                for read_only in [true, false] {
                    let db = Config::new(dir.path())
                        .read_only(read_only)
                        .open()
                        .unwrap_or_else(|e| panic!("seed {seed} crash {crash}: open failed: {e}"));
                    let keys: std::collections::BTreeSet<String> = durable_model
                        .keys()
                        .chain(inflight.into_iter().flat_map(|m| m.keys()))
                        .cloned()
                        .chain(db.keys().unwrap())
                        .collect();
                    for key in &keys {
                        let got = db
                            .get(key)
                            .unwrap_or_else(|e| panic!("seed {seed} crash {crash}: {key}: {e}"))
                            .map(|v| v.to_vec());
                        let ok = got.as_ref() == durable_model.get(key)
                            || inflight.is_some_and(|m| got.as_ref() == m.get(key));
                        assert!(
                            ok,
                            "seed {seed} crash {crash}: {key} has a value never synced or acknowledged"
                        );
                        records_checked += 1;
                    }
                }
                images += 1;
            }
        }
    }
    assert!(growth_cuts > 0, "the histories grew the file");
    println!(
        "power-cut images: {images} images, {growth_cuts} cuts right after growth, {records_checked} records checked, 0 lost"
    );
}

#[test]
fn engine_opens_image_of_an_empty_history() {
    let h = record_history(99);
    let dir = common::fast_tempdir();
    std::fs::write(dir.path().join("segment.sqs"), &h.base).unwrap();
    assert_eq!(Engine::open(dir.path()).unwrap().len(), 0);
}
