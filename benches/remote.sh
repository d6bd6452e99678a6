#!/usr/bin/env bash
# Remote reads over a real S3 server on loopback (moto's, through .ci/s3-server.sh) next to
# local ones: benches/src/remote_bench.rs. Result: benches/results/remote.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
nice -n 15 cargo build -p squirrel-store-benches --release --bin squirrel-remote-bench
state="$(mktemp -d)"
trap '.ci/s3-server.sh stop "$state"; rm -rf "$state"' EXIT
eval "$(.ci/s3-server.sh start "$state")"
"$CARGO_TARGET_DIR/release/squirrel-remote-bench" benches/results
