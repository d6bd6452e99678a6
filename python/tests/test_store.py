"""SquirrelStore: squirrel's Store API, errors, zero-copy arrays, fork safety."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import squirrel_store
from squirrel_store import (
    ClosedError,
    CorruptionError,
    Error,
    InvalidKeyError,
    KeyNotFoundError,
    LockedError,
    MessagepackSerializer,
    ReadOnlyError,
    SquirrelStore,
    StoreNotFoundError,
    UncompressedSerializer,
)


def sample(i: int) -> dict:
    return {"image": np.full((2, 3), i, dtype=np.float32), "label": np.int64(i), "metadata": {"key": i}}


def test_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", squirrel_store.__version__)


def test_set_get_keys(tmp_path):
    with SquirrelStore(tmp_path / "s", serializer=MessagepackSerializer()) as store:
        assert store.set([sample(0), sample(1)], key="shard_0") == "shard_0"
        key = store.set([sample(2)])
        assert re.fullmatch(r"[A-Z0-9]{16}", key)
        got = store.get("shard_0")
        assert not isinstance(got, list) and iter(got) is got  # an iterator, as squirrel's
        got = list(got)
        assert [s["metadata"]["key"] for s in got] == [0, 1]
        assert got[1]["image"].dtype == np.float32 and (got[1]["image"] == 1).all()
        assert sorted(store.keys()) == sorted(["shard_0", key])
        assert "shard_0" in store and "nope" not in store and 3 not in store
        assert len(store) == 2


def test_bare_sample_is_wrapped(tmp_path):
    with SquirrelStore(tmp_path / "s") as store:
        store.set({"a": 1}, key="one")
        store.set((1, 2), key="tuple")  # not a list: one sample, as squirrel does
        assert list(store.get("one")) == [{"a": 1}]
        assert list(store.get("tuple")) == [(1, 2)]


def test_nested_keys(tmp_path):
    with SquirrelStore(tmp_path / "s") as store:
        store.set([1], key="top")
        store.set([2], key="sub/inner")
        assert list(store.keys()) == ["top"]
        assert list(store.keys(nested=True)) == ["sub/inner", "top"]


def test_delete_sync_compact_stats(tmp_path):
    with SquirrelStore(tmp_path / "s", durability="buffered") as store:
        for i in range(5):
            store.set([sample(i)] * 10, key=f"k{i}")
        store.set([sample(9)], key="k0")  # replaces
        assert store.delete("k1") is True
        assert store.delete("k1") is False
        store.sync()
        stats = store.stats()
        assert stats["keys"] == 4 and stats["dead_records"] >= 2
        report = store.compact()
        assert report["reclaimed"] > 0 and report["dropped"] > 0
        assert report["segment_len_after"] < report["segment_len_before"]
        assert store.stats()["dead_records"] == 0
        assert list(store.get("k0"))[0]["metadata"] == {"key": 9}


def test_durability_is_checked(tmp_path):
    with pytest.raises(ValueError):
        SquirrelStore(tmp_path / "s", durability="sometimes")


def test_errors(tmp_path):
    store = SquirrelStore(tmp_path / "s")
    with pytest.raises(KeyNotFoundError) as e:
        store.get("missing")
    assert isinstance(e.value, KeyError) and isinstance(e.value, Error)
    assert "missing" in str(e.value)
    with pytest.raises(InvalidKeyError):
        store.set([1], key="")
    with pytest.raises(InvalidKeyError):
        store.set([1], key="x" * 2000)
    with pytest.raises(LockedError):
        SquirrelStore(tmp_path / "s")
    reader = SquirrelStore(tmp_path / "s", read_only=True)
    with pytest.raises(ReadOnlyError):
        reader.set([1], key="k")
    with pytest.raises(ReadOnlyError):
        reader.delete("k")
    with pytest.raises(StoreNotFoundError):
        SquirrelStore(tmp_path / "nothing", read_only=True)
    store.close()
    store.close()  # idempotent
    with pytest.raises(ClosedError):
        store.get("k")
    reader.close()


def test_corruption_is_detected(tmp_path):
    marker = bytes(range(256)) * 4
    with SquirrelStore(tmp_path / "s", serializer=UncompressedSerializer()) as store:
        store.set([{"blob": marker}], key="k")
    seg = tmp_path / "s" / "segment.sqs"
    data = bytearray(seg.read_bytes())
    at = data.find(marker)
    assert at > 0
    data[at + 100] ^= 0xFF
    seg.write_bytes(bytes(data))
    store = SquirrelStore(tmp_path / "s", read_only=True)
    with pytest.raises(CorruptionError) as e:
        store.get("k")
    assert "k" in str(e.value)


def test_serializer_choice(tmp_path):
    with SquirrelStore(tmp_path / "z", serializer=MessagepackSerializer(level=9)) as z:
        z.set([{"a": np.zeros(10000)}], key="k")
        assert z.stats()["compression_level"] == 9
        assert z.stats()["live_bytes"] < 10000
    with SquirrelStore(tmp_path / "u", serializer=UncompressedSerializer()) as u:
        u.set([{"a": np.zeros(10000)}], key="k")
        assert u.stats()["compression_level"] is None
        assert u.stats()["live_bytes"] > 80000
    with pytest.raises(TypeError):
        SquirrelStore(tmp_path / "x", serializer=object())


def test_zero_copy_uncompressed(tmp_path):
    store = SquirrelStore(tmp_path / "s", serializer=UncompressedSerializer())
    store.set([sample(i) for i in range(3)], key="k")
    samples = list(store.get("k"))
    arrays = [s["image"] for s in samples]
    base = arrays[0].base
    assert isinstance(base, squirrel_store._native.ShardBuffer) and base.mapped
    assert all(a.base is base for a in arrays)  # one base for the shard
    for a in arrays:
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0, 0] = 1
    # Replacing, compacting and closing leave the views intact.
    store.set([sample(7)], key="k")
    store.compact()
    store.close()
    assert [float(a[0, 0]) for a in arrays] == [0.0, 1.0, 2.0]


def test_compressed_arrays_share_one_buffer(tmp_path):
    with SquirrelStore(tmp_path / "s") as store:
        store.set([sample(i) for i in range(3)], key="k")
        samples = list(store.get("k"))
    bases = {id(s["image"].base) for s in samples}
    assert len(bases) == 1
    assert samples[0]["image"].base.mapped is False
    assert not samples[0]["image"].flags.writeable
    assert float(samples[2]["image"][1, 2]) == 2.0


def test_two_handles_see_each_other(tmp_path):
    writer = SquirrelStore(tmp_path / "s")
    writer.set([1], key="a")
    reader = SquirrelStore(tmp_path / "s", read_only=True)
    writer.set([2], key="b")
    reader.refresh()
    assert list(reader.keys()) == ["a", "b"]
    writer.close()
    reader.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_reopens(tmp_path):
    writer = SquirrelStore(tmp_path / "s")
    writer.set([sample(1)], key="k")
    reader = SquirrelStore(tmp_path / "s", read_only=True)
    assert list(reader.get("k"))[0]["label"] == 1
    pid = os.fork()
    if pid == 0:  # child: exit code says what went wrong
        code = 0
        try:
            if list(reader.get("k"))[0]["label"] != 1:
                code = 2
            if list(writer.get("k"))[0]["label"] != 1:
                code = 3
            try:
                writer.set([1], key="child")
                code = 4
            except ReadOnlyError:
                pass
        except BaseException:
            code = 5
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    writer.set([2], key="parent")  # the parent's handles are untouched
    assert "child" not in writer
    writer.close()
    reader.close()
