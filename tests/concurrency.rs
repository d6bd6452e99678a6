//! Several writers and readers at once: every read returns nothing or a complete value written
//! for that key, never a torn value or another key's. Checkpoints (in-place index updates and
//! index growth) run during the reads because the checkpoint bound is tiny.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use squirrel_store::{Config, Durability};

/// A value that proves which key and version it belongs to: key, version, then a pattern
/// derived from both, so a torn or foreign value cannot pass.
fn value_for(key: &str, version: u32) -> Vec<u8> {
    let len = 16 + (version as usize * 37 + key.len() * 11) % 3000;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&(key.len() as u32).to_le_bytes());
    v.extend_from_slice(&version.to_le_bytes());
    let seed = xorshift_seed(key, version);
    let mut x = seed;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

fn xorshift_seed(key: &str, version: u32) -> u64 {
    key.bytes()
        .fold(0x9E37_79B9_7F4A_7C15u64 ^ u64::from(version), |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
        })
        | 1
}

fn check(key: &str, v: &[u8]) {
    assert!(v.len() >= 8, "short value for {key}");
    let version = u32::from_le_bytes(v[4..8].try_into().unwrap());
    assert_eq!(
        v,
        value_for(key, version).as_slice(),
        "value for {key} is not one written for it"
    );
}

#[test]
fn writers_and_readers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Config::new(dir.path())
        .durability(Durability::Buffered)
        .checkpoint_every(64, 1 << 20)
        .open()
        .unwrap();
    const KEYS: u32 = 500;
    const WRITERS: u32 = 3;
    const ROUNDS: u32 = 4;
    let done = Arc::new(AtomicBool::new(false));
    thread::scope(|s| {
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let db = db.clone();
            writers.push(s.spawn(move || {
                for round in 0..ROUNDS {
                    for k in (w..KEYS).step_by(WRITERS as usize) {
                        let key = format!("key-{k}");
                        let version = round * 1000 + k;
                        db.set(&key, &value_for(&key, version)).unwrap();
                        if k % 97 == 0 {
                            db.delete(&key).unwrap();
                        }
                    }
                }
            }));
        }
        for r in 0..3u32 {
            let db = db.clone();
            let done = done.clone();
            s.spawn(move || {
                let mut i = r;
                let mut seen = 0u64;
                // Read until the writers finish, then one more full pass.
                let mut last_pass = false;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    for _ in 0..KEYS {
                        i = (i.wrapping_mul(7919) + 13) % KEYS;
                        let key = format!("key-{i}");
                        if let Some(v) = db.get(&key).unwrap() {
                            check(&key, &v);
                            seen += 1;
                        }
                    }
                    if last_pass {
                        break;
                    }
                    last_pass = finished;
                }
                assert!(seen > 0);
            });
        }
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Release);
    });
    // Final state: every key has its last round's value (or was deleted in it).
    for k in 0..KEYS {
        let key = format!("key-{k}");
        let got = db.get(&key).unwrap();
        if k % 97 == 0 {
            assert!(got.is_none());
        } else {
            assert_eq!(
                got.as_deref(),
                Some(value_for(&key, (ROUNDS - 1) * 1000 + k).as_slice())
            );
        }
    }
    assert!(db.stats().index_file_len > 0);
}
