//! Stress: writer threads, reader threads and repeated compactions at once, for a bounded number
//! of operations. Every read returns a value written for that key and no older than the last
//! value acknowledged for it before the read began; at the end the store equals the model, also
//! after reopening.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use common::{Rng, value_for, version_of};
use squirrel_store::{Config, Durability, Engine};

const WRITERS: u64 = 3;
const KEYS_PER_WRITER: u64 = 60;
const WRITES_PER_WRITER: u64 = 5000;

fn key(k: u64) -> String {
    format!("key-{k:04}")
}

#[test]
fn writers_readers_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let db = Config::new(dir.path())
        .durability(Durability::Buffered)
        .checkpoint_every(100, 1 << 20)
        .open()
        .unwrap();
    let total_keys = WRITERS * KEYS_PER_WRITER;
    // Newest acknowledged version per key (each key has one writer, so versions only grow).
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..total_keys).map(|_| AtomicU64::new(0)).collect());
    let done = Arc::new(AtomicBool::new(false));
    let reads = AtomicU64::new(0);
    let compactions = AtomicU64::new(0);
    thread::scope(|s| {
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (db, acked) = (db.clone(), acked.clone());
            writers.push(s.spawn(move || {
                let mut rng = Rng(w + 1);
                for i in 1..=WRITES_PER_WRITER {
                    let k = w * KEYS_PER_WRITER + rng.below(KEYS_PER_WRITER);
                    let len = 20 + rng.below(2000) as usize;
                    db.set(&key(k), &value_for(&key(k), i, len)).unwrap();
                    acked[k as usize].store(i, Ordering::Release);
                }
            }));
        }
        for r in 0..3u64 {
            let (db, acked, done, reads) = (db.clone(), acked.clone(), done.clone(), &reads);
            s.spawn(move || {
                let mut rng = Rng(100 + r);
                while !done.load(Ordering::Acquire) {
                    let k = rng.below(total_keys);
                    let floor = acked[k as usize].load(Ordering::Acquire);
                    match db.get(&key(k)).unwrap() {
                        Some(v) => {
                            let got = version_of(&key(k), &v).expect("a whole value for this key");
                            assert!(
                                got >= floor,
                                "{}: read version {got} after {floor} was acknowledged",
                                key(k)
                            );
                        }
                        None => {
                            assert_eq!(floor, 0, "{} vanished after being acknowledged", key(k))
                        }
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        {
            let (db, done, compactions) = (db.clone(), done.clone(), &compactions);
            s.spawn(move || {
                while !done.load(Ordering::Acquire) {
                    db.compact().unwrap();
                    compactions.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Release);
    });
    let check = |db: &Engine| {
        for k in 0..total_keys {
            let want = acked[k as usize].load(Ordering::Acquire);
            let got = db
                .get(&key(k))
                .unwrap()
                .map(|v| version_of(&key(k), &v).unwrap());
            assert_eq!(got, (want > 0).then_some(want), "{}", key(k));
        }
    };
    check(&db);
    assert!(compactions.load(Ordering::Relaxed) > 0);
    println!(
        "stress: {} writes, {} reads, {} compactions",
        WRITERS * WRITES_PER_WRITER,
        reads.load(Ordering::Relaxed),
        compactions.load(Ordering::Relaxed)
    );
    drop(db);
    check(&Engine::open(dir.path()).unwrap());
}
