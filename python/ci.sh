#!/usr/bin/env bash
# CI for the Python package: a fresh virtual environment, the package built and installed the
# way a user installs it (`pip install ./python`), then its pytest suite. Fails when pytest
# fails or collects no test (pytest's exit code 5).
#
# The reference implementations the tests compare against are installed too: msgpack +
# msgpack-numpy, and squirrel-core 0.20.2 itself. torch is not (too large); the torch dataset's
# logic is tested with a stand-in for get_worker_info.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
venv="$work/venv"

python3 -m venv "$venv"
pip=("$venv/bin/pip" --disable-pip-version-check -q)
"${pip[@]}" install maturin numpy pytest msgpack msgpack-numpy "squirrel-core==0.20.2"
cd "$repo"
# The dev profile, so that the build reuses what `cargo test` compiled instead of building every
# dependency again in release (minutes on 2 cores); a user's `pip install ./python` is release.
MATURIN_PEP517_ARGS="${MATURIN_PEP517_ARGS:---profile dev}" "${pip[@]}" install ./python
# The Rust CLI for the cross-language tests: built once here unless CI already did.
if [[ ! -x "$repo/target/debug/squirrel-store" && -z "${SQUIRREL_STORE_BIN:-}" ]]; then
    cargo build -q --bin squirrel-store
fi
# Run from outside python/ so that the installed package, not the source tree, is imported.
cd "$work"
"$venv/bin/pytest" -q -p no:cacheprovider "$repo/python/tests"
