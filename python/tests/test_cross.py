"""Across languages: a store written from Python is verified and exported by the Rust CLI (and
the export reads back in squirrel-core); a store written by Rust reads in Python."""

from __future__ import annotations

import gzip
import io
import subprocess

import numpy as np
import pytest

from squirrel_store import SquirrelStore, UncompressedSerializer
from conftest import FIXTURE, assert_same, expected


def samples(n):
    return [
        {
            "image": np.arange(12, dtype=np.float32).reshape(3, 4) + i,
            "mask": np.array([True, False]),
            "be": np.arange(3, dtype=">i4"),
            "label": np.int64(i),
            "caption": f"sample {i} ü",
            "raw": bytes([i]),
            "meta": {"i": i, "f": 0.5, "list": [1, "x"]},
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("serializer", [None, UncompressedSerializer()], ids=["zstd", "uncompressed"])
def test_python_store_verified_and_exported_by_cli(tmp_path, cli, serializer):
    with SquirrelStore(tmp_path / "py", serializer=serializer) as store:
        for i in range(3):
            store.set(samples(4), key=f"shard_{i}")
        payloads = {k: store.get_payload(k) for k in store.keys()}
    out = subprocess.run([cli, "verify", str(tmp_path / "py")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    keys = subprocess.run([cli, "keys", str(tmp_path / "py")], capture_output=True, text=True, check=True)
    assert keys.stdout.split() == sorted(payloads)
    subprocess.run([cli, "export", str(tmp_path / "py"), str(tmp_path / "sq")], check=True, capture_output=True)
    for key, payload in payloads.items():
        assert gzip.decompress((tmp_path / "sq" / f"{key}.gz").read_bytes()) == payload
    try:
        import msgpack
        import msgpack_numpy
    except ImportError:
        return
    for key, payload in payloads.items():
        ref = list(msgpack.Unpacker(io.BytesIO(payload), use_list=False, object_hook=msgpack_numpy.decode))
        with SquirrelStore(tmp_path / "py", read_only=True) as store:
            assert_same(list(store.get(key)), ref, key)


def test_export_reads_in_squirrel_core(tmp_path, cli):
    pytest.importorskip("squirrel")
    from squirrel.serialization import MessagepackSerializer
    from squirrel.store import SquirrelStore as SqStore

    with SquirrelStore(tmp_path / "py") as store:
        store.set(samples(3), key="k")
        ours = list(store.get("k"))
    subprocess.run([cli, "export", str(tmp_path / "py"), str(tmp_path / "sq")], check=True, capture_output=True)
    theirs = list(SqStore(str(tmp_path / "sq"), serializer=MessagepackSerializer()).get("k"))
    assert_same(theirs, ours)


def test_rust_store_reads_in_python(tmp_path, cli):
    subprocess.run([cli, "import", str(FIXTURE / "store"), str(tmp_path / "rs")], check=True, capture_output=True)
    want = expected()
    with SquirrelStore(tmp_path / "rs", read_only=True) as store:
        assert sorted(store.keys()) == sorted(want)
        for key, samples_ in want.items():
            assert_same(list(store.get(key)), samples_, key)
