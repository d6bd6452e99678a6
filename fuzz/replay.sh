#!/usr/bin/env bash
# The bounded fuzz regression run CI executes (.ci/run calls it when it is executable): builds the
# fuzz targets as plain functions on the stable toolchain (no libFuzzer, no nightly, no
# cargo-fuzz) and replays every file of fuzz/corpus/<target>/ through them. Fails if any input
# panics (a crash or a broken property) or runs over 10 s (a hang).
#
#   fuzz/replay.sh                      every target's corpus
#   fuzz/replay.sh TARGET...            some targets
#   fuzz/replay.sh TARGET FILE...       given inputs (e.g. a crash from fuzz/artifacts/)
#
# The build shares the root workspace's target directory: its dev profile matches the root's
# test profile, so after `cargo test` the dependencies are already built and only the two local
# crates compile.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/../target}"
exec timeout 900 cargo run --quiet --manifest-path "$here/Cargo.toml" \
  --no-default-features --features tools --bin replay -- "$@"
