#!/usr/bin/env bash
# Runs the fuzz targets with libFuzzer (cargo fuzz), each for SECONDS (default 60).
#
#   fuzz/run.sh [SECONDS] [TARGET...]      all five targets when none is named
#   JOBS=2 fuzz/run.sh 600                 two targets at a time (default: one)
#
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept
# them. Runs niced. New corpus entries go to fuzz/corpus/<target>/, crashes to
# fuzz/artifacts/<target>/, logs to fuzz/target/logs/<target>.log; the summary line per target
# (executions, cov:, ft:) is printed at the end. Reproduce a crash on stable with
#   cargo run --manifest-path fuzz/Cargo.toml --no-default-features --features tools \
#     --bin replay -- TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")"

secs=${1:-60}
shift || true
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(open_segment ops_model decode_shard io_faults compaction_crash)
fi
jobs=${JOBS:-1}

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

# Sanitizer per target. AddressSanitizer for decode_shard, whose unsafe code (typed views of
# array data) works on heap memory. None for the engine targets: their unsafe code works on
# memory maps, which ASan does not track, and ASan halves their (file-system bound) speed.
# The two builds live in separate target directories so neither rebuilds the other.
sanitizer() {
  case "$1" in
    decode_shard) echo "address target/asan" ;;
    *) echo "none target/plain" ;;
  esac
}

echo "== building the fuzz targets"
for t in "${targets[@]}"; do
  read -r san dir < <(sanitizer "$t")
  nice -n 10 cargo fuzz build -s "$san" --target-dir "$dir" "$t"
done

mkdir -p target/logs
# Length control: the operation-sequence targets get their full input length from the start
# (libFuzzer otherwise grows it slowly, keeping sequences to a few operations for minutes); they
# bound their own work (at most 48 or 64 operations).
extra_flags() {
  case "$1" in
    ops_model | io_faults | compaction_crash) echo "-len_control=0 -max_len=1024" ;;
    *) echo "" ;;
  esac
}

run_one() {
  local t=$1
  local san dir
  read -r san dir < <(sanitizer "$t")
  mkdir -p "corpus/$t" "artifacts/$t"
  # -timeout: an input slower than 20 s is a hang. -rss_limit_mb: libFuzzer's memory limit (the
  # targets also abort on any single allocation over 256 MiB, see src/lib.rs).
  local rc=0
  nice -n 10 cargo fuzz run -s "$san" --target-dir "$dir" "$t" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 $(extra_flags "$t") \
    >"target/logs/$t.log" 2>&1 || rc=$?
  local last
  last=$(grep -E '^#[0-9]+' "target/logs/$t.log" | tail -1 || true)
  local runs
  runs=$(grep -E '^stat::number_of_executed_units' "target/logs/$t.log" | awk '{print $2}' || true)
  echo "$t: exit $rc, executions ${runs:-?}, last status: ${last:-none}"
  if [ "$rc" -ne 0 ]; then
    grep -E 'panicked at|SUMMARY|Test unit written|ERROR' "target/logs/$t.log" | head -5 || true
  fi
  return "$rc"
}

status=0
pids=()
for t in "${targets[@]}"; do
  if [ "$jobs" -gt 1 ]; then
    run_one "$t" &
    pids+=($!)
    if [ "${#pids[@]}" -ge "$jobs" ]; then
      wait "${pids[0]}" || status=1
      pids=("${pids[@]:1}")
    fi
  else
    run_one "$t" || status=1
  fi
done
for p in "${pids[@]}"; do
  wait "$p" || status=1
done
exit "$status"
