"""Python values to MessagePack exactly as squirrel writes them (msgpack + msgpack-numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from squirrel_store import ExtType, _native
from conftest import assert_same

VALUES = [
    None,
    True,
    False,
    0,
    127,
    128,
    255,
    256,
    65535,
    65536,
    2**32,
    2**64 - 1,
    -1,
    -32,
    -33,
    -128,
    -129,
    -(2**15) - 1,
    -(2**31) - 1,
    -(2**63),
    0.1,
    float("inf"),
    "",
    "x" * 31,
    "x" * 32,
    "y" * 300,
    "z" * 70000,
    "ünïcødé",
    b"",
    b"\x00" * 300,
    bytearray(b"ab"),
    [],
    (1, 2),
    [[[]]],
    {"a": 1, "b": {"c": [1, 2.5, "three"]}},
    {i: i for i in range(20)},
    np.arange(12, dtype="<f4").reshape(3, 4),
    np.arange(6, dtype=">i2").reshape(2, 3),
    np.arange(6, dtype=np.float16),
    np.array([True, False]),
    np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
    np.array([1 + 2j], dtype=np.complex128),
    np.array(3.5),
    np.zeros((0, 3), dtype=np.int32),
    np.arange(24, dtype=np.uint8).reshape(4, 6)[:, ::2],  # not contiguous
    np.arange(6, dtype=np.int64).reshape(2, 3).T,  # Fortran order
    np.array(["ab", "c"]),
    np.array([b"ab", b"c"]),
    np.array([(1, 2.0)], dtype=[("a", "<i4"), ("b", "<f8")]),
    np.int64(7),
    np.uint8(200),
    np.float32(1.25),
    np.float64(2.5),  # a float subclass: a plain float64 for msgpack
    np.bool_(True),
    np.complex128(1 - 1.5j),
    np.str_("s"),
    1 - 1.5j,
    {"image": np.ones((2, 2)), "label": np.int64(1), "metadata": {"key": 0}},
]




@pytest.fixture
def store(tmp_path):
    return _native.Store(str(tmp_path / "s"), level=None, durability="buffered")


@pytest.mark.parametrize("value", VALUES, ids=[f"v{i}" for i in range(len(VALUES))])
def test_bytes_equal_msgpack_numpy(store, value):
    msgpack = pytest.importorskip("msgpack")
    mn = pytest.importorskip("msgpack_numpy")
    key = store.set([value])
    assert store.get_payload(key) == msgpack.packb(value, use_bin_type=True, default=mn.encode)


@pytest.mark.parametrize("value", VALUES, ids=[f"v{i}" for i in range(len(VALUES))])
def test_round_trip(store, value):
    key = store.set([value])
    (back,) = store.get(key)
    if isinstance(value, np.ndarray):
        assert isinstance(back, np.ndarray)
        assert back.dtype == value.dtype and back.shape == value.shape
        assert back.tobytes() == np.ascontiguousarray(value).tobytes()
    elif isinstance(value, np.float64):
        assert type(back) is float and back == value
    elif isinstance(value, np.str_):
        assert type(back) is str and back == value
    elif isinstance(value, np.generic):
        assert_same(back, value)
    elif isinstance(value, list):
        assert back == tuple(_tuples(value))
    elif isinstance(value, bytearray):
        assert back == bytes(value)
    elif isinstance(value, dict):
        assert list(back) == list(value)
    else:
        assert back == value and type(back) is type(value)


def _tuples(v):
    return [tuple(_tuples(x)) if isinstance(x, list) else x for x in v]


def test_known_bytes(store):
    key = store.set([{"a": 1}, [1, -1], np.int8(-2)])
    assert store.get_payload(key) == (
        b"\x81\xa1a\x01"
        b"\x92\x01\xff"
        b"\x83\xc4\x02nd\xc2\xc4\x04type\xa3|i1\xc4\x04data\xc4\x01\xfe"
    )


def test_ext_type_round_trips(store):
    key = store.set([ExtType(5, b"abcd"), ExtType(-3, b"xyz")])
    assert store.get(key) == [ExtType(5, b"abcd"), ExtType(-3, b"xyz")]


@pytest.mark.parametrize(
    "value, exc",
    [
        (object(), TypeError),
        ({1, 2}, TypeError),
        (2**64, OverflowError),
        (-(2**63) - 1, OverflowError),
        (np.array([object()], dtype=object), TypeError),
        ("\ud800", UnicodeEncodeError),
    ],
)
def test_unserializable(store, value, exc):
    with pytest.raises(exc):
        store.set([value])
    assert store.keys() == []


def test_nesting_limit(store):
    deep: list = []
    for _ in range(600):
        deep = [deep]
    with pytest.raises(ValueError):
        store.set([deep])
