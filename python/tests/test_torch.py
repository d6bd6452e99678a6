"""ShardDataset: split by rank and worker, epochs, exact resume (torch not needed)."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

import squirrel_store.torch as sst
from squirrel_store import SquirrelStore
from squirrel_store.torch import ShardDataset


@pytest.fixture
def url(tmp_path):
    with SquirrelStore(tmp_path / "s", durability="buffered") as store:
        for i in range(10):
            store.set([{"id": i * 7 + j} for j in range(7)], key=f"shard_{i}")
    return str(tmp_path / "s")


ALL = list(range(70))


def run(ds, rank, world, worker, workers, monkeypatch):
    monkeypatch.setattr(sst, "get_worker_info", lambda: SimpleNamespace(id=worker, num_workers=workers))
    ds.rank, ds.world_size = rank, world
    return [s["id"] for s in ds]


@pytest.mark.parametrize("world, workers", [(1, 1), (2, 1), (1, 3), (2, 2), (3, 2)])
def test_every_sample_exactly_once(url, monkeypatch, world, workers):
    ds = ShardDataset(url, seed=5, shuffle_item_buffer=8)
    seen = []
    for rank in range(world):
        for worker in range(workers):
            seen += run(ds, rank, world, worker, workers, monkeypatch)
    assert sorted(seen) == ALL


def test_epochs_reshuffle_reproducibly(url, monkeypatch):
    ds = ShardDataset(url, seed=1, shuffle_item_buffer=8)
    e0 = run(ds, 0, 1, 0, 1, monkeypatch)
    assert run(ds, 0, 1, 0, 1, monkeypatch) == e0
    ds.set_epoch(1)
    e1 = run(ds, 0, 1, 0, 1, monkeypatch)
    assert e1 != e0 and sorted(e1) == ALL
    plain = ShardDataset(url, shuffle=False)
    assert run(plain, 0, 1, 0, 1, monkeypatch) == ALL


def test_env_rank(url, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(sst, "get_worker_info", lambda: None)
    ds = ShardDataset(url, shuffle=False)
    assert ds.shard_keys() == [f"shard_{i}" for i in (1, 3, 5, 7, 9)]
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError):
        ds.shard_keys()


@pytest.mark.parametrize("stop", [0, 1, 6, 7, 20, 34])
def test_resume_mid_epoch_is_exact(url, monkeypatch, stop):
    monkeypatch.setattr(sst, "get_worker_info", lambda: SimpleNamespace(id=1, num_workers=2))
    ds = ShardDataset(url, seed=9, shuffle_item_buffer=5)
    ds.set_epoch(3)
    full = [s["id"] for s in ds]
    it = iter(ds)
    first = [next(it)["id"] for _ in range(stop)]
    state = ds.state_dict()
    assert state["yielded"] == stop and state["epoch"] == 3
    fresh = ShardDataset(url, seed=0, shuffle_item_buffer=5)
    fresh.load_state_dict(pickle.loads(pickle.dumps(state)))
    rest = [s["id"] for s in fresh]
    assert first + rest == full
    # The next epoch after a resumed one starts from the beginning again.
    assert [s["id"] for s in fresh] == full


def test_pickles_without_its_handle(url, monkeypatch):
    monkeypatch.setattr(sst, "get_worker_info", lambda: None)
    ds = ShardDataset(url, shuffle=False)
    assert len(list(ds)) == 70  # opens the handle
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._store is None
    assert [s["id"] for s in clone] == ALL


def test_no_torch_needed():
    # torch is optional: the base is torch's IterableDataset or the plain stand-in.
    assert ShardDataset.__mro__[1].__name__ in ("IterableDataset", "_Base")
