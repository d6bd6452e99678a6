"""squirrel_store: squirrel's Store API on the squirrel-store engine.

Moving a squirrel-core 0.20.2 project over is one changed import line::

    from squirrel_store import MessagepackDriver, MessagepackSerializer, SquirrelStore

    store = SquirrelStore("/data/store", serializer=MessagepackSerializer())
    store.set([{"image": image, "label": 1}], key="shard_0")
    samples = list(store.get("shard_0"))

Samples are what squirrel reads back, value by value and type by type (msgpack-numpy's
encoding: arrays keep dtype, byte order and shape; MessagePack arrays come back as tuples, as
squirrel reads them with ``use_list=False``). Arrays of an uncompressed shard are read-only views
into the store's memory map; a compressed shard is decompressed once into one buffer its arrays
share.

Importing this package starts no thread and never imports torch or squirrel-core.
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple, Union

from . import _errors, _native
from ._errors import (
    ClosedError,
    CorruptionError,
    Error,
    InvalidKeyError,
    KeyNotFoundError,
    LockedError,
    ReadOnlyError,
    StoreIOError,
    StoreNotFoundError,
    UnsupportedVersionError,
    ValueTooLargeError,
)
from ._hooks import ExtType

__version__: str = _native.__version__

__all__ = [
    "__version__",
    "SquirrelStore",
    "MessagepackSerializer",
    "UncompressedSerializer",
    "MessagepackDriver",
    "ExtType",
    "random_key",
    *_errors.__all__,
]

PathLike = Union[str, "os.PathLike[str]"]


def random_key() -> str:
    """A fresh random key: 16 characters of ``[A-Z0-9]``, as squirrel makes."""
    return _native.random_key()


def _path(url: PathLike) -> str:
    """A local directory as a path; a URL (``s3://``, ``gs://``, ``az://``, ``http(s)://``) as
    it is. A ``file://`` URL is a local directory."""
    path = os.fspath(url)
    if path.startswith("file://"):
        path = path[len("file://") :]
    return path


def _is_url(path: str) -> bool:
    scheme, sep, _ = path.partition("://")
    return bool(sep) and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum()


def _remote_options(storage_options: dict) -> Optional[dict]:
    """``storage_options`` as the strings the native store takes (``object_store`` keys such
    as ``aws_endpoint``, plus ``cache_dir`` and ``cache_max_bytes``)."""
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in storage_options.items()}


class MessagepackSerializer:
    """squirrel's ``MessagepackSerializer``: samples as MessagePack (msgpack-numpy's encoding),
    each shard compressed with zstd at ``level`` (1..22; squirrel uses gzip instead) and kept
    compressed only where that saves at least ``min_saving`` of its bytes (by default 0.2, as the
    Rust library's default; others are stored as they are, their arrays then zero-copy views into
    the store's memory map). ``min_saving=None`` compresses every shard."""

    def __init__(self, level: int = 3, min_saving: Optional[float] = 0.2) -> None:
        if not isinstance(level, int) or isinstance(level, bool):
            raise TypeError(f"level must be an int, not {type(level).__name__}")
        if min_saving is not None:
            if not isinstance(min_saving, (int, float)) or isinstance(min_saving, bool):
                raise TypeError(f"min_saving must be a float or None, not {type(min_saving).__name__}")
            if not 0.0 <= min_saving <= 1.0:
                raise ValueError(f"min_saving must be between 0 and 1, not {min_saving!r}")
            min_saving = float(min_saving)
        self.level: Optional[int] = level
        self.min_saving: Optional[float] = min_saving

    def __repr__(self) -> str:
        return f"{type(self).__name__}(level={self.level}, min_saving={self.min_saving})"


class UncompressedSerializer(MessagepackSerializer):
    """Samples as MessagePack, shards stored uncompressed: arrays are then zero-copy views into
    the store's memory map. Larger on disk, fastest to read."""

    def __init__(self) -> None:
        self.level = None
        self.min_saving = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


