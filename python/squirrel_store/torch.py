"""A torch ``IterableDataset`` over the samples of a store: :class:`ShardDataset`.

It splits the shards by rank (``torch.distributed`` when initialised, else the ``RANK`` /
``WORLD_SIZE`` environment) and then by DataLoader worker, reshuffles each epoch
(:meth:`ShardDataset.set_epoch`), and resumes mid-epoch exactly through
:meth:`ShardDataset.state_dict` / :meth:`ShardDataset.load_state_dict`, the protocol torchdata's
``StatefulDataLoader`` calls in each worker.

torch is optional: without it the class derives from a plain base and works as an iterable.
Nothing here starts a thread at import; the store is opened lazily in the process that iterates
(a handle inherited through ``fork`` reopens its mapping, one pickled for ``spawn`` is reopened).
"""

from __future__ import annotations

import os
import random
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from . import SquirrelStore, _buffer_shuffle

try:  # torch is optional
    import torch.utils.data as _tud

    _Base: Any = _tud.IterableDataset
except ImportError:  # pragma: no cover - depends on the environment
    _tud = None

    class _Base:  # type: ignore[no-redef]
        """Stand-in for ``torch.utils.data.IterableDataset`` when torch is not installed."""


__all__ = ["ShardDataset", "get_worker_info", "get_rank_and_world_size"]


def get_worker_info() -> Any:
    """torch's ``get_worker_info()`` (``None`` in the main process or without torch).

    Tests replace this function with a stand-in returning an object with ``id`` and
    ``num_workers``.
    """
    if _tud is None:
        return None
    return _tud.get_worker_info()


def get_rank_and_world_size() -> Tuple[int, int]:
    """This process's rank and the world size: from ``torch.distributed`` when it is
    initialised, else from the ``RANK`` and ``WORLD_SIZE`` environment variables (0 and 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} do not describe a rank")
    return rank, world


class ShardDataset(_Base):
    """The samples of the store in ``url``, split across ranks and DataLoader workers.

    Every rank draws the same permutation of the shard keys for an epoch (from ``seed`` and the
    epoch), takes every ``world_size``-th shard from its rank on, and each DataLoader worker
    every ``num_workers``-th of those. Within a worker, samples pass through a shuffle buffer of
    ``shuffle_item_buffer`` samples seeded by seed, epoch, rank and worker, so an epoch's order
    is reproducible.

    Args:
        url: the store directory.
        shuffle: shuffle shard keys and samples (``False``: key order, no buffer).
        seed: the base seed.
        shuffle_item_buffer: samples in the shuffle buffer.
        keys: the shard keys to read (default: every key, nested ones included).
        reader_threads: Rust threads decoding shards in each process.
        prefetch: shards decoded ahead.
        rank, world_size: override the detected rank and world size.
    """

    def __init__(
        self,
        url: str,
        *,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_item_buffer: int = 1000,
        keys: Optional[Sequence[str]] = None,
        reader_threads: int = 2,
        prefetch: int = 4,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.url = os.fspath(url)
        self.shuffle = shuffle
        self.seed = seed
        self.shuffle_item_buffer = shuffle_item_buffer
        self.keys = list(keys) if keys is not None else None
        self.reader_threads = reader_threads
        self.prefetch = prefetch
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._yielded = 0
        self._resume_from = 0
        self._store: Optional[SquirrelStore] = None

    # --- pickling for spawn: the handle is reopened in the worker ------------------------------

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_store"] = None
        return state

    def _open(self) -> SquirrelStore:
        if self._store is None:
            self._store = SquirrelStore(self.url, read_only=True)
        return self._store

    # --- epochs and resumption -----------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch (its shuffle); call before iterating, on every rank."""
        self.epoch = int(epoch)
        self._yielded = 0
        self._resume_from = 0

    def state_dict(self) -> Dict[str, Any]:
        """Where this process's iteration stands: epoch and samples yielded so far."""
        return {
            "epoch": self.epoch,
            "seed": self.seed,
            "yielded": self._yielded,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Makes the next iteration continue after the samples ``state`` had yielded."""
        self.epoch = int(state["epoch"])
        self.seed = int(state.get("seed", self.seed))
        self._resume_from = int(state["yielded"])
        self._yielded = self._resume_from

    # --- the split -----------------------------------------------------------------------------

    def _split(self) -> Tuple[int, int, int, int]:
        if self.rank is not None or self.world_size is not None:
            rank, world = self.rank or 0, self.world_size or 1
        else:
            rank, world = get_rank_and_world_size()
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (int(info.id), int(info.num_workers))
        return rank, world, worker, workers

    def shard_keys(self) -> List[str]:
        """The keys this process (rank and worker) reads in the current epoch, in order."""
        rank, world, worker, workers = self._split()
        keys = self.keys if self.keys is not None else self._open().keys(nested=True)
        keys = sorted(keys)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(keys)
        return keys[rank::world][worker::workers]

    def __iter__(self) -> Iterator[Any]:
        # Set up eagerly (not inside a generator) so that state_dict() is right from the start.
        rank, world, worker, workers = self._split()
        keys = self.shard_keys()
        skip, self._resume_from = self._resume_from, 0
        self._yielded = skip
        store = self._open()
        shards = store._native.iter_shards(keys, self.reader_threads, self.prefetch)
        samples: Iterator[Any] = (s for shard in shards for s in shard)
        if self.shuffle:
            rng = random.Random(((self.seed * 1_000_003 + self.epoch) * 65_537 + rank) * 4_099 + worker)
            samples = _buffer_shuffle(samples, self.shuffle_item_buffer, rng)
        return self._count(samples, skip)

    def _count(self, samples: Iterator[Any], skip: int) -> Iterator[Any]:
        for i, sample in enumerate(samples):
            if i < skip:
                continue  # replayed to rebuild the shuffle state exactly; not yielded again
            self._yielded = i + 1
            yield sample
