//! The kill loop: a writer process sets records and prints each key as soon as `set` returns;
//! the parent kills it with SIGKILL at a random moment, reopens the store and checks that every
//! acknowledged record reads back byte-exact (or as a newer version of itself) and that no
//! partial record is ever visible. Three modes: fsync per write, fsync with compactions running
//! when the kill lands, and buffered writes (a killed process loses nothing that reached the file).
//!
//! `SQS_KILL_CYCLES=N` runs N cycles per mode instead of the default (a longer soak).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{Rng, value_for, version_of};
use squirrel_store::{Config, Durability, Engine, verify};

/// Runs only when spawned by `kill_loop` with `SQS_KILL_CHILD` set.
#[test]
fn kill_child() {
    let Ok(mode) = std::env::var("SQS_KILL_CHILD") else {
        return;
    };
    let dir = std::env::var("SQS_DIR").unwrap();
    let seed: u64 = std::env::var("SQS_SEED").unwrap().parse().unwrap();
    let durability = if mode == "buffered" {
        Durability::Buffered
    } else {
        Durability::Fsync
    };
    // A checkpoint every 8 records over ~150 keys: index format 3 then writes new deltas, merges
    // the deltas, and merges into the base, all within a few dozen records, so kills land in
    // every step of every kind of checkpoint.
    let db = Config::new(&dir)
        .durability(durability)
        .checkpoint_every(8, 1 << 20)
        .open()
        .unwrap();
    if mode == "compact" {
        let c = db.clone();
        std::thread::spawn(move || {
            loop {
                // Errors only come from the kill itself; the parent checks the outcome.
                let _ = c.compact();
            }
        });
    }
    let mut rng = Rng(seed);
    let base = seed * 1_000_000;
    for i in 0u64.. {
        let version = base + i;
        let key = format!("k{:03}", rng.below(150));
        let len = if rng.chance(5) {
            200_000
        } else {
            20 + rng.below(3000) as usize
        };
        if rng.chance(10) {
            // A batch: each key in it is acknowledged when set_many returns.
            let keys: Vec<String> = (0..4)
                .map(|j| format!("b{:03}", (rng.below(50) + j) % 50))
                .collect();
            let vals: Vec<Vec<u8>> = keys
                .iter()
                .map(|k| value_for(k, version, len / 4))
                .collect();
            db.set_many(
                keys.iter()
                    .map(String::as_str)
                    .zip(vals.iter().map(Vec::as_slice)),
            )
            .unwrap();
            for k in &keys {
                println!("ACK {k} {version}");
            }
        } else {
            db.set(&key, &value_for(&key, version, len)).unwrap();
            println!("ACK {key} {version}");
        }
    }
}

fn cycles(default: usize) -> usize {
    std::env::var("SQS_KILL_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn kill_loop(mode: &str, cycles: usize, seed: u64) {
    let mut rng = Rng(seed);
    let mut dir = common::fast_tempdir();
    // key -> newest acknowledged version
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut checked = 0u64;
    let mut lost: Vec<String> = Vec::new();
    for cycle in 0..cycles {
        if cycle % 25 == 0 {
            dir = common::fast_tempdir();
            acked.clear();
        }
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "kill_child", "--nocapture", "--test-threads=1"])
            .env("SQS_KILL_CHILD", mode)
            .env("SQS_DIR", dir.path())
            .env("SQS_SEED", (seed * 10_000 + cycle as u64).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Kill after a random number of acknowledgements (0: during open or the first write).
        let kill_after = rng.below(40) as usize;
        let mut seen = 0;
        let record = |line: &str, acked: &mut HashMap<String, u64>| {
            if let Some(rest) = line.strip_prefix("ACK ") {
                let (k, v) = rest.split_once(' ').unwrap();
                let v: u64 = v.parse().unwrap();
                let e = acked.entry(k.to_string()).or_insert(0);
                *e = (*e).max(v);
                true
            } else {
                false
            }
        };
        while seen < kill_after {
            match lines.next() {
                Some(Ok(line)) => seen += usize::from(record(&line, &mut acked)),
                _ => break,
            }
        }
        child.kill().unwrap();
        // Whatever the child printed before it died was acknowledged too.
        for line in lines.map_while(Result::ok) {
            record(&line, &mut acked);
        }
        child.wait().unwrap();

        // Read-only first (it must not need the torn tail cut), then read-write.
        for read_only in [true, false] {
            let db = Config::new(dir.path()).read_only(read_only).open();
            let db = match db {
                Ok(db) => db,
                // A kill before the store was ever created leaves nothing to open read-only.
                Err(squirrel_store::Error::NotFound { .. }) if acked.is_empty() => continue,
                Err(e) => panic!("{mode} cycle {cycle}: reopen failed: {e}"),
            };
            for (key, &version) in &acked {
                checked += 1;
                match db.get(key).unwrap() {
                    Some(v) => {
                        let got = version_of(key, &v).unwrap_or_else(|| {
                            panic!("{mode} cycle {cycle}: {key} is not a whole value")
                        });
                        assert!(
                            got >= version,
                            "{mode} cycle {cycle}: {key} went back from {version} to {got}"
                        );
                    }
                    None => lost.push(format!("cycle {cycle}: {key}@{version}")),
                }
            }
            for key in db.keys().unwrap() {
                let v = db.get(&key).unwrap().unwrap();
                assert!(
                    version_of(&key, &v).is_some(),
                    "{mode} cycle {cycle}: partial value for {key}"
                );
            }
        }
        if dir.path().join("segment.sqs").exists() {
            let report = verify(dir.path(), &mut |_, _| {}).unwrap();
            assert!(
                !report.is_corrupt(),
                "{mode} cycle {cycle}: {:?}",
                report.damaged
            );
            assert!(!dir.path().join("segment.sqs.compact").exists());
        }
    }
    assert!(
        lost.is_empty(),
        "{mode}: acknowledged records lost: {lost:?}"
    );
    println!(
        "kill loop {mode}: {cycles} cycles, {checked} acknowledged records checked, {} lost",
        lost.len()
    );
}

#[test]
fn kill_loop_fsync() {
    kill_loop("fsync", cycles(120), 1);
}

#[test]
fn kill_loop_with_compaction() {
    kill_loop("compact", cycles(50), 2);
}

#[test]
fn kill_loop_buffered() {
    kill_loop("buffered", cycles(80), 3);
}

#[test]
fn read_only_open_of_an_uncreated_store_fails_cleanly() {
    let dir = common::fast_tempdir();
    assert!(Engine::open_read_only(dir.path()).is_err());
}