_DEFAULT = (3, 0.2)


def _compression_of(serializer: Any) -> Tuple[Optional[int], Optional[float]]:
    """(zstd level or None for uncompressed, least saving to keep a shard compressed or None)."""
    if serializer is None:
        return _DEFAULT
    if isinstance(serializer, MessagepackSerializer):
        return serializer.level, serializer.min_saving
    # squirrel-core's own MessagepackSerializer (a class with static methods): same samples.
    cls = serializer if isinstance(serializer, type) else type(serializer)
    if cls.__name__ == "MessagepackSerializer":
        return _DEFAULT
    raise TypeError(
        f"serializer must be a squirrel_store MessagepackSerializer or UncompressedSerializer, not {cls.__name__}"
    )


class SquirrelStore:
    """A store of shards in directory ``url``: squirrel's ``SquirrelStore`` on this engine.

    Args:
        url: the store directory (created when missing, unless ``read_only``), a ``file://``
            URL, or the URL of a store published with ``squirrel-store push`` (or of a dataset
            of such stores): ``s3://bucket/prefix``, ``gs://…``, ``az://…``, ``https://…``,
            read with range requests and only with ``read_only=True``. Credentials and endpoints
            come from the provider's environment variables (``AWS_ACCESS_KEY_ID``,
            ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``, ...), and from ``storage_options``:
            ``object_store`` keys (``aws_endpoint``, ``aws_region``, ...), and ``cache_dir`` /
            ``cache_max_bytes`` for a local record cache shared between processes.
        serializer: :class:`MessagepackSerializer` (zstd where it saves >= 20%, the default),
            :class:`UncompressedSerializer`, or squirrel's own ``MessagepackSerializer``.
        read_only: open without taking the writer lock; any number of read-only handles, in any
            process, may read while one writer writes (they see new writes after
            :meth:`refresh`).
        durability: ``"fsync"`` (``set`` returns once the shard survives a power cut) or
            ``"buffered"`` (survives a killed process; call :meth:`sync` for a power cut).

    Raises:
        LockedError: another writer holds the store.
        StoreNotFoundError: ``read_only`` and there is no store in ``url``.
    """

    def __init__(
        self,
        url: PathLike,
        serializer: Any = None,
        *,
        read_only: bool = False,
        durability: str = "fsync",
        **storage_options: Any,
    ) -> None:
        self.url = _path(url)
        self.serializer = serializer if serializer is not None else MessagepackSerializer()
        remote = _is_url(self.url)
        if remote and not read_only:
            raise ValueError(
                f"stores on object storage are read-only: SquirrelStore({self.url!r}, read_only=True)"
            )
        level, min_saving = _compression_of(serializer)
        self._native = _native.Store(
            self.url,
            read_only=read_only,
            durability=durability,
            level=level,
            min_saving=min_saving,
            options=_remote_options(storage_options) if remote else None,
        )

    def set(self, value: Any, key: Optional[str] = None, **kwargs: Any) -> str:
        """Stores a shard (a list of samples; anything else is one sample, wrapped in a list as
        squirrel does) under ``key``, or under a fresh random key. Returns the key."""
        if not isinstance(value, list):
            value = [value]
        return self._native.set(value, key)

    def get(self, key: str, **kwargs: Any) -> Iterator[Any]:
        """An iterator over the samples of the shard under ``key``.

        Raises:
            KeyNotFoundError: no shard under ``key`` (a ``KeyError``).
            CorruptionError: the shard's record is damaged.
        """
        return iter(self._native.get(key))

    def get_payload(self, key: str) -> bytes:
        """The shard's samples as concatenated MessagePack bytes (what squirrel's ``KEY.gz``
        holds, uncompressed)."""
        return self._native.get_payload(key)

    def keys(self, nested: bool = False, **kwargs: Any) -> Iterator[str]:
        """An iterator over the keys, sorted; ``sub/key`` keys only with ``nested=True``, as
        squirrel lists files of subdirectories."""
        keys = self._native.keys()
        if not nested:
            keys = [k for k in keys if "/" not in k]
        return iter(keys)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._native.contains(key)

    def __len__(self) -> int:
        return len(self._native)

    def __iter__(self) -> Iterator[str]:
        return self.keys(nested=True)

    def delete(self, key: str) -> bool:
        """Deletes the shard under ``key``; returns whether there was one."""
        return self._native.delete(key)

    def sync(self) -> None:
        """Makes every shard written so far durable (needed with ``durability="buffered"``)."""
        self._native.sync()

    def refresh(self) -> None:
        """Picks up shards written by other handles since this one opened."""
        self._native.refresh()

    def compact(self) -> dict:
        """Rewrites the store without the space of deleted and replaced shards; readers keep
        reading meanwhile. Returns ``segment_len_before`` and ``segment_len_after`` (bytes of
        records), ``segment_file_len_before`` and ``segment_file_len_after`` (file lengths),
        ``dropped`` (dead record bytes), ``reclaimed`` (file bytes given back),
        ``live_records`` and ``carried_records``."""
        return self._native.compact()

    def stats(self) -> dict:
        """Keys, live and dead records and bytes, file sizes and format version."""
        return self._native.stats()

    @property
    def read_only(self) -> bool:
        """Whether this handle refuses writes."""
        return self._native.read_only

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._native.closed

    def close(self) -> None:
        """Checkpoints and closes the handle (idempotent). Arrays already read stay valid."""
        self._native.close()

    def __enter__(self) -> "SquirrelStore":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SquirrelStore({self.url!r}, serializer={self.serializer!r})"


