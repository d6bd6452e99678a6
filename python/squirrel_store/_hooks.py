"""What the native decoder hands back to Python: msgpack-numpy's ``decode`` for the maps its
fast path does not build, and :class:`ExtType` for MessagePack extension values.

:func:`decode` follows msgpack-numpy 0.4.8 (which squirrel-core 0.20.2 uses) case by case, so
that odd maps (structured dtypes, a wrong data size, extra keys) give what squirrel gives.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._errors import Error


class ExtType(NamedTuple):
    """A MessagePack extension value, as ``msgpack.ExtType``: type code and data."""

    code: int
    data: bytes


def _tostr(x: Any) -> Any:
    return x.decode() if isinstance(x, bytes) else x


def _unpack_dtype(descr: Any) -> np.dtype:
    # Structured dtypes: (name, type, *shape) entries, types nested recursively.
    if isinstance(descr, (list, tuple)):
        descr = [(_tostr(f[0]), _unpack_dtype(f[1])) + tuple(f[2:]) for f in descr]
    return np.dtype(descr)


def decode(obj: dict) -> Any:
    """msgpack-numpy's object hook: an ndarray, numpy scalar or complex for its maps, else
    ``obj`` itself."""
    try:
        if b"nd" in obj:
            if obj[b"nd"] is True:
                if b"kind" in obj and obj[b"kind"] == b"V":
                    descr = [tuple(_tostr(t) if type(t) is bytes else t for t in d) for d in obj[b"type"]]
                else:
                    descr = obj[b"type"]
                dtype = _unpack_dtype(descr)
                if dtype.hasobject:
                    raise Error("refusing an object array: msgpack-numpy stores those as a pickle")
                return np.ndarray(buffer=obj[b"data"], dtype=dtype, shape=obj[b"shape"])
            dtype = _unpack_dtype(obj[b"type"])
            if dtype.hasobject:
                raise Error("refusing an object scalar: msgpack-numpy stores those as a pickle")
            return np.frombuffer(obj[b"data"], dtype=dtype)[0]
        if b"complex" in obj:
            return complex(_tostr(obj[b"data"]))
        return obj
    except KeyError:
        return obj
