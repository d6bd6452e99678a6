//! Fuzz targets for squirrel-store (issue 5), as plain functions.
//!
//! Each module's `run(&[u8])` is one target's whole body. `fuzz_targets/*.rs` wrap them for
//! libFuzzer (`cargo fuzz`, nightly or `RUSTC_BOOTSTRAP=1`); `src/bin/replay.rs` calls them on
//! every file of `corpus/<target>/` on the stable toolchain, which is what CI runs.
//!
//! A target may only fail by panicking: every panic is a finding (a crash of the library under
//! test or a broken property). Typed errors (`squirrel_store::Error`, `ShardError`, ...) are
//! allowed wherever the target says so.

pub mod common;
pub mod compaction_crash;
pub mod decode_shard;
pub mod io_faults;
pub mod known;
pub mod open_segment;
pub mod ops_model;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target: its name (the directory under `corpus/`) and its body.
pub const TARGETS: &[(&str, Target)] = &[
    ("open_segment", open_segment::run),
    ("ops_model", ops_model::run),
    ("decode_shard", decode_shard::run),
    ("io_faults", io_faults::run),
    ("compaction_crash", compaction_crash::run),
];

/// Largest single allocation the targets allow: nothing they do legitimately needs more, so a
/// bigger request means a length taken from untrusted bytes was trusted.
pub const ALLOC_CAP: usize = 256 << 20;

/// The global allocator of every fuzz binary: the system's, aborting (a crash libFuzzer and the
/// replay both report) on any single allocation over [`ALLOC_CAP`]. libFuzzer's own
/// `-malloc_limit_mb` only fires above its RSS limit, and the stable replay has no such check.
struct Capped;

fn over_cap(size: usize) -> ! {
    eprintln!("fuzz allocation cap: an allocation of {size} bytes (cap {ALLOC_CAP})");
    std::process::abort()
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s contract;
// the only addition is aborting before oversized requests.
unsafe impl std::alloc::GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            over_cap(layout.size());
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            over_cap(layout.size());
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded; `ptr` came from `System` through this allocator.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_CAP {
            over_cap(new_size);
        }
        // SAFETY: forwarded; `ptr` came from `System` through this allocator.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;
