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

# What the tests need besides the package itself.
deps=(maturin numpy pytest msgpack msgpack-numpy "squirrel-core==0.20.2")

# make_venv DIR: a new virtual environment at DIR with `deps` installed.
make_venv() {
    python3 -m venv "$1"
    "$1/bin/pip" --disable-pip-version-check -q install "${deps[@]}"
}

# `python/ci.sh prepare DIR` only makes that environment: .ci/run does it in the background
# while Rust compiles (the installs wait on the network), then passes it in SQUIRREL_PY_VENV.
if [[ "${1:-}" == prepare ]]; then
    make_venv "${2:?usage: python/ci.sh prepare VENV_DIR}"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
venv="${SQUIRREL_PY_VENV:-}"
if [[ -z "$venv" ]]; then
    venv="$work/venv"
    make_venv "$venv"
fi
pip=("$venv/bin/pip" --disable-pip-version-check -q)
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
