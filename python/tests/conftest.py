"""Shared helpers: the squirrel-core 0.20.2 fixture, its expected values, the Rust CLI."""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

from squirrel_store import _native

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "squirrel-0.20.2"
REPO = HERE.parent.parent


def fixture_payloads() -> Dict[str, bytes]:
    """Each fixture shard's payload: the gunzipped bytes squirrel-core wrote."""
    return {p.name[: -len(".gz")]: gzip.decompress(p.read_bytes()) for p in sorted((FIXTURE / "store").glob("*.gz"))}


def untag(v: Any) -> Any:
    """expected.json's tagged form to the Python values squirrel-core returns."""
    if isinstance(v, list):
        return tuple(untag(x) for x in v)  # squirrel unpacks with use_list=False
    if isinstance(v, dict):
        (tag, body), = v.items()
        if tag == "$map":
            return {untag(k): untag(x) for k, x in body}
        if tag == "$ndarray":
            data = base64.b64decode(body["data_b64"])
            return np.ndarray(buffer=data, dtype=np.dtype(body["dtype"]), shape=tuple(body["shape"]))
        if tag == "$scalar":
            return np.frombuffer(base64.b64decode(body["data_b64"]), dtype=np.dtype(body["dtype"]))[0]
        if tag == "$complex":
            return complex(body)
        if tag == "$bytes":
            return base64.b64decode(body)
        if tag == "$f64":
            return float(body)
        raise AssertionError(f"unknown tag {tag}")
    return v


def expected() -> Dict[str, List[Any]]:
    doc = json.loads((FIXTURE / "expected.json").read_text())
    return {k: [untag(s) for s in v] for k, v in doc["shards"].items()}


def assert_same(a: Any, b: Any, path: str = "sample") -> None:
    """Equal value by value and type by type (dtype, byte order, shape and bytes for numpy)."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype.str == b.dtype.str, f"{path}: dtype {a.dtype.str} != {b.dtype.str}"
        assert a.shape == b.shape, f"{path}: shape {a.shape} != {b.shape}"
        assert a.tobytes() == b.tobytes(), f"{path}: data differs"
    elif isinstance(a, np.generic):
        assert a.dtype.str == b.dtype.str and a.tobytes() == b.tobytes(), f"{path}: {a!r} != {b!r}"
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), f"{path}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def load_fixture(path: Path, level: Optional[int]) -> _native.Store:
    """A store holding the fixture's shards, payloads copied untouched (every shard compressed
    when a level is given)."""
    st = _native.Store(str(path), level=level, min_saving=None)
    for key, payload in fixture_payloads().items():
        st.set_payload(payload, key)
    return st


def cli_binary() -> Optional[str]:
    """The Rust `squirrel-store` binary: $SQUIRREL_STORE_BIN, on PATH, in target/, or built."""
    env = os.environ.get("SQUIRREL_STORE_BIN")
    if env:
        return env
    for profile in ("debug", "release"):
        p = REPO / "target" / profile / "squirrel-store"
        if p.exists():
            return str(p)
    if shutil.which("squirrel-store"):
        return shutil.which("squirrel-store")
    if shutil.which("cargo") and (REPO / "Cargo.toml").exists():
        subprocess.run(["cargo", "build", "--bin", "squirrel-store"], cwd=REPO, check=True)
        p = REPO / "target" / "debug" / "squirrel-store"
        if p.exists():
            return str(p)
    return None


@pytest.fixture(scope="session")
def cli() -> str:
    binary = cli_binary()
    if binary is None:
        pytest.skip("the squirrel-store binary is not available (no cargo, no target/)")
    return binary