def _buffer_shuffle(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """Shuffles through a buffer of ``size`` items (``size < 2``: no shuffling)."""
    if size is None or size < 2:
        yield from items
        return
    buf: List[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        out, buf[i] = buf[i], item
        yield out
    rng.shuffle(buf)
    yield from buf


def _squirrel_iterable_source() -> Any:
    try:
        from squirrel.iterstream import IterableSource
    except ImportError:
        return None
    return IterableSource


class MessagepackDriver:
    """squirrel's ``MessagepackDriver``: read-only access to the store in ``url``.

    ``driver.store`` is a read-only :class:`SquirrelStore`; :meth:`get_iter` reads many shards
    in parallel on Rust threads, with the GIL released while they decompress and parse.
    """

    #: The name a squirrel ``Catalog`` source uses for this driver.
    name = "squirrel_store"

    def __init__(self, url: PathLike, storage_options: Optional[dict] = None, **kwargs: Any) -> None:
        if "store" in kwargs:
            raise ValueError("Store of MessagepackDriver is fixed, `store` cannot be provided.")
        kwargs.pop("catalog", None)
        self.url = _path(url)
        self._storage_options = dict(storage_options or {})
        self._store: Optional[SquirrelStore] = None

    @property
    def store(self) -> SquirrelStore:
        """The read-only store behind this driver (opened on first use)."""
        if self._store is None:
            self._store = SquirrelStore(self.url, read_only=True, **self._storage_options)
        return self._store

    def get(self, key: str, **kwargs: Any) -> Iterator[Any]:
        """An iterator over the samples of the shard under ``key``."""
        return self.store.get(key)

    def keys(self, **kwargs: Any) -> Iterator[str]:
        """An iterator over the keys (``nested=True`` for ``sub/key`` keys too)."""
        return self.store.keys(**kwargs)

    def get_iter(
        self,
        keys_iterable: Optional[Iterable[str]] = None,
        shuffle_key_buffer: int = 1,
        key_hooks: Optional[Iterable[Any]] = None,
        max_workers: Optional[int] = None,
        prefetch_buffer: int = 10,
        shuffle_item_buffer: int = 1,
        flatten: bool = True,
        keys_kwargs: Optional[dict] = None,
        get_kwargs: Optional[dict] = None,
        key_shuffle_kwargs: Optional[dict] = None,
        item_shuffle_kwargs: Optional[dict] = None,
        seed: Optional[int] = None,
    ) -> Any:
        """The samples of many shards, as squirrel's ``get_iter``.

        Args:
            keys_iterable: the keys to read, in this order (default: every key).
            shuffle_key_buffer: shuffle the keys through a buffer of this size (``< 2``: keep
                the order).
            key_hooks: squirrel key hooks (needs squirrel-core installed).
            max_workers: Rust threads reading and decoding shards (``None``: one per core;
                ``0`` or ``1``: one).
            prefetch_buffer: shards decoded ahead of the consumer.
            shuffle_item_buffer: shuffle the samples (or shards, without ``flatten``) through a
                buffer of this size.
            flatten: yield samples (``True``) or one iterator of samples per shard.
            keys_kwargs: passed to :meth:`keys` when ``keys_iterable`` is not given.
            get_kwargs: accepted for squirrel compatibility, unused.
            key_shuffle_kwargs: ``seed`` (or ``rng``) for the key shuffle.
            item_shuffle_kwargs: ``seed`` (or ``rng``) for the item shuffle.
            seed: seeds both shuffles (reproducible order); ``None``: a fresh order each time.

        Returns:
            A squirrel ``IterableSource`` (so ``.map(...).batched(...)`` chains work) when
            squirrel-core is installed, else an iterator.
        """
        keys_kwargs = dict(keys_kwargs or {})
        key_rng = _rng(key_shuffle_kwargs, seed, 0)
        item_rng = _rng(item_shuffle_kwargs, seed, 1)
        if max_workers is None:
            workers = os.cpu_count() or 1
        else:
            workers = max(1, max_workers)
        prefetch = max(prefetch_buffer, workers)

        def keys() -> List[str]:
            ks: Iterable[str] = keys_iterable if keys_iterable is not None else self.keys(**keys_kwargs)
            if key_hooks:
                ks = _apply_key_hooks(ks, key_hooks)
            return list(_buffer_shuffle(ks, shuffle_key_buffer, key_rng))

        def samples() -> Iterator[Any]:
            shards = self.store._native.iter_shards(keys(), workers, prefetch)
            if flatten:
                items: Iterable[Any] = (s for shard in shards for s in shard)
            else:
                items = (iter(shard) for shard in shards)
            yield from _buffer_shuffle(items, shuffle_item_buffer, item_rng)

        source = _squirrel_iterable_source()
        if source is not None:
            return source(samples)
        return samples()

    def close(self) -> None:
        """Closes the store handle, if it was opened."""
        if self._store is not None:
            self._store.close()

    def __repr__(self) -> str:
        return f"MessagepackDriver({self.url!r})"


def _rng(kwargs: Optional[dict], seed: Optional[int], stream: int) -> random.Random:
    kwargs = kwargs or {}
    if "rng" in kwargs:
        return kwargs["rng"]
    if "seed" in kwargs:
        return random.Random(kwargs["seed"])
    return random.Random(None if seed is None else seed * 2 + stream)


def _apply_key_hooks(keys: Iterable[str], hooks: Iterable[Any]) -> Iterable[str]:
    source = _squirrel_iterable_source()
    if source is None:
        raise ImportError("key_hooks need squirrel-core installed")
    import functools
    from inspect import isclass

    from squirrel.iterstream import Composable

    it = source(keys)
    for hook in hooks:
        args: Any = ()
        kw: dict = {}
        f: Callable[..., Any] = hook
        if isinstance(hook, functools.partial):
            args, kw, f = hook.args, hook.keywords, hook.func
        if isclass(f) and issubclass(f, Composable):
            it = it.compose(f, *args, **kw)
        elif callable(f):
            it = it.to(f, *args, **kw)
        else:
            raise ValueError(f"wrong argument for hook {hook}: a Callable, partial, or Composable subclass")
    return it
