//! Replays the fuzz corpora (or given files) through the targets as plain functions, on the stable
//! toolchain, without libFuzzer: the bounded regression run CI executes (`fuzz/replay.sh`).
//!
//! ```text
//! replay                          every file of corpus/<target>/ for every target
//! replay TARGET...                only those targets
//! replay TARGET FILE...           only those files (e.g. a crash artifact from cargo fuzz)
//! ```
//!
//! Exits non-zero if any input panics or takes longer than the per-input limit (a hang).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use squirrel_store_fuzz::TARGETS;

/// An input slower than this counts as a hang.
const SLOW: Duration = Duration::from_secs(10);

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && !p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut jobs: Vec<(&str, squirrel_store_fuzz::Target, Vec<PathBuf>)> = Vec::new();
    let target = |name: &str| {
        TARGETS.iter().find(|(n, _)| *n == name).unwrap_or_else(|| {
            let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
            eprintln!("unknown target {name:?}; targets: {names:?}");
            std::process::exit(2)
        })
    };
    match args.as_slice() {
        [] => {
            for (name, f) in TARGETS {
                jobs.push((name, *f, files_in(&corpus.join(name))));
            }
        }
        [name, rest @ ..] if rest.iter().any(|a| Path::new(a).is_file()) => {
            let (name, f) = target(name);
            jobs.push((name, *f, rest.iter().map(PathBuf::from).collect()));
        }
        names => {
            for name in names {
                let (name, f) = target(name);
                jobs.push((name, *f, files_in(&corpus.join(name))));
            }
        }
    }
    // Panics are reported with the input that caused them.
    let current = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let current = current.clone();
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let input = current.lock().map(|s| s.clone()).unwrap_or_default();
            eprintln!("\n=== panic while replaying {input}");
            default(info);
        }));
    }
    let mut failed: Vec<String> = Vec::new();
    let mut total = 0usize;
    let started = Instant::now();
    for (name, f, files) in jobs {
        let t = Instant::now();
        let mut slowest = (Duration::ZERO, String::new());
        for file in &files {
            let label = format!("{name} {}", file.display());
            let data = match std::fs::read(file) {
                Ok(d) => d,
                Err(e) => {
                    failed.push(format!("{label}: unreadable: {e}"));
                    continue;
                }
            };
            if let Ok(mut c) = current.lock() {
                c.clone_from(&label);
            }
            let t1 = Instant::now();
            let r = std::panic::catch_unwind(|| f(&data));
            let took = t1.elapsed();
            total += 1;
            if r.is_err() {
                failed.push(format!("{label}: panicked"));
            } else if took > SLOW {
                failed.push(format!("{label}: took {took:?} (over {SLOW:?}: a hang)"));
            }
            if took > slowest.0 {
                slowest = (took, file.display().to_string());
            }
        }
        println!(
            "replay {name}: {} inputs in {:.1?} (slowest {:.1?}: {})",
            files.len(),
            t.elapsed(),
            slowest.0,
            slowest.1
        );
    }
    println!(
        "replay: {total} inputs, {} failed, {:.1?}",
        failed.len(),
        started.elapsed()
    );
    if !failed.is_empty() {
        for f in &failed {
            eprintln!("FAILED {f}");
        }
        std::process::exit(1);
    }
}
