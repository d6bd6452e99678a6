#!/usr/bin/env bash
# Builds and runs squirrel-bench; adds Python squirrel-core's end-to-end seed figures when
# `import squirrel` works (pip install squirrel-core==0.20.2).
#
#   benches/run.sh [--quick] [other squirrel-bench flags…]
#
# Results: benches/results/latest.{md,svg,json} (and quick.* or full.*).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
for a in "$@"; do [[ "$a" == --quick ]] && quick=(--quick); done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
nice -n 15 cargo build -p squirrel-store-benches --release

py_args=()
py_json="$(mktemp)"
py_images_json="$(mktemp)"
trap 'rm -f "$py_json" "$py_images_json"' EXIT
if python3 -c 'import squirrel, squirrel.store, squirrel.serialization' 2>/dev/null; then
  gets=100
  [[ ${#quick[@]} -gt 0 ]] && gets=30
  echo "running Python squirrel-core on the seed workload…" >&2
  if nice -n 15 python3 benches/python/squirrel_seed.py --gets "$gets" >"$py_json"; then
    py_args=(--python-json "$py_json")
  else
    echo "the Python run failed; its column will say n/a" >&2
  fi
  echo "running Python squirrel-core on the compressible (uint8 images) workload…" >&2
  if nice -n 15 python3 benches/python/squirrel_seed.py --images uint8 --gets "$gets" >"$py_images_json"; then
    py_args+=(--python-images-json "$py_images_json")
  else
    echo "the Python run (uint8 images) failed; its column will say n/a" >&2
  fi
else
  echo "python3 cannot import squirrel (pip install squirrel-core==0.20.2); Python column: n/a" >&2
fi

nice -n 15 "$CARGO_TARGET_DIR/release/squirrel-bench" --out benches/results "${py_args[@]}" "$@"
