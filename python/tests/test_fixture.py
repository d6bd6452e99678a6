"""`get` returns what squirrel-core 0.20.2 returns for its own shards, type by type."""

from __future__ import annotations

import io

import numpy as np
import pytest

import squirrel_store
from conftest import FIXTURE, assert_same, expected, fixture_payloads, load_fixture

EXPECTED = expected()


@pytest.mark.parametrize("level", [3, None], ids=["zstd", "uncompressed"])
@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_get_equals_expected(tmp_path, level, key):
    st = load_fixture(tmp_path / "s", level)
    got = st.get(key)
    assert_same(got, EXPECTED[key], key)


def test_fixture_shapes(tmp_path):
    st = load_fixture(tmp_path / "s", 3)
    mixed = st.get("mixed")[0]
    assert mixed["f16"].dtype == np.float16
    assert mixed["i16_be"].dtype.str == ">i2"
    assert mixed["zero_d"].shape == ()
    assert mixed["empty"].shape == (0, 3)
    assert type(mixed["scalar_f32"]) is np.float32
    assert type(mixed["scalar_bool"]) is np.bool_
    assert type(mixed["cplx"]) is complex
    assert type(mixed["blob"]) is bytes and type(mixed["text"]) is str
    assert mixed["list"] == (1, "two", 3.0, (4,))
    assert st.get("empty_shard") == []
    assert len(st.get("single_sample")) == 1


@pytest.mark.parametrize("level", [3, None], ids=["zstd", "uncompressed"])
def test_reencode_is_byte_exact(tmp_path, level):
    """Samples read back and written again give squirrel's exact bytes."""
    st = load_fixture(tmp_path / "s", level)
    for key, payload in fixture_payloads().items():
        again = st.set(st.get(key), key + "_again")
        assert st.get_payload(again) == payload, key


def test_against_msgpack_numpy(tmp_path):
    msgpack = pytest.importorskip("msgpack")
    mn = pytest.importorskip("msgpack_numpy")
    st = load_fixture(tmp_path / "s", 3)
    for key, payload in fixture_payloads().items():
        ref = list(msgpack.Unpacker(io.BytesIO(payload), use_list=False, object_hook=mn.decode))
        assert_same(st.get(key), ref, key)


def test_against_squirrel_core(tmp_path):
    pytest.importorskip("squirrel")
    from squirrel.serialization import MessagepackSerializer as SqSer
    from squirrel.store import SquirrelStore as SqStore

    theirs = SqStore(str(FIXTURE / "store"), serializer=SqSer())
    ours = squirrel_store.SquirrelStore(tmp_path / "s", serializer=SqSer())
    for key, payload in fixture_payloads().items():
        ours._native.set_payload(payload, key)
    assert sorted(theirs.keys()) == sorted(ours.keys())
    for key in theirs.keys():
        assert_same(list(ours.get(key)), list(theirs.get(key)), key)
