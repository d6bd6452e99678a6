#![no_main]
//! libFuzzer entry point; the body is [`squirrel_store_fuzz::open_segment::run`] so that
//! `fuzz/replay.sh` can run the same code on the stable toolchain.

libfuzzer_sys::fuzz_target!(|data: &[u8]| squirrel_store_fuzz::open_segment::run(data));
